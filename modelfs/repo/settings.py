"""Per-model settings (`modelfs config MODEL KEY VALUE`): how a model's new versions are made.

A setting is named, typed and documented in one registry, so the CLI, the mount and the
importer agree on what exists and what a value means, and a bad value is refused with one
line before anything is stored. Values live in the store's "config" table (model -> JSON of
the settings set for it); an unset setting reads as its default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelfs.errors import ModelfsError
from modelfs.names import check_model_name
from modelfs.registry import Registry
from modelfs.repo.tables import RecordTable


class InvalidSetting(ModelfsError):
    pass


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    help: str
    default: Any
    parse: Callable[[str], Any]  # the CLI's text -> the stored value; raises InvalidSetting

    def show(self, value: Any) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        return f"{value:g}" if isinstance(value, float) else str(value)


SETTINGS: Registry[Setting] = Registry(
    "modelfs.settings", "setting", lambda s: s.name,
    missing=lambda name, known: f"no setting {name!r}; known: {', '.join(known)}")


def parse_switch(text: str) -> bool:
    t = text.strip().lower()
    if t in ("on", "true", "yes", "1"):
        return True
    if t in ("off", "false", "no", "0"):
        return False
    raise InvalidSetting(f"{text!r} is not on or off")


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidSetting(f"{text!r} is not a number of seconds") from None
    if not 0.0 <= value <= 3600.0:
        raise InvalidSetting(f"{text!r} seconds is out of range (0 to 3600)")
    return value


SETTINGS.register(Setting(
    "settle", "seconds a model's directory in the mount must be quiet before its writes become "
    "a version (the mount's --settle when unset)", None, parse_seconds))
SETTINGS.register(Setting(
    "lossy", "store this model's new versions lossily, behind the accuracy gate", False, parse_switch))


def parse_names(text: str) -> str:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if not all(c.isalnum() or c in "._+-" for c in n):
            raise InvalidSetting(f"{n!r} is not a test name")
    return ",".join(names)


def parse_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidSetting(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise InvalidSetting(f"{text!r} is out of range (a relative tolerance between 0 and 1)")
    return value


SETTINGS.register(Setting(
    "lossy-gate", "tests (comma-separated names from `modelfs test add`) the lossy gate runs on "
    "the original and the reconstruction before a lossy version commits", "", parse_names))
SETTINGS.register(Setting(
    "lossy-tolerance", "how far (relative) each gate test's metrics may move on the reconstruction",
    0.005, parse_fraction))


class ModelSettings:
    """The settings of every model, read and written through the store's "config" table."""

    def __init__(self, table: RecordTable) -> None:
        self._table = table

    def of(self, model: str) -> dict[str, Any]:
        """Every setting of ``model``, defaults filled in."""
        stored = self._table.get(check_model_name(model).encode()) or {}
        return {name: stored.get(name, s.default) for name, s in sorted(SETTINGS.all().items())}

    def get(self, model: str, name: str) -> Any:
        setting = SETTINGS.get(name)
        stored = self._table.get(check_model_name(model).encode()) or {}
        return stored.get(name, setting.default)

    def set(self, model: str, name: str, text: str) -> Any:
        """Parse ``text`` for setting ``name`` and store it; returns the stored value."""
        value = SETTINGS.get(name).parse(text)
        stored = dict(self._table.get(check_model_name(model).encode()) or {})
        stored[name] = value
        self._table.put(model.encode(), stored)
        return value

    def unset(self, model: str, name: str) -> bool:
        SETTINGS.get(name)
        stored = dict(self._table.get(check_model_name(model).encode()) or {})
        if stored.pop(name, None) is None:
            return False
        if stored:
            self._table.put(model.encode(), stored)
        else:
            self._table.delete(model.encode())
        return True

    def configured(self) -> dict[str, dict[str, Any]]:
        """model -> the settings explicitly set for it."""
        return {k.decode(): v for k, v in self._table.items()}
