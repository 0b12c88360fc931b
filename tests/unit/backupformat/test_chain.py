"""Incremental streams (format version 3) and chains: zero records, the base link, readers
of versions 1 and 2, and a chain read as one image (front to back and at random) against a
model, under random layers (hypothesis)."""

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backupformat.reader
from backupformat import Base, Dataset, FormatError, Header, StreamReader, StreamWriter
from backupformat.chain import check_chain, merged
from backupformat.spec import RECORD_ZERO, codec_problem
from backupformat.view import Chain

from backup_samples import DATASETS, chain_bytes, chain_image

DIGEST = "0" * 32
BASE = Base("full.tzb", DIGEST, "2026-11-25T10:00:00+00:00")
LAYERS = [
    [(0, 0, b"\x01" * 65536), (0, 131072, b"\x05" * 4096), (1, 0, b"\x02" * 100_000)],
    [(0, 4096, 8192), (0, 131072 + 1024, b"\x06" * 1024), (1, 99_000, b"\x07" * 1000)],
    [(0, 0, b"\x08" * 512), (0, 6000, b"\x09" * 100), (1, 0, 4096)],
]


def incremental_header(base=BASE, version=3):
    return Header(tool_version="0.1.0", time_zero="2026-11-25T10:00:01+00:00", chunk_size=65536,
                  datasets=[Dataset(n, s) for n, s in DATASETS], format_version=version, base=base)


def readers(blobs):
    """Readers of the chain BLOBS (oldest first), newest first as a chain is given."""
    return [StreamReader(io.BytesIO(b)) for b in reversed(blobs)]


def test_incremental_round_trip_keeps_zero_records_apart_from_data():
    blob = chain_bytes(LAYERS[:2])[1]
    r = StreamReader(io.BytesIO(blob))
    got = [(rec.dataset_index, rec.offset, bytes(rec.data), rec.zeros, rec.length) for rec in r.records()]
    assert got == [(0, 4096, b"", 8192, 8192), (0, 132096, b"\x06" * 1024, 0, 1024),
                   (1, 99_000, b"\x07" * 1000, 0, 1000)]
    index = StreamReader(io.BytesIO(blob)).read_index()
    assert [e.flags for e in index] == [RECORD_ZERO, 0, 0]
    assert StreamReader(io.BytesIO(blob)).read_data(index[0]) == bytes(8192)


def test_incremental_is_version_3_and_full_stays_version_2():
    full, inc = chain_bytes(LAYERS[:2])
    assert full[8:12] == (2).to_bytes(4, "little") and inc[8:12] == (3).to_bytes(4, "little")


def test_incremental_refused_by_a_reader_of_versions_1_and_2(monkeypatch):
    monkeypatch.setattr(backupformat.reader, "SUPPORTED_VERSIONS", (1, 2))
    with pytest.raises(FormatError, match=r"^header: unsupported format version 3 \(this tzero reads 1, 2\)$"):
        StreamReader(io.BytesIO(chain_bytes(LAYERS[:2])[1]))


@pytest.mark.parametrize("header, problem", [
    (incremental_header(base=None), "a version 3 stream names its base"),
    (incremental_header(version=2), "a version 2 stream cannot name a base"),
    (incremental_header(base=Base("../x.tzb", DIGEST, "2026-11-25T10:00:00+00:00")), "base: file name"),
    (incremental_header(base=Base("x.tzb", "ABC", "2026-11-25T10:00:00+00:00")), "base digest 'ABC'"),
    (incremental_header(base=Base("x.tzb", DIGEST, "yesterday")), "base time_zero 'yesterday'"),
])
def test_incremental_header_without_a_sound_base_is_refused(header, problem):
    assert problem in header.problem()
    with pytest.raises(ValueError, match="base"):
        StreamWriter(io.BytesIO(), header)


def test_incremental_header_round_trips_through_json():
    h = incremental_header()
    assert Header.from_json(h.to_json()) == h


@pytest.mark.parametrize("args, problem", [
    ((0, RECORD_ZERO, 0, 0, 4096, 0, 2), "reserved record fields are not zero"),
    ((0, RECORD_ZERO, 0, 0, 4096, 16, 3), "a zero record stores bytes"),
    ((1, RECORD_ZERO, 0, 0, 4096, 0, 3), "a zero record stores bytes"),
    ((0, 2, 0, 0, 4096, 4096, 3), "reserved record fields are not zero"),
    ((0, RECORD_ZERO, 0, 0, 4096, 0, 3), None),
])
def test_zero_record_rules(args, problem):
    assert codec_problem(*args) == problem


def test_full_writer_refuses_zero_records():
    w = StreamWriter(io.BytesIO(), Header(tool_version="0.1.0", time_zero="2026-11-25T10:00:00+00:00",
                                         chunk_size=65536, datasets=[Dataset("a", 4096)]))
    with pytest.raises(ValueError, match="zero records belong to incremental streams"):
        w.write_zero(0, 0, 4096)


