"""The loader beside a training step (``train`` rows): does it slow a model that shares its GPU?

A stand-in model trains on torch's default stream of the loader's GPU (nvdec): a stack of 3x3
convolutions with ReLU, bf16, on each batch's frames downsampled first (bilinear), forward +
backward + SGD. Four phases, one process, one GPU, in this order:

  model alone    steps on one fixed batch already on the GPU, before the loader exists: the
                 training's own speed
  loader alone   batches of the loader, each touched (one element read back to the host),
                 once what a fresh loader decodes ahead is spent (:func:`loader_warmup`)
  together       steps fed by the loader
  model alone    again, once the loader is closed

and ``overlap`` = time per step together / max(model alone, loader alone), the model alone's
time the mean of its two timings (the row says both): 1.00 when the two
overlap perfectly, ``serial`` (their sum over that max) when they take turns. Rows: stream and
random access with the model of ``--train_layers/--train_channels/--train_size`` (random with
``--random_train_layers``). Overlap is a fair question only of a model the loader can hide
behind whose step the loader's work is a good part of, so by default (``auto``) each of the two
sizes its model first: the loader alone and the model at 1 and 5 layers are timed for a few
steps, and the layers are those at which the loader takes ``--train_share`` of the model's time
(each rank sizes its own; where the loader takes less than 30% of even one layer's step, the
channels are halved first; never more layers than peak within a third of the free memory, and the
run prints what it chose); stream with a
launch-bound model (``--launch_*``: many tiny layers, so the step is bound by kernel launches in
Python, the thread that competes with DALI's for the GIL); stream with ``loss.item()`` after every
step, as a logging loop does (the host waits for the GPU each step); and, unless
``--queued_steps`` sets it for every row, random again with ``make_loader(queued_steps=2)``. A
row's peak device memory includes the model's and the fixed batch's. With ``--gpu_work`` the
model-alone and together phases are traced on the GPU: the line then says how long the training's
stream ran and waited in a step, alone and together, and how much of the loader's GPU work ran
beside the model's (a step longer together with the stream running longer is the loader's work
taking the GPU from the model; with it waiting longer, the model's kernels came late).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator

from dali_gop.format import read_index
from pipelines.throughput.bench import Bench
from pipelines.throughput.loader import endless, frames_in, loader_arguments, open_loader
from pipelines.throughput.measure import RANDOM, STREAM, Result, ThreadClock, Timed
from pipelines.throughput.profile import (DeviceTimeline, Profiler, busiest_stream, format_profile,
                                          format_timeline, timeline_account)


@dataclass(frozen=True)
class StepModel:
    layers: int
    channels: int
    size: tuple[int, int]     # (height, width) the frames are downsampled to
    sync: bool = False        # loss.item() after every step

    def describe(self) -> str:
        sync = ", loss.item() every step" if self.sync else ""
        return (f"{self.layers} conv layers x {self.channels} channels at "
                f"{self.size[0]}x{self.size[1]}, bf16{sync}")


class TrainStep:
    """One forward + backward + SGD step of a :class:`StepModel` on a uint8 frame batch
    (..., H, W, 3), on the current stream, or with ``side_stream`` on a stream of its own that
    first waits for the current one (issue 16's control: a model that does not share torch's
    default stream with anything)."""

    def __init__(self, model: StepModel, device: int, side_stream: bool = False):
        import torch
        self.torch, self.model = torch, model
        self.side = torch.cuda.Stream(device) if side_stream else None
        convs = [torch.nn.Conv2d(3, model.channels, 3, padding=1)] + [
            torch.nn.Conv2d(model.channels, model.channels, 3, padding=1)
            for _ in range(model.layers - 1)]
        self.net = torch.nn.Sequential(*[m for conv in convs for m in (conv, torch.nn.ReLU())])
        self.net.to(f"cuda:{device}", torch.bfloat16)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=1e-4)

    def __call__(self, frames) -> None:
        if self.side is None:
            return self._step(frames)
        self.side.wait_stream(self.torch.cuda.current_stream())
        with self.torch.cuda.stream(self.side):
            self._step(frames)

    def _step(self, frames) -> None:
        torch = self.torch
        x = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).to(torch.bfloat16) / 255
        x = torch.nn.functional.interpolate(x, size=self.model.size, mode="bilinear",
                                            antialias=False)
        loss = self.net(x).float().square().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.model.sync:
            loss.item()


class LoaderProcess:
    """The loader in a process of its own (``--loader_process``): its batches' frames come over as
    CUDA tensors (torch.multiprocessing: CUDA IPC, the consumer's stream waits for the producer's
    copy), so that none of the loader's Python shares the training thread's GIL. An endless
    iterator of ``{"frames": tensor}``; the process ends with the ``with`` block."""

    #: seconds without a batch after which the process is taken to have failed
    SILENCE = 120.0

    def __init__(self, arguments: dict, device: int | None, depth: int = 2):
        import torch.multiprocessing as mp
        context = mp.get_context("spawn")
        self._queue = context.Queue(maxsize=depth)
        self._stop = context.Event()
        # not a daemon: the loader's DALI workers are its children
        self._process = context.Process(target=_serve, name="dali-gop-loader-process",
                                        args=(arguments, device, self._queue, self._stop,
                                              backend_defaults()))

    def __enter__(self) -> "LoaderProcess":
        self._process.start()
        return self

    def __iter__(self) -> Iterator[dict]:
        import queue
        while True:
            try:
                # a tensor that cannot be sent fails in the queue's feeder thread, where the
                # process cannot see it: without a limit, this would wait for ever
                item = self._queue.get(timeout=self.SILENCE)
            except queue.Empty:
                raise RuntimeError(f"the loader process sent no batch for {self.SILENCE:g} s "
                                   f"(alive: {self._process.is_alive()}); its errors are above")
            if isinstance(item, BaseException):
                raise item
            yield {"frames": item}

    def __exit__(self, *exc) -> None:
        import queue
        self._stop.set()
        while self._process.is_alive():     # a producer blocked on a full queue lets go
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._process.join()


#: the library's defaults that the run's A/B options set (__main__.set_run_defaults), by name:
#: (module, attribute), read by each loader and each session of ours as it is made
RUN_DEFAULTS = {
    "sessions": ("dali_gop.backends._nvdec", "NvdecBackend.sessions"),            # --nvdec_sessions
    "stream_sessions": ("dali_gop.backends._nvdec", "NvdecBackend.stream_sessions"),
    "kept_gops": ("dali_gop.backends._nvdec", "NvdecBackend.kept_gops"),
    "groups": ("dali_gop.backends._nvdec", "STREAM_GROUPS"),                     # --stream_groups
    "priority": ("dali_gop.backends._cuda", "CudaDriver.priority"),             # --stream_priority
    "display_delay": ("dali_gop.backends._nvdec_session", "DISPLAY_DELAY"),
    "unmap_late": ("dali_gop.backends._nvdec_session", "UNMAP_LATE"),
    "host_threads": ("dali_gop._budget", "HOST_THREADS"),
    "decode_nice": ("dali_gop.backends._nvdec", "DECODE_NICE"),
}


def _default_owner(name: str) -> tuple[object, str]:
    """The object that holds the run default ``name``, and its attribute."""
    import importlib
    module, path = RUN_DEFAULTS[name]
    owner = importlib.import_module(module)
    *classes, attribute = path.split(".")
    for cls in classes:
        owner = getattr(owner, cls)
    return owner, attribute


def backend_defaults() -> dict:
    """This process's values of :data:`RUN_DEFAULTS`: a spawned process imports the library
    afresh, so the run's must go with it."""
    return {name: getattr(*_default_owner(name)) for name in RUN_DEFAULTS}


