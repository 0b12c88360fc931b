"""nbdkit entry points: each callback is a few lines that delegate.

Run as `nbdkit python nbdplugin/plugin.py export=NAME=PATH control=CTL ...`
(tzero serve builds this command line). Live exports are served read-write
under their NAME; while a session is open, `NAME@SESSION` is its read-only
time-zero view.

Thread model: PARALLEL. The GIL still runs one callback at a time, but device
I/O releases it, so a slow write does not stall other connections' reads.
Mutations are serialised per chunk inside the session, never globally.
"""

import errno
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypedDict, TypeVar, TypeVarTuple

# nbdkit does not put the script's folder on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nbdkit  # noqa: E402

from common.tls import server_context  # noqa: E402
from nbdplugin.changestate import StateDir  # noqa: E402
from nbdplugin.config import PluginConfig  # noqa: E402
from nbdplugin.control import ControlServer  # noqa: E402
from nbdplugin.device import Device  # noqa: E402
from nbdplugin.session import Session  # noqa: E402
from nbdplugin.subsystem import Export, Subsystem  # noqa: E402
from nbdplugin.tracker import Tracker  # noqa: E402

API_VERSION = 2
# At most this many extents answer one block-status request: a client asking about a long
# range of a fragmented file gets the first ones and asks again from where they end (the
# protocol allows a shorter answer), instead of waiting while the whole range is walked.
EXTENTS_PER_REPLY = 1024
_FUA = nbdkit.FLAG_FUA

Ts = TypeVarTuple("Ts")
R = TypeVar("R")


class _State(TypedDict, total=False):
    subsystem: Subsystem
    server: ControlServer


_config = PluginConfig()
_state: _State = {}  # made in get_ready, never replaced


class LiveHandle:
    """A connection to a live export. What every request needs is looked up once, here, at open:
    a read or a write then costs no dictionary or attribute chain."""

    __slots__ = ("export", "readonly", "read_into", "write", "flush", "mutate")

    def __init__(self, export: Export, readonly: bool, subsystem: Subsystem) -> None:
        self.export = export
        self.readonly = readonly
        self.read_into = export.device.read_into
        self.write = export.device.write
        self.flush = export.device.flush
        self.mutate = subsystem.mutate


class ViewHandle:
    __slots__ = ("export", "session")

    def __init__(self, export: Export, session: Session) -> None:
        self.export = export
        self.session = session


Handle = LiveHandle | ViewHandle


def _fail(err: int, message: str) -> NoReturn:
    nbdkit.set_error(err)
    raise OSError(err, message)


def _io(fn: Callable[[*Ts], R]) -> Callable[[*Ts], R]:
    """Report OSErrors from the device or a session with their errno."""

    def wrapper(*args: *Ts) -> R:
        try:
            return fn(*args)
        except OSError as e:
            nbdkit.set_error(e.errno or errno.EIO)
            raise

    wrapper.__name__ = fn.__name__
    return wrapper


def thread_model() -> int:
    return nbdkit.THREAD_MODEL_PARALLEL


def config(key: str, value: str) -> None:
    _config.set(key, value)


def config_complete() -> None:
    _config.validate()


def get_ready() -> None:
    devices = [Device(name, path) for name, path in _config.exports]
    nbd: dict[str, str | int | bool] = {}
    if _config.nbd_socket:
        nbd = {"socket": _config.nbd_socket}
    elif _config.nbd_port:
        # With the certificates, tzero serve runs nbdkit with --tls=require --tls-verify-peer.
        nbd = {"host": _config.nbd_host, "port": _config.nbd_port, "tls": _config.tls_certificates is not None}
    state = StateDir(_config.state_dir) if _config.state_dir and _config.tracking else None
    tracker = Tracker(devices, _config.chunk, state, _config.tracking)  # map files now say "running"
    subsystem = Subsystem(devices, _config.chunk, _config.side_memory, _config.side_dir, nbd, _config.spill_keep,
                          tracker)
    tls = server_context(_config.tls_certificates) if _config.tls_certificates else None
    server = ControlServer(_config.control, subsystem, tls, _config.control_fd)
    server.bind()
    _state.update({"subsystem": subsystem, "server": server})


