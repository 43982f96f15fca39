"""Preprocess a whole dataset: find videos, split them over processes, report, write the manifest."""
from __future__ import annotations

import multiprocessing.util
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dali_gop import format as fmt
from dali_gop._spawn import process_pool
from dali_gop.errors import ConfigError
from preprocess import verify as check
from preprocess.writer import READ_ONLY_ERRNOS, VideoResult, printable, write_video

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv")
LAYOUT = "<video-root>/<clip>/<camera>.mp4"
STOP_GRACE_S = 1.0   # after Ctrl-C, how long a worker may take to remove its staging files


def find_videos(video_root: str | os.PathLike) -> list[str]:
    """Video paths relative to ``video_root``, '/'-separated, sorted (so shards are deterministic)."""
    return _discover(Path(video_root))[0]


def _discover(root: Path) -> tuple[list[str], list[str]]:
    """(videos, directory links not followed). Links are followed, each directory walked once: a
    link to the root, into it (that directory is found under its own name) or above it (a loop) is
    skipped, as is a second way into a directory already walked."""
    if not root.is_dir():
        state = "is not a directory" if root.exists() else "does not exist"
        raise ConfigError(f"{printable(root)}: video root {state}: expected {LAYOUT}")
    real_root = Path(os.path.realpath(root))
    walked, found, skipped = {real_root}, [], []

    def unreadable(error: OSError) -> None:   # os.walk would skip it, and its videos, silently
        raise error

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        keep = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            path = Path(dirpath) / name
            real = Path(os.path.realpath(path))
            loops = path.is_symlink() and (real == real_root or real_root in real.parents
                                           or real in real_root.parents)
            if loops or real in walked:
                skipped.append(f"{printable(path.relative_to(root))} -> {printable(real)}")
                continue
            walked.add(real)
            keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith("."):
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    if not found:
        raise ConfigError(f"{printable(root)}: no videos ({', '.join(VIDEO_EXTENSIONS)}) found: "
                          f"expected {LAYOUT}")
    flat = sorted(printable(rel) for rel in found if "/" not in rel)
    if flat:
        raise ConfigError(f"{printable(root)}: {len(flat)} video(s) directly under the video root "
                          f"({', '.join(flat[:3])}{', ...' if len(flat) > 3 else ''}): expected "
                          f"{LAYOUT}, a folder per clip holding its cameras' videos")
    return sorted(found), skipped


def shard(videos: list[str], shard_id: int, num_shards: int) -> list[str]:
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard {shard_id}/{num_shards}: need 0 <= i < N")
    return videos[shard_id::num_shards]


def _worker_init() -> None:
    # A terminal's Ctrl-C reaches the whole process group: the main process alone acts on it,
    # stopping the workers with SIGTERM (see _stop_workers)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_stop)


