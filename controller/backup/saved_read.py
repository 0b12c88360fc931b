"""Reading saved chunks straight out of the side store, when the controller runs on the host
of the subsystem that holds them.

Why: a chunk that copy-before-write saved is no longer on the device, and read through the
view it costs an NBD round trip served by the plugin's Python, the same interpreter that
serves the applications' writes (under fio, 41% of the controller's time went to such reads,
one by one). The side store's memory slots are a memfd and its spill slots a file
(nbdplugin/slots.py); opened here read-only, a saved chunk is one pread out of its slot.

Where a chunk is. Before chunk c becomes SAVED, the plugin writes c's slot entry into the
concordance: (g + 1, s), the global slot g that holds the copy and the sequence number s
that was stamped into g's word of the slot index when g was taken for this save
(common/concordance.py has the layout). The entry never changes while c is SAVED.

Why it is exact. On the plugin's side, for every save of c, in this order:
  1. the pool takes slot g and stores a new number s into g's word W[g] (numbers only grow,
     so W[g] has never held s before),
  2. c's old content is written into g (a copy into the memfd's pages, or a pwrite into
     the spill file), and nothing else writes g until g is taken again: step 1 of the
     next owner, which stores a new number s' != s into W[g] before it writes a byte,
  3. c's entry (g + 1, s) is stored, then c's state SAVED, then the mutation goes ahead.
Here, for a chunk whose state we loaded as SAVED (after the device read, local_read.py):
  a. load c's entry (g + 1, s): stored before SAVED, so it is this save's entry;
  b. load W[g]; anything but s: g was taken again already: read c through the view;
  c. read g's bytes with pread (memfd or spill file, into the controller's buffer);
  d. load W[g] again: s means the bytes are c's saved copy; anything else: through the view.
Step d is the check that matters. If our load of W[g] in d saw s, the next owner's store of
s' into W[g] (step 1) was not yet visible to it; that owner writes g's bytes only after
that store, so under total store order (every process sees another's stores in the order
it made them, and our loads are not reordered with each other; a pread's copy is loads
made between our step b and d) none of its bytes could be seen by the loads of step c
either: every byte we copied is c's saved content, which step 3's ordering made visible
before SAVED was. This holds byte by byte, so the words need not be loaded atomically: a
word loaded half old, half new differs from s in some byte, and is treated as changed.

What can take a slot while we read: a release of c (only this controller releases, and
only chunks it has read whole, so not during this read, but the argument does not rely
on it), the session's end (abort, lease, a stopping subsystem: every slot goes back and a
next session may take them), or a future side store that moves chunks between memory and
spill (it must publish the new entry before it gives the old slot back, as step 3 does).
Each shows as a changed W[g] and costs one read through the view, never a wrong byte. A
spill file cut back while no slot is in use reads short: through the view as well.

Used only where LocalRead is (Linux on x86-64, the concordance holding the session's
token) and the slot index proves to be the same host's: the `open` reply names it, its
header holds the session's locality token (written by the plugin at open), and the memory
and spill files open read-only to the very files the plugin holds (st_dev, st_ino). Nothing
but those three paths is opened. Otherwise saved chunks are read through the view.
"""

import hmac
import mmap
import os
import stat
from typing import TypedDict

from common.concordance import SLOT_INDEX_HEADER, SLOT_WORD, TOKEN_OFFSET, TOKEN_SIZE, slot_index_size
from common.fileio import read_fully


class FileIdentity(TypedDict):
    """A file the plugin holds, as a path here and what fstat says of it there."""

    path: str
    dev: int
    ino: int


class SideInfo(TypedDict):
    """What `open` says of the side store for reading its slots on this host."""

    memory: FileIdentity
    spill: FileIdentity | None
    index: FileIdentity
    memory_slots: int
    indexed_slots: int
    chunk_size: int


