"""Diagnostic plots of a fitted model, after lme4's lattice methods and HLMdiag's ``dotplot_diag``.

=================== =========================================================================
:func:`caterpillar`  conditional modes with ± z·(conditional SD) intervals, one panel per
                     term column, levels sorted (lme4's ``dotplot(ranef(fm, condVar = TRUE))``)
:func:`resid_fitted` residuals against fitted values (lme4's ``plot(fm)``)
:func:`qq`           normal QQ plot of the residuals (``qqnorm(resid(fm))``) or of one factor's
                     conditional modes (lme4's ``qqmath(ranef(fm, condVar = TRUE))``)
:func:`dotplot_diag` a dot plot of an influence diagnostic with HLMdiag's cutoffs
=================== =========================================================================

matplotlib is an optional dependency (``pip install 'interlace[plot]'``): it is imported when a
plot is drawn, never when this module is imported, so :func:`internal_cutoff` and
:func:`n_influential` work without it. Every plot function takes ``ax`` (draw into existing
axes) and returns the :class:`matplotlib.figure.Figure` it drew on; without ``ax`` it creates
the figure with ``matplotlib.pyplot``, so ``plt.show()`` and notebooks display it as usual.

HLMdiag's internal cutoff (Loy & Hofmann 2014) is a measure of relative standing: a value is
unusual when it lies more than three interquartile ranges beyond the quartiles,

    upper = Q3 + 3·IQR                          (cooksd, mdffits, covtrace, leverage)
    lower, upper = Q1 − 3·IQR, Q3 + 3·IQR       (covratio, rvc: departures both ways matter)

with R's default (type 7) quantiles, and "beyond" is strict (``value > upper``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from interlace.exceptions import DataError, InputTypeError
from interlace.inference import _normal_quantile
from interlace.results import LmmResult

__all__ = [
    "caterpillar",
    "dotplot_diag",
    "internal_cutoff",
    "n_influential",
    "qq",
    "resid_fitted",
]

_INSTALL_HINT = "plotting needs matplotlib: pip install 'interlace[plot]'"
#: Diagnostics whose internal cutoff is two-sided (HLMdiag's ``covratio`` and ``rvc``).
_TWO_SIDED = ("covratio", "rvc")
#: Level names are written on the axis up to this many levels; beyond, they would overlap.
_MAX_LEVEL_LABELS = 60
_POINT_COLOUR = "tab:blue"
_FLAG_COLOUR = "tab:red"


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(_INSTALL_HINT) from error
    return plt


def _check_result(res: object) -> LmmResult:
    if not isinstance(res, LmmResult):
        raise InputTypeError(
            f"expected a fitted model (interlace.fit(...)), not {type(res).__name__}"
        )
    return res


def _axes_for(ax: Any, n_panels: int, n_rows: int, n_columns: int, size: tuple[float, float]):
    """The figure and one Axes per panel: new ones laid out n_rows × n_columns, or ``ax``."""
    if ax is None:
        plt = _pyplot()
        figure, grid = plt.subplots(n_rows, n_columns, figsize=size, squeeze=False)
        axes = list(grid.ravel())
        for unused in axes[n_panels:]:
            unused.set_visible(False)
        return figure, axes[:n_panels]
    axes = [ax] if not isinstance(ax, (Sequence, np.ndarray)) else list(np.ravel(ax))
    if len(axes) != n_panels:
        raise DataError(f"this plot has {n_panels} panel(s) but ax holds {len(axes)} Axes")
    return axes[0].figure, axes


def _effects_frame(effects: pd.Series | pd.DataFrame) -> pd.DataFrame:
    """Conditional modes (or SDs) of one factor as a DataFrame, one column per term column."""
    return effects.to_frame("Intercept") if isinstance(effects, pd.Series) else effects


def _panels(res: LmmResult, group: str | None, term: str | None) -> list[tuple[str, str]]:
    """``(group, column)`` of every panel to draw, in the result's order."""
    groups = list(res.random_effects)
    if group is not None and group not in groups:
        raise DataError(
            f"group={group!r} is not a grouping factor of this model; "
            f"use one of {', '.join(repr(g) for g in groups)}"
        )
    chosen = groups if group is None else [group]
    panels = [
        (g, str(column))
        for g in chosen
        for column in _effects_frame(res.random_effects[g]).columns
        if term is None or str(column) == term
    ]
    if not panels:
        available = sorted(
            {str(c) for g in chosen for c in _effects_frame(res.random_effects[g]).columns}
        )
        raise DataError(
            f"term={term!r} is not a random-effects column of {', '.join(chosen)}; "
            f"use one of {', '.join(repr(c) for c in available)}"
        )
    return panels


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise DataError(f"level must lie strictly between 0 and 1, got {level!r}")
    return _normal_quantile(0.5 + 0.5 * level)


