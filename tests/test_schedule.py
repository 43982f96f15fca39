"""The schedules on their own (dali_gop/schedule.py): sample lists from the real patterns, GOP
layouts made up, no store and no decoder. Stream steps are replayed, in batch order and across
epochs, through KeptGops, the bookkeeping both stateful backends decode with: every pick must
find its GOP, no GOP may be sent while its slot keeps it, a slot may keep only GOPs it picks
again soon, and its picks of a kept GOP move forward (:class:`SlotReplay`, which
tests/test_source.py also runs on the workers' plans)."""
from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Callable

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dali_gop._store import stream_key
from dali_gop.backends._assemble import KeptGops
from dali_gop.patterns import SequencePattern, StreamPattern
from dali_gop.plan import StreamSend, StreamStep
from dali_gop.schedule import DecodeAhead, StreamWindows, locate, sample_key


class SlotReplay:
    """Stream steps fed as the decoders get them, through the decoders' KeptGops."""

    def __init__(self, slot_lead: Callable[[int], int]):
        self.slot_lead = slot_lead
        self.kept = KeptGops()
        self.picks: dict[tuple[int, int], list[tuple[int, tuple]]] = defaultdict(list)
        self.sends: list[tuple[int, int, int, tuple]] = []   # (slot, camera, batch, GOP)
        self.held: list[tuple[int, int, int, set]] = []      # after each step, likewise
        self.lows: dict[tuple, int] = {}   # (slot, camera, GOP) -> the last pick's first frame
        self.batch = 0

    def feed(self, camera: int, step: StreamStep, low: int | None = None) -> None:
        """``low``: the step's first frame in its GOP, where the caller knows it: a decoder lets
        go of the frames of a kept GOP below its picks, so they must move forward."""
        where = f"slot {step.slot}, camera {camera}, batch {self.batch}"
        kept = {} if step.restart else self.kept._kept.get((step.slot, camera), {})
        for send in step.sends:
            gop = (send.video_key, send.gop_start)
            assert gop not in kept, f"{where}: GOP {send.gop_start} sent again while kept"
            self.sends.append((step.slot, camera, self.batch, gop))
        self.kept.step(camera, step, lambda send: send)   # DecodeError: the GOP is not kept
        self.picks[(step.slot, camera)].append((self.batch, (step.video_key, step.gop_start)))
        if low is not None:
            lane = (step.slot, camera)
            if step.restart:
                self.lows = {k: v for k, v in self.lows.items() if k[:2] != lane}
            picked = (*lane, step.video_key, step.gop_start)
            assert low >= self.lows.get(picked, 0), \
                f"{where}: picks frame {low} of a kept GOP below an earlier pick"
            self.lows[picked] = low
            if step.release:
                del self.lows[picked]
        self.held.append((step.slot, camera, self.batch,
                          set(self.kept._kept[(step.slot, camera)])))
        assert len(self.held[-1][3]) <= self.slot_lead(step.slot) + 1, f"{where}: keeps too much"

    def check(self) -> int:
        """After the replay: every send is picked within its slot's lead, and what a slot keeps
        after a step is picked again within lead + max(lead, 1) steps (a GOP the slot's next
        stream step still wants stays). Returns how many sends were checked."""
        checked = 0
        for slot, camera, batch, gop in self.sends:
            lead = self.slot_lead(slot)
            if batch + lead <= self.batch:
                assert any(batch <= b <= batch + lead and g == gop
                           for b, g in self.picks[(slot, camera)]), \
                    f"slot {slot}, camera {camera}: GOP {gop} sent at batch {batch}, never picked"
                checked += 1
        for slot, camera, batch, held in self.held:
            reach = self.slot_lead(slot) + max(self.slot_lead(slot), 1)
            if batch + reach <= self.batch:
                soon = {g for b, g in self.picks[(slot, camera)] if batch < b <= batch + reach}
                assert held <= soon, f"slot {slot}, camera {camera}: keeps GOPs it does not need"
        return checked


def stream_step(slot: int, step, video: str) -> StreamStep:
    """The StreamStep a worker's plan would carry for a SlotStep (what GopStore._plan_stream
    makes of it, without the bytes)."""
    return StreamStep(slot, stream_key(video, step.generation), step.gop, step.restart,
                      step.release, tuple(StreamSend(-1, stream_key(v, generation), start)
                                          for v, start, generation in step.sends))


class Layout:
    """Clips with made-up GOPs: video "clip/camera" -> GOP starts."""

    def __init__(self, starts: dict[str, list[int]], clips: dict[str, int]):
        self.starts, self.clips = starts, clips

    def gop_start(self, video: str, frame: int) -> int:
        starts = self.starts[video]
        return starts[bisect.bisect_right(starts, frame) - 1]


