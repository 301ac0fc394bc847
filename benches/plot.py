#!/usr/bin/env python3
"""Draw the latency distributions of a `cargo xtask bench` results file into one PNG.

    python plot.py benches/results/results.json benches/results/latency.png

One panel per section, one horizontal box per row (whiskers at the 5th and 95th
percentiles, the median marked), on a log scale so the floor and the peers fit together.
Needs matplotlib (benches/peers/requirements.txt).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

TITLES = {
    "cold_start": "Cold start: spawner run echo, the floor and the peers",
    "agent_exec_alone": "agent-exec alone (echo 14 KB, bulky 4 MB)",
    "store_scaling": "spawner run testing get, by store size",
    "hooks": "Hook round trip (sh -c, as Claude Code runs hooks)",
    "broker": "Inference: in-process ort vs a round trip through gpu-broker",
    "daemon": "Through the daemon (run of echo), by clients",
    "daemon_inference": "Through the daemon: run of sentiment (one inference)",
}


def label(command: str) -> str:
    """A short label: paths cut to their last part, at most 60 characters."""
    shown = []
    for word in command.split():
        key, eq, value = word.rpartition("=")
        if value.startswith(("/", "./")):
            value = value.rsplit("/", 1)[-1]
        shown.append(f"{key}{eq}{value}")
    text = " ".join(shown)
    return text if len(text) <= 60 else text[:57] + "..."


def main() -> None:
    results_path, png_path = sys.argv[1], sys.argv[2]
    with open(results_path) as f:
        results = json.load(f)
    sections = [s for s in results["sections"] if any(r.get("times_ms") for r in s["rows"])]
    heights = [max(1.2, 0.45 * len(s["rows"]) + 0.8) for s in sections]
    fig, axes = plt.subplots(
        len(sections), 1, figsize=(11, sum(heights)), gridspec_kw={"height_ratios": heights}
    )
    if len(sections) == 1:
        axes = [axes]
    for ax, section in zip(axes, sections):
        rows = [r for r in section["rows"] if r.get("times_ms")]
        ax.boxplot(
            [r["times_ms"] for r in rows],
            orientation="horizontal",
            whis=(5, 95),
            showfliers=False,
            medianprops={"color": "black"},
        )
        ax.set_yticks(range(1, len(rows) + 1), [label(r["command"]) for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        # Within one decade there is no major tick to label: label the minor ones then.
        low, high = ax.get_xlim()
        narrow = high / low < 10
        ax.xaxis.set_minor_formatter(
            ticker.FuncFormatter(lambda v, _: f"{v:g}") if narrow else ticker.NullFormatter()
        )
        ax.set_xlabel("ms (log scale)", fontsize=8)
        ax.set_title(TITLES.get(section["id"], section["id"]), fontsize=9, loc="left")
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle(f"{results['command']} on {results['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"wrote {png_path}")


if __name__ == "__main__":
    main()
