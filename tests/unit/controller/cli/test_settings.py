"""Defaults an admin sets once: the command line wins over the environment, which wins over
the config file, which wins over the built-in default; a mistake in the file is one line."""

import pytest

from controller.cli import main as cli
from controller.cli import settings
from controller.cli.main import COMMANDS, build_parser
from controller.errors import EXIT_USAGE, UsageError


def backup_args(argv, environ, config=None):
    """`tzero backup ARGV` parsed, its settings filled from ENVIRON and CONFIG (text)."""
    parser = build_parser("backup")
    args = parser.parse_args(["backup", "-o", "b.tzb", *argv])
    env = dict(environ)
    if config is not None:
        env["TZERO_CONFIG"] = config
    settings.apply(args, args.parser, COMMANDS, env)
    return args


@pytest.fixture
def conf(tmp_path):
    def write(text):
        path = tmp_path / "tzero.conf"
        path.write_text(text)
        return str(path)
    return write


def test_settings_built_in_defaults_when_nothing_else_says(conf):
    args = backup_args([], {}, conf(""))
    assert (args.host_memory, args.lease, args.freeze_deadline, args.spill_dir) == ("256M", "30s", "2s", None)
    assert args.controls == [] and set(args.setting_sources.values()) == {"default"}


def test_settings_the_config_file_sets_defaults_lists_split_on_white_space(conf):
    path = conf("[backup]\nsubsystems = /run/s1.ctl\n  /run/s2.ctl\nhost-memory = 1G\n")
    args = backup_args([], {}, path)
    assert args.controls == ["/run/s1.ctl", "/run/s2.ctl"] and args.host_memory == "1G"
    assert (args.setting_sources["subsystems"], args.setting_sources["host-memory"]) == (path, path)
    assert args.setting_sources["lease"] == "default"


def test_settings_the_environment_wins_over_the_file(conf):
    args = backup_args([], {"TZERO_HOST_MEMORY": "2G", "TZERO_SUBSYSTEMS": "/a.ctl /b.ctl"},
                       conf("[backup]\nhost-memory = 1G\nsubsystems = /c.ctl\n"))
    assert args.host_memory == "2G" and args.controls == ["/a.ctl", "/b.ctl"]
    assert args.setting_sources["host-memory"] == "$TZERO_HOST_MEMORY"


def test_settings_the_command_line_wins_over_both(conf):
    args = backup_args(["--host-memory", "64M", "-s", "/x.ctl"], {"TZERO_HOST_MEMORY": "2G"},
                       conf("[backup]\nhost-memory = 1G\nsubsystems = /c.ctl\n"))
    assert args.host_memory == "64M" and args.controls == ["/x.ctl"]
    assert args.setting_sources["host-memory"] == "command line"


def test_settings_serve_side_dir_falls_back_to_the_spill_dir_variable(tmp_path):
    parser = build_parser("serve")
    args = parser.parse_args(["serve", "a=/dev/null"])
    settings.apply(args, args.parser, COMMANDS, {"TZERO_SPILL_DIR": "/var/tmp", "TZERO_CONFIG": "/dev/null"})
    assert args.side_dir == "/var/tmp" and args.exports == ["a=/dev/null"]


def test_settings_serve_exports_may_come_from_the_file(conf):
    parser = build_parser("serve")
    args = parser.parse_args(["serve"])
    settings.apply(args, args.parser, COMMANDS, {"TZERO_CONFIG": conf("[serve]\nexports = a=/x.img b=/y.img\n")})
    assert args.exports == ["a=/x.img", "b=/y.img"]


@pytest.mark.parametrize("text, said", [
    ("[backup]\nhost-memroy = 1G\n", "[backup] host-memroy: backup has no such setting"),
    ("[backpu]\nhost-memory = 1G\n", "[backpu]: no such command"),
    ("[DEFAULT]\nspill-dir = /x\n", "[DEFAULT] is not used"),
    ("host-memory = 1G\n", "File contains no section headers"),
])
def test_settings_a_mistake_in_the_file_is_a_usage_error_naming_it(conf, text, said):
    path = conf(text)
    with pytest.raises(UsageError) as e:
        backup_args([], {}, path)
    assert e.value.message.startswith(f"config file {path}: ") and said in e.value.message


def test_settings_a_config_file_named_but_missing_is_a_usage_error(tmp_path, capsys):
    code = cli.main(["--config", str(tmp_path / "nope.conf"), "verify", "x.tzb"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and err == f"tzero: config file {tmp_path / 'nope.conf'}: No such file or directory\n"


def test_settings_another_commands_section_is_left_alone(conf):
    args = backup_args([], {}, conf("[serve]\nside-memory = 1G\nno-such-key = 3\n[backup]\nlease = 10s\n"))
    assert args.lease == "10s"
