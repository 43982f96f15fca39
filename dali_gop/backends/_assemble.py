"""What the backends share: the output-count check, the stream-step check, and (cpu) plan walking."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from dali_gop.store import DecodePlan, Request, Segment


class DecodeError(RuntimeError):
    """A bin decoded to fewer frames than its index promises, or a stream slot lost its place."""


@dataclass
class StreamSlotState:
    """A decoder that stays at its place in one GOP of one video across iterations."""
    video_key: int
    gop_start: int
    name: str
    frames: dict[int, Any] = field(default_factory=dict)   # decoded, not yet picked


def check_outputs(produced: int, segment: Segment, name: str) -> None:
    """A decoder that output fewer frames than the index promises was fed a corrupt bin."""
    if produced < segment.num_outputs:
        raise DecodeError(f"{name}: decoded {produced} frames where its index promises "
                          f"{segment.num_outputs}: corrupt bin (re-run preprocess)")


def frames_shape(plan: DecodePlan, names: list[str]) -> tuple[int, int, int, int]:
    """(cameras, T, H, W) of a sample's frames: its cameras must share one size."""
    sizes = {(r.height, r.width) for r in plan.requests}
    if len(sizes) != 1:
        raise DecodeError(f"cameras of one sample differ in size {sorted(sizes)} ({names[0]} ...): "
                          "a batch tensor needs one size; resize them in preprocessing")
    (height, width), = sizes
    return len(plan.requests), len(plan.requests[0].picks), height, width


def check_stream_step(state, request: Request, position: int):
    """``state`` (anything with ``video_key`` and ``gop_start``) is where the worker assumes."""
    step = request.stream
    if state is None or state.video_key != step.video_key or state.gop_start != step.gop_start:
        raise DecodeError(f"stream slot {step.slot}: decoder is not at GOP {step.gop_start} of the "
                          "video the worker assumes (samples reached the decoder out of order)")
    return state


def pick_frames(plan: DecodePlan, names: list[str], decode_segment: Callable[[int], Sequence],
                stream_frames: Callable[[int, Request], list]) -> list[list[Any]]:
    """Frames of every request, in order: ``decode_segment(i)`` decodes segment i once (a fresh
    decoder, flushed); ``stream_frames(camera, request)`` serves a stream step's frames."""
    decoded: dict[int, Sequence] = {}
    out = []
    for camera, request in enumerate(plan.requests):
        if request.stream is not None:
            out.append(stream_frames(camera, request))
            continue
        frames = []
        for segment, position in request.picks:
            if segment not in decoded:
                decoded[segment] = decode_segment(segment)
                check_outputs(len(decoded[segment]), plan.segments[segment], names[segment])
            frames.append(decoded[segment][position])
        out.append(frames)
    return out
