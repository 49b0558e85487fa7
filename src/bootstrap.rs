//! Simulation from a fitted linear mixed model and the parametric bootstrap (lme4's
//! `simulate.merMod` and `bootMer`).
//!
//! At the estimates (θ̂, β̂, σ̂), one simulated response is (Bates et al. 2015, JSS 67(1), eq. 2–3)
//!
//! ```text
//!     y* = Xβ̂ + Z b* + σ̂ ε*,   b* = σ̂ Λ_θ̂ u*,   u* ~ N(0, I_q),   ε* ~ N(0, I_n)
//! ```
//!
//! (lme4's default `use.u = FALSE`, `re.form = NA`: new random effects for every replicate), or,
//! conditional on the estimated modes (lme4's `use.u = TRUE` / `re.form = NULL`),
//! y* = Xβ̂ + Z b̂ + σ̂ ε*. The parametric bootstrap refits the model to each y* (same REML/ML
//! criterion), warm-started at θ̂, and keeps θ*, β*, σ*.
//!
//! **Random numbers.** Replicate r draws from its own stream, seeded from (seed, r) only, so the
//! output is the same for any number of threads and any scheduling. The stream is xoshiro256**
//! (Blackman & Vigna 2021, "Scrambled linear pseudorandom number generators", ACM TOMS 47(4)),
//! its 256-bit state filled by SplitMix64 (Steele, Lea & Flood 2014) from a key that mixes the
//! seed and the replicate index through SplitMix64's finaliser. Normals come from the
//! Box–Muller transform, both values of each pair used. Within a replicate the draws are taken
//! in a fixed order: u* for every term (terms in the core's order, levels ascending, the q
//! entries of a level in order), then ε* for the rows in order; u* is drawn even when
//! conditioning on b̂, so the ε* of a seed do not depend on that choice.
//!
//! **Parallelism.** Replicates run on a local rayon pool (`n_jobs` threads, 0 for all cores),
//! each worker sequential, results collected in replicate order. The calling thread stays out
//! of the pool and polls a `poll(done) -> stop` callback every 50 ms, which is how Ctrl-C and a
//! progress bar reach a computation running without the GIL.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use rayon::prelude::*;

use crate::error::{CoreError, CoreResult};
use crate::model::{Estimates, Model};
use crate::optimize::{fit_interruptible, FitOptions};

/// SplitMix64's output function (Steele, Lea & Flood 2014): a bijective 64-bit mixer.
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// xoshiro256** with a cached second Box–Muller normal.
#[derive(Debug, Clone)]
pub struct Stream {
    s: [u64; 4],
    spare: Option<f64>,
}

