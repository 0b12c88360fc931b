"""The side store of one session: old chunk contents saved by copy-before-write.

Chunks go to memory slots while the pool has any, then to spill slots (slots.py: both
belong to the subsystem and outlive the session). A save reads the chunk straight into
its memory slot, or through the saving thread's scratch buffer into its spill slot: no
allocation on the write path. When the spill file cannot take a chunk (disk full, I/O
error) `save` raises SideStoreFull: the caller aborts the backup session, never the
application's write.

Thread safety: `_lock` guards the key map and the counters. Slot I/O runs outside it:
callers serialise save/read/discard of one key (they hold the chunk's stripe lock), and
a slot belongs to one key until that key is discarded. A save still running when the
session closes gives its slot back itself, so close() never hands the pool a slot that
someone is writing.

Published slots: `save` returns the slot entry of its chunk (common/concordance.py: the
global slot and the sequence number its take was stamped with), which the session writes
into the concordance before the chunk becomes SAVED, so that a controller on this host can
read the saved copy out of the slot itself. A slot's entry stays true while its key holds
it; a slot given back and taken again gets a new sequence number before it is written.
"""

import threading
from typing import Protocol

from common.fileio import WritableBuffer, read_fully, write_all
from nbdplugin.slots import SlotPool, SpillUnavailable, Taken

MEMORY, SPILL = 0, 1
UNPUBLISHED = (0, 0)  # the slot entry of a chunk no local reader can find (read through the view)


class ChunkSource(Protocol):
    """Where a saved chunk's bytes come from: a Device."""

    def read_into(self, buf: memoryview, offset: int, /) -> None: ...


class SideStoreFull(Exception):
    """the side store cannot hold another chunk"""


class SideStore:
    def __init__(self, pool: SlotPool) -> None:
        # set at open, never changed
        self.pool = pool
        self.memory_limit = pool.memory_slots * pool.chunk_size
        self._lock = threading.Lock()
        # guarded by _lock (the byte counts are read without it, for reports and `pressure`)
        self._where: dict[tuple[int, int], tuple[int, int, int]] = {}  # key -> (MEMORY|SPILL, slot, length)
        self._closed = False
        self.memory_bytes = 0
        self.spill_bytes = 0
        self.peak_bytes = 0
        self.saved_total = 0

    def save(self, key: tuple[int, int], source: ChunkSource, offset: int, length: int) -> tuple[int, int]:
        """Keep LENGTH bytes (at most one chunk) that SOURCE.read_into(view, OFFSET) yields, as KEY;
        returns KEY's slot entry (UNPUBLISHED when the slot index has no word for its slot, or
        the session ended meanwhile).

        SideStoreFull when neither memory nor spill can take them; an OSError of SOURCE
        goes to the caller. Either way nothing is kept and the slot goes back."""
        assert 0 < length <= self.pool.chunk_size, "one chunk per key"
        taken: Taken | None = self.pool.take_memory()
        kind = MEMORY if taken is not None else SPILL
        slot: int | None = None if taken is None else taken[0]
        try:
            if taken is not None:  # a memory slot (kind == MEMORY)
                at = taken[0] * self.pool.chunk_size
                source.read_into(self.pool.memory[at:at + length], offset)
            else:
                taken = self._take_spill()
                slot = taken[0]
                view = self.pool.scratch()[:length]
                source.read_into(view, offset)
                self._write_spill(taken[0], view)
        except BaseException:
            if slot is not None:
                self._give(kind, slot)
            raise
        slot, sequence = taken
        with self._lock:
            if not self._closed:
                assert key not in self._where, "a chunk is saved once"
                self._where[key] = (kind, slot, length)
                self.saved_total += 1
                if kind == MEMORY:
                    self.memory_bytes += length
                else:
                    self.spill_bytes += length
                self.peak_bytes = max(self.peak_bytes, self.memory_bytes + self.spill_bytes)
                if not sequence:
                    return UNPUBLISHED
                return 1 + slot + (self.pool.memory_slots if kind == SPILL else 0), sequence
        self._give(kind, slot)  # the session ended while we saved: nobody will read it
        return UNPUBLISHED

    def _take_spill(self) -> Taken:
        try:
            return self.pool.take_spill()
        except SpillUnavailable as e:
            raise SideStoreFull(str(e)) from None

    def _write_spill(self, slot: int, view: memoryview) -> None:
        fd = self.pool.spill_fd
        assert fd is not None, "take_spill made the file, and only the subsystem's exit closes it"
        try:
            write_all(fd, view, slot * self.pool.chunk_size)
        except OSError as e:
            raise SideStoreFull(f"spill file in {self.pool.spill_dir}: {e.strerror or e}") from e

    def read_into(self, key: tuple[int, int], view: WritableBuffer, start: int) -> bool:
        """Fill VIEW with KEY's saved bytes from START on; False if KEY is not here."""
        with self._lock:
            where = self._where.get(key)
        if where is None:
            return False
        kind, slot, length = where
        assert start + len(view) <= length, "a read stays within the saved chunk"
        at = slot * self.pool.chunk_size + start
        if kind == MEMORY:
            view[:] = self.pool.memory[at:at + len(view)]
            return True
        fd = self.pool.spill_fd
        assert fd is not None, "a spill slot is held, so the spill file is open"
        read_fully(fd, view, at, "the spill file")
        return True

    def get(self, key: tuple[int, int]) -> bytes | None:
        """A copy of KEY's saved content, or None if it is not here."""
        with self._lock:
            where = self._where.get(key)
        if where is None:
            return None
        buf = bytearray(where[2])
        return bytes(buf) if self.read_into(key, memoryview(buf), 0) else None

    def discard(self, key: tuple[int, int]) -> None:
        with self._lock:
            where = self._where.pop(key, None)
            if where is None:
                return
            kind, slot, length = where
            if kind == MEMORY:
                self.memory_bytes -= length
            else:
                self.spill_bytes -= length
        self._give(kind, slot)

    def _give(self, kind: int, slot: int) -> None:
        self.pool.give([slot] if kind == MEMORY else [], [slot] if kind == SPILL else [])

    def keys(self, export: int, limit: int) -> list[int]:
        """Up to LIMIT saved chunk numbers of EXPORT, those in memory first (they relieve pressure)."""
        with self._lock:
            found = [c for (e, c), (kind, _, _) in self._where.items() if e == export and kind == MEMORY][:limit]
            if len(found) < limit:
                found += [c for (e, c), (kind, _, _) in self._where.items()
                          if e == export and kind == SPILL][: limit - len(found)]
        return sorted(found)

    @property
    def pressure(self) -> bool:
        """True once half the memory budget is used: the controller should fetch saved chunks first."""
        return self.memory_bytes * 2 >= self.memory_limit or self.spill_bytes > 0

    def close(self) -> None:
        """Give every slot back; later saves are given back by their savers, unkept."""
        with self._lock:
            self._closed = True
            where, self._where = self._where, {}
            self.memory_bytes = self.spill_bytes = 0
        self.pool.give([s for k, s, _ in where.values() if k == MEMORY],
                       [s for k, s, _ in where.values() if k == SPILL])
