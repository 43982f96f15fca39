"""What the backends share: output checks, the GOPs stream slots keep, what they hold, and (cpu)
plan walking."""
from __future__ import annotations

import collections
from typing import Any, Callable, Sequence

from dali_gop.errors import DecodeError
from dali_gop.plan import Plan, Request, Segment, StreamSend, StreamStep


class Held:
    """The bytes of decoded frames a backend holds, by kind ("kept_gops", "decoded_ahead",
    "staging"), now and at their peak: what ``GopLoader.memory()`` reports. Counted where the
    backend allocates and lets go, not asked of an allocator that also serves the model."""

    def __init__(self):
        self.now: collections.Counter = collections.Counter()
        self.peak: collections.Counter = collections.Counter()

    def add(self, kind: str, nbytes: int) -> None:
        self.now[kind] += nbytes
        self.peak[kind] = max(self.peak[kind], self.now[kind])

    def clear(self) -> None:
        self.now.clear()

    def report(self) -> dict[str, dict[str, int]]:
        return {kind: {"now": self.now[kind], "peak": peak} for kind, peak in self.peak.items()}


class KeptGops:
    """The decoded GOPs each (stream slot, camera) keeps, as the steps' flags say (StreamStep).

    A backend calls :meth:`step` for every stream request, in batch order; ``decode`` turns a sent
    GOP into whatever the backend keeps (frames, or a pending decode), of ``size_of(kept)`` bytes,
    counted in ``held``.
    """

    def __init__(self, held: Held | None = None, size_of: Callable[[Any], int] = lambda kept: 0,
                 kind: str = "kept_gops"):
        self._kept: dict[tuple[int, int], dict[tuple[int, int], Any]] = {}
        self._held = held or Held()
        self._size_of = size_of
        self._kind = kind     # what ``held`` counts them as ("kept_gops_host": pinned host memory)

    def step(self, camera: int, step: StreamStep, decode: Callable[[StreamSend], Any]) -> Any:
        """The kept GOP this step picks from (after taking in the step's sends)."""
        kept = self._kept.setdefault((step.slot, camera), {})
        if step.restart:
            self._drop(kept.values())
            kept.clear()
        for send in step.sends:
            made = kept[(send.video_key, send.gop_start)] = decode(send)
            self._held.add(self._kind, self._size_of(made))
        key = (step.video_key, step.gop_start)
        if key not in kept:
            raise DecodeError(f"stream slot {step.slot}, camera {camera}: GOP {step.gop_start} of "
                              "the video the worker names was never sent or already dropped "
                              "(samples reached the decoder out of order)")
        if not step.release:
            return kept[key]
        self._drop([kept[key]])
        return kept.pop(key)

    def let_go_below(self, step: StreamStep, kept: Any, low: int,
                     let_go: Callable[[Any, int], list]) -> list:
        """Let the frames of ``kept`` (the GOP ``step`` picked from) below frame ``low`` go: the
        slot's later picks of it are higher (:class:`StreamStep`). ``let_go(kept, low)`` frees
        them and returns what must stay alive until the batch is done; the bytes are counted.
        Nothing where the step released the whole GOP."""
        if step.release:
            return []
        before = self._size_of(kept)
        freed = let_go(kept, low)
        self._held.add(self._kind, self._size_of(kept) - before)
        return freed

    def _drop(self, gops) -> None:
        for gop in gops:
            self._held.add(self._kind, -self._size_of(gop))

    def clear(self) -> None:
        """Let every kept GOP go (the loader closes)."""
        for kept in self._kept.values():
            self._drop(kept.values())
        self._kept.clear()

    def count(self) -> int:
        return sum(len(k) for k in self._kept.values())


def passed_frame(name: str, position: int) -> DecodeError:
    """A pick of a frame its kept GOP let go (:meth:`KeptGops.let_go_below`): refused, never served
    from another frame."""
    return DecodeError(f"{name}: frame {position} of a kept GOP was let go: a stream slot picked "
                       "backwards in a GOP (a pattern's slots must move forward through their "
                       "clips within an epoch)")


def refuse_decoding_ahead(plan: Plan, names: list[str], backend: str) -> None:
    """A plan made for a backend that keeps frames decoded ahead: decoding its requests here would
    give another sample's frames."""
    if plan.kept_key >= 0 or plan.ahead_key >= 0:
        raise DecodeError(f"the {backend} backend does not decode ahead, but a sample of "
                          f"{names[0]} ... was planned so: build the source with decode_ahead=0")


def check_position(position: int, num_outputs: int, name: str) -> int:
    if not 0 <= position < num_outputs:
        raise DecodeError(f"{name}: no output {position} (the GOP decodes to {num_outputs} frames)")
    return position


def check_outputs(produced: int, segment: Segment, name: str) -> None:
    """A decoder that output fewer frames than the index promises was fed a corrupt bin."""
    if produced < segment.num_outputs:
        raise DecodeError(f"{name}: decoded {produced} frames where its index promises "
                          f"{segment.num_outputs}: corrupt bin (re-run preprocess)")


def frames_shape(requests: Sequence[Request], names: list[str]) -> tuple[int, int, int, int]:
    """(cameras, T, H, W) of a sample's frames (one request per camera): its cameras must share one
    size."""
    sizes = {(r.height, r.width) for r in requests}
    if len(sizes) != 1:
        raise DecodeError(f"cameras of one sample differ in size {sorted(sizes)} ({names[0]} ...): "
                          "a batch tensor needs one size; resize them in preprocessing")
    (height, width), = sizes
    return len(requests), len(requests[0].picks), height, width


def pick_frames(plan: Plan, decode_segment: Callable[[int], Sequence],
                stream_frames: Callable[[int, Request], list]) -> list[list[Any]]:
    """Frames of every request, in order: ``decode_segment(i)`` decodes segment i once (a fresh
    decoder, flushed, its output count checked); ``stream_frames(camera, request)`` serves a
    stream step's frames."""
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
            frames.append(decoded[segment][position])
        out.append(frames)
    return out
