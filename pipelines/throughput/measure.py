"""One row of the benchmark: run a workload, time it, and record what it cost around it.

A workload returns :class:`Timed` (frames delivered, and when its timed part began and ended);
:func:`measure` adds the CPU cores it kept busy (from /proc: this process and its DALI workers),
the device memory it took above what was in use at its start, and how busy the GPU's video
decoders were during the timed part (NVML).
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from dali_gop.hooks import annotate

STREAM, RANDOM = "stream", "random"
SAMPLE_SECONDS = 0.05


@dataclass
class Timed:
    """What a workload returns: frames in its timed part, that part's perf_counter bounds, and
    figures of its own for the report (``details``)."""
    frames: int
    started: float
    ended: float
    details: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Result:
    name: str
    frames_per_s: float
    frames: int
    seconds: float
    cpu_cores: float
    peak_gpu_mib: float | None     # None: measured without a GPU
    nvdec_busy: float | None = None   # mean decoder utilization (%) in the timed part
    note: str = ""
    method: str = ""               # what was measured, the chart's group: "dali-gop (nvdec)"
    access: str = STREAM           # stream or random
    details: dict = field(default_factory=dict)   # the workload's own figures (train, profile)


# -- CPU time, from /proc ------------------------------------------------------------------------
def _stat(path: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds: user + system) of a /proc stat file; None if it is gone."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()   # the name in () may hold spaces
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int | None = None) -> float:
    """CPU time of a process and all its live descendants (DALI's workers)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        stat = _stat(f"/proc/{entry}/stat") if entry.isdigit() else None
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry))
            times[int(entry)] = stat[1]
    total, todo = 0.0, [pid or os.getpid()]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += children.get(p, [])
    return total


def thread_cpu_seconds() -> dict[int, tuple[str, float]]:
    """{native thread id: (thread name, CPU seconds)} of this process's threads."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        stat = _stat(f"/proc/self/task/{tid}/stat")
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if stat is not None:
            out[int(tid)] = (name, stat[1])
    return out


@dataclass(frozen=True)
class ThreadClock:
    """Where the calling thread's time went so far, by the kernel's count: on a core
    (``cpu_s``), runnable but waiting for a core (``runqueue_s``: schedstat's run delay), and how
    often it left its core by itself (``sleeps``: a lock, a sync, I/O) or had it taken
    (``preempted``). A training thread slowed beside the loader either waits for a core (the
    loader's threads take it: their priority would help) or sleeps more (a lock or the GPU:
    fewer calls would). The kernel's three counts are all None where it does not keep them."""
    cpu_s: float
    runqueue_s: float | None
    sleeps: int | None
    preempted: int | None

    @classmethod
    def now(cls) -> "ThreadClock":
        counts = (None, None, None)
        try:
            with open("/proc/thread-self/schedstat") as f:
                runqueue = int(f.read().split()[1]) / 1e9
            with open("/proc/thread-self/status") as f:
                switches = dict(line.split(":", 1) for line in f if "ctxt_switches" in line)
            counts = (runqueue, int(switches["voluntary_ctxt_switches"]),
                      int(switches["nonvoluntary_ctxt_switches"]))
        except (OSError, IndexError, KeyError, ValueError):
            pass
        return cls(time.thread_time(), *counts)

    def since(self, earlier: "ThreadClock") -> dict:
        """This clock minus ``earlier`` (the same thread's), as a timed part's details:
        ``thread_cpu_s``, ``thread_runqueue_s``, ``thread_sleeps``, ``thread_preempted``."""
        def delta(name):
            a, b = getattr(self, name), getattr(earlier, name)
            return None if a is None or b is None else a - b
        return {f"thread_{name}": delta(name)
                for name in ("cpu_s", "runqueue_s", "sleeps", "preempted")}


# -- GPU samplers ----------------------------------------------------------------------------------
class Sampler:
    """Calls ``read()`` every SAMPLE_SECONDS in a thread, keeping (time, value) pairs."""

    def __init__(self, read: Callable[[], float | None]):
        self._read = read
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._take()
        self._thread.start()

    def _take(self) -> None:
        value = self._read()
        if value is not None:
            self.samples.append((time.perf_counter(), value))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._take()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def values(self, start: float = float("-inf"), end: float = float("inf")) -> list[float]:
        return [v for t, v in self.samples if start <= t <= end]


def gpu_memory_sampler(device: int) -> Sampler:
    """Device memory in use on GPU ``device`` (all allocators: DALI, NVDEC, torch)."""
    import torch

    def used() -> int:
        # the device explicitly: the current device is per thread
        free, total = torch.cuda.mem_get_info(device)
        return total - free

    return Sampler(used)


class GpuMemoryPeak:
    """Peak device memory in use above the start, in MiB; ``device=None`` (no GPU): None."""

    def __init__(self, device: int | None):
        self._sampler = None if device is None else gpu_memory_sampler(device)

    def stop(self) -> float | None:
        if self._sampler is None:
            return None
        self._sampler.stop()
        values = self._sampler.values()
        return (max(values) - values[0]) / 2**20


class _NvmlCtypes:
    """The three NVML calls needed, through libnvidia-ml when pynvml is not installed."""

    def __init__(self, index: int):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        if self.lib.nvmlInit_v2() != 0:
            raise OSError("nvmlInit_v2 failed")
        self.handle = ctypes.c_void_p()
        if self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self.handle)) != 0:
            raise OSError(f"no NVML device {index}")

    def decoder_utilization(self) -> float | None:
        util, period = ctypes.c_uint(), ctypes.c_uint()
        status = self.lib.nvmlDeviceGetDecoderUtilization(self.handle, ctypes.byref(util),
                                                          ctypes.byref(period))
        return float(util.value) if status == 0 else None


