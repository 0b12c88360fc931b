"""Image locks that QEMU, qemu-img and qemu-io respect: nobody else writes what we serve.

QEMU's file driver (block/file-posix.c: raw_apply_lock_bytes, raw_check_lock_bytes) says
who holds an image, and what it will not share, with open-file-description (OFD) byte-range
locks on the image itself, one byte per permission:

    byte 100 + i   held by every opener that uses permission i
    byte 200 + i   held by every opener that does not let others use permission i

where i numbers the permissions: 0 consistent read, 1 write, 2 write-unchanged,
3 resize. All are shared (read) locks, so holders never block each other; a new opener
instead asks (F_OFD_GETLK with a write lock) whether anybody else holds byte 200 + i for
a permission it wants ("Failed to get "write" lock") or byte 100 + i for one it will not
share ("Failed to get shared "write" lock"), and gives up if so.

A subsystem serves an image as a running VM uses its disk: it reads and writes, lets
others read, and lets nobody else write or resize it. So it holds bytes 100, 101 (read,
write), 201 and 203 (write and resize not shared), and refuses to start if somebody holds
byte 200 or 201 (does not share reading or writing) or 101 or 103 (writes or resizes).
A second `tzero serve` of the same image, a VM, qemu-io and qemu-img (without -U) all
then refuse each other. The locks go with the descriptor: closing it (or the process
ending, however) releases them.
"""

import errno
import fcntl
import os
import struct

PERM_BASE, SHARED_BASE = 100, 200
CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE = 0, 1, 2, 3
NAMES = {CONSISTENT_READ: "consistent read", WRITE: "write", WRITE_UNCHANGED: "write unchanged", RESIZE: "resize"}

HELD = (CONSISTENT_READ, WRITE)  # what a subsystem does to the image
UNSHARED = (WRITE, RESIZE)  # what it lets nobody else do

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86-64: type, whence, start, len, pid


class ImageInUse(Exception):
    """another program holds the image in a way that conflicts with serving it"""


def _flock(kind: int, offset: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0)


def _held_by_another(fd: int, offset: int) -> bool:
    """Whether another open file description holds a lock on byte OFFSET (ours never count)."""
    kind = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, offset)))[0]
    return bool(kind != fcntl.F_UNLCK)


def lock_image(fd: int) -> None:
    """Take the subsystem's locks on FD's file, then check nobody conflicts with them.
    ImageInUse (naming the permission, as QEMU would) if somebody does; the caller then closes
    FD, which drops what was taken. Locks first, check second, as QEMU does: of two openers
    racing, at least one sees the other."""
    try:
        for i in HELD:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_RDLCK, PERM_BASE + i))
        for i in UNSHARED:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_RDLCK, SHARED_BASE + i))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):  # somebody holds a write lock there: not QEMU's way
            raise ImageInUse("locked by another program") from None
        raise
    for i in HELD:
        if _held_by_another(fd, SHARED_BASE + i):
            raise ImageInUse(f"another program will not share {NAMES[i]} access (QEMU, qemu-img, tzero serve)")
    for i in UNSHARED:
        if _held_by_another(fd, PERM_BASE + i):
            raise ImageInUse(f"another program has it open for {NAMES[i]} (QEMU, qemu-img, tzero serve)")
