"""DALI's reader processes as the loader sees them: how they start, what they report, when they end.

DALI spawns the workers and runs the source callback in them; the loader wraps that callback in a
:class:`WatchedSource`, which, once unpickled in a worker,

- ends the worker when the training process is gone (killed by any signal: nothing else would, a
  worker waits on DALI's task queue forever),
- leaves Ctrl-C to the training process, whose end ends the worker (no traceback per worker), and
- writes which sample it is reading, and since when, into a :class:`ProgressBoard` the training
  process reads, so that a worker stuck on a read (a hung network file system) is named with what
  it was reading instead of hanging the training loop.

The board is a memfd of the training process that the workers open through ``/proc``: it has no
name in ``/dev/shm``, so nothing is left behind whichever process dies first.
"""
from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import pickle
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dali_gop._spawn import main_module_hidden

# pid, busy, reads done, since (CLOCK_MONOTONIC: one clock for all processes of the machine),
# epoch, position
_RECORD = struct.Struct("<qqqdqq")
_RECORD_SIZE = 64
_PARENT_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Progress:
    """One worker's latest report."""
    pid: int
    busy: bool          # reading sample ``position`` of ``epoch`` since ``since``
    reads: int          # samples read so far
    since: float        # time.monotonic() of the last change
    epoch: int
    position: int       # -1: no read yet


class ProgressBoard:
    """The training process's side: one record per worker, read while it waits for a batch."""

    def __init__(self, num_workers: int):
        self.size = max(1, num_workers) * _RECORD_SIZE
        self._fd = os.memfd_create("dali-gop-progress", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, self.size)
        self._map = mmap.mmap(self._fd, self.size)
        self.path = f"/proc/{os.getpid()}/fd/{self._fd}"

    def read(self) -> dict[int, Progress]:
        """pid -> its record, for the workers that have reported."""
        records = {}
        for offset in range(0, self.size, _RECORD_SIZE):
            pid, busy, reads, since, epoch, position = _RECORD.unpack_from(self._map, offset)
            if pid:
                records[pid] = Progress(pid, bool(busy), reads, since, epoch, position)
        return records

    def close(self) -> None:
        if self._fd >= 0:
            self._map.close()
            os.close(self._fd)
            self._fd = -1


