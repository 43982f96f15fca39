"""The GOP store: every bin decodes on its own to exactly the source's frames, and the reader finds
and ships the right bytes. CPU only (PyAV is the decoder)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from dali_gop import format as fmt
from dali_gop.reference import decode_annexb, decode_source
from dali_gop._store import GopStore
from dali_gop.plan import Plan
from preprocess.runner import write_manifest
from preprocess.writer import VideoError, write_video

SMALL = dict(width=160, height=96, fps=12)

CASES = {
    # name: make_video parameters
    "h264": dict(codec="h264", frames=40, gop=12),
    "h264-bframes": dict(codec="h264", frames=40, gop=12, bframes=3),
    "h264-open-gop": dict(codec="h264", frames=40, gop=12, bframes=3, open_gop=True),
    "hevc": dict(codec="hevc", frames=40, gop=12),
    "hevc-bframes": dict(codec="hevc", frames=40, gop=12, bframes=3),
    "hevc-open-gop": dict(codec="hevc", frames=40, gop=12, bframes=3, open_gop=True),
    "hevc-open-gop-no-b": dict(codec="hevc", frames=40, gop=12, open_gop=True),
    "h264-scene-cuts": dict(codec="h264", frames=60, gop=30, bframes=2, scene_cuts=(17, 41)),
    "hevc-scene-cuts-open": dict(codec="hevc", frames=60, gop=30, bframes=2, open_gop=True,
                                 scene_cuts=(17, 41)),
    "h264-audio": dict(codec="h264", frames=30, gop=10, bframes=2, audio=True),
    "hevc-one-gop": dict(codec="hevc", frames=25, gop=250, bframes=2),
    "hevc-mkv": dict(codec="hevc", frames=30, gop=10, bframes=2, open_gop=True, name="cam0.mkv"),
    "h264-mov": dict(codec="h264", frames=30, gop=10, bframes=2, name="cam0.mov"),
}


def preprocessed(video: Path, gop_root: Path) -> tuple[str, fmt.VideoIndex]:
    video_root = video.parent.parent
    rel = video.relative_to(video_root).as_posix()
    write_video(video_root, gop_root, rel)
    return rel, fmt.read_index(gop_root, rel)


@pytest.fixture(scope="module")
def case_store(video_cache, tmp_path_factory):
    """Each case preprocessed once: name -> (store, rel, index, reference yuv frames)."""
    gop_root = tmp_path_factory.mktemp("gops")
    done = {}

    def get(name):
        if name not in done:
            video = video_cache(**SMALL, **CASES[name])
            rel, index = preprocessed(video, gop_root)
            done[name] = GopStore(gop_root), rel, index, decode_source(video)
        return done[name]

    return get


def bin_bytes(store: GopStore, rel: str, gop: fmt.GopEntry) -> bytes:
    return (store.gop_root / rel / gop.file).read_bytes()


@pytest.mark.parametrize("name", CASES)
def test_every_bin_decodes_alone_to_the_source_frames(case_store, name):
    store, rel, index, reference = case_store(name)
    assert index.num_frames == len(reference)
    covered = []
    for gop in index.gops:
        frames = decode_annexb(index.codec, bin_bytes(store, rel, gop), gop.packet_sizes)
        expected = gop.output_frames(len(gop.packet_sizes))
        assert len(frames) == len(expected), gop.file
        # anything past the GOP may only be the source's following frames
        assert expected == tuple(range(gop.start, gop.start + len(expected))), gop.file
        for got, k in zip(frames, expected):
            assert np.array_equal(got, reference[k]), f"{gop.file}: frame {k} differs"
        covered += range(gop.start, gop.end)
    assert covered == list(range(len(reference))), "GOPs must cover every frame exactly once"


def test_open_gop_cases_really_have_leading_pictures(case_store):
    """Guards the test matrix: without leading pictures the open-GOP cases test nothing new."""
    for name in ("h264-open-gop", "hevc-open-gop"):
        _, _, index, _ = case_store(name)
        assert any(g.tail for g in index.gops), name
        assert index.has_b_frames


def test_scene_cut_keyframes_start_gops(case_store):
    _, _, index, _ = case_store("h264-scene-cuts")
    assert {17, 41} <= set(index.gop_starts)


@pytest.mark.parametrize("name", ["h264-open-gop", "hevc-open-gop", "hevc-bframes"])
def test_consecutive_bins_concatenate(case_store, name):
    store, rel, index, reference = case_store(name)
    for first, second in zip(index.gops, index.gops[1:]):
        skip = sum(second.packet_sizes[:first.overlap_with_next])
        stream = bin_bytes(store, rel, first) + bin_bytes(store, rel, second)[skip:]
        sizes = first.packet_sizes + second.packet_sizes[first.overlap_with_next:]
        frames = decode_annexb(index.codec, stream, sizes)
        start = first.start
        assert len(frames) >= second.end - start
        for k, got in enumerate(frames):
            assert np.array_equal(got, reference[start + k]), f"{first.file}+{second.file}: {start + k}"


@pytest.mark.parametrize("name", CASES)
def test_lookup_finds_every_frame(case_store, name):
    store, rel, index, _ = case_store(name)
    for frame in range(index.num_frames):
        gop = store.gop_of(rel, frame)
        assert gop.start <= frame < gop.end
    with pytest.raises(IndexError, match=rel):
        store.gop_of(rel, index.num_frames)


def decode_read(read, codec):
    plan = Plan.from_array(read.plan.to_array())
    segments, requests = plan.segments, plan.requests
    assert (segments, requests, plan.names_offset) == (read.plan.segments, read.plan.requests, read.plan.names_offset)
    decoded = []
    for s in segments:
        frames = decode_annexb(codec, read.data[s.offset:s.offset + s.size], s.packet_sizes)
        assert len(frames) >= s.num_outputs
        decoded.append(frames)
    return [[decoded[seg][pos] for seg, pos in request.picks] for request in requests]


@pytest.mark.parametrize("name", ["h264-open-gop", "hevc-open-gop", "h264-scene-cuts", "hevc"])
def test_store_read_returns_the_wanted_frames(case_store, name):
    store, rel, index, reference = case_store(name)
    rng = random.Random(0)
    requests = [[rng.randrange(index.num_frames)] for _ in range(6)]
    requests += [sorted(rng.sample(range(index.num_frames), 5)), list(range(index.num_frames))]
    read = store.read([(rel, frames) for frames in requests])
    for frames, got in zip(requests, decode_read(read, index.codec)):
        for k, image in zip(frames, got):
            assert np.array_equal(image, reference[k]), f"frame {k}"


def test_read_stops_after_the_last_needed_frame(case_store):
    store, rel, index, _ = case_store("hevc")
    gop = index.gops[1]
    read = store.read([(rel, [gop.start])])
    assert read.plan.segments[0].packet_sizes == gop.packet_sizes[:1]
    assert read.plan.names_offset == gop.packet_sizes[0]
    assert read.segment_names() == [str(store.gop_root / rel / gop.file)]


def test_fixed_gop_fast_path_reads_no_index(video_cache, tmp_path):
    video = video_cache(**SMALL, codec="hevc", frames=40, gop=12, bframes=3)
    gop_root = tmp_path / "gops"
    rel, index = preprocessed(video, gop_root)
    reference = decode_source(video)
    write_manifest(video.parent.parent, gop_root, [rel])
    (gop_root / rel / fmt.INDEX_FILENAME).unlink()   # the fast path must not need it
    store = GopStore(gop_root, fix_gop_size=12)
    requests = [[0], [13], [39], [11, 12, 36]]
    read = store.read([(rel, f) for f in requests])
    assert all(s.packet_sizes is None for s in read.plan.segments)
    for frames, got in zip(requests, decode_read(read, index.codec)):
        for k, image in zip(frames, got):
            assert np.array_equal(image, reference[k]), f"frame {k}"


def test_truncated_bin_is_named(case_store, tmp_path):
    store, rel, index, _ = case_store("h264")
    root = tmp_path / "copy"
    shutil.copytree(store.gop_root / rel, root / rel)
    victim = root / rel / index.gops[1].file
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(fmt.FormatError, match=f"{victim}.*index says"):
        GopStore(root).read([(rel, [index.gops[1].start])])


def test_flipped_bytes_caught_by_checksum(case_store, tmp_path):
    store, rel, index, _ = case_store("h264")
    root = tmp_path / "copy"
    shutil.copytree(store.gop_root / rel, root / rel)
    victim = root / rel / index.gops[0].file
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(fmt.FormatError, match=f"{victim}.*checksum"):
        GopStore(root, verify_checksums=True).read([(rel, [0])])


def test_missing_bin_is_named(case_store, tmp_path):
    store, rel, index, _ = case_store("h264")
    root = tmp_path / "copy"
    shutil.copytree(store.gop_root / rel, root / rel)
    victim = root / rel / index.gops[-1].file
    victim.unlink()
    with pytest.raises(fmt.FormatError, match=f"{victim}.*missing"):
        GopStore(root).read([(rel, [index.num_frames - 1])])


def test_a_store_rewritten_under_a_running_loader_says_so(case_store, tmp_path):
    """Preprocess run again while a loader holds the old index: the bins no longer match it, and
    the fix is a new loader, not another preprocess run (which is what a corrupt bin needs)."""
    store, rel, index, _ = case_store("h264")
    root = tmp_path / "copy"
    shutil.copytree(store.gop_root / rel, root / rel)
    running = GopStore(root)
    running.read([(rel, [0])])                       # the loader has read the index
    victim = root / rel / index.gops[1].file
    victim.write_bytes(victim.read_bytes()[:-10])    # a bin of another encode...
    with pytest.raises(fmt.FormatError, match=f"{victim}.*index says.*re-run preprocess"):
        running.read([(rel, [index.gops[1].start])])
    index_file = root / rel / fmt.INDEX_FILENAME     # ...and its new index, written beside it
    index_file.write_text(index_file.read_text() + "\n")
    with pytest.raises(fmt.FormatError, match=f"{victim}.*changed under this loader.*new loader"):
        running.read([(rel, [index.gops[1].start])])


@pytest.mark.parametrize("mutate, message", [
    (lambda raw: raw.update(version=99), "format version 99"),
    (lambda raw: raw["gops"][0].update(size=-1), "negative"),
    (lambda raw: raw["gops"][1].update(start=raw["gops"][1]["start"] + 1), "expected"),
    (lambda raw: raw["gops"][0]["packet_sizes"].pop(), "differ in length"),
    (lambda raw: raw.pop("codec"), "missing or unexpected field"),
])
def test_bad_index_is_named(case_store, tmp_path, mutate, message):
    store, rel, _, _ = case_store("h264")
    root = tmp_path / "copy"
    shutil.copytree(store.gop_root / rel, root / rel)
    path = root / rel / fmt.INDEX_FILENAME
    raw = json.loads(path.read_text())
    mutate(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(fmt.FormatError, match=message) as info:
        GopStore(root).index(rel)
    assert str(path) in str(info.value)


def test_corrupt_index_json_is_named(case_store, tmp_path):
    store, rel, _, _ = case_store("h264")
    root = tmp_path / "copy"
    shutil.copytree(store.gop_root / rel, root / rel)
    path = root / rel / fmt.INDEX_FILENAME
    path.write_text(path.read_text()[:50])
    with pytest.raises(fmt.FormatError, match=f"{path}.*not valid JSON"):
        GopStore(root).index(rel)


def test_plan_roundtrip():
    from dali_gop.plan import Plan, Request, Segment, StreamSend, StreamStep
    from dali_gop.plan import segment_names
    data = np.frombuffer(b"0123456789a/b\nc/d", np.uint8)
    sent = Plan(10, (Segment(0, 4, (1, 3), 12, 2, "hevc"), Segment(4, 6, None, 0, 5, "h264")),
                (Request("hevc", 320, 180, ((0, 1), (1, 4))),
                 Request("h264", 64, 48, ((-1, 3),),
                         StreamStep(5, 2**32 - 1, 30, True, False, (StreamSend(1, 7, 60),)))))
    plan = Plan.from_array(sent.to_array())
    assert (plan.segments, plan.requests) == (sent.segments, sent.requests)
    assert segment_names(data, plan.names_offset) == ["a/b", "c/d"]


def test_stream_reads_send_whole_gops_and_pick_from_kept_ones(case_store):
    store, rel, index, reference = case_store("hevc-bframes")
    from dali_gop._store import ReadRequest
    gop, after = index.gops[1], index.gops[2]
    first = store.read([ReadRequest(rel, (gop.start + 2,), stream_slot=3,
                                    stream_sends=((rel, gop.start, 0), (rel, after.start, 0)),
                                    stream_restart=True)])
    (request,) = first.plan.requests
    step = request.stream
    assert step.restart and not step.release and step.gop_start == gop.start
    assert [s.gop_start for s in step.sends] == [gop.start, after.start]
    assert request.picks == ((-1, 2),)
    for send, whole in zip(step.sends, (gop, after)):
        segment = first.plan.segments[send.segment]
        assert segment.codec == index.codec and segment.num_outputs >= whole.count
        frames = decode_annexb(segment.codec, first.data[segment.offset:segment.offset + segment.size],
                               segment.packet_sizes)
        assert all(np.array_equal(f, reference[whole.start + i])
                   for i, f in enumerate(frames[:whole.count]))
    later = store.read([ReadRequest(rel, (gop.start + 5,), stream_slot=3, stream_release=True)])
    assert later.plan.names_offset == 0 and later.plan.requests[0].picks == ((-1, 5),)
    assert later.plan.requests[0].stream.release and not later.plan.requests[0].stream.sends
    with pytest.raises(ValueError, match="no GOP starts at frame"):
        store.read([ReadRequest(rel, (gop.start,), stream_slot=0,
                                stream_sends=((rel, gop.start + 1, 0),))])


def test_paths_outside_the_gop_root_are_refused():
    for bad in ("../x.mp4", "/etc/x.mp4", "a/../../x.mp4", ""):
        with pytest.raises(fmt.FormatError, match="inside the GOP root"):
            fmt.video_gop_dir("/data/gops", bad)


def test_non_video_file_is_rejected_by_name(tmp_path):
    (tmp_path / "v" / "clip").mkdir(parents=True)
    bogus = tmp_path / "v" / "clip" / "cam0.mp4"
    bogus.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match=str(bogus)):
        write_video(tmp_path / "v", tmp_path / "g", "clip/cam0.mp4")
    assert not (tmp_path / "g" / "clip" / "cam0.mp4" / fmt.INDEX_FILENAME).exists()
