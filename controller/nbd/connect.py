"""Opening libnbd handles on a subsystem's exports, the way every reader of a view wants them."""

import errno
import re
import socket
import time
from typing import TypedDict

import nbd

from common.endpoint import tune_tcp

CONNECT_TIMEOUT_S = 10.0
_VIEW_TOKEN = re.compile(r"@[0-9a-f]{32}")  # docs/control-protocol.md: a view is NAME@TOKEN


def redacted(text: str) -> str:
    """TEXT with every view token replaced: libnbd's messages name the export they failed on,
    and a view's name is the only proof of its session, never to be shown."""
    return _VIEW_TOKEN.sub("@<view>", text)


class NbdAddress(TypedDict, total=False):
    """Where a subsystem serves NBD: a unix socket, or TCP (`host`, `port`, and `tls`: whether it
    requires TLS). The hello reply says it; the group turns a wildcard host into one to dial."""

    socket: str
    host: str
    port: int
    tls: bool


def connect(where: NbdAddress, export: str, tls_dir: str | None = None,
            timeout: float = CONNECT_TIMEOUT_S) -> nbd.NBD:
    """A libnbd handle on EXPORT of the subsystem serving at WHERE. Over TLS (WHERE says so),
    with TLS_DIR's certificates: ours from it, and the server's checked against its CA and
    the host name dialled. Over TCP, nbd.Error (ETIMEDOUT) if the handshake is not done
    within TIMEOUT seconds (libnbd's own connect would wait for the kernel: minutes)."""
    h = nbd.NBD()
    # libnbd zeroes every read buffer before reading into it unless told not to: a whole
    # extra pass over every byte backed up. A failed read abandons the backup, so what a
    # failed read leaves in the buffer is never looked at.
    h.set_pread_initialize(False)
    h.set_export_name(export)
    if "socket" in where:
        h.connect_unix(where["socket"])
        return h
    if where.get("tls"):
        assert tls_dir is not None, "the group refuses a TLS subsystem without certificates"
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_certificates(tls_dir)
        h.set_tls_verify_peer(True)
    h.aio_connect_tcp(where.get("host", "127.0.0.1"), str(where["port"]))
    deadline = time.monotonic() + timeout
    while not h.aio_is_ready():
        left = deadline - time.monotonic()
        if h.aio_is_dead() or h.aio_is_closed() or left <= 0:
            raise nbd.Error(f"no NBD handshake with {where.get('host')}:{where['port']} within {timeout:g} s "
                            "(host unreachable?)", errno.ETIMEDOUT)
        h.poll(int(min(left, 1.0) * 1000) + 1)  # a failed handshake raises nbd.Error here
    tune(h)
    return h


def tune(h: nbd.NBD) -> None:
    """Keepalive and a user timeout on a connected handle's TCP socket (common/endpoint.py):
    libnbd makes the socket, so the options go on through a duplicate of its descriptor."""
    fd = h.aio_get_fd()
    dup = socket.socket(fileno=socket.dup(fd))
    try:
        tune_tcp(dup)
    finally:
        dup.close()
