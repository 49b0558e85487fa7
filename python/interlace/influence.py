"""Influence diagnostics: leverage, residuals and deletion diagnostics, as R's HLMdiag.

The numerics live in the Rust core (``src/influence.rs``); this module picks the rows to delete,
calls the core, and labels what comes back. Definitions follow HLMdiag (Loy & Hofmann 2014):

    leverage        H = I − σ²P, the hat matrix of the fitted values ŷ = Xβ̂ + Zb̂ (lme4's
                    ``hatvalues``), split into a fixed part H₁ = X C XᵀV⁻¹ and a random part
                    H₂ = ZDZᵀV⁻¹(I − H₁) (Demidenko & Stukel 2005), and ZDZᵀ/σ², the
                    unconfounded random-effects leverage of Nobre & Singer (2011). Here
                    V = σ²(I + ZΛΛᵀZᵀ), C = cov(β̂) = (XᵀV⁻¹X)⁻¹ and P = V⁻¹ − V⁻¹X C XᵀV⁻¹.
    cooksd          (β̂ − β̂₍ᵢ₎)ᵀ C⁻¹ (β̂ − β̂₍ᵢ₎) / p
    mdffits         (β̂ − β̂₍ᵢ₎)ᵀ C₍ᵢ₎⁻¹ (β̂ − β̂₍ᵢ₎) / p
    covtrace        |tr(C⁻¹ C₍ᵢ₎) − p|
    covratio        det C₍ᵢ₎ / det C
    rvc.<name>      variance component without case i over the full-data one, minus 1

where ₍ᵢ₎ marks the fit without case i: one observation (``level=1``) or every observation of
one level of a grouping factor. With ``approx=True`` (the default, as HLMdiag) β̂₍ᵢ₎ and C₍ᵢ₎
come from the one-step formulas of Christensen, Pearson & Johnson (1992), which hold θ and σ at
their estimates; with ``approx=False`` the model is refitted without the case (θ re-optimised,
warm-started at θ̂), in parallel in the core. Unlike HLMdiag, both work for crossed designs.

Group-level output is indexed by level, in HLMdiag's row order: the order in which the levels
first appear in the rows used by the fit for one-step diagnostics and residuals (HLMdiag's
``unique(flist[[level]])``), the factor's level order for exact deletion and group leverage
(HLMdiag's ``split`` and ``aggregate``). Align on the index, not on position.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from interlace import _core
from interlace._threads import single_threaded_blas
from interlace.api import _core_model
from interlace.design import _aliased_columns
from interlace.exceptions import (
    ConvergenceWarning,
    DataError,
    InputTypeError,
    InterlaceError,
    InterlaceWarning,
)
from interlace.results import LmmResult

__all__ = [
    "cooks_distance",
    "covratio",
    "covtrace",
    "hlm_augment",
    "hlm_influence",
    "hlm_resid",
    "leverage",
    "mdffits",
    "rvc",
]

#: HLMdiag's leverage types, in its column order.
LEVERAGE_TYPES = ("overall", "fixef", "ranef", "ranef.uc")

#: Show a progress bar when exact deletion is expected to take longer than this (seconds).
PROGRESS_AFTER_SECONDS = 2.0
#: Exact refits go to the core in chunks of about this many seconds (Ctrl-C is seen between).
CHUNK_SECONDS = 0.5

_DIAGNOSTICS = ("cooksd", "mdffits", "covtrace", "covratio")


# ---------------------------------------------------------------------------------------------
# Levels and deletion sets


@dataclass(frozen=True, eq=False)
class _Level:
    """What "one case" means: an observation (``group`` None) or a level of a grouping factor."""

    group: str | None
    index: pd.Index
    sets: list[np.ndarray]  # row positions of each case, in the order of ``index``


def _grouping_factors(result: LmmResult) -> list[str]:
    return list(dict.fromkeys(str(term.group) for term in result.design.terms))


def _resolve_level(result: LmmResult, level: object, order: str = "appearance") -> _Level:
    """The cases of ``level``. Levels of a factor come in order of first appearance in the rows
    (``order="appearance"``, HLMdiag's one-step and residual order) or in the factor's level
    order (``order="levels"``, HLMdiag's order for exact deletion and group leverage)."""
    design = result.design
    if isinstance(level, (int, np.integer)) and not isinstance(level, bool) and level == 1:
        rows = np.arange(design.nobs)
        return _Level(None, design.row_index, [rows[i : i + 1] for i in range(design.nobs)])
    factors = _grouping_factors(result)
    group = None
    if isinstance(level, str):
        if level in factors:
            group = level
        else:  # 'batch:cask' names the same factor as 'cask:batch'
            parts = frozenset(level.split(":"))
            matches = [g for g in factors if frozenset(g.split(":")) == parts]
            group = matches[0] if len(matches) == 1 else None
    if group is None:
        valid = ", ".join(repr(g) for g in factors)
        raise DataError(
            f"level={level!r} is not a grouping factor of this model; use level=1 for "
            f"observations or one of its grouping factors: {valid}"
        )
    term = next(t for t in design.terms if str(t.group) == group)
    codes = np.asarray(term.codes, dtype=np.int64)
    if order == "appearance":
        chosen = pd.unique(codes)  # codes in order of first appearance
    else:
        chosen = np.arange(term.n_levels)
    by_code = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[by_code], np.arange(term.n_levels + 1))
    sets = [by_code[bounds[c] : bounds[c + 1]] for c in chosen]
    index = pd.Index(term.levels[chosen], name=group)
    return _Level(group, index, sets)


def _csr(sets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Deletion sets as one int64 array of rows and the offsets of each set in it."""
    lengths = np.fromiter((len(s) for s in sets), dtype=np.int64, count=len(sets))
    offsets = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = np.concatenate(sets).astype(np.int64) if sets else np.zeros(0, dtype=np.int64)
    return np.ascontiguousarray(rows), offsets


def _n_jobs(n_jobs: object) -> int:
    """The core's thread count: 0 (all cores) for None or -1, else a positive int."""
    if n_jobs is None:
        return 0
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)):
        raise InputTypeError(f"n_jobs must be a positive int or None, not {type(n_jobs).__name__}")
    if n_jobs == -1:
        return 0
    if n_jobs < 1:
        raise InterlaceError(f"n_jobs must be a positive int, -1 or None (all cores), not {n_jobs}")
    return int(n_jobs)


