"""Turn a parsed mixed-model formula and a data frame into validated arrays for the core.

This is the model-frame stage of lme4's ``lFormula``: select the columns the model uses, drop
incomplete rows (``na.omit``), build the fixed-effects matrix X as formulaic would, drop aliased
columns of X, and build one block per random-effects term — its model matrix Z, the integer
codes of its grouping factor and the level labels. Every array leaves here float64 (Z and X in
column-major order) or int32, finite and contiguous, so the compiled core can trust its inputs.
Nothing here imports the compiled core.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import functools
import itertools
import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from formulaic import Formula, ModelSpec, model_matrix
from formulaic.parser.types import Factor, Term
from formulaic.transforms import TRANSFORMS

from interlace.exceptions import DataError, FormulaError, InputTypeError
from interlace.formula import ParsedFormula, RandomTermSpec, _formulaic_message, parse_formula

__all__ = ["Design", "ReTerm", "build_design", "build_design_from"]

# R's lm and lme4 call a column aliased when, after projecting out the columns before it, less
# than this fraction of its norm is left (the tolerance of R's dqrdc2 QR, used by lm and by
# lme4's rank check).
ALIASING_TOLERANCE = 1e-7

_BACKTICKED = re.compile(r"`([^`]*)`")


@dataclass(frozen=True, eq=False)
class ReTerm:
    """One random-effects term, ready for the core.

    Attributes
    ----------
    group : str
        lme4's name of the grouping factor, e.g. ``"Subject"`` or ``"cask:batch"``.
    factors : tuple of str
        The grouping columns; their order defines the level labels of an interaction.
    columns : tuple of str
        Names of the columns of ``z`` as formulaic names them (``"Intercept"``, ``"Days"``,
        ``"condition[T.B]"``).
    levels : pandas.Index
        The levels of the grouping factor, in code order. One factor keeps its own values
        (integers stay integers); an interaction has string labels such as ``"a:A"``.
    codes : numpy.ndarray
        int32, shape (n,): the level of each observation, in ``0 .. n_levels - 1``.
    z : numpy.ndarray
        float64, shape (n, q), column-major: the term's model matrix.
    spec : formulaic.ModelSpec
        Rebuilds the term's model matrix on new data: ``spec.get_model_matrix(newdata)``
        gives a frame whose columns include ``columns`` (a term split from ``||`` selects its
        one column by name).
    label : str
        The term as lme4 would write it, e.g. ``"(1 + condition | subject)"``.
    """

    group: str
    factors: tuple[str, ...]
    columns: tuple[str, ...]
    levels: pd.Index
    codes: np.ndarray
    z: np.ndarray
    _spec: ModelSpec | _LazySpec = field(repr=False)
    label: str

    @property
    def spec(self) -> ModelSpec:
        """formulaic's spec of the term's model matrix (made on first use when the matrix was
        built without formulaic)."""
        return _resolved(self._spec)

    @property
    def n_levels(self) -> int:
        """Number of levels of the grouping factor."""
        return len(self.levels)

    @property
    def q(self) -> int:
        """Number of random effects per level (columns of ``z``)."""
        return self.z.shape[1]


@dataclass(frozen=True, eq=False)
class Design:
    """The arrays and names of a linear mixed model, validated for the core.

    Attributes
    ----------
    response : str
        Name of the response.
    y : numpy.ndarray
        float64, shape (n,): the response.
    x : numpy.ndarray
        float64, shape (n, p), column-major: the fixed-effects matrix, aliased columns removed.
    fixed_names : tuple of str
        Names of the columns of ``x`` as formulaic names them (``"Intercept"``,
        ``"condition[T.B]"``, ``"recipe[T.B]:temp"``).
    dropped_fixed : tuple of str
        Aliased fixed-effects columns that were removed, left to right; the caller warns.
    terms : tuple of ReTerm
        The random-effects terms, sorted by number of levels, descending (stable, as lme4).
    row_index : pandas.Index
        Index labels of the rows of ``data`` used in the fit.
    n_dropped : int
        Number of rows dropped because a used column was missing.
    nobs : int
        Number of observations used.
    frame : pandas.DataFrame
        The used rows and the used columns of ``data``, indexed by ``row_index``.
    formula : str
        The model as one lme4 formula.
    fixed_spec : formulaic.ModelSpec
        The fixed part's spec: ``fixed_spec.get_model_matrix(newdata)`` rebuilds X on new data
        with the same coding (before ``dropped_fixed`` are removed).
    parsed : ParsedFormula
        The parsed formula the design was built from.
    weights : numpy.ndarray or None
        float64, shape (n,): prior weights (lme4's ``weights``), finite and positive; None for
        unit weights.
    weights_column : str or None
        The column of ``frame`` holding the weights: the user's column, or ``"(weights)"`` when
        they were given as an array (lme4's model-frame name).
    """

    response: str
    y: np.ndarray
    x: np.ndarray
    fixed_names: tuple[str, ...]
    dropped_fixed: tuple[str, ...]
    terms: tuple[ReTerm, ...]
    row_index: pd.Index
    n_dropped: int
    nobs: int
    frame: pd.DataFrame
    formula: str
    _fixed_spec: ModelSpec | _LazySpec = field(repr=False)
    parsed: ParsedFormula
    weights: np.ndarray | None = None
    weights_column: str | None = None

    @property
    def fixed_spec(self) -> ModelSpec:
        """formulaic's spec of the fixed part (made on first use when X was built without
        formulaic)."""
        return _resolved(self._fixed_spec)


class _LazySpec:
    """A formulaic ModelSpec made on first use from a formula and the model frame.

    Formulas of numeric and categorical columns are built without formulaic (see
    :func:`_direct_terms`); the spec
    is needed only to rebuild the matrix on new data (``predict``), so it is made then, from
    the same frame, and is the spec formulaic would have returned with the matrix.
    """

    __slots__ = ("_formula", "_frame", "_part", "_spec", "_lock")

    def __init__(self, formula: str, frame: pd.DataFrame, part: str | None) -> None:
        self._formula = formula
        self._frame: pd.DataFrame | None = frame
        self._part = part  # "rhs" for a formula with a response, None for a one-sided one
        self._spec: ModelSpec | None = None
        self._lock = threading.Lock()

    def resolve(self) -> ModelSpec:
        with self._lock:
            if self._spec is None:
                assert self._frame is not None
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    matrices = model_matrix(
                        _parsed_formula(self._formula), self._frame, na_action="ignore", context={}
                    )
                self._spec = (matrices.rhs if self._part == "rhs" else matrices).model_spec
                self._frame = None
            return self._spec


def _resolved(spec: ModelSpec | _LazySpec) -> ModelSpec:
    return spec.resolve() if isinstance(spec, _LazySpec) else spec


# The model-frame column that holds weights given as an array, as lme4 names it.
WEIGHTS_COLUMN = "(weights)"


def build_design(parsed: ParsedFormula, data: object, weights: object = None) -> Design:
    """Build the validated arrays of a mixed model from a parsed formula and data.

    Parameters
    ----------
    parsed : ParsedFormula
        The output of :func:`interlace.formula.parse_formula`.
    data : pandas.DataFrame, polars.DataFrame or pyarrow.Table
        The data; anything with a ``to_pandas()`` method is converted first.
    weights : str or array-like, optional
        Prior weights (lme4's ``weights``): the name of a column of ``data``, or one value per
        row of ``data``. Observation i then has residual variance σ²/wᵢ. A missing weight
        drops the row, as any missing value does.

    Returns
    -------
    Design
        Response, fixed-effects matrix, random-effects terms and their names.

    Raises
    ------
    InputTypeError
        ``data`` is not a data frame, or the response is not numeric.
    DataError
        A missing column, no complete rows, infinite values, weights that are not positive and
        finite, or a grouping factor that cannot support its random effect.
    FormulaError
        formulaic cannot evaluate the fixed part or a term's left-hand side.

    Notes
    -----
    Rows with a missing value (None, NaN, pandas.NA, NaT) in any used column are dropped before
    any matrix is built, as lme4's default ``na.action = na.omit``; unused categories are then
    dropped, as R's ``drop.unused.levels``.

    Examples
    --------
    >>> import pandas as pd
    >>> from interlace.formula import parse_formula
    >>> data = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.5], "g": ["a", "a", "b", "b"]})
    >>> design = build_design(parse_formula("y ~ 1 + (1 | g)"), data)
    >>> design.terms[0].levels.tolist(), design.terms[0].codes.tolist()
    (['a', 'b'], [0, 0, 1, 1])
    """
    if not isinstance(parsed, ParsedFormula):
        raise InputTypeError(
            f"parsed must be a ParsedFormula (see parse_formula), got {type(parsed).__name__}"
        )
    data = as_pandas(data)
    data, weights_column = _attach_weights(data, weights)
    used_columns = _used_columns(parsed, data, weights_column)
    frame, n_dropped, columns = _complete_rows(data, used_columns)
    _check_response_type(parsed.response, columns)
    weight_values = None if weights_column is None else _checked_weights(frame, weights_column)
    _check_no_infinite_values(columns)
    nobs = len(frame)
    # formulaic aligns on the index; a fresh RangeIndex avoids trouble with duplicate labels.
    index = frame.index
    fresh = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
    model_frame = frame if fresh else frame.reset_index(drop=True)
    # The cached columns keep frame's index: only their values and dtypes are read.
    columns.frame = model_frame

    factors: FactorCache = {}
    y, x_full, full_names, fixed_spec, cross = _fixed_part(parsed, columns, factors)
    aliased, residual = _aliased_columns_and_residual(x_full, y, cross)
    kept = sorted(set(range(x_full.shape[1])) - set(aliased))
    # x_full is a fresh float64 Fortran array unless it is a view (one column of a frame).
    if aliased or not (x_full.flags.owndata and x_full.flags.f_contiguous):
        x = np.array(x_full[:, kept], dtype=np.float64, order="F")
    else:
        x = x_full
    _check_response_not_fitted_exactly(parsed.response, y, x, residual)

    groupings: dict[tuple[str, ...], tuple[pd.Index, np.ndarray]] = {}
    terms: list[ReTerm] = []
    for spec in parsed.random_terms:
        if spec.factors not in groupings:
            groupings[spec.factors] = _grouping_factor(columns, spec, factors)
        levels, codes = groupings[spec.factors]
        terms.extend(_random_terms(spec, columns, levels, codes, factors))
    for term in terms:
        _check_identifiable(term, nobs)
    # lme4 orders terms by number of levels, largest first; Python's sort is stable.
    terms.sort(key=lambda term: -term.n_levels)

    return Design(
        response=parsed.response,
        y=_read_only(y),
        x=_read_only(x),
        fixed_names=tuple(full_names[j] for j in kept),
        dropped_fixed=tuple(full_names[j] for j in aliased),
        terms=tuple(terms),
        row_index=frame.index,
        n_dropped=n_dropped,
        nobs=nobs,
        frame=frame,
        formula=parsed.to_lme4(),
        _fixed_spec=fixed_spec,
        parsed=parsed,
        weights=None if weight_values is None else _read_only(weight_values),
        weights_column=weights_column,
    )


def build_design_from(
    formula: str,
    data: object,
    groups: str | Sequence[str] | None = None,
    random: str | Sequence[str] | None = None,
) -> Design:
    """Parse a formula and build its design in one call.

    Parameters
    ----------
    formula : str
        As for :func:`interlace.formula.parse_formula`.
    data : pandas.DataFrame, polars.DataFrame or pyarrow.Table
        The data.
    groups, random : optional
        As for :func:`interlace.formula.parse_formula`.

    Returns
    -------
    Design
        See :func:`build_design`.

    Examples
    --------
    >>> import pandas as pd
    >>> data = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.5], "g": [1, 1, 2, 2]})
    >>> build_design_from("y ~ 1", data, groups="g").formula
    'y ~ 1 + (1 | g)'
    """
    return build_design(parse_formula(formula, groups=groups, random=random), data)


# ---------------------------------------------------------------------------------------------
# Columns and rows


def as_pandas(data: object, argument: str = "data") -> pd.DataFrame:
    """``data`` as a pandas DataFrame: pandas as is, polars (or anything with ``to_pandas``)
    converted at the door; anything else is an InputTypeError naming ``argument``."""
    if isinstance(data, pd.DataFrame):
        return data
    to_pandas = getattr(data, "to_pandas", None)
    if callable(to_pandas):
        converted = to_pandas()
        if isinstance(converted, pd.DataFrame):
            return converted
    kind = f"{type(data).__module__}.{type(data).__qualname__}"
    raise InputTypeError(
        f"{argument} must be a pandas or polars DataFrame or a pyarrow Table, got {kind}"
    )


def _attach_weights(data: pd.DataFrame, weights: object) -> tuple[pd.DataFrame, str | None]:
    """``data`` with the weights as a column, and that column's name (None: no weights)."""
    if weights is None:
        return data, None
    if isinstance(weights, str):
        if weights not in {str(column) for column in data.columns}:
            available = (str(column) for column in data.columns)
            raise DataError(f"weights: {_missing_column_message(weights, available)}")
        return data, weights
    try:
        values = np.asarray(weights)
    except Exception as error:  # array-likes fail in many ways
        raise InputTypeError(f"weights must be a column name or an array, got {error}") from error
    if values.ndim != 1 or values.shape[0] != len(data):
        raise DataError(
            f"weights has shape {values.shape}; give one weight per row of data ({len(data)} "
            "rows) or the name of a column"
        )
    if values.dtype == object:
        values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy()
    if WEIGHTS_COLUMN in {str(column) for column in data.columns}:
        raise DataError(f"data already has a column named '{WEIGHTS_COLUMN}'")
    return data.assign(**{WEIGHTS_COLUMN: values}), WEIGHTS_COLUMN


