//! Influence diagnostics of a fitted linear mixed model, as HLMdiag defines them (Loy & Hofmann
//! 2014, JSS 56(5)): leverage, Cholesky marginal residuals, one-step deletion diagnostics, and
//! exact case deletion by refitting θ.
//!
//! Notation (Bates et al. 2015 §3). At θ̂, with U = ZΛ_θ (n × q, row i is uᵢᵀ) and σ² the
//! estimated residual variance:
//!
//! ```text
//!     V = σ²(I + UUᵀ)                        marginal covariance of y
//!     M = UᵀU + I = L Lᵀ                     the random-effects block of the penalised system
//!     σ²V⁻¹ = I − GGᵀ,  G = U L⁻ᵀ           (Woodbury); row i of G is wᵢᵀ, wᵢ = L⁻¹uᵢ
//!     C = (XᵀV⁻¹X)⁻¹ = cov(β̂),   P = V⁻¹ − V⁻¹X C XᵀV⁻¹
//! ```
//!
//! L is held blocked as `model.rs` holds it (first term block diagonal, the other terms as one
//! dense Schur complement S = L₂₂L₂₂ᵀ), so nothing here is n × n. wᵢ has q₁ entries in the
//! first-term block and L₂₂⁻¹tᵢ in the rest, where tᵢ lives on the few rest rows that the
//! first-term level of row i touches; with S⁻¹ formed once (when m is small next to n) every
//! wₐᵀw_b costs only the product of those row counts. β̂ gets one step of iterative refinement
//! (residual XᵀW(y − Xβ̂)), so Xᵀ V⁻¹ e = 0 holds to working precision.
//!
//! **Leverage.** The fitted values are ŷ = Xβ̂ + Zb̂ = y − σ²P y, so the hat matrix is
//! H = I − σ²P (lme4's `hatvalues`). Demidenko & Stukel (2005) split it as H = H₁ + H₂ with
//! H₁ = X C XᵀV⁻¹ and H₂ = ZDZᵀV⁻¹(I − H₁); Nobre & Singer (2011) use ZDZᵀ/σ² instead of H₂:
//!
//! ```text
//!     overall_i = 1 − σ²P_ii = ‖wᵢ‖² + σ² aᵢᵀ C aᵢ      fixef_i = xᵢᵀ C aᵢ      (aᵢ = row i of V⁻¹X)
//!     ranef_i = overall_i − fixef_i                       ranef.uc_i = ‖uᵢ‖²
//! ```
//!
//! **One-step deletion** of a set I of rows, θ and σ held at the fit (Christensen, Pearson &
//! Johnson 1992; HLMdiag's `cooks.distance`, `mdffits`, `covtrace`, `covratio`): with
//! e = y − Xβ̂, r = V⁻¹e, A_I the rows I of V⁻¹X, P_II = (V⁻¹)_II − A_I C A_Iᵀ,
//! F = A_Iᵀ P_II⁻¹ A_I and g = A_Iᵀ P_II⁻¹ r_I:
//!
//! ```text
//!     β̂ − β̂₍I₎ = C g                        cov(β̂₍I₎) = C₍I₎ = C + C F C
//!     cooksd = gᵀ C g / p                    mdffits = (C g)ᵀ C₍I₎⁻¹ (C g) / p
//!     covtrace = |tr(C⁻¹ C₍I₎) − p| = |tr(F C)|          covratio = det C₍I₎ / det C
//! ```
//!
//! These are the partitioned inverse of generalised least squares on the kept rows with V
//! unchanged, so for a large set (thousands of rows, where P_II is too big) β̂₍I₎ and C₍I₎ are
//! computed that way instead: the penalised system of the kept rows at the same θ, with σ²
//! held at the full-data value.
//!
//! **Cholesky marginal residuals** (Houseman, Ryan & Coull 2004): L_V⁻¹(y − Xβ̂) for the lower
//! Cholesky factor of V in the order of the rows. They are the standardised one-step-ahead
//! prediction errors of y given the rows before it, so a Kalman filter over the rows computes
//! them without forming V: with P₀ = I (q × q) and b̂₀ = 0,
//!
//! ```text
//!     dᵢ = 1 + uᵢᵀ Pᵢ₋₁ uᵢ,   νᵢ = eᵢ − uᵢᵀ b̂ᵢ₋₁,   residual_i = νᵢ / (σ √dᵢ)
//!     kᵢ = Pᵢ₋₁ uᵢ / dᵢ,      b̂ᵢ = b̂ᵢ₋₁ + kᵢ νᵢ,     Pᵢ = Pᵢ₋₁ − dᵢ kᵢ kᵢᵀ
//! ```
//!
//! Pᵢ = (I + Σ_{l ≤ i} u_l u_lᵀ)⁻¹ stays block diagonal for nested designs, and the update
//! touches only its non-zero part, so this costs O(n · group size²) there, O(n q²) when crossed.
//!
//! **Exact deletion** refits θ on the kept rows, warm-started at θ̂ (lme4's refit, as HLMdiag's
//! `case_delete` does by calling `lmer` again). The reduced model keeps every term and level:
//! a level left without rows has a zero block in ZᵀZ, hence a factor block of I, no effect on
//! the objective and a zero mode. Deletion sets run in parallel on one local rayon pool; each
//! worker is sequential, and results come back in input order, so the output does not depend
//! on the number of threads.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltError, LltParams};
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Spec};
use rayon::prelude::*;

use crate::dense::{chol_small, solve_lower_small, solve_upper_small, theta_to_lambda};
use crate::error::{CoreError, CoreResult};
use crate::model::{Model, Term};
use crate::optimize::{fit, FitOptions};

/// Largest dense q × q covariance the Kalman filter of the Cholesky residuals may allocate.
const KALMAN_MEMORY_LIMIT: u128 = 2_000_000_000;
/// Most floating-point operations the Kalman filter may take (about half a minute): crossed
/// designs fill P and cost O(n q²), which for large ones is out of reach.
const KALMAN_WORK_LIMIT: f64 = 5e10;

/// HLMdiag's four leverages, one value per observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Leverage {
    /// Diagonal of the hat matrix H = I − σ²P (lme4's `hatvalues`).
    pub overall: Vec<f64>,
    /// Diagonal of H₁ = X C XᵀV⁻¹.
    pub fixef: Vec<f64>,
    /// Diagonal of H₂ = ZDZᵀV⁻¹(I − H₁) (Demidenko & Stukel).
    pub ranef: Vec<f64>,
    /// Diagonal of ZDZᵀ/σ² (Nobre & Singer's unconfounded random-effects leverage).
    pub ranef_uc: Vec<f64>,
}

/// One-step deletion diagnostics, one value per deletion set (NaN where the set cannot be
/// deleted, for example when the remaining rows no longer identify β).
#[derive(Debug, Clone, PartialEq)]
pub struct OneStep {
    pub cooksd: Vec<f64>,
    pub mdffits: Vec<f64>,
    pub covtrace: Vec<f64>,
    pub covratio: Vec<f64>,
}

/// Marginal fitted values and residuals (see [`marginal_residuals`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MarginalResiduals {
    /// Xβ̂.
    pub fitted: Vec<f64>,
    /// y − Xβ̂.
    pub resid: Vec<f64>,
    /// L_V⁻¹(y − Xβ̂), when asked for; with prior weights, of the weighted model
    /// (V = W^{-1/2}-scaled, so the values are standardised either way).
    pub cholesky: Option<Vec<f64>>,
}

/// The refit after one deletion. When the reduced model cannot be fitted, `error` says why and
/// the numbers are NaN.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletionFit {
    pub theta: Vec<f64>,
    pub beta: Vec<f64>,
    /// p × p, column-major.
    pub beta_cov: Vec<f64>,
    pub sigma: f64,
    pub objective: f64,
    pub n_evals: usize,
    pub converged: bool,
    pub error: Option<CoreError>,
}

