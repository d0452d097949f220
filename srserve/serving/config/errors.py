"""Errors that stop srserve before it serves anything, and their one-line wording.

`srserve` prints a StartupError's message as one line and exits 2 (srserve/cli/errors.py), so the
message names the file, field or variable at fault and what to do about it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

# Never echo what was given for these: a token or a DSN may sit in the value.
_SECRET_FIELD = re.compile(r"token|secret|password|dsn|key", re.IGNORECASE)
# A union's member tag in an error location (`ModelPairConfig`, `literal['tiny']`), not a field the user wrote.
_UNION_TAG = re.compile(r"^[A-Z]|[\[\]]")


class StartupError(Exception):
    """srserve cannot start as configured or invoked; the message is one line that says why and what to do."""


class ConfigError(StartupError, ValueError):
    """A deploy or serving config that cannot be used: the message names the file and the field."""


def field_path(loc: tuple[Any, ...]) -> str:
    """`sketch_pool.ray_actor_options`, `applications[0].args` from a pydantic error location."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _UNION_TAG.search(str(part)):
            out += f".{part}" if out else str(part)
    return out


def describe_invalid(exc: ValidationError, prefix: str = "", rename: dict[str, str] | None = None) -> str:
    """Every problem of a validation error on one line, each naming its field as the file spells it
    (`prefix`: where the model sits in the file; `rename`: model field -> the file's key)."""
    problems: list[str] = []
    for err in exc.errors():
        path = field_path(err.get("loc", ()))
        head, _, rest = path.partition(".")
        path = (rename or {}).get(head, head) + (f".{rest}" if rest else "")
        where = prefix + path if path else prefix.rstrip(".") or "the config"
        if err["type"] == "extra_forbidden":
            problem = f"{where}: unknown field; check its spelling or remove it"
        else:
            problem = f"{where}: {str(err['msg']).removeprefix('Value error, ')}"
            given = err.get("input")
            if isinstance(given, str | int | float | bool) and not _SECRET_FIELD.search(path):
                problem += f" (got {given!r})"
        if problem not in problems:  # a union's members can repeat one another
            problems.append(problem)
    return "; ".join(problems)
