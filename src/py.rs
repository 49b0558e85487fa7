//! The Python boundary: the only module that touches pyo3 or numpy.
//!
//! Every entry point follows one shape (`run_core`): copy the borrowed numpy inputs into owned
//! Rust data, release the GIL, compute, catch any panic, map `CoreError` onto the exception
//! hierarchy of `interlace.exceptions`, and move the outputs into fresh numpy arrays.

use std::panic::{catch_unwind, AssertUnwindSafe};

use faer::Mat;
use numpy::ndarray::{Array2, Array3};
use numpy::{IntoPyArray, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::CoreError;
use crate::influence;
use crate::model::{Estimates, Model, Term};
use crate::optimize::{fit_interruptible, FitOptions, OptimizationRecord};

/// Raises the `interlace.exceptions` class that fits the core error.
fn to_pyerr(py: Python<'_>, err: CoreError) -> PyErr {
    if err == CoreError::Interrupted {
        return pyo3::exceptions::PyKeyboardInterrupt::new_err("interrupted");
    }
    let class = match &err {
        CoreError::NotPositiveDefinite { .. } | CoreError::Internal { .. } => "NumericalError",
        CoreError::TooLarge { .. } => "InterlaceError",
        _ => "DataError",
    };
    let message = err.to_string();
    match py
        .import("interlace.exceptions")
        .and_then(|m| m.getattr(class))
    {
        Ok(cls) => match cls.call1((message.clone(),)) {
            Ok(instance) => PyErr::from_value(instance),
            Err(_) => PyValueError::new_err(message),
        },
        Err(_) => PyValueError::new_err(message),
    }
}

/// Releases the GIL around `f`, turns a panic into `CoreError::Internal`, and a `CoreError`
/// into the matching Python exception.
fn run_core<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, CoreError> + Send) -> PyResult<T> {
    let outcome = py.detach(|| {
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
            let reason = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic in the numerical core".to_string());
            Err(CoreError::Internal { reason })
        })
    });
    outcome.map_err(|e| to_pyerr(py, e))
}

/// Rows per task of [`copy_column_major`].
const COPY_ROWS: usize = 1 << 15;

