"""Where a backup stream goes: a file, standard output, or a stream device.

    a file OUT        written as OUT.partial-XXXXXXXX, this run's own (created O_EXCL, 0600
                      whatever the umask), and renamed to OUT only when complete, fsynced.
                      The run holds OUT's lock (flock on OUT.lock) from before it makes its
                      partial file until after it renamed or removed it: a second run on the
                      same OUT is refused at once (OutputBusy, exit 3: it may pass once the
                      first is done) and touches nothing, so two cron jobs never truncate,
                      delete or rename over each other's work. A run killed outright (SIGKILL,
                      a power cut) leaves its partial file, which may hold a complete backup
                      (killed between its close and its rename): no later run removes it.
    standard output   (-) a pipe or a tape: nothing to rename; a failure is said on stderr
                      while the reader sees a stream with no trailer.
    a stream device   a character device (a tape) or a FIFO named as OUT: written in place,
                      like standard output; never replaced by a file, --force or not.

A block device, a socket or a directory is refused before anything is asked of a subsystem:
a backup is found by its trailer at the end of a file, which a device has not.

Why refuse rather than let both runs finish: the later one would rename over the earlier
one's complete backup (or fail at the end, having held every application's writes for a
freeze and paid a whole copy for nothing). Refused at once, it costs nothing, says why, and
its exit status says to try again later.
"""

import errno
import fcntl
import os
import stat
import sys
from typing import BinaryIO

from common.blockdev import rename_noreplace
from common.fileio import Buffer, create_partial, fsync_dir
from controller.errors import EXIT_RETRY, TzeroError, UsageError, os_error

FILE, STDOUT, STREAM = "file", "standard output", "stream"


class OutputBusy(TzeroError):
    """another tzero backup is writing this output."""

    exit_code = EXIT_RETRY


class BackupOutput:
    def __init__(self, target: str, force: bool):
        # Set at start, never changed.
        self.target = target
        self.force = force
        self.kind = STDOUT if target == "-" else _kind_of(target, force)
        # Main thread only (the stream writer writes through it from the copy loop): set by open.
        self.file: BinaryIO | None = None
        self.partial: str | None = None  # this run's partial file, while it exists (FILE only)
        self._lock: OutputLock | None = None  # held from open until commit or discard (FILE only)
        self._kept = False  # commit could not rename: the complete backup stays at `partial`

    @property
    def to_stdout(self) -> bool:
        return self.kind == STDOUT

    @property
    def label(self) -> str:
        return "standard output" if self.kind == STDOUT else str(self.partial or self.target)

    def open(self) -> None:
        """Make the place the stream goes; for a file, take OUT's lock first (OutputBusy if
        another run holds it)."""
        if self.kind == STDOUT:
            if sys.stdout.isatty():
                raise UsageError("refusing to write a backup to a terminal; redirect standard output or use -o FILE")
            self.file = sys.stdout.buffer
        elif self.kind == STREAM:
            self.file = _open_stream(self.target)
        else:
            self._open_file()

    def _open_file(self) -> None:
        self._lock = OutputLock.take(self.target)
        if os.path.lexists(self.target) and not self.force:  # it may have appeared while we waited
            raise UsageError(f"{self.target} exists; use --force to replace it")
        try:
            fd, self.partial = create_partial(self.target)
        except OSError as e:
            raise os_error(e, f"creating a partial file beside {self.target}") from None
        self.file = os.fdopen(fd, "wb")

    def write(self, buf: Buffer) -> int | None:
        """The stream writer's file: OS errors say where the backup was going."""
        try:
            return self._opened.write(buf)
        except OSError as e:
            raise os_error(e, f"writing the backup to {self.label}") from None

    def flush(self) -> None:
        try:
            self._opened.flush()
            if self.kind == FILE:
                os.fsync(self._opened.fileno())
        except OSError as e:
            raise os_error(e, f"writing the backup to {self.label}") from None

    def commit(self) -> None:
        """Make the complete stream OUT. Without --force, a file that appeared at OUT meanwhile
        (not a tzero run: those wait for the lock) is not replaced; the backup then stays,
        complete, at its partial name, and the error says so."""
        if self.kind != FILE:
            self.flush()
            if self.kind == STREAM:
                try:
                    self._opened.close()  # a FIFO's reader sees the end of the stream
                except OSError as e:
                    raise os_error(e, f"writing the backup to {self.label}") from None
            return
        assert self.partial is not None, "open() made it"
        try:
            self._opened.close()
            if self.force:
                os.replace(self.partial, self.target)
            else:
                rename_noreplace(self.partial, self.target)
        except FileExistsError:
            self._kept = True
            raise TzeroError(f"{self.target} appeared while the backup ran and is not replaced without --force; "
                             f"the complete backup is {self.partial}") from None
        except OSError as e:
            raise os_error(e, f"renaming {self.partial} to {self.target}") from None
        self.partial = None
        try:
            fsync_dir(os.path.dirname(os.path.abspath(self.target)))
        except OSError as e:
            raise os_error(e, f"syncing the directory of {self.target}") from None
        finally:
            self._release()

    def discard(self) -> None:
        """Leave nothing of this run behind: close, remove its partial file (even when closing
        fails again, as on a full disk), give up the lock. Never touches another run's files."""
        if self.file is not None and self.kind != STDOUT:
            try:
                self.file.close()
            except OSError:
                pass  # a full disk fails the close's flush too: the file goes anyway
        if self.kind == STDOUT:
            _quiet_stdout()
        if self.partial is not None and not self._kept:
            try:
                os.unlink(self.partial)
            except FileNotFoundError:
                pass
            self.partial = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def _opened(self) -> BinaryIO:
        assert self.file is not None, "the backup is written only after open()"
        return self.file


