#!/usr/bin/env python3
"""Prefix-hit TTFT of real vLLM: GPU prefix cache, vLLM's native CPU offloading and ucm (issue 5).

Usage:
  python3 bench/prefix_ttft.py --model DIR [--modes full,native,native_best,ucm,ucm_disk,ucm_async,ucm_batched]
        [--lengths 4000,8000,16000] [--concurrency 1,2,4] [--reps 3] [--hit 0.8] [--out DIR] ...
  python3 bench/prefix_ttft.py --mode table --out DIR [--from DIR2,DIR3]     (merge parts, table, plot)

Every request has max_tokens=1, so its latency (finish - submit) is its time to first token. A cell
is (input length L, concurrency c): c distinct prompts of L random token ids, all queued before the
engine's first step (the engine core runs in this process, VLLM_ENABLE_V1_MULTIPROCESSING=0, and the
engine is stepped by hand: `--no-inproc-engine` gives vLLM's own engine-core process instead, where
the first step may start before all prompts arrive). A pass's value is the mean over its c requests;
a cell's value is the median over --reps repetitions with fresh prompts (every repetition is kept).

Each mode runs in its own engine, in its own subprocess (GPU memory is freed between them), and
writes --out/prefix_ttft_part_<mode>.json after every cell (a mode cut off keeps its finished cells):
  full         no connector, vLLM prefix caching on: full compute (fresh prompts), HBM 100 % (the
               same prompts again), HBM 80 % (their first 80 % + 20 % new tokens).
  native       vLLM's OffloadingConnector {"cpu_bytes_to_use": --cpu-gib}, what
               kv_offloading_size/kv_offloading_backend="native" builds.
  native_best  the same + {"block_size": 256} and VLLM_USE_V2_MODEL_RUNNER=0 (the V1 runner's
               cross-layer KV layout: RESULTS-native-best.md in shared/gpu).
  ucm          UnifiedCacheConnectorV1, the seed's config: UcmDramStore, max_cache_size --cpu-gib.
  ucm_disk     UnifiedCacheConnectorV1 with the dram_disk chain; its DRAM holds one batch's hit but
               not the stored prefixes: after the store pass, fresh prompts fill DRAM so the stored
               blocks are demoted to disk (and their page cache dropped) before the timed 80 % pass.
               During that untimed push the disk's write backlog is lifted (victims past
               ``disk.max_write_backlog`` are dropped: with ucm's own backlog the push left the stored
               prompt 0 blocks on disk on the H200, 2026-11-29, twice -- first its tail was kept, then
               the previous prompt's victims still filled the queue), then every write is waited for.
  ucm_async    ucm with "ucm_load_mode": "async" (every hit loads between steps), columns
               ucm_async80_s / ucm_async100_s beside the default layer-wise ucm.
  ucm_batched  ucm with "ucm_layerwise_step_tokens": 0 (every hit of a step in that step, as vLLM
               batches HBM hits), columns ucm_batched80_s / ucm_batched100_s.
Connector modes, per repetition: fresh prompts with the connector on (full compute); a store pass
(prompts A and B, untimed); GPU prefix cache reset, so every hit must come from the connector;
100 % = A again; then A once more, now a GPU prefix-cache hit of the same engine (``own_hbm100``);
reset; 80 % = B[:80 %] + 20 % new tokens; then B[:80 %] + other new tokens, an 80 % GPU hit of the same
engine (``own_hbm80``); reset. The own-HBM passes put an HBM hit beside each connector hit in one
process, a few ms apart: on the H200 hosts a process's CPU speed moved 2.3 x between the modes'
processes of one session (bench/host_speed.py, 2026-11-29), which swamps launch-bound cells when a
connector's hit is compared with the full mode's HBM hit. The connector store is never
reset (prompts are fresh; vLLM 0.26 asserts on two connector resets with no step between them).

``--ucm-ab NAME=VALUE`` (mode ucm): each repetition runs the connector cell twice in the one engine, as
configured and with the scheduler's NAME switched to VALUE (``ab_*`` passes; the report's A / B table),
so a switch is judged in one process, by pairs of repetitions, not across the processes of two runs.

Then (also `--mode table`): prefix_ttft_<gpu>_<date>.json / .md / .png in --out (see bench/README.md).
"""
from __future__ import annotations

import argparse
from typing import Optional
import datetime
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import host_speed  # bench/ (this script's folder): stdlib-only at import
from gc_clock import GcClock  # bench/

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("full", "native", "native_best", "ucm", "ucm_disk", "ucm_async", "ucm_batched")
UCM_MODULE = "ucm.integration.vllm.uc_connector"
GiB = 1 << 30


class HostClock:
    """What the host's CPUs did during a pass (Linux ``/proc/stat``): the share of CPU time that was
    busy and the share stolen by the hypervisor (another VM on our cores), and this process's CPU
    seconds. On the H200 host the model's thread ran every op ~1.9x slower for whole cells
    (2026-11-28, cause not found): a pass that was slow for that reason should show it here."""

    @staticmethod
    def snapshot() -> tuple:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            v = []
        return v, time.process_time()

    @staticmethod
    def since(snap: tuple) -> dict:
        v0, p0 = snap
        v1, p1 = HostClock.snapshot()
        out = dict(process_cpu_s=round(p1 - p0, 4))
        if len(v0) >= 8 and len(v1) >= 8:
            d = [b - a for a, b in zip(v0, v1)]
            total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal (guest is in user)
            out.update(host_busy=round(1 - (d[3] + d[4]) / total, 3), host_steal=round(d[7] / total, 4))
        return out


