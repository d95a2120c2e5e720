"""`modelfs test add|list|rm|run|results` and `modelfs bisect`: tests over the lineage.

Versions reach a test's command as read-only directories of a mount of the store (a running
one, or a private one started only when something must run: a run whose results are all
known starts nothing). The ops modules load only when their command runs.
"""

from __future__ import annotations

import json
from typing import Any

import click

from modelfs.cli.app import open_repo
from modelfs.cli.run_support import LazyVersions, executor_for

TIMEOUT_HELP = "Seconds a run may take before it is killed and recorded as a failure"


def _num(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return json.dumps(x) if not isinstance(x, str) else x


def _cell(r: Any) -> str:
    """pass / FAIL / TIMEOUT and the metrics, for a table cell."""
    if r is None:
        return "-"
    metrics = " ".join(f"{k}={_num(v)}" for k, v in (r.metrics or {}).items())
    cell = f"{r.status} {metrics}".strip()
    return cell if len(cell) <= 40 else cell[:39] + "…"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


@click.group("test")
def test_group() -> None:
    """Tests over the lineage: commands run on every version they apply to, results stored."""


@test_group.command("add")
@click.argument("name")
@click.option("--cmd", required=True,
              help="Shell command; {path} is the version's files (read-only), also {model} {version} {ref}.")
@click.option("--models", metavar="GLOB", help="Only models whose name matches GLOB (default: all).")
@click.option("--how", metavar="KIND", help="Only versions derived this way (finetune, lora, cast ...).")
@click.option("--timeout", type=float, default=600.0, show_default=True, help=TIMEOUT_HELP + ".")
@click.option("--replace", is_flag=True, help="Replace a test of the same name.")
@click.pass_context
def add_command(ctx: click.Context, name: str, cmd: str, models: str | None, how: str | None,
                timeout: float, replace: bool) -> None:
    """Define test NAME: it passes when CMD exits 0; a JSON object as its last line is its metrics.

    Matching is evaluated when tests run, so models added later get the test too.
    """
    from modelfs.ops.checks import Checks

    with open_repo(ctx) as repo:
        c = Checks(repo).add(name, cmd, models=models, how=how, timeout=timeout, replace=replace)
    click.echo(f"test {c.name} ({c.hash[:12]}) on {c.applies_to}: {c.cmd}")


@test_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """The tests, what they apply to and what they run."""
    from modelfs.ops.checks import Checks

    with open_repo(ctx) as repo:
        checks = Checks(repo).all()
    if as_json:
        click.echo(json.dumps([{**c.to_json(), "hash": c.hash} for c in checks], indent=1))
        return
    if not checks:
        click.echo("(no tests: modelfs test add NAME --cmd 'CMD {path}')")
    for line in _table(["test", "applies to", "timeout", "command"],
                       [[c.name, c.applies_to, f"{c.timeout:g}s", c.cmd] for c in checks]) if checks else []:
        click.echo(line)


@test_group.command("rm")
@click.argument("name")
@click.pass_context
def rm_command(ctx: click.Context, name: str) -> None:
    """Remove test NAME (and its results, unless another test runs the same command)."""
    from modelfs.ops.results import remove_test

    with open_repo(ctx) as repo:
        c, dropped = remove_test(repo, name)
    click.echo(f"removed test {c.name} and {dropped} result{'s' if dropped != 1 else ''}")


def _outcome_json(o: Any) -> dict[str, Any]:
    return {"test": o.check.name, "ref": o.version.ref, "cached": o.cached, **o.result.to_json()}


@test_group.command("run")
@click.argument("names", nargs=-1)
@click.option("--under", metavar="MODEL", help="Only MODEL's versions and everything derived from them.")
@click.option("--version", "ref", metavar="REF", help="Only this version.")
@click.option("--jobs", "-j", type=int, default=1, show_default=True, help="Commands run at once.")
@click.option("--executor", default="local", show_default=True, help="local, ray, or a plug-in's.")
@click.option("--force", is_flag=True, help="Run again even where the result is known.")
@click.option("--timeout", type=float, help=TIMEOUT_HELP + " (default: each test's own).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def run_command(ctx: click.Context, names: tuple[str, ...], under: str | None, ref: str | None, jobs: int,
                executor: str, force: bool, timeout: float | None, as_json: bool) -> None:
    """Run tests (all, or NAME...) on every version they apply to that has no result yet.

    Exits 1 when any result in the selection (new or known) is a failure.
    """
    from modelfs.ops.checks import Checks
    from modelfs.ops.results import Runner, pairs, select_versions

    if timeout is not None and not timeout > 0:
        raise click.ClickException(f"--timeout must be more than 0 seconds, not {timeout}")
    with open_repo(ctx) as repo:
        todo = pairs(Checks(repo).select(names), select_versions(repo, under, ref))
        wref = max(len(v.ref) for _, v in todo)
        wtest = max(len(c.name) for c, _ in todo)
        outcomes = []
        ex = executor_for(executor, jobs)
        try:
            with LazyVersions(ctx.find_root().obj["store"]) as dirs:
                for o in Runner(repo, dirs, ex, jobs, timeout).run(todo, force):
                    outcomes.append(o)
                    if not as_json:
                        known = "  (known)" if o.cached else f"  {o.result.seconds:.2f}s"
                        click.echo(f"{o.version.ref:<{wref}}  {o.check.name:<{wtest}}  {_cell(o.result)}{known}")
        finally:
            ex.close()
    failed = [o for o in outcomes if not o.result.passed]
    if as_json:
        click.echo(json.dumps([_outcome_json(o) for o in outcomes], indent=1))
    else:
        ran = sum(not o.cached for o in outcomes)
        click.echo(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed "
                   f"({ran} run, {len(outcomes) - ran} known, not run again)")
        for o in failed:
            if not o.cached:
                why = f"timed out after {o.result.timeout:g}s" if o.result.timed_out else f"exit {o.result.exit_code}"
                click.echo(f"--- {o.check.name} on {o.version.ref}: {why}")
                for line in o.result.output[-5:]:
                    click.echo(f"    {line}")
    if failed:
        ctx.exit(1)


@test_group.command("results")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def results_command(ctx: click.Context, names: tuple[str, ...], as_json: bool) -> None:
    """Versions x tests: pass / FAIL / TIMEOUT with metrics; '-' not run yet, blank: not applicable."""
    from modelfs.ops.checks import Checks
    from modelfs.ops.results import Results

    with open_repo(ctx) as repo:
        checks = Checks(repo).select(names)
        versions = [v for v in repo.all_versions() if any(c.matches(v) for c in checks)]
        results = Results(repo)
        known = {c.name: results.of_test(c.hash) for c in checks}
    if as_json:
        click.echo(json.dumps({"tests": [c.name for c in checks], "versions": [
            {"ref": v.ref, "id": v.id, "results": {c.name: (known[c.name][v.id].to_json() if v.id in known[c.name]
                                                            else None) for c in checks if c.matches(v)}}
            for v in versions]}, indent=1))
        return
    rows = [[v.ref, *(_cell(known[c.name].get(v.id)) if c.matches(v) else "" for c in checks)] for v in versions]
    for line in _table(["version", *(c.name for c in checks)], rows):
        click.echo(line)


@click.command("bisect")
@click.argument("test")
@click.argument("ref")
@click.option("--good", metavar="REF", help="A version known to pass (taken as passing, not run).")
@click.option("--path", "path_refs", multiple=True, metavar="REF",
              help="Walk these versions (oldest first, repeatable) instead of REF's first parents.")
@click.option("--executor", default="local", show_default=True, help="local, ray, or a plug-in's.")
@click.option("--timeout", type=float, help=TIMEOUT_HELP + " (default: the test's own).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bisect_command(ctx: click.Context, test: str, ref: str, good: str | None, path_refs: tuple[str, ...],
                   executor: str, timeout: float | None, as_json: bool) -> None:
    """Find the first version on REF's ancestry where TEST fails, and the step that made it.

    The path is REF's first parents (previous version of the same model, else the model it
    was derived from) back to the root or --good; a binary search runs TEST on O(log n) of
    them, reusing known results and storing new ones.
    """
    from modelfs.ops.bisect import FOUND, ROOT_FAILS, ancestry, bisect, given_path
    from modelfs.ops.checks import Checks
    from modelfs.ops.results import Runner

    if timeout is not None and not timeout > 0:
        raise click.ClickException(f"--timeout must be more than 0 seconds, not {timeout}")
    with open_repo(ctx) as repo:
        check = Checks(repo).get(test)
        v = repo.resolve(ref)
        g = repo.resolve(good) if good else None
        path = given_path(repo, v, path_refs, g) if path_refs else ancestry(repo, v, g)
        ex = executor_for(executor, 1)
        try:
            with LazyVersions(ctx.find_root().obj["store"]) as dirs:
                b = bisect(repo, Runner(repo, dirs, ex, 1, timeout), check, path, good_given=g is not None)
        finally:
            ex.close()
    if as_json:
        click.echo(json.dumps(b.to_json(), indent=1))
        return
    click.echo(f"bisect {check.name} over {len(path)} version{'s' if len(path) != 1 else ''}: "
               f"{path[0].ref} .. {path[-1].ref}")
    for p in b.probes:
        click.echo(f"  {p.version.ref:<24} {_cell(p.result)}{'  (known)' if p.cached else ''}")
    click.echo(f"{b.runs} run{'s' if b.runs != 1 else ''}, {b.reused} known result{'s' if b.reused != 1 else ''} reused")
    if b.verdict == FOUND:
        assert b.first_bad is not None and b.last_good is not None
        click.echo(f"first failing version: {b.first_bad.ref} ({b.first_bad.id})")
        click.echo(f"its parent on the path, passing: {b.last_good.ref} ({b.last_good.id})")
        click.echo(f"the step that brought the failure in: {b.step()}")
    elif b.verdict == ROOT_FAILS:
        assert b.first_bad is not None
        click.echo(f"{check.name} fails already at the root of the path, {b.first_bad.ref}: no derivation "
                   "on this path brought the failure in")
    else:
        click.echo(f"{check.name} passes at {path[-1].ref}: it never fails on this path, nothing to find")


COMMANDS: list[click.Command] = [test_group, bisect_command]
