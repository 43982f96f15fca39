"""The on-disk format of a GOP store: the one module that writer (preprocess) and reader share.

Imports numpy-free stdlib only, so that it loads on any machine (no DALI, torch or GPU driver).
docs/format.md is the human-readable spec of what this module reads and writes.

Layout, per source video ``<video_root>/<rel>``::

    <gop_root>/<rel>/gop.{start}.{count}.bin   one per GOP: Annex-B packets, parameter sets in band
    <gop_root>/<rel>/.gop_index.json           VideoIndex, written last (its presence = complete)
    <gop_root>/manifest.json                   DatasetManifest, written at the end of preprocess
"""
from __future__ import annotations

import functools
import json
import os
import re
import socket
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dali_gop.errors import ConfigError, FormatError

FORMAT_VERSION = 1
INDEX_FILENAME = ".gop_index.json"
MANIFEST_FILENAME = "manifest.json"
SUPPORTED_CODECS = ("h264", "hevc")
_BIN_RE = re.compile(r"^gop\.(\d+)\.(\d+)\.bin$")

UNSPECIFIED = "unspecified"
# Colour tags, stored by FFmpeg's names. Keys are the code points of H.264/HEVC VUI and MP4 'colr'
# (ISO/IEC 23091-2, the same numbers as FFmpeg's AVColorSpace & co.); reserved or unknown code
# points read as unspecified, as decoders treat them.
COLOR_MATRICES = {0: "gbr", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                  8: "ycgco", 9: "bt2020nc", 10: "bt2020c", 11: "smpte2085",
                  12: "chroma-derived-nc", 13: "chroma-derived-c", 14: "ictcp"}
COLOR_RANGES = {1: "limited", 2: "full"}
COLOR_PRIMARIES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                   8: "film", 9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432",
                   22: "ebu3213"}
COLOR_TRANSFERS = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m",
                   8: "linear", 9: "log100", 10: "log316", 11: "iec61966-2-4", 12: "bt1361e",
                   13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084",
                   17: "smpte428", 18: "arib-std-b67"}
# the conversion matrices backends implement, by the tags that mean them
_EFFECTIVE_MATRIX = {"bt709": "bt709", "bt470bg": "bt601", "smpte170m": "bt601",
                     "bt2020nc": "bt2020"}
MATRIX_OVERRIDES = ("bt601", "bt709")


def bin_filename(start: int, count: int) -> str:
    return f"gop.{start}.{count}.bin"


def parse_bin_filename(name: str) -> tuple[int, int]:
    match = _BIN_RE.match(name)
    if not match:
        raise FormatError(f"{name}: not a GOP bin name (expected gop.<start>.<count>.bin)")
    return int(match.group(1)), int(match.group(2))


