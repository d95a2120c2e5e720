"""The torch.save zip format: storages become typed tensor parts, everything else stays verbatim.

Byte-exact always (the parts tile the file, CRCs and padding included); tensors are
deduplicated and delta-coded like safetensors tensors; the pickle is read without running it.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from modelfs.formats import InlinePart, TensorPart, parse_file
from modelfs.repo import Repo


def layout_of(path: Path) -> Any:
    data = path.read_bytes()
    layout, warning = parse_file(path.name, memoryview(data))
    rebuilt = b"".join(p.data if isinstance(p, InlinePart) else data[p.offset:p.offset + p.nbytes]
                       for p in layout.parts)
    assert rebuilt == data
    return layout, warning


def stored_new(repo: Repo, v: Any, parent: Any) -> int:
    have = {k for e in parent.files.values() for t in repo.file_record(e).tensors() for k in t.chunks}
    new = {k for e in v.files.values() for t in repo.file_record(e).tensors() for k in t.chunks} - have
    return repo.stored_size_of(new) + sum(len(repo.file_record(e).to_bytes()) for e in v.files.values())


def test_every_storage_type_is_typed_and_named(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g)
    sd = {"lin.weight": w, "lin.bias": torch.randn(5, generator=g), "ids": torch.arange(7),
          "half": torch.randn(3, 4, generator=g).half(), "bf": torch.randn(9, generator=g).bfloat16(),
          "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn), "mask": torch.ones(3, dtype=torch.bool),
          "i8": torch.tensor([1, -2, 3], dtype=torch.int8), "tied": w, "row": w[2], "wt": w.t()}
    path = tmp_path / "m.pt"
    torch.save({"model": sd, "step": 7, "note": "hello"}, path)
    layout, warning = layout_of(path)
    assert warning is None and layout.format == "torch_pickle"
    parts = {p.name: p for p in layout.parts if isinstance(p, TensorPart)}
    assert len(parts) == 8  # tied/row/wt share lin.weight's storage
    assert (parts["model.lin.weight"].dtype.name, parts["model.lin.weight"].shape) == ("F32", (6, 5))
    assert parts["model.ids"].dtype.name == "I64"
    assert parts["model.half"].dtype.name == "F16" and parts["model.half"].shape == (3, 4)
    assert parts["model.bf"].dtype.name == "BF16"
    assert parts["model.f8"].dtype.name == "F8_E4M3"  # UntypedStorage + _rebuild_tensor_v3 dtype
    assert parts["model.mask"].dtype.name == "BOOL" and parts["model.i8"].dtype.name == "I8"


def test_modified_tensor_costs_little_and_exports_byte_exact(repo: Repo, tmp_path: Path,
                                                            blake3_of_dir: Any) -> None:
    g = torch.Generator().manual_seed(1)
    sd = {f"layer{i}.weight": torch.randn(512, 512, generator=g) for i in range(6)}
    sd["head.bias"] = torch.randn(512, generator=g)
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    torch.save(sd, v1 / "pytorch_model.bin")
    sd["layer3.weight"] = sd["layer3.weight"].clone()
    sd["layer3.weight"][:4] += 0.01  # one tensor, a few rows changed
    torch.save(sd, v2 / "pytorch_model.bin")
    a = repo.import_dir(v1, "m")
    b = repo.import_dir(v2, "m")
    assert b.files["pytorch_model.bin"].format == "torch_pickle"
    size = (v2 / "pytorch_model.bin").stat().st_size
    assert stored_new(repo, b, a) < size * 0.02
    out = tmp_path / "out"
    repo.export(b.ref, out)
    assert blake3_of_dir(out) == blake3_of_dir(v2)
    assert repo.maintenance().fsck().ok
    loaded = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert torch.equal(loaded["layer3.weight"], sd["layer3.weight"])


def test_bin_child_delta_codes_against_safetensors_parent(repo: Repo, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(2)
    sd = {f"enc.{i}.weight": torch.randn(256, 256, generator=g) for i in range(4)}
    (tmp_path / "st").mkdir()
    (tmp_path / "pt").mkdir()
    save_file(sd, str(tmp_path / "st" / "model.safetensors"))
    torch.save({k: v.clone() for k, v in sd.items()}, tmp_path / "pt" / "pytorch_model.bin")
    a = repo.import_dir(tmp_path / "st", "st")
    b = repo.import_dir(tmp_path / "pt", "pt", parents=["st"])
    assert stored_new(repo, b, a) < 4096  # the same tensors: chunks deduplicated across formats


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, ("touch /tmp/modelfs-pickle-executed",))


def test_pickle_is_never_executed(repo: Repo, tmp_path: Path) -> None:
    sentinel = Path("/tmp/modelfs-pickle-executed")
    sentinel.unlink(missing_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": _Evil()}, protocol=2))
        z.writestr("archive/data/0", b"\0" * 64)
    d = tmp_path / "evil"
    d.mkdir()
    (d / "model.pt").write_bytes(buf.getvalue())
    layout, _ = layout_of(d / "model.pt")
    assert layout.format == "torch_pickle"
    assert [p.dtype.name for p in layout.parts if isinstance(p, TensorPart)] == ["U8"]  # unknown: bytes
    v = repo.import_dir(d, "evil")
    out = tmp_path / "out"
    repo.export(v.ref, out)
    assert (out / "model.pt").read_bytes() == buf.getvalue()
    assert not sentinel.exists()


def test_zip64_and_broken_archives(repo: Repo, tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    torch.save({"w": torch.randn(100, 10)}, src)
    z64 = tmp_path / "z64.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(z64, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            with zout.open(info.filename, "w", force_zip64=True) as f:
                f.write(zin.read(info))
    layout, warning = layout_of(z64)
    assert warning is None
    assert [(p.name, p.dtype.name, p.shape) for p in layout.parts if isinstance(p, TensorPart)] == [
        ("w", "F32", (100, 10))]
    d = tmp_path / "broken"
    d.mkdir()
    data = src.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) - 30])
    (d / "not-a-zip.bin").write_bytes(b"PK\x03\x04" + bytes(100))
    v = repo.import_dir(d, "broken")
    assert {e.format for e in v.files.values()} == {"blob"}
    assert any("torch_pickle" in w for w in v.provenance.get("warnings", []))
    out = tmp_path / "out"
    repo.export(v.ref, out)
    assert (out / "truncated.pt").read_bytes() == data[: len(data) - 30]
