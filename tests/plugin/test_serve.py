"""tzero serve as a storage subsystem's owner: it refuses to start with one line when its
sockets or devices are not its to take, removes only what it made, and holds every device it
serves exclusively, in a way QEMU and qemu-img respect."""

import os
import subprocess

import pytest

from helpers import make_image, tzero

SIZE = 1 << 20


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tzero: "), f"expected one tzero: line, got {stderr!r}"
    return lines[0]


def serve_cmd(tmp_path, *args, control="c.ctl", sock="n.sock"):
    return ("serve", "--control", tmp_path / control, "--socket", tmp_path / sock, *args)


@pytest.fixture
def running(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=1)
    return serve("s", {"a": tmp_path / "a.img"})


def test_serve_on_a_control_socket_in_use_refuses_and_leaves_the_running_servers_socket(tmp_path, running):
    make_image(tmp_path / "b.img", SIZE, seed=2)
    proc = tzero("serve", "--control", running.control, "--socket", tmp_path / "other.sock", f"b={tmp_path / 'b.img'}",
                 check=False, timeout=60)
    assert proc.returncode == 2 and "in use" in one_line(proc.stderr)
    assert os.path.exists(running.control) and not os.path.exists(tmp_path / "other.sock")
    assert running.status()["exports"] == [{"name": "a", "size": SIZE}], "the running server is still reachable"


def test_serve_on_an_nbd_socket_in_use_refuses_and_leaves_the_running_servers_socket(tmp_path, running):
    make_image(tmp_path / "b.img", SIZE, seed=2)
    proc = tzero("serve", "--control", tmp_path / "other.ctl", "--socket", running.socket, f"b={tmp_path / 'b.img'}",
                 check=False, timeout=60)
    assert proc.returncode == 2 and "in use" in one_line(proc.stderr)
    assert os.path.exists(running.socket) and not os.path.exists(tmp_path / "other.ctl")
    h = running.connect("a")
    assert h.get_size() == SIZE
    h.shutdown()


@pytest.mark.parametrize("args, fragment", [
    (["--control", "{tmp}/missing/c.ctl"], "no such directory"),
    (["--socket", "{tmp}/missing/n.sock"], "no such directory"),
    (["--side-dir", "{tmp}/missing"], "side-dir"),
    (["--side-dir", "{img}"], "side-dir"),
    (["--pidfile", "{tmp}/missing/s.pid"], "no such directory"),
])
def test_serve_unusable_paths_are_one_line_before_nbdkit_starts(tmp_path, args, fragment):
    img = tmp_path / "x.img"
    img.write_bytes(bytes(SIZE))
    args = [a.format(tmp=tmp_path, img=img) for a in args]
    defaults = {"--control": str(tmp_path / "c.ctl"), "--socket": str(tmp_path / "n.sock")}
    for option, value in defaults.items():
        if option not in args:
            args += [option, value]
    proc = tzero("serve", *args, f"x={img}", check=False, timeout=60)
    assert proc.returncode == 2 and fragment in one_line(proc.stderr).lower()
    assert "nbdkit" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["serve", "serve-backup"])
@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_serve_port_outside_1_to_65535_is_refused_never_a_unix_socket(tmp_path, command, port):
    img = tmp_path / "x.img"
    img.write_bytes(bytes(SIZE))
    target = [f"x={img}", "--control", str(tmp_path / "c.ctl")] if command == "serve" else [str(img)]
    proc = tzero(command, "--port", port, *target, check=False, timeout=60)
    assert proc.returncode == 2 and "port" in one_line(proc.stderr)
    assert not os.path.exists("tzero.sock") and not list(tmp_path.glob("*.sock"))


def test_serve_the_same_image_twice_refuses_the_second_with_one_line(tmp_path, running):
    proc = tzero(*serve_cmd(tmp_path, f"a={tmp_path / 'a.img'}", control="2.ctl", sock="2.sock"),
                 check=False, timeout=60)
    assert proc.returncode == 2 and "a.img" in one_line(proc.stderr) and "in use" in proc.stderr
    assert not os.path.exists(tmp_path / "2.ctl") and not os.path.exists(tmp_path / "2.sock")
    assert running.status()["exports"][0]["name"] == "a"


def qemu(*args):
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_qemu_io_cannot_write_an_image_tzero_serves(tmp_path, running):
    before = (tmp_path / "a.img").read_bytes()
    proc = qemu("qemu-io", "-f", "raw", "-c", "write -P 0x55 0 4k", str(tmp_path / "a.img"))
    assert proc.returncode != 0 and 'Failed to get "write" lock' in proc.stderr + proc.stdout
    assert (tmp_path / "a.img").read_bytes() == before


def test_qemu_img_treats_a_served_image_as_a_running_vms_disk(tmp_path, running):
    """It refuses to write or resize it, and to copy it unless told the copy may be torn (-U),
    as it does for the disk of a running VM."""
    img = str(tmp_path / "a.img")
    resize = qemu("qemu-img", "resize", "-f", "raw", img, "2M")
    assert resize.returncode != 0 and 'Failed to get "write" lock' in resize.stderr
    copy = qemu("qemu-img", "convert", "-f", "raw", "-O", "raw", img, str(tmp_path / "copy.img"))
    assert copy.returncode != 0 and 'Failed to get shared "write" lock' in copy.stderr
    shared = qemu("qemu-img", "convert", "-U", "-f", "raw", "-O", "raw", img, str(tmp_path / "copy.img"))
    assert shared.returncode == 0, shared.stderr
    assert os.path.getsize(img) == SIZE


def test_serve_refuses_an_image_qemu_is_writing(tmp_path):
    img = tmp_path / "vm.img"
    make_image(img, SIZE, seed=3)
    # qemu-io in interactive mode holds the image open for writing until its stdin ends.
    with subprocess.Popen(["qemu-io", "-f", "raw", str(img)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as holder:
        holder.stdin.write("write -P 0x33 0 4k\n")
        holder.stdin.flush()
        assert "wrote 4096" in holder.stdout.readline(), "qemu-io has the image open"
        proc = tzero(*serve_cmd(tmp_path, f"vm={img}"), check=False, timeout=60)
        holder.stdin.close()
        holder.wait(30)
    assert proc.returncode == 2 and "vm.img" in one_line(proc.stderr) and "in use" in proc.stderr
    assert not os.path.exists(tmp_path / "c.ctl")


def test_served_block_device_is_held_exclusively(tmp_path, serve, loop_device):
    sub = serve("blk", {"d": loop_device})
    second = tzero(*serve_cmd(tmp_path, f"d={loop_device}", control="2.ctl", sock="2.sock"), check=False, timeout=60)
    assert second.returncode == 2 and loop_device in one_line(second.stderr) and "in use" in second.stderr
    with pytest.raises(OSError) as busy:
        os.close(os.open(loop_device, os.O_WRONLY | os.O_EXCL))
    assert busy.value.strerror == "Device or resource busy"
    writer = qemu("qemu-io", "-f", "raw", "-c", "write -P 0x55 0 4k", loop_device)
    assert writer.returncode != 0 and "lock" in writer.stderr + writer.stdout
    assert sub.status()["exports"][0]["name"] == "d"


def test_serve_stopped_removes_its_own_sockets_and_pidfile_only(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=1)
    sub = serve("s", {"a": tmp_path / "a.img"})
    assert sub.stop() == 0
    assert not any(os.path.exists(p) for p in (sub.control, sub.socket, sub.pidfile))
