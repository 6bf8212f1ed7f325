#!/usr/bin/env python3
"""Throughput run of real vLLM on the Mooncake conversation trace (issue 5): requests/s and TTFT
p50/p90/p99 for full compute, vLLM's native CPU offloading and ucm (LRU and a better policy), with a
DRAM tier smaller than the trace's working set.

Usage:
  python3 bench/trace_replay.py --model DIR [--trace FILE] [--requests 300] [--time-scale 10]
        [--modes full,native,ucm_lru,ucm_best] [--best-policy auto] [--cpu-gib X] [--out DIR] ...
  python3 bench/trace_replay.py --mode table --out DIR [--from DIR2,DIR3]      (merge parts, table, plot)

Trace: one request per line, {"timestamp": ms, "input_length": tokens, "output_length": tokens,
"hash_ids": [ids of 512-token blocks]}; turns of one conversation share leading hash ids. Prompts:
hash id h -> a fixed block of --block-tokens random token ids (numpy seeded by (--seed, h), in the
vocab range prefix_ttft.Bench uses), a request's prompt = its blocks, concatenated, cut to
min(ceil(input_length / scale), max_model_len - max_tokens - 8); scale defaults to 512 / --block-tokens
(so a prompt keeps its number of blocks on small machines). max_tokens = min(output_length, --max-output).
Request i arrives at (timestamp_i - timestamp_0) / 1000 / --time-scale s after the replay starts.

Each mode runs in its own subprocess with its own engine (prefix_ttft.Bench: prefix caching on in
every mode, so vLLM's own KV cache is the HBM tier), the engine core in this process, stepped by hand:
  full      no connector
  native    vLLM's OffloadingConnector, cpu_bytes_to_use = --cpu-gib
  ucm_lru   UnifiedCacheConnectorV1, Hydra form {"ucm_config": "dram", "ucm_overrides":
            ["eviction=lru", "store.max_cache_size=<--cpu-gib>"]}
  ucm_best  the same with eviction=--best-policy; ``auto`` (the default): the eviction policy other than
            LRU (ucm_lru's) with the highest prefix hit ratio in the simulator (``ucm.sim``, mode=prefix, admission
            always) on the replayed prompts' blocks at the DRAM tier's size (``best_policy``; the ranking
            is in the part's settings). It depends on the requests and the DRAM size: on the whole
            conversation trace ``prefixlfu`` at 5-10 % of the working set, LRU at 20 % (docs/policies.md);
            on its first 300 requests, as replayed, S3-FIFO at 5-50 % (H200 replay, 2026-11-29).
--cpu-gib defaults to 1/4 of the working set (distinct blocks the replayed prompts use x block tokens
x KV bytes per token). The loop enqueues each request once its arrival time has passed, steps the
engine and reads first-token times from the in-process scheduler (num_output_tokens >= 1).
Per mode: requests/s (completed / makespan), TTFT p50/p90/p99, mean prefix-cache hit tokens
(num_cached_tokens), ucm counters (hit tokens, loaded bytes, evictions), engine steps split into
prefill and decode-only ones (count, p50/p90 ms, total s: where a connector's per-step cost shows) and
vLLM's preemptions; the merged table also pairs each mode's TTFT with full compute request by request. Writes
trace_replay_part_<mode>.json, then trace_replay_<gpu>_<date>.json/.md/.png (see bench/README.md).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import host_speed  # noqa: E402
import prefix_ttft  # noqa: E402  (stdlib-only at import: vLLM is imported by Bench itself)
from prefix_ttft import GiB, UCM_MODULE, utc_now, write_json  # noqa: E402

ROOT = prefix_ttft.ROOT
MODES = ("full", "native", "ucm_lru", "ucm_best")
# ../shared/traces on the dev machine; .gpu/ (git-ignored, carried to the GPU machine) there
TRACES = (os.path.join(os.path.dirname(ROOT), "shared", "traces", "conversation_trace.jsonl"),
          os.path.join(ROOT, ".gpu", "conversation_trace.jsonl"))
TRACE = next((p for p in TRACES if os.path.exists(p)), TRACES[0])
TRACE_BLOCK = 512  # tokens per hash id in the Mooncake trace
# a replay cut by its deadline stops enqueueing this long before it, so the requests in flight can finish:
# aborting them crashed vLLM 0.26's OffloadingConnector (an assertion in its store jobs; H200, 2026-11-29)
DRAIN_S = 8.0
PAD_KEY = 1 << 40  # seeds of the blocks padding a prompt longer than its hash ids (never a trace id)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="run", choices=["run", "table"])
    ap.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    ap.add_argument("--model", help="model folder")
    ap.add_argument("--trace", default=TRACE)
    ap.add_argument("--requests", type=int, default=300, help="first N requests of the trace")
    ap.add_argument("--start", type=int, default=0, help="skip this many requests of the trace first")
    ap.add_argument("--time-scale", type=float, default=10.0, help="arrival = timestamp_ms / 1000 / this")
    ap.add_argument("--block-tokens", type=int, default=TRACE_BLOCK, help="tokens per trace hash id")
    ap.add_argument("--scale", type=float, default=None,
                    help="divide the trace's lengths by this; default 512 / --block-tokens")
    ap.add_argument("--max-output", type=int, default=32, help="max_tokens = min(output_length, this)")
    ap.add_argument("--best-policy", default="auto",
                    help="eviction of ucm_best (a conf/eviction/ name); auto: the simulator's best but LRU on the "
                         "replayed blocks at this DRAM size")
    ap.add_argument("--ucm-admission", default="always",
                    help="admission of both ucm modes (a conf/admission/ name; reuse: a block is stored on its "
                         "second sighting, the simulator's conversation trace stores 4.7 x fewer bytes for 0.76 x the hits)")
    ap.add_argument("--ucm-extra", type=json.loads, default={},
                    help='more kv_connector_extra_config of both ucm modes, a JSON object, e.g. '
                         '\'{"ucm_layerwise_step_tokens": 3072, "ucm_layerwise_in_turn_tokens": 0}\'')
    ap.add_argument("--cpu-gib", type=float, default=None,
                    help="DRAM of native offloading and ucm; default 1/4 of the working set's KV bytes")
    ap.add_argument("--ws-fraction", type=float, default=0.25, help="the default --cpu-gib, x working set")
    ap.add_argument("--gpu-util", type=float, default=0.8, help="vLLM gpu_memory_utilization (sizes HBM)")
    ap.add_argument("--num-gpu-blocks", type=int, default=None,
                    help="vLLM num_gpu_blocks_override: the HBM tier's size in vLLM blocks, whatever the card "
                         "(default: what --gpu-util leaves)")
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None, help="default: vLLM's")
    ap.add_argument("--block-size", type=int, default=None, help="vLLM block size (default 16 GPU, 32 CPU)")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--model-runner", default="auto", choices=["auto", "v1", "v2"])
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    ap.add_argument("--load-format", default=None, help="vLLM load_format, e.g. dummy")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="all modes within this many seconds: each gets an equal share of what is left; a mode "
                         "out of time (20 s before its share ends) stops enqueueing DRAIN_S before that, aborts what still runs "
                         "then and keeps the requests done (cut_off)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/trace_replay")
    ap.add_argument("--from", dest="from_dirs", default="", help="table: more folders with parts")
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--worker-deadline", type=float, default=None, help=argparse.SUPPRESS)  # unix time
    a = ap.parse_args(argv)
    prefix_ttft.check_modes(ap, a, MODES)
    if a.scale is None:
        a.scale = TRACE_BLOCK / a.block_tokens
    # what prefix_ttft.Bench reads besides the above (its grid; unused here)
    a.inproc_engine, a.lengths, a.concurrency, a.reps, a.reps_at, a.hit = True, [a.max_model_len], [1], 1, {}, 0.0
    a.disk_path, a.disk_dram_gib, a.disk_gib, a.disk_cold, a.decode_batch = "/tmp", 0.0, 0.0, False, 0
    a.async_scheduling, a.ucm_debug, a.decode_reps, a.decode_only = "auto", False, None, False
    return a


# ---- pure parts (unit-tested, no vLLM) -----------------------------------------------------------------
def load_trace(path: str, n: int, start: int = 0) -> list[dict]:
    out = []
    with open(path) as f:
        for i, line in enumerate(f):
            if i < start or not line.strip():
                continue
            if len(out) >= n:
                break
            out.append(json.loads(line))
    return out


def arrivals(timestamps_ms, time_scale: float) -> list[float]:
    """Seconds after the replay starts: (t - t0) / 1000 / time_scale."""
    t0 = timestamps_ms[0] if len(timestamps_ms) else 0
    return [(t - t0) / 1000.0 / time_scale for t in timestamps_ms]


def prompt_length(input_length: int, scale: float, max_model_len: int, max_tokens: int) -> int:
    return max(1, min(math.ceil(input_length / scale), max_model_len - max_tokens - 8))


def output_tokens(output_length: int, max_output: int) -> int:
    return max(1, min(int(output_length), max_output))


def block_of(key, block_tokens: int, lo: int, hi: int, seed: int) -> list[int]:
    """The token ids of one trace block: a pure function of (seed, key); key is a hash id or a tuple."""
    import numpy as np

    words = [seed, *key] if isinstance(key, tuple) else [seed, key]
    return np.random.default_rng(words).integers(lo, hi, size=block_tokens).tolist()


def build_prompt(hash_ids, length: int, block_tokens: int, lo: int, hi: int, seed: int, req_index: int,
                 cache: dict | None = None) -> list[int]:
    """Blocks of hash_ids, concatenated, cut to `length`; if the ids do not cover it, blocks unique to
    this request (keyed by req_index) follow."""
    cache = {} if cache is None else cache
    need = -(-length // block_tokens)
    keys = list(hash_ids[:need]) + [(PAD_KEY + req_index, j) for j in range(need - len(hash_ids))]
    toks = []
    for k in keys:
        if k not in cache:
            cache[k] = block_of(k, block_tokens, lo, hi, seed)
        toks.extend(cache[k])
    return toks[:length]


def used_blocks(hash_ids, length: int, block_tokens: int) -> list:
    return list(hash_ids[:-(-length // block_tokens)])


def working_set_blocks(reqs: list[dict], block_tokens: int) -> int:
    """Distinct trace blocks the prompts use (after truncation)."""
    s = set()
    for r in reqs:
        s.update(used_blocks(r["hash_ids"], r["prompt_len"], block_tokens))
    return len(s)


def rank_policies(reqs: list[dict], block_tokens: int, cap_blocks: int,
                  candidates=None) -> list[tuple[str, float]]:
    """(policy, simulated prefix hit ratio), best first: each request's blocks (as its prompt uses them)
    replayed in ``ucm.sim``'s prefix mode through one tier of ``cap_blocks`` trace blocks. The sim's
    tier stands for ucm's DRAM alone (vLLM's own cache in front of it is left out): a ranking, not the
    replay's hits. ``candidates``: by default every online eviction policy ucm has (``--best-policy auto``:
    LRU for scale, ucm_lru runs it anyway, so ucm_best takes the best of the others). Ties keep their order."""
    from ucm.policies import EVICTION_POLICIES
    from ucm.sim.core import simulate
    from ucm.sim.trace import from_requests

    candidates = tuple(EVICTION_POLICIES) if candidates is None else candidates

    ids = [used_blocks(r["hash_ids"], r["prompt_len"], block_tokens) for r in reqs]
    trace = from_requests("replay", ids, block_tokens, tokens=[r["prompt_len"] for r in reqs])
    ratios = [(p, simulate(trace, mode="prefix", eviction=p, capacity_blocks=max(1, cap_blocks),
                           block_tokens=block_tokens)["prefix_hit_ratio"]) for p in candidates]
    return sorted(ratios, key=lambda pr: -pr[1])


def resolve_best_policy(a, reqs: list[dict], ws: dict) -> None:
    """``--best-policy auto``: sets ``a.best_policy`` and ``a.best_policy_ranking`` (rank_policies)."""
    a.best_policy_ranking = None
    if a.best_policy != "auto":
        return
    per_block = a.block_tokens * ws["kv_bytes_per_token"]
    a.best_policy_ranking = [[p, round(r, 4)] for p, r in rank_policies(reqs, a.block_tokens, ws["cpu_bytes"] // per_block)]
    a.best_policy = next(p for p, _ in a.best_policy_ranking if p != "lru")


def plan(trace: list[dict], a) -> list[dict]:
    """Per request: arrival s, prompt length, max_tokens, hash ids (prompt tokens are built later)."""
    arr = arrivals([r["timestamp"] for r in trace], a.time_scale)
    out = []
    for i, (r, t) in enumerate(zip(trace, arr)):
        mt = output_tokens(r["output_length"], a.max_output)
        out.append(dict(index=i, arrival=t, max_tokens=mt, hash_ids=r["hash_ids"],
                        prompt_len=prompt_length(r["input_length"], a.scale, a.max_model_len, mt)))
    return out


def percentile(xs, q: float):
    """Linear interpolation between closest ranks (numpy's default); None for no data."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100.0
    f = math.floor(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def summarize(records: list[dict], t_start: float = 0.0) -> dict:
    """records: dicts with arrival, first (first-token time or None), finish (or None), prompt_len,
    max_tokens, cached (or None), all times in s from the replay start. Requests/s = completed /
    makespan (t_start to the last finish)."""
    done = [r for r in records if r.get("finish") is not None]
    ttft = [r["first"] - r["arrival"] for r in done if r.get("first") is not None]
    e2e = [r["finish"] - r["arrival"] for r in done]
    makespan = (max(r["finish"] for r in done) - t_start) if done else None
    cached = [r["cached"] for r in done if r.get("cached") is not None]
    prompt = sum(r["prompt_len"] for r in done)
    rnd = lambda x, n=4: None if x is None else round(x, n)  # noqa: E731
    return dict(
        requests=len(records), completed=len(done), makespan_s=rnd(makespan, 3),
        req_s=rnd(len(done) / makespan if makespan else None),
        prompt_tok_s=rnd(prompt / makespan if makespan else None, 1),
        ttft_p50_s=rnd(percentile(ttft, 50)), ttft_p90_s=rnd(percentile(ttft, 90)),
        ttft_p99_s=rnd(percentile(ttft, 99)), ttft_mean_s=rnd(sum(ttft) / len(ttft) if ttft else None),
        e2e_p50_s=rnd(percentile(e2e, 50)), e2e_p99_s=rnd(percentile(e2e, 99)),
        prompt_tokens=prompt,
        mean_cached_tokens=rnd(sum(cached) / len(cached) if cached else None, 1),
        cached_fraction=rnd(sum(cached) / prompt if cached and prompt else None),
    )


def ucm_extra(policy: str, cap_bytes: int, admission: str = "always", more: dict | None = None) -> dict:
    return {"ucm_config": "dram", "ucm_overrides": [f"eviction={policy}", f"admission={admission}",
                                                    f"store.max_cache_size={cap_bytes}"], **(more or {})}


def transfer_config(mode: str, cap_bytes: int, best_policy: str, admission: str = "always",
                    more: dict | None = None):
    if mode == "full":
        return None
    if mode == "native":
        return dict(kv_connector="OffloadingConnector", kv_role="kv_both",
                    kv_connector_extra_config={"cpu_bytes_to_use": cap_bytes})
    policy = "lru" if mode == "ucm_lru" else best_policy
    return dict(kv_connector="UnifiedCacheConnectorV1", kv_connector_module_path=UCM_MODULE, kv_role="kv_both",
                kv_connector_extra_config=ucm_extra(policy, cap_bytes, admission, more))


def part_path(out: str, mode: str) -> str:
    return os.path.join(out, f"trace_replay_part_{mode}.json")


# ---- one mode's engine -----------------------------------------------------------------------------------
def _base_mode(mode: str) -> str:
    return {"full": "full", "native": "native"}.get(mode, "ucm")


class ReplayBench(prefix_ttft.Bench):
    def __init__(self, a, mode: str, cuda: bool, cap_bytes: int):
        ktc = transfer_config(mode, cap_bytes, a.best_policy, a.ucm_admission, a.ucm_extra)
        extra = {} if a.num_gpu_blocks is None else {"num_gpu_blocks_override": a.num_gpu_blocks}
        super().__init__(a, _base_mode(mode), cuda, ktc=ktc, engine_kw=extra)
        self.mode = mode
        self.info.update(mode=mode, kv_transfer_config=ktc, cpu_bytes=cap_bytes if mode != "full" else None,
                         hbm_kv_tokens=(self.info["num_gpu_blocks"] or 0) * self.info["block_size"])
        for k in ("lengths", "concurrency", "reps", "hit"):
            self.info.pop(k, None)
        if self.core is None:
            raise SystemExit("trace_replay needs the in-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0)")

    def warmup(self) -> None:
        """One fresh prompt (not from the trace) through prefill and a few decode steps."""
        from vllm import SamplingParams

        t0 = time.time()
        sp = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True, detokenize=False)
        L = min(4 * self.a.block_tokens, self.a.max_model_len - 16)
        self.llm.enqueue([{"prompt_token_ids": p} for p in self.fresh(2, L)], sp, use_tqdm=False)
        self.drain()
        print(f"warm-up done in {time.time() - t0:.1f} s", flush=True)

    def replay(self, reqs: list[dict], deadline: float | None) -> dict:
        from tqdm import tqdm
        from vllm import SamplingParams

        eng, sched = self.llm.llm_engine, self.core.scheduler
        cache = {}
        t_build = time.time()
        prompts = [build_prompt(r["hash_ids"], r["prompt_len"], self.a.block_tokens, self.lo, self.hi,
                                self.a.seed, r["index"], cache) for r in reqs]
        print(f"{len(prompts)} prompts built in {time.time() - t_build:.1f} s", flush=True)
        del cache
        recs = [dict(index=r["index"], arrival=r["arrival"], prompt_len=r["prompt_len"], max_tokens=r["max_tokens"],
                     first=None, finish=None, cached=None, enqueued=None) for r in reqs]
        c0 = self._counters()
        ext2i, int2i, waiting_first = {}, {}, set()  # vLLM request ids -> index; indexes without a first token

        def index_of(rid: str):
            i = ext2i.get(rid)
            if i is None and "-" in rid:
                i = ext2i.get(rid.rsplit("-", 1)[0])
            return i

        nxt, n, cut_off, steps, rids, aborted = 0, len(reqs), False, 0, [], 0
        step_log, preempted = [], {}  # (seconds, prompt tokens computed, phases) per step; req id -> preemptions
        record = []  # one STEP_COLUMNS row per step (step_record)
        bar = tqdm(total=n, desc=f"{self.mode}", unit="req", mininterval=2.0, file=sys.stdout)
        t0 = time.perf_counter()
        while True:
            now = time.perf_counter() - t0
            if deadline is not None and not cut_off and time.time() > deadline - DRAIN_S:
                cut_off = True  # no request enqueued from now on; those in flight may finish by the deadline
                print(f"\n{self.mode}: {DRAIN_S:.0f} s before the deadline: {n - nxt} requests not enqueued",
                      flush=True)
            if cut_off and time.time() > deadline:
                left = [rids[i] for i in range(nxt) if recs[i]["finish"] is None]
                aborted = len(left)
                print(f"\n{self.mode}: deadline reached: {aborted} requests aborted", flush=True)
                if left:
                    try:
                        eng.abort_request(left, internal=True)  # vLLM >= 0.27: the ids enqueue returned
                    except TypeError:
                        eng.abort_request(left)
                break
            while not cut_off and nxt < n and reqs[nxt]["arrival"] <= now:
                r = reqs[nxt]
                sp = SamplingParams(max_tokens=r["max_tokens"], temperature=0.0, ignore_eos=True, detokenize=False)
                (rid,) = self.llm.enqueue([{"prompt_token_ids": prompts[nxt]}], sp, use_tqdm=False)
                rids.append(str(rid))
                # vLLM >= 0.27 returns the engine's id "<n>-<8 chars>" here but "<n>" in the outputs
                ext2i[str(rid)] = ext2i[str(rid).rsplit("-", 1)[0]] = nxt
                recs[nxt]["enqueued"] = time.perf_counter() - t0
                waiting_first.add(nxt)
                nxt += 1
            if not eng.has_unfinished_requests():
                if cut_off or nxt >= n:
                    break
                time.sleep(max(0.0, min(0.05, reqs[nxt]["arrival"] - (time.perf_counter() - t0))))
                continue
            left_before = _prompt_left(sched)
            if self.phases is not None:
                self.phases.begin()
            t_step = time.perf_counter()
            outs = eng.step()
            steps += 1
            t = time.perf_counter() - t0
            step_log.append((time.perf_counter() - t_step, left_before - _prompt_left(sched, preempted),
                             self.phases.end() if self.phases is not None else {}))
            record.append(step_record(sched, t, step_log[-1], sum(preempted.values())))
            if waiting_first:
                for rid, req in sched.requests.items():
                    i = int2i.get(rid)
                    if i is None:
                        i = int2i[rid] = index_of(rid)
                    if i in waiting_first and req.num_output_tokens >= 1:
                        recs[i]["first"] = t
                        waiting_first.discard(i)
            for o in outs:
                if not o.finished:
                    continue
                i = index_of(str(o.request_id))
                if i is None:
                    continue
                if recs[i]["first"] is None:  # finished within the step that made its first token
                    recs[i]["first"] = t
                waiting_first.discard(i)
                recs[i]["finish"] = t
                recs[i]["cached"] = getattr(o, "num_cached_tokens", None)
                bar.update(1)
        bar.close()
        self.drain()
        res = summarize(recs)
        res.update(steps=steps, cut_off=cut_off, enqueued=nxt, aborted=aborted, **step_summary(step_log),
                   preemptions=sum(preempted.values()))
        c1 = self._counters()
        if c1:
            res["ucm"] = {k: c1[k] - c0.get(k, 0) for k in c1}
        if self.mode.startswith("native"):
            res["native"] = dict(self.native_xfer)
        return dict(summary=res, requests=[{k: (round(v, 5) if isinstance(v, float) else v) for k, v in x.items()}
                                           for x in recs], steps=dict(columns=STEP_COLUMNS, rows=record))


#: the per-step record of a replay (the part JSON's ``steps``): when the step ended (s since the replay began), its
#: wall ms, prompt tokens it computed, vLLM's running and waiting requests after it, KV cache usage (0-1),
#: preemptions so far, and the vLLM blocks ucm's scheduler keeps for dumps of finished requests (delayed frees)
STEP_COLUMNS = ("t_s", "ms", "prompt_tokens", "running", "waiting", "kv_usage", "preemptions", "held_blocks")


def step_record(sched, t: float, step: tuple, preemptions: int) -> list:
    kvm = getattr(sched, "kv_cache_manager", None)
    usage = getattr(kvm, "usage", None) if kvm is not None else None
    usage = usage() if callable(usage) else usage  # a property in vLLM 0.26 and 0.32
    # ucm's scheduler side (UnifiedCacheConnectorV1._scheduler): finished requests whose blocks vLLM keeps
    held = getattr(getattr(getattr(sched, "connector", None), "_scheduler", None), "held", None)
    return [round(t, 4), round(1e3 * step[0], 2), step[1], len(getattr(sched, "running", ())),
            len(getattr(sched, "waiting", ())), None if usage is None else round(usage, 4), preemptions,
            None if held is None else sum(b for _, b in held.values())]


def preemption_context(steps: dict) -> dict | None:
    """The steps in which vLLM preempted requests: how many, and what ucm held and how full the KV cache
    was at the step before each (the one whose end left too few free blocks)."""
    if not steps or not steps.get("rows"):
        return None
    col = {c: i for i, c in enumerate(steps["columns"])}
    rows, hits = steps["rows"], []
    for k in range(1, len(rows)):
        if rows[k][col["preemptions"]] > rows[k - 1][col["preemptions"]]:
            hits.append(rows[k - 1])
    held = [r[col["held_blocks"]] for r in hits if r[col["held_blocks"]] is not None]
    usage = [r[col["kv_usage"]] for r in hits if r[col["kv_usage"]] is not None]
    return dict(steps=len(hits), with_held_blocks=sum(1 for h in held if h > 0),
                held_blocks_median=statistics.median(held) if held else None,
                kv_usage_median=statistics.median(usage) if usage else None)


def _prompt_left(sched, preempted: dict | None = None) -> int:
    """Prompt tokens the scheduler's requests have still to compute (a step's drop: its prefill
    tokens, or fewer where a preempted request starts over); notes each request's preemptions."""
    left = 0
    for rid, r in sched.requests.items():
        left += max(0, r.num_prompt_tokens - r.num_computed_tokens)
        if preempted is not None and r.num_preemptions:
            preempted[rid] = r.num_preemptions
    return left


def step_summary(step_log: list) -> dict:
    """Engine steps split into those that took prompt tokens (vLLM counts them computed once scheduled:
    with async scheduling, the step the call scheduled) and decode-only ones: count, median and p90 ms,
    and the whole time in each (where a connector's per-step cost shows); with step phases
    (``bench/step_phases.py``), the mean ms per step of each phase (``<kind>_phases_ms``)."""
    out = {}
    for kind, sel in (("prefill", lambda tok: tok > 0), ("decode", lambda tok: tok <= 0)):
        ms = sorted(1e3 * sec for sec, tok, _ in step_log if sel(tok))
        phases: dict = {}
        for _, tok, ph in step_log:
            if sel(tok):
                for k, v in ph.items():
                    phases[k] = phases.get(k, 0.0) + v
        if phases:
            out[f"{kind}_phases_ms"] = {k: round(v / len(ms), 3) for k, v in phases.items()}
        out[f"{kind}_steps"] = len(ms)
        out[f"{kind}_step_p50_ms"] = round(ms[len(ms) // 2], 2) if ms else None
        out[f"{kind}_step_p90_ms"] = round(ms[int(0.9 * (len(ms) - 1))], 2) if ms else None
        out[f"{kind}_step_total_s"] = round(sum(ms) / 1e3, 3)
    return out


class SpyOnSelf:
    """py-spy sampling this process during the replay loop, when ``UCM_SPY`` names a py-spy binary (bench/README.md):
    ``py-spy record --pid <this process> --threads --gil`` (plus ``UCM_SPY_ARGS``, default ``-r 100``) into
    ``out``, stopped with SIGINT (py-spy then writes the profile). Attached from inside, not wrapped around the
    command: wrapped with ``--subprocesses``, py-spy 0.4.3 sampled only the first Python child (the bundle's
    import check) and never the replay (H200, 2026-11-29). Start-up and warm-up stay out of the profile."""

    def __init__(self, out: str, env=os.environ):
        self.out, self.binary = out, env.get("UCM_SPY", "")
        self.args = env.get("UCM_SPY_ARGS", "-r 100").split()
        self.proc = None

    def __enter__(self) -> "SpyOnSelf":
        import subprocess

        if self.binary:
            cmd = [self.binary, "record", "--pid", str(os.getpid()), "--threads", "--gil", *self.args,
                   "-f", "raw", "-o", self.out]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(1.0)  # py-spy attaches before the loop starts
            if self.proc.poll() is not None:
                print(f"py-spy did not start ({self.proc.returncode}): {self.proc.communicate()[0].strip()[-300:]}",
                      flush=True)
                self.proc = None
        return self

    def __exit__(self, *exc) -> None:
        import signal
        import subprocess

        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            out = self.proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out = self.proc.communicate()[0]
        print(f"py-spy ({self.proc.returncode}): {out.strip().splitlines()[-2:] if out.strip() else ''}", flush=True)


def run_worker(a, mode: str) -> None:
    import importlib

    cuda = importlib.import_module("torch").cuda.is_available()
    prefix_ttft.mode_env(a, "ucm" if mode.startswith("ucm") else mode, cuda)
    if mode == "native":
        prefix_ttft.cleanup_native_shm()
    rc = 1
    res = dict(info=dict(mode=mode, started=utc_now(), command=" ".join([sys.executable] + sys.argv),
                         run_command=os.environ.get("TRACE_REPLAY_COMMAND")))
    try:
        reqs = plan(load_trace(a.trace, a.requests, a.start), a)
        dtype = a.dtype or ("bfloat16" if cuda else "float32")
        bpt = prefix_ttft.kv_bytes_per_token(a.model, prefix_ttft.dtype_bytes(dtype, a.model))
        ws = working_set_settings(reqs, a, bpt)
        resolve_best_policy(a, reqs, ws)
        b = ReplayBench(a, mode, cuda, ws["cpu_bytes"])
        res["info"] = dict(b.info, run_command=os.environ.get("TRACE_REPLAY_COMMAND"))
        res["settings"] = settings_of(a, reqs, ws)
        b.warmup()
        with SpyOnSelf(os.path.join(a.out, f"spy_{mode}.txt")):
            res.update(b.replay(reqs, a.worker_deadline))
        res["info"]["finished"] = utc_now()
        s = res["summary"]
        print(f"{mode}: {s['completed']}/{s['requests']} requests, {s['req_s']} req/s, TTFT p50 {s['ttft_p50_s']} s "
              f"p99 {s['ttft_p99_s']} s, cached {s['cached_fraction']}, ucm {s.get('ucm')}", flush=True)
        rc = 0
    except BaseException as e:
        import traceback

        traceback.print_exc()
        res["error"] = f"{type(e).__name__}: {e}"[:2000]
        print(f"== {mode} failed: {res['error'].splitlines()[0] if res['error'] else ''}", flush=True)
    write_json(part_path(a.out, mode), res)
    if mode == "native":
        prefix_ttft.cleanup_native_shm()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def working_set_settings(reqs: list[dict], a, bpt: int) -> dict:
    blocks = working_set_blocks(reqs, a.block_tokens)
    ws_bytes = blocks * a.block_tokens * bpt
    cap = int(a.cpu_gib * GiB) if a.cpu_gib is not None else int(a.ws_fraction * ws_bytes)
    return dict(working_set_blocks=blocks, working_set_bytes=ws_bytes, kv_bytes_per_token=bpt, cpu_bytes=cap,
                cpu_fraction_of_ws=round(cap / ws_bytes, 4) if ws_bytes else None)


def settings_of(a, reqs: list[dict], ws: dict) -> dict:
    total_blocks = sum(len(used_blocks(r["hash_ids"], r["prompt_len"], a.block_tokens)) for r in reqs)
    return dict(trace=a.trace, start=a.start, requests=len(reqs), time_scale=a.time_scale,
                block_tokens=a.block_tokens, scale=a.scale, max_output=a.max_output, max_model_len=a.max_model_len,
                best_policy=a.best_policy, best_policy_ranking=getattr(a, "best_policy_ranking", None),
                ucm_admission=a.ucm_admission, gpu_util=a.gpu_util,
                num_gpu_blocks=a.num_gpu_blocks, seed=a.seed,
                arrival_span_s=round(reqs[-1]["arrival"], 3) if reqs else 0,
                prompt_tokens=sum(r["prompt_len"] for r in reqs),
                output_tokens=sum(r["max_tokens"] for r in reqs),
                block_refs=total_blocks,
                reuse_bound=round(1 - ws["working_set_blocks"] / total_blocks, 4) if total_blocks else None,
                **ws)


def run_modes(a) -> int:
    return prefix_ttft.run_modes_in_subprocesses(__file__, a, "TRACE_REPLAY_COMMAND", report, share_deadline=True)


# ---- merge: json, md, png (no vLLM) ----------------------------------------------------------------------
STEP_COLS = ("prefill_steps", "prefill_step_p50_ms", "prefill_step_p90_ms", "prefill_step_total_s", "decode_steps",
             "decode_step_p50_ms", "decode_step_p90_ms", "decode_step_total_s", "preemptions", "ucm_delayed_frees",
             "ucm_held_blocks")
ROW_COLS = ("mode", "completed", "requests", "req_s", "prompt_tok_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s",
            "mean_cached_tokens", "cached_fraction", "ucm_hit_tokens", "ucm_loaded_bytes", "ucm_evictions",
            "cut_off", "error") + STEP_COLS


def load_parts(dirs: list[str]) -> dict:
    parts = {}
    for d in dirs:
        for p in sorted(glob.glob(os.path.join(d, "trace_replay_part_*.json"))):
            mode = re.match(r"trace_replay_part_(\w+)\.json", os.path.basename(p)).group(1)
            with open(p) as f:
                parts[mode] = dict(json.load(f), source=p)  # a later folder wins
    return parts


def row_of(mode: str, part: dict) -> dict:
    s = part.get("summary") or {}
    u = s.get("ucm") or {}
    row = {k: s.get(k) for k in ROW_COLS if k in s}
    steps = s.get("steps")
    held = u.get("delayed_free_block_steps")
    row.update(mode=mode, ucm_hit_tokens=u.get("hit_tokens"), ucm_loaded_bytes=u.get("loaded_bytes"),
               ucm_evictions=u.get("evictions"), error=part.get("error"), ucm_delayed_frees=u.get("delayed_frees"),
               # vLLM blocks kept for dumps after their request ended, on average over the replay's steps
               ucm_held_blocks=held / steps if held is not None and steps else None)
    out = {k: row.get(k) for k in ROW_COLS}
    out.update({f"{kind}_phases_ms": s.get(f"{kind}_phases_ms") for kind in ("prefill", "decode")})
    out["preemption_steps"] = preemption_context(part.get("steps"))
    return out


WINDOWS = 6  # the paired differences are also given per sixth of the requests, in arrival order


def paired(parts: dict, base: str = "full") -> dict:
    """Each mode's TTFT request by request against ``base`` (the same arrivals, so request i is the
    same prompt in both): the median difference with its 90 % interval, and the median difference of
    the requests whose cached tokens went up (the DRAM hits) and of the rest. Percentiles of two runs
    jump where TTFTs crowd at step boundaries; these pairs do not."""
    from prefix_ttft_report import med, median_interval

    def done(m):
        return {r["index"]: r for r in parts.get(m, {}).get("requests", [])
                if r.get("first") is not None and r.get("finish") is not None}

    ref, out = done(base), {}
    for m in parts:
        reqs = done(m)
        common = sorted(ref.keys() & reqs.keys()) if m != base else []
        if not common:
            continue
        d = {i: (reqs[i]["first"] - reqs[i]["arrival"]) - (ref[i]["first"] - ref[i]["arrival"]) for i in common}
        more = [d[i] for i in common if reqs[i].get("cached", 0) > ref[i].get("cached", 0)]
        rest = [d[i] for i in common if reqs[i].get("cached", 0) <= ref[i].get("cached", 0)]
        lo, hi, cov = median_interval(list(d.values()))
        size = -(-len(common) // WINDOWS)  # arrival-ordered windows: where in the trace the differences sit
        windows = [dict(first=common[k], last=common[min(k + size, len(common)) - 1],
                        base_median_s=med([ref[i]["first"] - ref[i]["arrival"] for i in common[k:k + size]]),
                        median_s=med([d[i] for i in common[k:k + size]])) for k in range(0, len(common), size)]
        out[m] = dict(requests=len(common), median_s=med(list(d.values())), mean_s=statistics.fmean(d.values()),
                      interval_s=[lo, hi], coverage=cov, more_cached=len(more), more_cached_median_s=med(more),
                      rest_median_s=med(rest), windows=windows)
    return out


def best_policy_line(settings: dict) -> str:
    """ucm_best's policy, and the simulator's ranking where ``--best-policy auto`` chose it."""
    rank = settings.get("best_policy_ranking")
    if not settings.get("best_policy"):
        return ""
    why = (" (auto: simulated prefix hit ratio at this DRAM size, " + ", ".join(f"{p} {r}" for p, r in rank) + ")"
           if rank else "")
    return f" ucm_best's eviction: {settings['best_policy']}{why}."


def report(out: str, from_dirs: list[str]) -> dict:
    from prefix_ttft_report import gpu_slug

    parts = load_parts(list(from_dirs) + [out])
    if not parts:
        raise SystemExit(f"no trace_replay_part_*.json in {[out] + list(from_dirs)}")
    order = [m for m in MODES if m in parts]
    infos = {m: parts[m]["info"] for m in order}
    ok = [m for m in order if "summary" in parts[m]] or order
    first = infos[ok[0]]
    settings = next((parts[m]["settings"] for m in ok if parts[m].get("settings")), None)
    date = min(i.get("started", "9999") for i in infos.values())[:10]
    cmds = sorted({i.get("run_command") or i.get("command") or "" for i in infos.values()})
    res = dict(gpu=first.get("gpu", "unknown"), vllm=first.get("vllm"), torch=first.get("torch"), date=date,
               command=" && ".join(c for c in cmds if c), settings=settings, model=first.get("model"),
               rows=[row_of(m, parts[m]) for m in order], modes=infos,
               ttft_s={m: [r["first"] - r["arrival"] for r in parts[m].get("requests", []) if r.get("first") is not None
                           and r.get("finish") is not None] for m in order},
               paired=paired(parts), generated=utc_now())
    stem = os.path.join(out, f"trace_replay_{gpu_slug(res['gpu'])}_{date}")
    ext = prefix_ttft.write_outputs(stem, res, markdown(res), plot)
    print(f"wrote {stem}.{{{ext}}}")
    print(markdown(res))
    return res


def _f(x, nd=3):
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else ""
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown(res: dict) -> str:
    s = res.get("settings") or {}
    m = res.get("model") or {}
    gb = lambda x: "n/a" if x is None else f"{x / 1e9:.3f} GB"  # noqa: E731
    lines = [f"# Trace replay: {res['gpu']}, vLLM {res['vllm']}, {res['date']}", "",
             f"Command: `{res['command']}`", "",
             f"Model: {m.get('architecture')} ({m.get('layers')} layers, {m.get('dtype')}, "
             f"{m.get('kv_bytes_per_token')} KV bytes/token). Trace: first {s.get('requests')} requests from "
             f"{s.get('start')} of `{os.path.basename(s.get('trace') or '')}`, time scale {s.get('time_scale')} "
             f"(arrivals over {s.get('arrival_span_s')} s), {s.get('block_tokens')} tokens per hash id (lengths / "
             f"{s.get('scale')}), max_model_len {s.get('max_model_len')}, max_tokens <= {s.get('max_output')}, "
             f"{s.get('prompt_tokens')} prompt tokens.", "",
             f"Working set: {s.get('working_set_blocks')} distinct blocks = {gb(s.get('working_set_bytes'))} of KV; "
             f"DRAM tier (native, ucm): {gb(s.get('cpu_bytes'))} ({s.get('cpu_fraction_of_ws')} of it). "
             f"Reuse bound (block references that repeat a block): {s.get('reuse_bound')}. "
             f"HBM (vLLM KV cache): " + ", ".join(f"{k} {v.get('hbm_kv_tokens')} tokens" for k, v in
                                                   res.get("modes", {}).items() if v.get("hbm_kv_tokens")) + "."
             + best_policy_line(s), "",
             "Host speed (`bench/host_speed.py`): " + "; ".join(
                 f"{k} {host_speed.summary(v.get('host_speed'))}" for k, v in res.get("modes", {}).items()) + ".", "",
             "| mode | done | req/s | prompt tok/s | TTFT p50 s | p90 s | p99 s | cached tok (mean) | cached frac | "
             "ucm hit tok | ucm loaded GB | ucm evictions | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        note = (r.get("error") or "").splitlines()[0][:80] if r.get("error") else ("cut off" if r.get("cut_off") else "")
        lb = r.get("ucm_loaded_bytes")
        lines.append("| " + " | ".join([
            r["mode"], "n/a" if r["completed"] is None else f"{r['completed']}/{r['requests']}", _f(r["req_s"]), _f(r["prompt_tok_s"], 0),
            _f(r["ttft_p50_s"]), _f(r["ttft_p90_s"]), _f(r["ttft_p99_s"]), _f(r["mean_cached_tokens"], 1),
            _f(r["cached_fraction"]), _f(r["ucm_hit_tokens"], 0), "n/a" if lb is None else f"{lb / 1e9:.3f}",
            _f(r["ucm_evictions"], 0), note]) + " |")
    if any(r.get("prefill_steps") is not None for r in res["rows"]):
        lines += ["", "Engine steps (`engine.step()` calls; prefill: the step computed prompt tokens), vLLM "
                  "preemptions, and ucm's delayed frees (finished requests whose blocks vLLM kept for their dumps; "
                  "held: such blocks on average over the steps):", "",
                  "| mode | prefill steps | p50 ms | p90 ms | total s | decode steps | p50 ms | "
                  "p90 ms | total s | preemptions | delayed frees | held blocks |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            lines.append("| " + " | ".join([r["mode"]] + [_f(r.get(k), 3 if k.endswith("_s") else 1 if
                                                              k.endswith("_ms") else 0) for k in STEP_COLS]) + " |")
    ctx = [(r["mode"], r["preemption_steps"]) for r in res["rows"] if r.get("preemption_steps")]
    if any(c["steps"] for _, c in ctx):
        lines += ["", "Steps in which vLLM preempted requests (from the per-step record, the part JSON's `steps`), and "
                  "at the step before each: ucm's blocks held for dumps, the KV cache's usage:", ""]
        for mode, c in ctx:
            lines.append(f"- {mode}: {c['steps']} steps; ucm held blocks before {c['with_held_blocks']} of them "
                         f"(median {_f(c['held_blocks_median'], 0)}); KV usage median {_f(c['kv_usage_median'], 3)}")
    phased = [(r["mode"], kind, r[f"{kind}_phases_ms"]) for r in res["rows"] for kind in ("prefill", "decode")
              if r.get(f"{kind}_phases_ms")]
    if phased:
        from step_phases import PHASES
        lines += ["", "Where a step's time goes (mean ms per step; `bench/step_phases.py`: `sched.connector`, "
                  "`exec.*` and `sample.post` are ucm's or native's hooks, `cpu` the engine thread's CPU time):", "",
                  "| mode | steps | " + " | ".join(PHASES) + " |", "|---|---|" + "---:|" * len(PHASES)]
        for mode, kind, ph in phased:
            lines.append(f"| {mode} | {kind} | " + " | ".join(_f(ph.get(k), 1) for k in PHASES) + " |")
    if res.get("paired"):
        ms = lambda x: "n/a" if x is None else f"{x * 1e3:+.1f}"  # noqa: E731
        lines += ["", "TTFT request by request against full compute (same arrivals; ms, + = slower):", "",
                  "| mode | requests | median | 90 % interval of the median | mean | more cached tokens: n, median | "
                  "the rest: median |", "|---|---:|---:|---|---:|---|---:|"]
        for m, p in res["paired"].items():
            lo, hi = p["interval_s"]
            span = "n/a" if lo is None else f"{ms(lo)} .. {ms(hi)} ({p['coverage']:.0%})"
            lines.append(f"| {m} | {p['requests']} | {ms(p['median_s'])} | {span} | {ms(p['mean_s'])} | "
                         f"{p['more_cached']}, {ms(p['more_cached_median_s'])} | {ms(p['rest_median_s'])} |")
        lines += ["", "The same differences by arrival window (median ms; in brackets full compute's own median TTFT "
                  "there: bursts queue requests, and a per-step cost grows with the queue):", "",
                  "| mode | " + " | ".join(f"requests {w['first']}-{w['last']}" for w in
                                         next(iter(res["paired"].values())).get("windows", [])) + " |",
                  "|---|" + "---:|" * len(next(iter(res["paired"].values())).get("windows", []))]
        for m, p in res["paired"].items():
            lines.append(f"| {m} | " + " | ".join(f"{ms(w['median_s'])} ({w['base_median_s'] * 1e3:.0f})"
                                                 for w in p.get("windows", [])) + " |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, xs in res["ttft_s"].items():
        if xs:
            xs = sorted(xs)
            ax1.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=mode)
    ax1.set_xscale("log")
    ax1.set_xlabel("TTFT (s)")
    ax1.set_ylabel("fraction of requests")
    ax1.set_title("TTFT CDF")
    ax1.legend()
    rows = [r for r in res["rows"] if r.get("req_s") is not None]
    x = range(len(rows))
    ax2.bar([i - 0.2 for i in x], [r["ttft_p50_s"] or 0 for r in rows], 0.4, label="TTFT p50 (s)")
    ax2.bar([i + 0.2 for i in x], [r["ttft_p99_s"] or 0 for r in rows], 0.4, label="TTFT p99 (s)")
    ax2.set_xticks(list(x))
    ax2.set_xticklabels([r["mode"] for r in rows])
    ax2.set_ylabel("seconds")
    ax3 = ax2.twinx()
    ax3.plot(list(x), [r["req_s"] for r in rows], "ko-", label="requests/s")
    ax3.set_ylabel("requests/s")
    ax2.legend(loc="upper left")
    ax3.legend(loc="upper right")
    ax2.set_title("TTFT p50/p99 and throughput")
    fig.suptitle(f"trace replay: {res['gpu']}, vLLM {res['vllm']}, {res['date']}", fontsize=10)
    fig.text(0.01, 0.005, res["command"][:200], fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    prefix_ttft.dispatch(parse_args(), run_worker, run_modes, report)


if __name__ == "__main__":
    main()
