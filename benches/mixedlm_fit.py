"""Time ``mixedlm.lmer`` on one benchmark case; run by ``run.py`` with the Python of a separate
virtualenv that has mixedlm installed (never the project's), one process per case.

    MIXEDLM_PYTHON benches/mixedlm_fit.py DATA.csv FORMULA REML|ML REPEAT FACTOR,COLUMNS

Reads the same CSV as lme4 (factor columns as strings), fits ``repeat`` times with
``LmerControl(calc_derivs=False)`` (lme4's fair setting, as for lme4), timing only the ``lmer``
call (wall clock and process CPU time), and prints key=value lines. Imports nothing from
interlace or the rest of ``benches/``.
"""

from __future__ import annotations

import gc
import sys
import time
import warnings


def main(argv: list[str]) -> None:
    csv, formula, method, n_repeat, factors = argv
    import mixedlm
    import pandas as pd

    factor_columns = [name for name in factors.split(",") if name]
    data = pd.read_csv(csv, dtype={name: str for name in factor_columns})
    control = mixedlm.LmerControl(calc_derivs=False)
    seconds, cpu_seconds = [], []
    for _ in range(int(n_repeat)):
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start, cpu_start = time.perf_counter(), time.process_time()
            model = mixedlm.lmer(formula, data, REML=method == "REML", control=control)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    print("seconds=" + ",".join(f"{s:.6f}" for s in seconds))
    print("cpu_seconds=" + ",".join(f"{s:.6f}" for s in cpu_seconds))
    print(f"n_evals={int(model.function_evals)}")
    print(f"objective={-2.0 * float(model.logLik().value):.10f}")
    print(f"mixedlm_version={mixedlm.__version__}")


if __name__ == "__main__":
    main(sys.argv[1:])
