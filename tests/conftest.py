"""Shared test set-up: single-threaded BLAS, and loaders for the lme4 reference fixtures.

The Rust core owns the threads (rayon at the outermost loop), so BLAS underneath numpy must stay
single-threaded; the variables are set before numpy is first imported, and only when the caller
has not chosen otherwise.

Any test that takes a ``reference_id`` argument is run once per file in
``tests/data/reference/*.json`` (see :func:`pytest_generate_tests`); the large InstEval case is
marked ``slow`` and runs only with ``pytest -m slow``.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import json  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "reference"
SLOW_REFERENCE_CASES = frozenset({"insteval_crossed_ml"})


def reference_case_ids() -> list[str]:
    """Every reference case, by file stem, sorted."""
    return sorted(path.stem for path in REFERENCE_DIR.glob("*.json"))


def load_reference(case_id: str) -> dict[str, Any]:
    """The parsed reference file ``tests/data/reference/<case_id>.json`` (a fresh dict)."""
    path = REFERENCE_DIR / f"{case_id}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no reference case {case_id!r} in {REFERENCE_DIR}; have {reference_case_ids()}"
        )
    return json.loads(path.read_text())


def load_reference_frame(dataset: str, factor_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read ``data/<dataset>.csv`` as a Python user would, as the conformance checker does.

    R's factors become string columns (object dtype, ``None`` where missing) even when their
    labels look numeric: InstEval's 0/1 ``service`` is a factor in R, so lme4 names its
    coefficient ``service1``, and it must be a string column here too. Text columns that are
    not listed are converted the same way; numeric columns are left alone.
    """
    frame = pd.read_csv(REFERENCE_DIR / "data" / f"{dataset}.csv")
    for column in frame.columns:
        values = frame[column]
        is_text = values.dtype == object or isinstance(values.dtype, pd.StringDtype)
        if column in factor_columns or is_text:
            frame[column] = values.astype("string").astype(object).where(values.notna(), None)
    return frame


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "reference_id" in metafunc.fixturenames:
        params = [
            pytest.param(case_id, marks=pytest.mark.slow)
            if case_id in SLOW_REFERENCE_CASES
            else case_id
            for case_id in reference_case_ids()
        ]
        # Module scope: a module-scoped fixture that fits the model runs once per case.
        metafunc.parametrize("reference_id", params, ids=str, scope="module")


@pytest.fixture(scope="session")
def reference_case() -> Callable[[str], dict[str, Any]]:
    """Loader: ``reference_case("sleepstudy_slopes")`` is that case's parsed JSON."""
    return load_reference


@pytest.fixture(scope="session")
def reference_frame() -> Callable[..., pd.DataFrame]:
    """Loader: ``reference_frame(ref["dataset"], ref["factor_columns"])`` is the data frame."""
    return load_reference_frame
