"""Opening libnbd handles on a subsystem's exports, the way every reader of a view wants them."""

from typing import TypedDict

import nbd


class NbdAddress(TypedDict, total=False):
    """Where a subsystem serves NBD, as its hello says: a unix socket, or a loopback TCP port."""

    socket: str
    port: int


def connect(where: NbdAddress, export: str) -> nbd.NBD:
    """A libnbd handle on EXPORT of the subsystem serving at WHERE ({"socket"} or {"port"})."""
    h = nbd.NBD()
    # libnbd zeroes every read buffer before reading into it unless told not to: a whole
    # extra pass over every byte backed up. A failed read abandons the backup, so what a
    # failed read leaves in the buffer is never looked at.
    h.set_pread_initialize(False)
    h.set_export_name(export)
    if "socket" in where:
        h.connect_unix(where["socket"])
    else:
        h.connect_tcp("127.0.0.1", str(where["port"]))
    return h
