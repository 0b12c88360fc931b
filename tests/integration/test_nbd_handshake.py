"""controller/nbd/ on the host: URIs, and the userspace handshake against real
nbdkit servers on unix sockets and a scripted fake server for what nbdkit never does.

The kernel half (netlink CONNECT/DISCONNECT) needs the nbd module, which the host lacks:
tests/vm/test_attach.py covers it in a guest. Here only its "no module" error is checked.
"""

import os
import socket
import struct
import threading

import pytest

from controller.cli import main as cli
from controller.errors import SubsystemError, TzeroError, UsageError
from controller.nbd import handshake, kernel
from controller.nbd import uri as nbd_uri

from helpers import needs_nbdkit

MiB = 1 << 20


@pytest.fixture
def nbdkit(nbdkit_server):
    return nbdkit_server


def unix_uri(sock: str, export: str = "") -> nbd_uri.NbdUri:
    return nbd_uri.parse_uri(f"nbd+unix:///{export}?socket={sock}")


# --- URIs and device names -------------------------------------------------------------

def test_parse_uri_unix_socket_and_export():
    uri = nbd_uri.parse_uri("nbd+unix:///disk1?socket=/run/x.sock")
    assert (uri.export, uri.socket_path, uri.host) == ("disk1", "/run/x.sock", None)


def test_parse_uri_unix_default_export_is_empty():
    assert nbd_uri.parse_uri("nbd+unix://?socket=/s").export == ""


def test_parse_uri_tcp_default_port():
    uri = nbd_uri.parse_uri("nbd://localhost/vol")
    assert (uri.host, uri.port, uri.export) == ("localhost", 10809, "vol")


def test_parse_uri_tcp_ipv6_with_port_and_escaped_export():
    uri = nbd_uri.parse_uri("nbd://[::1]:10900/a%20b")
    assert (uri.host, uri.port, uri.export) == ("::1", 10900, "a b")


@pytest.mark.parametrize("text", [
    "disk1", "http://host/x", "nbd+unix:///x", "nbd+unix://host/x?socket=/s",
    "nbd://:99/x", "nbd://host:notaport/x", "nbd://host/x?socket=/s",
])
def test_parse_uri_rejects_what_is_not_a_supported_nbd_uri(text):
    with pytest.raises(TzeroError, match="is not an NBD URI"):
        nbd_uri.parse_uri(text)


def test_parse_uri_tls_says_unsupported():
    with pytest.raises(TzeroError, match="TLS"):
        nbd_uri.parse_uri("nbds://host/x")


@pytest.mark.parametrize("text, index", [("/dev/nbd0", 0), ("nbd12", 12)])
def test_parse_device_accepts_nbd_devices(text, index):
    assert nbd_uri.parse_device(text) == index


@pytest.mark.parametrize("text", ["/dev/sda", "/dev/nbd", "/dev/nbd1p1", "nbdx"])
def test_parse_device_rejects_others_as_usage_error(text):
    with pytest.raises(UsageError):
        nbd_uri.parse_device(text)


# --- the handshake against nbdkit ------------------------------------------------------

@needs_nbdkit
def test_handshake_memory_export_reports_size_and_flags(nbdkit):
    sock, info = handshake.open_export(unix_uri(nbdkit("memory", "10M")))
    with sock:
        assert info.size == 10 * MiB
        assert info.flags & handshake.TFLAG_HAS_FLAGS
        assert not info.read_only
        assert kernel.kernel_block_size(info) == 512


@needs_nbdkit
def test_handshake_read_only_server_sets_read_only_flag(nbdkit):
    sock, info = handshake.open_export(unix_uri(nbdkit("-r", "memory", "1M")))
    with sock:
        assert info.read_only and info.size == MiB


@needs_nbdkit
def test_handshake_named_export_is_accepted(nbdkit):
    path = nbdkit("--filter=exportname", "memory", "2M",
                  "exportname=disk1", "exportname-strict=true")
    sock, info = handshake.open_export(unix_uri(path, "disk1"))
    with sock:
        assert info.size == 2 * MiB


@needs_nbdkit
def test_handshake_unknown_export_is_refused_with_clear_error(nbdkit):
    path = nbdkit("--filter=exportname", "memory", "2M",
                  "exportname=disk1", "exportname-strict=true")
    with pytest.raises(TzeroError, match="export 'nope': no such export"):
        handshake.open_export(unix_uri(path, "nope"))