def set_backend_defaults(values: dict) -> None:
    """Set :data:`RUN_DEFAULTS` by name, in this process."""
    for name, value in values.items():
        setattr(*_default_owner(name), value)


def _serve(arguments: dict, device: int | None, out, stop, defaults: dict) -> None:
    """The loader process: the run's backend ``defaults``, then batches into ``out`` until
    ``stop``."""
    import queue

    from dali_gop import make_loader     # first: it sets CUDA's work queues before CUDA starts
    set_backend_defaults(defaults)
    if device is not None:
        import torch
        torch.cuda.set_device(device)
    try:
        with make_loader(**arguments) as loader:
            while not stop.is_set():
                for batch in loader:
                    # CUDA IPC sends only memory of torch's own caching allocator, and the
                    # iterator's outputs may be DALI's: the copy is the price of the experiment
                    frames = batch["frames"].clone()
                    while not stop.is_set():
                        try:
                            out.put(frames, timeout=0.1)
                            break
                        except queue.Full:
                            pass
                    if stop.is_set():
                        break
    except Exception as e:      # the training side raises it
        out.put(RuntimeError(f"the loader process failed: {e}"))
    while not stop.is_set():    # what was sent stays valid until the consumer is done
        time.sleep(0.1)


def timed_steps(step: Callable[[], int], warmup: int, steps: int, device: int,
                on_start: Callable[[], None] = lambda: None) -> Timed:
    """``warmup`` untimed calls, then ``steps`` timed (``on_start()`` first); ``step()`` returns
    the frames it used. ``details``: where the calling thread's time went in the timed part
    (:meth:`ThreadClock.since`: a thread that launches kernels and is on a core less than the
    wall time waited for a core, or slept on a lock or the GPU)."""
    import torch
    for _ in range(warmup):
        step()
    torch.cuda.synchronize(device)
    on_start()
    started, clock = time.perf_counter(), ThreadClock.now()
    frames = sum(step() for _ in range(steps))
    torch.cuda.synchronize(device)
    return Timed(frames, started, time.perf_counter(), ThreadClock.now().since(clock))


