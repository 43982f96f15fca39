"""What every workload needs: the data, this rank's share and GPU, the options; and where the ranks
of a torchrun meet (each measures its own shard on its own GPU, all at the same time)."""
from __future__ import annotations

import argparse
import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path

from dali_gop.format import DatasetManifest, read_manifest
from pipelines.throughput.measure import Result, measure


@dataclass
class Bench:
    args: argparse.Namespace
    videos: Path              # the mp4 files
    gops: Path                # their GOP store; a video's path is the same under both
    rank: int = 0
    world: int = 1
    device: int | None = 0    # this rank's GPU; None with the cpu backend

    @cached_property
    def manifest(self) -> DatasetManifest:
        return read_manifest(self.gops)

    @property
    def clips(self) -> dict[str, int]:
        """{clip: frames}."""
        return self.manifest.clips()

    @property
    def cameras(self) -> list[str]:
        """The first clip's camera videos, as the loader serves them by default."""
        return self.manifest.cameras[min(self.manifest.cameras)]

    @property
    def rels(self) -> list[str]:
        """Every video, relative to the video root and the GOP root."""
        return sorted(f"{clip}/{camera}" for clip, cameras in self.manifest.cameras.items()
                      for camera in cameras)

    @property
    def my_videos(self) -> list[str]:
        return self.rels[self.rank::self.world]

    @property
    def shard(self) -> dict:
        return dict(shard_id=self.rank, num_shards=self.world)

    def measure(self, name: str, run, **options) -> Result:
        barrier(self)      # ranks measure at the same time: they share CPUs, disks and the bus
        result = measure(name, run, device=self.device, verbose=self.rank == 0, **options)
        if self.device is not None:
            release_gpu_memory()
        return result


def release_gpu_memory() -> None:
    """DALI and torch keep freed device memory in their pools: give it back, so that the next
    row's peak above its start is its own."""
    import torch
    from nvidia.dali.backend import ReleaseUnusedMemory
    gc.collect()
    ReleaseUnusedMemory()
    torch.cuda.empty_cache()


def init_distributed(gpu: bool) -> tuple[int, int, int]:
    """(rank, world size, local rank); under torchrun a process group, nccl on GPUs, gloo on
    CPUs."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist
    local = int(os.environ["LOCAL_RANK"])
    if gpu:
        torch.cuda.set_device(local)
    # long timeout: the other ranks wait while rank 0 makes and preprocesses the data set
    dist.init_process_group("nccl" if gpu else "gloo", timeout=timedelta(hours=2))
    return dist.get_rank(), world, local


def barrier(b: Bench) -> None:
    if b.world > 1:
        import torch.distributed as dist
        if b.device is None:
            dist.barrier()
        else:
            dist.barrier(device_ids=[b.device])


def gather(b: Bench, rows: list[Result]) -> list[list[Result]]:
    """Every rank's results, by rank."""
    if b.world == 1:
        return [rows]
    import torch.distributed as dist
    everyone: list = [None] * b.world
    dist.all_gather_object(everyone, rows)
    return everyone