impl DeletionFit {
    fn failed(n_theta: usize, p: usize, error: CoreError) -> Self {
        DeletionFit {
            theta: vec![f64::NAN; n_theta],
            beta: vec![f64::NAN; p],
            beta_cov: vec![f64::NAN; p * p],
            sigma: f64::NAN,
            objective: f64::NAN,
            n_evals: 0,
            converged: false,
            error: Some(error),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Public entry points

/// HLMdiag's leverages at θ (normally θ̂).
pub fn leverage(model: &Model, theta: &[f64], n_jobs: usize) -> CoreResult<Leverage> {
    leverage_with(model, theta, n_jobs, RestInverse::Auto)
}

fn leverage_with(model: &Model, theta: &[f64], n_jobs: usize, rest: RestInverse) -> CoreResult<Leverage> {
    let factor = ReFactor::build(&model.terms, theta, rest)?;
    let marginal = Marginal::new(&Data::of(model), &factor)?;
    let (n, p) = (model.n, model.p);
    let w_sq = in_pool(n_jobs, || factor.squared_row_norms())?;
    let mut out = Leverage {
        overall: vec![0.0; n],
        fixef: vec![0.0; n],
        ranef: vec![0.0; n],
        ranef_uc: vec![0.0; n],
    };
    let c = &marginal.cov;
    for (i, &w_sq_i) in w_sq.iter().enumerate() {
        // C aᵢ, then aᵢᵀ C aᵢ and xᵢᵀ C aᵢ.
        let mut quad = 0.0;
        let mut fixef = 0.0;
        for r in 0..p {
            let mut ca = 0.0;
            for s in 0..p {
                ca += c[(r, s)] * marginal.vinv_x[(i, s)];
            }
            quad += marginal.vinv_x[(i, r)] * ca;
            fixef += model.x[(i, r)] * ca;
        }
        let overall = w_sq_i + marginal.sigma2 * quad;
        out.overall[i] = overall;
        out.fixef[i] = fixef;
        out.ranef[i] = overall - fixef;
        out.ranef_uc[i] = factor.row_norm_sq(i);
    }
    Ok(out)
}

/// HLMdiag's one-step deletion diagnostics at θ for each set of rows in `deletions`.
pub fn one_step(model: &Model, theta: &[f64], deletions: &[Vec<usize>], n_jobs: usize) -> CoreResult<OneStep> {
    one_step_with(model, theta, deletions, n_jobs, RestInverse::Auto, OneStepPath::Auto)
}

fn one_step_with(
    model: &Model,
    theta: &[f64],
    deletions: &[Vec<usize>],
    n_jobs: usize,
    rest: RestInverse,
    path: OneStepPath,
) -> CoreResult<OneStep> {
    check_deletions(deletions, model.n)?;
    let factor = ReFactor::build(&model.terms, theta, rest)?;
    let marginal = Marginal::new(&Data::of(model), &factor)?;
    let values: Vec<[f64; 4]> = in_pool(n_jobs, || {
        deletions
            .par_iter()
            .map(|set| one_step_set(model, &factor, &marginal, set, path))
            .collect()
    })?;
    Ok(OneStep {
        cooksd: values.iter().map(|v| v[0]).collect(),
        mdffits: values.iter().map(|v| v[1]).collect(),
        covtrace: values.iter().map(|v| v[2]).collect(),
        covratio: values.iter().map(|v| v[3]).collect(),
    })
}

/// Marginal fitted values Xβ̂ and residuals y − Xβ̂ at θ, and (`cholesky`) the Cholesky
/// marginal residuals L_V⁻¹(y − Xβ̂), in the order of the rows.
pub fn marginal_residuals(model: &Model, theta: &[f64], cholesky: bool) -> CoreResult<MarginalResiduals> {
    let factor = ReFactor::new(&model.terms, theta)?;
    let marginal = Marginal::new(&Data::of(model), &factor)?;
    let mut resid = marginal.resid.clone();
    let mut fitted: Vec<f64> = model.y.iter().zip(&resid).map(|(y, e)| y - e).collect();
    model.unweight(&mut resid);
    model.unweight(&mut fitted);
    let cholesky = if cholesky {
        Some(kalman_whitened(&factor, &marginal)?)
    } else {
        None
    };
    Ok(MarginalResiduals { fitted, resid, cholesky })
}

/// L_V⁻¹ e by the Kalman filter of the header.
fn kalman_whitened(factor: &ReFactor<'_>, marginal: &Marginal) -> CoreResult<Vec<f64>> {
    let e = &marginal.resid;
    let n = e.len();
    let sigma = marginal.sigma2.sqrt();
    let q = factor.q_total();
    let bytes = (q as u128) * (q as u128) * 8;
    if bytes > KALMAN_MEMORY_LIMIT {
        return Err(CoreError::TooLarge {
            bytes,
            limit: KALMAN_MEMORY_LIMIT,
        });
    }
    let mut cov = vec![0.0; q * q]; // P, column-major, symmetric
    for d in 0..q {
        cov[d * q + d] = 1.0;
    }
    let mut mean = vec![0.0; q];
    let mut gain = vec![0.0; q];
    let mut support: Vec<usize> = Vec::new();
    let mut work = 0.0f64;
    let mut out = vec![0.0; n];
    for (i, o) in out.iter_mut().enumerate() {
        // gain ← P uᵢ (uᵢ has one q_k block per term), prediction uᵢᵀ b̂.
        gain.iter_mut().for_each(|v| *v = 0.0);
        let mut prediction = 0.0;
        for (k, t) in factor.terms.iter().enumerate() {
            let col0 = factor.column(k, t.codes[i] as usize);
            let uik = factor.u_block(i, k);
            for (c, &uc) in uik.iter().enumerate() {
                if uc == 0.0 {
                    continue;
                }
                let col = &cov[(col0 + c) * q..(col0 + c + 1) * q];
                for (g, &v) in gain.iter_mut().zip(col) {
                    *g += v * uc;
                }
                prediction += uc * mean[col0 + c];
            }
        }
        support.clear();
        let mut quad = 0.0;
        for (k, t) in factor.terms.iter().enumerate() {
            let col0 = factor.column(k, t.codes[i] as usize);
            for (c, &uc) in factor.u_block(i, k).iter().enumerate() {
                quad += uc * gain[col0 + c];
            }
        }
        support.extend((0..q).filter(|&r| gain[r] != 0.0));
        let step = (support.len() * support.len()) as f64;
        work += step + q as f64;
        if i % 64 == 0 && work + step * (n - i) as f64 > KALMAN_WORK_LIMIT {
            return Err(CoreError::Unsupported {
                reason: format!(
                    "the Cholesky marginal residuals need at least {:.1e} operations here (n = {n} rows whose {q} random effects are crossed, so the factor of V fills in), more than the {KALMAN_WORK_LIMIT:.0e} allowed; the unstandardised marginal residuals are available",
                    work + step * (n - i) as f64
                ),
            });
        }
        let d = 1.0 + quad;
        let innovation = e[i] - prediction;
        *o = innovation / (sigma * d.sqrt());
        // P ← P − (P u)(P u)ᵀ / d and b̂ ← b̂ + (P u) ν / d, on the support of P u only.
        for &b in &support {
            let gb = gain[b] / d;
            let col = &mut cov[b * q..(b + 1) * q];
            for &a in &support {
                col[a] -= gain[a] * gb;
            }
            mean[b] += gain[b] * innovation / d;
        }
    }
    Ok(out)
}

/// Refits θ (warm-started at `theta_hat`) with each set of rows in `deletions` removed.
/// `n_jobs` worker threads (0: all cores); results in the order of `deletions`.
pub fn delete_and_refit(
    model: &Model,
    deletions: &[Vec<usize>],
    theta_hat: &[f64],
    n_jobs: usize,
    options: FitOptions,
) -> CoreResult<Vec<DeletionFit>> {
    check_deletions(deletions, model.n)?;
    if theta_hat.len() != model.n_theta {
        return Err(CoreError::InvalidTheta {
            reason: format!("starting values: expected {}, found {}", model.n_theta, theta_hat.len()),
        });
    }
    let (n_theta, p) = (model.n_theta, model.p);
    in_pool(n_jobs, || {
        deletions
            .par_iter()
            .map(|set| {
                let refit = reduced_model(model, set).and_then(|mut sub| {
                    sub.set_sequential();
                    fit(&mut sub, Some(theta_hat), options)
                });
                match refit {
                    Ok((est, record)) => DeletionFit {
                        theta: est.theta,
                        beta: est.beta,
                        beta_cov: est.beta_cov,
                        sigma: est.sigma,
                        objective: est.objective,
                        n_evals: record.n_evals,
                        converged: record.converged,
                        error: None,
                    },
                    Err(e) => DeletionFit::failed(n_theta, p, e),
                }
            })
            .collect()
    })
}

/// The model on the rows not in `drop`: same terms, same number of levels per term.
pub fn reduced_model(model: &Model, drop: &[usize]) -> CoreResult<Model> {
    if let Some(&bad) = drop.iter().find(|&&i| i >= model.n) {
        return Err(row_out_of_range(bad, model.n));
    }
    let (y, x, terms) = kept_rows(model, drop);
    let mut reduced = Model::new(&y, x.as_ref(), terms, model.reml)?;
    if let Some(sqrt_w) = &model.sqrt_w {
        let mut keep = vec![true; model.n];
        drop.iter().for_each(|&i| keep[i] = false);
        reduced.set_sqrt_weights(sqrt_w.iter().zip(&keep).filter(|(_, &k)| k).map(|(s, _)| *s).collect());
    }
    Ok(reduced)
}

/// y, X and the terms on the rows not in `drop` (which must be valid rows).
fn kept_rows(model: &Model, drop: &[usize]) -> (Vec<f64>, Mat<f64>, Vec<Term>) {
    let n = model.n;
    let mut keep = vec![true; n];
    for &i in drop {
        keep[i] = false;
    }
    let rows: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
    let y: Vec<f64> = rows.iter().map(|&i| model.y[i]).collect();
    let x = Mat::<f64>::from_fn(rows.len(), model.p, |r, c| model.x[(rows[r], c)]);
    let terms = model
        .terms
        .iter()
        .map(|t| {
            let mut z = Vec::with_capacity(rows.len() * t.q);
            for &i in &rows {
                z.extend_from_slice(&t.z[i * t.q..(i + 1) * t.q]);
            }
            Term {
                codes: rows.iter().map(|&i| t.codes[i]).collect(),
                z,
                q: t.q,
                n_levels: t.n_levels,
            }
        })
        .collect();
    (y, x, terms)
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn row_out_of_range(row: usize, n: usize) -> CoreError {
    CoreError::DimensionMismatch {
        what: format!("row {row} in a deletion set (rows must be below the number of observations)"),
        expected: n,
        found: row + 1,
    }
}

fn check_deletions(deletions: &[Vec<usize>], n: usize) -> CoreResult<()> {
    for set in deletions {
        if let Some(&bad) = set.iter().find(|&&i| i >= n) {
            return Err(row_out_of_range(bad, n));
        }
    }
    Ok(())
}

/// Runs `f` on a local pool of `n_jobs` threads (0: rayon's default, all cores).
fn in_pool<T: Send>(n_jobs: usize, f: impl FnOnce() -> T + Send) -> CoreResult<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n_jobs)
        .build()
        .map_err(|e| CoreError::Internal {
            reason: format!("could not start a pool of {n_jobs} worker threads: {e}"),
        })?;
    Ok(pool.install(f))
}

/// In-place lower Cholesky, sequential (faer's default would spread over all cores, and the
/// callers here already run one task per core).
fn cholesky_seq(a: &mut Mat<f64>) -> Result<(), usize> {
    let n = a.nrows();
    let mut buffer = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, Par::Seq, Spec::<LltParams, f64>::default()));
    let stack = MemStack::new(&mut buffer);
    match cholesky_in_place(a.as_mut(), Default::default(), Par::Seq, stack, Default::default()) {
        Ok(_) => Ok(()),
        Err(LltError::NonPositivePivot { index }) => Err(index),
    }
}

