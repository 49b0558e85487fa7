"""BLAS on one thread inside interlace's calls, and the caller's setting back afterwards
(``interlace._threads``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import interlace
from interlace import api

FORMULA = "y ~ x + (1 | g)"


def _blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(12), 10)
    x = rng.standard_normal(g.size)
    y = 1.0 + 0.5 * x + rng.standard_normal(12)[g] + rng.standard_normal(g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g})


@pytest.fixture
def two_blas_threads():
    if not _blas_threads():
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    with threadpool_limits(limits=2, user_api="blas"):
        if set(_blas_threads()) != {2}:
            pytest.skip("BLAS cannot run two threads here")
        yield


def test_a_fit_runs_blas_on_one_thread_and_restores_the_callers_setting(
    two_blas_threads, monkeypatch
) -> None:
    seen: list[list[int]] = []
    build = api.build_design

    def spying_build(*args, **kwargs):
        seen.append(_blas_threads())
        return build(*args, **kwargs)

    monkeypatch.setattr(api, "build_design", spying_build)
    res = interlace.fit(FORMULA, _frame())
    assert seen == [[1] * len(seen[0])]
    assert set(_blas_threads()) == {2}
    # Nested entry points (the influence diagnostics refit through the core) restore it too.
    interlace.cooks_distance(res, level="g")
    assert set(_blas_threads()) == {2}


def test_conditional_covariances_formed_later_run_blas_on_one_thread(
    two_blas_threads, monkeypatch
) -> None:
    # interlace.fit leaves the modes' conditional covariances to their first read, which
    # builds the core model again.
    res = interlace.fit(FORMULA, _frame())
    seen: list[list[int]] = []
    core_model = api._core_model

    def spying_core_model(*args, **kwargs):
        seen.append(_blas_threads())
        return core_model(*args, **kwargs)

    monkeypatch.setattr(api, "_core_model", spying_core_model)
    standard_errors = res.random_effects_se["g"]
    assert seen == [[1] * len(seen[0])]
    assert set(_blas_threads()) == {2}
    assert np.all(np.isfinite(standard_errors.to_numpy())) and len(standard_errors) == 12


def test_concurrent_fits_restore_the_callers_setting(two_blas_threads) -> None:
    frame = _frame()
    with ThreadPoolExecutor(max_workers=4) as pool:
        fits = list(pool.map(lambda _: interlace.fit(FORMULA, frame), range(16)))
    assert len({float(res.llf) for res in fits}) == 1
    assert set(_blas_threads()) == {2}


def test_an_error_inside_a_fit_restores_the_callers_setting(two_blas_threads) -> None:
    with pytest.raises(interlace.DataError):
        interlace.fit("y ~ x + (1 | missing_column)", _frame())
    assert set(_blas_threads()) == {2}


def test_a_fits_warnings_still_name_the_callers_line() -> None:
    # The BLAS limit is a with-block inside fit, not a wrapper: a wrapper's frame would be the
    # one a warning with stacklevel=2 names.
    frame = _frame().assign(x2=lambda f: 2.0 * f["x"])
    with pytest.warns(interlace.RankDeficiencyWarning) as records:
        interlace.fit("y ~ x + x2 + (1 | g)", frame)
    assert [record.filename for record in records] == [__file__]
