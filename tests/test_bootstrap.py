"""Simulation, parametric bootstrap, bootstrap confidence intervals and refitting
(``interlace.bootstrap``), on sleepstudy ``Reaction ~ Days + (Days | Subject)``.

Reference values are the fit's own estimates: simulated moments against Xβ̂ and
σ̂² + diag(ZΣ̂Zᵀ), bootstrap means against β̂, percentile intervals against profile intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import load_reference_frame

import interlace
from interlace.exceptions import InterlaceError

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleepstudy() -> pd.DataFrame:
    return load_reference_frame("sleepstudy", ["Subject"])


@pytest.fixture(scope="module")
def res(sleepstudy: pd.DataFrame) -> interlace.results.LmmResult:
    return interlace.fit(FORMULA, sleepstudy)


def _marginal_variance(res) -> np.ndarray:
    """diag(V) = σ² + zᵢᵀ Σ zᵢ for the single (Days | Subject) term."""
    term = res.design.terms[0]
    sigma_b = res.variance_components["Subject"].to_numpy()
    z = np.asarray(term.z, dtype=float)
    return res.scale + np.einsum("ij,jk,ik->i", z, sigma_b, z)


def test_simulate_is_reproducible_by_seed(res) -> None:
    a = res.simulate(nsim=4, seed=12)
    b = res.simulate(nsim=4, seed=12)
    assert a.shape == (res.nobs, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, res.simulate(nsim=4, seed=13))
    # Column r depends only on (seed, r).
    np.testing.assert_array_equal(res.simulate(nsim=2, seed=12), a[:, :2])
    assert np.all(np.isfinite(a))


def test_simulated_moments_match_the_fitted_model(res) -> None:
    nsim = 3000
    sims = res.simulate(nsim=nsim, seed=2024)
    mean_expected = res.design.x @ res.fe_params.to_numpy()
    var_expected = _marginal_variance(res)
    mean_z = (sims.mean(axis=1) - mean_expected) / np.sqrt(var_expected / nsim)
    assert np.max(np.abs(mean_z)) < 4.5
    # var of a sample variance of normals ≈ 2σ⁴/(m − 1)
    var_z = (sims.var(axis=1, ddof=1) - var_expected) / (var_expected * np.sqrt(2 / (nsim - 1)))
    assert np.max(np.abs(var_z)) < 4.5
    # and on average both are centred
    assert abs(mean_z.mean()) < 4.5 / np.sqrt(res.nobs) * 3
    assert abs(var_z.mean()) < 4.5 / np.sqrt(res.nobs) * 3


def test_conditional_simulation_centres_on_the_fitted_values(res) -> None:
    nsim = 2000
    sims = res.simulate(nsim=nsim, seed=5, include_re=False)
    z = (sims.mean(axis=1) - res.fittedvalues.to_numpy()) / (res.sigma / np.sqrt(nsim))
    assert np.max(np.abs(z)) < 4.5
    ratio = sims.var(axis=1, ddof=1) / res.scale
    assert np.max(np.abs(ratio - 1)) < 4.5 * np.sqrt(2 / (nsim - 1))


def test_bootstrap_is_identical_for_one_and_two_threads(res) -> None:
    one = res.bootstrap(n=12, seed=7, n_jobs=1, progress=False)
    two = res.bootstrap(n=12, seed=7, n_jobs=2, progress=False)
    np.testing.assert_array_equal(one.theta, two.theta)
    np.testing.assert_array_equal(one.beta, two.beta)
    np.testing.assert_array_equal(one.sigma, two.sigma)
    pd.testing.assert_frame_equal(one.parameters, two.parameters)
    assert one.seed == 7 and one.n == 12 and one.n_failed == 0
    other = res.bootstrap(n=12, seed=8, n_jobs=1, progress=False)
    assert not np.array_equal(one.beta, other.beta)


def test_bootstrap_replicate_is_the_refit_of_the_simulated_response(res) -> None:
    boot = res.bootstrap(n=2, seed=31, n_jobs=1, progress=False)
    y0 = res.simulate(nsim=1, seed=31)[:, 0]
    refit = res.update(response=y0)
    # Equal up to the optimiser's tolerance: the core forms y's crossproducts in another order
    # (Model.with_response), so BOBYQA's path differs in the last digits.
    np.testing.assert_allclose(boot.beta[0], refit.fe_params.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(boot.theta[0], refit.theta, rtol=1e-5)


def test_bootstrap_mean_of_beta_is_near_the_estimate(res) -> None:
    boot = res.bootstrap(n=100, seed=1, progress=False)
    assert boot.n_failed == 0
    names = list(boot.parameters.columns)
    assert names == list(res.confint().index)
    assert names[:4] == [
        "sd_Intercept|Subject",
        "cor_Days.Intercept|Subject",
        "sd_Days|Subject",
        "sigma",
    ]
    mean_beta = boot.beta.mean(axis=0)
    se = res.bse.to_numpy()
    np.testing.assert_array_less(np.abs(mean_beta - res.fe_params.to_numpy()), 4 * se / 10)
    # the replicate spread of β* estimates the standard errors
    np.testing.assert_allclose(boot.beta.std(axis=0, ddof=1), se, rtol=0.25)
    # σ* centre on σ̂; parameter table and estimates agree on names
    assert abs(np.mean(boot.sigma) - res.sigma) < 4 * res.sigma / np.sqrt(2 * res.nobs)
    assert list(boot.estimates.index) == names
    assert boot.estimates["sigma"] == pytest.approx(res.sigma)


def test_bootstrap_statistic_and_progress(res) -> None:
    seen: list[int] = []
    boot = res.bootstrap(
        n=8,
        seed=3,
        n_jobs=1,
        statistic=lambda row: row["Days"] / row["sigma"],
        progress=seen.append,
    )
    assert seen and seen[-1] == 8
    expected = boot.parameters["Days"] / boot.parameters["sigma"]
    np.testing.assert_allclose(boot.statistics.to_numpy(), expected.to_numpy())
    with pytest.raises(InterlaceError):
        res.bootstrap(n=0)


def test_boot_confint_has_the_layout_of_the_other_methods(res) -> None:
    boot_ci = res.confint(method="boot", level=0.9, nsim=40, seed=9, n_jobs=1)
    wald = res.confint(level=0.9)
    assert list(boot_ci.index) == list(wald.index)
    assert list(boot_ci.columns) == ["5 %", "95 %"]
    assert np.all(boot_ci.iloc[:, 0] < boot_ci.iloc[:, 1])
    sub = res.confint(parm=["Days", "sigma"], method="boot", nsim=40, seed=9, n_jobs=1)
    assert list(sub.index) == ["sigma", "Days"]


def test_wald_interval_is_estimate_plus_minus_z_se(res) -> None:
    ci = res.confint(method="wald", level=0.95)
    z = 1.959963984540054
    fixed = res.fe_params.index
    np.testing.assert_allclose(ci.loc[fixed].iloc[:, 0], res.fe_params - z * res.bse, rtol=1e-12)
    np.testing.assert_allclose(ci.loc[fixed].iloc[:, 1], res.fe_params + z * res.bse, rtol=1e-12)


def test_percentile_intervals_cover_the_profile_midpoints(res) -> None:
    boot = res.confint(method="boot", nsim=500, seed=2015)
    profile = res.confint(method="profile")
    midpoints = profile.mean(axis=1)
    lower, upper = boot.iloc[:, 0], boot.iloc[:, 1]
    assert np.all((lower <= midpoints) & (midpoints <= upper)), pd.concat([boot, midpoints], axis=1)
    # and the two intervals are of comparable width
    ratio = (upper - lower) / (profile.iloc[:, 1] - profile.iloc[:, 0])
    assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio


def test_update_with_the_same_response_reproduces_the_fit(res) -> None:
    again = res.update(response=res.design.y)
    np.testing.assert_allclose(again.fe_params, res.fe_params, rtol=1e-6)
    np.testing.assert_allclose(again.theta, res.theta, rtol=1e-5, atol=1e-7)
    assert again.design.frame["Reaction"].tolist() == res.design.frame["Reaction"].tolist()


def test_update_with_new_data_or_formula_refits(res, sleepstudy: pd.DataFrame) -> None:
    shifted = sleepstudy.assign(Reaction=sleepstudy["Reaction"] * 2.0)
    scaled = res.update(data=shifted)
    np.testing.assert_allclose(scaled.fe_params, 2 * res.fe_params, rtol=1e-5)
    assert scaled.sigma == pytest.approx(2 * res.sigma, rel=1e-5)
    simpler = res.update(formula="Reaction ~ Days + (1 | Subject)")
    direct = interlace.fit("Reaction ~ Days + (1 | Subject)", sleepstudy)
    np.testing.assert_allclose(simpler.fe_params, direct.fe_params, rtol=1e-10)
    ml = res.update(method="ML")
    assert ml.method == "ML"
    assert ml.llf == pytest.approx(interlace.fit(FORMULA, sleepstudy, method="ML").llf, rel=1e-10)
    # a new response: the doubled response gives the doubled fit
    doubled = res.update(response=2 * res.design.y)
    np.testing.assert_allclose(doubled.fe_params, 2 * res.fe_params, rtol=1e-5)
    with pytest.raises(InterlaceError):
        res.update(response=res.design.y[:-1])


def test_an_impossible_number_of_simulations_is_an_error_before_any_allocation(res) -> None:
    with pytest.raises(interlace.DataError, match=r"simulated responses need about .* GB"):
        res.simulate(nsim=10**15, seed=1)
    with pytest.raises(interlace.DataError, match=r"simulated responses need about .* GB"):
        res.simulate(nsim=2**62, seed=1)  # n · nsim does not even fit in 64 bits
    with pytest.raises(interlace.DataError, match=r"bootstrap replicates need about .* GB"):
        res.bootstrap(10**15, seed=1, progress=False)
