"""Time exact deletion diagnostics, the parametric bootstrap and profile intervals against lme4.

    python benches/diagnostics.py                    # everything, lme4 included (about 25 min)
    python benches/diagnostics.py --skip-lme4        # interlace only
    python benches/diagnostics.py --skip-insteval --repeat 3

The "done when" benchmarks of issue 3 (exact case deletion, ≥ 50× faster than lme4) and issue 4
(bootstrap and profile intervals), in one run, so that the ratios compare like with like:

- exact deletion (``interlace.hlm_influence(res, level, approx=False)``, every refit) of each
  observation of sleepstudy (180 refits), each school of Exam (65) and each lecturer ``d`` of
  InstEval (1,128), against lme4 refitting ``lmer(formula, data = data[-rows, ])`` in a loop.
  lme4 on all 1,128 lecturers would take hours: it refits the first ``--lme4-lecturers`` (3) and
  the table gives its time per refit and, labelled as such, that time × 1,128;
- 1,000 parametric bootstrap replicates on sleepstudy (``res.bootstrap``) against
  ``bootMer(m, FUN = function(x) c(fixef(x), getME(x, "theta"), sigma(x)), nsim, seed)``;
- profile intervals on sleepstudy (``res.confint(method="profile")``) against
  ``confint(m, method = "profile")``.

The models and data are the test suite's lme4 reference fixtures (``tests/data/reference``):
each CSV is read as ``tests/conftest.py`` reads it (the fixture's ``factor_columns`` as
strings), and ``lme4_diagnostics.R`` reads the same CSV with the same columns as factors. Both
fit the full model first (not timed) and the table beside the timings gives both −2 log L.

interlace runs in this process with ``n_jobs`` worker threads (``--n-jobs``, default 2) after
one untimed warm-up; the time is the whole public call (for ``hlm_influence``, the refits and
the leverage column it adds), wall clock and process CPU time (all threads), median over
``--repeat`` calls, each on a freshly fitted result (exact refits are cached on a result). lme4
runs in one ``Rscript`` per task (single-threaded, reference BLAS), which fits the full model
and then times only the task with ``system.time``, median over ``--repeat`` runs too. The
InstEval deletion is timed once on both sides whatever ``--repeat`` says. Every lme4 fit uses
``lmerControl(calc.derivs = FALSE)``, as ``run.py`` does (see the R script). Beside the target
loop, which starts each refit from lme4's default θ, the deletion rows also time lme4
started from θ̂, as interlace's refits are.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import THREAD_VARIABLES, _build, _has_lme4, _key_values, _seconds, machine  # noqa: E402
from run import run_child as _run_child  # noqa: E402

HERE = Path(__file__).resolve().parent
REFERENCE_DIR = HERE.parent / "tests" / "data" / "reference"
DELETION_TARGET = 50.0  # issue 3: exact deletion ≥ 50× faster than lme4's refitting loop


# --------------------------------------------------------------------------------------------
# The models: lme4 reference fixtures of the test suite.


@dataclass(frozen=True)
class Model:
    """One reference fixture: its lme4 formula, method, CSV and factor columns."""

    key: str
    formula: str
    method: str
    csv: Path
    factors: tuple[str, ...]

    @classmethod
    def from_reference(cls, case_id: str) -> Model:
        reference = json.loads((REFERENCE_DIR / f"{case_id}.json").read_text())
        return cls(
            case_id,
            reference["lme4_formula"],
            reference["method"],
            REFERENCE_DIR / "data" / f"{reference['dataset']}.csv",
            tuple(reference["factor_columns"]),
        )

    def data(self) -> pd.DataFrame:
        """The CSV as ``tests/conftest.py`` reads it: factor and text columns as strings."""
        frame = pd.read_csv(self.csv)
        for column in frame.columns:
            values = frame[column]
            if column in self.factors or values.dtype == object:
                frame[column] = values.astype("string").astype(object).where(values.notna(), None)
        return frame

    def fit(self, data: pd.DataFrame):
        import interlace

        return interlace.fit(self.formula, data, method=self.method)


SLEEPSTUDY = Model.from_reference("sleepstudy_slopes")
EXAM = Model.from_reference("exam_slopes")
INSTEVAL = Model.from_reference("insteval_crossed_ml")


# --------------------------------------------------------------------------------------------
# Measurements.


@dataclass
class Timing:
    """Wall clock and CPU seconds of one task, or why there are none."""

    status: str = "ok"  # "ok", "skipped", "error", "timeout"
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    message: str = ""

    @property
    def wall(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_seconds) if self.cpu_seconds else math.nan


def time_interlace(model: Model, data: pd.DataFrame, call: Callable, repeat: int) -> Timing:
    """``call(result)`` on a fresh fit ``repeat`` times (the fit is not timed); the last
    call's return value is kept in ``extra["value"]``."""
    timing = Timing()
    caught: set[str] = set()
    for _ in range(repeat):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = model.fit(data)
        gc.collect()
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            start, cpu_start = time.perf_counter(), time.process_time()
            value = call(result)
            timing.seconds.append(time.perf_counter() - start)
            timing.cpu_seconds.append(time.process_time() - cpu_start)
        caught.update(f"{type(r.message).__name__}: {r.message}" for r in records)
    timing.extra = {"value": value, "result": result, "warnings": sorted(caught)}
    return timing


