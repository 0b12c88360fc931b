"""The backup stream format: round trips, reading from the end, and attacks on every part."""

import array
import io
import os
import struct
import threading

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from backupformat import (
    FORMAT_VERSION,
    MAGIC,
    Dataset,
    FormatError,
    Header,
    StreamReader,
    StreamWriter,
)

TIME_ZERO = "2026-11-25T10:00:00.123456+00:00"


def header(*datasets, chunk_size=65536, extra=None, version=FORMAT_VERSION):
    return Header(tool_version="0.1.0", time_zero=TIME_ZERO, chunk_size=chunk_size,
                  datasets=[Dataset(n, s) for n, s in datasets], extra=extra or {}, format_version=version)


# Two datasets, holes in both, a short last record in the one whose size is not
# chunk-aligned, and an empty third dataset.
DATASETS = (("a", 256 << 10), ("b", 100_000), ("empty", 0))
RECORDS = [
    (0, 0, b"\x01" * 65536),
    (0, 131072, bytes(range(256)) * 512),  # 131072..262144: a hole before it
    (1, 65536, b"\x02" * (100_000 - 65536)),  # ends at the unaligned dataset end
]


def build(records=RECORDS, datasets=DATASETS, **kw) -> bytes:
    out = io.BytesIO()
    w = StreamWriter(out, header(*datasets, **kw))
    for ds, off, data in records:
        w.write(ds, off, data)
    summary = w.finish()
    blob = out.getvalue()
    assert summary["bytes"] == len(blob) == w.bytes_written
    return blob


def read_all(blob: bytes):
    r = StreamReader(io.BytesIO(blob))
    return [(rec.dataset_index, rec.offset, rec.data) for rec in r.records()], r


def fail(blob: bytes) -> FormatError:
    with pytest.raises(FormatError) as e:
        read_all(blob)
    return e.value


def record_positions(blob):
    """Byte positions of the record heads, from the index."""
    return [e.position for e in StreamReader(io.BytesIO(blob)).read_index()]


def flip(blob, pos, mask=0x01):
    b = bytearray(blob)
    b[pos] ^= mask
    return bytes(b)


# -- the layout, decoded by a second implementation written from docs/format.md --

def decode_per_spec(blob):
    """An independent reader: struct formats typed from the spec, not imported."""
    assert blob[:8] == b"\x89TZB\r\n\x1a\n"
    version, hlen = struct.unpack_from("<II", blob, 8)
    body = blob[16:16 + hlen]
    assert xxhash.xxh3_128(blob[:16 + hlen]).digest() == blob[16 + hlen:32 + hlen]
    pos, records = 32 + hlen, []
    digested = bytearray(blob[:pos])  # version 2: the digest leaves record payloads out
    while blob[pos:pos + 4] == b"RECD":
        tag, codec, flags, _, ds, length, off, stored, _ = struct.unpack_from("<4sBBHIIQII", blob, pos)
        payload = blob[pos + 32:pos + 32 + stored]
        digested += blob[pos:pos + 32] + (payload if version == 1 else b"") + blob[pos + 32 + stored:pos + 48 + stored]
        check = blob[pos + 32 + stored:pos + 48 + stored]
        assert xxhash.xxh3_128(blob[pos:pos + 32 + stored]).digest() == check
        records.append((ds, off, payload, pos))
        pos += 48 + stored
    index_pos = pos
    tag, _, count = struct.unpack_from("<4sIQ", blob, pos)
    assert tag == b"INDX" and count == len(records)
    entries = [struct.unpack_from("<IBBHQIIQ", blob, pos + 16 + 32 * i) for i in range(count)]
    assert [(e[0], e[4], e[7]) for e in entries] == [(r[0], r[1], r[3]) for r in records]
    pos += 16 + 32 * count
    assert xxhash.xxh3_128(blob[index_pos:pos]).digest() == blob[pos:pos + 16]
    pos += 16
    tag, _, ipos, n, data_bytes, stored_bytes = struct.unpack_from("<4sIQQQQ", blob, pos)
    assert (tag, ipos, n) == (b"TRLR", index_pos, count)
    assert xxhash.xxh3_128(blob[pos:pos + 40]).digest() == blob[pos + 40:pos + 56]
    digested += blob[index_pos:pos + 56]
    assert xxhash.xxh3_128(bytes(digested)).digest() == blob[pos + 56:pos + 72]
    assert blob[pos + 72:] == b"\x89TZE\r\n\x1a\n"
    return version, body, [(r[0], r[1], r[2]) for r in records]


