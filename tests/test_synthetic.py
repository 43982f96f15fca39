"""Tests for the synthetic dataset maker: the GOP structure it promises must really be
in the files, because the loader's tests rely on it."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from dali_gop import synthetic
from dali_gop.synthetic import main, make_dataset, make_video, read_frame_number, render_frame

W, H = 160, 96


@pytest.fixture(scope="session")
def video(tmp_path_factory):
    """make_video with W x H defaults, each distinct configuration encoded once per session."""
    root = tmp_path_factory.mktemp("videos")
    made: dict[tuple, Path] = {}

    def get(ext: str = ".mp4", **kwargs) -> Path:
        key = (ext, *sorted(kwargs.items()))
        if key not in made:
            kwargs = {"width": W, "height": H, **kwargs}
            made[key] = make_video(root / f"v{len(made)}{ext}", **kwargs)
        return made[key]

    return get


def decoded_numbers(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [read_frame_number(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def packets(path: Path) -> list[tuple[int, bool]]:
    """(display frame index, is_keyframe) of each video packet, in decode order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frame_of = lambda pts: round(pts * stream.time_base * stream.average_rate)  # noqa: E731
        return [(frame_of(p.pts), p.is_keyframe) for p in container.demux(stream) if p.size]


def keyframes(path: Path) -> list[int]:
    return [index for index, key in packets(path) if key]


def reordered(path: Path) -> bool:
    """True if some packet displays before one decoded earlier (B-frames)."""
    order = [index for index, _ in packets(path)]
    return order != sorted(order)


def leading_pictures(path: Path) -> list[int]:
    """Keyframes (after the first) followed in decode order by a packet shown before them."""
    found = []
    key_index = None
    for index, key in packets(path):
        if key:
            key_index = index
        elif key_index is not None and key_index > 0 and index < key_index:
            found.append(key_index)
    return sorted(set(found))


# --- render_frame / read_frame_number ----------------------------------------------------


@pytest.mark.parametrize("size", [(128, 96), (160, 120), (W, H), (1600, 900)])
def test_render_and_read_back(size):
    width, height = size
    for k in (0, 1, 9, 10, 47, 12345, 99999):
        image = render_frame(k, k % 6, width, height)
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert read_frame_number(image) == k


def test_cameras_and_neighbouring_frames_differ():
    cameras = [render_frame(5, camera, W, H) for camera in range(6)]
    for a in range(6):
        for b in range(a + 1, 6):
            assert np.mean(cameras[a] != cameras[b]) > 0.3
    assert np.mean(np.any(render_frame(5, 0, W, H) != render_frame(6, 0, W, H), axis=-1)) > 0.2


def test_scene_changes_background_not_number():
    before, after = render_frame(17, 0, W, H, scene=0), render_frame(17, 0, W, H, scene=1)
    assert np.mean(np.any(before != after, axis=-1)) > 0.5
    assert read_frame_number(after) == 17


def test_unreadable_images():
    assert read_frame_number(np.full((H, W, 3), 128, np.uint8)) == -1
    assert read_frame_number(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)) == -1
    assert read_frame_number(np.zeros((20, 20, 3), np.uint8)) == -1
    with pytest.raises(ValueError):
        render_frame(0, 0, 32, 24)


# --- make_video ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_decodes_to_numbered_frames(video, codec):
    assert decoded_numbers(video(codec=codec, frames=60, gop=30)) == list(range(60))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_fixed_gop(video, codec):
    assert keyframes(video(codec=codec, frames=60, gop=30)) == [0, 30]
    assert keyframes(video(codec=codec, frames=40, gop=7)) == [0, 7, 14, 21, 28, 35]


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_scene_cut_forces_keyframe(video, codec):
    path = video(codec=codec, frames=60, gop=30, scene_cuts=(17,))
    assert 17 in keyframes(path)
    assert keyframes(path) == [0, 17, 47]  # the encoder restarts its keyint count at the cut
    assert decoded_numbers(path) == list(range(60))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_bframes(video, codec):
    with_b = video(codec=codec, frames=36, gop=12, bframes=2)
    assert reordered(with_b)
    assert decoded_numbers(with_b) == list(range(36))
    assert not reordered(video(codec=codec, frames=36, gop=12, bframes=0))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_open_gop_has_leading_pictures(video, codec):
    open_gop = video(codec=codec, frames=48, gop=12, bframes=2, open_gop=True)
    assert leading_pictures(open_gop)
    assert keyframes(open_gop) == [0, 12, 24, 36]
    assert decoded_numbers(open_gop) == list(range(48))
    closed = video(codec=codec, frames=48, gop=12, bframes=2, open_gop=False)
    assert reordered(closed) and not leading_pictures(closed)


@pytest.mark.parametrize("ext", [".mp4", ".mov", ".mkv"])
def test_audio_and_containers(video, ext):
    path = video(ext, codec="h264", frames=24, gop=12, bframes=2, audio=True)
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        assert container.streams.audio[0].codec_context.name == "aac"
    assert decoded_numbers(path) == list(range(24))


def test_ten_bit(video):
    path = video(codec="hevc", frames=4, pix_fmt="yuv420p10le")
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p10le"


def test_failed_encode_leaves_nothing(tmp_path, monkeypatch):
    """An encode that dies midway (temp file already written) leaves neither file behind."""
    seen = []

    def render_then_fail(frame_index, *args, **kwargs):
        if frame_index == 25:
            seen.extend(tmp_path.iterdir())
            raise RuntimeError("interrupted")
        return render_frame(frame_index, *args, **kwargs)

    monkeypatch.setattr(synthetic, "render_frame", render_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        make_video(tmp_path / "bad.mp4", frames=30, width=W, height=H)
    assert seen, "the temp file should exist while encoding"
    assert list(tmp_path.iterdir()) == []


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_video(tmp_path / "v.avi", frames=2, width=W, height=H)
    with pytest.raises(ValueError):
        make_video(tmp_path / "v.mp4", frames=2, width=W + 1, height=H)
    with pytest.raises(ValueError):
        make_video(tmp_path / "v.mp4", frames=10, width=W, height=H, scene_cuts=(10,))


# --- make_dataset / CLI ----------------------------------------------------------------


def test_make_dataset_layout_and_skip(tmp_path):
    paths = make_dataset(tmp_path, clips=2, cameras=3, frames=6, workers=2)
    expected = sorted(tmp_path / f"clip{i:03d}" / f"cam{j}.mp4" for i in range(2) for j in range(3))
    assert paths == expected
    assert sorted(tmp_path.rglob("*")) == sorted(expected + [tmp_path / "clip000", tmp_path / "clip001"])
    # camera j is rendered with camera=j
    with av.open(str(paths[1])) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    reference = render_frame(0, 1, W, H).astype(int)
    assert np.abs(first.astype(int) - reference).mean() < np.abs(first.astype(int) - render_frame(0, 0, W, H)).mean()

    stamps = {p: p.stat().st_mtime_ns for p in paths}
    paths[4].unlink()
    assert make_dataset(tmp_path, clips=2, cameras=3, frames=6, workers=2) == expected
    assert paths[4].exists()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in paths if p != paths[4])


def test_cli(tmp_path, capsys):
    main([str(tmp_path), "--clips", "1", "--cameras", "2", "--frames", "4", "--codec", "hevc", "--workers", "1"])
    assert sorted(p.name for p in (tmp_path / "clip000").iterdir()) == ["cam0.mp4", "cam1.mp4"]
    assert "2 videos" in capsys.readouterr().out
