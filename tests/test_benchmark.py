"""The benchmark's own machinery on the CPU: results over ranks, the tables, the JSON, the chart, the
profiler hook, the command lines' user errors, the quick cpu run, and a real two-rank torchrun of
the cpu-backend measurements."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT
from pipelines.throughput.measure import (GpuMemoryPeak, Result, Timed, decoder_sampler, measure,
                                          nvml_index, process_cpu_seconds, thread_cpu_seconds)
from pipelines.throughput.profile import Profiler, format_profile
from pipelines.throughput.report import (combine, format_budget_table, format_table,
                                         format_train_table, make_report)

ARGS = dict(clips=10, cameras=6, codec="hevc", width=1600, height=900, gop=30, bframes=0,
            group_num=16, random_group_num=8)


def train_details(scale: float) -> dict:
    return {"train": {"model_fps": 2000 * scale, "loader_fps": 9000 * scale,
                      "together_fps": 1900 * scale, "overlap": 1.05 * scale, "serial": 1.22,
                      "next_ms": 0.4, "model_on_core": 0.99, "together_on_core": 0.714,
                      "model_waiting_for_core": 0.01, "together_waiting_for_core": 0.25,
                      "model_sleeps_per_step": 0.5, "together_sleeps_per_step": 12.0,
                      "model_preempted_per_step": 0.0, "together_preempted_per_step": 3.0,
                      "loader_share": 0.43,
                      "model": {"layers": 3}, "pattern": "stream"}}


def rank_results(scale: float) -> list[Result]:
    return [
        Result("NVDEC ceiling NV12, 16 threads", 9000 * scale, 14400, 1.6, 2.0, 1100.0, 90.0),
        Result("dali-gop stream (nvdec)", 2500 * scale, 13000, 5.2, 2.1, 19800.0, 80.0 * scale,
               method="dali-gop (nvdec)"),
        Result("dali-gop random (nvdec)", 430 * scale, 2880, 6.6, 2.2, 1300.0,
               method="dali-gop (nvdec)", access="random",
               details={"mean_decode_depth": 15.3}),
        Result("DALI readers.video random", 50 * scale, 960, 19.0, 1.0, None,
               method="DALI readers.video (mp4)", access="random"),
        Result("train stream", 1900 * scale, 1200, 0.6, 3.0, 30000.0, 70.0,
               note="3 conv layers", method="beside a training step",
               details=train_details(scale)),
    ]


def test_ranks_are_summed_per_measurement():
    per_rank = [rank_results(1.0), rank_results(1.5)]
    combined = combine(per_rank)
    assert [r.name for r in combined] == [r.name for r in per_rank[0]]
    stream = combined[1]
    assert stream.frames_per_s == pytest.approx(2500 * 2.5)
    assert (stream.frames, stream.seconds, stream.cpu_cores) == (26000, 5.2, pytest.approx(4.2))
    assert stream.peak_gpu_mib == 19800.0          # per GPU: the largest
    assert stream.nvdec_busy == pytest.approx(100.0)   # per GPU: the mean
    assert combined[3].peak_gpu_mib is None        # no GPU figure on any rank
    train = combined[4].details["train"]
    assert train["loader_fps"] == pytest.approx(9000 * 2.5)   # frames/s summed
    assert train["overlap"] == pytest.approx(1.05 * 1.5)      # the worst rank's
    with pytest.raises(RuntimeError, match="different things"):
        combine([rank_results(1.0), rank_results(1.0)[:2]])


def test_report_and_table_show_every_rank_and_the_sum():
    report = make_report([rank_results(1.0), rank_results(1.5)], device="NVIDIA H100", args=ARGS)
    assert json.loads(json.dumps(report)) == report
    assert report["world_size"] == 2 and len(report["ranks"]) == 2
    assert report["ceiling"] == pytest.approx(9000 * 2.5)
    assert report["random_decode_depth"] == 15.3
    table = format_table(report).splitlines()
    assert table[0] == ("| measurement | rank 0 frames/s | rank 1 frames/s | frames/s, all ranks "
                        "| CPU cores | peak GPU MiB | NVDEC busy % |")
    assert table[3] == "| dali-gop stream (nvdec) | 2,500 | 3,750 | 6,250 | 4.2 | 19,800 | 100 |"
    assert table[5].endswith("| - | - |")         # no GPU memory or decoder figure


def test_one_rank_table_has_no_rank_columns():
    report = make_report([rank_results(1.0)], device="NVIDIA H100", args=ARGS)
    assert format_table(report).splitlines()[0] == \
        "| measurement | frames/s | CPU cores | peak GPU MiB | NVDEC busy % |"


def test_train_table_shows_the_three_phases_and_the_overlap():
    report = make_report([rank_results(1.0)], device="NVIDIA H100", args=ARGS)
    lines = format_train_table(report).splitlines()
    assert len(lines) == 3 and "together / max(model, loader)" in lines[0]
    assert lines[2] == ("| train stream: 3 conv layers | 2,000 | 9,000 | 1,900 | 1.05 | 1.22 | 0.4 "
                        "| 99 / 71 | 1 / 25 | 70 | 30,000 |")
    without = make_report([rank_results(1.0)[:2]], device="NVIDIA H100", args=ARGS)
    assert format_train_table(without) == ""


def test_train_line_says_what_torchs_allocator_did_beside_the_loader():
    from pipelines.throughput.train import format_train
    details = train_details(1.0)
    assert "allocator" not in format_train(details)     # runs from before it was counted
    assert ("; waiting for a core 1% / 25%, sleeps a step 0.5 / 12.0, preempted a step 0.0 / 3.0"
            in format_train(details))
    details["train"]["allocator"] = {"num_device_alloc": 12, "num_device_free": 3,
                                     "num_sync_all_streams": 3, "num_alloc_retries": 0}
    line = format_train(details)
    assert line.endswith("torch's allocator, together: 12 cudaMalloc, 3 cudaFree, "
                         "3 syncs of all streams, 0 retries after running out")


def test_train_line_gives_both_timings_of_the_model_alone_and_ranks_keep_the_widest_drift():
    from pipelines.throughput.train import format_train
    details = train_details(1.0)
    assert "before the loader" not in format_train(details)     # runs from before it was timed twice
    details["train"].update(model_before_fps=1900.0, model_after_fps=2100.0, model_drift=0.1)
    assert format_train(details).startswith(
        "     model alone 2,000 (1,900 before the loader, 2,100 after it), loader alone 9,000")
    other = train_details(1.0)
    other["train"].update(model_before_fps=2000.0, model_after_fps=2000.0, model_drift=0.0)
    rows = [rank_results(1.0), rank_results(1.0)]
    rows[0][4].details, rows[1][4].details = details, other
    train = combine(rows)[4].details["train"]
    assert train["model_drift"] == 0.1
    assert train["model_before_fps"] == 3900.0 and train["model_after_fps"] == 4100.0


def test_a_train_row_is_judged_against_the_mean_of_its_model_alone_timings(monkeypatch):
    """The model alone is timed before the loader and again after it; the row's ratio and the
    loader's share use their mean. The loader alone is timed once a fresh loader's decodes ahead
    are spent (loader_warmup), the together phase right after it."""
    import argparse
    import contextlib

    from pipelines.throughput import train
    from pipelines.throughput.measure import Timed
    alone = iter([0.20, 0.30])          # seconds of 10 steps: 20 ms, then 30 ms a step
    monkeypatch.setattr(train, "model_alone", lambda *args, **kw: Timed(
        960, 0.0, next(alone), {"thread_cpu_s": 0.1}))
    loader = argparse.Namespace(settings={"stream_lead": 60, "stream_decoding": True})
    monkeypatch.setattr(train, "open_loader", lambda *args, **kw: contextlib.nullcontext(loader))
    monkeypatch.setattr(train, "endless", lambda loader: iter(()))
    monkeypatch.setattr(train, "TrainStep", lambda *args: None)
    monkeypatch.setattr(train, "allocator_counts", lambda device: {"num_device_free": 0})
    phase = iter([0.15, 0.30])          # loader alone 15 ms, together 30 ms a step
    warmups = []

    def timed_steps(step, warmup, steps, device, on_start=lambda: None):
        on_start()
        warmups.append(warmup)
        return Timed(960, 0.0, next(phase), {"thread_cpu_s": 0.1})
    monkeypatch.setattr(train, "timed_steps", timed_steps)
    args = argparse.Namespace(gpu_work=False, train_warmup=1, train_steps=10, profile=False,
                              loader_process=False, train_side_stream=False, stream_lead=30,
                              gop=30)
    bench = argparse.Namespace(args=args, device=0)
    t = train.train_run(bench, "stream", 16, train.StepModel(1, 64, (225, 400)))
    t = t.details["train"]
    assert t["model_ms_per_step"] == pytest.approx(25.0)
    assert t["overlap"] == pytest.approx(30 / 25) and t["loader_share"] == pytest.approx(15 / 25)
    assert (t["model_before_fps"], t["model_after_fps"]) == (pytest.approx(4800), pytest.approx(3200))
    assert t["model_fps"] == pytest.approx(960 / 0.25) and t["model_drift"] == pytest.approx(0.4)
    assert warmups == [1 + 2 * (60 + 30), 1]     # loader alone, together


def budget_rows() -> list[Result]:
    def row(access, given, budget, fps, peak, **settings):
        return Result(f"dali-gop {access}, budget {given} (nvdec)", fps, 960, 1.0, 2.0, peak,
                      method="dali-gop (nvdec) within a memory budget", access=access,
                      details={"budget": given, "settings": {"memory_budget": budget, **settings}})
    return [row("stream", "8GiB", 8 * 2**30, 8000.0, 7000.0, stream_lead=0, decode_threads=16),
            row("stream", "none", None, 9000.0, 20000.0, stream_lead=30, decode_threads=48),
            row("random", "3GiB", 3 * 2**30, 580.0, 3500.0, decode_ahead=2, decode_threads=16)]


def test_budget_table_says_what_each_budget_ran_with_and_whether_it_held():
    report = make_report([rank_results(1.0) + budget_rows()], device="NVIDIA H200", args=ARGS)
    lines = format_budget_table(report).splitlines()
    assert len(lines) == 5 and "memory_budget" in lines[0]
    assert lines[2] == "| stream | 8GiB | 8,000 | 7,000 | yes | stream_lead=0, decode_threads=16 |"
    assert lines[3].startswith("| stream | none | 9,000 | 20,000 | - |")
    assert lines[4].startswith("| random | 3GiB | 580 | 3,500 | NO |")    # 3,500 MiB > 3 GiB
    assert format_budget_table(make_report([rank_results(1.0)], device="x", args=ARGS)) == ""


def test_measure_without_a_gpu_records_no_gpu_figures():
    assert GpuMemoryPeak(None).stop() is None
    assert decoder_sampler(None) is None

    def work():
        started = time.perf_counter()
        return Timed(100, started, started + 0.5, {"x": 1})
    result = measure("work", work, device=None, verbose=False)
    assert (result.frames_per_s, result.peak_gpu_mib, result.nvdec_busy, result.method,
            result.details) == (200, None, None, "work", {"x": 1})


def test_cpu_seconds_come_from_proc():
    before, threads = process_cpu_seconds(), thread_cpu_seconds()
    sum(i * i for i in range(2_000_000))
    assert process_cpu_seconds() > before
    assert threads and all(seconds >= 0 for _, seconds in threads.values())


def test_nvml_index_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert (nvml_index(0), nvml_index(1)) == (3, 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvml_index(1) == 1


def test_profiler_is_a_decode_hook_that_summarizes_the_timed_part():
    profiler = Profiler()
    with profiler.batch(stashed=9):       # before the timed part: not counted
        pass
    profiler.start()
    for stashed in (1, 2, 2):
        with profiler.batch(stashed):
            with profiler.schedule():
                pass
            with profiler.decode("clip/cam.mp4/gop.0.30.bin", gop=True):
                time.sleep(0.002)
            with profiler.finish():
                with profiler.wait():
                    time.sleep(0.001)
    summary = profiler.stop([0.001, 0.002, 0.003])
    assert json.loads(json.dumps(summary))
    assert 1 <= summary["wait_ms"]["mean"] <= summary["finish_ms"]["mean"]
    assert summary["batches"] == 3 and summary["stashed_at_call"] == {1: 1, 2: 2}
    assert summary["operator_call_ms"]["mean"] >= 2 and summary["decodes_at_once"] > 0
    assert "nvdec pool" in summary["cpu_cores_by_thread"]   # decode() ran on this thread
    assert "operator call" in format_profile(summary)
    assert "waiting for decodes: mean" in format_profile(summary)


def test_chart_is_a_png_with_the_train_and_budget_panels(tmp_path):
    pytest.importorskip("matplotlib")
    from pipelines.throughput.chart import bars, main
    report = make_report([rank_results(1.0) + budget_rows()], device="NVIDIA H100", args=ARGS)
    assert "dali-gop (nvdec) within a memory budget" not in bars(report)[0]   # a panel of its own
    results = tmp_path / "results.json"
    results.write_text(json.dumps(report))
    main([str(results)])
    png = tmp_path / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def run_module(*args: str, env: dict | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), done.stderr


def test_no_gpu_says_so_before_making_data(tmp_path):
    done = run_module("pipelines.throughput", "--quick", "--data", str(tmp_path / "data"),
                      env={"CUDA_VISIBLE_DEVICES": ""})
    assert_one_line_error(done, "--backend cpu")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("args, words", [
    (["pipelines.throughput", "--skip", "nothing"], ["invalid choice"]),
    (["pipelines.throughput", "--backend", "cpu", "--profile"], ["--profile"]),
    (["pipelines.throughput", "--backend", "cpu", "--gpu_work"], ["--gpu_work"]),
    (["pipelines.throughput", "--backend", "cpu", "--stream_sessions"], ["--stream_sessions"]),
    (["pipelines.throughput", "--backend", "cpu", "--nvdec_sessions", "own"], ["--nvdec_sessions"]),
    (["pipelines.throughput", "--stream_groups", "3"], ["--stream_groups", "--stream_sessions"]),
    (["pipelines.throughput", "--stream_sessions", "--stream_groups", "0"], ["--stream_groups"]),
    (["pipelines.throughput", "--switch_interval", "0"], ["--switch_interval"]),
    (["pipelines.throughput", "--decode_nice", "20"], ["--decode_nice", "0 to 19"]),
    (["pipelines.throughput", "--train_rows", "launch", "all"], ["invalid choice"]),
    (["pipelines.throughput.chart", "missing.json"], ["missing.json"]),
    (["pipelines.throughput.chart", "README.md"], ["README.md", "not a results file"]),
    (["pipelines.throughput", "--train_layers", "0"], ["--train_layers", "auto"]),
])
def test_user_errors_are_one_line(args, words):
    assert_one_line_error(run_module(*args), *words)


@pytest.mark.parametrize("one, five, loader, share, wanted", [
    (0.010, 0.030, 0.012, 0.6, 3),    # a step of 5 ms + 5 ms a layer; the loader 12 ms of 20
    (0.010, 0.030, 0.001, 0.6, 1),    # a loader that fast: the smallest model
    (0.010, 0.010, 0.012, 0.6, 64),   # layers that cost nothing: the most, not a division by 0
    (0.070, 0.270, 0.090, 0.3, 6),    # 20 + 50 ms a layer; 90 ms is 28% of 320
])
def test_auto_train_layers_give_the_loader_its_share_of_the_model_step(one, five, loader, share,
                                                                      wanted):
    from pipelines.throughput.train import layers_for_share
    assert layers_for_share(one, five, loader, share) == wanted


@pytest.mark.parametrize("one, five, room, wanted", [
    (3 << 30, 7 << 30, 12 << 30, 10),     # 2 GiB fixed + 1 GiB a layer, within 12 GiB
    (3 << 30, 7 << 30, 1 << 30, 1),       # not even one layer fits: still one
    (3 << 30, 3 << 30, 1 << 30, 64),      # layers that take nothing: the most
    (1 << 20, 5 << 20, 1 << 40, 64),      # room for far more than the most
])
def test_a_sized_model_has_no_more_layers_than_its_memory_room(one, five, room, wanted):
    """The most layers whose step peaks within the room the sizing leaves beside the loader, from
    the step's peak bytes at 1 and 5 layers: at least one, at most the most."""
    from pipelines.throughput.train import layers_that_fit
    assert layers_that_fit(one, five, room) == wanted


