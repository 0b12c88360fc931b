"""Failures: the backup breaks loudly, the application never does."""

import os
import signal
import subprocess
import threading
import time

import pytest

from controller.backup.sink import SINK_BYTES

from control_proxy import ControlProxy
from helpers import REPO, TZERO, make_image, tzero, wait_for
from raw_control import RawControl

SIZE = 4 << 20
# A backup whose stream nobody reads stalls once its writer thread holds SINK_BYTES queued
# (controller/backup/sink.py), a few reads later: writes to the last 4 MiB of an image this
# large still find chunks the stalled copy has not reached.
STALL_SIZE = 4 * SINK_BYTES
STALL_AT = STALL_SIZE - (4 << 20)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tzero: "), f"expected one tzero: line, got {stderr!r}"
    return lines[0]


@pytest.fixture
def sub(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=5)
    return serve("s", {"a": tmp_path / "a.img"}, "--chunk", "64K")


def last_session(sub) -> dict:
    return wait_for(lambda: sub.status()["last_session"], 10, "the session to end")


def test_controller_killed_mid_session_writes_go_on_and_session_ends(tmp_path, serve):
    make_image(tmp_path / "a.img", STALL_SIZE, seed=5)
    sub = serve("s", {"a": tmp_path / "a.img"}, "--chunk", "64K")
    h = sub.connect("a")
    with subprocess.Popen([*TZERO, "backup", "-s", sub.control, "-o", "-", "--no-progress", "--host-memory", "8M"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO) as proc:
        # Nobody reads the pipe, so the controller stalls mid-copy with its session open.
        wait_for(lambda: (sub.status()["session"] or {}).get("phase") == "active", 30, "an active session")
        for i in range(8):
            h.pwrite(b"w" * 4096, STALL_AT + i * 65536)
        assert sub.status()["session"]["side_memory_bytes"] > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ended = last_session(sub)
    assert ended["phase"] == "aborted" and "control connection closed" in ended["abort_reason"]
    assert ended["side_memory_bytes"] == 0 and ended["side_spill_bytes"] == 0
    h.pwrite(b"after" * 100, 0)
    assert h.pread(500, 0) == b"after" * 100
    assert h.pread(4096, STALL_AT + 7 * 65536) == b"w" * 4096
    h.shutdown()


def test_freeze_deadline_expiry_releases_writers_and_fails_the_session(sub):
    ctl = RawControl(sub.control)
    h = sub.connect("a")
    try:
        ctl.rq("hello", version=1)
        ctl.rq("open", lease_ms=60000)
        assert ctl.rq("freeze", deadline_ms=300)["ok"]
        started = time.monotonic()
        h.pwrite(b"z" * 4096, 0)  # held by the gate until the deadline strikes
        held = time.monotonic() - started
        assert 0.1 < held < 10, f"the write was held {held:.3f} s"
        reply = ctl.rq("thaw")
        assert reply["error"] == "aborted" and "freeze deadline" in reply["message"]
        assert h.pread(4096, 0) == b"z" * 4096
    finally:
        ctl.close()
        h.shutdown()
    assert "freeze deadline" in last_session(sub)["abort_reason"]


def test_silent_controller_loses_its_session_when_the_lease_runs_out(sub):
    ctl = RawControl(sub.control)
    try:
        ctl.rq("hello", version=1)
        ctl.rq("open", lease_ms=300)
        ctl.rq("freeze")
        ctl.rq("thaw")
        ended = last_session(sub)
        assert ended["phase"] == "aborted" and "lease expired" in ended["abort_reason"]
        assert ctl.rq("heartbeat")["error"] in ("aborted", "no-session")
    finally:
        ctl.close()


@pytest.fixture
def tiny_side_dir(tmp_path):
    """A 256 KiB tmpfs for the spill file (needs root and mount)."""
    d = tmp_path / "tiny"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)]).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_full_spill_folder_aborts_the_backup_and_writes_succeed_intact(tmp_path, serve, tiny_side_dir):
    initial = make_image(tmp_path / "a.img", STALL_SIZE, seed=6)
    sub = serve("s", {"a": tmp_path / "a.img"}, "--chunk", "64K", "--side-memory", "64K", "--side-dir", tiny_side_dir)
    h = sub.connect("a")
    expected = bytearray(initial)
    with subprocess.Popen([*TZERO, "backup", "-s", sub.control, "-o", "-", "--no-progress", "--host-memory", "8M"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO) as proc:
        wait_for(lambda: (sub.status()["session"] or {}).get("phase") == "active", 30, "an active session")
        for c in range(40):  # 40 chunks of old data: far beyond 64K of memory plus 256K of spill
            at = STALL_AT + c * 65536 + 512
            block = bytes([c + 20]) * 4096
            h.pwrite(block, at)
            expected[at:at + 4096] = block
        ended = last_session(sub)
        assert ended["phase"] == "aborted" and "side store full" in ended["abort_reason"]
        drained = threading.Thread(target=proc.stdout.read)
        drained.start()
        status = proc.wait(60)
        drained.join()
        stderr = proc.stderr.read().decode()
    assert status == 3, "a session aborted: another try may succeed"
    assert "side store full" in one_line(stderr) or "abandoned" in one_line(stderr)
    assert h.pread(STALL_SIZE, 0) == bytes(expected), "every application write landed, nothing else changed"
    h.shutdown()


def test_backup_of_a_missing_subsystem_fails_with_one_line(tmp_path):
    proc = tzero("backup", "-s", tmp_path / "none.ctl", "-o", tmp_path / "out.tzb", check=False)
    assert proc.returncode == 3 and "none.ctl" in one_line(proc.stderr)
    assert not os.path.exists(tmp_path / "out.tzb") and not os.path.exists(tmp_path / "out.tzb.partial")


def test_backup_refuses_to_overwrite_without_force(tmp_path, sub):
    (tmp_path / "out.tzb").write_bytes(b"keep me")
    proc = tzero("backup", "-s", sub.control, "-o", tmp_path / "out.tzb", check=False)
    assert proc.returncode == 2 and "--force" in one_line(proc.stderr)
    assert (tmp_path / "out.tzb").read_bytes() == b"keep me"
    assert sub.status()["session"] is None, "nothing was frozen for a refused backup"


def test_damaged_backup_fails_verify_and_restore_with_one_line_and_leaves_nothing(tmp_path, sub):
    out = tmp_path / "out.tzb"
    tzero("backup", "-s", sub.control, "-o", out, "--no-progress")
    data = bytearray(out.read_bytes())
    cut = tmp_path / "cut.tzb"
    cut.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.tzb"
    data[len(data) // 3] ^= 0x40
    flipped.write_bytes(data)
    for bad in (cut, flipped):
        v = tzero("verify", bad, check=False)
        assert v.returncode == 4 and "'a'" in one_line(v.stderr)
        target = tmp_path / f"restore-{bad.stem}"
        r = tzero("restore", bad, "--to", target, check=False)
        assert r.returncode == 4
        one_line(r.stderr)
        assert not os.path.exists(target / "a.img") and not os.path.exists(target / "a.img.partial")


@pytest.mark.parametrize("args, fragment", [
    (["a=/nonexistent/disk.img"], "No such file"),
    (["a={tmp}"], "is a directory"),
    (["a={img}", "a={img}"], "given twice"),
    (["--chunk", "3K", "a={img}"], "power of two"),
    (["bad@name={img}"], "export name"),
])
def test_serve_refuses_bad_exports_with_one_line(tmp_path, args, fragment):
    img = tmp_path / "x.img"
    img.write_bytes(bytes(4096))
    args = [a.format(tmp=tmp_path, img=img) for a in args]
    proc = tzero("serve", "--control", tmp_path / "c.ctl", "--socket", tmp_path / "n.sock", *args,
                 check=False, timeout=60)
    assert proc.returncode == 2 and fragment in one_line(proc.stderr)


def leftovers(directory, name):
    return sorted(n for n in os.listdir(directory) if n.startswith(name))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_backup_stopped_by_a_signal_mid_copy_aborts_and_leaves_nothing(tmp_path, sub, sig):
    """What `timeout`, systemd, a closed terminal and Ctrl-C send: the session is aborted, the
    partial file removed, one line, exit 128 + the signal."""
    proxy = ControlProxy(sub.control, tmp_path / "proxy.ctl", hold="release")
    out = tmp_path / "out.tzb"
    try:
        with subprocess.Popen([*TZERO, "backup", "-s", proxy.path, "-o", str(out), "--no-progress"],
                              stderr=subprocess.PIPE, text=True, cwd=REPO) as proc:
            assert proxy.held.wait(60), "the copy reached its release"
            assert len(leftovers(tmp_path, "out.tzb")) == 2, "mid-copy: its partial file and its lock"
            proc.send_signal(sig)
            status = proc.wait(60)
            stderr = proc.stderr.read()
    finally:
        proxy.close()
    assert status == 128 + sig
    assert one_line(stderr) == f"tzero: interrupted by {signal.Signals(sig).name}"
    assert leftovers(tmp_path, "out.tzb") == []
    assert last_session(sub)["phase"] == "aborted"


def test_two_backups_to_one_output_the_second_is_refused_and_the_first_completes(tmp_path, sub):
    """Two cron jobs: the first is frozen (held at thaw) when the second starts. The second is
    refused at once (exit 3), touches nothing; the first completes and restores exactly."""
    proxy = ControlProxy(sub.control, tmp_path / "proxy.ctl", hold="thaw")
    out = tmp_path / "out.tzb"
    try:
        with subprocess.Popen([*TZERO, "backup", "-s", proxy.path, "-o", str(out), "--no-progress", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) as first:
            assert proxy.held.wait(60)
            before = {n: os.stat(tmp_path / n).st_ino for n in leftovers(tmp_path, "out.tzb")}
            second = tzero("backup", "-s", sub.control, "-o", out, "--force", "--no-progress", check=False)
            assert second.returncode == 3 and "another tzero backup" in one_line(second.stderr)
            assert {n: os.stat(tmp_path / n).st_ino for n in leftovers(tmp_path, "out.tzb")} == before
            proxy.release()
            assert first.wait(60) == 0, first.stderr.read()
    finally:
        proxy.close()
    assert leftovers(tmp_path, "out.tzb") == ["out.tzb"]
    tzero("restore", out, "--to", tmp_path / "restored")
    assert (tmp_path / "restored" / "a.img").read_bytes() == (tmp_path / "a.img").read_bytes()
