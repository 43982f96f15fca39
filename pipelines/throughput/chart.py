"""Bar charts of a throughput run (the benchmark's JSON): frames/s per measurement, stream access
next to random access; when the run has train rows, the loader beside a training step (model
alone, loader alone, together) in a panel of its own; and when it has budget rows, frames/s
against the memory budget, a line per access, each point labelled with the peak it took.

    python -m pipelines.throughput.chart throughput.json [-o throughput.png]

matplotlib is an optional dependency (``pip install -e '.[bench]'``), imported only when drawing.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

from dali_gop.errors import ConfigError
from pipelines.throughput.cli import ArgumentParser, entry
from pipelines.throughput.report import results_with

ACCESS_COLORS = {"stream": "#2b6cb0", "random": "#dd6b20"}
PHASE_COLORS = {"model alone": "#718096", "loader alone": "#2b6cb0", "together": "#38a169"}
LOG_SCALE_RANGE = 30    # largest / smallest bar beyond which the axis is logarithmic


def bars(report: dict) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Groups in measurement order, and per access pattern {group: frames/s}; train rows are
    the second panel's."""
    groups: list[str] = []
    values: dict[str, dict[str, float]] = {access: {} for access in ACCESS_COLORS}
    for r in report["results"]:
        if "train" in r.get("details", {}) or "budget" in r.get("details", {}):
            continue
        group = r.get("method") or r["name"]
        if group not in groups:
            groups.append(group)
        values[r.get("access", "stream")][group] = r["frames_per_s"]
    return groups, {access: v for access, v in values.items() if v}


def subtitle(report: dict) -> str:
    """The data set and batch sizes, from the run's options."""
    a = report.get("args", {})
    if not a:
        return ""
    return (f"{a['clips']} clips x {a['cameras']} cameras, {a['codec']} {a['width']}x{a['height']}"
            f", GOP {a['gop']}, B-frames {a['bframes']}; stream group_num {a['group_num']}, "
            f"random {a['random_group_num']}")


def _grouped(ax, groups: list[str], series: dict[str, dict[str, float]],
             colors: dict[str, str]) -> None:
    """Bars of each series side by side within their group (a lone bar in the middle), labelled
    with their value; a logarithmic axis when they span more than LOG_SCALE_RANGE."""
    import matplotlib.ticker
    width = 0.8 / len(series)
    for name, by_group in series.items():
        shown = [g for g in groups if by_group.get(g, 0) > 0]
        xs = []
        for g in shown:
            present = [s for s, values in series.items() if values.get(g, 0) > 0]
            xs.append(groups.index(g) + (present.index(name) - (len(present) - 1) / 2) * width)
        heights = [by_group[g] for g in shown]
        drawn = ax.bar(xs, heights, width, label=name, color=colors[name])
        ax.bar_label(drawn, labels=[f"{h:,.0f}" for h in heights], fontsize=8, padding=2)
    heights = [h for by_group in series.values() for h in by_group.values() if h > 0]
    if heights and max(heights) / min(heights) > LOG_SCALE_RANGE:
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.set_xticks(range(len(groups)), [textwrap.fill(g, 18) for g in groups], fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _train_series(report: dict) -> tuple[list[str], dict[str, dict[str, float]]]:
    groups, series = [], {phase: {} for phase in PHASE_COLORS}
    for r in results_with(report, "train"):
        t = r["details"]["train"]
        group = f"{r['name']} (together / max: {t['overlap']:.2f})"
        groups.append(group)
        for phase, key in zip(PHASE_COLORS, ("model_fps", "loader_fps", "together_fps")):
            series[phase][group] = t[key]
    return groups, series


def _budget_lines(ax, rows: list[dict]) -> None:
    """Frames/s against the budget, a line per access; "none" (no budget) on the right."""
    import matplotlib.ticker
    labels = list(dict.fromkeys(r["details"]["budget"] for r in rows))
    for access, color in ACCESS_COLORS.items():
        mine = [r for r in rows if r.get("access", "stream") == access]
        if not mine:
            continue
        xs = [labels.index(r["details"]["budget"]) for r in mine]
        ys = [r["frames_per_s"] for r in mine]
        ax.plot(xs, ys, marker="o", color=color, label=access)
        for x, y, r in zip(xs, ys, mine):
            peak = r.get("peak_gpu_mib")
            if peak is not None:
                ax.annotate(f"{peak / 1024:.1f} GiB", (x, y), fontsize=7, xytext=(0, 5),
                            textcoords="offset points", ha="center")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("memory_budget (labels: peak device memory taken)", fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.grid(alpha=0.3)
    ax.set_title("within a memory budget (nvdec)", fontsize=9)
    ax.legend(title="access", fontsize=7, title_fontsize=8, loc="best")


def draw(report: dict, path: str | Path) -> Path:
    """Write the chart as a PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")      # files only: no display needed
    import matplotlib.pyplot as plt

    groups, values = bars(report)
    train_groups, train = _train_series(report)
    budgets = results_with(report, "budget")
    if not groups and not train_groups and not budgets:
        raise ConfigError("the report has no results to draw")
    panels = [p for p in ((groups, values), (train_groups, train)) if p[0]]
    widths = [max(len(p[0]), 2) for p in panels] + ([4] if budgets else [])
    fig, axes = plt.subplots(1, len(widths), squeeze=False,
                             figsize=(max(8.0, 1.25 * sum(widths) + 2), 5.5),
                             gridspec_kw={"width_ratios": widths})
    if budgets:
        _budget_lines(axes[0][-1], budgets)
    world = report.get("world_size", 1)
    frames = "frames/s" + (f", sum over {world} GPUs" if world > 1 else "")
    for ax, (panel_groups, series) in zip(axes[0], panels):
        training = series is train
        _grouped(ax, panel_groups, series, PHASE_COLORS if training else ACCESS_COLORS)
        ax.set_ylabel(frames + (" (log scale)" if ax.get_yscale() == "log" else ""))
        if training:
            ax.set_title("beside a training step (nvdec)", fontsize=9)
        ax.legend(title="phase" if training else "access", fontsize=7, title_fontsize=8,
                  loc="best")
    gpus = f" x{world}" if world > 1 else ""
    fig.suptitle(f"Frames delivered per second: {report['device']}{gpus}, {report['date']}\n"
                 f"{subtitle(report)}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = ArgumentParser(prog="python -m pipelines.throughput.chart", description=__doc__)
    parser.add_argument("results", type=Path, help="a JSON file written by pipelines.throughput")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="PNG to write (default: the results file with .png)")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.results.read_text())
    except ValueError as e:
        raise ConfigError(f"{args.results}: not a results file ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise ConfigError(f"{args.results}: not a results file of pipelines.throughput")
    try:
        print(draw(report, args.out or args.results.with_suffix(".png")))
    except ImportError:
        raise ConfigError("matplotlib is missing: pip install -e '.[bench]'") from None


if __name__ == "__main__":
    entry(main, "pipelines.throughput.chart")