def _check_result(result: object) -> LmmResult:
    if not isinstance(result, LmmResult):
        raise InputTypeError(
            f"expected a fitted model (interlace.fit(...)), not {type(result).__name__}"
        )
    return result


# ---------------------------------------------------------------------------------------------
# Per-result cache: the compiled model, leverage, and exact refits (results are immutable)


@dataclass(eq=False)
class _State:
    model: Any
    theta: np.ndarray
    leverage: pd.DataFrame | None = None
    exact: dict[str | None, dict[str, Any]] = field(default_factory=dict)


_STATES: weakref.WeakKeyDictionary[LmmResult, _State] = weakref.WeakKeyDictionary()


def _state(result: LmmResult) -> _State:
    state = _STATES.get(result)
    if state is None:
        model = _core_model(result.design, reml=result.method == "REML")
        theta = np.ascontiguousarray(result.theta, dtype=np.float64)
        state = _STATES[result] = _State(model=model, theta=theta)
    return state


# ---------------------------------------------------------------------------------------------
# Leverage


def _observation_leverage(result: LmmResult, n_jobs: object = None) -> pd.DataFrame:
    state = _state(result)
    if state.leverage is None:
        core = _core.leverage(state.model, state.theta, _n_jobs(n_jobs))
        state.leverage = pd.DataFrame(
            {
                "overall": core["overall"],
                "fixef": core["fixef"],
                "ranef": core["ranef"],
                "ranef.uc": core["ranef_uc"],
            },
            index=result.design.row_index,
        )
    return state.leverage.copy()


def _group_means(frame: pd.DataFrame, lev: _Level) -> pd.DataFrame:
    values = frame.to_numpy()
    means = np.vstack([values[rows].mean(axis=0) for rows in lev.sets])
    return pd.DataFrame(means, index=lev.index, columns=frame.columns)


