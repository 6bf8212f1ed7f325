"""One table and one plot from several ``dram_bandwidth.py`` results of one machine (e.g. the A / B runs of
``gpu_session.sh check``: the defaults, then one ``UCM_*`` switch changed each).

    python bench/bandwidth_table.py --out bench/results/dram_bandwidth_h200_2026-11-28_190a086 \
        bench/results/dram_bandwidth_h200_2026-11-28_190a086/bw_*.json

Each result is named by its ``UCM_*`` environment (recorded since 2026-11-28, fourteenth session), else by
its file name (``bw_<name>.json``). Writes ``<out>/bandwidth.md`` (date, GPU, torch, commands; per result
and layout the dump and load GB/s, their ratio to the plain pinned copy of the same run and the launch
ms) and ``<out>/bandwidth.png`` (the ratios, one group of bars per layout, the 0.9 target drawn).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import host_speed  # noqa: E402

TARGET = 0.9  # issue 5: both directions at >= 90 % of the plain pinned copy


def label_of(path: str, res: dict) -> str:
    env = res.get("env")
    if env is not None:
        return ", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "defaults"
    m = re.match(r"bw_(.+)\.json$", os.path.basename(path))
    return m.group(1) if m else os.path.basename(path)


def load(paths: list[str]) -> list[tuple[str, dict]]:
    out = []
    for p in paths:
        with open(p) as f:
            res = json.load(f)
        out.append((label_of(p, res), res))
    return out


def markdown(results: list[tuple[str, dict]], layouts: list[str]) -> str:
    first = results[0][1]
    lines = [f"# Dump / load bandwidth through UcmDramStore: {first.get('gpu')}, torch {first.get('torch')}", "",
             f"{len(results)} runs, {first.get('date')} onwards; each against the plain pinned copy of its own run. "
             f"Target (issue 5): >= {TARGET} of plain in both directions.", ""]
    for name, res in results:
        host = f"; host: {host_speed.summary(res['host_speed'])}" if res.get("host_speed") else ""
        lines.append(f"- `{name}`: `{res.get('command')}` (plain h2d {res.get('plain_h2d_gbps', 0):.1f}, "
                     f"d2h {res.get('plain_d2h_gbps', 0):.1f} GB/s{host})")
    lines += ["", "| run | layout | api | dump GB/s | x plain | launch ms | load GB/s | x plain | launch ms |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, res in results:
        for r in res["rows"]:
            if r["layout"] not in layouts:
                continue
            lines.append(f"| {name} | {r['layout']} | {r['api']} | {r['dump_gbps']:.2f} | {r['dump_ratio']:.2f} | "
                         f"{r['dump_launch_ms']:.2f} | {r['load_gbps']:.2f} | {r['load_ratio']:.2f} | "
                         f"{r['load_launch_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[tuple[str, dict]], layouts: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    width = 0.8 / max(1, len(results))
    for ax, direction in zip(axes, ("dump", "load")):
        for i, (name, res) in enumerate(results):
            by = {r["layout"]: r[f"{direction}_ratio"] for r in res["rows"]}
            ax.bar([x + i * width for x in range(len(layouts))], [by.get(lay, 0.0) for lay in layouts], width,
                   label=name)
        ax.axhline(TARGET, color="k", linestyle="--", linewidth=1)
        ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(layouts))])
        ax.set_xticklabels(layouts, rotation=20, fontsize=8)
        ax.set_title(f"{direction} / plain pinned copy")
        ax.set_ylim(0, 1.1)
    axes[0].set_ylabel("ratio")
    axes[1].legend(fontsize=7, loc="lower right")
    first = results[0][1]
    fig.suptitle(f"UcmDramStore bandwidth: {first.get('gpu')}, torch {first.get('torch')}, {first.get('date')}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="dram_bandwidth.py JSON files (one machine)")
    ap.add_argument("--out", required=True, help="folder for bandwidth.md and bandwidth.png")
    ap.add_argument("--layouts", default="vllm,vllm/seq,vllm/frag",
                    help="layouts to show (comma-separated; dram_bandwidth.py's names)")
    a = ap.parse_args(argv)
    results = load(sorted(a.results))
    layouts = a.layouts.split(",")
    os.makedirs(a.out, exist_ok=True)
    md = markdown(results, layouts)
    with open(os.path.join(a.out, "bandwidth.md"), "w") as f:
        f.write(md)
    plot(results, layouts, os.path.join(a.out, "bandwidth.png"))
    print(md)


if __name__ == "__main__":
    main()
