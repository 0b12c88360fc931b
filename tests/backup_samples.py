"""Sample backups for the tests of the commands that read them (not a test module):
a small backup, its images, ways to damage it, and `tzero restore` run in-process."""

import io

from backupformat import Base, Dataset, Header, StreamReader, StreamWriter
from controller.cli.main import main

TIME_ZERO = "2026-11-25T10:00:00.123456+00:00"

# 'a' has a hole between its records, 'b' is not chunk-aligned and ends in a
# short record, 'empty' has no bytes at all.
DATASETS = (("a", 256 << 10), ("b", 100_000), ("empty", 0))
RECORDS = [
    (0, 0, b"\x01" * 65536),
    (0, 131072, bytes(range(256)) * 512),
    (1, 4096, b"\x02" * 8192),
    (1, 65536, b"\x03" * (100_000 - 65536)),
]


def backup_bytes(records=RECORDS, datasets=DATASETS, codec=0) -> bytes:
    out = io.BytesIO()
    w = StreamWriter(out, Header(tool_version="0.1.0", time_zero=TIME_ZERO, chunk_size=65536,
                                 datasets=[Dataset(n, s) for n, s in datasets]), codec)
    for rec in records:
        w.write(*rec)
    w.finish()
    return out.getvalue()


def write_backup(path, records=RECORDS, datasets=DATASETS, codec=0):
    path.write_bytes(backup_bytes(records, datasets, codec))
    return path


def image(dataset_index, records=RECORDS, datasets=DATASETS) -> bytes:
    """What dataset DATASET_INDEX holds: its records on zeros."""
    img = bytearray(datasets[dataset_index][1])
    for ds, off, data in records:
        if ds == dataset_index:
            img[off:off + len(data)] = data
    return bytes(img)


def record_position(blob: bytes, n: int) -> int:
    """The stream byte where record N's head starts."""
    return StreamReader(io.BytesIO(blob)).read_index()[n].position


def flipped(blob: bytes, pos: int) -> bytes:
    b = bytearray(blob)
    b[pos] ^= 0x40
    return bytes(b)


def run_restore(capsys, *args):
    code = main(["restore", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def bad_backup(tmp_path, damage):
    path = tmp_path / "bad.tzb"
    path.write_bytes(damage(backup_bytes()))
    return path


def truncate_in_b(blob):
    return blob[:record_position(blob, 3) + 100]


def flip_in_b(blob):
    return flipped(blob, record_position(blob, 3) + 32 + 1)


def flip_in_a(blob):
    return flipped(blob, record_position(blob, 0) + 32 + 1)


def flip_digest(blob):
    return flipped(blob, len(blob) - 12)


def chain_bytes(layers, datasets=DATASETS, names=None) -> list[bytes]:
    """Streams for LAYERS, oldest first: the first a full backup, each later one an incremental over
    the one before it (named NAMES[i], default c0.tzb, c1.tzb, ...). A layer is a list of
    (dataset, offset, data), where data may be an int: that many zero bytes (a zero record)."""
    names = names or [f"c{i}.tzb" for i in range(len(layers))]
    blobs: list[bytes] = []
    for i, records in enumerate(layers):
        base = None
        if i:
            below = StreamReader(io.BytesIO(blobs[-1]))
            base = Base(names[i - 1], below.read_trailer().digest, below.header.time_zero)
        out = io.BytesIO()
        w = StreamWriter(out, Header(tool_version="0.1.0", time_zero=f"2026-11-25T10:00:{i:02d}+00:00",
                                     chunk_size=65536, datasets=[Dataset(n, s) for n, s in datasets],
                                     extra={"tracking": {}}, format_version=3 if i else 2, base=base))
        for ds, off, data in records:
            if isinstance(data, int):
                w.write_zero(ds, off, data)
            else:
                w.write(ds, off, data)
        w.finish()
        blobs.append(out.getvalue())
    return blobs


def chain_image(dataset_index, layers, datasets=DATASETS) -> bytes:
    """What dataset DATASET_INDEX holds at the newest layer's time zero: every layer on the one before."""
    img = bytearray(datasets[dataset_index][1])
    for records in layers:
        for ds, off, data in records:
            if ds == dataset_index:
                img[off:off + (data if isinstance(data, int) else len(data))] = \
                    bytes(data) if isinstance(data, int) else data
    return bytes(img)


def write_chain(folder, layers, datasets=DATASETS, names=None) -> list:
    """The chain's files in FOLDER, oldest first."""
    names = names or [f"c{i}.tzb" for i in range(len(layers))]
    paths = []
    for name, blob in zip(names, chain_bytes(layers, datasets, names), strict=True):
        (folder / name).write_bytes(blob)
        paths.append(folder / name)
    return paths
