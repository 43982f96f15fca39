"""The loader end to end on the CPU: DALI workers, the cpu backend, sharding, the iterator."""
from __future__ import annotations

import time

import numpy as np
import pytest

from dali_gop import format as fmt
from dali_gop.errors import ConfigError
from dali_gop.patterns import RandomPattern, SequencePattern, StreamPattern
from dali_gop._dataset import Dataset
from dali_gop._source import GopSource
from conftest import check_batch, cpu_loader, small_stores

pytest.importorskip("nvidia.dali")

DATASETS = {
    "h264-open-gop": dict(codec="h264", bframes=2, open_gop=True),
    "hevc-open-gop": dict(codec="hevc", bframes=2, open_gop=True),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return small_stores(tmp_path_factory, DATASETS)


loader_for = cpu_loader


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("pattern, options", [
    ("stream", {}),
    ("random", {}),
    (SequencePattern(3, stride=2), {}),
    (SequencePattern(4, random_starts=True), {}),
])
def test_cpu_loader_delivers_the_source_frames(stores, name, pattern, options):
    gop_root, reference = stores(name)
    loader = loader_for(gop_root, pattern=pattern, **options)
    rgb = {video: decoded["rgb24"] for video, decoded in reference.items()}
    for epoch in range(2):   # stream slots carry GOPs sent ahead across the epoch boundary
        seen = 0
        for batch in loader:
            check_batch(batch, loader, rgb)
            seen += batch["frames"].shape[0]
        assert seen == loader.source.shard_size(epoch)


def test_bgr_is_rgb_reversed(stores):
    gop_root, reference = stores("hevc-open-gop")
    rgb = next(iter(loader_for(gop_root, pattern="stream")))
    bgr = next(iter(loader_for(gop_root, pattern="stream", color="BGR")))
    assert np.array_equal(rgb["frames"].numpy()[..., ::-1], bgr["frames"].numpy())


def epoch_keys(loader):
    return [(int(c), tuple(f.tolist())) for batch in loader
            for c, f in zip(batch["clip"], batch["frame_idx"])]


def test_same_seed_same_batches_next_epoch_differs(stores):
    gop_root, _ = stores("h264-open-gop")
    first = loader_for(gop_root, pattern="random", seed=7)
    second = loader_for(gop_root, pattern="random", seed=7)
    epoch0 = epoch_keys(first)
    assert epoch0 == epoch_keys(second)
    assert epoch_keys(first) != epoch0


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4])
def test_ranks_see_disjoint_shards_covering_the_epoch(stores, num_shards):
    gop_root, _ = stores("h264-open-gop")
    per_rank = [epoch_keys(loader_for(gop_root, pattern="stream", batch_size=1, shard_id=r,
                                      num_shards=num_shards))
                for r in range(num_shards)]
    sizes = [len(keys) for keys in per_rank]
    # PARTIAL serves every frame, so ranks may be a batch apart (FILL and DROP even them out:
    # test_coverage.py)
    assert max(sizes) - min(sizes) <= 1
    everything = [k for keys in per_rank for k in keys]
    assert len(set(everything)) == len(everything), "shards overlap"
    assert len(everything) == 3 * 30, "every frame once"


def test_stream_order_is_the_seeds(stores):
    gop_root, _ = stores("h264-open-gop")
    loader = loader_for(gop_root, pattern="stream", batch_size=3)
    batches = [(batch["clip"].tolist(), batch["frame_idx"][:, 0].tolist()) for batch in loader]
    # three slots, one clip each (3 clips x 30 frames split into 3 chunks): batch i = frame i of each
    assert len(batches) == 30
    clips = batches[0][0]
    assert sorted(clips) == [0, 1, 2]
    for i, (batch_clips, frames) in enumerate(batches):
        assert batch_clips == clips and frames == [i, i, i]


@pytest.mark.parametrize("policy, expected", [("PARTIAL", [3, 3, 1]), ("FILL", [3, 3, 3]),
                                              ("DROP", [3, 3])])