def test_a_model_too_heavy_at_one_layer_is_made_narrower():
    """Where the loader takes under 30% of even one layer's step, the channels are halved (the
    step's cost here in proportion) until it takes its share; never below 16."""
    from pipelines.throughput.train import StepModel, lightened
    seen = []

    def step_seconds(model):     # a step of 40 ms + 10 ms a layer at 128 channels
        seen.append(model.channels)
        scale = model.channels / 128
        return 0.050 * scale, 0.090 * scale

    model = StepModel(0, 128, (225, 400))
    assert lightened(model, step_seconds, 0.012, 0.6) == StepModel(1, 64, (225, 400))
    assert seen == [128, 64]     # 24% of 50 ms, then 48% of 25 ms: not narrowed further
    assert lightened(model, step_seconds, 0.030, 0.6) == StepModel(1, 128, (225, 400))
    assert lightened(model, step_seconds, 0.0001, 0.6).channels == 16


def test_quick_cpu_run_finishes(tmp_path):
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "quick.json"
    started = time.perf_counter()
    done = run_module("pipelines.throughput", "--quick", "--backend", "cpu", "--data",
                      str(tmp_path / "data"), "--out", str(out), env={"OMP_NUM_THREADS": "1"},
                      timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.perf_counter() - started < 300     # about a minute on 2 cores: a smoke bound
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["results"]] == [
        "dali-gop stream (cpu)", "dali-gop random (cpu)",
        "dali-gop stream, no stream decoding (cpu)"]
    assert all(r["frames"] > 0 for r in report["results"])


