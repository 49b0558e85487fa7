"""Seeded generators of the simulated studies bundled with interlace.

The generators draw every random quantity from one ``numpy.random.default_rng(seed)`` stream in
a fixed order, using only ``standard_normal``, ``random`` and ``integers`` (no
``multivariate_normal``, whose result depends on the LAPACK build), and round the response to
the precision a real study would record. The same call therefore gives the same frame on every
machine, which is how the bundled CSV files are checked (``tests/test_datasets.py``).

Regenerate the bundled files with
``python -c "from interlace.datasets import _write_bundled; _write_bundled()"``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["simulate_crossed", "simulate_nested", "simulate_ratings"]


def _labels(prefix: str, n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [f"{prefix}{k:0{width}d}" for k in range(1, n + 1)]


def _correlated_pairs(
    rng: np.random.Generator, n: int, sd_first: float, sd_second: float, correlation: float
) -> tuple[np.ndarray, np.ndarray]:
    """n draws of a bivariate normal with the given SDs and correlation, by a hand-written
    2 × 2 Cholesky factor so the stream does not depend on the linear-algebra library."""
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must lie in [-1, 1], got {correlation}")
    z = rng.standard_normal((n, 2))
    first = sd_first * z[:, 0]
    second = sd_second * (correlation * z[:, 0] + math.sqrt(1.0 - correlation**2) * z[:, 1])
    return first, second


def simulate_crossed(
    n_subjects: int = 60,
    n_items: int = 40,
    *,
    log_mean: float = 6.4,
    condition_effect: float = 0.06,
    subject_sd: float = 0.15,
    subject_slope_sd: float = 0.05,
    subject_correlation: float = 0.3,
    item_sd: float = 0.10,
    residual_sd: float = 0.25,
    missing_fraction: float = 0.01,
    seed: int = 1,
) -> pd.DataFrame:
    """Simulate a subjects × items reading-time experiment with a two-level condition.

    Every subject reads every item once. The condition (``"A"`` or ``"B"``) is counterbalanced
    Latin-square style: subject s sees item i in condition B when ``s + i`` is odd, so each
    subject reads half the items in each condition and each item is read in each condition by
    half the subjects (exactly half when both counts are even). On the log scale

        log rt = log_mean + condition_effect·[B] + u_s + v_s·[B] + w_i + ε,

    with subject intercepts u_s and condition slopes v_s bivariate normal (SDs ``subject_sd``,
    ``subject_slope_sd``, correlation ``subject_correlation``), item intercepts
    w_i ~ N(0, item_sd²) and ε ~ N(0, residual_sd²). rt = exp(log rt) is recorded in whole
    milliseconds (about 600 ms with the defaults: right-skewed, as real reading times are),
    and a ``missing_fraction`` of trials, chosen at random, has rt missing (a lost trial).

    Parameters
    ----------
    n_subjects, n_items : int
        Numbers of subjects and items; at least 2 each.
    log_mean : float
        Mean log reading time in condition A (exp(6.4) ≈ 602 ms).
    condition_effect : float
        Effect of condition B on the log scale (0.06 ≈ 6 % slower).
    subject_sd, subject_slope_sd, subject_correlation : float
        SD of the subject intercepts, SD of the subject condition slopes, and their correlation.
    item_sd : float
        SD of the item intercepts.
    residual_sd : float
        SD of the trial-level noise.
    missing_fraction : float
        Probability that a trial's rt is missing.
    seed : int
        Seed of ``numpy.random.default_rng``; the same arguments give the same frame.

    Returns
    -------
    pandas.DataFrame
        ``n_subjects * n_items`` rows sorted by subject then item, with string columns
        ``subject`` (``"s01"``...), ``item`` (``"i01"``...), ``condition`` (``"A"``/``"B"``)
        and float column ``rt`` (ms, NaN where missing).

    Examples
    --------
    The bundled ``reading_times`` dataset is exactly this call:

    >>> from interlace.datasets import simulate_crossed
    >>> df = simulate_crossed(n_subjects=60, n_items=40, seed=1)
    >>> df.shape
    (2400, 4)
    >>> sorted(df["condition"].unique())
    ['A', 'B']
    """
    if n_subjects < 2 or n_items < 2:
        raise ValueError(f"need at least 2 subjects and 2 items, got {n_subjects} and {n_items}")
    if not 0.0 <= missing_fraction < 1.0:
        raise ValueError(f"missing_fraction must lie in [0, 1), got {missing_fraction}")
    rng = np.random.default_rng(seed)
    subject_intercept, subject_slope = _correlated_pairs(
        rng, n_subjects, subject_sd, subject_slope_sd, subject_correlation
    )
    item_intercept = item_sd * rng.standard_normal(n_items)

    s = np.repeat(np.arange(n_subjects), n_items)
    i = np.tile(np.arange(n_items), n_subjects)
    is_b = ((s + i) % 2 == 1).astype(float)
    log_rt = (
        log_mean
        + condition_effect * is_b
        + subject_intercept[s]
        + subject_slope[s] * is_b
        + item_intercept[i]
        + residual_sd * rng.standard_normal(s.size)
    )
    rt = np.round(np.exp(log_rt))
    rt[rng.random(s.size) < missing_fraction] = np.nan

    subjects = np.array(_labels("s", n_subjects), dtype=object)
    items = np.array(_labels("i", n_items), dtype=object)
    return pd.DataFrame(
        {
            "subject": pd.Series(subjects[s].tolist()),
            "item": pd.Series(items[i].tolist()),
            "condition": pd.Series(np.where(is_b == 1.0, "B", "A").tolist()),
            "rt": rt,
        }
    )


def simulate_nested(
    n_schools: int = 40,
    *,
    min_students: int = 10,
    max_students: int = 40,
    intercept: float = 50.0,
    hours_effect: float = 2.0,
    school_sd: float = 5.0,
    school_slope_sd: float = 0.8,
    school_correlation: float = -0.3,
    residual_sd: float = 8.0,
    seed: int = 1,
) -> pd.DataFrame:
    """Simulate students nested in schools: a test score against weekly homework hours.

    School j enrols between ``min_students`` and ``max_students`` students (uniform, so the
    design is unbalanced). Each student's weekly homework hours are gamma distributed
    (shape 4, scale 1.25: mean 5 h, right-skewed) and recorded to 0.1 h; the score is

        score = intercept + hours_effect·hours + a_j + b_j·hours + ε,

    with school intercepts a_j and hour slopes b_j bivariate normal (SDs ``school_sd``,
    ``school_slope_sd``, correlation ``school_correlation``) and ε ~ N(0, residual_sd²),
    recorded to 0.1 point. The model lme4 would fit is
    ``score ~ hours + (1 + hours | school)``.

    Parameters
    ----------
    n_schools : int
        Number of schools; at least 2.
    min_students, max_students : int
        Inclusive range of the number of students per school.
    intercept, hours_effect : float
        Fixed intercept and slope of score on hours.
    school_sd, school_slope_sd, school_correlation : float
        SD of the school intercepts, SD of the school slopes, and their correlation.
    residual_sd : float
        SD of the student-level noise.
    seed : int
        Seed of ``numpy.random.default_rng``; the same arguments give the same frame.

    Returns
    -------
    pandas.DataFrame
        One row per student, sorted by school, with string columns ``school`` (``"sch01"``...)
        and ``student`` (``"sch01-01"``..., unique across schools) and float columns ``hours``
        and ``score``.

    Examples
    --------
    The bundled ``students_schools`` dataset is exactly this call:

    >>> from interlace.datasets import simulate_nested
    >>> df = simulate_nested(n_schools=40, seed=1)
    >>> list(df.columns)
    ['school', 'student', 'hours', 'score']
    """
    if n_schools < 2:
        raise ValueError(f"need at least 2 schools, got {n_schools}")
    if not 1 <= min_students <= max_students:
        raise ValueError(
            f"need 1 <= min_students <= max_students, got {min_students} and {max_students}"
        )
    rng = np.random.default_rng(seed)
    school_intercept, school_slope = _correlated_pairs(
        rng, n_schools, school_sd, school_slope_sd, school_correlation
    )
    sizes = rng.integers(min_students, max_students, size=n_schools, endpoint=True)
    j = np.repeat(np.arange(n_schools), sizes)
    hours = np.round(rng.gamma(4.0, 1.25, size=j.size), 1)
    score = (
        intercept
        + hours_effect * hours
        + school_intercept[j]
        + school_slope[j] * hours
        + residual_sd * rng.standard_normal(j.size)
    )
    schools = _labels("sch", n_schools)
    students = [
        f"{school}-{k:0{max(2, len(str(size)))}d}"
        for school, size in zip(schools, sizes.tolist(), strict=True)
        for k in range(1, size + 1)
    ]
    return pd.DataFrame(
        {
            "school": pd.Series([schools[k] for k in j.tolist()]),
            "student": pd.Series(students),
            "hours": hours,
            "score": np.round(score, 1),
        }
    )


def _weighted_sample_without_replacement(
    rng: np.random.Generator, weights: np.ndarray, k: int
) -> np.ndarray:
    """k distinct indices drawn with probability proportional to ``weights`` (successive
    sampling), by Efraimidis & Spirakis' (2006) keys log(U)/w: the k largest keys are such a
    sample. Only ``rng.random`` is used, so the stream does not depend on numpy's ``choice``."""
    keys = np.log(rng.random(weights.size)) / weights
    return np.sort(np.argsort(-keys, kind="stable")[:k])


