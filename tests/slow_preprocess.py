"""``python tests/slow_preprocess.py ARGS``: preprocess's command line on a slow disk, so that a run
lasts long enough to be interrupted, overlapped or killed midway. Every fsync takes FSYNC_DELAY
seconds more (default 0.01). STUCK=1 makes the workers ignore the SIGTERM that stops them (as if
stuck in a system call); GRACE overrides how long the main process waits before killing them.

The patches are made on import, outside the main guard: preprocess's workers are spawned and import
this file as their main module, so they write on the same slow disk and ignore the same SIGTERM.
"""
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import preprocess.runner as runner  # noqa: E402

_fsync = os.fsync
DELAY = float(os.environ.get("FSYNC_DELAY", "0.01"))


def _slow_fsync(fd: int) -> None:
    time.sleep(DELAY)
    _fsync(fd)


os.fsync = _slow_fsync
if os.environ.get("STUCK"):
    runner._worker_stop = lambda *_: signal.signal(signal.SIGTERM, signal.SIG_IGN)
runner.STOP_GRACE_S = float(os.environ.get("GRACE", runner.STOP_GRACE_S))

if __name__ == "__main__":
    from dali_gop.errors import run_cli
    from preprocess.__main__ import main
    sys.exit(run_cli(main, prog="python -m preprocess"))