impl Stream {
    /// The stream of replicate `index` under `seed`.
    pub fn new(seed: u64, index: u64) -> Self {
        // Two different (seed, index) pairs give different keys (the mixer is a bijection and
        // the index enters after the seed is mixed), then SplitMix64 expands the key.
        let mut state = splitmix64_mix(splitmix64_mix(seed).wrapping_add(index.wrapping_mul(GOLDEN_GAMMA)));
        let mut s = [0u64; 4];
        for word in &mut s {
            state = state.wrapping_add(GOLDEN_GAMMA);
            *word = splitmix64_mix(state);
        }
        if s == [0; 4] {
            s[0] = 1; // the one state xoshiro cannot leave
        }
        Stream { s, spare: None }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform on (0, 1): the top 53 bits, offset by half a step so 0 never occurs.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

/// Writes one simulated response into `out` (length n). `est` are the estimates at θ̂;
/// `conditional` uses the modes b̂ instead of new random effects.
fn simulate_one(model: &Model, est: &Estimates, conditional: bool, stream: &mut Stream, out: &mut [f64]) {
    let (n, p) = (model.n, model.p);
    let sigma = est.sigma;
    // b* per term, level-major like est.b; u* always drawn (see the header).
    let mut b_new: Vec<Vec<f64>> = Vec::with_capacity(model.terms.len());
    for (k, t) in model.terms.iter().enumerate() {
        let q = t.q;
        let lam = &model.lambdas[k];
        let mut bk = vec![0.0; t.n_levels * q];
        let mut u = vec![0.0; q];
        for lev in 0..t.n_levels {
            for v in u.iter_mut() {
                *v = stream.normal();
            }
            // b = σ λ u with λ lower triangular, column-major.
            for row in 0..q {
                let mut s = 0.0;
                for col in 0..=row {
                    s += lam[col * q + row] * u[col];
                }
                bk[lev * q + row] = sigma * s;
            }
        }
        b_new.push(bk);
    }
    let b = if conditional { &est.b } else { &b_new };
    for i in 0..n {
        let mut s = 0.0;
        for c in 0..p {
            s += model.x[(i, c)] * est.beta[c];
        }
        for (k, t) in model.terms.iter().enumerate() {
            let lev = t.codes[i] as usize;
            let z = &t.z[i * t.q..(i + 1) * t.q];
            for c in 0..t.q {
                s += z[c] * b[k][lev * t.q + c];
            }
        }
        out[i] = s + sigma * stream.normal();
    }
}

/// The estimates at θ̂ on a private copy of the model (which leaves λ set to θ̂).
fn estimates_at(model: &Model, theta_hat: &[f64]) -> CoreResult<(Model, Estimates)> {
    let mut work = model.clone();
    let est = work.estimates(theta_hat)?;
    Ok((work, est))
}

/// `nsim` outputs of `bytes_each` bytes must fit in memory (and in `usize`): an
/// `Unsupported` error naming the request otherwise, before anything is allocated.
fn check_output_size(nsim: usize, bytes_each: u128, what: &str) -> CoreResult<()> {
    let bytes = nsim as u128 * bytes_each;
    let limit = crate::model::available_memory_bytes().unwrap_or(u128::MAX).min(isize::MAX as u128);
    if bytes > limit {
        return Err(CoreError::Unsupported {
            reason: format!(
                "{nsim} {what} need about {:.1} GB of memory, more than the {:.1} GB available; ask for fewer, in batches",
                bytes as f64 / 1e9,
                limit as f64 / 1e9
            ),
        });
    }
    Ok(())
}

/// `nsim` simulated responses at θ̂ (β̂ and σ̂ are the estimates there), n × nsim column-major.
/// Replicate r uses `Stream::new(seed, r)`.
pub fn simulate(model: &Model, theta_hat: &[f64], nsim: usize, seed: u64, conditional: bool) -> CoreResult<Vec<f64>> {
    let n = model.n;
    check_output_size(nsim, n as u128 * 8, "simulated responses")?;
    let (work, est) = estimates_at(model, theta_hat)?;
    let mut out = vec![0.0; n * nsim];
    for (r, column) in out.chunks_exact_mut(n.max(1)).enumerate().take(nsim) {
        simulate_one(&work, &est, conditional, &mut Stream::new(seed, r as u64), column);
        work.unweight(column);
    }
    Ok(out)
}

/// One bootstrap refit: NaN estimates and the error when the refit failed.
#[derive(Debug, Clone)]
pub struct BootstrapFit {
    pub theta: Vec<f64>,
    pub beta: Vec<f64>,
    pub sigma: f64,
    pub objective: f64,
    pub n_evals: usize,
    pub converged: bool,
    pub error: Option<CoreError>,
}

impl BootstrapFit {
    fn failed(n_theta: usize, p: usize, error: CoreError) -> Self {
        BootstrapFit {
            theta: vec![f64::NAN; n_theta],
            beta: vec![f64::NAN; p],
            sigma: f64::NAN,
            objective: f64::NAN,
            n_evals: 0,
            converged: false,
            error: Some(error),
        }
    }
}

/// The parametric bootstrap: simulate y* from the fit at θ̂ (new random effects), refit θ
/// warm-started at θ̂, `nsim` times on `n_jobs` threads (0: all cores), in replicate order.
///
/// `poll(done)` is called on the calling thread about every 50 ms with the number of finished
/// replicates; returning `true` stops the workers and the call returns
/// [`CoreError::Interrupted`].
pub fn bootstrap(
    model: &Model,
    theta_hat: &[f64],
    nsim: usize,
    seed: u64,
    n_jobs: usize,
    options: FitOptions,
    poll: &mut dyn FnMut(usize) -> bool,
) -> CoreResult<Vec<BootstrapFit>> {
    let (n_theta, p) = (model.n_theta, model.p);
    check_output_size(nsim, ((n_theta + p + 4) * 8 + std::mem::size_of::<BootstrapFit>()) as u128, "bootstrap replicates")?;
    let (work, est) = estimates_at(model, theta_hat)?;
    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    let results: Mutex<Option<Vec<BootstrapFit>>> = Mutex::new(None);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n_jobs)
        .build()
        .map_err(|e| CoreError::Internal {
            reason: format!("could not start a pool of {n_jobs} worker threads: {e}"),
        })?;
    let (finished_tx, finished_rx) = mpsc::channel::<()>();
    let replicate = |r: usize| -> BootstrapFit {
        if stop.load(Ordering::Relaxed) {
            return BootstrapFit::failed(n_theta, p, CoreError::Interrupted);
        }
        let mut y = vec![0.0; work.n];
        simulate_one(&work, &est, false, &mut Stream::new(seed, r as u64), &mut y);
        let mut stopped = || stop.load(Ordering::Relaxed);
        let refit = work
            .with_response(&y)
            .and_then(|mut m| {
                m.set_sequential();
                fit_interruptible(&mut m, Some(theta_hat), options, &mut stopped)
            });
        done.fetch_add(1, Ordering::Relaxed);
        match refit {
            Ok((e, record)) => BootstrapFit {
                theta: e.theta,
                beta: e.beta,
                sigma: e.sigma,
                objective: e.objective,
                n_evals: record.n_evals,
                converged: record.converged,
                error: None,
            },
            Err(error) => BootstrapFit::failed(n_theta, p, error),
        }
    };
    pool.in_place_scope(|scope| {
        let (replicate, results) = (&replicate, &results);
        scope.spawn(move |_| {
            let fits: Vec<BootstrapFit> = (0..nsim).into_par_iter().map(replicate).collect();
            *results.lock().unwrap_or_else(|e| e.into_inner()) = Some(fits);
            drop(finished_tx);
        });
        // The workers drop the sender when they are done, which ends the wait.
        while let Err(mpsc::RecvTimeoutError::Timeout) = finished_rx.recv_timeout(Duration::from_millis(50)) {
            if !stop.load(Ordering::Relaxed) && poll(done.load(Ordering::Relaxed)) {
                stop.store(true, Ordering::Relaxed);
            }
        }
    });
    if stop.load(Ordering::Relaxed) {
        return Err(CoreError::Interrupted);
    }
    poll(nsim);
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or_else(|| CoreError::Internal {
            reason: "the bootstrap workers returned no results".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Term;
    use crate::optimize::fit;
    use faer::Mat;

    /// 12 groups × 6 rows, random intercept and slope: y = 2 + 0.5 x + b₀ + b₁x + ε.
    fn model() -> Model {
        let (groups, per) = (12usize, 6usize);
        let n = groups * per;
        let mut g = Stream::new(99, 0);
        let mut x = Mat::<f64>::zeros(n, 2);
        let mut y = vec![0.0; n];
        let mut codes = vec![0i32; n];
        let mut z = vec![0.0; 2 * n];
        for j in 0..groups {
            let (b0, b1) = (g.normal(), 0.3 * g.normal());
            for k in 0..per {
                let i = j * per + k;
                let xi = k as f64;
                x[(i, 0)] = 1.0;
                x[(i, 1)] = xi;
                codes[i] = j as i32;
                z[2 * i] = 1.0;
                z[2 * i + 1] = xi;
                y[i] = 2.0 + 0.5 * xi + b0 + b1 * xi + 0.5 * g.normal();
            }
        }
        let term = Term::new(&codes, z, 2, groups, 0).unwrap();
        Model::new(&y, x.as_ref(), vec![term], true).unwrap()
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Stream::new(7, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Stream::new(7, 3).next_u64(), Stream::new(7, 4).next_u64());
        assert_ne!(Stream::new(7, 3).next_u64(), Stream::new(8, 3).next_u64());
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut s = Stream::new(1, 0);
        let m = 200_000;
        let draws: Vec<f64> = (0..m).map(|_| s.normal()).collect();
        let mean = draws.iter().sum::<f64>() / m as f64;
        let var = draws.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / m as f64;
        let kurt = draws.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / m as f64 / (var * var);
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "var {var}");
        assert!((kurt - 3.0).abs() < 0.06, "kurtosis {kurt}");
    }

    #[test]
    fn conditional_simulation_is_fitted_plus_noise() {
        let mut m = model();
        let (est, _) = fit(&mut m, None, FitOptions::default()).unwrap();
        let sims = simulate(&m, &est.theta, 400, 5, true).unwrap();
        let n = m.n;
        for i in 0..n {
            let mean = (0..400).map(|r| sims[r * n + i]).sum::<f64>() / 400.0;
            // sd of the mean is σ/20.
            assert!((mean - est.fitted[i]).abs() < 5.0 * est.sigma / 20.0, "row {i}");
        }
    }

    #[test]
    fn bootstrap_does_not_depend_on_the_number_of_threads() {
        let mut m = model();
        let (est, _) = fit(&mut m, None, FitOptions::default()).unwrap();
        let one = bootstrap(&m, &est.theta, 6, 11, 1, FitOptions::default(), &mut |_| false).unwrap();
        let two = bootstrap(&m, &est.theta, 6, 11, 2, FitOptions::default(), &mut |_| false).unwrap();
        for (a, b) in one.iter().zip(&two) {
            assert!(a.error.is_none());
            assert_eq!(a.theta, b.theta);
            assert_eq!(a.beta, b.beta);
            assert_eq!(a.sigma.to_bits(), b.sigma.to_bits());
        }
        // Replicate 0 is the fit to the first simulated response.
        let y0 = simulate(&m, &est.theta, 1, 11, false).unwrap();
        let mut direct = m.with_response(&y0).unwrap();
        let (e0, _) = fit(&mut direct, Some(&est.theta), FitOptions::default()).unwrap();
        assert_eq!(e0.beta, one[0].beta);
    }

    #[test]
    fn a_stop_request_interrupts_the_bootstrap() {
        let mut m = model();
        let (est, _) = fit(&mut m, None, FitOptions::default()).unwrap();
        let out = bootstrap(&m, &est.theta, 2000, 1, 1, FitOptions::default(), &mut |_| true);
        assert_eq!(out.unwrap_err(), CoreError::Interrupted);
    }
}
