"""The side store: old chunk contents saved by copy-before-write.

Chunks live in memory up to `memory_limit` bytes, then in a spill file of
fixed-size slots under `spill_dir`. The spill file is unlinked as soon as it is
created, so a crash leaves nothing behind. When the spill file cannot grow
(disk full, I/O error) `put` raises SideStoreFull: the caller aborts the
backup session, never the application's write.

Thread safety: one lock guards the maps, the free-slot list and the counters.
The spill I/O itself runs outside the lock: a slot belongs to one key until that
key is discarded, and callers serialise put/get/discard of one key (they hold
the chunk's stripe lock), so a slot is never reused under a reader.
"""

import os
import tempfile
import threading


class SideStoreFull(Exception):
    """the side store cannot hold another chunk"""


class SideStore:
    def __init__(self, memory_limit: int, spill_dir: str, chunk_size: int):
        self.memory_limit = memory_limit  # set at open, never changed
        self.spill_dir = spill_dir  # set at open, never changed
        self.chunk_size = chunk_size  # set at open, never changed
        self._lock = threading.Lock()
        # guarded by _lock:
        self._memory: dict[tuple[int, int], bytes] = {}
        self._slots: dict[tuple[int, int], tuple[int, int]] = {}  # key -> (slot, length)
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._spill_fd: int | None = None
        self._closed = False
        self.memory_bytes = 0
        self.spill_bytes = 0
        self.peak_bytes = 0
        self.saved_total = 0

    def put(self, key: tuple[int, int], data: bytes) -> None:
        """Keep DATA for KEY. Raises SideStoreFull when neither memory nor spill can take it."""
        with self._lock:
            if self._closed:
                return
            assert key not in self._memory and key not in self._slots, "a chunk is saved once"
            self.saved_total += 1
            if self.memory_bytes + len(data) <= self.memory_limit:
                self._memory[key] = data
                self.memory_bytes += len(data)
                self._note_peak()
                return
            slot = self._take_slot()
            fd = self._spill_fd
        try:
            written = os.pwrite(fd, data, slot * self.chunk_size)
            if written != len(data):
                raise OSError(28, "short write to the spill file")
        except OSError as e:
            with self._lock:
                self._free_slots.append(slot)
            raise SideStoreFull(f"spill file in {self.spill_dir}: {e.strerror or e}") from e
        with self._lock:
            if self._closed:
                return
            self._slots[key] = (slot, len(data))
            self.spill_bytes += len(data)
            self._note_peak()

    def _take_slot(self) -> int:
        if self._spill_fd is None:
            try:
                fd, path = tempfile.mkstemp(prefix="tzero-spill-", dir=self.spill_dir)
            except OSError as e:
                raise SideStoreFull(f"cannot create a spill file in {self.spill_dir}: {e.strerror}") from e
            os.unlink(path)
            self._spill_fd = fd
        if self._free_slots:
            return self._free_slots.pop()
        self._next_slot += 1
        return self._next_slot - 1

    def _note_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.memory_bytes + self.spill_bytes)

    def get(self, key: tuple[int, int]) -> bytes | None:
        """The saved content of KEY, or None if it is not here."""
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                return data
            where = self._slots.get(key)
            fd = self._spill_fd
        if where is None:
            return None
        slot, length = where
        data = os.pread(fd, length, slot * self.chunk_size)
        if len(data) != length:
            raise OSError(5, f"spill file read short: expected {length} bytes, got {len(data)}")
        return data

    def discard(self, key: tuple[int, int]) -> None:
        with self._lock:
            data = self._memory.pop(key, None)
            if data is not None:
                self.memory_bytes -= len(data)
                return
            where = self._slots.pop(key, None)
            if where is not None:
                self._free_slots.append(where[0])
                self.spill_bytes -= where[1]

    def keys(self, export: int, limit: int) -> list[int]:
        """Up to LIMIT saved chunk numbers of EXPORT, those in memory first (they relieve pressure)."""
        with self._lock:
            found = [c for (e, c) in self._memory if e == export][:limit]
            if len(found) < limit:
                found += [c for (e, c) in self._slots if e == export][: limit - len(found)]
        return sorted(found)

    @property
    def pressure(self) -> bool:
        """True once half the memory budget is used: the controller should fetch saved chunks first."""
        return self.memory_bytes * 2 >= self.memory_limit or self.spill_bytes > 0

    def close(self) -> None:
        """Free everything; later puts are ignored (a mutation may still be finishing)."""
        with self._lock:
            self._closed = True
            self._memory.clear()
            self._slots.clear()
            self._free_slots.clear()
            self.memory_bytes = self.spill_bytes = 0
            fd, self._spill_fd = self._spill_fd, None
        if fd is not None:
            os.close(fd)
