"""One rule, one verdict, one message: the same value gets the same verdict and the same words
from every path.

For each case, a valid record with one field changed goes (a) through `InstanceValidator`,
(b) into a one-row CSV read back by `read_table` and validated as a frame, (c) the same through
Parquet, and (d) as a JSON body through the endpoints core both web apps answer with, over a
model fitted here. Every case runs on two configs with different column names and tasks, both
built here, so nothing holds for one table only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from ml_project.batch import score_chunk
from ml_project.config import REASON_COLUMN, Config, load_config
from ml_project.ingest import read_table
from ml_project.predict import PredictionService
from ml_project.schemas import InstanceValidator, InvalidInstance
from ml_project.serving.endpoints import PredictionEndpoints
from ml_project.train import build_pipeline
from ml_project.validate import DataValidationError, validate_production_data


@dataclass(frozen=True)
class Scheme:
    """A table: which column plays which role in the cases, and a valid record."""

    name: str
    task: str
    id: str
    timestamp: str
    target: str
    classes: tuple[int | str, ...]
    number: str  # non-nullable, 0..500
    optional_number: str  # nullable, no bounds
    category: str  # non-nullable
    categories: tuple[str, ...]
    optional_category: str  # nullable

    def columns(self) -> dict[str, Any]:
        return {
            "id": self.id, "timestamp": self.timestamp, "target": self.target,
            "target_classes": list(self.classes),
            "positive_class": self.classes[-1] if self.task == "binary_classification" else None,
            "numerical": {self.number: {"min": 0, "max": 500},
                          self.optional_number: {"nullable": True}},
            "categorical": {self.category: {"categories": list(self.categories)},
                            self.optional_category: {"categories": ["a", "b"], "nullable": True}},
        }

    def record(self, row: int = 0) -> dict[str, Any]:
        return {self.id: f"R{row}", self.timestamp: "2024-03-01T10:00:00",
                self.number: 40 + row % 7, self.optional_number: 1.5 * (row % 5),
                self.category: self.categories[row % len(self.categories)],
                self.optional_category: "ab"[row % 2]}

    def role(self, role: str) -> str:
        return str(getattr(self, role))


SCHEMES = [
    Scheme("churn-like", "binary_classification", "customer_id", "event_time", "churned", (0, 1),
           "monthly_charges", "total_charges", "contract", ("month-to-month", "one-year"),
           "payment_method"),
    Scheme("other-names", "multiclass_classification", "plot", "measured_at", "species",
           ("setosa", "versicolor", "virginica"), "petal_mm", "stem_count", "soil",
           ("clay", "loam", "sand"), "shade"),
    Scheme("codes", "multiclass_classification", "car", "built_at", "origin",
           ("Europe", "Japan", "USA"), "horsepower", "weight_kg", "cylinders", ("3", "4", "8"),
           "trim"),
]


def _config(root: Path, scheme: Scheme, unknown_fields: str = "ignore") -> Config:
    content = {
        "project_name": scheme.name,
        "task": scheme.task,
        "data": {"historic": "historic.csv", "production": "production.csv",
                 "production_labels": "labels.csv"},
        "columns": scheme.columns(),
        "validation": {"unknown_fields": unknown_fields},
        "training": {"metric": "accuracy", "cv_folds": 2, "candidates": [
            {"name": "linear", "estimator": "sklearn.linear_model.LogisticRegression"}]},
        "tracking": {"experiment_name": scheme.name, "registered_model_name": scheme.name},
    }
    config_file = root / f"{scheme.name}.yaml"
    config_file.write_text(yaml.safe_dump(content, sort_keys=False))
    return load_config("prediction", "production", "local", config_file=config_file, root=root)


@pytest.fixture(scope="module", params=SCHEMES, ids=lambda scheme: scheme.name)
def scheme(request: pytest.FixtureRequest) -> Scheme:
    value: Scheme = request.param
    return value


@pytest.fixture(scope="module")
def configs(scheme: Scheme, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Config]:
    root = tmp_path_factory.mktemp(scheme.name)
    return {policy: _config(root, scheme, policy) for policy in ("ignore", "reject")}


@pytest.fixture(scope="module")
def services(scheme: Scheme, configs: dict[str, Config]) -> dict[str, PredictionService]:
    """A model fitted here on valid rows of the scheme, served under each policy."""
    pipeline = _fitted(scheme, configs["ignore"])
    metadata = {"features": list(configs["ignore"].columns.features), "model_version": "1"}
    return {policy: PredictionService(pipeline, metadata, config)
            for policy, config in configs.items()}


def _fitted(scheme: Scheme, config: Config) -> Any:
    rows = [scheme.record(row) | {scheme.target: scheme.classes[row % len(scheme.classes)]}
            for row in range(60)]
    raw = validate_production_data(pd.DataFrame(rows), config, with_target=True).valid
    features = list(config.columns.features)
    return build_pipeline(config, LogisticRegression(max_iter=200)).fit(raw[features],
                                                                        raw[scheme.target])


Verdict = dict[str, str]  # field -> reason; empty when valid


def by_record(record: dict[str, Any], config: Config) -> Verdict:
    try:
        InstanceValidator(config).validate(record)
    except InvalidInstance as err:
        return err.errors
    return {}


def _one_row_file(record: dict[str, Any], path: Path) -> Path:
    frame = pd.DataFrame([record])
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def _verdict(valid: pd.DataFrame, quarantined: pd.DataFrame) -> Verdict:
    """A one-row result as field -> reason: its quarantine reason split per field."""
    if quarantined.empty:
        assert len(valid) == 1
        return {}
    reasons = quarantined[REASON_COLUMN].iloc[0].split("; ")
    return dict(reason.split(": ", 1) for reason in reasons)


def by_frame(record: dict[str, Any], config: Config, path: Path) -> Verdict:
    """The verdict on a one-row file: a quarantine reason split per field, or the file refused."""
    try:
        result = validate_production_data(read_table(str(_one_row_file(record, path)), config),
                                          config, with_target=False)
    except DataValidationError as err:
        return {"file": str(err)}
    return _verdict(result.valid, result.quarantined)


def by_endpoint(record: dict[str, Any], service: PredictionService) -> Verdict:
    """What both web apps answer: the framework-free endpoints core, with a JSON body."""
    answer = PredictionEndpoints(service, None, None).predict(json.dumps(record).encode(), None)
    body = json.loads(answer.body)
    if answer.status == 200:
        assert body["model_version"] == "1"
        return {}
    assert answer.status == 422, body
    errors: dict[str, str] = body["errors"]
    assert body["detail"] == "invalid instance: " + "; ".join(
        f"{field}: {reason}" for field, reason in errors.items())
    return errors


# (case, role of the field changed, value, expected reason; None: valid)
CASES: list[tuple[str, str, Any, str | None]] = [
    ("int", "number", 42, None),
    ("float", "number", 42.5, None),
    ("number-as-text", "number", "42", None),
    ("number-as-text-padded", "number", " 42 ", None),
    ("number-as-text-exponent", "number", "4e1", None),
    ("bool-for-a-number", "number", True, "must be a number, got True"),
    ("unparseable-text", "number", "forty", "must be a number, got 'forty'"),
    ("null-not-nullable", "number", None, "must not be null"),
    ("null-nullable", "optional_number", None, None),
    ("below-min", "number", -1, "must be >= 0, got -1"),
    ("above-max-int", "number", 600, "must be <= 500, got 600"),
    ("above-max-float", "number", 600.0, "must be <= 500, got 600"),
    ("above-max-text", "number", "600", "must be <= 500, got 600"),
    ("above-max-fraction", "number", 500.25, "must be <= 500, got 500.25"),
    ("infinity-as-text", "number", "inf", "must be a finite number, got inf"),
    ("infinity-unbounded", "optional_number", "-Infinity", "must be a finite number, got -inf"),
    ("unknown-category", "category", "mars", "must be one of {categories}, got 'mars'"),
    # a category is text: a bool or number is compared, and named, as the text a file holds
    ("number-for-a-category", "category", 5, "must be one of {categories}, got '5'"),
    ("float-for-a-category", "category", 4.0, "must be one of {categories}, got '4.0'"),
    ("bool-for-a-category", "category", True, "must be one of {categories}, got 'True'"),
    ("null-category", "category", None, "must not be null"),
    ("null-nullable-category", "optional_category", None, None),
    # the texts a CSV reader reads as missing are missing on every path, and only those
    ("missing-text-nullable", "optional_number", "NA", None),
    ("missing-text-not-nullable", "number", "null", "must not be null"),
    ("empty-text-not-nullable", "number", "", "must not be null"),
    ("missing-text-padded-is-text", "number", " NA ", "must be a number, got ' NA '"),
    ("missing-text-category", "category", "None", "must not be null"),
    ("missing-text-nullable-category", "optional_category", "N/A", None),
    ("missing-text-id", "id", "NaN", "must not be null"),
    ("integer-id", "id", 7, None),
    ("null-id", "id", None, "must not be null"),
    ("timestamp-with-offset", "timestamp", "2024-03-01T10:00:00+02:00", None),
    ("timestamp-date-only", "timestamp", "2024-03-01", None),
    ("timestamp-year-first-slashes", "timestamp", "2024/03/01", None),
    ("timestamp-month-first", "timestamp", "03/01/2024",
     "must be a year-first timestamp (ISO 8601, e.g. 2024-05-31T14:00:00Z), got '03/01/2024'"),
    ("unparseable-timestamp", "timestamp", "yesterday",
     "must be a year-first timestamp (ISO 8601, e.g. 2024-05-31T14:00:00Z), got 'yesterday'"),
]


@pytest.mark.parametrize(("role", "value", "reason"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_every_path_gives_the_same_verdict_in_the_same_words(
    scheme: Scheme, configs: dict[str, Config], services: dict[str, PredictionService],
    tmp_path: Path, role: str, value: Any, reason: str | None
) -> None:
    field = scheme.role(role)
    record = scheme.record() | {field: value}
    expected = {} if reason is None else {
        field: reason.format(categories=sorted(scheme.categories))}
    config = configs["ignore"]

    assert by_record(record, config) == expected
    assert by_frame(record, config, tmp_path / "one.csv") == expected
    assert by_frame(record, config, tmp_path / "one.parquet") == expected
    assert by_endpoint(record, services["ignore"]) == expected


PAST_FLOAT_RANGE = 10**400 - 1  # a float holds integers of up to 309 digits
CUT_NINES = "'" + "9" * 76 + "..."  # how a message shows a text of 400 nines (`shown`)

# Integers past float range, as JSON and Python send them and as a CSV holds them (text);
# Parquet cannot hold them (int64). A number reads as infinite, whether it came as an integer
# or as its text; a category or a label is named as its text, cut; the id takes any integer.
PAST_FLOAT_RANGE_CASES: list[tuple[str, str, Any, str | None]] = [
    ("past-float-range", "number", PAST_FLOAT_RANGE, "must be a finite number, got inf"),
    ("just-past-float-range", "number", 2**1024, "must be a finite number, got inf"),
    ("just-within-float-range", "number", 10**308, "must be <= 500, got 1e+308"),
    ("negative-past-float-range", "optional_number", -PAST_FLOAT_RANGE,
     "must be a finite number, got -inf"),
    ("past-float-range-for-a-category", "category", PAST_FLOAT_RANGE,
     f"must be one of {{categories}}, got {CUT_NINES}"),
    ("past-float-range-for-the-id", "id", PAST_FLOAT_RANGE, None),
]


def _digits(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with its integers past int64 as their digits: the same CSV file, written by a
    frame pandas can build."""
    return {key: str(value) if type(value) is int and abs(value) >= 2**63 else value
            for key, value in record.items()}


