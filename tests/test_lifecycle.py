"""A loader's life on the cpu backend: nothing it starts outlives it or its process, no way of ending
crashes the interpreter, and every way its workers fail reaches the training loop.

Each scenario runs in a training process of its own (tests/lifecycle_child.py), since what is
tested is how that process ends.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, store_factory

pytest.importorskip("nvidia.dali")

CHILD = Path(__file__).resolve().parent / "lifecycle_child.py"
RUNS = 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(gop_root, videos_root): two clips of two cameras, 24 frames in GOPs of 8."""
    gop_root, _ = store_factory(tmp_path_factory, {"tiny": {}}, clips=2, cameras=2, frames=24,
                                gop=8)("tiny")
    return gop_root, gop_root.parent / "videos"


def child(*args, backend: str = "cpu", **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LIFECYCLE_BACKEND": backend}, **popen)


def run_all(commands: list[tuple], timeout: float = 120,
            backend: str = "cpu") -> list[tuple[int, str, str]]:
    """Each command in a child, two at a time: [(exit code, stdout, stderr)]."""
    results = []
    for i in range(0, len(commands), 2):
        pair = [child(*args, backend=backend) for args in commands[i:i + 2]]
        for process in pair:
            try:
                out, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
            results.append((process.returncode, out, err))
    return results


def failures(results) -> list[str]:
    return [f"exit {code}: {out[-300:]!r} {err[-1500:]}" for code, out, err in results if code]


BACKENDS = [pytest.param("cpu", id="cpu"),
            pytest.param("nvdec", id="nvdec", marks=pytest.mark.gpu)]


def runs(backend: str) -> int:
    """The cpu runs are the done-when's 20; on the GPU a few show that nvdec's resources (decoder
    sessions, device memory, its thread pool) go the same way."""
    return RUNS if backend == "cpu" else 4


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_loaders_dropped_mid_epoch_never_crash_the_exit(tiny, backend):
    """12 loaders rebuilt mid-epoch and dropped without close(), then the script ends: exit 0 in
    every run (before: 134/139 in 3 of 4 runs, a DALI executor thread rethrowing while the
    interpreter's garbage collector tore its pipeline down)."""
    gop_root, _ = tiny
    results = run_all([("drop", gop_root)] * runs(backend), backend=backend)
    assert not failures(results), "\n".join(failures(results))
    assert all(out.strip() == "ok" for _, out, _ in results)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_error_in_a_batch_then_close_then_a_new_loader(tiny, backend):
    """A decode error and a refused (truncated) bin, each then close() and a new loader: its
    epoch is whole and exact, and the process ends with exit 0 (before: 7 of 8 runs aborted,
    `Resource deadlock avoided`: the garbage collector ran a pipeline's shutdown inside that
    pipeline's own thread)."""
    gop_root, videos = tiny
    victim = next(gop_root.rglob("gop.8.8.bin"))
    commands = []
    for run in range(runs(backend)):
        copy = gop_root.parent / f"copy{run}"
        if not copy.exists():
            subprocess.run(["cp", "-r", str(gop_root), str(copy)], check=True)
        commands.append(("error", copy, videos, copy / victim.relative_to(gop_root),
                         "decode" if run % 2 else "read"))
    results = run_all(commands, backend=backend)
    assert not failures(results), "\n".join(failures(results))
    assert all(out.split()[-2:] == ["epoch", "48"] for _, out, _ in results), results[0]


def test_the_readme_snippet_runs_as_a_script_without_a_main_guard(tiny, tmp_path):
    """DALI's workers are spawned, and spawned processes re-run the parent's main script; the
    loader keeps them from it, so the README's lines work as they stand (before: `RuntimeError:
    Workers initialization failed` under 366 lines of tracebacks). DALI's `reader_name` warning,
    which a user cannot act on, is not printed."""
    gop_root, _ = tiny
    script = tmp_path / "train.py"
    script.write_text(
        "from dali_gop import make_loader\n\n"
        f"loader = make_loader({str(gop_root)!r}, pattern='stream', batch_size=4, backend='cpu')\n"
        "for batch in loader:\n"
        "    frames = batch['frames']\n"
        "print('ok', tuple(frames.shape))\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.startswith("ok (4, 2, 1, 96, 160, 3)"), done.stderr
    assert "reader_name" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_loader_collected_inside_a_foreign_thread_is_shut_down_from_the_reaper(tiny,
                                                                                monkeypatch):
    """The garbage collector runs in whichever thread allocates, DALI's own C++ threads included
    (threads Python did not start, like this test's). A loader in a reference cycle collected
    there must not shut its pipeline down in that thread (a pipeline joining its own thread
    aborts the process): the reaper thread does it, and the workers end."""
    import _thread
    import gc
    import threading

    from conftest import cpu_loader
    from dali_gop import _run
    gop_root, _ = tiny
    where = []
    shutdown = _run.Run.shutdown
    monkeypatch.setattr(_run.Run, "shutdown",
                        lambda run: (where.append(threading.current_thread().name), shutdown(run)))
    loader = cpu_loader(gop_root, pattern="random")
    next(iter(loader))
    workers = loader._run.worker_pids()
    cycle = [loader]
    cycle.append(cycle)
    gc.disable()    # collected in that thread, not by chance in this one
    try:
        del loader, cycle
        collected = threading.Event()
        _thread.start_new_thread(lambda: (gc.collect(), collected.set()), ())
        assert collected.wait(30)
    finally:
        gc.enable()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert where == ["dali-gop-reaper"]
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def _session(sid: int) -> dict[int, str]:
    """Processes of session ``sid`` (the training process started one), with their commands."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found[int(entry)] = command.decode(errors="replace")
    return found


def _shm_files(pids) -> set[str]:
    """Names under /dev/shm that these processes map or hold open."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for path in re.findall(r"(/dev/shm/\S+)", maps) + fds:
            if path.startswith("/dev/shm/") and not path.endswith("(deleted)"):
                names.add(path)
    return names


@contextlib.contextmanager
def training_child(gop_root, backend: str = "cpu"):
    """A training process (its own session) with its two DALI workers up: (process, its session's
    processes); everything in the session is killed at the end."""
    process = child("train", gop_root, backend=backend, start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
        session = _session(process.pid)
        assert sum("spawn_main" in command for command in session.values()) == 2, session
        yield process, session
    finally:
        for pid in _session(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.kill()
        process.communicate()


def assert_session_ends(process, cause: str) -> None:
    deadline = time.monotonic() + 10
    while _session(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _session(process.pid), f"alive 10 s after {cause}: {_session(process.pid)}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_training_process_leaves_nothing_behind(tiny, sig, backend):
    """Killed mid-epoch, the training process takes everything its loader started with it within
    10 s: DALI's workers (before: they ran on under init forever), the resource tracker, and
    the shared memory they named in /dev/shm."""
    gop_root, _ = tiny
    with training_child(gop_root, backend) as (process, session):
        files = _shm_files(session)
        process.send_signal(sig)
        process.wait(10)
        assert_session_ends(process, sig.name)
        assert not [name for name in files if os.path.exists(name)], files


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stuck_worker_is_an_error_naming_its_read_then_a_new_loader_works(tiny, backend):
    """A worker that stands still (SIGSTOP here, a hung network read in life) ends the training
    loop with WorkerError within worker_timeout + 2 s of the last batch (those already on their way
    still come, slower on a loaded machine), naming the worker and what it read; a new loader then
    delivers an exact epoch (before: the loop waited forever). The run shuts down after the error
    is raised (the stopped worker may take seconds to be reaped); close() waits for that."""
    gop_root, videos = tiny
    [(code, out, err)] = run_all([("stuck", gop_root, videos, 3)], timeout=90, backend=backend)
    assert code == 0, err[-3000:]
    raised = re.search(r"raised after ([\d.]+) s: (.*)", out)
    assert raised, out + err[-3000:]
    assert float(raised.group(1)) <= 3 + 2, raised.group(0)
    message = raised.group(2)
    assert re.search(r"DALI worker 0 \(pid \d+, stopped\)", message), message
    assert re.search(r"clip clip00\d, frames \[\d+\]", message), message
    assert re.search(r"stopped worker after close: X$", out, re.M), out   # gone, reaped
    assert out.split()[-2:] == ["epoch", "48"], out


def test_ctrl_c_ends_the_training_loop_with_its_own_traceback_only(tiny):
    """Ctrl-C at a terminal signals the whole foreground group, DALI's workers too: the training
    loop ends with its KeyboardInterrupt, the workers end with it, silently (before: each worker
    printed a KeyboardInterrupt traceback of its own)."""
    gop_root, _ = tiny
    with training_child(gop_root) as (process, _):
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=10)
        assert process.returncode != 0, err
        assert err.count("Traceback") == 1 and err.count("KeyboardInterrupt") == 1, err
        assert "SpawnProcess" not in err and "_multiproc" not in err, err
        assert_session_ends(process, "Ctrl-C")
