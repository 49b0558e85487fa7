"""Simulation from a fitted model and the parametric bootstrap (lme4's ``simulate.merMod`` and
``bootMer``), with the numerics in Rust (``src/bootstrap.rs``).

At the estimates (θ̂, β̂, σ̂) a simulated response is

    y* = Xβ̂ + Z b* + σ̂ ε*,   b* = σ̂ Λ_θ̂ u*,   u* ~ N(0, I),   ε* ~ N(0, I)

(new random effects, lme4's default ``use.u = FALSE``), or ``y* = Xβ̂ + Z b̂ + σ̂ ε*``
conditional on the estimated modes b̂ (lme4's ``use.u = TRUE``). The parametric bootstrap
refits the model (same criterion, REML or ML) to each y*, warm-started at θ̂, and collects θ*,
β*, σ*; percentile intervals of the derived parameters are lme4's
``confint(fm, method = "boot", boot.type = "perc")``.

Random numbers come from a generator in the core, one independent stream per replicate derived
from (seed, replicate index): the same seed gives the same numbers for any ``n_jobs``. They are
not R's random numbers, so individual replicates differ from lme4's; distributions agree.
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from interlace import _core
from interlace._threads import single_threaded_blas
from interlace.design import WEIGHTS_COLUMN
from interlace.exceptions import DataError, InputTypeError, InterlaceError

if TYPE_CHECKING:
    from interlace.results import LmmResult

__all__ = ["BootstrapResult", "bootstrap", "bootstrap_confint", "simulate", "update"]

_SEED_LIMIT = 2**64


def _seed(seed: object) -> int:
    """A seed for the core (0 ≤ seed < 2⁶⁴); a fresh random one for None."""
    if seed is None:
        return secrets.randbits(64)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputTypeError(f"seed must be a non-negative int or None, not {type(seed).__name__}")
    if not 0 <= int(seed) < _SEED_LIMIT:
        raise InterlaceError(f"seed must be between 0 and 2**64 - 1, got {seed}")
    return int(seed)


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{what} must be a positive int, not {type(value).__name__}")
    if value < 1:
        raise InterlaceError(f"{what} must be a positive int, got {value}")
    return int(value)


def _n_jobs(n_jobs: object) -> int:
    """The core's thread count: 0 (all cores) for None or -1, else a positive int."""
    if n_jobs is None or (not isinstance(n_jobs, bool) and n_jobs == -1):
        return 0
    return _count(n_jobs, "n_jobs (or -1 or None for all cores)")


def _model(result: LmmResult) -> Any:
    from interlace.inference import _model_of

    return _model_of(result, result.method == "REML")


def simulate(
    result: LmmResult, nsim: int = 1, seed: int | None = None, include_re: bool = True
) -> np.ndarray:
    """Responses simulated from the fitted model (lme4's ``simulate``).

    Parameters
    ----------
    result : LmmResult
    nsim : int, default 1
        Number of simulated responses.
    seed : int, optional
        Seed (0 ≤ seed < 2⁶⁴) of the core's generator; a random one when None. Column r depends
        only on (seed, r).
    include_re : bool, default True
        True: new random effects b* = σ̂Λ_θ̂u* for every column (lme4's default,
        ``use.u = FALSE``). False: conditional on the estimated modes b̂, so only the residual
        noise is new (lme4's ``use.u = TRUE``, ``re.form = NULL``).

    Returns
    -------
    numpy.ndarray
        (nobs, nsim): one simulated response per column, rows in the fit's row order.

    Examples
    --------
    >>> import interlace
    >>> df = interlace.datasets.load("reading_times")
    >>> res = interlace.fit("rt ~ condition", data=df, groups=["subject", "item"])
    >>> res.simulate(nsim=3, seed=1).shape == (res.nobs, 3)
    True
    """
    with single_threaded_blas():
        nsim = _count(nsim, "nsim")
        values = _core.simulate_responses(
            _model(result),
            np.ascontiguousarray(result.theta, dtype=np.float64),
            nsim,
            _seed(seed),
            conditional=not bool(include_re),
        )
        return np.ascontiguousarray(values.T)