def test_stream_layout_decoded_from_spec_matches_written_records():
    version, body, records = decode_per_spec(build())
    assert version == FORMAT_VERSION == 2
    assert b'"checksum":"xxh3-128"' in body
    assert records == RECORDS


def test_stream_version_1_digest_hashes_payloads_and_still_reads_back():
    blob = build(version=1)
    version, body, records = decode_per_spec(blob)
    assert version == 1 and b'"format_version":1' in body and records == RECORDS
    assert read_all(blob)[0] == RECORDS


def test_stream_version_2_payload_flip_is_still_caught_by_its_record_check():
    blob = build()
    pos = record_positions(blob)[0] + 32  # first payload byte: not in the version 2 digest
    with pytest.raises(FormatError, match="record checksum mismatch"):
        read_all(flip(blob, pos))


def test_stream_trailer_is_80_bytes_ending_in_end_magic():
    blob = build()
    trailer = StreamReader(io.BytesIO(blob)).read_trailer()
    assert trailer.stream_bytes == len(blob)
    assert len(blob) - trailer.index_position == 16 + 32 * len(RECORDS) + 16 + 80


# -- round trips ------------------------------------------------------------------

def test_stream_round_trip_several_datasets_yields_same_records():
    records, r = read_all(build())
    assert records == RECORDS
    assert [d.name for d in r.header.datasets] == ["a", "b", "empty"]
    assert r.header.time_zero == TIME_ZERO and r.header.chunk_size == 65536


def test_stream_round_trip_summary_matches_trailer():
    out = io.BytesIO()
    w = StreamWriter(out, header(*DATASETS))
    for rec in RECORDS:
        w.write(*rec)
    summary = w.finish()
    _, r = read_all(out.getvalue())
    assert summary == dict(bytes=r.trailer.stream_bytes, records=3,
                           data_bytes=sum(len(d) for *_, d in RECORDS),
                           stored_bytes=r.trailer.stored_bytes, digest=r.trailer.digest)


def test_stream_round_trip_no_records_reads_back_empty():
    records, r = read_all(build(records=[]))
    assert records == [] and r.trailer.record_count == 0


def test_stream_round_trip_no_datasets_reads_back_empty():
    records, r = read_all(build(records=[], datasets=()))
    assert records == [] and r.header.datasets == []


def test_stream_header_extra_and_unicode_names_survive():
    blob = build(records=[], datasets=(("données", 512),), extra={"spec": {"x": [1, 2]}})
    _, r = read_all(blob)
    assert r.header.datasets == [Dataset("données", 512)]
    assert r.header.extra == {"spec": {"x": [1, 2]}}


def test_stream_through_pipe_reads_front_to_back():
    rfd, wfd = os.pipe()

    def produce():
        with open(wfd, "wb") as out:
            w = StreamWriter(out, header(*DATASETS))
            for rec in RECORDS:
                w.write(*rec)
            w.finish()

    t = threading.Thread(target=produce)
    t.start()
    with open(rfd, "rb") as f:
        r = StreamReader(f)
        got = [(x.dataset_index, x.offset, x.data) for x in r.records()]
    t.join()
    assert got == RECORDS and r.trailer.record_count == 3


class Trickle(io.RawIOBase):
    """A raw file that moves at most 7 bytes per call, like a slow pipe."""

    def __init__(self, data=b""):
        self.buf = bytearray(data)
        self.pos = 0

    def writable(self):
        return True

    def readable(self):
        return True

    def write(self, b):
        b = bytes(b)[:7]
        self.buf += b
        return len(b)

    def readinto(self, b):
        n = min(7, len(b), len(self.buf) - self.pos)
        b[:n] = self.buf[self.pos:self.pos + n]
        self.pos += n
        return n


def test_stream_short_writes_and_reads_still_round_trip():
    out = Trickle()
    w = StreamWriter(out, header(*DATASETS))
    for rec in RECORDS:
        w.write(*rec)
    w.finish()
    assert bytes(out.buf) == build()
    r = StreamReader(Trickle(out.buf))
    assert [(x.dataset_index, x.offset, x.data) for x in r.records()] == RECORDS


