"""Where a restore writes: new files, block devices and NBD exports, behind one interface
(write, finish, commit, abort; `touched` and `atomic` say what a failure leaves).

Failure policy, per kind of target:
  new file       written as PATH.partial, sparse (holes are never written),
                 renamed over PATH by commit; abort removes the .partial. Atomic.
  block device,  hold old data, so every gap between records is zeroed, and so
  NBD export     is the tail up to the dataset size; bytes beyond the dataset
                 size are left alone. Not atomic: a failure after the first write
                 says "restore of 'NAME' onto TARGET is incomplete: <reason>".
Every target is checked (size, writability) before the first record is read.
"""

import os
import re
import stat

from backupformat import Dataset, Header
from common import blockdev
from common.fileio import ZEROS, fsync_dir, write_all, zero_fill
from controller.errors import RestoreError, UsageError

_NBD_URI = re.compile(r"nbds?(\+(unix|vsock|tcp))?://")
_NBD_MAX_WRITE = 4 << 20  # well under libnbd's 64 MiB and most servers' limits
_NBD_MAX_ZERO = 1 << 30  # NBD lengths are 32-bit


def is_nbd_uri(text: str) -> bool:
    return bool(_NBD_URI.match(text))


class FileTarget:
    """A new regular file at PATH of exactly the dataset size, sparse, atomic."""

    atomic = True

    def __init__(self, path: str, dataset: Dataset):
        self.label = path
        self.dataset = dataset
        self.partial = path + ".partial"
        self.touched = False
        try:
            # A .partial left by an earlier failed run is ours to overwrite.
            self._fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                               0o600)
        except OSError as e:
            raise RestoreError(f"cannot create {self.partial}: {e.strerror}") from None
        self._io(os.ftruncate, self._fd, dataset.size)

    def write(self, offset: int, data) -> None:
        self._io(write_all, self._fd, data, offset)

    def finish(self) -> None:
        self._io(os.fsync, self._fd)

    def commit(self) -> None:
        os.close(self._fd)
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

    def _io(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise RestoreError(f"cannot write {self.partial}: {e.strerror}") from None


class _InPlaceTarget:
    """A target that already exists and may hold old data: it zeroes every gap.

    Subclasses provide _pwrite, _zero, _flush and close; all raise RestoreError.
    """

    atomic = False

    def __init__(self, label: str, device_size: int, dataset: Dataset):
        self.label = label
        self.dataset = dataset
        self.touched = False  # written or zeroed: from then on a failure leaves it incomplete
        self._cursor = 0  # everything below is restored
        if device_size < dataset.size:
            self.close()
            raise RestoreError(f"{label} is too small for dataset {dataset.name!r}: "
                               f"{device_size} bytes, needs {dataset.size}")

    def write(self, offset: int, data) -> None:
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


class DeviceTarget(_InPlaceTarget):
    """An open file descriptor written in place: a block device (or, in tests, a file)."""

    def __init__(self, fd: int, label: str, device_size: int, dataset: Dataset):
        self._fd = fd
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

    def _pwrite(self, offset, data):
        self._io(write_all, self._fd, data, offset)

    def _zero(self, offset, length):
        if self._zeroout and offset % 512 == 0 and length % 512 == 0:
            try:
                blockdev.zeroout(self._fd, offset, length)
                return
            except OSError as e:
                if not blockdev.unsupported(e):
                    raise RestoreError(f"cannot zero {self.label}: {e.strerror}") from None
                self._zeroout = False  # not a block device, or one that cannot: write zeros
        self._io(zero_fill, self._fd, offset, length)

    def _flush(self):
        self._io(os.fsync, self._fd)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _io(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise RestoreError(f"cannot write {self.label}: {e.strerror}") from None


class NbdTarget(_InPlaceTarget):
    """An NBD export, by URI, written in place through libnbd."""

    def __init__(self, uri: str, dataset: Dataset):
        import nbd  # only NBD targets need libnbd

        self._nbd = nbd
        self._h = None
        try:
            h = nbd.NBD()
            h.connect_uri(uri)
        except nbd.Error as e:
            raise RestoreError(f"cannot connect to {uri}: {e.string}") from None
        self._h = h
        self.label = uri
        if self._call(h.is_read_only):
            self.close()
            raise RestoreError(f"{uri} is read-only")
        self._can_zero = self._call(h.can_zero)
        super().__init__(uri, self._call(h.get_size), dataset)

    def _pwrite(self, offset, data):
        view = memoryview(data)
        for start in range(0, len(view), _NBD_MAX_WRITE):
            self._call(self._h.pwrite, view[start:start + _NBD_MAX_WRITE], offset + start)

    def _zero(self, offset, length):
        end = offset + length
        while offset < end:
            if self._can_zero:
                n = min(_NBD_MAX_ZERO, end - offset)
                self._call(self._h.zero, n, offset)
            else:
                n = min(len(ZEROS), end - offset)
                self._call(self._h.pwrite, ZEROS[:n], offset)
            offset += n

    def _flush(self):
        if self._call(self._h.can_flush):
            self._call(self._h.flush)

    def close(self):
        if self._h is not None:
            h, self._h = self._h, None
            try:
                h.shutdown()
            except self._nbd.Error:
                pass  # closing after a failure: the first error is the one to report

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self._nbd.Error as e:
            raise RestoreError(f"{self.label}: {e.string}") from None


def open_target(to: str, dataset: Dataset, force: bool):
    """The target TO names for DATASET: an NBD URI, a block device, a directory
    (DIR/NAME.img in it) or a file path. Checked and opened, nothing written yet."""
    if is_nbd_uri(to):
        return NbdTarget(to, dataset)
    try:
        mode = os.stat(to).st_mode
    except FileNotFoundError:
        return new_file(to, dataset, force)
    except OSError as e:
        raise RestoreError(f"cannot use {to}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        return new_file(os.path.join(to, dataset.name + ".img"), dataset, force)
    if stat.S_ISBLK(mode):
        return DeviceTarget.open(to, dataset)
    return new_file(to, dataset, force)


def new_file(path: str, dataset: Dataset, force: bool) -> FileTarget:
    """A FileTarget at PATH; an existing PATH is replaced only with FORCE, and only by a file."""
    if os.path.lexists(path):
        if not force:
            raise UsageError(f"{path} exists; use --force to replace it")
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise RestoreError(f"{path} is not a regular file, a block device or a directory")
    return FileTarget(path, dataset)


def plan_directory(header: Header, directory: str, force: bool) -> dict:
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
    plan = {}
    try:
        for i, (d, path) in enumerate(zip(header.datasets, paths, strict=False)):
            plan[i] = new_file(path, d, force=True)
    except BaseException:
        abort_all(plan)
        raise
    return plan


def abort_all(plan: dict) -> None:
    """Abort every target of PLAN, keeping quiet: the caller is already failing."""
    for target in plan.values():
        try:
            target.abort()
        except OSError:
            pass  # the first error is the one to report
