from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent


def resident_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (VmRSS in /proc/PID/status); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


class PeakSampler:
    """The highest value of ``read()`` seen, sampled every ``every`` seconds from a thread until
    :meth:`stop`."""

    def __init__(self, read: Callable[[], int], every: float):
        self._read, self._every = read, every
        self.peak = read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            time.sleep(self._every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._read())


def _has_gpu() -> bool:
    from dali_gop.backends import gpu_available
    if os.environ.get("DALI_GOP_NO_GPU"):
        return False
    return gpu_available() and importlib.util.find_spec("PyNvVideoCodec") is not None


HAS_GPU = _has_gpu()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with NVDEC and PyNvVideoCodec")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def video_cache(tmp_path_factory):
    """Encoded test videos, made once per session and keyed by their parameters."""
    from dali_gop.synthetic import make_video

    root = tmp_path_factory.mktemp("videos")
    made: dict[tuple, Path] = {}

    def get(name: str = "cam0.mp4", **params) -> Path:
        key = (name, tuple(sorted(params.items())))
        if key not in made:
            folder = root / f"v{len(made)}"
            folder.mkdir()
            made[key] = make_video(folder / name, **params)
        return made[key]

    return get


def build_store(root: Path, pixel_formats=("rgb24",), **dataset):
    """A synthetic dataset under root/videos, preprocessed into root/gops, and the reference decode
    of every video: returns (gop_root, {video: {pixel_format: frames}})."""
    from dali_gop.reference import decode_source
    from dali_gop.synthetic import make_dataset
    from preprocess.runner import preprocess

    make_dataset(root / "videos", workers=2, **dataset)
    summary = preprocess(root / "videos", root / "gops", workers=2, progress=False)
    assert not summary.failed, summary.format()
    reference = {path.relative_to(root / "videos").as_posix():
                 {fmt: decode_source(path, fmt) for fmt in pixel_formats}
                 for path in sorted((root / "videos").rglob("*.mp4"))}
    return root / "gops", reference


def store_factory(tmp_path_factory, datasets: dict, pixel_formats=("rgb24",), **shape):
    """Module fixtures' helper: name -> build_store of datasets[name] + shape, made once."""
    made = {}

    def get(name):
        if name not in made:
            made[name] = build_store(tmp_path_factory.mktemp(name), pixel_formats,
                                     **shape, **datasets[name])
        return made[name]

    return get


def small_stores(tmp_path_factory, datasets: dict):
    """The CPU tests' stores: 3 clips x 2 cameras x 30 frames of 160x96, GOP 10; name ->
    (gop_root, {video: {"rgb24": reference frames}})."""
    return store_factory(tmp_path_factory, datasets, clips=3, cameras=2, frames=30, width=160,
                         height=96, gop=10)


def cpu_loader(gop_root, **options):
    """A loader on the cpu backend, small batches, one shard: the CI-sized default."""
    from dali_gop import make_loader
    options = {"backend": "cpu", "batch_size": 2, "num_workers": 2, "shard_id": 0, "num_shards": 1,
               **options}
    return make_loader(gop_root, **options)


@pytest.fixture
def loaders():
    """``make_loader`` for one test: every loader it made is closed when the test ends (the GPU
    tests make dozens, and each holds its NVDEC sessions until closed)."""
    from dali_gop import make_loader
    made = []

    def make(*args, **options):
        made.append(make_loader(*args, **options))
        return made[-1]

    yield make
    for loader in made:
        loader.close()


def batch_difference(batch, loader, reference, expected, limit, region=(slice(None),)) -> int:
    """Every frame of a batch against ``expected(decoded, k)`` (``decoded``: the reference's frames
    of its video) over ``region``: ``limit(diff)`` holds and the frame is closer to its own source
    frame than to either neighbour; the worst difference."""
    import numpy as np
    worst = 0
    for _, _, video, k, frame in batch_frames(batch, loader):
        rgb = reference[video]["rgb24"]
        got = frame.astype(np.int16)
        diff = np.abs(got - expected(reference[video], k))[region]
        assert limit(diff), f"{video} frame {k}: max {diff.max()}, mean {diff.mean():.2f} " \
                            f"(from FFmpeg's rgb24: max {np.abs(got - rgb[k]).max()})"
        assert_closest_to_own_frame(got, rgb, k, video)
        worst = max(worst, int(diff.max()))
    return worst


