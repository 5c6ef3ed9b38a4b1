"""Draft the `columns:` and `task:` sections of project_config.yaml from a data file.

Typing every column, range and category by hand is the slowest step of adapting the template.
This reads a CSV or Parquet file as `ingest.py` will read it and writes a draft in which every
inferred rule is marked `# REVIEW`: ranges widened by a margin, categories as seen, the id,
timestamp and task guessed. The draft validates the file it came from; whether it describes the
data you will receive is for you to decide.

    python executables/draft_config.py DATA_FILE --target COLUMN [--id COL] [--timestamp COL]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ml_project.csv_format import CSV_MISSING, check_csv
from ml_project.schemas import parse_numbers

MARGIN = 0.1  # ranges are widened by this share of the span seen
MAX_CATEGORIES = 50  # more distinct texts than this: an identifier or free text, not a category
MAX_CLASSES = 20  # an integer target with more distinct values is a quantity: regression
FEW_VALUES = 10  # an integer column with at most this many values may hold codes
MIN_NUMBERS = 0.95  # this share of a column's values are numbers: a numeric column with typos
CODE_NAME = re.compile(r"(code|type|class|category|group|kind|level|segment|status)s?$", re.I)
BOOLEAN_TEXTS = {"True", "False", "true", "false", "TRUE", "FALSE"}
FLOAT_MAX = sys.float_info.max
SMALLEST_STEP = 1e-300  # a margin below it is widened by, not rounded to, a power of ten
LONGEST_SIMPLE_KEY = 1000  # YAML reads a key on the line of its value up to 1024 characters
METRICS = {"binary_classification": "roc_auc", "multiclass_classification": "f1_macro",
           "regression": "neg_root_mean_squared_error"}


@dataclass
class Guess:
    """One feature's drafted rule (None: left out) and the reason to review it."""

    kind: str  # numerical | categorical | excluded | dates
    rule: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def read_as_received(path: Path) -> pd.DataFrame:
    """The file as ingest sees it before typing: CSV cells as text (NaN for missing), so the
    categories drafted are the very strings validation will compare; Parquet as stored. A CSV
    out of the format every path reads (`csv_format`) is refused here in the same words."""
    if path.suffix == ".csv":
        check_csv(path)
        frame: pd.DataFrame = pd.read_csv(path, dtype=str, **CSV_MISSING)
        return frame
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"unsupported data file {path}: expected .csv or .parquet")


def _numbers(values: pd.Series) -> tuple[np.ndarray, list[Any]] | None:
    """The column as floats (as validation parses it) and the present values that are not
    numbers, when nearly all are numbers (a few typos do not make a numeric column text)."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
        return None
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=float, na_value=np.nan), []
    present = values.notna().to_numpy()
    parsed = parse_numbers(values.to_numpy(dtype=object))
    not_numbers = present & np.isnan(parsed)
    if not_numbers.sum() > (1 - MIN_NUMBERS) * present.sum():
        return None
    return parsed, list(dict.fromkeys(values[not_numbers]))


def _is_dates(values: pd.Series) -> bool:
    """Every present value an ISO 8601 time, parsed as validation parses timestamps."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    present = values.dropna()
    if present.empty or not all(isinstance(value, str) for value in present):
        return False
    if _numbers(values) is not None:  # years and other plain numbers are numbers
        return False
    parsed = pd.to_datetime(present, errors="coerce", format="ISO8601", utc=True)
    return bool(parsed.notna().all())


def padded_range(low: float, high: float, *, integral: bool = False) -> tuple[float, float]:
    """[low, high] widened by MARGIN of the span and rounded outward to a readable step (whole
    numbers for integer columns); never below 0 when nothing seen was negative (counts, ages).
    Any finite floats: the sums never overflow (bounds stay within the largest float) and a
    span too small to step through (subnormals) is widened without rounding."""
    half_span = high / 2 - low / 2  # (high - low) / 2, which cannot overflow
    margin = 2 * MARGIN * half_span or MARGIN * abs(high) or MARGIN
    lower, upper = max(low - margin, -FLOAT_MAX), min(high + margin, FLOAT_MAX)
    step = 10.0 ** math.floor(math.log10(margin)) if margin >= SMALLEST_STEP else 0.0
    step = max(step, 1.0) if integral else step
    if step > 0:
        digits = max(0, -math.floor(math.log10(step)))
        # The tolerance keeps float noise (0.8 + 0.06 = 0.8600000000000001) from adding a step.
        lower = round(math.floor(lower / step + 1e-9) * step, digits)
        upper = round(math.ceil(upper / step - 1e-9) * step, digits)
    lower = min(max(lower, -FLOAT_MAX), low)  # rounding never narrows what was seen
    upper = max(min(upper, FLOAT_MAX), high)
    return (max(lower, 0.0) if low >= 0 else lower), upper


