//! Starting values for θ from the data's moments, for models large enough that every
//! evaluation saved counts (see [`MOMENT_START_MIN_N`]).
//!
//! BOBYQA from lme4's start (λ = I) spends most of its evaluations travelling towards θ̂:
//! started within about 20 % of it, InstEval's three-θ model converged in 48 evaluations instead
//! of 84 and the 200,000-row slopes model in 68 instead of 89, at the same optimum. The start
//! here comes from a few backfitting sweeps over the terms, each a one-way method-of-moments
//! fit of one term to the residuals the others leave:
//!
//! - r = y − Xβ̂ (least squares), then per sweep and term k: add back the term's current
//!   effects, and per level ℓ form Gℓ = Σ zᵢzᵢᵀ, hℓ = Σ zᵢrᵢ;
//! - the levels' least-squares effects b̂ℓ = Gℓ⁻¹hℓ, the within-level variance σ̂² (pooled
//!   residual sum of squares over levels with more rows than columns), and the moment estimate
//!   Σ̂ = mean(b̂ℓb̂ℓᵀ) − σ̂² mean(Gℓ⁻¹) of the term's covariance;
//! - λₖ = chol(Σ̂/σ̂²) (its diagonal only if Σ̂ is not positive definite, each diagonal at
//!   least [`MIN_DIAGONAL`]), and the term's effects are replaced by their shrunken
//!   estimates λ(λᵀGℓλ + I)⁻¹λᵀhℓ before the next term.
//!
//! Nothing here decides the answer: BOBYQA still converges to the optimum of the profiled
//! objective, and a term whose moments cannot be formed starts at lme4's value.

use crate::dense::{chol_small, solve_lower_small, solve_upper_small};
use crate::model::{Model, Term};

/// Models with at least this many observations and a rest block of at least
/// [`MOMENT_START_MIN_M`] columns start from [`moment_start`]; others from lme4's start. Small
/// models keep lme4's optimisation path, and with it the last digits of lme4's estimates.
pub const MOMENT_START_MIN_N: usize = 10_000;

/// Where the rest block is smaller, an evaluation costs about what the start's passes over the
/// rows cost, and the evaluations saved do not pay for it: the 125,000-group model (no rest
/// block) fitted in 144–161 ms from lme4's start and 162–182 ms from the moments' (38 ms for
/// the start, 9 of 41 evaluations saved); `crossed_20k` (m = 100) in 13.4–14.4 and 14.6–15.4 ms.
pub const MOMENT_START_MIN_M: usize = 256;

/// Backfitting sweeps over the terms.
const SWEEPS: usize = 3;

/// The least diagonal of a starting λ: a zero would start BOBYQA on the boundary.
const MIN_DIAGONAL: f64 = 0.01;

/// A level's Gℓ counts as singular below this pivot² relative to its largest diagonal.
const SINGULAR_PIVOT: f64 = 1e-10;

/// Rows per block of the residual r = y − Xβ̂: each block of r stays in cache while the
/// columns of X are subtracted from it (one pass over r per column was a third of the start).
const RESIDUAL_BLOCK: usize = 512;

