"""Part sizes: S3's limits, the default that grows with the backup, and the bound on a stream."""

import pytest

from backupformat import Dataset as StreamDataset
from backupformat import Header, StreamWriter
from controller.backup.layout import Dataset, Linear, Striped
from controller.backup.s3parts import DEFAULT_PART, MAX_PARTS, MIN_PART, choose_part_size, stream_bound
from controller.errors import UsageError

GiB = 1 << 30
MiB = 1 << 20


def test_s3parts_default_part_size_is_16_mib_for_backups_that_fit_in_10000_of_them():
    assert choose_part_size(None, 100 * GiB) == DEFAULT_PART == 16 * MiB


def test_s3parts_default_part_size_grows_to_the_next_mib_that_holds_the_backup():
    bound = 2048 * GiB + 1
    size = choose_part_size(None, bound)
    assert size % MiB == 0 and size * MAX_PARTS >= bound and (size - MiB) * MAX_PARTS < bound


def test_s3parts_part_size_under_5_mib_is_refused_up_front():
    with pytest.raises(UsageError, match="at least 5 MiB"):
        choose_part_size(MIN_PART - 1, GiB)
    assert choose_part_size(MIN_PART, GiB) == MIN_PART


def test_s3parts_part_size_too_small_for_the_backup_is_refused_naming_what_would_do():
    with pytest.raises(UsageError, match=r"10,000 parts hold 78.1 GiB, and this backup may reach 100 GiB; "
                                         r"use --part-size 11M or more"):
        choose_part_size(8 * MiB, 100 * GiB)


def test_s3parts_backup_beyond_10000_parts_of_5_gib_is_refused():
    with pytest.raises(UsageError, match="more than 10,000 parts of 5 GiB"):
        choose_part_size(None, MAX_PARTS * (5 * GiB) + 1)


def worst_stream(size: int, piece: int) -> int:
    """The size of a real stream of one dataset whose every other PIECE is a hole (one record each)."""
    class Sink:
        n = 0

        def write(self, buf):
            Sink.n += len(buf)

    header = Header(tool_version="t", time_zero="2026-01-01T00:00:00+00:00", chunk_size=piece,
                    datasets=[StreamDataset("d", size)], extra={})
    w = StreamWriter(Sink(), header)
    for off in range(0, size, 2 * piece):
        w.write(0, off, bytes(piece))
    return w.finish()["bytes"]


@pytest.mark.parametrize("layout", [Linear([("e", 0, 4 * MiB)]), Striped(16384, ["e", "f"], [2 * MiB, 2 * MiB])])
def test_s3parts_stream_bound_holds_a_stream_of_one_record_per_chunk(layout):
    ds = Dataset("d", "spec", layout)
    bound = stream_bound([ds], 4096)
    assert bound >= worst_stream(ds.size, 4096) + ds.size // 2, "every piece a record, holes counted as data"
    assert bound < ds.size * 1.03 + (17 << 20), "and not much more"
