"""tzero backup's own checks: everything that can be refused is refused before any subsystem
is asked for anything."""

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
