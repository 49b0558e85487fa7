//! The θ optimiser: Powell's BOBYQA (bound-constrained quadratic-model trust region, via the
//! `bobyqa` crate, a port of PRIMA) on the profiled objective, with lme4's bounds (0 on the
//! diagonal of each λ_k) and starting values; then a finite-difference gradient at θ̂ for the
//! convergence report.

use bobyqa::{Bobyqa, Config, Status};

use crate::error::{CoreError, CoreResult};
use crate::model::{Estimates, Model};
use crate::start::{moment_start, MOMENT_START_MIN_M, MOMENT_START_MIN_N};

/// Returned by the objective to stop the solver; far below any deviance (which is ≥ −n·log 2π·…
/// only for degenerate data, and then finite and moderate).
const STOP_VALUE: f64 = -1e300;
const STOP_TARGET: f64 = -1e299;
/// lme4's isSingular tolerance: a diagonal of λ below it counts as on the boundary.
const SINGULAR_THRESHOLD: f64 = 1e-4;

/// Settings of one optimisation.
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    pub rho_begin: f64,
    pub rho_end: f64,
    /// 0 means the default budget (1000 · n_θ², at least 10 000).
    pub max_evals: usize,
    /// Form the finite-difference gradient (and, where it is large, the scaled gradient) at
    /// θ̂ for the convergence check. Off for the refits of case deletion and the bootstrap,
    /// which report only the optimiser's status.
    pub convergence_check: bool,
    /// Form the conditional covariances of the modes at θ̂ ([`Model::estimates_with`]). Off
    /// for `interlace.fit`, which forms them when they are first asked for.
    pub conditional_covariances: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            rho_begin: 0.2,
            rho_end: 1e-6,
            max_evals: 0,
            convergence_check: true,
            conditional_covariances: true,
        }
    }
}

/// What the optimiser did.
#[derive(Debug, Clone)]
pub struct OptimizationRecord {
    pub n_evals: usize,
    pub status: String,
    pub converged: bool,
    /// Central differences of the objective at θ̂ (one-sided at an active bound).
    pub gradient: Vec<f64>,
    /// lme4's scaled gradient at θ̂ (see [`derivatives`]), per coordinate, NaN where not
    /// computed; empty when the plain gradient is already small or the Hessian is not positive
    /// definite.
    pub scaled_gradient: Vec<f64>,
}

/// Plain gradients above this trigger the scaled-gradient check (lme4's `check.conv.grad` tol).
pub const GRADIENT_TOLERANCE: f64 = 2e-3;

/// Optimises θ from `theta0` (lme4's start when `None`) and returns the estimates at θ̂.
pub fn fit(model: &mut Model, theta0: Option<&[f64]>, options: FitOptions) -> CoreResult<(Estimates, OptimizationRecord)> {
    fit_interruptible(model, theta0, options, &mut || false)
}

