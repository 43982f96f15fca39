"""Preprocess a whole dataset: find videos, split them over processes, report, write the manifest."""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dali_gop import format as fmt
from preprocess.writer import VideoResult, write_video

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv")


def find_videos(video_root: str | os.PathLike) -> list[str]:
    """Video paths relative to ``video_root``, '/'-separated, sorted (so shards are deterministic)."""
    root = Path(video_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: video root is not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith("."):
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(found)


def shard(videos: list[str], shard_id: int, num_shards: int) -> list[str]:
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard {shard_id}/{num_shards}: need 0 <= i < N")
    return videos[shard_id::num_shards]


def _process_one(video_root: str, gop_root: str, rel: str, force: bool) -> VideoResult:
    try:
        return write_video(video_root, gop_root, rel, force=force)
    except Exception as e:   # one bad video must not stop the others: report it by path and reason
        return VideoResult(rel, error=f"{type(e).__name__}: {e}")


@dataclass
class Summary:
    results: list[VideoResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[VideoResult]:
        return [r for r in self.results if r.error]

    def format(self) -> str:
        ok = [r for r in self.results if not r.error]
        written = [r for r in ok if not r.skipped]
        mbytes = sum(r.bytes for r in written) / 1e6
        lines = [
            f"videos: {len(self.results)} ({len(written)} written, {len(ok) - len(written)} "
            f"up to date, {len(self.failed)} failed)",
            f"GOPs: {sum(r.gops for r in ok)}  frames: {sum(r.frames for r in ok)}  "
            f"bytes: {sum(r.bytes for r in ok):,}",
            f"time: {self.seconds:.1f} s  ({len(written) / max(self.seconds, 1e-9):.2f} videos/s, "
            f"{mbytes / max(self.seconds, 1e-9):.1f} MB/s written)",
        ]
        for r in self.failed:
            lines.append(f"FAILED {r.rel}: {r.error}")
        return "\n".join(lines)


def preprocess(video_root: str | os.PathLike, gop_root: str | os.PathLike, *, workers: int | None = None,
               shard_id: int = 0, num_shards: int = 1, force: bool = False,
               progress: bool = True) -> Summary:
    video_root, gop_root = Path(video_root), Path(gop_root)
    everything = find_videos(video_root)
    videos = shard(everything, shard_id, num_shards)
    gop_root.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    summary, t0 = Summary(), time.perf_counter()
    bar = tqdm(total=len(videos), unit="video", disable=not progress, file=sys.stderr,
               desc=f"preprocess {shard_id}/{num_shards}" if num_shards > 1 else "preprocess")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_process_one, str(video_root), str(gop_root), rel, force)
                   for rel in videos]
        for future in as_completed(futures):
            result = future.result()
            summary.results.append(result)
            bar.update()
            if result.error:
                bar.write(f"FAILED {result.rel}: {result.error}", file=sys.stderr)
    bar.close()
    summary.results.sort(key=lambda r: r.rel)
    summary.seconds = time.perf_counter() - t0
    write_manifest(video_root, gop_root, everything)
    return summary


def write_manifest(video_root: Path, gop_root: Path, videos: list[str]) -> fmt.DatasetManifest:
    """Manifest of every video of the dataset that is complete now (any shard may have written it):
    the shard that finishes last writes the full one."""
    clips: dict[str, dict[str, int]] = {}
    cameras: dict[str, list[str]] = {}
    summaries: dict[str, fmt.VideoSummary] = {}
    for rel in videos:
        try:
            index = fmt.read_index(gop_root, rel)
        except fmt.FormatError:
            continue
        clip, _, camera = rel.rpartition("/")
        clip = clip or rel
        summaries[rel] = fmt.VideoSummary.of(index)
        cameras.setdefault(clip, []).append(camera)
        clips[clip] = min(clips.get(clip, index.num_frames), index.num_frames)
    manifest = fmt.DatasetManifest(video_dirs={str(video_root): clips}, cameras=cameras,
                                   videos=summaries)
    fmt.remove_dead_writers_temps(gop_root / fmt.MANIFEST_FILENAME)   # a run killed mid-write
    fmt.write_atomic(gop_root / fmt.MANIFEST_FILENAME, manifest.to_json().encode())
    return manifest
