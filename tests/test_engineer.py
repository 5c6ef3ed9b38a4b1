"""Feature steps in isolation on hand-written values, the FeatureStep contract, and the
FeatureEngineer that composes them inside the Pipeline."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import clone

from ml_project.config import Config, ConfigError, load_config
from ml_project.engineer import (
    Columns,
    FeatureEngineer,
    FeatureStep,
    charges_per_tenure_month,
    configured_steps,
    engineered_columns,
    import_step,
    support_calls_per_year,
    tenure_band,
)
from ml_project.train import check_training_config


def _columns(**values: list[float]) -> dict[str, np.ndarray]:
    return {name: np.asarray(column, dtype=float) for name, column in values.items()}


def test_charges_per_tenure_month_counts_new_customers_as_one_month() -> None:
    columns = _columns(total_charges=[50.0, 500.0, math.nan], tenure_months=[0.0, 10.0, 5.0])

    result = charges_per_tenure_month(columns)["charges_per_tenure_month"]

    np.testing.assert_array_equal(result, [50.0, 50.0, math.nan])


def test_support_calls_per_year_normalises_by_tenure() -> None:
    columns = _columns(support_calls=[3.0, 4.0, 6.0], tenure_months=[0.0, 12.0, 60.0])

    result = support_calls_per_year(columns)["support_calls_per_year"]

    np.testing.assert_allclose(result, [3.0, 2.0, 1.0])


@pytest.mark.parametrize(
    ("tenure", "band"),
    [(0.0, "0-12"), (11.9, "0-12"), (12.0, "12-24"), (23.0, "12-24"), (24.0, "24-48"),
     (47.5, "24-48"), (48.0, "48+"), (120.0, "48+")],
)
def test_tenure_band_puts_each_edge_in_the_upper_band(tenure: float, band: str) -> None:
    assert tenure_band(_columns(tenure_months=[tenure]))["tenure_band"].tolist() == [band]


def test_tenure_band_keeps_missing_tenure_missing() -> None:
    value = tenure_band(_columns(tenure_months=[math.nan]))["tenure_band"][0]

    assert isinstance(value, float) and math.isnan(value)


def _step(
    function: Callable[[Columns], dict[str, np.ndarray]], inputs: tuple[str, ...] = ("a",)
) -> FeatureStep:
    return FeatureStep("doubled", inputs, (("a_doubled", "numerical"),), function)


def test_feature_step_passes_only_declared_inputs_to_its_function() -> None:
    seen: list[list[str]] = []

    def doubled(columns: Columns) -> dict[str, np.ndarray]:
        seen.append(sorted(columns))
        return {"a_doubled": columns["a"] * 2}

    result = _step(doubled)(_columns(a=[1.0, 2.0], b=[3.0, 4.0]))

    assert seen == [["a"]]
    np.testing.assert_array_equal(result["a_doubled"], [2.0, 4.0])


def test_feature_step_missing_input_names_the_step_and_column() -> None:
    step = _step(lambda columns: {"a_doubled": columns["a"] * 2}, inputs=("a", "z"))

    with pytest.raises(KeyError, match=r"feature step 'doubled' needs columns \['z'\]"):
        step(_columns(a=[1.0]))


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        (
            {"a_tripled": np.array([3.0, 6.0])},
            r"returned \['a_tripled'\], declared \['a_doubled'\]",
        ),
        ({}, r"returned \[\], declared \['a_doubled'\]"),
        ({"a_doubled": np.float64(3.0)}, r"returned shapes \{'a_doubled': \(\)\} for inputs"),
        ({"a_doubled": np.array([1.0])}, r"returned shapes \{'a_doubled': \(1,\)\}"),
    ],
    ids=["other-name", "nothing", "scalar", "wrong-length"],
)
def test_feature_step_rejects_output_that_breaks_its_declaration(
    returned: dict[str, np.ndarray], match: str
) -> None:
    with pytest.raises(ValueError, match=rf"feature step 'doubled' {match}"):
        _step(lambda columns: returned)(_columns(a=[1.0, 2.0]))


@pytest.mark.parametrize(("step", "match"), [
    ("ml_project.engineer.magic", r"cannot import 'ml_project.engineer.magic'"),
    ("tenure_band", r"cannot import 'tenure_band'"),
    ("ml_project.engineer.engineered_columns", r"is not a feature step; decorate the function"),
])
def test_check_training_config_rejects_a_step_that_is_not_an_importable_feature_step(
    project: Path, step: str, match: str
) -> None:
    config = load_config("modelling", "historic", "local",
                         config_file=project / "project_config.yaml", root=project,
                         overrides={"engineering": {"steps": [step]}})

    with pytest.raises(ConfigError, match=match):
        check_training_config(config)


MARK_VARIABLE = "ML_PROJECT_TEST_STEP_MARK"  # a file anything evaluated below would create


def _leave_a_mark() -> None:
    Path(os.environ[MARK_VARIABLE]).touch()


class _PropertyStep:
    """Looks like a step to `getattr`: reading its declaration runs code."""

    @property
    def feature_step(self) -> FeatureStep:
        _leave_a_mark()
        return import_step("ml_project.engineer.tenure_band")


class _CallableStep:
    """Carries a real declaration, but is an object that would run when called, not a function."""

    def __init__(self) -> None:
        self.feature_step = import_step("ml_project.engineer.tenure_band")

    def __call__(self, columns: Columns) -> dict[str, np.ndarray]:
        _leave_a_mark()
        return {}


class _LooksLikeAnything:
    """Answers every attribute asked of it, running code to do so."""

    def __getattr__(self, name: str) -> object:
        _leave_a_mark()
        return import_step("ml_project.engineer.tenure_band")


property_step = _PropertyStep()
callable_step = _CallableStep()
answers_anything = _LooksLikeAnything()


@pytest.mark.parametrize("name", ["property_step", "callable_step", "answers_anything",
                                  "_leave_a_mark"])
def test_a_step_path_to_something_else_is_refused_without_running_any_of_it(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The config names code to import: a step is checked to be a function `@feature_step`
    declared before anything of it is evaluated (a property, __getattr__) or called."""
    mark = tmp_path / "ran"
    monkeypatch.setenv(MARK_VARIABLE, str(mark))
    config = load_config("modelling", "historic", "local",
                         config_file=project / "project_config.yaml", root=project,
                         overrides={"engineering": {"steps": [f"{__name__}.{name}"]}})

    with pytest.raises(ConfigError, match=rf"'{__name__}.{name}' is not a feature step"):
        check_training_config(config)
    assert not mark.exists()


