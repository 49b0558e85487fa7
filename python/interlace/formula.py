"""Parse lme4 model formulas into a fixed part and random-effects terms.

lme4 writes a mixed model as one formula, ``rt ~ condition + (1 | subject) + (1 | item)``: each
parenthesised bar term ``(lhs | group)`` is a random-effects term and what remains is an ordinary
fixed-effects formula. This module splits the two, expands the bar terms with lme4's rules
(implicit intercept, ``0 +`` / ``-1 +``, nesting ``a/b``, interactions ``a:b``) and hands the fixed
part to formulaic untouched. Nothing here looks at data: :mod:`interlace.design` turns the parsed
formula into arrays.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from formulaic import Formula
from formulaic.parser.types import Factor, Term

from interlace.exceptions import FormulaError, InputTypeError

__all__ = ["ParsedFormula", "RandomTermSpec", "parse_formula"]

_NO_RANDOM_TERM_MESSAGE = (
    "interlace needs at least one random-effects term: give groups=..., random=[...] "
    "or a '(1 | g)' term in the formula"
)
# A grouping factor is a column name: an R/Python-style identifier, or any text in backticks.
_PLAIN_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class RandomTermSpec:
    """One random-effects term ``(lhs | group)`` after lme4's expansion rules.

    Attributes
    ----------
    lhs : str
        Formulaic right-hand side that builds the term's model matrix, with the intercept made
        explicit: ``"1"``, ``"1 + Days"``, ``"0 + condition"``.
    intercept : bool
        Whether the term has a random intercept.
    factors : tuple of str
        The grouping columns; their order defines the level labels of an interaction
        (``("cask", "batch")`` gives levels ``"a:A"``, ...).
    group : str
        lme4's name of the grouping factor: the factors joined by ``":"`` (``"cask:batch"``).
    uncorrelated : bool
        The term was written with a double bar ``||``: each column of its model matrix becomes a
        separate scalar term. The split happens in :func:`interlace.design.build_design`, because
        the columns of a categorical ``lhs`` are known only once the data are seen.
    """

    lhs: str
    intercept: bool
    factors: tuple[str, ...]
    group: str
    uncorrelated: bool = False

    @property
    def label(self) -> str:
        """The term as lme4 would print it, e.g. ``"(1 + Days | Subject)"``."""
        bar = "||" if self.uncorrelated else "|"
        group = ":".join(_quote_name(factor) for factor in self.factors)
        return f"({self.lhs} {bar} {group})"


@dataclass(frozen=True)
class ParsedFormula:
    """A mixed-model formula split into its fixed part and its random-effects terms.

    Attributes
    ----------
    response : str
        The left-hand side of the formula, usually a column name.
    fixed : str
        Formulaic formula of the fixed part, e.g. ``"rt ~ condition"`` (``"rt ~ 1"`` when only
        the intercept is left).
    random_terms : tuple of RandomTermSpec
        The random-effects terms, in the order written (formula, then ``groups``, then
        ``random``), nested terms already expanded.
    """

    response: str
    fixed: str
    random_terms: tuple[RandomTermSpec, ...]

    @property
    def fixed_rhs(self) -> str:
        """The right-hand side of the fixed part, e.g. ``"condition"``."""
        return _split_at_tilde(self.fixed)[1]

    def to_lme4(self) -> str:
        """Return the whole model as one lme4 formula string.

        Returns
        -------
        str
            For example ``"rt ~ condition + (1 | subject) + (1 | item)"``.

        Examples
        --------
        >>> parse_formula("y ~ x", groups=["g"]).to_lme4()
        'y ~ x + (1 | g)'
        """
        terms = " + ".join(term.label for term in self.random_terms)
        return f"{self.response} ~ {self.fixed_rhs} + {terms}"


def parse_formula(
    formula: str,
    groups: str | Sequence[str] | None = None,
    random: str | Sequence[str] | None = None,
) -> ParsedFormula:
    """Parse a mixed-model formula with lme4 semantics.

    Parameters
    ----------
    formula : str
        A formula such as ``"rt ~ condition"`` or the lme4 one-string form
        ``"rt ~ condition + (1 | subject) + (1 | item)"``.
    groups : str or sequence of str, optional
        Grouping column(s); each adds a random intercept ``(1 | g)``. ``"a/b"`` and ``"a:b"``
        are accepted as in a bar term.
    random : str or sequence of str, optional
        lme4 random-effects terms such as ``"(1 + x | g)"``, ``"(x || g)"`` or ``"(1 | a/b)"``;
        the parentheses are optional.

    Returns
    -------
    ParsedFormula
        The fixed part and the expanded random-effects terms.

    Raises
    ------
    FormulaError
        A malformed formula or term, or no random-effects term at all.
    InputTypeError
        ``formula``, ``groups`` or ``random`` of the wrong type.

    Notes
    -----
    The expansion follows lme4: ``(x | g)`` has an implicit intercept and equals ``(1 + x | g)``;
    ``0 +`` or ``-1 +`` removes it; ``(1 | a/b)`` is ``(1 | a) + (1 | b:a)``; ``(1 | a:b)``
    groups by the combinations of ``a`` and ``b``; ``(x || g)`` gives one uncorrelated scalar
    term per model-matrix column.

    Examples
    --------
    >>> parsed = parse_formula("strength ~ 1 + (1 | batch/cask)")
    >>> [term.group for term in parsed.random_terms]
    ['batch', 'cask:batch']
    >>> parse_formula("Reaction ~ Days", random=["(Days | Subject)"]).random_terms[0].lhs
    '1 + Days'
    """
    if not isinstance(formula, str):
        raise InputTypeError(f"formula must be a string, got {type(formula).__name__}")
    keys = [_cache_key(groups), _cache_key(random)]
    if keys[0] is _UNCACHED or keys[1] is _UNCACHED:
        return _parse_formula(formula, groups, random)
    return _parse_formula_cached(formula, keys[0], keys[1])


_UNCACHED = object()


def _cache_key(value: object) -> object:
    """``groups``/``random`` as a hashable key: None, a string, or a tuple of strings (a list
    or tuple of strings); anything else is parsed uncached, so its error is the usual one."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return _UNCACHED


