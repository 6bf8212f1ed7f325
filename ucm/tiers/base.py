"""The store contract every tier implements, and the task handle its copies return.

Contract (the seed API, as in Huawei's UCM):
- ``lookup(ids) -> list[bool]``: True only for blocks dumped, committed and still resident.
- ``dump(ids, offset, src_tensor) -> Task``: piece i copies ``src_tensor[i]`` into block ``ids[i]``
  at byte ``offset[i]``; an id may repeat with other offsets. Asynchronous. Dumping a block that is
  already committed is skipped: ids are content hashes, so the bytes are already there.
- ``load(ids, offset, dst_tensor) -> Task``: the reverse copy. Only committed blocks load.
- ``wait(task) -> int``: 0 on success, else the first failure code (never waits past the timeout).
- ``check(task) -> bool``: done or not, without blocking.
- ``commit(ids, is_success=True)``: make dumped blocks visible to lookup, or drop them.

Block ids are ``str`` or ``bytes``; a ``str`` is stored as its UTF-8 bytes, so ``"a"`` and
``b"a"`` name the same block.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from typing import Any, Optional, Protocol, Union

import torch

log = logging.getLogger("ucm")

BlockId = Union[str, bytes]

# Return codes of wait(); a task keeps the first failure of each block in ``task.failed``.
OK = 0
NOT_FOUND = 1   # load of a block that is absent, uncommitted or unreadable (corrupt file)
REFUSED = 2     # dump not taken: admission said no, or nothing could be evicted
IO_ERROR = 3    # a copy or a file operation failed
TIMEOUT = 4     # wait() gave up

CODE_NAMES = {OK: "ok", NOT_FOUND: "not_found", REFUSED: "refused", IO_ERROR: "io_error", TIMEOUT: "timeout"}


def to_key(block_id: BlockId, where: str = "block_ids") -> bytes:
    """The internal key of a block id; malformed ids raise ValueError naming the argument."""
    if isinstance(block_id, bytes):
        return block_id
    if isinstance(block_id, str):
        return block_id.encode()
    raise ValueError(f"{where} must hold str or bytes ids, got {type(block_id).__name__}: {block_id!r}")


def to_keys(block_ids: Sequence[BlockId]) -> list[bytes]:
    if isinstance(block_ids, (str, bytes)) or not isinstance(block_ids, Sequence):
        raise ValueError(f"block_ids must be a list of str or bytes ids, got {type(block_ids).__name__}")
    if all(type(b) is bytes for b in block_ids):  # the connector's case: no per-id call (a hot path)
        return list(block_ids)
    if all(type(b) is str for b in block_ids):  # str ids: 4 x faster than a call per id (CPU, 1,170 ids)
        return [b.encode() for b in block_ids]
    return [to_key(b, f"block_ids[{i}]") for i, b in enumerate(block_ids)]


def check_pieces(block_ids, offset, tensors, block_size: int, tensor_arg: str) -> list[bytes]:
    """Validate a dump/load call; returns the keys. Raises ValueError naming the bad argument."""
    keys = to_keys(block_ids)
    for name, seq in (("offset", offset), (tensor_arg, tensors)):
        if not isinstance(seq, Sequence):
            raise ValueError(f"{name} must be a list, got {type(seq).__name__}")
    if not len(keys) == len(offset) == len(tensors):
        raise ValueError(
            f"block_ids, offset and {tensor_arg} must have the same length, got {len(keys)}, {len(offset)}, {len(tensors)}")
    for i, (off, t) in enumerate(zip(offset, tensors)):
        if not isinstance(off, int) or isinstance(off, bool) or off < 0:
            raise ValueError(f"offset[{i}] must be a non-negative int, got {off!r}")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{tensor_arg}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_contiguous():
            raise ValueError(f"{tensor_arg}[{i}] is not contiguous: pass tensor.contiguous() (or a contiguous view)")
        nbytes = t.numel() * t.element_size()
        if off + nbytes > block_size:
            raise ValueError(
                f"offset[{i}] + {tensor_arg}[{i}] bytes = {off} + {nbytes} exceeds kv_block_size {block_size}")
    return keys


#: a block-API call over many blocks is planned and launched in stages (``stages``): about this
#: many bytes first, so the link starts after a few blocks are planned, then each stage
#: STAGE_FANOUT x the last, whose copies run while Python plans the next (~2.5 us a block)
STAGE_FANOUT = 3


def env_switch(name: str, default: bool) -> bool:
    """An on/off environment switch (A/B benchmarks): ``1`` on, ``0`` off, unset the default;
    anything else fails at import with the name and the fix."""
    raw = os.environ.get(name, "1" if default else "0").strip()
    if raw not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {raw!r}: unset it for {int(default)}")
    return raw == "1"


def env_count(name: str, default: int) -> int:
    """A positive whole number from the environment (A/B benchmarks), the default when unset;
    anything else fails at import with the name and the fix."""
    raw = os.environ.get(name, str(default)).strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a positive whole number, got {raw!r}: unset it for {default}")
    return int(raw)


def _stage_head_bytes() -> int:
    """128 MiB, or ``UCM_STAGE_HEAD_MIB`` (for A/B benchmarks: a huge value turns stages off)."""
    return env_count("UCM_STAGE_HEAD_MIB", 128) << 20


STAGE_HEAD_BYTES = _stage_head_bytes()


def stages(n: int, block_bytes: int, from_end: bool = False) -> list[tuple[int, int]]:
    """(lo, hi) ranges covering ``range(n)``: ~STAGE_HEAD_BYTES of blocks, then each range
    STAGE_FANOUT x larger; a rest smaller than the first range joins the range before it. With
    ``from_end`` the first range is the last blocks (a load touches a chain tail-first)."""
    head = max(16, STAGE_HEAD_BYTES // max(1, block_bytes))
    out, done, size = [], 0, head
    while done < n:
        take = n - done if n - done - size < head else size
        out.append((done, done + take))
        done, size = done + take, size * STAGE_FANOUT
    return [(n - hi, n - lo) for lo, hi in out] if from_end else out


def pieces_of_blocks(block_ids, planes, rows, offset: int = 0) -> tuple[list, list[int], list[torch.Tensor]]:
    """The (ids, offsets, tensors) pieces of a block-API call."""
    if len(rows) != len(block_ids):
        raise ValueError(f"block_ids and rows must have the same length, got {len(block_ids)} and {len(rows)}")
    ids, offs, tensors = [], [], []
    for bid, rs in zip(block_ids, rows):
        off = offset
        for t in planes:
            for r in (rs if isinstance(rs, Sequence) else (rs,)):
                piece = t[r]
                ids.append(bid)
                offs.append(off)
                tensors.append(piece)
                off += piece.numel() * piece.element_size()
    return ids, offs, tensors


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor (no copy)."""
    return t.reshape(-1).view(torch.uint8)


