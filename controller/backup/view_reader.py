"""Reading time-zero views: a few libnbd handles per export, all multiplexed in one thread.

Every export of the backup gets its own NBD connections to its view
(CONNECTIONS_PER_VIEW), so exports on different subsystems (different nbdkit
processes) are read in parallel, and so are exports of one subsystem and the
reads of one export: nbdkit serves each connection with its own worker, one
request at a time, so a single connection leaves the server's other workers
idle. A view is read-only and the plugin advertises multi-conn, so every
connection sees the same bytes. `wait` polls the sockets of every handle with
commands in flight and lets libnbd progress on whichever is ready: the
copier's thread is never stuck on one connection while another has data for it.
A read that completes tells its reader itself (libnbd's completion callback, run
in this same thread while libnbd reads), so finding the completed reads costs
nothing per read still in flight.

A Read owns a slot of the BufferPool from issue until the copier has taken all
of its pieces; `pieces` are consumed from the front, in the export's stream order.
"""

import select
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import nbd

from common.arena import huge_page_arena
from controller.backup.layout import Piece
from controller.backup.local_read import LocalRead
from controller.signals import deferred

# Connections to each view. nbdkit runs one worker per connection (--threads 1), so
# this is how many of the view's reads the server works on at once.
CONNECTIONS_PER_VIEW = 2
MAX_DEPTH = 8  # reads in flight per export over NBD; a deeper queue only touches more buffers
LOCAL_AHEAD = 2  # reads done and waiting per export read locally (they complete as they are issued)

Taken = Callable[[Piece], bool]  # true for a piece that needs no read any more


class Fence(Protocol):
    """Where the stream's writes are (sink.WriteBehind): a buffer given back at mark() may be
    written into again once passed(that mark), or once wait(that mark) returns: the output
    has taken its bytes."""

    def mark(self) -> int: ...

    def passed(self, mark: int) -> bool: ...

    def wait(self, mark: int) -> None: ...


class BufferPool:
    """At most COUNT buffers of SIZE bytes, each made on first need and then reused.

    Why a pool: libnbd 1.14's Python aio_pread keeps a reference to every buffer
    it is given and never drops it, so a fresh buffer per read would leak all of
    them. Reused buffers leak nothing, and the pool bounds read memory by itself.
    Buffers are made lazily (an idle backup of one export uses about MAX_DEPTH of
    them), and the most recently given back is taken first, so the few in use stay
    warm; never more than COUNT exist.

    The buffers are slices of one mapping advised for huge pages (common/arena.py
    says why); its pages are touched only as buffers are used.

    With a FENCE (the stream written by another thread, which may still be writing from a
    buffer given back), a buffer is handed out again only once the writes queued before it
    came back are done. The oldest given back is the likeliest written: it goes first if it
    is; if not, a buffer not made yet is made rather than waited for (the writer thread may
    hold several queued, and a wait is a hand-over between threads); only a pool all made
    waits for its oldest.
    """

    def __init__(self, size: int, count: int, fence: Fence | None = None):
        assert count >= 1, "pool_shape gives one buffer per export and one more"
        # Set at start, never changed.
        self.size = size
        self.fence = fence
        self._arena = huge_page_arena(size * count)
        # Copy loop only (the scheduler and the copier take and give buffers in its thread).
        self._free: deque[tuple[memoryview, int]] = deque()  # made, not in use; the fence's mark when given
        self._unmade = count  # buffers the bound still allows to be made
        self._whole: dict[int, nbd.Buffer] = {}  # id(buffer) -> nbd.Buffer of all of it

    @property
    def free(self) -> int:
        """Buffers a read may take now: those given back and those not made yet."""
        return len(self._free) + self._unmade

    def take(self, length: int) -> tuple[memoryview, nbd.Buffer]:
        """A buffer and the nbd.Buffer for its first LENGTH bytes."""
        fence = self.fence
        if self._free and fence is None:
            data, _ = self._free.pop()
        elif self._free and fence is not None and (not self._unmade or fence.passed(self._free[0][1])):
            data, mark = self._free.popleft()
            fence.wait(mark)
        else:
            assert self._unmade > 0, "the scheduler takes a buffer only while one is free"
            self._unmade -= 1
            at = self._unmade * self.size
            data = memoryview(self._arena)[at:at + self.size]
            self._whole[id(data)] = nbd.Buffer.from_buffer(data)
        if length == self.size:
            return data, self._whole[id(data)]
        # A view per short read: what aio_pread keeps of it is a small object, not the buffer.
        return data, nbd.Buffer.from_buffer(memoryview(data)[:length])

    def give(self, data: memoryview) -> None:
        self._free.append((data, self.fence.mark() if self.fence is not None else 0))


