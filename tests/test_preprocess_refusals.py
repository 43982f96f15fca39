"""Streams and names preprocess must not turn into a GOP store that fails at load time: it either
cuts them correctly or refuses them by name, before writing anything. Also the colour tags each
index records. CPU only (PyAV)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import preprocess.writer as writer
from dali_gop import format as fmt
from dali_gop.errors import ConfigError
from dali_gop.reference import decode_annexb, decode_source
from dali_gop.synthetic import make_video
from preprocess.runner import preprocess
from preprocess.writer import VideoError, write_video

import videos
from conftest import ROOT

SMALL = dict(width=160, height=96)


def assert_every_bin_decodes_alone_to_the_source(video: Path, gops: Path, rel: str) -> None:
    index = fmt.read_index(gops, rel)
    reference = decode_source(video)
    assert index.num_frames == len(reference)
    for gop in index.gops:
        got = decode_annexb(index.codec, (gops / rel / gop.file).read_bytes(), gop.packet_sizes)
        expected = gop.output_frames(len(gop.packet_sizes))
        assert len(got) == len(expected), gop.file
        for frame, k in zip(got, expected):
            assert np.array_equal(frame, reference[k]), f"{gop.file}: frame {k}"


def test_intra_refresh_is_cut_only_at_the_idr_and_every_frame_decodes(tmp_path):
    """x264 intra refresh: the MP4 flags a recovery-point P frame every 12 frames as a keyframe.
    Cutting there gave bins that decode short (all but the first: to nothing); preprocess now cuts
    at the IDR only, says so, and every frame decodes exactly."""
    video = videos.intra_refresh(tmp_path / "v" / "clip" / "cam0.mp4")
    result = write_video(tmp_path / "v", tmp_path / "g", "clip/cam0.mp4")
    index = fmt.read_index(tmp_path / "g", "clip/cam0.mp4")
    assert [g.start for g in index.gops] == [0] and index.num_frames == 100
    assert result.note.startswith("7 of 8 keyframes the container flags are no random-access")
    assert_every_bin_decodes_alone_to_the_source(video, tmp_path / "g", "clip/cam0.mp4")


def test_a_bin_that_decodes_short_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """The check after splitting, on its own: with every flagged keyframe trusted (the old rule),
    the intra-refresh video's second bin decodes short, and preprocess refuses the video by name."""
    videos.intra_refresh(tmp_path / "v" / "clip" / "cam0.mp4")
    monkeypatch.setattr(writer, "is_random_access", lambda data, codec: True)
    for mode in ("frames", "pixels"):
        with pytest.raises(VideoError) as refused:
            write_video(tmp_path / "v", tmp_path / "g", "clip/cam0.mp4", verify=mode)
        message = str(refused.value)
        assert message.startswith(f"{tmp_path / 'v' / 'clip' / 'cam0.mp4'}: gop.13.")
        assert "decodes on its own to 0 frames where its index promises" in message
        assert "re-encode it" in message
        assert not list((tmp_path / "g" / "clip" / "cam0.mp4").glob("*.bin"))
        assert not (tmp_path / "g" / "clip" / "cam0.mp4" / fmt.INDEX_FILENAME).exists()


def test_pixels_mode_catches_a_bin_that_decodes_to_other_pixels(tmp_path, monkeypatch):
    """A bin that decodes to the right number of frames, but not the source's pixels (here: one
    byte flipped in a P frame, which FFmpeg conceals): only the pixel comparison sees it."""
    make_video(tmp_path / "v" / "clip" / "cam0.mp4", frames=24, gop=12, **SMALL)
    split = writer.split_gops

    def flipped(*args):
        gops = split(*args)
        entry, blob = gops[1]
        at = sum(entry.packet_sizes[:3]) + entry.packet_sizes[3] // 2
        gops[1] = entry, blob[:at] + bytes([blob[at] ^ 0x55]) + blob[at + 1:]
        return gops

    monkeypatch.setattr(writer, "split_gops", flipped)
    write_video(tmp_path / "v", tmp_path / "frames", "clip/cam0.mp4", verify="frames")
    with pytest.raises(VideoError, match=r"cam0.mp4: frame 1\d decoded from gop.12.12.bin alone "
                                         "differs from FFmpeg's decode of the whole source"):
        write_video(tmp_path / "v", tmp_path / "pixels", "clip/cam0.mp4", verify="pixels")


@pytest.mark.parametrize("mode", ["frames", "pixels"])
def test_a_resolution_change_is_refused_by_name(tmp_path, mode):
    video = videos.resolution_change(tmp_path / "v" / "clip" / "cam0.mp4")
    with pytest.raises(VideoError) as refused:
        write_video(tmp_path / "v", tmp_path / "g", "clip/cam0.mp4", verify=mode)
    assert str(refused.value).startswith(
        f"{video}: resolution changes from 160x96 to 192x112 at frame 24: the loader serves one "
        "size per video")
    assert not (tmp_path / "g" / "clip" / "cam0.mp4" / fmt.INDEX_FILENAME).exists()


