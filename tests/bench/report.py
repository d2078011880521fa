"""The one-page report of `make bench`: four plots (report.png) and a summary
(report.md), from the figures the benches left in OUT (run_all.py).

  failover time per probe interval, against the peers' detection times
  ns per packet against the number of rules (matcher, baseline, adversarial)
  flows moved on weight changes: steerd, the minimum, Maglev, resilient nexthops
  throughput per setup: median and the min-max band of the interleaved rounds

A panel whose bench did not run (or left no figures) says so instead of a plot.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# PEERS (docs/peers.md): default detection time of a dead link, seconds
PEER_DETECTION = {"FortiOS SD-WAN": 2.75, "Cisco BFD 1 s x 7": 7.0, "pfSense/dpinger": 15.0,
                  "mwan3": 65.0}
# "<setup>   <median Mbit/s>  <x none>   <min>-<max>" in the throughput table
THROUGHPUT_ROW = re.compile(r"^(\S.{57}) +(\d+) +[\d.]+ +(\d+)-(\d+)$", re.M)
TRIAL = re.compile(r"interval\s+(\S+)\s+trial\s+\d+:.*after\s+([\d.]+|inf)\s*ms")


def load(out: Path, name: str) -> dict[str, Any] | None:
    p = out / f"{name}.json"
    if not p.exists():
        return None
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def failover_trials(out: Path) -> dict[str, list[float]]:
    """Per probe interval, every trial's failover time in seconds (from the
    failover bench's output: it prints one line per trial)."""
    txt = out / "failover.txt"
    trials: dict[str, list[float]] = {}
    if txt.exists():
        for m in TRIAL.finditer(txt.read_text(encoding="utf-8")):
            trials.setdefault(m.group(1), []).append(float(m.group(2)) / 1000)
    return trials


def _missing(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: no figures\n(bench not run or failed)", ha="center", va="center",
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_failover(ax, trials: dict[str, list[float]]) -> None:
    ax.set_title("dead tunnel -> its flows elsewhere")
    if not trials:
        return _missing(ax, "failover")
    names = list(trials)
    ax.boxplot([trials[n] for n in names], whis=(0, 100))
    for i, n in enumerate(names, start=1):
        ax.scatter([i] * len(trials[n]), trials[n], s=8, alpha=0.5)
    ax.set_xticks(range(1, len(names) + 1), [f"steerd\n{n} probes" for n in names])
    for label, s in PEER_DETECTION.items():
        ax.axhline(s, ls="--", lw=0.8, color="grey")
        ax.text(len(names) + 0.45, s, label, va="bottom", ha="right", fontsize=7, color="dimgrey")
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log)")


def plot_rules(ax, d: dict | None) -> None:
    ax.set_title("rule matcher cost (BPF_PROG_TEST_RUN)")
    if not d:
        return _missing(ax, "rules")
    n = [r["rules"] for r in d["rows"]]
    x = [max(1, v) for v in n]  # 0 rules at x=1 on the log axis
    ax.plot(x, [r["baseline_ns"] for r in d["rows"]], "k:", marker="o", label="baseline (no matcher)")
    for col in ("no match", "last rule", "IPv6 rule"):
        pts = [(xi, r["cells"][col]) for xi, r in zip(x, d["rows"]) if col in r["cells"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=col)
    if "adversarial_ns" in d:
        ax.scatter([10000], [d["adversarial_ns"]], marker="x", s=60, color="red",
                   label=f"adversarial ({d['adversarial_ns']} ns)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rules (0 plotted at 1)")
    ax.set_ylabel("ns per packet (log)")
    ax.legend(fontsize=7)


def plot_rebalance(ax, d: dict | None) -> None:
    ax.set_title("flows moved per weight change, x the minimum")
    if not d:
        return _missing(ax, "rebalance")
    methods = ["steerd", "maglev", "resilient-nh"]
    counts = [row["tunnels"] for row in d["rows"]]
    w = 0.8 / len(methods)
    for j, m in enumerate(methods):
        ys = [row["x_min_flows"].get(m) for row in d["rows"]]
        xs = [i + j * w for i, y in enumerate(ys) if y is not None]
        ax.bar(xs, [y for y in ys if y is not None], width=w, label=m)
    ax.axhline(1.0, color="black", lw=1, label="minimum (1/2 sum |delta share|)")
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(counts))], [f"{k} tunnels" for k in counts])
    ax.set_ylim(0.9, max(1.25, max(max(r["x_min_flows"].values()) for r in d["rows"]) + 0.02))
    ax.set_ylabel("mean flows moved / mean minimum")
    ax.legend(fontsize=7)


