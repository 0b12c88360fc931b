"""The resource manager's read policy: which view reads next, and how much may be held.

Every export's reads are issued in its own stream order. Among the exports that
can take another read (fewer than MAX_DEPTH in flight), the one whose next piece
comes first in the stream goes first: the bytes needed soonest are asked for
soonest, and an export whose dataset comes later (on another subsystem) fills
the time the current one leaves idle.

Memory: `held` counts the bytes of reads issued and not yet taken by the copier
(in flight or completed and waiting for their turn). A read that is not the one
the stream waits for (the head) may be issued only while held stays within the
budget minus one request, so the head's read always fits: the copier can never
wait for a read that memory keeps from being issued. Reads fetched ahead of
order by this policy live only in memory; the spill file is for chunks that
side-store pressure forces out early (copier.py), never for speculation.
"""

MAX_DEPTH = 16


def key(piece) -> tuple[int, int]:
    """Stream order: dataset, then logical offset."""
    return piece.dataset, piece.logical


class Scheduler:
    def __init__(self, readers: list, budget: int, request_bytes: int):
        assert budget >= 2 * request_bytes, "the copier checks --host-memory first"
        self.readers = readers  # the ViewReaders, set at start, never changed
        self.budget = budget
        self.request_bytes = request_bytes
        self.held = 0
        self.peak_held = 0

    def fill(self, head, taken) -> None:
        """Issue reads until no reader may take one. HEAD: the piece the stream waits for
        (None at the end); TAKEN(piece): true for pieces that need no read any more."""
        while True:
            best, best_key = None, None
            for r in self.readers:
                if r.in_flight >= MAX_DEPTH:
                    continue
                r.skip(taken)
                p = r.next_piece
                if p is not None and (best_key is None or key(p) < best_key):
                    best, best_key = r, key(p)
            if best is None:
                return
            chosen = best.plan(self.request_bytes, taken)
            size = sum(p.length for p in chosen)
            is_head = head is not None and key(chosen[0]) == key(head)
            if not is_head and self.held + size > self.budget - self.request_bytes:
                return
            best.issue(chosen, ahead=head is not None and chosen[0].dataset > head.dataset)
            self.held += size
            self.peak_held = max(self.peak_held, self.held)

    def taken(self, size: int) -> None:
        """The copier took every piece of a read of SIZE bytes: its buffer is free."""
        self.held -= size
        assert self.held >= 0, "a read is freed once"
