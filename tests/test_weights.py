"""Prior weights (lme4's ``weights=``): lme4's numbers, exact identities and the input checks.

The reference values in ``tests/data/weighted/weighted.json`` were computed by lme4 1.1-31 and
lmerTest 3.1-3 (``make_weighted.R`` in that directory is the script, and says how the weight
columns were made).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import interlace
from interlace.exceptions import DataError, InputTypeError

DATA = Path(__file__).parent / "data" / "weighted"

FORMULAS = {
    "sleepstudy": "Reaction ~ Days + (Days | Subject)",
    "psycholing": "rt ~ condition + (1 | subject) + (1 | item)",
}


def load(name: str) -> pd.DataFrame:
    frame = pd.read_csv(DATA / f"{name}_w.csv")
    if name == "sleepstudy":
        frame["Subject"] = frame["Subject"].astype(str)
    return frame


REFERENCE = json.loads((DATA / "weighted.json").read_text())
CASES = {case["id"]: case for case in REFERENCE["cases"]}


def dataset_of(case_id: str) -> str:
    return case_id.split("_")[0]


@pytest.fixture(scope="module", params=sorted(CASES))
def fitted(request: pytest.FixtureRequest) -> tuple[dict[str, Any], Any, pd.DataFrame]:
    case = CASES[request.param]
    name = dataset_of(case["id"])
    data = load(name)
    method = "REML" if case["reml"] else "ML"
    return case, interlace.fit(FORMULAS[name], data, weights="w", method=method), data


def relative(ours: Any, theirs: Any, floor: float = 1.0) -> float:
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    return float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), floor)))


# ---------------------------------------------------------------------------------------------
# lme4's numbers


def test_weighted_objective_matches_lme4(fitted):
    case, res, _ = fitted
    # The criterion includes -log|W|, as lme4's: equal to well inside the optimiser's tolerance.
    assert -2.0 * res.llf == pytest.approx(case["objective"], abs=1e-6)
    assert res.llf == pytest.approx(case["logLik"], abs=1e-6)
    assert res.nobs == case["nobs"]


def test_weighted_estimates_match_lme4(fitted):
    case, res, _ = fitted
    assert relative(res.fe_params.to_numpy(), list(case["fixef"].values())) < 1e-5
    assert relative(res.bse.to_numpy(), list(case["fixef_se"].values()), floor=0.0) < 1e-4
    assert relative(res.theta, case["theta"], floor=0.1) < 1e-4
    assert res.sigma == pytest.approx(case["sigma"], rel=1e-5)
    assert relative(res.fe_df.to_numpy(), list(case["df"].values()), floor=0.0) < 1e-3


def test_weighted_fitted_residuals_and_modes_match_lme4(fitted):
    case, res, _ = fitted
    scale = float(np.std(res.fittedvalues + res.resid))
    # Fitted values and residuals are on the response's own scale (lme4's fitted, residuals).
    assert np.max(np.abs(res.fittedvalues.to_numpy() - case["fitted"])) < 1e-4 * scale
    assert np.max(np.abs(res.resid.to_numpy() - case["resid"])) < 1e-4 * scale
    for group, modes in res.random_effects.items():
        ours = np.asarray(modes, dtype=float).reshape(len(modes), -1)
        theirs = np.column_stack(
            [np.asarray(v, dtype=float) for v in case["ranef"][group].values()]
        )
        assert np.max(np.abs(ours - theirs)) < 1e-3 * np.max(np.abs(theirs))


def test_weighted_hat_values_match_lme4(fitted):
    case, res, _ = fitted
    assert np.max(np.abs(interlace.leverage(res)["overall"].to_numpy() - case["hatvalues"])) < 1e-6


def test_weighted_predictions_match_lme4(fitted):
    case, res, data = fitted
    predicted = res.predict(data.iloc[:5])
    assert np.max(np.abs(predicted - case["predict_newdata"])) < 1e-4 * np.std(predicted)


# ---------------------------------------------------------------------------------------------
# Exact identities


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return load("sleepstudy")


def test_unit_weights_are_the_unweighted_fit(sleep):
    plain = interlace.fit(FORMULAS["sleepstudy"], sleep)
    unit = interlace.fit(FORMULAS["sleepstudy"], sleep, weights=np.ones(len(sleep)))
    assert unit.llf == plain.llf
    np.testing.assert_array_equal(unit.fe_params, plain.fe_params)
    np.testing.assert_array_equal(unit.theta, plain.theta)


def test_weights_as_array_or_column_give_the_same_fit(sleep):
    by_column = interlace.fit(FORMULAS["sleepstudy"], sleep, weights="w")
    by_array = interlace.fit(FORMULAS["sleepstudy"], sleep, weights=sleep["w"].to_numpy())
    assert by_array.llf == by_column.llf
    np.testing.assert_array_equal(by_array.fe_params, by_column.fe_params)


def test_scaling_the_weights_rescales_sigma_only(sleep):
    # w -> c·w describes the same distribution of y with σ -> σ·√c: β and the likelihood are
    # unchanged (the -log|W| term's -n·log c is cancelled by σ²'s n·log c), and θ, which is
    # relative to σ, becomes θ/√c.
    c = 4.0
    base = interlace.fit(FORMULAS["sleepstudy"], sleep, weights="w")
    scaled = interlace.fit(FORMULAS["sleepstudy"], sleep, weights=c * sleep["w"].to_numpy())
    np.testing.assert_allclose(scaled.theta, base.theta / math.sqrt(c), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scaled.fe_params, base.fe_params, rtol=1e-8)
    assert scaled.sigma == pytest.approx(base.sigma * math.sqrt(c), rel=1e-6)
    assert scaled.llf == pytest.approx(base.llf, abs=1e-6)


def test_missing_weight_drops_the_row(sleep):
    with_missing = sleep.copy()
    with_missing.loc[5, "w"] = np.nan
    res = interlace.fit(FORMULAS["sleepstudy"], with_missing, weights="w")
    dropped = interlace.fit(FORMULAS["sleepstudy"], sleep.drop(index=5), weights="w")
    assert res.nobs == len(sleep) - 1
    assert res.llf == dropped.llf


def test_update_keeps_the_weights(sleep):
    res = interlace.fit(FORMULAS["sleepstudy"], sleep, weights="w")
    assert res.update(method="ML").llf == pytest.approx(
        interlace.fit(FORMULAS["sleepstudy"], sleep, weights="w", method="ML").llf, abs=1e-9
    )
    by_array = interlace.fit(FORMULAS["sleepstudy"], sleep, weights=sleep["w"].to_numpy())
    assert by_array.update().llf == pytest.approx(by_array.llf, abs=1e-9)
    with pytest.raises(DataError, match=r"weights given as an array.*'\(weights\)'"):
        by_array.update(data=sleep)


def test_weighted_exact_deletion_equals_refitting_without_the_group(sleep):
    res = interlace.fit(FORMULAS["sleepstudy"], sleep, weights="w")
    table = interlace.hlm_influence(res, level="Subject", approx=False, progress=False)
    p = len(res.fe_params)
    cov_inv = np.linalg.inv(res.fe_cov.to_numpy())
    for subject in ["308", "335", "372"]:
        refit = interlace.fit(
            FORMULAS["sleepstudy"], sleep[sleep["Subject"] != subject], weights="w"
        )
        d = refit.fe_params.to_numpy() - res.fe_params.to_numpy()
        assert table.loc[subject, "cooksd"] == pytest.approx(d @ cov_inv @ d / p, rel=1e-4)


def test_weighted_simulation_has_residual_variance_sigma2_over_w(sleep):
    # Conditional on the modes, y* - fitted ~ N(0, σ²/w): √w·(y* - fitted)/σ is standard normal.
    res = interlace.fit(FORMULAS["sleepstudy"], sleep, weights="w")
    draws = res.simulate(nsim=2000, seed=7, include_re=False)
    standardised = (draws - res.fittedvalues.to_numpy()[:, None]) * np.sqrt(
        sleep["w"].to_numpy()[:, None] / res.sigma**2
    )
    per_row_variance = standardised.var(axis=1)
    # 2000 draws per row: the variance of a row's sample variance is about 2/2000.
    assert np.all(np.abs(per_row_variance - 1.0) < 6 * math.sqrt(2 / 2000))
    assert abs(per_row_variance.mean() - 1.0) < 0.01


def test_weighted_bootstrap_is_centred_on_the_estimates(sleep):
    res = interlace.fit(FORMULAS["sleepstudy"], sleep, weights="w")
    boot = res.bootstrap(200, seed=3, n_jobs=2, progress=False)
    assert boot.n_failed == 0
    se_of_mean = res.bse.to_numpy() / math.sqrt(200)
    assert np.all(np.abs(boot.beta.mean(axis=0) - res.fe_params.to_numpy()) < 4 * se_of_mean)
    # σ* scatters about σ̂ with sd about σ̂/√(2(n - p)); 200 replicates.
    assert boot.sigma.mean() == pytest.approx(
        res.sigma, abs=4 * res.sigma / math.sqrt(2 * 178 * 200)
    )


# ---------------------------------------------------------------------------------------------
# Bad weights: the library's own exceptions, naming the culprit


@pytest.mark.parametrize(
    ("value", "error", "pattern"),
    [
        (-1.0, DataError, r"weights column 'w' has 1 negative value \(first at row 3\)"),
        (0.0, DataError, r"weights column 'w' has 1 zero value \(first at row 3\); drop those"),
        (np.inf, DataError, r"weights column 'w' has 1 infinite value \(first at row 3\)"),
    ],
)
def test_bad_weight_values_are_named(sleep, value, error, pattern):
    bad = sleep.copy()
    bad.loc[3, "w"] = value
    with pytest.raises(error, match=pattern):
        interlace.fit(FORMULAS["sleepstudy"], bad, weights="w")


def test_bad_weights_arguments(sleep):
    with pytest.raises(
        DataError, match=r"weights: column 'W' not found in data \(did you mean 'w'"
    ):
        interlace.fit(FORMULAS["sleepstudy"], sleep, weights="W")
    with pytest.raises(DataError, match=r"weights has shape \(3,\); give one weight per row"):
        interlace.fit(FORMULAS["sleepstudy"], sleep, weights=[1.0, 2.0, 3.0])
    with pytest.raises(InputTypeError, match=r"weights column 'Subject' must be numeric"):
        interlace.fit(FORMULAS["sleepstudy"], sleep, weights="Subject")
    negative = -np.ones(len(sleep))
    with pytest.raises(DataError, match=r"^weights has 180 negative values"):
        interlace.fit(FORMULAS["sleepstudy"], sleep, weights=negative)


def test_weighted_summary_prints_lme4s_weights_line_and_pearson_residuals(sleep):
    # lme4 (sleepstudy_w.csv, weights = w):
    #   Weights: w
    #   Scaled residuals:
    #       Min      1Q  Median      3Q     Max
    #   -4.2950 -0.3982  0.0342  0.4667  4.9377
    res = interlace.fit(FORMULAS["sleepstudy"], sleep, weights="w")
    lines = str(res.summary()).splitlines()
    assert lines[2] == "Weights: w"
    assert "-4.2950 -0.3982  0.0342  0.4667  4.9377" in lines
