"""Small simulated datasets for examples, tests and documentation.

interlace bundles simulated studies only: lme4's own example datasets are GPL licensed, so they
are not redistributed here (the test suite's copies live in ``tests/data/reference`` with their
provenance). Each bundled CSV is the output of a documented, seeded call of a generator in this
package, so it can be regenerated and checked bit for bit.

=================== ======================================================================
``reading_times``   ``simulate_crossed(n_subjects=60, n_items=40, seed=1)``: 2400 trials,
                    subjects × items crossed, condition A/B counterbalanced, rt in ms with
                    a few missing. Model: ``rt ~ condition + (1 + condition | subject) +
                    (1 | item)``.
``students_schools`` ``simulate_nested(n_schools=40, seed=1)``: students nested in 40
                    schools of unequal size, score against weekly homework hours.
                    Model: ``score ~ hours + (1 + hours | school)``.
``ratings``         ``simulate_ratings(n_users=300, n_items=150, n_ratings=6000, seed=1)``:
                    5722 ratings, 1 to 5 stars, of 150 items by 300 users; lognormal user
                    activity and Zipf item popularity, so users × items are crossed but
                    sparse and very unbalanced. Model: ``rating ~ 1 + (1 | user) +
                    (1 | item)``.
=================== ======================================================================

This package never touches the compiled core, so it imports on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from ..exceptions import DataError
from ._simulate import simulate_crossed, simulate_nested, simulate_ratings

__all__ = ["load", "list_datasets", "simulate_crossed", "simulate_nested", "simulate_ratings"]


@dataclass(frozen=True)
class _BundledDataset:
    """A bundled CSV and the seeded call that produced it."""

    generator: Callable[..., pd.DataFrame]
    arguments: dict[str, Any]
    string_columns: tuple[str, ...]
    description: str
    model: str = field(default="")

    def generate(self) -> pd.DataFrame:
        return self.generator(**self.arguments)

    @property
    def call(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
        return f"{self.generator.__name__}({args})"


BUNDLED: dict[str, _BundledDataset] = {
    "reading_times": _BundledDataset(
        generator=simulate_crossed,
        arguments={"n_subjects": 60, "n_items": 40, "seed": 1},
        string_columns=("subject", "item", "condition"),
        description="simulated reading times: 60 subjects x 40 items, condition A/B",
        model="rt ~ condition + (1 + condition | subject) + (1 | item)",
    ),
    "students_schools": _BundledDataset(
        generator=simulate_nested,
        arguments={"n_schools": 40, "seed": 1},
        string_columns=("school", "student"),
        description="simulated test scores of students nested in 40 schools",
        model="score ~ hours + (1 + hours | school)",
    ),
    "ratings": _BundledDataset(
        generator=simulate_ratings,
        arguments={"n_users": 300, "n_items": 150, "n_ratings": 6000, "seed": 1},
        string_columns=("user", "item"),
        description="simulated 1-5 star ratings: 300 users x 150 items, sparse and skewed",
        model="rating ~ 1 + (1 | user) + (1 | item)",
    ),
}


def list_datasets() -> list[str]:
    """Names of the bundled datasets, sorted.

    Examples
    --------
    >>> from interlace.datasets import list_datasets
    >>> list_datasets()
    ['ratings', 'reading_times', 'students_schools']
    """
    return sorted(BUNDLED)


def load(name: str) -> pd.DataFrame:
    """Load a bundled dataset as a fresh :class:`pandas.DataFrame`.

    Grouping and label columns (``subject``, ``item``, ``condition``, ``school``,
    ``student``, ``user``) are read as strings, never as numbers; the response is float with
    NaN where missing.

    Parameters
    ----------
    name : str
        One of :func:`list_datasets`.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    interlace.exceptions.DataError
        If no dataset has that name; the message lists the available ones.

    Examples
    --------
    >>> from interlace.datasets import load
    >>> df = load("reading_times")
    >>> df.shape
    (2400, 4)
    >>> list(df.columns)
    ['subject', 'item', 'condition', 'rt']
    """
    spec = BUNDLED.get(name) if isinstance(name, str) else None
    if spec is None:
        raise DataError(
            f"no bundled dataset named {name!r}; available: {', '.join(list_datasets())}"
        )
    resource = resources.files(__name__).joinpath(f"{name}.csv")
    with resource.open("rb") as handle:
        return pd.read_csv(handle, dtype={column: str for column in spec.string_columns})


def _write_bundled(directory: Path | None = None) -> None:
    """Rewrite every bundled CSV from its documented call (a maintainer's tool)."""
    directory = Path(__file__).resolve().parent if directory is None else Path(directory)
    for name, spec in BUNDLED.items():
        frame = spec.generate()
        frame.to_csv(directory / f"{name}.csv", index=False)
        print(f"wrote {name}.csv ({spec.call}): {frame.shape[0]} rows")