/// 2 Σ log Lᵢᵢ: the log-determinant from a lower Cholesky factor.
fn log_det(l: &Mat<f64>) -> f64 {
    2.0 * (0..l.nrows()).map(|i| l[(i, i)].ln()).sum::<f64>()
}

/// A ← L⁻ᵀ L⁻¹ A for the lower Cholesky factor L: solves (L Lᵀ) X = A in place.
fn chol_solve(l: &Mat<f64>, a: &mut Mat<f64>) {
    solve_lower_triangular_in_place(l.as_ref(), a.as_mut(), Par::Seq);
    solve_upper_triangular_in_place(l.transpose(), a.as_mut(), Par::Seq);
}

/// The blocked lower Cholesky factor L of M = UᵀU + I at one θ (U = ZΛ_θ), in the layout of
/// `model.rs`: the first term's q₁ × q₁ diagonal blocks, the sparse rows of L₂₁ per level of
/// the first term, and the dense m × m factor of the Schur complement of the other terms.
struct ReFactor<'a> {
    terms: &'a [Term],
    theta: Vec<f64>,
    q1: usize,
    l1: usize,
    m: usize,
    /// Offset of term k within a row of `u`, and the row length Σ q_k.
    uoff: Vec<usize>,
    qsum: usize,
    /// Offset of term k ≥ 1 within the rest block.
    rest_off: Vec<usize>,
    /// n × qsum, row-major: uᵢ restricted to term k is λ_kᵀ z_{k,i}.
    u: Vec<f64>,
    l11: Vec<f64>,
    l21_ptr: Vec<usize>,
    l21_rows: Vec<usize>,
    l21_vals: Vec<f64>,
    l22: Mat<f64>,
    /// S⁻¹ = (L₂₂L₂₂ᵀ)⁻¹, dense m × m, when forming it is cheaper than per-row solves.
    rest_inverse: Option<Mat<f64>>,
}

/// Whether to form S⁻¹ (tests force each way).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(not(test), allow(dead_code))]
enum RestInverse {
    Auto,
    Always,
    Never,
}

/// Largest rest block whose dense inverse is formed (m² doubles: 256 MB).
const REST_INVERSE_LIMIT: usize = 5792;

impl<'a> ReFactor<'a> {
    fn new(terms: &'a [Term], theta: &[f64]) -> CoreResult<Self> {
        Self::build(terms, theta, RestInverse::Auto)
    }

