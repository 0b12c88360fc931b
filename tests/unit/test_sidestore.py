import errno
import os

import pytest

from nbdplugin.sidestore import SideStore, SideStoreFull

CHUNK = 4096


def test_sidestore_keeps_memory_first_then_spills(tmp_path):
    s = SideStore(2 * CHUNK, str(tmp_path), CHUNK)
    for c in range(5):
        s.put((0, c), bytes([c + 1]) * CHUNK)
    assert s.memory_bytes == 2 * CHUNK and s.spill_bytes == 3 * CHUNK
    assert all(s.get((0, c)) == bytes([c + 1]) * CHUNK for c in range(5))
    assert os.listdir(tmp_path) == [], "the spill file is unlinked at birth"
    assert s.pressure
    s.close()


def test_sidestore_discarded_spill_slot_is_reused(tmp_path):
    s = SideStore(0, str(tmp_path), CHUNK)
    s.put((0, 1), b"a" * CHUNK)
    s.discard((0, 1))
    s.put((0, 2), b"b" * 100)
    assert s.spill_bytes == 100 and s.get((0, 2)) == b"b" * 100 and s.get((0, 1)) is None
    assert s._next_slot == 1
    s.close()


def test_sidestore_full_spill_raises_and_frees_the_slot(tmp_path, monkeypatch):
    s = SideStore(0, str(tmp_path), CHUNK)

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(SideStoreFull, match="No space left"):
        s.put((0, 0), b"x" * CHUNK)
    assert s.get((0, 0)) is None and s.spill_bytes == 0
    s.close()


def test_sidestore_keys_lists_memory_first_and_honours_the_limit(tmp_path):
    s = SideStore(CHUNK, str(tmp_path), CHUNK)
    s.put((0, 9), b"m" * CHUNK)
    s.put((0, 3), b"s" * CHUNK)
    s.put((1, 4), b"o" * CHUNK)
    assert s.keys(0, 1) == [9]
    assert s.keys(0, 10) == [3, 9]
    s.close()
    s.put((0, 5), b"late")  # a mutation finishing after the session ended is ignored
    assert s.get((0, 5)) is None