def throughput_figures(out: Path) -> dict[str, tuple[float, float, float]]:
    """Per setup: (median, min, max) Mbit/s of the interleaved rounds, from the
    throughput bench's figures or, when it stopped before recording them (its
    new-connections part failed), from the table it printed."""
    d = load(out, "throughput")
    if d:
        return {d["labels"][m]: (d["median_mbps"][m], min(v), max(v)) for m, v in d["runs_mbps"].items()}
    txt = out / "throughput.txt"
    rows = THROUGHPUT_ROW.findall(txt.read_text(encoding="utf-8")) if txt.exists() else []
    return {label.strip(): (float(med), float(lo), float(hi)) for label, med, lo, hi in rows}


def plot_throughput(ax, figures: dict[str, tuple[float, float, float]]) -> None:
    ax.set_title("gateway throughput (iperf3), median and min-max")
    if not figures:
        return _missing(ax, "throughput")
    labels = list(figures)
    med = [figures[k][0] / 1000 for k in labels]
    lo = [m - figures[k][1] / 1000 for m, k in zip(med, labels)]
    hi = [figures[k][2] / 1000 - m for m, k in zip(med, labels)]
    ax.bar(range(len(labels)), med, yerr=[lo, hi], capsize=4, color="tab:blue")
    ax.set_xticks(range(len(labels)), [k.replace(", ", ",\n", 1) for k in labels], fontsize=7)
    ax.set_ylabel("Gbit/s")


def summary_lines(out: Path, ok: dict[str, bool]) -> list[str]:
    lines = ["# `make bench` report", "",
             "Written by `make bench` (tests/bench/run_all.py, tests/bench/report.py) from the "
             "benches' own output in this run; raw outputs in `bench-out/`.", "",
             "| bench | result | goal lines |", "|---|---|---|"]
    for name, good in ok.items():
        txt = out / f"{name}.txt"
        goals = [ln.strip() for ln in txt.read_text(encoding="utf-8").splitlines()
                 if "goal" in ln.lower()] if txt.exists() else []
        cell = "<br>".join(g.replace("|", "\\|") for g in goals) or "-"
        lines.append(f"| {name} | {'OK' if good else 'FAILED'} | {cell} |")
    lines += ["", "![make bench plots](report.png)", ""]
    return lines


def write(out: Path, dest: Path, ok: dict[str, bool]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    plot_failover(axes[0][0], failover_trials(out))
    plot_rules(axes[0][1], load(out, "rules"))
    plot_rebalance(axes[1][0], load(out, "rebalance"))
    plot_throughput(axes[1][1], throughput_figures(out))
    fig.suptitle("steerd: make bench")
    fig.tight_layout()
    png = dest / "report.png"
    fig.savefig(png, dpi=80)
    md = dest / "report.md"
    md.write_text("\n".join(summary_lines(out, ok)), encoding="utf-8")
    return [md, png]


if __name__ == "__main__":   # re-draw from an earlier run: report.py [OUT [DEST]]
    import sys
    o = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out")
    d = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/bench")
    print(*write(o, d, json.loads((o / "outcomes.json").read_text(encoding="utf-8"))), sep="\n")
