"""Decode what preprocess is about to write, each bin from its own bytes, before writing it.

The cutting rule trusts the stream: its random-access pictures and timestamps. A stream it does not
cover would otherwise pass preprocess and fail at load time, one batch at a time. So every bin is
decoded alone (PyAV, one thread: the pool already runs one video per core) and must output exactly
the frames its index promises, in display order, all at the video's one size (mode ``frames``).
Mode ``pixels`` also decodes the whole source once and requires every frame of every bin to equal
FFmpeg's frame bit for bit (CRC-32 of the planes): that also catches a picture after a cut
referencing one before it, which a decoder conceals instead of dropping. Mode ``none`` trusts the
stream and decodes nothing.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator

import av

from dali_gop import format as fmt

MODES = ("pixels", "frames", "none")
_REENCODE = "re-encode it with keyframes every N frames (IDR, or CRA for HEVC; no intra refresh)"


class Mismatch(Exception):
    """A bin decodes to other frames than its index promises; the message says which and how."""


def _crc(frame: av.VideoFrame) -> int:
    return zlib.crc32(frame.to_ndarray())


def _check_size(frame: av.VideoFrame, k: int, width: int, height: int) -> None:
    if (frame.width, frame.height) != (width, height):
        raise Mismatch(f"resolution changes from {width}x{height} to {frame.width}x{frame.height} "
                       f"at frame {k}: the loader serves one size per video; re-encode it at one "
                       "size, or split it where the size changes")


def source_crcs(path: Path, width: int, height: int) -> list[int]:
    """CRC-32 of every frame of FFmpeg's decode of the whole source, display order."""
    crcs = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            _check_size(frame, len(crcs), width, height)
            crcs.append(_crc(frame))
    return crcs


def _decode_alone(codec: str, entry: fmt.GopEntry, blob: bytes) -> Iterator[av.VideoFrame]:
    """The bin through a fresh decoder, flushed. Each packet's pts is its frame number, so each
    output frame says which one it is."""
    ctx = av.CodecContext.create(codec, "r")
    ctx.thread_count = 1
    offset = 0
    try:
        for size, frame in zip(entry.packet_sizes, entry.packet_frames):
            packet = av.Packet(blob[offset:offset + size])
            packet.pts = frame
            offset += size
            yield from ctx.decode(packet)
        yield from ctx.decode(None)
    except av.FFmpegError as e:
        raise Mismatch(f"{entry.file} does not decode on its own ({e})") from None


def check_bins(codec: str, gops: list[tuple[fmt.GopEntry, bytes]], width: int, height: int,
               source: list[int] | None) -> None:
    """Decode every bin alone and compare (see the module's doc); ``source``: :func:`source_crcs`,
    or None to check frame numbers and sizes only."""
    num_frames = gops[-1][0].end
    if source is not None and len(source) != num_frames:
        raise Mismatch(f"FFmpeg decodes {len(source)} frames from the source where the packets' "
                       f"timestamps number {num_frames}: frame numbers would be wrong")
    for entry, blob in gops:
        expected = entry.output_frames(len(entry.packet_sizes))
        got = []
        for frame in _decode_alone(codec, entry, blob):
            k = -1 if frame.pts is None else frame.pts
            _check_size(frame, k, width, height)
            got.append(k)
            if source is not None and 0 <= k < len(source) and _crc(frame) != source[k]:
                raise Mismatch(f"frame {k} decoded from {entry.file} alone differs from FFmpeg's "
                               "decode of the whole source: it depends on something before the "
                               f"cut; {_REENCODE}")
        if tuple(got) != expected:
            what = (f"{len(got)} frames where its index promises {len(expected)}"
                    if len(got) != len(expected) else f"frames {got}, not {list(expected)}")
            raise Mismatch(f"{entry.file} decodes on its own to {what}: the stream's structure "
                           f"near frame {entry.start} is one the GOP cutting rule does not cover; "
                           f"{_REENCODE}")
