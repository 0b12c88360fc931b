"""What `backup --since BASE` takes from BASE: its datasets, its generations, and refusals
said before anything is opened."""

import io
from dataclasses import dataclass

import pytest

from backupformat import Dataset, Header, StreamWriter
from controller.backup.dataspec import parse_dataset
from controller.backup.incremental import BaseBackup
from controller.backup.layout import describe
from controller.backup.plan import make_plan
from controller.errors import BackupFormatError, UsageError


@dataclass
class FakeMember:
    where: str
    exports: list
    nbd: dict


MEMBERS = [FakeMember("s1.ctl", [{"name": "x", "size": 1 << 20}, {"name": "y", "size": 1 << 20},
                                 {"name": "z", "size": 1 << 20}], {})]


def base_file(tmp_path, specs, tracking, name="base.tzb"):
    plan = make_plan([parse_dataset(s) for s in specs], MEMBERS)
    out = io.BytesIO()
    w = StreamWriter(out, Header(tool_version="0.1.0", time_zero="2026-11-25T10:00:00+00:00", chunk_size=65536,
                                 datasets=[Dataset(d.name, d.size) for d in plan.datasets],
                                 extra={"datasets": [describe(d) for d in plan.datasets], "tracking": tracking}))
    w.finish()
    (tmp_path / name).write_bytes(out.getvalue())
    return str(tmp_path / name)


def test_base_gives_its_datasets_and_generations_to_the_incremental(tmp_path):
    base = BaseBackup.read(base_file(tmp_path, ["v=stripe:64K:x,y", "p=z:0+64K"], {"x": "g1", "y": "g2", "z": "g3"}),
                           str(tmp_path / "inc.tzb"))
    plan = make_plan(base.specs(), MEMBERS)
    assert [d.name for d in plan.datasets] == ["v", "p"] and base.problem(plan) is None
    assert base.since(plan) == {"s1.ctl": {"x": "g1", "y": "g2", "z": "g3"}}
    assert base.link().file == "base.tzb" and len(base.link().digest) == 32


@pytest.mark.parametrize("specs, tracking, problem", [
    (["p=x:64K+64K"], {"x": "g1"}, "holds other datasets"),
    (["p=x:0+64K"], None, "records no change-tracking generation (a tzero without"),
    (["p=x:0+64K"], {"y": "g1"}, "records no change-tracking generation for export 'x'"),
])
def test_base_that_cannot_be_counted_from_says_why(tmp_path, specs, tracking, problem):
    base = BaseBackup.read(base_file(tmp_path, ["p=x:0+64K"], tracking), str(tmp_path / "inc.tzb"))
    assert problem in base.problem(make_plan([parse_dataset(s) for s in specs], MEMBERS))


def test_base_read_refuses_stdin_its_own_output_and_an_incomplete_file(tmp_path):
    path = base_file(tmp_path, ["p=x:0+64K"], {"x": "g1"})
    with pytest.raises(UsageError, match="not standard input"):
        BaseBackup.read("-", "inc.tzb")
    with pytest.raises(UsageError, match="is the backup file -o would replace"):
        BaseBackup.read(path, path)
    with open(path, "rb") as f:
        (tmp_path / "cut.tzb").write_bytes(f.read()[:-10])
    with pytest.raises(BackupFormatError, match="cut.tzb: trailer"):
        BaseBackup.read(str(tmp_path / "cut.tzb"), "inc.tzb")


def test_base_elsewhere_than_the_output_is_noted(tmp_path):
    base = BaseBackup.read(base_file(tmp_path, ["p=x:0+64K"], {"x": "g1"}), "inc.tzb")
    (tmp_path / "other").mkdir()
    assert base.placement_note(str(tmp_path / "inc.tzb")) is None and base.placement_note("-") is None
    assert "--base" in base.placement_note(str(tmp_path / "other" / "inc.tzb"))
