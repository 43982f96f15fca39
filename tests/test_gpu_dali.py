"""The dali backend on the GPU: DALI's fn.decoders.video on the GOP bytes gives the source's frames.

Skipped without an NVIDIA GPU (see conftest.py). On the GPU machine:
``python -m pytest -m gpu -v -s tests/test_gpu_dali.py``.

DALI converts YUV to RGB with bilinear chroma (dali/operators/video/color_space.cu) where FFmpeg's
rgb24 takes the nearest chroma sample, so at colour edges the two differ by tens of levels. So each
frame is compared with FFmpeg's YUV planes of the source converted the way DALI converts them
(within 3 per channel), and must be closer to its own source frame (FFmpeg's rgb24) than to either
neighbour. The videos are untagged, which the colour contract converts with BT.709: the loaders
here ask for BT.601 (``color_matrix``), the only matrix DALI's decoder has.
"""
from __future__ import annotations

import numpy as np
import pytest

from dali_gop import SequencePattern
from conftest import gpu_epoch_difference, store_factory

pytestmark = pytest.mark.gpu

RGB_TOLERANCE_MAX = 3

DATASETS = {
    "h264": dict(codec="h264"),
    "hevc": dict(codec="hevc"),
    "hevc-bframes": dict(codec="hevc", bframes=3),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """name -> (gop_root, {video: {"yuv420p": frames, "rgb24": frames}})"""
    return store_factory(tmp_path_factory, DATASETS, ("yuv420p", "rgb24"), clips=3, cameras=3,
                         frames=36, width=320, height=192, gop=12)


def rgb_as_dali_converts(planes: np.ndarray) -> np.ndarray:
    """FFmpeg's yuv420p planes (H*3/2, W) to RGB as DALI's video decoder does: luma as is, chroma
    sampled bilinearly at each pixel's centre (chroma samples centred in their 2x2 block), then
    BT.601 limited range, rounding to uint8 after the chroma sampling and at the end."""
    h, w = planes.shape[0] * 2 // 3, planes.shape[1]
    y = planes[:h].astype(np.float32)

    def upsampled(plane: np.ndarray) -> np.ndarray:
        plane = plane.reshape(h // 2, w // 2).astype(np.float32)
        rows = (np.arange(h) + 0.5) / 2 - 0.5      # pixel centres in chroma sample coordinates
        cols = (np.arange(w) + 0.5) / 2 - 0.5
        r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
        fr, fc = (rows - r0)[:, None], cols - c0
        r0, r1 = np.clip(r0, 0, h // 2 - 1), np.clip(r0 + 1, 0, h // 2 - 1)
        c0, c1 = np.clip(c0, 0, w // 2 - 1), np.clip(c0 + 1, 0, w // 2 - 1)
        top = plane[r0][:, c0] * (1 - fc) + plane[r0][:, c1] * fc
        bottom = plane[r1][:, c0] * (1 - fc) + plane[r1][:, c1] * fc
        return np.round(top + (bottom - top) * fr)

    u = upsampled(planes[h:h + h // 4]) - 128
    v = upsampled(planes[h + h // 4:]) - 128
    luma = 1.164 * (y - 16)
    rgb = np.stack([luma + 1.596 * v, luma - 0.813 * v - 0.392 * u, luma + 2.017 * u], axis=-1)
    return np.clip(np.round(rgb), 0, 255)


PATTERNS = [("stream", {}), ("random", {}), (SequencePattern(3, stride=5), {}),
            (SequencePattern(4, random_starts=True), {})]


@pytest.mark.parametrize("name", ["h264", "hevc"])
@pytest.mark.parametrize("pattern, options", PATTERNS)
def test_dali_loader_delivers_the_source_frames(loaders, stores, name, pattern, options):
    gop_root, reference = stores(name)
    loader = loaders(gop_root, pattern=pattern, backend="dali", batch_size=3, num_workers=2,
                     shard_id=0, num_shards=1, stream_decoding=False, color_matrix="bt601",
                     **options)
    # image borders are left out: DALI's kernel samples chroma outside the plane there
    seen, worst = gpu_epoch_difference(
        loader, reference, lambda decoded, k: rgb_as_dali_converts(decoded["yuv420p"][k]),
        lambda diff: diff.max() <= RGB_TOLERANCE_MAX, region=(slice(1, -1), slice(1, -1)))
    print(f"{name} {pattern} {options}: {seen} samples, worst difference {worst}")


def test_b_frame_streams_are_refused(loaders, stores):
    """On the H100, DALI's decoder gave wrong frames for HEVC with B-frames (the xfail of the first
    run of this file): the loader refuses such datasets up front instead."""
    gop_root, _ = stores("hevc-bframes")
    with pytest.raises(ValueError, match="B-frames.*nvdec"):
        loaders(gop_root, pattern="random", backend="dali", batch_size=3, num_workers=2,
                shard_id=0, num_shards=1)


def test_bgr_is_rgb_reversed(loaders, stores):
    gop_root, _ = stores("hevc")
    rgb, bgr = (next(iter(loaders(gop_root, pattern="random", backend="dali", batch_size=3,
                                  num_workers=2, color=color, shard_id=0, num_shards=1,
                                  seed=3, color_matrix="bt601")))
                for color in ("RGB", "BGR"))
    assert np.array_equal(rgb["frames"].flip(-1).cpu().numpy(), bgr["frames"].cpu().numpy())

