"""What the iterator hands out over whole epochs: every frame (window) of every clip once per
epoch across all ranks under PARTIAL and FILL, equal whole batches under DROP, and the frames
themselves equal to PyAV's decode where sequence windows cross GOP boundaries (x265's open
25-frame GOPs with leading pictures)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dali_gop._dataset import Dataset
from dali_gop._source import GopSource
from dali_gop.patterns import SequencePattern, StreamPattern
from conftest import check_batch, cpu_loader, store_factory
from test_patterns import delivered

POLICIES = ("PARTIAL", "FILL", "DROP")


def frames_of(clips: dict[str, int], pattern) -> set[tuple[str, int]]:
    """(clip, first frame) of every sample an epoch should hold: each frame, or each window."""
    span = pattern.span if isinstance(pattern, SequencePattern) else 1
    return {(c, k * span) for c, n in clips.items() for k in range(n // span)}


def served(source: GopSource, epoch: int) -> list:
    """The samples DALI's iterator hands out of the source's epoch, given its size and policy."""
    return delivered(source.samples(epoch), source.shard_size(epoch), source.batch_size,
                     source.last_batch_policy)


@pytest.mark.parametrize("clips", [{"one": 250}, {"a": 250, "b": 97, "c": 13}], ids=len)
@pytest.mark.parametrize("pattern", [StreamPattern(), SequencePattern(4, stride=2)], ids=repr)
@pytest.mark.parametrize("num_shards", [1, 2])
@pytest.mark.parametrize("policy", POLICIES)
def test_every_frame_once_per_epoch_across_ranks(clips, pattern, num_shards, policy):
    """Issue 13.2: with 250 frames and a batch of 4 the stream pattern never served frames 248
    and 249. Now PARTIAL and FILL serve each frame (window) once per epoch over all ranks (FILL's
    fillers marked pad), and DROP gives all ranks the same whole batches."""
    dataset = Dataset("", clips, ("cam.mp4",))
    sources = [GopSource(dataset, pattern, batch_size=4, shard_id=r, num_shards=num_shards,
                         last_batch_policy=policy) for r in range(num_shards)]
    everything = frames_of(clips, pattern)
    for epoch in range(3):
        per_rank = [served(s, epoch) for s in sources]
        batches = [-(-len(samples) // 4) for samples in per_rank]
        real = Counter((s.clip, s.frames[0]) for samples in per_rank for s in samples
                       if not s.pad)
        assert max(real.values()) == 1, "a frame served twice in one epoch"
        if policy == "DROP":
            assert all(len(samples) % 4 == 0 for samples in per_rank)
            assert len(set(batches)) == 1, "every rank the same whole batches"
            assert len(everything) - len(real) < 4 * num_shards
        else:
            assert set(real) == everything, f"epoch {epoch}: frames never served"
        if policy == "FILL":
            assert len(set(batches)) == 1 and all(len(s) % 4 == 0 for s in per_rank)
        if policy == "PARTIAL":
            assert max(batches) - min(batches) <= 1
            assert not any(s.pad for samples in per_rank for s in samples)


DATASETS = {"x265": dict(codec="hevc", bframes=4, open_gop=True)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two clips of 101 frames (GOPs 0, 25, 50, 75, 100), two cameras, leading pictures at every
    keyframe after the first; 144 rows, NVDEC's least for HEVC."""
    return store_factory(tmp_path_factory, DATASETS, clips=2, cameras=2, frames=101, width=160,
                         height=144, gop=25)


def run_epochs(loader, reference, epochs: int = 2) -> list[Counter]:
    """Per epoch, how often each (clip, frames) came; every frame checked against PyAV's."""
    seen = []
    for _ in range(epochs):
        counts = Counter()
        for batch in loader:
            check_batch(batch, loader, reference)
            for clip, frames in zip(batch["clip"].tolist(), batch["frame_idx"].tolist()):
                counts[(loader.clip_names[clip], tuple(frames))] += 1
        seen.append(counts)
    return seen


def rgb(reference):
    return {video: decoded["rgb24"] for video, decoded in reference.items()}


