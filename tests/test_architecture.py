"""Architecture rules as tests: the layers of DESIGN.md, checked on the source with `ast`.

- `lmdb` is imported only in modelfs/store/; `pyfuse3` and `trio` only in modelfs/fs/; the
  test libraries (`pytest`, `hypothesis`) only in the conformance suites, modelfs/testing/;
  `os.environ` (and getenv/putenv) is touched only in modelfs/cli/.
- Imports point down the layers: store imports nothing from modelfs but errors; codecs and
  formats never reach up into repo, lineage, cli or fs; repo never imports cli or fs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "modelfs"


def sources() -> Iterator[tuple[str, Path, ast.Module]]:
    """(dotted module name, path, parsed tree) for every module of the package."""
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path, ast.parse(path.read_text(), str(path))


def imported_modules(name: str, tree: ast.Module) -> Iterator[tuple[str, int]]:
    """Every module an import statement names (relative imports resolved), with its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                # a package's __init__ is named by the package itself
                drop = node.level - (1 if _is_package(name) else 0)
                base = base[: len(base) - drop] if drop else base
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, node.lineno
            for a in node.names:  # `from modelfs import repo` imports modelfs.repo
                yield f"{mod}.{a.name}", node.lineno


def _is_package(name: str) -> bool:
    return (PKG.parent / Path(*name.split(".")) / "__init__.py").exists()


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "modelfs" else ""


def top(mod: str) -> str:
    return mod.split(".")[0]


ALL = list(sources())


def test_the_package_is_found() -> None:
    names = {n for n, _, _ in ALL}
    assert {"modelfs.store", "modelfs.codecs", "modelfs.formats", "modelfs.lineage", "modelfs.repo",
            "modelfs.cli"} <= names


@pytest.mark.parametrize(("library", "allowed"), [("lmdb", "store"), ("pyfuse3", "fs"), ("trio", "fs"),
                                                  ("pytest", "testing"), ("hypothesis", "testing")])
def test_third_party_libraries_stay_in_their_layer(library: str, allowed: str) -> None:
    offenders = [f"{path.relative_to(PKG.parent)}:{line}"
                 for name, path, tree in ALL
                 for mod, line in imported_modules(name, tree)
                 if top(mod) == library and layer(name) != allowed]
    assert not offenders, f"{library} imported outside modelfs/{allowed}/: {offenders}"


def test_os_environ_is_read_only_in_the_cli() -> None:
    offenders = []
    for name, path, tree in ALL:
        if layer(name) == "cli":
            continue
        for node in ast.walk(tree):
            hit = (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "environb")
                   and isinstance(node.value, ast.Name) and node.value.id == "os")
            hit = hit or (isinstance(node, ast.ImportFrom) and node.module == "os"
                          and any(a.name in ("environ", "getenv", "putenv", "environb") for a in node.names))
            if hit:
                offenders.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    assert not offenders, f"os.environ used outside modelfs/cli/: {offenders}"


# layer -> modelfs layers it must never import
FORBIDDEN = {
    "store": {"codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "remote", "names", "dtypes", "numerics",
              "demo"},
    "codecs": {"store", "formats", "lineage", "repo", "cli", "fs", "ops", "remote", "demo"},
    "formats": {"store", "codecs", "lineage", "repo", "cli", "fs", "ops", "remote", "demo"},
    "lineage": {"codecs", "formats", "repo", "cli", "fs", "ops", "remote", "demo"},
    "repo": {"cli", "fs", "ops", "remote", "demo"},
    "errors": {"store", "codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "remote", "demo"},
    "registry": {"store", "codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "remote", "demo"},
    "names": {"store", "codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "remote", "demo"},
    "dtypes": {"store", "codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "remote", "demo"},
    "numerics": {"store", "codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "remote", "demo"},
    "fs": {"cli"},
    "ops": {"cli", "fs"},
}


@pytest.mark.parametrize("lay", sorted(FORBIDDEN))
def test_imports_point_down_the_layers(lay: str) -> None:
    offenders = []
    for name, path, tree in ALL:
        if layer(name) != lay:
            continue
        for mod, line in imported_modules(name, tree):
            if top(mod) == "modelfs" and layer(mod) in FORBIDDEN[lay]:
                offenders.append(f"{path.relative_to(PKG.parent)}:{line} imports {mod}")
    assert not offenders, "\n".join(offenders)


def test_store_imports_nothing_from_modelfs_but_errors_and_itself() -> None:
    offenders = []
    for name, path, tree in ALL:
        if layer(name) != "store":
            continue
        for mod, line in imported_modules(name, tree):
            if top(mod) == "modelfs" and layer(mod) not in ("store", "errors"):
                offenders.append(f"{path.relative_to(PKG.parent)}:{line} imports {mod}")
    assert not offenders, offenders


def test_front_ends_reach_the_store_only_through_repo() -> None:
    """cli and fs use the repo facade; only the lmdb rule forbids more, this keeps them honest."""
    offenders = []
    for name, path, tree in ALL:
        if layer(name) not in ("cli", "fs"):
            continue
        for mod, line in imported_modules(name, tree):
            if top(mod) == "modelfs" and layer(mod) == "store":
                offenders.append(f"{path.relative_to(PKG.parent)}:{line} imports {mod}")
    assert not offenders, offenders


def test_only_tests_import_the_conformance_suites() -> None:
    """modelfs.testing needs pytest and hypothesis (test dependencies): nothing in modelfs uses it."""
    offenders = [f"{path.relative_to(PKG.parent)}:{line}"
                 for name, path, tree in ALL if layer(name) != "testing"
                 for mod, line in imported_modules(name, tree) if layer(mod) == "testing"]
    assert not offenders, offenders
