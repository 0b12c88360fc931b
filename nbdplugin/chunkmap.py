"""The concordance of one export: for every chunk, where its time-zero content is.

The states and the shared byte layout are common/concordance.py's (PENDING, then SAVED
or DONE, never back). Making a map reads no data (one zero-filled memfd mapping), and the
session makes its maps at open, so the freeze allocates nothing. Chunks outside the
tracked ranges (when the session names some) start DONE: nothing is owed for them, so a
mutation there costs one state lookup and no copy-before-write.

Shared with the controller: the states live in a memfd mapping that a controller on
the same host maps read-only (the session's `open` reply names it), so it can read
PENDING chunks straight from the device and check afterwards that they were still
PENDING (controller/backup/local_read.py says why that is exact), and read SAVED chunks
out of the side store's slots by the slot entry published here before the chunk became
SAVED (controller/backup/saved_read.py). The DEAD flag is set
before the session stops saving chunks (abort, close): from then on PENDING no longer
means "in place".

Locks: chunk c is guarded by stripe lock c % STRIPES. A mutation holds at most
one stripe at a time; a reader that needs several takes them in ascending
stripe order. No path ever holds a stripe while waiting for another in
descending order, so stripes cannot deadlock, and there is no global lock on
the write path.
"""

import mmap
import os
import secrets
import threading
from collections.abc import Iterable

from common.concordance import (
    DEAD_OFFSET,
    DONE,
    HEADER,
    PENDING,
    SAVED,
    SLOT_ENTRY,
    TOKEN_OFFSET,
    TOKEN_SIZE,
    WRITES_OFFSET,
    chunk_count,
    mapping_size,
    slots_offset,
)

__all__ = ["DONE", "PENDING", "SAVED", "STRIPES", "ChunkMap"]

STRIPES = 1024


class ChunkMap:
    """Chunk states of one export. `states` is written only under the chunk's stripe lock;
    it may be read without it when the caller only acts on non-PENDING states, because
    states never move back to PENDING."""

    def __init__(self, size: int, chunk_size: int, tracked: Iterable[tuple[int, int]] | None = None,
                 token: bytes | None = None) -> None:
        """TRACKED: (offset, length) byte ranges whose chunks start PENDING, the rest DONE;
        None tracks every chunk. Ranges are validated by the caller (within SIZE, length > 0).
        TOKEN: the session's locality token, written into the shared header (default: a fresh one)."""
        token = secrets.token_bytes(TOKEN_SIZE) if token is None else token
        assert len(token) == TOKEN_SIZE, "common/concordance.py fixes the token's size"
        assert chunk_size > 0 and chunk_size % 512 == 0, "chunk size is validated at start-up"
        # set at formation, never changed
        self.size = size
        self.chunk_size = chunk_size
        self.count = chunk_count(size, chunk_size)
        self._stripes = [threading.Lock() for _ in range(min(STRIPES, max(self.count, 1)))]
        self._fd = os.memfd_create("tzero-concordance", os.MFD_CLOEXEC)  # closed once, by close() (-1 then)
        os.ftruncate(self._fd, mapping_size(self.count))
        # zero-filled: alive, all PENDING. Its DEAD byte is set once, by mark_dead, under Session._lock.
        self._shared = mmap.mmap(self._fd, mapping_size(self.count))
        self._shared[TOKEN_OFFSET:TOKEN_OFFSET + TOKEN_SIZE] = token  # before anyone can know the path
        self.token = token  # set at formation, never changed
        self._entries = slots_offset(self.count)  # set at formation: where the slot entries start
        # guarded by the stripe locks: chunk c's state is written only under lock(c)
        self.states = memoryview(self._shared)[HEADER:HEADER + self.count]
        if tracked is not None:
            self.states[:] = bytes([DONE]) * self.count
            for offset, length in tracked:
                span = self.span(offset, length)
                self.states[span.start:span.stop] = bytes(len(span))
        self.untracked = self.count_of(DONE)  # set at formation (and by narrow), never changed

    def narrow(self, changed: int, keep: int = 0) -> bytes:
        """At formation, before the session is active (nothing else touches the states): keep
        PENDING only the tracked chunks that CHANGED or that KEEP names, the rest become DONE and
        cost no copy-before-write. CHANGED and KEEP hold one byte per chunk, 0 or 1, as
        little-endian integers (tracking.as_int): whole-map integer operations, no loop per chunk.
        Returns the tracked chunks that changed, one byte (0 or 1) per chunk."""
        n = self.count
        assert PENDING == 0 and DONE == 2, "the arithmetic below relies on these values"
        two = int.from_bytes(b"\x02" * n, "little")
        pending = int.from_bytes(self.states, "little") ^ two  # 2 where PENDING, else 0
        tracked_changed = pending & (changed << 1)
        self.states[:] = (two ^ (tracked_changed | (pending & (keep << 1)))).to_bytes(n, "little")
        self.untracked = self.count_of(DONE)
        return (tracked_changed >> 1).to_bytes(n, "little")

    def lock(self, chunk: int) -> threading.Lock:
        return self._stripes[chunk % len(self._stripes)]

    def locks_for(self, first: int, last: int) -> list[threading.Lock]:
        """The distinct stripe locks of chunks FIRST..LAST, in the order they must be taken."""
        n = len(self._stripes)
        if last - first + 1 >= n:
            return list(self._stripes)
        return [self._stripes[i] for i in sorted({c % n for c in range(first, last + 1)})]

    def span(self, offset: int, length: int) -> range:
        """Chunks touched by the byte range [offset, offset+length)."""
        if length <= 0:
            return range(0)
        return range(offset // self.chunk_size, (offset + length - 1) // self.chunk_size + 1)

    def extent(self, chunk: int) -> tuple[int, int]:
        """(offset, length) of CHUNK on the device; the last chunk may be short."""
        start = chunk * self.chunk_size
        return start, min(self.chunk_size, self.size - start)

    def count_of(self, state: int, start: int = 0, stop: int | None = None) -> int:
        """How many of chunks START..STOP-1 are in STATE."""
        return self.states[start:stop].tobytes().count(state)

    def shared(self) -> dict[str, str | int]:
        """Where another process on this host maps this concordance (read-only)."""
        return {"path": f"/proc/{os.getpid()}/fd/{self._fd}", "header": HEADER, "chunks": self.count,
                "chunk_size": self.chunk_size, "token": self.token.hex(), "slots": self._entries}

    def publish_slot(self, chunk: int, entry: tuple[int, int]) -> None:
        """Under CHUNK's lock, after its save and before it becomes SAVED: where its copy is
        (SideStore.save's slot entry), for a controller reading saved chunks on this host."""
        SLOT_ENTRY.pack_into(self._shared, self._entries + SLOT_ENTRY.size * chunk, *entry)

    def writes_word(self) -> memoryview:
        """The header's count of writes admitted, as one native unsigned 64-bit item: the export's
        write gate adds to it while this session is open (gate.py), a local controller reads it."""
        return memoryview(self._shared)[WRITES_OFFSET:WRITES_OFFSET + 8].cast("Q")

    def mark_dead(self) -> None:
        """Say, before chunks stop being saved, that PENDING no longer means "in place"."""
        self._shared[DEAD_OFFSET] = 1

    def close(self) -> None:
        """Drop the descriptor others map it by; the mapping lives on for late readers."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def counts(self) -> dict[str, int]:
        saved = self.count_of(SAVED)
        done = self.count_of(DONE)
        return {"pending": self.count - saved - done, "saved": saved, "done": done - self.untracked,
                "untracked": self.untracked}
