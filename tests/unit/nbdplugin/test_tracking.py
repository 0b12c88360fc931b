"""One export's change map: marking, generations, a session's freeze, commit and merge-back;
and under random interleavings of writes, sessions, restarts and outside writes (hypothesis),
that it never loses a change and never claims to know what it may have missed."""

import os
import shutil
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from common.concordance import runs
from nbdplugin.changestate import StateDir
from nbdplugin.device import Device
from nbdplugin.tracking import KEEP_GENERATIONS, ChangeMap, Generation, as_int

CHUNK = 4096
CHUNKS = 12
SIZE = CHUNKS * CHUNK - 512  # a short last chunk


def changed(m: ChangeMap, generation: str) -> set[int]:
    """The chunks M says changed since GENERATION (no session frozen); AssertionError if unknown."""
    since = m.since(generation)
    assert since.known, since.reason
    union = as_int(m.bits) | (since.base or 0)
    return {c for c, b in enumerate(union.to_bytes(m.count, "little")) if b}


def test_tracking_mark_sets_every_chunk_a_mutation_touches():
    m = ChangeMap("a", SIZE, CHUNK)
    m.mark(CHUNK - 1, 2)
    m.mark(5 * CHUNK, 3 * CHUNK)
    m.mark(SIZE - 1, 1)
    m.mark(9 * CHUNK, 0)
    assert [c for c in range(CHUNKS) if m.bits[c]] == [0, 1, 5, 6, 7, CHUNKS - 1]


def test_tracking_mark_of_marked_chunks_writes_nothing():
    m = ChangeMap("a", SIZE, CHUNK)
    m.mark(0, SIZE)
    m.bits = bytes(m.bits)  # read-only: a write would raise TypeError
    m.mark(3 * CHUNK + 7, 100)
    m.mark(0, SIZE)
    assert m.bits == b"\x01" * CHUNKS


def test_tracking_mark_after_a_racing_swap_marks_the_new_map_too():
    m = ChangeMap("a", SIZE, CHUNK)
    old = m.bits

    class Swapping(bytearray):
        def __setitem__(self, key, value):  # the freeze swaps the map between read and write
            super().__setitem__(key, value)
            m.bits = fresh

    fresh = bytearray(CHUNKS)
    m.bits = Swapping(old)
    m.mark(2 * CHUNK, 1)
    assert fresh[2] == 1


def test_tracking_since_unknown_generation_says_why():
    m = ChangeMap("a", SIZE, CHUNK)
    assert "no completed backup" in m.since("g1").reason
    m.freeze()
    m.commit(Generation("g1", 1.0))
    since = m.since("g0")
    assert not since.known and "g0" in since.reason and "g1" in since.reason


def test_tracking_commit_makes_the_frozen_map_a_delta_and_merge_back_restores_it():
    m = ChangeMap("a", SIZE, CHUNK)
    m.freeze()
    m.commit(Generation("g1", 1.0))
    m.mark(0, 1)
    m.freeze()
    m.mark(CHUNK, 1)
    m.commit(Generation("g2", 2.0))
    assert changed(m, "g1") == {0, 1} and changed(m, "g2") == {1}
    m.mark(2 * CHUNK, 1)
    m.freeze()
    m.mark(3 * CHUNK, 1)
    m.merge_back()
    assert changed(m, "g2") == {1, 2, 3} and changed(m, "g1") == {0, 1, 2, 3}


def test_tracking_keeps_only_the_last_generations():
    m = ChangeMap("a", SIZE, CHUNK)
    for i in range(KEEP_GENERATIONS + 2):
        m.freeze()
        m.commit(Generation(f"g{i}", float(i)))
    assert not m.since("g0").known and not m.since("g1").known
    assert m.since("g2").known and m.since(f"g{KEEP_GENERATIONS + 1}").known


def test_tracking_invalid_map_makes_every_older_generation_unknown_until_a_new_one():
    m = ChangeMap("a", SIZE, CHUNK)
    m.freeze()
    m.commit(Generation("g1", 1.0))
    m.invalidate("the subsystem did not stop cleanly")
    assert m.since("g1").reason == "the subsystem did not stop cleanly"
    m.freeze()
    m.merge_back()
    assert not m.since("g1").known, "a failed session does not make the map whole again"
    m.freeze()
    m.commit(Generation("g2", 2.0))
    assert not m.since("g1").known and m.since("g2").known


def test_tracking_runs_lists_runs_of_set_bytes():
    bits = bytes([1, 1, 0, 0, 1, 0, 1, 1, 1])
    assert list(runs(bits)) == [(0, 2), (4, 1), (6, 3)]
    assert list(runs(bits, 1, 7)) == [(1, 1), (4, 1), (6, 1)]


