"""Many DMAs in one driver call: ``cuMemcpyBatchAsync`` (CUDA 12.8+ drivers).

Every vLLM layer is a tensor of its own, so a copy between vLLM's KV cache and the pool is one DMA per
(layer plane, run of rows): 56 planes x 10-20 runs per call once the pool's slots fragment. Queued one
by one through PyTorch each costs the CPU a launch (~3-5 us) and takes a place in CUDA's queue of pending
commands; one batch call queues all of them as one command. It is the entry point vLLM's own
SimpleCPUOffloadConnector (0.32) uses, with the CUDA 12.8 signature that CUDA 13 drivers keep, resolved
here through ``cuGetProcAddress`` with ctypes (no cuda-python needed).

``descriptors`` (which bytes go where) is plain array arithmetic and is tested on the CPU; ``copy``
calls the driver. On by default since the H200 grid of 2026-11-28 (ninth session: the ucm cells beside
the same run without batching, 4k c = 1 / 2 a third faster); ``UCM_BATCH_DMA=0`` queues run by run. A driver
without the entry point falls back to run by run, with one warning.
"""
from __future__ import annotations

import array
import ctypes
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ucm.tiers.base import env_switch, log

#: the source is read in stream order (after earlier work on the stream): a dump reads rows the model
#: has just written. (CU_MEMCPY_SRC_ACCESS_ORDER_STREAM)
SRC_IN_STREAM_ORDER = 1


#: ``UCM_BATCH_DMA=0`` turns batching off
ENABLED = env_switch("UCM_BATCH_DMA", True)


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint), ("id", ctypes.c_int)]


class _Attributes(ctypes.Structure):  # CUmemcpyAttributes
    _fields_ = [("srcAccessOrder", ctypes.c_uint), ("srcLocHint", _Location), ("dstLocHint", _Location),
                ("flags", ctypes.c_uint)]


# CUresult cuMemcpyBatchAsync(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count,
#     CUmemcpyAttributes* attrs, size_t* attrsIdxs, size_t numAttrs, size_t* failIdx, CUstream hStream)
_PROTO = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p)
_entry: Optional[Callable] = None
_missing: Optional[str] = None  # why the entry point could not be had (asked once)


def _resolve() -> Callable:
    libcuda = ctypes.CDLL("libcuda.so.1")
    get = libcuda.cuGetProcAddress_v2
    get.restype = ctypes.c_int
    get.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_uint64,
                    ctypes.POINTER(ctypes.c_int)]
    pfn, status = ctypes.c_void_p(), ctypes.c_int(0)
    err = get(b"cuMemcpyBatchAsync", ctypes.byref(pfn), 12080, 0, ctypes.byref(status))
    if err != 0 or not pfn.value:
        raise RuntimeError(f"cuGetProcAddress(cuMemcpyBatchAsync, 12.8) failed: CUresult {err}, status {status.value}")
    return _PROTO(pfn.value)


def available() -> bool:
    """Whether ``copy`` can run here (enabled, and the driver has the entry point; asked once)."""
    global _entry, _missing
    if not ENABLED or _missing is not None:
        return False
    if _entry is None:
        try:
            _entry = _resolve()
        except (OSError, AttributeError, RuntimeError) as exc:
            _missing = str(exc)
            log.warning("ucm: batched DMAs unavailable (%s); copying run by run", exc)
            return False
    return True


def pair(d: torch.Tensor, s: torch.Tensor) -> tuple[int, int, int]:
    """(row width in bytes, d's address, s's address) of a plane pair batched DMAs can take: (rows,
    width) views of the same width whose rows are contiguous."""
    if d.dim() != 2 or s.dim() != 2 or d.shape[1] != s.shape[1]:
        raise ValueError("batched DMAs need (rows, width) views of the same width on both sides")
    if d.stride() != (d.shape[1], 1) or s.stride() != (s.shape[1], 1):
        raise ValueError(f"batched DMAs need contiguous rows on both sides (width "
                         f"{d.shape[1] * d.element_size()} bytes)")
    return d.shape[1] * d.element_size(), d.data_ptr(), s.data_ptr()