def _number(value: float) -> int | float:
    """A whole number as an int (`10`, not `10.0`) while it reads as one; floats otherwise."""
    return int(value) if float(value).is_integer() and abs(value) < 1e16 else float(value)


def _missing_note(missing: int, rows: int) -> str:
    return f"; {missing:,} of {rows:,} missing" if missing else "; never missing"


def guess_feature(name: str, values: pd.Series, *, from_csv: bool) -> Guess:
    """The rule for one feature column, or why it is left out."""
    present = values.dropna()
    missing, rows = len(values) - len(present), len(values)
    nullable = {"nullable": True} if missing else {}
    if present.empty:
        return Guess("excluded", note="every value is missing")
    distinct = present.astype(str).unique()
    if len(distinct) == 1:
        return Guess("excluded", note=f"constant ({distinct[0]!r}): carries no information")
    if pd.api.types.is_bool_dtype(values) or set(map(type, present)) == {bool} or (
        from_csv and set(distinct) <= BOOLEAN_TEXTS
    ):  # the readers give a categorical feature's values as text, a Parquet bool too
        return Guess("categorical", {"categories": sorted(distinct), **nullable},
                     "true/false flag, read as text" + _missing_note(missing, rows))
    numbers = _numbers(values)
    if numbers is not None:
        parsed, not_numbers = numbers
        seen = parsed[np.isfinite(parsed)]
        infinite = int(np.isinf(parsed).sum())
        if not len(seen):
            return Guess("excluded", note=f"no finite value ({infinite:,} infinite): validation "
                                          "would refuse every row")
        integral = bool(np.all(seen == np.round(seen)))
        n_values = len(np.unique(seen))
        if (from_csv and integral and n_values <= FEW_VALUES and CODE_NAME.search(name)
                and not not_numbers):
            return Guess("categorical", {"categories": sorted(distinct, key=float), **nullable},
                         "integer-looking codes (by the name), read as text"
                         + _missing_note(missing, rows))
        low, high = padded_range(float(seen.min()), float(seen.max()), integral=integral)
        note = f"seen {seen.min():.6g} .. {seen.max():.6g}"
        p01, p99 = np.percentile(seen, [1, 99])
        with np.errstate(over="ignore"):  # spans past the largest float are infinite: fine
            if seen.max() > p99 + 3 * (p99 - p01) or seen.min() < p01 - 3 * (p99 - p01):
                note += f", 98% within {p01:.6g} .. {p99:.6g}: outliers?"
        if infinite:
            note += f"; {infinite:,} infinite: their rows will be quarantined"
        if integral and n_values <= FEW_VALUES:
            note += f"; only {n_values} integer values: codes? then make it categorical"
        if not_numbers:
            note += (f"; not numbers: {not_numbers[:3]!r}"[:-1] + (", ...]" if len(not_numbers) > 3
                     else "]") + ": their rows will be quarantined")
        return Guess("numerical", {"min": _number(low), "max": _number(high), **nullable},
                     note + _missing_note(missing, rows))
    if _is_dates(values):
        return Guess("dates", note="dates: derive features from them in a FeatureStep")
    if len(distinct) > MAX_CATEGORIES or len(distinct) > 0.5 * len(present):
        return Guess("excluded", note=f"{len(distinct):,} distinct texts in {len(present):,} "
                                      "rows: an identifier or free text?")
    return Guess("categorical", {"categories": sorted(distinct), **nullable},
                 f"{len(distinct)} values seen, others will be rejected"
                 + _missing_note(missing, rows))


