"""Attach an NBD export as a Linux block device, and detach it.

The kernel's NBD driver speaks only the transmission phase of the protocol. So the work
splits in three, each usable alone:

1. parse_uri(): nbd+unix:///EXPORT?socket=PATH and nbd://HOST[:PORT]/EXPORT.
2. open_export(): connect and run the fixed-newstyle handshake in userspace: NO_ZEROES,
   NBD_OPT_GO asking for NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE, falling back to
   NBD_OPT_EXPORT_NAME for servers without GO. Structured replies are never negotiated:
   the kernel could not parse them. The result is a socket in the transmission phase.
3. KernelNbd: the generic netlink family "nbd" (linux/nbd-netlink.h). CONNECT hands the
   socket to the kernel, which keeps its own reference: the caller may close it and exit.
   DISCONNECT and STATUS take a device index.

pyroute2 is imported only inside KernelNbd: importing it costs 5-12 s in a TCG guest,
and nothing else here needs it. All numbers below are written from the NBD protocol
document and the kernel's uapi header; every length read from the server is bounded.
"""

import errno
import re
import socket
import struct
import urllib.parse
from dataclasses import dataclass

from controller.errors import SubsystemError, TzeroError, UsageError

# --- NBD handshake (protocol document, "Newstyle negotiation") -----------------------
NBDMAGIC = 0x4E42444D41474943          # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT": newstyle server greeting, option magic
OLDSTYLE_MAGIC = 0x00420281861253
OPT_REPLY_MAGIC = 0x0003E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0           # handshake flags (server) and client flags
FLAG_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_GO = 7

REP_ACK = 1
REP_INFO = 3
REP_ERROR_BIT = 1 << 31
REP_ERRORS = {                          # error replies, and what each means for the user
    REP_ERROR_BIT | 1: "the server does not support this option",
    REP_ERROR_BIT | 2: "the server's policy refuses it",
    REP_ERROR_BIT | 3: "the request was invalid",
    REP_ERROR_BIT | 4: "the server's platform does not support it",
    REP_ERROR_BIT | 5: "the server requires TLS, which tzero attach does not speak",
    REP_ERROR_BIT | 6: "no such export",
    REP_ERROR_BIT | 7: "the server is shutting down",
    REP_ERROR_BIT | 8: "the server requires block size negotiation",
    REP_ERROR_BIT | 9: "the request is too big",
}
REP_ERR_UNSUP = REP_ERROR_BIT | 1

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

# Transmission flags: passed to the kernel as they are, READ_ONLY added on request.
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1

DEFAULT_PORT = 10809
MAX_OPTION_REPLY = 64 * 1024           # any larger reply is a broken or hostile server
MAX_NAME = 4096                        # the protocol's limit on export names
HANDSHAKE_TIMEOUT = 30.0

# --- Kernel generic netlink (include/uapi/linux/nbd-netlink.h) ------------------------
GENL_FAMILY = "nbd"
GENL_VERSION = 1
CMD_CONNECT = 1
CMD_DISCONNECT = 2
CMD_STATUS = 5
KERNEL_MIN_BLOCK = 512                 # the kernel takes a power of two in [512, page size]
KERNEL_MAX_BLOCK = 4096


@dataclass(frozen=True)
class NbdUri:
    """Where an export is: a unix socket path, or a TCP host and port; and its name."""

    export: str
    socket_path: str | None = None
    host: str | None = None
    port: int = DEFAULT_PORT

    def __str__(self):
        quoted = urllib.parse.quote(self.export)
        if self.socket_path is not None:
            return f"nbd+unix:///{quoted}?socket={self.socket_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{quoted}"


@dataclass(frozen=True)
class ExportInfo:
    """What the server said about the export in NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE."""

    size: int
    flags: int
    min_block: int = 1
    preferred_block: int = 4096

    @property
    def read_only(self) -> bool:
        return bool(self.flags & TFLAG_READ_ONLY)


def parse_uri(text: str) -> NbdUri:
    """Parse an NBD URI (the subset of the NBD URI spec that tzero attach supports)."""
    bad = f"{text!r} is not an NBD URI (nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT)"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise TzeroError(bad) from None
    export = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if len(export.encode()) > MAX_NAME:
        raise TzeroError(f"export name longer than {MAX_NAME} bytes")
    query = urllib.parse.parse_qs(parts.query)
    if parts.scheme == "nbd+unix":
        paths = query.get("socket", [])
        if parts.netloc or len(paths) != 1 or not paths[0]:
            raise TzeroError(f"{bad}: nbd+unix needs no host and exactly one socket=PATH")
        return NbdUri(export=export, socket_path=paths[0])
    if parts.scheme == "nbd":
        if not parts.hostname or query:
            raise TzeroError(f"{bad}: nbd:// needs a host and takes no query")
        return NbdUri(export=export, host=parts.hostname, port=port or DEFAULT_PORT)
    if parts.scheme in ("nbds", "nbds+unix"):
        raise TzeroError(f"{text!r}: TLS (nbds) is not supported by tzero attach")
    raise TzeroError(bad)


