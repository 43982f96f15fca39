"""A training process for tests/test_resume.py: ``python resume_child.py GOP_ROOT PATTERN
NUM_SHARDS STATE_FILE EPOCHS [resume]``; ``RESUME_BACKEND`` picks the backend (default cpu).

Runs every rank's loader in this one process, in lock-step as distributed training does, until
EPOCHS epochs are done. Per step it prints one JSON line per rank (epoch, batch, clip, frame_idx,
a hash of the frames), then saves rank 0's ``state_dict()`` to STATE_FILE as a checkpoint would
(temporary file, then ``os.replace``). With ``resume`` it starts from STATE_FILE.
"""
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dali_gop import RandomPattern, SequencePattern, make_loader  # noqa: E402

PATTERNS = {"stream": "stream", "random": RandomPattern(samples_per_epoch=24),
            "sequence": SequencePattern(3, stride=2)}


def record(rank: int, epoch: int, batch: int, values: dict) -> dict:
    return {"rank": rank, "epoch": epoch, "batch": batch, "clip": values["clip"].tolist(),
            "frame_idx": values["frame_idx"].tolist(),
            "frames": hashlib.sha1(values["frames"].cpu().numpy().tobytes()).hexdigest()}


def main(gop_root, pattern, num_shards, state_file, epochs, resume=None):
    num_shards, epochs = int(num_shards), int(epochs)
    state = json.loads(Path(state_file).read_text()) if resume else None
    backend = os.environ.get("RESUME_BACKEND", "cpu")
    loaders = [make_loader(gop_root, PATTERNS[pattern], backend=backend, batch_size=2,
                           num_workers=1, shard_id=rank, num_shards=num_shards, seed=5,
                           state=state)
               for rank in range(num_shards)]
    while min(loader.epoch for loader in loaders) < epochs:
        # a rank whose epoch is shorter (PARTIAL) may have resumed at the next one: it waits
        epoch = min(loader.epoch for loader in loaders)
        ranks = [rank for rank, loader in enumerate(loaders) if loader.epoch == epoch]
        first = [loaders[rank].state_dict()["batches"] for rank in ranks]   # resumed part way
        for i, step in enumerate(itertools.zip_longest(*[loaders[rank] for rank in ranks])):
            for rank, start, values in zip(ranks, first, step):
                if values is not None:
                    print(json.dumps(record(rank, epoch, start + i, values)), flush=True)
            temporary = f"{state_file}.tmp"
            Path(temporary).write_text(json.dumps(loaders[0].state_dict()))
            os.replace(temporary, state_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
