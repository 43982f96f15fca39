"""CPU decoding with PyAV (FFmpeg): the reference every other decoder is compared against, and the
engine of the ``cpu`` backend. No DALI, torch or GPU needed."""
from __future__ import annotations

import os
from typing import Sequence

import av
import numpy as np


def decode_source(path: str | os.PathLike, pixel_format: str = "yuv420p") -> list[np.ndarray]:
    """Every frame of a video's first video stream, in display order (frame k at index k).

    ``yuv420p`` gives the planes stacked as FFmpeg lays them out, (H*3/2, W); ``rgb24`` gives (H, W, 3).
    """
    with av.open(str(path)) as container:
        return [f.to_ndarray(format=pixel_format) for f in container.decode(video=0)]


def decode_annexb(codec: str, data: bytes | np.ndarray, packet_sizes: Sequence[int] | None = None,
                  pixel_format: str = "yuv420p", threads: int = 1) -> list[np.ndarray]:
    """Decode one Annex-B segment from a fresh decoder and flush it: a GOP bin, or a prefix of one.

    With ``packet_sizes`` packets are fed exactly as the index splits them; without, FFmpeg's parser
    finds the access units (fixed-GOP fast path).
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
    return [f.to_ndarray(format=pixel_format) for f in frames]