@dataclass
class Read:
    """One pread of a view: LENGTH bytes at PHYSICAL, covering PIECES (physically contiguous)."""

    physical: int
    length: int
    pieces: deque[Piece]  # the ones not yet taken by the copier
    ahead: bool  # issued for a later dataset than the one being written then
    handle: nbd.NBD | None = None  # the connection it was issued on
    data: memoryview | None = None  # a pool buffer; None once it went back to the pool
    buf: nbd.Buffer | None = None  # nbd.Buffer sharing `data`
    done: bool = False
    aside: bool = False  # saved chunks fetched out of order (issue_aside), not in the queue
    error: int = 0  # the errno the server answered with, once completed
    parts: int = 0  # read locally: the runs of it still being read through the view

    def bytes_at(self, at: int, length: int) -> memoryview:
        """LENGTH bytes of the buffer from AT (a view, no copy), while the read holds its buffer."""
        assert self.data is not None, "a read's bytes are taken before its buffer goes back to the pool"
        return self.data[at:at + length]

    def is_zero(self, at: int, length: int) -> bool:
        """Whether LENGTH bytes of the buffer from AT are all zero (libnbd checks, without a copy)."""
        assert self.buf is not None, "a read's bytes are taken before its buffer goes back to the pool"
        zero: bool = self.buf.is_zero(at, length)
        return zero


class ViewReader:
    """The reads of one export's view, in issue order (which is its stream order), spread
    over HANDLES (one or several connections to the view), or made here by LOCAL (a
    local_read.LocalRead: the device, and the side store's slots for saved chunks; the
    handles then serve, without waiting, only what it hands back, and the queue's reads and
    the saved chunks fetched aside are read alike). Completion order across connections is
    free; the copier takes reads from the front of `queue` only."""

    def __init__(self, export: str, handles: nbd.NBD | list[nbd.NBD] | tuple[nbd.NBD, ...],
                 pieces: Iterator[Piece], local: LocalRead | None = None):
        # Set at start, never changed.
        self.export = export
        self.local = local
        self.handles = list(handles) if isinstance(handles, (list, tuple)) else [handles]
        self.handle = self.handles[0]  # for the few synchronous reads
        # Copy loop only. libnbd's completion callback (_complete) runs in that thread too,
        # inside the libnbd call that read the reply.
        self._busy = {id(h): 0 for h in self.handles}  # reads in flight per connection
        self._pieces = pieces  # iterator over this export's pieces in stream order
        self._look: deque[Piece] = deque()  # pulled from _pieces, not issued yet
        self.queue: deque[Read] = deque()  # issued, oldest first
        self.aside: list[Read] = []  # issued by issue_aside, not completed yet
        self.in_flight = 0  # reads of the queue and aside not completed yet
        self._completed: list[Read] = []  # told by libnbd, not yet reaped

    def _peek(self, i: int) -> Piece | None:
        while len(self._look) <= i:
            p = next(self._pieces, None)
            if p is None:
                return None
            self._look.append(p)
        return self._look[i]

    @property
    def next_piece(self) -> Piece | None:
        """The first piece not issued yet; every later piece of this export comes after it."""
        return self._peek(0)

    def skip(self, taken: Taken) -> None:
        """Drop unissued pieces for which TAKEN(piece) is true (they were fetched ahead)."""
        while (p := self._peek(0)) is not None and taken(p):
            self._look.popleft()

    def plan(self, limit: int, taken: Taken) -> list[Piece]:
        """The pieces the next read would cover: contiguous on the device, at most LIMIT bytes."""
        self.skip(taken)
        first = self._peek(0)
        if first is None:
            return []
        chosen, total = [first], first.length
        while (p := self._peek(len(chosen))) is not None and not taken(p) \
                and p.physical == chosen[-1].physical + chosen[-1].length and total + p.length <= limit:
            chosen.append(p)
            total += p.length
        return chosen

    def issue(self, chosen: list[Piece], ahead: bool, pool: BufferPool) -> Read:
        """Start the read of CHOSEN (as plan() returned it, at most pool.size bytes) into a
        buffer of POOL, and advance past it."""
        length = sum(p.length for p in chosen)
        r = self._start(chosen[0].physical, length, chosen, ahead, pool)
        for _ in chosen:
            self._look.popleft()
        self.queue.append(r)
        return r

    def issue_aside(self, wanted: list[Piece], physical: int, length: int, pool: BufferPool) -> Read:
        """Start a read of LENGTH bytes at PHYSICAL (at most pool.size) for WANTED, pieces not issued
        yet that lie in it (saved chunks fetched out of order). It stays out of the queue: reap
        returns it like the others, and its buffer goes back to POOL when the caller is done."""
        r = self._start(physical, length, wanted, False, pool, aside=True)
        self.aside.append(r)
        return r

    @property
    def saturated(self) -> bool:
        """No further read should be issued now (the scheduler asks)."""
        if self.local is not None:
            return len(self.queue) >= LOCAL_AHEAD
        return self.in_flight >= MAX_DEPTH

    def _start(self, physical: int, length: int, pieces: Iterable[Piece], ahead: bool, pool: BufferPool,
               aside: bool = False) -> Read:
        data, buf = pool.take(length)
        h = min(self.handles, key=lambda h: self._busy[id(h)])  # the least loaded connection
        r = Read(physical, length, deque(pieces), ahead, h, data, buf, aside=aside)
        self._busy[id(h)] += 1
        self.in_flight += 1
        if self.local is None:
            h.aio_pread(r.buf, r.physical, completion=lambda err: self._complete(r, err.value))
            return r
        view = data[:length]
        again = self.local.read(view, physical)  # PENDING chunks off the device, SAVED ones out of their slots
        if not again:
            self._complete(r, 0)
            return r
        # What neither gave is read through the view, each run into its place in the buffer,
        # without waiting: the read completes when the last run does.
        r.parts = len(again)
        for lo, n in again:
            part = nbd.Buffer.from_buffer(view[lo - physical:lo - physical + n])  # a small object aio_pread keeps
            h.aio_pread(part, lo, completion=lambda err: self._part_done(r, err.value))
        return r

    def _part_done(self, r: Read, error: int) -> int:
        # libnbd's completion callback of one run of a local read read again through the view.
        r.error = r.error or error
        r.parts -= 1
        if not r.parts:
            self._complete(r, r.error)
        return 1

    def _complete(self, r: Read, error: int) -> int:
        # libnbd's completion callback: keep it to a note, it runs inside libnbd's read loop.
        r.error = error
        self._completed.append(r)
        return 1  # retire the command: nobody asks libnbd about it again

    def reap(self) -> list[Read]:
        """Mark completed reads done and return them; a failed read raises nbd.Error."""
        completed, self._completed = self._completed, []
        for r in completed:
            r.done = True
            self.in_flight -= 1
            self._busy[id(r.handle)] -= 1
            if r.aside:
                self.aside.remove(r)
        failed = next((r for r in completed if r.error), None)
        if failed is not None:
            raise nbd.Error(f"{self.export}: reading {failed.length} bytes at {failed.physical} failed",
                            failed.error)
        return completed

    def pread(self, length: int, offset: int) -> bytes:
        """A synchronous read, for the few that do not go through the queue."""
        with deferred():  # it may run the completion callbacks of reads in flight
            data: bytes = self.handle.pread(length, offset)
        return data

    def busy_handles(self) -> list[nbd.NBD]:
        """The connections with reads in flight."""
        return [h for h in self.handles if self._busy[id(h)]]

    def close(self, polite: bool = True) -> None:
        """Close the local read and the connections: POLITE, with a disconnect the server answers;
        else at once (libnbd closes a handle's socket when the handle is freed, without waiting)."""
        if self.local is not None:
            self.local.close()
        if not polite:
            self.queue.clear()  # reads hold their handle too
            self.aside.clear()
            self.handles.clear()
            self.handle = None
            return
        for h in self.handles:
            try:
                with deferred():  # shutting down completes what is in flight, callbacks and all
                    h.shutdown()
            except nbd.Error:
                pass  # the view may already be gone with its session