class Completion(Protocol):
    def done(self) -> bool: ...
    def wait(self, timeout: float) -> bool: ...


class Task:
    """Handle of one dump or load call: a set of completions plus per-block failures.

    Finalizers (e.g. releasing the blocks a load reads) run exactly once, when the task is first
    seen done, outside the task's own lock so they may take a tier's lock.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.failed: dict[bytes, int] = {}
        self._parts: list[Completion] = []
        self._finalizers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._finished = False

    def fail(self, key: bytes, code: int) -> None:
        with self._lock:
            self.failed.setdefault(key, code)

    def add(self, part: Completion) -> None:
        if self._parts and self._parts[-1] is part:  # one completion for several planes: waited once
            return
        self._parts.append(part)

    def on_done(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the task is done (at once if it was seen done already)."""
        with self._lock:
            if not self._finished:
                self._finalizers.append(fn)
                return
        fn()

    def add_task(self, child: "Task") -> None:
        """Wait for ``child`` too, and take over its failures when done."""
        self.add(child)
        self.on_done(lambda: [self.fail(k, c) for k, c in child.failed.items()])

    @property
    def failed_ids(self) -> set[bytes]:
        return set(self.failed)

    @property
    def code(self) -> int:
        return next(iter(self.failed.values()), OK)

    def _finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            fns, self._finalizers = self._finalizers, []
        for fn in fns:
            fn()

    def done(self) -> bool:
        if self._finished:
            return True
        if all(p.done() for p in self._parts):
            self._finish()
            return True
        return False

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for p in self._parts:
            if not p.wait(max(0.0, deadline - time.monotonic())):
                return False
        self._finish()
        return True

    def __repr__(self) -> str:
        return f"Task({self.kind}, done={self._finished}, failed={len(self.failed)})"


