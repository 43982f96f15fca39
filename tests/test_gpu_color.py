"""The colour contract on the GPU: nvdec, dali and cpu loaders give the same colours.

Skipped without an NVIDIA GPU (see conftest.py). On the GPU machine:
``python -m pytest -m gpu -v -s tests/test_gpu_color.py``.

Videos and expected frames as in tests/test_color.py (real encodes, tagged through the encoder).
NVDEC gives FFmpeg's YUV planes bit for bit (tests/test_gpu.py), and nv12_to_rgb is swscale's
arithmetic, so an nvdec backend that converts NV12 with nv12_to_rgb delivers the cpu backend's
bytes; AGREEMENT leaves room for nothing more than rounding. DALI's decoder always converts with
BT.601 and interpolates chroma bilinearly (dali/operators/video/color_space.cu): the dali backend
refuses BT.709 videos, and its frames are compared with the cpu backend's where chroma is flat,
the only place bilinear and nearest chroma agree.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from dali_gop.errors import ConfigError
from dali_gop.reference import decode_source
from conftest import batch_frames
from test_color import (CONVERSIONS, HD_VIDEOS, SD, VIDEOS, expected_frames, make_store,
                        nv12_of, source)

pytestmark = pytest.mark.gpu

AGREEMENT = 3          # per channel, nvdec vs cpu
DALI_AGREEMENT = 3     # per channel, dali vs cpu where chroma is flat
DALI_VIDEOS = {"bt601": (SD, 6, 1, ("bt601", "limited")),
               "bt601-full": (SD, 6, 2, ("bt601", "full"))}
LOADER = dict(pattern="random", num_workers=2, shard_id=0, num_shards=1, seed=1)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            videos = {"sd": VIDEOS, "hd": HD_VIDEOS, "dali": DALI_VIDEOS}[name]
            made[name] = (make_store(tmp_path_factory.mktemp(f"gpu-color-{name}"), videos), videos)
        return made[name]

    return get


def loader_frames(loader) -> dict[tuple[str, int], np.ndarray]:
    """One epoch: (video, frame) -> frame."""
    return {(video, k): frame for batch in loader for _, _, video, k, frame in batch_frames(batch,
                                                                                            loader)}


def color_matrix_option(matrix: str) -> dict:
    from dali_gop import make_loader
    if "color_matrix" not in inspect.signature(make_loader).parameters:
        pytest.skip("make_loader has no color_matrix argument yet")
    return {"color_matrix": matrix}


def test_nv12_to_rgb_on_the_gpu_is_the_cpus():
    import torch

    from dali_gop.backends._color import nv12_to_rgb
    generator = torch.Generator().manual_seed(0)
    # the fused kernel's words; a sample's frames in a batch (a view); a width it leaves to torch
    batch = torch.randint(0, 256, (2, 3, 720 * 3 // 2, 1280), dtype=torch.uint8, generator=generator)
    for nv12 in (batch[0], batch[1, 1:], torch.randint(0, 256, (2, 27, 22), dtype=torch.uint8,
                                                        generator=generator)):
        for matrix, color_range in set(CONVERSIONS.values()) | {("bt601", "full")}:
            for bgr in (False, True):
                got = nv12_to_rgb(nv12.cuda(), matrix, color_range, bgr=bgr)
                assert got.is_cuda
                assert torch.equal(got.cpu(), nv12_to_rgb(nv12, matrix, color_range, bgr=bgr))


def test_frames_converted_where_they_lie_are_the_cpus():
    """convert_frames, as the operator calls it: frames read in place from scattered NV12 (kept
    GOPs, staging) and written to scattered RGB, by the kernel, equal the CPU's conversion; where
    the kernel cannot serve (rows not of whole words, odd addresses) the fallback does."""
    import torch

    from dali_gop.backends._color import _kernel, convert_frames, nv12_to_rgb
    from dali_gop.backends._cuda import CudaDriver
    driver = CudaDriver(hold_gil=False)
    side = torch.cuda.Stream()
    assert _kernel(torch.device("cuda")) is not None, "NVRTC could not compile the kernel"
    generator = torch.Generator().manual_seed(1)
    for height, width, offset in ((900, 1600, 0), (360, 640, 0), (192, 320, 4), (18, 22, 0),
                                  (12, 16, 1)):
        frames = torch.randint(0, 256, (5, height * 3 // 2, width), dtype=torch.uint8,
                               generator=generator)
        pool = torch.zeros(7 * frames[0].numel() + 8, dtype=torch.uint8, device="cuda")
        slots = [6, 0, 3, 5, 1]       # the frames lie apart, out of order
        nv12_bytes = frames[0].numel()
        for frame, slot in zip(frames, slots):
            start = offset + slot * nv12_bytes
            pool[start:start + nv12_bytes] = frame.flatten().cuda()
        out = torch.zeros((6, height, width, 3), dtype=torch.uint8, device="cuda")
        rgb_bytes = height * width * 3
        order = [4, 2, 0, 5, 1]
        for matrix, color_range in set(CONVERSIONS.values()) | {("bt601", "full")}:
            for bgr in (False, True):
                def copy(destinations, sources, sizes):
                    driver.copy_many(destinations, sources, sizes, side.cuda_stream, 0)
                side.wait_stream(torch.cuda.current_stream())
                # a stream of its own, as the operator's (DALI's): the batched copy failed with
                # CUDA error 1 on the legacy default stream
                with torch.cuda.stream(side):
                    convert_frames([pool.data_ptr() + offset + slot * nv12_bytes for slot in slots],
                                   [out.data_ptr() + k * rgb_bytes for k in order], height,
                                   width, (matrix, color_range), bgr, out.device, copy)
                side.synchronize()
                expected = nv12_to_rgb(frames, matrix, color_range, bgr=bgr)
                for frame, k in enumerate(order):
                    assert torch.equal(out[k].cpu(), expected[frame]), (height, width, offset,
                                                                         matrix, bgr, frame)


@pytest.mark.parametrize("name", ["sd", "hd"])
def test_nvdec_nv12_through_nv12_to_rgb_is_the_cpu_backends_frames(stores, name):
    """Every bin decoded by NVDEC to NV12 and converted on the GPU with the video's conversion
    equals the contract's frames exactly: the nvdec backend's way to honour the contract."""
    import torch

    from dali_gop.backends._color import nv12_to_rgb
    from dali_gop.backends._nvdec import create_decoder, decode_calls
    from dali_gop.format import color_conversion
    from dali_gop._store import GopStore
    gop_root, videos = stores(name)
    store = GopStore(gop_root)
    stream = torch.cuda.Stream()
    for clip in videos:
        rel = f"{clip}/cam0.mp4"
        index = store.index(rel)
        expected = expected_frames(gop_root, clip)
        decoder = create_decoder(index.codec, stream.cuda_stream, 0, rgb=False)
        for gop in index.gops:
            read = store.read([(rel, [gop.end - 1])])
            got = []
            with torch.cuda.stream(stream):
                decode_calls(decoder, read.data, read.plan.segments[0],
                             lambda first, frames: got.extend(torch.from_dlpack(f).clone()
                                                              for f in frames))
                rgb = nv12_to_rgb(torch.stack(got[:gop.count]), *color_conversion(index))
            stream.synchronize()
            for position, image in enumerate(rgb.cpu().numpy()):
                assert np.array_equal(image, expected[gop.start + position]), \
                    f"{rel} frame {gop.start + position}"


@pytest.mark.parametrize("name", ["sd", "hd"])
def test_nvdec_and_cpu_loaders_agree(loaders, stores, name):
    """Untagged SD and HD, BT.709-, BT.601-tagged and full-range videos: the nvdec loader's
    frames are the cpu loader's within AGREEMENT, and so the contract's."""
    gop_root, videos = stores(name)
    batch_size = 2 if len(videos) > 1 else 1
    cpu = loader_frames(loaders(gop_root, backend="cpu", batch_size=batch_size, **LOADER))
    nvdec = loader_frames(loaders(gop_root, backend="nvdec", batch_size=batch_size, **LOADER))
    assert cpu.keys() == nvdec.keys()
    worst: dict[str, int] = {}
    for (video, k), frame in cpu.items():
        clip = video.split("/")[0]
        assert np.array_equal(frame, expected_frames(gop_root, clip)[k]), f"cpu {video} {k}"
        diff = int(np.abs(nvdec[video, k].astype(int) - frame).max())
        worst[clip] = max(worst.get(clip, 0), diff)
    print(f"nvdec vs cpu, worst difference per clip: {worst}")
    assert max(worst.values()) <= AGREEMENT, worst


def test_nvdec_honours_a_matrix_override(loaders, stores):
    """color_matrix='bt601' on nvdec: every video converted with BT.601 (its own range), as the
    cpu backend converts it."""
    gop_root, videos = stores("sd")
    options = {**LOADER, "batch_size": 2, "color_matrix": "bt601"}
    cpu = loader_frames(loaders(gop_root, backend="cpu", **options))
    nvdec = loader_frames(loaders(gop_root, backend="nvdec", **options))
    assert cpu.keys() == nvdec.keys()
    for (video, k), frame in cpu.items():
        clip = video.split("/")[0]
        assert np.array_equal(frame, expected_frames(gop_root, clip,
                                                     ("bt601", CONVERSIONS[clip][1]))[k])
        assert int(np.abs(nvdec[video, k].astype(int) - frame).max()) <= AGREEMENT, (video, k)


def test_the_dali_loader_refuses_bt709_videos(loaders, stores):
    gop_root, _ = stores("sd")
    with pytest.raises(ConfigError, match="converts with bt709"):
        loaders(gop_root, backend="dali", batch_size=2, stream_decoding=False, **LOADER)


def flat_chroma(planes: np.ndarray) -> np.ndarray:
    """(H, W) mask of the pixels whose chroma sample equals its 8 neighbours (U and V): there
    DALI's bilinear chroma is the nearest sample, as in FFmpeg and NVDEC."""
    h, w = planes.shape[0] * 2 // 3, planes.shape[1]
    flat = np.ones((h // 2, w // 2), bool)
    for plane in (planes[h:h + h // 4], planes[h + h // 4:]):
        c = np.pad(plane.reshape(h // 2, w // 2).astype(int), 1, mode="edge")
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                flat &= c[dy:dy + h // 2, dx:dx + w // 2] == c[1:-1, 1:-1]
    return flat.repeat(2, 0).repeat(2, 1)


@pytest.mark.parametrize("name", ["dali", "sd"])
def test_dali_and_cpu_loaders_agree_where_chroma_is_flat(loaders, stores, name):
    """BT.601 videos (limited and full range) as they are, the others with color_matrix='bt601':
    DALI's frames are the cpu backend's within DALI_AGREEMENT wherever chroma is flat. On these
    pixels BT.601 and BT.709 differ by more than 10 somewhere, so a wrong matrix cannot pass."""
    gop_root, videos = stores(name)
    options = {**LOADER, **(color_matrix_option("bt601") if name == "sd" else {})}
    cpu = loader_frames(loaders(gop_root, backend="cpu", batch_size=2, **options))
    dali = loader_frames(loaders(gop_root, backend="dali", batch_size=2, stream_decoding=False,
                                 **options))
    assert cpu.keys() == dali.keys()
    planes = {clip: decode_source(source(gop_root, clip), "yuv420p") for clip in videos}
    worst, sensitive = 0, False
    for (video, k), frame in cpu.items():
        clip = video.split("/")[0]
        mask = flat_chroma(planes[clip][k])
        assert mask.mean() > 0.3, f"{video} {k}: too little flat chroma to compare"
        worst = max(worst, int(np.abs(dali[video, k].astype(int) - frame)[mask].max()))
        as_bt709 = expected_frames(gop_root, clip, ("bt709", videos[clip][3][1]))[k]
        sensitive |= int(np.abs(as_bt709.astype(int) - frame)[mask].max()) > 10
    print(f"dali vs cpu where chroma is flat: worst {worst}")
    assert sensitive and worst <= DALI_AGREEMENT


def test_nv12_layout_helper_matches_nvdec(stores):
    """nv12_of (the CPU tests' NV12) is NVDEC's layout: checked on one decoded frame."""
    import torch

    from dali_gop.backends._nvdec import create_decoder, decode_calls
    from dali_gop._store import GopStore
    gop_root, _ = stores("sd")
    store = GopStore(gop_root)
    index = store.index("bt709/cam0.mp4")
    read = store.read([("bt709/cam0.mp4", [0])])
    stream = torch.cuda.Stream()
    decoder = create_decoder(index.codec, stream.cuda_stream, 0, rgb=False)
    got = []
    with torch.cuda.stream(stream):
        decode_calls(decoder, read.data, read.plan.segments[0],
                     lambda first, frames: got.extend(torch.from_dlpack(f).cpu().numpy()
                                                      for f in frames))
    planes = decode_source(source(gop_root, "bt709"), "yuv420p")[0]
    assert np.array_equal(got[0], nv12_of(planes))
