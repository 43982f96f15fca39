"""Resuming mid-epoch (issue 18): a loader built from another loader's ``state_dict()`` delivers
what the uninterrupted run would have delivered from there on, batch for batch, frames bit-exact;
at another number of ranks the rest of the epoch exactly once; at the cost of at most one GOP
decoded per stream slot; and states it cannot continue exactly are refused.

The loaders here run on the cpu backend, whose stream slots keep decoded GOPs as nvdec's do (the
same bookkeeping, dali_gop.backends._assemble.KeptGops): a slot resumed part way must restart
from the right GOP. On nvdec (marked gpu): the SIGKILL-and-new-process check at 1 and 2 ranks,
and the plain-break check at the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dali_gop import RandomPattern, SequencePattern, StreamPattern
from dali_gop.errors import ConfigError
from dali_gop.patterns._resume import Resumed, served
from dali_gop._dataset import Dataset
from dali_gop._loader import STATE_VERSION, Position, resume_point
from dali_gop._source import GopSource
from conftest import ROOT, check_batch, cpu_loader, store_factory

CHILD = Path(__file__).resolve().parent / "resume_child.py"
sys.path.insert(0, str(CHILD.parent))
from resume_child import PATTERNS as CHILD_PATTERNS  # noqa: E402

CLIPS = {f"scene-{i:02d}": 20 + 3 * i for i in range(7)}
POLICIES = ("PARTIAL", "FILL", "DROP")
PATTERNS = [StreamPattern(), RandomPattern(), SequencePattern(3, stride=2),
            SequencePattern(2, random_starts=True, samples_per_epoch=40)]


def key(spec) -> tuple:
    return spec.clip, spec.frames


def shard(pattern, shard_id, num_shards, batch_size, policy, clips=CLIPS, epoch=0):
    """(samples, what the iterator serves of them) of one shard's epoch."""
    options = dict(epoch=epoch, seed=3, shard_id=shard_id, num_shards=num_shards,
                   batch_size=batch_size, last_batch_policy=policy)
    samples = pattern.epoch_samples(clips, **options)
    return samples, served(samples, pattern.shard_size(clips, **options), batch_size, policy)


def unique(pattern) -> bool:
    """Whether the pattern's epoch holds each sample once (random draws may repeat one)."""
    return not (isinstance(pattern, RandomPattern) or getattr(pattern, "random_starts", False))


