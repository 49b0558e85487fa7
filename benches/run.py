"""Run the benchmark grid of ``cases.py`` and print a table.

    python benches/run.py                          # the default grid (everything but --large cases)
    python benches/run.py --quick --no-r           # a smoke test: two small cases, interlace only
    python benches/run.py --cases insteval_ml,crossed_20k --repeat 5 --out table.md
    python benches/run.py --large --cases movielens_1m --repeat 1 --timeout 900
    python benches/run.py --stages                 # also: where the time of one fit goes

Each case runs in its own subprocess (this script again, with ``--worker``), so the peak
resident set size reported, from ``os.wait4``'s rusage of that child, is the case's own: data,
design, factor and Python itself. The child builds the data (a fixture CSV or a seeded
generator), does one small untimed warm-up fit (imports, formulaic's first use), then times
``interlace.fit`` ``--repeat`` times (``inner`` times more for the two small cases) and reports
the median. ``evals`` is ``res.optimization.n_evals``, the BOBYQA evaluations; ``ms/eval`` is the
whole fit time divided by it, an upper bound, since the fit also builds the design and the
crossproduct and evaluates the objective 2·n_θ more times for its gradient check (and
n_θ(n_θ − 1)/2 more where it forms lme4's scaled gradient).

When ``Rscript`` with lme4 is on the PATH (and ``--no-r`` is not given), the same data are
written to a CSV (``--data-dir``) and ``lme4_fit.R`` fits the same formula in a fresh R process,
timing only the ``lmer`` call, with ``lmerControl(calc.derivs = FALSE)``. Likewise mixedlm, with
the Python given by ``--mixedlm-python`` or ``$INTERLACE_BENCH_MIXEDLM_PYTHON`` (a separate
virtualenv; skipped when absent). Ratios are from the same run.

BLAS is kept single-threaded in every child (``OMP_NUM_THREADS`` etc. = 1, unless set);
interlace's own threads (rayon, faer) are left at their default, one per core.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases as grid  # noqa: E402

HERE = Path(__file__).resolve().parent
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
MIXEDLM_VARIABLE = "INTERLACE_BENCH_MIXEDLM_PYTHON"


# --------------------------------------------------------------------------------------------
# The worker: one case, in its own process.


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def _warm_up(interlace) -> None:
    """One small fit, so that imports and first-use costs are not in the first timed fit."""
    import generate

    data = generate.crossed_balanced(20, 10, 200, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interlace.fit("y ~ x + (1|a) + (1|b)", data, method="ML")


def _stages(case: grid.Case, data) -> dict:
    """Time the stages of one fit separately, through interlace's private stage functions (the
    same calls ``interlace.fit`` makes), and the objective alone at θ̂."""
    from interlace.api import _METHODS, _core_model
    from interlace.design import build_design
    from interlace.formula import parse_formula
    from interlace.results import LmmResult

    reml = _METHODS[case.method]
    start = time.perf_counter()
    design = build_design(parse_formula(case.formula), data)
    design_done = time.perf_counter()
    model = _core_model(design, reml)
    model_done = time.perf_counter()
    # As interlace.fit calls it: the conditional covariances are formed when first read.
    core = model.fit(None, conditional_covariances=False)
    fit_done = time.perf_counter()
    LmmResult.from_core(design, core, case.method)
    results_done = time.perf_counter()

    theta = core["theta"]
    objective_seconds = []
    budget = time.perf_counter() + max(2.0, 2.0 * (fit_done - model_done))
    while len(objective_seconds) < 200 and (
        len(objective_seconds) < 3 or time.perf_counter() < budget
    ):
        tick = time.perf_counter()
        model.objective(theta)
        objective_seconds.append(time.perf_counter() - tick)
    return {
        "design_seconds": design_done - start,
        "model_seconds": model_done - design_done,
        "optimise_seconds": fit_done - model_done,
        "results_seconds": results_done - fit_done,
        "n_evals": int(core["n_evals"]),
        "n_theta": int(model.n_theta),
        "n_derivative_evals": _derivative_evals(
            theta, model.lower_bounds, len(core["scaled_gradient"]) > 0
        ),
        "objective_seconds": statistics.median(objective_seconds),
        "objective_calls": len(objective_seconds),
        "dense_block": sum(t.n_levels * t.q for t in design.terms[1:]),
    }


def _derivative_evals(theta: object, lower: object, hessian: bool) -> int:
    """Evaluations of the core's convergence check (``derivatives`` in ``src/optimize.rs``):
    two per coordinate (one where θᵢ − δᵢ is below its bound, δᵢ = 10⁻⁴·max(|θᵢ|, 1)), and,
    when the scaled gradient was formed, one per pair of coordinates at least 2δᵢ from their
    bounds; f(θ̂) is the optimiser's last best value."""
    import numpy as np

    theta, lower = np.asarray(theta, dtype=float), np.asarray(lower, dtype=float)
    step = 1e-4 * np.maximum(np.abs(theta), 1.0)
    count = int(np.sum(np.where(theta - step < lower, 1, 2)))
    if hessian:
        free = int(np.sum(theta - 2.0 * step >= lower))
        count += free * (free - 1) // 2
    return count


