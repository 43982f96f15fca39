"""Test videos that dali_gop.synthetic.make_video does not make: stream structures and tags that
real encoders and cameras produce and preprocess must handle or refuse."""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from dali_gop.synthetic import render_frame

SIZE = dict(width=160, height=96)


def _encode(container, first: int, frames: int, width: int, height: int, x264_params: str,
            **context) -> None:
    stream = container.add_stream("libx264", rate=12, options={
        "preset": "veryfast", "x264-params": f"scenecut=0:{x264_params}"})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = Fraction(1, 12)
    for name, value in context.items():   # colour tags: libx264 writes them into the VUI
        setattr(stream.codec_context, name, value)
    for i in range(first, first + frames):
        frame = av.VideoFrame.from_ndarray(render_frame(i, 0, width, height), format="rgb24")
        frame.pts = i
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def h264(path: Path, frames: int = 24, x264_params: str = "keyint=12:min-keyint=12",
         **context) -> Path:
    """An H.264 MP4 straight from libx264, with extra x264 parameters and codec-context fields."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        _encode(container, 0, frames, **SIZE, x264_params=x264_params, **context)
    return path


def intra_refresh(path: Path, frames: int = 100) -> Path:
    """x264 periodic intra refresh: one IDR, then every 12 frames a recovery-point P frame that the
    MP4 flags as a keyframe (sync sample), with leading B-frames around it."""
    return h264(path, frames, "keyint=12:min-keyint=12:intra-refresh=1:bframes=2")


def resolution_change(path: Path) -> Path:
    """24 frames at 160x96, then 24 at 192x112, in one H.264 stream (new SPS at the second IDR)."""
    raw = b""
    for first, (width, height) in ((0, (160, 96)), (24, (192, 112))):
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="h264") as container:
            _encode(container, first, 24, width, height, "keyint=12:bframes=0")
        raw += buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(io.BytesIO(raw), format="h264") as source, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        stream.time_base = Fraction(1, 12)
        for i, packet in enumerate(p for p in source.demux(source.streams.video[0]) if p.size):
            packet.stream, packet.time_base = stream, Fraction(1, 12)
            packet.pts = packet.dts = i
            out.mux(packet)
    return path


def nv12_of(planes: np.ndarray) -> np.ndarray:
    """FFmpeg's yuv420p planes (H*3/2, W) as NV12 (Y, then U and V interleaved), as NVDEC gives."""
    h, w = planes.shape[0] * 2 // 3, planes.shape[1]
    u = planes[h:h + h // 4].reshape(h // 2, w // 2)
    v = planes[h + h // 4:].reshape(h // 2, w // 2)
    return np.concatenate([planes[:h], np.stack([u, v], axis=-1).reshape(h // 2, w)])
