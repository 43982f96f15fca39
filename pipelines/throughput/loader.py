"""The dali-gop loader through ``make_loader``, as a training loop sees it: the ``loader`` rows (the
--backend, stream and random access), the ``budget`` rows (the same within memory budgets) and the
``dali`` rows (the dali backend).

Frames are counted as delivered, samples x cameras x T of each batch, after warm-up batches.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from dali_gop import ConfigError, GopLoader, RandomPattern, StreamPattern, make_loader
from dali_gop._dataset import Dataset
from dali_gop._source import GopSource
from dali_gop._store import GopStore
from pipelines.throughput.bench import Bench
from pipelines.throughput.measure import RANDOM, STREAM, Result, Timed
from pipelines.throughput.profile import Profiler, format_gpu_work, format_profile, gpu_work


@contextmanager
def open_loader(b: Bench, pattern: str, backend: str, batch_size: int, *, hooks=(),
                **options) -> Iterator[GopLoader]:
    """This rank's loader with the run's options; closed at the end (its pipeline, workers and
    GPU memory go at once, not at garbage collection)."""
    loader = make_loader(**loader_arguments(b, pattern, backend, batch_size, hooks=hooks,
                                            **options))
    try:
        yield loader
    finally:
        loader.close()


def loader_arguments(b: Bench, pattern: str, backend: str, batch_size: int, *, hooks=(),
                     **options) -> dict:
    """``make_loader``'s arguments for this rank's loader with the run's options."""
    a = b.args
    if backend == "nvdec":
        options.update(hooks=hooks, decode_threads=a.decode_threads)
        options.setdefault("queued_steps", a.queued_steps)
    if a.prefetch_queue_depth is not None:
        options.setdefault("prefetch_queue_depth", a.prefetch_queue_depth)
    if a.memory_budget is not None:     # the budget rows give theirs
        options.setdefault("memory_budget",
                           None if a.memory_budget.lower() == "none" else a.memory_budget)
    return dict(gop_root=b.gops, pattern=pattern, batch_size=batch_size, backend=backend,
                num_workers=a.workers, stream_lead=a.stream_lead, decode_ahead=a.decode_ahead,
                **b.shard, **options)


def endless(loader: GopLoader) -> Iterator[dict]:
    """Batches epoch after epoch, as a training loop sees them."""
    while True:
        yield from loader


def frames_in(batch) -> int:
    return batch.shape[0] * batch.shape[1] * batch.shape[2]


def finished(frames) -> None:
    """Wait until the GPU has written ``frames`` (a CPU tensor is ready as it is)."""
    if frames.is_cuda:
        import torch
        torch.cuda.synchronize(frames.device)


def loader_run(b: Bench, pattern: str, backend: str, batch_size: int, warmup: int | None,
               batches: int | None, *, epochs: int = 1, profiler: Profiler | None = None,
               not_streaming: tuple[int, int] | None = None, **options) -> Timed:
    """``warmup`` batches (None: one epoch), then ``batches`` timed ones (None: ``epochs`` whole
    epochs), crossing epochs if need be; (warmup, batches) ``not_streaming`` instead where the
    loader runs without stream decoding (a memory budget turned it off)."""
    with open_loader(b, pattern, backend, batch_size, hooks=[profiler] if profiler else [],
                     **options) as loader:
        if not_streaming and not loader.settings["stream_decoding"]:
            warmup, batches = not_streaming
        warmup = len(loader) if warmup is None else warmup
        batches = epochs * len(loader) if batches is None else batches
        stream = endless(loader)
        for _ in range(warmup):
            finished(next(stream)["frames"])
        if profiler:
            profiler.start()
        with gpu_work(b.args.gpu_work and backend != "cpu") as work:
            started, frames, waits = time.perf_counter(), 0, []
            for _ in range(batches):
                asked = time.perf_counter()
                batch = next(stream)["frames"]
                waits.append(time.perf_counter() - asked)
                frames += frames_in(batch)
            finished(batch)
            ended = time.perf_counter()
        details = {"profile": profiler.stop(waits)} if profiler else {}
        if work:
            details["gpu_work"] = dict(work, batches=batches)
        details["settings"] = loader.settings
        details["held_peak_mib"] = {kind: round(held["peak"] / 2**20, 1)
                                    for kind, held in loader.memory().items()}
    return Timed(frames, started, ended, details)


