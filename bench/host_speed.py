"""How fast this host runs the CPU side of a step, so runs on different machines can be told apart.

A hit step's TTFT on a GPU is partly launch-bound: Python (vLLM's and ucm's) and kernel launches on the
model's thread. Two H200 hosts ran the same code's launch calls 1.3-1.9 x apart (2026-11-29), which moved
the cells that compare ucm with the HBM hit more than any change between the sessions. Each benchmark
records these numbers with its results (``host_speed`` in the mode's info), measured once at start-up:

- ``python_ns_per_op``: a fixed loop of dict lookups / stores and list appends, the kind of work ucm's
  planning does per block (ns per iteration, best of 5 rounds of 200,000);
- ``torch_op_us``: a small CPU tensor op through torch's dispatcher (us, best of 5 rounds of 2,000);
- ``cuda_launch_us``: a tiny kernel launch on the current CUDA device, queued without waiting (us, best of 5
  rounds of 2,000; None without CUDA);
- ``cpu_model``: /proc/cpuinfo's model name.

    python bench/host_speed.py            # prints the JSON object
"""
from __future__ import annotations

import json
import time
from typing import Optional


def _best(fn, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def python_ns_per_op(n: int = 200_000) -> float:
    def loop():
        d, out = {}, []
        for i in range(n):
            d[i & 1023] = d.get(i & 1023, 0) + 1
            out.append(i)
    return round(1e9 * _best(loop) / n, 1)


def torch_op_us(n: int = 2_000) -> Optional[float]:
    try:
        import torch
    except ImportError:
        return None
    x = torch.zeros(16)

    def loop():
        for _ in range(n):
            x.add_(1)
    return round(1e6 * _best(loop) / n, 2)


def cuda_launch_us(n: int = 2_000) -> Optional[float]:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    x = torch.zeros(16, device="cuda")
    torch.cuda.synchronize()

    def loop():
        for _ in range(n):
            x.add_(1)
        torch.cuda.synchronize()  # a few us of GPU work per launch: the queue never fills
    return round(1e6 * _best(loop) / n, 2)


def cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def measure(cuda: Optional[bool] = None) -> dict:
    """The host's numbers (module docstring); ``cuda=False`` skips the kernel launches."""
    return dict(python_ns_per_op=python_ns_per_op(), torch_op_us=torch_op_us(),
                cuda_launch_us=cuda_launch_us() if cuda is not False else None, cpu_model=cpu_model())


def summary(h: Optional[dict]) -> str:
    """One line for a report: 'python 41.2 ns/op, torch op 3.10 us, CUDA launch 6.20 us (CPU model)'."""
    if not h:
        return "n/a"
    parts = [f"python {h.get('python_ns_per_op')} ns/op", f"torch op {h.get('torch_op_us')} us"]
    if h.get("cuda_launch_us") is not None:
        parts.append(f"CUDA launch {h['cuda_launch_us']} us")
    return ", ".join(parts) + (f" ({h['cpu_model']})" if h.get("cpu_model") else "")


if __name__ == "__main__":
    print(json.dumps(measure()))