    fn build(terms: &'a [Term], theta: &[f64], rest_inverse: RestInverse) -> CoreResult<Self> {
        if terms.is_empty() {
            return Err(CoreError::Unsupported {
                reason: "no random-effects term".into(),
            });
        }
        let n_theta: usize = terms.iter().map(|t| t.q * (t.q + 1) / 2).sum();
        if theta.len() != n_theta {
            return Err(CoreError::InvalidTheta {
                reason: format!("expected {n_theta} values, found {}", theta.len()),
            });
        }
        if let Some(i) = theta.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::InvalidTheta {
                reason: format!("theta[{i}] is not finite"),
            });
        }
        let n = terms[0].codes.len();
        let mut uoff = Vec::with_capacity(terms.len());
        let mut qsum = 0;
        for t in terms {
            uoff.push(qsum);
            qsum += t.q;
        }
        let mut rest_off = vec![0usize; terms.len()];
        let mut m = 0;
        for (k, t) in terms.iter().enumerate().skip(1) {
            rest_off[k] = m;
            m += t.n_levels * t.q;
        }

        // u rows: λ_kᵀ z (λ lower triangular, so entry c sums rows r ≥ c).
        let mut u = vec![0.0; n * qsum];
        let mut toff = 0;
        for (k, t) in terms.iter().enumerate() {
            let q = t.q;
            let mut lam = vec![0.0; q * q];
            theta_to_lambda(&theta[toff..toff + q * (q + 1) / 2], q, &mut lam);
            toff += q * (q + 1) / 2;
            for i in 0..n {
                let z = &t.z[i * q..(i + 1) * q];
                let dst = &mut u[i * qsum + uoff[k]..i * qsum + uoff[k] + q];
                for c in 0..q {
                    let mut s = 0.0;
                    for r in c..q {
                        s += lam[c * q + r] * z[r];
                    }
                    dst[c] = s;
                }
            }
        }

        // L₁₁: chol(I + Σ u₁u₁ᵀ) per level of the first term.
        let t0 = &terms[0];
        let (q1, l1) = (t0.q, t0.n_levels);
        let mut l11 = vec![0.0; l1 * q1 * q1];
        for j in 0..l1 {
            for c in 0..q1 {
                l11[j * q1 * q1 + c * q1 + c] = 1.0;
            }
        }
        for i in 0..n {
            let j = t0.codes[i] as usize;
            let u0 = &u[i * qsum..i * qsum + q1];
            let blk = &mut l11[j * q1 * q1..(j + 1) * q1 * q1];
            for c2 in 0..q1 {
                for c1 in 0..q1 {
                    blk[c2 * q1 + c1] += u0[c1] * u0[c2];
                }
            }
        }
        for j in 0..l1 {
            chol_small(&mut l11[j * q1 * q1..(j + 1) * q1 * q1], q1).map_err(|pivot| CoreError::NotPositiveDefinite {
                block: "first random-effects".into(),
                pivot: j * q1 + pivot,
            })?;
        }

        // L₂₁: per level j of the first term, the rest rows it touches (ascending), each row
        // L₁₁ⱼ⁻¹ Σ_{i in j} u_rest,ᵢ[r] u₁ᵢ.
        let mut l21_ptr = vec![0usize; l1 + 1];
        let mut l21_rows = Vec::new();
        let mut l21_vals = Vec::new();
        let mut l22 = Mat::<f64>::zeros(m, m);
        if m > 0 {
            let mut start = vec![0usize; l1 + 1];
            for &c in &t0.codes {
                start[c as usize + 1] += 1;
            }
            for j in 0..l1 {
                start[j + 1] += start[j];
            }
            let mut order = vec![0usize; n];
            let mut next = start.clone();
            for i in 0..n {
                let j = t0.codes[i] as usize;
                order[next[j]] = i;
                next[j] += 1;
            }
            let mut slot = vec![usize::MAX; m];
            let mut touched: Vec<usize> = Vec::new();
            let mut acc: Vec<f64> = Vec::new();
            for j in 0..l1 {
                touched.clear();
                acc.clear();
                for &i in &order[start[j]..start[j + 1]] {
                    let u0 = &u[i * qsum..i * qsum + q1];
                    for (k, t) in terms.iter().enumerate().skip(1) {
                        let base = rest_off[k] + t.codes[i] as usize * t.q;
                        let uk = &u[i * qsum + uoff[k]..i * qsum + uoff[k] + t.q];
                        for (c, &ukc) in uk.iter().enumerate() {
                            let r = base + c;
                            if slot[r] == usize::MAX {
                                slot[r] = touched.len();
                                touched.push(r);
                                acc.extend(std::iter::repeat_n(0.0, q1));
                            }
                            let s = slot[r];
                            for c1 in 0..q1 {
                                acc[s * q1 + c1] += ukc * u0[c1];
                            }
                        }
                    }
                }
                let mut idx: Vec<usize> = (0..touched.len()).collect();
                idx.sort_unstable_by_key(|&s| touched[s]);
                let lj = &l11[j * q1 * q1..(j + 1) * q1 * q1];
                for &s in &idx {
                    l21_rows.push(touched[s]);
                    let mut row = acc[s * q1..(s + 1) * q1].to_vec();
                    solve_lower_small(lj, q1, &mut row);
                    l21_vals.extend_from_slice(&row);
                }
                for &r in &touched {
                    slot[r] = usize::MAX;
                }
                l21_ptr[j + 1] = l21_rows.len();
            }

            // S = I + Σ u_rest u_restᵀ − Σⱼ L₂₁ⱼ L₂₁ⱼᵀ, then L₂₂ = chol(S).
            for d in 0..m {
                l22[(d, d)] = 1.0;
            }
            for i in 0..n {
                for (k, tk) in terms.iter().enumerate().skip(1) {
                    let bk = rest_off[k] + tk.codes[i] as usize * tk.q;
                    let uk = &u[i * qsum + uoff[k]..i * qsum + uoff[k] + tk.q];
                    for (h, th) in terms.iter().enumerate().skip(1) {
                        let bh = rest_off[h] + th.codes[i] as usize * th.q;
                        let uh = &u[i * qsum + uoff[h]..i * qsum + uoff[h] + th.q];
                        for ch in 0..th.q {
                            for ck in 0..tk.q {
                                l22[(bk + ck, bh + ch)] += uk[ck] * uh[ch];
                            }
                        }
                    }
                }
            }
            for j in 0..l1 {
                let (s, e) = (l21_ptr[j], l21_ptr[j + 1]);
                for a in s..e {
                    let va = &l21_vals[a * q1..(a + 1) * q1];
                    for b in s..e {
                        let vb = &l21_vals[b * q1..(b + 1) * q1];
                        let dot: f64 = va.iter().zip(vb).map(|(x, y)| x * y).sum();
                        l22[(l21_rows[a], l21_rows[b])] -= dot;
                    }
                }
            }
            cholesky_seq(&mut l22).map_err(|pivot| CoreError::NotPositiveDefinite {
                block: "random-effects".into(),
                pivot,
            })?;
            // Only the lower triangle is the factor; clear the rest so it can be read freely.
            for c in 1..m {
                for r in 0..c {
                    l22[(r, c)] = 0.0;
                }
            }
        }

        // Per-row solves cost about m²/4 each; S⁻¹ costs 2m³/3 once, then each row only the
        // square of the number of rest rows its first-term level touches.
        let form_inverse = m > 0
            && match rest_inverse {
                RestInverse::Always => true,
                RestInverse::Never => false,
                RestInverse::Auto => m <= REST_INVERSE_LIMIT && 8 * m < 3 * n,
            };
        let rest_inverse = if form_inverse {
            let mut l22_inv = Mat::<f64>::identity(m, m);
            solve_lower_triangular_in_place(l22.as_ref(), l22_inv.as_mut(), Par::Seq);
            let mut inv = Mat::<f64>::zeros(m, m);
            matmul(inv.as_mut(), Accum::Replace, l22_inv.transpose(), l22_inv.as_ref(), 1.0, Par::Seq);
            Some(inv)
        } else {
            None
        };

        Ok(ReFactor {
            terms,
            theta: theta.to_vec(),
            q1,
            l1,
            m,
            uoff,
            qsum,
            rest_off,
            u,
            l11,
            l21_ptr,
            l21_rows,
            l21_vals,
            l22,
            rest_inverse,
        })
    }

    fn n(&self) -> usize {
        self.terms[0].codes.len()
    }

    fn q_total(&self) -> usize {
        self.q1 * self.l1 + self.m
    }

    /// Global column of level `level` of term k (first term first, then the rest block).
    fn column(&self, k: usize, level: usize) -> usize {
        if k == 0 {
            level * self.q1
        } else {
            self.q1 * self.l1 + self.rest_off[k] + level * self.terms[k].q
        }
    }

    fn u_block(&self, i: usize, k: usize) -> &[f64] {
        let start = i * self.qsum + self.uoff[k];
        &self.u[start..start + self.terms[k].q]
    }

    /// ‖uᵢ‖² = (ZΛΛᵀZᵀ)ᵢᵢ.
    fn row_norm_sq(&self, i: usize) -> f64 {
        self.u[i * self.qsum..(i + 1) * self.qsum].iter().map(|v| v * v).sum()
    }

    /// v ← L⁻¹ v for a vector over all q random effects.
    fn solve_l(&self, v: &mut [f64]) {
        let (q1, l1, m) = (self.q1, self.l1, self.m);
        let (v1, v2) = v.split_at_mut(q1 * l1);
        for j in 0..l1 {
            let seg = &mut v1[j * q1..(j + 1) * q1];
            solve_lower_small(&self.l11[j * q1 * q1..(j + 1) * q1 * q1], q1, seg);
            for a in self.l21_ptr[j]..self.l21_ptr[j + 1] {
                let va = &self.l21_vals[a * q1..(a + 1) * q1];
                v2[self.l21_rows[a]] -= va.iter().zip(seg.iter()).map(|(x, y)| x * y).sum::<f64>();
            }
        }
        if m > 0 {
            let mut col = faer::MatMut::from_column_major_slice_mut(v2, m, 1);
            solve_lower_triangular_in_place(self.l22.as_ref(), col.as_mut(), Par::Seq);
        }
    }

    /// v ← L⁻ᵀ v.
    fn solve_lt(&self, v: &mut [f64]) {
        let (q1, l1, m) = (self.q1, self.l1, self.m);
        let (v1, v2) = v.split_at_mut(q1 * l1);
        if m > 0 {
            let mut col = faer::MatMut::from_column_major_slice_mut(v2, m, 1);
            solve_upper_triangular_in_place(self.l22.transpose(), col.as_mut(), Par::Seq);
        }
        for j in 0..l1 {
            let seg = &mut v1[j * q1..(j + 1) * q1];
            for a in self.l21_ptr[j]..self.l21_ptr[j + 1] {
                let va = &self.l21_vals[a * q1..(a + 1) * q1];
                let w = v2[self.l21_rows[a]];
                for c in 0..q1 {
                    seg[c] -= va[c] * w;
                }
            }
            solve_upper_small(&self.l11[j * q1 * q1..(j + 1) * q1 * q1], q1, seg);
        }
    }

    /// W a = σ²V⁻¹ a = a − U M⁻¹ Uᵀ a for an n-vector a.
    fn apply_w(&self, a: &[f64], out: &mut [f64]) {
        let n = self.n();
        let mut t = vec![0.0; self.q_total()];
        for (i, &ai) in a.iter().enumerate().take(n) {
            for (k, tk) in self.terms.iter().enumerate() {
                let col = self.column(k, tk.codes[i] as usize);
                for (c, &uc) in self.u_block(i, k).iter().enumerate() {
                    t[col + c] += uc * ai;
                }
            }
        }
        self.solve_l(&mut t);
        self.solve_lt(&mut t);
        for i in 0..n {
            let mut s = a[i];
            for (k, tk) in self.terms.iter().enumerate() {
                let col = self.column(k, tk.codes[i] as usize);
                for (c, &uc) in self.u_block(i, k).iter().enumerate() {
                    s -= uc * t[col + c];
                }
            }
            out[i] = s;
        }
    }

    /// wᵢ = L⁻¹ uᵢ in compressed form. Its first-term part is the q₁ entries of level
    /// j = codes₁[i], `w1` = L₁₁ⱼ⁻¹ u₁ᵢ. Its rest part is L₂₂⁻¹ tᵢ with tᵢ = u_rest,ᵢ − L₂₁ⱼ w1,
    /// non-zero only on the rest rows that level j touches (`l21_rows` of j): `t` gets those
    /// values, and the return value is j.
    fn row(&self, i: usize, w1: &mut [f64], t: &mut Vec<f64>) -> usize {
        let q1 = self.q1;
        let j = self.terms[0].codes[i] as usize;
        w1.copy_from_slice(self.u_block(i, 0));
        solve_lower_small(&self.l11[j * q1 * q1..(j + 1) * q1 * q1], q1, w1);
        let (s, e) = (self.l21_ptr[j], self.l21_ptr[j + 1]);
        let rows = &self.l21_rows[s..e];
        t.clear();
        t.extend((s..e).map(|a| {
            let va = &self.l21_vals[a * q1..(a + 1) * q1];
            -va.iter().zip(w1.iter()).map(|(x, y)| x * y).sum::<f64>()
        }));
        for (k, tk) in self.terms.iter().enumerate().skip(1) {
            let base = self.rest_off[k] + tk.codes[i] as usize * tk.q;
            for (c, &uc) in self.u_block(i, k).iter().enumerate() {
                // Level j's rows include every rest row of its own observations.
                let at = rows.binary_search(&(base + c)).expect("rest row of an observation of level j");
                t[at] += uc;
            }
        }
        j
    }

    /// The rest rows touched by level j of the first term (ascending).
    fn rows_of(&self, j: usize) -> &[usize] {
        &self.l21_rows[self.l21_ptr[j]..self.l21_ptr[j + 1]]
    }

    /// L₂₂⁻¹ t, dense, for t on the rows of level j (entries before the first row stay 0).
    fn rest_solve(&self, j: usize, t: &[f64], w2: &mut [f64]) {
        let m = self.m;
        w2.iter_mut().for_each(|v| *v = 0.0);
        let rows = self.rows_of(j);
        for (&r, &v) in rows.iter().zip(t) {
            w2[r] = v;
        }
        let first = rows.first().copied().unwrap_or(m);
        for c in first..m {
            let col = self.l22.col(c).try_as_col_major().unwrap().as_slice();
            let v = w2[c] / col[c];
            w2[c] = v;
            if v != 0.0 {
                for r in c + 1..m {
                    w2[r] -= col[r] * v;
                }
            }
        }
    }

    /// tₐᵀ S⁻¹ t_b for two compressed rest parts (levels jₐ, j_b of the first term), by the
    /// dense S⁻¹ = L₂₂⁻ᵀL₂₂⁻¹ when it was formed, else through dense solves `wa`, `wb`.
    fn rest_inner(&self, ja: usize, ta: &[f64], jb: usize, tb: &[f64], dense: Option<(&[f64], &[f64])>) -> f64 {
        match (&self.rest_inverse, dense) {
            (_, Some((wa, wb))) => wa.iter().zip(wb).map(|(x, y)| x * y).sum(),
            (Some(inv), None) => {
                let (ra, rb) = (self.rows_of(ja), self.rows_of(jb));
                let mut s = 0.0;
                for (&rb_, &vb) in rb.iter().zip(tb) {
                    let col = inv.col(rb_).try_as_col_major().unwrap().as_slice();
                    let mut acc = 0.0;
                    for (&ra_, &va) in ra.iter().zip(ta) {
                        acc += col[ra_] * va;
                    }
                    s += acc * vb;
                }
                s
            }
            (None, None) => unreachable!("rest_inner needs S⁻¹ or the dense solves"),
        }
    }

    /// ‖wᵢ‖² for every row: (GGᵀ)ᵢᵢ = 1 − σ²(V⁻¹)ᵢᵢ. Runs on the current rayon pool.
    fn squared_row_norms(&self) -> Vec<f64> {
        (0..self.n())
            .into_par_iter()
            .map_init(
                || (vec![0.0; self.q1], Vec::new(), vec![0.0; self.m]),
                |(w1, t, w2), i| {
                    let j = self.row(i, w1, t);
                    let a: f64 = w1.iter().map(|v| v * v).sum();
                    if self.m == 0 {
                        return a;
                    }
                    let b = if self.rest_inverse.is_some() {
                        self.rest_inner(j, t, j, t, None)
                    } else {
                        self.rest_solve(j, t, w2);
                        w2.iter().map(|v| v * v).sum()
                    };
                    a + b
                },
            )
            .collect()
    }
}