def worker(name: str, repeat: int, stages: bool) -> None:
    import numpy as np

    import interlace

    case = grid.BY_NAME[name]
    data = case.dataset.make()
    _warm_up(interlace)
    rss_before = _rss_mb()
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    caught: set[str] = set()
    for _ in range(repeat):
        gc.collect()
        for _ in range(case.inner):
            with warnings.catch_warnings(record=True) as records:
                warnings.simplefilter("always")
                start, cpu_start = time.perf_counter(), time.process_time()
                result = interlace.fit(case.formula, data, method=case.method)
                seconds.append(time.perf_counter() - start)
                cpu_seconds.append(time.process_time() - cpu_start)
            caught.update(type(r.message).__name__ for r in records)
    report = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "n_evals": int(result.optimization.n_evals),
        "objective": float(-2.0 * result.llf),
        "nobs": int(result.nobs),
        "rss_before_mb": rss_before,
        "warnings": sorted(caught),
        "core_mtime": os.path.getmtime(interlace._core.__file__),
        "interlace_file": interlace.__file__,
        "theta": np.asarray(result.theta, dtype=float).tolist(),
    }
    if stages:
        del result
        gc.collect()
        report["stages"] = _stages(case, data)
    print("RESULT " + json.dumps(report), flush=True)


# --------------------------------------------------------------------------------------------
# The parent: children with a timeout and their own peak RSS.


@dataclass
class ChildRun:
    status: str  # "ok", "timeout", "error", "skipped"
    stdout: str = ""
    stderr: str = ""
    peak_rss_mb: float = math.nan
    wall_seconds: float = math.nan


def run_child(command: list[str], timeout: float, env: dict[str, str]) -> ChildRun:
    """Run a command in a new session; its own peak RSS from wait4; killed (with its group) on
    timeout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.monotonic()
        process = subprocess.Popen(
            command, stdout=out, stderr=err, env=env, start_new_session=True, text=True
        )
        timed_out = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        wall = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        run = ChildRun("ok", out.read(), err.read(), usage.ru_maxrss / 1024, wall)
    if timed_out:
        run.status = "timeout"
    elif process.returncode != 0:
        run.status = "error"
    return run


def _key_values(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            values[key] = value
    return values


@dataclass
class Measurement:
    """One tool's result on one case."""

    status: str
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    n_evals: int | None = None
    objective: float | None = None
    peak_rss_mb: float = math.nan
    extra: dict = field(default_factory=dict)
    message: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_seconds) if self.cpu_seconds else math.nan


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def measure_interlace(case: grid.Case, args, env) -> Measurement:
    command = [
        sys.executable,
        str(HERE / "run.py"),
        "--worker",
        case.name,
        "--repeat",
        str(args.repeat),
    ]
    if args.stages:
        command.append("--stages")
    child = run_child(command, args.timeout, env)
    if child.status != "ok":
        return Measurement(
            child.status, peak_rss_mb=child.peak_rss_mb, message=_last_line(child.stderr)
        )
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return Measurement("error", message=_last_line(child.stderr))
    report = json.loads(lines[-1][len("RESULT ") :])
    return Measurement(
        "ok",
        report["seconds"],
        report["cpu_seconds"],
        report["n_evals"],
        report["objective"],
        child.peak_rss_mb,
        extra=report,
    )