def _parameter_names(result: LmmResult) -> list[str]:
    from interlace.inference import _variance_names

    variance_names, _ = _variance_names(result)
    return variance_names + [str(name) for name in result.fe_params.index]


def _parameter_rows(
    result: LmmResult, theta: np.ndarray, beta: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    """Rows of (sd, cor per term, sigma, β) in lme4's confint layout; NaN for failed refits."""
    from interlace.inference import _sdcor_from_theta

    q_per_term = [len(term.columns) for term in result.design.terms]
    width = len(_parameter_names(result))
    out = np.full((len(sigma), width), np.nan)
    for r in range(len(sigma)):
        if not (np.all(np.isfinite(theta[r])) and np.isfinite(sigma[r])):
            continue
        sdcor = _sdcor_from_theta(theta[r], float(sigma[r]), q_per_term)
        out[r] = np.concatenate([sdcor, [sigma[r]], beta[r]])
    return out


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """The replicates of a parametric bootstrap (lme4's ``bootMer``).

    Attributes
    ----------
    theta : numpy.ndarray
        (n, n_θ): θ* of every refit (NaN rows where a refit failed).
    beta : numpy.ndarray
        (n, p): β* of every refit.
    sigma : numpy.ndarray
        (n,): σ* of every refit.
    converged : numpy.ndarray
        (n,) bool: whether each refit's optimiser converged.
    errors : tuple
        Per replicate, None or the message of the failed refit.
    parameters : pandas.DataFrame
        (n, k): the model parameters of every replicate, with ``confint``'s names: per term
        ``sd_<column>|<group>`` and ``cor_<column>.<column>|<group>``, then ``sigma``, then
        the fixed effects.
    estimates : pandas.Series
        The same parameters at the original fit.
    statistics : pandas.DataFrame or pandas.Series
        ``parameters``, or ``statistic`` applied to each of its rows when one was given.
    seed : int
        The seed used: ``bootstrap(..., seed=res.seed)`` reproduces the replicates.

    Examples
    --------
    >>> boot = res.bootstrap(n=200, seed=1)  # doctest: +SKIP
    >>> boot.confint(level=0.9)  # doctest: +SKIP
    """

    theta: np.ndarray = field(repr=False)
    beta: np.ndarray = field(repr=False)
    sigma: np.ndarray = field(repr=False)
    converged: np.ndarray = field(repr=False)
    errors: tuple[str | None, ...] = field(repr=False)
    parameters: pd.DataFrame = field(repr=False)
    estimates: pd.Series = field(repr=False)
    statistics: pd.DataFrame | pd.Series = field(repr=False)
    seed: int

    @property
    def n(self) -> int:
        """Number of replicates."""
        return len(self.sigma)

    @property
    def n_failed(self) -> int:
        """Number of refits that failed (their rows are NaN and left out of intervals)."""
        return sum(error is not None for error in self.errors)

    def confint(self, level: float = 0.95, parm: Sequence[str] | None = None) -> pd.DataFrame:
        """Percentile intervals of the parameters (lme4's ``boot.type = "perc"``).

        Quantiles are numpy's default (R's type 7) over the successful replicates; lme4,
        through ``boot.ci``, interpolates order statistics at (n + 1)·α instead, which differs
        by a fraction of one order statistic.
        """
        from interlace.inference import _percent_labels

        level = float(level)
        if not 0.0 < level < 1.0:
            raise InterlaceError(f"level must be between 0 and 1, got {level}")
        names = list(self.parameters.columns)
        if parm is not None:
            requested = [parm] if isinstance(parm, str) else [str(name) for name in parm]
            unknown = [name for name in requested if name not in names]
            if unknown:
                raise InterlaceError(f"unknown parameters {unknown}; the parameters are {names}")
            names = [name for name in names if name in requested]
        alpha = (1.0 - level) / 2.0
        values = self.parameters[names].to_numpy(dtype=float)
        ok = np.all(np.isfinite(values), axis=1)
        if not np.any(ok):
            raise InterlaceError("every bootstrap refit failed; no interval can be formed")
        limits = np.quantile(values[ok], [alpha, 1.0 - alpha], axis=0).T
        return pd.DataFrame(limits, index=pd.Index(names), columns=_percent_labels(level))


def _interactive() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def _progress_reporter(progress: object, total: int) -> tuple[Callable[[int], None] | None, Any]:
    """(callback for the core, bar to close): a tqdm bar when asked for, or by default when
    tqdm is importable and stderr is a terminal; a callable is called with the count done."""
    if callable(progress):
        return progress, None
    if progress is False or (progress is None and not _interactive()):
        return None, None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None, None
    bar = tqdm(total=total, desc="bootstrap", unit="refit")

    def update(done: int) -> None:
        bar.update(done - bar.n)

    return update, bar


def bootstrap(
    result: LmmResult,
    n: int = 1000,
    statistic: Callable[[pd.Series], Any] | None = None,
    seed: int | None = None,
    n_jobs: int | None = None,
    progress: bool | Callable[[int], None] | None = None,
) -> BootstrapResult:
    """Parametric bootstrap of a fitted model (lme4's ``bootMer``, ``type = "parametric"``).

    Each replicate simulates a response with new random effects (:func:`simulate`) and refits
    the model to it with the same criterion, starting from θ̂; the refits run in parallel in
    the core.

    Parameters
    ----------
    result : LmmResult
    n : int, default 1000
        Number of replicates.
    statistic : callable, optional
        Applied to each row of the parameter table (a Series indexed by the ``confint`` names);
        it may return a number or a Series. The default statistics are the model parameters
        themselves. (Unlike lme4's ``FUN``, it does not see a refitted model object.)
    seed : int, optional
        Seed of the core's generator (a random one when None, recorded in the result).
        Replicate r depends only on (seed, r), so the output does not depend on ``n_jobs``.
    n_jobs : int, optional
        Worker threads; None or -1 for all cores.
    progress : bool or callable, optional
        A tqdm progress bar (True; by default when tqdm is installed and stderr is a terminal),
        none (False), or a callable given the number of finished refits now and then.

    Returns
    -------
    BootstrapResult

    Notes
    -----
    Ctrl-C stops the refits (``KeyboardInterrupt``), as it stops a fit. A refit that fails
    leaves a NaN row and its message in ``errors``.

    Examples
    --------
    >>> import interlace
    >>> df = interlace.datasets.load("reading_times")
    >>> res = interlace.fit("rt ~ condition", data=df, groups=["subject", "item"])
    >>> boot = res.bootstrap(n=20, seed=1, progress=False)
    >>> boot.parameters.shape == (20, len(res.confint()))
    True
    """
    with single_threaded_blas():
        n = _count(n, "n")
        seed_used = _seed(seed)
        callback, bar = _progress_reporter(progress, n)
        try:
            core = _core.parametric_bootstrap(
                _model(result),
                np.ascontiguousarray(result.theta, dtype=np.float64),
                n,
                seed_used,
                n_jobs=_n_jobs(n_jobs),
                progress=callback,
            )
        finally:
            if bar is not None:
                bar.close()

        def frozen(values: Any, dtype: Any = float) -> np.ndarray:
            out = np.array(values, dtype=dtype)
            out.flags.writeable = False
            return out

        theta, beta, sigma = frozen(core["theta"]), frozen(core["beta"]), frozen(core["sigma"])
        names = _parameter_names(result)
        parameters = pd.DataFrame(_parameter_rows(result, theta, beta, sigma), columns=names)
        estimates = pd.Series(
            _parameter_rows(
                result,
                np.asarray(result.theta, dtype=float)[None, :],
                np.asarray(result.fe_params, dtype=float)[None, :],
                np.array([result.sigma]),
            )[0],
            index=names,
        )
        statistics = parameters if statistic is None else parameters.apply(statistic, axis=1)
        errors = tuple(core["errors"])
        failed = sum(error is not None for error in errors)
        if failed:
            warnings.warn(
                f"{failed} of {n} bootstrap refits failed and are left out (see .errors)",
                RuntimeWarning,
                stacklevel=2,
            )
        return BootstrapResult(
            theta=theta,
            beta=beta,
            sigma=sigma,
            converged=frozen(core["converged"], dtype=bool),
            errors=errors,
            parameters=parameters,
            estimates=estimates,
            statistics=statistics,
            seed=seed_used,
        )


def bootstrap_confint(
    result: LmmResult,
    names: Sequence[str],
    level: float,
    nsim: int = 500,
    seed: int | None = None,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Percentile bootstrap intervals of ``names`` (``confint(method="boot")``)."""
    boot = bootstrap(result, n=nsim, seed=seed, n_jobs=n_jobs, progress=None)
    return boot.confint(level=level, parm=list(names))


def update(
    result: LmmResult,
    data: Any = None,
    formula: str | None = None,
    *,
    response: Any = None,
    method: str | None = None,
) -> LmmResult:
    """Refit a model with new data, a new formula or a new response (lme4's ``update`` and
    ``refit``).

    Parameters
    ----------
    result : LmmResult
    data : DataFrame, optional
        New data (default: the rows and columns the fit used).
    formula : str, optional
        A complete new formula in lme4's one-string form (default: ``result.formula``).
    response : array-like, optional
        New response values for the fit's rows, everything else unchanged (lme4's
        ``refit(fm, newresp)``): refitted from θ̂ as lme4's refit does. Not combined with
        ``data`` or ``formula``.
    method : {"REML", "ML"}, optional
        Default: the fit's method.

    Returns
    -------
    LmmResult
    """
    with single_threaded_blas():
        from interlace.api import _core_model, fit
        from interlace.results import LmmResult, fit_warnings

        method = result.method if method is None else str(method).upper()
        if response is None:
            design = result.design
            weights = design.weights_column
            if (
                weights == WEIGHTS_COLUMN
                and data is not None
                and WEIGHTS_COLUMN not in data.columns
            ):
                raise DataError(
                    "the fit used weights given as an array; give the new data its weights in a "
                    f"column named '{WEIGHTS_COLUMN}', or refit with "
                    "interlace.fit(..., weights=...)"
                )
            return fit(
                result.formula if formula is None else formula,
                design.frame if data is None else data,
                method=method,
                weights=weights,
            )
        if data is not None or formula is not None:
            raise InterlaceError("give either response= or data=/formula=, not both")
        y = np.asarray(response, dtype=np.float64).ravel()
        if y.size != result.nobs:
            raise InterlaceError(f"response has {y.size} values; the fit used {result.nobs} rows")
        if not np.all(np.isfinite(y)):
            raise InterlaceError("response has missing or infinite values")
        design = result.design
        frame = design.frame
        if design.response in frame.columns:
            frame = frame.copy()
            frame[design.response] = y
        y_frozen = y.copy()
        y_frozen.flags.writeable = False
        design = dataclasses.replace(design, y=y_frozen, frame=frame)
        if method not in ("REML", "ML"):
            raise InterlaceError(f"method must be 'REML' or 'ML', got {method!r}")
        model = _core_model(design, reml=method == "REML")
        core = model.fit(np.ascontiguousarray(result.theta, dtype=np.float64))
        refitted = LmmResult.from_core(design, core, method)
        for category, message in fit_warnings(refitted):
            warnings.warn(message, category, stacklevel=3)
        return refitted
