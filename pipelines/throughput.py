"""Throughput benchmark: the seed's table (stream and random access, frames/s) and, in the same run
on the same data, the NVDEC ceiling it is measured against.

    python -m pipelines.throughput [--quick] [--data DIR] [--out results.json]

Makes the synthetic nuScenes-like set if absent (10 clips x 6 cameras, 1600x900 HEVC, GOP 30, no
B-frames, 12 fps, 240 frames, textured so the bitrate is camera-like), preprocesses it, then
measures. Frames are counted as the seed counts them: cameras x group_num per batch, after warm-up
batches. "CPU cores" is process CPU time (this process and its DALI workers) over wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import nvtx

from dali_gop.store import GopStore
from dali_gop.synthetic import add_dataset_arguments, dataset_name, dataset_options, make_dataset
from preprocess.runner import preprocess


@dataclass
class Result:
    name: str
    frames_per_s: float
    frames: int
    seconds: float
    cpu_cores: float
    peak_gpu_mib: float
    note: str = ""


def process_cpu_seconds(pid: int | None = None) -> float:
    """CPU time of a process and all its live descendants (DALI's workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [pid or os.getpid()]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += children.get(p, [])
    return total


class GpuMemoryPeak:
    """Device memory in use (all allocators: DALI, NVDEC, torch), sampled in a thread."""

    def __init__(self):
        import torch
        self._torch = torch
        self.base = self._used()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _used(self) -> int:
        free, total = self._torch.cuda.mem_get_info()
        return total - free

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._used())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.base) / 2**20


def measure(name: str, run, note: str = "") -> Result:
    """``run()`` does the work and returns (frames, seconds) of its timed part."""
    memory = GpuMemoryPeak()
    cpu0, wall0 = process_cpu_seconds(), time.perf_counter()
    with nvtx.annotate(name):
        frames, seconds = run()
    cpu = process_cpu_seconds() - cpu0
    wall = time.perf_counter() - wall0
    result = Result(name, frames / seconds, frames, seconds, cpu / wall, memory.stop(), note)
    print(f"  {name:<34} {result.frames_per_s:>9,.0f} frames/s  ({frames} frames, {seconds:.2f} s, "
          f"{result.cpu_cores:.1f} CPU cores, +{result.peak_gpu_mib:,.0f} MiB GPU) {note}", flush=True)
    return result


# -- the NVDEC ceiling: raw decode of the bins, no DALI ----------------------------------------
def nvdec_ceiling(gop_root: Path, videos: list[str], threads: int, rgb: bool = True,
                  limit: int | None = None):
    import torch

    from dali_gop.backends.nvdec import create_decoder, decode_packets, packets_of
    store = GopStore(gop_root)
    work = []
    for video in videos:
        index = store.index(video)
        for gop in index.gops:
            read = store.read([(video, [gop.end - 1])])
            work.append((index.codec, read.data, read.segments[0]))
    work = work[:limit]
    local = threading.local()

    def decode(item):
        codec, data, segment = item
        if not hasattr(local, "decoder"):
            torch.cuda.set_device(0)
            local.stream = torch.cuda.Stream()
            local.decoder = create_decoder(codec, local.stream.cuda_stream, 0, rgb=rgb)
        count = [0]

        def sink(position, frame):
            count[0] += 1

        decode_packets(local.decoder, packets_of(data, segment), sink)
        return count[0]

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, work[:threads]))       # warm-up: one decoder per thread
        started = time.perf_counter()
        frames = sum(pool.map(decode, work))
        torch.cuda.synchronize()
        return frames, time.perf_counter() - started


# -- the loader through DALIGenericIterator -----------------------------------------------------
def loader_run(gop_root: Path, pattern: str, backend: str, group_num: int, workers: int,
               warmup: int, batches: int | None, **options):
    import torch

    from pipelines.loader import make_loader
    loader = make_loader(gop_root, pattern=pattern, backend=backend, batch_size=group_num,
                         num_workers=workers, shard_id=0, num_shards=1, **options)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    torch.cuda.synchronize()
    started, frames, done = time.perf_counter(), 0, 0
    for batch in it:
        frames += batch["frames"].shape[0] * batch["frames"].shape[1] * batch["frames"].shape[2]
        done += 1
        if batches is not None and done >= batches:
            break
    torch.cuda.synchronize()
    return frames, time.perf_counter() - started


