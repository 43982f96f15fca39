"""The colour contract (dali_gop/backends/_color.py) on the CPU: each video converted with the
matrix and range its tags give (BT.709 limited range when untagged), the same in every backend.

Videos are real H.264 encodes made here with PyAV, tagged through the encoder (the tags land in the
bitstream's VUI, which is all a GOP bin keeps). Expected frames are computed independently of the
backends: FFmpeg's planes of the source, converted by swscale with the matrix and range written in
CONVERSIONS below.
"""
from __future__ import annotations

import inspect
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from dali_gop import format as fmt
from dali_gop.backends import get_backend
from dali_gop.backends._color import VideoColors, nv12_to_rgb
from dali_gop.backends._cpu import CpuSampleDecoder
from dali_gop.errors import ConfigError
from dali_gop.reference import decode_annexb, decode_source
from dali_gop.synthetic import render_frame
from dali_gop._store import GopStore
from conftest import batch_frames, cpu_loader
from videos import nv12_of

SWS_MATRIX = {"bt601": "ITU601", "bt709": "ITU709", "bt2020": "BT2020"}
SWS_RANGE = {"limited": "MPEG", "full": "JPEG"}
SD, HD = (320, 192), (1280, 720)
FRAMES, GOP = 8, 4

# clip -> (size, AVColorSpace and AVColorRange given to the encoder (None: untagged),
#          the (matrix, range) every backend must convert it with)
VIDEOS = {
    "untagged": (SD, None, None, ("bt709", "limited")),
    "bt709": (SD, 1, 1, ("bt709", "limited")),
    "bt601": (SD, 6, 1, ("bt601", "limited")),
    "bt470bg": (SD, 5, 1, ("bt601", "limited")),
    "full": (SD, 1, 2, ("bt709", "full")),
    "untagged-full": (SD, None, 2, ("bt709", "full")),
}
HD_VIDEOS = {"untagged-hd": (HD, None, None, ("bt709", "limited"))}
CONVERSIONS = {clip: spec[3] for clip, spec in {**VIDEOS, **HD_VIDEOS}.items()}


def encode(path: Path, size: tuple[int, int], colorspace: int | None, color_range: int | None,
           frames: int = FRAMES, codec: str = "libx264") -> Path:
    """A synthetic clip (frame numbers, stripes, colours) tagged as asked."""
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    gop_params = f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=0"
    options = {"preset": "veryfast", "crf": "23"}
    options.update({"x264-params": gop_params} if codec == "libx264"
                   else {"x265-params": f"{gop_params}:log-level=error"})
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=12, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 12)
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        if color_range is not None:
            stream.codec_context.color_range = color_range
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(render_frame(k, 0, width, height), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_store(root: Path, videos: dict) -> Path:
    from preprocess.runner import preprocess
    for clip, (size, colorspace, color_range, _) in videos.items():
        encode(root / "videos" / clip / "cam0.mp4", size, colorspace, color_range)
    summary = preprocess(root / "videos", root / "gops", workers=1, progress=False)
    assert not summary.failed, summary.format()
    return root / "gops"


@pytest.fixture(scope="module")
def sd_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("color-sd"), VIDEOS)


@pytest.fixture(scope="module")
def hd_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("color-hd"), HD_VIDEOS)


def source(gop_root: Path, clip: str) -> Path:
    return gop_root.parent / "videos" / clip / "cam0.mp4"


def expected_frames(gop_root: Path, clip: str, conversion: tuple[str, str] | None = None,
                    pixel_format: str = "rgb24") -> list[np.ndarray]:
    """FFmpeg's planes of the source, converted by swscale with ``conversion`` (default: the one
    CONVERSIONS writes down for the clip)."""
    matrix, color_range = conversion or CONVERSIONS[clip]
    return [av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(
                format=pixel_format, src_colorspace=SWS_MATRIX[matrix],
                src_color_range=SWS_RANGE[color_range])
            for planes in decode_source(source(gop_root, clip), "yuv420p")]


def test_the_tags_reach_the_bitstream_and_the_index(sd_store, hd_store):
    """The encoder's tags are in the container, in the GOP bins' own bytes, and in the index;
    the index resolves to the conversion CONVERSIONS expects."""
    for gop_root, videos in ((sd_store, VIDEOS), (hd_store, HD_VIDEOS)):
        store = GopStore(gop_root)
        for clip, (_, colorspace, color_range, conversion) in videos.items():
            with av.open(str(source(gop_root, clip))) as container:
                context = container.streams.video[0].codec_context
                assert (context.colorspace, context.color_range) == (colorspace or 2,
                                                                     color_range or 0), clip
            index = store.index(f"{clip}/cam0.mp4")
            gop = index.gops[0]
            data = (gop_root / clip / "cam0.mp4" / gop.file).read_bytes()
            ctx = av.CodecContext.create(index.codec, "r")
            frame = next(f for p in ctx.parse(data) + ctx.parse(None) for f in ctx.decode(p))
            assert (frame.colorspace, frame.color_range) == (colorspace or 2, color_range or 0)
            assert fmt.color_conversion(index) == conversion, clip