def test_last_batch_policies(stores, policy, expected):
    gop_root, _ = stores("h264-open-gop")
    # 14 random samples over 2 ranks: 7 on rank 1, batches of 3 -> the last batch holds 1 sample
    loader = loader_for(gop_root, pattern=RandomPattern(samples_per_epoch=14), batch_size=3,
                        shard_id=1, num_shards=2, last_batch_policy=policy)
    assert loader.source.shard_size() == 7
    for epoch in range(2):
        batches = [(b["clip"].tolist(), b["frame_idx"][:, 0].tolist()) for b in loader]
        assert [len(clips) for clips, _ in batches] == expected, epoch
        keys = [k for clips, frames in batches for k in zip(clips, frames)]
        if policy == "FILL":
            assert keys[7:] == keys[:2], "FILL pads by wrapping to the epoch's start"
        assert len(loader) == len(expected)


def test_each_for_is_an_epoch_and_a_break_ends_it(stores):
    """As PyTorch's DataLoader: a ``for`` after a ``break`` is the next epoch, whole (before: the
    rest of the broken one). The stream pattern, so the pipeline rebuilt at the next epoch must
    also start its slots' decoders afresh: every frame is checked."""
    gop_root, reference = stores("hevc-open-gop")
    rgb = {video: decoded["rgb24"] for video, decoded in reference.items()}

    def keys(batches):
        return [(int(c), tuple(f.tolist())) for b in batches
                for c, f in zip(b["clip"], b["frame_idx"])]

    whole = loader_for(gop_root, pattern="stream", seed=4)
    epochs = [keys(whole) for _ in range(4)]
    whole.close()
    assert epochs[1] != epochs[0]
    loader = loader_for(gop_root, pattern="stream", seed=4)
    seen = []
    for i, batch in enumerate(loader):
        check_batch(batch, loader, rgb)
        seen.append(batch)
        if i == 4:
            break
    assert keys(seen) == epochs[0][:10] and loader.epoch == 0
    seen = []
    for batch in loader:
        check_batch(batch, loader, rgb)
        seen.append(batch)
    assert keys(seen) == epochs[1] and loader.epoch == 2
    # every batch taken but the end not seen (zip stops first): the next for is the next epoch
    assert keys(b for _, b in zip(range(len(loader)), loader)) == epochs[2]
    assert keys(loader) == epochs[3]
    loader.close()


def test_a_worker_error_reaches_the_loop_quickly(stores, tmp_path):
    import shutil
    gop_root, _ = stores("hevc-open-gop")
    copy = tmp_path / "gops"
    shutil.copytree(gop_root, copy)
    loader = loader_for(copy, pattern="random")
    victim = next(copy.rglob("gop.10.10.bin"))
    victim.unlink()   # deleted before (or while) the epoch runs
    started = time.monotonic()
    with pytest.raises(Exception, match="gop.10.10.bin"):
        for _ in range(3):
            for _ in loader:
                pass
    assert time.monotonic() - started < 30


def test_dataset_checks_cameras(stores):
    gop_root, _ = stores("h264-open-gop")
    with pytest.raises(ConfigError, match="cam9.mp4"):
        Dataset.open(gop_root, cameras=["cam0.mp4", "cam9.mp4"])


@pytest.mark.parametrize("queued_steps", [0, -1, 1.5, "2"])
def test_queued_steps_must_be_a_number_of_steps(stores, queued_steps):
    gop_root, _ = stores("h264-open-gop")
    with pytest.raises(ConfigError, match=r"queued_steps must be a number of steps \(1 or more\)"):
        cpu_loader(gop_root, queued_steps=queued_steps)


def test_queued_steps_leave_a_cpu_loader_as_it_was(stores):
    """The bound is on the caller's GPU queue: on the cpu backend there is none to wait for."""
    gop_root, _ = stores("h264-open-gop")
    with cpu_loader(gop_root, pattern="stream") as plain, \
            cpu_loader(gop_root, pattern="stream", queued_steps=1) as bounded:
        for a, b in zip(plain, bounded, strict=True):
            assert a["frame_idx"].tolist() == b["frame_idx"].tolist()
            assert np.array_equal(a["frames"].numpy(), b["frames"].numpy())