/// The n × p column-major `flat` as a faer matrix, copied on the pool's threads into memory that
/// is not zeroed first, and that the kernel is asked to back with huge pages where it is large
/// (as numpy asks for its own arrays): InstEval's `service * dept` X is 17 MB, and zeroing it,
/// faulting it in 4 KiB pages and copying it on one thread took several milliseconds before the
/// GIL was released. The caller holds the GIL throughout and no Python code runs until the copy
/// returns, so nothing can write to the numpy buffer meanwhile; the pool's threads never touch
/// Python.
fn copy_column_major(flat: &[f64], n: usize, p: usize) -> Mat<f64> {
    use rayon::prelude::*;
    let mut xm = Mat::<f64>::with_capacity(n, p);
    let stride = xm.col_stride() as usize;
    let base = xm.as_ptr_mut() as usize;
    #[cfg(target_os = "linux")]
    if stride * p * std::mem::size_of::<f64>() >= HUGE_PAGE_MIN_BYTES {
        // Advice only: a refusal leaves ordinary pages.
        let page = 4096;
        let start = base & !(page - 1);
        let end = base + stride * p * std::mem::size_of::<f64>();
        // SAFETY: [start, end) lies within pages of the allocation just made (its first page
        // rounded down); madvise(MADV_HUGEPAGE) changes no contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
    let chunks = n.div_ceil(COPY_ROWS).max(1);
    let copy = |task: usize| {
        let (j, chunk) = (task / chunks, task % chunks);
        let rows = chunk * COPY_ROWS..((chunk + 1) * COPY_ROWS).min(n);
        let source = &flat[j * n + rows.start..j * n + rows.end];
        // SAFETY: the capacity holds p columns of `stride` ≥ n elements; tasks write disjoint
        // ranges of rows of one column each.
        unsafe {
            std::ptr::copy_nonoverlapping(source.as_ptr(), (base as *mut f64).add(j * stride + rows.start), source.len());
        }
    };
    if n * p * std::mem::size_of::<f64>() >= PARALLEL_COPY_MIN_BYTES {
        (0..p * chunks).into_par_iter().for_each(copy);
    } else {
        (0..p * chunks).for_each(copy);
    }
    // SAFETY: every element of the n × p matrix was written above.
    unsafe {
        xm.set_dims(n, p);
    }
    xm
}

/// Below this size X is copied on the calling thread: waking the pool costs more than the copy.
const PARALLEL_COPY_MIN_BYTES: usize = 1 << 22;

/// numpy's threshold for asking for huge pages (4 MiB).
#[cfg(target_os = "linux")]
const HUGE_PAGE_MIN_BYTES: usize = 1 << 22;

/// A linear mixed model ready to be evaluated at any θ (see `_core.pyi`).
#[pyclass(module = "interlace._core", name = "Model")]
struct PyModel {
    inner: Model,
}

#[pymethods]
impl PyModel {
    #[new]
    #[pyo3(signature = (y, x, codes, z, n_levels, reml, weights=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        y: PyReadonlyArray1<'_, f64>,
        x: PyReadonlyArray2<'_, f64>,
        codes: Vec<PyReadonlyArray1<'_, i32>>,
        z: Vec<PyReadonlyArray2<'_, f64>>,
        n_levels: Vec<usize>,
        reml: bool,
        weights: Option<PyReadonlyArray1<'_, f64>>,
    ) -> PyResult<Self> {
        if codes.len() != z.len() || codes.len() != n_levels.len() {
            return Err(to_pyerr(
                py,
                CoreError::DimensionMismatch {
                    what: "number of random-effects terms (codes, z, n_levels)".into(),
                    expected: codes.len(),
                    found: z.len().min(n_levels.len()),
                },
            ));
        }
        // Copy everything out of numpy memory before releasing the GIL: no Rust view into a
        // numpy buffer outlives this call.
        let y: Vec<f64> = match y.as_slice() {
            Ok(flat) => flat.to_vec(),
            Err(_) => y.as_array().iter().copied().collect(),
        };
        let weights: Option<Vec<f64>> = weights.map(|w| w.as_array().iter().copied().collect());
        let xa = x.as_array();
        let (n, p) = (xa.nrows(), xa.ncols());
        let xm = match x.as_slice() {
            // Fortran order (what `_core_model` passes).
            Ok(flat) if xa.t().is_standard_layout() => catch_unwind(|| copy_column_major(flat, n, p)).map_err(|_| {
                to_pyerr(
                    py,
                    CoreError::Internal {
                        reason: "copying the fixed-effects model matrix failed".into(),
                    },
                )
            })?,
            _ => Mat::<f64>::from_fn(n, p, |i, j| xa[[i, j]]),
        };
        let mut raw_terms = Vec::with_capacity(codes.len());
        for (k, (c, zk)) in codes.iter().zip(&z).enumerate() {
            let za = zk.as_array();
            if za.nrows() != c.as_array().len() {
                return Err(to_pyerr(
                    py,
                    CoreError::DimensionMismatch {
                        what: format!("rows of the model matrix of random-effects term {k}"),
                        expected: c.as_array().len(),
                        found: za.nrows(),
                    },
                ));
            }
            let q = za.ncols();
            // Row-major, as the core keeps it: a C-ordered (or single-column) z in one copy.
            let zr: Vec<f64> = match zk.as_slice() {
                Ok(flat) if za.is_standard_layout() => flat.to_vec(),
                _ => {
                    let mut zr = Vec::with_capacity(za.len());
                    for i in 0..za.nrows() {
                        for j in 0..q {
                            zr.push(za[[i, j]]);
                        }
                    }
                    zr
                }
            };
            let cv: Vec<i32> = match c.as_slice() {
                Ok(flat) => flat.to_vec(),
                Err(_) => c.as_array().iter().copied().collect(),
            };
            raw_terms.push((cv, zr, q));
        }
        let inner = run_core(py, move || {
            let mut terms = Vec::with_capacity(raw_terms.len());
            for (k, (cv, zr, q)) in raw_terms.into_iter().enumerate() {
                terms.push(Term::new(&cv, zr, q, n_levels[k], k)?);
            }
            match &weights {
                Some(w) => Model::with_weights(&y, xm.as_ref(), terms, reml, w),
                None => Model::from_owned(y, xm, terms, reml),
            }
        })?;
        Ok(PyModel { inner })
    }

    #[getter]
    fn n_theta(&self) -> usize {
        self.inner.n_theta()
    }

    #[getter]
    fn lower_bounds<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.inner.lower_bounds().into_pyarray(py).into_any()
    }

    #[getter]
    fn theta_start<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.inner.theta_start().into_pyarray(py).into_any()
    }

    fn objective(&mut self, py: Python<'_>, theta: PyReadonlyArray1<'_, f64>) -> PyResult<f64> {
        let theta: Vec<f64> = theta.as_array().iter().copied().collect();
        let model = &mut self.inner;
        run_core(py, move || model.objective(&theta))
    }

    /// (log|L_θ|², log|R_X|², r²) at θ: see `Model::deviance_parts`.
    fn deviance_parts(&mut self, py: Python<'_>, theta: PyReadonlyArray1<'_, f64>) -> PyResult<(f64, f64, f64)> {
        let theta: Vec<f64> = theta.as_array().iter().copied().collect();
        let model = &mut self.inner;
        run_core(py, move || model.deviance_parts(&theta))
    }

    /// (σ̂, cov(β̂)) at θ: see `Model::beta_covariance`.
    fn beta_covariance<'py>(&mut self, py: Python<'py>, theta: PyReadonlyArray1<'_, f64>) -> PyResult<(f64, Bound<'py, PyAny>)> {
        let theta: Vec<f64> = theta.as_array().iter().copied().collect();
        let p = self.inner.n_fixed();
        let model = &mut self.inner;
        let (sigma, cov) = run_core(py, move || model.beta_covariance(&theta))?;
        // Column-major p × p of a symmetric matrix: the row-major reading is the same matrix.
        let cov = Array2::from_shape_vec((p, p), cov).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok((sigma, cov.into_pyarray(py).into_any()))
    }

    fn estimates<'py>(&mut self, py: Python<'py>, theta: PyReadonlyArray1<'_, f64>) -> PyResult<Bound<'py, PyDict>> {
        let theta: Vec<f64> = theta.as_array().iter().copied().collect();
        let model = &mut self.inner;
        let est = run_core(py, move || model.estimates(&theta))?;
        estimates_to_dict(py, est, &self.inner)
    }

    #[pyo3(signature = (theta0=None, rho_begin=0.2, rho_end=1e-6, max_evals=0, conditional_covariances=true))]
    fn fit<'py>(
        &mut self,
        py: Python<'py>,
        theta0: Option<PyReadonlyArray1<'_, f64>>,
        rho_begin: f64,
        rho_end: f64,
        max_evals: usize,
        conditional_covariances: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        if !(rho_begin.is_finite() && rho_begin > 0.0 && rho_end.is_finite() && rho_end > 0.0) {
            return Err(to_pyerr(
                py,
                CoreError::InvalidTheta {
                    reason: format!("optimiser radii must be positive and finite (rho_begin={rho_begin}, rho_end={rho_end})"),
                },
            ));
        }
        let theta0: Option<Vec<f64>> = theta0.map(|t| t.as_array().iter().copied().collect());
        let options = FitOptions {
            rho_begin,
            rho_end,
            max_evals,
            convergence_check: true,
            conditional_covariances,
        };
        let model = &mut self.inner;
        // Ctrl-C: between evaluations, at most every 50 ms, briefly take the GIL and let Python
        // look at its signals (a fit running without the GIL would otherwise ignore them).
        let mut last_check = std::time::Instant::now();
        let mut interrupted = move || {
            if last_check.elapsed() < std::time::Duration::from_millis(50) {
                return false;
            }
            last_check = std::time::Instant::now();
            Python::attach(|py| py.check_signals().is_err())
        };
        let (est, record) = run_core(py, move || fit_interruptible(model, theta0.as_deref(), options, &mut interrupted))?;
        let dict = estimates_to_dict(py, est, &self.inner)?;
        record_into(py, &dict, record)?;
        Ok(dict)
    }
}

