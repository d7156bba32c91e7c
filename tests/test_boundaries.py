"""opsevent stays pure: importing it pulls in no broker client and no processes."""

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
