"""Subsystems on TCP with mutual TLS, on this host's loopback: backups over nbds://, who is
refused on the control and the NBD port, who may read a time-zero view, what serve refuses
to start, and the URIs applications use."""

import os
import shutil
import socket
import ssl
import subprocess

import nbd
import pytest

from common.tls import client_context
from testkit.local_subsystem import Listen

from helpers import REPO, TZERO, free_ports, last_json, make_image, one_line, tzero, wait_for
from raw_control import RawControl

SIZE = 4 << 20


@pytest.fixture
def tls_sub(tmp_path, serve, pki):
    """One subsystem on 127.0.0.1 with TLS, serving a (4 MiB of known bytes)."""
    initial = make_image(tmp_path / "a.img", SIZE, seed=11)
    control, port = free_ports(2)
    sub = serve("t", {"a": tmp_path / "a.img"}, "--chunk", "64K", listen=Listen("127.0.0.1", control, port, pki))
    return sub, initial


def restored(tmp_path, out) -> bytes:
    target = tmp_path / f"restored-{os.path.basename(out)}"
    tzero("restore", out, "--to", target)
    return (target / "a.img").read_bytes()


def test_tls_backup_reads_views_over_nbds_or_locally_and_restores_exactly(tmp_path, tls_sub, pki):
    sub, initial = tls_sub
    h = sub.connect("a")
    h.pwrite(b"live" * 1024, 65536)
    h.shutdown()
    expected = initial[:65536] + b"live" * 1024 + initial[65536 + 4096:]
    for path, seen in (("nbd", "nbd (--read-path nbd)"), ("auto", "local")):
        out = tmp_path / f"{path}.tzb"
        proc = tzero("backup", "-s", sub.control, "--tls-certificates", pki, "-o", out, "--json", "--no-progress",
                     "--read-path", path)
        summary = last_json(proc.stdout)
        # Over TCP the subsystem is still on this host: its concordance's token proves it.
        assert summary["read_path"] == {"a": seen}
        assert list(summary["pause_ms_by_subsystem"]) == [sub.control]
        assert restored(tmp_path, out) == expected


def test_tls_control_port_refuses_no_certificate_another_ca_and_plaintext(tls_sub, pki, other_pki, tmp_path):
    sub, _ = tls_sub
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(os.path.join(pki, "ca-cert.pem"))
    stranger = client_context(other_pki)
    stranger.check_hostname, stranger.verify_mode = False, ssl.CERT_NONE  # so that the server is the one to refuse
    for context in (bare, stranger, None):
        with pytest.raises((OSError, ValueError)):
            ctl = RawControl(sub.control, context)
            try:
                ctl.rq("hello", version=1)  # no reply: the connection is closed
            finally:
                ctl.close()
    refusals = wait_for(lambda: [line for line in sub.output().splitlines() if "refused" in line] or None
                        if sub.output().count("refused") >= 3 else None, 10, "three refusals logged")
    assert len(refusals) == 3 and all("WARNING: tzero-plugin: control connection from 127.0.0.1:" in line
                                      for line in refusals), refusals
    wrong_ca = tzero("status", sub.control, "--tls-certificates", other_pki, check=False)
    assert wrong_ca.returncode == 1 and "failed verification" in one_line(wrong_ca.stderr)
    plain = tzero("status", sub.control, check=False)
    assert plain.returncode == 1 and "give --tls-certificates" in one_line(plain.stderr)
    assert sub.status()["session"] is None


def test_tls_nbd_port_refuses_no_certificate_another_ca_and_plaintext(tls_sub, pki, other_pki, tmp_path):
    sub, _ = tls_sub
    ca_only = tmp_path / "ca-only"
    ca_only.mkdir()
    shutil.copy(os.path.join(pki, "ca-cert.pem"), ca_only)
    port = sub.listen.nbd_port
    for uri in (f"nbds://127.0.0.1:{port}/a?tls-certificates={ca_only}",
                f"nbds://127.0.0.1:{port}/a?tls-certificates={other_pki}&tls-verify-peer=false",
                f"nbd://127.0.0.1:{port}/a"):
        h = nbd.NBD()
        h.set_uri_allow_local_file(True)
        with pytest.raises(nbd.Error):
            h.connect_uri(uri)
            h.pread(512, 0)
    h = sub.connect("a")
    assert h.get_size() == SIZE
    h.shutdown()