def mean_decode_depth(b: Bench, batch_size: int) -> float:
    """Frames NVDEC decodes per wanted frame when each random sample is decoded from its GOP
    start (the first 2,000 samples of epoch 0): the divisor of the ceiling in the random target."""
    samples = RandomPattern().epoch_samples(b.clips, epoch=0, seed=0, shard_id=0, num_shards=1,
                                            batch_size=batch_size)
    store = GopStore(b.gops)
    decoded = wanted = 0
    for spec in samples[:2000]:
        for camera in b.cameras:
            gop = store.gop_of(f"{spec.clip}/{camera}", spec.frames[0])
            decoded += gop.packets_through(max(spec.frames))
            wanted += len(spec.frames)
    return decoded / wanted


def stream_decode_ratio(b: Bench, batch_size: int, epoch: int = 1) -> float:
    """Frames NVDEC decodes per frame delivered in stream access, from the workers' plans of one
    epoch of this rank's shard (epoch 1: past the first GOPs of epoch 0, as the timed epochs):
    each GOP sent to a slot is decoded whole, so a GOP that two slots share (a slot's run of
    samples ending or starting inside it) is decoded by each; plain samples (windows across GOPs,
    padding) from their GOP start."""
    source = GopSource(Dataset.open(b.gops), StreamPattern(), batch_size=batch_size,
                       stream_lead=b.args.stream_lead, **b.shard)
    gop_of = source.store.gop_of
    decoded = delivered = 0
    for position in range(len(source.samples(epoch))):
        for request in source._requests(epoch, position):
            delivered += len(request.frames)
            if request.stream_slot < 0:
                decoded += gop_of(request.video, request.frames[0]).packets_through(
                    max(request.frames))
            decoded += sum(gop_of(video, start).count for video, start, _ in request.stream_sends)
    return decoded / delivered


def _say_settings(b: Bench, row: Result) -> None:
    """What the loader ran with (its default memory budget may have lowered options)."""
    if b.rank == 0:
        settings = row.details["settings"]
        budget = settings["memory_budget"]
        chosen = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "memory_budget")
        within = "no memory budget" if budget is None else f"memory_budget {budget / 2**30:.1f} GiB"
        print(f"     ran with {chosen} ({within})", flush=True)
        host = {kind: mib for kind, mib in row.details.get("held_peak_mib", {}).items()
                if kind.endswith("_host")}
        if host:
            print("     host memory at its peak: " +
                  ", ".join(f"{kind} {mib:,.0f} MiB" for kind, mib in host.items()), flush=True)


def _profiled(b: Bench, name: str, run, **options) -> Result:
    """A row whose workload takes a profiler (--profile, nvdec), printed after the row with what
    the loader ran with."""
    profile = b.args.profile and b.args.backend == "nvdec"
    result = b.measure(name, lambda: run(Profiler() if profile else None), **options)
    _say_settings(b, result)
    if profile and b.rank == 0:
        print(format_profile(result.details["profile"]), flush=True)
    work = result.details.get("gpu_work")
    if work and b.rank == 0:
        print(format_gpu_work(work, work["batches"]), flush=True)
    return result


#: the loader group's rows (--loader_rows)
LOADER_ROWS = ("stream", "random", "no_stream")