def test_chain_merged_gives_each_byte_from_the_newest_backup_holding_it():
    rs = readers(chain_bytes(LAYERS))
    image = [bytearray(s) for _, s in DATASETS]
    for rec in merged(rs):
        image[rec.dataset_index][rec.offset:rec.offset + len(rec.data)] = rec.data
        assert any(rec.data), "zeros are left out"
    assert [bytes(i) for i in image] == [chain_image(d, LAYERS) for d in range(len(DATASETS))]
    assert all(r.trailer is not None for r in rs), "every stream read to its end"


def test_chain_merged_finds_a_base_that_is_not_the_one_recorded():
    blobs = chain_bytes(LAYERS[:2])
    other = chain_bytes([[(0, 0, b"\x0f" * 10)]])[0]  # another full backup, same datasets and time zero
    with pytest.raises(FormatError, match="is not the base the next backup recorded: its stream digest") as e:
        list(merged(readers([other, blobs[1]])))
    assert e.value.layer == 1


def test_chain_merged_names_the_damaged_stream():
    blobs = chain_bytes(LAYERS)
    bad = bytearray(blobs[1])
    bad[-20] ^= 1  # the middle stream's digest
    with pytest.raises(FormatError, match="stream digest mismatch") as e:
        list(merged(readers([blobs[0], bytes(bad), blobs[2]])))
    assert e.value.layer == 1


def test_check_chain_refuses_broken_links():
    full, inc1, inc2 = (StreamReader(io.BytesIO(b)).header for b in chain_bytes(LAYERS))
    with pytest.raises(FormatError, match="is incremental, and its base c0.tzb is not in the chain"):
        check_chain([inc1], [None])
    with pytest.raises(FormatError, match="is a full backup, yet more backups follow it"):
        check_chain([full, full], [None, None])
    with pytest.raises(FormatError, match="its time zero is"):
        check_chain([inc2, full], [None, None])
    other = chain_bytes(LAYERS[:2], datasets=(("a", 256 << 10), ("c", 100_000), ("empty", 0)))[0]
    with pytest.raises(FormatError, match="holds other datasets"):
        check_chain([inc1, StreamReader(io.BytesIO(other)).header], [None, None])
    check_chain([inc2, inc1, full], [None, None, None])


# -- against a model, at random ------------------------------------------------------------

SIZE = 40_000
GRAIN = 500


@st.composite
def layer(draw, full: bool):
    """Records of one stream over one dataset of SIZE bytes: data or (incremental) zero runs."""
    records, pos = [], 0
    while pos < SIZE:
        pos += draw(st.integers(0, 20)) * GRAIN
        n = draw(st.integers(1, 12)) * GRAIN
        if pos + n > SIZE:
            break
        if not full and draw(st.booleans()):
            records.append((0, pos, n))
        else:
            records.append((0, pos, bytes([draw(st.integers(1, 255))]) * n))
        pos += n
    return records


@st.composite
def chains(draw):
    return [draw(layer(True))] + [draw(layer(False)) for _ in range(draw(st.integers(0, 3)))]


@settings(max_examples=80, deadline=None)
@given(chains())
def test_chain_merged_and_random_reads_match_the_model(layers):
    datasets = (("d", SIZE),)
    blobs = chain_bytes(layers, datasets)
    expected = chain_image(0, layers, datasets)
    image = bytearray(SIZE)
    for rec in merged(readers(blobs)):
        image[rec.offset:rec.offset + len(rec.data)] = rec.data
    assert bytes(image) == expected


@settings(max_examples=40, deadline=None)
@given(chains(), st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, 9000)), min_size=1, max_size=5))
def test_chain_view_reads_and_extents_match_the_model(tmp_path_factory, layers, reads):
    folder = tmp_path_factory.mktemp("chain")
    datasets = (("d", SIZE),)
    names = [f"c{i}.tzb" for i in range(len(layers))]
    for name, blob in zip(names, chain_bytes(layers, datasets, names), strict=True):
        (folder / name).write_bytes(blob)
    expected = chain_image(0, layers, datasets)
    chain = Chain([str(folder / n) for n in reversed(names)])
    try:
        view = chain.view("d")
        for offset, length in reads:
            length = min(length, SIZE - offset)
            buf = bytearray(length)
            view.read_into(buf, offset)
            assert bytes(buf) == expected[offset:offset + length]
            runs = view.extents(offset, length)
            assert sum(n for _, n, _ in runs) == length and runs[0][0] == offset
            for o, n, hole in runs:
                if not hole:
                    continue
                assert expected[o:o + n] == bytes(n), "a hole reads as zeros"
    finally:
        chain.close()
