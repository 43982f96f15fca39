"""The nvdec backend on the GPU: exact frames, every pattern, no leaks, errors that surface.

Skipped without an NVIDIA GPU (see conftest.py). On the GPU machine: ``python -m pytest -m gpu``.
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from dali_gop import SequencePattern
from conftest import gpu_epoch_difference, store_factory

pytestmark = pytest.mark.gpu

# NVDEC's RGB conversion vs FFmpeg's (swscale, BT.601 limited range): measured max 2 per channel
RGB_TOLERANCE_MAX = 3
RGB_TOLERANCE_MEAN = 1.0

DATASETS = {
    "h264": dict(codec="h264"),
    "h264-bframes-open-gop": dict(codec="h264", bframes=3, open_gop=True),
    "hevc": dict(codec="hevc"),
    "hevc-bframes": dict(codec="hevc", bframes=3),
    "hevc-bframes-open-gop": dict(codec="hevc", bframes=3, open_gop=True),
    "hevc-open-gop-no-b": dict(codec="hevc", open_gop=True),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """name -> (gop_root, {video: {"yuv420p": frames, "rgb24": frames}})"""
    return store_factory(tmp_path_factory, DATASETS, ("yuv420p", "rgb24"), clips=3, cameras=3,
                         frames=36, width=320, height=192, gop=12)


@pytest.mark.parametrize("name", DATASETS)
def test_nvdec_planes_are_bit_exact(stores, name):
    """Before colour conversion NVDEC must give FFmpeg's YUV planes exactly, for every bin."""
    import torch

    from dali_gop.backends._nvdec import create_decoder, decode_calls
    from dali_gop._store import GopStore
    gop_root, reference = stores(name)
    store = GopStore(gop_root)
    stream = torch.cuda.Stream()
    for rel, decoded in reference.items():
        yuv = decoded["yuv420p"]
        index = store.index(rel)
        decoder = create_decoder(index.codec, stream.cuda_stream, 0, rgb=False)
        h, w = index.height, index.width
        for gop in index.gops:
            read = store.read([(rel, [gop.end - 1])])
            got = []
            with torch.cuda.stream(stream):
                decode_calls(decoder, read.data, read.plan.segments[0],
                             lambda first, frames: got.extend(torch.from_dlpack(frame).cpu().numpy()
                                                              for frame in frames))
            assert len(got) >= gop.count
            for position, image in enumerate(got[:gop.count]):
                k = gop.start + position
                expected = yuv[k]
                u = expected[h:h + h // 4].reshape(h // 2, w // 2)
                v = expected[h + h // 4:].reshape(h // 2, w // 2)
                assert np.array_equal(image[:h], expected[:h]), f"{rel} frame {k}: Y differs"
                assert np.array_equal(image[h:, 0::2], u), f"{rel} frame {k}: U differs"
                assert np.array_equal(image[h:, 1::2], v), f"{rel} frame {k}: V differs"


PATTERNS = [("stream", {}), ("random", {}), (SequencePattern(3, stride=2), {}),
            (SequencePattern(4, random_starts=True), {})]


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("pattern, options", PATTERNS)
def test_nvdec_loader_delivers_the_source_frames(loaders, stores, name, pattern, options):
    gop_root, reference = stores(name)
    loader = loaders(gop_root, pattern=pattern, backend="nvdec", batch_size=3, num_workers=2,
                     shard_id=0, num_shards=1, **options)
    seen, worst = gpu_epoch_difference(
        loader, reference, lambda decoded, k: decoded["rgb24"][k],
        lambda diff: diff.max() <= RGB_TOLERANCE_MAX and diff.mean() <= RGB_TOLERANCE_MEAN)
    print(f"{name} {pattern} {options}: {seen} samples, worst RGB difference {worst}")


def own_stream_sessions(monkeypatch):
    """Stream slots on sessions of their own (dali_gop.backends._stream_sessions) for the loaders
    made from here on, as a memory budget chooses them where kept GOPs do not fit."""
    from dali_gop.backends._nvdec import NvdecBackend
    monkeypatch.setattr(NvdecBackend, "stream_sessions", True)
    return dict(memory_budget=None)


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("at_once", [True, False], ids=["pairs-at-once", "a-pair-per-call"])
def test_stream_slots_on_sessions_of_their_own_deliver_the_source_frames(loaders, stores, name,
                                                                        at_once, monkeypatch):
    """Exact frames whichever way a thread feeds its pairs (``STREAM_AT_ONCE``: one library call
    for all of them, their surfaces given back after one sync; or a call per pair)."""
    from dali_gop.backends import _nvdec
    monkeypatch.setattr(_nvdec, "STREAM_AT_ONCE", at_once)
    gop_root, reference = stores(name)
    loader = loaders(gop_root, pattern="stream", backend="nvdec", batch_size=3, num_workers=2,
                     shard_id=0, num_shards=1, **own_stream_sessions(monkeypatch))
    assert loader.settings["stream_sessions"] and loader.settings["stream_decoding"]
    seen, worst = gpu_epoch_difference(
        loader, reference, lambda decoded, k: decoded["rgb24"][k],
        lambda diff: diff.max() <= RGB_TOLERANCE_MAX and diff.mean() <= RGB_TOLERANCE_MEAN)
    operator = loader.decode_operators[0]
    assert len(operator.pairs) == 3 * len(loader.cameras)
    assert operator.memory().get("kept_gops", {"peak": 0})["peak"] == 0
    again = sum(pair.decoded_again for pair in operator.pairs.values())
    print(f"{name} stream, own sessions, at once {at_once}: {seen} samples, worst RGB "
          f"difference {worst}, "
          f"rings {operator.memory().get('stream_rings')}, GOPs decoded again {again}")


@pytest.mark.parametrize("name", DATASETS)
def test_stream_slots_with_gops_on_the_host_deliver_the_source_frames(loaders, stores, name,
                                                                      monkeypatch):
    """GOPs kept in pinned host memory (``kept_gops="host"``, each batch's picks copied to the
    device) give the source's frames, and the loader's memory says they lay on the host."""
    from dali_gop.backends._nvdec import NvdecBackend
    monkeypatch.setattr(NvdecBackend, "kept_gops", "host")
    gop_root, reference = stores(name)
    loader = loaders(gop_root, pattern="stream", backend="nvdec", batch_size=3, num_workers=2,
                     shard_id=0, num_shards=1, memory_budget=None)
    assert loader.settings["kept_gops"] == "host"
    seen, worst = gpu_epoch_difference(
        loader, reference, lambda decoded, k: decoded["rgb24"][k],
        lambda diff: diff.max() <= RGB_TOLERANCE_MAX and diff.mean() <= RGB_TOLERANCE_MEAN)
    memory = loader.decode_operators[0].memory()
    assert memory["kept_gops_host"]["peak"] > 0 and "kept_gops" not in memory
    print(f"{name} stream, GOPs on the host: {seen} samples, worst RGB difference {worst}, "
          f"kept {memory['kept_gops_host']}")


@pytest.mark.parametrize("name", ["hevc-bframes-open-gop", "h264-bframes-open-gop"])
@pytest.mark.parametrize("own", [False, True], ids=["kept-gops", "own-stream-sessions"])
def test_stream_decoding_equals_decoding_from_the_gop_start(loaders, stores, name, own,
                                                            monkeypatch):
    gop_root, _ = stores(name)
    sessions = own_stream_sessions(monkeypatch) if own else {}
    epochs = []
    for stream_decoding in (True, False):
        loader = loaders(gop_root, pattern="stream", backend="nvdec", batch_size=3,
                         num_workers=2, shard_id=0, num_shards=1, stream_decoding=stream_decoding,
                         **(sessions if stream_decoding else {}))
        # three epochs: stream slots carry GOPs sent ahead across the epoch boundaries
        epochs.append([b["frames"].cpu().numpy() for _ in range(3) for b in loader])
    assert len(epochs[0]) == len(epochs[1])
    for a, b in zip(*epochs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["hevc-bframes-open-gop", "h264-bframes-open-gop"])
@pytest.mark.parametrize("pattern, kept", [("stream", "device"), ("stream", "host"),
                                           ("random", None), (SequencePattern(4, stride=2), None)],
                         ids=["stream", "stream-gops-on-the-host", "random", "sequence"])
def test_frames_given_back_late_are_the_frames_given_back_at_once(loaders, stores, name, pattern,
                                                                   kept, monkeypatch):
    """Our sessions' late unmap (``UNMAP_LATE``: a frame's surface goes back at the next map, so
    the parser queues pictures while its copies run) gives the eager path's frames bit for bit,
    over epochs whose stream slots carry GOPs across their boundaries."""
    from dali_gop.backends import _nvdec_session
    from dali_gop.backends._nvdec import NvdecBackend
    gop_root, _ = stores(name)
    if kept:
        monkeypatch.setattr(NvdecBackend, "kept_gops", kept)
    epochs = []
    for late in (False, True):
        monkeypatch.setattr(_nvdec_session, "UNMAP_LATE", late)
        loader = loaders(gop_root, pattern=pattern, backend="nvdec", batch_size=3, num_workers=2,
                         shard_id=0, num_shards=1, memory_budget=None, seed=5)
        epochs.append([b["frames"].cpu().numpy() for _ in range(2) for b in loader])
    assert len(epochs[0]) == len(epochs[1]) > 0
    for k, (a, b) in enumerate(zip(*epochs)):
        assert np.array_equal(a, b), f"{name} {pattern}: batch {k} differs with UNMAP_LATE"


def test_bgr_is_rgb_reversed_on_the_gpu(loaders, stores):
    gop_root, _ = stores("hevc")
    rgb, bgr = (next(iter(loaders(gop_root, pattern="random", backend="nvdec", batch_size=3,
                                  num_workers=2, color=color, shard_id=0, num_shards=1, seed=3)))
                for color in ("RGB", "BGR"))
    assert np.array_equal(rgb["frames"].flip(-1).cpu().numpy(), bgr["frames"].cpu().numpy())


@pytest.mark.parametrize("pattern, own", [("stream", False), ("random", False), ("stream", True)],
                         ids=["stream", "random", "stream-own-sessions"])
def test_no_leaks_over_ten_epochs(loaders, stores, pattern, own, monkeypatch):
    import torch

    sessions = own_stream_sessions(monkeypatch) if own else {}
    gop_root, _ = stores("hevc-bframes")
    # 4 threads: every thread has made its decoder within the first epoch
    loader = loaders(gop_root, pattern=pattern, backend="nvdec", batch_size=3, num_workers=2,
                     shard_id=0, num_shards=1, decode_threads=4, **sessions)
    operator = loader.decode_operators[0]
    readings = []
    for epoch in range(10):
        for _ in loader:
            pass
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        # kept GOPs: the slots already hold the next epoch's first GOPs (windows span epochs)
        readings.append((operator.decoder_count(), operator.kept.count(), total - free))
    print(f"{pattern}: decoders, kept GOPs and device memory in use per epoch: {readings}")
    assert len({count for count, _, _ in readings[1:]}) == 1, "decoder sessions grow"
    # at most what the slots' windows hold: slots x cameras x (GOPs within the lead, + 2)
    bound = 3 * len(loader.cameras) * (-(-30 // 12) + 2)
    assert max(kept for _, kept, _ in readings) <= bound, "kept GOPs grow"
    used = [memory for *_, memory in readings[1:]]
    assert max(used) - min(used) < 64 * 2**20, "device memory grows"
    loader.close()
    assert operator.decoder_count() == 0 and operator.kept.count() == 0


def test_a_corrupt_bin_is_a_python_error_not_a_hang(loaders, stores, tmp_path):
    gop_root, _ = stores("hevc")
    copy = tmp_path / "gops"
    shutil.copytree(gop_root, copy)
    victim = next(copy.rglob("gop.12.12.bin"))
    garbage = np.random.default_rng(0).integers(0, 256, victim.stat().st_size, dtype=np.uint8)
    victim.write_bytes(garbage.tobytes())    # same size: only decoding can tell
    loader = loaders(copy, pattern="stream", backend="nvdec", batch_size=3, num_workers=2,
                     shard_id=0, num_shards=1)
    started = time.monotonic()
    with pytest.raises(Exception, match="gop.12.12.bin"):
        for _ in loader:
            pass
    assert time.monotonic() - started < 60
