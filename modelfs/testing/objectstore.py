"""The object-store conformance suite: what every remote transport must do, as pytest tests.

The remote layer's correctness rests on a few promises: a ranged GET returns exactly the
bytes asked for, a create-only PUT has one winner, and a PUT conditional on an ETag never
loses a concurrent update. Subclass `ObjectStoreTests` with an ``objstore`` fixture yielding
an empty `ObjectStore` (a fresh bucket, a fresh directory); tests/remote runs it on S3
(SeaweedFS) and on file://.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelfs.remote.transport import ObjectStore, PreconditionFailed


class ObjectStoreTests:
    def test_missing_objects_read_as_none(self, objstore: ObjectStore) -> None:
        assert objstore.get("nope") is None
        assert objstore.get_tagged("a/nope") is None
        assert objstore.head("nope") is None
        assert objstore.list("") == []

    def test_put_get_head_roundtrip_of_binary_data(self, objstore: ObjectStore) -> None:
        data = bytes(range(256)) * 1000
        etag = objstore.put("packs/p1.pack", data)
        assert objstore.get("packs/p1.pack") == data
        got = objstore.get_tagged("packs/p1.pack")
        assert got is not None and got == (data, etag)
        info = objstore.head("packs/p1.pack")
        assert info is not None and info.size == len(data) and info.etag == etag and info.modified > 0
        assert objstore.put("packs/empty", b"") and objstore.get("packs/empty") == b""

    def test_ranged_get_returns_exactly_the_range(self, objstore: ObjectStore) -> None:
        data = bytes(range(256)) * 64
        objstore.put("k", data)
        for start, length in [(0, 1), (1, 255), (1000, 3000), (len(data) - 7, 7), (0, len(data))]:
            assert objstore.get_range("k", start, length) == data[start:start + length]

    def test_put_replaces(self, objstore: ObjectStore) -> None:
        e1 = objstore.put("k", b"one")
        e2 = objstore.put("k", b"two!")
        assert objstore.get("k") == b"two!" and e1 != e2

    def test_create_only_put_refuses_an_existing_object(self, objstore: ObjectStore) -> None:
        objstore.put_if("refs/m.json", b"first", None)
        with pytest.raises(PreconditionFailed):
            objstore.put_if("refs/m.json", b"second", None)
        assert objstore.get("refs/m.json") == b"first"

    def test_if_match_replaces_only_the_version_read(self, objstore: ObjectStore) -> None:
        e1 = objstore.put_if("refs/m.json", b"v1", None)
        e2 = objstore.put_if("refs/m.json", b"v2", e1)
        assert objstore.get_tagged("refs/m.json") == (b"v2", e2)
        with pytest.raises(PreconditionFailed):
            objstore.put_if("refs/m.json", b"v3", e1)  # stale: someone moved it since
        assert objstore.get("refs/m.json") == b"v2"
        with pytest.raises(PreconditionFailed):
            objstore.put_if("refs/absent.json", b"x", e2)  # If-Match on nothing matches nothing
        assert objstore.get("refs/absent.json") is None

    def test_list_by_prefix_in_key_order(self, objstore: ObjectStore) -> None:
        for k in ["packs/b.idx", "packs/a.pack", "refs/x.json", "packsx", "packs/a.idx"]:
            objstore.put(k, k.encode())
        assert [o.key for o in objstore.list("packs/")] == ["packs/a.idx", "packs/a.pack", "packs/b.idx"]
        sizes = {o.key: o.size for o in objstore.list("")}
        assert sizes == {k: len(k) for k in ["packs/b.idx", "packs/a.pack", "refs/x.json", "packsx",
                                             "packs/a.idx"]}

    def test_delete_removes_and_absent_is_fine(self, objstore: ObjectStore) -> None:
        objstore.put("k", b"v")
        objstore.delete("k")
        objstore.delete("k")
        assert objstore.get("k") is None and objstore.list("") == []

    def test_one_winner_among_concurrent_creates(self, objstore: ObjectStore) -> None:
        wins: list[int] = []
        lock = threading.Lock()

        def create(i: int) -> None:
            try:
                objstore.put_if("refs/race.json", str(i).encode(), None)
            except PreconditionFailed:
                return
            with lock:
                wins.append(i)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, range(8)))
        assert len(wins) == 1
        assert objstore.get("refs/race.json") == str(wins[0]).encode()

    def test_no_update_is_lost_under_concurrent_if_match(self, objstore: ObjectStore) -> None:
        """Read-modify-write loops over one counter: every increment survives."""
        objstore.put_if("refs/counter", b"0", None)
        per_thread, threads = 5, 4

        def bump(_: int) -> int:
            retries = 0
            for _ in range(per_thread):
                while True:
                    got = objstore.get_tagged("refs/counter")
                    assert got is not None
                    try:
                        objstore.put_if("refs/counter", str(int(got[0]) + 1).encode(), got[1])
                        break
                    except PreconditionFailed:
                        retries += 1
            return retries

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(bump, range(threads)))
        assert objstore.get("refs/counter") == str(per_thread * threads).encode()
