"""Stream slots on NVDEC sessions of their own: one session per (stream slot, camera), fed the
slot's GOP a packet at a time, a few frames ahead of the slot's picks.

Decoded whole, a GOP stays with its slot until the slot has picked its last frame, and the slots
of the stream order cross GOP boundaries together: at those batches every slot holds a whole GOP
(96 of them at 16 slots x 6 cameras). A session per slot holds its decoder's surfaces and a ring
of a few frames: the frames its next picks want, decoded :data:`AHEAD_FRAMES` picks ahead so that
a batch finds them ready, and the operator copies them out on its own stream.

Each GOP is decoded as the whole-GOP path decodes it (its bin, flushed at its end), so the frames
are the same. A video that reorders frames (B-frames) displays several at once at times (always
at a flush); a pair whose session displays a frame its ring has no room for grows the ring to
:data:`REORDER_RING_FRAMES`, and a frame displayed where nothing could hold it is decoded again,
from its GOP's keyframe, if a pick wants it: slower, never another frame.

A ring slot is written only after the operator's copy of the frame it last held (the batch that
read it) is done: ``io.wait_read(batch)``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from dali_gop.backends._assemble import DecodeError, check_outputs, check_position
from dali_gop.plan import Segment

#: frames past a pair's latest pick that it decodes while the batch goes on
AHEAD_FRAMES = 2
#: frames a pair's ring holds: the pick and the frames ahead
RING_FRAMES = AHEAD_FRAMES + 1
#: ... and once its video displayed more at once than that (B-frames at a flush)
REORDER_RING_FRAMES = AHEAD_FRAMES + 5
#: decode surfaces beyond the parser's minimum: none, as a pair decodes a frame at a time, and
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


class PairIO(Protocol):
    """What a pair needs of the operator, on the pair's decode thread, serving ``batch``."""

    batch: int

    def new_session(self, codec: str): ...

    def new_ring(self, frames: int, shape: tuple): ...

    def free_ring(self, ring) -> None: ...

    def wait_read(self, batch: int) -> None: ...   # the pair's stream waits for that batch's copies

    def copied(self, batch: int) -> bool: ...      # whether that batch's copies are queued


