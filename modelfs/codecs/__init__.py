"""Lossless chunk codecs: a registry of named, stable ids, each bytes -> bytes."""

from modelfs.codecs.base import Codec, EncodeContext, get_codec, register_codec, registered_codecs
from modelfs.codecs.policy import Encoding, choose_encoding, good_enough

__all__ = [
    "Codec",
    "EncodeContext",
    "Encoding",
    "choose_encoding",
    "get_codec",
    "good_enough",
    "register_codec",
    "registered_codecs",
]
# register the update codecs and the quantised-delta codecs of lossy mode
from modelfs.codecs import lowrank, mix, qdelta, sparse  # noqa: E402,F401