def test_names_that_are_not_utf8_are_refused_by_name(tmp_path):
    """A folder and a file whose names are not UTF-8 (Latin-1 bytes): each such video is one
    FAILED line, the name shown with backslash escapes; the other videos are done."""
    root = tmp_path / "v"
    make_video(root / "clip000" / "cam0.mp4", frames=4, gop=2, **SMALL)
    os.makedirs(os.fsencode(root) + b"/caf\xe9")
    make_video(root / "clip001" / "cam0.mp4", frames=4, gop=2, **SMALL)
    os.rename(os.fsencode(root / "clip001" / "cam0.mp4"), os.fsencode(root) + b"/caf\xe9/cam0.mp4")
    os.rename(os.fsencode(root / "clip000" / "cam0.mp4"), os.fsencode(root) + b"/clip000/c\xe9.mp4")
    make_video(root / "clip000" / "cam1.mp4", frames=4, gop=2, **SMALL)
    done = subprocess.run([sys.executable, "-m", "preprocess", "--video-root", str(root),
                           "--gop-root", str(tmp_path / "g"), "--no-progress"],
                          cwd=ROOT, capture_output=True, timeout=120)
    stderr = done.stderr.decode()   # strict: whatever preprocess prints is valid UTF-8
    assert done.returncode == 1, stderr
    failed = sorted(line for line in stderr.splitlines() if line.startswith("FAILED"))
    assert failed == [
        f"FAILED caf\\xe9/cam0.mp4: VideoError: {root}/caf\\xe9/cam0.mp4: file or folder name is "
        "not UTF-8: rename it",
        f"FAILED clip000/c\\xe9.mp4: VideoError: {root}/clip000/c\\xe9.mp4: file or folder name "
        "is not UTF-8: rename it"]
    assert "Traceback" not in stderr
    assert "1 written" in done.stdout.decode()
    manifest = json.loads((tmp_path / "g" / fmt.MANIFEST_FILENAME).read_text())
    assert list(manifest["videos"]) == ["clip000/cam1.mp4"]


def test_colour_tags_are_recorded_and_untagged_reads_unspecified(tmp_path):
    videos.h264(tmp_path / "v" / "tagged" / "cam0.mp4", colorspace=5, color_range=2,
                color_primaries=5, color_trc=6)     # BT.601 (bt470bg), full range
    videos.h264(tmp_path / "v" / "plain" / "cam0.mp4")
    summary = preprocess(tmp_path / "v", tmp_path / "g", workers=1, progress=False)
    assert not summary.failed
    tagged = fmt.read_index(tmp_path / "g", "tagged/cam0.mp4")
    plain = fmt.read_index(tmp_path / "g", "plain/cam0.mp4")
    assert (tagged.color_matrix, tagged.color_range, tagged.color_primaries,
            tagged.color_transfer) == ("bt470bg", "full", "bt470bg", "smpte170m")
    assert (plain.color_matrix, plain.color_range, plain.color_primaries,
            plain.color_transfer) == ("unspecified",) * 4
    assert fmt.color_conversion(tagged) == ("bt601", "full")
    assert fmt.color_conversion(plain) == ("bt709", "limited")
    manifest = fmt.read_manifest(tmp_path / "g")   # the fixed-GOP path reads no index
    assert fmt.color_conversion(manifest.videos["tagged/cam0.mp4"]) == ("bt601", "full")


def test_color_conversion_rule_and_old_indexes():
    assert fmt.color_conversion({}) == ("bt709", "limited")
    assert fmt.color_conversion({"color_matrix": "smpte170m"}) == ("bt601", "limited")
    assert fmt.color_conversion({"color_matrix": "bt709", "color_range": "full"}) == \
        ("bt709", "full")
    assert fmt.color_conversion({"color_matrix": "bt2020nc"}) == ("bt2020", "limited")
    assert fmt.color_conversion({"color_matrix": "ycgco"}) == ("ycgco", "limited")
    assert fmt.color_conversion({"color_matrix": "bt709"}, override="bt601") == ("bt601", "limited")
    assert fmt.color_conversion({}, override="bt601") == ("bt601", "limited")
    with pytest.raises(ConfigError, match="override 'bt2020'"):
        fmt.color_conversion({}, override="bt2020")
    index = fmt.VideoIndex(
        source=fmt.SourceInfo("c/cam0.mp4", 1, 0), codec="h264", width=16, height=16,
        pix_fmt="yuv420p", frame_rate="12", time_base="1/12", num_frames=1, has_b_frames=False,
        gops=(fmt.GopEntry(0, 1, "gop.0.1.bin", 1, 0, (1,), (0,)),))
    old = {k: v for k, v in json.loads(index.to_json()).items() if not k.startswith("color_")}
    loaded = fmt.VideoIndex.from_json(json.dumps(old))   # written before the colour fields
    assert loaded == index and loaded.color_matrix == loaded.color_range == "unspecified"
    old_summary = fmt.DatasetManifest.from_json(json.dumps(
        {"version": 1, "video_dirs": {}, "cameras": {},
         "videos": {"c/cam0.mp4": {"frames": 1, "codec": "h264", "width": 16, "height": 16}}}))
    assert fmt.color_conversion(old_summary.videos["c/cam0.mp4"]) == ("bt709", "limited")
