"""Windows of frames for temporal models, sequential or at random starts."""
from __future__ import annotations

import operator

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dali_gop.errors import ConfigError

from dali_gop.patterns._base import (AccessPattern, SampleSpec, ShardEpoch,
                                     _check_samples_per_epoch, _chunk_layout, _random_batches,
                                     _random_count, _sequential_count, clip_order)


@dataclass(frozen=True)
class SequencePattern(AccessPattern):
    """Windows of ``length`` frames ``start, start+stride, ...`` per sample, for temporal models.

    A window spans ``(length-1)*stride + 1`` frames and must fit in its clip; shorter clips are
    skipped. ``random_starts=False``: every non-overlapping window (starts 0, span, 2*span, ...)
    once per epoch, laid out like :class:`StreamPattern` (a slot's consecutive batches move forward
    through the same clip; a short last batch as the last-batch policy says).
    ``random_starts=True``: random clips at uniformly random valid starts, like
    :class:`RandomPattern`, with distinct clips per batch when there are at least ``batch_size``
    fitting clips (otherwise clips may repeat); ``samples_per_epoch`` defaults to the number of
    non-overlapping windows, so both modes have epochs of the same length.
    """
    length: int = 4
    stride: int = 1
    random_starts: bool = False
    samples_per_epoch: int | None = None
    name: ClassVar[str] = "sequence"

    def __post_init__(self) -> None:
        if operator.index(self.length) < 1 or operator.index(self.stride) < 1:
            raise ConfigError(f"length and stride must be >= 1, got length={self.length}, "
                             f"stride={self.stride}")
        if self.samples_per_epoch is not None and not self.random_starts:
            raise ConfigError("samples_per_epoch applies to random_starts=True only: sequential "
                             "epochs visit every window once")
        _check_samples_per_epoch(self.samples_per_epoch)

    @property
    def span(self) -> int:
        """Frames covered by one window, first to last."""
        return (self.length - 1) * self.stride + 1

    def _real_samples(self, clips: dict[str, int], shard: ShardEpoch) -> list[SampleSpec]:
        fitting = self._fitting(clips)
        if self.random_starts:
            starts = np.array([clips[c] - self.span + 1 for c in fitting], dtype=np.int64)
            clip, start = _random_batches(starts, self._real_count(clips, shard), shard,
                                          distinct=shard.batch_size <= len(fitting))
            return [SampleSpec(fitting[c], self._frames(s)) for c, s in zip(clip, start)]
        fits = set(fitting)
        order = [c for c in clip_order(clips, seed=shard.seed, epoch=shard.epoch) if c in fits]
        windows = np.array([clips[c] // self.span for c in order], dtype=np.int64)
        clip, window, slot = _chunk_layout(windows, shard)
        return [SampleSpec(order[c], self._frames(w * self.span), s)
                for c, w, s in zip(clip, window, slot)]

    def _real_count(self, clips: dict[str, int], shard: ShardEpoch) -> int:
        fitting = self._fitting(clips)
        if self.random_starts:
            return _random_count(self._num_samples(clips, fitting), shard)
        return _sequential_count(self._window_count(clips, fitting), shard)

    def _fitting(self, clips: dict[str, int]) -> list[str]:
        fitting = [c for c in sorted(clips) if clips[c] >= self.span]
        if not fitting:
            raise ConfigError(f"no clip is long enough for one window of length={self.length}, "
                             f"stride={self.stride} ({self.span} frames); the longest has "
                             f"{max(clips.values())}")
        return fitting

    def _window_count(self, clips: dict[str, int], fitting: list[str]) -> int:
        return sum(clips[c] // self.span for c in fitting)

    def _num_samples(self, clips: dict[str, int], fitting: list[str]) -> int:
        if self.samples_per_epoch is None:
            return self._window_count(clips, fitting)
        return self.samples_per_epoch

    def _frames(self, start: int) -> tuple[int, ...]:
        return tuple(range(start, start + self.span, self.stride))
