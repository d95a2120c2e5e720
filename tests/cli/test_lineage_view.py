"""`modelfs lineage` by model and its Graphviz picture (issue 14), through the real CLI.

A run of 50 checkpoints is one line (``--versions`` shows all 50); the picture of a
100-model lineage is valid SVG naming every model and a real PNG; without Graphviz the
picture is refused in one line.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import pytest

from modelfs.repo import Repo

SVG = "{http://www.w3.org/2000/svg}"
KINDS = ("finetune", "lora", "cast", "prune", "merge")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """base@1..@3, run@1..@50 (checkpoints of a fine-tune of base@3) and 98 more models."""
    root = tmp_path_factory.mktemp("lineage")
    src = root / "w.txt"
    n = [0]
    models = ["base", "run"]

    def c(repo: Repo, model: str, parents: list[str] | None = None, how: str | None = None,
          prov: dict[str, object] | None = None) -> str:
        n[0] += 1
        src.write_text(str(n[0]))
        return repo.commit_files(model, {"w.txt": src}, parents=parents, how=how,
                                 provenance=prov or {}, infer_parent=False).id

    with Repo.init(root / "store") as repo:
        heads = [c(repo, "base"), c(repo, "base"), c(repo, "base")]
        for i in range(50):
            heads.append(c(repo, "run", [heads[2]] if i == 0 else None, "finetune" if i == 0 else
                           "checkpoint", {"step": 10 * (i + 1)}))
        rnd = random.Random(0)
        for i in range(98):
            how = KINDS[i % len(KINDS)]
            parents = sorted({rnd.choice(heads), rnd.choice(heads)}) if how == "merge" else [
                rnd.choice(heads)]
            heads.append(c(repo, f"m{i:03d}", parents, how,
                           {"lossy": {"max_error_ratio": 0.1}} if i == 7 else None))
            models.append(f"m{i:03d}")
    return root / "store", models


def test_versions_of_a_model_are_one_line(big: tuple[Path, list[str]], cli: Callable[..., object]) -> None:
    store, models = big
    r = cli("lineage", store=store)
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    lines = r.stdout.splitlines()  # type: ignore[attr-defined]
    assert len(lines) == len(models)  # one line per model, not one per version
    run = next(ln for ln in lines if ln.strip("│├└─ ").startswith("run "))
    assert "run @1..@50 (50 versions)  ← finetune of base@3" in run
    assert lines[0] == "base @1..@3 (3 versions)"
    assert any("(lossy @1)" in ln and "m007" in ln for ln in lines)
    every = cli("lineage", "--versions", store=store).stdout.splitlines()  # type: ignore[attr-defined]
    assert len(every) == 3 + 50 + 98  # one line per version
    assert sum(ln.strip("│├└─ ").startswith("run@") for ln in every) == 50


def test_the_picture_of_a_hundred_models(big: tuple[Path, list[str]], cli: Callable[..., object],
                                        tmp_path: Path) -> None:
    store, models = big
    r = cli("lineage", "--svg", tmp_path / "g.svg", "--png", tmp_path / "g.png", store=store)
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    root = ElementTree.parse(tmp_path / "g.svg").getroot()
    assert root.tag == f"{SVG}svg"
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert set(models) <= set(texts)  # every model is named on its box
    dot = cli("lineage", "--dot", store=store).stdout  # type: ignore[attr-defined]
    drawn = dot.count('<td port="v')  # run shows @1, @50 and the versions others derive from
    hidden = sum(int(t.removeprefix("… +")) for t in texts if t.startswith("… +"))
    assert hidden > 0 and drawn + hidden == 3 + 50 + 98
    assert {"legend", "finetune", "lora", "cast", "prune", "merge", "versions of a model"} <= set(texts)
    png = (tmp_path / "g.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 1000 and height > 300
    dot = cli("lineage", "--versions", "--dot", store=store).stdout  # type: ignore[attr-defined]
    assert dot.count('<td port="v') == 3 + 50 + 98  # --versions draws every version


def test_without_graphviz_the_picture_is_one_line(big: tuple[Path, list[str]],
                                                  cli: Callable[..., object], tmp_path: Path) -> None:
    store, _ = big
    bare = tmp_path / "bin"  # a PATH without dot (the modelfs script names its python itself)
    bare.mkdir()
    r = cli("lineage", "--png", tmp_path / "g.png", store=store, env={"PATH": str(bare)})
    assert r.returncode != 0 and "Traceback" not in r.stderr  # type: ignore[attr-defined]
    assert r.stderr.strip().splitlines() == [  # type: ignore[attr-defined]
        "Error: the picture needs Graphviz's `dot` (Debian: apt-get install graphviz); "
        "`modelfs lineage --dot` prints its source"]
    assert not (tmp_path / "g.png").exists()
