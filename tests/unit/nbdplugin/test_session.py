"""The chunk state machine: copy-before-write, time-zero view reads and release, under
random interleavings (hypothesis drives which step runs next)."""

import errno
import os
import random
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from common.concordance import SLOT_ENTRY
from controller.backup.saved_read import SavedRead
from nbdplugin.chunkmap import DONE, PENDING, SAVED
from nbdplugin.device import Device
from nbdplugin.gate import WriteGate
from nbdplugin.session import ACTIVE, Session
from nbdplugin.sidestore import SideStore
from nbdplugin.slots import SlotPool
from nbdplugin.subsystem import Export

CHUNK = 4096
SIZE = 8 * CHUNK + 1024  # a short last chunk


def make_session(tmp_path, content: bytes, side_memory=1 << 20, chunk=CHUNK):
    path = tmp_path / "dev.img"
    path.write_bytes(content)
    export = Export(0, "dev", Device("dev", str(path)), WriteGate())
    side = SideStore(SlotPool(side_memory, str(tmp_path), chunk))
    s = Session("sid", [export], chunk, side, lease_s=60, owner=None)
    s.form_concordance()
    s.set_phase(ACTIVE)
    return s, export


class ChunkStates(RuleBasedStateMachine):
    """Writes are split into their two steps (save old chunks, then apply) so other
    operations can run between them, as they can between threads."""

    def __init__(self):
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        from pathlib import Path

        rnd = random.Random(7)
        self.time_zero = bytearray(rnd.randbytes(SIZE))
        self.current = bytearray(self.time_zero)
        # Three chunks of side memory: saves spill too, and slots are given back and taken again.
        self.session, self.export = make_session(Path(self.dir.name), bytes(self.time_zero), side_memory=3 * CHUNK)
        self.session.side.pool.claim(self.session.locality_token)
        self.pending_writes = []
        self.released = set()
        self.counter = 0

    def teardown(self):
        self.session.close()
        self.export.device.close()
        self.dir.cleanup()

    @rule(offset=st.integers(0, SIZE - 1), length=st.integers(1, 3 * CHUNK))
    def begin_write(self, offset, length):
        length = min(length, SIZE - offset)
        self.counter += 1
        self.session.save_before_mutation(self.export, offset, length)
        self.pending_writes.append((offset, bytes([self.counter % 251 + 1]) * length))

    @precondition(lambda self: self.pending_writes)
    @rule(pick=st.integers(0, 10))
    def finish_write(self, pick):
        offset, data = self.pending_writes.pop(pick % len(self.pending_writes))
        self.export.device.write(data, offset)
        self.current[offset:offset + len(data)] = data

    @rule(offset=st.integers(0, SIZE - 1), length=st.integers(1, 3 * CHUNK))
    def read_view(self, offset, length):
        length = min(length, SIZE - offset)
        m = self.session.maps[0]
        touched = set(m.span(offset, length))
        buf = bytearray(length)
        if touched & self.released:
            with pytest.raises(OSError) as e:
                self.session.read_view(self.export, buf, offset)
            assert e.value.errno == errno.EIO
        else:
            self.session.read_view(self.export, buf, offset)
            assert buf == self.time_zero[offset:offset + length]

    @rule(first=st.integers(0, 8), count=st.integers(0, 3))
    def release(self, first, count):
        count = min(count, 9 - first)
        self.session.release(self.export, first, count)
        self.released.update(range(first, first + count))

    @invariant()
    def states_agree_with_history(self):
        states = self.session.maps[0].states
        for c in range(len(states)):
            if c in self.released:
                assert states[c] == DONE
            elif states[c] == SAVED:
                assert self.session.side.get((0, c)) == bytes(self.time_zero[c * CHUNK:(c + 1) * CHUNK])
        # the device holds exactly what was applied
        with open(self.export.device.path, "rb") as f:
            assert f.read() == bytes(self.current)

    @invariant()
    def published_slot_of_every_saved_chunk_holds_its_time_zero_content(self):
        """What a controller on this host reads out of a SAVED chunk's slot (saved_read.py)."""
        m = self.session.maps[0]
        reader, why = SavedRead.open(self.session.side.pool.shared(), m.token, CHUNK)
        assert reader is not None, why
        entries = m.shared()["slots"]
        for c in range(m.count):
            if m.states[c] == SAVED:
                start, n = m.extent(c)
                buf = bytearray(n)
                assert reader.read(SLOT_ENTRY.unpack_from(m._shared, entries + 16 * c), memoryview(buf), 0)
                assert buf == self.time_zero[start:start + n]
        reader.close()

    @invariant()
    def side_store_holds_only_unreleased_saved_chunks(self):
        states = self.session.maps[0].states
        held = set(self.session.side.keys(0, 1 << 30))
        assert held == {c for c in range(len(states)) if states[c] == SAVED}