@pytest.mark.parametrize(("role", "value", "reason"),
                         [case[1:] for case in PAST_FLOAT_RANGE_CASES],
                         ids=[case[0] for case in PAST_FLOAT_RANGE_CASES])
def test_an_integer_past_float_range_gets_the_verdict_of_its_text_in_a_file(
    scheme: Scheme, configs: dict[str, Config], services: dict[str, PredictionService],
    tmp_path: Path, role: str, value: Any, reason: str | None
) -> None:
    field = scheme.role(role)
    record = scheme.record() | {field: value}
    expected = {} if reason is None else {
        field: reason.format(categories=sorted(scheme.categories))}
    config = configs["ignore"]

    assert by_record(record, config) == expected
    assert by_frame(_digits(record), config, tmp_path / "one.csv") == expected
    assert by_endpoint(record, services["ignore"]) == expected


@pytest.mark.parametrize("nested", [False, True], ids=["alone", "in-a-list"])
def test_a_label_past_float_range_is_named_alike_on_every_path(
    scheme: Scheme, services: dict[str, PredictionService], tmp_path: Path, nested: bool
) -> None:
    """A file holds no list: nested, the label is checked by the record paths only."""
    value: Any = [PAST_FLOAT_RANGE] if nested else PAST_FLOAT_RANGE
    record = scheme.record() | {scheme.target: value}
    shown = "'[" + "9" * 75 + "..." if nested else CUT_NINES
    expected = {scheme.target: f"label {shown} is not one of {list(scheme.classes)}"}
    service = services["ignore"]

    assert by_record(record, service.config) == expected
    assert by_endpoint(record, service) == expected
    if not nested:
        assert by_labelled_file(_digits(record), service, tmp_path / "one.csv") == expected