/// [`fit`], asking `interrupted` before every evaluation whether to stop; a `true` ends the
/// optimisation with [`CoreError::Interrupted`] (how Ctrl-C reaches a fit running without the GIL).
pub fn fit_interruptible(
    model: &mut Model,
    theta0: Option<&[f64]>,
    options: FitOptions,
    interrupted: &mut dyn FnMut() -> bool,
) -> CoreResult<(Estimates, OptimizationRecord)> {
    let n_theta = model.n_theta();
    let lower = model.lower_bounds();
    let upper = vec![f64::INFINITY; n_theta];
    let mut rho_begin = options.rho_begin;
    let mut theta: Vec<f64> = match theta0 {
        Some(t) => {
            if t.len() != n_theta {
                return Err(CoreError::InvalidTheta {
                    reason: format!("starting values: expected {n_theta}, found {}", t.len()),
                });
            }
            t.iter().zip(&lower).map(|(&v, &lb)| v.max(lb)).collect()
        }
        None => {
            let start = default_start(model);
            if start != model.theta_start() {
                // Near θ̂ already: a smaller first trust region saves evaluations.
                rho_begin = rho_begin.min(MOMENT_RHO_BEGIN);
            }
            start
        }
    };
    let mut config = Config::new(n_theta);
    config.rho_begin = rho_begin;
    config.rho_end = options.rho_end.min(rho_begin);
    config.max_fun = if options.max_evals > 0 {
        options.max_evals.max(config.npt + 1)
    } else {
        (1000 * n_theta * n_theta).max(10_000)
    };
    // BOBYQA has no abort; an evaluation that reports STOP_VALUE reaches f_target and ends it.
    config.f_target = STOP_TARGET;
    let mut solver = Bobyqa::new(n_theta, config).map_err(|s| CoreError::Internal {
        reason: format!("optimiser setup failed: {s}"),
    })?;

    let mut first_error: Option<CoreError> = None;
    // A sequential clone of the model, for evaluations split between two threads.
    let mut twin: Option<Model> = None;
    let (mut outcome, mut best) = minimize(&mut solver, model, &mut theta, &lower, &upper, rho_begin, &mut twin, interrupted, &mut first_error)?;
    let mut n_evals = outcome.n_eval;

    // A boundary optimum can be a false one: at θ with a zero diagonal the objective is often
    // flat in the directions that would leave the boundary (with a zero intercept variance,
    // for instance, only θ₂² + θ₃² matters), and BOBYQA may stop on that flat valley while a
    // better optimum exists elsewhere; rounding differences (row order, scaling) decide which
    // it finds. A singular first optimum therefore gets a few more starts: the optimum with
    // its zero diagonals lifted to 0.5, the same with the entries below each zero diagonal
    // negated, and, when λ has off-diagonal entries, lme4's start with every off-diagonal at
    // +0.5 and at −0.5. The best point wins.
    let singular = theta.iter().zip(&lower).any(|(&t, &lb)| lb == 0.0 && t < SINGULAR_THRESHOLD);
    if singular && outcome.found_finite() && outcome.status != Status::MaxFunReached {
        let lifted: Vec<f64> = theta
            .iter()
            .zip(&lower)
            .map(|(&t, &lb)| if lb == 0.0 { t.max(0.5) } else { t })
            .collect();
        // At a zero diagonal the objective depends on the entries below it only through their
        // norm, so their signs (the correlations the column would have) were left to chance;
        // the lifted start with them negated tries the other signs.
        let mut flipped = lifted.clone();
        let mut negate = false;
        for (i, &lb) in lower.iter().enumerate() {
            if lb == 0.0 {
                negate = theta[i] < SINGULAR_THRESHOLD;
            } else if negate {
                flipped[i] = -flipped[i];
            }
        }
        let mut starts = vec![lifted];
        if flipped != starts[0] {
            starts.push(flipped);
        }
        if lower.iter().any(|&lb| lb != 0.0) {
            for off in [0.5, -0.5] {
                starts.push(lower.iter().map(|&lb| if lb == 0.0 { 1.0 } else { off }).collect());
            }
        }
        for mut start in starts {
            let (again, again_best) = minimize(&mut solver, model, &mut start, &lower, &upper, rho_begin, &mut twin, interrupted, &mut first_error)?;
            n_evals += again.n_eval;
            if again.found_finite() && again.f < outcome.f {
                theta = start;
                outcome = again;
                best = again_best;
            }
        }
    }
    if !outcome.found_finite() {
        return Err(first_error.unwrap_or(CoreError::Unsupported {
            reason: "the objective is not finite at any θ tried".into(),
        }));
    }
    let (status, converged) = match outcome.status {
        Status::Converged | Status::FtolReached | Status::TargetReached => ("converged", true),
        Status::MaxFunReached => ("maximum number of evaluations reached", false),
        Status::ModelDegenerate => ("the quadratic model degenerated", false),
        Status::InvalidArgs => ("invalid arguments", false),
        Status::AllocationFailed => ("allocation failed", false),
    };
    let (gradient, scaled_gradient) = if options.convergence_check {
        // The objective at θ̂ is the optimiser's best value when θ̂ is that point, bit for bit.
        let f0 = best.and_then(|(point, f)| (point == theta).then_some(f));
        derivatives_with(model, &mut twin, &theta, &lower, f0)?
    } else {
        (vec![f64::NAN; theta.len()], Vec::new())
    };
    let estimates = model.estimates_with(&theta, options.conditional_covariances)?;
    Ok((
        estimates,
        OptimizationRecord {
            n_evals,
            status: status.to_string(),
            converged,
            gradient,
            scaled_gradient,
        },
    ))
}

