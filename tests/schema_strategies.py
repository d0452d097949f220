"""Hypothesis strategies drawn from a published JSON Schema property (the create body's exactness tests)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def conforming(spec: dict[str, Any], max_list: int = 5) -> st.SearchStrategy:
    """Values one property's schema allows (the cross-field rules aside), drawn from that schema; lists of
    at most `max_list` items."""
    if "enum" in spec:
        return st.sampled_from(spec["enum"])
    if "anyOf" in spec:
        return st.one_of([conforming(branch, max_list) for branch in spec["anyOf"]])
    if spec["type"] == "array":
        items = conforming(spec["items"], max_list)
        unique = spec.get("uniqueItems", False)
        return st.lists(items, min_size=spec["minItems"], max_size=min(spec["maxItems"], max_list), unique=unique)
    if spec["type"] == "string":
        text = st.from_regex(spec["pattern"], fullmatch=True) if "pattern" in spec else st.text(max_size=8)
        return text.filter(lambda v: spec.get("minLength", 0) <= len(v) <= spec.get("maxLength", 10**9))
    if spec["type"] == "integer":
        step = spec.get("multipleOf", 1)
        return st.integers(-(-spec["minimum"] // step), spec["maximum"] // step).map(lambda k: k * step)
    low = spec.get("minimum", spec.get("exclusiveMinimum"))
    exclusive = "minimum" not in spec and "exclusiveMinimum" in spec
    return st.floats(low, spec.get("maximum"), exclude_min=exclusive, allow_infinity=False)
