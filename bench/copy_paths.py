"""Which way of moving many scattered KV pieces between HBM and pinned DRAM is fastest?

Measures, for N pieces of a given size at scattered rows of a device tensor <-> scattered slots of
a pinned host pool, the GB/s of:
  per-piece   one cudaMemcpyAsync per piece (tensor.copy_ in a loop);
  uva         one gather/scatter kernel that reads/writes pinned host memory directly (UVA view);
  staged      GPU gather into a device staging buffer + one DMA (contiguous host run), and back;
beside a plain 1 GiB pinned copy. GPU only.
    python bench/copy_paths.py --out /tmp/copy_paths.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def cuda_view(host: torch.Tensor) -> torch.Tensor:
    """A CUDA tensor aliasing pinned host memory (unified virtual addressing); keep ``host`` alive."""
    class _Iface:
        __cuda_array_interface__ = {"shape": tuple(host.shape), "typestr": "|u1",
                                    "data": (host.data_ptr(), False), "version": 3, "strides": None}
    return torch.as_tensor(_Iface(), device="cuda")


def bench(fn, reps=5):
    fn(); torch.cuda.synchronize()
    best = 1e9
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--total-mib", type=int, default=512)
    ap.add_argument("--piece-kib", type=int, nargs="+", default=[16, 32, 64, 256, 1024])
    ap.add_argument("--out")
    a = ap.parse_args()
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    nb = a.total_mib << 20
    h = torch.empty(nb, dtype=torch.uint8, pin_memory=True); d = torch.empty(nb, dtype=torch.uint8, device="cuda")
    res["plain_h2d"] = nb / bench(lambda: d.copy_(h, non_blocking=True)) / 1e9
    res["plain_d2h"] = nb / bench(lambda: h.copy_(d, non_blocking=True)) / 1e9
    print(f"{res['gpu']}: plain h2d {res['plain_h2d']:.1f} d2h {res['plain_d2h']:.1f} GB/s", flush=True)
    stream = torch.cuda.Stream()
    for kib in a.piece_kib:
        n = kib << 10
        N = nb // n
        dev = torch.randint(0, 255, (2 * N, n), dtype=torch.uint8, device="cuda")
        pool = torch.empty((2 * N, n), dtype=torch.uint8, pin_memory=True)
        pool_cuda = cuda_view(pool)
        rows = torch.randperm(2 * N, device="cuda")[:N]
        slots = torch.randperm(2 * N, device="cuda")[:N]
        rows_l, slots_l = rows.tolist(), slots.tolist()
        row = {"piece_kib": kib, "pieces": N}

        def per_piece_dump():
            with torch.cuda.stream(stream):
                for r, s in zip(rows_l, slots_l):
                    pool[s].copy_(dev[r], non_blocking=True)
            stream.synchronize()

        def per_piece_load():
            with torch.cuda.stream(stream):
                for r, s in zip(rows_l, slots_l):
                    dev[r].copy_(pool[s], non_blocking=True)
            stream.synchronize()

        def uva_dump():
            pool_cuda.index_copy_(0, slots, dev.index_select(0, rows))

        def uva_load():
            dev.index_copy_(0, rows, pool_cuda.index_select(0, slots))

        staging = torch.empty((N, n), dtype=torch.uint8, device="cuda")
        run = pool[:N]  # best case: the request's slots are one contiguous run

        def staged_dump():
            torch.index_select(dev, 0, rows, out=staging)
            run.copy_(staging, non_blocking=True)

        def staged_load():
            staging.copy_(run, non_blocking=True)
            dev.index_copy_(0, rows, staging)

        for name, fn in [("per_piece_dump", per_piece_dump), ("per_piece_load", per_piece_load),
                         ("uva_dump", uva_dump), ("uva_load", uva_load),
                         ("staged_dump", staged_dump), ("staged_load", staged_load)]:
            if name.startswith("per_piece") and N > 40000:
                continue
            row[name] = nb / bench(fn, reps=3) / 1e9
        # correctness of the uva path
        uva_dump(); torch.cuda.synchronize()
        assert torch.equal(pool[slots_l[0]].cuda(), dev[rows_l[0]])
        res["rows"].append(row)
        print(row, flush=True)
        del dev, pool, pool_cuda, staging
        torch.cuda.empty_cache()
    if a.out:
        json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
