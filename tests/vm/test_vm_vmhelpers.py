"""tests/vm/vmhelpers.py without booting: what counts as an I/O error in a guest's kernel
log, and the time arithmetic. These run in `make check` (no vm marker)."""

import pytest

from vmhelpers import io_errors, iso_epoch

QUIET_LOG = """\
[    2.569669] device-mapper: ioctl: 4.47.0-ioctl (2022-07-28) initialised: dm-devel@redhat.com
[    3.285694] EXT4-fs (dm-0): mounted filesystem with ordered data mode. Quota mode: none.
[    4.100000] EXT4-fs (nbd0): recovery complete
"""


@pytest.mark.parametrize("line", [
    "[ 9.1] I/O error, dev nbd0, sector 2048 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2",
    "[ 9.1] blk_update_request: I/O error, dev vda, sector 8",
    "[ 9.1] Buffer I/O error on dev dm-0, logical block 17, lost async page write",
    "[ 9.1] EXT4-fs error (device dm-0): ext4_find_entry:1682: inode #2: comm ls: reading directory lblock 0",
    "[ 9.1] EXT4-fs warning (device nbd0): ext4_end_bio:343: I/O error 10 writing to inode 12",
    "[ 9.1] Aborting journal on device dm-0-8.",
    "[ 9.1] block nbd0: Receive control failed (result -32)",
])
def test_io_errors_finds_failed_io_and_filesystem_damage(tmp_path, line):
    (tmp_path / "dmesg.txt").write_text(QUIET_LOG + line + "\n")
    assert io_errors(tmp_path / "dmesg.txt") == [line]


def test_io_errors_leaves_a_quiet_log_alone(tmp_path):
    (tmp_path / "dmesg.txt").write_text(QUIET_LOG)
    assert io_errors(tmp_path / "dmesg.txt") == []


def test_iso_epoch_reads_a_backups_time_zero():
    assert iso_epoch("1970-01-01T00:00:01.500000+00:00") == 1.5
