"""The subsystem's session requests without nbdkit: the flush that follows thaw."""

import errno
import threading

import pytest

from common.protocol import ProtocolError
from nbdplugin.chunkmap import SAVED
from nbdplugin.device import Device
from nbdplugin.gate import WriteGate
from nbdplugin.subsystem import Subsystem

CHUNK = 4096


class Conn:
    greeted = False


class GatedDevice(Device):
    """A device whose flush waits for RELEASE, then fails with FAIL if given."""

    def __init__(self, name, path):
        super().__init__(name, path)
        self.release = threading.Event()
        self.flushing = threading.Event()
        self.fail: OSError | None = None

    def flush(self):
        self.flushing.set()
        assert self.release.wait(10), "the test releases the flush"
        if self.fail:
            raise self.fail
        super().flush()


@pytest.fixture
def thawed(tmp_path):
    path = tmp_path / "dev.img"
    path.write_bytes(bytes(4 * CHUNK))
    dev = GatedDevice("dev", str(path))
    sub = Subsystem([dev], CHUNK, 1 << 20, str(tmp_path), {"socket": "/nowhere"})
    conn = Conn()
    sub.handle(conn, {"op": "hello", "version": 1})
    sub.handle(conn, {"op": "open"})
    sub.handle(conn, {"op": "freeze"})
    reply = sub.handle(conn, {"op": "thaw"})
    yield sub, conn, dev, reply
    dev.release.set()
    sub.session.flushed.wait(5)  # the flush thread is done with the device before it closes
    sub.slots.close()
    dev.close()


def test_subsystem_thaw_replies_before_the_flush_after_it_ends(thawed):
    sub, conn, dev, reply = thawed
    assert "pause_ms" in reply
    assert dev.flushing.wait(5), "the flush runs once the gates are open"
    assert sub.session.phase == "active" and not sub.session.flushed.is_set()


def test_subsystem_close_waits_for_the_flush_after_thaw(thawed):
    sub, conn, dev, _ = thawed
    closed = threading.Event()
    t = threading.Thread(target=lambda: (sub.handle(conn, {"op": "close"}), closed.set()))
    t.start()
    assert dev.flushing.wait(5)
    assert not closed.wait(0.2), "no backup completes before time zero is durable"
    dev.release.set()
    assert closed.wait(5)
    t.join()
    assert sub.last_status["phase"] == "closed"


def test_subsystem_failed_flush_after_thaw_aborts_and_close_says_so(thawed):
    sub, conn, dev, _ = thawed
    dev.fail = OSError(errno.EIO, "Input/output error")
    dev.release.set()
    assert sub.session.flushed.wait(5)
    assert sub.session.phase == "aborted" and "flush after thaw failed" in sub.session.abort_reason
    with pytest.raises(ProtocolError, match="flush after thaw failed"):
        sub.handle(conn, {"op": "close"})


class AdmittingGate(WriteGate):
    """A gate that runs WRITE the instant it opens: a writer admitted by the thaw, before the
    thawing thread takes another step."""

    write = None

    def thaw(self):
        closed_for = super().thaw()
        if self.write:
            self.write()
        return closed_for


def test_subsystem_write_admitted_by_the_thaw_saves_its_chunk_first(tmp_path):
    path = tmp_path / "dev.img"
    path.write_bytes(b"\x07" * (4 * CHUNK))
    sub = Subsystem([Device("dev", str(path))], CHUNK, 1 << 20, str(tmp_path), {"socket": "/nowhere"})
    export = sub.exports["dev"]
    export.gate = gate = AdmittingGate()
    conn = Conn()
    sub.handle(conn, {"op": "hello", "version": 1})
    sub.handle(conn, {"op": "open"})
    sub.handle(conn, {"op": "freeze", "flush": False})
    gate.write = lambda: sub.mutate(export, CHUNK, 10, export.device.write, b"\x00" * 10, CHUNK)
    sub.handle(conn, {"op": "thaw"})
    s = sub.session
    assert s.maps[0].states[1] == SAVED, "the first write after time zero must save the old chunk"
    view = bytearray(CHUNK)
    s.read_view(export, view, CHUNK)
    assert view == b"\x07" * CHUNK
    s.close()
    sub.slots.close()
    export.device.close()


class HookedLock:
    """A lock that runs AFTER_RELEASE (once) right after it is released: whatever another
    thread could do in that instant, done deterministically."""

    def __init__(self):
        self._lock = threading.Lock()
        self.after_release = None

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()
        hook, self.after_release = self.after_release, None
        if hook:
            hook()


