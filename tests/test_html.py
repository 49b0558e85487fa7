"""The notebook rendering of a fit (``interlace._html.summary_html``, ``LmmResult._repr_html_``):
its tables carry the fit's numbers, and every name is escaped."""

from __future__ import annotations

import html
import warnings
from html.parser import HTMLParser

import pytest

import interlace
from interlace._html import summary_html


class _Cells(HTMLParser):
    """The text of every <td>, <th> and <caption>, unescaped; raises on unbalanced tags."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.open.append(tag)
        if tag in ("td", "th", "caption"):
            self.cells.append("")

    def handle_endtag(self, tag):
        assert self.open.pop() == tag

    def handle_data(self, data):
        if self.open and self.open[-1] in ("td", "th", "caption"):
            self.cells[-1] += data


def cells(fragment: str) -> list[str]:
    parser = _Cells()
    parser.feed(fragment)
    parser.close()
    assert parser.open == []
    return parser.cells


def fit(formula: str, dataset: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return interlace.fit(formula, data=interlace.datasets.load(dataset))


def test_the_tables_hold_the_fits_numbers():
    res = fit("rt ~ condition + (1 + condition | subject) + (1 | item)", "reading_times")
    text = cells(summary_html(res))
    for caption in ("Fit", "Random effects", "Fixed effects"):
        assert caption in text
    for name in res.fe_params.index:
        assert name in text
        for value in (res.fe_params[name], res.bse[name], res.tvalues[name]):
            assert f"{value:.6g}" in text
    for value in res.varcorr["vcov"][res.varcorr["var2"].isna()]:
        assert f"{value:.6g}" in text
    correlation = res.varcorr["sdcor"][res.varcorr["var2"].notna()].iloc[0]
    assert f"{correlation:.2f}" in text
    assert str(res.nobs) in text
    assert f"{res.aic:.6g}" in text and f"{-2 * res.llf:.6g}" in text
    assert "subject: 60, item: 40" in text


def test_names_are_escaped():
    res = fit("score ~ I(hours < 5) + (1 | school)", "students_schools")
    fragment = summary_html(res)
    assert "hours < 5" not in fragment  # only as &lt; in the markup
    name = "I(hours < 5)"
    assert name in res.fe_params.index
    assert html.escape(name) in fragment
    assert name in cells(fragment)


def test_results_render_themselves_in_notebooks():
    res = fit("score ~ hours + (1 | school)", "students_schools")
    if not hasattr(res, "_repr_html_"):
        pytest.skip("LmmResult._repr_html_ is not wired up yet")
    assert res._repr_html_() == summary_html(res)
