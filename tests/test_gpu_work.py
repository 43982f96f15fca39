"""The GPU work the loader takes from a model beside it: device time of kernels, copies and
memsets (CUPTI, through torch.profiler), counted per frame delivered.

Random access decodes each sample from its GOP start, most of the frames on the way unwanted. On
PyNvVideoCodec's sessions every frame decoded was mapped (a conversion kernel) and copied twice,
some 47 device operations per wanted frame at GOP 30; a model on the same GPU lost that time at
every step. The decode threads' sessions now map and copy only the frames a sample wants.
"""
from __future__ import annotations

import pytest

from conftest import store_factory
from pipelines.throughput.loader import frames_in
from pipelines.throughput.profile import gpu_work

pytestmark = pytest.mark.gpu

BATCH, WARMUP, BATCHES = 4, 8, 20
#: device operations a wanted frame may take: its map's conversion kernel, two plane copies, its
#: share of the batch's RGB conversion and of the copies that hand the batch over
OPERATIONS_PER_FRAME = 6


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return store_factory(tmp_path_factory, {"hevc": dict(codec="hevc")}, ("rgb24",), clips=4,
                         cameras=3, frames=120, width=640, height=360, gop=30)("hevc")


def test_random_access_works_the_gpu_only_for_the_frames_it_delivers(loaders, store):
    import torch
    gop_root, _ = store
    loader = loaders(gop_root, pattern="random", backend="nvdec", batch_size=BATCH, num_workers=2,
                     shard_id=0, num_shards=1)
    batches = iter(loader)
    for _ in range(WARMUP):
        next(batches)
    torch.cuda.synchronize()
    frames = 0
    with gpu_work(True) as work:
        for _ in range(BATCHES):
            frames += frames_in(next(batches)["frames"])
        torch.cuda.synchronize()
    operations = work["operations"]
    top = ", ".join(f"{name[:40]} {v['calls']}" for name, v in list(work["by_name"].items())[:4])
    print(f"random, {loader.settings}: {operations / frames:.1f} device operations and "
          f"{work['device_ms'] / frames * 1e3:.1f} us of device time a frame delivered ({top})")
    assert frames == BATCHES * BATCH * 3
    assert operations, "the profiler saw no device work: the measurement is broken"
    assert operations <= OPERATIONS_PER_FRAME * frames, \
        f"{operations / frames:.1f} device operations a frame delivered ({top})"
