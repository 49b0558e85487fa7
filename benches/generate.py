"""Seeded generators of the large designs in the benchmark grid.

Every generator draws from one ``numpy.random.default_rng(seed)`` stream in a fixed order, so the
same call gives the same frame on every machine and the same data reach interlace (generated in
the worker process), lme4 and mixedlm (both read the CSV that ``run.py`` writes from the same
call). Grouping factors are pandas categoricals with string labels (``"u000001"``...), so a
frame of 10⁷ rows holds two int32 code arrays rather than 2 × 10⁷ Python strings; interlace,
lme4 (``read.csv`` with ``colClasses = "character"``, then ``factor``) and mixedlm all treat them
as factors.

==================== ==========================================================================
``crossed_balanced`` a × b crossed, every level of ``a`` seen equally often and the levels of
                     ``b`` as evenly as the counts allow: ``y ~ x + (1|a) + (1|b)``.
``crossed_skewed``   ratings-like: users' activity lognormal, items' popularity Zipf, each
                     (user, item) pair at most once: ``rating ~ 1 + (1|user) + (1|item)``.
``subjects_items``   a subjects × items experiment, each subject sees a random subset of the
                     items, condition A/B within subjects and within items.
``many_groups``      many small groups with a correlated random intercept and slope.
==================== ==========================================================================

Run ``python benches/generate.py`` to print a summary of each design in the grid.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["crossed_balanced", "crossed_skewed", "subjects_items", "many_groups"]


def _categorical(codes: np.ndarray, prefix: str, n_levels: int) -> pd.Categorical:
    width = len(str(n_levels))
    labels = [f"{prefix}{k:0{width}d}" for k in range(1, n_levels + 1)]
    return pd.Categorical.from_codes(codes.astype(np.int32), categories=labels)


def _correlated_pairs(
    rng: np.random.Generator, n: int, sd_first: float, sd_second: float, correlation: float
) -> tuple[np.ndarray, np.ndarray]:
    """n bivariate normal draws by a hand-written 2 × 2 Cholesky factor (no LAPACK)."""
    z = rng.standard_normal((n, 2))
    first = sd_first * z[:, 0]
    second = sd_second * (correlation * z[:, 0] + math.sqrt(1.0 - correlation**2) * z[:, 1])
    return first, second


def crossed_balanced(
    n_a: int = 250,
    n_b: int = 100,
    n_rows: int = 20_000,
    *,
    a_sd: float = 1.0,
    b_sd: float = 0.5,
    slope: float = 0.3,
    residual_sd: float = 1.0,
    seed: int = 1,
) -> pd.DataFrame:
    """A balanced crossed design: every level of ``a`` has ``n_rows / n_a`` rows, each with a
    different level of ``b``; level k of ``a`` sees the ``n_rows / n_a`` levels of ``b`` that
    follow a cyclic offset o_k, and the offsets are spread so that every level of ``b`` is seen
    ``n_rows / n_b`` times when that is a whole number (250 × 100 with 20,000 rows: 80 rows per
    ``a``, 200 per ``b``).

        y = 1 + slope·x + a_k + b_l + ε,   x, ε ~ N(0, 1), a_k ~ N(0, a_sd²), b_l ~ N(0, b_sd²).
    """
    per_a, remainder = divmod(n_rows, n_a)
    if remainder or per_a > n_b:
        raise ValueError(f"n_rows must be n_a × k with k ≤ n_b, got {n_rows} rows, {n_a} × k")
    rng = np.random.default_rng(seed)
    a_effect = a_sd * rng.standard_normal(n_a)
    b_effect = b_sd * rng.standard_normal(n_b)
    # Offsets o_k = floor(k · n_b / n_a): consecutive windows of b-levels, evenly spread.
    offsets = (np.arange(n_a) * n_b) // n_a
    a = np.repeat(np.arange(n_a), per_a)
    b = (offsets[a] + np.tile(np.arange(per_a), n_a)) % n_b
    x = rng.standard_normal(n_rows)
    y = 1.0 + slope * x + a_effect[a] + b_effect[b] + residual_sd * rng.standard_normal(n_rows)
    return pd.DataFrame(
        {
            "a": _categorical(a, "a", n_a),
            "b": _categorical(b, "b", n_b),
            "x": np.round(x, 4),
            "y": np.round(y, 4),
        }
    )


def _user_counts(
    rng: np.random.Generator,
    n_users: int,
    n_rows: int,
    activity_sigma: float,
    min_per_user: int,
    max_per_user: int,
) -> np.ndarray:
    """Rows per user: ``min_per_user`` each plus a multinomial share of the rest proportional to
    a lognormal activity, capped at ``max_per_user`` (the excess is dealt again among the
    others)."""
    if n_users * min_per_user > n_rows or n_users * max_per_user < n_rows:
        raise ValueError(
            f"cannot deal {n_rows} rows to {n_users} users, [{min_per_user}, {max_per_user}] each"
        )
    activity = rng.lognormal(0.0, activity_sigma, n_users)
    counts = np.full(n_users, min_per_user, dtype=np.int64)
    left = n_rows - counts.sum()
    while left > 0:
        open_ = counts < max_per_user
        weights = np.where(open_, activity, 0.0)
        counts += rng.multinomial(left, weights / weights.sum())
        counts = np.minimum(counts, max_per_user)
        left = n_rows - counts.sum()
    return counts


def _distinct_items(
    rng: np.random.Generator,
    counts: np.ndarray,
    popularity: np.ndarray,
    rank_to_item: np.ndarray,
    rejection_rounds: int = 8,
) -> np.ndarray:
    """Sorted codes user · n_items + item: ``counts[u]`` distinct items for user u, drawn without
    replacement in proportion to ``popularity`` (of the ranks; ``rank_to_item`` maps rank to
    item).

    A few rounds of rejection (draw the missing pairs with replacement, discard repeats) finish
    the light users; the heavy users still short of items then get the rest by Gumbel top-k over
    the items they do not have yet, which continues the same successive sampling exactly.
    """
    n_users, n_items = counts.size, popularity.size
    item_popularity = np.empty(n_items)
    item_popularity[rank_to_item] = popularity
    pairs = np.empty(0, dtype=np.int64)
    need_user = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    for _ in range(rejection_rounds):
        items = rank_to_item[rng.choice(n_items, size=need_user.size, p=popularity)]
        pairs = np.unique(np.concatenate([pairs, need_user * n_items + items]))
        deficit = counts - np.bincount(pairs // n_items, minlength=n_users)
        if not deficit.any():
            return pairs
        need_user = np.repeat(np.arange(n_users, dtype=np.int64), deficit)
    short = np.flatnonzero(deficit)
    log_popularity = np.log(item_popularity)
    extra = []
    for start in range(0, short.size, 1024):
        users = short[start : start + 1024]
        keys = log_popularity + rng.gumbel(size=(users.size, n_items))
        have = pairs[np.isin(pairs // n_items, users)]
        rows = np.searchsorted(users, have // n_items)
        keys[rows, have % n_items] = -np.inf
        order = np.argsort(-keys, axis=1)
        for row, user in enumerate(users.tolist()):
            extra.append(user * n_items + order[row, : deficit[user]])
    return np.sort(np.concatenate([pairs, *extra]))


def crossed_skewed(
    n_users: int = 6040,
    n_items: int = 3706,
    n_rows: int = 1_000_000,
    *,
    activity_sigma: float = 1.0,
    zipf_exponent: float = 1.0,
    min_per_user: int = 20,
    mean: float = 3.5,
    user_sd: float = 0.4,
    item_sd: float = 0.5,
    residual_sd: float = 0.9,
    seed: int = 1,
) -> pd.DataFrame:
    """Ratings-like crossed data: a few users rate a great deal and a few items are rated by
    almost everyone, as in MovieLens (6,040 users × 3,706 items, 10⁶ ratings by default).

    User u rates ``min_per_user`` items plus a multinomial share of the remaining rows in
    proportion to a lognormal activity exp(N(0, activity_sigma²)), at most half the items.
    Item popularity is Zipf: the item of popularity rank r is drawn with probability ∝
    r^(−zipf_exponent), the ranks assigned to items by a random permutation. Each user's items
    are drawn without replacement in proportion to popularity (successive sampling, see
    ``_distinct_items``), so no (user, item) pair repeats.

        rating = mean + u_user + v_item + ε, rounded to 0.01,

    with u ~ N(0, user_sd²), v ~ N(0, item_sd²), ε ~ N(0, residual_sd²). Rows are sorted by user
    then item. Model: ``rating ~ 1 + (1 | user) + (1 | item)``.
    """
    rng = np.random.default_rng(seed)
    counts = _user_counts(rng, n_users, n_rows, activity_sigma, min_per_user, n_items // 2)
    popularity = np.arange(1, n_items + 1, dtype=np.float64) ** -zipf_exponent
    popularity /= popularity.sum()
    rank_to_item = rng.permutation(n_items)

    pairs = _distinct_items(rng, counts, popularity, rank_to_item)
    user = pairs // n_items
    item = pairs % n_items

    user_effect = user_sd * rng.standard_normal(n_users)
    item_effect = item_sd * rng.standard_normal(n_items)
    noise = residual_sd * rng.standard_normal(n_rows)
    rating = mean + user_effect[user] + item_effect[item] + noise
    return pd.DataFrame(
        {
            "user": _categorical(user, "u", n_users),
            "item": _categorical(item, "i", n_items),
            "rating": np.round(rating, 2),
        }
    )


def subjects_items(
    n_subjects: int = 2000,
    n_items: int = 500,
    items_per_subject: int = 100,
    *,
    log_mean: float = 6.4,
    condition_effect: float = 0.06,
    subject_sd: float = 0.15,
    subject_slope_sd: float = 0.05,
    subject_correlation: float = 0.3,
    item_sd: float = 0.10,
    residual_sd: float = 0.25,
    seed: int = 1,
) -> pd.DataFrame:
    """A subjects × items experiment in which each subject sees ``items_per_subject`` items
    chosen at random (so each item is seen by about n_subjects · items_per_subject / n_items
    subjects), condition B when subject + item index is odd: within subjects and within items.
    The response is on the log scale of ``interlace.datasets.simulate_crossed``:

        y = log_mean + condition_effect·[B] + u_s + v_s·[B] + w_i + ε.

    Models: ``y ~ condition + (1|subject) + (1|item)`` and
    ``y ~ condition + (1 + condition|subject) + (1|item)``.
    """
    rng = np.random.default_rng(seed)
    subject_intercept, subject_slope = _correlated_pairs(
        rng, n_subjects, subject_sd, subject_slope_sd, subject_correlation
    )
    item_intercept = item_sd * rng.standard_normal(n_items)
    # Each subject's items: the first items_per_subject of a random permutation, in order.
    keys = rng.random((n_subjects, n_items))
    first = np.argpartition(keys, items_per_subject - 1, axis=1)[:, :items_per_subject]
    chosen = np.sort(first, axis=1)
    subject = np.repeat(np.arange(n_subjects), items_per_subject)
    item = chosen.ravel()
    is_b = ((subject + item) % 2 == 1).astype(np.float64)
    y = (
        log_mean
        + condition_effect * is_b
        + subject_intercept[subject]
        + subject_slope[subject] * is_b
        + item_intercept[item]
        + residual_sd * rng.standard_normal(subject.size)
    )
    return pd.DataFrame(
        {
            "subject": _categorical(subject, "s", n_subjects),
            "item": _categorical(item, "i", n_items),
            "condition": pd.Categorical.from_codes(is_b.astype(np.int8), categories=["A", "B"]),
            "y": np.round(y, 4),
        }
    )


def many_groups(
    n_groups: int = 125_000,
    rows_per_group: int = 4,
    *,
    intercept: float = 1.0,
    slope: float = 0.5,
    intercept_sd: float = 1.0,
    slope_sd: float = 0.5,
    correlation: float = 0.3,
    residual_sd: float = 1.0,
    seed: int = 1,
) -> pd.DataFrame:
    """Many small groups (125,000 × 4 rows by default), x ~ N(0, 1) per row:

        y = intercept + slope·x + a_g + b_g·x + ε,   (a_g, b_g) bivariate normal.

    Model: ``y ~ x + (1 + x | g)``.
    """
    rng = np.random.default_rng(seed)
    a, b = _correlated_pairs(rng, n_groups, intercept_sd, slope_sd, correlation)
    g = np.repeat(np.arange(n_groups), rows_per_group)
    x = rng.standard_normal(g.size)
    y = intercept + slope * x + a[g] + b[g] * x + residual_sd * rng.standard_normal(g.size)
    return pd.DataFrame(
        {"g": _categorical(g, "g", n_groups), "x": np.round(x, 4), "y": np.round(y, 4)}
    )


def _describe(name: str, frame: pd.DataFrame) -> str:
    parts = [f"{name}: {len(frame):,} rows"]
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype) and column != "condition":
            sizes = frame[column].value_counts()
            parts.append(
                f"{column} {sizes.size:,} levels (rows per level min {sizes.min()}, "
                f"median {int(sizes.median())}, max {sizes.max()})"
            )
    return "; ".join(parts)


if __name__ == "__main__":
    print(_describe("crossed_balanced()", crossed_balanced()))
    print(_describe("subjects_items()", subjects_items()))
    print(_describe("many_groups()", many_groups()))
    print(_describe("crossed_skewed()", crossed_skewed()))
