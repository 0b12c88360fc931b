"""Planning against the subsystems' exports: refusals before anything is frozen, and what is tracked."""

from dataclasses import dataclass

import pytest

from controller.dataspec import parse_dataset
from controller.errors import UsageError
from controller.plan import make_plan


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
