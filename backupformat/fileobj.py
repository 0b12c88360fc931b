"""Reading and writing file objects to the end: the loops a raw file or a pipe needs, since it
may move fewer bytes than asked; and random access that leaves a reader's position alone."""

from typing import Protocol

from backupformat.codec import Buffer
from backupformat.spec import FormatError


class InputFile(Protocol):
    """What a reader uses of a binary file: a buffered or raw file, a pipe, BytesIO. A file that
    cannot seek is read front to back only; read may return None (a raw non-blocking file)."""

    def read(self, size: int, /) -> bytes | None: ...

    def seekable(self) -> bool: ...

    def tell(self) -> int: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


class OutputFile(Protocol):
    """What a writer uses of a binary file: write may take less than all (a raw file) and
    return how much it took, or None for all (an object that does not report)."""

    def write(self, buf: memoryview, /) -> int | None: ...


def is_seekable(f: InputFile) -> bool:
    try:
        return f.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def read_exact(f: InputFile, n: int) -> bytes:
    """Up to N bytes from F: fewer only at end of file. A raw file may return short reads."""
    data = f.read(n)
    if data is None:
        raise OSError("non-blocking input is not supported")
    if len(data) == n or not data:
        return bytes(data)
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class kept_position:
    """Context manager: put F's position back, so random access can interleave with records()."""

    def __init__(self, f: InputFile) -> None:
        self._f = f

    def __enter__(self) -> None:
        if not is_seekable(self._f):
            raise FormatError("reading from the end needs a seekable file", section="trailer")
        self._saved = self._f.tell()

    def __exit__(self, *exc: object) -> None:
        self._f.seek(self._saved)


def write_all(out: OutputFile, buf: Buffer) -> None:
    # Buffered files write everything; a raw file may write less, so loop. None
    # (an object that does not report) is taken as everything written.
    view = memoryview(buf)
    while view.nbytes:
        n = out.write(view)
        if n is None or n >= view.nbytes:
            return
        view = view[n:]