def simulate_ratings(
    n_users: int = 300,
    n_items: int = 150,
    n_ratings: int = 6000,
    *,
    activity_sd: float = 1.0,
    popularity_exponent: float = 1.0,
    min_ratings: int = 3,
    mean_rating: float = 3.5,
    user_sd: float = 0.5,
    item_sd: float = 0.4,
    residual_sd: float = 0.9,
    seed: int = 1,
) -> pd.DataFrame:
    """Simulate a sparse users × items table of 1–5 star ratings with skewed participation.

    Real rating data are far from balanced: a few users rate a great deal and most rate little,
    and a few items collect most of the ratings. User u's activity is lognormal,
    a_u = exp(activity_sd·z_u), and u rates

        n_u = clip(round(n_ratings · a_u / Σ a), min_ratings, n_items)

    distinct items, so the total is about ``n_ratings``. Item i (``"i001"`` the most popular)
    has Zipf popularity p_i ∝ i^(−popularity_exponent); each user's items are a weighted
    sample without replacement with weights p_i. Users and items are therefore crossed but
    far from fully: most cells of the users × items table are empty. The rating is

        rating = clip(round(mean_rating + u_u + w_i + ε), 1, 5),

    with user intercepts u_u ~ N(0, user_sd²) (lenient and harsh raters), item intercepts
    w_i ~ N(0, item_sd²) (better and worse items) and ε ~ N(0, residual_sd²). The model
    lme4 would fit is ``rating ~ 1 + (1 | user) + (1 | item)``.

    Parameters
    ----------
    n_users, n_items : int
        Numbers of users and items; at least 2 each.
    n_ratings : int
        Target number of ratings (the realised number differs by rounding and clipping).
    activity_sd : float
        SD of log user activity; larger is more skewed.
    popularity_exponent : float
        Exponent s of the Zipf item popularity i^(−s); 0 makes every item equally popular.
    min_ratings : int
        Every user rates at least this many items (at most ``n_items``).
    mean_rating : float
        Mean of the latent rating before rounding.
    user_sd, item_sd, residual_sd : float
        SDs of the user intercepts, the item intercepts and the rating-level noise.
    seed : int
        Seed of ``numpy.random.default_rng``; the same arguments give the same frame.

    Returns
    -------
    pandas.DataFrame
        One row per rating, sorted by user then item, with string columns ``user``
        (``"u001"``...) and ``item`` (``"i001"``...) and float column ``rating``
        (whole stars, 1 to 5). Users rate each item at most once; an item nobody sampled does
        not appear.

    Examples
    --------
    The bundled ``ratings`` dataset is exactly this call:

    >>> from interlace.datasets import simulate_ratings
    >>> df = simulate_ratings(n_users=300, n_items=150, n_ratings=6000, seed=1)
    >>> list(df.columns)
    ['user', 'item', 'rating']
    >>> sorted(df["rating"].unique().tolist())
    [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    if n_users < 2 or n_items < 2:
        raise ValueError(f"need at least 2 users and 2 items, got {n_users} and {n_items}")
    if not 1 <= min_ratings <= n_items:
        raise ValueError(f"need 1 <= min_ratings <= n_items, got {min_ratings} and {n_items}")
    if n_ratings < 1:
        raise ValueError(f"n_ratings must be positive, got {n_ratings}")
    rng = np.random.default_rng(seed)
    activity = np.exp(activity_sd * rng.standard_normal(n_users))
    counts = np.clip(
        np.round(n_ratings * activity / activity.sum()).astype(np.int64), min_ratings, n_items
    )
    popularity = np.arange(1, n_items + 1, dtype=float) ** -popularity_exponent
    user_intercept = user_sd * rng.standard_normal(n_users)
    item_intercept = item_sd * rng.standard_normal(n_items)

    u = np.repeat(np.arange(n_users), counts)
    i = np.concatenate(
        [_weighted_sample_without_replacement(rng, popularity, int(k)) for k in counts]
    )
    latent = (
        mean_rating
        + user_intercept[u]
        + item_intercept[i]
        + residual_sd * rng.standard_normal(u.size)
    )
    rating = np.clip(np.round(latent), 1.0, 5.0)

    users = np.array(_labels("u", n_users), dtype=object)
    items = np.array(_labels("i", n_items), dtype=object)
    return pd.DataFrame(
        {
            "user": pd.Series(users[u].tolist()),
            "item": pd.Series(items[i].tolist()),
            "rating": rating,
        }
    )
