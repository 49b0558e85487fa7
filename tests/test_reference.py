"""interlace against lme4 1.1-31 on the committed reference fixtures (tests/data/reference).

Each test runs once per reference case (``reference_id`` is parametrized in conftest.py); the
model is fitted once per case, with exactly the call the workplace's conformance checker makes,
and each test compares one group of estimates. Tolerances and name matching follow the checker:
they are ten to a hundred times tighter than "fixed effects within 1e-4, variance components
within 5 %", since the same objective at the same optimum lands far inside them.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest

import interlace

TOLERANCE = {
    "fixef": 1e-5,  # relative to max(1, |lme4|)
    "fixef_se": 1e-3,  # relative
    "fe_cov": 2e-3,  # relative
    "varcorr": 1e-3,  # relative, on the variance/covariance column
    "objective_above": 1e-3,  # -2 llf may exceed lme4's optimum by this much (absolute)
    "objective_below": 1e-2,  # ... and undercut it by at most this much (a different model)
    "information": 1e-2,  # absolute, on AIC and BIC
    "ranef": 1e-3,  # relative to the largest |conditional mode| of that term's column
    "ranef_se": 1e-3,  # relative
    "fitted": 1e-4,  # relative to sd(y)
}


def normalise_name(name: object) -> str:
    """Compare coefficient names across conventions: '(Intercept)' and 'Intercept',
    'conditionB' and 'condition[T.B]', 'C(service)1' and 'service1', 'x^2' and 'x**2'."""
    text = str(name).replace("(Intercept)", "Intercept").replace("^", "**")
    text = re.sub(r"\[T\.([^\]]*)\]", r"\1", text)
    text = re.sub(r"^C\(([^)]*)\)", r"\1", text)
    return text.replace(" ", "")


def normalise_group(name: object) -> frozenset[str]:
    """'cask:batch' equals 'batch:cask'; lme4 calls the second row of an uncorrelated term
    'Subject.1', which is still grouping factor 'Subject'."""
    return frozenset(re.sub(r"\.\d+$", "", str(name)).split(":"))


def max_relative_error(ours: Any, theirs: Any, floor: float = 1.0) -> float:
    """max |ours - theirs| / max(|theirs|, floor), elementwise."""
    ours = np.asarray(ours, dtype=float)
    theirs = np.asarray(theirs, dtype=float)
    assert ours.shape == theirs.shape, f"shape {ours.shape}, lme4 has {theirs.shape}"
    if ours.size == 0:
        return 0.0
    return float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), floor)))


def interlace_call(reference: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(formula, keyword arguments)`` of the interlace call a reference file records.

    As the conformance checker builds it: the ``interlace`` entry minus its formula, with a
    one-element ``groups`` list passed as a plain string, plus ``method`` (REML or ML).
    """
    call = dict(reference["interlace"])
    formula = call.pop("formula")
    groups = call.get("groups")
    if isinstance(groups, list) and len(groups) == 1:
        call["groups"] = groups[0]
    call["method"] = reference["method"]
    return formula, call


class FittedCase(NamedTuple):
    reference: dict[str, Any]
    result: Any


@pytest.fixture(scope="module")
def case(reference_id, reference_case, reference_frame) -> FittedCase:
    reference = reference_case(reference_id)
    data = reference_frame(reference["dataset"], reference.get("factor_columns", []))
    formula, arguments = interlace_call(reference)
    return FittedCase(reference, interlace.fit(formula, data=data, **arguments))


def test_fe_params(case: FittedCase) -> None:
    reference, result = case
    fe_params = result.fe_params
    ours = [normalise_name(name) for name in fe_params.index]
    theirs = [normalise_name(name) for name in reference["fixef"]]
    assert ours == theirs, f"fixed-effect names {list(fe_params.index)}"
    error = max_relative_error(fe_params.to_numpy(), list(reference["fixef"].values()))
    assert error <= TOLERANCE["fixef"], f"max relative error {error:.2e}"


def test_bse(case: FittedCase) -> None:
    reference, result = case
    error = max_relative_error(result.bse, list(reference["fixef_se"].values()), floor=1e-12)
    assert error <= TOLERANCE["fixef_se"], f"max relative error {error:.2e}"


def test_fe_cov(case: FittedCase) -> None:
    reference, result = case
    error = max_relative_error(result.fe_cov, reference["vcov"], floor=1e-12)
    assert error <= TOLERANCE["fe_cov"], f"max relative error {error:.2e}"


def test_varcorr(case: FittedCase) -> None:
    reference, result = case
    varcorr = result.varcorr
    rows = reference["varcorr"]
    assert len(varcorr) == len(rows), f"{len(varcorr)} VarCorr rows, lme4 has {len(rows)}"
    groups = varcorr["grp"].map(normalise_group)
    var1 = varcorr["var1"].fillna("").map(normalise_name)
    var2 = varcorr["var2"].fillna("").map(normalise_name)
    # Variances that lme4 puts at zero are compared on the scale of the residual variance.
    floor = 1e-8 * reference["sigma"] ** 2
    worst, where = 0.0, ""
    for row in rows:
        match = varcorr[
            (groups == normalise_group(row["grp"]))
            & (var1 == normalise_name(row["var1"]))
            & (var2 == normalise_name(row["var2"]))
        ]
        assert len(match) == 1, f"{len(match)} rows for {row['grp']}/{row['var1']}/{row['var2']}"
        error = abs(float(match["vcov"].iloc[0]) - row["vcov"]) / max(abs(row["vcov"]), floor)
        if error > worst:
            worst, where = error, f"{row['grp']}/{row['var1']}/{row['var2']}"
    assert worst <= TOLERANCE["varcorr"], f"max relative error {worst:.2e} at {where}"


