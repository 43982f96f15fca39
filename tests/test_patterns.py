"""Tests for the access patterns and sharding: every rank must compute the same epoch, shards must
be disjoint, the stream layout must keep each slot's frames consecutive (per-slot decoders rely on
it), and under FILL and DROP every rank must get the same number of batches (an unbalanced rank
hangs the others).

Random epochs (RandomPattern, SequencePattern(random_starts=True)) give each shard
``samples_per_epoch // num_shards`` real samples, not rounded to whole batches: a shard's last
batch may be partial and is padded with the shard's first samples. The sequential patterns give
every frame (window) to one rank, chunks of one length or one more; under PARTIAL the ranks may
then be a batch apart. tests/test_coverage.py checks what the iterator delivers of all this."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from dataclasses import dataclass, replace
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dali_gop.patterns import (AccessPattern, RandomPattern, SampleSpec, SequencePattern,
                               StreamPattern, clip_order,
                               pattern_from_name, shard_from_env)
from dali_gop.patterns._base import pad_to_batches

ROOT = Path(__file__).resolve().parent.parent
CLIPS = {f"scene-{i:04d}": 20 + 3 * i for i in range(12)}

PATTERNS = [
    StreamPattern(),
    RandomPattern(),
    RandomPattern(samples_per_epoch=50),
    SequencePattern(length=4, stride=2),
    SequencePattern(length=3, random_starts=True),
    SequencePattern(length=2, stride=3, random_starts=True, samples_per_epoch=40),
]


POLICIES = ("PARTIAL", "FILL", "DROP")


def samples(pattern, clips=CLIPS, *, epoch=0, seed=0, shard_id=0, num_shards=1, batch_size=4,
            policy="PARTIAL"):
    return pattern.epoch_samples(clips, epoch=epoch, seed=seed, shard_id=shard_id,
                                 num_shards=num_shards, batch_size=batch_size,
                                 last_batch_policy=policy)


def size(pattern, clips=CLIPS, *, epoch=0, seed=0, shard_id=0, num_shards=1, batch_size=4,
         policy="PARTIAL"):
    return pattern.shard_size(clips, epoch=epoch, seed=seed, shard_id=shard_id,
                              num_shards=num_shards, batch_size=batch_size,
                              last_batch_policy=policy)


def all_shards(pattern, clips, num_shards, batch_size, epoch=0, seed=0, policy="PARTIAL"):
    return [samples(pattern, clips, epoch=epoch, seed=seed, shard_id=r, num_shards=num_shards,
                    batch_size=batch_size, policy=policy) for r in range(num_shards)]


def batches(shard: list[SampleSpec], batch_size: int) -> list[list[SampleSpec]]:
    return [shard[i:i + batch_size] for i in range(0, len(shard), batch_size)]


def real(shard: list[SampleSpec]) -> list[SampleSpec]:
    return [s for s in shard if not s.pad]


def keys(specs) -> list[tuple[str, int]]:
    """(clip, first frame) of each sample: unique per sample in the sequential patterns."""
    return [(s.clip, s.frames[0]) for s in specs]


def is_sequential(pattern) -> bool:
    return isinstance(pattern, StreamPattern) or (isinstance(pattern, SequencePattern)
                                                  and not pattern.random_starts)


def span(pattern) -> int:
    """Frames covered by one sample, first to last (also the step between sequential windows)."""
    return pattern.span if isinstance(pattern, SequencePattern) else 1


def frame_shape(pattern) -> tuple[int, int]:
    """(T, stride) of the pattern's samples."""
    if isinstance(pattern, SequencePattern):
        return pattern.length, pattern.stride
    return 1, 1


