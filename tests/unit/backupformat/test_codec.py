"""Compressed records (codec 1, zstd): round trips, attacks, and a reader without zstandard."""

import io
import struct
import sys

import pytest
import xxhash
import zstandard

from backupformat import (
    CODEC_RAW,
    CODEC_ZSTD,
    Dataset,
    FormatError,
    Header,
    StreamReader,
    StreamWriter,
    parse_compression,
)

TEXT = b"time-zero backups of live block devices " * 1638  # compressible, 65520 bytes
NOISE = b"".join(xxhash.xxh3_128(i.to_bytes(4, "little")).digest() for i in range(4096))  # 64 KiB, incompressible


def build(records, level=3) -> bytes:
    out = io.BytesIO()
    header = Header(tool_version="t", time_zero="2026-11-25T10:00:00+00:00", chunk_size=65536,
                    datasets=[Dataset("a", 1 << 20)])
    w = StreamWriter(out, header, codec=CODEC_ZSTD, level=level)
    for off, data in records:
        w.write(0, off, data)
    w.finish()
    return out.getvalue()


def heads(blob):
    """(codec, length, stored, position) of every record, walked per docs/format.md."""
    hlen = struct.unpack_from("<I", blob, 12)[0]
    pos, found = 32 + hlen, []
    while blob[pos:pos + 4] == b"RECD":
        _, codec, _, _, _, length, _, stored, _ = struct.unpack_from("<4sBBHIIQII", blob, pos)
        found.append((codec, length, stored, pos))
        pos += 48 + stored
    return found


def test_codec_compressible_records_are_zstd_and_incompressible_ones_stay_raw():
    blob = build([(0, TEXT), (65536, NOISE)])
    (c1, n1, s1, p1), (c2, n2, s2, _) = heads(blob)
    assert (c1, n1) == (CODEC_ZSTD, len(TEXT)) and s1 < n1 // 10
    assert (c2, n2, s2) == (CODEC_RAW, len(NOISE), len(NOISE)), "compression never makes a record larger"
    payload = blob[p1 + 32:p1 + 32 + s1]
    assert zstandard.ZstdDecompressor().decompress(payload) == TEXT, "the payload is one plain zstd frame"


def test_codec_round_trip_front_to_back_and_by_index():
    blob = build([(0, TEXT), (65536, NOISE)])
    reader = StreamReader(io.BytesIO(blob))
    assert [(r.offset, r.data) for r in reader.records()] == [(0, TEXT), (65536, NOISE)]
    assert reader.trailer.stored_bytes < reader.trailer.data_bytes
    reader = StreamReader(io.BytesIO(blob))
    index = reader.read_index()
    assert reader.read_data(index.find(0, 1000)) == TEXT
    assert index[0].codec == CODEC_ZSTD and index[0].stored_length < index[0].length


def test_codec_flipped_bit_in_compressed_payload_fails_its_checksum():
    blob = bytearray(build([(0, TEXT)]))
    _, _, _, pos = heads(blob)[0]
    blob[pos + 40] ^= 1
    with pytest.raises(FormatError, match="record checksum mismatch"):
        list(StreamReader(io.BytesIO(bytes(blob))).records())


def recrafted(blob, payload, length):
    """BLOB with its only record replaced by a zstd record of PAYLOAD claiming LENGTH, checksums redone."""
    codec, _, stored, pos = heads(blob)[0]
    head = struct.pack("<4sBBHIIQII", b"RECD", CODEC_ZSTD, 0, 0, 0, length, 0, len(payload), 0)
    rec = head + payload + xxhash.xxh3_128(head + payload).digest()
    return blob[:pos] + rec + blob[pos + 48 + stored:]


@pytest.mark.parametrize("payload, length, message", [
    (b"not a zstd frame at all", len(TEXT), "zstd payload does not decode"),
    (zstandard.ZstdCompressor(write_content_size=True).compress(TEXT[:1000]), 1000 + 512,
     "decodes to 1000 bytes, the record says 1512"),
])
def test_codec_payload_that_does_not_hold_the_record_is_refused_where_it_is(payload, length, message):
    blob = recrafted(build([(0, TEXT)]), payload, length)
    with pytest.raises(FormatError) as e:
        list(StreamReader(io.BytesIO(blob)).records())
    assert message in e.value.reason and (e.value.dataset, e.value.offset) == ("a", 0)


def test_codec_reader_without_zstandard_refuses_naming_the_package(monkeypatch):
    blob = build([(0, TEXT)])
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now fails
    with pytest.raises(FormatError, match="needs the zstandard package"):
        list(StreamReader(io.BytesIO(blob)).records())


@pytest.mark.parametrize("text, expected", [("zstd", (CODEC_ZSTD, 3)), ("zstd:19", (CODEC_ZSTD, 19)),
                                            ("none", (CODEC_RAW, 0))])
def test_codec_compression_option_parses(text, expected):
    assert parse_compression(text) == expected


@pytest.mark.parametrize("text", ["gzip", "zstd:0", "zstd:23", "zstd:x", "none:1", "", "zstd:", "none:", "zstd:\u0661"])
def test_codec_bad_compression_option_is_refused(text):
    with pytest.raises(ValueError):
        parse_compression(text)
