"""Checking a backup end to end, and opening a backup for the commands that read one.

This is the one boundary where the stream layer's FormatError becomes the
BackupFormatError a user sees, as one line that starts with the backup's name:
    backup.tzb: dataset 'b' at offset 1048576: record checksum mismatch
"""

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, NamedTuple, cast

from backupformat import FormatError, StreamReader
from backupformat.chain import check_chain
from common.objectstore import StoreError, is_s3_uri
from controller.errors import BackupFormatError, TzeroError, UsageError, store_error

STDIN = "-"


def backup_label(path: str) -> str:
    """How messages name the backup at PATH."""
    return "stdin" if path == STDIN else path


@contextlib.contextmanager
def opened_backup(path: str, random_access: bool = False) -> Iterator[StreamReader]:
    """Yield a StreamReader on PATH ('-' is stdin, s3://BUCKET/KEY an object), its header
    already checked. An object is read front to back over one GET, or with RANDOM_ACCESS
    by ranged GETs (for the trailer, the index, single records).

    A FormatError raised by the reader, here or in the caller's block, leaves as
    BackupFormatError "PATH: where: reason"; an object store's failure as the error its
    kind calls for (errors.store_error). The file is closed on the way out (stdin is left
    open). Errors that are not about the backup pass unchanged.
    """
    label = backup_label(path)
    f: BinaryIO
    try:
        if path == STDIN:
            f, owned = sys.stdin.buffer, False
        else:
            f, owned = open_file(path, random_access), True
    except StoreError as e:
        raise store_error(e) from None
    try:
        yield StreamReader(f)
    except FormatError as e:
        raise BackupFormatError(f"{label}: {e}") from None
    except StoreError as e:
        raise store_error(e) from None
    finally:
        if owned:
            f.close()


def open_file(path: str, random_access: bool) -> BinaryIO:
    """PATH (a file, or s3://BUCKET/KEY) open for reading; TzeroError if it cannot be opened.
    An object is read front to back over one GET, or with RANDOM_ACCESS by ranged GETs."""
    if is_s3_uri(path):
        from common.objectread import open_object  # boto3 is imported only for objects

        try:
            return cast(BinaryIO, open_object(path, sequential=not random_access))
        except ValueError as e:
            raise UsageError(str(e)) from None
        except StoreError as e:
            raise store_error(e) from None
    try:
        return open(path, "rb")
    except OSError as e:
        raise TzeroError(f"cannot open {path}: {e.strerror}") from None


class Summary(NamedTuple):
    datasets: int
    records: int
    data_bytes: int
    stream_bytes: int
    digest: str


def stream_positions(reader: StreamReader) -> list[int]:
    """Where each dataset starts when the stream's datasets are laid end to end: progress counts
    bytes of that whole, holes included, so it moves evenly and ends at the sum of the sizes."""
    starts, at = [], 0
    for d in reader.header.datasets:
        starts.append(at)
        at += d.size
    return starts


def verify(reader: StreamReader, progress: Callable[[int, str], None] | None = None) -> Summary:
    """Read the whole stream, checking every record, the index, trailer and digest; PROGRESS is
    told after every record how far through the datasets it is (stream_positions).

    Raises FormatError at the first problem; returns only for an intact stream.
    """
    starts = stream_positions(reader)
    for rec in reader.records():
        if progress is not None:
            progress(starts[rec.dataset_index] + rec.offset + len(rec.data),
                     reader.header.datasets[rec.dataset_index].name)
    t = reader.trailer
    assert t is not None, "a stream read to its end has its trailer"
    return Summary(len(reader.header.datasets), t.record_count, t.data_bytes,
                   t.stream_bytes, t.digest)


def verify_chain(readers: Sequence[StreamReader], progress: Callable[[int, str], None] | None = None) -> Summary:
    """Verify every stream of a chain (newest first) whole, then every link with the digests
    just computed (backupformat.chain.check_chain). Returns the newest stream's summary;
    FormatError with `layer` at the first problem. PROGRESS counts the streams' datasets one
    stream after another, the oldest first."""
    summaries: list[Summary] = []
    done = 0
    for i, r in reversed(list(enumerate(readers))):
        total = sum(d.size for d in r.header.datasets)
        told = None if progress is None else (lambda at, name, base=done: progress(base + at, name))
        try:
            summaries.insert(0, verify(r, told))
        except FormatError as e:
            e.layer = i
            raise
        done += total
    check_chain([r.header for r in readers], [s.digest for s in summaries])
    return summaries[0]