class StreamPair:
    """One (stream slot, camera): its session, how far it has decoded the GOP it is in, and its
    ring (frame ``position`` in slot ``position % len(ring)``). Used by one decode thread at a time
    (the operator pins a pair to a thread)."""

    def __init__(self, lane: int = 0):
        self.lane = lane         # the decode thread it is pinned to
        self.session = None
        self.codec: str | None = None
        self.gop: SentGop | None = None
        self.fed = 0             # packets of ``gop`` fed
        self.outputs = 0         # its frames displayed so far
        self.flushed = False
        self.ring = None         # (frames, H*3/2, W) uint8 on the device
        self.held: dict[int, int] = {}   # position -> ring slot, decoded and not yet passed
        self.readers: list[int] = []     # per ring slot: the last batch that reads it (-1: none)
        self.low = 0             # the latest pick: frames below it are passed
        self.retired: list = []  # (last batch reading it, ring) replaced while being read
        self.decoded_again = 0   # GOPs decoded again for a frame displayed where none could go

    def pick(self, gop: SentGop, positions: Sequence[int], batch: int, io: PairIO) -> list[int]:
        """Device pointers of frames ``positions`` of ``gop`` (in order) in the ring, each
        decoded first where it is not there; ``batch`` reads them (its copies are waited for
        before their slots are written again)."""
        self._release(io)
        pointers = []
        for position in positions:
            check_position(position, gop.num_outputs, gop.name)
            if gop is not self.gop:
                self._begin(gop, io)
            if len(self.ring) < len(positions) + AHEAD_FRAMES:   # a batch's picks all held
                self._new_ring(len(positions) + AHEAD_FRAMES, gop.frame_shape, io)
            for _ in range(2):       # twice where the ring grew under the decode
                if position in self.held:
                    break
                if position < self.outputs:      # displayed before, held nowhere
                    self.decoded_again += 1
                    self._begin(gop, io)
                self.low = position
                self._decode_through(position, io)
            self.low = position
            self.held = {q: s for q, s in self.held.items() if q >= position}
            slot = self.held[position]
            self.readers[slot] = batch
            pointers.append(self.ring.data_ptr() + slot * self.ring[0].numel())
        return pointers

    def ahead(self, io: PairIO) -> bool:
        """Feed one more packet towards the frames up to :data:`AHEAD_FRAMES` past the latest
        pick, if the ring slots it may fill are free without waiting (their batches' copies
        queued): whether it did."""
        self._release(io)
        if self.gop is None or self.flushed or \
                self.outputs > min(self.low + AHEAD_FRAMES, self.gop.num_outputs - 1):
            return False
        return self._feed(io, wait=False)

    def _begin(self, gop: SentGop, io: PairIO) -> None:
        """Start ``gop`` from its keyframe: a session for its codec, the GOP it was in (if any)
        flushed without copying a frame."""
        if self.session is None or self.codec != gop.codec:
            self.close()
            self.session, self.codec = io.new_session(gop.codec), gop.codec
        elif self.fed and not self.flushed:
            self.session.decode(_FLUSH, (), self.gop.frame_shape, end_of_stream=True)
        if self.ring is None or tuple(self.ring.shape[1:]) != gop.frame_shape:
            self._new_ring(len(self.ring) if self.ring is not None else RING_FRAMES,
                           gop.frame_shape, io)
        self.gop, self.fed, self.outputs, self.flushed, self.held, self.low = \
            gop, 0, 0, False, {}, 0

    def _new_ring(self, frames: int, shape: tuple, io: PairIO) -> None:
        """A ring of ``frames`` frames of ``shape``; the old one lives on until the copies of
        the batches that read it are done."""
        if self.ring is not None:
            self.retired.append((max(self.readers), self.ring))
        self.ring = io.new_ring(frames, shape)
        self.readers = [-1] * frames
        self.held = {}
        self._release(io)

    def _release(self, io: PairIO) -> None:
        """Free the replaced rings whose readers' copies are queued (this stream waits for
        them first: the allocator may hand the memory out on it at once); never waits for the
        copies to be queued (decoding ahead must not wait for a batch its own thread serves)."""
        for entry in [e for e in self.retired if e[0] < 0 or io.copied(e[0])]:
            io.wait_read(entry[0])
            io.free_ring(entry[1])
            self.retired.remove(entry)

    def _decode_through(self, position: int, io: PairIO) -> None:
        """Feed packets until frame ``position`` has been displayed (or the GOP is flushed)."""
        while self.outputs <= position:
            if self.flushed:      # the whole bin is in, and frame ``position`` never came
                raise DecodeError(f"{self.gop.name}: frame {position} never came out of NVDEC "
                                  f"({self.outputs} of {self.gop.num_outputs}): corrupt bin "
                                  "(re-run preprocess)")
            self._feed(io, wait=True)

    def _feed(self, io: PairIO, wait: bool) -> bool:
        """Feed the next packet (and flush after the last), each frame displayed from the latest
        pick on going to its ring slot where the ring has room; a slot the batch being served
        reads is not written. Not ``wait``: nothing is fed (False) where a slot's last reader's
        copies are not queued yet."""
        gop, frames = self.gop, len(self.ring)
        targets = []
        for q in range(max(self.outputs, self.low), self.low + frames):
            slot = q % frames
            reader = self.readers[slot]
            if reader >= io.batch:      # read by the batch being served: not free yet
                continue
            if reader >= 0 and not wait and not io.copied(reader):
                return False
            targets.append((q, slot))
        for _, slot in targets:
            io.wait_read(self.readers[slot])
            self.readers[slot] = -1
        start = gop.packet_ends[self.fed - 1] if self.fed else 0
        last = self.fed + 1 >= len(gop.packet_ends)
        base, nbytes = self.ring.data_ptr(), self.ring[0].numel()
        shown = self.session.decode(gop.data[start:gop.packet_ends[self.fed]],
                                    [(q, base + slot * nbytes) for q, slot in targets],
                                    gop.frame_shape, end_of_stream=last)
        self.fed += 1
        self.flushed = last
        if last:
            check_outputs(shown, gop, gop.name)
        self.held.update((q, slot) for q, slot in targets if q < shown)
        lost = shown > self.low + frames
        self.outputs = shown
        if lost and frames < REORDER_RING_FRAMES:
            self._new_ring(max(REORDER_RING_FRAMES, frames), gop.frame_shape, io)
            # what it held is gone with the old ring: picks below ``outputs`` decode again
        return True

    def close(self) -> None:
        """Free the session (the rings stay: copies may still read them)."""
        if self.session is not None:
            self.session.close()
        self.session, self.codec, self.gop, self.fed, self.flushed = None, None, None, 0, False
        self.held = {}
