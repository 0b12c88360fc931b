"""One dependent writer, in its own process, logging the latency of every write.

    python bench/writer.py INDEX WRITERS LOG URI [URI ...]

Each write waits for the previous one (a dependent writer, like a database's
commit record). Writer INDEX owns the 4 KiB blocks whose number % WRITERS ==
INDEX on every export; it picks an export and one of its blocks at random each
time. A process of its own, so that the latency it sees is the server's and not
another writer's turn at a Python lock. It runs until its standard input closes,
then writes LOG: (submitted, acked) wall-clock pairs as little-endian doubles.
"""

import array
import os
import random
import struct
import sys
import threading
import time

import nbd

BLOCK = 4096


def main() -> int:
    index, writers, log_path, uris = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    handles = []
    for uri in uris:
        h = nbd.NBD()
        h.set_uri_allow_local_file(True)  # nbds:// URIs name their certificates (tls-certificates=DIR)
        h.connect_uri(uri)
        handles.append(h)
    blocks = [h.get_size() // BLOCK for h in handles]
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    rnd = random.Random(index)
    data = bytearray(os.urandom(BLOCK))
    times = array.array("d")
    seq = 0
    print("ready", flush=True)
    while not stop.is_set():
        t = rnd.randrange(len(handles))
        block = rnd.randrange(index, blocks[t], writers)
        struct.pack_into("<4sII", data, 0, b"TZW1", index, seq)
        submitted = time.time()
        handles[t].pwrite(data, block * BLOCK)
        times.append(submitted)
        times.append(time.time())
        seq += 1
    for h in handles:
        h.shutdown()
    with open(log_path + ".tmp", "wb") as f:
        times.tofile(f)
    os.replace(log_path + ".tmp", log_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