class _Pynvml:
    def __init__(self, index: int):
        import pynvml
        pynvml.nvmlInit()
        self._get = pynvml.nvmlDeviceGetDecoderUtilization
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def decoder_utilization(self) -> float | None:
        return float(self._get(self.handle)[0])


def nvml_index(device: int) -> int:
    """NVML counts every GPU of the host; CUDA only the visible ones, in CUDA_VISIBLE_DEVICES's
    order (UUIDs there: assumed to be in NVML's order)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    if device < len(visible) and visible[device].strip().isdigit():
        return int(visible[device])
    return device


def decoder_sampler(device: int | None) -> Sampler | None:
    """NVDEC utilization (%) of GPU ``device``: pynvml if importable, else libnvidia-ml through
    ctypes; None without a GPU or without NVML."""
    if device is None:
        return None
    for nvml in (_Pynvml, _NvmlCtypes):
        try:
            reader = nvml(nvml_index(device))
        except Exception:   # not installed, no NVML library, or pynvml's NVMLError
            continue
        return Sampler(reader.decoder_utilization)
    return None


# -- a row -----------------------------------------------------------------------------------------
def measure(name: str, run: Callable[[], Timed], *, method: str = "", access: str = STREAM,
            note: str = "", device: int | None = 0, verbose: bool = True) -> Result:
    """Run ``run()`` and make its row; peak memory and CPU cores over the whole call (set-up
    included), decoder utilization over its timed part."""
    memory, decoders = GpuMemoryPeak(device), decoder_sampler(device)
    cpu0, wall0 = process_cpu_seconds(), time.perf_counter()
    try:
        with annotate(name):
            timed = run()
    finally:
        peak = memory.stop()
        if decoders is not None:
            decoders.stop()
    cpu = process_cpu_seconds() - cpu0
    wall = time.perf_counter() - wall0
    busy = decoders.values(timed.started, timed.ended) if decoders is not None else []
    result = Result(name, timed.frames / timed.seconds, timed.frames, timed.seconds, cpu / wall,
                    peak, sum(busy) / len(busy) if busy else None, note, method or name, access,
                    timed.details)
    if verbose:
        print(f"  {row_line(result)}", flush=True)
    return result


def row_line(r: Result) -> str:
    gpu = "" if r.peak_gpu_mib is None else f", +{r.peak_gpu_mib:,.0f} MiB GPU"
    nvdec = "" if r.nvdec_busy is None else f", NVDEC {r.nvdec_busy:.0f}% busy"
    return (f"{r.name:<46} {r.frames_per_s:>9,.0f} frames/s  ({r.frames} frames, "
            f"{r.seconds:.2f} s, {r.cpu_cores:.1f} CPU cores{gpu}{nvdec}) {r.note}")
