"""Does decoding beside a launch-bound training step slow it, with no DALI and no loader?

The benchmark's launch-bound train row (``--train_rows launch``) is slower beside the loader than
its model and loader alone would make it, serially. This probe takes the loader away and keeps
one of its parts at a time, beside the same step (the row's model: many tiny conv layers on a
16 x 6 batch of 1600 x 900 frames, forward, backward and SGD on torch's default stream):

- ``own``: threads decoding the GOP bins whole, endlessly, on our NVDEC sessions (each frame
  copied into a scratch frame), as the decode threads do;
- ``pynvc``: the same on PyNvVideoCodec's sessions;
- ``nomap``: our sessions decoding with no frame mapped or copied: NVDEC's engines and the
  driver's parser alone, without the map's kernel and the copies;
- ``copy``: no decoding, only the copies a decoded frame costs (a frame's NV12 bytes, device to
  device, on the thread's stream), to set beside ``own`` (best with ``--fps``).

For each variant and thread count it prints the step alone, the step beside it, their ratio, the
frames/s the decoding threads made meanwhile, the process's CPU cores, and the share of the wall
time the training thread ran on a core and waited for one, and how often a step it slept or was
preempted (a training thread that waits for a core, or sleeps on a lock, launches late).
``--sched`` sets how the CUDA context waits for the GPU, for the whole run: CUDA's own choice
(auto: spin, with one context on a machine of several cores), spin, yield or blocking sync.

    python -m pipelines.throughput.launch_probe GOP_ROOT [--variants own nomap copy pynvc]
        [--threads 8 24] [--fps N] [--sync] [--sched auto|spin|yield|blocking] [--nice N]
"""
from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from dali_gop.backends._cuda import CONTEXT_WAITS, set_context_waits
from pipelines.throughput.decode import ThreadDecoders, read_bins
from pipelines.throughput.train import StepModel, TrainStep, thread_shares, timed_steps

BATCH = (16, 6)


def pause(frames: int, rate: float | None, elapsed: float) -> float:
    """Seconds a thread that has decoded ``frames`` in ``elapsed`` seconds waits to keep to
    ``rate`` frames/s (None: no pace, 0)."""
    return 0.0 if not rate else max(0.0, frames / rate - elapsed)


def _decode_endlessly(variant: str, bins: list, device: int, stop: threading.Event,
                      frames: list, slot: int, rate: float | None = None, nice: int = 0) -> None:
    """One background thread: ``variant``'s work until ``stop``, at ``rate`` frames/s at most
    (None: as fast as it goes), ``nice`` steps below the training thread's priority;
    ``frames[slot]`` counts frames decoded."""
    import torch

    from dali_gop.backends import NvdecSession, create_decoder, packet
    from dali_gop.backends._nvdec import lower_priority
    lower_priority(nice)
    decoders = ThreadDecoders(device)

    i = slot
    # the pace counts from the first GOP done: a thread that spent its start making a session
    # would otherwise catch up in a burst, inside the timed steps
    began, first = None, 0
    while not stop.wait(0.0 if began is None else
                        pause(frames[slot] - first, rate, time.perf_counter() - began)):
        if i == slot + 1:
            began, first = time.perf_counter(), frames[slot]
        codec, data, shape, count = bins[i % len(bins)]
        i += 1
        if variant in ("own", "nomap"):
            session = decoders.get(("own", codec), lambda stream: NvdecSession(codec, stream))
            scratch = decoders.get(("scratch", shape), lambda stream: torch.empty(
                shape, dtype=torch.uint8, device=f"cuda:{device}"))
            wanted = [] if variant == "nomap" else [(p, scratch.data_ptr())
                                                    for p in range(count + 1)]
            frames[slot] += session.decode(data, wanted, shape)
        elif variant == "copy":
            pair = decoders.get(("copy", shape), lambda stream: torch.empty(
                (2, *shape), dtype=torch.uint8, device=f"cuda:{device}"))
            with torch.cuda.stream(decoders.stream):
                for _ in range(count):
                    pair[1].copy_(pair[0])
            decoders.stream.synchronize()
            frames[slot] += count
        else:
            decoder = decoders.get(codec, lambda stream: create_decoder(codec, stream, device))
            frames[slot] += len(decoder.Decode(packet(data))) + len(decoder.Decode(packet(None)))
    for made in decoders.made.values():
        if hasattr(made, "close"):
            made.close()


