"""Where a loader batch's time goes (``--profile``): a :class:`dali_gop.hooks.DecodeHook` that the
nvdec operator calls around its work, so nothing of the library is patched.

Over a row's timed part it records DALI's operator calls (and the gaps between them, when DALI's
thread does other work), how many batches the CPU stage had handed over at each call, planning and
waiting per batch, how many decode runs were going at once, how long the training loop waited in
``next()``, how late a thread that sleeps 1 ms wakes (the GIL's hand-over latency), and the CPU
time of this process's threads by group.
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Iterator

import numpy as np

from dali_gop.hooks import DecodeHook
from pipelines.throughput.measure import thread_cpu_seconds


class GilProbe:
    """A thread that sleeps 1 ms again and again and records how late it wakes."""

    SLEEP = 0.001

    def __init__(self):
        self.late: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            time.sleep(self.SLEEP)
            self.late.append(time.perf_counter() - started - self.SLEEP)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.late


class Profiler(DecodeHook):
    """Timestamps only, so that the hook itself costs DALI's thread little GIL time."""

    def __init__(self):
        self.spans: dict[str, list[tuple[float, float, int]]] = self._no_spans()
        self.pool_threads: set[int] = set()
        self._recording = False

    @staticmethod
    def _no_spans() -> dict:
        # every kind up front: threads append to these lists, none creates one
        return {kind: [] for kind in ("batch", "schedule", "finish", "decode")}

    @contextlib.contextmanager
    def _span(self, kind: str, extra: int = 0) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._recording:
                self.spans[kind].append((started, time.perf_counter(), extra))

    def batch(self, stashed: int):
        return self._span("batch", stashed)

    def schedule(self):
        return self._span("schedule")

    def finish(self):
        return self._span("finish")

    def decode(self, name: str, gop: bool):
        self.pool_threads.add(threading.get_native_id())
        return self._span("decode")

    def start(self) -> None:
        """The timed part begins."""
        self.spans = self._no_spans()
        self._recording = True
        self._probe = GilProbe()
        self._cpu = thread_cpu_seconds()
        self._started = time.perf_counter()

    def stop(self, waits: list[float]) -> dict:
        """The timed part ended; ``waits``: seconds each ``next()`` took. A JSON-able summary."""
        wall = time.perf_counter() - self._started
        self._recording = False
        late = self._probe.stop()
        cpu = collections.defaultdict(float)
        main = threading.main_thread().native_id
        for tid, (name, seconds) in thread_cpu_seconds().items():
            group = "nvdec pool" if tid in self.pool_threads else "main" if tid == main else name
            cpu[group] += seconds - self._cpu.get(tid, (name, 0.0))[1]
        calls = self.spans["batch"]
        return {
            "batches": len(waits),
            "ms_per_batch": 1e3 * wall / max(len(waits), 1),
            "next_ms": _ms(waits),
            "operator_call_ms": _ms([end - start for start, end, _ in calls]),
            "gap_to_next_call_ms": _ms([b[0] - a[1] for a, b in zip(calls, calls[1:])]),
            "stashed_at_call": dict(sorted(collections.Counter(x for *_, x in calls).items())),
            "schedule_ms": _ms([end - start for start, end, _ in self.spans["schedule"]]),
            "finish_ms": _ms([end - start for start, end, _ in self.spans["finish"]]),
            "decodes_at_once": sum(end - max(start, self._started)
                                   for start, end, _ in self.spans["decode"]) / wall,
            "gil_late_ms": _ms(late),
            "cpu_cores_by_thread": {group: seconds / wall for group, seconds in
                                    sorted(cpu.items(), key=lambda kv: -kv[1])[:6]},
        }


def _ms(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    values = np.array(seconds) * 1e3
    return {"mean": float(values.mean()), "p50": float(np.median(values)),
            "p90": float(np.percentile(values, 90)), "max": float(values.max())}


def format_profile(p: dict) -> str:
    def ms(d: dict) -> str:
        return (f"mean {d['mean']:.2f} ms, p90 {d['p90']:.2f} ms" if d else "-")
    cores = ", ".join(f"{group} {c:.2f}" for group, c in p["cpu_cores_by_thread"].items())
    return "\n".join([
        f"     {p['batches']} batches, {p['ms_per_batch']:.1f} ms each; next(): {ms(p['next_ms'])}",
        f"     operator call: {ms(p['operator_call_ms'])}; gap to the next call: "
        f"{ms(p['gap_to_next_call_ms'])}; batches stashed at the call: {p['stashed_at_call']}",
        f"     schedule: {ms(p['schedule_ms'])}; finish: {ms(p['finish_ms'])}; decode runs at "
        f"once: {p['decodes_at_once']:.1f}",
        f"     GIL probe wakes late by: {ms(p['gil_late_ms'])}; CPU cores by thread: {cores}",
    ])


@contextlib.contextmanager
def gpu_work(enabled: bool) -> Iterator[dict]:
    """``--gpu_work``: the device time of the kernels, copies and memsets that this process ran
    inside the block, from every thread and stream (CUPTI, through torch.profiler), by name.

    The loader's work on the GPU's SMs and memory is what a model beside it loses, whatever
    the streams' order: this says how much there is, and what it is."""
    found: dict = {}
    if not enabled:
        yield found
        return
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        yield found
    by_name: dict = collections.defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            by_name[event.name][0] += event.time_range.elapsed_us() / 1e3
            by_name[event.name][1] += 1
    found["device_ms"] = sum(ms for ms, _ in by_name.values())
    found["operations"] = sum(calls for _, calls in by_name.values())
    found["by_name"] = {name: {"ms": ms, "calls": calls} for name, (ms, calls) in
                        sorted(by_name.items(), key=lambda kv: -kv[1][0])}


def format_gpu_work(work: dict, batches: int, top: int = 8) -> str:
    """A row's device time a batch, and its largest parts."""
    lines = [f"     GPU work: {work['device_ms'] / max(batches, 1):.2f} ms of device time a batch "
             f"({work['operations']} kernels, copies and memsets)"]
    for name, v in list(work["by_name"].items())[:top]:
        lines.append(f"       {v['ms'] / max(batches, 1):7.3f} ms  {v['calls'] / max(batches, 1):6.1f}"
                     f" calls  {name[:110]}")
    return "\n".join(lines)
