"""Where a restore writes: new files, block devices and NBD exports, behind one interface
(write, finish, commit, abort; `touched` and `atomic` say what a failure leaves).

Failure policy, per kind of target:
  new file       written as PATH.partial-XXXXXXXX, this run's own (O_EXCL, 0600), sparse
                 (holes are never written), renamed over PATH by commit; abort removes
                 it. Atomic.
  block device,  hold old data, so every gap between records is zeroed, and so
  NBD export     is the tail up to the dataset size; bytes beyond the dataset
                 size are left alone. Not atomic: a failure after the first write
                 says "restore of 'NAME' onto TARGET is incomplete: <reason>".
                 They are written only with --force, as an existing file is replaced
                 only with it; `described` says what was found there (the export the
                 server resolved the URI's name to, the size), and the command prints
                 it before the first write.
Every target is checked (size, writability) before the first record is read.
"""

import os
import re
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar

from backupformat import Dataset, Header
from common import blockdev
from common.fileio import ZEROS, Buffer, create_partial, fsync_dir, write_all, zero_fill
from common.units import exact_size
from controller.errors import RestoreError, UsageError

if TYPE_CHECKING:
    import nbd  # imported when an NBD target is made: only those need libnbd

P = ParamSpec("P")
T = TypeVar("T")

_NBD_URI = re.compile(r"nbds?(\+(unix|vsock|tcp))?://")
_NBD_MAX_WRITE = 4 << 20  # well under libnbd's 64 MiB and most servers' limits
_NBD_MAX_ZERO = 1 << 30  # NBD lengths are 32-bit


class Target(Protocol):
    """What the restore loop (restore.py) knows of a target. It is used by that loop alone."""

    dataset: Dataset
    label: str
    touched: bool  # written or zeroed: from then on a failure leaves it incomplete
    atomic: bool  # a failure leaves nothing behind, however far it got

    @property
    def described(self) -> str: ...  # what it is, for people: "block device /dev/sdb (N bytes)"

    def write(self, offset: int, data: Buffer) -> None: ...
    def finish(self) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


def is_nbd_uri(text: str) -> bool:
    return bool(_NBD_URI.match(text))


class FileTarget:
    """A new regular file at PATH of exactly the dataset size, sparse, atomic."""

    atomic = True

    def __init__(self, path: str, dataset: Dataset):
        # Set at start, never changed.
        self.label = path
        self.dataset = dataset
        # Restore loop only.
        self.touched = False
        self._fd: int | None  # None once committed or aborted
        try:
            # This run's own file, private whatever the umask: another run's is never touched.
            self._fd, self.partial = create_partial(path)
        except OSError as e:
            raise RestoreError(f"cannot create a file beside {path}: {e.strerror}") from None
        self._io(os.ftruncate, self._fd, dataset.size)

    @property
    def described(self) -> str:
        return f"file {self.label}"

    def write(self, offset: int, data: Buffer) -> None:
        self._io(write_all, self._open_fd, data, offset)

    def finish(self) -> None:
        self._io(os.fsync, self._open_fd)

    def commit(self) -> None:
        os.close(self._open_fd)
        self._fd = None
        self._io(os.rename, self.partial, self.label)
        self._io(fsync_dir, os.path.dirname(self.label))

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self.partial)
        except FileNotFoundError:
            pass

    @property
    def _open_fd(self) -> int:
        assert self._fd is not None, "a target is written only until commit or abort"
        return self._fd

    def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            raise RestoreError(f"cannot write {self.partial}: {e.strerror}") from None


