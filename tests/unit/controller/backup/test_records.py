"""Pieces coalesced into records: borrowed from read buffers, owned when gathered."""

from types import SimpleNamespace

from controller.backup.records import RecordAssembler


class Sink:
    def __init__(self):
        self.records = []

    def write(self, ds, offset, data):
        self.records.append((ds, offset, bytes(data)))


def test_records_adjacent_pieces_of_one_buffer_become_one_record_without_copy():
    sink, read = Sink(), SimpleNamespace(data=bytearray(b"abcdefgh"))
    r = RecordAssembler(sink, 1 << 20)
    r.add(0, 100, memoryview(read.data)[0:4], read, 0)
    r.add(0, 104, memoryview(read.data)[4:8], read, 4)
    assert isinstance(r._data, memoryview), "one run of one buffer is written from it"
    r.flush()
    assert sink.records == [(0, 100, b"abcdefgh")]


def test_records_release_copies_a_borrowed_run_before_its_buffer_is_reused():
    sink, read = Sink(), SimpleNamespace(data=bytearray(b"abcd"))
    r = RecordAssembler(sink, 1 << 20)
    r.add(1, 0, memoryview(read.data), read, 0)
    r.release(read)
    read.data[:] = b"XXXX"  # the pool hands the buffer to another read
    r.add(1, 4, b"efgh")
    r.flush()
    assert sink.records == [(1, 0, b"abcdefgh")]


def test_records_gap_dataset_change_and_limit_start_new_records():
    sink = Sink()
    r = RecordAssembler(sink, 8)
    r.add(0, 0, b"aaaa")
    r.add(0, 8, b"bbbb")  # not adjacent
    r.add(1, 12, b"cccc")  # another dataset
    r.add(1, 16, b"dddd")
    r.add(1, 20, b"e")  # over the limit
    r.flush()
    assert sink.records == [(0, 0, b"aaaa"), (0, 8, b"bbbb"), (1, 12, b"ccccdddd"), (1, 20, b"e")]


class ZeroSink(Sink):
    def write_zero(self, ds, offset, length):
        self.records.append((ds, offset, length))


def test_records_zero_pieces_are_gaps_in_a_full_stream():
    sink = ZeroSink()
    r = RecordAssembler(sink, 1 << 20)
    r.add(0, 0, b"aa")
    r.add_zero(0, 2, 2)
    r.add(0, 4, b"bb")
    r.flush()
    assert sink.records == [(0, 0, b"aa"), (0, 4, b"bb")]


def test_records_adjacent_zero_pieces_become_one_zero_record_in_an_incremental_stream():
    sink = ZeroSink()
    r = RecordAssembler(sink, 1 << 20, zero_records=True)
    r.add(0, 0, b"aa")
    r.add_zero(0, 2, 2)
    r.add_zero(0, 4, 4)
    r.add_zero(0, 10, 2)  # not adjacent
    r.add(0, 12, b"bb")
    r.add_zero(1, 0, 8)
    r.flush()
    assert sink.records == [(0, 0, b"aa"), (0, 2, 6), (0, 10, 2), (0, 12, b"bb"), (1, 0, 8)]
