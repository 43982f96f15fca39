"""Splits one source video into standalone-decodable GOP bins and writes them atomically.

CPU only: PyAV (FFmpeg's demuxer, mp4toannexb bitstream filters and decoders), numpy and the stdlib.

The cutting rule (docs/format.md explains it at length): a GOP starts at every keyframe the
container flags that is a random-access picture (preprocess.nal says which are). Frame numbers are
display-order ranks of the packets' presentation timestamps.
GOP i covers frames [display(K_i), display(K_i+1)). Its bin holds, in decode order, K_i and the
packets after it up to K_i+1, *minus* K_i's own leading pictures (they display before K_i, so they
belong to GOP i-1 and reference its frames), *plus*, when K_i+1 has leading pictures, K_i+1 and
the packets through its last leading picture (the bin's ``tail``): open GOPs then decode from
this bin alone. Before anything is written, every bin is decoded on its own and checked against
its index (preprocess.verify); a video that fails is refused by name.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from dali_gop import format as fmt
from dali_gop.errors import DaliGopError
from preprocess import verify as check
from preprocess.nal import is_random_access, nal_type, nal_units

_PARAMETER_SET_NAL_TYPES = {"h264": {7, 8}, "hevc": {32, 33, 34}}   # SPS/PPS; VPS/SPS/PPS
_START_CODE = b"\x00\x00\x00\x01"


class VideoError(DaliGopError):
    """A source video that preprocess cannot turn into a correct GOP store. Names the file."""


@dataclass
class _Packet:
    data: bytes
    pts: int
    keyframe: bool
    frame: int = -1     # display index, filled once every packet is known


def printable(path: str | os.PathLike) -> str:
    """A path as a message can show it: bytes that are not UTF-8 as backslash escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def parameter_sets_annexb(extradata: bytes | None, codec: str, where: str) -> bytes:
    """The stream's parameter sets as Annex-B NAL units, from avcC/hvcC (MP4) or Annex-B extradata."""
    if not extradata:
        return b""
    if extradata.startswith(b"\x00\x00\x01") or extradata.startswith(b"\x00\x00\x00\x01"):
        return bytes(extradata)
    out = bytearray()
    try:
        if codec == "h264":   # ISO/IEC 14496-15 AVCDecoderConfigurationRecord
            pos, n_sps = 6, extradata[5] & 0x1F
            for count_is_next in (False, True):
                count = extradata[pos - 1] if count_is_next else n_sps
                for _ in range(count):
                    size = int.from_bytes(extradata[pos:pos + 2], "big")
                    out += _START_CODE + extradata[pos + 2:pos + 2 + size]
                    pos += 2 + size
                pos += 1
        else:                 # HEVCDecoderConfigurationRecord: 22-byte header, then NAL arrays
            pos, n_arrays = 23, extradata[22]
            for _ in range(n_arrays):
                n_nalus = int.from_bytes(extradata[pos + 1:pos + 3], "big")
                pos += 3
                for _ in range(n_nalus):
                    size = int.from_bytes(extradata[pos:pos + 2], "big")
                    out += _START_CODE + extradata[pos + 2:pos + 2 + size]
                    pos += 2 + size
    except IndexError:
        raise VideoError(f"{where}: truncated {codec} codec configuration (extradata)") from None
    return bytes(out)


@dataclass
class _Source:
    packets: list[_Packet]
    parameter_sets: bytes
    meta: dict                  # VideoIndex fields
    ignored_keyframes: int      # flagged by the container, not random-access pictures


