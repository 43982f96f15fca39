"""The loader beside a training step on the same GPU: the two overlap, and the frames stay right.

A stand-in model (a bf16 conv stack on the batch's frames downsampled, forward, backward and SGD on
torch's default stream, as most training loops run) is timed alone, the nvdec loader alone, and
the model fed by the loader. The loader's fetch thread hands DALI's outputs over on a stream of its
own; on the default stream the training's kernels waited for each prefetched batch, and the two
ran one after the other. The model is sized so that the loader alone takes 30-100% of its time.
"""
from __future__ import annotations

import ctypes
import time

import pytest

from conftest import PeakSampler, batch_difference, store_factory
from test_gpu import RGB_TOLERANCE_MAX, RGB_TOLERANCE_MEAN

pytestmark = pytest.mark.gpu

BATCH, STEPS, WARMUP = 8, 40, 10
DOWNSAMPLED = (180, 320)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return store_factory(tmp_path_factory, {"hevc": dict(codec="hevc")}, ("rgb24",), clips=4,
                         cameras=3, frames=120, width=640, height=360, gop=30)("hevc")


def conv_model(layers: int, device):
    import torch
    stack = [torch.nn.Conv2d(3, 64, 3, padding=1)] + [
        torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(layers - 1)]
    model = torch.nn.Sequential(*[m for conv in stack for m in (conv, torch.nn.ReLU())])
    model = model.to(device, torch.bfloat16)
    return model, torch.optim.SGD(model.parameters(), lr=1e-4)


def train_step(model, optimizer, frames) -> None:
    import torch.nn.functional as F
    x = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).to(model[0].weight.dtype) / 255
    x = F.interpolate(x, size=DOWNSAMPLED, mode="bilinear", antialias=False)
    loss = model(x).float().square().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def seconds_per(step, count: int = STEPS) -> float:
    import torch
    for _ in range(WARMUP):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(count):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / count


class PeakMemory(PeakSampler):
    """Device memory in use (mem_get_info), sampled every 20 ms in a thread: the peak."""

    def __init__(self):
        super().__init__(self.used, 0.02)

    @staticmethod
    def used() -> int:
        import torch
        free, total = torch.cuda.mem_get_info()
        return total - free


def assert_frames_right(batches, loader, reference) -> None:
    """Every frame of ``batches`` (copied on the training's stream after its step) within the GPU
    tests' tolerance of FFmpeg's, and its own frame."""
    for batch in batches:
        batch_difference({k: v.cpu() for k, v in batch.items()}, loader, reference,
                         lambda decoded, k: decoded["rgb24"][k],
                         lambda diff: diff.max() <= RGB_TOLERANCE_MAX and
                         diff.mean() <= RGB_TOLERANCE_MEAN)


def test_the_loader_overlaps_a_training_step_on_the_default_stream(loaders, store):
    import torch
    gop_root, reference = store
    device = torch.device("cuda", 0)
    before = PeakMemory.used()
    peak = PeakMemory()
    loader = loaders(gop_root, pattern="stream", backend="nvdec", batch_size=BATCH, num_workers=4,
                     shard_id=0, num_shards=1)

    def endless():
        while True:
            yield from loader

    batches = endless()
    fixed = next(batches)["frames"].clone()
    loader_s = seconds_per(lambda: next(batches)["frames"][0, 0, 0, 0, 0, 0].item())

    layers, model_s = 2, 0.0
    for _ in range(4):   # size the model: the loader alone takes 30-100% of a step
        model, optimizer = conv_model(layers, device)
        model_s = seconds_per(lambda: train_step(model, optimizer, fixed), 10)
        if 0.3 <= loader_s / model_s <= 1.0:
            break
        layers = max(1, round(layers * loader_s / model_s / 0.6))
    model_s = seconds_per(lambda: train_step(model, optimizer, fixed))
    assert 0.3 <= loader_s / model_s <= 1.0, (layers, loader_s, model_s)

    checked = []

    def fed_step():
        frames = next(batches)
        train_step(model, optimizer, frames["frames"])
        if len(checked) < 5:
            # copied on the training stream after the step: had the loader's memory been reused
            # before the step was done with it, the copy would show other frames
            checked.append({**frames, "frames": frames["frames"].clone()})

    together_s = seconds_per(fed_step)
    used = peak.stop() - before
    print(f"{layers} layers: model alone {model_s * 1e3:.1f} ms, loader alone "
          f"{loader_s * 1e3:.1f} ms, together {together_s * 1e3:.1f} ms "
          f"({together_s / max(model_s, loader_s):.2f}x the slower; "
          f"{(model_s + loader_s) / max(model_s, loader_s):.2f}x would be serial); device memory "
          f"above the {before / 2**20:.0f} MiB before the loader: peak {used / 2**20:.0f} MiB "
          "(loader, model and the fixed batch)")
    assert together_s / max(model_s, loader_s) <= 1.10
    assert_frames_right(checked, loader, reference)


