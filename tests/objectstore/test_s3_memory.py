"""The controller's memory during a backup to s3:// is bounded by configuration: --host-memory,
plus --upload-streams + 1 part buffers, plus a fixed overhead, whatever the backup's size."""

import json
import os
import subprocess
import sys

from helpers import REPO, TZERO, last_json

FIXED_OVERHEAD = 64 << 20  # the interpreter, libnbd, boto3 and its connections (docs/objectstore.md)
SIZE = 256 << 20
HOST_MEMORY = 16 << 20
PART = 8 << 20
STREAMS = 2


# Run in a fresh, small interpreter: a child's peak RSS counts what it held before exec, and a
# child forked straight from pytest starts as big as pytest is by then.
MEASURE = """
import os, sys, json
argv, out = sys.argv[2:], sys.argv[1]
pid = os.fork()
if pid == 0:
    os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT, 0o600), 1)
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024]))
"""


def peak_rss(argv, env, stdout) -> tuple[int, int]:
    """Run ARGV, its output in the file STDOUT; (exit status, its peak resident set in bytes),
    as the kernel counted it."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, stdout, *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, check=True)
    status, peak = json.loads(proc.stdout)
    return status, peak


def test_s3_memory_backup_peak_rss_stays_within_host_memory_parts_and_a_fixed_overhead(store, bucket, tmp_path,
                                                                                      serve):
    with open(tmp_path / "a.img", "wb") as f:
        for _ in range(SIZE >> 20):
            f.write(os.urandom(1 << 20))  # no holes: every byte goes through the part buffers
    sub = serve("s", {"a": tmp_path / "a.img"})
    status, peak = peak_rss([*TZERO, "backup", "-s", sub.control, "-o", f"s3://{bucket}/big.tzb", "--json",
                             "--no-progress", "--host-memory", "16M", "--part-size", "8M",
                             "--upload-streams", str(STREAMS)], store.env(), str(tmp_path / "out.json"))
    assert status == 0
    summary = last_json((tmp_path / "out.json").read_text())
    assert summary["object_store"]["parts"] >= 32, "many more parts went through than there are buffers"
    bound = HOST_MEMORY + (STREAMS + 1) * PART + FIXED_OVERHEAD
    assert peak <= bound, f"peak RSS {peak >> 20} MiB, bound {bound >> 20} MiB"
