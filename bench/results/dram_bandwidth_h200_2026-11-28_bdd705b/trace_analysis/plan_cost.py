"""CPU timing of the Python planning a 1170-block vLLM-layout dump/load does before its copies
(the profile's 'no CUDA call' stretches): to_keys, SlotPoolTier._plan (write, full pool: evictions)
and _read_plan, per stage of base.stages. Runs on the CPU build of torch (planning is device-free)."""
import collections, random, time, sys
sys.path.insert(0, '/work/main')
import torch
from ucm.tiers import create_store
from ucm.tiers.base import stages, to_keys, Task

blocks, layers, piece = 1170, 28, 32 << 10
bb = layers * piece
store = create_store("UcmDramStore", {"kv_block_size": bb, "max_cache_size": bb * blocks, "planes": layers})
rows = torch.randperm(2 * blocks, generator=torch.Generator().manual_seed(0))[:blocks].tolist()
# fill the pool with committed blocks (as the profiled dump finds it), without copies
keys = to_keys([f"b{b}" for b in range(blocks)])
for lo, hi in stages(blocks, bb):
    store._plan(keys[lo:hi], rows[lo:hi], 1, Task("dump"), write=True)
store.commit([f"b{b}" for b in range(blocks)])
t = time.perf_counter(); fresh = to_keys([f"p{b}" for b in range(blocks)]); print(f"to_keys 1170 ids: {1e3*(time.perf_counter()-t):.2f} ms")
for kind in ("read", "write"):
    for lo, hi in stages(blocks, bb, from_end=(kind == "read")):
        task, pinned = Task(kind), {}
        t = time.perf_counter()
        if kind == "write":
            plan = store._plan(fresh[lo:hi], rows[lo:hi], 1, task, write=True)
        else:
            plan = store._read_plan(keys[lo:hi], rows[lo:hi], 1, task, pinned)
        dt = time.perf_counter() - t
        if kind == "read":
            store._release(list(pinned))
        print(f"{kind} plan stage {lo}:{hi} ({hi-lo} blocks): {dt*1e3:.2f} ms ({dt*1e6/(hi-lo):.1f} us/block), {len(plan.runs)} slot runs, {len(plan.pairs)} pairs, failed {len(task.failed)}")