def mean_decode_depth(gop_root: Path, pattern: str, group_num: int, **options) -> float:
    """Frames NVDEC decodes per wanted frame when each request is decoded from its GOP start
    (the first 2,000 samples of epoch 0): the divisor of the ceiling in the random target."""
    from dali_gop.sampling import pattern_from_name
    from dali_gop.source import Dataset
    dataset = Dataset.open(gop_root)
    store = GopStore(gop_root)
    access = pattern_from_name(pattern, **options)
    samples = access.epoch_samples(dataset.clips, epoch=0, seed=0, shard_id=0, num_shards=1,
                                   batch_size=group_num)
    decoded = wanted = 0
    for spec in samples[:2000]:
        for camera in dataset.cameras:
            video = f"{spec.clip}/{camera}"
            gop = store.gop_of(video, spec.frames[0])
            decoded += gop.packets_through(max(spec.frames))
            wanted += len(spec.frames)
    return decoded / wanted


def dataset(args) -> tuple[Path, Path, list[str]]:
    """The benchmark set (made once, textured so the bitrate is camera-like), preprocessed."""
    options = {**dataset_options(args), "textured": True}
    videos = args.data / dataset_name(options) / "videos"
    gops = videos.parent / "gops"
    t0 = time.perf_counter()
    paths = make_dataset(videos, **options, progress=True)
    print(f"dataset: {len(paths)} videos in {videos} ({time.perf_counter() - t0:.0f} s), "
          f"{sum(p.stat().st_size for p in paths) / 1e6:.0f} MB")
    summary = preprocess(videos, gops, progress=False)
    print(summary.format())
    return videos, gops, [p.relative_to(videos).as_posix() for p in paths]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/bench"))
    parser.add_argument("--out", type=Path, default=Path("throughput.json"))
    parser.add_argument("--quick", action="store_true", help="small set, few batches: < 1 minute")
    add_dataset_arguments(parser)
    parser.add_argument("--group_num", type=int, default=16,
                        help="clips per batch in stream access (the seed's group_num)")
    parser.add_argument("--random_group_num", type=int, default=8,
                        help="clips per batch in random access (distinct clips: at most --clips)")
    parser.add_argument("--workers", type=int, default=6, help="DALI worker processes")
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 16],
                        help="decode threads for the NVDEC ceiling")
    parser.add_argument("--random_batches", type=int, default=60)
    parser.add_argument("--prepare-only", action="store_true",
                        help="make and preprocess the dataset, measure nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.frames, args.random_batches = 4, 60, 20
    args.random_group_num = min(args.random_group_num, args.clips)
    import torch
    videos, gops, rels = dataset(args)
    if args.prepare_only:
        return
    device = torch.cuda.get_device_name(0)
    print(f"\n{device}, {os.cpu_count()} CPU cores, {platform.python_version()}; "
          f"{args.clips}x{args.cameras} {args.codec} {args.width}x{args.height} GOP {args.gop} "
          f"bframes {args.bframes}; group_num {args.group_num} (stream), {args.random_group_num} "
          f"(random), {args.workers} workers")
    results = []
    for threads in args.threads:
        results.append(measure(f"NVDEC ceiling RGB, {threads} threads",
                               lambda: nvdec_ceiling(gops, rels, threads)))
    results.append(measure(f"NVDEC ceiling NV12, {max(args.threads)} threads",
                           lambda: nvdec_ceiling(gops, rels, max(args.threads), rgb=False)))
    ceiling = max(r.frames_per_s for r in results if "RGB" in r.name)
    warmup = max(2 * args.workers, 8)
    stream = measure("dali-gop stream (nvdec)",
                     lambda: loader_run(gops, "stream", "nvdec", args.group_num, args.workers,
                                        warmup, None))
    depth = mean_decode_depth(gops, "random", args.random_group_num)
    random_ = measure("dali-gop random (nvdec)",
                      lambda: loader_run(gops, "random", "nvdec", args.random_group_num,
                                         args.workers, warmup, args.random_batches),
                      note=f"mean decode depth {depth:.1f}")
    restart = measure("dali-gop stream, no stream decoding",
                      lambda: loader_run(gops, "stream", "nvdec", args.random_group_num,
                                         args.workers, warmup, args.random_batches,
                                         stream_decoding=False),
                      note="each frame decoded from its GOP start")
    results += [stream, random_, restart]
    print(f"\nstream: {stream.frames_per_s:,.0f} frames/s = {stream.frames_per_s / ceiling:.0%} of the "
          f"RGB ceiling {ceiling:,.0f}")
    print(f"random: {random_.frames_per_s:,.0f} frames/s = "
          f"{random_.frames_per_s / (ceiling / depth):.0%} of ceiling / depth "
          f"({ceiling / depth:,.0f})")
    report = {"device": device, "date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
              "args": {k: str(v) for k, v in vars(args).items()}, "ceiling_rgb": ceiling,
              "random_decode_depth": depth, "results": [asdict(r) for r in results]}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\n| measurement | frames/s | CPU cores | peak GPU MiB |\n|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.frames_per_s:,.0f} | {r.cpu_cores:.1f} | {r.peak_gpu_mib:,.0f} |")


if __name__ == "__main__":
    main()