def _csv_for(dataset: grid.Dataset, data_dir: Path) -> Path:
    if dataset.csv is not None:
        return dataset.csv
    path = data_dir / f"{dataset.key}.csv"
    if not path.exists():
        print(f"  writing {path} ...", file=sys.stderr, flush=True)
        partial = path.with_suffix(".partial")
        dataset.make().to_csv(partial, index=False)
        partial.rename(path)
    return path


def measure_external(command: list[str], timeout: float, env) -> Measurement:
    child = run_child(command, timeout, env)
    if child.status != "ok":
        return Measurement(
            child.status, peak_rss_mb=child.peak_rss_mb, message=_last_line(child.stderr)
        )
    values = _key_values(child.stdout)
    try:
        return Measurement(
            "ok",
            [float(s) for s in values["seconds"].split(",")],
            [float(s) for s in values["cpu_seconds"].split(",")],
            int(values["n_evals"]),
            float(values["objective"]),
            child.peak_rss_mb,
            extra=values,
        )
    except (KeyError, ValueError):
        return Measurement("error", message=_last_line(child.stderr or child.stdout))


# --------------------------------------------------------------------------------------------
# The table.


def _seconds(value: float) -> str:
    if math.isnan(value):
        return "–"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 0.1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def _cell(m: Measurement | None) -> str:
    if m is None:
        return "–"
    return _seconds(m.median) if m.status == "ok" else m.status


def _delta(ours: Measurement, theirs: Measurement | None) -> str:
    if theirs is None or theirs.status != "ok" or ours.status != "ok":
        return "–"
    return f"{ours.objective - theirs.objective:+.1e}"


def _ratio(ours: Measurement, theirs: Measurement | None) -> str:
    """Their median over ours, wall clock / CPU time."""
    if theirs is None or theirs.status != "ok" or ours.status != "ok":
        return "–"
    return f"{theirs.median / ours.median:.2g}× / {theirs.cpu_median / ours.cpu_median:.2g}×"


def _verdict(case: grid.Case, m: Measurement) -> str:
    """Met or missed, by how much: the targets are wall clock, so that decides; the CPU time
    follows in brackets (on a loaded machine the CPU time of a single-threaded fit is the better
    guess at the wall clock of an idle one; a fit whose rest block runs on two threads, m ≥
    2,048, uses more CPU than wall clock). Also peak RSS where the case has a memory target."""
    if m.status != "ok":
        return f"missed ({m.status})"
    wall = m.median / case.target_seconds
    cpu = m.cpu_median / case.target_seconds
    parts = []
    if wall > 1:
        parts.append(f"time {wall:.3g}× ({cpu:.3g}×) target")
    if case.target_rss_gb is not None:
        over = m.peak_rss_mb / 1024 / case.target_rss_gb
        if over > 1:
            parts.append(f"RSS {over:.2g}× target")
    return "**met**" if not parts else "missed: " + ", ".join(parts)


