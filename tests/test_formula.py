"""Parsing lme4 formulas: splitting out bar terms and lme4's expansion rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlace.exceptions import FormulaError, InputTypeError
from interlace.formula import ParsedFormula, RandomTermSpec, parse_formula


def _groups(parsed: ParsedFormula) -> list[str]:
    return [term.group for term in parsed.random_terms]


# --- splitting the one-string form -------------------------------------------------------------


def test_one_string_form_splits_fixed_and_random_parts() -> None:
    parsed = parse_formula("rt ~ condition + (1 | subject) + (1 | item)")
    assert parsed.response == "rt"
    assert parsed.fixed == "rt ~ condition"
    assert parsed.random_terms == (
        RandomTermSpec(lhs="1", intercept=True, factors=("subject",), group="subject"),
        RandomTermSpec(lhs="1", intercept=True, factors=("item",), group="item"),
    )


def test_function_calls_with_nested_parentheses_stay_in_the_fixed_part() -> None:
    parsed = parse_formula("y ~ I((x + 1)**2) + np.log(x) + C(h) + (1 | g)")
    assert parsed.fixed == "y ~ I((x + 1)**2) + np.log(x) + C(h)"
    assert _groups(parsed) == ["g"]


def test_bar_term_anywhere_in_the_sum_is_found() -> None:
    parsed = parse_formula("y ~ (1 | g) + x + (0 + x | h) - 1")
    assert parsed.fixed == "y ~ x - 1"
    assert _groups(parsed) == ["g", "h"]


def test_only_response_left_gives_intercept_only_fixed_part() -> None:
    assert parse_formula("y ~ (1 | g)").fixed == "y ~ 1"
    assert parse_formula("y ~ ((1 | g))").fixed == "y ~ 1"


def test_expression_response_is_kept_verbatim() -> None:
    parsed = parse_formula("np.log(rt) ~ condition + (1 | subject)")
    assert parsed.response == "np.log(rt)"
    assert parsed.fixed == "np.log(rt) ~ condition"


# --- lme4 semantics of the left-hand side ------------------------------------------------------


@pytest.mark.parametrize("lhs", ["x", "1 + x", "x + 1"])
def test_implicit_intercept(lhs: str) -> None:
    (term,) = parse_formula(f"y ~ x + ({lhs} | g)").random_terms
    assert term.lhs == "1 + x"
    assert term.intercept is True


@pytest.mark.parametrize("lhs", ["0 + x", "-1 + x", "x - 1", "x + 0"])
def test_removed_intercept(lhs: str) -> None:
    (term,) = parse_formula(f"y ~ x + ({lhs} | g)").random_terms
    assert term.lhs == "0 + x"
    assert term.intercept is False


def test_intercept_only_term() -> None:
    (term,) = parse_formula("y ~ 1 + (1 | g)").random_terms
    assert (term.lhs, term.intercept, term.label) == ("1", True, "(1 | g)")


def test_double_bar_marks_the_term_uncorrelated() -> None:
    (term,) = parse_formula("Reaction ~ Days + (Days || Subject)").random_terms
    assert term.uncorrelated is True
    assert term.lhs == "1 + Days"
    assert term.label == "(1 + Days || Subject)"


# --- lme4 semantics of the grouping factor -----------------------------------------------------


def test_nesting_expands_to_outer_and_inner_colon_outer() -> None:
    # lme4: (1 | batch/cask) fits groups `batch` and `cask:batch`.
    parsed = parse_formula("strength ~ 1 + (1 | batch/cask)")
    assert _groups(parsed) == ["batch", "cask:batch"]
    assert [term.factors for term in parsed.random_terms] == [("batch",), ("cask", "batch")]


def test_three_level_nesting() -> None:
    parsed = parse_formula("y ~ 1 + (1 | a/b/c)")
    assert _groups(parsed) == ["a", "b:a", "c:b:a"]
    assert parsed.random_terms[2].factors == ("c", "b", "a")


def test_nesting_keeps_the_left_hand_side_on_every_level() -> None:
    parsed = parse_formula("y ~ x + (1 + x | a/b)")
    assert [term.lhs for term in parsed.random_terms] == ["1 + x", "1 + x"]


def test_interaction_grouping_keeps_the_written_order() -> None:
    (term,) = parse_formula("y ~ 1 + (1 | a:b)").random_terms
    assert term.group == "a:b"
    assert term.factors == ("a", "b")


def test_backticked_grouping_name() -> None:
    (term,) = parse_formula("y ~ 1 + (1 | `my group`)").random_terms
    assert term.factors == ("my group",)
    assert term.label == "(1 | `my group`)"


# --- groups= and random= ----------------------------------------------------------------------


def test_groups_argument_adds_random_intercepts() -> None:
    assert _groups(parse_formula("y ~ x", groups="g")) == ["g"]
    assert _groups(parse_formula("y ~ x", groups=["g", "h"])) == ["g", "h"]
    assert _groups(parse_formula("y ~ x", groups=("a/b",))) == ["a", "b:a"]


def test_random_list_with_and_without_parentheses() -> None:
    with_parentheses = parse_formula("y ~ x", random=["(1 + x | g)", "(1 | h)"])
    without = parse_formula("y ~ x", random=["1 + x | g", "1 | h"])
    assert with_parentheses == without


@pytest.mark.parametrize(
    "terms",
    [
        ["(1 | g)"],
        ["(1 + x | g)", "(1 | h)"],
        ["(x | g)"],
        ["(0 + x | g)"],
        ["(-1 + x | g)"],
        ["(x || g)"],
        ["(1 | a/b)"],
        ["(1 | a:b)"],
        ["(1 + condition | subject)", "(1 | item)"],
    ],
)
def test_one_string_form_equals_list_form(terms: list[str]) -> None:
    one_string = parse_formula("y ~ x + " + " + ".join(terms))
    listed = parse_formula("y ~ x", random=terms)
    assert one_string == listed


def test_formula_groups_and_random_combine_in_that_order() -> None:
    parsed = parse_formula("y ~ x + (1 | a)", groups="b", random=["(0 + x | c)"])
    assert _groups(parsed) == ["a", "b", "c"]


def test_to_lme4_writes_the_whole_model() -> None:
    parsed = parse_formula("strength ~ (1 | batch/cask)")
    assert parsed.to_lme4() == "strength ~ 1 + (1 | batch) + (1 | cask:batch)"
    parsed = parse_formula("y ~ x", random=["x || g"])
    assert parsed.to_lme4() == "y ~ x + (1 + x || g)"


_NAMES = st.sampled_from(["g", "h", "subject", "item", "a", "b"])


@given(
    lhs=st.sampled_from(["1", "x", "0 + x", "1 + x + z", "x - 1"]),
    bar=st.sampled_from(["|", "||"]),
    grouping=st.lists(_NAMES, min_size=1, max_size=3, unique=True),
    nested=st.booleans(),
)
def test_to_lme4_round_trips(lhs: str, bar: str, grouping: list[str], nested: bool) -> None:
    rhs = ("/" if nested else ":").join(grouping)
    parsed = parse_formula(f"y ~ x + ({lhs} {bar} {rhs})")
    assert parse_formula(parsed.to_lme4()) == parsed


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formula", "kwargs", "culprit"),
    [
        ("y ~ x", {}, "at least one random-effects term"),
        ("y x + (1 | g)", {}, "no '~'"),
        ("y ~ x ~ z + (1 | g)", {}, "more than one '~'"),
        ("~ x + (1 | g)", {}, "no response"),
        ("y ~ x + (1 | g", {}, "unclosed '('"),
        ("y ~ x + 1 | g)", {}, "unmatched ')'"),
        ("y ~ x + ( | g)", {}, "( | g)"),
        ("y ~ x + (1 | )", {}, "empty grouping"),
        ("y ~ x + (0 | g)", {}, "(0 | g)"),
        ("y ~ x + (1 | a//b)", {}, "a//b"),
        ("y ~ x + (1 | g | h)", {}, "more than one bar"),
        ("y ~ x + (1 | g + h)", {}, "g + h"),
        ("y ~ x + 1 | g", {}, "in parentheses"),
        ("y ~ x * (1 | g)", {}, "x * (1 | g)"),
        ("y ~ x - (1 | g)", {}, "with '+'"),
        ("y ~ x + + z + (1 | g)", {}, "empty term"),
        ("y ~ x", {"random": ["1 + x"]}, "'1 + x' has no '|'"),
        ("y ~ x", {"random": ["(1 + x | g"]}, "(1 + x | g"),
        ("y ~ x", {"groups": [""]}, "empty string"),
        ("y ~ x + (1 | g)", {"groups": "g"}, "(1 | g)' is given twice"),
        ("y ~ x + ) + (1 | g)", {}, "unmatched ')'"),
    ],
)
def test_malformed_formulas_raise_formula_error(
    formula: str, kwargs: dict[str, object], culprit: str
) -> None:
    with pytest.raises(FormulaError) as caught:
        parse_formula(formula, **kwargs)  # type: ignore[arg-type]
    assert culprit in str(caught.value)


def test_missing_random_term_message_says_how_to_add_one() -> None:
    with pytest.raises(FormulaError, match=r"give groups=\.\.\., random=\[\.\.\.\]"):
        parse_formula("y ~ x")


def test_unparseable_fixed_part_quotes_it() -> None:
    with pytest.raises(FormulaError, match=r"'y ~ x \+ \(\)'"):
        parse_formula("y ~ x + () + (1 | g)")


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"groups": 3}, "int"),
        ({"groups": {"g"}}, "set"),
        ({"random": [("1 | g",)]}, "tuple"),
        ({"random": 1.5}, "float"),
    ],
)
def test_wrong_argument_types_raise_input_type_error(
    kwargs: dict[str, object], culprit: str
) -> None:
    with pytest.raises(InputTypeError, match=culprit):
        parse_formula("y ~ x", **kwargs)  # type: ignore[arg-type]


def test_formula_must_be_a_string() -> None:
    with pytest.raises(InputTypeError, match="formula must be a string"):
        parse_formula(None)  # type: ignore[arg-type]


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="at least one random-effects term"):
        parse_formula("y ~ x")


def test_repeated_parses_are_equal_and_bad_arguments_still_raise():
    # parse_formula keeps its results per arguments; a list and a tuple of the same terms are
    # one key, and arguments it cannot key (a set) go the uncached way with the usual error.
    first = parse_formula("y ~ x", groups=["a", "b"])
    assert parse_formula("y ~ x", groups=("a", "b")) == first
    assert [t.group for t in first.random_terms] == ["a", "b"]
    with pytest.raises(InputTypeError):
        parse_formula("y ~ x", groups={"a"})
    with pytest.raises(FormulaError):
        parse_formula("y ~ x")


def test_formula_variables_are_fresh_containers():
    from interlace.design import _formula_variables

    needed, roots = _formula_variables("y ~ np.log(x) + a.fillna(0)")
    needed.append("mutated")
    roots.add("mutated")
    again, again_roots = _formula_variables("y ~ np.log(x) + a.fillna(0)")
    assert "mutated" not in again and "mutated" not in again_roots
    assert again == ["y", "x"] and again_roots == {"np", "a"}