# the passes each mode times, and the result column each one fills
MODE_COLUMNS = {
    "full": {"full": "full_s", "hbm80": "hbm80_s", "hbm100": "hbm100_s"},
    "native": {"hit80": "native80_s", "hit100": "native100_s"},
    "native_best": {"hit80": "native_best80_s", "hit100": "native_best100_s"},
    "ucm": {"hit80": "ucm80_s", "hit100": "ucm100_s"},
    "ucm_disk": {"hit80": "ucm_disk80_s"},
    "ucm_async": {"hit80": "ucm_async80_s", "hit100": "ucm_async100_s"},  # ucm with "ucm_load_mode": "async"
    "ucm_batched": {"hit80": "ucm_batched80_s", "hit100": "ucm_batched100_s"},  # no step budget
}
ROW_KEYS = ("input_tokens", "concurrency", "full_s", "hbm80_s", "hbm100_s", "native80_s", "native100_s",
            "native_best80_s", "native_best100_s", "ucm80_s", "ucm100_s", "ucm_disk80_s", "ucm100_bytes",
            "ucm_async80_s", "ucm_async100_s", "ucm_batched80_s", "ucm_batched100_s")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="run", choices=["run", "table"],
                    help="run: measure --modes, then merge; table: only merge the parts in --out (and --from)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    ap.add_argument("--model", help="model folder (on the GPU: .gpu/make_model.py --preset qwen2.5-7b)")
    ap.add_argument("--lengths", default="4000,8000,16000")
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per cell (median reported, all kept)")
    ap.add_argument("--reps-at", default="",
                    help="other repetitions for some input lengths, LEN:N[,LEN:N], e.g. 4000:5: the shortest cells, "
                         "where the host's CPU speed sways a repetition most (bimodal 4k cells, 2026-11-28)")
    ap.add_argument("--hit", type=float, default=0.8, help="shared-prefix fraction of the partial-hit pass")
    ap.add_argument("--gpu-util", type=float, default=0.8)
    ap.add_argument("--max-model-len", type=int, default=20000)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None, help="default: vLLM's")
    ap.add_argument("--block-size", type=int, default=None, help="vLLM block size; default 16 on GPU (vLLM's), "
                    "32 on CPU (the CPU backend wants a multiple of 32)")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on GPU, the model's own on CPU")
    ap.add_argument("--inproc-engine", action=argparse.BooleanOptionalAction, default=True,
                    help="engine core in this process: all prompts queued before the first step (default on)")
    ap.add_argument("--model-runner", default="auto", choices=["auto", "v1", "v2"],
                    help="VLLM_USE_V2_MODEL_RUNNER for every mode but native_best (always v1)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size (the stores then live in the "
                    "worker processes: connector counters, ucm100_bytes included, are not seen)")
    ap.add_argument("--load-format", default=None,
                    help="vLLM load_format, e.g. dummy (random weights from a config: .gpu/make_model.py --no-weights)")
    ap.add_argument("--async-scheduling", default="auto", choices=["auto", "on", "off"],
                    help="vLLM's async scheduling (its batch queue plans step n + 1 before step n's output "
                         "is read); auto: vLLM's default (on in 0.26)")
    ap.add_argument("--ucm-step-tokens", type=int, default=None,
                    help="ucm modes: \"ucm_layerwise_step_tokens\" (default: the connector's; ucm_batched is always 0)")
    ap.add_argument("--ucm-step-load-blocks", type=int, default=None,
                    help="ucm modes: ucm_layerwise_step_load_blocks (hits past it in a step load between steps)")
    ap.add_argument("--ucm-in-turn-tokens", type=int, default=None,
                    help="ucm modes: \"ucm_layerwise_in_turn_tokens\": a hit the step budget left out also waits for "
                         "the tokens of the step that filled it, if that step computes at most this many")
    ap.add_argument("--ucm-prefetch", action="store_true",
                    help="ucm modes: ucm_layerwise_prefetch (a load-bound hit's copies start at its allocation)")
    ap.add_argument("--ucm-ab", default=None, metavar="NAME=VALUE",
                    help="mode ucm: every repetition runs the cell twice in the one engine, as configured (A) "
                         f"and with the scheduler's NAME set to VALUE (B), in A B / B A order; NAME one of "
                         f"{', '.join(AB_SWITCHES)} (e.g. prefetch=true): an A / B free of the host's speed")
    ap.add_argument("--ucm-load-mode", default=None, choices=["layerwise", "async"],
                    help="ucm modes: the connector's ucm_load_mode (default: the connector's, layerwise)")
    ap.add_argument("--ucm-debug", action="store_true",
                    help="ucm modes: the connector's scheduler logs every lookup, deferral and allocation (logger "
                         "'ucm' at DEBUG, to stderr; the scheduler runs in this process)")
    ap.add_argument("--ucm-cross-layer", action="store_true",
                    help="ucm modes: ucm_cross_layer (vLLM's cross-layer KV layout; with --model-runner v1)")
    ap.add_argument("--cpu-gib", type=float, default=16.0, help="DRAM of native offloading and of ucm (per TP rank)")
    ap.add_argument("--disk-path", default=os.environ.get("UCM_BENCH_DISK", "/tmp/ucm_bench_disk"),
                    help="ucm_disk spills into a fresh subfolder of this, removed at the end")
    ap.add_argument("--disk-gib", type=float, default=20.0, help="ucm_disk: byte cap of the disk tier")
    ap.add_argument("--disk-hits", default="always", choices=["always", "auto", "never"],
                    help="ucm_disk: the disk tier's 'hits' key; always (the default here: the column times hits "
                         "from disk), auto (ucm's default: disk hits only while reading beats recomputing)")
    ap.add_argument("--disk-dram-gib", type=float, default=None,
                    help="ucm_disk: DRAM cap; default 1.25 x the largest batch's 80%% hit")
    ap.add_argument("--disk-push-lift", action=argparse.BooleanOptionalAction, default=True,
                    help="ucm_disk: lift the disk's write backlog during the untimed push, so every pushed block "
                         "reaches the disk (--no-disk-push-lift: ucm's configured backlog drops what it cannot queue)")
    ap.add_argument("--disk-cold", action=argparse.BooleanOptionalAction, default=True,
                    help="ucm_disk: sync and drop the spill files from the page cache before each timed pass")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="run: stop a mode that would end after this many seconds from the start (its finished "
                         "cells are kept)")
    ap.add_argument("--decode-batch", type=int, default=8,
                    help="decode cell (modes full and ucm): this many fresh prompts decoded together; 0 = none")
    ap.add_argument("--decode-len", type=int, default=1024, help="decode cell: prompt tokens")
    ap.add_argument("--decode-tokens", type=int, default=256, help="decode cell: tokens generated per prompt")
    ap.add_argument("--decode-reps", type=int, default=None, help="decode cell: repetitions (default: --reps)")
    ap.add_argument("--decode-switch-steps", type=int, default=0, metavar="K",
                    help="decode cell, mode ucm: switch storing off and on every K steps within each repetition "
                         "and compare neighbouring blocks of steps, instead of whole repetitions A B B A (0)")
    ap.add_argument("--decode-only", action="store_true",
                    help="modes full and ucm: the decode cell only, no TTFT grid (e.g. alone on an idle machine, "
                         "merged into a grid's table with --mode table --from)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/prefix_ttft")
    ap.add_argument("--from", dest="from_dirs", default="",
                    help="table: more folders with prefix_ttft_part_*.json (later ones win)")
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)  # internal: one mode's engine
    a = ap.parse_args(argv)
    a.lengths = [int(x) for x in a.lengths.split(",")]
    a.concurrency = [int(x) for x in a.concurrency.split(",")]
    a.reps_at = reps_at(ap, a.reps_at)
    if a.decode_switch_steps and a.decode_switch_steps <= SWITCH_SKIP:
        ap.error(f"--decode-switch-steps {a.decode_switch_steps}: 0 (off) or more than the {SWITCH_SKIP} steps each "
                 f"block leaves out, e.g. 8")
    check_modes(ap, a, MODES)
    a.ucm_ab = ucm_ab(ap, a.ucm_ab)
    if a.ucm_ab and (not a.inproc_engine or a.tp != 1):
        ap.error("--ucm-ab switches the scheduler of an in-process engine: drop --no-inproc-engine and --tp")
    return a


