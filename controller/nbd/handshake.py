"""The NBD fixed-newstyle handshake in userspace, ending in a socket in the transmission phase.

The kernel's NBD driver speaks only the transmission phase, so `tzero attach` negotiates
here: NO_ZEROES, NBD_OPT_GO asking for NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE, falling
back to NBD_OPT_EXPORT_NAME for servers without GO. Structured replies are never
negotiated: the kernel could not parse them. Every number is written from the NBD
protocol document, and every length read from the server is bounded.
"""

import socket
import struct
from dataclasses import dataclass

from controller.errors import SubsystemError, TzeroError
from controller.nbd.uri import NbdUri

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
REP_SHUTDOWN = REP_ERROR_BIT | 7

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

# Transmission flags: passed to the kernel as they are, READ_ONLY added on request.
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1

MAX_OPTION_REPLY = 64 * 1024           # any larger reply is a broken or hostile server
HANDSHAKE_TIMEOUT = 30.0


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


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
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
        raise TzeroError(f"bad NBD option reply magic: expected {OPT_REPLY_MAGIC:#x}, "
                             f"got {magic:#x}")
    if echoed != option:
        raise TzeroError(f"NBD option reply for option {echoed}, expected {option}")
    if length > MAX_OPTION_REPLY:
        raise TzeroError(f"NBD option reply too long: {length} bytes, "
                             f"at most {MAX_OPTION_REPLY} expected")
    return rtype, _recv_exact(sock, length)


def _negotiate_start(sock: socket.socket) -> bool:
    """Read the greeting, send client flags; return whether NO_ZEROES is in force."""
    magic, second = struct.unpack(">QQ", _recv_exact(sock, 16))
    if magic != NBDMAGIC:
        raise TzeroError("not an NBD server (no NBDMAGIC greeting)")
    if second == OLDSTYLE_MAGIC:
        raise TzeroError("the NBD server speaks only the oldstyle handshake")
    if second != IHAVEOPT:
        raise TzeroError(f"unknown NBD greeting {second:#x}")
    (server_flags,) = struct.unpack(">H", _recv_exact(sock, 2))
    if not server_flags & FLAG_FIXED_NEWSTYLE:
        raise TzeroError("the NBD server does not speak the fixed newstyle handshake")
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
                    raise TzeroError(f"NBD_INFO_EXPORT: expected 12 bytes, got {len(body)}")
                size, flags = struct.unpack(">QH", body[2:])
            elif info == INFO_BLOCK_SIZE:
                if len(body) != 14:
                    raise TzeroError(f"NBD_INFO_BLOCK_SIZE: expected 14 bytes, got {len(body)}")
                min_block, preferred, _ = struct.unpack(">III", body[2:])
            continue                    # other INFO types: not needed, ignored per spec
        if rtype == REP_ERR_UNSUP:
            return None
        if rtype & REP_ERROR_BIT:
            meaning = REP_ERRORS.get(rtype, f"error reply {rtype:#x}")
            detail = body.decode(errors="replace").strip()
            error = SubsystemError if rtype == REP_SHUTDOWN else TzeroError  # only a shutdown may pass
            raise error(f"export {export!r}: {meaning}" + (f" ({detail})" if detail else ""))
        raise TzeroError(f"unexpected NBD option reply type {rtype:#x}")
    if size is None:
        raise TzeroError("the NBD server finished NBD_OPT_GO without NBD_INFO_EXPORT")
    assert flags is not None, "NBD_INFO_EXPORT gives the size and the flags together"
    return ExportInfo(size, flags, min_block, preferred)


def _export_name(sock: socket.socket, export: str, no_zeroes: bool) -> ExportInfo:
    """The old way in: NBD_OPT_EXPORT_NAME, for servers that do not support GO."""
    _send_option(sock, OPT_EXPORT_NAME, export.encode())
    try:
        size, flags = struct.unpack(">QH", _recv_exact(sock, 10))
    except SubsystemError:
        raise TzeroError(f"export {export!r}: the server hung up (no such export?)") from None
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
    address: str | tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]  # as getaddrinfo gives it
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
