"""Change tracking: for one export, which chunks were written, trimmed or zeroed since each
of its last few backups.

THE WRITE PATH. Subsystem.mutate calls ChangeMap.mark inside the export's write gate,
before the mutation is applied (a crash in between over-counts, never under-counts).
Marking a chunk that is already marked reads one byte and returns: no lock, no allocation,
no I/O. A first mark sets one byte (a run of bytes for a mutation spanning chunks).

GENERATIONS. Every session that closes normally makes its time zero a generation of each
of its exports; the map keeps the last KEEP_GENERATIONS, so that an ad-hoc backup, or a
backup that closed on one subsystem and failed on another, does not break a chain whose
base is one generation older:

    generations  g1 .. gn      oldest first, each (id, time zero)
    deltas       d2 .. dn      d_i: the chunks changed between g(i-1)'s time zero and g(i)'s
    bits                       the chunks changed since gn's time zero (since tracking
                               started, before any generation)

    changes since g(i) = d(i+1) | ... | dn | bits

Each delta and `bits` say whether they are complete (`known`); changes since g(i) are
known only if every span they join is. A map loaded after an unclean stop, or for a device
written while it was not served, starts with `bits` unknown (changestate.py decides).

SESSIONS (as QEMU's dirty bitmaps in a backup job):

    freeze  (every gate of the session closed: no mutation in flight)
            frozen += bits, bits := a new empty map
    commit  (the session closed normally) the frozen maps together become the newest
            delta and the session's generation the newest generation; the oldest beyond
            KEEP go
    merge   (the session failed, however) bits |= frozen: nothing is lost

A session that counts from a base freezes the map twice: once at open, with the gates open,
to do the heavy work (the union with the deltas, the concordance narrowed to it) before
anyone waits; then at time zero, when only what changed in between is left to add.

LOCKS. `bits` is read and set by mutations without a lock. Only freeze replaces it, and
only while the export's gate is closed, so no mutation is between its gate and its mark;
a mutation the gate admitted after an expired freeze deadline may still race the swap,
which is why mark checks, after setting, that `bits` is still the map it set, and sets the
new one too (the session of an expired freeze is aborted, and the merge puts the old map
back). A merge only ever sets bytes, never clears them, so it needs no lock against marks.
`_lock` guards everything else; it is taken under Session._lock (freeze) and under no
other, and nothing is taken under it.
"""

import threading
from dataclasses import dataclass

from common.concordance import runs

KEEP_GENERATIONS = 4
ONES = b"\x01" * 4096  # a mutation spanning more chunks than this sets them in slices


@dataclass(frozen=True)
class Generation:
    """A backup the map counts from: its session's generation id and time zero (epoch s)."""

    id: str
    time_zero: float


@dataclass
class Span:
    """The chunks changed over a span of time (one byte per chunk, 1 = changed), and whether
    that is all of them."""

    bits: bytes | bytearray
    known: bool = True
    reason: str = ""  # why not known


@dataclass(frozen=True)
class Since:
    """The answer to "what changed since generation G": `base` is the union of the deltas
    after G (None when there are none), to be joined with the map frozen at time zero."""

    known: bool
    reason: str = ""
    base: int | None = None  # the deltas' union as an integer, byte c = chunk c (little-endian)
    time_zero: float | None = None  # G's time zero (epoch s), as the map recorded it


def as_int(bits: bytes | bytearray) -> int:
    return int.from_bytes(bits, "little")


