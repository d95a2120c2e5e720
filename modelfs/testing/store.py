"""The store conformance suite: what every `Store` implementation must do, as pytest tests.

Upper layers are tested on the in-memory twin for speed; this suite is what makes that valid.
Subclass `StoreTests` and provide a ``store`` fixture yielding an empty store:

    class TestMyStore(StoreTests):
        @pytest.fixture
        def store(self, tmp_path):
            s = MyStore(tmp_path / "s")
            yield s
            s.close()
"""

from __future__ import annotations

import threading

import pytest

from modelfs.store import TABLES, Store


class Boom(Exception):
    pass


def _fill(store: Store, table: str, pairs: dict[bytes, bytes]) -> None:
    with store.write() as txn:
        for k, v in pairs.items():
            assert txn.put(table, k, v) is True


class StoreTests:
    """Subclass with a ``store`` fixture that yields an empty store (and closes it after)."""

    def test_every_table_exists_and_starts_empty(self, store: Store) -> None:
        with store.read() as txn:
            for t in TABLES:
                assert list(txn.items(t)) == []
                assert txn.get(t, b"k") is None

    def test_put_get_roundtrip_of_binary_keys_and_values(self, store: Store) -> None:
        pairs = {b"\x00": b"", b"a": b"1", b"\xff" * 40: bytes(range(256)) * 100, b"k\x00v": b"\x00\x00"}
        _fill(store, "chunks", pairs)
        with store.read() as txn:
            for k, v in pairs.items():
                got = txn.get("chunks", k)
                assert got is not None and bytes(got) == v
            assert txn.get("chunks", b"missing") is None

    def test_paging_hints_name_a_view_or_nothing_and_change_no_bytes(self, store: Store) -> None:
        value = bytes(range(256)) * 4096  # 1 MiB: a record on pages of its own in LMDB
        _fill(store, "chunks", {b"big": value})
        assert store.offset_of(b"not a view into the store") is None
        with store.read(views=True) as txn:
            view = txn.get("chunks", b"big")
            assert view is not None
            off = store.offset_of(view)
            assert off is None or off >= 0
            store.will_need([] if off is None else [(off, len(view))])
            store.will_need([(1 << 50, 4096)])  # past the end: a hint, never an error
        assert isinstance(store.random_access(), bool)
        with store.read() as txn:
            got = txn.get("chunks", b"big")
            assert got is not None and bytes(got) == value

    def test_tables_are_separate(self, store: Store) -> None:
        _fill(store, "files", {b"k": b"in files"})
        with store.read() as txn:
            assert txn.get("chunks", b"k") is None
            assert txn.get("files", b"k") == b"in files"
            assert list(txn.keys("versions")) == []

    def test_overwrite_true_replaces_and_overwrite_false_keeps(self, store: Store) -> None:
        with store.write() as txn:
            assert txn.put("meta", b"k", b"first")
            assert txn.put("meta", b"k", b"second") is True
            assert txn.put("meta", b"k", b"third", overwrite=False) is False
            assert txn.get("meta", b"k") == b"second"
            assert txn.put("meta", b"new", b"x", overwrite=False) is True
        with store.read() as txn:
            assert txn.get("meta", b"k") == b"second"
            assert txn.get("meta", b"new") == b"x"

    def test_delete_reports_whether_something_was_there(self, store: Store) -> None:
        _fill(store, "chunks", {b"a": b"1", b"b": b"2"})
        with store.write() as txn:
            assert txn.delete("chunks", b"a") is True
            assert txn.delete("chunks", b"a") is False
            assert txn.delete("chunks", b"never") is False
            assert txn.get("chunks", b"a") is None  # a writer sees its own delete
        with store.read() as txn:
            assert [k for k in txn.keys("chunks")] == [b"b"]

    def test_items_and_keys_are_sorted_and_filtered_by_prefix(self, store: Store) -> None:
        keys = [b"", b"a", b"a\x00", b"a\x00\x01", b"a\xff", b"ab", b"abc", b"b", b"`", b"\xff", b"\xff\x00"]
        keys = [k for k in keys if k]  # LMDB cannot hold an empty key
        _fill(store, "vnums", {k: b"v" + k for k in keys})
        with store.read() as txn:
            assert [k for k, _ in txn.items("vnums")] == sorted(keys)
            assert list(txn.keys("vnums")) == sorted(keys)
            for prefix in (b"a", b"a\x00", b"ab", b"b", b"\xff", b"c", b"a\xff\xff", b"\xff\x00\x00"):
                want = sorted(k for k in keys if k.startswith(prefix))
                assert [k for k, _ in txn.items("vnums", prefix)] == want, prefix
                assert list(txn.keys("vnums", prefix)) == want, prefix
                assert all(bytes(v) == b"v" + k for k, v in txn.items("vnums", prefix))

    def test_prefix_past_every_key_yields_nothing(self, store: Store) -> None:
        _fill(store, "tsig", {b"a": b"", b"b": b""})
        with store.read() as txn:
            assert list(txn.items("tsig", b"c")) == []
            assert list(txn.keys("tsig", b"\xff")) == []

    def test_a_writer_sees_its_own_writes_in_items(self, store: Store) -> None:
        _fill(store, "children", {b"p\x00c1": b""})
        with store.write() as txn:
            txn.put("children", b"p\x00c2", b"")
            txn.delete("children", b"p\x00c1")
            assert list(txn.keys("children", b"p\x00")) == [b"p\x00c2"]

    def test_a_write_transaction_that_raises_changes_nothing(self, store: Store) -> None:
        _fill(store, "models", {b"m": b"old", b"gone": b"still here"})
        with pytest.raises(Boom), store.write() as txn:
            txn.put("models", b"m", b"new")
            txn.put("models", b"n", b"added")
            txn.delete("models", b"gone")
            txn.put("chunks", b"c", b"x")
            raise Boom()
        with store.read() as txn:
            assert txn.get("models", b"m") == b"old"
            assert txn.get("models", b"n") is None
            assert txn.get("models", b"gone") == b"still here"
            assert list(txn.items("chunks")) == []
        # and the store still takes writes afterwards
        _fill(store, "models", {b"after": b"ok"})
        with store.read() as txn:
            assert txn.get("models", b"after") == b"ok"

    def test_readers_during_a_write_see_the_old_state(self, store: Store) -> None:
        _fill(store, "versions", {b"v": b"old"})
        in_write = threading.Event()
        release = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                with store.write() as txn:
                    txn.put("versions", b"v", b"new")
                    txn.put("versions", b"w", b"added")
                    in_write.set()
                    assert release.wait(10)
            except BaseException as e:  # noqa: BLE001  (reported to the main thread)
                errors.append(e)
                in_write.set()

        t = threading.Thread(target=writer)
        t.start()
        try:
            assert in_write.wait(10)
            seen: list[object] = []

            def reader() -> None:
                with store.read() as txn:
                    seen.extend([txn.get("versions", b"v"), txn.get("versions", b"w"),
                                 [k for k, _ in txn.items("versions")]])

            r = threading.Thread(target=reader)
            r.start()
            r.join(5)
            assert not r.is_alive(), "a reader blocked on an open write transaction"
            assert seen == [b"old", None, [b"v"]]
        finally:
            release.set()
            t.join(10)
        assert not errors
        with store.read() as txn:
            assert txn.get("versions", b"v") == b"new"
            assert txn.get("versions", b"w") == b"added"

    def test_a_read_transaction_is_a_snapshot(self, store: Store) -> None:
        _fill(store, "files", {b"f": b"1"})
        with store.read() as snap:
            done = threading.Event()

            def writer() -> None:  # commit from another thread while the snapshot is open
                with store.write() as txn:
                    txn.put("files", b"f", b"2")
                    txn.put("files", b"g", b"3")
                done.set()

            t = threading.Thread(target=writer)
            t.start()
            assert done.wait(10)
            t.join()
            assert snap.get("files", b"f") == b"1"
            assert list(snap.keys("files")) == [b"f"]
        with store.read() as txn:
            assert txn.get("files", b"f") == b"2"

    def test_stored_bytes_grows_with_data(self, store: Store) -> None:
        before = store.stored_bytes()
        _fill(store, "chunks", {bytes([i]) * 32: bytes([i]) * 100_000 for i in range(20)})
        assert store.stored_bytes() >= before + 20 * 100_000

    def test_views_read_the_stored_bytes_in_place_and_stay_valid_together(self, store: Store) -> None:
        big = {b"a" * 32: bytes(range(256)) * 8000, b"b" * 32: b"\x07" * 3_000_000}
        _fill(store, "chunks", big)
        with store.read(views=True) as txn:
            got = {k: txn.get("chunks", k) for k in big}  # several views open at once
            assert txn.get("chunks", b"missing") is None
            for k, v in big.items():
                view = got[k]
                assert isinstance(view, memoryview) and view.readonly and bytes(view) == v

    def test_views_are_a_snapshot_too(self, store: Store) -> None:
        _fill(store, "chunks", {b"k": b"old" * 2000})
        with store.read(views=True) as snap:
            view = snap.get("chunks", b"k")
            t = threading.Thread(target=lambda: _fill(store, "chunks", {b"k": b"new" * 2000}))
            t.start()
            t.join(10)
            assert view is not None and bytes(view) == b"old" * 2000