def caterpillar(
    res: LmmResult,
    group: str | None = None,
    term: str | None = None,
    level: float = 0.95,
    ax: Any = None,
    sort: bool = True,
) -> Any:
    """Caterpillar plot of the conditional modes, as lme4's ``dotplot(ranef(fm, condVar = TRUE))``.

    Each level of a grouping factor is a point at its conditional mode b̂ with a horizontal
    interval b̂ ± z·sd, where sd is the conditional SD (:attr:`LmmResult.random_effects_se`,
    lme4's ``condVar``) and z = Φ⁻¹((1 + level)/2). There is one panel per term column (the
    intercept, each slope) of each grouping factor, titled ``"group: column"``, with a vertical
    line at zero.

    Parameters
    ----------
    res : LmmResult
        A fitted model.
    group : str, optional
        The grouping factor to draw; by default every factor, one row of panels each.
    term : str, optional
        One term column (``"Intercept"``, ``"hours"``...) to draw; by default all of them.
    level : float, default 0.95
        Coverage of the intervals under normality.
    ax : matplotlib Axes or sequence of Axes, optional
        Axes to draw into, one per panel; by default a new figure.
    sort : bool, default True
        Order the levels by the conditional mode of the first column drawn (lme4 sorts by the
        first column too, so the rows of one factor's panels line up); otherwise keep the
        factor's level order. The first level is at the bottom.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    interlace.exceptions.DataError
        If ``group`` or ``term`` names nothing in the model, or ``level`` is not in (0, 1).

    Examples
    --------
    >>> import interlace
    >>> res = interlace.fit(  # doctest: +SKIP
    ...     "score ~ hours + (1 + hours | school)", interlace.datasets.load("students_schools")
    ... )
    >>> interlace.plots.caterpillar(res, "school").savefig("ranef.png")  # doctest: +SKIP
    """
    res = _check_result(res)
    z = _z(level)
    panels = _panels(res, group, term)
    by_group: dict[str, list[str]] = {}
    for g, column in panels:
        by_group.setdefault(g, []).append(column)
    if ax is None:  # one row of panels per factor, each factor's columns from the left
        n_columns = max(len(columns) for columns in by_group.values())
        tallest = max(len(res.random_effects[g]) for g in by_group)
        row_height = min(max(2.5, 0.16 * tallest + 1.0), 12.0)
        figure, grid = _pyplot().subplots(
            len(by_group),
            n_columns,
            figsize=(3.6 * n_columns, row_height * len(by_group)),
            squeeze=False,
        )
        axes = []
        for row, columns in enumerate(by_group.values()):
            axes.extend(grid[row, : len(columns)])
            for unused in grid[row, len(columns) :]:
                unused.set_visible(False)
    else:
        figure, axes = _axes_for(ax, len(panels), 1, 1, (0.0, 0.0))

    panel = 0
    for g, columns in by_group.items():
        modes = _effects_frame(res.random_effects[g])
        sds = _effects_frame(res.random_effects_se[g])
        order = (
            np.argsort(modes[columns[0]].to_numpy(dtype=float), kind="stable")
            if sort
            else np.arange(len(modes))
        )
        labels = [str(label) for label in modes.index[order]]
        y = np.arange(len(order), dtype=float)
        for column in columns:
            axis = axes[panel]
            panel += 1
            centre = modes[column].to_numpy(dtype=float)[order]
            half_width = z * sds[column].to_numpy(dtype=float)[order]
            axis.axvline(0.0, color="0.6", linewidth=0.8, zorder=0)
            axis.hlines(
                y, centre - half_width, centre + half_width, color="black", linewidth=1.0
            ).set_gid("intervals")
            (points,) = axis.plot(
                centre, y, "o", color=_POINT_COLOUR, markersize=4, linestyle="none"
            )
            points.set_gid("modes")
            axis.set_title(f"{g}: {column}", fontsize="medium")
            axis.set_ylim(-0.7, len(y) - 0.3)
            if len(y) <= _MAX_LEVEL_LABELS:
                axis.set_yticks(y, labels, fontsize="x-small" if len(y) > 25 else "small")
            else:
                axis.set_yticks([])
                axis.set_ylabel(f"{len(y)} levels")
            axis.grid(axis="y", color="0.92", linewidth=0.6)
            axis.set_axisbelow(True)
    if ax is None:
        figure.tight_layout()
    return figure


