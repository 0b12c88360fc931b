"""Client side of the control protocol (common/protocol.py) for one storage subsystem.

Requests on one connection are strictly one at a time, and a request and its reply
are one unit (a Call): the heartbeat thread and the copier share a client, and an
exception between sending a request and reading its reply (Ctrl-C, a timeout) must
neither leave the connection locked nor let a later request read that stale reply.
`send` returns the Call so a caller can put a request to every subsystem before
waiting for any reply, which is how the freeze reaches all subsystems at nearly one
instant.
"""

import json
import socket
import ssl
import threading
from typing import Any

from common.protocol import MAX_LINE, VERSION, encode
from common.tls import tls_failure
from controller.errors import EXIT_FAILURE, SubsystemError
from controller.net.connect import TlsRefused, endpoint_of, open_control

CONNECT_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 60.0  # unless the caller says otherwise (the consistency group: its lease)

# A JSON object as decoded: a reply, or an object in one. Which fields a reply carries depends
# on its op (docs/control-protocol.md); a caller reads the ones its op answers with.
JsonObject = dict[str, Any]


# Error replies that say the moment was wrong, not the request: a later try may succeed.
TRANSIENT = {"busy", "aborted", "freeze-failed", "no-session", "not-owner", "wrong-phase"}


class RequestFailed(SubsystemError):
    """the subsystem answered with an error"""

    def __init__(self, where: str, reply: JsonObject):
        super().__init__(f"{where}: {reply.get('message') or reply.get('error')}")
        self.code: str | None = reply.get("error")
        if self.code not in TRANSIENT:
            self.exit_code = EXIT_FAILURE


class NoReply(SubsystemError):
    """no reply came in time"""


class Call:
    """One request on the wire whose reply is not read yet.

    It holds its client's lock from send until exactly one of reply() or cancel() ends it,
    so no other request can interleave with it. cancel() after reply() does nothing;
    cancel() before it means the reply will never be read, so the connection is out of
    step: the client closes it (the subsystem then aborts a session this connection
    owns) and fails every later request at once.
    """

    def __init__(self, client: "ControlClient", op: str):
        # Set at start, never changed.
        self._client = client
        self.op = op
        # The thread that sent it only (it holds the client's lock until the call ends).
        self._ended = False

    def reply(self, timeout: float | None = None) -> JsonObject:
        """Read and return the reply, waiting at most TIMEOUT seconds (default: the client's
        reply timeout); RequestFailed if it is an error reply, SubsystemError if none came."""
        assert not self._ended, "a call is answered once"
        client = self._client
        wait = client.reply_timeout if timeout is None else timeout
        try:
            client._sock.settimeout(wait)
            line = client._reader.readline(MAX_LINE + 1)
        except BaseException as e:
            if isinstance(e, TimeoutError):
                why = f"{self.op}: no reply within {wait:g} s (host unreachable or stalled?)"
                self._end(broken=why)
                raise NoReply(f"{client.path}: {why}") from None
            self._end(broken=f"{self.op}: reading the reply failed")
            if isinstance(e, ssl.SSLError):
                raise TlsRefused(f"{client.path}: {self.op}: {tls_failure(e)}") from None
            if isinstance(e, OSError):
                raise SubsystemError(f"{client.path}: {self.op}: {e.strerror or e}") from None
            raise
        if not line.endswith(b"\n"):
            self._end(broken=f"{self.op}: the reply was cut short")
            if not line:
                raise SubsystemError(f"{client.path}: the subsystem closed the control connection")
            raise SubsystemError(f"{client.path}: {self.op}: reply cut short or longer than {MAX_LINE} bytes")
        self._end()
        try:
            reply = json.loads(line)
        except ValueError:
            raise SubsystemError(f"{client.path}: {self.op}: garbled reply") from None
        if not isinstance(reply, dict):
            raise SubsystemError(f"{client.path}: {self.op}: garbled reply")
        if not reply.get("ok"):
            raise RequestFailed(f"{client.path}: {self.op}", reply)
        return reply

    def cancel(self) -> None:
        """The reply will not be read: leave the connection closed rather than out of step."""
        if not self._ended:
            self._end(broken=f"the reply to {self.op} was never read")

    def _end(self, broken: str | None = None) -> None:
        self._ended = True
        if broken:
            self._client._break(broken)
        self._client._lock.release()


class ControlClient:
    """One control connection. `_lock` is held by the one Call in flight (a request and its
    reply are one unit); `_broken` says why the connection was given up, once it was.

    PATH is the subsystem's address as the user gave it: a unix socket, or HOST:PORT (then
    over TLS with TLS_DIR's certificates; controller/net/connect.py). Every error names it."""

    def __init__(self, path: str, tls_dir: str | None = None, reply_timeout: float = REPLY_TIMEOUT_S):
        # Set at start, never changed: path, endpoint, reply_timeout, _lock, the socket objects,
        # info (the hello reply). Guarded by _lock (held by the one Call in flight): the bytes
        # through _sock and _reader, the socket's timeout, and _broken.
        self.path = path
        self.endpoint = endpoint_of(path)
        self.reply_timeout = reply_timeout
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._sock: socket.socket = open_control(self.endpoint, tls_dir, CONNECT_TIMEOUT_S)
        self._reader = self._sock.makefile("rb")
        try:
            self.info = self.request("hello", version=VERSION)
        except RequestFailed:
            raise
        except SubsystemError as e:
            if self.endpoint.is_tcp and tls_dir is None and not isinstance(e, (TlsRefused, NoReply)):
                raise TlsRefused(f"{e.message} (in plaintext: does the subsystem require TLS? "
                                 "give --tls-certificates DIR)") from None
            raise

    def send(self, op: str, **fields: object) -> Call:
        """Put a request on the wire and return its Call; the caller ends it with reply() or
        cancel() (a `finally: call.cancel()` is always safe). This split lets a request go
        to every subsystem before any reply is awaited."""
        self._lock.acquire()
        call = Call(self, op)
        try:
            if self._broken:
                raise SubsystemError(f"{self.path}: {op}: the control connection is out of step ({self._broken})")
            self._sock.settimeout(self.reply_timeout)
            self._sock.sendall(encode({"op": op, **fields}))
        except BaseException as e:
            call._end(broken=None if self._broken else f"{op}: sending failed")
            if isinstance(e, OSError):
                raise SubsystemError(f"{self.path}: {op}: {e.strerror or e}") from None
            raise
        return call

    def request(self, op: str, timeout: float | None = None, **fields: object) -> JsonObject:
        """OP with FIELDS, and its reply within TIMEOUT seconds (default: the reply timeout)."""
        call = self.send(op, **fields)
        try:
            return call.reply(timeout)
        finally:
            call.cancel()

    def _break(self, why: str) -> None:
        """Called with the lock held: the stream is out of step, so close it for good."""
        self._broken = why
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

