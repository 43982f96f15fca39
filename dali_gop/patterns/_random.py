"""Random access: distinct random clips at random frames."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dali_gop.errors import ConfigError

from dali_gop.patterns._base import (AccessPattern, SampleSpec, ShardEpoch,
                                     _check_samples_per_epoch, _random_batches, _random_count)


@dataclass(frozen=True)
class RandomPattern(AccessPattern):
    """Independent random samples (T = 1): each batch holds ``batch_size`` distinct clips, each at
    a uniformly random frame.

    ``samples_per_epoch`` (all shards together) defaults to the total frame count, so an epoch
    decodes as many frames as the stream pattern; it is rounded down to a multiple of
    ``num_shards``, so a shard's last batch may be partial (padded, then the iterator's last-batch
    policy applies). Batches are dealt to shards round robin (see :func:`_random_batches`). Clips
    without frames are never drawn.
    """
    samples_per_epoch: int | None = None
    name: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        _check_samples_per_epoch(self.samples_per_epoch)

    def _real_samples(self, clips: dict[str, int], shard: ShardEpoch) -> list[SampleSpec]:
        ids = self._drawable(clips, shard)
        frames = np.array([clips[c] for c in ids], dtype=np.int64)
        clip, frame = _random_batches(frames, self._real_count(clips, shard), shard, distinct=True)
        return [SampleSpec(ids[c], (f,)) for c, f in zip(clip, frame)]

    def _real_count(self, clips: dict[str, int], shard: ShardEpoch) -> int:
        self._drawable(clips, shard)
        return _random_count(self._num_samples(clips), shard)

    def _num_samples(self, clips: dict[str, int]) -> int:
        if self.samples_per_epoch is None:
            return sum(clips.values())
        return self.samples_per_epoch

    @staticmethod
    def _drawable(clips: dict[str, int], shard: ShardEpoch) -> list[str]:
        ids = [c for c in sorted(clips) if clips[c] > 0]
        if shard.batch_size > len(ids):
            raise ConfigError(f"the random pattern puts batch_size={shard.batch_size} distinct "
                             f"clips in each batch, but only {len(ids)} clips have frames")
        return ids
