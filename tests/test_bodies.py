"""A request's body read as JSON, before any field is checked: strict JSON, bounded nesting,
integers past the digit limit refused in the client's words, and the shape of one instance or
of a batch."""

from __future__ import annotations

from typing import Any

import pytest

from ml_project.serving.bodies import (
    MAX_NESTING,
    Rejection,
    parse_batch,
    parse_instance,
    parse_json,
)
from tests.serving import INSTANCE


@pytest.mark.parametrize(("body", "message"), [
    (b"{'age': 1}", "the body is not valid JSON"),
    (b'{"age": NaN}', "NaN is not a JSON value"),
    (b'{"age": Infinity}', "Infinity is not a JSON value"),
    (b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1), "nests JSON deeper than 32"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # Python's parser gave up: still 400
])
def test_a_body_that_is_not_strict_json_is_a_400(body: bytes, message: str) -> None:
    with pytest.raises(Rejection, match=message) as rejected:
        parse_json(body)
    assert rejected.value.status == 400


@pytest.mark.parametrize("where", ['{"age": @}', '{"instances": [{"customer_id": @}]}',
                                   '{"churned": [[@]]}', "@", '{"age": -@}'])
def test_an_integer_past_pythons_digit_limit_is_a_400_in_the_clients_words(where: str) -> None:
    """Python's parser reads integers of up to 4300 digits (sys.get_int_max_str_digits) and
    would say to raise a setting of the server; the client is told what to change."""
    body = where.replace("@", "9" * 4301).encode()
    with pytest.raises(Rejection) as rejected:
        parse_json(body)
    assert rejected.value.status == 400
    assert rejected.value.detail == ("the body holds an integer of 4301 digits; integers of at "
                                     "most 4300 digits are read")
    assert parse_json(where.replace("@", "9" * 4300).encode())  # read: a field's rule judges it


@pytest.mark.parametrize(("value", "errors"), [
    ([INSTANCE], {"instances": "is required"}),
    ({"rows": [INSTANCE]}, {"instances": "is required"}),
    ({"instances": [], }, {"instances": "must be a non-empty list"}),
    ({"instances": [INSTANCE], "model": "x"}, {"model": "is not a known field"}),
    ({"instances": [INSTANCE] * 4}, {"instances": "must hold at most 3 instances"}),
    ({"instances": [INSTANCE, 7]}, {"instances[1]": "must be a JSON object, got int"}),
])
def test_a_batch_that_is_not_a_list_of_objects_is_a_422_naming_what(
    value: Any, errors: dict[str, str]
) -> None:
    with pytest.raises(Rejection) as rejected:
        parse_batch(value, max_batch_size=3)
    assert rejected.value.status == 422 and rejected.value.errors == errors


def test_one_instance_is_a_json_object() -> None:
    assert parse_instance(INSTANCE) == INSTANCE
    with pytest.raises(Rejection, match="must be a JSON object of production fields, got list"):
        parse_instance([INSTANCE])
