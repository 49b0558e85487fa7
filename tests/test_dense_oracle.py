"""The dense oracle against lme4 1.1-31 and against independent derivations of the same model.

Two kinds of evidence that ``tests/dense_oracle.py`` is right, so it can referee the Rust core:

* evaluated at lme4's own θ̂, it reproduces lme4's objective, β̂, cov(β̂), σ, conditional modes
  and their SDs to rounding (no optimiser involved);
* at arbitrary θ, its penalised-least-squares answers equal the textbook marginal-model ones,
  computed here from V = σ² (I + Z Λ Λᵀ Zᵀ) with no Cholesky or PLS at all: the multivariate
  normal log-density, GLS β̂, BLUP b̂ and the conditional covariance G − G Zᵀ V⁻¹ Z G.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from dense_oracle import (
    ORACLE_CASES,
    DenseModel,
    dense_fit,
    dense_fit_pieces,
    dense_lambda,
    dense_z,
    make_design,
    oracle_case,
    relative_factors,
    theta_lower_bounds,
    theta_start,
)
from scipy import stats

CASES = sorted(ORACLE_CASES)


@functools.cache
def case_and_fit(case: str):
    design, reference = oracle_case(case)
    return design, reference, dense_fit(design, reference["method"] == "REML")


def reference_theta(reference: dict) -> np.ndarray:
    return np.atleast_1d(np.asarray(reference["theta"], dtype=float))


def reference_blocks(reference: dict, design) -> list[tuple[np.ndarray, np.ndarray]]:
    """lme4's conditional modes and SDs, one (levels × q) pair per design term, in term order."""
    by_group = {block["group"]: block for block in reference["ranef"]}
    out = []
    used: dict[str, int] = {}
    for term in design.terms:
        block = by_group[term.group]
        values = np.array(block["values"], dtype=float).reshape(len(block["levels"]), -1)
        sds = np.array(block["cond_sd"], dtype=float).reshape(values.shape)
        order = [list(map(str, block["levels"])).index(str(level)) for level in term.levels]
        start = used.get(term.group, 0)  # terms split from || take the next columns
        used[term.group] = start + term.q
        out.append((values[order, start : start + term.q], sds[order, start : start + term.q]))
    return out


