"""Keyed records in named tables with transactions: the only layer that knows about LMDB."""

from modelfs.store.base import TABLES, ReadTxn, Store, WriteTxn
from modelfs.store.lmdb_store import LmdbStore
from modelfs.store.memory import MemoryStore

__all__ = ["TABLES", "LmdbStore", "MemoryStore", "ReadTxn", "Store", "WriteTxn"]
