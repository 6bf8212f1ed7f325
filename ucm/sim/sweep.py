"""Collect a ``-m`` sweep of ``python -m ucm.sim`` into one CSV and one plot.

``SweepCollector`` is a Hydra callback (``hydra.callbacks`` in ``conf/sim.yaml``). At the end of
a multirun it reads every job's results file under the sweep folder (whatever launcher ran
them: basic, joblib, or a cluster launcher writing to a shared folder), writes
``<sweep dir>/sweep.csv`` (one row per job) and ``<sweep dir>/sweep.png`` (hit ratio and
prefix hit ratio against capacity, one line per policy and trace/mode).
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

COLUMNS = ["trace", "mode", "eviction", "admission", "capacity_blocks", "capacity_fraction", "accesses",
           "hits", "hit_ratio", "prefix_hit_ratio", "prefix_block_hit_ratio", "bytes_loaded", "bytes_stored",
           "prefill_s_saved", "belady_hit_ratio", "belady_prefix_hit_ratio", "elapsed_s", "accesses_per_s"]


def collect(sweep_dir: str, results_file: str = "result.json") -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(sweep_dir, "**", results_file), recursive=True)):
        try:
            with open(path, encoding="utf-8") as f:
                r = json.load(f)
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        r["job_dir"] = os.path.relpath(os.path.dirname(path), sweep_dir)
        rows.append(r)
    rows.sort(key=lambda r: (str(r.get("trace")), str(r.get("mode")), str(r.get("eviction")),
                             str(r.get("admission")), r.get("capacity_blocks") or 0))
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    extra = sorted({k for r in rows for k, v in r.items() if k not in COLUMNS and not isinstance(v, (dict, list))})
    cols = COLUMNS + extra
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})


def plot(rows: list[dict], path: str, x: str = "capacity_blocks") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((os.path.basename(str(r.get("trace"))), r.get("mode")), []).append(r)
    metrics = [("hit_ratio", "block hit ratio"), ("prefix_hit_ratio", "prefix hit ratio (token-weighted)")]
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4 * len(groups)), squeeze=False)
    for gi, ((trace, mode), rs) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        admissions = {r.get("admission") for r in rs}
        lines: dict[str, list] = {}
        for r in rs:
            label = r.get("eviction") if len(admissions) == 1 else f"{r.get('eviction')}+{r.get('admission')}"
            lines.setdefault(label, []).append(r)
        for mi, (m, title) in enumerate(metrics):
            ax = axes[gi][mi]
            for label, pts in sorted(lines.items()):
                pts = sorted(pts, key=lambda r: r.get(x) or 0)
                style = "k--" if label.startswith("belady") else "-o"
                ax.plot([p.get(x) for p in pts], [p.get(m) for p in pts], style, label=label, markersize=3)
            ax.set_xlabel(x)
            ax.set_ylabel(title)
            ax.set_title(f"{trace} ({mode})")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class SweepCollector(Callback):
    def __init__(self, csv_name: str | None = None, plot_name: str | None = None) -> None:
        self.csv_name = csv_name
        self.plot_name = plot_name

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        sweep = config.get("sweep") or {}
        results_file = str(config.get("results_file", "result.json"))
        rows = collect(sweep_dir, results_file)
        if not rows:
            log.warning("sweep collector: no %s under %s", results_file, sweep_dir)
            return
        csv_path = os.path.join(sweep_dir, self.csv_name or str(sweep.get("csv", "sweep.csv")))
        write_csv(rows, csv_path)
        png_path = os.path.join(sweep_dir, self.plot_name or str(sweep.get("plot", "sweep.png")))
        try:
            plot(rows, png_path, str(sweep.get("x", "capacity_blocks")))
        except ImportError:
            log.warning("matplotlib is not installed: no plot (pip install matplotlib)")
            png_path = None
        print(json.dumps({"sweep_csv": csv_path, "sweep_plot": png_path, "jobs": len(rows)}), flush=True)
