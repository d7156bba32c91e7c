"""opsevent stays pure: importing it pulls in no broker client and no processes."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("pika", "multiprocessing", "signal", "subprocess", "socket", "asyncio")

# Run in a fresh interpreter: this process has pytest's imports already.
CHECK = f"""
import sys
import opsevent
print(",".join(name for name in {FORBIDDEN!r} if name in sys.modules))
"""


def test_importing_opsevent_loads_neither_pika_nor_multiprocessing():
    run = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "", f"opsevent imported {run.stdout.strip()}"


def test_the_package_exports_exactly_its_public_names():
    import opsevent

    assert sorted(opsevent.__all__) == sorted([
        "OpseventError", "SocketSyntaxError", "EventSyntaxError",
        "EventValueTypeError", "EventTooLargeError", "PayloadDecodeError",
        "ConfigError", "RabbitMQSocket", "parse_socket", "encode_event",
        "decode_event", "MAX_BODY_SIZE", "Subscription", "Subscriptions", "Status", "Delivery",
        "RaiseResult", "Settings", "Transport", "EventInterface",
        "read_event", "ReceivedEvent", "TLSDomain",
    ])
    assert all(hasattr(opsevent, name) for name in opsevent.__all__)


def _imports(path: Path):
    """``(module, name)`` for every ``from module import name`` in *path*, relative ones resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            for alias in node.names:
                yield module, alias.name


def test_no_opsevent_module_imports_another_public_modules_private_names():
    # Shared helpers live in private modules (opsevent/_body.py), whose names are public to the package.
    crossings = [f"{path.name}: from {module} import {name}"
                 for path in sorted((ROOT / "opsevent").glob("*.py"))
                 for module, name in _imports(path)
                 if module.startswith("opsevent") and name.startswith("_")
                 and not module.rpartition(".")[2].startswith("_")
                 and not (ROOT / "opsevent" / f"{name}.py").exists()]  # a private module itself
    assert not crossings, crossings


def test_the_package_api_is_made_of_names_each_module_lists_in_its_all():
    import importlib

    import opsevent

    exported = {}
    for module, name in _imports(ROOT / "opsevent" / "__init__.py"):
        exported[name] = module
        assert name in importlib.import_module(module).__all__, f"{name} is not in {module}.__all__"
    assert sorted(exported) == sorted(opsevent.__all__)