def time_lme4(model: Model, task: list[str], args, repeat: int) -> Timing:
    """One ``lme4_diagnostics.R`` run, timing the task ``repeat`` times; its key=value lines
    in ``extra``."""
    command = [
        "Rscript",
        str(HERE / "lme4_diagnostics.R"),
        str(model.csv),
        model.formula,
        model.method,
        ",".join(model.factors),
        str(repeat),
        *task,
    ]
    child = _run_child(command, args.timeout, dict(os.environ))
    values = _key_values(child.stdout)
    if child.status != "ok" or "seconds" not in values:
        lines = [line for line in (child.stderr + child.stdout).splitlines() if line.strip()]
        return Timing(child.status, message=lines[-1][:200] if lines else "")
    return Timing(
        "ok", list(_floats(values["seconds"])), list(_floats(values["cpu_seconds"])), values
    )


def _floats(text: str) -> np.ndarray:
    return np.array([float(x) for x in text.split(",")], dtype=float)


# --------------------------------------------------------------------------------------------
# The tasks.


@dataclass
class Row:
    """One line of the table: a task timed in interlace and (maybe) lme4."""

    task: str
    model: Model
    refits: int  # refits (deletion), replicates (bootstrap) or intervals (profile)
    unit: str
    ours: Timing
    lme4: Timing | None = None  # the target's loop (lme4's default start)
    lme4_warm: Timing | None = None  # deletion only: lme4 started from θ̂
    lme4_refits: int | None = None  # when lme4 refits only the first cases
    evals: str = ""  # deletion only: mean optimiser evaluations per refit
    target: float | None = None
    check: str = ""  # how the two outputs agree


def _deletion_check(frame: pd.DataFrame, lme4: Timing | None) -> str:
    """Largest relative difference of Cook's distance, interlace against lme4's refits."""
    if lme4 is None or lme4.status != "ok":
        return ""
    labels = lme4.extra["labels"].split(",")
    theirs = _floats(lme4.extra["cooksd"])
    ours = frame["cooksd"].to_numpy(dtype=float)
    index = [str(label) for label in frame.index]
    ours = ours[[index.index(label) for label in labels]]
    scale = max(float(np.max(np.abs(theirs))), 1e-300)
    return (
        f"Cook's D: max |Δ| {np.max(np.abs(ours - theirs)):.1e} "
        f"(max Cook's D {scale:.2g}) over {len(labels)} cases"
    )