class SpareBuffers:
    """Host buffers of one size, recycled: a tier copies each block it demotes into one, and the
    tier below gives it back when written. A fresh 1-2 MB tensor per demoted block costs its page
    faults, ~4x the copy itself (on the model's thread, inside a dump's reservation)."""

    def __init__(self, nbytes: int, keep: int = 256):
        self.nbytes, self.keep = nbytes, keep
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self) -> torch.Tensor:
        with self._lock:
            if self._free:
                return self._free.pop()
        with torch.inference_mode(False):  # a normal tensor: reused later outside inference mode too
            return torch.empty(self.nbytes, dtype=torch.uint8)

    def give(self, t: torch.Tensor) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(t)


@dataclass
class BlockCall:
    """A block-API call spread over a model's layers: its blocks, their rows in the caller's
    planes (``k`` rows per block), the highest row, and the task the layers' copies join."""

    store: "Store"
    block_ids: list
    rows: list
    task: Task
    k: int = 1
    max_row: int = -1


@dataclass
class BlockWrite(BlockCall):
    """A dump whose planes arrive one layer at a time (``Store.reserve_blocks``): which blocks are
    written is decided once; ``write_planes`` adds each layer's copies to ``task``. Wait for ``task``
    and commit the blocks after the last layer."""

    plans: list = field(default_factory=list)


@dataclass
class BlockRead(BlockCall):
    """A load whose planes are copied one layer at a time (``Store.open_blocks``): the blocks are
    found (and kept resident) once; ``read_planes`` launches one layer's copies, the call with
    ``last=True`` ends the read. Blocks not found are in ``task.failed`` from the start."""

    plan: Any = None
    pinned: dict = field(default_factory=dict)


