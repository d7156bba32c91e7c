"""``python -m workers.demo`` (``./run demo``): the SIP demo, ``workers/demo/sipdemo.py``."""

import sys

from workers.demo.sipdemo import main

if __name__ == "__main__":
    sys.exit(main())