class ChangeMap:
    """The changes of one export, at concordance-chunk granularity."""

    def __init__(self, name: str, size: int, chunk_size: int, generations: list[Generation] | None = None,
                 deltas: list[Span] | None = None, current: Span | None = None) -> None:
        assert chunk_size > 0 and chunk_size & (chunk_size - 1) == 0, "chunk sizes are powers of two"
        # set at start, never changed
        self.name = name
        self.size = size
        self.chunk_size = chunk_size
        self.count = -(-size // chunk_size)
        self._shift = chunk_size.bit_length() - 1
        self._lock = threading.Lock()
        current = current or Span(bytearray(self.count))
        assert len(current.bits) == self.count, "a loaded map has the device's chunk count"
        # set by mark without a lock; replaced only by freeze, under _lock, the gate closed
        self.bits = bytearray(current.bits)
        # guarded by _lock
        self._generations = list(generations or [])
        self._deltas = list(deltas or [])
        assert len(self._deltas) == max(len(self._generations) - 1, 0), "one delta between each two generations"
        self._known, self._reason = current.known, current.reason  # of `bits`
        self._frozen: list[Span] = []  # the maps frozen by the live session, oldest first

    # --- the write path ------------------------------------------------------

    def mark(self, offset: int, length: int) -> None:
        """The bytes [offset, offset+length) are about to change. Called inside the gate."""
        if length <= 0:
            return
        first, last = offset >> self._shift, (offset + length - 1) >> self._shift
        bits = self.bits
        if first == last:
            if bits[first]:
                return  # the common case: the chunk changed before
            bits[first] = 1
        else:
            if bits.find(0, first, last + 1) < 0:
                return
            self._set(bits, first, last + 1)
        if self.bits is not bits:  # a freeze swapped the map meanwhile (see LOCKS)
            self._set(self.bits, first, last + 1)

    @staticmethod
    def _set(bits: bytearray, start: int, stop: int) -> None:
        while start < stop:
            n = min(stop - start, len(ONES))
            bits[start:start + n] = ONES[:n]
            start += n

    # --- sessions --------------------------------------------------------------

    def since(self, generation: str) -> Since:
        """Whether the changes since GENERATION are known, and the deltas after it."""
        with self._lock:
            ids = [g.id for g in self._generations]
            if generation not in ids:
                return Since(False, self._missing(generation))
            i = ids.index(generation)
            spans = self._deltas[i:] + [Span(b"", self._known, self._reason)]
            unknown = next((s for s in spans if not s.known), None)
            if unknown is not None:
                return Since(False, unknown.reason)
            base = None
            for d in self._deltas[i:]:
                base = as_int(d.bits) | (base or 0)
            return Since(True, base=base, time_zero=self._generations[i].time_zero)

    def _missing(self, generation: str) -> str:
        if not self._generations:
            return f"export {self.name} has no completed backup since its change tracking started"
        newest = self._generations[-1].id
        return (f"export {self.name} does not count changes from backup generation {generation} "
                f"(it keeps the last {len(self._generations)}, newest {newest})")

    def freeze(self) -> bytearray:
        """The map so far joins the live session's frozen ones, a new empty map starts. At time
        zero the export's gate is closed; at open (a first freeze, see SESSIONS) it is not, and a
        mutation racing the swap marks both maps. Returns the bits frozen now: marks that raced
        the swap may still land in them, so read them only to count more, never fewer."""
        with self._lock:
            frozen = self.bits
            self._frozen.append(Span(frozen, self._known, self._reason))
            self.bits = bytearray(self.count)
            self._known, self._reason = True, ""
            return frozen

    def commit(self, generation: Generation) -> None:
        """The session that froze the map closed normally: GENERATION is its newest backup."""
        with self._lock:
            spans, self._frozen = self._frozen, []
            assert spans, "commit follows freeze"
            frozen = spans[0]
            if len(spans) > 1:
                union = bytearray(spans[0].bits)
                for later in spans[1:]:
                    for first, count in runs(later.bits):
                        self._set(union, first, first + count)
                frozen = Span(union, all(s.known for s in spans), next((s.reason for s in spans if not s.known), ""))
            if self._generations:
                self._deltas.append(frozen)
            self._generations.append(generation)
            while len(self._generations) > KEEP_GENERATIONS:
                self._generations.pop(0)
                self._deltas.pop(0)

    def merge_back(self) -> None:
        """The session that froze the map failed: its changes count again (only sets bytes,
        so marks may go on meanwhile)."""
        with self._lock:
            spans, self._frozen = self._frozen, []
            bits = self.bits
            for frozen in spans:
                for first, count in runs(frozen.bits):
                    self._set(bits, first, first + count)
                if not frozen.known and self._known:
                    self._known, self._reason = False, frozen.reason

    def invalidate(self, reason: str) -> None:
        """Changes may have been missed: nothing counted so far can be trusted."""
        with self._lock:
            if self._known:
                self._known, self._reason = False, reason

    # --- reading it whole --------------------------------------------------------

    def state(self) -> tuple[list[Generation], list[Span], Span]:
        """Generations, deltas and the current span, as copies (for saving; no session frozen)."""
        with self._lock:
            assert not self._frozen, "a map is saved only once its session ended"
            deltas = [Span(bytes(d.bits), d.known, d.reason) for d in self._deltas]
            return list(self._generations), deltas, Span(bytes(self.bits), self._known, self._reason)

    def status(self) -> dict[str, object]:
        """What `status` shows of the map."""
        with self._lock:
            gens = list(self._generations)
            known, reason = self._known, self._reason
        return {
            "generation": gens[-1].id if gens else None,
            "generations": [{"id": g.id, "time_zero": g.time_zero} for g in gens],
            "known": known,
            "reason": reason or None,
            "changed_chunks": self.bits.count(1),
        }