@pytest.mark.parametrize("batch_size,lead", [(3, 30), (3, 0), (5, 4), (4, 13)])
def test_stream_source_sends_each_gop_once_ahead_and_keeps_little(stores, batch_size, lead):
    """Replays the plans three epochs' workers make, back to back as DALI runs them, through the
    slots' bookkeeping: every pick finds its GOP, no GOP is sent while its slot still keeps it, each
    send comes exactly its slot's lead (``lead`` for slot 0, less for later ones: staggered) steps
    before the slot picks from it (from the slot's very first step on, also across epoch
    boundaries), and a slot keeps at most the GOPs its next ``lead`` steps need. (The worker never
    asks the decoder: all of this follows from the samples.)"""
    from dali_gop.backends._assemble import KeptGops
    from dali_gop.plan import Plan
    gop_root, _ = stores("hevc-open-gop")
    source = GopSource(Dataset.open(gop_root), StreamPattern(), batch_size=batch_size,
                       stream_lead=lead)
    gops = {(fmt.checksum(v.encode()), g.start): g for v in source.store.manifest().videos
            for g in source.store.index(v).gops}
    shortest = min(g.count for g in gops.values())
    kept = KeptGops()
    sends, picks = [], []     # (slot, camera, gop key, step number), in order
    step_number = 0
    for epoch in range(3):
        samples = source.samples(epoch)
        assert len(samples) % batch_size == 0
        for position in range(len(samples)):
            if position % batch_size == 0 and position:
                step_number += 1
            data, plan, *_ = source.read(position, epoch)
            plan = Plan.from_array(plan)
            for camera, request in enumerate(plan.requests):
                step = request.stream
                if step is None:
                    assert samples[position].pad
                    continue
                held = kept._kept.get((step.slot, camera), {}) if not step.restart else {}
                for send in step.sends:
                    key = (send.video_key, send.gop_start)
                    assert key not in held, "sent again while the slot still keeps it"
                    sends.append((step.slot, camera, key, step_number))
                    whole = gops[(send.video_key & 0xffffffff, send.gop_start)]
                    assert plan.segments[send.segment].num_outputs >= whole.count
                kept.step(camera, step, lambda send: send)     # raises if the GOP is not kept
                picks.append((step.slot, camera, (step.video_key, step.gop_start), step_number))
                per_slot = kept._kept[(step.slot, camera)]
                # +2: where a slot jumps to its next chunk, both chunk ends may be GOP parts
                assert len(per_slot) <= -(-lead // shortest) + 2
        step_number += 1
    restarts = {(slot, camera): 0 for slot, camera, *_ in picks}   # every slot starts at step 0
    ahead_checked = 0
    for slot, camera, key, sent_at in sends:
        later = [p[3] for p in picks if p[:3] == (slot, camera, key) and p[3] >= sent_at]
        if not later:
            # sent for the epoch after the last one replayed
            assert sent_at > step_number - 1 - lead - 1
            continue
        lead_of_slot = source.slot_lead(slot)
        assert later[0] - sent_at == min(lead_of_slot, later[0] - restarts[(slot, camera)])
        ahead_checked += 1
    assert ahead_checked > 0
    assert kept.count() > 0 or lead == 0, "the last epoch's steps already hold the next one's GOPs"


def test_a_seed_shaped_index_file_is_accepted(stores, tmp_path):
    import json
    gop_root, _ = stores("h264-open-gop")
    full = Dataset.open(gop_root)
    seed_index = tmp_path / "index.json"
    seed_index.write_text(json.dumps(fmt.read_manifest(gop_root).video_dirs))
    from_seed = Dataset.open(gop_root, index_file=seed_index)
    assert (from_seed.clips, from_seed.cameras) == (full.clips, full.cameras)
    assert Dataset.open(gop_root, index_file=seed_index, cameras=["cam1.mp4"]).cameras == ("cam1.mp4",)


def test_nvdec_without_a_gpu_says_so(stores, monkeypatch):
    import dali_gop.backends as backends
    monkeypatch.setattr(backends, "gpu_available", lambda: False)
    gop_root, _ = stores("h264-open-gop")
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
        loader_for(gop_root, backend="nvdec")
    assert backends.get_backend("auto").name == "cpu"


def test_a_dropped_loader_frees_its_pipeline_and_thread(stores):
    """Loaders made one after another (tests, restarts, a new loader per epoch) must not pile up
    pipelines, workers and decoders: the GPU run of the test suite ran out of decoder memory so."""
    import gc
    import weakref
    gop_root, _ = stores("h264-open-gop")

    loader = loader_for(gop_root, pattern="random")
    next(iter(loader))
    pipeline, thread = weakref.ref(loader.pipeline), loader._run._fetcher
    assert thread.is_alive()
    del loader
    deadline = time.monotonic() + 10
    while (thread.is_alive() or pipeline() is not None) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert not thread.is_alive(), "the helper thread outlived its loader"
    assert pipeline() is None, "the pipeline outlived its loader"


def test_the_kept_gop_bound_and_its_warning(stores):
    """Stream decoding keeps decoded GOPs on the GPU (NV12): the loader estimates them and warns,
    visibly by default, before they take half of the GPU."""
    import warnings
    from dali_gop._loader import _warn_if_kept_gops_crowd_the_gpu
    from dali_gop.plan import RELEASE_FRAMES
    gop_root, _ = stores("hevc-open-gop")
    dataset = Dataset.open(gop_root)
    source = GopSource(dataset, StreamPattern(), batch_size=3, stream_lead=30)
    clip = next(iter(dataset.clips))
    whole, at_lead_0, frame = 0, 0, 0
    for camera in dataset.cameras:
        index = source.store.index(f"{clip}/{camera}")
        counts = [g.count for g in index.gops]
        frame = index.width * index.height * 3 // 2
        whole += (-(-30 // min(counts[:-1])) + 2) * max(counts) * frame
        at_lead_0 += (max(counts) + RELEASE_FRAMES) * frame     # one GOP and a run let go
    assert source.kept_gop_bytes() == 3 * whole > 0      # a lead of GOPs: whole GOPs bound it
    assert source.kept_gop_bytes(0) == 3 * at_lead_0
    leads = [source.kept_gop_bytes(lead) for lead in range(0, 40)]
    assert leads == sorted(leads)
    assert GopSource(dataset, StreamPattern(), batch_size=3, stream_decoding=False).kept_gop_bytes() == 0
    from dali_gop.patterns import RandomPattern
    assert GopSource(dataset, RandomPattern(), batch_size=3).kept_gop_bytes() == 0
    with pytest.warns(UserWarning, match="stream_lead"):
        _warn_if_kept_gops_crowd_the_gpu(3 * 2**30, 0, total=4 * 2**30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_kept_gops_crowd_the_gpu(1 * 2**30, 0, total=4 * 2**30)


@pytest.mark.parametrize("lead", [0, 2, 30])
def test_memory_counts_what_the_loader_keeps(stores, lead):
    """loader.memory(): the cpu backend's stream slots keep decoded GOPs in host memory, within the
    loader's own estimate (made for NV12, half of the RGB the cpu backend keeps), over two epochs
    (the frames a slot has passed are let go); random access keeps none."""
    gop_root, _ = stores("hevc-open-gop")
    with cpu_loader(gop_root, pattern="stream", batch_size=3, stream_lead=lead) as loader:
        for _ in range(2):
            for _ in loader:
                pass
        kept = loader.memory()["kept_gops"]
        assert 0 <= kept["now"] <= kept["peak"] <= 2 * loader.source.kept_gop_bytes()
        assert kept["peak"] > 0
        operators = loader.decode_operators
    # closed: every kept GOP let go, the peak kept
    assert [operator.memory()["kept_gops"]["now"] for operator in operators] == [0]
    assert operators[0].memory()["kept_gops"]["peak"] == kept["peak"]
    with cpu_loader(gop_root, pattern="random") as loader:
        next(iter(loader))
        assert loader.memory().get("kept_gops", {"peak": 0})["peak"] == 0