def test_stream_writer_memoryview_of_wider_items_counts_bytes():
    words = array.array("I", range(128))  # 512 bytes as 128 items
    out = io.BytesIO()
    w = StreamWriter(out, header(("a", 4096)))
    w.write(0, 512, memoryview(words))
    w.finish()
    records, _ = read_all(out.getvalue())
    assert records == [(0, 512, words.tobytes())]


@st.composite
def streams(draw):
    datasets, records = [], []
    for i in range(draw(st.integers(0, 4))):
        size = draw(st.integers(0, 20_000))
        datasets.append((f"d{i}", size))
        offset = 0
        while offset < size and draw(st.booleans()):
            start = offset + draw(st.integers(0, 3000))
            if start >= size:
                break
            length = draw(st.integers(1, min(5000, size - start)))
            records.append((i, start, draw(st.binary(min_size=length, max_size=length))))
            offset = start + length
    return datasets, records


@settings(max_examples=150, deadline=None)
@given(streams())
def test_stream_property_round_trip_and_index_find_agree(case):
    datasets, records = case
    blob = build(records=records, datasets=datasets)
    got, _ = read_all(blob)
    assert got == records
    r = StreamReader(io.BytesIO(blob))
    index = r.read_index()
    assert len(index) == len(records)
    for ds, off, data in records:
        entry = index.find(ds, off + len(data) - 1)
        assert (entry.dataset_index, entry.offset) == (ds, off)
        assert r.read_record(entry) == data
        if off > 0 and index.find(ds, off - 1) is not None:
            assert index.find(ds, off - 1).offset < off


# -- reading from the end ----------------------------------------------------------

def test_reader_from_end_index_lists_every_record():
    blob = build()
    r = StreamReader(io.BytesIO(blob))
    entries = list(r.read_index())
    assert [(e.dataset_index, e.offset, e.length) for e in entries] == \
        [(ds, off, len(d)) for ds, off, d in RECORDS]


def test_reader_from_end_then_records_still_reads_everything():
    r = StreamReader(io.BytesIO(build()))
    r.read_index()
    assert [(x.dataset_index, x.offset, x.data) for x in r.records()] == RECORDS


def test_index_find_in_hole_returns_none():
    index = StreamReader(io.BytesIO(build())).read_index()
    assert index.find(0, 65536) is None  # the hole in 'a'
    assert index.find(1, 0) is None
    assert index.find(2, 0) is None
    assert index.find(0, 131072 + 5).offset == 131072


def test_reader_from_end_truncated_file_refused():
    blob = build()
    with pytest.raises(FormatError, match="end magic"):
        StreamReader(io.BytesIO(blob[:-1])).read_trailer()


def test_reader_from_end_tampered_index_refused():
    blob = build()
    index_pos = StreamReader(io.BytesIO(blob)).read_trailer().index_position
    with pytest.raises(FormatError, match="index checksum mismatch"):
        StreamReader(io.BytesIO(flip(blob, index_pos + 20))).read_index()


def test_reader_read_record_tampered_payload_refused():
    blob = build()
    pos = record_positions(blob)[1]
    bad = flip(blob, pos + 40)
    r = StreamReader(io.BytesIO(bad))
    with pytest.raises(FormatError, match="record checksum mismatch") as e:
        r.read_record(r.read_index()[1])
    assert (e.value.dataset, e.value.offset) == ("a", 131072)


def test_reader_from_end_pipe_refused():
    rfd, wfd = os.pipe()
    os.write(wfd, build()[:4096])
    with open(rfd, "rb") as f:
        r = StreamReader(f)
        with pytest.raises(FormatError, match="seekable"):
            r.read_trailer()
    os.close(wfd)


# -- attacks on the header ---------------------------------------------------------

def test_reader_empty_file_refused():
    assert "empty" in str(fail(b""))


def test_reader_bad_magic_refused():
    e = fail(b"GIF89a" + build()[6:])
    assert str(e) == "header: bad magic, not a tzero backup"


def test_reader_short_non_tzero_file_reports_bad_magic():
    assert "bad magic" in str(fail(b"hello\n"))


def test_reader_unknown_version_refused_with_clear_line():
    blob = bytearray(build())
    blob[8:12] = struct.pack("<I", 7)
    assert str(fail(bytes(blob))) == "header: unsupported format version 7 (this tzero reads 1, 2, 3)"