def wait(readers: list[ViewReader], timeout_ms: int = 1000) -> list[tuple[ViewReader, Read]]:
    """Block until some handle with reads in flight can make progress, then let it.
    Returns the reads that completed, with their reader."""
    busy = [r for r in readers if r.in_flight]
    # A synchronous read on a handle (pread) may have completed its queued reads already:
    # take those first, since their socket may have nothing more to say.
    done = [(r, read) for r in busy for read in r.reap()]
    if done:
        return done
    poller = select.poll()
    fds: dict[int, nbd.NBD] = {}
    for r in busy:
        for h in r.busy_handles():
            direction = h.aio_get_direction()
            events = (select.POLLIN if direction & nbd.AIO_DIRECTION_READ else 0) | \
                     (select.POLLOUT if direction & nbd.AIO_DIRECTION_WRITE else 0)
            if events:
                fd = h.aio_get_fd()
                poller.register(fd, events)
                fds[fd] = h
    for fd, revents in poller.poll(timeout_ms):
        h = fds[fd]
        with deferred():  # libnbd runs the completion callbacks of the reads it finishes here
            if revents & (select.POLLIN | select.POLLHUP | select.POLLERR):
                h.aio_notify_read()
            if revents & select.POLLOUT:
                h.aio_notify_write()
    return [(r, read) for r in busy for read in r.reap()]
