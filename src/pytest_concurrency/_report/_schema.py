"""Check a session document against :data:`._json.JSON_SCHEMA` before anything reads it.

A hand-edited, truncated or foreign file must be a clear error naming the file and the
first place it goes wrong, not an ``AttributeError`` deep in a comparison. The checker
covers the keywords the schema uses (``type``, ``required``, ``properties``, ``items``,
``$ref``, ``const``, ``anyOf``, ``additionalProperties``, ``minimum``), refuses NaN and
infinity wherever a number stands, and walks the document without recursion, so absurd
nesting cannot exhaust the stack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._json import JSON_SCHEMA

__all__ = ["MAX_DEPTH", "READ_SCHEMA", "depth", "first_problem"]

#: Deepest nesting a document may have; a session document needs about ten levels.
MAX_DEPTH = 64

#: What a reader needs of a document: the schema, with the machine description free-form
#: (it is only described, never computed with, and older or hand-made files lack fields).
READ_SCHEMA: dict[str, Any] = {
    **JSON_SCHEMA,
    "properties": {**JSON_SCHEMA["properties"], "machine": {"type": "object"}},
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def depth(value: Any) -> int:
    """How deeply *value* nests lists and dicts (0 for a scalar), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        if level + 1 > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[kind])


def _name(value: Any) -> str:
    for kind in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is(value, kind):
            return _name_of_kind(kind)
    return type(value).__name__


def _resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        resolved: Mapping[str, Any] = JSON_SCHEMA["$defs"][ref.removeprefix("#/$defs/")]
        return resolved
    return schema


def _where(path: str) -> str:
    return path or "the document"


def first_problem(doc: Any, schema: Mapping[str, Any] = READ_SCHEMA) -> str | None:
    """The first place *doc* breaks *schema*, as ``storms[2].latency: ...``; None when it fits."""
    if depth(doc) > MAX_DEPTH:
        return f"it nests more than {MAX_DEPTH} levels deep, which no session document does"
    stack: list[tuple[Any, Mapping[str, Any], str]] = [(doc, schema, "")]
    while stack:
        value, node, path = stack.pop()
        node = _resolve(node)
        if "anyOf" in node:
            if not any(first_problem(value, option) is None for option in node["anyOf"]):
                return f"{_where(path)}: {_name(value)} fits none of the allowed shapes"
            continue
        if "const" in node and value != node["const"]:
            return f"{_where(path)} is {value!r}, expected {node['const']!r}"
        kinds = node.get("type")
        if kinds is not None:
            allowed = [kinds] if isinstance(kinds, str) else list(kinds)
            if not any(_is(value, kind) for kind in allowed):
                wanted = " or ".join(_name_of_kind(kind) for kind in allowed)
                return f"{_where(path)} is {_name(value)}, expected {wanted}"
        if isinstance(value, float) and not math.isfinite(value):
            # JSON has no NaN or infinity (Python's reader takes them all the same), and
            # NaN compares false with everything: ``value < minimum`` would let it through.
            return f"{_where(path)} is {value!r}, not a finite number"
        if "minimum" in node and _is(value, "number") and value < node["minimum"]:
            return f"{_where(path)} is {value!r}, below its minimum {node['minimum']!r}"
        if isinstance(value, dict):
            missing = [key for key in node.get("required", ()) if key not in value]
            if missing:
                return f"{_where(path)} lacks {', '.join(map(repr, missing))}"
            properties: Mapping[str, Any] = node.get("properties", {})
            extra = node.get("additionalProperties")
            for key, child in value.items():
                sub = f"{path}.{key}" if path else str(key)
                if key in properties:
                    stack.append((child, properties[key], sub))
                elif isinstance(extra, Mapping):
                    stack.append((child, extra, sub))
        elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
            stack.extend((child, node["items"], f"{path}[{i}]") for i, child in enumerate(value))
    return None


def _name_of_kind(kind: str) -> str:
    names = {"array": "a list", "object": "an object", "null": "null", "integer": "an integer"}
    return names.get(kind, f"a {kind}")
