"""Plots: each renders to a real PNG, draws what it claims, and HLMdiag's cutoffs are exact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import interlace
from interlace import plots
from interlace.exceptions import DataError, InputTypeError

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def slopes() -> interlace.results.LmmResult:
    data = interlace.datasets.load("students_schools")
    return interlace.fit("score ~ hours + (1 + hours | school)", data)


@pytest.fixture(scope="module")
def crossed() -> interlace.results.LmmResult:
    data = interlace.datasets.load("ratings")
    return interlace.fit("rating ~ 1 + (1 | user) + (1 | item)", data)


@pytest.fixture(scope="module")
def school_influence(slopes) -> pd.DataFrame:
    return interlace.hlm_influence(slopes, level="school")


def _by_gid(axis, gid: str):
    found = [a for a in axis.get_children() if a.get_gid() == gid]
    assert len(found) == 1, f"{gid}: {found}"
    return found[0]


def _assert_png(path: Path, figure) -> None:
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE
    blank = path.with_name("blank.png")
    plt.figure(figsize=figure.get_size_inches()).savefig(blank, dpi=80)
    assert len(raw) > 4_000, len(raw)  # a drawn plot, not an empty canvas...
    assert len(raw) > 3 * blank.stat().st_size  # ...of the same size
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels.shape[2] in (3, 4)
    assert np.ptp(pixels[..., :3]) > 0.5  # dark marks on a light background


# --- every plot renders -------------------------------------------------------------------------

RENDERERS = {
    "caterpillar": lambda res, infl: plots.caterpillar(res),
    "caterpillar_term": lambda res, infl: plots.caterpillar(res, "school", term="hours"),
    "resid_fitted": lambda res, infl: plots.resid_fitted(res),
    "qq_resid": lambda res, infl: plots.qq(res),
    "qq_group": lambda res, infl: plots.qq(res, "school"),
    "dotplot_diag": lambda res, infl: plots.dotplot_diag(infl["cooksd"]),
    "dotplot_diag_internal": lambda res, infl: plots.dotplot_diag(
        infl["cooksd"], cutoff="internal"
    ),
    "dotplot_diag_dotplot": lambda res, infl: plots.dotplot_diag(
        infl["mdffits"], cutoff="internal", modify="dotplot"
    ),
    "dotplot_diag_boxplot": lambda res, infl: plots.dotplot_diag(
        infl["covratio"], cutoff="internal", modify="boxplot"
    ),
}


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_every_plot_renders_to_png(kind, slopes, school_influence, tmp_path) -> None:
    figure = RENDERERS[kind](slopes, school_influence)
    assert isinstance(figure, matplotlib.figure.Figure)
    path = tmp_path / f"{kind}.png"
    figure.savefig(path, dpi=80)
    _assert_png(path, figure)


def test_import_interlace_does_not_import_matplotlib() -> None:
    code = "import sys, interlace; interlace.n_influential([1.0, 2.0]); print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "matplotlib" not in done.stdout


def test_missing_matplotlib_is_a_clear_import_error(slopes, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # `import` now fails
    with pytest.raises(ImportError, match=r"pip install 'interlace\[plot\]'"):
        plots.resid_fitted(slopes)


# --- caterpillar --------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.95, 0.5])
def test_caterpillar_points_and_intervals(slopes, level) -> None:
    from scipy.stats import norm

    figure = plots.caterpillar(slopes, "school", level=level)
    modes = slopes.random_effects["school"]
    sds = slopes.random_effects_se["school"]
    order = np.argsort(modes["Intercept"].to_numpy(), kind="stable")  # lme4 sorts by column 1
    axes = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title() for axis in axes] == ["school: Intercept", "school: hours"]
    for axis, column in zip(axes, ["Intercept", "hours"], strict=True):
        points = _by_gid(axis, "modes")
        x, y = points.get_xdata(), points.get_ydata()
        assert len(x) == slopes.ngroups["school"] == len(modes)
        np.testing.assert_allclose(x, modes[column].to_numpy()[order], rtol=0, atol=0)
        np.testing.assert_array_equal(y, np.arange(len(modes)))
        assert [t.get_text() for t in axis.get_yticklabels()] == list(modes.index[order])
        intervals = _by_gid(axis, "intervals")
        assert isinstance(intervals, LineCollection)
        segments = np.array(intervals.get_segments())  # (level, endpoint, xy)
        half_width = (segments[:, 1, 0] - segments[:, 0, 0]) / 2.0
        expected = norm.ppf(0.5 + level / 2) * sds[column].to_numpy()[order]
        np.testing.assert_allclose(half_width, expected, rtol=1e-12)
        np.testing.assert_allclose(segments[:, :, 0].mean(axis=1), x, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(segments[:, 0, 1], y)


def test_caterpillar_of_crossed_intercepts_one_panel_per_factor(crossed) -> None:
    figure = plots.caterpillar(crossed)
    axes = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title() for axis in axes] == ["user: Intercept", "item: Intercept"]
    for axis, group in zip(axes, ["user", "item"], strict=True):
        modes = crossed.random_effects[group]
        assert isinstance(modes, pd.Series)
        x = _by_gid(axis, "modes").get_xdata()
        np.testing.assert_array_equal(x, np.sort(modes.to_numpy(), kind="stable"))
    # 300 users: too many to name on the axis; 150 items too.
    assert len(axes[0].get_yticks()) == 0


def test_caterpillar_unsorted_keeps_the_level_order(slopes) -> None:
    figure = plots.caterpillar(slopes, "school", term="hours", sort=False)
    (axis,) = [axis for axis in figure.axes if axis.get_visible()]
    x = _by_gid(axis, "modes").get_xdata()
    np.testing.assert_array_equal(x, slopes.random_effects["school"]["hours"].to_numpy())


def test_caterpillar_draws_into_given_axes(slopes) -> None:
    figure, axes = plt.subplots(1, 2)
    assert plots.caterpillar(slopes, "school", ax=axes) is figure
    assert all(len(axis.lines) > 0 for axis in axes)
    with pytest.raises(DataError, match="2 panel"):
        plots.caterpillar(slopes, "school", ax=axes[0])


def test_caterpillar_rejects_unknown_names(slopes) -> None:
    with pytest.raises(DataError, match="'school'"):
        plots.caterpillar(slopes, "district")
    with pytest.raises(DataError, match="'hours'"):
        plots.caterpillar(slopes, term="homework")
    with pytest.raises(DataError, match="level"):
        plots.caterpillar(slopes, level=95)
    with pytest.raises(InputTypeError):
        plots.caterpillar("not a fit")


# --- residual plots -----------------------------------------------------------------------------


def test_resid_fitted_plots_every_residual(slopes) -> None:
    (axis,) = plots.resid_fitted(slopes).axes
    points = _by_gid(axis, "residuals")
    np.testing.assert_array_equal(points.get_xdata(), slopes.fittedvalues.to_numpy())
    np.testing.assert_array_equal(points.get_ydata(), slopes.resid.to_numpy())


def test_qq_uses_r_plotting_positions(slopes) -> None:
    from scipy.stats import norm

    (axis,) = plots.qq(slopes).axes
    points = _by_gid(axis, "quantiles")
    n = slopes.nobs
    np.testing.assert_allclose(points.get_xdata(), norm.ppf((np.arange(1, n + 1) - 0.5) / n))
    np.testing.assert_array_equal(points.get_ydata(), np.sort(slopes.resid.to_numpy()))


def test_qq_of_a_group_has_intervals(slopes) -> None:
    from scipy.stats import norm

    figure = plots.qq(slopes, "school")
    assert len(figure.axes) == 2
    modes = slopes.random_effects["school"]["hours"].to_numpy()
    sds = slopes.random_effects_se["school"]["hours"].to_numpy()
    order = np.argsort(modes, kind="stable")
    axis = figure.axes[1]
    np.testing.assert_array_equal(_by_gid(axis, "quantiles").get_ydata(), modes[order])
    segments = np.array(_by_gid(axis, "intervals").get_segments())
    half_width = (segments[:, 1, 1] - segments[:, 0, 1]) / 2.0
    np.testing.assert_allclose(half_width, norm.ppf(0.975) * sds[order], rtol=1e-12)
    with pytest.raises(DataError, match="'resid'"):
        plots.qq(slopes, "district")


def test_plotting_positions_match_r_ppoints() -> None:
    # R: ppoints(5) and ppoints(12)
    np.testing.assert_allclose(
        plots._plotting_positions(5), [0.1190476, 0.3095238, 0.5, 0.6904762, 0.8809524], atol=1e-7
    )
    np.testing.assert_allclose(plots._plotting_positions(12), (np.arange(1, 13) - 0.5) / 12)


# --- HLMdiag's cutoffs --------------------------------------------------------------------------

# Known vectors, cutoffs from R: quantile(x, .75) + 3 * IQR(x) (type 7 quantiles).
KNOWN = np.array([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100])  # Q1 2.5, Q3 7.5, IQR 5
KNOWN_LOW = np.array([-50.0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100])  # Q1 1.75, Q3 7.25, IQR 5.5


def test_internal_cutoff_is_q3_plus_three_iqr() -> None:
    assert plots.internal_cutoff(KNOWN) == pytest.approx(22.5)
    assert plots.internal_cutoff(KNOWN_LOW) == pytest.approx(23.75)
    lower, upper = plots.internal_cutoff(KNOWN_LOW, name="covratio")
    assert (lower, upper) == pytest.approx((-14.75, 23.75))
    # rvc columns are named rvc.<component>; the name comes from the Series by default.
    assert plots.internal_cutoff(pd.Series(KNOWN_LOW, name="rvc.sigma2")) == pytest.approx(
        (-14.75, 23.75)
    )
    # Missing values are ignored, as for a diagnostic that could not be computed.
    assert plots.internal_cutoff(np.append(KNOWN, np.nan)) == pytest.approx(22.5)


def test_internal_cutoff_matches_the_quartile_definition(school_influence) -> None:
    for column in ["cooksd", "mdffits", "covtrace"]:
        values = school_influence[column]
        q1, q3 = values.quantile([0.25, 0.75])
        assert plots.internal_cutoff(values) == pytest.approx(q3 + 3 * (q3 - q1), rel=1e-14)


def test_n_influential_counts_beyond_the_cutoff() -> None:
    assert plots.n_influential(KNOWN) == 1
    assert plots.n_influential(KNOWN_LOW) == 1  # one-sided: -50 is not large
    assert plots.n_influential(KNOWN_LOW, name="covratio") == 2
    assert plots.n_influential(KNOWN, cutoff=8.0) == 2
    assert plots.n_influential(KNOWN, cutoff=9.0) == 1  # strict, as HLMdiag's value > cutoff
    assert plots.n_influential(KNOWN_LOW, cutoff=(0.0, 9.0)) == 2
    assert interlace.n_influential(KNOWN) == 1
    with pytest.raises(DataError, match="cutoff"):
        plots.n_influential(KNOWN, cutoff=None)
    with pytest.raises(DataError, match="internal"):
        plots.n_influential(KNOWN, cutoff="external")


def test_dotplot_diag_marks_and_labels_the_cases_beyond(school_influence) -> None:
    values = school_influence["cooksd"]
    cutoff = plots.internal_cutoff(values)
    beyond = values[values > cutoff]
    assert len(beyond) == plots.n_influential(values) > 0
    (axis,) = plots.dotplot_diag(values, cutoff="internal").axes
    assert axis.get_xlabel() == "cooksd"
    flagged = _by_gid(axis, "beyond")
    usual = _by_gid(axis, "usual")
    np.testing.assert_array_equal(np.sort(flagged.get_xdata()), np.sort(beyond.to_numpy()))
    assert len(usual.get_xdata()) == len(values) - len(beyond)
    # the largest value is on the top row
    rows = np.concatenate([usual.get_ydata(), flagged.get_ydata()])
    xs = np.concatenate([usual.get_xdata(), flagged.get_xdata()])
    assert xs[np.argmax(rows)] == values.max()
    assert _by_gid(axis, "cutoff").get_xdata()[0] == pytest.approx(cutoff)
    assert {text.get_text() for text in axis.texts} == {str(level) for level in beyond.index}


def test_dotplot_diag_two_sided_and_modified() -> None:
    values = pd.Series(KNOWN_LOW, index=[f"g{k}" for k in range(KNOWN_LOW.size)])
    (axis,) = plots.dotplot_diag(values, cutoff="internal", name="covratio", modify="dotplot").axes
    cutoffs = [line.get_xdata()[0] for line in axis.lines if line.get_gid() == "cutoff"]
    assert cutoffs == pytest.approx([-14.75, 23.75])
    usual = _by_gid(axis, "usual")
    assert set(usual.get_ydata()) == {0.0}  # the usual cases share one row
    flagged = _by_gid(axis, "beyond")
    assert list(flagged.get_xdata()) == [-50.0, 100.0]
    assert list(flagged.get_ydata()) == [1.0, 2.0]
    assert {text.get_text() for text in axis.texts} == {"g0", "g11"}


def test_dotplot_diag_of_an_array_indexes_from_one() -> None:
    (axis,) = plots.dotplot_diag(KNOWN, cutoff="internal", max_labels=5).axes
    assert [text.get_text() for text in axis.texts] == ["11"]


def test_dotplot_diag_arguments() -> None:
    with pytest.raises(DataError, match="needs a cutoff"):
        plots.dotplot_diag(KNOWN, modify="dotplot")
    with pytest.raises(DataError, match="modify"):
        plots.dotplot_diag(KNOWN, cutoff=1.0, modify="violin")
    with pytest.raises(InputTypeError, match="DataFrame"):
        plots.dotplot_diag(pd.DataFrame({"cooksd": KNOWN}))