# --- at lme4's θ̂: same numbers to rounding ------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_pieces_at_lme4_theta_reproduce_lme4(case: str) -> None:
    design, reference = oracle_case(case)
    pieces = dense_fit_pieces(design, reference_theta(reference), reference["method"] == "REML")

    assert pieces["objective"] == pytest.approx(reference["objective"], abs=1e-7)
    np.testing.assert_allclose(pieces["beta"], list(reference["fixef"].values()), rtol=1e-9)
    assert pieces["sigma"] == pytest.approx(reference["sigma"], rel=1e-8)
    np.testing.assert_allclose(pieces["beta_cov"], np.array(reference["vcov"]), rtol=1e-7)
    for (values, sds), b, cond in zip(
        reference_blocks(reference, design), pieces["b"], pieces["b_cond_cov"], strict=True
    ):
        scale = max(float(np.max(np.abs(values))), 1e-8)
        np.testing.assert_allclose(b, values, atol=1e-7 * scale)
        own_sd = np.sqrt(np.diagonal(cond, axis1=1, axis2=2))
        np.testing.assert_allclose(own_sd, sds, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(pieces["fitted"], reference["fitted"], rtol=1e-9)
    np.testing.assert_allclose(pieces["resid"], reference["resid"], atol=1e-7)


# --- the optimiser finds lme4's optimum ----------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_dense_fit_reaches_lme4_optimum(case: str) -> None:
    design, reference, fit = case_and_fit(case)
    # The same objective: at most lme4's value (plus rounding), and not far below it.
    assert reference["objective"] - 1e-4 <= fit["objective"] <= reference["objective"] + 1e-6
    fixef = np.array(list(reference["fixef"].values()))
    assert np.max(np.abs(fit["beta"] - fixef) / np.maximum(1.0, np.abs(fixef))) <= 1e-5
    np.testing.assert_allclose(fit["theta"], reference_theta(reference), atol=1e-3)
    np.testing.assert_allclose(fit["sigma"], reference["sigma"], rtol=1e-4)
    np.testing.assert_allclose(
        np.sqrt(np.diag(fit["beta_cov"])), list(reference["fixef_se"].values()), rtol=1e-3
    )
    for (values, sds), b, cond in zip(
        reference_blocks(reference, design), fit["b"], fit["b_cond_cov"], strict=True
    ):
        scale = np.maximum(np.max(np.abs(values), axis=0), 1e-8 * reference["sigma"])
        assert np.max(np.abs(b - values) / scale) <= 1e-3
        own_sd = np.sqrt(np.diagonal(cond, axis1=1, axis2=2))
        assert np.max(np.abs(own_sd - sds) / np.maximum(sds, 1e-8)) <= 1e-3


@pytest.mark.parametrize("case", CASES)
def test_dense_fit_record(case: str) -> None:
    design, reference, fit = case_and_fit(case)
    assert fit["converged"] is True
    assert fit["status"] == "converged"
    assert fit["n_evals"] > 0
    assert fit["gradient"].shape == fit["theta"].shape
    lower = theta_lower_bounds(design)
    on_boundary = (lower == 0.0) & (fit["theta"] < 1e-4) & (fit["gradient"] >= 0)
    assert np.all(np.abs(fit["gradient"][~on_boundary]) < 2e-3)
    np.testing.assert_allclose(fit["fitted"] + fit["resid"], design.y, rtol=1e-12)


def test_singular_fit_sits_on_the_boundary() -> None:
    _, reference, fit = case_and_fit("dyestuff2_singular")
    assert reference["singular"] is True
    assert fit["theta"][0] == 0.0
    np.testing.assert_array_equal(fit["b"][0], 0.0)
    np.testing.assert_array_equal(fit["b_cond_cov"][0], 0.0)
    assert fit["beta"][0] == pytest.approx(np.mean(fit["fitted"]))


# --- independent derivations at arbitrary θ ------------------------------------------------------


def marginal_model(design, theta: np.ndarray):
    z, lam = dense_z(design), dense_lambda(design, theta)
    x, y = np.asarray(design.x), np.asarray(design.y)
    relative_g = lam @ lam.T  # cov(b) / σ²
    relative_v = np.eye(len(y)) + z @ relative_g @ z.T  # cov(y) / σ²
    v_inv = np.linalg.inv(relative_v)
    gls_information = x.T @ v_inv @ x
    beta = np.linalg.solve(gls_information, x.T @ v_inv @ y)
    return SimpleNamespace(
        z=z, x=x, y=y, g=relative_g, v=relative_v, v_inv=v_inv, info=gls_information, beta=beta
    )


ARBITRARY_THETA = [
    ("sleepstudy_slopes", [0.8, -0.2, 0.3]),
    ("pastes_nested", [2.0, 0.7]),
    ("penicillin_crossed", [1.1, 2.9]),
    ("sleepstudy_uncorr", [1.3, 0.15]),
]


@pytest.mark.parametrize(("case", "theta"), ARBITRARY_THETA)
def test_ml_deviance_is_minus_twice_the_normal_log_density(case: str, theta: list[float]) -> None:
    design, _ = oracle_case(case)
    pieces = dense_fit_pieces(design, np.array(theta), reml=False)
    m = marginal_model(design, np.array(theta))
    np.testing.assert_allclose(pieces["beta"], m.beta, rtol=1e-9)
    density = stats.multivariate_normal(m.x @ m.beta, pieces["sigma"] ** 2 * m.v)
    assert pieces["objective"] == pytest.approx(-2.0 * density.logpdf(m.y), rel=1e-10)
    # σ̂² is the profiled maximiser: the deviance grows when σ moves either way.
    for factor in (0.99, 1.01):
        moved = stats.multivariate_normal(m.x @ m.beta, (factor * pieces["sigma"]) ** 2 * m.v)
        assert -2.0 * moved.logpdf(m.y) > pieces["objective"]


@pytest.mark.parametrize(("case", "theta"), ARBITRARY_THETA)
def test_reml_criterion_is_minus_twice_the_restricted_log_likelihood(
    case: str, theta: list[float]
) -> None:
    design, _ = oracle_case(case)
    pieces = dense_fit_pieces(design, np.array(theta), reml=True)
    m = marginal_model(design, np.array(theta))
    n, p = m.x.shape
    sigma2 = pieces["sigma"] ** 2
    r = m.y - m.x @ m.beta
    assert sigma2 == pytest.approx(r @ m.v_inv @ r / (n - p), rel=1e-10)
    restricted = (
        (n - p) * np.log(2 * np.pi)
        + np.linalg.slogdet(sigma2 * m.v)[1]
        + np.linalg.slogdet(m.info / sigma2)[1]
        + r @ m.v_inv @ r / sigma2
    )
    assert pieces["objective"] == pytest.approx(restricted, rel=1e-10)
    np.testing.assert_allclose(pieces["beta_cov"], sigma2 * np.linalg.inv(m.info), rtol=1e-9)


@pytest.mark.parametrize(("case", "theta"), ARBITRARY_THETA)
def test_modes_and_conditional_covariance_are_the_blups(case: str, theta: list[float]) -> None:
    design, _ = oracle_case(case)
    pieces = dense_fit_pieces(design, np.array(theta), reml=True)
    m = marginal_model(design, np.array(theta))
    blup = m.g @ m.z.T @ m.v_inv @ (m.y - m.x @ m.beta)
    cond = pieces["sigma"] ** 2 * (m.g - m.g @ m.z.T @ m.v_inv @ m.z @ m.g)
    np.testing.assert_allclose(np.concatenate([b.ravel() for b in pieces["b"]]), blup, atol=1e-8)
    at = 0
    for term, blocks in zip(design.terms, pieces["b_cond_cov"], strict=True):
        for j in range(term.n_levels):
            s = at + j * term.q
            np.testing.assert_allclose(blocks[j], cond[s : s + term.q, s : s + term.q], atol=1e-8)
        at += term.n_levels * term.q
    np.testing.assert_allclose(pieces["fitted"], m.x @ m.beta + m.z @ blup, rtol=1e-10)


# --- building blocks -----------------------------------------------------------------------------


def tiny_design() -> SimpleNamespace:
    frame = pd.DataFrame(
        {
            "y": [1.0, 2.0, 4.0, 3.0, 5.0, 7.0],
            "x": [0.0, 1.0, 2.0, 0.0, 1.0, 2.0],
            "g": ["b", "b", "b", "a", "a", "c"],
            "h": ["u", "v", "u", "v", "u", "v"],
        },
        index=[10, 11, 12, 13, 14, 15],
    )
    return make_design(
        frame, "y", {"Intercept": 1.0, "x": "x"}, [("h", ["Intercept"]), ("g", ["Intercept", "x"])]
    )


def test_make_design_sorts_terms_and_codes_levels() -> None:
    design = tiny_design()
    assert [t.group for t in design.terms] == ["g", "h"]  # 3 levels before 2
    g = design.terms[0]
    assert list(g.levels) == ["a", "b", "c"]
    np.testing.assert_array_equal(g.codes, [1, 1, 1, 0, 0, 2])
    assert g.codes.dtype == np.int32
    assert g.z.shape == (6, 2) and g.q == 2 and g.n_levels == 3
    assert design.fixed_names == ("Intercept", "x")
    assert list(design.row_index) == [10, 11, 12, 13, 14, 15]


def test_theta_layout_is_lower_triangle_column_major() -> None:
    design = tiny_design()  # terms: g with q = 2, then h with q = 1
    np.testing.assert_array_equal(theta_lower_bounds(design), [0.0, -np.inf, 0.0, 0.0])
    np.testing.assert_array_equal(theta_start(design), [1.0, 0.0, 1.0, 1.0])
    lam_g, lam_h = relative_factors(design, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(lam_g, [[1.0, 0.0], [2.0, 3.0]])
    np.testing.assert_array_equal(lam_h, [[4.0]])
    with pytest.raises(ValueError, match="theta has 3 elements"):
        relative_factors(design, [1.0, 2.0, 3.0])


def test_z_and_lambda_are_level_major() -> None:
    design = tiny_design()
    z = dense_z(design)
    assert z.shape == (6, 3 * 2 + 2)
    # Row 0: g level "b" (code 1) → columns 2 (intercept) and 3 (x); h level "u" → column 6.
    np.testing.assert_array_equal(z[0], [0, 0, 1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(z[2], [0, 0, 1, 2, 0, 0, 1, 0])
    lam = dense_lambda(design, [1.0, 2.0, 3.0, 4.0])
    expected = np.zeros((8, 8))
    for j in range(3):
        expected[2 * j : 2 * j + 2, 2 * j : 2 * j + 2] = [[1.0, 0.0], [2.0, 3.0]]
    expected[6, 6] = expected[7, 7] = 4.0
    np.testing.assert_array_equal(lam, expected)


def test_pieces_shapes() -> None:
    design = tiny_design()
    pieces = dense_fit_pieces(design, theta_start(design), reml=True)
    assert set(pieces) == {
        "theta",
        "objective",
        "beta",
        "sigma",
        "beta_cov",
        "b",
        "b_cond_cov",
        "fitted",
        "resid",
    }
    assert [b.shape for b in pieces["b"]] == [(3, 2), (2, 1)]
    assert [c.shape for c in pieces["b_cond_cov"]] == [(3, 2, 2), (2, 1, 1)]
    assert pieces["beta_cov"].shape == (2, 2)
    assert pieces["fitted"].shape == pieces["resid"].shape == (6,)
    for blocks in pieces["b_cond_cov"]:
        np.testing.assert_allclose(blocks, np.transpose(blocks, (0, 2, 1)))


def test_dense_model_mirrors_the_core_interface() -> None:
    design, reference = oracle_case("sleepstudy_slopes")
    model = DenseModel(
        design.y,
        design.x,
        [t.codes for t in design.terms],
        [t.z for t in design.terms],
        [t.n_levels for t in design.terms],
        reml=True,
    )
    assert model.n_theta == 3
    np.testing.assert_array_equal(model.lower_bounds, [0.0, -np.inf, 0.0])
    np.testing.assert_array_equal(model.theta_start, [1.0, 0.0, 1.0])
    theta = reference_theta(reference)
    assert model.objective(theta) == pytest.approx(reference["objective"], abs=1e-7)
    estimates = model.estimates(theta)
    np.testing.assert_array_equal(estimates["beta"], dense_fit_pieces(design, theta, True)["beta"])
    fit = model.fit()
    assert {"n_evals", "status", "converged", "gradient"} <= set(fit)
    np.testing.assert_allclose(fit["theta"], case_and_fit("sleepstudy_slopes")[2]["theta"])
