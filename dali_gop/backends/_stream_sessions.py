"""Stream slots on NVDEC sessions of their own: one session per (stream slot, camera), fed the
slot's GOP a packet at a time, a few frames ahead of the slot's picks.

Decoded whole, a GOP stays with its slot until the slot has picked its last frame, and the slots
of the stream order cross GOP boundaries together: at those batches every slot holds a whole GOP
(96 of them at 16 slots x 6 cameras). A session per slot holds its decoder's surfaces and a ring
of a few frames: the frames its next picks want, decoded :data:`AHEAD_FRAMES` picks ahead so that
a batch finds them ready.

Each GOP is decoded as the whole-GOP path decodes it (its bin, flushed at its end), so the frames
are the same. A video that reorders frames (B-frames) displays several at once at times (always
at a flush); a pair whose session displays a frame its ring has no room for grows the ring to
:data:`REORDER_RING_FRAMES`, and a frame displayed where nothing could hold it is decoded again,
from its GOP's keyframe, if a pick wants it: slower, never another frame.

The caller copies a pick's frames out of the ring on the pair's own stream (the session's) before
the pair's next call: every later decode into the ring is queued behind those copies, so a ring
slot is free again as soon as its pick returns, with no wait for the batch that reads it. Were
the copies left to the batch's own stream, a slot would stay taken until that batch is done, and
the pairs would decode no further ahead than the batches in flight.
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
    """What a pair needs of the operator, on the pair's decode thread."""

    def new_session(self, codec: str): ...

    def new_ring(self, frames: int, shape: tuple): ...   # on the pair's stream

    def free_ring(self, ring) -> None: ...