def leverage(res: LmmResult, level: int | str = 1, *, n_jobs: int | None = None) -> pd.DataFrame:
    """Leverage of each observation or group, as HLMdiag's ``leverage``.

    Parameters
    ----------
    res : LmmResult
        A fitted model.
    level : 1 or str, default 1
        ``1`` for one row per observation; the name of a grouping factor for one row per level
        (in level order), the mean over that level's observations (HLMdiag's group leverage).
    n_jobs : int, optional
        Worker threads in the core (all cores by default).

    Returns
    -------
    pandas.DataFrame
        Columns ``overall`` (the diagonal of the hat matrix of ŷ = Xβ̂ + Zb̂, lme4's
        ``hatvalues``), ``fixef`` (H₁ = X C XᵀV⁻¹), ``ranef`` (H₂ = ZDZᵀV⁻¹(I − H₁), Demidenko &
        Stukel 2005; ``overall = fixef + ranef``) and ``ranef.uc`` (ZDZᵀ/σ², Nobre & Singer
        2011). Indexed by the rows used in the fit, or by level.

    Raises
    ------
    DataError
        ``level`` is neither 1 nor a grouping factor of the model.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("students_schools")
    >>> res = interlace.fit("score ~ hours", data, random=["(1 + hours | school)"])
    >>> lev = interlace.leverage(res)
    >>> list(lev.columns)
    ['overall', 'fixef', 'ranef', 'ranef.uc']
    >>> bool(((lev["overall"] - lev["fixef"] - lev["ranef"]).abs() < 1e-12).all())
    True
    >>> interlace.leverage(res, level="school").shape
    (40, 4)
    """
    with single_threaded_blas():
        res = _check_result(res)
        lev = _resolve_level(res, level, order="levels")
        frame = _observation_leverage(res, n_jobs)
        return frame if lev.group is None else _group_means(frame, lev)


# ---------------------------------------------------------------------------------------------
# Residuals


def _r_name(name: str) -> str:
    """formulaic's column name as R writes it: 'Intercept' → '(Intercept)', 'x[T.b]' → 'xb'."""
    if name == "Intercept":
        return "(Intercept)"
    return re.sub(r"\[T\.([^\]]*)\]", r"\1", name)


def _clean_name(name: str) -> str:
    """HLMdiag's ``.clean_names``: snake case, lower case, non-alphanumerics to '_'."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", _r_name(name))
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    text = re.sub(r"[^0-9a-z]+", "_", text.lower())
    return text.strip("_")


def _is_nested(result: LmmResult) -> bool:
    """HLMdiag's ``isNestedModel``: each grouping factor nests in the next (fewer levels)."""
    seen: dict[str, np.ndarray] = {}
    for term in result.design.terms:
        seen.setdefault(str(term.group), np.asarray(term.codes, dtype=np.int64))
    factors = list(seen.values())
    for finer, coarser in zip(factors, factors[1:], strict=False):
        pairs = np.unique(np.column_stack([finer, coarser]), axis=0)
        if len(np.unique(pairs[:, 0])) != len(pairs):
            return False
    return True


def _least_squares_residuals(result: LmmResult, standardize: bool | str) -> pd.DataFrame:
    """Level-1 LS residuals: a separate least-squares fit per level of the finest factor.

    As HLMdiag's ``LSresids``: y on an intercept and the fixed-effects columns, within each
    level; aliased columns (R's rule, see ``design._aliased_columns``) drop out, so the fitted
    values are the projection onto what the level's rows can estimate. ``"semi"`` divides by
    √(1 − h), ``True`` by s√(1 − h) (R's ``rstandard``); NaN where h = 1 or s is undefined.
    """
    design = result.design
    x = np.asarray(design.x, dtype=float)
    y = np.asarray(design.y, dtype=float)
    codes = np.asarray(design.terms[0].codes, dtype=np.int64)
    n = len(y)
    resid = np.full(n, np.nan)
    fitted = np.full(n, np.nan)
    scaled = np.full(n, np.nan)
    by_code = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[by_code])) + 1
    for rows in np.split(by_code, bounds):
        a = np.column_stack([np.ones(len(rows)), x[rows]])
        aliased = set(_aliased_columns(a))
        kept = [j for j in range(a.shape[1]) if j not in aliased]
        q, _ = np.linalg.qr(a[:, kept])
        fit = q @ (q.T @ y[rows])
        e = y[rows] - fit
        hat = np.sum(q * q, axis=1)
        hat[hat > 1.0 - 10.0 * np.finfo(float).eps] = 1.0  # R's lm.influence
        fitted[rows], resid[rows] = fit, e
        with np.errstate(divide="ignore", invalid="ignore"):
            if standardize == "semi":
                scaled[rows] = e / np.sqrt(1.0 - hat)
            elif standardize is True:
                dof = len(rows) - len(kept)
                s = math.sqrt(float(e @ e) / dof) if dof > 0 else np.nan
                scaled[rows] = e / (s * np.sqrt(1.0 - hat))
    scaled[~np.isfinite(scaled)] = np.nan
    if standardize == "semi":
        columns = {".semi.ls.resid": scaled, ".ls.fitted": fitted}
    elif standardize is True:
        columns = {".std.ls.resid": scaled, ".ls.fitted": fitted}
    else:
        columns = {".ls.resid": resid, ".ls.fitted": fitted}
    return pd.DataFrame(columns, index=design.row_index)


