"""Reading every version of a real lineage through a real FUSE mount."""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import FsLineage, Mounted, reader, wait_for

from modelfs.fs import control
from modelfs.repo import Repo

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]

BlakeDir = Callable[[Path], dict[str, str]]


def test_root_lists_one_directory_per_model(mounted: Mounted, fs_lineage: FsLineage) -> None:
    models = sorted({ref.split("@")[0] for ref in fs_lineage.versions})
    assert sorted(os.listdir(mounted.path)) == [".lineage", ".versions", *models]
    for hidden in (".versions", ".lineage"):
        assert stat.S_ISDIR(os.stat(mounted.path / hidden).st_mode)
    # `ls` hides the two views (dot names), `ls -a` shows them (it did not: issue 14)
    c = {**os.environ, "LC_ALL": "C"}
    plain = subprocess.run(["ls", mounted.path], capture_output=True, text=True, check=True, env=c)
    assert plain.stdout.split() == models
    every = subprocess.run(["ls", "-a", mounted.path], capture_output=True, text=True, check=True,
                           env=c)
    assert every.stdout.split() == [".lineage", ".versions", *models]
    assert os.path.isdir(mounted.path / "minilm@2")  # reachable, though not listed


def test_every_file_of_every_version_is_byte_exact(mounted: Mounted, fs_lineage: FsLineage,
                                                   blake3_of_dir: BlakeDir) -> None:
    for ref, v in fs_lineage.versions.items():
        got = blake3_of_dir(mounted.path / ref)
        assert got == {p: e.blake3_hex for p, e in v.files.items()}, ref
        assert got == blake3_of_dir(fs_lineage.source_of(ref)), ref
    # the head directory is the newest version
    assert blake3_of_dir(mounted.path / "minilm") == blake3_of_dir(
        fs_lineage.source_of("minilm@3"))


def test_export_equals_the_mount(mounted: Mounted, fs_repo: Repo, tmp_path: Path,
                                 blake3_of_dir: BlakeDir) -> None:
    fs_repo.export("minilm-shards@1", tmp_path / "export")
    assert blake3_of_dir(tmp_path / "export") == blake3_of_dir(mounted.path / "minilm-shards@1")


def test_cp_diff_and_sha256sum_work_unchanged(mounted: Mounted, fs_lineage: FsLineage,
                                              tmp_path: Path, blake3_of_dir: BlakeDir) -> None:
    src = fs_lineage.source_of("minilm@1")
    subprocess.run(["cp", "-r", str(mounted.path / "minilm@1"), str(tmp_path / "copy")],
                   check=True)
    assert blake3_of_dir(tmp_path / "copy") == blake3_of_dir(src)
    assert sorted(p.relative_to(tmp_path / "copy").as_posix()
                  for p in (tmp_path / "copy").rglob("*")) == sorted(
        p.relative_to(src).as_posix() for p in src.rglob("*"))
    same = subprocess.run(["diff", "-r", str(mounted.path / "minilm@2"),
                           str(fs_lineage.source_of("minilm@2"))], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout
    differ = subprocess.run(["diff", "-r", str(mounted.path / "minilm@2"),
                             str(mounted.path / "minilm@3")], capture_output=True, text=True)
    assert differ.returncode == 1 and "model.safetensors" in differ.stdout
    out = subprocess.run(["sha256sum", str(mounted.path / "minilm@2" / "model.safetensors")],
                         capture_output=True, text=True, check=True).stdout.split()[0]
    want = hashlib.sha256((fs_lineage.source_of("minilm@2") / "model.safetensors").read_bytes())
    assert out == want.hexdigest()
    ls = subprocess.run(["ls", "-l", str(mounted.path / "minilm@1")], capture_output=True,
                        text=True, check=True).stdout
    assert "model.safetensors" in ls and "1_Pooling" in ls
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-a", f"{mounted.path / 'minilm@2'}/", str(tmp_path / "rs")],
                       check=True)
        assert blake3_of_dir(tmp_path / "rs") == blake3_of_dir(fs_lineage.source_of("minilm@2"))


