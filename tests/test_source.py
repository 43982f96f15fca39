"""GopSource's outputs: the plans the workers make, read back as the decoders read them.

The stores here are made up (:func:`write_store`: indexes as preprocess writes them, bins of
placeholder bytes), so any GOP structure can be tried in milliseconds; nothing is decoded. The
frames themselves are checked against PyAV by the loader tests (tests/test_coverage.py)."""
from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dali_gop import format as fmt
from dali_gop._dataset import Dataset
from dali_gop._source import GopSource
from dali_gop.patterns import RandomPattern, SequencePattern, StreamPattern
from dali_gop.plan import Plan
from test_schedule import SlotReplay, layouts


def write_store(root: Path, gops: dict[str, dict[str, list[int]]], open_gop: bool = False) -> Path:
    """A GOP store of placeholder bins: ``gops[clip][camera]`` = the video's GOP lengths. With
    ``open_gop``, each keyframe after the first has two leading pictures, carried at the end of
    the GOP before (its tail), as preprocess writes x265's open GOPs."""
    clips, cameras, videos = {}, {}, {}
    for clip, per_camera in gops.items():
        for camera, counts in per_camera.items():
            rel = f"{clip}/{camera}"
            folder = root / rel
            folder.mkdir(parents=True)
            entries, start = [], 0
            for i, count in enumerate(counts):
                frames, tail = list(range(start, start + count)), 0
                if open_gop and i + 1 < len(counts) and count >= 3:
                    frames, tail = frames[:-2] + [start + count] + frames[-2:], 3
                data = bytes(len(frames))       # a byte per packet
                name = fmt.bin_filename(start, count)
                (folder / name).write_bytes(data)
                entries.append(fmt.GopEntry(start, count, name, len(data), fmt.checksum(data),
                                            (1,) * len(frames), tuple(frames), tail))
                start += count
            index = fmt.VideoIndex(fmt.SourceInfo(rel, 1, 0), "hevc", 16, 8, "yuv420p", "12/1",
                                   "1/12", start, open_gop, tuple(entries))
            (folder / fmt.INDEX_FILENAME).write_text(index.to_json())
            videos[rel] = fmt.VideoSummary.of(index)
            clips[clip] = min(clips.get(clip, start), start)
        cameras[clip] = list(per_camera)
    manifest = fmt.DatasetManifest({"/videos": clips}, cameras, videos)
    (root / fmt.MANIFEST_FILENAME).write_text(manifest.to_json())
    return root


def replay_source(source: GopSource, epochs: int) -> SlotReplay:
    """The plans of ``epochs`` epochs, in batch order as DALI hands them to the decoder, through
    the decoders' bookkeeping: stream slots (SlotReplay) and samples decoded ahead (each kept
    one decoded earlier, once; only plain requests decoded ahead)."""
    replay = SlotReplay(source.slot_lead)
    ahead: set[int] = set()
    first = 0
    for epoch in range(epochs):
        samples = source.samples(epoch)
        for position in range(len(samples)):
            replay.batch = first + position // source.batch_size
            plan = Plan.from_array(source.read(position, epoch)[1])
            if plan.kept_key >= 0:
                assert plan.kept_key in ahead, f"sample {epoch}:{position} never decoded ahead"
                ahead.remove(plan.kept_key)
            if plan.ahead_key >= 0:
                assert plan.ahead_key not in ahead
                assert all(r.stream is None for r in plan.ahead_requests)
                ahead.add(plan.ahead_key)
            assert len(plan.own_requests) == (0 if plan.kept_key >= 0 else
                                              len(source.dataset.cameras))
            for camera, request in enumerate(plan.own_requests):
                if request.stream is not None:
                    assert request.stream.slot == samples[position].slot
                    for send in request.stream.sends:
                        segment = plan.segments[send.segment]
                        assert segment.first_frame == send.gop_start
                    replay.feed(camera, request.stream,
                                min(position for _, position in request.picks))
        first += len(samples) // source.batch_size
    assert all(key >> 32 >= epochs for key in ahead), "decoded ahead, never served"
    return replay


def gop_lengths(layout) -> dict[str, dict[str, list[int]]]:
    """test_schedule's layouts as write_store takes them."""
    gops: dict[str, dict[str, list[int]]] = {}
    for video, starts in layout.starts.items():
        clip, camera = video.split("/")
        ends = starts[1:] + [layout.clips[clip]]
        gops.setdefault(clip, {})[camera] = [e - s for s, e in zip(starts, ends)]
    return gops


@settings(max_examples=100, deadline=None)
@given(layout=layouts(), open_gop=st.booleans(),
       pattern=st.one_of(st.just(StreamPattern()),
                         st.builds(SequencePattern, st.integers(1, 4), st.integers(1, 3))),
       batch_size=st.integers(1, 4),
       shards=st.integers(1, 3).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n))),
       lead=st.integers(0, 6), decode_ahead=st.integers(0, 2), epochs=st.integers(1, 3),
       policy=st.sampled_from(["PARTIAL", "FILL", "DROP"]))
def test_worker_plans_replay_through_the_decoders_bookkeeping(layout, open_gop, pattern,
                                                              batch_size, shards, lead,
                                                              decode_ahead, epochs, policy):
    """Any GOP structure (fixed, variable, open), windows of any length and stride, any batch
    size, rank, lead and last-batch policy, several epochs: every stream pick finds its GOP,
    every GOP is sent once while kept and picked within its slot's lead, what a slot keeps is
    what it picks soon, and every sample decoded ahead is served once."""
    layout, _ = layout
    with tempfile.TemporaryDirectory() as root:
        gop_root = write_store(Path(root), gop_lengths(layout), open_gop)
        source = GopSource(Dataset.open(gop_root), pattern, batch_size=batch_size,
                           shard_id=shards[0], num_shards=shards[1], stream_lead=lead,
                           decode_ahead=decode_ahead, last_batch_policy=policy)
        try:
            source.samples(0)
        except ValueError:   # too few frames (windows) for every slot: test_patterns says so
            event("refused")
            return
        replay_source(source, epochs).check()