def test_tls_view_is_served_only_under_its_unguessable_name_which_no_log_or_status_shows(tls_sub, pki):
    sub, initial = tls_sub
    ctl = RawControl(sub.control, client_context(pki))
    try:
        ctl.rq("hello", version=1)
        opened = ctl.rq("open")
        view, sid = opened["views"]["a"], opened["session"]
        token = view.split("@")[1]
        assert len(token) == 32 and sid not in token
        ctl.rq("freeze")
        ctl.rq("thaw")
        for guess in (f"a@{sid}", f"a@{token[:-1]}", "a@" + "0" * 32):
            with pytest.raises(nbd.Error) as refused:
                sub.connect(guess).pread(512, 0)
            assert refused.value.errno in (None, 2) or "No such file" in str(refused.value)
        h = sub.connect(view)
        assert h.pread(4096, 0) == initial[:4096]
        h.shutdown()
        status = tzero("status", sub.control, "--json", "--tls-certificates", pki).stdout
        assert sid in status and token not in status
    finally:
        ctl.close()
    wait_for(lambda: "aborted" in sub.output(), 10, "the session to end with its connection")
    assert token[:-1] not in sub.output(), "neither the token nor a name asked for is logged"


def test_tls_restore_writes_onto_an_nbds_export_given_certificates_either_way(tls_sub, pki, tmp_path, serve):
    sub, initial = tls_sub
    out = tmp_path / "b.tzb"
    tzero("backup", "-s", sub.control, "--tls-certificates", pki, "-o", out, "--no-progress")
    make_image(tmp_path / "t.img", SIZE, seed=99)
    control, port = free_ports(2)
    target = serve("target", {"t": tmp_path / "t.img"}, listen=Listen("127.0.0.1", control, port, pki))
    tzero("restore", out, "--dataset", "a", "--to", f"nbds://127.0.0.1:{port}/t", "--tls-certificates", pki, "--force")
    assert (tmp_path / "t.img").read_bytes() == initial
    make_image(tmp_path / "t.img", SIZE, seed=98)  # overwritten in place: the next restore must redo it
    tzero("restore", out, "--dataset", "a", "--to", target.uri("t"), "--force")
    assert (tmp_path / "t.img").read_bytes() == initial