def step_seconds(step, fixed, steps: int, warmup: int,
                 device: int) -> tuple[float, float, dict]:
    """Seconds a step (the train rows' :func:`timed_steps`); the process's CPU cores and the
    training thread's shares meanwhile (:func:`thread_shares`, named "step")."""
    cpu: list[float] = []

    def one() -> int:
        step(fixed)
        return 0

    timed = timed_steps(one, warmup, steps, device,
                        on_start=lambda: cpu.append(time.process_time()))
    wall = timed.seconds
    return (wall / steps, (time.process_time() - cpu[0]) / wall,
            thread_shares("step", timed, steps))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gop_root", type=Path)
    p.add_argument("--variants", nargs="+", choices=["own", "nomap", "copy", "pynvc"],
                   default=["own", "nomap", "copy", "pynvc"])
    p.add_argument("--sched", choices=sorted(CONTEXT_WAITS), default="auto",
                   help="how the CUDA context waits for the GPU (default: CUDA's own choice)")
    p.add_argument("--threads", type=int, nargs="+", default=[8, 24])
    p.add_argument("--layers", type=int, default=100)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=[28, 50], metavar=("H", "W"))
    p.add_argument("--sync", action="store_true", help="loss.item() after every step")
    p.add_argument("--fps", type=float, default=None,
                   help="decode at this many frames/s in all (default: as fast as NVDEC goes), "
                        "as a loader does at the pace of the model beside it")
    p.add_argument("--nice", type=int, default=0,
                   help="the decoding threads run this many nice steps below the training thread "
                        "(the loader's DECODE_NICE, the benchmark's --decode_nice)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args(argv)

    videos = sorted(str(index.parent.relative_to(args.gop_root))
                    for index in args.gop_root.glob("**/.gop_index.json"))
    if not videos:
        raise SystemExit(f"{args.gop_root}: no .gop_index.json under it: give a GOP store")
    import dali_gop  # noqa: F401  (first: it sets CUDA's work queues as the loader runs with)
    import torch
    device = 0
    set_context_waits(device, args.sched)
    opened = time.perf_counter()
    torch.cuda.set_device(device)
    bins = read_bins(args.gop_root, videos)
    height, width = bins[0][2][0] * 2 // 3, bins[0][2][1]
    model = StepModel(args.layers, args.channels, tuple(args.size), args.sync)
    step = TrainStep(model, device)
    fixed = torch.randint(0, 256, (*BATCH, 1, height, width, 3), dtype=torch.uint8,
                          device=f"cuda:{device}")
    print(f"# {torch.cuda.get_device_name(device)}; {model.describe()}; batch {BATCH[0]}x"
          f"{BATCH[1]} of {height}x{width}; {len(bins)} bins of {len(videos)} videos; context "
          f"waits: {args.sched}; decoding threads {args.nice} nice steps below", flush=True)

    def report(what: str, measured) -> float:
        seconds, cores, training = measured
        waits = (f", waiting for a core {training['step_waiting_for_core']:.0%}, sleeps "
                 f"{training['step_sleeps_per_step']:.1f} and preempted "
                 f"{training['step_preempted_per_step']:.1f} a step"
                 if "step_waiting_for_core" in training else "")
        print(f"{what}: {seconds * 1e3:.2f} ms a step; {cores:.1f} CPU cores, the training "
              f"thread on a core {training['step_on_core']:.0%} of the time{waits} "
              f"[{time.perf_counter() - opened:.0f} s]", flush=True)
        return seconds

    alone = report("alone", step_seconds(step, fixed, args.steps, args.warmup, device))
    for variant in args.variants:
        for threads in args.threads:
            stop, frames = threading.Event(), [0] * threads
            workers = [threading.Thread(target=_decode_endlessly,
                                        args=(variant, bins, device, stop, frames, k,
                                              args.fps / threads if args.fps else None,
                                              args.nice),
                                        daemon=True)
                       for k in range(threads)]
            for worker in workers:
                worker.start()
            time.sleep(1.0)     # sessions made, decoding under way
            before, started = sum(frames), time.perf_counter()
            measured = step_seconds(step, fixed, args.steps, 0, device)
            rate = (sum(frames) - before) / (time.perf_counter() - started)
            stop.set()
            for worker in workers:
                worker.join()
            beside = report(f"{variant:7s} x {threads:2d} threads", measured)
            print(f"    {beside / alone:.2f}x alone; {rate:,.0f} frames/s decoded meanwhile",
                  flush=True)
            # the step alone again: the GPU's clocks and the allocator may have moved
            alone = report("alone", step_seconds(step, fixed, args.steps, args.warmup, device))


if __name__ == "__main__":
    main()
