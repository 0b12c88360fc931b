"""The resource manager's read policy: which view reads next, and how much may be held.

Every export's reads are issued in its own stream order. Among the exports that
can take another read (not `saturated`: fewer than MAX_DEPTH in flight over NBD, fewer
than LOCAL_AHEAD waiting when read locally), the one whose next piece
comes first in the stream goes first: the bytes needed soonest are asked for
soonest, and an export whose dataset comes later (on another subsystem) fills
the time the current one leaves idle.

Memory: every read holds one buffer of the pool (view_reader.BufferPool) from issue
until the copier has taken all its pieces (in flight, or completed and waiting
for its turn). The head (the piece the stream waits for) may lie on any export
whose reads are all taken; in a stripe the head visits every leg in turn while
the other legs' reads are still half taken. So one buffer is kept free for
every such idle export: a read that is not the head's may be issued only if,
after it, as many buffers stay free as there are other idle exports with
pieces left. Then the head's read always finds a buffer (its export is idle
when its piece is not issued yet), and the copier can never wait for a read
that memory keeps from being issued. The pool has at least one buffer per
export and one more (copier.py sizes it). Reads fetched ahead of order by this policy live only in memory; the
spill file is for chunks that side-store pressure forces out early (copier.py),
never for speculation.
"""

from collections.abc import Callable

from controller.backup.layout import Piece
from controller.backup.view_reader import BufferPool, Read, Taken, ViewReader


def key(piece: Piece) -> tuple[int, int]:
    """Stream order: dataset, then logical offset."""
    return piece.dataset, piece.logical


class Scheduler:
    def __init__(self, readers: list[ViewReader], pool: BufferPool,
                 admit: Callable[[int], bool] = lambda length: True):
        """ADMIT(length): whether --rate lets a read of LENGTH bytes go now (rate.py); it counts it if so."""
        # Set at start, never changed.
        self.admit = admit
        self._count = pool.free  # the pool is full when the copy starts
        self.readers = readers
        self.pool = pool  # its size is the request size, its count the budget
        # Statistics (copy loop only, like everything here).
        self.peak_held = 0  # most buffers in use at once, in bytes

    @property
    def held(self) -> int:
        """Bytes of read buffers in use."""
        return (self._count - self.pool.free) * self.pool.size

    def fill(self, head: Piece | None, taken: Taken) -> None:
        """Issue reads until no reader may take one. HEAD: the piece the stream waits for
        (None at the end); TAKEN(piece): true for pieces that need no read any more."""
        while self.pool.free:
            best, best_key = None, None
            for r in self.readers:
                if r.saturated:
                    continue
                r.skip(taken)
                p = r.next_piece
                if p is not None and (best_key is None or key(p) < best_key):
                    best, best_key = r, key(p)
            if best is None:
                return
            chosen = best.plan(self.pool.size, taken)
            is_head = head is not None and key(chosen[0]) == key(head)
            if not is_head and self.pool.free - 1 < self._idle_besides(best):
                return
            if not self.admit(sum(p.length for p in chosen)):
                return  # the copier waits for the rate when the head's read is the one held back
            best.issue(chosen, head is not None and chosen[0].dataset > head.dataset, self.pool)
            self.peak_held = max(self.peak_held, self.held)

    def idle_exports(self) -> int:
        """Exports with pieces left and no read outstanding: each may need a buffer for its head."""
        return sum(1 for r in self.readers if not r.queue and r.next_piece is not None)

    def _idle_besides(self, reader: ViewReader) -> int:
        """Exports other than READER with pieces left and no read outstanding: each may need a buffer."""
        return sum(1 for r in self.readers if r is not reader and not r.queue and r.next_piece is not None)

    def taken(self, read: Read) -> None:
        """The copier took every piece of READ: its buffer goes back to the pool."""
        assert read.data is not None, "a read's buffer goes back to the pool once"
        self.pool.give(read.data)
        read.data = read.buf = None
