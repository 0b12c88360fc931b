"""The control socket of a real subsystem: malformed and out-of-order requests get an
error reply and never take the subsystem down."""

import json
import os
import stat

import pytest

from helpers import make_image
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
