"""Draft the sections of project_config.yaml that a data file can tell: data, columns, task.

Typing every column, range and category by hand is the slowest step of adapting the template.
This reads a CSV or Parquet file as `ingest.py` will read it and writes a draft in which every
inferred rule is marked `# REVIEW` (`draft_columns.py` infers them). What the file cannot tell,
it asks (the positive class of a binary target, when run at a terminal) or picks by a stated
rule and flags first. The draft validates the file it came from; whether it describes the data
you will receive is for you to decide.

    python executables/draft_config.py DATA_FILE --target COLUMN [--id COL] [--timestamp COL]
        [--positive-class VALUE] [--production FILE] [--production-labels FILE]
        [--output FILE | --update-config project_config.yaml] [--no-input]

`--update-config` rewrites only the drafted sections of that file in place (data, columns,
task, engineering, and training's split, metric and candidates), every other line and comment
kept, once the result loads with the project's Config and validates the data file.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from ml_project.config import PROJECT_ROOT
from ml_project.config_sections import ModelCardConfig
from ml_project.csv_format import CSV_MISSING

if __package__:  # imported as executables.draft_config (the tests)
    from executables import draft_columns, draft_update
else:  # run as `python executables/draft_config.py`: executables/ is first on the path
    import draft_columns  # type: ignore[no-redef]
    import draft_update  # type: ignore[no-redef]

LONGEST_SIMPLE_KEY = 1000  # YAML reads a key on the line of its value up to 1024 characters
METRICS = {"binary_classification": "roc_auc", "multiclass_classification": "f1_macro",
           "regression": "neg_root_mean_squared_error"}
# Pairs whose second label is the positive one by convention (scikit-learn's pos_label=1),
# compared in lower case: in 1/2 codes, or ok/fraud, no label says it.
CONVENTIONAL = {("0", "1"), ("-1", "1"), ("false", "true"), ("no", "yes"), ("n", "y"),
                ("f", "t"), ("negative", "positive"), ("neg", "pos")}
FEATURES = ("numerical", "categorical")
DEFAULT_NAMES = {"production": "production_data", "production_labels": "production_labels"}
Ask = Callable[[str], str]  # shows a question, returns the answer (EOFError: none)


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


def _counts_text(counts: dict[int | str, int]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{_flow(label)}: {count:,} rows ({count / total:.1%})"
                     for label, count in counts.items())


def choose_positive(counts: dict[int | str, int], given: str | None = None,
                    ask: Ask | None = None, kept: str | None = None) -> tuple[int | str, str]:
    """The positive class of a binary target and why: the one given (as the CLI gives it, as
    text), the one answered, or by default the config's own (`kept`, when it is a class), the
    conventional positive label of a pair (1 against 0, True, yes) or else the rarer class,
    which is what F1, precision and recall are usually asked about."""
    by_text = {str(label): label for label in counts}
    first, second = counts
    conventional = {(str(first).lower(), str(second).lower()): second,
                    (str(second).lower(), str(first).lower()): first}
    pair = next((pair for pair in conventional if pair in CONVENTIONAL), None)
    if pair:
        default, reason = conventional[pair], f"by convention ({pair[1]} against {pair[0]})"
    else:
        low, high = sorted(counts, key=lambda label: (counts[label], -list(counts).index(label)))
        default, reason = low, ("the rarer class" if counts[low] < counts[high]
                                else "as common as the other: the later in order")
    if kept in by_text and by_text[kept] != default:
        default, reason = by_text[kept], "as the config had it"
    if given is not None:
        if given not in by_text:
            raise ValueError(f"--positive-class {given!r} is not a class of the target: "
                             f"{_counts_text(counts)}")
        return by_text[given], "given"
    question = (f"The target's classes: {_counts_text(counts)}.\nF1, precision, recall and "
                "ROC AUC score the positive class; monitoring watches its probability.\n")
    while ask is not None:
        try:
            typed = ask(f"{question}Positive class [{_flow(default)}]: ").rstrip("\r\n")
        except EOFError:
            break
        answer = typed if typed in by_text else typed.strip()  # a label may hold spaces
        if not answer:
            break
        if answer in by_text:
            return by_text[answer], "answered"
        question = f"{_flow(answer)} is not a class. "
    return default, reason


def _positive_lines(counts: dict[int | str, int], positive: int | str, why: str) -> list[str]:
    other = next(label for label in counts if label != positive)
    total = sum(counts.values())
    return ["  # " + _comment(line) for line in (
        f"REVIEW FIRST, the positive class: {_flow(positive)} ({counts[positive]:,} of "
        f"{total:,} rows, {counts[positive] / total:.1%}), {why}; {_flow(other)}: "
        f"{counts[other]:,} rows.",
        "It is columns.positive_class: F1, precision, recall and ROC AUC score it, and",
        "monitoring watches its probability. With the wrong one, the scores say how well the",
        "model finds the other class (a rare class taken for the common one looks easy).",
        f"To change it, set positive_class: {_flow(other)} or draft again with --positive-class.")]


def _as_given(path: Path, root: Path) -> str:
    """A path as the config writes it: relative to the project root when inside it."""
    absolute = path.resolve()
    return absolute.relative_to(root.resolve()).as_posix() if absolute.is_relative_to(
        root.resolve()) else str(absolute)


def _data_lines(path: Path, root: Path, production: dict[str, Path | str | None],
                needs: dict[str, list[str]]) -> list[str]:
    """The `data:` section: the file drafted from; the production files given, else those the
    config named if they are there with the columns they need (a template's example files are
    not), else the historic file's siblings in its format; each said to be there or not."""
    lines = ["data:", "  # CSV or Parquet file, or any SQLAlchemy URL (then set historic_table "
             "or historic_query).", _line(f"  historic: {_flow(_as_given(path, root))}",
                                          "the file drafted from"),
             "  historic_table: null", "  historic_query: null"]
    uses = {"production": "what the production use cases score (id, [timestamp], features)",
            "production_labels": "labels that arrive later, for monitoring (id, target)"}
    for key, use in uses.items():
        value, how = production.get(key), "REVIEW"
        if isinstance(value, Path):
            where, how = value, "given"
        elif value is not None and draft_columns.lacking(root / value, needs[key]) == []:
            where, how = root / value, "kept"
        else:
            where = path.parent / f"{DEFAULT_NAMES[key]}{path.suffix}"
        lacking = draft_columns.lacking(where, needs[key])
        state = ("not there yet" if lacking is None else "there, with the columns it needs"
                 if not lacking else f"the file there lacks {_flow(lacking[:3])[:-1]}"
                 f"{', ...' if len(lacking) > 3 else ''}]: not this table's?")
        lines.append(_line(f"  {key}: {_flow(_as_given(where, root))}",
                           f"{how}: {state}; {use}"))
    return lines


