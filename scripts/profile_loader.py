"""Where does the nvdec loader's time go? Run on the GPU machine, on the benchmark set:
    python3 scripts/profile_loader.py /tmp/bench/<set>/gops VARIANT [VARIANT ...]
A variant is ``pattern:key=value:...`` with pattern ``stream``, ``random`` or ``nodecode-stream`` /
``nodecode-random`` (the same DALI graph, workers and stash, with an operator that decodes nothing),
or ``raw`` (scripts/decode_modes.py's rows), and keys g (clips per batch), w (DALI workers),
t (decode threads), pq (prefetch queue depth), lead (stream_lead), ahead (decode_ahead), n (timed
batches), warm (untimed batches first).

Per variant it prints frames/s and where the main process spends each batch: operator calls and
the gaps between them, scheduling (_start) and waiting (_finish), how many batches the CPU stage had
stashed, decode tasks running at once, NVDEC utilization (NVML), GIL hand-over latency (a thread
that sleeps 1 ms and measures how late it wakes), and CPU per thread group.
"""
from __future__ import annotations

import collections
import ctypes
import os
import sys
import threading
import time

import numpy as np
import torch

from dali_gop.backends import _nvdec as nvdec
from pipelines.throughput import process_cpu_seconds

EVENTS: dict[str, list] = collections.defaultdict(list)
POOL_TIDS: set[int] = set()


def instrument():
    """Wrap the operator's methods: timestamps only, so the probe costs little GIL time."""
    def wrap(cls, name, record):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            started = time.perf_counter()
            extra = record(self) if record else None
            try:
                return original(self, *args, **kwargs)
            finally:
                EVENTS[name].append((started, time.perf_counter(), extra))
        setattr(cls, name, wrapper)

    wrap(nvdec.NvdecBatchDecoder, "__call__", lambda self: len(self.stash._batches))
    wrap(nvdec.NvdecBatchDecoder, "_start", None)
    wrap(nvdec.NvdecBatchDecoder, "_finish", None)
    wrap(nvdec.NvdecBatchDecoder, "_run_decoder",
         lambda self: POOL_TIDS.add(threading.get_native_id()))


class Nvml:
    """NVDEC utilization samples through libnvidia-ml (no pynvml needed)."""

    def __init__(self):
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        try:
            self.lib = ctypes.CDLL("libnvidia-ml.so.1")
            self.lib.nvmlInit_v2()
            self.handle = ctypes.c_void_p()
            self.lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(self.handle))
        except OSError:
            self.lib = None

    def start(self):
        if self.lib is not None:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        util, period = ctypes.c_uint(), ctypes.c_uint()
        while not self._stop.wait(0.1):
            if self.lib.nvmlDeviceGetDecoderUtilization(self.handle, ctypes.byref(util),
                                                        ctypes.byref(period)) == 0:
                self.samples.append((time.perf_counter(), util.value))

    def mean(self, start, end):
        values = [u for t, u in self.samples if start <= t <= end]
        return float(np.mean(values)) if values else float("nan")

    def stop(self):
        self._stop.set()


class GilProbe:
    def __init__(self):
        self.late: list[float] = []
        self._stop = threading.Event()

    def start(self):
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop.is_set():
            started = time.perf_counter()
            time.sleep(0.001)
            self.late.append(time.perf_counter() - started - 0.001)

    def stop(self):
        self._stop.set()


def thread_cpu() -> dict[int, tuple[str, float]]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_by_group(before, after, main_tid) -> dict[str, float]:
    groups: dict[str, float] = collections.defaultdict(float)
    for tid, (name, seconds) in after.items():
        used = seconds - before.get(tid, (name, 0.0))[1]
        group = "nvdec pool" if tid in POOL_TIDS else "main" if tid == main_tid else name
        groups[group] += used
    return groups


def parse(variant: str) -> tuple[str, dict]:
    pattern, *items = variant.split(":")
    options = dict(g=16 if "stream" in pattern else 8, w=6, t=48, pq=2, lead=30, ahead=2)
    for item in items:
        key, value = item.split("=")
        options[key] = int(value)
    return pattern, options


def make(gops, pattern: str, o: dict):
    from dali_gop._loader import make_loader
    nodecode = pattern.startswith("nodecode-")
    if nodecode:
        pattern = pattern.split("-", 1)[1]
        original = nvdec.NvdecBatchDecoder._decode_batch

        def no_decode(self, tokens):
            from torch.utils.dlpack import to_dlpack
            self.stash.take()
            if not hasattr(self, "_fixed"):
                self._fixed = torch.zeros((6, 1, 900, 1600, 3), dtype=torch.uint8, device="cuda")
            return [to_dlpack(self._fixed) for _ in tokens]
        nvdec.NvdecBatchDecoder._decode_batch = no_decode
    else:
        original = None
    loader = make_loader(gops, pattern=pattern, backend="nvdec", batch_size=o["g"],
                         num_workers=o["w"], prefetch_queue_depth=o["pq"], stream_lead=o["lead"],
                         decode_ahead=o["ahead"],
                         backend_options=dict(threads=o["t"]))
    return loader, pattern, original


