"""Where the control server listens: a unix socket (mode 0600) or TCP, with TLS when given;
or a listening socket that socket activation passed in (its file is then the activator's,
never removed here).

`bind` makes (or adopts) the listening socket at start-up, so a socket that cannot be had
fails loudly then. `accept` hands back the raw connection; `secure` runs its TLS handshake
on the connection's own thread (a client slow to shake hands holds up only its own
thread), bounded by common/tls.py's HANDSHAKE_TIMEOUT_S. Every TCP connection gets
keepalive and a user timeout (common/endpoint.py), so one whose peer vanished ends
within seconds, not hours.
"""

import os
import socket
import ssl
import stat

from common.endpoint import Endpoint, tune_tcp
from common.tls import HANDSHAKE_TIMEOUT_S

BACKLOG = socket.SOMAXCONN  # a burst of clients queues here; the kernel caps it at net.core.somaxconn


class ControlSocketError(Exception):
    """the control socket cannot be set up"""


class Listener:
    def __init__(self, endpoint: Endpoint | None, tls: ssl.SSLContext | None, fd: int | None = None) -> None:
        """ENDPOINT to bind, or FD to adopt (then ENDPOINT may be None)."""
        assert endpoint is not None or fd is not None, "config.validate() asks for one"
        # set at start-up, never changed (endpoint and tls: by bind(), when FD is given)
        self.endpoint = endpoint or Endpoint(path="")
        self.path = os.path.abspath(self.endpoint.path) if self.endpoint.path else None
        self.fd = fd
        self._tls = tls
        # None: plaintext. A unix socket always is (its mode guards it, as for NBD's); TCP is
        # plaintext only on loopback, where the user allowed it.
        self.tls = tls if self.endpoint.is_tcp else None
        # nbdkit's main thread: made by bind(), closed by close() (accept then fails)
        self._sock: socket.socket | None = None
        self._made: tuple[int, int] | None = None  # the socket file bind made: close() removes only it

    def bind(self) -> None:
        if self.fd is not None:
            self._sock = self._adopt(self.fd)
            return
        self._sock = self._bind_unix() if self.path is not None else self._bind_tcp()
        self._sock.listen(BACKLOG)

    def _adopt(self, fd: int) -> socket.socket:
        """The listening socket socket activation passed in as FD (already listening)."""
        try:
            sock = socket.socket(fileno=fd)
            name = sock.getsockname()
        except OSError as e:
            raise ControlSocketError(f"control socket (file descriptor {fd}): {e.strerror}") from None
        if sock.family == socket.AF_UNIX and isinstance(name, str):
            self.endpoint = Endpoint(path=name)
        elif sock.family in (socket.AF_INET, socket.AF_INET6):
            self.endpoint = Endpoint(host=str(name[0]), port=int(name[1]))
            self.tls = self._tls
        else:
            raise ControlSocketError(f"control socket (file descriptor {fd}): neither a unix nor a TCP socket")
        return sock

    def _bind_tcp(self) -> socket.socket:
        host, port = self.endpoint.host, self.endpoint.port
        assert host is not None, "an endpoint has a path or a host"
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except (OSError, UnicodeError) as e:
            raise ControlSocketError(f"control address {self.endpoint}: {getattr(e, 'strerror', None) or e}") from None
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart must not wait for TIME_WAIT
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError as e:
            sock.close()
            raise ControlSocketError(f"control address {self.endpoint}: {e.strerror}") from None
        return sock

    def _bind_unix(self) -> socket.socket:
        assert self.path is not None, "called for a unix endpoint"
        self._remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            sock.bind(self.path)
        except OSError as e:
            sock.close()
            raise ControlSocketError(f"control socket {self.path}: {e.strerror}") from None
        finally:
            os.umask(old)
        st = os.stat(self.path)
        self._made = (st.st_dev, st.st_ino)
        return sock

    @staticmethod
    def _remove_stale(path: str) -> None:
        """Remove a socket a dead server left at PATH; refuse a live one, or anything else there."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlSocketError(f"control socket {path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # left behind by a server that died
            return
        except OSError as e:
            raise ControlSocketError(f"control socket {path}: {e.strerror}") from None
        finally:
            probe.close()
        raise ControlSocketError(f"control socket {path} is in use by another server")

    def accept(self) -> tuple[socket.socket, str]:
        """The next connection and who it is from (for logs); OSError once closed."""
        assert self._sock is not None, "bind() first"
        sock, address = self._sock.accept()
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "a local client"
        return sock, peer

    def secure(self, sock: socket.socket) -> socket.socket:
        """SOCK tuned (keepalive) and after the TLS handshake (the client's certificate checked
        against the CA), or as it is without TLS. Runs on the connection's thread: ssl.SSLError
        or OSError if the peer is gone or the handshake fails; SOCK is then closed."""
        try:
            tune_tcp(sock)
            if self.tls is None:
                return sock
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            secured = self.tls.wrap_socket(sock, server_side=True)
        except BaseException:
            sock.close()
            raise
        secured.settimeout(None)  # requests may be far apart; keepalive watches the peer
        return secured

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self.path is not None and self.fd is None:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._made:  # never another server's socket made since
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
