"""Inference for a fitted linear mixed model: Satterthwaite t and F tests (lmerTest),
likelihood-ratio tests and confidence intervals (lme4), and prediction on new data.

    Satterthwaite (lmerTest; Kuznetsova, Brockhoff & Christensen 2017, §3.1)
        varpar = (θ, σ);  d(θ, σ) = log|L_θ|² [+ log|R_X|² − p log(2πσ²) for REML]
                                    + n log(2πσ²) + r²(θ)/σ²        (unprofiled −2 log-lik)
        A = 2 H⁺,  H = ∇² d at (θ̂, σ̂)          (asymptotic covariance of varpar)
        V(varpar) = σ² (R_Xᵀ R_X)⁻¹(θ) = cov(β̂)
        contrast l:  ν = 2 (l V lᵀ)² / (gᵀ A g),  g = ∇_varpar (l V lᵀ);  t = l β̂ / √(l V lᵀ)
        contrast matrix L: eigen-decompose L V Lᵀ = P D Pᵀ; F = Σ_m t_m² / q with
        t_m = (Pᵀ L β̂)_m / √d_m, and ν from the ν_m as Fai & Cornelius (1996) combine them.
    Likelihood-ratio test (lme4's anova): χ² = 2 Δ log-likelihood of ML fits on Δ npar df.
    Profile confidence interval (lme4's profile.merMod; Bates et al. 2015, §5.1)
        ζ(x) = sign(x − x̂) √(d̃(x) − d̂), d̃(x) the ML deviance minimised over every other
        parameter, on lme4's scale (standard deviations, correlations, σ, β); the interval
        is {x : |ζ(x)| ≤ z_{1−α/2}}, found here by root finding on ζ.
    Prediction: X_new β̂ + Σ_k Z_k,new b̂_k; a level not seen in the fit contributes 0.

Derivatives are numDeriv's Richardson extrapolation with the steps lmerTest uses, so the degrees
of freedom agree with lmerTest's, singular fits included. The distribution functions (Student t,
F, χ², normal quantile) live here so the runtime needs no scipy: continued fractions and series
for the regularised incomplete beta and gamma functions (Press et al., Numerical Recipes, 3rd
ed., §6.2 and §6.4).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from interlace._threads import single_threaded_blas
from interlace.design import as_pandas
from interlace.exceptions import (
    ConvergenceWarning,
    DataError,
    InputTypeError,
    InterlaceError,
    InterlaceWarning,
    NumericalError,
)

if TYPE_CHECKING:
    from interlace.results import LmmResult

__all__ = [
    "anova",
    "confint",
    "contest",
    "fe_df",
    "fe_pvalues",
    "predict",
    "refit_ml",
]

_MACHINE_EPSILON = 2.220446049250313e-16
_TINY = 1e-300
_LOG_2PI = math.log(2.0 * math.pi)


# --- distribution functions ----------------------------------------------------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz); fast for x < (a+1)/(a+b+2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 1000 + int(10.0 * math.sqrt(max(a, b)))):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < 4.0 * _MACHINE_EPSILON:
            break
    return h


def _stirling_remainder(x: float) -> float:
    """log Γ(x) − [(x − ½) log x − x + ½ log 2π], for x ≥ 10 (error below 1e-13)."""
    inverse = 1.0 / x
    square = inverse * inverse
    return inverse * (
        1.0 / 12.0
        - square
        * (1.0 / 360.0 - square * (1.0 / 1260.0 - square * (1.0 / 1680.0 - square / 1188.0)))
    )


def _log_gamma_ratio(a: float, b: float) -> float:
    """log Γ(a + b) − log Γ(a) without the cancellation of two large lgamma values."""
    if a < 10.0:
        return math.lgamma(a + b) - math.lgamma(a)
    return (
        (a - 0.5) * math.log1p(b / a)
        + b * math.log(a + b)
        - b
        + _stirling_remainder(a + b)
        - _stirling_remainder(a)
    )


def _regularized_beta(a: float, b: float, x: float, y: float) -> float:
    """I_x(a, b), the regularised incomplete beta function; ``y`` is 1 − x, given exactly."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    small, big = min(a, b), max(a, b)
    log_beta = math.lgamma(small) - _log_gamma_ratio(big, small)
    log_x = math.log1p(-y) if x > 0.5 else math.log(x)
    log_y = math.log1p(-x) if y > 0.5 else math.log(y)
    log_front = a * log_x + b * log_y - log_beta
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y) / b


def _upper_regularized_gamma(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a): series for P below x = a + 1, continued fraction above."""
    if x <= 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        denominator = a
        for _ in range(10_000):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _MACHINE_EPSILON:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        numerator = -i * (i - a)
        b += 2.0
        d = numerator * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + numerator / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        if abs(d * c - 1.0) < 4.0 * _MACHINE_EPSILON:
            break
    return math.exp(log_front) * h


def _student_t_two_sided(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t on ``df`` degrees of freedom (df = inf: the normal)."""
    if math.isnan(t) or math.isnan(df) or df <= 0.0:
        return math.nan
    t2 = t * t
    if math.isinf(df) or df > 1e12:
        return math.erfc(abs(t) / math.sqrt(2.0))
    if math.isinf(t2):
        return 0.0
    return _regularized_beta(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2))


def _student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t)."""
    tail = 0.5 * _student_t_two_sided(t, df)
    return 1.0 - tail if t > 0 else tail


def _f_upper(f: float, df1: float, df2: float) -> float:
    """P(F ≥ f) for the F distribution on (df1, df2) degrees of freedom."""
    if any(math.isnan(v) for v in (f, df1, df2)) or df1 <= 0.0 or df2 <= 0.0:
        return math.nan
    if f <= 0.0:
        return 1.0
    if math.isinf(df2) or df2 > 1e12:
        return _chi_square_upper(f * df1, df1)
    if math.isinf(f):
        return 0.0
    denominator = df2 + df1 * f
    return _regularized_beta(0.5 * df2, 0.5 * df1, df2 / denominator, df1 * f / denominator)


def _chi_square_upper(x: float, df: float) -> float:
    """P(X ≥ x) for the χ² distribution on ``df`` degrees of freedom."""
    if math.isnan(x) or math.isnan(df) or df <= 0.0:
        return math.nan
    return _upper_regularized_gamma(0.5 * df, 0.5 * x)


def _normal_quantile(p: float) -> float:
    """Φ⁻¹(p): Acklam's rational approximation, polished by one Halley step on erfc."""
    if not 0.0 < p < 1.0:
        return {0.0: -math.inf, 1.0: math.inf}.get(p, math.nan)
    if p > 0.5:
        return -_normal_quantile(1.0 - p)  # 1 − p is exact here; the lower tail is accurate
    a = (
        -39.69683028665376,
        220.9460984245205,
        -275.9285104469687,
        138.3577518672690,
        -30.66479806614716,
        2.506628277459239,
    )
    b = (
        -54.47609879822406,
        161.5858368580409,
        -155.6989798598866,
        66.80131188771972,
        -13.28068155288572,
    )
    c = (
        -0.007784894002430293,
        -0.3223964580411365,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    )
    d = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    if p < 0.02425 or p > 1.0 - 0.02425:
        q = math.sqrt(-2.0 * math.log(min(p, 1.0 - p)))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0
        )
        x = x if p < 0.5 else -x
    else:
        q = p - 0.5
        r = q * q
        x = (
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
            * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
        )
    error = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
    u = error * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


