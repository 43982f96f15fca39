"""The stream order: every frame once per epoch, each batch slot walking forward through clips."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dali_gop.patterns._base import (AccessPattern, SampleSpec, ShardEpoch, _balanced_count,
                                     _chunk_layout, clip_order)


@dataclass(frozen=True)
class StreamPattern(AccessPattern):
    """Every frame once per epoch, each slot walking forward through whole clips (T = 1).

    Clips are shuffled per epoch and their frames laid end to end, then cut into contiguous
    chunks, one per slot (see :func:`_chunk_layout`). At most ``batch_size*num_shards - 1`` frames
    per epoch are skipped (the end of the shuffled list); the shuffle changes which from one epoch
    to the next. No padding is ever needed.
    """
    name: ClassVar[str] = "stream"

    def _real_samples(self, clips: dict[str, int], shard: ShardEpoch) -> list[SampleSpec]:
        order = clip_order(clips, seed=shard.seed, epoch=shard.epoch)
        counts = np.array([clips[c] for c in order], dtype=np.int64)
        clip, frame, slot = _chunk_layout(counts, shard)
        return [SampleSpec(order[c], (f,), s) for c, f, s in zip(clip, frame, slot)]

    def _real_count(self, clips: dict[str, int], shard: ShardEpoch) -> int:
        return _balanced_count(sum(clips.values()), shard)
