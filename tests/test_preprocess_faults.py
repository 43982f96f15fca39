"""Preprocess faults (preprocess/): videos it refuses, reruns that repair a damaged store,
concurrent runs, a full disk, SIGKILL then rerun, and the fuzzed split_gops and parameter-set
readers. docs/reliability.md is the table.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dali_gop import format as fmt
from dali_gop.synthetic import make_video
from preprocess.runner import preprocess
from preprocess.writer import VideoError, _Packet, parameter_sets_annexb, split_gops, write_video

from conftest import CAMERAS, CLIPS, FRAMES, GOP, ROOT, SMALL, VIDEO, a_bin, fuzz


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root but the lock files and the manifest (its video_dir differs by run)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (".lock", fmt.MANIFEST_FILENAME)}


def indexes_complete(root: Path) -> list[Path]:
    """Every visible index parses and each of its bins is there with its recorded size."""
    found = list(root.rglob(fmt.INDEX_FILENAME))
    for path in found:
        index = fmt.VideoIndex.from_json(path.read_text(), str(path))
        for gop in index.gops:
            assert (path.parent / gop.file).stat().st_size == gop.size, f"{path}: {gop.file}"
    return found


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".staging.") or p.name.endswith(".tmp")]


# == input faults: videos preprocess refuses ==================================================

def _encode(path: Path, encoder: str, frames: int = 4) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=12)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((96, 160, 3), 40 * i, np.uint8), "rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _zero_frames(path: Path) -> None:
    """An MP4 with a video track and no packets (fragmented MP4 writes its moov up front)."""
    with av.open(str(path), "w", format="mp4",
                 options={"movflags": "frag_keyframe+empty_moov"}) as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        container.start_encoding()
        container.mux(stream.encode(None))


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _av1_encoder() -> str | None:
    return next((e for e in ("libsvtav1", "libaom-av1") if e in av.codecs_available), None)


BAD_VIDEOS = {
    # name: (how to make it, what the error says)
    "zero-frames.mp4": (_zero_frames, "video stream has no packets \\(zero frames\\)"),
    "audio-only.mp4": (_audio_only, "has no video stream"),
    "not-a-video.mp4": (lambda p: p.write_bytes(b"this is no video\n" * 64),
                        "cannot open as a video container"),
    "vp9.mp4": (lambda p: _encode(p, "libvpx-vp9"), "codec 'vp9' is not supported"),
    "av1.mp4": (lambda p: _encode(p, _av1_encoder()), "codec '.*' is not supported"),
    "hevc-10bit.mp4": (lambda p: make_video(p, **SMALL, frames=4, gop=GOP, codec="hevc",
                                            pix_fmt="yuv420p10le"),
                       "pixel format 'yuv420p10le' is not supported"),
}


@pytest.fixture(scope="module")
def bad_run(videos, clean, tmp_path_factory):
    """One preprocess run over the good dataset plus a clip of bad videos, into a copy of the
    clean store: returns (video root, gop root, summary)."""
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(videos, root / "v")
    shutil.copytree(clean, root / "g")
    (root / "v" / "clipbad").mkdir()
    for name, (make, _) in BAD_VIDEOS.items():
        if name == "av1.mp4" and _av1_encoder() is None:
            continue
        if name == "vp9.mp4" and "libvpx-vp9" not in av.codecs_available:
            continue
        make(root / "v" / "clipbad" / name)
    summary = preprocess(root / "v", root / "g", workers=2, progress=False)
    return root / "v", root / "g", summary


@pytest.mark.parametrize("name", BAD_VIDEOS)
def test_unusable_video_is_reported_by_name_and_reason(bad_run, name):
    videos, gops, summary = bad_run
    if not (videos / "clipbad" / name).exists():
        pytest.skip(f"no encoder for {name} in this FFmpeg build")
    (result,) = [r for r in summary.results if r.rel == f"clipbad/{name}"]
    assert result.error is not None
    assert result.error.startswith(f"VideoError: {videos / 'clipbad' / name}: "), result.error
    assert re.search(BAD_VIDEOS[name][1], result.error), result.error
    assert not (gops / "clipbad" / name / fmt.INDEX_FILENAME).exists()
    assert not list((gops / "clipbad" / name).glob("gop.*.bin"))
    with pytest.raises(VideoError, match=str(videos / "clipbad" / name)):   # called directly too
        write_video(videos, gops, f"clipbad/{name}")


def test_failed_videos_do_not_touch_the_other_outputs(bad_run, clean):
    videos, gops, summary = bad_run
    assert {r.rel for r in summary.results if not r.error} == {
        f"clip{c:03d}/cam{k}.mp4" for c in range(CLIPS) for k in range(CAMERAS)}
    assert all(r.skipped for r in summary.results if not r.error)
    assert {k: v for k, v in tree(gops).items() if not k.startswith("clipbad/")} == tree(clean)
    manifest = fmt.read_manifest(gops)
    assert "clipbad" not in manifest.clips() and len(manifest.clips()) == CLIPS


def test_a_source_turned_bad_keeps_its_old_outputs(videos, clean, tmp_path):
    """The rerun names the file; the old bins and index stay as they were (not deleted)."""
    shutil.copytree(videos, tmp_path / "v")
    shutil.copytree(clean, tmp_path / "g")
    (tmp_path / "v" / VIDEO).write_bytes(b"\0" * 1000)
    summary = preprocess(tmp_path / "v", tmp_path / "g", workers=1, progress=False)
    assert [r.rel for r in summary.failed] == [VIDEO]
    assert str(tmp_path / "v" / VIDEO) in summary.failed[0].error
    assert tree(tmp_path / "g") == tree(clean)


# == preprocess: reruns repair what they can see ==============================================

def rerun(videos: Path, gops: Path, force: bool = False):
    return preprocess(videos, gops, workers=1, progress=False, force=force)


@pytest.mark.parametrize("damage", ["truncate", "delete", "corrupt-index", "binary-index",
                                    "staging-leftover"])
def test_rerun_repairs(videos, clean, gops, damage):
    entry, victim = a_bin(gops)
    index = gops / VIDEO / fmt.INDEX_FILENAME
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-100])
    elif damage == "delete":
        victim.unlink()
    elif damage == "corrupt-index":
        index.write_text(index.read_text()[:40])
    elif damage == "binary-index":
        index.write_bytes(b"\xff\xfe\x00\x01" * 10)
    else:
        (gops / VIDEO / ".staging.xyz").mkdir()
        (gops / VIDEO / ".staging.xyz" / entry.file).write_bytes(b"half")
    summary = rerun(videos, gops)
    assert not summary.failed, summary.format()
    redone = [r.rel for r in summary.results if not r.skipped]
    assert redone == ([] if damage == "staging-leftover" else [VIDEO])
    assert tree(gops) == tree(clean)


def test_same_size_corruption_is_repaired_only_by_force(videos, clean, gops):
    """A rerun checks source identity and bin sizes, not checksums: use --force (or
    verify_checksums in the loader to find such bins)."""
    _, victim = a_bin(gops)
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert all(r.skipped for r in rerun(videos, gops).results)
    assert tree(gops) != tree(clean)
    assert not rerun(videos, gops, force=True).failed
    assert tree(gops) == tree(clean)


# == preprocess: concurrent runs, a full disk, SIGKILL ========================================

# tests/slow_preprocess.py: every fsync takes 10 ms more, a slow disk, so that two runs overlap
# and kill points spread over the whole run
SLOW_DISK = str(ROOT / "tests" / "slow_preprocess.py")


def preprocess_cmd(videos: Path, gops: Path, workers: int = 1, slow: bool = False) -> list[str]:
    program = [SLOW_DISK] if slow else ["-m", "preprocess"]
    return [sys.executable, *program, "--video-root", str(videos), "--gop-root", str(gops),
            "--workers", str(workers), "--no-progress"]


def test_two_concurrent_runs_on_one_gop_root(videos, clean, tmp_path):
    gops = tmp_path / "gops"
    procs = [subprocess.Popen(preprocess_cmd(videos, gops, workers=2, slow=True), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    written = [int(re.search(r"\((\d+) written", out).group(1)) for out in outputs]
    assert sum(written) == CLIPS * CAMERAS, outputs   # each video written by exactly one run
    assert tree(gops) == tree(clean)
    assert not leftovers(gops)
    manifest = fmt.read_manifest(gops)
    assert manifest.clips() == {f"clip{c:03d}": FRAMES for c in range(CLIPS)}


@pytest.fixture
def small_disk(tmp_path):
    """A 40 KiB tmpfs (room for about one video of the dataset); skips where mount is refused."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_fails_the_videos_cleanly(videos, clean, small_disk):
    gops = small_disk / "gops"
    done = subprocess.run(preprocess_cmd(videos, gops), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    output = done.stdout + done.stderr
    print(output)
    assert done.returncode == 1
    everything = [f"clip{c:03d}/cam{k}.mp4" for c in range(CLIPS) for k in range(CAMERAS)]
    failed = [rel for rel in everything if not (gops / rel / fmt.INDEX_FILENAME).exists()]
    assert failed, "the tmpfs is too large for this test"
    for rel in failed:   # each video that did not fit is named, with the reason
        assert f"FAILED {rel}: OSError: [Errno 28] No space left on device" in output
    complete = indexes_complete(gops)   # no index without all of its bins
    assert len(complete) == len(everything) - len(failed)
    assert not leftovers(gops), "staging or temp files left behind"
    for index in complete:   # what was written is exactly right
        rel = index.parent.relative_to(gops).as_posix()
        assert tree(index.parent) == tree(clean / rel)
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    assert not preprocess(videos, gops, workers=1, progress=False).failed   # room again: resumes
    assert tree(gops) == tree(clean)


def test_sigkill_at_random_points_then_rerun_matches_a_clean_run(videos, clean, tmp_path):
    """Variant of tests/test_preprocess.py::test_rerun_after_sigkill_matches_an_uninterrupted_run:
    three seeded random kill times, spread over a whole (slow-disk) run."""
    started = time.monotonic()
    subprocess.run(preprocess_cmd(videos, tmp_path / "timing", slow=True), cwd=ROOT, check=True,
                   timeout=120, capture_output=True)
    duration = time.monotonic() - started
    rng = random.Random(1234)
    states = []
    for trial in range(3):
        gops = tmp_path / f"g{trial}"
        delay = rng.uniform(0.1, 0.9) * duration
        proc = subprocess.Popen(preprocess_cmd(videos, gops, slow=True), cwd=ROOT,
                                start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        visible = indexes_complete(gops) if gops.exists() else []   # none without its bins
        bins = len(list(gops.rglob("gop.*.bin"))) if gops.exists() else 0
        states.append(len(visible))
        print(f"trial {trial}: killed at {delay:.2f} of {duration:.2f} s: {len(visible)} indexes, "
              f"{bins} bins visible")
        subprocess.run(preprocess_cmd(videos, gops), cwd=ROOT, check=True, timeout=120,
                       capture_output=True)
        assert not leftovers(gops)
        assert tree(gops) == tree(clean), f"trial {trial}"
    assert min(states) < CLIPS * CAMERAS, "no kill landed before the end of the run"


# == called from a process whose other threads hold locks =====================================

@pytest.mark.parametrize("pool", ["preprocess", "make_dataset"])
def test_workers_do_not_inherit_the_locks_that_the_callers_threads_hold(pool, tmp_path,
                                                                        monkeypatch):
    """preprocess and make_dataset called where other threads hold locks at that instant (a
    loader's, DALI's, a notebook's): a forked worker has a copy of each such lock, held by nobody
    that will let it go, and waits forever on the first it takes. CI hung so when a test made a
    store beside DALI's threads. Here each worker's first step takes a lock this process holds."""
    import multiprocessing
    import threading

    from dali_gop import synthetic
    from dali_gop.synthetic import make_dataset
    from preprocess import runner
    videos = tmp_path / "v"
    if pool == "preprocess":
        make_video(videos / "clip000" / "cam0.mp4", frames=8, gop=4, **SMALL)
    module, name = (runner, "write_video") if pool == "preprocess" else (synthetic, "render_frame")
    step, held = getattr(module, name), threading.Lock()

    def after_the_held_lock(*args, **kwargs):
        with held:
            return step(*args, **kwargs)

    monkeypatch.setattr(module, name, after_the_held_lock)
    done = {}

    def call() -> None:
        if pool == "preprocess":
            done["result"] = preprocess(videos, tmp_path / "g", workers=2, progress=False).ok
        else:
            done["result"] = len(make_dataset(videos, clips=1, cameras=2, frames=8, gop=4,
                                              workers=2, **SMALL))
    held.acquire()
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(60)
    if caller.is_alive():
        for worker in multiprocessing.active_children():
            worker.kill()
        held.release()
        pytest.fail(f"{pool}'s workers waited 60 s on a lock held in the calling process")
    held.release()
    assert done["result"] == (True if pool == "preprocess" else 2)


# == fuzzing the writer's readers =============================================================

@fuzz(400)
@given(extradata=st.binary(max_size=80) | st.binary(max_size=80).map(lambda b: b"\x01" + b),
       codec=st.sampled_from(["h264", "hevc"]))
def test_fuzz_parameter_sets(extradata, codec):
    try:
        out = parameter_sets_annexb(extradata, codec, "fuzz.mp4")
    except VideoError as e:
        assert str(e).startswith("fuzz.mp4: ")
        return
    assert isinstance(out, bytes)


packets = st.builds(_Packet, data=st.binary(max_size=12) | st.sampled_from(
    [b"\x00\x00\x01\x67", b"\x00\x00\x01\x40\x01", b"\x00\x00\x01"]),
    pts=st.integers(-20, 20), keyframe=st.booleans())


@fuzz(500)
@given(pkts=st.lists(packets, max_size=12), codec=st.sampled_from(["h264", "hevc"]),
       extradata=st.binary(max_size=40))
def test_fuzz_split_gops(pkts, codec, extradata):
    try:
        parameter_sets = parameter_sets_annexb(extradata, codec, "fuzz.mp4")
        gops = split_gops(pkts, codec, parameter_sets, "fuzz.mp4")
    except VideoError as e:
        assert str(e).startswith("fuzz.mp4: ")
        return
    start = 0
    for entry, blob in gops:
        entry.validate("fuzz")
        assert entry.start == start and entry.size == len(blob) == sum(entry.packet_sizes)
        assert entry.crc32 == zlib.crc32(blob)
        start = entry.end
