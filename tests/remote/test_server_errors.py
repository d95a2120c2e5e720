"""A server that answers with errors: 503s from a real HTTP hop in front of SeaweedFS.

The hop (a loopback HTTP server) forwards every request to the real S3 server byte for byte,
Host header and signature untouched, except that it answers the next `fail` requests itself
with ``503 ServiceUnavailable`` in S3's XML, as an overloaded S3 does. A few 503s are
retried with backoff and the push succeeds; errors that do not stop are one clear line.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from modelfs.errors import RemoteUnavailable
from modelfs.remote import Remote
from modelfs.remote.push import push
from modelfs.repo import Repo, Transfer

_BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
         b"<Message>Please reduce your request rate.</Message></Error>")


class Hop(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        u = urlparse(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.fail = 0
        self.failed = 0
        self.forwarded = 0
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Hop

    def log_message(self, *args: object) -> None:
        pass

    def _any(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        with self.server.lock:
            fail = self.server.fail > 0
            if fail:
                self.server.fail -= 1
                self.server.failed += 1
            else:
                self.server.forwarded += 1
        if fail:
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_BODY)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(_BODY)
            return
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _any


@pytest.fixture
def hop(s3_server) -> Iterator[Hop]:  # type: ignore[no-untyped-def]
    h = Hop(s3_server.endpoint)
    t = threading.Thread(target=h.serve_forever, daemon=True)
    t.start()
    yield h
    h.shutdown()
    h.server_close()


def test_503s_are_retried_with_backoff_and_persistent_ones_are_one_line(s3_server, hop: Hop, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                         make_lineage) -> None:
    bucket = s3_server.make_bucket()
    base, _ = make_lineage(n_tensors=2, elems=1 << 14, children=0)
    a = Repo.init(tmp_path / "a")
    a.import_dir(base, "m")
    Transfer(a).set_remote("origin", {"url": f"s3://{bucket}/p", "endpoint": hop.endpoint})
    opts = s3_server.options(attempts=4)
    opts = type(opts)(hop.endpoint, opts.connect_timeout, opts.read_timeout, 4, opts.access_key, opts.secret_key)

    hop.fail = 3  # three 503s in a row: the retries (with backoff) get through
    out = push(a, Remote.of(a, "origin", opts))
    assert out["versions"] == 1 and hop.failed == 3 and hop.forwarded > 0
    assert list(s3_server.object_sizes(bucket, "p/refs/")) == ["p/refs/m.json"]

    a.import_dir(make_lineage(n_tensors=2, elems=1 << 14, children=1, seed=1)[1][0], "m")
    hop.fail = 10**6  # the server only fails now
    with pytest.raises(RemoteUnavailable) as err:
        push(a, Remote.of(a, "origin", type(opts)(hop.endpoint, 2.0, 5.0, 2, opts.access_key, opts.secret_key)))
    msg = str(err.value)
    assert "\n" not in msg and "after 2 tries" in msg and bucket in msg
    assert "ServiceUnavailable" in msg or "503" in msg
    ref = Remote.of(a, "origin", s3_server.options()).ref("m")
    assert ref is not None and len(ref.versions) == 1  # the remote is as it was
    a.close()