@pytest.fixture(scope="module")
def x265_like(tmp_path_factory):
    """Three clips of 250 frames in 25-frame open GOPs, two cameras (x265's defaults)."""
    gops = {f"clip{i}": {f"cam{j}.mp4": [25] * 10 for j in range(2)} for i in range(3)}
    return write_store(tmp_path_factory.mktemp("x265"), gops, open_gop=True)


@pytest.mark.parametrize("pattern", [SequencePattern(4, stride=2), SequencePattern(4),
                                     StreamPattern()], ids=repr)
@pytest.mark.parametrize("lead", [0, 1, 30])
def test_windows_crossing_gops_stream_at_any_lead(x265_like, pattern, lead):
    """Issue 13.1 as reported: x265, SequencePattern(length=4, stride=2), batch_size=4, failed
    at batch 1 ("GOP 50 ... never sent or already dropped"); the README's default windows and a
    lead of 1 failed likewise."""
    source = GopSource(Dataset.open(x265_like), pattern, batch_size=4, stream_lead=lead)
    replay = replay_source(source, epochs=3)
    replay.check()
    assert replay.picks, "some steps stream"


def test_the_source_pickles_without_its_store_samples_or_memos(x265_like):
    source = GopSource(Dataset.open(x265_like), SequencePattern(4, stride=2), batch_size=4,
                       decode_ahead=1)
    expected = [source.read(p)[1].tolist() for p in range(12)]
    state = source.__getstate__()
    assert state["_store"] is None and state["_epochs"] == {}
    assert "windows" not in state and "ahead" not in state
    copy = pickle.loads(pickle.dumps(source))
    assert copy.windows is not source.windows and not copy.windows._gops
    assert [copy.read(p)[1].tolist() for p in range(12)] == expected


def test_a_new_epoch_trims_the_sample_lists_and_memos(x265_like):
    source = GopSource(Dataset.open(x265_like), StreamPattern(), batch_size=4, stream_lead=3)

    class Info:
        def __init__(self, epoch, position):
            self.epoch_idx, self.idx_in_epoch = epoch, position
    for epoch in range(4):
        for position in (0, 1, len(source.samples(epoch)) - 1):
            source(Info(epoch, position))
        assert min(source._epochs) >= epoch - 1
        assert min(k[0] for k in source.windows._gops) >= epoch - 1
        assert min(k[0] for k in source.windows._windows) >= epoch - 1
    with pytest.raises(StopIteration):
        source(Info(4, len(source.samples(4))))


def test_decoding_ahead_starts_after_the_first_batches_and_skips_stream_steps(x265_like):
    """Random samples: the first ``decode_ahead`` batches carry their own bytes only; from then
    on each sample's frames come with the sample that many batches before it."""
    source = GopSource(Dataset.open(x265_like), RandomPattern(), batch_size=3, decode_ahead=2)
    plans = [Plan.from_array(source.read(p)[1]) for p in range(12)]
    assert [p.kept_key >= 0 for p in plans] == [False] * 6 + [True] * 6
    assert [p.ahead_key for p in plans] == list(range(6, 18))
    streaming = GopSource(Dataset.open(x265_like), StreamPattern(), batch_size=3, decode_ahead=2)
    plans = [Plan.from_array(streaming.read(p)[1]) for p in range(12)]
    assert all(p.kept_key < 0 and p.ahead_key < 0 for p in plans), "stream steps have a lead"


@pytest.mark.parametrize("policy, sizes, batches", [("PARTIAL", [250, 248], [63, 62]),
                                                    ("FILL", [250, 252], [63, 63]),
                                                    ("DROP", [250, 248], [62, 62])])
def test_shard_size_is_what_the_iterator_counts(tmp_path, policy, sizes, batches):
    """One clip of 498 frames, two ranks of 4 slots: rank 0 has two frames more. The iterator's
    size gives DALI's PARTIAL a short last batch on rank 0, FILL a whole filler batch on rank 1
    so that both have as many batches, and DROP the short batch to drop."""
    gop_root = write_store(tmp_path, {"clip": {"cam.mp4": [25] * 19 + [23]}})
    for rank, (size, count) in enumerate(zip(sizes, batches)):
        source = GopSource(Dataset.open(gop_root), StreamPattern(), batch_size=4, shard_id=rank,
                           num_shards=2, last_batch_policy=policy)
        assert source.shard_size() == size
        assert len(source.samples(0)) == -(-size // 4) * 4, "the batches the pipeline runs"
        assert (size // 4 if policy == "DROP" else -(-size // 4)) == count, "what it hands out"


def test_bad_options_are_refused(x265_like):
    dataset = Dataset.open(x265_like)
    with pytest.raises(ValueError, match="stream_lead must be >= 0"):
        GopSource(dataset, StreamPattern(), batch_size=2, stream_lead=-1)
    with pytest.raises(ValueError, match="decode_ahead must be >= 0"):
        GopSource(dataset, StreamPattern(), batch_size=2, decode_ahead=-1)
    with pytest.raises(ValueError, match="last_batch_policy 'LAST'"):
        GopSource(dataset, StreamPattern(), batch_size=2, last_batch_policy="LAST").samples(0)
