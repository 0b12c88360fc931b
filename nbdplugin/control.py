"""The control server: protocol.py's JSON lines over a unix socket (mode 0600) or TCP with
TLS (listener.py makes and secures the sockets).

One thread accepts; one thread per connection shakes hands (TLS), then reads a request,
has the subsystem carry it out, and writes the reply, strictly in turn. A malformed or
out-of-order request gets an error reply and the connection stays usable; only
an over-long line closes it (the stream can no longer be framed). A watchdog
thread expires freezes and leases even when no request arrives.
"""

import errno
import socket
import ssl
import threading

from common.endpoint import Endpoint
from common.protocol import MAX_LINE, ProtocolError, Reply, encode, parse_request
from common.tls import is_hang_up, tls_failure
from nbdplugin.listener import ControlSocketError, Listener
from nbdplugin.subsystem import Subsystem, log

__all__ = ["ControlServer", "ControlSocketError", "Connection"]

WATCHDOG_INTERVAL_S = 0.05
ACCEPT_RETRY_S = 0.1


class Connection:
    def __init__(self, sock: socket.socket, peer: str) -> None:
        # set at accept (sock: once the handshake is done), never changed
        self.sock = sock
        self.peer = peer  # for logs: "ADDR:PORT", or "a local client"
        # this connection's thread only
        self.greeted = False  # set by hello, read by the subsystem


class ControlServer:
    def __init__(self, endpoint: Endpoint | None, subsystem: Subsystem, tls: ssl.SSLContext | None = None,
                 fd: int | None = None) -> None:
        """Serve the control channel at ENDPOINT, or on the listening socket FD that socket
        activation passed in (listener.py)."""
        # set at start-up, never changed
        self.subsystem = subsystem
        self._listener = Listener(endpoint, tls, fd)
        self._stopping = threading.Event()  # set by stop(), on nbdkit's main thread
        self._bound = False  # nbdkit's main thread: bind() before start()

    def bind(self) -> None:
        """Create the socket now, so start-up fails loudly if it cannot be had."""
        self._listener.bind()
        self._bound = True

    def start(self) -> None:
        assert self._bound, "bind() first"
        threading.Thread(target=self._accept_loop, name="tzero-control", daemon=True).start()
        threading.Thread(target=self._watchdog, name="tzero-watchdog", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError as e:
                if self._stopping.is_set() or e.errno in (errno.EBADF, errno.EINVAL):
                    return  # stop() closed the listener
                # One connection's trouble (reset before accept, out of descriptors for now):
                # the others must still be accepted.
                log(f"control socket: accept failed: {e.strerror or e}")
                self._stopping.wait(ACCEPT_RETRY_S)
                continue
            threading.Thread(target=self._handshake, args=(sock, peer), name="tzero-conn", daemon=True).start()

    def _handshake(self, sock: socket.socket, peer: str) -> None:
        try:
            secured = self._listener.secure(sock)
        except OSError as e:
            if not is_hang_up(e):  # a hang-up: a probe that only checked the port is open
                log(f"control connection from {peer} refused: {tls_failure(e)}", warning=True)
            return
        self._serve(Connection(secured, peer))

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
