"""Start Sluice from a clone: `python run.py [--host H] [--port P] [--config PATH] [--workers N]`.

The same command as `sluice` once installed (`pip install .`); see server/cli.py.
"""

from __future__ import annotations

import signal
import sys

# First, before the imports below (most of start-up): SIGHUP's default action kills, and a reload
# sent on deploy (a config-management tool) can come before the reload handler is in place, which
# then takes over from this. A SIGHUP already held (a --workers worker) stays held for that handler:
# ignoring it would discard it. The same as server/cli.py's `ignore_sighup_while_starting`.
if signal.SIGHUP not in signal.pthread_sigmask(signal.SIG_BLOCK, ()):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

from server.cli import main  # after the lines above, on purpose

if __name__ == "__main__":
    sys.exit(main())
