//! The θ optimiser: Powell's BOBYQA (bound-constrained quadratic-model trust region, via the
//! `bobyqa` crate, a port of PRIMA) on the profiled objective, with lme4's bounds (0 on the
//! diagonal of each λ_k) and starting values; then a finite-difference gradient at θ̂ for the
//! convergence report.

use bobyqa::{Bobyqa, Config, Status};

use crate::error::{CoreError, CoreResult};
use crate::model::{Estimates, Model};

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
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            rho_begin: 0.2,
            rho_end: 1e-7,
            max_evals: 0,
            convergence_check: true,
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
    /// lme4's scaled gradient at θ̂ (see [`scaled_gradient`]), per coordinate, NaN where not
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
    let mut theta: Vec<f64> = match theta0 {
        Some(t) => {
            if t.len() != n_theta {
                return Err(CoreError::InvalidTheta {
                    reason: format!("starting values: expected {n_theta}, found {}", t.len()),
                });
            }
            t.iter().zip(&lower).map(|(&v, &lb)| v.max(lb)).collect()
        }
        None => model.theta_start(),
    };
    let mut config = Config::new(n_theta);
    config.rho_begin = options.rho_begin;
    config.rho_end = options.rho_end.min(options.rho_begin);
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
    let mut outcome = minimize(&mut solver, model, &mut theta, &lower, &upper, interrupted, &mut first_error)?;
    let mut n_evals = outcome.n_eval;

    // A boundary optimum can be a false one: at θ with a zero diagonal the objective is often
    // flat in the directions that would leave the boundary (with a zero intercept variance,
    // for instance, only θ₂² + θ₃² matters), and BOBYQA may stop on that flat valley while a
    // better optimum exists elsewhere; rounding differences (row order, scaling) decide which
    // it finds. A singular first optimum therefore gets a few more starts: the optimum with
    // its zero diagonals lifted to 0.5, and, when λ has off-diagonal entries, lme4's start
    // with every off-diagonal at +0.5 and at −0.5. The best point wins.
    let singular = theta.iter().zip(&lower).any(|(&t, &lb)| lb == 0.0 && t < SINGULAR_THRESHOLD);
    if singular && outcome.found_finite() && outcome.status != Status::MaxFunReached {
        let lifted: Vec<f64> = theta
            .iter()
            .zip(&lower)
            .map(|(&t, &lb)| if lb == 0.0 { t.max(0.5) } else { t })
            .collect();
        let mut starts = vec![lifted];
        if lower.iter().any(|&lb| lb != 0.0) {
            for off in [0.5, -0.5] {
                starts.push(lower.iter().map(|&lb| if lb == 0.0 { 1.0 } else { off }).collect());
            }
        }
        for mut start in starts {
            let again = minimize(&mut solver, model, &mut start, &lower, &upper, interrupted, &mut first_error)?;
            n_evals += again.n_eval;
            if again.found_finite() && again.f < outcome.f {
                theta = start;
                outcome = again;
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
    let gradient = if options.convergence_check {
        gradient(model, &theta, &lower)?
    } else {
        vec![f64::NAN; theta.len()]
    };
    let scaled_gradient = if options.convergence_check && gradient.iter().any(|g| g.abs() > GRADIENT_TOLERANCE) {
        scaled_gradient(model, &theta, &lower, &gradient)?
    } else {
        Vec::new()
    };
    let estimates = model.estimates(&theta)?;
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

/// lme4's scaled gradient `solve(chol(H), g)` = R⁻¹g with H = RᵀR the finite-difference
/// Hessian, over the coordinates away from their bounds (NaN at the others). lme4 judges
/// convergence by min(|scaled|, |plain|) per coordinate: where the objective is steeply curved
/// (InstEval's 2,972 student effects), a plain gradient of 10⁻³ is a step of 10⁻⁸. Empty when
/// the Hessian is not positive definite or has more than 20 coordinates.
pub fn scaled_gradient(model: &mut Model, theta: &[f64], lower: &[f64], gradient: &[f64]) -> CoreResult<Vec<f64>> {
    let steps: Vec<f64> = theta.iter().map(|t| 1e-4 * t.abs().max(1.0)).collect();
    let free: Vec<usize> = (0..theta.len()).filter(|&i| theta[i] - 2.0 * steps[i] >= lower[i]).collect();
    let k = free.len();
    if k == 0 || k > 20 {
        return Ok(Vec::new());
    }
    let f0 = model.objective(theta)?;
    let mut t = theta.to_vec();
    let mut at = |model: &mut Model, moves: &[(usize, f64)]| -> CoreResult<f64> {
        for &(i, d) in moves {
            t[i] = theta[i] + d;
        }
        let v = model.objective(&t);
        for &(i, _) in moves {
            t[i] = theta[i];
        }
        v
    };
    // Central second differences on the diagonal, forward ones off it: 2k + k(k−1)/2
    // evaluations (9 for three θ), the cross terms reusing the diagonal's points.
    let mut h = vec![0.0; k * k];
    let mut plus = vec![0.0; k];
    for a in 0..k {
        let (i, hi) = (free[a], steps[free[a]]);
        plus[a] = at(model, &[(i, hi)])?;
        let minus = at(model, &[(i, -hi)])?;
        h[a * k + a] = (plus[a] - 2.0 * f0 + minus) / (hi * hi);
        for b in 0..a {
            let (j, hj) = (free[b], steps[free[b]]);
            let both = at(model, &[(i, hi), (j, hj)])?;
            let v = (both - plus[a] - plus[b] + f0) / (hi * hj);
            h[a * k + b] = v;
            h[b * k + a] = v;
        }
    }
    // lme4's R = chol(H) is upper with H = RᵀR; ours is the lower L = Rᵀ, so R⁻¹g = L⁻ᵀg.
    if crate::dense::chol_small(&mut h, k).is_err() {
        return Ok(Vec::new());
    }
    let mut x: Vec<f64> = free.iter().map(|&i| gradient[i]).collect();
    crate::dense::solve_upper_small(&h, k, &mut x);
    let mut out = vec![f64::NAN; theta.len()];
    for (a, &i) in free.iter().enumerate() {
        out[i] = x[a];
    }
    Ok(out)
}

/// One BOBYQA run from `theta` (overwritten with the best point). A failed factorisation is
/// reported to BOBYQA as +∞ (it backs off) and the first such error kept in `first_error`.
fn minimize(
    solver: &mut Bobyqa,
    model: &mut Model,
    theta: &mut [f64],
    lower: &[f64],
    upper: &[f64],
    interrupted: &mut dyn FnMut() -> bool,
    first_error: &mut Option<CoreError>,
) -> CoreResult<bobyqa::Outcome> {
    let mut stopped = false;
    let outcome = solver.minimize(
        |t: &[f64]| {
            if stopped || interrupted() {
                stopped = true;
                return STOP_VALUE;
            }
            match model.objective(t) {
                Ok(v) if v.is_finite() => v,
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
    Ok(outcome)
}

/// Finite-difference gradient of the objective at θ, one-sided where the bound is active.
pub fn gradient(model: &mut Model, theta: &[f64], lower: &[f64]) -> CoreResult<Vec<f64>> {
    let mut g = vec![0.0; theta.len()];
    let mut t = theta.to_vec();
    let f0 = model.objective(theta)?;
    for i in 0..theta.len() {
        let h = 1e-5 * theta[i].abs().max(1.0);
        if theta[i] - h < lower[i] {
            t[i] = theta[i] + h;
            let f1 = model.objective(&t)?;
            g[i] = (f1 - f0) / h;
        } else {
            t[i] = theta[i] + h;
            let fp = model.objective(&t)?;
            t[i] = theta[i] - h;
            let fm = model.objective(&t)?;
            g[i] = (fp - fm) / (2.0 * h);
        }
        t[i] = theta[i];
    }
    Ok(g)
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
        let g = gradient(&mut model, &theta, &lower).unwrap();
        let ours = scaled_gradient(&mut model, &theta, &lower, &g).unwrap();
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
    }
}
