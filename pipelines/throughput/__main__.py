"""The benchmark's command line: options, the machine check, the data set, the groups, the output.
What it measures: the package's docstring (``--help``)."""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import pipelines.throughput as package
from dali_gop.backends._cuda import CONTEXT_WAITS, set_context_waits
from dali_gop.errors import ConfigError, DaliGopError
from dali_gop.synthetic import add_dataset_arguments, dataset_name, dataset_options, make_dataset
from pipelines.throughput.bench import Bench, barrier, gather, init_distributed
from pipelines.throughput.cli import ArgumentParser, entry
from pipelines.throughput.decode import ceiling_rows, pynvc_rows
from pipelines.throughput.loader import LOADER_ROWS, budget_rows, dali_rows, loader_rows
from pipelines.throughput.measure import Result
from pipelines.throughput.reader import reader_rows
from pipelines.throughput.report import (format_budget_table, format_table, format_train_table,
                                         make_report, targets, write_outputs)
from pipelines.throughput.train import TRAIN_ROWS, set_backend_defaults, train_rows
from preprocess.runner import preprocess

GROUPS: dict[str, tuple[Callable[[Bench], list[Result]], bool]] = {
    # name: (rows, needs a GPU)
    "ceiling": (ceiling_rows, True),
    "loader": (loader_rows, False),
    "dali": (dali_rows, True),
    "reader": (reader_rows, True),
    "pynvc": (pynvc_rows, True),
    "train": (train_rows, True),
    "budget": (budget_rows, True),
}
# --quick: a small set and short rows, so that a first run on one GPU shows every group in the time
# --help promises, making the set included (explicit options still win)
QUICK = dict(clips=4, frames=60, warmup=6, random_batches=6, baseline_batches=2, threads=[16],
             train_steps=10, train_warmup=3)
# --quick --backend cpu: FFmpeg decodes every frame on the CPU, so a smaller set at a lower
# resolution, two workers and fewer batches: a machine of a few cores sees it work in about the time
# --help promises (much of it making the set, which is kept for the next run)
QUICK_CPU = dict(clips=4, cameras=6, frames=48, width=640, height=360, gop=12, group_num=4,
                 workers=2, warmup=2, random_batches=8, stream_epochs=1)


def layers(text: str) -> int:
    """--train_layers: a number of layers, or ``auto`` (0)."""
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of layers (1 or more), or auto")
    return int(text)


# -- the machine and the data ----------------------------------------------------------------------
def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:   # its parent package is missing
        return False


def check_machine(backend: str) -> None:
    """Refuse, before any data is made, what this machine cannot run."""
    if not _installed("torch"):
        raise ConfigError("torch is not installed: install your build of torch first (README)")
    if backend != "cpu":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("no CUDA GPU here (or a CPU build of torch): the GPU measurements "
                              "need one; --backend cpu measures the loader on the CPU alone")
    needed = ["nvidia.dali"] if backend == "cpu" else ["nvidia.dali", "PyNvVideoCodec"]
    for module in needed:
        if not _installed(module):
            extra = "cpu" if backend == "cpu" else "cu12"
            raise ConfigError(f"{module} is not installed: pip install -e '.[{extra}]'")


def dataset_paths(args) -> tuple[Path, Path]:
    """Where the benchmark set's videos and GOP store are (named by the set's shape)."""
    videos = args.data / dataset_name({**dataset_options(args), "textured": True}) / "videos"
    return videos, videos.parent / "gops"


def prepare_dataset(args) -> None:
    """Make the set (once; textured so the bitrate is camera-like) and preprocess it."""
    videos, gops = dataset_paths(args)
    # first: a --data that cannot hold the set is one line, before the progress bar
    videos.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = make_dataset(videos, **{**dataset_options(args), "textured": True}, progress=True)
    print(f"dataset: {len(paths)} videos in {videos} ({time.perf_counter() - t0:.0f} s), "
          f"{sum(p.stat().st_size for p in paths) / 1e6:.0f} MB")
    summary = preprocess(videos, gops, progress=False)
    print(summary.format())
    if summary.failed:
        raise DaliGopError(f"preprocessing failed for {len(summary.failed)} video(s): see above")


