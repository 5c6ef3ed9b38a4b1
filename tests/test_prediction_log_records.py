"""One record of the prediction log: whatever a client sent becomes a row every store and spill
file can hold, keyed by request and instance, with the model's identity."""

from __future__ import annotations

import json
import math
import time
import uuid
from types import SimpleNamespace
from typing import Any

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from ml_project.prediction_log import journal
from ml_project.prediction_log.records import (
    MAX_DEPTH,
    MAX_INT_BITS,
    LogRecord,
    _clean,
    _json_text,
    log_record,
    new_request_id,
)


def _row(**fields: Any) -> dict[str, Any]:
    record = LogRecord(**{"request_id": "r1", "source": "api", "input": {},
                          "model_version": "3", **fields})
    return record.to_row()


def test_a_row_has_a_unique_key_per_instance_of_a_request() -> None:
    rows = [_row(instance_index=i) for i in range(3)]
    assert [row["record_key"] for row in rows] == ["r1:0", "r1:1", "r1:2"]
    assert len({new_request_id() for _ in range(1000)}) == 1000


def test_request_ids_are_uuid7_and_later_ones_sort_later() -> None:
    """Time-ordered ids keep the log's indexes growing at their end (see `new_request_id`)."""
    before = time.time_ns() // 1_000_000
    ids = []
    for _ in range(5):
        ids.append(new_request_id())
        time.sleep(0.002)
    after = time.time_ns() // 1_000_000
    for made in ids:
        parsed = uuid.UUID(made)
        assert made == parsed.hex and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= int(made[:12], 16) <= after
    assert ids == sorted(ids)


@pytest.mark.parametrize(("value", "stored"), [
    ("\ud800", "\\ud800"),  # a lone surrogate, which no UTF-8 encoder takes
    ("a\x00b", "a\\x00b"),  # NUL, which PostgreSQL's text refuses
    ("plain text é", "plain text é"),
])
def test_text_any_store_can_hold_is_kept_and_the_rest_escaped(value: str, stored: str) -> None:
    row = _row(instance_id=value, error=value, input={value: value})
    assert row["instance_id"] == stored and row["error"] == stored
    assert json.loads(row["input"]) == {stored: stored}
    json.dumps(row).encode("utf-8")  # every field encodes


def test_nan_is_stored_as_null_and_numpy_scalars_as_numbers() -> None:
    row = _row(input={"age": math.nan, "count": np.int64(4), "share": np.float32(0.5)},
               probabilities={"0": 0.25, "1": 0.75})
    assert json.loads(row["input"]) == {"age": None, "count": 4, "share": 0.5}
    assert json.loads(row["probabilities"]) == {"0": 0.25, "1": 0.75}


_SCALAR = st.one_of(
    st.none(), st.booleans(), st.floats(), st.text(), st.text(st.characters(codec="ascii")),
    st.integers(), st.sampled_from([2 ** MAX_INT_BITS - 1, 2 ** MAX_INT_BITS, -2 ** 13_500,
                                    "\x00", "a\\u0000", "\ud800", "é", "\x7f"]),
    st.sampled_from([np.int64(4), np.float32(0.5), np.float64(0.25), np.bool_(True)]),
)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(), st.integers()), inner,
                                            max_size=4)),
    max_leaves=12)


@hypothesis.settings(max_examples=2000, deadline=None)
@hypothesis.given(st.one_of(_VALUE, st.dictionaries(st.text(), _SCALAR, max_size=12)))
def test_the_short_way_to_a_json_text_writes_what_cleaning_first_writes(value: Any) -> None:
    """`_json_text` writes a flat value of plain types as it is: the text must be the very one
    cleaning it first gives, whatever the value (NUL, surrogates, NaN, huge integers, ...)."""
    cleaned = None if value is None else journal.encode_line(_clean(value))[:-1].decode("ascii")
    assert _json_text(value) == cleaned  # None: no value (a column left NULL)


def test_nesting_deeper_than_the_limit_is_stored_as_a_placeholder() -> None:
    value: list[object] = []
    for _ in range(5000):
        value = [value]
    stored = json.loads(_row(input={"age": value})["input"])["age"]
    for _ in range(MAX_DEPTH - 1):
        stored = stored[0]
    assert stored == f"<nested deeper than {MAX_DEPTH} levels>"


def test_log_record_takes_the_id_and_the_models_identity_from_the_service() -> None:
    service: Any = SimpleNamespace(
        config=SimpleNamespace(columns=SimpleNamespace(id="customer_id")),
        model_version="7", metadata={"model_name": "churn", "sha256": "f" * 64})
    record = log_record(service, {"customer_id": 1234, "age": 3}, request_id="r9",
                        source="stream", latency_ms=1.5, instance_index=2)
    row = record.to_row()
    assert (row["instance_id"], row["model_version"], row["model_name"], row["model_sha256"]) \
        == ("1234", "7", "churn", "f" * 64)
    assert (row["record_key"], row["source"], row["latency_ms"]) == ("r9:2", "stream", 1.5)
    assert log_record(None, {}, request_id="r", source="api", latency_ms=0).model_version is None
