"""`modelfs config`: per-model settings through the real CLI, bad values refused unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from modelfs.repo import Repo
from modelfs.repo.settings import SETTINGS, InvalidSetting, ModelSettings


def test_set_show_unset_roundtrip(tmp_path: Path, cli: Callable[..., object]) -> None:
    store = tmp_path / "s"
    assert cli("init", store=store).returncode == 0
    r = cli("config", "run", "settle", "0.2", store=store)
    assert r.returncode == 0 and "run: settle = 0.2" in r.stdout
    assert cli("config", "run", "lossy", "on", store=store).stdout.strip() == "run: lossy = on"
    shown = json.loads(cli("config", "run", "--json", store=store).stdout)
    assert shown == {"lossy": True, "lossy-gate": "", "lossy-tolerance": 0.005, "settle": 0.2}
    assert cli("config", "run", "settle", store=store).stdout.strip() == "0.2"
    assert cli("config", "run", "settle", "--unset", store=store).returncode == 0
    assert json.loads(cli("config", "run", "--json", store=store).stdout) == {
        "lossy": True, "lossy-gate": "", "lossy-tolerance": 0.005, "settle": None}
    with Repo.open(store) as repo:
        assert repo.model_settings().get("run", "lossy") is True
        assert repo.model_settings().configured() == {"run": {"lossy": True}}


def test_bad_values_are_one_line_and_change_nothing(tmp_path: Path, cli: Callable[..., object]) -> None:
    store = tmp_path / "s"
    cli("init", store=store)
    cli("config", "m", "settle", "1.5", store=store)
    for args, says in [(("m", "settle", "soon"), "not a number of seconds"),
                       (("m", "settle", "7200"), "out of range"),
                       (("m", "lossy", "maybe"), "not on or off"),
                       (("m", "lossy-tolerance", "2"), "out of range"),
                       (("m", "lossy-tolerance", "tight"), "not a number"),
                       (("m", "lossy-gate", "a b"), "not a test name"),
                       (("m", "colour", "red"), "no setting 'colour'"),
                       (("a/b", "lossy", "on"), "contains '/'")]:
        r = cli("config", *args, store=store)
        assert r.returncode != 0 and says in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert json.loads(cli("config", "m", "--json", store=store).stdout)["settle"] == 1.5


def test_every_setting_parses_its_own_shown_value(repo: Repo) -> None:
    settings: ModelSettings = repo.model_settings()
    for name, s in SETTINGS.all().items():
        sample = {"settle": "0.25", "lossy": "off", "lossy-gate": "heldout,sim", "lossy-tolerance": "0.01"}[name]
        value = settings.set("m", name, sample)
        assert s.parse(s.show(value)) == value
    try:
        SETTINGS.get("lossy").parse("2")
    except InvalidSetting as e:
        assert "not on or off" in str(e)
    else:
        raise AssertionError("'2' was taken as a switch")