@functools.lru_cache(maxsize=256)
def _parse_formula_cached(
    formula: str, groups: str | tuple[str, ...] | None, random: str | tuple[str, ...] | None
) -> ParsedFormula:
    """:func:`parse_formula` kept per arguments: a ``ParsedFormula`` is frozen, and the parse
    (formulaic's included) costs more than building a small design."""
    return _parse_formula(formula, groups, random)


def _parse_formula(
    formula: str,
    groups: str | Sequence[str] | None,
    random: str | Sequence[str] | None,
) -> ParsedFormula:
    response, fixed_rhs, formula_terms = _split_fixed_and_random(formula)

    terms: list[RandomTermSpec] = []
    for bar_body, written in formula_terms:
        terms.extend(_parse_bar_term(bar_body, original=written))
    for group_text in _as_string_list(groups, "groups"):
        terms.extend(_expand_grouping("1", True, group_text, f"groups entry '{group_text}'"))
    for term_text in _as_string_list(random, "random"):
        terms.extend(_parse_random_entry(term_text))

    if not terms:
        raise FormulaError(_NO_RANDOM_TERM_MESSAGE)
    _reject_duplicates(terms)

    fixed = f"{response} ~ {fixed_rhs}"
    _check_formulaic_parses(fixed)
    return ParsedFormula(response=response, fixed=fixed, random_terms=tuple(terms))


# ---------------------------------------------------------------------------------------------
# Splitting the one-string formula


def _split_fixed_and_random(formula: str) -> tuple[str, str, list[tuple[str, str]]]:
    """Split ``formula`` into its response, fixed right-hand side and bar terms.

    Each bar term is returned as ``(inside of the parentheses, term as written)``.
    """
    _check_balanced(formula, f"formula '{formula}'")
    response, rhs = _split_at_tilde(formula)
    if not response:
        raise FormulaError(f"formula '{formula}' has no response on the left of '~'")
    if _find_top_level_bar(response) is not None:
        raise FormulaError(f"formula '{formula}' has a '|' in its response '{response}'")

    fixed_summands: list[tuple[str, str]] = []
    bar_terms: list[tuple[str, str]] = []
    for sign, summand in _summands(rhs, formula):
        inner = _strip_wrapping_parentheses(summand)
        if inner is not None and _find_top_level_bar(inner) is not None:
            if sign != "+":
                raise FormulaError(
                    f"random-effects term '{summand}' in formula '{formula}' must be added "
                    "with '+', not removed with '-'"
                )
            bar_terms.append((inner, summand))
            continue
        _reject_stray_bar(summand, formula)
        fixed_summands.append((sign, summand))

    return response, _join_summands(fixed_summands), bar_terms