# -- options ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = ArgumentParser(prog="python -m pipelines.throughput", description=package.__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/bench"), metavar="DIR",
                        help="where the synthetic set is made, in a folder named by its shape, "
                             "and kept for the next run (default: data/bench under the current "
                             "directory; the full set takes about 1.5 GB)")
    parser.add_argument("--out", type=Path, default=Path("throughput.json"),
                        help="the results as JSON (default: throughput.json in the current "
                             "directory)")
    parser.add_argument("--chart", type=Path, default=None,
                        help="PNG bar chart (default: --out with .png; needs matplotlib)")
    parser.add_argument("--quick", action="store_true",
                        help="a small set and fewer batches, to see it work: about two minutes "
                             "on one H200 with 16 CPU cores (4 clips x 6 cameras, 1600x900, 60 "
                             "frames; a third of it making the set, which the next run reuses); "
                             "with --backend cpu (4 clips x 6 "
                             "cameras, 640x360, 48 frames) about a minute and a half on 2 CPU "
                             "cores, half of it making the set, which the next run reuses. "
                             "Options given explicitly win")
    parser.add_argument("--skip", nargs="+", default=[], choices=sorted(GROUPS), metavar="NAME",
                        help=f"groups to leave out: {sorted(GROUPS)}")
    parser.add_argument("--backend", choices=["nvdec", "cpu"], default="nvdec",
                        help="the loader's backend; cpu leaves out every GPU measurement")
    parser.add_argument("--profile", action="store_true",
                        help="nvdec: print where each batch's time goes in the loader rows and "
                             "in the train rows' together phase (and put it in the JSON)")
    parser.add_argument("--gpu_work", action="store_true",
                        help="print the device time that each loader row's batches took on the "
                             "GPU, by kernel and copy, and for each train row how long the "
                             "training's stream ran and waited, alone and beside the loader, "
                             "and how much of the loader's GPU work ran beside the model's "
                             "(torch.profiler; the rows' speeds are then measured under the "
                             "profiler)")
    add_dataset_arguments(parser)
    loader = parser.add_argument_group("the loader")
    loader.add_argument("--group_num", type=int, default=16,
                        help="clips per batch in stream access (the seed's group_num)")
    loader.add_argument("--random_group_num", type=int, default=8,
                        help="clips per batch in random access (distinct clips: at most --clips)")
    loader.add_argument("--workers", type=int, default=6, help="DALI worker processes")
    loader.add_argument("--decode_threads", type=int, default=None,
                        help="nvdec decode threads (default: make_loader's)")
    loader.add_argument("--stream_lead", type=int, default=30, help="make_loader's stream_lead")
    loader.add_argument("--decode_ahead", type=int, default=2, help="make_loader's decode_ahead")
    loader.add_argument("--prefetch_queue_depth", type=int, default=None,
                        help="make_loader's prefetch_queue_depth (DALI's queue of finished "
                             "batches; default: make_loader's, 2; a memory budget may lower it)")
    loader.add_argument("--warmup", type=int, default=None,
                        help="untimed loader batches first (default: max(2 x workers, 8))")
    loader.add_argument("--stream_epochs", type=int, default=3,
                        help="timed epochs of dali-gop stream (its budget rows too), after one "
                             "untimed epoch")
    loader.add_argument("--budgets", nargs="+", default=["2GiB", "4GiB", "8GiB", "16GiB", "none"],
                        metavar="SIZE", help="budget rows: make_loader's memory_budget for each "
                                             "(none: no budget)")
    loader.add_argument("--memory_budget", default=None, metavar="SIZE",
                        help="make_loader's memory_budget for the loader and train rows (default: "
                             "make_loader's, a quarter of the GPU; none: no budget)")
    loader.add_argument("--stream_priority", choices=["high", "default"], default=None,
                        help="nvdec: the priority of the loader's CUDA streams (default: the "
                             "library's, high; dali_gop.backends._cuda.CudaDriver.priority), in "
                             "every loader of the run")
    loader.add_argument("--context_waits", choices=list(CONTEXT_WAITS),
                        default=None, help="how the process's CUDA context waits for the GPU "
                        "(dali_gop.backends._cuda.set_context_waits; default: left as CUDA makes "
                        "it, which spins where one context runs on several cores)")
    loader.add_argument("--stream_sessions", action="store_true",
                        help="nvdec: stream slots on NVDEC sessions of their own, one per slot and "
                             "camera, decoding a few frames ahead of the picks, in place of kept "
                             "GOPs (dali_gop.backends._stream_sessions; off by default, as it "
                             "is not yet at NVDEC's speed): in every loader of the run")
    loader.add_argument("--kept_gops", choices=["device", "host"], default=None,
                        help="nvdec: where stream slots keep their decoded GOPs (default: the "
                             "backend's, the device, unless a memory budget moves them; host: "
                             "pinned host memory, each batch's picks copied to the device), in "
                             "every loader of the run that no budget changes")
    loader.add_argument("--stream_groups", type=int, default=None, metavar="N",
                        help="with --stream_sessions: the groups each thread feeds its pairs in "
                             "(default: the backend's, dali_gop.backends._nvdec.STREAM_GROUPS), "
                             "in every loader of the run")
    loader.add_argument("--nvdec_sessions", choices=["pynvvideocodec", "own"], default=None,
                        help="nvdec: whose NVDEC sessions the decode threads hold (default: the "
                             "backend's: ours, csrc/nvdec_session.c; pynvvideocodec: "
                             "PyNvVideoCodec's), in every loader of the run that no budget "
                             "changes")
    loader.add_argument("--unmap_late", action="store_true",
                        help="nvdec: our sessions give a frame's surface back before the next "
                             "frame is mapped instead of right after its copies, so the parser "
                             "queues the next picture meanwhile "
                             "(dali_gop.backends._nvdec_session.UNMAP_LATE), in every session "
                             "of ours in the run, the ceiling's too")
    loader.add_argument("--display_delay", type=int, default=None, metavar="N",
                        help="nvdec: the parser of our sessions displays a frame N pictures late, "
                             "so that NVDEC has the next ones while it is copied (default: "
                             "dali_gop.backends._nvdec_session.DISPLAY_DELAY), in every session "
                             "of ours in the run, the ceiling's too")
    loader.add_argument("--host_threads", type=int, default=None, metavar="N",
                        help="nvdec: the most decode threads a memory budget plans where it keeps "
                             "stream slots' GOPs on the host (default: "
                             "dali_gop._budget.HOST_THREADS), in every loader of the run")
    loader.add_argument("--decode_nice", type=int, default=None, metavar="N",
                        help="nvdec: the decode threads run N nice steps below the thread that "
                             "made them, so that the OS gives a training thread its core first "
                             "(default: dali_gop.backends._nvdec.DECODE_NICE), in every loader "
                             "of the run")
    loader.add_argument("--switch_interval", type=float, default=None, metavar="SECONDS",
                        help="sys.setswitchinterval for the run (Python's default 0.005): how "
                             "long a thread waits for the GIL before it asks the holder to let "
                             "go, for the question whether the loader's threads and the training "
                             "thread take turns at it")
    loader.add_argument("--loader_rows", nargs="+", choices=LOADER_ROWS, default=list(LOADER_ROWS),
                        help="which rows of the loader group to run (default all): stream, "
                             "random, stream order without stream decoding")
    loader.add_argument("--random_batches", type=int, default=60,
                        help="timed batches: dali-gop random (its budget rows too) and stream "
                             "without stream decoding")
    raw = parser.add_argument_group("the ceiling and the baselines")
    raw.add_argument("--threads", type=int, nargs="+", default=[8, 16],
                     help="decode threads of the NVDEC ceiling (the largest: PyNvVideoCodec)")
    raw.add_argument("--baseline_batches", type=int, default=20,
                     help="timed batches of the baselines (dali backend, readers.video, "
                          "PyNvVideoCodec random)")
    raw.add_argument("--baseline_warmup", type=int, default=2,
                     help="untimed readers.video batches first")
    raw.add_argument("--reader_sequence_length", type=int, default=1,
                     help="frames per readers.video sample in file order (1: one frame per "
                          "sample, as the loader's stream access delivers them)")
    train = parser.add_argument_group(
        "beside a training step", "the stand-in model: 3x3 convolutions + ReLU, bf16, on frames "
        "downsampled to --train_size; forward, backward, SGD")
    train.add_argument("--train_layers", type=layers, default=0, metavar="N|auto",
                       help="convolutions (default auto: as many as make the loader take "
                            "--train_share of the model's time)")
    train.add_argument("--random_train_layers", type=layers, default=0, metavar="N|auto",
                       help="convolutions of the random row's model (default auto, as "
                            "--train_layers)")
    train.add_argument("--train_share", type=float, default=0.6,
                       help="the loader's share of the model's step time that auto sizes "
                            "the models for (a fair test of overlap: 0.3 to 1)")
    train.add_argument("--queued_steps", type=int, default=None,
                       help="make_loader's queued_steps (nvdec rows): how many training steps "
                            "may be queued on the GPU ahead of the training thread")
    train.add_argument("--train_channels", type=int, default=128, help="channels of each")
    train.add_argument("--train_size", type=int, nargs=2, default=[225, 400],
                       metavar=("H", "W"), help="frames are downsampled to H x W first")
    train.add_argument("--launch_layers", type=int, default=100,
                       help="the launch-bound model: many tiny layers")
    train.add_argument("--launch_channels", type=int, default=8)
    train.add_argument("--launch_size", type=int, nargs=2, default=[28, 50], metavar=("H", "W"))
    train.add_argument("--train_rows", nargs="+", choices=TRAIN_ROWS, default=list(TRAIN_ROWS),
                       help="which train rows to run (default all): stream, random, the "
                            "launch-bound model, loss.item() every step, random with queued_steps")
    train.add_argument("--loader_process", action="store_true",
                       help="run each train row's loader in a process of its own, its frames "
                            "handed over as CUDA tensors (CUDA IPC): the training thread then "
                            "shares the GIL with none of the loader's threads")
    train.add_argument("--train_side_stream", action="store_true",
                       help="train on a stream of the model's own instead of torch's default "
                            "stream (the control of issue 16: what is left beside the loader "
                            "when the two share no stream)")
    train.add_argument("--train_steps", type=int, default=60, help="timed steps of each phase")
    train.add_argument("--train_warmup", type=int, default=10,
                       help="untimed steps before each phase")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make and preprocess the dataset, measure nothing")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**(QUICK_CPU if args.backend == "cpu" else QUICK))
        args = parser.parse_args(argv)
    if args.profile and args.backend != "nvdec":
        raise ConfigError("--profile hooks the nvdec operator: it needs --backend nvdec")
    if args.gpu_work and args.backend != "nvdec":
        raise ConfigError("--gpu_work measures the GPU's work: it needs --backend nvdec")
    if (args.stream_sessions or args.nvdec_sessions or args.kept_gops) and \
            args.backend != "nvdec":
        raise ConfigError("--stream_sessions, --nvdec_sessions and --kept_gops are paths of the "
                          "nvdec backend: they need --backend nvdec")
    if args.stream_groups is not None and not (args.stream_sessions and args.stream_groups > 0):
        raise ConfigError(f"--stream_groups {args.stream_groups}: give a number of groups > 0, "
                          "with --stream_sessions (the groups are the stream pairs')")
    if args.decode_nice is not None and not 0 <= args.decode_nice <= 19:
        raise ConfigError(f"--decode_nice must be 0 to 19, not {args.decode_nice}")
    if args.host_threads is not None and args.host_threads < 1:
        raise ConfigError(f"--host_threads must be at least 1, not {args.host_threads}")
    if args.switch_interval is not None and not args.switch_interval > 0:
        raise ConfigError(f"--switch_interval must be > 0 seconds, not {args.switch_interval}")
    args.random_group_num = min(args.random_group_num, args.clips)
    if args.warmup is None:
        args.warmup = max(2 * args.workers, 8)
    return args


