"""One description of a mount's settings, for the CLI, the daemon's command line and the core.

``modelfs mount`` builds a ``MountConfig`` from its options and hands it to the daemon as
arguments (``to_argv``); the daemon reads them back (``parser``/``from_args``). Each
setting is declared once, here, with its default and its help.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _opt(default: Any, help: str, hidden: bool = False) -> Any:  # noqa: A002 (argparse's name)
    return field(default=default, metadata={"help": help, "hidden": hidden})


@dataclass(frozen=True)
class MountConfig:
    cache_mb: int = _opt(512, "memory for decoded chunks (MiB)")
    settle: float = _opt(1.0, "seconds a model's directory must be quiet (nothing open for "
                              "writing) before what was written there commits as one version")
    grace: float = _opt(30.0, "seconds open files are served after SIGTERM/SIGINT")
    read_only: bool = _opt(False, "serve every version read-only (works beside a writable "
                                  "mount of the same store)")
    refresh_interval: float = _opt(0.5, "seconds between checks for commits made elsewhere",
                                   hidden=True)
    threads: int = _opt(0, "worker threads for decoding (0: cores + 1)", hidden=True)
    window: int = _opt(16 << 20, "sequential read-ahead window (bytes)", hidden=True)
    piece: int = _opt(2 << 20, "bytes decoded per worker call", hidden=True)
    trigger: int = _opt(8 << 20, "sequential bytes read before read-ahead starts", hidden=True)
    stage_delay: float = _opt(0.0, "wait before storing each closed file (tests)", hidden=True)

    def for_lazy_store(self) -> MountConfig:
        """Read-ahead for a store whose chunks come over the network, where left at the
        defaults: a 128 MiB window (hf-mount reads 8 to 128 MiB ahead) in 32 MiB pieces, one
        fetch each, so a version's chunks come in few large ranged GETs, several in flight."""
        out = self
        for name, factor in (("window", 8), ("piece", 16)):
            f = next(f for f in dataclasses.fields(self) if f.name == name)
            if getattr(self, name) == f.default:
                out = dataclasses.replace(out, **{name: f.default * factor})
        return out

    @staticmethod
    def _flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    def to_argv(self) -> list[str]:
        """The daemon arguments for the settings that differ from the defaults."""
        out: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if isinstance(value, bool):
                out.append(self._flag(f.name))
            else:
                out += [self._flag(f.name), str(value)]
        return out

    @classmethod
    def help(cls, name: str) -> str:
        """A setting's help text, for the CLI's option of the same name."""
        return str(next(f for f in dataclasses.fields(cls) if f.name == name).metadata["help"])

    @classmethod
    def add_arguments(cls, ap: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            help_ = argparse.SUPPRESS if f.metadata["hidden"] else f.metadata["help"]
            if f.type in ("bool", bool):
                ap.add_argument(cls._flag(f.name), action="store_true", help=help_)
            else:
                kind = float if isinstance(f.default, float) else int
                ap.add_argument(cls._flag(f.name), type=kind, default=f.default, help=help_)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> MountConfig:
        return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})