# --ucm-ab: the UcmScheduler attributes a repetition may switch between its two runs, and their types
AB_SWITCHES = {"prefetch": bool, "step_tokens": int, "step_load_blocks": int, "in_turn_tokens": int,
               "upfront_blocks": int}


def ucm_ab(ap, spec) -> Optional[tuple]:
    """``--ucm-ab NAME=VALUE`` as (name, value); a malformed one stops with the option named."""
    if not spec:
        return None
    name, _, raw = spec.partition("=")
    kind = AB_SWITCHES.get(name)
    if kind is None or not raw:
        ap.error(f"--ucm-ab: {spec!r} is not NAME=VALUE with NAME one of {', '.join(AB_SWITCHES)} "
                 f"(e.g. prefetch=true, step_tokens=1024)")
    if kind is bool:
        if raw.lower() not in ("true", "false"):
            ap.error(f"--ucm-ab: {name} takes true or false, got {raw!r}")
        return name, raw.lower() == "true"
    if not raw.isdigit():
        ap.error(f"--ucm-ab: {name} takes a whole number >= 0, got {raw!r}")
    return name, int(raw)


def reps_at(ap, spec: str) -> dict:
    """``--reps-at`` as {input length: repetitions}; a malformed entry stops with the option named."""
    out = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        length, _, n = item.partition(":")
        if not (length.isdigit() and n.isdigit() and int(n) >= 1):
            ap.error(f"--reps-at: {item!r} is not LEN:N (e.g. 4000:5, N >= 1)")
        out[int(length)] = int(n)
    return out


def check_modes(ap, a, modes) -> None:
    """``--modes`` as a list of known modes, and ``--model`` where an engine runs (shared by bench scripts)."""
    a.modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in a.modes if m not in modes]
    if bad:
        ap.error(f"unknown modes {bad}; choose from {modes}")
    if (a.mode == "run" or a.worker) and not a.model:
        ap.error("--model is required")


def part_path(out: str, mode: str) -> str:
    return os.path.join(out, f"prefix_ttft_part_{mode}.json")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- environment of one mode's process (read by vLLM at import, so set before importing it) ----------
