"""Recipes: the command that makes a model's next version from its parents' files.

A recipe is stored per model (table ``recipes``) so a cascading update can re-derive the model
when a parent changes, the way MGit re-runs each child's registered creation step. The
command is a ``bash -c`` line with placeholders, filled per run and shell-quoted:

- ``{parent}``: a read-only directory of the first parent version's files (a mount of the
  store, handed in as a ``VersionDirs``; never a copy), ``{parents}``: all of them, in order;
- ``{out}``: an empty directory the command writes the new version into;
- ``{model}``, ``{version}``: the model, and the number its new version is to get.

``--input`` files (training data, a config) are hashed with blake3 when the recipe is set and
again each run; every version a recipe makes records in its provenance the command, the
parent versions, the input hashes, the exit status, the wall time and the Python and torch it
ran under.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from modelfs.errors import ModelfsError, NotFound
from modelfs.names import check_model_name
from modelfs.ops.commands import placeholders_in
from modelfs.ops.executors import Executor, Job, JobResult
from modelfs.ops.views import VersionDirs
from modelfs.repo import Repo, Version

TABLE = "recipes"
PLACEHOLDERS = ("parent", "parents", "out", "model", "version")
DEFAULT_TIMEOUT = 3600.0  # seconds: a real training step fits; a hung recipe is still killed
TAIL_LINES = 15  # of a failed recipe's output, for the report


class RecipeFailed(ModelfsError):
    """A recipe run that made no version: why, and the end of its output."""

    def __init__(self, message: str, tail: Sequence[str] = (), result: JobResult | None = None) -> None:
        super().__init__(message)
        self.tail = list(tail)
        self.result = result


def check_command(cmd: str) -> list[str]:
    """The placeholders `cmd` uses; an unknown one is refused with one line.

    Placeholders are str.format fields with nothing after the name; ``{{`` and ``}}`` are
    literal braces (so a shell ``${VAR}`` is written ``${{VAR}}``).
    """
    return placeholders_in(cmd, PLACEHOLDERS, "recipe command")


def hash_file(path: Path) -> str:
    """blake3 of a file's bytes (hex), read in pieces so a large data set costs no memory."""
    h = blake3.blake3()
    with open(path, "rb") as f:
        while piece := f.read(1 << 22):
            h.update(piece)
    return h.hexdigest()


def parse_resources(text: str | None) -> dict[str, float]:
    """``num_cpus=2,num_gpus=0.5`` -> {"num_cpus": 2.0, "num_gpus": 0.5}."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, eq, value = item.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not eq or not name.strip() or amount < 0:
            raise ModelfsError(f"bad resource {item.strip()!r}: write NAME=AMOUNT, e.g. num_gpus=1")
        out[name.strip()] = amount
    return out


@dataclass(frozen=True, slots=True)
class Recipe:
    model: str
    cmd: str
    inputs: Mapping[str, str] = field(default_factory=dict)  # absolute path -> blake3 when set
    timeout: float = DEFAULT_TIMEOUT
    resources: Mapping[str, float] = field(default_factory=dict)  # executor resources (Ray)
    how: str | None = None  # recorded on the versions it makes (None: as the model's last)
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "cmd": self.cmd, "inputs": dict(self.inputs), "timeout": self.timeout,
                "resources": dict(self.resources), "how": self.how, "created": self.created}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Recipe:
        return cls(d["model"], d["cmd"], dict(d.get("inputs") or {}), float(d.get("timeout", DEFAULT_TIMEOUT)),
                   dict(d.get("resources") or {}), d.get("how"), float(d.get("created", 0.0)))

    def command(self, parent_dirs: Sequence[Path], out: Path, number: int) -> str:
        """The command line for one run, every value shell-quoted."""
        values = {"parent": shlex.quote(str(parent_dirs[0])) if parent_dirs else "''",
                  "parents": " ".join(shlex.quote(str(p)) for p in parent_dirs),
                  "out": shlex.quote(str(out)), "model": shlex.quote(self.model),
                  "version": str(number)}
        return self.cmd.format_map(values)


class Recipes:
    """The store's recipes (table ``recipes``: model name -> recipe)."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._table = repo.table(TABLE)

    def set(self, model: str, cmd: str, inputs: Iterable[str | os.PathLike[str]] = (),
            timeout: float = DEFAULT_TIMEOUT, resources: Mapping[str, float] | None = None,
            how: str | None = None, require_model: bool = True) -> Recipe:
        """Record (or replace) MODEL's recipe; everything is checked before anything is stored."""
        check_model_name(model)
        if require_model:
            self.repo.model(model)  # NotFound for an unknown model
        check_command(cmd)
        if not timeout > 0:
            raise ModelfsError(f"--timeout must be more than 0 seconds, not {timeout}")
        hashes: dict[str, str] = {}
        for p in inputs:
            path = Path(os.path.abspath(p))
            if not path.is_file():
                raise NotFound(f"--input {p} is not a file")
            hashes[str(path)] = hash_file(path)
        r = Recipe(model, cmd, hashes, float(timeout), dict(resources or {}), how or None, time.time())
        self._table.put(model.encode(), r.to_json())
        return r

    def get(self, model: str) -> Recipe | None:
        raw = self._table.get(model.encode())
        return None if raw is None else Recipe.from_json(raw)

    def show(self, model: str) -> Recipe:
        r = self.get(model)
        if r is None:
            self.repo.model(model)  # an unknown model says so first
            raise NotFound(f"model {model!r} has no recipe (modelfs recipe set {model} --cmd 'CMD')")
        return r

    def remove(self, model: str) -> Recipe:
        r = self.show(model)
        self._table.delete(model.encode())
        return r

    def all(self) -> dict[str, Recipe]:
        return {k.decode(): Recipe.from_json(v) for k, v in self._table.items()}


