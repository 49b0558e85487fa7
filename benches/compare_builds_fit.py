"""One round of ``compare_builds.sh``: ``fits`` timed fits of one case with the interlace found
first on PYTHONPATH (after one untimed fit), printed in milliseconds on one line."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases as grid  # noqa: E402

import interlace  # noqa: E402

ALIASES = {"ml": "insteval_ml", "reml": "insteval_fixed_reml"}


def main() -> None:
    case = grid.BY_NAME[ALIASES.get(sys.argv[1], sys.argv[1])]
    fits = int(sys.argv[2])
    data = case.dataset.make()
    warnings.simplefilter("ignore")
    interlace.fit(case.formula, data, method=case.method)
    times = []
    for _ in range(fits):
        start = time.perf_counter()
        interlace.fit(case.formula, data, method=case.method)
        times.append(time.perf_counter() - start)
    print(" ".join(f"{t * 1e3:.2f}" for t in times))


if __name__ == "__main__":
    main()