/// θ from the moments of the data (see the module's notes), or `None` when the fixed-effects
/// least squares cannot be formed or a value is not finite.
///
/// The levels' Gℓ and row counts do not change between sweeps and are formed once, on the
/// first sweep; each pass over the rows both removes the previous term's new effects from r
/// and adds back the current term's old ones (every rᵢ sees the same operations in the same
/// order as with a pass for each, so the start is the same to the bit).
pub fn moment_start(model: &Model) -> Option<Vec<f64>> {
    let p = model.p;
    let mut r: Vec<f64> = model.y.to_vec();
    if p > 0 {
        let a33 = &model.a.a33;
        let mut xtx: Vec<f64> = (0..p * p).map(|i| a33[(i % p, i / p)]).collect();
        chol_small(&mut xtx, p).ok()?;
        let mut beta: Vec<f64> = (0..p).map(|c| a33[(c, p)]).collect();
        solve_lower_small(&xtx, p, &mut beta);
        solve_upper_small(&xtx, p, &mut beta);
        let columns: Vec<&[f64]> = (0..p).map(|c| model.x.col(c).try_as_col_major().unwrap().as_slice()).collect();
        for (block, r_block) in r.chunks_mut(RESIDUAL_BLOCK).enumerate() {
            let rows = block * RESIDUAL_BLOCK..block * RESIDUAL_BLOCK + r_block.len();
            for (col, &bc) in columns.iter().zip(&beta) {
                for (ri, &xi) in r_block.iter_mut().zip(&col[rows.clone()]) {
                    *ri -= xi * bc;
                }
            }
        }
    }
    let terms = &model.terms;
    let mut effects: Vec<Vec<f64>> = terms.iter().map(|t| vec![0.0; t.n_levels * t.q]).collect();
    let mut lambdas: Vec<Vec<f64>> = terms
        .iter()
        .map(|t| (0..t.q * t.q).map(|i| if i % (t.q + 1) == 0 { 1.0 } else { 0.0 }).collect())
        .collect();
    let mut grams: Vec<Vec<f64>> = terms.iter().map(|t| vec![0.0; t.n_levels * t.q * t.q]).collect();
    let mut counts: Vec<Vec<usize>> = terms.iter().map(|t| vec![0; t.n_levels]).collect();
    // One term has no other terms' effects to backfit.
    let sweeps = if terms.len() == 1 { 1 } else { SWEEPS };
    let mut work = Work::new(terms.iter().map(|t| t.q).max().unwrap_or(1));
    // The term whose new effects are still in r.
    let mut pending: Option<usize> = None;
    for sweep in 0..sweeps {
        for (k, t) in terms.iter().enumerate() {
            let q = t.q;
            // r − Z_d b_d for the pending term d, r + Zₖbₖ, and the levels' hℓ, Σ r² (Gℓ and
            // row counts on the first sweep).
            let mut h = vec![0.0; t.n_levels * q];
            let mut rr = vec![0.0; t.n_levels];
            let done = pending.map(|d| (&terms[d], effects[d].as_slice()));
            let first = sweep == 0;
            accumulate_rows(&mut r, done, t, &effects[k], &mut h, &mut rr, first.then(|| (grams[k].as_mut_slice(), counts[k].as_mut_slice())));
            let (g, count) = (&grams[k], &counts[k]);
            if let Some(lam) = term_lambda(g, &h, &rr, count, q, &mut work) {
                lambdas[k] = lam;
            }
            // The shrunken effects λ(λᵀGλ + I)⁻¹λᵀh, removed from r by the next pass.
            let lam = &lambdas[k];
            let b = &mut effects[k];
            for l in 0..t.n_levels {
                shrunken_effect(&g[l * q * q..(l + 1) * q * q], &h[l * q..(l + 1) * q], lam, q, &mut b[l * q..(l + 1) * q], &mut work);
            }
            pending = Some(k);
        }
    }
    let mut theta = Vec::with_capacity(model.n_theta);
    for (t, lam) in terms.iter().zip(&lambdas) {
        for col in 0..t.q {
            for row in col..t.q {
                theta.push(lam[col * t.q + row]);
            }
        }
    }
    theta.iter().all(|v| v.is_finite()).then_some(theta)
}

