"""One served device: a block device or an image file, and the I/O the exports do on it.

All I/O is positional (pread/pwrite), so connections share one descriptor and
one page cache; that is what makes a flush on any connection cover all of them.

A device is served exclusively: a block device is opened O_EXCL (the kernel then refuses
it to mounts and to other exclusive openers, and fails the open if it is mounted or held),
and every device gets the image locks QEMU, qemu-img and qemu-io respect (imagelock.py),
so that nobody writes behind the back of the concordance, and two subsystems never serve
one disk. Either refusal is a DeviceError: one line, before anything is served.
"""

import errno
import os
import stat

from common import blockdev
from common.fileio import Buffer, WritableBuffer, read_fully, write_all, zero_fill
from nbdplugin.imagelock import ImageInUse, lock_image


class DeviceError(Exception):
    """a device given at start-up cannot be served"""


class Device:
    def __init__(self, name: str, path: str) -> None:
        # set at open, never changed (fd is closed by close(), at exit)
        self.name = name
        self.path = os.path.abspath(path)
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise DeviceError(f"export {name}: {self.path}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise DeviceError(f"export {name}: {self.path} is a directory, not a device or image file")
        self.is_block = stat.S_ISBLK(st.st_mode)
        if not (self.is_block or stat.S_ISREG(st.st_mode)):
            raise DeviceError(f"export {name}: {self.path} is neither a block device nor a regular file")
        exclusive = os.O_EXCL if self.is_block else 0
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | exclusive)
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise DeviceError(f"export {name}: {self.path} is in use (mounted, or held by another "
                                  "program)") from None
            raise DeviceError(f"export {name}: {self.path}: {e.strerror}") from None
        try:
            lock_image(self.fd)
        except ImageInUse as e:
            os.close(self.fd)
            raise DeviceError(f"export {name}: {self.path} is in use: {e}") from None
        except OSError as e:
            os.close(self.fd)
            raise DeviceError(f"export {name}: {self.path}: locking it failed: {e.strerror}") from None
        self.size = blockdev.block_device_size(self.fd) if self.is_block else st.st_size

    def read_into(self, buf: WritableBuffer, offset: int) -> None:
        # Straight into BUF (a request's own buffer: no copy), in one preadv but for a short read.
        read_fully(self.fd, buf, offset, self.path)

    def identity(self) -> dict[str, str | int]:
        """What a process on this host checks to know it opened this very device or file."""
        st = os.fstat(self.fd)
        return {"path": self.path, "dev": st.st_dev, "ino": st.st_ino, "rdev": st.st_rdev}

    def write(self, buf: Buffer, offset: int) -> None:
        # From BUF (nbdkit's request buffer, not copied), in one pwrite but for a short write.
        write_all(self.fd, buf, offset)

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def sync(self) -> None:
        """Data and metadata: the mtime a clean stop records must be on disk too."""
        os.fsync(self.fd)

    def trim(self, offset: int, length: int) -> None:
        """Discard a range; a device that cannot is left as it is (trim is advisory)."""
        try:
            if self.is_block:
                blockdev.discard(self.fd, offset, length)
            else:
                blockdev.punch_hole(self.fd, offset, length)
        except OSError as e:
            if not blockdev.unsupported(e):
                raise

    def zero(self, offset: int, length: int, may_trim: bool) -> None:
        """Make a range read as zeroes, by the cheapest means the device offers."""
        try:
            if self.is_block:
                blockdev.zeroout(self.fd, offset, length)
            elif may_trim:
                blockdev.punch_hole(self.fd, offset, length)
            else:
                blockdev.zero_range(self.fd, offset, length)
            return
        except OSError as e:
            if not blockdev.unsupported(e):
                raise
        zero_fill(self.fd, offset, length)

    def extents(self, offset: int, length: int, limit: int | None = None) -> list[tuple[int, int, bool]]:
        """(offset, length, is_hole) runs from OFFSET, back to back, from SEEK_DATA/SEEK_HOLE: all
        of [offset, offset+length), or the first LIMIT runs. Each run costs one or two lseeks, so
        a limit is what keeps a request on a fragmented file from walking it to the end."""
        end = min(offset + length, self.size)
        if self.is_block:
            return [(offset, end - offset, False)]
        runs: list[tuple[int, int, bool]] = []
        pos = offset
        while pos < end and (limit is None or len(runs) < limit):
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                data = end
            if data > pos:
                runs.append((pos, min(data, end) - pos, True))
                pos = min(data, end)
                continue
            hole = min(os.lseek(self.fd, pos, os.SEEK_HOLE), end)
            runs.append((pos, hole - pos, False))
            pos = hole
        return runs

    def close(self) -> None:
        """Let the device go (its locks with it); closing twice is harmless."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
