"""dali-gop: demuxer-free GOP video loading for training, on NVIDIA DALI.

Two doors. Offline, once per dataset, ``python -m preprocess`` writes the GOP store (the format is
:mod:`dali_gop.format`). At training time::

    from dali_gop import make_loader

    loader = make_loader("/data/gops", "stream", batch_size=4)
    for batch in loader:                     # one epoch
        batch["frames"]                      # uint8 (B, cameras, T, H, W, 3), CUDA with nvdec

What this module exports is the public API; modules whose names start with ``_`` are not.
"""
# first, before anything can make a CUDA context (dali_gop._work_queues says why)
from dali_gop import _work_queues  # isort: skip
_work_queues.widen()
# ruff: noqa: E402
from dali_gop._loader import GopLoader, make_loader
from dali_gop._pipeline import gop_video
from dali_gop.errors import ConfigError, DaliGopError, DecodeError, FormatError, WorkerError
from dali_gop.hooks import DecodeHook
from dali_gop.patterns import AccessPattern, RandomPattern, SampleSpec, SequencePattern, StreamPattern

__all__ = [
    "make_loader", "GopLoader", "gop_video",
    "AccessPattern", "StreamPattern", "RandomPattern", "SequencePattern", "SampleSpec",
    "DaliGopError", "FormatError", "ConfigError", "DecodeError", "WorkerError",
    "DecodeHook",
]
