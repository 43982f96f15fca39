"""The GOP store reader: which bytes a sample needs, and what a decoder must do with them.

Workers call :meth:`GopStore.read` and ship the resulting bytes and :class:`dali_gop.plan.Plan` to
the decode operator; decoders never see a file. Imports numpy and the format
module only, so it runs in DALI's worker processes without CUDA.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from dali_gop import format as fmt
from dali_gop.plan import Plan, Request, Segment, StreamSend, StreamStep, segment_names


class SampleRead(NamedTuple):
    """A sample's bytes (GOP prefixes, then the segments' paths) and the plan that decodes them."""
    data: np.ndarray
    plan: Plan

    def segment_names(self) -> list[str]:
        return segment_names(self.data, self.plan.names_offset)


@dataclass(frozen=True)
class ReadRequest:
    """What a worker asks of the store for one video. ``stream_slot`` -1: plain decoding (each GOP
    prefix from its keyframe); else a stream step of that slot, with the GOPs to send it now
    ((video, gop_start, generation): whole GOPs, possibly of the slot's next clip), the
    :class:`StreamStep` flags, the generation of the GOP it picks from (see
    :data:`dali_gop.schedule.Gop`) and, of each GOP sent, the first frame the slot picks from it."""
    video: str
    frames: tuple[int, ...]
    stream_slot: int = -1
    stream_sends: tuple[tuple[str, int, int], ...] = ()
    stream_restart: bool = False
    stream_release: bool = False
    stream_generation: int = 0
    stream_firsts: tuple[int, ...] = ()


def stream_key(video: str, generation: int) -> int:
    """The ``video_key`` of a kept GOP in plans: the CRC-32 of the video path, and the generation
    above it (a slot may keep one GOP of two generations at once, at an epoch's end)."""
    return fmt.checksum(video.encode()) | generation << 32


@dataclass(frozen=True)
class _GopSlice:
    """Which prefix of which bin one segment needs (before reading)."""
    path: Path
    expected_size: int | None     # the whole bin's size, when an index says it
    crc32: int | None
    read_size: int | None         # None: the whole file
    packet_sizes: tuple[int, ...] | None
    first_frame: int
    num_outputs: int
    codec: str


class GopStore:
    """Reads GOP bins of one GOP root.

    Indices are parsed once per process and kept (``.gop_index.json`` is small and immutable once
    written). With ``fix_gop_size`` no index is read at all: bin names follow from the frame number
    and the video's frame count in the manifest, as in the reference loader's fast path. That path
    cannot check sizes against an index, so decoders check their output count instead.
    """

    def __init__(self, gop_root: str | os.PathLike, *, fix_gop_size: int | None = None,
                 verify_checksums: bool = False):
        self.gop_root = Path(gop_root)
        self.fix_gop_size = fix_gop_size
        self.verify_checksums = verify_checksums
        self._indexes: dict[str, fmt.VideoIndex] = {}
        self._stamps: dict[str, tuple[int, int] | None] = {}   # video -> its index file's stat
        self._manifest: fmt.DatasetManifest | None = None

    # -- lookup ---------------------------------------------------------------------------------
    def index(self, video: str) -> fmt.VideoIndex:
        index = self._indexes.get(video)
        if index is None:
            self._stamps[video] = self._stamp(video)
            index = self._indexes[video] = fmt.read_index(self.gop_root, video)
        return index

    def _stamp(self, video: str) -> tuple[int, int] | None:
        try:
            stat = os.stat(fmt.video_gop_dir(self.gop_root, video) / fmt.INDEX_FILENAME)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _bad_bin(self, path: Path, what: str) -> fmt.FormatError:
        """The error for a bin that is not what this store's index says: a store rewritten since
        the index was read (preprocess run again beside a running loader) needs a new loader, not
        another preprocess run."""
        video = os.path.relpath(path.parent, self.gop_root)
        if video in self._stamps and self._stamp(video) != self._stamps[video]:
            return fmt.FormatError(
                f"{path}: {what}; the GOP store changed under this loader (its index was rewritten "
                "after the loader read it, e.g. by preprocess): build a new loader")
        return fmt.FormatError(f"{path}: {what}: re-run preprocess")

    def manifest(self) -> fmt.DatasetManifest:
        if self._manifest is None:
            self._manifest = fmt.read_manifest(self.gop_root)
        return self._manifest

    def video_info(self, video: str) -> fmt.VideoSummary:
        if not self.fix_gop_size:
            return fmt.VideoSummary.of(self.index(video))
        try:
            return self.manifest().videos[video]
        except KeyError:
            raise fmt.FormatError(f"{self.gop_root / fmt.MANIFEST_FILENAME}: no entry for {video} "
                                  "(the fixed-GOP path needs it: re-run preprocess)") from None

    def gop_of(self, video: str, frame: int) -> fmt.GopEntry:
        """The GOP holding display frame ``frame`` (bisection over GOP starts)."""
        index = self.index(video)
        self._check_frame(video, frame, index.num_frames)
        return index.gops[bisect.bisect_right(index.gop_starts, frame) - 1]

    def gop_start(self, video: str, frame: int) -> int:
        if self.fix_gop_size:
            self._check_frame(video, frame, self.video_info(video).frames)
            return frame // self.fix_gop_size * self.fix_gop_size
        return self.gop_of(video, frame).start

    def _check_frame(self, video: str, frame: int, num_frames: int) -> None:
        if not 0 <= frame < num_frames:
            raise IndexError(f"{self.gop_root / video}: frame {frame} out of range 0..{num_frames - 1}")

    # -- reading --------------------------------------------------------------------------------
    def _prefix_slice(self, video: str, start: int, last: int) -> _GopSlice:
        """The GOP at ``start``, cut after the packets that output frame ``last``."""
        base = fmt.video_gop_dir(self.gop_root, video)
        info = self.video_info(video)
        if self.fix_gop_size:
            count = min(self.fix_gop_size, info.frames - start)
            return _GopSlice(base / fmt.bin_filename(start, count), None, None, None, None, start,
                             last - start + 1, info.codec)
        gop = self.gop_of(video, start)
        n_packets = gop.packets_through(last)
        outputs = gop.output_frames(n_packets)
        if outputs[:last - start + 1] != tuple(range(start, last + 1)):
            # picks rely on output position == frame - start
            raise fmt.FormatError(f"{base / gop.file}: packets do not decode to frames "
                                  f"{start}..{last} in order")
        return _GopSlice(base / gop.file, gop.size, gop.crc32, sum(gop.packet_sizes[:n_packets]),
                         gop.packet_sizes[:n_packets], start, len(outputs), info.codec)

    def read(self, requests: Iterable[ReadRequest | tuple[str, Sequence[int]]], *,
             kept_key: int = -1, ahead_key: int = -1, ahead_from: int | None = None) -> SampleRead:
        """Read every GOP prefix that the requests need into one buffer.

        A GOP needed twice (by two frames, or two requests) is read and decoded once, as far as the
        furthest frame needs: a longer prefix outputs a superset at the same positions.
        """
        slices: list[_GopSlice] = []
        slot_of: dict[Path, int] = {}

        def add(s: _GopSlice) -> int:
            if s.path not in slot_of:
                slot_of[s.path] = len(slices)
                slices.append(s)
            elif s.num_outputs > slices[slot_of[s.path]].num_outputs:
                slices[slot_of[s.path]] = s
            return slot_of[s.path]

        planned = []
        for request in requests:
            if not isinstance(request, ReadRequest):
                request = ReadRequest(request[0], tuple(request[1]))
            info = self.video_info(request.video)
            starts = [self.gop_start(request.video, f) for f in request.frames]
            if request.stream_slot >= 0:
                planned.append(self._plan_stream(request, info, starts, add))
                continue
            last: dict[int, int] = {}
            for start, f in zip(starts, request.frames):
                last[start] = max(last.get(start, f), f)
            segment = {start: add(self._prefix_slice(request.video, start, f))
                       for start, f in last.items()}
            picks = tuple((segment[start], f - start) for start, f in zip(starts, request.frames))
            planned.append(Request(info.codec, info.width, info.height, picks))

        sizes = [self._resolve_size(s) for s in slices]
        names = "\n".join(str(s.path) for s in slices).encode()
        data = np.empty(sum(sizes) + len(names), dtype=np.uint8)
        segments, offset = [], 0
        for s, size in zip(slices, sizes):
            self._read_into(s, data[offset:offset + size])
            segments.append(Segment(offset, size, s.packet_sizes, s.first_frame, s.num_outputs,
                                    s.codec))
            offset += size
        data[offset:] = np.frombuffer(names, np.uint8)
        return SampleRead(data, Plan(offset, tuple(segments), tuple(planned), kept_key, ahead_key,
                                     ahead_from))

    def _plan_stream(self, request: ReadRequest, info: fmt.VideoSummary, starts: list[int],
                     add) -> Request:
        if self.fix_gop_size or len(set(starts)) != 1:
            raise ValueError(f"{request.video}: stream decoding needs a GOP index and all frames "
                             "of a request in one GOP")
        start = starts[0]
        sends = []
        firsts = request.stream_firsts or (None,) * len(request.stream_sends)
        for (video, gop_start, generation), first in zip(request.stream_sends, firsts):
            gop = self.gop_of(video, gop_start)
            if gop.start != gop_start:
                raise ValueError(f"{self.gop_root / video}: no GOP starts at frame {gop_start}")
            sends.append(StreamSend(add(self._prefix_slice(video, gop.start, gop.end - 1)),
                                    stream_key(video, generation), gop.start,
                                    0 if first is None else first - gop.start))
        step = StreamStep(request.stream_slot,
                          stream_key(request.video, request.stream_generation), start,
                          request.stream_restart, request.stream_release, tuple(sends))
        picks = tuple((-1, f - start) for f in request.frames)
        return Request(info.codec, info.width, info.height, picks, step)

    def _resolve_size(self, s: _GopSlice) -> int:
        try:
            actual = os.stat(s.path).st_size
        except FileNotFoundError:
            raise self._bad_bin(s.path, "GOP bin missing") from None
        if s.expected_size is not None and actual != s.expected_size:
            raise self._bad_bin(s.path, f"{actual} bytes, index says {s.expected_size} "
                                        "(truncated or replaced bin)")
        if actual == 0:
            raise fmt.FormatError(f"{s.path}: empty GOP bin")
        return s.read_size if s.read_size is not None else actual

    def _read_into(self, s: _GopSlice, out: np.ndarray) -> None:
        with open(s.path, "rb", buffering=0) as f:
            if self.verify_checksums and s.crc32 is not None:
                whole = f.read()
                if len(whole) != s.expected_size or fmt.checksum(whole) != s.crc32:
                    raise self._bad_bin(s.path, "checksum mismatch (corrupt bin)")
                out[:] = np.frombuffer(whole, np.uint8, count=len(out))
                return
            view, done = memoryview(out), 0
            while done < len(out):
                n = f.readinto(view[done:])
                if not n:
                    raise self._bad_bin(s.path, f"ended after {done} of {len(out)} bytes")
                done += n