def resid_fitted(res: LmmResult, ax: Any = None) -> Any:
    """Residuals against fitted values with a line at zero (lme4's ``plot(fm)``).

    The residuals are ``res.resid`` = y − Xβ̂ − Zb̂, the fitted values ``res.fittedvalues``.

    Parameters
    ----------
    res : LmmResult
        A fitted model.
    ax : matplotlib Axes, optional
        Axes to draw into; by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    res = _check_result(res)
    figure, (axis,) = _axes_for(ax, 1, 1, 1, (5.0, 4.0))
    axis.axhline(0.0, color="0.4", linewidth=0.8, zorder=0)
    (points,) = axis.plot(
        res.fittedvalues.to_numpy(dtype=float),
        res.resid.to_numpy(dtype=float),
        "o",
        color=_POINT_COLOUR,
        markersize=3,
        alpha=0.6,
        linestyle="none",
    )
    points.set_gid("residuals")
    axis.set_xlabel("Fitted values")
    axis.set_ylabel("Residuals")
    if ax is None:
        figure.tight_layout()
    return figure


def _plotting_positions(n: int) -> np.ndarray:
    """R's ``ppoints(n)``: (i − a)/(n + 1 − 2a) with a = 3/8 for n ≤ 10, else 1/2."""
    a = 0.375 if n <= 10 else 0.5
    return (np.arange(1, n + 1) - a) / (n + 1 - 2 * a)


def _normal_scores(n: int) -> np.ndarray:
    return np.array([_normal_quantile(p) for p in _plotting_positions(n)])


