"""Faults of the on-disk format (dali_gop/format.py): missing, corrupt, foreign or outdated
indexes, paths outside the GOP root, and the fuzzed index and manifest readers. docs/reliability.md
is the table.
"""
from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dali_gop import format as fmt
from dali_gop._store import GopStore

from conftest import GOP, VIDEO, fuzz


# == input faults: indexes and manifests =======================================================

def test_missing_index_is_a_format_error_naming_it(gops):
    path = gops / VIDEO / fmt.INDEX_FILENAME
    path.unlink()
    with pytest.raises(fmt.FormatError, match=f"{path}: GOP index missing"):
        GopStore(gops).read([(VIDEO, [0])])


@pytest.mark.parametrize("content", [b'{"version": 1, "gops": [', b"\xff\xfe\x00 not text",
                                     b"", b"[" * 100_000, b"1" * 5000])
def test_corrupt_index_is_a_format_error_naming_it(gops, content):
    path = gops / VIDEO / fmt.INDEX_FILENAME
    path.write_bytes(content)
    with pytest.raises(fmt.FormatError, match=f"{path}: not valid JSON"):
        GopStore(gops).read([(VIDEO, [0])])


def test_unknown_index_version_says_rerun_preprocess(gops):
    path = gops / VIDEO / fmt.INDEX_FILENAME
    path.write_text(path.read_text().replace('"version":1', '"version":2'))
    with pytest.raises(fmt.FormatError, match=f"{path}: format version 2.*re-run preprocess"):
        GopStore(gops).read([(VIDEO, [0])])


def test_index_disagreeing_with_its_bin_is_a_format_error(gops):
    """A self-consistent index whose size field differs from the file on disk."""
    path = gops / VIDEO / fmt.INDEX_FILENAME
    raw = json.loads(path.read_text())
    raw["gops"][1]["size"] += 5
    raw["gops"][1]["packet_sizes"][-1] += 5
    path.write_text(json.dumps(raw))
    victim = gops / VIDEO / raw["gops"][1]["file"]
    with pytest.raises(fmt.FormatError, match=f"{victim}: .* bytes, index says"):
        GopStore(gops).read([(VIDEO, [raw["gops"][1]["start"]])])


def test_index_naming_another_bin_is_refused(gops):
    path = gops / VIDEO / fmt.INDEX_FILENAME
    raw = json.loads(path.read_text())
    raw["gops"][0]["file"] = "../../clip001/cam0.mp4/gop.0.8.bin"
    path.write_text(json.dumps(raw))
    with pytest.raises(fmt.FormatError, match=f"{path}: bin name"):
        GopStore(gops).index(VIDEO)


def test_paths_outside_the_gop_root_are_refused(gops):
    for bad in ("../x/cam0.mp4", "/etc/cam0.mp4", "clip000/../../x.mp4"):
        with pytest.raises(fmt.FormatError, match="inside the GOP root"):
            fmt.video_gop_dir(gops, bad)
    # a manifest listing a clip '../x': the dataset opens, every read of it is refused
    from dali_gop.patterns import StreamPattern
    from dali_gop._dataset import Dataset
    from dali_gop._source import GopSource
    manifest = fmt.read_manifest(gops)
    clips = manifest.video_dirs[next(iter(manifest.video_dirs))]
    clips["../x"] = clips.pop("clip001")
    manifest.cameras["../x"] = manifest.cameras.pop("clip001")
    manifest.videos["../x/cam0.mp4"] = manifest.videos.pop("clip001/cam0.mp4")
    (gops / fmt.MANIFEST_FILENAME).write_text(manifest.to_json())
    source = GopSource(Dataset.open(gops), StreamPattern(), batch_size=1, stream_decoding=False)
    samples = source.samples(0)
    position = next(i for i, s in enumerate(samples) if s.clip == "../x")
    with pytest.raises(fmt.FormatError, match="'../x/cam0.mp4': video path must be relative"):
        source.read(position)
    with pytest.raises(fmt.FormatError, match="inside the GOP root"):   # the fixed-GOP path too
        GopStore(gops, fix_gop_size=GOP).read([("../x/cam0.mp4", [0])])


