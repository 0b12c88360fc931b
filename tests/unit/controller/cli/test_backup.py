"""tzero backup's own checks: everything that can be refused is refused before any subsystem
is asked for anything."""

import os
import subprocess

import pytest

from common.protocol import MAX_DEADLINE_MS, MAX_LEASE_MS, MIN_DEADLINE_MS, MIN_LEASE_MS
from controller.cli import main as cli
from controller.errors import EXIT_USAGE


def run(capsys, *argv):
    code = cli.main(list(map(str, argv)))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("option, value", [
    ("--freeze-deadline", MAX_DEADLINE_MS + 1), ("--freeze-deadline", 10 ** 400), ("--freeze-deadline", 0),
    ("--freeze-deadline", MIN_DEADLINE_MS - 1), ("--lease", MAX_LEASE_MS + 1), ("--lease", MIN_LEASE_MS - 1),
    ("--lease", 10 ** 12), ("--lease", -1),
])
def test_backup_deadline_and_lease_beyond_the_protocols_bounds_are_usage_errors(tmp_path, capsys, option, value):
    code, err = run(capsys, "backup", "-s", tmp_path / "nowhere.ctl", "-o", tmp_path / "b.tzb", option, value)
    assert code == EXIT_USAGE and err.count("\n") == 1 and option in err
    assert "nowhere.ctl" not in err, "refused before any subsystem was asked"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("spill", ["missing", "a-file"])
def test_backup_unusable_spill_dir_is_refused_before_any_subsystem_is_asked(tmp_path, capsys, spill):
    (tmp_path / "a-file").write_bytes(b"")
    code, err = run(capsys, "backup", "-s", tmp_path / "nowhere.ctl", "-o", tmp_path / "b.tzb",
                    "--spill-dir", tmp_path / spill)
    assert code == EXIT_USAGE and err.count("\n") == 1 and "--spill-dir" in err
    assert "nowhere.ctl" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_backup_read_only_spill_dir_is_refused_before_any_subsystem_is_asked(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        code, err = run(capsys, "backup", "-s", tmp_path / "nowhere.ctl", "-o", tmp_path / "b.tzb",
                        "--spill-dir", ro)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert code == EXIT_USAGE and "--spill-dir" in err and "read-only" in err.lower()