class StreamPair:
    """One (stream slot, camera): its session, the GOPs sent to its slot (:meth:`sent`, in the
    order the slot picks from them), how far the session has decoded the one it is on, and its
    ring. Used by one decode thread at a time (the operator pins a pair to a thread).

    Frames are numbered in sequence across the pair's GOPs: a GOP begun gets the numbers that
    follow the GOP before it, from the frame the slot first picks from it, so that the frames the
    next picks want lie within a ring's length of the latest pick whichever GOP they are in, and
    the pair decodes ahead into the next GOP before the slot reaches it. Frame number ``q`` is in
    ring slot ``q % len(ring)``."""

    def __init__(self, lane: int = 0):
        self.lane = lane         # the decode thread it is pinned to
        self.session = None
        self.codec: str | None = None
        self.queue: list[SentGop] = []   # sent, from the GOP of the latest pick on
        self.firsts: dict[SentGop, int] = {}  # of those: the position of the slot's first pick
        self.bases: dict[SentGop, int] = {}   # of the GOPs begun: the number of their frame 0
        self.gop: SentGop | None = None   # the GOP the session is on
        self.fed = 0             # packets of ``gop`` fed
        self.outputs = 0         # its frames displayed so far
        self.flushed = False
        self.base = 0            # the number of ``gop``'s frame 0
        self.floor = 0           # its frames numbered below this go nowhere (before the first pick)
        self.ring = None         # (frames, H*3/2, W) uint8 on the device
        self.slots = self.address = self.slot_bytes = 0    # of ``ring``, as plain ints
        self.held: dict[int, int] = {}   # frame number -> ring slot, decoded and not yet passed
        self.low = 0             # the latest pick's number: frames below it are passed
        self.first = None        # the first pick of this call's: slots from it on are being read
        self.retired: list = []  # rings replaced during a call (its picks may point into them)
        self.decoded_again = 0   # GOPs decoded again for a frame displayed where none could go
        self._targets: list = []  # of the packet being fed: (number, ring slot)
        self._end = 0             # ... and the number from which its frames have no slot

    def restart(self) -> None:
        """The slot begins again (its first step of an epoch's run): what was sent is dropped
        (its bytes too: nothing keeps them)."""
        self.queue, self.firsts, self.bases = [], {}, {}

    @property
    def next_base(self) -> int:
        """The number after the last frame of the GOP the session is on."""
        return 0 if self.gop is None else self.base + self.gop.num_outputs

    def sent(self, gop: SentGop, first: int = 0) -> None:
        """``gop`` is sent to the slot, to be picked after those sent before, from position
        ``first`` on."""
        self.queue.append(gop)
        self.firsts[gop] = first

    def pick(self, gop: SentGop, positions: Sequence[int], io: PairIO) -> list[int]:
        """Device pointers of frames ``positions`` of ``gop`` (in order) in the ring, each
        decoded first where it is not there. They hold those frames until the pair's next call:
        the caller queues its copies of them on the pair's stream before then."""
        self._next_call(io)
        self._reach(gop)
        pointers = []
        for position in positions:
            check_position(position, gop.num_outputs, gop.name)
            if self.slots < len(positions) + AHEAD_FRAMES:   # a call's picks all held
                self._new_ring(len(positions) + AHEAD_FRAMES, gop.frame_shape, io)
            number = self._number(gop, position)
            for _ in range(2):       # twice where the ring grew under the decode
                if number in self.held:
                    break
                if gop is not self.gop or position < self.outputs:
                    if gop in self.bases:        # begun before, displayed, held nowhere
                        self.decoded_again += 1
                    self._begin(gop, position, io)
                    number = self.base + position
                self.low = number
                self._decode_through(position, io)
            self.low = number
            self.first = number if self.first is None else self.first
            self.held = {q: s for q, s in self.held.items() if q >= number}
            pointers.append(self.address + self.held[number] * self.slot_bytes)
        return pointers

    def ahead(self, io: PairIO) -> bool:
        """Feed one more packet towards the frames up to :data:`AHEAD_FRAMES` past the latest
        pick (into the next GOP sent, once this one is all displayed): whether it did."""
        call = self.ahead_packet(io)
        if call is not None:
            self.packet_done(call[0].decode(*call[1:]), io)
        return call is not None

    def ahead_packet(self, io: PairIO):
        """:meth:`ahead` in two steps, so that a thread can feed its pairs' packets in one call
        (``_nvdec_session.decode_many``): the call to make, (session, data, targets, frame
        shape, end of stream), or None; then :meth:`packet_done` with its result."""
        self._next_call(io)
        gop, limit = self.gop, self.low + AHEAD_FRAMES
        if gop is None:
            return None
        if not self.flushed and self.outputs < gop.num_outputs:
            return self._packet() if max(self.base + self.outputs, self.floor) <= limit else None
        later = self._after(gop)
        # (another codec would close the session, and the frames it holds with it)
        if later is None or self.next_base > limit or later.codec != self.codec:
            return None
        self._begin(later, self.firsts.get(later, 0), io)
        return self._packet()

    def pick_packet(self, gop: SentGop, position: int, io: PairIO):
        """The next packet towards a pick of frame ``position`` of ``gop``, as
        :meth:`ahead_packet` gives it (so that a thread decodes its pairs' picks at once), or
        None where the frame is there or the pick itself must see to it."""
        self._next_call(io)
        if not 0 <= position < gop.num_outputs:
            return None
        self._reach(gop)
        if gop is not self.gop:
            if gop in self.bases:     # begun before: held, or the pick decodes it again
                return None
            self._begin(gop, position, io)
        if self.base + position in self.held or position < self.outputs or self.flushed:
            return None
        self.low = self.base + position
        return self._packet()

    def _next_call(self, io: PairIO) -> None:
        """The last call's picks are copied out (queued on this stream): their slots and the
        rings replaced under them are free."""
        self.first = None
        for ring in self.retired:
            io.free_ring(ring)
        self.retired = []

    def _reach(self, gop: SentGop) -> None:
        """The slot picks from ``gop``: the GOPs sent before it are passed. A GOP never sent
        (the caller did not say) stands alone."""
        if gop in self.queue:
            passed = self.queue[:self.queue.index(gop)]
            del self.queue[:len(passed)]
        else:
            passed, self.queue = self.queue, [gop]
        for old in passed:
            self.firsts.pop(old, None)
            self.bases.pop(old, None)

    def _after(self, gop: SentGop) -> SentGop | None:
        """The GOP sent after ``gop``, if the slot has one."""
        if gop not in self.queue:
            return None
        k = self.queue.index(gop) + 1
        return self.queue[k] if k < len(self.queue) else None

    def _number(self, gop: SentGop, position: int) -> int | None:
        base = self.base if gop is self.gop else self.bases.get(gop)
        return None if base is None else base + position

    def _begin(self, gop: SentGop, first: int, io: PairIO) -> None:
        """Start ``gop`` from its keyframe, its frame ``first`` numbered next: a session for its
        codec, the GOP it was on (if any) flushed without copying a frame. Frames of the GOP
        before stay held."""
        if self.session is None or self.codec != gop.codec:
            self.close()
            self.session, self.codec = io.new_session(gop.codec), gop.codec
        elif self.fed and not self.flushed:
            self.session.decode(_FLUSH, (), self.gop.frame_shape, end_of_stream=True)
        if self.ring is None or tuple(self.ring.shape[1:]) != gop.frame_shape:
            self._new_ring(self.slots or RING_FRAMES, gop.frame_shape, io)
        self.floor = max(self.next_base, self.low + 1)
        self.base = self.floor - first
        self.bases[gop] = self.base
        self.gop, self.fed, self.outputs, self.flushed = gop, 0, 0, False

    def _new_ring(self, frames: int, shape: tuple, io: PairIO) -> None:
        """A ring of ``frames`` frames of ``shape``; the old one lives on until the next call
        (this call's picks may point into it)."""
        if self.ring is not None:
            self.retired.append(self.ring)
        self.ring = io.new_ring(frames, shape)
        self.slots, self.address, self.slot_bytes = (frames, self.ring.data_ptr(),
                                                     self.ring[0].numel())
        self.held = {}

    def _decode_through(self, position: int, io: PairIO) -> None:
        """Feed packets until frame ``position`` has been displayed (or the GOP is flushed)."""
        while self.outputs <= position:
            if self.flushed:      # the whole bin is in, and frame ``position`` never came
                raise DecodeError(f"{self.gop.name}: frame {position} never came out of NVDEC "
                                  f"({self.outputs} of {self.gop.num_outputs}): corrupt bin "
                                  "(re-run preprocess)")
            self._feed(io)

    def _feed(self, io: PairIO) -> None:
        call = self._packet()
        self.packet_done(call[0].decode(*call[1:]), io)

    def _packet(self) -> tuple:
        """The call that feeds the next packet (and flushes after the last), each frame
        displayed from the latest pick on going to its ring slot, short of the slots this
        call's picks point to."""
        gop, frames, base = self.gop, self.slots, self.base
        self._end = (self.low if self.first is None else self.first) + frames
        self._targets = [(q, q % frames) for q in
                         range(max(base + self.outputs, self.low, self.floor), self._end)]
        start = gop.packet_ends[self.fed - 1] if self.fed else 0
        return (self.session, gop.data[start:gop.packet_ends[self.fed]],
                [(q - base, self.address + slot * self.slot_bytes) for q, slot in self._targets],
                gop.frame_shape, self.fed + 1 >= len(gop.packet_ends))

    def packet_done(self, shown, io: PairIO) -> None:
        """The packet of :meth:`_packet` is decoded: ``shown`` frames of the GOP displayed so
        far (or the error it failed with, raised)."""
        if isinstance(shown, Exception):
            raise shown
        gop, frames = self.gop, self.slots
        last = self.fed + 1 >= len(gop.packet_ends)
        self.fed += 1
        self.flushed = last
        if last:
            check_outputs(shown, gop, gop.name)
        self.held.update((q, slot) for q, slot in self._targets if q - self.base < shown)
        self.outputs = shown
        # (a bin's flush may display a frame of the next GOP too: not one of its own)
        if self.base + min(shown, gop.num_outputs) > self._end and frames < REORDER_RING_FRAMES:
            self._new_ring(max(REORDER_RING_FRAMES, frames), gop.frame_shape, io)
            # what it held is gone with the old ring: picks of it decode again

    def close(self) -> None:
        """Free the session (the ring stays: copies may still read it)."""
        if self.session is not None:
            self.session.close()
        self.session, self.codec, self.gop, self.fed, self.flushed = None, None, None, 0, False
        self.held, self.bases = {}, {}
