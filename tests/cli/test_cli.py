"""The `modelfs` command line, run as users run it: a real process on a real store.

Happy paths of every verb (with --store and with MODELFS_STORE), --json output that
parses, the lineage as a tree and as DOT, and every bad input we could think of giving one
clear line on stderr, a non-zero exit, no traceback, and no change to the store.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

from modelfs.errors import InvalidName, NameTooLong
from modelfs.names import check_file_path, check_model_name


def write_checkpoint(d: Path, weights: dict[str, np.ndarray], config: bytes) -> Path:
    from safetensors.numpy import save_file

    d.mkdir(parents=True)
    save_file(weights, str(d / "model.safetensors"))
    (d / "config.json").write_bytes(config)
    (d / "tok").mkdir()
    (d / "tok" / "vocab.txt").write_text("a\nb\nc\n")
    return d


def weights(seed: int, prefix: str = "enc") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{prefix}.w": (rng.standard_normal((64, 48)) * 0.05).astype(np.float32),
            f"{prefix}.b": np.zeros(48, dtype=np.float32)}


def nudge(w: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + (rng.standard_normal(v.shape) * 1e-3).astype(v.dtype)) for k, v in w.items()}


@dataclass
class Populated:
    store: Path
    dirs: dict[str, Path]  # ref -> source directory
    inferred_stdout: str


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory, cli: Callable[..., object]) -> Populated:
    """base@1 -> child@1 (finetune) ; base@2 ; guess@1 (parent inferred) ; other@1 (unrelated)."""
    root = tmp_path_factory.mktemp("cli")
    store = root / "store"
    w0 = weights(0)
    w_child = nudge(w0, 1)
    dirs = {
        "base@1": write_checkpoint(root / "base1", w0, b'{"v": 1}'),
        "child@1": write_checkpoint(root / "child1", w_child, b'{"v": "child"}'),
        "base@2": write_checkpoint(root / "base2", nudge(w0, 2), b'{"v": 2}'),
        "guess@1": write_checkpoint(root / "guess1", nudge(w_child, 3), b'{"v": "child"}'),
        "other@1": write_checkpoint(root / "other1", weights(9, prefix="dec"), b"{}"),
    }
    r = cli("init", store=store)
    assert r.returncode == 0 and "initialised" in r.stdout, r.stderr  # type: ignore[attr-defined]
    steps = [
        ("base@1", ["--model", "base", "--how", "import", "-m", "first", "--provenance", '{"source": "test"}']),
        ("child@1", ["--model", "child", "--parent", "base", "--how", "finetune"]),
        ("base@2", ["--model", "base", "-m", "second"]),
        ("other@1", ["--model", "other", "--no-infer"]),
        ("guess@1", ["--model", "guess"]),
    ]
    inferred = ""
    for ref, args in steps:
        r = cli("import", dirs[ref], *args, store=store)
        assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
        assert f"imported {ref}" in r.stdout  # type: ignore[attr-defined]
        if ref == "guess@1":
            inferred = r.stdout  # type: ignore[attr-defined]
    return Populated(store, dirs, inferred)


def lineage_json(cli: Callable[..., object], store: Path) -> list[dict[str, object]]:
    r = cli("lineage", "--json", store=store)
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    return json.loads(r.stdout)  # type: ignore[attr-defined,no-any-return]


def snapshot(store: Path) -> tuple[list[str], dict[str, int]]:
    """Every version id and the size of every table: what "changed nothing" compares."""
    from modelfs.repo import Repo
    from modelfs.store import TABLES

    with Repo.open(store) as repo, repo.store.read() as txn:
        return ([v.id for v in repo.all_versions()], {t: sum(1 for _ in txn.keys(t)) for t in TABLES})


def invoke(args: list[str], env: dict[str, str] | None = None) -> object:
    """The CLI in-process (click's runner): for happy paths, where a subprocess adds only time."""
    from click.testing import CliRunner

    from modelfs.cli.main import cli as group

    r = CliRunner().invoke(group, args, env=env, catch_exceptions=False)
    return type("R", (), {"returncode": r.exit_code, "stdout": r.stdout, "stderr": r.stderr})()


# -- happy paths ---------------------------------------------------------------------------------------
def test_parent_inference_is_printed_and_recorded(populated: Populated, cli: Callable[..., object]) -> None:
    assert "parent inferred from the weights: child@1 (distance " in populated.inferred_stdout
    show = json.loads(cli("show", "guess", "--json", store=populated.store).stdout)  # type: ignore[attr-defined]
    child = json.loads(cli("show", "child@1", "--json", store=populated.store).stdout)  # type: ignore[attr-defined]
    assert show["derived_from"] == [child["id"]]
    assert show["provenance"]["inferred_parent"] == "child@1"
    assert show["id"] in child["children"]


def _verbs(populated: Populated, tmp: Path) -> list[tuple[list[str], Callable[[str], bool]]]:
    return [
        (["log", "base"], lambda o: "base@2" in o and "base@1" in o and o.index("base@2") < o.index("base@1")),
        (["show", "child@1"], lambda o: "finetune" in o and "base@1" in o and "model.safetensors" in o),
        (["show", "base@-1"], lambda o: "base@1" in o and "child@1" in o),  # children listed
        (["lineage"], lambda o: all(r in o for r in ("base @1..@2", "child @1", "guess @1", "other @1"))),
        (["du"], lambda o: "total" in o and "base" in o and "x" in o),
        (["fsck"], lambda o: ": ok" in o and "5 versions" in o),
        (["gc"], lambda o: "removed 0 chunks" in o),
        (["gc", "--dry-run"], lambda o: "would remove 0 chunks" in o),
        (["export", "child@1", str(tmp / "exported")], lambda o: "exported child@1" in o),
    ]


@pytest.mark.parametrize("how", ["--store", "MODELFS_STORE"])
def test_every_verb_works_with_store_option_and_env(populated: Populated, cli: Callable[..., object],
                                                    how: str, tmp_path: Path,
                                                    blake3_of_dir: Callable[[Path], dict[str, str]]) -> None:
    for args, ok in _verbs(populated, tmp_path):
        if how == "--store":
            r = cli(*args, store=populated.store)
        else:  # in-process, with the variable set and no --store
            r = invoke(args, env={"MODELFS_STORE": str(populated.store)})
        assert r.returncode == 0, (args, r.stderr)  # type: ignore[attr-defined]
        assert ok(r.stdout), (args, r.stdout)  # type: ignore[attr-defined]
        assert "Traceback" not in r.stderr  # type: ignore[attr-defined]
    assert blake3_of_dir(tmp_path / "exported") == blake3_of_dir(populated.dirs["child@1"])


def test_store_option_wins_over_env_and_init_uses_env(tmp_path: Path, populated: Populated,
                                                      cli: Callable[..., object]) -> None:
    r = cli("log", "base", store=populated.store, env={"MODELFS_STORE": str(tmp_path / "nowhere")})
    assert r.returncode == 0  # type: ignore[attr-defined]
    r = cli("init", env={"MODELFS_STORE": str(tmp_path / "envstore")})
    assert r.returncode == 0 and (tmp_path / "envstore" / "data.mdb").exists()  # type: ignore[attr-defined]


def test_default_store_is_under_home(tmp_path: Path, cli: Callable[..., object]) -> None:
    r = cli("init", env={"HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    assert (tmp_path / ".modelfs" / "store" / "data.mdb").exists()
    r = cli("lineage", env={"HOME": str(tmp_path)})
    assert r.returncode == 0 and "(empty store)" in r.stdout  # type: ignore[attr-defined]


def test_json_outputs_parse(populated: Populated, tmp_path: Path) -> None:
    s = populated.store

    def cli(*args: object, store: Path) -> object:
        return invoke(["--store", str(store), *map(str, args)])

    log = json.loads(cli("log", "base", "--json", store=s).stdout)  # type: ignore[attr-defined]
    assert [v["ref"] for v in log] == ["base@2", "base@1"]
    assert log[1]["provenance"] == {"source": "test"} and log[1]["message"] == "first"
    assert log[0]["previous"] == log[1]["id"]
    assert set(log[0]["files"]) == {"model.safetensors", "config.json", "tok/vocab.txt"}
    lin = json.loads(cli("lineage", "--json", store=s).stdout)  # type: ignore[attr-defined]
    assert sorted(v["ref"] for v in lin) == ["base@1", "base@2", "child@1", "guess@1", "other@1"]
    by_ref = {v["ref"]: v for v in lin}
    assert by_ref["child@1"]["parents"] == [by_ref["base@1"]["id"]] and by_ref["child@1"]["how"] == "finetune"
    show = json.loads(cli("show", "base@1", "--json", store=s).stdout)  # type: ignore[attr-defined]
    assert show["ref"] == "base@1" and len(show["children"]) == 2
    du = json.loads(cli("du", "--json", store=s).stdout)  # type: ignore[attr-defined]
    assert set(du["models"]) == {"base", "child", "guess", "other"}
    assert du["total"]["versions"] == 5 and du["total"]["logical"] > du["total"]["stored"] > 0
    assert du["models"]["child"]["stored"] < du["models"]["child"]["logical"]
    fsck = json.loads(cli("fsck", "--json", store=s).stdout)  # type: ignore[attr-defined]
    assert fsck["ok"] is True and fsck["versions_checked"] == 5
    gc = json.loads(cli("gc", "--dry-run", "--json", store=s).stdout)  # type: ignore[attr-defined]
    assert gc == {"chunks_removed": 0, "files_removed": 0, "bytes_freed": 0, "records_located": 0}
    # import --json, on a store of its own
    other = tmp_path / "s2"
    cli("init", store=other)
    imp = cli("import", populated.dirs["base@1"], "--model", "m", "--json", store=other)
    assert imp.returncode == 0, imp.stderr  # type: ignore[attr-defined]
    d = json.loads(imp.stdout)  # type: ignore[attr-defined]
    assert d["ref"] == "m@1" and d["parents"] == [] and d["inferred_parent"] is None and d["id"]


def check_dot(text: str) -> None:
    """DOT that Graphviz reads without a warning (the picture's source: `lineage --dot`)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[0].startswith("digraph") and lines[-1] == "}"
    r = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True, check=True)
    assert not r.stderr, r.stderr


def test_lineage_dot_is_valid_and_has_every_version_and_edge(populated: Populated, cli: Callable[..., object]) -> None:
    r = cli("lineage", "--versions", "--dot", store=populated.store)
    assert r.returncode == 0  # type: ignore[attr-defined]
    check_dot(r.stdout)  # type: ignore[attr-defined]
    dot = r.stdout  # type: ignore[attr-defined]
    versions = lineage_json(cli, populated.store)
    by_id = {v["id"]: v for v in versions}
    for v in versions:
        model, number = str(v["ref"]).split("@")
        cell = dot.index(f'<td port="v{v["id"]}"')  # a cell in its model's box, saying @N
        assert dot[cell:].split(">", 1)[1].startswith(f"@{number}")
        assert f'<b>{model}</b>' in dot
        for p in v["parents"]:  # type: ignore[attr-defined]
            if by_id[p]["ref"].split("@")[0] == model:  # the previous version: left of it
                assert dot.index(f'port="v{p}"') < cell
            else:  # a derivation edge, from the parent's cell to this one
                assert f':"v{p}":s -> "{model}":"v{v["id"]}":n' in dot


def test_lineage_svg_and_png_are_written(populated: Populated, cli: Callable[..., object],
                                         tmp_path: Path) -> None:
    r = cli("lineage", "--svg", tmp_path / "g.svg", "--png", tmp_path / "g.png", store=populated.store)
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    root = ElementTree.parse(tmp_path / "g.svg").getroot()  # valid XML, an SVG document
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"base", "child", "guess", "other"} <= texts  # every model named
    png = (tmp_path / "g.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_lineage_dot_escapes_quotes(tmp_path: Path, populated: Populated, cli: Callable[..., object]) -> None:
    s = str(tmp_path / "s")
    invoke(["--store", s, "init"])
    r = invoke(["--store", s, "import", str(populated.dirs["base@1"]), "--model", "q"])
    assert r.returncode == 0  # type: ignore[attr-defined]
    r = invoke(["--store", s, "import", str(populated.dirs["child@1"]), "--model", "q2", "--parent", "q",
                "--how", 'fine"tune\\x'])
    assert r.returncode == 0  # type: ignore[attr-defined]
    dot = invoke(["--store", s, "lineage", "--dot"]).stdout  # type: ignore[attr-defined]
    check_dot(dot)
    assert 'label="fine\\"tune\\\\x"' in dot


# -- errors: one line, non-zero, no traceback, nothing changed -------------------------------------------
ERRORS: dict[str, tuple[list[str], str]] = {  # case -> (argv after --store, expected in the message)
    "unknown model (log)": (["log", "nope"], "unknown model"),
    "unknown model (show)": (["show", "nope"], "unknown model"),
    "unknown model (export)": (["export", "nope", "{tmp}/x"], "unknown model"),
    "unknown version number": (["show", "base@99"], "no version 99"),
    "bad version number": (["show", "base@two"], "bad version number"),
    "unknown parent": (["import", "{src}", "--model", "n", "--parent", "ghost"], "ghost"),
    "unknown parent version": (["import", "{src}", "--model", "n", "--parent", "base@7"], "no version 7"),
    "name with slash": (["import", "{src}", "--model", "a/b"], "'/'"),
    "name with dotdot": (["import", "{src}", "--model", ".."], ".."),
    "name with inner dotdot": (["import", "{src}", "--model", "a..b"], ".."),
    "name with at": (["import", "{src}", "--model", "a@1"], "@"),
    "name with space": (["import", "{src}", "--model", "a b"], "not allowed"),
    "empty name": (["import", "{src}", "--model", ""], "empty"),
    "empty ref": (["show", ""], "bad version reference"),
    "log of a name with slash": (["log", "a/b"], "unknown model"),
    "export target not empty": (["export", "base", "{nonempty}"], "not an empty directory"),
    "export target is a file": (["export", "base", "{file}"], "not an empty directory"),
    "import missing dir": (["import", "{tmp}/missing", "--model", "n"], "not a directory"),
    "import a file": (["import", "{file}", "--model", "n"], "not a directory"),
    "bad provenance json": (["import", "{src}", "--model", "n", "--provenance", "{bad"], "not valid JSON"),
    "provenance not an object": (["import", "{src}", "--model", "n", "--provenance", "[1, 2]"], "JSON object"),
    "init over a store": (["init"], "already exists"),
    "svg into a missing dir": (["lineage", "--svg", "{tmp}/no/such/dir/g.svg"], "No such file"),
}


def assert_one_line_error(r: object, expect: str) -> None:
    assert r.returncode != 0, r.stdout  # type: ignore[attr-defined]
    assert "Traceback" not in r.stderr + r.stdout  # type: ignore[attr-defined]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1, r.stderr  # type: ignore[attr-defined]
    assert expect in lines[0], lines[0]


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory: pytest.TempPathFactory, populated: Populated,
               cli: Callable[..., object]) -> dict[str, object]:
    """Every error case, run as real processes (a few at a time), with a snapshot around them."""
    from concurrent.futures import ThreadPoolExecutor

    tmp = tmp_path_factory.mktemp("errors")
    (tmp / "nonempty").mkdir()
    (tmp / "nonempty" / "mine.txt").write_text("keep")
    (tmp / "afile").write_text("x")
    env = {"tmp": str(tmp), "src": str(populated.dirs["base@1"]), "nonempty": str(tmp / "nonempty"),
           "file": str(tmp / "afile")}
    before = snapshot(populated.store)
    with ThreadPoolExecutor(4) as pool:
        futs = {case: pool.submit(cli, *[a.format(**env) if a.startswith("{") and a != "{bad" else a
                                         for a in argv], store=populated.store)
                for case, (argv, _) in ERRORS.items()}
        runs: dict[str, object] = {case: f.result() for case, f in futs.items()}
    runs["__changed__"] = snapshot(populated.store) != before
    runs["__nonempty__"] = [p.name for p in (tmp / "nonempty").iterdir()]
    return runs




@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_one_line_and_change_nothing(case: str, error_runs: dict[str, object]) -> None:
    assert_one_line_error(error_runs[case], ERRORS[case][1])
    assert error_runs["__changed__"] is False, "an error changed the store"
    assert error_runs["__nonempty__"] == ["mine.txt"]


@pytest.mark.parametrize("store", ["missing", "empty_dir", "a_file"])
def test_missing_store_is_one_line(tmp_path: Path, cli: Callable[..., object], store: str) -> None:
    path = tmp_path / store
    if store == "empty_dir":
        path.mkdir()
    elif store == "a_file":
        path.write_text("not a store")
    assert_one_line_error(cli("log", "m", store=path), "no modelfs store")
    if store == "missing":
        assert_one_line_error(cli("fsck", env={"MODELFS_STORE": str(path)}), "no modelfs store")
    assert not (tmp_path / "missing").exists()  # reading never creates a store


def test_init_over_a_file_is_one_line(tmp_path: Path, cli: Callable[..., object]) -> None:
    (tmp_path / "f").write_text("x")
    assert_one_line_error(cli("init", store=tmp_path / "f"), "not a directory")


def test_fsck_of_a_damaged_store_exits_non_zero_without_traceback(tmp_path: Path, populated: Populated,
                                                                   cli: Callable[..., object]) -> None:
    from modelfs.repo import Repo
    from modelfs.repo.chunks import ChunkRecord

    s = tmp_path / "damaged"
    shutil.copytree(populated.store, s)
    with Repo.open(s) as repo, repo.store.write() as txn:
        key, raw = next((k, v) for k, v in txn.items("chunks") if ChunkRecord.from_bytes(v).codec != "raw")
        rec = ChunkRecord.from_bytes(raw)
        bad = bytearray(raw)
        bad[len(raw) - len(rec.payload)] ^= 0xFF  # the first payload byte: a plane count or a zstd magic
        txn.put("chunks", bytes(key), bytes(bad))
    r = cli("fsck", store=s)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout  # type: ignore[attr-defined]
    assert bytes(key).hex() in r.stderr  # type: ignore[attr-defined]
    assert "errors" in r.stdout  # type: ignore[attr-defined]


def test_export_of_a_damaged_chunk_is_one_line(tmp_path: Path, populated: Populated,
                                               cli: Callable[..., object]) -> None:
    from modelfs.repo import Repo
    from modelfs.repo.chunks import ChunkRecord

    s = tmp_path / "damaged"
    shutil.copytree(populated.store, s)
    with Repo.open(s) as repo:
        entry = repo.resolve("other").files["model.safetensors"]
        key = next(repo.file_record(entry).tensors()).chunks[0]
        with repo.store.write() as txn:
            raw = bytes(txn.get("chunks", key) or b"")
            rec = ChunkRecord.from_bytes(raw)
            txn.put("chunks", key, raw[:len(raw) - len(rec.payload)] + b"\xff" * len(rec.payload))
    assert_one_line_error(cli("export", "other", tmp_path / "out", store=s), "chunk")


# -- the name rules themselves (NUL cannot travel in argv) --------------------------------------------------
@pytest.mark.parametrize("name", ["", ".", "..", "a..b", "a/b", "/a", "a\0b", "\0", "a@1", "-a", ".hidden",
                                  "a b", "x" * 201, "é"])
def test_bad_model_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidName):
        check_model_name(name)


@pytest.mark.parametrize("name", ["a", "minilm", "all-MiniLM-L6-v2", "bert_base.v2", "m+lora", "x" * 200, "0"])
def test_good_model_names_are_accepted(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("path", ["", "/abs", "a//b", "a/./b", "../x", "a/..", "x\0y", "a/"])
def test_bad_file_paths_are_rejected(path: str) -> None:
    with pytest.raises(InvalidName):
        check_file_path(path)


def test_good_file_paths_are_accepted() -> None:
    for p in ("model.safetensors", "1_Pooling/config.json", "a/b/c.bin", ".gitattributes", "..x"):
        assert check_file_path(p) == p


@pytest.mark.parametrize("path", ["x" * 256, "d/" + "é" * 128, "/".join(["d" * 255] * 17)])
def test_names_no_local_filesystem_could_hold_are_too_long(path: str) -> None:
    """A component over 255 bytes (UTF-8, as the kernel counts) or a path over 4096."""
    with pytest.raises(NameTooLong):
        check_file_path(path)


@pytest.mark.parametrize("name", ["x" * 256, "é" * 128, "n" * 1000])
def test_model_names_over_255_bytes_are_too_long(name: str) -> None:
    with pytest.raises(NameTooLong):
        check_model_name(name)


def test_the_longest_names_a_local_filesystem_holds_are_accepted() -> None:
    for p in ("x" * 255, "d/" + "é" * 127 + "x", "/".join(["d" * 255] * 16)):
        assert check_file_path(p) == p
