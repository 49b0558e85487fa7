"""``interlace.fit``: the staged fit pipeline (lme4's lFormula → mkLmerDevfun → optimizeLmer →
mkMerMod), one named stage per module:

    formula.parse_formula   "(1 + x | g)" bars → term specifications
    design.build_design     data → y, X, level codes, Z blocks, names (validated)
    _core.Model             blocked crossproduct, L(θ), objective, BOBYQA (Rust)
    results.LmmResult       arrays + names → a frozen, labelled result
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from interlace import _core
from interlace._threads import single_threaded_blas
from interlace.design import Design, build_design
from interlace.exceptions import DataError, InputTypeError, InterlaceError, RankDeficiencyWarning
from interlace.formula import parse_formula
from interlace.results import LmmResult, fit_warnings

__all__ = ["fit"]

_METHODS = {"REML": True, "ML": False}


def _core_model(design: Design, reml: bool) -> _core.Model:
    """The compiled model for a design: arrays exactly as the core's boundary expects."""
    weights = getattr(design, "weights", None)
    return _core.Model(
        np.ascontiguousarray(design.y, dtype=np.float64),
        np.asfortranarray(design.x, dtype=np.float64),
        [np.ascontiguousarray(t.codes, dtype=np.int32) for t in design.terms],
        [np.asfortranarray(t.z, dtype=np.float64) for t in design.terms],
        [int(t.n_levels) for t in design.terms],
        reml,
        None if weights is None else np.ascontiguousarray(weights, dtype=np.float64),
    )


def _check_residual_variation(design: Design, sigma: float) -> None:
    """σ̂ at rounding level: the random effects reproduce the response exactly (it is constant
    within every level of a grouping factor), so the likelihood grows without bound as σ → 0
    and there is no estimate to report. lme4 returns one silently; refuse it."""
    y = np.asarray(design.y, dtype=float)
    if y.size == 0 or sigma > 1e-5 * float(np.max(np.abs(y))):
        return  # the spread below is at most max|y|; its reductions cost more than this one
    spread = float(np.std(y)) or float(np.sqrt(np.mean(y * y)))
    # The optimiser stops on its way to σ = 0 once θ is large: σ̂/sd(y) is then about 1e-6,
    # where real data, even with a residual variance 1e-8 of the total, sit above 1e-4.
    if spread > 0.0 and sigma <= 1e-5 * spread:
        groups = ", ".join(f"'{term.group}'" for term in design.terms)
        raise DataError(
            f"response '{design.response}' has no residual variation once the random effects "
            f"({groups}) are fitted: sigma is {sigma:.2g} against a response scale of "
            f"{spread:.3g}, and the likelihood has no maximum; the response is constant within "
            "the levels of a grouping factor"
        )


def _method_name(method: object) -> str:
    if not isinstance(method, str):
        raise InputTypeError(f"method must be 'REML' or 'ML', not {type(method).__name__}")
    name = method.upper()
    if name not in _METHODS:
        raise InterlaceError(f"unknown method {method!r}: use 'REML' (the default) or 'ML'")
    return name


def fit(
    formula: str,
    data: object,
    groups: str | Sequence[str] | None = None,
    random: str | Sequence[str] | None = None,
    method: str = "REML",
    *,
    weights: str | Sequence[float] | None = None,
    start: Sequence[float] | None = None,
    max_evals: int = 0,
) -> LmmResult:
    """Fit a linear mixed-effects model, as lme4's ``lmer`` does.

    Parameters
    ----------
    formula : str
        ``"response ~ fixed part"``; random-effects terms may be included in lme4's one-string
        form, ``"rt ~ condition + (1 | subject) + (1 | item)"``.
    data : pandas.DataFrame, polars.DataFrame or pyarrow.Table
        Rows with a missing value in any column the model uses are dropped (lme4's na.omit).
    groups : str or list of str, optional
        Grouping columns, each given a random intercept ``(1 | g)``: crossed, or nested where the
        data nest.
    random : list of str, optional
        lme4 random-effects terms: ``"(1 | g)"``, ``"(1 + x | g)"``, ``"(x | g)"`` (implicit
        intercept), ``"(0 + x | g)"``, ``"(x || g)"`` (uncorrelated), ``"(1 | a/b)"``,
        ``"(1 | a:b)"``.
    method : {"REML", "ML"}
        Restricted (default) or full maximum likelihood.
    weights : str or array-like, optional
        Prior weights, as lme4's ``weights``: a column of ``data`` or one value per row of
        ``data``, finite and positive. Observation i has residual variance σ²/wᵢ; the REML
        criterion and deviance include −log|W| as lme4's do. A missing weight drops its row.
    start : sequence of float, optional
        Starting θ (lme4's layout). By default lme4's start (1 on the diagonals, 0
        elsewhere), except for models of at least 10,000 observations with at least 256
        random effects outside the term with the most: those start from moment estimates of
        each term's covariance (a few backfitting sweeps over the terms), which reach the same
        optimum in fewer evaluations.
    max_evals : int, optional
        Budget of objective evaluations for the optimiser (0: the default budget).

    Returns
    -------
    LmmResult

    Examples
    --------
    >>> import interlace
    >>> df = interlace.datasets.load("reading_times")
    >>> res = interlace.fit("rt ~ condition", data=df, groups=["subject", "item"])
    >>> res.nobs == len(df.dropna())
    True
    >>> sorted(res.random_effects)
    ['item', 'subject']
    """
    with single_threaded_blas():
        method_name = _method_name(method)
        if not isinstance(formula, str):
            raise InputTypeError(f"formula must be a string, not {type(formula).__name__}")
        parsed = parse_formula(formula, groups=groups, random=random)
        design = build_design(parsed, data, weights=weights)
        for name in design.dropped_fixed:
            warnings.warn(
                f"fixed-effect model matrix is rank deficient: column {name!r} is aliased with "
                "earlier columns and was dropped",
                RankDeficiencyWarning,
                stacklevel=2,
            )
        model = _core_model(design, reml=_METHODS[method_name])
        theta0 = None if start is None else np.asarray(start, dtype=np.float64)
        if theta0 is not None and theta0.shape != (model.n_theta,):
            raise InterlaceError(
                f"start has {theta0.size} values; this model has {model.n_theta} covariance "
                "parameters"
            )
        # The modes' conditional covariances are formed when first read (LmmResult), as lme4's
        # ranef(condVar = TRUE) forms them: on InstEval they cost a dense L₂₂ and its inverse.
        core = model.fit(theta0, max_evals=int(max_evals), conditional_covariances=False)
        _check_residual_variation(design, float(core["sigma"]))
        result = LmmResult.from_core(design, core, method_name)
        for category, message in fit_warnings(result):
            warnings.warn(message, category, stacklevel=2)
        return result