def expected_sizes(pattern, clips, num_shards, batch_size, policy="PARTIAL") -> list[int] | None:
    """Real samples of each shard, worked out independently of the module; None where the epoch
    must be refused (no samples on a shard, too few clips for distinct batches, no fitting clip,
    no whole batch under DROP)."""
    step = span(pattern)
    if isinstance(pattern, StreamPattern):
        total = sum(clips.values())
    else:
        usable = [c for c, n in clips.items() if n >= step and n > 0]
        if not usable:
            return None
        if isinstance(pattern, RandomPattern) and batch_size > len(usable):
            return None
        total = sum(clips[c] // step for c in usable)
    if is_sequential(pattern):
        chunks = batch_size * num_shards
        if total < chunks:
            return None                   # a slot of some rank would have nothing
        lengths = [total // chunks + (c < total % chunks) for c in range(chunks)]
        counts = [sum(lengths[r * batch_size:(r + 1) * batch_size]) for r in range(num_shards)]
    else:
        if pattern.samples_per_epoch is not None:
            total = pattern.samples_per_epoch
        # equal on every shard, not rounded to whole batches
        counts = [total // num_shards] * num_shards
    if not all(counts):
        return None
    if policy == "DROP":
        whole = min(counts) // batch_size
        if not whole:
            return None
        # whole batches beyond the fewest are left out; a short batch after them stays for the
        # iterator to drop
        counts = [whole * batch_size if n // batch_size > whole else n for n in counts]
    return counts


def delivered(shard: list[SampleSpec], count: int, batch_size: int, policy: str):
    """What DALI's iterator hands out of a shard's samples under ``policy`` (its size being the
    shard's real count, plus whole filler batches under FILL: see GopSource.shard_size)."""
    if policy == "PARTIAL":
        return shard[:count]
    if policy == "DROP":
        return shard[:count // batch_size * batch_size]
    return shard


# ---- determinism ------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
def test_same_seed_and_epoch_give_the_same_epoch(pattern):
    assert samples(pattern, epoch=3, seed=7) == samples(pattern, epoch=3, seed=7)
    assert samples(pattern, dict(reversed(CLIPS.items())), epoch=3, seed=7) == \
        samples(pattern, epoch=3, seed=7)


@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
def test_epochs_and_seeds_reshuffle(pattern):
    first = samples(pattern, epoch=0, seed=0)
    assert samples(pattern, epoch=1, seed=0) != first
    assert samples(pattern, epoch=0, seed=1) != first


def test_epoch_is_the_same_in_another_process_and_sampling_imports_no_torch_or_dali():
    script = (
        "import sys\n"
        "from dali_gop.patterns import pattern_from_name\n"
        f"clips = {CLIPS!r}\n"
        "for name, opts in [('stream', {}), ('random', {}), ('sequence', {'length': 3})]:\n"
        "    print(pattern_from_name(name, **opts).epoch_samples(clips, epoch=2, seed=5, "
        "shard_id=1, num_shards=2, batch_size=3))\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'nvidia')]\n"
        "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    here = [pattern_from_name(name, **opts).epoch_samples(CLIPS, epoch=2, seed=5, shard_id=1,
                                                          num_shards=2, batch_size=3)
            for name, opts in [("stream", {}), ("random", {}), ("sequence", {"length": 3})]]
    assert out.splitlines() == [repr(s) for s in here]


# ---- sharding: disjoint, balanced, covering ----------------------------------------------------

def check_epoch(pattern, clips, num_shards, batch_size, epoch=0, seed=0, policy="PARTIAL"):
    """Every shard property the loader relies on, for one epoch; returns the shards."""
    shards = all_shards(pattern, clips, num_shards, batch_size, epoch, seed, policy)
    sizes = [size(pattern, clips, epoch=epoch, seed=seed, shard_id=r, num_shards=num_shards,
                  batch_size=batch_size, policy=policy) for r in range(num_shards)]
    assert sizes == expected_sizes(pattern, clips, num_shards, batch_size, policy)
    counts = [len(delivered(shard, n, batch_size, policy)) for shard, n in zip(shards, sizes)]
    steps = [-(-n // batch_size) for n in counts]
    if policy == "PARTIAL":
        assert max(steps) - min(steps) <= 1, "ranks at most a batch apart"
        assert all(n >= max(counts) - batch_size for n in counts)
    else:
        assert len(set(steps)) == 1, f"{policy}: every rank gets the same number of batches"
    length, stride = frame_shape(pattern)
    for shard, n in zip(shards, sizes):
        assert len(shard) % batch_size == 0
        own = -(-n // batch_size) * batch_size
        if policy == "FILL":
            assert len(shard) == max(steps) * batch_size, "filled up to the most batches"
        else:
            assert len(shard) == own, "less than one batch of padding"
        assert len(real(shard)) == n
        assert real(shard) == shard[:n], "pad samples only at the end"
        assert shard[n:] == [replace(shard[i % n], slot=-1, pad=True)
                             for i in range(len(shard) - n)], "pads wrap to the shard's first"
        for s in shard:
            assert len(s.frames) == length
            assert list(s.frames) == list(range(s.frames[0], s.frames[-1] + 1, stride))
            assert 0 <= s.frames[0] and s.frames[-1] < clips[s.clip]
    if is_sequential(pattern):
        check_sequential(pattern, clips, shards, sizes, batch_size, policy)
    else:
        check_round_robin(pattern, clips, shards, batch_size, epoch, seed)
    return shards


def check_sequential(pattern, clips, shards, sizes, batch_size, policy):
    step = span(pattern)
    everything = {(c, k * step) for c, n in clips.items() for k in range(n // step)}
    taken = [k for shard, n in zip(shards, sizes)
             for k in keys(real(delivered(shard, n, batch_size, policy)))]
    assert len(taken) == len(set(taken)), "shards (and samples within a shard) are disjoint"
    if policy == "DROP":
        assert set(taken) <= everything
        assert len(everything) - len(taken) < batch_size * len(shards)
    else:
        assert set(taken) == everything, "every window (frame) of every clip, once"
    chunk = len(everything) // (batch_size * len(shards))
    for shard, n in zip(shards, sizes):
        assert all(s.pad for s in shard[n:]) and not any(s.pad for s in shard[:n])
        last = shard[n // batch_size * batch_size:n]
        assert [s.slot for s in last] == list(range(len(last))), \
            "a short batch holds the first slots, first"
        for j in range(batch_size):
            lane = [s for s in real(shard) if s.slot == j]
            assert len(lane) in (chunk, chunk + 1)
            assert lane == real(shard[j::batch_size])
            for prev, cur in zip(lane, lane[1:]):
                if cur.clip == prev.clip:
                    assert cur.frames[0] == prev.frames[0] + step
                else:  # crossed from the last window of one clip to the first of the next
                    assert cur.frames[0] == 0
                    assert prev.frames[0] + 2 * step > clips[prev.clip]


def check_round_robin(pattern, clips, shards, batch_size, epoch, seed):
    """Shard r's batch i is batch i*N+r of one global draw, truncated to the shard's size.

    The global draw is the 1-shard epoch's batch sequence; it does not depend on how many batches
    are drawn, so the reference is a 1-shard epoch long enough to hold every shard's last batch
    whole. The shards' batches interleaved are that sequence's first batches (disjoint positions),
    except that each shard's last batch may be cut short.
    """
    num_shards = len(shards)
    per_shard = [batches(real(s), batch_size) for s in shards]
    n = len(real(shards[0]))
    drawn = len(per_shard[0]) * num_shards           # global batches the shards take from
    reference = batches(samples(replace(pattern, samples_per_epoch=drawn * batch_size), clips,
                                epoch=epoch, seed=seed, batch_size=batch_size), batch_size)
    assert len(reference) == drawn and all(len(b) == batch_size for b in reference)
    for r in range(num_shards):
        assert len(per_shard[r]) == -(-n // batch_size)
        mine = [s for b in reference[r::num_shards] for s in b]
        assert real(shards[r]) == mine[:n], "shard r holds global batches r, r+N, ... truncated"
    full = [per_shard[r][i] for i in range(len(per_shard[0])) for r in range(num_shards)
            if len(per_shard[r][i]) == batch_size]
    assert full == [reference[i * num_shards + r] for i in range(len(per_shard[0]))
                    for r in range(num_shards) if len(per_shard[r][i]) == batch_size]
    # the pattern's own 1-shard epoch is a prefix (or extension) of the same global sequence
    single = real(samples(pattern, clips, epoch=epoch, seed=seed, batch_size=batch_size))
    flat = [s for b in reference for s in b]
    common = min(len(single), len(flat))
    assert single[:common] == flat[:common]
    for r in range(num_shards):
        for i, batch in enumerate(per_shard[r]):
            start = (i * num_shards + r) * batch_size
            assert batch[:max(0, len(single) - start)] == single[start:start + len(batch)]
    fitting = [c for c, n in clips.items() if n >= span(pattern)]
    for shard in per_shard:
        for batch in shard:
            assert all(s.slot == -1 and not s.pad for s in batch)
            if batch_size <= len(fitting):
                assert len({s.clip for s in batch}) == len(batch), "distinct clips per batch"


@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
@pytest.mark.parametrize("num_shards", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 2, 5])
@pytest.mark.parametrize("policy", POLICIES)
def test_shards_are_disjoint_and_cover_the_epoch(pattern, num_shards, batch_size, policy):
    check_epoch(pattern, CLIPS, num_shards, batch_size, epoch=1, seed=11, policy=policy)


def test_stream_drops_fewer_than_a_global_batch_and_different_frames_each_epoch_under_drop():
    clips = {"a": 7, "b": 5, "c": 4}  # 16 frames, global batch 6: 4 dropped
    dropped = []
    for epoch in range(6):
        shards = all_shards(StreamPattern(), clips, 2, 3, epoch, policy="DROP")
        taken = set(keys(real(s for shard in shards for s in delivered(shard, len(real(shard)), 3,
                                                                       "DROP"))))
        dropped.append({(c, f) for c, n in clips.items() for f in range(n)} - taken)
        assert len(dropped[-1]) == 4
    assert len({frozenset(d) for d in dropped}) > 1


# ---- the stream order ----------------------------------------------------------------------

def test_stream_order_is_chunk_per_slot_interleaved_by_batch():
    clips = {"a": 3, "b": 3}
    first, second = clip_order(clips, seed=0, epoch=0)
    got = samples(StreamPattern(), clips, batch_size=2)
    assert [[(s.clip, s.frames, s.slot) for s in b] for b in batches(got, 2)] == [
        [(first, (0,), 0), (second, (0,), 1)],
        [(first, (1,), 0), (second, (1,), 1)],
        [(first, (2,), 0), (second, (2,), 1)],
    ]


def test_stream_slot_crosses_clip_boundaries_in_the_shuffled_order():
    clips = {"a": 3, "b": 2, "c": 1}
    order = clip_order(clips, seed=4, epoch=2)
    got = samples(StreamPattern(), clips, epoch=2, seed=4, batch_size=2)
    frames = [(c, f) for c in order for f in range(clips[c])]
    assert keys(s for s in got if s.slot == 0) == frames[:3]
    assert keys(s for s in got if s.slot == 1) == frames[3:]


def test_clip_order_is_a_per_epoch_permutation_of_the_sorted_ids():
    orders = {tuple(clip_order(CLIPS, seed=0, epoch=e)) for e in range(5)}
    assert all(sorted(o) == sorted(CLIPS) for o in orders)
    assert len(orders) == 5


# ---- random -----------------------------------------------------------------------------------

def test_random_batches_hold_distinct_clips_at_frames_in_range():
    clips = {"a": 1, "b": 2, "c": 50, "empty": 0}
    got = samples(RandomPattern(samples_per_epoch=3000), clips, batch_size=3)
    assert len(got) == 3000
    for batch in batches(got, 3):
        assert sorted(s.clip for s in batch) == ["a", "b", "c"]
        assert all(0 <= s.frames[0] < clips[s.clip] for s in batch)
    assert {s.frames[0] for s in got if s.clip == "c"} == set(range(50)), "uniform frames"
    positions = {(i, s.clip) for batch in batches(got, 3) for i, s in enumerate(batch)}
    assert len(positions) == 9, "every clip at every batch position"


def test_random_defaults_to_the_frame_count_split_equally_over_shards():
    total = sum(CLIPS.values())  # 438
    for r in range(3):
        assert size(RandomPattern(), shard_id=r, num_shards=3, batch_size=5) == total // 3 == 146
        got = samples(RandomPattern(), shard_id=r, num_shards=3, batch_size=5)
        assert len(got) == 150 and len(real(got)) == 146, "not rounded to whole batches"
    assert size(RandomPattern(samples_per_epoch=31), num_shards=2, batch_size=4) == 15
    windows = sum(n // 3 for n in CLIPS.values())
    assert size(SequencePattern(length=3, random_starts=True), num_shards=4, batch_size=5) == \
        windows // 4


def test_random_epoch_pads_a_partial_last_batch_with_its_first_samples():
    pattern = RandomPattern(samples_per_epoch=7)
    assert size(pattern, batch_size=3) == 7
    got = samples(pattern, batch_size=3)
    assert len(got) == 9
    assert not any(s.pad for s in got[:7])
    assert got[7:] == [replace(got[0], pad=True), replace(got[1], pad=True)]
    assert all(s.pad and s.slot == -1 for s in got[7:])


def test_random_batches_do_not_depend_on_how_many_are_drawn():
    # more than one 256-batch block, so the prefix must hold across block boundaries too
    for make in (lambda n: RandomPattern(samples_per_epoch=n),
                 lambda n: SequencePattern(length=3, random_starts=True, samples_per_epoch=n)):
        long = samples(make(600 * 3), batch_size=3, epoch=2, seed=9)
        for n in (1, 5, 767, 768, 769, 1000):
            assert real(samples(make(n), batch_size=3, epoch=2, seed=9)) == long[:n]


def test_random_rejects_more_batch_slots_than_clips():
    with pytest.raises(ValueError, match="batch_size=3 distinct clips.*only 2 clips"):
        samples(RandomPattern(), {"a": 5, "b": 5, "empty": 0}, batch_size=3)
    with pytest.raises(ValueError, match="distinct clips"):
        size(RandomPattern(), {"a": 5, "b": 5}, batch_size=3)


# ---- sequence ---------------------------------------------------------------------------------

def test_sequential_windows_tile_each_clip_without_overlap():
    clips = {"a": 10, "b": 6, "short": 4}
    pattern = SequencePattern(length=3, stride=2)  # span 5
    got = samples(pattern, clips, batch_size=1)
    assert sorted((s.clip, s.frames) for s in got) == [
        ("a", (0, 2, 4)), ("a", (5, 7, 9)), ("b", (0, 2, 4))]
    assert [s.slot for s in got] == [0, 0, 0]


def test_random_starts_cover_every_valid_start_and_fit():
    clips = {"a": 9, "b": 4}
    got = samples(SequencePattern(length=2, stride=3, random_starts=True, samples_per_epoch=400),
                  clips, batch_size=2)
    assert {(s.clip, s.frames) for s in got} == {
        ("a", (f, f + 3)) for f in range(6)} | {("b", (0, 3))}
    assert all(len({s.clip for s in b}) == 2 for b in batches(got, 2))


def test_random_starts_repeat_clips_when_there_are_too_few():
    got = samples(SequencePattern(length=2, random_starts=True, samples_per_epoch=8), {"a": 5},
                  batch_size=4)
    assert len(got) == 8 and {s.clip for s in got} == {"a"}


def test_sequence_needs_a_clip_that_fits():
    with pytest.raises(ValueError, match="no clip is long enough.*7 frames.*longest has 6"):
        samples(SequencePattern(length=4, stride=2), {"a": 6, "b": 2})


def test_sequence_options_are_validated():
    with pytest.raises(ValueError, match="length and stride"):
        SequencePattern(length=0)
    with pytest.raises(ValueError, match="random_starts=True only"):
        SequencePattern(length=2, samples_per_epoch=10)


# ---- padding ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FirstFrames(AccessPattern):
    """A plug-in pattern whose shards do not fill whole batches: frame i of clip "x", i < count."""
    count: int
    name: ClassVar[str] = "first-frames"

    def _real_samples(self, clips, shard):
        return [SampleSpec("x", (i,), slot=i % shard.batch_size) for i in range(self.count)]


@pytest.mark.parametrize("count, batch_size", [(3, 4), (3, 8), (5, 2), (4, 4)])
def test_padding_repeats_the_shards_first_samples_at_the_end(count, batch_size):
    pattern = FirstFrames(count)
    got = samples(pattern, {"x": 100}, batch_size=batch_size)
    assert size(pattern, {"x": 100}, batch_size=batch_size) == count
    assert len(got) == -(-count // batch_size) * batch_size
    assert got[:count] == [SampleSpec("x", (i,), slot=i % batch_size) for i in range(count)]
    for i, s in enumerate(got[count:]):
        assert s == SampleSpec("x", (i % count,), slot=-1, pad=True)


def test_pad_to_batches_keeps_full_batches_unchanged():
    specs = [SampleSpec("a", (0,)), SampleSpec("a", (1,))]
    assert pad_to_batches(specs, 2) == specs
    assert pad_to_batches(specs, 1) == specs


def test_an_epoch_too_small_for_every_shard_is_refused():
    with pytest.raises(ValueError, match="batch_size\\*num_shards = 12"):
        samples(StreamPattern(), {"a": 5, "b": 6}, num_shards=3, batch_size=4)
    # random epochs are refused only when a shard would get no sample at all
    for r in range(4):
        with pytest.raises(ValueError, match="no samples"):
            size(RandomPattern(samples_per_epoch=3), {"a": 5, "b": 6}, shard_id=r, num_shards=4,
                 batch_size=2)
        with pytest.raises(ValueError, match="no samples"):
            samples(RandomPattern(samples_per_epoch=3), {"a": 5, "b": 6}, shard_id=r,
                    num_shards=4, batch_size=2)
    with pytest.raises(ValueError, match="no samples"):
        samples(SequencePattern(length=5, random_starts=True), {"a": 5, "b": 9}, num_shards=3)
    # one sample per shard is enough, even with a batch of two: the rest is padding
    for r in range(2):
        got = samples(RandomPattern(samples_per_epoch=3), {"a": 5, "b": 6}, shard_id=r,
                      num_shards=2, batch_size=2)
        assert len(got) == 2 and not got[0].pad and got[1] == replace(got[0], pad=True)
    assert size(SequencePattern(length=5, random_starts=True), {"a": 5, "b": 9},
                num_shards=2) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"shard_id": 2, "num_shards": 2}, "shard_id"),
    ({"shard_id": -1, "num_shards": 2}, "shard_id"),
    ({"batch_size": 0}, "batch_size"),
    ({"seed": -1}, "seed and epoch"),
    ({"epoch": -2}, "seed and epoch"),
])
def test_bad_shard_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        samples(StreamPattern(), **kwargs)


def test_bad_clip_counts_are_refused():
    with pytest.raises(ValueError, match="no clips"):
        samples(StreamPattern(), {})
    with pytest.raises(ValueError, match="negative frame counts"):
        samples(StreamPattern(), {"a": 5, "b": -1})


# ---- names and environment ---------------------------------------------------------------------

def test_pattern_from_name():
    assert pattern_from_name("stream") == StreamPattern()
    assert pattern_from_name("random", samples_per_epoch=9) == RandomPattern(9)
    assert pattern_from_name("sequence", length=4, stride=2, random_starts=True) == \
        SequencePattern(4, 2, True)
    assert [pattern_from_name(n).name for n in ("stream", "random")] == ["stream", "random"]
    with pytest.raises(ValueError, match="valid names: stream, random, sequence"):
        pattern_from_name("shuffle")
    with pytest.raises(ValueError, match="stream pattern has no option.*'length'"):
        pattern_from_name("stream", length=3)


@pytest.fixture
def no_torch_group(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch.distributed", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return monkeypatch


def test_shard_from_env_defaults_to_a_single_shard(no_torch_group):
    assert shard_from_env() == (0, 1)


def test_shard_from_env_reads_torchrun_variables(no_torch_group):
    no_torch_group.setenv("RANK", "3")
    no_torch_group.setenv("WORLD_SIZE", "8")
    assert shard_from_env() == (3, 8)


@pytest.mark.parametrize("rank, world, message", [
    ("8", "8", "0 <= RANK < WORLD_SIZE, got RANK=8, WORLD_SIZE=8"),
    ("-1", "4", "0 <= RANK < WORLD_SIZE"),
    ("0", "0", "0 <= RANK < WORLD_SIZE"),
    ("one", "4", "must be integers.*'one'"),
    ("1", None, "must be set together"),
    (None, "2", "must be set together"),
])
def test_shard_from_env_rejects_bad_variables(no_torch_group, rank, world, message):
    for name, value in (("RANK", rank), ("WORLD_SIZE", world)):
        if value is not None:
            no_torch_group.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        shard_from_env()


def fake_dist(initialized: bool, rank: int, world: int) -> types.ModuleType:
    dist = types.ModuleType("torch.distributed")
    dist.is_available = lambda: True
    dist.is_initialized = lambda: initialized
    dist.get_rank = lambda: rank
    dist.get_world_size = lambda: world
    return dist


def test_shard_from_env_prefers_an_initialized_torch_process_group(no_torch_group):
    no_torch_group.setenv("RANK", "0")
    no_torch_group.setenv("WORLD_SIZE", "1")
    no_torch_group.setitem(sys.modules, "torch.distributed", fake_dist(True, 2, 4))
    assert shard_from_env() == (2, 4)
    no_torch_group.setitem(sys.modules, "torch.distributed", fake_dist(False, 2, 4))
    assert shard_from_env() == (0, 1)
    no_torch_group.setitem(sys.modules, "torch.distributed", fake_dist(True, 4, 4))
    with pytest.raises(ValueError, match="torch.distributed rank"):
        shard_from_env()


# ---- properties over random datasets -----------------------------------------------------------

patterns = st.one_of(
    st.just(StreamPattern()),
    st.builds(RandomPattern, st.none() | st.integers(1, 200)),
    st.builds(SequencePattern, st.integers(1, 4), st.integers(1, 3), st.just(False)),
    st.builds(SequencePattern, st.integers(1, 4), st.integers(1, 3), st.just(True),
              st.none() | st.integers(1, 200)),
)
datasets = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), st.integers(0, 40),
                           min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(pattern=patterns, clips=datasets, num_shards=st.integers(1, 4),
       batch_size=st.integers(1, 6), epoch=st.integers(0, 5), seed=st.integers(0, 2**32),
       policy=st.sampled_from(POLICIES))
def test_properties_hold_on_any_dataset(pattern, clips, num_shards, batch_size, epoch, seed,
                                        policy):
    if expected_sizes(pattern, clips, num_shards, batch_size, policy) is None:
        # refused (too few samples, clips or fitting clips): then refused alike on every shard
        reason = "no samples for shard|distinct clips|no clip is long enough|no whole batch"
        for r in range(num_shards):
            with pytest.raises(ValueError, match=reason):
                samples(pattern, clips, epoch=epoch, seed=seed, shard_id=r,
                        num_shards=num_shards, batch_size=batch_size, policy=policy)
            with pytest.raises(ValueError, match=reason):
                size(pattern, clips, epoch=epoch, seed=seed, shard_id=r, num_shards=num_shards,
                     batch_size=batch_size, policy=policy)
        return
    first = samples(pattern, clips, epoch=epoch, seed=seed, num_shards=num_shards,
                    batch_size=batch_size, policy=policy)
    shards = check_epoch(pattern, clips, num_shards, batch_size, epoch, seed, policy)
    assert shards[0] == first