@pytest.mark.parametrize("pattern", ["stream", "random"])
def test_cpu_loader_converts_as_the_tags_say(sd_store, pattern):
    """Every frame equals the source's planes converted with its clip's (matrix, range); untagged
    video is BT.709, not FFmpeg's own default (BT.601), which the cpu backend used to apply."""
    expected = {clip: expected_frames(sd_store, clip) for clip in VIDEOS}
    loader = cpu_loader(sd_store, pattern=pattern)
    seen = set()
    for batch in loader:
        for _, _, video, k, got in batch_frames(batch, loader):
            clip = video.split("/")[0]
            assert np.array_equal(got, expected[clip][k]), f"{video} frame {k}"
            seen.add((clip, k))
    loader.close()
    assert {clip for clip, _ in seen} == set(VIDEOS)


def test_untagged_hd_video_is_bt709(hd_store):
    """The case of the issue: 1280x720, no tags. Also checks that the conversions differ enough on
    these frames for the comparison to mean something."""
    expected = expected_frames(hd_store, "untagged-hd")
    with av.open(str(source(hd_store, "untagged-hd"))) as container:   # FFmpeg's own choice
        as_bt601 = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert max(np.abs(a.astype(int) - b).max() for a, b in zip(expected, as_bt601)) > 10
    loader = cpu_loader(hd_store, pattern="random", batch_size=1)
    for batch in loader:
        for _, _, video, k, got in batch_frames(batch, loader):
            assert np.array_equal(got, expected[k]), f"{video} frame {k}"
    loader.close()


def test_reference_decodes_follow_the_contract(sd_store):
    """decode_source and decode_annexb, the references other tests compare with, convert as the
    loader does; BGR is RGB reversed."""
    store = GopStore(sd_store)
    for clip in VIDEOS:
        expected = expected_frames(sd_store, clip)
        got = decode_source(source(sd_store, clip), "rgb24")
        assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True)), clip
        gop = store.index(f"{clip}/cam0.mp4").gops[1]
        data = (sd_store / clip / "cam0.mp4" / gop.file).read_bytes()
        bgr = decode_annexb("h264", data, gop.packet_sizes, pixel_format="bgr24")
        for position, image in enumerate(bgr):
            assert np.array_equal(image, expected[gop.start + position][..., ::-1]), clip


@pytest.mark.parametrize("override", ["bt601", "bt709"])
def test_color_matrix_overrides_every_tag(sd_store, override):
    """The backend's color_matrix replaces each video's matrix (tagged or not) and keeps its
    range: frames decoded by the cpu backend's sample decoder, as the loader runs it."""
    backend = get_backend("cpu", color_matrix=override)
    store = GopStore(sd_store)
    videos = [f"{clip}/cam0.mp4" for clip in VIDEOS]
    conversions = backend.check_videos(store, videos)
    assert conversions == {f"{clip}/cam0.mp4": (override, CONVERSIONS[clip][1])
                           for clip in VIDEOS}
    decode = CpuSampleDecoder(backend.color, backend.colors)
    for clip in VIDEOS:
        expected = expected_frames(sd_store, clip, (override, CONVERSIONS[clip][1]))
        frames = list(range(FRAMES))
        read = store.read([(f"{clip}/cam0.mp4", frames)])
        got = decode(read.data, read.plan.to_array())[0]
        assert all(np.array_equal(got[k], expected[k]) for k in frames), clip


def test_make_loader_passes_color_matrix_on(sd_store):
    from dali_gop import make_loader
    if "color_matrix" not in inspect.signature(make_loader).parameters:
        pytest.skip("make_loader has no color_matrix argument yet")
    expected = {clip: expected_frames(sd_store, clip, ("bt601", CONVERSIONS[clip][1]))
                for clip in VIDEOS}
    loader = cpu_loader(sd_store, pattern="random", color_matrix="bt601")
    for batch in loader:
        for _, _, video, k, got in batch_frames(batch, loader):
            assert np.array_equal(got, expected[video.split("/")[0]][k]), f"{video} frame {k}"
    loader.close()


def test_a_decoder_without_check_videos_reads_the_index_beside_the_bin(sd_store):
    """A CpuSampleDecoder built on its own (no loader, no check_videos) still converts each
    video as its index says."""
    store = GopStore(sd_store)
    read = store.read([(f"{clip}/cam0.mp4", [5]) for clip in VIDEOS])
    got = CpuSampleDecoder()(read.data, read.plan.to_array())
    for camera, clip in enumerate(VIDEOS):
        assert np.array_equal(got[camera, 0], expected_frames(sd_store, clip)[5]), clip