def qq(res: LmmResult, which: str = "resid", ax: Any = None, *, level: float = 0.95) -> Any:
    """Normal QQ plot of the residuals or of one grouping factor's conditional modes.

    Sorted values against the standard normal quantiles at R's ``ppoints`` (the positions
    ``qqnorm`` uses). For the residuals a reference line passes through the first and third
    quartiles, as R's ``qqline``. For a grouping factor there is one panel per term column,
    and each mode carries its ± z·(conditional SD) interval, as lme4's
    ``qqmath(ranef(fm, condVar = TRUE))``.

    Parameters
    ----------
    res : LmmResult
        A fitted model.
    which : str, default "resid"
        ``"resid"`` for the residuals, or the name of a grouping factor.
    ax : matplotlib Axes or sequence of Axes, optional
        Axes to draw into (one per panel); by default a new figure.
    level : float, default 0.95
        Coverage of the conditional-mode intervals.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    interlace.exceptions.DataError
        If ``which`` is neither ``"resid"`` nor a grouping factor of the model.
    """
    res = _check_result(res)
    if which == "resid":
        values = np.sort(res.resid.dropna().to_numpy(dtype=float))
        scores = _normal_scores(values.size)
        figure, (axis,) = _axes_for(ax, 1, 1, 1, (4.5, 4.5))
        sample_q1, sample_q3 = np.quantile(values, [0.25, 0.75])
        normal_q1, normal_q3 = _normal_quantile(0.25), _normal_quantile(0.75)
        slope = (sample_q3 - sample_q1) / (normal_q3 - normal_q1)
        intercept = sample_q1 - slope * normal_q1
        axis.axline((0.0, intercept), slope=slope, color="0.4", linewidth=0.8, zorder=0)
        (points,) = axis.plot(scores, values, "o", color=_POINT_COLOUR, markersize=3, ls="none")
        points.set_gid("quantiles")
        axis.set_xlabel("Standard normal quantiles")
        axis.set_ylabel("Residuals")
        if ax is None:
            figure.tight_layout()
        return figure
    if which not in res.random_effects:
        raise DataError(
            f"which={which!r} is neither 'resid' nor a grouping factor of this model; use "
            f"'resid' or one of {', '.join(repr(g) for g in res.random_effects)}"
        )
    z = _z(level)
    modes = _effects_frame(res.random_effects[which])
    sds = _effects_frame(res.random_effects_se[which])
    columns = [str(c) for c in modes.columns]
    figure, axes = _axes_for(ax, len(columns), 1, len(columns), (4.0 * len(columns), 4.0))
    scores = _normal_scores(len(modes))
    for axis, column in zip(axes, columns, strict=True):
        order = np.argsort(modes[column].to_numpy(dtype=float), kind="stable")
        values = modes[column].to_numpy(dtype=float)[order]
        half_width = z * sds[column].to_numpy(dtype=float)[order]
        axis.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
        axis.vlines(
            scores, values - half_width, values + half_width, color="black", linewidth=0.8
        ).set_gid("intervals")
        (points,) = axis.plot(scores, values, "o", color=_POINT_COLOUR, markersize=3, ls="none")
        points.set_gid("quantiles")
        axis.set_title(f"{which}: {column}", fontsize="medium")
        axis.set_xlabel("Standard normal quantiles")
    if ax is None:
        figure.tight_layout()
    return figure


# --- influence diagnostics (HLMdiag) -------------------------------------------------------------


def _diagnostic_name(values: Any, name: str | None) -> str:
    if name is not None:
        return str(name)
    return str(values.name) if isinstance(values, pd.Series) and values.name is not None else ""


def _is_two_sided(name: str) -> bool:
    return name.startswith(_TWO_SIDED)


def _as_series(values: Any) -> pd.Series:
    """Diagnostic values as a float Series; plain arrays are indexed 1..n, as HLMdiag does."""
    if isinstance(values, pd.DataFrame):
        raise InputTypeError(
            "pass one diagnostic column, e.g. hlm_influence(res)['cooksd'], not a DataFrame"
        )
    if isinstance(values, pd.Series):
        series = values
    else:
        array = np.asarray(values)
        if array.ndim != 1:
            raise InputTypeError(f"expected a one-dimensional vector of values, got {array.ndim}D")
        series = pd.Series(array, index=pd.RangeIndex(1, array.size + 1))
    try:
        return series.astype(float)
    except (TypeError, ValueError) as error:
        raise InputTypeError(f"diagnostic values must be numeric: {error}") from error