def deletion(model: Model, level: object, args, limit: int = 0) -> Row:
    import interlace

    data = model.data()
    name = "observations" if level == 1 else f"levels of {level}"
    repeat = 1 if limit else args.repeat
    print(f"{model.key}: exact deletion of {name}, interlace ...", end="", flush=True)

    def call(result):
        return interlace.hlm_influence(
            result, level=level, approx=False, n_jobs=args.n_jobs, progress=False
        )

    ours = time_interlace(model, data, call, repeat)
    frame = ours.extra["value"]
    # The refits' evaluations, from the cache of exact refits that hlm_influence leaves on the
    # result (private: a benchmark's look inside, as run.py's --stages).
    from interlace.influence import _state

    group = None if level == 1 else level
    evals = float(np.mean(_state(ours.extra["result"]).exact[group]["n_evals"]))
    print(f" {_seconds(ours.wall)} ({len(frame)} refits, {evals:.1f} evals each)", flush=True)
    row = Row(f"exact deletion, {name}", model, len(frame), "refits", ours, target=DELETION_TARGET)
    row.evals = f"{evals:.1f}"
    if args.skip_lme4:
        return row
    for start in ("default", "theta"):
        print(f"{model.key}: lme4 deletion loop, start {start} ...", end="", flush=True)
        timing = time_lme4(model, ["delete", str(level), str(limit), start], args, repeat)
        print(f" {_cell(timing)}" + (f" {timing.message}" if timing.message else ""), flush=True)
        if start == "default":
            row.lme4 = timing
        else:
            row.lme4_warm = timing
    if row.lme4.status == "ok":
        row.lme4_refits = int(row.lme4.extra["n_refits"])
    row.evals += " / " + " / ".join(
        t.extra["mean_evals"] if t.status == "ok" else "–" for t in (row.lme4, row.lme4_warm)
    )
    row.check = _deletion_check(frame, row.lme4)
    return row


def bootstrap(model: Model, args) -> Row:
    data = model.data()
    print(f"{model.key}: bootstrap × {args.nsim}, interlace ...", end="", flush=True)

    def call(result):
        return result.bootstrap(args.nsim, seed=1, n_jobs=args.n_jobs, progress=False)

    ours = time_interlace(model, data, call, args.repeat)
    print(f" {_seconds(ours.wall)}", flush=True)
    row = Row("parametric bootstrap", model, args.nsim, "replicates", ours)
    if args.skip_lme4:
        return row
    print(f"{model.key}: lme4 bootMer × {args.nsim} ...", end="", flush=True)
    row.lme4 = time_lme4(model, ["bootstrap", str(args.nsim), "1"], args, args.repeat)
    print(f" {_cell(row.lme4)}" + (f" {row.lme4.message}" if row.lme4.message else ""))
    if row.lme4.status == "ok":
        boot = ours.extra["value"]
        # lme4's FUN: fixef, then θ, then σ; the replicates' standard deviations of each.
        draws = np.column_stack([boot.beta, boot.theta, boot.sigma])
        ok = np.all(np.isfinite(draws), axis=1)
        ours_sd = draws[ok].std(axis=0, ddof=1)
        theirs_sd = _floats(row.lme4.extra["boot_sd"])
        names = row.lme4.extra["statistics"].split(",")
        ratio = ours_sd / theirs_sd
        worst = int(np.argmax(np.abs(ratio - 1.0)))
        row.check = (
            f"replicate SDs (interlace ÷ lme4) {ratio.min():.3f} to {ratio.max():.3f} "
            f"(furthest: {names[worst]}); failed refits {int((~ok).sum())} / "
            f"{row.lme4.extra['n_failed']}"
        )
    return row


def profile(model: Model, args) -> Row:
    data = model.data()
    print(f"{model.key}: profile intervals, interlace ...", end="", flush=True)
    ours = time_interlace(model, data, lambda result: result.confint(method="profile"), args.repeat)
    print(f" {_seconds(ours.wall)}", flush=True)
    intervals = ours.extra["value"]
    row = Row("profile intervals", model, len(intervals), "intervals", ours)
    if args.skip_lme4:
        return row
    print(f"{model.key}: lme4 confint(method = 'profile') ...", end="", flush=True)
    row.lme4 = time_lme4(model, ["profile"], args, args.repeat)
    print(f" {_cell(row.lme4)}" + (f" {row.lme4.message}" if row.lme4.message else ""))
    if row.lme4.status == "ok":
        # lme4's rows: .sig01, .sig02, ... (sd, cor, ...), .sigma, then β: interlace's order.
        theirs = np.column_stack(
            [_floats(row.lme4.extra["lower"]), _floats(row.lme4.extra["upper"])]
        )
        ours_values = intervals.to_numpy(dtype=float)
        width = theirs[:, 1] - theirs[:, 0]
        relative = np.max(np.abs(ours_values - theirs), axis=1) / width
        worst = int(np.argmax(relative))
        row.check = (
            f"limits: max |Δ| {relative.max():.1e} of the interval's width "
            f"({intervals.index[worst]})"
        )
    return row


