"""``python -m ucm.sim``: the trace-replay simulator as a Hydra app (config ``conf/sim.yaml``).

Prints one JSON object as its last line and writes it to ``<hydra output dir>/<results_file>``.
With ``-m`` a sweep runs one job per combination; ``ucm.sim.sweep.SweepCollector`` (a Hydra
callback in ``conf/sim.yaml``) gathers every job's result into one CSV and one PNG at the end.
"""
from __future__ import annotations

import json
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ucm.sim.core import load_trace, resolve_capacity, simulate


def run(cfg: DictConfig) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    if c.get("trace") in (None, "", "???"):
        raise ValueError("give trace=<path to a Mooncake .jsonl> (or trace=zipf|scan|conversation)")
    trace = load_trace(str(c["trace"]), block_tokens=int(c["block_tokens"]),
                       limit_requests=c.get("limit_requests"),
                       synthetic=(c.get("synthetic") or {}).get(str(c["trace"])) or {})
    cap = resolve_capacity(trace, c.get("capacity_blocks"), c.get("capacity_bytes"), c.get("capacity_fraction"),
                           int(c["block_bytes"]))
    ev = c["store"]["eviction"]
    ad = c["store"]["admission"]
    result = simulate(
        trace, mode=str(c["mode"]), eviction=ev["name"], admission=ad["name"], capacity_blocks=cap,
        eviction_params=ev.get("params") or {}, admission_params=ad.get("params") or {},
        lower_tiers=c.get("lower_tiers") or [], tier_name=str(c.get("tier_name", "dram")),
        block_tokens=int(c["block_tokens"]), block_bytes=int(c["block_bytes"]),
        prefill_tokens_per_s=float(c["prefill_tokens_per_s"]), tier_gb_per_s=[float(c["pcie_gb_per_s"])],
        progress=bool(c.get("progress", True)), with_belady=bool(c.get("with_belady", False)),
        skip_partial=bool(c.get("skip_partial", False)))
    result["trace"] = str(c["trace"])
    result["trace_name"] = trace.name
    try:
        out_dir = HydraConfig.get().runtime.output_dir
    except ValueError:
        out_dir = None
    if out_dir:
        with open(os.path.join(out_dir, str(c.get("results_file", "result.json"))), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return result


@hydra.main(version_base=None, config_path="pkg://ucm.conf", config_name="sim")
def main(cfg: DictConfig) -> None:
    try:
        result = run(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ucm.sim: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
