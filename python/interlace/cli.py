"""The ``interlace`` command: fit a model from a file, for batch jobs and pipelines.

    interlace fit "y ~ x + (1 | g) + (1 | h)" --data file.csv [--method ML] [--weights COLUMN]
        [--out DIR] [--json]
    interlace datasets [NAME [--out FILE.csv]]

``fit`` prints the lme4-style summary on stdout (or, with ``--json``, one JSON document with
every number of the fit); with ``--out DIR`` it also writes CSV tables and ``fit.json`` for the
next step of a pipeline. Progress and warnings go to stderr, so stdout stays clean for
redirection. Any problem with the input (a file that cannot be read, a missing column, a bad
formula) is one line ``interlace: error: <reason>`` on stderr and exit status 2, as argparse
reports a usage error.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import interlace
from interlace.exceptions import InterlaceError
from interlace.formula import parse_formula

__all__ = ["main", "fit_record"]

PROG = "interlace"
#: Exit status for bad input, the same as argparse's for a usage error.
EXIT_INPUT_ERROR = 2
_PARQUET_SUFFIXES = (".parquet", ".pq")


class _InputError(Exception):
    """Bad input found by the command itself (not by interlace.fit): report and exit 2."""


# --- reading the data -----------------------------------------------------------------------------


def _grouping_columns(formula: str) -> list[str]:
    """Columns used as grouping factors in the formula's random terms, in order of appearance.

    A CSV or Parquet file cannot say whether an integer column is a factor; a grouping factor
    always is one, so these columns are read as strings (level ``7`` is the label ``"7"``).
    """
    parsed = parse_formula(formula)
    return list(dict.fromkeys(f for term in parsed.random_terms for f in term.factors))


def _as_labels(column: pd.Series) -> pd.Series:
    """A column of labels as strings, missing values kept missing (as read_csv(dtype=str))."""
    if pd.api.types.is_float_dtype(column):
        whole = column.dropna()
        if len(whole) and bool((whole == whole.round()).all()):
            column = column.astype("Int64")  # 3.0 -> "3", as the CSV would have said
    labels = column.astype(object).where(column.notna(), None)
    return labels.map(lambda value: value if value is None else str(value)).astype(object)


def read_data(path: str | Path, string_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV (``.csv``, ``.tsv``, ``.txt``) or Parquet (``.parquet``, ``.pq``) file.

    Parameters
    ----------
    path : str or pathlib.Path
        The file; its suffix decides the format (anything but Parquet is read as CSV, and
        ``.tsv`` as tab-separated).
    string_columns : sequence of str
        Columns to read as strings (grouping factors). Names the file lacks are ignored here;
        :func:`interlace.fit` reports them with the model's context.

    Returns
    -------
    pandas.DataFrame
    """
    path = Path(path)
    if not path.exists():
        raise _InputError(f"data file not found: {path}")
    if path.is_dir():
        raise _InputError(f"data file is a directory: {path}")
    wanted = list(string_columns)
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        try:
            frame = pd.read_parquet(path)
        except ImportError as error:
            raise _InputError(
                f"reading Parquet needs pyarrow (pip install 'interlace[parquet]'): {error}"
            ) from error
        for name in wanted:
            if name in frame.columns:
                frame[name] = _as_labels(frame[name])
        return frame
    separator = "\t" if path.suffix.lower() == ".tsv" else ","
    header = pd.read_csv(path, sep=separator, nrows=0)
    dtypes = {name: str for name in wanted if name in header.columns}
    return pd.read_csv(path, sep=separator, dtype=dtypes)


# --- machine-readable output ----------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A float for JSON: NaN and ±inf (not valid JSON) become null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def fit_record(res: Any) -> dict[str, Any]:
    """Everything machine readable about a fit, as JSON-ready Python values.

    This is ``fit.json`` and what ``interlace fit --json`` prints: the fit information
    (formula, method, nobs, llf, aic, bic, converged, is_singular, theta, sigma, ...), the
    fixed effects and the rows of ``varcorr``. Non-finite numbers are ``None`` (JSON null).

    Parameters
    ----------
    res : LmmResult

    Returns
    -------
    dict
    """
    fixed = [
        {
            "name": str(name),
            "estimate": _number(res.fe_params[name]),
            "std_error": _number(res.bse[name]),
            "t_value": _number(res.tvalues[name]),
        }
        for name in res.fe_params.index
    ]
    varcorr = [
        {
            "grp": _text(row.grp),
            "var1": _text(row.var1),
            "var2": _text(row.var2),
            "vcov": _number(row.vcov),
            "sdcor": _number(row.sdcor),
        }
        for row in res.varcorr.itertuples(index=False)
    ]
    return {
        "formula": res.formula,
        "method": res.method,
        "nobs": int(res.nobs),
        "llf": _number(res.llf),
        "aic": _number(res.aic),
        "bic": _number(res.bic),
        "converged": bool(res.converged),
        "is_singular": bool(res.is_singular),
        "theta": [_number(t) for t in res.theta],
        "theta_names": list(res.theta_names),
        "sigma": _number(res.sigma),
        "ngroups": {str(group): int(n) for group, n in res.ngroups.items()},
        "interlace_version": interlace.__version__,
        "fixed_effects": fixed,
        "varcorr": varcorr,
    }


