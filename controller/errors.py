"""Errors a user can cause or meet, each with its exit status.

Only controller.cli.main catches broadly; everything else raises one of these with a
message that stands on its own as one line on stderr.
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class TzeroError(Exception):
    """tzero failed."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str | None = None):
        super().__init__(message or self.__doc__)

    @property
    def message(self) -> str:
        return str(self)


class UsageError(TzeroError):
    """bad arguments."""

    exit_code = EXIT_USAGE


class SubsystemError(TzeroError):
    """a storage subsystem refused or failed a request."""


class SessionAborted(TzeroError):
    """the backup session was aborted; no backup was produced."""


class BackupFormatError(TzeroError):
    """the backup is damaged or not a tzero backup."""


class RestoreError(TzeroError):
    """the restore failed."""
