"""One served device: extents of a fragmented image file, bounded per request."""

import os

import pytest

from common import blockdev
from nbdplugin.device import Device

HOLE = 4096


@pytest.fixture
def fragmented(tmp_path):
    """A 1 MiB file: 4 KiB of data, then a 4 KiB hole, over and over (128 data runs, 128 holes)."""
    path = tmp_path / "frag.img"
    path.write_bytes(b"\xab" * (1 << 20))
    fd = os.open(path, os.O_RDWR)
    try:
        for off in range(HOLE, 1 << 20, 2 * HOLE):
            blockdev.punch_hole(fd, off, HOLE)
    finally:
        os.close(fd)
    d = Device("f", str(path))
    if d.extents(0, 2 * HOLE) != [(0, HOLE, False), (HOLE, HOLE, True)]:
        d.close()
        pytest.skip("this file system does not report 4 KiB holes")
    yield d
    d.close()


def covers_from(runs, offset):
    """True when RUNS are back to back from OFFSET, alternating data and hole."""
    pos = offset
    for i, (o, n, hole) in enumerate(runs):
        if o != pos or n <= 0 or (i and hole == runs[i - 1][2]):
            return False
        pos += n
    return True


def test_device_extents_without_a_limit_cover_the_whole_request(fragmented):
    runs = fragmented.extents(0, 1 << 20)
    assert len(runs) == 256 and covers_from(runs, 0) and runs[-1][0] + runs[-1][1] == 1 << 20


def test_device_extents_with_limit_one_returns_only_the_extent_at_the_offset(fragmented):
    assert fragmented.extents(HOLE + 100, 1 << 20, limit=1) == [(HOLE + 100, HOLE - 100, True)]
    assert fragmented.extents(0, 1 << 20, limit=1) == [(0, HOLE, False)]


@pytest.mark.parametrize("limit", [2, 7, 100])
def test_device_extents_stop_at_the_limit_and_cover_a_prefix_of_the_request(fragmented, limit):
    runs = fragmented.extents(3 * HOLE, 1 << 20, limit=limit)
    assert len(runs) == limit and covers_from(runs, 3 * HOLE)
    assert runs == fragmented.extents(3 * HOLE, 1 << 20)[:limit]