# == fuzzing the readers ======================================================================

KEYS = ["version", "source", "path", "size", "mtime_ns", "codec", "width", "height", "pix_fmt",
        "frame_rate", "time_base", "num_frames", "has_b_frames", "gops", "start", "count", "file",
        "crc32", "packet_sizes", "packet_frames", "tail", "video_dirs", "cameras", "videos",
        "frames"]
SPECIAL_INTS = [-1, 0, 1, 2**31, 2**32, 2**63, 2**64, -2**63, 10**15, 10**30]
scalars = (st.none() | st.booleans() | st.integers() | st.sampled_from(SPECIAL_INTS)
           | st.floats() | st.text(max_size=6) | st.sampled_from(["h264", "hevc", "gop.0.1.bin"]))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5),
    max_leaves=16)


@st.composite
def valid_index(draw) -> dict:
    """A raw index dict that must load: random GOP structures, open (tail) and closed."""
    n_gops, gops, start = draw(st.integers(1, 4)), [], 0
    for i in range(n_gops):
        count = draw(st.integers(1, 6))
        end = start + count
        lead = 0 if i == n_gops - 1 else draw(st.integers(0, count - 1))  # next key's leading
        frames = [start] + draw(st.permutations(range(start + 1, end - lead)))
        tail = [end] + draw(st.permutations(range(end - lead, end))) if lead else []
        frames += tail
        sizes = draw(st.lists(st.integers(1, 10_000), min_size=len(frames), max_size=len(frames)))
        gops.append(dict(start=start, count=count, file=fmt.bin_filename(start, count),
                         size=sum(sizes), crc32=draw(st.integers(0, 2**32 - 1)),
                         packet_sizes=sizes, packet_frames=frames, tail=len(tail)))
        start = end
    return dict(version=1, source=dict(path="clip/cam0.mp4", size=draw(st.integers(0, 2**40)),
                                       mtime_ns=draw(st.integers(0, 2**62))),
                codec=draw(st.sampled_from(["h264", "hevc"])), width=160, height=96,
                pix_fmt="yuv420p", frame_rate="12", time_base="1/12", num_frames=start,
                has_b_frames=draw(st.booleans()), gops=gops)


@st.composite
def valid_manifest(draw) -> dict:
    clips = draw(st.dictionaries(st.text(min_size=1, max_size=6), st.integers(0, 10**6),
                                 max_size=3))
    cameras = {c: ["cam0.mp4", "cam1.mp4"] for c in clips}
    videos = {f"{c}/{cam}": dict(frames=n, codec="h264", width=160, height=96)
              for c, n in clips.items() for cam in cameras[c]}
    if draw(st.booleans()):
        return {"/videos": clips}   # the seed's plain shape
    return dict(version=1, video_dirs={"/videos": clips}, cameras=cameras, videos=videos)


def _slots(value, path=()):
    """Every (container, key) in a nested JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield value, k
            yield from _slots(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield value, i
            yield from _slots(v, path + (i,))


def mutate(data, raw) -> None:
    """1-3 random edits of a valid structure: replace, delete, add, retype, negate, enlarge,
    reorder or drop GOPs, or change a GOP's count consistently with its file name."""
    for _ in range(data.draw(st.integers(1, 3))):
        slots = list(_slots(raw))
        if not slots:
            return
        container, key = data.draw(st.sampled_from(slots))
        value = container[key]
        op = data.draw(st.sampled_from(["replace", "delete", "add", "retype", "negate", "huge",
                                        "shuffle", "consistent-count"]))
        if op == "replace":
            container[key] = data.draw(json_values)
        elif op == "delete":
            container.pop(key) if isinstance(container, dict) else container.pop(key)
        elif op == "add" and isinstance(container, dict):
            name = data.draw(st.sampled_from(KEYS) | st.text(max_size=4))
            container[name] = data.draw(json_values)
        elif op == "retype":
            container[key] = data.draw(st.sampled_from(
                [str(value), [value], {"v": value}, float(value) if type(value) is int else None,
                 bool(value) if type(value) is int else 1]))
        elif op == "negate" and type(value) is int:
            container[key] = -value - 1
        elif op == "huge" and type(value) is int:
            container[key] = data.draw(st.sampled_from(SPECIAL_INTS))
        elif op == "shuffle" and isinstance(value, list):
            container[key] = data.draw(st.permutations(value))
        elif (op == "consistent-count" and isinstance(value, dict)
              and {"start", "count"} <= set(value)):
            grown = value["count"] + 1 if type(value["count"]) is int else 1
            count = data.draw(st.sampled_from([0, 10**15, grown]))
            value.update(count=count, file=f"gop.{value['start']}.{count}.bin")
            if isinstance(raw.get("num_frames"), int) and type(value["start"]) is int:
                raw["num_frames"] = value["start"] + count   # (a start mutated before: left so)


