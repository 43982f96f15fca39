"""Which samples each rank decodes, and in which order: access patterns and sharding.

An access pattern turns the dataset's clips into one shard's samples for one epoch, in batch order.
Everything is derived from ``(seed, epoch)`` through numpy's PCG64, so every rank and every DALI
worker process computes the same lists without talking to each other (given the same numpy
version), and each epoch is reshuffled.

The shard's last batch follows the iterator's last-batch policy (see
:meth:`AccessPattern.epoch_samples`): PARTIAL serves every sample and lets a rank's last batch be
short, so the sequential patterns, which give every sample to some rank, may leave ranks one batch
apart; FILL and DROP give every rank the same number of batches, as distributed training needs (a
rank that runs out early leaves the others hanging in their next collective).

stdlib + numpy only: this module runs inside DALI worker processes.
"""
from __future__ import annotations

import operator
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from typing import ClassVar, Mapping

import numpy as np

from dali_gop.errors import ConfigError


@dataclass(frozen=True)
class SampleSpec:
    """One clip at one time point: every camera of ``clip``, at the same display ``frames``."""
    clip: str                # clip id
    frames: tuple[int, ...]  # display frame indices (0-based), len T >= 1, same for all cameras
    slot: int = -1           # stream slot (0..batch_size-1) for the stream pattern: consecutive
                             # batches give slot j consecutive frames of the same clip, so a
                             # decoder kept per slot can continue where it stopped;
                             # -1 = no continuity promised
    pad: bool = False        # True for filler samples added to complete the shard's last batch


@dataclass(frozen=True)
class ShardEpoch:
    """One shard of one epoch, batched by ``batch_size``: what a pattern needs besides the clips."""
    epoch: int
    seed: int
    shard_id: int
    num_shards: int
    batch_size: int

    def __post_init__(self) -> None:
        for f in fields(self):
            operator.index(getattr(self, f.name))  # TypeError for floats, strings, None
        if self.seed < 0 or self.epoch < 0:
            raise ConfigError(f"seed and epoch must be >= 0 (they seed numpy), got "
                             f"seed={self.seed}, epoch={self.epoch}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_shards < 1 or not 0 <= self.shard_id < self.num_shards:
            raise ConfigError(f"need 0 <= shard_id < num_shards, got shard_id={self.shard_id}, "
                             f"num_shards={self.num_shards}")

    @property
    def global_batch(self) -> int:
        """Samples per step over all shards together."""
        return self.batch_size * self.num_shards

    def rng(self) -> np.random.Generator:
        """The epoch's generator: independent of the shard, so all shards draw the same epoch."""
        return _rng(self.seed, self.epoch)


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, epoch]))


def clip_order(clips: Mapping[str, int], *, seed: int, epoch: int) -> list[str]:
    """The epoch's shuffled clip order used by the sequential patterns (stream, sequence).

    Clip ids are sorted before shuffling so the order never depends on the mapping's insertion
    order, which differs between processes that built it differently.
    """
    ids = sorted(clips)
    return [ids[i] for i in _rng(seed, epoch).permutation(len(ids))]


LAST_BATCH_POLICIES = ("PARTIAL", "FILL", "DROP")