# ---- the samples --------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("num_shards", [1, 2])
def test_resumed_at_the_same_ranks_a_shard_goes_on_at_its_batch(pattern, policy, num_shards):
    for shard_id in range(num_shards):
        whole, whole_served = shard(Resumed(pattern, 4), shard_id, num_shards, 4, policy)
        for skip in (1, 3, len(whole) // 4 - 1):
            resumed = Resumed(pattern, 4, skip)
            samples, rest = shard(resumed, shard_id, num_shards, 4, policy)
            assert samples == whole[skip * 4:]
            assert rest == whole_served[skip * 4:]
            # the epochs after it are the pattern's own
            assert shard(resumed, shard_id, num_shards, 4, policy, epoch=1)[0] == \
                shard(pattern, shard_id, num_shards, 4, policy, epoch=5)[0]


@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("layouts", [
    [(2, 4, 3), (3, 4)], [(2, 4, 3), (1, 4)], [(1, 4, 5), (2, 3)], [(3, 2, 1), (1, 5)],
    [(2, 4, 0), (3, 2)], [(2, 3, 7), (2, 4)], [(2, 4, 2), (3, 4, 2), (1, 4)],
    [(1, 4, 4), (4, 4, 1), (2, 2, 3), (3, 4)], [(2, 4, 10), (4, 4)]], ids=str)
def test_resumed_at_other_ranks_the_rest_of_the_epoch_comes_once(pattern, policy, layouts):
    """Elastic: each rank delivered b batches of layout (N, B); the remainder laid out at the
    next (M, B') and so on. Every sample of the epoch is delivered once over all layouts (DROP:
    at most once, what it drops being less than a batch per rank), and under FILL and DROP all
    ranks of a layout get the same number of batches."""
    epoch = Counter()
    for shard_id in range(layouts[0][0]):
        epoch.update(map(key, shard(pattern, shard_id, *layouts[0][:2], policy)[1]))
    delivered = Counter()
    for i, (num_shards, batch_size, *batches) in enumerate(layouts):
        resumed = Resumed(pattern, 0, 0, tuple(layouts[:i]))
        counts = []
        for shard_id in range(num_shards):
            samples, rest = shard(resumed, shard_id, num_shards, batch_size, policy)
            assert len(samples) % batch_size == 0
            counts.append(len(rest) // batch_size if policy == "DROP" else
                          len(samples) // batch_size)
            delivered.update(map(key, rest[:batches[0] * batch_size] if batches else rest))
            slots = [s.slot for s in rest]
            if unique(pattern) and i:
                # a slot's samples sit batch_size apart, in its own lane, as the windows expect
                assert all(s in (-1, j % batch_size) for j, s in enumerate(slots))
        if policy != "PARTIAL":
            assert len(set(counts)) == 1, counts
    if unique(pattern):
        assert max(delivered.values()) == 1, "a sample delivered twice"
    assert not delivered - epoch, "a sample the epoch does not hold"
    missing = sum((epoch - delivered).values())
    if policy == "DROP":
        assert missing < sum(n * b for n, b, *_ in layouts)
    else:
        assert missing == 0, f"{missing} samples never delivered"


def test_a_rank_with_nothing_left_has_an_empty_epoch():
    """Fewer samples left than slots: some ranks get none (their epoch is over; the loader moves
    them on to the next one), and under FILL they get whole batches of fillers."""
    pattern = StreamPattern()
    clips = {"a": 8}
    for policy, sizes in (("PARTIAL", [4, 0, 0]), ("FILL", [4, 4, 4]), ("DROP", [0, 0, 0])):
        resumed = Resumed(pattern, 0, 0, ((1, 4, 1),))
        got = [len(shard(resumed, r, 3, 4, policy, clips)[0]) for r in range(3)]
        assert got == sizes, policy


# ---- the state ----------------------------------------------------------------------------------

IDENTITY = {"dataset": "0badf00d", "pattern": "stream", "options": {}, "seed": 0,
            "last_batch_policy": "PARTIAL"}
SHARD = {"shard_id": 1, "num_shards": 2, "batch_size": 4}


def state(**changes) -> dict:
    return {"version": STATE_VERSION, **IDENTITY, "epoch": 3, "batches": 5, "shard": SHARD,
            "resharded": [], **changes}


def test_a_state_names_the_batch_after_the_last_delivered():
    assert resume_point(state(), IDENTITY, SHARD) == Position(3, 5)
    # any rank's state: the ranks are in lock-step
    assert resume_point(state(), IDENTITY, {**SHARD, "shard_id": 0}) == Position(3, 5)
    assert resume_point(state(), IDENTITY, {**SHARD, "num_shards": 3}) == \
        Position(3, 0, ((2, 4, 5),))
    assert resume_point(state(), IDENTITY, {**SHARD, "batch_size": 2}) == \
        Position(3, 0, ((2, 4, 5),))
    assert resume_point(state(batches=0), IDENTITY, {**SHARD, "num_shards": 3}) == Position(3)
    chained = state(resharded=[[1, 4, 2]])
    assert resume_point(chained, IDENTITY, SHARD) == Position(3, 5, ((1, 4, 2),))
    assert resume_point(json.loads(json.dumps(chained)), IDENTITY, {**SHARD, "num_shards": 1}) \
        == Position(3, 0, ((1, 4, 2), (2, 4, 5)))


@pytest.mark.parametrize("changes, message", [
    (dict(dataset="12345678"), "another dataset.*12345678.*0badf00d.*GOP root"),
    (dict(pattern="random"), "another access pattern.*'random'"),
    (dict(options={"length": 8}), "other pattern options"),
    (dict(seed=7), "another seed.*7 there, 0 here"),
    (dict(last_batch_policy="DROP"), "another last_batch_policy"),
    (dict(version=99), "version 99.*reads version 1"),
    (dict(batches=-1), "garbled"),
    (dict(shard={}), "lacks or garbles"),
])
def test_states_it_cannot_continue_are_refused_in_one_line(changes, message):
    with pytest.raises(ConfigError, match=message) as refused:
        resume_point(state(**changes), IDENTITY, SHARD)
    assert "\n" not in str(refused.value)


def test_a_state_must_be_a_state():
    with pytest.raises(ConfigError, match="state_dict"):
        resume_point(["not", "a", "state"], IDENTITY, SHARD)


# ---- the decoding cost --------------------------------------------------------------------------

DATASETS = {"h264": dict(codec="h264", bframes=2, open_gop=True)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """3 clips x 2 cameras x 30 frames in GOPs of 10; reference frames from PyAV."""
    return store_factory(tmp_path_factory, DATASETS, clips=3, cameras=2, frames=30, width=160,
                         height=96, gop=10)


def lane_steps(source: GopSource, epochs):
    """((slot, camera), video, SlotStep) of every stream step, in order."""
    for epoch in epochs:
        for spec_position, spec in enumerate(source.samples(epoch)):
            for camera in source.dataset.cameras:
                step = source.windows.step(epoch, spec_position, camera)
                if step is not None:
                    yield (spec.slot, camera), f"{spec.clip}/{camera}", step


@pytest.mark.parametrize("pattern", [StreamPattern(), SequencePattern(3, stride=2)], ids=repr)
@pytest.mark.parametrize("skip", [1, 4, 7])
@pytest.mark.parametrize("lead", [0, 5, 30])
def test_resuming_decodes_at_most_one_gop_per_stream_slot_and_no_replay(stores, pattern, skip,
                                                                        lead):
    """What a resumed source plans for the rest of the epoch and the next, against the
    uninterrupted run's plans: only the samples left are read; each stream slot's first step
    restarts it; every GOP a slot is sent is one it picks from later (no decoding for the batches
    before the resume point but the frames of the GOP each slot was part way through: one GOP
    per slot and camera); and it decodes no more than the uninterrupted run does from the resume
    point on plus what that run's slots held there (decoded ahead before it)."""
    gop_root, _ = stores("h264")
    dataset = Dataset.open(gop_root)
    options = dict(batch_size=2, stream_lead=lead)
    whole = GopSource(dataset, Resumed(pattern, 1), **options)
    source = GopSource(dataset, Resumed(pattern, 1, skip), **options)
    assert source.samples(0) == whole.samples(0)[skip * 2:]
    assert source.samples(1) == whole.samples(1)

    # far enough on that every GOP sent in epochs 0-1 is picked (a lead of 30 spans epochs)
    walks: dict = {}
    for lane, video, step in lane_steps(source, range(6)):
        walks.setdefault(lane, []).append(((video, step.gop, step.generation), step))
    assert walks, "no stream step"
    horizon = sum(len(source.samples(e)) for e in range(2)) // 2
    resumed_sends = Counter()
    for lane, walk in walks.items():
        assert walk[0][1].restart, "a resumed slot's first step must restart it"
        for i, (_, step) in enumerate(walk[:horizon]):
            resumed_sends.update((lane, gop) for gop in step.sends)
            for gop in step.sends:
                assert any(later == gop for later, _ in walk[i:]), \
                    f"slot {lane}: {gop} sent, never picked after"

    # the uninterrupted run, kept GOPs replayed as the decoders keep them
    kept: dict = {}
    held = Counter()            # what the slots kept when they reached it
    uninterrupted_sends = Counter()
    count = {lane: 0 for lane in walks}
    for epoch in range(2):
        for position, spec in enumerate(whole.samples(epoch)):
            resumed = epoch > 0 or position >= skip * 2
            for camera in dataset.cameras:
                step = whole.windows.step(epoch, position, camera)
                if step is None:
                    continue
                lane = (spec.slot, camera)
                if resumed and lane in count and count[lane] == 0:
                    held.update((lane, gop) for gop in kept.get(lane, ()))
                if resumed and lane in count:
                    if count[lane] < len(walks[lane][:horizon]):
                        uninterrupted_sends.update((lane, gop) for gop in step.sends)
                    count[lane] += 1
                lane_kept = kept.setdefault(lane, set())
                if step.restart:
                    lane_kept.clear()
                lane_kept.update(step.sends)
                if step.release:
                    lane_kept.discard((f"{spec.clip}/{camera}", step.gop, step.generation))
    assert not resumed_sends - (uninterrupted_sends + held), "decoded more than the run needs"
    # what the resumed run decodes of the slot's current GOP before the resume point is all it
    # wastes: every GOP it decodes serves a later batch
    assert all(gop in [g for g, _ in walks[lane]] for lane, gop in held)


# ---- whole runs on the cpu backend --------------------------------------------------------------

RUN_PATTERNS = list(CHILD_PATTERNS)


def records(loader, rank: int, epoch: int, first: int, batches) -> list[dict]:
    out = []
    for i, values in enumerate(batches):
        out.append({"rank": rank, "epoch": epoch, "batch": first + i,
                    "clip": values["clip"].tolist(), "frame_idx": values["frame_idx"].tolist(),
                    "frames": hashlib.sha1(values["frames"].numpy().tobytes()).hexdigest()})
    return out


def make(gop_root, pattern: str, num_shards: int, rank: int, **options):
    return cpu_loader(gop_root, pattern=CHILD_PATTERNS[pattern], num_workers=1, shard_id=rank,
                      num_shards=num_shards, seed=5, **options)


_uninterrupted: dict = {}


def uninterrupted(gop_root, pattern: str, num_shards: int) -> list[dict]:
    """Every rank's batches of epochs 0-2, run without a stop (what resume_child.py prints)."""
    if (pattern, num_shards) not in _uninterrupted:
        out = []
        for rank in range(num_shards):
            with make(gop_root, pattern, num_shards, rank) as loader:
                for epoch in range(3):
                    out += records(loader, rank, epoch, 0, loader)
        _uninterrupted[pattern, num_shards] = out
    return _uninterrupted[pattern, num_shards]


def after(reference: list[dict], epoch: int, batches: int) -> list[dict]:
    return [r for r in reference if (r["epoch"], r["batch"]) >= (epoch, batches)]


def by_rank(rs: list[dict]) -> list[tuple]:
    return sorted((r["rank"], r["epoch"], r["batch"], str(r)) for r in rs)


@pytest.mark.slow
@pytest.mark.parametrize("pattern", RUN_PATTERNS)
@pytest.mark.parametrize("num_shards", [1, 2])
def test_break_then_resume_in_new_loaders_delivers_the_rest_exactly(stores, pattern, num_shards):
    """A plain ``break`` at a random batch of epoch 1, rank 0's state through JSON, new loaders
    on every rank from it: the rest of epoch 1 and epoch 2 are the uninterrupted run's, batch for
    batch (indices and frames), and every frame is PyAV's."""
    gop_root, reference = stores("h264")
    rgb = {video: decoded["rgb24"] for video, decoded in reference.items()}
    whole = uninterrupted(gop_root, pattern, num_shards)
    length = max(r["batch"] for r in whole if r["epoch"] == 1) + 1
    stop = random.Random(f"{pattern}{num_shards}").randrange(1, length - 1)
    loaders = [make(gop_root, pattern, num_shards, rank) for rank in range(num_shards)]
    for loader in loaders:
        for _ in loader:     # a break in epoch 0: the next for is epoch 1
            break
        for i, _ in enumerate(loader):
            if i + 1 == stop:
                break
    saved = json.loads(json.dumps(loaders[0].state_dict()))
    assert (saved["epoch"], saved["batches"]) == (1, stop)
    for loader in loaders:
        loader.close()
    got = []
    for rank in range(num_shards):
        with make(gop_root, pattern, num_shards, rank, state=saved) as loader:
            assert loader.epoch == 1 and loader.state_dict()["batches"] == stop
            for epoch, first in ((1, stop), (2, 0)):
                batches = list(loader)
                for values in batches:
                    check_batch(values, loader, rgb)
                got += records(loader, rank, epoch, first, batches)
            assert loader.epoch == 3
    assert by_rank(got) == by_rank(after(whole, 1, stop))


def test_load_state_dict_moves_a_loader_there(stores):
    gop_root, _ = stores("h264")
    whole = uninterrupted(gop_root, "stream", 1)
    with make(gop_root, "stream", 1, 0) as loader:
        first = records(loader, 0, 0, 0, [next(iter(loader))])
        assert first == whole[:1]
        here = loader.state_dict()
        loader.load_state_dict(dict(here, epoch=1, batches=30))
        assert records(loader, 0, 1, 30, loader) == after(whole, 1, 30)[:len(loader) - 30]
        assert loader.state_dict()["epoch"] == 2 and len(loader) == 45
        with pytest.raises(ConfigError, match="another seed"):
            loader.load_state_dict(dict(here, seed=1))
        loader.load_state_dict(here)
        assert records(loader, 0, 0, 1, [next(iter(loader))]) == whole[1:2]


def test_a_state_from_another_dataset_is_refused_before_any_work(stores):
    gop_root, _ = stores("h264")
    with make(gop_root, "stream", 1, 0) as loader:
        saved = loader.state_dict()
    with pytest.raises(ConfigError, match="another dataset"):
        make(gop_root, "stream", 1, 0, cameras=["cam0.mp4"], state=saved)
    with pytest.raises(ConfigError, match="another access pattern"):
        make(gop_root, "random", 1, 0, state=saved)


@pytest.mark.slow
@pytest.mark.parametrize("pattern, policy", [("stream", "PARTIAL"), ("random", "FILL"),
                                             ("sequence", "DROP")])
def test_resumed_at_another_number_of_ranks_the_rest_comes_once(stores, pattern, policy):
    """Saved at 2 ranks after 3 batches each, resumed at 3 ranks and at 1: what the new ranks
    deliver and what the old ones had delivered make up the epoch, each sample once (DROP: what
    it drops excepted), every frame PyAV's; the next epoch is the new rank count's own."""
    gop_root, reference = stores("h264")
    rgb = {video: decoded["rgb24"] for video, decoded in reference.items()}

    def keys(batches) -> list[tuple]:
        return [(int(c), tuple(f)) for values in batches
                for c, f in zip(values["clip"], values["frame_idx"].tolist())]

    def epoch_of(num_shards) -> Counter:
        total = Counter()
        for rank in range(num_shards):
            with make(gop_root, pattern, num_shards, rank, last_batch_policy=policy) as loader:
                total.update(keys(loader))
        return total

    whole = epoch_of(2)
    done = Counter()
    for rank in range(2):
        with make(gop_root, pattern, 2, rank, last_batch_policy=policy) as loader:
            done.update(keys(b for _, b in zip(range(3), loader)))
            saved = loader.state_dict()
    for num_shards in (3, 1):
        rest, next_epoch = Counter(), []
        for rank in range(num_shards):
            with make(gop_root, pattern, num_shards, rank, last_batch_policy=policy,
                      state=saved) as loader:
                # a rank left nothing of the epoch starts at the next one
                batches = list(loader) if loader.epoch == 0 else []
                assert loader.epoch == 1
                for values in batches:
                    check_batch(values, loader, rgb)
                rest.update(keys(batches))
                next_epoch.append(keys(loader))
        assert not (done + rest) - whole, "a sample delivered twice, or not of the epoch"
        if policy == "DROP":
            assert sum((whole - done - rest).values()) < 2 * num_shards
        else:
            assert done + rest == whole
        fresh = []
        for rank in range(num_shards):
            with make(gop_root, pattern, num_shards, rank, last_batch_policy=policy) as loader:
                list(loader)
                fresh.append(keys(loader))
        assert next_epoch == fresh


@pytest.mark.slow
def test_resharded_twice_in_one_epoch(stores):
    """2 ranks deliver 3 batches each, 3 ranks from rank 0's state 2 more each, 1 rank from
    their rank 2's state the rest: the epoch once, frames PyAV's."""
    gop_root, reference = stores("h264")
    rgb = {video: decoded["rgb24"] for video, decoded in reference.items()}

    def keys(batches) -> list[tuple]:
        return [(int(c), int(f[0])) for values in batches
                for c, f in zip(values["clip"], values["frame_idx"].tolist())]

    delivered, state, saved = Counter(), None, []
    for num_shards, batches in ((2, 3), (3, 2), (1, None)):
        states = []
        for rank in range(num_shards):
            with make(gop_root, "stream", num_shards, rank, state=state) as loader:
                taken = list(loader) if batches is None else \
                    [b for _, b in zip(range(batches), loader)]
                for values in taken:
                    check_batch(values, loader, rgb)
                delivered.update(keys(taken))
                states.append(loader.state_dict())
        state = states[-1]
        saved.append(state)
    assert [(s["epoch"], s["batches"], s["resharded"]) for s in saved] == \
        [(0, 3, []), (0, 2, [[2, 2, 3]]), (1, 0, [])]
    assert delivered == Counter((c, f) for c in range(3) for f in range(30))


@pytest.mark.slow
@pytest.mark.parametrize("pattern", RUN_PATTERNS)
@pytest.mark.parametrize("num_shards", [1, 2])
@pytest.mark.parametrize("backend", ["cpu", pytest.param("nvdec", marks=pytest.mark.gpu)])
def test_sigkill_then_resume_in_a_new_process_delivers_the_rest_exactly(stores, tmp_path,
                                                                       pattern, num_shards,
                                                                       backend):
    """The training process killed (SIGKILL) at a random batch of epoch 1, a new process resumed
    from its last checkpoint: what the two printed up to the checkpoint and from it on is the
    uninterrupted run, batch for batch, frames bit-exact (nvdec: against its own uninterrupted
    run, in a process of its own)."""
    gop_root, _ = stores("h264")
    state_file = tmp_path / "state.json"
    command = [sys.executable, str(CHILD), str(gop_root), pattern, str(num_shards),
               str(state_file), "3"]
    env = {**os.environ, "RESUME_BACKEND": backend}
    if backend == "cpu":
        whole = uninterrupted(gop_root, pattern, num_shards)
    else:
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        whole = [json.loads(line) for line in run.stdout.splitlines()]
    length = max(r["batch"] for r in whole if r["epoch"] == 1) + 1
    stop = random.Random(f"kill{pattern}{num_shards}").randrange(1, length - 1)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
                                 text=True, env=env)
    printed = []
    try:
        for line in first.stdout:
            printed.append(json.loads(line))
            if (printed[-1]["epoch"], printed[-1]["batch"]) == (1, stop):
                first.send_signal(signal.SIGKILL)
                break
    finally:
        first.kill()
        # what it printed after the line that triggered the kill (a line cut short: ignored)
        printed += [json.loads(line) for line in first.stdout.read().splitlines(keepends=True)
                    if line.endswith("\n")]
        first.wait(timeout=60)
    err = log.read_text()
    assert first.returncode == -signal.SIGKILL, err[-2000:]
    saved = json.loads(state_file.read_text())
    at = (saved["epoch"], saved["batches"])
    assert (1, stop) <= at, "the checkpoint of the last batch printed is older than it"
    resumed = subprocess.run(command + ["resume"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rest = [json.loads(line) for line in resumed.stdout.splitlines()]
    before = [r for r in printed if (r["epoch"], r["batch"]) < at]
    assert by_rank(before + rest) == by_rank(whole)


# ---- the training example ----------------------------------------------------------------------

def train_example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.train_example", "--backend", "cpu",
                           "--num_workers", "1", "--group_num", "2", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_training_example_checkpoints_and_resumes(stores, tmp_path):
    gop_root, _ = stores("h264")
    checkpoint = tmp_path / "run.pt"
    first = train_example("--gop_base_path", str(gop_root), "--epochs", "1", "--checkpoint",
                          str(checkpoint), "--checkpoint_every", "7")
    assert first.returncode == 0, first.stderr[-2000:]
    import torch
    saved = torch.load(checkpoint)
    assert saved["step"] == 45 and set(saved) == {"model", "optimizer", "loader", "step"}
    assert (saved["loader"]["epoch"], saved["loader"]["batches"]) == (1, 0)
    # a checkpoint from the middle of an epoch: the run goes on with its next batch
    middle = dict(saved, step=30, loader=dict(saved["loader"], epoch=0, batches=30))
    torch.save(middle, checkpoint)
    second = train_example("--gop_base_path", str(gop_root), "--epochs", "2", "--resume",
                           str(checkpoint), "--checkpoint", str(checkpoint))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed at epoch 0 step 30" in second.stdout
    assert "epoch 0: 15 steps" in second.stdout and "epoch 1: 45 steps" in second.stdout
    assert torch.load(checkpoint)["step"] == 30 + 15 + 45
    other = train_example("--gop_base_path", str(gop_root), "--pattern", "random", "--resume",
                          str(checkpoint))
    assert other.returncode == 2
    assert other.stderr.count("\n") == 1 and "another access pattern" in other.stderr
    missing = train_example("--gop_base_path", str(gop_root), "--resume", str(tmp_path / "no"))
    assert missing.returncode == 2 and "no such checkpoint" in missing.stderr


@pytest.mark.slow
def test_the_training_example_stops_when_preprocessing_failed(stores, tmp_path):
    import shutil
    gop_root, _ = stores("h264")
    videos = tmp_path / "videos"
    shutil.copytree(gop_root.parent / "videos", videos)
    next(videos.rglob("*.mp4")).write_bytes(b"not a video")
    run = train_example("--video_base_path", str(videos), "--gop_base_path",
                        str(tmp_path / "gops"))
    assert run.returncode == 2
    # preprocessing's own report (progress, the FAILED line) and one line saying it stops
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m pipelines.train_example: error: preprocessing ")
    assert "1 video(s) failed" in last and "Traceback" not in run.stderr
    assert "epoch 0" not in run.stdout


# ---- nvdec --------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("pattern", ["stream", "random", "sequence"])
def test_nvdec_resumed_run_delivers_the_rest_exactly(stores, loaders, pattern):
    """On the GPU: stopped at batch 7 of epoch 1 and resumed in a new loader, stream slots
    restarting their decoders from the right GOP and decode_ahead starting afresh; the rest
    equals the uninterrupted nvdec run, frames identical."""
    import torch
    gop_root, _ = stores("h264")

    def make_gpu(**options):
        return loaders(gop_root, CHILD_PATTERNS[pattern], backend="nvdec", batch_size=2,
                       num_workers=1, shard_id=0, num_shards=1, seed=5, **options)

    def take(batches):
        return [(values["clip"].tolist(), values["frame_idx"].tolist(),
                 values["frames"].cpu()) for values in batches]

    whole = make_gpu()
    take(whole)
    expected = take(whole)[7:] + take(whole)
    stopped = make_gpu()
    for _ in stopped:
        break
    for i, _ in enumerate(stopped):
        if i == 6:
            break
    saved = json.loads(json.dumps(stopped.state_dict()))
    assert (saved["epoch"], saved["batches"]) == (1, 7)
    stopped.close()
    resumed = make_gpu(state=saved)
    got = take(resumed) + take(resumed)
    assert len(got) == len(expected)
    for (clips, frames, pixels), (want_clips, want_frames, want_pixels) in zip(got, expected):
        assert (clips, frames) == (want_clips, want_frames)
        assert torch.equal(pixels, want_pixels)
