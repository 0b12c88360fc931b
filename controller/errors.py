"""Errors a user can cause or meet, each with its exit status.

Only controller.cli.main catches broadly; everything else raises one of these with a
message that stands on its own as one line on stderr. OS errors are translated where
they happen, naming the operation and the path, so the line says what failed where.

Exit statuses, the same for every command (README and `tzero --help` list them):

    0   success
    1   failed, and running it again as it is will fail again (a target too small, ...)
    2   usage: bad arguments, or refused before anything was done
    3   failed for a reason that may pass: a subsystem or the object store unreachable or busy, a session
        aborted (freeze deadline, lease, side store full, a lost connection); retry later
    4   the backup is damaged, truncated or not a tzero backup (verify failed)
    70  an internal error: a bug in tzero (--debug shows the traceback)
    128+N  stopped by signal N (SIGINT 130, SIGTERM 143, SIGHUP 129), after cleaning up
"""

from common.objectstore import CHANGED, CONFIG, UNREACHABLE, StoreError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_RETRY = 3
EXIT_DAMAGED = 4
EXIT_BUG = 70

EXIT_STATUSES = {
    EXIT_OK: "success",
    EXIT_FAILURE: "failed; retrying as it is will not help",
    EXIT_USAGE: "bad arguments, refused before anything was done",
    EXIT_RETRY: "failed for a reason that may pass (a subsystem or the object store unreachable or busy, "
                "a session aborted): retry",
    EXIT_DAMAGED: "the backup is damaged, truncated or not a tzero backup",
    EXIT_BUG: "internal error (a bug; --debug shows the traceback)",
}
# Not an entry above: 128 + N when signal N (SIGINT, SIGTERM, SIGHUP) stopped the command,
# after it cleaned up (controller/signals.py); `--help` lists it with the others.
SIGNAL_STATUS = "128+N: stopped by signal N (SIGINT 130, SIGTERM 143, SIGHUP 129), after cleaning up"


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
    """a storage subsystem could not be reached, or failed a request."""

    exit_code = EXIT_RETRY


class SessionAborted(TzeroError):
    """the backup session was aborted; no backup was produced."""

    exit_code = EXIT_RETRY


class BackupFormatError(TzeroError):
    """the backup is damaged or not a tzero backup."""

    exit_code = EXIT_DAMAGED


class StoreUnavailable(TzeroError):
    """the object store could not be reached, or failed for a reason that may pass."""

    exit_code = EXIT_RETRY


class RestoreError(TzeroError):
    """the restore failed."""


def os_error(e: OSError, what: str) -> TzeroError:
    """E as one line that names WHAT failed, an operation and its path: "writing the spill
    file /var/tmp/x: no space left on device"."""
    reason = e.strerror or str(e)
    return TzeroError(f"{what}: {reason[:1].lower()}{reason[1:]}")


def store_error(e: StoreError) -> TzeroError:
    """E, an object store's failure, with the exit status its kind calls for: 3 when it may
    pass (unreachable, overloaded, the object replaced while read), 2 for wrong settings,
    1 for the rest (no such bucket or object, access denied)."""
    if e.kind in (UNREACHABLE, CHANGED):
        return StoreUnavailable(str(e))
    if e.kind == CONFIG:
        return UsageError(str(e))
    return TzeroError(str(e))