@pytest.mark.parametrize("pattern", [SequencePattern(4, stride=2), SequencePattern(4)], ids=repr)
@pytest.mark.parametrize("lead", [1, 30])
def test_cpu_loader_streams_windows_crossing_gops(stores, pattern, lead):
    """Issue 13.1 end to end: sequential windows of 4 (stride 2, and the README's stride 1)
    cross GOP boundaries mid-slot and at a slot's first step; the cpu backend keeps stream slots
    as nvdec does, and every frame it delivers is PyAV's, every window once per epoch."""
    gop_root, reference = stores("x265")
    loader = cpu_loader(gop_root, pattern=pattern, batch_size=4, stream_lead=lead)
    windows = {(clip, tuple(range(k * pattern.span, (k + 1) * pattern.span, pattern.stride)))
               for clip in loader.clip_names for k in range(101 // pattern.span)}
    for counts in run_epochs(loader, rgb(reference)):
        assert set(counts) == windows and set(counts.values()) == {1}


@pytest.mark.parametrize("num_shards, policy", [(1, "PARTIAL"), (2, "PARTIAL"), (2, "FILL"),
                                                (2, "DROP")])
def test_cpu_loader_serves_every_frame_once_per_epoch(stores, num_shards, policy):
    """Issue 13.2 end to end: 202 frames, batches of 4 on each of ``num_shards`` ranks: the
    iterator's counts follow the policy, and under PARTIAL and FILL the ranks together serve
    every frame once per epoch (FILL's fillers repeat the rank's first frames)."""
    gop_root, reference = stores("x265")
    loaders = [cpu_loader(gop_root, pattern="stream", batch_size=4, shard_id=r,
                          num_shards=num_shards, last_batch_policy=policy, stream_lead=5)
               for r in range(num_shards)]
    runs = [run_epochs(loader, rgb(reference)) for loader in loaders]
    frames = {(clip, (k,)) for clip in loaders[0].clip_names for k in range(101)}
    for epoch in range(2):
        per_rank = [run[epoch] for run in runs]
        counts = [sum(c.values()) for c in per_rank]
        total = sum(per_rank, Counter())
        if policy == "DROP":
            assert len(set(counts)) == 1 and counts[0] % 4 == 0 and max(total.values()) == 1
            assert len(frames) - len(total) < 4 * num_shards
            continue
        assert set(total) == frames, "a frame never served"
        if policy == "PARTIAL":
            assert set(total.values()) == {1} and sum(counts) == len(frames)
        else:
            assert len(set(counts)) == 1 and counts[0] % 4 == 0
    for loader in loaders:
        loader.close()


@pytest.mark.gpu
@pytest.mark.parametrize("pattern", [SequencePattern(4, stride=2), SequencePattern(4)], ids=repr)
@pytest.mark.parametrize("lead", [1, 30])
def test_nvdec_streams_windows_crossing_gops_as_it_decodes_them_plainly(loaders, stores, pattern,
                                                                        lead):
    """Issue 13.1 on NVDEC: the same windows with stream slots (and straddling windows decoded
    ahead between stream steps) and without, over three epochs, bit for bit."""
    gop_root, _ = stores("x265")
    runs = []
    for stream_decoding in (True, False):
        loader = loaders(gop_root, pattern=pattern, backend="nvdec", batch_size=4, num_workers=2,
                         shard_id=0, num_shards=1, stream_decoding=stream_decoding,
                         stream_lead=lead)
        runs.append([(b["clip"].tolist(), b["frame_idx"].tolist(), b["frames"].cpu().numpy())
                     for _ in range(3) for b in loader])
    assert len(runs[0]) == len(runs[1]) > 0
    for (clips, frames, a), (clips_b, frames_b, b) in zip(*runs):
        assert (clips, frames) == (clips_b, frames_b)
        assert np.array_equal(a, b), f"clips {clips}, frames {frames}"


@pytest.mark.gpu
def test_nvdec_names_a_video_it_cannot_decode(loaders, tmp_path_factory):
    """HEVC below NVDEC's minimum size: one line naming the bin, its size and the cpu backend, not
    the decoder library's own error."""
    gop_root, _ = store_factory(tmp_path_factory, {"small": dict(codec="hevc")}, clips=1,
                                cameras=1, frames=10, width=160, height=96, gop=5)("small")
    loader = loaders(gop_root, pattern="random", backend="nvdec", batch_size=1, num_workers=1,
                     shard_id=0, num_shards=1)
    with pytest.raises(Exception, match=r"gop\.\d+\.\d+\.bin: this GPU's NVDEC cannot decode hevc "
                                        r"at 160x96.*backend='cpu'"):
        next(iter(loader))
