"""Parsing sizes the way users write them: 64K, 256M, 1G, 4096.

One grammar for the whole project: the plugin's parser, with its error turned
into a usage error.
"""

from controller.errors import UsageError
from nbdplugin.config import ConfigError
from nbdplugin.config import parse_size as _parse_size


def parse_size(text: str, what: str = "size") -> int:
    """Return bytes for TEXT: a whole number with an optional binary suffix K, M, G, T (and B or iB)."""
    try:
        return _parse_size(text, what)
    except ConfigError as e:
        raise UsageError(str(e)) from None
