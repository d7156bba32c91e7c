"""The boundaries: opsevent stays pure, and each room of workers imports only the rooms below it.

opsevent pulls in no broker client and no processes.  workers/ is rooms in
the order a job travels (see workers/__init__.py): base, channel, rabbitmq,
control, processes, and the demo tooling on top, which no runtime room
imports; pika is imported only by the RabbitMQ room (and the tooling), and
pika's private API is used only in workers/rabbitmq/pika_private.py.
"""

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
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            yield from _imports_of(node, path)


def _imports_of(node: ast.ImportFrom, path: Path):
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
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


# ---- workers: rooms and arrows ---------------------------------------------------------------

# Each runtime room and the rooms it may import: every arrow points down.
ROOMS = {
    "base": set(),
    "channel": {"base"},
    "rabbitmq": {"base", "channel"},
    "control": {"base", "channel", "rabbitmq"},  # rabbitmq: the link states, histograms, listen's consumer
    "processes": {"base", "channel", "rabbitmq", "control"},
}
RUNTIME = {**ROOMS, "": set(ROOMS)}  # "": workers/__init__.py and the doors beside the rooms
TOOLING = "demo"
PIKA_ROOMS = {"rabbitmq", TOOLING}
# pika's private names (and its connection workflow's internals): only pika_private.py uses them.
PIKA_PRIVATE = ("_AsyncPlaintextTransport", "_tx_buffers", "_adapter_emit_data", "_terminate_stream", "_impl",
                "_STATE_ACTIVE", "connection_workflow", "io_services_utils")


def _room(path: Path) -> str:
    parts = path.relative_to(ROOT / "workers").parts
    return parts[0] if len(parts) > 1 else ""


def _modules_imported(path: Path):
    """Every module *path* imports, at any depth of the file (function-level imports too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            for module, name in _imports_of(node, path):
                yield f"workers.{name}" if module == "workers" else module  # from workers import <room>


def _workers_files():
    return sorted((ROOT / "workers").rglob("*.py"))


def test_each_room_of_workers_imports_only_the_rooms_below_it():
    wrong = []
    for path in _workers_files():
        room = _room(path)
        if room == TOOLING:
            continue
        for module in _modules_imported(path):
            parts = module.split(".")
            if parts[0] != "workers" or len(parts) < 2 or parts[1] not in (*ROOMS, TOOLING):
                continue
            if parts[1] != room and parts[1] not in RUNTIME[room]:
                wrong.append(f"{path.relative_to(ROOT)} ({room or 'workers/'}) imports {module}")
    assert not wrong, "imports against the arrows:\n" + "\n".join(wrong)


def test_only_the_rabbitmq_room_and_the_tooling_import_pika():
    importers = [f"{path.relative_to(ROOT)} imports {module}" for path in _workers_files()
                 for module in _modules_imported(path)
                 if module.split(".")[0] == "pika" and _room(path) not in PIKA_ROOMS]
    assert not importers, importers


def test_pikas_private_api_is_used_in_pika_private_py_only():
    allowed = {ROOT / "workers" / "rabbitmq" / "pika_private.py", ROOT / "tests" / "test_pika_private.py",
               Path(__file__).resolve()}
    users = [f"{path.relative_to(ROOT)}: {name}"
             for folder in ("workers", "tests", "bench", "examples") for path in sorted((ROOT / folder).rglob("*.py"))
             if path not in allowed for name in PIKA_PRIVATE if name in path.read_text()]
    assert not users, users


def test_the_runtime_never_imports_the_demo_room():
    # In a fresh interpreter: every runtime module of workers imported, and not one of workers.demo.
    runtime = [".".join(path.relative_to(ROOT).with_suffix("").parts) for path in _workers_files()
               if _room(path) != TOOLING and path.name != "__main__.py"]
    check = (f"import importlib, sys\n"
             f"for name in {[m.removesuffix('.__init__') for m in runtime]!r}: importlib.import_module(name)\n"
             f"print(','.join(sorted(m for m in sys.modules if m.startswith('workers.{TOOLING}'))))")
    run = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "", f"the runtime imported {run.stdout.strip()}"


# ---- the import paths users rely on -----------------------------------------------------------

def test_the_import_paths_users_rely_on_still_work():
    # Documented in the README and the docs, or written in users' files (gunicorn.conf.py, an
    # installed console script): each must keep importing what it always did.
    import workers
    import workers.asgi
    import workers.cli
    import workers.control
    import workers.gunicorn
    import workers.metrics
    from workers.control.cli import main
    from workers.control.metrics import Collector
    from workers.processes.asgi import serving
    from workers.processes.gunicorn import Hooks
    from workers.processes.service import Service, serve
    from workers.processes.supervisor import Supervisor

    assert (workers.Supervisor, workers.Service, workers.serve) == (Supervisor, Service, serve)
    assert callable(workers.stopping) and workers.RabbitMQWorker.__name__ == "RabbitMQWorker"
    assert (workers.gunicorn.Hooks, workers.asgi.serving, workers.metrics.Collector) == (Hooks, serving, Collector)
    assert workers.cli.main is main
    assert callable(workers.control.request)


def test_the_console_script_and_python_m_workers_cli_run_the_cli():
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in config["options.entry_points"]["console_scripts"].split("\n") if line)
    module, _, function = scripts["opsevent"].partition(":")
    run = subprocess.run([sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}(['--help']))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "usage: opsevent" in run.stdout, run.stderr
    for argv in (["-m", "workers.cli", "--help"], ["-m", "workers.control.cli", "--help"]):
        run = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "usage: opsevent" in run.stdout, (argv, run.stderr)