def hlm_resid(
    res: LmmResult,
    level: int | str = 1,
    standardize: bool | str = False,
    *,
    include_ls: bool = True,
) -> pd.DataFrame:
    """Residuals and fitted values at one level of the model, as HLMdiag's ``hlm_resid``.

    Parameters
    ----------
    res : LmmResult
        A fitted model.
    level : 1 or str, default 1
        ``1`` for observation-level residuals; the name of a grouping factor for its
        random effects (the group-level residuals).
    standardize : {False, True, "semi"}, default False
        At level 1, ``True`` gives ``.std.resid`` (residual / σ), the Cholesky marginal
        residuals ``.chol.mar.resid`` (L⁻¹(y − Xβ̂) with V = LLᵀ in row order, Houseman, Ryan &
        Coull 2004) and ``.std.ls.resid``; ``"semi"`` standardises only the LS residuals
        (``.semi.ls.resid``). At a grouping factor, ``True`` divides each random effect by its
        conditional SD (``.std.ranef.*``); ``"semi"`` is the same as ``False`` there.
    include_ls : bool, default True
        Add the level-1 least-squares residuals ``.ls.resid`` and ``.ls.fitted`` (a separate
        least-squares fit within each level of the finest grouping factor). They are defined
        for nested designs only and left out of crossed ones.

    Returns
    -------
    pandas.DataFrame
        Level 1: the model frame's columns, then ``.resid`` (or ``.std.resid``), ``.fitted``,
        the LS columns, ``.mar.resid`` (y − Xβ̂, or ``.chol.mar.resid``) and ``.mar.fitted``
        (Xβ̂), indexed by the rows used in the fit. Grouping factor: ``.ranef.<name>`` (or
        ``.std.ranef.<name>``) per random-effects column, named as HLMdiag names them
        (``.ranef.intercept``, ``.ranef.days``), indexed by level in order of first appearance.

    Raises
    ------
    DataError
        ``level`` is neither 1 nor a grouping factor of the model.
    InterlaceError
        ``standardize`` is not False, True or "semi".

    Notes
    -----
    Unlike HLMdiag, crossed designs are supported (without LS residuals). Group-level LS
    residuals (HLMdiag's ``.ls.*`` columns at a grouping factor) are not computed. The Cholesky
    residuals cost O(n · group size²) for nested designs but O(n q²) for crossed ones (q random
    effects in all); beyond about 5·10¹⁰ operations (InstEval's 73 421 rows and 4 128 effects)
    the core stops with a :class:`~interlace.DataError` rather than run for hours.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("students_schools")
    >>> res = interlace.fit("score ~ hours", data, random=["(1 + hours | school)"])
    >>> r1 = interlace.hlm_resid(res)
    >>> [c for c in r1.columns if c.startswith(".")]
    ['.resid', '.fitted', '.ls.resid', '.ls.fitted', '.mar.resid', '.mar.fitted']
    >>> std = interlace.hlm_resid(res, standardize=True)
    >>> round(float(std[".chol.mar.resid"].var()), 1)
    1.0
    >>> list(interlace.hlm_resid(res, level="school").columns)
    ['.ranef.intercept', '.ranef.hours']
    """
    with single_threaded_blas():
        res = _check_result(res)
        if not (standardize is False or standardize is True or standardize == "semi"):
            raise InterlaceError(f"standardize must be False, True or 'semi', not {standardize!r}")
        lev = _resolve_level(res, level)
        design = res.design
        if lev.group is not None:
            return _group_residuals(res, lev, standardize is True)

        state = _state(res)
        marginal = _core.marginal_residuals(state.model, state.theta, standardize is True)
        out = design.frame.copy()
        if standardize is True:
            out[".std.resid"] = np.asarray(res.resid, dtype=float) / res.sigma
        else:
            out[".resid"] = np.asarray(res.resid, dtype=float)
        out[".fitted"] = np.asarray(res.fittedvalues, dtype=float)
        if include_ls and _is_nested(res):
            ls = _least_squares_residuals(res, standardize)
            for column in ls.columns:
                out[column] = ls[column].to_numpy()
        if standardize is True:
            out[".chol.mar.resid"] = marginal["cholesky"]
        else:
            out[".mar.resid"] = marginal["resid"]
        out[".mar.fitted"] = marginal["fitted"]
        return out


