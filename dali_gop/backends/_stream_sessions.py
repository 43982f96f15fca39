"""Stream slots on NVDEC sessions of their own: one session per (stream slot, camera), fed the
slot's GOP a packet at a time as its picks need frames.

Decoded whole, a GOP stays with its slot until the slot has picked its last frame, and the slots
of the stream order cross GOP boundaries together: at those batches every slot holds a whole GOP
(96 of them at 16 slots x 6 cameras). A session per slot decodes each frame when a batch picks
it, into the batch's staging, and holds nothing between batches but its decoder's surfaces.

Each GOP is decoded as the whole-GOP path decodes it (its bin, flushed at its end), so the frames
are the same. A video that reorders frames (B-frames) displays several at once at times, always
at a flush: those past the pick go to the pair's ring of :data:`RING_FRAMES` frames, allocated
the first time the pair needs one. A frame displayed where nothing could hold it is decoded again
from its GOP's keyframe if a pick needs it: slower, never another frame.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from dali_gop.backends._assemble import DecodeError, check_outputs, check_position
from dali_gop.plan import Segment

#: frames a pair keeps that a session displayed past the pick (B-frames: a flush displays the
#: frames still waiting for display order at once)
RING_FRAMES = 4
#: decode surfaces beyond the parser's minimum: none, as a pair decodes one frame per pick, and
#: each surface costs every one of the (slots x cameras) sessions
EXTRA_SURFACES = 0
_FLUSH = np.empty(0, dtype=np.uint8)


@dataclass(eq=False)
class SentGop:
    """A GOP sent to a stream slot, kept as its bin's host bytes until the slot has picked from it:
    ``packet_ends[i]`` is where packet i ends."""
    name: str
    data: np.ndarray
    packet_ends: tuple[int, ...]
    num_outputs: int
    codec: str
    frame_shape: tuple[int, int]

    @classmethod
    def of(cls, name: str, data: np.ndarray, segment: Segment,
           frame_shape: Sequence[int]) -> "SentGop":
        return cls(name, data[segment.offset:segment.offset + segment.size],
                   tuple(itertools.accumulate(segment.packet_sizes)), segment.num_outputs,
                   segment.codec, tuple(frame_shape))

    def kept_bytes(self) -> int:
        return 0      # nothing on the device

    def check_shape(self, frame_shape: Sequence[int]) -> None:
        if tuple(frame_shape) != self.frame_shape:
            raise DecodeError(f"{self.name}: frames of {self.frame_shape} do not fit the "
                              f"sample's {tuple(frame_shape)} (clips of different sizes?)")


class StreamPair:
    """One (stream slot, camera): its session, how far it has decoded the GOP it is in, and its
    ring. Used by one decode thread at a time (the operator pins a pair to a thread)."""

    def __init__(self, lane: int = 0):
        self.lane = lane         # the decode thread it is pinned to
        self.session = None
        self.codec: str | None = None
        self.gop: SentGop | None = None
        self.fed = 0             # packets of ``gop`` fed
        self.outputs = 0         # its frames displayed so far
        self.flushed = False
        self.ring = None         # (RING_FRAMES, H*3/2, W) uint8 on the device
        self.in_ring: dict[int, int] = {}   # position -> device pointer of the frame held
        self.decoded_again = 0   # GOPs decoded again for a frame displayed where none could go

    def serve(self, gop: SentGop, picks: Sequence[tuple[int, int]],
              new_session: Callable[[str], object], new_ring: Callable[[tuple, object], object],
              copy: Callable[[int, int, int], None]) -> None:
        """Frame ``position`` of ``gop`` to ``pointer`` (dense NV12) for each of ``picks``, in
        order: from the ring (``copy(destination, source, nbytes)`` on the pair's stream) or
        from the session. ``new_session(codec)`` makes a session, ``new_ring(shape, old)`` a ring
        in place of ``old`` (None, or one of frames of another shape)."""
        nbytes = math.prod(gop.frame_shape)
        for position, pointer in picks:
            check_position(position, gop.num_outputs, gop.name)
            if gop is not self.gop:
                self._begin(gop, new_session)
                if self.ring is not None and tuple(self.ring.shape[1:]) != gop.frame_shape:
                    self.ring = new_ring(gop.frame_shape, self.ring)
            held = self.in_ring.get(position)
            if held is not None:
                copy(pointer, held, nbytes)
            else:
                if position < self.outputs:      # displayed before, held nowhere
                    self.decoded_again += 1
                    self._begin(gop, new_session)
                self._decode_through(position, pointer, new_ring)
            self.in_ring = {q: p for q, p in self.in_ring.items() if q > position}

    def _begin(self, gop: SentGop, new_session: Callable[[str], object]) -> None:
        """Start ``gop`` from its keyframe: a session for its codec, the GOP it was in (if any)
        flushed without copying a frame."""
        if self.session is None or self.codec != gop.codec:
            self.close()
            self.session, self.codec = new_session(gop.codec), gop.codec
        elif self.fed and not self.flushed:
            self.session.decode(_FLUSH, (), self.gop.frame_shape, end_of_stream=True)
        self.gop, self.fed, self.outputs, self.flushed, self.in_ring = gop, 0, 0, False, {}

    def _decode_through(self, position: int, pointer: int,
                        new_ring: Callable[[tuple, object], object]) -> None:
        gop = self.gop
        while self.outputs <= position:
            if self.flushed:      # the whole bin is in, and frame ``position`` never came
                check_outputs(self.outputs, gop, gop.name)
                raise DecodeError(f"{gop.name}: frame {position} never came out of NVDEC")
            targets = [(position, pointer)]
            ringed = []
            if self.ring is not None:
                ringed = [(q, self._ring_pointer(q)) for q in range(max(position + 1, self.outputs),
                                                                    position + RING_FRAMES + 1)]
            start = gop.packet_ends[self.fed - 1] if self.fed else 0
            last = self.fed + 1 >= len(gop.packet_ends)
            shown = self.session.decode(gop.data[start:gop.packet_ends[self.fed]],
                                        targets + ringed, gop.frame_shape, end_of_stream=last)
            self.fed += 1
            self.flushed = last
            if last:
                check_outputs(shown, gop, gop.name)
            self.in_ring.update((q, p) for q, p in ringed if q < shown)
            if self.ring is None and shown > position + 1:   # displayed past the pick: lost
                self.ring = new_ring(gop.frame_shape, None)
            self.outputs = shown

    def _ring_pointer(self, position: int) -> int:
        frame = self.ring[0].numel()
        return self.ring.data_ptr() + (position % RING_FRAMES) * frame

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session, self.codec, self.gop, self.fed, self.flushed = None, None, None, 0, False
        self.in_ring = {}
