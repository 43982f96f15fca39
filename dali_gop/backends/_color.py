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

    On a GPU, for rows of whole 32-bit words, it is one fused kernel on the current stream
    (:func:`_fused_kernel`): the torch expression below makes a dozen int32 passes over every
    frame, SM time taken from the model the loader runs beside."""
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
    if nv12.is_cuda and _fits_words(nv12) and _fused_kernel(coefficients, bgr) is not None:
        return _fused(nv12, coefficients, bgr)
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


# The same integer arithmetic as nv12_to_rgb's torch expression, term by term (C's >> on a
# negative int is arithmetic in CUDA, as torch's is), so that they agree bit for bit. Each thread
# writes one 32-bit word: 4 of the 12 bytes of 4 pixels' RGB, from the 4 pixels' luma word and the
# chroma word of their 2 chroma pairs. A thread per byte spent several times the SM time, taken
# from the model the loader runs beside.
_KERNEL = """
template <typename T> T nv12_to_rgb_{name}(T luma4, T chroma4, T word) {{
    unsigned int lumas = (unsigned int)luma4, chromas = (unsigned int)chroma4, out = 0;
    for (int j = 0; j < 4; ++j) {{
        int byte = int(word) * 4 + j, pixel = byte / 3, channel = byte % 3;
        int y = (lumas >> (8 * pixel)) & 255;
        int cb = ((int)((chromas >> (16 * (pixel >> 1))) & 255) - 128) * 8;
        int cr = ((int)((chromas >> (16 * (pixel >> 1) + 8)) & 255) - 128) * 8;
        int luma = ((y * 8 - {luma_offset} * 8) * {cy}) >> 16;
        int chroma = channel == {red} ? (cr * {vr}) >> 16
                   : channel == 1 ? ((cb * {ug}) >> 16) + ((cr * {vg}) >> 16)
                   : (cb * {ub}) >> 16;
        int value = luma + chroma;
        out |= (unsigned int)(value < 0 ? 0 : (value > 255 ? 255 : value)) << (8 * j);
    }}
    return T(out);
}}
"""
_kernels: dict = {}


def _fused_kernel(coefficients: tuple[int, ...], bgr: bool):
    """A jiterator kernel (torch's runtime-compiled elementwise kernels) for one conversion, or
    None where torch has no jiterator: then the torch expression serves."""
    key = (coefficients, bgr)
    if key not in _kernels:
        try:
            from torch.cuda.jiterator import _create_jit_fn
        except ImportError:
            _kernels[key] = None
            return None
        luma_offset, cy, vr, ub, ug, vg = coefficients
        name = "_".join(str(abs(c)) for c in coefficients) + ("_bgr" if bgr else "")
        _kernels[key] = _create_jit_fn(_KERNEL.format(
            name=name, luma_offset=luma_offset, cy=cy, vr=vr, ub=ub, ug=ug, vg=vg,
            red=2 if bgr else 0))
    return _kernels[key]


def _fits_words(nv12) -> bool:
    """Rows of whole 32-bit words, at word-aligned addresses: what the word kernel reads."""
    return nv12.shape[-1] % 4 == 0 and nv12.stride(-1) == 1 and nv12.data_ptr() % 4 == 0 and \
        all(stride % 4 == 0 for stride in nv12.stride()[:-1])


def _fused(nv12, coefficients: tuple[int, ...], bgr: bool):
    """One pass: the output words (..., H/2, 2, W/4, 3) are (..., H, W, 3) in memory; the luma and
    chroma words reach every output word through broadcast views, read in place."""
    import torch
    rows, width = nv12.shape[-2:]
    height = rows * 2 // 3
    lead = nv12.shape[:-2]
    luma = nv12[..., :height, :].view(torch.int32).reshape(*lead, height // 2, 2, width // 4, 1)
    chroma = nv12[..., height:, :].view(torch.int32).reshape(*lead, height // 2, 1, width // 4, 1)
    words = torch.arange(3, dtype=torch.int32, device=nv12.device)
    rgb = _fused_kernel(coefficients, bgr)(luma, chroma, words)
    return rgb.view(torch.uint8).reshape(*lead, height, width, 3)


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
