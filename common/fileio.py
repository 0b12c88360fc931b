"""Positional file I/O that never stops short, and the files tzero makes for itself.

Every loop here exists because a pread/pwrite may move fewer bytes than asked (a signal,
a pipe, a file system's own limit); callers get all or an OSError, never a short result.
"""

import errno
import os
import secrets
import tempfile

# The bytes-like objects the functions here take (collections.abc.Buffer is 3.12's).
Buffer = bytes | bytearray | memoryview
WritableBuffer = bytearray | memoryview  # what a read may fill

ZEROS = memoryview(bytes(1 << 20))  # read-only: what zero_fill writes when nothing cheaper works
PRIVATE = 0o600  # disk images and backups hold whole disks: owner only, whatever the umask
PARTIAL_INFIX = ".partial-"  # PATH.partial-XXXXXXXX: one run's file on its way to become PATH


def read_fully(fd: int, buf: WritableBuffer, offset: int, name: str) -> None:
    """Fill BUF from FD at OFFSET; OSError(EIO) naming NAME if the file ends first."""
    done = os.preadv(fd, (buf,), offset)
    if done == len(buf):
        return  # the common case, one system call (the plugin reads every request this way)
    view = memoryview(buf).cast("B")
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"{name}: unexpected end at offset {offset + done}")
        done += n


def write_all(fd: int, buf: Buffer, offset: int) -> None:
    """Write all of BUF to FD at OFFSET."""
    done = os.pwrite(fd, buf, offset)
    if done == len(buf):
        return  # the common case, one system call
    view = memoryview(buf).cast("B")
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def zero_fill(fd: int, offset: int, length: int) -> None:
    """Write LENGTH zero bytes to FD at OFFSET, a megabyte at a time."""
    end = offset + length
    while offset < end:
        n = min(len(ZEROS), end - offset)
        write_all(fd, ZEROS[:n], offset)
        offset += n


def unlinked_scratch_file(directory: str | None, prefix: str) -> int:
    """A new read-write file in DIRECTORY (None: the system's temp dir), 0600 and already
    unlinked: whatever happens to the process, nothing is left behind. Returns its fd."""
    fd, path = tempfile.mkstemp(prefix=prefix, dir=directory)
    os.unlink(path)
    return fd


def create_private(path: str, exclusive: bool = True) -> int:
    """Open PATH for writing as a new file with mode 0600 whatever the umask; with EXCLUSIVE,
    FileExistsError if it exists (so two runs never share one file). Returns the fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)  # O_CREAT's mode is masked by the umask; a reused file keeps its own
    except OSError:
        os.close(fd)
        raise
    return fd


def create_partial(path: str) -> tuple[int, str]:
    """A new private file beside PATH for one run to write PATH in, under a name of its own:
    PATH.partial-XXXXXXXX, created O_EXCL, so no two runs ever share one, and no run can
    truncate, remove or rename another's. Returns (fd, its path)."""
    while True:
        partial = f"{path}{PARTIAL_INFIX}{secrets.token_hex(4)}"
        try:
            return create_private(partial), partial
        except FileExistsError:
            continue  # 2^-32 per try: another run's name


def is_partial_of(name: str, path_name: str) -> bool:
    """Whether file NAME (in PATH's directory) is a partial file of PATH_NAME (create_partial's)."""
    rest = name.removeprefix(path_name + PARTIAL_INFIX)
    return rest != name and len(rest) == 8 and all(c in "0123456789abcdef" for c in rest)


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in directory PATH durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
