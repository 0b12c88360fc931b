"""Where a subsystem listens and a controller connects: a unix socket path, or HOST:PORT.

    /run/s1.ctl, ./s1.ctl, s1.ctl   a unix socket (anything that is not HOST:PORT)
    storage1:7000, 10.0.0.5:7000    TCP on a host name or an IPv4 address
    [fd00::5]:7000                  TCP on an IPv6 address (brackets, as in URLs)

Text with a ':' and no '/' is read as HOST:PORT: a unix socket whose name holds a ':' is
written with a directory (./s1:a.ctl).

Both sides tune their TCP sockets the same way (`tune_tcp`): keepalive probes and a
user timeout, so a peer that vanished without a word (a partition, a host that lost
power) breaks the connection within about KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S *
KEEPALIVE_COUNT seconds when idle, and within USER_TIMEOUT_S when data sent is never
acknowledged, instead of the kernel's defaults (two hours; about fifteen minutes).
These bound how long a dead connection lingers; how soon a backup notices a partition
is the lease's and the reply timeouts' job (docs/architecture.md).
"""

import ipaddress
import re
import socket
from dataclasses import dataclass

KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
USER_TIMEOUT_S = 15

_TCP = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/\[\]\s]+)):(?P<port>\d+)")


class EndpointError(ValueError):
    """a socket address is malformed"""


@dataclass(frozen=True)
class Endpoint:
    """A unix socket (`path`) or a TCP `host` and `port`; exactly one kind is set."""

    path: str | None = None
    host: str | None = None
    port: int = 0

    @property
    def is_tcp(self) -> bool:
        return self.host is not None

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        assert self.host is not None, "parse_endpoint sets a host or a path"
        return f"{bracketed(self.host)}:{self.port}"


def bracketed(host: str) -> str:
    """HOST as it goes before ':PORT' (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def parse_endpoint(text: str, what: str) -> Endpoint:
    """TEXT as an Endpoint; EndpointError naming WHAT (the option or parameter) if it is malformed."""
    if not text:
        raise EndpointError(f"{what}: empty address")
    m = _TCP.fullmatch(text)
    if m is None:
        if ":" in text and "/" not in text:
            raise EndpointError(f"{what} {text!r}: expected HOST:PORT, [IPV6]:PORT or a unix socket path")
        return Endpoint(path=text)
    port = int(m["port"])
    if not 0 < port < 65536:
        raise EndpointError(f"{what} {text!r}: {port} is not a TCP port (1-65535)")
    host = m["v6"] or m["host"]
    if m["v6"]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise EndpointError(f"{what} {text!r}: {host!r} is not an IPv6 address") from None
    return Endpoint(host=host, port=port)


def is_wildcard(host: str) -> bool:
    """True for an address that means every interface (0.0.0.0, ::, or the empty host)."""
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """True only if every address HOST stands for is a loopback address (127.0.0.0/8, ::1).

    A name is resolved: "localhost" counts, a name that also resolves to another address
    does not, and a name that does not resolve does not (it cannot be shown to be local)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def tune_tcp(sock: socket.socket) -> None:
    """Keepalive and a user timeout on a TCP socket (see the module's docstring); a unix
    socket is left as it is (its peer cannot vanish without the kernel knowing)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_S * 1000)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def check_transport(endpoint: Endpoint, tls: bool, insecure_plaintext: bool, what: str) -> None:
    """Refuse, with one line (EndpointError), a listening ENDPOINT that would expose what it carries:
    TCP off loopback without TLS, always; TCP on loopback without TLS, unless INSECURE_PLAINTEXT."""
    if endpoint.host is None or tls:
        return
    if not is_loopback(endpoint.host):
        raise EndpointError(f"{what} on {endpoint}: not a loopback address, and without TLS anyone who reaches "
                            "it could read and write the disks; give --tls-certificates DIR")
    if not insecure_plaintext:
        raise EndpointError(f"{what} on {endpoint}: TCP without TLS lets every local user read and write the "
                            "disks; give --tls-certificates DIR, or --insecure-plaintext-tcp to accept that")