@pytest.mark.parametrize("role", ["number", "category", "id", "timestamp"])
def test_an_integer_past_float_range_nested_in_a_field_is_named(
    scheme: Scheme, services: dict[str, PredictionService], role: str
) -> None:
    """JSON can nest one in a list or an object where a field wants a scalar."""
    field = scheme.role(role)
    for value in ([PAST_FLOAT_RANGE], {"a": [-PAST_FLOAT_RANGE]}):
        record = scheme.record() | {field: value}
        verdict = by_endpoint(record, services["ignore"])
        assert list(verdict) == [field]
        assert verdict == by_record(record, services["ignore"].config)


@pytest.mark.parametrize("value", [4, "4", np.int64(4)], ids=["json-integer", "text", "numpy"])
def test_a_whole_number_category_may_come_as_an_integer_on_every_path(
    value: Any, tmp_path: Path
) -> None:
    """Codes (cylinders 3, 4, 8; store numbers): a JSON client sends 4, a Parquet column holds
    integers, a CSV holds text: each is the category "4", and the model gets "4"."""
    codes = SCHEMES[-1]
    config = _config(tmp_path, codes)
    service = PredictionService(_fitted(codes, config), {
        "features": list(config.columns.features), "model_version": "1"}, config)
    record = codes.record() | {codes.category: value}

    assert by_record(record, config) == {}
    assert InstanceValidator(config).validate(record)[
        list(config.columns.features).index(codes.category)] == "4"
    if not isinstance(value, np.integer):  # JSON carries no numpy type
        assert by_frame(record, config, tmp_path / "one.csv") == {}
        assert by_frame(record, config, tmp_path / "one.parquet") == {}
        assert by_endpoint(record, service) == {}
    as_text = service.predict_instance(codes.record() | {codes.category: "4"})
    assert service.predict_instance(record) == as_text