@pytest.mark.slow
def test_torchrun_sums_two_cpu_ranks(tmp_path):
    pytest.importorskip("torch.distributed")
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "results.json"
    done = run_module("torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                      "pipelines.throughput", "--backend", "cpu", "--quick",
                      "--data", str(tmp_path / "data"), "--out", str(out), "--clips", "2",
                      "--cameras", "2", "--width", "96", "--height", "64", "--frames", "24",
                      "--gop", "8", "--group_num", "2", "--workers", "1", "--warmup", "1",
                      "--random_batches", "2", env={"OMP_NUM_THREADS": "1"}, timeout=300)
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


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from conftest import small_stores
    return small_stores(tmp_path_factory, {"plain": {}})("plain")[0]


def test_loader_process_hands_over_the_batches_of_an_epoch_in_order(small_store):
    """--loader_process's loader, in a process of its own, gives the batches an in-process loader
    gives, in order, across epochs; the process ends with the block."""
    pytest.importorskip("nvidia.dali")
    from conftest import cpu_loader
    from pipelines.throughput.train import LoaderProcess
    with cpu_loader(small_store, pattern="stream") as loader:
        epochs = [[batch["frames"].clone() for batch in loader] for _ in range(2)]
    arguments = dict(gop_root=small_store, pattern="stream", backend="cpu", batch_size=2,
                     num_workers=2, shard_id=0, num_shards=1)
    with LoaderProcess(arguments, None) as remote:
        batches = iter(remote)
        got = [next(batches)["frames"].clone() for _ in range(sum(map(len, epochs)))]
        process = remote._process
    assert not process.is_alive()
    expected = epochs[0] + epochs[1]
    assert len(epochs[0]) > 1
    for k, (frames, wanted) in enumerate(zip(got, expected)):
        assert torch.equal(frames, wanted), k


