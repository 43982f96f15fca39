"""The run's output: every rank's rows combined, the JSON document, the tables on stdout, and the
chart next to the JSON."""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from pipelines.throughput.measure import Result


def _combine_details(details: list[dict]) -> dict:
    """Rank 0's details, with the train figures over all ranks: frames/s summed, the overlap
    (and the model alone's drift) the worst rank's."""
    out = dict(details[0])
    if "train" in out:
        train = dict(out["train"])
        for key in train:
            if key.endswith("_fps"):
                train[key] = sum(d["train"][key] for d in details)
            elif key in ("overlap", "serial", "model_drift"):
                train[key] = max(d["train"][key] for d in details)
        out["train"] = train
    return out


def combine(per_rank: list[list[Result]]) -> list[Result]:
    """Each row over all ranks: frames/s, frames and CPU cores summed, seconds and peak GPU memory
    (per GPU) the largest, decoder utilization (per GPU) the mean."""
    names = [[r.name for r in rows] for rows in per_rank]
    if any(n != names[0] for n in names):
        raise RuntimeError(f"ranks measured different things: {names}")
    combined = []
    for same in zip(*per_rank):
        peaks = [r.peak_gpu_mib for r in same if r.peak_gpu_mib is not None]
        busy = [r.nvdec_busy for r in same if r.nvdec_busy is not None]
        combined.append(replace(same[0], frames_per_s=sum(r.frames_per_s for r in same),
                                frames=sum(r.frames for r in same),
                                seconds=max(r.seconds for r in same),
                                cpu_cores=sum(r.cpu_cores for r in same),
                                peak_gpu_mib=max(peaks) if peaks else None,
                                nvdec_busy=sum(busy) / len(busy) if busy else None,
                                details=_combine_details([r.details for r in same])))
    return combined


def make_report(per_rank: list[list[Result]], *, device: str, args: argparse.Namespace | dict,
                command: str = "") -> dict:
    """The JSON document: the combined rows (one rank: its own), and each rank's."""
    results = combine(per_rank)
    ceilings = [r.frames_per_s for r in results if r.name.startswith("NVDEC ceiling")]
    depths = [r.details["mean_decode_depth"] for r in results
              if "mean_decode_depth" in r.details]
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    return {"device": device, "date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
            "world_size": len(per_rank), "command": command,
            "args": {k: str(v) for k, v in args.items()},
            "ceiling": max(ceilings) if ceilings else None,
            "random_decode_depth": depths[0] if depths else None,
            "results": [asdict(r) for r in results],
            "ranks": [[asdict(r) for r in rows] for rows in per_rank]}


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def format_table(report: dict) -> str:
    """Every row; several ranks add a frames/s column per rank."""
    ranks = report["ranks"] if report["world_size"] > 1 else []
    total = "frames/s, all ranks" if ranks else "frames/s"
    head = ["measurement", *(f"rank {i} frames/s" for i in range(len(ranks))), total,
            "CPU cores", "peak GPU MiB", "NVDEC busy %"]
    return _markdown(head, [
        [r["name"], *(_number(rows[i]["frames_per_s"]) for rows in ranks),
         _number(r["frames_per_s"]), _number(r["cpu_cores"], 1), _number(r["peak_gpu_mib"]),
         _number(r.get("nvdec_busy"))]
        for i, r in enumerate(report["results"])])


def results_with(report: dict, key: str) -> list[dict]:
    """The rows whose details have ``key`` ("train", "budget"), in run order."""
    return [r for r in report["results"] if key in r.get("details", {})]


def format_train_table(report: dict) -> str:
    """The train rows' three phases and their overlap ("" without train rows)."""
    rows = results_with(report, "train")
    if not rows:
        return ""
    head = ["beside a training step", "model alone frames/s", "loader alone frames/s",
            "together frames/s", "together / max(model, loader)", "serial would be",
            "together: next() ms a step", "training thread on a core %, alone / together",
            "training thread waiting for a core %, alone / together", "NVDEC busy %",
            "peak GPU MiB"]
    return _markdown(head, [
        [f"{r['name']}: {r['note']}", _number(t["model_fps"]), _number(t["loader_fps"]),
         _number(t["together_fps"]), _number(t["overlap"], 2), _number(t["serial"], 2),
         _number(t.get("next_ms"), 1), _alone_together(t, "on_core"),
         _alone_together(t, "waiting_for_core"), _number(r.get("nvdec_busy")),
         _number(r["peak_gpu_mib"])]
        for r in rows for t in [r["details"]["train"]]])


def _alone_together(train: dict, share: str) -> str:
    """A share of the training thread's wall time (on a core, waiting for one), alone / beside
    the loader ("" in runs from before it was measured)."""
    if f"model_{share}" not in train:
        return ""
    return f"{100 * train[f'model_{share}']:.0f} / {100 * train[f'together_{share}']:.0f}"


def format_budget_table(report: dict) -> str:
    """Frames/s and measured peak against each memory budget ("" without budget rows)."""
    rows = results_with(report, "budget")
    if not rows:
        return ""
    head = ["access", "memory_budget", "frames/s", "peak GPU MiB", "within it", "ran with"]
    cells = []
    for r in rows:
        given, peak, settings = r["details"]["budget"], r["peak_gpu_mib"], r["details"]["settings"]
        budget = settings.get("memory_budget")
        within = "-" if peak is None or budget is None else \
            ("yes" if peak * 2**20 <= budget else "NO")
        chosen = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "memory_budget")
        cells.append([r["access"], given, _number(r["frames_per_s"]), _number(peak), within,
                      chosen])
    return _markdown(head, cells)


def targets(report: dict) -> str:
    """The loader's stream and random figures against the ceiling (issue 4's targets)."""
    by_name = {r["name"]: r for r in report["results"]}
    ceiling, depth = report["ceiling"], report["random_decode_depth"]
    stream, random_ = by_name.get("dali-gop stream (nvdec)"), by_name.get("dali-gop random (nvdec)")
    lines = []
    if ceiling and stream:
        lines.append(f"stream: {stream['frames_per_s']:,.0f} frames/s = "
                     f"{stream['frames_per_s'] / ceiling:.0%} of the ceiling {ceiling:,.0f}")
    if ceiling and depth and random_:
        lines.append(f"random: {random_['frames_per_s']:,.0f} frames/s = "
                     f"{random_['frames_per_s'] / (ceiling / depth):.0%} of ceiling / depth "
                     f"({ceiling / depth:,.0f})")
    return "\n".join(lines)


def write_outputs(report: dict, out: Path, chart: Path) -> None:
    """The JSON, then the chart (skipped, saying how to draw it later, without matplotlib)."""
    out.write_text(json.dumps(report, indent=1))
    print(f"\nresults: {out}")
    if not report["results"]:
        return
    try:
        from pipelines.throughput.chart import draw
        draw(report, chart)
        print(f"chart: {chart}")
    except ImportError:
        print("no chart: matplotlib is missing (pip install -e '.[bench]'); "
              f"then python -m pipelines.throughput.chart {out}")
