"""Running nbdkit in the foreground for `tzero serve` and `tzero serve-backup`.

One supervision for both: every path is claimed before nbdkit starts (its directory
exists; a socket another server listens on is refused, one a dead server left behind is
removed, anything that is not a socket is left alone and refused; a pidfile a killed
server left is removed), nbdkit is started, its messages passed on as log lines
(nbdkit_log.py), and once it is ready the pidfile written, what it serves printed and
systemd told (READY=1); SIGTERM/SIGINT/SIGHUP are forwarded (STOPPING=1), nbdkit killed
if it does not stop in time (nbdkit 1.32 waits forever for an idle client after
SIGTERM), and on the way out the sockets and pidfile removed: only those this run made
(the very files, by inode), never another server's.
"""

import os
import shutil
import signal
import socket
import stat
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


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a TCP port (1 to 65535)")


def listen_args(where: NbdListen) -> list[str]:
    """nbdkit's options for listening WHERE; a unix socket is claimed first (claim_socket)."""
    if where.socket is not None:
        claim_socket(where.socket, "--socket")
    elif where.port is None:
        raise UsageError("--port: not a TCP port")
    else:
        check_port(where.port)
    return where.nbdkit_args()


def claim_socket(path: str, option: str) -> None:
    """Make PATH free for a server to bind, or UsageError: its directory must exist, a server
    listening there is refused, a socket a dead server left is removed, and anything else
    there (a file, a directory) is left alone and refused."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {path}: no such directory {parent}")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UsageError(f"{option} {path}: exists and is not a socket; not touching it")
    if accepts_unix(path):
        raise UsageError(f"{option} {path} is in use by another server")
    _remove(path)


def check_pidfile(pidfile: str | None) -> None:
    """The pidfile's directory exists; a pidfile a killed server left (its process gone) is
    removed, so that it never says a server runs before this one does; one naming a live
    process is refused."""
    if not pidfile:
        return
    parent = os.path.dirname(os.path.abspath(pidfile))
    if not os.path.isdir(parent):
        raise UsageError(f"--pidfile {pidfile}: no such directory {parent}")
    try:
        with open(pidfile) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return
    except OSError as e:
        raise UsageError(f"--pidfile {pidfile}: {e.strerror}") from None
    if text.isascii() and text.isdigit() and _alive(int(text)):
        raise UsageError(f"--pidfile {pidfile} names process {text}, which is running")
    _remove(pidfile)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_nbdkit(cmd: list[str], ready: Callable[[], bool], pidfile: str | None, leftovers: list[str | None],
               announce: str = "", verbose: bool = False, env: dict[str, str] | None = None,
               pass_fds: tuple[int, ...] = ()) -> int:
    """Run CMD until it exits or we are asked to stop; READY() says when it serves, and then
    ANNOUNCE (what it serves, one item a line) is printed. ENV and PASS_FDS go to nbdkit.
    LEFTOVERS: the paths nbdkit makes (claimed free beforehand): on the way out each is removed
    if it is still the file this run's nbdkit made; so is the pidfile, if still ours.
    Returns 0 when stopped by a signal, else raises TzeroError on a non-zero exit."""
    made = Made([p for p in leftovers if p])
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace", env=env, pass_fds=pass_fds)
    assert proc.stderr is not None, "made with stderr=PIPE"
    messages = nbdkit_log.relay(proc.stderr, verbose)
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            service.notify("STOPPING=1")
        stopping.append(signum)
        proc.send_signal(signal.SIGTERM)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    try:
        if _wait_ready(proc, ready, made):
            _ready(pidfile, announce, made)
        status = _wait_stopped(proc, stopping)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        messages.join(STOP_TIMEOUT_S)  # nbdkit's last words, before ours
        made.remove()
    if not stopping and status != 0:
        raise TzeroError(f"nbdkit exited with status {status}")
    service.log("info", "stopped")
    return 0


def _ready(pidfile: str | None, announce: str, made: "Made") -> None:
    """Serving: the pidfile, the announcement on standard output, READY=1 for systemd."""
    if pidfile:
        _write_pidfile(pidfile)
        made.add(pidfile)
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


class Made:
    """The files this run made, known by inode: only they are removed at the end."""

    def __init__(self, watched: list[str]):
        self.watched = watched  # paths our nbdkit will make (claimed free before it started)
        self.ids: dict[str, tuple[int, int]] = {}

    def note(self) -> None:
        """Record any watched path that appeared: our nbdkit made it (each was free before)."""
        for path in self.watched:
            if path not in self.ids:
                self.add(path)

    def add(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        self.ids[path] = (st.st_dev, st.st_ino)

    def remove(self) -> None:
        for path, ident in self.ids.items():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) == ident:
                _remove(path)


def _wait_ready(proc: subprocess.Popen[str], ready: Callable[[], bool], made: Made) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        made.note()
        if proc.poll() is not None:
            return False
        if ready():
            made.note()
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
