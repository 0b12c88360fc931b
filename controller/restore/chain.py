"""Finding an incremental backup's chain: its base, that one's base, down to a full backup.

A link records its base's file name and stream digest. The base is looked up beside the
incremental (BackupSource.sibling: "the backup named X next to this one"), unless a file
given with --base has that digest. Where the backups live is behind BackupSource: local
files (LocalBackup), or objects in a store, whose bases are the objects beside them under
the same key prefix (s3source.ObjectBackup).

Each link is checked as it is found, from what the base's header and trailer say (its
datasets, its time zero, the digest in its trailer): a missing or replaced base is one line
naming it before anything is written. A base altered in place with its trailer left alone
shows only when the whole of it is read: merged() and verify compare every link's digest
with the one computed over the whole base, and restore commits nothing before that.
"""

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from backupformat import FormatError, StreamReader
from backupformat.chain import check_link
from common.objectstore import is_s3_uri
from controller.errors import BackupFormatError, TzeroError, UsageError

STDIN = "-"
MAX_CHAIN = 10000  # links followed before a chain is called a loop


class BackupSource(Protocol):
    """Where one backup is read from."""

    path: str  # as the user gave it: a file, "-", or an s3:// URI
    label: str  # how messages name it
    seekable: bool  # a file (its trailer can be read first), not a pipe

    def open(self) -> BinaryIO:
        """The backup's bytes from its first; TzeroError if it cannot be opened."""
        ...

    def sibling(self, name: str) -> "BackupSource | None":
        """The backup named NAME next to this one, or None if there is none."""
        ...


class LocalBackup:
    """A backup file, or standard input ("-"), whose siblings are in the current directory."""

    def __init__(self, path: str):
        # Set at start, never changed.
        self.path = path
        self.label = "stdin" if path == STDIN else path
        self.seekable = path != STDIN

    def open(self) -> BinaryIO:
        if self.path == STDIN:
            return sys.stdin.buffer
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise TzeroError(f"cannot open {self.path}: {e.strerror}") from None

    def sibling(self, name: str) -> "LocalBackup | None":
        folder = "." if self.path == STDIN else os.path.dirname(self.path)
        path = os.path.join(folder, name)
        return LocalBackup(path) if os.path.isfile(path) else None


def source_for(path: str, random_access: bool = False) -> BackupSource:
    """The backup at PATH: a file, standard input ("-"), or an object (s3://), read front to
    back unless RANDOM_ACCESS (a file can always seek)."""
    if is_s3_uri(path):
        from controller.restore.s3source import ObjectBackup  # boto3 only for objects

        return ObjectBackup(path, random_access)
    return LocalBackup(path)


@dataclass
class OpenedChain:
    """A backup and its bases, newest first, open and with headers checked."""

    sources: list[BackupSource] = field(default_factory=list)
    readers: list[StreamReader] = field(default_factory=list)
    _files: list[tuple[BinaryIO, bool]] = field(default_factory=list)  # (file, ours to close)

    @property
    def top(self) -> StreamReader:
        return self.readers[0]

    def error(self, e: FormatError) -> BackupFormatError:
        """E as the one line a user sees, naming the backup of the chain it is about."""
        label = self.sources[e.layer or 0].label
        where = e.reason if e.section == "chain" else str(e)
        return BackupFormatError(f"{label}: {where}")

    def _add(self, source: BackupSource) -> StreamReader:
        f = source.open()
        self._files.append((f, f is not sys.stdin.buffer))
        self.sources.append(source)
        try:
            reader = StreamReader(f)
        except FormatError as e:
            e.layer = len(self.sources) - 1
            raise
        self.readers.append(reader)
        return reader

    def close(self) -> None:
        for f, owned in self._files:
            if owned:
                f.close()


@contextlib.contextmanager
def opened_chain(path: str, bases: list[str] | None = None, top: StreamReader | None = None,
                 random_access: bool = False) -> Iterator[OpenedChain]:
    """Yield the backup at PATH ("-": stdin, or s3://BUCKET/KEY) and its chain of bases, open;
    BASES are backups to take bases from (matched by digest) before looking beside it. TOP:
    PATH already open (its caller closes it). RANDOM_ACCESS: an object at PATH is read by
    ranged GETs (its trailer, its index), not front to back; bases always are. A FormatError
    in the caller's block leaves as a BackupFormatError naming the backup it is about."""
    chain = OpenedChain()
    try:
        try:
            source = source_for(path, random_access)
            if top is None:
                top = chain._add(source)
            else:
                chain.sources.append(source)
                chain.readers.append(top)
            _resolve(chain, [source_for(b, random_access=True) for b in bases or []])
            yield chain
        except FormatError as e:
            raise chain.error(e) from None
    finally:
        chain.close()


def _resolve(chain: OpenedChain, given: list[BackupSource]) -> None:
    by_digest = _digests(given)
    used: set[str] = set()
    top, reader = chain.sources[0], chain.readers[0]
    while reader.header.base is not None:
        if len(chain.readers) > MAX_CHAIN:
            raise BackupFormatError(f"{top.label}: its chain of bases is longer than {MAX_CHAIN} (a loop?)")
        link = reader.header.base
        child = chain.sources[-1]
        source = by_digest.get(link.digest) or child.sibling(link.file)
        if source is None:
            raise BackupFormatError(f"{child.label}: its base {link.file} is missing (not beside it; "
                                    "give it with --base FILE)")
        used.add(link.digest)
        reader = chain._add(source)
        layer = len(chain.readers) - 2
        check_link(chain.readers[layer].header, reader.header, _trailer_digest(reader, source, layer + 1), layer)
        _check_no_loop(chain)
    unused = [s.label for d, s in by_digest.items() if d not in used]
    if unused:
        raise UsageError(f"--base {unused[0]} is not a base of {top.label}")


def _trailer_digest(reader: StreamReader, source: BackupSource, layer: int) -> str | None:
    if not source.seekable:
        return None
    try:
        return reader.read_trailer().digest
    except FormatError as e:
        e.layer = layer
        raise


def _digests(given: list[BackupSource]) -> dict[str, BackupSource]:
    """The --base files by the digests their trailers say."""
    found: dict[str, BackupSource] = {}
    for source in given:
        if not source.seekable:
            raise UsageError("--base takes backup files, not standard input")
        f = source.open()
        try:
            found[StreamReader(f).read_trailer().digest] = source
        except FormatError as e:
            raise BackupFormatError(f"{source.label}: {e}") from None
        finally:
            f.close()
    return found


def _check_no_loop(chain: OpenedChain) -> None:
    newest = chain.readers[-1].header.base
    if newest is not None and any(r.header.base == newest for r in chain.readers[:-1]):
        raise BackupFormatError(f"{chain.sources[-1].label}: its chain of bases loops back on itself")