def _student_t_quantile(p: float, df: float) -> float:
    """The p quantile of Student's t: bisection on the CDF (to full precision, ~100 steps)."""
    if math.isnan(p) or math.isnan(df) or df <= 0.0 or not 0.0 < p < 1.0:
        return _normal_quantile(p) if not math.isnan(df) and df > 0 else math.nan
    if math.isinf(df) or df > 1e12:
        return _normal_quantile(p)
    if p == 0.5:
        return 0.0
    upper = p > 0.5
    tail = 1.0 - p if upper else p  # find t > 0 with P(T > t) = tail
    low, high = 0.0, max(1.0, abs(_normal_quantile(p)))
    while 0.5 * _student_t_two_sided(high, df) > tail:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if 0.5 * _student_t_two_sided(middle, df) > tail:
            low = middle
        else:
            high = middle
    t = 0.5 * (low + high)
    return t if upper else -t


# --- numerical derivatives (numDeriv's Richardson extrapolation) ---------------------------------

#: numDeriv's zero.tol: below it an element counts as zero and gets the absolute step ``eps``.
_ZERO_TOLERANCE = math.sqrt(_MACHINE_EPSILON / 7e-7)


def _richardson(approximations: list[Any]) -> Any:
    """Combine difference quotients at steps h, h/2, h/4, ... (error O(h²) each) into one."""
    values = list(approximations)
    for m in range(1, len(values)):
        factor = 4.0**m
        values = [
            (values[k + 1] * factor - values[k]) / (factor - 1.0) for k in range(len(values) - 1)
        ]
    return values[0]


def _initial_steps(x: np.ndarray, d: float, eps: float = 1e-4) -> np.ndarray:
    return np.abs(d * x) + eps * (np.abs(x) < _ZERO_TOLERANCE)


def _hessian(func: Callable[[np.ndarray], float], x: np.ndarray, r: int = 4) -> np.ndarray:
    """numDeriv::hessian(func, x): genD's Richardson scheme with relative step d = 0.1."""
    x = np.asarray(x, dtype=float)
    n = x.size
    f0 = func(x)
    h0 = _initial_steps(x, 0.1)
    diagonal = np.zeros(n)
    for i in range(n):
        h = h0.copy()
        quotients = []
        for _ in range(r):
            shift = np.zeros(n)
            shift[i] = h[i]
            quotients.append((func(x + shift) - 2.0 * f0 + func(x - shift)) / h[i] ** 2)
            h = h / 2.0
        diagonal[i] = _richardson(quotients)
    hessian = np.diag(diagonal)
    for i in range(n):
        for j in range(i):
            h = h0.copy()
            quotients = []
            for _ in range(r):
                shift = np.zeros(n)
                shift[i], shift[j] = h[i], h[j]
                second = func(x + shift) - 2.0 * f0 + func(x - shift)
                second -= diagonal[i] * h[i] ** 2 + diagonal[j] * h[j] ** 2
                quotients.append(second / (2.0 * h[i] * h[j]))
                h = h / 2.0
            hessian[i, j] = hessian[j, i] = _richardson(quotients)
    return hessian