def _split_at_tilde(formula: str) -> tuple[str, str]:
    """Split at the one top-level ``~``; return the stripped left and right sides."""
    positions = [i for i, char, depth in _scan(formula) if char == "~" and depth == 0]
    if not positions:
        raise FormulaError(
            f"formula '{formula}' has no '~'; write it as 'response ~ predictors', "
            "e.g. 'rt ~ condition + (1 | subject)'"
        )
    if len(positions) > 1:
        raise FormulaError(f"formula '{formula}' has more than one '~'")
    split = positions[0]
    rhs = formula[split + 1 :].strip()
    if not rhs:
        raise FormulaError(f"formula '{formula}' has nothing on the right of '~'")
    return formula[:split].strip(), rhs


def _summands(rhs: str, formula: str) -> list[tuple[str, str]]:
    """Split a right-hand side at its top-level ``+`` and ``-`` into ``(sign, text)`` pairs."""
    pieces: list[tuple[str, str]] = []
    sign, start = "+", 0
    for i, char, depth in _scan(rhs):
        if depth == 0 and char in "+-":
            # Scientific notation such as 1e-5 is not an operator.
            if char == "-" and i >= 2 and rhs[i - 1] in "eE" and rhs[i - 2].isdigit():
                continue
            text = rhs[start:i].strip()
            if text:
                pieces.append((sign, text))
                sign = char
            elif pieces or i != _first_non_space(rhs):
                raise FormulaError(f"formula '{formula}' has an empty term near '{rhs[i:]}'")
            else:
                sign = char  # a leading sign, as in "-1 + x"
            start = i + 1
    last = rhs[start:].strip()
    if not last:
        raise FormulaError(f"formula '{formula}' ends with a dangling '{sign}'")
    pieces.append((sign, last))
    return pieces


def _join_summands(summands: list[tuple[str, str]]) -> str:
    if not summands:
        return "1"
    first_sign, first_text = summands[0]
    parts = [first_text if first_sign == "+" else f"-{first_text}"]
    parts.extend(f"{sign} {text}" for sign, text in summands[1:])
    return " ".join(parts)


def _reject_stray_bar(summand: str, formula: str) -> None:
    """Raise if a bar appears in a fixed-part summand outside a stand-alone ``( | )`` term."""
    if _find_top_level_bar(summand) is not None:
        raise FormulaError(
            f"random-effects term '{summand}' in formula '{formula}' must be in parentheses, "
            "e.g. '(1 | g)'"
        )
    # A bare parenthesised group with a bar inside, as in "x * (1 | g)"; a bar inside a
    # function call such as I(a | b) is Python's 'or' and belongs to formulaic.
    for open_at, close_at in _top_level_groups(summand):
        preceded_by_name = open_at > 0 and (
            summand[open_at - 1].isalnum() or summand[open_at - 1] in "_.`"
        )
        inner = summand[open_at + 1 : close_at]
        if not preceded_by_name and _find_top_level_bar(inner) is not None:
            raise FormulaError(
                f"random-effects term '{summand[open_at : close_at + 1]}' in formula "
                f"'{formula}' must stand alone, added with '+'; it cannot be combined with "
                f"other terms as in '{summand}'"
            )


# ---------------------------------------------------------------------------------------------
# Bar terms


def _parse_random_entry(text: str) -> list[RandomTermSpec]:
    """Parse one entry of the ``random=`` list; the parentheses are optional there."""
    stripped = text.strip()
    _check_balanced(stripped, f"random-effects term '{text}'")
    inner = _strip_wrapping_parentheses(stripped)
    body = inner if inner is not None else stripped
    if _find_top_level_bar(body) is None:
        raise FormulaError(
            f"random-effects term '{text}' has no '|'; write it as '(lhs | group)', "
            "e.g. '(1 + x | g)'"
        )
    return _parse_bar_term(body, original=text)