fn estimates_to_dict<'py>(py: Python<'py>, est: Estimates, model: &Model) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let p = est.beta.len();
    d.set_item("theta", est.theta.into_pyarray(py))?;
    d.set_item("objective", est.objective)?;
    d.set_item("beta", est.beta.into_pyarray(py))?;
    d.set_item("sigma", est.sigma)?;
    // beta_cov is column-major p × p; as it is symmetric, reading it row-major is the same.
    let cov = Array2::from_shape_vec((p, p), est.beta_cov).map_err(|e| PyValueError::new_err(e.to_string()))?;
    d.set_item("beta_cov", cov.into_pyarray(py))?;
    let mut b_list = Vec::new();
    for (bk, t) in est.b.into_iter().zip(model.terms()) {
        let bk = Array2::from_shape_vec((t.n_levels, t.q), bk).map_err(|e| PyValueError::new_err(e.to_string()))?;
        b_list.push(bk.into_pyarray(py));
    }
    d.set_item("b", b_list)?;
    if est.b_cond_cov.is_empty() && !model.terms().is_empty() {
        // Not formed (`fit(conditional_covariances=False)`).
        d.set_item("b_cond_cov", py.None())?;
    } else {
        let mut cov_list = Vec::new();
        for (ck, t) in est.b_cond_cov.into_iter().zip(model.terms()) {
            // each q × q block is symmetric, so its column-major layout reads the same row-major.
            let ck = Array3::from_shape_vec((t.n_levels, t.q, t.q), ck).map_err(|e| PyValueError::new_err(e.to_string()))?;
            cov_list.push(ck.into_pyarray(py));
        }
        d.set_item("b_cond_cov", cov_list)?;
    }
    d.set_item("fitted", est.fitted.into_pyarray(py))?;
    d.set_item("resid", est.resid.into_pyarray(py))?;
    Ok(d)
}

