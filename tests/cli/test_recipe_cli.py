"""`modelfs recipe`, `derive/import --recipe` and `modelfs update` as users run them: real processes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from recipehelp import Lineage, build_lineage, new_base, tiny_mlp

from modelfs.ops.recipes import Recipes


@pytest.fixture(scope="module")
def lin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lineage]:
    """base -> ft -> ft2, base -> sib; ft, sib -> avg: a recipe on each but sib's."""
    tmp = tmp_path_factory.mktemp("recipe-cli")
    from recipehelp import scripts

    s = scripts(tmp)
    lin = build_lineage(tmp, {"ft": (["base"], s.train_cmd()), "ft2": (["ft"], s.train_cmd()),
                              "sib": (["base"], s.train_cmd("--seed", "3")),
                              "avg": (["ft", "sib"], s.merge_cmd())})
    Recipes(lin.repo).remove("sib")
    try:
        yield lin
    finally:
        lin.repo.close()


def _one_line_error(r: Any, *needles: str) -> None:
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_recipe_set_show_list_rm(lin: Lineage, cli: Callable[..., Any], tmp_path: Path) -> None:
    data = tmp_path / "data.npy"
    data.write_bytes(b"xyz")
    r = cli("recipe", "set", "sib", "--cmd", lin.s.train_cmd(), "--input", data, "--timeout", "60",
            "--resources", "num_cpus=1", store=lin.store)
    assert r.returncode == 0 and "1 inputs hashed" in r.stdout, r.stderr
    shown = json.loads(cli("recipe", "show", "sib", "--json", store=lin.store).stdout)
    assert shown["cmd"] == lin.s.train_cmd() and list(shown["inputs"]) == [str(data)]
    assert shown["timeout"] == 60 and shown["resources"] == {"num_cpus": 1.0}
    assert "sib: " in cli("recipe", "list", store=lin.store).stdout
    assert cli("recipe", "rm", "sib", store=lin.store).returncode == 0
    _one_line_error(cli("recipe", "show", "sib", store=lin.store), "sib", "has no recipe")


def test_bad_recipe_input_is_one_line_and_stores_nothing(lin: Lineage, cli: Callable[..., Any],
                                                         tmp_path: Path) -> None:
    _one_line_error(cli("recipe", "set", "sib", "--cmd", "train {parnet} {out}", store=lin.store),
                    "unknown placeholder {parnet}")
    _one_line_error(cli("recipe", "set", "nope", "--cmd", "true {out}", store=lin.store), "unknown model 'nope'")
    _one_line_error(cli("recipe", "rm", "nope", store=lin.store), "unknown model 'nope'")
    _one_line_error(cli("import", tiny_mlp(tmp_path / "x", 1), "--model", "x", "--recipe", "cp {oops} {out}",
                        store=lin.store), "unknown placeholder {oops}")
    _one_line_error(cli("import", tmp_path / "x", "--model", "x", "--input", tmp_path / "x",
                        store=lin.store), "give --recipe too")
    _one_line_error(cli("update", "nope", store=lin.store), "unknown model 'nope'")
    _one_line_error(cli("update", "--resume", store=lin.store), "no interrupted cascade to resume")
    assert Recipes(lin.repo).get("sib") is None
    assert "x" not in {m.name for m in lin.repo.models()}


def test_derive_and_import_with_a_recipe(lin: Lineage, cli: Callable[..., Any], tmp_path: Path) -> None:
    r = cli("derive", "base", "made", "--how", "finetune", "--recipe", lin.s.train_cmd("--seed", "9"),
            store=lin.store)
    assert r.returncode == 0 and "made@1 made by its recipe from base@1" in r.stdout, r.stderr
    v = lin.repo.resolve("made")
    assert v.derived_from == (lin.repo.resolve("base@1").id,) and v.how == "finetune"
    assert v.provenance["recipe"]["exit_status"] == 0
    assert Recipes(lin.repo).show("made").cmd == lin.s.train_cmd("--seed", "9")
    _one_line_error(cli("derive", "base", "made", "--recipe", "true {out}", store=lin.store), "model made exists")
    r = cli("import", tiny_mlp(tmp_path / "imp", 4), "--model", "imported", "--parent", "base",
            "--recipe", lin.s.train_cmd(), store=lin.store)
    assert r.returncode == 0, r.stderr
    assert Recipes(lin.repo).show("imported").cmd == lin.s.train_cmd()
    assert lin.repo.resolve("imported").provenance["recipe_cmd"] == lin.s.train_cmd()
    for m in ("made", "imported"):  # leave the fixture's lineage as it was for the update test
        Recipes(lin.repo).remove(m)


def test_update_dry_run_then_run_and_a_failure_report(lin: Lineage, cli: Callable[..., Any]) -> None:
    lin.s.count.unlink(missing_ok=True)  # count this test's runs only
    new_base(lin)
    r = cli("update", "base", "--dry-run", store=lin.store)
    assert r.returncode == 0, r.stderr
    order = [ln.split(".", 1)[1].split()[0] for ln in r.stdout.splitlines() if ln.strip()[:2] in ("1.", "2.", "3.")]
    assert order == ["ft", "avg", "ft2"]  # topological, ties by name: avg waits only for ft here
    assert "not updated: sib (no recipe)" in r.stdout and "from base@2 (new)" in r.stdout
    assert not lin.s.count.exists() and lin.repo.table("cascades").items() == []  # nothing ran
    Recipes(lin.repo).set("ft2", lin.s.train_cmd("--fail"))
    r = cli("update", "base", "-j", "2", store=lin.store)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED ft2: recipe exited with status 3" in r.stdout
    assert "    | training ft2: loss is nan at step 1" in r.stdout
    assert "2 updated, 1 failed" in r.stdout
    assert lin.s.runs() == {"ft": 1, "avg": 1}
    Recipes(lin.repo).set("ft2", lin.s.train_cmd())
    rep = json.loads(cli("update", "ft", "--json", store=lin.store).stdout)  # ft2 catches up
    assert [(n["model"], n["state"], n["ref"]) for n in rep["nodes"]] == [("ft2", "done", "ft2@2")]
    assert rep["seconds"]["wall"] >= rep["seconds"]["recipes"] > 0
    assert lin.repo.resolve("ft2").derived_from == (lin.repo.resolve("ft@2").id,)
