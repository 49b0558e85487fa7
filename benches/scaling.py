"""How one objective evaluation scales: the time of ``model.objective(θ)`` as one dimension of a
design grows and the others stay fixed.

    python benches/scaling.py

Three series, each built with the seeded generators of ``generate.py`` and the same private
stage functions ``interlace.fit`` uses (``build_design``, ``_core_model``); θ is lme4's start
(1 on the diagonals), the median of repeated calls is reported:

- rows per pair of levels: ``subjects_items`` with 2,000 subjects × 500 items and 25 ... 200
  items per subject (n from 50,000 to 400,000; the dense second block stays 500 × 500);
- the dense second block: ``crossed_balanced`` with 2,000 levels of ``a`` and m = 250 ... 2,000
  levels of ``b``, 100 rows per level of ``a``;
- rows per group: ``many_groups`` with 125,000 groups and 4 ... 32 rows each.

A time that stays flat along a series does not depend on that dimension; one that doubles with
it is linear in it; one that grows eightfold when m doubles is the dense Cholesky.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate  # noqa: E402

from interlace.api import _core_model  # noqa: E402
from interlace.design import build_design  # noqa: E402
from interlace.formula import parse_formula  # noqa: E402


def objective_seconds(formula: str, data, calls: int = 21) -> tuple[float, int]:
    design = build_design(parse_formula(formula), data)
    model = _core_model(design, reml=True)
    theta = model.theta_start
    model.objective(theta)
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        model.objective(theta)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), sum(t.n_levels * t.q for t in design.terms[1:])


def main() -> None:
    print("| series | setting | rows | dense block m | objective (one call) |")
    print("|---|---|---|---|---|")
    for per_subject in (25, 50, 100, 200):
        data = generate.subjects_items(2000, 500, per_subject)
        seconds, m = objective_seconds("y ~ condition + (1|subject) + (1|item)", data)
        print(
            f"| subjects_items | {per_subject} items per subject | {len(data):,} | {m:,} "
            f"| {seconds * 1000:.2f} ms |"
        )
    for n_b in (250, 500, 1000, 2000):
        data = generate.crossed_balanced(2000, n_b, 200_000)
        seconds, m = objective_seconds("y ~ x + (1|a) + (1|b)", data)
        print(
            f"| crossed_balanced | 2,000 × {n_b:,} | {len(data):,} | {m:,} "
            f"| {seconds * 1000:.2f} ms |"
        )
    for rows in (4, 8, 16, 32):
        data = generate.many_groups(125_000, rows)
        seconds, m = objective_seconds("y ~ x + (1 + x|g)", data)
        print(
            f"| many_groups | 125,000 groups × {rows} rows | {len(data):,} | {m:,} "
            f"| {seconds * 1000:.2f} ms |"
        )


if __name__ == "__main__":
    main()
