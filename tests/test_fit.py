"""``interlace.fit`` end to end: the Rust core against the dense oracle, invariances, warnings,
and every bad input of the core-engine issue (exception type and the culprit in the message)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import load_reference, load_reference_frame
from dense_oracle import dense_objective

import interlace
from interlace import _core
from interlace.api import _core_model
from interlace.design import build_design_from
from interlace.exceptions import (
    ConvergenceWarning,
    DataError,
    FormulaError,
    InputTypeError,
    InterlaceError,
    NumericalError,
    RankDeficiencyWarning,
    SingularFitWarning,
)


def crossed_frame(seed: int, n_a: int = 12, n_b: int = 9, reps: int = 2) -> pd.DataFrame:
    """A small crossed design with a continuous slope and a two-level condition."""
    rng = np.random.default_rng(seed)
    a = np.repeat([f"a{i:02d}" for i in range(n_a)], n_b * reps)
    b = np.tile(np.repeat([f"b{j:02d}" for j in range(n_b)], reps), n_a)
    n = a.size
    x = rng.normal(size=n)
    cond = rng.choice(["A", "B"], size=n)
    ua = dict(zip(np.unique(a), rng.normal(0, 1.0, n_a), strict=True))
    sa = dict(zip(np.unique(a), rng.normal(0, 0.5, n_a), strict=True))
    ub = dict(zip(np.unique(b), rng.normal(0, 0.7, n_b), strict=True))
    y = (
        2.0
        + 0.5 * x
        + 0.3 * (cond == "B")
        + np.array([ua[g] + sa[g] * xi for g, xi in zip(a, x, strict=True)])
        + np.array([ub[g] for g in b])
        + rng.normal(0, 1.0, n)
    )
    return pd.DataFrame({"y": y, "x": x, "cond": cond, "a": a, "b": b})


# --- the Rust core against the dense brute force -------------------------------------------------

CORE_FORMULAS = [
    "y ~ x + (1 | a) + (1 | b)",
    "y ~ x + cond + (1 + x | a) + (1 | b)",
    "y ~ x + (x || a) + (1 | b)",
    "y ~ cond + (1 | a) + (1 + cond | b)",
]


@pytest.mark.parametrize("formula", CORE_FORMULAS)
@pytest.mark.parametrize("reml", [True, False])
def test_core_objective_equals_dense_brute_force(formula: str, reml: bool) -> None:
    design = build_design_from(formula, crossed_frame(1))
    model = _core_model(design, reml)
    rng = np.random.default_rng(7)
    lower = np.asarray(model.lower_bounds)
    for _ in range(5):
        theta = np.where(
            lower == 0, rng.uniform(0.05, 2.0, lower.size), rng.normal(0, 0.5, lower.size)
        )
        ours = model.objective(theta)
        dense = dense_objective(design, theta, reml)
        assert ours == pytest.approx(dense, rel=1e-10, abs=1e-8)


def test_core_reads_x_in_either_memory_order() -> None:
    # The boundary copies a Fortran-ordered X column by column and anything else element by
    # element; the model must not tell them apart.
    design = build_design_from("y ~ x + cond + (1 + x | a) + (1 | b)", crossed_frame(1))
    terms = design.terms
    args = (
        [np.ascontiguousarray(t.codes, dtype=np.int32) for t in terms],
        [np.asfortranarray(t.z) for t in terms],
        [int(t.n_levels) for t in terms],
        True,
    )
    x = np.asarray(design.x, dtype=np.float64)
    by_columns = _core.Model(design.y, np.asfortranarray(x), *args)
    by_rows = _core.Model(design.y, np.ascontiguousarray(x), *args)
    strided = _core.Model(design.y, np.asfortranarray(np.repeat(x, 2, axis=1))[:, ::2], *args)
    theta = np.array([0.7, 0.1, 0.4, 0.9])
    value = by_columns.objective(theta)
    assert value == pytest.approx(dense_objective(design, theta, True), rel=1e-10)
    assert by_rows.objective(theta) == value
    assert strided.objective(theta) == value


@pytest.mark.parametrize("formula", CORE_FORMULAS)
def test_optimum_is_no_worse_than_start_or_random_thetas(formula: str) -> None:
    data = crossed_frame(2)
    res = interlace.fit(formula, data)
    model = _core_model(res.design, True)
    best = -2 * res.llf
    assert model.objective(np.asarray(model.theta_start)) >= best - 1e-8
    rng = np.random.default_rng(3)
    lower = np.asarray(model.lower_bounds)
    for _ in range(20):
        theta = np.where(lower == 0, rng.uniform(0, 3, lower.size), rng.normal(0, 1, lower.size))
        assert model.objective(theta) >= best - 1e-8
    # and the reported objective is the objective at the reported θ
    assert model.objective(np.asarray(res.theta)) == pytest.approx(best, abs=1e-9)


def test_optimisation_record_is_reported() -> None:
    res = interlace.fit("y ~ x + (1 + x | a) + (1 | b)", crossed_frame(4))
    record = res.optimization
    assert record.converged and record.status == "converged"
    assert 10 < record.n_evals < 1000
    assert record.gradient.shape == res.theta.shape
    assert np.max(np.abs(record.gradient)) < 2e-3


# --- formula forms and input forms ---------------------------------------------------------------


def test_one_string_form_equals_list_form() -> None:
    data = crossed_frame(5)
    r1 = interlace.fit("y ~ x + (1 + x | a) + (1 | b)", data)
    r2 = interlace.fit("y ~ x", data, random=["(1 + x | a)", "(1 | b)"])
    r3 = interlace.fit("y ~ x", data, random=["(x | a)", "(1 | b)"])  # implicit intercept
    for other in (r2, r3):
        np.testing.assert_allclose(other.fe_params, r1.fe_params, rtol=1e-12)
        np.testing.assert_allclose(other.theta, r1.theta, rtol=1e-12)
        assert other.llf == pytest.approx(r1.llf, abs=1e-10)


def test_groups_gives_crossed_intercepts() -> None:
    data = crossed_frame(6)
    r1 = interlace.fit("y ~ x", data, groups=["a", "b"])
    r2 = interlace.fit("y ~ x + (1 | a) + (1 | b)", data)
    assert r1.llf == pytest.approx(r2.llf, abs=1e-10)
    assert r1.ngroups == {"a": 12, "b": 9}


def test_polars_input_equals_pandas() -> None:
    pl = pytest.importorskip("polars")
    data = crossed_frame(7)
    r1 = interlace.fit("y ~ x + cond + (1 | a) + (1 | b)", data)
    r2 = interlace.fit("y ~ x + cond + (1 | a) + (1 | b)", pl.from_pandas(data))
    np.testing.assert_allclose(r2.fe_params.to_numpy(), r1.fe_params.to_numpy(), rtol=1e-12)
    assert r2.llf == pytest.approx(r1.llf, abs=1e-10)


def test_pyarrow_table_input_equals_pandas() -> None:
    pa = pytest.importorskip("pyarrow")
    data = crossed_frame(7)
    data.loc[[3, 11], "y"] = np.nan  # nulls in the Arrow table are dropped as NaN is
    r1 = interlace.fit("y ~ x + cond + (1 | a) + (1 | b)", data)
    table = pa.Table.from_pandas(data, preserve_index=False)
    assert table.column("y").null_count == 2
    r2 = interlace.fit("y ~ x + cond + (1 | a) + (1 | b)", table)
    assert r2.nobs == r1.nobs == len(data) - 2
    np.testing.assert_allclose(r2.fe_params.to_numpy(), r1.fe_params.to_numpy(), rtol=1e-12)
    assert r2.llf == pytest.approx(r1.llf, abs=1e-10)
    # Arrow dictionary (categorical) grouping columns work as pandas categoricals do.
    categorical = table.set_column(
        table.schema.get_field_index("a"), "a", table.column("a").dictionary_encode()
    )
    r3 = interlace.fit("y ~ x + cond + (1 | a) + (1 | b)", categorical)
    assert r3.llf == pytest.approx(r1.llf, abs=1e-10)


def test_row_order_and_level_labels_do_not_change_the_fit() -> None:
    data = crossed_frame(8)
    r1 = interlace.fit("y ~ x + (1 + x | a) + (1 | b)", data)
    shuffled = data.sample(frac=1.0, random_state=1)
    shuffled["a"] = shuffled["a"].map(lambda s: "zz" + s[::-1])  # relabel, new sort order
    r2 = interlace.fit("y ~ x + (1 + x | a) + (1 | b)", shuffled)
    assert r2.llf == pytest.approx(r1.llf, abs=1e-7)
    np.testing.assert_allclose(r2.fe_params, r1.fe_params, rtol=1e-6)
    re1 = r1.random_effects["a"].sort_values("Intercept").to_numpy()
    re2 = r2.random_effects["a"].sort_values("Intercept").to_numpy()
    np.testing.assert_allclose(re2, re1, rtol=1e-4, atol=1e-6)


def test_scaling_the_response_scales_the_estimates() -> None:
    data = crossed_frame(9)
    r1 = interlace.fit("y ~ x + (1 | a) + (1 | b)", data)
    scaled = data.assign(y=data["y"] * 1000.0)
    r2 = interlace.fit("y ~ x + (1 | a) + (1 | b)", scaled)
    np.testing.assert_allclose(r2.fe_params, 1000.0 * r1.fe_params, rtol=1e-6)
    np.testing.assert_allclose(r2.theta, r1.theta, rtol=1e-5, atol=1e-7)
    assert r2.sigma == pytest.approx(1000.0 * r1.sigma, rel=1e-6)


def test_missing_values_are_dropped_as_lme4_does() -> None:
    ref = load_reference("psycholing_crossed")
    data = load_reference_frame("psycholing", ref["factor_columns"])
    assert data["rt"].isna().sum() > 0
    res = interlace.fit("rt ~ condition", data, groups=["subject", "item"])
    assert res.nobs == ref["nobs"] == int(data["rt"].notna().sum())
    assert len(res.fittedvalues) == res.nobs
    assert res.fittedvalues.index.equals(data.index[data["rt"].notna()])


# --- warnings ------------------------------------------------------------------------------------


def test_rank_deficient_x_drops_the_aliased_column_with_a_warning() -> None:
    data = crossed_frame(10).assign(x2=lambda d: 2.0 * d["x"])
    with pytest.warns(RankDeficiencyWarning, match="x2"):
        res = interlace.fit("y ~ x + x2 + (1 | a) + (1 | b)", data)
    assert list(res.fe_params.index) == ["Intercept", "x"]
    ref = interlace.fit("y ~ x + (1 | a) + (1 | b)", data)
    assert res.llf == pytest.approx(ref.llf, abs=1e-9)


def test_singular_fit_warns_and_names_the_term() -> None:
    ref = load_reference("dyestuff2_singular")
    data = load_reference_frame("Dyestuff2", ref["factor_columns"])
    with pytest.warns(SingularFitWarning, match=r"boundary \(singular\) fit.*Batch"):
        res = interlace.fit("Yield ~ 1", data, groups="Batch")
    assert res.is_singular
    assert res.theta[0] == 0.0


def test_exhausted_evaluation_budget_warns() -> None:
    with pytest.warns(ConvergenceWarning, match="evaluations"):
        res = interlace.fit("y ~ x + (1 + x | a) + (1 | b)", crossed_frame(11), max_evals=8)
    assert not res.converged


def test_no_warning_on_a_regular_fit() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interlace.fit("y ~ x + (1 | a) + (1 | b)", crossed_frame(12))


# --- bad input: the right exception, naming the culprit ------------------------------------------


def raises(kind: type[Exception], pattern: str, *args, **kwargs) -> Exception:
    with pytest.raises(kind, match=pattern) as info:
        interlace.fit(*args, **kwargs)
    assert isinstance(info.value, InterlaceError)
    return info.value


def test_missing_column_is_named_with_a_suggestion() -> None:
    raises(DataError, r"'xx'.*did you mean 'x'", "y ~ xx + (1 | a)", crossed_frame(0))
    raises(DataError, r"'subject'", "y ~ x", crossed_frame(0), groups="subject")


def test_malformed_random_term_is_quoted() -> None:
    raises(FormulaError, re.escape("(1 + x | )"), "y ~ x", crossed_frame(0), random=["(1 + x | )"])
    raises(FormulaError, re.escape("(1 + x a)"), "y ~ x", crossed_frame(0), random=["(1 + x a)"])


def test_unknown_method() -> None:
    raises(InterlaceError, r"'REM'.*REML.*ML", "y ~ x + (1 | a)", crossed_frame(0), method="REM")


def test_no_random_effects_term() -> None:
    raises(FormulaError, r"at least one random-effects term", "y ~ x", crossed_frame(0))


def test_grouping_factor_with_one_level() -> None:
    data = crossed_frame(0).assign(g="only")
    raises(DataError, r"'g'.*1 level", "y ~ x + (1 | g)", data)


def test_grouping_factor_with_as_many_levels_as_rows() -> None:
    data = crossed_frame(0).assign(g=lambda d: np.arange(len(d)).astype(str))
    raises(DataError, r"'g'", "y ~ x + (1 | g)", data)


def test_non_numeric_response() -> None:
    data = crossed_frame(0).assign(y=lambda d: d["cond"])
    raises(InputTypeError, r"'y'", "y ~ x + (1 | a)", data)


def test_non_finite_values() -> None:
    data = crossed_frame(0)
    data.loc[3, "x"] = np.inf
    raises(DataError, r"'x'", "y ~ x + (1 | a)", data)


def test_no_rows_left_after_dropping_missing_values() -> None:
    data = crossed_frame(0).assign(x=np.nan)
    raises(DataError, r"no rows", "y ~ x + (1 | a)", data)


def test_data_of_the_wrong_type() -> None:
    raises(InputTypeError, r"list", "y ~ x + (1 | a)", [1, 2, 3])


def test_start_of_the_wrong_length() -> None:
    raises(
        InterlaceError, r"start has 1 values.*3", "y ~ x + (x | a)", crossed_frame(0), start=[1.0]
    )


# --- the compiled boundary never panics ----------------------------------------------------------


def test_core_rejects_out_of_range_codes_with_a_data_error() -> None:
    y = np.ones(4)
    x = np.ones((4, 1), order="F")
    with pytest.raises(DataError, match="level code 7 at row 2"):
        _core.Model(
            y, x, [np.array([0, 1, 7, 0], dtype=np.int32)], [np.ones((4, 1), order="F")], [2], True
        )


def test_core_rejects_mismatched_sizes_and_bad_theta() -> None:
    y = np.arange(6.0)
    x = np.ones((6, 1), order="F")
    codes = np.array([0, 0, 1, 1, 2, 2], dtype=np.int32)
    with pytest.raises(DataError, match="rows of the model matrix"):
        _core.Model(y, x, [codes], [np.ones((5, 1), order="F")], [3], True)
    model = _core.Model(y, x, [codes], [np.ones((6, 1), order="F")], [3], True)
    with pytest.raises(DataError, match="expected 1 values, found 2"):
        model.objective(np.array([1.0, 2.0]))
    with pytest.raises(DataError, match="not finite"):
        model.objective(np.array([np.nan]))
    assert not issubclass(NumericalError, DataError)


@pytest.mark.parametrize("in_workers", [False, True])
def test_a_panic_in_the_core_is_a_numerical_error_not_a_crash(in_workers: bool) -> None:
    with pytest.raises(NumericalError, match="deliberate panic"):
        _core._panic_for_testing(in_workers=in_workers)
    # The interpreter and the core are still fine afterwards.
    assert interlace.fit("y ~ x + (1 | a)", crossed_frame(0)).converged


def test_a_non_positive_definite_pivot_is_a_structured_error() -> None:
    # An all-zero fixed-effects column handed straight to the core (the design stage would have
    # dropped it as aliased): the fixed-effects block of L has a zero pivot, reported with its
    # place.
    rng = np.random.default_rng(0)
    n = 30
    x = np.asfortranarray(np.column_stack([np.ones(n), rng.normal(size=n), np.zeros(n)]))
    codes = np.repeat(np.arange(5, dtype=np.int32), 6)
    model = _core.Model(rng.normal(size=n), x, [codes], [np.ones((n, 1), order="F")], [5], True)
    with pytest.raises(NumericalError, match=r"fixed-effects.*pivot 2"):
        model.objective(np.array([1.0]))


def test_a_model_too_large_for_memory_stops_early_with_the_estimate() -> None:
    # Two crossed factors of 40,000 levels: the dense second block alone would need ~38 GB.
    n_levels = 40_000
    a = np.concatenate([np.arange(n_levels), np.arange(n_levels)])
    b = np.concatenate([np.arange(n_levels), np.roll(np.arange(n_levels), 1)])
    data = pd.DataFrame({"y": np.random.default_rng(0).normal(size=a.size), "a": a, "b": b})
    with pytest.raises(InterlaceError, match=r"needs about \d+\.\d GB of memory"):
        interlace.fit("y ~ 1 + (1 | a) + (1 | b)", data)


def test_conditional_variances_are_formed_on_first_read_as_the_core_forms_them():
    # fit() leaves the modes' conditional covariances to the first read of random_effects_se;
    # they are then the core's estimates at θ̂, and the modes are unchanged by reading them.
    from interlace.api import _core_model

    res = interlace.fit("y ~ x + (1 + x | a) + (1 | b)", crossed_frame(5))
    assert res._arrays.b_cond_cov is None
    modes = {g: frame.copy() for g, frame in res.random_effects.items()}
    core = _core_model(res.design, reml=True).estimates(np.asarray(res.theta, dtype=float))
    for term, cov in zip(res.design.terms, core["b_cond_cov"], strict=True):
        sds = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        ours = res.random_effects_se[str(term.group)]
        ours = ours.to_numpy().reshape(sds.shape)
        np.testing.assert_array_equal(ours, sds)
    for g, frame in res.random_effects.items():
        pd.testing.assert_frame_equal(pd.DataFrame(frame), pd.DataFrame(modes[g]))
