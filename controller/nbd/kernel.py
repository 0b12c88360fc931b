"""The kernel's NBD driver over generic netlink (family "nbd", linux/nbd-netlink.h): attach
a negotiated socket as /dev/nbdN, detach, ask a device's status.

CONNECT hands the socket to the kernel, which keeps its own reference: the caller may
close it and exit. pyroute2 is imported only inside KernelNbd: importing it is slow in a
TCG guest, and nothing else needs it.
"""

import errno
import socket
from typing import Any

from controller.errors import SubsystemError, TzeroError
from controller.nbd.handshake import TFLAG_HAS_FLAGS, TFLAG_READ_ONLY, ExportInfo, open_export
from controller.nbd.uri import NbdUri

# --- Kernel generic netlink (include/uapi/linux/nbd-netlink.h) ------------------------
GENL_FAMILY = "nbd"
GENL_VERSION = 1
CMD_CONNECT = 1
CMD_DISCONNECT = 2
CMD_STATUS = 5
KERNEL_MIN_BLOCK = 512                 # the kernel takes a power of two in [512, page size]
KERNEL_MAX_BLOCK = 4096

# pyroute2 has no type information: its classes and messages are Any to mypy.
Message = Any  # a pyroute2 netlink message


def kernel_block_size(info: ExportInfo) -> int:
    """The logical block size for the kernel: 512 unless the server needs more."""
    size = max(KERNEL_MIN_BLOCK, info.min_block)
    if size > KERNEL_MAX_BLOCK or size & (size - 1):
        raise SubsystemError(f"the export's minimum block size {info.min_block} cannot be "
                             f"used by the kernel (a power of two up to {KERNEL_MAX_BLOCK})")
    return size


class KernelNbd:
    """A generic netlink socket bound to the kernel's "nbd" family. Use with `with`."""

    def __init__(self) -> None:
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

    def __enter__(self) -> "KernelNbd":
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def _request(self, cmd: int, attrs: list[tuple[str, object]], what: str) -> tuple[Message, ...]:
        msg = self._msg()
        msg["cmd"] = cmd
        msg["version"] = GENL_VERSION
        msg["attrs"] = attrs
        try:
            replies: tuple[Message, ...] = self._sock.nlm_request(msg, msg_type=self._sock.prid,
                                                                  msg_flags=self._flags)
            return replies
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
        attrs: list[tuple[str, object]] = [
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
            got: int | None = reply.get_attr("NBD_ATTR_INDEX")
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


_MESSAGE_CLASS: type | None = None


def _message_class(genlmsg: Any, nla: Any) -> type:
    """The pyroute2 description of nbd netlink messages, made once pyroute2 is imported."""
    global _MESSAGE_CLASS
    if _MESSAGE_CLASS is not None:
        return _MESSAGE_CLASS

    class NbdMessage(genlmsg):  # type: ignore[misc]  # pyroute2's base class is Any
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

        class sockets(nla):  # type: ignore[misc]  # pyroute2's base class is Any
            nla_flags = 1 << 15         # NLA_F_NESTED
            nla_map = (("NBD_SOCK_ITEM_UNSPEC", "none"), ("NBD_SOCK_ITEM", "sock_item"))

            class sock_item(nla):  # type: ignore[misc]  # pyroute2's base class is Any
                nla_flags = 1 << 15
                nla_map = (("NBD_SOCK_UNSPEC", "none"), ("NBD_SOCK_FD", "uint32"))

        class device_list(nla):  # type: ignore[misc]  # pyroute2's base class is Any
            nla_flags = 1 << 15
            nla_map = (("NBD_DEVICE_ITEM_UNSPEC", "none"), ("NBD_DEVICE_ITEM", "device_item"))

            class device_item(nla):  # type: ignore[misc]  # pyroute2's base class is Any
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
