"""Opening a control connection: a unix socket, or TCP (with TLS when given certificates).

The controller never sends the control protocol over a network in plaintext: TCP without
certificates is refused unless the address is loopback (where the subsystem itself must have
been started with --insecure-plaintext-tcp to accept it). Every TCP connection gets keepalive
and a user timeout (common/endpoint.py). A TLS client context is made once per directory.
"""

import socket
import ssl
import time
from functools import lru_cache

from common.endpoint import Endpoint, EndpointError, is_loopback, parse_endpoint, tune_tcp
from common.tls import HANDSHAKE_TIMEOUT_S, TlsSetupError, client_context, tls_failure
from controller.errors import EXIT_FAILURE, SubsystemError, UsageError


class TlsRefused(SubsystemError):
    """the TLS handshake failed: a certificate was refused, or the peer does not speak TLS"""

    exit_code = EXIT_FAILURE  # trying again with the same certificates fails the same way


def endpoint_of(address: str) -> Endpoint:
    """ADDRESS as the user gave it (-s, status), or UsageError."""
    try:
        return parse_endpoint(address, "subsystem address")
    except EndpointError as e:
        raise UsageError(str(e)) from None


CONNECT_RETRY_S = 0.01  # between tries while a subsystem's listen backlog is full


def _open_unix(path: str, timeout: float) -> socket.socket:
    """A unix socket connected to PATH within TIMEOUT; SubsystemError if none.

    A unix-socket connect under a timeout is non-blocking, and fails at once with EAGAIN while
    the server's listen backlog is full (a burst of clients): that only means "wait your turn",
    so it is tried again until the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError as e:
            sock.close()
            if time.monotonic() >= deadline:
                raise SubsystemError(f"control socket {path}: {e.strerror or e} (the subsystem accepted "
                                     f"no connection in {timeout:g} s)") from None
            time.sleep(CONNECT_RETRY_S)
        except OSError as e:
            sock.close()
            raise SubsystemError(f"control socket {path}: {e.strerror or e}") from None


@lru_cache(maxsize=4)
def tls_context(directory: str) -> ssl.SSLContext:
    try:
        return client_context(directory)
    except TlsSetupError as e:
        raise UsageError(str(e)) from None


def check_plaintext(endpoint: Endpoint, tls_dir: str | None) -> None:
    """UsageError if talking to ENDPOINT without TLS would cross a network."""
    if endpoint.host is not None and tls_dir is None and not is_loopback(endpoint.host):
        raise UsageError(f"{endpoint} is not a loopback address: give --tls-certificates DIR "
                         "(tzero never talks to a subsystem over a network in plaintext)")


def open_control(endpoint: Endpoint, tls_dir: str | None, timeout: float) -> socket.socket:
    """A connected control socket to ENDPOINT, TLS done when TLS_DIR is given for a TCP
    endpoint; SubsystemError (exit 3) if it cannot be reached, TlsRefused if TLS fails.
    The socket's timeout is TIMEOUT."""
    check_plaintext(endpoint, tls_dir)
    if endpoint.path is not None:
        return _open_unix(endpoint.path, timeout)
    assert endpoint.host is not None, "an endpoint has a path or a host"
    ctx = tls_context(tls_dir) if tls_dir is not None else None
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=min(timeout, HANDSHAKE_TIMEOUT_S))
    except OSError as e:
        reason = "no answer (host unreachable?)" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise SubsystemError(f"{endpoint}: {reason}") from None
    tune_tcp(sock)
    if ctx is None:
        sock.settimeout(timeout)
        return sock
    try:
        secured = ctx.wrap_socket(sock, server_hostname=endpoint.host)
    except OSError as e:
        sock.close()
        if isinstance(e, TimeoutError):
            raise SubsystemError(f"{endpoint}: no answer during the TLS handshake (host unreachable?)") from None
        raise TlsRefused(f"{endpoint}: {tls_failure(e)}") from None
    secured.settimeout(timeout)
    return secured
