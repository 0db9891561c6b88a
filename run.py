"""Start Sluice from a clone: `python run.py [--host H] [--port P] [--config PATH] [--workers N]`.

The same command as `sluice` once installed (`pip install .`); see server/cli.py.
"""

from __future__ import annotations

import sys

from server.cli import main

if __name__ == "__main__":
    sys.exit(main())
