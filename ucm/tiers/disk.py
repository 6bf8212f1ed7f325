"""The disk spill tier: one file per block under a directory, with its own byte cap and eviction.

File = header (magic, version, id length, data length, CRC32 of id+data) + block id + data.
Writes go to a temporary file that is renamed into place, so a crash leaves either the old file,
the new one or a stray ``.tmp`` (removed at start); a file that is corrupt, truncated or missing
is a miss (logged), never wrong bytes. File names are a SHA-256 of the id, so no id can name a
path outside the directory. The directory is 0700 and files 0600. A new store opened on the same
directory finds the blocks committed before (warm restart).
"""
from __future__ import annotations

import hashlib
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from typing import Any, Optional

import torch

from ucm.tiers.base import (IO_ERROR, NOT_FOUND, REFUSED, BlockId, Task, Tier, as_bytes, check_pieces, log,
                            to_keys)
from ucm.tiers.copy import CopyEngine
from ucm.tiers.settings import StoreSettings, build_policies, parse, validate

_HEADER = struct.Struct("<4sHHIQI")  # magic, version, reserved, id_len, data_len, crc32
_MAGIC, _VERSION = b"UCMB", 1


class DiskTier(Tier):
    def __init__(self, config: Optional[dict[str, Any]] = None, *, settings: Optional[StoreSettings] = None):
        s = settings or validate(parse(StoreSettings, {"tiers": ["disk"], **(config or {})}))
        self.settings = s
        self.name = "disk"
        self.block_size = s.kv_block_size
        self.timeout_s = s.timeout_s
        self.path = os.path.abspath(s.disk.path)
        self.max_size = s.disk.max_size
        self.fsync = s.disk.fsync
        self.max_backlog = s.disk.max_write_backlog  # bytes of demoted blocks not yet in their files
        self.eviction, self.admission = build_policies(s, max(1, self.max_size // self.block_size))
        self._files: dict[bytes, int] = {}  # committed key -> file bytes
        self._used = 0
        self._staged: dict[bytes, tuple[torch.Tensor, list[Task]]] = {}  # dumped, not committed
        # demoted blocks whose file is still being written: committed (hittable) already, read
        # from memory until the file lands, so a demotion never waits for the disk
        self._writing: dict[bytes, torch.Tensor] = {}
        self._writer = CopyEngine("disk-write")
        self._lock = threading.RLock()
        self._copies = CopyEngine("disk-copy")
        self._io = CopyEngine("disk-io")
        self.counters = dict(dumped_blocks=0, loaded_blocks=0, evictions=0, refused=0, corrupt=0, written=0,
                             backlog_refused=0)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)
        self._scan()

    # ---- files ------------------------------------------------------------------------------
    def file_of(self, key: bytes) -> str:
        return os.path.join(self.path, hashlib.sha256(key).hexdigest() + ".blk")

    def _file_bytes(self, key: bytes) -> int:
        return _HEADER.size + len(key) + self.block_size

    def _write_file(self, key: bytes, data: torch.Tensor) -> None:
        final = self.file_of(key)
        tmp = f"{final}.{os.getpid()}.{threading.get_ident()}.tmp"
        buf = as_bytes(data.contiguous()).numpy()
        crc = zlib.crc32(buf, zlib.crc32(key))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_HEADER.pack(_MAGIC, _VERSION, 0, len(key), buf.nbytes, crc))
                f.write(key)
                f.write(memoryview(buf))
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _read_header(self, f, key: Optional[bytes]) -> bytes:
        head = f.read(_HEADER.size)
        if len(head) != _HEADER.size:
            raise ValueError("truncated header")
        magic, version, _, id_len, data_len, crc = _HEADER.unpack(head)
        if magic != _MAGIC or version != _VERSION or data_len != self.block_size:
            raise ValueError(f"not a ucm block of {self.block_size} bytes (magic {magic!r}, v{version}, {data_len} B)")
        file_key = f.read(id_len)
        if key is not None and file_key != key:
            raise ValueError("file holds another block id")
        return file_key, crc

    def _read_file_into(self, key: bytes, views: list[torch.Tensor]) -> bool:
        """The block's bytes into ``views`` (CPU byte tensors, in order, ``block_size`` bytes in all);
        False (logged, the file forgotten) if it is missing or corrupt. One ``preadv`` fills them all:
        a promotion reads straight into the pool's slot, without a temporary block (whose fresh pages
        cost as much as the read, measured on the CPU)."""
        bufs = [memoryview(v.numpy()) for v in views]
        try:
            with open(self.file_of(key), "rb") as f:
                _, crc = self._read_header(f, key)
                got = os.preadv(f.fileno(), bufs, f.tell()) if hasattr(os, "preadv") else \
                    sum(f.readinto(b) for b in bufs)
                if got != self.block_size or os.fstat(f.fileno()).st_size != self._file_bytes(key):
                    raise ValueError("truncated or overlong data")
            check = zlib.crc32(key)
            for b in bufs:
                check = zlib.crc32(b, check)
            if check != crc:
                raise ValueError("checksum mismatch")
            return True
        except (OSError, ValueError) as exc:
            log.warning("ucm: disk block %s unreadable (%s): treated as a miss", key[:16].hex(), exc)
            self.counters["corrupt"] += 1
            with self._lock:
                if key in self._files:
                    self._forget(key)
                    self.eviction.remove(key)
            return False

    def _scan(self) -> None:
        """Warm restart: index the committed blocks already in the directory, oldest first."""
        found = []
        for entry in os.scandir(self.path):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)  # a write that never finished
                continue
            if not entry.name.endswith(".blk"):
                continue
            try:
                with open(entry.path, "rb") as f:
                    key, _ = self._read_header(f, None)
                if entry.name != os.path.basename(self.file_of(key)) or entry.stat().st_size != self._file_bytes(key):
                    raise ValueError("wrong name or size")
                found.append((entry.stat().st_mtime, key))
            except (OSError, ValueError) as exc:
                log.warning("ucm: removing unusable disk block %s (%s)", entry.name, exc)
                os.unlink(entry.path)
        for _, key in sorted(found):
            self._make_room(self._file_bytes(key), key)
            self._files[key] = self._file_bytes(key)
            self._used += self._files[key]
            self.eviction.insert(key)
        if found:
            log.info("ucm: disk tier %s: %d blocks from an earlier run", self.path, len(self._files))

    def _forget(self, key: bytes) -> None:
        self._used -= self._files.pop(key)
        self._writing.pop(key, None)
        try:
            os.unlink(self.file_of(key))
        except FileNotFoundError:
            pass

    def _make_room(self, nbytes: int, incoming: bytes) -> bool:
        while self._used + nbytes > self.max_size or len(self._files) >= self.eviction.capacity:
            victim = self.eviction.evict(incoming=incoming)
            if victim is None:
                return False
            self._forget(victim)
            self.counters["evictions"] += 1
        return True

    def _store(self, key: bytes, data: torch.Tensor, background: bool = False, release=None) -> int:
        """Admit and write one committed block; returns OK, REFUSED or IO_ERROR. With
        ``background`` the block is hittable at once (read from ``data`` until its file lands);
        ``release(data)`` once ``data`` is not needed any more (background writes only)."""
        with self._lock:
            if key in self._files:
                self.eviction.touch(key)
                code = 0
            elif background and self.demotion_room() < 1:
                self.counters["backlog_refused"] += 1
                code = REFUSED
            elif not self.admission.admit(key) or not self._make_room(self._file_bytes(key), key):
                self.counters["refused"] += 1
                code = REFUSED
            else:
                code = None
                self._files[key] = self._file_bytes(key)  # reserve the bytes before writing
                self._used += self._files[key]
                if background:
                    self._writing[key] = data
                    self.eviction.insert(key)
        if code is not None:  # nothing to write
            if release is not None:
                release(data)
            return code
        if background:
            self._writer.run(self._write_pending, key, data, release)
            return 0
        try:
            self._write_file(key, data)
        except OSError as exc:
            log.error("ucm: disk write of block %s failed: %s", key[:16].hex(), exc)
            with self._lock:
                self._used -= self._files.pop(key)
            return IO_ERROR
        with self._lock:
            if key in self._files:
                self.eviction.insert(key)
                self.counters["written"] += 1
        return 0

    # ---- contract ---------------------------------------------------------------------------
    def _committed(self, key: bytes) -> bool:
        return key in self._files and key in self.eviction  # _files alone includes writes in progress

    def has(self, key: bytes) -> bool:
        with self._lock:
            return super().has(key)

    def holds(self, key: bytes) -> bool:
        return self._committed(key)

    def dump(self, block_ids: Sequence[BlockId], offset: Sequence[int], src_tensor: Sequence[torch.Tensor]) -> Task:
        keys = check_pieces(block_ids, offset, src_tensor, self.block_size, "src_tensor")
        task = Task("dump")
        pairs = []
        with self._lock:
            for key, off, src in zip(keys, offset, src_tensor):
                if key in self._files:
                    continue  # already stored
                staged = self._staged.get(key)
                if staged is None:
                    staged = self._staged[key] = (torch.empty(self.block_size, dtype=torch.uint8), [])
                    self.counters["dumped_blocks"] += 1
                if not staged[1] or staged[1][-1] is not task:
                    staged[1].append(task)
                src = as_bytes(src)
                pairs.append((staged[0][off:off + src.numel()], src))
            task.add(self._copies.submit(pairs, on_error=lambda exc: [task.fail(k, IO_ERROR) for k in keys]))
        return task

    def commit(self, block_ids: Sequence[BlockId], is_success: bool = True) -> None:
        keys = to_keys(block_ids)
        with self._lock:
            staged = {k: self._staged.pop(k) for k in dict.fromkeys(keys) if k in self._staged}
        for key, (data, writers) in staged.items():
            ok = is_success and all(t.wait(self.timeout_s) and key not in t.failed for t in writers)
            if ok and self._store(key, data) == REFUSED:
                log.info("ucm: disk tier full: block %s not stored", key[:16].hex())

    def load(self, block_ids: Sequence[BlockId], offset: Sequence[int], dst_tensor: Sequence[torch.Tensor]) -> Task:
        keys = check_pieces(block_ids, offset, dst_tensor, self.block_size, "dst_tensor")
        task = Task("load")
        pieces: dict[bytes, list] = {}
        with self._lock:
            for key, off, dst in zip(keys, offset, dst_tensor):
                if self._committed(key):
                    pieces.setdefault(key, []).append((off, dst))
                else:
                    task.fail(key, NOT_FOUND)
        task.add(self._io.run(self._load_files, task, pieces,
                              on_error=lambda exc: [task.fail(k, IO_ERROR) for k in pieces]))
        return task

    def _load_files(self, task: Task, pieces: dict) -> None:
        for key, parts in pieces.items():
            data = self.read_block(key)
            if data is None:
                task.fail(key, NOT_FOUND)
                continue
            try:
                for off, dst in parts:
                    dst = as_bytes(dst)
                    dst.copy_(data[off:off + dst.numel()])
            except Exception as exc:  # e.g. a device error; reported, never raised into the engine
                log.error("ucm: copy from disk block failed: %s", exc)
                task.fail(key, IO_ERROR)

    # ---- whole blocks (chain) ---------------------------------------------------------------
    def read_block(self, key: bytes) -> Optional[torch.Tensor]:
        """A copy of the block's bytes (the tier above may reuse a pending block's buffer once
        written), or None if absent or unreadable."""
        data = torch.empty(self.block_size, dtype=torch.uint8)
        return data if self.read_into(key, [data]) else None

    def read_into(self, key: bytes, views: list[torch.Tensor]) -> bool:
        """``read_block`` into the caller's ``views`` (CPU byte tensors, ``block_size`` bytes in all,
        e.g. the planes of a slot of the tier above); False if absent or unreadable."""
        if sum(v.numel() * v.element_size() for v in views) != self.block_size:
            raise ValueError(f"views must hold kv_block_size = {self.block_size} bytes in all")
        with self._lock:
            if not self._committed(key):
                return False
            self.eviction.touch(key)
            self.counters["loaded_blocks"] += 1
            pending = self._writing.get(key)
            if pending is not None:  # copied under the lock: the writer releases it only after
                flat, at = as_bytes(pending), 0
                for v in views:
                    n = v.numel() * v.element_size()
                    as_bytes(v).copy_(flat[at:at + n])
                    at += n
                return True
        return self._read_file_into(key, views)

    def write_block(self, key: bytes, data: torch.Tensor, release=None) -> bool:
        """A block demoted from the tier above: admitted and hittable at once, its file written on
        a background thread (the caller, often the model's own thread, never waits for the disk).
        ``data`` must not change until ``release(data)``, called once the file is written (or
        at once when nothing is written)."""
        return self._store(key, data, background=True, release=release) == 0

    def demotion_room(self) -> int:
        """Demoted blocks the write queue takes before ``disk.max_write_backlog`` bytes wait."""
        return max(0, self.max_backlog // self.block_size - len(self._writing))

    def _write_pending(self, key: bytes, data: torch.Tensor, release=None) -> None:
        try:
            self._write_file(key, data)
            ok = True
        except Exception as exc:  # any error: the block is dropped and ``data`` still released
            log.error("ucm: disk write of block %s failed: %s", key[:16].hex(), exc)
            ok = False
        try:
            with self._lock:
                if self._writing.get(key) is not data:  # evicted (or replaced) meanwhile
                    if key not in self._files and ok:
                        try:
                            os.unlink(self.file_of(key))
                        except FileNotFoundError:
                            pass
                    return
                del self._writing[key]
                if ok:
                    self.counters["written"] += 1
                else:
                    self._used -= self._files.pop(key)
                    self.eviction.remove(key)
        finally:
            if release is not None:
                release(data)

    def flush(self) -> None:
        """Wait until every demoted block's file is written."""
        self._writer.run(lambda: None).wait(self.timeout_s)

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counters, tier="disk", blocks=len(self._files), used_bytes=self._used,
                        max_size=self.max_size)

    def close(self) -> None:
        self._writer.close()  # pending demotions reach their files first
        self._copies.close()
        self._io.close()