/// BOBYQA's first trust-region radius from the moments' start (at most; lme4's start uses
/// [`FitOptions::rho_begin`], 0.2). Measured from the moments' start (`DUMPED_FIT=1
/// DUMPED_RHO=ρ cargo run --release --example dumped_model`), evaluations with ρ = 0.1, 0.05
/// and 0.03: InstEval ML 41/33/32, InstEval REML 22/21/19, the 200,000-row intercepts 26/26/24
/// and slopes 44/43/39, MovieLens-like 24/22/20, at the same optima. From starts three times
/// too large or too small (`DUMPED_START`), 0.05 took fewer evaluations than 0.1 in all five
/// tries (InstEval ML 59–73 against 84–92, slopes 142–160 against 145–169), where 0.03 took up
/// to 188: a start far from θ̂ costs no more with 0.05 than with 0.1.
pub const MOMENT_RHO_BEGIN: f64 = 0.05;

/// The start when none is given: the moments' (see [`crate::start`]) for models of at least
/// [`MOMENT_START_MIN_N`] observations and a rest block of at least [`MOMENT_START_MIN_M`]
/// columns, lme4's otherwise.
pub fn default_start(model: &Model) -> Vec<f64> {
    if model.n_obs() >= MOMENT_START_MIN_N && model.m >= MOMENT_START_MIN_M {
        if let Some(theta) = moment_start(model) {
            return theta;
        }
    }
    model.theta_start()
}

/// The point with the lowest finite objective a run evaluated, and that value.
type BestPoint = (Vec<f64>, f64);

/// Finite-difference step at θᵢ: lme4's `deriv12` δ = 10⁻⁴, relative where |θᵢ| > 1.
fn step(theta: f64) -> f64 {
    1e-4 * theta.abs().max(1.0)
}

/// The gradient at θ and, where it is large, lme4's scaled gradient, from one set of
/// evaluations as lme4's `deriv12` takes them.
///
/// f(θ ± δᵢeᵢ) give the central-difference gradient (forward where θᵢ − δᵢ is below its
/// bound) and, with f(θ), the Hessian's diagonal; f(θ + δᵢeᵢ + δⱼeⱼ) its cross terms. The
/// scaled gradient R⁻¹g (H = RᵀR, over the coordinates at least 2δᵢ from their bound, NaN at
/// the others) is formed only when some |gᵢ| exceeds [`GRADIENT_TOLERANCE`]: lme4 judges
/// convergence by min(|scaled|, |plain|) per coordinate, and where the objective is steeply
/// curved (InstEval's 2,972 student effects) a plain gradient of 10⁻³ is a step of 10⁻⁸. The
/// scaled gradient is empty when not formed, when the Hessian is not positive definite or has
/// more than 20 coordinates. `f0` is the objective at θ when already known.
pub fn derivatives(model: &mut Model, theta: &[f64], lower: &[f64], f0: Option<f64>) -> CoreResult<(Vec<f64>, Vec<f64>)> {
    derivatives_with(model, &mut None, theta, lower, f0)
}

