"""The stream's writer thread: order, bounded queue, errors surfacing in the copy loop, close
and abort, and the fence that keeps a pool buffer from being reused before it is written.

Deterministic: the output blocks on events the test sets, never on time."""

import errno
import threading

import pytest

from controller.backup import sink as sink_module
from controller.backup.sink import WriteBehind
from controller.backup.view_reader import BufferPool
from controller.progress import WaitClock

WAIT_S = 30  # a generous bound for what must happen at once; the tests never sleep


WAKE_BYTES = sink_module.WAKE_BYTES


@pytest.fixture(autouse=True)
def wake_at_once(monkeypatch):
    """Every write wakes the writer thread, so a test can hold it in a write."""
    monkeypatch.setattr(sink_module, "WAKE_BYTES", 1)


class GatedFile:
    """An output whose writes each wait for a permit (none: all pass); it keeps what it got,
    and may fail the Nth write with an OSError."""

    def __init__(self, gated: bool = False, fail_at: int | None = None, err: int = errno.ENOSPC, short: bool = False):
        self.got = bytearray()
        self.writes = 0
        self.permits = threading.Semaphore(0) if gated else None
        self.entered = threading.Semaphore(0)  # released as each write starts
        self.fail_at = fail_at
        self.err = err
        self.short = short  # take at most 3 bytes per call, as a raw file may
        self.thread: threading.Thread | None = None

    def write(self, buf):
        self.thread = threading.current_thread()
        self.entered.release()
        if self.permits is not None:
            assert self.permits.acquire(timeout=WAIT_S), "the test let this write through"
        self.writes += 1
        if self.fail_at is not None and self.writes >= self.fail_at:
            raise OSError(self.err, "no space left on device")
        view = memoryview(buf)
        if self.short:
            view = view[:3]
        self.got += view
        return len(view)

    def let(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()


def test_sink_writes_everything_in_order_from_another_thread():
    out = GatedFile(short=True)
    s = WriteBehind(out, limit=64)
    parts = [bytes([i]) * (i + 1) for i in range(20)]
    for p in parts:
        s.write(p)
    s.write(bytearray(b"end"))
    s.write(memoryview(b"xyz"))
    s.close()
    assert bytes(out.got) == b"".join(parts) + b"endxyz"
    assert out.thread is not threading.current_thread(), "the output is written by the sink's thread"
    assert s.written == len(out.got)


def test_sink_write_returns_at_once_while_the_output_is_busy():
    out = GatedFile(gated=True)
    s = WriteBehind(out, limit=100)
    s.write(b"a" * 40)
    assert out.entered.acquire(timeout=WAIT_S)  # the thread is in the first write, held
    s.write(b"b" * 40)  # queued behind it: does not wait
    assert out.writes == 0 and out.got == b""
    out.let(2)
    s.close()
    assert out.got == b"a" * 40 + b"b" * 40


def test_sink_bounds_what_is_queued_and_waits_for_room():
    out = GatedFile(gated=True)
    clock = WaitClock("waiting on the output writes")
    s = WriteBehind(out, limit=100, clock=clock)
    s.write(b"a" * 60)
    s.write(b"b" * 40)  # 100 queued: the limit
    done = threading.Event()

    def third():
        s.write(b"c" * 10)
        done.set()

    t = threading.Thread(target=third)
    t.start()
    assert out.entered.acquire(timeout=WAIT_S)
    assert not done.is_set(), "a write beyond the limit waits"
    out.let()  # the first 60 bytes are written: room for 10
    assert done.wait(WAIT_S)
    t.join()
    out.let(2)
    s.close()
    assert out.got == b"a" * 60 + b"b" * 40 + b"c" * 10
    assert clock.seconds > 0, "the wait for room counts as waiting on the output"


def test_sink_small_writes_are_written_once_waited_for_though_they_did_not_wake_the_writer(monkeypatch):
    monkeypatch.setattr(sink_module, "WAKE_BYTES", WAKE_BYTES)
    assert WAKE_BYTES > 16
    out = GatedFile()
    s = WriteBehind(out)
    s.write(b"head")
    s.wait(s.mark())  # returns: the wait itself wakes the writer thread
    assert out.got == b"head"
    s.write(b"tail")
    s.close()
    assert out.got == b"headtail"


def test_sink_takes_a_buffer_larger_than_its_limit_once_the_queue_is_empty():
    out = GatedFile()
    s = WriteBehind(out, limit=8)
    s.write(b"x" * 100)
    s.write(b"y" * 100)
    s.close()
    assert out.got == b"x" * 100 + b"y" * 100


def test_sink_failure_is_raised_by_the_next_write_as_the_same_exception():
    out = GatedFile(gated=True, fail_at=2)
    s = WriteBehind(out, limit=4)
    s.write(b"a")
    s.write(b"bbb")  # the queue is full
    out.let(2)  # "a" is written, "bbb" fails in the thread
    with pytest.raises(OSError) as first:
        s.write(b"cc")  # waits for room, which the failure ends
    assert first.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as again:
        s.close()
    assert again.value is first.value, "sticky: the same failure, every time"
    assert out.got == b"a"


def test_sink_failure_is_raised_by_close():
    out = GatedFile(fail_at=1, err=errno.EPIPE)
    s = WriteBehind(out)
    s.write(b"abc")
    with pytest.raises(OSError) as e:
        s.close()
    assert e.value.errno == errno.EPIPE


def test_sink_failure_is_raised_by_a_fence_wait():
    out = GatedFile(gated=True, fail_at=1)
    s = WriteBehind(out)
    s.write(b"abc")
    mark = s.mark()
    out.let()
    with pytest.raises(OSError):
        s.wait(mark)


def test_sink_wait_returns_once_the_mark_is_written():
    out = GatedFile(gated=True)
    s = WriteBehind(out)
    s.write(b"one")
    mark = s.mark()
    s.write(b"two")
    waited = threading.Event()
    t = threading.Thread(target=lambda: (s.wait(mark), waited.set()))
    t.start()
    assert out.entered.acquire(timeout=WAIT_S)
    assert not waited.is_set()
    out.let()  # "one" written: the mark is passed, "two" is not yet
    assert waited.wait(WAIT_S)
    assert out.got == b"one"
    t.join()
    out.let()
    s.close()


def test_sink_abort_drops_what_is_queued_and_ends_the_thread():
    out = GatedFile(gated=True)
    s = WriteBehind(out)
    s.write(b"first")
    s.write(b"second")
    assert out.entered.acquire(timeout=WAIT_S)
    out.let()  # the write in progress completes; what is queued behind it is dropped
    s.abort()
    assert not s._thread.is_alive()
    assert out.got == b"first"


def test_sink_abort_does_not_wait_for_ever_on_a_stuck_write(monkeypatch):
    monkeypatch.setattr(sink_module, "ABORT_WAIT_S", 0.01)
    out = GatedFile(gated=True)
    s = WriteBehind(out)
    s.write(b"stuck")
    assert out.entered.acquire(timeout=WAIT_S)
    s.abort()  # returns although the write never ends
    assert s._thread.daemon, "a stuck writer thread does not keep the process alive"
    out.let()
    s._thread.join(WAIT_S)


class CountingFence:
    def __init__(self):
        self.accepted = 0
        self.waited: list[int] = []

        self.written = 0

    def mark(self) -> int:
        return self.accepted

    def passed(self, mark: int) -> bool:
        return self.written >= mark

    def wait(self, mark: int) -> None:
        self.waited.append(mark)


def test_pool_with_a_fence_all_made_hands_out_the_oldest_buffer_after_its_writes():
    fence = CountingFence()
    pool = BufferPool(4096, 2, fence)
    a, _ = pool.take(4096)
    b, _ = pool.take(4096)
    fence.accepted = 10
    pool.give(a)
    fence.accepted = 20
    pool.give(b)
    again, _ = pool.take(4096)
    assert again is a and fence.waited == [10], "the oldest given back, once what was queued before it is written"
    again, _ = pool.take(4096)
    assert again is b and fence.waited == [10, 20]


def test_pool_with_a_fence_makes_a_buffer_rather_than_wait_for_one_still_queued():
    fence = CountingFence()
    pool = BufferPool(4096, 3, fence)
    a, _ = pool.take(4096)
    fence.accepted = 10
    pool.give(a)
    b, _ = pool.take(4096)
    assert b is not a and fence.waited == [], "a new buffer, no wait"
    fence.written = 10
    again, _ = pool.take(4096)
    assert again is a and fence.waited == [10], "the oldest once written, before making another"


def test_pool_reuses_a_buffer_only_once_the_sink_wrote_it():
    out = GatedFile(gated=True)
    s = WriteBehind(out)
    pool = BufferPool(4096, 1, s)
    data, _ = pool.take(4096)
    data[:4] = b"old!"
    s.write(data[:4])  # queued: the sink writes from the pool's buffer itself
    pool.give(data)
    taken = threading.Event()
    t = threading.Thread(target=lambda: (pool.take(4096), taken.set()))
    t.start()
    assert out.entered.acquire(timeout=WAIT_S)
    assert not taken.is_set(), "the buffer is not handed out while its bytes wait to be written"
    out.let()
    assert taken.wait(WAIT_S)
    t.join()
    s.close()
    assert out.got == b"old!"
