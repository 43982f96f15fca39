"""The benchmark's own machinery on the CPU: results over ranks, the table, the JSON, the chart, and
a real two-rank torchrun of the cpu-backend measurements."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from pipelines.throughput import GpuMemoryPeak, Result, combine, format_table, make_report, measure

ARGS = dict(clips=10, cameras=6, codec="hevc", width=1600, height=900, gop=30, bframes=0,
            group_num=16, random_group_num=8)


def rank_results(scale: float) -> list[Result]:
    return [
        Result("NVDEC ceiling RGB, 16 threads", 9000 * scale, 14400, 1.6, 2.0, 1100.0,
               method="NVDEC ceiling RGB, 16 threads"),
        Result("dali-gop stream (nvdec)", 2500 * scale, 13000, 5.2, 2.1, 19800.0,
               method="dali-gop (nvdec)"),
        Result("dali-gop random (nvdec)", 430 * scale, 2880, 6.6, 2.2, 1300.0,
               method="dali-gop (nvdec)", access="random"),
        Result("DALI readers.video random", 50 * scale, 960, 19.0, 1.0, None,
               method="DALI readers.video (mp4)", access="random"),
    ]


def test_ranks_are_summed_per_measurement():
    per_rank = [rank_results(1.0), rank_results(1.5)]
    combined = combine(per_rank)
    assert [r.name for r in combined] == [r.name for r in per_rank[0]]
    stream = combined[1]
    assert stream.frames_per_s == pytest.approx(2500 * 2.5)
    assert (stream.frames, stream.seconds, stream.cpu_cores) == (26000, 5.2, pytest.approx(4.2))
    assert stream.peak_gpu_mib == 19800.0          # per GPU: the largest
    assert combined[3].peak_gpu_mib is None        # no GPU figure on any rank
    with pytest.raises(RuntimeError, match="different things"):
        combine([rank_results(1.0), rank_results(1.0)[:2]])


def test_report_and_table_show_every_rank_and_the_sum():
    report = make_report([rank_results(1.0), rank_results(1.5)], device="NVIDIA H100", args=ARGS,
                         random_decode_depth=15.3)
    assert json.loads(json.dumps(report)) == report
    assert report["world_size"] == 2 and len(report["ranks"]) == 2
    assert report["ceiling_rgb"] == pytest.approx(9000 * 2.5)
    table = format_table(report).splitlines()
    assert table[0] == ("| measurement | rank 0 frames/s | rank 1 frames/s | frames/s, all ranks "
                        "| CPU cores | peak GPU MiB |")
    assert table[3] == "| dali-gop stream (nvdec) | 2,500 | 3,750 | 6,250 | 4.2 | 19,800 |"
    assert table[5].endswith("| - |")             # no GPU memory figure


def test_one_rank_table_has_no_rank_columns():
    report = make_report([rank_results(1.0)], device="NVIDIA H100", args=ARGS)
    assert format_table(report).splitlines()[0] == \
        "| measurement | frames/s | CPU cores | peak GPU MiB |"


def test_measure_without_a_gpu_records_no_gpu_memory():
    assert GpuMemoryPeak(None).stop() is None
    result = measure("work", lambda: (100, 0.5), device=None, verbose=False)
    assert (result.frames_per_s, result.peak_gpu_mib, result.method) == (200, None, "work")


def test_chart_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from pipelines.chart import main
    results = tmp_path / "results.json"
    results.write_text(json.dumps(make_report([rank_results(1.0)], device="NVIDIA H100",
                                              args=ARGS)))
    main([str(results)])
    png = tmp_path / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_torchrun_sums_two_cpu_ranks(tmp_path):
    pytest.importorskip("torch.distributed")
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "pipelines.throughput", "--backend", "cpu", "--quick",
               "--data", str(tmp_path / "data"), "--out", str(out), "--clips", "2",
               "--cameras", "2", "--width", "96", "--height", "64", "--frames", "24", "--gop", "8",
               "--group_num", "2", "--workers", "1", "--warmup", "1", "--random_batches", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and len(report["ranks"]) == 2
    assert [r["name"] for r in report["results"]] == [
        "dali-gop stream (cpu)", "dali-gop random (cpu)",
        "dali-gop stream, no stream decoding (cpu)"]
    for i, total in enumerate(report["results"]):
        ranks = [rows[i] for rows in report["ranks"]]
        assert all(r["frames"] > 0 and r["peak_gpu_mib"] is None for r in ranks)
        assert total["frames_per_s"] == pytest.approx(sum(r["frames_per_s"] for r in ranks))
    assert "frames/s, all ranks" in done.stdout
