"""CPU decoding with PyAV (FFmpeg): the reference every other decoder is compared against, and the
engine of the ``cpu`` backend. No DALI, torch or GPU needed.

RGB and BGR come out under the colour contract (:mod:`dali_gop.backends._color`): converted with
the (matrix, range) given, or else the one the video's tags give, BT.709 limited range when
untagged. Never FFmpeg's own default (BT.601 for any untagged video), which NVDEC's own RGB output
does not follow for HD video.
"""
from __future__ import annotations

import os
from typing import Sequence

import av
import numpy as np

from dali_gop import format as fmt
from dali_gop.backends._color import check_conversion

# swscale's names for the contract's matrices and ranges
_SWS_MATRICES = {"bt601": "ITU601", "bt709": "ITU709", "bt2020": "BT2020"}
_SWS_RANGES = {"limited": "MPEG", "full": "JPEG"}


def tagged_conversion(colorspace: int, color_range: int,
                      color_matrix: str | None = None) -> tuple[str, str]:
    """The contract's (matrix, range) (:func:`dali_gop.format.color_conversion`) for tags as
    FFmpeg reports them (AVColorSpace, AVColorRange)."""
    tags = {"color_matrix": fmt.COLOR_MATRICES.get(colorspace, fmt.UNSPECIFIED),
            "color_range": fmt.COLOR_RANGES.get(color_range, fmt.UNSPECIFIED)}
    return fmt.color_conversion(tags, color_matrix)


def to_array(frame: av.VideoFrame, pixel_format: str,
             color: tuple[str, str] | None = None) -> np.ndarray:
    """A decoded frame as numpy: planes as FFmpeg lays them out, or RGB/BGR converted with
    ``color`` = (matrix, range), by default as the frame is tagged (:func:`tagged_conversion`)."""
    if pixel_format not in ("rgb24", "bgr24"):
        return frame.to_ndarray(format=pixel_format)
    matrix, color_range = color or tagged_conversion(frame.colorspace, frame.color_range)
    check_conversion(matrix, color_range)
    return frame.to_ndarray(format=pixel_format, src_colorspace=_SWS_MATRICES[matrix],
                            src_color_range=_SWS_RANGES[color_range])


def decode_source(path: str | os.PathLike, pixel_format: str = "yuv420p",
                  color_matrix: str | None = None) -> list[np.ndarray]:
    """Every frame of a video's first video stream, in display order (frame k at index k).

    ``yuv420p`` gives the planes stacked as FFmpeg lays them out, (H*3/2, W); ``rgb24`` gives
    (H, W, 3), converted as the stream is tagged (``color_matrix`` replaces its matrix).
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        color = tagged_conversion(stream.codec_context.colorspace,
                                  stream.codec_context.color_range, color_matrix)
        return [to_array(f, pixel_format, color) for f in container.decode(stream)]


def decode_annexb(codec: str, data: bytes | np.ndarray, packet_sizes: Sequence[int] | None = None,
                  pixel_format: str = "yuv420p", threads: int = 1,
                  color: tuple[str, str] | None = None) -> list[np.ndarray]:
    """Decode one Annex-B segment from a fresh decoder and flush it: a GOP bin, or a prefix of one.

    With ``packet_sizes`` packets are fed exactly as the index splits them; without, FFmpeg's parser
    finds the access units (fixed-GOP fast path). RGB/BGR are converted with ``color`` = (matrix,
    range), by default as the bitstream is tagged.
    """
    ctx = av.CodecContext.create(codec, "r")
    ctx.thread_count = threads
    buffer = memoryview(np.ascontiguousarray(data, dtype=np.uint8)).cast("B") \
        if isinstance(data, np.ndarray) else memoryview(data)
    if packet_sizes is None:
        packets = ctx.parse(bytes(buffer)) + ctx.parse(None)
    else:
        packets, offset = [], 0
        for size in packet_sizes:
            packets.append(av.Packet(bytes(buffer[offset:offset + size])))
            offset += size
    frames = []
    for packet in packets:
        frames += ctx.decode(packet)
    frames += ctx.decode(None)
    return [to_array(f, pixel_format, color) for f in frames]