def parse_device(text: str) -> int:
    """/dev/nbdN (or nbdN) -> N."""
    m = re.fullmatch(r"(?:/dev/)?nbd(\d+)", text)
    if not m:
        raise UsageError(f"{text!r} is not an NBD device (expected /dev/nbdN)")
    return int(m.group(1))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            raise SubsystemError("the NBD server stopped answering during the handshake") from None
        if not chunk:
            raise SubsystemError(f"the NBD server closed the connection during the handshake "
                                 f"(expected {n} bytes, got {len(buf)})")
        buf += chunk
    return bytes(buf)


def _send_option(sock: socket.socket, option: int, data: bytes) -> None:
    sock.sendall(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)


def _read_reply(sock: socket.socket, option: int) -> tuple[int, bytes]:
    """One option reply: (type, data). Checks magic, option echo and length bound."""
    magic, echoed, rtype, length = struct.unpack(">QIII", _recv_exact(sock, 20))
    if magic != OPT_REPLY_MAGIC:
        raise SubsystemError(f"bad NBD option reply magic: expected {OPT_REPLY_MAGIC:#x}, "
                             f"got {magic:#x}")
    if echoed != option:
        raise SubsystemError(f"NBD option reply for option {echoed}, expected {option}")
    if length > MAX_OPTION_REPLY:
        raise SubsystemError(f"NBD option reply too long: {length} bytes, "
                             f"at most {MAX_OPTION_REPLY} expected")
    return rtype, _recv_exact(sock, length)


def _negotiate_start(sock: socket.socket) -> bool:
    """Read the greeting, send client flags; return whether NO_ZEROES is in force."""
    magic, second = struct.unpack(">QQ", _recv_exact(sock, 16))
    if magic != NBDMAGIC:
        raise SubsystemError("not an NBD server (no NBDMAGIC greeting)")
    if second == OLDSTYLE_MAGIC:
        raise SubsystemError("the NBD server speaks only the oldstyle handshake")
    if second != IHAVEOPT:
        raise SubsystemError(f"unknown NBD greeting {second:#x}")
    (server_flags,) = struct.unpack(">H", _recv_exact(sock, 2))
    if not server_flags & FLAG_FIXED_NEWSTYLE:
        raise SubsystemError("the NBD server does not speak the fixed newstyle handshake")
    no_zeroes = bool(server_flags & FLAG_NO_ZEROES)
    sock.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (FLAG_NO_ZEROES if no_zeroes else 0)))
    return no_zeroes


def _go(sock: socket.socket, export: str) -> ExportInfo | None:
    """NBD_OPT_GO; None if the server does not know GO (caller falls back)."""
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
    _send_option(sock, OPT_GO, data)
    size = flags = None
    min_block, preferred = 1, 4096
    while True:
        rtype, body = _read_reply(sock, OPT_GO)
        if rtype == REP_ACK:
            break
        if rtype == REP_INFO and len(body) >= 2:
            (info,) = struct.unpack(">H", body[:2])
            if info == INFO_EXPORT:
                if len(body) != 12:
                    raise SubsystemError(f"NBD_INFO_EXPORT: expected 12 bytes, got {len(body)}")
                size, flags = struct.unpack(">QH", body[2:])
            elif info == INFO_BLOCK_SIZE:
                if len(body) != 14:
                    raise SubsystemError(f"NBD_INFO_BLOCK_SIZE: expected 14 bytes, got {len(body)}")
                min_block, preferred, _ = struct.unpack(">III", body[2:])
            continue                    # other INFO types: not needed, ignored per spec
        if rtype == REP_ERR_UNSUP:
            return None
        if rtype & REP_ERROR_BIT:
            meaning = REP_ERRORS.get(rtype, f"error reply {rtype:#x}")
            detail = body.decode(errors="replace").strip()
            raise SubsystemError(f"export {export!r}: {meaning}" + (f" ({detail})" if detail else ""))
        raise SubsystemError(f"unexpected NBD option reply type {rtype:#x}")
    if size is None:
        raise SubsystemError("the NBD server finished NBD_OPT_GO without NBD_INFO_EXPORT")
    return ExportInfo(size, flags, min_block, preferred)


