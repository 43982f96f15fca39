"""CUDA's hardware work queues for the process: more of them, so that the loader's streams do not
queue behind the training's kernels.

The driver maps every stream of a context onto one of ``CUDA_DEVICE_MAX_CONNECTIONS`` hardware
queues (CUDA's default 8), and work in one queue runs in order whatever stream it came from. The
loader keeps dozens of streams (one per decode thread, DALI's, the fetch thread's), so with eight
queues some of them share the queue of the training's default stream, and a decode thread's copy
waits there behind every kernel the training has queued: the false dependency that makes the
loader's work add to a step instead of hiding behind it. The variable is read once, when the
process makes its CUDA context, so it is set when ``dali_gop`` is imported, before that.
"""
from __future__ import annotations

import os
import sys
import warnings

VARIABLE = "CUDA_DEVICE_MAX_CONNECTIONS"
#: queues asked for: CUDA's most
WORK_QUEUES = 32

_too_late = False


def widen() -> None:
    """Set :data:`VARIABLE` to :data:`WORK_QUEUES` unless the process has set it or torch has made
    its CUDA context already (then :func:`warn_if_narrow` says so, once, for a GPU loader)."""
    global _too_late
    if VARIABLE in os.environ:
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        _too_late = True
        return
    os.environ[VARIABLE] = str(WORK_QUEUES)


def warn_if_narrow() -> None:
    global _too_late
    if _too_late:
        _too_late = False
        warnings.warn(f"dali_gop was imported after torch made its CUDA context, so the loader's "
                      f"streams share CUDA's 8 hardware queues with the training's kernels and "
                      f"may wait behind them: import dali_gop before the model touches the GPU, "
                      f"or start the process with {VARIABLE}={WORK_QUEUES} (any value set "
                      "silences this)", stacklevel=3)
