import errno
import os

import pytest

from nbdplugin.sidestore import SideStore, SideStoreFull
from nbdplugin.slots import SlotPool

CHUNK = 4096


class Source:
    """A device stand-in: chunk c holds the byte c + 1; read_into may be made to fail."""

    def __init__(self, fail: OSError | None = None):
        self.fail = fail
        self.reads = 0

    def read_into(self, view, offset: int) -> None:
        self.reads += 1
        if self.fail:
            raise self.fail
        view[:] = bytes([offset // CHUNK + 1]) * len(view)


def chunk(c: int, n: int = CHUNK) -> bytes:
    return bytes([c + 1]) * n


@pytest.fixture
def pool(tmp_path):
    p = SlotPool(2 * CHUNK, str(tmp_path), CHUNK)
    yield p
    p.close()


def test_sidestore_keeps_memory_first_then_spills(pool, tmp_path):
    s = SideStore(pool)
    for c in range(5):
        s.save((0, c), Source(), c * CHUNK, CHUNK)
    assert s.memory_bytes == 2 * CHUNK and s.spill_bytes == 3 * CHUNK
    assert all(s.get((0, c)) == chunk(c) for c in range(5))
    assert os.listdir(tmp_path) == [], "the spill file is unlinked at birth"
    assert s.pressure
    s.close()


def test_sidestore_read_into_copies_part_of_a_saved_chunk(pool):
    s = SideStore(pool)
    for c in range(3):  # two in memory, one spilled
        s.save((0, c), Source(), c * CHUNK, CHUNK)
    for c in range(3):
        view = memoryview(bytearray(100))
        assert s.read_into((0, c), view, 1000)
        assert bytes(view) == chunk(c, 100)
    assert not s.read_into((0, 7), memoryview(bytearray(10)), 0)
    s.close()


def test_sidestore_short_last_chunk_keeps_its_length(pool):
    s = SideStore(pool)
    s.save((0, 2), Source(), 2 * CHUNK, 100)
    assert s.get((0, 2)) == chunk(2, 100) and s.memory_bytes == 100
    s.close()


def test_sidestore_discarded_slots_are_reused(tmp_path):
    pool = SlotPool(0, str(tmp_path), CHUNK)
    s = SideStore(pool)
    s.save((0, 1), Source(), CHUNK, CHUNK)
    s.discard((0, 1))
    s.save((0, 2), Source(), 2 * CHUNK, 100)
    assert s.spill_bytes == 100 and s.get((0, 2)) == chunk(2, 100) and s.get((0, 1)) is None
    assert pool.spill_file_bytes == CHUNK, "the second chunk took the first one's slot"
    s.close()
    pool.close()


def test_sidestore_slots_outlive_the_session_and_the_next_one_reuses_them(pool):
    first = SideStore(pool)
    for c in range(4):
        first.save((0, c), Source(), c * CHUNK, CHUNK)
    first.close()
    assert first.get((0, 0)) is None and first.memory_bytes == first.spill_bytes == 0
    second = SideStore(pool)
    for c in range(4):
        second.save((0, c + 10), Source(), (c + 10) * CHUNK, CHUNK)
    assert pool.spill_file_bytes == 2 * CHUNK, "no new spill slot: the first session's came back"
    assert [second.get((0, c + 10)) for c in range(4)] == [chunk(c + 10) for c in range(4)]
    second.close()


def test_sidestore_spill_file_keeps_its_high_water_mark_by_default(tmp_path):
    pool = SlotPool(0, str(tmp_path), CHUNK)
    s = SideStore(pool)
    for c in range(3):
        s.save((0, c), Source(), c * CHUNK, CHUNK)
    s.close()
    assert pool.spill_file_bytes == 3 * CHUNK and os.fstat(pool.spill_fd).st_size == 3 * CHUNK
    pool.close()


def test_sidestore_spill_file_is_cut_back_to_its_keep_once_every_slot_is_back(tmp_path):
    pool = SlotPool(0, str(tmp_path), CHUNK, spill_keep_bytes=2 * CHUNK)
    s = SideStore(pool)
    for c in range(6):
        s.save((0, c), Source(), c * CHUNK, CHUNK)
    assert pool.spill_file_bytes == 6 * CHUNK and os.fstat(pool.spill_fd).st_size == 6 * CHUNK
    s.discard((0, 0))
    assert pool.spill_file_bytes == 6 * CHUNK, "not cut while slots are in use"
    s.close()
    assert pool.spill_file_bytes == 2 * CHUNK and os.fstat(pool.spill_fd).st_size == 2 * CHUNK
    again = SideStore(pool)
    for c in range(3):
        again.save((0, c), Source(), c * CHUNK, CHUNK)
    assert [again.get((0, c)) for c in range(3)] == [chunk(c) for c in range(3)]
    again.close()
    pool.close()


def test_sidestore_full_spill_raises_and_frees_the_slot(tmp_path, monkeypatch):
    pool = SlotPool(0, str(tmp_path), CHUNK)
    s = SideStore(pool)

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(SideStoreFull, match="No space left"):
        s.save((0, 0), Source(), 0, CHUNK)
    assert s.get((0, 0)) is None and s.spill_bytes == 0
    monkeypatch.undo()
    s.save((0, 1), Source(), CHUNK, CHUNK)
    assert pool.spill_file_bytes == CHUNK, "the failed save gave its slot back"
    s.close()
    pool.close()


def test_sidestore_unusable_spill_dir_is_side_store_full(tmp_path):
    pool = SlotPool(0, str(tmp_path / "missing"), CHUNK)
    s = SideStore(pool)
    with pytest.raises(SideStoreFull, match="cannot create a spill file"):
        s.save((0, 0), Source(), 0, CHUNK)
    s.close()


def test_sidestore_source_error_goes_to_the_caller_and_keeps_nothing(pool):
    s = SideStore(pool)
    with pytest.raises(OSError, match="bad sector"):
        s.save((0, 0), Source(OSError(errno.EIO, "bad sector")), 0, CHUNK)
    assert s.get((0, 0)) is None and s.memory_bytes == 0
    for c in range(2):
        s.save((0, c + 1), Source(), (c + 1) * CHUNK, CHUNK)
    assert s.memory_bytes == 2 * CHUNK and s.spill_bytes == 0, "the failed save's memory slot came back"
    s.close()


def test_sidestore_keys_lists_memory_first_and_honours_the_limit(tmp_path):
    pool = SlotPool(CHUNK, str(tmp_path), CHUNK)
    s = SideStore(pool)
    s.save((0, 9), Source(), 9 * CHUNK, CHUNK)
    s.save((0, 3), Source(), 3 * CHUNK, CHUNK)
    s.save((1, 4), Source(), 4 * CHUNK, CHUNK)
    assert s.keys(0, 1) == [9]
    assert s.keys(0, 10) == [3, 9]
    s.close()
    s.save((0, 5), Source(), 5 * CHUNK, CHUNK)  # a mutation finishing after the session ended is ignored
    assert s.get((0, 5)) is None
    nxt = SideStore(pool)
    nxt.save((0, 6), Source(), 6 * CHUNK, CHUNK)
    assert nxt.memory_bytes == CHUNK, "the late save gave its memory slot back"
    nxt.close()
    pool.close()