def _group_residuals(res: LmmResult, lev: _Level, standardize: bool) -> pd.DataFrame:
    modes = res.random_effects[lev.group]
    sds = res.random_effects_se[lev.group]
    if isinstance(modes, pd.Series):
        modes, sds = modes.to_frame(), sds.to_frame()
        modes.columns = sds.columns = ["Intercept"]
    values = modes.loc[lev.index]
    if standardize:
        values = values / sds.loc[lev.index]
    prefix = ".std.ranef." if standardize else ".ranef."
    out = pd.DataFrame(
        values.to_numpy(dtype=float),
        index=lev.index,
        columns=[prefix + _clean_name(str(c)) for c in values.columns],
    )
    return out


# ---------------------------------------------------------------------------------------------
# Deletion diagnostics


def _one_step(res: LmmResult, lev: _Level, n_jobs: object) -> pd.DataFrame:
    state = _state(res)
    rows, offsets = _csr(lev.sets)
    core = _core.one_step_deletion(state.model, state.theta, rows, offsets, _n_jobs(n_jobs))
    return pd.DataFrame({name: core[name] for name in _DIAGNOSTICS}, index=lev.index)


def _progress_bar(total: int, initial: int) -> Any:
    """A tqdm bar on stderr, or None when tqdm is missing or stderr is not a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    try:
        if not sys.stderr.isatty():
            return None
        return tqdm(total=total, initial=initial, desc="refits", unit="fit", file=sys.stderr)
    except Exception:  # a broken tqdm or stderr must not stop the computation
        return None


def _exact_refits(res: LmmResult, lev: _Level, n_jobs: object, progress: bool) -> dict[str, Any]:
    """Refit the model without each case (cached per result and level)."""
    state = _state(res)
    if lev.group in state.exact:
        return state.exact[lev.group]
    threads = _n_jobs(n_jobs)
    rows, offsets = _csr(lev.sets)
    total = len(lev.sets)
    # The core gets the cases in chunks of about CHUNK_SECONDS, so that Ctrl-C and the progress
    # bar are seen between calls; every refit is independent and deterministic, so chunking
    # changes nothing in the output. The first chunk, one case per worker, times them.
    workers = threads or (os.cpu_count() or 1)
    chunk = workers
    parts: list[dict[str, Any]] = []
    bar = None
    started = time.perf_counter()
    start = 0
    while start < total:
        stop = min(start + chunk, total)
        a, b = offsets[start], offsets[stop]
        call_started = time.perf_counter()
        parts.append(
            _core.delete_and_refit(
                state.model, state.theta, rows[a:b], offsets[start : stop + 1] - a, threads
            )
        )
        per_case = max(time.perf_counter() - call_started, 1e-9) / (stop - start)
        chunk = max(workers, int(CHUNK_SECONDS / per_case) // workers * workers)
        if bar is not None:
            bar.update(stop - start)
        elif progress and stop < total:
            elapsed = time.perf_counter() - started
            if elapsed / stop * (total - stop) > PROGRESS_AFTER_SECONDS:
                bar = _progress_bar(total, stop)
        start = stop
    if bar is not None:
        bar.close()
    fits: dict[str, Any] = {
        key: np.concatenate([part[key] for part in parts])
        for key in ("theta", "beta", "beta_cov", "sigma", "objective", "n_evals", "converged")
    }
    fits["errors"] = [e for part in parts for e in part["errors"]]
    _warn_about_refits(lev, fits)
    state.exact[lev.group] = fits
    return fits


def _warn_about_refits(lev: _Level, fits: dict[str, Any]) -> None:
    labels = list(lev.index)
    failed = [i for i, e in enumerate(fits["errors"]) if e is not None]
    what = "observation" if lev.group is None else f"level of {lev.group!r}"
    if failed:
        first = failed[0]
        warnings.warn(
            f"the model could not be refitted without {len(failed)} "
            f"{what}{'s' if len(failed) > 1 else ''} (first: {labels[first]!r}: "
            f"{fits['errors'][first]}); their diagnostics are NaN",
            InterlaceWarning,
            stacklevel=4,
        )
    unconverged = [
        i for i, ok in enumerate(fits["converged"]) if not ok and fits["errors"][i] is None
    ]
    if unconverged:
        warnings.warn(
            f"the optimiser did not converge when refitting without {len(unconverged)} "
            f"{what}{'s' if len(unconverged) > 1 else ''} (first: {labels[unconverged[0]]!r}); "
            "their diagnostics may be inaccurate",
            ConvergenceWarning,
            stacklevel=4,
        )


def _variance_components(
    theta: np.ndarray, sigma: np.ndarray, q_per_term: list[int]
) -> tuple[list[str], np.ndarray]:
    """HLMdiag's ``varcomp.mer``: σ², then the lower triangle of the block-diagonal covariance
    of the random effects, column by column, named ``D<row><col>`` (1-based positions in it).

    ``theta`` is (cases, n_θ) and ``sigma`` (cases,); returns names and (cases, components).
    """
    theta = np.atleast_2d(theta)
    scale = np.asarray(sigma, dtype=float).reshape(-1) ** 2
    names = ["sigma2"]
    columns = [scale]
    diagonal = all(q == 1 for q in q_per_term)
    at_theta = 0
    at_effect = 0
    for q in q_per_term:
        lam = np.zeros((theta.shape[0], q, q))
        for col in range(q):
            for row in range(col, q):
                lam[:, row, col] = theta[:, at_theta]
                at_theta += 1
        cov = scale[:, None, None] * lam @ np.swapaxes(lam, 1, 2)
        for col in range(q):
            for row in range(col, q):
                if diagonal and row != col:
                    continue
                names.append(f"D{at_effect + row + 1}{at_effect + col + 1}")
                columns.append(cov[:, row, col])
        at_effect += q
    return names, np.column_stack(columns)


def _exact(res: LmmResult, lev: _Level, n_jobs: object, progress: bool) -> pd.DataFrame:
    fits = _exact_refits(res, lev, n_jobs, progress)
    beta = np.asarray(res.fe_params, dtype=float)
    cov = np.asarray(res.fe_cov, dtype=float)
    p = beta.size
    cases = len(lev.sets)
    out = {name: np.full(cases, np.nan) for name in _DIAGNOSTICS}
    ok = np.array([e is None for e in fits["errors"]], dtype=bool)
    if p and ok.any():
        change = beta - fits["beta"][ok]
        cov_del = fits["beta_cov"][ok]
        cov_inv = np.linalg.inv(cov)
        out["cooksd"][ok] = np.einsum("ij,jk,ik->i", change, cov_inv, change) / p
        solved = np.linalg.solve(cov_del, change[:, :, None])[:, :, 0]
        out["mdffits"][ok] = np.einsum("ij,ij->i", change, solved) / p
        out["covtrace"][ok] = np.abs(np.trace(cov_inv @ cov_del, axis1=1, axis2=2) - p)
        out["covratio"][ok] = np.linalg.det(cov_del) / np.linalg.det(cov)
    frame = pd.DataFrame(out, index=lev.index)
    q_per_term = [len(term.columns) for term in res.design.terms]
    names, full = _variance_components(np.asarray(res.theta), np.array([res.sigma]), q_per_term)
    _, deleted = _variance_components(fits["theta"], fits["sigma"], q_per_term)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = deleted / full - 1.0
    for j, name in enumerate(names):
        frame[f"rvc.{name}"] = ratio[:, j]
    return frame


def _diagnostics(
    res: LmmResult, level: object, approx: bool, n_jobs: object, progress: bool
) -> tuple[_Level, pd.DataFrame]:
    res = _check_result(res)
    if not isinstance(approx, (bool, np.bool_)):
        raise InputTypeError(f"approx must be True or False, not {approx!r}")
    lev = _resolve_level(res, level, order="appearance" if approx else "levels")
    frame = _one_step(res, lev, n_jobs) if approx else _exact(res, lev, n_jobs, progress)
    return lev, frame


def hlm_influence(
    res: LmmResult,
    level: int | str = 1,
    approx: bool = True,
    leverage: str | Sequence[str] = "overall",
    *,
    n_jobs: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Influence of each observation or group on the fit, as HLMdiag's ``hlm_influence``.

    Parameters
    ----------
    res : LmmResult
        A fitted model.
    level : 1 or str, default 1
        ``1`` deletes one observation at a time; the name of a grouping factor deletes all the
        observations of one of its levels at a time.
    approx : bool, default True
        ``True``: HLMdiag's one-step approximations (θ and σ held at their estimates; no
        refit). ``False``: refit the model without each case (θ re-optimised from θ̂), which
        also gives the relative variance changes ``rvc.*``.
    leverage : str or list of str, default "overall"
        Which leverage columns to add, among ``"overall"``, ``"fixef"``, ``"ranef"`` and
        ``"ranef.uc"`` (see :func:`leverage`); at a grouping factor, their level means.
    n_jobs : int, optional
        Worker threads in the core (all cores by default). Results do not depend on it.
    progress : bool, default True
        Show a progress bar during long exact refits, when tqdm is installed and stderr is a
        terminal.

    Returns
    -------
    pandas.DataFrame
        ``cooksd``, ``mdffits``, ``covtrace``, ``covratio``, then with ``approx=False`` one
        ``rvc.<component>`` per variance component (``rvc.sigma2``, ``rvc.D11``, ``rvc.D21``,
        ...: HLMdiag's names, positions in the block-diagonal covariance of the random
        effects), then ``leverage.<type>``. Indexed by the rows used in the fit, or by level:
        in order of first appearance with ``approx=True``, in level order with ``approx=False``
        (HLMdiag's orders).

    Raises
    ------
    DataError
        ``level`` is neither 1 nor a grouping factor of the model.

    Warns
    -----
    ConvergenceWarning
        A refit (``approx=False``) did not converge.

    Notes
    -----
    See the module documentation for the definitions. Unlike HLMdiag, crossed designs get
    exact refits and leverage too. Exact refits are cached on the result, so the separate
    functions (:func:`cooks_distance`, :func:`rvc`, ...) reuse them.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("students_schools")
    >>> res = interlace.fit("score ~ hours", data, random=["(1 + hours | school)"])
    >>> infl = interlace.hlm_influence(res, level="school")
    >>> list(infl.columns)
    ['cooksd', 'mdffits', 'covtrace', 'covratio', 'leverage.overall']
    >>> exact = interlace.hlm_influence(res, level="school", approx=False, n_jobs=2)
    >>> [c for c in exact.columns if c.startswith("rvc")]
    ['rvc.sigma2', 'rvc.D11', 'rvc.D21', 'rvc.D22']
    """
    with single_threaded_blas():
        types = [leverage] if isinstance(leverage, str) else list(leverage)
        for kind in types:
            if kind not in LEVERAGE_TYPES:
                raise InterlaceError(
                    f"{kind!r} is not a type of leverage; use one or more of "
                    + ", ".join(repr(t) for t in LEVERAGE_TYPES)
                )
        lev, frame = _diagnostics(res, level, approx, n_jobs, progress)
        lev_frame = _observation_leverage(res, n_jobs)
        if lev.group is not None:
            lev_frame = _group_means(lev_frame, lev)
        for kind in types:
            frame[f"leverage.{kind}"] = lev_frame[kind].to_numpy()
        return frame


