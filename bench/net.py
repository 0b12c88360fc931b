"""Two subsystems over TCP with mutual TLS against the same two over unix sockets, from one run;
prints JSON and writes bench/results/net.json.

Both sets serve the same two image files, one export each, on this host (TLS on loopback:
the cost of TLS and TCP, not of a wire), and are never up at once.

 (a) pause: WRITERS dependent writers (bench/writer.py, each writing to both exports over the
     set's own URIs: nbds:// for TLS) while SESSIONS sessions are opened, frozen, thawed and
     closed at once by a ConsistencyGroup (nothing copied): the gates' pause (pause_ms, the
     longest any export held writes; each host's, pause_ms_by_subsystem) and the controller's
     (pause_wall_ms: first freeze sent to last thaw answered).
 (b) backup speed: `tzero backup --read-path nbd` of both idle exports (read in parallel, the
     stream thrown away) against two nbdcopy runs at once reading the same exports to null:
     over the same transport: the read limit of each. Rounds interleaved: unix, TLS, unix, ...

    python bench/net.py [--sessions N (per round)] [--rounds N] [--size MiB]
"""

import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    Listen,
    MiB,
    Stopper,
    Writers,
    backup,
    image,
    machine,
    nbdcopy_null_all,
    need,
    percentile,
    say,
    serve,
    workdir,
    write_result,
)
from controller.backup.group import ConsistencyGroup  # noqa: E402
from controller.net.certs import make_directory  # noqa: E402

WRITERS = 4
BASE_PORT = 47100


def transports(pki: str) -> dict[str, dict]:
    """How each set of two subsystems listens: name -> {serve: listen per subsystem, tls: dir or None}."""
    tls = [Listen("127.0.0.1", BASE_PORT + 2 * i, BASE_PORT + 2 * i + 1, pki) for i in range(2)]
    return {"unix": {"listen": [None, None], "tls": None}, "tls": {"listen": tls, "tls": pki}}


def start(kind: dict, images: list[str], stopper: Stopper):
    subs = [stopper.add(serve(f"net{i}", {f"d{i}": images[i]}, listen=kind["listen"][i])) for i in range(2)]
    return subs, [s.uri(f"d{i}") for i, s in enumerate(subs)]


def pauses(subs, uris: list[str], tls: str | None, sessions: int, tag: str) -> list[dict]:
    writers = Writers(uris, WRITERS, tag)
    runs = []
    try:
        for _ in range(sessions):
            group = ConsistencyGroup([s.control for s in subs], tls_dir=tls)
            group.connect()
            group.open()
            zero = group.freeze_and_thaw()
            group.close()
            runs.append({"pause_ms": max(zero["pause_ms"].values()), "pause_wall_ms": zero["pause_wall_ms"],
                         "by_subsystem": zero["pause_ms_by_subsystem"]})
    finally:
        writers.stop()
    return runs


def speed(subs, uris: list[str], tls: str | None, size: int) -> dict:
    extra = ["--tls-certificates", tls] if tls else []
    s = backup([x.control for x in subs], "--read-path", "nbd", *extra)
    t = nbdcopy_null_all(uris)
    return {"tzero_mib_s": 2 * size / MiB / s["elapsed_s"], "nbdcopy_mib_s": 2 * size / MiB / t,
            "tzero_elapsed_s": s["elapsed_s"], "nbdcopy_s": t, "pause_ms": s["pause_ms"]}


def summarise(kind_runs: list[dict], kind_speed: list[dict]) -> dict:
    gate = [r["pause_ms"] for r in kind_runs]
    wall = [r["pause_wall_ms"] for r in kind_runs]
    rounds = len(kind_speed)
    return {"pause_ms_max": max(gate), "pause_ms_p50": percentile(gate, 50), "pause_wall_ms_max": max(wall),
            "pause_wall_ms_p50": percentile(wall, 50),
            "backup_mib_s": rounds / sum(1 / r["tzero_mib_s"] for r in kind_speed),
            "nbdcopy_mib_s": rounds / sum(1 / r["nbdcopy_mib_s"] for r in kind_speed)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=4, help="sessions per round and transport")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=512, help="MiB per export")
    args = ap.parse_args(argv)
    need("nbdkit", "nbdcopy")
    size = args.size * MiB
    pki = os.path.join(workdir("net"), "pki")
    make_directory(pki, ["127.0.0.1"], client=True, force=True)
    images = [image(f"net{i}", size, seed=70 + i) for i in range(2)]
    kinds = transports(pki)
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    speeds: dict[str, list[dict]] = {k: [] for k in kinds}
    result = {"bench": "net", "started": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "export_bytes": size, "writers": WRITERS, "sessions": args.sessions * args.rounds, "rounds": args.rounds,
              "order": "interleaved by round: unix, tls, unix, tls, ..."}
    for r in range(args.rounds):
        for name, kind in kinds.items():
            say(f"round {r + 1}: {name}: {args.sessions} sessions under writers, one backup")
            with Stopper() as stopper:
                subs, uris = start(kind, images, stopper)
                runs[name] += pauses(subs, uris, kind["tls"], args.sessions, f"net-{name}")
                speeds[name].append(speed(subs, uris, kind["tls"], size))
    result["load_at_end"] = os.getloadavg()
    result["runs"], result["speed"] = runs, speeds
    s = {k: summarise(runs[k], speeds[k]) for k in kinds}
    s["tls_vs_unix"] = {"backup": s["tls"]["backup_mib_s"] / s["unix"]["backup_mib_s"],
                        "nbdcopy": s["tls"]["nbdcopy_mib_s"] / s["unix"]["nbdcopy_mib_s"],
                        "pause_ms_p50": s["tls"]["pause_ms_p50"] / s["unix"]["pause_ms_p50"],
                        "backup_vs_nbdcopy_tls": s["tls"]["backup_mib_s"] / s["tls"]["nbdcopy_mib_s"]}
    result["summary"] = s
    path = write_result("net", result)
    print(json.dumps(s, indent=1))
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
