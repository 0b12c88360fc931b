"""The memory and the spill file behind the side store, made once per subsystem and reused
by every session.

Why it outlives sessions: copy-before-write sits on the application's write path, and
a chunk saved into fresh memory pays a page fault per page first, as a chunk written
into a new stretch of the spill file pays for allocating its blocks. So the slots are
made on first need and kept: a session's saves land in pages and blocks an earlier
session already touched.

    memory  an anonymous mapping of MEMORY_LIMIT bytes (whole chunks), slot i at i * CHUNK;
            pages are touched on first use and stay with the subsystem (its resident
            memory between sessions is what the busiest session used, at most the limit)
    spill   one file in SPILL_DIR, unlinked at creation (a crash leaves nothing behind),
            slot i at i * CHUNK; it grows as sessions need and keeps its high-water
            mark, so the disk one backup needed stays reserved for the next; with
            SPILL_KEEP_BYTES it is cut back to that once no slot is in use

A slot belongs to whoever took it until it is given back; the pool never looks inside.
Lock: `_lock` guards both free lists, the counts of slots made and the making of the spill
file; `spill_fd` is read without it (set once, an atomic attribute read).
"""

import os
import threading

from common.arena import huge_page_arena
from common.fileio import unlinked_scratch_file


class SpillUnavailable(Exception):
    """the spill file cannot be created"""


class SlotPool:
    def __init__(self, memory_limit: int, spill_dir: str, chunk_size: int,
                 spill_keep_bytes: int | None = None) -> None:
        # set at start-up, never changed
        self.chunk_size = chunk_size
        self.spill_dir = spill_dir
        self.memory_slots = memory_limit // chunk_size
        self._arena = huge_page_arena(self.memory_slots * chunk_size)
        self.memory = memoryview(self._arena)  # slot bytes; written only by a slot's holder
        # None: keep the high-water mark, so the disk a backup needed stays reserved for the next
        self.spill_keep_slots = None if spill_keep_bytes is None else spill_keep_bytes // chunk_size
        self._scratch = threading.local()  # a chunk-sized buffer per thread, for saves that spill
        self._lock = threading.Lock()
        # guarded by _lock
        self._free_memory: list[int] = []
        self._memory_made = 0
        self._free_spill: list[int] = []
        self._spill_made = 0
        self.spill_fd: int | None = None  # made on first need, then kept until close(); read without the lock

    def take_memory(self) -> int | None:
        """A memory slot, or None if all are taken. Slots given back go first: their pages
        were touched already."""
        with self._lock:
            if self._free_memory:
                return self._free_memory.pop()
            if self._memory_made < self.memory_slots:
                self._memory_made += 1
                return self._memory_made - 1
            return None

    def take_spill(self) -> int:
        """A spill slot (the file grows to hold it). SpillUnavailable if the file cannot be created."""
        with self._lock:
            if self.spill_fd is None:
                try:
                    self.spill_fd = unlinked_scratch_file(self.spill_dir, "tzero-spill-")
                except OSError as e:
                    raise SpillUnavailable(f"cannot create a spill file in {self.spill_dir}: {e.strerror}") from e
            if self._free_spill:
                return self._free_spill.pop()
            self._spill_made += 1
            return self._spill_made - 1

    def give(self, memory: list[int], spill: list[int]) -> None:
        """Slots back to the pool. Once every spill slot is back, the file is cut to its keep."""
        with self._lock:
            self._free_memory += memory
            self._free_spill += spill
            if self.spill_keep_slots is not None and self.spill_fd is not None \
                    and len(self._free_spill) == self._spill_made and self._spill_made > self.spill_keep_slots:
                try:
                    os.ftruncate(self.spill_fd, self.spill_keep_slots * self.chunk_size)
                except OSError:
                    return  # a file longer than its keep holds disk, nothing else: keep it whole
                self._spill_made = self.spill_keep_slots
                self._free_spill = list(range(self._spill_made))

    def scratch(self) -> memoryview:
        """This thread's chunk-sized buffer (made on its first spilling save, then reused)."""
        buf: memoryview | None = getattr(self._scratch, "buf", None)
        if buf is None:
            buf = self._scratch.buf = memoryview(bytearray(self.chunk_size))
        return buf

    @property
    def spill_file_bytes(self) -> int:
        with self._lock:
            return self._spill_made * self.chunk_size

    def close(self) -> None:
        """Close the spill file; the mapping goes with the last view of it. Nothing may hold
        a slot any more (subsystem exit, or a test's end)."""
        with self._lock:
            fd, self.spill_fd = self.spill_fd, None
        if fd is not None:
            os.close(fd)
