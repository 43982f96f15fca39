"""Preprocess throughput on a synthetic nuScenes-like set: prints videos/s and MB/s.

    python -m preprocess.throughput [--clips 10 --cameras 6 --frames 240 --width 1600 --height 900]

The dataset is made once under --data and reused; the GOP store is rebuilt (--force) on each run
so the time is the split itself, not the skip of up-to-date videos.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from dali_gop.errors import ArgumentParser, run_cli
from dali_gop.synthetic import add_dataset_arguments, dataset_name, dataset_options, make_dataset
from preprocess import verify
from preprocess.runner import preprocess


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m preprocess.throughput", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/throughput"))
    add_dataset_arguments(parser)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--verify", choices=verify.MODES, default="pixels")
    args = parser.parse_args(argv)
    options = dataset_options(args)
    videos = args.data / dataset_name(options)
    videos.mkdir(parents=True, exist_ok=True)   # a --data that cannot hold the set: said first
    t0 = time.perf_counter()
    paths = make_dataset(videos, **options, workers=args.workers, progress=True)
    print(f"dataset ready in {time.perf_counter() - t0:.1f} s: {videos}")
    source_mb = sum(p.stat().st_size for p in paths) / 1e6
    summary = preprocess(videos, args.data / "gops", workers=args.workers, force=True,
                         verify=args.verify)
    print(summary.format())
    written = [r for r in summary.results if not r.error]
    workers = args.workers or os.cpu_count()
    print("\n| videos | frames | source MB | verify | seconds | videos/s | source MB/s | workers | machine |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {len(written)} ({args.clips}x{args.cameras}, {args.codec} {args.width}x{args.height}, "
          f"{args.frames} f, GOP {args.gop}{', textured' if args.textured else ''}) | {sum(r.frames for r in written)} | {source_mb:.1f} | {args.verify} | "
          f"{summary.seconds:.2f} | {len(written) / summary.seconds:.1f} | "
          f"{source_mb / summary.seconds:.1f} | {workers} | {os.cpu_count()} cores, "
          f"{platform.machine()} |")


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m preprocess.throughput"))
