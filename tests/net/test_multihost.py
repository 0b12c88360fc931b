"""One consistency group across hosts: subsystems in two network namespaces on TCP with mutual
TLS, the controller in a third, applications writing over nbds://. The backup is exact under
dependent writers, and whatever the network does (a host unreachable, a partition before the
freeze reaches a host, while it is frozen, mid-copy, a host killed) the backup fails with one
line naming the host, every host ends its session by itself if it must, no application is held
past a freeze deadline, and the next backup after the link is back is exact."""

import datetime
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbd
import pytest

from controller.backup.control_client import ControlClient
from controller.backup.group import ConsistencyGroup
from controller.errors import SessionAborted
from testkit.local_subsystem import Listen
from testkit.workload import DependentWriter, time_zero_problems

from helpers import REPO, last_json, make_image, one_line, tzero, wait_for
from netns import enter_netns, in_netns

SIZE = 8 << 20
DEADLINE_MS = 1000
LEASE_MS = 3000
CONTROL_PORT, NBD_PORT = 7000, 10809
READ_STEP = 256 << 10
WRITES_PER_STEP = 6


class Cluster:
    """Hosts a and b, each a subsystem serving one export named after it; writers; backups from
    the controller's namespace."""

    def __init__(self, topology, pki, tmp_path, serve):
        self.topo, self.pki, self.tmp, self.serve = topology, pki, tmp_path, serve
        self.hosts = topology.hosts
        self.paths = {h: str(tmp_path / f"{h}.img") for h in self.hosts}
        for i, h in enumerate(self.hosts):
            make_image(self.paths[h], SIZE, seed=40 + i)
        (tmp_path / "side").mkdir()
        self.subs = {h: self.start(h) for h in self.hosts}
        self.writers: list[DependentWriter] = []
        self.placement: dict[DependentWriter, str] = {}  # writer -> the namespace it runs in

    def start(self, h):
        host = self.hosts[h]
        return self.serve(h, {h: self.paths[h]}, "--chunk", "64K", "--side-dir", self.tmp / "side",
                          listen=Listen(host.address, CONTROL_PORT, NBD_PORT, self.pki[h], netns=host.ns))

    @property
    def controls(self) -> list[str]:
        return [self.subs[h].control for h in self.hosts]

    def opener(self, ns):
        def connect(address, export):
            enter_netns(ns)  # this writer's thread only
            h = nbd.NBD()
            h.set_uri_allow_local_file(True)
            h.connect_uri(f"nbds://{address}:{NBD_PORT}/{export}?tls-certificates={self.pki['ca']}")
            return h
        return connect

    # --- applications ------------------------------------------------------------

    def start_writers(self, across: bool) -> None:
        """ACROSS: four writers in the controller's namespace, each writing to both hosts (their
        writes depend on each other across hosts); else two on each host, writing to its own."""
        targets = [(self.hosts[h].address, h) for h in self.hosts]
        if across:
            specs = [(self.topo.ctl, i, 4, targets) for i in range(4)]
        else:
            specs = [(self.hosts[h].ns, i, 2, [t]) for h, t in zip(self.hosts, targets, strict=True) for i in range(2)]
        self.writers = []
        for n, (ns, index, count, tgts) in enumerate(specs):
            w = DependentWriter(index, count, tgts, [SIZE] * len(tgts), seed=500 + n, opener=self.opener(ns))
            self.placement[w] = ns
            self.writers.append(w)
            w.start()
        wait_for(lambda: all(len(w.log) >= 10 or w.error for w in self.writers), 30, "writers to get going")
        assert not any(w.error for w in self.writers), [w.error for w in self.writers]

    def writes_on(self, h) -> int:
        return sum(len(w.log) for w in self.writers if self.placement[w] == self.hosts[h].ns)

    def stop_writers(self, failed_hosts=()) -> None:
        for w in self.writers:
            w.stop.set()
        for w in self.writers:
            w.join(30)
            if self.placement[w] not in {self.hosts[h].ns for h in failed_hosts}:
                assert w.error is None, f"{w.name} failed: {w.error!r}"

    # --- the controller ------------------------------------------------------------

    def backup_command(self, output: str, *extra) -> list[str]:
        args = [a for c in self.controls for a in ("-s", c)]
        return ["ip", "netns", "exec", self.topo.ctl, sys.executable, "-m", "controller", "backup", *args,
                "--tls-certificates", self.pki["ca"], "-o", output, "--json", "--no-progress",
                "--host-memory", "8M", "--lease", str(LEASE_MS), "--freeze-deadline", str(DEADLINE_MS), *extra]

    def stalled_backup(self) -> subprocess.Popen:
        """A backup whose stream nobody reads yet: it stalls mid-copy with every session active."""
        proc = subprocess.Popen(self.backup_command("-", "--read-path", "nbd"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=REPO)
        wait_for(lambda: all((self.status(h)["session"] or {}).get("phase") == "active" for h in self.hosts)
                 or proc.poll() is not None, 60, "sessions active on every host")
        assert proc.poll() is None, proc.stderr.read().decode()
        return proc

    def status(self, h) -> dict:
        def ask():
            c = ControlClient(self.subs[h].control, self.pki["ca"], reply_timeout=10)
            try:
                return c.request("status")
            finally:
                c.close()
        return in_netns(self.topo.ctl, ask)

    def group(self) -> ConsistencyGroup:
        return ConsistencyGroup(self.controls, lease_ms=LEASE_MS, deadline_ms=DEADLINE_MS, tls_dir=self.pki["ca"])

    def log_says(self, h, text) -> bool:
        return text in self.subs[h].output()

    def exact_backup(self, name: str) -> dict:
        """Fresh writers across both hosts, a paced backup over NBD/TLS, its restore checked: every
        writer's writes cut at one instant. Returns the backup's summary."""
        self.stop_writers(failed_hosts=self.hosts)
        initial = [Path(self.paths[h]).read_bytes() for h in self.hosts]
        self.start_writers(across=True)
        out = self.tmp / f"{name}.tzb"
        errors: list[str] = []
        try:
            with subprocess.Popen(self.backup_command("-", "--read-path", "nbd"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=REPO) as proc, open(out, "wb") as sink:
                reader = threading.Thread(target=lambda: errors.append(proc.stderr.read().decode()))
                reader.start()
                self.paced_copy(proc, sink)
                status = proc.wait(120)
                reader.join()
        finally:
            self.stop_writers()
        assert status == 0, errors
        summary = last_json(errors[0])
        tzero("restore", out, "--to", self.tmp / name)
        restored = [(self.tmp / name / f"{h}.img").read_bytes() for h in self.hosts]
        tz = datetime.datetime.fromisoformat(summary["time_zero"]).timestamp()
        problems, cuts = time_zero_problems(self.writers, initial, restored, tz)
        assert not problems, problems
        assert all(0 < k < len(w.log) for k, w in zip(cuts, self.writers, strict=True)), "time zero fell mid-run"
        assert summary["read_path"] == {h: "nbd (--read-path nbd)" for h in self.hosts}
        assert sorted(summary["pause_ms_by_subsystem"]) == sorted(self.controls)
        return summary

    def paced_copy(self, proc, sink) -> None:
        """Let writers land writes between reads of the stream, so copy-before-write happens mid-copy."""
        while data := proc.stdout.read(READ_STEP):
            sink.write(data)
            target = sum(len(w.log) for w in self.writers) + WRITES_PER_STEP
            deadline = time.monotonic() + 5
            while sum(len(w.log) for w in self.writers) < target and time.monotonic() < deadline:
                time.sleep(0.001)


@pytest.fixture
def cluster(topology, net_pki, tmp_path, serve):
    c = Cluster(topology, net_pki, tmp_path, serve)
    yield c
    c.stop_writers(failed_hosts=c.hosts)


def drain(proc) -> tuple[int, str]:
    """Read the stalled stream to its end; the backup's exit status and stderr."""
    with proc:
        while proc.stdout.read(1 << 20):
            pass
        status = proc.wait(120)
        return status, proc.stderr.read().decode()


def progresses_while_partitioned(cluster, h) -> None:
    """The applications on host H complete writes while its link is still down: none is held
    until the network comes back (each host's own deadline reopened its gates)."""
    for host in cluster.hosts:
        seen = cluster.writes_on(host)
        wait_for(lambda host=host, seen=seen: cluster.writes_on(host) > seen + 5, 30,
                 f"writers on {host} to go on while {h} is partitioned")


def test_group_across_hosts_under_dependent_writers_restores_a_prefix_at_time_zero(cluster):
    summary = cluster.exact_backup("first")
    assert summary["chunks_cow"] > 0, "writers hit uncopied chunks mid-copy"


def test_group_host_unreachable_or_lost_before_the_freeze_fails_naming_it_and_sessions_end(cluster):
    cluster.start_writers(across=False)
    b = cluster.subs["b"].control
    cluster.topo.partition("b")
    proc = subprocess.run(cluster.backup_command(str(cluster.tmp / "x.tzb")), capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 3 and b in one_line(proc.stderr)
    assert cluster.status("a")["session"] is None and cluster.status("a")["last_session"] is None, \
        "nothing was opened, let alone frozen"
    assert not os.path.exists(cluster.tmp / "x.tzb.partial")
    cluster.topo.heal("b")

    def open_then_lose_b():
        group = cluster.group()
        group.connect()
        group.open()
        cluster.topo.partition("b")  # the freeze will never reach b
        with pytest.raises(SessionAborted) as failed:
            group.freeze_and_thaw()
        return str(failed.value)

    message = in_netns(cluster.topo.ctl, open_then_lose_b)
    assert b in message and "freeze" in message
    wait_for(lambda: cluster.log_says("a", "aborted"), 30, "a's session to be aborted")
    wait_for(lambda: cluster.log_says("b", "lease expired"), 10 * LEASE_MS / 1000, "b to end its session by itself")
    progresses_while_partitioned(cluster, "b")
    cluster.topo.heal("b")
    cluster.exact_backup("after")


def test_group_host_partitioned_while_frozen_thaws_itself_at_its_deadline(cluster):
    cluster.start_writers(across=False)
    b = cluster.subs["b"].control

    def freeze_then_lose_b():
        group = cluster.group()
        group.connect()
        group.open()
        frozen = group.freeze()
        cluster.topo.partition("b")  # b is frozen, and its thaw will never arrive
        with pytest.raises(SessionAborted) as failed:
            group.thaw(frozen)
        return str(failed.value)

    message = in_netns(cluster.topo.ctl, freeze_then_lose_b)
    assert b in message and "thaw" in message
    wait_for(lambda: cluster.log_says("b", "freeze deadline expired before thaw"), 30, "b to thaw by itself")
    wait_for(lambda: cluster.log_says("a", "aborted"), 30, "a's session to be aborted")
    progresses_while_partitioned(cluster, "b")
    cluster.topo.heal("b")
    cluster.exact_backup("after")


def test_group_partition_mid_copy_fails_naming_the_host_and_both_sides_end_the_session(cluster):
    cluster.start_writers(across=False)
    proc = cluster.stalled_backup()
    cluster.topo.partition("b")
    wait_for(lambda: cluster.log_says("b", "lease expired"), 10 * LEASE_MS / 1000,
             "b to notice, within its lease, that the controller is gone")
    status, stderr = drain(proc)
    assert status == 3 and cluster.subs["b"].control in one_line(stderr)
    wait_for(lambda: cluster.log_says("a", "aborted"), 30, "a's session to be aborted")
    assert cluster.status("a")["last_session"]["side_memory_bytes"] == 0, "a freed its side store"
    progresses_while_partitioned(cluster, "b")
    cluster.topo.heal("b")
    assert cluster.status("b")["last_session"]["side_memory_bytes"] == 0, "b freed its side store"
    cluster.exact_backup("after")


def test_group_host_killed_mid_copy_fails_naming_it_and_backs_up_exactly_once_restarted(cluster):
    cluster.start_writers(across=False)
    proc = cluster.stalled_backup()
    cluster.subs["b"].kill()
    status, stderr = drain(proc)
    assert status == 3 and cluster.subs["b"].control in one_line(stderr)
    wait_for(lambda: cluster.log_says("a", "aborted"), 30, "a's session to be aborted")
    cluster.subs["b"] = cluster.start("b")
    cluster.exact_backup("after")
