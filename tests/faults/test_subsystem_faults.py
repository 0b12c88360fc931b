"""Faults on the subsystem's side: nbdkit or `tzero serve` killed mid-copy, the side store and
its spill disk full, the device failing reads during the copy and during copy-before-write,
a second server or QEMU on a served disk, start-up on sockets that are not ours, a restore
aimed at the wrong export, files that must stay private. Each case ends by checking that no
acknowledged application byte was lost and that every backup that exited 0 restores exactly."""

import json
import os
import signal
import stat
import subprocess

import pytest

from control_proxy import ControlProxy
from faultkit import one_line, tiny_tmpfs, unavailable, unmount, wait_ended_session
from helpers import accepts_unix, make_image, wait_for

SIZE = 8 << 20


def served(case, *options, writers=2, names=("a", "b")):
    paths, initial = case.images(list(names), SIZE)
    sub = case.serve("s", dict(zip(names, paths, strict=True)), "--chunk", "64K", *options)
    load = case.load([(sub.socket, n) for n in names], paths, initial, writers)
    return sub, load, paths


def leftovers(directory, name):
    return sorted(n for n in os.listdir(directory) if n.startswith(name))


def children(pid: int) -> list[int]:
    """The child processes of PID (its nbdkit, for a `tzero serve`)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"


def test_nbdkit_killed_mid_copy(case):
    """SIGKILL to the subsystem's nbdkit while a backup copies. Application: it stopped writing
    just before (a server killed under a writer fails its writes whatever a backup does);
    every write it had acknowledged is on the disk. Backup: exit 3, one line, no partial
    file. A new `tzero serve` on the same paths starts (the dead one's sockets are stale, its
    image locks gone) and backs up exactly."""
    sub, load, paths = served(case)
    proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold="release")
    out = case.dir / "b.tzb"
    proc = case.spawn("backup", "-s", proxy.path, "-o", out, "--no-progress", "--host-memory", "8M")
    try:
        assert proxy.held.wait(60)
        load.stop()
        (nbdkit,) = children(sub.proc.pid)
        os.kill(nbdkit, signal.SIGKILL)
        wait_for(lambda: gone(nbdkit), 30, "nbdkit to end")
        proxy.release()
        status, _, err = case.ended(proc)
    finally:
        proxy.close()
    assert status == 3, err
    one_line(err)
    assert leftovers(case.dir, "b.tzb") == []
    restart_and_back_up(case, sub, load, paths, out)


def test_tzero_serve_killed_mid_copy(case):
    """SIGKILL to `tzero serve` while a backup copies. Its nbdkit is told to stop (it exits with
    its parent) and, as nbdkit does, first finishes with the clients it has: so the backup
    either completes, exit 0 and exact, or fails with one line, exit 3, and no partial file;
    never anything between. Application: it stopped writing just before; every write it had
    acknowledged is on the disk. A new `tzero serve` on the same paths starts and backs up
    exactly."""
    sub, load, paths = served(case)
    proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold="release")
    out = case.dir / "b.tzb"
    proc = case.spawn("backup", "-s", proxy.path, "-o", out, "--no-progress", "--json", "--host-memory", "8M")
    try:
        assert proxy.held.wait(60)
        load.stop()
        (nbdkit,) = children(sub.proc.pid)
        sub.proc.kill()
        proxy.release()
        status, stdout, err = case.ended(proc)
    finally:
        proxy.close()
    wait_for(lambda: gone(nbdkit), 60, "nbdkit to end once its clients are gone")
    if status == 0:
        case.exited_0(str(out), json.loads(stdout.strip().splitlines()[-1]), load, None)
        out = case.dir / "again.tzb"
    else:
        assert status == 3, err
        one_line(err)
        assert leftovers(case.dir, "b.tzb") == []
    restart_and_back_up(case, sub, load, paths, out)


def restart_and_back_up(case, sub, load, paths, out):
    sub.stop()
    again = case.serve("s", {"a": paths[0], "b": paths[1]}, "--chunk", "64K")
    done = case.backup(out, "-s", again.control, load=load)
    assert done.returncode == 0, done.stderr
    case.finish()


def test_side_store_and_its_spill_disk_full(case):
    """64 KiB of side memory and a 256 KiB tmpfs for the spill file; writers overwrite far more
    uncopied chunks than that while the copy waits. Application: every write succeeds, none
    waits for the backup. Backup: the subsystem aborts the session ('side store full'), the
    controller says so in one line, exit 3."""
    spill = case.dir / "spill"
    if not tiny_tmpfs(spill, "256k"):
        unavailable("cannot mount a small tmpfs here")
    try:
        sub, load, _ = served(case, "--side-memory", "64K", "--side-dir", spill)
        proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold="release")
        proc = case.spawn("backup", "-s", proxy.path, "-o", case.dir / "b.tzb", "--no-progress", "--host-memory", "8M")
        try:
            # The writers fill 5 chunks' worth of side store at once; the held release only makes
            # sure the copy cannot finish first.
            ended = wait_ended_session(sub, timeout=60)
            assert ended["phase"] == "aborted" and "side store full" in ended["abort_reason"]
            load.wait_writes(50)
            proxy.release()
            status, _, err = case.ended(proc)
        finally:
            proxy.close()
        assert status == 3 and "side store full" in one_line(err)
        assert leftovers(case.dir, "b.tzb") == []
        case.finish()
    finally:
        case.close()
        unmount(spill)


@pytest.fixture
def failing_disk(case):
    """An image whose reads fail on demand: a file on nbdfuse over stock nbdkit with its error
    filter, failing every read while TRIGGER exists; writes always go through. (This host's
    kernel has no device-mapper for a dm-flakey or dm-dust target, and nbdkit's error filter
    cannot sit under our Python plugin: the FUSE file puts it under the image instead.)
    Yields (path to serve, the backing image, trigger)."""
    mount = case.dir / "mnt"
    mount.mkdir()
    backing = case.dir / "backing.img"
    initial = make_image(backing, SIZE, seed=7)
    trigger = case.dir / "trigger"
    pidfile = case.dir / "nbdfuse.pid"
    fuse = subprocess.Popen(["nbdfuse", "-P", str(pidfile), f"{mount}/disk", "[", "nbdkit", "--exit-with-parent",
                             "--filter=error", "file", str(backing), "error-pread-rate=100%",
                             f"error-pread-file={trigger}", "]"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pidfile.exists() and os.path.exists(mount / "disk"), 30, "nbdfuse to mount")
    except AssertionError:
        fuse.kill()
        fuse.wait()
        unavailable("nbdfuse cannot mount here")
    yield str(mount / "disk"), str(backing), trigger, initial
    case.close()
    trigger.unlink(missing_ok=True)
    subprocess.run(["umount", str(mount)], check=False)
    fuse.wait(30)


def fail_reads(disk: str, trigger) -> None:
    """From now on every read of DISK fails: the trigger is set and the pages the kernel
    cached of it (which would hide the fault) are dropped."""
    trigger.write_bytes(b"")
    fd = os.open(disk, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_device_read_errors_during_the_copy(case, failing_disk):
    """The device of export 'a' fails every read once the copy starts. Application: it writes to
    export 'b' all along, untouched by a's trouble. Backup: exit 3, one line, no partial file,
    never a backup with a hole where a's unreadable chunks were."""
    disk, backing, trigger, initial_a = failing_disk
    paths_b, initial_b = case.images(["b"], SIZE, seed=3)
    sub = case.serve("s", {"a": disk, "b": paths_b[0]}, "--chunk", "64K")
    load = case.load([(sub.socket, "b")], paths_b, initial_b)
    proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold="thaw")
    proc = case.spawn("backup", "-s", proxy.path, "-o", case.dir / "b.tzb", "--no-progress", "--host-memory", "8M")
    try:
        assert proxy.held.wait(60)
        fail_reads(disk, trigger)
        proxy.release()
        status, _, err = case.ended(proc)
        load.wait_writes(20)  # the application's writes to b went on all along
    finally:
        proxy.close()
    trigger.unlink()
    assert status == 3 and "Input/output error" in one_line(err)
    assert leftovers(case.dir, "b.tzb") == []
    with open(backing, "rb") as f:
        assert f.read() == initial_a, "nobody wrote a"
    case.finish()


