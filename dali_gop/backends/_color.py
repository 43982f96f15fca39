"""YUV -> RGB: one colour contract for every backend.

What a video's pixels mean is decided once, from its index
(:func:`dali_gop.format.color_conversion`): the matrix and range it is tagged with; untagged video
gets BT.709, limited range; a loader's ``color_matrix`` replaces the matrix. Every backend
converts with that (matrix, range), and converts as FFmpeg's swscale does, the cpu backend's
engine: each chroma sample serves its 2x2 block (no interpolation, as in NVDEC's own conversion),
in swscale's fixed-point arithmetic. A GPU backend that decodes to NV12 and converts with
:func:`nv12_to_rgb` then delivers the cpu backend's bytes, not merely similar colours. NVDEC's own
RGB output cannot stand in: for untagged video it picks the matrix by frame size (BT.601 for SD).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from dali_gop import format as fmt
from dali_gop.errors import ConfigError, FormatError

MATRICES = ("bt601", "bt709", "bt2020")
RANGES = ("limited", "full")

# libswscale/yuv2rgb.c, ff_yuv2rgb_coeffs: Cr->R, Cb->B, -(Cb->G), -(Cr->G) for limited-range
# chroma, in 1/65536
_SWSCALE_COEFFICIENTS = {"bt601": (104597, 132201, 25675, 53279),
                         "bt709": (117489, 138438, 13975, 34925),
                         "bt2020": (110013, 140363, 12277, 42626)}

Conversion = tuple[str, str]   # (matrix, range)


def check_conversion(matrix: str, color_range: str, where: str = "") -> None:
    if matrix not in MATRICES or color_range not in RANGES:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}colour matrix {matrix!r}, range {color_range!r}: the backends "
                          f"convert matrices {MATRICES} and ranges {RANGES}; make_loader's "
                          f"color_matrix= ({fmt.MATRIX_OVERRIDES}) replaces a video's matrix")


def swscale_fixed_point(matrix: str, color_range: str) -> tuple[int, ...]:
    """(luma offset, luma, Cr->R, Cb->B, Cb->G, Cr->G) as swscale's x86 code applies them: 13
    fractional bits, the terms of ``(x << 3) * c >> 16`` each rounded down on its own."""
    check_conversion(matrix, color_range)
    crv, cbu, cgu, cgv = _SWSCALE_COEFFICIENTS[matrix]
    if color_range == "full":
        crv, cbu, cgu, cgv = (c * 224 // 255 for c in (crv, cbu, cgu, cgv))
        cy, luma_offset = 1 << 16, 0
    else:
        cy, luma_offset = (1 << 16) * 255 // 219, 16
    q13 = [(c + 4) >> 3 for c in (cy, crv, cbu, -cgu, -cgv)]
    return (luma_offset, *q13)


def nv12_to_rgb(nv12, matrix: str, color_range: str, bgr: bool = False):
    """NV12 frames (..., H*3/2, W) uint8, on the CPU or a GPU, to (..., H, W, 3) uint8 RGB (BGR with
    ``bgr``), converted as FFmpeg's swscale converts yuv420p with the same matrix and range.

    On a GPU, for dense frames of rows of whole 32-bit words, it is one kernel on the current
    stream (:func:`convert_frames`): the torch expression below makes a dozen int32 passes over
    every frame, SM time taken from the model the loader runs beside."""
    import torch

    if nv12.dtype != torch.uint8 or nv12.dim() < 2:
        raise ValueError(f"nv12_to_rgb takes uint8 (..., H*3/2, W), not {nv12.dtype} "
                         f"{tuple(nv12.shape)}")
    rows, width = nv12.shape[-2:]
    height = rows * 2 // 3
    if rows % 3 or height % 2 or width % 2:
        raise ValueError(f"nv12_to_rgb: {tuple(nv12.shape)} is not (..., H*3/2, W) with even H, W")
    coefficients = swscale_fixed_point(matrix, color_range)
    lead = nv12.shape[:-2]
    if nv12.is_cuda and nv12.is_contiguous() and nv12.numel():
        rgb = torch.empty((*lead, height, width, 3), dtype=torch.uint8, device=nv12.device)
        count, nv12_bytes = nv12.numel() // (rows * width), rows * width
        if _launch([nv12.data_ptr() + k * nv12_bytes for k in range(count)],
                   [rgb.data_ptr() + k * nv12_bytes * 2 for k in range(count)],
                   height, width, coefficients, bgr, nv12.device):
            return rgb
    luma_offset, cy, vr, ub, ug, vg = coefficients
    y = nv12[..., :height, :].to(torch.int32)
    uv = nv12[..., height:, :].reshape(*lead, height // 2, width // 2, 2).to(torch.int32)
    u, v = (uv[..., 0] - 128) << 3, (uv[..., 1] - 128) << 3
    luma = ((((y << 3) - luma_offset * 8) * cy) >> 16).reshape(*lead, height // 2, 2, width // 2, 2)

    def channel(chroma):   # one chroma value for its 2x2 block of luma
        return (luma + chroma[..., :, None, :, None]).clamp_(0, 255)

    r, g, b = channel((v * vr) >> 16), channel(((u * ug) >> 16) + ((v * vg) >> 16)), \
        channel((u * ub) >> 16)
    rgb = torch.stack((b, g, r) if bgr else (r, g, b), dim=-1).to(torch.uint8)
    return rgb.reshape(*lead, height, width, 3)


def convert_frames(sources: Sequence[int], destinations: Sequence[int], height: int, width: int,
                   conversion: Conversion, bgr: bool, device,
                   copy: Callable[[list, list, list], None]) -> None:
    """Dense NV12 frames (H*3/2, W) at device pointers ``sources`` to dense RGB frames (H, W, 3) at
    ``destinations``, on the current stream: one kernel that reads each frame where it lies (a
    stream slot's kept GOP, a batch's staging), so that no frame is first gathered into one tensor.
    Where the kernel cannot serve (no NVRTC, or rows not of whole words), the frames are gathered
    with ``copy(destinations, sources, sizes)`` and converted by :func:`nv12_to_rgb`."""
    import torch

    coefficients = swscale_fixed_point(*conversion)
    if _launch(sources, destinations, height, width, coefficients, bgr, device):
        return
    nv12_bytes, rgb_bytes = height * 3 // 2 * width, height * width * 3
    staging = torch.empty((len(sources), height * 3 // 2, width), dtype=torch.uint8, device=device)
    copy([staging.data_ptr() + k * nv12_bytes for k in range(len(sources))], list(sources),
         [nv12_bytes] * len(sources))
    rgb = nv12_to_rgb(staging, *conversion, bgr=bgr)
    copy(list(destinations), [rgb.data_ptr() + k * rgb_bytes for k in range(len(sources))],
         [rgb_bytes] * len(sources))


# swscale's integer arithmetic, term by term as nv12_to_rgb's torch expression computes it (C's >>
# on a negative int is arithmetic in CUDA, as torch's is), so that they agree bit for bit. A thread
# converts 4 pixels of two rows, which share 2 chroma pairs: it reads 3 words, writes 6 (12 bytes of
# RGB a row), so that every access is a whole aligned word. Frame k is read at frames[k] and written
# at frames[count + k].
_KERNEL = r"""
extern "C" __global__ void nv12_to_rgb_frames(
        const unsigned long long* frames, int count, int height, int width, int luma_offset,
        int cy, int vr, int ub, int ug, int vg, int red) {
    int quads = width >> 2;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (height >> 1) * quads) return;
    int row2 = i / quads, quad = i - row2 * quads;
    const unsigned char* nv12 = (const unsigned char*)frames[blockIdx.y];
    unsigned char* rgb = (unsigned char*)frames[count + blockIdx.y];
    unsigned int chromas =
        *(const unsigned int*)(nv12 + (unsigned long long)(height + row2) * width + 4 * quad);
    int red_of[2], green_of[2], blue_of[2];
    for (int pair = 0; pair < 2; ++pair) {
        int cb = ((int)((chromas >> (16 * pair)) & 255) - 128) * 8;
        int cr = ((int)((chromas >> (16 * pair + 8)) & 255) - 128) * 8;
        red_of[pair] = (cr * vr) >> 16;
        green_of[pair] = ((cb * ug) >> 16) + ((cr * vg) >> 16);
        blue_of[pair] = (cb * ub) >> 16;
    }
    for (int r = 0; r < 2; ++r) {
        unsigned long long row = (unsigned long long)(2 * row2 + r) * width + 4 * quad;
        unsigned int lumas = *(const unsigned int*)(nv12 + row);
        unsigned int words[3] = {0, 0, 0};
        for (int pixel = 0; pixel < 4; ++pixel) {
            int y = (lumas >> (8 * pixel)) & 255;
            int luma = ((y * 8 - luma_offset * 8) * cy) >> 16;
            int values[3];
            values[red] = luma + red_of[pixel >> 1];
            values[1] = luma + green_of[pixel >> 1];
            values[2 - red] = luma + blue_of[pixel >> 1];
            for (int c = 0; c < 3; ++c) {
                int byte = 3 * pixel + c, value = values[c];
                words[byte >> 2] |= (unsigned int)(value < 0 ? 0 : (value > 255 ? 255 : value))
                                    << (8 * (byte & 3));
            }
        }
        unsigned int* out = (unsigned int*)(rgb + row * 3);
        out[0] = words[0];
        out[1] = words[1];
        out[2] = words[2];
    }
}
"""
_THREADS = 256
_MAX_FRAMES = 65535     # a grid's y extent
_kernels: dict = {}


def _kernel(device):
    """The compiled kernel on ``device`` (NVRTC, through torch), or None where torch cannot
    compile one: then the torch expression serves."""
    import torch
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    if index not in _kernels:
        try:
            with torch.cuda.device(index):
                _kernels[index] = torch.cuda._compile_kernel(_KERNEL, "nv12_to_rgb_frames")
        except (AttributeError, RuntimeError, OSError):
            _kernels[index] = None
    return _kernels[index]


def _launch(sources: Sequence[int], destinations: Sequence[int], height: int, width: int,
            coefficients: tuple[int, ...], bgr: bool, device) -> bool:
    """Convert with the kernel on the current stream; False where it cannot (then nothing ran)."""
    import torch
    if torch.device(device).type != "cuda" or width % 4 or height % 2 or \
            any(pointer % 4 for pointer in (*sources, *destinations)):
        return False
    kernel = _kernel(device)
    if kernel is None:
        return False
    quads = height // 2 * (width // 4)
    for first in range(0, len(sources), _MAX_FRAMES):
        part = slice(first, first + _MAX_FRAMES)
        frames = [*sources[part], *destinations[part]]
        # pinned, so that the copy is queued on the stream, not made while the caller waits
        table = torch.tensor(frames, dtype=torch.int64, pin_memory=True).to(device,
                                                                           non_blocking=True)
        kernel(grid=((quads + _THREADS - 1) // _THREADS, len(frames) // 2, 1),
               block=(_THREADS, 1, 1),
               args=[table, len(frames) // 2, height, width, *coefficients, 2 if bgr else 0])
    return True


class VideoColors:
    """Each video's (matrix, range), found from a segment's name: decoders see bins by path only,
    and a bin's folder is its video's GOP folder, beside the video's index.

    :meth:`learn` (the backend's ``check_videos``) resolves every video before the pipeline runs,
    from its index or, on the fixed-GOP path, the manifest, so that a video the backends cannot
    convert is refused before any decoding; a decoder used on its own reads the index beside the
    bin when it meets a video first.
    """

    def __init__(self, override: str | None = None):
        fmt.color_conversion({}, override)   # refuses an override it does not know
        self.override = override
        self._by_folder: dict[str, Conversion] = {}

    def learn(self, store, videos) -> dict[str, Conversion]:
        """Each video's conversion, kept for :meth:`of_segment` and returned."""
        learnt = {}
        for video in videos:
            folder = str(fmt.video_gop_dir(store.gop_root, video))
            learnt[video] = self._by_folder[folder] = self._resolve(store.video_info(video),
                                                                    folder)
        return learnt

    def of_segment(self, name: str) -> Conversion:
        folder = os.path.dirname(name)
        conversion = self._by_folder.get(folder)
        if conversion is None:
            path = Path(folder) / fmt.INDEX_FILENAME
            try:
                text = path.read_text()
            except OSError as e:
                raise FormatError(f"{path}: cannot read the index of {name} ({e})") from None
            conversion = self._by_folder[folder] = self._resolve(
                fmt.VideoIndex.from_json(text, str(path)), folder)
        return conversion

    def _resolve(self, tags, folder: str) -> Conversion:
        matrix, color_range = fmt.color_conversion(tags, self.override)
        check_conversion(matrix, color_range, folder)
        return matrix, color_range
