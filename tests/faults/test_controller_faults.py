"""Faults on the controller's side: the controller stopped, killed or told to stop at every
phase of a session; its output disk full, its pipe's reader gone, another run on the same
output, a device named as output. Each case ends by checking that no acknowledged
application byte was lost and that every backup that exited 0 restores exactly."""

import os
import signal
import stat
import subprocess
import threading

import pytest

from control_proxy import ControlProxy
from faultkit import one_line, tiny_tmpfs, unavailable, unmount, wait_ended_session
from helpers import wait_for

SIZE = 8 << 20
SESSION = ("--lease", "1000", "--freeze-deadline", "500", "--host-memory", "8M")
# Where the lease and the freeze deadline are not what a test is about, they are the longest
# allowed, so that a loaded machine's delay between two looks cannot end the session first.
PATIENT_SESSION = ("--lease", "120000", "--freeze-deadline", "30000", "--host-memory", "8M")
# The request a proxy holds to stop the controller in each phase: while it waits for the reply
# to `freeze` the session is open; to `thaw`, every gate is closed; to `release`, the copy runs.
PHASES = {"open": "freeze", "frozen": "thaw", "copying": "release"}


def served(case, writers=2):
    paths, initial = case.images(["a", "b"], SIZE)
    sub = case.serve("s", dict(zip(["a", "b"], paths, strict=True)), "--chunk", "64K")
    load = case.load([(sub.socket, "a"), (sub.socket, "b")], paths, initial, writers)
    return sub, load


def leftovers(directory, name):
    return sorted(n for n in os.listdir(directory) if n.startswith(name))


def backup_again(case, sub, load, out, left=()):
    """The subsystem is whole after the fault: a backup to the same OUT exits 0 (and is checked);
    nothing is left beside it but LEFT."""
    load.wait_writes(20)
    done = case.backup(out, "-s", sub.control, "--host-memory", "8M", load=load)
    assert done.returncode == 0, done.stderr
    assert leftovers(case.dir, os.path.basename(out)) == sorted([os.path.basename(out), *left])


@pytest.mark.parametrize("phase", list(PHASES))
def test_controller_killed_outright(case, phase):
    """SIGKILL while the session is open, frozen, or copying.
    Application: writes go on; a write that arrives while frozen waits until the subsystem
    sees the control connection close, which opens every gate at once.
    Backup: none; the session is aborted, its side store freed. The killed run leaves its
    partial file and OUT.lock (nothing can clean up after SIGKILL); the next run on OUT takes
    the lock over, leaves that partial file alone (it is the killed run's), and is exact."""
    sub, load = served(case)
    proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold=PHASES[phase])
    out = case.dir / "b.tzb"
    proc = case.spawn("backup", "-s", proxy.path, "-o", out, "--no-progress", *PATIENT_SESSION)
    try:
        assert proxy.held.wait(60), f"the controller reached {PHASES[phase]}"
        assert sub.status()["session"]["phase"] == {"open": "open", "frozen": "frozen", "copying": "active"}[phase]
        proc.kill()
        status, _, _ = case.ended(proc)
        proxy.cut()
    finally:
        proxy.close()
    assert status == -signal.SIGKILL
    ended = wait_ended_session(sub)
    assert ended["phase"] == "aborted" and "control connection closed" in ended["abort_reason"]
    assert ended["side_memory_bytes"] == 0 and ended["side_spill_bytes"] == 0
    (killed_partial,) = [n for n in leftovers(case.dir, "b.tzb") if ".partial-" in n]
    backup_again(case, sub, load, out, left=[killed_partial])
    case.finish()


