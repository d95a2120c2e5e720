"""Shell commands with placeholders, as tests and recipes take them (`{path}`, `{out}`, ...)."""

from __future__ import annotations

import string
from collections.abc import Sequence

from modelfs.errors import ModelfsError


def placeholders_in(cmd: str, allowed: Sequence[str], what: str = "command") -> list[str]:
    """The placeholders ``cmd`` uses; an unknown one (or a lone brace) is refused in one line.

    Placeholders are str.format fields with nothing after the name (``{path}``, not
    ``{path!r}`` or ``{path:>9}``); ``{{`` and ``}}`` are literal braces (so a shell
    ``${VAR}`` is written ``${{VAR}}``).
    """
    if not cmd.strip():
        raise ModelfsError(f"the {what} is empty")
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(cmd)
                  if f is not None]
    except ValueError as e:
        raise ModelfsError(f"bad {what} {cmd!r}: {e} (literal braces are {{{{ and }}}})") from None
    names = ", ".join("{" + p + "}" for p in allowed)
    for f, spec, conv in fields:
        if f not in allowed:
            raise ModelfsError(f"unknown placeholder {{{f}}} in {what} {cmd!r}: use {names} "
                               "(literal braces as {{ and }})")
        if spec or conv:
            raise ModelfsError(f"placeholder {{{f}}} in {what} {cmd!r} takes no format or "
                               "conversion")
    return [f for f, _, _ in fields]