/// The data of a model (or of the model without some rows).
struct Data<'a> {
    y: &'a [f64],
    x: MatRef<'a, f64>,
    reml: bool,
}

impl<'a> Data<'a> {
    fn of(model: &'a Model) -> Self {
        Data {
            y: &model.y,
            x: Mat::as_ref(&model.x),
            reml: model.reml,
        }
    }
}

/// The marginal (GLS) quantities at θ: σ², β̂, C = cov(β̂), V⁻¹X and V⁻¹(y − Xβ̂).
struct Marginal {
    sigma2: f64,
    beta: Vec<f64>,
    /// Marginal residuals e = y − Xβ̂.
    resid: Vec<f64>,
    cov: Mat<f64>,
    /// (XᵀWX)⁻¹ = C / σ².
    cov_unit: Mat<f64>,
    /// Lower Cholesky factor of C, and log det C.
    cov_chol: Mat<f64>,
    cov_log_det: f64,
    vinv_x: Mat<f64>,
    vinv_e: Vec<f64>,
}

impl Marginal {
    fn new(model: &Data<'_>, factor: &ReFactor<'_>) -> CoreResult<Self> {
        let (n, p) = (model.y.len(), model.x.ncols());
        // The kept rows of a one-step deletion can be fewer than the fixed effects: β̂ is then
        // not identified, whatever rounding lets the singular XᵀWX below factor into (and the
        // REML degrees of freedom n − p would be negative).
        if n < p {
            return Err(CoreError::Unsupported {
                reason: format!("{n} rows cannot identify {p} fixed effects"),
            });
        }
        let mut wx = Mat::<f64>::zeros(n, p);
        let mut col_in = vec![0.0; n];
        let mut col_out = vec![0.0; n];
        for c in 0..p {
            for (i, v) in col_in.iter_mut().enumerate() {
                *v = model.x[(i, c)];
            }
            factor.apply_w(&col_in, &mut col_out);
            for (i, &v) in col_out.iter().enumerate() {
                wx[(i, c)] = v;
            }
        }
        let mut wy = vec![0.0; n];
        factor.apply_w(model.y, &mut wy);

        // XᵀWX β = XᵀWy (GLS), r² = yᵀWy − βᵀXᵀWy, σ² = r² / dof (as the profiled fit).
        let mut xtwx = Mat::<f64>::zeros(p, p);
        let mut xtwy = Mat::<f64>::zeros(p, 1);
        for a in 0..p {
            for b in 0..p {
                xtwx[(a, b)] = (0..n).map(|i| model.x[(i, a)] * wx[(i, b)]).sum();
            }
            xtwy[(a, 0)] = (0..n).map(|i| model.x[(i, a)] * wy[i]).sum();
        }
        // Symmetrise against rounding.
        for a in 0..p {
            for b in 0..a {
                let v = 0.5 * (xtwx[(a, b)] + xtwx[(b, a)]);
                xtwx[(a, b)] = v;
                xtwx[(b, a)] = v;
            }
        }
        let mut r = xtwx.clone();
        cholesky_seq(&mut r).map_err(|pivot| CoreError::NotPositiveDefinite {
            block: "fixed-effects".into(),
            pivot,
        })?;
        let mut beta = xtwy.clone();
        chol_solve(&r, &mut beta);
        let mut beta: Vec<f64> = (0..p).map(|c| beta[(c, 0)]).collect();
        // One step of iterative refinement, with the residual of the normal equations formed
        // as XᵀW(y − Xβ) (small numbers, no cancellation): β is then correct to working
        // precision, and Xᵀ V⁻¹ e = 0 holds for the marginal residuals e = y − Xβ̂.
        let residuals = |beta: &[f64]| -> Vec<f64> {
            (0..n)
                .map(|i| model.y[i] - (0..p).map(|c| model.x[(i, c)] * beta[c]).sum::<f64>())
                .collect()
        };
        let mut we = vec![0.0; n];
        factor.apply_w(&residuals(&beta), &mut we);
        let mut step = Mat::<f64>::zeros(p, 1);
        for c in 0..p {
            step[(c, 0)] = (0..n).map(|i| model.x[(i, c)] * we[i]).sum();
        }
        chol_solve(&r, &mut step);
        for c in 0..p {
            beta[c] += step[(c, 0)];
        }
        let e = residuals(&beta);
        factor.apply_w(&e, &mut we);
        // r² = eᵀWe: the penalised residual sum of squares; σ² = r² / dof as the profiled fit.
        let r2: f64 = e.iter().zip(&we).map(|(a, b)| a * b).sum();
        let dof = if model.reml { (n - p) as f64 } else { n as f64 };
        let sigma2 = r2 / dof;

        let mut cov_unit = Mat::<f64>::identity(p, p);
        chol_solve(&r, &mut cov_unit);
        for a in 0..p {
            for b in 0..a {
                let v = 0.5 * (cov_unit[(a, b)] + cov_unit[(b, a)]);
                cov_unit[(a, b)] = v;
                cov_unit[(b, a)] = v;
            }
        }
        let mut cov = cov_unit.clone();
        for a in 0..p {
            for b in 0..p {
                cov[(a, b)] *= sigma2;
            }
        }
        let mut cov_chol = cov.clone();
        cholesky_seq(&mut cov_chol).map_err(|pivot| CoreError::NotPositiveDefinite {
            block: "fixed-effects covariance".into(),
            pivot,
        })?;
        let cov_log_det = log_det(&cov_chol);

        let mut vinv_x = wx;
        for i in 0..n {
            for c in 0..p {
                vinv_x[(i, c)] /= sigma2;
            }
        }
        let vinv_e: Vec<f64> = we.iter().map(|v| v / sigma2).collect();
        Ok(Marginal {
            sigma2,
            beta,
            resid: e,
            cov,
            cov_unit,
            cov_chol,
            cov_log_det,
            vinv_x,
            vinv_e,
        })
    }
}

/// How a one-step deletion is computed (tests force each way).
#[derive(Debug, Clone, Copy, PartialEq)]
enum OneStepPath {
    Auto,
    /// The k × k system P_II of the header.
    Partitioned,
    /// Generalised least squares on the kept rows at the same θ and σ: the same β̂₍I₎ and
    /// C₍I₎ (the one-step formulas are its partitioned inverse), cheaper for large sets.
    Reduced,
}

/// [cooksd, mdffits, covtrace, covratio] for deleting the rows in `set` (see the header).
fn one_step_set(model: &Model, factor: &ReFactor<'_>, marginal: &Marginal, set: &[usize], path: OneStepPath) -> [f64; 4] {
    let k = set.len();
    if k == 0 {
        return [0.0, 0.0, 0.0, 1.0];
    }
    // Fewer rows left than fixed effects: β̂₍I₎ is not identified, and either path would turn
    // the singular system into rounding noise rather than fail.
    if k + model.p > model.n && rows_left(set, model.n) < model.p {
        return [f64::NAN; 4];
    }
    let path = match path {
        OneStepPath::Auto => {
            // P_II: k² inner products of compressed rows (or of length-m solves) and a k³/3
            // factorisation; the reduced fit: forming and factoring the penalised system anew.
            let (q1, m, p) = (factor.q1 as f64, factor.m as f64, marginal.beta.len() as f64);
            let per_row: f64 = set
                .iter()
                .map(|&i| {
                    let j = factor.terms[0].codes[i] as usize;
                    if factor.rest_inverse.is_some() {
                        factor.rows_of(j).len() as f64
                    } else {
                        m
                    }
                })
                .sum::<f64>()
                / k as f64;
            let kf = k as f64;
            let partitioned = kf * kf * (per_row * per_row + q1 + p) + kf * kf * kf / 3.0;
            let n = factor.n() as f64;
            let width = factor.qsum as f64 + p + 1.0;
            let reduced = n * width * width + m * m * m / 3.0 + (p + 1.0) * (m * m + n * width);
            if partitioned <= reduced {
                OneStepPath::Partitioned
            } else {
                OneStepPath::Reduced
            }
        }
        other => other,
    };
    let deleted = match path {
        OneStepPath::Reduced => one_step_reduced(model, factor, marginal, set),
        _ => one_step_partitioned(factor, marginal, set),
    };
    match deleted {
        Some((beta, cov)) => deletion_diagnostics(marginal, &beta, &cov),
        None => [f64::NAN; 4],
    }
}

/// How many of the `n` rows are not in `set` (valid rows, possibly repeated).
fn rows_left(set: &[usize], n: usize) -> usize {
    let mut distinct = set.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    n - distinct.len()
}