TestChunkStates = ChunkStates.TestCase
TestChunkStates.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_session_view_under_concurrent_writers_always_reads_time_zero(tmp_path):
    rnd = random.Random(3)
    initial = rnd.randbytes(64 * CHUNK)
    s, export = make_session(tmp_path, initial)
    stop = threading.Event()
    failures = []

    def writer(seed):
        r = random.Random(seed)
        while not stop.is_set():
            off = r.randrange(0, len(initial) - 2 * CHUNK)
            data = r.randbytes(r.randrange(1, 2 * CHUNK))
            s.save_before_mutation(export, off, len(data))
            export.device.write(data, off)

    def reader():
        r = random.Random(99)
        for _ in range(400):
            off = r.randrange(0, len(initial) - 3 * CHUNK)
            n = r.randrange(1, 3 * CHUNK)
            buf = bytearray(n)
            s.read_view(export, buf, off)
            if buf != initial[off:off + n]:
                failures.append(off)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        reader()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, f"view reads at {failures[:5]} did not return time-zero content"
    assert s.cow_chunks > 0


def test_session_abort_on_full_side_store_lets_the_write_through(tmp_path, monkeypatch):
    s, export = make_session(tmp_path, bytes(8 * CHUNK), side_memory=CHUNK)
    s.save_before_mutation(export, 0, 10)  # fits in memory
    monkeypatch.setattr(os, "pwrite", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    s.save_before_mutation(export, CHUNK, 10)  # must spill, cannot
    assert s.phase == "aborted" and "side store full" in s.abort_reason
    assert s.side.memory_bytes == 0, "an aborted session frees its side store"
    with pytest.raises(OSError):
        s.read_view(export, bytearray(10), 0)


def test_session_release_of_out_of_range_chunks_is_refused(tmp_path):
    s, export = make_session(tmp_path, bytes(SIZE))
    with pytest.raises(ValueError):
        s.release(export, 8, 5)
    assert s.maps[0].count_of(PENDING) == 9


def test_session_release_across_batches_discards_saved_chunks_and_counts_each_chunk_once(tmp_path):
    from nbdplugin.session import RELEASE_BATCH

    n = 2 * RELEASE_BATCH + 3
    size = n * CHUNK - 1000  # a short last chunk
    s, export = make_session(tmp_path, bytes(size), side_memory=(n + 1) * CHUNK)
    saved = [0, 1, RELEASE_BATCH - 1, RELEASE_BATCH, n - 1]  # neighbours, either side of an edge, the short one
    for c in saved:
        s.save_before_mutation(export, c * CHUNK, 1)
    s.release(export, 5, 3)  # an early release: these chunks are not counted twice below
    s.release(export, 0, n)
    m = s.maps[0]
    assert m.count_of(DONE) == n
    assert s.side.keys(0, n) == [] and s.side.memory_bytes == 0, "every saved copy went back to the pool"
    assert s.released_bytes == size
    s.release(export, 0, n)
    assert s.released_bytes == size, "released chunks are not counted again"
    buf = bytearray(CHUNK)
    with pytest.raises(OSError) as e:
        s.read_view(export, buf, RELEASE_BATCH * CHUNK)
    assert e.value.errno == errno.EIO
    s.close()
    export.device.close()


def test_session_batched_release_under_concurrent_writers_and_readers_keeps_time_zero(tmp_path):
    """Writers save and overwrite chunks while the copier's release runs a batch at a time in
    front of them, and views read what is not released yet: every view read is time zero, and
    at the end the side store holds exactly the chunks still SAVED (none of the released)."""
    from nbdplugin.session import RELEASE_BATCH

    n = 3 * RELEASE_BATCH
    rnd = random.Random(5)
    initial = rnd.randbytes(n * CHUNK)
    s, export = make_session(tmp_path, initial, side_memory=(n + 1) * CHUNK)
    m = s.maps[0]
    released_upto = [0]  # chunks below it are released or being released (set by the releasing thread)
    stop = threading.Event()
    failures = []

    def writer(seed):
        r = random.Random(seed)
        while not stop.is_set():
            off = r.randrange(0, (n - 2) * CHUNK)
            data = r.randbytes(r.randrange(1, 2 * CHUNK))
            s.save_before_mutation(export, off, len(data))
            export.device.write(data, off)

    def reader():
        r = random.Random(11)
        while not stop.is_set():
            first = released_upto[0] + RELEASE_BATCH // 2  # ahead of the release, never inside it
            if first + 2 >= n:
                return
            off = r.randrange(first * CHUNK, (n - 2) * CHUNK)
            buf = bytearray(r.randrange(1, 2 * CHUNK))
            try:
                s.read_view(export, buf, off)
            except OSError:  # EIO is right only if the release overtook the read meanwhile
                if off // CHUNK >= released_upto[0]:
                    failures.append(off)
                continue
            if buf != initial[off:off + len(buf)]:
                failures.append(off)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    try:
        while m.count_of(SAVED) < 8:  # let copy-before-write happen before releasing
            threading.Event().wait(0.001)
        for first in range(0, n, 16):
            released_upto[0] = first + 16  # before the release starts: a read below it may fail
            s.release(export, first, 16)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, f"view reads at {failures[:5]} did not return time-zero content"
    assert m.count_of(DONE) == n and s.side.keys(0, n) == [] and s.side.memory_bytes == 0
    assert s.cow_chunks >= 8
    s.close()
    export.device.close()