class _InPlaceTarget(ABC):
    """A target that already exists and may hold old data: it zeroes every gap.

    Subclasses provide _pwrite, _zero, _flush and close; all raise RestoreError.
    """

    atomic = False
    kind = "target"  # what it is, for people: "block device", "export"

    def __init__(self, label: str, device_size: int, dataset: Dataset):
        # Set at start, never changed.
        self.label = label
        self.dataset = dataset
        self.size = device_size
        # Restore loop only.
        self.touched = False  # written or zeroed: from then on a failure leaves it incomplete
        self._cursor = 0  # everything below is restored
        if device_size < dataset.size:
            self.close()
            raise RestoreError(f"{label} is too small for dataset {dataset.name!r}: "
                               f"{exact_size(device_size)}, needs {exact_size(dataset.size)}")

    @property
    def described(self) -> str:
        """What this target is, as found: "block device /dev/sdb (N bytes)"."""
        return f"{self.kind} {self.label}, {exact_size(self.size)}"

    @property
    def found(self) -> str:
        """What was found at the label: "a block device (N bytes)"."""
        return f"a {self.kind} of {exact_size(self.size)}"

    def write(self, offset: int, data: Buffer) -> None:
        assert offset >= self._cursor, "the reader yields records in ascending order"
        self.touched = True
        if offset > self._cursor:
            self._zero(self._cursor, offset - self._cursor)
        self._pwrite(offset, data)
        self._cursor = offset + len(data)

    def finish(self) -> None:
        self.touched = True
        if self.dataset.size > self._cursor:
            self._zero(self._cursor, self.dataset.size - self._cursor)
        self._cursor = self.dataset.size
        self._flush()

    def commit(self) -> None:
        self.close()

    def abort(self) -> None:
        self.close()

    @abstractmethod
    def _pwrite(self, offset: int, data: Buffer) -> None: ...

    @abstractmethod
    def _zero(self, offset: int, length: int) -> None: ...

    @abstractmethod
    def _flush(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class DeviceTarget(_InPlaceTarget):
    """An open file descriptor written in place: a block device (or, in tests, a file)."""

    kind = "block device"

    def __init__(self, fd: int, label: str, device_size: int, dataset: Dataset):
        # Restore loop only.
        self._fd: int | None = fd  # None once closed
        self._zeroout = True  # until the kernel says the device cannot
        super().__init__(label, device_size, dataset)

    @classmethod
    def open(cls, path: str, dataset: Dataset) -> "DeviceTarget":
        try:
            # O_EXCL on a block device fails with EBUSY while it is mounted or in use.
            fd = os.open(path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as e:
            raise RestoreError(f"cannot open {path}: {e.strerror}") from None
        try:
            size = blockdev.block_device_size(fd)
        except OSError as e:
            os.close(fd)
            raise RestoreError(f"cannot get the size of {path}: {e.strerror}") from None
        return cls(fd, path, size, dataset)

    def _pwrite(self, offset: int, data: Buffer) -> None:
        self._io(write_all, self._open_fd, data, offset)

    def _zero(self, offset: int, length: int) -> None:
        if self._zeroout and offset % 512 == 0 and length % 512 == 0:
            try:
                blockdev.zeroout(self._open_fd, offset, length)
                return
            except OSError as e:
                if not blockdev.unsupported(e):
                    raise RestoreError(f"cannot zero {self.label}: {e.strerror}") from None
                self._zeroout = False  # not a block device, or one that cannot: write zeros
        self._io(zero_fill, self._open_fd, offset, length)

    def _flush(self) -> None:
        self._io(os.fsync, self._open_fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def _open_fd(self) -> int:
        assert self._fd is not None, "a target is written only until it is closed"
        return self._fd

    def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            raise RestoreError(f"cannot write {self.label}: {e.strerror}") from None


class NbdTarget(_InPlaceTarget):
    """An NBD export, by URI, written in place through libnbd. An nbds:// URI is TLS with the
    certificates of TLS_DIR, or of the URI's own tls-certificates=DIR."""

    kind = "export"

    def __init__(self, uri: str, dataset: Dataset, tls_dir: str | None = None):
        import nbd  # only NBD targets need libnbd

        # Set at start, never changed: _nbd, _can_zero, export (and label, dataset: _InPlaceTarget).
        # Restore loop only: _h, None once closed.
        self._nbd: ModuleType = nbd
        self._h: nbd.NBD | None = None
        try:
            h = nbd.NBD()
            # The user typed the URI: the local files it names (tls-certificates=DIR) are theirs
            # to name. libnbd refuses them unless told so.
            h.set_uri_allow_local_file(True)
            if tls_dir is not None:
                h.set_tls_certificates(tls_dir)
            h.set_full_info(True)  # so the server names the export it resolved the URI's name to
            h.connect_uri(uri)
        except nbd.Error as e:
            raise RestoreError(f"cannot connect to {uri}: {e.string}") from None
        self._h = h
        self.label = uri
        self.export = self._export_name(h)
        if self._call(h.is_read_only):
            self.close()
            raise RestoreError(f"{uri} is read-only")
        self._can_zero = self._call(h.can_zero)
        super().__init__(uri, self._call(h.get_size), dataset)

    def _export_name(self, h: "nbd.NBD") -> str:
        """The export's name as the server resolved it; the name asked for if it does not say."""
        try:
            name: str = h.get_canonical_export_name()
        except self._nbd.Error:
            name = h.get_export_name()
        return name

    @property
    def described(self) -> str:
        return f"export {self.export!r} of {self.label}, {exact_size(self.size)}"

    @property
    def found(self) -> str:
        return f"export {self.export!r} of a running NBD server, {exact_size(self.size)}"

    def _pwrite(self, offset: int, data: Buffer) -> None:
        view = memoryview(data)
        for start in range(0, len(view), _NBD_MAX_WRITE):
            self._call(self._open_handle.pwrite, view[start:start + _NBD_MAX_WRITE], offset + start)

    def _zero(self, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            if self._can_zero:
                n = min(_NBD_MAX_ZERO, end - offset)
                self._call(self._open_handle.zero, n, offset)
            else:
                n = min(len(ZEROS), end - offset)
                self._call(self._open_handle.pwrite, ZEROS[:n], offset)
            offset += n

    def _flush(self) -> None:
        if self._call(self._open_handle.can_flush):
            self._call(self._open_handle.flush)

    def close(self) -> None:
        if self._h is not None:
            h, self._h = self._h, None
            try:
                h.shutdown()
            except self._nbd.Error:
                pass  # closing after a failure: the first error is the one to report

    @property
    def _open_handle(self) -> "nbd.NBD":
        assert self._h is not None, "a target is written only until it is closed"
        return self._h

    def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except self._nbd.Error as e:
            raise RestoreError(f"{self.label}: {e.string}") from None


def open_target(to: str, dataset: Dataset, force: bool, tls_dir: str | None = None) -> Target:
    """The target TO names for DATASET: an NBD URI (TLS_DIR: the certificates of an nbds:// one),
    a block device, a directory (DIR/NAME.img in it) or a file path. Checked and opened,
    nothing written yet. A device or an export holds data: without FORCE it is refused
    (UsageError) once opened, with what it was found to be."""
    if is_nbd_uri(to):
        return _forced(NbdTarget(to, dataset, tls_dir), force)
    try:
        mode = os.stat(to).st_mode
    except FileNotFoundError:
        return new_file(to, dataset, force)
    except OSError as e:
        raise RestoreError(f"cannot use {to}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        return new_file(os.path.join(to, dataset.name + ".img"), dataset, force)
    if stat.S_ISBLK(mode):
        return _forced(DeviceTarget.open(to, dataset), force)
    return new_file(to, dataset, force)


def _forced(target: _InPlaceTarget, force: bool) -> _InPlaceTarget:
    """TARGET if FORCE, else closed and refused: restoring onto it destroys what it holds."""
    if not force:
        target.close()
        raise UsageError(f"{target.label} is {target.found}: restoring overwrites it; use --force")
    return target


def new_file(path: str, dataset: Dataset, force: bool) -> FileTarget:
    """A FileTarget at PATH; an existing PATH is replaced only with FORCE, and only by a file."""
    if os.path.lexists(path):
        if not force:
            raise UsageError(f"{path} exists; use --force to replace it")
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise RestoreError(f"{path} is not a regular file, a block device or a directory")
    return FileTarget(path, dataset)


def plan_directory(header: Header, directory: str, force: bool) -> dict[int, Target]:
    """A FileTarget DIRECTORY/NAME.img for every dataset, by dataset index.

    Refuses before creating anything if any NAME.img exists and not FORCE.
    """
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise RestoreError(f"cannot make directory {directory}: {e.strerror}") from None
    paths = [os.path.join(directory, d.name + ".img") for d in header.datasets]
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                           "use --force to replace")
    plan: dict[int, Target] = {}
    try:
        for i, (d, path) in enumerate(zip(header.datasets, paths, strict=False)):
            plan[i] = new_file(path, d, force=True)
    except BaseException:
        abort_all(plan)
        raise
    return plan


def abort_all(plan: dict[int, Target]) -> None:
    """Abort every target of PLAN, keeping quiet: the caller is already failing."""
    for target in plan.values():
        try:
            target.abort()
        except OSError:
            pass  # the first error is the one to report
