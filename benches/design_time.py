"""Median time of ``build_design`` (the Python half of a fit: the model frame, the fixed-effects
matrix, the aliasing check and the grouping factors) per benchmark case, warm.

    python benches/design_time.py                                  # the four small/InstEval cases
    python benches/design_time.py --cases sleepstudy --fits 300
    PYTHONPATH=/tmp/interlace-compare/A python benches/design_time.py   # another build

BLAS is kept on one thread, as in ``run.py``. The first five builds of each case are not timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases as grid  # noqa: E402

from interlace.design import build_design  # noqa: E402
from interlace.formula import parse_formula  # noqa: E402

DEFAULT_CASES = "sleepstudy,crossed_20k,insteval_ml,insteval_fixed_reml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated case names")
    parser.add_argument("--fits", type=int, default=50, help="timed builds per case")
    args = parser.parse_args()
    for name in args.cases.split(","):
        case = grid.BY_NAME[name]
        data = case.dataset.make()
        parsed = parse_formula(case.formula)
        seconds = []
        for i in range(args.fits + 5):
            start = time.perf_counter()
            build_design(parsed, data)
            if i >= 5:
                seconds.append(time.perf_counter() - start)
        print(f"{name}: build_design median {statistics.median(seconds) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
