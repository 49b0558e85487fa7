"""The ``interlace`` command: its files and JSON carry the in-Python fit's numbers exactly, and
bad input is one line on stderr with exit status 2.

Most tests run ``interlace.cli.main`` in-process; one runs ``python -m interlace`` for real.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import interlace
from interlace.cli import main

FORMULA = "rt ~ condition + (1 | subject) + (1 | item)"
TOLERANCE = 1e-10


@functools.cache
def reading_times() -> pd.DataFrame:
    return interlace.datasets.load("reading_times")


@functools.cache
def python_fit(method: str = "REML"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return interlace.fit(FORMULA, data=reading_times(), method=method)


def write_data(frame: pd.DataFrame, directory, suffix: str):
    path = directory / f"data.{suffix}"
    if suffix == "parquet":
        pytest.importorskip("pyarrow")
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def assert_close(actual, expected) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=0, atol=TOLERANCE
    )


def assert_one_error_line(capsys, code: int, *fragments: str) -> str:
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("interlace: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def assert_record_matches(record: dict, res) -> None:
    assert record["formula"] == res.formula
    assert record["method"] == res.method
    assert record["nobs"] == res.nobs
    assert record["converged"] == res.converged
    assert record["ngroups"] == res.ngroups
    assert_close(
        [record[k] for k in ("llf", "aic", "bic", "sigma")], [res.llf, res.aic, res.bic, res.sigma]
    )
    assert_close(record["theta"], res.theta)
    fixed = pd.DataFrame(record["fixed_effects"]).set_index("name")
    assert list(fixed.index) == list(res.fe_params.index)
    assert_close(fixed["estimate"], res.fe_params)
    assert_close(fixed["std_error"], res.bse)
    assert_close(fixed["t_value"], res.tvalues)
    rows = record["varcorr"]
    for column in ("grp", "var1", "var2"):  # JSON null where lme4 has NA, as varcorr's None
        assert [row[column] for row in rows] == list(res.varcorr[column])
    assert_close([row["vcov"] for row in rows], res.varcorr["vcov"])
    assert_close([row["sdcor"] for row in rows], res.varcorr["sdcor"])


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_fit_writes_tables_with_the_python_fits_numbers(tmp_path, capsys, suffix):
    data = write_data(reading_times(), tmp_path, suffix)
    out_dir = tmp_path / "out"
    code = main(["fit", FORMULA, "--data", str(data), "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = python_fit()
    assert out == str(res.summary()) + "\n"
    assert "wrote" in err  # progress goes to stderr, not into the summary

    fixed = pd.read_csv(out_dir / "fixed_effects.csv")
    assert list(fixed.columns) == ["name", "estimate", "std_error", "t_value"]
    assert list(fixed["name"]) == list(res.fe_params.index)
    assert_close(fixed["estimate"], res.fe_params)
    assert_close(fixed["std_error"], res.bse)
    assert_close(fixed["t_value"], res.tvalues)

    varcorr = pd.read_csv(out_dir / "variance_components.csv")
    assert list(varcorr.columns) == list(res.varcorr.columns)
    assert list(varcorr["grp"]) == list(res.varcorr["grp"])
    assert_close(varcorr["vcov"], res.varcorr["vcov"])
    assert_close(varcorr["sdcor"], res.varcorr["sdcor"])

    for group, modes in res.random_effects.items():
        table = pd.read_csv(out_dir / f"random_effects_{group}.csv", dtype={"level": str})
        assert list(table["level"]) == list(modes.index)
        assert_close(table["Intercept"], modes)

    assert_record_matches(json.loads((out_dir / "fit.json").read_text()), res)


def test_json_prints_every_number_instead_of_the_summary(tmp_path, capsys):
    data = write_data(reading_times(), tmp_path, "csv")
    code = main(["fit", FORMULA, "--data", str(data), "--json", "--method", "ml", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    assert_record_matches(json.loads(out), python_fit("ML"))


def test_python_dash_m_interlace_runs_the_same_command(tmp_path):
    data = write_data(reading_times(), tmp_path, "csv")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "interlace", "fit", FORMULA, "--data", str(data), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert_record_matches(json.loads(done.stdout), python_fit())

    missing = subprocess.run(
        [sys.executable, "-m", "interlace", "fit", FORMULA, "--data", str(tmp_path / "no.csv")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert missing.returncode == 2
    expected = f"interlace: error: data file not found: {tmp_path / 'no.csv'}"
    assert missing.stderr.splitlines() == [expected]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_integer_grouping_columns_are_read_as_labels(tmp_path, capsys, suffix):
    frame = reading_times().copy()
    frame["subject"] = frame["subject"].str[1:].astype(int)  # "s07" -> 7: looks numeric
    data = write_data(frame, tmp_path, suffix)
    code = main(["fit", FORMULA, "--data", str(data), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    expected = frame.assign(subject=frame["subject"].astype(str))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = interlace.fit(FORMULA, data=expected)
    assert_record_matches(json.loads(out), res)


def test_weights_column_gives_the_weighted_fit(tmp_path, capsys):
    frame = reading_times().assign(w=lambda d: 1.0 + (np.arange(len(d)) % 3) / 2)
    data = write_data(frame, tmp_path, "csv")
    code = main(["fit", FORMULA, "--data", str(data), "--json", "--weights", "w"])
    out, err = capsys.readouterr()
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = interlace.fit(FORMULA, data=frame, weights="w")
    assert res.llf != python_fit().llf
    assert_record_matches(json.loads(out), res)
    frame.loc[4, "w"] = -2.0
    data = write_data(frame, tmp_path, "csv")
    code = main(["fit", FORMULA, "--data", str(data), "--weights", "w"])
    assert_one_error_line(capsys, code, "weights column 'w' has 1 negative value")


def test_a_bad_formula_is_one_line_and_status_2(tmp_path, capsys):
    data = write_data(reading_times(), tmp_path, "csv")
    code = main(["fit", "rt ~ condition + (1 | subject", "--data", str(data)])
    assert_one_error_line(capsys, code, "unclosed")


def test_a_missing_column_is_named(tmp_path, capsys):
    data = write_data(reading_times(), tmp_path, "csv")
    code = main(["fit", "rt ~ condition + (1 | speaker)", "--data", str(data)])
    assert_one_error_line(capsys, code, "'speaker'")
    code = main(["fit", "latency ~ condition + (1 | subject)", "--data", str(data)])
    assert_one_error_line(capsys, code, "'latency'")


def test_a_missing_or_unreadable_file_is_one_line(tmp_path, capsys):
    code = main(["fit", FORMULA, "--data", str(tmp_path / "absent.csv")])
    assert_one_error_line(capsys, code, "not found", "absent.csv")
    code = main(["fit", FORMULA, "--data", str(tmp_path)])
    assert_one_error_line(capsys, code, "directory")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_one_error_line(capsys, main(["fit", FORMULA, "--data", str(empty)]))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    pytest.importorskip("pyarrow")
    assert_one_error_line(capsys, main(["fit", FORMULA, "--data", str(broken)]))


def test_usage_errors_exit_2(capsys):
    assert main(["fit", FORMULA]) == 2  # --data is required
    assert main(["fit", FORMULA, "--data", "x.csv", "--method", "OLS"]) == 2
    assert main([]) == 2
    capsys.readouterr()
    assert main(["--help"]) == 0
    assert "fit" in capsys.readouterr().out


def test_influence_writes_a_table_per_level(tmp_path, capsys):
    if not hasattr(interlace, "hlm_influence"):
        pytest.skip("this version has no interlace.hlm_influence")
    data = write_data(reading_times(), tmp_path, "csv")
    out_dir = tmp_path / "out"
    args = ["fit", FORMULA, "--data", str(data), "--out", str(out_dir), "--json"]
    code = main([*args, "--influence", "item"])
    _, err = capsys.readouterr()
    assert code == 0, err
    table = pd.read_csv(out_dir / "influence_item.csv", index_col=0, dtype={"item": str})
    expected = interlace.hlm_influence(python_fit(), level="item")
    assert list(table.index) == [str(level) for level in expected.index]
    assert list(table.columns) == list(expected.columns)
    assert_close(table.to_numpy(), expected.to_numpy())

    code = main([*args, "--influence", "speaker"])
    assert_one_error_line(capsys, code, "speaker")


def test_influence_without_hlm_influence_says_it_is_not_available(tmp_path, capsys, monkeypatch):
    monkeypatch.delattr(interlace, "hlm_influence", raising=False)
    data = write_data(reading_times(), tmp_path, "csv")
    code = main(["fit", FORMULA, "--data", str(data), "--out", str(tmp_path), "--influence", "1"])
    assert_one_error_line(capsys, code, "influence diagnostics are not available in this version")


def test_datasets_lists_and_writes_the_bundled_data(tmp_path, capsys):
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == interlace.datasets.list_datasets()
    assert all(len(line.split()) > 1 for line in lines)  # each has a description

    target = tmp_path / "rt.csv"
    assert main(["datasets", "reading_times", "--out", str(target)]) == 0
    capsys.readouterr()
    written = pd.read_csv(target, dtype={"subject": str, "item": str, "condition": str})
    pd.testing.assert_frame_equal(written, reading_times())

    assert_one_error_line(capsys, main(["datasets", "no_such_data"]), "no_such_data")
