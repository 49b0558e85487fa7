"""From a data frame and a parsed formula to the validated arrays the core reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlace.design import Design, ReTerm, build_design, build_design_from
from interlace.exceptions import DataError, FormulaError, InputTypeError
from interlace.formula import parse_formula

N_SUBJECTS = 12
PER_SUBJECT = 6


def make_frame(seed: int = 0) -> pd.DataFrame:
    """A small balanced design: 12 subjects x 6 rows, a covariate, a 3-level factor."""
    rng = np.random.default_rng(seed)
    n = N_SUBJECTS * PER_SUBJECT
    subject = np.repeat([f"s{i:02d}" for i in range(N_SUBJECTS)], PER_SUBJECT)
    x = rng.normal(size=n)
    condition = np.tile(["A", "B", "C"], n // 3)
    y = 1.0 + 0.5 * x + rng.normal(size=n)
    return pd.DataFrame(
        {
            "y": y,
            "x": x,
            "z": rng.uniform(1.0, 2.0, size=n),
            "condition": condition,
            "subject": subject,
            "site": np.repeat(np.arange(4), n // 4),
            "unused": np.nan,
        }
    )


def nested_frame() -> pd.DataFrame:
    """Pastes-like nesting: casks a/b/c are re-used labels inside each batch A..D."""
    batch = np.repeat(["A", "B", "C", "D"], 6)
    cask = np.tile(np.repeat(["a", "b", "c"], 2), 4)
    strength = np.linspace(55.0, 65.0, len(batch)) + np.tile([0.3, -0.3], len(batch) // 2)
    return pd.DataFrame({"strength": strength, "batch": batch, "cask": cask})


def term_of(design: Design, label: str) -> ReTerm:
    (term,) = [term for term in design.terms if term.label == label]
    return term


# --- array contract ---------------------------------------------------------------------------


def test_arrays_have_the_promised_dtype_shape_and_layout() -> None:
    design = build_design_from("y ~ x + condition + (1 + x | subject)", make_frame())
    n = N_SUBJECTS * PER_SUBJECT
    assert design.y.dtype == np.float64
    assert design.y.shape == (n,)
    assert design.y.flags.c_contiguous
    assert design.x.dtype == np.float64
    assert design.x.shape == (n, 4)
    assert design.x.flags.f_contiguous
    (term,) = design.terms
    assert term.codes.dtype == np.int32
    assert term.codes.shape == (n,)
    assert term.z.dtype == np.float64
    assert term.z.shape == (n, 2)
    assert term.z.flags.f_contiguous
    assert (term.n_levels, term.q) == (N_SUBJECTS, 2)
    assert term.codes.min() == 0
    assert term.codes.max() == N_SUBJECTS - 1
    for array in (design.y, design.x, term.z, term.codes):
        assert not array.flags.writeable
    assert design.nobs == n
    assert design.n_dropped == 0
    assert design.formula == "y ~ x + condition + (1 + x | subject)"


def test_fixed_matrix_matches_treatment_coding() -> None:
    frame = make_frame()
    design = build_design_from("y ~ x + condition + (1 | subject)", frame)
    # formulaic keeps the written order within a degree, as R's model.matrix.
    assert design.fixed_names == ("Intercept", "x", "condition[T.B]", "condition[T.C]")
    np.testing.assert_array_equal(design.y, frame["y"].to_numpy())
    np.testing.assert_array_equal(design.x[:, 0], 1.0)
    np.testing.assert_array_equal(design.x[:, 1], frame["x"].to_numpy())
    np.testing.assert_array_equal(design.x[:, 2], (frame["condition"] == "B").to_numpy())


def test_frame_holds_only_the_used_columns() -> None:
    design = build_design_from("y ~ x + (1 | subject)", make_frame())
    assert list(design.frame.columns) == ["y", "x", "subject"]
    assert design.frame.index.equals(design.row_index)


def test_formulaic_names_of_transforms() -> None:
    frame = make_frame()
    design = build_design_from("y ~ I(x**2) + np.log(z) + C(site) + (1 | subject)", frame)
    assert design.fixed_names == (
        "Intercept",
        "I(x ** 2)",
        "np.log(z)",
        "C(site)[T.1]",
        "C(site)[T.2]",
        "C(site)[T.3]",
    )
    np.testing.assert_allclose(design.x[:, 1], frame["x"] ** 2)
    np.testing.assert_allclose(design.x[:, 2], np.log(frame["z"]))


def test_interaction_names() -> None:
    frame = make_frame()
    design = build_design_from("y ~ condition * x + (1 | subject)", frame)
    assert design.fixed_names == (
        "Intercept",
        "condition[T.B]",
        "condition[T.C]",
        "x",
        "condition[T.B]:x",
        "condition[T.C]:x",
    )
    expected = (frame["condition"] == "C").to_numpy() * frame["x"].to_numpy()
    np.testing.assert_allclose(design.x[:, 5], expected)


def test_fixed_spec_rebuilds_x_on_new_data() -> None:
    frame = make_frame()
    design = build_design_from("y ~ condition + np.log(z) + (1 | subject)", frame)
    new = frame.iloc[[5, 0, 7]]
    rebuilt = design.fixed_spec.get_model_matrix(new)
    assert tuple(rebuilt.columns) == design.fixed_names
    np.testing.assert_allclose(rebuilt.to_numpy(dtype=float), design.x[[5, 0, 7]])


def test_term_spec_rebuilds_z_on_new_data() -> None:
    frame = make_frame()
    design = build_design_from("y ~ 1 + (1 + condition | subject)", frame)
    (term,) = design.terms
    rebuilt = term.spec.get_model_matrix(frame.iloc[[2, 3]])
    np.testing.assert_array_equal(rebuilt[list(term.columns)].to_numpy(float), term.z[[2, 3]])


DIRECT_FORMULAS = [
    "y ~ x",
    "y ~ 0 + x",
    "y ~ x - 1",
    "y ~ 1",
    "y ~ z + x + site",
    "y ~ x + 1 + x",
    "y ~ `x two` + small + single",
    "y ~ x + (1 + x | subject)",
    "y ~ x + (x | subject)",
    "y ~ z + (0 + x | subject) + (1 | site)",
    "y ~ 1 + (x || subject)",
    "y ~ x + (z + `x two` | subject)",
    "y ~ x:z + x",
    "y ~ condition",
    "y ~ condition * text",
    "y ~ text * condition + x",
    "y ~ x * condition",
    "y ~ condition:x + x + condition",
    "y ~ x * z * condition",
    "y ~ condition * text * coded + x",
    "y ~ numbered + ranked + words",
    "y ~ x + (1 + condition | subject)",
    "y ~ x + (condition | subject) + (x * text | site)",
    "y ~ condition + (1 | condition:text)",
]


def numeric_frame() -> pd.DataFrame:
    """make_frame with more numeric dtypes (int64, uint8, float32, a name with a space) and
    categorical ones: pandas text, object text, and pandas categoricals with integer, float and
    ordered text categories, one of them unused."""
    frame = make_frame(3)
    n = len(frame)
    return frame.assign(
        **{
            "x two": frame["x"] ** 2,
            "small": (np.arange(n) % 7).astype(np.uint8),
            "single": frame["z"].astype(np.float32),
            "text": pd.Series(np.tile(["q", "p", "r", "s"], n // 4), dtype="str"),
            "coded": pd.Series(np.tile(["b", "a"], n // 2), dtype=object),
            "numbered": pd.Categorical(np.arange(n) % 5 * 10, categories=[40, 30, 20, 10, 0, 7]),
            "ranked": pd.Categorical(
                np.tile(["lo", "hi", "mid"], n // 3), categories=["lo", "mid", "hi"], ordered=True
            ),
            "words": pd.Categorical(np.arange(n) % 3 * 0.5),
        }
    )


# formulaic's deprecated re-coding of a categorical whose categories differ from the spec's.
@pytest.mark.filterwarnings("ignore:Constructing a Categorical with a dtype")
@pytest.mark.parametrize("formula", DIRECT_FORMULAS)
def test_direct_terms_build_what_formulaic_builds(
    formula: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Intercepts, numeric and categorical columns, and their products, skip formulaic's
    # materializer; the arrays, names and specs must be those formulaic gives, bit for bit.
    from interlace import design as design_module

    frame = numeric_frame()
    frame.loc[4, "x"] = np.nan  # a dropped row: the frames must align after na.omit
    groups = None if "|" in formula else "subject"
    fast = build_design_from(formula, frame, groups=groups)
    assert isinstance(fast._fixed_spec, design_module._LazySpec)
    assert all(isinstance(term._spec, design_module._LazySpec) for term in fast.terms)
    monkeypatch.setattr(design_module, "_direct_terms", lambda part, frame, factors: None)
    slow = build_design_from(formula, frame, groups=groups)
    assert not isinstance(slow._fixed_spec, design_module._LazySpec)
    assert fast.fixed_names == slow.fixed_names
    np.testing.assert_array_equal(fast.y, slow.y)
    np.testing.assert_array_equal(fast.x, slow.x)
    assert fast.x.flags.f_contiguous and not fast.x.flags.writeable
    assert [t.label for t in fast.terms] == [t.label for t in slow.terms]
    for ours, theirs in zip(fast.terms, slow.terms, strict=True):
        assert ours.columns == theirs.columns
        np.testing.assert_array_equal(ours.z, theirs.z)
        assert ours.z.flags.f_contiguous and not ours.z.flags.writeable
        assert ours.spec.column_names == theirs.spec.column_names
    new = numeric_frame().iloc[[9, 2, 30]]
    assert fast.fixed_spec.column_names == slow.fixed_spec.column_names
    np.testing.assert_array_equal(
        fast.fixed_spec.get_model_matrix(new).to_numpy(float),
        slow.fixed_spec.get_model_matrix(new).to_numpy(float),
    )


@pytest.mark.parametrize("formula", ["y ~ text", "y ~ 0 + text", "y ~ x + (0 + text | subject)"])
def test_a_pandas_string_column_is_a_text_factor(formula: str) -> None:
    # formulaic takes pandas' "string" dtype (missing value pd.NA) for numbers; it must be coded
    # as the default text dtype is, on the fast path and on formulaic's.
    frame = numeric_frame()
    strings = frame.assign(text=frame["text"].astype("string"))
    strings.loc[5, "text"] = pd.NA
    frame.loc[5, "text"] = np.nan
    groups = None if "|" in formula else "subject"
    ours = build_design_from(formula, strings, groups=groups)
    theirs = build_design_from(formula, frame, groups=groups)
    assert ours.nobs == theirs.nobs == len(frame) - 1
    assert ours.fixed_names == theirs.fixed_names
    np.testing.assert_array_equal(ours.x, theirs.x)
    for mine, other in zip(ours.terms, theirs.terms, strict=True):
        assert mine.columns == other.columns
        np.testing.assert_array_equal(mine.z, other.z)


@pytest.mark.parametrize(
    "formula",
    [
        "y ~ flag",  # a boolean column is a factor to formulaic
        "y ~ counts",  # a nullable integer column is an extension type
        "y ~ np.log(z)",
        "y ~ 0 + condition",  # coded by all its levels
        "y ~ condition:x",  # likewise, as x is not a term
        "y ~ mixed",  # objects of several types
        "y ~ lone",  # a single level
        "np.log(z) ~ x",
        "y ~ 1 + (np.log(z) | subject)",
    ],
)
def test_terms_that_need_formulaic_are_left_to_it(formula: str) -> None:
    from interlace import design as design_module

    frame = make_frame().assign(
        flag=lambda f: f["x"] > 0,
        counts=lambda f: pd.array(f["site"], dtype="Int64"),
        mixed=lambda f: pd.Series(["a", 1] * (len(f) // 2), dtype=object),
        lone="only",
    )
    design = build_design_from(formula, frame, groups=None if "|" in formula else "subject")
    lazy = [isinstance(design._fixed_spec, design_module._LazySpec)] + [
        isinstance(term._spec, design_module._LazySpec) for term in design.terms
    ]
    assert not all(lazy)


# --- random-effects terms: lme4 semantics ------------------------------------------------------


def test_implicit_intercept_gives_the_same_z() -> None:
    frame = make_frame()
    implicit = build_design_from("y ~ x + (x | subject)", frame).terms[0]
    explicit = build_design_from("y ~ x + (1 + x | subject)", frame).terms[0]
    assert implicit.columns == explicit.columns == ("Intercept", "x")
    np.testing.assert_array_equal(implicit.z, explicit.z)
    np.testing.assert_array_equal(implicit.codes, explicit.codes)
    assert implicit.label == "(1 + x | subject)"


@pytest.mark.parametrize("lhs", ["0 + x", "-1 + x", "x - 1"])
def test_no_intercept_term_is_the_covariate_alone(lhs: str) -> None:
    frame = make_frame()
    (term,) = build_design_from(f"y ~ x + ({lhs} | subject)", frame).terms
    assert term.columns == ("x",)
    np.testing.assert_array_equal(term.z[:, 0], frame["x"].to_numpy())


def test_double_bar_splits_into_scalar_terms_of_the_same_group() -> None:
    frame = make_frame()
    design = build_design_from("y ~ x + (x || subject)", frame)
    assert [term.group for term in design.terms] == ["subject", "subject"]
    assert [term.columns for term in design.terms] == [("Intercept",), ("x",)]
    assert [term.label for term in design.terms] == ["(1 | subject)", "(0 + x | subject)"]
    correlated = build_design_from("y ~ x + (1 + x | subject)", frame).terms[0]
    np.testing.assert_array_equal(np.hstack([t.z for t in design.terms]), correlated.z)


def test_double_bar_splits_a_categorical_by_model_matrix_column() -> None:
    design = build_design_from("y ~ 1 + (condition || subject)", make_frame())
    assert [term.columns for term in design.terms] == [
        ("Intercept",),
        ("condition[T.B]",),
        ("condition[T.C]",),
    ]
    assert all(term.q == 1 for term in design.terms)


def test_categorical_slope_columns() -> None:
    frame = make_frame()
    with_intercept = build_design_from("y ~ 1 + (1 + condition | subject)", frame).terms[0]
    assert with_intercept.columns == ("Intercept", "condition[T.B]", "condition[T.C]")
    full_dummy = build_design_from("y ~ 1 + (0 + condition | subject)", frame).terms[0]
    assert full_dummy.columns == ("condition[A]", "condition[B]", "condition[C]")
    np.testing.assert_array_equal(full_dummy.z.sum(axis=1), 1.0)


def test_nested_grouping_expands_to_batch_and_cask_within_batch() -> None:
    frame = nested_frame()
    design = build_design_from("strength ~ 1 + (1 | batch/cask)", frame)
    inner = term_of(design, "(1 | cask:batch)")
    outer = term_of(design, "(1 | batch)")
    assert inner.factors == ("cask", "batch")
    # Only the 12 combinations present, cask varying slowest, as lme4's cask:batch.
    assert inner.levels.tolist() == [f"{c}:{b}" for c in "abc" for b in "ABCD"]
    labels = frame["cask"] + ":" + frame["batch"]
    assert inner.levels[inner.codes].tolist() == labels.tolist()
    assert outer.levels.tolist() == ["A", "B", "C", "D"]
    assert outer.levels[outer.codes].tolist() == frame["batch"].tolist()
    # Sorted by number of levels: 12 before 4.
    assert [term.group for term in design.terms] == ["cask:batch", "batch"]


def test_interaction_grouping_has_only_combinations_present() -> None:
    frame = pd.DataFrame(
        {
            "y": np.arange(8.0) ** 1.5,
            "a": ["p", "p", "q", "q", "q", "q", "r", "r"],
            "b": [2, 2, 1, 1, 2, 2, 10, 10],
        }
    )
    (term,) = build_design_from("y ~ 1 + (1 | a:b)", frame).terms
    # r:1, r:2, p:1, p:10 and q:10 never occur; 10 sorts as a number, after 2.
    assert term.levels.tolist() == ["p:2", "q:1", "q:2", "r:10"]
    assert term.codes.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("n", [30, 400])
def test_three_factor_interaction_levels_in_lexicographic_order(n: int) -> None:
    # Levels are the combinations present, ordered as the rows of their level codes sort
    # (first factor slowest), which is what R's a:b:c gives. 42 possible combinations: with
    # 400 rows they are counted, with 30 the rows' keys are sorted.
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "y": rng.standard_normal(n),
            "a": rng.choice(["x", "w", "v"], n),
            "b": rng.integers(0, 7, n),
            "c": rng.choice(["lo", "hi"], n),
        }
    )
    (term,) = build_design_from("y ~ 1 + (1 | a:b:c)", frame).terms
    codes = np.column_stack(
        [
            frame["a"].map({"v": 0, "w": 1, "x": 2}),
            frame["b"],
            frame["c"].map({"hi": 0, "lo": 1}),
        ]
    )
    rows, inverse = np.unique(codes, axis=0, return_inverse=True)
    expected = [f"{'vwx'[i]}:{j}:{('hi', 'lo')[k]}" for i, j, k in rows]
    assert term.levels.tolist() == expected
    np.testing.assert_array_equal(term.codes, inverse.reshape(-1))
    assert (
        term.levels[term.codes].tolist()
        == (frame["a"] + ":" + frame["b"].astype(str) + ":" + frame["c"]).tolist()
    )


def test_one_string_form_equals_list_form() -> None:
    frame = make_frame()
    one = build_design_from("y ~ x + (1 + x | subject) + (1 | site)", frame)
    listed = build_design_from("y ~ x", frame, random=["1 + x | subject", "1 | site"])
    assert one.formula == listed.formula
    np.testing.assert_array_equal(one.x, listed.x)
    for a, b in zip(one.terms, listed.terms, strict=True):
        assert (a.label, a.columns) == (b.label, b.columns)
        np.testing.assert_array_equal(a.z, b.z)
        np.testing.assert_array_equal(a.codes, b.codes)
        assert a.levels.equals(b.levels)


def test_terms_sorted_by_levels_descending_and_stable() -> None:
    frame = make_frame()
    frame["block"] = np.repeat(np.arange(N_SUBJECTS) % 6, PER_SUBJECT)  # 6 levels
    frame["twin"] = frame["subject"].str.upper()  # 12 levels, like subject
    design = build_design_from(
        "y ~ x + (1 | site) + (x || subject) + (1 | block) + (1 | twin)", frame
    )
    assert [term.label for term in design.terms] == [
        "(1 | subject)",
        "(0 + x | subject)",
        "(1 | twin)",
        "(1 | block)",
        "(1 | site)",
    ]


# --- grouping column types --------------------------------------------------------------------


def test_integer_grouping_keeps_integer_levels_in_numeric_order() -> None:
    frame = make_frame()
    frame["site"] = frame["site"].map({0: 10, 1: 9, 2: 100, 3: 2})
    (term,) = build_design_from("y ~ 1 + (1 | site)", frame).terms
    assert term.levels.tolist() == [2, 9, 10, 100]
    assert pd.api.types.is_integer_dtype(term.levels.dtype)
    assert term.levels[term.codes].tolist() == frame["site"].tolist()


def test_boolean_grouping() -> None:
    frame = make_frame()
    frame["flag"] = frame["site"] >= 2
    (term,) = build_design_from("y ~ 1 + (1 | flag)", frame).terms
    assert term.levels.tolist() == [False, True]
    assert term.levels[term.codes].tolist() == frame["flag"].tolist()


def test_categorical_grouping_uses_category_order_and_drops_unused_categories() -> None:
    frame = make_frame()
    frame["site"] = pd.Categorical(
        frame["site"].map(["w", "x", "y", "z"].__getitem__), categories=["z", "y", "x", "w", "v"]
    )
    (term,) = build_design_from("y ~ 1 + (1 | site)", frame).terms
    assert term.levels.tolist() == ["z", "y", "x", "w"]
    assert term.levels[term.codes].tolist() == frame["site"].astype(str).tolist()


def test_object_grouping_with_none_is_dropped_like_nan() -> None:
    frame = make_frame()
    frame["subject"] = frame["subject"].astype(object)
    frame.loc[[3, 4], "subject"] = None
    design = build_design_from("y ~ 1 + (1 | subject)", frame)
    assert design.n_dropped == 2
    assert design.terms[0].levels.tolist() == [f"s{i:02d}" for i in range(N_SUBJECTS)]


# --- missing values ---------------------------------------------------------------------------


def test_rows_missing_in_response_covariate_or_group_are_dropped() -> None:
    frame = make_frame()
    frame.index = pd.Index([f"row{i}" for i in range(len(frame))])
    frame.loc["row1", "y"] = np.nan
    frame.loc["row10", "x"] = np.nan
    frame.loc["row20", "subject"] = np.nan
    frame.loc["row30", "unused"] = 1.0  # not a model column: its gaps do not matter
    design = build_design_from("y ~ x + (1 | subject)", frame)
    kept = frame.index.difference(["row1", "row10", "row20"], sort=False)
    assert design.nobs == len(frame) - 3
    assert design.n_dropped == 3
    assert design.row_index.equals(kept)
    np.testing.assert_array_equal(design.y, frame.loc[kept, "y"].to_numpy())
    np.testing.assert_array_equal(design.x[:, 1], frame.loc[kept, "x"].to_numpy())
    assert design.terms[0].codes.shape == (design.nobs,)


def test_rows_missing_in_a_random_slope_column_are_dropped() -> None:
    frame = make_frame()
    frame["w"] = frame["x"] * 2.0
    frame.loc[5, "w"] = pd.NA
    design = build_design_from("y ~ 1 + (0 + w | subject)", frame)
    assert 5 not in design.row_index
    assert design.n_dropped == 1


def test_missing_argument_of_a_stateful_transform_drops_the_row() -> None:
    # formulaic's required_variables misses the argument of center(); the row must still go.
    frame = make_frame()
    frame.loc[0, "x"] = np.nan
    design = build_design_from("y ~ center(x) + (1 | subject)", frame)
    assert design.n_dropped == 1
    assert np.isfinite(design.x).all()


def test_categorical_level_left_empty_by_dropping_rows_disappears() -> None:
    frame = make_frame()
    frame["condition"] = pd.Categorical(frame["condition"])
    frame.loc[frame["condition"] == "C", "y"] = np.nan
    design = build_design_from("y ~ condition + (1 | subject)", frame)
    assert design.fixed_names == ("Intercept", "condition[T.B]")
    assert design.dropped_fixed == ()


# --- rank deficiency --------------------------------------------------------------------------


def test_aliased_fixed_column_is_dropped_and_named() -> None:
    frame = make_frame()
    frame["x2"] = 2.0 * frame["x"]
    design = build_design_from("y ~ x + x2 + z + (1 | subject)", frame)
    assert design.fixed_names == ("Intercept", "x", "z")
    assert design.dropped_fixed == ("x2",)
    assert design.x.shape == (len(frame), 3)
    assert design.x.flags.f_contiguous
    np.testing.assert_array_equal(design.x[:, 2], frame["z"].to_numpy())


def test_aliasing_is_decided_left_to_right() -> None:
    frame = make_frame()
    frame["total"] = frame["x"] + frame["z"]
    design = build_design_from("y ~ total + x + z + (1 | subject)", frame)
    assert design.dropped_fixed == ("z",)
    assert design.fixed_names == ("Intercept", "total", "x")


def test_constant_covariate_is_aliased_with_the_intercept() -> None:
    frame = make_frame()
    frame["constant"] = 3.0
    design = build_design_from("y ~ constant + x + (1 | subject)", frame)
    assert design.dropped_fixed == ("constant",)


def test_aliasing_tolerance_is_relative_to_the_column_norm() -> None:
    frame = make_frame()
    frame["tiny"] = 1e-9 * frame["z"]  # small, but not a combination of earlier columns
    frame["huge"] = 1e9 * frame["x"]  # large, and a multiple of x
    design = build_design_from("y ~ x + tiny + huge + (1 | subject)", frame)
    assert design.fixed_names == ("Intercept", "x", "tiny")
    assert design.dropped_fixed == ("huge",)


@pytest.mark.parametrize("aliased", [False, True])
def test_one_qr_of_x_and_y_gives_the_aliasing_and_the_least_squares_residual(aliased) -> None:
    # build_design takes both checks from one QR of [X y]: the same aliased columns as
    # _aliased_columns alone, and |R[p, p]| = the least-squares residual norm of y / max|y|.
    from interlace.design import _aliased_columns, _aliased_columns_and_residual

    rng = np.random.default_rng(7)
    x = np.asfortranarray(rng.normal(size=(3000, 5)))
    if aliased:
        x[:, 3] = x[:, 0] - 2.0 * x[:, 1]
    y = x @ np.arange(1.0, 6.0) + rng.normal(size=3000)
    found, residual = _aliased_columns_and_residual(x, y)
    assert found == _aliased_columns(x) == ([3] if aliased else [])
    if aliased:
        assert residual is None  # computed on the kept columns by the caller
    else:
        scaled = y / np.max(np.abs(y))
        fit = np.linalg.lstsq(x, scaled, rcond=None)[0]
        assert residual == pytest.approx(np.linalg.norm(scaled - x @ fit), rel=1e-10)


@pytest.mark.parametrize("distance", [1e-3, 1e-6, 1e-8])
def test_the_gram_shortcut_certifies_only_clear_cases_and_the_qr_decides_the_rest(distance) -> None:
    # XᵀX answers only when x is well conditioned (κ ≤ 10⁴) and the residual clearly nonzero;
    # a column 10⁻⁶ of its norm from the others (kept) or 10⁻⁸ (aliased) is left to the QR.
    from interlace.design import (
        _aliased_columns,
        _aliased_columns_and_residual,
        _full_rank_residual_from_gram,
        _r_factor,
        _with_scaled_response,
    )

    rng = np.random.default_rng(11)
    n = 14_000  # 70,000 entries: at least GRAM_MIN_SIZE, where build_design tries the shortcut
    x = np.asfortranarray(rng.normal(size=(n, 5)))
    x[:, 3] = x[:, 0] - 2.0 * x[:, 1] + distance * np.sqrt(5.0) * rng.normal(size=n)
    y = x @ np.arange(1.0, 6.0) + rng.normal(size=n)
    scale = float(np.max(np.abs(y)))
    shortcut = _full_rank_residual_from_gram(x, y, scale)
    found, residual = _aliased_columns_and_residual(x, y)
    assert found == _aliased_columns(x) == ([3] if distance < 1e-7 else [])
    if distance == 1e-3:
        qr_residual = abs(_r_factor(_with_scaled_response(x, y, scale))[-1, -1])
        assert shortcut == pytest.approx(qr_residual, rel=1e-8)
        assert residual == shortcut
    else:
        assert shortcut is None
    # A response the columns reproduce to rounding is left to the QR as well.
    assert _full_rank_residual_from_gram(x[:, :3], x[:, :3] @ [1.0, 2.0, 3.0], 1.0) is None


@pytest.mark.parametrize(
    ("formula", "from_cells"),
    [
        ("y ~ condition * text", True),
        ("y ~ text + coded", True),
        ("y ~ text + coded + ranked", False),  # 24 cells for 72 rows
        ("y ~ 0 + x + condition", False),  # left to formulaic
        ("y ~ x * condition", False),  # a numeric column
    ],
)
def test_cross_products_from_cells_equal_those_of_x(formula: str, from_cells: bool) -> None:
    # With categorical factors only, X's rows repeat per cell (combination of levels), and
    # XᵀX, Xᵀy come from the rows per cell; they must equal the products of X.
    from interlace import design as design_module

    frame = numeric_frame().reset_index(drop=True)
    parsed = parse_formula(formula, groups="subject")
    factors: dict = {}
    y, x, _, _, cross = design_module._fixed_part(parsed, frame, factors)
    assert (cross is not None) == from_cells
    if from_cells:
        gram, xty = cross
        np.testing.assert_array_equal(gram, x.T @ x)  # counts: exact integers
        np.testing.assert_allclose(xty, x.T @ y, rtol=1e-13, atol=1e-12)


def test_response_fitted_exactly_after_an_aliased_column_is_refused() -> None:
    frame = make_frame()
    frame["x2"] = 2.0 * frame["x"]
    frame["y"] = 1.0 + 3.0 * frame["x"]
    with pytest.raises(DataError, match=r"^response 'y' is fitted exactly by the fixed effects"):
        build_design_from("y ~ x + x2 + (1 | subject)", frame)


def test_full_rank_design_drops_nothing() -> None:
    design = build_design_from("y ~ x * condition + (1 | subject)", make_frame())
    assert design.dropped_fixed == ()


# --- input conversion -------------------------------------------------------------------------


def test_polars_input_gives_identical_arrays() -> None:
    frame = make_frame().drop(columns="unused")
    formula = "y ~ x + condition + (1 + x | subject) + (1 | site)"
    from_pandas = build_design_from(formula, frame)
    from_polars = build_design_from(formula, pl.from_pandas(frame))
    np.testing.assert_array_equal(from_pandas.y, from_polars.y)
    np.testing.assert_array_equal(from_pandas.x, from_polars.x)
    assert from_pandas.fixed_names == from_polars.fixed_names
    for a, b in zip(from_pandas.terms, from_polars.terms, strict=True):
        np.testing.assert_array_equal(a.z, b.z)
        np.testing.assert_array_equal(a.codes, b.codes)
        assert a.levels.tolist() == b.levels.tolist()


def test_polars_nulls_are_dropped() -> None:
    frame = pl.DataFrame(
        {"y": [1.0, None, 3.0, 4.0, 5.0, 6.0], "g": ["a", "a", "b", None, "b", "a"]}
    )
    design = build_design_from("y ~ 1 + (1 | g)", frame)
    assert design.nobs == 4
    assert design.row_index.tolist() == [0, 2, 4, 5]


@pytest.mark.parametrize("data", [np.zeros((3, 2)), {"y": [1.0]}, [[1.0]], None])
def test_data_of_the_wrong_type(data: object) -> None:
    with pytest.raises(InputTypeError, match=type(data).__name__):
        build_design_from("y ~ 1 + (1 | g)", data)


def test_build_design_needs_a_parsed_formula() -> None:
    with pytest.raises(InputTypeError, match="ParsedFormula"):
        build_design("y ~ 1 + (1 | g)", make_frame())  # type: ignore[arg-type]


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("y ~ X + (1 | subject)", "column 'X' not found in data (did you mean 'x'?)"),
        ("y ~ x + (1 | Subjet)", "column 'Subjet' not found in data (did you mean 'subject'?)"),
        ("y ~ x + (1 + conditon | subject)", "column 'conditon' not found"),
        ("yy ~ x + (1 | subject)", "column 'yy' not found"),
        ("y ~ np.log(zz) + (1 | subject)", "column 'zz' not found"),
        ("y ~ center(w) + (1 | subject)", "column 'w' not found"),
    ],
)
def test_missing_column_is_named_with_a_suggestion(formula: str, message: str) -> None:
    with pytest.raises(DataError) as caught:
        build_design_from(formula, make_frame())
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("values", "dtype_word"),
    [
        (["a", "b"] * 36, "str"),
        ([True, False] * 36, "bool"),
        (pd.Categorical([1.0, 2.0] * 36), "category"),
    ],
)
def test_non_numeric_response_is_a_type_error(values: object, dtype_word: str) -> None:
    frame = make_frame()
    frame["y"] = values
    with pytest.raises(InputTypeError, match=rf"response 'y' must be numeric.*{dtype_word}"):
        build_design_from("y ~ x + (1 | subject)", frame)


@pytest.mark.parametrize("column", ["y", "x", "z"])
def test_infinite_values_are_an_error_naming_the_column(column: str) -> None:
    frame = make_frame()
    frame.loc[[2, 9], column] = np.inf
    with pytest.raises(DataError, match=rf"column '{column}' has 2 rows with infinite"):
        build_design_from("y ~ x + (0 + z | subject)", frame)


def test_transform_producing_nan_is_an_error_naming_the_column() -> None:
    frame = make_frame()
    frame.loc[4, "z"] = -1.0
    with pytest.raises(DataError, match=r"'np.log\(z\)' has 1 non-finite value"):
        build_design_from("y ~ np.log(z) + (1 | subject)", frame)


def test_response_expression_producing_inf_is_an_error() -> None:
    frame = make_frame()
    frame["y"] = frame["z"]
    frame.loc[0, "y"] = 0.0
    with pytest.raises(DataError, match=r"response 'np.log\(y\)' has 1 non-finite"):
        build_design_from("np.log(y) ~ x + (1 | subject)", frame)


def test_finite_values_whose_column_sum_overflows_are_not_an_error() -> None:
    # The finiteness check sums each column first; a sum of large finite values overflows to
    # infinity, and the values must then be counted one by one, not refused.
    from interlace.design import _check_finite_columns

    matrix = np.asfortranarray(np.column_stack([np.full(10, 1e308), np.arange(10.0)]))
    _check_finite_columns(matrix, ["big", "x"], "column")
    matrix[3, 1] = np.nan
    with pytest.raises(DataError, match=r"column 'x' has 1 non-finite value"):
        _check_finite_columns(matrix, ["big", "x"], "column")


def test_no_complete_rows_says_which_columns_were_missing() -> None:
    frame = make_frame()
    frame["x"] = np.nan
    frame.loc[:3, "y"] = np.nan
    with pytest.raises(DataError, match=r"no rows left.*'x' \(72 of 72\), 'y' \(4 of 72\)"):
        build_design_from("y ~ x + (1 | subject)", frame)


def test_empty_data() -> None:
    with pytest.raises(DataError, match="no rows"):
        build_design_from("y ~ x + (1 | subject)", make_frame().iloc[:0])


def test_single_level_grouping_factor() -> None:
    frame = make_frame()
    frame["one"] = "only"
    with pytest.raises(DataError, match=r"grouping factor 'one' has 1 level; .* at least 2"):
        build_design_from("y ~ x + (1 | one)", frame)


def test_grouping_factor_with_a_level_per_observation() -> None:
    frame = make_frame()
    frame["row"] = np.arange(len(frame))
    with pytest.raises(DataError, match="grouping factor 'row' has 72 levels for 72 obs"):
        build_design_from("y ~ x + (1 | row)", frame)


def test_vector_term_with_as_many_effects_as_observations() -> None:
    frame = make_frame().iloc[:24]  # 4 subjects x 6 rows
    frame = frame.assign(pair=np.repeat(np.arange(12), 2))
    with pytest.raises(
        DataError,
        match=r"number of observations \(=24\) <= number of random effects \(=24\) for term "
        r"\(1 \+ x \| pair\)",
    ):
        build_design_from("y ~ x + (1 + x | pair)", frame)


def test_unevaluable_fixed_formula_quotes_it_and_formulaic() -> None:
    with pytest.raises(FormulaError, match=r"'y ~ undefined_function\(x\)'.*undefined_function"):
        build_design_from("y ~ undefined_function(x) + (1 | subject)", make_frame())


def test_grouping_column_of_mixed_types() -> None:
    frame = make_frame()
    frame["subject"] = frame["subject"].astype(object)
    frame.loc[:5, "subject"] = 7
    with pytest.raises(DataError, match="grouping column 'subject' mixes values"):
        build_design_from("y ~ 1 + (1 | subject)", frame)


# --- invariance -------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(permutation=st.permutations(range(N_SUBJECTS * PER_SUBJECT)))
def test_row_order_only_permutes_the_arrays(permutation: list[int]) -> None:
    frame = make_frame()
    formula = "y ~ x + condition + (1 + x | subject) + (1 | site:condition)"
    reference = build_design_from(formula, frame)
    shuffled = build_design_from(formula, frame.iloc[permutation])
    np.testing.assert_array_equal(shuffled.y, reference.y[permutation])
    np.testing.assert_array_equal(shuffled.x, reference.x[permutation])
    for a, b in zip(reference.terms, shuffled.terms, strict=True):
        assert a.levels.equals(b.levels)
        np.testing.assert_array_equal(b.codes, a.codes[permutation])
        np.testing.assert_array_equal(b.z, a.z[permutation])


def test_parse_then_build_equals_build_from() -> None:
    frame = make_frame()
    parsed = parse_formula("y ~ x", groups=["subject"])
    assert (
        build_design(parsed, frame).formula
        == build_design_from("y ~ x", frame, groups="subject").formula
    )
