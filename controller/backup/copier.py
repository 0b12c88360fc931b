"""The copier: walks the stream in its specified order and writes every piece when its turn comes.

Order: datasets in the order given, each in ascending logical order (layout.py
makes the pieces in that order). The scheduler keeps reads going on every
export's view at once (several in flight each, all subsystems in parallel);
the copier takes pieces from the front of the stream only: from the read that
holds them, or from the reorder buffer if side-store pressure had them fetched
early.

Opportunistic copy: when a subsystem reports side-store pressure, its saved
chunks are fetched at once, released, and their pieces parked in the reorder
buffer (memory, then its spill file) until their turn (pressure.py).

Release: a concordance chunk is released once the ledger says every byte the
backup needs from it is in controller memory (a completed read, the reorder
buffer) or already in the stream: from then on the side store need not keep it.
Releases are batched to keep control round trips few, in bigger batches while
no subsystem holds a saved chunk (then nobody is writing to what was read).

Memory: the read buffers (a pool of half of host_memory) plus the reorder
buffer's memory (the other half) never exceed host_memory; the record being
gathered (at most RECORD_BYTES), the copies queued for the stream's writer
thread (at most sink.SINK_BYTES: a read buffer queued there is the pool's and
is reused only once written), the ledger (4 bytes per chunk) and the stream
index (32 bytes per record) come on top, as fixed overhead.
"""

import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import TypedDict

import nbd

from backupformat import StreamWriter
from common.fileio import Buffer
from common.protocol import ranges_of
from common.units import human_size
from controller.backup.group import ConsistencyGroup, Member
from controller.backup.layout import Piece
from controller.backup.ledger import Ledger
from controller.backup.local_read import LocalRead
from controller.backup.plan import Plan, recheck_partitions
from controller.backup.pressure import PressureRelief
from controller.backup.rate import MAX, Pacer, Rate, pacer_for
from controller.backup.records import RecordAssembler
from controller.backup.reorder import ReorderBuffer
from controller.backup.scheduler import Scheduler, key
from controller.backup.view_reader import CONNECTIONS_PER_VIEW, BufferPool, Fence, Read, ViewReader, wait
from controller.errors import SessionAborted, UsageError
from controller.nbd.connect import connect, redacted

REQUEST_BYTES = 1 << 20
RECORD_BYTES = 1 << 20
RELEASE_BATCH_BYTES = 16 << 20
# While no subsystem holds a saved chunk nobody is writing to what was read, and a release
# only spares later writes a needless save: release less often, since each release is a
# control round trip the copy loop waits for.
QUIET_RELEASE_BATCH_BYTES = 128 << 20
PUBLISH_INTERVAL_S = 0.1  # how stale the counters the heartbeat sends may be


class CopierStats(TypedDict):
    """The copier's counters, in the backup summary and sent with every heartbeat (docs/datasets.md)."""

    chunks_in_order: int
    chunks_ahead: int
    chunks_opportunistic: int
    chunks_zero: int
    bytes_read: int
    spilled_bytes: int
    peak_host_buffer_bytes: int
    read_path: dict[str, str]  # export -> "local", or "nbd (why not local)"
    local_refetched_bytes: int  # read locally, then again through the view (their chunk was not PENDING)
    local_saved_bytes: int  # saved chunks read on this host out of the side store's slots
    local_saved_spill_bytes: int  # ... of which out of its spill file


def pool_shape(read_budget: int, chunk_size: int, exports: int) -> tuple[int, int]:
    """(request size, buffer count) of the read pool: READ_BUDGET bytes, at least one buffer per
    export and one more (scheduler.py says why). With many exports and little memory, smaller
    requests (whole chunks) rather than fewer buffers; UsageError if not even that fits."""
    slots = exports + 1
    request = max(REQUEST_BYTES, chunk_size)
    if read_budget // request < slots:
        request = read_budget // slots // chunk_size * chunk_size
    if request < chunk_size:
        need = -(-2 * slots * chunk_size >> 20)
        raise UsageError(f"--host-memory must be at least {need} MiB for {exports} exports "
                         f"with {chunk_size >> 10} KiB chunks")
    return request, read_budget // request


