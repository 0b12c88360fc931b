"""Parsing sizes the way users write them: 64K, 256M, 1G, 4096."""

import re

from controller.errors import UsageError

_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


def parse_size(text: str, what: str = "size") -> int:
    """Return bytes for TEXT: a whole number with an optional binary suffix K, M, G, T."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"{what}: {text!r} is not a size (examples: 4096, 64K, 256M, 1G)")
    return int(m.group(1)) << _SHIFT[m.group(2).upper()]