def test_loader_process_raises_the_loaders_error(tmp_path):
    pytest.importorskip("nvidia.dali")
    from pipelines.throughput.train import LoaderProcess
    arguments = dict(gop_root=tmp_path / "none", pattern="stream", backend="cpu", batch_size=2,
                     num_workers=2, shard_id=0, num_shards=1)
    with LoaderProcess(arguments, None) as remote:
        with pytest.raises(RuntimeError, match="the loader process failed.*none"):
            next(iter(remote))


def test_loader_process_that_sends_nothing_is_an_error_not_a_hang(monkeypatch):
    """A batch the queue cannot send (CUDA IPC refuses memory not of torch's allocator) fails in
    the producer's feeder thread, unseen: the consumer must give up, not wait for ever."""
    from pipelines.throughput import train
    monkeypatch.setattr(train.LoaderProcess, "SILENCE", 0.3)
    remote = train.LoaderProcess({}, None)      # never started: nothing comes
    with pytest.raises(RuntimeError, match="sent no batch for 0.3 s"):
        next(iter(remote))


def test_gpu_work_is_told_a_batch_largest_first():
    from pipelines.throughput.profile import format_gpu_work
    work = {"device_ms": 30.0, "operations": 60, "by_name": {"nv12_to_rgb": {"ms": 20.0, "calls": 40},
                                           "Memcpy DtoD": {"ms": 10.0, "calls": 20}}}
    lines = format_gpu_work(work, batches=10).splitlines()
    assert "3.00 ms of device time a batch (60 kernels" in lines[0]
    assert "2.000 ms" in lines[1] and "4.0 calls" in lines[1] and "nv12_to_rgb" in lines[1]
    assert "Memcpy DtoD" in lines[2]