/// One pass of [`moment_start`] over the rows: rᵢ −= z_dᵢᵀb_d for the term d in `done` (with
/// its effects), then rᵢ += zᵢᵀbₗ for term `t` (effects `b`), adding zᵢrᵢ to hₗ and rᵢ² to
/// rrₗ of the row's level ℓ, and with `grams` zᵢzᵢᵀ to Gₗ and 1 to its row count.
fn accumulate_rows(r: &mut [f64], done: Option<(&Term, &[f64])>, t: &Term, b: &[f64], h: &mut [f64], rr: &mut [f64], grams: Option<(&mut [f64], &mut [usize])>) {
    let q = t.q;
    let remove = |i: usize, ri: f64| -> f64 {
        match done {
            Some((d, bd)) => {
                let l = d.codes[i] as usize;
                ri - d.z[i * d.q..(i + 1) * d.q].iter().zip(&bd[l * d.q..(l + 1) * d.q]).map(|(a, c)| a * c).sum::<f64>()
            }
            None => ri,
        }
    };
    let scalar = q == 1 && done.is_none_or(|(d, _)| d.q == 1);
    match grams {
        Some((g, count)) if scalar => {
            // Scalar terms (InstEval's): the same operations without the loops over columns.
            for i in 0..r.len() {
                let l = t.codes[i] as usize;
                let mut ri = r[i];
                if let Some((d, bd)) = done {
                    ri -= d.z[i] * bd[d.codes[i] as usize];
                }
                let (z, ri) = (t.z[i], ri + t.z[i] * b[l]);
                r[i] = ri;
                g[l] += z * z;
                h[l] += z * ri;
                rr[l] += ri * ri;
                count[l] += 1;
            }
        }
        Some((g, count)) => {
            for i in 0..r.len() {
                let l = t.codes[i] as usize;
                let z = &t.z[i * q..(i + 1) * q];
                let ri = remove(i, r[i]) + z.iter().zip(&b[l * q..(l + 1) * q]).map(|(a, c)| a * c).sum::<f64>();
                r[i] = ri;
                let gl = &mut g[l * q * q..(l + 1) * q * q];
                for c in 0..q {
                    for e in 0..q {
                        gl[c * q + e] += z[c] * z[e];
                    }
                }
                for c in 0..q {
                    h[l * q + c] += z[c] * ri;
                }
                rr[l] += ri * ri;
                count[l] += 1;
            }
        }
        None if scalar => {
            for i in 0..r.len() {
                let l = t.codes[i] as usize;
                let mut ri = r[i];
                if let Some((d, bd)) = done {
                    ri -= d.z[i] * bd[d.codes[i] as usize];
                }
                let ri = ri + t.z[i] * b[l];
                r[i] = ri;
                h[l] += t.z[i] * ri;
                rr[l] += ri * ri;
            }
        }
        None => {
            for i in 0..r.len() {
                let l = t.codes[i] as usize;
                let z = &t.z[i * q..(i + 1) * q];
                let ri = remove(i, r[i]) + z.iter().zip(&b[l * q..(l + 1) * q]).map(|(a, c)| a * c).sum::<f64>();
                r[i] = ri;
                for c in 0..q {
                    h[l * q + c] += z[c] * ri;
                }
                rr[l] += ri * ri;
            }
        }
    }
}

/// λ of one term from its levels' moments (see the module's notes); `None` when fewer than two
/// levels have a nonsingular Gℓ or no level has more rows than columns.
fn term_lambda(g: &[f64], h: &[f64], rr: &[f64], count: &[usize], q: usize, work: &mut Work) -> Option<Vec<f64>> {
    let (mut rss, mut dof, mut used) = (0.0, 0.0, 0usize);
    let mut second = vec![0.0; q * q];
    let mut g_inv = vec![0.0; q * q];
    let (chol, v, e) = (&mut work.a[..q * q], &mut work.v[..q], &mut work.w[..q]);
    for l in 0..count.len() {
        let gl = &g[l * q * q..(l + 1) * q * q];
        let biggest = (0..q).map(|c| gl[c * q + c]).fold(0.0, f64::max);
        chol.copy_from_slice(gl);
        if biggest <= 0.0 || chol_small(chol, q).is_err() || (0..q).any(|c| chol[c * q + c].powi(2) < SINGULAR_PIVOT * biggest) {
            continue;
        }
        v.copy_from_slice(&h[l * q..(l + 1) * q]);
        solve_lower_small(chol, q, v);
        let fit: f64 = v.iter().map(|x| x * x).sum();
        solve_upper_small(chol, q, v);
        if count[l] > q {
            rss += (rr[l] - fit).max(0.0);
            dof += (count[l] - q) as f64;
        }
        for c in 0..q {
            for d in 0..q {
                second[c * q + d] += v[c] * v[d];
            }
        }
        for c in 0..q {
            e.iter_mut().enumerate().for_each(|(i, x)| *x = if i == c { 1.0 } else { 0.0 });
            solve_lower_small(chol, q, e);
            solve_upper_small(chol, q, e);
            for d in 0..q {
                g_inv[c * q + d] += e[d];
            }
        }
        used += 1;
    }
    if used < 2 || dof <= 0.0 || rss <= 0.0 {
        return None;
    }
    let sigma2 = rss / dof;
    let u = used as f64;
    // Σ̂/σ̂², its Cholesky factor, or its diagonal.
    let mut rel: Vec<f64> = (0..q * q).map(|i| (second[i] / u - sigma2 * g_inv[i] / u) / sigma2).collect();
    let diagonal: Vec<f64> = (0..q).map(|c| rel[c * q + c].max(0.0).sqrt()).collect();
    if chol_small(&mut rel, q).is_err() {
        rel.iter_mut().for_each(|x| *x = 0.0);
        for c in 0..q {
            rel[c * q + c] = diagonal[c];
        }
    }
    for c in 0..q {
        rel[c * q + c] = rel[c * q + c].max(MIN_DIAGONAL);
    }
    rel.iter().all(|x| x.is_finite()).then_some(rel)
}