# -- the run ---------------------------------------------------------------------------------------
def set_run_defaults(args) -> None:
    """The process-wide settings that the run's A/B options change: the library's defaults
    (``train.RUN_DEFAULTS``; a --loader_process takes them along) and Python's switch
    interval."""
    given = {"stream_sessions": args.stream_sessions or None,
             "groups": args.stream_groups,      # given only with --stream_sessions (parse_args)
             "sessions": args.nvdec_sessions, "kept_gops": args.kept_gops,
             "priority": args.stream_priority, "unmap_late": args.unmap_late or None,
             "display_delay": args.display_delay, "host_threads": args.host_threads,
             "decode_nice": args.decode_nice}
    set_backend_defaults({name: value for name, value in given.items() if value is not None})
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    gpu = args.backend != "cpu"
    if gpu and args.context_waits:
        set_context_waits(int(os.environ.get("LOCAL_RANK", 0)), args.context_waits)
    check_machine(args.backend)
    set_run_defaults(args)
    rank, world, local_rank = init_distributed(gpu)
    videos, gops = dataset_paths(args)
    b = Bench(args, videos, gops, rank, world, local_rank if gpu else None)
    if rank == 0:
        prepare_dataset(args)
    barrier(b)
    if args.prepare_only:
        return
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
    for name, (group, needs_gpu) in GROUPS.items():
        if name not in args.skip and (gpu or not needs_gpu):
            rows += group(b)
    per_rank = gather(b, rows)
    if rank == 0:
        report = make_report(per_rank, device=device, args=args, command=" ".join(sys.argv))
        for text in (targets(report), format_table(report), format_train_table(report),
                     format_budget_table(report)):
            if text:
                print(f"\n{text}")
        write_outputs(report, args.out, args.chart or args.out.with_suffix(".png"))
        print(f"total {time.perf_counter() - started:.0f} s")
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()


if __name__ == "__main__":
    entry(main, "pipelines.throughput")