def test_infinity_as_a_float_is_refused_by_records_and_frames_alike(
    scheme: Scheme, configs: dict[str, Config], tmp_path: Path
) -> None:
    """JSON cannot carry it (the API refuses NaN and Infinity as JSON); the stream can."""
    record = scheme.record() | {scheme.optional_number: -math.inf}
    expected = {scheme.optional_number: "must be a finite number, got -inf"}
    config = configs["ignore"]

    assert by_record(record, config) == expected
    assert by_frame(record, config, tmp_path / "one.csv") == expected
    assert by_frame(record, config, tmp_path / "one.parquet") == expected


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_unknown_field_is_ignored_everywhere_by_default(
    scheme: Scheme, configs: dict[str, Config], services: dict[str, PredictionService],
    tmp_path: Path, suffix: str
) -> None:
    record = scheme.record() | {"note": "called twice"}

    assert by_record(record, configs["ignore"]) == {}
    assert by_frame(record, configs["ignore"], tmp_path / f"one{suffix}") == {}
    assert by_endpoint(record, services["ignore"]) == {}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_unknown_field_is_refused_everywhere_when_rejecting(
    scheme: Scheme, configs: dict[str, Config], services: dict[str, PredictionService],
    tmp_path: Path, suffix: str
) -> None:
    record = scheme.record() | {"note": "called twice"}
    config = configs["reject"]

    assert by_record(record, config) == {"note": "is not a known field"}
    assert by_frame(record, config, tmp_path / f"one{suffix}") == {
        "file": "note: is not a known field (validation.unknown_fields: reject)"}
    assert by_endpoint(record, services["reject"]) == {"note": "is not a known field"}