def guess_task(target: pd.Series) -> tuple[str, list[int | str], str]:
    """Task, target classes and the reason, from the target as the CSV/Parquet reader types it."""
    present = target.dropna()
    if present.nunique() < 2:
        raise ValueError(f"target {target.name!r} has fewer than 2 distinct values")
    if pd.api.types.is_bool_dtype(present):
        return "binary_classification", ["False", "True"], "true/false target, as text"
    if pd.api.types.is_numeric_dtype(present):
        values = np.unique(present.to_numpy(dtype=float))
        integral = bool(np.all(values == np.round(values)))
        if integral and len(values) == 2:
            return "binary_classification", [int(v) for v in values], "2 values seen"
        if integral and len(values) <= MAX_CLASSES:
            return ("multiclass_classification", [int(v) for v in values],
                    f"{len(values)} integer values seen; regression if they are quantities")
        return "regression", [], f"numbers, {len(values):,} distinct values"
    classes = sorted(present.astype(str).unique())
    task = "binary_classification" if len(classes) == 2 else "multiclass_classification"
    return task, list(classes), f"{len(classes)} labels seen"


def _guess_id(frame: pd.DataFrame, skip: set[str]) -> str | None:
    """A column unique in every row and never missing; one named like an id first."""
    candidates = [name for name in frame.columns if name not in skip
                  and frame[name].notna().all() and frame[name].is_unique
                  and not pd.api.types.is_float_dtype(frame[name])]
    named = [name for name in candidates if re.search(r"(^|_)id$|Id$|ID$", str(name))]
    return str((named or candidates)[0]) if named or candidates else None


def _guess_timestamp(frame: pd.DataFrame, skip: set[str]) -> str | None:
    """The first column of ISO 8601 times with none missing."""
    for name in frame.columns:
        if name not in skip and frame[name].notna().all() and _is_dates(frame[name]):
            return str(name)
    return None


class _DraftDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, with every text holding a line break or another unprintable
    character double-quoted (escaped), so that each value the draft writes is one line."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = None if text.isprintable() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_DraftDumper.add_representer(str, _represent_text)


def _flow(value: Any) -> str:
    """A value of the data (a name, a category, a label) as YAML on one line, by the library's
    safe dumper: quoted wherever YAML would read it otherwise (`yes`, `1`, `a: b`, `<<`)."""
    text = yaml.dump(value, Dumper=_DraftDumper, default_flow_style=True, width=math.inf,
                     allow_unicode=True, sort_keys=False)
    line = str(text).strip().removesuffix("...").strip()
    if "\n" in line:  # cannot happen with the dumper above; a draft must never be injected
        raise ValueError(f"cannot write {value!r} on one line of YAML")
    return line


def _comment(text: str) -> str:
    """`text` fit for a YAML comment: every unprintable character escaped, line breaks above
    all (a name holding one must not end the comment and start a key of its own)."""
    return "".join(character if character.isprintable()
                   else character.encode("unicode_escape").decode("ascii") for character in text)


def _entry(indent: str, key: str, value: str) -> str:
    """`key: value` in a block mapping; a key past YAML's 1024 characters for a key on one line
    is written as an explicit key (`? key` then `: value`)."""
    if len(key) < LONGEST_SIMPLE_KEY:
        return f"{indent}{key}: {value}"
    return f"{indent}? {key}\n{indent}: {value}"


def _line(content: str, comment: str = "") -> str:
    """A line of YAML with its comment, if any."""
    return f"{content}  # {_comment(comment)}" if comment else content


