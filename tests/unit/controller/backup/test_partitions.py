"""Partition tables made by sfdisk, read back through TableReader."""

import shutil
import subprocess

import pytest

from controller.backup.partitions import PartitionError, TableReader, find_partition

pytestmark = pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (fdisk package) is not installed")

GPT = "label: gpt\n\np1 : start=2048, size=4096\np2 : start=8192, size=4096\n"
MBR = ("label: dos\n\np1 : start=2048, size=2048, type=83\np2 : start=4096, size=12000, type=5\n"
       "p5 : start=6144, size=1024, type=83\np6 : start=10240, size=1024, type=83\n")


def image(tmp_path, script: str, size=8 << 20):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True, capture_output=True)
    return path


def reader_of(path) -> TableReader:
    data = path.read_bytes()
    return TableReader(lambda off, n: data[off:off + n], len(data))


@pytest.mark.parametrize("number, expected", [(1, (2048 * 512, 4096 * 512)), (2, (8192 * 512, 4096 * 512))])
def test_partitions_gpt_partition_is_found_by_number(tmp_path, number, expected):
    assert find_partition(reader_of(image(tmp_path, GPT)), number) == expected


@pytest.mark.parametrize("number, expected", [(1, (2048 * 512, 2048 * 512)), (5, (6144 * 512, 1024 * 512)),
                                              (6, (10240 * 512, 1024 * 512))])
def test_partitions_mbr_primary_and_logical_partitions_are_found(tmp_path, number, expected):
    assert find_partition(reader_of(image(tmp_path, MBR)), number) == expected


def test_partitions_reader_records_the_table_sectors_it_read(tmp_path):
    r = reader_of(image(tmp_path, GPT))
    find_partition(r, 1)
    assert (0, 512) in r.ranges and all(off + n <= 34 * 512 for off, n in r.ranges)


@pytest.mark.parametrize("script, number, fragment", [
    (GPT, 3, "no partition 3"),
    (GPT, 200, "the GPT has 128 entries"),
    (MBR, 2, "extended partition"),
    (MBR, 3, "no partition 3"),
    (MBR, 7, "fewer logical partitions"),
])
def test_partitions_missing_partition_is_refused(tmp_path, script, number, fragment):
    with pytest.raises(PartitionError) as e:
        find_partition(reader_of(image(tmp_path, script)), number)
    assert fragment in str(e.value)


def test_partitions_damaged_gpt_header_is_refused(tmp_path):
    path = image(tmp_path, GPT)
    data = bytearray(path.read_bytes())
    data[512 + 40] ^= 1  # first usable LBA, inside the header checksum
    path.write_bytes(bytes(data))
    with pytest.raises(PartitionError, match="GPT header checksum"):
        find_partition(reader_of(path), 1)


def test_partitions_blank_disk_has_no_table(tmp_path):
    path = tmp_path / "blank.img"
    path.write_bytes(bytes(1 << 20))
    with pytest.raises(PartitionError, match="no partition table"):
        find_partition(reader_of(path), 1)
