"""The size and duration grammars users type, stated once for the whole project, and sizes,
rates and durations for humans.

    SIZE  = NUMBER [UNIT]
    NUMBER: a whole or decimal number in ASCII digits (4096, 1.5)
    UNIT:   K, M, G, T, P, optionally followed by B or iB, any case (64k, 512MiB, 1.5G, 2TB);
            every unit is a power of 1024; none means bytes

A size that is not a whole number of bytes (1.5K is 1536, fine; 0.3K is not) is refused.
    DURATION = NUMBER [ms | s | m | h]
    NUMBER: a whole or decimal number; none means milliseconds (2000 is 2 s), so the plain
            numbers that --freeze-deadline and --lease always took keep their meaning

Parsers raise ValueError with a message naming what was given; the callers turn it into
their own error (the plugin's ConfigError, the command line's usage error).
"""

import re
from decimal import Decimal

# ASCII: digits are 0-9 only (a bare \d also takes other scripts' digits, which int() reads) and
# the units' letters are those letters only (Unicode case folding matches the Kelvin sign to K).
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([KMGTP]?)(?:I?B)?", re.IGNORECASE | re.ASCII)
_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?", re.IGNORECASE | re.ASCII)
_MS_PER = {"": 1, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
SIZE_GRAMMAR = "a number with an optional unit K, M, G, T (powers of 1024; B or iB may follow), e.g. 64K, 512MiB, 1.5G"

DURATION_GRAMMAR = "a number with an optional unit ms, s, m, h (none means milliseconds), e.g. 500ms, 2s, 1m"


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


def parse_duration(text: str, what: str = "duration") -> int:
    """Whole milliseconds for TEXT; ValueError("WHAT: ...") if it is not a duration or rounds to 0."""
    m = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{what}: {text!r} is not a duration ({DURATION_GRAMMAR})")
    # Exact: a float would overflow on a number of hundreds of digits (inf, then round raises).
    ms = round(Decimal(m.group(1)) * _MS_PER[(m.group(2) or "").lower()])
    if ms <= 0:
        raise ValueError(f"{what}: {text!r} must be at least 1 ms")
    return ms


def exact_size(n: int) -> str:
    """N bytes for a message where the exact count matters: '1.5 GiB (1610612736 bytes)'."""
    return f"{n} bytes" if n < 1024 else f"{human_size(n)} ({n} bytes)"


def human_rate(bytes_per_s: float) -> str:
    """A rate as people read it: '310 MiB/s'."""
    return f"{human_size(int(bytes_per_s))}/s"


def human_duration(seconds: float) -> str:
    """SECONDS as people read them: '0.4 s', '42 s', '3 min 05 s', '2 h 07 min'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
