"""Backups in an object store: tzero against boto3's own transfers, to the same SeaweedFS.

One subsystem serves a 1 GiB image of non-zero data; a SeaweedFS (`weed mini`, the tests'
store, authentication on) runs on loopback. Each round, interleaved:

- `tzero backup -o s3://` (default part size and streams): MiB/s of the stream over the
  command's own elapsed time, and the controller's peak RSS;
- boto3's `download_file` of that object to a file, then `upload_file` of that file (the
  same number of bytes) to another key: the transport's limit on this machine, both with
  boto3's default TransferConfig (8 MiB parts, 10 threads), timed around the call only;
- `tzero restore` from s3:// into a folder (the command's wall time, start-up included).

Then one more backup with --host-memory 16M and 8 MiB parts, for the memory bound:
host-memory + (streams + 1) parts + the 64 MiB fixed overhead docs/objectstore.md states.
The peak RSS is taken by wait4 in a small interpreter that forks the command, so it is the
command's own (plus at most that interpreter's few MiB before exec).
"""

import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, TZERO, MiB, Stopper, image, say, serve, workdir, write_result  # noqa: E402
from testkit.seaweed import SeaweedStore  # noqa: E402

SIZE = 1024 * MiB
ROUNDS = 2
BUCKET = "bench"
FIXED_OVERHEAD = 64 * MiB
TIGHT_HOST, TIGHT_PART, STREAMS = 16 * MiB, 8 * MiB, 2

NOTE = ("One subsystem serves a 1 GiB image of non-zero data; SeaweedFS (`weed mini`, the tests' store, "
        "authentication on) runs on loopback, on the same 2 cores. Each round: `tzero backup -o s3://` (MiB/s of the "
        "stream over the command's own elapsed time), boto3's `download_file` of that object and `upload_file` of "
        "the same bytes from a file (timed around the call), then `tzero restore` from s3:// (wall time, start-up "
        "included).")

MEASURE = """
import os, sys, json, time
out, argv = sys.argv[1], sys.argv[2:]
started = time.monotonic()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, time.monotonic() - started]))
"""

# boto3 1.26 does not read AWS_ENDPOINT_URL itself: it is given here.
BOTO = """
import os, sys, time, boto3, botocore.config
op, bucket, key, path = sys.argv[1:]
c = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                 config=botocore.config.Config(s3={"addressing_style": "path"}))
started = time.monotonic()
if op == "download":
    c.download_file(bucket, key, path)
else:
    c.upload_file(path, bucket, key)
print(time.monotonic() - started)
"""


