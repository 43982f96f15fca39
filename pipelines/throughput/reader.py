"""DALI's own video reader on the mp4 files (``reader`` rows): ``fn.readers.video(device="gpu")``
in file order, and with ``random_shuffle=True`` (the frame list is shuffled whole at set-up, and
``initial_fill`` samples are shuffled locally on top), what a DALI user has today. GPU only."""
from __future__ import annotations

import time

from pipelines.throughput.bench import Bench
from pipelines.throughput.measure import RANDOM, Result, Timed


def reader_run(paths: list[str], *, batch_size: int, sequence_length: int, random_shuffle: bool,
               device: int, warmup: int, batches: int, shard_id: int = 0,
               num_shards: int = 1) -> Timed:
    """``warmup`` untimed batches, then ``batches`` timed ones; frames counted from the delivered
    batches' shapes."""
    import torch
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=4, device_id=device, seed=0)
    def reader():
        return fn.readers.video(device="gpu", filenames=paths, sequence_length=sequence_length,
                                random_shuffle=random_shuffle, shard_id=shard_id,
                                num_shards=num_shards, name="reader",
                                # file lists only; set so DALI does not warn of a changing default
                                file_list_include_preceding_frame=True)

    pipe = reader()
    pipe.build()
    try:
        for _ in range(warmup):
            pipe.run()
        torch.cuda.synchronize(device)
        started, frames = time.perf_counter(), 0
        for _ in range(batches):
            (video,) = pipe.run()
            frames += sum(shape[0] for shape in video.shape())
        torch.cuda.synchronize(device)
        return Timed(frames, started, time.perf_counter())
    finally:
        del pipe


def reader_rows(b: Bench) -> list[Result]:
    a = b.args
    paths = [str(b.videos / rel) for rel in b.rels]
    run = dict(device=b.device, warmup=a.baseline_warmup, batches=a.baseline_batches, **b.shard)
    length = a.reader_sequence_length
    cameras = len(b.cameras)
    return [
        b.measure("DALI readers.video stream",
                  lambda: reader_run(paths, batch_size=max(a.group_num * cameras // length, 1),
                                     sequence_length=length, random_shuffle=False, **run),
                  method="DALI readers.video (mp4)",
                  note=f"file order, sequence_length {length}"),
        b.measure("DALI readers.video random",
                  lambda: reader_run(paths, batch_size=a.random_group_num * cameras,
                                     sequence_length=1, random_shuffle=True, **run),
                  method="DALI readers.video (mp4)", access=RANDOM,
                  note="random_shuffle, sequence_length 1"),
    ]
