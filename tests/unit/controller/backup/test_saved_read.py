"""Saved chunks read straight out of the side store's slots: the shared layout, the sequence
stamps, and the check that catches a slot taken again while it was read."""

import os

import pytest

from common.concordance import HEADER, SLOT_ENTRY, SLOT_INDEX_HEADER, SLOT_WORD, mapping_size, slots_offset
from controller.backup.local_read import LocalRead
from controller.backup.saved_read import SavedRead
from nbdplugin.chunkmap import DONE, SAVED, ChunkMap
from nbdplugin.device import Device
from nbdplugin.sidestore import UNPUBLISHED, SideStore
from nbdplugin.slots import SlotPool

CHUNK = 4096
CHUNKS = 8


class Served:
    """A device, its concordance and a side store as a subsystem's session holds them, with
    copy-before-write done by hand the way Session.save_before_mutation does it."""

    def __init__(self, tmp_path, memory_slots=2):
        self.path = tmp_path / "dev.img"
        self.tz = os.urandom(CHUNKS * CHUNK)
        self.path.write_bytes(self.tz)
        self.dev = Device("dev", str(self.path))
        self.map = ChunkMap(self.dev.size, CHUNK)
        self.pool = SlotPool(memory_slots * CHUNK, str(tmp_path), CHUNK)
        self.side = SideStore(self.pool)
        self.pool.claim(self.map.token)

    def info(self):
        return {"concordance": self.map.shared(), "device": self.dev.identity(), "side": self.pool.shared()}

    def overwrite(self, c, byte=0xEE):
        """A mutation of chunk C: saved first, published, SAVED, then written."""
        entry = self.side.save((0, c), self.dev, c * CHUNK, CHUNK)
        self.map.publish_slot(c, entry)
        self.map.states[c] = SAVED
        self.dev.write(bytes([byte]) * CHUNK, c * CHUNK)
        return entry

    def reuse_slot_of(self, c, other):
        """Chunk C given back (as a release or a session's end does) and its slot taken by the
        save of chunk OTHER, whose device bytes differ."""
        self.side.discard((0, c))
        self.dev.write(b"\x77" * CHUNK, other * CHUNK)
        self.side.save((1, other), self.dev, other * CHUNK, CHUNK)

    def close(self):
        self.side.close()
        self.pool.close()
        self.map.close()
        self.dev.close()


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path)
    yield s
    s.close()


def opened(info):
    local, why = LocalRead.open("dev", info, CHUNKS * CHUNK)
    assert local is not None, why
    return local


def test_concordance_layout_puts_slot_entries_aligned_after_the_states():
    for chunks in (1, 7, 8, 9, 1000):
        at = slots_offset(chunks)
        assert at % 8 == 0 and HEADER + chunks <= at < HEADER + chunks + 8
        assert mapping_size(chunks) == at + 16 * chunks


def test_chunkmap_states_end_where_the_states_end_and_entries_land_where_shared_says(served):
    m = served.map
    assert len(m.states) == CHUNKS and m.count_of(0) == CHUNKS
    m.publish_slot(5, (3, 99))
    with open(m.shared()["path"], "rb") as f:
        raw = f.read()
    assert SLOT_ENTRY.unpack_from(raw, m.shared()["slots"] + 16 * 5) == (3, 99)
    assert raw[HEADER:HEADER + CHUNKS] == bytes(CHUNKS), "an entry never shows as a state"


def test_slot_pool_stamps_every_take_with_a_new_number_in_the_index(tmp_path):
    pool = SlotPool(2 * CHUNK, str(tmp_path), CHUNK)
    first = pool.take_memory()
    again = pool.take_memory()
    pool.give([first[0]], [])
    retaken = pool.take_memory()
    spilled = pool.take_spill()
    assert first[0] == retaken[0] and first[1] < again[1] < retaken[1] < spilled[1]
    with open(pool.shared()["index"]["path"], "rb") as f:
        index = f.read()
    word = lambda g: SLOT_WORD.unpack_from(index, SLOT_INDEX_HEADER + 8 * g)[0]  # noqa: E731
    assert word(first[0]) == retaken[1], "the word holds the last take's number"
    assert word(pool.memory_slots + spilled[0]) == spilled[1], "spill slots follow the memory slots"
    pool.close()


def test_saved_chunks_are_read_out_of_memory_and_spill_slots_not_through_the_view(served):
    for c in (1, 2, 3):  # two memory slots, then the spill file
        served.overwrite(c)
    local = opened(served.info())
    view = memoryview(bytearray(CHUNKS * CHUNK))
    assert local.read(view, 0) == [], "every saved chunk came out of its slot"
    assert bytes(view) == served.tz
    assert (local.slots.memory_bytes, local.slots.spill_bytes) == (2 * CHUNK, CHUNK)
    assert local.fixed_bytes == 0
    local.close()