def _single(
    name: str, res: LmmResult, level: object, approx: bool, n_jobs: object, progress: bool
) -> pd.Series:
    _, frame = _diagnostics(res, level, approx, n_jobs, progress)
    return frame[name]


def cooks_distance(
    res: LmmResult,
    level: int | str = 1,
    approx: bool = True,
    *,
    n_jobs: int | None = None,
    progress: bool = True,
) -> pd.Series:
    """Cook's distance of each case: the change in β̂, (β̂ − β̂₍ᵢ₎)ᵀ cov(β̂)⁻¹ (β̂ − β̂₍ᵢ₎) / p.

    Parameters and cases as :func:`hlm_influence` (HLMdiag's ``cooks.distance``).

    Returns
    -------
    pandas.Series
        Named ``cooksd``, indexed as :func:`hlm_influence`.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("students_schools")
    >>> res = interlace.fit("score ~ hours", data, random=["(1 + hours | school)"])
    >>> cooksd = interlace.cooks_distance(res, level="school")
    >>> cooksd.index.name, len(cooksd)
    ('school', 40)
    >>> len(interlace.cooks_distance(res)) == res.nobs
    True
    """
    with single_threaded_blas():
        return _single("cooksd", res, level, approx, n_jobs, progress)


def mdffits(
    res: LmmResult,
    level: int | str = 1,
    approx: bool = True,
    *,
    n_jobs: int | None = None,
    progress: bool = True,
) -> pd.Series:
    """MDFFITS of each case: Cook's distance with the covariance of β̂ without the case,
    (β̂ − β̂₍ᵢ₎)ᵀ cov(β̂₍ᵢ₎)⁻¹ (β̂ − β̂₍ᵢ₎) / p.

    Parameters and cases as :func:`hlm_influence` (HLMdiag's ``mdffits``).

    Returns
    -------
    pandas.Series
        Named ``mdffits``, indexed as :func:`hlm_influence`.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("students_schools")
    >>> res = interlace.fit("score ~ hours", data, random=["(1 + hours | school)"])
    >>> interlace.mdffits(res, level="school").name
    'mdffits'
    """
    with single_threaded_blas():
        return _single("mdffits", res, level, approx, n_jobs, progress)