def _checked_weights(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The weights of the complete rows: numeric, finite and positive, or a DataError."""
    series = frame[column]
    label = "weights" if column == WEIGHTS_COLUMN else f"weights column '{column}'"
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        raise InputTypeError(f"{label} must be numeric, got dtype '{dtype}'")
    if pd.api.types.is_complex_dtype(dtype):
        raise InputTypeError(f"{label} must be real, got dtype '{dtype}'")
    values = np.ascontiguousarray(series.to_numpy(dtype=np.float64))
    for bad, what, advice in (
        (~np.isfinite(values), "infinite", "remove or recode them"),
        (values < 0.0, "negative", "weights must be positive"),
        (values == 0.0, "zero", "drop those rows instead (lme4's criterion is infinite there)"),
    ):
        count = int(bad.sum())
        if count:
            first = series.index[int(np.flatnonzero(bad)[0])]
            raise DataError(
                f"{label} has {count} {what} value{'s' if count != 1 else ''} (first at row "
                f"{first!r}); {advice}"
            )
    return values


def _used_columns(
    parsed: ParsedFormula, data: pd.DataFrame, weights_column: str | None = None
) -> list[str]:
    """The data columns the model reads, in the order of ``data``; raise on a missing one."""
    available = {str(column) for column in data.columns}
    needed: list[str] = []
    optional: set[str] = set()
    texts = [parsed.fixed] + [spec.lhs for spec in parsed.random_terms]
    for text in texts:
        required_names, attribute_roots = _formula_variables(text)
        needed.extend(required_names)
        optional.update(attribute_roots)
    for spec in parsed.random_terms:
        needed.extend(spec.factors)
    if weights_column is not None:
        needed.append(weights_column)

    for name in needed:
        if name not in available:
            raise DataError(_missing_column_message(name, available))
    wanted = set(needed) | (optional & available)
    used = [column for column in data.columns if str(column) in wanted]
    names = [str(column) for column in used]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise DataError(f"data has more than one column named '{duplicated[0]}'")
    return used


def _missing_column_message(name: str, available: Iterable[str]) -> str:
    message = f"column '{name}' not found in data"
    # Compare case-insensitively: difflib scores 'X' against 'x' as no match at all.
    by_lower = {}
    for candidate in sorted(available):
        by_lower.setdefault(candidate.lower(), candidate)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    if close:
        message += f" (did you mean '{by_lower[close[0]]}'?)"
    return message


def _formula_variables(text: str) -> tuple[list[str], set[str]]:
    """Names a formula reads: those it needs as values, and roots of attribute chains (fresh
    containers around :func:`_formula_variables_cached`)."""
    needed, roots = _formula_variables_cached(text)
    return list(needed), set(roots)


@functools.lru_cache(maxsize=256)
def _parsed_formula(text: str) -> Formula:
    """formulaic's parse of a formula string, kept: parsing costs more than building a small
    design, and a ``Formula`` is never modified once made."""
    return Formula(text)


@functools.lru_cache(maxsize=256)
def _formula_variables_cached(text: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """Names a formula reads: those it needs as values, and roots of attribute chains.

    ``np.log(x)`` needs ``x``; ``center(x)`` needs ``x`` (formulaic's own
    ``required_variables`` misses arguments of stateful transforms); in ``a.fillna(0)`` the
    root ``a`` is used when it is a column. Function names and formulaic's transform namespace
    are not columns.
    """
    formula = _parsed_formula(text)
    parts = [formula.lhs, formula.rhs] if hasattr(formula, "rhs") else [formula]
    needed: list[str] = []
    roots: set[str] = set()
    for part in parts:
        for term in part:
            for factor in term.factors:
                if factor.eval_method == Factor.EvalMethod.LOOKUP:
                    needed.append(str(factor.expr))
                elif factor.eval_method == Factor.EvalMethod.PYTHON:
                    values, attribute_roots = _expression_names(str(factor.expr))
                    needed.extend(values)
                    roots.update(attribute_roots)
    return tuple(dict.fromkeys(needed)), frozenset(roots)


def _expression_names(expression: str) -> tuple[list[str], set[str]]:
    """Split the names in a Python expression into values and attribute-chain roots."""
    backticked: dict[str, str] = {}

    def placeholder(match: re.Match[str]) -> str:
        alias = f"_interlace_column_{len(backticked)}_"
        backticked[alias] = match.group(1)
        return alias

    source = _BACKTICKED.sub(placeholder, expression)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        # formulaic will report the syntax error with its own message.
        return [], set()
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    values: list[str] = []
    roots: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Name):
            continue
        name = backticked.get(node.id, node.id)
        parent = parents.get(id(node))
        if isinstance(parent, ast.Call) and parent.func is node:
            continue
        if isinstance(parent, ast.Attribute):
            roots.add(name)
        elif name not in TRANSFORMS and not hasattr(builtins, name):
            values.append(name)
    return values, roots


class _Columns:
    """The columns of a model frame by name, each taken out of the frame once.

    ``frame[name]`` costs about 16 µs, and a small model's design reads its columns a dozen
    times (sleepstudy: an eighth of its design). A column is read here for its values and
    dtype only; ``frame`` is the model frame itself, for formulaic.
    """

    __slots__ = ("frame", "_series")

    def __init__(self, frame: pd.DataFrame, series: dict[str, pd.Series] | None = None) -> None:
        self.frame = frame
        self._series: dict[str, pd.Series] = {} if series is None else series

    def __getitem__(self, name: str) -> pd.Series:
        series = self._series.get(name)
        if series is None:
            series = self._series[name] = self.frame[name]
        return series

    def __contains__(self, name: object) -> bool:
        return name in self._series or name in self.frame.columns

    def __len__(self) -> int:
        return len(self.frame)

    def items(self) -> Iterable[tuple[str, pd.Series]]:
        """Every column of the frame, in its order."""
        return ((str(name), self[str(name)]) for name in self.frame.columns)


def _as_columns(frame: pd.DataFrame | _Columns) -> _Columns:
    return frame if isinstance(frame, _Columns) else _Columns(frame)


def _missing_values(series: pd.Series) -> np.ndarray | None:
    """Where a column is missing (as ``isna``), or None where it cannot be: numpy integers
    and booleans, and floats without a NaN."""
    dtype = series.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind in "iub":
            return None
        if dtype.kind == "f":
            missing = np.isnan(series.to_numpy())
            return missing if missing.any() else None
    missing = series.isna().to_numpy(dtype=bool)
    return missing if missing.any() else None


def _complete_rows(
    data: pd.DataFrame, used_columns: list[str]
) -> tuple[pd.DataFrame, int, _Columns]:
    """The used columns of the complete rows (lme4's na.omit), unused categories removed,
    pandas "string" columns as objects; and those columns by name."""
    if len(data) == 0:
        raise DataError("data has no rows")
    # Selecting columns costs a DataFrame's overhead (0.3 ms); skip it when all are used.
    every_column = len(used_columns) == data.shape[1] and all(
        a is b or a == b for a, b in zip(data.columns, used_columns, strict=True)
    )
    frame = data.copy(deep=False) if every_column else data.loc[:, used_columns]
    series = {str(name): column for name, column in frame.items()}
    missing = {name: _missing_values(column) for name, column in series.items()}
    incomplete = np.zeros(len(frame), dtype=bool)
    for mask in missing.values():
        if mask is not None:
            incomplete |= mask
    n_dropped = int(incomplete.sum())
    if n_dropped == len(frame):
        counts = sorted(
            ((name, int(mask.sum())) for name, mask in missing.items() if mask is not None),
            key=lambda item: -item[1],
        )
        worst = ", ".join(f"'{column}' ({count} of {len(frame)})" for column, count in counts)
        raise DataError(
            "no rows left after dropping rows with missing values in the model's columns; "
            f"missing values per column: {worst}"
        )
    if n_dropped:
        frame = frame.loc[~incomplete]
        series = {str(name): column for name, column in frame.items()}
    for j, (name, column) in enumerate(series.items()):
        dtype = column.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            n_categories = len(column.cat.categories)
            codes = column.cat.codes.to_numpy()
            if np.count_nonzero(np.bincount(codes, minlength=n_categories)) < n_categories:
                frame.isetitem(j, column.cat.remove_unused_categories())
                series[name] = frame.iloc[:, j]
        elif isinstance(dtype, pd.StringDtype) and dtype.na_value is pd.NA:
            # formulaic takes pandas' "string" columns (missing value pd.NA) for numbers and
            # fails on them; as objects they are the text factors they are.
            frame.isetitem(j, column.astype(object))
            series[name] = frame.iloc[:, j]
    return frame, n_dropped, _Columns(frame, series)


def _check_response_type(response: str, columns: _Columns) -> None:
    """A response that is a plain column must be numeric (not bool, text or categorical)."""
    if response not in columns:
        return  # an expression such as np.log(rt); its value is checked once evaluated
    dtype = columns[response].dtype
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        raise InputTypeError(
            f"response '{response}' must be numeric, got dtype '{dtype}'; a linear mixed "
            "model needs a numeric response"
        )
    if pd.api.types.is_complex_dtype(dtype):
        raise InputTypeError(f"response '{response}' must be real, got dtype '{dtype}'")


def _check_no_infinite_values(columns: _Columns) -> None:
    for column, series in columns.items():
        dtype = series.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "iubO":
            continue  # only floating-point columns can hold inf
        if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_float_dtype(dtype):
            continue
        values = series.to_numpy(dtype=np.float64)
        n_infinite = int(np.isinf(values).sum())
        if n_infinite:
            raise DataError(
                f"column '{column}' has {n_infinite} row{'s' if n_infinite != 1 else ''} with "
                "infinite values; remove or recode them"
            )


# ---------------------------------------------------------------------------------------------
# Fixed part


def _fixed_part(
    parsed: ParsedFormula, model_frame: pd.DataFrame | _Columns, factors: FactorCache
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], ModelSpec | _LazySpec, CrossProducts | None]:
    """Evaluate the fixed formula: the response vector, the full X, its names, its spec and,
    where the factors' cells give them cheaply, XᵀX and Xᵀy (see :func:`_cell_cross_products`)."""
    columns = _as_columns(model_frame)
    model_frame = columns.frame
    try:
        formula = _parsed_formula(parsed.fixed)
    except Exception as error:  # formulaic raises many types; all mean "cannot parse"
        raise FormulaError(
            f"fixed-effects formula '{parsed.fixed}' could not be evaluated: "
            f"{_formulaic_message(error)}"
        ) from error
    response = _direct_terms(formula.lhs, columns, {}) if hasattr(formula, "lhs") else None
    terms = _direct_terms(formula.rhs, columns, factors) if response is not None else None
    if response is not None and terms is not None and len(response) == 1 and len(response[0]) == 1:
        # The matrix formulaic would build, without its materializer (most of a small model's
        # fit time, and 15 of InstEval's `service * dept` 20 ms).
        y = columns[response[0][0]].to_numpy(dtype=np.float64, copy=True)
        x = _direct_matrix(terms, columns, factors)
        names = tuple(_direct_names(terms, factors))
        _check_finite_columns(x, names, "fixed-effects column")
        cross = _cell_cross_products(terms, factors, y)
        return y, x, names, _LazySpec(parsed.fixed, model_frame, "rhs"), cross
    try:
        # na_action="ignore": incomplete rows are already gone, and a value a transform turns
        # into NaN (log of a negative number) must be reported, not silently dropped. numpy's
        # warning about it is silenced because the DataError below says more.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            matrices = model_matrix(
                _parsed_formula(parsed.fixed), model_frame, na_action="ignore", context={}
            )
    except Exception as error:  # formulaic raises many types; all mean "cannot evaluate"
        raise FormulaError(
            f"fixed-effects formula '{parsed.fixed}' could not be evaluated: "
            f"{_formulaic_message(error)}"
        ) from error

    response_frame = matrices.lhs
    if response_frame.shape[1] != 1 or not all(
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        for dtype in response_frame.dtypes
    ):
        raise InputTypeError(
            f"response '{parsed.response}' must evaluate to one numeric column, got "
            f"{response_frame.shape[1]} column(s): {list(map(str, response_frame.columns))}"
        )
    y = np.ascontiguousarray(response_frame.to_numpy(dtype=np.float64)[:, 0])
    n_bad = int((~np.isfinite(y)).sum())
    if n_bad:
        raise DataError(
            f"response '{parsed.response}' has {n_bad} non-finite value{'s' if n_bad != 1 else ''}"
        )

    fixed_frame = matrices.rhs
    x = np.asfortranarray(fixed_frame.to_numpy(dtype=np.float64))
    _check_finite_columns(x, fixed_frame.columns, "fixed-effects column")
    spec = fixed_frame.model_spec
    return y, x, tuple(str(name) for name in spec.column_names), spec, None


# A direct term is a tuple of frame columns, () for the intercept; a factor level's columns
# are coded as formulaic codes them (see :func:`_direct_terms`).
DirectTerm = tuple[str, ...]
# Levels and codes of the categorical columns a design has factorized, by column name.
FactorCache = dict[str, tuple[pd.Index, np.ndarray]]


def _direct_terms(
    part: Iterable[Term], frame: pd.DataFrame | _Columns, factors: FactorCache
) -> list[DirectTerm] | None:
    """A formula part's terms as tuples of frame columns, when the matrix formulaic would
    build can be built without its materializer; None when any term needs formulaic.

    Each factor of each term must be a column by name that is numeric (a numpy int, uint or
    float column) or categorical (text, or pandas categorical) with at least two levels. A
    categorical factor is then coded as formulaic codes it when each of its term's sub-terms
    (the term without any non-empty subset of its categorical factors; the intercept when
    nothing is left) comes before it: by treatment contrasts against the first level, the
    term's columns being the products of its factors' columns, the first factor varying
    fastest. ``y ~ a * b`` and ``y ~ x * a`` qualify; ``y ~ a:b`` and ``y ~ 0 + a`` do not
    (formulaic then codes a factor by all its levels). Categorical columns are factorized
    into ``factors`` on the way.
    """
    terms: list[DirectTerm] = []
    for term in part:
        columns: list[str] = []
        for factor in term.factors:
            if factor.eval_method is Factor.EvalMethod.LITERAL and factor.expr == "1":
                if len(term.factors) != 1:
                    return None
                continue
            if factor.eval_method is not Factor.EvalMethod.LOOKUP:
                return None
            name = factor.expr
            if name not in frame or name in columns:
                return None
            dtype = frame[name].dtype
            if isinstance(dtype, np.dtype) and dtype.kind in "iuf":
                columns.append(name)
                continue
            if name not in factors:
                categorical = _categorical_levels_and_codes(frame[name], name)
                if categorical is None:
                    return None
                factors[name] = categorical
            if len(factors[name][0]) < 2:
                return None
            columns.append(name)
        terms.append(tuple(columns))
    earlier: set[frozenset[str]] = set()
    for term in terms:
        categorical = [name for name in term if name in factors]
        numeric = frozenset(term) - frozenset(categorical)
        for size in range(len(categorical)):
            for subset in itertools.combinations(categorical, size):
                if numeric | frozenset(subset) not in earlier:
                    return None
        earlier.add(frozenset(term))
    return terms or None


def _categorical_levels_and_codes(
    series: pd.Series, name: str
) -> tuple[pd.Index, np.ndarray] | None:
    """Levels (formulaic's order) and codes of a text or pandas categorical column; None for
    any other column, or a column of objects that are not all text."""
    dtype = series.dtype
    text = isinstance(dtype, np.dtype) and dtype.kind == "O"
    if not (text or isinstance(dtype, (pd.StringDtype, pd.CategoricalDtype))):
        return None
    try:
        levels, codes = _factor_levels_and_codes(series, name)
    except DataError:
        return None
    if text and levels.inferred_type != "string":
        return None
    return levels, codes


def _direct_names(terms: list[DirectTerm], factors: FactorCache) -> list[str]:
    """formulaic's column names of :func:`_direct_terms`' terms."""
    names: list[str] = []
    for term in terms:
        if not term:
            names.append("Intercept")
            continue
        per_factor = [
            [f"{name}[T.{level}]" for level in factors[name][0][1:]] if name in factors else [name]
            for name in term
        ]
        # The first factor varies fastest.
        for combination in itertools.product(*reversed(per_factor)):
            names.append(":".join(reversed(combination)))
    return names


# A term of one categorical factor with at most this many columns is built by comparing its
# codes with each level; wider ones by scattering each row into its column.
DIRECT_COMPARISON_MAX_WIDTH = 8


def _direct_matrix(
    terms: list[DirectTerm], frame: pd.DataFrame | _Columns, factors: FactorCache
) -> np.ndarray:
    """The float64, column-major matrix of :func:`_direct_terms`' terms: ones for the
    intercept, a numeric column's values, and for a term with categorical factors one
    column per combination of their levels after the first, holding the product of the
    term's numeric columns (or 1) on the rows at that combination and 0 elsewhere."""
    n_rows = len(frame)
    widths = [
        math.prod(len(factors[name][0]) - 1 for name in term if name in factors) for term in terms
    ]
    matrix = np.zeros((n_rows, sum(widths)), dtype=np.float64, order="F")
    flat = matrix.reshape(-1, order="F")  # a view: the matrix is column-major
    at = 0
    for term, width in zip(terms, widths, strict=True):
        values: np.ndarray | float = 1.0
        for name in term:
            if name not in factors:
                column = frame[name].to_numpy(dtype=np.float64)
                values = column if isinstance(values, float) else values * column
        categorical = [factors[name] for name in term if name in factors]
        if not categorical:
            matrix[:, at] = values
        elif len(categorical) == 1 and width <= DIRECT_COMPARISON_MAX_WIDTH:
            # One comparison per level: InstEval's two-level service, 0.1 ms instead of 0.6.
            codes = categorical[0][1]
            for level in range(1, width + 1):
                matrix[:, at + level - 1] = (
                    codes == level
                    if isinstance(values, float)
                    else np.where(codes == level, values, 0.0)
                )
        else:
            # Each row's column within the term (first factor fastest), or -1 on a row where
            # some factor is at its first level.
            offset = np.zeros(n_rows, dtype=np.int64)
            stride = 1
            for levels, codes in categorical:
                offset += (codes.astype(np.int64) - 1) * stride
                stride *= len(levels) - 1
            rows = np.ones(n_rows, dtype=bool)
            for _, codes in categorical:
                rows &= codes > 0
            rows = np.flatnonzero(rows)
            flat[(at + offset[rows]) * n_rows + rows] = (
                values if isinstance(values, float) else values[rows]
            )
        at += width
    return matrix


# XᵀX and Xᵀy.
CrossProducts = tuple[np.ndarray, np.ndarray]

# The most cells (combinations of the factors' levels) :func:`_cell_cross_products` forms X's
# rows for, as a fraction of the rows and in all.
MAX_CELLS_PER_ROW = 0.25
MAX_CELLS = 1 << 14


def _cell_cross_products(
    terms: list[DirectTerm], factors: FactorCache, y: np.ndarray
) -> CrossProducts | None:
    """XᵀX and Xᵀy of :func:`_direct_terms`' matrix when every term is the intercept or made
    of categorical factors only: X's row is then the same for every row in one cell (one
    combination of the factors' levels), so XᵀX = Σ nₖdₖdₖᵀ and Xᵀy = Σ dₖ(Σ yᵢ) over the
    cells k with nₖ rows and X-row dₖ. Counting the rows per cell takes a fraction of
    XᵀX's n·p² multiply-adds (InstEval's `service * dept`: 28 cells for 73,421 × 28, about
    0.5 ms instead of 4). None for any other design, or more cells than
    :data:`MAX_CELLS_PER_ROW` of the rows or :data:`MAX_CELLS`."""
    names = sorted({name for term in terms for name in term})
    if not names or any(name not in factors for name in names):
        return None
    sizes = [len(factors[name][0]) for name in names]
    n_cells = math.prod(sizes)
    if n_cells > min(MAX_CELLS, MAX_CELLS_PER_ROW * len(y)):
        return None
    cell = np.zeros(len(y), dtype=np.int64)
    for name, size in zip(names, sizes, strict=True):
        cell *= size
        cell += factors[name][1]
    counts = np.bincount(cell, minlength=n_cells)
    present = np.flatnonzero(counts)
    sums = np.bincount(cell, weights=y, minlength=n_cells)[present]
    cell_codes = np.unravel_index(present, sizes)
    cells: FactorCache = {
        name: (factors[name][0], codes) for name, codes in zip(names, cell_codes, strict=True)
    }
    rows = _direct_matrix(terms, pd.DataFrame(index=pd.RangeIndex(len(present))), cells)
    gram = rows.T @ (rows * counts[present, None].astype(np.float64))
    return gram, rows.T @ sums


def _check_response_not_fitted_exactly(
    response: str, y: np.ndarray, x: np.ndarray, residual: float | None = None
) -> None:
    """A response the fixed effects reproduce exactly (a constant one, with an intercept) has
    no residual variation: σ̂ = 0 and an unbounded likelihood, where lme4 returns noise and
    convergence warnings. Refuse it, naming the response. ``residual``, when given, is the
    residual norm of y / max|y| on x (see :func:`_aliased_columns_and_residual`)."""
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    if scale == 0.0:
        residual = 0.0
    elif x.shape[1] == 0:
        return
    elif residual is None:
        r = _r_factor(_with_scaled_response(x, y, scale))
        residual = float(abs(r[-1, -1])) if r.shape[0] == r.shape[1] else 0.0
    if residual <= 1e-12 * math.sqrt(y.size):
        values = np.unique(y)
        what = (
            f"is constant (every value is {values[0]:g})"
            if values.size == 1
            else "is fitted exactly by the fixed effects (no residual variation)"
        )
        raise DataError(
            f"response '{response}' {what}: a linear mixed model needs residual variation; "
            "check the response column"
        )


def _with_scaled_response(x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    """[x, y/scale] in Fortran order, ready for LAPACK's QR. |R[p, p]| of its QR is the
    residual norm of y/scale on x; y scaled to max 1, so the test is the same for y and c·y."""
    matrix = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float64, order="F")
    matrix[:, :-1] = x
    np.divide(y, scale, out=matrix[:, -1])
    return matrix


def _aliased_columns_and_residual(
    x: np.ndarray, y: np.ndarray, cross: CrossProducts | None = None
) -> tuple[list[int], float | None]:
    """:func:`_aliased_columns` of ``x``, and the residual norm of y / max|y| on the columns
    kept, from one QR of [x y]: R's leading columns are the QR of x alone. The residual is
    None when a column is aliased (the QR is then repeated without it) or x has no columns.
    ``cross``, XᵀX and Xᵀy when already known, spares the shortcut forming them."""
    n_rows, n_columns = x.shape
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    if n_columns == 0 or scale == 0.0 or n_columns >= n_rows:
        return _aliased_columns(x), None
    # On a small X the QR is cheaper than the shortcut's several small numpy calls.
    residual = (
        _full_rank_residual_from_gram(x, y, scale, cross) if x.size >= GRAM_MIN_SIZE else None
    )
    if residual is not None:
        return [], residual
    norms = _column_norms(x)
    r = _r_factor(_with_scaled_response(x, y, scale))
    distances = np.abs(np.diagonal(r))
    if np.any(distances[:n_columns] <= ALIASING_TOLERANCE * norms):
        return _aliased_columns(x), None
    return [], float(distances[n_columns])


# The Gram matrix of x (columns scaled to unit norm) certifies that no column is aliased when
# the condition number of x is at most this: every column is then at least 1/κ ≥ 10⁻⁴ of its
# norm from the span of the others, far above ALIASING_TOLERANCE, and forming XᵀX perturbs its
# smallest eigenvalue (≥ 10⁻⁸ of the largest) by at most n·ε ≈ 10⁻¹¹ of the largest for
# n = 10⁵, so the computed κ is right to about 0.1 %.
GRAM_MAX_CONDITION = 1e4
# The shortcut is tried from this many entries of X on (sleepstudy's 180 × 2: the QR of
# [X y] takes about 40 µs, the shortcut's seven small numpy calls about 80 µs).
GRAM_MIN_SIZE = 1 << 16


def _full_rank_residual_from_gram(
    x: np.ndarray, y: np.ndarray, scale: float, cross: CrossProducts | None = None
) -> float | None:
    """The residual norm of y/scale on x when XᵀX certifies that x has no aliased column (its
    condition number is at most :data:`GRAM_MAX_CONDITION`) and the residual is clearly not
    zero (above 10⁻³ of |y/scale|); None otherwise, and the QR decides.

    One product XᵀX instead of a QR of [x y]: InstEval's `service * dept` (73,421 × 29) takes
    about 3 ms instead of 17. Both outcomes the QR would give are certified with a wide margin,
    so the answer is the same: no aliased column, and a residual far above the exact-fit
    threshold of :func:`_check_response_not_fitted_exactly`. ``cross``, XᵀX and Xᵀy when
    already known (see :func:`_cell_cross_products`), spares the products.
    """
    gram, xty = (x.T @ x, None) if cross is None else cross
    norms = np.sqrt(np.diagonal(gram))
    if not np.all(norms > 0.0) or not np.all(np.isfinite(gram)):
        return None
    scaled = gram / np.outer(norms, norms)
    try:
        lower = np.linalg.cholesky(scaled)
    except np.linalg.LinAlgError:
        return None
    singular_values = np.linalg.svd(lower, compute_uv=False)  # those of x with unit columns
    if not singular_values[-1] * GRAM_MAX_CONDITION >= singular_values[0]:
        return None
    ys = y / scale
    yy = float(ys @ ys)
    xtys = x.T @ ys if xty is None else xty / scale
    coefficients = np.linalg.solve(lower, xtys / norms)
    residual2 = yy - float(coefficients @ coefficients)
    # The residual's rounding error is about ε·κ²·|ys|² ≤ 10⁻⁸·|ys|².
    if not residual2 >= 1e-6 * yy:
        return None
    return math.sqrt(residual2)


def _column_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each column (``np.linalg.norm(x, axis=0)`` without its temporaries:
    0.58 against 1.8 ms for a 73,421 × 28 matrix)."""
    return np.sqrt(np.einsum("ij,ij->j", x, x))


def _r_factor(matrix: np.ndarray) -> np.ndarray:
    """R of the QR of a tall ``matrix`` (up to the signs of its rows), blocked by rows.

    LAPACK's QR of a tall matrix passes over all of it once per column; blocks of about 2 MB
    stay in cache, and the QR of their stacked R factors is the R of the whole (TSQR: 3 ms
    instead of 12 for 500,000 × 3).
    """
    n_rows, n_columns = matrix.shape
    block = max(4 * n_columns, (1 << 18) // max(n_columns, 1))
    if n_rows <= 2 * block:
        return np.linalg.qr(matrix, mode="r")
    stacked = np.vstack(
        [np.linalg.qr(matrix[at : at + block], mode="r") for at in range(0, n_rows, block)]
    )
    return np.linalg.qr(stacked, mode="r")


def _aliased_columns(x: np.ndarray, tolerance: float = ALIASING_TOLERANCE) -> list[int]:
    """Indices of the columns of ``x`` that are linear combinations of the columns before them.

    Left to right, as R's lm: a column is aliased when its distance from the span of the kept
    columns before it is at most ``tolerance`` times its own norm (an all-zero column is
    aliased). In a Householder QR, ``|R[j, j]|`` is exactly that distance for every column up
    to the first aliased one; after it the reflections would mix in noise, so the first
    aliased column is removed and the QR repeated, as R's dqrdc2 moves it to the end. Aliasing
    is rare once formulaic has coded the factors, so this is usually one QR.
    """
    n_rows = x.shape[0]
    norms = _column_norms(x)
    aliased = [j for j in range(x.shape[1]) if norms[j] == 0.0]
    kept = [j for j in range(x.shape[1]) if norms[j] > 0.0]
    while kept:
        r = _r_factor(x[:, kept])
        distances = np.abs(np.diagonal(r))
        flagged = np.flatnonzero(distances <= tolerance * norms[kept][: len(distances)])
        if flagged.size:
            first = int(flagged[0])
        elif len(kept) > n_rows:
            first = n_rows  # n independent columns already span every column after them
        else:
            break
        aliased.append(kept.pop(first))
    return sorted(aliased)


# ---------------------------------------------------------------------------------------------
# Random-effects terms


def _random_terms(
    spec: RandomTermSpec,
    model_frame: pd.DataFrame | _Columns,
    levels: pd.Index,
    codes: np.ndarray,
    factors: FactorCache,
) -> list[ReTerm]:
    """Build the term's Z; a ``||`` term becomes one scalar term per column of Z."""
    columns = _as_columns(model_frame)
    model_frame = columns.frame
    try:
        formula = _parsed_formula(spec.lhs)
    except Exception as error:  # formulaic raises many types; all mean "cannot parse"
        raise FormulaError(
            f"random-effects term '{spec.label}' could not be evaluated: "
            f"{_formulaic_message(error)}"
        ) from error
    direct = None if hasattr(formula, "lhs") else _direct_terms(formula, columns, factors)
    model_spec: ModelSpec | _LazySpec
    if direct is not None:
        z = _direct_matrix(direct, columns, factors)
        columns = tuple(_direct_names(direct, factors))
        model_spec = _LazySpec(spec.lhs, model_frame, None)
    else:
        try:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                lhs_frame = model_matrix(formula, model_frame, na_action="ignore", context={})
        except Exception as error:  # formulaic raises many types; all mean "cannot evaluate"
            raise FormulaError(
                f"random-effects term '{spec.label}' could not be evaluated: "
                f"{_formulaic_message(error)}"
            ) from error
        columns = tuple(str(column) for column in lhs_frame.columns)
        z = np.asfortranarray(lhs_frame.to_numpy(dtype=np.float64))
        model_spec = lhs_frame.model_spec
    if not columns:
        raise FormulaError(f"random-effects term '{spec.label}' has no columns")
    _check_finite_columns(z, columns, f"random-effects term {spec.label}, column")
    codes = _read_only(codes)

    if not spec.uncorrelated:
        label = f"({spec.lhs} | {spec.group})"
        term = ReTerm(
            group=spec.group,
            factors=spec.factors,
            columns=columns,
            levels=levels,
            codes=codes,
            z=_read_only(z),
            _spec=model_spec,
            label=label,
        )
        return [term]
    parts = []
    for j, column in enumerate(columns):
        lhs = "1" if column == "Intercept" else f"0 + {column}"
        parts.append(
            ReTerm(
                group=spec.group,
                factors=spec.factors,
                columns=(column,),
                levels=levels,
                codes=codes,
                z=_read_only(np.asfortranarray(z[:, [j]])),
                _spec=model_spec,
                label=f"({lhs} | {spec.group})",
            )
        )
    return parts


def _grouping_factor(
    model_frame: pd.DataFrame | _Columns, spec: RandomTermSpec, factors: FactorCache
) -> tuple[pd.Index, np.ndarray]:
    """Levels and int32 codes of a grouping factor or of the interaction of several
    (``factors``: those already factorized, by column)."""
    per_factor = [
        factors[name] if name in factors else _factor_levels_and_codes(model_frame[name], name)
        for name in spec.factors
    ]
    if len(per_factor) == 1:
        levels, codes = per_factor[0]
    else:
        # Only the combinations present, ordered by the factors' own level orders with the
        # first factor varying slowest, as R's a:b.
        sizes = [len(factor_levels) for factor_levels, _ in per_factor]
        n_keys = math.prod(sizes)
        if n_keys < 2**62:
            # One integer key per row, in the same lexicographic order: a sort of int64 keys
            # instead of a sort of rows (InstEval's dept:service, 73,421 rows: 2 ms, not 60).
            key = np.zeros(len(per_factor[0][1]), dtype=np.int64)
            for (_, factor_codes), size in zip(per_factor, sizes, strict=True):
                key *= size
                key += factor_codes
            if n_keys <= len(key):
                # Few possible keys: counted instead of sorted (0.3 ms instead of 2.6 there).
                unique_keys = np.flatnonzero(np.bincount(key, minlength=n_keys))
                rank = np.zeros(n_keys, dtype=np.int64)
                rank[unique_keys] = np.arange(len(unique_keys))
                inverse = rank[key]
            else:
                unique_keys, inverse = np.unique(key, return_inverse=True)
            combinations = np.empty((len(unique_keys), len(sizes)), dtype=np.int64)
            rest = unique_keys
            for k in range(len(sizes) - 1, -1, -1):
                rest, combinations[:, k] = np.divmod(rest, sizes[k])
        else:
            stacked = np.column_stack([factor_codes for _, factor_codes in per_factor])
            combinations, inverse = np.unique(stacked, axis=0, return_inverse=True)
        labels = [
            ":".join(str(per_factor[k][0][code]) for k, code in enumerate(row))
            for row in combinations
        ]
        levels = pd.Index(labels, dtype=object, name=spec.group)
        codes = inverse.reshape(-1)
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    n_levels = len(levels)
    if n_levels < 2:
        raise DataError(
            f"grouping factor '{spec.group}' has {n_levels} level"
            f"{'s' if n_levels != 1 else ''}; a random effect needs at least 2"
        )
    return levels, codes


def _factor_levels_and_codes(series: pd.Series, name: str) -> tuple[pd.Index, np.ndarray]:
    if isinstance(series.dtype, pd.CategoricalDtype):
        levels = pd.Index(series.cat.categories, name=name)
        return levels, series.cat.codes.to_numpy()
    codes, levels = pd.factorize(series)
    try:
        # numpy compares objects with Python's <, as sorted() would: mixed types fail alike.
        order = np.argsort(levels.to_numpy(), kind="stable")
    except TypeError as error:
        kinds = sorted({type(value).__name__ for value in levels})
        raise DataError(
            f"grouping column '{name}' mixes values of types {', '.join(kinds)}, which have no "
            "common order; convert it to one type"
        ) from error
    rank_of = np.empty(len(levels), dtype=np.int64)
    rank_of[order] = np.arange(len(levels))
    return levels.take(order).rename(name), rank_of[codes]


def _check_identifiable(term: ReTerm, nobs: int) -> None:
    """lme4's checks: fewer levels than observations, fewer random effects than observations."""
    if term.n_levels >= nobs:
        raise DataError(
            f"grouping factor '{term.group}' has {term.n_levels} levels for {nobs} "
            "observations; the number of levels of each grouping factor must be < number of "
            f"observations (term {term.label})"
        )
    n_effects = term.q * term.n_levels
    if n_effects >= nobs:
        raise DataError(
            f"number of observations (={nobs}) <= number of random effects (={n_effects}) for "
            f"term {term.label} of grouping factor '{term.group}'; the random-effects "
            "parameters and the residual variance are probably unidentifiable"
        )


# ---------------------------------------------------------------------------------------------
# Small helpers


def _check_finite_columns(matrix: np.ndarray, names: Iterable[object], what: str) -> None:
    # A column with a NaN or an infinity sums to one; finite columns almost never do (only by
    # overflow), and only then are the values counted one by one.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(matrix.sum(axis=0)).all():
            return
    bad_per_column = (~np.isfinite(matrix)).sum(axis=0)
    for name, n_bad in zip(names, bad_per_column, strict=True):
        if n_bad:
            raise DataError(
                f"{what} '{name}' has {int(n_bad)} non-finite value"
                f"{'s' if n_bad != 1 else ''} (for example the log of a non-positive number)"
            )


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
