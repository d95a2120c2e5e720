"""Architecture rules as tests: the layers of ../shared/DESIGN.md, checked on the source with `ast`.

The one place these rules live (dulwich's test_source.py style):

- `lmdb` is imported only in modelfs/store/; `pyfuse3` and `trio` only in the mount's
  adapter (fs/ops.py, fs/boundary.py, fs/daemon.py); the test libraries (`pytest`,
  `hypothesis`) only in the conformance suites, modelfs/testing/; `os.environ` (and
  getenv/putenv) is touched only in modelfs/cli/.
- Imports point down the layers: store imports nothing from modelfs but errors; codecs and
  formats never reach up into repo, lineage, cli or fs; repo never imports cli or fs.
- No import cycle between modules (lazy imports inside functions count; imports only for
  type checking do not), no import of another module's private (`_name`) names, and no
  module over 600 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
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


@pytest.mark.parametrize(("library", "allowed"), [("lmdb", "store"),
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
    "store": {"codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "names", "dtypes", "numerics",
              "demo", "remote"},
    "codecs": {"store", "formats", "lineage", "repo", "cli", "fs", "ops", "demo", "remote"},
    "formats": {"store", "codecs", "lineage", "repo", "cli", "fs", "ops", "demo", "remote"},
    "lineage": {"codecs", "formats", "repo", "cli", "fs", "ops", "demo", "remote"},
    "repo": {"cli", "fs", "ops", "demo", "remote"},
    "errors": {"store", "codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "demo", "remote"},
    "registry": {"store", "codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "demo", "remote"},
    "names": {"store", "codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "demo", "remote"},
    "dtypes": {"store", "codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "demo", "remote"},
    "numerics": {"store", "codecs", "formats", "lineage", "repo", "cli", "fs", "ops", "demo", "remote"},
    "fs": {"cli"},
    "ops": {"cli", "fs", "remote"},
    "remote": {"cli", "fs", "ops", "demo"},
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


def test_only_the_cli_and_the_mount_daemon_import_remote() -> None:
    """Remotes sit beside the front ends: the CLI's verbs and a lazy mount's daemon reach them
    (and the object-store conformance suite in modelfs/testing/, which only tests import)."""
    offenders = [f"{path.relative_to(PKG.parent)}:{line} imports {mod}"
                 for name, path, tree in ALL
                 if layer(name) not in ("remote", "cli", "testing") and name != "modelfs.fs.daemon"
                 for mod, line in imported_modules(name, tree) if layer(mod) == "remote"]
    assert not offenders, offenders


FUSE_ADAPTER = {"modelfs.fs.ops", "modelfs.fs.boundary", "modelfs.fs.daemon"}


@pytest.mark.parametrize("library", ["pyfuse3", "trio"])
def test_pyfuse3_and_trio_only_in_the_mount_adapter(library: str) -> None:
    offenders = [f"{path.relative_to(PKG.parent)}:{line}"
                 for name, path, tree in ALL if name not in FUSE_ADAPTER
                 for mod, line in imported_modules(name, tree) if top(mod) == library]
    assert not offenders, f"{library} imported outside the mount's adapter: {offenders}"


def test_the_cli_does_not_load_pyfuse3_until_it_mounts() -> None:
    code = ("import sys, modelfs.cli.main, modelfs.fs.control, modelfs.fs.tree, modelfs.fs.core; "
            "print(sorted(m for m in ('pyfuse3', 'trio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _runtime_imports(name: str, tree: ast.Module) -> Iterator[str]:
    """Modules of the package a module imports when it runs (not under TYPE_CHECKING)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    kept = ast.Module(body=[], type_ignores=[])
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
            kept.body.append(node)
    modules = {n for n, _, _ in ALL}
    for mod, _ in imported_modules(name, kept):
        if top(mod) == "modelfs":
            while mod not in modules and "." in mod:  # `from modelfs.repo import Draft`
                mod = mod.rsplit(".", 1)[0]
            if mod != name and mod in modules:
                yield mod


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets (each as a path back to where it started)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return cycles


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = {name: set(_runtime_imports(name, tree)) for name, _, tree in ALL}
    # a package's __init__ importing its own modules is how a package is built, not a cycle
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    assert sum(map(len, graph.values())) > 100  # the walk sees the package's imports
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_imports_of_private_names() -> None:
    offenders = []
    for _, path, tree in ALL:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modelfs"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        offenders.append(f"{path.relative_to(PKG.parent)}:{node.lineno} "
                                         f"imports {node.module}.{a.name}")
    assert not offenders, offenders


def test_no_module_over_600_lines() -> None:
    long = {str(path.relative_to(PKG.parent)): n for _, path, _ in ALL
            if (n := len(path.read_text().splitlines())) > 600}
    assert not long, long
