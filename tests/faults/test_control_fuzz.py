"""The control socket under a hostile client: random bytes, JSON of every type in every field,
deep nesting, huge numbers, requests out of order across connections, floods of connections,
another user. Application: writers keep writing to the subsystem's exports throughout; none of
their writes fails or is lost. Backup: every request gets a reply with an error code of the
protocol, never `internal`; the subsystem keeps serving, and a backup taken afterwards exits 0
and restores exactly."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.protocol import ERRORS, OPS
from testkit.local_subsystem import LocalSubsystem

from faultkit import SUITE, Case, wait_ended_session
from helpers import make_image
from raw_control import RawControl

SIZE = 4 << 20
FIELDS = sorted({f for fields in OPS.values() for f in fields})
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def subsystem(tmp_path_factory):
    """One subsystem with writers on it for the whole module; its own ledger is a case too."""
    case = Case(tmp_path_factory.mktemp("fuzzed"), "the fuzzed subsystem")
    try:
        paths, initial = case.images(["a", "b"], SIZE)
        sub = case.serve("s", {"a": paths[0], "b": paths[1]}, "--chunk", "64K")
        load = case.load([(sub.socket, "a"), (sub.socket, "b")], paths, initial)
        yield case, sub, load
        # After all the fuzzing: the subsystem still backs up exactly, the writers lost nothing.
        done = case.backup(case.dir / "after.tzb", "-s", sub.control, load=load)
        assert done.returncode == 0, done.stderr
        case.finish()
        assert "internal error" not in sub.output()
    finally:
        case.close()
        SUITE.add(case.tally)


def checked(reply: dict) -> dict:
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert reply["error"] in ERRORS and reply["error"] != "internal", reply
        assert isinstance(reply["message"], str) and len(reply["message"]) < 1000
    return reply


class Client(RawControl):
    """A raw control connection that checks every reply, counts it in CASE's ledger, and lets
    its session go after each example."""

    def __init__(self, case, path: str):
        super().__init__(path)
        self.case = case

    def send(self, line: bytes) -> dict:
        self.case.tally.control_requests += 1
        return checked(self.send_line(line.replace(b"\n", b" ")))

    def rq(self, op: str, **fields) -> dict:
        return self.send(json.dumps({"op": op, **fields}).encode())

    def let_go(self) -> None:
        self.rq("abort")  # whatever an example opened or froze is aborted, so no writer waits on it


@pytest.fixture
def client(case, subsystem):
    c = Client(case, subsystem[1].control)
    c.rq("hello", version=1)
    yield c
    c.close()


@FUZZ
@given(line=st.binary(max_size=300))
def test_random_bytes(case, client, line):
    client.send(line)
    client.let_go()
    case.finished = True


@FUZZ
@given(op=st.sampled_from(sorted(OPS)), fields=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON,
                                                                max_size=3))
def test_any_json_in_any_field(case, client, op, fields):
    try:
        line = json.dumps({"op": op, **fields}).encode()
    except ValueError:
        return
    client.send(line)
    client.let_go()
    case.finished = True


@pytest.mark.parametrize("line", [
    b"[" * 200_000 + b"]" * 200_000,
    b'{"op":"open","track":{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
    b'{"op":"heartbeat","copier":' + b'{"x":' * 10_000 + b"1" + b"}" * 10_000 + b"}",
    b'{"op":"open","lease_ms":1' + b"0" * 400 + b"}",
    b'{"op":"open","lease_ms":1' + b"0" * 5000 + b"}",
    b'{"op":"freeze","deadline_ms":1e400}',
    b'{"op":"freeze","deadline_ms":-1}',
    b'{"op":"release","export":"a","ranges":[[0,' + b"9" * 30 + b"]]}",
    b'{"op":"saved","export":"a","limit":' + b"9" * 30 + b"}",
    b'{"op":' + b'"x' * 100_000 + b'"}',
    b'{"op":[]}',
    b'{"op":"open","exports":[[1]]}',
])
def test_deep_nesting_huge_numbers_and_wrong_types(case, client, line):
    reply = client.send(line)
    assert reply["error"] == "bad-message"
    assert client.rq("status")["ok"], "the connection stays usable"
    client.let_go()
    case.finish()


REQUESTS = st.one_of(
    st.just(("hello", {"version": 1})),
    st.builds(lambda lease: ("open", {"lease_ms": lease}), st.integers(100, 2000)),
    st.builds(lambda d: ("freeze", {"deadline_ms": d}), st.integers(20, 200)),
    st.just(("thaw", {})),
    st.builds(lambda e, first, n: ("release", {"export": e, "ranges": [[first, n]]}),
              st.sampled_from(["a", "b", "zz"]), st.integers(0, 70), st.integers(0, 70)),
    st.builds(lambda e: ("saved", {"export": e}), st.sampled_from(["a", "b"])),
    st.builds(lambda c: ("heartbeat", {"copier": c}), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)),
    st.just(("status", {})),
    st.just(("close", {})),
    st.just(("abort", {})),
)


@FUZZ
@given(steps=st.lists(st.tuples(st.integers(0, 1), REQUESTS), max_size=20))
def test_requests_out_of_order_across_two_connections(case, subsystem, steps):
    """Any order of any requests over two connections (freezes of at most 200 ms, leases of at
    most 2 s): every reply is a success or an error of the protocol, never `internal`."""
    sub = subsystem[1]
    clients = [Client(case, sub.control), Client(case, sub.control)]
    try:
        for who, (op, fields) in steps:
            clients[who].rq(op, **fields)
    finally:
        for c in clients:
            c.send(b'{"op":"abort"}')
            c.close()
    case.finished = True


def test_thaw_and_abort_after_another_connections_session_ended_say_no_session(case, subsystem):
    sub = subsystem[1]
    owner, other = Client(case, sub.control), Client(case, sub.control)
    try:
        for c in (owner, other):
            c.rq("hello", version=1)
        assert owner.rq("open", lease_ms=2000)["ok"] and owner.rq("freeze", deadline_ms=200)["ok"]
        assert owner.rq("thaw")["ok"]
        assert other.rq("thaw")["error"] == "not-owner", "while it is open, it is somebody else's"
        assert owner.rq("abort")["ok"]
        for op in ("thaw", "abort", "heartbeat", "close"):
            assert other.rq(op)["error"] == "no-session"
    finally:
        owner.close()
        other.close()
    case.finish()


def test_a_burst_of_connections_only_queues_while_a_backup_runs(case, subsystem):
    """600 clients connect at once, as `tzero status` does, while a backup runs: every one is
    answered (none sees EAGAIN), and the backup exits 0 and is exact."""
    fcase, sub, load = subsystem
    from controller.backup.control_client import ControlClient
    errors, answered = [], []

    def status():
        try:
            c = ControlClient(sub.control)
            try:
                answered.append(c.request("status")["ok"])
            finally:
                c.close()
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=status) for _ in range(600)]
    backup = threading.Thread(target=lambda: case.backup(case.dir / "b.tzb", "-s", sub.control, load=load))
    backup.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    backup.join(120)
    assert not errors and len(answered) == 600, errors[:3]
    assert len(case.pending) == 1, "the backup exited 0"
    case.finish()


def test_a_flood_of_idle_connections_cannot_lock_out_a_backup(case, subsystem):
    """300 connections that never say a word (more than the 256 served at once): the idle ones
    are let go after 5 s, and a backup queued behind them then exits 0 and is exact."""
    fcase, sub, load = subsystem
    idle = []
    try:
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sub.control)
            idle.append(s)
        done = case.backup(case.dir / "b.tzb", "-s", sub.control, load=load)
        assert done.returncode == 0, done.stderr
    finally:
        for s in idle:
            s.close()
    case.finish()


def test_status_prints_what_it_can_of_a_session_with_odd_counters(case, subsystem):
    sub = subsystem[1]
    c = Client(case, sub.control)
    try:
        c.rq("hello", version=1)
        assert c.rq("open", lease_ms=2000)["ok"] and c.rq("freeze", deadline_ms=200)["ok"] and c.rq("thaw")["ok"]
        assert c.rq("heartbeat", copier={"chunks_in_order": "many", "x": {"y": None}})["ok"]
        proc = case.tzero("status", sub.control)
        assert proc.returncode == 0 and proc.stderr == "" and "active" in proc.stdout
    finally:
        c.rq("abort")
        c.close()
    case.finish()


PEER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"op":"hello","version":1}\\n')
print(s.makefile("rb").readline().decode().strip())
"""


