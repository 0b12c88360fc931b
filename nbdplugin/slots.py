"""The memory and the spill file behind the side store, made once per subsystem and reused
by every session.

Why it outlives sessions: copy-before-write sits on the application's write path, and
a chunk saved into fresh memory pays a page fault per page first, as a chunk written
into a new stretch of the spill file pays for allocating its blocks. So the slots are
made on first need and kept: a session's saves land in pages and blocks an earlier
session already touched.

    memory  a memfd of MEMORY_LIMIT bytes (whole chunks), mapped, slot i at i * CHUNK;
            pages are touched on first use and stay with the subsystem (its resident
            memory between sessions is what the busiest session used, at most the limit).
            A memfd rather than anonymous memory so that a controller on this host can
            read saved chunks out of it (controller/backup/saved_read.py)
    spill   one file in SPILL_DIR, unlinked at creation (a crash leaves nothing behind),
            slot i at i * CHUNK; it grows as sessions need and keeps its high-water
            mark, so the disk one backup needed stays reserved for the next; with
            SPILL_KEEP_BYTES it is cut back to that once no slot is in use

    index   a memfd holding, per slot, the sequence number of the save that took it last
            (common/concordance.py's slot index): every take stamps its slot with a new
            number before the taker writes a byte of it, which is how a local reader
            knows a slot it read was not taken again meanwhile

A slot belongs to whoever took it until it is given back; the pool never looks inside.
Lock: `_lock` guards both free lists, the counts of slots made, the sequence counter and
its stamps, and the making of the spill file; `spill_fd` is read without it (set once, an
atomic attribute read).
"""

import mmap
import os
import threading

from common.concordance import (
    INDEXED_SPILL_SLOTS,
    SLOT_INDEX_HEADER,
    SLOT_WORD,
    TOKEN_OFFSET,
    TOKEN_SIZE,
    slot_index_size,
)
from common.fileio import unlinked_scratch_file

Taken = tuple[int, int]  # (slot, sequence number of the take; 0 where the slot index has no word for it)


class SpillUnavailable(Exception):
    """the spill file cannot be created"""


class SlotPool:
    def __init__(self, memory_limit: int, spill_dir: str, chunk_size: int,
                 spill_keep_bytes: int | None = None) -> None:
        # set at start-up, never changed
        self.chunk_size = chunk_size
        self.spill_dir = spill_dir
        self.memory_slots = memory_limit // chunk_size
        self._memory_fd = _memfd("tzero-side-memory", max(self.memory_slots * chunk_size, mmap.PAGESIZE))
        self._arena = _mapped(self._memory_fd)
        self.memory = memoryview(self._arena)  # slot bytes; written only by a slot's holder
        self._index_fd = _memfd("tzero-side-index", slot_index_size(self.memory_slots))
        self._index = _mapped(self._index_fd)  # guarded by _lock (written); read by local controllers
        # None: keep the high-water mark, so the disk a backup needed stays reserved for the next
        self.spill_keep_slots = None if spill_keep_bytes is None else spill_keep_bytes // chunk_size
        self._scratch = threading.local()  # a chunk-sized buffer per thread, for saves that spill
        self._lock = threading.Lock()
        # guarded by _lock
        self._free_memory: list[int] = []
        self._memory_made = 0
        self._free_spill: list[int] = []
        self._spill_made = 0
        self._sequence = 0  # the last take's number
        self.spill_fd: int | None = None  # made on first need, then kept until close(); read without the lock

    def take_memory(self) -> Taken | None:
        """A memory slot, stamped, or None if all are taken. Slots given back go first: their
        pages were touched already."""
        with self._lock:
            if self._free_memory:
                slot = self._free_memory.pop()
            elif self._memory_made < self.memory_slots:
                self._memory_made += 1
                slot = self._memory_made - 1
            else:
                return None
            return slot, self._stamp(slot)

    def take_spill(self) -> Taken:
        """A spill slot, stamped (the file grows to hold it). SpillUnavailable if the file
        cannot be created."""
        with self._lock:
            self._make_spill()
            if self._free_spill:
                slot = self._free_spill.pop()
            else:
                self._spill_made += 1
                slot = self._spill_made - 1
            return slot, self._stamp(self.memory_slots + slot) if slot < INDEXED_SPILL_SLOTS else 0

    def _make_spill(self) -> None:
        """Under _lock: the spill file, unless it exists."""
        if self.spill_fd is None:
            try:
                self.spill_fd = unlinked_scratch_file(self.spill_dir, "tzero-spill-")
            except OSError as e:
                raise SpillUnavailable(f"cannot create a spill file in {self.spill_dir}: {e.strerror}") from e

    def _stamp(self, global_slot: int) -> int:
        """Under _lock, when a slot is taken and before its taker writes it: a new number in its word."""
        self._sequence += 1
        SLOT_WORD.pack_into(self._index, SLOT_INDEX_HEADER + SLOT_WORD.size * global_slot, self._sequence)
        return self._sequence

    def claim(self, token: bytes) -> None:
        """Write session TOKEN into the slot index, so a controller of that session can tell this
        host's index from a file of the same name elsewhere. Made here as well: the spill file
        (empty until it spills), so the session's `open` reply can name it."""
        with self._lock:
            self._index[TOKEN_OFFSET:TOKEN_OFFSET + TOKEN_SIZE] = token
            try:
                self._make_spill()
            except SpillUnavailable:
                pass  # saves that spill fail the session, as before; local readers do without it

    def shared(self) -> dict[str, object]:
        """Where a process on this host opens the slots and their index (read-only), and what
        it checks them by (docs/control-protocol.md)."""
        spill = self.spill_fd
        return {"memory": _identity(self._memory_fd), "spill": None if spill is None else _identity(spill),
                "index": _identity(self._index_fd), "memory_slots": self.memory_slots,
                "indexed_slots": self.memory_slots + INDEXED_SPILL_SLOTS, "chunk_size": self.chunk_size}

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
        for fd in (self._memory_fd, self._index_fd):
            if fd >= 0:
                os.close(fd)
        self._memory_fd = self._index_fd = -1


def _memfd(name: str, size: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def _mapped(fd: int) -> mmap.mmap:
    """FD's whole file, mapped shared; advised for huge pages where the kernel offers them for
    shared memory (common/arena.py says why they help)."""
    m = mmap.mmap(fd, os.fstat(fd).st_size)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            m.madvise(advice)
        except OSError:
            pass
    return m


def _identity(fd: int) -> dict[str, object]:
    st = os.fstat(fd)
    return {"path": f"/proc/{os.getpid()}/fd/{fd}", "dev": st.st_dev, "ino": st.st_ino}