def video_gop_dir(gop_root: str | os.PathLike, rel_path: str) -> Path:
    """Where a video's bins live. Refuses paths that would leave the GOP root."""
    rel = Path(rel_path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise FormatError(f"{rel_path!r}: video path must be relative and inside the GOP root")
    return Path(gop_root) / rel


def checksum(data: bytes | bytearray | memoryview) -> int:
    # crc32: in the stdlib and cheap beside reading the bytes; it catches flipped or truncated
    # bytes (not an adversary).
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class SourceInfo:
    """Identifies the source file a video index was made from, so a rerun can skip it."""
    path: str          # relative to video_root, '/'-separated
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class GopEntry:
    """One bin. Frames are display indices of the source video, counted from 0.

    A bin holds, in decode order, the packets of frames ``start .. start+count-1`` beginning with a
    keyframe. When the next keyframe has leading pictures (open GOP: they display before it but
    are decoded after it and reference this GOP), the bin also carries that keyframe and its
    leading pictures: the last ``tail`` packets. Decoding the whole bin then also yields frame
    ``start+count`` (the next keyframe), the source's following frame.
    """
    start: int
    count: int
    file: str
    size: int
    crc32: int
    packet_sizes: tuple[int, ...]     # decode order; they add up to ``size``
    packet_frames: tuple[int, ...]    # display index of each packet's frame, decode order
    tail: int = 0                     # trailing packets that belong to the next GOP's keyframe

    @property
    def end(self) -> int:
        return self.start + self.count

    @property
    def overlap_with_next(self) -> int:
        """Packets at the start of the next bin that repeat this bin's tail (the next keyframe, and
        any of its trailing pictures decoded before its last leading one). To decode two consecutive
        bins as one stream, skip that many packets of the second: bins concatenate that way."""
        if not self.tail:
            return 0
        return sum(1 for f in self.packet_frames[-self.tail:] if f >= self.end)

    def packets_through(self, frame: int) -> int:
        """How many packets to feed so that, after a flush, the decoder has output ``frame``.

        Display order means a decoder emits ``frame`` only once every frame before it in the GOP is
        decoded too, so we need the last decode position of any frame <= ``frame``.
        """
        last = -1
        for pos, f in enumerate(self.packet_frames):
            if f <= frame:
                last = pos
        if last < 0:
            raise FormatError(f"{self.file}: frame {frame} is not in this GOP")
        return last + 1

    def output_frames(self, n_packets: int) -> tuple[int, ...]:
        """Display indices a decoder outputs, in order, after being fed ``n_packets`` and flushed."""
        return tuple(sorted(self.packet_frames[:n_packets]))

    def validate(self, where: str) -> None:
        if len(self.packet_sizes) != len(self.packet_frames):
            raise FormatError(f"{where}: {self.file}: packet_sizes and packet_frames differ in length")
        if sum(self.packet_sizes) != self.size:
            raise FormatError(f"{where}: {self.file}: packet sizes add up to {sum(self.packet_sizes)}, "
                              f"not the bin size {self.size}")
        if self.file != bin_filename(self.start, self.count):
            raise FormatError(f"{where}: bin name {self.file!r} disagrees with start={self.start} "
                              f"count={self.count}")
        own = sorted(f for f in self.packet_frames if f < self.end)
        if (len(own) != self.count or own != list(range(self.start, self.end))
                or min(self.packet_frames) < self.start):   # length first: count may be huge
            raise FormatError(f"{where}: {self.file}: packets do not cover frames "
                              f"{self.start}..{self.end - 1} exactly once")
        if self.packet_frames[0] != self.start:
            raise FormatError(f"{where}: {self.file}: does not start with its keyframe")
        body = len(self.packet_frames) - self.tail
        if self.tail < 0 or body <= 0 or any(f >= self.end for f in self.packet_frames[:body]):
            raise FormatError(f"{where}: {self.file}: frames past the GOP outside its tail")


@dataclass(frozen=True)
class VideoIndex:
    """Contents of ``.gop_index.json``: all a reader needs to find and feed any frame."""
    source: SourceInfo
    codec: str                  # 'h264' | 'hevc'
    width: int
    height: int
    pix_fmt: str
    frame_rate: str             # exact rational, e.g. '12/1' or '30000/1001'
    time_base: str              # of the source stream, e.g. '1/12288'
    num_frames: int
    has_b_frames: bool
    gops: tuple[GopEntry, ...]
    version: int = FORMAT_VERSION
    # as tagged in the bitstream (VUI) or the container; indexes written before these existed
    # read as untagged. color_conversion() says what to do with them.
    color_matrix: str = UNSPECIFIED
    color_range: str = UNSPECIFIED
    color_primaries: str = UNSPECIFIED
    color_transfer: str = UNSPECIFIED

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: str = INDEX_FILENAME) -> "VideoIndex":
        raw = _json(text, where)
        if not isinstance(raw, dict):
            raise FormatError(f"{where}: expected a JSON object")
        version = raw.get("version")
        if version != FORMAT_VERSION:
            raise FormatError(f"{where}: format version {version!r}, this dali_gop reads "
                              f"version {FORMAT_VERSION}: re-run preprocess")
        try:
            gops = tuple(GopEntry(**{**g, "packet_sizes": tuple(g["packet_sizes"]),
                                     "packet_frames": tuple(g["packet_frames"])})
                         for g in raw["gops"])
            index = cls(**{**raw, "source": SourceInfo(**raw["source"]), "gops": gops})
        except (KeyError, TypeError) as e:
            raise FormatError(f"{where}: missing or unexpected field ({e})") from None
        index.validate(where)
        return index

    def validate(self, where: str = INDEX_FILENAME) -> None:
        _check_types(self, where)
        if self.codec not in SUPPORTED_CODECS:
            raise FormatError(f"{where}: codec {self.codec!r} is not one of {SUPPORTED_CODECS}")
        if not self.gops or self.num_frames <= 0:
            raise FormatError(f"{where}: video has no frames")
        expected = 0
        for gop in self.gops:
            _check_types(gop, where)
            if gop.start != expected or gop.count <= 0:
                raise FormatError(f"{where}: GOP {gop.file} starts at {gop.start}, expected "
                                  f"{expected}: GOPs must tile the frames without gaps")
            gop.validate(where)
            expected = gop.end
        if expected != self.num_frames:
            raise FormatError(f"{where}: GOPs cover {expected} frames, index says {self.num_frames}")

    @functools.cached_property
    def gop_starts(self) -> list[int]:
        """Kept once made: every sample's GOP lookup bisects it."""
        return [g.start for g in self.gops]


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:   # also over-long ints, deep nesting
        raise FormatError(f"{where}: not valid JSON ({e})") from None


