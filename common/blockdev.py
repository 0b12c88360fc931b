"""System calls Python's os module lacks: fallocate with mode flags, renameat2, and the block-device ioctls.

cffi in ABI mode against the C library already loaded in the process, so nothing
is compiled at install time.
"""

import errno
import fcntl
import os
import struct

import cffi

_ffi = cffi.FFI()
_ffi.cdef("""
int fallocate(int fd, int mode, long offset, long len);
int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
""")
_libc = _ffi.dlopen(None)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
AT_FDCWD = -100
RENAME_NOREPLACE = 1

# From linux/fs.h: _IO(0x12, 119), _IO(0x12, 127), _IOR(0x12, 114, size_t).
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = _ffi.errno
        raise OSError(err, os.strerror(err))


def rename_noreplace(src: str, dst: str) -> None:
    """Rename SRC to DST unless DST exists (FileExistsError then), in one step: nothing can
    appear at DST between a check and the rename. A file system that cannot (EINVAL) gets
    link-then-unlink, which refuses an existing DST just the same."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
        return
    err = _ffi.errno
    if err != errno.EINVAL:
        raise OSError(err, os.strerror(err), dst)
    os.link(src, dst)
    os.unlink(src)


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