def test_unsupported_matrices_are_refused_before_decoding(tmp_path):
    """A matrix no backend converts (SMPTE 240M here) is refused when the loader is built, naming
    the video; color_matrix= lets it through as the matrix asked for."""
    gop_root = make_store(tmp_path, {"smpte240m": (SD, 7, 1, None)})
    store = GopStore(gop_root)
    with pytest.raises(ConfigError, match=r"smpte240m/cam0\.mp4: colour matrix 'smpte240m'"):
        get_backend("cpu").check_videos(store, ["smpte240m/cam0.mp4"])
    assert get_backend("cpu", color_matrix="bt709").check_videos(store, ["smpte240m/cam0.mp4"]) \
        == {"smpte240m/cam0.mp4": ("bt709", "limited")}
    with pytest.raises(ConfigError, match="bt2020"):
        VideoColors("bt2020")


def test_the_dali_backend_refuses_what_its_decoder_would_convert_wrong(sd_store):
    """DALI's video decoder always converts with BT.601: BT.709 videos (untagged ones too) are
    refused unless color_matrix='bt601' asks for BT.601 everywhere."""
    from dali_gop.backends._dali import DaliBackend
    store = GopStore(sd_store)
    DaliBackend(num_cameras=1).check_videos(store, ["bt601/cam0.mp4", "bt470bg/cam0.mp4"])
    for clip in ("untagged", "bt709", "full"):
        with pytest.raises(ConfigError, match=f"{clip}/cam0.mp4: converts with bt709"):
            DaliBackend(num_cameras=1).check_videos(store, [f"{clip}/cam0.mp4"])
    DaliBackend(num_cameras=1, color_matrix="bt601").check_videos(
        store, [f"{clip}/cam0.mp4" for clip in VIDEOS])


MATRIX_RANGES = [(m, r) for m in ("bt601", "bt709", "bt2020") for r in ("limited", "full")]


@pytest.mark.parametrize("matrix, color_range", MATRIX_RANGES)
def test_nv12_to_rgb_is_ffmpegs_conversion(matrix, color_range):
    """Bit for bit FFmpeg's (swscale's) conversion of the same planes, RGB and BGR, on every
    Y, U, V value (random planes) and with leading batch dimensions."""
    import torch
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (3, 2, 96 * 3 // 2, 250), dtype=np.uint8)
    nv12 = torch.from_numpy(np.stack([[nv12_of(p) for p in row] for row in planes]))
    for pixel_format, bgr in (("rgb24", False), ("bgr24", True)):
        got = nv12_to_rgb(nv12, matrix, color_range, bgr=bgr).numpy()
        assert got.shape == (3, 2, 96, 250, 3)
        for index in np.ndindex(3, 2):
            expected = av.VideoFrame.from_ndarray(planes[index], format="yuv420p").to_ndarray(
                format=pixel_format, src_colorspace=SWS_MATRIX[matrix],
                src_color_range=SWS_RANGE[color_range])
            assert np.array_equal(got[index], expected), (pixel_format, index)


def test_nv12_to_rgb_gives_the_cpu_backends_frames(sd_store, hd_store):
    """Decoded planes of every test video (tagged frames, converted as the contract says, not as
    the tag of the frame object says) through nv12_to_rgb equal the cpu backend's frames: what a
    GPU backend decoding to NV12 delivers."""
    import torch
    for gop_root, videos in ((sd_store, VIDEOS), (hd_store, HD_VIDEOS)):
        for clip in videos:
            planes = decode_source(source(gop_root, clip), "yuv420p")
            nv12 = torch.from_numpy(np.stack([nv12_of(p) for p in planes]))
            got = nv12_to_rgb(nv12, *CONVERSIONS[clip]).numpy()
            assert np.array_equal(got, np.stack(expected_frames(gop_root, clip))), clip


def test_nv12_to_rgb_refuses_what_it_cannot_convert():
    import torch
    for shape in ((7, 4), (9, 5)):   # rows not H*3/2 with H even; odd width
        with pytest.raises(ValueError, match="even H, W"):
            nv12_to_rgb(torch.zeros(shape, dtype=torch.uint8), "bt709", "limited")
    with pytest.raises(ValueError, match="uint8"):
        nv12_to_rgb(torch.zeros(6, 4, dtype=torch.int16), "bt709", "limited")
    with pytest.raises(ConfigError, match="smpte240m"):
        nv12_to_rgb(torch.zeros(6, 4, dtype=torch.uint8), "smpte240m", "limited")
