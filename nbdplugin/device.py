"""One served device: a block device or an image file, and the I/O the exports do on it.

All I/O is positional (pread/pwrite), so connections share one descriptor and
one page cache; that is what makes a flush on any connection cover all of them.
"""

import errno
import os
import stat

from nbdplugin import syscalls

_ZERO_PIECE = bytes(1 << 20)


def read_fully(fd: int, buf, offset: int, name: str) -> None:
    """Fill BUF from FD at OFFSET, however many preadv calls it takes; OSError(EIO) at an early end."""
    view = memoryview(buf)
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"{name}: unexpected end at offset {offset + done}")
        done += n


class DeviceError(Exception):
    """a device given at start-up cannot be served"""


class Device:
    def __init__(self, name: str, path: str):
        self.name = name  # set at open, never changed
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
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise DeviceError(f"export {name}: {self.path}: {e.strerror}") from None
        self.size = syscalls.block_device_size(self.fd) if self.is_block else st.st_size

    def read_into(self, buf, offset: int) -> None:
        read_fully(self.fd, buf, offset, self.path)

    def identity(self) -> dict:
        """What a process on this host checks to know it opened this very device or file."""
        st = os.fstat(self.fd)
        return {"path": self.path, "dev": st.st_dev, "ino": st.st_ino, "rdev": st.st_rdev}

    def write(self, buf, offset: int) -> None:
        done = os.pwrite(self.fd, buf, offset)
        if done == len(buf):
            return  # the common case, on every application write
        view = memoryview(buf)
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def trim(self, offset: int, length: int) -> None:
        """Discard a range; a device that cannot is left as it is (trim is advisory)."""
        try:
            if self.is_block:
                syscalls.block_range_ioctl(self.fd, syscalls.BLKDISCARD, offset, length)
            else:
                syscalls.fallocate(self.fd, syscalls.FALLOC_FL_PUNCH_HOLE | syscalls.FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as e:
            if not syscalls.unsupported(e):
                raise

    def zero(self, offset: int, length: int, may_trim: bool) -> None:
        """Make a range read as zeroes, by the cheapest means the device offers."""
        try:
            if self.is_block:
                syscalls.block_range_ioctl(self.fd, syscalls.BLKZEROOUT, offset, length)
            elif may_trim:
                syscalls.fallocate(self.fd, syscalls.FALLOC_FL_PUNCH_HOLE | syscalls.FALLOC_FL_KEEP_SIZE, offset, length)
            else:
                syscalls.fallocate(self.fd, syscalls.FALLOC_FL_ZERO_RANGE | syscalls.FALLOC_FL_KEEP_SIZE, offset, length)
            return
        except OSError as e:
            if not syscalls.unsupported(e):
                raise
        end = offset + length
        while offset < end:
            n = min(len(_ZERO_PIECE), end - offset)
            self.write(memoryview(_ZERO_PIECE)[:n], offset)
            offset += n

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, is_hole) runs covering [offset, offset+length), from SEEK_DATA/SEEK_HOLE."""
        end = min(offset + length, self.size)
        if self.is_block:
            return [(offset, end - offset, False)]
        runs = []
        pos = offset
        while pos < end:
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
        os.close(self.fd)