def _kind_of(target: str, force: bool) -> str:
    """FILE or STREAM for -o TARGET; UsageError for what cannot take a backup."""
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(parent):
            raise UsageError(f"{parent}: no such directory") from None
        return FILE
    except OSError as e:
        raise UsageError(f"{target}: {e.strerror}") from None
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return STREAM
    if stat.S_ISDIR(mode):
        raise UsageError(f"{target} is a directory; give a file name for the backup")
    if stat.S_ISBLK(mode):
        raise UsageError(f"{target} is a block device: tzero writes backups to files, pipes and character "
                         "devices (a tape), never over a block device")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{target} is neither a file, a pipe nor a character device")
    if not force:
        raise UsageError(f"{target} exists; use --force to replace it")
    return FILE


def _open_stream(target: str) -> BinaryIO:
    """TARGET (a character device or FIFO) opened for writing in place: no O_CREAT, no O_TRUNC,
    and checked again once open, so a file put there meanwhile is never written."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise os_error(e, f"opening {target}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)) or os.isatty(fd):
        os.close(fd)
        raise UsageError(f"{target} is no longer a pipe or a character device, or is a terminal; nothing written")
    return os.fdopen(fd, "wb")


def _quiet_stdout() -> None:
    """After a failed write to standard output (the reader went away), point fd 1 at /dev/null,
    so that the interpreter's own flush at exit has nothing to complain about on stderr."""
    try:
        sys.stdout.flush()
    except OSError:
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class OutputLock:
    """OUT's lock: an exclusive flock on OUT.lock, held by one run from before it makes its
    partial file until after it renamed or removed it. The lock file is removed by its holder
    on release; a run that opened it just before must then find the name taken by another
    file (or gone), so it tries again on the new one: two runs can never both hold OUT."""

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path

    @classmethod
    def take(cls, target: str) -> "OutputLock":
        path = target + ".lock"
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except OSError as e:
                raise os_error(e, f"creating the lock {path}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise OutputBusy(f"{target}: another tzero backup is writing it (it holds {path}); "
                                     "nothing was done, try again once it is over") from None
                raise os_error(e, f"locking {path}") from None
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                return cls(fd, path)
            os.close(fd)  # its holder removed it after we opened it: take the one there now

    def release(self) -> None:
        try:
            os.unlink(self.path)  # while still holding it: see the class docstring
        except FileNotFoundError:
            pass
        os.close(self.fd)