def _jacobian(func: Callable[[np.ndarray], np.ndarray], x: np.ndarray, r: int = 4) -> np.ndarray:
    """numDeriv::jacobian(func, x): central differences, relative step d = 1e-4, Richardson.

    Returns an array of shape ``(len(x),) + func(x).shape``: the derivative along each x_i.
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    h = _initial_steps(x, 1e-4)
    quotients: list[list[np.ndarray]] = [[] for _ in range(n)]
    for _ in range(r):
        for i in range(n):
            shift = np.zeros(n)
            shift[i] = h[i]
            difference = np.asarray(func(x + shift)) - np.asarray(func(x - shift))
            quotients[i].append(difference / (2.0 * h[i]))
        h = h / 2.0
    return np.stack([_richardson(q) for q in quotients])


# --- Satterthwaite's degrees of freedom (lmerTest) ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _VarparCovariance:
    """What every Satterthwaite test of one fit needs (lmerTest's lmerModLmerTest slots)."""

    beta: np.ndarray  # (p,)
    beta_cov: np.ndarray  # (p, p): cov(β̂), lme4's vcov
    varpar_cov: np.ndarray  # (k, k): A = 2 H⁺, k = n_θ + 1
    jacobian: np.ndarray  # (k, p, p): ∂ cov(β̂) / ∂ varpar_i
    sigma: float


_VARPAR_CACHE: weakref.WeakKeyDictionary[Any, _VarparCovariance] = weakref.WeakKeyDictionary()


def _model_of(result: LmmResult, reml: bool) -> Any:
    from interlace.api import _core_model

    return _core_model(result.design, reml)


def _varpar_covariance(result: LmmResult) -> _VarparCovariance:
    """lmerTest's ``as_lmerModLT``: Hessian of the deviance in (θ, σ) and Jacobian of cov(β̂)."""
    cached = _VARPAR_CACHE.get(result)
    if cached is not None:
        return cached
    reml = result.method == "REML"
    model = _model_of(result, reml)
    n = int(result.nobs)
    p = len(result.fe_params)

    def deviance(varpar: np.ndarray) -> float:
        theta, sigma2 = varpar[:-1], varpar[-1] ** 2
        log_det_l, log_det_rx, penalised_rss = model.deviance_parts(np.ascontiguousarray(theta))
        value = log_det_l + penalised_rss / sigma2 + n * (_LOG_2PI + math.log(sigma2))
        if reml:
            value += log_det_rx - p * (_LOG_2PI + math.log(sigma2))
        return value

    def beta_covariance(varpar: np.ndarray) -> np.ndarray:
        sigma, cov = model.beta_covariance(np.ascontiguousarray(varpar[:-1]))
        # the core's cov(β̂) is σ̂²(θ) (R_XᵀR_X)⁻¹(θ); rescale to the σ asked for.
        scale = (varpar[-1] / float(sigma)) ** 2
        return scale * np.asarray(cov, dtype=float).reshape(p, p)

    varpar = np.append(np.asarray(result.theta, dtype=float), float(result.sigma))
    hessian = _hessian(deviance, varpar)
    values, vectors = np.linalg.eigh(hessian)
    tolerance = 1e-8
    negative = values[values < -tolerance]
    if negative.size:
        warnings.warn(
            f"Satterthwaite degrees of freedom: the Hessian of the deviance in (theta, sigma) has "
            f"{negative.size} negative eigenvalue{'s' if negative.size > 1 else ''} "
            f"({' '.join(f'{v:.1e}' for v in negative)}): the fit may not be at an optimum "
            "(lmerTest: 'Model failed to converge with negative eigenvalue').",
            ConvergenceWarning,
            stacklevel=4,
        )
    positive = values > tolerance
    inverse = (vectors[:, positive] / values[positive]) @ vectors[:, positive].T
    state = _VarparCovariance(
        beta=result.fe_params.to_numpy(dtype=float),
        beta_cov=result.fe_cov.to_numpy(dtype=float),
        varpar_cov=2.0 * inverse,
        jacobian=_jacobian(beta_covariance, varpar) if p else np.zeros((varpar.size, 0, 0)),
        sigma=float(result.sigma),
    )
    _VARPAR_CACHE[result] = state
    return state


def _contrast_t(state: _VarparCovariance, contrast: np.ndarray) -> tuple[float, float, float]:
    """lmerTest's ``contest1D``: (estimate, standard error, Satterthwaite df) of l β."""
    variance = float(contrast @ state.beta_cov @ contrast)
    gradient = np.einsum("i,kij,j->k", contrast, state.jacobian, contrast)
    denominator = float(gradient @ state.varpar_cov @ gradient)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = float(np.float64(2.0 * variance**2) / np.float64(denominator))
    return float(contrast @ state.beta), math.sqrt(max(variance, 0.0)), df


def fe_df(result: LmmResult) -> pd.Series:
    """Satterthwaite's denominator degrees of freedom of each fixed effect, as lmerTest.

    Parameters
    ----------
    result : LmmResult
        A REML or ML fit.

    Returns
    -------
    pandas.Series
        Degrees of freedom of the t test of each coefficient, indexed by fixed-effect name
        (``result.fe_df`` is the same).

    Notes
    -----
    lmerTest's method: with varpar = (θ, σ), A = 2 H⁻¹ for H the Hessian of the deviance (REML
    criterion for a REML fit) at the optimum, and V(varpar) = cov(β̂), a coefficient's df is
    2 V_jj² / (gᵀ A g), g = ∇ V_jj. Derivatives use numDeriv's Richardson extrapolation, as
    lmerTest does; at a boundary fit the eigenvalues of H that are not positive are left out
    (a Moore-Penrose inverse), as lmerTest does.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("reading_times")
    >>> res = interlace.fit("rt ~ condition", data, groups=["subject", "item"])
    >>> df = fe_df(res)
    >>> list(df.index) == list(res.fe_params.index)
    True
    >>> bool((df > 0).all())
    True
    """
    with single_threaded_blas():
        state = _varpar_covariance(result)
        p = state.beta.size
        values = [_contrast_t(state, np.eye(p)[j])[2] for j in range(p)]
        return pd.Series(values, index=result.fe_params.index, dtype=float, name="df")


def fe_pvalues(result: LmmResult) -> pd.Series:
    """Two-sided p-values of the t tests of the fixed effects, on Satterthwaite's df.

    Parameters
    ----------
    result : LmmResult

    Returns
    -------
    pandas.Series
        ``Pr(>|t|)`` per fixed effect, as lmerTest's ``summary``.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("reading_times")
    >>> res = interlace.fit("rt ~ condition", data, groups=["subject", "item"])
    >>> bool(((fe_pvalues(res) >= 0) & (fe_pvalues(res) <= 1)).all())
    True
    """
    with single_threaded_blas():
        df = fe_df(result)
        t = result.tvalues.to_numpy(dtype=float)
        values = [_student_t_two_sided(t_j, df_j) for t_j, df_j in zip(t, df, strict=True)]
        return pd.Series(values, index=result.fe_params.index, dtype=float, name="Pr(>|t|)")


def _contrast_matrix(result: LmmResult, contrast: Any) -> tuple[np.ndarray, pd.Index | None]:
    names = [str(name) for name in result.fe_params.index]
    p = len(names)
    labels = None
    if isinstance(contrast, pd.Series):
        contrast = contrast.to_frame().T
    if isinstance(contrast, pd.DataFrame):
        unknown = [str(c) for c in contrast.columns if str(c) not in names]
        if unknown:
            raise InterlaceError(
                f"contrast columns {unknown} are not fixed effects; the fixed effects are {names}"
            )
        frame = contrast.rename(columns=str).reindex(columns=names, fill_value=0.0)
        labels = frame.index
        matrix = frame.to_numpy(dtype=float)
    else:
        try:
            matrix = np.asarray(contrast, dtype=float)
        except (TypeError, ValueError) as error:
            raise InputTypeError(f"L must be numeric, got {type(contrast).__name__}") from error
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or matrix.shape[1] != p:
        raise InterlaceError(
            f"L must have one column per fixed effect ({p}: {names}), got shape {matrix.shape}"
        )
    return matrix, labels


def contest(
    result: LmmResult,
    L: Any,
    rhs: float | Sequence[float] = 0.0,
    joint: bool = True,
    level: float = 0.95,
) -> pd.DataFrame:
    """Test the linear hypothesis Lβ = rhs with Satterthwaite's degrees of freedom (lmerTest).

    Parameters
    ----------
    result : LmmResult
    L : array-like, pandas.Series or pandas.DataFrame
        Contrast vector (p,) or matrix (k, p); a Series/DataFrame is aligned on the fixed-effect
        names (absent names count as 0).
    rhs : float or sequence of float, default 0
        Right-hand side of the hypothesis, one value or one per row of ``L``.
    joint : bool, default True
        True: one F test of all rows (lmerTest's ``contestMD``). False: a t test of each row
        (``contest1D``), with a confidence interval at ``level``.
    level : float, default 0.95
        Confidence level of the intervals when ``joint=False``.

    Returns
    -------
    pandas.DataFrame
        ``joint=True``: one row with ``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)``.
        ``joint=False``: per row ``Estimate, Std. Error, df, t value, lower, upper, Pr(>|t|)``.

    Notes
    -----
    For several rows, L cov(β̂) Lᵀ = P D Pᵀ is eigen-decomposed and rows with eigenvalue at or
    below ``sqrt(machine eps) * max eigenvalue`` are dropped (NumDF is the rank); F is the mean
    of the squared t statistics of the rotated contrasts, and DenDF combines their Satterthwaite
    df as lmerTest's ``get_Fstat_ddf``. A single row gives F = t² on the t test's df.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("reading_times")
    >>> res = interlace.fit("rt ~ condition", data, groups=["subject", "item"])
    >>> table = contest(res, [0, 1])
    >>> list(table.columns)
    ['Sum Sq', 'Mean Sq', 'NumDF', 'DenDF', 'F value', 'Pr(>F)']
    >>> bool(abs(table["F value"].iloc[0] - res.tvalues.iloc[1] ** 2) < 1e-8)
    True
    """
    with single_threaded_blas():
        matrix, labels = _contrast_matrix(result, L)
        k = matrix.shape[0]
        rhs_values = np.broadcast_to(np.asarray(rhs, dtype=float), (k,)).copy()
        if np.asarray(rhs).size not in (1, k):
            raise InterlaceError(f"rhs must have 1 or {k} values, got {np.asarray(rhs).size}")
        state = _varpar_covariance(result)
        if not joint:
            return _t_table(state, matrix, rhs_values, level, labels)
        columns = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
        if k == 0:
            return pd.DataFrame(columns=columns, dtype=float)

        def f_table(f_value: float, num_df: int, den_df: float) -> pd.DataFrame:
            mean_sq = f_value * state.sigma**2
            row = [mean_sq * num_df, mean_sq, num_df, den_df, f_value]
            row.append(_f_upper(f_value, num_df, den_df))
            table = pd.DataFrame([row], columns=columns)
            return table.astype({"NumDF": int})

        if k == 1:
            estimate, error, df = _contrast_t(state, matrix[0])
            t = (estimate - rhs_values[0]) / error if error > 0 else math.nan
            return f_table(t * t, 1, df)
        beta = state.beta
        if np.any(rhs_values != 0.0):
            beta = beta - np.linalg.pinv(matrix) @ rhs_values
        values, vectors = np.linalg.eigh(matrix @ state.beta_cov @ matrix.T)
        values, vectors = values[::-1], vectors[:, ::-1]  # decreasing, as R's eigen
        tolerance = max(math.sqrt(_MACHINE_EPSILON) * values[0], 0.0)
        q = int(np.sum(values > tolerance))
        if q < k and np.any(rhs_values != 0.0):
            warnings.warn(
                "the contrast matrix is rank deficient and the test may be affected",
                InterlaceWarning,
                stacklevel=2,
            )
        if q == 0:
            return pd.DataFrame(columns=columns, dtype=float)
        rotated = (vectors.T @ matrix)[:q]
        if q == 1:
            shifted = dataclasses.replace(state, beta=beta)
            estimate, error, df = _contrast_t(shifted, rotated[0])
            return f_table((estimate / error) ** 2, 1, df)
        f_value = float(np.sum((rotated @ beta) ** 2 / values[:q]) / q)
        nu = np.array([_contrast_t(state, row)[2] for row in rotated])
        return f_table(f_value, q, _f_denominator_df(nu))


def _f_denominator_df(nu: np.ndarray, tolerance: float = 1e-8) -> float:
    """lmerTest's ``get_Fstat_ddf``: the denominator df of F from the df of its t statistics."""
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tolerance):
        return float(np.mean(nu))
    if np.any(nu <= 2.0):
        return 2.0
    expectation = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * expectation / (expectation - nu.size)