def test_device_read_errors_during_copy_before_write(case, failing_disk):
    """The device of export 'a' fails reads just when an application overwrites an uncopied
    chunk, so its old content cannot be saved. Application: the write succeeds (the policy is
    break-backup: the backup gives way, never the application). Backup: the session is
    aborted naming the chunk; exit 3, one line."""
    disk, backing, trigger, initial_a = failing_disk
    sub = case.serve("s", {"a": disk}, "--chunk", "64K")
    proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold="release")
    proc = case.spawn("backup", "-s", proxy.path, "-o", case.dir / "b.tzb", "--no-progress", "--host-memory", "8M")
    try:
        assert proxy.held.wait(60)
        fail_reads(disk, trigger)
        load = case.load([(sub.socket, "a")], [backing], [initial_a])
        ended = wait_ended_session(sub)
        assert ended["phase"] == "aborted" and "copy-before-write of a chunk" in ended["abort_reason"]
        load.wait_writes(50)
        trigger.unlink()
        proxy.release()
        status, _, err = case.ended(proc)
    finally:
        proxy.close()
    assert status == 3 and "copy-before-write" in one_line(err)
    assert leftovers(case.dir, "b.tzb") == []
    case.finish()


def test_second_server_on_a_served_image(case):
    """A second `tzero serve` of an image a first one serves (its own sockets). Application:
    the first keeps serving its writes. Backup: the second refuses to start, one line, exit 2,
    makes no socket; a backup through the first exits 0 and is exact."""
    sub, load, paths = served(case)
    second = case.tzero("serve", "--control", case.dir / "2.ctl", "--socket", case.dir / "2.sock", f"x={paths[0]}")
    assert second.returncode == 2 and "in use" in one_line(second.stderr)
    assert not os.path.exists(case.dir / "2.ctl") and not os.path.exists(case.dir / "2.sock")
    done = case.backup(case.dir / "b.tzb", "-s", sub.control, load=load)
    assert done.returncode == 0, done.stderr
    case.finish()