def test_reader_header_byte_flipped_refused():
    assert str(fail(flip(build(), 20))) == "header: header checksum mismatch"


def rebuild_header(doc_bytes: bytes) -> bytes:
    """A stream with header body DOC_BYTES and a correct header checksum, nothing after."""
    pre = MAGIC + struct.pack("<II", 1, len(doc_bytes))
    return pre + doc_bytes + xxhash.xxh3_128(pre + doc_bytes).digest()


@pytest.mark.parametrize("body, message", [
    (b"not json", "not JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"format_version":1}', "has no"),
    (b'{"format_version":1,"tool_version":"x","time_zero":"2026-01-01T00:00:00",'
     b'"chunk_size":65536,"checksum":"md5","datasets":[]}', "unsupported checksum 'md5'"),
    (b'{"format_version":1,"tool_version":"x","time_zero":"2026-01-01T00:00:00",'
     b'"chunk_size":65536,"checksum":"xxh3-128","datasets":[{"name":"../etc","size":1}]}',
     "must not be"),
    (b'{"format_version":1,"tool_version":"x","time_zero":"2026-01-01T00:00:00",'
     b'"chunk_size":65536,"checksum":"xxh3-128","datasets":[{"name":"a","size":-1}]}',
     "size -1"),
    (b'{"format_version":2,"tool_version":"x","time_zero":"2026-01-01T00:00:00",'
     b'"chunk_size":65536,"checksum":"xxh3-128","datasets":[]}', "preamble says 1"),
    (b'{"format_version":1,"tool_version":"x","time_zero":"yesterday",'
     b'"chunk_size":65536,"checksum":"xxh3-128","datasets":[]}', "not an ISO 8601"),
])
def test_reader_bad_header_json_refused(body, message):
    with pytest.raises(FormatError, match=message) as e:
        StreamReader(io.BytesIO(rebuild_header(body)))
    assert e.value.section == "header"


def test_reader_huge_header_length_refused_before_reading():
    blob = MAGIC + struct.pack("<II", 1, 1 << 31)
    assert "exceeds the limit" in str(fail(blob))


# -- truncation ---------------------------------------------------------------------

def test_reader_truncated_anywhere_raises_never_short():
    blob = build(records=[(0, 0, b"\x05" * 512), (1, 512, b"\x06" * 700)])
    for cut in range(len(blob)):
        with pytest.raises(FormatError):
            read_all(blob[:cut])


def test_reader_truncated_mid_record_names_dataset_and_offset():
    blob = build()
    pos = record_positions(blob)[2]
    e = fail(blob[:pos + 32 + 100])
    assert (e.dataset, e.offset) == ("b", 65536)
    assert str(e) == ("dataset 'b' at offset 65536: truncated in the record payload: "
                      f"expected {100_000 - 65536} bytes, got 100")


def test_reader_truncated_between_records_names_end_of_last_good_one():
    blob = build()
    e = fail(blob[:record_positions(blob)[1]])
    assert (e.dataset, e.offset) == ("a", 65536)
    assert "truncated" in e.reason


def test_reader_truncated_before_trailer_names_trailer():
    blob = build()
    e = fail(blob[:-80])
    assert e.section == "trailer" and "truncated" in e.reason


def test_reader_trailing_garbage_refused():
    assert "after the end magic" in str(fail(build() + b"\0"))


# -- tampering with records, index and trailer -----------------------------------

def test_reader_any_flipped_byte_refused():
    blob = build(records=[(0, 0, b"\x05" * 512), (1, 512, b"\x06" * 700)])
    for pos in range(len(blob)):
        with pytest.raises(FormatError):
            read_all(flip(blob, pos))


def test_reader_tampered_payload_names_dataset_and_offset():
    blob = build()
    pos = record_positions(blob)[2]
    e = fail(flip(blob, pos + 32 + 1000, 0x80))
    assert str(e) == "dataset 'b' at offset 65536: record checksum mismatch"


def test_reader_record_head_offset_changed_refused():
    blob = bytearray(build())
    pos = record_positions(bytes(blob))[1]
    struct.pack_into("<Q", blob, pos + 16, 65536)  # claims to sit in the hole instead
    e = fail(bytes(blob))
    assert (e.dataset, e.offset, e.reason) == ("a", 65536, "record checksum mismatch")


def test_reader_records_swapped_reports_out_of_order():
    blob = build()
    p0, p1, p2 = record_positions(blob)
    swapped = blob[:p0] + blob[p1:p2] + blob[p0:p1] + blob[p2:]
    e = fail(swapped)
    assert (e.dataset, e.offset) == ("a", 0)
    assert "out of order" in e.reason


def test_reader_datasets_swapped_reports_out_of_order():
    blob = build(records=[(0, 0, b"\x01" * 512), (1, 0, b"\x02" * 512)])
    p0, p1 = record_positions(blob)
    end = p1 + (p1 - p0)
    e = fail(blob[:p0] + blob[p1:end] + blob[p0:p1] + blob[end:])
    assert e.dataset == "a" and "after dataset 'b'" in e.reason


def record(ds, off, payload, codec=0, length=None):
    """A record with a valid checksum whatever its fields: for crafting attacks."""
    length = len(payload) if length is None else length
    head = struct.pack("<4sBBHIIQII", b"RECD", codec, 0, 0, ds, length, off, len(payload), 0)
    return head + payload + xxhash.xxh3_128(head + payload).digest()


def splice(blob, pos, new_record, old_len):
    return blob[:pos] + new_record + blob[pos + old_len:]


def test_reader_record_beyond_dataset_size_refused_even_with_good_checksum():
    blob = build(records=[(1, 0, b"\x02" * 512)])
    pos = record_positions(blob)[0]
    e = fail(splice(blob, pos, record(1, 99_800, b"\x02" * 512), 48 + 512))
    assert (e.dataset, e.offset) == ("b", 99_800) and "beyond the dataset size" in e.reason


def test_reader_unknown_dataset_number_refused():
    blob = build(records=[(1, 0, b"\x02" * 512)])
    pos = record_positions(blob)[0]
    e = fail(splice(blob, pos, record(9, 0, b"\x02" * 512), 48 + 512))
    assert "dataset number 9" in e.reason


@pytest.mark.parametrize("codec, message", [(1, "zstd payload does not decode"),
                                            (200, "unknown record codec 200")])
def test_reader_unsupported_codec_refused(codec, message):
    blob = build(records=[(0, 0, b"\x01" * 512)])
    pos = record_positions(blob)[0]
    e = fail(splice(blob, pos, record(0, 0, b"\x01" * 512, codec=codec), 48 + 512))
    assert message in e.reason and e.dataset == "a"


def test_reader_huge_record_length_refused_before_reading():
    blob = build(records=[(0, 0, b"\x01" * 512)])
    pos = record_positions(blob)[0]
    bad = bytearray(blob)
    struct.pack_into("<I", bad, pos + 24, 1 << 31)
    assert "exceeds the limit" in fail(bytes(bad)).reason


def test_reader_record_dropped_refused():
    blob = build()
    p0, p1, _ = record_positions(blob)
    e = fail(blob[:p1] + blob[p1 + 48 + 131072:])  # drop the second record of 'a'
    assert e.section == "index" and "index lists 3 records, the stream holds 2" in e.reason


def test_reader_index_entry_changed_with_new_checksum_refused():
    blob = bytearray(build())
    ipos = StreamReader(io.BytesIO(bytes(blob))).read_trailer().index_position
    struct.pack_into("<Q", blob, ipos + 16 + 8, 4096)  # entry 0's offset
    end = ipos + 16 + 32 * 3
    blob[end:end + 16] = xxhash.xxh3_128(bytes(blob[ipos:end])).digest()
    e = fail(bytes(blob))
    assert e.section == "index" and e.reason == "index does not match the records"


def test_reader_trailer_tampered_refused():
    e = fail(flip(build(), -50))  # inside the trailer fields
    assert str(e) == "trailer: trailer checksum mismatch"


def test_reader_digest_tampered_refused():
    assert str(fail(flip(build(), -10))) == "trailer: stream digest mismatch"


def test_reader_end_magic_tampered_refused():
    assert str(fail(flip(build(), -1))) == "trailer: bad end magic"


# -- the writer refuses what it could not read back --------------------------------

def writer(*datasets):
    return StreamWriter(io.BytesIO(), header(*(datasets or DATASETS)))


@pytest.mark.parametrize("first, second, message", [
    ((1, 0, b"x" * 512), (0, 0, b"x" * 512), "header order"),
    ((0, 4096, b"x" * 512), (0, 4096, b"x" * 512), "overlaps or precedes"),
    ((0, 4096, b"x" * 1024), (0, 4608, b"x" * 512), "overlaps or precedes"),
    ((0, 4096, b"x" * 512), (0, 0, b"x" * 512), "overlaps or precedes"),
])
def test_writer_out_of_order_record_refused(first, second, message):
    w = writer()
    w.write(*first)
    before = w.bytes_written
    with pytest.raises(ValueError, match=message):
        w.write(*second)
    assert w.bytes_written == before


@pytest.mark.parametrize("rec, message", [
    ((1, 100_000 - 256, b"x" * 512), "goes beyond dataset 1 of size 100000"),
    ((2, 0, b"x"), "goes beyond"),
    ((3, 0, b"x"), "not in the header"),
    ((-1, 0, b"x"), "not in the header"),
    ((0, 0, b""), "not within 1"),
    ((0, -512, b"x"), "overlaps or precedes"),
])
def test_writer_out_of_range_record_refused(rec, message):
    with pytest.raises(ValueError, match=message):
        writer().write(*rec)


def test_writer_after_finish_refused():
    w = writer()
    w.finish()
    with pytest.raises(ValueError, match="finished"):
        w.write(0, 0, b"x")
    with pytest.raises(ValueError, match="finished"):
        w.finish()


@pytest.mark.parametrize("datasets, message", [
    ((("a", 1), ("a", 2)), "appears twice"),
    ((("", 1),), "non-empty"),
    ((("x/y", 1),), "must not be"),
    (((".", 1),), "must not be"),
    ((("a", -1),), "size -1"),
    ((("a", 1.5),), "size 1.5"),
])
def test_writer_bad_header_refused(datasets, message):
    with pytest.raises(ValueError, match=message):
        writer(*datasets)


def test_writer_bad_time_zero_refused():
    h = Header(tool_version="0.1.0", time_zero="noon", chunk_size=65536, datasets=[])
    with pytest.raises(ValueError, match="ISO 8601"):
        StreamWriter(io.BytesIO(), h)


def test_writer_extra_not_json_refused():
    with pytest.raises(ValueError, match="not JSON"):
        StreamWriter(io.BytesIO(), header(("a", 1), extra={"x": object()}))


class Broken(io.RawIOBase):
    def __init__(self, fail_after):
        self.left = fail_after

    def writable(self):
        return True

    def write(self, b):
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.left -= 1
        return len(b)


def test_writer_after_output_error_refuses_further_use():
    w = StreamWriter(Broken(fail_after=4), header(*DATASETS))
    with pytest.raises(BrokenPipeError):
        w.write(0, 0, b"x" * 512)
        w.write(0, 512, b"x" * 512)
    with pytest.raises(ValueError, match="broken"):
        w.write(1, 0, b"x")


def test_stream_example_in_format_doc_has_the_documented_positions():
    out = io.BytesIO()
    w = StreamWriter(out, header(("a", 1 << 20)))
    w.write(0, 65536, b"\x07" * 512)
    w.finish()
    blob = out.getvalue()
    h = struct.unpack_from("<I", blob, 12)[0]
    assert len(blob) == 736 + h
    assert blob[32 + h:36 + h] == b"RECD" and blob[592 + h:596 + h] == b"INDX"
    assert blob[656 + h:660 + h] == b"TRLR"
    assert StreamReader(io.BytesIO(blob)).read_index()[0].position == 32 + h


def test_reader_stream_starting_inside_a_file_reads_from_the_end(tmp_path):
    path = tmp_path / "concat"
    path.write_bytes(b"prefix" + build())
    with open(path, "rb") as f:
        f.read(6)
        r = StreamReader(f)
        index = r.read_index()
        assert r.read_record(index[1]) == RECORDS[1][2]
        assert [(x.dataset_index, x.offset, x.data) for x in r.records()] == RECORDS


def test_writer_unknown_format_version_refused_before_writing():
    out = io.BytesIO()
    with pytest.raises(ValueError, match="writes format versions"):
        StreamWriter(out, header(*DATASETS, version=4))
    assert out.getvalue() == b""
