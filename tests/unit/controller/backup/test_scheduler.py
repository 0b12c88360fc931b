"""The read policy against fake views: the stream always finds its head issued, within the pool."""

import pytest

from controller.backup.copier import pool_shape
from controller.backup.layout import Dataset, Linear, Striped, pieces
from controller.backup.scheduler import Scheduler, key
from controller.backup.view_reader import BufferPool, ViewReader
from controller.errors import UsageError

GRID = 64 << 10


class FakeHandle:
    """Takes reads and forgets them: the test consumes pieces as if every read had completed."""

    def aio_pread(self, buf, offset, completion=None):
        return 1


def drive(datasets, request, count):
    """The copier's loop without data: take every piece in stream order from its read."""
    pool = BufferPool(request, count)
    exports = sorted({e for ds in datasets for e in ds.exports})
    readers = {e: ViewReader(e, FakeHandle(), pieces(datasets, GRID, e)) for e in exports}
    scheduler = Scheduler(list(readers.values()), pool)
    head_box = [None]

    def taken(p):
        return head_box[0] is None or key(p) < key(head_box[0])

    most_held = 0
    for head in pieces(datasets, GRID):
        head_box[0] = head
        scheduler.fill(head, taken)
        most_held = max(most_held, count - pool.free)
        reader = readers[head.export]
        assert reader.queue, f"the head {head} was not issued"
        read = reader.queue[0]
        assert key(read.pieces[0]) == key(head)
        read.pieces.popleft()
        if not read.pieces:
            reader.queue.popleft()
            reader.in_flight -= 1
            scheduler.taken(read)
    return most_held


@pytest.mark.parametrize("legs", [2, 3, 5])
def test_scheduler_stripe_head_always_finds_a_buffer_with_the_smallest_pool(legs):
    names = [f"e{i}" for i in range(legs)]
    datasets = [Dataset("v", "", Striped(GRID, names, [64 * GRID] * legs))]
    request, count = pool_shape(2 << 20, GRID, legs)  # little memory: one buffer per leg and one more
    assert count >= legs + 1
    assert drive(datasets, request, count) <= count


def test_scheduler_later_datasets_read_ahead_within_the_pool():
    datasets = [Dataset("a", "", Linear([("x", 0, 64 * GRID)])), Dataset("b", "", Linear([("y", 0, 64 * GRID)]))]
    assert drive(datasets, 1 << 20, 8) == 8


def test_scheduler_pool_too_small_for_the_exports_is_a_usage_error():
    with pytest.raises(UsageError, match="--host-memory must be at least 1 MiB for 5 exports"):
        pool_shape(256 << 10, GRID, 5)