def test_a_phases_timeline_says_what_ran_on_the_trainings_stream_and_beside_it():
    from pipelines.throughput.profile import Span, busiest_stream, timeline_account
    # two steps of 50 us: the model's kernels on stream 7, the loader's on 20 and 21
    spans = [Span(7, 0, 10, "conv"), Span(7, 12, 20, "relu"), Span(7, 50, 70, "conv"),
             Span(20, 5, 15, "map"), Span(21, 14, 16, "map"), Span(20, 30, 40, "copy")]
    assert busiest_stream(spans) == 7
    t = timeline_account(spans, 7, steps=2, seconds=100e-6)
    assert t["step_ms"] == pytest.approx(0.05)
    assert t["model_busy_ms"] == pytest.approx(38 / 2e3)
    assert t["model_operations"] == 1.5
    assert t["loader_ms"] == pytest.approx(22 / 2e3)          # summed
    assert t["loader_busy_ms"] == pytest.approx(21 / 2e3)     # 5-16 and 30-40
    assert t["loader_beside_model_ms"] == pytest.approx(9 / 2e3)   # 5-10 and 12-16
    assert list(t["loader_by_name"]) == ["map", "copy"]
    assert t["loader_by_name"]["map"] == pytest.approx(12 / 2e3)


def test_a_train_rows_timeline_line_sets_the_phases_side_by_side():
    from pipelines.throughput.train import format_train
    details = train_details(1.0)
    phase = {"step_ms": 20.0, "model_busy_ms": 15.0, "model_operations": 40.0, "loader_ms": 2.5,
             "loader_busy_ms": 2.0, "loader_beside_model_ms": 1.5,
             "loader_by_name": {"ConvertNV12BLtoNV12": 1.0}}
    details["train"]["gpu_timeline"] = {"model": dict(phase, loader_ms=0.0),
                                        "together": dict(phase, step_ms=22.0)}
    line = format_train(details).splitlines()[-1]
    assert "model alone 20.00 ms, its stream running 15.00 ms (40 operations), waiting 5.00" in line
    assert "together 22.00 ms, running 15.00 ms, waiting 7.00 ms" in line
    assert "the loader's GPU work 2.50 ms" in line and "ConvertNV12BLtoNV12 1.00" in line


