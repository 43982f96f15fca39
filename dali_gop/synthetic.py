"""Synthetic multi-camera video dataset for tests, the demo and the benchmark.

Every frame carries its own frame number as big seven-segment digits, so a test
(or a person looking at a picture) can tell whether frame ``k`` really shows ``k``
after demuxing, GOP slicing and decoding. Each camera has its own stripe pattern
and colours, so a mixed-up camera is visible too, and two bars jump across the
picture from frame to frame so that the encoder produces real P/B frames.

The GOP structure is controlled exactly (fixed keyframe interval, B-frames, open or
closed GOPs, forced scene-cut keyframes) because the loader's correctness depends
on it; see :func:`make_video` for the encoder options that achieve each case.

Command line::

    python -m dali_gop.synthetic OUT_DIR --clips 4 --cameras 6 --frames 240 \\
        --width 1600 --height 900 --codec hevc --gop 30
"""

from __future__ import annotations

import argparse
import bisect
import concurrent.futures
import functools
import math
import os
import time
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType

from dali_gop._spawn import process_pool

__all__ = ["render_frame", "read_frame_number", "make_video", "make_dataset", "main"]

# --- frame content -----------------------------------------------------------------

NUM_DIGITS = 5  # frame numbers 0..99999 (2.3 h at 12 fps)

# Digits are drawn on a 3x5 grid of square cells; each segment is a row or column
# of cells. The middle cell of each segment belongs to that segment alone, which is
# where read_frame_number samples it.
_DIGIT_COLS, _DIGIT_ROWS = 3, 5
# segment -> (rows, cols) slices in cell units
_SEGMENTS = {
    "a": (slice(0, 1), slice(0, 3)),
    "b": (slice(0, 3), slice(2, 3)),
    "c": (slice(2, 5), slice(2, 3)),
    "d": (slice(4, 5), slice(0, 3)),
    "e": (slice(2, 5), slice(0, 1)),
    "f": (slice(0, 3), slice(0, 1)),
    "g": (slice(2, 3), slice(0, 3)),
}
# segment -> (row, col) of the cell that only this segment covers
_SAMPLE_CELLS = {"a": (0, 1), "b": (1, 2), "c": (3, 2), "d": (4, 1), "e": (3, 0), "f": (1, 0), "g": (2, 1)}
_DIGIT_SEGMENTS = ["abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg"]
_SEGMENTS_TO_DIGIT = {frozenset(s): d for d, s in enumerate(_DIGIT_SEGMENTS)}

# Panel in cell units: the digits, a one-cell gap between digits and a one-cell
# black border all round, so the bars never touch a segment.
_PANEL_COLS = NUM_DIGITS * _DIGIT_COLS + (NUM_DIGITS - 1) + 2
_PANEL_ROWS = _DIGIT_ROWS + 2
_MIN_CELL = 3  # pixels; smaller cells do not survive 4:2:0 + CRF 28 reliably

# Per-camera look: stripe angle (degrees) and colour. Eight distinct cameras, then
# the looks repeat.
_CAMERA_ANGLES = (0.0, 90.0, 45.0, 135.0, 22.5, 112.5, 67.5, 157.5)
_CAMERA_COLORS = (
    (230, 60, 40),
    (40, 170, 230),
    (60, 200, 60),
    (230, 200, 40),
    (180, 60, 220),
    (240, 130, 30),
    (30, 200, 170),
    (200, 200, 200),
)


def _cell_size(width: int, height: int) -> int:
    """Pixels per digit cell: the panel takes at most 80% of the width and 40% of the height."""
    cell = min(int(0.8 * width / _PANEL_COLS), int(0.4 * height / _PANEL_ROWS))
    if cell < _MIN_CELL:
        raise ValueError(f"{width}x{height} is too small for the frame-number panel")
    return cell


def _panel_origin(width: int, height: int, cell: int) -> tuple[int, int]:
    """Top-left pixel (y, x) of the centred panel."""
    return (height - _PANEL_ROWS * cell) // 2, (width - _PANEL_COLS * cell) // 2