def _check_types(obj: Any, where: str) -> None:
    """JSON can hold anything: reject wrong types early, with the field's name. The expected types
    are the dataclass annotations (strings, as this module uses ``from __future__ import annotations``)."""
    for f in fields(obj):
        name, value, kind = f.name, getattr(obj, f.name), f.type
        if name == "gops":
            continue   # each GopEntry is checked on its own
        if kind.startswith("tuple"):
            if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
                raise FormatError(f"{where}: field {name} must hold non-negative integers")
        elif kind == "SourceInfo":
            if not isinstance(value, SourceInfo):
                raise FormatError(f"{where}: field {name} has type {type(value).__name__}")
            _check_types(value, where)
        elif type(value) is not {"int": int, "str": str, "bool": bool}[kind]:
            raise FormatError(f"{where}: field {name} has type {type(value).__name__}, expected {kind}")
        elif kind == "int" and value < 0 and name != "mtime_ns":   # files may predate 1970
            raise FormatError(f"{where}: field {name} is negative")


def color_conversion(index_or_fields: Any, override: str | None = None) -> tuple[str, str]:
    """The (matrix, range) a video's YUV -> RGB conversion should use.

    ``index_or_fields``: a VideoIndex, a VideoSummary, or a mapping with ``color_matrix`` and
    ``color_range`` (missing ones count as untagged). The rule, so that every backend agrees:
    a tagged matrix wins; an untagged one is ``bt709``, what NVDEC applies when the stream says
    nothing; an untagged range is ``limited``; ``override`` (``bt601`` | ``bt709``) replaces the
    matrix whatever the tag. The matrix is ``bt601``, ``bt709``, ``bt2020``, or, for the rarer
    tags, the tag itself (``smpte240m``, ``ycgco``, ...), which a backend may refuse.
    """
    if override is not None and override not in MATRIX_OVERRIDES:
        raise ConfigError(f"colour matrix override {override!r}: expected one of "
                          f"{MATRIX_OVERRIDES} or None")
    if isinstance(index_or_fields, Mapping):
        get = index_or_fields.get
    else:
        def get(name: str, default: str) -> str:
            return getattr(index_or_fields, name, default)
    matrix = override or get("color_matrix", UNSPECIFIED)
    if matrix == UNSPECIFIED:
        matrix = "bt709"
    color_range = "full" if get("color_range", UNSPECIFIED) == "full" else "limited"
    return _EFFECTIVE_MATRIX.get(matrix, matrix), color_range


@dataclass(frozen=True)
class VideoSummary:
    """What a decoder must know before the first byte: from the index, or the manifest."""
    frames: int
    codec: str
    width: int
    height: int
    color_matrix: str = UNSPECIFIED   # the fixed-GOP path reads no index, so the colour comes along
    color_range: str = UNSPECIFIED

    @classmethod
    def of(cls, index: VideoIndex) -> "VideoSummary":
        return cls(index.num_frames, index.codec, index.width, index.height, index.color_matrix,
                   index.color_range)


