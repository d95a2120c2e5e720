"""The format conformance suite (modelfs.testing.FormatTests) run on every built-in format.

Sample files are written by the real libraries (safetensors' torch and numpy front ends,
`torch.save`), with every dtype they can write, 0-d and empty tensors, metadata, shared
storages and views.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import safetensors.numpy as st_numpy
import safetensors.torch as st_torch
import torch

from modelfs.dtypes import DTYPES
from modelfs.formats import registered_formats
from modelfs.testing import FormatTests


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(33, 17, generator=g), "b": torch.zeros(17), "half": torch.randn(40, generator=g).half(),
            "bf": torch.randn(5, 7, generator=g).bfloat16(), "ids": torch.arange(11), "flag": torch.tensor(True),
            "f8": torch.randn(9, generator=g).to(torch.float8_e4m3fn), "empty": torch.empty(0, 3)}


class TestSafetensors(FormatTests):
    format_name = "safetensors"

    def sample_files(self) -> dict[str, bytes]:
        every = {}
        for name, tdt in st_torch._TYPES.items():
            if name in DTYPES:
                isz = DTYPES[name].itemsize
                every[f"{name}.full"] = torch.arange(6 * isz, dtype=torch.uint8).view(tdt).reshape(2, 3)
                every[f"{name}.scalar"] = torch.zeros(isz, dtype=torch.uint8).view(tdt).reshape(())
        rng = np.random.default_rng(0)
        return {
            "model.safetensors": st_torch.save(_tensors(0), metadata={"format": "pt", "note": "é ☃"}),
            "every-dtype.safetensors": st_torch.save(every),
            "numpy.safetensors": st_numpy.save({"a": rng.standard_normal((8, 8)).astype(np.float32),
                                                "c": rng.integers(0, 9, 13).astype(np.int16)}),
            "weights.bin": st_torch.save({"only": torch.ones(4)}),  # claimed by its magic, not its name
            "no-tensors.safetensors": st_torch.save({}),
        }

    def invalid_files(self) -> dict[str, bytes]:
        good = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}

        def made(header: object, data: bytes) -> bytes:
            raw = json.dumps(header).encode()
            return struct.pack("<Q", len(raw)) + raw + data

        return {"gap.safetensors": made({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
                "trailing.safetensors": made(good, bytes(8) + b"extra"),
                "unknown-dtype.safetensors": made({"a": {"dtype": "F12", "shape": [2], "data_offsets": [0, 8]}},
                                                  bytes(8)),
                "truncated.safetensors": made(good, bytes(8))[:-3]}


class TestTorchPickle(FormatTests):
    format_name = "torch_pickle"

    def sample_files(self) -> dict[str, bytes]:
        def saved(obj: object) -> bytes:
            buf = io.BytesIO()
            torch.save(obj, buf)
            return buf.getvalue()

        t = _tensors(1)
        del t["f8"]  # torch.save writes fp8 too, but keep the sample to the common types
        shared = torch.randn(10, 10)
        return {
            "pytorch_model.bin": saved(t),
            "views.pt": saved({"whole": shared, "row": shared[3], "col": shared[:, 2], "t": shared.t()}),
            "nested.ckpt": saved({"state_dict": {"w": torch.ones(3, 3)}, "epoch": 3, "names": ["a", "b"]}),
        }


SUITES = {cls.format_name for cls in FormatTests.__subclasses__() if cls.__module__ == __name__}


def test_every_built_in_format_runs_the_suite() -> None:
    built_in = {n for n, f in registered_formats().items() if type(f).__module__.startswith("modelfs.")}
    assert built_in == SUITES
