"""The bundled simulated datasets: shape, types, and that the documented calls reproduce them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import interlace.datasets
from interlace.datasets import (
    BUNDLED,
    list_datasets,
    load,
    simulate_crossed,
    simulate_nested,
    simulate_ratings,
)
from interlace.exceptions import DataError

EXPECTED = {
    "reading_times": ((2400, 4), ["subject", "item", "condition", "rt"]),
    "students_schools": ((960, 4), ["school", "student", "hours", "score"]),
    "ratings": ((5722, 3), ["user", "item", "rating"]),
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


def test_ratings_design() -> None:
    frame = load("ratings")
    assert frame["user"].nunique() == 300
    assert frame["item"].nunique() == 150
    assert not frame.duplicated(["user", "item"]).any()  # a user rates an item once
    assert frame.notna().all().all()
    assert set(frame["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # Sparse: about an eighth of the users x items cells are filled.
    assert 0.1 < len(frame) / (300 * 150) < 0.2
    per_user = frame.groupby("user").size()
    per_item = frame.groupby("item").size()
    assert per_user.min() >= 3  # min_ratings
    # Skewed participation: lognormal activity, Zipf popularity (i001 the most popular).
    assert per_user.max() > 5 * per_user.median()
    assert per_item.idxmax() == "i001"
    assert per_item["i001"] > 5 * per_item.median()
    assert per_item.head(15).sum() > per_item.tail(75).sum()


def test_ratings_recover_the_simulated_variances() -> None:
    res = interlace.fit("rating ~ 1 + (1 | user) + (1 | item)", load("ratings"))
    sd = dict(zip(res.varcorr["grp"], res.varcorr["sdcor"], strict=True))
    # Simulated at 0.5, 0.4 and 0.9 on the latent scale; rounding to stars shrinks them a little.
    assert sd["user"] == pytest.approx(0.5, abs=0.1)
    assert sd["item"] == pytest.approx(0.4, abs=0.1)
    assert sd["Residual"] == pytest.approx(0.9, abs=0.1)


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
    assert simulate_ratings(20, 10, 80, seed=7).equals(simulate_ratings(20, 10, 80, seed=7))
    assert not simulate_ratings(20, 10, 80, seed=7).equals(simulate_ratings(20, 10, 80, seed=8))


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


def test_simulate_ratings_arguments() -> None:
    frame = simulate_ratings(4, 5, 1000, seed=3)  # more than fits: every user rates every item
    assert frame.shape == (20, 3)
    assert list(frame["item"][:2]) == ["i01", "i02"]
    frame = simulate_ratings(10, 8, 1, min_ratings=2, seed=3)  # fewer: min_ratings each
    assert set(frame.groupby("user").size()) == {2}
    # No popularity skew and no activity skew: each user rates about the same number of items.
    flat = simulate_ratings(50, 40, 500, activity_sd=0.0, popularity_exponent=0.0, seed=3)
    assert set(flat.groupby("user").size()) == {10}
    with pytest.raises(ValueError, match="at least 2"):
        simulate_ratings(1, 6)
    with pytest.raises(ValueError, match="min_ratings"):
        simulate_ratings(4, 6, min_ratings=7)
    with pytest.raises(ValueError, match="n_ratings"):
        simulate_ratings(4, 6, n_ratings=0)