def gpu_sleep_cycles(seconds: float) -> int:
    """Clock cycles for which ``torch.cuda._sleep`` keeps the current stream busy ``seconds``."""
    import torch
    cycles = 10_000_000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return int(cycles * seconds / (start.elapsed_time(end) / 1e3))


def test_frames_stay_right_when_the_training_runs_far_ahead_of_the_gpu(loaders, store):
    """DALI hands its outputs over without a copy. A training thread that queues work faster than
    the GPU runs it drops each batch long before its kernels read it; the batch's memory must not
    be written with a later batch meanwhile, or the step reads frames it was never given."""
    import torch
    gop_root, reference = store
    loader = loaders(gop_root, pattern="stream", backend="nvdec", batch_size=BATCH, num_workers=4,
                     shard_id=0, num_shards=1)
    batches = iter(loader)
    next(batches)
    torch.cuda.synchronize()
    cycles = gpu_sleep_cycles(0.05)
    checked = []
    started = time.perf_counter()
    for _ in range(10):
        batch = next(batches)
        torch.cuda._sleep(cycles)      # the GPU falls a step further behind the thread
        # read after the sleep, on the training's stream, once the thread has let the batch go
        checked.append({k: v.clone() if v.is_cuda else v for k, v in batch.items()})
        del batch
    ahead = time.perf_counter() - started
    torch.cuda.synchronize()
    print(f"10 steps of 0.05 s on the GPU queued in {ahead:.2f} s, each batch let go at once")
    assert ahead < 0.25, f"the thread waited for the GPU ({ahead:.2f} s): nothing was tested"
    assert_frames_right(checked, loader, reference)


@pytest.mark.parametrize("queued_steps", [None, 1])
def test_queued_steps_bound_how_far_the_training_runs_ahead_of_the_gpu(loaders, store,
                                                                       queued_steps):
    """A training thread that queues GPU work faster than the GPU runs it: with ``queued_steps``
    1, ``next()`` lets it be at most one step ahead (it waits, without the GIL, for the step
    before); without, it runs ahead (so the bound is what made it wait)."""
    import torch
    gop_root, _ = store
    loader = loaders(gop_root, pattern="stream", backend="nvdec", batch_size=BATCH, num_workers=4,
                     shard_id=0, num_shards=1, queued_steps=queued_steps)
    batches = iter(loader)
    for _ in range(3):
        next(batches)
    torch.cuda.synchronize()
    step, steps = 0.2, 6
    cycles = gpu_sleep_cycles(step)
    started = time.perf_counter()
    for _ in range(steps):
        torch.cuda._sleep(cycles)      # a training step that keeps the GPU busy for ``step``
        next(batches)
    ahead = time.perf_counter() - started
    torch.cuda.synchronize()
    print(f"queued_steps {queued_steps}: {steps} steps of {step:.1f} s on the GPU queued in "
          f"{ahead:.2f} s")
    if queued_steps:
        assert ahead >= (steps - 1.5) * step, "next() let the training run further ahead"
    else:
        assert ahead < 2 * step, "without a bound the training waited for the GPU anyway"


def test_the_loaders_streams_are_at_the_devices_greatest_priority(loaders, store):
    """The decode threads' streams (their maps and copies): at the default priority the blocks of
    a training step's long kernels queued before them are all scheduled first, and a decode
    thread waits out the step for each frame it maps."""
    import torch
    gop_root, _ = store
    loader = loaders(gop_root, pattern="random", backend="nvdec", batch_size=2, num_workers=2,
                     shard_id=0, num_shards=1)
    batches = iter(loader)
    for _ in range(3):
        next(batches)
    torch.cuda.synchronize()    # the device's primary context current in this thread
    # the driver's range, not torch's: torch narrows it to the priorities it was built for
    least, greatest = ctypes.c_int(), ctypes.c_int()
    assert ctypes.CDLL("libcuda.so.1").cuCtxGetStreamPriorityRange(
        ctypes.byref(least), ctypes.byref(greatest)) == 0
    greatest = greatest.value
    streams = [state.stream for operator in loader.decode_operators
               for state in operator._thread_decoders]
    assert streams, "no decode thread made a stream"
    assert greatest < 0, "this GPU has no stream priorities to tell apart"
    assert {stream.priority for stream in streams} == {greatest}
