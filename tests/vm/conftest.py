"""Fixtures that boot QEMU guests (vm/guest.py) and serve NBD exports from the host.

Guests run under TCG: a boot costs 5-15 s, so each test module boots as few guests as it
can and checks one behaviour per test from a shared run. Without a boot kit the tests
skip ("run make vm"), unless TZERO_REQUIRE_VM=1 (set by `make test-vm`) makes that a
failure. Each guest's console log stays in its job directory under pytest's tmp_path.
"""

import compileall
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for where in (str(REPO), str(Path(__file__).resolve().parent)):  # vm/, and vmhelpers beside us
    if where not in sys.path:
        sys.path.insert(0, where)

from vm import guest as vmguest  # noqa: E402


@pytest.fixture(scope="session")
def vm_kit():
    """The boot kit, checked once; also byte-compiles the package for the guests."""
    missing = None
    if not vmguest.qemu_available():
        missing = f"{vmguest.QEMU} not installed"
    elif not vmguest.kit_ready():
        missing = f"no boot kit in {vmguest.kit_dir()}"
    if missing:
        if os.environ.get("TZERO_REQUIRE_VM") == "1":
            pytest.fail(f"{missing}: run `make vm`")
        pytest.skip(f"{missing}: run `make vm`")
    # The guest's root is read-only: whatever is not compiled on the host is compiled
    # again, slowly, in every guest run.
    for package in ("common", "backupformat", "nbdplugin", "controller", "testkit"):
        compileall.compile_dir(str(REPO / package), quiet=1)
    return vmguest.kit_dir()


@pytest.fixture(scope="module")
def module_job(tmp_path_factory, vm_kit):
    """A job directory for a guest shared by the tests of one module."""
    return tmp_path_factory.mktemp("job")


@pytest.fixture
def job_dir(tmp_path, vm_kit):
    return tmp_path / "job"


class HostNbdkit:
    """nbdkit in the foreground on a unix socket, its messages in SOCK.log.

    stop() also removes the socket, which nbdkit leaves behind on SIGTERM.
    """

    def __init__(self, sock: Path, *args):
        self.sock = sock
        self.log_path = sock.with_suffix(".log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["nbdkit", "-f", "-U", str(sock), *args],
                                         stdin=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 20
        while not sock.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"nbdkit {args} exited: {self.log_path.read_text()}")
            assert time.monotonic() < deadline, "nbdkit did not create its socket in 20 s"
            time.sleep(0.02)

    def check_alive(self):
        """Fail if nbdkit ended on its own: a guest's I/O errors are explained by that."""
        status = self.proc.poll()
        if status is not None:
            pytest.fail(f"host nbdkit ended during the test (status {status}; a negative "
                        f"status is the signal that killed it): {self.log_path.read_text()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.sock.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def host_nbdkit(tmp_path_factory):
    """Factory: host_nbdkit(*args) -> a HostNbdkit, stopped when the module ends."""
    if shutil.which("nbdkit") is None:
        pytest.skip("nbdkit not installed")
    base = tmp_path_factory.mktemp("nbdkit")
    started = []

    def start(*args):
        server = HostNbdkit(base / f"{len(started)}.sock", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