/// Workspaces of one term's per-level solves (q × q and q), so no level allocates.
struct Work {
    a: Vec<f64>,
    b: Vec<f64>,
    v: Vec<f64>,
    w: Vec<f64>,
}

impl Work {
    fn new(q: usize) -> Work {
        Work {
            a: vec![0.0; q * q],
            b: vec![0.0; q * q],
            v: vec![0.0; q],
            w: vec![0.0; q],
        }
    }
}

/// out = λ(λᵀGλ + I)⁻¹λᵀh for one level (q × q column-major G and lower λ).
fn shrunken_effect(g: &[f64], h: &[f64], lam: &[f64], q: usize, out: &mut [f64], work: &mut Work) {
    let (gl, m, v) = (&mut work.a[..q * q], &mut work.b[..q * q], &mut work.v[..q]);
    // M = λᵀGλ + I.
    for c in 0..q {
        for r in 0..q {
            gl[c * q + r] = (0..q).map(|k| g[k * q + r] * lam[c * q + k]).sum();
        }
    }
    for c in 0..q {
        for r in 0..q {
            m[c * q + r] = (0..q).map(|k| lam[r * q + k] * gl[c * q + k]).sum::<f64>() + if r == c { 1.0 } else { 0.0 };
        }
    }
    for c in 0..q {
        v[c] = (0..q).map(|k| lam[c * q + k] * h[k]).sum();
    }
    if chol_small(m, q).is_err() {
        out.iter_mut().for_each(|x| *x = 0.0);
        return;
    }
    solve_lower_small(m, q, v);
    solve_upper_small(m, q, v);
    for (r, o) in out.iter_mut().enumerate() {
        *o = (0..q).map(|c| lam[c * q + r] * v[c]).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Term;
    use crate::optimize::{default_start, fit, FitOptions};
    use faer::Mat;
    use crate::test_rng::Lcg;

    /// y = 2 + x + (a + c·x) for subject s + d for item i + ε, with (a, c) ~ N(0, [[0.64, 0.12],
    /// [0.12, 0.25]]), d ~ N(0, 0.36), ε ~ N(0, 1): λ_subject = chol of that covariance
    /// ([0.8, 0.15, 0.477]), λ_item = 0.6.
    fn slopes_design(n: usize, items: usize, seed: u64) -> (Vec<f64>, Mat<f64>, Vec<Term>) {
        let subjects = 300;
        let mut g = Lcg(seed);
        let effects: Vec<(f64, f64)> = (0..subjects)
            .map(|_| {
                let (u, v) = (g.normal(), g.normal());
                (0.8 * u, 0.15 * u + 0.477 * v)
            })
            .collect();
        let item_effects: Vec<f64> = (0..items).map(|_| 0.6 * g.normal()).collect();
        let mut x = Mat::<f64>::zeros(n, 2);
        let (mut y, mut s_codes, mut i_codes, mut zs) = (vec![0.0; n], vec![0i32; n], vec![0i32; n], vec![0.0; 2 * n]);
        for r in 0..n {
            let (s, i) = (g.below(subjects), g.below(items));
            let xi = if g.next() < 0.5 { 0.0 } else { 1.0 };
            x[(r, 0)] = 1.0;
            x[(r, 1)] = xi;
            y[r] = 2.0 + xi + effects[s].0 + effects[s].1 * xi + item_effects[i] + g.normal();
            s_codes[r] = s as i32;
            i_codes[r] = i as i32;
            zs[2 * r] = 1.0;
            zs[2 * r + 1] = xi;
        }
        let terms = vec![
            Term::new(&s_codes, zs, 2, subjects, 0).unwrap(),
            Term::new(&i_codes, vec![1.0; n], 1, items, 1).unwrap(),
        ];
        (y, x, terms)
    }

    #[test]
    fn moment_start_is_near_the_generating_values_and_the_fit_reaches_lme4_starts_optimum() {
        let (y, x, terms) = slopes_design(30_000, 300, 5);
        let mut model = Model::new(&y, x.as_ref(), terms, true).unwrap();
        let start = moment_start(&model).unwrap();
        let truth = [0.8, 0.15, 0.477, 0.6];
        for (s, t) in start.iter().zip(truth) {
            assert!((s - t).abs() < 0.15, "start {start:?} against {truth:?}");
        }
        assert_eq!(default_start(&model), start, "30,000 rows: the moments' start");
        let (from_moments, record) = fit(&mut model, None, FitOptions::default()).unwrap();
        let lme4_start = model.theta_start();
        let (from_lme4, record_lme4) = fit(&mut model, Some(&lme4_start), FitOptions::default()).unwrap();
        assert!(record.converged && record_lme4.converged);
        let rel = (from_moments.objective - from_lme4.objective).abs() / from_lme4.objective.abs();
        assert!(rel < 1e-10, "{} vs {}", from_moments.objective, from_lme4.objective);
        for (a, b) in from_moments.theta.iter().zip(&from_lme4.theta) {
            assert!((a - b).abs() < 1e-4, "{:?} vs {:?}", from_moments.theta, from_lme4.theta);
        }
        assert!(record.n_evals < record_lme4.n_evals, "{} vs {}", record.n_evals, record_lme4.n_evals);
    }

    #[test]
    fn small_models_start_where_lme4_starts() {
        // Too few rows, or too small a rest block.
        for (n, items) in [(MOMENT_START_MIN_N - 1, 300), (30_000, MOMENT_START_MIN_M - 1)] {
            let (y, x, terms) = slopes_design(n, items, 6);
            let model = Model::new(&y, x.as_ref(), terms, true).unwrap();
            assert!(moment_start(&model).is_some());
            assert_eq!(default_start(&model), vec![1.0, 0.0, 1.0, 1.0], "{n} rows, {items} items");
        }
    }

    #[test]
    fn a_term_without_replication_keeps_lme4s_start() {
        // One row per level of the second term: no within-level variance to pool, so its λ
        // stays 1; the first term's still comes from its moments.
        let n = 12_000;
        let mut g = Lcg(9);
        let x = Mat::<f64>::from_fn(n, 1, |_, _| 1.0);
        let group: Vec<i32> = (0..n).map(|i| (i % 100) as i32).collect();
        let y: Vec<f64> = (0..n).map(|i| 0.5 * ((i % 100) as f64 / 50.0 - 1.0) + g.normal()).collect();
        let obs: Vec<i32> = (0..n as i32).collect();
        let terms = vec![
            Term::new(&obs, vec![1.0; n], 1, n, 0).unwrap(),
            Term::new(&group, vec![1.0; n], 1, 100, 1).unwrap(),
        ];
        let model = Model::new(&y, x.as_ref(), terms, false).unwrap();
        let start = moment_start(&model).unwrap();
        assert_eq!(start[0], 1.0);
        assert!(start[1] > 0.1 && start[1] < 1.0, "{start:?}");
    }
}
