"""Writing an incremental backup's chain as one full backup.

The image the chain holds at the incremental's time zero (backupformat.chain.merged: each
byte from the newest backup that holds it) goes into a new full stream with the
incremental's time zero, datasets and header extra (its change-tracking generations among
them, so the result can be the base of the next incremental), records coalesced up to
RECORD_BYTES. The trailer is written only once every backup of the chain and every link
verified: a stream cut short of its trailer is never mistaken for a backup.
"""

from collections.abc import Sequence

from backupformat import Dataset, Header, StreamReader, StreamWriter
from backupformat.chain import merged
from backupformat.fileobj import OutputFile
from backupformat.writer import StreamSummary
from controller import __version__

RECORD_BYTES = 1 << 20


def consolidate(readers: Sequence[StreamReader], labels: Sequence[str], out: OutputFile, codec: int,
                level: int, compression: str) -> StreamSummary:
    """Write the chain READERS (newest first; LABELS name them) to OUT as one full stream with
    CODEC at LEVEL (COMPRESSION: how the user said it). FormatError (with `layer`) at the first
    problem of any of them, before the trailer is written."""
    top = readers[0].header
    extra = {**top.extra, "compression": compression, "consolidated_from": list(reversed(labels))}
    header = Header(tool_version=__version__, time_zero=top.time_zero, chunk_size=top.chunk_size,
                    datasets=[Dataset(d.name, d.size) for d in top.datasets], extra=extra)
    writer = StreamWriter(out, header, codec, level)
    pending = bytearray()  # the record being gathered: dataset `ds`, from `start`
    ds = start = 0
    for rec in merged(readers):
        if pending and (rec.dataset_index != ds or rec.offset != start + len(pending)
                        or len(pending) + len(rec.data) > RECORD_BYTES):
            writer.write(ds, start, pending)
            pending = bytearray()
        if not pending:
            ds, start = rec.dataset_index, rec.offset
        pending += rec.data
    if pending:
        writer.write(ds, start, pending)
    return writer.finish()
