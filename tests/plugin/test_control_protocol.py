"""The control socket of a real subsystem: malformed and out-of-order requests get an
error reply and never take the subsystem down."""

import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading

import pytest

from testkit.local_subsystem import LocalSubsystem

from helpers import make_image, tzero
from raw_control import RawControl


@pytest.fixture
def subsystem(tmp_path, serve):
    make_image(tmp_path / "a.img", 1 << 20, seed=1)
    return serve("s", {"a": tmp_path / "a.img"})


@pytest.fixture
def ctl(subsystem):
    c = RawControl(subsystem.control)
    yield c
    c.close()


def test_control_socket_is_private(subsystem):
    assert stat.S_IMODE(os.stat(subsystem.control).st_mode) == 0o600


@pytest.mark.parametrize("line", [b"{", b"[]", b'{"op":"freeze","deadline_ms":"soon"}', b'{"op":42}', b"\x00\x01"])
def test_control_malformed_request_gets_bad_message_and_connection_survives(ctl, line):
    assert ctl.send_line(line)["error"] == "bad-message"
    assert ctl.rq("hello", version=1)["ok"]


def test_control_requests_before_hello_are_refused(ctl):
    assert ctl.rq("open")["error"] == "hello-first"


def test_control_unsupported_version_is_refused(ctl):
    assert ctl.rq("hello", version=99)["error"] == "bad-version"


@pytest.mark.parametrize("op", ["freeze", "thaw", "heartbeat", "close"])
def test_control_session_requests_without_a_session_are_refused(ctl, op):
    ctl.rq("hello", version=1)
    assert ctl.rq(op)["error"] == "no-session"


def test_control_out_of_order_requests_get_wrong_phase(ctl):
    ctl.rq("hello", version=1)
    assert ctl.rq("open")["ok"]
    assert ctl.rq("thaw")["error"] == "wrong-phase"
    assert ctl.rq("release", export="a", ranges=[[0, 1]])["error"] == "wrong-phase"
    assert ctl.rq("freeze")["ok"]
    assert ctl.rq("freeze")["error"] == "wrong-phase"
    assert ctl.rq("thaw")["ok"]
    assert ctl.rq("release", export="a", ranges=[[0, "x"]])["error"] == "bad-message"
    assert ctl.rq("release", export="a", ranges=[[0, 10 ** 6]])["error"] == "bad-message"
    assert ctl.rq("release", export="zz", ranges=[[0, 1]])["error"] == "unknown-export"
    assert ctl.rq("close")["ok"]


def test_control_unknown_export_in_open_is_refused(ctl):
    ctl.rq("hello", version=1)
    reply = ctl.rq("open", exports=["a", "nope"])
    assert reply["error"] == "unknown-export" and "nope" in reply["message"]


def test_control_second_session_is_busy_and_others_cannot_drive_it(subsystem, ctl):
    ctl.rq("hello", version=1)
    assert ctl.rq("open")["ok"]
    other = RawControl(subsystem.control)
    try:
        other.rq("hello", version=1)
        assert other.rq("open")["error"] == "busy"
        assert other.rq("freeze")["error"] == "not-owner"
        assert other.rq("status")["session"]["phase"] == "open"
    finally:
        other.close()


def test_control_overlong_line_is_refused_and_subsystem_keeps_serving(subsystem, ctl):
    try:  # the server stops reading after 1 MiB, so the rest may not go out
        ctl.sock.sendall(b'{"op":"status","x":"' + b"y" * (2 << 20) + b'"}\n')
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = json.loads(ctl.reader.readline())
    assert reply["error"] == "bad-message" and "too long" in reply["message"]
    again = RawControl(subsystem.control)
    try:
        assert again.rq("hello", version=1)["ok"]
    finally:
        again.close()


@pytest.mark.parametrize("track, code", [
    ({"nope": [[0, 512]]}, "unknown-export"),
    ({"a": [[0, 0]]}, "bad-message"),
    ({"a": [[-512, 1024]]}, "bad-message"),
    ({"a": [[0, (1 << 20) + 512]]}, "bad-message"),
    ({"a": [[0, "x"]]}, "bad-message"),
    ({"a": {"0": 1}}, "bad-message"),
])
def test_control_open_with_bad_track_ranges_is_refused(ctl, track, code):
    ctl.rq("hello", version=1)
    assert ctl.rq("open", track=track)["error"] == code
    assert ctl.rq("status")["session"] is None, "a refused open leaves no session behind"


