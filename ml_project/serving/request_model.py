"""The Pydantic model of one production instance that the FastAPI docs show, derived from the
same rules the validator checks (`schemas.py`). Docs only: requests are validated by
`InstanceValidator`, whose verdicts this model describes as far as JSON Schema can.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ml_project.config import MISSING_TEXTS, Config
from ml_project.schemas import LabelRule, field_rules, integer_forms
from ml_project.wording import listed

NUMBER_NOTE = ('A number. A number as text ("42", " 4.2e1 ") is read as that number, the same '
               'range applies')
MISSING_NOTE = 'as is a text that means missing in a file ("NA", "", "null", ...)'


def build_request_model(config: Config) -> type[BaseModel]:
    """The Pydantic model of one production instance, for the API docs: the fields, types,
    ranges and categories the validator checks. A number may come as text ("42"), as the
    description of each numerical field says: JSON Schema cannot bound the number a text holds."""
    fields: dict[str, Any] = {}
    example: dict[str, Any] = {}
    missing_texts: Any = Literal[tuple(sorted(MISSING_TEXTS))]
    for rule in field_rules(config):
        if rule.kind == "numerical":
            # the range on the number itself: a union with null or texts would lose it
            annotation: Any = Annotated[float, Field(ge=rule.min, le=rule.max)]
            description = NUMBER_NOTE
            example[rule.name] = rule.min if rule.min is not None else 0.0
        else:
            categories = tuple(listed(rule.categories))
            # what a client may send for them instead (`FieldRule.as_text`): codes as integers,
            # flags as bools
            other_forms = (*integer_forms(rule.categories),
                           *(flag for flag in (False, True) if str(flag) in rule.categories))
            annotation = Literal[categories + other_forms]
            description = "One of the categories" + (
                "; a JSON bool or number counts as its text (true as \"True\", 4 as \"4\")"
                if other_forms else "")
            example[rule.name] = categories[0]
        if rule.nullable:
            annotation = annotation | None | missing_texts
            description += f"; null, or left out, is a missing value, {MISSING_NOTE}"
        fields[rule.name] = (annotation, Field(None if rule.nullable else ...,
                                               description=description))
    # Optional, but never null when given (a frame refuses a row without them).
    not_missing: dict[str, Any] = {"not": {"enum": sorted(MISSING_TEXTS)}}
    fields[config.columns.id] = (str | int, Field(
        None, description="Echoed in the log; not a text that means missing",
        json_schema_extra=not_missing))
    if config.columns.timestamp:
        fields[config.columns.timestamp] = (str, Field(
            None, description="Event time, year first (ISO 8601)",
            json_schema_extra={"format": "date-time", **not_missing}))
    label = LabelRule(config)
    labels: Any = float
    if label.classes is not None:  # the classes, their text, and what counts as their text
        texts = frozenset(label.classes)
        forms = [*label.classes.values(), *texts, *integer_forms(texts),
                 *(flag for flag in (False, True) if str(flag) in texts)]
        labels = Literal[tuple({(type(form), form): form for form in forms}.values())]
    fields[config.columns.target] = (labels | None | missing_texts, Field(
        None, description=f"A label, not used: {label.expected} when given; null, or left out, "
                          f"is no label, {MISSING_NOTE}"))
    extra: Literal["forbid", "ignore"] = (
        "forbid" if config.validation.unknown_fields == "reject" else "ignore"
    )
    return create_model(
        "PredictionRequest",
        __config__=ConfigDict(extra=extra, json_schema_extra={"examples": [example]}),
        **fields,
    )