def fixed_gops(clips: dict[str, int], cameras: list[str], gop: int) -> Layout:
    return Layout({f"{c}/{cam}": list(range(0, n, gop)) for c, n in clips.items()
                   for cam in cameras}, clips)


@st.composite
def layouts(draw) -> tuple[Layout, list[str]]:
    """1-4 clips, 1-2 cameras, GOPs fixed (one size for all) or variable (drawn per video, and
    cameras of a clip differ)."""
    cameras = [f"cam{i}" for i in range(draw(st.integers(1, 2)))]
    clips = {f"clip{i}": draw(st.integers(1, 40)) for i in range(draw(st.integers(1, 4)))}
    if draw(st.booleans()):
        return fixed_gops(clips, cameras, draw(st.integers(1, 12))), cameras
    starts = {}
    for clip, frames in clips.items():
        for camera in cameras:
            sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=frames))
            points, at = [], 0
            while at < frames:
                points.append(at)
                at += sizes[len(points) % len(sizes)]
            starts[f"{clip}/{camera}"] = points
    return Layout(starts, clips), cameras


def epochs_of(pattern, clips, *, batch_size, shard_id=0, num_shards=1, policy="PARTIAL"):
    cache = {}

    def samples(epoch):
        if epoch not in cache:
            cache[epoch] = pattern.epoch_samples(clips, epoch=epoch, seed=3, shard_id=shard_id,
                                                 num_shards=num_shards, batch_size=batch_size,
                                                 last_batch_policy=policy)
        return cache[epoch]
    return samples


def replay_windows(samples, layout: Layout, cameras, *, batch_size, lead, epochs) -> SlotReplay:
    """Every step of ``epochs`` epochs through StreamWindows and a SlotReplay, trimming the
    memos at each epoch as the workers do; checks each step's GOP against the layout."""
    windows = StreamWindows(samples, layout.gop_start, batch_size=batch_size, lead=lead)
    replay = SlotReplay(windows.slot_lead)
    first = 0     # the epoch's first batch, counted on across epochs
    for epoch in range(epochs):
        windows.trim(epoch)
        assert all(k[0] >= epoch - 1 for k in [*windows._gops, *windows._windows])
        for position, spec in enumerate(samples(epoch)):
            replay.batch = first + position // batch_size
            for c, camera in enumerate(cameras):
                video = f"{spec.clip}/{camera}"
                step = windows.step(epoch, position, camera)
                starts = {layout.gop_start(video, f) for f in spec.frames}
                if step is None:   # plain: a filler, no slot, or frames in more than one GOP
                    assert spec.pad or spec.slot < 0 or len(starts) > 1
                    continue
                assert starts == {step.gop} and not spec.pad and spec.slot >= 0
                replay.feed(c, stream_step(spec.slot, step, video), min(spec.frames) - step.gop)
        first += len(samples(epoch)) // batch_size
    return replay


sequential = st.one_of(st.just(StreamPattern()),
                       st.builds(SequencePattern, st.integers(1, 4), st.integers(1, 3)))


@settings(max_examples=300, deadline=None)
@given(layout=layouts(), pattern=sequential, batch_size=st.integers(1, 4),
       shards=st.integers(1, 3).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n))),
       lead=st.integers(0, 6), epochs=st.integers(1, 3),
       policy=st.sampled_from(["PARTIAL", "FILL", "DROP"]))
def test_stream_slots_find_every_gop_at_any_lead(layout, pattern, batch_size, shards, lead,
                                                 epochs, policy):
    layout, cameras = layout
    (shard_id, num_shards) = shards
    samples = epochs_of(pattern, layout.clips, batch_size=batch_size, shard_id=shard_id,
                        num_shards=num_shards, policy=policy)
    try:
        samples(0)
    except ValueError:   # too few frames (windows) for every slot: the patterns' tests say so
        event("refused")
        return
    replay_windows(samples, layout, cameras, batch_size=batch_size, lead=lead,
                   epochs=epochs).check()


