#!/usr/bin/env python3
"""Plot a prefix_ttft_<gpu>_<date>.json: TTFT per column per input length, one panel per concurrency.

    python3 bench/plot_prefix_ttft.py RESULT.json [-o RESULT.png]
(bench/prefix_ttft.py --mode table calls plot() itself.) Log scale: full compute is 5-30x the hits.
"""
from __future__ import annotations

import argparse
import json

COLUMNS = [  # (row key, label, colour): GPU baselines grey, native blue, ucm green/orange
    ("full_s", "full compute", "#555555"), ("hbm80_s", "HBM 80%", "#999999"), ("hbm100_s", "HBM 100%", "#cccccc"),
    ("native80_s", "native 80%", "#1f77b4"), ("native100_s", "native 100%", "#9ecae1"),
    ("native_best80_s", "native best 80%", "#3f3fbf"), ("native_best100_s", "native best 100%", "#a6a6e6"),
    ("ucm80_s", "ucm DRAM 80%", "#2ca02c"), ("ucm100_s", "ucm DRAM 100%", "#98df8a"),
    ("ucm_disk80_s", "ucm disk 80%", "#ff7f0e"),
    ("ucm_async80_s", "ucm async 80%", "#17becf"), ("ucm_async100_s", "ucm async 100%", "#9edae5"),
    ("ucm_batched80_s", "ucm batched 80%", "#8c564b"), ("ucm_batched100_s", "ucm batched 100%", "#c49c94"),
]


def plot(res: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    if not rows:  # e.g. a --decode-only run: no TTFT to plot
        return
    concs = sorted({r["concurrency"] for r in rows})
    lengths = sorted({r["input_tokens"] for r in rows})
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(concs), figsize=(5.5 * len(concs), 4.5), sharey=True, squeeze=False)
    width = 0.8 / max(1, len(cols))
    for ax, c in zip(axes[0], concs):
        by_len = {r["input_tokens"]: r for r in rows if r["concurrency"] == c}
        for j, (key, label, colour) in enumerate(cols):
            xs, ys = [], []
            for i, L in enumerate(lengths):
                v = by_len.get(L, {}).get(key)
                if v is not None:
                    xs.append(i - 0.4 + (j + 0.5) * width)
                    ys.append(v)
            ax.bar(xs, ys, width, label=label, color=colour)
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
        ax.set_xlabel("input tokens")
        ax.set_title(f"concurrency {c}")
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("TTFT (s), median of reps")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"Prefix-hit TTFT, {res['gpu']}, vLLM {res['vllm']}, {res['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("result")
    ap.add_argument("-o", "--out")
    a = ap.parse_args()
    with open(a.result) as f:
        res = json.load(f)
    plot(res, a.out or a.result.rsplit(".", 1)[0] + ".png")


if __name__ == "__main__":
    main()