def _parse_bar_term(body: str, original: str | None = None) -> list[RandomTermSpec]:
    """Parse the inside of ``(lhs | group)`` or ``(lhs || group)`` into expanded terms."""
    quoted = f"random-effects term '{original if original is not None else f'({body})'}'"
    bar = _find_top_level_bar(body)
    if bar is None:
        raise FormulaError(f"{quoted} has no '|'; write it as '(lhs | group)'")
    bar_at, bar_width = bar
    lhs_text = body[:bar_at].strip()
    rhs_text = body[bar_at + bar_width :].strip()
    if _find_top_level_bar(rhs_text) is not None:
        raise FormulaError(f"{quoted} has more than one bar")
    if not lhs_text:
        raise FormulaError(f"{quoted} has an empty left-hand side; use '1' for a random intercept")
    if not rhs_text:
        raise FormulaError(f"{quoted} has an empty grouping factor after the bar")
    lhs, intercept = _normalise_lhs(lhs_text, quoted)
    return _expand_grouping(lhs, intercept, rhs_text, quoted, uncorrelated=bar_width == 2)


def _normalise_lhs(lhs_text: str, quoted: str) -> tuple[str, bool]:
    """Make the intercept of a term's left-hand side explicit, as lme4's model.matrix does."""
    try:
        lhs_formula = Formula(lhs_text)
        terms = [_term_text(term) for term in lhs_formula]
    except Exception as error:  # formulaic raises many types; all mean "cannot parse"
        raise FormulaError(
            f"{quoted} has a left-hand side '{lhs_text}' that cannot be parsed: "
            f"{_formulaic_message(error)}"
        ) from error
    intercept = "1" in terms
    others = [term for term in terms if term != "1"]
    if not intercept and not others:
        raise FormulaError(
            f"{quoted} has an empty left-hand side '{lhs_text}': it removes the intercept and "
            "names no variable"
        )
    lhs = " + ".join(["1" if intercept else "0", *others])
    return lhs, intercept


def _term_text(term: Term) -> str:
    """A formulaic term written back as formula text: a column name that is not an identifier
    keeps its backticks (``x two`` is written `` `x two` ``)."""
    parts = []
    for factor in term.factors:
        expr = str(factor.expr)
        lookup = factor.eval_method is Factor.EvalMethod.LOOKUP
        parts.append(f"`{expr}`" if lookup and not expr.isidentifier() else expr)
    return ":".join(parts)


def _expand_grouping(
    lhs: str, intercept: bool, grouping: str, quoted: str, uncorrelated: bool = False
) -> list[RandomTermSpec]:
    """Expand ``a``, ``a:b`` or ``a/b/c`` into one term per grouping factor, as lme4 does.

    lme4's ``expandSlash`` turns ``a/b/c`` into ``a``, ``b:a`` and ``c:b:a``: each nested level
    is grouped by its own name followed by every enclosing factor.
    """
    if "(" in grouping or ")" in grouping:
        raise FormulaError(
            f"{quoted} has grouping '{grouping}'; a grouping factor must be column names "
            "joined by ':' or '/'"
        )
    nesting = [_interaction_factors(part, grouping, quoted) for part in grouping.split("/")]
    terms = []
    enclosing: tuple[str, ...] = ()
    for factors in nesting:
        enclosing = factors + enclosing
        terms.append(
            RandomTermSpec(
                lhs=lhs,
                intercept=intercept,
                factors=enclosing,
                group=":".join(enclosing),
                uncorrelated=uncorrelated,
            )
        )
    return terms


def _interaction_factors(part: str, grouping: str, quoted: str) -> tuple[str, ...]:
    names = []
    for raw in part.split(":"):
        name = raw.strip()
        if not name:
            raise FormulaError(f"{quoted} has an empty grouping factor name in '{grouping}'")
        if len(name) >= 2 and name[0] == name[-1] == "`":
            name = name[1:-1]
        elif not _PLAIN_NAME.fullmatch(name):
            raise FormulaError(
                f"{quoted} has grouping factor '{name}', which is not a column name; "
                "quote unusual names in backticks"
            )
        if not name:
            raise FormulaError(f"{quoted} has an empty grouping factor name in '{grouping}'")
        names.append(name)
    if len(set(names)) != len(names):
        raise FormulaError(f"{quoted} repeats a grouping factor in '{grouping}'")
    return tuple(names)