class Store(ABC):
    """The seed's store contract (see the module docstring)."""

    #: bytes of one stored block (one slot)
    block_size: int
    #: seconds wait() may block before it reports TIMEOUT
    timeout_s: float = 60.0

    @abstractmethod
    def lookup(self, block_ids: Sequence[BlockId], record: bool = True) -> list[bool]:
        """Whether each block is held (dumped, committed, resident). ``record``: the lookup is a sighting of
        the blocks for the admission and prefix-aware eviction policies; False asks again without counting
        (vLLM asks about a waiting request in every step until it is scheduled)."""

    @abstractmethod
    def dump(self, block_ids: Sequence[BlockId], offset: Sequence[int], src_tensor: Sequence[torch.Tensor]) -> Task: ...

    @abstractmethod
    def load(self, block_ids: Sequence[BlockId], offset: Sequence[int], dst_tensor: Sequence[torch.Tensor]) -> Task: ...

    @abstractmethod
    def commit(self, block_ids: Sequence[BlockId], is_success: bool = True) -> None: ...

    def dump_blocks(self, block_ids: Sequence[BlockId], planes: Sequence[torch.Tensor], rows: Sequence,
                    offset: int = 0) -> Task:
        """Batched form of dump: bytes ``offset…`` of block ``block_ids[i]`` = ``planes[0][rows[i]]`` +
        ``planes[1][rows[i]]`` + … (``rows[i]`` may list k rows per plane). Slot pools copy whole
        planes at once; other stores fall back to pieces."""
        return self.dump(*pieces_of_blocks(block_ids, planes, rows, offset))

    def load_blocks(self, block_ids: Sequence[BlockId], planes: Sequence[torch.Tensor], rows: Sequence,
                    offset: int = 0) -> Task:
        """Batched form of load; ``task.planes[j]`` lists the completions plane ``j`` waits for."""
        task = self.load(*pieces_of_blocks(block_ids, planes, rows, offset))
        task.planes = [[task] for _ in planes]
        return task

    def dump_rows(self, block_ids: Sequence[BlockId], planes: Sequence[torch.Tensor], rows: Sequence) -> Task:
        """A dump of whole blocks (every plane, offset 0), e.g. a vLLM step's new blocks at its end:
        ``reserve_blocks`` + ``write_planes`` in ``stages``, so the first stage's copies run while
        the next is planned (1,000 blocks took ~2.5 ms of planning before the first copy)."""
        keys, rows = to_keys(block_ids), list(rows)
        if len(rows) != len(keys):
            raise ValueError(f"block_ids and rows must have the same length, got {len(keys)} and {len(rows)}")
        task = Task("dump")
        for lo, hi in stages(len(keys), self.block_size):
            bw = self.reserve_blocks(keys[lo:hi], rows[lo:hi])
            self.write_planes(bw, planes, 0)
            task.add_task(bw.task)
        return task

    def reserve_blocks(self, block_ids: Sequence[BlockId], rows: Sequence) -> BlockWrite:
        """Start a dump written layer by layer with ``write_planes`` (see ``BlockWrite``)."""
        return BlockWrite(self, list(block_ids), list(rows), Task("dump"))

    def write_planes(self, bw: BlockWrite, planes: Sequence[torch.Tensor], offset: int = 0) -> None:
        """One layer's planes of a reserved dump, at byte ``offset`` of each block."""
        bw.task.add_task(self.dump_blocks(bw.block_ids, planes, bw.rows, offset))

    def open_blocks(self, block_ids: Sequence[BlockId], rows: Sequence) -> BlockRead:
        """Start a load read layer by layer with ``read_planes`` (see ``BlockRead``)."""
        return BlockRead(self, list(block_ids), list(rows), Task("load"))

    def read_planes(self, br: BlockRead, planes: Sequence[torch.Tensor], offset: int = 0,
                    last: bool = False) -> list:
        """One layer's planes of an opened load, at byte ``offset`` of each block: one completion
        per plane (also added to ``br.task``). ``last=True`` on the final call releases the blocks
        once the copies are done."""
        child = self.load_blocks(br.block_ids, planes, br.rows, offset)
        br.task.add_task(child)
        return [child for _ in planes]

    def pin(self, block_ids: Sequence[BlockId], owner: str) -> list[bool]:
        """Keep the blocks committed in this store's fastest tier resident until ``unpin(owner)``;
        True per block pinned. A load of pinned blocks cannot miss, so a caller may let work
        depend on it before it finishes (vLLM's layer-wise loads). Stores without a memory tier
        pin nothing."""
        return [False for _ in to_keys(block_ids)]

    def unpin(self, owner: str) -> None:
        """Release every pin of ``owner`` (no-op if it holds none)."""

    def note_compute(self, nbytes: int, seconds: float) -> None:
        """The model computed ``nbytes`` of new KV (this rank's) in ``seconds``: a store with a slow
        tier weighs its hits against recomputing them (``hit_gate``); others ignore it."""

    def create(self, block_ids: Sequence[BlockId]) -> list[int]:
        """Optional in the seed API: nothing to reserve here (dump allocates). Returns 0 per id."""
        return [OK for _ in to_keys(block_ids)]

    def check(self, task: Task) -> bool:
        return task.done()

    def wait(self, task: Task) -> int:
        if not task.wait(self.timeout_s):
            log.warning("ucm: %s task not done after %.1f s", task.kind, self.timeout_s)
            return TIMEOUT
        return task.code

    def close(self) -> None:
        """Release threads and files; the store must not be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Tier(Store):
    """A store that can also sit in a chain: whole-block reads and writes, and a demotion sink.

    ``read_block`` returns a host copy of a committed block (None if absent or unreadable);
    ``write_block`` stores a whole committed block (subject to admission; True if it is resident
    afterwards) and calls ``release(data)``, if given, exactly once when it no longer needs
    ``data`` (at once, or after a background write), so the caller may reuse the buffer. When a
    tier evicts a block it hands the bytes to ``demote_to``, if set.
    """

    name: str = "tier"
    demote_to: Optional["Tier"] = None

    @abstractmethod
    def holds(self, key: bytes) -> bool:
        """Committed and resident (no side effects)."""

    def has(self, key: bytes) -> bool:
        """A lookup of ``key``: tells the admission policy it was seen, then whether it is held."""
        self.admission.record(key)
        return self.holds(key)

    @abstractmethod
    def read_block(self, key: bytes) -> Optional[torch.Tensor]: ...

    @abstractmethod
    def write_block(self, key: bytes, data: torch.Tensor,
                    release: Optional[Callable[[torch.Tensor], None]] = None) -> bool: ...

    @abstractmethod
    def stats(self) -> dict: ...

    def demotion_room(self) -> int:
        """Blocks a ``write_block`` from the tier above would take now without waiting. A tier that
        writes in the background bounds its queue; while it is full the tier above drops its victims
        (a later miss) rather than copy them out on the model's thread."""
        return sys.maxsize

    def begin_lookup(self) -> None:
        """A request's lookup starts: prefix-aware policies (``begin_sequence``) order by request."""
        begin = getattr(getattr(self, "eviction", None), "begin_sequence", None)
        if begin is not None:
            begin()

    def lookup(self, block_ids: Sequence[BlockId], record: bool = True) -> list[bool]:
        keys = to_keys(block_ids)
        if not record:
            return [self.holds(k) for k in keys]
        self.begin_lookup()
        return [self.has(k) for k in keys]
