"""Tracked ranges: only chunks inside designated datasets cost copy-before-write."""

from nbdplugin.chunkmap import DONE, PENDING, SAVED, ChunkMap
from nbdplugin.device import Device
from nbdplugin.gate import WriteGate
from nbdplugin.session import ACTIVE, Session
from nbdplugin.sidestore import SideStore
from nbdplugin.slots import SlotPool
from nbdplugin.subsystem import Export

CHUNK = 4096


def tracked_session(tmp_path, track):
    path = tmp_path / "dev.img"
    path.write_bytes(bytes(range(256)) * (16 * CHUNK // 256))
    export = Export(0, "dev", Device("dev", str(path)), WriteGate())
    s = Session("sid", [export], CHUNK, SideStore(SlotPool(1 << 20, str(tmp_path), CHUNK)), lease_s=60, owner=None,
                track=track)
    s.form_concordance()
    s.set_phase(ACTIVE)
    return s, export


def test_chunkmap_tracked_ranges_start_pending_and_the_rest_done():
    m = ChunkMap(16 * CHUNK, CHUNK, tracked=[(CHUNK + 512, 512), (8 * CHUNK, 3 * CHUNK)])
    assert [c for c in range(m.count) if m.states[c] == PENDING] == [1, 8, 9, 10]
    assert m.counts() == {"pending": 4, "saved": 0, "done": 0, "untracked": 12}


def test_chunkmap_without_tracked_ranges_tracks_every_chunk():
    m = ChunkMap(16 * CHUNK + 1, CHUNK)
    assert m.count_of(PENDING) == 17 and m.untracked == 0


def test_session_mutation_outside_tracked_ranges_saves_nothing(tmp_path):
    s, export = tracked_session(tmp_path, {"dev": [(4 * CHUNK, 2 * CHUNK)]})
    s.save_before_mutation(export, 0, 4 * CHUNK)
    s.save_before_mutation(export, 6 * CHUNK, 10 * CHUNK)
    assert s.cow_chunks == 0 and s.side.memory_bytes == 0
    s.save_before_mutation(export, 5 * CHUNK - 1, 2)  # straddles tracked chunks 4 and 5
    assert s.cow_chunks == 2 and s.maps[0].states[4] == SAVED and s.maps[0].states[5] == SAVED


def test_session_release_of_tracked_chunks_counts_them_done_not_untracked(tmp_path):
    s, export = tracked_session(tmp_path, {"dev": [(0, 2 * CHUNK)]})
    s.release(export, 0, 16)
    assert s.maps[0].count_of(DONE) == 16
    assert s.status()["exports"]["dev"] == {"pending": 0, "saved": 0, "done": 2, "untracked": 14}
    assert s.released_bytes == 2 * CHUNK, "untracked chunks were never owed, so releasing them copies nothing"


def test_chunkmap_shared_header_holds_the_locality_token_it_offers():
    from common.concordance import TOKEN_OFFSET, TOKEN_SIZE

    m = ChunkMap(8 * CHUNK, CHUNK, token=b"T" * TOKEN_SIZE)
    offer = m.shared()
    with open(offer["path"], "rb") as f:
        header = f.read(TOKEN_OFFSET + TOKEN_SIZE)
    assert header[TOKEN_OFFSET:] == b"T" * TOKEN_SIZE and offer["token"] == (b"T" * TOKEN_SIZE).hex()
    fresh = ChunkMap(8 * CHUNK, CHUNK)
    assert any(fresh.token) and fresh.token != ChunkMap(8 * CHUNK, CHUNK).token, "a fresh token per map by default"
    m.close()
    fresh.close()