def gpu_epoch_difference(loader, reference, expected, limit, region=(slice(None),)):
    """One epoch of a GPU loader through :func:`batch_difference`, every sample of the shard
    served: (samples, worst difference)."""
    seen = worst = 0
    for batch in loader:
        assert batch["frames"].is_cuda
        worst = max(worst, batch_difference(batch, loader, reference, expected, limit, region))
        seen += batch["frames"].shape[0]
    assert seen == loader.source.shard_size()
    return seen, worst


def assert_closest_to_own_frame(got, frames, k: int, label: str) -> None:
    """``got`` (int16 image) differs less from source frame ``k`` than from either neighbour: a
    frame off by one would fail even within the colour tolerance."""
    import numpy as np
    own = np.abs(got - frames[k]).mean()
    for other in (k - 1, k + 1):
        if 0 <= other < len(frames):
            assert own < np.abs(got - frames[other]).mean(), \
                f"{label}: frame {k} is closer to source frame {other}"


def batch_frames(batch, loader):
    """Every frame of a batch with where it claims to come from: (sample, camera index, video,
    source frame k, frame as a numpy uint8 array)."""
    frames = batch["frames"].cpu().numpy()
    for b in range(frames.shape[0]):
        clip = loader.clip_names[int(batch["clip"][b])]
        for c, camera in enumerate(loader.cameras):
            for t, k in enumerate(batch["frame_idx"][b].tolist()):
                yield b, c, f"{clip}/{camera}", k, frames[b, c, t]


def check_batch(batch, loader, reference) -> None:
    """Every frame of the batch equals the reference decode: ``reference[video][k]`` (RGB)."""
    import numpy as np
    frames = batch["frames"].numpy()
    assert frames.dtype == np.uint8 and frames.shape[1] == len(loader.cameras)
    for b, c, video, k, got in batch_frames(batch, loader):
        assert int(batch["camera"][b, c]) == c
        assert np.array_equal(got, reference[video][k]), f"{video} frame {k}"

# -- the fault tests' dataset (test_format, test_store_faults, test_preprocess_faults,
# test_loader_faults): 2 clips x 2 cameras x 24 frames, H.264 with B-frames, GOPs of 8 --------

SMALL = dict(width=160, height=96, fps=12)
CLIPS, CAMERAS, FRAMES, GOP = 2, 2, 24, 8
VIDEO = "clip000/cam0.mp4"


def fuzz(examples: int):
    """Hypothesis settings of the fuzz tests."""
    from hypothesis import HealthCheck, settings
    # a few thousand cases in all; module fixtures are fine to share between examples
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    from dali_gop.synthetic import make_dataset
    root = tmp_path_factory.mktemp("videos")
    make_dataset(root, clips=CLIPS, cameras=CAMERAS, frames=FRAMES, gop=GOP, codec="h264",
                 bframes=2, workers=2, **{k: SMALL[k] for k in ("width", "height", "fps")})
    return root


@pytest.fixture(scope="module")
def clean(videos, tmp_path_factory) -> Path:
    """One uninterrupted preprocess run: every other run must end up with exactly these files."""
    from preprocess.runner import preprocess
    gops = tmp_path_factory.mktemp("clean") / "gops"
    assert not preprocess(videos, gops, workers=2, progress=False).failed
    return gops


@pytest.fixture(scope="module")
def reference(videos) -> dict:
    """{video: its frames as rgb24} of the fault tests' dataset."""
    from dali_gop.reference import decode_source
    return {p.relative_to(videos).as_posix(): decode_source(p, "rgb24")
            for p in sorted(videos.rglob("*.mp4"))}


@pytest.fixture
def gops(clean, tmp_path) -> Path:
    """A private copy of the clean store, to damage."""
    import shutil
    shutil.copytree(clean, tmp_path / "gops")
    return tmp_path / "gops"


def a_bin(root: Path, gop: int = 1):
    """(GopEntry, path) of GOP ``gop`` of VIDEO in the store at root."""
    from dali_gop import format as fmt
    entry = fmt.read_index(root, VIDEO).gops[gop]
    return entry, root / VIDEO / entry.file


def cpu_decode(read):
    """A SampleRead decoded by the cpu backend's decoder: frames as a numpy array."""
    from dali_gop.backends._cpu import CpuSampleDecoder
    return CpuSampleDecoder()(read.data, read.plan.to_array())
