"""Training processes for tests/test_lifecycle.py, each run as ``python lifecycle_child.py SCENARIO
GOP_ROOT [ARGS]``: a script, without ``if __name__ == "__main__":`` around its loaders, as users
write them. What a scenario prints on stdout is what the test checks; exit code 0 means it ended
normally. ``LIFECYCLE_BACKEND`` (default cpu) picks the backend: the GPU tests run nvdec."""
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from dali_gop import make_loader  # noqa: E402
from dali_gop.errors import WorkerError  # noqa: E402


def loader(gop_root, **options):
    options = {"backend": os.environ.get("LIFECYCLE_BACKEND", "cpu"), "batch_size": 1, "num_workers": 1, "shard_id": 0,
               "num_shards": 1, "pattern": "random", **options}
    return make_loader(gop_root, **options)


def exact_epoch(gop_root, videos_root, **options) -> int:
    """A new loader's first epoch, every frame checked against PyAV's decode: samples seen."""
    from dali_gop.reference import decode_source
    reference = {}
    fresh = loader(gop_root, **options)
    seen = 0
    for batch in fresh:
        frames = batch["frames"].cpu().numpy()
        for b in range(frames.shape[0]):
            clip = fresh.clip_names[int(batch["clip"][b])]
            for c, camera in enumerate(fresh.cameras):
                video = f"{clip}/{camera}"
                if video not in reference:
                    reference[video] = decode_source(Path(videos_root) / video, "rgb24")
                for t, k in enumerate(batch["frame_idx"][b].tolist()):
                    assert np.array_equal(frames[b, c, t], reference[video][k]), (video, k)
        seen += frames.shape[0]
    assert seen == fresh.source.shard_size(), (seen, fresh.source.shard_size())
    return seen


def drop(gop_root):
    """Loaders rebuilt mid-epoch, each dropped without close(), then a normal exit."""
    current = None
    for seed in range(12):
        # two workers and batches of two: what made the old loader crash at exit, 2 runs in 16
        current = loader(gop_root, seed=seed, batch_size=2, num_workers=2)
        batches = iter(current)
        next(batches), next(batches)
    print("ok", flush=True)


def error(gop_root, videos_root, victim, how):
    """An error inside a batch (a bin that does not decode, or a truncated one the worker
    refuses), the exception kept as pytest keeps it, close(), then a new loader's exact epoch."""
    original = Path(victim).read_bytes()
    broken = loader(gop_root, pattern="stream")
    Path(victim).write_bytes(bytes(len(original)) if how == "decode" else original[:-3])
    kept = []
    try:
        for _ in range(3):
            for _ in broken:
                pass
    except Exception as e:   # noqa: BLE001 - whichever error the batch raised
        kept.append(e)
    assert kept, "no error"
    broken.close()
    Path(victim).write_bytes(original)
    print("epoch", exact_epoch(gop_root, videos_root), flush=True)
    kept.clear()


def train(gop_root):
    """Iterates until killed; says where it is once its workers run."""
    running = loader(gop_root, num_workers=2)
    for epoch in range(10**6):
        for i, _ in enumerate(running):
            if epoch == 0 and i == 1:
                print("ready", flush=True)
            time.sleep(0.01)


def stuck(gop_root, videos_root, timeout):
    """A worker stopped (as a hung read stands still): the loop must raise, naming it."""
    stalled = loader(gop_root, worker_timeout=float(timeout))
    batches = iter(stalled)
    next(batches)
    [worker] = stalled._run.worker_pids()
    os.kill(worker, signal.SIGSTOP)
    last = time.monotonic()   # batches already on their way still come: count from the last one
    try:
        for _ in range(10**6):
            next(batches)
            last = time.monotonic()
    except WorkerError as e:
        print(f"raised after {time.monotonic() - last:.2f} s: {e}", flush=True)
    from dali_gop._workers import process_state
    stalled.close()       # the run shuts down after the error: close() waits for it
    print("stopped worker after close:", process_state(worker), flush=True)
    print("epoch", exact_epoch(gop_root, videos_root), flush=True)


globals()[sys.argv[1]](*sys.argv[2:])