/// β̂₍I₎ and C₍I₎ from the k × k system: β̂ − β̂₍I₎ = C g, C₍I₎ = C + C F C.
fn one_step_partitioned(factor: &ReFactor<'_>, marginal: &Marginal, set: &[usize]) -> Option<(Vec<f64>, Mat<f64>)> {
    let k = set.len();
    let p = marginal.beta.len();
    let (q1, m) = (factor.q1, factor.m);
    let dense = m > 0 && factor.rest_inverse.is_none();
    let mut w1 = vec![0.0; k * q1];
    let mut level = vec![0usize; k];
    let mut ts: Vec<Vec<f64>> = vec![Vec::new(); k];
    let mut w2 = vec![0.0; if dense { k * m } else { 0 }];
    for (a, &i) in set.iter().enumerate() {
        level[a] = factor.row(i, &mut w1[a * q1..(a + 1) * q1], &mut ts[a]);
        if dense {
            factor.rest_solve(level[a], &ts[a], &mut w2[a * m..(a + 1) * m]);
        }
    }
    let sigma2 = marginal.sigma2;
    let c = &marginal.cov;

    // A_I C, k × p.
    let mut ac = Mat::<f64>::zeros(k, p);
    for (a, &i) in set.iter().enumerate() {
        for s in 0..p {
            ac[(a, s)] = (0..p).map(|r| marginal.vinv_x[(i, r)] * c[(r, s)]).sum();
        }
    }
    // P_II = (I − W_IᵀW_I)/σ² − A_I C A_Iᵀ.
    let mut p_ii = Mat::<f64>::zeros(k, k);
    for a in 0..k {
        for b in 0..=a {
            let mut g = 0.0;
            if level[a] == level[b] {
                g += (0..q1).map(|c1| w1[a * q1 + c1] * w1[b * q1 + c1]).sum::<f64>();
            }
            if m > 0 {
                let dense_pair = if dense {
                    Some((&w2[a * m..(a + 1) * m], &w2[b * m..(b + 1) * m]))
                } else {
                    None
                };
                g += factor.rest_inner(level[a], &ts[a], level[b], &ts[b], dense_pair);
            }
            let delta = if a == b { 1.0 } else { 0.0 };
            let aca: f64 = (0..p).map(|s| ac[(a, s)] * marginal.vinv_x[(set[b], s)]).sum();
            let v = (delta - g) / sigma2 - aca;
            p_ii[(a, b)] = v;
            p_ii[(b, a)] = v;
        }
    }
    cholesky_seq(&mut p_ii).ok()?;
    // Y = P_II⁻¹ [A_I | r_I].
    let mut rhs = Mat::<f64>::zeros(k, p + 1);
    for (a, &i) in set.iter().enumerate() {
        for s in 0..p {
            rhs[(a, s)] = marginal.vinv_x[(i, s)];
        }
        rhs[(a, p)] = marginal.vinv_e[i];
    }
    let mut y = rhs.clone();
    chol_solve(&p_ii, &mut y);
    // F = A_Iᵀ Y[:, :p], g = A_Iᵀ Y[:, p].
    let mut f = Mat::<f64>::zeros(p, p);
    let mut g = vec![0.0; p];
    for r in 0..p {
        for s in 0..p {
            f[(r, s)] = (0..k).map(|a| rhs[(a, r)] * y[(a, s)]).sum();
        }
        g[r] = (0..k).map(|a| rhs[(a, r)] * y[(a, p)]).sum();
    }
    let beta: Vec<f64> = (0..p)
        .map(|r| marginal.beta[r] - (0..p).map(|s| c[(r, s)] * g[s]).sum::<f64>())
        .collect();
    let mut fc = Mat::<f64>::zeros(p, p);
    matmul(fc.as_mut(), Accum::Replace, f.as_ref(), c.as_ref(), 1.0, Par::Seq);
    let mut cov = c.clone();
    matmul(cov.as_mut(), Accum::Add, c.as_ref(), fc.as_ref(), 1.0, Par::Seq);
    Some((beta, cov))
}

/// β̂₍I₎ and C₍I₎ from generalised least squares on the kept rows with V's θ and σ.
fn one_step_reduced(model: &Model, factor: &ReFactor<'_>, marginal: &Marginal, set: &[usize]) -> Option<(Vec<f64>, Mat<f64>)> {
    let (y, x, terms) = kept_rows(model, set);
    // θ as the factor holds it, through the terms' λ (unchanged by dropping rows).
    let theta = factor.theta.clone();
    let reduced_factor = ReFactor::new(&terms, &theta).ok()?;
    let data = Data {
        y: &y,
        x: x.as_ref(),
        reml: model.reml,
    };
    let reduced = Marginal::new(&data, &reduced_factor).ok()?;
    // C₍I₎ = σ² (X₍I₎ᵀ W₍I₎ X₍I₎)⁻¹ with the full-data σ² (the reduced fit's own σ² cancels).
    let mut cov = reduced.cov_unit;
    for r in 0..cov.nrows() {
        for s in 0..cov.ncols() {
            cov[(r, s)] *= marginal.sigma2;
        }
    }
    Some((reduced.beta, cov))
}

/// HLMdiag's four measures from β̂₍I₎ and C₍I₎ (see the header).
fn deletion_diagnostics(marginal: &Marginal, beta_deleted: &[f64], cov_deleted: &Mat<f64>) -> [f64; 4] {
    let p = beta_deleted.len();
    let pf = p as f64;
    let mut change = Mat::<f64>::zeros(p, 1);
    for r in 0..p {
        change[(r, 0)] = marginal.beta[r] - beta_deleted[r];
    }
    let mut solved = change.clone();
    chol_solve(&marginal.cov_chol, &mut solved);
    let cooksd = (0..p).map(|r| change[(r, 0)] * solved[(r, 0)]).sum::<f64>() / pf;
    let mut ratio = cov_deleted.clone();
    chol_solve(&marginal.cov_chol, &mut ratio);
    let covtrace = ((0..p).map(|r| ratio[(r, r)]).sum::<f64>() - pf).abs();
    let mut sym = cov_deleted.clone();
    for r in 0..p {
        for s in 0..r {
            let v = 0.5 * (sym[(r, s)] + sym[(s, r)]);
            sym[(r, s)] = v;
            sym[(s, r)] = v;
        }
    }
    if cholesky_seq(&mut sym).is_err() {
        return [cooksd, f64::NAN, covtrace, f64::NAN];
    }
    let covratio = (log_det(&sym) - marginal.cov_log_det).exp();
    let mut z = change.clone();
    chol_solve(&sym, &mut z);
    let mdffits = (0..p).map(|r| change[(r, 0)] * z[(r, 0)]).sum::<f64>() / pf;
    [cooksd, mdffits, covtrace, covratio]
}