# -- one run ----------------------------------------------------------------------------------
class InputHashes:
    """Input files hashed once per run of many recipes (a cascade shares its data sets)."""

    def __init__(self) -> None:
        self._known: dict[str, str] = {}

    def of(self, recipe: Recipe) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in recipe.inputs:
            if p not in self._known:
                if not Path(p).is_file():
                    raise RecipeFailed(f"{recipe.model}: recipe input {p} is missing")
                self._known[p] = hash_file(Path(p))
            out[p] = self._known[p]
        return out


@dataclass
class Run:
    """One recipe run: what it is made from, where it writes, the job that makes it."""

    recipe: Recipe
    parents: tuple[Version, ...]
    out: Path
    job: Job
    inputs: dict[str, str]
    number: int

    def discard(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)


def wait_visible(dirs: VersionDirs, versions: Sequence[Version], timeout: float = 15.0) -> list[Path]:
    """Each version's directory, waiting for a version committed just now to appear (a mount
    refreshes its listing a moment after a commit)."""
    paths = [dirs.path(v) for v in versions]
    deadline = time.monotonic() + timeout
    for v, p in zip(versions, paths, strict=True):
        while not p.is_dir():
            if time.monotonic() > deadline:
                raise RecipeFailed(f"{v.ref} did not appear as a directory at {p}")
            time.sleep(0.05)
    return paths


def prepare(repo: Repo, recipe: Recipe, parents: Sequence[Version], dirs: VersionDirs,
            hashes: InputHashes, work_dir: Path | None = None, timeout: float | None = None) -> Run:
    """The job for one run of `recipe` on `parents`, with a fresh empty {out} directory."""
    inputs = hashes.of(recipe)
    paths = wait_visible(dirs, parents)
    try:
        number = repo.model(recipe.model).count + 1
    except NotFound:
        number = 1
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"modelfs-recipe-{recipe.model}-", dir=work_dir))
    job = Job(recipe.command(paths, out, number), timeout if timeout is not None else recipe.timeout,
              resources=dict(recipe.resources) or None)
    return Run(recipe, tuple(parents), out, job, inputs, number)


def provenance(run: Run, result: JobResult, executor: str) -> dict[str, Any]:
    """What a version made by a recipe records about how it was made."""
    rt = dict(result.runtime or {})
    rec: dict[str, Any] = {
        "cmd": run.recipe.cmd, "command": run.job.cmd, "parents": [v.id for v in run.parents],
        "parent_refs": [v.ref for v in run.parents], "inputs": run.inputs,
        "exit_status": result.exit_code, "seconds": round(result.seconds, 3), "executor": executor,
        "python": rt.get("python"), "host": rt.get("host")}
    if "torch" in rt:
        rec["torch"] = rt["torch"]
    changed = sorted(p for p, h in run.inputs.items() if run.recipe.inputs.get(p) not in (None, h))
    if changed:
        rec["inputs_changed"] = changed  # since `recipe set`: the run used what is there now
    return rec


def finish(repo: Repo, run: Run, result: JobResult, *, executor: str, move_head: bool = True,
           extra: Mapping[str, Any] | None = None, how: str | None = None) -> Version:
    """Commit what the run wrote into {out} as the model's next version; RecipeFailed if it
    failed, ran out of time or wrote nothing. {out} is removed either way."""
    try:
        tail = result.last_lines(TAIL_LINES)
        model = run.recipe.model
        if result.timed_out:
            raise RecipeFailed(f"{model}: recipe ran out of time ({run.job.timeout:g} s) and was killed",
                               tail, result)
        if result.exit_code != 0:
            raise RecipeFailed(f"{model}: recipe exited with status {result.exit_code}", tail, result)
        if not any(p.is_file() for p in run.out.rglob("*")):
            raise RecipeFailed(f"{model}: recipe exited 0 but wrote nothing into {{out}}", tail, result)
        prov = {"recipe": provenance(run, result, executor), **(extra or {})}
        try:
            return repo.import_dir(run.out, model, parents=[v.id for v in run.parents],
                                   how=how or run.recipe.how or "recipe",
                                   message=f"made by its recipe from {', '.join(v.ref for v in run.parents)}",
                                   provenance=prov, infer_parent=False, move_head=move_head)
        except RecipeFailed:
            raise
        except ModelfsError as e:  # a malformed file, a symlink out of {out}: this node fails
            raise RecipeFailed(f"{model}: what the recipe wrote could not be stored: {e}", tail, result) from e
    finally:
        run.discard()


def make_version(repo: Repo, recipe: Recipe, parents: Sequence[Version], dirs: VersionDirs,
                 executor: Executor, executor_name: str = "local", work_dir: Path | None = None,
                 timeout: float | None = None) -> Version:
    """Run `recipe` once on `parents` and commit its output (`modelfs derive --recipe`)."""
    run = prepare(repo, recipe, parents, dirs, InputHashes(), work_dir, timeout)
    ((_, result),) = executor.run([run.job])
    return finish(repo, run, result, executor=executor_name)
