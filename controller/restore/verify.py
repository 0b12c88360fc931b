"""Checking a backup end to end, and opening a backup for the commands that read one.

This is the one boundary where the stream layer's FormatError becomes the
BackupFormatError a user sees, as one line that starts with the backup's name:
    backup.tzb: dataset 'b' at offset 1048576: record checksum mismatch
"""

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, NamedTuple

from backupformat import FormatError, StreamReader
from backupformat.chain import check_chain
from controller.errors import BackupFormatError, TzeroError

STDIN = "-"


def backup_label(path: str) -> str:
    """How messages name the backup at PATH."""
    return "stdin" if path == STDIN else path


@contextlib.contextmanager
def opened_backup(path: str) -> Iterator[StreamReader]:
    """Yield a StreamReader on PATH ('-' is stdin), its header already checked.

    A FormatError raised by the reader, here or in the caller's block, leaves as
    BackupFormatError "PATH: where: reason". The file is closed on the way out
    (stdin is left open). Errors that are not about the backup pass unchanged.
    """
    label = backup_label(path)
    f: BinaryIO
    if path == STDIN:
        f, owned = sys.stdin.buffer, False
    else:
        try:
            f, owned = open(path, "rb"), True
        except OSError as e:
            raise TzeroError(f"cannot open {path}: {e.strerror}") from None
    try:
        yield StreamReader(f)
    except FormatError as e:
        raise BackupFormatError(f"{label}: {e}") from None
    finally:
        if owned:
            f.close()


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
