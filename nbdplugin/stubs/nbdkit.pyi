"""The `nbdkit` module that nbdkit's Python plugin puts in its embedded interpreter (it exists
nowhere else), as far as tzero's plugins use it. `man nbdkit-python-plugin` is the reference.
"""

def set_error(err: int, /) -> None:
    """Record errno ERR as the reason for the exception the callback is about to raise."""

def export_name() -> str:
    """The export name the client asked for (untrusted: a client may send anything)."""

def debug(msg: str, /) -> None:
    """Log MSG to stderr or syslog when nbdkit runs verbose (-v)."""

# What thread_model() returns: how far nbdkit may run callbacks concurrently.
THREAD_MODEL_SERIALIZE_CONNECTIONS: int
THREAD_MODEL_SERIALIZE_ALL_REQUESTS: int
THREAD_MODEL_SERIALIZE_REQUESTS: int
THREAD_MODEL_PARALLEL: int

# Bits of the flags argument of pwrite, trim, zero and extents.
FLAG_MAY_TRIM: int  # zero: punching a hole is allowed
FLAG_FUA: int  # force unit access: the data is on stable storage before the reply
FLAG_REQ_ONE: int  # extents: one extent is enough
FLAG_FAST_ZERO: int  # zero: fail rather than be slower than writing zeros

# What can_fua() returns.
FUA_NONE: int  # FUA is not offered
FUA_EMULATE: int  # nbdkit emulates FUA with a flush
FUA_NATIVE: int  # the plugin honours FLAG_FUA itself

# Bits of the type of each (offset, length, type) extent.
EXTENT_HOLE: int  # not allocated
EXTENT_ZERO: int  # reads as zeros
