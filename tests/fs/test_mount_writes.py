"""Snapshot-on-write through a real FUSE mount: checkpoints saved into a head become versions.

One store (the shipped MiniLM as minilm@1) and one mount (the default settle, 1 s) are shared by the
module; each test writes its own models.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from mounthelp import (
    FUSE_MISSING,
    Mounted,
    draft_state,
    head_ref,
    reader,
    start_mount,
    wait_for,
    wait_ref,
)

from modelfs.repo import Repo

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]

BlakeDir = Callable[[Path], dict[str, str]]
SETTLE = "1.0"


@pytest.fixture(scope="module")
def wstore(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    if FUSE_MISSING:
        pytest.fail(FUSE_MISSING)
    store = tmp_path_factory.mktemp("wstore") / "store"
    with Repo.init(store) as r:
        r.import_dir(minilm_dir, "minilm", infer_parent=False)
    return store


@pytest.fixture(scope="module")
def wrepo(wstore: Path) -> Iterator[Repo]:
    """The store opened in this process, to look at what the daemon committed."""
    with Repo.open(wstore) as r:
        yield r


@pytest.fixture(scope="module")
def wmount(wstore: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    root = tmp_path_factory.mktemp("wmnt")
    m = start_mount(wstore, root / "mnt", root / "daemon.log", extra=("--settle", SETTLE))
    try:
        yield m
    finally:
        m.stop()


def stored_bytes(repo: Repo) -> int:
    return int(repo.store.stored_bytes())  # type: ignore[attr-defined]


def count(repo: Repo, model: str) -> int:
    return len(repo.versions(model))


def settled(repo: Repo, model: str, n: int, seconds: float = 1.2) -> None:
    """No further version appears once the burst is over."""
    time.sleep(seconds)
    assert count(repo, model) == n


def test_save_pretrained_becomes_one_version(wmount: Mounted, wrepo: Repo, trained: Any,
                                             tmp_path: Path, blake3_of_dir: BlakeDir,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    import transformers
    torch.manual_seed(5)
    model = transformers.AutoModel.from_pretrained(str(trained.ft), local_files_only=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, 2000, (2, 16))
    for _ in range(2):  # real training steps on the CPU
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    local = tmp_path / "local"
    model.save_pretrained(str(local))
    head = wmount.path / "minilm"
    before, n = stored_bytes(wrepo), count(wrepo, "minilm")
    model.save_pretrained(str(head))
    closed = time.monotonic()
    latency = wait_ref(head, f"minilm@{n + 1}")
    settled(wrepo, "minilm", n + 1)  # one save_pretrained burst: exactly one version
    assert time.monotonic() - closed < 30
    v = wrepo.resolve("minilm")
    assert v.previous == wrepo.resolve("minilm@1").id
    saved = blake3_of_dir(local)
    assert {p: h for p, h in blake3_of_dir(wmount.path / v.ref).items() if p in saved} == saved
    assert {p: v.files[p].blake3_hex for p in saved} == saved
    assert "tokenizer.json" in v.files  # files the save did not touch are carried over
    size = (local / "model.safetensors").stat().st_size
    grown = stored_bytes(wrepo) - before
    with capsys.disabled():
        print(f"\n  save_pretrained: committed {latency:.2f}s after the last close (settle "
              f"{SETTLE}s); store grew {grown / 1e6:.1f} MB for a {size / 1e6:.1f} MB model")
    assert grown < 0.5 * size, (grown, size)  # a delta against minilm@1, not a copy
    tok = transformers.AutoTokenizer.from_pretrained(str(head), local_files_only=True)
    batch = tok(["saved into the mount"], return_tensors="pt")
    outs = []
    for d in (head, local):
        m = transformers.AutoModel.from_pretrained(str(d), local_files_only=True).eval()
        with torch.no_grad():
            outs.append(m(**batch).last_hidden_state)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("derive", [False, True], ids=["inferred", "derive"])
def test_cp_r_of_a_version_makes_a_cheap_new_model(wmount: Mounted, wrepo: Repo,
                                                   blake3_of_dir: BlakeDir, cli: Any,
                                                   wstore: Path, derive: bool) -> None:
    name = f"copy-{'derived' if derive else 'inferred'}"
    src = wmount.path / "minilm@1"
    dst = wmount.path / name
    before = stored_bytes(wrepo)
    if derive:
        r = cli("derive", "minilm@1", name, store=wstore)
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: (dst / "model.safetensors").exists(), 5)  # shown at once
        subprocess.run(["cp", "-rT", str(src), str(dst)], check=True)
    else:
        subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    wait_ref(dst, f"{name}@1")
    settled(wrepo, name, 1, 0.8)
    copied = sum(e.size for e in wrepo.resolve("minilm@1").files.values())
    assert blake3_of_dir(dst) == blake3_of_dir(src)
    grown = stored_bytes(wrepo) - before
    assert grown < 0.01 * copied, (grown, copied)
    info = json.loads((wmount.path / ".lineage" / f"{name}@1" / "info.json").read_text())
    assert info["derived_from_refs"] == ["minilm@1"]
    if derive:
        assert info["how"] == "derive"
    else:
        assert info["provenance"]["inferred_parent"] == "minilm@1"
        assert "parent inferred" in wmount.log_text()


def test_safetensors_and_torch_save_into_a_new_model(wmount: Mounted, wrepo: Repo,
                                                     tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    d = wmount.path / "saved"
    d.mkdir()
    sd = {"w": torch.randn(256, 128), "b": torch.arange(128, dtype=torch.float16)}
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    torch.save(sd, d / "pytorch_model.bin")
    (d / "config.json").write_text('{"hidden": 128}\n')
    wait_ref(d, "saved@1")
    v = wrepo.resolve("saved@1")
    assert sorted(v.files) == ["config.json", "model.safetensors", "pytorch_model.bin"]
    assert v.files["model.safetensors"].format == "safetensors"
    assert v.files["pytorch_model.bin"].format != "blob"
    got = load_file(str(wmount.path / "saved@1" / "model.safetensors"))
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    back = torch.load(wmount.path / "saved@1" / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert os.getxattr(d / "model.safetensors", "user.modelfs.format") == b"safetensors"


def test_posix_operations_in_a_head(wmount: Mounted, wrepo: Repo) -> None:
    d = wmount.path / "posix"
    d.mkdir()
    (d / "sub").mkdir()
    (d / "sub" / "a.txt").write_bytes(b"aaa")
    with open(d / "sub" / "a.txt", "ab") as f:  # append
        f.write(b"+more")
    with open(d / "sub" / "a.txt", "r+b") as f:  # write in the middle, no truncation
        f.seek(1)
        f.write(b"Z")
    (d / "b.txt").write_bytes(b"b" * 10)
    os.truncate(d / "b.txt", 4)
    os.chmod(d / "b.txt", 0o600)
    os.utime(d / "b.txt", (1_000_000_000, 1_000_000_000))
    assert os.stat(d / "b.txt").st_mtime == 1_000_000_000
    (d / "c.txt").write_bytes(b"ccc")
    os.rename(d / "c.txt", d / "sub" / "c2.txt")
    (d / "gone.txt").write_bytes(b"x")
    os.unlink(d / "gone.txt")
    (d / "empty").mkdir()
    (d / "empty2").mkdir()
    os.rmdir(d / "empty2")
    assert sorted(os.listdir(d)) == ["b.txt", "empty", "sub"]
    assert (d / "sub" / "a.txt").read_bytes() == b"aZa+more"
    assert os.stat(d / "sub" / "a.txt").st_size == 8
    wait_ref(d, "posix@1")
    v = wrepo.resolve("posix@1")
    assert sorted(v.files) == ["b.txt", "sub/a.txt", "sub/c2.txt"]  # empty dirs are no files
    assert v.files["b.txt"].mode == 0o600 and v.files["b.txt"].size == 4
    assert (wmount.path / "posix@1" / "sub" / "a.txt").read_bytes() == b"aZa+more"
    assert os.path.isdir(d / "empty")  # still shown while the mount runs
    for bad, err in [("no@good", errno.EINVAL), (".hidden", errno.EINVAL)]:
        with pytest.raises(OSError) as e:
            os.mkdir(wmount.path / bad)
        assert e.value.errno == err, bad
    with pytest.raises(OSError) as e:
        (wmount.path / "file-at-root").write_bytes(b"x")
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        os.rename(d / "b.txt", wmount.path / "minilm" / "b.txt")  # mv copies instead
    assert e.value.errno == errno.EXDEV
    assert "no@good" in wmount.log_text()  # refused names are logged


def test_versions_stay_read_only(wmount: Mounted) -> None:
    d = wmount.path / "minilm@1"
    for attempt in (lambda: open(d / "config.json", "wb"),  # noqa: SIM115
                    lambda: open(d / "new.txt", "wb"),  # noqa: SIM115
                    lambda: os.rename(d / "config.json", d / "c.json"),
                    lambda: os.unlink(d / "config.json"),
                    lambda: os.mkdir(d / "x"),
                    lambda: os.truncate(d / "config.json", 1)):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS


def test_a_reader_keeps_the_bytes_it_opened(wmount: Mounted, wrepo: Repo,
                                            tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    d = wmount.path / "reread"
    d.mkdir()
    old = {"w": np.arange(1 << 20, dtype=np.float32)}
    save_file(old, str(d / "model.safetensors"))
    wait_ref(d, "reread@1")
    want_old = wrepo.resolve("reread@1").files["model.safetensors"].blake3_hex
    p = reader("pause", str(d / "model.safetensors"), str(1 << 20))
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        save_file({"w": -np.arange(1 << 20, dtype=np.float32)}, str(d / "model.safetensors"))
        wait_ref(d, "reread@2")
        out, _ = p.communicate("go\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert out.strip() == want_old  # opened before the commit: the old bytes to the end
    new = wrepo.resolve("reread@2").files["model.safetensors"].blake3_hex
    assert blake3.blake3((d / "model.safetensors").read_bytes()).hexdigest() == new != want_old


def test_two_writers_two_models_and_one_model(wmount: Mounted, wrepo: Repo) -> None:
    for name in ("par-a", "par-b", "par-same"):
        (wmount.path / name).mkdir()
    procs = [reader("write", str(wmount.path / m), tag, "4", "1536")
             for m, tag in [("par-a", "a"), ("par-b", "b"), ("par-same", "x"),
                            ("par-same", "y")]]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        outs.append(dict(line.split() for line in out.splitlines()))
    want = {"par-a": outs[0], "par-b": outs[1], "par-same": {**outs[2], **outs[3]}}
    for model, files in want.items():
        assert wait_for(lambda m=model: head_ref(wmount.path / m) is not None
                        and draft_state(wmount.path / m)["pending"] is False
                        and draft_state(wmount.path / m)["storing"] == 0, 30)
        v = wrepo.resolve(model)
        assert {p: e.blake3_hex for p, e in v.files.items()} == files, model
        for i in range(1, v.number + 1):  # every version is whole: files complete, no tmp
            vi = wrepo.resolve(f"{model}@{i}")
            assert all(e.blake3_hex == files[p] for p, e in vi.files.items()), (model, i)
    report = wrepo.maintenance().fsck()
    assert report.ok, report.errors


def test_huge_sparse_and_invalid_files_are_stored_byte_exact(wmount: Mounted, wrepo: Repo
                                                             ) -> None:
    d = wmount.path / "odd"
    d.mkdir()
    size = 512 << 20
    with open(d / "huge.safetensors", "wb") as f:  # claims a format it does not have
        f.truncate(size)
        f.seek(size - 4)
        f.write(b"end!")
    junk = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + os.urandom(4096)
    (d / "bad.safetensors").write_bytes(junk)
    wait_ref(d, "odd@1", timeout=60)
    v = wrepo.resolve("odd@1")
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update(bytes(size - 4))
    h.update(b"end!")
    assert v.files["huge.safetensors"].blake3_hex == h.hexdigest()
    assert v.files["huge.safetensors"].format == "blob"
    assert v.files["bad.safetensors"].blake3_hex == blake3.blake3(junk).hexdigest()
    assert v.files["bad.safetensors"].format == "blob"
    assert (wmount.path / "odd@1" / "bad.safetensors").read_bytes() == junk
    log = wmount.log_text()
    assert "bad.safetensors: not a valid safetensors file" in log
    assert "huge.safetensors: not a valid safetensors file" in log


def test_fsync_of_the_directory_and_unmount_commit_at_once(tmp_path: Path) -> None:
    wstore = tmp_path / "store"  # its own store: the module's one is mounted writable already
    Repo.init(wstore).close()
    m = start_mount(wstore, tmp_path / "mnt", tmp_path / "d.log", extra=("--settle", "3600"))
    try:
        d = m.path / "slow"
        d.mkdir()
        (d / "a.txt").write_bytes(b"first")
        time.sleep(0.3)
        assert head_ref(d) is None  # the settle time has not passed
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)  # commits now
        finally:
            os.close(fd)
        assert head_ref(d) == "slow@1"
        (d / "b.txt").write_bytes(b"second")
    finally:
        assert m.stop() == 0
    with Repo.open(wstore) as wrepo:
        assert sorted(wrepo.resolve("slow").files) == ["a.txt", "b.txt"]  # unmount committed it
    assert "[unmount]" in m.log_text()
    assert not any(p.is_file() for p in (wstore / "staging").rglob("*") if p.name != ".lock")


def test_statfs_reports_the_staging_disk(wmount: Mounted, wstore: Path) -> None:
    a, b = os.statvfs(wmount.path), os.statvfs(wstore / "staging")
    assert a.f_blocks * a.f_frsize == b.f_blocks * b.f_frsize
    assert shutil.disk_usage(wmount.path).free > 0
