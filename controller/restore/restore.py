"""Restoring datasets from a backup stream: the loop that knows no kind of target.

A target (targets.py) receives its dataset's records in ascending order (write), is
told when the records are over (finish), and only after the whole stream (index,
trailer, digest) has verified is it made visible (commit); on any failure every target
is aborted and one error says what happened to them.
"""

import time
from collections.abc import Callable, Iterable

from backupformat import FormatError, Record, StreamReader
from common.objectstore import StoreError
from controller import signals
from controller.errors import BackupFormatError, RestoreError, TzeroError, store_error
from controller.progress import WaitClock
from controller.restore.targets import Target, abort_all
from controller.restore.verify import stream_positions

# Told, after each record, how far through the stream's datasets it is: (bytes, dataset name).
ProgressCallback = Callable[[int, str], None]


def restore(reader: StreamReader, label: str, plan: dict[int, Target], progress: ProgressCallback | None = None,
            target_wait: WaitClock | None = None, records: Iterable[Record] | None = None,
            describe: Callable[[FormatError], TzeroError] | None = None) -> list[Target]:
    """Write the records of every dataset in PLAN (dataset index -> target), verify
    the whole stream, then commit every target. Returns the targets in order.
    PROGRESS is told after every record; TARGET_WAIT gets the time spent in the targets' writes.
    RECORDS: what to write instead of READER's own records, verified as they are iterated (an
    incremental's chain, backupformat.chain.merged: data only, zeros are gaps).

    On failure every target is aborted and one error leaves: BackupFormatError
    for a damaged backup (DESCRIBE makes it from the FormatError; by default LABEL
    names it), RestoreError for a target; for an in-place target already touched,
    RestoreError saying it is incomplete.
    """
    starts = stream_positions(reader)
    names = [d.name for d in reader.header.datasets]
    waited = target_wait or WaitClock("")
    describe = describe or (lambda e: BackupFormatError(f"{label}: {e}"))
    try:
        for rec in reader.records() if records is None else records:
            target = plan.get(rec.dataset_index)
            if target is not None:
                started = time.monotonic()
                target.write(rec.offset, rec.data)
                waited.seconds += time.monotonic() - started
            if progress is not None:
                progress(starts[rec.dataset_index] + rec.offset + len(rec.data), names[rec.dataset_index])
        for target in plan.values():
            target.finish()
    except BaseException as e:
        abort_all(plan)
        raise _failure(e, label, plan, describe) from None
    try:
        for target in plan.values():
            target.commit()
    except BaseException as e:
        abort_all(plan)
        raise _failure(e, label, plan, describe) from None
    return list(plan.values())


def _failure(e: BaseException, label: str, plan: dict[int, Target],
             describe: Callable[[FormatError], TzeroError]) -> BaseException:
    """The one error to report for E, given what the targets went through."""
    error: BaseException
    if isinstance(e, FormatError):
        error = describe(e)
        reason = error.message
    elif isinstance(e, TzeroError):
        reason, error = e.message, e
    elif isinstance(e, StoreError):
        error = store_error(e)
        reason = error.message
    elif isinstance(e, KeyboardInterrupt):  # SIGINT, SIGTERM, SIGHUP (controller/signals.py)
        reason, error = str(e) or "interrupted", e
    elif isinstance(e, OSError):
        reason = f"reading {label}: {e.strerror or e}"
        error = BackupFormatError(reason)
    else:
        return e  # a bug: let the traceback show
    for target in plan.values():
        if target.touched and not target.atomic:
            incomplete = RestoreError(f"restore of {target.dataset.name!r} onto {target.label} "
                                      f"is incomplete: {reason}")
            if isinstance(e, KeyboardInterrupt):
                incomplete.exit_code = signals.exit_status(e)  # stopped by a signal, and says so
            return incomplete
    return error
