"""The control channel's TLS: both sides need a certificate of the one CA, the client checks
the server's name, and no error ever shows key material."""

import os
import shutil
import socket
import ssl
import threading

import pytest

from common.tls import TlsSetupError, client_context, server_context, tls_failure


class OneShotServer(threading.Thread):
    """Accepts one connection, shakes hands with CONTEXT, echoes one line; keeps the outcome."""

    def __init__(self, context: ssl.SSLContext):
        super().__init__(daemon=True)
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.error: BaseException | None = None
        self.peer: dict | None = None

    def run(self):
        conn, _ = self.listener.accept()
        conn.settimeout(10)
        try:
            with self.context.wrap_socket(conn, server_side=True) as s:
                self.peer = s.getpeercert()
                s.sendall(s.recv(100))
        except OSError as e:
            self.error = e
        finally:
            self.listener.close()


def talk(server_dir, client_ctx, host="127.0.0.1"):
    server = OneShotServer(server_context(server_dir))
    server.start()
    try:
        with client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=10),
                                    server_hostname=host) as s:
            s.sendall(b"ping\n")
            answer = s.recv(100)
    except OSError as e:
        answer = e
    server.join(10)
    return answer, server


def test_tls_both_sides_with_certificates_of_one_ca_talk(pki):
    answer, server = talk(pki, client_context(pki))
    assert answer == b"ping\n"
    assert dict(x[0] for x in server.peer["subject"])["commonName"] == "tzero client"


def test_tls_a_client_without_a_certificate_is_refused(pki, tmp_path):
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(os.path.join(pki, "ca-cert.pem"))
    answer, server = talk(pki, bare)
    assert isinstance(answer, OSError)
    assert "certificate" in tls_failure(server.error)


def test_tls_a_client_of_another_ca_is_refused_and_refuses_the_server(pki, other_pki):
    answer, server = talk(pki, client_context(other_pki))
    assert isinstance(answer, ssl.SSLCertVerificationError)
    assert "failed verification" in tls_failure(answer)
    assert server.error is not None


def test_tls_a_server_certificate_for_other_names_is_refused_by_the_client(pki):
    answer, _ = talk(pki, client_context(pki), host="storage9.example")
    assert isinstance(answer, ssl.SSLCertVerificationError) and "storage9.example" in answer.verify_message


def test_tls_setup_errors_name_the_file_never_its_content(pki, tmp_path):
    with pytest.raises(TlsSetupError, match="not a directory"):
        server_context(str(tmp_path / "none"))
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(os.path.join(pki, "ca-cert.pem"), half)
    with pytest.raises(TlsSetupError, match="server-cert.pem is missing"):
        server_context(str(half))
    with pytest.raises(TlsSetupError, match="client-cert.pem is missing"):
        client_context(str(half))
    bad = tmp_path / "bad"
    shutil.copytree(pki, bad)
    secret = "-----BEGIN PRIVATE KEY-----\nU0VDUkVULUtFWS1NQVRFUklBTA==\n-----END PRIVATE KEY-----\n"
    (bad / "server-key.pem").write_text(secret)
    with pytest.raises(TlsSetupError) as e:
        server_context(str(bad))
    assert "server-key.pem" in str(e.value) and "U0VDUkVU" not in str(e.value) and "PRIVATE" not in str(e.value)
