"""Frozen, labelled results of a linear mixed-model fit.

The Rust core returns bare arrays (θ, β, σ, cov(β̂), conditional modes and their conditional
covariances, fitted values); this module attaches the names the design knows (fixed-effect names,
grouping factors, term columns, level labels, row labels) and derives what lme4 reports:

    covariance of term k's random effects    Σ_k = σ² λ_k λ_kᵀ      (Bates et al. 2015, §2.1)
    log-likelihood                           llf = −objective / 2   (the REML criterion or deviance)
    AIC = objective + 2·npar,  BIC = objective + log(n)·npar,  npar = p + n_θ + 1   (lme4's df)
    singular fit                             some θ with lower bound 0 is below 1e-4  (isSingular)

Statistical conditions (a boundary fit, a doubtful optimum) are decided here, in
:func:`fit_warnings`, and issued as warnings by the caller.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from interlace._threads import single_threaded_blas
from interlace.exceptions import ConvergenceWarning, InterlaceError, SingularFitWarning

__all__ = ["LmmResult", "OptimizationRecord", "Summary", "fit_warnings"]

#: lme4's ``isSingular(tol = 1e-4)``: a θ element with lower bound 0 below this is on the boundary.
SINGULAR_TOLERANCE = 1e-4
#: Largest |∂objective/∂θ| accepted at an interior optimum before a ConvergenceWarning.
GRADIENT_TOLERANCE = 2e-3

_INTERCEPT_NAMES = ("Intercept", "(Intercept)")


def _frozen_array(values: Any, dtype: Any = float) -> np.ndarray:
    out = np.array(values, dtype=dtype)
    out.flags.writeable = False
    return out


def _unique_names(names: list[str]) -> list[str]:
    """R's ``make.unique``: repeats become ``name.1``, ``name.2``, ... (lme4's VarCorr groups)."""
    seen: set[str] = set(names)
    counts: dict[str, int] = {}
    out = []
    for name in names:
        if name not in counts:
            counts[name] = 0
            out.append(name)
            continue
        while True:
            counts[name] += 1
            candidate = f"{name}.{counts[name]}"
            if candidate not in seen:
                break
        seen.add(candidate)
        out.append(candidate)
    return out


def _theta_layout(q_per_term: list[int]) -> tuple[list[slice], np.ndarray]:
    """Each term's slice of θ and θ's lower bounds (0 on λ_k's diagonal, -inf below it)."""
    slices, lower = [], []
    at = 0
    for q in q_per_term:
        size = q * (q + 1) // 2
        slices.append(slice(at, at + size))
        for col in range(q):
            for row in range(col, q):
                lower.append(0.0 if row == col else -np.inf)
        at += size
    return slices, np.array(lower)


def _relative_factor(theta_k: np.ndarray, q: int) -> np.ndarray:
    """λ_k, lower triangular, from its lower triangle stored column-major in θ."""
    lam = np.zeros((q, q))
    at = 0
    for col in range(q):
        for row in range(col, q):
            lam[row, col] = theta_k[at]
            at += 1
    return lam


def _correlation(cov: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.outer(sd, sd)


@dataclass(frozen=True, eq=False)
class _CoreArrays:
    """The arrays of the core's output that :class:`LmmResult` labels on first access."""

    beta: np.ndarray
    beta_cov: np.ndarray
    b: list[Any]
    b_cond_cov: list[Any] | None  # None: not formed by the fit, formed on first read
    fitted: np.ndarray
    resid: np.ndarray


@dataclass(frozen=True, eq=False)
class OptimizationRecord:
    """What the optimiser reported: evaluations, status, convergence, gradient at θ̂.

    Attributes
    ----------
    n_evals : int
        Number of objective evaluations.
    status : str
        The optimiser's return status.
    converged : bool
        Whether the optimiser met its convergence criteria.
    gradient : numpy.ndarray
        Finite-difference gradient of the objective at θ̂ (NaN when θ was given, not fitted).
    theta : numpy.ndarray
        θ̂, the optimum.
    scaled_gradient : numpy.ndarray
        lme4's scaled gradient R⁻¹g (H = RᵀR the finite-difference Hessian) where the plain
        gradient exceeded 2e-3, NaN for coordinates at a bound; empty when not computed.
    """

    n_evals: int
    status: str
    converged: bool
    gradient: np.ndarray
    theta: np.ndarray
    scaled_gradient: np.ndarray = field(default_factory=lambda: np.empty(0))


@dataclass(frozen=True, eq=False)
class LmmResult:
    """A fitted linear mixed model, labelled with the names of the design.

    Names follow statsmodels (``fe_params``, ``bse``, ``llf``, ``scale``, ``fittedvalues``,
    ``resid``) and lme4 (``varcorr``, ``theta``, ``is_singular``). Build it with
    :meth:`from_core`; attributes cannot be rebound.

    Attributes
    ----------
    formula : str
        The model formula, as the design recorded it.
    method : str
        ``"REML"`` or ``"ML"``.
    nobs : int
        Number of observations used.
    llf : float
        Log-likelihood at the optimum: REML log-likelihood for REML fits (lme4's ``logLik``).
    fe_params, bse, tvalues : pandas.Series
        Fixed-effect estimates β̂, their standard errors and t values, indexed by name.
    fe_cov : pandas.DataFrame
        cov(β̂) = σ² (R_Xᵀ R_X)⁻¹, p × p, labelled.
    random_effects, random_effects_se : dict
        Grouping factor → conditional modes (and their conditional SDs, lme4's condVar):
        a Series named after the factor when its only column is the intercept, otherwise a
        DataFrame with one column per term column, indexed by level. Terms on the same factor
        (``(x || g)``) are merged into one DataFrame, as lme4's ``ranef`` does.
    variance_components : dict
        Group → variance (float, scalar term) or covariance matrix (DataFrame, vector term),
        and ``"Residual"`` → σ². Repeated groups are ``g``, ``g.1``, ... (lme4's naming).
    varcorr : pandas.DataFrame
        lme4's ``as.data.frame(VarCorr(fm))``: columns ``grp, var1, var2, vcov, sdcor``; per
        term the variances (``var2`` None, ``sdcor`` the SD), then the covariances of each pair
        (``sdcor`` the correlation), then ``Residual``.
    varcov : pandas.DataFrame
        The same rows as ``varcorr`` without ``sdcor``: every variance and covariance.
    theta : numpy.ndarray
        θ̂: each term's relative covariance factor λ_k, lower triangle column-major.
    theta_names : tuple of str
        lme4's names for θ: ``"g.col"`` on the diagonal, ``"g.row.col"`` below it.
    scale, sigma : float
        Residual variance σ² and standard deviation σ.
    aic, bic : float
        ``-2 llf + 2 npar`` and ``-2 llf + log(n) npar`` with ``npar = p + n_θ + 1``.
    ngroups : dict
        Grouping factor → number of levels.
    converged, is_singular : bool
        Optimiser convergence; lme4's ``isSingular`` (a variance or λ diagonal below 1e-4).
    fittedvalues, resid : pandas.Series
        Conditional fitted values Xβ̂ + Zb̂ and residuals, indexed by the rows used.
    optimization : OptimizationRecord
        The optimiser's record.
    design : object
        The design the model was fitted on.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("students_schools")
    >>> res = interlace.fit(  # doctest: +SKIP
    ...     "score ~ hours", data, random=["(1 + hours | school)"]
    ... )
    >>> res.fe_params  # doctest: +SKIP
    >>> res.varcorr  # doctest: +SKIP
    >>> print(res.summary())  # doctest: +SKIP
    """

    formula: str
    method: str
    nobs: int
    llf: float
    theta: np.ndarray = field(repr=False)
    theta_names: tuple[str, ...] = field(repr=False)
    scale: float = field(repr=False)
    sigma: float = field(repr=False)
    aic: float = field(repr=False)
    bic: float = field(repr=False)
    ngroups: dict[str, int] = field(repr=False)
    converged: bool = field(repr=False)
    is_singular: bool = field(repr=False)
    optimization: OptimizationRecord = field(repr=False)
    design: Any = field(repr=False)
    # The core's arrays, checked against the design's names; the labelled pandas attributes
    # below are built from them on first access (a fit in a loop that reads two numbers does
    # not pay for a dozen DataFrames).
    _arrays: _CoreArrays = field(repr=False)

    @classmethod
    def from_core(cls, design: Any, core: dict[str, Any], method: str) -> LmmResult:
        """Label the core's output with the design's names.

        Parameters
        ----------
        design
            The design the core was given: ``fixed_names``, ``terms`` (each with ``group``,
            ``columns``, ``levels``), ``row_index``, ``nobs``, ``formula``.
        core
            ``Model.fit(...)`` or ``Model.estimates(theta)`` output (see ``_core.pyi``). Without
            the optimiser record (``estimates``), ``optimization.converged`` is False.
        method
            ``"REML"`` or ``"ML"``.

        Returns
        -------
        LmmResult
        """
        method = str(method).upper()
        if method not in ("REML", "ML"):
            raise InterlaceError(f"method must be 'REML' or 'ML', got {method!r}")
        terms = tuple(design.terms)
        p = len(design.fixed_names)
        nobs = int(design.nobs)

        beta = _frozen_array(core["beta"]).ravel()
        if beta.size != p:
            raise InterlaceError(f"the core returned {beta.size} fixed effects for {p} names")
        beta_cov = np.asarray(core["beta_cov"], dtype=float).reshape(p, p)

        theta = _frozen_array(core["theta"]).ravel()
        q_per_term = [len(term.columns) for term in terms]
        _, lower = _theta_layout(q_per_term)
        if theta.size != lower.size:
            raise InterlaceError(
                f"the core returned {theta.size} θ values; the terms need {lower.size}"
            )
        sigma = float(core["sigma"])

        b_list = list(core["b"])
        cond_list = None if core["b_cond_cov"] is None else list(core["b_cond_cov"])
        if len(b_list) != len(terms) or len(cond_list if cond_list is not None else terms) != len(
            terms
        ):
            raise InterlaceError(
                f"the core returned {len(b_list)} blocks of modes for {len(terms)} terms"
            )
        theta_names: list[str] = []
        ngroups: dict[str, int] = {}
        for term in terms:
            group = str(term.group)
            columns = [str(c) for c in term.columns]
            for col in range(len(columns)):
                for row in range(col, len(columns)):
                    theta_names.append(
                        f"{group}.{columns[col]}"
                        if row == col
                        else f"{group}.{columns[row]}.{columns[col]}"
                    )
            ngroups.setdefault(group, len(term.levels))

        objective = float(core["objective"])
        n_theta = int(theta.size)
        npar = p + n_theta + 1
        converged = bool(core.get("converged", False))
        gradient = core.get("gradient")
        optimization = OptimizationRecord(
            n_evals=int(core.get("n_evals", 0)),
            status=str(core.get("status", "not optimised (estimates at a given theta)")),
            converged=converged,
            gradient=_frozen_array(
                np.full(n_theta, np.nan) if gradient is None else gradient
            ).ravel(),
            theta=theta,
            scaled_gradient=_frozen_array(
                np.asarray(core.get("scaled_gradient", np.empty(0)), dtype=float)
            ).ravel(),
        )
        fitted = np.asarray(core["fitted"], dtype=float).ravel()
        resid = np.asarray(core["resid"], dtype=float).ravel()
        if fitted.size != nobs or resid.size != nobs:
            raise InterlaceError(
                f"the core returned {fitted.size} fitted values for {nobs} observations"
            )

        return cls(
            formula=str(design.formula),
            method=method,
            nobs=nobs,
            llf=-objective / 2.0,
            theta=theta,
            theta_names=tuple(theta_names),
            scale=sigma * sigma,
            sigma=sigma,
            aic=objective + 2.0 * npar,
            bic=objective + math.log(nobs) * npar,
            ngroups=ngroups,
            converged=converged,
            is_singular=bool(np.any(theta[lower == 0.0] < SINGULAR_TOLERANCE)),
            optimization=optimization,
            design=design,
            _arrays=_CoreArrays(beta, beta_cov, b_list, cond_list, fitted, resid),
        )

    # --- labelled attributes, built on first access -------------------------------------------

    @functools.cached_property
    def _fixed_names(self) -> list[str]:
        return [str(name) for name in self.design.fixed_names]

    @functools.cached_property
    def fe_params(self) -> pd.Series:
        """Fixed-effect estimates β̂, indexed by name."""
        return pd.Series(self._arrays.beta, index=self._fixed_names, dtype=float)

    @functools.cached_property
    def bse(self) -> pd.Series:
        """Standard errors of β̂: the square roots of the diagonal of ``fe_cov``."""
        values = np.sqrt(np.clip(np.diag(self._arrays.beta_cov), 0.0, None))
        return pd.Series(values, index=self._fixed_names, dtype=float)

    @functools.cached_property
    def tvalues(self) -> pd.Series:
        """t values β̂ / SE."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.fe_params / self.bse

    @functools.cached_property
    def fe_cov(self) -> pd.DataFrame:
        """cov(β̂) = σ² (R_Xᵀ R_X)⁻¹, p × p, labelled."""
        names = self._fixed_names
        return pd.DataFrame(self._arrays.beta_cov, index=names, columns=names, dtype=float)

    @functools.cached_property
    def _variance_tables(self) -> tuple[dict[str, float | pd.DataFrame], pd.DataFrame]:
        terms = tuple(self.design.terms)
        slices, _ = _theta_layout([len(term.columns) for term in terms])
        names = _unique_names([str(term.group) for term in terms])
        scale, theta = self.scale, self.theta
        variance_components: dict[str, float | pd.DataFrame] = {}
        grp: list[str] = []
        var1: list[str | None] = []
        var2: list[str | None] = []
        vcov: list[float] = []
        sdcor: list[float] = []
        for term, name, sl in zip(terms, names, slices, strict=True):
            columns = [str(c) for c in term.columns]
            q = len(columns)
            lam = _relative_factor(theta[sl], q)
            cov = scale * lam @ lam.T
            corr = _correlation(cov)
            variance_components[name] = (
                float(cov[0, 0]) if q == 1 else pd.DataFrame(cov, index=columns, columns=columns)
            )
            for i in range(q):
                grp.append(name)
                var1.append(columns[i])
                var2.append(None)
                vcov.append(float(cov[i, i]))
                sdcor.append(math.sqrt(max(cov[i, i], 0.0)))
            for i in range(q):
                for j in range(i + 1, q):
                    grp.append(name)
                    var1.append(columns[i])
                    var2.append(columns[j])
                    vcov.append(float(cov[i, j]))
                    sdcor.append(float(corr[i, j]))
        variance_components["Residual"] = scale
        grp.append("Residual")
        var1.append(None)
        var2.append(None)
        vcov.append(scale)
        sdcor.append(self.sigma)
        # Object columns keep None (not NaN) where lme4 has NA: var2 of a variance, var1/var2 of
        # the residual.
        varcorr = pd.DataFrame(
            {
                "grp": pd.Series(grp, dtype=object),
                "var1": pd.Series(var1, dtype=object),
                "var2": pd.Series(var2, dtype=object),
                "vcov": np.array(vcov, dtype=float),
                "sdcor": np.array(sdcor, dtype=float),
            }
        )
        return variance_components, varcorr

    @functools.cached_property
    def variance_components(self) -> dict[str, float | pd.DataFrame]:
        """Group → variance (float, scalar term) or covariance matrix (DataFrame, vector term),
        and ``"Residual"`` → σ²."""
        return self._variance_tables[0]

    @functools.cached_property
    def varcorr(self) -> pd.DataFrame:
        """lme4's ``as.data.frame(VarCorr(fm))``: ``grp, var1, var2, vcov, sdcor``."""
        return self._variance_tables[1]

    @functools.cached_property
    def varcov(self) -> pd.DataFrame:
        """The rows of ``varcorr`` without ``sdcor``: every variance and covariance."""
        return self.varcorr.drop(columns="sdcor")

    @functools.cached_property
    def _conditional_covariances(self) -> list[Any]:
        """Per term, the (n_levels, q, q) conditional covariances of the modes. ``interlace.fit``
        does not form them (on InstEval they cost a dense factor of the second block and its
        inverse); they are formed here on first read, from the design at θ̂, as lme4's
        ``ranef(condVar = TRUE)`` forms them from the fitted model."""
        if self._arrays.b_cond_cov is not None:
            return self._arrays.b_cond_cov
        from interlace.api import _core_model  # api imports this module

        with single_threaded_blas():
            core = _core_model(self.design, reml=self.method == "REML").estimates(
                np.ascontiguousarray(self.theta, dtype=np.float64)
            )
        blocks = list(core["b_cond_cov"])
        if len(blocks) != len(self.design.terms):
            raise InterlaceError(
                f"the core returned {len(blocks)} blocks of covariances for "
                f"{len(self.design.terms)} terms"
            )
        return blocks

    def _by_group(self, blocks: list[np.ndarray]) -> dict[str, pd.Series | pd.DataFrame]:
        """Per-term (n_levels, q) arrays labelled and merged by grouping factor."""
        frames: dict[str, list[pd.DataFrame]] = {}
        for term, block in zip(self.design.terms, blocks, strict=True):
            group = str(term.group)
            columns = [str(c) for c in term.columns]
            levels = pd.Index(term.levels).rename(group)  # a new Index: the design's stays as it is
            values = np.asarray(block, dtype=float).reshape(len(levels), len(columns))
            frames.setdefault(group, []).append(pd.DataFrame(values, index=levels, columns=columns))
        return {g: _merge_blocks(g, group_frames) for g, group_frames in frames.items()}

    @functools.cached_property
    def random_effects(self) -> dict[str, pd.Series | pd.DataFrame]:
        """Grouping factor → conditional modes (lme4's ``ranef``)."""
        return self._by_group(list(self._arrays.b))

    @functools.cached_property
    def random_effects_se(self) -> dict[str, pd.Series | pd.DataFrame]:
        """Grouping factor → conditional SDs of the modes (lme4's ``condVar``), formed on first
        read."""
        sds = []
        for term, cond_k in zip(self.design.terms, self._conditional_covariances, strict=True):
            q = len(term.columns)
            cond_k = np.asarray(cond_k, dtype=float).reshape(len(term.levels), q, q)
            sds.append(np.sqrt(np.clip(np.diagonal(cond_k, axis1=1, axis2=2), 0.0, None)))
        return self._by_group(sds)

    @functools.cached_property
    def fittedvalues(self) -> pd.Series:
        """Conditional fitted values Xβ̂ + Zb̂, indexed by the rows used."""
        return pd.Series(self._arrays.fitted, index=self.design.row_index, dtype=float)

    @functools.cached_property
    def resid(self) -> pd.Series:
        """Conditional residuals y − Xβ̂ − Zb̂, indexed by the rows used."""
        return pd.Series(self._arrays.resid, index=self.design.row_index, dtype=float)

    def _repr_html_(self) -> str:
        """The summary as HTML tables, for Jupyter (see :func:`interlace._html.summary_html`)."""
        from interlace._html import summary_html

        return summary_html(self)

    def summary(self) -> Summary:
        """An lme4-style report of the fit; ``print(res.summary())`` shows it.

        Returns
        -------
        Summary
            Its tables are attributes (``fixed_effects``, ``random_effects``,
            ``scaled_residuals``, ``fixed_effects_correlation``); ``str()`` formats them as
            lme4's ``print(summary(fm))`` does.
        """
        return Summary(self)

    # --- inference (computed on demand by interlace.inference) ---------------------------------

    @property
    def fe_df(self) -> pd.Series:
        """Satterthwaite degrees of freedom of each fixed effect (lmerTest's ``df``).

        See :func:`interlace.inference.fe_df`; computed once per result, then cached.
        """
        from interlace import inference

        return inference.fe_df(self)

    @property
    def fe_pvalues(self) -> pd.Series:
        """Two-sided t-test p-values on Satterthwaite's df (lmerTest's ``Pr(>|t|)``)."""
        from interlace import inference

        return inference.fe_pvalues(self)

    def confint(
        self,
        parm: Any = None,
        level: float = 0.95,
        method: str = "wald",
        *,
        nsim: int = 500,
        seed: int | None = None,
        n_jobs: int | None = None,
    ) -> pd.DataFrame:
        """Confidence intervals: ``"wald"``, likelihood ``"profile"`` or percentile ``"boot"``
        (lme4's ``confint``; ``nsim``, ``seed``, ``n_jobs`` are for ``"boot"``).

        See :func:`interlace.inference.confint`.
        """
        from interlace import inference

        return inference.confint(
            self, parm=parm, level=level, method=method, nsim=nsim, seed=seed, n_jobs=n_jobs
        )

    def predict(self, newdata: Any = None, include_re: bool = True) -> np.ndarray:
        """Predictions on the fit's rows or on ``newdata``; unseen levels contribute zero.

        See :func:`interlace.inference.predict`.
        """
        from interlace import inference

        return inference.predict(self, newdata, include_re=include_re)

    # --- simulation, bootstrap, refitting (interlace.bootstrap) -------------------------------

    def simulate(
        self, nsim: int = 1, seed: int | None = None, include_re: bool = True
    ) -> np.ndarray:
        """Responses simulated from the fit, (nobs, nsim) (lme4's ``simulate``).

        See :func:`interlace.bootstrap.simulate`.
        """
        from interlace import bootstrap

        return bootstrap.simulate(self, nsim=nsim, seed=seed, include_re=include_re)

    def bootstrap(
        self,
        n: int = 1000,
        statistic: Any = None,
        seed: int | None = None,
        n_jobs: int | None = None,
        progress: Any = None,
    ) -> Any:
        """Parametric bootstrap (lme4's ``bootMer``), a ``BootstrapResult``.

        See :func:`interlace.bootstrap.bootstrap`.
        """
        from interlace import bootstrap

        return bootstrap.bootstrap(
            self, n=n, statistic=statistic, seed=seed, n_jobs=n_jobs, progress=progress
        )

    def update(
        self,
        data: Any = None,
        formula: str | None = None,
        *,
        response: Any = None,
        method: str | None = None,
    ) -> LmmResult:
        """Refit with new data, formula or response (lme4's ``update`` / ``refit``).

        See :func:`interlace.bootstrap.update`.
        """
        from interlace import bootstrap

        return bootstrap.update(self, data, formula, response=response, method=method)


def _merge_blocks(group: str, frames: list[pd.DataFrame]) -> pd.Series | pd.DataFrame:
    merged = frames[0] if len(frames) == 1 else pd.concat(frames, axis=1).loc[frames[0].index]
    if len(merged.columns) == 1 and merged.columns[0] in _INTERCEPT_NAMES:
        return merged.iloc[:, 0].rename(group)
    return merged


# --- warnings -----------------------------------------------------------------------------------


def fit_warnings(result: LmmResult) -> list[tuple[type[Warning], str]]:
    """The statistical warnings a fit deserves, as ``(category, message)`` pairs.

    The caller issues them (``warnings.warn(message, category)``); deciding here keeps the
    core free of policy. Two checks, after lme4's ``checkConv``:

    * :class:`~interlace.SingularFitWarning` when a θ element with lower bound 0 is below
      1e-4 (``isSingular``), naming the variance estimated as zero or the correlation at ±1;
    * :class:`~interlace.ConvergenceWarning` when the optimiser reports failure, or when
      max |∂objective/∂θ| exceeds 2e-3 at a coordinate that is not on its bound (a coordinate
      at 0 whose gradient points outward is a boundary optimum, not a failure), the gradient
      taken as lme4 does, min(|R⁻¹g|, |g|) per coordinate with H = RᵀR the Hessian.

    Parameters
    ----------
    result : LmmResult

    Returns
    -------
    list of (type, str)

    Examples
    --------
    >>> import warnings
    >>> for category, message in fit_warnings(res):  # doctest: +SKIP
    ...     warnings.warn(message, category, stacklevel=2)
    """
    out: list[tuple[type[Warning], str]] = []
    terms = tuple(result.design.terms)
    q_per_term = [len(term.columns) for term in terms]
    slices, lower = _theta_layout(q_per_term)
    theta = np.asarray(result.theta, dtype=float)
    names = _unique_names([str(term.group) for term in terms])

    problems = []
    for term, name, sl, q in zip(terms, names, slices, q_per_term, strict=True):
        lam = _relative_factor(theta[sl], q)
        columns = [str(c) for c in term.columns]
        for j in range(q):
            if lam[j, j] >= SINGULAR_TOLERANCE:
                continue
            if np.max(np.abs(lam[j, : j + 1])) < SINGULAR_TOLERANCE:
                problems.append(f"the variance of {name} {columns[j]} is estimated as zero")
            elif q == 2:
                sign = "+1" if lam[1, 0] > 0 else "-1"
                pair = f"{name} {columns[0]} and {columns[1]}"
                problems.append(f"the correlation of {pair} is estimated as {sign}")
            else:
                problems.append(
                    f"the covariance matrix of {name} ({', '.join(columns)}) is singular: "
                    f"{columns[j]} is a linear combination of the columns before it "
                    "(a correlation of ±1)"
                )
    if problems:
        out.append(
            (
                SingularFitWarning,
                "boundary (singular) fit: " + "; ".join(problems) + ". The random-effects "
                "structure is more complex than these data support; consider simplifying it "
                "(see lme4's help('isSingular')).",
            )
        )

    record = result.optimization
    if not record.converged:
        out.append(
            (
                ConvergenceWarning,
                f"the optimiser stopped without converging (status: {record.status!r} after "
                f"{record.n_evals} objective evaluations); the estimates may not be at the "
                "optimum. Check the scaling of the predictors or refit from other starting values.",
            )
        )
    gradient = np.asarray(record.gradient, dtype=float)
    if gradient.size == theta.size and np.all(np.isfinite(gradient)) and gradient.size:
        on_boundary = (lower == 0.0) & (theta < SINGULAR_TOLERANCE) & (gradient >= 0.0)
        interior = np.where(on_boundary, 0.0, np.abs(gradient))
        scaled = np.asarray(record.scaled_gradient, dtype=float)
        if scaled.size == interior.size:
            # lme4's checkConv: min(|scaled gradient|, |gradient|) per coordinate.
            interior = np.where(np.isnan(scaled), interior, np.minimum(interior, np.abs(scaled)))
        worst = int(np.argmax(interior))
        if interior[worst] > GRADIENT_TOLERANCE:
            out.append(
                (
                    ConvergenceWarning,
                    f"the optimiser stopped where the objective is not flat: |gradient| "
                    f"{interior[worst]:.3g} > {GRADIENT_TOLERANCE:g} at theta "
                    f"{result.theta_names[worst]!r} (lme4 gives the same warning as 'Model failed "
                    "to converge with max|grad|'). Check the scaling of the predictors or refit "
                    "from other starting values.",
                )
            )
    return out


# --- summary ------------------------------------------------------------------------------------


def _significant_decimals(x: float, digits: int) -> int:
    """Decimals R's ``format`` needs to show x to ``digits`` significant digits (no trailing 0s)."""
    if x == 0 or not math.isfinite(x):
        return 0
    mantissa, exponent = f"{abs(x):.{digits - 1}e}".split("e")
    significant = len(mantissa.replace(".", "").rstrip("0")) or 1
    return max(0, significant - 1 - int(exponent))


def _r_format(values: Any, digits: int, max_decimals: int | None = None) -> list[str]:
    """R's ``format(x, digits = digits)`` on a numeric vector: common decimals, common width."""
    values = [float(v) for v in values]
    finite = [v for v in values if math.isfinite(v)]
    decimals = max((_significant_decimals(v, digits) for v in finite), default=0)
    decimals = min(decimals, 15 if max_decimals is None else max_decimals)
    text = [
        f"{v:.{decimals}f}" if math.isfinite(v) else ("NaN" if math.isnan(v) else str(v))
        for v in values
    ]
    width = max((len(t) for t in text), default=0)
    return [t.rjust(width) for t in text]


def _abbreviate(name: str, minlength: int) -> str:
    """R's ``abbreviate``: drop lower-case vowels, then lower-case letters, from the right."""
    chars = list(name.strip())
    for drop in ("aeiou", "abcdefghijklmnopqrstuvwxyz"):
        i = len(chars) - 1
        while len(chars) > minlength and i > 0:
            if chars[i] in drop and chars[i - 1] != " ":
                del chars[i]
            i -= 1
    return "".join(chars[:minlength] if len(chars) > minlength else chars)


def _named_vector(names: list[str], text: list[str]) -> str:
    """R's print of a named vector: one common width, right-justified."""
    width = max(len(s) for s in [*names, *text])
    return "\n".join(" ".join(s.rjust(width) for s in line) for line in (names, text))


def _matrix(header: list[str], rows: list[list[str]], row_names: list[str], right: bool) -> str:
    """R's print of a character matrix (quote = FALSE): row names left, columns justified."""
    name_width = max((len(r) for r in row_names), default=0)
    widths = [max(len(header[c]), *(len(r[c]) for r in rows)) for c in range(len(header))]

    def cell(s: str, w: int) -> str:
        return s.rjust(w) if right else s.ljust(w)

    lines = [
        " ".join([" " * name_width, *(cell(h, w) for h, w in zip(header, widths, strict=True))])
    ]
    for name, row in zip(row_names, rows, strict=True):
        lines.append(
            " ".join(
                [name.ljust(name_width), *(cell(s, w) for s, w in zip(row, widths, strict=True))]
            )
        )
    return "\n".join(line.rstrip() for line in lines)


def _format_pvalues(pvalues: np.ndarray, digits: int = 3) -> list[str]:
    """R's ``format.pval(p, digits = 3, eps = .Machine$double.eps)`` as printCoefmat uses it."""
    eps = 2.220446049250313e-16
    text = ["NaN"] * len(pvalues)
    tiny = [i for i, v in enumerate(pvalues) if v < eps]
    # R 4.2: fixed notation down to exponent -4 when digits > 1, scientific below.
    lowest = -4 if digits > 1 else -3
    fixed = [i for i, v in enumerate(pvalues) if v >= eps and math.floor(math.log10(v)) >= lowest]
    scientific = [i for i, v in enumerate(pvalues) if v >= eps and i not in fixed]
    for i, s in zip(fixed, _r_format([pvalues[i] for i in fixed], digits), strict=True):
        text[i] = s.strip()
    if scientific:
        mantissas = [pvalues[i] / 10.0 ** math.floor(math.log10(pvalues[i])) for i in scientific]
        needed = max(_significant_decimals(m, digits) for m in mantissas)
        for i in scientific:
            text[i] = f"{pvalues[i]:.{needed}e}"
    if tiny:
        others = [text[i] for i in fixed + scientific]
        separator = " " if others and max(len(t) for t in others) > 6 else ""
        for i in tiny:
            text[i] = f"<{separator}2e-16"
    return text


def _significance_stars(pvalue: float) -> str:
    """R's symnum codes: *** p ≤ 0.001, ** ≤ 0.01, * ≤ 0.05, . ≤ 0.1."""
    for cut, stars in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if pvalue <= cut:
            return stars
    return ""


@dataclass(frozen=True, eq=False)
class Summary:
    """An lme4-style summary of an :class:`LmmResult`; ``str()`` gives the printed report.

    Attributes
    ----------
    result : LmmResult
    fixed_effects : pandas.DataFrame
        ``Estimate``, ``Std. Error``, ``df``, ``t value``, ``Pr(>|t|)`` per fixed effect: t tests
        on Satterthwaite's degrees of freedom, as lmerTest's summary.
    random_effects : pandas.DataFrame
        ``Groups``, ``Name``, ``Variance``, ``Std.Dev.`` per variance (``varcorr``'s rows without
        the covariances).
    scaled_residuals : pandas.Series
        Min, 1Q, Median, 3Q, Max of resid / σ.
    fixed_effects_correlation : pandas.DataFrame
        Correlation matrix of β̂.

    Examples
    --------
    >>> print(res.summary())  # doctest: +SKIP
    Linear mixed model fit by REML ['LmmResult']
    Formula: Reaction ~ Days + (Days | Subject)
    ...
    """

    result: LmmResult = field(repr=False)

    @property
    def fixed_effects(self) -> pd.DataFrame:
        r = self.result
        return pd.DataFrame(
            {
                "Estimate": r.fe_params,
                "Std. Error": r.bse,
                "df": r.fe_df,
                "t value": r.tvalues,
                "Pr(>|t|)": r.fe_pvalues,
            }
        )

    @property
    def random_effects(self) -> pd.DataFrame:
        vc = self.result.varcorr
        rows = vc[vc["var2"].isna()]
        return pd.DataFrame(
            {
                "Groups": rows["grp"].to_numpy(),
                "Name": rows["var1"].fillna("").to_numpy(),
                "Variance": rows["vcov"].to_numpy(),
                "Std.Dev.": rows["sdcor"].to_numpy(),
            }
        )

    @property
    def scaled_residuals(self) -> pd.Series:
        # lme4's Pearson residuals: √w·(y − fitted)/σ, with prior weights w (1 without).
        scaled = np.asarray(self.result.resid, dtype=float) / self.result.sigma
        weights = getattr(self.result.design, "weights", None)
        if weights is not None:
            scaled = scaled * np.sqrt(weights)
        quantiles = np.quantile(scaled, [0.0, 0.25, 0.5, 0.75, 1.0])  # R's type 7
        # lme4 prints zapsmall(quantiles, digits = 5): rounded relative to the largest |value|.
        largest = float(np.max(np.abs(quantiles)))
        if largest > 0:
            quantiles = np.round(quantiles, max(0, 5 - math.ceil(math.log10(largest))))
        return pd.Series(quantiles, index=["Min", "1Q", "Median", "3Q", "Max"])

    @property
    def fixed_effects_correlation(self) -> pd.DataFrame:
        cov = self.result.fe_cov
        return pd.DataFrame(_correlation(cov.to_numpy()), index=cov.index, columns=cov.columns)

    def _repr_html_(self) -> str:
        """The report as HTML tables, for Jupyter."""
        from interlace._html import summary_html

        return summary_html(self.result)

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        r = self.result
        parts = []
        by = "REML" if r.method == "REML" else "maximum likelihood"
        head = [f"Linear mixed model fit by {by} ['LmmResult']"]
        if r.formula:
            head.append(f"Formula: {r.formula}")
        weights_column = getattr(r.design, "weights_column", None)
        if weights_column is not None:
            head.append(f"Weights: {weights_column}")
        parts.append("\n".join(head))
        parts.append(self._criterion_text())
        parts.append(
            "Scaled residuals:\n"
            + _named_vector(list(self.scaled_residuals.index), _r_format(self.scaled_residuals, 4))
        )
        groups = "; ".join(f"{g}, {n}" for g, n in r.ngroups.items())
        parts.append(
            "Random effects:\n"
            + self._random_effects_text()
            + f"\nNumber of obs: {r.nobs}, groups:  {groups}"
        )
        if len(r.fe_params):
            parts.append("Fixed effects:\n" + self._fixed_effects_text())
        if len(r.fe_params) > 12:
            parts.append(
                f"Correlation matrix not shown by default, as p = {len(r.fe_params)} > 12."
            )
        elif len(r.fe_params) > 1:
            parts.append("Correlation of Fixed Effects:\n" + self._correlation_text())
        messages = [message for _, message in fit_warnings(r)]
        if messages:
            parts.append("\n".join(messages))
        return "\n\n".join(parts)

    def _criterion_text(self) -> str:
        r = self.result
        objective = -2.0 * r.llf
        if r.method == "REML":
            return f"REML criterion at convergence: {objective:.1f}"
        npar = len(r.fe_params) + len(r.theta) + 1
        names = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
        values = [f"{v:.1f}" for v in (r.aic, r.bic, r.llf, objective)] + [str(r.nobs - npar)]
        return _named_vector(names, values)

    def _random_effects_text(self) -> str:
        r = self.result
        vc = r.varcorr
        variances = vc[vc["var2"].isna()]
        variance_text = _r_format(variances["vcov"], 4)
        sd_text = _r_format(variances["sdcor"], 4)
        n_corr = 0
        table: list[list[str]] = []
        at = 0
        for name in dict.fromkeys(vc["grp"]):
            block = variances[variances["grp"] == name]
            columns = list(block["var1"].fillna(""))
            corr = None
            if name != "Residual" and len(columns) > 1:
                corr = _correlation(r.variance_components[name].to_numpy())
                n_corr = max(n_corr, len(columns) - 1)
            for i, column in enumerate(columns):
                cells = [name if i == 0 else "", column, variance_text[at], sd_text[at]]
                if corr is not None:
                    cells += [f"{corr[i, j]:.2f}" for j in range(i)]
                table.append(cells)
                at += 1
        header = ["Groups", "Name", "Variance", "Std.Dev."] + (
            ["Corr"] + [""] * (n_corr - 1) if n_corr else []
        )
        table = [row + [""] * (len(header) - len(row)) for row in table]
        return _matrix(header, table, [""] * len(table), right=False)

    def _fixed_effects_text(self) -> str:
        """lmerTest's coefficient table (R's printCoefmat): Estimate, Std. Error and df share
        their rounding; t to 3 decimals; p-values as format.pval; significance stars."""
        r = self.result
        table = self.fixed_effects
        p = len(table)
        shared = table[["Estimate", "Std. Error", "df"]].to_numpy(dtype=float).T.ravel()
        magnitudes = np.abs(shared[np.isfinite(shared) & (shared != 0)])
        decimals = 1
        if magnitudes.size:
            digit_min = 1 + np.floor(np.log10([magnitudes.min(), magnitudes.max()]))
            decimals = int(max(1, *(4 - digit_min)))
        coef_text = _r_format(np.round(shared, decimals), 4)
        t_text = _r_format(np.round(table["t value"].to_numpy(dtype=float), 3), 4)
        pvalues = table["Pr(>|t|)"].to_numpy(dtype=float)
        p_text = _format_pvalues(pvalues)
        header = ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
        rows = [
            [coef_text[i], coef_text[p + i], coef_text[2 * p + i], t_text[i], p_text[i]]
            for i in range(p)
        ]
        show_stars = bool(np.any(pvalues < 0.1))
        if show_stars:
            header.append("")
            for row, value in zip(rows, pvalues, strict=True):
                row.append(_significance_stars(value).ljust(3))
        text = _matrix(header, rows, list(r.fe_params.index), right=True)
        if show_stars:
            text += "\n---\nSignif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"
        return text

    def _correlation_text(self) -> str:
        corr = self.fixed_effects_correlation.to_numpy()
        names = [str(n) for n in self.result.fe_params.index]
        p = len(names)
        lower = [f"{corr[i, j]:.3f}" for i in range(1, p) for j in range(i)]
        width = max(len(s) for s in lower)
        rows = [
            [f"{corr[i, j]:.3f}".rjust(width) if j < i else "" for j in range(p - 1)]
            for i in range(1, p)
        ]
        return _matrix(
            [_abbreviate(n, 6) for n in names[:-1]],
            rows,
            [_abbreviate(n, 11) for n in names[1:]],
            right=False,
        )