def test_qemu_cannot_write_a_served_image(case):
    """qemu-io tries to write a served image, qemu-img to resize it and to copy it. Application:
    its writes through tzero go on. Backup: nobody wrote behind the concordance's back, so a
    backup exits 0 and is exact; QEMU's tools said 'Failed to get "write" lock'."""
    sub, load, paths = served(case)
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x55 0 64k", paths[0]], capture_output=True,
                           text=True, timeout=60)
    assert write.returncode != 0 and 'Failed to get "write" lock' in write.stderr + write.stdout
    resize = subprocess.run(["qemu-img", "resize", "-f", "raw", paths[1], "16M"], capture_output=True, text=True,
                            timeout=60)
    assert resize.returncode != 0 and os.path.getsize(paths[1]) == SIZE
    done = case.backup(case.dir / "b.tzb", "-s", sub.control, load=load)
    assert done.returncode == 0, done.stderr
    case.finish()


def test_serve_refuses_an_image_qemu_holds(case):
    """qemu-io has an image open for writing (as a VM would). Application: that program's. Backup:
    `tzero serve` of it refuses with one line; nothing is served."""
    paths, initial = case.images(["vm"], SIZE)
    with subprocess.Popen(["qemu-io", "-f", "raw", paths[0]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as holder:
        holder.stdin.write("write -P 0x33 0 4k\n")
        holder.stdin.flush()
        assert "wrote 4096" in holder.stdout.readline()
        proc = case.tzero("serve", "--control", case.dir / "c.ctl", "--socket", case.dir / "n.sock", f"vm={paths[0]}",
                          timeout=60)
        holder.stdin.close()
        holder.wait(30)
    assert proc.returncode == 2 and "in use" in one_line(proc.stderr)
    assert not os.path.exists(case.dir / "c.ctl")
    case.finish()


@pytest.mark.parametrize("which", ["--control", "--socket"])
def test_serve_on_a_socket_another_server_uses(case, which):
    """A second `tzero serve` given the control or NBD socket of a running one. Application: the
    running one keeps serving. Backup: the second refuses, one line, exit 2, and deletes
    nothing of the first's: backups through the first still exit 0 and are exact."""
    sub, load, _ = served(case)
    other, _ = case.images(["other"], 1 << 20)
    taken = {"--control": sub.control, "--socket": sub.socket}
    args = {"--control": str(case.dir / "o.ctl"), "--socket": str(case.dir / "o.sock"), which: taken[which]}
    proc = case.tzero("serve", *[x for kv in args.items() for x in kv], f"o={other[0]}", timeout=60)
    assert proc.returncode == 2 and "in use" in one_line(proc.stderr)
    assert accepts_unix(sub.control) and accepts_unix(sub.socket)
    done = case.backup(case.dir / "b.tzb", "-s", sub.control, load=load)
    assert done.returncode == 0, done.stderr
    case.finish()


@pytest.mark.parametrize("args, words", [
    (["--control", "{d}/missing/c.ctl"], "no such directory"),
    (["--socket", "{d}/missing/n.sock"], "no such directory"),
    (["--control", "{d}/a-file"], "not a socket"),
    (["--socket", "{d}/a-file"], "not a socket"),
    (["--port", "0"], "port"),
    (["--pidfile", "{d}/missing/p.pid"], "no such directory"),
    (["--side-dir", "{d}/a-file"], "side-dir"),
])
def test_serve_start_up_errors_are_one_line(case, args, words):
    """`tzero serve` given paths it cannot use. Application: none yet. Backup: none; one line
    before nbdkit starts (never an nbdkit traceback), exit 2, and a file in the way is left
    as it was."""
    (case.dir / "a-file").write_bytes(b"keep me")
    img, _ = case.images(["x"], 1 << 20)
    args = [a.format(d=case.dir) for a in args]
    for option, default in (("--control", "c.ctl"), ("--socket", "n.sock")):
        if option not in args and "--port" not in args or option == "--control" and option not in args:
            args += [option, str(case.dir / default)]
    proc = case.tzero("serve", *args, f"x={img[0]}", timeout=60)
    assert proc.returncode == 2 and words in one_line(proc.stderr).lower()
    assert "nbdkit" not in proc.stderr
    assert (case.dir / "a-file").read_bytes() == b"keep me"
    assert not os.path.exists(os.path.join(os.getcwd(), "tzero.sock"))
    case.finish()


def test_restore_onto_a_uri_naming_no_export(case):
    """`--to 'nbd+unix://disk1?socket=S'`: two slashes, so the export name is empty. Application:
    its writes to disk0, the subsystem's first export, go on, and none of its bytes is
    overwritten. Backup: the restore fails with one line, with or without --force."""
    sub, load, paths = served(case, names=("disk0", "disk1"))
    done = case.backup(case.dir / "b.tzb", "-s", sub.control, "--dataset", "disk1=disk1", load=load)
    assert done.returncode == 0, done.stderr
    for force in ([], ["--force"]):
        slip = case.tzero("restore", case.dir / "b.tzb", "--dataset", "disk1", "--to",
                          f"nbd+unix://disk1?socket={sub.socket}", *force)
        assert slip.returncode == 1 and "no export" in one_line(slip.stderr) and slip.stdout == ""
    case.finish()


def test_files_that_hold_disk_images_are_private_whatever_the_umask(case):
    """umask 0, a side store that spills. Application: writes go on. Backup: the partial file,
    the backup, the subsystem's spill file and every restored image are 0600."""
    old = os.umask(0)
    try:
        sub, load, _ = served(case, "--side-memory", "64K")
        proxy = ControlProxy(sub.control, case.dir / "proxy.ctl", hold="release")
        out = case.dir / "b.tzb"
        proc = case.spawn("backup", "-s", proxy.path, "-o", out, "--no-progress", "--json", "--host-memory", "8M")
        try:
            assert proxy.held.wait(60)
            (partial,) = [n for n in leftovers(case.dir, "b.tzb") if ".partial-" in n]
            assert stat.S_IMODE(os.stat(case.dir / partial).st_mode) == 0o600
            load.wait_writes(200)  # overwrites of uncopied chunks: the side store spills
            (nbdkit,) = children(sub.proc.pid)
            spills = [os.stat(f"/proc/{nbdkit}/fd/{fd}") for fd in os.listdir(f"/proc/{nbdkit}/fd")
                      if "tzero-spill-" in os.readlink(f"/proc/{nbdkit}/fd/{fd}")]
            assert spills and all(stat.S_IMODE(s.st_mode) == 0o600 for s in spills)
            proxy.release()
            status, stdout, err = case.ended(proc)
        finally:
            proxy.close()
        assert status == 0, err
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
        restored = case.tzero("restore", out, "--to", case.dir / "restored")
        assert restored.returncode == 0
        for name in ("a.img", "b.img"):
            assert stat.S_IMODE(os.stat(case.dir / "restored" / name).st_mode) == 0o600
    finally:
        os.umask(old)
    import json
    case.exited_0(str(out), json.loads(stdout.strip().splitlines()[-1]), load, None)
    case.finish()


def test_served_block_device_is_held_exclusively(case):
    """A loop device served as an export. Application: writes through tzero go on. Backup: a
    second serve of it, a mount-like exclusive open and qemu-io's write are all refused; a
    backup exits 0 and is exact."""
    backing = case.dir / "loop.img"
    initial = make_image(backing, SIZE, seed=11)
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if made.returncode != 0:
        unavailable("no loop device (needs root and losetup)")
    dev = made.stdout.strip()
    try:
        sub = case.serve("s", {"d": dev}, "--chunk", "64K")
        load = case.load([(sub.socket, "d")], [str(backing)], [initial])
        second = case.tzero("serve", "--control", case.dir / "2.ctl", "--socket", case.dir / "2.sock", f"d={dev}")
        assert second.returncode == 2 and "in use" in one_line(second.stderr)
        with pytest.raises(OSError):
            os.close(os.open(dev, os.O_WRONLY | os.O_EXCL))
        write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x55 0 4k", dev], capture_output=True,
                               text=True, timeout=60)
        assert write.returncode != 0
        done = case.backup(case.dir / "b.tzb", "-s", sub.control, load=load)
        assert done.returncode == 0, done.stderr
        load.stop()
        sub.stop()  # the last close of the loop device writes its page cache back to the image read below
        case.finish()
    finally:
        case.close()
        subprocess.run(["losetup", "-d", dev], check=False)