def internal_cutoff(values: Any, name: str | None = None) -> float | tuple[float, float]:
    """HLMdiag's internal cutoff: Q3 + 3·IQR, or (Q1 − 3·IQR, Q3 + 3·IQR) for covratio and rvc.

    Quartiles are R's default (type 7, numpy's ``"linear"``); missing values are ignored.

    Parameters
    ----------
    values : pandas.Series or array-like
        Values of one diagnostic.
    name : str, optional
        The diagnostic's name (default: the Series' name). ``"covratio"`` and names starting
        with ``"rvc"`` get the two-sided cutoff, every other name the upper one.

    Returns
    -------
    float or (float, float)

    Examples
    --------
    >>> from interlace.plots import internal_cutoff
    >>> internal_cutoff([1.0, 2.0, 3.0, 4.0, 5.0])
    10.0
    >>> internal_cutoff([1.0, 2.0, 3.0, 4.0, 5.0], name="covratio")
    (-4.0, 10.0)
    """
    series = _as_series(values).dropna()
    if series.empty:
        raise DataError("no values to compute a cutoff from")
    q1, q3 = np.quantile(series.to_numpy(), [0.25, 0.75])
    spread = 3.0 * (q3 - q1)
    if _is_two_sided(_diagnostic_name(values, name)):
        return (float(q1 - spread), float(q3 + spread))
    return float(q3 + spread)


def _resolve_cutoff(values: Any, cutoff: Any, name: str | None) -> tuple[float, float] | None:
    """The cutoff as an interval (lower, upper) of usual values, or None for no cutoff."""
    if cutoff is None:
        return None
    if isinstance(cutoff, str):
        if cutoff != "internal":
            raise DataError(f"cutoff must be 'internal', a number or a pair, got {cutoff!r}")
        cutoff = internal_cutoff(values, name)
    if isinstance(cutoff, (tuple, list, np.ndarray)):
        if len(cutoff) != 2:
            raise DataError(f"a two-sided cutoff is a pair (lower, upper), got {cutoff!r}")
        lower, upper = (float(c) for c in cutoff)
    else:
        try:
            lower, upper = -math.inf, float(cutoff)
        except (TypeError, ValueError) as error:
            raise InputTypeError(
                f"cutoff must be 'internal', a number or a pair, got {cutoff!r}"
            ) from error
    if not lower <= upper:
        raise DataError(f"the lower cutoff {lower} exceeds the upper one {upper}")
    return lower, upper


def _beyond(series: pd.Series, bounds: tuple[float, float]) -> np.ndarray:
    values = series.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        return (values < bounds[0]) | (values > bounds[1])


def n_influential(values: Any, cutoff: Any = "internal", name: str | None = None) -> int:
    """How many values lie beyond a cutoff: the cases HLMdiag's ``dotplot_diag`` marks.

    Parameters
    ----------
    values : pandas.Series or array-like
        Values of one diagnostic, e.g. ``hlm_influence(res, level="school")["cooksd"]``.
    cutoff : "internal", float or (float, float), default "internal"
        ``"internal"``: :func:`internal_cutoff`. A number counts values above it; a pair
        ``(lower, upper)`` counts values outside it. Comparisons are strict; missing values
        never count.
    name : str, optional
        The diagnostic's name, for the internal cutoff (default: the Series' name).

    Returns
    -------
    int

    Examples
    --------
    >>> from interlace.plots import n_influential
    >>> n_influential([1.0, 2.0, 3.0, 4.0, 5.0, 20.0])
    1
    >>> n_influential([0.2, 0.5, 0.9], cutoff=0.4)
    2
    """
    bounds = _resolve_cutoff(values, cutoff, name)
    if bounds is None:
        raise DataError("n_influential needs a cutoff: 'internal', a number or a pair")
    return int(_beyond(_as_series(values), bounds).sum())