@needs_nbdkit
def test_handshake_leaves_socket_in_simple_reply_transmission_phase(nbdkit):
    """What the kernel will do next must work: simple requests, simple replies."""
    sock, info = handshake.open_export(unix_uri(nbdkit("memory", "1M")))
    with sock:
        sock.settimeout(10)
        payload = b"tzero!" * 100
        # NBD_CMD_WRITE (1) then NBD_CMD_READ (0): magic, flags, type, cookie, offset, length
        sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 7, 4096, len(payload)) + payload)
        magic, error, cookie = struct.unpack(">IIQ", handshake._recv_exact(sock, 16))
        assert (magic, error, cookie) == (0x67446698, 0, 7)
        sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 8, 4096, len(payload)))
        magic, error, cookie = struct.unpack(">IIQ", handshake._recv_exact(sock, 16))
        assert (magic, error, cookie) == (0x67446698, 0, 8)
        assert handshake._recv_exact(sock, len(payload)) == payload


def test_open_export_without_server_says_cannot_connect(tmp_path):
    with pytest.raises(SubsystemError, match="cannot connect to nbd\\+unix"):
        handshake.open_export(unix_uri(str(tmp_path / "absent.sock")))


# --- a fake server, for what nbdkit never does -----------------------------------------

class FakeServer:
    """Listens on 127.0.0.1, runs SCRIPT(conn) for one client in a thread."""

    def __init__(self, script):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.error = None
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script):
        conn, _ = self.listener.accept()
        with conn:
            try:
                script(conn)
            except Exception as e:  # reported by close(), in the test's thread
                self.error = e

    def uri(self, export="x"):
        return nbd_uri.parse_uri(f"nbd://127.0.0.1:{self.port}/{export}")

    def close(self):
        self.thread.join(timeout=10)
        self.listener.close()
        assert self.error is None, self.error


def read_option(conn):
    magic, option, length = struct.unpack(">QII", handshake._recv_exact(conn, 16))
    assert magic == handshake.IHAVEOPT
    return option, handshake._recv_exact(conn, length)


def reply(conn, option, rtype, data=b""):
    conn.sendall(struct.pack(">QIII", handshake.OPT_REPLY_MAGIC, option, rtype, len(data)) + data)


def greet(conn, flags=handshake.FLAG_FIXED_NEWSTYLE | handshake.FLAG_NO_ZEROES):
    conn.sendall(struct.pack(">QQH", handshake.NBDMAGIC, handshake.IHAVEOPT, flags))
    (client_flags,) = struct.unpack(">I", handshake._recv_exact(conn, 4))
    return client_flags



def test_handshake_falls_back_to_export_name_when_go_unsupported():
    def script(conn):
        assert greet(conn, handshake.FLAG_FIXED_NEWSTYLE) == handshake.FLAG_FIXED_NEWSTYLE  # no NO_ZEROES
        option, _ = read_option(conn)
        assert option == handshake.OPT_GO
        reply(conn, option, handshake.REP_ERR_UNSUP)
        option, name = read_option(conn)
        assert (option, name) == (handshake.OPT_EXPORT_NAME, b"x")
        conn.sendall(struct.pack(">QH", 3 * MiB, 0b11) + bytes(124))

    server = FakeServer(script)
    sock, info = handshake.open_export(server.uri())
    sock.close()
    server.close()
    assert (info.size, info.read_only) == (3 * MiB, True)


def test_handshake_sends_export_name_and_asks_for_block_size():
    seen = {}

    def script(conn):
        assert greet(conn) == handshake.FLAG_FIXED_NEWSTYLE | handshake.FLAG_NO_ZEROES
        option, data = read_option(conn)
        seen["go"] = data
        reply(conn, option, handshake.REP_INFO, struct.pack(">HIII", handshake.INFO_BLOCK_SIZE, 4096, 4096, 1 << 20))
        reply(conn, option, handshake.REP_INFO, struct.pack(">HQH", handshake.INFO_EXPORT, 8 * MiB, 1))
        reply(conn, option, handshake.REP_ACK)

    server = FakeServer(script)
    sock, info = handshake.open_export(server.uri("vol 1"))
    sock.close()
    server.close()
    assert seen["go"] == struct.pack(">I", 5) + b"vol 1" + struct.pack(">HH", 1, handshake.INFO_BLOCK_SIZE)
    assert (info.size, info.min_block, kernel.kernel_block_size(info)) == (8 * MiB, 4096, 4096)


def test_handshake_not_an_nbd_server_is_named():
    server = FakeServer(lambda conn: conn.sendall(b"HTTP/1.1 400 Bad Request\r\n"))
    with pytest.raises(TzeroError, match="not an NBD server"):
        handshake.open_export(server.uri())
    server.close()


