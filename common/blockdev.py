"""System calls Python's os module lacks: fallocate with mode flags, and the block-device ioctls.

cffi in ABI mode against the C library already loaded in the process, so nothing
is compiled at install time.
"""

import errno
import fcntl
import os
import struct

import cffi

_ffi = cffi.FFI()
_ffi.cdef("int fallocate(int fd, int mode, long offset, long len);")
_libc = _ffi.dlopen(None)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# From linux/fs.h: _IO(0x12, 119), _IO(0x12, 127), _IOR(0x12, 114, size_t).
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = _ffi.errno
        raise OSError(err, os.strerror(err))


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range of a file; it reads as zeros and keeps its size."""
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make a range of a file read as zeros, keeping it allocated and the size unchanged."""
    fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)


def block_device_size(fd: int) -> int:
    return int(struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0])


def discard(fd: int, offset: int, length: int) -> None:
    """BLKDISCARD a range of a block device."""
    fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", offset, length))


def zeroout(fd: int, offset: int, length: int) -> None:
    """BLKZEROOUT a range of a block device (offset and length sector-aligned)."""
    fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))


def unsupported(e: OSError) -> bool:
    """True when E means 'this file system or device cannot do that', so a fallback applies."""
    return e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS)
