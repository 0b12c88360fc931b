"""Where `tzero serve` and `tzero serve-backup` have nbdkit listen, checked before it starts.

NBD goes on a unix socket, or on TCP at --bind (loopback by default) and --port. With
--tls-certificates, nbdkit requires TLS and a client certificate signed by the directory's
CA (--tls=require --tls-verify-peer), which is what keeps other hosts and other local
users off the disks; TCP without it is refused off loopback, and on loopback unless
--insecure-plaintext-tcp says to accept it (common/endpoint.py: check_transport).
"""

import socket
from dataclasses import dataclass

from common.endpoint import Endpoint, EndpointError, bracketed, check_transport, is_wildcard
from common.tls import TlsSetupError, server_context
from controller.errors import UsageError


@dataclass(frozen=True)
class NbdListen:
    """A unix socket, or TCP host and port with or without TLS."""

    socket: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    tls_dir: str | None = None

    def __str__(self) -> str:
        return self.socket if self.socket is not None else f"{bracketed(self.host)}:{self.port}"

    @property
    def dial_host(self) -> str:
        """Where a process on this host reaches it (loopback for a wildcard bind)."""
        if is_wildcard(self.host):
            return "::1" if ":" in self.host else "127.0.0.1"
        return self.host

    def nbdkit_args(self) -> list[str]:
        """nbdkit's options for listening here (the unix socket's stale file is the runner's job)."""
        if self.socket is not None:
            return ["-U", self.socket]
        args = ["-i", self.host, "-p", str(self.port)]
        if self.tls_dir is not None:
            args += ["--tls=require", f"--tls-certificates={self.tls_dir}", "--tls-verify-peer"]
        return args


def checked_transport(endpoint: Endpoint, tls_dir: str | None, insecure: bool, what: str) -> None:
    """UsageError if ENDPOINT may not be served so (common/endpoint.py's rules), or if it is
    TCP and its port is taken already."""
    try:
        check_transport(endpoint, tls_dir is not None, insecure, what)
    except EndpointError as e:
        raise UsageError(str(e)) from None
    if endpoint.host is not None:
        check_tcp_free(endpoint.host, endpoint.port, what)


def checked_certificates(tls_dir: str) -> None:
    """UsageError unless TLS_DIR holds a server's certificates that load (one line, no key content)."""
    try:
        server_context(tls_dir)
    except TlsSetupError as e:
        raise UsageError(str(e)) from None


def check_tcp_free(host: str, port: int, what: str) -> None:
    """UsageError if nothing could listen at HOST:PORT now (taken, or not an address of this host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as e:
        raise UsageError(f"{what} on {bracketed(host)}:{port}: {getattr(e, 'strerror', None) or e}") from None
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as e:
        raise UsageError(f"{what} on {bracketed(host)}:{port}: {e.strerror}") from None
    finally:
        probe.close()


def accepts_tcp(host: str, port: int) -> bool:
    """True once something listens at HOST:PORT. Connects and hangs up without a word, which
    neither nbdkit nor the control server logs as an error."""
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False