def _read_packets(path: Path) -> _Source:
    where = str(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{where}: cannot open as a video container ({e})") from None
    with container:
        stream = next((s for s in container.streams if s.type == "video"), None)
        if stream is None:
            raise VideoError(f"{where}: has no video stream")
        ctx = stream.codec_context
        codec = ctx.name
        if codec not in fmt.SUPPORTED_CODECS:
            raise VideoError(f"{where}: codec {codec!r} is not supported (only H.264 and HEVC)")
        pix_fmt = ctx.pix_fmt or ""
        if pix_fmt not in ("yuv420p", "yuvj420p"):
            if not pix_fmt and not any(p.size for p in container.demux(stream)):
                # FFmpeg learns the pixel format from the first frame: none there, none known
                raise VideoError(f"{where}: video stream has no packets (zero frames)")
            raise VideoError(f"{where}: pixel format {pix_fmt!r} is not supported (8-bit 4:2:0 only: "
                             "NVDEC's RGB path and the reference decode assume it)")
        meta = dict(codec=codec, width=ctx.width, height=ctx.height, pix_fmt=pix_fmt,
                    frame_rate=str(stream.average_rate or stream.guessed_rate or Fraction(0)),
                    time_base=str(stream.time_base), **_colour_tags(ctx))
        bsf = av.bitstream.BitStreamFilterContext(f"{codec}_mp4toannexb", stream)
        packets: list[_Packet] = []
        ignored = 0
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue    # the demuxer's end-of-stream marker
                # the filter takes ownership of the packet and blanks it: read its fields first
                pts, key, discard = packet.pts, packet.is_keyframe, packet.is_discard
                for out in bsf.filter(packet):
                    packets.append(_to_packet(out, pts, key, discard, where))
                    if key and not is_random_access(packets[-1].data, codec):
                        packets[-1].keyframe = False
                        ignored += 1
        except av.FFmpegError as e:
            raise VideoError(f"{where}: demux failed after {len(packets)} packets ({e})") from None
        extradata = parameter_sets_annexb(ctx.extradata, codec, where)
    return _Source(packets, extradata, meta, ignored)


def _colour_tags(ctx: av.codec.context.CodecContext) -> dict[str, str]:
    """As the bitstream's VUI tags them, or the container where the VUI says nothing (FFmpeg
    decodes the first frame when it opens the file, and fills these in)."""
    return dict(color_matrix=fmt.COLOR_MATRICES.get(ctx.colorspace, fmt.UNSPECIFIED),
                color_range=fmt.COLOR_RANGES.get(ctx.color_range, fmt.UNSPECIFIED),
                color_primaries=fmt.COLOR_PRIMARIES.get(ctx.color_primaries, fmt.UNSPECIFIED),
                color_transfer=fmt.COLOR_TRANSFERS.get(ctx.color_trc, fmt.UNSPECIFIED))


def _to_packet(out: av.Packet, pts: int | None, key: bool, discard: bool, where: str) -> _Packet:
    if pts is None:
        raise VideoError(f"{where}: packet without a presentation timestamp: frame order unknown")
    if discard:
        # An edit list hides this frame from playback; honouring it would need per-frame discard
        # in every decoder backend, and no encoder we target writes such files.
        raise VideoError(f"{where}: edit list discards frames (pts {pts}); remux without it")
    return _Packet(bytes(out), pts, bool(key))


def split_gops(packets: list[_Packet], codec: str, parameter_sets: bytes,
               where: str) -> list[tuple[fmt.GopEntry, bytes]]:
    """Apply the cutting rule to a video's packets (decode order). Returns entries and bin bytes."""
    first_key = next((i for i, p in enumerate(packets) if p.keyframe), None)
    if first_key is None:
        raise VideoError(f"{where}: no keyframe decoding can start from (IDR, CRA, or an I frame): "
                         "nothing is decodable")
    # Packets before the first keyframe, or displayed before it (leading pictures of a stream cut
    # mid-GOP), cannot be decoded: FFmpeg drops them too, so they get no frame number.
    packets = [p for p in packets[first_key:] if p.pts >= packets[first_key].pts]
    ranks = sorted(range(len(packets)), key=lambda i: packets[i].pts)
    for frame, i in enumerate(ranks):
        packets[i].frame = frame
    if len({p.pts for p in packets}) != len(packets):
        raise VideoError(f"{where}: two packets share a presentation timestamp: frame order unknown")

    keys = [i for i, p in enumerate(packets) if p.keyframe] + [len(packets)]
    # leading[k]: decode positions right after keyframe at position k that display before it
    leading: dict[int, list[int]] = {}
    for k, nxt in zip(keys, keys[1:]):
        leading[k] = [j for j in range(k + 1, nxt) if packets[j].frame < packets[k].frame]
    result = []
    for k, nxt in zip(keys, keys[1:]):
        body = [j for j in range(k, nxt) if j not in leading[k]]
        tail = list(range(nxt, leading[nxt][-1] + 1)) if nxt < len(packets) and leading[nxt] else []
        members = body + tail
        start = packets[k].frame
        end = packets[nxt].frame if nxt < len(packets) else len(packets)
        datas = [packets[j].data for j in members]
        if not any(nal_type(n, codec) in _PARAMETER_SET_NAL_TYPES[codec]
                   for n in nal_units(datas[0]) if n):
            # mp4toannexb only inserts parameter sets before IDR; open-GOP I frames need them too
            datas[0] = parameter_sets + datas[0]
        blob = b"".join(datas)
        entry = fmt.GopEntry(
            start=start, count=end - start, file=fmt.bin_filename(start, end - start),
            size=len(blob), crc32=fmt.checksum(blob),
            packet_sizes=tuple(len(d) for d in datas),
            packet_frames=tuple(packets[j].frame for j in members), tail=len(tail))
        try:
            entry.validate(where)
        except fmt.FormatError as e:
            raise VideoError(f"{where}: unsupported GOP structure near frame {start}: {e}") from None
        result.append((entry, blob))
    return result


def source_info(video_root: Path, rel: str) -> fmt.SourceInfo:
    st = (video_root / rel).stat()
    return fmt.SourceInfo(path=rel, size=st.st_size, mtime_ns=st.st_mtime_ns)


def is_up_to_date(video_root: Path, gop_root: Path, rel: str) -> bool:
    """True when the video's index exists, parses and was made from this very source file."""
    try:
        index = fmt.read_index(gop_root, rel)
    except fmt.FormatError:
        return False
    if index.source != source_info(video_root, rel):
        return False
    out_dir = fmt.video_gop_dir(gop_root, rel)
    return all((out_dir / g.file).is_file() and (out_dir / g.file).stat().st_size == g.size
               for g in index.gops)


@dataclass
class VideoResult:
    rel: str
    frames: int = 0
    gops: int = 0
    bytes: int = 0
    skipped: bool = False
    error: str | None = None
    seconds: float = 0.0
    note: str | None = None     # worth a line: the video is fine, but not as the user may think


def _up_to_date_result(gop_root: Path, rel: str, t0: float) -> VideoResult:
    index = fmt.read_index(gop_root, rel)
    return VideoResult(rel, index.num_frames, len(index.gops), sum(g.size for g in index.gops),
                       skipped=True, seconds=time.perf_counter() - t0)


READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def write_video(video_root: str | os.PathLike, gop_root: str | os.PathLike, rel: str,
                force: bool = False, verify: str = "pixels") -> VideoResult:
    """Preprocess one video. Output appears atomically: bins are built in a hidden staging directory,
    fsynced, moved in, and the index is written last; until then the video counts as not done.
    ``verify``: what to check before writing, see preprocess.verify."""
    t0 = time.perf_counter()
    video_root, gop_root = Path(video_root), Path(gop_root)
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        # the index, the manifest and the loader's batches carry paths as UTF-8 text
        raise VideoError(f"{printable(video_root / rel)}: file or folder name is not UTF-8: "
                         "rename it") from None
    out_dir = fmt.video_gop_dir(gop_root, rel)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = open(out_dir / ".lock", "a")
    except OSError as e:
        if e.errno not in READ_ONLY_ERRNOS:
            raise
        # a finished GOP root may be read-only (shared, archived): checking it needs no writes
        if not force and is_up_to_date(video_root, gop_root, rel):
            return _up_to_date_result(gop_root, rel, t0)
        raise VideoError(f"{out_dir}: cannot write here ({e.strerror}) and the video is not up "
                         "to date: make the GOP root writable, or rerun elsewhere") from None
    # one writer per video at a time, also across processes and concurrent preprocess runs
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_video_locked(video_root, gop_root, rel, out_dir, force, verify, t0)


def _write_video_locked(video_root: Path, gop_root: Path, rel: str, out_dir: Path,
                        force: bool, verify: str, t0: float) -> VideoResult:
    for leftover in out_dir.glob(".staging.*"):   # from a run killed midway
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in out_dir.glob(f".{fmt.INDEX_FILENAME}.*.tmp"):
        leftover.unlink(missing_ok=True)
    if not force and is_up_to_date(video_root, gop_root, rel):
        return _up_to_date_result(gop_root, rel, t0)
    where = str(video_root / rel)
    info = source_info(video_root, rel)
    source = _read_packets(video_root / rel)
    if not source.packets:
        raise VideoError(f"{where}: video stream has no packets (zero frames)")
    meta = source.meta
    gops = split_gops(source.packets, meta["codec"], source.parameter_sets, where)
    try:
        if verify != "none":
            crcs = (check.source_crcs(video_root / rel, meta["width"], meta["height"])
                    if verify == "pixels" else None)
            check.check_bins(meta["codec"], gops, meta["width"], meta["height"], crcs)
    except check.Mismatch as e:
        raise VideoError(f"{where}: {e}") from None
    except av.FFmpegError as e:
        raise VideoError(f"{where}: FFmpeg cannot decode it ({e})") from None
    index = fmt.VideoIndex(
        source=info, num_frames=gops[-1][0].end,
        has_b_frames=any(a.frame > b.frame for a, b in zip(source.packets, source.packets[1:])),
        gops=tuple(e for e, _ in gops), **meta)
    index.validate(where)

    stale_index = out_dir / fmt.INDEX_FILENAME
    if stale_index.exists():
        stale_index.unlink()   # from here on the video reads as not done, until the new index lands
        fmt.fsync_dir(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=out_dir))
    try:
        for entry, blob in gops:
            with open(staging / entry.file, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        fmt.fsync_dir(staging)
        for entry, _ in gops:
            os.replace(staging / entry.file, out_dir / entry.file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    wanted = {e.file for e, _ in gops}
    for old in out_dir.glob("gop.*.bin"):
        if old.name not in wanted:   # left by an earlier run over a different source
            old.unlink()
    fmt.fsync_dir(out_dir)
    fmt.write_index(gop_root, rel, index)
    note = None
    if source.ignored_keyframes:
        longest = max(e.count for e, _ in gops)
        note = (f"{source.ignored_keyframes} of {source.ignored_keyframes + len(gops)} keyframes "
                "the container flags are no random-access pictures (intra refresh?), so GOPs "
                f"start only at the other {len(gops)}: up to {longest} frames long, and a random "
                "access decodes from its GOP's start")
    return VideoResult(rel, index.num_frames, len(gops), sum(e.size for e, _ in gops),
                       seconds=time.perf_counter() - t0, note=note)
