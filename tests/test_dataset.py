"""Datasets a loader must refuse, or serve only as asked: clips missing a camera, videos of different
sizes. Real tiny videos, preprocessed, loaded on the cpu backend."""
from __future__ import annotations

import numpy as np
import pytest

from dali_gop.errors import ConfigError
from conftest import assert_closest_to_own_frame, check_batch, cpu_loader

pytest.importorskip("nvidia.dali")

FRAMES, GOP = 8, 4


def make_store(root, videos: dict[str, tuple[int, int]]):
    """``{"clip/cam.mp4": (width, height)}`` encoded, preprocessed: (gop_root, RGB reference)."""
    from dali_gop.reference import decode_source
    from dali_gop.synthetic import make_video
    from preprocess.runner import preprocess

    for i, (video, (width, height)) in enumerate(sorted(videos.items())):
        (root / "videos" / video).parent.mkdir(parents=True, exist_ok=True)
        make_video(root / "videos" / video, frames=FRAMES, width=width, height=height, gop=GOP,
                   camera=i)
    summary = preprocess(root / "videos", root / "gops", workers=1, progress=False)
    assert not summary.failed, summary.format()
    return root / "gops", {video: decode_source(root / "videos" / video, "rgb24")
                           for video in videos}


SMALL, LARGE = (160, 96), (192, 112)


@pytest.fixture(scope="module")
def incomplete(tmp_path_factory):
    """clip000 lost cam1.mp4 (its preprocessing failed, say); clip001 has both cameras."""
    return make_store(tmp_path_factory.mktemp("incomplete"), {
        "clip000/cam0.mp4": SMALL, "clip001/cam0.mp4": SMALL, "clip001/cam1.mp4": SMALL})


def test_a_clip_missing_a_camera_is_refused_naming_both(incomplete):
    """Before: the camera list came from the first clip, and cam1 vanished from every batch."""
    gop_root, _ = incomplete
    with pytest.raises(ConfigError, match=r"1 of 2 clips lack .*clip000 lacks \['cam1.mp4'\]"):
        cpu_loader(gop_root)


def test_skip_incomplete_clips_serves_the_complete_ones_and_says_which_it_skipped(incomplete):
    gop_root, reference = incomplete
    with pytest.warns(UserWarning, match=r"leaving out .*clip000 lacks \['cam1.mp4'\]"):
        loader = cpu_loader(gop_root, pattern="stream", skip_incomplete_clips=True)
    assert loader.clip_names == ["clip001"] and loader.cameras == ["cam0.mp4", "cam1.mp4"]
    batches = list(loader)
    assert sum(len(b["clip"]) for b in batches) == FRAMES
    for batch in batches:
        assert batch["frames"].shape[1] == 2
        check_batch(batch, loader, reference)
    loader.close()


def test_cameras_every_clip_has_can_be_asked_for(incomplete):
    gop_root, reference = incomplete
    loader = cpu_loader(gop_root, pattern="stream", cameras=["cam0.mp4"])
    assert loader.clip_names == ["clip000", "clip001"]
    for batch in loader:
        check_batch(batch, loader, reference)
    loader.close()


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory):
    """clip000 at 160x96, clip001 at 192x112 (its two cameras alike)."""
    return make_store(tmp_path_factory.mktemp("sizes"), {
        "clip000/cam0.mp4": SMALL, "clip000/cam1.mp4": SMALL,
        "clip001/cam0.mp4": LARGE, "clip001/cam1.mp4": LARGE})


def test_clips_of_different_sizes_are_refused_without_resize(two_sizes):
    """Before: DALI failed at the first mixed batch, naming no video."""
    gop_root, _ = two_sizes
    with pytest.raises(ConfigError, match=r"clip000/cam0.mp4 is 160x96, clip001/cam0.mp4 is "
                                          r"192x112: .*resize=\(height, width\)"):
        cpu_loader(gop_root)


def test_clips_of_different_sizes_are_served_resized_sample_by_sample(two_sizes):
    """The resize folds (cameras, T) into one sequence per sample, whatever its size (before: one
    frame shape, the first clip's, for every sample)."""
    import torch
    import torch.nn.functional as F
    gop_root, reference = two_sizes
    size = (48, 80)
    loader = cpu_loader(gop_root, pattern="stream", resize=size)
    seen = set()
    for batch in loader:
        frames = batch["frames"]
        assert tuple(frames.shape[1:]) == (2, 1, *size, 3)
        for b in range(frames.shape[0]):
            clip = loader.clip_names[int(batch["clip"][b])]
            seen.add(clip)
            k = int(batch["frame_idx"][b, 0])
            for c, camera in enumerate(loader.cameras):
                source = np.stack(reference[f"{clip}/{camera}"])
                resized = F.interpolate(torch.from_numpy(source).permute(0, 3, 1, 2).float(),
                                        size=size, mode="bilinear", antialias=True)
                resized = resized.permute(0, 2, 3, 1).numpy()
                got = frames[b, c, 0].numpy().astype(np.float32)
                assert np.abs(got - resized[k]).mean() < 6, f"{clip}/{camera} frame {k}"
                assert_closest_to_own_frame(got, resized, k, f"{clip}/{camera}")
    assert seen == {"clip000", "clip001"}
    loader.close()


def test_cameras_of_one_clip_in_different_sizes_are_refused_even_with_resize(tmp_path):
    gop_root, _ = make_store(tmp_path, {"clip000/cam0.mp4": SMALL, "clip000/cam1.mp4": LARGE})
    for resize in (None, (48, 80)):
        with pytest.raises(ConfigError, match=r"clip000/cam0.mp4 is 160x96, clip000/cam1.mp4 is "
                                              r"192x112: the cameras of a clip need one size"):
            cpu_loader(gop_root, resize=resize)
