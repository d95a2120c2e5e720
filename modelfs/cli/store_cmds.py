"""`modelfs init`, `import`, `export`, `du`, `fsck`, `gc`: getting checkpoints in and out, and the store's health.

`import` is one command: a plain import goes to the facade, `--lora` and `--updates` to the
ops that detect how the new version was made from its parent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from modelfs.cli.app import open_repo, progress
from modelfs.cli.remote_cmds import gc_remote_run
from modelfs.cli.render import human_bytes
from modelfs.errors import ModelfsError
from modelfs.names import check_model_name
from modelfs.repo import Repo, source_files


def _dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


@click.command()
@click.option("--shared", is_flag=True,
              help="Give the store's group the owner's access (default: the owner only).")
@click.pass_context
def init(ctx: click.Context, shared: bool) -> None:
    """Create an empty store, private to its owner unless --shared."""
    Repo.init(ctx.obj["store"], shared=shared).close()
    click.echo(f"initialised empty {'shared' if shared else 'private'} modelfs store in {ctx.obj['store']}")


@click.command("import")
@click.argument("src", required=False, type=click.Path(path_type=Path))
@click.option("--model", required=True, help="Model name to import into (a new version of it).")
@click.option("--parent", "parents", multiple=True, metavar="MODEL[@N]", help="Provenance parent(s); repeat for merges.")
@click.option("--how", help="How it was derived: finetune, lora, prune, cast, merge, ...")
@click.option("-m", "--message", default="", help="Message recorded with the version.")
@click.option("--provenance", help="Free-form JSON recorded with the version.")
@click.option("--no-infer", is_flag=True, help="Do not infer a parent for a new model.")
@click.option("--follow-symlinks", is_flag=True,
              help="Import what symlinks out of SRC point to (refused by default).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--lora", "lora", type=click.Path(path_type=Path), metavar="ADAPTER_DIR",
              help="A PEFT LoRA adapter applied to --parent: stored as its factors. With SRC, SRC is "
                   "imported as saved and the adapter says how it was made; without, the merged "
                   "weights are rebuilt from the parent.")
@click.option("--updates", "updates", metavar="TYPES",
              help="Detect update types against the parent, comma-separated (sparse,lowrank), and "
                   "store matching tensors as such.")
@click.option("--recipe", "recipe_cmd", metavar="CMD",
              help="How MODEL's versions are made from its parents ({parent} {out} ...): kept as its "
                   "recipe, re-run by `modelfs update`.")
@click.option("--input", "inputs", multiple=True, type=click.Path(path_type=Path),
              help="With --recipe: a data file it reads (blake3 recorded; repeatable).")
@click.option("--lossy", is_flag=True, help="Store it lossily behind the accuracy gate (docs/lossy.md).")
@click.option("--tolerance", type=float, help="With --lossy: how far (relative) gate metrics may move (0.005).")
@click.option("--gate", "gate", multiple=True, metavar="TEST",
              help="With --lossy: a test (modelfs test add) run on the original and the reconstruction.")
@click.pass_context
def import_(ctx: click.Context, src: Path | None, model: str, parents: tuple[str, ...], how: str | None,
            message: str, provenance: str | None, no_infer: bool, follow_symlinks: bool,
            as_json: bool, lora: Path | None, updates: str | None, recipe_cmd: str | None,
            inputs: tuple[Path, ...], lossy: bool, tolerance: float | None, gate: tuple[str, ...]) -> None:
    """Import the checkpoint directory SRC as a new version of MODEL."""
    from modelfs.cli.lossy_cmds import check_lossy_options, import_lossy_cmd, lossy_wanted

    check_lossy_options(lossy, tolerance, gate, lora, updates)
    if recipe_cmd is not None:
        from modelfs.cli.recipe_cmds import check_recipe_options

        check_recipe_options(recipe_cmd, inputs)  # before anything is stored
        if lora is not None or updates is not None:
            raise ModelfsError("--recipe cannot be combined with --lora or --updates")
    elif inputs:
        raise ModelfsError("--input names a recipe's data files: give --recipe too")
    if lora is not None or updates is not None:
        _import_with_updates(ctx, lora, updates, src=src, model=model, parents=parents, how=how,
                             message=message, provenance=provenance, as_json=as_json,
                             follow_symlinks=follow_symlinks)
        return
    if src is None:
        raise click.UsageError("Missing argument 'SRC'.")
    if not src.is_dir():
        raise ModelfsError(f"{src} is not a directory")
    try:
        prov = json.loads(provenance) if provenance else {}
    except json.JSONDecodeError as e:
        raise ModelfsError(f"--provenance is not valid JSON: {e}") from None
    if not isinstance(prov, dict):
        raise ModelfsError(f"--provenance must be a JSON object such as '{{\"lr\": 1e-4}}', not {provenance}")
    if lossy or (lora is None and updates is None and lossy_wanted(ctx, model)):
        import_lossy_cmd(ctx, src, model, parents, how, message, prov, no_infer, tolerance, gate, as_json,
                         recipe_cmd, inputs)
        return
    with open_repo(ctx) as repo, progress(_dir_size(src), f"import {model}") as tick:
        if recipe_cmd is not None:
            prov["recipe_cmd"] = recipe_cmd
        v = repo.import_dir(src, model, parents=list(parents), how=how, message=message,
                            provenance=prov, infer_parent=not no_infer, progress=tick,
                            follow_symlinks=follow_symlinks)
        if recipe_cmd is not None:
            from modelfs.cli.recipe_cmds import record_import_recipe

            record_import_recipe(repo, model, recipe_cmd, inputs)
        for w in repo.last_import_warnings:
            click.echo(f"warning: {w}", err=True)
        inferred = repo.last_inferred_parent
        inference = repo.last_inference
        if as_json:
            click.echo(json.dumps({"id": v.id, "ref": v.ref, "parents": list(v.parents),
                                   "inferred_parent": inferred.ref if inferred else None,
                                   "inference": inference.provenance()["inference"] if inference else None}))
            return
        if inference is not None:
            click.echo(inference.describe())
        click.echo(f"imported {v.ref} ({v.id}), {len(v.files)} files, {human_bytes(v.logical_size)}")


def _import_with_updates(ctx: click.Context, lora: Path | None, updates: str | None, *, src: Path | None,
                         model: str, parents: tuple[str, ...], how: str | None, message: str,
                         provenance: str | None, as_json: bool, follow_symlinks: bool) -> None:
    """`import --lora` / `--updates`: the version is stored as the update it is to its parent."""
    from modelfs.ops.lora import import_lora
    from modelfs.ops.updates import detect_updates

    check_model_name(model)
    if len(parents) != 1:
        raise ModelfsError("--lora and --updates need exactly one --parent (the version the update applies to)")
    try:
        prov = json.loads(provenance) if provenance else {}
    except json.JSONDecodeError as e:
        raise ModelfsError(f"--provenance is not valid JSON: {e}") from None
    if src is not None and not src.is_dir():
        raise ModelfsError(f"{src} is not a directory")
    if lora is not None and not lora.is_dir():
        raise ModelfsError(f"--lora {lora} is not an adapter directory")
    with open_repo(ctx) as repo:
        parent = repo.resolve(parents[0])
        report: dict[str, Any] = {}
        if lora is not None:
            if updates:
                raise ModelfsError("--lora and --updates cannot be combined")
            v = import_lora(repo, lora, parent.id, model, src=src, message=message, how=how or "lora",
                            provenance=prov, follow_symlinks=follow_symlinks)
            report = {"lora": v.provenance.get("lora")}
        else:
            if src is None:
                raise click.UsageError("Missing argument 'SRC'.")
            files = source_files(src, follow_symlinks)  # links out of SRC refused, as in import
            types = [t.strip() for t in (updates or "").split(",") if t.strip()]
            plan = detect_updates(repo, files, parent, types)
            report = plan.report()
            prov["updates"] = report
            v = repo.commit_files(model, files, hints=plan.hint, parents=[parent.id], how=how,
                                  message=message, provenance=prov, infer_parent=False)
        if as_json:
            click.echo(json.dumps({"id": v.id, "ref": v.ref, "parents": list(v.parents),
                                   "updates": report}))
            return
        click.echo(f"imported {v.ref} ({v.id}) from {parent.ref}, {len(v.files)} files, "
                   f"{human_bytes(v.logical_size)}")
        if lora is None:
            kinds: dict[str, int] = {}
            for d in report.values():
                kinds[d["type"]] = kinds.get(d["type"], 0) + 1
            click.echo("updates detected: " + (", ".join(f"{n} {k}" for k, n in kinds.items()) or "none"))


@click.command()
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=Path))
@click.pass_context
def export(ctx: click.Context, ref: str, dest: Path) -> None:
    """Write version REF (MODEL, MODEL@N or an id) into the new or empty directory DEST."""
    with open_repo(ctx) as repo:
        v = repo.resolve(ref)
        with progress(v.logical_size, f"export {v.ref}") as tick:
            repo.export(v.id, dest, progress=tick)
        click.echo(f"exported {v.ref} to {dest}")


def _ratio(m: dict[str, Any]) -> str:
    """A model's ratio column: logical over the bytes first stored for it; a model whose every
    chunk another model stored first adds nothing, so say so, with what it references."""
    if m["stored"]:
        return f"{m['ratio']:>8.1f}x"
    if not m["logical"]:
        return f"{'-':>9}"
    return (f"{'shared':>9}  (all {human_bytes(m['referenced'])} it references are shared: "
            f"{m['referenced_ratio']:.1f}x)")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def du(ctx: click.Context, as_json: bool) -> None:
    """Logical bytes (as full copies), stored bytes and the ratio, per model and in total.

    A model's stored bytes are those first stored for it; a model made entirely of chunks
    stored earlier for others shows 0 B and "shared", with the bytes its versions reference."""
    from modelfs.cli.lossy_cmds import lossy_counts

    with open_repo(ctx) as repo:
        report = repo.maintenance().du()
        lossy = lossy_counts(repo)
    for name, m in report["models"].items():
        m["lossy_versions"] = lossy.get(name, 0)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(f"{'model':<28}{'versions':>9}{'lossy':>6}{'logical':>12}{'stored':>12}{'ratio':>9}")
    for name, m in sorted(report["models"].items()):
        click.echo(f"{name:<28}{m['versions']:>9}{m['lossy_versions'] or '-':>6}{human_bytes(m['logical']):>12}"
                   f"{human_bytes(m['stored']):>12}{_ratio(m)}")
    t = report["total"]
    click.echo(f"{'total':<28}{t['versions']:>9}{sum(lossy.values()) or '-':>6}{human_bytes(t['logical']):>12}"
               f"{human_bytes(t['stored']):>12}{t['ratio']:>8.2f}x")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def fsck(ctx: click.Context, as_json: bool) -> None:
    """Check every chunk's and file's blake3 and every reference."""
    with open_repo(ctx) as repo:
        report = repo.maintenance().fsck()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        for e in report.errors:
            click.echo(f"error: {e}", err=True)
        click.echo(f"checked {report.versions_checked} versions, {report.files_checked} files, "
                   f"{report.chunks_checked} chunks: {'ok' if report.ok else f'{len(report.errors)} errors'}")
        if report.not_fetched_chunks:
            click.echo(f"{report.not_fetched_chunks} chunks ({report.not_fetched_files} files) not "
                       f"fetched yet (lazy): remote {report.lazy_remote} holds them, and each is "
                       "checked against its blake3 when fetched")
        if report.unreferenced_chunks or report.unreferenced_files:
            click.echo(f"{report.unreferenced_chunks} chunks and {report.unreferenced_files} file records "
                       "no version or draft reaches (left by an interrupted import, a save into the "
                       "mount that was overwritten before it became a version, or a removed or "
                       "pruned version); `modelfs gc` frees them")
    if not report.ok:
        sys.exit(1)


@click.command()
@click.option("--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--remote", "remote_name", metavar="NAME", help="Collect remote NAME's packs no ref reaches instead.")
@click.option("--grace", type=float, metavar="SECONDS", help="With --remote: keep packs younger than this "
              "(default 3600: never what a concurrent push is uploading).")
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, as_json: bool, remote_name: str | None, grace: float | None) -> None:
    """Remove chunks and file records no version reaches (--remote: a remote's packs)."""
    if remote_name is not None:
        gc_remote_run(ctx, remote_name, grace, dry_run, as_json)
        return
    if grace is not None:
        raise click.UsageError("--grace goes with --remote")
    with open_repo(ctx) as repo:
        r = repo.maintenance().gc(dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(r))
    else:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {r['chunks_removed']} chunks and {r['files_removed']} file records "
                   f"({human_bytes(r['bytes_freed'])})")


COMMANDS: list[click.Command] = [init, import_, export, du, fsck, gc]