fn record_into(py: Python<'_>, d: &Bound<'_, PyDict>, record: OptimizationRecord) -> PyResult<()> {
    d.set_item("n_evals", record.n_evals)?;
    d.set_item("status", record.status)?;
    d.set_item("converged", record.converged)?;
    d.set_item("gradient", record.gradient.into_pyarray(py))?;
    d.set_item("scaled_gradient", record.scaled_gradient.into_pyarray(py))?;
    Ok(())
}

// ---- influence diagnostics ----
// HLMdiag's leverage, Cholesky marginal residuals, one-step and exact deletion diagnostics
// (numerics in `influence.rs`). Deletion sets arrive as one flat array of row indices and an
// array of offsets (set s is rows[offsets[s]..offsets[s + 1]]); `n_jobs` 0 means all cores.

/// Copies the (rows, offsets) pair out of numpy into one Vec per deletion set.
fn deletion_sets(rows: &PyReadonlyArray1<'_, i64>, offsets: &PyReadonlyArray1<'_, i64>) -> Result<Vec<Vec<usize>>, CoreError> {
    let rows = rows.as_array();
    let offsets = offsets.as_array();
    let n_rows = rows.len();
    if offsets.is_empty() || offsets[0] != 0 || offsets[offsets.len() - 1] as usize != n_rows {
        return Err(CoreError::DimensionMismatch {
            what: "deletion-set offsets (first must be 0, last the number of rows)".into(),
            expected: n_rows,
            found: offsets.iter().last().map_or(0, |&v| v.max(0) as usize),
        });
    }
    let mut sets = Vec::with_capacity(offsets.len() - 1);
    for s in 0..offsets.len() - 1 {
        let (a, b) = (offsets[s], offsets[s + 1]);
        if a < 0 || b < a || b as usize > n_rows {
            return Err(CoreError::DimensionMismatch {
                what: format!("offsets of deletion set {s} (must be non-decreasing)"),
                expected: n_rows,
                found: b.max(0) as usize,
            });
        }
        let mut set = Vec::with_capacity((b - a) as usize);
        for &r in rows.slice(numpy::ndarray::s![a as usize..b as usize]).iter() {
            if r < 0 {
                return Err(CoreError::DimensionMismatch {
                    what: format!("row {r} in deletion set {s} (rows must be non-negative)"),
                    expected: 0,
                    found: 0,
                });
            }
            set.push(r as usize);
        }
        sets.push(set);
    }
    Ok(sets)
}

fn vec_from(a: &PyReadonlyArray1<'_, f64>) -> Vec<f64> {
    a.as_array().iter().copied().collect()
}

