"""Run independent single-GPU benchmark jobs in parallel, one per GPU ("lane"), on GPUs whose
host<->device copies do not slow each other down (two GPUs behind one PCIe switch share its uplink,
and our benchmarks time pinned-memory copies).

probe: time pinned host->device and device->host copies per GPU, alone and all at once; if any GPU
drops below --min-ratio x its solo H2D bandwidth, time every pair and keep the largest set of GPUs
with no conflicting pair (lowest indices on ties). Pairs miss limits that more GPUs share (host
memory), so the chosen set is then timed together and its highest index dropped until it holds.
The decision uses H2D; D2H is timed and reported. Run it with every GPU visible. Ends with LANES=...
    python3 bench/gpu_lanes.py probe [--gib 1] [--min-ratio 0.9] [--out lanes.json]

run: a FIFO of shell jobs; each lane runs one at a time with CUDA_VISIBLE_DEVICES=<gpu>, LANE=<gpu>,
JOB=<n>. Output goes to <log-dir>/job<n>.log (default $OUT or /tmp/lanes) and to stdout, each line
prefixed "[jobN gpuG] ". Exits 0 if every job returned 0, else 1.
    python3 bench/gpu_lanes.py run --lanes 0,2 [--log-dir DIR] [--timeout-s T] --job "cmd1" --job "cmd2"
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone


def choose_lanes(solo: dict[int, float], concurrent_all: dict[int, float] | None,
                 pairs: dict[tuple[int, int], tuple[float, float]] | None, min_ratio: float) -> list[int]:
    """GPUs that may copy at the same time: all if none slows down with all running, else the largest
    set with no conflicting pair (a pair conflicts if either side falls below min_ratio x solo, or
    was not measured). Ties go to the lexicographically smallest set of indices."""
    gpus = sorted(solo)
    if len(gpus) <= 1:
        return gpus
    if concurrent_all is not None and all(concurrent_all[g] >= min_ratio * solo[g] for g in gpus):
        return gpus
    if pairs is None:
        raise ValueError("GPUs slow each other down, but no pair numbers were given")
    ok = {frozenset((i, j)) for (i, j), (bi, bj) in pairs.items()
          if bi >= min_ratio * solo[i] and bj >= min_ratio * solo[j]}
    for size in range(len(gpus), 0, -1):
        for combo in itertools.combinations(gpus, size):
            if all(frozenset(p) in ok for p in itertools.combinations(combo, 2)):
                return list(combo)
    return gpus[:1]


# ---------------------------------------------------------------------------------------------- probe
def _copy_rates(torch, bufs, devs, reps=5, warmup=2):
    """Each GPU in devs copies in its own thread and stream, all starting together; {dev: (h2d, d2h) GB/s}."""
    barrier, out, errors = threading.Barrier(len(devs)), {}, []

    def work(d):
        try:
            _work(d)
        except BaseException as e:  # let the other threads go, re-raise below
            errors.append(e)
            barrier.abort()

    def _work(d):
        host, dev = bufs[d]
        torch.cuda.set_device(d)
        stream = torch.cuda.Stream(d)
        rates = []
        with torch.cuda.stream(stream):
            for dst, src in ((dev, host), (host, dev)):
                for _ in range(warmup):
                    dst.copy_(src, non_blocking=True)
                stream.synchronize()
                barrier.wait()
                t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0.record(stream)
                for _ in range(reps):
                    dst.copy_(src, non_blocking=True)
                t1.record(stream)
                t1.synchronize()
                rates.append(reps * host.numel() / (t0.elapsed_time(t1) / 1e3) / 1e9)
        out[d] = tuple(rates)

    threads = [threading.Thread(target=work, args=(d,)) for d in devs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def probe(args) -> int:
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        print("gpu_lanes probe: no CUDA GPU visible (torch with CUDA is required)", file=sys.stderr)
        return 2
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        print("warning: CUDA_VISIBLE_DEVICES is set; lanes are indices into that list, not the machine's",
              file=sys.stderr)
    n, nbytes = torch.cuda.device_count(), int(args.gib * 2**30)
    gpus = list(range(n))
    bufs = {d: (torch.empty(nbytes, dtype=torch.uint8, pin_memory=True),
                torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{d}")) for d in gpus}
    solo = {d: _copy_rates(torch, bufs, [d])[d] for d in gpus}
    conc = _copy_rates(torch, bufs, gpus) if n > 1 else dict(solo)
    h2d = {d: solo[d][0] for d in gpus}
    pairs = None
    if n > 1 and any(conc[d][0] < args.min_ratio * h2d[d] for d in gpus):
        pairs = {}
        for i, j in itertools.combinations(gpus, 2):
            r = _copy_rates(torch, bufs, [i, j])
            pairs[(i, j)] = (r[i][0], r[j][0])
    lanes = choose_lanes(h2d, {d: conc[d][0] for d in gpus}, pairs, args.min_ratio)
    # Pairs miss limits shared by more GPUs (host memory, root complex): run the chosen set together
    # and drop its highest index until every member keeps min_ratio of its solo H2D.
    checked = {}
    while len(lanes) > 1:
        r = conc if lanes == gpus else _copy_rates(torch, bufs, lanes)
        checked[",".join(map(str, lanes))] = {d: r[d] for d in lanes}
        if all(r[d][0] >= args.min_ratio * h2d[d] for d in lanes):
            break
        lanes = lanes[:-1]
    names = {d: torch.cuda.get_device_name(d) for d in gpus}

    print(f"{'gpu':>3}  {'name':<28} {'h2d solo':>9} {'h2d all':>9} {'ratio':>6} {'d2h solo':>9} {'d2h all':>9}")
    for d in gpus:
        print(f"{d:>3}  {names[d][:28]:<28} {solo[d][0]:>9.1f} {conc[d][0]:>9.1f} {conc[d][0] / solo[d][0]:>6.2f}"
              f" {solo[d][1]:>9.1f} {conc[d][1]:>9.1f}")
    for (i, j), (bi, bj) in (pairs or {}).items():
        bad = bi < args.min_ratio * h2d[i] or bj < args.min_ratio * h2d[j]
        print(f"pair {i},{j}: h2d {bi:.1f} / {bj:.1f} GB/s (ratio {bi / h2d[i]:.2f} / {bj / h2d[j]:.2f})"
              f"{'  CONFLICT' if bad else ''}")
    for key, r in checked.items():
        print(f"lanes {key} together: h2d ratio " + " ".join(f"{r[d][0] / solo[d][0]:.2f}" for d in r)
              + ", d2h ratio " + " ".join(f"{r[d][1] / solo[d][1]:.2f}" for d in r))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "gib": args.gib,
                       "min_ratio": args.min_ratio, "gpu_names": names,
                       "solo": {d: {"h2d_gbps": s[0], "d2h_gbps": s[1]} for d, s in solo.items()},
                       "concurrent": {d: {"h2d_gbps": conc[d][0], "d2h_gbps": conc[d][1]} for d in gpus},
                       "pairs": None if pairs is None else {f"{i},{j}": list(v) for (i, j), v in pairs.items()},
                       "lanes_checked": {k: {d: list(v) for d, v in r.items()} for k, r in checked.items()},
                       "lanes": lanes}, f, indent=2)
    print("LANES=" + ",".join(map(str, lanes)))
    return 0


# ------------------------------------------------------------------------------------------------ run
def run(args) -> int:
    lanes = [int(x) for x in args.lanes.split(",") if x.strip()]
    if not lanes or len(set(lanes)) != len(lanes):
        print(f"gpu_lanes run: --lanes needs distinct GPU indices, got {args.lanes!r}", file=sys.stderr)
        return 2
    log_dir = args.log_dir or os.environ.get("OUT") or "/tmp/lanes"
    os.makedirs(log_dir, exist_ok=True)
    jobs = queue.Queue()
    for n, cmd in enumerate(args.job, 1):
        jobs.put((n, cmd))
    out_lock, start_lock, stop = threading.Lock(), threading.Lock(), threading.Event()
    procs, results = {}, {}

    def pump(proc, n, gpu, log):
        for line in proc.stdout:
            log.write(line)
            log.flush()
            with out_lock:
                sys.stdout.write(f"[job{n} gpu{gpu}] {line}" if line.endswith("\n") else f"[job{n} gpu{gpu}] {line}\n")
                sys.stdout.flush()

    def lane(gpu):
        while True:
            try:
                n, cmd = jobs.get_nowait()
            except queue.Empty:
                return
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), LANE=str(gpu), JOB=str(n))
            with open(os.path.join(log_dir, f"job{n}.log"), "w") as log:
                t0 = time.monotonic()
                with start_lock:  # an interrupt either sees this job in procs or stops it starting
                    if stop.is_set():
                        return
                    proc = subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            env=env, text=True, errors="replace", bufsize=1,
                                            start_new_session=True)
                    procs[n] = proc
                reader = threading.Thread(target=pump, args=(proc, n, gpu, log), daemon=True)
                reader.start()
                timed_out = False
                try:
                    rc = proc.wait(timeout=args.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _kill(proc)
                    rc = proc.wait()
                _kill(proc)  # whatever the job left running in the background
                reader.join(timeout=5)
                procs.pop(n, None)
            results[n] = (gpu, rc, time.monotonic() - t0, timed_out, cmd)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_term)
    threads = [threading.Thread(target=lane, args=(g,), daemon=True) for g in lanes]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.05)
    except KeyboardInterrupt:
        with start_lock:
            stop.set()
            for proc in list(procs.values()):
                _kill(proc)
        print("gpu_lanes run: interrupted, killed running jobs", file=sys.stderr)
        return 130

    print(f"{'job':>4} {'gpu':>4} {'rc':>5} {'seconds':>8}  command")
    for n in sorted(results):
        gpu, rc, secs, timed_out, cmd = results[n]
        print(f"{n:>4} {gpu:>4} {rc:>5} {secs:>8.1f}  {cmd[:80]}{'  (TIMED OUT)' if timed_out else ''}")
    return 0 if len(results) == len(args.job) and all(r[1] == 0 for r in results.values()) else 1


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # the group is gone already
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="measure copy interference, print LANES=...")
    p.add_argument("--gib", type=float, default=1.0, help="pinned buffer size per GPU (GiB)")
    p.add_argument("--min-ratio", type=float, default=0.9, help="concurrent/solo H2D below this = conflict")
    p.add_argument("--out", help="write the numbers and lanes as JSON here")
    r = sub.add_parser("run", help="run jobs, one at a time per lane")
    r.add_argument("--lanes", required=True, help="comma-separated GPU indices, e.g. 0,2")
    r.add_argument("--job", action="append", required=True, help="shell command (repeat for more jobs)")
    r.add_argument("--log-dir", help="where job<N>.log go (default $OUT or /tmp/lanes)")
    r.add_argument("--timeout-s", type=float, default=None, help="kill a job's process group after T seconds")
    args = ap.parse_args(argv)
    return probe(args) if args.cmd == "probe" else run(args)


if __name__ == "__main__":
    sys.exit(main())
