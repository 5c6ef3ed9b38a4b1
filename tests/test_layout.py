"""The house shows the pipeline: every module of the package and every use case has a test
module of its own, named after it (`tests/test_<module>.py`; a subpackage's module may carry
the subpackage's name in front, as `test_prediction_log_journal.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_project.config import PROJECT_ROOT

TESTS = PROJECT_ROOT / "tests"
PACKAGE = PROJECT_ROOT / "ml_project"


def _modules() -> list[Path]:
    """The package's modules and the use cases: not packages' __init__ files, not config
    files such as gunicorn.conf.py."""
    found = [*PACKAGE.rglob("*.py"), *(PROJECT_ROOT / "use_cases").glob("*.py")]
    return sorted(path for path in found if path.name != "__init__.py"
                  and path.stem.isidentifier() and "__pycache__" not in path.parts)


@pytest.mark.parametrize("module", _modules(), ids=lambda path: str(path.relative_to(PROJECT_ROOT)))
def test_every_module_has_a_test_module_named_after_it(module: Path) -> None:
    named = [path.name for path in TESTS.glob(f"test_*{module.stem}.py")
             if path.stem in (f"test_{module.stem}", f"test_{module.parent.name}_{module.stem}",
                              f"test_{module.parent.name}")]
    assert named, f"no tests/test_{module.stem}.py for {module.relative_to(PROJECT_ROOT)}"
