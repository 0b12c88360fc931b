"""nbdkit entry points serving a backup file read-only: one export per dataset.

Run as `nbdkit -r python nbdplugin/backup_plugin.py backup=PATH [backup=BASE ...]`
(tzero serve-backup builds this command line: an incremental backup, then its bases
down to the full one). Export NAME is dataset NAME; the default export is the first
dataset. Each callback is a few lines that delegate to backupformat/view.py, which
reads records through the streams' indexes and serves the chain's merged image.
A PATH may be s3://BUCKET/KEY, read by ranged GETs through common/objectread.py with
the credentials and endpoint of nbdkit's environment.

Thread model: SERIALIZE_ALL_REQUESTS. All exports share one file position and
one cache of decoded records, and decoding holds the GIL anyway.
A damaged record fails the read with EIO and says why in nbdkit's log; it is
never served as data.
"""

import errno
import os
import sys
from typing import NoReturn

# nbdkit does not put the script's folder on sys.path; the backupformat package lives beside it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nbdkit  # noqa: E402

from backupformat.view import Chain, DatasetView, FormatError, SourceFile  # noqa: E402
from common.objectread import open_object  # noqa: E402
from common.objectstore import StoreError, is_s3_uri  # noqa: E402

API_VERSION = 2
# At most this many extents answer one block-status request, and one with REQ_ONE: a client
# asking about a long range of a backup with many records asks again from where they end.
EXTENTS_PER_REPLY = 1024

_paths: list[str] = []  # the backup=PATH parameters, newest first, set by config
_state: dict[str, Chain] = {}  # "backup": the chain, made in get_ready, never replaced


def _fail(err: int, message: str) -> NoReturn:
    nbdkit.set_error(err)
    raise OSError(err, message)


def thread_model() -> int:
    return nbdkit.THREAD_MODEL_SERIALIZE_ALL_REQUESTS


def config(key: str, value: str) -> None:
    if key != "backup":
        raise RuntimeError(f"unknown parameter {key!r} (expected backup=PATH)")
    _paths.append(value if is_s3_uri(value) else os.path.abspath(value))


def config_complete() -> None:
    if not _paths:
        raise RuntimeError("no backup: give backup=PATH")


def get_ready() -> None:
    sources: list[str | SourceFile] = []
    try:
        for path in _paths:
            sources.append(open_object(path, sequential=False) if is_s3_uri(path) else path)
        _state["backup"] = Chain(sources)
    except BaseException:
        for s in sources:
            if not isinstance(s, str):
                s.close()
        raise


def cleanup() -> None:
    if "backup" in _state:
        _state["backup"].close()


def list_exports(readonly: bool, is_tls: bool) -> list[str]:
    return list(_state["backup"].names)


def default_export(readonly: bool, is_tls: bool) -> str:
    names = _state["backup"].names
    return names[0] if names else ""


def open(readonly: bool) -> DatasetView:
    backup = _state["backup"]
    name = nbdkit.export_name() or default_export(readonly, False)
    if name not in backup.names:
        _fail(errno.ENOENT, f"the backup has no dataset named {name!r}")
    return backup.view(name)


def get_size(h: DatasetView) -> int:
    return h.size


def can_write(h: DatasetView) -> bool:
    return False


def can_extents(h: DatasetView) -> bool:
    return True


def can_multi_conn(h: DatasetView) -> bool:
    return True


def pread(h: DatasetView, buf: memoryview, offset: int, flags: int) -> None:
    try:
        h.read_into(buf, offset)
    except (FormatError, OSError, StoreError) as e:
        nbdkit.debug(f"tzero serve-backup: {h.name} at {offset}: {e}")
        _fail(errno.EIO, str(e))


def extents(h: DatasetView, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    limit = 1 if flags & nbdkit.FLAG_REQ_ONE else EXTENTS_PER_REPLY
    hole = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    return [(o, n, hole if is_hole else 0) for o, n, is_hole in h.extents(offset, count, limit)]
