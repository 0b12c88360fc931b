"""Chains: an incremental stream over its base, down to a full stream, read as one image.

A chain is a list of streams, newest first: each but the last is incremental (version 3)
and names the next one as its base (file name, stream digest, time zero); the last is a
full stream. A byte of the image comes from the newest stream with a record over it (a
zero record gives zeros); where none has one, it is zero (a full stream's hole).

    check_chain   the links as far as headers and trailers tell: datasets, time zero, digest
    check_link    one of them
    merged        the image front to back from every stream read at once, each record read
                  once and every stream read to its end, so each one's own checks run

Finding the streams (by the file names the links record) is the caller's business: here
they are given. Imports nothing beyond this package.
"""

from collections.abc import Iterator, Sequence

from backupformat.reader import StreamReader
from backupformat.spec import FormatError, Header, Record


def check_chain(headers: Sequence[Header], digests: Sequence[str | None]) -> None:
    """FormatError (with `layer`, the index of the stream at fault) unless HEADERS (newest first)
    form a chain: each but the last incremental, naming the next (check_link); the last full.
    DIGESTS[i] is stream i's digest when known (a trailer read, or the whole stream)."""
    for i, h in enumerate(headers[:-1]):
        if h.base is None:
            raise _at(i, "is a full backup, yet more backups follow it in the chain")
        check_link(h, headers[i + 1], digests[i + 1], i)
    if headers and headers[-1].base is not None:
        raise _at(len(headers) - 1, f"is incremental, and its base {headers[-1].base.file} is not in the chain")


def check_link(child: Header, base: Header, base_digest: str | None, layer: int) -> None:
    """FormatError (about stream LAYER + 1, the base) unless BASE is the stream the incremental
    CHILD (stream LAYER) recorded as its base: its digest (BASE_DIGEST, when known), its time
    zero, its datasets."""
    link = child.base
    assert link is not None, "only an incremental has a base"
    if base_digest is not None and base_digest != link.digest:
        raise _at(layer + 1, f"is not the base the next backup recorded: its stream digest is {base_digest}, "
                             f"expected {link.digest} (replaced or altered)")
    if base.time_zero != link.time_zero:
        raise _at(layer + 1, f"is not the base the next backup recorded: its time zero is {base.time_zero}, "
                             f"expected {link.time_zero}")
    if [tuple(d) for d in base.datasets] != [tuple(d) for d in child.datasets]:
        raise _at(layer + 1, "holds other datasets than the incremental backup over it")


def merged(readers: Sequence[StreamReader]) -> Iterator[Record]:
    """The chain READERS (newest first, check_chain passed on their headers) as one image: its
    non-zero pieces in stream order, each a Record whose data is valid until the next one. Zeros
    (zero records, holes of the full stream) are left out, as a full stream leaves them out.

    Every stream is read to its end and verified; then every link's digest is compared with
    the digest computed over the whole base. FormatError (with `layer`) at the first problem."""
    layers = [r.records() for r in readers]
    heads = [_next(i, it) for i, it in enumerate(layers)]
    pos = (0, 0)  # (dataset, offset): everything before it is out
    while True:
        for i, it in enumerate(layers):
            while (h := heads[i]) is not None and (h.dataset_index, h.offset + h.length) <= pos:
                heads[i] = _next(i, it)
        top = next((i for i, h in enumerate(heads) if h is not None and (h.dataset_index, h.offset) <= pos), None)
        if top is None:
            starts = [(h.dataset_index, h.offset) for h in heads if h is not None]
            if not starts:
                break
            pos = min(starts)
            continue
        h = heads[top]
        assert h is not None, "the newest record over pos"
        end = h.offset + h.length  # up to the end of this record, or the next newer record's start
        for newer in heads[:top]:
            if newer is not None and newer.dataset_index == h.dataset_index:
                end = min(end, newer.offset)
        if not h.zeros:
            yield Record(h.dataset_index, h.dataset, pos[1], memoryview(h.data)[pos[1] - h.offset:end - h.offset])
        pos = (h.dataset_index, end)
    for i, r in enumerate(readers[:-1]):
        below = readers[i + 1].trailer
        assert below is not None and r.header.base is not None, "read to the end, checked by check_chain"
        if below.digest != r.header.base.digest:
            raise _at(i + 1, f"is not the base the next backup recorded: its stream digest is {below.digest}, "
                             f"expected {r.header.base.digest} (replaced or altered)")


def _next(layer: int, records: Iterator[Record]) -> Record | None:
    try:
        return next(records, None)
    except FormatError as e:
        e.layer = layer
        raise


def _at(layer: int, reason: str) -> FormatError:
    e = FormatError(reason, section="chain")
    e.layer = layer
    return e
