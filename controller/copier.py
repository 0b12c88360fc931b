"""The copier: reads every dataset's time-zero view and writes the ordered stream.

Order: datasets in the order given, each from offset 0 up. Within a dataset
several reads are in flight (libnbd AIO) and complete in any order; the head
of the queue is always written first. When a subsystem reports side-store
pressure, its saved chunks are fetched ahead of order (opportunistic copy),
released at once so the side store shrinks, and parked in the reorder buffer
until their place in the stream comes.

Memory: in-flight read buffers (depth x request size) plus the reorder
buffer's memory share never exceed host_memory.

Release: a chunk is released once the stream writer has taken it (or it sits
in the reorder buffer); releases are batched to keep control round trips few.
"""

from collections import deque
from dataclasses import dataclass

import nbd

from controller.errors import SessionAborted, UsageError
from controller.reorder import ReorderBuffer
from nbdplugin.protocol import ranges_of

REQUEST_BYTES = 1 << 20
MAX_DEPTH = 16
RELEASE_BATCH_BYTES = 16 << 20
OPPORTUNISTIC_LIMIT_BYTES = 32 << 20


@dataclass
class Dataset:
    name: str
    size: int
    member: object  # controller.session.Member
    export: str
    view: str


@dataclass
class Read:
    first: int  # chunk number
    count: int
    data: bytearray | None  # None: the chunks are in the reorder buffer
    buf: object = None  # nbd.Buffer sharing `data`
    cookie: int = 0


