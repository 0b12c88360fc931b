"""The one place errors become exit statuses: each kind of failure has its own, and a bug
is one line that says how to see the traceback."""

import errno

import pytest

from controller.cli import main as cli
from controller.errors import (
    EXIT_BUG,
    EXIT_DAMAGED,
    EXIT_FAILURE,
    EXIT_RETRY,
    EXIT_USAGE,
    BackupFormatError,
    SessionAborted,
    SubsystemError,
    TzeroError,
    UsageError,
    os_error,
)


def run_raising(monkeypatch, capsys, error, *extra):
    """Run `tzero verify x` with a verify that raises ERROR; returns (status, stderr)."""
    import controller.cli.verify as verify

    def fail(args):
        raise error

    monkeypatch.setattr(verify, "run", fail)
    code = cli.main([*extra, "verify", "x"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("error, status", [
    (UsageError("bad"), EXIT_USAGE),
    (SubsystemError("gone"), EXIT_RETRY),
    (SessionAborted("lease"), EXIT_RETRY),
    (BackupFormatError("flipped"), EXIT_DAMAGED),
    (TzeroError("plain"), EXIT_FAILURE),
])
def test_main_each_kind_of_error_has_its_own_exit_status(monkeypatch, capsys, error, status):
    code, err = run_raising(monkeypatch, capsys, error)
    assert code == status and err == f"tzero: {error.message}\n"


def test_main_a_bug_is_one_line_that_says_how_to_see_the_traceback(monkeypatch, capsys):
    code, err = run_raising(monkeypatch, capsys, KeyError("oops"))
    assert code == EXIT_BUG and err.count("\n") == 1
    assert "internal error: KeyError" in err and "--debug" in err


def test_main_debug_shows_the_traceback_instead(monkeypatch, capsys):
    with pytest.raises(KeyError):
        run_raising(monkeypatch, capsys, KeyError("oops"), "--debug")


def test_main_help_lists_every_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for status in ("0", "1", "2", "3", "4", "70"):
        assert f"\n  {status} " in out


def test_os_error_names_the_operation_and_the_path():
    e = os_error(OSError(errno.ENOSPC, "No space left on device"), "writing the spill file /x")
    assert e.message == "writing the spill file /x: no space left on device"
