"""make_loader(memory_budget=...) on the GPU: the device memory the loader really takes, read from
the device's free memory (mem_get_info, all allocators and NVDEC's own surfaces), stays within the
budget, and the frames are those of the loader without one.

8 (stream; random: 4, one per clip) samples x 3 cameras of 640x360 HEVC, within a budget the
loader without one goes past: random access must lower the decode threads (each holds an NVDEC
session; a loader whose estimate left the sessions out kept all 48 and went past it), stream
slots keep their GOPs in pinned host memory, on at most 16 decode threads at twice their lead.
"""
from __future__ import annotations

import pytest

from conftest import store_factory
from dali_gop._budget import HOST_LEAD_FACTOR, HOST_THREADS
from test_gpu_overlap import PeakMemory

pytestmark = pytest.mark.gpu

BATCH = {"stream": 8, "random": 4}     # random access puts distinct clips in a batch
BATCHES = 40
# stream: 1 GiB; random: our own NVDEC sessions hold little enough that 48 fit in 1 GiB there
BUDGET = {"stream": 1 << 30, "random": 320 << 20}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return store_factory(tmp_path_factory, {"hevc": dict(codec="hevc")}, ("rgb24",), clips=4,
                         cameras=3, frames=120, width=640, height=360, gop=30)("hevc")


def run(loaders, gop_root, pattern: str, **options):
    """(the first BATCHES batches: clip, frame_idx, frames on the host; the loader's settings;
    device memory in use at its peak above what was in use before it)."""
    import torch
    torch.cuda.synchronize()
    before = PeakMemory.used()
    peak = PeakMemory()
    loader = loaders(gop_root, pattern=pattern, backend="nvdec", batch_size=BATCH[pattern],
                     num_workers=2,
                     shard_id=0, num_shards=1, **options)
    batches = []
    while len(batches) < BATCHES:
        for batch in loader:
            batches.append((batch["clip"].tolist(), batch["frame_idx"].tolist(),
                            batch["frames"].cpu()))
            if len(batches) == BATCHES:
                break
    settings = loader.settings
    torch.cuda.synchronize()
    loader.close()
    return batches, settings, peak.stop() - before


@pytest.mark.parametrize("pattern", ["stream", "random"])
def test_the_loader_stays_within_its_budget_on_the_device(loaders, store, pattern):
    import torch
    gop_root, _ = store
    unbounded, wanted, _ = run(loaders, gop_root, pattern)
    budget = BUDGET[pattern]
    bounded, chosen, peak = run(loaders, gop_root, pattern, memory_budget=budget)
    print(f"{pattern}: {wanted} -> {chosen}: peak {peak / 2**20:,.0f} MiB within "
          f"{budget / 2**20:,.0f} MiB")
    # our own sessions, fewer decode threads, or stream slots' GOPs on the host
    assert chosen["nvdec_sessions"] != wanted["nvdec_sessions"] or \
        chosen["decode_threads"] < wanted["decode_threads"] or \
        chosen["kept_gops"] != wanted["kept_gops"], "the budget changed nothing"
    assert chosen["stream_decoding"] == wanted["stream_decoding"]
    if pattern == "stream":
        # GOPs on the host, at most 16 decode threads and twice the lead (dali_gop._budget)
        assert (chosen["kept_gops"], chosen["stream_lead"]) == \
            ("host", HOST_LEAD_FACTOR * wanted["stream_lead"])
        assert chosen["decode_threads"] <= HOST_THREADS
    assert peak <= budget, f"{peak / 2**20:,.0f} MiB in use above the start, budget " \
                           f"{budget / 2**20:,.0f} MiB"
    for (clips, frames, a), (clips_b, frames_b, b) in zip(unbounded, bounded):
        assert (clips, frames) == (clips_b, frames_b)
        assert torch.equal(a, b), "other frames within the budget"