def test_another_user_is_denied_even_on_an_opened_up_socket(case):
    """The control socket and its directory chmod'ed open. Application: writes go on. Backup:
    uid 65534 gets one `denied` reply, root is served, and a backup exits 0 and is exact."""
    if os.geteuid() != 0:
        from faultkit import unavailable
        unavailable("a second uid needs root")
    where = tempfile.mkdtemp(prefix="tzero-shared-")
    os.chmod(where, 0o755)
    try:
        img = os.path.join(where, "a.img")
        initial = make_image(img, SIZE, seed=4)
        sub = LocalSubsystem(where, "s", {"a": img})
        try:
            load = case.load([(sub.socket, "a")], [img], [initial])
            os.chmod(sub.control, 0o666)
            peer = subprocess.run(["/usr/bin/python3", "-c", PEER, sub.control], user=65534, group=65534,
                                  capture_output=True, text=True, timeout=30)
            assert peer.stdout, peer.stderr
            assert json.loads(peer.stdout)["error"] == "denied"
            done = case.backup(case.dir / "b.tzb", "-s", sub.control, load=load)
            assert done.returncode == 0, done.stderr
            case.finish()
        finally:
            sub.stop()
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_the_fuzzing_left_no_session_behind(case, subsystem):
    """Last of the module: whatever the fuzzing opened has ended (aborted by it, or by its lease)."""
    sub = subsystem[1]
    if sub.status()["session"] is not None:
        wait_ended_session(sub)
    case.finish()
