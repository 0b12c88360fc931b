"""A checkable live workload, for the demo, the tests and the benchmarks.

Dependent writers: each waits for its write to complete before issuing the next.

Writer w owns the 4 KiB blocks whose index % WRITERS == w on every target, so
writers never overwrite each other, and every block it writes is stamped with
(writer, sequence) and filled from that stamp. A time-zero backup must contain,
for each writer, exactly a prefix of its writes: `prefix_lengths` finds which.

A target is an export, or a StripedVolume: then offsets are the volume's logical
addresses, and the writer puts each block where dm-striped would.
"""

import hashlib
import os
import random
import struct
import threading
import time
from collections.abc import Callable, Sequence

import nbd

BLOCK = 4096


def make_image(path: str | os.PathLike[str], size: int, seed: int, zero_every: int = 5) -> bytes:
    """An image of SIZE bytes: random 64 KiB pieces, every ZERO_EVERY-th left as a hole."""
    rnd = random.Random(seed)
    piece = 64 << 10
    content = bytearray(size)
    for off in range(0, size, piece):
        if (off // piece) % zero_every != 0:
            n = min(piece, size - off)
            content[off:off + n] = rnd.randbytes(n)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, piece):
            chunk = content[off:off + piece]
            if any(chunk):
                f.seek(off)
                f.write(chunk)
    return bytes(content)


def stamped_block(writer: int, seq: int) -> bytes:
    head = struct.pack("<4sII", b"TZW1", writer, seq)
    fill = hashlib.shake_128(head).digest(BLOCK - len(head))
    return head + fill


class StripedVolume:
    """A volume striped by CHUNK over LEGS [(socket, export)] of LEG_SIZE bytes each: logical
    chunk c is on leg c % n at (c // n) * CHUNK. Written apart from controller/backup/layout.py on
    purpose, so the tests check the backup's layout against an independent one."""

    def __init__(self, chunk: int, legs: list[tuple[str, str]], leg_size: int):
        assert chunk % BLOCK == 0, "a stamped block never straddles two legs"
        self.chunk = chunk
        self.legs = legs
        self.size = len(legs) * (leg_size // chunk * chunk)

    def locate(self, offset: int) -> tuple[int, int]:
        """(leg index, offset on the leg) of logical OFFSET."""
        c, within = divmod(offset, self.chunk)
        return c % len(self.legs), (c // len(self.legs)) * self.chunk + within


Target = tuple[str, str] | StripedVolume  # (where the subsystem serves, export name), or a volume over several
# (where, export name) -> a connected handle; called in the writer's own thread, so it may first
# move that thread into another network namespace.
Opener = Callable[[str, str], nbd.NBD]


def connect_unix(socket_path: str, export: str) -> nbd.NBD:
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(socket_path)
    return h


class DependentWriter(threading.Thread):
    def __init__(self, index: int, writers: int, targets: Sequence[Target], sizes: list[int], seed: int,
                 opener: Opener = connect_unix):
        """TARGETS: [(where, export name) or StripedVolume], written in a seeded random order; OPENER
        connects to one (default: WHERE is a unix socket)."""
        super().__init__(name=f"writer-{index}", daemon=True)
        self.opener = opener
        self.index = index
        self.writers = writers
        self.targets = targets
        self.sizes = sizes
        self.seed = seed
        self.log: list[tuple[int, int, bytes, float, float]] = []  # (target, offset, data, submitted, acked)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(self.seed)
        handles: list[list[nbd.NBD]] = []  # per target, its handles: one per leg for a volume
        try:
            for target in self.targets:
                legs = target.legs if isinstance(target, StripedVolume) else [target]
                handles.append([])
                for address, name in legs:
                    handles[-1].append(self.opener(address, name))
            seq = 0
            while not self.stop.is_set():
                t = rnd.randrange(len(self.targets))
                blocks = self.sizes[t] // BLOCK
                block = rnd.randrange(self.index, blocks, self.writers)
                data = stamped_block(self.index, seq)
                target = self.targets[t]
                leg, where = target.locate(block * BLOCK) if isinstance(target, StripedVolume) else (0, block * BLOCK)
                submitted = time.time()
                handles[t][leg].pwrite(data, where)
                self.log.append((t, block * BLOCK, data, submitted, time.time()))
                seq += 1
        except BaseException as e:  # reported by the test, which joins us
            self.error = e
        finally:
            for hs in handles:
                for h in hs:
                    try:
                        h.shutdown()
                    except nbd.Error:
                        pass  # the server is gone (a killed subsystem): self.error says so already


def prefix_lengths(writer: DependentWriter, initial: list[bytes], restored: list[bytes]) -> list[int]:
    """Every k such that RESTORED equals INITIAL plus the writer's first k writes, on its own blocks."""
    expected: dict[tuple[int, int], bytes] = {}  # (target, offset) -> bytes it should hold for the current k
    mismatched: set[tuple[int, int]] = set()
    for t, off, *_ in writer.log:
        key = (t, off)
        if key not in expected:
            expected[key] = initial[t][off:off + BLOCK]
            if restored[t][off:off + BLOCK] != expected[key]:
                mismatched.add(key)
    found = [0] if not mismatched else []
    for k, (t, off, data, *_) in enumerate(writer.log, start=1):
        key = (t, off)
        if restored[t][off:off + BLOCK] == data:
            mismatched.discard(key)
        else:
            mismatched.add(key)
        if not mismatched:
            found.append(k)
    return found


def untouched_blocks_equal(writers: list[DependentWriter], initial: list[bytes], restored: list[bytes]) -> bool:
    """Blocks no writer wrote must be exactly their initial content."""
    written = {(t, off) for w in writers for t, off, *_ in w.log}
    for t, (a, b) in enumerate(zip(initial, restored, strict=False)):
        if len(a) != len(b):
            return False
        for off in range(0, len(a), BLOCK):
            if (t, off) not in written and a[off:off + BLOCK] != b[off:off + BLOCK]:
                return False
    return True


def time_zero_problems(writers: list[DependentWriter], initial: list[bytes], restored: list[bytes],
                       time_zero: float) -> tuple[list[str], list[int]]:
    """Check RESTORED against the writers' logs: for each writer, the restore must hold a prefix
    of its writes that contains every write acknowledged before TIME_ZERO (epoch seconds) and
    none submitted after it. Returns (problems, the prefix length found per writer)."""
    problems, cuts = [], []
    for w in writers:
        ks = prefix_lengths(w, initial, restored)
        lo = sum(1 for *_, acked in w.log if acked < time_zero)
        hi = next((i for i, (*_, submitted, _acked) in enumerate(w.log) if submitted > time_zero), len(w.log))
        fitting = [k for k in ks if lo <= k <= hi]
        if not ks:
            problems.append(f"{w.name}: the restore holds no prefix of its writes")
        elif not fitting:
            problems.append(f"{w.name}: prefix {ks} is not at time zero (expected between {lo} and {hi} writes)")
        cuts.append(fitting[0] if fitting else -1)
    if not untouched_blocks_equal(writers, initial, restored):
        problems.append("blocks no writer touched differ from their initial content")
    return problems, cuts
