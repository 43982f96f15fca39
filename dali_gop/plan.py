"""The worker -> decoder contract: what a sample's plan says, and its int64 wire form.

The second format of the project after the on-disk one (:mod:`dali_gop.format`): DALI's worker
processes build a :class:`Plan` per sample (:mod:`dali_gop._source`), it crosses the process
boundary as an int64 array beside the sample's bytes, and every decode backend reads it back.
Backends import this module, never the store.

stdlib + numpy only: it runs in DALI's worker processes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CODEC_IDS = {"h264": 0, "hevc": 1}
#: a decoder lets go of the frames of a kept GOP below a pick (:class:`StreamStep`) in runs of at
#: most this many: fewer allocations than one per frame, a few frames more held
RELEASE_FRAMES = 5
CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}


@dataclass(frozen=True)
class Segment:
    """Bytes for one decoder run, a slice of the sample buffer starting at a keyframe.

    ``packet_sizes`` splits the slice into packets (decode order); ``None`` when unknown (fixed-GOP
    fast path): the decoder then parses the Annex-B stream itself. Fed and flushed, the decoder
    outputs ``num_outputs`` frames, display indices ``first_frame, first_frame+1, ...``.
    """
    offset: int
    size: int
    packet_sizes: tuple[int, ...] | None
    first_frame: int
    num_outputs: int
    codec: str = "h264"


@dataclass(frozen=True)
class StreamSend:
    """A whole GOP sent ahead to a stream slot (segment ``segment`` of this sample): the decoder
    decodes it once and keeps its frames under (``video_key``, ``gop_start``) for later picks.
    ``video_key``: the CRC-32 of the video path, and above it the epoch whose picks the GOP is
    kept for (``dali_gop._store.stream_key``). ``first``: the output position of the slot's first
    pick of it (a decoder may decode up to there before the pick)."""
    segment: int
    video_key: int
    gop_start: int
    first: int = 0


@dataclass(frozen=True)
class StreamStep:
    """Stream decoding: each (stream slot, camera) keeps the decoded GOPs it will pick from.

    Workers send each GOP of a slot once, some batches before the slot reaches it (``sends``), so
    decoding runs ahead of the picks and each frame is decoded once. This step picks from the GOP
    (``video_key``, ``gop_start``), as :class:`StreamSend` keys it. ``restart``: drop
    whatever the slot kept before (its first step of an epoch); ``release``: the slot needs this GOP
    no more after this step. Which GOPs to send, keep and drop is a pure function of the epoch's
    sample list (see :class:`dali_gop._source.GopSource`), so any worker can compute it. A slot's
    picks of one kept GOP move forward (a slot walks its clips forward within an epoch, and a GOP
    is kept for one epoch's picks): a decoder may let go of the frames below a pick.
    """
    slot: int
    video_key: int
    gop_start: int
    restart: bool = False
    release: bool = False
    sends: tuple[StreamSend, ...] = ()


@dataclass(frozen=True)
class Request:
    """One video's part of a sample (one camera): what to decode and which outputs to keep.

    ``picks[i] = (segment, output_position)`` locates the request's frame ``i``. For a stream step
    the segment is -1 (the frames come from the slot's kept GOP), the position ``frame - gop_start``.
    """
    codec: str
    width: int
    height: int
    picks: tuple[tuple[int, int], ...]
    stream: StreamStep | None = None


@dataclass(frozen=True)
class Plan:
    """What a worker tells the decoder to do with one sample's bytes.

    The bytes travel beside it (DALI passes arrays, not objects): the segments' GOP prefixes back
    to back, then the segments' file paths ('\n'-joined UTF-8, from ``names_offset``) so that a
    decoder that finds a bin corrupt can name it.

    Decoding ahead (:class:`dali_gop.schedule.DecodeAhead`): ``requests[ahead_from:]`` are the
    frames of the sample keyed ``ahead_key``, to decode now and keep; ``kept_key`` >= 0: this
    sample's own frames were decoded ahead under that key, and no request here is its own. Keys:
    ``epoch << 32 | position``.
    """
    names_offset: int
    segments: tuple[Segment, ...]
    requests: tuple[Request, ...]
    kept_key: int = -1
    ahead_key: int = -1
    ahead_from: int | None = None     # None: len(requests)

    @property
    def own_requests(self) -> tuple[Request, ...]:
        """The sample's own requests (none when its frames were decoded ahead)."""
        return self.requests[:self._ahead_from]

    @property
    def ahead_requests(self) -> tuple[Request, ...]:
        """The requests of the sample ``ahead_key``, to decode now and keep."""
        return self.requests[self._ahead_from:]

    @property
    def _ahead_from(self) -> int:
        return len(self.requests) if self.ahead_from is None else self.ahead_from

    def to_array(self) -> np.ndarray:
        """Flat int64 array; inverse of :meth:`from_array`."""
        out = [self.names_offset, len(self.segments)]
        for s in self.segments:
            sizes = s.packet_sizes if s.packet_sizes is not None else ()
            out += [s.offset, s.size, s.first_frame, s.num_outputs, CODEC_IDS[s.codec],
                    len(sizes) if s.packet_sizes is not None else -1, *sizes]
        out.append(len(self.requests))
        for r in self.requests:
            st = r.stream
            out += [CODEC_IDS[r.codec], r.width, r.height, int(st is not None)]
            if st is not None:
                out += [st.slot, st.video_key, st.gop_start, int(st.restart), int(st.release),
                        len(st.sends)]
                for send in st.sends:
                    out += [send.segment, send.video_key, send.gop_start, send.first]
            out.append(len(r.picks))
            for seg, pos in r.picks:
                out += [seg, pos]
        out += [self.kept_key, self.ahead_key, self._ahead_from]
        return np.asarray(out, dtype=np.int64)

    @classmethod
    def from_array(cls, plan: np.ndarray) -> "Plan":
        """Inverse of :meth:`to_array`. Runs in DALI's thread for every sample, so it walks a list
        by index (a generator per value cost 3x as much)."""
        v = np.asarray(plan).ravel().tolist()
        names_offset, n_segments, i = v[0], v[1], 2
        segments = []
        for _ in range(n_segments):
            offset, size, first, n_out, codec, n_packets = v[i:i + 6]
            i += 6
            sizes = None
            if n_packets >= 0:
                sizes = tuple(v[i:i + n_packets])
                i += n_packets
            segments.append(Segment(offset, size, sizes, first, n_out, CODEC_NAMES[codec]))
        requests = []
        n_requests, i = v[i], i + 1
        for _ in range(n_requests):
            codec, width, height, has_stream = v[i:i + 4]
            i += 4
            stream = None
            if has_stream:
                slot, key, gop_start, restart, release, n_sends = v[i:i + 6]
                i += 6
                sends = tuple(StreamSend(*v[j:j + 4]) for j in range(i, i + 4 * n_sends, 4))
                i += 4 * n_sends
                stream = StreamStep(slot, key, gop_start, bool(restart), bool(release), sends)
            n, i = v[i], i + 1
            picks = tuple(zip(v[i:i + 2 * n:2], v[i + 1:i + 2 * n:2]))
            i += 2 * n
            requests.append(Request(CODEC_NAMES[codec], width, height, picks, stream))
        kept_key, ahead_key, ahead_from = v[i:i + 3]
        return cls(names_offset, tuple(segments), tuple(requests), kept_key, ahead_key,
                   ahead_from)


def segment_names(data: np.ndarray, names_offset: int) -> list[str]:
    """The file paths of a sample's segments, from the tail of its bytes (see :class:`Plan`)."""
    return bytes(np.asarray(data)[names_offset:]).decode(errors="replace").split("\n")