def _open_same(ident: FileIdentity) -> int:
    """IDENT's path opened read-only, if it is the very file the plugin holds: ValueError if not."""
    try:
        fd = os.open(ident["path"], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ValueError(f"the side store is not readable here ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (ident["dev"], ident["ino"]):
        os.close(fd)
        raise ValueError("the side store here is not the subsystem's")
    return fd


class SavedRead:
    """One subsystem's side store slots opened here, and its slot index mapped read-only."""

    def __init__(self, memory_fd: int, spill_fd: int | None, index: mmap.mmap, info: SideInfo):
        # Set at open, never changed.
        self._memory_fd = memory_fd
        self._spill_fd = spill_fd
        self._index = index
        self._memory_slots = info["memory_slots"]
        self._indexed = info["indexed_slots"]
        self._chunk = info["chunk_size"]
        # Statistics (copy loop only).
        self.memory_bytes = 0  # bytes of saved chunks read here out of memory slots
        self.spill_bytes = 0  # ... and out of spill slots

    @classmethod
    def open(cls, info: SideInfo | None, token: bytes, chunk_size: int) -> tuple["SavedRead | None", str]:
        """(SavedRead, "") when the side store TOKEN's session uses can be read here, else (None, why)."""
        if not info:
            return None, "the subsystem offers no side store reads"
        if info.get("chunk_size") != chunk_size or info.get("indexed_slots", 0) < info.get("memory_slots", 0):
            return None, "the side store's shape is not the concordance's"
        opened: list[int] = []
        try:
            index_fd = _open_same(info["index"])
            opened.append(index_fd)
            size = slot_index_size(info["memory_slots"])
            if os.fstat(index_fd).st_size < size or info["indexed_slots"] != (size - SLOT_INDEX_HEADER) // 8:
                raise ValueError("the slot index is not the size its side store needs")
            index = mmap.mmap(index_fd, size, access=mmap.ACCESS_READ)
            if not hmac.compare_digest(index[TOKEN_OFFSET:TOKEN_OFFSET + TOKEN_SIZE], token):
                index.close()
                raise ValueError("the slot index is not this session's")
            memory_fd = _open_same(info["memory"])
            opened.append(memory_fd)
            spill = info.get("spill")
            spill_fd = _open_same(spill) if spill else None
        except (OSError, ValueError, KeyError, TypeError) as e:
            for fd in opened:
                os.close(fd)
            return None, getattr(e, "strerror", None) or str(e)
        os.close(index_fd)
        for blocking in (memory_fd, spill_fd):
            if blocking is not None:
                os.set_blocking(blocking, True)
        return cls(memory_fd, spill_fd, index, info), ""

    def _word(self, slot: int) -> bytes:
        """Slot SLOT's word of the index, as loaded now (bytes, compared whole)."""
        at = SLOT_INDEX_HEADER + SLOT_WORD.size * slot
        return self._index[at:at + SLOT_WORD.size]

    def read(self, entry: tuple[int, int], view: memoryview, start: int) -> bool:
        """Fill VIEW with the saved chunk's bytes from START on, out of the slot ENTRY (its slot
        entry, loaded after its SAVED state) names; False, VIEW's content undefined, when the
        slot is not readable here or was taken again (read the chunk through the view then)."""
        slot_plus_one, sequence = entry
        slot = slot_plus_one - 1
        if not 0 <= slot < self._indexed or not sequence:
            return False
        expected = SLOT_WORD.pack(sequence)
        if slot < self._memory_slots:
            fd, at = self._memory_fd, slot * self._chunk + start
        elif self._spill_fd is not None:
            fd, at = self._spill_fd, (slot - self._memory_slots) * self._chunk + start
        else:
            return False
        if self._word(slot) != expected:  # b: taken again already
            return False
        if not self._read_slot(fd, view, at):  # c
            return False
        if self._word(slot) != expected:  # d: the check that makes it exact (module docstring)
            return False
        if slot < self._memory_slots:
            self.memory_bytes += len(view)
        else:
            self.spill_bytes += len(view)
        return True

    @staticmethod
    def _read_slot(fd: int, view: memoryview, at: int) -> bool:
        """Step c: the slot's bytes; False if the file ends first (a spill file cut back)."""
        try:
            read_fully(fd, view, at, "a side store slot")
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._index.close()
        for fd in (self._memory_fd, self._spill_fd):
            if fd is not None:
                os.close(fd)
