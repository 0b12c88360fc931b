"""The size grammar users type, stated once for the whole project, and sizes for humans.

    SIZE  = NUMBER [UNIT]
    NUMBER: a whole or decimal number (4096, 1.5)
    UNIT:   K, M, G, T, P, optionally followed by B or iB, any case (64k, 512MiB, 1.5G, 2TB);
            every unit is a power of 1024; none means bytes

A size that is not a whole number of bytes (1.5K is 1536, fine; 0.3K is not) is refused.
Parsers raise ValueError with a message naming what was given; the callers turn it into
their own error (the plugin's ConfigError, the command line's usage error).
"""

import re

_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([KMGTP]?)(?:I?B)?", re.IGNORECASE)
_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
SIZE_GRAMMAR = "a number with an optional unit K, M, G, T (powers of 1024; B or iB may follow), e.g. 64K, 512MiB, 1.5G"


def parse_size(text: str, what: str = "size") -> int:
    """Bytes for TEXT; ValueError("WHAT: ...") if it is not a size."""
    m = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{what}: {text!r} is not a size ({SIZE_GRAMMAR})")
    number, unit = m.group(1), m.group(2).upper()
    if "." not in number:
        return int(number) << _SHIFT[unit]
    whole, _, fraction = number.partition(".")
    scale: int = 10 ** len(fraction)  # int ** int is typed Any: a negative power would be a float
    scaled = (int(whole or "0") * scale + int(fraction)) << _SHIFT[unit]
    value, rest = divmod(scaled, scale)
    if rest:
        raise ValueError(f"{what}: {text!r} is not a whole number of bytes")
    return value


def human_size(n: int) -> str:
    """N bytes as people read them: '512 B', '64 KiB', '1.5 GiB' (three significant digits)."""
    if n < 1024:
        return f"{n} B"
    for shift, unit in ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            value = n / (1 << shift)
            text = f"{value:.3g}" if value < 1000 else f"{value:.0f}"
            return f"{text} {unit}"
    raise AssertionError("unreachable: n >= 1024 matched KiB")
