"""What follows from the epochs' sample lists alone: which GOPs a stream slot sends, keeps and
releases at each step (:class:`StreamWindows`), and which later sample's frames a plain sample
brings along to be decoded ahead (:class:`DecodeAhead`).

Every DALI worker process works these out on its own, for whichever samples DALI hands it, and
all agree because they see the same sample lists and GOP indexes: no I/O here, no DALI, no talk
between workers. Positions run on across epochs: DALI hands the next epoch's samples to the same
decoders, and every epoch is whole batches, so batch position j is one decoder lane throughout.

stdlib only (and the patterns' SampleSpec, the errors): it runs in DALI's worker processes.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

from dali_gop.errors import ConfigError
from dali_gop.patterns import SampleSpec

#: epoch -> this shard's samples of it, padded to whole batches
Samples = Callable[[int], Sequence[SampleSpec]]
#: (video, display frame) -> the start of the GOP holding it
GopLookup = Callable[[str, int], int]
#: (video, GOP start, generation): the generation is the epoch of the pick. A slot keeps a GOP for
#: the picks of one epoch only: its next epoch may pick the same GOP again from an earlier frame,
#: and a kept GOP lets go of the frames its slot has passed (the picks within an epoch move
#: forward), so that one is sent again, under its own generation.
Gop = tuple[str, int, int]
#: (epoch, position) of a sample
Where = tuple[int, int]


def locate(samples: Samples, epoch: int, position: int) -> Optional[Where]:
    """(epoch, position) of ``position`` counted on from ``epoch``'s start across epoch
    boundaries (negative: back into earlier epochs); None before epoch 0."""
    while position < 0:
        epoch -= 1
        if epoch < 0:
            return None
        position += len(samples(epoch))
    while position >= len(samples(epoch)):
        position -= len(samples(epoch))
        epoch += 1
    return epoch, position


def sample_key(epoch: int, position: int) -> int:
    """The key a sample decoded ahead is kept under (:class:`dali_gop.plan.Plan`)."""
    return epoch << 32 | position


@dataclass(frozen=True)
class SlotStep:
    """One camera's stream step: take in the ``sends`` (whole GOPs), drop what was kept before if
    ``restart``, pick from the GOP starting at ``gop`` of ``generation``, then let it go if
    ``release``. ``firsts``: of each GOP sent, the first frame the slot picks from it (a decoder
    that starts a GOP before its pick can decode up to that frame ahead)."""
    gop: int
    sends: tuple[Gop, ...]
    restart: bool
    release: bool
    generation: int = 0
    firsts: tuple[int, ...] = ()


class StreamWindows:
    """Which GOPs each (stream slot, camera) sends, keeps and releases.

    A slot's steps are the samples ``batch_size`` positions apart that carry its slot number. A
    step whose frames all lie in one GOP is a *stream step*: it picks from a GOP the slot keeps
    decoded. Any other step (frames spanning GOPs, a filler) is decoded plainly and leaves the
    slot's GOPs alone.

    With lead the slot's :meth:`slot_lead` and W(s) the GOPs of the slot's stream steps from s to
    lead steps on, stream step s sends W(s) - W(s'), where s' is the slot's stream step before
    it, and releases its GOP if that is not in W(s''), s'' the stream step after it. By induction
    the slot holds exactly W(s) when s picks (W(s') holds nothing outside W(s) but the GOP of s',
    released there unless W(s) has it): every pick finds its GOP, no GOP is sent while kept, and
    a slot keeps at most lead + 1 GOPs. s' and s'' are sought within ``max(lead, 1)`` steps, the
    same reach both ways, so a step and its neighbour agree on what passes between them; where
    none is found W(s') is empty and s restarts the slot (nothing it kept can be wanted then).
    Counting only stream steps is what lets a slot pass steps that span GOPs: their GOPs are
    sent by the next stream step that needs them, never assumed sent by a step that sent nothing.
    """

    def __init__(self, samples: Samples, gop_start: GopLookup, *, batch_size: int, lead: int):
        if lead < 0:
            raise ConfigError(f"stream_lead must be >= 0, not {lead}")
        self.samples = samples
        self.gop_start = gop_start
        self.batch_size = batch_size
        self.lead = lead
        # memos, keyed by (epoch, position, camera) of a step: finding a GOP costs a bisection per
        # frame, and a step's window is its neighbours' but for a step or two at either end
        self._gops: dict[tuple[int, int, str], Optional[Gop]] = {}
        self._windows: dict[tuple[int, int, str], _Window] = {}

    def slot_lead(self, slot: int) -> int:
        """How many steps ahead slot ``slot`` sends its GOPs: ``lead`` for slot 0, down to about
        half of it for the last slot. Slots whose GOP boundaries fall on the same steps (clips of
        equal length, fixed GOPs: the usual case) would otherwise all send in one batch, and the
        decoder would get its work in bursts of batch size x cameras GOPs, idle between them."""
        return self.lead - slot * self.lead // (2 * self.batch_size)

    def step(self, epoch: int, position: int, camera: str) -> Optional[SlotStep]:
        """What the sample at ``position`` of ``epoch`` does for ``camera``; None: decode it
        plainly (it is no stream step)."""
        gop = self._gop(epoch, position, camera)
        if gop is None:
            return None
        here = (epoch, position)
        slot = self.samples(epoch)[position].slot
        window = self._window(here, slot, camera)
        before = self._neighbour(here, slot, camera, -1)
        after = self._neighbour(here, slot, camera, 1)
        held = () if before is None else \
            self._window(before[0], slot, camera, (window, before[1])).distinct
        release = after is None or \
            gop not in self._window(after[0], slot, camera, (window, -after[1])).distinct
        sends = tuple(g for g in window.distinct if g not in held)
        return SlotStep(gop[1], sends, before is None, release, gop[2],
                        tuple(window.firsts[window.gops.index(g)] for g in sends))

    def streams(self, epoch: int, position: int, cameras: Sequence[str]) -> bool:
        """Whether the sample is a stream step for some camera."""
        return any(self._gop(epoch, position, camera) is not None for camera in cameras)

    def trim(self, epoch: int) -> None:
        """Forget the steps before ``epoch - 1``: steps of ``epoch`` look back at most the lead,
        which reaches no further unless epochs are shorter than it (then it is worked out again)."""
        self._gops = {k: v for k, v in self._gops.items() if k[0] >= epoch - 1}
        self._windows = {k: v for k, v in self._windows.items() if k[0] >= epoch - 1}

    def _gop(self, epoch: int, position: int, camera: str) -> Optional[Gop]:
        """The GOP a stream step at ``position`` of ``epoch`` picks from; None where the sample is
        no stream step."""
        key = (epoch, position, camera)
        if key in self._gops:
            return self._gops[key]
        spec = self.samples(epoch)[position]
        gop = None
        if spec.slot >= 0 and not spec.pad:
            video = f"{spec.clip}/{camera}"
            starts = {self.gop_start(video, f) for f in spec.frames}
            if len(starts) == 1:
                gop = (video, starts.pop(), epoch)
        self._gops[key] = gop
        return gop

    def _pick(self, at: Where, steps: int, slot: int, camera: str) -> Optional[tuple[Where, Gop]]:
        """(where, GOP) of the slot's stream step ``steps`` steps from ``at``; None where that
        position is none (another slot's, a filler, frames spanning GOPs, before epoch 0)."""
        epoch, position = at[0], at[1] + steps * self.batch_size
        samples = self.samples(epoch)
        if not 0 <= position < len(samples):
            there = locate(self.samples, epoch, position)
            if there is None:
                return None
            epoch, position = there
            samples = self.samples(epoch)
        if samples[position].slot != slot:
            return None
        gop = self._gop(epoch, position, camera)
        return None if gop is None else ((epoch, position), gop)

    def _neighbour(self, at: Where, slot: int, camera: str,
                   direction: int) -> Optional[tuple[Where, int]]:
        """(where, steps away) of the slot's nearest stream step before (-1) or after (1)
        ``at``, within reach."""
        for steps in range(1, max(self.slot_lead(slot), 1) + 1):
            found = self._pick(at, direction * steps, slot, camera)
            if found is not None:
                return found[0], steps
        return None

    def _window(self, at: Where, slot: int, camera: str,
                near: Optional[tuple[_Window, int]] = None) -> _Window:
        """W(at). ``near``: (W of the slot's nearest stream step on either side, how many steps
        later than ``at`` it is): then W(at) is a slice of it, and only the picks it lacks are
        looked up (no stream step lies between the two)."""
        key = (*at, camera)
        window = self._windows.get(key)
        if window is not None:
            return window
        lead = self.slot_lead(slot)
        if near is None:
            base, steps, gops, firsts, missing = 0, (), (), (), range(lead + 1)
        else:
            other, later = near
            base = other.base - later
            lo = bisect.bisect_left(other.steps, base)
            hi = bisect.bisect_right(other.steps, base + lead)
            steps, gops, firsts = other.steps[lo:hi], other.gops[lo:hi], other.firsts[lo:hi]
            # ``at`` before it: the window lacks ``at``'s own pick; after it: the last steps
            missing = range(1) if later > 0 else range(lead + later + 1, lead + 1)
        found = [(k + base, pick[1], min(self.samples(pick[0][0])[pick[0][1]].frames))
                 for k in missing for pick in [self._pick(at, k, slot, camera)] if pick is not None]
        if found:
            new_steps, new_gops, new_firsts = zip(*found)
            if near is not None and near[1] > 0:
                steps, gops, firsts = new_steps + steps, new_gops + gops, new_firsts + firsts
            else:
                steps, gops, firsts = steps + new_steps, gops + new_gops, firsts + new_firsts
        window = self._windows[key] = _Window(base, steps, gops, tuple(dict.fromkeys(gops)),
                                              firsts)
        return window


class _Window(NamedTuple):
    """W of a step: the GOPs its slot's stream steps pick from, from it to the slot's lead on.
    Pick i is ``steps[i] - base`` steps on: counted from the step whose window was worked out
    first, so that a neighbour's window is a slice of this one's."""
    base: int
    steps: tuple[int, ...]
    gops: tuple[Gop, ...]         # of each pick
    distinct: tuple[Gop, ...]     # in order of first pick
    firsts: tuple[int, ...]       # of each pick: its first frame


@dataclass(frozen=True)
class DecodeAhead:
    """Plain samples decoded ``batches`` batches before their turn.

    The sample ``batches`` batches on (counted across epochs) rides along with this one's bytes,
    if it is to be decoded ahead: it is plain (no stream step for any camera: ``streams`` says;
    stream steps have their own lead) and something came that many batches before it, which the
    first batches of the run lack. Such a sample then carries no bytes of its own.
    """

    samples: Samples
    batch_size: int
    batches: int
    streams: Callable[[int, int], bool]   # (epoch, position) -> a stream step for some camera

    def __post_init__(self):
        if self.batches < 0:
            raise ConfigError(f"decode_ahead must be >= 0, not {self.batches}")

    def carried(self, epoch: int, position: int) -> bool:
        """Whether the sample's frames were decoded ahead (it brings no bytes of its own)."""
        if not self.batches or locate(self.samples, epoch,
                                      position - self.batches * self.batch_size) is None:
            return False     # nothing came that many batches before it (epochs may be short)
        return not self.streams(epoch, position)

    def target(self, epoch: int, position: int) -> Optional[Where]:
        """The sample whose frames come along with this one's, to decode now and keep."""
        if not self.batches:
            return None
        there = locate(self.samples, epoch, position + self.batches * self.batch_size)
        return there if self.carried(*there) else None
