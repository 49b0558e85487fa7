"""LmmResult against lme4 1.1-31: labels, derived quantities, warnings and the printed summary.

The numbers come from the dense oracle's fit (tests/dense_oracle.py) labelled by
``LmmResult.from_core``; they are compared with lme4's, copied into tests/data/reference, at the
conformance checker's tolerances. Identities (t = β̂/SE, sdcor² = vcov, ...) are checked exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import numpy as np
import pandas as pd
import pytest
from dense_oracle import ORACLE_CASES, dense_fit, dense_fit_pieces, oracle_case

from interlace.exceptions import ConvergenceWarning, InterlaceError, SingularFitWarning
from interlace.results import LmmResult, OptimizationRecord, Summary, _r_format, fit_warnings

CASES = sorted(ORACLE_CASES)


@functools.cache
def fitted(case: str):
    design, reference = oracle_case(case)
    core = dense_fit(design, reference["method"] == "REML")
    return design, reference, core, LmmResult.from_core(design, core, reference["method"])


def normalise_name(name: object) -> str:
    """'(Intercept)' and 'Intercept' compare equal; so do 'conditionB' and 'condition[T.B]'."""
    text = str(name).replace("(Intercept)", "Intercept")
    return re.sub(r"\[T\.([^\]]*)\]", r"\1", text)


def normalise_group(name: object) -> frozenset[str]:
    """'cask:batch' equals 'batch:cask'; 'Subject.1' is still grouping factor 'Subject'."""
    return frozenset(re.sub(r"\.\d+$", "", str(name)).split(":"))


# --- lme4's numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_fixed_effects_match_lme4(case: str) -> None:
    _, reference, _, res = fitted(case)
    assert [normalise_name(n) for n in res.fe_params.index] == [
        normalise_name(n) for n in reference["fixef"]
    ]
    fixef = np.array(list(reference["fixef"].values()))
    assert np.max(np.abs(res.fe_params.to_numpy() - fixef) / np.maximum(1, np.abs(fixef))) <= 1e-5
    np.testing.assert_allclose(res.bse, list(reference["fixef_se"].values()), rtol=1e-3)
    np.testing.assert_allclose(res.fe_cov, np.array(reference["vcov"]), rtol=2e-3)
    assert list(res.fe_cov.index) == list(res.fe_cov.columns) == list(res.fe_params.index)


@pytest.mark.parametrize("case", CASES)
def test_varcorr_matches_lme4(case: str) -> None:
    _, reference, _, res = fitted(case)
    vc = res.varcorr
    assert list(vc.columns) == ["grp", "var1", "var2", "vcov", "sdcor"]
    assert len(vc) == len(reference["varcorr"])
    for row in reference["varcorr"]:
        match = vc[
            (vc["grp"] == row["grp"])
            & (vc["var1"].fillna("").map(normalise_name) == normalise_name(row["var1"]))
            & (vc["var2"].fillna("").map(normalise_name) == normalise_name(row["var2"]))
        ]
        assert len(match) == 1, row
        floor = 1e-8 * reference["sigma"] ** 2
        got = float(match["vcov"].iloc[0])
        assert abs(got - row["vcov"]) / max(abs(row["vcov"]), floor) <= 1e-3, row
        if row["sdcor"] != 0:
            assert float(match["sdcor"].iloc[0]) == pytest.approx(row["sdcor"], rel=1e-3)


@pytest.mark.parametrize("case", CASES)
def test_likelihood_and_information_criteria_match_lme4(case: str) -> None:
    _, reference, _, res = fitted(case)
    assert -2 * res.llf <= reference["objective"] + 1e-3
    assert res.llf == pytest.approx(reference["logLik"], abs=1e-3)
    assert res.aic == pytest.approx(reference["AIC"], abs=1e-2)
    assert res.bic == pytest.approx(reference["BIC"], abs=1e-2)
    assert res.nobs == reference["nobs"]
    assert res.is_singular is bool(reference["singular"])
    assert res.method == reference["method"]
    assert res.sigma == pytest.approx(reference["sigma"], rel=1e-4)
    np.testing.assert_allclose(res.theta, np.atleast_1d(reference["theta"]), atol=1e-3)
    assert [normalise_name(n) for n in res.theta_names] == [
        normalise_name(n) for n in np.atleast_1d(reference["theta_names"])
    ]
    assert res.ngroups == reference["ngrps"]
    assert list(res.ngroups) == list(reference["ngrps"])


@pytest.mark.parametrize("case", CASES)
def test_random_effects_and_conditional_sds_match_lme4(case: str) -> None:
    _, reference, _, res = fitted(case)
    assert len(res.random_effects) == len(reference["ranef"])
    for block in reference["ranef"]:
        (key,) = [
            k for k in res.random_effects if normalise_group(k) == normalise_group(block["group"])
        ]
        levels = [str(level) for level in block["levels"]]
        values = np.array(block["values"], dtype=float).reshape(len(levels), -1)
        sds = np.array(block["cond_sd"], dtype=float).reshape(values.shape)
        for ours, theirs, kind in [
            (res.random_effects[key], values, "ranef"),
            (res.random_effects_se[key], sds, "cond_sd"),
        ]:
            if isinstance(ours, pd.Series):  # a lone intercept
                assert np.atleast_1d(block["terms"]).tolist() == ["(Intercept)"]
                frame = ours.to_frame()
            else:
                frame = ours
                assert [normalise_name(c) for c in frame.columns] == [
                    normalise_name(c) for c in np.atleast_1d(block["terms"])
                ]
            frame = frame.set_axis(frame.index.map(str))
            got = frame.loc[levels].to_numpy(dtype=float)
            if kind == "ranef":
                scale = np.maximum(np.max(np.abs(theirs), axis=0), 1e-8 * reference["sigma"])
                assert np.max(np.abs(got - theirs) / scale) <= 1e-3
            else:
                assert np.max(np.abs(got - theirs) / np.maximum(np.abs(theirs), 1e-8)) <= 1e-3


@pytest.mark.parametrize("case", CASES)
def test_fitted_values_and_residuals_match_lme4(case: str) -> None:
    design, reference, _, res = fitted(case)
    sd_y = float(np.std(np.asarray(reference["fitted"]) + np.asarray(reference["resid"])))
    assert np.max(np.abs(res.fittedvalues.to_numpy() - reference["fitted"])) / sd_y <= 1e-4
    assert np.max(np.abs(res.resid.to_numpy() - reference["resid"])) / sd_y <= 1e-4
    assert res.fittedvalues.index.equals(design.row_index)
    assert res.resid.index.equals(design.row_index)
    np.testing.assert_allclose(res.fittedvalues + res.resid, design.y, rtol=1e-12)


# --- identities ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_identities(case: str) -> None:
    _, _, core, res = fitted(case)
    np.testing.assert_array_equal(res.tvalues, res.fe_params / res.bse)
    np.testing.assert_array_equal(res.bse, np.sqrt(np.diag(res.fe_cov)))
    assert res.scale == res.sigma**2
    assert res.llf == -core["objective"] / 2
    npar = len(res.fe_params) + len(res.theta) + 1
    assert res.aic == pytest.approx(-2 * res.llf + 2 * npar, rel=1e-15)
    assert res.bic - res.aic == pytest.approx((math.log(res.nobs) - 2) * npar, rel=1e-12)

    vc = res.varcorr
    variances = vc[vc["var2"].isna()]
    np.testing.assert_allclose(variances["sdcor"] ** 2, variances["vcov"], rtol=1e-12)
    assert vc["grp"].iloc[-1] == "Residual"
    assert vc["var1"].iloc[-1] is None and vc["var2"].iloc[-1] is None
    assert vc["vcov"].iloc[-1] == res.scale and vc["sdcor"].iloc[-1] == res.sigma
    for _, row in vc[vc["var2"].notna()].iterrows():
        sd = {r.var1: r.sdcor for r in variances[variances["grp"] == row["grp"]].itertuples()}
        assert row["sdcor"] == pytest.approx(row["vcov"] / (sd[row["var1"]] * sd[row["var2"]]))

    pd.testing.assert_frame_equal(res.varcov, vc.drop(columns="sdcor"))
    assert res.variance_components["Residual"] == res.scale
    for name, component in res.variance_components.items():
        rows = vc[vc["grp"] == name]
        if isinstance(component, float):
            assert len(rows) == 1 and rows["vcov"].iloc[0] == component
        else:
            for r in rows.itertuples():
                assert component.loc[r.var1, r.var2 if r.var2 is not None else r.var1] == r.vcov

    for key, modes in res.random_effects.items():
        se = res.random_effects_se[key]
        assert type(se) is type(modes)
        assert se.index.equals(modes.index)
        assert (np.asarray(se) >= 0).all()
    assert res.optimization.theta is res.theta
    assert res.optimization.n_evals == core["n_evals"]
    assert res.converged is True and res.optimization.converged is True


def test_uncorrelated_terms_merge_into_one_frame() -> None:
    design, _, _, res = fitted("sleepstudy_uncorr")
    assert [t.group for t in design.terms] == ["Subject", "Subject"]
    assert list(res.random_effects) == ["Subject"]
    modes = res.random_effects["Subject"]
    assert isinstance(modes, pd.DataFrame)
    assert list(modes.columns) == ["Intercept", "Days"]
    assert modes.shape == (18, 2)
    assert list(res.random_effects_se["Subject"].columns) == ["Intercept", "Days"]
    assert list(res.variance_components) == ["Subject", "Subject.1", "Residual"]
    assert list(res.varcorr["grp"]) == ["Subject", "Subject.1", "Residual"]
    assert res.theta_names == ("Subject.Intercept", "Subject.Days")
    assert res.ngroups == {"Subject": 18}


def test_nested_terms_are_series_named_after_their_group() -> None:
    design, _, _, res = fitted("pastes_nested")
    assert [t.group for t in design.terms] == ["cask:batch", "batch"]
    assert list(res.random_effects) == ["cask:batch", "batch"]
    for group, n in [("cask:batch", 30), ("batch", 10)]:
        for table in (res.random_effects, res.random_effects_se):
            assert isinstance(table[group], pd.Series)
            assert table[group].name == group
            assert len(table[group]) == n
    assert "a:A" in res.random_effects["cask:batch"].index
    assert res.ngroups == {"cask:batch": 30, "batch": 10}
    assert isinstance(res.variance_components["batch"], float)


def test_vector_term_covariance_matrix() -> None:
    _, reference, _, res = fitted("sleepstudy_slopes")
    cov = res.variance_components["Subject"]
    assert isinstance(cov, pd.DataFrame)
    assert list(cov.index) == list(cov.columns) == ["Intercept", "Days"]
    np.testing.assert_allclose(cov.to_numpy(), cov.to_numpy().T)
    lme4 = {(r["var1"], r["var2"]): r["vcov"] for r in reference["varcorr"]}
    assert cov.loc["Intercept", "Days"] == pytest.approx(lme4[("(Intercept)", "Days")], rel=1e-3)
    assert list(res.varcorr["var1"]) == ["Intercept", "Days", "Intercept", None]
    assert list(res.varcorr["var2"]) == [None, None, "Days", None]


def test_result_is_frozen_and_repr_is_short() -> None:
    _, _, _, res = fitted("sleepstudy_slopes")
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.sigma = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        res.theta[0] = 0.0
    text = repr(res)
    assert text.startswith("LmmResult(formula='Reaction ~ Days + (Days | Subject)', method='REML'")
    assert "nobs=180" in text and "llf=-871.81" in text
    assert "fe_params" not in text and len(text) < 200


# --- warnings ------------------------------------------------------------------------------------


def test_singular_fit_warns_and_names_the_term() -> None:
    _, _, _, res = fitted("dyestuff2_singular")
    assert res.is_singular is True
    found = fit_warnings(res)
    assert [category for category, _ in found] == [SingularFitWarning]
    message = found[0][1]
    assert message.startswith("boundary (singular) fit")
    assert "Batch Intercept" in message and "isSingular" in message


@pytest.mark.parametrize("case", [c for c in CASES if c != "dyestuff2_singular"])
def test_regular_fits_do_not_warn(case: str) -> None:
    assert fit_warnings(fitted(case)[3]) == []


def with_record(case: str, theta: list[float], **record) -> LmmResult:
    design, reference = oracle_case(case)
    core = dense_fit_pieces(design, np.array(theta), reference["method"] == "REML")
    core.update(record)
    return LmmResult.from_core(design, core, reference["method"])


def test_perfect_correlation_is_a_singular_fit() -> None:
    res = with_record(
        "sleepstudy_slopes",
        [1.0, 0.2, 0.0],
        n_evals=10,
        status="ok",
        converged=True,
        gradient=np.zeros(3),
    )
    assert res.is_singular is True
    ((category, message),) = fit_warnings(res)
    assert category is SingularFitWarning
    assert "correlation of Subject Intercept and Days is estimated as +1" in message


def test_gradient_at_a_boundary_pointing_outward_is_fine() -> None:
    record = {"n_evals": 10, "status": "ok", "converged": True}
    res = with_record("dyestuff2_singular", [0.0], gradient=np.array([0.5]), **record)
    assert [c for c, _ in fit_warnings(res)] == [SingularFitWarning]
    res = with_record("dyestuff2_singular", [0.0], gradient=np.array([-0.5]), **record)
    assert [c for c, _ in fit_warnings(res)] == [SingularFitWarning, ConvergenceWarning]
    res = with_record("dyestuff_reml", [0.85], gradient=np.array([0.01]), **record)
    ((category, message),) = fit_warnings(res)
    assert category is ConvergenceWarning
    assert "0.01" in message and "Batch.Intercept" in message


def test_a_steep_but_flat_in_newton_terms_optimum_is_converged() -> None:
    # lme4's checkConv: a plain gradient of 0.01 is fine when the scaled gradient R⁻¹g (a Newton
    # step) is below the tolerance; both large is a warning.
    record = {"n_evals": 10, "status": "ok", "converged": True}
    res = with_record(
        "dyestuff_reml", [0.85], gradient=np.array([0.01]), scaled_gradient=[1e-5], **record
    )
    assert fit_warnings(res) == []
    res = with_record(
        "dyestuff_reml", [0.85], gradient=np.array([0.01]), scaled_gradient=[0.5], **record
    )
    ((category, message),) = fit_warnings(res)
    assert category is ConvergenceWarning and "0.01" in message


def test_optimiser_failure_warns() -> None:
    res = with_record(
        "dyestuff_reml",
        [0.85],
        n_evals=1234,
        status="max evaluations reached",
        converged=False,
        gradient=np.zeros(1),
    )
    assert res.converged is False
    ((category, message),) = fit_warnings(res)
    assert category is ConvergenceWarning
    assert "max evaluations reached" in message and "1234" in message


def test_estimates_without_an_optimiser_record() -> None:
    res = with_record("dyestuff_reml", [0.85])
    record = res.optimization
    assert isinstance(record, OptimizationRecord)
    assert record.converged is False and record.n_evals == 0
    assert np.isnan(record.gradient).all()
    assert [c for c, _ in fit_warnings(res)] == [ConvergenceWarning]


def test_from_core_rejects_bad_input() -> None:
    design, _, core, _ = fitted("dyestuff_reml")
    with pytest.raises(InterlaceError, match="method must be"):
        LmmResult.from_core(design, core, "GLS")
    with pytest.raises(InterlaceError, match="2 fixed effects for 1 names"):
        LmmResult.from_core(design, {**core, "beta": np.zeros(2)}, "REML")
    with pytest.raises(InterlaceError, match="θ values"):
        LmmResult.from_core(design, {**core, "theta": np.ones(2)}, "REML")
    assert LmmResult.from_core(design, core, "reml").method == "REML"


# --- summary -------------------------------------------------------------------------------------


def test_summary_reml_slopes() -> None:
    _, _, _, res = fitted("sleepstudy_slopes")
    summary = res.summary()
    assert isinstance(summary, Summary)
    text = str(summary)
    assert repr(summary) == text
    lines = text.splitlines()
    assert lines[0] == "Linear mixed model fit by REML ['LmmResult']"
    assert lines[1] == "Formula: Reaction ~ Days + (Days | Subject)"
    assert "REML criterion at convergence: 1743.6" in lines
    # lme4: -3.9536 -0.4634  0.0231  0.4634  5.1793
    assert "-3.9536 -0.4634  0.0231  0.4634  5.1793" in lines
    assert any(re.fullmatch(r" Groups +Name +Variance Std\.Dev\. Corr", line) for line in lines)
    assert any(re.fullmatch(r" Subject +Intercept +612\.\d\d +24\.74\d", line) for line in lines)
    assert any(re.fullmatch(r" +Days +35\.07 +5\.922 +0\.07", line) for line in lines)
    assert any(re.fullmatch(r" Residual +654\.94 +25\.592", line) for line in lines)
    assert "Number of obs: 180, groups:  Subject, 18" in lines
    # lmerTest's coefficient table (Satterthwaite df, p-values, stars)
    assert "Intercept  251.405      6.825  17.000  36.838  < 2e-16 ***" in lines
    assert "Days        10.467      1.546  17.000   6.771 3.26e-06 ***" in lines
    assert "Correlation of Fixed Effects:" in lines
    assert re.search(r"^Days -0\.138$", text, re.MULTILINE)
    assert summary.fixed_effects.columns.tolist() == [
        "Estimate",
        "Std. Error",
        "df",
        "t value",
        "Pr(>|t|)",
    ]
    assert summary.scaled_residuals.index.tolist() == ["Min", "1Q", "Median", "3Q", "Max"]
    assert summary.random_effects["Groups"].tolist() == ["Subject", "Subject", "Residual"]
    assert summary.fixed_effects_correlation.shape == (2, 2)


def test_summary_ml_reports_information_criteria() -> None:
    text = str(fitted("sleepstudy_slopes_ml")[3].summary())
    lines = text.splitlines()
    assert lines[0] == "Linear mixed model fit by maximum likelihood ['LmmResult']"
    header = lines.index("     AIC      BIC   logLik deviance df.resid")
    assert lines[header + 1].split() == ["1763.9", "1783.1", "-876.0", "1751.9", "174"]
    assert "REML criterion" not in text


def test_summary_nested_and_uncorrelated() -> None:
    lines = str(fitted("pastes_nested")[3].summary()).splitlines()
    assert "Number of obs: 60, groups:  cask:batch, 30; batch, 10" in lines
    assert " cask:batch Intercept 8.434    2.9041" in lines  # lme4 prints 8.434 / 2.9041
    assert "Intercept  60.0533     0.6769  9.0000   88.72 1.49e-14 ***" in lines  # lmerTest
    assert "Correlation of Fixed Effects:" not in lines
    lines = str(fitted("sleepstudy_uncorr")[3].summary()).splitlines()
    assert any(re.fullmatch(r" Subject\.1 +Days +35\.86 +5\.988", line) for line in lines)


def test_summary_of_a_singular_fit_says_so() -> None:
    text = str(fitted("dyestuff2_singular")[3].summary())
    assert " Batch    Intercept  0.00    0.000" in text.splitlines()
    assert text.rstrip().splitlines()[-1].startswith("boundary (singular) fit")


def test_r_format_matches_r() -> None:
    # format(c(612.100158, 35.0717144, 654.940008), digits = 4) in R
    assert _r_format([612.100158, 35.0717144, 654.940008], 4) == ["612.10", " 35.07", "654.94"]
    # format(c(0, 13.8063096), digits = 4); format(c(8.4336659, 1.6573109, 0.6779999), digits = 4)
    assert _r_format([0.0, 13.8063096], 4) == [" 0.00", "13.81"]
    assert _r_format([8.4336659, 1.6573109, 0.6779999], 4) == ["8.434", "1.657", "0.678"]
