"""Numerical edge cases: a response without residual variation, and a boundary fit (θ = 0) in
every function downstream of the fit.

At θ = 0 a random-intercept model is ordinary least squares, so every downstream number has a
closed form: β̂ = ȳ, σ̂² = Σ(y − ȳ)²/(n − 1) under REML, hat values 1/n, conditional modes 0,
and deleting rows moves β̂ to the mean of the rest (the deletion refits of Dyestuff2 stay on the
boundary, which the tests check).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import interlace
from interlace.exceptions import DataError, SingularFitWarning

DYESTUFF2 = Path(__file__).parent / "data" / "reference" / "data" / "Dyestuff2.csv"


# ---------------------------------------------------------------------------------------------
# No residual variation: an error naming the response, where lme4 returns noise


def grouped(y: np.ndarray) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({"y": y, "g": [f"g{i % 5}" for i in range(20)], "x": rng.normal(size=20)})


@pytest.mark.parametrize("formula", ["y ~ 1 + (1 | g)", "y ~ x + (1 | g)"])
def test_constant_response_is_refused(formula):
    with pytest.raises(DataError, match=r"^response 'y' is constant \(every value is 3\)"):
        interlace.fit(formula, grouped(np.full(20, 3.0)))


def test_response_fitted_exactly_by_the_fixed_effects_is_refused():
    data = grouped(np.zeros(20))
    data["y"] = 2.0 - 0.5 * data["x"]
    with pytest.raises(DataError, match=r"^response 'y' is fitted exactly by the fixed effects"):
        interlace.fit("y ~ x + (1 | g)", data)


@pytest.mark.parametrize(
    ("formula", "y"),
    [
        ("y ~ 1 + (1 | g)", 3.0 + np.arange(20) % 5),  # constant within each level of g
        ("y ~ 0 + x + (1 | g)", np.full(20, 3.0)),  # constant, no intercept: b absorbs it
    ],
)
def test_response_reproduced_by_the_random_effects_is_refused(formula, y):
    with pytest.raises(DataError, match=r"^response 'y' has no residual variation once the random"):
        interlace.fit(formula, grouped(y))


def test_a_small_but_real_residual_variation_is_fitted():
    y = 3.0 + np.arange(20) % 5 + 1e-3 * np.random.default_rng(2).normal(size=20)
    res = interlace.fit("y ~ 1 + (1 | g)", grouped(y))
    assert 1e-4 < res.sigma < 1e-2


# ---------------------------------------------------------------------------------------------
# A boundary fit, everywhere downstream


@pytest.fixture(scope="module")
def boundary():
    data = pd.read_csv(DYESTUFF2)
    with pytest.warns(SingularFitWarning):
        res = interlace.fit("Yield ~ 1 + (1 | Batch)", data)
    assert res.theta[0] == 0.0
    return res, data["Yield"].to_numpy(dtype=float), data["Batch"].to_numpy()


def test_boundary_fit_is_least_squares(boundary):
    res, y, _ = boundary
    n = y.size
    assert res.fe_params.iloc[0] == pytest.approx(y.mean(), rel=1e-12)
    assert res.sigma**2 == pytest.approx(np.var(y, ddof=1), rel=1e-10)
    assert res.bse.iloc[0] == pytest.approx(res.sigma / math.sqrt(n), rel=1e-10)
    np.testing.assert_allclose(res.random_effects["Batch"].to_numpy(), 0.0, atol=1e-12)


def test_boundary_leverage_and_residuals(boundary):
    res, y, _ = boundary
    n = y.size
    lev = interlace.leverage(res)
    np.testing.assert_allclose(lev["overall"], 1.0 / n, rtol=1e-10)
    np.testing.assert_allclose(lev["fixef"], 1.0 / n, rtol=1e-10)
    np.testing.assert_allclose(lev["ranef"], 0.0, atol=1e-12)
    resid = interlace.hlm_resid(res, level=1)
    np.testing.assert_allclose(resid[".resid"], y - y.mean(), atol=1e-10)
    np.testing.assert_allclose(resid[".mar.resid"], y - y.mean(), atol=1e-10)
    np.testing.assert_allclose(resid[".fitted"], y.mean(), rtol=1e-12)
    # With V = σ²I the Cholesky residuals are the residuals over σ.
    standardized = interlace.hlm_resid(res, level=1, standardize=True)
    np.testing.assert_allclose(
        standardized[".chol.mar.resid"], (y - y.mean()) / res.sigma, atol=1e-9
    )
    groups = interlace.hlm_resid(res, level="Batch")
    np.testing.assert_allclose(groups[".ranef.intercept"].to_numpy(dtype=float), 0.0, atol=1e-10)


def test_boundary_one_step_deletion_is_ols_cooks_distance(boundary):
    res, y, _ = boundary
    n = y.size
    e = y - y.mean()
    # θ held at 0: β̂ without row i is the mean of the rest, β̂(i) − β̂ = −eᵢ/(n − 1), and
    # var(β̂) = σ̂²/n, which is OLS's Cook's distance with p = 1.
    table = interlace.hlm_influence(res, level=1, approx=True)
    np.testing.assert_allclose(table["cooksd"], (e / (n - 1)) ** 2 * n / res.sigma**2, rtol=1e-9)


@pytest.mark.parametrize(("level", "rows"), [(1, [0, 10, 29]), ("Batch", ["A", "C", "F"])])
def test_boundary_exact_deletion_equals_refits(boundary, level, rows):
    # Exact deletion starts at θ = 0; some refits leave the boundary (row 10), some stay.
    res, y, batch = boundary
    data = pd.DataFrame({"Yield": y, "Batch": batch})
    table = interlace.hlm_influence(res, level=level, approx=False, progress=False)
    for row in rows:
        kept = data.drop(index=row) if level == 1 else data[data["Batch"] != row]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SingularFitWarning)
            refit = interlace.fit("Yield ~ 1 + (1 | Batch)", kept)
        shift = refit.fe_params.iloc[0] - res.fe_params.iloc[0]
        expected = shift**2 / res.bse.iloc[0] ** 2
        assert table.loc[row, "cooksd"] == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_boundary_intervals(boundary):
    res, y, _ = boundary
    wald = res.confint(method="wald")
    z = 1.959963984540054
    beta, se = res.fe_params.iloc[0], res.bse.iloc[0]
    assert wald.iloc[-1].tolist() == pytest.approx([beta - z * se, beta + z * se], rel=1e-12)
    profile = res.confint(method="profile")
    assert profile.iloc[0, 0] == 0.0  # the sd's interval starts at its bound
    boot = res.bootstrap(200, seed=11, n_jobs=2, progress=False)
    assert boot.n_failed == 0
    assert np.all(boot.theta >= 0.0)
    # Simulated from θ = 0, about half the replicates are on the boundary too.
    assert np.mean(boot.theta[:, 0] < 1e-4) > 0.3
    ci = boot.confint()
    assert ci.loc[res.fe_params.index[0]].iloc[0] < beta < ci.loc[res.fe_params.index[0]].iloc[1]


def test_boundary_simulate_and_predict(boundary):
    res, y, _ = boundary
    draws = res.simulate(nsim=4000, seed=5)
    # θ = 0: the new random effects are 0, so y* − β̂ is σ̂ times independent normals.
    deviations = (draws - res.fe_params.iloc[0]) / res.sigma
    assert abs(deviations.var() - 1.0) < 0.01
    assert abs(np.corrcoef(deviations[0], deviations[1])[0, 1]) < 0.05
    new = pd.DataFrame({"Batch": ["A", "unseen"]})
    np.testing.assert_allclose(res.predict(new), res.fe_params.iloc[0], rtol=1e-12)
    assert res.fe_df.iloc[0] == pytest.approx(y.size - 1, rel=1e-4)