@pytest.mark.parametrize("length, stride, frames", [(4, 2, 200), (4, 1, 99)])
@pytest.mark.parametrize("lead", [0, 1, 2, 30])
def test_windows_straddling_gops_first_in_their_slot(length, stride, frames, lead):
    """Issue 13.1: x265's 25-frame GOPs, sequence windows of 4 (stride 2, or 1 as the README's),
    a batch of 4: slot 1's first window (frames 49..55, or 24..27) spans two GOPs, and the slot's
    next step picked from GOP 50 (25) as if that window had sent it."""
    clips = {"clip0": frames}
    layout = fixed_gops(clips, ["cam0"], 25)
    samples = epochs_of(SequencePattern(length, stride), clips, batch_size=4)
    first = samples(0)[1]
    assert {layout.gop_start("clip0/cam0", f) for f in first.frames} == {first.frames[0] // 25 * 25,
                                                                          first.frames[-1] // 25 * 25}
    assert len({f // 25 for f in first.frames}) == 2, "slot 1 starts on a window spanning GOPs"
    replay = replay_windows(samples, layout, ["cam0"], batch_size=4, lead=lead, epochs=3)
    replay.check()
    assert any(slot == 1 for slot, *_ in replay.sends)


def test_stream_steps_send_their_lead_ahead():
    """Stream order, one frame per step, no GOP spanned: every GOP goes out exactly its slot's
    lead steps before the slot first picks from it (or at the slot's first step)."""
    clips = {"a": 40, "b": 32}     # no filler: a filler would delay the next send by a step
    layout = fixed_gops(clips, ["cam0"], 10)
    samples = epochs_of(StreamPattern(), clips, batch_size=2)
    replay = replay_windows(samples, layout, ["cam0"], batch_size=2, lead=7, epochs=2)
    replay.check()
    for slot, camera, batch, gop in replay.sends:
        if batch + replay.slot_lead(slot) > replay.batch:
            continue     # for the epoch after the last one replayed
        first = min(b for b, g in replay.picks[(slot, camera)] if g == gop and b >= batch)
        assert first - batch == min(replay.slot_lead(slot), first)


def test_slot_leads_are_staggered_down_to_about_half():
    windows = StreamWindows(lambda e: [], lambda v, f: 0, batch_size=8, lead=30)
    assert [windows.slot_lead(s) for s in range(8)] == [30, 29, 27, 25, 23, 21, 19, 17]


def test_negative_leads_are_refused():
    with pytest.raises(ValueError, match="stream_lead must be >= 0"):
        StreamWindows(lambda e: [], lambda v, f: 0, batch_size=2, lead=-1)
    with pytest.raises(ValueError, match="decode_ahead must be >= 0"):
        DecodeAhead(lambda e: [], batch_size=2, batches=-1, streams=lambda e, p: False)


def test_locate_counts_positions_on_across_epochs():
    lengths = {0: 4, 1: 6, 2: 4}

    def samples(epoch):
        return [None] * lengths[epoch]
    assert locate(samples, 0, 3) == (0, 3)
    assert locate(samples, 0, 4) == (1, 0)
    assert locate(samples, 1, 7) == (2, 1)
    assert locate(samples, 2, -1) == (1, 5)
    assert locate(samples, 1, -5) is None
    assert sample_key(3, 7) == 3 << 32 | 7


@settings(max_examples=100, deadline=None)
@given(layout=layouts(), batch_size=st.integers(1, 4), batches=st.integers(0, 3),
       length=st.integers(1, 4), epochs=st.integers(1, 3))
def test_each_sample_decoded_ahead_was_sent_once_before_and_none_streams(
        layout, batch_size, batches, length, epochs):
    """Sequence windows with stream slots: stream steps and straddling windows mixed. A sample
    carried ahead is plain, was the target of exactly the sample ``batches`` batches before it,
    and the run's first batches carry their own."""
    layout, cameras = layout
    samples = epochs_of(SequencePattern(length), layout.clips, batch_size=batch_size)
    try:
        samples(0)
    except ValueError:
        return
    windows = StreamWindows(samples, layout.gop_start, batch_size=batch_size, lead=2)
    ahead = DecodeAhead(samples, batch_size=batch_size, batches=batches,
                        streams=lambda e, p: windows.streams(e, p, cameras))
    pending = {}
    for epoch in range(epochs):
        for position in range(len(samples(epoch))):
            if ahead.carried(epoch, position):
                assert not windows.streams(epoch, position, cameras)
                assert pending.pop(sample_key(epoch, position)) == (epoch, position)
            else:
                assert sample_key(epoch, position) not in pending
            target = ahead.target(epoch, position)
            if target is not None:
                assert locate(samples, epoch, position + batches * batch_size) == target
                assert sample_key(*target) not in pending
                pending[sample_key(*target)] = target
    assert all(epoch >= epochs for epoch, _ in pending.values()), "each target decoded later"


def test_epochs_shorter_than_the_decode_ahead_are_decoded_ahead_only_from_the_run_on():
    """An epoch of one batch, decoding two batches ahead: epoch 1's batch comes one batch into
    the run, with nothing two batches before it to bring its frames (the nvdec operator would
    say the sample was never decoded ahead)."""
    from dali_gop.patterns import SampleSpec

    def samples(epoch):
        return [SampleSpec("a", (epoch,)), SampleSpec("a", (epoch + 10,))]
    ahead = DecodeAhead(samples, batch_size=2, batches=2, streams=lambda e, p: False)
    assert [ahead.carried(e, p) for e in range(3) for p in range(2)] == [False] * 4 + [True] * 2
    assert ahead.target(0, 1) == (2, 1) and ahead.target(1, 0) == (3, 0)
