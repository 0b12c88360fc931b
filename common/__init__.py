"""The lowest layer of tzero: what the plugin and the controller both need, importing
nothing else of the project.

    protocol     the control protocol's vocabulary (ops, fields, error codes), its defaults
                 and the failure policy both sides name
    concordance  the byte layout of the shared concordance: chunk states, header, DEAD flag
    units        the size grammar users type (64K, 1.5G, 512MiB) and human-readable sizes
    fileio       positional I/O that never stops short, zero-fill, unlinked scratch files,
                 files created private (0600); Buffer, WritableBuffer: the bytes-like types
    blockdev     system calls Python's os lacks: fallocate modes, block-device ioctls
    arena        large buffers on transparent huge pages

The nbdkit plugin imports this package inside nbdkit's embedded Python, so it depends on
the standard library and cffi only.
"""