def _reject_duplicates(terms: list[RandomTermSpec]) -> None:
    seen: set[tuple[str, tuple[str, ...], bool]] = set()
    for term in terms:
        key = (term.lhs, term.factors, term.uncorrelated)
        if key in seen:
            raise FormulaError(
                f"random-effects term '{term.label}' is given twice (check the formula against "
                "groups= and random=); the repeated variance would not be identifiable"
            )
        seen.add(key)


# ---------------------------------------------------------------------------------------------
# Small lexical helpers


def _scan(text: str) -> Iterator[tuple[int, str, int]]:
    """Yield ``(index, char, depth)`` for characters outside quotes and backticks.

    ``depth`` counts the parentheses and brackets open before the character; an opening
    parenthesis is reported at the outer depth, its closing partner at the same depth.
    """
    depth = 0
    quote: str | None = None
    for i, char in enumerate(text):
        if quote is not None:
            if char == quote:
                quote = None
            continue
        if char in "'\"`":
            quote = char
            continue
        if char in ")]":
            depth -= 1
        yield i, char, depth
        if char in "([":
            depth += 1


def _check_balanced(text: str, quoted: str) -> None:
    depth = 0
    quote: str | None = None
    for char in text:
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"`":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"{quoted} has an unmatched ')'")
    if quote is not None:
        raise FormulaError(f"{quoted} has an unclosed {quote}")
    if depth > 0:
        raise FormulaError(f"{quoted} has {depth} unclosed '('")


def _find_top_level_bar(text: str) -> tuple[int, int] | None:
    """Return ``(position, width)`` of the first top-level ``|`` or ``||``, if any."""
    for i, char, depth in _scan(text):
        if char == "|" and depth == 0:
            width = 2 if text[i + 1 : i + 2] == "|" else 1
            return i, width
    return None


def _top_level_groups(text: str) -> list[tuple[int, int]]:
    """Return ``(open, close)`` positions of the top-level parenthesised groups in ``text``."""
    groups = []
    open_at = None
    for i, char, depth in _scan(text):
        if depth != 0:
            continue
        if char == "(":
            open_at = i
        elif char == ")" and open_at is not None:
            groups.append((open_at, i))
            open_at = None
    return groups


def _strip_wrapping_parentheses(text: str) -> str | None:
    """Return the inside of ``text`` if one pair of parentheses wraps all of it, else None.

    Redundant pairs, as in ``((1 | g))``, are all removed.
    """
    inner = None
    current = text.strip()
    while current.startswith("(") and current.endswith(")"):
        groups = _top_level_groups(current)
        if len(groups) != 1 or groups[0] != (0, len(current) - 1):
            break
        current = current[1:-1].strip()
        inner = current
    return inner


def _first_non_space(text: str) -> int:
    return len(text) - len(text.lstrip())


def _as_string_list(value: object, argument: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        values: list[object] = [value]
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        raise InputTypeError(
            f"{argument} must be a string or a list of strings, got {type(value).__name__}"
        )
    for item in values:
        if not isinstance(item, str):
            raise InputTypeError(
                f"{argument} must contain strings, got {type(item).__name__} ({item!r})"
            )
        if not item.strip():
            raise FormulaError(f"{argument} contains an empty string")
    return [item.strip() for item in values]  # type: ignore[union-attr]


def _quote_name(name: str) -> str:
    return name if _PLAIN_NAME.fullmatch(name) else f"`{name}`"


def _formulaic_message(error: Exception) -> str:
    """Formulaic's error text without its terminal colour codes and highlight markers."""
    text = _ANSI_ESCAPE.sub("", str(error)).replace("⧛", "").replace("⧚", "")
    return " ".join(text.split())


def _check_formulaic_parses(fixed: str) -> None:
    try:
        Formula(fixed)
    except Exception as error:  # formulaic raises many types; all mean "cannot parse"
        raise FormulaError(
            f"fixed-effects formula '{fixed}' cannot be parsed: {_formulaic_message(error)}"
        ) from error