@pytest.mark.parametrize("policy", ["ignore", "reject"])
def test_id_timestamp_and_target_are_known_fields_on_every_path(
    scheme: Scheme, configs: dict[str, Config], services: dict[str, PredictionService],
    tmp_path: Path, policy: str
) -> None:
    """A labelled row as the historic file holds it: id, timestamp and target included."""
    record = scheme.record() | {scheme.target: scheme.classes[-1]}
    config = configs[policy]

    assert {scheme.id, scheme.timestamp} <= set(record)
    assert by_record(record, config) == {}
    assert by_frame(record, config, tmp_path / "one.csv") == {}
    assert by_frame(record, config, tmp_path / "one.parquet") == {}
    assert by_endpoint(record, services[policy]) == {}


def by_labelled_file(record: dict[str, Any], service: PredictionService, path: Path) -> Verdict:
    """The verdict of the batch use case's chunk scorer on a one-row labelled file."""
    frame = read_table(str(_one_row_file(record, path)), service.config)
    scored = score_chunk(frame, service, service.config)
    return _verdict(scored.valid, scored.quarantined)


@pytest.mark.parametrize(("label", "reason"), [
    ("last", None), ("first-as-text", None), (None, None),
    ("unknown", "label 'unknown' is not one of {classes}"),
    (2.5, "label '2.5' is not one of {classes}"),
], ids=["a-class", "a-class-as-text", "no-label", "unknown-label", "fraction"])
def test_a_label_given_with_a_row_to_score_is_checked_alike_on_every_path(
    scheme: Scheme, services: dict[str, PredictionService], tmp_path: Path, label: Any,
    reason: str | None
) -> None:
    """Not used to predict, but a labelled row's label must be usable wherever it comes: a
    batch file's row is quarantined for it, a request refused, in the same words."""
    value = {"last": scheme.classes[-1], "first-as-text": str(scheme.classes[0])}.get(
        label, label) if isinstance(label, str) else label
    record = scheme.record() | {scheme.target: value}
    expected = {} if reason is None else {
        scheme.target: reason.format(classes=list(scheme.classes))}
    service = services["ignore"]

    assert by_record(record, service.config) == expected
    assert by_labelled_file(record, service, tmp_path / "one.csv") == expected
    assert by_labelled_file(record, service, tmp_path / "one.parquet") == expected
    assert by_endpoint(record, service) == expected