#[cfg(test)]
// Brute-force dense oracles read most clearly with explicit indices.
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use crate::test_rng::Lcg;

    /// A crossed design with real signal: term 0 (intercept + slope, 8 levels), term 1
    /// (intercept, 5 levels), p = 2.
    fn crossed_model(seed: u64, n: usize, reml: bool) -> Model {
        let mut g = Lcg(seed);
        let p = 2;
        let mut x = Mat::<f64>::zeros(n, p);
        let mut y = vec![0.0; n];
        let (l0, l1) = (8usize, 5usize);
        let b0: Vec<(f64, f64)> = (0..l0).map(|_| (g.normal(), 0.5 * g.normal())).collect();
        let b1: Vec<f64> = (0..l1).map(|_| 0.7 * g.normal()).collect();
        let mut c0 = vec![0i32; n];
        let mut c1 = vec![0i32; n];
        let mut z0 = vec![0.0; 2 * n];
        let z1 = vec![1.0; n];
        for i in 0..n {
            let xi = g.normal();
            x[(i, 0)] = 1.0;
            x[(i, 1)] = xi;
            let j0 = if i < l0 { i } else { g.below(l0) };
            let j1 = if i < l1 { i } else { g.below(l1) };
            c0[i] = j0 as i32;
            c1[i] = j1 as i32;
            z0[2 * i] = 1.0;
            z0[2 * i + 1] = xi;
            y[i] = 2.0 + 0.5 * xi + b0[j0].0 + b0[j0].1 * xi + b1[j1] + 0.6 * g.normal();
        }
        let terms = vec![
            Term::new(&c0, z0, 2, l0, 0).unwrap(),
            Term::new(&c1, z1, 1, l1, 1).unwrap(),
        ];
        Model::new(&y, x.as_ref(), terms, reml).unwrap()
    }

    /// Dense V = σ²(I + ZΛΛᵀZᵀ) and the quantities of the header, by brute force.
    struct Dense {
        v: Mat<f64>,
        vinv: Mat<f64>,
        c: Mat<f64>,
        beta: Vec<f64>,
        sigma2: f64,
        zdz: Mat<f64>,
    }

    fn dense(model: &Model, theta: &[f64]) -> Dense {
        let n = model.n;
        let p = model.p;
        let mut zl_cols: Vec<Vec<f64>> = Vec::new();
        let mut toff = 0;
        for t in model.terms.iter() {
            let q = t.q;
            let mut lam = vec![0.0; q * q];
            theta_to_lambda(&theta[toff..toff + q * (q + 1) / 2], q, &mut lam);
            toff += q * (q + 1) / 2;
            for lev in 0..t.n_levels {
                for c in 0..q {
                    let mut col = vec![0.0; n];
                    for i in 0..n {
                        if t.codes[i] as usize == lev {
                            col[i] = (c..q).map(|r| t.z[i * q + r] * lam[c * q + r]).sum();
                        }
                    }
                    zl_cols.push(col);
                }
            }
        }
        let mut zdz = Mat::<f64>::zeros(n, n);
        for col in &zl_cols {
            for a in 0..n {
                for b in 0..n {
                    zdz[(a, b)] += col[a] * col[b];
                }
            }
        }
        let mut vt = zdz.clone();
        for i in 0..n {
            vt[(i, i)] += 1.0;
        }
        let llt = vt.llt(faer::Side::Lower).unwrap();
        let mut vt_inv = Mat::<f64>::identity(n, n);
        chol_solve(&llt.L().to_owned(), &mut vt_inv);
        // GLS with Ṽ = V/σ².
        let mut xtvx = Mat::<f64>::zeros(p, p);
        let mut xtvy = vec![0.0; p];
        for a in 0..p {
            for b in 0..p {
                let mut s = 0.0;
                for i in 0..n {
                    for j in 0..n {
                        s += model.x[(i, a)] * vt_inv[(i, j)] * model.x[(j, b)];
                    }
                }
                xtvx[(a, b)] = s;
            }
            let mut s = 0.0;
            for i in 0..n {
                for j in 0..n {
                    s += model.x[(i, a)] * vt_inv[(i, j)] * model.y[j];
                }
            }
            xtvy[a] = s;
        }
        let l = xtvx.llt(faer::Side::Lower).unwrap().L().to_owned();
        let mut beta = Mat::<f64>::zeros(p, 1);
        for a in 0..p {
            beta[(a, 0)] = xtvy[a];
        }
        chol_solve(&l, &mut beta);
        let beta: Vec<f64> = (0..p).map(|a| beta[(a, 0)]).collect();
        let e: Vec<f64> = (0..n)
            .map(|i| model.y[i] - (0..p).map(|a| model.x[(i, a)] * beta[a]).sum::<f64>())
            .collect();
        let mut r2 = 0.0;
        for i in 0..n {
            for j in 0..n {
                r2 += e[i] * vt_inv[(i, j)] * e[j];
            }
        }
        let dof = if model.reml { (n - p) as f64 } else { n as f64 };
        let sigma2 = r2 / dof;
        let mut c = Mat::<f64>::identity(p, p);
        chol_solve(&l, &mut c);
        let mut v = vt.clone();
        let mut vinv = vt_inv.clone();
        for a in 0..n {
            for b in 0..n {
                v[(a, b)] *= sigma2;
                vinv[(a, b)] /= sigma2;
            }
        }
        for a in 0..p {
            for b in 0..p {
                c[(a, b)] *= sigma2;
            }
        }
        Dense {
            v,
            vinv,
            c,
            beta,
            sigma2,
            zdz,
        }
    }

    fn fitted_theta(model: &Model) -> Vec<f64> {
        let mut m = model.clone();
        fit(&mut m, None, FitOptions::default()).unwrap().0.theta
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn marginal_quantities_match_the_fit() {
        let model = crossed_model(3, 70, true);
        let theta = fitted_theta(&model);
        let est = model.clone().estimates(&theta).unwrap();
        let factor = ReFactor::new(&model.terms, &theta).unwrap();
        let marginal = Marginal::new(&Data::of(&model), &factor).unwrap();
        assert!(close(marginal.sigma2.sqrt(), est.sigma, 1e-10));
        for c in 0..model.p {
            assert!(close(marginal.beta[c], est.beta[c], 1e-10));
            for r in 0..model.p {
                assert!(close(marginal.cov[(r, c)], est.beta_cov[c * model.p + r], 1e-9));
            }
        }
    }

    #[test]
    fn leverage_matches_the_dense_hat_matrix() {
        for (seed, reml) in [(1u64, true), (2, false)] {
            let model = crossed_model(seed, 60, reml);
            let theta = fitted_theta(&model);
            let d = dense(&model, &theta);
            let lev = leverage_with(&model, &theta, 1, RestInverse::Never).unwrap();
            let with_inverse = leverage_with(&model, &theta, 1, RestInverse::Always).unwrap();
            for (a, b) in lev.overall.iter().zip(&with_inverse.overall) {
                assert!(close(*a, *b, 1e-12));
            }
            let (n, p) = (model.n, model.p);
            // H₁ = X C XᵀV⁻¹, H = I − σ²P.
            for i in 0..n {
                let mut h1 = 0.0;
                let mut xcxv = vec![0.0; n];
                for j in 0..n {
                    let mut s = 0.0;
                    for a in 0..p {
                        for b in 0..p {
                            s += model.x[(i, a)] * d.c[(a, b)] * model.x[(j, b)];
                        }
                    }
                    xcxv[j] = s;
                }
                for j in 0..n {
                    h1 += xcxv[j] * d.vinv[(j, i)];
                }
                // P_ii = V⁻¹_ii − (V⁻¹ X C Xᵀ V⁻¹)_ii
                let mut vx = vec![0.0; p];
                for a in 0..p {
                    vx[a] = (0..n).map(|j| d.vinv[(i, j)] * model.x[(j, a)]).sum();
                }
                let mut quad = 0.0;
                for a in 0..p {
                    for b in 0..p {
                        quad += vx[a] * d.c[(a, b)] * vx[b];
                    }
                }
                let overall = 1.0 - d.sigma2 * (d.vinv[(i, i)] - quad);
                assert!(close(lev.overall[i], overall, 1e-8), "{i}: {} vs {overall}", lev.overall[i]);
                assert!(close(lev.fixef[i], h1, 1e-8));
                assert!(close(lev.ranef[i], overall - h1, 1e-8));
                assert!(close(lev.ranef_uc[i], d.zdz[(i, i)], 1e-10));
            }
        }
    }

    #[test]
    fn one_step_matches_dense_formulas() {
        let model = crossed_model(5, 50, true);
        let theta = fitted_theta(&model);
        let d = dense(&model, &theta);
        let n = model.n;
        // Deletion sets: two single rows, a level of each term, and an arbitrary scatter.
        let level_rows = |k: usize, lev: u32| -> Vec<usize> { (0..n).filter(|&i| model.terms[k].codes[i] == lev).collect() };
        let sets = vec![vec![0], vec![17], level_rows(0, 2), level_rows(1, 3), vec![1, 8, 30, 44]];
        let variants = [
            (RestInverse::Never, OneStepPath::Partitioned),
            (RestInverse::Always, OneStepPath::Partitioned),
            (RestInverse::Auto, OneStepPath::Reduced),
        ];
        for (rest, path) in variants {
            let ours = one_step_with(&model, &theta, &sets, 2, rest, path).unwrap();
            check_one_step_against_dense(&model, &d, &sets, &ours);
        }
    }

    fn check_one_step_against_dense(model: &Model, d: &Dense, sets: &[Vec<usize>], ours: &OneStep) {
        let (n, p) = (model.n, model.p);
        let e: Vec<f64> = (0..n)
            .map(|i| model.y[i] - (0..p).map(|a| model.x[(i, a)] * d.beta[a]).sum::<f64>())
            .collect();
        // P = V⁻¹ − V⁻¹ X C Xᵀ V⁻¹ (dense).
        let mut vx = Mat::<f64>::zeros(n, p);
        for i in 0..n {
            for a in 0..p {
                vx[(i, a)] = (0..n).map(|j| d.vinv[(i, j)] * model.x[(j, a)]).sum();
            }
        }
        for (s, set) in sets.iter().enumerate() {
            let k = set.len();
            let mut pa = Mat::<f64>::zeros(k, k);
            for a in 0..k {
                for b in 0..k {
                    let mut quad = 0.0;
                    for r in 0..p {
                        for t in 0..p {
                            quad += vx[(set[a], r)] * d.c[(r, t)] * vx[(set[b], t)];
                        }
                    }
                    pa[(a, b)] = d.vinv[(set[a], set[b])] - quad;
                }
            }
            let lpa = pa.llt(faer::Side::Lower).unwrap().L().to_owned();
            // cdd = C Xᵀ V⁻¹[:, I] P_II⁻¹ V⁻¹[I, :] e
            let mut t = Mat::<f64>::zeros(k, 1);
            for a in 0..k {
                t[(a, 0)] = (0..n).map(|j| d.vinv[(set[a], j)] * e[j]).sum();
            }
            chol_solve(&lpa, &mut t);
            let mut g = vec![0.0; p];
            for r in 0..p {
                g[r] = (0..k).map(|a| vx[(set[a], r)] * t[(a, 0)]).sum();
            }
            let cdd: Vec<f64> = (0..p).map(|r| (0..p).map(|u| d.c[(r, u)] * g[u]).sum()).collect();
            let cook = (0..p).map(|r| cdd[r] * g[r]).sum::<f64>() / p as f64;
            assert!(close(ours.cooksd[s], cook, 1e-7), "set {s}: {} vs {cook}", ours.cooksd[s]);
            // C₍I₎ = C + C Xᵀ V⁻¹[:, I] P_II⁻¹ V⁻¹[I, :] X C
            let mut ya = Mat::<f64>::zeros(k, p);
            for a in 0..k {
                for r in 0..p {
                    ya[(a, r)] = vx[(set[a], r)];
                }
            }
            chol_solve(&lpa, &mut ya);
            let mut c_del = d.c.clone();
            for r in 0..p {
                for u in 0..p {
                    let mut s2 = 0.0;
                    for a1 in 0..p {
                        for a2 in 0..p {
                            let f: f64 = (0..k).map(|a| vx[(set[a], a1)] * ya[(a, a2)]).sum();
                            s2 += d.c[(r, a1)] * f * d.c[(a2, u)];
                        }
                    }
                    c_del[(r, u)] += s2;
                }
            }
            let det = |m: &Mat<f64>| m[(0, 0)] * m[(1, 1)] - m[(0, 1)] * m[(1, 0)];
            assert!(close(ours.covratio[s], det(&c_del) / det(&d.c), 1e-7));
            let inv_c = {
                let dc = det(&d.c);
                [d.c[(1, 1)] / dc, -d.c[(0, 1)] / dc, -d.c[(1, 0)] / dc, d.c[(0, 0)] / dc]
            };
            let tr = inv_c[0] * c_del[(0, 0)] + inv_c[1] * c_del[(1, 0)] + inv_c[2] * c_del[(0, 1)] + inv_c[3] * c_del[(1, 1)];
            assert!(close(ours.covtrace[s], (tr - 2.0).abs(), 1e-7));
            let dd = det(&c_del);
            let inv_del = [c_del[(1, 1)] / dd, -c_del[(0, 1)] / dd, -c_del[(1, 0)] / dd, c_del[(0, 0)] / dd];
            let md = (cdd[0] * (inv_del[0] * cdd[0] + inv_del[1] * cdd[1]) + cdd[1] * (inv_del[2] * cdd[0] + inv_del[3] * cdd[1])) / 2.0;
            assert!(close(ours.mdffits[s], md, 1e-7));
        }
    }

    #[test]
    fn cholesky_residuals_match_the_dense_factor() {
        let model = crossed_model(7, 45, true);
        let theta = fitted_theta(&model);
        let d = dense(&model, &theta);
        let n = model.n;
        let ours = marginal_residuals(&model, &theta, true).unwrap().cholesky.unwrap();
        let l = d.v.llt(faer::Side::Lower).unwrap().L().to_owned();
        let mut e = Mat::<f64>::zeros(n, 1);
        for i in 0..n {
            e[(i, 0)] = model.y[i] - (0..model.p).map(|a| model.x[(i, a)] * d.beta[a]).sum::<f64>();
        }
        solve_lower_triangular_in_place(l.as_ref(), e.as_mut(), Par::Seq);
        for i in 0..n {
            assert!(close(ours[i], e[(i, 0)], 1e-8), "{i}: {} vs {}", ours[i], e[(i, 0)]);
        }
    }

    #[test]
    fn deleting_nothing_refits_to_the_same_theta() {
        let model = crossed_model(11, 80, true);
        let mut full = model.clone();
        let (est, _) = fit(&mut full, None, FitOptions::default()).unwrap();
        let refits = delete_and_refit(&model, &[vec![]], &est.theta, 1, FitOptions::default()).unwrap();
        let r = &refits[0];
        assert!(r.error.is_none());
        for (a, b) in r.theta.iter().zip(&est.theta) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!((r.objective - est.objective).abs() < 1e-8);
        assert!(close(r.sigma, est.sigma, 1e-6));
    }

    #[test]
    fn a_deletion_refit_equals_a_fresh_model_on_the_reduced_data() {
        let model = crossed_model(13, 90, false);
        let theta_hat = fitted_theta(&model);
        // All rows of level 4 of the first term plus two stray rows.
        let mut drop: Vec<usize> = (0..model.n).filter(|&i| model.terms[0].codes[i] == 4).collect();
        drop.extend([0, 50]);
        let refit = &delete_and_refit(&model, std::slice::from_ref(&drop), &theta_hat, 1, FitOptions::default()).unwrap()[0];
        assert!(refit.error.is_none());

        // The same data built by hand, fitted from lme4's default start.
        let keep: Vec<usize> = (0..model.n).filter(|i| !drop.contains(i)).collect();
        let y: Vec<f64> = keep.iter().map(|&i| model.y[i]).collect();
        let x = Mat::<f64>::from_fn(keep.len(), model.p, |r, c| model.x[(keep[r], c)]);
        let terms: Vec<Term> = model
            .terms
            .iter()
            .enumerate()
            .map(|(k, t)| {
                let codes: Vec<i32> = keep.iter().map(|&i| t.codes[i] as i32).collect();
                let z: Vec<f64> = keep.iter().flat_map(|&i| t.z[i * t.q..(i + 1) * t.q].to_vec()).collect();
                Term::new(&codes, z, t.q, t.n_levels, k).unwrap()
            })
            .collect();
        let mut fresh = Model::new(&y, x.as_ref(), terms, false).unwrap();
        let (est, _) = fit(&mut fresh, None, FitOptions::default()).unwrap();
        assert!((refit.objective - est.objective).abs() < 1e-7, "{} vs {}", refit.objective, est.objective);
        for (a, b) in refit.theta.iter().zip(&est.theta) {
            assert!((a - b).abs() < 1e-3, "theta {a} vs {b}");
        }
        for (a, b) in refit.beta.iter().zip(&est.beta) {
            assert!(close(*a, *b, 1e-5), "beta {a} vs {b}");
        }
        for (a, b) in refit.beta_cov.iter().zip(&est.beta_cov) {
            assert!(close(*a, *b, 1e-3), "cov {a} vs {b}");
        }
        // From the same start the two models are the same computation, bit for bit.
        let mut fresh_warm = reduced_model(&model, &drop).unwrap();
        let (warm, _) = fit(&mut fresh_warm, Some(&theta_hat), FitOptions::default()).unwrap();
        assert_eq!(warm.theta, refit.theta);
        assert_eq!(warm.beta, refit.beta);
    }

    #[test]
    fn results_do_not_depend_on_the_number_of_threads() {
        let model = crossed_model(17, 60, true);
        let theta = fitted_theta(&model);
        let sets: Vec<Vec<usize>> = (0..12).map(|i| vec![i, i + 20]).collect();
        let a = delete_and_refit(&model, &sets, &theta, 1, FitOptions::default()).unwrap();
        let b = delete_and_refit(&model, &sets, &theta, 2, FitOptions::default()).unwrap();
        assert_eq!(a, b);
        let a = one_step(&model, &theta, &sets, 1).unwrap();
        let b = one_step(&model, &theta, &sets, 2).unwrap();
        assert_eq!(a, b);
        assert_eq!(leverage(&model, &theta, 1).unwrap(), leverage(&model, &theta, 2).unwrap());
    }

    #[test]
    fn a_level_left_without_rows_changes_nothing_else() {
        // Deleting every row of a level leaves a zero block: the reduced model's objective
        // equals that of a model without the level at all (same θ), and its mode is zero.
        let model = crossed_model(19, 70, true);
        let theta = fitted_theta(&model);
        let drop: Vec<usize> = (0..model.n).filter(|&i| model.terms[1].codes[i] == 2).collect();
        let mut reduced = reduced_model(&model, &drop).unwrap();
        let est = reduced.estimates(&theta).unwrap();
        assert_eq!(est.b[1][2], 0.0);
        // Relabel term 1 without level 2: one level fewer.
        let keep: Vec<usize> = (0..model.n).filter(|i| !drop.contains(i)).collect();
        let y: Vec<f64> = keep.iter().map(|&i| model.y[i]).collect();
        let x = Mat::<f64>::from_fn(keep.len(), model.p, |r, c| model.x[(keep[r], c)]);
        let t0 = &model.terms[0];
        let t1 = &model.terms[1];
        let c0: Vec<i32> = keep.iter().map(|&i| t0.codes[i] as i32).collect();
        let z0: Vec<f64> = keep.iter().flat_map(|&i| t0.z[2 * i..2 * i + 2].to_vec()).collect();
        let c1: Vec<i32> = keep
            .iter()
            .map(|&i| {
                let c = t1.codes[i] as i32;
                if c > 2 {
                    c - 1
                } else {
                    c
                }
            })
            .collect();
        let terms = vec![
            Term::new(&c0, z0, 2, t0.n_levels, 0).unwrap(),
            Term::new(&c1, vec![1.0; keep.len()], 1, t1.n_levels - 1, 1).unwrap(),
        ];
        let mut without = Model::new(&y, x.as_ref(), terms, true).unwrap();
        let a = reduced.objective(&theta).unwrap();
        let b = without.objective(&theta).unwrap();
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn a_one_step_deletion_leaving_fewer_rows_than_fixed_effects_is_nan_not_an_overflow() {
        // Keeping one row of a p = 2 model: β̂₍I₎ is not identified. The reduced path computed
        // the REML degrees of freedom n − p on the kept rows, which underflowed (a panic under
        // overflow checks) whenever rounding let the singular XᵀWX factor; both paths returned
        // rounding noise as diagnostics for some of these sets.
        let model = crossed_model(5, 50, true);
        let theta = fitted_theta(&model);
        let sets: Vec<Vec<usize>> = (0..model.n).map(|kept| (0..model.n).filter(|&i| i != kept).collect()).collect();
        for path in [OneStepPath::Auto, OneStepPath::Partitioned, OneStepPath::Reduced] {
            let ours = one_step_with(&model, &theta, &sets, 1, RestInverse::Auto, path).unwrap();
            for values in [&ours.cooksd, &ours.mdffits, &ours.covtrace, &ours.covratio] {
                assert!(values.iter().all(|v| v.is_nan()), "{path:?}: {values:?}");
            }
        }
        // Three rows left, the set naming n − 1 rows with repeats: identified, so numbers again.
        let mut set: Vec<usize> = (3..model.n).collect();
        set.extend([3, 4]);
        let ours = one_step_with(&model, &theta, &[set], 1, RestInverse::Auto, OneStepPath::Reduced).unwrap();
        assert!(ours.cooksd[0].is_finite());
    }

    #[test]
    fn bad_rows_are_reported() {
        let model = crossed_model(23, 30, true);
        let theta = vec![1.0, 0.0, 1.0, 1.0];
        let err = one_step(&model, &theta, &[vec![0, 30]], 1).unwrap_err();
        assert!(matches!(err, CoreError::DimensionMismatch { .. }));
        let err = delete_and_refit(&model, &[vec![31]], &theta, 1, FitOptions::default()).unwrap_err();
        assert!(matches!(err, CoreError::DimensionMismatch { .. }));
    }
}
