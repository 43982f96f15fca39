"""Loader faults (cpu backend): a bin truncated mid-epoch, a loader rebuilt mid-epoch, memory and
file descriptors over ten epochs, a killed worker; and datasets the loader refuses or trims
(cameras of one clip that disagree). docs/reliability.md is the table.

CPU only (PyAV, DALI's CPU pipeline). GPU faults and GPU resources: tests/test_gpu.py.
"""
from __future__ import annotations

import gc
import importlib.util
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from dali_gop.patterns import SequencePattern
from dali_gop import format as fmt
from dali_gop.reference import decode_source
from dali_gop._store import GopStore
from dali_gop.synthetic import make_video
from preprocess.runner import preprocess

from conftest import (CLIPS, FRAMES, GOP, SMALL, a_bin, check_batch, cpu_decode, cpu_loader,
                      resident_bytes)


def _has_dali() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


needs_dali = pytest.mark.skipif(not _has_dali(), reason="needs nvidia-dali (the cpu backend)")

loader_for = cpu_loader


# == input faults: cameras of one clip that disagree ==========================================

@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> dict[str, Path]:
    """'size': clip000's cam1 is larger than its cam0. 'frames': clip000's cam1 has 16 frames."""
    made = {}
    for name, cam1 in [("size", dict(width=192, height=112, frames=FRAMES)),
                       ("frames", dict(width=160, height=96, frames=16))]:
        root = tmp_path_factory.mktemp(name)
        make_video(root / "v" / "clip000" / "cam0.mp4", **SMALL, frames=FRAMES, gop=GOP)
        make_video(root / "v" / "clip000" / "cam1.mp4", fps=12, gop=GOP, camera=1, **cam1)
        summary = preprocess(root / "v", root / "g", workers=2, progress=False)
        assert not summary.failed, summary.format()   # preprocess itself is fine with both
        made[name] = root
    return made


@needs_dali
def test_cameras_of_different_sizes_are_refused_naming_the_files(uneven):
    from dali_gop.backends._assemble import DecodeError
    from dali_gop.errors import ConfigError
    gops = uneven["size"] / "g"
    read = GopStore(gops).read([("clip000/cam0.mp4", [3]), ("clip000/cam1.mp4", [3])])
    with pytest.raises(DecodeError, match=r"differ in size .*clip000/cam0.mp4/gop.0.8.bin"):
        cpu_decode(read)
    # the loader refuses before any decoding, naming both videos
    with pytest.raises(ConfigError, match=r"clip000/cam0.mp4 is 160x96, clip000/cam1.mp4 is 192x112"):
        loader_for(gops, pattern=SequencePattern(2), batch_size=1)


@needs_dali
def test_cameras_of_different_lengths_serve_the_shortest(uneven):
    gops = uneven["frames"] / "g"
    assert fmt.read_manifest(gops).clips() == {"clip000": 16}
    videos = uneven["frames"] / "v"
    reference = {f"clip000/{c}": decode_source(videos / "clip000" / c, "rgb24")
                 for c in ("cam0.mp4", "cam1.mp4")}
    loader = loader_for(gops, pattern="stream", batch_size=1)
    seen = []
    for batch in loader:
        check_batch(batch, loader, reference)
        seen += batch["frame_idx"][:, 0].tolist()
    assert sorted(seen) == list(range(16)), "every camera serves frames 0..15, nothing beyond"


# == loader faults (cpu backend) ==============================================================

@needs_dali
def test_a_truncated_bin_mid_epoch_reaches_the_loop_naming_it(gops):
    loader = loader_for(gops, pattern="random")
    _, victim = a_bin(gops)
    victim.write_bytes(victim.read_bytes()[:-3])
    with pytest.raises(Exception, match=f"{victim}: .* bytes, index says"):
        for _ in range(3):
            for _ in loader:
                pass


@needs_dali
def test_rebuilt_loader_mid_epoch_delivers_a_full_epoch(clean, reference):
    first = loader_for(clean, pattern="random", seed=3)
    for _, batch in zip(range(2), first):
        check_batch(batch, first, reference)
    del first, batch
    gc.collect()
    second = loader_for(clean, pattern="random", seed=3)
    seen = 0
    for batch in second:
        check_batch(batch, second, reference)
        seen += batch["frames"].shape[0]
    assert seen == second.source.shard_size() == CLIPS * FRAMES


def _proc_children(pid: int) -> dict[int, str]:
    """Child processes of ``pid`` and their command lines, from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry)] = cmdline
    return found


@needs_dali
def test_host_memory_and_file_descriptors_stay_flat_over_ten_epochs(clean):
    before = set(_proc_children(os.getpid()))
    loader = loader_for(clean, pattern="stream")
    workers = [pid for pid, cmd in _proc_children(os.getpid()).items()
               if pid not in before and "spawn_main" in cmd]
    assert len(workers) == 2, workers
    readings = []
    for epoch in range(10):
        batches = sum(1 for _ in loader)
        assert batches == CLIPS * FRAMES // 2
        gc.collect()
        readings.append((resident_bytes() // 2**20, sum(resident_bytes(w) for w in workers) // 2**20,
                         len(os.listdir("/proc/self/fd"))))
    print("per epoch (MiB main, MiB workers, open fds):", readings)
    main, child, fds = zip(*readings[1:])
    assert max(fds) - min(fds) <= 2, "file descriptors grow"
    assert max(main) - min(main) < 32, "host memory of the training process grows"
    assert max(child) - min(child) < 32, "worker memory grows"


def _kill_a_worker_and_wait(gops: Path, delay: float) -> tuple[bool, BaseException | None, float]:
    """Build a loader, take two batches, SIGKILL one of its DALI workers, keep iterating in a
    thread: (still stuck after 10 s?, the exception, seconds until it came)."""
    before = set(_proc_children(os.getpid()))
    loader = loader_for(gops, pattern="random")
    iterator = iter(loader)
    next(iterator), next(iterator)
    workers = sorted(pid for pid, cmd in _proc_children(os.getpid()).items()
                     if pid not in before and "spawn_main" in cmd)
    time.sleep(delay)
    os.kill(workers[0], signal.SIGKILL)
    killed_at = time.monotonic()
    outcome: dict = {}

    def loop():
        try:
            for _ in range(10_000):
                next(iterator)
        except BaseException as e:   # noqa: B036 - any exception is the wanted outcome
            outcome["error"], outcome["at"] = e, time.monotonic()

    thread = threading.Thread(target=loop, daemon=True)   # a stuck one must not block exit
    thread.start()
    thread.join(10)
    return thread.is_alive(), outcome.get("error"), outcome.get("at", time.monotonic()) - killed_at


@needs_dali
def test_a_killed_worker_is_an_error_in_the_loop_not_a_hang(clean):
    """The loop gets an exception within 10 s, wherever the kill lands. Several kill points: DALI
    2.4 itself blocks forever in about 2 of 3 of them (its task queue waits for the dead worker);
    GopLoader's watchdog turns that into a WorkerError (a RuntimeError) naming the
    dead workers."""
    for trial, delay in enumerate([0.5, 1.0, 0.0, 0.8, 0.2, 0.6, 0.1, 0.3]):
        stuck, error, seconds = _kill_a_worker_and_wait(clean, delay)
        print(f"kill {trial} after {delay} s idle: stuck={stuck} error={error!r} "
              f"in {seconds:.2f} s")
        assert not stuck, f"loop still blocked 10 s after a worker was killed (trial {trial})"
        assert error is not None and seconds < 10
