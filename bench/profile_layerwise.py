"""Where a ucm prefix hit spends its time: one prefix_ttft cell, instrumented.

    python3 bench/profile_layerwise.py --model /tmp/models/qwen2.5-7b --lengths 16000 --concurrency 4 --out $OUT

Runs the ``ucm`` mode of bench/prefix_ttft.py (same engine, same warm-up) for one input length and
concurrency, times ``hbm``-free passes (fresh store pass, then the 80 % hit pass), and records:

- CPU seconds per connector hook (scheduler lookup+pin, ``start_load_kv``, ``wait_for_layer_load``,
  ``save_kv_layer``) and per copier call, with how many plane groups took the whole-row DMA path,
  the per-plane DMA path or the UVA kernel path, and the runs of consecutive slots they moved;
- a torch.profiler trace of one pass of fresh prompts with the store on (``full``: its dumps), one
  100 % and one 80 % hit pass (CUDA kernels and copies per stream), written gzipped as
  ``<pass>_<L>_<c>.trace.json.gz`` (chrome://tracing, Perfetto) and summarised per stream (busy time,
  first/last activity, overlap of each stream with the compute stream) and by CUDA runtime call (the
  longest ones with the CPU ops around them: a wait for the GPU on the model's thread); each pass's
  per-request latencies and engine step calls; and a cProfile of the Python functions of a pass alike
  (``<pass>_<L>_<c>.cprofile.txt``). On Python 3.12 (the GPU image) cProfile hooks every thread
  (sys.monitoring), so the dump submitter thread's waits show up inside the model thread's callers'
  cumulative times: read own times there, and the wall-clock ``cpu_s`` per function for the rest
  (with the calling thread's CPU time beside it: wall far above it means the call waited, for the GIL
  or in the driver).

Writes ``profile_layerwise.json`` with all of it into --out. Not a benchmark: it slows the hooks a
little to time them; compare its TTFTs only with each other.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import prefix_ttft  # noqa: E402
from prefix_ttft_report import first_output_phases  # noqa: E402
from trace_summary import blocking_calls, save_trace, stream_summary  # noqa: E402

CPU = collections.defaultdict(lambda: [0, 0.0, 0.0])  # name -> [calls, wall seconds, the calling thread's CPU seconds]
PATHS = collections.Counter()  # copier path -> plane groups
RUNS = []  # runs per copier call
PATCHED: list = []  # (owner, name, original) of every attribute instrument() replaced, for undo()


def _patch(owner, name: str, value) -> None:
    PATCHED.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def undo() -> None:
    """Put back what instrument() replaced (tests; the benchmark's process just ends)."""
    while PATCHED:
        owner, name, original = PATCHED.pop()
        setattr(owner, name, original)


def _timed(owner, name: str, label: str) -> None:
    fn = getattr(owner, name)

    def wrapper(*args, **kw):
        # wall and the thread's own CPU time: a call whose wall time is far above its CPU time waited
        # (for the GIL another thread held, or blocked in the driver), a slow core shows in both
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kw)
        finally:
            c = CPU[label]
            c[0] += 1
            c[1] += time.perf_counter() - t0
            c[2] += time.thread_time() - c0

    _patch(owner, name, wrapper)


def instrument() -> None:
    from ucm.integration.vllm import lookup_rpc, scheduler, worker
    from ucm.tiers import planes

    _timed(scheduler.UcmScheduler, "get_num_new_matched_tokens", "scheduler.get_num_new_matched_tokens")
    _timed(lookup_rpc.RankedLookup, "lookup", "scheduler.lookup")
    _timed(lookup_rpc.RankedLookup, "pin", "scheduler.pin")
    _timed(scheduler.UcmScheduler, "build_connector_meta", "scheduler.build_connector_meta")
    for name in ("start_load_kv", "wait_for_layer_load", "save_kv_layer", "wait_for_save", "finish_layer_loads",
                 "finished_loads", "poll_dumps"):
        _timed(worker.UcmWorker, name, f"worker.{name}")
    _timed(planes.CudaPlaneCopier, "submit", "copier.submit")
    # inside the hooks (wall time, any thread: the dump submitter thread calls the copier too). The
    # thirteenth session's grid spent 38 ms in start_load_kv at 16k x 4, 100 %, where bench/hook_cpu.py
    # (the same code, CUDA stood in for) takes ~7 ms on the CPU machine: these say where the rest goes
    from ucm.tiers import batch_dma, pool

    _timed(worker.UcmWorker, "_start_layer_loads", "worker._start_layer_loads")
    _timed(worker.UcmWorker, "_issue_layers", "worker._issue_layers")
    _timed(worker.UcmWorker, "handle_preemptions", "worker.handle_preemptions")
    _timed(pool.SlotPoolTier, "_plan", "pool._plan (reads and writes)")
    _timed(pool.SlotPoolTier, "_submit_planes", "pool._submit_planes")
    _timed(planes.CudaPlaneCopier, "_direct", "copier._direct")
    _timed(planes.CudaPlaneCopier, "_copy_runs", "copier._copy_runs")
    _timed(batch_dma, "copy", "batch_dma.copy (the driver call)")
    _timed(batch_dma, "descriptors", "batch_dma.descriptors")
    _timed(planes.CudaPlaneCopier, "_submit_after", "copier.dump_thread (waits for its forward, then issues)")

    orig_groups = planes.row_groups

    def row_groups(pcs):
        groups = orig_groups(pcs)
        for g in groups:
            PATHS["whole-row group" if len(g) > 1 else ("single plane, contiguous" if g[0].pool.is_contiguous()
                                                        else "single plane, strided (UVA kernel)")] += 1
        return groups

    _patch(planes, "row_groups", row_groups)
    orig_direct = planes.CudaPlaneCopier._direct

    def direct(self, pcs, plan, to_pool, wait, *args, **kw):  # passes on what the copier adds (e.g. whole)
        PATHS["direct (slot and row runs)"] += len(pcs)
        return orig_direct(self, pcs, plan, to_pool, wait, *args, **kw)

    _patch(planes.CudaPlaneCopier, "_direct", direct)
    orig_submit = planes.CudaPlaneCopier.submit

    def submit(self, pcs, plan, to_pool, *args, **kw):
        RUNS.append(dict(to_pool=bool(to_pool), rows=len(plan), runs=len(plan.runs), pairs=len(plan.pairs)))
        return orig_submit(self, pcs, plan, to_pool, *args, **kw)

    _patch(planes.CudaPlaneCopier, "submit", submit)


