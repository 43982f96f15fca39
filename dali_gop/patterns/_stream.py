"""The stream order: every frame once per epoch, each batch slot walking forward through clips."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dali_gop.patterns._base import (AccessPattern, SampleSpec, ShardEpoch, _chunk_layout,
                                     _sequential_count, clip_order)


@dataclass(frozen=True)
class StreamPattern(AccessPattern):
    """Every frame once per epoch, each slot walking forward through whole clips (T = 1).

    Clips are shuffled per epoch and their frames laid end to end, then cut into contiguous
    chunks, one per slot of every rank (see :func:`_chunk_layout`): every frame of every clip is
    in one. Where ``batch_size*num_shards`` does not divide the frame count, the first chunks are
    one frame longer and the shard's last batch is short, as the last-batch policy says (DROP
    leaves out the last frame of the longer chunks).
    """
    name: ClassVar[str] = "stream"

    def _real_samples(self, clips: dict[str, int], shard: ShardEpoch) -> list[SampleSpec]:
        order = clip_order(clips, seed=shard.seed, epoch=shard.epoch)
        counts = np.array([clips[c] for c in order], dtype=np.int64)
        clip, frame, slot = _chunk_layout(counts, shard)
        return [SampleSpec(order[c], (f,), s) for c, f, s in zip(clip, frame, slot)]

    def _real_count(self, clips: dict[str, int], shard: ShardEpoch) -> int:
        return _sequential_count(sum(clips.values()), shard)
