"""Throughput benchmark: frames/s of the dali-gop loader against the NVDEC ceiling and against what
a DALI or PyNvVideoCodec user has today, in one run on the same data.

    python -m pipelines.throughput [--quick] [--data DIR] [--out results.json] [--chart results.png]
    torchrun --nproc_per_node N -m pipelines.throughput ...     # one rank per GPU, figures summed

Makes the synthetic nuScenes-like set if absent (10 clips x 6 cameras, 1600x900 HEVC, GOP 30, no
B-frames, 12 fps, 240 frames, textured so the bitrate is camera-like), preprocesses it, then
measures (``--skip`` leaves groups out):

  ceiling  NVDEC ceiling: raw PyNvVideoCodec decode of the GOP bins, no DALI, frames not copied
  loader   dali-gop loader on the --backend (nvdec; cpu runs without a GPU): stream, random, and
           stream order with stream decoding off
  dali     dali-gop loader on the dali backend (DALI's fn.decoders.video on the GOP bytes)
  reader   DALI fn.readers.video(device="gpu") on the mp4 files: in file order, and
           random_shuffle=True (the frame list is shuffled whole at setup, and initial_fill=1024
           samples are shuffled locally on top), one frame per sample
  pynvc    PyNvVideoCodec on the mp4 files, demuxed at run time: each file decoded whole
           (CreateDemuxer + a decoder per thread), and random frames through SimpleDecoder
           (reconfigured to each frame's video; it seeks to the keyframe before the frame and
           decodes forward)
(reader and pynvc run in pipelines/baselines.py.)

Frames are counted as delivered after warm-up batches (loader: samples x cameras x T per batch;
readers.video: frames in each batch). The dali-gop stream row times ``--stream_epochs`` whole epochs
after a first one untimed: a training run's steady state, epoch boundaries included (the first epoch
also pays for the caching allocator's first blocks and the decoders' creation); one epoch of the
default set is under 2 s, too short to time alone. "CPU cores" is process CPU time (this process and
its DALI workers) over wall time; "peak GPU MiB" is device memory in use (all allocators) above the
measurement's start. Under torchrun each rank measures its own shard on its own GPU (LOCAL_RANK),
all ranks at once; rank 0 prints per-rank and summed figures and writes the JSON and the chart.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import nvtx

from dali_gop._store import GopStore
from dali_gop.synthetic import add_dataset_arguments, dataset_name, dataset_options, make_dataset
from pipelines.baselines import pynvc_random, pynvc_stream, reader_run, timed_in_threads
from preprocess.runner import preprocess

STREAM, RANDOM = "stream", "random"
# --quick: defaults for a run of about a minute (explicit options still win)
QUICK = dict(clips=4, frames=60, warmup=6, random_batches=6, baseline_batches=3, threads=[16])


@dataclass
class Result:
    name: str
    frames_per_s: float
    frames: int
    seconds: float
    cpu_cores: float
    peak_gpu_mib: float | None     # None: measured without a GPU
    note: str = ""
    method: str = ""               # what was measured, the chart's group: "dali-gop (nvdec)"
    access: str = STREAM           # stream or random


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
    """Device memory in use on GPU ``device`` (all allocators: DALI, NVDEC, torch), sampled in a
    thread; with ``device=None`` (no GPU) nothing is sampled and :meth:`stop` returns None."""

    def __init__(self, device: int | None):
        self.device = device
        if device is None:
            return
        import torch
        self._torch = torch
        self.base = self.peak = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _used(self) -> int:
        # the device explicitly: the current device is per thread
        free, total = self._torch.cuda.mem_get_info(self.device)
        return total - free

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._used())

    def stop(self) -> float | None:
        if self.device is None:
            return None
        self._stop.set()
        self._thread.join()
        return (self.peak - self.base) / 2**20


def measure(name: str, run: Callable[[], tuple[int, float]], *, method: str = "",
            access: str = STREAM, note: str = "", device: int | None = 0,
            verbose: bool = True) -> Result:
    """``run()`` does the work and returns (frames, seconds) of its timed part."""
    memory = GpuMemoryPeak(device)
    cpu0, wall0 = process_cpu_seconds(), time.perf_counter()
    with nvtx.annotate(name):
        frames, seconds = run()
    cpu = process_cpu_seconds() - cpu0
    wall = time.perf_counter() - wall0
    result = Result(name, frames / seconds, frames, seconds, cpu / wall, memory.stop(), note,
                    method or name, access)
    if verbose:
        gpu = "" if result.peak_gpu_mib is None else f", +{result.peak_gpu_mib:,.0f} MiB GPU"
        print(f"  {name:<46} {result.frames_per_s:>9,.0f} frames/s  ({frames} frames, "
              f"{seconds:.2f} s, {result.cpu_cores:.1f} CPU cores{gpu}) {note}", flush=True)
    return result


def _release_gpu_memory() -> None:
    """DALI keeps freed device memory in its pools: give it back, so that the next measurement's
    peak above its start is its own."""
    import gc

    from nvidia.dali.backend import ReleaseUnusedMemory
    gc.collect()
    ReleaseUnusedMemory()


# -- the NVDEC ceiling: raw decode of the bins, no DALI ----------------------------------------
def nvdec_ceiling(gop_root: Path, videos: list[str], threads: int, rgb: bool = True,
                  limit: int | None = None, device: int = 0, feed: str = "packets"):
    import torch

    from dali_gop.backends._nvdec import create_decoder, decode_packets, packets_of
    store = GopStore(gop_root)
    work = []
    for video in videos:
        index = store.index(video)
        for gop in index.gops:
            read = store.read([(video, [gop.end - 1])])
            work.append((index.codec, read.data, read.plan.segments[0]))
    work = work[:limit]
    local = threading.local()

    def decode(item):
        codec, data, segment = item
        if not hasattr(local, "decoder"):
            torch.cuda.set_device(device)
            local.stream = torch.cuda.Stream()
            local.decoder = create_decoder(codec, local.stream.cuda_stream, device, rgb=rgb)
        count = [0]

        def sink(position, frame):
            count[0] += 1

        decode_packets(local.decoder, packets_of(data, segment, feed), sink)
        return count[0]

    return timed_in_threads(decode, work, threads, device)


# -- the loader through DALIGenericIterator -----------------------------------------------------
def _batches(loader):
    """Batches epoch after epoch, as a training loop sees them."""
    while True:
        yield from loader


def loader_run(gop_root: Path, pattern: str, backend: str, group_num: int, workers: int,
               warmup: int, batches: int | None, *, epochs: int = 1, shard_id: int = 0,
               num_shards: int = 1, **options):
    """``warmup`` batches (None: one epoch), then ``batches`` timed ones (None: ``epochs`` whole
    epochs), crossing epochs if need be. Frames: samples x cameras x T of each batch."""
    from dali_gop._loader import make_loader
    loader = make_loader(gop_root, pattern=pattern, backend=backend, batch_size=group_num,
                         num_workers=workers, shard_id=shard_id, num_shards=num_shards, **options)
    try:
        warmup = len(loader) if warmup is None else warmup
        batches = epochs * len(loader) if batches is None else batches
        stream = _batches(loader)
        for _ in range(warmup):
            _finished(next(stream)["frames"])
        started, frames = time.perf_counter(), 0
        for _ in range(batches):
            batch = next(stream)["frames"]
            frames += batch.shape[0] * batch.shape[1] * batch.shape[2]
        _finished(batch)
        return frames, time.perf_counter() - started
    finally:
        close = getattr(loader, "close", None)   # frees its pipeline (GPU memory, workers)
        if close is not None:
            close()


def _finished(frames) -> None:
    """Wait until the GPU has written ``frames`` (a CPU tensor is ready as it is)."""
    if frames.is_cuda:
        import torch
        torch.cuda.synchronize(frames.device)


def mean_decode_depth(gop_root: Path, pattern: str, group_num: int, **options) -> float:
    """Frames NVDEC decodes per wanted frame when each request is decoded from its GOP start
    (the first 2,000 samples of epoch 0): the divisor of the ceiling in the random target."""
    from dali_gop.patterns import pattern_from_name
    from dali_gop._dataset import Dataset
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


# -- the run -----------------------------------------------------------------------------------
@dataclass
class Bench:
    """What every measurement needs: the data, this rank's share and GPU, the options."""
    args: argparse.Namespace
    videos: Path              # the mp4 files
    gops: Path                # their GOP store
    rels: list[str]           # every video, relative to both
    rank: int = 0
    world: int = 1
    device: int | None = 0    # this rank's GPU; None with the cpu backend
    random_decode_depth: float | None = None     # set by the loader measurements

    @property
    def my_videos(self) -> list[str]:
        return self.rels[self.rank::self.world]

    @property
    def shard(self) -> dict:
        return dict(shard_id=self.rank, num_shards=self.world)

    def measure(self, name: str, run, **options) -> Result:
        barrier(self)      # ranks measure at the same time: they share CPUs, disks and the bus
        result = measure(name, run, device=self.device, verbose=self.rank == 0, **options)
        if self.device is not None:
            _release_gpu_memory()
        return result