/// HLMdiag's leverages at θ: dict of `overall`, `fixef`, `ranef`, `ranef_uc` (n,).
#[pyfunction]
#[pyo3(signature = (model, theta, n_jobs=0))]
fn leverage<'py>(py: Python<'py>, model: PyRef<'_, PyModel>, theta: PyReadonlyArray1<'_, f64>, n_jobs: usize) -> PyResult<Bound<'py, PyDict>> {
    let theta = vec_from(&theta);
    let inner = &model.inner;
    let lev = run_core(py, move || influence::leverage(inner, &theta, n_jobs))?;
    let d = PyDict::new(py);
    d.set_item("overall", lev.overall.into_pyarray(py))?;
    d.set_item("fixef", lev.fixef.into_pyarray(py))?;
    d.set_item("ranef", lev.ranef.into_pyarray(py))?;
    d.set_item("ranef_uc", lev.ranef_uc.into_pyarray(py))?;
    Ok(d)
}

/// One-step deletion diagnostics at θ: dict of `cooksd`, `mdffits`, `covtrace`, `covratio`.
#[pyfunction]
#[pyo3(signature = (model, theta, rows, offsets, n_jobs=0))]
fn one_step_deletion<'py>(
    py: Python<'py>,
    model: PyRef<'_, PyModel>,
    theta: PyReadonlyArray1<'_, f64>,
    rows: PyReadonlyArray1<'_, i64>,
    offsets: PyReadonlyArray1<'_, i64>,
    n_jobs: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let theta = vec_from(&theta);
    let sets = deletion_sets(&rows, &offsets).map_err(|e| to_pyerr(py, e))?;
    let inner = &model.inner;
    let out = run_core(py, move || influence::one_step(inner, &theta, &sets, n_jobs))?;
    let d = PyDict::new(py);
    d.set_item("cooksd", out.cooksd.into_pyarray(py))?;
    d.set_item("mdffits", out.mdffits.into_pyarray(py))?;
    d.set_item("covtrace", out.covtrace.into_pyarray(py))?;
    d.set_item("covratio", out.covratio.into_pyarray(py))?;
    Ok(d)
}

/// Marginal fitted values Xβ̂ and residuals y − Xβ̂ at θ, and the Cholesky marginal residuals
/// L_V⁻¹(y − Xβ̂) when `cholesky`: dict of `fitted`, `resid`, `cholesky` (n,) or None.
#[pyfunction]
#[pyo3(signature = (model, theta, cholesky=false))]
fn marginal_residuals<'py>(py: Python<'py>, model: PyRef<'_, PyModel>, theta: PyReadonlyArray1<'_, f64>, cholesky: bool) -> PyResult<Bound<'py, PyDict>> {
    let theta = vec_from(&theta);
    let inner = &model.inner;
    let out = run_core(py, move || influence::marginal_residuals(inner, &theta, cholesky))?;
    let d = PyDict::new(py);
    d.set_item("fitted", out.fitted.into_pyarray(py))?;
    d.set_item("resid", out.resid.into_pyarray(py))?;
    match out.cholesky {
        Some(values) => d.set_item("cholesky", values.into_pyarray(py))?,
        None => d.set_item("cholesky", py.None())?,
    }
    Ok(d)
}

