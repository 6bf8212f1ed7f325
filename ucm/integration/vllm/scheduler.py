"""The scheduler side: which prompt blocks ucm holds, and what each step loads and dumps.

- ``get_num_new_matched_tokens``: after vLLM's own (block-aligned) hit, the longest run of full
  blocks the store holds for every TP rank, leaving at least the last prompt token to compute.
  In ``layerwise`` mode the hit is then pinned in every rank's memory tier (it cannot be evicted
  before it loads): the request runs in this very step and the worker loads each layer ahead of
  its attention. A hit that cannot be pinned (on disk only, or evicted meanwhile) and every hit
  in ``async`` mode loads between steps: the request waits (WAITING_FOR_REMOTE_KVS) while other
  requests compute, and a failed block is recomputed before the request ever runs. Pins are
  released by the worker once the load is submitted, or here when the request ends without it.
  Once the layer-wise hits a step took already compute ``step_tokens`` new tokens, a further
  request with a hit is left for the next step (``None``: vLLM keeps it first in its queue). Such a
  step keeps the GPU busy already: batching one more prefill into it delays every first token in
  it by that prefill's compute, and the added request would finish no sooner in the next step.
  Likewise once they load ``step_load_blocks`` blocks: a load-bound step (e.g. 100 % hits) then
  serves its requests in turn, each in a step of its own, and the next step's copies queue behind
  this one's, so the link does not wait.
  With ``in_turn_tokens`` a hit either budget left out also waits until the tokens of the step
  that filled it are back (the workers report each step they ran, ``UcmWorkerMetadata.ran``),
  if that step computes at most ``in_turn_tokens`` new tokens: vLLM's async scheduling would
  otherwise launch the next step first, and a launch longer than the step's rest on the GPU delays
  them (a longer step hides the launch). A step whose report has not come after
  ``IN_TURN_TIMEOUT_S`` is not waited for any longer.
  A step whose layer-wise hits load at least ``UPFRONT_RATIO`` tokens per token the step computes
  (a 100 % hit computes one block) is load-bound: ``meta.upfront`` tells the worker to launch every
  layer's copies before the forward, so the link never waits for the forward's CPU to reach a layer.
  So does a step whose hits load at most ``upfront_blocks`` blocks (small hits: one launch, not one a
  group of layers).
- ``update_state_after_alloc``: records the vLLM blocks the hit loads into. With ``prefetch``, a
  load-bound hit's copies start right there, when the worker shares this thread (TP = 1: vLLM
  schedules a step and then runs it on the same thread, so the copies queue behind every step
  already launched and the step's layers wait for them as for any layer-wise load).
- ``build_connector_meta``: this step's loads, and dumps of every block that becomes full in this
  step (prompt and generated tokens), once per step even when requests share it (the store
  itself skips blocks it already holds). A prefix vLLM found in its own cache is dumped only
  past what the stores hold of it (``_stored_prefix``).
- Dumps are asynchronous (the worker commits them steps later), so vLLM must not reuse a block
  while a dump still reads it. Every step has a number (``meta.seq``); each worker reports, per
  TP rank, the step up to which all its dumps are done (``UcmWorkerMetadata`` through vLLM's
  ``update_connector_output``). ``request_finished`` returns ``delay_free=True`` for a request
  whose last dump is past that point on some rank, and names it in the next ``meta.delayed``;
  the worker reports it in ``finished_sending`` once its dumps are done, and vLLM frees its
  blocks then. Requests whose dumps are known done are freed at once. The stats count delayed
  frees and the blocks they hold times the steps held (HBM a stream's new requests wait for).
- Preemption frees a request's blocks at once (no connector hook can delay it, in 0.26 and 0.32):
  ``build_connector_meta`` lists preempted requests with dumps in ``meta.preempted``, and the
  worker waits for their dumps in ``handle_preemptions``, before the step that may reuse the
  blocks runs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ucm.integration.vllm.keys import KeyMaker, RequestKeys
from ucm.integration.vllm.metadata import DumpSpec, LoadSpec, UcmConnectorMetadata, UcmWorkerMetadata
from ucm.integration.vllm.stats import UcmConnectorStats

log = logging.getLogger("ucm")
# Tokens loaded per token computed above which a step's copies outlast its compute (an H200 prefills
# a 7B model at ~37k tokens/s and copies its 57 KB/token KV at ~50 GB/s: ~24 x). An 80 % hit loads
# 4 per token computed (layer by layer: the copies hide behind the compute), a 100 % hit ~1,000.
UPFRONT_RATIO = 16

# in_turn_tokens: the longest a hit waits for the tokens of the step that filled the budget (a report lost
# must not hold requests back for good; a step takes well under a second)
IN_TURN_TIMEOUT_S = 2.0


def load_bound(loaded_tokens: int, computed_tokens: int) -> bool:
    """Whether a step (``meta.upfront``) or one hit (``prefetch``) loads at least UPFRONT_RATIO tokens
    per token it computes."""
    return loaded_tokens > 0 and loaded_tokens >= UPFRONT_RATIO * max(1, computed_tokens)


@dataclass
class _ReqState:
    keys: RequestKeys
    block_ids: list[int] = field(default_factory=list)
    dumped_upto: int = 0  # blocks [0, dumped_upto) are stored or planned
    lookup: tuple[int, int] = (0, 0)  # (first block, blocks hit) of the last lookup
    admitted: bool = False  # update_state_after_alloc seen for the last lookup
    layerwise: bool = False  # the last lookup's hit is pinned: it loads in the request's own step
    seen_hit: int = 0  # blocks hit by an earlier lookup of this request (e.g. before a deferral)
    store: bool = True  # its blocks are stored (``stores_request``)


def stores_request(request: Any) -> bool:
    """Whether ucm stores this request's blocks: yes unless its ``kv_transfer_params`` (vLLM:
    ``SamplingParams(extra_args={"kv_transfer_params": {"ucm_store": False}})``) opt out, e.g. a
    private prompt, or a benchmark measuring decode with and without storing in one engine. Its
    prefix is still looked up and loaded."""
    params = getattr(request, "kv_transfer_params", None) or {}
    store = params.get("ucm_store", True) if isinstance(params, dict) else True
    if not isinstance(store, bool):  # one bad request must not stop the engine: said, and stored
        log.error("ucm: request %s: kv_transfer_params 'ucm_store' must be true or false, got %r; storing it",
                  getattr(request, "request_id", "?"), store)
        return True
    return store


class UcmScheduler:
    def __init__(self, lookup: Any, keys: KeyMaker, block_size: int, layerwise: bool = True,
                 step_tokens: int = 0, step_load_blocks: int = 0, in_turn_tokens: int = 0, prefetch: bool = False,
                 upfront_blocks: int = 0):
        self.lookup = lookup  # lookup_rpc.RankedLookup: every rank's store
        self.layerwise = layerwise
        self.step_tokens = step_tokens  # 0: no limit
        self.step_new_tokens = 0  # new tokens of the layer-wise hits taken in the step being planned
        self.step_load_blocks = step_load_blocks  # 0: no limit
        self.step_loaded_blocks = 0  # blocks those hits load
        self.in_turn_tokens = in_turn_tokens  # 0: off
        self.prefetch = prefetch  # a load-bound hit's copies start at its allocation (same-thread worker)
        self.upfront_blocks = upfront_blocks  # a step loading at most this many blocks loads them up front (0: off)
        self.filled: tuple[int, float] = (0, 0.0)  # (step, when planned) of the last short step whose hits filled a budget
        self.pinned: set[str] = set()  # requests holding pins whose load is not planned yet
        self.keys = keys
        self.block_size = block_size
        self.reqs: dict[str, _ReqState] = {}
        self.pending_loads: dict[str, LoadSpec] = {}
        # req id -> step of its last planned dump (since it started or was last preempted)
        self.last_dump: dict[str, int] = {}
        self.seq = 0  # steps planned (build_connector_meta calls)
        # what the workers reported, per TP rank: every dump of steps <= done_upto is done; the last
        # step it ran (in_turn_tokens)
        self.reported = UcmWorkerMetadata()
        self.done_upto, self.ran = self.reported.done_upto, self.reported.ran
        self.delayed: list[str] = []  # finished, blocks kept until the worker reports them
        self.held: dict[str, tuple[int, int]] = {}  # a delayed request -> (step it finished in, its blocks)
        self.stats = UcmConnectorStats()
        self.shrunk_warnings = 0

    # ---- hooks ------------------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[Optional[int], bool]:
        st = self.reqs.get(request.request_id)
        first_ask = st is None or st.keys.request is not request
        if first_ask:
            st = self.reqs[request.request_id] = _ReqState(RequestKeys(request), store=stores_request(request))
        bs = self.block_size
        first = num_computed_tokens // bs
        last = (request.num_tokens - 1) // bs  # full blocks, keeping >= 1 token to compute
        st.lookup = (first, 0)
        st.admitted = False
        if first_ask and first and st.store:
            st.dumped_upto = self._stored_prefix(st, first)
        if last <= first:
            return 0, False
        hashes = self.keys.hashes(st.keys, last)[first:]
        st.layerwise = False
        wait = self._deferral() if self.layerwise else None  # a hit now must wait for a later step
        if wait is not None and not first_ask:
            # vLLM asks again about a request this step cannot take with a hit (the step's hits are
            # full): whether its first block is held decides it (deferred, or computed now without a
            # hit), so one block is looked up, not the ~1,000 of a 16k prompt
            probe = [self.keys.rank_keys(hashes[:1], r) for r in range(self.keys.tp_size)]
            if self.lookup.lookup(probe, record=False)[0]:
                self.stats.add(**{wait: 1})
                return None, False
            return 0, False
        hit = 0
        # the same decision for every rank: a block counts only if all ranks hold it
        per_rank = [self.keys.rank_keys(hashes, r) for r in range(self.keys.tp_size)]
        # one sighting a request for the stores' policies: vLLM asks again about a request it could not
        # schedule (a step's token budget or KV cache full, a deferred hit), up to 12 times a request in a
        # CPU replay near capacity, which counted its blocks as seen again (reuse, TinyLFU admission)
        present = self.lookup.lookup(per_rank, record=first_ask)
        for p in present:
            if not p:
                break
            hit += 1
        st.lookup = (first, hit)
        if first + hit < st.seen_hit and self.shrunk_warnings < 5:  # diagnosis: blocks gone between steps
            self.shrunk_warnings += 1
            log.warning("ucm: request %s: its prefix hit now ends at block %d, an earlier lookup's at block %d "
                        "(blocks evicted or dropped in between)", request.request_id, first + hit, st.seen_hit)
        st.seen_hit = max(st.seen_hit, first + hit)
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("ucm: lookup %s (step %d): blocks %d..%d, hit %d", request.request_id, self.seq + 1,
                      first, last, hit)
        if hit and self.layerwise:
            if wait is not None:
                st.lookup = (first, 0)
                self.stats.add(**{wait: 1})
                if debug:
                    log.debug("ucm: %s deferred (%s): the step's hits compute %d new tokens and load %d blocks "
                              "already", request.request_id, wait, self.step_new_tokens, self.step_loaded_blocks)
                return None, False  # vLLM asks again in its next step
            rid = request.request_id
            self.pinned.add(rid)
            if self.lookup.pin([keys[:hit] for keys in per_rank], rid):
                st.layerwise = True
                self.step_new_tokens += request.num_tokens - (first + hit) * bs
                self.step_loaded_blocks += hit
                return hit * bs, False
            self._unpin(rid)
            if debug:
                log.debug("ucm: %s: pin failed, its hit loads between steps", rid)
        return hit * bs, hit > 0

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        st = self.reqs.get(request.request_id)
        if st is None:
            return
        first, hit = st.lookup
        st.lookup = (first, 0)  # consumed: a second call (after an async load) plans nothing
        if not st.admitted:
            st.admitted = True
            self.stats.add(lookup_tokens=max(0, request.num_tokens - first * self.block_size))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("ucm: %s allocated: %d external tokens (hit %d blocks)", request.request_id,
                      num_external_tokens, hit)
        if num_external_tokens <= 0:
            return
        block_ids = list(blocks.get_block_ids()[0])
        n = min(hit, num_external_tokens // self.block_size)
        if n <= 0:
            return
        hashes = self.keys.hashes(st.keys, first + n)[first:first + n]
        spec = self.pending_loads[request.request_id] = LoadSpec(request.request_id, hashes,
                                                                 block_ids[first:first + n], layerwise=st.layerwise)
        if self.prefetch and st.layerwise and load_bound(n * self.block_size,
                                                         request.num_tokens - (first + n) * self.block_size):
            worker = self.lookup.local_worker()
            if worker is not None:  # the worker adopts the copies in this step's start_load_kv
                worker.prefetch(spec)
        st.dumped_upto = max(st.dumped_upto, first + n)
        self.stats.add(hit_tokens=n * self.block_size)

    def build_connector_meta(self, scheduler_output: Any) -> UcmConnectorMetadata:
        self.seq += 1
        full = (self.step_tokens and self.step_new_tokens >= self.step_tokens) or \
            (self.step_load_blocks and self.step_loaded_blocks >= self.step_load_blocks)
        if full and self.step_new_tokens <= self.in_turn_tokens:  # a short step whose hits filled a budget
            self.filled = (self.seq, time.monotonic())
        self.step_new_tokens = self.step_loaded_blocks = 0  # the next schedule() plans a new step
        meta = UcmConnectorMetadata(seq=self.seq, delayed=self.delayed)
        self.delayed = []
        # Preempted requests' blocks are already free: the worker waits for their dumps before this
        # step runs (handle_preemptions). Done first: a request resumed in this same step plans anew.
        for req_id in sorted(getattr(scheduler_output, "preempted_req_ids", None) or ()):
            if self.last_dump.pop(req_id, None) is not None:
                meta.preempted.append(req_id)
        planned: set[bytes] = set()
        for new in scheduler_output.scheduled_new_reqs:
            st = self.reqs.get(new.req_id)
            if st is None:
                continue
            st.block_ids = list(new.block_ids[0])
            self._plan_dump(meta, new.req_id, st, new.num_computed_tokens
                            + scheduler_output.num_scheduled_tokens.get(new.req_id, 0), planned)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            st = self.reqs.get(req_id)
            if st is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in getattr(cached, "resumed_req_ids", ()):
                st.block_ids = list(new_ids[0]) if new_ids is not None else []
            elif new_ids is not None:
                st.block_ids.extend(new_ids[0])
            self._plan_dump(meta, req_id, st, cached.num_computed_tokens[i]
                            + scheduler_output.num_scheduled_tokens.get(req_id, 0), planned)
        meta.loads = list(self.pending_loads.values())
        self.pending_loads.clear()
        loaded = sum(len(spec.block_ids) for spec in meta.loads if spec.layerwise)
        meta.upfront = (load_bound(loaded * self.block_size, scheduler_output.total_num_scheduled_tokens)
                        or 0 < loaded <= self.upfront_blocks)
        for spec in meta.loads:  # the worker unpins once it has submitted the load
            self.pinned.discard(spec.req_id)
        return meta

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, None]:
        """``(delay_free, None)``: keep the blocks of a request whose dumps may still be in flight
        until the worker reports them done (``get_finished`` -> ``finished_sending``)."""
        self.reqs.pop(request.request_id, None)
        self.pending_loads.pop(request.request_id, None)
        if request.request_id in self.pinned:
            self._unpin(request.request_id)
        last = self.last_dump.pop(request.request_id, None)
        delay = last is not None and last > self.confirmed()
        if delay:
            self.delayed.append(request.request_id)
            self.held[request.request_id] = (self.seq, len(block_ids))
            self.stats.add(delayed_frees=1)
        return delay, None

    def update_connector_output(self, output: Any) -> None:
        self.reported.merge_into(getattr(output, "kv_connector_worker_meta", None))
        for req_id in getattr(output, "finished_sending", None) or ():  # vLLM frees their blocks now
            step, blocks = self.held.pop(req_id, (self.seq, 0))
            if blocks:
                self.stats.add(delayed_free_block_steps=blocks * max(1, self.seq - step))

    def confirmed(self) -> int:
        """The step up to which every rank reported all dumps done."""
        return min(self.done_upto.get(r, 0) for r in range(self.keys.tp_size))

    # ---- internals --------------------------------------------------------------------------
    def _deferral(self) -> Optional[str]:
        """Why a further layer-wise hit must wait for a later step (its counter's name), or None."""
        if (self.step_tokens and self.step_new_tokens >= self.step_tokens) or \
                (self.in_turn_tokens and self._filled_step_running()):
            return "deferred"
        if self.step_load_blocks and self.step_loaded_blocks >= self.step_load_blocks:
            return "load_overflow"
        return None

    def _filled_step_running(self) -> bool:
        """Whether the last short step that filled the token budget has not yet been reported run by
        every rank (its tokens are not back), and is young enough to be waited for. Never before
        the workers' first report (a vLLM that does not pass worker metadata on)."""
        step, since = self.filled
        if not step or not self.ran or time.monotonic() - since > IN_TURN_TIMEOUT_S:
            return False
        return min(self.ran.get(r, 0) for r in range(self.keys.tp_size)) < step

    def _stored_prefix(self, st: _ReqState, first: int) -> int:
        """How many of the ``first`` blocks vLLM found in its own prefix cache every rank's store
        holds, from block 0: they are not dumped again. Without this each HBM hit offered all of
        them to the worker, which skipped them one by one (16k x 4 on the H200: ~8 ms a step).
        Blocks the stores lack (evicted, refused) are still dumped. A plain check: it is not a
        sighting for the stores' policies."""
        hashes = self.keys.hashes(st.keys, first)
        present = self.lookup.lookup([self.keys.rank_keys(hashes, r) for r in range(self.keys.tp_size)],
                                     record=False)
        return next((i for i, p in enumerate(present) if not p), len(present))

    def _unpin(self, req_id: str) -> None:
        self.pinned.discard(req_id)
        self.lookup.unpin(req_id)

    def _plan_dump(self, meta: UcmConnectorMetadata, req_id: str, st: _ReqState, computed_after: int,
                   planned: set[bytes]) -> None:
        if not st.store:
            return
        full = min(computed_after, st.keys.request.num_tokens) // self.block_size
        full = min(full, len(st.block_ids))
        if full <= st.dumped_upto:
            return
        start, st.dumped_upto = st.dumped_upto, full
        hashes = self.keys.hashes(st.keys, full)[start:full]
        todo_h, todo_b = [], []
        for h, b in zip(hashes, st.block_ids[start:full]):  # the store skips blocks it already holds
            if h not in planned:
                planned.add(h)
                todo_h.append(h)
                todo_b.append(b)
        if todo_h:
            meta.dumps.append(DumpSpec(req_id, todo_h, todo_b))
            self.last_dump[req_id] = meta.seq
