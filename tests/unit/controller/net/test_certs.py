"""tzero certs: the directory nbdkit, libnbd, QEMU and tzero read, with keys only their owner reads."""

import datetime
import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from controller.net.certs import CA_DAYS, CertError, make_directory

from helpers import tzero

FIVE = ["ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"]


def cert(directory, name) -> x509.Certificate:
    with open(os.path.join(directory, name), "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_certs_makes_the_shared_layout_keys_0600_in_a_0700_directory(tmp_path):
    d = tmp_path / "pki"
    old = os.umask(0)  # whatever the umask, keys are born private
    try:
        make_directory(str(d), ["10.1.2.3", "storage1.example", "fd00::5"], client=True)
    finally:
        os.umask(old)
    assert sorted(os.listdir(d)) == sorted([*FIVE, "ca-key.pem"])
    assert mode(d) == 0o700
    for name in os.listdir(d):
        assert mode(d / name) == (0o600 if name.endswith("-key.pem") else 0o644), name


def test_certs_server_names_every_host_and_both_chain_to_the_ca(tmp_path):
    d = str(tmp_path)
    make_directory(d, ["10.1.2.3", "storage1.example", "[fd00::5]"], client=True)
    names = cert(d, "server-cert.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n) for n in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3", "fd00::5"]
    assert names.get_values_for_type(x509.DNSName) == ["storage1.example"]
    for leaf in ("server-cert.pem", "client-cert.pem"):
        proc = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(d, "ca-cert.pem"), os.path.join(d, leaf)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_certs_key_sizes_purposes_and_expiry_are_as_documented(tmp_path):
    d = str(tmp_path)
    make_directory(d, ["h"], client=True, days=90)
    with open(os.path.join(d, "server-key.pem"), "rb") as f:
        key = load_pem_private_key(f.read(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    ca, server, client = cert(d, "ca-cert.pem"), cert(d, "server-cert.pem"), cert(d, "client-cert.pem")
    assert abs((ca.not_valid_after - now).days - CA_DAYS) <= 1
    assert abs((server.not_valid_after - now).days - 90) <= 1 and abs((client.not_valid_after - now).days - 90) <= 1
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = x509.oid.ExtendedKeyUsageOID
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [eku.SERVER_AUTH]
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [eku.CLIENT_AUTH]
    usage = server.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment


def test_certs_with_an_existing_ca_issue_without_copying_its_key(tmp_path):
    ca, host2 = str(tmp_path / "ca"), str(tmp_path / "host2")
    make_directory(ca, ["h1"], client=True)
    make_directory(host2, ["h2"], client=False, ca_dir=ca)
    assert sorted(os.listdir(host2)) == ["ca-cert.pem", "server-cert.pem", "server-key.pem"]
    proc = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(ca, "ca-cert.pem"),
                           os.path.join(host2, "server-cert.pem")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_certs_refuse_to_overwrite_or_to_make_nothing_and_leave_files_as_they_were(tmp_path):
    d = str(tmp_path)
    make_directory(d, ["h"], client=True)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(d)}
    with pytest.raises(CertError, match="--force"):
        make_directory(d, ["h"], client=True)
    with pytest.raises(CertError, match="neither an IP address nor a host name"):
        make_directory(d, ["bad_name!"], client=True, force=True)
    with pytest.raises(CertError, match="nothing to make"):
        make_directory(d, [], client=False, force=True)
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(d)} == before
    make_directory(d, ["h"], client=True, force=True)
    assert (tmp_path / "server-key.pem").read_bytes() != before["server-key.pem"]


def test_certs_command_prints_expiry_never_keys_and_refusals_are_usage_errors(tmp_path):
    d = tmp_path / "pki"
    proc = tzero("certs", d, "--host", "127.0.0.1", "--days", "30")
    assert [line.split(": ")[0] for line in proc.stdout.splitlines()] == \
        [f"{d}/ca-cert.pem", f"{d}/server-cert.pem", f"{d}/client-cert.pem"]
    assert "KEY" not in proc.stdout + proc.stderr
    again = tzero("certs", d, "--host", "127.0.0.1", check=False)
    assert again.returncode == 2 and again.stderr.startswith("tzero: ") and len(again.stderr.splitlines()) == 1
    missing = tzero("certs", tmp_path / "x", "--ca", tmp_path / "nope", "--host", "h", check=False)
    assert missing.returncode == 2 and "ca-cert.pem" in missing.stderr
