"""Man pages and shell completion come from the same parser as --help: they build, `man -l`
renders them, and bash completes commands and option values with the script."""

import os
import shutil
import subprocess

import pytest

from controller.cli import manpage
from controller.cli.main import COMMANDS

from helpers import REPO


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    d = tmp_path_factory.mktemp("man1")
    manpage.write(str(d))
    return d


def test_manpage_one_page_for_tzero_and_one_per_command(pages):
    assert sorted(os.listdir(pages)) == sorted(["tzero.1", *(f"tzero-{c}.1" for c in COMMANDS)])


@pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) is needed; make setup installs it")
@pytest.mark.parametrize("name", ["tzero", "tzero-backup", "tzero-restore", "tzero-serve"])
def test_manpage_renders_with_man_and_has_the_sections_users_look_for(pages, name):
    text = subprocess.run(["man", "-l", str(pages / f"{name}.1")], capture_output=True, text=True, check=True,
                          env={**os.environ, "MANWIDTH": "100"}).stdout
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXAMPLES", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{section}\n" in text
    assert f"{name} - " in text and "warning:" not in text


def test_manpage_of_backup_lists_its_options_examples_and_variables(pages):
    page = (pages / "tzero-backup.1").read_text()
    assert "\\fB\\-\\-host\\-memory\\fR \\fISIZE\\fR" in page
    assert "tzero backup \\-s /run/s1.ctl \\-o nightly.tzb" in page
    assert ".SH ENVIRONMENT" in page and "\\fBTZERO_HOST_MEMORY\\fR" in page


def test_manpage_installed_by_make_setup_is_current(pages):
    installed = os.path.join(REPO, ".venv", "share", "man", "man1", "tzero-backup.1")
    if not os.path.exists(installed):
        pytest.skip("make setup has not built the man pages in this checkout")
    with open(installed) as f:
        assert f.read() == (pages / "tzero-backup.1").read_text()


@pytest.fixture(scope="module")
def completion(tmp_path_factory):
    pytest.importorskip("shtab", reason="shtab makes the completion script (make setup installs it)")
    from controller.cli.completion import script

    path = tmp_path_factory.mktemp("completion") / "tzero.bash"
    path.write_text(script("bash"))
    return path


def complete(script_path, *words):
    """What bash offers for the last of WORDS after `tzero`."""
    line = " ".join(["tzero", *words])
    code = (f"source {script_path}; COMP_WORDS=(tzero {' '.join(repr(w) for w in words)}); "
            f"COMP_CWORD={len(words)}; COMP_LINE={line!r}; COMP_POINT={len(line)}; "
            "$(complete -p tzero | sed 's/.* -F \\([^ ]*\\) .*/\\1/') tzero; printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True, cwd=script_path.parent)
    return out.stdout.split()


def test_completion_loads_in_bash_and_completes_commands(completion):
    assert complete(completion, "") == COMMANDS
    assert complete(completion, "se") == ["serve", "serve-backup"]


def test_completion_completes_options_and_their_choices(completion):
    assert "--host-memory" in complete(completion, "backup", "--ho")
    assert complete(completion, "backup", "--progress", "") == ["auto", "always", "plain", "json", "never"]


def test_completion_completes_a_backup_file_name(completion):
    (completion.parent / "nightly.tzb").write_bytes(b"")
    assert complete(completion, "verify", "nigh") == ["nightly.tzb"]
