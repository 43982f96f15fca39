"""A stream slot's camera on a session of its own (dali_gop.backends._stream_sessions), on a CPU:
a stand-in session that holds frames back for display order and puts them out in a burst at a
flush, as NVDEC's parser does with B-frames, over host memory. Every pick gets its own frame,
whatever the session displays when; nothing is ever served from another frame."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from dali_gop.backends._assemble import DecodeError
from dali_gop.backends._stream_sessions import (AHEAD_FRAMES, REORDER_RING_FRAMES, RING_FRAMES,
                                                SentGop, StreamPair)
from dali_gop.plan import Segment

torch = pytest.importorskip("torch")
SHAPE = (6, 4)      # NV12 of a 4x4 frame
NBYTES = 24


class ReorderingSession:
    """Each packet is one byte: 16 x its GOP's tag + the display index of its frame. A decoded
    frame is displayed once every earlier one has been and more than ``delay`` frames wait; a
    flush displays the rest. A frame displayed is that byte + 1 throughout, so that a frame of
    another GOP is told apart. ``lose`` frames are never displayed (a corrupt bin)."""

    def __init__(self, codec, delay, lose=()):
        self.delay, self.lose = delay, set(lose)
        self.decoded, self.shown, self.calls, self.tag = set(), 0, [], 0

    def decode(self, data, targets, frame_shape, end_of_stream=True):
        self.calls.append((bytes(data), [p for p, _ in targets], end_of_stream))
        self.decoded |= {b % 16 for b in bytes(data) if b % 16 not in self.lose}
        self.tag = bytes(data)[0] // 16 if len(data) else self.tag
        wanted = dict(targets)
        while self.shown in self.decoded and (end_of_stream or len(self.decoded) - self.shown > self.delay):
            if self.shown in wanted:
                ctypes.memset(wanted[self.shown], 16 * self.tag + self.shown + 1, NBYTES)
            self.shown += 1
        produced = self.shown
        if end_of_stream:
            self.decoded, self.shown = set(), 0
        return produced

    def close(self):
        pass


def gop(order, name="clip/cam.mp4/gop.0.8.bin", tag=0):
    data = np.frombuffer(bytes(16 * tag + i for i in order), dtype=np.uint8)
    segment = Segment(0, len(order), (1,) * len(order), 0, len(order), "hevc")
    return SentGop.of(name, data, segment, SHAPE)


class Harness:
    """The operator's side: sessions, rings on the host, and picks whose frames are copied out
    (read here) as soon as they are picked; then the pair decodes ahead, as its thread does."""

    def __init__(self, delay=2, lose=()):
        self.pair = StreamPair()
        self.sessions, self.rings, self.freed = [], [], []
        self.delay, self.lose = delay, lose
        self.in_pick = []      # of each pick: the session calls it made itself

    def new_session(self, codec):
        self.sessions.append(ReorderingSession(codec, self.delay, self.lose))
        return self.sessions[-1]

    def new_ring(self, frames, shape):
        self.rings.append(torch.zeros((frames, *shape), dtype=torch.uint8))
        return self.rings[-1]

    def free_ring(self, ring):
        self.freed.append(ring)

    def calls(self):
        return sum(len(session.calls) for session in self.sessions)

    def pick(self, sent, positions):
        before = self.calls()
        pointers = self.pair.pick(sent, positions, self)
        self.in_pick.append(self.calls() - before)
        got = [ctypes.c_uint8.from_address(p).value - 1 for p in pointers]
        while self.pair.ahead(self):
            pass
        return got


ORDER = [0, 3, 1, 2, 6, 4, 5, 7]     # decode order of 8 frames with B-frames


def test_every_pick_gets_its_frame_one_pick_per_batch():
    h = Harness()
    first, second = gop(ORDER), gop(ORDER, "clip/cam.mp4/gop.8.8.bin")
    assert [h.pick(first, [p])[0] for p in range(8)] == list(range(8))
    assert [h.pick(second, [p])[0] for p in range(8)] == list(range(8))
    assert h.pair.decoded_again <= 1          # a flush's burst past the ring, once
    in_order = Harness(delay=0)               # no B-frames: one frame a packet, none lost
    for name in ("a/c.mp4/gop.0.8.bin", "a/c.mp4/gop.8.8.bin"):
        sent = gop(list(range(8)), name)
        assert [in_order.pick(sent, [p])[0] for p in range(8)] == list(range(8))
    assert len(in_order.pair.ring) == RING_FRAMES and in_order.pair.decoded_again == 0
    calls = len(h.sessions[0].calls)
    third = gop(ORDER, "clip/cam.mp4/gop.16.8.bin")
    assert [h.pick(third, [p])[0] for p in range(8)] == list(range(8))
    assert len(h.sessions[0].calls) - calls == len(ORDER)  # one packet per call, nothing again
    assert len(h.sessions) == 1


def test_frames_ahead_are_decoded_after_the_pick_not_before_it():
    h = Harness(delay=0)
    sent = gop(list(range(8)))
    h.pair.pick(sent, [0], h)
    assert h.pair.outputs == 1                 # the pick waits for its own frame only
    while h.pair.ahead(h):
        pass
    assert h.pair.outputs == 1 + AHEAD_FRAMES   # then the frames the next picks want


def test_a_burst_past_the_ring_grows_it_and_decodes_again_once():
    h = Harness(delay=4)      # a flush puts out five frames at once
    sent, later = gop(ORDER), gop(ORDER, "clip/cam.mp4/gop.8.8.bin")
    assert [h.pick(sent, [p])[0] for p in range(8)] == list(range(8))
    assert len(h.pair.ring) == REORDER_RING_FRAMES and h.pair.decoded_again == 1
    assert h.freed == h.rings[:1]            # the first ring, at the call after it was replaced
    assert [h.pick(later, [p])[0] for p in range(8)] == list(range(8))
    assert h.pair.decoded_again == 1


def test_a_window_of_picks_and_a_start_mid_gop():
    h = Harness(delay=3)
    sent = gop(ORDER)
    assert h.pick(sent, [2, 3, 4]) == [2, 3, 4]
    assert h.pick(sent, [5, 6, 7]) == [5, 6, 7]
    assert len(h.pair.ring) >= 3 + AHEAD_FRAMES      # a batch's picks are all held at once
    long = Harness(delay=3)
    assert long.pick(gop(ORDER), [0, 1, 2, 3, 4, 5, 6, 7]) == list(range(8))


def test_a_new_gop_mid_way_flushes_the_old_one_without_copying():
    h = Harness()
    h.pick(gop(ORDER), [1])
    assert h.pick(gop(ORDER, "other/cam.mp4/gop.0.8.bin"), [0]) == [0]
    flushes = [c for c in h.sessions[0].calls if c[0] == b""]
    assert flushes == [(b"", [], True)]


def test_a_frame_picked_again_is_decoded_again():
    h = Harness()
    sent = gop(ORDER)
    assert h.pick(sent, [6]) == [6]
    assert h.pick(sent, [1]) == [1]          # behind the session: from the keyframe again
    assert h.pair.decoded_again == 1


def test_a_bin_that_decodes_short_is_refused():
    h = Harness(lose={7})
    sent = gop(ORDER)
    with pytest.raises(DecodeError, match=r"gop\.0\.8\.bin: decoded 7 frames where its index "
                                          r"promises 8: corrupt bin"):
        for p in range(8):
            h.pick(sent, [p])


def test_a_position_outside_the_gop_is_refused():
    with pytest.raises(DecodeError, match="no output 8"):
        Harness().pick(gop(ORDER), [8])


def test_frames_of_another_shape_are_refused():
    with pytest.raises(DecodeError, match="do not fit"):
        gop(ORDER).check_shape((12, 8))


@pytest.mark.parametrize("delay, order", [(0, list(range(8))), (2, ORDER)])
def test_the_next_gop_sent_is_decoded_ahead_before_the_slot_reaches_it(delay, order):
    """Once a GOP is all displayed, the pair goes on into the GOP sent after it, from the
    frame the slot will first pick there (mid-GOP: an epoch's first pick of a slot)."""
    h = Harness(delay=delay)
    gops = [gop(order, f"clip/cam.mp4/gop.{8 * k}.8.bin", tag=k + 1) for k in range(3)]
    h.pair.sent(gops[0])
    h.pair.sent(gops[1])
    h.pair.sent(gops[2], first=5)
    assert [h.pick(gops[0], [p])[0] for p in range(8)] == [16 + p for p in range(8)]
    assert [h.pick(gops[1], [p])[0] for p in range(8)] == [32 + p for p in range(8)]
    assert [h.pick(gops[2], [p])[0] for p in range(5, 8)] == [48 + p for p in range(5, 8)]
    # every frame of the GOPs after the first there before its pick (in the first, the flush's
    # burst with B-frames grows the ring, and the frames it had no room for decode again, once)
    assert h.in_pick[8:] == [0] * 11
    assert len(h.sessions) == 1 and h.pair.decoded_again == (delay > 0)


def test_a_pick_behind_the_session_or_before_the_first_said_gets_its_frame():
    """Where the slot does not pick as sent (a GOP picked again after the pair went on, or from
    before the frame it was sent for), the frame is decoded again: never another GOP's."""
    h = Harness(delay=2)
    first, second = gop(ORDER, tag=1), gop(ORDER, "clip/cam.mp4/gop.8.8.bin", tag=2)
    h.pair.sent(first)
    h.pair.sent(second, first=4)
    assert [h.pick(first, [p])[0] for p in range(8)] == [16 + p for p in range(8)]
    assert h.pick(second, [2]) == [34]        # before the first pick it was sent for
    assert h.pick(second, [3, 4]) == [35, 36]
    assert h.pick(first, [7]) == [23]         # a GOP passed, unsent now: decoded on its own
    assert h.pick(second, [5]) == [37]


def test_a_restart_drops_what_was_sent():
    h = Harness(delay=0)
    first, second = gop(range(8), tag=1), gop(range(8), "clip/cam.mp4/gop.8.8.bin", tag=2)
    h.pair.sent(first)
    h.pair.sent(second)
    h.pair.restart()
    assert [h.pick(first, [p])[0] for p in range(8)] == [16 + p for p in range(8)]
    assert h.pair.gop is first            # nothing sent after it: the pair waits at its end
    h.pair.restart()                      # a GOP begun and dropped is not kept (nor its bytes)
    third = gop(range(8), "clip/cam.mp4/gop.16.8.bin", tag=3)
    h.pair.sent(third)
    assert h.pick(third, [0]) == [48]
    assert list(h.pair.bases) == [third]