def test_saved_chunk_read_in_part_takes_the_part_of_its_slot(served):
    served.overwrite(2)
    local = opened(served.info())
    view = memoryview(bytearray(CHUNK))
    assert local.read(view, 2 * CHUNK - 100) == []
    assert bytes(view) == served.tz[2 * CHUNK - 100:3 * CHUNK - 100]
    local.close()


def test_slot_taken_again_between_the_copy_and_the_check_sends_the_chunk_through_the_view(served, monkeypatch):
    served.overwrite(2)
    served.overwrite(5)
    local = opened(served.info())
    real = SavedRead._read_slot

    def copy_then_reuse(fd, view, at):
        ok = real(fd, view, at)
        if at < CHUNK:  # chunk 2's slot (the first memory slot): taken again right after the copy
            served.reuse_slot_of(2, 6)
        return ok

    monkeypatch.setattr(SavedRead, "_read_slot", staticmethod(copy_then_reuse))
    view = memoryview(bytearray(CHUNKS * CHUNK))
    assert local.read(view, 0) == [(2 * CHUNK, CHUNK)], "chunk 2 is read again through the view"
    assert bytes(view[5 * CHUNK:6 * CHUNK]) == served.tz[5 * CHUNK:6 * CHUNK], "chunk 5 still from its slot"
    assert local.slots.memory_bytes == CHUNK and local.fixed_bytes == CHUNK
    local.close()


def test_slot_taken_again_before_the_read_is_not_read_at_all(served, monkeypatch):
    served.overwrite(2)
    served.reuse_slot_of(2, 6)
    served.map.states[2] = SAVED  # as if the release's state change were not seen yet
    local = opened(served.info())
    monkeypatch.setattr(SavedRead, "_read_slot", staticmethod(lambda fd, view, at: pytest.fail("read a retaken slot")))
    assert local.read(memoryview(bytearray(CHUNK)), 2 * CHUNK) == [(2 * CHUNK, CHUNK)]
    local.close()


def test_unpublished_and_released_chunks_go_through_the_view(served):
    served.side.save((0, 4), served.dev, 4 * CHUNK, CHUNK)
    served.map.publish_slot(4, UNPUBLISHED)
    served.map.states[4] = SAVED
    served.map.states[6] = DONE
    local = opened(served.info())
    assert local.read(memoryview(bytearray(CHUNKS * CHUNK)), 0) == [(4 * CHUNK, CHUNK), (6 * CHUNK, CHUNK)]
    local.close()


def test_spill_file_cut_short_sends_the_chunk_through_the_view(served):
    for c in (1, 2, 3):
        served.overwrite(c)
    local = opened(served.info())
    os.ftruncate(served.pool.spill_fd, 0)
    assert local.read(memoryview(bytearray(CHUNKS * CHUNK)), 0) == [(3 * CHUNK, CHUNK)]
    local.close()


def test_side_store_of_another_session_or_file_is_not_read_but_the_device_still_is(served, tmp_path):
    served.overwrite(2)
    info = served.info()
    served.pool.claim(b"\x01" * 16)  # another session opened since: its token is in the index
    local = opened(info)
    assert local.slots is None and "not this session's" in local.slots_why
    assert local.read(memoryview(bytearray(CHUNKS * CHUNK)), 0) == [(2 * CHUNK, CHUNK)]
    local.close()
    served.pool.claim(served.map.token)
    other = tmp_path / "other"
    other.write_bytes(bytes(CHUNK))
    side = {**info["side"], "memory": {**info["side"]["memory"], "path": str(other)}}
    local = opened({**info, "side": side})
    assert local.slots is None and "not the subsystem's" in local.slots_why
    local.close()
    local = opened({**info, "side": None})
    assert local.slots is None and "offers no side store" in local.slots_why
    local.close()


def test_older_subsystem_without_slot_entries_is_still_read_locally_its_saved_chunks_through_the_view(served):
    served.overwrite(3)
    info = served.info()
    conc = {k: v for k, v in info["concordance"].items() if k != "slots"}
    local = opened({"concordance": conc, "device": info["device"]})
    assert local.slots is None and "no slot entries" in local.slots_why
    view = memoryview(bytearray(CHUNKS * CHUNK))
    assert local.read(view, 0) == [(3 * CHUNK, CHUNK)]
    assert bytes(view[:3 * CHUNK]) == served.tz[:3 * CHUNK]
    local.close()
