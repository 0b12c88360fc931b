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

# nbdkit does not put the script's folder on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nbdkit  # noqa: E402

from nbdplugin.config import PluginConfig  # noqa: E402
from nbdplugin.control import ControlServer  # noqa: E402
from nbdplugin.device import Device  # noqa: E402
from nbdplugin.subsystem import Subsystem  # noqa: E402

API_VERSION = 2

_config = PluginConfig()
_state: dict = {}  # "subsystem", "server": made in get_ready, never replaced


class LiveHandle:
    def __init__(self, export, readonly):
        self.export = export
        self.readonly = readonly


class ViewHandle:
    def __init__(self, export, session):
        self.export = export
        self.session = session


def _fail(err: int, message: str):
    nbdkit.set_error(err)
    raise OSError(err, message)


def _io(fn):
    """Report OSErrors from the device or a session with their errno."""

    def wrapper(*args):
        try:
            return fn(*args)
        except OSError as e:
            nbdkit.set_error(e.errno or errno.EIO)
            raise

    wrapper.__name__ = fn.__name__
    return wrapper


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def config(key, value):
    _config.set(key, value)


def config_complete():
    _config.validate()


def get_ready():
    devices = [Device(name, path) for name, path in _config.exports]
    nbd: dict = {}
    if _config.nbd_socket:
        nbd = {"socket": _config.nbd_socket}
    elif _config.nbd_port:
        nbd = {"port": _config.nbd_port}
    subsystem = Subsystem(devices, _config.chunk, _config.side_memory, _config.side_dir, nbd, _config.spill_keep)
    server = ControlServer(_config.control, subsystem)
    server.bind()
    _state.update(subsystem=subsystem, server=server)


def after_fork():
    _state["server"].start()


def cleanup():
    if "server" in _state:
        _state["server"].stop()


def list_exports(readonly, is_tls):
    return list(_state["subsystem"].exports)


def default_export(readonly, is_tls):
    return next(iter(_state["subsystem"].exports))


def open(readonly):
    subsystem = _state["subsystem"]
    name, at, sid = nbdkit.export_name().partition("@")
    export = subsystem.exports.get(name or next(iter(subsystem.exports)))
    if export is None:
        _fail(errno.ENOENT, f"no export named {name!r}")
    if not at:
        return LiveHandle(export, readonly)
    session = subsystem.view_session(sid)
    if session is None or export not in session.exports:
        _fail(errno.ENOENT, f"no active session {sid!r} with export {name!r}")
    return ViewHandle(export, session)


def get_size(h):
    return h.export.device.size


def can_write(h):
    return isinstance(h, LiveHandle) and not h.readonly


def can_flush(h):
    return isinstance(h, LiveHandle)


can_trim = can_zero = can_extents = can_flush


def can_fua(h):
    return nbdkit.FUA_NATIVE if isinstance(h, LiveHandle) else nbdkit.FUA_NONE


def can_multi_conn(h):
    return True


@_io
def pread(h, buf, offset, flags):
    if isinstance(h, ViewHandle):
        h.session.read_view(h.export, buf, offset)
    else:
        h.export.device.read_into(buf, offset)


def _mutate(h, offset, length, flags, apply, *args):
    _state["subsystem"].mutate(h.export, offset, length, apply, *args)
    if flags & nbdkit.FLAG_FUA:
        h.export.device.flush()


@_io
def pwrite(h, buf, offset, flags):
    _mutate(h, offset, len(buf), flags, h.export.device.write, buf, offset)


@_io
def trim(h, count, offset, flags):
    _mutate(h, offset, count, flags, h.export.device.trim, offset, count)


@_io
def zero(h, count, offset, flags):
    _mutate(h, offset, count, flags, h.export.device.zero, offset, count, bool(flags & nbdkit.FLAG_MAY_TRIM))


@_io
def flush(h, flags):
    h.export.device.flush()


@_io
def extents(h, count, offset, flags):
    hole = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    return [(o, n, hole if is_hole else 0) for o, n, is_hole in h.export.device.extents(offset, count)]
