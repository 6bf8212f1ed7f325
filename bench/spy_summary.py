"""Summarise a py-spy raw profile (``py-spy record -f raw``): samples per process and thread, and per thread
the functions most often on top of the stack, ucm's own frames apart.

    python3 bench/spy_summary.py spy.txt [--top 12] [--json out.json]
    python3 bench/spy_summary.py spy.txt --under "UcmWorker._end_step" [--depth 2]

Made for the trace replay on the GPU (``bench/gpu_session.sh replayspy``): recorded with ``--gil`` a sample
is a moment a thread held the GIL, so the threads' shares say who kept vLLM's engine thread waiting (ucm's dump
submitter, its copy threads) and the engine thread's top frames say where its own time went. The replay
writes one profile per mode (``spy_<mode>.txt``: each mode's process attaches py-spy to itself,
``trace_replay.SpyOnSelf``); a profile recorded with ``--subprocesses`` (stacks starting "process 123:...")
is split by process.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
from typing import Iterable

#: a frame as py-spy writes it: "function (path/file.py:line)"
FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")


def parse(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """(frames root first, samples) per raw line; blank or malformed lines are skipped."""
    out = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        out.append((stack.split(";"), int(count)))
    return out


def short(frame: str) -> str:
    """"fn (path/to/file.py:12)" -> "fn (file.py)"."""
    m = FRAME.match(frame)
    if not m:
        return frame
    return f"{m['fn']} ({m['file'].rsplit('/', 1)[-1]})"


def is_ucm(frame: str) -> bool:
    """A frame of this package's code (py-spy writes paths relative to sys.path, or absolute)."""
    m = FRAME.match(frame)
    return bool(m) and (m["file"].startswith("ucm/") or "/ucm/" in m["file"])


def split_root(frames: list[str]) -> tuple[str, str, list[str]]:
    """(process, thread, the rest): with --subprocesses the first frame names the process; with --threads
    (or py-spy's default raw output) a thread frame follows; a stack without them is one unnamed thread."""
    process = ""
    while frames and frames[0].startswith("process "):  # a child process comes after its parents: keep the last
        process, frames = frames[0], frames[1:]
    thread = ""
    if frames and frames[0].startswith("thread "):
        thread, frames = frames[0], frames[1:]
    if not thread:  # no thread frame: name it by its outermost function (the engine's "<module>", a pool's "_bootstrap")
        thread = short(frames[0]) if frames else "?"
    return process, thread, frames


def summarise(stacks: list[tuple[list[str], int]], top: int = 12, within: str = r"ReplayBench\.replay ") -> dict:
    """Per process: samples, and per thread its samples, those inside a frame matching ``within`` (the
    replay loop: start-up and model loading left out), the leaf frames most often sampled and the outermost
    ucm frame of each sample that has one (what of ucm ran on that thread); a thread with samples inside
    ``within`` is described by those only."""
    inside = re.compile(within)
    new = lambda: dict(samples=0, leaf=collections.Counter(), ucm=collections.Counter())  # noqa: E731
    procs: dict = collections.defaultdict(lambda: dict(samples=0, threads=collections.defaultdict(
        lambda: dict(all=new(), within=new()))))
    for frames, n in stacks:
        process, thread, rest = split_root(frames)
        p = procs[process]
        p["samples"] += n
        t = p["threads"][thread]
        parts = [t["all"]] + ([t["within"]] if any(inside.search(f) for f in rest) else [])
        ucm = next((f for f in rest if is_ucm(f)), None)
        for c in parts:
            c["samples"] += n
            if rest:
                c["leaf"][short(rest[-1])] += n
            if ucm is not None:
                c["ucm"][short(ucm)] += n
    out = {}
    for process, p in sorted(procs.items(), key=lambda kv: -kv[1]["samples"]):
        threads = {}
        for name, t in sorted(p["threads"].items(), key=lambda kv: -kv[1]["all"]["samples"]):
            c = t["within"] if t["within"]["samples"] else t["all"]
            threads[name] = dict(samples=t["all"]["samples"], share=round(t["all"]["samples"] / p["samples"], 4),
                                 within_samples=t["within"]["samples"], leaf=c["leaf"].most_common(top),
                                 ucm=c["ucm"].most_common(top), ucm_samples=sum(c["ucm"].values()))
        out[process or "(one process)"] = dict(samples=p["samples"], threads=threads)
    return out


def under(stacks: list[tuple[list[str], int]], frame: str, depth: int = 1, top: int = 12) -> dict:
    """Where the samples inside the first frame matching ``frame`` went: their count, the ``depth`` frames
    just below it (a path "a > b") and the leaf frames, each with its samples (e.g. ``--under
    "UcmWorker._end_step"``: a step's dumps split into planning, copies, commits)."""
    inside = re.compile(frame)
    total, paths, leaves = 0, collections.Counter(), collections.Counter()
    for frames, n in stacks:
        i = next((j for j, f in enumerate(frames) if inside.search(f)), None)
        if i is None:
            continue
        total += n
        below = [short(f) for f in frames[i + 1:]]
        paths[" > ".join(below[:depth]) or "(itself)"] += n
        leaves[below[-1] if below else "(itself)"] += n
    return dict(frame=frame, samples=total, below=paths.most_common(top), leaf=leaves.most_common(top))


def under_markdown(u: dict) -> str:
    return "\n".join([f"## inside `{u['frame']}`: {u['samples']} samples", "", "just below:", ""]
                     + [f"- {n} {p}" for p, n in u["below"]] + ["", "top of the stack:", ""]
                     + [f"- {n} {p}" for p, n in u["leaf"]] + [""])


def markdown(summary: dict, top: int = 12) -> str:
    lines = []
    for process, p in summary.items():
        lines += [f"## {process[:200]}: {p['samples']} samples", "",
                  "| thread | samples | share | in the replay loop | of those (or all) in ucm |", "|---|---:|---:|---:|---:|"]
        for name, t in p["threads"].items():
            lines.append(f"| {name} | {t['samples']} | {t['share']:.1%} | {t['within_samples']} | {t['ucm_samples']} |")
        for name, t in list(p["threads"].items())[:4]:
            lines += ["", f"{name}: top of the stack", ""] + [f"- {n} {f}" for f, n in t["leaf"][:top]]
            if t["ucm"]:
                lines += ["", f"{name}: ucm's outermost frame", ""] + [f"- {n} {f}" for f, n in t["ucm"][:top]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", help="py-spy record -f raw output")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--within", default=r"ReplayBench\.replay ",
                    help="regex of a frame: a thread's samples inside it describe that thread (default: the replay loop)")
    ap.add_argument("--under", help="regex of a frame: instead, where the samples inside it went (see ``under``)")
    ap.add_argument("--depth", type=int, default=1, help="--under: frames below it per path")
    a = ap.parse_args()
    with open(a.raw) as f:
        stacks = parse(f)
    s = under(stacks, a.under, a.depth, a.top) if a.under else summarise(stacks, a.top, a.within)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(s, f, indent=1)
    print(under_markdown(s) if a.under else markdown(s, a.top))


if __name__ == "__main__":
    main()