def test_objective(case: FittedCase) -> None:
    """-2 llf is the REML criterion (REML) or the deviance (ML). Above lme4's value means a
    worse optimum; far below it means a different model (wrong data, terms or constant)."""
    reference, result = case
    ours = -2.0 * float(result.llf)
    difference = ours - reference["objective"]
    detail = f"-2 llf {ours:.6f}, lme4 {reference['objective']:.6f} (difference {difference:+.2e})"
    assert difference <= TOLERANCE["objective_above"], detail
    assert difference >= -TOLERANCE["objective_below"], detail


def test_nobs_aic_bic_singular(case: FittedCase) -> None:
    reference, result = case
    assert result.nobs == reference["nobs"]
    assert bool(result.is_singular) == bool(reference["singular"])
    assert abs(result.aic - reference["AIC"]) < TOLERANCE["information"], (
        f"AIC {result.aic:.4f}, lme4 {reference['AIC']:.4f}"
    )
    assert abs(result.bic - reference["BIC"]) < TOLERANCE["information"], (
        f"BIC {result.bic:.4f}, lme4 {reference['BIC']:.4f}"
    )


def _by_level(per_group: dict, block: dict[str, Any]) -> np.ndarray:
    """Our values for one lme4 ranef block, rows in lme4's level order, shape (levels, terms).

    ``per_group`` maps a grouping-factor name to a Series (intercept only) or a DataFrame (one
    column per term) indexed by level. Levels of an interaction factor ('a:A' for cask:batch)
    are matched as sets of parts, since the two libraries may order the parts differently.
    """
    group = normalise_group(block["group"])
    keys = [key for key in per_group if normalise_group(key) == group]
    assert len(keys) == 1, f"{len(keys)} entries for grouping factor {block['group']!r}"
    ours = per_group[keys[0]]
    ours = ours.to_frame() if isinstance(ours, pd.Series) else ours
    ours = ours.set_axis(ours.index.map(str), axis=0)
    levels = [str(level) for level in block["levels"]]
    if ":" in block["group"]:
        by_parts = {frozenset(label.split(":")): label for label in ours.index}
        levels = [by_parts.get(frozenset(level.split(":")), level) for level in levels]
    missing = [level for level in levels if level not in ours.index]
    assert not missing, f"{block['group']}: no values for levels {missing[:5]}"
    return ours.loc[levels].to_numpy(dtype=float).reshape(len(levels), -1)


def test_random_effects(case: FittedCase) -> None:
    reference, result = case
    for block in reference["ranef"]:
        theirs = np.array(block["values"], dtype=float).reshape(len(block["levels"]), -1)
        ours = _by_level(result.random_effects, block)
        assert ours.shape == theirs.shape, f"{block['group']}: shape {ours.shape}"
        # Per column, relative to the largest mode: a level near zero must not blow up the error.
        scale = np.maximum(np.max(np.abs(theirs), axis=0), 1e-8 * reference["sigma"])
        error = float(np.max(np.abs(ours - theirs) / scale))
        assert error <= TOLERANCE["ranef"], f"{block['group']}: max relative error {error:.2e}"


def test_random_effects_se(case: FittedCase) -> None:
    reference, result = case
    for block in reference["ranef"]:
        theirs = np.array(block["cond_sd"], dtype=float).reshape(len(block["levels"]), -1)
        ours = _by_level(result.random_effects_se, block)
        error = max_relative_error(ours, theirs, floor=1e-8)
        assert error <= TOLERANCE["ranef_se"], f"{block['group']}: max relative error {error:.2e}"


def test_fittedvalues_resid(case: FittedCase) -> None:
    reference, result = case
    if "fitted" not in reference:
        pytest.skip("lme4's fitted values were not recorded for this case")
    fitted = np.asarray(reference["fitted"], dtype=float)
    resid = np.asarray(reference["resid"], dtype=float)
    sd_y = float(np.std(fitted + resid))
    ours_fitted = np.asarray(result.fittedvalues, dtype=float)
    ours_resid = np.asarray(result.resid, dtype=float)
    assert ours_fitted.shape == fitted.shape, (
        f"{ours_fitted.size} fitted values, lme4 has {fitted.size}"
    )
    assert ours_resid.shape == resid.shape, f"{ours_resid.size} residuals, lme4 has {resid.size}"
    error = (
        max(float(np.max(np.abs(ours_fitted - fitted))), float(np.max(np.abs(ours_resid - resid))))
        / sd_y
    )
    assert error <= TOLERANCE["fitted"], f"max error / sd(y) {error:.2e}"


def test_convergence_warnings_as_lme4(case: FittedCase) -> None:
    # None of the reference fits made lme4 warn about convergence (InstEval's plain gradient
    # is 4e-3 at the optimum, its scaled gradient 2e-5: no warning, as lme4).
    from interlace.results import fit_warnings

    categories = [category for category, _ in fit_warnings(case.result)]
    assert interlace.ConvergenceWarning not in categories
    singular = interlace.SingularFitWarning in categories
    assert singular is bool(case.reference["singular"])
