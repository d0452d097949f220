"""Text grammars of request fields (`switch`, `cache`): one definition gives the parser and the published regex.

A grammar is written once, as a function of a `Spelling`; written out `exact` it is the regex an API
publishes (a JSON Schema `pattern`), written out loose it is the regex the parser reads, with one
capture group per field. The two differ only in how numbers and separators are spelled:

- exact: the canonical spellings of the numbers within their fields' ranges (a JSON Schema pattern
  cannot call float(), so the range is in the regex), and no blanks;
- loose: any decimal spelling (`007`, `+5`, `1e-3`), blanks around separators; the field's model
  checks the range and names the field when it is out of it.

So every exact text is a loose one, and every exact text reads to values within their fields' ranges.
Number ranges come from the fields of the model the grammar fills (`field_limits`), never restated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

_JSON_KEYWORDS = {
    "minimum": "ge",
    "maximum": "le",
    "exclusiveMinimum": "gt",
    "minLength": "min_length",
    "maxLength": "max_length",
}


def _field_schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The JSON Schema of a model field's value (an optional field's non-null branch)."""
    spec = model.model_json_schema()["properties"][name]
    return next(b for b in spec.get("anyOf", [spec]) if b.get("type") != "null")


def field_limits(model: type[BaseModel], name: str) -> dict[str, Any]:
    """A model field's bounds as pydantic Field arguments (`ge`, `le`, `gt`, `min_length`, `max_length`)."""
    return {_JSON_KEYWORDS[k]: v for k, v in _field_schema(model, name).items() if k in _JSON_KEYWORDS}


def _digits(a: int, b: int) -> str:
    return str(a) if a == b else f"[{a}-{b}]"


def _any_digits(n: int) -> str:
    return "[0-9]" if n == 1 else f"[0-9]{{{n}}}"


def _range_alternatives(lo: str, hi: str) -> list[str]:
    """Regex alternatives for the decimals lo..hi, both of one length."""
    n = len(lo)
    if lo == hi:
        return [lo]
    if n == 1:
        return [_digits(int(lo), int(hi))]
    if lo[0] == hi[0]:
        return [lo[0] + rest for rest in _range_alternatives(lo[1:], hi[1:])]
    out, first, last = [], int(lo[0]), int(hi[0])
    if lo[1:] != "0" * (n - 1):
        out += [lo[0] + rest for rest in _range_alternatives(lo[1:], "9" * (n - 1))]
        first += 1
    full_top = hi[1:] == "9" * (n - 1)
    if first <= (last if full_top else last - 1):
        out.append(_digits(first, last if full_top else last - 1) + _any_digits(n - 1))
    if not full_top:
        out += [hi[0] + rest for rest in _range_alternatives("0" * (n - 1), hi[1:])]
    return out


def integer_range_pattern(lo: int, hi: int) -> str:
    """A regex group matching the canonical decimal spellings of lo..hi (0 <= lo <= hi)."""
    parts: list[str] = []
    for digits in range(len(str(lo)), len(str(hi)) + 1):
        first = max(lo, 0 if digits == 1 else 10 ** (digits - 1))
        last = min(hi, 10**digits - 1)
        if first <= last:
            parts += _range_alternatives(str(first), str(last))
    return "(?:" + "|".join(parts) + ")"


# Decimals in [0, 1] (the only ones the grammars carry), by (lower bound open, '.' required). At most
# 15 (29) decimals, so that float() of every such text stays in the range: a longer `1.000…01` would
# read as 1.0 and a longer `0.000…01` as 0.0.
_UNIT_DECIMALS = {
    (False, True): r"(?:0\.[0-9]{0,15}|\.[0-9]{1,15}|1\.0{0,15})",  # [0, 1], always with a '.'
    (True, False): r"(?:0?\.[0-9]{0,14}[1-9][0-9]{0,14}|1(?:\.0{0,15})?)",  # (0, 1]
}
_LOOSE_INTEGER = r"[+-]?[0-9]+"
_LOOSE_DECIMAL = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_LOOSE_POINTED = r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"


@dataclass(frozen=True)
class Number:
    """One number of a grammar: its exact (canonical, in range) and loose spellings, and how it reads."""

    exact: str
    loose: str
    read: Callable[[str], int | float]


def number(model: type[BaseModel], name: str, point: bool = False) -> Number:
    """The number that fills `model.name`, within that field's bounds; `point`: always written with a '.'
    (so that a grammar can tell it from an integer in the same place)."""
    limits = field_limits(model, name)
    if _field_schema(model, name)["type"] == "integer":
        return Number(integer_range_pattern(limits["ge"], limits["le"]), _LOOSE_INTEGER, int)
    low_open = "gt" in limits
    exact = _UNIT_DECIMALS.get((low_open, point))
    if exact is None or limits.get("gt", limits.get("ge")) != 0 or limits.get("le") != 1:
        raise ValueError(f"{model.__name__}.{name}: no exact spelling for a number with bounds {limits}")
    return Number(exact, _LOOSE_POINTED if point else _LOOSE_DECIMAL, float)


class Spelling:
    """How a grammar is written out: exact (the published regex) or loose (the parser's, with groups)."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.groups: dict[str, tuple[str, Callable[[str], Any]]] = {}  # group -> (field path, reader)

    def _group(self, field: str, body: str, read: Callable[[str], Any]) -> str:
        name = f"g{len(self.groups)}"
        self.groups[name] = (field, read)
        return f"(?P<{name}>{body})"

    def word(self, field: str, *words: str) -> str:
        """One of `words`, which is the value of `field` (a dotted path: `sketch.kind`)."""
        body = words[0] if len(words) == 1 else "(?:" + "|".join(words) + ")"
        return body if self.exact else self._group(field, body, str)

    def number(self, field: str, value: Number) -> str:
        return value.exact if self.exact else self._group(field, value.loose, value.read)

    def sep(self, text: str) -> str:
        return text if self.exact else rf"\s*{re.escape(text)}\s*"


class Grammar:
    """A text field's grammar: `build(spelling, **params)` writes it (params: what a published pattern
    may narrow, e.g. the cache kinds a deployment allows; the parser reads the widest form)."""

    def __init__(self, name: str, build: Callable[..., str], syntax: str) -> None:
        self.name = name
        self.syntax = syntax  # for people: error messages and the API's field description
        self._build = build
        loose = Spelling(exact=False)
        self._regex = re.compile(build(loose), re.ASCII)
        self._groups = loose.groups

    def pattern(self, **params: Any) -> str:
        """The published regex: exactly the canonical texts, every number within its field's range."""
        return "^(?:" + self._build(Spelling(exact=True), **params) + ")$"

    def fields(self, text: str) -> dict[str, Any]:
        """The field values `text` spells, nested by their dotted paths; ranges are the model's to check."""
        match = self._regex.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"cannot parse {text!r} as a {self.name}; expected {self.syntax}")
        out: dict[str, Any] = {}
        for group, value in match.groupdict().items():
            if value is None:
                continue
            path, read = self._groups[group]
            *parents, leaf = path.split(".")
            node = out
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = read(value)
        return out