/// [`derivatives`], splitting evaluations with `twin`, a sequential clone of the model made
/// here when first needed and kept for later calls (see [`objective_results`]).
fn derivatives_with(
    model: &mut Model,
    twin: &mut Option<Model>,
    theta: &[f64],
    lower: &[f64],
    f0: Option<f64>,
) -> CoreResult<(Vec<f64>, Vec<f64>)> {
    let k_all = theta.len();
    let f0 = match f0 {
        Some(f) => f,
        None => model.objective(theta)?,
    };
    let steps: Vec<f64> = theta.iter().map(|&t| step(t)).collect();
    let moved = |moves: &[(usize, f64)]| -> Vec<f64> {
        let mut t = theta.to_vec();
        for &(i, d) in moves {
            t[i] = theta[i] + d;
        }
        t
    };
    // f(θ + δᵢeᵢ) for every i, then f(θ − δᵢeᵢ) where θᵢ − δᵢ is within its bound.
    let mut points: Vec<Vec<f64>> = (0..k_all).map(|i| moved(&[(i, steps[i])])).collect();
    let below: Vec<usize> = (0..k_all).filter(|&i| theta[i] - steps[i] >= lower[i]).collect();
    points.extend(below.iter().map(|&i| moved(&[(i, -steps[i])])));
    let values = objectives(model, twin, &points)?;
    let plus: Vec<f64> = values[..k_all].to_vec();
    let (mut minus, mut central) = (vec![f64::NAN; k_all], vec![false; k_all]);
    for (&i, &v) in below.iter().zip(&values[k_all..]) {
        minus[i] = v;
        central[i] = true;
    }
    let gradient: Vec<f64> = (0..k_all)
        .map(|i| {
            if central[i] {
                (plus[i] - minus[i]) / (2.0 * steps[i])
            } else {
                (plus[i] - f0) / steps[i]
            }
        })
        .collect();
    if !gradient.iter().any(|g| g.abs() > GRADIENT_TOLERANCE) {
        return Ok((gradient, Vec::new()));
    }
    let free: Vec<usize> = (0..k_all).filter(|&i| theta[i] - 2.0 * steps[i] >= lower[i]).collect();
    let k = free.len();
    if k == 0 || k > 20 {
        return Ok((gradient, Vec::new()));
    }
    // Central second differences on the diagonal, forward ones off it (k(k−1)/2 evaluations
    // beyond the gradient's).
    let pairs: Vec<(usize, usize)> = (0..k).flat_map(|a| (0..a).map(move |b| (a, b))).collect();
    let cross: Vec<Vec<f64>> = pairs
        .iter()
        .map(|&(a, b)| moved(&[(free[a], steps[free[a]]), (free[b], steps[free[b]])]))
        .collect();
    let both = objectives(model, twin, &cross)?;
    let mut h = vec![0.0; k * k];
    for a in 0..k {
        let (i, hi) = (free[a], steps[free[a]]);
        h[a * k + a] = (plus[i] - 2.0 * f0 + minus[i]) / (hi * hi);
    }
    for (&(a, b), &fab) in pairs.iter().zip(&both) {
        let (i, j) = (free[a], free[b]);
        let v = (fab - plus[i] - plus[j] + f0) / (steps[i] * steps[j]);
        h[a * k + b] = v;
        h[b * k + a] = v;
    }
    // lme4's R = chol(H) is upper with H = RᵀR; ours is the lower L = Rᵀ, so R⁻¹g = L⁻ᵀg.
    if crate::dense::chol_small(&mut h, k).is_err() {
        return Ok((gradient, Vec::new()));
    }
    let mut x: Vec<f64> = free.iter().map(|&i| gradient[i]).collect();
    crate::dense::solve_upper_small(&h, k, &mut x);
    let mut scaled = vec![f64::NAN; k_all];
    for (a, &i) in free.iter().enumerate() {
        scaled[i] = x[a];
    }
    Ok((gradient, scaled))
}

/// The convergence check's evaluations (and BOBYQA's first interpolation points, see
/// [`initial_points`]) run on two threads (the model and a clone, each sequential inside) when
/// one evaluation is sequential and dominated by a rest block of at least this many columns;
/// smaller models evaluate faster than a clone is made.
const CHECK_PARALLEL_MIN_M: usize = 256;

/// f at each point, in order (the first error ends the call). See [`objective_results`].
fn objectives(model: &mut Model, twin: &mut Option<Model>, points: &[Vec<f64>]) -> CoreResult<Vec<f64>> {
    objective_results(model, twin, points).into_iter().collect()
}

/// Whether [`objective_results`] splits `n_points` evaluations of `model` between two threads.
fn splits_evaluations(model: &Model, n_points: usize) -> bool {
    n_points >= 2 && model.m >= CHECK_PARALLEL_MIN_M && matches!(model.par, faer::Par::Seq) && rayon::current_num_threads() >= 2
}