def test_subsystem_open_answers_with_the_session_it_opened_even_if_another_replaced_it(tmp_path):
    path = tmp_path / "dev.img"
    path.write_bytes(bytes(4 * CHUNK))
    sub = Subsystem([Device("dev", str(path))], CHUNK, 1 << 20, str(tmp_path), {"socket": "/nowhere"})
    sub._lock = lock = HookedLock()
    first, second = Conn(), Conn()
    for conn in (first, second):
        sub.handle(conn, {"op": "hello", "version": 1})
    others = []

    def lease_expires_and_another_client_opens():
        sub.session.abort("lease expired")
        others.append(sub.handle(second, {"op": "open"}))

    lock.after_release = lease_expires_and_another_client_opens
    mine = sub.handle(first, {"op": "open"})
    assert others and others[0]["session"] != mine["session"], "the second client got a session of its own"
    assert sub.session.owner is second
    with pytest.raises(ProtocolError) as refused:
        sub.handle(first, {"op": "freeze"})
    assert refused.value.code == "not-owner", "the first client never holds the second's session"
    sub.session.close()
    sub.slots.close()
    sub.exports["dev"].device.close()


def test_subsystem_view_names_are_unguessable_and_only_the_owner_learns_them(thawed):
    sub, conn, dev, _ = thawed
    s = sub.session
    view = s.view_name("dev")
    name, _, token = view.partition("@")
    assert name == "dev" and len(token) == 32 and int(token, 16) >= 0, "128 random bits, in hex"
    assert sub.view_session(token) is s
    for guess in (s.sid, token[:-1], token.upper(), "", token + "0"):
        assert sub.view_session(guess) is None, guess
    assert token not in repr(sub.status()), "status is for anyone: it never carries the view token"
    assert s.view_token != s.sid and s.locality_token.hex() != token


def test_subsystem_open_since_counts_the_changes_a_session_ending_meanwhile_committed(tmp_path):
    path = tmp_path / "dev.img"
    path.write_bytes(bytes(4 * CHUNK))
    sub = Subsystem([Device("dev", str(path))], CHUNK, 1 << 20, str(tmp_path), {"socket": "/nowhere"})
    export = sub.exports["dev"]
    first, second = Conn(), Conn()
    for conn in (first, second):
        sub.handle(conn, {"op": "hello", "version": 1})

    def session(conn, **fields):
        reply = sub.handle(conn, {"op": "open", **fields})
        for op in ("freeze", "thaw"):
            sub.handle(conn, {"op": op, **({"flush": False} if op == "freeze" else {})})
        return reply

    base = session(first)["generation"]
    sub.handle(first, {"op": "close"})
    sub.mutate(export, CHUNK, 10, export.device.write, b"\x01" * 10, CHUNK)  # chunk 1, since the base
    session(first)  # a backup that will commit a generation after chunk 1 changed
    asked = sub.tracker.since

    def since_then_the_other_session_closes(name, generation):
        known = asked(name, generation)
        if sub.session is not None and sub.session.owner is first and sub.session.alive:
            sub.handle(first, {"op": "close"})  # the instant between the answer and the open
        return known

    sub.tracker.since = since_then_the_other_session_closes
    try:
        opened = session(second, since={"dev": base})
    except ProtocolError as e:
        assert e.code == "busy"
        sub.handle(first, {"op": "close"})
        opened = session(second, since={"dev": base})
    assert opened["changes"]["dev"]["known"]
    assert sub.handle(second, {"op": "changes", "export": "dev"})["ranges"] == [[1, 1]]
    sub.handle(second, {"op": "close"})
    sub.slots.close()
    export.device.close()


@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("op", ["thaw", "abort", "heartbeat", "release"])
def test_subsystem_requests_after_another_connections_session_ended_answer_no_session(tmp_path, how, op):
    path = tmp_path / "dev.img"
    path.write_bytes(bytes(4 * CHUNK))
    sub = Subsystem([Device("dev", str(path))], CHUNK, 1 << 20, str(tmp_path), {"socket": "/nowhere"})
    owner, other = Conn(), Conn()
    for conn in (owner, other):
        sub.handle(conn, {"op": "hello", "version": 1})
    sub.handle(owner, {"op": "open"})
    sub.handle(owner, {"op": "freeze"})
    sub.handle(owner, {"op": "thaw"})
    assert sub.session.flushed.wait(5)
    sub.handle(owner, {"op": how})
    fields = {"export": "dev", "ranges": [[0, 1]]} if op == "release" else {}
    with pytest.raises(ProtocolError) as refused:
        sub.handle(other, {"op": op, **fields})
    assert refused.value.code == "no-session", "the session ended: there is nobody's session to drive"
    with pytest.raises(ProtocolError) as owners:
        sub.handle(owner, {"op": op, **fields})
    assert owners.value.code == ("aborted" if how == "abort" else "no-session"), "its owner learns why it ended"
    sub.slots.close()
    sub.exports["dev"].device.close()