# --------------------------------------------------------------------------------------------
# The table.


def _cell(timing: Timing | None) -> str:
    if timing is None:
        return "–"
    return _seconds(timing.wall) if timing.status == "ok" else timing.status


def _ratio(theirs: float, ours: float) -> str:
    if math.isnan(theirs) or math.isnan(ours):
        return "–"
    return f"{theirs / ours:.3g}×"


def _lme4_seconds(row: Row, timing: Timing | None) -> tuple[float, float, str]:
    """lme4's wall and CPU seconds for all of the row's refits, and how they were found:
    measured, or (when lme4 refitted only the first cases) per refit × refits."""
    if timing is None or timing.status != "ok":
        return math.nan, math.nan, _cell(timing)
    done = int(timing.extra.get("n_refits", row.refits))
    if done == row.refits:
        return timing.wall, timing.cpu, _seconds(timing.wall)
    scale = row.refits / done
    per_refit = timing.wall / done
    text = (
        f"{_seconds(timing.wall)} for the first {done} "
        f"({_seconds(per_refit)} / refit); **extrapolated** × {row.refits:,}: "
        f"{_seconds(timing.wall * scale)}"
    )
    return timing.wall * scale, timing.cpu * scale, text


def _verdict(row: Row, wall_ratio: float, cpu_ratio: float) -> str:
    if row.target is None:
        return "–"
    if math.isnan(wall_ratio):
        return "not measured"
    words = "met" if wall_ratio >= row.target else f"**missed** ({wall_ratio / row.target:.2g}×)"
    if row.lme4_refits is not None and row.lme4_refits < row.refits:
        words += ", extrapolated"
    if (wall_ratio >= row.target) != (cpu_ratio >= row.target):
        words += f"; by CPU time {'met' if cpu_ratio >= row.target else 'missed'}"
    return words