class Copier:
    def __init__(self, group, datasets: list[Dataset], writer, chunk_size: int, host_memory: int,
                 spill_dir: str | None = None, progress=None):
        self.group = group
        self.datasets = datasets
        self.writer = writer
        self.chunk = chunk_size
        self.request_chunks = max(1, REQUEST_BYTES // chunk_size)
        request_bytes = self.request_chunks * chunk_size
        if host_memory < 4 * request_bytes:
            raise UsageError(f"--host-memory must be at least {4 * request_bytes >> 20} MiB with {chunk_size >> 10} KiB chunks")
        self.depth = max(2, min(MAX_DEPTH, host_memory // 2 // request_bytes))
        self.buffer = ReorderBuffer(host_memory - self.depth * request_bytes, spill_dir)
        self.progress = progress or (lambda done: None)
        self.release_batch = max(1, RELEASE_BATCH_BYTES // chunk_size)
        self.handles: list[nbd.NBD] = []
        self.stats = {"chunks_in_order": 0, "chunks_ahead": 0, "chunks_zero": 0, "bytes_read": 0}
        self._done_bytes = 0
        self._positions = [0] * len(datasets)  # per dataset: chunks below this are issued or written

    def run(self) -> dict:
        try:
            self.handles = [self._connect(ds) for ds in self.datasets]
            for i in range(len(self.datasets)):
                self._copy_dataset(i)
        except nbd.Error as e:
            reason = self.group.explain()  # a subsystem-side abort explains a failed read best
            raise SessionAborted(f"backup abandoned: {reason or f'reading a time-zero view failed: {e}'}") from None
        finally:
            for h in self.handles:
                try:
                    h.shutdown()
                except nbd.Error:
                    pass  # the view may already be gone with its session
            self.buffer.close()
        self.stats.update(
            spilled_bytes=self.buffer.spilled_bytes,
            peak_host_buffer_bytes=self.buffer.peak_memory_bytes + self.depth * self.request_chunks * self.chunk,
        )
        return self.stats

    def _connect(self, ds: Dataset) -> nbd.NBD:
        h = nbd.NBD()
        h.set_export_name(ds.view)
        where = ds.member.nbd
        if "socket" in where:
            h.connect_unix(where["socket"])
        else:
            h.connect_tcp("127.0.0.1", str(where["port"]))
        if h.get_size() != ds.size:
            raise SessionAborted(f"view {ds.view} is {h.get_size()} bytes, expected {ds.size}")
        return h

    def _chunks(self, ds: Dataset) -> int:
        return (ds.size + self.chunk - 1) // self.chunk

    def _copy_dataset(self, i: int) -> None:
        ds, h = self.datasets[i], self.handles[i]
        n = self._chunks(ds)
        queue: deque[Read] = deque()
        unreleased: list[int] = []
        while self._positions[i] < n or queue:
            self.group.check()
            self._relieve_pressure(i)
            while self._positions[i] < n and len(queue) < self.depth:
                queue.append(self._issue(i, h, n))
            head = queue.popleft()
            if head.data is None:
                self._emit_buffered(i, head)
                continue
            while not h.aio_command_completed(head.cookie):
                h.poll(-1)
            self._emit_read(i, head)
            unreleased.extend(range(head.first, head.first + head.count))
            if len(unreleased) >= self.release_batch:
                self.group.release(ds.member, ds.export, ranges_of(unreleased))
                unreleased.clear()
        if unreleased:
            self.group.release(ds.member, ds.export, ranges_of(unreleased))

    def _issue(self, i: int, h: nbd.NBD, n: int) -> Read:
        """The next entry of dataset I's queue: a run of chunks to read, or one already buffered."""
        first = self._positions[i]
        if (i, first) in self.buffer:
            self._positions[i] += 1
            return Read(first, 1, None)
        count = 1
        while count < self.request_chunks and first + count < n and (i, first + count) not in self.buffer:
            count += 1
        self._positions[i] += count
        return self._read(i, h, first, count)

    def _read(self, i: int, h: nbd.NBD, first: int, count: int) -> Read:
        start = first * self.chunk
        length = min(count * self.chunk, self.datasets[i].size - start)
        data = bytearray(length)
        buf = nbd.Buffer.from_buffer(data)
        return Read(first, count, data, buf, h.aio_pread(buf, start))

    def _emit_read(self, i: int, r: Read) -> None:
        """Write R's non-zero chunks as records, adjacent ones coalesced."""
        self.stats["chunks_in_order"] += r.count
        self.stats["bytes_read"] += len(r.data)
        view = memoryview(r.data)
        base = r.first * self.chunk
        run_start = None
        for k in range(r.count + 1):
            lo = k * self.chunk
            nonzero = k < r.count and not r.buf.is_zero(lo, min(self.chunk, len(view) - lo))
            if nonzero and run_start is None:
                run_start = lo
            elif not nonzero and run_start is not None:
                self.writer.write(i, base + run_start, view[run_start:lo])
                run_start = None
            if k < r.count and not nonzero:
                self.stats["chunks_zero"] += 1
        self._advance(len(view))

    def _emit_buffered(self, i: int, r: Read) -> None:
        data = self.buffer.take((i, r.first))
        if data is not None:
            self.writer.write(i, r.first * self.chunk, data)
        else:
            self.stats["chunks_zero"] += 1
        self._advance(min(self.chunk, self.datasets[i].size - r.first * self.chunk))

    def _advance(self, nbytes: int) -> None:
        self._done_bytes += nbytes
        self.progress(self._done_bytes)

    def _relieve_pressure(self, current: int) -> None:
        """Fetch saved chunks of every subsystem under pressure, ahead of order, and release them."""
        limit = max(1, OPPORTUNISTIC_LIMIT_BYTES // self.chunk)
        for j in range(current, len(self.datasets)):
            ds = self.datasets[j]
            if not ds.member.pressure:
                continue
            wanted = [c for c in self.group.saved(ds.member, ds.export, limit)
                      if c >= self._positions[j] and (j, c) not in self.buffer]
            if wanted:
                self._fetch_ahead(j, wanted)
                self.group.release(ds.member, ds.export, ranges_of(wanted))
        for ds in self.datasets[current:]:
            ds.member.pressure = False  # until the next heartbeat or release reply says otherwise

    def _fetch_ahead(self, j: int, chunks: list[int]) -> None:
        h = self.handles[j]
        runs = [(first + k, min(self.request_chunks, count - k))
                for first, count in ranges_of(chunks) for k in range(0, count, self.request_chunks)]
        reads = [self._read(j, h, first, count) for first, count in runs]
        for r in reads:
            while not h.aio_command_completed(r.cookie):
                h.poll(-1)
            for k in range(r.count):
                lo = k * self.chunk
                size = min(self.chunk, len(r.data) - lo)
                zero = r.buf.is_zero(lo, size)
                self.buffer.put((j, r.first + k), None if zero else memoryview(r.data)[lo:lo + size])
            self.stats["chunks_ahead"] += r.count
            self.stats["bytes_read"] += len(r.data)
