"""Fixtures shared by every test directory; tests/vm/conftest.py adds the guests'."""

import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import Subsystem, accepts_unix, make_image  # noqa: E402

LOOP_SIZE = 4 << 20  # the loop_device fixture's image


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A certificate directory with all five files (a CA, a server certificate for 127.0.0.1,
    ::1 and localhost, a client certificate), as `tzero certs` makes it."""
    from controller.net.certs import make_directory

    d = str(tmp_path_factory.mktemp("pki"))
    make_directory(d, ["127.0.0.1", "::1", "localhost"], client=True, force=True)
    return d


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory):
    """The same files from another CA: neither side trusts the other's."""
    from controller.net.certs import make_directory

    d = str(tmp_path_factory.mktemp("other-pki"))
    make_directory(d, ["127.0.0.1", "::1", "localhost"], client=True, force=True)
    return d


@pytest.fixture
def serve(tmp_path):
    """Factory: serve(name, {export: path}, *options, listen=None) -> a running Subsystem (on TCP
    with a testkit Listen), stopped at teardown."""
    started = []

    def start(name, exports, *options, listen=None):
        s = Subsystem(tmp_path, name, exports, *options, listen=listen)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def nbdkit_server(tmp_path):
    """Factory: nbdkit_server(PLUGIN, *ARGS, options=[...]) -> the unix socket path of a stock
    nbdkit serving PLUGIN ARGS in the foreground, once it accepts; stopped at teardown."""
    procs = []

    def start(*args, options=()):
        sock = tmp_path / f"nbdkit{len(procs)}.sock"
        proc = subprocess.Popen(["nbdkit", "-f", "--exit-with-parent", *options, "-U", str(sock), *args],
                                stderr=subprocess.PIPE)
        procs.append((proc, sock))
        deadline = time.monotonic() + 20
        while not accepts_unix(sock):
            if proc.poll() is not None:
                raise AssertionError(f"nbdkit {args} exited: {proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "nbdkit did not accept connections in 20 s"
            time.sleep(0.02)
        return str(sock)

    yield start
    for proc, sock in procs:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()
        sock.unlink(missing_ok=True)  # nbdkit leaves it behind on SIGTERM


@pytest.fixture
def loop_device(tmp_path):
    """A loop block device over a 4 MiB image of known content (make_image seed 9), detached at
    teardown; skipped where no loop device can be made (the fault suite needs one in CI)."""
    img = tmp_path / "loop.img"
    make_image(img, LOOP_SIZE, seed=9)
    proc = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no loop device here: {proc.stderr.strip()}")
    yield proc.stdout.strip()
    subprocess.run(["losetup", "-d", proc.stdout.strip()], check=False)
