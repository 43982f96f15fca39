"""Access patterns: which samples each rank decodes, and in which order (one class per order).

Everything is derived from ``(seed, epoch)``, so every rank and every DALI worker process computes
the same sample lists without talking to the others.
"""
from __future__ import annotations

from dataclasses import fields

from dali_gop.errors import ConfigError

from dali_gop.patterns._base import (LAST_BATCH_POLICIES, AccessPattern, SampleSpec, ShardEpoch,
                                     clip_order, shard_from_env)
from dali_gop.patterns._random import RandomPattern
from dali_gop.patterns._sequence import SequencePattern
from dali_gop.patterns._stream import StreamPattern

__all__ = ["AccessPattern", "SampleSpec", "ShardEpoch", "StreamPattern", "RandomPattern",
           "SequencePattern", "PATTERNS", "LAST_BATCH_POLICIES", "pattern_from_name", "clip_order",
           "shard_from_env"]

PATTERNS: dict[str, type[AccessPattern]] = {
    p.name: p for p in (StreamPattern, RandomPattern, SequencePattern)}


def pattern_from_name(name: str, **options) -> AccessPattern:
    """The pattern called ``name`` ("stream", "random" or "sequence"), built with ``options``
    (e.g. ``length=8, stride=2, random_starts=True`` for "sequence")."""
    if name not in PATTERNS:
        raise ConfigError(f"unknown access pattern {name!r}; valid names: {', '.join(PATTERNS)}")
    cls = PATTERNS[name]
    accepted = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"the {name} pattern has no option(s) {unknown}; it accepts "
                         f"{accepted or 'none'}")
    return cls(**options)