def assert_well_typed_index(index: fmt.VideoIndex) -> None:
    index.validate("fuzz")
    for obj in (index, index.source, *index.gops):
        for name in ("width", "height", "num_frames", "version", "size", "mtime_ns", "start",
                     "count", "crc32", "tail"):
            if hasattr(obj, name):
                assert type(getattr(obj, name)) is int, name
    assert all(type(v) is str for v in (index.codec, index.pix_fmt, index.frame_rate,
                                         index.time_base, index.source.path))
    assert type(index.has_b_frames) is bool


def loads_or_names(cls, text: str, where: str):
    """``cls.from_json(text, where=where)``, or None where that raised a FormatError, which must
    name ``where``."""
    try:
        return cls.from_json(text, where=where)
    except fmt.FormatError as e:
        assert where in str(e)
        return None


def check_index(text: str) -> None:
    index = loads_or_names(fmt.VideoIndex, text, "fuzz/.gop_index.json")
    if index is not None:
        assert_well_typed_index(index)


@fuzz(600)
@given(value=json_values | st.fixed_dictionaries({k: json_values for k in KEYS[:14]}))
@example(value={"version": 1, "gops": "x"})
def test_fuzz_index_arbitrary_json(value):
    check_index(json.dumps(value))


@fuzz(300)
@given(text=st.text(max_size=40) | st.sampled_from(["[" * 50_000, "1" * 5000, "NaN", "{}"]))
def test_fuzz_index_arbitrary_text(text):
    check_index(text)


@fuzz(1200)
@given(raw=valid_index(), data=st.data())
def test_fuzz_index_mutations(raw, data):
    assert_well_typed_index(fmt.VideoIndex.from_json(json.dumps(raw)))   # the unmutated one loads
    mutate(data, raw)
    check_index(json.dumps(raw))


def check_manifest(text: str) -> None:
    manifest = loads_or_names(fmt.DatasetManifest, text, "fuzz/manifest.json")
    if manifest is None:
        return
    clips = manifest.clips()
    assert all(type(k) is str and type(n) is int and n >= 0 for k, n in clips.items())
    assert all(type(c) is str and all(type(n) is str for n in names)
               for c, names in manifest.cameras.items())
    for summary in manifest.videos.values():
        assert isinstance(summary, fmt.VideoSummary)
        assert [type(v) for v in (summary.frames, summary.codec, summary.width, summary.height)] \
            == [int, str, int, int]


@fuzz(500)
@given(value=json_values | st.fixed_dictionaries(
    {"version": json_values, "video_dirs": json_values, "cameras": json_values,
     "videos": json_values}))
@example(value={"a": 5})
@example(value={"version": 1, "video_dirs": [], "cameras": {}})
def test_fuzz_manifest_arbitrary_json(value):
    check_manifest(json.dumps(value))


@fuzz(700)
@given(raw=valid_manifest(), data=st.data())
def test_fuzz_manifest_mutations(raw, data):
    check_manifest(json.dumps(raw))
    mutate(data, raw)
    check_manifest(json.dumps(raw))