def test_control_open_with_track_reports_untracked_chunks_and_copier_stats(ctl):
    ctl.rq("hello", version=1)
    assert ctl.rq("open", track={"a": [[65536, 65536]]})["ok"]
    assert ctl.rq("freeze")["ok"] and ctl.rq("thaw")["ok"]
    assert ctl.rq("heartbeat", copier={"chunks_in_order": 3})["ok"]
    session = ctl.rq("status")["session"]
    assert session["exports"]["a"] == {"pending": 1, "saved": 0, "done": 0, "untracked": 15}
    assert session["copier"] == {"chunks_in_order": 3}
    assert ctl.rq("close")["ok"]


@pytest.mark.parametrize("line", [
    b'{"op": []}',
    b'[' * 100_000 + b']' * 100_000,
    b'{"op":"open","exports":[[1]]}',
    b'{"op":"open","lease_ms":1' + b'0' * 400 + b'}',
    b'{"op":"freeze","deadline_ms":1' + b'0' * 400 + b'}',
])
def test_control_wrong_types_deep_nesting_and_huge_numbers_get_bad_message_never_internal(ctl, line):
    ctl.rq("hello", version=1)
    if b"deadline_ms" in line:
        assert ctl.rq("open")["ok"]
    reply = ctl.send_line(line)
    assert reply["error"] == "bad-message", reply
    assert ctl.rq("status")["ok"], "the connection stays usable"


def test_control_burst_of_connections_only_queues(subsystem):
    """300 clients connect at once (each as tzero status does, with a timeout, which makes a
    unix-socket connect non-blocking): every one gets its answer, none EAGAIN."""
    from controller.backup.control_client import ControlClient

    errors, answered = [], []

    def client():
        try:
            c = ControlClient(subsystem.control)
            try:
                answered.append(c.request("status")["ok"])
            finally:
                c.close()
        except Exception as e:  # collected, the test reports them
            errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(answered) == 300


PEER = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"op":"hello","version":1}\\n')
print(s.makefile("rb").readline().decode().strip())
"""


@pytest.fixture
def shared_dir():
    """A directory every user may enter (pytest's own are the owner's only)."""
    where = tempfile.mkdtemp(prefix="tzero-shared-")
    os.chmod(where, 0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def test_control_peer_of_another_uid_is_denied_and_root_is_served(shared_dir):
    """The socket and its directory opened up (a careless chmod): the peer check alone stands."""
    if os.geteuid() != 0:
        pytest.skip("a second uid needs root")
    make_image(os.path.join(shared_dir, "a.img"), 1 << 20, seed=1)
    sub = LocalSubsystem(shared_dir, "s", {"a": os.path.join(shared_dir, "a.img")})
    try:
        os.chmod(sub.control, 0o666)
        other = subprocess.run(["/usr/bin/python3", "-c", PEER, sub.control], user=65534, group=65534,
                               capture_output=True, text=True, timeout=30)
        assert other.returncode == 0, other.stderr
        reply = json.loads(other.stdout)
        assert reply["ok"] is False and reply["error"] == "denied" and "65534" in reply["message"]
        root = subprocess.run(["/usr/bin/python3", "-c", PEER, sub.control], capture_output=True, text=True,
                              timeout=30)
        assert json.loads(root.stdout)["ok"] is True
    finally:
        sub.stop()


def test_control_status_prints_what_it_can_when_a_controller_reported_odd_counters(subsystem, ctl):
    ctl.rq("hello", version=1)
    assert ctl.rq("open")["ok"] and ctl.rq("freeze")["ok"] and ctl.rq("thaw")["ok"]
    assert ctl.rq("heartbeat", copier={"chunks_in_order": "many", "surprise": {"x": 1}})["ok"]
    proc = tzero("status", subsystem.control, check=False)
    assert proc.returncode == 0 and proc.stderr == ""
    assert "session" in proc.stdout and "active" in proc.stdout