def _t_table(
    state: _VarparCovariance,
    matrix: np.ndarray,
    rhs: np.ndarray,
    level: float,
    labels: pd.Index | None,
) -> pd.DataFrame:
    rows = []
    for contrast, value in zip(matrix, rhs, strict=True):
        estimate, error, df = _contrast_t(state, contrast)
        t = (estimate - value) / error if error > 0 else math.nan
        half_width = _student_t_quantile(0.5 + 0.5 * level, df) * error
        rows.append(
            [
                estimate,
                error,
                df,
                t,
                estimate - half_width,
                estimate + half_width,
                _student_t_two_sided(t, df),
            ]
        )
    columns = ["Estimate", "Std. Error", "df", "t value", "lower", "upper", "Pr(>|t|)"]
    return pd.DataFrame(rows, columns=columns, index=labels, dtype=float)


# --- refit with ML, likelihood-ratio tests -------------------------------------------------------


def refit_ml(result: LmmResult) -> LmmResult:
    """The same model refitted by maximum likelihood (lme4's ``refitML``).

    Parameters
    ----------
    result : LmmResult
        A REML or ML fit; an ML fit is returned as it is.

    Returns
    -------
    LmmResult
        The ML fit on the same design, optimised from the REML θ̂, as lme4 starts it.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("reading_times")
    >>> res = interlace.fit("rt ~ condition", data, groups=["subject", "item"])
    >>> refit_ml(res).method
    'ML'
    """
    with single_threaded_blas():
        from interlace.results import LmmResult, fit_warnings

        if result.method == "ML":
            return result
        model = _model_of(result, reml=False)
        core = model.fit(np.ascontiguousarray(result.theta, dtype=float))
        refitted = LmmResult.from_core(result.design, core, "ML")
        for category, message in fit_warnings(refitted):
            if issubclass(category, ConvergenceWarning):
                warnings.warn(f"ML refit: {message}", category, stacklevel=3)
        return refitted