def measured(argv: list[str], env: dict[str, str]) -> tuple[str, int, float]:
    """Run ARGV; (its standard output, its peak RSS in bytes, wall seconds)."""
    out = os.path.join(workdir("run"), "s3.out")
    proc = subprocess.run([sys.executable, "-c", MEASURE, out, *argv], env=env, cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {argv[2:4]} failed: {proc.stderr[-2000:]}")
    status, peak, wall = json.loads(proc.stdout)
    with open(out) as f:
        text = f.read()
    if status != 0:
        raise RuntimeError(f"{' '.join(argv[2:4])} exited {status}: {text[-1000:]}")
    return text, peak, wall


def boto(op: str, key: str, path: str, env: dict[str, str]) -> float:
    proc = subprocess.run([sys.executable, "-c", BOTO, op, BUCKET, key, path], env=env, capture_output=True,
                          text=True, check=True)
    return float(proc.stdout)


def tzero_backup(control: str, key: str, env: dict[str, str], *extra: str) -> dict:
    text, peak, wall = measured([*TZERO, "backup", "-s", control, "-o", f"s3://{BUCKET}/{key}", "--force", "--json",
                                 "--no-progress", *extra], env)
    summary = json.loads(text.strip().splitlines()[-1])
    return {"bytes": summary["bytes"], "elapsed_s": summary["elapsed_s"], "wall_s": round(wall, 3),
            "mib_s": round(summary["bytes"] / MiB / summary["elapsed_s"], 1), "peak_rss_mib": round(peak / MiB, 1),
            "object_store": summary["object_store"]}


def one_round(control: str, env: dict[str, str], store: SeaweedStore) -> dict:
    folder = workdir("s3run")
    copy = os.path.join(folder, "object.tzb")
    up = tzero_backup(control, "tzero.tzb", env)
    down_s = boto("download", "tzero.tzb", copy, env)
    assert os.path.getsize(copy) == up["bytes"], "boto3 downloaded the whole object"
    up_s = boto("upload", "boto3.tzb", copy, env)
    restored = os.path.join(folder, "restored")
    shutil.rmtree(restored, ignore_errors=True)
    _, _, restore_s = measured([*TZERO, "restore", f"s3://{BUCKET}/tzero.tzb", "--to", restored, "--no-progress"],
                               env)
    shutil.rmtree(restored, ignore_errors=True)
    store.client().delete_object(Bucket=BUCKET, Key="boto3.tzb")
    n = up["bytes"] / MiB
    return {"tzero_backup": up, "boto3_upload_s": round(up_s, 3), "boto3_upload_mib_s": round(n / up_s, 1),
            "boto3_download_s": round(down_s, 3), "boto3_download_mib_s": round(n / down_s, 1),
            "tzero_restore_s": round(restore_s, 3), "tzero_restore_mib_s": round(n / restore_s, 1),
            "backup_vs_upload_file": round(up["mib_s"] / (n / up_s), 2),
            "restore_vs_download_file": round((n / restore_s) / (n / down_s), 2)}


def main() -> None:
    store_dir = workdir("s3store")
    shutil.rmtree(store_dir, ignore_errors=True)
    src = image("s3src", SIZE, seed=14)
    with Stopper() as stop:
        store = stop.add(SeaweedStore(store_dir))
        store.create_bucket(BUCKET)
        env = store.env()
        sub = stop.add(serve("s3sub", {"src": src}))
        rounds = []
        for r in range(ROUNDS):
            rounds.append(one_round(sub.control, env, store))
            say(f"s3 round {r + 1}: backup {rounds[-1]['tzero_backup']['mib_s']} MiB/s, upload_file "
                f"{rounds[-1]['boto3_upload_mib_s']}; restore {rounds[-1]['tzero_restore_mib_s']}, download_file "
                f"{rounds[-1]['boto3_download_mib_s']}")
        tight = tzero_backup(sub.control, "tight.tzb", env, "--host-memory", str(TIGHT_HOST), "--part-size",
                             str(TIGHT_PART), "--upload-streams", str(STREAMS))
        bound = TIGHT_HOST + (STREAMS + 1) * TIGHT_PART + FIXED_OVERHEAD
        default_bound = 256 * MiB + 3 * rounds[0]["tzero_backup"]["object_store"]["part_size"] + FIXED_OVERHEAD
    shutil.rmtree(store_dir, ignore_errors=True)
    write_result("s3", {
        "note": NOTE, "export_bytes": SIZE, "rounds": rounds,
        "memory": {"tight": tight, "tight_bound_mib": bound // MiB,
                   "tight_within": tight["peak_rss_mib"] * MiB <= bound,
                   "default_peak_rss_mib": max(r["tzero_backup"]["peak_rss_mib"] for r in rounds),
                   "default_bound_mib": default_bound // MiB},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


if __name__ == "__main__":
    main()


def report_section(data: dict) -> list[str]:
    """BENCHMARKS.md's section for these results (bench/report.py calls it)."""
    from bench.report import f, table

    rows = []
    for i, r in enumerate(data["rounds"], 1):
        b = r["tzero_backup"]
        rows.append([str(i), b["mib_s"], r["boto3_upload_mib_s"], r["backup_vs_upload_file"],
                     r["tzero_restore_mib_s"], r["boto3_download_mib_s"], r["restore_vs_download_file"]])
    m = data["memory"]
    t = m["tight"]
    out = ["## 9. Backups in an object store (s3://)", "", data["note"],
           "tzero with its defaults (16 MiB parts, 2 upload streams), boto3 with its own (8 MiB parts, 10 threads).",
           ""]
    out += table(["round", "tzero backup MiB/s", "boto3 upload_file MiB/s", "ratio", "tzero restore MiB/s",
                  "boto3 download_file MiB/s", "ratio"], rows)
    out += table(["controller peak RSS", "MiB", "bound (MiB)", "within"], [
        ["defaults (--host-memory 256M, 3 x 16 MiB parts)", f(m["default_peak_rss_mib"], 1),
         str(m["default_bound_mib"]), f(m["default_peak_rss_mib"] <= m["default_bound_mib"])],
        [f"--host-memory 16M, 3 x 8 MiB parts ({t['mib_s']} MiB/s)", f(t["peak_rss_mib"], 1),
         str(m["tight_bound_mib"]), f(m["tight_within"])]])
    out += ["The bound is --host-memory + (upload streams + 1) part buffers + the 64 MiB fixed overhead "
            "docs/objectstore.md states.", ""]
    return out
