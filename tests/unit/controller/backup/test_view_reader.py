"""Reads of a view: completions told by libnbd's callback, reaped once, failures raised."""

import ctypes

import nbd
import pytest

from controller.backup.layout import Dataset, Linear, pieces
from controller.backup.view_reader import BufferPool, ViewReader

GRID = 64 << 10


class FakeHandle:
    """Keeps each read's completion callback so the test can complete reads in any order."""

    def __init__(self):
        self.callbacks = []

    def aio_pread(self, buf, offset, completion=None):
        self.callbacks.append(completion)
        return len(self.callbacks)

    def complete(self, i, error=0):
        assert self.callbacks[i](ctypes.c_int(error)) == 1, "the command is retired by its callback"


def reader_with_reads(n):
    h = FakeHandle()
    ds = [Dataset("a", "", Linear([("x", 0, n * GRID)]))]
    r = ViewReader("x", h, pieces(ds, GRID, "x"))
    pool = BufferPool(GRID, n + 1)
    reads = [r.issue(r.plan(GRID, lambda p: False), False, pool) for _ in range(n)]
    return r, h, reads, pool


def test_reader_reaps_reads_in_the_order_they_completed_and_only_once():
    r, h, reads, _ = reader_with_reads(3)
    assert r.reap() == [] and r.in_flight == 3
    h.complete(2)
    h.complete(0)
    assert r.reap() == [reads[2], reads[0]] and reads[2].done and not reads[1].done
    assert r.reap() == [] and r.in_flight == 1


def test_reader_failed_read_raises_nbd_error_with_its_errno_and_place():
    r, h, reads, _ = reader_with_reads(2)
    h.complete(1, error=5)
    with pytest.raises(nbd.Error, match=f"x: reading {GRID} bytes at {GRID} failed") as e:
        r.reap()
    assert e.value.errnum == 5


def test_reader_completed_aside_read_leaves_the_aside_list():
    r, h, reads, pool = reader_with_reads(1)
    aside = r.issue_aside([], 5 * GRID, GRID, pool)
    assert r.aside == [aside] and r.in_flight == 2
    h.complete(1)
    assert r.reap() == [aside] and r.aside == [] and r.in_flight == 1


class FakeLocal:
    """A local read that hands back two runs of its read for the view (chunks not readable here)."""

    slots = None

    def read(self, view, offset):
        view[:] = b"\x01" * len(view)
        return [(offset + 100, 50), (offset + 1000, 24)]


def test_reader_local_read_reads_what_it_hands_back_through_the_view_without_waiting():
    h = FakeHandle()
    ds = [Dataset("a", "", Linear([("x", 0, GRID)]))]
    r = ViewReader("x", h, pieces(ds, GRID, "x"), FakeLocal())
    read = r.issue(r.plan(GRID, lambda p: False), False, BufferPool(GRID, 2))
    assert len(h.callbacks) == 2, "one asynchronous read per run handed back"
    assert r.reap() == [] and not read.done
    h.complete(1)
    assert r.reap() == [], "done only once its last run is"
    h.complete(0, error=5)
    with pytest.raises(nbd.Error):
        r.reap()
    assert read.done and read.error == 5 and r.in_flight == 0


def test_reader_local_read_with_nothing_handed_back_is_done_at_once():
    h = FakeHandle()
    ds = [Dataset("a", "", Linear([("x", 0, GRID)]))]
    local = FakeLocal()
    local.read = lambda view, offset: []
    r = ViewReader("x", h, pieces(ds, GRID, "x"), local)
    read = r.issue(r.plan(GRID, lambda p: False), False, BufferPool(GRID, 2))
    assert h.callbacks == [] and r.reap() == [read]