/// Exact case deletion: refits θ from `theta_hat` without each set of rows.
#[pyfunction]
#[pyo3(signature = (model, theta_hat, rows, offsets, n_jobs=0, rho_begin=0.2, rho_end=1e-6, max_evals=0))]
#[allow(clippy::too_many_arguments)]
fn delete_and_refit<'py>(
    py: Python<'py>,
    model: PyRef<'_, PyModel>,
    theta_hat: PyReadonlyArray1<'_, f64>,
    rows: PyReadonlyArray1<'_, i64>,
    offsets: PyReadonlyArray1<'_, i64>,
    n_jobs: usize,
    rho_begin: f64,
    rho_end: f64,
    max_evals: usize,
) -> PyResult<Bound<'py, PyDict>> {
    if !(rho_begin.is_finite() && rho_begin > 0.0 && rho_end.is_finite() && rho_end > 0.0) {
        return Err(to_pyerr(
            py,
            CoreError::InvalidTheta {
                reason: format!("optimiser radii must be positive and finite (rho_begin={rho_begin}, rho_end={rho_end})"),
            },
        ));
    }
    let theta_hat = vec_from(&theta_hat);
    let sets = deletion_sets(&rows, &offsets).map_err(|e| to_pyerr(py, e))?;
    let options = FitOptions {
        rho_begin,
        rho_end,
        max_evals,
        convergence_check: false,
        conditional_covariances: false,
    };
    let inner = &model.inner;
    let (n_theta, p) = (inner.n_theta(), inner.n_fixed());
    let fits = run_core(py, move || influence::delete_and_refit(inner, &sets, &theta_hat, n_jobs, options))?;
    let count = fits.len();
    let mut theta = Array2::<f64>::zeros((count, n_theta));
    let mut beta = Array2::<f64>::zeros((count, p));
    let mut beta_cov = Array3::<f64>::zeros((count, p, p));
    let mut errors: Vec<Option<String>> = Vec::with_capacity(count);
    for (s, f) in fits.iter().enumerate() {
        for (t, &v) in f.theta.iter().enumerate() {
            theta[[s, t]] = v;
        }
        for (c, &v) in f.beta.iter().enumerate() {
            beta[[s, c]] = v;
        }
        for c in 0..p {
            for r in 0..p {
                beta_cov[[s, r, c]] = f.beta_cov[c * p + r];
            }
        }
        errors.push(f.error.as_ref().map(|e| e.to_string()));
    }
    let d = PyDict::new(py);
    d.set_item("theta", theta.into_pyarray(py))?;
    d.set_item("beta", beta.into_pyarray(py))?;
    d.set_item("beta_cov", beta_cov.into_pyarray(py))?;
    d.set_item("sigma", fits.iter().map(|f| f.sigma).collect::<Vec<_>>().into_pyarray(py))?;
    d.set_item("objective", fits.iter().map(|f| f.objective).collect::<Vec<_>>().into_pyarray(py))?;
    d.set_item("n_evals", fits.iter().map(|f| f.n_evals as i64).collect::<Vec<_>>().into_pyarray(py))?;
    d.set_item("converged", fits.iter().map(|f| f.converged).collect::<Vec<_>>().into_pyarray(py))?;
    d.set_item("errors", errors)?;
    Ok(d)
}

fn register_influence(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(leverage, m)?)?;
    m.add_function(wrap_pyfunction!(one_step_deletion, m)?)?;
    m.add_function(wrap_pyfunction!(marginal_residuals, m)?)?;
    m.add_function(wrap_pyfunction!(delete_and_refit, m)?)?;
    Ok(())
}
// ---- end of influence diagnostics ----

// ---- simulation and bootstrap ----
// lme4's simulate and bootMer, parametric (numerics in `bootstrap.rs`). Replicate r's random
// numbers depend only on (seed, r), so results do not depend on `n_jobs` (0: all cores).

/// `nsim` responses simulated at θ̂, returned as (nsim, n): row r is replicate r.
#[pyfunction]
#[pyo3(signature = (model, theta_hat, nsim, seed, conditional=false))]
fn simulate_responses<'py>(
    py: Python<'py>,
    model: PyRef<'_, PyModel>,
    theta_hat: PyReadonlyArray1<'_, f64>,
    nsim: usize,
    seed: u64,
    conditional: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let theta_hat = vec_from(&theta_hat);
    let inner = &model.inner;
    let n = inner.n_obs();
    let values = run_core(py, move || crate::bootstrap::simulate(inner, &theta_hat, nsim, seed, conditional))?;
    // Column-major n × nsim is row-major nsim × n.
    let out = Array2::from_shape_vec((nsim, n), values).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(out.into_pyarray(py).into_any())
}