def draft_config(path: Path, target: str, *, id_column: str | None = None,
                 timestamp: str | None = None, positive_class: str | None = None,
                 task: str | None = None, production: dict[str, Path | str | None] | None = None,
                 root: Path = PROJECT_ROOT, ask: Ask | None = None,
                 previous: dict[str, Any] | None = None) -> str:
    """The draft YAML text for `path`, every guess marked `# REVIEW`.

    Args:
        production: data.production and data.production_labels as given (Paths) or as the
            config names them (text, kept if the file exists).
        root: the project root, which relative paths in the config are resolved against.
        ask: asks the positive class of a binary target (None: the default, flagged first).
        previous: the config's `columns`, whose positive class of the same target is kept.
    """
    frame = draft_columns.read_as_received(path)
    previous = previous or {}
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
    task, counts, task_reason = (draft_columns.given_task(typed_target, task) if task
                                 else draft_columns.guess_task(typed_target))
    classes: list[int | str] = list(counts)
    positive_lines = []
    if task == "binary_classification":
        listed, chosen = previous.get("target_classes"), previous.get("positive_class")
        kept = None if previous.get("target") != target else str(chosen) if chosen is not None \
            else str(listed[-1]) if isinstance(listed, list) and listed else None  # format 1
        positive, why = choose_positive(counts, positive_class, ask, kept)
        classes = [label for label in classes if label != positive] + [positive]
        positive_lines = _positive_lines(counts, positive, why)
    elif positive_class is not None:
        raise ValueError(f"--positive-class: the task is {task} ({task_reason}); only a binary "
                         "target has a positive class")
    id_note = "given" if id_column else "REVIEW guessed: unique in every row, never missing"
    id_column = id_column or draft_columns.guess_id(frame, {target, timestamp or ""})
    time_note = "given" if timestamp else "REVIEW guessed: ISO 8601 times, never missing"
    timestamp = timestamp or draft_columns.guess_timestamp(frame, {target, id_column or ""})
    lines = ["# " + _comment(f"Drafted by executables.draft_config from {path.name} "
                             f"({len(frame):,} rows).")]
    if positive_lines:
        lines.append("# REVIEW FIRST the positive class, columns.positive_class (below).")
    lines += ["# Every line marked REVIEW is a guess from this one file: check it before use.",
              "", "columns:", *positive_lines]
    lines.append(_line(f"  id: {_flow(id_column)}", id_note if id_column else (
        "REVIEW no column is unique in every row and never missing: add one to your files (e.g. "
        "table.insert(0, 'row_id', range(len(table)))) and name it here; the config needs one")))
    times_as_id = (id_column is not None and not timestamp
                   and draft_columns.guess_timestamp(frame, {target}) == id_column)
    lines.append(_line(f"  timestamp: {_flow(timestamp)}", (
        time_note if timestamp
        else f"REVIEW {_flow(id_column)}, a column of times, is the id: add an id column to your "
             f"file to use {_flow(id_column)} as the timestamp" if times_as_id
        else "no column of ISO 8601 times found: none is needed (no time split)")))
    missing_target = int(typed_target.isna().sum())
    lines.append(_line(f"  target: {_flow(target)}", (
        f"REVIEW {missing_target} rows without a target will be quarantined"
        if missing_target else "")))
    review = "the task given" if task_reason == "given" else f"REVIEW {task_reason}"
    lines.append(_line(f"  target_classes: {_flow(classes)}", review))
    if positive_lines:
        lines.append(_line(f"  positive_class: {_flow(classes[-1])}",
                           "REVIEW FIRST: see the top of this section"))
    guesses = {str(name): draft_columns.guess_feature(str(name), frame[name], from_csv=from_csv)
               for name in frame.columns if name not in {target, id_column, timestamp}}
    lines += _feature_lines(guesses)
    keys = [id_column] if id_column else []
    features = [name for name, guess in guesses.items() if guess.kind in FEATURES]
    needs = {"production": [*keys, *features], "production_labels": [*keys, target]}
    split = "stratified" if task != "regression" else "random"
    lines += ["", f"task: {task}  # " + ("given" if task_reason == "given"
                                          else f"REVIEW from the target: {task_reason}"), "",
              *_data_lines(path, root, production or {}, needs), "", "training:",
              _line(f"  split: {split}", "REVIEW" + (
                  " keeps each class's share in the holdout" if split == "stratified" else "")
                  + (f"; or time, to hold out the latest rows by {_flow(timestamp)}"
                     if timestamp else "")),
              f"  metric: {METRICS[task]}  # REVIEW one of the task's metrics (see config.py)",
              *_candidates(task), "", "engineering:",
              "  steps: []  # the shipped steps read the example's columns: list yours here", "",
              *_model_card_lines(), ""]
    return "\n".join(lines)


