"""Making the certificate directory that `tzero serve`, `tzero backup`, nbdkit, libnbd and QEMU
read (common/tls.py describes the layout).

What is made, and why so:
- keys: ECDSA on NIST P-256 (about the strength of RSA 3072), signatures SHA-256. Every TLS
  stack here (OpenSSL in Python, GnuTLS in nbdkit, libnbd and QEMU) takes them, and they
  are made in milliseconds.
- the CA: valid CA_DAYS (10 years), may sign certificates but no further CAs (path length 0).
- server and client certificates: valid LEAF_DAYS (2 years) unless told otherwise; key usage
  digital signature and key encipherment, marked critical (QEMU 7.2 refuses a critical key
  usage without key encipherment), extended key usage serverAuth or clientAuth. A server
  certificate names every --host as a subject alternative name (an IP address or a DNS name):
  clients check the name they connect to against it.
- validity starts CLOCK_SKEW before now, so hosts whose clocks lag a little accept it at once.
- keys are written 0600 (created so, never widened), certificates 0644; an existing file
  is replaced only when asked (force), through a new file renamed over it.
"""

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.tls import CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY

CA_KEY = "ca-key.pem"
CA_DAYS = 3650
LEAF_DAYS = 730
CLOCK_SKEW = datetime.timedelta(minutes=5)
CURVE = ec.SECP256R1
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


class CertError(Exception):
    """the certificates cannot be made as asked"""


@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=not ca,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def new_authority(name: str = "tzero CA", days: int = CA_DAYS) -> Authority:
    key = ec.generate_private_key(CURVE())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Authority(key, cert)


def subject_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """Each host as an IP address or a DNS name; CertError for one that is neither."""
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h.strip("[]"))))
        except ValueError:
            if not _HOSTNAME.fullmatch(h) or len(h) > 253:
                raise CertError(f"--host {h!r} is neither an IP address nor a host name") from None
            names.append(x509.DNSName(h.rstrip(".").lower()))
    return names


def issue(ca: Authority, common_name: str, server_hosts: Sequence[str] | None,
          days: int = LEAF_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate signed by CA: a server's for SERVER_HOSTS, or a client's (None)."""
    key = ec.generate_private_key(CURVE())
    now = _now()
    purpose = ExtendedKeyUsageOID.CLIENT_AUTH if server_hosts is None else ExtendedKeyUsageOID.SERVER_AUTH
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
         .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(_usage(ca=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False))
    if server_hosts is not None:
        b = b.add_extension(x509.SubjectAlternativeName(subject_names(server_hosts)), critical=False)
    return key, b.sign(ca.key, hashes.SHA256())


def load_authority(directory: str) -> Authority:
    """The CA kept in DIRECTORY (ca-cert.pem and ca-key.pem), to issue more certificates."""
    paths = [os.path.join(directory, n) for n in (CA_CERT, CA_KEY)]
    try:
        with open(paths[0], "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(paths[1], "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise CertError(f"--ca {directory}: {e.filename}: {e.strerror}") from None
    except (ValueError, TypeError):
        raise CertError(f"--ca {directory}: {CA_CERT} and {CA_KEY} are not a PEM certificate and its "
                        "unencrypted key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _public(key.public_key()) != _public(cert.public_key()):
        raise CertError(f"--ca {directory}: {CA_KEY} is not the key of {CA_CERT}")
    return Authority(key, cert)


def _public(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_files(directory: str, files: dict[str, bytes], force: bool) -> None:
    """Write FILES (name -> content) into DIRECTORY (made 0700 if missing): keys (*-key.pem) 0600,
    the rest 0644. Nothing is written if one exists and FORCE is false (CertError)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    existing = [n for n in files if os.path.lexists(os.path.join(directory, n))]
    if existing and not force:
        raise CertError(f"{directory} already holds {', '.join(existing)}; use --force to replace them")
    for name, content in files.items():
        path = os.path.join(directory, name)
        tmp = f"{path}.new"
        mode = 0o600 if name.endswith("-key.pem") else 0o644
        if os.path.lexists(tmp):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(content)
                f.flush()
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


def make_directory(directory: str, hosts: Sequence[str], client: bool, ca_dir: str | None = None,
                   days: int = LEAF_DAYS, force: bool = False) -> dict[str, datetime.datetime]:
    """Make DIRECTORY's certificates: a new CA (or the one in CA_DIR), a server certificate for
    HOSTS (if any), a client certificate (if CLIENT). Returns each certificate file's expiry."""
    if not hosts and not client:
        raise CertError("nothing to make: give --host for a server certificate, or leave out --no-client")
    if days <= 0:
        raise CertError("--days must be positive")
    subject_names(hosts)  # a bad name is refused before anything is made
    made_ca = ca_dir is None
    ca = new_authority() if ca_dir is None else load_authority(ca_dir)
    files: dict[str, bytes] = {CA_CERT: cert_pem(ca.cert)}
    expiry = {CA_CERT: ca.cert.not_valid_after.replace(tzinfo=datetime.UTC)}
    if made_ca:
        files[CA_KEY] = key_pem(ca.key)
    if hosts:
        key, cert = issue(ca, hosts[0].strip("[]"), hosts, days)
        files.update({SERVER_CERT: cert_pem(cert), SERVER_KEY: key_pem(key)})
        expiry[SERVER_CERT] = cert.not_valid_after.replace(tzinfo=datetime.UTC)
    if client:
        key, cert = issue(ca, "tzero client", None, days)
        files.update({CLIENT_CERT: cert_pem(cert), CLIENT_KEY: key_pem(key)})
        expiry[CLIENT_CERT] = cert.not_valid_after.replace(tzinfo=datetime.UTC)
    write_files(directory, files, force)
    return expiry