def _digit_origins(width: int, height: int, cell: int) -> list[tuple[int, int]]:
    """Top-left pixel (y, x) of each digit, most significant first."""
    py, px = _panel_origin(width, height, cell)
    return [(py + cell, px + cell * (1 + i * (_DIGIT_COLS + 1))) for i in range(NUM_DIGITS)]


@functools.lru_cache(maxsize=16)
def _background(camera: int, width: int, height: int, inverted: bool) -> np.ndarray:
    """Static per-camera stripes; cached because it is the only full-frame computation."""
    angle = math.radians(_CAMERA_ANGLES[camera % len(_CAMERA_ANGLES)])
    period = max(8, min(width, height) // 6)
    y, x = np.ogrid[:height, :width]
    phase = (x * math.cos(angle) + y * math.sin(angle)) // (period / 2)
    stripes = (phase.astype(np.int64) % 2).astype(bool)
    color = np.array(_CAMERA_COLORS[camera % len(_CAMERA_COLORS)], np.uint8)
    image = np.where(stripes[..., None], color, color // 4)
    if inverted:
        image = 255 - image
    image.flags.writeable = False
    return image


def _wrapped_slices(start: int, length: int, size: int) -> list[slice]:
    """[start, start+length) modulo size, as at most two slices (cheaper than a mask)."""
    start %= size
    end = start + length
    return [slice(start, min(end, size))] + ([slice(0, end - size)] if end > size else [])


def _draw_moving_bars(image: np.ndarray, frame_index: int) -> None:
    """A white vertical bar and a magenta horizontal band that jump ~37%/~29% of the
    frame per frame (wrapping), so consecutive frames differ over large areas."""
    height, width = image.shape[:2]
    for columns in _wrapped_slices(frame_index * width * 37 // 100, max(2, width // 10), width):
        image[:, columns] = 255
    for rows in _wrapped_slices(frame_index * height * 29 // 100, max(2, height // 8), height):
        image[rows] = (255, 0, 255)


def _draw_number(image: np.ndarray, number: int, cell: int) -> None:
    """Black panel with white seven-segment digits (zero padded to NUM_DIGITS)."""
    height, width = image.shape[:2]
    py, px = _panel_origin(width, height, cell)
    image[py : py + _PANEL_ROWS * cell, px : px + _PANEL_COLS * cell] = 0
    for (y, x), digit in zip(_digit_origins(width, height, cell), f"{number:0{NUM_DIGITS}d}", strict=True):
        for segment in _DIGIT_SEGMENTS[int(digit)]:
            rows, cols = _SEGMENTS[segment]
            image[y + rows.start * cell : y + rows.stop * cell, x + cols.start * cell : x + cols.stop * cell] = 255


@functools.lru_cache(maxsize=16)
def _texture(camera: int, width: int, height: int) -> np.ndarray:
    """Per-camera fine noise, twice as wide as the frame, for ``textured`` frames."""
    rng = np.random.default_rng(camera)
    noise = rng.integers(0, 96, size=(height, 2 * width, 1), dtype=np.uint8)
    noise.flags.writeable = False
    return noise


def render_frame(frame_index: int, camera: int, width: int, height: int, *, scene: int = 0,
                 textured: bool = False) -> np.ndarray:
    """Render frame ``frame_index`` of ``camera`` as (height, width, 3) uint8 RGB.

    ``scene`` simulates a scene cut: odd scenes invert the background (not the
    digits), so the picture changes completely at a cut like in real footage.
    ``textured`` adds fine noise panning across the picture like a moving camera's view,
    so the encoder spends bits as on real footage (a few Mbit/s at 1600x900 instead of
    ~0.2) and decoder benchmarks see a realistic bitstream.
    """
    if not 0 <= frame_index < 10**NUM_DIGITS:
        raise ValueError(f"frame_index {frame_index} does not fit in {NUM_DIGITS} digits")
    cell = _cell_size(width, height)
    image = _background(camera, width, height, scene % 2 == 1).copy()
    if textured:
        shift = (frame_index * 7) % width
        image //= 2
        image += _texture(camera, width, height)[:, shift:shift + width]
    _draw_moving_bars(image, frame_index)
    _draw_number(image, frame_index, cell)
    return image


def _cell_luma(rgb: np.ndarray, y: int, x: int, cell: int) -> float:
    """Mean luma of the inner part of one cell (its border is smeared by compression)."""
    margin = cell // 4
    patch = rgb[y + margin : y + cell - margin, x + margin : x + cell - margin].reshape(-1, 3)
    return float(patch.mean(axis=0) @ (0.299, 0.587, 0.114))


def read_frame_number(rgb: np.ndarray) -> int:
    """Read back the number drawn by :func:`render_frame` from a decoded RGB frame.

    Samples one cell per segment and thresholds it at mid grey; returns -1 if the
    panel is not dark or a digit is not a valid seven-segment pattern, i.e. when the
    picture is not a (sufficiently intact) frame of render_frame.
    """
    height, width = rgb.shape[:2]
    try:
        cell = _cell_size(width, height)
    except ValueError:
        return -1
    py, px = _panel_origin(width, height, cell)
    if _cell_luma(rgb, py, px, cell) > 64:  # panel corner must be black
        return -1
    number = 0
    for y, x in _digit_origins(width, height, cell):
        lit = frozenset(
            segment
            for segment, (row, col) in _SAMPLE_CELLS.items()
            if _cell_luma(rgb, y + row * cell, x + col * cell, cell) > 128
        )
        digit = _SEGMENTS_TO_DIGIT.get(lit)
        if digit is None:
            return -1
        number = number * 10 + digit
    return number


# --- encoding ------------------------------------------------------------------------

_CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
_ENCODERS = {"h264": "libx264", "hevc": "libx265"}
# veryfast keeps a 1600x900 HEVC clip in the tens of seconds; the GOP-relevant
# settings are all overridden explicitly below, so the preset only trades quality.
_PRESET = "veryfast"
_AUDIO_RATE = 48000
_AUDIO_HZ = 440.0


def _encoder_options(codec: str, *, gop: int, bframes: int, open_gop: bool, crf: int, threads: int) -> dict[str, str]:
    """libavcodec options for libx264/libx265 giving exactly the requested GOP structure.

    - keyint=min-keyint=gop and scenecut=0: keyframes only every ``gop`` frames
      (x264 silently clamps min-keyint to keyint/2+1, irrelevant with scenecut off).
    - b-adapt=0: the encoder would otherwise be free to use fewer B-frames than
      ``bframes`` (or none), and tests need them to really be there.
    - open-gop is set both ways because x265 defaults to open GOPs.
    - forced-idr=1: a frame sent with pict_type I becomes an IDR (x264) or a
      keyframe (x265: IDR, or CRA with open-gop) instead of a plain I frame; x265
      without it emits a non-keyframe I slice.
    """
    gop_params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:b-adapt=0:open-gop={int(open_gop)}"
    options = {"preset": _PRESET, "crf": str(crf), "forced-idr": "1"}
    if codec == "h264":
        options["x264-params"] = gop_params
    else:
        options["x265-params"] = f"{gop_params}:pools={threads}:frame-threads=1:log-level=error"
    return options


def _add_video_stream(container, codec: str, *, fps: int, width: int, height: int, pix_fmt: str, options, threads: int):
    """Video stream whose pts count frames (time base 1/fps), so frame k has pts k."""
    stream = container.add_stream(_ENCODERS[codec], rate=fps, options=options)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.codec_context.time_base = Fraction(1, fps)
    stream.codec_context.thread_count = threads  # x264 threads; x265 uses pools= above
    if codec == "hevc" and container.format.name != "matroska":
        # libx265 puts VPS/SPS/PPS only in the hvcC box here (global header), which is
        # what the hvc1 tag means; most real MP4s use it, FFmpeg defaults to hev1.
        stream.codec_tag = "hvc1"
    return stream


def _audio_frame(start: int, stop: int) -> av.AudioFrame:
    """Mono float sine covering samples [start, stop)."""
    t = np.arange(start, stop) / _AUDIO_RATE
    samples = (0.2 * np.sin(2 * np.pi * _AUDIO_HZ * t)).astype(np.float32)[None]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = _AUDIO_RATE
    frame.pts = start
    return frame


def _check_video_args(
    path: Path, *, frames: int, width: int, height: int, gop: int, codec: str, bframes: int, scene_cuts: Sequence[int]
) -> None:
    if path.suffix.lower() not in _CONTAINER_FORMATS:
        raise ValueError(f"unsupported container {path.suffix!r}; use one of {sorted(_CONTAINER_FORMATS)}")
    if codec not in _ENCODERS:
        raise ValueError(f"unsupported codec {codec!r}; use one of {sorted(_ENCODERS)}")
    if frames < 1 or gop < 1 or bframes < 0:
        raise ValueError("frames and gop must be >= 1 and bframes >= 0")
    if width % 2 or height % 2:
        raise ValueError(f"4:2:0 needs even dimensions, got {width}x{height}")
    if any(not 0 < cut < frames for cut in scene_cuts):
        raise ValueError(f"scene cuts must lie in 1..{frames - 1}, got {list(scene_cuts)}")


def make_video(
    path: str | os.PathLike,
    *,
    frames: int,
    width: int,
    height: int,
    fps: int = 12,
    gop: int = 30,
    codec: str = "h264",
    bframes: int = 0,
    open_gop: bool = False,
    scene_cuts: Sequence[int] = (),
    audio: bool = False,
    camera: int = 0,
    crf: int = 28,
    pix_fmt: str = "yuv420p",
    textured: bool = False,
    threads: int = 1,
) -> Path:
    """Encode frames 0..frames-1 of ``camera`` into ``path`` (.mp4, .mov or .mkv).

    ``gop`` is the keyframe interval: with no scene cuts keyframes sit exactly at
    0, gop, 2*gop, ... ``bframes`` is the number of consecutive B-frames.

    ``open_gop=True`` makes keyframes after the first open: CRA pictures (HEVC) or
    non-IDR I frames with a recovery point (H.264) followed in decode order by
    B-frames that display before them (leading pictures, RASL in HEVC). Leading
    pictures need B-frames, so with ``bframes=0`` an open GOP is only nominal.

    ``scene_cuts`` are frame indices that additionally start a keyframe (sent as
    forced I frames, which ``forced-idr`` turns into keyframes) and where the
    picture content changes completely; the encoder restarts its keyint count there,
    e.g. gop=30, cut at 17 -> keyframes 0, 17, 47.

    ``audio`` adds a mono AAC sine track. ``pix_fmt`` may be e.g. yuv420p10le to
    produce streams a loader is expected to reject. ``threads`` stays low so that
    many videos encode in parallel processes.

    The file is written under a temporary name in the same directory and renamed
    at the end, so an existing ``path`` is always complete.
    """
    path = Path(path)
    _check_video_args(
        path, frames=frames, width=width, height=height, gop=gop, codec=codec, bframes=bframes, scene_cuts=scene_cuts
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    cuts = sorted(set(scene_cuts))
    options = _encoder_options(codec, gop=gop, bframes=bframes, open_gop=open_gop, crf=crf, threads=threads)
    try:
        with av.open(str(tmp), "w", format=_CONTAINER_FORMATS[path.suffix.lower()]) as container:
            video = _add_video_stream(
                container, codec, fps=fps, width=width, height=height, pix_fmt=pix_fmt, options=options, threads=threads
            )
            sound = container.add_stream("aac", rate=_AUDIO_RATE, layout="mono") if audio else None
            samples_done = 0
            for index in range(frames):
                rgb = render_frame(index, camera, width, height, scene=bisect.bisect_right(cuts, index),
                                   textured=textured)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = index
                if index in cuts:
                    frame.pict_type = PictureType.I
                container.mux(video.encode(frame))
                if sound is not None:  # keep the audio interleaved with the video
                    samples_end = (index + 1) * _AUDIO_RATE // fps
                    container.mux(sound.encode(_audio_frame(samples_done, samples_end)))
                    samples_done = samples_end
            container.mux(video.encode(None))
            if sound is not None:
                container.mux(sound.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --- dataset -------------------------------------------------------------------------


def _progress(iterable: Iterable, total: int, enabled: bool) -> Iterable:
    """Wrap in a tqdm bar when asked, there is work, and tqdm is installed (it is optional here)."""
    if enabled and total:
        try:
            from tqdm import tqdm
        except ImportError:
            return iterable
        return tqdm(iterable, total=total, unit="video")
    return iterable


def make_dataset(
    root: str | os.PathLike,
    *,
    clips: int = 2,
    cameras: int = 6,
    frames: int = 60,
    width: int = 160,
    height: int = 96,
    fps: int = 12,
    gop: int = 30,
    codec: str = "h264",
    bframes: int = 0,
    open_gop: bool = False,
    textured: bool = False,
    workers: int | None = None,
    ext: str = ".mp4",
    progress: bool = False,
) -> list[Path]:
    """Make ``root/clip{i:03d}/cam{j}{ext}``: clips of synchronised cameras, nuScenes-like.

    Videos that already exist are skipped (make_video only ever renames complete
    files into place), so an interrupted run can simply be repeated. Encoding runs
    in a process pool of ``workers`` processes (default: one per CPU; 1 encodes in
    this process). Returns all video paths of the dataset, sorted.
    """
    root = Path(root)
    videos = [(cam, root / f"clip{clip:03d}" / f"cam{cam}{ext}") for clip in range(clips) for cam in range(cameras)]
    todo = [(cam, path) for cam, path in videos if not path.exists()]
    encode = functools.partial(
        make_video,
        frames=frames,
        width=width,
        height=height,
        fps=fps,
        gop=gop,
        codec=codec,
        bframes=bframes,
        open_gop=open_gop,
        textured=textured,
    )
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(todo) == 1:
        for cam, path in _progress(todo, len(todo), progress):
            encode(path, camera=cam)
    elif todo:
        with process_pool(min(workers, len(todo))) as pool:
            futures = [pool.submit(encode, path, camera=cam) for cam, path in todo]
            for future in _progress(concurrent.futures.as_completed(futures), len(futures), progress):
                future.result()
    return sorted(path for _, path in videos)


#: the benchmark's default: nuScenes-like clips of 6 cameras
NUSCENES_LIKE = dict(clips=10, cameras=6, frames=240, width=1600, height=900, fps=12, gop=30,
                     codec="hevc", bframes=0)
_SHAPE_OPTIONS = ("clips", "cameras", "frames", "width", "height", "fps", "gop", "bframes")


def add_dataset_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    """The synthetic set's shape as command-line options (defaults: :data:`NUSCENES_LIKE`)."""
    defaults = {**NUSCENES_LIKE, **defaults}
    for name in _SHAPE_OPTIONS:
        parser.add_argument(f"--{name}", type=int, default=defaults[name])
    parser.add_argument("--codec", choices=sorted(_ENCODERS), default=defaults["codec"])
    parser.add_argument("--textured", action="store_true",
                        help="noisy frames: a few Mbit/s like camera footage instead of ~0.2")


def dataset_options(args: argparse.Namespace) -> dict:
    """make_dataset keyword arguments from :func:`add_dataset_arguments`'s options."""
    return {name: getattr(args, name) for name in (*_SHAPE_OPTIONS, "codec", "textured")}


def dataset_name(options: dict) -> str:
    """A folder name that tells the set's shape, so sets of different shapes never mix."""
    return (f"{options['codec']}-{options['width']}x{options['height']}-{options['frames']}f-"
            f"g{options['gop']}-b{options['bframes']}-{options['clips']}x{options['cameras']}"
            f"{'-textured' if options.get('textured') else ''}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    add_dataset_arguments(parser, clips=2, frames=60, width=160, height=96, codec="h264")
    parser.add_argument("--open-gop", action="store_true")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--ext", choices=sorted(_CONTAINER_FORMATS), default=".mp4")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    paths = make_dataset(args.out_dir, **dataset_options(args), open_gop=args.open_gop,
                         workers=args.workers, ext=args.ext, progress=True)
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    print(
        f"{len(paths)} videos ({args.clips} clips x {args.cameras} cameras, {args.frames} frames "
        f"{args.width}x{args.height} @ {args.fps} fps, {args.codec}, gop {args.gop}, bframes {args.bframes}, "
        f"{'open' if args.open_gop else 'closed'} GOP) in {args.out_dir}: {size_mb:.1f} MB, "
        f"{time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