def _model_card_lines() -> list[str]:
    """The model card's REVIEW placeholders (config_sections.ModelCardConfig's own): what no
    file can tell, which a person writes before a version is reviewed."""
    card = ModelCardConfig()
    return ["model_card:  # on every model card (model_card.md, GET /model/card): REVIEW each",
            *(_entry("  ", key, _flow(getattr(card, key)))
              for key in ("purpose", "owner", "intended_use", "out_of_scope"))]


def _feature_lines(guesses: dict[str, draft_columns.Guess]) -> list[str]:
    lines = []
    for kind in FEATURES:
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
    return lines


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


def _sections(config_file: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The production files a config names, and its `columns` (empty where it has none)."""
    try:
        content = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{config_file}: not valid YAML: {err}\n{config_file} is "
                         "unchanged") from err
    sections = content if isinstance(content, dict) else {}
    data, columns = sections.get("data"), sections.get("columns")
    named = {key: value for key, value in (data.items() if isinstance(data, dict) else ())
             if key in DEFAULT_NAMES and isinstance(value, str)}
    return named, columns if isinstance(columns, dict) else {}


def _ask_at_terminal(question: str) -> str:
    """The question on stderr (stdout may carry the draft), the answer from stdin."""
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:
        raise EOFError
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("data_file", type=Path, help="CSV or Parquet file of your historic data")
    parser.add_argument("--target", required=True, help="the column to predict")
    parser.add_argument("--id", dest="id_column", default=None, help="the identifier column")
    parser.add_argument("--timestamp", default=None, help="the event time column")
    parser.add_argument("--positive-class", default=None,
                        help="a binary target's class that F1, precision, recall and ROC AUC "
                             "score (default: asked at a terminal, else 1/True/yes or the rarer)")
    parser.add_argument("--task", choices=draft_columns.TASKS, default=None,
                        help="the task (default: guessed from the target, flagged for review)")
    parser.add_argument("--production", type=Path, default=None,
                        help="the production file to score (data.production)")
    parser.add_argument("--production-labels", type=Path, default=None,
                        help="its labels, arriving later (data.production_labels)")
    written = parser.add_mutually_exclusive_group()
    written.add_argument("--output", type=Path, default=None, help="write here (default: stdout)")
    written.add_argument("--update-config", type=Path, default=None, metavar="CONFIG_FILE",
                         help="rewrite the drafted sections of this config file in place")
    parser.add_argument("--no-input", action="store_true",
                        help="ask nothing (so it is when stdin is no terminal)")
    args = parser.parse_args(argv)
    if not args.data_file.is_file():
        parser.exit(2, f"error: data file not found: {args.data_file}\n")
    config_file: Path | None = args.update_config
    if config_file is not None and not config_file.is_file():
        parser.exit(2, f"error: config file not found: {config_file}\n")
    root = config_file.resolve().parent if config_file else PROJECT_ROOT
    try:  # a config's own production files are kept where they exist, its positive class too
        named, previous = _sections(config_file) if config_file else ({}, {})
        production: dict[str, Path | str | None] = {
            "production": args.production or named.get("production"),
            "production_labels": args.production_labels or named.get("production_labels")}
        text = draft_config(args.data_file, args.target, id_column=args.id_column,
                            timestamp=args.timestamp, positive_class=args.positive_class,
                            task=args.task, production=production, root=root, previous=previous,
                            ask=None if args.no_input or not sys.stdin.isatty()
                            else _ask_at_terminal)
        summary = draft_update.update_config(config_file, text, root) if config_file else ""
    except (ValueError, yaml.YAMLError) as err:  # draft_update.ConfigRefused is a ValueError
        parser.exit(2, f"error: {err}\n")
    if summary:
        section = text.partition("\ncolumns:\n")[2].splitlines()  # flagged first, if any
        flagged = itertools.takewhile(lambda line: line.startswith("  # "), section)
        print("\n".join([summary, *(line.removeprefix("  # ") for line in flagged)]))
    elif args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"Draft written to {args.output}: review every REVIEW line (the first ones "
              "first), then merge it into project_config.yaml")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
