"""Past one controller: a simulation of a backup's wall time against the number of hosts
(docs/scale.md), for two shapes of the same backup to one S3 upload.

- funnel: today's tzero. One controller reads every host's views over the network and
  uploads every part; every byte crosses the controller's link twice (in, then out).
- spread: every host's copier reads its own views locally and uploads its share's interior
  parts itself; the controller uploads the boundary parts (the header with the first share's
  head, each share's tail with the next share's head, the last tail with the index and
  trailer) once every share is done, then completes the upload.

The model is a flow simulation in steps of SLICE_S seconds: every transfer in flight gets a
max-min fair share of each link it crosses (a host's uplink; the controller's downlink and
uplink; the store's aggregate ingest), each part is sent by one of STREAMS streams per
uploader and costs a fixed request latency before its bytes move. The figures it prints are
the model's, with the link speeds stated on its command line; they are not measurements.

    python bench/scale_sim.py [--host-gbit 10] [--controller-gbit 10] [--store-gbit 100] [--share-gib 256]
"""

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

MiB = 1 << 20
GiB = 1 << 30
SLICE_S = 0.01


@dataclass
class Transfer:
    links: tuple[str, ...]  # the links its bytes cross
    left: float  # bytes still to move
    wait_s: float  # request latency still to pay before bytes move


@dataclass
class Uploader:
    """Who sends parts: a host (its share), or the controller (a funnel, or the boundary parts)."""

    parts: list[float]  # part sizes still to send, in order
    links: tuple[str, ...]
    streams: int
    flying: list[Transfer] = field(default_factory=list)
    ready: bool = True  # the controller's boundary parts wait until every share is done

    def refill(self, latency_s: float) -> None:
        while self.ready and self.parts and len(self.flying) < self.streams:
            self.flying.append(Transfer(self.links, self.parts.pop(0), latency_s))

    @property
    def done(self) -> bool:
        return not self.parts and not self.flying


def shares(hosts: int, share: float, skew: float) -> list[float]:
    """Bytes per host: equal, or the first host's share SKEW times the others'."""
    return [share * (skew if i == 0 else 1.0) for i in range(hosts)]


def split(total: float, part: float) -> list[float]:
    n = int(total // part)
    rest = total - n * part
    return [part] * n + ([rest] if rest > 0 else [])


def fair_rates(flying: list[Transfer], capacity: dict[str, float]) -> Iterator[tuple[Transfer, float]]:
    """Max-min fair rates: fill the tightest link first, freeze its transfers, repeat."""
    moving = [t for t in flying if t.wait_s <= 0]
    left = dict(capacity)
    rates: dict[int, float] = {}
    while len(rates) < len(moving):
        users = {link: [t for t in moving if id(t) not in rates and link in t.links] for link in left}
        link = min((k for k in users if users[k]), key=lambda k: left[k] / len(users[k]))
        each = left[link] / len(users[link])
        for t in users[link]:
            rates[id(t)] = each
            for other in t.links:
                left[other] -= each
    return ((t, rates.get(id(t), 0.0)) for t in flying)


def simulate(uploaders: list[Uploader], capacity: dict[str, float], latency_s: float,
             boundary: Uploader | None = None) -> float:
    clock = 0.0
    everyone = uploaders + ([boundary] if boundary else [])
    while not all(u.done for u in everyone):
        if boundary is not None and not boundary.ready and all(u.done for u in uploaders):
            boundary.ready = True
        for u in everyone:
            u.refill(latency_s)
        flying = [t for u in everyone for t in u.flying]
        for t, rate in list(fair_rates(flying, capacity)):
            if t.wait_s > 0:
                t.wait_s -= SLICE_S
            else:
                t.left -= rate * SLICE_S
        for u in everyone:
            u.flying = [t for t in u.flying if t.left > 0]
        clock += SLICE_S
    return clock + latency_s  # the completion request


def funnel(sizes: list[float], capacity: dict[str, float], part: float, streams: int, latency_s: float) -> float:
    """One controller: every byte comes in over its downlink (from the hosts' uplinks) and goes out."""
    per_host = [Uploader(split(s, part), (f"host{i}", "ctl-in", "ctl-out", "store"), streams)
                for i, s in enumerate(sizes)]
    # The stream is written in order: model the hosts' shares one after another through the controller.
    return sum(simulate([u], capacity, latency_s) for u in per_host)


def spread(sizes: list[float], capacity: dict[str, float], part: float, streams: int, latency_s: float) -> float:
    hosts = [Uploader(split(max(0.0, s - part - 5 * MiB), part), (f"host{i}", "store"), streams)
             for i, s in enumerate(sizes)]
    boundary = Uploader([part + 5 * MiB] * (len(sizes) + 1), ("ctl-out", "store"), streams, ready=False)
    return simulate(hosts, capacity, latency_s, boundary)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host-gbit", type=float, default=10.0, help="each host's uplink")
    ap.add_argument("--controller-gbit", type=float, default=10.0, help="the controller's link, each way")
    ap.add_argument("--store-gbit", type=float, default=100.0, help="the store's aggregate ingest")
    ap.add_argument("--share-gib", type=float, default=16.0, help="bytes of backup per host")
    ap.add_argument("--part-mib", type=float, default=64.0)
    ap.add_argument("--streams", type=int, default=4, help="parts in flight per uploader")
    ap.add_argument("--latency-ms", type=float, default=30.0, help="per-request latency")
    ap.add_argument("--skew", type=float, default=1.0, help="the first host's share over the others'")
    args = ap.parse_args(argv)
    gbit = 1e9 / 8
    print(f"hosts {args.host_gbit:g} Gbit/s each, controller {args.controller_gbit:g} Gbit/s each way, store "
          f"{args.store_gbit:g} Gbit/s; {args.share_gib:g} GiB per host (the first x{args.skew:g}); "
          f"{args.part_mib:g} MiB parts, {args.streams} streams, {args.latency_ms:g} ms per request")
    print("| hosts | funnel (s) | funnel GiB/s | spread (s) | spread GiB/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for n in (1, 2, 4, 8, 16, 32, 64):
        capacity = {f"host{i}": args.host_gbit * gbit for i in range(n)}
        capacity.update({"ctl-in": args.controller_gbit * gbit, "ctl-out": args.controller_gbit * gbit,
                         "store": args.store_gbit * gbit})
        sizes = shares(n, args.share_gib * GiB, args.skew)
        part = args.part_mib * MiB
        f = funnel(sizes, capacity, part, args.streams, args.latency_ms / 1000)
        s = spread(sizes, capacity, part, args.streams, args.latency_ms / 1000)
        total = sum(sizes) / GiB
        print(f"| {n} | {f:.0f} | {total / f:.2f} | {s:.0f} | {total / s:.2f} | {f / s:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
