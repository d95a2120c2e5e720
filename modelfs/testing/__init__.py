"""Conformance suites that ship with modelfs, as zarr ships `zarr.testing.store.StoreTests`.

Every implementation of an interface, built in or a plug-in, proves it behaves by subclassing
the suite: `StoreTests` (a store), `CodecTests` (a chunk codec: bit-exact round trips over
every dtype) and `FormatTests` (a file format: parts tile the file, round trip byte-exact).

This package imports pytest and hypothesis, which are test dependencies: only tests import it,
never modelfs itself.
"""

from modelfs.testing.codecs import CodecTests
from modelfs.testing.formats import FormatTests
from modelfs.testing.store import StoreTests

__all__ = ["CodecTests", "FormatTests", "StoreTests"]
