"""`modelfs recipe set|show|rm|list` and `modelfs update`: how models are made, and the cascade.

Recipes run with their parents' files as read-only directories of a mount of the store (a
running one, or a private one started on the first directory asked for); the ops modules
load only when their command runs. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from modelfs.cli.app import open_repo
from modelfs.cli.run_support import LazyVersions, executor_for
from modelfs.errors import Conflict, ModelfsError, NotFound

TIMEOUT_HELP = "Seconds a recipe may run before it is killed (and its node fails)"


def _recipe_json(r: Any) -> dict[str, Any]:
    return r.to_json()


def _print_recipe(r: Any) -> None:
    click.echo(f"{r.model}: {r.cmd}")
    for p, h in sorted(r.inputs.items()):
        click.echo(f"  input {p}  blake3 {h[:16]}")
    extra = [f"timeout {r.timeout:g} s"] + ([f"how {r.how}"] if r.how else []) + \
            [f"{k}={v:g}" for k, v in sorted(r.resources.items())]
    click.echo("  " + ", ".join(extra))


@click.group("recipe")
def recipe() -> None:
    """The command that makes a model's next version from its parents (re-run by `update`)."""


@recipe.command("set")
@click.argument("model")
@click.option("--cmd", "cmd", required=True, help="bash command: {parent} {parents} {out} {model} {version}.")
@click.option("--input", "inputs", multiple=True, type=click.Path(path_type=Path),
              help="A data file the recipe reads; its blake3 is recorded (repeatable).")
@click.option("--timeout", type=float, default=None, help=TIMEOUT_HELP + " (default 3600).")
@click.option("--resources", help="Executor resources per run, e.g. num_cpus=2,num_gpus=1 (Ray).")
@click.option("--how", help="How versions it makes are derived (default: as the model's last version).")
@click.pass_context
def recipe_set(ctx: click.Context, model: str, cmd: str, inputs: tuple[Path, ...], timeout: float | None,
               resources: str | None, how: str | None) -> None:
    """Record MODEL's recipe (replacing the one it had)."""
    from modelfs.ops.recipes import DEFAULT_TIMEOUT, Recipes, parse_resources

    res = parse_resources(resources)
    with open_repo(ctx) as repo:
        r = Recipes(repo).set(model, cmd, inputs, timeout or DEFAULT_TIMEOUT, res, how)
    click.echo(f"recipe of {model} set ({len(r.inputs)} inputs hashed)")


@recipe.command("show")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def recipe_show(ctx: click.Context, model: str, as_json: bool) -> None:
    """Show MODEL's recipe."""
    from modelfs.ops.recipes import Recipes

    with open_repo(ctx) as repo:
        r = Recipes(repo).show(model)
    if as_json:
        click.echo(json.dumps(_recipe_json(r), indent=1))
    else:
        _print_recipe(r)


@recipe.command("rm")
@click.argument("model")
@click.pass_context
def recipe_rm(ctx: click.Context, model: str) -> None:
    """Forget MODEL's recipe (its versions stay; `update` no longer re-derives it)."""
    from modelfs.ops.recipes import Recipes

    with open_repo(ctx) as repo:
        Recipes(repo).remove(model)
    click.echo(f"recipe of {model} removed")


@recipe.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def recipe_list(ctx: click.Context, as_json: bool) -> None:
    """Every recipe."""
    from modelfs.ops.recipes import Recipes

    with open_repo(ctx) as repo:
        rs = Recipes(repo).all()
    if as_json:
        click.echo(json.dumps([_recipe_json(r) for r in rs.values()], indent=1))
        return
    if not rs:
        click.echo("no recipes (modelfs recipe set MODEL --cmd 'CMD')")
    for r in rs.values():
        _print_recipe(r)


# -- derive / import --recipe -------------------------------------------------------------
def check_recipe_options(cmd: str, inputs: tuple[Path, ...]) -> None:
    """Before anything is stored: the command's placeholders and the input files."""
    from modelfs.ops.recipes import check_command

    check_command(cmd)
    for p in inputs:
        if not p.is_file():
            raise NotFound(f"--input {p} is not a file")


def derive_by_recipe(ctx: click.Context, parent: str, new: str, how: str, cmd: str,
                     inputs: tuple[Path, ...], timeout: float | None) -> None:
    """`modelfs derive PARENT NEW --recipe CMD`: run the recipe now, commit NEW@1, keep the recipe."""
    from modelfs.ops.recipes import DEFAULT_TIMEOUT, Recipe, Recipes, hash_file, make_version

    check_recipe_options(cmd, inputs)
    with open_repo(ctx) as repo:
        p = repo.resolve(parent)
        try:
            repo.model(new)
            raise Conflict(f"model {new} exists: `modelfs recipe set {new}` records a recipe for it, "
                           f"`modelfs update {p.model}` re-derives it")
        except NotFound:
            pass
        r = Recipe(new, cmd, {os.path.abspath(i): hash_file(i) for i in inputs}, timeout or DEFAULT_TIMEOUT,
                   how=how)
        ex = executor_for("local", 1)
        try:
            with LazyVersions(ctx.find_root().obj["store"]) as dirs:
                v = make_version(repo, r, [p], dirs, ex)
        finally:
            ex.close()
        Recipes(repo).set(new, cmd, inputs, r.timeout, None, how)
    click.echo(f"{v.ref} made by its recipe from {p.ref} ({v.provenance['recipe']['seconds']:.1f} s); "
               f"recipe kept for `modelfs update {p.model}`")


def record_import_recipe(repo: Any, model: str, cmd: str, inputs: tuple[Path, ...]) -> None:
    """`modelfs import --recipe`: the imported version says how such versions are made."""
    from modelfs.ops.recipes import Recipes

    Recipes(repo).set(model, cmd, inputs)


