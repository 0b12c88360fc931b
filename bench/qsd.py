"""The peer: qemu-storage-daemon serving the same image files over NBD, and its backup job.

QEMU's live backup is copy-before-write too: `blockdev-backup` (sync=full) inserts a
filter that saves old data before a guest write lands, while a job copies the disk in
the background. One QMP `transaction` starts a job per disk at one instant (the disks
are drained together), which is the peer of a tzero session.

The backup target is a `null-co` node of the disk's size: writes to it are thrown
away, as tzero's stream is (`-o -` to /dev/null) and as nbdcopy's is (`null:`); or a
raw file, where QSD really writes the backup, as tzero does with `-o - > FILE`.
"""

import json
import os
import socket
import subprocess
import time

START_TIMEOUT_S = 30.0


class QMP:
    """A minimal QMP client: commands in turn, events kept until asked for."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self.events: list[dict] = []
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise RuntimeError("qemu-storage-daemon closed its QMP socket")
        return json.loads(line)

    def execute(self, command: str, **arguments) -> dict:
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error'].get('desc')}")
            return reply["return"]

    def wait_event(self, name: str, timeout: float, **data) -> dict:
        """The first event NAME whose data includes DATA (those seen already count)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name and all(ev.get("data", {}).get(k) == v for k, v in data.items()):
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"no QMP event {name} {data} within {timeout} s")
            self.sock.settimeout(remaining)
            try:
                self.events.append(self._read())
            finally:
                self.sock.settimeout(None)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class StorageDaemon:
    """qemu-storage-daemon serving EXPORTS ({name: path}) at nbd+unix:///NAME?socket=SOCK.

    Every disk gets a `null-co` backup target; FILE_TARGETS ({name: path}, files of the
    disk's size) adds a raw file target, where a backup is really written."""

    def __init__(self, folder: str, name: str, exports: dict, log=None, file_targets: dict | None = None):
        self.socket = os.path.join(folder, f"{name}.sock")
        self.qmp_path = os.path.join(folder, f"{name}.qmp")
        for p in (self.socket, self.qmp_path):
            if os.path.exists(p):
                os.unlink(p)
        self.qmp: QMP | None = None
        self.exports = dict(exports)
        self.sizes = {n: os.path.getsize(p) for n, p in exports.items()}
        cmd = ["qemu-storage-daemon",
               "--chardev", f"socket,id=qmp,path={self.qmp_path},server=on,wait=off",
               "--monitor", "chardev=qmp",
               "--nbd-server", f"addr.type=unix,addr.path={self.socket}"]
        for n, p in exports.items():
            # The page cache, like the tzero plugin and nbdkit's file plugin. No image locks: a
            # benchmark serves the same file from tzero and QSD at once (one used at a time), and
            # a subsystem holds QEMU's write lock on what it serves (nbdplugin/imagelock.py).
            cmd += ["--blockdev", f"driver=file,node-name={n},filename={p},cache.direct=off,locking=off",
                    "--export", f"type=nbd,id=export-{n},node-name={n},name={n},writable=on"]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (os.path.exists(self.qmp_path) and os.path.exists(self.socket)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("qemu-storage-daemon did not start")
            time.sleep(0.02)
        self.qmp = QMP(self.qmp_path)
        for n, size in self.sizes.items():
            self.qmp.execute("blockdev-add", driver="null-co", **{"node-name": f"target-{n}"}, size=size)
        for n, path in (file_targets or {}).items():
            self.qmp.execute("blockdev-add", driver="file", filename=path, **{"node-name": f"file-target-{n}"},
                             cache={"direct": False})

    def uri(self, name: str) -> str:
        return f"nbd+unix:///{name}?socket={self.socket}"

    def start_backup(self, names: list[str], max_workers: int | None = None, held: bool = False,
                     to_file: bool = False) -> dict:
        """One transaction: a sync=full backup job per disk. Returns wall-clock send and reply times.

        HELD: the jobs run at a speed limit of one byte a second, so the copy-before-write
        filter is in place but nothing is copied in the background (the peer of a tzero
        session held open without copying). TO_FILE: into the file targets, not null-co."""
        actions = []
        for n in names:
            data = {"job-id": f"job-{n}", "device": n, "target": f"file-target-{n}" if to_file else f"target-{n}",
                    "sync": "full", "auto-dismiss": True}
            if held:
                data["speed"] = 1
            if max_workers is not None:
                data["x-perf"] = {"max-workers": max_workers}
            actions.append({"type": "blockdev-backup", "data": data})
        sent = time.time()
        self.qmp.execute("transaction", actions=actions)
        replied = time.time()
        return {"sent": sent, "replied": replied, "pause_ms": (replied - sent) * 1000}

    def wait_backup(self, names: list[str], timeout: float = 600) -> float:
        """Wait for every job to complete; returns the wall clock of the last completion."""
        last = 0.0
        for n in names:
            ev = self.qmp.wait_event("BLOCK_JOB_COMPLETED", timeout, device=f"job-{n}")
            if ev["data"].get("error"):
                raise RuntimeError(f"QSD backup of {n} failed: {ev['data']['error']}")
            last = max(last, ev["timestamp"]["seconds"] + ev["timestamp"]["microseconds"] / 1e6)
        return last

    def cancel_backup(self, names: list[str], timeout: float = 60) -> None:
        for n in names:
            self.qmp.execute("block-job-cancel", device=f"job-{n}", force=True)
        for n in names:
            self.qmp.wait_event("BLOCK_JOB_CANCELLED", timeout, device=f"job-{n}")

    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.qmp.execute("quit")
            except Exception:  # no QMP yet, or it is already gone
                self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in (self.socket, self.qmp_path):
            if os.path.exists(p):
                os.unlink(p)
