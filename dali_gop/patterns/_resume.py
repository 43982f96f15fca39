"""An epoch resumed part way: the samples no rank has delivered yet, laid out for the ranks that
resume it.

Ranks deliver their batches in lock-step, so "each rank delivered b batches" says what all ranks
together delivered of an epoch: the first b batches of every shard. Resumed at the same number of
ranks and batch size, a shard goes on at its batch b. Resumed otherwise (elastic), the remainder
is the samples every old shard had still to deliver, old shard by old shard, each shard's in
slot order (a stream slot's frames stay consecutive); it is cut into ``num_shards * batch_size``
contiguous chunks, the first ``remainder mod (num_shards * batch_size)`` one sample longer, and
laid out as the sequential patterns lay out an epoch: rank r takes chunks ``r*B .. r*B+B-1``, chunk
j being its slot j, and batch i holds entry i of each. The last-batch policy then applies to the
remainder as to an epoch. Should the number of ranks change again within the epoch, the same rule
applies to what is left of the remainder.

stdlib + numpy only: DALI's worker processes work their samples out themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

from dali_gop.patterns._base import LAST_BATCH_POLICIES, AccessPattern, SampleSpec

#: (num_shards, batch_size, batches each rank delivered) of one layout an epoch ran in
Layout = tuple[int, int, int]


def served(samples: list[SampleSpec], size: int, batch_size: int,
           policy: str) -> list[SampleSpec]:
    """The real samples DALI's iterator hands out of a shard's samples, ``size`` of them real
    (DROP leaves out a short last batch; FILL's fillers are no samples of their own)."""
    if policy == "DROP":
        size = size // batch_size * batch_size
    return samples[:size]


@dataclass(frozen=True)
class Resumed:
    """``pattern`` from epoch ``first`` on, its first epoch resumed: ``skip`` batches of this
    shard's layout delivered already, after the ``earlier`` layouts the epoch ran in (at other
    rank counts or batch sizes). Later epochs are the pattern's own. A pipeline counts its epochs
    from 0, and its source takes them as epochs ``first``, ``first + 1``...

    Not an :class:`AccessPattern` of its own: what it serves is decided by the resumed state, and
    only the loader builds one."""
    pattern: AccessPattern
    first: int = 0
    skip: int = 0
    earlier: tuple[Layout, ...] = ()
    _memo: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __getstate__(self):
        # workers work the remainder out again rather than unpickling the samples of every rank
        return {**self.__dict__, "_memo": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)

    @property
    def name(self) -> str:
        return self.pattern.name

    def epoch_samples(self, clips: Mapping[str, int], *, epoch: int, batch_size: int,
                      **shard) -> list[SampleSpec]:
        if epoch or not (self.skip or self.earlier):
            return self.pattern.epoch_samples(clips, epoch=self.first + epoch,
                                              batch_size=batch_size, **shard)
        return self._layout(clips, batch_size=batch_size, **shard)[0][self.skip * batch_size:]

    def shard_size(self, clips: Mapping[str, int], *, epoch: int, batch_size: int,
                   **shard) -> int:
        if epoch or not (self.skip or self.earlier):
            return self.pattern.shard_size(clips, epoch=self.first + epoch,
                                           batch_size=batch_size, **shard)
        return max(0, self._layout(clips, batch_size=batch_size, **shard)[1]
                   - self.skip * batch_size)

    def _layout(self, clips: Mapping[str, int], *, seed: int, shard_id: int, num_shards: int,
                batch_size: int, last_batch_policy: str = "PARTIAL") -> tuple[list, int]:
        """(samples, real count) of the shard's layout of the resumed epoch, before skipping."""
        key = (shard_id, num_shards, batch_size, seed, last_batch_policy)
        if key not in self._memo:
            if not self.earlier:
                shard = dict(epoch=self.first, seed=seed, shard_id=shard_id,
                             num_shards=num_shards, batch_size=batch_size,
                             last_batch_policy=last_batch_policy)
                self._memo[key] = (self.pattern.epoch_samples(clips, **shard),
                                   self.pattern.shard_size(clips, **shard))
            else:
                rest = remainder(self.pattern, clips, epoch=self.first, seed=seed,
                                 last_batch_policy=last_batch_policy, layouts=self.earlier)
                self._memo[key] = lay_out(rest, shard_id=shard_id, num_shards=num_shards,
                                          batch_size=batch_size,
                                          last_batch_policy=last_batch_policy)
        return self._memo[key]


def remainder(pattern: AccessPattern, clips: Mapping[str, int], *, epoch: int, seed: int,
              last_batch_policy: str, layouts: tuple[Layout, ...]) -> list[SampleSpec]:
    """The samples of ``epoch`` that no rank delivered in ``layouts`` (the pattern's own layout
    first, then each remainder's), in the order the module docstring gives."""
    rest: list[SampleSpec] | None = None
    for num_shards, batch_size, batches in layouts:
        left: list[SampleSpec] = []
        for shard_id in range(num_shards):
            shard = dict(shard_id=shard_id, num_shards=num_shards, batch_size=batch_size,
                         last_batch_policy=last_batch_policy)
            if rest is None:
                samples = pattern.epoch_samples(clips, epoch=epoch, seed=seed, **shard)
                size = pattern.shard_size(clips, epoch=epoch, seed=seed, **shard)
            else:
                samples, size = lay_out(rest, **shard)
            undelivered = served(samples, size, batch_size, last_batch_policy)[
                batches * batch_size:]
            left += sorted(undelivered, key=lambda s: s.slot)   # stable: a slot's run in order
        rest = left
    return rest or []


def lay_out(rest: list[SampleSpec], *, shard_id: int, num_shards: int, batch_size: int,
            last_batch_policy: str = "PARTIAL") -> tuple[list[SampleSpec], int]:
    """(samples padded to whole batches, real count) of shard ``shard_id`` of the remainder
    ``rest``: chunks as the module docstring says, then the last-batch policy as for an epoch
    (PARTIAL: this shard's samples; FILL: as many batches as the shard with the most, filled up
    by wrapping to the shard's start, or the remainder's where the shard has none; DROP: as many
    whole batches as the shard with the fewest). A shard may have no samples left: its epoch is
    over."""
    if last_batch_policy not in LAST_BATCH_POLICIES:
        raise ValueError(f"last_batch_policy {last_batch_policy!r}")
    chunks = num_shards * batch_size
    length, extra = divmod(len(rest), chunks)
    lengths = [length + (c < extra) for c in range(chunks)]
    starts = [c * length + min(c, extra) for c in range(chunks)]
    counts = [sum(lengths[r * batch_size:(r + 1) * batch_size]) for r in range(num_shards)]
    mine = range(shard_id * batch_size, (shard_id + 1) * batch_size)
    own = [replace(rest[starts[c] + i], slot=c - mine.start if rest[starts[c] + i].slot >= 0
                   else -1)
           for i in range(lengths[mine.start]) for c in mine if i < lengths[c]]
    if last_batch_policy == "PARTIAL":
        batches = -(-len(own) // batch_size)
    elif last_batch_policy == "FILL":
        batches = -(-max(counts) // batch_size)
    else:
        batches = min(counts) // batch_size
        own = own[:batches * batch_size]
    fill = own or rest
    missing = batches * batch_size - len(own)
    return own + [replace(fill[i % len(fill)], slot=-1, pad=True) for i in range(missing)], len(own)
