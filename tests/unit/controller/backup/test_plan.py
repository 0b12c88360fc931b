"""Planning against the subsystems' exports: refusals before anything is frozen, and what is tracked."""

import struct
from dataclasses import dataclass

import pytest

from controller.backup.dataspec import parse_dataset
from controller.backup.plan import PartitionCheck, make_plan, recheck_partitions
from controller.errors import SessionAborted, UsageError


@dataclass
class FakeMember:
    where: str
    exports: list
    nbd: dict


MEMBERS = [FakeMember("s1.ctl", [{"name": "x", "size": 1 << 20}, {"name": "y", "size": 1 << 20}], {}),
           FakeMember("s2.ctl", [{"name": "z", "size": 2 << 20}], {})]


def plan(*args):
    return make_plan([parse_dataset(a) for a in args], MEMBERS)


def test_plan_without_datasets_backs_up_every_export_whole_in_subsystem_order():
    p = make_plan([], MEMBERS)
    assert [(d.name, d.size) for d in p.datasets] == [("x", 1 << 20), ("y", 1 << 20), ("z", 2 << 20)]


def test_plan_tracks_only_dataset_bytes_and_opens_only_subsystems_it_needs():
    p = plan("a=x:64K+64K", "b=x:512K-1M")
    assert p.tracks() == {"s1.ctl": {"x": [[65536, 65536], [524288, 524288]]}}


def test_plan_stripe_tracks_each_leg_up_to_the_usable_size_across_subsystems():
    p = plan("v=stripe:64K:x,z")
    assert p.datasets[0].size == 2 << 20
    assert p.tracks() == {"s1.ctl": {"x": [[0, 1 << 20]]}, "s2.ctl": {"z": [[0, 1 << 20]]}}


@pytest.mark.parametrize("args, fragment", [
    (["a=nope"], "no export named 'nope'"),
    (["a=x:512K+1M"], "beyond export 'x'"),
    (["a=x", "b=x:0+4K"], "datasets 'a' and 'b' overlap on export 'x'"),
    (["a=concat:x,y", "b=stripe:64K:y,z"], "overlap on export 'y'"),
    (["a=x", "a=y"], "dataset name 'a' is given twice"),
    (["a=stripe:4M:x,z"], "smaller than the stripe chunk"),
])
def test_plan_bad_datasets_are_refused_with_one_line(args, fragment):
    with pytest.raises(UsageError) as e:
        plan(*args)
    assert fragment in e.value.message and "\n" not in e.value.message


class FakeView:
    def __init__(self, data: bytes):
        self.data = data

    def pread(self, n, off):
        return self.data[off:off + n]


def mbr_with_partition_1_at(start_sector: int, sectors: int) -> bytes:
    sector = bytearray(512)
    struct.pack_into("<B3xB3xII", sector, 446, 0, 0x83, start_sector, sectors)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector) + bytes(1 << 20)


def test_plan_partition_recheck_passes_when_the_view_holds_the_planned_table():
    check = PartitionCheck("root", "x", 1, 2048 * 512, 100 * 512, [(0, 512)])
    recheck_partitions([check], {"x": FakeView(mbr_with_partition_1_at(2048, 100))})


@pytest.mark.parametrize("view, fragment", [
    (mbr_with_partition_1_at(4096, 100), "is (2097152, 51200)"),
    (bytes(1 << 20), "unreadable (no partition table"),
])
def test_plan_partition_moved_before_time_zero_abandons_the_backup(view, fragment):
    check = PartitionCheck("root", "x", 1, 2048 * 512, 100 * 512, [(0, 512)])
    with pytest.raises(SessionAborted) as e:
        recheck_partitions([check], {"x": FakeView(view)})
    assert "the partition table of 'x' changed before time zero" in e.value.message and fragment in e.value.message


def test_plan_narrowed_to_changed_chunks_claims_and_yields_only_those():
    p = plan("a=x:64K+192K", "v=stripe:64K:y,z")
    changed = {"x": bytearray(16), "y": bytearray(16), "z": bytearray(32)}
    changed["x"][2] = changed["y"][0] = changed["z"][1] = 1
    p.narrow(changed, 64 << 10)
    assert p.claims() == {"x": [(128 << 10, 64 << 10)], "y": [(0, 64 << 10)], "z": [(64 << 10, 64 << 10)]}
    assert [(q.dataset, q.logical, q.export) for q in p.pieces(64 << 10)] == \
        [(0, 64 << 10, "x"), (1, 0, "y"), (1, 192 << 10, "z")]
    assert p.pieces_at("x", 0, 64 << 10) == [] and len(p.pieces_at("x", 128 << 10, 64 << 10)) == 1
