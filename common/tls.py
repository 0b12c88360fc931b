"""The certificate directory and the TLS contexts of the control channel.

One directory layout, the one nbdkit, libnbd and QEMU already share, so one directory
serves tzero's control channel and NBD alike:

    ca-cert.pem                      the certificate authority both sides trust
    server-cert.pem, server-key.pem  a subsystem's identity (`tzero serve`)
    client-cert.pem, client-key.pem  a client's identity (`tzero backup`, applications)

A directory holding all five works for both sides. Both sides require the other's
certificate to be signed by ca-cert.pem; a client also checks that the server's
certificate names the host it connected to (a DNS name or an IP address in the
certificate's subject alternative names). TLS 1.2 at least.

Errors name files, never their content: no key material reaches a message.
"""

import os
import ssl

CA_CERT = "ca-cert.pem"
SERVER_CERT, SERVER_KEY = "server-cert.pem", "server-key.pem"
CLIENT_CERT, CLIENT_KEY = "client-cert.pem", "client-key.pem"
HANDSHAKE_TIMEOUT_S = 10.0


class TlsSetupError(Exception):
    """the certificate directory cannot be used"""


def _files(directory: str, names: tuple[str, ...]) -> list[str]:
    if not os.path.isdir(directory):
        raise TlsSetupError(f"TLS certificates {directory}: not a directory")
    paths = [os.path.join(directory, n) for n in names]
    for p in paths:
        if not os.path.isfile(p):
            raise TlsSetupError(f"TLS certificates: {p} is missing ({', '.join(names)} are needed)")
        if not os.access(p, os.R_OK):
            raise TlsSetupError(f"TLS certificates: {p} is not readable")
    return paths


def _load(ctx: ssl.SSLContext, ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(ca)
    except ssl.SSLError:
        raise TlsSetupError(f"TLS certificates: {ca} is not a PEM certificate") from None
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError:
        raise TlsSetupError(f"TLS certificates: {cert} and {key} are not a PEM certificate and "
                            "its private key") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def check_server_files(directory: str) -> None:
    """TlsSetupError unless DIRECTORY holds what a server needs (named files, readable)."""
    _files(directory, (CA_CERT, SERVER_CERT, SERVER_KEY))


def server_context(directory: str) -> ssl.SSLContext:
    """A server context: our server certificate; clients must present one signed by the CA."""
    ca, cert, key = _files(directory, (CA_CERT, SERVER_CERT, SERVER_KEY))
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca, cert, key)


def client_context(directory: str) -> ssl.SSLContext:
    """A client context: our client certificate; the server's must be signed by the CA and
    name the host we connect to (check_hostname)."""
    ca, cert, key = _files(directory, (CA_CERT, CLIENT_CERT, CLIENT_KEY))
    ctx = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca, cert, key)
    assert ctx.check_hostname, "PROTOCOL_TLS_CLIENT checks the server's name"
    return ctx


def is_hang_up(e: OSError) -> bool:
    """Whether a failed server-side handshake was only the client hanging up before it began
    (a probe checking the port is open): nothing to log."""
    return isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError))


def tls_failure(e: OSError) -> str:
    """What a failed handshake means, in words for one line (OpenSSL's reason, without codes)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: the peer's certificate failed verification ({e.verify_message})"
    reason = getattr(e, "reason", None)
    if reason:
        return "TLS: " + str(reason).lower().replace("_", " ")
    if isinstance(e, ssl.SSLEOFError):
        return "TLS: the peer closed the connection during the handshake (was our certificate refused?)"
    return f"TLS: {e.strerror or e}"
