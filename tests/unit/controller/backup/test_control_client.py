"""The control client and the consistency group against scripted control servers: a request
and its reply are one unit, whatever interrupts the wait for the reply."""

import json
import os
import signal
import socket
import threading

import pytest

from controller.backup import group as group_module
from controller.backup.control_client import ControlClient, NoReply
from controller.backup.group import ConsistencyGroup
from controller.errors import SessionAborted, SubsystemError


class Interrupted(BaseException):
    """What the test raises in the main thread, as Ctrl-C would."""


class ScriptedServer(threading.Thread):
    """A control socket that answers every request OK, except the ops in SILENT, which it
    swallows (setting `silenced`). Records every op it received, and whether the client hung up."""

    def __init__(self, path: str, silent=(), export="a"):
        super().__init__(daemon=True)
        self.path = path
        self.silent = set(silent)
        self.export = export
        self.ops: list[str] = []
        self.received: dict[str, threading.Event] = {}
        self.hung_up = threading.Event()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)

    def got(self, op: str) -> threading.Event:
        return self.received.setdefault(op, threading.Event())

    def reply_to(self, msg: dict) -> dict:
        op = msg["op"]
        if op == "hello":
            return {"ok": True, "version": 1, "exports": [{"name": self.export, "size": 65536}],
                    "chunk_size": 65536, "side_memory": 1 << 20, "nbd": {"socket": "/nowhere"}}
        if op == "open":
            return {"ok": True, "session": "0001", "views": {self.export: f"{self.export}@0001"}}
        if op == "freeze":
            return {"ok": True, "time_zero": 1.0}
        if op == "thaw":
            return {"ok": True, "pause_ms": {self.export: 0.1}}
        if op == "heartbeat":
            return {"ok": True, "phase": "active", "pressure": False, "side_bytes": 0, "chunks_cow": 0}
        return {"ok": True}

    def run(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # the test ended without connecting
        self.conn = conn
        with conn, conn.makefile("rb") as reader:
            try:
                self.serve(conn, reader)
            except OSError:
                pass  # the client reset the connection: a hang-up too
        self.hung_up.set()

    def serve(self, conn, reader):
        while line := reader.readline():
            msg = json.loads(line)
            self.ops.append(msg["op"])
            self.got(msg["op"]).set()
            if msg["op"] not in self.silent:
                conn.sendall(json.dumps(self.reply_to(msg)).encode() + b"\n")


@pytest.fixture
def servers(tmp_path):
    made = []

    def make(name, **kw):
        s = ScriptedServer(str(tmp_path / f"{name}.ctl"), export=name, **kw)
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.listener.close()


def test_group_interrupted_while_waiting_for_a_freeze_reply_aborts_without_blocking(servers):
    silent = servers("a", silent={"freeze"})
    answering = servers("b")
    group = ConsistencyGroup([silent.path, answering.path])
    group.connect()
    group.open()
    main = threading.get_ident()

    def interrupt_once_both_froze():
        # Both members have the freeze request: the group is now waiting for a's reply,
        # with b's reply unread. That is where the interruption lands.
        if silent.got("freeze").wait(10) and answering.got("freeze").wait(10):
            signal.pthread_kill(main, signal.SIGUSR1)

    def raise_interrupted(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    try:
        threading.Thread(target=interrupt_once_both_froze, daemon=True).start()
        with pytest.raises(Interrupted):
            group.freeze_and_thaw()
    finally:
        signal.signal(signal.SIGUSR1, previous)

    aborting = threading.Thread(target=group.abort, args=("interrupted",), daemon=True)
    aborting.start()
    aborting.join(10)
    assert not aborting.is_alive(), "abort blocked on a lock the interrupted freeze left held"
    # b's freeze reply was never read: b must have been told to abort, or its connection closed
    # (which aborts its session); never left believing its session is fine.
    assert "abort" in answering.ops or answering.hung_up.wait(5)


def test_client_after_an_unread_reply_never_reads_it_as_the_next_reply(servers):
    server = servers("a")
    client = ControlClient(server.path)
    call = client.send("freeze")
    call.cancel()  # as an exception between send and reply would
    with pytest.raises(SubsystemError, match="out of step"):
        client.request("thaw")
    client.close()
    assert server.hung_up.wait(5), "a connection out of step is closed (the subsystem aborts its session)"


def test_client_request_returns_its_own_reply(servers):
    server = servers("a")
    client = ControlClient(server.path)
    assert client.info["exports"] == [{"name": "a", "size": 65536}]
    assert client.request("freeze")["time_zero"] == 1.0
    assert client.request("thaw")["pause_ms"] == {"a": 0.1}
    client.close()
    assert server.ops == ["hello", "freeze", "thaw"]


def test_client_connect_to_a_missing_socket_is_one_line(tmp_path):
    with pytest.raises(SubsystemError, match="control socket .*nothere.ctl"):
        ControlClient(os.path.join(tmp_path, "nothere.ctl"))


def test_client_reply_not_in_time_gives_up_the_connection_naming_the_subsystem(servers):
    server = servers("a", silent={"heartbeat"})
    client = ControlClient(server.path, reply_timeout=0.2)
    with pytest.raises(NoReply, match=rf"{server.path}: heartbeat: no reply within 0.2 s"):
        client.request("heartbeat")
    with pytest.raises(SubsystemError, match="out of step .*no reply"):
        client.request("thaw")
    client.close()
    assert server.hung_up.wait(5), "given up: the subsystem sees its connection close"


def test_group_freeze_unanswered_past_the_deadline_fails_naming_it_and_aborts_the_others(servers, monkeypatch):
    monkeypatch.setattr(group_module, "FREEZE_REPLY_GRACE_S", 0.1)
    silent = servers("a", silent={"freeze"})
    answering = servers("b")
    group = ConsistencyGroup([silent.path, answering.path], deadline_ms=100)
    group.connect()
    group.open()
    with pytest.raises(SessionAborted, match=rf"{silent.path}: freeze: no reply within"):
        group.freeze_and_thaw()
    assert answering.got("abort").wait(5), "the member that froze is told to abort at once"


def test_group_abort_goes_to_every_member_at_once_and_a_silent_one_delays_nobody(servers):
    silent = servers("a", silent={"abort"})
    answering = servers("b")
    group = ConsistencyGroup([silent.path, answering.path], lease_ms=60000)  # 30 s for a silent member
    group.connect()
    group.open()
    aborting = threading.Thread(target=group.abort, args=("test",), daemon=True)
    aborting.start()
    assert answering.got("abort").wait(5) and silent.got("abort").wait(5)
    assert aborting.is_alive(), "b was told while a's reply is still awaited: not one after the other"
    silent.conn.shutdown(socket.SHUT_RDWR)  # a hangs up: the wait for its reply ends
    aborting.join(10)
    assert not aborting.is_alive()