/// The parametric bootstrap: `nsim` refits to responses simulated at θ̂, warm-started at θ̂.
/// `progress(done)` is called now and then with the number of finished refits.
#[pyfunction]
#[pyo3(signature = (model, theta_hat, nsim, seed, n_jobs=0, progress=None, rho_begin=0.2, rho_end=1e-6, max_evals=0))]
#[allow(clippy::too_many_arguments)]
fn parametric_bootstrap<'py>(
    py: Python<'py>,
    model: PyRef<'_, PyModel>,
    theta_hat: PyReadonlyArray1<'_, f64>,
    nsim: usize,
    seed: u64,
    n_jobs: usize,
    progress: Option<Py<PyAny>>,
    rho_begin: f64,
    rho_end: f64,
    max_evals: usize,
) -> PyResult<Bound<'py, PyDict>> {
    if !(rho_begin.is_finite() && rho_begin > 0.0 && rho_end.is_finite() && rho_end > 0.0) {
        return Err(to_pyerr(
            py,
            CoreError::InvalidTheta {
                reason: format!("optimiser radii must be positive and finite (rho_begin={rho_begin}, rho_end={rho_end})"),
            },
        ));
    }
    let theta_hat = vec_from(&theta_hat);
    let options = FitOptions {
        rho_begin,
        rho_end,
        max_evals,
        convergence_check: false,
        conditional_covariances: false,
    };
    let inner = &model.inner;
    let (n_theta, p) = (inner.n_theta(), inner.n_fixed());
    // The core polls from the calling (main) thread: take the GIL briefly, look at the signals
    // (Ctrl-C) and report progress; a Python error from either stops the workers.
    let mut python_error: Option<PyErr> = None;
    let error_slot = &mut python_error;
    let mut last_reported = usize::MAX;
    let mut poll = move |done: usize| -> bool {
        Python::attach(|py| {
            if let Err(e) = py.check_signals() {
                *error_slot = Some(e);
                return true;
            }
            if let Some(callback) = &progress {
                if done != last_reported {
                    last_reported = done;
                    if let Err(e) = callback.call1(py, (done,)) {
                        *error_slot = Some(e);
                        return true;
                    }
                }
            }
            false
        })
    };
    let fits = run_core(py, move || crate::bootstrap::bootstrap(inner, &theta_hat, nsim, seed, n_jobs, options, &mut poll));
    if let Some(e) = python_error {
        return Err(e);
    }
    let fits = fits?;
    let mut theta = Array2::<f64>::zeros((nsim, n_theta));
    let mut beta = Array2::<f64>::zeros((nsim, p));
    let mut errors: Vec<Option<String>> = Vec::with_capacity(nsim);
    for (r, f) in fits.iter().enumerate() {
        for (t, &v) in f.theta.iter().enumerate() {
            theta[[r, t]] = v;
        }
        for (c, &v) in f.beta.iter().enumerate() {
            beta[[r, c]] = v;
        }
        errors.push(f.error.as_ref().map(|e| e.to_string()));
    }
    let d = PyDict::new(py);
    d.set_item("theta", theta.into_pyarray(py))?;
    d.set_item("beta", beta.into_pyarray(py))?;
    d.set_item("sigma", fits.iter().map(|f| f.sigma).collect::<Vec<_>>().into_pyarray(py))?;
    d.set_item("objective", fits.iter().map(|f| f.objective).collect::<Vec<_>>().into_pyarray(py))?;
    d.set_item("n_evals", fits.iter().map(|f| f.n_evals as i64).collect::<Vec<_>>().into_pyarray(py))?;
    d.set_item("converged", fits.iter().map(|f| f.converged).collect::<Vec<_>>().into_pyarray(py))?;
    d.set_item("errors", errors)?;
    Ok(d)
}

fn register_bootstrap(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(simulate_responses, m)?)?;
    m.add_function(wrap_pyfunction!(parametric_bootstrap, m)?)?;
    Ok(())
}
// ---- end of simulation and bootstrap ----

/// Panics inside the core's guard, on the calling thread or (`in_workers`) in rayon worker
/// threads: the test suite checks that either becomes `interlace.exceptions.NumericalError`.
/// `resume_unwind` unwinds exactly as a panic does but skips the panic hook, so the deliberate
/// panic prints nothing that `.ci/debug-checks` would take for a real one.
#[pyfunction]
#[pyo3(signature = (in_workers=false))]
fn _panic_for_testing(py: Python<'_>, in_workers: bool) -> PyResult<()> {
    run_core(py, move || -> Result<(), CoreError> {
        if in_workers {
            use rayon::prelude::*;
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().map_err(|e| CoreError::Internal {
                reason: e.to_string(),
            })?;
            pool.install(|| {
                (0..4).into_par_iter().for_each(|i| {
                    if i >= 2 {
                        std::panic::resume_unwind(Box::new(format!("deliberate panic in worker {i}")));
                    }
                })
            });
            Ok(())
        } else {
            std::panic::resume_unwind(Box::new("deliberate panic for the test suite"))
        }
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(_panic_for_testing, m)?)?;
    register_influence(m)?;
    register_bootstrap(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
