"""`modelfs config`: read and set a model's settings (see modelfs/repo/settings.py)."""

from __future__ import annotations

import json

import click

from modelfs.cli.app import open_repo
from modelfs.names import check_model_name
from modelfs.repo.settings import SETTINGS


@click.command("config")
@click.argument("model", required=False)
@click.argument("key", required=False)
@click.argument("value", required=False)
@click.option("--unset", is_flag=True, help="Forget KEY's value for MODEL (it reads as its default).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_command(ctx: click.Context, model: str | None, key: str | None, value: str | None,
                   unset: bool, as_json: bool) -> None:
    """Show or set MODEL's settings: `config M` lists them, `config M KEY` shows one,
    `config M KEY VALUE` sets it. With no MODEL, lists the settings there are."""
    if model is None:
        for s in sorted(SETTINGS.all().values(), key=lambda s: s.name):
            click.echo(f"{s.name:<8} {s.help}")
        return
    check_model_name(model)
    with open_repo(ctx) as repo:
        settings = repo.model_settings()
        if key is None:
            values = settings.of(model)
            if as_json:
                click.echo(json.dumps(values, sort_keys=True))
                return
            for name, v in values.items():
                click.echo(f"{name} = {'(unset)' if v is None else SETTINGS.get(name).show(v)}")
        elif unset:
            if value is not None:
                raise click.UsageError("--unset takes no VALUE")
            done = settings.unset(model, key)
            click.echo(f"{model}: {key} unset" if done else f"{model}: {key} was not set")
        elif value is None:
            v = settings.get(model, key)
            click.echo(json.dumps(v) if as_json else ("(unset)" if v is None else SETTINGS.get(key).show(v)))
        else:
            v = settings.set(model, key, value)
            click.echo(f"{model}: {key} = {SETTINGS.get(key).show(v)}")


COMMANDS = [config_command]
