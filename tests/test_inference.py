"""Inference against lmerTest 3.1-3 and lme4 1.1-31: Satterthwaite t and F tests, likelihood-ratio
tests, Wald and profile confidence intervals, prediction on new data; and the distribution
functions of ``interlace.inference`` against scipy.

Where a number is not in the committed reference fixtures (tests/data/reference), it was computed
in R 4 with lme4 1.1-31 and lmerTest 3.1-3 on the same CSVs (factors as in the fixtures) and is
written here with the R call that produced it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest
import scipy.special
import scipy.stats

import interlace
from interlace import inference
from interlace.exceptions import DataError, InputTypeError, InterlaceError, InterlaceWarning


class FittedCase(NamedTuple):
    reference: dict[str, Any]
    result: Any


def interlace_call(reference: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(formula, keyword arguments)`` of the fit a reference file records, as the checker."""
    call = dict(reference["interlace"])
    formula = call.pop("formula")
    groups = call.get("groups")
    if isinstance(groups, list) and len(groups) == 1:
        call["groups"] = groups[0]
    call["method"] = reference["method"]
    return formula, call


def max_relative_error(ours: Any, theirs: Any, floor: float = 1.0) -> float:
    """max |ours - theirs| / max(|theirs|, floor), elementwise."""
    ours = np.asarray(ours, dtype=float)
    theirs = np.asarray(theirs, dtype=float)
    assert ours.shape == theirs.shape, f"shape {ours.shape}, R has {theirs.shape}"
    return float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), floor)))


SATTERTHWAITE_DF_TOLERANCE = 2e-3  # relative; the conformance checker allows 1e-2
LOG10_P_TOLERANCE = 2e-3  # relative to max(1, |log10 p|), as the checker
CONFINT_TOLERANCE = 2e-3  # relative to max(1, |lme4|), as the checker
LRT_TOLERANCE = 1e-5  # relative
PREDICT_TOLERANCE = 1e-6  # relative to max(1, |lme4|)