def _file_safe(name: str) -> str:
    """A grouping factor's name as part of a file name: ``b:a`` -> ``b_a``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _random_effects_frame(group: str, modes: pd.Series | pd.DataFrame) -> pd.DataFrame:
    """Conditional modes as a table: a ``level`` column, then one column per term column."""
    frame = modes.to_frame("Intercept") if isinstance(modes, pd.Series) else modes.copy()
    frame.index = frame.index.rename("level")
    return frame.reset_index()


def write_outputs(res: Any, directory: Path) -> list[Path]:
    """Write the tables of a fit into ``directory`` (created if needed); return the paths.

    ``fixed_effects.csv`` (name, estimate, std_error, t_value), ``variance_components.csv``
    (the ``varcorr`` table), ``random_effects_<group>.csv`` per grouping factor (level, then
    the modes of each term column) and ``fit.json`` (:func:`fit_record`). Floats are written
    with full precision, so reading them back gives the fitted numbers exactly.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []

    fixed = pd.DataFrame(
        {
            "name": [str(n) for n in res.fe_params.index],
            "estimate": res.fe_params.to_numpy(),
            "std_error": res.bse.to_numpy(),
            "t_value": res.tvalues.to_numpy(),
        }
    )
    written.append(directory / "fixed_effects.csv")
    fixed.to_csv(written[-1], index=False)

    written.append(directory / "variance_components.csv")
    res.varcorr.to_csv(written[-1], index=False)

    for group, modes in res.random_effects.items():
        written.append(directory / f"random_effects_{_file_safe(str(group))}.csv")
        _random_effects_frame(str(group), modes).to_csv(written[-1], index=False)

    written.append(directory / "fit.json")
    written[-1].write_text(json.dumps(fit_record(res), indent=2) + "\n", encoding="utf-8")
    return written


# --- influence (an extension point) ---------------------------------------------------------------


def _influence_level(text: str) -> int | str:
    """``--influence 1`` is observation level; anything else names a grouping factor."""
    return 1 if text.strip() == "1" else text


def influence_table(res: Any, level_text: str) -> pd.DataFrame:
    """HLMdiag-style influence diagnostics at one level, indexed by row or level.

    Uses :func:`interlace.hlm_influence` when this version has it; without it, an input error
    (exit status 2) says so.
    """
    hlm_influence = getattr(interlace, "hlm_influence", None)
    if hlm_influence is None:
        raise _InputError("influence diagnostics are not available in this version")
    level = _influence_level(level_text)
    options: dict[str, Any] = {"level": level}
    if "progress" in inspect.signature(hlm_influence).parameters:
        options["progress"] = False  # a batch job has no terminal to draw a bar on
    frame = hlm_influence(res, **options).copy()
    frame.index = frame.index.rename(frame.index.name or ("row" if level == 1 else level_text))
    return frame


