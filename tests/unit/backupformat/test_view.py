"""Random access to a dataset of a backup file through its index."""

import pytest

from backupformat.view import BackupFile, FormatError

from backup_samples import backup_bytes, flipped, image, record_position, write_backup


@pytest.fixture(params=[0, 1], ids=["raw", "zstd"])
def backup(tmp_path, request):
    b = BackupFile(str(write_backup(tmp_path / "b.tzb", codec=request.param)))
    yield b
    b.close()


@pytest.mark.parametrize("name, offset, length", [
    ("a", 0, 256 << 10), ("a", 65000, 70000), ("a", 131071, 2), ("b", 0, 100_000), ("b", 12000, 60000),
    ("b", 99_999, 1), ("a", 70000, 1000),
])
def test_backup_view_reads_equal_the_dataset_image_across_records_and_holes(backup, name, offset, length):
    i = backup.names.index(name)
    buf = bytearray(b"\xaa" * length)
    backup.view(name).read_into(buf, offset)
    assert bytes(buf) == image(i)[offset:offset + length]


def test_backup_view_extents_report_records_as_data_and_gaps_as_holes(backup):
    assert backup.view("a").extents(0, 256 << 10) == [(0, 65536, False), (65536, 65536, True),
                                                      (131072, 131072, False)]
    assert backup.view("b").extents(0, 100_000) == [(0, 4096, True), (4096, 8192, False),
                                                    (12288, 65536 - 12288, True), (65536, 100_000 - 65536, False)]
    assert backup.view("b").extents(5000, 100) == [(5000, 100, False)]
    assert backup.view("empty").extents(0, 10) == []


def test_backup_view_damaged_record_fails_the_read_naming_it(tmp_path):
    blob = backup_bytes()
    path = tmp_path / "bad.tzb"
    path.write_bytes(flipped(blob, record_position(blob, 1) + 100))
    b = BackupFile(str(path))
    try:
        with pytest.raises(FormatError) as e:
            b.view("a").read_into(bytearray(10), 131072 + 5)
        assert "checksum mismatch" in str(e.value) and e.value.offset == 131072
        b.view("a").read_into(bytearray(10), 0)  # the other records still read
    finally:
        b.close()




def test_backup_view_extents_with_limit_one_return_only_the_extent_at_the_offset(backup):
    assert backup.view("a").extents(70000, 256 << 10, limit=1) == [(70000, 131072 - 70000, True)]
    assert backup.view("b").extents(0, 100_000, limit=1) == [(0, 4096, True)]


@pytest.mark.parametrize("limit", [2, 3])
def test_backup_view_extents_stop_at_the_limit_with_a_prefix_of_the_whole_answer(backup, limit):
    whole = backup.view("b").extents(0, 100_000)
    assert backup.view("b").extents(0, 100_000, limit=limit) == whole[:limit]
