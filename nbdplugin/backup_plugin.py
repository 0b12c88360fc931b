"""nbdkit entry points serving a backup file read-only: one export per dataset.

Run as `nbdkit -r python nbdplugin/backup_plugin.py backup=PATH` (tzero serve-backup
builds this command line). Export NAME is dataset NAME; the default export is
the first dataset. Each callback is a few lines that delegate to
backupformat/view.py, which reads records through the stream's index.

Thread model: SERIALIZE_ALL_REQUESTS. All exports share one file position and
one cache of decoded records, and decoding holds the GIL anyway.
A damaged record fails the read with EIO and says why in nbdkit's log; it is
never served as data.
"""

import errno
import os
import sys

# nbdkit does not put the script's folder on sys.path; the backupformat package lives beside it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nbdkit  # noqa: E402

from backupformat.view import BackupFile, FormatError  # noqa: E402

API_VERSION = 2

_config: dict = {}  # "backup": PATH, set by config
_state: dict = {}  # "backup": BackupFile, made in get_ready, never replaced


def _fail(err: int, message: str):
    nbdkit.set_error(err)
    raise OSError(err, message)


def thread_model():
    return nbdkit.THREAD_MODEL_SERIALIZE_ALL_REQUESTS


def config(key, value):
    if key != "backup":
        raise RuntimeError(f"unknown parameter {key!r} (expected backup=PATH)")
    _config["backup"] = os.path.abspath(value)


def config_complete():
    if "backup" not in _config:
        raise RuntimeError("no backup: give backup=PATH")


def get_ready():
    _state["backup"] = BackupFile(_config["backup"])


def cleanup():
    if "backup" in _state:
        _state["backup"].close()


def list_exports(readonly, is_tls):
    return list(_state["backup"].names)


def default_export(readonly, is_tls):
    names = _state["backup"].names
    return names[0] if names else ""


def open(readonly):
    backup = _state["backup"]
    name = nbdkit.export_name() or default_export(readonly, False)
    if name not in backup.names:
        _fail(errno.ENOENT, f"the backup has no dataset named {name!r}")
    return backup.view(name)


def get_size(h):
    return h.size


def can_write(h):
    return False


def can_extents(h):
    return True


def can_multi_conn(h):
    return True


def pread(h, buf, offset, flags):
    try:
        h.read_into(buf, offset)
    except (FormatError, OSError) as e:
        nbdkit.debug(f"tzero serve-backup: {h.name} at {offset}: {e}")
        _fail(errno.EIO, str(e))


def extents(h, count, offset, flags):
    hole = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    return [(o, n, hole if is_hole else 0) for o, n, is_hole in h.extents(offset, count)]
