"""The ``opsevent`` command's old address, kept as a door: the command lives in ``workers/control/cli.py``.

Kept because ``python -m workers.cli`` is documented and scripted, and the
``opsevent`` console script of an install made before the move calls
``workers.cli:main`` until it is reinstalled.  A re-export: nothing runs here.
"""

import sys

from workers.control.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
