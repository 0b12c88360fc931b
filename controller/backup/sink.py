"""The backup stream's writes, made by a thread of their own, so that the copy loop reads and
hashes the next bytes while the output takes the ones before.

The stream writer writes through a WriteBehind as through a file: write(BUF) queues BUF (a
view, not a copy) and returns at once, unless SINK_BYTES are queued already; the writer
thread hands the queued buffers to OUT (a BackupOutput, an S3Output) in order, each whole.
The output's own write releases the GIL while the kernel copies (a file, a pipe), and so
does hashing: the two threads run at once on two cores.

Buffers: a queued buffer must not change until written. What the stream writer builds
itself (record heads, checks, the index) and what the copy loop owns (records gathered
across reads, reorder-buffer entries) are never changed once handed over; a read buffer of
the copier's pool (view_reader.BufferPool) is reused only once the bytes queued before it
went back to the pool are written: the pool takes mark() when a buffer is given back and
asks passed(mark), or waits with wait(mark), before handing it out again. Chunks are
released to the subsystems as before, once their bytes are in controller memory: whether
they are written yet does not matter to the side store.

Memory: at most SINK_BYTES queued (one buffer more than that is never queued: a larger
buffer waits for an empty queue). Queued pool buffers are within the pool's budget; the
copies queued (records gathered across reads, reorder-buffer entries, compressed payloads)
come on top, at most SINK_BYTES.

Errors: the first exception OUT.write raises (a full disk, a broken pipe) stops the writer
thread, drops what is queued, and is raised, the same exception object, by the next
write(), wait() or close() in the copy loop: the backup fails as it did when the copy loop
wrote itself, a little later in the stream. After a failure or an interrupt, abort() drops
what is queued and waits (ABORT_WAIT_S at most) for the write in progress, before the
output is discarded. A write stuck on a pipe whose reader neither reads nor closes is not
waited for longer: the thread is a daemon, and ends with the process (closing or flushing
that pipe, as discarding a FIFO or standard output does, may still wait for it).

Threads and fields: see __init__. The copy loop (the main thread) calls every method;
the writer thread only runs _run.
"""

import threading
import time
from collections import deque
from collections.abc import Callable

from backupformat.fileobj import OutputFile, write_all
from common.fileio import Buffer
from controller.progress import WaitClock

SINK_BYTES = 8 << 20  # queued at most: eight 1 MiB records (copier.RECORD_BYTES)
WAKE_BYTES = 64 << 10  # less queued than this does not wake the writer thread by itself
ABORT_WAIT_S = 5.0  # how long an abort waits for the write in progress


class WriteBehind:
    def __init__(self, out: OutputFile, limit: int = SINK_BYTES, clock: WaitClock | None = None):
        assert limit > 0, "a sink holds at least one buffer"
        # Set at start, never changed.
        self.out = out
        self.limit = limit
        self.clock = clock  # the copy loop's waits on the output are added to it
        # Guarded by _cond (its lock): all of the below; the writer thread waits on it for work,
        # the copy loop for room, for a mark to be written, or for the end.
        self._cond = threading.Condition()
        self._queue: deque[memoryview] = deque()  # the head is the buffer being written
        self._queued = 0  # bytes in _queue
        self._accepted = 0  # bytes ever queued
        self._written = 0  # bytes ever written
        self._error: BaseException | None = None  # OUT's first failure: sticky
        self._closing = False  # close(): write what is queued, then end
        self._aborted = False  # abort(): drop what is queued, end after the write in progress
        self._thread = threading.Thread(target=self._run, name="tzero-stream-writer", daemon=True)
        self._thread.start()

    def write(self, buf: Buffer) -> None:
        """Queue BUF, which must not change until written; waits for room. Raises the writer's
        failure, if any. Returns None: all of BUF is taken."""
        view = memoryview(buf)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = view.nbytes
        if not n:
            return
        with self._cond:
            assert not (self._closing or self._aborted), "nothing is written after close() or abort()"
            if self._error is None and self._queued and self._queued + n > self.limit:
                self._waiting(lambda: self._error is not None or not self._queued or self._queued + n <= self.limit)
            self._raise_failure()
            self._queue.append(view)
            self._queued += n
            self._accepted += n
            if self._queued >= WAKE_BYTES:  # a record head waits for its payload: one wake-up for both
                self._cond.notify_all()

    def mark(self) -> int:
        """Where the stream is now: wait(mark) returns once everything queued so far is written."""
        with self._cond:
            return self._accepted

    def passed(self, mark: int) -> bool:
        """Whether the stream is written up to MARK (from mark()) already."""
        with self._cond:
            return self._written >= mark

    def wait(self, mark: int) -> None:
        """Return once the stream is written up to MARK (from mark()); raises the writer's failure."""
        with self._cond:
            if self._written < mark and self._error is None:
                self._waiting(lambda: self._written >= mark or self._error is not None)
            self._raise_failure()

    def close(self) -> None:
        """Write everything queued and end the writer thread; raises the writer's failure."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            if self._queue and self._error is None:
                self._waiting(lambda: not self._queue or self._error is not None)
            self._raise_failure()
        self._thread.join()

    def abort(self) -> None:
        """Drop what is queued and end the writer thread (see the module's docstring)."""
        with self._cond:
            self._aborted = True
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
        self._thread.join(ABORT_WAIT_S)

    @property
    def written(self) -> int:
        """Bytes written so far (for tests and statistics)."""
        with self._cond:
            return self._written

    def _waiting(self, done: Callable[[], bool]) -> None:
        """Wait (the lock held) until DONE(), timing the wait on the clock."""
        started = time.monotonic()
        self._cond.notify_all()  # what is queued may be too small to have woken the writer thread
        try:
            self._cond.wait_for(done)
        finally:
            if self.clock is not None:
                self.clock.seconds += time.monotonic() - started

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing or self._aborted)
                if self._aborted or not self._queue:
                    return
                view = self._queue[0]  # stays queued (and counted) while it is written
            try:
                write_all(self.out, view)
            except BaseException as e:  # noqa: BLE001 - every failure goes to the copy loop, which raises it
                with self._cond:
                    self._error = e
                    self._queue.clear()
                    self._queued = 0
                    self._cond.notify_all()
                return
            with self._cond:
                if self._queue and self._queue[0] is view:  # else abort() dropped it meanwhile
                    self._queue.popleft()
                    self._queued -= view.nbytes
                    self._written += view.nbytes
                    self._cond.notify_all()