def fit_case(reference_case, reference_frame, case_id: str, **overrides) -> FittedCase:
    reference = reference_case(case_id)
    data = reference_frame(reference["dataset"], reference.get("factor_columns", []))
    formula, arguments = interlace_call(reference)
    arguments.update(overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", interlace.SingularFitWarning)
        return FittedCase(reference, interlace.fit(formula, data=data, **arguments))


@pytest.fixture(scope="module")
def sleepstudy(reference_case, reference_frame) -> FittedCase:
    return fit_case(reference_case, reference_frame, "sleepstudy_slopes")


@pytest.fixture(scope="module")
def sleepstudy_data(reference_frame) -> pd.DataFrame:
    return reference_frame("sleepstudy", ["Subject"])


# --- distribution functions against scipy --------------------------------------------------------

T_VALUES = [0.0, 1e-3, 0.3, 1.0, 1.96, 2.5, 6.0, 15.0, 40.0]
DEGREES = [0.5, 1.0, 2.5, 5.486, 17.0, 100.0, 2609.06, 1e5, 1e7]


def close_in_log(ours: float, theirs: float, tolerance: float = 1e-9) -> bool:
    """Agreement to ``tolerance`` relatively, for probabilities down to 1e-300."""
    if theirs == 0.0:
        return ours < 1e-300
    return abs(ours - theirs) <= tolerance * abs(theirs)


@pytest.mark.parametrize("df", DEGREES)
def test_student_t_two_sided_matches_scipy(df: float) -> None:
    for t in T_VALUES:
        ours = inference._student_t_two_sided(t, df)
        theirs = 2.0 * scipy.stats.t.sf(t, df)
        assert close_in_log(ours, theirs), (t, df, ours, theirs)
        assert close_in_log(inference._student_t_two_sided(-t, df), theirs)
    assert inference._student_t_two_sided(2.0, math.inf) == pytest.approx(
        2.0 * scipy.stats.norm.sf(2.0), rel=1e-14
    )
    assert math.isnan(inference._student_t_two_sided(1.0, math.nan))


@pytest.mark.parametrize("df", DEGREES)
def test_student_t_cdf_and_quantile_match_scipy(df: float) -> None:
    for t in [-6.0, -1.0, 0.0, 0.5, 3.0]:
        assert inference._student_t_cdf(t, df) == pytest.approx(scipy.stats.t.cdf(t, df), rel=1e-9)
    for p in [1e-6, 0.025, 0.3, 0.5, 0.95, 0.975, 0.9995]:
        expected = scipy.stats.t.ppf(p, df)
        assert inference._student_t_quantile(p, df) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("df1", [1.0, 2.0, 3.5, 10.0])
def test_f_upper_tail_matches_scipy(df1: float) -> None:
    for df2 in [0.7, 2.0, 16.9998, 254.0, 1e6]:
        for f in [0.0, 0.01, 0.5, 1.0, 3.0, 45.85, 750.0]:
            ours = inference._f_upper(f, df1, df2)
            theirs = scipy.stats.f.sf(f, df1, df2)
            assert close_in_log(ours, theirs), (f, df1, df2, ours, theirs)


@pytest.mark.parametrize("df", [0.5, 1.0, 2.0, 3.0, 7.0, 30.0, 250.0])
def test_chi_square_upper_tail_matches_scipy(df: float) -> None:
    for x in [0.0, 1e-4, 0.5, 1.0, 3.84, 23.5365, 80.0, 600.0, 1500.0]:
        ours = inference._chi_square_upper(x, df)
        theirs = scipy.stats.chi2.sf(x, df)
        assert close_in_log(ours, theirs), (x, df, ours, theirs)


def test_incomplete_beta_and_gamma_match_scipy() -> None:
    rng = np.random.default_rng(20261125)
    for a, b, x in zip(
        rng.gamma(1.0, 20.0, 300), rng.gamma(1.0, 5.0, 300), rng.random(300), strict=True
    ):
        ours = inference._regularized_beta(a, b, x, 1.0 - x)
        assert ours == pytest.approx(scipy.special.betainc(a, b, x), rel=1e-9, abs=1e-300)
    for a, x in zip(rng.gamma(1.0, 20.0, 300), rng.gamma(1.0, 25.0, 300), strict=True):
        ours = inference._upper_regularized_gamma(a, x)
        assert ours == pytest.approx(scipy.special.gammaincc(a, x), rel=1e-9, abs=1e-300)


def test_normal_quantile_matches_scipy() -> None:
    for p in [1e-300, 1e-12, 1e-4, 0.01, 0.02425, 0.025, 0.3, 0.5, 0.8, 0.975, 0.999999]:
        ours = inference._normal_quantile(p)
        assert ours == pytest.approx(scipy.stats.norm.ppf(p), rel=1e-13, abs=1e-15)
    assert inference._normal_quantile(0.0) == -math.inf
    assert math.isnan(inference._normal_quantile(1.5))


def test_richardson_derivatives_are_exact_on_polynomials() -> None:
    def cubic(x: np.ndarray) -> float:
        return float(x[0] ** 3 + 2.0 * x[0] * x[1] + 5.0 * x[1] ** 2 + x[2])

    x = np.array([1.5, -0.7, 0.0])
    expected = np.array([[9.0, 2.0, 0.0], [2.0, 10.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(inference._hessian(cubic, x), expected, atol=1e-7)
    jacobian = inference._jacobian(lambda v: np.array([[v[0] * v[1], v[1] ** 2]]), x)
    assert jacobian.shape == (3, 1, 2)
    np.testing.assert_allclose(jacobian[:, 0, :], [[-0.7, 0.0], [1.5, -1.4], [0.0, 0.0]], atol=1e-9)


# --- Satterthwaite t tests against lmerTest (every reference case) -------------------------------


@pytest.fixture(scope="module")
def case(reference_id, reference_case, reference_frame) -> FittedCase:
    return fit_case(reference_case, reference_frame, reference_id)


def test_satterthwaite_df_and_pvalues_match_lmertest(case: FittedCase) -> None:
    reference, result = case
    df = result.fe_df
    assert list(df.index) == list(result.fe_params.index)
    error = max_relative_error(df, list(reference["satterthwaite_df"].values()), floor=1e-8)
    assert error <= SATTERTHWAITE_DF_TOLERANCE, f"df max relative error {error:.2e}"
    ours = np.log10(np.maximum(result.fe_pvalues.to_numpy(), 1e-300))
    theirs = np.log10(np.maximum(list(reference["p_values"].values()), 1e-300))
    error = max_relative_error(ours, theirs, floor=1.0)
    assert error <= LOG10_P_TOLERANCE, f"log10 p max relative error {error:.2e}"


def test_satterthwaite_at_a_boundary_fit_is_n_minus_p(reference_case, reference_frame) -> None:
    # Dyestuff2: θ̂ = 0. lmerTest differentiates through θ = 0 (the deviance is even in θ), so
    # cov(β̂) does not move with θ and the df is that of σ alone: n - p = 29.
    _, result = fit_case(reference_case, reference_frame, "dyestuff2_singular")
    assert result.fe_df.iloc[0] == pytest.approx(29.0, rel=1e-8)


def test_satterthwaite_is_computed_once_per_result(sleepstudy: FittedCase) -> None:
    result = sleepstudy.result
    first = inference._varpar_covariance(result)
    assert inference._varpar_covariance(result) is first
    pd.testing.assert_series_equal(result.fe_df, result.fe_df)


# --- contest: F tests of L β = rhs ---------------------------------------------------------------


def test_contest_matches_lmertest(sleepstudy: FittedCase) -> None:
    res = sleepstudy.result
    # contest(fm, diag(2))
    table = interlace.contest(res, np.eye(2))
    assert list(table.columns) == ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
    row = table.iloc[0]
    assert row["NumDF"] == 2
    assert row["DenDF"] == pytest.approx(16.9998460493, rel=1e-4)
    assert row["F value"] == pytest.approx(749.950453899, rel=1e-4)
    assert row["Sum Sq"] == pytest.approx(982345.112943, rel=1e-4)
    assert row["Mean Sq"] == pytest.approx(491172.556471, rel=1e-4)
    assert math.log10(row["Pr(>F)"]) == pytest.approx(math.log10(2.63509709379e-17), rel=1e-4)
    # contest(fm, rbind(c(1,2), c(0,1), c(1,3))): rank 2, the same F
    deficient = interlace.contest(res, [[1, 2], [0, 1], [1, 3]]).iloc[0]
    assert deficient["NumDF"] == 2
    assert deficient["F value"] == pytest.approx(749.950453899, rel=1e-4)
    assert deficient["DenDF"] == pytest.approx(16.9998423013, rel=1e-4)
    # contest(fm, diag(2), rhs = c(250, 10))
    shifted = interlace.contest(res, np.eye(2), rhs=[250, 10]).iloc[0]
    assert shifted["F value"] == pytest.approx(0.0769025822332, rel=1e-4)
    assert shifted["Pr(>F)"] == pytest.approx(0.926300317008, rel=1e-4)
    # contest(fm, c(0, 1), rhs = 10)
    one = interlace.contest(res, [0, 1], rhs=10).iloc[0]
    assert one["F value"] == pytest.approx(0.091382845568, rel=1e-4)
    assert one["Pr(>F)"] == pytest.approx(0.766093723469, rel=1e-4)


def test_contest_of_one_row_is_the_t_test(sleepstudy: FittedCase) -> None:
    res = sleepstudy.result
    for j, name in enumerate(res.fe_params.index):
        row = interlace.contest(res, np.eye(2)[j]).iloc[0]
        assert row["NumDF"] == 1
        assert row["F value"] == pytest.approx(res.tvalues[name] ** 2, rel=1e-12)
        assert row["DenDF"] == pytest.approx(res.fe_df[name], rel=1e-12)
        assert row["Pr(>F)"] == pytest.approx(res.fe_pvalues[name], rel=1e-9)


def test_contest_t_table_matches_lmertest(sleepstudy: FittedCase) -> None:
    res = sleepstudy.result
    # contest(fm, rbind(c(1, 0), c(1, 5)), joint = FALSE), and with level = 0.9
    table = interlace.contest(res, [[1, 0], [1, 5]], joint=False)
    expected = pd.DataFrame(
        [
            [
                251.405104848,
                6.82459669495,
                16.9997262885,
                36.8380896463,
                237.006446769,
                265.803762928,
                1.17155811121e-17,
            ],
            [
                303.741534646,
                9.58127739201,
                16.9997993903,
                31.7015698658,
                283.526788178,
                323.956281115,
                1.45294183324e-16,
            ],
        ],
        columns=["Estimate", "Std. Error", "df", "t value", "lower", "upper", "Pr(>|t|)"],
    )
    assert list(table.columns) == list(expected.columns)
    np.testing.assert_allclose(table.iloc[:, :6], expected.iloc[:, :6], rtol=1e-4)
    np.testing.assert_allclose(
        np.log10(table["Pr(>|t|)"]), np.log10(expected["Pr(>|t|)"]), rtol=1e-4
    )
    narrow = interlace.contest(res, [[1, 0], [1, 5]], joint=False, level=0.9)
    np.testing.assert_allclose(narrow["lower"], [239.532979538, 287.073868735], rtol=1e-5)
    np.testing.assert_allclose(narrow["upper"], [263.277230159, 320.409200558], rtol=1e-5)


def test_contest_aligns_labelled_contrasts(sleepstudy: FittedCase) -> None:
    res = sleepstudy.result
    by_name = interlace.contest(res, pd.Series({"Days": 1.0}))
    by_position = interlace.contest(res, [0.0, 1.0])
    pd.testing.assert_frame_equal(by_name, by_position)
    frame = pd.DataFrame({"Days": [1.0, 0.0], "Intercept": [0.0, 1.0]}, index=["slope", "icpt"])
    rows = interlace.contest(res, frame, joint=False)
    assert list(rows.index) == ["slope", "icpt"]
    assert rows.loc["slope", "Estimate"] == pytest.approx(res.fe_params["Days"])
    with pytest.raises(InterlaceError, match="not fixed effects"):
        interlace.contest(res, pd.Series({"days": 1.0}))
    with pytest.raises(InterlaceError, match="one column per fixed effect"):
        interlace.contest(res, [1.0, 0.0, 0.0])
    with pytest.raises(InputTypeError):
        interlace.contest(res, ["a", "b"])


# --- likelihood-ratio tests ----------------------------------------------------------------------


def test_anova_matches_lme4_reference(
    sleepstudy_data: pd.DataFrame, sleepstudy: FittedCase
) -> None:
    expected = sleepstudy.reference["anova_lrt"]
    m0 = interlace.fit("Reaction ~ 1", sleepstudy_data, random=["(Days | Subject)"], method="ML")
    m1 = interlace.fit("Reaction ~ Days", sleepstudy_data, random=["(Days | Subject)"], method="ML")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two ML fits: nothing to refit, no warning
        table = interlace.anova(m1, m0, names=["m1", "m0"])
    assert list(table.columns) == [
        "npar",
        "AIC",
        "BIC",
        "logLik",
        "deviance",
        "Chisq",
        "Df",
        "Pr(>Chisq)",
    ]
    assert list(table.index) == ["m0", "m1"]  # ordered by npar, as lme4
    assert table["npar"].tolist() == [5, 6]
    np.testing.assert_allclose(table["logLik"], expected["logLik"], rtol=LRT_TOLERANCE)
    assert table["Chisq"].iloc[1] == pytest.approx(expected["chisq"], rel=LRT_TOLERANCE)
    assert table["Df"].iloc[1] == expected["df"]
    assert table["Pr(>Chisq)"].iloc[1] == pytest.approx(expected["p"], rel=1e-4)
    assert table.iloc[0, 5:].isna().all()


def test_anova_refits_reml_fits_with_ml(sleepstudy_data: pd.DataFrame) -> None:
    fm0 = interlace.fit("Reaction ~ 1", sleepstudy_data, random=["(Days | Subject)"])
    fm = interlace.fit("Reaction ~ Days", sleepstudy_data, random=["(Days | Subject)"])
    fm2 = interlace.fit("Reaction ~ Days", sleepstudy_data, groups="Subject")
    with pytest.warns(InterlaceWarning, match=r"refitting model\(s\) with ML \(instead of REML\)"):
        table = interlace.anova(fm, fm0, fm2, names=["fm", "fm0", "fm2"])
    # anova(fm, fm0, fm2) in R (lme4 refits all three by ML)
    expected = pd.DataFrame(
        {
            "npar": [4, 5, 6],
            "AIC": [1802.07864301, 1785.47588196, 1763.93934446],
            "BIC": [1814.85047041, 1801.44066622, 1783.09708557],
            "logLik": [-897.039321503, -887.737940981, -875.969672232],
            "deviance": [1794.07864301, 1775.47588196, 1751.93934446],
            "Chisq": [np.nan, 18.6027610442, 23.5365374979],
            "Df": [np.nan, 1.0, 1.0],
            "Pr(>Chisq)": [np.nan, 1.60987218752e-05, 1.22563995720e-06],
        },
        index=["fm2", "fm0", "fm"],
    )
    assert list(table.index) == list(expected.index)
    np.testing.assert_allclose(table.to_numpy(float), expected.to_numpy(float), rtol=1e-6)
    # anova(fm, fm0, refit = FALSE): REML criteria, as lme4 reports them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = interlace.anova(fm, fm0, refit=False)
    assert list(kept.index) == [fm0.formula, fm.formula]
    np.testing.assert_allclose(kept["logLik"], [-884.922451931, -871.814135980], rtol=1e-7)
    assert kept["Chisq"].iloc[1] == pytest.approx(26.2166319027, rel=1e-5)
    assert kept["Pr(>Chisq)"].iloc[1] == pytest.approx(3.05182734229e-07, rel=1e-4)


def test_anova_rejects_what_it_cannot_compare(
    sleepstudy_data: pd.DataFrame, sleepstudy: FittedCase
) -> None:
    res = sleepstudy.result
    with pytest.raises(InterlaceError, match="two or more models"):
        interlace.anova(res)
    fewer = interlace.fit(
        "Reaction ~ Days", sleepstudy_data.iloc[:170], random=["(Days | Subject)"], method="ML"
    )
    with pytest.raises(InterlaceError, match="same number of observations"):
        interlace.anova(res, fewer)
    logged = interlace.fit(
        "np.log(Reaction) ~ Days", sleepstudy_data, random=["(Days | Subject)"], method="ML"
    )
    with pytest.raises(InterlaceError, match="different responses"):
        interlace.anova(res, logged, refit=False)
    with pytest.raises(InputTypeError):
        interlace.anova(res, "m1")
    with pytest.raises(InterlaceError, match="names"):
        interlace.anova(res, res, names=["a"])


def test_refit_ml_reaches_the_ml_optimum(reference_case, reference_frame) -> None:
    reml = fit_case(reference_case, reference_frame, "sleepstudy_slopes").result
    ml_reference = reference_case("sleepstudy_slopes_ml")
    refitted = inference.refit_ml(reml)
    assert refitted.method == "ML"
    assert -2.0 * refitted.llf == pytest.approx(ml_reference["objective"], abs=1e-6)
    assert inference.refit_ml(refitted) is refitted


# --- confidence intervals ------------------------------------------------------------------------


def test_confint_wald_matches_lme4(sleepstudy: FittedCase) -> None:
    res = sleepstudy.result
    ci = res.confint()  # Wald by default
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    assert list(ci.index) == [
        "sd_Intercept|Subject",
        "cor_Days.Intercept|Subject",
        "sd_Days|Subject",
        "sigma",
        "Intercept",
        "Days",
    ]
    assert ci.iloc[:4].isna().all().all()  # lme4's Wald intervals leave variances NA
    # confint(fm, method = "Wald")
    np.testing.assert_allclose(
        ci.iloc[4:], [[238.02914111736, 264.7810685796], [7.43759392987, 13.4969779893]], rtol=1e-6
    )
    assert list(res.confint(method="Wald", level=0.9).columns) == ["5 %", "95 %"]
    assert list(res.confint(level=0.999).columns) == ["0.05 %", "99.95 %"]
    only = res.confint(parm=["Days", "sigma"])
    assert list(only.index) == ["sigma", "Days"]
    with pytest.raises(InterlaceError, match="unknown parameters"):
        res.confint(parm="slope")
    with pytest.raises(InterlaceError, match="unknown confint method"):
        res.confint(method="bca")  # "boot" is percentile bootstrap (test_bootstrap.py)
    with pytest.raises(InterlaceError, match="level"):
        res.confint(level=95)


def assert_confint_close(ci: pd.DataFrame, expected: list[list[float]]) -> None:
    error = max_relative_error(ci.to_numpy(float), expected)
    assert error <= CONFINT_TOLERANCE, f"max relative error {error:.2e}\n{ci}"


def test_confint_profile_matches_lme4(sleepstudy: FittedCase) -> None:
    reference = sleepstudy.reference["confint_profile"]
    ci = sleepstudy.result.confint(method="profile")
    assert len(ci) == len(reference["names"])
    assert list(ci.index)[:4] == [
        "sd_Intercept|Subject",
        "cor_Days.Intercept|Subject",
        "sd_Days|Subject",
        "sigma",
    ]
    assert_confint_close(ci, np.column_stack([reference["lower"], reference["upper"]]).tolist())


# confint(fm, oldNames = FALSE) in R, on the fixtures' data.
PROFILE_INTERVALS = {
    "dyestuff2_singular": [  # boundary fit: the sd's lower limit is the bound 0
        [0.0, 2.084043489],
        [2.892831020, 4.815832552],
        [4.312100217, 7.019092347],
    ],
    "penicillin_crossed": [
        [0.6335659670, 1.1821039760],
        [1.0957893024, 3.5562909526],
        [0.4858454002, 0.6294534785],
        [21.2666273836, 24.6778176162],
    ],
    "pastes_nested": [  # lme4's cask:batch comes first (more levels); batch's sd reaches 0
        [2.1579337082, 4.053588944],
        [0.0, 2.946591097],
        [0.6520233593, 1.085448104],
        [58.6636503787, 61.443016368],
    ],
    "sleepstudy_uncorr": [
        [15.258646678, 37.786470900],
        [3.964073856, 8.769159162],
        [22.880554648, 28.787597595],
        [237.572148011, 265.238061759],
        [7.334066829, 13.600505107],
    ],
}


@pytest.mark.parametrize("case_id", sorted(PROFILE_INTERVALS))
def test_confint_profile_matches_lme4_on_other_designs(
    case_id: str, reference_case, reference_frame
) -> None:
    _, result = fit_case(reference_case, reference_frame, case_id)
    ci = result.confint(method="profile")
    assert_confint_close(ci, PROFILE_INTERVALS[case_id])
    if case_id == "sleepstudy_uncorr":
        assert list(ci.index)[:3] == ["sd_Intercept|Subject", "sd_Days|Subject.1", "sigma"]


def test_confint_profile_at_level_0_9(sleepstudy: FittedCase) -> None:
    # confint(fm, oldNames = FALSE, level = 0.9)
    ci = sleepstudy.result.confint(
        method="profile", level=0.9, parm=["cor_Days.Intercept|Subject", "Days"]
    )
    assert list(ci.columns) == ["5 %", "95 %"]
    assert_confint_close(ci, [[-0.4050841091, 0.5954941068], [7.9005079994, 13.0340638213]])


@pytest.mark.slow
def test_confint_profile_with_a_correlated_categorical_slope(
    reference_case, reference_frame
) -> None:
    _, result = fit_case(reference_case, reference_frame, "psycholing_slopes")
    ci = result.confint(method="profile")
    assert_confint_close(
        ci,
        [
            [30.7435043582, 47.8144910214],
            [-0.3005492899, 0.5048698619],
            [11.2296560191, 25.1490129905],
            [14.3297114847, 24.5999550104],
            [47.7729707068, 51.2489124104],
            [576.7768155480, 602.6906234849],
            [27.4272668774, 41.4759037381],
        ],
    )


# --- prediction ----------------------------------------------------------------------------------


def test_predict_matches_lme4_with_a_new_level(sleepstudy: FittedCase) -> None:
    expected = sleepstudy.reference["predict_newdata"]
    newdata = pd.DataFrame(expected["newdata"])
    newdata["Subject"] = newdata["Subject"].astype(str)
    res = sleepstudy.result
    prediction = res.predict(newdata)
    assert isinstance(prediction, np.ndarray) and prediction.shape == (4,)
    assert max_relative_error(prediction, expected["pred"]) <= PREDICT_TOLERANCE
    fixed_only = res.predict(newdata, include_re=False)
    assert max_relative_error(fixed_only, expected["pred_fixed_only"]) <= PREDICT_TOLERANCE


def test_predict_without_newdata_is_the_fit(sleepstudy: FittedCase) -> None:
    res = sleepstudy.result
    np.testing.assert_allclose(res.predict(), res.fittedvalues.to_numpy(), rtol=1e-12)
    population = res.predict(include_re=False)
    np.testing.assert_allclose(population, res.design.x @ res.fe_params.to_numpy(), rtol=1e-12)
    frame = res.design.frame
    np.testing.assert_allclose(res.predict(frame), res.fittedvalues.to_numpy(), rtol=1e-10)


def test_predict_handles_levels_given_as_numbers_and_missing_values(sleepstudy: FittedCase) -> None:
    res = sleepstudy.result
    as_text = res.predict(pd.DataFrame({"Days": [0.0, 5.0], "Subject": ["308", "309"]}))
    as_numbers = res.predict(pd.DataFrame({"Days": [0.0, 5.0], "Subject": [308, 309]}))
    np.testing.assert_allclose(as_numbers, as_text, rtol=1e-14)
    gaps = res.predict(pd.DataFrame({"Days": [np.nan, 1.0, 2.0], "Subject": ["308", None, "308"]}))
    assert np.isnan(gaps[:2]).all() and np.isfinite(gaps[2])
    polars = pytest.importorskip("polars")
    frame = polars.DataFrame({"Days": [0.0, 5.0], "Subject": ["308", "309"]})
    np.testing.assert_allclose(res.predict(frame), as_text, rtol=1e-14)


def test_predict_names_a_missing_column_and_unseen_fixed_levels(
    reference_case, reference_frame
) -> None:
    _, res = fit_case(reference_case, reference_frame, "psycholing_slopes")
    with pytest.raises(DataError, match="'condition'"):
        res.predict(pd.DataFrame({"subject": ["s01"], "item": ["i01"]}))
    with pytest.raises(DataError, match="'item'"):
        res.predict(pd.DataFrame({"condition": ["A"], "subject": ["s01"]}))
    # the population prediction needs no grouping columns
    assert res.predict(pd.DataFrame({"condition": ["B"]}), include_re=False).shape == (1,)
    with pytest.raises(DataError, match=r"'condition' has levels \['C'\]"):
        res.predict(pd.DataFrame({"condition": ["C"], "subject": ["s01"], "item": ["i01"]}))
    with pytest.raises(InputTypeError):
        res.predict({"condition": ["A"]})


def test_predict_matches_lme4_on_slopes_and_nested_terms(reference_case, reference_frame) -> None:
    # predict(mps, nd2, allow.new.levels = TRUE) and predict(mps, nd2, re.form = NA)
    _, slopes = fit_case(reference_case, reference_frame, "psycholing_slopes")
    newdata = pd.DataFrame(
        {
            "condition": ["A", "B", "B", "A"],
            "subject": ["s01", "s02", "new", "new"],
            "item": ["i03", "newitem", "i04", "x"],
        }
    )
    expected = [605.136565065, 634.636556476, 600.628423442, 589.732713017]
    assert max_relative_error(slopes.predict(newdata), expected) <= PREDICT_TOLERANCE
    population = [589.732713017, 624.181524725, 624.181524725, 589.732713017]
    assert max_relative_error(slopes.predict(newdata, include_re=False), population) <= 1e-6
    # predict(lmer(strength ~ 1 + (1|batch/cask), Pastes), nd, allow.new.levels = TRUE):
    # a known batch with an unseen cask keeps the batch effect; an unseen batch has neither.
    _, nested = fit_case(reference_case, reference_frame, "pastes_nested")
    newdata = pd.DataFrame({"batch": ["A", "A", "K", "B"], "cask": ["a", "d", "a", "c"]})
    expected = [62.6286646387, 60.8539783534, 60.0533333333, 59.9915304602]
    assert max_relative_error(nested.predict(newdata), expected) <= PREDICT_TOLERANCE


# --- summary -------------------------------------------------------------------------------------


def test_summary_prints_lmertest_coefficients(reference_case, reference_frame) -> None:
    _, res = fit_case(reference_case, reference_frame, "exam_slopes")
    summary = res.summary()
    assert summary.fixed_effects.columns.tolist() == [
        "Estimate",
        "Std. Error",
        "df",
        "t value",
        "Pr(>|t|)",
    ]
    lines = str(summary).splitlines()
    # lmerTest (the df column's last digits depend on the optimum θ̂ to 1e-6)
    header = lines.index("            Estimate Std. Error         df t value Pr(>|t|)")
    assert lines[header + 1].startswith("Intercept    0.06389    0.04167   74.88")
    assert lines[header + 1].endswith("   1.533    0.129")
    assert lines[header + 2].endswith("  27.420  < 2e-16 ***")
    assert lines[header + 3].endswith("  -5.445 5.68e-08 ***")
    assert lines[header + 4 : header + 6] == [
        "---",
        "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1",
    ]


def test_pvalue_text_matches_r_format_pval() -> None:
    from interlace.results import _format_pvalues

    # format.pval(x, digits = 3) in R 4.2
    cases = {
        (0.5, 0.01234, 2e-20): ["0.5000", "0.0123", "<2e-16"],
        (1.3e-07, 5.678e-08): ["1.30e-07", "5.68e-08"],
        (0.687220487643657, 1.339e-07, 0.0009996, 9.996e-05): [
            "0.687",
            "1.34e-07",
            "0.001",
            "1.00e-04",
        ],
        (0.00012345, 0.5): ["0.000123", "0.500000"],
        (1e-20, 0.2): ["<2e-16", "0.2"],
        (1.17e-17, 3.26e-06): ["< 2e-16", "3.26e-06"],
    }
    for values, expected in cases.items():
        assert _format_pvalues(np.array(values)) == expected


# --- a boundary fit of a correlated term ---------------------------------------------------------

# y = 1 + 0.5 x + u_g (1 + 0.3 x) + e, 10 groups of 8 (numpy default_rng(1), rounded to 3
# decimals): the slope's variance is fully correlated with the intercept's, so θ̂ is on the
# boundary (λ_22 = 0, correlation +1).
SINGULAR_SLOPE_Y = [
    1.374, 2.496, 1.816, 2.994, 3.278, 4.963, 5.007, 5.279, 1.040, 2.311, 3.323, 3.785, 6.102,
    6.561, 3.589, 5.158, 1.156, 1.507, 2.742, 3.345, 5.845, 3.214, 4.548, 7.567, 0.344, 0.469,
    -0.599, -1.624, 0.301, 0.351, -0.876, -0.223, 1.833, 1.732, 3.350, 4.316, 5.027, 5.257,
    7.129, 8.198, 1.767, 1.262, 3.446, 2.847, 4.861, 3.544, 6.164, 5.864, -0.786, 0.488, 1.195,
    1.753, 0.837, 1.050, 2.696, 2.369, 1.817, 3.015, 1.281, 3.859, 5.503, 4.655, 4.816, 7.054,
    1.618, 2.870, 2.238, 1.711, 3.692, 3.966, 5.796, 5.824, -0.337, 0.687, 3.354, 3.739, 3.007,
    4.234, 5.269, 5.880,
]  # fmt: skip


@pytest.fixture(scope="module")
def singular_slope():
    data = pd.DataFrame(
        {
            "y": SINGULAR_SLOPE_Y,
            "x": np.tile(np.arange(8.0), 10),
            "g": np.repeat([str(k) for k in range(10)], 8),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", interlace.SingularFitWarning)
        return interlace.fit("y ~ x", data, random=["(x | g)"])


def test_satterthwaite_at_a_singular_correlated_term_matches_lmertest(singular_slope) -> None:
    # summary(lmer(y ~ x + (x | g), d))$coefficients with lmerTest
    assert singular_slope.is_singular
    df = singular_slope.fe_df.to_numpy()
    assert max_relative_error(df, [11.391598767, 9.315979691]) <= SATTERTHWAITE_DF_TOLERANCE
    pvalues = singular_slope.fe_pvalues.to_numpy()
    np.testing.assert_allclose(pvalues, [1.414936318e-03, 9.365137637e-05], rtol=1e-3)


def test_confint_profile_at_a_singular_correlated_term(singular_slope) -> None:
    ci = singular_slope.confint(method="profile")
    # confint(m, oldNames = FALSE) for the rows whose profiles lme4's splines get right
    expected = [[0.7316050288, 1.0199563343], [0.5272338479, 1.5517828224],
                [0.4043112811, 0.7794696079]]  # fmt: skip
    assert_confint_close(ci.loc[["sigma", "Intercept", "x"]], expected)
    assert ci.loc["cor_x.Intercept|g", "97.5 %"] == 1.0  # the estimate is on the bound
    # For the standard deviations and the correlation lme4's spline through a profile that
    # bends at the boundary is off by up to 3 % (it reports the correlation as [-1, 1] after
    # "non-monotonic profile"); check instead that ζ is ±1.96 at our limits, minimising the ML
    # deviance over the other parameters independently (scipy, several starts).
    from scipy.optimize import minimize

    profiler = inference._Profiler(inference.refit_ml(singular_slope))
    rng = np.random.default_rng(7)

    def zeta(w: int, value: float) -> float:
        free = [i for i in range(profiler.varpar.size) if i != w]
        lower, upper = profiler.lower[free], profiler.upper[free]

        def deviance(u: np.ndarray) -> float:
            full = profiler.varpar.copy()
            full[w], full[free] = value, np.clip(u, lower, upper)
            return profiler.deviance(full)

        best = math.inf
        for _ in range(4):
            start = profiler.varpar[free] * rng.uniform(0.7, 1.3, len(free))
            start = np.clip(start, lower + 1e-3, upper - 1e-3)
            options = {"xatol": 1e-9, "fatol": 1e-11, "maxfev": 4000}
            best = min(best, minimize(deviance, start, method="Nelder-Mead", options=options).fun)
        return math.copysign(math.sqrt(max(best - profiler.base, 0.0)), value - profiler.varpar[w])

    z = scipy.stats.norm.ppf(0.975)
    for w, name in [(0, "sd_Intercept|g"), (1, "cor_x.Intercept|g"), (2, "sd_x|g")]:
        assert zeta(w, ci.loc[name, "2.5 %"]) == pytest.approx(-z, abs=2e-3), name
