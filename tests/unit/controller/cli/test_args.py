"""Help that teaches, and options that work where users put them: every command's --help has a
description, examples and the exit statuses; defaults carry units; global options go before or
after the command; sizes and durations are read the way users type them."""

import pytest

from controller.cli import main as cli
from controller.cli.main import COMMANDS, build_parser
from controller.errors import EXIT_RETRY, EXIT_USAGE


def help_of(capsys, *words):
    with pytest.raises(SystemExit) as e:
        cli.main([*words, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_every_command_has_a_description_examples_and_exit_statuses(capsys, command):
    text = help_of(capsys, command)
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 25, "a paragraph, not a phrase"
    examples = [line for line in text.split("examples:\n")[1].split("\n\n")[0].splitlines()
                if not line.startswith("      ")]
    assert len(examples) >= 2 and any(line.startswith(f"  tzero {command} ") for line in examples)
    assert "exit status:" in text and "\n  4   " in text


def test_help_of_tzero_states_the_size_and_duration_grammars_once(capsys):
    text = help_of(capsys)
    assert "A SIZE is a number with an optional unit K, M, G, T" in text and "1.5G" in text
    assert "A DURATION is a number with an optional unit ms, s, m, h" in text and "500ms" in text


@pytest.mark.parametrize("command", ["restore", "verify", "ls", "serve-backup"])
def test_help_commands_that_read_a_backup_call_it_backup(capsys, command):
    usage = help_of(capsys, command).split("\n\n")[0]
    assert "BACKUP" in usage and "OUT" not in usage


def test_help_of_backup_states_defaults_with_units_and_their_variables(capsys):
    text = " ".join(help_of(capsys, "backup").split())
    for said in ("default 256M; $TZERO_HOST_MEMORY", "default 2s; $TZERO_FREEZE_DEADLINE",
                 "default 30s; $TZERO_LEASE", "default $TMPDIR, else /tmp; $TZERO_SPILL_DIR"):
        assert said in text


@pytest.mark.parametrize("argv", [
    ["--debug", "-q", "verify", "x.tzb"],
    ["verify", "x.tzb", "--debug", "-q"],
    ["--debug", "verify", "-q", "x.tzb"],
])
def test_global_options_work_before_or_after_the_command(argv):
    args = build_parser("verify").parse_args(argv)
    assert args.debug is True and args.quiet is True and args.verbose is False


def test_global_options_default_to_off_when_not_given():
    args = build_parser("verify").parse_args(["verify", "x.tzb"])
    assert (args.debug, args.quiet, args.verbose, args.config) == (False, False, False, None)


def test_global_options_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser("verify").parse_args(["verify", "-q", "-v", "x.tzb"])
    assert e.value.code == EXIT_USAGE


def test_main_finds_the_command_after_the_value_of_config(tmp_path, capsys):
    (tmp_path / "t.conf").write_text("")
    code = cli.main(["--config", str(tmp_path / "t.conf"), "verify", str(tmp_path / "missing.tzb")])
    assert code == 1 and "cannot open" in capsys.readouterr().err


def run_backup(capsys, tmp_path, *options):
    code = cli.main(["backup", "-s", str(tmp_path / "none.ctl"), "-o", str(tmp_path / "b.tzb"), *options])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("option, value", [
    ("--lease", "45000"), ("--lease", "45s"), ("--freeze-deadline", "500ms"), ("--freeze-deadline", "1.5s"),
    ("--host-memory", "1.5G"), ("--host-memory", "512MiB"), ("--host-memory", "65536k"),
])
def test_backup_reads_sizes_and_durations_as_users_type_them(capsys, tmp_path, option, value):
    code, err = run_backup(capsys, tmp_path, option, value)
    assert code == EXIT_RETRY and "none.ctl" in err, "past the arguments, to the unreachable subsystem"


@pytest.mark.parametrize("option, value, said", [
    ("--lease", "2 days", "--lease: '2 days' is not a duration"),
    ("--freeze-deadline", "0", "--freeze-deadline: '0' must be at least 1 ms"),
    ("--host-memory", "lots", "--host-memory: 'lots' is not a size"),
    ("--label", "a\nb", "--label must be 1 to 64 characters of printable text"),
])
def test_backup_refuses_a_bad_value_in_one_line_before_connecting(capsys, tmp_path, option, value, said):
    code, err = run_backup(capsys, tmp_path, option, value)
    assert code == EXIT_USAGE and err.count("\n") == 1 and said in err


def test_backup_without_a_subsystem_is_a_usage_error_naming_the_variable(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TZERO_SUBSYSTEMS", raising=False)
    monkeypatch.setenv("TZERO_CONFIG", str(tmp_path / "empty.conf"))
    (tmp_path / "empty.conf").write_text("")
    code = cli.main(["backup", "-o", str(tmp_path / "b.tzb")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "$TZERO_SUBSYSTEMS" in err and err.count("\n") == 1