@pytest.fixture
def device(tmp_path):
    path = tmp_path / "dev.img"
    path.write_bytes(bytes(SIZE))
    d = Device("dev", str(path))
    yield d
    d.close()


def restarted(state_path, device, stopped=True) -> ChangeMap:
    """The map as a new StateDir loads it after the old one saved it (stopped or not)."""
    state = StateDir(state_path)
    try:
        return state.load(device, CHUNK)
    finally:
        state.close()


def test_changestate_clean_stop_and_start_keeps_the_map(tmp_path, device):
    state = StateDir(tmp_path / "state")
    m = state.load(device, CHUNK)
    m.freeze()
    m.commit(Generation("g1", 1.0))
    m.mark(3 * CHUNK, 1)
    device.sync()
    state.save(m, device, "stopped")
    state.close()
    again = restarted(tmp_path / "state", device)
    assert changed(again, "g1") == {3}
    assert oct(os.stat(state.file_of(device)).st_mode & 0o777) == "0o600"


def test_changestate_map_never_stopped_is_unknown(tmp_path, device):
    state = StateDir(tmp_path / "state")
    m = state.load(device, CHUNK)
    m.freeze()
    m.commit(Generation("g1", 1.0))
    state.save(m, device, "running")  # what is on disk while it runs; then it is killed
    state.close()
    assert "did not stop cleanly" in restarted(tmp_path / "state", device).since("g1").reason


@pytest.mark.parametrize("outside", ["write", "truncate", "replace", "touch"])
def test_changestate_file_changed_while_not_served_is_unknown(tmp_path, device, outside):
    state = StateDir(tmp_path / "state")
    m = state.load(device, CHUNK)
    m.freeze()
    m.commit(Generation("g1", 1.0))
    state.save(m, device, "stopped")
    state.close()
    device.close()  # the server stopped: it let the device go (and its locks), so others may write it
    if outside == "write":
        with open(device.path, "r+b") as f:
            f.write(b"x")
    elif outside == "truncate":
        os.truncate(device.path, SIZE + CHUNK)
    elif outside == "replace":
        os.unlink(device.path)
        with open(device.path, "wb") as f:
            f.write(bytes(SIZE))
    else:
        os.utime(device.path, ns=(1, 1))
    served = Device("dev", device.path)
    try:
        since = restarted(tmp_path / "state", served).since("g1")
    finally:
        served.close()
    assert not since.known and device.path in since.reason or "size changed" in since.reason


def test_changestate_damaged_file_is_unknown_and_says_so(tmp_path, device):
    state = StateDir(tmp_path / "state")
    state.load(device, CHUNK)
    state.close()
    with open(state.file_of(device), "w") as f:
        f.write('{"format": "tzero-change-map", "version": 1, "chunks": 3')
    m = restarted(tmp_path / "state", device)
    m.freeze()
    m.commit(Generation("g1", 1.0))
    assert m.since("g1").known, "a new generation after a damaged file is counted afresh"


def test_changestate_chunk_size_change_makes_the_map_unknown(tmp_path, device):
    state = StateDir(tmp_path / "state")
    m = state.load(device, CHUNK)
    m.freeze()
    m.commit(Generation("g1", 1.0))
    state.save(m, device, "stopped")
    state.close()
    again = StateDir(tmp_path / "state")
    try:
        since = again.load(device, 2 * CHUNK).since("g1")
    finally:
        again.close()
    assert "chunk size changed" in since.reason


def test_changestate_one_device_cannot_be_claimed_twice(tmp_path, device):
    first = StateDir(tmp_path / "state")
    first.load(device, CHUNK)
    second = StateDir(tmp_path / "state")
    with pytest.raises(Exception, match="another subsystem serves"):
        second.load(device, CHUNK)
    first.close()