def dotplot_diag(
    values: Any,
    cutoff: Any = None,
    name: str | None = None,
    modify: bool | str = False,
    ax: Any = None,
    *,
    max_labels: int = 10,
) -> Any:
    """Dot plot of an influence diagnostic, as HLMdiag's ``dotplot_diag``.

    One point per case (observation or level), sorted so the largest value is at the top,
    the diagnostic's value on the horizontal axis. With a cutoff, it is drawn as a vertical
    red line and the cases beyond it are red triangles labelled with their index (the
    ``max_labels`` furthest beyond, at most).

    Parameters
    ----------
    values : pandas.Series or array-like
        Values of one diagnostic, indexed by case: e.g.
        ``hlm_influence(res, level="school")["cooksd"]``. Arrays are indexed 1..n.
    cutoff : None, "internal", float or (float, float), optional
        No cutoff (the default); HLMdiag's internal cutoff (:func:`internal_cutoff`); a value
        above which cases are unusual; or a pair (lower, upper) outside which they are.
    name : str, optional
        The diagnostic's name, for the axis label and the internal cutoff (two-sided for
        ``"covratio"`` and ``"rvc..."``); by default the Series' name.
    modify : False, "dotplot" or "boxplot", default False
        HLMdiag's space-saving variants: the cases within the cutoff collapse onto one row
        (as dots, or summarised by a box plot), and only the unusual cases get rows of their
        own. Needs a cutoff.
    ax : matplotlib Axes, optional
        Axes to draw into; by default a new figure.
    max_labels : int, default 10
        Label at most this many of the cases beyond the cutoff, furthest first.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    interlace.exceptions.DataError
        If ``modify`` is set without a cutoff, or ``cutoff`` or ``modify`` is not one of the
        values above.

    Examples
    --------
    >>> import interlace
    >>> infl = interlace.hlm_influence(res, level="school")  # doctest: +SKIP
    >>> interlace.plots.dotplot_diag(infl["cooksd"], cutoff="internal")  # doctest: +SKIP
    """
    if modify not in (False, "dotplot", "boxplot"):
        raise DataError(f"modify must be False, 'dotplot' or 'boxplot', got {modify!r}")
    series = _as_series(values).dropna()
    label = _diagnostic_name(values, name)
    bounds = _resolve_cutoff(series, cutoff, label)
    if modify is not False and bounds is None:
        raise DataError("a modified dot plot (modify=...) needs a cutoff")

    order = np.argsort(series.to_numpy(dtype=float), kind="stable")
    ordered = series.iloc[order]
    value = ordered.to_numpy(dtype=float)
    flagged = np.zeros(value.size, dtype=bool) if bounds is None else _beyond(ordered, bounds)
    if modify is False:
        row = np.arange(1, value.size + 1, dtype=float)  # largest value on top
    else:  # the usual cases share row 0; each unusual one gets its own row, larger above
        row = np.where(flagged, np.cumsum(flagged), 0).astype(float)

    n_rows = int(row.max()) + 1 if value.size else 1
    height = min(max(3.0, 0.05 * n_rows + 1.5), 10.0)
    figure, (axis,) = _axes_for(ax, 1, 1, 1, (5.0, height))
    usual = ~flagged
    if modify == "boxplot":
        if usual.any():
            try:
                axis.boxplot(value[usual], positions=[0.0], orientation="horizontal", widths=0.6)
            except TypeError:  # matplotlib < 3.10 spells it vert=False
                axis.boxplot(value[usual], positions=[0.0], vert=False, widths=0.6)
    else:
        (points,) = axis.plot(
            value[usual], row[usual], "o", color=_POINT_COLOUR, markersize=4, linestyle="none"
        )
        points.set_gid("usual")
    if flagged.any():
        (points,) = axis.plot(
            value[flagged], row[flagged], "^", color=_FLAG_COLOUR, markersize=6, linestyle="none"
        )
        points.set_gid("beyond")
        lower, upper = bounds if bounds is not None else (-math.inf, math.inf)
        distance = np.maximum(lower - value, value - upper)
        labelled = [k for k in np.argsort(-distance, kind="stable") if flagged[k]][:max_labels]
        for k in labelled:
            axis.annotate(
                str(ordered.index[k]),
                (value[k], row[k]),
                xytext=(0, -9),
                textcoords="offset points",
                ha="center",
                fontsize="x-small",
            )
    if bounds is not None:
        for bound in bounds:
            if math.isfinite(bound):
                axis.axvline(bound, color=_FLAG_COLOUR, linewidth=1.0).set_gid("cutoff")
    axis.set_yticks([])
    axis.set_xlabel(label or "value")
    if ax is None:
        figure.tight_layout()
    return figure