def _timing(a) -> dict:
    """loader_run's timing for each access, the same in the loader's rows and the budget rows, so
    that they compare: stream ``--stream_epochs`` after an untimed one, random ``--warmup`` then
    ``--random_batches``. A stream plan without stream decoding (a memory budget turned it off)
    decodes each frame from its GOP start: it is timed as the random rows are, where whole epochs
    would take minutes at its speed."""
    return {STREAM: dict(warmup=None, batches=None, epochs=a.stream_epochs,
                         not_streaming=(a.warmup, a.random_batches)),
            RANDOM: dict(warmup=a.warmup, batches=a.random_batches)}


def loader_rows(b: Bench) -> list[Result]:
    """The --backend's stream and random rows as a user gets them (the default memory budget
    included), and stream order without stream decoding: those of ``--loader_rows``."""
    a, backend = b.args, b.args.backend
    method = f"dali-gop ({backend})"
    timing = _timing(a)
    rows = []
    if "stream" in a.loader_rows:
        ratio = stream_decode_ratio(b, a.group_num)
        stream = _profiled(b, f"dali-gop stream ({backend})",
                           lambda p: loader_run(b, STREAM, backend, a.group_num, **timing[STREAM],
                                                profiler=p),
                           method=method, note=f"{ratio:.2f} frames decoded a frame delivered")
        stream.details["stream_decode_ratio"] = ratio
        rows.append(stream)
    if "random" in a.loader_rows:
        depth = mean_decode_depth(b, a.random_group_num)
        random = _profiled(b, f"dali-gop random ({backend})",
                           lambda p: loader_run(b, RANDOM, backend, a.random_group_num,
                                                **timing[RANDOM], profiler=p),
                           method=method, access=RANDOM, note=f"mean decode depth {depth:.1f}")
        random.details["mean_decode_depth"] = depth
        rows.append(random)
    if "no_stream" in a.loader_rows:
        rows.append(b.measure(f"dali-gop stream, no stream decoding ({backend})",
                              lambda: loader_run(b, STREAM, backend, a.random_group_num,
                                                 **timing[RANDOM], stream_decoding=False),
                              method=f"{method}, no stream decoding",
                              note="each frame decoded from its GOP start"))
    return rows


def budget_rows(b: Bench) -> list[Result]:
    """Stream and random access within each of ``--budgets`` (``make_loader(memory_budget=...)``):
    frames/s against the budget, and the peak device memory each row really took. Each row is
    timed as the loader row of its access is (stream: ``--stream_epochs`` after an untimed one;
    a stream budget that turns stream decoding off, as stream order without it is), so that a
    budget's row compares with the target and with the loader's own. A budget the loader refuses
    is said in a line, not measured."""
    a, backend = b.args, b.args.backend
    rows = []
    timing = _timing(a)
    for access, group in ((STREAM, a.group_num), (RANDOM, a.random_group_num)):
        for given in a.budgets:
            budget = None if given.lower() == "none" else given
            name = f"dali-gop {access}, budget {given} ({backend})"
            try:
                row = _profiled(
                    b, name, lambda profiler, access=access, group=group, budget=budget:
                    loader_run(b, access, backend, group, **timing[access],
                               profiler=profiler, memory_budget=budget),
                    method=f"dali-gop ({backend}) within a memory budget", access=access,
                    note=f"memory_budget={budget}")
            except ConfigError as e:
                if b.rank == 0:
                    print(f"  {name}: refused ({e})", flush=True)
                continue
            row.details["budget"] = given
            rows.append(row)
    return rows


def dali_rows(b: Bench) -> list[Result]:
    a, note = b.args, "fn.decoders.video on the GOP bytes, each sample from its GOP start"
    return [b.measure(f"dali-gop {access} (dali)",
                      lambda access=access, group=group: loader_run(
                          b, access, "dali", group, a.warmup, a.baseline_batches,
                          stream_decoding=False),
                      method="dali-gop (dali backend)", access=access, note=note)
            for access, group in ((STREAM, a.group_num), (RANDOM, a.random_group_num))]