def ceiling_rows(b: Bench) -> list[Result]:
    threads, note = b.args.threads, "raw decode of the bins, no DALI"
    rows = [b.measure(f"NVDEC ceiling RGB, {t} threads",
                      lambda t=t: nvdec_ceiling(b.gops, b.my_videos, t, device=b.device),
                      method=f"NVDEC ceiling RGB, {t} threads", note=note) for t in threads]
    # the loader hands NVDEC a whole GOP per call: the ceiling is the better of the two feeds
    rows.append(b.measure(f"NVDEC ceiling RGB, {max(threads)} threads, one call per GOP",
                          lambda: nvdec_ceiling(b.gops, b.my_videos, max(threads), feed="segment",
                                                device=b.device),
                          method=f"NVDEC ceiling RGB, {max(threads)} threads, one call per GOP",
                          note=note))
    rows.append(b.measure(f"NVDEC ceiling NV12, {max(threads)} threads",
                          lambda: nvdec_ceiling(b.gops, b.my_videos, max(threads), rgb=False,
                                                device=b.device),
                          method=f"NVDEC ceiling NV12, {max(threads)} threads", note=note))
    return rows


def loader_rows(b: Bench) -> list[Result]:
    a, backend = b.args, b.args.backend
    method = f"dali-gop ({backend})"
    depth = b.random_decode_depth = mean_decode_depth(b.gops, RANDOM, a.random_group_num)
    return [
        b.measure(f"dali-gop stream ({backend})",
                  lambda: loader_run(b.gops, STREAM, backend, a.group_num, a.workers, None,
                                     None, epochs=a.stream_epochs, **b.shard),
                  method=method),
        b.measure(f"dali-gop random ({backend})",
                  lambda: loader_run(b.gops, RANDOM, backend, a.random_group_num, a.workers,
                                     a.warmup, a.random_batches, **b.shard),
                  method=method, access=RANDOM, note=f"mean decode depth {depth:.1f}"),
        b.measure(f"dali-gop stream, no stream decoding ({backend})",
                  lambda: loader_run(b.gops, STREAM, backend, a.random_group_num, a.workers,
                                     a.warmup, a.random_batches, stream_decoding=False, **b.shard),
                  method=f"{method}, no stream decoding",
                  note="each frame decoded from its GOP start"),
    ]


