"""preprocess as a program: parallel, sharded, resumable, atomic, and clear about bad videos."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dali_gop import format as fmt
from preprocess import runner
from preprocess.runner import find_videos, preprocess, shard

from conftest import ROOT


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from dali_gop.synthetic import make_dataset
    root = tmp_path_factory.mktemp("dataset")
    make_dataset(root, clips=3, cameras=3, frames=36, width=160, height=96, gop=12,
                 codec="hevc", bframes=2, workers=2)
    return root


@pytest.fixture(scope="module")
def clean(dataset, tmp_path_factory):
    """The dataset preprocessed by one uninterrupted run."""
    gops = tmp_path_factory.mktemp("clean")
    assert preprocess(dataset, gops, workers=2, progress=False).ok
    return gops


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_preprocess_writes_every_video_and_the_manifest(dataset, tmp_path):
    summary = preprocess(dataset, tmp_path / "g", workers=2, progress=False)
    assert not summary.failed and len(summary.results) == 9
    manifest = fmt.DatasetManifest.from_json((tmp_path / "g" / fmt.MANIFEST_FILENAME).read_text())
    assert manifest.clips() == {"clip000": 36, "clip001": 36, "clip002": 36}
    assert manifest.cameras["clip001"] == ["cam0.mp4", "cam1.mp4", "cam2.mp4"]
    # FFmpeg's HEVC decoder reports an untagged range as limited
    assert manifest.videos["clip002/cam1.mp4"] == fmt.VideoSummary(36, "hevc", 160, 96,
                                                                   "unspecified", "limited")
    again = preprocess(dataset, tmp_path / "g", workers=2, progress=False)
    assert all(r.skipped for r in again.results)


def test_shards_split_the_video_list_disjointly(dataset):
    videos = find_videos(dataset)
    parts = [shard(videos, i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == videos
    assert len({v for p in parts for v in p}) == len(videos)


def preprocess_cli(videos: Path, gops: Path, *extra: str,
                   program: tuple[str, ...] = ("-m", "preprocess")) -> list[str]:
    return [sys.executable, *program, "--video-root", str(videos), "--gop-root", str(gops), *extra]


def test_a_bad_video_is_reported_once_and_the_others_done(dataset, tmp_path):
    videos = tmp_path / "v"
    (videos / "clipX").mkdir(parents=True)
    (videos / "clipX" / "cam0.mp4").write_bytes(b"\0" * 1000)
    os.symlink(dataset / "clip000", videos / "clip000")
    command = preprocess_cli(videos, tmp_path / "g", "--workers", "2", "--no-progress")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert output.count("FAILED clipX/cam0.mp4") == 1, output
    assert f"FAILED clipX/cam0.mp4: VideoError: {videos}/clipX/cam0.mp4: cannot open as a video " \
        "container" in result.stderr
    assert "3 written" in result.stdout and "Traceback" not in output
    assert "1 video(s) FAILED (see the lines above): fix or remove them and rerun" in result.stdout
    assert (tmp_path / "g" / "clip000" / "cam2.mp4" / fmt.INDEX_FILENAME).exists()


def flat_root(root: Path) -> Path:
    (root / "cam0.mp4").parent.mkdir(parents=True)
    (root / "cam0.mp4").write_bytes(b"not looked at")
    return root


USER_ERRORS = {
    # name: (make the video root from tmp_path, extra arguments, what the one line says)
    "missing root": (lambda t: t / "nope", (),
                     "{root}: video root does not exist: expected "
                     "<video-root>/<clip>/<camera>.mp4"),
    "empty root": (lambda t: (t / "empty").mkdir() or t / "empty", (),
                   "{root}: no videos (.mp4, .mov, .mkv) found: expected "
                   "<video-root>/<clip>/<camera>.mp4"),
    "flat layout": (lambda t: flat_root(t / "flat"), (),
                    "{root}: 1 video(s) directly under the video root (cam0.mp4): expected "
                    "<video-root>/<clip>/<camera>.mp4, a folder per clip"),
    "gop root is a file": (lambda t: t / "v", ("--gop-root", "{tmp}/v/clip000/cam0.mp4"),
                           "{tmp}/v/clip000/cam0.mp4: File exists"),
    "bad option": (lambda t: t / "v", ("--workers", "0"),
                   "argument --workers: '0': expected a whole number >= 1 (see --help)"),
}


@pytest.mark.parametrize("case", USER_ERRORS)
def test_a_user_error_is_one_line_naming_the_file(case, dataset, tmp_path):
    make_root, extra, says = USER_ERRORS[case]
    os.symlink(dataset, tmp_path / "v")
    root = make_root(tmp_path)
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    done = subprocess.run(preprocess_cli(root, tmp_path / "g", "--no-progress", *extra), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    line, = done.stderr.splitlines()
    assert line.startswith("python -m preprocess: error: " + says.format(root=root, tmp=tmp_path))
    assert line.endswith("(--debug or DALI_GOP_DEBUG=1 for the traceback)")
    debug = subprocess.run(preprocess_cli(root, tmp_path / "g", "--debug", *extra), cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_symlink_loops_are_walked_once(dataset, tmp_path):
    """Links back into the tree (to the root, its parent, a clip, twice to one clip) do not make
    the walk endless or a video count twice: each video is processed once, and a note says which
    links were not followed."""
    root = tmp_path / "v"
    root.mkdir()
    os.symlink(dataset / "clip000", root / "clip000")      # outside the root: followed
    os.symlink(dataset / "clip000", root / "clip000-again")  # a second way in: not followed
    shutil.copytree(dataset / "clip001", root / "clip001")
    for name, target in [("self", "."), ("self2", "."), ("root", ".."), ("above", "../..")]:
        os.symlink(target, root / "clip001" / name)
    done = subprocess.run(preprocess_cli(root, tmp_path / "g", "--no-progress"), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "videos: 6 (6 written" in done.stdout
    assert "note: 5 directory link(s) not followed" in done.stderr
    assert find_videos(root) == [f"clip00{c}/cam{k}.mp4" for c in (0, 1) for k in range(3)]


@pytest.fixture
def read_only(tmp_path):
    """``read_only(path)``: a read-only view of a directory. Root ignores permission bits, so as
    root it is a read-only bind mount (skipped where mounting is refused), otherwise chmod."""
    mounts, chmodded = [], []

    def make(path: Path) -> Path:
        if os.geteuid() != 0:
            for p in [path, *path.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
            chmodded.append(path)
            return path
        view = tmp_path / f"ro{len(mounts)}"
        view.mkdir()
        for command in (["mount", "--bind", str(path), str(view)],
                        ["mount", "-o", "remount,bind,ro", str(view)]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.strip()}")
            mounts.append(view)
        return view

    yield make
    for view in dict.fromkeys(mounts):
        subprocess.run(["umount", str(view)], check=True)
    for path in chmodded:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def test_rerun_on_a_read_only_gop_root_is_up_to_date(dataset, tmp_path, read_only):
    """A finished GOP root may be read-only (shared, archived): a rerun checks it and writes
    nothing. Where something would need writing, the lines say what and why."""
    gops = tmp_path / "g"
    preprocess(dataset, gops, workers=2, progress=False)
    view = read_only(gops)
    command = preprocess_cli(dataset, view, "--no-progress", "--workers", "2")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "videos: 9 (0 written, 9 up to date, 0 failed)" in done.stdout and not done.stderr

    index = gops / "clip002" / "cam2.mp4" / fmt.INDEX_FILENAME
    if os.geteuid() == 0:
        index.unlink()   # through the writable original: now this video is not done
    else:
        index.parent.chmod(0o755)
        index.unlink()
        index.parent.chmod(0o555)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"FAILED clip002/cam2.mp4: VideoError: {view}/clip002/cam2.mp4: cannot write here "
        f"({reason}) and the video is not up to date: make the GOP root writable, or rerun "
        "elsewhere",
        f"FAILED {view}/{fmt.MANIFEST_FILENAME}: cannot update the manifest ({reason}): make the "
        "GOP root writable; an old one stays as it was"]
    assert "videos: 9 (0 written, 8 up to date, 1 failed)" in done.stdout


def finished_indexes(root: Path) -> list[Path]:
    """Index files under root; tolerates directories vanishing while preprocess runs."""
    return [Path(d) / fmt.INDEX_FILENAME for d, _, files in os.walk(root)
            if fmt.INDEX_FILENAME in files]


def assert_only_complete_videos(gops: Path) -> list[Path]:
    """Whatever index is visible has all its bins. Returns the indexes."""
    done = finished_indexes(gops)
    for index_path in done:
        index = fmt.VideoIndex.from_json(index_path.read_text())
        for gop in index.gops:
            assert (index_path.parent / gop.file).stat().st_size == gop.size
    return done


def assert_a_rerun_matches(clean: Path, videos: Path, gops: Path) -> None:
    """A rerun of the command line removes any leftovers and ends with the files of ``clean``."""
    subprocess.run(preprocess_cli(videos, gops), cwd=ROOT, check=True, timeout=300,
                   capture_output=True)
    assert not list(gops.rglob(".staging.*"))
    a, b = tree(clean), tree(gops)
    a.pop(fmt.MANIFEST_FILENAME), b.pop(fmt.MANIFEST_FILENAME)
    assert a == b


def test_rerun_after_sigkill_matches_an_uninterrupted_run(dataset, clean, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(preprocess_cli(dataset, killed, "--workers", "1", "--no-progress"),
                            cwd=ROOT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not finished_indexes(killed):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < len(assert_only_complete_videos(killed)) < 9, "the kill should land midway"
    assert_a_rerun_matches(clean, dataset, killed)


def test_partial_leftovers_are_redone(dataset, tmp_path):
    gops = tmp_path / "g"
    preprocess(dataset, gops, workers=2, progress=False)
    expected = tree(gops)
    out = gops / "clip001" / "cam0.mp4"
    (out / fmt.INDEX_FILENAME).unlink()            # as if killed before the index landed
    next(out.glob("gop.*.bin")).write_bytes(b"half")
    (out / ".staging.abc").mkdir()
    (out / ".staging.abc" / "gop.0.12.bin").write_bytes(b"x")
    summary = preprocess(dataset, gops, workers=2, progress=False)
    assert [r.rel for r in summary.results if not r.skipped] == ["clip001/cam0.mp4"]
    assert tree(gops) == expected


def test_changed_source_is_redone(dataset, clean, tmp_path):
    videos, gops = tmp_path / "v", tmp_path / "g"
    shutil.copytree(dataset, videos)   # (copies the mtimes, so the clean store is up to date)
    shutil.copytree(clean, gops)
    os.utime(videos / "clip002" / "cam2.mp4")
    summary = preprocess(videos, gops, workers=2, progress=False)
    assert [r.rel for r in summary.results if not r.skipped] == ["clip002/cam2.mp4"]


def test_a_killed_writers_temp_file_is_removed_and_a_live_ones_kept(tmp_path):
    """The manifest's temp file of a run killed mid-write goes at the next write; a temp file of a
    process still writing (this one), or of another host sharing the directory, stays."""
    path = tmp_path / fmt.MANIFEST_FILENAME
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {"dead": fmt._temp_prefix(path, dead.pid) + "abc123.tmp",
             "alive": fmt._temp_prefix(path, os.getpid()) + "def456.tmp",
             "other host": f".{path.name}.elsewhere.example.{dead.pid}.ghi789.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"{")
    fmt.remove_dead_writers_temps(path)
    assert not (tmp_path / names["dead"]).exists()
    assert (tmp_path / names["alive"]).exists() and (tmp_path / names["other host"]).exists()
    fmt.write_atomic(path, b"{}")
    assert path.read_bytes() == b"{}"


def test_a_script_without_a_main_guard_or_read_from_stdin_makes_and_preprocesses_videos(tmp_path):
    """The workers are spawned, and do not re-run the calling script: one that calls make_dataset
    and preprocess at module level (no ``if __name__ == "__main__":``, as a notebook turned into
    a script) runs once, from a file and from stdin."""
    videos, gops = tmp_path / "v", tmp_path / "g"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from dali_gop.synthetic import make_dataset\n"
              "from preprocess.runner import preprocess\n"
              f"make_dataset({str(videos)!r}, clips=1, cameras=2, frames=8, gop=4, workers=2)\n"
              f"summary = preprocess({str(videos)!r}, {str(gops)!r}, workers=2, progress=False)\n"
              "print(summary.counts())\n")
    (tmp_path / "script.py").write_text(script)
    for command, given in (([sys.executable, "script.py"], None), ([sys.executable, "-"], script)):
        shutil.rmtree(videos, ignore_errors=True)
        shutil.rmtree(gops, ignore_errors=True)
        done = subprocess.run(command, input=given, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "2 written, 0 up to date, 0 failed", done.stdout
        assert "Traceback" not in done.stderr


# Ctrl-C. Every fsync sleeps (a slow disk), so a run of the 9 videos lasts long enough to be
# interrupted midway (tests/slow_preprocess.py, which also sets STUCK and GRACE)
SLOW_RUN = (str(ROOT / "tests" / "slow_preprocess.py"),)


def interrupted_run(videos: Path, gops: Path, interrupts: int, **env) -> tuple[float, str, int]:
    """Start a slow run in its own process group, wait until a video is done, then press Ctrl-C
    ``interrupts`` times (0.3 s apart) as a terminal does: SIGINT to the whole group. Returns
    the seconds from the first SIGINT to the exit, stderr and the exit status."""
    command = preprocess_cli(videos, gops, "--workers", "2", program=SLOW_RUN)
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FSYNC_DELAY": "0.25", **env})
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not finished_indexes(gops):
            time.sleep(0.01)
        started = time.monotonic()
        for i in range(interrupts):
            if i:
                time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=10)
        seconds = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return seconds, proc.stderr.read(), proc.returncode


def test_ctrl_c_stops_within_2_s_leaving_only_complete_videos(dataset, clean, tmp_path):
    gops = tmp_path / "g"
    seconds, stderr, status = interrupted_run(dataset, gops, interrupts=1)
    print(f"stopped {seconds:.2f} s after Ctrl-C\n{stderr}")
    assert status == 130 and seconds < 2
    done = assert_only_complete_videos(gops)
    assert 0 < len(done) < 9
    # a worker may finish a video and be stopped before its result reaches the main process
    said = int(re.search(r"interrupted: (\d+) of 9 videos done \(\1 written, 0 up to date, "
                         r"0 failed\)", stderr).group(1))
    assert said <= len(done) <= said + 2
    assert f"{said}/9" in stderr.splitlines()[-2]   # the bar's last state
    assert stderr.splitlines()[-1] == "python -m preprocess: interrupted"
    assert "Traceback" not in stderr
    hidden = [p for p in gops.rglob(".*") if p.name not in (".lock", fmt.INDEX_FILENAME)]
    assert not hidden, "the stopped workers left staging or temp files"
    assert_a_rerun_matches(clean, dataset, gops)


def test_ctrl_c_kills_workers_that_do_not_stop(dataset, clean, tmp_path):
    """Workers that do not stop are killed after the grace: still within 2 s. What they leave is
    hidden (.staging directories, which readers ignore) and the next run removes it."""
    gops = tmp_path / "g"
    seconds, stderr, status = interrupted_run(dataset, gops, interrupts=1, STUCK="1")
    assert status == 130 and runner.STOP_GRACE_S <= seconds < 2, stderr
    assert_only_complete_videos(gops)
    assert_a_rerun_matches(clean, dataset, gops)


def test_a_second_ctrl_c_exits_at_once(dataset, tmp_path):
    """The first Ctrl-C waits for the workers to stop (here they do not, and the grace is 60 s);
    the second kills them and exits."""
    seconds, stderr, status = interrupted_run(dataset, tmp_path / "g", interrupts=2,
                                              STUCK="1", GRACE="60")
    assert status == 130 and seconds < 1.5, stderr
    assert stderr.splitlines()[-1] == "interrupted again: stopped at once"
    assert "Traceback" not in stderr
    assert_only_complete_videos(tmp_path / "g")
