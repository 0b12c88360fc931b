"""NBD plumbing: libnbd handles, URIs, the userspace handshake, the kernel NBD driver, and
running nbdkit in the foreground.

    connect        libnbd handles on a subsystem's exports
    uri            NBD URIs and /dev/nbdN names
    handshake      the fixed-newstyle negotiation, ending in the transmission phase
    kernel         generic netlink: attach a negotiated socket as /dev/nbdN, detach
    nbdkit_runner  one supervision of nbdkit for `tzero serve` and `tzero serve-backup`
"""