def after_fork() -> None:
    _state["server"].start()


def cleanup() -> None:
    # A clean stop: nbdkit calls this on SIGTERM (also the one --exit-with-parent sends), while
    # connections may still be open; stop() seals every gate before it saves the change maps.
    if "subsystem" in _state:
        _state["subsystem"].stop()
    if "server" in _state:
        _state["server"].stop()


def list_exports(readonly: bool, is_tls: bool) -> list[str]:
    return list(_state["subsystem"].exports)


# No default_export: a client that names no export (an empty name, as a URI with two slashes
# gives) is refused, never handed some disk it did not name.


def open(readonly: bool) -> Handle:
    subsystem = _state["subsystem"]
    name, at, token = nbdkit.export_name().partition("@")
    export = subsystem.exports.get(name)
    if export is None:
        _fail(errno.ENOENT, f"no export named {name!r} (this subsystem serves {', '.join(subsystem.exports)})")
    if not at:
        return LiveHandle(export, readonly, subsystem)
    session = subsystem.view_session(token)
    if session is None or export not in session.exports:
        # The name asked for stays out of the message: it may be a live session's view token.
        _fail(errno.ENOENT, f"no time-zero view of {name!r} by that name")
    return ViewHandle(export, session)


def get_size(h: Handle) -> int:
    return h.export.device.size


def can_write(h: Handle) -> bool:
    return isinstance(h, LiveHandle) and not h.readonly


def can_flush(h: Handle) -> bool:
    return isinstance(h, LiveHandle)


can_trim = can_zero = can_extents = can_flush


def can_fua(h: Handle) -> int:
    return nbdkit.FUA_NATIVE if isinstance(h, LiveHandle) else nbdkit.FUA_NONE


def can_multi_conn(h: Handle) -> bool:
    return True


# pread and pwrite are every request an application makes: no decorator, no helper between
# them and the device, the errno set here (what _io does for the rest).
def pread(h: Handle, buf: memoryview, offset: int, flags: int) -> None:
    try:
        if isinstance(h, LiveHandle):
            h.read_into(buf, offset)
        else:
            h.session.read_view(h.export, buf, offset)
    except OSError as e:
        nbdkit.set_error(e.errno or errno.EIO)
        raise


def pwrite(h: LiveHandle, buf: memoryview, offset: int, flags: int) -> None:
    try:
        h.mutate(h.export, offset, len(buf), h.write, buf, offset)
        if flags & _FUA:
            h.flush()
    except OSError as e:
        nbdkit.set_error(e.errno or errno.EIO)
        raise


def _mutate(h: LiveHandle, offset: int, length: int, flags: int, apply: Callable[[*Ts], object], *args: *Ts) -> None:
    h.mutate(h.export, offset, length, apply, *args)
    if flags & _FUA:
        h.flush()


@_io
def trim(h: LiveHandle, count: int, offset: int, flags: int) -> None:
    _mutate(h, offset, count, flags, h.export.device.trim, offset, count)


@_io
def zero(h: LiveHandle, count: int, offset: int, flags: int) -> None:
    _mutate(h, offset, count, flags, h.export.device.zero, offset, count, bool(flags & nbdkit.FLAG_MAY_TRIM))


@_io
def flush(h: LiveHandle, flags: int) -> None:
    h.flush()


@_io
def extents(h: Handle, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    # REQ_ONE: the client (qemu's NBD driver always) uses only the first extent.
    limit = 1 if flags & nbdkit.FLAG_REQ_ONE else EXTENTS_PER_REPLY
    hole = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    return [(o, n, hole if is_hole else 0) for o, n, is_hole in h.export.device.extents(offset, count, limit)]
