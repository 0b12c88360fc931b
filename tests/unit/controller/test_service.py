"""Running as a service: sd_notify to a fake $NOTIFY_SOCKET, activated sockets, log lines."""

import os
import re
import socket
import sys

import pytest

from controller import service


@pytest.fixture
def notify_socket(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(10)
    yield s, path
    s.close()


def test_notify_sends_the_state_to_the_notify_socket(notify_socket):
    s, path = notify_socket
    assert service.notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": path})
    assert s.recv(1024) == b"READY=1\nSTATUS=serving"


def test_notify_reaches_an_abstract_socket_written_with_an_at_sign():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"tzero-test-notify-{os.getpid()}"
    s.bind("\0" + name)
    s.settimeout(10)
    try:
        assert service.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(1024) == b"STOPPING=1"
    finally:
        s.close()


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"},
                                     {"NOTIFY_SOCKET": "/nonexistent/notify"}])
def test_notify_without_a_reachable_manager_does_nothing(environ):
    assert service.notify("READY=1", environ) is False


def test_listen_fds_names_the_sockets_passed_to_this_process():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "3", "LISTEN_FDNAMES": "nbd:control:nbd"}
    assert service.listen_fds(env) == {"nbd": [3, 5], "control": [4]}


@pytest.mark.parametrize("env", [
    {"LISTEN_PID": "1", "LISTEN_FDS": "2"},  # meant for another process
    {"LISTEN_FDS": "2"},
    {"LISTEN_PID": "x", "LISTEN_FDS": "2"},
])
def test_listen_fds_ignores_sockets_meant_for_another_process(env):
    assert service.listen_fds(env) == {}


def test_listen_fds_without_names_are_unknown():
    assert service.listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"}) == {"unknown": [3, 4]}


def test_log_off_journald_has_a_timestamp_the_pid_and_the_level(capsys, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    service.log("warning", "nbdkit: python[2]: open: no export named 'x'")
    line = capsys.readouterr().err
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} tzero\[\d+\] WARNING: nbdkit: python\[2\]: "
                        r"open: no export named 'x'\n", line)


def test_log_under_journald_is_a_priority_prefix_and_the_message(capfd, monkeypatch):
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    service.log("error", "nbdkit exited with status 1")
    assert capfd.readouterr().err == "<3>nbdkit exited with status 1\n"
