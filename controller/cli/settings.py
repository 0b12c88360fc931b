"""Defaults an admin sets once for a host: the command line wins over the environment, which
wins over the config file, which wins over the built-in default.

The config file is INI (docs/config.md): a section per command, keys named like the long
options without their dashes:

    [backup]
    subsystems = /run/tzero/s1.ctl /run/tzero/s2.ctl
    host-memory = 1G
    spill-dir = /var/tmp

It is --config FILE, else $TZERO_CONFIG, else /etc/tzero.conf when that exists. A file named
explicitly must exist; an unknown section, or an unknown key in the section of the command
being run, is a usage error, so a typo is not silently ignored (a command checks only its own
section: checking all would import every command, which is slow in a VM guest). List settings
(subsystems, exports) are separated by white space.
"""

import argparse
import configparser
import os
from collections.abc import Iterable, Mapping

from controller.cli.args import Setting, TzeroParser
from controller.errors import UsageError

SYSTEM_CONFIG = "/etc/tzero.conf"


def config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The config file to read (one the user named must exist), or None."""
    named = getattr(args, "config", None) or environ.get("TZERO_CONFIG")
    if named:
        return str(named)
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else None


def load(path: str, parser: TzeroParser, commands: Iterable[str]) -> configparser.ConfigParser:
    """PATH read and checked: sections name COMMANDS, PARSER's section names its settings only.
    UsageError naming the file (and the line, for a syntax error)."""
    cp = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as f:
            cp.read_file(f)
    except OSError as e:
        raise UsageError(f"config file {path}: {e.strerror}") from None
    except configparser.Error as e:
        raise UsageError(f"config file {path}: {' '.join(str(e).split())}") from None
    if cp.defaults():
        raise UsageError(f"config file {path}: [DEFAULT] is not used; put each setting in its command's section")
    known = sorted(commands)
    for section in cp.sections():
        if section not in known:
            raise UsageError(f"config file {path}: [{section}]: no such command ({', '.join(known)})")
    section = _command(parser)
    keys = {s.key for s in parser.settings}
    if cp.has_section(section):
        for key in cp[section]:
            if key not in keys:
                raise UsageError(f"config file {path}: [{section}] {key}: {section} has no such setting "
                                 f"({', '.join(sorted(keys)) or 'none'})")
    return cp


def _command(parser: TzeroParser) -> str:
    return parser.prog.split()[-1]


def apply(args: argparse.Namespace, parser: TzeroParser, commands: Iterable[str],
          environ: Mapping[str, str] = os.environ) -> None:
    """Fill every setting of PARSER's command that the command line left out (None) from ENVIRON,
    then the config file, then its default; record in args.setting_sources where each came from."""
    path = config_path(args, environ)
    file = load(path, parser, commands) if path else None
    section = _command(parser)
    sources: dict[str, str] = {}
    for s in parser.settings:
        if getattr(args, s.dest) not in (None, []):  # a positional list given nothing is []
            sources[s.key] = "command line"
            continue
        value, source = _lookup(s, environ, file, section, path)
        if value is not None:
            sources[s.key] = source
            setattr(args, s.dest, value.split() if s.is_list else value)
        elif s.is_list:
            setattr(args, s.dest, [])
    args.setting_sources = sources


def _lookup(s: Setting, environ: Mapping[str, str], file: configparser.ConfigParser | None, section: str,
            path: str | None) -> tuple[str | None, str]:
    for name in s.env:
        if environ.get(name, "").strip():
            return environ[name], f"${name}"
    if file is not None:
        value = file.get(section, s.key, fallback=None)
        if value is not None and value.strip():
            return value, f"{path}"
    return s.default, "default"
