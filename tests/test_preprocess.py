"""preprocess as a program: parallel, sharded, resumable, atomic, and clear about bad videos."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dali_gop import format as fmt
from preprocess.runner import find_videos, preprocess, shard

from conftest import ROOT


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from dali_gop.synthetic import make_dataset
    root = tmp_path_factory.mktemp("dataset")
    make_dataset(root, clips=3, cameras=3, frames=36, width=160, height=96, gop=12,
                 codec="hevc", bframes=2, workers=2)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_preprocess_writes_every_video_and_the_manifest(dataset, tmp_path):
    summary = preprocess(dataset, tmp_path / "g", workers=2, progress=False)
    assert not summary.failed and len(summary.results) == 9
    manifest = fmt.DatasetManifest.from_json((tmp_path / "g" / fmt.MANIFEST_FILENAME).read_text())
    assert manifest.clips() == {"clip000": 36, "clip001": 36, "clip002": 36}
    assert manifest.cameras["clip001"] == ["cam0.mp4", "cam1.mp4", "cam2.mp4"]
    assert manifest.videos["clip002/cam1.mp4"] == fmt.VideoSummary(36, "hevc", 160, 96)
    again = preprocess(dataset, tmp_path / "g", workers=2, progress=False)
    assert all(r.skipped for r in again.results)


def test_shards_split_the_video_list_disjointly(dataset):
    videos = find_videos(dataset)
    parts = [shard(videos, i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == videos
    assert len({v for p in parts for v in p}) == len(videos)


def test_a_bad_video_is_reported_and_the_others_done(dataset, tmp_path):
    videos = tmp_path / "v"
    (videos / "clipX").mkdir(parents=True)
    (videos / "clipX" / "cam0.mp4").write_bytes(b"\0" * 1000)
    os.symlink(dataset / "clip000", videos / "clip000")
    result = subprocess.run([sys.executable, "-m", "preprocess", "--video-root", str(videos),
                             "--gop-root", str(tmp_path / "g"), "--workers", "2", "--no-progress"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "FAILED clipX/cam0.mp4" in result.stdout
    assert "3 written" in result.stdout
    assert (tmp_path / "g" / "clip000" / "cam2.mp4" / fmt.INDEX_FILENAME).exists()


def finished_indexes(root: Path) -> list[Path]:
    """Index files under root; tolerates directories vanishing while preprocess runs."""
    return [Path(d) / fmt.INDEX_FILENAME for d, _, files in os.walk(root)
            if fmt.INDEX_FILENAME in files]


def test_rerun_after_sigkill_matches_an_uninterrupted_run(dataset, tmp_path):
    clean = tmp_path / "clean"
    preprocess(dataset, clean, workers=1, progress=False)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "preprocess", "--video-root", str(dataset), "--gop-root",
           str(killed), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not finished_indexes(killed):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list(killed.rglob(fmt.INDEX_FILENAME))
    assert 0 < len(done) < 9, "the kill should land midway"
    for index_path in done:   # whatever is visible is complete
        index = fmt.VideoIndex.from_json(index_path.read_text())
        for gop in index.gops:
            assert (index_path.parent / gop.file).stat().st_size == gop.size
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=300, capture_output=True)
    assert not list(killed.rglob(".staging.*"))
    a, b = tree(clean), tree(killed)
    a.pop(fmt.MANIFEST_FILENAME), b.pop(fmt.MANIFEST_FILENAME)
    assert a == b


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


def test_changed_source_is_redone(dataset, tmp_path):
    gops = tmp_path / "g"
    preprocess(dataset, gops, workers=2, progress=False)
    os.utime(dataset / "clip002" / "cam2.mp4")
    summary = preprocess(dataset, gops, workers=2, progress=False)
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
