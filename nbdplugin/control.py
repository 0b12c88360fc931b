"""The control socket: a unix stream socket (mode 0600) speaking protocol.py's JSON lines.

One thread accepts; one thread per connection reads a request, has the
subsystem carry it out, and writes the reply, strictly in turn. A malformed or
out-of-order request gets an error reply and the connection stays usable; only
an over-long line closes it (the stream can no longer be framed). A watchdog
thread expires freezes and leases even when no request arrives.
"""

import errno
import os
import socket
import threading

from common.protocol import MAX_LINE, ProtocolError, Reply, encode, parse_request
from nbdplugin.subsystem import Subsystem, log

WATCHDOG_INTERVAL_S = 0.05


class ControlSocketError(Exception):
    """the control socket cannot be set up"""


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock  # set at accept, never changed
        # this connection's thread only
        self.greeted = False  # set by hello, read by the subsystem


class ControlServer:
    def __init__(self, path: str | None, subsystem: Subsystem, fd: int | None = None) -> None:
        """Serve the control socket at PATH, or the listening socket FD that socket activation
        passed in (its file is then the activator's: never removed here)."""
        # set at start-up, never changed (path: by bind(), when FD is given)
        self.path = os.path.abspath(path) if path else ""
        self.fd = fd
        self.subsystem = subsystem
        self._stopping = threading.Event()  # set by stop(), on nbdkit's main thread
        # nbdkit's main thread: made by bind() before start(), closed by stop() (the accept loop then ends)
        self._listener: socket.socket | None = None

    def bind(self) -> None:
        """Create the socket now, so start-up fails loudly if it cannot be had."""
        if self.fd is not None:
            try:
                sock = socket.socket(fileno=self.fd)
                self.path = sock.getsockname()
            except OSError as e:
                raise ControlSocketError(f"control socket (file descriptor {self.fd}): {e.strerror}") from None
            if sock.family != socket.AF_UNIX or not isinstance(self.path, str):
                raise ControlSocketError(f"control socket (file descriptor {self.fd}): not a unix socket")
            self._listener = sock
            return
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            sock.bind(self.path)
        except OSError as e:
            sock.close()
            raise ControlSocketError(f"control socket {self.path}: {e.strerror}") from None
        finally:
            os.umask(old)
        sock.listen(16)
        self._listener = sock

    def _remove_stale(self) -> None:
        if not os.path.exists(self.path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except ConnectionRefusedError:
            os.unlink(self.path)  # left behind by a server that died
            return
        except OSError as e:
            raise ControlSocketError(f"control socket {self.path}: {e.strerror}") from None
        finally:
            probe.close()
        raise ControlSocketError(f"control socket {self.path} is in use by another server")

    def start(self) -> None:
        assert self._listener is not None, "bind() first"
        threading.Thread(target=self._accept_loop, name="tzero-control", daemon=True).start()
        threading.Thread(target=self._watchdog, name="tzero-watchdog", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        if self.fd is None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None, "start() checked that bind() made it"
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(Connection(sock),), name="tzero-conn", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        reader = conn.sock.makefile("rb")
        try:
            while True:
                line = reader.readline(MAX_LINE + 1)
                if not line:
                    break
                if len(line) > MAX_LINE or not line.endswith(b"\n"):
                    conn.sock.sendall(encode(ProtocolError("bad-message", "request line too long").reply()))
                    break
                conn.sock.sendall(encode(self._answer(conn, line)))
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                log(f"control connection failed: {e}")
        finally:
            self.subsystem.connection_closed(conn)
            reader.close()
            conn.sock.close()

    def _answer(self, conn: Connection, line: bytes) -> Reply:
        try:
            reply = self.subsystem.handle(conn, parse_request(line))
        except ProtocolError as e:
            return e.reply()
        except Exception as e:  # a bug must not take the subsystem down with it
            log(f"internal error on control request: {e!r}")
            return ProtocolError("internal", f"{type(e).__name__}: {e}").reply()
        reply["ok"] = True
        return reply

    def _watchdog(self) -> None:
        while not self._stopping.wait(WATCHDOG_INTERVAL_S):
            try:
                self.subsystem.watchdog_tick()
            except Exception as e:
                log(f"watchdog: {e!r}")