/// The objective (or its error) at each point, in order. With a sequential rest block of at
/// least [`CHECK_PARALLEL_MIN_M`] columns and two threads, the second half of the points is
/// evaluated on `twin` alongside the first: a clone of the model made on first use with its
/// evaluations sequential, kept for the fit's later calls. Every evaluation gives the same value
/// on either thread, as sequential and parallel builds of S are the same to the last bit.
fn objective_results(model: &mut Model, twin: &mut Option<Model>, points: &[Vec<f64>]) -> Vec<CoreResult<f64>> {
    if !splits_evaluations(model, points.len()) {
        return points.iter().map(|t| model.objective(t)).collect();
    }
    let (parallel_schur, parallel_estimates) = (model.parallel_schur, model.parallel_estimates);
    model.set_sequential();
    let other = twin.get_or_insert_with(|| model.clone());
    let (first, second) = points.split_at(points.len().div_ceil(2));
    let (mut values, rest) = rayon::join(
        || first.iter().map(|t| model.objective(t)).collect::<Vec<_>>(),
        || second.iter().map(|t| other.objective(t)).collect::<Vec<_>>(),
    );
    (model.parallel_schur, model.parallel_estimates) = (parallel_schur, parallel_estimates);
    values.extend(rest);
    values
}

/// The points at which BOBYQA (PRIMA's `initxf`, as the `bobyqa` crate runs it) evaluates first:
/// the start x₀ moved onto its lower bound where within ρ/2 of it and to ρ from it where within
/// ρ, then x₀ ± ρeᵢ, or x₀ + ρeᵢ and x₀ + 2ρeᵢ where xᵢ is on its bound (upper bounds are
/// infinite here). They are evaluated ahead, two at a time, and served to BOBYQA when it asks
/// for exactly these points (bit for bit); any it asks for otherwise is evaluated then, so a
/// difference in this prediction costs time, never a value.
fn initial_points(theta: &[f64], lower: &[f64], rho: f64) -> Vec<Vec<f64>> {
    // ±0.25·f64::MAX is BOBYQA's "no bound".
    let bound_max = 0.25 * f64::MAX;
    let xl: Vec<f64> = lower.iter().map(|&l| l.max(-bound_max)).collect();
    let x0: Vec<f64> = theta
        .iter()
        .zip(&xl)
        .map(|(&t, &l)| {
            let t = l.max(bound_max.min(t));
            if t <= l + 0.5 * rho {
                l
            } else if t < l + rho {
                l + rho
            } else {
                t
            }
        })
        .collect();
    let n = x0.len();
    let mut points = vec![x0.clone()];
    for i in 0..n {
        let mut x = x0.clone();
        x[i] = x0[i] + rho;
        points.push(x);
    }
    for i in 0..n {
        let mut x = x0.clone();
        let below = (xl[i] - x0[i]).min(-rho);
        x[i] = if x0[i] == xl[i] {
            x0[i] + 2.0 * rho
        } else if -rho <= below {
            xl[i]
        } else {
            xl[i].max(x0[i] - rho)
        };
        points.push(x);
    }
    points
}

