"""`make bench`: every benchmark in one run, then BENCHMARKS.md and the plot.

    python bench/run.py [--skip NAME ...]    NAME: core, sessions, writecost, memory, net, incremental, s3, rate,
                                             filebackup

Work files live in BENCH_DIR (default /var/tmp/tzero-bench) and are written once per
run, then overwritten in place (see bench/common.py for why); they are removed at
the end unless BENCH_KEEP=1.
"""

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import core, filebackup, incremental, memory, net, rate, report, s3, sessions, writecost  # noqa: E402
from bench.common import WORK, need, say  # noqa: E402

STEPS = {"core": lambda: core.main([]), "sessions": sessions.main, "writecost": writecost.main,
         "memory": memory.main, "net": lambda: net.main([]), "incremental": incremental.main,
         "s3": s3.main, "rate": rate.main, "filebackup": lambda: filebackup.main([])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", action="append", default=[], choices=list(STEPS))
    args = ap.parse_args()
    need("nbdkit", "nbdcopy", "fio", "qemu-storage-daemon")
    started = time.monotonic()
    try:
        for name, step in STEPS.items():
            if name in args.skip:
                continue
            t = time.monotonic()
            say(f"== {name}")
            step()
            say(f"== {name} took {time.monotonic() - t:.0f} s")
    finally:
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(WORK, ignore_errors=True)
    report.main()
    say(f"all done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
