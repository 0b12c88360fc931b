"""Record codecs: how a record's payload stores its bytes.

    0  raw   the payload is the bytes themselves
    1  zstd  one Zstandard frame that holds the bytes (its content size included)

zstandard is imported only when a zstd record is written or read: raw streams
need nothing beyond xxhash, and a reader without the package refuses a zstd
record by name instead of misreading it. A record whose compressed form would
not be smaller is stored raw, so compression never makes a stream larger by
more than its header says.
"""

import types
from typing import Protocol

# The bytes-like objects the package takes: record data, what a writer writes (collections.abc.Buffer is 3.12's).
Buffer = bytes | bytearray | memoryview

CODEC_RAW = 0
CODEC_ZSTD = 1
CODECS = {CODEC_RAW: "raw", CODEC_ZSTD: "zstd"}
DEFAULT_ZSTD_LEVEL = 3
ZSTD_LEVELS = range(1, 23)


class CodecError(Exception):
    """a payload cannot be decoded (the caller says where)"""


class _Compressor(Protocol):
    """What the encoder uses of a zstandard.ZstdCompressor (the package has no type hints)."""

    def compress(self, data: Buffer, /) -> bytes: ...


def parse_compression(text: str) -> tuple[int, int]:
    """'zstd' or 'zstd:LEVEL' (1-22) -> (CODEC_ZSTD, level); 'none' -> (CODEC_RAW, 0). ValueError otherwise."""
    name, colon, level_text = text.partition(":")
    if name == "none" and not colon:
        return CODEC_RAW, 0
    if name != "zstd":
        raise ValueError(f"{text!r}: the codecs are zstd[:LEVEL] and none")
    if not colon:
        return CODEC_ZSTD, DEFAULT_ZSTD_LEVEL
    if not level_text.isascii() or not level_text.isdigit() or int(level_text) not in ZSTD_LEVELS:
        raise ValueError(f"{text!r}: the zstd level is a whole number from 1 to 22")
    return CODEC_ZSTD, int(level_text)


def _zstandard() -> types.ModuleType:
    try:
        import zstandard
    except ImportError:
        raise CodecError("record codec 1 (zstd) needs the zstandard package, which is not installed") from None
    return zstandard


class Encoder:
    """Encodes payloads with one codec; one per writer (a compressor is not thread-safe)."""

    def __init__(self, codec: int = CODEC_RAW, level: int = DEFAULT_ZSTD_LEVEL) -> None:
        assert codec in CODECS, "parse_compression checks the codec"
        self.codec = codec
        self._compressor: _Compressor | None = None
        if codec == CODEC_ZSTD:
            self._compressor = _zstandard().ZstdCompressor(level=level, write_content_size=True)

    def encode(self, data: Buffer) -> tuple[int, Buffer]:
        """(codec, payload) for DATA: compressed when that is smaller, else raw (DATA itself)."""
        if self._compressor is not None:
            packed = self._compressor.compress(data)
            if len(packed) < len(data):
                return CODEC_ZSTD, packed
        return CODEC_RAW, data


def decode(codec: int, payload: bytes, length: int) -> bytes:
    """The LENGTH bytes PAYLOAD stores with CODEC; CodecError if it does not hold exactly them."""
    if codec == CODEC_RAW:
        return payload
    assert codec == CODEC_ZSTD, "the reader refuses unknown codecs before decoding"
    zstandard = _zstandard()
    try:
        data: bytes = zstandard.ZstdDecompressor().decompress(payload, max_output_size=length)
    except zstandard.ZstdError as e:
        raise CodecError(f"zstd payload does not decode: {e}") from None
    if len(data) != length:
        raise CodecError(f"zstd payload decodes to {len(data)} bytes, the record says {length}")
    return data