def plane_bases(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row widths in bytes, dst addresses, src addresses), each a (planes, 1) int64 array, after checking
    every plane pair (``pair``): ~3 us a plane (torch attribute calls), ~160 us for a 7B model's 56
    planes, so the copier passes what its plane views keep (``PlaneCopy.dma_addrs``) instead."""
    width, dbase, sbase = (np.empty((len(dst), 1), dtype=np.int64) for _ in range(3))
    for k, (d, s) in enumerate(zip(dst, src)):
        width[k, 0], dbase[k, 0], sbase[k, 0] = pair(d, s)
    return width, dbase, sbase


def descriptors(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor], dst_rows: Sequence[int],
                src_rows: Sequence[int], counts: Sequence[int],
                bases: Optional[tuple] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dst addresses, src addresses, sizes) as int64 CPU tensors, plane by plane: for each plane j
    and run i, ``counts[i]`` rows from row ``src_rows[i]`` of ``src[j]`` to row ``dst_rows[i]`` of
    ``dst[j]``. Each tensor is a (rows, width) view whose rows are contiguous and whose runs of rows
    are too (row stride = width); ``dst[j]`` and ``src[j]`` have the same width. ``bases``: what
    ``plane_bases(dst, src)`` returned for these planes, kept by the caller. NumPy for many planes,
    plain lists for one (a staged copy's DMA, once per plane: NumPy's fixed cost was 3 x that)."""
    if len(dst) == 1 and bases is None and len(counts):
        w, d0, s0 = pair(dst[0], src[0])
        return tuple(torch.frombuffer(array.array("q", x), dtype=torch.int64)  # the tensor keeps the array
                     for x in ([d0 + r * w for r in dst_rows], [s0 + r * w for r in src_rows], [c * w for c in counts]))
    width, dbase, sbase = bases if bases is not None else plane_bases(dst, src)
    drow, srow, n = (np.asarray(x, dtype=np.int64)[None, :] for x in (dst_rows, src_rows, counts))
    return tuple(torch.from_numpy(a.reshape(-1)) for a in (dbase + drow * width, sbase + srow * width, n * width))


def copy(dsts: torch.Tensor, srcs: torch.Tensor, sizes: torch.Tensor, stream_handle: int,
         entry: Optional[Callable] = None, lo: int = 0, hi: Optional[int] = None) -> None:
    """Queue ``sizes[i]`` bytes from ``srcs[i]`` to ``dsts[i]`` for every i in ``[lo, hi)`` (default: all)
    as one command on the stream ``stream_handle`` (not the legacy default stream), sources read in
    stream order. ``lo``/``hi`` pick a part of the descriptors by address, without slicing the tensors
    (a load issues one command per plane: three tensor slices each cost more CPU than the call).
    ``entry`` stands in for the driver (tests)."""
    count = len(dsts)
    if not (len(srcs) == len(sizes) == count):
        raise ValueError(f"dsts, srcs and sizes must have one entry per copy, got {count}, {len(srcs)}, {len(sizes)}")
    hi = count if hi is None else hi
    if not 0 <= lo <= hi <= count:
        raise ValueError(f"lo and hi must satisfy 0 <= lo <= hi <= {count}, got {lo} and {hi}")
    if hi == lo:
        return
    fn = entry or _entry
    if fn is None:
        raise RuntimeError("batched DMAs are not available: check available() first")
    attrs = _Attributes(srcAccessOrder=SRC_IN_STREAM_ORDER)
    first, fail = ctypes.c_size_t(0), ctypes.c_size_t(0)
    at = 8 * lo  # int64 descriptors
    err = fn(dsts.data_ptr() + at, srcs.data_ptr() + at, sizes.data_ptr() + at, hi - lo, ctypes.addressof(attrs),
             ctypes.addressof(first), 1, ctypes.addressof(fail), stream_handle)
    if err != 0:
        raise RuntimeError(f"cuMemcpyBatchAsync failed: CUresult {err} at copy {lo + fail.value} of {count}")