def model_alone(b: Bench, model: StepModel, batch_size: int, warmup: int, steps: int,
                on_start: Callable[[], None] = lambda: None) -> Timed:
    """Steps of ``model`` on one fixed batch already on the GPU (freed when done)."""
    import torch
    torch.cuda.set_device(b.device)
    step = TrainStep(model, b.device, b.args.train_side_stream)
    index = read_index(b.gops, b.rels[0])
    fixed = torch.randint(0, 256, (batch_size, len(b.cameras), 1, index.height, index.width, 3),
                          dtype=torch.uint8, device=f"cuda:{b.device}")

    def model_step() -> int:
        step(fixed)
        return frames_in(fixed)

    return timed_steps(model_step, warmup, steps, b.device, on_start)


def loader_warmup(a, settings: dict | None, pattern: str) -> int:
    """Untimed batches before the loader alone is timed: ``--train_warmup``, and where stream
    slots decode ahead, twice (``stream_lead`` + a GOP) more. A fresh loader's first sends cover
    every GOP within the lead, and NVDEC decodes them while the pipeline starts; timed from
    there, the loader serves that store at the pace of DALI's thread, above NVDEC's (a stream
    row's "loader alone" was seen above the ceiling), and a model sized on it is too light. The
    store drains at least half a batch a batch while DALI's thread runs at least twice NVDEC's
    pace, so twice its depth is past it; with a slower thread the store hides less. ``settings``:
    the loader's (None, a loader in a process of its own: the longest lead a budget plans)."""
    from dali_gop._budget import HOST_LEAD_FACTOR
    if pattern != "stream":
        return a.train_warmup
    if settings is None:
        lead, streaming = HOST_LEAD_FACTOR * a.stream_lead, True
    else:
        lead, streaming = settings["stream_lead"], settings["stream_decoding"]
    return a.train_warmup + (2 * (lead + a.gop) if streaming else 0)


def loader_step(batches) -> int:
    """A loader batch, touched: one element read back to the host."""
    frames = next(batches)["frames"]
    frames[(0,) * frames.dim()].item()
    return frames_in(frames)


#: torch's caching-allocator counters (``torch.cuda.memory_stats``) a train row reports for its
#: together phase, the process's, every thread's: a cudaFree or a sync of all streams waits for
#: every kernel queued, the model's too, so any in a row's steady state is a suspect for its overlap
ALLOCATOR_COUNTERS = {"num_device_alloc": "cudaMalloc", "num_device_free": "cudaFree",
                      "num_sync_all_streams": "syncs of all streams",
                      "num_alloc_retries": "retries after running out"}


def allocator_counts(device: int) -> dict[str, int]:
    import torch
    stats = torch.cuda.memory_stats(device)
    return {key: stats.get(key, 0) for key in ALLOCATOR_COUNTERS}


#: the rows, by their --train_rows names
TRAIN_ROWS = ("stream", "random", "launch", "item", "queued")
QUEUED_STEPS = 2   # the extra random row's make_loader(queued_steps=...), without --queued_steps
CALIBRATION_LAYERS = (1, 5)   # the model is timed at these to size it (``auto``)
MOST_LAYERS = 64
#: the least share of the model's step the loader may take in a sized row (issue 16 asks for
#: 30-100%): below it even at one layer, the model's channels are halved
LEAST_SHARE = 0.3
FEWEST_CHANNELS = 16
#: the share of the device's free memory a sized model may peak at: the rest is the loader's,
#: which holds tens of GB without a memory budget
MODEL_ROOM = 1 / 3


