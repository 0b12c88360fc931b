"""The control server: protocol.py's JSON lines over a unix socket (mode 0600) or TCP with
TLS (listener.py makes and secures the sockets).

One thread accepts; one thread per connection shakes hands (TLS), then reads a request,
has the subsystem carry it out, and writes the reply, strictly in turn. A malformed or
out-of-order request gets an error reply and the connection stays usable; only
an over-long line closes it (the stream can no longer be framed). A watchdog
thread expires freezes and leases even when no request arrives.

Who may connect: on a unix socket, born 0600, each connection's peer credentials
(SO_PEERCRED) are checked as well, so that a socket whose mode or directory was opened
up still serves only the user running the subsystem and root; anyone else gets a
`denied` reply to its first request and is hung up on. (Over TCP, TLS client
certificates say who may.) A burst of connections queues in the listen backlog (the
system's largest, listener.py); at most MAX_CONNECTIONS are served at once, and the
accept thread waits for one to end before taking more, so a flood costs no more than
that many threads. A connection that sends nothing within FIRST_REQUEST_S of its
handshake is closed, so that a flood of idle connections cannot hold every slot for good.
"""

import errno
import os
import socket
import ssl
import struct
import threading

from common.endpoint import Endpoint
from common.protocol import MAX_LINE, ProtocolError, Reply, encode, parse_request
from common.tls import is_hang_up, tls_failure
from nbdplugin.listener import ControlSocketError, Listener
from nbdplugin.subsystem import Subsystem, log

__all__ = ["ControlServer", "ControlSocketError", "Connection"]

WATCHDOG_INTERVAL_S = 0.05
ACCEPT_RETRY_S = 0.1
MAX_CONNECTIONS = 256
FIRST_REQUEST_S = 5.0  # tzero sends hello at once; a client that does not is let go
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


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
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)  # one per connection being served
        self._uids = {0, os.geteuid()}  # who may use a unix control socket: root and the serving user
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
            self._slots.acquire()  # given back by the connection's thread when it ends
            try:
                sock, peer = self._listener.accept()
            except OSError as e:
                self._slots.release()
                if self._stopping.is_set() or e.errno in (errno.EBADF, errno.EINVAL):
                    return  # stop() closed the listener
                # One connection's trouble (reset before accept, out of descriptors for now):
                # the others must still be accepted.
                log(f"control socket: accept failed: {e.strerror or e}")
                self._stopping.wait(ACCEPT_RETRY_S)
                continue
            try:
                threading.Thread(target=self._connection, args=(sock, peer), name="tzero-conn", daemon=True).start()
            except RuntimeError as e:  # no thread to be had: turn this one away, keep serving the others
                log(f"control connection from {peer} refused: {e}", warning=True)
                sock.close()
                self._slots.release()

    def _connection(self, sock: socket.socket, peer: str) -> None:
        try:
            self._handshake(sock, peer)
        finally:
            self._slots.release()

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
            uid = self._peer_uid(conn.sock)
            conn.sock.settimeout(FIRST_REQUEST_S)
            while True:
                try:
                    line = reader.readline(MAX_LINE + 1)
                except TimeoutError:
                    break  # silent since it connected: its slot goes to somebody else
                conn.sock.settimeout(None)
                if not line:
                    break
                if uid is not None and uid not in self._uids:  # its first request is answered: it learns why
                    log(f"control connection from uid {uid} refused", warning=True)
                    conn.sock.sendall(encode(ProtocolError("denied", f"uid {uid} may not use this control socket "
                                                           f"(only uid {os.geteuid()}, which serves it, and root)")
                                             .reply()))
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

    @staticmethod
    def _peer_uid(sock: socket.socket) -> int | None:
        """The uid of a unix socket's peer (SO_PEERCRED); None over TCP, where TLS says who."""
        if sock.family != socket.AF_UNIX:
            return None
        _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        return int(uid)

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