def _export_name(sock: socket.socket, export: str, no_zeroes: bool) -> ExportInfo:
    """The old way in: NBD_OPT_EXPORT_NAME, for servers that do not support GO."""
    _send_option(sock, OPT_EXPORT_NAME, export.encode())
    try:
        size, flags = struct.unpack(">QH", _recv_exact(sock, 10))
    except SubsystemError:
        raise SubsystemError(f"export {export!r}: the server hung up (no such export?)") from None
    if not no_zeroes:
        _recv_exact(sock, 124)
    return ExportInfo(size, flags)


def handshake(sock: socket.socket, export: str) -> ExportInfo:
    """Negotiate EXPORT on a fresh connection; leaves SOCK in the transmission phase."""
    no_zeroes = _negotiate_start(sock)
    info = _go(sock, export)
    if info is None:
        info = _export_name(sock, export, no_zeroes)
    return info


def open_export(uri: NbdUri, timeout: float = HANDSHAKE_TIMEOUT) -> tuple[socket.socket, ExportInfo]:
    """Connect to URI and negotiate its export; return a blocking socket ready for I/O."""
    if uri.socket_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = uri.socket_path
    else:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                uri.host, uri.port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as e:
            raise TzeroError(f"{uri}: cannot resolve {uri.host}: {e.strerror}") from None
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError as e:
            raise SubsystemError(f"cannot connect to {uri}: {e.strerror or e}") from None
        info = handshake(sock, uri.export)
        sock.settimeout(None)           # the kernel gets a plain blocking socket
        return sock, info
    except BaseException:
        sock.close()
        raise


def kernel_block_size(info: ExportInfo) -> int:
    """The logical block size for the kernel: 512 unless the server needs more."""
    size = max(KERNEL_MIN_BLOCK, info.min_block)
    if size > KERNEL_MAX_BLOCK or size & (size - 1):
        raise SubsystemError(f"the export's minimum block size {info.min_block} cannot be "
                             f"used by the kernel (a power of two up to {KERNEL_MAX_BLOCK})")
    return size


class KernelNbd:
    """A generic netlink socket bound to the kernel's "nbd" family. Use with `with`."""

    def __init__(self):
        # Deferred: pyroute2 is slow to import in a guest and only this class needs it.
        try:
            from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, genlmsg, nla
            from pyroute2.netlink.exceptions import NetlinkError
            from pyroute2.netlink.generic import GenericNetlinkSocket
        except ImportError:
            raise TzeroError("pyroute2 is not installed (make setup installs it)") from None

        self._NetlinkError = NetlinkError
        self._flags = NLM_F_REQUEST | NLM_F_ACK
        self._msg = _message_class(genlmsg, nla)
        self._sock = GenericNetlinkSocket()
        try:
            self._sock.bind(GENL_FAMILY, self._msg)
        except NetlinkError as e:
            self._sock.close()
            if e.code == errno.ENOENT:
                raise TzeroError("the kernel has no NBD support loaded (modprobe nbd)") from None
            raise TzeroError(f"cannot reach the kernel's nbd netlink family: {e}") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._sock.close()

    def _request(self, cmd: int, attrs: list, what: str) -> tuple:
        msg = self._msg()
        msg["cmd"] = cmd
        msg["version"] = GENL_VERSION
        msg["attrs"] = attrs
        try:
            return self._sock.nlm_request(msg, msg_type=self._sock.prid, msg_flags=self._flags)
        except self._NetlinkError as e:
            if e.code == errno.EPERM:
                raise TzeroError(f"{what}: permission denied (needs root)") from None
            if e.code == errno.EBUSY:
                raise TzeroError(f"{what}: the device is already in use") from None
            reason = errno.errorcode.get(e.code, str(e.code))
            raise TzeroError(f"{what}: the kernel refused ({reason}; see dmesg)") from None

    def connect(self, sock: socket.socket, info: ExportInfo, index: int | None = None,
                read_only: bool = False) -> int:
        """Hand SOCK to the kernel as device INDEX (None: the kernel picks); return the index."""
        flags = info.flags | TFLAG_HAS_FLAGS | (TFLAG_READ_ONLY if read_only else 0)
        attrs = [
            ("NBD_ATTR_SIZE_BYTES", info.size),
            ("NBD_ATTR_BLOCK_SIZE_BYTES", kernel_block_size(info)),
            ("NBD_ATTR_SERVER_FLAGS", flags),
            ("NBD_ATTR_SOCKETS", {"attrs": [
                ("NBD_SOCK_ITEM", {"attrs": [("NBD_SOCK_FD", sock.fileno())]}),
            ]}),
        ]
        if index is not None:
            attrs.insert(0, ("NBD_ATTR_INDEX", index))
        where = f"/dev/nbd{index}" if index is not None else "a free /dev/nbdN"
        for reply in self._request(CMD_CONNECT, attrs, f"attaching {where}"):
            got = reply.get_attr("NBD_ATTR_INDEX")
            if got is not None:
                return got
        assert index is not None, "the kernel picked a device but did not say which"
        return index

    def disconnect(self, index: int) -> None:
        self._request(CMD_DISCONNECT, [("NBD_ATTR_INDEX", index)], f"detaching /dev/nbd{index}")

    def status(self, index: int) -> bool | None:
        """Whether /dev/nbdINDEX is connected; None if there is no such device."""
        replies = self._request(CMD_STATUS, [("NBD_ATTR_INDEX", index)], f"/dev/nbd{index}")
        for reply in replies:
            devices = reply.get_attr("NBD_ATTR_DEVICE_LIST")
            for item in devices.get_attrs("NBD_DEVICE_ITEM") if devices else []:
                if item.get_attr("NBD_DEVICE_INDEX") == index:
                    return bool(item.get_attr("NBD_DEVICE_CONNECTED"))
        return None