class Copier(PressureRelief):
    """One backup's copy: run() once, in the copy loop's thread (the main thread). The copy
    loop alone touches its state, but for `published` (read by the heartbeat thread)."""

    def __init__(self, group: ConsistencyGroup, plan: Plan, writer: StreamWriter, chunk_size: int,
                 host_memory: int, spill_dir: str | None = None,
                 progress: Callable[[int, str], None] | None = None, local: bool = True, rate: Rate = MAX,
                 fence: Fence | None = None):
        # Set at start, never changed.
        self.group = group
        self.plan = plan
        self.writer = writer
        self.chunk = chunk_size
        self.local = local  # read views straight from the device where possible (local_read.py)
        self.progress = progress or (lambda done, dataset: None)  # bytes of the stream done, the dataset
        self.rate = rate  # --rate: how fast the views are read in stream order (rate.py)
        # Copy loop only. Of these, request_bytes never changes, and readers and scheduler are
        # set once, by run(), when the views are open.
        self.ledger = Ledger(chunk_size, plan.claims())
        read_budget = host_memory // 2
        self.request_bytes, count = pool_shape(read_budget, chunk_size, len(self.ledger.exports))
        # FENCE: WRITER writes through a sink.WriteBehind, which may still be writing from a
        # buffer the copy loop gave back: the pool reuses it only once it is written.
        self.pool = BufferPool(self.request_bytes, count, fence)
        self.buffer = ReorderBuffer(host_memory - read_budget, spill_dir)
        self.records = RecordAssembler(writer, RECORD_BYTES, zero_records=plan.changed is not None)
        self.readers: dict[str, ViewReader] = {}
        self.scheduler: Scheduler
        self.pacer = Pacer(MAX)  # set by run(), once the views (and their write counts) are open
        self._head: Piece | None = None  # the piece the stream waits for
        self._unreleased: dict[str, list[int]] = {}
        self._unreleased_count = 0
        self._done_bytes = 0
        # Statistics: the copy loop's own, written by it alone.
        self.stats: CopierStats = {
            "chunks_in_order": 0, "chunks_ahead": 0, "chunks_opportunistic": 0, "chunks_zero": 0,
            "bytes_read": 0, "spilled_bytes": 0, "peak_host_buffer_bytes": 0, "read_path": {},
            "local_refetched_bytes": 0, "local_saved_bytes": 0, "local_saved_spill_bytes": 0}
        # Copy loop writes, heartbeat thread reads (atomic attribute): a copy of `stats`, replaced
        # whole (a reference swap) now and then, never changed once published.
        self.published: CopierStats = self._snapshot()
        self._published_at = 0.0  # copy loop only
        self._slow_seen = (0, 0)  # copy loop only: chunks fetched under pressure, bytes spilled, at slow_reason()

    def run(self) -> CopierStats:
        """Copy everything; returns the counters. SessionAborted if a view read fails."""
        copied = False
        try:
            for export, m in self.plan.owner.items():
                if export in self.ledger.exports:
                    self.readers[export] = self._open_view(export, m)
            self.pacer = pacer_for(self.rate, self.readers, self.plan.owner)
            self.scheduler = Scheduler(list(self.readers.values()), self.pool, self.pacer.admit)
            recheck_partitions(self.plan.checks, self.readers)
            for c in self.plan.checks:
                for off, n in c.table:
                    self._settled(c.export, self.ledger.settle(c.export, off, n))
            self._copy()
            self.records.flush()
            self._release_all()
            copied = True
        except nbd.Error as e:
            reason = self.group.explain()  # a subsystem-side abort explains a failed read best
            reason = reason or f"reading a time-zero view failed: {redacted(str(e))}"
            raise SessionAborted(f"backup abandoned: {reason}") from None
        finally:
            for r in self.readers.values():
                if r.local is not None:
                    self.stats["local_refetched_bytes"] += r.local.fixed_bytes
                    if r.local.slots is not None:
                        self.stats["local_saved_bytes"] += r.local.slots.memory_bytes + r.local.slots.spill_bytes
                        self.stats["local_saved_spill_bytes"] += r.local.slots.spill_bytes
                # After a failure a view's server may be unreachable: a polite disconnect would
                # wait for it (until TCP gives up), so its connections are just dropped.
                r.close(polite=copied)
            self.buffer.close()
        self.stats["spilled_bytes"] = self.buffer.spilled_bytes
        self.published = self._snapshot()
        return self.stats

    def _snapshot(self) -> CopierStats:
        return {**self.stats, "read_path": dict(self.stats["read_path"])}

    def _open_view(self, export: str, member: Member) -> ViewReader:
        size = next(e["size"] for e in member.exports if e["name"] == export)
        handles: list[nbd.NBD] = []
        try:
            for _ in range(CONNECTIONS_PER_VIEW):
                h = connect(member.nbd, member.views[export], member.tls_dir, self.group.reply_timeout)
                handles.append(h)
                if h.get_size() != size:
                    raise SessionAborted(f"the time-zero view of {export} is {h.get_size()} bytes, expected {size}")
        except BaseException:
            for h in handles:
                try:
                    h.shutdown()
                except nbd.Error:
                    pass
            raise
        local, why = LocalRead.open(export, member.local.get(export), size) if self.local else (None, "--read-path nbd")
        self.stats["read_path"][export] = f"nbd ({why})" if local is None else \
            f"local (saved chunks through the view: {local.slots_why})" if local.slots is None else "local"
        return ViewReader(export, handles, self.plan.pieces(self.chunk, export), local)

    def _taken(self, p: Piece) -> bool:
        """True for a piece that needs no read: already written (before the head), or fetched early."""
        if self._head is None:
            return True
        k = key(p)
        return k < key(self._head) or k in self.buffer

    # --- the stream, in order -------------------------------------------------

    def _copy(self) -> None:
        stream = self.plan.pieces(self.chunk)
        for head in stream:
            self._head = head
            while True:
                self.group.check()
                if any(m.pressure for m in self.plan.owner.values()):
                    self._relieve_pressure()
                # --rate may hold the head's read back (ready() sleeps a while then): pressure and
                # failures are still seen to at every wake-up (rate.py).
                if key(head) in self.buffer or self.readers[head.export].queue or self.pacer.ready():
                    break
            if key(head) in self.buffer:
                data = self.buffer.take(key(head))
                self._emit(head, data)
                continue
            last, more = self._emit_from_read(head, self.readers[head.export])
            if more:
                skipped = deque(islice(stream, more), maxlen=1)
                assert key(skipped[0]) == key(last), "a run emitted from one read is the stream's next pieces"
        self._head = None

    def _emit_from_read(self, head: Piece, reader: ViewReader) -> tuple[Piece, int]:
        """Emit HEAD and whatever follows it in the stream from the same read; returns the last
        piece emitted and how many were emitted after HEAD (the caller skips that many)."""
        read = self._done_read(head, reader)
        assert key(read.pieces[0]) == key(head), "an export's reads hold its pieces in stream order"
        # The head and the pieces after it in the same read that are also next in the stream
        # (the same dataset, logically adjacent: nothing can come between them) go out now.
        piece, more = head, 0
        run: Piece | None = None  # the first of the non-zero pieces not added to the record yet
        while True:
            read.pieces.popleft()
            if read.is_zero(piece.physical - read.physical, piece.length):
                self._emit_run(read, run, piece.physical)
                run = None
                self._emit(piece, None)
            elif run is None:
                run = piece
            if not read.pieces:
                break
            nxt = read.pieces[0]
            if nxt.dataset != piece.dataset or nxt.logical != piece.logical + piece.length:
                break
            piece = nxt
            more += 1
        self._emit_run(read, run, piece.physical + piece.length)
        self.stats["chunks_ahead" if read.ahead else "chunks_in_order"] += more + 1
        if not read.pieces:
            reader.queue.popleft()
            self.records.release(read)
            self.scheduler.taken(read)
            self.stats["bytes_read"] += read.length
            self._head = piece
            self.scheduler.fill(piece, self._taken)  # its buffer may start the next read at once
            self._note_peak()
        return piece, more

    def _done_read(self, head: Piece, reader: ViewReader) -> Read:
        """READER's first read, which holds HEAD, once it is done: issued and waited for as need be."""
        read = reader.queue[0] if reader.queue else None
        if read is None or not read.done:
            # Reads are issued only here and when a buffer comes back: while the head's read
            # is done and held, nothing has changed that could let fill() issue another.
            self.scheduler.fill(head, self._taken)
            self._note_peak()
            read = reader.queue[0]
            while not read.done:
                self.group.check()  # a partition stalls the read forever; the heartbeat notices it
                self._pump()
                self.scheduler.fill(head, self._taken)
                self._note_peak()
        return read

    def _pump(self) -> None:
        """Wait for some reads to complete and take note of them: their bytes are in memory."""
        for r, completed in wait(list(self.readers.values())):
            if completed.aside:
                self._park(r, completed)
            else:
                # A read covers physically contiguous pieces: settle them as one range.
                self._settled(r.export, self.ledger.settle(r.export, completed.physical, completed.length))

    def _emit_run(self, read: Read, first: Piece | None, end: int) -> None:
        """Add READ's bytes from piece FIRST (None: nothing to add) up to physical offset END as one
        run: the pieces in it are adjacent in the stream and none is all zero."""
        if first is None:
            return
        lo, n = first.physical - read.physical, end - first.physical
        self.records.add(first.dataset, first.logical, read.bytes_at(lo, n), read, lo)
        self._done_bytes += n
        self.progress(self._done_bytes, self.plan.datasets[first.dataset].name)

    def _emit(self, piece: Piece, data: Buffer | None, source: Read | None = None, at: int = 0) -> None:
        """Add PIECE's DATA (None when all zero: left out of a full stream, a zero record in an
        incremental one) to the stream; SOURCE/AT: see RecordAssembler.add."""
        if data is None:
            self.records.add_zero(piece.dataset, piece.logical, piece.length)
            self.stats["chunks_zero"] += 1
        else:
            self.records.add(piece.dataset, piece.logical, data, source, at)
        self._done_bytes += piece.length
        self.progress(self._done_bytes, self.plan.datasets[piece.dataset].name)

    def slow_reason(self) -> str | None:
        """What slowed the copy since the last call, as the progress display says it: side-store
        pressure had saved chunks fetched out of order, or chunks waited in the reorder spill file.
        Copy loop only (the progress display draws from it)."""
        fetched, spilled = self.stats["chunks_opportunistic"], self.buffer.spilled_bytes
        was_fetched, was_spilled = self._slow_seen
        self._slow_seen = (fetched, spilled)
        said = []
        if fetched > was_fetched or any(m.pressure for m in self.group.members):
            said.append("side store under pressure: saved chunks fetched first")
        if spilled > was_spilled:
            said.append(f"spilling to the reorder file ({human_size(spilled)} so far)")
        return "; ".join(said) or None

    # --- release ----------------------------------------------------------------

    def _settled(self, export: str, chunks: list[int]) -> None:
        if chunks:
            self._unreleased.setdefault(export, []).extend(chunks)
            self._unreleased_count += len(chunks)
            quiet = all(m.side_bytes == 0 for m in self.group.members)  # as pulses said, none unheard
            if self._unreleased_count * self.chunk >= (QUIET_RELEASE_BATCH_BYTES if quiet else RELEASE_BATCH_BYTES):
                self._release_all()

    def _release_all(self) -> None:
        for export, chunks in self._unreleased.items():
            if chunks:
                self.group.release(self.plan.owner[export], export, ranges_of(sorted(chunks)))
        self._unreleased.clear()
        self._unreleased_count = 0

    def _note_peak(self) -> None:
        held = self.scheduler.held + self.buffer.memory_bytes
        self.stats["peak_host_buffer_bytes"] = max(self.stats["peak_host_buffer_bytes"], held)
        self.stats["spilled_bytes"] = self.buffer.spilled_bytes
        now = time.monotonic()
        if now - self._published_at >= PUBLISH_INTERVAL_S:
            self._published_at = now
            self.published = self._snapshot()
