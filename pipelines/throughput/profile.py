"""Where a loader batch's time goes (``--profile``): a :class:`dali_gop.hooks.DecodeHook` that the
nvdec operator calls around its work, so nothing of the library is patched.

Over a row's timed part it records DALI's operator calls (and the gaps between them, when DALI's
thread does other work), how many batches the CPU stage had handed over at each call, planning and
waiting per batch (of finishing, how long it waited for the batch's decodes), how many decode
runs were going at once, how long the training loop waited in
``next()``, how late a thread that sleeps 1 ms wakes (the GIL's hand-over latency), and the CPU
time of this process's threads by group.

``--gpu_work`` records instead what ran on the GPU (:class:`DeviceTimeline`): a loader row's
device time by kernel and copy, and for a train row how long the training's stream ran and waited
alone and beside the loader, and how much of the loader's GPU work ran beside the model's.
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from dataclasses import dataclass
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
        return {kind: [] for kind in ("batch", "schedule", "finish", "wait", "decode")}

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

    def wait(self):
        return self._span("wait")

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

        def lasted(kind: str) -> dict:
            return _ms([end - start for start, end, _ in self.spans[kind]])
        return {
            "batches": len(waits),
            "ms_per_batch": 1e3 * wall / max(len(waits), 1),
            "next_ms": _ms(waits),
            "operator_call_ms": lasted("batch"),
            "gap_to_next_call_ms": _ms([b[0] - a[1] for a, b in zip(calls, calls[1:])]),
            "stashed_at_call": dict(sorted(collections.Counter(x for *_, x in calls).items())),
            "schedule_ms": lasted("schedule"),
            "finish_ms": lasted("finish"),
            "wait_ms": lasted("wait"),
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
        f"     schedule: {ms(p['schedule_ms'])}; finish: {ms(p['finish_ms'])}, of which waiting "
        f"for decodes: {ms(p['wait_ms'])}; decode runs at once: "
        f"{p['decodes_at_once']:.1f}",
        f"     GIL probe wakes late by: {ms(p['gil_late_ms'])}; CPU cores by thread: {cores}",
    ])


@dataclass(frozen=True)
class Span:
    """One kernel, copy or memset on the GPU: its stream, and when it ran (us, CUPTI's clock)."""
    stream: int
    start_us: float
    end_us: float
    name: str


class DeviceTimeline:
    """What ran on the GPU between :meth:`start` and :meth:`stop`: every kernel, copy and memset
    of this process, from every thread and stream, the driver's own (NVDEC's maps) and DALI's
    included (CUPTI, through torch.profiler)."""

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile
        self._profile = profile(activities=[ProfilerActivity.CUDA])
        self._profile.start()

    def stop(self) -> list[Span]:
        from torch.autograd import DeviceType
        self._profile.stop()
        return [Span(event.device_resource_id, event.time_range.start, event.time_range.end,
                     event.name)
                for event in self._profile.events() if event.device_type == DeviceType.CUDA]


@contextlib.contextmanager
def gpu_work(enabled: bool) -> Iterator[dict]:
    """``--gpu_work``: the device time of the kernels, copies and memsets that this process ran
    inside the block, from every thread and stream, by name.

    The loader's work on the GPU's SMs and memory is what a model beside it loses, whatever
    the streams' order: this says how much there is, and what it is."""
    found: dict = {}
    if not enabled:
        yield found
        return
    timeline = DeviceTimeline()
    timeline.start()
    try:
        yield found
    finally:
        spans = timeline.stop()
    found.update(work_by_name(spans))


def work_by_name(spans: list[Span]) -> dict:
    by_name: dict = collections.defaultdict(lambda: [0.0, 0])
    for span in spans:
        by_name[span.name][0] += (span.end_us - span.start_us) / 1e3
        by_name[span.name][1] += 1
    return {"device_ms": sum(ms for ms, _ in by_name.values()),
            "operations": sum(calls for _, calls in by_name.values()),
            "by_name": {name: {"ms": ms, "calls": calls} for name, (ms, calls) in
                        sorted(by_name.items(), key=lambda kv: -kv[1][0])}}


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Time in both of two merged interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def busiest_stream(spans: list[Span]) -> int:
    """The stream that ran the most device time: in the model-alone phase, the training's."""
    time_on: dict = collections.Counter()
    for span in spans:
        time_on[span.stream] += span.end_us - span.start_us
    return max(time_on, key=time_on.get)


def timeline_account(spans: list[Span], training_stream: int, steps: int,
                     seconds: float) -> dict:
    """A phase's GPU timeline, in ms a step: how long the training's stream ran something
    (``model_busy_ms``; the rest of the step it waited, for launches or for its inputs), how
    much device time everything else took (the loader's, summed and as a union) and how much
    of that ran while the training's stream was running too."""
    def per_step(us: float) -> float:
        return us / 1e3 / steps

    model = _merged([(s.start_us, s.end_us) for s in spans if s.stream == training_stream])
    others = [s for s in spans if s.stream != training_stream]
    loader = _merged([(s.start_us, s.end_us) for s in others])
    by_name = work_by_name(others)["by_name"]
    return {"step_ms": 1e3 * seconds / steps,
            "model_busy_ms": per_step(sum(end - start for start, end in model)),
            "model_operations": sum(s.stream == training_stream for s in spans) / steps,
            "loader_ms": per_step(sum(s.end_us - s.start_us for s in others)),
            "loader_busy_ms": per_step(sum(end - start for start, end in loader)),
            "loader_beside_model_ms": per_step(_overlap(model, loader)),
            "loader_by_name": {name: v["ms"] / steps for name, v in list(by_name.items())[:4]}}


def format_timeline(model: dict, together: dict) -> str:
    """A train row's two traced phases, side by side."""
    def idle(p: dict) -> float:
        return p["step_ms"] - p["model_busy_ms"]
    largest = ", ".join(f"{name[:48]} {ms:.2f}" for name, ms in
                        together["loader_by_name"].items())
    return (f"     GPU timeline a step (--gpu_work): model alone {model['step_ms']:.2f} ms, its "
            f"stream running {model['model_busy_ms']:.2f} ms ({model['model_operations']:.0f} "
            f"operations), waiting {idle(model):.2f} ms; together {together['step_ms']:.2f} ms, "
            f"running {together['model_busy_ms']:.2f} ms, waiting {idle(together):.2f} ms; "
            f"the loader's GPU work {together['loader_ms']:.2f} ms (something of it running "
            f"{together['loader_busy_ms']:.2f} ms, {together['loader_beside_model_ms']:.2f} ms "
            f"of that beside the model's); largest, ms: {largest}")


def format_gpu_work(work: dict, batches: int, top: int = 8) -> str:
    """A row's device time a batch, and its largest parts."""
    lines = [f"     GPU work: {work['device_ms'] / max(batches, 1):.2f} ms of device time a batch "
             f"({work['operations']} kernels, copies and memsets)"]
    for name, v in list(work["by_name"].items())[:top]:
        lines.append(f"       {v['ms'] / max(batches, 1):7.3f} ms  {v['calls'] / max(batches, 1):6.1f}"
                     f" calls  {name[:110]}")
    return "\n".join(lines)
