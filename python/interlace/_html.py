"""HTML rendering of a fit's summary, for notebooks (``LmmResult._repr_html_``).

The same content as ``str(res.summary())``, as three tables: the fit (method, formula, criterion,
observations and groups), the random effects (``varcorr``'s variances, with correlations) and the
fixed effects (lmerTest's coefficient table). Every piece of text, names included, is escaped:
a coefficient called ``I(x < 3)[T.True]`` must not become markup.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

__all__ = ["summary_html"]

_STYLE = (
    "<style>"
    ".interlace-summary table{border-collapse:collapse;margin:0 0 1em 0}"
    ".interlace-summary caption{text-align:left;font-weight:bold;padding:0.3em 0}"
    ".interlace-summary th,.interlace-summary td{padding:0.15em 0.7em}"
    ".interlace-summary td.num{text-align:right;font-family:monospace}"
    ".interlace-summary .interlace-warning{color:#a0522d}"
    "</style>"
)


def _number(value: Any, digits: int = 6) -> str:
    """A number to ``digits`` significant digits; NaN and missing as lme4 prints NA."""
    if value is None:
        return ""
    value = float(value)
    if math.isnan(value):
        return "NA"
    return f"{value:.{digits}g}"


def _pvalue(value: Any) -> str:
    value = float(value)
    if math.isnan(value):
        return "NA"
    return "&lt; 2e-16" if value < 2.2e-16 else f"{value:.3g}"


def _cell(text: str, numeric: bool = False, escaped: bool = False) -> str:
    body = text if escaped else html.escape(text)
    return f'<td class="num">{body}</td>' if numeric else f"<td>{body}</td>"


def _table(caption: str, header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; ``rows`` hold finished ``<td>`` cells, ``header`` plain text."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return (
        f"<table><caption>{html.escape(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _fit_table(result: Any) -> str:
    objective = -2.0 * float(result.llf)
    criterion = "REML criterion" if result.method == "REML" else "deviance"
    groups = ", ".join(f"{g}: {n}" for g, n in result.ngroups.items())
    entries = [
        ("Method", "REML" if result.method == "REML" else "maximum likelihood (ML)", False),
        ("Formula", str(result.formula), False),
        ("Observations", str(result.nobs), True),
        ("Groups", groups, False),
        (criterion, _number(objective), True),
        ("Log-likelihood", _number(result.llf), True),
        ("AIC", _number(result.aic), True),
        ("BIC", _number(result.bic), True),
        ("Residual SD", _number(result.sigma), True),
        ("Converged", "yes" if result.converged else "no", False),
        ("Singular", "yes" if result.is_singular else "no", False),
    ]
    rows = [[_cell(name), _cell(value, numeric)] for name, value, numeric in entries]
    return _table("Fit", ["", ""], rows)


def _random_effects_table(result: Any) -> str:
    varcorr = result.varcorr
    variances = varcorr[varcorr["var2"].isna()]
    correlations = varcorr[varcorr["var2"].notna()]
    n_corr = 0
    for name in dict.fromkeys(variances["grp"]):
        n_corr = max(n_corr, int((variances["grp"] == name).sum()) - 1)
    rows = []
    previous = None
    for row in variances.itertuples(index=False):
        group, column = str(row.grp), "" if row.var1 is None else str(row.var1)
        cells = [
            _cell(group if group != previous else ""),
            _cell(column),
            _cell(_number(row.vcov), True),
            _cell(_number(row.sdcor), True),
        ]
        if n_corr:
            earlier = variances[(variances["grp"] == row.grp)]["var1"].tolist()
            earlier = earlier[: earlier.index(row.var1)] if row.var1 in earlier else []
            corr = []
            for other in earlier:
                match = correlations[
                    (correlations["grp"] == row.grp)
                    & (correlations["var1"] == other)
                    & (correlations["var2"] == row.var1)
                ]
                corr.append(f"{float(match['sdcor'].iloc[0]):.2f}" if len(match) else "")
            corr += [""] * (n_corr - len(corr))
            cells += [_cell(c, True) for c in corr]
        rows.append(cells)
        previous = group
    header = ["Groups", "Name", "Variance", "Std.Dev."] + (
        ["Corr"] + [""] * (n_corr - 1) if n_corr else []
    )
    return _table("Random effects", header, rows)


def _fixed_effects_table(result: Any) -> str:
    table = result.summary().fixed_effects
    header = ["", *table.columns]
    rows = []
    for name, values in table.iterrows():
        cells = [_cell(str(name))]
        for column, value in values.items():
            if column == "Pr(>|t|)":
                cells.append(_cell(_pvalue(value), True, escaped=True))
            else:
                cells.append(_cell(_number(value), True))
        rows.append(cells)
    return _table("Fixed effects", header, rows)


def summary_html(result: Any) -> str:
    """The summary of a fit as an HTML fragment (what Jupyter shows for an ``LmmResult``).

    Parameters
    ----------
    result : LmmResult

    Returns
    -------
    str
        A ``<div class="interlace-summary">`` with the fit, random-effects and fixed-effects
        tables, and the fit's warnings (a singular fit, a doubtful optimum) below them.
        Numbers have 6 significant digits (p-values 3); all text is HTML-escaped.

    Examples
    --------
    >>> import warnings, interlace
    >>> from interlace._html import summary_html
    >>> df = interlace.datasets.load("reading_times")
    >>> res = interlace.fit("rt ~ condition + (1 | subject) + (1 | item)", data=df)
    >>> summary_html(res).startswith('<div class="interlace-summary">')
    True
    """
    from interlace.results import fit_warnings

    parts = [
        _STYLE,
        _fit_table(result),
        _random_effects_table(result),
    ]
    if len(np.atleast_1d(result.fe_params)):
        parts.append(_fixed_effects_table(result))
    for _, message in fit_warnings(result):
        parts.append(f'<p class="interlace-warning">{html.escape(message)}</p>')
    return '<div class="interlace-summary">' + "".join(parts) + "</div>"