def table(rows: list[Row], with_lme4: bool) -> str:
    header = ["task", "model", "size", "interlace", "CPU"]
    if with_lme4:
        header += [
            "evals / refit (interlace / lme4 / lme4 from θ̂)",
            "lme4",
            "lme4 CPU",
            "lme4 ÷ interlace (wall / CPU)",
            "lme4 from θ̂",
            "lme4 from θ̂ ÷ interlace (wall)",
            "target",
            "verdict",
        ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.task,
            f"`{row.model.key}`",
            f"{row.refits:,} {row.unit}",
            _seconds(row.ours.wall),
            _seconds(row.ours.cpu),
        ]
        if with_lme4:
            wall, cpu, text = _lme4_seconds(row, row.lme4)
            wall_ratio, cpu_ratio = wall / row.ours.wall, cpu / row.ours.cpu
            warm_wall, _, warm_text = _lme4_seconds(row, row.lme4_warm)
            cells += [
                row.evals or "–",
                text,
                _seconds(cpu),
                f"{_ratio(wall, row.ours.wall)} / {_ratio(cpu, row.ours.cpu)}",
                warm_text if row.lme4_warm is not None else "–",
                _ratio(warm_wall, row.ours.wall) if row.lme4_warm is not None else "–",
                f"≥ {row.target:g}×" if row.target else "–",
                _verdict(row, wall_ratio, cpu_ratio),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fits_table(rows: list[Row]) -> str:
    """−2 log L of each model's full-data fit, interlace and lme4."""
    lines = [
        "| model | formula | method | −2 log L interlace | −2 log L lme4 | Δ |",
        "|---|---|---|---|---|---|",
    ]
    seen: set[str] = set()
    for row in rows:
        if row.model.key in seen:
            continue
        seen.add(row.model.key)
        ours = -2.0 * float(row.ours.extra["result"].llf)
        formula = row.model.formula.replace("|", "\\|")  # a bar would end the table cell
        theirs_text = (row.lme4.extra.get("objective") if row.lme4 is not None else None) or ""
        theirs = float(theirs_text) if theirs_text else math.nan
        lines.append(
            f"| `{row.model.key}` | `{formula}` | {row.model.method} | {ours:.6f} | "
            + (f"{theirs:.6f} | {ours - theirs:+.1e} |" if theirs_text else "– | – |")
        )
    return "\n".join(lines)


def checks(rows: list[Row]) -> str:
    lines = []
    for row in rows:
        notes = [row.check] if row.check else []
        notes += row.ours.extra.get("warnings", [])
        for timing, what in ((row.lme4, "lme4"), (row.lme4_warm, "lme4 from θ̂")):
            if timing is not None and timing.status == "ok" and timing.extra.get("n_warnings"):
                if timing.extra["n_warnings"] != "0":
                    notes.append(f"{what}: {timing.extra['n_warnings']} warnings")
        if notes:
            lines.append(f"- {row.task}, `{row.model.key}`: " + "; ".join(notes))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-lme4", action="store_true", help="time interlace only")
    parser.add_argument("--skip-insteval", action="store_true", help="leave out InstEval")
    parser.add_argument(
        "--repeat", type=int, default=1, help="timed runs per task and tool (median; InstEval: 1)"
    )
    parser.add_argument("--n-jobs", type=int, default=2, help="interlace's worker threads")
    parser.add_argument("--nsim", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument(
        "--lme4-lecturers", type=int, default=3, help="InstEval lecturers lme4 refits without"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per lme4 task")
    parser.add_argument("--out", type=Path, help="write the markdown tables to this file")
    args = parser.parse_args()
    if not args.skip_lme4 and not _has_lme4(dict(os.environ)):
        parser.error("Rscript with lme4 not found: install it or pass --skip-lme4")

    import interlace

    print(f"machine: {machine()}")
    print(
        f"interlace {interlace.__version__}, Python {platform.python_version()}; "
        + ", ".join(f"{v}={os.environ[v]}" for v in THREAD_VARIABLES)
        + f"; n_jobs={args.n_jobs}"
    )
    print(f"build: {_build()}; {Path(interlace.__file__).parent}")
    print("command: python benches/diagnostics.py " + " ".join(sys.argv[1:]))
    print(
        "load average (1, 5, 15 min) at start: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        flush=True,
    )

    # Warm-up, not timed: imports, formulaic's first use, the core's thread pool.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm = SLEEPSTUDY.fit(SLEEPSTUDY.data())
        interlace.hlm_influence(
            warm, level="Subject", approx=False, n_jobs=args.n_jobs, progress=False
        )
        warm.bootstrap(10, seed=2, n_jobs=args.n_jobs, progress=False)

    rows = [
        deletion(SLEEPSTUDY, 1, args),
        deletion(EXAM, "school", args),
    ]
    if not args.skip_insteval:
        rows.append(deletion(INSTEVAL, "d", args, limit=args.lme4_lecturers))
    rows += [bootstrap(SLEEPSTUDY, args), profile(SLEEPSTUDY, args)]

    with_lme4 = not args.skip_lme4
    parts = [table(rows, with_lme4), "", fits_table(rows)]
    notes = checks(rows)
    if notes:
        parts += ["", notes]
    if with_lme4:
        e = next((r.lme4.extra for r in rows if r.lme4 and r.lme4.status == "ok"), {})
        parts += [
            "",
            f"lme4 {e.get('lme4_version')} on R {e.get('r_version')} (BLAS {e.get('blas')})",
        ]
    parts += [
        "",
        "load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
    text = "\n".join(parts)
    print()
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
