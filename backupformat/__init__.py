"""The tzero backup stream: its byte layout, a writer and a reader.

Layering: this package is the bottom of the stack. It imports only the standard
library, xxhash and (for compressed records, lazily) zstandard; it knows nothing
of sessions, exports or the CLI, and raises its own FormatError; the commands
above translate that into their errors. The full specification is docs/format.md.

    spec     the byte layout, the header and the ordering rules
    codec    how a record's payload stores its bytes (raw, zstd)
    writer   StreamWriter: front to back, never seeking, so a stream can go down a pipe
    reader   StreamReader: front to back from anything (records()), or, on a seekable
             file, from the end: trailer, then index, then any record
    index    Index: the records by (dataset, offset), for random access
    fileobj  the file objects a reader and a writer take, and the loops short reads and writes need
    view     one dataset of a backup file read at any offset (what `tzero serve-backup` serves),
             over the chain of bases of an incremental backup
    chain    an incremental backup's chain checked link by link and read as one image
"""

from backupformat.codec import CODEC_RAW, CODEC_ZSTD, CODECS, parse_compression
from backupformat.index import Index
from backupformat.reader import StreamReader
from backupformat.spec import (
    CHECKSUM,
    END_MAGIC,
    FORMAT_VERSION,
    INCREMENTAL_VERSION,
    MAGIC,
    MAX_DATASET_SIZE,
    MAX_HEADER_LENGTH,
    MAX_RECORD_LENGTH,
    SUPPORTED_VERSIONS,
    TRAILER_SIZE,
    Base,
    Dataset,
    FormatError,
    Header,
    IndexEntry,
    Record,
    Trailer,
    dataset_name_problem,
)
from backupformat.writer import StreamWriter

__all__ = [
    "CHECKSUM", "CODECS", "CODEC_RAW", "CODEC_ZSTD", "END_MAGIC", "FORMAT_VERSION", "INCREMENTAL_VERSION", "MAGIC",
    "MAX_DATASET_SIZE", "Base",
    "MAX_HEADER_LENGTH", "MAX_RECORD_LENGTH", "SUPPORTED_VERSIONS", "TRAILER_SIZE", "Dataset", "FormatError",
    "Header", "Index", "IndexEntry", "Record", "StreamReader", "StreamWriter", "Trailer", "dataset_name_problem",
    "parse_compression",
]