def _per_layer(one_layer: float, five_layers: float) -> tuple[float, float]:
    """(fixed, per layer) of a step's cost measured at 1 and 5 layers: it grows by about a
    layer's each."""
    low, high = CALIBRATION_LAYERS
    per_layer = (five_layers - one_layer) / (high - low)
    return one_layer - low * per_layer, per_layer


def layers_for_share(one_layer: float, five_layers: float, loader: float, share: float) -> int:
    """Layers at which a step of ``loader`` seconds takes ``share`` of the model's step, from the
    model's step seconds at 1 and 5 layers; at most :data:`MOST_LAYERS`."""
    fixed, per_layer = _per_layer(one_layer, five_layers)
    wanted = loader / share - fixed
    if per_layer <= 0 or wanted >= MOST_LAYERS * per_layer:
        return MOST_LAYERS if wanted > 0 else 1
    return min(MOST_LAYERS, max(1, round(wanted / per_layer)))


def layers_that_fit(one_layer: int, five_layers: int, room: float) -> int:
    """The most layers whose step peaks within ``room`` bytes, from its peak bytes at 1 and 5
    layers; at least 1, at most :data:`MOST_LAYERS`."""
    fixed, per_layer = _per_layer(one_layer, five_layers)
    if per_layer <= 0:
        return MOST_LAYERS
    return min(MOST_LAYERS, max(1, int((room - fixed) // per_layer)))


def sized(b: Bench, pattern: str, batch_size: int, model: StepModel) -> StepModel:
    """``model`` with its layers set (``auto``, layers 0: see the module's docstring), and its
    channels halved while one layer is so heavy that the loader takes less than
    :data:`LEAST_SHARE` of its step; no more layers than peak within :data:`MODEL_ROOM` of the
    device's free memory. Says what it chose."""
    if model.layers:
        return model
    import torch
    a = b.args
    steps = max(a.train_steps // 3, 5)
    # the loader is timed over as many steps as its row times it: stream slots decode their next
    # GOPs only every GOP's length of batches, so fewer steps can miss that work and size the
    # model for a loader faster than the row then meets
    with open_loader(b, pattern, "nvdec", batch_size) as loader:
        batches = endless(loader)
        loader_seconds = timed_steps(lambda: loader_step(batches),
                                     loader_warmup(a, loader.settings, pattern),
                                     a.train_steps, b.device).seconds / a.train_steps
    calibrated: dict[int, list[tuple[float, int]]] = {}  # channels -> (seconds, peak bytes)

    def step_seconds(candidate: StepModel) -> tuple[float, float]:
        calibrated[candidate.channels] = []
        for n in CALIBRATION_LAYERS:
            torch.cuda.reset_peak_memory_stats(b.device)
            before = torch.cuda.memory_allocated(b.device)
            seconds = model_alone(b, replace(candidate, layers=n), batch_size, a.train_warmup,
                                  steps).seconds / steps
            calibrated[candidate.channels].append(
                (seconds, torch.cuda.max_memory_allocated(b.device) - before))
        return tuple(seconds for seconds, _ in calibrated[candidate.channels])
    chosen = lightened(model, step_seconds, loader_seconds, a.train_share)
    torch.cuda.empty_cache()
    room = MODEL_ROOM * torch.cuda.mem_get_info(b.device)[0]
    (one, one_peak), (five, five_peak) = calibrated[chosen.channels]
    fits = layers_that_fit(one_peak, five_peak, room)
    if b.rank == 0:
        print(f"sized the {pattern} model: the loader alone {1e3 * loader_seconds:.1f} ms a "
              f"batch; at {chosen.channels} channels the model {1e3 * one:.1f} / "
              f"{1e3 * five:.1f} ms and {one_peak / 2**20:,.0f} / {five_peak / 2**20:,.0f} MiB "
              f"at 1 / 5 layers: {chosen.layers} layers for {a.train_share:.0%}, at most "
              f"{fits} within {room / 2**20:,.0f} MiB", flush=True)
    return replace(chosen, layers=min(chosen.layers, fits))


def lightened(model: StepModel, step_seconds: Callable[[StepModel], tuple[float, float]],
              loader_seconds: float, share: float) -> StepModel:
    """``model`` with the layers at which the loader takes ``share`` of its step
    (:func:`layers_for_share`, from ``step_seconds(model)``: its step at 1 and 5 layers), its
    channels halved first, down to :data:`FEWEST_CHANNELS`, while the loader takes less than
    :data:`LEAST_SHARE` of even one layer's step."""
    while True:
        one, five = step_seconds(model)
        if loader_seconds >= LEAST_SHARE * one or model.channels // 2 < FEWEST_CHANNELS:
            return replace(model, layers=layers_for_share(one, five, loader_seconds, share))
        model = replace(model, channels=model.channels // 2)


def train_run(b: Bench, pattern: str, batch_size: int, model: StepModel,
              **loader_options) -> Timed:
    """The four phases; the row is the together phase, the others go into ``details``."""
    a, device = b.args, b.device
    # --gpu_work: the GPU's timeline of the model-alone and together phases
    timeline = DeviceTimeline() if a.gpu_work else None
    spans = {}
    phases = {"model": model_alone(b, model, batch_size, a.train_warmup, a.train_steps,
                                   timeline.start if timeline else lambda: None)}
    if timeline:
        spans["model"] = timeline.stop()
    step = TrainStep(model, device, a.train_side_stream)
    # --profile: where the together phase's time goes, and how long each step waits in next()
    profiler = Profiler() if a.profile and not a.loader_process else None
    waits: list[float] = []
    counts: dict[str, int] = {}
    if a.loader_process:
        opened = LoaderProcess(loader_arguments(b, pattern, "nvdec", batch_size, **loader_options),
                               device)
    else:
        opened = open_loader(b, pattern, "nvdec", batch_size,
                             hooks=[profiler] if profiler else [], **loader_options)
    with opened as loader:
        batches = endless(loader)

        def together_step() -> int:
            asked = time.perf_counter()
            frames = next(batches)["frames"]
            waits.append(time.perf_counter() - asked)
            step(frames)
            return frames_in(frames)

        def profile_start() -> None:
            waits.clear()
            counts.update(allocator_counts(device))
            if profiler:
                profiler.start()
            if timeline:
                timeline.start()

        phases["loader"] = timed_steps(lambda: loader_step(batches),
                                       loader_warmup(a, getattr(loader, "settings", None),
                                                     pattern), a.train_steps, device)
        phases["together"] = timed_steps(together_step, a.train_warmup, a.train_steps, device,
                                         on_start=profile_start)
        if timeline:
            spans["together"] = timeline.stop()
        profile = profiler.stop(waits) if profiler else None
        allocator = {key: n - counts[key] for key, n in allocator_counts(device).items()}
    # the model alone again, the loader gone: its speed alone can drift between runs and within
    # one (the host's and the GPU's state), so the row is judged against both timings' mean and
    # says how far apart they were
    phases["model_after"] = model_alone(b, model, batch_size, a.train_warmup, a.train_steps)
    per_step = {name: t.seconds / a.train_steps for name, t in phases.items()}
    before, after = per_step["model"], per_step.pop("model_after")
    per_step["model"] = (before + after) / 2
    slower = max(per_step["model"], per_step["loader"])
    details = {f"{name}_fps": t.frames / t.seconds for name, t in phases.items()}
    details["model_before_fps"] = details["model_fps"]
    details.update(model_fps=phases["model"].frames / a.train_steps / per_step["model"],
                   model_drift=abs(after - before) / per_step["model"])
    details.update({f"{name}_ms_per_step": 1e3 * s for name, s in per_step.items()})
    details.update(overlap=per_step["together"] / slower,
                   loader_share=per_step["loader"] / per_step["model"],
                   serial=(per_step["model"] + per_step["loader"]) / slower,
                   model=asdict(model), pattern=pattern, batch_size=batch_size,
                   next_ms=1e3 * sum(waits) / max(len(waits), 1), allocator=allocator,
                   **{key: value for name in ("model", "together")
                      for key, value in thread_shares(name, phases[name], a.train_steps).items()})
    if profile:
        details["profile"] = profile
    if spans.get("model"):    # CUPTI saw the model's kernels
        training = busiest_stream(spans["model"])
        details["gpu_timeline"] = {name: timeline_account(spans[name], training, a.train_steps,
                                                          phases[name].seconds)
                                   for name in spans}
    together = phases["together"]
    return Timed(together.frames, together.started, together.ended, {"train": details})


def format_train(details: dict) -> str:
    t = details["train"]
    drift = (f" ({t['model_before_fps']:,.0f} before the loader, {t['model_after_fps']:,.0f} "
             f"after it)" if "model_after_fps" in t else "")
    return (f"     model alone {t['model_fps']:,.0f}{drift}, loader alone {t['loader_fps']:,.0f}, "
            f"together {t['together_fps']:,.0f} frames/s; together / max(model, loader) "
            f"{t['overlap']:.2f} (1.00: perfect overlap; {t['serial']:.2f}: serial); the loader "
            f"takes {t['loader_share']:.0%} of the model's time; together, next() took "
            f"{t['next_ms']:.1f} ms a step; the training thread was on a core "
            f"{t['model_on_core']:.0%} of the time alone, {t['together_on_core']:.0%} together" +
            _format_waits(t) +
            _format_allocator(t.get("allocator")) +
            (f"\n{format_profile(t['profile'])}" if "profile" in t else "") +
            (f"\n{format_timeline(**t['gpu_timeline'])}" if "gpu_timeline" in t else ""))


def thread_shares(name: str, timed: Timed, steps: int) -> dict:
    """A phase's training thread, as its row says it: ``{name}_on_core`` and
    ``{name}_waiting_for_core`` (shares of the wall time), ``{name}_sleeps_per_step`` and
    ``{name}_preempted_per_step``; the last three only where the kernel keeps its counts."""
    d = timed.details
    shares = {f"{name}_on_core": d["thread_cpu_s"] / timed.seconds}
    if d.get("thread_runqueue_s") is not None:  # ThreadClock: all of the kernel's counts, or none
        shares.update({f"{name}_waiting_for_core": d["thread_runqueue_s"] / timed.seconds,
                       f"{name}_sleeps_per_step": d["thread_sleeps"] / steps,
                       f"{name}_preempted_per_step": d["thread_preempted"] / steps})
    return shares


def _format_waits(train: dict) -> str:
    """Where the training thread was when not on a core, alone and together ("" in runs from
    before it was counted)."""
    if "model_waiting_for_core" not in train:
        return ""
    return (f"; waiting for a core {train['model_waiting_for_core']:.0%} / "
            f"{train['together_waiting_for_core']:.0%}, sleeps a step "
            f"{train['model_sleeps_per_step']:.1f} / {train['together_sleeps_per_step']:.1f}, "
            f"preempted a step {train['model_preempted_per_step']:.1f} / "
            f"{train['together_preempted_per_step']:.1f}")


def _format_allocator(allocator: dict | None) -> str:
    """What torch's allocator did in the together phase ("" in runs from before it was counted)."""
    if allocator is None:
        return ""
    return "; torch's allocator, together: " + ", ".join(
        f"{allocator.get(key, 0):,} {name}" for key, name in ALLOCATOR_COUNTERS.items())


def train_rows(b: Bench) -> list[Result]:
    a = b.args
    model = StepModel(a.train_layers, a.train_channels, tuple(a.train_size))
    wanted = set(a.train_rows)
    # a model is sized (timed) only for the rows that train it
    stream_model = sized(b, STREAM, a.group_num, model) if wanted & {"stream", "item"} else model
    random_model = sized(b, RANDOM, a.random_group_num, replace(
        model, layers=a.random_train_layers)) if wanted & {"random", "queued"} else model
    launch_bound = StepModel(a.launch_layers, a.launch_channels, tuple(a.launch_size))
    variants = {"stream": ("", STREAM, a.group_num, stream_model, {}),
                "random": ("", RANDOM, a.random_group_num, random_model, {}),
                "launch": (", launch-bound model", STREAM, a.group_num, launch_bound, {}),
                "item": (", loss.item() every step", STREAM, a.group_num,
                         replace(stream_model, sync=True), {})}
    if a.queued_steps is None:   # the same random row with the loader's bound on the run-ahead
        variants["queued"] = (f", queued_steps {QUEUED_STEPS}", RANDOM, a.random_group_num,
                              random_model, {"queued_steps": QUEUED_STEPS})
    side = ", the model on a stream of its own" if a.train_side_stream else ""
    rows = []
    for name, (label, pattern, batch_size, step_model, options) in variants.items():
        if name not in wanted:
            continue
        label += side
        row = b.measure(f"train {pattern}{label}",
                        lambda: train_run(b, pattern, batch_size, step_model, **options),
                        method=f"beside a training step{label}", access=pattern,
                        note=step_model.describe())
        if b.rank == 0:
            print(format_train(row.details), flush=True)
        rows.append(row)
    return rows