# -- update ---------------------------------------------------------------------------------
def _from_label(plan: Any, node: Any) -> str:
    names = {n.model for n in plan.nodes}
    out = []
    for p, b in zip(node.parents, node.base, strict=True):
        if p == plan.root:
            out.append(f"{plan.source_ref} (new)")
        elif p in names:
            out.append(f"{p} (its new version)")
        else:
            out.append(f"{p} as before ({b[:10]})")
    return ", ".join(out)


def _print_plan(plan: Any) -> None:
    click.echo(f"cascade from {plan.source_ref}: {len(plan.nodes)} models to re-derive, in this order"
               + (" (gated by their tests)" if plan.gate else ""))
    for i, n in enumerate(plan.nodes, 1):
        click.echo(f"  {i}. {n.model}  from {_from_label(plan, n)}")
        click.echo(f"       $ {n.cmd}")
    for m, why in plan.left:
        click.echo(f"  not updated: {m} ({why})")


def _print_report(rep: Any) -> None:
    for n in rep.plan.nodes:
        st = rep.nodes.get(n.model)
        if st is None:
            click.echo(f"{n.model}: not reached")
            continue
        tests = ""
        if st.tests:
            passed = sum(1 for t in st.tests if t["passed"])
            tests = f"; tests {passed}/{len(st.tests)} passed"
        if st.state == "done":
            click.echo(f"{n.model}: {st.ref} from {', '.join(st.inputs)} in {st.seconds:.1f} s{tests}"
                       + ("" if st.head_moved else " (not made the head: it moved meanwhile)"))
        elif st.state in ("failed", "gated"):
            click.echo(f"FAILED {n.model}: {(st.error or '').removeprefix(n.model + ': ')}{tests}")
            for line in st.tail:
                click.echo(f"    | {line}")
        else:
            click.echo(f"{n.model}: {st.state}" + (f" ({st.error})" if st.error else ""))
    done = sum(1 for s in rep.nodes.values() if s.state == "done")
    click.echo(f"{done} updated, {len(rep.failed)} failed, "
               f"{sum(1 for s in rep.nodes.values() if s.state == 'blocked')} not updated below a failure; "
               f"{rep.wall:.1f} s wall: {rep.modelfs_seconds:.1f} s in modelfs, "
               f"{rep.recipe_seconds:.1f} s in recipes, {rep.test_seconds:.1f} s in tests")
    if not rep.tests_enabled:
        click.echo("(tests over the lineage are not installed: no tests were run)")
    for note in rep.notes:
        click.echo(f"note: {note}")


@click.command()
@click.argument("model", required=False)
@click.option("--from", "from_ref", metavar="REF", help="The version of MODEL to propagate (default: its head).")
@click.option("--dry-run", is_flag=True, help="Print the plan; run nothing.")
@click.option("--jobs", "-j", type=int, default=1, show_default=True, help="Recipes and tests at once.")
@click.option("--executor", default="local", show_default=True, help="local, ray, or a plug-in's.")
@click.option("--gate", is_flag=True, help="A version failing a test is stored but not made the head, "
                                           "and its subtree is not updated.")
@click.option("--resume", is_flag=True, help="Continue the cascade that was interrupted (of MODEL, or the latest).")
@click.option("--timeout", type=float, default=None, help=TIMEOUT_HELP + " (default: each recipe's own).")
@click.option("--workdir", type=click.Path(path_type=Path),
              help="Where {out} directories are made (a shared disk for a Ray cluster; default: the temp dir).")
@click.option("--no-tests", is_flag=True, help="Do not run tests on the new versions.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def update(ctx: click.Context, model: str | None, from_ref: str | None, dry_run: bool, jobs: int,
           executor: str, gate: bool, resume: bool, timeout: float | None, workdir: Path | None,
           no_tests: bool, as_json: bool) -> None:
    """Re-derive every descendant of MODEL that has a recipe from MODEL's new version."""
    from modelfs.ops.cascade import CascadeLog, make_plan
    from modelfs.ops.cascade_run import checks_modules, run_cascade

    if timeout is not None and not timeout > 0:
        raise ModelfsError(f"--timeout must be more than 0 seconds, not {timeout}")
    if jobs < 1:
        raise ModelfsError(f"--jobs must be at least 1, not {jobs}")
    if model is None and not resume:
        raise click.UsageError("Missing argument 'MODEL' (or --resume).")
    with open_repo(ctx) as repo:
        if resume:
            if from_ref or gate:
                raise ModelfsError("--resume continues the cascade as it was planned: no --from or --gate")
            plan = CascadeLog(repo).interrupted(model)
        else:
            plan = make_plan(repo, model or "", from_ref, gate)
        if dry_run:
            if as_json:
                click.echo(json.dumps(plan.to_json(), indent=1))
            else:
                _print_plan(plan)
            return
        if plan.gate and not no_tests and checks_modules() is None:
            raise ModelfsError("--gate needs tests over the lineage, which are not installed")
        if not as_json:
            _print_plan(plan)

        def say(line: str) -> None:
            click.echo(line, err=True)

        ex = executor_for(executor, jobs)
        try:
            with LazyVersions(ctx.find_root().obj["store"]) as dirs:
                rep = run_cascade(repo, plan, dirs, ex, resume=resume, executor_name=executor,
                                  work_dir=workdir, timeout=timeout, on_event=say, run_tests=not no_tests)
        finally:
            ex.close()
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=1))
    else:
        _print_report(rep)
    if rep.failed:
        sys.exit(1)


COMMANDS: list[click.Command] = [recipe, update]
