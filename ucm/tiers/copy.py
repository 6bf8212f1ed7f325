"""Copy engines: run batches of (dst, src) byte copies asynchronously.

``CudaCopyEngine`` issues the copies on a dedicated CUDA stream and records one event per batch;
``ThreadCopyEngine`` runs them on a worker thread (machines without CUDA, host-to-host copies).
Both first coalesce pieces that are adjacent in memory on both sides into one copy, so a caller
handing over many blocks laid out contiguously pays for one large copy, not many tiny ones.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

import torch

from ucm.tiers.base import log

Pair = tuple[torch.Tensor, torch.Tensor]  # (dst, src), flat uint8, same length


def _byte_offset(t: torch.Tensor) -> int:
    return t.storage_offset() * t.element_size()


def coalesce(pairs: list[Pair]) -> list[Pair]:
    """Merge runs of pairs whose dst and src each continue the previous one in the same storage."""
    if len(pairs) < 2:
        return pairs
    pairs = sorted(pairs, key=lambda p: (p[1].untyped_storage().data_ptr(), _byte_offset(p[1])))
    out: list[Pair] = []
    run_dst, run_src = pairs[0]
    run_len = run_dst.numel()
    for dst, src in pairs[1:]:
        if (src.untyped_storage().data_ptr() == run_src.untyped_storage().data_ptr()
                and dst.untyped_storage().data_ptr() == run_dst.untyped_storage().data_ptr()
                and _byte_offset(src) == _byte_offset(run_src) + run_len
                and _byte_offset(dst) == _byte_offset(run_dst) + run_len):
            run_len += dst.numel()
            continue
        out.append(_view(run_dst, run_len, run_src))
        run_dst, run_src, run_len = dst, src, dst.numel()
    out.append(_view(run_dst, run_len, run_src))
    return out


def _extend(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.numel() == n:
        return t
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage(), _byte_offset(t), (n,))


def _view(dst: torch.Tensor, n: int, src: torch.Tensor) -> Pair:
    return _extend(dst, n), _extend(src, n)


class _Done:
    def done(self) -> bool:
        return True

    def wait(self, timeout: float) -> bool:
        return True


DONE = _Done()


class _EventCompletion:
    """A CUDA event polled with a deadline (cudaEventSynchronize has no timeout)."""

    def __init__(self, event: torch.cuda.Event):
        self.event = event

    def done(self) -> bool:
        return self.event.query()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = 2e-5
        while not self.event.query():
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 2e-4)
        return True


class _FutureCompletion:
    def __init__(self, fut: Future, handled: bool = True):
        self.fut = fut
        self.handled = handled  # an error of the job is recorded by the submitter's on-error hook

    def done(self) -> bool:
        return self.fut.done()

    def wait(self, timeout: float) -> bool:
        try:
            self.fut.result(timeout)
        except TimeoutError:
            return False
        except Exception:  # recorded by the submitter's on-error hook, or, without one, a failed wait
            return self.handled
        return True


def _copy_all(pairs: list[Pair]) -> None:
    for dst, src in pairs:
        dst.copy_(src)


def guarded(fn, args, on_error):
    """``fn(*args)`` on a worker thread; should it raise, the error is logged, ``on_error(exc)``
    records it in the caller's task, and it is raised again (to the job's future)."""
    try:
        return fn(*args)
    except Exception as exc:  # reported through the caller's task, never lost
        log.error("ucm: %s failed: %s", getattr(fn, "__name__", "a job"), exc)
        if on_error is not None:
            on_error(exc)
        raise


def _job(fn, *args):
    # Callers may hand us inference tensors (vLLM allocates its KV cache under inference_mode);
    # in-place writes into those are only allowed inside inference mode, and plain tensors don't mind.
    with torch.inference_mode():
        return fn(*args)


class CopyEngine:
    """Copies batches in submission order. ``submit`` returns a completion (done/wait)."""

    def __init__(self, name: str, device: Optional[torch.device] = None):
        self.name = name
        self.stream = torch.cuda.Stream(device) if device is not None and device.type == "cuda" else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ucm-{name}")

    def submit(self, pairs: list[Pair], on_error=None):
        if not pairs:
            return DONE
        pairs = coalesce(pairs)
        if self.stream is not None and any(d.is_cuda or s.is_cuda for d, s in pairs):
            # The stream waits for the caller's stream so it copies what the caller has computed.
            self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
            with torch.cuda.stream(self.stream):
                for dst, src in pairs:
                    dst.copy_(src, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            return _EventCompletion(event)
        return _FutureCompletion(self._pool.submit(_job, guarded, _copy_all, (pairs,), on_error), on_error is not None)

    def run(self, fn, *args, on_error=None) -> _FutureCompletion:
        """Run ``fn(*args)`` on this engine's worker thread (file I/O, CPU copies). Should it raise,
        ``on_error(exc)`` records the failure (a completion's ``wait`` does not raise); without a
        hook the error is logged and the completion's ``wait`` returns False."""
        return _FutureCompletion(self._pool.submit(_job, guarded, fn, args, on_error), on_error is not None)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
