"""Running nbdkit in the foreground for `tzero serve` and `tzero serve-backup`.

One supervision for both: start nbdkit, pass its messages on as log lines
(nbdkit_log.py), and once it is ready write the pidfile, print what it serves and
tell systemd (READY=1); forward SIGTERM/SIGINT (STOPPING=1), kill it if it does
not stop in time (nbdkit 1.32 waits forever for an idle client after SIGTERM),
and remove the sockets and pidfile it leaves behind.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from types import FrameType

import nbd

import nbdplugin
from controller import service
from controller.errors import TzeroError, UsageError
from controller.nbd import nbdkit_log
from controller.net.listen import NbdListen, accepts_tcp

# nbdkit runs the plugin files themselves (in its embedded interpreter): found beside the
# nbdplugin package, never imported here.
PLUGIN_DIR = os.path.dirname(os.path.abspath(nbdplugin.__file__))

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def require_nbdkit() -> None:
    if shutil.which("nbdkit") is None:
        raise TzeroError("nbdkit is not installed (make setup installs it)")


def listen_args(where: NbdListen) -> list[str]:
    """nbdkit's options for listening WHERE; a stale socket file is removed."""
    if where.socket is not None:
        _clear_stale_socket(where.socket)
    elif where.port is None or not 0 < where.port < 65536:
        raise UsageError(f"--port {where.port}: not a TCP port")
    return where.nbdkit_args()


def run_nbdkit(cmd: list[str], ready: Callable[[], bool], pidfile: str | None, leftovers: list[str | None],
               announce: str = "", verbose: bool = False, env: dict[str, str] | None = None,
               pass_fds: tuple[int, ...] = ()) -> int:
    """Run CMD until it exits or we are asked to stop; READY() says when it serves, and then
    ANNOUNCE (what it serves, one item a line) is printed. ENV and PASS_FDS go to nbdkit.
    Returns 0 when stopped by a signal, else raises TzeroError on a non-zero exit."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace", env=env, pass_fds=pass_fds)
    assert proc.stderr is not None, "made with stderr=PIPE"
    messages = nbdkit_log.relay(proc.stderr, verbose)
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            service.notify("STOPPING=1")
        stopping.append(signum)
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if _wait_ready(proc, ready):
            _ready(pidfile, announce)
        status = _wait_stopped(proc, stopping)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        messages.join(STOP_TIMEOUT_S)  # nbdkit's last words, before ours
        for path in [*leftovers, pidfile]:
            if path:
                _remove(path)
    if not stopping and status != 0:
        raise TzeroError(f"nbdkit exited with status {status}")
    service.log("info", "stopped")
    return 0


def _ready(pidfile: str | None, announce: str) -> None:
    """Serving: the pidfile, the announcement on standard output, READY=1 for systemd."""
    if pidfile:
        _write_pidfile(pidfile)
    if announce:
        print(announce, flush=True)
    first = announce.splitlines()[0] if announce else "ready"
    service.notify(f"READY=1\nSTATUS={first}\nMAINPID={os.getpid()}")


def accepts_unix(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def serves_nbd(where: NbdListen) -> bool:
    """The server negotiates NBD: a clean handshake that ends in NBD_OPT_ABORT, so nbdkit does
    not log a half-open probe as an error, and names no export (a subsystem has no default);
    with TLS, only a connection (a client certificate may not be at hand, and nbdkit says
    nothing of a client that hangs up before its handshake)."""
    if where.tls_dir is not None:
        assert where.port is not None, "TLS is for TCP"
        return accepts_tcp(where.dial_host, where.port)
    h = nbd.NBD()
    h.set_opt_mode(True)
    try:
        if where.socket is not None:
            h.connect_unix(where.socket)
        else:
            h.connect_tcp(where.dial_host, str(where.port))
        h.opt_abort()
        return True
    except nbd.Error:
        return False


def _clear_stale_socket(path: str) -> None:
    if not os.path.exists(path):
        return
    if accepts_unix(path):
        raise UsageError(f"{path} is in use by another server")
    os.unlink(path)


def _wait_ready(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.05)
    proc.terminate()
    service.log("error", f"nbdkit did not become ready within {READY_TIMEOUT_S:g} s")
    return False


def _wait_stopped(proc: subprocess.Popen[str], stopping: list[int]) -> int:
    """nbdkit's exit status. Once asked to stop, give it STOP_TIMEOUT_S, then kill it."""
    asked_at = None
    while True:
        try:
            return proc.wait(0.2)
        except subprocess.TimeoutExpired:
            pass
        if stopping and asked_at is None:
            asked_at = time.monotonic()
        if asked_at is not None and time.monotonic() - asked_at > STOP_TIMEOUT_S:
            service.log("warning", f"nbdkit did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM "
                        "(a client still connected?); killing it")
            proc.kill()
            return proc.wait()


def _write_pidfile(path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
