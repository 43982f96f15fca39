"""``python tests/slow_preprocess.py ARGS``: preprocess's command line on a slow disk, so that a run
lasts long enough to be interrupted, overlapped or killed midway. Every fsync takes FSYNC_DELAY
seconds more (default 0.01). STUCK=1 makes the workers ignore the SIGTERM that stops them (as if
stuck in a system call); GRACE overrides how long the main process waits before killing them.

preprocess's workers are spawned: they get the slow disk through their initializer, which they
import by name from this file.
"""
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import preprocess.runner as runner  # noqa: E402

_init = runner._worker_init
_fsync = os.fsync


def _slow_fsync(fd: int) -> None:
    time.sleep(float(os.environ.get("FSYNC_DELAY", "0.01")))
    _fsync(fd)


def worker_init() -> None:
    """preprocess's worker initializer, on the slow disk (and with STUCK, deaf to SIGTERM)."""
    os.fsync = _slow_fsync
    if os.environ.get("STUCK"):
        runner._worker_stop = lambda *_: signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _init()


if __name__ == "__main__":
    import slow_preprocess   # this file by name (its folder is first on the path), as the workers

    from dali_gop.errors import run_cli
    from preprocess.__main__ import main
    os.fsync = _slow_fsync
    runner._worker_init = slow_preprocess.worker_init
    runner.STOP_GRACE_S = float(os.environ.get("GRACE", runner.STOP_GRACE_S))
    sys.exit(run_cli(main, prog="python -m preprocess"))
