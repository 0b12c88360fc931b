"""Reading time-zero views: one libnbd handle per export, all multiplexed in one thread.

Every export of the backup gets its own NBD connection to its view, so exports
on different subsystems (different nbdkit processes) are read in parallel, and
so are exports of one subsystem (nbdkit serves each connection with its own
worker). `wait` polls the sockets of every handle with commands in flight and
lets libnbd progress on whichever is ready: the copier's thread is never stuck
on one subsystem while another has data for it.

A Read owns a slot of the BufferPool from issue until the copier has taken all
of its pieces; `pieces` are consumed from the front, in the export's stream order.
"""

import select
from collections import deque
from dataclasses import dataclass, field

import nbd

from controller.layout import Piece


class BufferPool:
    """COUNT buffers of SIZE bytes, made once and reused by every read.

    Why a pool: libnbd 1.14's Python aio_pread keeps a reference to every buffer
    it is given and never drops it, so a fresh buffer per read would leak all of
    them. Reused buffers leak nothing, and the pool bounds read memory by itself.
    """

    def __init__(self, size: int, count: int):
        assert count >= 1, "pool_shape gives one buffer per export and one more"
        self.size = size
        self._free = [bytearray(size) for _ in range(count)]
        self._whole = {id(b): nbd.Buffer.from_buffer(b) for b in self._free}

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self, length: int) -> tuple[bytearray, object]:
        """A buffer and the nbd.Buffer for its first LENGTH bytes."""
        data = self._free.pop()
        if length == self.size:
            return data, self._whole[id(data)]
        # A view per short read: what aio_pread keeps of it is a small object, not the buffer.
        return data, nbd.Buffer.from_buffer(memoryview(data)[:length])

    def give(self, data: bytearray) -> None:
        self._free.append(data)


@dataclass
class Read:
    """One pread of a view: LENGTH bytes at PHYSICAL, covering PIECES (physically contiguous)."""

    physical: int
    length: int
    pieces: deque  # of Piece, the ones not yet taken by the copier
    ahead: bool  # issued for a later dataset than the one being written then
    data: bytearray = field(default=None)
    buf: object = None  # nbd.Buffer sharing `data`
    cookie: int = 0
    done: bool = False


def connect(where: dict, export: str) -> nbd.NBD:
    """A libnbd handle on EXPORT of the subsystem serving at WHERE ({"socket"} or {"port"})."""
    h = nbd.NBD()
    h.set_export_name(export)
    if "socket" in where:
        h.connect_unix(where["socket"])
    else:
        h.connect_tcp("127.0.0.1", str(where["port"]))
    return h


class ViewReader:
    """The reads of one export's view, in issue order (which is its stream order)."""

    def __init__(self, export: str, handle: nbd.NBD, pieces):
        self.export = export
        self.handle = handle
        self._pieces = pieces  # iterator over this export's pieces in stream order
        self._look: deque[Piece] = deque()  # pulled from _pieces, not issued yet
        self.queue: deque[Read] = deque()  # issued, oldest first
        self.in_flight = 0

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

    def skip(self, taken) -> None:
        """Drop unissued pieces for which TAKEN(piece) is true (they were fetched ahead)."""
        while (p := self._peek(0)) is not None and taken(p):
            self._look.popleft()

    def plan(self, limit: int, taken) -> list[Piece]:
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
        data, buf = pool.take(length)
        r = Read(chosen[0].physical, length, deque(chosen), ahead, data, buf)
        r.cookie = self.handle.aio_pread(r.buf, r.physical)
        for _ in chosen:
            self._look.popleft()
        self.queue.append(r)
        self.in_flight += 1
        return r

    def reap(self) -> list[Read]:
        """Mark completed reads done and return them; a failed read raises nbd.Error."""
        completed = []
        for r in self.queue:
            if not r.done and self.handle.aio_command_completed(r.cookie):
                r.done = True
                self.in_flight -= 1
                completed.append(r)
        return completed

    def pread(self, length: int, offset: int) -> bytes:
        """A synchronous read, for the few that do not go through the queue."""
        return self.handle.pread(length, offset)

    def close(self) -> None:
        try:
            self.handle.shutdown()
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
    fds = {}
    for r in busy:
        fd = r.handle.aio_get_fd()
        direction = r.handle.aio_get_direction()
        events = (select.POLLIN if direction & nbd.AIO_DIRECTION_READ else 0) | \
                 (select.POLLOUT if direction & nbd.AIO_DIRECTION_WRITE else 0)
        if events:
            poller.register(fd, events)
            fds[fd] = r
    for fd, revents in poller.poll(timeout_ms):
        h = fds[fd].handle
        if revents & (select.POLLIN | select.POLLHUP | select.POLLERR):
            h.aio_notify_read()
        if revents & select.POLLOUT:
            h.aio_notify_write()
    return [(r, read) for r in busy for read in r.reap()]