_MESSAGE_CLASS = None


def _message_class(genlmsg, nla):
    """The pyroute2 description of nbd netlink messages, made once pyroute2 is imported."""
    global _MESSAGE_CLASS
    if _MESSAGE_CLASS is not None:
        return _MESSAGE_CLASS

    class NbdMessage(genlmsg):
        # Positions are the uapi enum values: NBD_ATTR_UNSPEC is 0, INDEX 1, and so on.
        nla_map = (
            ("NBD_ATTR_UNSPEC", "none"),
            ("NBD_ATTR_INDEX", "uint32"),
            ("NBD_ATTR_SIZE_BYTES", "uint64"),
            ("NBD_ATTR_BLOCK_SIZE_BYTES", "uint64"),
            ("NBD_ATTR_TIMEOUT", "uint64"),
            ("NBD_ATTR_SERVER_FLAGS", "uint64"),
            ("NBD_ATTR_CLIENT_FLAGS", "uint64"),
            ("NBD_ATTR_SOCKETS", "sockets"),
            ("NBD_ATTR_DEAD_CONN_TIMEOUT", "uint64"),
            ("NBD_ATTR_DEVICE_LIST", "device_list"),
            ("NBD_ATTR_BACKEND_IDENTIFIER", "asciiz"),
        )

        class sockets(nla):
            nla_flags = 1 << 15         # NLA_F_NESTED
            nla_map = (("NBD_SOCK_ITEM_UNSPEC", "none"), ("NBD_SOCK_ITEM", "sock_item"))

            class sock_item(nla):
                nla_flags = 1 << 15
                nla_map = (("NBD_SOCK_UNSPEC", "none"), ("NBD_SOCK_FD", "uint32"))

        class device_list(nla):
            nla_flags = 1 << 15
            nla_map = (("NBD_DEVICE_ITEM_UNSPEC", "none"), ("NBD_DEVICE_ITEM", "device_item"))

            class device_item(nla):
                nla_flags = 1 << 15
                nla_map = (("NBD_DEVICE_UNSPEC", "none"), ("NBD_DEVICE_INDEX", "uint32"),
                           ("NBD_DEVICE_CONNECTED", "uint8"))

    _MESSAGE_CLASS = NbdMessage
    return NbdMessage


def attach(uri: NbdUri, index: int | None = None, read_only: bool = False) -> int:
    """Attach URI's export as /dev/nbdINDEX (a free one if None); return the index."""
    with KernelNbd() as kernel:         # first: fail fast when there is no nbd module
        sock, info = open_export(uri)
        with sock:
            return kernel.connect(sock, info, index, read_only)


def detach(index: int) -> None:
    """Disconnect /dev/nbdINDEX; an error if it does not exist or is not attached."""
    with KernelNbd() as kernel:
        connected = kernel.status(index)
        if connected is None:
            raise TzeroError(f"/dev/nbd{index}: no such NBD device")
        if not connected:
            raise TzeroError(f"/dev/nbd{index} is not attached")
        kernel.disconnect(index)