def table(rows, with_r: bool, with_mixedlm: bool) -> str:
    header = [
        "case",
        "rows",
        "method",
        "interlace",
        "CPU",
        "evals",
        "ms/eval",
        "peak RSS",
        "−2 log L",
    ]
    if with_r:
        header += ["lme4", "lme4 evals", "lme4 RSS", "Δ(−2 log L)", "lme4 ÷ interlace (wall / CPU)"]
    if with_mixedlm:
        header += ["mixedlm", "Δ(−2 log L) mixedlm", "mixedlm ÷ interlace (wall / CPU)"]
    header += ["target", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case, ours, lme4, mixed in rows:
        ok = ours.status == "ok"
        target = _seconds(case.target_seconds)
        if case.target_rss_gb is not None:
            target += f", {case.target_rss_gb:g} GB"
        cells = [
            f"`{case.name}`",
            f"{ours.extra.get('nobs', 0):,}" if ok else "–",
            case.method,
            _cell(ours),
            _seconds(ours.cpu_median) if ok else "–",
            str(ours.n_evals) if ok else "–",
            f"{ours.median / ours.n_evals * 1000:.3g}" if ok and ours.n_evals else "–",
            f"{ours.peak_rss_mb:.0f} MB" if not math.isnan(ours.peak_rss_mb) else "–",
            f"{ours.objective:.4f}" if ok else "–",
        ]
        if with_r:
            cells += [
                _cell(lme4),
                str(lme4.n_evals) if lme4 is not None and lme4.status == "ok" else "–",
                f"{lme4.peak_rss_mb:.0f} MB" if lme4 is not None and lme4.status == "ok" else "–",
                _delta(ours, lme4),
                _ratio(ours, lme4),
            ]
        if with_mixedlm:
            cells += [_cell(mixed), _delta(ours, mixed), _ratio(ours, mixed)]
        cells += [target, _verdict(case, ours)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stages_table(rows) -> str:
    header = [
        "case",
        "design",
        "crossproduct",
        "optimise",
        "results",
        "evals",
        "objective (one call)",
        "evals × objective",
        "dense block m",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case, ours, _, _ in rows:
        s = ours.extra.get("stages") if ours.status == "ok" else None
        if not s:
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{case.name}`",
                    _seconds(s["design_seconds"]),
                    _seconds(s["model_seconds"]),
                    _seconds(s["optimise_seconds"]),
                    _seconds(s["results_seconds"]),
                    f"{s['n_evals']} + {s['n_derivative_evals']}",
                    _seconds(s["objective_seconds"]),
                    _seconds(s["objective_seconds"] * (s["n_evals"] + s["n_derivative_evals"])),
                    f"{s['dense_block']:,}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def legend(selected) -> str:
    lines = []
    for case in selected:
        lines.append(f"- `{case.name}`: `{case.formula}` ({case.method}) on {case.dataset.source}")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} × {cpu}, {memory:.0f} GiB RAM, {system}"


# --------------------------------------------------------------------------------------------


def _core_mtime() -> float:
    import interlace._core as core

    return os.path.getmtime(core.__file__)


def _build() -> str:
    """The git commit of the work tree and the compiled core's file date: the work tree may
    hold uncommitted changes, so the date says which build was timed."""
    import interlace._core as core

    commit = subprocess.run(
        ["git", "-C", str(grid.REPOSITORY), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(os.path.getmtime(core.__file__)))
    return f"commit {commit or 'unknown'}, {Path(core.__file__).name} built {built} UTC"


def _has_lme4(env) -> bool:
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(["Rscript", "-e", "library(lme4)"], capture_output=True, env=env)
    return probe.returncode == 0


def _mixedlm_python(args, env) -> str | None:
    python = args.mixedlm_python or os.environ.get(MIXEDLM_VARIABLE)
    if not python:
        return None
    probe = subprocess.run([python, "-c", "import mixedlm"], capture_output=True, env=env)
    if probe.returncode != 0:
        print(f"mixedlm: cannot import it with {python}; skipped", file=sys.stderr)
        return None
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="comma-separated case names (default: all but --large)")
    parser.add_argument("--repeat", type=int, default=3, help="timed fits per case (median)")
    parser.add_argument("--no-r", action="store_true", help="do not time lme4")
    parser.add_argument("--quick", action="store_true", help="a small subset, one repeat")
    parser.add_argument("--large", action="store_true", help="include the large cases")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case and tool")
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=16.0,
        help="skip a case whose estimated memory is over this",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also time the stages of one fit and the objective alone",
    )
    parser.add_argument("--mixedlm-python", help=f"python with mixedlm (or ${MIXEDLM_VARIABLE})")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "interlace-bench",
        help="where the CSVs for R and mixedlm are written",
    )
    parser.add_argument("--out", type=Path, help="write the markdown table to this file")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker(args.worker, args.repeat, args.stages)
        return
    if args.list:
        print(legend(grid.CASES))
        return

    if args.cases:
        unknown = [n for n in args.cases.split(",") if n not in grid.BY_NAME]
        if unknown:
            parser.error(f"unknown case(s) {unknown}; known: {', '.join(grid.BY_NAME)}")
        selected = [grid.BY_NAME[n] for n in args.cases.split(",")]
    elif args.quick:
        selected = [case for case in grid.CASES if case.quick]
    else:
        selected = [case for case in grid.CASES if args.large or not case.large]
    if args.quick:
        args.repeat = 1
    for case in selected:
        if case.large and not args.large:
            parser.error(f"{case.name} is a large case: add --large")

    env = dict(os.environ)
    for variable in THREAD_VARIABLES:
        env.setdefault(variable, "1")
    with_r = not args.no_r and _has_lme4(env)
    mixedlm_python = _mixedlm_python(args, env)
    if with_r or mixedlm_python:
        args.data_dir.mkdir(parents=True, exist_ok=True)

    import interlace

    # Every case runs from one copy of the package (Python sources and compiled core), so a
    # rebuild of the work tree during the run cannot mix two builds in one table.
    snapshot = Path(tempfile.mkdtemp(prefix="interlace-bench-build-"))
    shutil.copytree(
        Path(interlace.__file__).parent,
        snapshot / "interlace",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(snapshot), env.get("PYTHONPATH")]))
    try:
        _run(args, selected, env, with_r, mixedlm_python, snapshot)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _run(args, selected, env, with_r, mixedlm_python, snapshot: Path) -> None:
    import interlace

    print(f"machine: {machine()}")
    print(
        f"interlace {interlace.__version__}, Python {platform.python_version()}; "
        + ", ".join(f"{v}={env[v]}" for v in THREAD_VARIABLES)
        + f", RAYON_NUM_THREADS={env.get('RAYON_NUM_THREADS', 'unset')}"
    )
    print(f"build: {_build()}; run from a copy in {snapshot}")
    start_build = _core_mtime()
    print("command: python benches/run.py " + " ".join(sys.argv[1:]))
    print(
        "load average (1, 5, 15 min) at start: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        flush=True,
    )

    rows = []
    rebuilt: list[str] = []
    for case in selected:
        if case.large and grid.estimated_bytes(case) > args.max_memory_gb * 2**30:
            estimate = grid.estimated_bytes(case) / 2**30
            print(f"{case.name}: skipped, estimated {estimate:.1f} GB > {args.max_memory_gb} GB")
            continue
        print(f"{case.name}: interlace ...", end="", flush=True)
        ours = measure_interlace(case, args, env)
        if ours.status == "ok" and ours.extra.get("core_mtime") != start_build:
            ours.message = "(a different build of interlace._core than at the start: rerun)"
            rebuilt.append(case.name)
        print(
            f" {_cell(ours)} ({ours.n_evals or '–'} evals, {ours.peak_rss_mb:.0f} MB)"
            + (f" {ours.message}" if ours.message else ""),
            flush=True,
        )
        lme4 = mixed = None
        if with_r or mixedlm_python:
            csv = _csv_for(case.dataset, args.data_dir)
            common = [
                str(csv),
                case.formula,
                case.method,
                str(args.repeat * case.inner),
                ",".join(case.dataset.factors),
            ]
            if with_r:
                print(f"{case.name}: lme4 ...", end="", flush=True)
                lme4 = measure_external(
                    ["Rscript", str(HERE / "lme4_fit.R"), *common], args.timeout, env
                )
                print(
                    f" {_cell(lme4)} ({lme4.n_evals or '–'} evals, {lme4.peak_rss_mb:.0f} MB)"
                    + (f" {lme4.message}" if lme4.message else ""),
                    flush=True,
                )
            if mixedlm_python:
                print(f"{case.name}: mixedlm ...", end="", flush=True)
                mixed = measure_external(
                    [mixedlm_python, str(HERE / "mixedlm_fit.py"), *common], args.timeout, env
                )
                print(
                    f" {_cell(mixed)}" + (f" {mixed.message}" if mixed.message else ""), flush=True
                )
        rows.append((case, ours, lme4, mixed))

    parts = [table(rows, with_r, mixedlm_python is not None), "", legend([r[0] for r in rows])]
    if args.stages:
        parts += ["", stages_table(rows)]
    versions = []
    lme4_runs = [r[2] for r in rows if r[2] is not None and r[2].status == "ok"]
    if lme4_runs:
        e = lme4_runs[0].extra
        versions.append(
            f"lme4 {e.get('lme4_version')} on R {e.get('r_version')} (BLAS {e.get('blas')})"
        )
    mixed_runs = [r[3] for r in rows if r[3] is not None and r[3].status == "ok"]
    if mixed_runs:
        versions.append(f"mixedlm {mixed_runs[0].extra.get('mixedlm_version')}")
    if versions:
        parts += ["", "; ".join(versions)]
    if rebuilt:
        parts += ["", f"**interlace._core was rebuilt during the run; not comparable: {rebuilt}**"]
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