@dataclass(frozen=True)
class DatasetManifest:
    """``manifest.json`` at the GOP root.

    ``video_dirs`` is the seed's index shape ``{video_dir: {clip_id: frame_count}}`` (one video_dir,
    the video root preprocess read); ``cameras`` lists each clip's video file names, in order;
    ``videos`` each video's frame count, codec and size (path relative to the GOP root).
    A clip's frame count is the smallest over its cameras, so every camera has every frame.
    """
    video_dirs: dict[str, dict[str, int]]
    cameras: dict[str, list[str]]
    videos: dict[str, VideoSummary] = field(default_factory=dict)   # what the fixed-GOP path reads
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_FILENAME) -> "DatasetManifest":
        raw = _json(text, where)
        if isinstance(raw, dict) and "video_dirs" not in raw:
            # the seed's plain shape, {video_dir: {clip_id: frame_count}}, with no camera lists
            manifest = cls(video_dirs=raw, cameras={})
        elif not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
            raise FormatError(f"{where}: not a dali_gop manifest of version {FORMAT_VERSION}")
        else:
            try:
                videos = {rel: VideoSummary(**v) for rel, v in raw.pop("videos", {}).items()}
                manifest = cls(**raw, videos=videos)
            except (TypeError, AttributeError) as e:
                raise FormatError(f"{where}: missing or unexpected field ({e})") from None
        manifest.validate(where)
        return manifest

    def validate(self, where: str = MANIFEST_FILENAME) -> None:
        """JSON can hold anything: check every field's type here, so readers fail naming the file."""
        def mapping(value, check) -> bool:
            return isinstance(value, dict) and all(isinstance(k, str) and check(v)
                                                   for k, v in value.items())
        if not mapping(self.video_dirs, lambda clips: mapping(
                clips, lambda n: type(n) is int and n >= 0)):
            raise FormatError(f"{where}: video_dirs must be {{video_dir: {{clip_id: frame_count}}}}")
        if not mapping(self.cameras, lambda names: isinstance(names, list)
                       and all(isinstance(n, str) for n in names)):
            raise FormatError(f"{where}: cameras must be {{clip_id: [video file name, ...]}}")
        if not mapping(self.videos, lambda v: isinstance(v, VideoSummary)):
            raise FormatError(f"{where}: videos must be {{path: {{frames, codec, width, height}}}}")
        if type(self.version) is not int:
            raise FormatError(f"{where}: field version has type {type(self.version).__name__}")
        for summary in self.videos.values():
            _check_types(summary, where)

    def clips(self) -> dict[str, int]:
        merged: dict[str, int] = {}
        for clips in self.video_dirs.values():
            merged.update(clips)
        return merged


def _temp_prefix(path: Path, pid: int) -> str:
    """Temp files name their writer (host, pid): a later run can tell a killed writer's leftover
    from a file another process is writing right now."""
    return f".{path.name}.{socket.gethostname()}.{pid}."


def remove_dead_writers_temps(path: str | os.PathLike) -> None:
    """Delete temp files of ``path`` (see :func:`write_atomic`) left by processes of this host that
    are gone (killed mid-write). Others' are left alone: they may be writing now, on this host or
    another one sharing the directory."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        prefix, pid, _random = tmp.name[:-len(".tmp")].rsplit(".", 2)
        if not pid.isdigit() or f"{prefix}.{pid}." != _temp_prefix(path, int(pid)):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:   # alive, another user's
            pass


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either absent, its old content, or complete: never partial.

    Temp file in the same directory (so rename is atomic on POSIX), fsync, rename, fsync the directory
    so the rename itself survives a crash.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path, os.getpid()), suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)   # mkstemp makes 0600; readers may be other users
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_text(path: Path, missing: str) -> str:
    """A metadata file's text; its absence or a non-UTF-8 byte is a FormatError naming it."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise FormatError(f"{path}: {missing}") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None


def read_index(gop_root: str | os.PathLike, rel_path: str) -> VideoIndex:
    path = video_gop_dir(gop_root, rel_path) / INDEX_FILENAME
    text = _read_text(path, f"GOP index missing (was {rel_path} preprocessed?)")
    return VideoIndex.from_json(text, where=str(path))


def write_index(gop_root: str | os.PathLike, rel_path: str, index: VideoIndex) -> None:
    write_atomic(video_gop_dir(gop_root, rel_path) / INDEX_FILENAME, index.to_json().encode())


def read_manifest(gop_root: str | os.PathLike, path: str | os.PathLike | None = None) -> DatasetManifest:
    """The GOP root's manifest, or the dataset index at ``path`` (either shape)."""
    if path is None:
        path = Path(gop_root) / MANIFEST_FILENAME
        text = _read_text(path, "dataset manifest missing (run preprocess on this GOP root)")
    else:
        path = Path(path)
        text = _read_text(path, "dataset index file missing")
    return DatasetManifest.from_json(text, str(path))