def pad_to_batches(samples: list[SampleSpec], batch_size: int,
                   batches: int | None = None) -> list[SampleSpec]:
    """``samples`` followed by copies of its first samples (wrapping around) up to ``batches``
    whole batches (default: as few as hold them), as DALI's FILL last-batch policy does; copies
    are marked ``pad=True``.

    Copies get ``slot=-1``: a filler sits at an arbitrary batch position and continues nothing.
    """
    if batches is None:
        batches = -(-len(samples) // batch_size)
    missing = batches * batch_size - len(samples)
    return samples + [replace(samples[i % len(samples)], slot=-1, pad=True) for i in range(missing)]


class AccessPattern(ABC):
    """How an epoch visits the clips, and how its samples are split over shards and batches.

    Subclasses implement :meth:`_real_samples` (this shard's samples, unpadded, in batch order;
    where a batch is short, its real samples first) and may override :meth:`_real_count` with a
    closed form; the public methods validate the arguments, refuse empty epochs and make up the
    last batch as the last-batch policy says.
    """
    name: ClassVar[str]

    def epoch_samples(self, clips: Mapping[str, int], *, epoch: int, seed: int, shard_id: int,
                      num_shards: int, batch_size: int,
                      last_batch_policy: str = "PARTIAL") -> list[SampleSpec]:
        """This shard's samples for ``epoch``; each run of ``batch_size`` entries is one batch.

        ``last_batch_policy`` is the iterator's. PARTIAL: every sample of the shard, the last
        batch filled up with fillers (``pad=True``) that the iterator cuts off. FILL: as many
        batches as the rank with the most, filled up with fillers that the iterator serves (a
        rank with fewer samples gets whole batches of them). DROP: as many whole batches as the
        rank with the fewest; a shard that has more whole batches leaves its extra samples out,
        and a short last batch after them stays for the iterator to drop.
        """
        shard = ShardEpoch(epoch, seed, shard_id, num_shards, batch_size)
        clips = _checked_clips(clips)
        count, batches = self._kept(clips, shard, last_batch_policy)
        samples = self._real_samples(clips, shard)
        return pad_to_batches(samples[:count], batch_size, batches)

    def shard_size(self, clips: Mapping[str, int], *, epoch: int, seed: int, shard_id: int,
                   num_shards: int, batch_size: int, last_batch_policy: str = "PARTIAL") -> int:
        """Number of real (non-pad) samples in :meth:`epoch_samples`, without building the list."""
        shard = ShardEpoch(epoch, seed, shard_id, num_shards, batch_size)
        return self._kept(_checked_clips(clips), shard, last_batch_policy)[0]

    def _kept(self, clips: dict[str, int], shard: ShardEpoch, policy: str) -> tuple[int, int]:
        """(real samples, batches) of the shard's epoch under last-batch ``policy``."""
        if policy not in LAST_BATCH_POLICIES:
            raise ConfigError(f"last_batch_policy {policy!r}: choose one of {LAST_BATCH_POLICIES}")
        count = self._real_count(clips, shard)
        self._require_samples(count, shard)
        batches = -(-count // shard.batch_size)
        if policy == "PARTIAL":
            return count, batches
        counts = [count if r == shard.shard_id else
                  self._real_count(clips, replace(shard, shard_id=r))
                  for r in range(shard.num_shards)]
        if policy == "FILL":
            return count, -(-max(counts) // shard.batch_size)
        whole = min(counts) // shard.batch_size
        if not whole:
            raise ConfigError(
                f"last_batch_policy DROP leaves the {self.name} pattern no whole batch on some "
                f"shard (the smallest has {min(counts)} samples, batch_size={shard.batch_size}): "
                "use PARTIAL or FILL, or a smaller batch_size")
        if count // shard.batch_size > whole:
            return whole * shard.batch_size, whole
        return count, batches

    @abstractmethod
    def _real_samples(self, clips: dict[str, int], shard: ShardEpoch) -> list[SampleSpec]:
        """This shard's samples, in batch order, before padding."""

    def _real_count(self, clips: dict[str, int], shard: ShardEpoch) -> int:
        return len(self._real_samples(clips, shard))

    def _require_samples(self, count: int, shard: ShardEpoch) -> None:
        # An empty shard would give the DALI iterator a zero-length epoch: say why instead.
        if count == 0:
            raise ConfigError(
                f"the {self.name} pattern has no samples for shard {shard.shard_id} of "
                f"{shard.num_shards}: an epoch needs at least batch_size*num_shards = "
                f"{shard.global_batch} samples")


def _checked_clips(clips: Mapping[str, int]) -> dict[str, int]:
    if not clips:
        raise ConfigError("no clips given")
    checked = {clip: operator.index(n) for clip, n in clips.items()}
    negative = [clip for clip, n in checked.items() if n < 0]
    if negative:
        raise ConfigError(f"negative frame counts for clips {sorted(negative)[:5]}")
    return checked


def _random_count(total: int, shard: ShardEpoch) -> int:
    """Per-shard share of ``total`` random samples: equal on every shard (the remainder modulo
    ``num_shards`` is dropped), not necessarily whole batches."""
    return total // shard.num_shards


def _chunks(total: int, shard: ShardEpoch) -> tuple[np.ndarray, np.ndarray]:
    """(first item, length) of the shard's chunks, slot by slot: ``total`` items cut into
    ``batch_size*num_shards`` contiguous chunks, the first ``total mod batch_size*num_shards`` one
    item longer than the rest. Empty with fewer items than chunks: every slot of every rank needs
    an item."""
    length, extra = divmod(total, shard.global_batch)
    if not length:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    chunks = shard.shard_id * shard.batch_size + np.arange(shard.batch_size)
    return chunks * length + np.minimum(chunks, extra), length + (chunks < extra)


def _sequential_count(total: int, shard: ShardEpoch) -> int:
    """The shard's share of ``total`` items in :func:`_chunk_layout`."""
    return int(_chunks(total, shard)[1].sum())


def _chunk_layout(counts: np.ndarray, shard: ShardEpoch) -> tuple[list[int], list[int], list[int]]:
    """This shard's part of the sequential layout, in batch order: (clip position, item, slot).

    The items (every item of clip 0, then of clip 1, ...) are cut into chunks (:func:`_chunks`),
    every item in one. Shard r owns chunks ``r*B .. r*B+B-1``, chunk j of the shard being slot j,
    and batch i holds entry i of each chunk that has one. Keeping each slot's items contiguous is
    what lets a decoder kept per slot continue where it stopped instead of seeking. The longer
    chunks come first, so only the last batch can be short, and it holds the first slots: the
    iterator cuts a short batch at its end.
    """
    starts, lengths = _chunks(int(counts.sum()), shard)
    entry = np.arange(lengths.max(initial=0))[:, None]
    present = entry < lengths[None, :]               # (batches, slots), batch order row by row
    positions = (starts[None, :] + entry)[present]
    slot = np.broadcast_to(np.arange(len(lengths)), present.shape)[present]
    ends = np.cumsum(counts)
    clip = np.searchsorted(ends, positions, side="right")   # skips clips with no items
    item = positions - (ends[clip] - counts[clip])
    return clip.tolist(), item.tolist(), slot.tolist()


def _distinct_rows(rng: np.random.Generator, population: int, rows: int, k: int) -> np.ndarray:
    """``rows`` independent uniform draws of ``k`` distinct values in ``[0, population)``.

    Floyd's algorithm builds a uniform k-subset in k vectorized steps over all rows (numpy's
    ``choice`` would need a Python loop per row); it does not put the values in uniform order,
    hence the final per-row shuffle.
    """
    out = np.empty((rows, k), dtype=np.int64)
    for col, top in enumerate(range(population - k, population)):
        pick = rng.integers(0, top + 1, size=rows)
        taken = (out[:, :col] == pick[:, None]).any(axis=1)
        out[:, col] = np.where(taken, top, pick)
    return rng.permuted(out, axis=1)


_RANDOM_BLOCK = 256   # batches drawn per generator


def _random_batches(choices: np.ndarray, per_shard: int, shard: ShardEpoch,
                    distinct: bool) -> tuple[list[int], list[int]]:
    """This shard's ``per_shard`` samples of a random epoch, in batch order: (clip position,
    offset), the offset uniform in ``[0, choices[clip])``; with ``distinct`` no clip repeats in a
    batch.

    ``ceil(per_shard / batch_size) * num_shards`` batches are drawn for the whole epoch and dealt
    round robin (shard r takes batches r, r+N, ...), then each shard keeps its first ``per_shard``
    samples: shards never share a batch position, and the last batch may be partial (the base
    class pads it, and the iterator's last-batch policy decides what the user sees).
    """
    if per_shard == 0:   # nothing to draw: the base class refuses the empty shard and says why
        return [], []
    batches = -(-per_shard // shard.batch_size) * shard.num_shards
    clip, offset = [], []
    # Fixed-size blocks, each from its own generator: batch i is the same whatever the number of
    # batches drawn (which depends on the shard count), so any two layouts agree on a common prefix.
    for block in range(-(-batches // _RANDOM_BLOCK)):
        rng = np.random.default_rng([shard.seed, shard.epoch, block])
        if distinct:
            rows = _distinct_rows(rng, len(choices), _RANDOM_BLOCK, shard.batch_size)
        else:
            rows = rng.integers(0, len(choices), size=(_RANDOM_BLOCK, shard.batch_size))
        clip.append(rows)
        offset.append(rng.integers(0, choices[rows]))
    clip, offset = np.concatenate(clip)[:batches], np.concatenate(offset)[:batches]
    mine = slice(shard.shard_id, batches, shard.num_shards)
    return clip[mine].ravel()[:per_shard].tolist(), offset[mine].ravel()[:per_shard].tolist()


def _check_samples_per_epoch(samples_per_epoch: int | None) -> None:
    if samples_per_epoch is not None and operator.index(samples_per_epoch) < 1:
        raise ConfigError(f"samples_per_epoch must be >= 1 or None, got {samples_per_epoch}")


def shard_from_env() -> tuple[int, int]:
    """``(shard_id, num_shards)`` of this process.

    torch.distributed's rank and world size when a process group is initialized, else the
    RANK/WORLD_SIZE environment variables (torchrun sets both), else ``(0, 1)``.
    torch.distributed is only consulted if something already imported it: no process group can be
    initialized otherwise, and importing torch here would cost seconds in every DALI worker.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return _checked_shard(dist.get_rank(), dist.get_world_size(),
                              "torch.distributed rank", "world size")
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and world is None:
        return 0, 1
    if rank is None or world is None:
        raise ConfigError(f"RANK and WORLD_SIZE must be set together (torchrun sets both), got "
                         f"RANK={rank!r}, WORLD_SIZE={world!r}")
    try:
        shard_id, num_shards = int(rank), int(world)
    except ValueError:
        raise ConfigError(f"RANK and WORLD_SIZE must be integers, got RANK={rank!r}, "
                         f"WORLD_SIZE={world!r}") from None
    return _checked_shard(shard_id, num_shards, "RANK", "WORLD_SIZE")


def _checked_shard(shard_id: int, num_shards: int, id_name: str,
                   count_name: str) -> tuple[int, int]:
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ConfigError(f"need 0 <= {id_name} < {count_name}, got {id_name}={shard_id}, "
                         f"{count_name}={num_shards}")
    return shard_id, num_shards