def profiled(b, make, cuda: bool, stem: str) -> dict:
    """One timed pass of ``make()``'s prompts under torch.profiler (-> ``<stem>.trace.json.gz`` and a
    per-stream summary), then one of new ``make()`` prompts under cProfile (-> ``<stem>.cprofile.txt``:
    the Python functions by own time; it slows them, so the two are timed apart). ``make`` gives new
    80 % prompts per call (a repeated one would hit its own dumped tail)."""
    import cProfile
    import io
    import pstats

    import torch

    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts) as prof:
        t = b.timed(make())
        if cuda:
            torch.cuda.synchronize()
    trace = save_trace(prof, stem)
    b.drain()
    b.reset_gpu()
    prof_py = cProfile.Profile()
    prof_py.enable()
    t_py = b.timed(make())
    prof_py.disable()
    b.drain()
    b.reset_gpu()
    out = io.StringIO()
    pstats.Stats(prof_py, stream=out).sort_stats("tottime").print_stats(45)
    with open(stem + ".cprofile.txt", "w") as f:
        f.write(out.getvalue())
    return dict(ttft_s=t["mean_s"], lat_s=t.get("lat_s"), steps=t.get("steps"), ttft_under_cprofile_s=t_py["mean_s"],
                streams=stream_summary(trace), cuda_calls=blocking_calls(trace))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--lengths", default="16000")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--load-mode", default="layerwise", choices=["layerwise", "async"])
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/profile_layerwise")
    args, rest = ap.parse_known_args()
    a = prefix_ttft.parse_args(["--model", args.model, "--modes", "ucm", "--lengths", args.lengths,
                                "--concurrency", args.concurrency, "--reps", str(args.reps),
                                "--decode-batch", "0", "--out", args.out] + rest)
    os.makedirs(args.out, exist_ok=True)
    import torch

    cuda = torch.cuda.is_available()
    prefix_ttft.mode_env(a, "ucm", cuda)
    instrument()
    ktc = prefix_ttft.kv_transfer_config(a, "ucm", 1, "")
    ktc["kv_connector_extra_config"]["ucm_load_mode"] = args.load_mode
    b = prefix_ttft.Bench(a, "ucm", cuda, ktc=ktc)
    b.warmup()
    res = dict(info=b.info, load_mode=args.load_mode, cells=[])
    for L in a.lengths:
        for c in a.concurrency:
            CPU.clear(), PATHS.clear(), RUNS.clear()
            reps = [b.connector_cell(L, c, own_hbm=False) for _ in range(a.reps)]  # the hits' CPU alone
            cell = dict(L=L, c=c, ttft={k: statistics.median(r[k]["mean_s"] for r in reps) for k in reps[0]},
                        cpu_s={k: dict(calls=v[0], seconds=round(v[1], 5), per_rep_ms=round(1e3 * v[1] / a.reps, 3),
                                       thread_cpu_per_rep_ms=round(1e3 * v[2] / a.reps, 3))
                               for k, v in sorted(CPU.items())},
                        copier_paths=dict(PATHS),
                        load_calls=[r for r in RUNS if not r["to_pool"]][-8:],
                        dump_calls=[r for r in RUNS if r["to_pool"]][-8:],
                        full_passes=[dict(lat_s=r["full_connector_on"].get("lat_s"), steps=r["full_connector_on"].get("steps"))
                                     for r in reps],
                        # per pass and repetition: the first token's launch and output calls by phase
                        # (bench/step_phases.py; async scheduling only: else no separate launch call)
                        launch_phases={k: [p for r in reps if r[k].get("phases")
                                           for p in [first_output_phases(r[k]["steps"], r[k]["phases"])] if p]
                                       for k in reps[0]})
            # one more 100 % and 80 % pass each under the profilers (CUDA streams; Python functions)
            A = b.fresh(c, L)
            b.timed(A)
            b.drain()
            b.reset_gpu()
            # fresh prompts with the store on first: its dumps run while the next step computes
            for name, make in (("full", lambda: b.fresh(c, L)), ("hit100", lambda: A),
                               ("hit80", lambda: b.partial(A, L))):
                cell[f"profiled_{name}"] = profiled(b, make, cuda, os.path.join(args.out, f"{name}_{L}_{c}"))
            res["cells"].append(cell)
            print(json.dumps(cell, indent=1, default=str), flush=True)
            prefix_ttft.write_json(os.path.join(args.out, "profile_layerwise.json"), res)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