def covtrace(
    res: LmmResult,
    level: int | str = 1,
    approx: bool = True,
    *,
    n_jobs: int | None = None,
    progress: bool = True,
) -> pd.Series:
    """COVTRACE of each case: |tr(cov(β̂)⁻¹ cov(β̂₍ᵢ₎)) − p|, the change in precision of β̂.

    Parameters and cases as :func:`hlm_influence` (HLMdiag's ``covtrace``).

    Returns
    -------
    pandas.Series
        Named ``covtrace``, indexed as :func:`hlm_influence`.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("students_schools")
    >>> res = interlace.fit("score ~ hours", data, random=["(1 + hours | school)"])
    >>> bool((interlace.covtrace(res) >= 0).all())
    True
    """
    with single_threaded_blas():
        return _single("covtrace", res, level, approx, n_jobs, progress)


def covratio(
    res: LmmResult,
    level: int | str = 1,
    approx: bool = True,
    *,
    n_jobs: int | None = None,
    progress: bool = True,
) -> pd.Series:
    """COVRATIO of each case: det cov(β̂₍ᵢ₎) / det cov(β̂); above 1, the case adds precision.

    Parameters and cases as :func:`hlm_influence` (HLMdiag's ``covratio``).

    Returns
    -------
    pandas.Series
        Named ``covratio``, indexed as :func:`hlm_influence`.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("students_schools")
    >>> res = interlace.fit("score ~ hours", data, random=["(1 + hours | school)"])
    >>> bool((interlace.covratio(res, level="school") > 0).all())
    True
    """
    with single_threaded_blas():
        return _single("covratio", res, level, approx, n_jobs, progress)