def test_loader_process_takes_the_runs_backend_defaults(monkeypatch):
    """--nvdec_sessions, --stream_sessions, --kept_gops, --stream_groups, --stream_priority,
    --display_delay, --unmap_late, --host_threads and --decode_nice set defaults of the nvdec
    backend, the CUDA driver, our sessions and the budget; the loader process imports them afresh,
    so they go with it (else it would run the library's own defaults whatever the run asked
    for)."""
    from dali_gop import _budget
    from dali_gop.backends import _nvdec, _nvdec_session
    from dali_gop.backends._cuda import CudaDriver
    from pipelines.throughput import train
    monkeypatch.setattr(_nvdec.NvdecBackend, "sessions", "own")
    monkeypatch.setattr(_nvdec.NvdecBackend, "stream_sessions", True)
    monkeypatch.setattr(_nvdec.NvdecBackend, "kept_gops", "host")
    monkeypatch.setattr(_nvdec, "STREAM_GROUPS", 5)
    monkeypatch.setattr(CudaDriver, "priority", "default")
    monkeypatch.setattr(_nvdec_session, "DISPLAY_DELAY", 1)
    monkeypatch.setattr(_nvdec_session, "UNMAP_LATE", True)
    monkeypatch.setattr(_budget, "HOST_THREADS", 24)
    monkeypatch.setattr(_nvdec, "DECODE_NICE", 10)
    defaults = train.backend_defaults()
    assert defaults == {"sessions": "own", "stream_sessions": True, "kept_gops": "host",
                        "groups": 5, "priority": "default", "display_delay": 1,
                        "unmap_late": True, "host_threads": 24, "decode_nice": 10}
    remote = train.LoaderProcess({}, None)
    assert remote._process._args[-1] == defaults


@pytest.mark.parametrize("slots, ratio", [
    (3, 1.0),            # a clip (3 GOPs of 10) a slot: no GOP shared
    (2, 100 / 90),       # 45 frames a slot: the GOP at frames 10-19 of the middle clip, twice
])
def test_stream_decode_ratio_counts_the_gops_slots_share(small_store, slots, ratio):
    """The stream row's frames decoded a frame delivered: a GOP in which one slot's run of
    samples ends and the next one's starts is decoded by both."""
    import argparse

    from pipelines.throughput.bench import Bench
    from pipelines.throughput.loader import stream_decode_ratio
    b = Bench(argparse.Namespace(stream_lead=30), small_store, small_store)
    assert stream_decode_ratio(b, slots) == pytest.approx(ratio)


def test_the_launch_probe_names_a_root_that_is_no_store(tmp_path):
    from pipelines.throughput import launch_probe
    with pytest.raises(SystemExit, match="no .gop_index.json under it: give a GOP store"):
        launch_probe.main([str(tmp_path)])


@pytest.mark.parametrize("frames, rate, elapsed, wait", [
    (100, None, 0.5, 0.0),     # no pace: never waits
    (100, 100.0, 0.5, 0.5),    # ahead of its pace: waits until it is due
    (100, 100.0, 2.0, 0.0),    # behind it: goes on at once
])
def test_the_launch_probe_decodes_at_a_loaders_pace(frames, rate, elapsed, wait):
    """--fps: decoding threads keep to a rate, as a loader does at the pace of its model, rather
    than at NVDEC's."""
    from pipelines.throughput.launch_probe import pause
    assert pause(frames, rate, elapsed) == pytest.approx(wait)


def computing_step() -> int:
    """A training step that only computes, for 20 ms of its thread's CPU time."""
    ended = time.thread_time() + 0.02
    while time.thread_time() < ended:
        pass
    return 1


def test_timed_steps_say_how_long_the_calling_thread_was_on_a_core(monkeypatch):
    """The train rows' on-core share: a step that computes keeps its thread on a core, a step that
    waits (for a lock, a core, the GPU without spinning) does not."""
    import torch

    from pipelines.throughput.train import timed_steps
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)

    def waits() -> int:
        time.sleep(0.02)
        return 1

    busy = timed_steps(computing_step, 1, 5, 0)
    idle = timed_steps(waits, 1, 5, 0)
    assert busy.frames == idle.frames == 5
    # not near 1: on a loaded machine (CI's two cores) a computing thread also waits for a core
    assert busy.details["thread_cpu_s"] / busy.seconds > 0.5
    assert idle.details["thread_cpu_s"] / idle.seconds < 0.2
    # a thread that waits for something gives its core up each step
    assert idle.details["thread_sleeps"] >= 5


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"),
                    reason="the kernel keeps no run delay here")