class WatchedSource:
    """The source callback as the workers run it: ``source`` plus the two duties above.

    Picklable; ``dataset`` and ``stream_pairs`` are the source's, so :func:`dali_gop.gop_video`
    takes either.
    """

    def __init__(self, source, board: ProgressBoard):
        self.source = source
        self.board_path = board.path
        self.board_size = board.size
        self.parent_pid = os.getpid()
        self._map = None

    @property
    def dataset(self):
        return self.source.dataset

    def stream_pairs(self) -> int:
        return self.source.stream_pairs()

    def __getstate__(self):
        return {**self.__dict__, "_map": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._offset = -1
        self._reads = 0
        if os.getpid() != self.parent_pid:    # unpickled in a worker, as it starts
            _ignore_ctrl_c()
            _exit_with(self.parent_pid)
            self._map, self._offset = _claim_record(self.board_path, self.board_size)

    def __call__(self, sample_info):
        self._report(True, sample_info.epoch_idx, sample_info.idx_in_epoch)
        try:
            return self.source(sample_info)
        finally:
            self._reads += 1
            self._report(False, sample_info.epoch_idx, sample_info.idx_in_epoch)

    def _report(self, busy: bool, epoch: int, position: int) -> None:
        if self._map is not None:
            _RECORD.pack_into(self._map, self._offset, os.getpid(), busy, self._reads,
                              time.monotonic(), epoch, position)


def _claim_record(path: str, size: int):
    """Map the board and take the first free record (workers start together: the lock orders
    them). None where the board cannot be opened: the worker then runs unwatched, and a stuck
    read is still caught, by the batch that does not come."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None, -1
    try:
        board = mmap.mmap(fd, size)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            for offset in range(0, size, _RECORD_SIZE):
                if not _RECORD.unpack_from(board, offset)[0]:
                    _RECORD.pack_into(board, offset, os.getpid(), False, 0, time.monotonic(), -1,
                                      -1)
                    return board, offset
            return None, -1
        finally:
            # explicitly: the mapping holds a duplicate of fd, and with it the lock
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _ignore_ctrl_c() -> None:
    """Ctrl-C at a terminal signals the whole foreground process group, workers included: the
    training process takes it, and its workers end with it (its shutdown, or :func:`_exit_with`),
    rather than each printing a KeyboardInterrupt traceback of its own. DALI unpickles the
    callback in the worker's main thread, the only one that may set a handler."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exit_with(parent_pid: int) -> None:
    """End this process once ``parent_pid`` is no longer its parent. A thread polling the parent
    rather than prctl(PR_SET_PDEATHSIG): that signal fires when the *thread* that spawned the
    worker ends, and loaders may be built in threads that end before their loaders do."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="dali-gop-parent-watch", daemon=True).start()


# -- the training process's view of the workers -------------------------------------------------

def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, D, T for stopped, Z...); "X" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def open_files_under(pid: int, root: str | os.PathLike) -> list[str]:
    """The files under ``root`` that process ``pid`` has open (a stuck read's bin)."""
    root = str(Path(root).resolve())
    found = []
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for entry in entries:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
            if target.startswith(root + os.sep):
                found.append(target)
    return sorted(found)


#: what a script without ``if __name__ == "__main__":`` is told when DALI's workers ran its loader
#: code as they imported it
MAIN_GUARD_LINE = ("make_loader ran while a DALI worker process imported your script: put the code "
                   "that builds and iterates the loader under `if __name__ == \"__main__\":`")

# names the training process's bootstrap report to the workers it spawns, while it spawns them
_BOOTSTRAP_ENV = "DALI_GOP_BOOTSTRAP_REPORT"
_bootstrap_lock = threading.Lock()
_bootstrap_fd = -1
_spawning = 0


class Spawn:
    """What :func:`main_module_not_rerun` yields: whether the workers it let import the main
    module ran make_loader there (they say so through a memfd of the training process, since each
    one only exits: a traceback per worker, then DALI's ``Workers initialization failed``, would
    bury the one line the user needs)."""

    def __init__(self, main_imported: bool):
        self.main_imported = main_imported

    def loader_ran_in_a_worker(self) -> bool:
        if not self.main_imported or _bootstrap_fd < 0:
            return False
        return os.pread(_bootstrap_fd, 1, 0) == b"\1"


@contextlib.contextmanager
def _bootstrap_reported():
    """While workers are spawned: the environment names the report they write to."""
    global _bootstrap_fd, _spawning
    with _bootstrap_lock:
        if _bootstrap_fd < 0:
            _bootstrap_fd = os.memfd_create("dali-gop-bootstrap", os.MFD_CLOEXEC)
            os.ftruncate(_bootstrap_fd, 1)
        if not _spawning:   # a report of an earlier spawn must not speak for this one
            os.pwrite(_bootstrap_fd, b"\0", 0)
        _spawning += 1
        # counted: loaders built in several threads at once share the variable
        os.environ[_BOOTSTRAP_ENV] = f"/proc/{os.getpid()}/fd/{_bootstrap_fd}"
    try:
        yield
    finally:
        with _bootstrap_lock:
            _spawning -= 1
            if not _spawning:
                os.environ.pop(_BOOTSTRAP_ENV, None)


@contextlib.contextmanager
def main_module_not_rerun(callback):
    """While DALI spawns workers: keep them from re-running the training script; yields a
    :class:`Spawn`.

    A spawned process re-imports the parent's ``__main__`` so that objects defined there unpickle;
    a script that builds its loader at module level, without ``if __name__ == "__main__":``, then
    builds it again in every worker, which fails. The workers need nothing of ``__main__`` unless
    the callback pickles a reference to it (a pattern class defined in the script), so the main
    module is hidden from ``multiprocessing`` unless it does (which also spares every worker the
    script's imports). Where it does, a worker that gets to make_loader says so and exits (see
    :func:`spawned_bootstrap`), and the training process raises the one line.
    """
    main = sys.modules.get("__main__")
    if main is None or b"__main__" in pickle.dumps(callback):
        with _bootstrap_reported():
            yield Spawn(main_imported=main is not None)
        return
    with main_module_hidden():
        yield Spawn(main_imported=False)


def spawned_bootstrap() -> bool:
    """This process is a spawned child still importing its parent's main module.

    A DALI worker of ours (the training process named its report in the environment) does not
    return: it tells the training process, which raises :data:`MAIN_GUARD_LINE`, and exits
    without a traceback. (Where the report cannot be written it prints the line itself.)
    """
    import multiprocessing
    if not getattr(multiprocessing.current_process(), "_inheriting", False):
        return False
    report = os.environ.get(_BOOTSTRAP_ENV, "")
    if report.startswith(f"/proc/{os.getppid()}/"):
        try:
            fd = os.open(report, os.O_WRONLY)
            try:
                os.pwrite(fd, b"\1", 0)
            finally:
                os.close(fd)
        except OSError:
            print(f"dali_gop: {MAIN_GUARD_LINE}", file=sys.stderr, flush=True)
        # not SystemExit: the script's atexit hooks (DALI's among them) have nothing to end here
        os._exit(1)
    return True
