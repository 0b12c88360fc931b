"""Reading a view straight from the device: what is trusted, what is read again, when it gives up."""

import os
import platform

import nbd
import pytest

from controller.backup.local_read import LocalRead
from nbdplugin.chunkmap import DONE, SAVED, ChunkMap
from nbdplugin.device import Device

CHUNK = 4096
CHUNKS = 8


@pytest.fixture
def served(tmp_path):
    """A device and its concordance as a subsystem would offer them: (device, map, open info)."""
    path = tmp_path / "dev.img"
    path.write_bytes(os.urandom(CHUNKS * CHUNK))
    dev = Device("dev", str(path))
    m = ChunkMap(dev.size, CHUNK)
    yield dev, m, {"concordance": m.shared(), "device": dev.identity()}
    m.close()
    dev.close()


def opened(info, size=CHUNKS * CHUNK):
    local, why = LocalRead.open("dev", info, size)
    assert local is not None, why
    return local


def test_local_read_of_pending_chunks_is_the_device_and_needs_nothing_again(served):
    dev, m, info = served
    local = opened(info)
    view = memoryview(bytearray(3 * CHUNK))
    assert local.read(view, CHUNK) == []
    with open(dev.path, "rb") as f:
        assert bytes(view) == f.read()[CHUNK:4 * CHUNK]
    local.close()


def test_local_read_hands_back_chunks_no_longer_pending_merged_and_clipped(served):
    dev, m, info = served
    local = opened(info)
    m.states[2] = SAVED
    m.states[3] = DONE
    m.states[6] = SAVED
    view = memoryview(bytearray(6 * CHUNK - 200))
    assert local.read(view, CHUNK + 100) == [(2 * CHUNK, 2 * CHUNK), (6 * CHUNK, CHUNK - 100)]
    assert local.fixed_bytes == 3 * CHUNK - 100
    local.close()


def test_local_read_gives_up_once_the_session_stops_saving(served):
    dev, m, info = served
    local = opened(info)
    m.mark_dead()
    with pytest.raises(nbd.Error, match="session ended"):
        local.read(memoryview(bytearray(CHUNK)), 0)
    local.close()


def test_local_read_refuses_another_file_under_the_same_name(served, tmp_path):
    dev, m, info = served
    other = tmp_path / "other.img"
    other.write_bytes(bytes(CHUNKS * CHUNK))
    info = {**info, "device": {**info["device"], "path": str(other)}}
    local, why = LocalRead.open("dev", info, CHUNKS * CHUNK)
    assert local is None and "not the file the subsystem serves" in why


def test_local_read_refuses_a_concordance_of_another_size(served):
    dev, m, info = served
    local, why = LocalRead.open("dev", info, 2 * CHUNKS * CHUNK)
    assert local is None and "does not match" in why


def test_local_read_refuses_without_an_offer_or_off_x86_64(served, monkeypatch):
    dev, m, info = served
    assert LocalRead.open("dev", None, CHUNKS * CHUNK) == (None, "the subsystem offers no local reads")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    local, why = LocalRead.open("dev", info, CHUNKS * CHUNK)
    assert local is None and "x86-64" in why


def test_local_read_refuses_a_concordance_whose_token_is_not_the_sessions(served):
    """What a subsystem on another host looks like: its paths may name files here, even the
    very device with the same numbers, but not one that holds its session's token."""
    dev, m, info = served
    forged = {**info, "concordance": {**info["concordance"], "token": "ab" * 16}}
    local, why = LocalRead.open("dev", forged, CHUNKS * CHUNK)
    assert local is None and "another host" in why


def test_local_read_refuses_an_all_zero_token_which_any_zero_filled_file_holds(served, tmp_path):
    dev, m, info = served
    zeros = tmp_path / "zeros"
    zeros.write_bytes(bytes(4096))
    offer = {**info, "concordance": {**info["concordance"], "path": str(zeros), "token": "00" * 16}}
    local, why = LocalRead.open("dev", offer, CHUNKS * CHUNK)
    assert local is None and "no locality token" in why


def test_local_read_never_blocks_on_a_fifo_named_by_another_hosts_offer(served, tmp_path):
    dev, m, info = served
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    offer = {**info, "concordance": {**info["concordance"], "path": str(fifo)}}
    local, why = LocalRead.open("dev", offer, CHUNKS * CHUNK)  # opening it blocking would hang here
    assert local is None and "another host" in why
    offer = {**info, "device": {**info["device"], "path": str(fifo)}}
    local, why = LocalRead.open("dev", offer, CHUNKS * CHUNK)
    assert local is None and "not the file the subsystem serves" in why

