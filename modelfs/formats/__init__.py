"""File formats: turn a file into a layout of verbatim bytes and tensors, and back, byte-exact."""

from modelfs.formats.base import (
    MAX_TENSORS,
    FileLayout,
    Format,
    FormatError,
    InlinePart,
    TensorPart,
    get_format,
    parse_file,
    register_format,
    registered_formats,
)

__all__ = [
    "MAX_TENSORS",
    "FileLayout",
    "Format",
    "FormatError",
    "InlinePart",
    "TensorPart",
    "get_format",
    "parse_file",
    "register_format",
    "registered_formats",
]

from modelfs.formats import safetensors as _safetensors  # noqa: E402,F401  (registers the format)
from modelfs.formats import torch_pickle as _torch_pickle  # noqa: E402,F401  (registers the format)