def test_timed_steps_say_how_long_the_calling_thread_waited_for_a_core(monkeypatch):
    """Beside the loader, a training thread off its core either waits for one (the loader's
    threads take it) or sleeps (a lock, the GPU): the rows tell the two apart. A computing thread
    with twice as many busy processes as cores waits for a core a good part of its time."""
    import torch

    from pipelines.throughput.train import thread_shares, timed_steps
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)

    busy = [subprocess.Popen([sys.executable, "-c", "print(flush=True)\nwhile True: pass"],
                             stdout=subprocess.PIPE)
            for _ in range(2 * len(os.sched_getaffinity(0)))]
    try:
        for process in busy:       # each is computing before the steps are timed
            process.stdout.readline()
        crowded = timed_steps(computing_step, 1, 10, 0)
    finally:
        for process in busy:
            process.kill()
            process.communicate()
    shares = thread_shares("together", crowded, 10)
    assert shares["together_waiting_for_core"] > 0.2
    assert shares["together_on_core"] + shares["together_waiting_for_core"] == \
        pytest.approx(1.0, abs=0.15)
    assert shares["together_preempted_per_step"] > 0


def test_budget_rows_are_timed_as_the_loader_rows_of_their_access(monkeypatch):
    """A stream budget row runs the loader's stream timing (an untimed epoch, then
    --stream_epochs), so that it compares with the loader's stream row and the issue's target,
    unless its plan turns stream decoding off (then --warmup and --random_batches, as stream order
    without it); a random one, --warmup then --random_batches; a refused budget is a line, not a
    row."""
    import argparse

    from dali_gop.errors import ConfigError
    from pipelines.throughput import loader
    calls = []

    def run(b, access, backend, group, *, profiler=None, memory_budget=None, **timing):
        if memory_budget == "1B":
            raise ConfigError("memory_budget 1B is less than this loader needs")
        calls.append((access, memory_budget, timing))
        return Timed(10, 0.0, 1.0, {"settings": {"memory_budget": None}})

    monkeypatch.setattr(loader, "loader_run", run)
    args = argparse.Namespace(backend="nvdec", group_num=16, random_group_num=8, warmup=12,
                              random_batches=60, stream_epochs=3, budgets=["1B", "6GiB", "none"],
                              profile=False)

    class Bench:
        rank = 0

        def __init__(self):
            self.args = args

        def measure(self, name, workload, **options):
            timed = workload()
            return Result(name, 10.0, timed.frames, 1.0, 1.0, None, details=timed.details,
                          **{k: v for k, v in options.items() if k in ("method", "access")})

    rows = loader.budget_rows(Bench())
    assert [r.details["budget"] for r in rows] == ["6GiB", "none"] * 2
    streaming = dict(warmup=None, batches=None, epochs=3, not_streaming=(12, 60))
    assert calls == [
        ("stream", "6GiB", streaming),
        ("stream", None, streaming),
        ("random", "6GiB", dict(warmup=12, batches=60)),
        ("random", None, dict(warmup=12, batches=60))]


def test_the_loader_group_runs_the_rows_asked_for(monkeypatch):
    """--loader_rows: each of stream, random and stream order without stream decoding runs only
    where asked for, with its own timing (the budget rows' of the same access)."""
    import argparse

    from pipelines.throughput import loader
    calls, timings = [], []

    def run(b, access, backend, group, *, profiler=None, stream_decoding=True, **timing):
        calls.append((access, stream_decoding))
        timings.append(timing)
        return Timed(10, 0.0, 1.0, {"settings": {"memory_budget": None}})

    monkeypatch.setattr(loader, "loader_run", run)
    monkeypatch.setattr(loader, "stream_decode_ratio", lambda b, group: 1.0)
    monkeypatch.setattr(loader, "mean_decode_depth", lambda b, group: 15.0)

    class Bench:
        rank = 0

        def __init__(self, rows):
            self.args = argparse.Namespace(backend="nvdec", group_num=16, random_group_num=8,
                                           warmup=12, random_batches=60, stream_epochs=3,
                                           profile=False, loader_rows=rows)

        def measure(self, name, workload, **options):
            timed = workload()
            return Result(name, 10.0, timed.frames, 1.0, 1.0, None, details=timed.details)

    names = [r.name for r in loader.loader_rows(Bench(["stream"]))]
    assert names == ["dali-gop stream (nvdec)"] and calls == [("stream", True)]
    calls.clear()
    rows = loader.loader_rows(Bench(list(loader.LOADER_ROWS)))
    assert len(rows) == 3 and calls == [("stream", True), ("random", True), ("stream", False)]
    random = dict(warmup=12, batches=60)
    assert timings[1:] == [dict(warmup=None, batches=None, epochs=3, not_streaming=(12, 60)),
                           random, random]