/// One BOBYQA run from `theta` (overwritten with the best point). A failed factorisation is
/// reported to BOBYQA as +∞ (it backs off) and the first such error kept in `first_error`.
#[allow(clippy::too_many_arguments)]
fn minimize(
    solver: &mut Bobyqa,
    model: &mut Model,
    theta: &mut [f64],
    lower: &[f64],
    upper: &[f64],
    rho_begin: f64,
    twin: &mut Option<Model>,
    interrupted: &mut dyn FnMut() -> bool,
    first_error: &mut Option<CoreError>,
) -> CoreResult<(bobyqa::Outcome, Option<BestPoint>)> {
    let mut stopped = false;
    let mut best: Option<BestPoint> = None;
    // BOBYQA's first 2n+1 points, evaluated ahead on two threads where that pays.
    let mut ahead: Vec<(Vec<f64>, CoreResult<f64>)> = Vec::new();
    if splits_evaluations(model, 2 * theta.len() + 1) && !interrupted() {
        let points = initial_points(theta, lower, rho_begin);
        let values = objective_results(model, twin, &points);
        ahead = points.into_iter().zip(values).collect();
    }
    let outcome = solver.minimize(
        |t: &[f64]| {
            if stopped || interrupted() {
                stopped = true;
                return STOP_VALUE;
            }
            let same = |p: &[f64]| p.iter().zip(t).all(|(a, b)| a.to_bits() == b.to_bits());
            let value = match ahead.iter().position(|(p, _)| same(p)) {
                Some(k) => ahead.swap_remove(k).1,
                None => model.objective(t),
            };
            match value {
                Ok(v) if v.is_finite() => {
                    if best.as_ref().is_none_or(|&(_, f)| v < f) {
                        best = Some((t.to_vec(), v));
                    }
                    v
                }
                Ok(_) => f64::INFINITY,
                Err(e) => {
                    first_error.get_or_insert(e);
                    f64::INFINITY
                }
            }
        },
        theta,
        lower,
        upper,
    );
    if stopped {
        return Err(CoreError::Interrupted);
    }
    Ok((outcome, best))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Term;
    use faer::Mat;

    #[test]
    fn scaled_gradient_is_the_inverse_cholesky_of_the_hessian_times_the_gradient() {
        // A small crossed model away from its optimum: R⁻¹g from the routine against the same
        // quantity from a Hessian taken with ten times the step (both approximate one H).
        let n = 60;
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
        };
        let x = Mat::<f64>::from_fn(n, 1, |_, _| 1.0);
        let y: Vec<f64> = (0..n).map(|i| (i % 6) as f64 + [0.0, 2.5, -1.0, 1.5, -2.0][i % 5] + 3.0 * next()).collect();
        let a: Vec<i32> = (0..n).map(|i| (i % 6) as i32).collect();
        let b: Vec<i32> = (0..n).map(|i| (i % 5) as i32).collect();
        let terms = vec![
            Term::new(&a, vec![1.0; n], 1, 6, 0).unwrap(),
            Term::new(&b, vec![1.0; n], 1, 5, 1).unwrap(),
        ];
        let mut model = Model::new(&y, x.as_ref(), terms, true).unwrap();
        let (est, _) = fit(&mut model, None, FitOptions::default()).unwrap();
        assert!(est.theta.iter().all(|&t| t > 0.1), "{:?}", est.theta);
        let theta = [est.theta[0] + 0.03, est.theta[1] - 0.02];
        let lower = [0.0, 0.0];
        let (g, ours) = derivatives(&mut model, &theta, &lower, None).unwrap();
        assert_eq!(ours.len(), 2, "the gradient {g:?} is large: the scaled gradient is formed");
        let f = |m: &mut Model, t: [f64; 2]| m.objective(&t).unwrap();
        let h = 1e-3;
        let [t0, t1] = theta;
        let f0 = f(&mut model, theta);
        let h00 = (f(&mut model, [t0 + h, t1]) - 2.0 * f0 + f(&mut model, [t0 - h, t1])) / (h * h);
        let h11 = (f(&mut model, [t0, t1 + h]) - 2.0 * f0 + f(&mut model, [t0, t1 - h])) / (h * h);
        let h01 = (f(&mut model, [t0 + h, t1 + h]) - f(&mut model, [t0 + h, t1 - h]) - f(&mut model, [t0 - h, t1 + h])
            + f(&mut model, [t0 - h, t1 - h]))
            / (4.0 * h * h);
        // H = RᵀR, R upper: R = [[r00, r01], [0, r11]]; solve R x = g.
        let r00 = h00.sqrt();
        let r01 = h01 / r00;
        let r11 = (h11 - r01 * r01).sqrt();
        let x1 = g[1] / r11;
        let x0 = (g[0] - r01 * x1) / r00;
        assert!((ours[0] - x0).abs() < 1e-3 * (1.0 + x0.abs()), "{ours:?} vs {x0} {x1}");
        assert!((ours[1] - x1).abs() < 1e-3 * (1.0 + x1.abs()), "{ours:?} vs {x0} {x1}");
        // The gradient against fourth-order central differences, and f(θ) given equals f(θ)
        // evaluated.
        for (i, &gi) in g.iter().enumerate() {
            let at = |m: &mut Model, d: f64| {
                let mut t = theta;
                t[i] += d;
                f(m, t)
            };
            let h = 1e-3;
            let reference = (8.0 * (at(&mut model, h) - at(&mut model, -h)) - (at(&mut model, 2.0 * h) - at(&mut model, -2.0 * h))) / (12.0 * h);
            assert!((gi - reference).abs() < 1e-5 * (1.0 + reference.abs()), "{i}: {gi} vs {reference}");
        }
        let known = derivatives(&mut model, &theta, &lower, Some(f0)).unwrap();
        assert_eq!(known, (g, ours));
    }

    #[test]
    fn initial_points_are_the_points_bobyqa_evaluates_first() {
        // Starts inside, within ρ/2 and within ρ of a zero bound, on it, below it (clamped), and
        // unbounded coordinates of either sign; ρ of lme4's start and of the moments' start.
        let cases: Vec<(Vec<f64>, Vec<f64>, f64)> = vec![
            (vec![1.0, 0.0, 1.0], vec![0.0, f64::NEG_INFINITY, 0.0], 0.2),
            (vec![0.27, 0.43, 0.089], vec![0.0, 0.0, 0.0], 0.05),
            (vec![0.01, -0.3, 0.04, 0.0, 1.7], vec![0.0, f64::NEG_INFINITY, 0.0, 0.0, 0.0], 0.05),
            (vec![0.15, 1e-9, 0.3, -2.0], vec![0.0, 0.0, 0.0, 0.0], 0.2),
            (vec![0.3], vec![0.0], 0.2),
            (vec![0.1 + 0.2, 7.0 / 3.0], vec![0.0, 0.0], 0.1),
        ];
        for (start, lower, rho) in cases {
            let n = start.len();
            let predicted = initial_points(&start.iter().zip(&lower).map(|(&t, &l)| t.max(l)).collect::<Vec<_>>(), &lower, rho);
            let mut config = Config::new(n);
            config.rho_begin = rho;
            config.rho_end = 1e-3;
            config.max_fun = 2 * n + 1 + 10;
            let mut solver = Bobyqa::new(n, config).unwrap();
            let mut asked: Vec<Vec<f64>> = Vec::new();
            let mut x: Vec<f64> = start.iter().zip(&lower).map(|(&t, &l)| t.max(l)).collect();
            let upper = vec![f64::INFINITY; n];
            solver.minimize(
                |t: &[f64]| {
                    asked.push(t.to_vec());
                    t.iter().enumerate().map(|(i, v)| (v - 0.3 * i as f64).powi(2)).sum::<f64>() + 1.0
                },
                &mut x,
                &lower,
                &upper,
            );
            let bits = |p: &Vec<f64>| p.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                asked[..2 * n + 1].iter().map(bits).collect::<Vec<_>>(),
                predicted.iter().map(bits).collect::<Vec<_>>(),
                "start {start:?}, ρ {rho}"
            );
        }
    }

    #[test]
    fn fits_with_initial_points_on_two_threads_equal_the_sequential_fit() {
        // A rest block of 300 levels: BOBYQA's first points and the check's evaluations are
        // split between the model and a clone; the fit is the same bits as on one thread.
        let n = 6000;
        let mut state = 5u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64) / ((1u64 << 53) as f64)
        };
        let x = Mat::<f64>::from_fn(n, 1, |_, _| 1.0);
        let a: Vec<i32> = (0..n).map(|i| (i % 500) as i32).collect();
        let b: Vec<i32> = (0..n).map(|i| ((i * 7 + i / 500) % 300) as i32).collect();
        let y: Vec<f64> = (0..n).map(|i| (a[i] % 7) as f64 * 0.3 + (b[i] % 5) as f64 * 0.4 + next()).collect();
        let terms = vec![
            Term::new(&a, vec![1.0; n], 1, 500, 0).unwrap(),
            Term::new(&b, vec![1.0; n], 1, 300, 1).unwrap(),
        ];
        let model = Model::new(&y, x.as_ref(), terms, true).unwrap();
        assert!(splits_evaluations(&model, 5) || rayon::current_num_threads() < 2);
        let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let fit_on = |threads: usize| {
            let mut m = model.clone();
            pool(threads).install(|| fit(&mut m, None, FitOptions::default())).unwrap()
        };
        let (one, one_record) = fit_on(1);
        let (two, two_record) = fit_on(2);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one.theta), bits(&two.theta));
        assert_eq!(one.objective.to_bits(), two.objective.to_bits());
        assert_eq!(one_record.n_evals, two_record.n_evals);
        assert_eq!(bits(&one_record.gradient), bits(&two_record.gradient));
    }

    #[test]
    fn derivatives_on_two_threads_equal_the_sequential_ones() {
        // A rest block of 300 levels: the check's evaluations are split between the model and
        // a clone; gradient and scaled gradient are the same bits as on one thread.
        let n = 6000;
        let mut state = 11u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64) / ((1u64 << 53) as f64)
        };
        let x = Mat::<f64>::from_fn(n, 1, |_, _| 1.0);
        let a: Vec<i32> = (0..n).map(|i| (i % 500) as i32).collect();
        let b: Vec<i32> = (0..n).map(|i| ((i * 7 + i / 500) % 300) as i32).collect();
        let y: Vec<f64> = (0..n).map(|i| (a[i] % 7) as f64 * 0.3 + (b[i] % 5) as f64 * 0.4 + next()).collect();
        let terms = vec![
            Term::new(&a, vec![1.0; n], 1, 500, 0).unwrap(),
            Term::new(&b, vec![1.0; n], 1, 300, 1).unwrap(),
        ];
        let mut model = Model::new(&y, x.as_ref(), terms, true).unwrap();
        assert!(model.m >= CHECK_PARALLEL_MIN_M);
        let theta = [0.7, 0.4];
        let lower = [0.0, 0.0];
        let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let one = pool(1).install(|| derivatives(&mut model, &theta, &lower, None)).unwrap();
        let two = pool(2).install(|| derivatives(&mut model, &theta, &lower, None)).unwrap();
        assert_eq!(one.1.len(), 2, "far from the optimum: the scaled gradient is formed");
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one.0), bits(&two.0));
        assert_eq!(bits(&one.1), bits(&two.1));
        let f = |m: &mut Model, t: [f64; 2]| m.objective(&t).unwrap();
        let h = step(theta[0]);
        let central = (f(&mut model, [0.7 + h, 0.4]) - f(&mut model, [0.7 - h, 0.4])) / (2.0 * h);
        assert_eq!(one.0[0], central);
    }

    #[test]
    fn derivatives_at_a_bound_are_one_sided_and_leave_it_out_of_the_hessian() {
        // θ₁ on its bound: forward difference for g₁, NaN in the scaled gradient there.
        let n = 60;
        let x = Mat::<f64>::from_fn(n, 1, |_, _| 1.0);
        let y: Vec<f64> = (0..n).map(|i| (i % 6) as f64 * 0.7 + [0.0, 2.5, -1.0, 1.5, -2.0][i % 5]).collect();
        let a: Vec<i32> = (0..n).map(|i| (i % 6) as i32).collect();
        let b: Vec<i32> = (0..n).map(|i| (i % 5) as i32).collect();
        let terms = vec![
            Term::new(&a, vec![1.0; n], 1, 6, 0).unwrap(),
            Term::new(&b, vec![1.0; n], 1, 5, 1).unwrap(),
        ];
        let mut model = Model::new(&y, x.as_ref(), terms, true).unwrap();
        let theta = [0.3, 0.0];
        let lower = [0.0, 0.0];
        let (g, scaled) = derivatives(&mut model, &theta, &lower, None).unwrap();
        let f0 = model.objective(&theta).unwrap();
        let forward = (model.objective(&[0.3, 1e-4]).unwrap() - f0) / 1e-4;
        assert_eq!(g[1], forward);
        if !scaled.is_empty() {
            assert!(scaled[1].is_nan() && scaled[0].is_finite(), "{scaled:?}");
        }
    }
}
