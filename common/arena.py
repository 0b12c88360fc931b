"""Large buffers that the kernel may back with transparent huge pages.

A bulk copy into memory on huge pages takes far fewer page faults and TLB misses than one
into ordinary 4 KiB pages, so the controller's read buffers are such an arena (the side
store's memory slots are a memfd, advised the same way: nbdplugin/slots.py).
"""

import mmap


def huge_page_arena(size: int) -> mmap.mmap:
    """An anonymous mapping of SIZE bytes (at least a page), advised for transparent huge pages
    where the kernel offers them; its pages are touched only when used."""
    arena = mmap.mmap(-1, max(size, mmap.PAGESIZE))
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            arena.madvise(advice)
        except OSError:
            pass  # no THP here: ordinary pages do
    return arena
