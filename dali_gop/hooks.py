"""Measurement without patches: hooks the nvdec operator calls around its work.

Modelled on SPDL's ``TaskHook``: a hook is handed to the loader (``make_loader(...,
hooks=[...])``) and every method is a context manager around one piece of the operator's work. The
default does nothing, and the operator skips the calls altogether when no hook is given, so the
hot path pays nothing for them. The benchmark's profiler (``pipelines.throughput.profile``) is one.

NVTX ranges (:func:`annotate`) mark the same pieces for Nsight Systems when the ``nvtx`` package
is installed, and cost nothing when it is not.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

try:
    import nvtx as _nvtx
except ImportError:     # an extra (the loader's), not needed to preprocess or to read the format
    _nvtx = None


def annotate(message: str, color: str | None = None):
    """An NVTX range around a block (Nsight Systems), or nothing without the nvtx package."""
    return _nvtx.annotate(message, color=color) if _nvtx is not None else contextlib.nullcontext()


class DecodeHook:
    """Override any of these; each wraps one piece of the operator's work and must yield once."""

    @contextlib.contextmanager
    def batch(self, stashed: int) -> Iterator[None]:
        """DALI's call of the operator for one batch (in DALI's thread); ``stashed``: batches the
        CPU stage had handed over when the call began."""
        yield

    @contextlib.contextmanager
    def schedule(self) -> Iterator[None]:
        """Planning a batch and queueing its decodes (in DALI's thread)."""
        yield

    @contextlib.contextmanager
    def finish(self) -> Iterator[None]:
        """Making DALI's stream wait for a batch's decodes and copying its stream picks."""
        yield

    @contextlib.contextmanager
    def wait(self) -> Iterator[None]:
        """Within :meth:`finish`: DALI's thread waiting until the pool threads have queued the
        batch's decodes, the GOPs its stream slots pick from included."""
        yield

    @contextlib.contextmanager
    def decode(self, name: str, gop: bool) -> Iterator[None]:
        """One decoder run on a pool thread: a GOP prefix, or a whole GOP for a stream slot
        (``gop``); ``name`` is the bin."""
        yield


@contextlib.contextmanager
def nested(hooks: tuple[DecodeHook, ...], method: str, *args) -> Iterator[None]:
    """Every hook's ``method(*args)``, entered in order."""
    with contextlib.ExitStack() as stack:
        for hook in hooks:
            stack.enter_context(getattr(hook, method)(*args))
        yield
