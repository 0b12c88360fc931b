"""Where a backup stream goes: a file, written as FILE.partial and renamed only when
complete, or standard output (a pipe or tape: nothing to rename, and a failure is
said on stderr while the reader sees a stream with no trailer)."""

import os
import sys
from typing import BinaryIO

from common.fileio import Buffer
from controller.errors import UsageError, os_error


class BackupOutput:
    def __init__(self, target: str, force: bool):
        # Set at start, never changed.
        self.target = target
        self.to_stdout = target == "-"
        self.partial = None if self.to_stdout else target + ".partial"  # None exactly when to_stdout
        # Main thread only (the stream writer writes through it from the copy loop): set by open.
        self.file: BinaryIO | None = None
        if not self.to_stdout:
            if os.path.isdir(target):
                raise UsageError(f"{target} is a directory; give a file name for the backup")
            if os.path.exists(target) and not force:
                raise UsageError(f"{target} exists; use --force to replace it")
            parent = os.path.dirname(os.path.abspath(target))
            if not os.path.isdir(parent):
                raise UsageError(f"{parent}: no such directory")

    @property
    def label(self) -> str:
        return "standard output" if self.to_stdout else str(self.partial)

    def open(self) -> None:
        if self.partial is None:
            if sys.stdout.isatty():
                raise UsageError("refusing to write a backup to a terminal; redirect standard output or use -o FILE")
            self.file = sys.stdout.buffer
        else:
            try:
                self.file = open(self.partial, "wb")
            except OSError as e:
                raise os_error(e, f"creating {self.partial}") from None

    def write(self, buf: Buffer) -> int | None:
        """The stream writer's file: OS errors say where the backup was going."""
        try:
            return self._opened.write(buf)
        except OSError as e:
            raise os_error(e, f"writing the backup to {self.label}") from None

    def flush(self) -> None:
        try:
            self._opened.flush()
            if not self.to_stdout:
                os.fsync(self._opened.fileno())
        except OSError as e:
            raise os_error(e, f"writing the backup to {self.label}") from None

    def commit(self) -> None:
        if self.partial is not None:
            try:
                self._opened.close()
                os.replace(self.partial, self.target)
            except OSError as e:
                raise os_error(e, f"renaming {self.partial} to {self.target}") from None

    def discard(self) -> None:
        """Leave nothing half-written behind: remove the partial file."""
        if self.partial is None or self.file is None:
            return
        self.file.close()
        try:
            os.unlink(self.partial)
        except FileNotFoundError:
            pass

    @property
    def _opened(self) -> BinaryIO:
        assert self.file is not None, "the backup is written only after open()"
        return self.file
