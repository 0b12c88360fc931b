"""Client side of the control protocol (nbdplugin/protocol.py) for one storage subsystem.

Requests on one connection are strictly one at a time; `_lock` makes that hold
when the heartbeat thread and the copier share a client. `send`/`receive` are
split so a caller can put a request to every subsystem before waiting for any
reply, which is how the freeze reaches all subsystems at nearly one instant.
"""

import json
import socket
import threading

from controller.errors import SubsystemError
from nbdplugin.protocol import MAX_LINE, VERSION, encode

CONNECT_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 60.0


class RequestFailed(SubsystemError):
    """the subsystem answered with an error"""

    def __init__(self, where: str, reply: dict):
        super().__init__(f"{where}: {reply.get('message') or reply.get('error')}")
        self.code = reply.get("error")


class ControlClient:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise SubsystemError(f"control socket {path}: {e.strerror or e}") from None
        self._sock.settimeout(REPLY_TIMEOUT_S)
        self._reader = self._sock.makefile("rb")
        self.info = self.request("hello", version=VERSION)

    def send(self, op: str, **fields) -> None:
        """Put a request on the wire; the caller must call receive() next (holding no other request)."""
        self._lock.acquire()
        try:
            self._sock.sendall(encode({"op": op, **fields}))
        except OSError as e:
            self._lock.release()
            raise SubsystemError(f"{self.path}: {op}: {e.strerror or e}") from None
        self._op = op

    def receive(self) -> dict:
        try:
            line = self._reader.readline(MAX_LINE + 1)
        except OSError as e:
            raise SubsystemError(f"{self.path}: {self._op}: {e.strerror or e}") from None
        finally:
            self._lock.release()
        if not line:
            raise SubsystemError(f"{self.path}: the subsystem closed the control connection")
        try:
            reply = json.loads(line)
        except ValueError:
            raise SubsystemError(f"{self.path}: {self._op}: garbled reply") from None
        if not reply.get("ok"):
            raise RequestFailed(f"{self.path}: {self._op}", reply)
        return reply

    def request(self, op: str, **fields) -> dict:
        self.send(op, **fields)
        return self.receive()

    def close(self) -> None:
        self._reader.close()
        self._sock.close()