def _worker_stop(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # let the unwinding below run to its end
    raise SystemExit(130)   # unwinds write_video: its finally blocks remove staging and temp files


def _process_one(video_root: str, gop_root: str, rel: str, force: bool, verify: str) -> VideoResult:
    try:
        return write_video(video_root, gop_root, rel, force=force, verify=verify)
    except SystemExit:
        os._exit(130)   # stopped: the pool's worker loop would take the next video otherwise
    except Exception as e:   # one bad video must not stop the others: report it by path and reason
        return VideoResult(rel, error=f"{type(e).__name__}: {e}")


@dataclass
class Summary:
    results: list[VideoResult] = field(default_factory=list)
    seconds: float = 0.0
    manifest_error: str | None = None

    @property
    def failed(self) -> list[VideoResult]:
        return [r for r in self.results if r.error]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.manifest_error

    def counts(self) -> str:
        written = sum(1 for r in self.results if not r.error and not r.skipped)
        up_to_date = sum(1 for r in self.results if r.skipped)
        return f"{written} written, {up_to_date} up to date, {len(self.failed)} failed"

    def format(self) -> str:
        """The totals; each failure has had its own line (``failure_line``) as it happened."""
        ok = [r for r in self.results if not r.error]
        written = [r for r in ok if not r.skipped]
        mbytes = sum(r.bytes for r in written) / 1e6
        lines = [
            f"videos: {len(self.results)} ({self.counts()})",
            f"GOPs: {sum(r.gops for r in ok)}  frames: {sum(r.frames for r in ok)}  "
            f"bytes: {sum(r.bytes for r in ok):,}",
            f"time: {self.seconds:.1f} s  ({len(written) / max(self.seconds, 1e-9):.2f} videos/s, "
            f"{mbytes / max(self.seconds, 1e-9):.1f} MB/s written)",
        ]
        if self.failed:
            lines.append(f"{len(self.failed)} video(s) FAILED (see the lines above): fix or "
                         "remove them and rerun; the others are done")
        if self.manifest_error:
            lines.append("the manifest is not updated (see the FAILED line above)")
        return "\n".join(lines)


def failure_line(result: VideoResult) -> str:
    return f"FAILED {printable(result.rel)}: {result.error}"


def preprocess(video_root: str | os.PathLike, gop_root: str | os.PathLike, *, workers: int | None = None,
               shard_id: int = 0, num_shards: int = 1, force: bool = False,
               progress: bool = True, verify: str = "pixels") -> Summary:
    """Preprocess every video under ``video_root``. Failed videos are reported on stderr, one
    line each, as they happen. Ctrl-C stops the workers (see _stop_workers) and raises
    KeyboardInterrupt once every finished video is complete and nothing half-written is left."""
    if verify not in check.MODES:
        raise ConfigError(f"verify={verify!r}: expected one of {check.MODES}")
    video_root, gop_root = Path(video_root), Path(gop_root)
    for root in (video_root, gop_root):
        try:
            str(root).encode("utf-8")
        except UnicodeEncodeError:   # the manifest, indexes and the loader hold paths as UTF-8
            raise ConfigError(f"{printable(root)}: path is not UTF-8: rename it") from None
    everything, skipped_links = _discover(video_root)
    videos = shard(everything, shard_id, num_shards)
    gop_root.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    summary, t0 = Summary(), time.perf_counter()
    bar = tqdm(total=len(videos), unit="video", disable=not progress, file=sys.stderr,
               desc=f"preprocess {shard_id}/{num_shards}" if num_shards > 1 else "preprocess")
    if skipped_links:
        bar.write(f"note: {len(skipped_links)} directory link(s) not followed, as they lead where "
                  f"the walk has been or will be (loops, second names): {skipped_links[0]}"
                  f"{', ...' if len(skipped_links) > 1 else ''}", file=sys.stderr)
    pool = process_pool(workers, initializer=_worker_init)
    futures: dict = {}
    reported = set()

    def report(future) -> None:
        try:
            result = future.result()
        except BrokenProcessPool:
            result = VideoResult(futures[future], error="a worker process died (killed, or out "
                                 "of memory): rerun, with fewer --workers if memory is short")
        reported.add(future)
        summary.results.append(result)
        bar.update()
        if result.error:
            bar.write(failure_line(result), file=sys.stderr)
        if result.note:
            bar.write(f"NOTE {printable(result.rel)}: {result.note}", file=sys.stderr)

    try:
        futures = {pool.submit(_process_one, str(video_root), str(gop_root), rel, force,
                               verify): rel for rel in videos}
        for future in as_completed(futures):
            report(future)
    except KeyboardInterrupt:
        _stop_workers(pool)
        for future in futures:   # finished while we were interrupted
            if future not in reported and future.done() and not future.cancelled() \
                    and not future.exception():
                report(future)
        bar.write(f"interrupted: {len(summary.results)} of {len(videos)} videos done "
                  f"({summary.counts()}), each complete; nothing half-written is left. Rerun to "
                  "do the rest (the manifest is not updated)", file=sys.stderr)
        bar.close()
        raise
    pool.shutdown()
    bar.close()
    summary.results.sort(key=lambda r: r.rel)
    summary.seconds = time.perf_counter() - t0
    try:
        write_manifest(video_root, gop_root, everything)
    except ConfigError as e:   # the videos' outputs are fine: report it as one more failure
        summary.manifest_error = str(e)
        print(f"FAILED {e}", file=sys.stderr)
    return summary


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """SIGTERM to every worker: each unwinds the video it is writing (removing its staging and
    temp files) and exits. Whoever is not gone after STOP_GRACE_S is killed, and so is everyone at
    a second Ctrl-C; what they leave is hidden (dot files) and removed by the next run."""
    processes = list(pool._processes.values())   # Python < 3.14 has no public way to stop them

    def kill_all(*_) -> None:
        for p in processes:
            if p.is_alive():
                p.kill()

    def second_interrupt(*_) -> None:
        kill_all()
        # the pool's named semaphores, unlinked as a normal exit would: os._exit skips that, and
        # the resource tracker would then warn of each as leaked after the line below
        multiprocessing.util._run_finalizers(0)
        sys.stderr.write("\ninterrupted again: stopped at once\n")   # the bar has no newline
        sys.stderr.flush()
        os._exit(130)

    signal.signal(signal.SIGINT, second_interrupt)
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    kill_all()


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
    path, data = gop_root / fmt.MANIFEST_FILENAME, manifest.to_json().encode()
    try:
        unchanged = path.read_bytes() == data
    except OSError:
        unchanged = False
    if not unchanged:   # (a rerun on a finished, read-only GOP root writes nothing)
        try:
            fmt.remove_dead_writers_temps(path)   # a run killed mid-write
            fmt.write_atomic(path, data)
        except OSError as e:   # the error itself names a temp file
            hint = ": make the GOP root writable" if e.errno in READ_ONLY_ERRNOS else ""
            raise ConfigError(f"{path}: cannot update the manifest ({e.strerror}){hint}; an "
                              "old one stays as it was") from e
    return manifest