def mode_env(a, mode: str, cuda: bool) -> None:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    # a separate engine-core process imports the connector too: it needs the checkout on its path
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    if a.inproc_engine:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    runner = "v1" if mode == "native_best" else a.model_runner
    if runner != "auto":
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if runner == "v2" else "0"
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # the GPU bundle has no flashinfer
    if a.ucm_debug:
        import logging

        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("ucm").addHandler(h)
        logging.getLogger("ucm").setLevel(logging.DEBUG)
    if a.tp > 1:  # this process has touched CUDA before the engine: forked TP workers would fail
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("VLLM_NO_USAGE_STATS", "1")):
        os.environ.setdefault(k, v)
    if not cuda:  # vLLM CPU: a small KV space and one thread per op keep the engine light
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def kv_bytes_per_token(model_dir: str, dtype_bytes: int) -> int:
    """K and V of every layer for one token, read from config.json (needed before the engine starts)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        hf = json.load(f)
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads", hf["num_attention_heads"])
    return 2 * hf["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


def dtype_bytes(dtype: str, model_dir: str) -> int:
    if dtype == "auto":
        with open(os.path.join(model_dir, "config.json")) as f:
            hf = json.load(f)
        dtype = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    return {"float32": 4, "float": 4}.get(str(dtype), 2)


def kv_transfer_config(a, mode: str, bpt: int, disk_dir: str):
    """The connector config of a mode (a dict of KVTransferConfig fields), or None for 'full'."""
    if mode == "full":
        return None
    if mode in ("native", "native_best"):
        extra = {"cpu_bytes_to_use": int(a.cpu_gib * GiB)}
        if mode == "native_best":
            extra["block_size"] = 256  # 256-token offload chunks (the V1 runner gives the cross-layer layout)
        return dict(kv_connector="OffloadingConnector", kv_role="kv_both", kv_connector_extra_config=extra)
    if mode in ("ucm", "ucm_async", "ucm_batched"):
        extra = {"ucm_connector_name": "UcmDramStore",
                 "ucm_connector_config": {"max_cache_size": int(a.cpu_gib * GiB)}}
        if mode == "ucm_async":
            extra["ucm_load_mode"] = "async"
        if a.ucm_step_tokens is not None:
            extra["ucm_layerwise_step_tokens"] = a.ucm_step_tokens
        if a.ucm_step_load_blocks is not None:
            extra["ucm_layerwise_step_load_blocks"] = a.ucm_step_load_blocks
        if a.ucm_in_turn_tokens is not None:
            extra["ucm_layerwise_in_turn_tokens"] = a.ucm_in_turn_tokens
        if a.ucm_prefetch:
            extra["ucm_layerwise_prefetch"] = True
        if mode == "ucm_batched":
            extra["ucm_layerwise_step_tokens"] = 0
    else:  # ucm_disk: the seed's form naming the dram_disk chain (ucm/integration/vllm/settings.py)
        extra = {"ucm_connector_name": "dram_disk",
                 "ucm_connector_config": {"max_cache_size": disk_dram_bytes(a, bpt),
                                          "disk": {"path": disk_dir, "max_size": int(a.disk_gib * GiB),
                                                   "hits": a.disk_hits}}}
    if a.ucm_load_mode and mode != "ucm_async":
        extra["ucm_load_mode"] = a.ucm_load_mode
    if a.ucm_cross_layer:
        extra["ucm_cross_layer"] = True
    return dict(kv_connector="UnifiedCacheConnectorV1", kv_connector_module_path=UCM_MODULE,
                kv_role="kv_both", kv_connector_extra_config=extra)


def disk_dram_bytes(a, bpt: int) -> int:
    """DRAM of ucm_disk: room for the largest batch's 80 % hit (so promotions from disk during one
    load do not push each other back down) but, after the flush pass, none of the stored prefixes."""
    if a.disk_dram_gib is not None:
        return int(a.disk_dram_gib * GiB)
    return int(1.25 * a.hit * max(a.lengths) * max(a.concurrency) * bpt)


# ---- one mode's engine -------------------------------------------------------------------------------
SWITCH_SKIP = 2  # steps at the start of each block left out: the switch lands a step late with async
# scheduling, and the last storing step's copies still run in the first one after it


def switch_pairs(phases: list, k: int, skip: int = SWITCH_SKIP) -> list:
    """Storing / not storing, block by block: for each block of ``k`` storing steps and the block of ``k``
    steps without storing after it, the ratio of their median step times (not storing over storing:
    below 1 when storing is slower, as tokens/s would say), the first ``skip`` steps of each block left
    out. ``phases``: (storing, index within its block, seconds) per step, in order."""
    blocks, cur = [], None
    for on, i, sec in phases:
        if i == 0 or cur is None or cur[0] != on:
            cur = (on, [])
            blocks.append(cur)
        if i >= skip:
            cur[1].append(sec)
    out = []
    for (on, a), (off, b) in zip(blocks, blocks[1:]):
        if on and not off and a and b:
            out.append(statistics.median(b) / statistics.median(a))
    return out


class Bench:
    def __init__(self, a, mode: str, cuda: bool, ktc: Optional[dict] = None, engine_kw: Optional[dict] = None):
        """``ktc`` replaces the mode's connector config and ``engine_kw`` adds engine arguments
        (for benchmarks built on this one, e.g. trace_replay.py)."""
        import numpy as np
        import torch
        import vllm
        from vllm import LLM, SamplingParams

        self.a, self.mode, self.cuda = a, mode, cuda
        # float32 on CPU as in tests/vllm (vLLM CPU would turn "auto" float32 weights into bfloat16)
        self.dtype = a.dtype or ("bfloat16" if cuda else "float32")
        self.bpt = kv_bytes_per_token(a.model, dtype_bytes(self.dtype, a.model))
        self.dram_cap = disk_dram_bytes(a, self.bpt)
        self.disk_dir = os.path.join(a.disk_path, f"prefix_ttft_{os.getpid()}") if mode == "ucm_disk" else ""
        self.gate_rates: dict = {}  # ucm_disk: the disk-hit gate's measured rates (GB/s) after the last pass
        ktc = ktc if ktc is not None else kv_transfer_config(a, mode, self.bpt, self.disk_dir)
        kw = dict(model=a.model, dtype=self.dtype, max_model_len=a.max_model_len, enable_prefix_caching=True,
                  enforce_eager=True, seed=0)
        if cuda:
            kw["gpu_memory_utilization"] = a.gpu_util
        if a.block_size or not cuda:
            kw["block_size"] = a.block_size or 32
        if a.max_num_batched_tokens:
            kw["max_num_batched_tokens"] = a.max_num_batched_tokens
        if a.tp > 1:
            kw["tensor_parallel_size"] = a.tp
        if a.load_format:
            kw["load_format"] = a.load_format
        if a.async_scheduling != "auto":
            kw["async_scheduling"] = a.async_scheduling == "on"
        kw.update(engine_kw or {})
        if ktc is not None:
            from vllm.config.kv_transfer import KVTransferConfig

            kw["kv_transfer_config"] = KVTransferConfig(**ktc)
        t0 = time.time()
        self.llm = LLM(**kw)
        init_s = time.time() - t0
        vc = self.llm.llm_engine.vllm_config
        self.core = self._inproc_core()
        self.phases = self._step_phases()
        self.native_xfer = {"load_bytes": 0.0, "load_time": 0.0}
        self.gc = GcClock()
        hooked = self._hook_native_stats() if mode.startswith("native") else False
        hf = vc.model_config.hf_config
        actual = kv_bytes_per_token(a.model, vc.model_config.dtype.itemsize)
        if actual != self.bpt:
            print(f"WARNING: KV bytes/token {actual} (engine dtype), not {self.bpt} as assumed", flush=True)
            self.bpt = actual
        self.info = dict(
            mode=mode, started=utc_now(), command=" ".join([sys.executable] + sys.argv),
            run_command=os.environ.get("PREFIX_TTFT_COMMAND"),
            vllm=vllm.__version__, torch=torch.__version__,
            gpu=torch.cuda.get_device_name(0) if cuda else "cpu", engine_init_s=round(init_s, 1),
            model=dict(path=a.model, architecture=(hf.architectures or [None])[0], layers=hf.num_hidden_layers,
                       hidden=hf.hidden_size, heads=hf.num_attention_heads,
                       kv_heads=getattr(hf, "num_key_value_heads", None),
                       head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
                       dtype=str(vc.model_config.dtype), kv_bytes_per_token=self.bpt),
            block_size=vc.cache_config.block_size, num_gpu_blocks=vc.cache_config.num_gpu_blocks,
            max_num_batched_tokens=vc.scheduler_config.max_num_batched_tokens,
            async_scheduling=getattr(vc.scheduler_config, "async_scheduling", None),
            use_v2_model_runner=getattr(vc, "use_v2_model_runner", None),
            env_VLLM_USE_V2_MODEL_RUNNER=os.environ.get("VLLM_USE_V2_MODEL_RUNNER"),
            cross_layer_kv_cache=self._cross_layer_shape(), engine_in_process=self.core is not None,
            kv_transfer_config=ktc, native_stats_recorded=hooked, enforce_eager=True, tp=a.tp, load_format=a.load_format,
            lengths=a.lengths, concurrency=a.concurrency, reps=a.reps, reps_at=a.reps_at, hit=a.hit,
            host_speed=host_speed.measure(cuda),  # launch-bound cells move with it between hosts
        )
        self.ab = None  # --ucm-ab (``use_ab``): (scheduler, name, A's value, B's value)
        if mode == "ucm_disk":
            self.info.update(disk_dram_bytes=self.dram_cap, disk_cold=a.disk_cold,
                             disk_fs=fs_type(self.disk_dir))
        vocab = vc.model_config.get_vocab_size()
        self.lo, self.hi = (500, min(vocab - 8, 150000)) if vocab > 4000 else (10, vocab - 8)
        self.rng = np.random.default_rng(a.seed + MODES.index(mode))
        self.sp = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, detokenize=False)
        print(json.dumps(self.info, default=str), flush=True)

    # ---- engine helpers ----
    def _inproc_core(self):
        core = getattr(self.llm.llm_engine.engine_core, "engine_core", None)
        return core if core is not None and hasattr(core, "scheduler") else None

    def _step_phases(self):
        """Per engine.step() call, where its time goes (bench/step_phases.py); in-process engine only."""
        if self.core is None:
            return None
        from step_phases import StepPhases  # bench/, as prefix_ttft_report (this script's folder)
        from vllm.distributed.kv_transfer import kv_transfer_state

        return StepPhases(self.core, getattr(kv_transfer_state, "_KV_CONNECTOR_AGENT", None))

    def _hook_native_stats(self) -> bool:
        """Sum the OffloadingConnector's own transfer stats (bytes, CUDA-event s) that the scheduler
        pulls every step; in-process engine only (as bench_prefix.py does)."""
        conn = getattr(getattr(self.core, "scheduler", None), "connector", None)
        if conn is None or not hasattr(conn, "get_kv_connector_stats"):
            return False
        orig = conn.get_kv_connector_stats

        def wrapped():
            st = orig()
            try:
                if st is not None and not st.is_empty():
                    for k, v in st.reduce().items():
                        for key in self.native_xfer:
                            if k == "vllm:kv_offload_" + key:
                                self.native_xfer[key] += float(v)
            except Exception as e:  # bookkeeping must never break the engine
                print(f"WARNING: native stats hook: {e!r}", flush=True)
            return st

        conn.get_kv_connector_stats = wrapped
        return True

    def _cross_layer_shape(self):
        try:
            mr = self.core.model_executor.driver_worker.worker.model_runner
            t = getattr(mr, "cross_layers_kv_cache", None)
            return None if t is None else list(t.shape)
        except Exception:
            return None

    def drain(self, timeout=30.0) -> int:
        """Step the in-process engine until its scheduler holds no work (deferred stores, delayed frees)."""
        if self.core is None:
            return 0
        n, t0 = 0, time.perf_counter()
        while self.core.scheduler.has_requests() or getattr(self.core, "batch_queue", None):
            self.llm.llm_engine.step()
            n += 1
            if time.perf_counter() - t0 > timeout:
                print(f"WARNING: drain() gave up after {timeout} s ({n} steps)", flush=True)
                return -1
        return n

    def reset_gpu(self) -> bool:
        """Empty vLLM's GPU prefix cache only (never the connector's store)."""
        for _ in range(50):
            stuck = self.drain() < 0
            if self.llm.reset_prefix_cache():
                return True
            if stuck:
                break
            time.sleep(0.1)
        print("WARNING: reset_prefix_cache() kept failing", flush=True)
        return False

    def fresh(self, n: int, L: int) -> list:
        return [self.rng.integers(self.lo, self.hi, size=L).tolist() for _ in range(n)]

    def partial(self, prompts: list, L: int) -> list:
        k = int(self.a.hit * L)
        return [p[:k] + self.fresh(1, L - k)[0] for p in prompts]

    # ---- one timed pass ----
    def timed(self, prompts: list) -> dict:
        """Queue all prompts, then step until all finish; per-request latency = finish - submit."""
        eng = self.llm.llm_engine
        c0, x0 = self._counters(), dict(self.native_xfer)
        g0, h0 = self.gc.snapshot(), HostClock.snapshot()
        t0 = time.perf_counter()
        self.llm.enqueue([{"prompt_token_ids": p} for p in prompts], self.sp, use_tqdm=False)
        lat, cached, steps, phases = [], [], [], []
        while eng.has_unfinished_requests():
            ts = time.perf_counter()
            done = 0
            if self.phases is not None:
                self.phases.begin()
            for o in eng.step():
                if o.finished:
                    lat.append(time.perf_counter() - t0)
                    cached.append(o.num_cached_tokens or 0)
                    done += 1
            steps.append([round(1e3 * (time.perf_counter() - ts), 2), done])
            if self.phases is not None:
                phases.append(self.phases.end())
        assert len(lat) == len(prompts), (len(lat), len(prompts))
        # every latency and every engine.step() call (ms, requests finished in it): a request whose first
        # token waits for a later step than it needs shows as a step call that blocked
        r = dict(mean_s=statistics.mean(lat), max_s=max(lat), lat_s=[round(x, 4) for x in lat], steps=steps,
                 cached_tokens=cached, gc=self.gc.since(g0), host=HostClock.since(h0))
        if phases:  # per step call, {phase: ms} (bench/step_phases.py)
            r["phases"] = phases
        c1 = self._counters()
        if c1:
            r["ucm"] = {k: c1[k] - c0.get(k, 0) for k in c1}
        if self.gate_rates:  # rates, not counters: as they stand after the pass
            r["gate"] = dict(self.gate_rates)
        if self.mode.startswith("native"):
            r["native"] = {k: self.native_xfer[k] - x0[k] for k in x0}
        return r

    def _counters(self) -> dict:
        """ucm's process-wide counters (the worker runs in this process with the in-process engine),
        plus, for the disk chain, how many block reads came from below DRAM."""
        if not self.mode.startswith("ucm"):
            return {}
        from ucm.integration.vllm import stats, stores

        out = {k: float(v) for k, v in stats.totals().items()}
        for s in stores.live_stores():
            st = s.stats()
            if isinstance(st, dict) and "lower_hits" in st:
                out["chain_lower_hits"] = out.get("chain_lower_hits", 0) + st["lower_hits"]
                for t in st.get("tiers", []):  # what went down to disk and what the backlog dropped
                    for k in ("dropped", "written"):
                        if k in t:
                            out[f"{t['tier']}_{k}"] = out.get(f"{t['tier']}_{k}", 0) + t[k]
            gate = st.get("slow_hits") if isinstance(st, dict) else None
            if gate:  # the disk-hit gate's decisions (counters; its rates go to the pass as they stand)
                for k in ("allowed", "refused"):
                    out[f"gate_{k}"] = out.get(f"gate_{k}", 0) + gate[f"{k}_lookups"]
                self.gate_rates = {k: gate[k] for k in ("read_gbps", "compute_gbps")}
        return out

    # ---- the cells ----
    def warmup(self) -> None:
        """Compile/JIT once: the longest prefill, a GPU hit, a batch, a connector store + loads."""
        t0 = time.time()
        Lmax, Lmin, cmax = max(self.a.lengths), min(self.a.lengths), max(self.a.concurrency)
        P = self.fresh(1, Lmax)
        self.timed(P)
        self.drain()
        self.timed(P)  # the first GPU hit was slow in the anchor runs
        self.timed(self.fresh(cmax, Lmin))
        if self.mode != "full":
            self.connector_cell(Lmin, 1)
        if self.ab:  # B's paths warmed too (e.g. a prefetch's first launch)
            self._set_ab(True)
            self.connector_cell(Lmin, 1)
            self._set_ab(False)
        self.reset_gpu()
        print(f"warm-up done in {time.time() - t0:.1f} s", flush=True)

    def full_cell(self, L: int, c: int) -> dict:
        F = self.fresh(c, L)
        r = {"full": self.timed(F)}
        self.drain()
        r["hbm100"] = self.timed(F)
        self.drain()
        r["hbm80"] = self.timed(self.partial(F, L))
        self.reset_gpu()
        return r

    def connector_cell(self, L: int, c: int, own_hbm: bool = True) -> dict:
        """One repetition of a connector mode's cell (module docstring); ``own_hbm=False`` leaves out
        the own-HBM passes (a profile of the connector's hits alone)."""
        self.reset_gpu()
        r = {"full_connector_on": self.timed(self.fresh(c, L))}
        A, B = self.fresh(c, L), self.fresh(c, L)
        self.timed(B if self.mode == "ucm_disk" else A + B)  # store pass (untimed)
        self.drain()  # deferred stores land
        if self.mode == "ucm_disk":
            self.push_to_disk()
        else:
            self.reset_gpu()
            r["hit100"] = self.timed(A)
            if own_hbm:
                self.drain()
                r["own_hbm100"] = self.timed(A)  # the same engine's GPU hit (module docstring)
        self.reset_gpu()
        r["hit80"] = self.timed(self.partial(B, L))
        if own_hbm:
            self.drain()
            r["own_hbm80"] = self.timed(self.partial(B, L))  # B's 80 % from HBM now, new tokens after it
        self.reset_gpu()
        return r

    def ab_cell(self, L: int, c: int, rep: int) -> dict:
        """``--ucm-ab``: the connector cell as configured (A) and with the switch (B), A first in even
        repetitions and B first in odd ones (a drift of the host slows both alike); B's passes are
        named ``ab_<pass>``."""
        r = {}
        for b in ((False, True) if rep % 2 == 0 else (True, False)):
            self._set_ab(b)
            try:
                out = self.connector_cell(L, c)
            finally:
                self._set_ab(False)
            r.update({f"ab_{k}" if b else k: v for k, v in out.items()})
        return r

    def use_ab(self, switch: Optional[tuple]) -> None:
        """``--ucm-ab``'s (name, value): every cell runs A / B (``ab_cell``); nothing for other modes."""
        if not switch or not self.mode.startswith("ucm"):
            return
        sched = self._ucm_scheduler()
        if sched is None:
            raise SystemExit("--ucm-ab: no ucm scheduler in this process (an in-process engine is needed)")
        name, value = switch
        self.ab = (sched, name, getattr(sched, name), value)
        self.info["ucm_ab"] = dict(name=name, a=getattr(sched, name), b=value)

    def _set_ab(self, b: bool) -> None:
        sched, name, a_value, b_value = self.ab
        setattr(sched, name, b_value if b else a_value)

    def push_to_disk(self) -> None:
        """Fill ucm's DRAM with fresh prompts so the stored ones are demoted to disk (LRU), then drop
        the spill files from the page cache so the timed loads read the disk, not RAM."""
        need = self.dram_cap // self.bpt + 4 * self.info["block_size"]
        Lf = min(max(self.a.lengths), self.a.max_model_len - 8)
        n = -(-need // Lf)
        from ucm.integration.vllm import stores

        chains = [s for s in stores.live_stores() if hasattr(s, "tiers")]
        disks = [t for s in chains for t in s.tiers if t.name == "disk"]
        saved = [d.max_backlog for d in disks]
        for d in disks if self.a.disk_push_lift else []:  # every victim of the push goes down (untimed;
            d.max_backlog = max(d.max_backlog, 4 * self.dram_cap)  # the timed passes keep the config's)
        try:
            for i in range(0, n, 8):  # 8 prompts per batch keeps the GPU KV cache from filling up
                self.timed(self.fresh(min(8, n - i), Lf))
                self.drain()
            for s in chains:
                s.flush()  # the files are written before their page cache is dropped
        finally:
            for d, b in zip(disks, saved):
                d.max_backlog = b
        if self.a.disk_cold:
            drop_page_cache(self.disk_dir)

    def decode_cell(self) -> dict:
        """Decode speed with stores running (ucm dumps every block that fills) or without a connector:
        B fresh prompts decoded together; tokens/s counted from the step where every request has its
        first token to the last one (prefill excluded). In mode ucm the repetitions alternate
        (A B B A ...) between storing and not storing (the requests' ``kv_transfer_params``
        ``{"ucm_store": false}``) in this one engine: their ratio, pair by pair, is free of the
        engine-to-engine spread (+-15-20 % between runs, 2026-11-28)."""
        a = self.a
        n = a.decode_reps or a.reps
        if self.mode != "ucm":
            reps = [self._decode_rep(None) for _ in range(n)]
            r = self._decode_summary(reps)
        elif a.decode_switch_steps > 0:  # storing switched on and off within each repetition (``_decode_rep``)
            reps = [self._decode_rep(True, switch=a.decode_switch_steps) for _ in range(n)]
            r = self._decode_summary(reps)
            pairs = [x for rep in reps for x in rep["switch_pairs"]]
            r.update(switch_steps=a.decode_switch_steps, store_vs_no_store_switch_pairs=pairs)
        else:
            order = [i % 4 in (0, 3) for i in range(2 * n)]  # A B B A: drift hits both alike
            runs = [(store, self._decode_rep(store)) for store in order]
            reps = [x for store, x in runs if store]
            off = [x for store, x in runs if not store]
            r = self._decode_summary(reps)
            pairs = [on["tok_s"] / no["tok_s"] for on, no in zip(reps, off)]
            # the same from each repetition's median step time: a few long steps (a pause) do not move it
            step_pairs = [no["step_ms"]["median"] / on["step_ms"]["median"] for on, no in zip(reps, off)
                          if on["step_ms"]["median"] > 0]
            r.update(no_store_reps=off, no_store_median_tok_s=statistics.median(x["tok_s"] for x in off),
                     store_vs_no_store=statistics.median(pairs), store_vs_no_store_pairs=pairs,
                     store_vs_no_store_step_pairs=step_pairs)
        sw = r.get("store_vs_no_store_switch_pairs")
        print(f"{self.mode} decode: {r['median_tok_s']:.1f} tok/s (batch {a.decode_batch})"
              + (f", without storing {r['no_store_median_tok_s']:.1f} (ratio {r['store_vs_no_store']:.3f})"
                 if "store_vs_no_store" in r else "")
              + (f", storing / not storing over {len(sw)} neighbouring blocks of steps: {statistics.median(sw):.3f}"
                 if sw else ""), flush=True)
        return r

    def _decode_rep(self, store, switch: int = 0) -> dict:
        """One decode repetition. With ``switch`` = K > 0 (mode ucm, ``store`` True) storing goes off and
        on every K steps after the first token, and each block of K storing steps is compared with the
        next K not storing (``switch_pairs``): a slow spell of the host slows both alike, unlike whole
        repetitions a second apart (their A B B A pairs swung 0.5-1.7 on busy hosts). The prompts then
        differ in length by 2 tokens each, so their blocks fill on different steps (all on one step
        in 16 otherwise, which a block of steps may miss)."""
        from vllm import SamplingParams

        a, eng = self.a, self.llm.llm_engine
        extra = None if store is None else {"kv_transfer_params": {"ucm_store": store}}
        sp = SamplingParams(max_tokens=a.decode_tokens, temperature=0.0, ignore_eos=True, detokenize=False,
                            extra_args=extra)
        self.reset_gpu()
        prompts = self.fresh(a.decode_batch, a.decode_len)
        if switch:
            prompts = [p + self.fresh(1, 2 * i)[0] for i, p in enumerate(prompts)]
        self.llm.enqueue([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        # the offline API returns outputs only when requests finish: read the scheduler's requests
        reqs, t1, first, steps = self.core.scheduler.requests, None, 0, 0
        before, g0, h0, step_s = self._counters() or {}, self.gc.snapshot(), HostClock.snapshot(), []
        phases = []  # switch: (storing, step within its block, seconds) of each step after the first token
        while eng.has_unfinished_requests():
            on = not switch or t1 is None or (steps // switch) % 2 == 0
            if switch and t1 is not None and steps % switch == 0:
                self._set_storing(on)
            ts = time.perf_counter()
            eng.step()
            if t1 is None and len(reqs) == a.decode_batch and all(r.num_output_tokens >= 1 for r in reqs.values()):
                t1, first = time.perf_counter(), sum(r.num_output_tokens for r in reqs.values())
            elif t1 is not None:
                step_s.append(time.perf_counter() - ts)
                phases.append((on, steps % switch if switch else 0, step_s[-1]))
                steps += 1
        t2 = time.perf_counter()
        if switch:
            self._set_storing(True)
        tokens = a.decode_batch * a.decode_tokens - first
        after = self._counters() or None
        if after and store is not None:  # what this repetition stored (none without storing)
            after = dict(after, dumped_blocks_rep=after.get("dumped_blocks", 0) - before.get("dumped_blocks", 0))
        # where a slow repetition's time went: a few long steps (a pause) or every step a bit slower
        step_ms = sorted(1e3 * x for x in step_s) or [0.0]
        med = statistics.median(step_ms)
        steps_summary = dict(median=round(med, 3), p90=round(step_ms[int(0.9 * (len(step_ms) - 1))], 3),
                             max=round(step_ms[-1], 3), over_2x_median=sum(x > 2 * med for x in step_ms),
                             ms_over_median=round(sum(x - med for x in step_ms if x > med), 3))
        out = dict(tokens=tokens, seconds=t2 - t1, tok_s=tokens / (t2 - t1), steps=steps, store=store, ucm=after,
                   step_ms=steps_summary, gc=self.gc.since(g0), host=HostClock.since(h0))
        if switch:
            out.update(switch_steps=switch, switch_pairs=switch_pairs(phases, switch))
        return out

    def _ucm_scheduler(self):
        """ucm's UcmScheduler in this process (the in-process engine's connector), or None: the
        benchmark's switches (``_set_storing``, ``--ucm-ab``) reach into it."""
        conn = getattr(getattr(self.core, "scheduler", None), "connector", None)
        return getattr(conn, "_scheduler", None)

    def _set_storing(self, on: bool) -> None:
        """Storing of every request in the engine on or off (ucm's scheduler-side ``_ReqState.store``,
        which ``{"ucm_store": false}`` sets). Switched on, blocks that filled while off are skipped, not
        caught up: a storing step then dumps what it fills, as when storing all along."""
        sched, bs = self._ucm_scheduler(), self.info["block_size"]
        for rid, st in sched.reqs.items():
            req = self.core.scheduler.requests.get(rid)
            if on and not st.store and req is not None:
                st.dumped_upto = max(st.dumped_upto, min(len(st.block_ids), req.num_computed_tokens // bs))
            st.store = on

    def _decode_summary(self, reps: list) -> dict:
        a = self.a
        return dict(batch=a.decode_batch, prompt_tokens=a.decode_len, max_tokens=a.decode_tokens, reps=reps,
                    median_tok_s=statistics.median(x["tok_s"] for x in reps))

    def run(self) -> dict:
        self.warmup()
        res = dict(info=self.info, cells=[])
        if self.a.decode_batch > 0 and self.mode in ("full", "ucm") and self.core is not None:
            res["decode"] = self.decode_cell()
            write_json(part_path(self.a.out, self.mode), res)
        if self.a.decode_only:
            return res
        for L in self.a.lengths:
            for c in self.a.concurrency:
                n = self.a.reps_at.get(L, self.a.reps)
                if self.ab:
                    reps = [self.ab_cell(L, c, i) for i in range(n)]
                else:
                    cell = self.full_cell if self.mode == "full" else self.connector_cell
                    reps = [cell(L, c) for _ in range(n)]
                res["cells"].append(dict(L=L, c=c, reps=reps))
                print(f"{self.mode} L={L} c={c}: " + "  ".join(
                    f"{k}={statistics.median(x[k]['mean_s'] for x in reps):.4f}s"
                    f"(cached {statistics.mean(statistics.mean(x[k]['cached_tokens']) for x in reps):.0f})"
                    for k in reps[0]), flush=True)
                write_json(part_path(self.a.out, self.mode), res)  # partial results survive a cut-off
        return res


def fs_type(path: str) -> str:
    """The filesystem type holding `path` (tmpfs would make 'disk' reads RAM reads)."""
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, typ = line.split()[:3]
                if os.path.abspath(path).startswith(mnt) and len(mnt) > len(best):
                    best, fstype = mnt, typ
    except OSError:
        pass
    return fstype


def drop_page_cache(path: str) -> None:
    os.sync()  # dirty pages cannot be dropped
    for f in glob.glob(os.path.join(path, "**", "*"), recursive=True):
        if os.path.isfile(f):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def pinned_h2d_gbps(nbytes: int = GiB):
    """A plain pinned host->device copy of 1 GiB (and back), best of 5, in this process."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    res = []
    for src, dst in ((host, dev), (dev, host)):
        best = None
        for i in range(7):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            dst.copy_(src, non_blocking=True)
            e1.record()
            e1.synchronize()
            t = e0.elapsed_time(e1) / 1e3
            if i >= 2:  # the first copies warm the path up
                best = t if best is None else min(best, t)
        res.append(round(nbytes / best / 1e9, 2))
    del host, dev
    torch.cuda.empty_cache()
    return res[0], res[1]


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def write_outputs(stem: str, res: dict, md: str, plot) -> str:
    """``stem``.json and .md, and .png through ``plot(res, path)`` where matplotlib is installed;
    returns the extensions written."""
    write_json(stem + ".json", res)
    with open(stem + ".md", "w") as fh:
        fh.write(md)
    if os.path.exists(stem + ".png"):  # a plot of an earlier run must not outlive its table
        os.unlink(stem + ".png")
    try:
        plot(res, stem + ".png")  # draws nothing without rows (a --decode-only run)
        return "json, md, png" if os.path.exists(stem + ".png") else "json, md"
    except ImportError as e:  # no matplotlib here: run --mode table where it is
        print(f"no plot ({e}): run --mode table with a Python that has matplotlib")
        return "json, md"


NATIVE_SHM_GLOB = "/dev/shm/vllm_offload_*"  # vLLM 0.26's native CPU buffer, left behind by a killed run


def cleanup_native_shm() -> None:
    for f in glob.glob(NATIVE_SHM_GLOB):
        try:
            os.unlink(f)
        except OSError:
            pass


def run_worker(a, mode: str) -> None:
    import importlib

    cuda = importlib.import_module("torch").cuda.is_available()
    mode_env(a, mode, cuda)
    if mode.startswith("native"):
        cleanup_native_shm()
    disk_dir = ""
    try:
        b = Bench(a, mode, cuda)
        disk_dir = b.disk_dir
        b.use_ab(a.ucm_ab)
        res = b.run()
        res["info"]["finished"] = utc_now()
        res["info"]["host_speed_end"] = host_speed.measure(cuda)  # the host may change during a mode
        # measured after the engine ran, in the same process, so the 1 GiB buffers never shrink vLLM's KV
        res["info"]["pinned_h2d_gbps"], res["info"]["pinned_d2h_gbps"] = pinned_h2d_gbps()
        write_json(part_path(a.out, mode), res)
        rc = 0
    except BaseException:
        import traceback

        traceback.print_exc()
        rc = 1
    if disk_dir:
        shutil.rmtree(disk_dir, ignore_errors=True)
    if mode.startswith("native"):
        cleanup_native_shm()
    # results are written: leave at once, so no engine or copy thread can hold the interpreter at exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def run_modes_in_subprocesses(script: str, a, command_env: str, report, share_deadline: bool = False) -> int:
    """Each of ``a.modes`` in a subprocess of ``script`` (``--worker MODE``: fresh GPU memory each)
    within ``a.deadline_s``, then ``report(a.out, [])``; 1 if a mode did not complete. With
    ``share_deadline`` each mode gets an equal share of the time left and is told when it ends
    (``--worker-deadline``, 20 s early, so it can finish what runs); else a mode may use it all."""
    t_start, failed = time.time(), []
    os.environ[command_env] = " ".join(["python3"] + sys.argv)  # recorded by each mode
    for k, mode in enumerate(a.modes):
        left = None if a.deadline_s is None else a.deadline_s - (time.time() - t_start)
        if left is not None and left < 30:
            print(f"== {mode}: skipped, only {left:.0f} s left", flush=True)
            failed.append(mode)
            continue
        argv = [sys.executable, os.path.abspath(script)] + sys.argv[1:] + ["--worker", mode]
        timeout = left
        if share_deadline and left is not None:
            share = left / (len(a.modes) - k)
            argv += ["--worker-deadline", str(time.time() + max(10.0, share - 20))]
            timeout = share + 60
        print(f"== {utc_now()} mode {mode}" + (f" ({timeout:.0f} s at most)" if timeout else ""), flush=True)
        t0 = time.time()
        try:
            rc = subprocess.run(argv, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout (finished work kept)"
        print(f"== mode {mode}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(mode)
    report(a.out, [])
    if failed:
        print(f"== modes not completed: {failed}", flush=True)
    return 1 if failed else 0


def dispatch(a, run_worker, run_modes, report) -> None:
    """A benchmark script's main: one mode's worker, the merge alone (``--mode table``), or every mode."""
    os.makedirs(a.out, exist_ok=True)
    if a.worker:
        run_worker(a, a.worker)
    elif a.mode == "table":
        report(a.out, [d for d in a.from_dirs.split(",") if d])
    else:
        sys.exit(run_modes(a))


def run_modes(a) -> int:
    from prefix_ttft_report import report  # bench/ is this script's folder

    return run_modes_in_subprocesses(__file__, a, "PREFIX_TTFT_COMMAND", report)


def main() -> None:
    from prefix_ttft_report import report

    dispatch(parse_args(), run_worker, run_modes, report)


if __name__ == "__main__":
    main()