@pytest.mark.parametrize("ref", ["minilm@1", "minilm", "minilm-shards@1"])
def test_from_pretrained_gives_the_same_outputs(mounted: Mounted, fs_lineage: FsLineage,
                                                ref: str) -> None:
    import torch
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(str(mounted.path / "minilm@1"),
                                                     local_files_only=True)
    batch = tok(["a checkpoint read through FUSE", "lazily rebuilt from deltas"],
                return_tensors="pt", padding=True)
    source = fs_lineage.source_of("minilm@3" if ref == "minilm" else ref)
    outs = []
    for d in (mounted.path / ref, source):
        model = transformers.AutoModel.from_pretrained(str(d), local_files_only=True).eval()
        with torch.no_grad():
            outs.append(model(**batch).last_hidden_state)
    assert torch.equal(outs[0], outs[1])


def test_safetensors_torch_load_and_mmap(mounted: Mounted, fs_lineage: FsLineage) -> None:
    import torch
    from safetensors.torch import load_file

    d, src = mounted.path / "tiny@1", fs_lineage.source_of("tiny@1")
    a, b = load_file(str(d / "model.safetensors")), load_file(str(src / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for mm in (False, True):
        sd = torch.load(d / "pytorch_model.bin", mmap=mm, weights_only=True)
        assert all(torch.equal(sd[k], b[k]) for k in b)
    with open(d / "model.safetensors", "rb") as f, mmap.mmap(f.fileno(), 0,
                                                             prot=mmap.PROT_READ) as m:
        assert m[:] == (src / "model.safetensors").read_bytes()


def test_attributes(mounted: Mounted, fs_lineage: FsLineage) -> None:
    v = fs_lineage.versions["minilm@1"]
    d = mounted.path / "minilm@1"
    st = os.stat(d)
    assert stat.S_IMODE(st.st_mode) == 0o555 and stat.S_ISDIR(st.st_mode)
    assert st.st_nlink == 3  # ".", its name, and 1_Pooling/..
    assert st.st_mtime_ns == int(v.time * 1e9)
    f = os.stat(d / "model.safetensors")
    assert stat.S_IMODE(f.st_mode) == 0o444 and f.st_nlink == 1
    assert f.st_size == v.files["model.safetensors"].size
    assert f.st_mtime_ns == int(v.time * 1e9)
    assert f.st_blksize == 1 << 20
    # inode numbers: stable, the same from readdir, different per version
    assert os.stat(d / "model.safetensors").st_ino == f.st_ino
    assert {e.name: e.inode() for e in os.scandir(d)}["model.safetensors"] == f.st_ino
    assert os.stat(mounted.path / "minilm@2" / "model.safetensors").st_ino != f.st_ino
    link = os.lstat(mounted.path / ".versions" / "minilm" / "1")
    assert stat.S_ISLNK(link.st_mode)


def test_xattrs_on_files_and_directories(mounted: Mounted, fs_lineage: FsLineage) -> None:
    v = fs_lineage.versions["minilm-half@1"]
    parent = fs_lineage.versions["minilm@2"]
    for p in (mounted.path / "minilm-half@1", mounted.path / "minilm-half@1" / "config.json",
              mounted.path / "minilm-half"):
        assert os.getxattr(p, "user.modelfs.version") == v.id.encode()
        assert os.getxattr(p, "user.modelfs.parents") == parent.id.encode()
        assert os.getxattr(p, "user.modelfs.parent_refs") == b"minilm@2"
        assert os.getxattr(p, "user.modelfs.how") == b"cast"
    f = mounted.path / "minilm-half@1" / "model.safetensors"
    assert os.getxattr(f, "user.modelfs.blake3") == v.files["model.safetensors"].blake3_hex.encode()
    assert "user.modelfs.blake3" in os.listxattr(f)
    assert "user.modelfs.blake3" not in os.listxattr(mounted.path / "minilm-half@1")
    with pytest.raises(OSError) as e:
        os.getxattr(f, "user.nothing")
    assert e.value.errno == errno.ENODATA
    counters = json.loads(os.getxattr(mounted.path, "user.modelfs.counters"))
    assert {"chunks_decoded", "bytes_decoded", "reads"} <= counters.keys()
    assert int(os.getxattr(mounted.path, "user.modelfs.pid")) == mounted.proc.pid


def test_lineage_is_visible(mounted: Mounted, fs_lineage: FsLineage) -> None:
    m = mounted.path
    root = os.listdir(m)
    assert {".versions", ".lineage"} <= set(root)  # `ls -a` shows them (they are not hidden by name only)
    assert sorted(os.listdir(m / ".versions")) == sorted(n for n in root if not n.startswith("."))
    assert os.listdir(m / ".versions" / "minilm") == ["1", "2", "3"]
    assert os.readlink(m / ".versions" / "minilm" / "2") == "../../minilm@2"
    assert os.path.samefile(m / ".versions" / "minilm" / "2", m / "minilm@2")
    assert set(fs_lineage.versions) <= set(os.listdir(m / ".lineage"))
    node = m / ".lineage" / "minilm-half@1"
    assert os.listdir(node / "parents") == ["minilm@2"]
    assert os.path.samefile(node / "parents" / "minilm@2", m / ".lineage" / "minilm@2")
    assert os.path.samefile(node / "version", m / "minilm-half@1")
    assert (node / "how").read_text() == "cast\n"
    info = json.loads((node / "info.json").read_text())
    assert info["id"] == fs_lineage.versions["minilm-half@1"].id
    assert info["derived_from_refs"] == ["minilm@2"]
    kids = set(os.listdir(m / ".lineage" / "minilm@2" / "children"))
    assert {"minilm@3", "minilm-half@1", "minilm-part@1", "minilm-shards@1"} <= kids
    assert set(os.listdir(m / ".lineage" / "minilm@1" / "children")) >= {"minilm@2", "sibling@1"}
    # walking the graph by path: grandparent of minilm-half@1
    assert os.listdir(node / "parents" / "minilm@2" / "parents") == ["minilm@1"]


@pytest.mark.parametrize("path", [
    "nope", "minilm@99", "minilm@0", "minilm@02", "nope@1", "minilm/nope", "minilm@1/nope",
    ".versions/nope", ".versions/minilm/9", ".lineage/minilm@9", ".lineage/minilm",
    "minilm@1/model.safetensors/x",
])
def test_unknown_names_are_enoent(mounted: Mounted, path: str) -> None:
    with pytest.raises(OSError) as e:
        os.stat(mounted.path / path)
    want = errno.ENOTDIR if path.endswith("/x") else errno.ENOENT
    assert e.value.errno == want


def test_writes_to_versions_are_erofs(mounted: Mounted) -> None:
    """Versions and the lineage views are immutable (heads are writable: test_mount_writes)."""
    d = mounted.path / "minilm@1"
    attempts: list[Callable[[], object]] = [
        lambda: open(d / "config.json", "r+b"),  # noqa: SIM115
        lambda: open(d / "config.json", "wb"),  # noqa: SIM115
        lambda: open(d / "config.json", "ab"),  # noqa: SIM115
        lambda: open(d / "new.txt", "wb"),  # noqa: SIM115
        lambda: os.mkdir(d / "sub"),
        lambda: os.unlink(d / "config.json"),
        lambda: os.rename(d / "config.json", d / "c2.json"),
        lambda: os.chmod(d / "config.json", 0o644),
        lambda: os.utime(d / "config.json"),
        lambda: os.symlink("x", d / "link"),
        lambda: os.setxattr(d / "config.json", "user.x", b"1"),
        lambda: os.truncate(d / "config.json", 0),
        lambda: os.mkdir(mounted.path / ".versions" / "x"),
        lambda: open(mounted.path / ".lineage" / "minilm@1" / "how", "wb"),  # noqa: SIM115
    ]
    for i, attempt in enumerate(attempts):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, i


def _read_ahead_bytes(mnt: Path) -> int:
    m = control.find_mount(mnt)
    assert m is not None
    try:
        return int(Path(f"/sys/class/bdi/{m.dev}/read_ahead_kb").read_text()) * 1024
    except OSError:
        return 128 << 10


def test_one_tensor_decodes_only_its_chunks(fresh_mount: Callable[..., Mounted],
                                            fs_lineage: FsLineage, fs_repo: Repo) -> None:
    import torch
    from safetensors import safe_open

    m = fresh_mount()
    ref, name = "minilm-part@1", "encoder.layer.3.intermediate.dense.weight"
    path = m.path / ref / "model.safetensors"
    record = fs_repo.open_file(fs_lineage.versions[ref].files["model.safetensors"]).record
    spans = [(t.offset + a, t.offset + b, t.name)
             for t in record.tensors() for a, b in (t.chunk_span(i) for i in range(len(t.chunks)))]
    tensor = next(t for t in record.tensors() if t.name == name)
    ra = _read_ahead_bytes(m.path)

    def chunk_bytes_touching(lo: int, hi: int) -> int:
        return sum(b - a for a, b, _ in spans if a < hi and b > lo)

    c0 = m.counters()
    fd = os.open(path, os.O_RDONLY)
    try:
        n = int.from_bytes(os.pread(fd, 8, 0), "little")
        json.loads(os.pread(fd, n, 8))
    finally:
        os.close(fd)
    c1 = m.counters()
    header_end = 8 + n
    # the header comes from the stored header bytes; only the kernel's read-ahead past it
    # (a synchronous window and at most one asynchronous one) may touch the first chunks
    ra = 2 * max(ra, 1 << 20)
    assert c1["bytes_decoded"] - c0["bytes_decoded"] <= chunk_bytes_touching(0, header_end + ra)

    with safe_open(str(path), framework="pt") as sf:
        got = sf.get_tensor(name)
    c2 = m.counters()
    with safe_open(str(fs_lineage.source_of(ref) / "model.safetensors"), framework="pt") as sf:
        assert torch.equal(got, sf.get_tensor(name))
    decoded = c2["bytes_decoded"] - c0["bytes_decoded"]
    allowed = chunk_bytes_touching(0, header_end + ra) + chunk_bytes_touching(
        tensor.offset - ra, tensor.offset + tensor.nbytes + ra)
    assert tensor.nbytes <= decoded <= allowed, (decoded, allowed, tensor.nbytes)
    assert decoded < record.size / 4
    assert c2["prefetches"] == 0


def test_four_processes_read_different_versions_at_once(
        fresh_mount: Callable[..., Mounted], fs_lineage: FsLineage) -> None:
    m = fresh_mount(cache_mb=64)
    refs = ["minilm@1", "minilm@2", "minilm-half@1", "sibling@1"]
    procs = [reader("hash", str(m.path / r / "model.safetensors")) for r in refs]
    for ref, p in zip(refs, procs, strict=True):
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        assert out.strip() == fs_lineage.versions[ref].files["model.safetensors"].blake3_hex, ref
    c = m.counters()
    assert c["thread_reads"] > 0 and c["chunks_decoded"] > 0


def test_ls_answers_while_a_large_read_runs(fresh_mount: Callable[..., Mounted],
                                            fs_lineage: FsLineage, tmp_path: Path) -> None:
    m = fresh_mount(cache_mb=16)  # too small to keep the files: every pass decodes again
    stop = tmp_path / "stop"
    files = [str(m.path / r / "model.safetensors") for r in ("minilm@2", "sibling@1")]
    p = reader("loop", str(stop), *files)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "start"
        before = m.counters()["bytes_decoded"]
        assert wait_for(lambda: m.counters()["bytes_decoded"] > before + (8 << 20), 30)
        worst = 0.0
        for i in range(20):
            t = time.perf_counter()
            assert "minilm" in os.listdir(m.path)
            os.stat(m.path / f"minilm@{1 + i % 3}" / "config.json")
            worst = max(worst, time.perf_counter() - t)
            time.sleep(0.02)
        during = m.counters()["bytes_decoded"]
        assert p.poll() is None, "the reader finished too soon to prove anything"
        assert during > before
        assert worst < 0.5, f"ls took {worst:.3f}s while a read was decoding"
    finally:
        stop.touch()
        p.communicate(timeout=60)
    assert p.returncode == 0


def test_a_commit_moves_the_head(mounted: Mounted, fs_lineage: FsLineage, fs_repo: Repo,
                                 tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    m = mounted.path
    old = fs_lineage.versions["tiny@1"]
    held = open(m / "tiny" / "model.safetensors", "rb")  # noqa: SIM115
    try:
        src = tmp_path / "tiny2"
        src.mkdir()
        save_file({"w": torch.ones(8, 8)}, str(src / "model.safetensors"),
                  metadata={"format": "pt"})
        new = fs_repo.import_dir(src, model="tiny", how="finetune")
        assert wait_for(lambda: os.getxattr(m / "tiny", "user.modelfs.version")
                        == new.id.encode(), 5)
        assert wait_for(lambda: os.listdir(m / "tiny") == ["model.safetensors"], 5)
        assert (m / "tiny" / "model.safetensors").read_bytes() == (
            src / "model.safetensors").read_bytes()
        assert os.listdir(m / ".versions" / "tiny") == ["1", "2"]
        assert os.path.isdir(m / "tiny@2")
        assert sorted(os.listdir(m / "tiny@1")) == sorted(old.files)
        # a file opened before the commit still reads the version it was opened on
        assert held.read() == (fs_lineage.source_of("tiny@1") / "model.safetensors").read_bytes()
    finally:
        held.close()
