"""Side-store pressure: a subsystem's saved chunks fetched ahead of their turn in the stream.

The policy. A subsystem says `pressure` in every pulse (heartbeat or release reply) while
its side store is past half its memory or has spilled (docs/control-protocol.md). Between
two pieces of the stream the copier then asks it which chunks it holds saved (at most
OPPORTUNISTIC_LIMIT_BYTES of them per export, those in memory first), reads at once those
of their pieces no read was issued for yet, parks them in the reorder buffer (memory, then
its spill file) until their turn, and releases the chunks. It clears the member's flag when
it acts on it and the next pulse sets it again while the pressure lasts, so every round is
bounded work between two pieces of the stream.

Why. A saved chunk stays in the side store until the copier releases it, and the copier,
in stream order, may reach it last while writers keep saving more; a full side store
aborts the backup (the failure policy is break-backup: the application's write goes
through). Fetched early, the chunk waits in the controller instead, whose memory for it is
bounded (beyond that the reorder buffer spills to its file), and the stream does not
change: a parked piece goes out in its turn like any other.

The reads. Adjacent saved chunks are read in runs of up to one request, issued aside (out
of the export's queue, which stays in stream order) over every connection of the view, or
on the subsystem's host straight out of the side store's slots (view_reader.py), into
pool buffers the stream's head cannot need (the scheduler keeps one for every idle export
and one more, scheduler.py); with none to spare and none of ours in flight, a run is read
synchronously through the view.

PressureRelief is mixed into the Copier: it runs in the copy loop's thread, on the
copier's state, and what it uses of the copier is declared at its top.
"""

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from controller.backup.group import ConsistencyGroup
from controller.backup.layout import Piece
from controller.backup.ledger import Ledger
from controller.backup.plan import Plan
from controller.backup.reorder import ReorderBuffer
from controller.backup.scheduler import Scheduler, key
from controller.backup.view_reader import BufferPool, Read, ViewReader

if TYPE_CHECKING:
    from controller.backup.copier import CopierStats  # copier.py imports this module

OPPORTUNISTIC_LIMIT_BYTES = 32 << 20
_ZEROS = memoryview(bytes(16 << 20))  # the largest concordance chunk


class PressureRelief:
    """Fetching saved chunks early, for the Copier it is mixed into."""

    # What it uses of the copier's state (copier.py says who may touch what).
    group: ConsistencyGroup
    plan: Plan
    chunk: int
    request_bytes: int
    pool: BufferPool
    buffer: ReorderBuffer
    ledger: Ledger
    readers: dict[str, ViewReader]
    scheduler: Scheduler
    stats: "CopierStats"
    # The copy loop's steps it takes.
    _taken: Callable[[Piece], bool]
    _pump: Callable[[], None]
    _settled: Callable[[str, list[int]], None]
    _release_all: Callable[[], None]
    _note_peak: Callable[[], None]

    def _relieve_pressure(self) -> None:
        """Fetch the saved chunks of every subsystem under pressure, ahead of order, and release them."""
        limit = max(1, OPPORTUNISTIC_LIMIT_BYTES // self.chunk)
        for member in {id(m): m for m in self.plan.owner.values()}.values():
            if not member.pressure:
                continue
            member.pressure = False  # until the next heartbeat or release reply says otherwise
            for export, reader in self.readers.items():
                if self.plan.owner[export] is member:
                    self._fetch_saved(reader, self.group.saved(member, export, limit))

    def _fetch_saved(self, reader: ViewReader, chunks: list[int]) -> None:
        """Read the not yet issued pieces of saved CHUNKS (sorted) into the reorder buffer, in runs
        of adjacent chunks of up to one request, and release what they free."""
        reader.skip(self._taken)
        first = reader.next_piece
        if first is None:
            return
        runs: list[list[Piece]] = []
        run: list[Piece] = []
        last = -1  # the chunk the run ends with, once it has one
        for c in chunks:
            wanted = [p for p in self.plan.pieces_at(reader.export, c * self.chunk, self.chunk)
                      if key(p) >= key(first) and key(p) not in self.buffer]
            if not wanted:
                continue
            if run and (c != last + 1 or (c - run[0].physical // self.chunk + 1) * self.chunk > self.request_bytes):
                runs.append(run)
                run = []
            run += wanted
            last = c
        if run:
            runs.append(run)
        self._fetch_runs(reader, runs)
        self._release_all()

    def _fetch_runs(self, reader: ViewReader, runs: list[list[Piece]]) -> None:
        """Fetch RUNS (lists of pieces, each within one request) concurrently, over every connection
        of READER, into pool buffers the scheduler can spare (it keeps one for every idle export and
        one more, scheduler.py); with none to spare and none of ours in flight, synchronously."""
        todo = deque(runs)
        while todo or reader.aside:
            while todo and self.pool.free - 1 > self.scheduler.idle_exports():
                wanted = todo.popleft()
                lo = min(p.physical for p in wanted)
                reader.issue_aside(wanted, lo, max(p.physical + p.length for p in wanted) - lo, self.pool)
                self._note_peak()
            if reader.aside:
                self._pump()
            elif todo:
                self._fetch_run(reader, todo.popleft())

    def _park(self, reader: ViewReader, read: Read) -> None:
        """READ, fetched aside, completed: its pieces go to the reorder buffer, its buffer back."""
        for p in read.pieces:
            lo = p.physical - read.physical
            zero = read.is_zero(lo, p.length)
            self.buffer.put(key(p), None if zero else read.bytes_at(lo, p.length))
            self.stats["chunks_opportunistic"] += 1
            self._settled(reader.export, self.ledger.settle(reader.export, p.physical, p.length))
        self.stats["bytes_read"] += read.length
        self.scheduler.taken(read)
        self._note_peak()

    def _fetch_run(self, reader: ViewReader, wanted: list[Piece]) -> None:
        lo = min(p.physical for p in wanted)
        data = memoryview(reader.pread(max(p.physical + p.length for p in wanted) - lo, lo))
        self.stats["bytes_read"] += len(data)
        for p in wanted:
            part = data[p.physical - lo:p.physical - lo + p.length]
            self.buffer.put(key(p), None if part == _ZEROS[:p.length] else part)
            self.stats["chunks_opportunistic"] += 1
            self._settled(reader.export, self.ledger.settle(reader.export, p.physical, p.length))
        self._note_peak()
