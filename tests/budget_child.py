"""A training process for tests/test_budget.py: ``python budget_child.py GOP_ROOT BUDGET BATCHES``
on the cpu backend, stream access, batches of 4.

BUDGET: bytes, ``none`` (no budget) or ``off`` (no budget, stream decoding off: a loader that keeps
no frames). Takes BATCHES batches (0: one epoch) while a thread samples the process's resident
memory, and prints one JSON line: the peak resident bytes above those before the loader was made,
the loader's settings and the peak of the frames it counted as kept.

A process of its own: the allocator keeps freed pages of an earlier loader resident, which would
hide a later one's growth.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import PeakSampler, resident_bytes  # noqa: E402  (this file's folder is on the path)
from dali_gop import make_loader  # noqa: E402


def main(gop_root: str, budget: str, batches: str) -> None:
    options = dict(memory_budget=None if budget in ("none", "off") else int(budget),
                   stream_decoding=budget != "off")
    before = resident_bytes()
    peak = PeakSampler(resident_bytes, 0.001)
    loader = make_loader(gop_root, "stream", backend="cpu", batch_size=4, num_workers=1,
                         shard_id=0, num_shards=1, **options)
    wanted = int(batches) or len(loader)
    taken = 0
    for _ in loader:
        taken += 1
        if taken == wanted:
            break
    growth = peak.stop() - before
    kept = loader.memory().get("kept_gops", {"peak": 0})["peak"]
    print(json.dumps({"growth": growth, "settings": loader.settings, "kept": kept,
                      "batches": taken}), flush=True)
    loader.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
