"""The ``cpu`` backend: FFmpeg (PyAV) inside a DALI python operator. Slow but complete and exact,
so the whole loader (workers, sharding, iterator) runs in CI and on machines without a GPU."""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from dali_gop.backends._base import DecodeBackend
from dali_gop.hooks import annotate
from dali_gop.backends._color import VideoColors
from dali_gop.backends._assemble import (DecodeError, Held, KeptGops, check_outputs,
                                         check_position, frames_shape, passed_frame, pick_frames,
                                         refuse_decoding_ahead)
from dali_gop.reference import decode_annexb
from dali_gop.plan import Plan, segment_names


class CpuSampleDecoder:
    """Per-sample function: (data, plan) -> uint8 (cameras, T, H, W, 3), each video converted to
    RGB as ``colors`` says (by default, as its index says)."""

    def __init__(self, color: str = "RGB", colors: VideoColors | None = None):
        self.pixel_format = "rgb24" if color == "RGB" else "bgr24"
        self.colors = colors or VideoColors()
        self.held = Held()    # host memory: the GOPs stream slots keep
        self.kept = KeptGops(self.held, lambda kept: sum(frame.nbytes for frame in kept[1]
                                                         if frame is not None))

    def memory(self) -> dict[str, dict[str, int]]:
        return self.held.report()

    def close(self) -> None:
        self.kept.clear()

    def __call__(self, data: np.ndarray, plan: np.ndarray) -> np.ndarray:
        with annotate("decode (cpu)", color="red"):
            return self._decode_sample(data, plan)

    def _decode_sample(self, data: np.ndarray, plan: np.ndarray) -> np.ndarray:
        plan = Plan.from_array(plan)
        names = segment_names(data, plan.names_offset)
        refuse_decoding_ahead(plan, names, "cpu")

        def decode_segment(i: int):
            s = plan.segments[i]
            color = self.colors.of_segment(names[i])
            try:
                frames = decode_annexb(s.codec, data[s.offset:s.offset + s.size],
                                       s.packet_sizes, pixel_format=self.pixel_format,
                                       color=color)
            except Exception as e:   # FFmpeg's errors say what, not where
                raise DecodeError(f"{names[i]}: cannot decode ({e})") from e
            check_outputs(len(frames), s, names[i])
            return frames

        def decode_send(send):   # a whole GOP a stream slot will pick from: decoded once
            return names[send.segment], list(decode_segment(send.segment))

        def stream_frames(camera: int, request) -> list:
            name, frames = self.kept.step(camera, request.stream, decode_send)
            picked = []
            for _, position in request.picks:
                frame = frames[check_position(position, len(frames), name)]
                if frame is None:
                    raise passed_frame(name, position)
                picked.append(frame)
            self.kept.let_go_below(request.stream, (name, frames),
                                   min(p for _, p in request.picks), _forget_below)
            return picked

        frames_shape(plan.requests, names)
        frames = pick_frames(plan, decode_segment, stream_frames)
        return np.stack([np.stack(camera) for camera in frames])


def _forget_below(kept: tuple[str, list], low: int) -> list:
    """A kept GOP's frames below ``low`` go (host memory: nothing must stay alive)."""
    kept[1][:low] = [None] * low
    return []


M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter
# frames of this size and more (an RGB frame from about 640x546 up) are mapped on their own;
# glibc's starting value, 128 KiB, also maps FFmpeg's planes and cost far more speed
MMAP_THRESHOLD = 1 << 20


@functools.cache
def return_frames_to_the_system() -> bool:
    """Fix glibc's mmap threshold, so that a freed frame's memory leaves the process at once.

    By default glibc raises the threshold to the size of each mapped block freed, up to 32 MiB:
    after the first kept GOP goes, frames come from the heap, whose freed blocks stay resident
    (the process went past its memory budget). Each frame then costs a fresh mapping and its page
    faults: some speed, on a backend whose point is exactness. Smaller frames stay in the heap,
    which reuses them. A process-wide setting, made once and only by the cpu backend; False where
    the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


class CpuBackend(DecodeBackend):
    name = "cpu"
    device = "cpu"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.operators: list[CpuSampleDecoder] = []   # the loader's memory() and close() reach them
        return_frames_to_the_system()

    def decode(self, data, plan):
        from nvidia.dali import fn
        operator = CpuSampleDecoder(self.color, self.colors)
        self.operators.append(operator)
        return fn.python_function(data, plan, function=operator, batch_processing=False)