def test_a_record_may_leave_out_its_id_and_timestamp(
    scheme: Scheme, configs: dict[str, Config], services: dict[str, PredictionService]
) -> None:
    record = {key: value for key, value in scheme.record().items()
              if key not in (scheme.id, scheme.timestamp)}

    assert by_record(record, configs["reject"]) == {}
    assert by_endpoint(record, services["reject"]) == {}


@pytest.mark.parametrize(("label", "reason"), [
    ("last", None), ("unknown", "must be one of {classes}, got 'unknown'"),
    (None, "must not be null"), (True, "must be one of {classes}, got {true}"),
])
def test_the_target_of_modelling_data_is_checked_by_its_rule(
    scheme: Scheme, configs: dict[str, Config], label: Any, reason: str | None
) -> None:
    """Classes may be numbers or text labels; the message comes from the target's rule. Text
    classes compare a bool as its text, as a categorical feature does (a CSV's True/False
    target reads as bools): True is "True", named so."""
    value = scheme.classes[-1] if label == "last" else label
    frame = pd.DataFrame([scheme.record(), scheme.record(1)]).assign(
        **{scheme.target: pd.Series([scheme.classes[0], value], dtype=object)})

    result = validate_production_data(frame, configs["ignore"], with_target=True)

    classes = sorted(scheme.classes, key=lambda c: (isinstance(c, str), c))
    reasons = result.quarantined[REASON_COLUMN].tolist()
    true = "'True'" if all(isinstance(c, str) for c in scheme.classes) else "True"
    assert reasons == ([] if reason is None else [
        f"{scheme.target}: {reason.format(classes=classes, true=true)}"])
    assert len(result.valid) == 2 - len(reasons)


def test_a_valid_frame_keeps_the_contract_the_prediction_core_relies_on(
    scheme: Scheme, configs: dict[str, Config], services: dict[str, PredictionService],
    tmp_path: Path
) -> None:
    """Numbers float64 (text parsed), timestamps datetime64, categorical features Categoricals of
    exactly their categories; the frame's predictions equal the records' predictions."""
    records = [scheme.record(row) for row in range(12)]
    as_text = [record | {scheme.number: str(record[scheme.number])} for record in records]
    pd.DataFrame(as_text).to_parquet(tmp_path / "rows.parquet", index=False)
    config = configs["ignore"]
    service = services["ignore"]

    valid = validate_production_data(read_table(str(tmp_path / "rows.parquet"), config), config,
                                     with_target=False).valid

    assert valid[scheme.number].dtype == np.float64
    assert valid[scheme.timestamp].dtype == "datetime64[ns]"
    assert valid[scheme.category].dtype == pd.CategoricalDtype(sorted(scheme.categories))
    from_frame = service.predict_frame(valid)["prediction"].tolist()
    assert from_frame == [p.prediction for p in service.predict_records(as_text)]


def test_the_request_model_documents_numbers_as_text_and_optional_identifiers(
    scheme: Scheme, configs: dict[str, Config]
) -> None:
    """What the OpenAPI document shows: numbers with their range and a note that text numbers
    are read, identifiers optional but never null, the target known."""
    from ml_project.serving.request_model import build_request_model

    schema = build_request_model(configs["ignore"]).model_json_schema()
    properties = schema["properties"]

    number = properties[scheme.number]
    assert (number["type"], number["minimum"], number["maximum"]) == ("number", 0, 500)
    assert "number as text" in number["description"]
    assert properties[scheme.id]["anyOf"] == [{"type": "string"}, {"type": "integer"}]
    assert properties[scheme.timestamp]["type"] == "string"
    assert properties[scheme.timestamp]["format"] == "date-time"
    assert scheme.target in properties
    assert {scheme.id, scheme.timestamp, scheme.target}.isdisjoint(schema["required"])