@pytest.mark.parametrize("phase", list(PHASES))
def test_controller_stopped_and_continued(case, phase):
    """SIGSTOP while the session is open, frozen, or copying; SIGCONT much later.
    Application: writes go on; while frozen they wait at most the freeze deadline (500 ms),
    after which the subsystem opens the gates by itself. Backup: the subsystem aborts the
    session (freeze deadline, or lease of 1 s); the controller, continued, learns it at its
    next request: exit 3, one line, no partial file."""
    sub, load = served(case)
    proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold=PHASES[phase])
    out = case.dir / "b.tzb"
    proc = case.spawn("backup", "-s", proxy.path, "-o", out, "--no-progress", *SESSION)
    try:
        assert proxy.held.wait(60)
        os.kill(proc.pid, signal.SIGSTOP)
        ended = wait_ended_session(sub)
        why = "freeze deadline" if phase == "frozen" else "lease expired"
        assert ended["phase"] == "aborted" and why in ended["abort_reason"]
        load.wait_writes(20)  # the application goes on while the controller is stopped
        os.kill(proc.pid, signal.SIGCONT)
        proxy.release()
        status, _, err = case.ended(proc)
    finally:
        proxy.close()
    assert status == 3, err
    one_line(err)  # why: the session aborted, or its reply never came in time (the proxy held it)
    assert leftovers(case.dir, "b.tzb") == []
    backup_again(case, sub, load, out)
    case.finish()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
@pytest.mark.parametrize("phase", list(PHASES))
def test_controller_told_to_stop(case, phase, sig):
    """SIGTERM (timeout, systemd), SIGHUP (a closed terminal) or SIGINT (Ctrl-C) in each phase.
    Application: writes go on; if frozen, the gates open as soon as the controller hangs up.
    Backup: none: the session is aborted, the partial file and the lock removed, one line,
    exit 128 + the signal."""
    sub, load = served(case)
    proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold=PHASES[phase])
    out = case.dir / "b.tzb"
    proc = case.spawn("backup", "-s", proxy.path, "-o", out, "--no-progress", *SESSION)
    try:
        assert proxy.held.wait(60)
        proc.send_signal(sig)
        status, _, err = case.ended(proc)
        proxy.cut()
    finally:
        proxy.close()
    assert status == 128 + sig
    assert one_line(err) == f"tzero: interrupted by {signal.Signals(sig).name}"
    assert leftovers(case.dir, "b.tzb") == []
    assert wait_ended_session(sub)["phase"] == "aborted"
    backup_again(case, sub, load, out)
    case.finish()


def test_output_disk_full(case):
    """The backup's disk fills up mid-stream (a 1 MiB tmpfs).
    Application: writes go on. Backup: exit 1, one line naming the file and 'no space left';
    the session is aborted; nothing of the run is left on the full disk (its partial file is
    removed although closing it fails again)."""
    sub, load = served(case)
    full = case.dir / "full"
    if not tiny_tmpfs(full, "1m"):
        unavailable("cannot mount a small tmpfs here")
    try:
        proc = case.backup(full / "b.tzb", "-s", sub.control, "--host-memory", "8M")
        left = os.listdir(full)
    finally:
        unmount(full)
    assert proc.returncode == 1 and "no space left on device" in one_line(proc.stderr)
    assert left == []
    assert wait_ended_session(sub)["phase"] == "aborted"
    backup_again(case, sub, load, case.dir / "b.tzb")
    case.finish()


def test_pipe_reader_gone(case):
    """`tzero backup -o - | reader` and the reader exits after 64 KiB.
    Application: writes go on. Backup: exit 1, one line 'broken pipe' (and nothing else on
    stderr: no complaint from the interpreter at exit); the session is aborted."""
    sub, load = served(case)
    proc = case.spawn("backup", "-s", sub.control, "-o", "-", "--no-progress", "--host-memory", "8M")
    assert len(proc.stdout.read(64 << 10)) == 64 << 10
    proc.stdout.close()
    proc.stdout = None
    status, _, err = case.ended(proc)
    assert status == 1 and "broken pipe" in one_line(err).lower()
    assert wait_ended_session(sub)["phase"] == "aborted"
    backup_again(case, sub, load, case.dir / "b.tzb")
    case.finish()


