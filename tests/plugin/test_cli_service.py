"""The tool as admins meet it: tzero serve announces itself and talks to systemd (a fake
NOTIFY_SOCKET, activated sockets), logs a client's mistake in one line, backups show progress
(JSON lines on a file descriptor, a bar on a terminal) and carry a label ls shows, and
`make install` puts everything in place."""

import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys

import nbd
import pytest

from helpers import REPO, TZERO, documented_fields, last_json, make_image, tzero

MiB = 1 << 20


def serve_process(tmp_path, *args, env=None, **kw):
    return subprocess.Popen([*TZERO, "serve", *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kw)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.fixture
def notify(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(60)
    yield s, str(tmp_path / "notify")
    s.close()


def test_serve_when_ready_prints_every_uri_and_tells_systemd_ready_then_stopping(tmp_path, notify):
    listener, path = notify
    make_image(tmp_path / "a.img", 4 * MiB, seed=1)
    make_image(tmp_path / "b.img", 2 * MiB, seed=2)
    proc = serve_process(tmp_path, "--control", tmp_path / "s.ctl", "--socket", tmp_path / "s.sock",
                         f"a={tmp_path / 'a.img'}", f"b={tmp_path / 'b.img'}", env={"NOTIFY_SOCKET": path})
    try:
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=tzero serve: ready; control socket ")
        assert f"MAINPID={proc.pid}" in ready
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///b?socket={tmp_path / 's.sock'}")
        assert h.get_size() == 2 * MiB, "READY=1 came once the exports serve"
        h.shutdown()
    finally:
        code, out, err = stop(proc)
    assert listener.recv(4096) == b"STOPPING=1"
    assert code == 0 and out.splitlines() == [
        f"tzero serve: ready; control socket {tmp_path / 's.ctl'}",
        f"  export a: 'nbd+unix:///a?socket={tmp_path / 's.sock'}'  ({tmp_path / 'a.img'}, 4 MiB)",
        f"  export b: 'nbd+unix:///b?socket={tmp_path / 's.sock'}'  ({tmp_path / 'b.img'}, 2 MiB)",
    ]
    assert err.rstrip().endswith("INFO: stopped")


def test_serve_logs_a_clients_wrong_export_as_one_warning_without_a_traceback(tmp_path, serve):
    make_image(tmp_path / "a.img", MiB, seed=1)
    s = serve("s1", {"a": tmp_path / "a.img"})
    h = nbd.NBD()
    h.set_export_name("nope")
    with pytest.raises(nbd.Error):
        h.connect_unix(s.socket)
    del h
    s.stop()
    log = s.output()
    assert "Traceback" not in log and "File \"" not in log
    warnings = [line for line in log.splitlines() if "no export named 'nope'" in line]
    assert warnings and all(" WARNING: nbdkit: python" in line and ": open: no export named 'nope'" in line
                            for line in warnings)


ACTIVATE = """\
import os, sys
nbd_fd, control_fd = int(sys.argv[1]), int(sys.argv[2])
os.dup2(nbd_fd, 3)
os.dup2(control_fd, 4)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="nbd:control")
os.execv(sys.executable, [sys.executable, "-m", "controller", "serve", *sys.argv[3:]])
"""


def listening(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(16)
    return s


def test_serve_takes_activated_sockets_and_leaves_them_to_their_owner(tmp_path, notify):
    """As systemd would: the NBD and control sockets made beforehand, passed as fds 3 and 4."""
    listener, path = notify
    make_image(tmp_path / "a.img", MiB, seed=3)
    nbd_sock, control = listening(tmp_path / "act.sock"), listening(tmp_path / "act.ctl")
    proc = subprocess.Popen([sys.executable, "-c", ACTIVATE, str(nbd_sock.fileno()), str(control.fileno()),
                             f"a={tmp_path / 'a.img'}"], cwd=REPO, pass_fds=(nbd_sock.fileno(), control.fileno()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NOTIFY_SOCKET": path})
    nbd_sock.close()
    control.close()
    try:
        assert listener.recv(4096).startswith(b"READY=1")
        status = last_json(tzero("status", tmp_path / "act.ctl", "--json").stdout)
        assert status["exports"] == [{"name": "a", "size": MiB}]
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///a?socket={tmp_path / 'act.sock'}")
        assert h.pread(16, 65536) == (tmp_path / "a.img").read_bytes()[65536:65552]
        h.shutdown()
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert f"control socket {tmp_path / 'act.ctl'}" in out and f"socket={tmp_path / 'act.sock'}" in out
    assert (tmp_path / "act.sock").exists() and (tmp_path / "act.ctl").exists(), "the activator's to remove"


@pytest.fixture
def subsystem(tmp_path, serve):
    make_image(tmp_path / "vm1.img", 48 * MiB, seed=4)
    make_image(tmp_path / "db.img", 16 * MiB, seed=5)
    return serve("s1", {"vm1": tmp_path / "vm1.img", "db": tmp_path / "db.img"})


def test_backup_progress_on_a_file_descriptor_is_json_lines_monotonic_to_100(tmp_path, subsystem):
    r, w = os.pipe()
    try:
        proc = subprocess.run([*TZERO, "backup", "-s", subsystem.control, "-o", str(tmp_path / "b.tzb"), "--json",
                               "--progress-fd", str(w), "--progress-interval", "1ms", "--label", "nightly",
                               "--note", "before the upgrade"],
                              cwd=REPO, capture_output=True, text=True, pass_fds=(w,), timeout=300)
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        lines = [json.loads(line) for line in f]
    assert proc.returncode == 0, proc.stderr
    assert len(lines) >= 2 and lines[-1]["percent"] == 100.0 and lines[-1]["done_bytes"] == 64 * MiB
    assert [x["done_bytes"] for x in lines] == sorted(x["done_bytes"] for x in lines)
    assert {x["dataset"] for x in lines} <= {"vm1", "db"} and lines[-1]["dataset"] == "db"
    summary = last_json(proc.stdout)
    assert set(summary) == documented_fields("tzero backup --json")
    assert (summary["label"], summary["note"]) == ("nightly", "before the upgrade")
    listing = last_json(tzero("ls", tmp_path, "--json").stdout)
    assert [(b["label"], b["note"], [d["name"] for d in b["datasets"]]) for b in listing["backups"]] == \
        [("nightly", "before the upgrade", ["vm1", "db"])]


def test_backup_on_a_terminal_draws_a_bar_and_prints_a_human_summary(tmp_path, subsystem):
    master, slave = pty.openpty()
    proc = subprocess.Popen([*TZERO, "backup", "-s", subsystem.control, "-o", str(tmp_path / "b.tzb"),
                             "--progress-interval", "1ms"], cwd=REPO, stdout=subprocess.PIPE, stderr=slave,
                            text=True)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=300)
    os.close(master)
    screen = seen.decode(errors="replace")
    assert proc.returncode == 0, screen
    assert "\r" in screen and "tzero backup 100% |" in screen and "64 MiB of 64 MiB" in screen
    assert out.startswith("backup of vm1, db at time zero ") and " written (" in out and " MiB" in out


@pytest.fixture
def installed(tmp_path_factory):
    if shutil.which("make") is None:
        pytest.skip("make is needed")
    root = tmp_path_factory.mktemp("root")
    proc = subprocess.run(["make", "-s", "install", f"DESTDIR={root}", "PREFIX=/usr/local"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def test_make_install_puts_the_wrapper_pages_completion_and_units_in_place(installed):
    usr = installed / "usr" / "local"
    out = subprocess.run([str(usr / "bin" / "tzero"), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("tzero ")
    assert (usr / "share" / "man" / "man1" / "tzero-backup.1").exists()
    assert (usr / "share" / "bash-completion" / "completions" / "tzero").exists()
    units = usr / "lib" / "systemd" / "system"
    assert sorted(os.listdir(units)) == ["tzero-serve-control@.socket", "tzero-serve.service",
                                         "tzero-serve@.service", "tzero-serve@.socket"]
    service = (units / "tzero-serve@.service").read_text()
    assert "ExecStart=/usr/local/bin/tzero serve" in service and "@BINDIR@" not in service
    assert "Type=notify" in service


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze (systemd) is needed")
def test_systemd_units_verify(tmp_path):
    for unit in os.listdir(os.path.join(REPO, "systemd")):
        with open(os.path.join(REPO, "systemd", unit)) as f:
            text = f.read().replace("@BINDIR@", os.path.dirname(TZERO[0]))
        (tmp_path / unit).write_text(text)
    names = ["tzero-serve.service", "tzero-serve@s1.service", "tzero-serve@s1.socket", "tzero-serve-control@s1.socket"]
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *names], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