def test_handshake_oldstyle_server_is_refused():
    server = FakeServer(lambda conn: conn.sendall(struct.pack(">QQ", handshake.NBDMAGIC, handshake.OLDSTYLE_MAGIC)))
    with pytest.raises(TzeroError, match="oldstyle"):
        handshake.open_export(server.uri())
    server.close()


def test_handshake_oversized_reply_is_refused_before_reading_it():
    def script(conn):
        greet(conn)
        option, _ = read_option(conn)
        conn.sendall(struct.pack(">QIII", handshake.OPT_REPLY_MAGIC, option, handshake.REP_INFO, 1 << 30))

    server = FakeServer(script)
    with pytest.raises(TzeroError, match="too long: 1073741824 bytes"):
        handshake.open_export(server.uri())
    server.close()


def test_handshake_server_hanging_up_is_reported_with_byte_counts():
    server = FakeServer(lambda conn: conn.sendall(struct.pack(">Q", handshake.NBDMAGIC)))
    with pytest.raises(SubsystemError, match="closed the connection .*expected 16 bytes, got 8"):
        handshake.open_export(server.uri())
    server.close()


def test_handshake_policy_refusal_carries_server_message():
    def script(conn):
        greet(conn)
        option, _ = read_option(conn)
        reply(conn, option, handshake.REP_ERROR_BIT | 2, b"go away")

    server = FakeServer(script)
    with pytest.raises(TzeroError, match="policy refuses it \\(go away\\)"):
        handshake.open_export(server.uri())
    server.close()


def test_kernel_block_size_refuses_what_the_kernel_cannot_take():
    with pytest.raises(SubsystemError, match="minimum block size 65536"):
        kernel.kernel_block_size(handshake.ExportInfo(size=MiB, flags=1, min_block=65536))


# --- the commands, as far as a host without the nbd module goes -----------------------

def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_attach_bad_uri_is_one_line_exit_2(capsys):
    code, err = run_cli(capsys, "attach", "http://example/x")
    assert code == 2 and err.count("\n") == 1 and "is not an NBD URI" in err


def test_attach_bad_device_is_usage_error(capsys):
    code, err = run_cli(capsys, "attach", "--device", "/dev/sda", "nbd+unix:///?socket=/s")
    assert code == 2 and "expected /dev/nbdN" in err


@pytest.mark.skipif(os.path.exists("/sys/module/nbd"), reason="this host has the nbd module")
def test_attach_without_nbd_module_is_one_line_exit_1(capsys, tmp_path):
    code, err = run_cli(capsys, "attach", f"nbd+unix:///?socket={tmp_path}/s")
    assert code == 1 and err == "tzero: the kernel has no NBD support loaded (modprobe nbd)\n"


@pytest.mark.skipif(os.path.exists("/sys/module/nbd"), reason="this host has the nbd module")
def test_detach_without_nbd_module_is_one_line_exit_1(capsys):
    code, err = run_cli(capsys, "detach", "/dev/nbd0")
    assert code == 1 and err.count("\n") == 1 and "modprobe nbd" in err


# --- the netlink message layout, encoded without a kernel -------------------------------

def parse_attrs(data):
    """[(type, payload)] of a run of netlink attributes (4-byte aligned)."""
    attrs, offset = [], 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        attrs.append((kind, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return attrs


def test_connect_message_matches_the_kernel_uapi_layout():
    from pyroute2.netlink import genlmsg, nla

    msg = kernel._message_class(genlmsg, nla)()
    msg["cmd"] = kernel.CMD_CONNECT
    msg["version"] = kernel.GENL_VERSION
    msg["attrs"] = [
        ("NBD_ATTR_INDEX", 3),
        ("NBD_ATTR_SIZE_BYTES", 10 * MiB),
        ("NBD_ATTR_SERVER_FLAGS", 0b11),
        ("NBD_ATTR_SOCKETS", {"attrs": [("NBD_SOCK_ITEM", {"attrs": [("NBD_SOCK_FD", 7)]})]}),
    ]
    msg.encode()
    data = bytes(msg.data)
    assert data[16:18] == bytes([kernel.CMD_CONNECT, kernel.GENL_VERSION])  # after the nlmsghdr
    nested = 1 << 15
    attrs = parse_attrs(data[20:])
    assert attrs[:3] == [(1, struct.pack("=I", 3)), (2, struct.pack("=Q", 10 * MiB)),
                         (5, struct.pack("=Q", 0b11))]
    kind, sockets = attrs[3]
    assert kind == 7 | nested
    ((item_kind, item),) = parse_attrs(sockets)
    assert item_kind == 1 | nested
    assert parse_attrs(item) == [(1, struct.pack("=I", 7))]