def anova(
    *models: LmmResult, refit: bool = True, names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Likelihood-ratio tests between nested models, as lme4's ``anova(m0, m1, ...)``.

    Parameters
    ----------
    *models : LmmResult
        Two or more fits to the same observations.
    refit : bool, default True
        Refit REML fits by ML first (with an :class:`~interlace.InterlaceWarning` saying so, as
        lme4 prints "refitting model(s) with ML (instead of REML)"); REML criteria of models
        with different fixed effects are not comparable.
    names : sequence of str, optional
        Row labels, one per model in the order given; by default each model's formula.

    Returns
    -------
    pandas.DataFrame
        One row per model, ordered by number of parameters: ``npar, AIC, BIC, logLik,
        deviance, Chisq, Df, Pr(>Chisq)``. Each ``Chisq`` compares a row with the one above
        it (twice the gain in log-likelihood, floored at 0), on ``Df`` = their difference in
        ``npar``.

    Raises
    ------
    InterlaceError
        Fewer than two models, or models fitted to different numbers of observations or to
        different responses.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("reading_times")
    >>> m0 = interlace.fit("rt ~ 1", data, groups=["subject", "item"], method="ML")
    >>> m1 = interlace.fit("rt ~ condition", data, groups=["subject", "item"], method="ML")
    >>> table = anova(m0, m1, names=["m0", "m1"])
    >>> list(table.index), int(table["Df"].iloc[1])
    (['m0', 'm1'], 1)
    """
    with single_threaded_blas():
        from interlace.results import LmmResult, _unique_names

        if len(models) < 2:
            raise InterlaceError(
                "anova needs two or more models to compare; for tests of one model's fixed effects "
                "use interlace.contest(result, L)"
            )
        for model in models:
            if not isinstance(model, LmmResult):
                raise InputTypeError(
                    f"anova compares LmmResult objects, not {type(model).__name__}"
                )
        if names is None:
            labels = _unique_names(
                [model.formula or f"model{i + 1}" for i, model in enumerate(models)]
            )
        else:
            labels = [str(name) for name in names]
            if len(labels) != len(models):
                raise InterlaceError(f"{len(labels)} names for {len(models)} models")
        sizes = {int(model.nobs) for model in models}
        if len(sizes) > 1:
            raise InterlaceError(
                f"models were not all fitted to the same number of observations ({sorted(sizes)}); "
                "a likelihood-ratio test needs the same rows"
            )
        responses = [np.asarray(model.design.y, dtype=float) for model in models]
        if any(not np.array_equal(responses[0], y) for y in responses[1:]):
            raise InterlaceError(
                "models were fitted to different responses; they cannot be compared"
            )
        fits = list(models)
        if refit and any(model.method == "REML" for model in fits):
            warnings.warn(
                "refitting model(s) with ML (instead of REML)", InterlaceWarning, stacklevel=2
            )
            fits = [refit_ml(model) for model in fits]
        npar = [len(m.fe_params) + len(m.theta) + 1 for m in fits]
        order = sorted(range(len(fits)), key=npar.__getitem__)
        llf = np.array([fits[i].llf for i in order])
        n_parameters = np.array([npar[i] for i in order])
        chisq = np.concatenate([[np.nan], 2.0 * np.maximum(0.0, np.diff(llf))])
        df = np.concatenate([[np.nan], np.diff(n_parameters).astype(float)])
        pvalue = [
            math.nan if (math.isnan(d) or d == 0) else _chi_square_upper(c, d)
            for c, d in zip(chisq, df, strict=True)
        ]
        return pd.DataFrame(
            {
                "npar": n_parameters,
                "AIC": [fits[i].aic for i in order],
                "BIC": [fits[i].bic for i in order],
                "logLik": llf,
                "deviance": -2.0 * llf,
                "Chisq": chisq,
                "Df": df,
                "Pr(>Chisq)": pvalue,
            },
            index=pd.Index([labels[i] for i in order]),
        )


# --- confidence intervals ------------------------------------------------------------------------


def _percent_labels(level: float) -> list[str]:
    """lme4's ``format.perc``: "2.5 %", "97.5 %"."""
    from interlace.results import _r_format

    alpha = (1.0 - level) / 2.0
    return [f"{text.strip()} %" for text in _r_format([100 * alpha, 100 * (1 - alpha)], 3)]


def _term_layout(result: LmmResult) -> list[tuple[str, list[str], int]]:
    """Per term: lme4's group name (``g``, ``g.1`` for repeats), its columns, and q."""
    from interlace.results import _unique_names

    terms = tuple(result.design.terms)
    groups = _unique_names([str(term.group) for term in terms])
    return [
        (group, [str(c) for c in term.columns], len(term.columns))
        for group, term in zip(groups, terms, strict=True)
    ]


def _variance_names(result: LmmResult) -> tuple[list[str], list[str]]:
    """lme4's ``signames = FALSE`` names of the sd/cor parameters and their kinds."""
    names, kinds = [], []
    for group, columns, q in _term_layout(result):
        for col in range(q):
            for row in range(col, q):
                if row == col:
                    names.append(f"sd_{columns[row]}|{group}")
                    kinds.append("sd")
                else:
                    names.append(f"cor_{columns[row]}.{columns[col]}|{group}")
                    kinds.append("cor")
    return [*names, "sigma"], [*kinds, "sigma"]


def _sdcor_from_theta(theta: np.ndarray, sigma: float, q_per_term: list[int]) -> np.ndarray:
    """(sd, cor) per term in θ's layout (lme4's Cv_to_Sv), sds on the data scale."""
    from interlace.results import _relative_factor

    out, at = [], 0
    for q in q_per_term:
        size = q * (q + 1) // 2
        lam = _relative_factor(np.asarray(theta[at : at + size]), q)
        cov = sigma**2 * lam @ lam.T
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        for col in range(q):
            for row in range(col, q):
                if row == col:
                    out.append(sd[row])
                else:
                    denominator = sd[row] * sd[col]
                    out.append(cov[row, col] / denominator if denominator > 0 else 0.0)
        at += size
    return np.array(out, dtype=float)


def _theta_from_sdcor(sdcor: np.ndarray, sigma: float, q_per_term: list[int]) -> np.ndarray | None:
    """θ from (sd, cor) and σ (lme4's Sv_to_Cv); None when a correlation matrix is not PSD."""
    theta, at = [], 0
    for q in q_per_term:
        size = q * (q + 1) // 2
        values = sdcor[at : at + size]
        sd, corr = np.zeros(q), np.eye(q)
        k = 0
        for col in range(q):
            for row in range(col, q):
                if row == col:
                    sd[row] = values[k] / sigma
                else:
                    corr[row, col] = corr[col, row] = values[k]
                k += 1
        factor = _semidefinite_cholesky(corr)
        if factor is None:
            return None
        lam = sd[:, None] * factor
        theta.extend(lam[row, col] for col in range(q) for row in range(col, q))
        at += size
    return np.array(theta, dtype=float)


def _semidefinite_cholesky(matrix: np.ndarray) -> np.ndarray | None:
    """Lower-triangular L with L Lᵀ = matrix for a PSD correlation matrix (zero pivots allowed)."""
    q = matrix.shape[0]
    factor = np.zeros((q, q))
    for j in range(q):
        pivot = matrix[j, j] - factor[j, :j] @ factor[j, :j]
        if pivot < -1e-10:
            return None
        factor[j, j] = math.sqrt(max(pivot, 0.0))
        for i in range(j + 1, q):
            off = matrix[i, j] - factor[i, :j] @ factor[j, :j]
            if factor[j, j] > 1e-12:
                factor[i, j] = off / factor[j, j]
            elif abs(off) > 1e-8:
                return None
    return factor


def _nelder_mead(
    func: Callable[[np.ndarray], float],
    start: np.ndarray,
    step: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    f_tolerance: float = 1e-10,
    x_tolerance: float = 1e-7,
) -> tuple[np.ndarray, float]:
    """Minimise ``func`` within bounds: Nelder-Mead on the clipped point, restarted until a
    fresh simplex no longer improves (the profiled deviance is smooth and low-dimensional)."""

    def clipped(x: np.ndarray) -> np.ndarray:
        return np.clip(x, lower, upper)

    best = clipped(np.asarray(start, dtype=float))
    best_value = func(best)
    n = best.size
    if n == 0:
        return best, best_value
    scale = np.asarray(step, dtype=float)
    for _restart in range(6):
        simplex = [best]
        for i in range(n):
            vertex = best.copy()
            vertex[i] += scale[i] if vertex[i] + scale[i] <= upper[i] else -scale[i]
            simplex.append(clipped(vertex))
        values = [best_value] + [func(v) for v in simplex[1:]]
        for _ in range(400 * n):
            order = np.argsort(values)
            simplex = [simplex[i] for i in order]
            values = [values[i] for i in order]
            spread_f = values[-1] - values[0]
            spread_x = max(np.max(np.abs(v - simplex[0])) for v in simplex[1:])
            if (
                np.isfinite(spread_f)
                and spread_f <= f_tolerance * (1.0 + abs(values[0]))
                and spread_x <= x_tolerance * (1.0 + np.max(np.abs(simplex[0])))
            ):
                break
            centroid = np.mean(simplex[:-1], axis=0)
            worst = simplex[-1]
            reflected = clipped(centroid + (centroid - worst))
            f_reflected = func(reflected)
            if f_reflected < values[0]:
                expanded = clipped(centroid + 2.0 * (centroid - worst))
                f_expanded = func(expanded)
                if f_expanded < f_reflected:
                    simplex[-1], values[-1] = expanded, f_expanded
                else:
                    simplex[-1], values[-1] = reflected, f_reflected
            elif f_reflected < values[-2]:
                simplex[-1], values[-1] = reflected, f_reflected
            else:
                if f_reflected < values[-1]:
                    contracted = clipped(centroid + 0.5 * (reflected - centroid))
                else:
                    contracted = clipped(centroid + 0.5 * (worst - centroid))
                f_contracted = func(contracted)
                if f_contracted < min(values[-1], f_reflected):
                    simplex[-1], values[-1] = contracted, f_contracted
                else:
                    for i in range(1, n + 1):
                        simplex[i] = clipped(simplex[0] + 0.5 * (simplex[i] - simplex[0]))
                        values[i] = func(simplex[i])
        i_best = int(np.argmin(values))
        improvement = best_value - values[i_best]
        if values[i_best] <= best_value:
            best, best_value = simplex[i_best], values[i_best]
        if improvement <= f_tolerance * (1.0 + abs(best_value)):
            break
        scale = np.maximum(np.abs(best) * 0.01, np.asarray(step) * 0.05)
    return best, best_value


def _brent_root(
    func: Callable[[float], float], a: float, b: float, fa: float, fb: float, tolerance: float
) -> float:
    """A root of ``func`` in [a, b] with fa, fb of opposite signs (Brent's zeroin)."""
    c, fc = a, fa
    d = e = b - a
    for _ in range(100):
        if (fb > 0) == (fc > 0):
            c, fc = a, fa
            d = e = b - a
        if abs(fc) < abs(fb):
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol = 2.0 * _MACHINE_EPSILON * abs(b) + 0.5 * tolerance
        middle = 0.5 * (c - b)
        if abs(middle) <= tol or fb == 0.0:
            return b
        if abs(e) >= tol and abs(fa) > abs(fb):
            s = fb / fa
            if a == c:
                p, q = 2.0 * middle * s, 1.0 - s
            else:
                q_, r = fa / fc, fb / fc
                p = s * (2.0 * middle * q_ * (q_ - r) - (b - a) * (r - 1.0))
                q = (q_ - 1.0) * (r - 1.0) * (s - 1.0)
            if p > 0:
                q = -q
            p = abs(p)
            if 2.0 * p < min(3.0 * middle * q - abs(tol * q), abs(e * q)):
                e, d = d, p / q
            else:
                d = e = middle
        else:
            d = e = middle
        a, fa = b, fb
        b += d if abs(d) > tol else (tol if middle > 0 else -tol)
        fb = func(b)
    return b


def _profile_limit(
    zeta: Callable[[float], float],
    estimate: float,
    direction: float,
    first_step: float,
    bound: float,
    target: float,
    tolerance: float,
) -> float:
    """The x on one side of the estimate where direction·ζ(x) reaches ``target``; ``bound`` if
    the profile stays below it all the way to the parameter's bound (lme4 then reports the
    bound); NaN if it cannot be bracketed."""
    x_previous, z_previous = estimate, 0.0
    step = abs(first_step)
    for _ in range(60):
        x = x_previous + direction * step
        x = min(x, bound) if direction > 0 else max(x, bound)
        z = direction * zeta(x)
        if z >= target:
            return _brent_root(
                lambda v: direction * zeta(v) - target,
                x_previous,
                x,
                z_previous - target,
                z - target,
                tolerance,
            )
        if x == bound:
            return bound
        slope = (z - z_previous) / abs(x - x_previous)
        last = abs(x - x_previous)
        if slope > 0:
            step = min(1.2 * (target - z) / slope + 0.05 * last, 10.0 * last)
        else:
            step = 2.0 * last
        x_previous, z_previous = x, z
    return math.nan


class _Profiler:
    """The ML deviance of a fit as a function of lme4's profile parameters (sd, cor, σ, β)."""

    def __init__(self, result_ml: LmmResult) -> None:
        design = result_ml.design
        self.design = design
        self.model = _model_of(result_ml, reml=False)
        self.n = int(design.nobs)
        self.q_per_term = [len(term.columns) for term in design.terms]
        self.base = -2.0 * float(result_ml.llf)
        self.theta = np.asarray(result_ml.theta, dtype=float)
        sigma = float(result_ml.sigma)
        self.varpar = np.append(_sdcor_from_theta(self.theta, sigma, self.q_per_term), sigma)
        _, self.kinds = _variance_names(result_ml)
        self.lower = np.array([-1.0 if kind == "cor" else 0.0 for kind in self.kinds])
        self.upper = np.array([1.0 if kind == "cor" else np.inf for kind in self.kinds])
        self.scale = np.array([1.0 if kind == "cor" else sigma for kind in self.kinds])
        self.beta = result_ml.fe_params.to_numpy(dtype=float)
        self.beta_se = result_ml.bse.to_numpy(dtype=float)

    def deviance(self, varpar: np.ndarray) -> float:
        """lme4's devfun2: the ML deviance at (sd, cor, σ), β profiled out."""
        sigma = float(varpar[-1])
        if not sigma > 0.0:
            return math.inf
        theta = _theta_from_sdcor(np.asarray(varpar[:-1]), sigma, self.q_per_term)
        if theta is None:
            return math.inf
        try:
            log_det_l, _, penalised_rss = self.model.deviance_parts(theta)
        except NumericalError:  # far from the optimum the factorisation may fail: not a minimum
            return math.inf
        sigma2 = sigma * sigma
        return log_det_l + penalised_rss / sigma2 + self.n * (_LOG_2PI + math.log(sigma2))

    def variance_interval(self, w: int, target: float) -> tuple[float, float]:
        estimate = float(self.varpar[w])
        free = np.array([i for i in range(self.varpar.size) if i != w])
        solved: list[tuple[float, np.ndarray]] = [(estimate, self.varpar[free])]
        lower, upper = self.lower[free], self.upper[free]

        def zeta(x: float) -> float:
            # Start from the solutions at the two nearest values of x, extrapolated linearly;
            # the first simplex spans about twice the distance that extrapolation moved.
            nearest = sorted(solved, key=lambda item: abs(item[0] - x))[:2]
            start = nearest[0][1]
            step = np.maximum(0.05 * np.abs(start), 0.01 * self.scale[free])
            if len(nearest) == 2 and nearest[1][0] != nearest[0][0]:
                (x1, u1), (x2, u2) = nearest
                start = np.clip(u1 + (x - x1) * (u2 - u1) / (x2 - x1), lower, upper)
                step = np.minimum(
                    step, np.maximum(2.0 * np.abs(start - u1), 1e-4 * self.scale[free])
                )
            full = self.varpar.copy()
            full[w] = x

            def objective(u: np.ndarray) -> float:
                full[free] = u
                return self.deviance(full)

            u, value = _nelder_mead(objective, start, step, lower, upper)
            solved.append((x, u))
            difference = value - self.base
            if difference < -1e-6:
                warnings.warn(
                    f"profiling found a deviance {-difference:.3g} below the fit's at "
                    f"parameter {w + 1} = {x:.6g}: the fit may not be at the optimum",
                    ConvergenceWarning,
                    stacklevel=5,
                )
            return math.copysign(math.sqrt(max(difference, 0.0)), x - estimate)

        kind = self.kinds[w]
        lower_bound, upper_bound = float(self.lower[w]), float(self.upper[w])
        if kind == "cor":
            steps = (0.25 * (1.0 + estimate), 0.25 * (1.0 - estimate))
        elif estimate < 1e-8 * self.scale[w]:
            # an sd estimated as (nearly) zero: the profile cannot fall below it, the lower
            # limit is the bound 0, as lme4 reports it.
            steps = (0.0, 0.1 * self.scale[w])
        else:
            steps = (0.25 * estimate, 0.25 * estimate)
        tolerance = 1e-7 * self.scale[w]
        limits = []
        for direction, step, bound in ((-1.0, steps[0], lower_bound), (1.0, steps[1], upper_bound)):
            if step <= 0.0 or (estimate <= bound if direction < 0 else estimate >= bound):
                limits.append(bound)
                continue
            limits.append(_profile_limit(zeta, estimate, direction, step, bound, target, tolerance))
        return limits[0], limits[1]

    def fixed_interval(self, j: int, target: float) -> tuple[float, float]:
        from interlace.api import _core_model

        design = self.design
        keep = [k for k in range(self.beta.size) if k != j]
        x_rest = np.asfortranarray(design.x[:, keep], dtype=float)
        column = np.asarray(design.x[:, j], dtype=float)
        estimate = float(self.beta[j])

        def zeta(value: float) -> float:
            reduced = dataclasses.replace(
                design,
                y=np.asarray(design.y, dtype=float) - column * value,
                x=x_rest,
                fixed_names=tuple(design.fixed_names[k] for k in keep),
            )
            core = _core_model(reduced, reml=False).fit(self.theta)
            difference = float(core["objective"]) - self.base
            return math.copysign(math.sqrt(max(difference, 0.0)), value - estimate)

        step = target * self.beta_se[j]
        tolerance = 1e-8 * max(abs(estimate), self.beta_se[j])
        return (
            _profile_limit(zeta, estimate, -1.0, step, -math.inf, target, tolerance),
            _profile_limit(zeta, estimate, 1.0, step, math.inf, target, tolerance),
        )


def confint(
    result: LmmResult,
    parm: Sequence[str] | None = None,
    level: float = 0.95,
    method: str = "wald",
    *,
    nsim: int = 500,
    seed: int | None = None,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Confidence intervals for the variance parameters and fixed effects, as lme4's ``confint``.

    Parameters
    ----------
    result : LmmResult
    parm : sequence of str, optional
        Row names to compute (default: all): ``sd_<column>|<group>``,
        ``cor_<column>.<column>|<group>``, ``sigma`` and the fixed-effect names.
    level : float, default 0.95
        Confidence level.
    method : {"wald", "profile"}
        ``"wald"``: β̂ ± z·se for the fixed effects, NaN for the variance parameters (as lme4).
        ``"profile"``: likelihood-profile intervals for every parameter (lme4's default method).
        ``"boot"``: percentile intervals from a parametric bootstrap of ``nsim`` refits
        (lme4's ``method = "boot"``; see :func:`interlace.bootstrap.bootstrap`).
    nsim, seed, n_jobs
        For ``"boot"``: number of replicates (lme4's default 500), seed, worker threads.

    Returns
    -------
    pandas.DataFrame
        Rows in lme4's order: per random-effects term its standard deviations and correlations
        (θ's layout), then ``sigma``, then the fixed effects; columns labelled as lme4's
        (``"2.5 %"``, ``"97.5 %"`` at level 0.95).

    Notes
    -----
    The profile follows lme4's ``profile.merMod``: a REML fit is first refitted by ML, and each
    parameter's signed root deviance ζ(x) = sign(x − x̂)·√(d̃(x) − d̂) uses the ML deviance
    minimised over all other parameters (sd/cor/σ for a variance parameter, with β profiled;
    θ for a fixed effect, by refitting with that coefficient held fixed as an offset). The
    limits solve |ζ| = z_{1−α/2}; lme4 interpolates a spline through a grid of ζ values
    instead, which agrees to about three significant digits. A limit the profile never reaches
    before a parameter's bound is reported as the bound (0 for a standard deviation, ±1 for a
    correlation), as lme4 does.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("reading_times")
    >>> res = interlace.fit("rt ~ condition", data, groups=["subject", "item"])
    >>> ci = confint(res, level=0.9)
    >>> list(ci.columns)
    ['5 %', '95 %']
    >>> list(ci.index)[-1] == res.fe_params.index[-1]
    True
    """
    with single_threaded_blas():
        if not isinstance(method, str) or method.lower() not in ("wald", "profile", "boot"):
            raise InterlaceError(
                f"unknown confint method {method!r}: use 'wald', 'profile' or 'boot'"
            )
        level = float(level)
        if not 0.0 < level < 1.0:
            raise InterlaceError(f"level must be between 0 and 1, got {level}")
        variance_names, _ = _variance_names(result)
        fixed_names = [str(name) for name in result.fe_params.index]
        all_names = variance_names + fixed_names
        if parm is None:
            wanted = all_names
        else:
            requested = [parm] if isinstance(parm, str) else [str(name) for name in parm]
            unknown = [name for name in requested if name not in all_names]
            if unknown:
                raise InterlaceError(
                    f"unknown parameters {unknown}; the parameters are {all_names}"
                )
            wanted = [name for name in all_names if name in requested]
        labels = _percent_labels(level)
        z = _normal_quantile(0.5 + 0.5 * level)
        out = pd.DataFrame(np.nan, index=pd.Index(wanted), columns=labels, dtype=float)
        if method.lower() == "boot":
            from interlace.bootstrap import bootstrap_confint

            return bootstrap_confint(result, wanted, level, nsim=nsim, seed=seed, n_jobs=n_jobs)
        if method.lower() == "wald":
            for name in wanted:
                if name in fixed_names:
                    estimate = float(result.fe_params[name])
                    error = float(result.bse[name])
                    out.loc[name] = [estimate - z * error, estimate + z * error]
            return out
        profiler = _Profiler(refit_ml(result))
        for name in wanted:
            if name in fixed_names:
                out.loc[name] = profiler.fixed_interval(fixed_names.index(name), z)
            else:
                out.loc[name] = profiler.variance_interval(variance_names.index(name), z)
        return out


# --- prediction ----------------------------------------------------------------------------------


def _model_matrix(spec: Any, data: pd.DataFrame, columns: Sequence[str], what: str) -> np.ndarray:
    """Rebuild a model matrix on new rows with the fit's coding; unseen categories are errors."""
    from formulaic.errors import DataMismatchWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataMismatchWarning)
        try:
            frame = spec.get_model_matrix(data, na_action="ignore")
        except Exception as error:  # formulaic raises many types; all mean "cannot evaluate"
            raise DataError(f"newdata: the {what} could not be evaluated: {error}") from error
    mismatches = [w for w in caught if issubclass(w.category, DataMismatchWarning)]
    if mismatches:
        # formulaic would code an unseen level as the reference level; lme4 refuses it.
        unseen = []
        for factor, state in getattr(spec, "factor_contrasts", {}).items():
            name = str(getattr(factor, "expr", factor))
            if name in data.columns:
                new = sorted({str(v) for v in data[name].dropna()} - {str(v) for v in state.levels})
                if new:
                    unseen.append(f"'{name}' has levels {new} not seen in the fit")
        detail = "; ".join(unseen) if unseen else str(mismatches[0].message)
        raise DataError(f"newdata: {detail} (the {what} cannot code them)")
    for other in caught:
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    return frame.loc[:, list(columns)].to_numpy(dtype=float)


def _level_codes(term: Any, data: pd.DataFrame) -> np.ndarray:
    """Codes of the new rows' levels in the fit (−1: a level not seen in the fit)."""
    levels = pd.Index(term.levels)
    if len(term.factors) == 1:
        values = data[term.factors[0]]
        codes = levels.get_indexer(values)
        missing = codes < 0
        if missing.any():
            # '308' and 308 name the same level: match on the text of both.
            by_text = {str(level): i for i, level in enumerate(levels)}
            codes[missing] = [by_text.get(str(v), -1) for v in values[missing]]
        return codes
    labels = [":".join(str(v) for v in row) for row in data[list(term.factors)].itertuples(False)]
    return levels.get_indexer(labels)


def predict(
    result: LmmResult, newdata: object | None = None, include_re: bool = True
) -> np.ndarray:
    """Predictions of the model on its own rows or on new data (lme4's ``predict``).

    Parameters
    ----------
    result : LmmResult
    newdata : pandas.DataFrame, polars.DataFrame or pyarrow.Table, optional
        Rows to predict; it needs the columns of the fixed part and of the random terms (not
        the response). Default: the rows of the fit.
    include_re : bool, default True
        Add the conditional modes of the random effects (lme4's ``re.form = NULL``); False
        gives the population-level prediction X β̂ (``re.form = NA``).

    Returns
    -------
    numpy.ndarray
        One prediction per row. A grouping level not seen in the fit contributes zero
        (lme4's ``allow.new.levels = TRUE``); a row with a missing value in a column the model
        reads is NaN.

    Raises
    ------
    DataError
        ``newdata`` lacks a column the model reads, or has a level of a categorical fixed
        effect that the fit did not see.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("reading_times")
    >>> res = interlace.fit("rt ~ condition", data, groups=["subject", "item"])
    >>> import numpy as np
    >>> bool(np.allclose(predict(res), res.fittedvalues))
    True
    >>> new = data.head(3).assign(subject="a new subject")
    >>> predict(res, new).shape
    (3,)
    """
    with single_threaded_blas():
        design = result.design
        beta = result.fe_params.to_numpy(dtype=float)
        fixed_names = [str(name) for name in design.fixed_names]
        if newdata is None:
            if include_re:
                return result.fittedvalues.to_numpy(dtype=float).copy()
            return np.asarray(design.x, dtype=float) @ beta
        data = as_pandas(newdata, "newdata")
        specs = [design.fixed_spec] + ([term.spec for term in design.terms] if include_re else [])
        needed: list[str] = []
        for spec in specs:
            needed.extend(sorted(str(v) for v in spec.required_variables))
        if include_re:
            for term in design.terms:
                needed.extend(term.factors)
        needed = list(dict.fromkeys(needed))
        available = {str(c) for c in data.columns}
        missing_columns = [name for name in needed if name not in available]
        if missing_columns:
            raise DataError(
                f"newdata has no column '{missing_columns[0]}', which the model reads"
                + (f" (nor {missing_columns[1:]})" if len(missing_columns) > 1 else "")
            )
        prediction = np.full(len(data), np.nan)
        complete = (
            ~data[needed].isna().any(axis=1).to_numpy() if needed else np.ones(len(data), bool)
        )
        rows = data.loc[complete].reset_index(drop=True)
        if len(rows) == 0:
            return prediction
        values = _model_matrix(design.fixed_spec, rows, fixed_names, "fixed-effects formula") @ beta
        if include_re and design.terms:
            modes = _model_of(result, result.method == "REML").estimates(
                np.ascontiguousarray(result.theta, dtype=float)
            )["b"]
            for term, b_k in zip(design.terms, modes, strict=True):
                z = _model_matrix(
                    term.spec, rows, term.columns, f"random-effects term {term.label}"
                )
                codes = _level_codes(term, rows)
                b_k = np.asarray(b_k, dtype=float).reshape(term.n_levels, -1)
                seen = codes >= 0
                values[seen] += np.sum(z[seen] * b_k[codes[seen]], axis=1)
        prediction[complete] = values
        return prediction
