"""The bundled simulated datasets: shape, types, and that the documented calls reproduce them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import interlace.datasets
from interlace.datasets import BUNDLED, list_datasets, load, simulate_crossed, simulate_nested
from interlace.exceptions import DataError

EXPECTED = {
    "reading_times": ((2400, 4), ["subject", "item", "condition", "rt"]),
    "students_schools": ((960, 4), ["school", "student", "hours", "score"]),
}


def test_list_datasets() -> None:
    assert list_datasets() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_load_shape_columns_dtypes(name: str) -> None:
    frame = load(name)
    shape, columns = EXPECTED[name]
    assert frame.shape == shape
    assert list(frame.columns) == columns
    for column in columns:
        if column in BUNDLED[name].string_columns:
            assert pd.api.types.is_string_dtype(frame[column]), f"{column}: {frame[column].dtype}"
            assert frame[column].notna().all()
        else:
            assert frame[column].dtype == np.float64, f"{column}: {frame[column].dtype}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_documented_call_reproduces_bundled_csv(name: str) -> None:
    spec = BUNDLED[name]
    # The call the package docstring shows is the call that made the file.
    assert spec.call in interlace.datasets.__doc__
    pd.testing.assert_frame_equal(spec.generate(), load(name), check_exact=False, rtol=1e-12)


def test_reading_times_design() -> None:
    frame = load("reading_times")
    assert frame["subject"].nunique() == 60
    assert frame["item"].nunique() == 40
    assert not frame.duplicated(["subject", "item"]).any()
    # Latin-square counterbalancing: half the items per condition for every subject, half the
    # subjects per condition for every item.
    assert set(frame.groupby(["subject", "condition"]).size()) == {20}
    assert set(frame.groupby(["item", "condition"]).size()) == {30}
    missing = int(frame["rt"].isna().sum())
    assert 0 < missing < 0.05 * len(frame)
    rt = frame["rt"].dropna()
    assert 450 < rt.median() < 750
    assert (rt > 0).all() and (rt == rt.round()).all()
    assert rt.mean() > rt.median()  # right-skewed, as reading times are


def test_students_schools_design() -> None:
    frame = load("students_schools")
    assert frame["school"].nunique() == 40
    assert frame["student"].is_unique
    sizes = frame.groupby("school").size()
    assert sizes.min() >= 10 and sizes.max() <= 40 and sizes.nunique() > 1
    assert (frame["hours"] >= 0).all()
    assert frame.notna().all().all()


def test_load_returns_a_fresh_frame() -> None:
    first = load("reading_times")
    first.loc[0, "rt"] = -1.0
    assert load("reading_times").loc[0, "rt"] != -1.0


@pytest.mark.parametrize("name", ["sleepstudy", "Reading_Times", "", 3])
def test_unknown_name_is_a_data_error_listing_the_available_ones(name: object) -> None:
    with pytest.raises(DataError) as excinfo:
        load(name)  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert repr(name) in message
    for available in list_datasets():
        assert available in message
    assert isinstance(excinfo.value, ValueError)


def test_simulation_is_seeded() -> None:
    assert simulate_crossed(6, 4, seed=7).equals(simulate_crossed(6, 4, seed=7))
    assert not simulate_crossed(6, 4, seed=7).equals(simulate_crossed(6, 4, seed=8))
    assert simulate_nested(5, seed=7).equals(simulate_nested(5, seed=7))


def test_simulate_crossed_arguments() -> None:
    frame = simulate_crossed(4, 6, missing_fraction=0.0, seed=3)
    assert frame.shape == (24, 4)
    assert frame["rt"].notna().all()
    assert set(frame.groupby(["subject", "condition"]).size()) == {3}
    with pytest.raises(ValueError, match="at least 2"):
        simulate_crossed(1, 6)
    with pytest.raises(ValueError, match="missing_fraction"):
        simulate_crossed(4, 6, missing_fraction=1.0)


def test_simulate_nested_arguments() -> None:
    frame = simulate_nested(3, min_students=5, max_students=5, seed=3)
    assert frame.shape == (15, 4)
    assert list(frame["student"][:2]) == ["sch01-01", "sch01-02"]
    with pytest.raises(ValueError, match="min_students"):
        simulate_nested(3, min_students=6, max_students=5)