def test_output_raced_by_a_second_run_on_the_same_file(case):
    """Two cron jobs on one -o: the first is frozen when the second starts.
    Application: writes go on (held only by the first run's freeze). Backup: the second is
    refused at once (exit 3), touches neither the first's partial file nor its lock; the
    first completes, exit 0, and restores exactly."""
    sub, load = served(case)
    proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold="thaw")
    out = case.dir / "b.tzb"
    first = case.spawn("backup", "-s", proxy.path, "-o", out, "--no-progress", "--json", "--host-memory", "8M")
    try:
        assert proxy.held.wait(60)
        before = {n: os.stat(case.dir / n).st_ino for n in leftovers(case.dir, "b.tzb")}
        second = case.backup(out, "-s", sub.control, "--force")
        assert second.returncode == 3 and "another tzero backup" in one_line(second.stderr)
        assert {n: os.stat(case.dir / n).st_ino for n in leftovers(case.dir, "b.tzb")} == before
        proxy.release()
        status, stdout, err = case.ended(first)
    finally:
        proxy.close()
    assert status == 0, err
    case.exited_0(str(out), __import__("json").loads(stdout.strip().splitlines()[-1]), load, None)
    assert leftovers(case.dir, "b.tzb") == ["b.tzb"]
    case.finish()


def test_second_run_refused_busy_by_the_subsystem_deletes_nothing_of_the_first(case):
    """A second backup of the same subsystem to another file while the first is frozen.
    Application: writes go on. Backup: the second is refused ('busy', exit 3) and removes
    only its own partial file; the first completes, exit 0, and restores exactly."""
    sub, load = served(case)
    proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold="thaw")
    out = case.dir / "b.tzb"
    first = case.spawn("backup", "-s", proxy.path, "-o", out, "--no-progress", "--json", "--host-memory", "8M")
    try:
        assert proxy.held.wait(60)
        before = {n: os.stat(case.dir / n).st_ino for n in leftovers(case.dir, "b.tzb")}
        second = case.backup(case.dir / "other.tzb", "-s", sub.control)
        assert second.returncode == 3 and "busy: another backup" in one_line(second.stderr)
        assert leftovers(case.dir, "other.tzb") == []
        assert {n: os.stat(case.dir / n).st_ino for n in leftovers(case.dir, "b.tzb")} == before
        proxy.release()
        status, stdout, err = case.ended(first)
    finally:
        proxy.close()
    assert status == 0, err
    case.exited_0(str(out), __import__("json").loads(stdout.strip().splitlines()[-1]), load, None)
    case.finish()