def write_influence(frame: pd.DataFrame, level_text: str, directory: Path) -> Path:
    """Write ``influence_<level>.csv`` (from :func:`influence_table`) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"influence_{_file_safe(level_text)}.csv"
    frame.to_csv(path)
    return path


# --- commands -------------------------------------------------------------------------------------


def _info(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _silent(message: str) -> None:
    del message


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _command_fit(args: argparse.Namespace) -> int:
    if args.influence is not None and args.out is None:
        raise _InputError("--influence needs --out DIR to write its table into")
    string_columns = _grouping_columns(args.formula)
    data = read_data(args.data, string_columns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = interlace.fit(args.formula, data=data, method=args.method, weights=args.weights)
        influence = None if args.influence is None else influence_table(res, args.influence)
    # Reported only once the fit succeeded, so a failure is exactly one line on stderr.
    info = _info if not args.quiet else _silent
    info(f"read {len(data)} rows x {data.shape[1]} columns from {args.data}")
    for warning in caught:
        _info(f"warning: {_one_line(str(warning.message))}")
    info(f"fitted by {res.method}: {res.nobs} observations used, converged: {res.converged}")

    if args.out is not None:
        for path in write_outputs(res, Path(args.out)):
            info(f"wrote {path}")
        if influence is not None:
            info(f"wrote {write_influence(influence, args.influence, Path(args.out))}")

    if args.json:
        print(json.dumps(fit_record(res), indent=2))
    else:
        with warnings.catch_warnings():
            # The summary repeats the fit's warnings in its text; they were reported above.
            warnings.simplefilter("ignore")
            print(str(res.summary()))
    return 0


def _command_datasets(args: argparse.Namespace) -> int:
    from interlace import datasets

    if args.name is None:
        if args.out is not None:
            raise _InputError("--out needs a dataset NAME")
        bundled = getattr(datasets, "BUNDLED", {})
        names = datasets.list_datasets()
        width = max(len(name) for name in names)
        for name in names:
            description = getattr(bundled.get(name), "description", "")
            print(f"{name.ljust(width)}  {description}".rstrip())
        return 0
    frame = datasets.load(args.name)
    if args.out is None:
        frame.to_csv(sys.stdout, index=False)
        return 0
    out = Path(args.out)
    if out.suffix.lower() in _PARQUET_SUFFIXES:
        try:
            frame.to_parquet(out, index=False)
        except ImportError as error:
            raise _InputError(f"writing Parquet needs pyarrow: {error}") from error
    else:
        frame.to_csv(out, index=False)
    _info(f"wrote {args.name} ({len(frame)} rows) to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``interlace`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Linear mixed-effects models with lme4's semantics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {interlace.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fit = commands.add_parser(
        "fit",
        help="fit a model to a CSV or Parquet file",
        description=(
            "Fit a linear mixed model and print lme4's summary (or JSON with --json). "
            "Grouping factors of the random terms are read as strings."
        ),
    )
    fit.add_argument("formula", help='lme4 formula, e.g. "rt ~ condition + (1 | subject)"')
    fit.add_argument("--data", required=True, metavar="FILE", help="a .csv, .tsv or .parquet file")
    fit.add_argument(
        "--method",
        type=str.upper,
        choices=["REML", "ML"],
        default="REML",
        help="REML (default) or ML",
    )
    fit.add_argument(
        "--weights",
        metavar="COLUMN",
        help="prior weights (lme4's weights=): a numeric column, finite and positive",
    )
    fit.add_argument(
        "--out",
        metavar="DIR",
        help="write fixed_effects.csv, variance_components.csv, random_effects_<group>.csv "
        "and fit.json into DIR",
    )
    fit.add_argument(
        "--json", action="store_true", help="print the fit as JSON instead of the summary"
    )
    fit.add_argument(
        "--influence",
        metavar="LEVEL",
        help="also write influence_<LEVEL>.csv into --out: 1 for observations, or a grouping "
        "factor (needs interlace.hlm_influence)",
    )
    fit.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines on stderr (warnings stay)"
    )
    fit.set_defaults(handler=_command_fit)

    data = commands.add_parser(
        "datasets",
        help="list the bundled datasets, or write one",
        description="Without NAME, list the bundled datasets; with NAME, write it as CSV.",
    )
    data.add_argument("name", nargs="?", metavar="NAME", help="a bundled dataset")
    data.add_argument(
        "--out", metavar="FILE", help="write to FILE (.csv or .parquet) instead of stdout"
    )
    data.set_defaults(handler=_command_datasets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``interlace`` command; return its exit status (0, or 2 for bad input).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (``sys.argv[1:]`` by default).

    Returns
    -------
    int
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as stop:  # --help, --version, or a usage error (status 2)
        return stop.code if isinstance(stop.code, int) else EXIT_INPUT_ERROR
    try:
        return int(args.handler(args))
    except (_InputError, InterlaceError, OSError, ValueError) as error:
        # InterlaceError is a ValueError; pandas' and pyarrow's parse errors are ValueErrors too.
        print(f"{PROG}: error: {_one_line(str(error)) or type(error).__name__}", file=sys.stderr)
        return EXIT_INPUT_ERROR
