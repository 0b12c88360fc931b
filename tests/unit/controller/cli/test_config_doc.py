"""docs/config.md lists every setting of every command, with its variables."""

import os

from controller.cli.main import build_parser
from controller.cli.manpage import subparsers

from helpers import REPO


def test_config_doc_lists_every_setting_with_its_variables():
    with open(os.path.join(REPO, "docs", "config.md")) as f:
        rows = [line for line in f if line.startswith("| ") and "`" in line]
    for name, parser in subparsers(build_parser()).items():
        for s in parser.settings:
            row = [r for r in rows if f"| `{s.key}` |" in r and name in r.split("|")[1]]
            assert row, f"{name} {s.key} is not in docs/config.md"
            assert all(f"`{e}`" in row[0] for e in s.env), f"{name} {s.key}: variables {s.env}"