def test_output_is_a_fifo(case):
    """-o names a FIFO (a tape drive's stand-in): written in place like standard output.
    Application: writes go on. Backup: exit 0; the FIFO is still a FIFO, no file was put in
    its place, and what came through it restores exactly."""
    sub, load = served(case)
    fifo = case.dir / "tape"
    os.mkfifo(fifo)
    received = case.dir / "received.tzb"

    def drain():
        with open(fifo, "rb") as src, open(received, "wb") as dst:
            while data := src.read(1 << 20):
                dst.write(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = case.tzero("backup", "-s", sub.control, "-o", fifo, "--json", "--no-progress", "--force")
    reader.join(60)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(os.listdir(case.dir)).count("tape") == 1
    case.exited_0(str(received), __import__("json").loads(proc.stdout.strip().splitlines()[-1]), load, None)
    case.finish()


@pytest.fixture
def loop_device(tmp_path):
    backing = tmp_path / "loop.img"
    backing.write_bytes(b"\xa5" * (1 << 20))
    proc = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if proc.returncode != 0:
        unavailable("no loop device (needs root and losetup)")
    yield proc.stdout.strip(), backing
    subprocess.run(["losetup", "-d", proc.stdout.strip()], check=False)


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_is_a_block_device(case, loop_device, force):
    """-o names a block device, with or without --force.
    Application: writes go on. Backup: refused before any session (exit 2, one line); the
    device is untouched and still a block device."""
    dev, backing = loop_device
    sub, load = served(case)
    proc = case.backup(dev, "-s", sub.control, *force)
    assert proc.returncode == 2 and "block device" in one_line(proc.stderr)
    assert stat.S_ISBLK(os.stat(dev).st_mode) and backing.read_bytes() == b"\xa5" * (1 << 20)
    assert sub.status()["last_session"] is None, "no session was opened"
    case.finish()


@pytest.mark.parametrize("spill", ["missing", "file", "read-only"])
def test_spill_dir_unusable(case, spill):
    """--spill-dir missing, a file, or on a read-only file system.
    Application: never frozen. Backup: refused before any subsystem is asked (exit 2, one
    line), not seconds into the copy when the first chunk would spill."""
    sub, load = served(case)
    where = case.dir / "spill"
    if spill == "file":
        where.write_bytes(b"")
    elif spill == "read-only":
        if not tiny_tmpfs(where, "64k") or subprocess.run(["mount", "-o", "remount,ro", str(where)]).returncode:
            unavailable("cannot mount a read-only tmpfs here")
    try:
        proc = case.backup(case.dir / "b.tzb", "-s", sub.control, "--spill-dir", where)
    finally:
        if spill == "read-only":
            unmount(where)
    assert proc.returncode == 2 and "--spill-dir" in one_line(proc.stderr)
    assert sub.status()["last_session"] is None
    assert leftovers(case.dir, "b.tzb") == []
    case.finish()


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("onto", ["a directory", "a live export"])
def test_restore_told_to_stop_midway(case, onto):
    """`tzero restore -` reads half a backup of export a from a pipe that then goes quiet, and
    gets SIGTERM. Application: it writes to export b all along (a is the restore's to
    overwrite). Backup: onto a directory, no file is left (its partial files are removed);
    onto the live export a, the line says the restore is incomplete; one line, exit 143."""
    paths, initial = case.images(["a", "b"], SIZE)
    sub = case.serve("s", {"a": paths[0], "b": paths[1]}, "--chunk", "64K")
    load = case.load([(sub.socket, "b")], paths[1:], initial[1:])
    done = case.backup(case.dir / "b.tzb", "-s", sub.control, "--dataset", "a=a", images=initial[:1])
    assert done.returncode == 0, done.stderr
    h = sub.connect("a")
    h.pwrite(b"\xee" * (1 << 20), 0)  # a differs from the backup now: the restore's writes show
    h.shutdown()
    blob = read(case.dir / "b.tzb")
    if onto == "a directory":
        to, args = case.dir / "restored", []
    else:
        to, args = sub.uri("a"), ["--dataset", "a", "--force"]
    proc = case.spawn("restore", "-", "--to", to, *args, stdin=subprocess.PIPE)
    proc.stdin.write(blob[:len(blob) // 2])
    proc.stdin.flush()
    if onto == "a directory":
        wait_for(lambda: any(".partial-" in n for n in os.listdir(case.dir / "restored")), 30, "its partial file")
    else:
        assert proc.stdout.readline().startswith(b"restoring 'a'"), "said before its first write"
        wait_for(lambda: read(paths[0])[:4096] != b"\xee" * 4096, 30, "the restore's first writes")
    proc.send_signal(signal.SIGTERM)
    status, out, err = case.ended(proc)
    load.wait_writes(20)  # b's writer went on throughout
    assert status == 128 + signal.SIGTERM
    line = one_line(err)
    if onto == "a directory":
        assert line == "tzero: interrupted by SIGTERM" and os.listdir(case.dir / "restored") == []
    else:
        assert "is incomplete: interrupted by SIGTERM" in line
    case.finish()