def draft_config(path: Path, target: str, *, id_column: str | None = None,
                 timestamp: str | None = None) -> str:
    """The draft YAML text for `path`, every guess marked `# REVIEW`."""
    frame = read_as_received(path)
    for name in (target, id_column, timestamp):
        if name is not None and name not in frame.columns:
            raise ValueError(f"column {name!r} not in {path}; columns: {list(frame.columns)}")
    given = {"--target": target, "--id": id_column, "--timestamp": timestamp}
    for name in {value for value in given.values() if value is not None}:
        options = [option for option, value in given.items() if value == name]
        if len(options) > 1:
            raise ValueError(f"{' and '.join(options)} both name {name!r}: the id identifies a "
                             "row, the timestamp orders the rows and the target is predicted, so "
                             "each is a column of its own (a table without an id needs one added)")
    from_csv = path.suffix == ".csv"
    # The target keeps the reader's own typing (ingest gives it no dtype): numbers stay numbers.
    typed_target = (pd.read_csv(path, usecols=[target], **CSV_MISSING)[target] if from_csv
                    else frame[target])
    task, classes, task_reason = guess_task(typed_target)
    id_note = "given" if id_column else "REVIEW guessed: unique in every row, never missing"
    id_column = id_column or _guess_id(frame, {target, timestamp or ""})
    time_note = "given" if timestamp else "REVIEW guessed: ISO 8601 times, never missing"
    timestamp = timestamp or _guess_timestamp(frame, {target, id_column or ""})
    lines = ["# " + _comment(f"Drafted by executables.draft_config from {path.name} "
                             f"({len(frame):,} rows)."),
             "# Every line marked REVIEW is a guess from this one file: check it before use.",
             "", "columns:"]
    lines.append(_line(f"  id: {_flow(id_column)}", id_note if id_column
                       else "REVIEW no unique column found: add an identifier"))
    times_as_id = not timestamp and _guess_timestamp(frame, {target}) == id_column
    lines.append(_line(f"  timestamp: {_flow(timestamp)}", (
        time_note if timestamp
        else f"REVIEW {_flow(id_column)}, a column of times, is the id: add an id column to your "
             f"file to use {_flow(id_column)} as the timestamp" if times_as_id
        else "REVIEW no column of times found")))
    missing_target = int(typed_target.isna().sum())
    lines.append(_line(f"  target: {_flow(target)}", (
        f"REVIEW {missing_target} rows without a target will be quarantined"
        if missing_target else "")))
    lines.append(_line(f"  target_classes: {_flow(classes)}", f"REVIEW {task_reason}"))
    guesses = {str(name): guess_feature(str(name), frame[name], from_csv=from_csv)
               for name in frame.columns if name not in {target, id_column, timestamp}}
    for kind in ("numerical", "categorical"):
        chosen = {name: guess for name, guess in guesses.items() if guess.kind == kind}
        lines.append(f"  {kind}:" + ("" if chosen else " {}"))
        lines += [_line(_entry("    ", _flow(name), _flow(guess.rule)), f"REVIEW {guess.note}")
                  for name, guess in chosen.items()]
    left_out = {name: guess for name, guess in guesses.items()
                if guess.kind in ("excluded", "dates")}
    if left_out:
        lines.append("  # REVIEW left out (listed columns only are read; these are dropped):")
        lines += ["  #   " + _comment(f"{_flow(name)}: {guess.note}")
                  for name, guess in left_out.items()]
    split = "stratified" if task != "regression" else "random"
    lines += ["", f"task: {task}  # REVIEW from the target: {task_reason}", "", "training:",
              _line(f"  split: {split}", "REVIEW" + (
                  f" or time, to hold out the latest rows by {_flow(timestamp)}" if timestamp
                  else "")),
              f"  metric: {METRICS[task]}  # REVIEW one of the task's metrics (see config.py)",
              *_candidates(task), "", "engineering:",
              "  steps: []  # the shipped steps read the example's columns: list yours here", ""]
    return "\n".join(lines)


# Candidates that suit each kind of task, as a start: the shipped ones are classifiers.
CANDIDATES = {
    "classification": [("logistic_regression", "sklearn.linear_model.LogisticRegression",
                        "{max_iter: 1000}", "{C: [0.1, 1.0, 10.0]}"),
                       ("hist_gradient_boosting",
                        "sklearn.ensemble.HistGradientBoostingClassifier", "{}",
                        "{learning_rate: [0.05, 0.1]}")],
    "regression": [("ridge", "sklearn.linear_model.Ridge", "{}", "{alpha: [0.1, 1.0, 10.0]}"),
                   ("hist_gradient_boosting", "sklearn.ensemble.HistGradientBoostingRegressor",
                    "{}", "{learning_rate: [0.05, 0.1]}")],
}


def _candidates(task: str) -> list[str]:
    kind = "regression" if task == "regression" else "classification"
    lines = ["  candidates:  # REVIEW a start that suits the task; any estimator by dotted path"]
    return lines + [f"  - {{name: {name}, estimator: {estimator}, params: {params}, "
                    f"search: {search}}}" for name, estimator, params, search in CANDIDATES[kind]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("data_file", type=Path, help="CSV or Parquet file of your historic data")
    parser.add_argument("--target", required=True, help="the column to predict")
    parser.add_argument("--id", dest="id_column", default=None, help="the identifier column")
    parser.add_argument("--timestamp", default=None, help="the event time column")
    parser.add_argument("--output", type=Path, default=None, help="write here (default: stdout)")
    args = parser.parse_args(argv)
    if not args.data_file.is_file():
        parser.exit(2, f"error: data file not found: {args.data_file}\n")
    try:
        text = draft_config(args.data_file, args.target, id_column=args.id_column,
                            timestamp=args.timestamp)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"Draft written to {args.output}: review every REVIEW line, then merge it into "
              "project_config.yaml")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
