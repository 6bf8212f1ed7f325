"""What one layer of a layer-wise load or dump costs the model's thread, per copier path, without vLLM.

The connector reads a DRAM hit layer by layer: ``open_blocks`` once, then ``read_planes`` for
layer 0 and for batches of the layers ahead (the worker's ``_lookahead``), the model's stream
waiting for each layer's copies; it writes a step's new blocks after the forward (one ``dump_rows``
of every layer). On a step that computes few tokens those calls, not the
link, set the pace. This measures them on a vLLM-0.26-like KV
cache (``--layers`` tensors of (blocks, ``--layer-kib``) bytes: K and V of a block packed) and a
DRAM pool with one plane per layer, for the rows vLLM hands out:

  consecutive      fresh blocks, ascending: slots and rows run together (the direct path: a DMA a layer)
  interleaved      every other row (two requests' blocks freed in turn): no two blocks on adjacent
                   rows, so no run of slots and rows together, whatever order the pool gives the
                   slots in (the staging path: DMAs by slot run into a staging buffer, then a
                   gather or scatter kernel)
  interleaved-uva  the same rows with the DMA paths off (``planes.MIN_RUN_BYTES`` raised): one gather
                   and one scatter kernel reading or writing the pinned pool through UVA
(Rows that are merely reversed, as vLLM hands out a freed prompt's blocks, take the direct path: new
blocks get their slots in row order.)

For each: the CPU microseconds of the ``read_planes`` / ``dump_rows`` calls per layer (their sum
over a read or write, divided by the layers; median over repetitions), the whole read's or write's
wall time with the calls and waits as the worker makes them, and GB/s. ``--model-gpu-us``
puts a stand-in for the model between the calls (a spin kernel of that many microseconds per
layer on the caller's stream, plus ``--model-cpu-us`` of CPU), so a copier that waits for the
model's stream, or idles the link while a kernel runs, shows in the wall time; ``alone ms`` is
the model's layers without copies (an HBM hit). Bytes are checked after every run. On the CPU it
runs the thread copies (checks the code only).

    python bench/layer_launch.py --model-gpu-us 0,300,3000 --model-cpu-us 100 --out /tmp/layer_launch.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Optional

import torch

from ucm.tiers import create_store, planes

ORDERS = ("consecutive", "interleaved", "interleaved-uva")


def dst_rows(order: str, blocks: int, base: int) -> list[int]:
    """Rows of the loaded (or dumped) blocks in the KV cache, first block first."""
    if order == "consecutive":
        return list(range(base, base + blocks))
    return list(range(base, base + 2 * blocks, 2))  # interleaved: every other row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wait_parts(parts) -> None:
    for p in parts:  # as the worker does: the model's stream waits on the GPU, the CPU on the CPU
        stream_wait = getattr(p, "stream_wait", None)
        if stream_wait is not None:
            stream_wait()
        else:
            p.wait(60.0)


class Model:
    """Stands in for the model between the connector's per-layer calls: ``gpu_us`` of work queued on
    the caller's stream per layer (a spin kernel) and ``cpu_us`` of the CPU's time (launching the
    layer's kernels). Zero for both: the copies alone, back to back."""

    def __init__(self, device: torch.device, gpu_us: float = 0.0, cpu_us: float = 0.0):
        self.device, self.gpu_us, self.cpu_us = device, gpu_us, cpu_us
        self.cycles = 0
        if gpu_us and device.type == "cuda":  # cycles per microsecond of torch.cuda._sleep, measured
            torch.cuda._sleep(1000)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            torch.cuda._sleep(1 << 22)
            b.record()
            b.synchronize()
            self.cycles = int(gpu_us * (1 << 22) / (a.elapsed_time(b) * 1e3))

    def layer(self) -> None:
        if self.cycles:
            torch.cuda._sleep(self.cycles)
        end = time.perf_counter() + self.cpu_us * 1e-6
        while time.perf_counter() < end:
            pass


def _load_layers(call, layers: int, model: Model) -> list[float]:
    """A layer-wise load as the worker makes it: layer 0 launched first; before layer l, the
    layers up to the worker's ``_lookahead`` launched in one ``call(first, upto)`` (it returns
    each layer's completions), the model's stream waits for layer l's, then the layer computes.
    CPU seconds of each call."""
    from ucm.integration.vllm.worker import _lookahead  # the worker's own rule

    cpu, parts, issued = [], {}, 0

    def launch(upto: int) -> None:
        nonlocal issued
        c0 = time.perf_counter()
        for layer, p in zip(range(issued, upto), call(issued, upto)):
            parts[layer] = p
        cpu.append(time.perf_counter() - c0)
        issued = upto

    launch(1)
    for layer in range(layers):
        upto = min(_lookahead(layer, issued), layers)
        if upto > issued:
            launch(upto)
        _wait_parts(parts.pop(layer))
        model.layer()
    return cpu


def _dump_layers(call, layers: int, model: Model) -> list[float]:
    """A step's dump as the worker makes it: every layer computes, then one ``call()`` launches
    every layer's copies (after the forward's work on the caller's stream). CPU seconds of it."""
    for _ in range(layers):
        model.layer()
    c0 = time.perf_counter()
    call()
    return [time.perf_counter() - c0]


def run(device: torch.device, order: str, layers: int, blocks: int, layer_bytes: int, reps: int,
        model: Optional[Model] = None) -> dict:
    """Per repetition: fresh blocks dumped from ``order``'s rows into fresh slots, committed, then loaded
    back into the same rows of a zeroed cache. The pool holds every repetition (no eviction)."""
    model = model or Model(device)
    store = create_store("UcmDramStore", {"kv_block_size": layer_bytes * layers,
                                          "max_cache_size": layer_bytes * layers * (blocks * (reps + 1) + 4),
                                          "planes": layers})
    g = torch.Generator().manual_seed(0)
    src = [torch.randint(0, 255, (3 * blocks + 2, layer_bytes), dtype=torch.uint8, generator=g).to(device)
           for _ in range(layers)]
    dst = [torch.zeros_like(t) for t in src]
    rows = dst_rows(order, blocks, blocks + 1)
    saved = planes.MIN_RUN_BYTES
    if order.endswith("-uva"):
        planes.MIN_RUN_BYTES = 1 << 62
    dump_cpu, load_cpu, dump_wall, load_wall = [], [], [], []
    try:
        for rep in range(reps + 1):  # the first repetition warms up (staging buffers, index tensors)
            ids = [f"r{rep}-{i}" for i in range(blocks)]
            _sync(device)
            t0 = time.perf_counter()
            tasks = []
            cpu = _dump_layers(lambda: tasks.append(store.dump_rows(ids, src, rows)), layers, model)
            assert [store.wait(t) for t in tasks] == [0]
            _sync(device)
            wall = time.perf_counter() - t0
            store.commit(ids)
            for d in dst:
                d.zero_()
            _sync(device)
            t0 = time.perf_counter()
            br = store.open_blocks(ids, rows)
            plan = br.plan  # the pool's real plan: its slots follow the rows
            rcpu = _load_layers(lambda a, b: [[p] for p in store.read_planes(
                br, dst[a:b], offset=a * layer_bytes, last=b == layers)], layers, model)
            assert store.wait(br.task) == 0
            _sync(device)
            rwall = time.perf_counter() - t0
            for s_, d in zip(src, dst):
                assert torch.equal(d[rows], s_[rows]), "bytes must round-trip exactly"
            if rep:
                dump_cpu.append(sum(cpu) / layers)
                load_cpu.append(sum(rcpu) / layers)
                dump_wall.append(wall)
                load_wall.append(rwall)
    finally:
        planes.MIN_RUN_BYTES = saved
        store.close()
    nbytes = layers * blocks * layer_bytes
    alone = []  # the model's layers without copies: what a step takes when every block is in HBM
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(layers):
            model.layer()
        _sync(device)
        alone.append(time.perf_counter() - t0)
    return {"order": order, "layers": layers, "blocks": blocks, "layer_bytes": layer_bytes,
            "model_gpu_us": model.gpu_us, "model_cpu_us": model.cpu_us, "model_alone_ms": 1e3 * min(alone),
            "row_runs": len(plan.pairs), "slot_runs": len(plan.runs),
            "dump_cpu_us_per_layer": 1e6 * statistics.median(dump_cpu),
            "load_cpu_us_per_layer": 1e6 * statistics.median(load_cpu),
            "dump_wall_ms": 1e3 * min(dump_wall), "load_wall_ms": 1e3 * min(load_wall),
            "dump_gbps": nbytes / min(dump_wall) / 1e9, "load_gbps": nbytes / min(load_wall) / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--blocks", type=int, default=800, help="blocks a load moves (16k tokens at 80 %%: 800)")
    ap.add_argument("--layer-kib", type=int, default=32, help="one layer of one block, K and V (Qwen2.5-7B: 32)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--orders", default=",".join(ORDERS))
    ap.add_argument("--model-gpu-us", default="0",
                    help="comma list: GPU microseconds of work per layer on the caller's stream (a row per value)")
    ap.add_argument("--model-cpu-us", type=float, default=0.0,
                    help="CPU microseconds per layer the model's thread spends launching (with --model-gpu-us > 0)")
    ap.add_argument("--out")
    a = ap.parse_args()
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    rows = []
    print(f"{info['device']} | torch {info['torch']} | {a.layers} layers x {a.blocks} blocks x {a.layer_kib} KiB")
    print(f"{'order':<12} {'model us':>8} {'row runs':>8} {'dump us/layer':>13} {'load us/layer':>13} "
          f"{'dump ms':>8} {'load ms':>8} {'alone ms':>8} {'dump GB/s':>9} {'load GB/s':>9}")
    for gpu_us in (float(x) for x in a.model_gpu_us.split(",")):
        model = Model(device, gpu_us, a.model_cpu_us if gpu_us else 0.0)
        for order in a.orders.split(","):
            r = run(device, order, a.layers, a.blocks, a.layer_kib << 10, a.reps, model)
            rows.append(r)
            print(f"{order:<12} {gpu_us:>8.0f} {r['row_runs']:>8} {r['dump_cpu_us_per_layer']:>13.0f} "
                  f"{r['load_cpu_us_per_layer']:>13.0f} {r['dump_wall_ms']:>8.2f} {r['load_wall_ms']:>8.2f} "
                  f"{r['model_alone_ms']:>8.2f} {r['dump_gbps']:>9.1f} {r['load_gbps']:>9.1f}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