def dali_backend_rows(b: Bench) -> list[Result]:
    a, note = b.args, "fn.decoders.video on the GOP bytes, each sample from its GOP start"
    return [b.measure(f"dali-gop {access} (dali)",
                      lambda access=access, group=group: loader_run(
                          b.gops, access, "dali", group, a.workers, a.warmup, a.baseline_batches,
                          stream_decoding=False, **b.shard),
                      method="dali-gop (dali backend)", access=access, note=note)
            for access, group in ((STREAM, a.group_num), (RANDOM, a.random_group_num))]


def reader_rows(b: Bench) -> list[Result]:
    a = b.args
    paths = [str(b.videos / rel) for rel in b.rels]
    run = dict(device=b.device, warmup=a.baseline_warmup, batches=a.baseline_batches, **b.shard)
    length = a.reader_sequence_length
    return [
        b.measure("DALI readers.video stream",
                  lambda: reader_run(paths, batch_size=max(a.group_num * a.cameras // length, 1),
                                     sequence_length=length, random_shuffle=False, **run),
                  method="DALI readers.video (mp4)",
                  note=f"file order, sequence_length {length}"),
        b.measure("DALI readers.video random",
                  lambda: reader_run(paths, batch_size=a.random_group_num * a.cameras,
                                     sequence_length=1, random_shuffle=True, **run),
                  method="DALI readers.video (mp4)", access=RANDOM,
                  note="random_shuffle, sequence_length 1"),
    ]


def pynvc_rows(b: Bench) -> list[Result]:
    from dali_gop._dataset import Dataset
    a = b.args
    threads = max(a.threads)
    paths = [b.videos / rel for rel in b.my_videos]
    # the loader's random access: random clips at random frames, every camera of each
    dataset = Dataset.open(b.gops)
    clips = list(dataset.clips)
    rng = np.random.default_rng([0, b.rank])
    requests = []
    for _ in range(a.baseline_batches * a.random_group_num):
        clip = clips[rng.integers(len(clips))]
        frame = int(rng.integers(dataset.clips[clip]))
        requests += [(b.videos / clip / camera, frame) for camera in dataset.cameras]
    return [
        b.measure("PyNvVideoCodec stream (mp4 demux)",
                  lambda: pynvc_stream(paths, a.codec, threads, b.device),
                  method="PyNvVideoCodec (mp4)", note=f"whole files, {threads} threads"),
        b.measure("PyNvVideoCodec random (SimpleDecoder)",
                  lambda: pynvc_random(requests, threads, b.device),
                  method="PyNvVideoCodec (mp4)", access=RANDOM,
                  note=f"seek to the keyframe, decode forward, {threads} threads"),
    ]


MEASUREMENTS: dict[str, tuple[Callable[[Bench], list[Result]], bool]] = {
    # name: (rows, needs a GPU)
    "ceiling": (ceiling_rows, True),
    "loader": (loader_rows, False),
    "dali": (dali_backend_rows, True),
    "reader": (reader_rows, True),
    "pynvc": (pynvc_rows, True),
}


# -- several ranks -------------------------------------------------------------------------------
def init_distributed(gpu: bool) -> tuple[int, int, int]:
    """(rank, world size, local rank); under torchrun a process group, nccl on GPUs, gloo on
    CPUs."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist
    local = int(os.environ["LOCAL_RANK"])
    if gpu:
        torch.cuda.set_device(local)
    # long timeout: the other ranks wait while rank 0 makes and preprocesses the data set
    dist.init_process_group("nccl" if gpu else "gloo", timeout=timedelta(hours=2))
    return dist.get_rank(), world, local


def barrier(b: Bench) -> None:
    if b.world > 1:
        import torch.distributed as dist
        if b.device is None:
            dist.barrier()
        else:
            dist.barrier(device_ids=[b.device])


def gather(b: Bench, rows: list[Result]) -> list[list[Result]]:
    """Every rank's results, by rank."""
    if b.world == 1:
        return [rows]
    import torch.distributed as dist
    everyone: list = [None] * b.world
    dist.all_gather_object(everyone, rows)
    return everyone


def combine(per_rank: list[list[Result]]) -> list[Result]:
    """Each measurement over all ranks: frames/s, frames and CPU cores summed, seconds and peak
    GPU memory (per GPU) the largest."""
    names = [[r.name for r in rows] for rows in per_rank]
    if any(n != names[0] for n in names):
        raise RuntimeError(f"ranks measured different things: {names}")
    combined = []
    for same in zip(*per_rank):
        peaks = [r.peak_gpu_mib for r in same if r.peak_gpu_mib is not None]
        combined.append(replace(same[0], frames_per_s=sum(r.frames_per_s for r in same),
                                frames=sum(r.frames for r in same),
                                seconds=max(r.seconds for r in same),
                                cpu_cores=sum(r.cpu_cores for r in same),
                                peak_gpu_mib=max(peaks) if peaks else None))
    return combined


# -- output --------------------------------------------------------------------------------------
def make_report(per_rank: list[list[Result]], *, device: str, args: argparse.Namespace | dict,
                command: str = "", random_decode_depth: float | None = None) -> dict:
    """The JSON document: the combined results (one rank: its own), and each rank's."""
    results = combine(per_rank)
    ceilings = [r.frames_per_s for r in results if r.name.startswith("NVDEC ceiling RGB")]
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    return {"device": device, "date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
            "world_size": len(per_rank), "command": command,
            "args": {k: str(v) for k, v in args.items()},
            "ceiling_rgb": max(ceilings) if ceilings else None,
            "random_decode_depth": random_decode_depth,
            "results": [asdict(r) for r in results],
            "ranks": [[asdict(r) for r in rows] for rows in per_rank]}


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_table(report: dict) -> str:
    """Markdown table of the report; several ranks add a frames/s column per rank."""
    ranks = report["ranks"] if report["world_size"] > 1 else []
    per_rank = [f"rank {i} frames/s" for i in range(len(ranks))]
    total = "frames/s, all ranks" if ranks else "frames/s"
    head = ["measurement", *per_rank, total, "CPU cores", "peak GPU MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(report["results"]):
        cells = [r["name"], *(_number(rows[i]["frames_per_s"]) for rows in ranks),
                 _number(r["frames_per_s"]), _number(r["cpu_cores"], 1),
                 _number(r["peak_gpu_mib"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(report: dict) -> str:
    """The loader's stream and random figures against the ceiling (what issue 4 asks)."""
    by_name = {r["name"]: r for r in report["results"]}
    ceiling, depth = report["ceiling_rgb"], report["random_decode_depth"]
    stream, random_ = by_name.get("dali-gop stream (nvdec)"), by_name.get("dali-gop random (nvdec)")
    lines = []
    if ceiling and stream:
        lines.append(f"stream: {stream['frames_per_s']:,.0f} frames/s = "
                     f"{stream['frames_per_s'] / ceiling:.0%} of the RGB ceiling {ceiling:,.0f}")
    if ceiling and depth and random_:
        lines.append(f"random: {random_['frames_per_s']:,.0f} frames/s = "
                     f"{random_['frames_per_s'] / (ceiling / depth):.0%} of ceiling / depth "
                     f"({ceiling / depth:,.0f})")
    return "\n".join(lines)


def write_outputs(report: dict, out: Path, chart: Path) -> None:
    out.write_text(json.dumps(report, indent=1))
    print(f"\nresults: {out}")
    if not report["results"]:
        return
    try:
        from pipelines.chart import draw
        draw(report, chart)
        print(f"chart: {chart}")
    except ImportError:
        print("no chart: matplotlib is missing (pip install -e '.[bench]'); "
              f"then python -m pipelines.chart {out}")


# -- data -----------------------------------------------------------------------------------------
def dataset_paths(args) -> tuple[Path, Path]:
    """Where the benchmark set's videos and GOP store are (named by the set's shape)."""
    videos = args.data / dataset_name({**dataset_options(args), "textured": True}) / "videos"
    return videos, videos.parent / "gops"


def prepare_dataset(args) -> None:
    """Make the set (once; textured so the bitrate is camera-like) and preprocess it."""
    videos, gops = dataset_paths(args)
    t0 = time.perf_counter()
    paths = make_dataset(videos, **{**dataset_options(args), "textured": True}, progress=True)
    print(f"dataset: {len(paths)} videos in {videos} ({time.perf_counter() - t0:.0f} s), "
          f"{sum(p.stat().st_size for p in paths) / 1e6:.0f} MB")
    summary = preprocess(videos, gops, progress=False)
    print(summary.format())
    if summary.failed:
        raise SystemExit(f"preprocessing failed for {len(summary.failed)} video(s): see above")


def video_list(videos: Path) -> list[str]:
    """The set's videos, relative to its root, in make_dataset's order."""
    return [p.relative_to(videos).as_posix() for p in sorted(videos.glob("clip*/cam*.mp4"))]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/bench"))
    parser.add_argument("--out", type=Path, default=Path("throughput.json"))
    parser.add_argument("--chart", type=Path, default=None,
                        help="PNG bar chart (default: --out with .png; needs matplotlib)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small set, few batches, about a minute: {QUICK}")
    parser.add_argument("--skip", nargs="+", default=[], choices=sorted(MEASUREMENTS),
                        metavar="NAME", help=f"measurements to leave out: {sorted(MEASUREMENTS)}")
    parser.add_argument("--backend", choices=["nvdec", "cpu"], default="nvdec",
                        help="the loader's backend; cpu leaves out every GPU measurement")
    add_dataset_arguments(parser)
    parser.add_argument("--group_num", type=int, default=16,
                        help="clips per batch in stream access (the seed's group_num)")
    parser.add_argument("--random_group_num", type=int, default=8,
                        help="clips per batch in random access (distinct clips: at most --clips)")
    parser.add_argument("--workers", type=int, default=6, help="DALI worker processes")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed loader batches first (default: max(2 x workers, 8))")
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 16],
                        help="decode threads of the NVDEC ceiling (the largest: PyNvVideoCodec)")
    parser.add_argument("--stream_epochs", type=int, default=3,
                        help="timed epochs of dali-gop stream, after one untimed epoch")
    parser.add_argument("--random_batches", type=int, default=60,
                        help="timed batches: dali-gop random and stream without stream decoding")
    parser.add_argument("--baseline_batches", type=int, default=20,
                        help="timed batches of the baselines (dali backend, readers.video, "
                             "PyNvVideoCodec random)")
    parser.add_argument("--baseline_warmup", type=int, default=2,
                        help="untimed readers.video batches first")
    parser.add_argument("--reader_sequence_length", type=int, default=1,
                        help="frames per readers.video sample in file order (1: one frame per "
                             "sample, as the loader's stream access delivers them)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make and preprocess the dataset, measure nothing")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    args.random_group_num = min(args.random_group_num, args.clips)
    if args.warmup is None:
        args.warmup = max(2 * args.workers, 8)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    gpu = args.backend != "cpu"
    rank, world, local_rank = init_distributed(gpu)
    videos, gops = dataset_paths(args)
    b = Bench(args, videos, gops, [], rank, world, local_rank if gpu else None)
    if rank == 0:
        prepare_dataset(args)
    barrier(b)
    if args.prepare_only:
        return
    b.rels = video_list(videos)
    if gpu:
        import torch
        device = torch.cuda.get_device_name(local_rank)
    else:
        device = f"CPU ({platform.machine()}), cpu backend"
    if rank == 0:
        print(f"\n{device}{f' x{world} ranks' if world > 1 else ''}, {os.cpu_count()} CPU cores, "
              f"{platform.python_version()}; {args.clips}x{args.cameras} {args.codec} "
              f"{args.width}x{args.height} GOP {args.gop} bframes {args.bframes}; group_num "
              f"{args.group_num} (stream), {args.random_group_num} (random), {args.workers} "
              f"workers", flush=True)
    rows = []
    for name, (measurements, needs_gpu) in MEASUREMENTS.items():
        if name not in args.skip and (gpu or not needs_gpu):
            rows += measurements(b)
    per_rank = gather(b, rows)
    if rank == 0:
        report = make_report(per_rank, device=device, args=args, command=" ".join(sys.argv),
                             random_decode_depth=b.random_decode_depth)
        for text in (targets(report), format_table(report)):
            if text:
                print(f"\n{text}")
        write_outputs(report, args.out, args.chart or args.out.with_suffix(".png"))
        print(f"total {time.perf_counter() - started:.0f} s")
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
