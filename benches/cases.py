"""The benchmark grid: datasets × formulas, with the targets of issue 7 ("Speed at scale").

A case names its data (a fixture of the test suite or a seeded generator in ``generate.py``), an
lme4 formula that interlace, lme4 and mixedlm are all given verbatim, the method, and the target
for interlace's whole ``interlace.fit`` call (design building included) on a 2-core machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import generate
import pandas as pd

REPOSITORY = Path(__file__).resolve().parent.parent
REFERENCE_DATA = REPOSITORY / "tests" / "data" / "reference" / "data"

INSTEVAL_FACTORS = ("s", "d", "studage", "lectage", "service", "dept")


def _insteval() -> pd.DataFrame:
    return pd.read_csv(
        REFERENCE_DATA / "InstEval.csv", dtype={name: str for name in INSTEVAL_FACTORS}
    )


def _sleepstudy() -> pd.DataFrame:
    return pd.read_csv(REFERENCE_DATA / "sleepstudy.csv", dtype={"Subject": str})


@dataclass(frozen=True)
class Dataset:
    """A dataset of the grid: how to make it, its factor columns, and a CSV for R if it exists."""

    key: str
    make: Callable[[], pd.DataFrame]
    factors: tuple[str, ...]
    source: str
    csv: Path | None = None  # a CSV already on disk (the fixtures); generated data are written


@dataclass(frozen=True)
class Case:
    """One fit of the grid."""

    name: str
    dataset: Dataset
    formula: str
    method: str
    target_seconds: float
    target_rss_gb: float | None = None
    large: bool = False  # runs only with --large
    quick: bool = False  # in the --quick subset
    inner: int = 1  # fits per repeat; the median over all of them is reported
    # Sizes for the memory estimate of --large cases: rows, fixed columns, Σ q over terms, and
    # the levels of all terms but the largest (the dense second block of L is m × m).
    size: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))


INSTEVAL = Dataset(
    "insteval",
    _insteval,
    INSTEVAL_FACTORS,
    "lme4's InstEval (test fixture)",
    REFERENCE_DATA / "InstEval.csv",
)
SLEEPSTUDY = Dataset(
    "sleepstudy",
    _sleepstudy,
    ("Subject",),
    "lme4's sleepstudy (test fixture)",
    REFERENCE_DATA / "sleepstudy.csv",
)
CROSSED_20K = Dataset(
    "crossed_20k",
    generate.crossed_balanced,
    ("a", "b"),
    "crossed_balanced(250, 100, 20_000, seed=1)",
)
SUBJECTS_ITEMS = Dataset(
    "subjects_items_200k",
    generate.subjects_items,
    ("subject", "item", "condition"),
    "subjects_items(2000, 500, 100, seed=1)",
)
MANY_GROUPS = Dataset(
    "many_groups_500k", generate.many_groups, ("g",), "many_groups(125_000, 4, seed=1)"
)
MOVIELENS = Dataset(
    "movielens_1m",
    generate.crossed_skewed,
    ("user", "item"),
    "crossed_skewed(6040, 3706, 1_000_000, seed=1)",
)
RATINGS_10M = Dataset(
    "ratings_10m",
    lambda: generate.crossed_skewed(100_000, 5_000, 10_000_000),
    ("user", "item"),
    "crossed_skewed(100_000, 5_000, 10_000_000, seed=1)",
)

CASES: tuple[Case, ...] = (
    Case(
        "insteval_ml",
        INSTEVAL,
        "y ~ service + (1|s) + (1|d) + (1|dept:service)",
        "ML",
        0.3,
    ),
    Case("insteval_fixed_reml", INSTEVAL, "y ~ service * dept + (1|s) + (1|d)", "REML", 0.25),
    # The two small cases run `inner` fits per repeat: a median of 3 fits of 10 ms is at the
    # mercy of one scheduling hiccup on a shared VM (17.2 ms against 9.7 ms in session 21).
    Case("crossed_20k", CROSSED_20K, "y ~ x + (1|a) + (1|b)", "ML", 0.015, quick=True, inner=10),
    Case(
        "sleepstudy",
        SLEEPSTUDY,
        "Reaction ~ Days + (Days|Subject)",
        "REML",
        0.002,
        quick=True,
        inner=100,
    ),
    Case(
        "subjects_items_intercepts",
        SUBJECTS_ITEMS,
        "y ~ condition + (1|subject) + (1|item)",
        "REML",
        0.4,
    ),
    Case(
        "subjects_items_slopes",
        SUBJECTS_ITEMS,
        "y ~ condition + (1 + condition|subject) + (1|item)",
        "REML",
        1.0,
    ),
    Case("many_groups_500k", MANY_GROUPS, "y ~ x + (1 + x|g)", "REML", 0.3),
    Case(
        "movielens_1m",
        MOVIELENS,
        "rating ~ 1 + (1|user) + (1|item)",
        "REML",
        20.0,
        4.0,
        large=True,
        size=(1_000_000, 1, 2, 3_706),
    ),
    Case(
        "ratings_10m",
        RATINGS_10M,
        "rating ~ 1 + (1|user) + (1|item)",
        "REML",
        300.0,
        8.0,
        large=True,
        size=(10_000_000, 1, 2, 5_000),
    ),
)

BY_NAME = {case.name: case for case in CASES}


def estimated_bytes(case: Case) -> int:
    """Rough peak memory of a fit: the design and its copies (n × (p + Σq + 1) doubles, ×4) plus
    three m × m dense matrices (the second block of A, of L and a scratch copy)."""
    n, p, q_total, m = case.size
    return n * (p + q_total + 1) * 8 * 4 + 3 * m * m * 8