class Tracking(RuleBasedStateMachine):
    """The model: for every generation, the set of chunks truly changed since its time zero,
    and which generations the map may still claim to know (none from before an unclean stop
    or an outside write, and only the last KEEP_GENERATIONS)."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="tzero-tracking-")
        with open(os.path.join(self.dir, "dev.img"), "wb") as f:
            f.write(bytes(SIZE))
        self.device = Device("dev", os.path.join(self.dir, "dev.img"))
        self.state = StateDir(os.path.join(self.dir, "state"))
        self.map = self.state.load(self.device, CHUNK)
        self.truth: dict[str, set[int]] = {}  # generation -> chunks changed since its time zero
        self.order: list[str] = []  # generations, oldest first
        self.trusted: set[str] = set()  # generations whose changes the map must know
        self.frozen: set[int] | None = None  # chunks changed since a live session's time zero
        self.made = 0

    def teardown(self):
        self.state.close()
        self.device.close()
        shutil.rmtree(self.dir)

    @rule(first=st.integers(0, CHUNKS - 1), count=st.integers(1, 3))
    def write(self, first, count):
        chunks = set(range(first, min(first + count, CHUNKS)))
        self.map.mark(first * CHUNK, min(count * CHUNK, SIZE - first * CHUNK))
        for seen in self.truth.values():
            seen |= chunks
        if self.frozen is not None:
            self.frozen |= chunks

    @precondition(lambda self: self.frozen is None)
    @rule()
    def freeze(self):
        self.map.freeze()
        self.frozen = set()

    @precondition(lambda self: self.frozen is not None)
    @rule()
    def complete(self):
        self.made += 1
        g = f"g{self.made}"
        self.map.commit(Generation(g, float(self.made)))
        self.truth[g], self.frozen = self.frozen, None
        self.order.append(g)
        self.trusted.add(g)
        self.trusted &= set(self.order[-KEEP_GENERATIONS:])

    @precondition(lambda self: self.frozen is not None)
    @rule()
    def fail(self):
        self.map.merge_back()
        self.frozen = None

    @rule(clean=st.booleans(), outside_write=st.booleans())
    def restart(self, clean, outside_write):
        self.map.merge_back()  # a stop aborts a live session first
        self.frozen = None
        if clean:
            self.device.sync()
            self.state.save(self.map, self.device, "stopped")
        self.state.close()
        self.device.close()
        if outside_write:
            with open(os.path.join(self.dir, "dev.img"), "r+b") as f:
                f.write(b"\x01")
        if not clean or outside_write:
            self.trusted.clear()
        self.device = Device("dev", os.path.join(self.dir, "dev.img"))
        self.state = StateDir(os.path.join(self.dir, "state"))
        self.map = self.state.load(self.device, CHUNK)

    @precondition(lambda self: self.frozen is None)
    @invariant()
    def known_changes_are_exactly_the_true_ones(self):
        for g in self.order:
            since = self.map.since(g)
            assert since.known == (g in self.trusted), (g, since.reason)
            if since.known:
                assert changed(self.map, g) == self.truth[g]


Tracking.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_tracking_state_machine_never_loses_a_change = Tracking.TestCase


def session_since(tmp_path, m: ChangeMap, generation: str, track=None, keep=None):
    from nbdplugin.gate import WriteGate
    from nbdplugin.session import Session
    from nbdplugin.sidestore import SideStore
    from nbdplugin.slots import SlotPool
    from nbdplugin.subsystem import Export

    path = tmp_path / "dev.img"
    path.write_bytes(bytes(SIZE))
    export = Export(0, "dev", Device("dev", str(path)), WriteGate(), m)
    side = SideStore(SlotPool(1 << 20, str(tmp_path), CHUNK))
    s = Session("sid", [export], CHUNK, side, lease_s=60, owner=None, track={"dev": track} if track else None,
                tracking={0: m}, keep={"dev": keep or []}, generation="g2")
    s.prepare({0: m.since(generation)})
    return s


def test_session_since_narrows_at_open_and_adds_what_changed_before_time_zero(tmp_path):
    from nbdplugin.chunkmap import DONE, PENDING

    m = ChangeMap("dev", SIZE, CHUNK)
    m.freeze()
    m.commit(Generation("g1", 1.0))
    m.mark(1 * CHUNK, 1)
    m.mark(9 * CHUNK, 1)  # outside the tracked ranges
    s = session_since(tmp_path, m, "g1", track=[(0, 6 * CHUNK)], keep=[(5 * CHUNK, 10)])
    m.mark(3 * CHUNK, 1)  # between open and time zero
    s.form_concordance()
    states = s.maps[0].states
    assert [c for c in range(CHUNKS) if states[c] == PENDING] == [1, 3, 5]
    assert all(states[c] == DONE for c in range(CHUNKS) if c not in (1, 3, 5))
    assert [c for c in range(CHUNKS) if s.changed[0][c]] == [1, 3], "kept chunks are tracked, not changed"
    assert s.maps[0].counts()["untracked"] == CHUNKS - 3
    m.mark(4 * CHUNK, 1)  # after time zero
    s.abort("test")
    assert changed(m, "g1") == {1, 3, 4, 9}, "both frozen maps merged back"
    s.side.close()


def test_session_since_closed_commits_both_frozen_maps_as_one_delta(tmp_path):
    m = ChangeMap("dev", SIZE, CHUNK)
    m.freeze()
    m.commit(Generation("g1", 1.0))
    m.mark(2 * CHUNK, 1)
    s = session_since(tmp_path, m, "g1")
    m.mark(7 * CHUNK, 1)
    s.form_concordance()
    m.mark(8 * CHUNK, 1)
    s.close()
    assert changed(m, "g1") == {2, 7, 8} and changed(m, "g2") == {8}