def test_tls_applications_reach_live_exports_with_the_documented_uris(tls_sub, pki):
    """README's claims, checked: nbdinfo and nbdcopy take tls-certificates= in the URI, libnbd's
    connect_uri only when allowed local files, and QEMU through a tls-creds-x509 object."""
    sub, initial = tls_sub
    uri = sub.uri("a")
    assert uri.startswith("nbds://127.0.0.1:") and "tls-certificates=" in uri
    info = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and int(info.stdout) == SIZE, info.stderr
    copy = subprocess.run(["nbdcopy", uri, "-"], capture_output=True, timeout=60)
    assert copy.returncode == 0 and copy.stdout == initial
    h = nbd.NBD()
    with pytest.raises(nbd.Error, match="local file access"):
        h.connect_uri(uri)
    port = sub.listen.nbd_port
    qemu = subprocess.run(["qemu-img", "info", "--output=json", "--object",
                           f"tls-creds-x509,id=tls0,dir={pki},endpoint=client", "--image-opts",
                           f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=a,tls-creds=tls0"],
                          capture_output=True, text=True, timeout=60)
    assert qemu.returncode == 0 and last_json(qemu.stdout.replace("\n", " "))["virtual-size"] == SIZE, qemu.stderr


def test_ipv6_plaintext_loopback_backs_up_and_tls_nbd_on_an_ipv6_address_is_refused_with_a_reason(
        tmp_path, serve, pki):
    initial = make_image(tmp_path / "a.img", SIZE, seed=12)
    control, port = free_ports(2, "::1")
    plain = serve("v6", {"a": tmp_path / "a.img"}, listen=Listen("::1", control, port))
    assert plain.control == f"[::1]:{control}" and plain.uri("a") == f"nbd://[::1]:{port}/a"
    out = tmp_path / "v6.tzb"
    proc = tzero("backup", "-s", plain.control, "-o", out, "--json", "--no-progress", "--read-path", "nbd")
    assert last_json(proc.stdout)["read_path"] == {"a": "nbd (--read-path nbd)"}
    assert restored(tmp_path, out) == initial
    plain.stop()
    control, port = free_ports(2, "::1")
    tls = serve("v6tls", {"a": tmp_path / "a.img"}, listen=Listen("::1", control, port, pki))
    assert tls.status()["session"] is None, "the control channel itself takes IPv6 addresses over TLS"
    refused = tzero("backup", "-s", tls.control, "--tls-certificates", pki, "-o", tmp_path / "no.tzb", check=False)
    assert refused.returncode == 2 and "--bind HOSTNAME" in one_line(refused.stderr)


def test_tls_no_key_material_in_any_output(tmp_path, tls_sub, pki, other_pki):
    sub, _ = tls_sub
    outputs = [tzero("--debug", "backup", "-s", sub.control, "--tls-certificates", pki, "-o", tmp_path / "k.tzb",
                     "--json", "--no-progress"),
               tzero("status", sub.control, "--json", "--tls-certificates", pki),
               tzero("--debug", "status", sub.control, "--tls-certificates", other_pki, check=False),
               tzero("certs", tmp_path / "more", "--host", "h")]
    text = "".join(p.stdout + p.stderr for p in outputs) + sub.output()
    for directory in (pki, other_pki, tmp_path / "more"):
        for name in os.listdir(directory):
            if name.endswith("-key.pem"):
                with open(os.path.join(directory, name)) as f:
                    body = [line for line in f.read().splitlines() if "-----" not in line]
                assert body and not any(line in text for line in body), name
    assert "PRIVATE KEY" not in text


@pytest.mark.parametrize("args, fragment", [
    (["--control", "0.0.0.0:{c}", "--port", "{n}"], "not a loopback address"),
    (["--control", "0.0.0.0:{c}", "--port", "{n}", "--insecure-plaintext-tcp"], "not a loopback address"),
    (["--control", "127.0.0.1:{c}", "--port", "{n}"], "--insecure-plaintext-tcp"),
    (["--control", "{tmp}/c.ctl", "--port", "{n}", "--bind", "0.0.0.0", "--insecure-plaintext-tcp"],
     "NBD on 0.0.0.0"),
    (["--control", "{tmp}/c.ctl", "--port", "{n}"], "--insecure-plaintext-tcp"),
    (["--control", "127.0.0.1:{c}", "--socket", "{tmp}/n.sock", "--tls-certificates", "{pki}"], "give --port"),
    (["--control", "127.0.0.1:{c}", "--port", "{n}", "--tls-certificates", "{tmp}"], "ca-cert.pem is missing"),
    (["--control", "127.0.0.1:{busy}", "--port", "{n}", "--tls-certificates", "{pki}"], "in use"),
    (["--control", "{tmp}/c.ctl", "--socket", "{tmp}/n.sock", "--bind", "127.0.0.1"], "--bind is for NBD over TCP"),
    (["--control", "127.0.0.1:{c}", "--port", "{c}", "--tls-certificates", "{pki}"], "the --control port"),
])
def test_serve_refuses_what_would_expose_the_disks_or_cannot_listen_with_one_line(tmp_path, pki, args, fragment):
    img = tmp_path / "x.img"
    img.write_bytes(bytes(65536))
    c, n = free_ports(2)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        args = [a.format(c=c, n=n, tmp=tmp_path, pki=pki, busy=busy.getsockname()[1]) for a in args]
        proc = tzero("serve", *args, f"x={img}", check=False, timeout=60)
    assert proc.returncode == 2 and fragment in one_line(proc.stderr), proc.stderr


def test_backup_refuses_to_talk_plaintext_to_a_subsystem_off_loopback(tmp_path):
    # Refused before any packet is sent: 192.0.2.0/24 is the documentation range.
    proc = tzero("backup", "-s", "192.0.2.7:7000", "-o", tmp_path / "x.tzb", check=False)
    assert proc.returncode == 2 and "give --tls-certificates" in one_line(proc.stderr)
    assert not os.path.exists(tmp_path / "x.tzb.partial")


def test_tls_control_port_serves_others_while_one_client_stalls_its_handshake_or_resets(tls_sub, pki, tmp_path):
    sub, _ = tls_sub
    port = int(sub.control.rsplit(":", 1)[1])
    silent = socket.create_connection(("127.0.0.1", port))  # connects, never says a word
    for _ in range(3):
        rude = socket.create_connection(("127.0.0.1", port))
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        rude.close()  # a reset, at once
    try:
        assert sub.status()["session"] is None
        tzero("backup", "-s", sub.control, "--tls-certificates", pki, "-o", tmp_path / "ok.tzb", "--no-progress")
    finally:
        silent.close()


def test_group_mixing_a_unix_socket_and_a_tls_subsystem_backs_both_up_at_one_time_zero(tmp_path, tls_sub, serve, pki):
    sub, initial = tls_sub
    local_initial = make_image(tmp_path / "u.img", SIZE, seed=13)
    local = serve("u", {"u": tmp_path / "u.img"})
    out = tmp_path / "mixed.tzb"
    proc = tzero("backup", "-s", local.control, "-s", sub.control, "--tls-certificates", pki, "-o", out, "--json",
                 "--no-progress", "--read-path", "nbd")
    summary = last_json(proc.stdout)
    assert summary["datasets"] == ["u", "a"] and sorted(summary["pause_ms_by_subsystem"]) == sorted(
        [local.control, sub.control])
    tzero("restore", out, "--to", tmp_path / "mixed")
    assert (tmp_path / "mixed" / "u.img").read_bytes() == local_initial
    text = tzero("backup", "-s", local.control, "-s", sub.control, "--tls-certificates", pki, "-o",
                 tmp_path / "again.tzb", "--no-progress").stdout
    assert f"({local.control} " in text and f", {sub.control} " in text, "the pause of each host, by its address"
    assert (tmp_path / "mixed" / "a.img").read_bytes() == initial


def test_serve_backup_on_tcp_needs_tls_or_the_plaintext_flag_and_serves_over_nbds(tmp_path, tls_sub, pki):
    sub, initial = tls_sub
    out = tmp_path / "b.tzb"
    tzero("backup", "-s", sub.control, "--tls-certificates", pki, "-o", out, "--no-progress")
    (port,) = free_ports(1)
    refused = tzero("serve-backup", out, "--port", port, check=False, timeout=60)
    assert refused.returncode == 2 and "--insecure-plaintext-tcp" in one_line(refused.stderr)
    pidfile = tmp_path / "sb.pid"
    with subprocess.Popen([*TZERO, "serve-backup", str(out), "--port", str(port), "--tls-certificates", pki,
                           "--pidfile", str(pidfile)], cwd=REPO, stderr=subprocess.PIPE) as proc:
        try:
            wait_for(lambda: pidfile.exists() or proc.poll() is not None, 60, "serve-backup to serve")
            copy = subprocess.run(["nbdcopy", f"nbds://127.0.0.1:{port}/a?tls-certificates={pki}", "-"],
                                  capture_output=True, timeout=60)
            assert copy.returncode == 0 and copy.stdout == initial, copy.stderr
            plain = subprocess.run(["nbdinfo", "--size", f"nbd://127.0.0.1:{port}/a"], capture_output=True,
                                   timeout=60)
            assert plain.returncode != 0, "plaintext is refused"
        finally:
            proc.terminate()
            proc.wait(30)


def test_tls_certificates_with_unix_sockets_leave_them_plaintext_and_usable(tmp_path, serve, pki):
    initial = make_image(tmp_path / "a.img", SIZE, seed=14)
    sub = serve("u", {"a": tmp_path / "a.img"}, "--tls-certificates", pki)
    out = tmp_path / "u.tzb"
    tzero("backup", "-s", sub.control, "--tls-certificates", pki, "-o", out, "--no-progress")
    assert restored(tmp_path, out) == initial