def test_check_training_config_checks_step_inputs_against_the_features(project: Path) -> None:
    content = yaml.safe_load((project / "project_config.yaml").read_text())
    del content["columns"]["numerical"]["support_calls"]
    (project / "reduced.yaml").write_text(yaml.safe_dump(content))
    config = load_config("modelling", "historic", "local", config_file=project / "reduced.yaml",
                         root=project)

    expected = r"support_calls_per_year needs columns \['support_calls'\]"
    with pytest.raises(ConfigError, match=expected):
        check_training_config(config)


def test_a_feature_step_of_the_users_own_module_is_found_by_its_dotted_path(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "my_features.py").write_text(
        "import numpy as np\n"
        "from ml_project.engineer import feature_step\n\n"
        "@feature_step(inputs=('age',), outputs={'age_squared': 'numerical'})\n"
        "def age_squared(columns):\n"
        "    return {'age_squared': columns['age'].astype(float) ** 2}\n"
    )
    monkeypatch.syspath_prepend(str(project))
    config = load_config(
        "modelling", "historic", "local", config_file=project / "project_config.yaml",
        root=project, overrides={"engineering": {"steps": ["my_features.age_squared"]}},
    )

    steps = configured_steps(config)
    engineer = FeatureEngineer(steps).fit(pd.DataFrame({"age": [20.0, 30.0]}))

    assert [step.name for step in steps] == ["my_features.age_squared"]
    assert engineer.transform(pd.DataFrame({"age": [3.0]}))["age_squared"].tolist() == [9.0]
    restored = pickle.loads(pickle.dumps(engineer))  # functions travel by reference
    assert restored.steps[0].function is steps[0].function


def test_engineered_columns_lists_outputs_by_kind(config: Config) -> None:
    steps = configured_steps(config)

    assert engineered_columns(steps, "numerical") == [
        "charges_per_tenure_month", "support_calls_per_year"
    ]
    assert engineered_columns(steps, "categorical") == ["tenure_band"]


@pytest.fixture
def production_features() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tenure_months": [0.0, 12.0, 60.0],
            "total_charges": [50.0, 840.0, math.nan],
            "support_calls": [3.0, 4.0, 6.0],
            "contract": ["one-year", "two-year", "month-to-month"],
        },
        index=[10, 11, 12],  # a later chunk of a file: the index does not start at zero
    )


def test_feature_engineer_adds_outputs_without_mutating_its_input(
    config: Config, production_features: pd.DataFrame
) -> None:
    before = production_features.copy()
    engineer = FeatureEngineer(configured_steps(config)).fit(production_features)

    engineered = engineer.transform(production_features)

    pd.testing.assert_frame_equal(production_features, before)
    assert list(engineered.columns) == list(engineer.get_feature_names_out())
    assert list(engineered.columns[:4]) == list(production_features.columns)
    assert engineered.index.tolist() == [10, 11, 12]
    assert engineered["tenure_band"].tolist() == ["0-12", "12-24", "48+"]
    np.testing.assert_allclose(engineered["support_calls_per_year"], [3.0, 2.0, 1.0])
    assert engineered["charges_per_tenure_month"].tolist()[:2] == [50.0, 70.0]


def test_feature_engineer_steps_see_earlier_outputs(production_features: pd.DataFrame) -> None:
    band_length = FeatureStep(
        "band_length", ("tenure_band",), (("band_length", "numerical"),),
        lambda columns: {"band_length": np.array([len(b) for b in columns["tenure_band"]], float)},
    )
    engineer = FeatureEngineer([import_step("ml_project.engineer.tenure_band"), band_length]
                               ).fit(production_features)

    assert engineer.transform(production_features)["band_length"].tolist() == [4.0, 5.0, 3.0]


def test_feature_engineer_clones_like_any_scikit_learn_transformer(
    config: Config, production_features: pd.DataFrame
) -> None:
    engineer = FeatureEngineer(configured_steps(config))

    copy = clone(engineer)

    assert copy.steps == engineer.steps
    pd.testing.assert_frame_equal(
        copy.fit_transform(production_features), engineer.fit_transform(production_features)
    )


def test_feature_engineer_adds_outputs_when_the_frame_carries_identifiers(
    config: Config, production_features: pd.DataFrame
) -> None:
    engineer = FeatureEngineer(configured_steps(config)).fit(production_features)
    with_ids = production_features.assign(customer_id=["A", "B", "C"])

    engineered = engineer.transform(with_ids)

    assert engineered["customer_id"].tolist() == ["A", "B", "C"]
    assert engineered["tenure_band"].tolist() == ["0-12", "12-24", "48+"]