@pytest.mark.parametrize("streaming", [True, False])
def test_a_run_without_stream_decoding_takes_the_timing_given_for_it(monkeypatch, streaming):
    """loader_run's ``not_streaming``: where the loader's plan turned stream decoding off, its
    (warmup, batches) replace whole epochs; a streaming loader keeps them."""
    import argparse
    import contextlib

    from pipelines.throughput import loader
    served = []

    class Loader:
        settings = {"stream_decoding": streaming}

        def __len__(self):
            return 100

        def memory(self):
            return {}

    @contextlib.contextmanager
    def open_loader(*args, **options):
        yield Loader()

    def endless(_):
        while True:
            served.append(1)
            yield {"frames": None}

    monkeypatch.setattr(loader, "open_loader", open_loader)
    monkeypatch.setattr(loader, "endless", endless)
    monkeypatch.setattr(loader, "finished", lambda frames: None)
    monkeypatch.setattr(loader, "frames_in", lambda frames: 1)
    b = type("B", (), {"args": argparse.Namespace(gpu_work=False)})()
    timed = loader.loader_run(b, "stream", "nvdec", 16, None, None, epochs=3,
                              not_streaming=(12, 60))
    assert timed.frames == (300 if streaming else 60)
    assert len(served) == (400 if streaming else 72)


@pytest.mark.parametrize("given, expected", [([], None), (["--prefetch_queue_depth", "3"], 3)])
def test_prefetch_queue_depth_reaches_make_loader(tmp_path, given, expected):
    """--prefetch_queue_depth is make_loader's (absent: make_loader's default), for the A/B rows
    of DALI's queue of finished batches."""
    from pipelines.throughput.__main__ import parse_args
    from pipelines.throughput.bench import Bench
    from pipelines.throughput.loader import loader_arguments
    b = Bench(parse_args(["--data", str(tmp_path), *given]), tmp_path / "v", tmp_path / "g")
    arguments = loader_arguments(b, "stream", "nvdec", 16)
    assert arguments.get("prefetch_queue_depth") == expected


@pytest.mark.parametrize("pattern, settings, warmup", [
    ("stream", {"stream_lead": 60, "stream_decoding": True}, 10 + 2 * (60 + 30)),
    ("stream", {"stream_lead": 30, "stream_decoding": True}, 10 + 2 * (30 + 30)),
    ("stream", {"stream_lead": 30, "stream_decoding": False}, 10),
    ("stream", None, 10 + 2 * (2 * 30 + 30)),      # a loader process: the longest planned lead
    ("random", {"stream_lead": 30, "stream_decoding": True}, 10),
])
def test_the_loader_alone_is_timed_once_a_fresh_loaders_decodes_ahead_are_spent(pattern,
                                                                                settings, warmup):
    """A fresh stream loader has every GOP within its lead decoded while its pipeline starts; its
    first batches come at DALI's pace, above NVDEC's (a train row's "loader alone" was seen above
    the ceiling), and a model sized on them is too light for the loader the together phase meets.
    The loader-alone phase is timed past twice that store; random access decodes only
    decode_ahead batches ahead."""
    import argparse
    from pipelines.throughput.train import loader_warmup
    a = argparse.Namespace(train_warmup=10, stream_lead=30, gop=30)
    assert loader_warmup(a, settings, pattern) == warmup


@pytest.mark.parametrize("given, threads", [([], 24), (["--host_threads", "16"], 16)])
def test_host_threads_are_what_a_budget_plans_for_gops_on_the_host(monkeypatch, tmp_path, given,
                                                                   threads):
    """--host_threads sets the most decode threads a budget plans where it keeps stream slots'
    GOPs on the host (the benchmark's set within 6 GiB), for the A/B rows of that plan; without
    it, the library's."""
    from dali_gop import _budget
    from dali_gop.backends._nvdec import RING_FRAMES
    from pipelines.throughput.__main__ import parse_args, set_run_defaults
    from test_budget import BenchShape, nvdec_options
    monkeypatch.setattr(_budget, "HOST_THREADS", _budget.HOST_THREADS)
    set_run_defaults(parse_args(["--data", str(tmp_path), *given]))
    source = BenchShape()
    wanted = _budget.Choice(30, 2, True, threads=48, sessions="own", kept_gops="device")
    chosen, held = _budget.fit(6 * 2**30, source, wanted,
                               **nvdec_options(source, ring_frames=RING_FRAMES))
    assert (chosen.kept_gops, chosen.threads) == ("host", threads)
    assert sum(held.values()) <= 6 * 2**30