def rvc(
    res: LmmResult,
    level: int | str = 1,
    approx: bool = False,
    *,
    n_jobs: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Relative variance change of each variance component without each case (HLMdiag's ``rvc``).

    Parameters
    ----------
    res, level, n_jobs, progress
        As :func:`hlm_influence`.
    approx : bool, default False
        Must be False: RVC has no one-step approximation (θ is what changes), so the model is
        always refitted, as HLMdiag does.

    Returns
    -------
    pandas.DataFrame
        One column per variance component, HLMdiag's names: ``sigma2`` (residual variance),
        ``D<row><col>`` (entries of the block-diagonal covariance of the random effects; only
        the diagonal when every term is scalar). Values are var₍ᵢ₎ / var − 1.

    Raises
    ------
    InterlaceError
        ``approx=True``.

    Examples
    --------
    >>> import interlace
    >>> data = interlace.datasets.load("students_schools")
    >>> res = interlace.fit("score ~ hours", data, random=["(1 + hours | school)"])
    >>> list(interlace.rvc(res, level="school", n_jobs=2).columns)
    ['sigma2', 'D11', 'D21', 'D22']
    """
    with single_threaded_blas():
        if approx:
            raise InterlaceError(
                "rvc has no one-step approximation (it measures the change in θ, which the "
                "one-step formulas hold fixed); use approx=False, which refits the model without "
                "each case"
            )
        _, frame = _diagnostics(res, level, False, n_jobs, progress)
        out = frame[[c for c in frame.columns if c.startswith("rvc.")]]
        return out.rename(columns=lambda c: c[len("rvc.") :])


def hlm_augment(
    res: LmmResult,
    level: int | str = 1,
    approx: bool = True,
    *,
    include_ls: bool = True,
    n_jobs: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The model frame (or the levels of a factor) with residuals and influence, as HLMdiag's
    ``hlm_augment``: :func:`hlm_resid` joined with :func:`hlm_influence` on the row or level.

    Parameters
    ----------
    res : LmmResult
    level : 1 or str, default 1
        1 for one row per observation, or a grouping factor for one row per level.
    approx : bool, default True
        One-step diagnostics (True) or exact case deletion (False).
    include_ls : bool, default True
        Passed to :func:`hlm_resid`.
    n_jobs, progress
        Passed to :func:`hlm_influence`.

    Returns
    -------
    pandas.DataFrame
        Every column of ``hlm_resid(res, level)`` followed by the influence columns it lacks.

    Examples
    --------
    >>> import interlace
    >>> df = interlace.datasets.load("students_schools")
    >>> res = interlace.fit("score ~ hours + (1 | school)", df)
    >>> aug = interlace.hlm_augment(res)
    >>> {".resid", "cooksd", "leverage.overall"} <= set(aug.columns)
    True
    """
    with single_threaded_blas():
        resid = hlm_resid(res, level=level, include_ls=include_ls)
        influence = hlm_influence(res, level=level, approx=approx, n_jobs=n_jobs, progress=progress)
        extra = influence[[c for c in influence.columns if c not in resid.columns]]
        if not resid.index.sort_values().equals(extra.index.sort_values()):
            raise InterlaceError(
                f"internal error: residuals and influence at level {level!r} index different rows"
            )
        return resid.join(extra)