def run(gops, variant: str, nvml: Nvml) -> None:
    pattern, o = parse(variant)
    loader, pattern, original = make(gops, pattern, o)
    epoch = len(loader)
    warm = o.get("warm", epoch + 10 if pattern == "stream" else 12)
    timed = o.get("n", epoch if pattern == "stream" else 60)

    def batches():
        while True:
            yield from loader
    stream = batches()
    try:
        for _ in range(warm):
            next(stream)
        torch.cuda.synchronize()
        EVENTS.clear()
        probe = GilProbe()
        probe.start()
        before, cpu_before = thread_cpu(), process_cpu_seconds()
        started, frames, waits = time.perf_counter(), 0, []
        for _ in range(timed):
            t = time.perf_counter()
            batch = next(stream)["frames"]
            waits.append(time.perf_counter() - t)
            frames += batch.shape[0] * batch.shape[1] * batch.shape[2]
        torch.cuda.synchronize()
        ended = time.perf_counter()
        probe.stop()
        after, cpu_after = thread_cpu(), process_cpu_seconds()
    finally:
        loader.close()
        if original is not None:
            nvdec.NvdecBatchDecoder._decode_batch = original
    wall = ended - started
    print(f"\n== {variant} (epoch {epoch} batches; {warm} untimed, {timed} timed): "
          f"{frames / wall:,.0f} frames/s, {wall / timed * 1e3:.1f} ms/batch")
    print(f"   next(): median {np.median(waits) * 1e3:.2f} ms, p90 {np.percentile(waits, 90) * 1e3:.2f}"
          f" ms, max {max(waits) * 1e3:.1f} ms")

    def inside(name):
        return [(a, b, x) for a, b, x in EVENTS.get(name, []) if started <= a <= ended]
    calls = inside("__call__")
    if calls:
        gaps = [b[0] - a[1] for a, b in zip(calls, calls[1:])]
        depth = collections.Counter(x for *_, x in calls)
        print(f"   operator call: mean {np.mean([b - a for a, b, _ in calls]) * 1e3:.2f} ms, gap to "
              f"the next call: mean {np.mean(gaps or [0]) * 1e3:.2f} ms; stashed batches at the "
              f"call: {dict(sorted(depth.items()))}")
    for name in ("_start", "_finish"):
        spans = inside(name)
        if spans:
            print(f"   {name}: n={len(spans)} mean {np.mean([b - a for a, b, _ in spans]) * 1e3:.2f} ms"
                  f" total {sum(b - a for a, b, _ in spans):.2f} s")
    tasks = [(a, b) for a, b, _ in EVENTS.get("_run_decoder", []) if b >= started and a <= ended]
    if tasks:
        busy = sum(min(b, ended) - max(a, started) for a, b in tasks)
        print(f"   decode tasks: {len(tasks)}, mean {np.mean([b - a for a, b in tasks]) * 1e3:.1f} ms,"
              f" running at once: mean {busy / wall:.1f} of {o['t']}")
    print(f"   NVDEC utilization (NVML): {nvml.mean(started, ended):.0f}%")
    if probe.late:
        print(f"   GIL probe: wakes late by mean {np.mean(probe.late) * 1e3:.2f} ms, p90 "
              f"{np.percentile(probe.late, 90) * 1e3:.2f} ms ({len(probe.late)} wakes)")
    groups = cpu_by_group(before, after, threading.main_thread().native_id)
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:6]
    print(f"   CPU cores: all processes {(cpu_after - cpu_before) / wall:.2f}; this process by "
          f"thread group: " + ", ".join(f"{k} {v / wall:.2f}" for k, v in top))


def raw(gops) -> None:
    """The pool's work without DALI: whole GOPs, 48 threads, frames dropped or copied out."""
    sys.path.insert(0, os.path.dirname(__file__))
    import decode_modes
    work = decode_modes.load(gops)
    print()
    rows = [dict(label=f"whole GOP, segment, 48 thr, keep {keep}", keep=keep)
            for keep in (None, "memcpy", "memcpy0", "kernel", "other-stream", "batch")]
    for low in (False, True):
        rows.append(dict(label=f"whole GOP, segment, 48 thr, memcpy, low latency {low}",
                         keep="memcpy", low=low))
        rows.append(dict(label=f"prefix 1..30, segment, 48 thr, memcpy last, low latency {low}",
                         keep="memcpy", low=low, depth=lambda rng: rng.randint(1, 30)))
    for row in rows:
        label = row.pop("label")
        try:
            decode_modes.run(f"raw: {label}", work, 48, feed="segment", **row)
        except Exception as e:
            print(f"raw: {label}: FAILED {type(e).__name__}: {e}")


def main():
    gops = sys.argv[1]
    print(torch.cuda.get_device_name(0), flush=True)
    instrument()
    nvml = Nvml()
    nvml.start()
    for variant in sys.argv[2:]:
        try:
            if variant == "raw":
                raw(gops)
            else:
                run(gops, variant, nvml)
        except Exception as e:   # one broken variant must not lose the others
            print(f"\n== {variant}: FAILED {type(e).__name__}: {e}")
        sys.stdout.flush()
    nvml.stop()


if __name__ == "__main__":
    main()
