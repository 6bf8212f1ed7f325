"""Where each ``engine.step()`` call's time goes (in-process engine core): ms per phase, per call.

With vLLM's async scheduling a step's first token comes back only from the call after the one that
launched it, so a slow launch delays every first token (``prefix_ttft_report.first_output_calls``).
This splits those calls into phases (inclusive times; an indented phase is part of the one above it):

- ``schedule``: ``Scheduler.schedule``
  - ``sched.connector``: the connector's scheduler hooks (lookups, pins, allocation notes, metadata)
  - ``sched.alloc``: ``KVCacheManager.allocate_slots`` (vLLM's blocks; a connector hit's blocks are
    new to vLLM's prefix cache, where an HBM hit's are found in it)
- ``execute``: the executor's ``execute_model`` (inputs, the connector's pre-forward, the forward's launch)
  - ``exec.to_load``: from its start to the connector's ``start_load_kv`` (inputs, attention metadata)
    - ``exec.preempt``: the connector's ``handle_preemptions`` and ``bind_connector_metadata`` (for ucm:
      the dumps of preempted requests, and committing earlier steps' dumps that are done)
  - ``exec.load``: ``start_load_kv``
  - ``exec.layers``: ``wait_for_layer_load`` and ``save_kv_layer``, every layer
- ``sample``: the executor's ``sample_tokens`` (sampling; on the V2 runner the connector's post-forward)
  - ``sample.post``: the connector's ``wait_for_save``, ``get_finished`` and
    ``get_block_ids_with_load_errors``
- ``update``: ``Scheduler.update_from_output``
- ``other``: the rest of the call, mostly waiting for an earlier step's output (the batch queue)
- ``cpu`` (not a phase): the calling thread's own CPU time over the whole call. A call far longer than
  its CPU time waited: for the GPU, for a driver call that blocks, or for the GIL another thread held;
  a slow host core shows in both

Wrappers are instance attributes (vLLM looks its hooks up on the objects at call time) and cost
about a microsecond a call. Nothing here imports vLLM: it takes the engine core it is given.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

TOP = ("schedule", "execute", "sample", "update")
SCHED_HOOKS = ("get_num_new_matched_tokens", "update_state_after_alloc", "build_connector_meta",
               "request_finished", "update_connector_output")
LAYER_HOOKS = ("wait_for_layer_load", "save_kv_layer")
PRE_HOOKS = ("handle_preemptions", "bind_connector_metadata")
POST_HOOKS = ("wait_for_save", "get_finished", "get_block_ids_with_load_errors")
#: the phases in report order
PHASES = ("schedule", "sched.connector", "sched.alloc", "execute", "exec.to_load", "exec.preempt", "exec.load",
          "exec.layers", "sample", "sample.post", "update", "other", "cpu")


class StepPhases:
    """Install once on an in-process engine core; ``begin()`` before and ``end()`` after each
    ``engine.step()`` call, which returns that call's {phase: ms} (phases that did not run are left out)."""

    def __init__(self, core: Any, worker_connector: Optional[Any] = None):
        self._acc: Optional[dict] = None
        self._t0 = 0.0
        self._exec_t0: Optional[float] = None
        sched = core.scheduler
        self._wrap(sched, "schedule", "schedule")
        self._wrap(sched, "update_from_output", "update")
        self._wrap(core.model_executor, "execute_model", "execute", on_start=self._exec_started)
        self._wrap(core.model_executor, "sample_tokens", "sample")
        kvm = getattr(sched, "kv_cache_manager", None)
        if kvm is not None:
            self._wrap(kvm, "allocate_slots", "sched.alloc")
        conn = getattr(sched, "connector", None)
        if conn is not None:
            for name in SCHED_HOOKS:
                self._wrap(conn, name, "sched.connector")
        if worker_connector is not None:
            self._wrap(worker_connector, "start_load_kv", "exec.load", on_start=self._load_started)
            for name in PRE_HOOKS:
                self._wrap(worker_connector, name, "exec.preempt")
            for name in LAYER_HOOKS:
                self._wrap(worker_connector, name, "exec.layers")
            for name in POST_HOOKS:
                self._wrap(worker_connector, name, "sample.post")

    def begin(self) -> None:
        self._acc, self._t0, self._exec_t0 = {}, time.perf_counter(), None
        self._cpu0 = time.thread_time()

    def end(self) -> dict:
        total = 1e3 * (time.perf_counter() - self._t0)
        acc, self._acc = self._acc or {}, None
        acc["other"] = total - sum(acc.get(k, 0.0) for k in TOP)
        acc["cpu"] = 1e3 * (time.thread_time() - self._cpu0)
        return {k: round(v, 3) for k, v in acc.items()}

    # ---- internals ----
    def _add(self, label: str, ms: float) -> None:
        if self._acc is not None:
            self._acc[label] = self._acc.get(label, 0.0) + ms

    def _exec_started(self, t: float) -> None:
        self._exec_t0 = t

    def _load_started(self, t: float) -> None:
        if self._exec_t0 is not None:
            self._add("exec.to_load", 1e3 * (t - self._exec_t0))
            self._exec_t0 = None

    def _wrap(self, obj: Any, name: str, label: str, on_start: Optional[Callable[[float], None]] = None) -> None:
        fn = getattr(obj, name, None)
        if fn is None:
            return
        add = self._add

        def timed(*args, **kw):
            t0 = time.perf_counter()
            if on_start is not None:
                on_start(t0)
            try:
                return fn(*args, **kw)
            finally:
                add(label, 1e3 * (time.perf_counter() - t0))

        setattr(obj, name, timed)
