"""Bar chart of a throughput run (pipelines.throughput's JSON): frames/s per measurement, stream
access next to random access.

    python -m pipelines.chart throughput.json [-o throughput.png]

matplotlib is an optional dependency (``pip install -e '.[bench]'``), imported only when drawing.
"""
from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

ACCESS_COLORS = {"stream": "#2b6cb0", "random": "#dd6b20"}
LOG_SCALE_RANGE = 30    # largest / smallest bar beyond which the axis is logarithmic


def bars(report: dict) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Groups in measurement order, and per access pattern {group: frames/s}.

    Results of runs before measurements named their method and access are drawn one group each.
    """
    groups: list[str] = []
    values: dict[str, dict[str, float]] = {access: {} for access in ACCESS_COLORS}
    for r in report["results"]:
        group = r.get("method") or r["name"]
        access = r.get("access") or ("random" if "random" in r["name"] else "stream")
        if group not in groups:
            groups.append(group)
        values[access][group] = r["frames_per_s"]
    return groups, {access: v for access, v in values.items() if v}


def subtitle(report: dict) -> str:
    """The data set and batch sizes, from the run's options."""
    a = report.get("args", {})
    if not a:
        return ""
    return (f"{a['clips']} clips x {a['cameras']} cameras, {a['codec']} "
            f"{a['width']}x{a['height']}, GOP {a['gop']}, B-frames {a['bframes']}; stream group_num {a['group_num']}, "
            f"random {a['random_group_num']}")


def _offset(values: dict[str, dict[str, float]], group: str, access: str) -> float:
    """Bar position within its group, in bar widths from the centre: a group's bars sit side by
    side, a lone bar in the middle."""
    present = [a for a, by_group in values.items() if by_group.get(group, 0) > 0]
    return present.index(access) - (len(present) - 1) / 2


def draw(report: dict, path: str | Path) -> Path:
    """Write the chart as a PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")      # files only: no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    groups, values = bars(report)
    if not groups:
        raise ValueError("the report has no results to draw")
    world = report.get("world_size", 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.25 * len(groups) + 2), 5.5))
    width = 0.8 / len(values)
    for access, by_group in values.items():
        shown = [g for g in groups if by_group.get(g, 0) > 0]
        xs = [groups.index(g) + _offset(values, g, access) * width for g in shown]
        heights = [by_group[g] for g in shown]
        drawn = ax.bar(xs, heights, width, label=access, color=ACCESS_COLORS[access])
        ax.bar_label(drawn, labels=[f"{h:,.0f}" for h in heights], fontsize=8, padding=2)
    heights = [h for by_group in values.values() for h in by_group.values() if h > 0]
    log = bool(heights) and max(heights) / min(heights) > LOG_SCALE_RANGE
    if log:
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.set_xticks(range(len(groups)), [textwrap.fill(g, 18) for g in groups], fontsize=8)
    ax.set_ylabel("frames/s" + (f", sum over {world} GPUs" if world > 1 else "")
                  + (" (log scale)" if log else ""))
    gpus = f" x{world}" if world > 1 else ""
    ax.set_title(f"Frames delivered per second: {report['device']}{gpus}, {report['date']}\n"
                 f"{subtitle(report)}", fontsize=10)
    ax.legend(title="access")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.chart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a JSON file written by pipelines.throughput")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="PNG to write (default: the results file with .png)")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.results.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{args.results}: cannot read the results ({e})") from None
    print(draw(report, args.out or args.results.with_suffix(".png")))


if __name__ == "__main__":
    main()
