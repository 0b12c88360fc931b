"""Parsing sizes the way users write them: 64K, 256M, 1G, 4096.

One grammar for the whole project: the plugin's parser, with its error turned
into a usage error. And the type every command's `register(subparsers)` takes.
"""

import argparse
from typing import TypeAlias

from controller.errors import UsageError
from nbdplugin.config import ConfigError
from nbdplugin.config import parse_size as _parse_size

# What main.py hands to every command's register(): add_parser makes its ArgumentParser.
# A string: the class is generic to type checkers only.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def parse_size(text: str, what: str = "size") -> int:
    """Return bytes for TEXT: a whole number with an optional binary suffix K, M, G, T (and B or iB)."""
    try:
        return _parse_size(text, what)
    except ConfigError as e:
        raise UsageError(str(e)) from None
