"""A request's body read as JSON, before any field is checked: one reader for every route.

Strict JSON (no NaN or Infinity), nesting bounded by MAX_NESTING (no instance field is a
container), integers past Python's int-to-str limit refused in the client's words, and the
shape of a single instance or an `{"instances": [...]}` batch. Each refusal is a `Rejection`:
a status and a message `endpoints.py` sends back as it is.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping

BATCH_FIELD = "instances"
MAX_NESTING = 32  # no instance field is a container; deeper JSON is refused before any check


class Rejection(Exception):
    """A request answered with a 4xx/503 before (or instead of) a prediction."""

    def __init__(self, status: int, detail: str, errors: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = dict(errors) if errors else None


def _nesting(value: Any) -> int:
    """How deep JSON containers nest in `value`, counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        deepest = max(deepest, depth)
        if depth <= MAX_NESTING:
            stack.extend((child, depth + 1) for child in children
                         if isinstance(child, (dict, list)))
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _integer(text: str) -> int:
    """A JSON integer. Past Python's int-to-str limit (4300 digits) none is read, in any field:
    the body is refused in words the client can act on (Python's own point at a server setting)."""
    try:
        return int(text)
    except ValueError as err:
        raise Rejection(400, f"the body holds an integer of {len(text.lstrip('-'))} digits; "
                             f"integers of at most {sys.get_int_max_str_digits()} digits are "
                             "read") from err


def parse_json(body: bytes) -> Any:
    """Strict JSON: Python's parser would otherwise accept NaN and Infinity as numbers."""
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_int=_integer)
    except (ValueError, RecursionError) as err:
        raise Rejection(400, f"the body is not valid JSON: {err}") from err
    if isinstance(value, (dict, list)) and _nesting(value) > MAX_NESTING:
        raise Rejection(400, f"the body nests JSON deeper than {MAX_NESTING} levels")
    return value


def parse_instance(value: Any) -> Mapping[str, Any]:
    """The body of POST /predict: one JSON object of production fields."""
    if not isinstance(value, dict):
        raise Rejection(422, "the body must be a JSON object of production fields, got "
                             f"{type(value).__name__}")
    return value


def parse_batch(value: Any, max_batch_size: int) -> list[Mapping[str, Any]]:
    """The instances of a `{"instances": [...]}` body, or a Rejection naming what is wrong."""
    if not isinstance(value, dict) or BATCH_FIELD not in value:
        raise Rejection(422, f'the body must be a JSON object {{"{BATCH_FIELD}": [...]}}',
                        {BATCH_FIELD: "is required"})
    unknown = {str(key): "is not a known field" for key in value if key != BATCH_FIELD}
    if unknown:
        raise Rejection(422, f"unknown fields in the body: {sorted(unknown)}", unknown)
    instances = value[BATCH_FIELD]
    if not isinstance(instances, list) or not instances:
        raise Rejection(422, f"{BATCH_FIELD} must be a non-empty list of JSON objects",
                        {BATCH_FIELD: "must be a non-empty list"})
    if len(instances) > max_batch_size:
        # 422, not 413: the document declares maxItems, so more instances break the schema.
        raise Rejection(422, f"at most {max_batch_size} instances per request, got "
                             f"{len(instances)}; split the batch",
                        {BATCH_FIELD: f"must hold at most {max_batch_size} instances"})
    not_objects = {
        f"{BATCH_FIELD}[{i}]": f"must be a JSON object, got {type(item).__name__}"
        for i, item in enumerate(instances)
        if not isinstance(item, dict)
    }
    if not_objects:
        raise Rejection(422, "every instance must be a JSON object of production fields",
                        not_objects)
    return instances
