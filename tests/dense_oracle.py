"""Dense brute-force linear mixed model: the test oracle for the Rust core.

Everything here is computed with dense matrices, in the most direct form of the equations of
Bates, Mächler, Bolker & Walker (2015), "Fitting Linear Mixed-Effects Models Using lme4",
J. Stat. Softw. 67(1), §3. With Z the (n × Σ q_k ℓ_k) random-effects model matrix, Λ_θ the
block-diagonal relative covariance factor and X the fixed-effects matrix:

    L Lᵀ = Λᵀ Zᵀ Z Λ + I                                  (the sparse Cholesky factor, here dense)
    [Λᵀ Zᵀ Z Λ + I   Λᵀ Zᵀ X] [u]   [Λᵀ Zᵀ y]
    [Xᵀ Z Λ          Xᵀ X   ] [β] = [Xᵀ y  ]              (penalised least squares)
    r² = ‖y − Xβ − ZΛu‖² + ‖u‖²
    R_Xᵀ R_X = Xᵀ X − Xᵀ Z Λ (Λᵀ Zᵀ Z Λ + I)⁻¹ Λᵀ Zᵀ X      (Schur complement)
    deviance (ML)  = log|L|² + n (1 + log(2π r² / n))
    REML criterion = log|L|² + log|R_X|² + (n − p) (1 + log(2π r² / (n − p)))
    σ² = r² / n (ML) or r² / (n − p) (REML);  cov(β̂) = σ² (R_Xᵀ R_X)⁻¹
    b = Λu;  cov(b | y) = σ² Λ (Λᵀ Zᵀ Z Λ + I)⁻¹ Λᵀ  (lme4's condVar: β held fixed)

Nothing is clever or fast on purpose: this file is the reference the Rust core is tested
against, and a stand-in core while that is being written. ``make_design`` builds a minimal
design-like object from a DataFrame so the oracle can run without ``interlace.design``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

__all__ = [
    "theta_lower_bounds",
    "theta_start",
    "relative_factors",
    "dense_z",
    "dense_lambda",
    "dense_fit_pieces",
    "dense_objective",
    "dense_fit",
    "DenseModel",
    "make_design",
    "ORACLE_DATA",
    "ORACLE_CASES",
    "oracle_case",
]


def _term_q(term: Any) -> int:
    return int(np.asarray(term.z).shape[1])


def theta_lower_bounds(design_like: Any) -> np.ndarray:
    """Lower bounds of θ: 0 on the diagonal of each λ_k, -inf below it (lme4's ``lower``)."""
    bounds: list[float] = []
    for term in design_like.terms:
        q = _term_q(term)
        for col in range(q):
            for row in range(col, q):
                bounds.append(0.0 if row == col else -np.inf)
    return np.array(bounds)


def theta_start(design_like: Any) -> np.ndarray:
    """lme4's starting θ: 1 on the diagonal of each λ_k, 0 below it."""
    return np.where(theta_lower_bounds(design_like) == 0.0, 1.0, 0.0)


def relative_factors(design_like: Any, theta: np.ndarray) -> list[np.ndarray]:
    """The lower-triangular λ_k of each term; θ holds each lower triangle column-major."""
    theta = np.asarray(theta, dtype=float).ravel()
    needed = theta_lower_bounds(design_like).size
    if theta.size != needed:
        raise ValueError(f"theta has {theta.size} elements, the terms need {needed}")
    factors = []
    at = 0
    for term in design_like.terms:
        q = _term_q(term)
        lam = np.zeros((q, q))
        for col in range(q):
            for row in range(col, q):
                lam[row, col] = theta[at]
                at += 1
        factors.append(lam)
    return factors


def dense_z(design_like: Any) -> np.ndarray:
    """Z (n × Σ q_k ℓ_k): per term, level-major columns (for level j, its q_k columns)."""
    n = len(design_like.y)
    blocks = []
    for term in design_like.terms:
        z = np.asarray(term.z, dtype=float)
        codes = np.asarray(term.codes, dtype=np.int64)
        q = z.shape[1]
        block = np.zeros((n, int(term.n_levels) * q))
        for c in range(q):
            block[np.arange(n), codes * q + c] = z[:, c]
        blocks.append(block)
    return np.hstack(blocks) if blocks else np.zeros((n, 0))


def dense_lambda(design_like: Any, theta: np.ndarray) -> np.ndarray:
    """Λ_θ: block diagonal, λ_k repeated once per level of term k."""
    blocks = [
        np.kron(np.eye(int(term.n_levels)), lam)
        for term, lam in zip(design_like.terms, relative_factors(design_like, theta), strict=True)
    ]
    size = sum(b.shape[0] for b in blocks)
    out = np.zeros((size, size))
    at = 0
    for b in blocks:
        out[at : at + b.shape[0], at : at + b.shape[0]] = b
        at += b.shape[0]
    return out


def dense_fit_pieces(design_like: Any, theta: np.ndarray, reml: bool) -> dict[str, Any]:
    """Everything at a given θ, with the keys of the core's ``Model.estimates``.

    Parameters
    ----------
    design_like
        Any object with ``y`` (n,), ``x`` (n, p) and ``terms``, each term with ``z`` (n, q),
        ``codes`` (n,) and ``n_levels``.
    theta
        The relative covariance parameters, each λ_k's lower triangle column-major.
    reml
        REML criterion (True) or deviance (False).

    Returns
    -------
    dict
        ``theta, objective, beta, sigma, beta_cov, b, b_cond_cov, fitted, resid``.
    """
    theta = np.array(theta, dtype=float).ravel()
    y = np.asarray(design_like.y, dtype=float)
    x = np.asarray(design_like.x, dtype=float).reshape(len(y), -1)
    n, p = x.shape
    z = dense_z(design_like)
    lam = dense_lambda(design_like, theta)
    zl = z @ lam
    n_re = zl.shape[1]

    a = zl.T @ zl + np.eye(n_re)
    chol = np.linalg.cholesky(a)
    logdet_l2 = 2.0 * float(np.sum(np.log(np.diag(chol))))

    system = np.block([[a, zl.T @ x], [x.T @ zl, x.T @ x]])
    rhs = np.concatenate([zl.T @ y, x.T @ y])
    solution = np.linalg.solve(system, rhs)
    u, beta = solution[:n_re], solution[n_re:]
    r2 = float(np.sum((y - x @ beta - zl @ u) ** 2) + np.sum(u**2))

    rx_t_rx = x.T @ x - x.T @ zl @ np.linalg.solve(a, zl.T @ x)
    if reml:
        sign, logdet_rx2 = np.linalg.slogdet(rx_t_rx) if p else (1.0, 0.0)
        if sign <= 0:
            raise np.linalg.LinAlgError("R_X'R_X is not positive definite")
        dof = n - p
        objective = logdet_l2 + float(logdet_rx2) + dof * (1.0 + np.log(2.0 * np.pi * r2 / dof))
        sigma2 = r2 / dof
    else:
        objective = logdet_l2 + n * (1.0 + np.log(2.0 * np.pi * r2 / n))
        sigma2 = r2 / n
    beta_cov = sigma2 * np.linalg.inv(rx_t_rx) if p else np.zeros((0, 0))

    b_all = lam @ u
    cond_cov = sigma2 * lam @ np.linalg.solve(a, lam.T)
    b, b_cond_cov = [], []
    at = 0
    for term in design_like.terms:
        q, levels = _term_q(term), int(term.n_levels)
        b.append(b_all[at : at + levels * q].reshape(levels, q).copy())
        blocks = np.empty((levels, q, q))
        for j in range(levels):
            s = at + j * q
            blocks[j] = cond_cov[s : s + q, s : s + q]
        b_cond_cov.append(blocks)
        at += levels * q

    fitted = x @ beta + z @ b_all
    return {
        "theta": theta,
        "objective": float(objective),
        "beta": beta,
        "sigma": float(np.sqrt(sigma2)),
        "beta_cov": beta_cov,
        "b": b,
        "b_cond_cov": b_cond_cov,
        "fitted": fitted,
        "resid": y - fitted,
    }


def dense_objective(design_like: Any, theta: np.ndarray, reml: bool) -> float:
    """REML criterion (reml=True) or deviance at θ."""
    return dense_fit_pieces(design_like, theta, reml)["objective"]


def _central_gradient(
    fun: Any, theta: np.ndarray, lower: np.ndarray, step: float = 1e-4
) -> np.ndarray:
    """Central differences; one-sided (forward) where a step back would cross a lower bound."""
    grad = np.empty_like(theta)
    f0 = fun(theta)
    for i in range(theta.size):
        h = step * max(1.0, abs(theta[i]))
        up = theta.copy()
        up[i] += h
        if theta[i] - h < lower[i]:
            grad[i] = (fun(up) - f0) / h
        else:
            down = theta.copy()
            down[i] -= h
            grad[i] = (fun(up) - fun(down)) / (2.0 * h)
    return grad


def dense_fit(design_like: Any, reml: bool, theta0: np.ndarray | None = None) -> dict[str, Any]:
    """Optimise θ by brute force, then return :func:`dense_fit_pieces` at θ̂ plus the record.

    L-BFGS-B (finite-difference gradient) from lme4's start, then polished with bounded Powell
    and a second L-BFGS-B pass at tight tolerances; the best point seen is kept.

    Returns
    -------
    dict
        The estimates plus ``n_evals`` (int), ``status`` (str), ``converged`` (bool) and
        ``gradient`` (central differences of the objective at θ̂, (n_theta,)).
    """
    lower = theta_lower_bounds(design_like)
    bounds = [(0.0, None) if lo == 0.0 else (None, None) for lo in lower]
    start = theta_start(design_like) if theta0 is None else np.asarray(theta0, dtype=float)
    n_evals = 0
    best: list[Any] = [np.inf, start.copy()]

    def fun(theta: np.ndarray) -> float:
        nonlocal n_evals
        n_evals += 1
        theta = np.maximum(np.asarray(theta, dtype=float), lower)
        try:
            value = dense_objective(design_like, theta, reml)
        except np.linalg.LinAlgError:
            return np.inf
        if value < best[0]:
            best[0], best[1] = value, theta.copy()
        return value

    ok = True
    if lower.size:
        tight = {"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10_000, "maxls": 50}
        first = optimize.minimize(fun, start, method="L-BFGS-B", bounds=bounds, options=tight)
        powell = optimize.minimize(
            fun,
            best[1],
            method="Powell",
            bounds=bounds,
            options={"xtol": 1e-10, "ftol": 1e-15, "maxfev": 50_000},
        )
        last = optimize.minimize(fun, best[1], method="L-BFGS-B", bounds=bounds, options=tight)
        ok = bool(powell.success) or bool(first.success) or bool(last.success)
    theta_hat = best[1] if lower.size else start

    def plain(theta: np.ndarray) -> float:
        return dense_objective(design_like, theta, reml)

    out = dense_fit_pieces(design_like, theta_hat, reml)
    out["n_evals"] = n_evals
    out["status"] = "converged" if ok else "failure"
    out["converged"] = ok
    out["gradient"] = _central_gradient(plain, theta_hat, lower)
    return out


class DenseModel:
    """Stand-in for ``interlace._core.Model``: same constructor, properties and methods.

    Lets the Python pipeline run (slowly) before the compiled core exists, and lets tests swap
    one for the other. ``fit`` ignores the BOBYQA settings ``rho_begin``/``rho_end``/``max_evals``.
    """

    def __init__(
        self,
        y: np.ndarray,
        x: np.ndarray,
        codes: list[np.ndarray],
        z: list[np.ndarray],
        n_levels: list[int],
        reml: bool,
    ) -> None:
        terms = tuple(
            SimpleNamespace(codes=np.asarray(c), z=np.asarray(zk, dtype=float), n_levels=int(nl))
            for c, zk, nl in zip(codes, z, n_levels, strict=True)
        )
        self._design = SimpleNamespace(
            y=np.asarray(y, dtype=float), x=np.asarray(x, dtype=float), terms=terms
        )
        self._reml = bool(reml)

    @property
    def n_theta(self) -> int:
        return int(theta_lower_bounds(self._design).size)

    @property
    def lower_bounds(self) -> np.ndarray:
        return theta_lower_bounds(self._design)

    @property
    def theta_start(self) -> np.ndarray:
        return theta_start(self._design)

    def objective(self, theta: np.ndarray) -> float:
        return dense_objective(self._design, theta, self._reml)

    def estimates(self, theta: np.ndarray) -> dict[str, Any]:
        return dense_fit_pieces(self._design, theta, self._reml)

    def fit(
        self,
        theta0: np.ndarray | None = None,
        rho_begin: float = 0.2,
        rho_end: float = 1e-7,
        max_evals: int = 0,
    ) -> dict[str, Any]:
        return dense_fit(self._design, self._reml, theta0)


def _factor(frame: pd.DataFrame, factors: Sequence[str]) -> tuple[pd.Index, np.ndarray]:
    labels = frame[list(factors)].astype(str).agg(":".join, axis=1)
    categorical = pd.Categorical(labels)
    return pd.Index(categorical.categories, name=":".join(factors)), categorical.codes.astype(
        np.int32
    )


def make_design(
    frame: pd.DataFrame,
    response: str,
    fixed: Mapping[str, str | float],
    random: Sequence[tuple[str | Sequence[str], Sequence[str]]],
    formula: str = "",
) -> SimpleNamespace:
    """A minimal stand-in for ``interlace.design``'s design object, for tests.

    Parameters
    ----------
    frame
        The data; every row is used.
    response
        Name of the response column.
    fixed
        Fixed-effect name → column of ``frame`` or a constant (``{"Intercept": 1.0}``).
    random
        One ``(grouping factor(s), columns)`` pair per term; the column ``"Intercept"`` is a
        column of ones. Several factors form their interaction, named ``"a:b"`` with level
        labels ``"<a>:<b>"``. Terms are sorted by number of levels, descending (lme4's order).
    formula
        Stored as ``design.formula``.
    """
    n = len(frame)
    y = frame[response].to_numpy(dtype=float)
    x = np.column_stack(
        [
            np.full(n, float(v)) if not isinstance(v, str) else frame[v].to_numpy(dtype=float)
            for v in fixed.values()
        ]
    ).reshape(n, len(fixed))
    terms = []
    for group, columns in random:
        factors = (group,) if isinstance(group, str) else tuple(group)
        levels, codes = _factor(frame, factors)
        z = np.column_stack(
            [np.ones(n) if c == "Intercept" else frame[c].to_numpy(dtype=float) for c in columns]
        )
        terms.append(
            SimpleNamespace(
                group=":".join(factors),
                factors=factors,
                columns=tuple(columns),
                levels=levels,
                codes=codes,
                z=np.asfortranarray(z),
                n_levels=len(levels),
                q=len(columns),
                label=f"({' + '.join(columns)} | {':'.join(factors)})",
            )
        )
    terms.sort(key=lambda t: -t.n_levels)
    return SimpleNamespace(
        response=response,
        y=y,
        x=np.asfortranarray(x),
        fixed_names=tuple(fixed),
        terms=tuple(terms),
        nobs=n,
        row_index=frame.index,
        formula=formula,
        dropped_fixed=(),
    )


# --- the lme4 reference cases in tests/data/reference ------------------------------------------

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "reference"
ORACLE_DATA = REFERENCE_DIR / "data"

#: case id → (CSV, response, fixed effects, random terms, formula), as lme4 fitted them.
ORACLE_CASES: dict[str, tuple[str, str, dict[str, str | float], list[Any], str]] = {
    "dyestuff_reml": (
        "Dyestuff",
        "Yield",
        {"Intercept": 1.0},
        [("Batch", ["Intercept"])],
        "Yield ~ 1 + (1 | Batch)",
    ),
    "dyestuff_ml": (
        "Dyestuff",
        "Yield",
        {"Intercept": 1.0},
        [("Batch", ["Intercept"])],
        "Yield ~ 1 + (1 | Batch)",
    ),
    "dyestuff2_singular": (
        "Dyestuff2",
        "Yield",
        {"Intercept": 1.0},
        [("Batch", ["Intercept"])],
        "Yield ~ 1 + (1 | Batch)",
    ),
    "sleepstudy_slopes": (
        "sleepstudy",
        "Reaction",
        {"Intercept": 1.0, "Days": "Days"},
        [("Subject", ["Intercept", "Days"])],
        "Reaction ~ Days + (Days | Subject)",
    ),
    "sleepstudy_slopes_ml": (
        "sleepstudy",
        "Reaction",
        {"Intercept": 1.0, "Days": "Days"},
        [("Subject", ["Intercept", "Days"])],
        "Reaction ~ Days + (Days | Subject)",
    ),
    "sleepstudy_uncorr": (
        "sleepstudy",
        "Reaction",
        {"Intercept": 1.0, "Days": "Days"},
        [("Subject", ["Intercept"]), ("Subject", ["Days"])],
        "Reaction ~ Days + (Days || Subject)",
    ),
    "pastes_nested": (
        "Pastes",
        "strength",
        {"Intercept": 1.0},
        [("batch", ["Intercept"]), (("cask", "batch"), ["Intercept"])],
        "strength ~ 1 + (1 | batch/cask)",
    ),
    "penicillin_crossed": (
        "Penicillin",
        "diameter",
        {"Intercept": 1.0},
        [("plate", ["Intercept"]), ("sample", ["Intercept"])],
        "diameter ~ 1 + (1 | plate) + (1 | sample)",
    ),
}


def oracle_case(case: str) -> tuple[SimpleNamespace, dict[str, Any]]:
    """The design-like object and lme4's reference values of one case in tests/data/reference."""
    dataset, response, fixed, random, formula = ORACLE_CASES[case]
    frame = pd.read_csv(ORACLE_DATA / f"{dataset}.csv")
    reference = json.loads((REFERENCE_DIR / f"{case}.json").read_text())
    return make_design(frame, response, fixed, random, formula), reference
