//! The linear mixed model y = Xβ + ZΛ_θu + ε, u ~ N(0, σ²I), ε ~ N(0, σ²I), with its
//! profiled deviance and REML criterion (Bates, Mächler, Bolker & Walker 2015, JSS 67(1), §3).
//!
//! For a given θ the penalised least-squares problem is solved by one Cholesky factor of the
//! blocked matrix
//!
//! ```text
//!     [ΛᵀZᵀZΛ + I   ΛᵀZᵀX   ΛᵀZᵀy]         [L₁₁            ]
//!     [XᵀZΛ         XᵀX     Xᵀy  ]  = L Lᵀ,  L = [L₂₁  L₂₂       ]
//!     [yᵀZΛ         yᵀX     yᵀy  ]             [L₃₁  L₃₂  L₃₃  ]
//! ```
//!
//! organised as MixedModels.jl organises it (Bates, "MixedModels.jl: blocked Cholesky"):
//! random-effects terms come sorted by number of levels, descending; block 1 is the first
//! (largest) term, whose ZᵀZ block is block diagonal (one q₁×q₁ block per level), so L₁₁ is
//! block diagonal too; block 2 ("rest") gathers the remaining terms, whose Schur complement is
//! formed densely; block 3 is [X y], dense. The crossproduct A = [Z X y]ᵀ[Z X y] is formed once;
//! per θ only the factor is updated, and the objective is read off its diagonal:
//!
//! ```text
//!     r² = L₃₃[p,p]²,   log|L_θ|² = 2 Σ log diag(L₁₁, L₂₂),   log|R_X|² = 2 Σ log diag(L₃₃[..p,..p])
//!     deviance(θ)  = log|L_θ|² + n (1 + log(2π r² / n))
//!     REML(θ)      = log|L_θ|² + log|R_X|² + (n − p)(1 + log(2π r² / (n − p)))
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltParams};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{Accum, Mat, MatMut, MatRef, Par, Spec};

use crate::dense::{
    chol_small, lambda_left_rows, lambda_right_cols, solve_lower_small, solve_upper_small,
    theta_to_lambda,
};
use crate::error::{CoreError, CoreResult};
use crate::sparse_rest::{MAX_PATTERN_FILL, Pattern, SparseRest, SPARSE_REST_MIN};

/// One random-effects term as the core sees it: a level code per observation and the term's
/// model-matrix row per observation (row-major, n × q).
#[derive(Debug, Clone)]
pub struct Term {
    pub codes: Vec<u32>,
    pub z: Vec<f64>,
    pub q: usize,
    pub n_levels: usize,
}

impl Term {
    /// Validates the codes against `n_levels` and the size of `z`.
    pub fn new(codes: &[i32], z_row_major: Vec<f64>, q: usize, n_levels: usize, index: usize) -> CoreResult<Self> {
        let n = codes.len();
        if q == 0 {
            return Err(CoreError::Unsupported {
                reason: format!("random-effects term {index} has no columns"),
            });
        }
        if z_row_major.len() != n * q {
            return Err(CoreError::DimensionMismatch {
                what: format!("model matrix of random-effects term {index} (entries)"),
                expected: n * q,
                found: z_row_major.len(),
            });
        }
        let mut out = Vec::with_capacity(n);
        for (row, &c) in codes.iter().enumerate() {
            if c < 0 || c as usize >= n_levels {
                return Err(CoreError::CodeOutOfRange {
                    term: index,
                    row,
                    code: c as i64,
                    n_levels,
                });
            }
            out.push(c as u32);
        }
        if let Some(i) = z_row_major.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::NonFinite {
                what: format!("model matrix of random-effects term {index}"),
                index: i,
            });
        }
        Ok(Term {
            codes: out,
            z: z_row_major,
            q,
            n_levels,
        })
    }

    fn n_theta(&self) -> usize {
        self.q * (self.q + 1) / 2
    }

    fn z_row(&self, i: usize) -> &[f64] {
        &self.z[i * self.q..(i + 1) * self.q]
    }
}

/// The blocked crossproduct A = [Z X y]ᵀ[Z X y], formed once per model.
#[derive(Debug, Clone)]
pub(crate) struct Crossprod {
    /// Z₁ᵀZ₁: one q₁×q₁ block (column-major) per level of term 1.
    a11: Vec<f64>,
    /// Z_restᵀZ₁ as a sparse block column per level j of term 1: rows `rows[ptr[j]..ptr[j+1]]`
    /// (ascending, whole level groups), each with q₁ values in `vals` (row-major).
    a21_ptr: Vec<usize>,
    a21_rows: Vec<usize>,
    a21_vals: Vec<f64>,
    /// The same entries indexed by rest row: for row b, `a21_by_row[a21_row_ptr[b]..a21_row_ptr[b+1]]`
    /// are the entry indices e with `a21_rows[e] == b`, and `a21_block_end[e]` is the end of e's
    /// block column. The Schur update then walks one column of S at a time (cache resident).
    a21_row_ptr: Vec<usize>,
    a21_by_row: Vec<usize>,
    a21_block_end: Vec<usize>,
    /// The same entries by panel of [`SCHUR_PANEL`] rest rows: panel k's entries are the runs
    /// `schur_runs[schur_run_ptr[k]..schur_run_ptr[k+1]]`, each a range of consecutive entry
    /// indices of one block column, ascending. A dense Schur complement is built one panel at
    /// a time, reading each block column once per panel instead of once per column.
    schur_run_ptr: Vec<usize>,
    /// (first, stop, end of the block column): the end saves a dependent load per run.
    schur_runs: Vec<(usize, usize, usize)>,
    /// Levels of a scalar term 1 with equal A₁₁ⱼ, whose Schur updates are summed once (see
    /// [`SchurGroup`]); their entries are left out of `a21_by_row`.
    schur_groups: Vec<SchurGroup>,
    /// Z_restᵀZ_rest, dense m×m (full symmetric). Formed with the crossproduct, except where
    /// the objective factors the rest block sparse: then by the first dense use (the
    /// conditional covariances, the influence diagnostics; see [`Model::ensure_dense_a22`]).
    a22: std::sync::OnceLock<Mat<f64>>,
    /// Z₁ᵀ[X y], (q₁ℓ₁) × (p+1).
    a31t: Mat<f64>,
    /// Z_restᵀ[X y], m × (p+1).
    a32t: Mat<f64>,
    /// [X y]ᵀ[X y], (p+1) × (p+1).
    pub(crate) a33: Mat<f64>,
}

impl Crossprod {
    /// The dense A₂₂, formed by [`Model::ensure_dense_a22`] where the crossproduct did not.
    fn dense_a22(&self) -> MatRef<'_, f64> {
        self.a22.get().expect("the dense A₂₂ is formed before the dense rest block is").as_ref()
    }
}

/// Levels j of the first term that share one block A₁₁ⱼ = Σ zᵢzᵢᵀ. With scalar rest terms,
/// level j's Schur update L₂₁ⱼL₂₁ⱼᵀ is D A₂₁ⱼ M A₂₁ⱼᵀ D, with D the rest λ's on the diagonal and
/// M = λ₁(λ₁ᵀA₁₁ⱼλ₁ + I)⁻¹λ₁ᵀ (q₁ × q₁) the same for the whole group. The group's updates are
/// then D (Σ_c M_cc S_cc + Σ_{c<d} M_cd S_cd) D, with S_cc = Σⱼ A₂₁ⱼ[:, c]A₂₁ⱼ[:, c]ᵀ and
/// S_cd = Σⱼ (A₂₁ⱼ[:, c]A₂₁ⱼ[:, d]ᵀ + A₂₁ⱼ[:, d]A₂₁ⱼ[:, c]ᵀ) formed once: q₁(q₁+1)/2 dense
/// updates per θ instead of the group's Σⱼ nnzⱼ² scattered ones. Balanced designs (every
/// subject sees 100 items) have one group for a scalar first term; with a random condition
/// slope, each count of condition-B items is a candidate group, formed only where it pays
/// (see `Model::schur_groups`).
#[derive(Debug, Clone)]
pub(crate) struct SchurGroup {
    q: usize,
    /// A₁₁ⱼ, q₁ × q₁ column-major.
    a11: Vec<f64>,
    /// S_cd for c ≤ d in the order (0,0), (0,1), …, (0,q₁−1), (1,1), …: m × m, lower triangles.
    s: Vec<Mat<f64>>,
}

/// [`SchurGroup::s`] of the levels `levels` of the first term (q₁ = `q`): by dense products
/// where they cost less (see [`GROUP_GEMM_ADVANTAGE`]), else by scattered updates.
fn group_sums(q: usize, m: usize, levels: &[usize], ptr: &[usize], rows: &[usize], vals: &[f64]) -> Vec<Mat<f64>> {
    let n_mats = q * (q + 1) / 2;
    let mut s: Vec<Mat<f64>> = (0..n_mats).map(|_| Mat::<f64>::zeros(m, m)).collect();
    // The rest rows the group reaches, ascending, and each one's position among them.
    let mut local = vec![usize::MAX; m];
    let mut reached = Vec::new();
    for &j in levels {
        for &r in &rows[ptr[j]..ptr[j + 1]] {
            if local[r] == usize::MAX {
                local[r] = 0;
                reached.push(r);
            }
        }
    }
    reached.sort_unstable();
    for (i, &r) in reached.iter().enumerate() {
        local[r] = i;
    }
    let mg = reached.len();
    let scattered: f64 = levels
        .iter()
        .map(|&j| {
            let k = (ptr[j + 1] - ptr[j]) as f64;
            k * (k + 1.0) / 2.0
        })
        .sum();
    let dense = (mg * mg) as f64 * levels.len() as f64 / 2.0;
    if dense <= GROUP_GEMM_ADVANTAGE * scattered {
        group_sums_by_products(q, levels, ptr, rows, vals, &reached, &local, &mut s);
    } else {
        group_sums_scattered(q, levels, ptr, rows, vals, &mut s);
    }
    s
}

/// A dense product's multiply-add costs at most 1/this of a scattered update's. Measured on the
/// development machine (AMD EPYC, 2 cores; `DUMPED_NEW=30 cargo run --release --example
/// dumped_model`): a scattered update takes 3–4 ns, faer's lower-triangle product about
/// 0.05 ns a multiply-add. The whole crossproduct and analysis of `crossed_20k` (one group of
/// 250 levels, 55 of the 100 rest rows each) 3.2 → 2.3 ms, of the 200,000-row intercepts (one
/// group of 2,000 levels, 100 of 500 rows each; dense/scattered = 25) 55 → 42 ms.
const GROUP_GEMM_ADVANTAGE: f64 = 40.0;

/// Levels of a group per dense product (bounds the m_g × chunk matrices of their A₂₁ columns).
const GROUP_GEMM_CHUNK: usize = 256;

/// [`group_sums`] by scattered updates: each pair of a level's entries, one multiply-add each.
fn group_sums_scattered(q: usize, levels: &[usize], ptr: &[usize], rows: &[usize], vals: &[f64], s: &mut [Mat<f64>]) {
    for &j in levels {
        let (start, end) = (ptr[j], ptr[j + 1]);
        for eb in start..end {
            let vb = &vals[eb * q..(eb + 1) * q];
            let mut k = 0;
            for c in 0..q {
                for d in c..q {
                    let col = s[k].as_mut().col_mut(rows[eb]).try_as_col_major_mut().unwrap().as_slice_mut();
                    for ea in eb..end {
                        let va = &vals[ea * q..(ea + 1) * q];
                        col[rows[ea]] += if c == d { va[c] * vb[c] } else { va[c] * vb[d] + va[d] * vb[c] };
                    }
                    k += 1;
                }
            }
        }
    }
}

/// [`group_sums`] by dense products over the `reached` rest rows: with V_c the m_g × |chunk|
/// matrix of the levels' A₂₁ⱼ[:, c], S_cc += V_cV_cᵀ and S_cd += V_cV_dᵀ + V_dV_cᵀ (lower
/// triangles), then scattered into S's rows and columns `reached`.
#[allow(clippy::too_many_arguments)]
fn group_sums_by_products(
    q: usize,
    levels: &[usize],
    ptr: &[usize],
    rows: &[usize],
    vals: &[f64],
    reached: &[usize],
    local: &[usize],
    s: &mut [Mat<f64>],
) {
    use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
    let mg = reached.len();
    let n_mats = q * (q + 1) / 2;
    let mut sums: Vec<Mat<f64>> = (0..n_mats).map(|_| Mat::<f64>::zeros(mg, mg)).collect();
    let width = GROUP_GEMM_CHUNK.min(levels.len());
    let mut v: Vec<Mat<f64>> = (0..q).map(|_| Mat::<f64>::zeros(mg, width)).collect();
    for chunk in levels.chunks(GROUP_GEMM_CHUNK) {
        for vc in v.iter_mut() {
            vc.as_mut().subcols_mut(0, chunk.len()).fill(0.0);
        }
        for (col, &j) in chunk.iter().enumerate() {
            for e in ptr[j]..ptr[j + 1] {
                for (c, vc) in v.iter_mut().enumerate() {
                    vc[(local[rows[e]], col)] = vals[e * q + c];
                }
            }
        }
        let mut k = 0;
        for c in 0..q {
            for d in c..q {
                let (vc, vd) = (v[c].as_ref().subcols(0, chunk.len()), v[d].as_ref().subcols(0, chunk.len()));
                let lower = BlockStructure::TriangularLower;
                let full = BlockStructure::Rectangular;
                tri_matmul(sums[k].as_mut(), lower, Accum::Add, vc, full, vd.transpose(), full, 1.0, Par::Seq);
                if c != d {
                    tri_matmul(sums[k].as_mut(), lower, Accum::Add, vd, full, vc.transpose(), full, 1.0, Par::Seq);
                }
                k += 1;
            }
        }
    }
    for (target, sum) in s.iter_mut().zip(&sums) {
        for (b, &rb) in reached.iter().enumerate() {
            let col = target.as_mut().col_mut(rb).try_as_col_major_mut().unwrap().as_slice_mut();
            for (r, &rr) in reached.iter().enumerate().skip(b) {
                col[rr] += sum[(r, b)];
            }
        }
    }
}

/// Schur groups are formed for a first term of at most this many columns.
const MAX_SCHUR_GROUP_Q: usize = 3;

/// M = λ(λᵀAλ + I)⁻¹λᵀ of a Schur group, entries (c, d) for c ≤ d in [`SchurGroup::s`]'s
/// order, times `scale`. `None` where λᵀAλ + I has no Cholesky factor (the first block's
/// factorisation reports that pivot).
fn group_weights(a11: &[f64], lam: &[f64], q: usize, scale: f64, out: &mut [f64; 6]) -> Option<()> {
    if q == 1 {
        let l = lam[0];
        out[0] = l * l / (l * l * a11[0] + 1.0) * scale;
        return Some(());
    }
    let mut chol = [0.0f64; MAX_SCHUR_GROUP_Q * MAX_SCHUR_GROUP_Q];
    level_factor(a11, lam, q, &mut chol[..q * q]).ok()?;
    // W = L⁻¹λᵀ, column c from λᵀe_c; M = WᵀW.
    let (mut w, mut tmp) = ([0.0f64; MAX_SCHUR_GROUP_Q * MAX_SCHUR_GROUP_Q], [0.0f64; 64]);
    for c in 0..q {
        let col = &mut w[c * q..(c + 1) * q];
        col[c] = 1.0;
        apply_lambda_t_then_solve(col, lam, &chol[..q * q], q, &mut tmp);
    }
    let mut k = 0;
    for c in 0..q {
        for d in c..q {
            out[k] = (0..q).map(|r| w[c * q + r] * w[d * q + r]).sum::<f64>() * scale;
            k += 1;
        }
    }
    Some(())
}

/// From this size of the dense rest block on, its Schur columns are formed on rayon's threads
/// and its Cholesky factorisation and the solves with it use faer's rayon parallelism.
/// Measured on the 2-core development machine: faer's parallel Cholesky alone is 1.7× faster
/// from m = 2,000 on (`cargo run --release --example dense_cholesky`), and one objective of the
/// MovieLens-like model (m = 3,706) takes 0.49 s on two threads against 0.92–1.15 s on one
/// (docs/performance.md). Refits inside parallel workers are switched to `Par::Seq`.
pub(crate) const PARALLEL_REST_MIN: usize = 2048;

/// From this size of the rest block on, [`Model::estimates`] (once per fit: the dense L₂₂, its
/// inverse and the conditional covariances) runs on rayon's threads. Measured on InstEval
/// (m = 1,156) on the 2-core development machine: 31–33 ms on one thread, 21–26 ms on two.
pub(crate) const PARALLEL_ESTIMATES_MIN: usize = 512;

/// From this many multiply-adds per evaluation in the Schur complement's update (about a
/// millisecond of work) its columns are formed on rayon's two threads. Measured on the
/// development machine: InstEval (1.8 × 10⁶, sparse block) and the 200,000-row slopes model
/// (4 × 10⁷) gain; the balanced models whose levels share Schur groups stay below it.
pub(crate) const PARALLEL_SCHUR_MIN_WORK: f64 = 1e6;

/// At most this many Schur groups, and at most this many bytes for all of them.
const MAX_SCHUR_GROUPS: usize = 16;
const MAX_SCHUR_BYTES: u128 = 1 << 30;

/// The blocked lower Cholesky factor L(θ), overwritten in place for every θ.
#[derive(Debug, Clone)]
pub(crate) struct Factor {
    l11: Vec<f64>,
    l21_vals: Vec<f64>,
    l22: Mat<f64>,
    l31t: Mat<f64>,
    l32t: Mat<f64>,
    l33: Mat<f64>,
}

/// Where the rows of the "rest" block come from: for rest row r, the term index and the
/// position c of the row within its level group (rows of a level are contiguous).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RestRow {
    term: usize,
    c: usize,
}

/// Estimates at one θ.
#[derive(Debug, Clone)]
pub struct Estimates {
    pub theta: Vec<f64>,
    pub objective: f64,
    pub beta: Vec<f64>,
    pub sigma: f64,
    /// p × p, column-major.
    pub beta_cov: Vec<f64>,
    /// Per term, n_levels × q row-major: conditional modes b = Λu on the data scale.
    pub b: Vec<Vec<f64>>,
    /// Per term, n_levels blocks of q × q (column-major): σ² [Λ (ΛᵀZᵀZΛ + I)⁻¹ Λᵀ] blocks.
    pub b_cond_cov: Vec<Vec<f64>>,
    pub fitted: Vec<f64>,
    pub resid: Vec<f64>,
}

/// A linear mixed model: the data, its blocked crossproduct, and the factor workspace.
#[derive(Debug, Clone)]
pub struct Model {
    pub(crate) n: usize,
    pub(crate) p: usize,
    pub(crate) reml: bool,
    /// y, X, the terms and the crossproduct never change after construction: a clone (the
    /// second thread's model, see `optimize`) shares them.
    pub(crate) y: Arc<Vec<f64>>,
    /// n × p, column-major.
    pub(crate) x: Arc<Mat<f64>>,
    pub(crate) terms: Arc<Vec<Term>>,
    pub(crate) theta_offsets: Vec<usize>,
    pub(crate) n_theta: usize,
    /// Offset of each term k ≥ 1 within the rest block (unused for term 0).
    pub(crate) rest_offsets: Vec<usize>,
    /// The first rest row of each level of each term k ≥ 1 (empty for term 0): see
    /// [`rest_level_bases`].
    pub(crate) rest_base: Vec<Vec<usize>>,
    pub(crate) rest_rows: Vec<RestRow>,
    /// λ of each rest row when every rest term is scalar (workspace of `update_l`).
    pub(crate) rest_scale: Vec<f64>,
    pub(crate) m: usize,
    pub(crate) a: Arc<Crossprod>,
    pub(crate) l: Factor,
    /// λ_k, q_k × q_k column-major, for the θ last set.
    pub(crate) lambdas: Vec<Vec<f64>>,
    pub(crate) chol_buffer: Scratch,
    pub(crate) par: Par,
    /// √w per row for prior weights (lme4's `weights`): y, X and Z are stored multiplied by
    /// it, so every computation works on the weighted scale. `None`: unit weights.
    pub(crate) sqrt_w: Option<Vec<f64>>,
    /// log|W| = Σ log wᵢ, subtracted from the objective as lme4 does (0 without weights).
    pub(crate) log_det_w: f64,
    /// The rest block factored sparse for the objective, where that pays (see `sparse_rest`).
    pub(crate) sparse: Option<SparseRest>,
    /// q₁ × (p+1) workspace of one level's L₃₁ⱼ (the single-term objective and
    /// `subtract_l21_l31t`).
    pub(crate) level_work: Vec<f64>,
    /// L₃₂ᵀ row by row (m × (p+1)), the workspace of `subtract_l21_l31t`.
    l32_rows: Vec<f64>,
    /// Whether the Schur complement's columns are formed on rayon's threads: when its
    /// scattered update is large (see [`PARALLEL_SCHUR_MIN_WORK`]) or the rest block is.
    pub(crate) parallel_schur: bool,
    /// Whether [`Model::estimates`] runs on rayon's threads (see [`PARALLEL_ESTIMATES_MIN`]).
    pub(crate) parallel_estimates: bool,
}

/// Scratch memory for the dense Cholesky, sized once per model (cloning a model gives the
/// clone its own buffer, so parallel workers never share one).
pub(crate) struct Scratch {
    req: faer::dyn_stack::StackReq,
    buffer: MemBuffer,
}

impl Scratch {
    fn new(req: faer::dyn_stack::StackReq) -> Self {
        Scratch {
            req,
            buffer: MemBuffer::new(req),
        }
    }
}

impl Clone for Scratch {
    fn clone(&self) -> Self {
        Scratch::new(self.req)
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch").finish_non_exhaustive()
    }
}

impl Model {
    /// Forms the blocked crossproduct. `x` is n × p; `terms` in lme4's order. Copies y and x;
    /// [`Model::from_owned`] takes them.
    pub fn new(y: &[f64], x: MatRef<'_, f64>, terms: Vec<Term>, reml: bool) -> CoreResult<Self> {
        Model::from_owned(y.to_vec(), x.to_owned(), terms, reml)
    }

    /// [`Model::new`] on a response and fixed-effects matrix the model keeps: no copy of either
    /// (a copy of a large X costs more than its crossproduct).
    pub fn from_owned(y: Vec<f64>, x: Mat<f64>, terms: Vec<Term>, reml: bool) -> CoreResult<Self> {
        let n = y.len();
        let p = x.ncols();
        if x.nrows() != n {
            return Err(CoreError::DimensionMismatch {
                what: "rows of the fixed-effects model matrix".into(),
                expected: n,
                found: x.nrows(),
            });
        }
        if terms.is_empty() {
            return Err(CoreError::Unsupported {
                reason: "no random-effects term".into(),
            });
        }
        for (k, t) in terms.iter().enumerate() {
            if t.codes.len() != n {
                return Err(CoreError::DimensionMismatch {
                    what: format!("level codes of random-effects term {k}"),
                    expected: n,
                    found: t.codes.len(),
                });
            }
        }
        // y and X are checked for non-finite values once the crossproduct is formed (see
        // `check_finite`): a pass over X fewer before the threads start.
        if reml && n <= p {
            return Err(CoreError::Unsupported {
                reason: format!("REML needs more observations ({n}) than fixed effects ({p})"),
            });
        }

        // Before anything is sized by the level counts: from the raw boundary they can be absurd.
        let needed = Self::estimated_bytes(n, p, &terms);
        if let Some(limit) = available_memory_bytes() {
            if needed > limit {
                return Err(CoreError::TooLarge {
                    bytes: needed,
                    limit,
                });
            }
        }

        let mut theta_offsets = Vec::with_capacity(terms.len());
        let mut n_theta = 0;
        for t in &terms {
            theta_offsets.push(n_theta);
            n_theta += t.n_theta();
        }
        let mut rest_offsets = vec![0usize; terms.len()];
        let mut rest_rows = Vec::new();
        for (k, t) in terms.iter().enumerate().skip(1) {
            rest_offsets[k] = rest_rows.len();
            for _level in 0..t.n_levels {
                for c in 0..t.q {
                    rest_rows.push(RestRow { term: k, c });
                }
            }
        }
        let m = rest_rows.len();
        let rest_base = rest_level_bases(&terms, &rest_offsets);

        // The sparse analysis of the rest block needs only the level codes: on the second
        // thread while the crossproduct is formed (InstEval: 13 and 15 ms).
        let sparse_candidate = m >= SPARSE_REST_MIN && terms.iter().skip(1).all(|t| t.q == 1);
        let q1 = terms[0].q;
        // The factor's storage that does not depend on the crossproduct's values, allocated
        // (and its pages faulted in) beside the crossproduct where there is a second task.
        let storage = || Storage {
            l31t: Mat::zeros(q1 * terms[0].n_levels, p + 1),
            l32t: Mat::zeros(m, p + 1),
            l32_rows: vec![0.0; m * (p + 1)],
            chol_buffer: Scratch::new(cholesky_in_place_scratch::<f64>(m.max(p + 1), Par::rayon(0), Spec::<LltParams, f64>::default())),
        };
        // Whichever task finishes first allocates it: inside a fit the crossproduct is the longer
        // one for InstEval REML (after a fit's memory was freed: 22–29 ms against the analysis's
        // 19–21 ms, [X y] having 30 columns), the analysis for ML (3 columns, three terms).
        let claimed = AtomicBool::new(false);
        let slot: Mutex<Option<Storage>> = Mutex::new(None);
        let claim = || {
            if !claimed.swap(true, Ordering::AcqRel) {
                let made = storage();
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(made);
            }
        };
        let analyse = || {
            let (ptr, rows) = level_rest_rows(&terms, &rest_base, m);
            let sparse = Self::rest_pattern(&terms, &ptr, &rows, &rest_base, m)
                .and_then(|pattern| SparseRest::analyse(m, p + 1, pattern))
                .map(|analysis| {
                    let (a22_pattern, a22_vals) = a22_lower(&terms, &rest_base, m);
                    SparseRest::from_analysis(analysis, p + 1, a22_pattern, a22_vals)
                });
            claim();
            sparse
        };
        let (a, sparse) = if sparse_candidate {
            rayon::join(
                || {
                    let a = Self::crossprod(&y, x.as_ref(), &terms, &rest_base, m, false);
                    claim();
                    a
                },
                analyse,
            )
        } else {
            (Self::crossprod(&y, x.as_ref(), &terms, &rest_base, m, true), None)
        };
        let storage = slot.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(storage);
        check_finite(&y, x.as_ref(), &a.a33)?;
        if sparse.is_none() && a.a22.get().is_none() {
            // The pattern did not pay: the dense rest block needs A₂₂ at every evaluation.
            let _ = a.a22.set(a22_dense(&terms, &rest_base, m));
        }
        let Storage {
            l31t,
            l32t,
            l32_rows,
            chol_buffer,
        } = storage;
        let l = Factor {
            l11: vec![0.0; a.a11.len()],
            l21_vals: vec![0.0; a.a21_vals.len()],
            // m × m on its first dense factorisation (see `update_l_with`).
            l22: Mat::zeros(0, 0),
            l31t,
            l32t,
            l33: Mat::zeros(p + 1, p + 1),
        };
        let par = if m >= PARALLEL_REST_MIN { Par::rayon(0) } else { Par::Seq };
        let parallel_schur = Self::schur_work(&a, q1, m) >= PARALLEL_SCHUR_MIN_WORK || m >= PARALLEL_REST_MIN;
        let lambdas = terms.iter().map(|t| vec![0.0; t.q * t.q]).collect();
        Ok(Model {
            n,
            p,
            reml,
            y: Arc::new(y),
            x: Arc::new(x),
            terms: Arc::new(terms),
            theta_offsets,
            n_theta,
            rest_offsets,
            rest_base,
            rest_scale: vec![0.0; m],
            rest_rows,
            m,
            a: Arc::new(a),
            l,
            lambdas,
            chol_buffer,
            par,
            sqrt_w: None,
            log_det_w: 0.0,
            sparse,
            level_work: vec![0.0; q1 * (p + 1)],
            l32_rows,
            parallel_schur,
            parallel_estimates: m >= PARALLEL_ESTIMATES_MIN,
        })
    }

    /// A model with prior weights: observation i has residual variance σ²/wᵢ (lme4's
    /// `weights`). Rows of y, X and Z are scaled by √wᵢ and the objective gains −log|W|, so the
    /// criterion, σ, β and its covariance are lme4's; fitted values and residuals are reported
    /// on the original scale.
    pub fn with_weights(y: &[f64], x: MatRef<'_, f64>, mut terms: Vec<Term>, reml: bool, weights: &[f64]) -> CoreResult<Self> {
        let n = y.len();
        if weights.len() != n {
            return Err(CoreError::DimensionMismatch {
                what: "length of the weights".into(),
                expected: n,
                found: weights.len(),
            });
        }
        if let Some(i) = weights.iter().position(|w| !(w.is_finite() && *w > 0.0)) {
            return Err(CoreError::NonFinite {
                what: "the weights (each must be finite and positive)".into(),
                index: i,
            });
        }
        if x.nrows() != n || terms.iter().any(|t| t.codes.len() != n || t.z.len() != n * t.q) {
            // Model::new names the mismatch.
            return Model::new(y, x, terms, reml);
        }
        let sqrt_w: Vec<f64> = weights.iter().map(|w| w.sqrt()).collect();
        let ys: Vec<f64> = y.iter().zip(&sqrt_w).map(|(v, s)| v * s).collect();
        let xs = Mat::<f64>::from_fn(n, x.ncols(), |i, j| x[(i, j)] * sqrt_w[i]);
        for t in &mut terms {
            for (row, s) in t.z.chunks_exact_mut(t.q).zip(&sqrt_w) {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        let mut model = Model::from_owned(ys, xs, terms, reml)?;
        model.set_sqrt_weights(sqrt_w);
        Ok(model)
    }

    /// Sequential dense kernels, for models refitted inside parallel workers (case deletion,
    /// bootstrap), which already use every core.
    pub(crate) fn set_sequential(&mut self) {
        self.par = Par::Seq;
        self.parallel_schur = false;
        self.parallel_estimates = false;
    }

    /// Records √w for data already stored on the weighted scale.
    pub(crate) fn set_sqrt_weights(&mut self, sqrt_w: Vec<f64>) {
        self.log_det_w = sqrt_w.iter().map(|s| 2.0 * s.ln()).sum();
        self.sqrt_w = Some(sqrt_w);
    }

    /// Values on the weighted scale (√wᵢ·vᵢ) back to the original scale, in place.
    pub(crate) fn unweight(&self, values: &mut [f64]) {
        if let Some(sqrt_w) = &self.sqrt_w {
            values.iter_mut().zip(sqrt_w).for_each(|(v, s)| *v /= s);
        }
    }

    /// Bytes the model will hold: the data copy, the crossproduct and the factor. The dense rest
    /// block (two m × m matrices, A₂₂ and L₂₂, plus L₂₂⁻¹ when estimates are formed) dominates
    /// for large crossed designs. Counted in floating point so that absurd level counts give a
    /// huge estimate (saturating in the conversion), not an integer overflow.
    pub fn estimated_bytes(n: usize, p: usize, terms: &[Term]) -> u128 {
        let (n, p) = (n as f64, p as f64);
        let q_sum: f64 = terms.iter().map(|t| t.q as f64).sum();
        let lambdas: f64 = terms.iter().map(|t| t.q as f64 * t.q as f64).sum();
        let first = terms.first().map_or(0.0, |t| t.q as f64 * t.q as f64 * t.n_levels as f64);
        let m: f64 = terms.iter().skip(1).map(|t| t.n_levels as f64 * t.q as f64).sum();
        let a21_upper_bound = n * q_sum * q_sum; // at most one entry per observation and pair
        let doubles = n * (p + 1.0) // y and X
            + n * q_sum // term model matrices
            + lambdas // the λ templates
            + 2.0 * first // A₁₁ and L₁₁
            + 2.0 * a21_upper_bound // A₂₁ and L₂₁ (values)
            + 2.0 * m // the (term, column) label of each rest row
            + 3.0 * m * m // A₂₂, L₂₂, and L₂₂⁻¹ for the conditional variances
            + 2.0 * (m + first) * (p + 1.0) // A₃₁, A₃₂ and their factors
            + m * (p + 1.0); // L₃₂ᵀ by rows (the workspace of its update)
        (doubles * 8.0 + n * 4.0 * terms.len() as f64) as u128
    }

    /// Multiply-adds of one Schur complement update: q₁² per pair of entries in a level's
    /// block column (levels outside the Schur groups), and m(m+1)/2 per dense update of a
    /// group (q₁(q₁+1)/2 of them).
    fn schur_work(a: &Crossprod, q1: usize, m: usize) -> f64 {
        let pairs: f64 = (0..m)
            .map(|b| {
                a.a21_by_row[a.a21_row_ptr[b]..a.a21_row_ptr[b + 1]]
                    .iter()
                    .map(|&e| (a.a21_block_end[e] - e) as f64)
                    .sum::<f64>()
            })
            .sum();
        let group_updates: usize = a.schur_groups.iter().map(|g| g.s.len()).sum();
        pairs * (q1 * q1) as f64 + group_updates as f64 * (m * (m + 1) / 2) as f64
    }

    /// The structural pattern of the Schur complement S of the rest block (scalar rest terms):
    /// rest rows b ≤ r are linked where they share an observation (A₂₂) or a level of term 1
    /// (Σⱼ a₂₁ⱼa₂₁ⱼᵀ, Schur-grouped levels included). Built from the level codes, never from
    /// values, so a sum that cancels to zero cannot drop an entry.
    fn rest_pattern(terms: &[Term], a21_ptr: &[usize], a21_rows: &[usize], rest_base: &[Vec<usize>], m: usize) -> Option<Pattern> {
        let l1 = terms[0].n_levels;
        // Every entry of A₂₁ by rest row, and the end of each entry's block column.
        let mut row_ptr = vec![0usize; m + 1];
        for &r in a21_rows {
            row_ptr[r + 1] += 1;
        }
        for r in 0..m {
            row_ptr[r + 1] += row_ptr[r];
        }
        let mut fill = row_ptr.clone();
        let mut by_row = vec![0usize; a21_rows.len()];
        let mut block_end = vec![0usize; a21_rows.len()];
        for j in 0..l1 {
            for e in a21_ptr[j]..a21_ptr[j + 1] {
                let r = a21_rows[e];
                by_row[fill[r]] = e;
                fill[r] += 1;
                block_end[e] = a21_ptr[j + 1];
            }
        }
        // The fill of every (m/64)-th column first: a pattern that is clearly fuller than the
        // analysis takes (MovieLens-like items: nearly dense) is refused without listing its
        // Σⱼ nnzⱼ² candidate entries (a third of a second there).
        let step = (m / 64).max(1);
        let mut stamp = vec![usize::MAX; m];
        let (mut sampled, mut seen) = (0usize, 0usize);
        for b in (0..m).step_by(step) {
            sampled += 1;
            seen += 1;
            stamp[b] = b;
            for &e in &by_row[row_ptr[b]..row_ptr[b + 1]] {
                for &r in &a21_rows[e..block_end[e]] {
                    if stamp[r] != b {
                        stamp[r] = b;
                        seen += 1;
                    }
                }
            }
        }
        let lower_triangle = m as f64 * (m as f64 + 1.0) / 2.0;
        if seen as f64 * m as f64 / sampled as f64 > MAX_PATTERN_FILL * lower_triangle {
            return None;
        }
        // Off-diagonal links of A₂₂: pairs of rest terms in one observation, listed by their
        // smaller row (a counting sort; Pattern::build drops the repeats).
        let mut link_ptr = vec![0usize; m + 1];
        let mut links: Vec<usize> = Vec::new();
        if terms.len() > 2 {
            let n = terms[0].codes.len();
            let each_pair = |f: &mut dyn FnMut(usize, usize)| {
                for i in 0..n {
                    for k in 1..terms.len() {
                        let rk = rest_base[k][terms[k].codes[i] as usize];
                        for h in k + 1..terms.len() {
                            let rh = rest_base[h][terms[h].codes[i] as usize];
                            f(rk.min(rh), rk.max(rh));
                        }
                    }
                }
            };
            each_pair(&mut |lo, _| link_ptr[lo + 1] += 1);
            for r in 0..m {
                link_ptr[r + 1] += link_ptr[r];
            }
            let mut next = link_ptr.clone();
            links = vec![0; link_ptr[m]];
            each_pair(&mut |lo, hi| {
                links[next[lo]] = hi;
                next[lo] += 1;
            });
        }
        Pattern::build(m, |b, rows| {
            rows.extend_from_slice(&links[link_ptr[b]..link_ptr[b + 1]]);
            for &e in &by_row[row_ptr[b]..row_ptr[b + 1]] {
                rows.extend_from_slice(&a21_rows[e..block_end[e]]);
            }
        })
    }

    /// The levels of the first term grouped by the bits of A₁₁ⱼ (see [`SchurGroup`]), for a first
    /// term of at most [`MAX_SCHUR_GROUP_Q`] columns and scalar rest terms. A group is formed
    /// where its levels' scattered updates (q₁ multiply-adds for each of the Σⱼ nnzⱼ(nnzⱼ+1)/2
    /// pairs) cost at least twice its q₁(q₁+1)/2 dense ones (m(m+1)/2 each) for a scalar first
    /// term, eight times for a wider one: the most profitable first, within
    /// [`MAX_SCHUR_GROUPS`] and [`MAX_SCHUR_BYTES`]. The dense updates stream their matrices
    /// from memory at every evaluation. Measured on the development machine: the 200,000-row
    /// slopes model's groups (57–201 subjects per count of condition-B items, ratios up to 2.7)
    /// saved under 5 % of an evaluation and took 100 ms to form; the same design
    /// counterbalanced (one group, ratio 54) evaluates 2.4× faster. The scalar MovieLens-like
    /// model's one group (13 users, ratio 3.2) saves more than it costs.
    fn schur_groups(terms: &[Term], a11: &[f64], ptr: &[usize], rows: &[usize], vals: &[f64], m: usize) -> Vec<SchurGroup> {
        let q = terms[0].q;
        if q > MAX_SCHUR_GROUP_Q || terms.iter().skip(1).any(|t| t.q != 1) || m == 0 {
            return Vec::new();
        }
        let n_mats = q * (q + 1) / 2;
        let mut by_value: std::collections::HashMap<Vec<u64>, Vec<usize>> = std::collections::HashMap::new();
        for (j, block) in a11.chunks_exact(q * q).enumerate() {
            by_value.entry(block.iter().map(|v| v.to_bits()).collect()).or_default().push(j);
        }
        let dense = (n_mats * m * (m + 1) / 2) as f64;
        let min_ratio = if q == 1 { 2.0 } else { 8.0 };
        let mut candidates: Vec<(f64, usize, Vec<usize>)> = by_value
            .into_values()
            .filter_map(|levels| {
                let direct: f64 = levels
                    .iter()
                    .map(|&j| {
                        let k = (ptr[j + 1] - ptr[j]) as f64;
                        k * (k + 1.0) / 2.0 * q as f64
                    })
                    .sum();
                (direct >= min_ratio * dense).then_some((direct - dense, levels[0], levels))
            })
            .collect();
        // The most profitable first; equal gains by their first level, so the choice is the
        // same in every run.
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let per_group = (n_mats as u128) * (m as u128) * (m as u128) * 8;
        let budget = available_memory_bytes().map_or(MAX_SCHUR_BYTES, |a| (a / 4).min(MAX_SCHUR_BYTES));
        let n_groups = candidates.len().min(MAX_SCHUR_GROUPS).min((budget / per_group.max(1)) as usize);
        candidates
            .into_iter()
            .take(n_groups)
            .map(|(_, first, levels)| SchurGroup {
                q,
                a11: a11[first * q * q..(first + 1) * q * q].to_vec(),
                s: group_sums(q, m, &levels, ptr, rows, vals),
            })
            .collect()
    }

    fn crossprod(y: &[f64], x: MatRef<'_, f64>, terms: &[Term], rest_base: &[Vec<usize>], m: usize, dense_a22: bool) -> Crossprod {
        let n = y.len();
        let p = x.ncols();
        let t1 = &terms[0];
        let (q1, l1) = (t1.q, t1.n_levels);

        let mut a11 = vec![0.0; l1 * q1 * q1];
        for i in 0..n {
            let j = t1.codes[i] as usize;
            let z = t1.z_row(i);
            let blk = &mut a11[j * q1 * q1..(j + 1) * q1 * q1];
            for c2 in 0..q1 {
                for c1 in 0..q1 {
                    blk[c2 * q1 + c1] += z[c1] * z[c2];
                }
            }
        }
        let (a31t, a32t, xty) = z_cross_xy(y, x, terms, rest_base, m);

        // Observations grouped by level of term 1 (counting sort), for the sparse A₂₁.
        let mut count = vec![0usize; l1 + 1];
        for &c in &t1.codes {
            count[c as usize + 1] += 1;
        }
        for j in 0..l1 {
            count[j + 1] += count[j];
        }
        let mut order = vec![0usize; n];
        let mut next = count.clone();
        for i in 0..n {
            let j = t1.codes[i] as usize;
            order[next[j]] = i;
            next[j] += 1;
        }

        let mut a21_ptr = vec![0usize; l1 + 1];
        let mut a21_rows = Vec::new();
        let mut a21_vals = Vec::new();
        let mut a21_row_ptr = vec![0usize; m + 1];
        let mut a21_by_row = Vec::new();
        let mut a21_block_end = Vec::new();
        let mut schur_run_ptr = vec![0usize];
        let mut schur_runs: Vec<(usize, usize, usize)> = Vec::new();
        let mut schur_groups = Vec::new();
        let a22 = std::sync::OnceLock::new();
        if dense_a22 {
            let _ = a22.set(a22_dense(terms, rest_base, m));
        }
        if m > 0 {
            // slot[r] = position of rest row r in the current level's row list, or usize::MAX.
            let mut slot = vec![usize::MAX; m];
            let mut touched: Vec<usize> = Vec::new();
            let mut acc: Vec<f64> = Vec::new();
            for j in 0..l1 {
                touched.clear();
                acc.clear();
                for &i in &order[count[j]..count[j + 1]] {
                    let z1 = t1.z_row(i);
                    for (k, t) in terms.iter().enumerate().skip(1) {
                        let base = rest_base[k][t.codes[i] as usize];
                        if slot[base] == usize::MAX {
                            for c in 0..t.q {
                                slot[base + c] = touched.len();
                                touched.push(base + c);
                                acc.extend(std::iter::repeat_n(0.0, q1));
                            }
                        }
                        let zk = t.z_row(i);
                        for c in 0..t.q {
                            let s = slot[base + c];
                            for c1 in 0..q1 {
                                acc[s * q1 + c1] += zk[c] * z1[c1];
                            }
                        }
                    }
                }
                // Store rows ascending (whole level groups stay contiguous).
                let mut idx: Vec<usize> = (0..touched.len()).collect();
                idx.sort_unstable_by_key(|&s| touched[s]);
                for &s in &idx {
                    a21_rows.push(touched[s]);
                    a21_vals.extend_from_slice(&acc[s * q1..(s + 1) * q1]);
                }
                for &r in &touched {
                    slot[r] = usize::MAX;
                }
                a21_ptr[j + 1] = a21_rows.len();
            }
            a21_block_end.resize(a21_rows.len(), 0);

            for j in 0..l1 {
                for e in a21_ptr[j]..a21_ptr[j + 1] {
                    a21_block_end[e] = a21_ptr[j + 1];
                }
            }
            schur_groups = Self::schur_groups(terms, &a11, &a21_ptr, &a21_rows, &a21_vals, m);
            let grouped: Vec<bool> = {
                let mut g = vec![false; l1];
                for (j, flag) in g.iter_mut().enumerate() {
                    let block = &a11[j * q1 * q1..(j + 1) * q1 * q1];
                    *flag = schur_groups
                        .iter()
                        .any(|group| group.a11.iter().zip(block).all(|(g, v)| g.to_bits() == v.to_bits()));
                }
                g
            };
            for j in (0..l1).filter(|&j| !grouped[j]) {
                for &r in &a21_rows[a21_ptr[j]..a21_ptr[j + 1]] {
                    a21_row_ptr[r + 1] += 1;
                }
            }
            for r in 0..m {
                a21_row_ptr[r + 1] += a21_row_ptr[r];
            }
            let mut fill = a21_row_ptr.clone();
            a21_by_row.resize(a21_row_ptr[m], 0);
            for j in (0..l1).filter(|&j| !grouped[j]) {
                for e in a21_ptr[j]..a21_ptr[j + 1] {
                    let r = a21_rows[e];
                    a21_by_row[fill[r]] = e;
                    fill[r] += 1;
                }
            }
            let mut entries = Vec::new();
            for b0 in (0..m).step_by(SCHUR_PANEL) {
                let b1 = (b0 + SCHUR_PANEL).min(m);
                entries.clear();
                entries.extend_from_slice(&a21_by_row[a21_row_ptr[b0]..a21_row_ptr[b1]]);
                entries.sort_unstable();
                let panel_start = schur_runs.len();
                for &e in &entries {
                    // A run continues while its entries are consecutive in one block column.
                    let extends = schur_runs.len() > panel_start
                        && schur_runs.last().is_some_and(|&(_, stop, end)| stop == e && end == a21_block_end[e]);
                    if extends {
                        schur_runs.last_mut().unwrap().1 = e + 1;
                    } else {
                        schur_runs.push((e, e + 1, a21_block_end[e]));
                    }
                }
                schur_run_ptr.push(schur_runs.len());
            }

        }

        let mut a33 = Mat::<f64>::zeros(p + 1, p + 1);
        matmul(a33.as_mut().get_mut(..p, ..p), Accum::Replace, x.transpose(), x, 1.0, Par::Seq);
        for (t, &s) in xty.iter().enumerate() {
            a33[(p, t)] = s;
            a33[(t, p)] = s;
        }

        Crossprod {
            a11,
            a21_ptr,
            a21_rows,
            a21_vals,
            a21_row_ptr,
            a21_by_row,
            a21_block_end,
            schur_run_ptr,
            schur_runs,
            schur_groups,
            a22,
            a31t,
            a32t,
            a33,
        }
    }

    /// The same model with the response replaced by `y`, given on the model's weighted scale
    /// (√wᵢ·yᵢ; the original scale without weights) (lme4's `refit(object, newresp)`): a
    /// clone in which only the crossproduct entries that involve y are recomputed — the last
    /// column of A₃₁ᵀ = Z₁ᵀ[X y] and of A₃₂ᵀ = Z_restᵀ[X y], and the last row and column of
    /// A₃₃ = [X y]ᵀ[X y]. The factor is left as it was; `update_l` overwrites it.
    pub fn with_response(&self, y: &[f64]) -> CoreResult<Model> {
        if y.len() != self.n {
            return Err(CoreError::DimensionMismatch {
                what: "length of the new response".into(),
                expected: self.n,
                found: y.len(),
            });
        }
        if let Some(i) = y.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::NonFinite {
                what: "the new response".into(),
                index: i,
            });
        }
        let mut out = self.clone();
        Arc::make_mut(&mut out.y).copy_from_slice(y);
        let p = self.p;
        let a = Arc::make_mut(&mut out.a);
        let t1 = &self.terms[0];
        let q1 = t1.q;
        for r in 0..a.a31t.nrows() {
            a.a31t[(r, p)] = 0.0;
        }
        for r in 0..a.a32t.nrows() {
            a.a32t[(r, p)] = 0.0;
        }
        let mut xty = vec![0.0; p];
        let mut yty = 0.0;
        for i in 0..self.n {
            let v = y[i];
            let j = t1.codes[i] as usize;
            let z = t1.z_row(i);
            for c in 0..q1 {
                a.a31t[(j * q1 + c, p)] += z[c] * v;
            }
            for (k, tk) in self.terms.iter().enumerate().skip(1) {
                let base = self.rest_base[k][tk.codes[i] as usize];
                let zk = tk.z_row(i);
                for c in 0..tk.q {
                    a.a32t[(base + c, p)] += zk[c] * v;
                }
            }
            for (t, s) in xty.iter_mut().enumerate() {
                *s += self.x[(i, t)] * v;
            }
            yty += v * v;
        }
        for (t, &s) in xty.iter().enumerate() {
            a.a33[(p, t)] = s;
            a.a33[(t, p)] = s;
        }
        a.a33[(p, p)] = yty;
        Ok(out)
    }

    pub fn n_obs(&self) -> usize {
        self.n
    }

    pub fn n_fixed(&self) -> usize {
        self.p
    }

    pub fn n_theta(&self) -> usize {
        self.n_theta
    }

    pub fn reml(&self) -> bool {
        self.reml
    }

    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// Lower bounds of θ: 0 on the diagonal of each λ_k, −∞ elsewhere.
    pub fn lower_bounds(&self) -> Vec<f64> {
        let mut lb = Vec::with_capacity(self.n_theta);
        for t in self.terms.iter() {
            for col in 0..t.q {
                for row in col..t.q {
                    lb.push(if row == col { 0.0 } else { f64::NEG_INFINITY });
                }
            }
        }
        lb
    }

    /// lme4's starting values: 1 on the diagonal of each λ_k, 0 elsewhere.
    pub fn theta_start(&self) -> Vec<f64> {
        self.lower_bounds()
            .iter()
            .map(|&b| if b == 0.0 { 1.0 } else { 0.0 })
            .collect()
    }

    fn set_theta(&mut self, theta: &[f64]) -> CoreResult<()> {
        if theta.len() != self.n_theta {
            return Err(CoreError::InvalidTheta {
                reason: format!("expected {} values, found {}", self.n_theta, theta.len()),
            });
        }
        if let Some(i) = theta.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::InvalidTheta {
                reason: format!("theta[{i}] is not finite"),
            });
        }
        for (k, t) in self.terms.iter().enumerate() {
            let off = self.theta_offsets[k];
            theta_to_lambda(&theta[off..off + t.n_theta()], t.q, &mut self.lambdas[k]);
        }
        Ok(())
    }

    /// Updates L(θ) in place (no allocation).
    pub fn update_l(&mut self, theta: &[f64]) -> CoreResult<()> {
        self.update_l_with(theta, false).map(|_| ())
    }

    /// Updates L(θ) in place; with `use_sparse` (the objective only) and a sparse plan (see
    /// [`SparseRest`]) the rest block is factored sparse instead, leaving L₂₂ and L₃₂ stale and
    /// returning log|L₂₂|²; with `use_sparse` and a single term, L₃₁ is not stored, and with
    /// q ≤ 2 neither is L₁₁ (log|L₁₁|² is returned instead).
    /// Forms the dense A₂₂ if it has not been: the rest block's dense path reads it.
    fn ensure_dense_a22(&self) {
        self.a.a22.get_or_init(|| a22_dense(&self.terms, &self.rest_base, self.m));
    }

    fn update_l_with(&mut self, theta: &[f64], use_sparse: bool) -> CoreResult<Logdets> {
        self.set_theta(theta)?;
        if self.m > 0 && !(use_sparse && self.sparse.is_some()) {
            self.ensure_dense_a22();
        }
        let mut rest_logdet = None;
        let p1 = self.p + 1;
        let t1 = &self.terms[0];
        let (q1, l1) = (t1.q, t1.n_levels);
        let lam1 = &self.lambdas[0];
        let a = &self.a;
        let l = &mut self.l;

        if use_sparse && self.m == 0 {
            // One term, objective only: L₃₃L₃₃ᵀ = A₃₃ − Σⱼ L₃₁ⱼL₃₁ⱼᵀ accumulated level by level,
            // without storing L₃₁ (one pass over A₁₁ and A₃₁ instead of three).
            l.l33.as_mut().copy_from(a.a33.as_ref());
            if q1 <= 2 && p1 <= LDL_MAX_P1 {
                let first = match q1 {
                    1 => fused_ldl::<1>(a, lam1, l1, p1, &mut l.l33),
                    _ => fused_ldl::<2>(a, lam1, l1, p1, &mut l.l33),
                };
                if let Some(first) = first {
                    return self.factor_l33(Logdets { first: Some(first), rest: None });
                }
                // A pivot that is not finite and positive: the Cholesky pass below names it.
                l.l33.as_mut().copy_from(a.a33.as_ref());
            }
            let (w, l11, l33) = (&mut self.level_work, &mut l.l11, &mut l.l33);
            match q1 {
                1 => fused_single_term::<1>(a, lam1, 1, l1, p1, l11, w, l33),
                2 => fused_single_term::<2>(a, lam1, 2, l1, p1, l11, w, l33),
                3 => fused_single_term::<3>(a, lam1, 3, l1, p1, l11, w, l33),
                _ => fused_single_term::<0>(a, lam1, q1, l1, p1, l11, w, l33),
            }?;
            return self.factor_l33(Logdets::default());
        }

        // L₁₁: per level, chol(λ₁ᵀ A₁₁ⱼ λ₁ + I).
        for j in 0..l1 {
            level_factor(&a.a11[j * q1 * q1..(j + 1) * q1 * q1], lam1, q1, &mut l.l11[j * q1 * q1..(j + 1) * q1 * q1])
                .map_err(|pivot| CoreError::NotPositiveDefinite {
                    block: "first random-effects".into(),
                    pivot: j * q1 + pivot,
                })?;
        }

        // L₃₁ᵀ blocks: L₁₁ⱼ⁻¹ λ₁ᵀ A₃₁ⱼᵀ, one column of [X y] at a time (a pass over the levels
        // per column; each entry's arithmetic is the same as level by level). A scalar first
        // term is a multiply and a divide per entry: InstEval REML's 29 columns took 0.41 ms
        // level by level.
        l.l31t.as_mut().copy_from(a.a31t.as_ref());
        let mut v = [0.0f64; 64];
        for t in 0..p1 {
            let col = l.l31t.as_mut().col_mut(t).try_as_col_major_mut().unwrap().as_slice_mut();
            if q1 == 1 {
                let lam = lam1[0];
                for (x, &d) in col.iter_mut().zip(&l.l11) {
                    *x = (lam * *x) / d;
                }
            } else {
                for (seg, lj) in col.chunks_exact_mut(q1).zip(l.l11.chunks_exact(q1 * q1)) {
                    apply_lambda_t_then_solve(seg, lam1, lj, q1, &mut v);
                }
            }
        }

        let m = self.m;
        if m > 0 {
            // L₂₁ rows: (Λ_restᵀ A₂₁ⱼ λ₁) L₁₁ⱼ⁻ᵀ.
            let all_scalar = self.terms.iter().skip(1).all(|t| t.q == 1);
            if all_scalar {
                for (sc, r) in self.rest_scale.iter_mut().zip(&self.rest_rows) {
                    *sc = self.lambdas[r.term][0];
                }
                let (l21, l11, scale) = (&mut l.l21_vals, &l.l11, &self.rest_scale);
                match q1 {
                    1 => scalar_rest_l21::<1>(a, lam1, 1, l11, scale, l21),
                    2 => scalar_rest_l21::<2>(a, lam1, 2, l11, scale, l21),
                    3 => scalar_rest_l21::<3>(a, lam1, 3, l11, scale, l21),
                    _ => scalar_rest_l21::<0>(a, lam1, q1, l11, scale, l21),
                }
            } else {
                l.l21_vals.copy_from_slice(&a.a21_vals);
                for j in 0..l1 {
                    let (s, e) = (a.a21_ptr[j], a.a21_ptr[j + 1]);
                    let rows = &a.a21_rows[s..e];
                    let vals = &mut l.l21_vals[s * q1..e * q1];
                    mix_rest_rows(vals, rows, q1, &self.rest_rows, &self.lambdas, &self.terms);
                    let lj = &l.l11[j * q1 * q1..(j + 1) * q1 * q1];
                    for r in 0..rows.len() {
                        apply_lambda_t_then_solve(&mut vals[r * q1..(r + 1) * q1], lam1, lj, q1, &mut v);
                    }
                }
            }

            // S = Λ_restᵀ A₂₂ Λ_rest + I − Σⱼ L₂₁ⱼ L₂₁ⱼᵀ, lower triangle only (all the Cholesky
            // reads), then L₂₂ = chol(S). Built one column of S at a time so the scattered
            // updates of the Schur complement land in a column that stays in cache.
            let sparse_rest = use_sparse && all_scalar && self.sparse.is_some();
            if !sparse_rest && l.l22.nrows() != m {
                // The dense L₂₂ is allocated by its first use: a model whose objective factors
                // the rest block sparse needs it only for the conditional covariances.
                l.l22 = Mat::zeros(m, m);
            }
            if !all_scalar {
                l.l22.as_mut().copy_from(a.dense_a22());
                scale_rest_sym(&mut l.l22, &self.rest_rows, &self.rest_offsets, &self.lambdas, &self.terms);
            }
            let scale = &self.rest_scale;
            let sparse_rest = if sparse_rest { self.sparse.as_mut() } else { None };
            let (rows, level) = (&mut self.l32_rows, &mut self.level_work);
            let mix: RestMix<'_> = (&self.rest_rows, &self.rest_offsets, &self.lambdas, &self.terms);
            let mut c_formed = false;
            if let Some(sp) = sparse_rest {
                // C = L₃₂ᵀ before the solve (independent of S) is formed as one more task of
                // S's run on two threads, taken by whichever thread is free. On one thread it
                // waits for the factor: formed inside the fill's run there, the scattered updates
                // of C ran at half speed (InstEval REML: 2.1 against 1.2 ms, measured while the
                // fill also wrote S into the cut's arena).
                let beside = self.parallel_schur && rayon::current_num_threads() >= 2;
                let (l21_vals, l31t, l32t) = (&l.l21_vals, &l.l31t, &mut l.l32t);
                let (rows, level) = (&mut **rows, &mut **level);
                let c_job = std::sync::Mutex::new(
                    beside.then_some(move || form_c(a, l21_vals, l31t, l32t, mix, q1, p1, rows, level)),
                );
                sp.fill(
                    scale,
                    self.parallel_schur,
                    SCHUR_PANEL,
                    |k, panel| schur_panel(a, l21_vals, scale, lam1, q1, false, k, panel),
                    || {
                        if let Some(mut job) = c_job.lock().unwrap_or_else(|e| e.into_inner()).take() {
                            job();
                        }
                    },
                );
                c_formed = beside && c_job.into_inner().unwrap_or_else(|e| e.into_inner()).is_none();
                sp.factor(self.parallel_schur).map_err(|pivot| CoreError::NotPositiveDefinite {
                    block: "random-effects".into(),
                    pivot,
                })?;
                rest_logdet = Some(sp.logdet);
            } else {
                let l21_vals = &l.l21_vals;
                if matches!(self.par, Par::Rayon(_)) || self.parallel_schur {
                    // Panels are independent: on rayon's threads.
                    use rayon::prelude::*;
                    l.l22.as_mut().par_col_chunks_mut(SCHUR_PANEL).enumerate().for_each(|(k, panel)| {
                        schur_panel(a, l21_vals, scale, lam1, q1, all_scalar, k, panel);
                    });
                } else {
                    for (k, b0) in (0..m).step_by(SCHUR_PANEL).enumerate() {
                        let width = SCHUR_PANEL.min(m - b0);
                        schur_panel(a, l21_vals, scale, lam1, q1, all_scalar, k, l.l22.as_mut().subcols_mut(b0, width));
                    }
                }
                let stack = MemStack::new(&mut self.chol_buffer.buffer);
                cholesky_in_place(l.l22.as_mut(), Default::default(), self.par, stack, Default::default())
                    .map_err(|e| match e {
                        faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index } => {
                            CoreError::NotPositiveDefinite {
                                block: "random-effects".into(),
                                pivot: index,
                            }
                        }
                    })?;
            }

            // L₃₂ᵀ = L₂₂⁻¹ (Λ_restᵀ A₃₂ᵀ − Σⱼ L₂₁ⱼ L₃₁ⱼᵀ).
            if !c_formed {
                form_c(a, &l.l21_vals, &l.l31t, &mut l.l32t, mix, q1, p1, rows, level);
            }
            if rest_logdet.is_none() {
                solve_lower_triangular_in_place(l.l22.as_ref(), l.l32t.as_mut(), self.par);
            }
        }

        // L₃₃ = chol(A₃₃ − L₃₁L₃₁ᵀ − L₃₂L₃₂ᵀ); with the sparse rest block L₃₂L₃₂ᵀ = CᵀS⁻¹C, C
        // still in l32t.
        l.l33.as_mut().copy_from(a.a33.as_ref());
        matmul(l.l33.as_mut(), Accum::Add, l.l31t.transpose(), l.l31t.as_ref(), -1.0, Par::Seq);
        if m > 0 {
            match (rest_logdet, self.sparse.as_mut()) {
                (Some(_), Some(sp)) => sp.subtract_quadratic_form(l.l32t.as_ref(), l.l33.as_mut(), self.parallel_schur),
                _ => matmul(l.l33.as_mut(), Accum::Add, l.l32t.transpose(), l.l32t.as_ref(), -1.0, Par::Seq),
            }
        }
        self.factor_l33(Logdets { first: None, rest: rest_logdet })
    }

    /// L₃₃ = chol of the [X y] block left in `l.l33`; passes `known` through.
    fn factor_l33(&mut self, known: Logdets) -> CoreResult<Logdets> {
        let l = &mut self.l;
        let stack = MemStack::new(&mut self.chol_buffer.buffer);
        match cholesky_in_place(l.l33.as_mut(), Default::default(), Par::Seq, stack, Default::default()) {
            Ok(_) => Ok(known),
            Err(faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index }) => {
                if index == self.p {
                    // r² = 0: the response is reproduced exactly. Keep going with r = 0 so the
                    // objective reports −∞ deviance instead of failing.
                    l.l33[(self.p, self.p)] = 0.0;
                    Ok(known)
                } else {
                    Err(CoreError::NotPositiveDefinite {
                        block: "fixed-effects".into(),
                        pivot: index,
                    })
                }
            }
        }
    }

    /// log|L_θ|² (random-effects part only), from the dense L₂₂.
    fn logdet_re(&self) -> f64 {
        self.logdet_re_with(Logdets::default())
    }

    /// log|L_θ|², with log|L₁₁|² and log|L₂₂|² taken from `known` where the objective's pass
    /// computed them instead of storing L₁₁ or a dense L₂₂.
    fn logdet_re_with(&self, known: Logdets) -> f64 {
        let q1 = self.terms[0].q;
        let first = match known.first {
            Some(first) => first,
            None => 2.0 * sum_ln((0..self.terms[0].n_levels * q1).map(|i| self.l.l11[i * q1 + i % q1])),
        };
        if let Some(rest) = known.rest {
            return first + rest;
        }
        let mut s = 0.0;
        for d in 0..self.m {
            s += self.l.l22[(d, d)].ln();
        }
        first + 2.0 * s
    }

    /// The objective from the current factor.
    fn objective_from_l(&self, known: Logdets) -> f64 {
        let n = self.n as f64;
        let p = self.p;
        let r = self.l.l33[(p, p)];
        let r2 = r * r;
        let ld = self.logdet_re_with(known);
        if self.reml {
            let mut ldx = 0.0;
            for c in 0..p {
                ldx += self.l.l33[(c, c)].ln();
            }
            let nmp = n - p as f64;
            ld - self.log_det_w + 2.0 * ldx + nmp * (1.0 + (2.0 * std::f64::consts::PI * r2 / nmp).ln())
        } else {
            ld - self.log_det_w + n * (1.0 + (2.0 * std::f64::consts::PI * r2 / n).ln())
        }
    }

    /// The pieces of the objective at θ: (log|L_θ|² − log|W|, log|R_X|², r²), where r² is the
    /// penalised residual sum of squares and W the prior weights. With them the unprofiled −2 log-likelihood at any σ is
    /// log|L_θ|² + [log|R_X|²] + dof·log(2πσ²) + r²/σ² (dof = n − p for REML, n for ML).
    pub fn deviance_parts(&mut self, theta: &[f64]) -> CoreResult<(f64, f64, f64)> {
        self.update_l(theta)?;
        let p = self.p;
        let mut ldx = 0.0;
        for c in 0..p {
            ldx += self.l.l33[(c, c)].ln();
        }
        let r = self.l.l33[(p, p)];
        Ok((self.logdet_re() - self.log_det_w, 2.0 * ldx, r * r))
    }

    /// σ̂(θ) and cov(β̂) = σ̂² (R_XᵀR_X)⁻¹ at θ (p × p, column-major), without the random
    /// effects or their conditional variances that [`Model::estimates`] also forms.
    pub fn beta_covariance(&mut self, theta: &[f64]) -> CoreResult<(f64, Vec<f64>)> {
        self.update_l(theta)?;
        let (n, p) = (self.n, self.p);
        let r = self.l.l33[(p, p)];
        let dof = if self.reml { (n - p) as f64 } else { n as f64 };
        let sigma2 = r * r / dof;
        let lxx = self.l.l33.as_ref().get(..p, ..p);
        let mut lxx_inv = Mat::<f64>::identity(p, p);
        solve_lower_triangular_in_place(lxx, lxx_inv.as_mut(), Par::Seq);
        let mut cov = Mat::<f64>::zeros(p, p);
        matmul(cov.as_mut(), Accum::Replace, lxx_inv.transpose(), lxx_inv.as_ref(), sigma2, Par::Seq);
        Ok((sigma2.sqrt(), (0..p * p).map(|i| cov[(i % p, i / p)]).collect()))
    }

    /// REML criterion or deviance (−2 log-likelihood) profiled over β and σ.
    pub fn objective(&mut self, theta: &[f64]) -> CoreResult<f64> {
        let known = self.update_l_with(theta, true)?;
        Ok(self.objective_from_l(known))
    }

    /// Everything at θ: β, σ, cov(β), conditional modes and variances, fitted values.
    pub fn estimates(&mut self, theta: &[f64]) -> CoreResult<Estimates> {
        self.estimates_with(theta, true)
    }

    /// [`Model::estimates`]; without `conditional_covariances` the `b_cond_cov` blocks are
    /// left empty, and where the objective factors the rest block sparse, the modes come from
    /// that factor (S⁻¹ by its triangular solves) instead of a dense L₂₂ and its inverse
    /// (InstEval: about m³/3 flops each for m = 1,156). A fit reports its conditional variances
    /// only when asked for them, as lme4's `ranef(condVar = TRUE)` computes them.
    pub fn estimates_with(&mut self, theta: &[f64], conditional_covariances: bool) -> CoreResult<Estimates> {
        // Once per fit, so worth both threads from a smaller rest block on than an evaluation.
        let saved = self.par;
        if self.parallel_estimates {
            self.par = Par::rayon(0);
        }
        let estimates = self.estimates_with_par(theta, conditional_covariances);
        self.par = saved;
        estimates
    }

    fn estimates_with_par(&mut self, theta: &[f64], conditional_covariances: bool) -> CoreResult<Estimates> {
        // The objective's sparse pass keeps L₁₁, L₂₁ and L₃₁ and leaves C = Λ_restᵀA₃₂ᵀ − L₂₁L₃₁ᵀ
        // in l32t when the rest block is factored sparse (m > 0, scalar rest terms).
        let sparse = !conditional_covariances
            && self.m > 0
            && self.sparse.is_some()
            && self.terms.iter().skip(1).all(|t| t.q == 1);
        let known = if sparse {
            self.update_l_with(theta, true)?
        } else {
            self.update_l(theta)?;
            Logdets::default()
        };
        let sparse = sparse && known.rest.is_some();
        let objective = self.objective_from_l(known);
        let (n, p, m) = (self.n, self.p, self.m);
        let l = &self.l;
        let t1 = &self.terms[0];
        let (q1, l1) = (t1.q, t1.n_levels);

        // β from L_XXᵀ β = l_yX.
        let lxx = l.l33.as_ref().get(..p, ..p);
        let mut beta = Mat::<f64>::zeros(p, 1);
        for c in 0..p {
            beta[(c, 0)] = l.l33[(p, c)];
        }
        solve_upper_triangular_in_place(lxx.transpose(), beta.as_mut(), Par::Seq);
        let r = l.l33[(p, p)];
        let dof = if self.reml { (n - p) as f64 } else { n as f64 };
        let sigma2 = r * r / dof;

        // cov(β) = σ² L_XX⁻ᵀ L_XX⁻¹.
        let mut lxx_inv = Mat::<f64>::identity(p, p);
        solve_lower_triangular_in_place(lxx, lxx_inv.as_mut(), Par::Seq);
        let mut beta_cov = Mat::<f64>::zeros(p, p);
        matmul(beta_cov.as_mut(), Accum::Replace, lxx_inv.transpose(), lxx_inv.as_ref(), sigma2, Par::Seq);

        // u: L_Zᵀ u = l_yZ − L_XZᵀ β.
        let mut rhs1 = vec![0.0; q1 * l1];
        for (i, v) in rhs1.iter_mut().enumerate() {
            let mut s = l.l31t[(i, p)];
            for c in 0..p {
                s -= l.l31t[(i, c)] * beta[(c, 0)];
            }
            *v = s;
        }
        let mut u2 = Mat::<f64>::zeros(m, 1);
        for i in 0..m {
            let mut s = l.l32t[(i, p)];
            for c in 0..p {
                s -= l.l32t[(i, c)] * beta[(c, 0)];
            }
            u2[(i, 0)] = s;
        }
        if sparse {
            // u₂ = S⁻¹(C_y − C_Xβ), C unsolved in l32t.
            let sp = self.sparse.as_mut().expect("a sparse rest block");
            sp.solve(u2.as_mut().col_mut(0).try_as_col_major_mut().unwrap().as_slice_mut());
        } else if m > 0 {
            solve_upper_triangular_in_place(l.l22.transpose(), u2.as_mut(), Par::Seq);
        }
        for j in 0..l1 {
            let (s, e) = (self.a.a21_ptr[j], self.a.a21_ptr[j + 1]);
            let seg = &mut rhs1[j * q1..(j + 1) * q1];
            for (ia, &row) in self.a.a21_rows[s..e].iter().enumerate() {
                let va = &l.l21_vals[(s + ia) * q1..(s + ia + 1) * q1];
                for c in 0..q1 {
                    seg[c] -= va[c] * u2[(row, 0)];
                }
            }
            solve_upper_small(&l.l11[j * q1 * q1..(j + 1) * q1 * q1], q1, seg);
        }

        // b = Λu, per term, level-major.
        let mut b: Vec<Vec<f64>> = Vec::with_capacity(self.terms.len());
        for (k, t) in self.terms.iter().enumerate() {
            let mut bk = vec![0.0; t.n_levels * t.q];
            for lev in 0..t.n_levels {
                let uvec: Vec<f64> = if k == 0 {
                    rhs1[lev * q1..(lev + 1) * q1].to_vec()
                } else {
                    let base = self.rest_base[k][lev];
                    (0..t.q).map(|c| u2[(base + c, 0)]).collect()
                };
                let lam = &self.lambdas[k];
                for row in 0..t.q {
                    let mut s = 0.0;
                    for col in 0..=row {
                        s += lam[col * t.q + row] * uvec[col];
                    }
                    bk[lev * t.q + row] = s;
                }
            }
            b.push(bk);
        }

        // Fitted values and residuals.
        // Xβ a column of X at a time (X is column-major), then Zb row by row.
        let mut fitted = vec![0.0; n];
        for c in 0..p {
            let (xc, bc) = (self.x.col(c).try_as_col_major().unwrap().as_slice(), beta[(c, 0)]);
            for (f, &v) in fitted.iter_mut().zip(xc) {
                *f += v * bc;
            }
        }
        for (i, f) in fitted.iter_mut().enumerate() {
            let mut s = *f;
            for (k, t) in self.terms.iter().enumerate() {
                let lev = t.codes[i] as usize;
                let z = t.z_row(i);
                for c in 0..t.q {
                    s += z[c] * b[k][lev * t.q + c];
                }
            }
            *f = s;
        }
        let mut resid: Vec<f64> = self.y.iter().zip(&fitted).map(|(y, f)| y - f).collect();
        self.unweight(&mut fitted);
        self.unweight(&mut resid);

        let b_cond_cov = if conditional_covariances {
            self.conditional_covariances(sigma2)
        } else {
            Vec::new()
        };

        Ok(Estimates {
            theta: theta.to_vec(),
            objective,
            beta: (0..p).map(|c| beta[(c, 0)]).collect(),
            sigma: sigma2.sqrt(),
            beta_cov: (0..p * p).map(|i| beta_cov[(i % p, i / p)]).collect(),
            b,
            b_cond_cov,
            fitted,
            resid,
        })
    }

    /// σ² [Λ (L_Z L_Zᵀ)⁻¹ Λᵀ] diagonal blocks per level, as lme4's `condVar` (the random-effects
    /// factor only, β treated as known). Uses L₂₂⁻¹ formed once: for level j of term 1 the block
    /// of the inverse is W₁ᵀW₁ + W₂ᵀW₂ with W₁ = L₁₁ⱼ⁻¹ and W₂ = −L₂₂⁻¹ L₂₁ⱼ L₁₁ⱼ⁻¹.
    fn conditional_covariances(&self, sigma2: f64) -> Vec<Vec<f64>> {
        let m = self.m;
        let t1 = &self.terms[0];
        let (q1, l1) = (t1.q, t1.n_levels);
        // L₂₂⁻¹, lower triangle (m³/3 flops; a solve against the identity would take m³).
        let mut l22_inv = Mat::<f64>::zeros(m, m);
        if m > 0 {
            invert_lower_triangular(l22_inv.as_mut(), self.l.l22.as_ref(), self.par);
        }
        let mut out = Vec::with_capacity(self.terms.len());

        // Term 1, one level at a time (on rayon's threads with a parallel rest block).
        let mut cov1 = vec![0.0; l1 * q1 * q1];
        let (l11, l21_vals, a, lam1, l22_inv) = (&self.l.l11, &self.l.l21_vals, &self.a, &self.lambdas[0], &l22_inv);
        let level = |j: usize, dst: &mut [f64], w1: &mut [f64], g: &mut [f64], blk: &mut [f64]| {
            let lj = &l11[j * q1 * q1..(j + 1) * q1 * q1];
            // W₁ = L₁₁ⱼ⁻¹ (column-major q1 × q1).
            for c in 0..q1 {
                for r in 0..q1 {
                    w1[c * q1 + r] = if r == c { 1.0 } else { 0.0 };
                }
                solve_lower_small(lj, q1, &mut w1[c * q1..(c + 1) * q1]);
            }
            // blk = W₁ᵀW₁.
            for c2 in 0..q1 {
                for c1 in 0..q1 {
                    let mut s = 0.0;
                    for r in 0..q1 {
                        s += w1[c1 * q1 + r] * w1[c2 * q1 + r];
                    }
                    blk[c2 * q1 + c1] = s;
                }
            }
            if m > 0 {
                // G = L₂₂⁻¹ (L₂₁ⱼ W₁): m × q1, via the sparse rows of L₂₁ⱼ.
                let (s, e) = (a.a21_ptr[j], a.a21_ptr[j + 1]);
                let rows = &a.a21_rows[s..e];
                g.iter_mut().for_each(|v| *v = 0.0);
                let mut min_row = m;
                for (ia, &row) in rows.iter().enumerate() {
                    min_row = min_row.min(row);
                    let va = &l21_vals[(s + ia) * q1..(s + ia + 1) * q1];
                    for c in 0..q1 {
                        // (L₂₁ⱼ W₁)[row, c]
                        let mut h = 0.0;
                        for d in 0..q1 {
                            h += va[d] * w1[c * q1 + d];
                        }
                        if h != 0.0 {
                            let inv_col = l22_inv.col(row);
                            let gc = &mut g[c * m..(c + 1) * m];
                            for r2 in row..m {
                                gc[r2] += inv_col[r2] * h;
                            }
                        }
                    }
                }
                if min_row < m {
                    for c2 in 0..q1 {
                        for c1 in 0..q1 {
                            let mut s2 = 0.0;
                            for r2 in min_row..m {
                                s2 += g[c1 * m + r2] * g[c2 * m + r2];
                            }
                            blk[c2 * q1 + c1] += s2;
                        }
                    }
                }
            }
            sandwich_lambda(blk, lam1, q1, sigma2, dst);
        };
        let buffers = || (vec![0.0; q1 * q1], vec![0.0; m * q1], vec![0.0; q1 * q1]);
        if matches!(self.par, Par::Rayon(_)) {
            use rayon::prelude::*;
            cov1.par_chunks_mut(q1 * q1)
                .enumerate()
                .for_each_init(buffers, |(w1, g, blk), (j, dst)| level(j, dst, w1, g, blk));
        } else {
            let (mut w1, mut g, mut blk) = buffers();
            for (j, dst) in cov1.chunks_mut(q1 * q1).enumerate() {
                level(j, dst, &mut w1, &mut g, &mut blk);
            }
        }
        out.push(cov1);

        // Rest terms: the blocks of (L₂₂L₂₂ᵀ)⁻¹ = L₂₂⁻ᵀL₂₂⁻¹.
        for (k, t) in self.terms.iter().enumerate().skip(1) {
            let q = t.q;
            let mut covk = vec![0.0; t.n_levels * q * q];
            let mut bk = vec![0.0; q * q];
            for lev in 0..t.n_levels {
                let base = self.rest_base[k][lev];
                for c2 in 0..q {
                    for c1 in 0..q {
                        let a1 = l22_inv.col(base + c1);
                        let a2 = l22_inv.col(base + c2);
                        let mut s = 0.0;
                        for r in base..m {
                            s += a1[r] * a2[r];
                        }
                        bk[c2 * q + c1] = s;
                    }
                }
                sandwich_lambda(&bk, &self.lambdas[k], q, sigma2, &mut covk[lev * q * q..(lev + 1) * q * q]);
            }
            out.push(covk);
        }
        out
    }
}

/// The first rest row of each level of each rest term: within term k's rows (from
/// `rest_offsets[k]`, q rows per level) the levels are laid out from the fewest observations
/// to the most (ties by code), as MixedModels.jl orders them. The rows of the most frequent
/// levels, which most block columns of L₂₁ reach, then come last: the scattered Schur updates
/// land in the short bottom of each column, and the conditional variances' L₂₂⁻¹ columns are
/// read from there on only (MovieLens-like items: 2.3× fewer multiply-adds than in label
/// order). Every result is reported per level, so the layout is never seen outside the core.
/// Z_restᵀZ_rest, dense m × m (both triangles).
/// Rows of [X y] gathered per panel by [`z_cross_xy`]: 128 rows of InstEval's REML [X y]
/// (30 columns) are 30 KB, within the first-level cache beside the rows they update.
const CROSS_PANEL: usize = 128;

/// A₃₁ᵀ = Z₁ᵀ[X y] (q₁·l₁ × (p+1)), A₃₂ᵀ = Z_restᵀ[X y] (m × (p+1)) and [X y]ᵀy in one pass over
/// the observations. Panels of [X y]'s rows are gathered row-major from its columns, and every
/// observation adds its row, scaled by its z, to one row-major accumulator row per term and
/// column of z: contiguous adds that vectorise, where scattering column by column made p + 1
/// passes of dependent scalar updates (InstEval REML: 30 passes over 73,421 codes per term).
/// Every entry still sums its observations in row order, so the sums are those of a pass by
/// columns, bit for bit.
/// The parts of a new model's factor storage that [`Model::from_owned`] allocates beside the
/// crossproduct.
struct Storage {
    l31t: Mat<f64>,
    l32t: Mat<f64>,
    l32_rows: Vec<f64>,
    chol_buffer: Scratch,
}

/// The response and every column of X are finite: the diagonal of A₃₃ = [X y]ᵀ[X y] holds
/// their sums of squares, finite exactly when every value is, unless a square overflows; only
/// a non-finite sum sends its column (the response first) to a search for the culprit's
/// index, so finite data cost no pass of their own.
fn check_finite(y: &[f64], x: MatRef<'_, f64>, a33: &Mat<f64>) -> CoreResult<()> {
    let p = x.ncols();
    let first_bad = |values: &[f64]| values.iter().position(|v| !v.is_finite());
    if !a33[(p, p)].is_finite() {
        if let Some(i) = first_bad(y) {
            return Err(CoreError::NonFinite {
                what: "the response".into(),
                index: i,
            });
        }
    }
    for j in 0..p {
        if !a33[(j, j)].is_finite() {
            if let Some(i) = first_bad(x.col(j).try_as_col_major().unwrap().as_slice()) {
                return Err(CoreError::NonFinite {
                    what: format!("column {j} of the fixed-effects model matrix"),
                    index: i,
                });
            }
        }
    }
    Ok(())
}

fn z_cross_xy(y: &[f64], x: MatRef<'_, f64>, terms: &[Term], rest_base: &[Vec<usize>], m: usize) -> (Mat<f64>, Mat<f64>, Vec<f64>) {
    let n = y.len();
    let p = x.ncols();
    let w = p + 1;
    let t1 = &terms[0];
    let q1 = t1.q;
    let mut acc1 = vec![0.0; t1.n_levels * q1 * w];
    let mut acc_rest = vec![0.0; m * w];
    let mut xty = vec![0.0; w];
    let columns: Vec<&[f64]> = (0..p).map(|t| x.col(t).try_as_col_major().unwrap().as_slice()).chain([y]).collect();
    let mut panel = vec![0.0; CROSS_PANEL * w];
    let add = |out: &mut [f64], z: f64, row: &[f64]| {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += z * v;
        }
    };
    for i0 in (0..n).step_by(CROSS_PANEL) {
        let rows = CROSS_PANEL.min(n - i0);
        for (t, column) in columns.iter().enumerate() {
            for (r, &v) in column[i0..i0 + rows].iter().enumerate() {
                panel[r * w + t] = v;
            }
        }
        for r in 0..rows {
            let i = i0 + r;
            let row = &panel[r * w..(r + 1) * w];
            let base = t1.codes[i] as usize * q1;
            for (c, &z) in t1.z_row(i).iter().enumerate() {
                add(&mut acc1[(base + c) * w..(base + c + 1) * w], z, row);
            }
            for (k, tk) in terms.iter().enumerate().skip(1) {
                let bk = rest_base[k][tk.codes[i] as usize];
                for (c, &z) in tk.z_row(i).iter().enumerate() {
                    add(&mut acc_rest[(bk + c) * w..(bk + c + 1) * w], z, row);
                }
            }
            let yi = row[p];
            for (s, &v) in xty.iter_mut().zip(row) {
                *s += v * yi;
            }
        }
    }
    let a31t = Mat::from_fn(t1.n_levels * q1, w, |r, t| acc1[r * w + t]);
    let a32t = Mat::from_fn(m, w, |r, t| acc_rest[r * w + t]);
    (a31t, a32t, xty)
}

fn a22_dense(terms: &[Term], rest_base: &[Vec<usize>], m: usize) -> Mat<f64> {
    let mut a22 = Mat::<f64>::zeros(m, m);
    for i in 0..terms[0].codes.len() {
        for (k, tk) in terms.iter().enumerate().skip(1) {
            let bk = rest_base[k][tk.codes[i] as usize];
            let zk = tk.z_row(i);
            for (h, th) in terms.iter().enumerate().skip(1) {
                let bh = rest_base[h][th.codes[i] as usize];
                let zh = th.z_row(i);
                for ch in 0..th.q {
                    for ck in 0..tk.q {
                        a22[(bk + ck, bh + ch)] += zk[ck] * zh[ch];
                    }
                }
            }
        }
    }
    a22
}

/// The nonzero entries of the lower triangle of Z_restᵀZ_rest for scalar rest terms, by column
/// (rows ascending), without the dense m × m matrix: each entry is the sum over the
/// observations in order, as in [`a22_dense`], so the values are the same to the bit.
fn a22_lower(terms: &[Term], rest_base: &[Vec<usize>], m: usize) -> (Pattern, Vec<f64>) {
    let n = terms[0].codes.len();
    // Observation i adds z_k z_h at (row of term k, row of term h) for k ≥ h: rest rows ascend
    // with the term, so that is the lower triangle. Listed by column, observations in order.
    let each = |f: &mut dyn FnMut(usize, usize, f64)| {
        for i in 0..n {
            for (k, tk) in terms.iter().enumerate().skip(1) {
                let rk = rest_base[k][tk.codes[i] as usize];
                for (h, th) in terms.iter().enumerate().skip(1).take(k) {
                    let rh = rest_base[h][th.codes[i] as usize];
                    f(rh, rk, tk.z[i] * th.z[i]);
                }
            }
        }
    };
    let mut start = vec![0usize; m + 1];
    each(&mut |b, _, _| start[b + 1] += 1);
    for b in 0..m {
        start[b + 1] += start[b];
    }
    let mut next = start.clone();
    let mut listed = vec![(0usize, 0.0f64); start[m]];
    each(&mut |b, r, v| {
        listed[next[b]] = (r, v);
        next[b] += 1;
    });
    let mut pattern = Pattern {
        col_ptr: Vec::with_capacity(m + 1),
        row_idx: Vec::new(),
    };
    pattern.col_ptr.push(0);
    let mut vals = Vec::new();
    let mut sum = vec![0.0f64; m];
    let mut seen = vec![usize::MAX; m];
    let mut touched = Vec::new();
    for b in 0..m {
        for &(r, v) in &listed[start[b]..start[b + 1]] {
            if seen[r] != b {
                seen[r] = b;
                touched.push(r);
            }
            sum[r] += v;
        }
        touched.sort_unstable();
        for &r in &touched {
            if sum[r] != 0.0 {
                pattern.row_idx.push(r);
                vals.push(sum[r]);
            }
            sum[r] = 0.0;
        }
        touched.clear();
        pattern.col_ptr.push(vals.len());
    }
    (pattern, vals)
}

/// For each level j of the first term, the rest rows (scalar rest terms) that share an
/// observation with it, ascending: the structure of A₂₁, from the level codes alone (as
/// `ptr`, `rows`: level j's rows are `rows[ptr[j]..ptr[j + 1]]`).
fn level_rest_rows(terms: &[Term], rest_base: &[Vec<usize>], m: usize) -> (Vec<usize>, Vec<usize>) {
    let (l1, codes) = (terms[0].n_levels, &terms[0].codes);
    // The observations by level (a counting sort).
    let mut start = vec![0usize; l1 + 1];
    for &c in codes.iter() {
        start[c as usize + 1] += 1;
    }
    for j in 0..l1 {
        start[j + 1] += start[j];
    }
    let mut next = start.clone();
    let mut order = vec![0usize; codes.len()];
    for (i, &c) in codes.iter().enumerate() {
        order[next[c as usize]] = i;
        next[c as usize] += 1;
    }
    let mut ptr = Vec::with_capacity(l1 + 1);
    ptr.push(0);
    let mut rows = Vec::new();
    let mut stamp = vec![usize::MAX; m];
    for j in 0..l1 {
        let first = rows.len();
        for &i in &order[start[j]..start[j + 1]] {
            for (k, t) in terms.iter().enumerate().skip(1) {
                let r = rest_base[k][t.codes[i] as usize];
                if stamp[r] != j {
                    stamp[r] = j;
                    rows.push(r);
                }
            }
        }
        rows[first..].sort_unstable();
        ptr.push(rows.len());
    }
    (ptr, rows)
}

fn rest_level_bases(terms: &[Term], rest_offsets: &[usize]) -> Vec<Vec<usize>> {
    let mut bases = vec![Vec::new(); terms.len()];
    for (k, t) in terms.iter().enumerate().skip(1) {
        let mut count = vec![0usize; t.n_levels];
        for &c in &t.codes {
            count[c as usize] += 1;
        }
        let mut order: Vec<usize> = (0..t.n_levels).collect();
        order.sort_by_key(|&lev| count[lev]); // stable: ties keep code order
        bases[k] = vec![0; t.n_levels];
        for (rank, &lev) in order.iter().enumerate() {
            bases[k][lev] = rest_offsets[k] + rank * t.q;
        }
    }
    bases
}

/// Column b of the Schur complement S = Λ_restᵀA₂₂Λ_rest + I − Σⱼ L₂₁ⱼL₂₁ⱼᵀ, rows b..m of
/// `col`. With `from_a22` (scalar rest terms) rows b..m are overwritten from the dense A₂₂ and
/// `scale` (the rest λ's); otherwise `col` must hold column b of Λ_restᵀA₂₂Λ_rest already.
/// The reference [`schur_panel`] is tested against.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
fn schur_column(a: &Crossprod, l21_vals: &[f64], scale: &[f64], lam1: &[f64], q1: usize, from_a22: bool, b: usize, col: &mut [f64]) {
    schur_column_start(a, scale, lam1, from_a22, b, col);
    let entries = &a.a21_by_row[a.a21_row_ptr[b]..a.a21_row_ptr[b + 1]];
    match q1 {
        1 => subtract_block_products::<1>(a, l21_vals, entries, col),
        2 => subtract_block_products::<2>(a, l21_vals, entries, col),
        3 => subtract_block_products::<3>(a, l21_vals, entries, col),
        _ => {
            for &e in entries {
                let vb = &l21_vals[e * q1..(e + 1) * q1];
                for ia in e..a.a21_block_end[e] {
                    let va = &l21_vals[ia * q1..(ia + 1) * q1];
                    let mut dot = 0.0;
                    for c in 0..q1 {
                        dot += va[c] * vb[c];
                    }
                    col[a.a21_rows[ia]] -= dot;
                }
            }
        }
    }
}

/// Columns k·[`SCHUR_PANEL`] onwards of S (see [`schur_column`]) into `panel`, its full-height
/// columns: each column's A₂₂ part and groups first, then the scattered products run by run,
/// so a block column is read once per panel. The order of the updates of each entry is that
/// of [`schur_column`], so the result is the same to the last bit.
#[allow(clippy::too_many_arguments)]
fn schur_panel(a: &Crossprod, l21_vals: &[f64], scale: &[f64], lam1: &[f64], q1: usize, from_a22: bool, k: usize, mut panel: MatMut<'_, f64>) {
    let b0 = k * SCHUR_PANEL;
    for c in 0..panel.ncols() {
        let col = panel.as_mut().col_mut(c).try_as_col_major_mut().unwrap().as_slice_mut();
        schur_column_start(a, scale, lam1, from_a22, b0 + c, col);
    }
    let runs = &a.schur_runs[a.schur_run_ptr[k]..a.schur_run_ptr[k + 1]];
    match q1 {
        1 => subtract_run_products::<1>(a, l21_vals, runs, b0, 1, panel),
        2 => subtract_run_products::<2>(a, l21_vals, runs, b0, 2, panel),
        3 => subtract_run_products::<3>(a, l21_vals, runs, b0, 3, panel),
        _ => subtract_run_products::<0>(a, l21_vals, runs, b0, q1, panel),
    }
}

/// The scattered part of [`schur_panel`]: for each entry e of a run, column a21_rows[e] of S
/// loses L₂₁[r]·L₂₁[e] at every row r from e to the end of e's block column, two entries (two
/// columns) per pass over the block column's rows. Each entry of S still gets this block
/// column's one product, so the order of updates is [`schur_column`]'s. `Q` is q₁ as a
/// constant (0: use `q`).
#[inline(always)]
fn subtract_run_products<const Q: usize>(a: &Crossprod, l21_vals: &[f64], runs: &[(usize, usize, usize)], b0: usize, q: usize, mut panel: MatMut<'_, f64>) {
    let q = if Q == 0 { q } else { Q };
    for &(first, stop, end) in runs {
        let mut e = first;
        // Two entries at a time: rows after both are read once for two columns.
        while e + 1 < stop {
            let (c1, c2) = (a.a21_rows[e] - b0, a.a21_rows[e + 1] - b0);
            let (left, right) = panel.as_mut().split_at_col_mut(c2);
            let col1 = left.col_mut(c1).try_as_col_major_mut().unwrap().as_slice_mut();
            let col2 = right.col_mut(0).try_as_col_major_mut().unwrap().as_slice_mut();
            let vb1 = &l21_vals[e * q..(e + 1) * q];
            let vb2 = &l21_vals[(e + 1) * q..(e + 2) * q];
            let mut dot = 0.0;
            for c in 0..q {
                dot += vb1[c] * vb1[c];
            }
            col1[a.a21_rows[e]] -= dot;
            let rows = &a.a21_rows[e + 1..end];
            let vals = &l21_vals[(e + 1) * q..end * q];
            for (&row, va) in rows.iter().zip(vals.chunks_exact(q)) {
                let (mut d1, mut d2) = (0.0, 0.0);
                for c in 0..q {
                    d1 += va[c] * vb1[c];
                    d2 += va[c] * vb2[c];
                }
                col1[row] -= d1;
                col2[row] -= d2;
            }
            e += 2;
        }
        if e < stop {
            let col = panel.as_mut().col_mut(a.a21_rows[e] - b0).try_as_col_major_mut().unwrap().as_slice_mut();
            let vb = &l21_vals[e * q..(e + 1) * q];
            let rows = &a.a21_rows[e..end];
            let vals = &l21_vals[e * q..end * q];
            for (&row, va) in rows.iter().zip(vals.chunks_exact(q)) {
                let mut dot = 0.0;
                for c in 0..q {
                    dot += va[c] * vb[c];
                }
                col[row] -= dot;
            }
        }
    }
}

/// Column b of S before the scattered products: Λ_restᵀA₂₂Λ_rest (from A₂₂ with `from_a22`,
/// else already in `col`), + I, − the Schur groups' updates.
fn schur_column_start(a: &Crossprod, scale: &[f64], lam1: &[f64], from_a22: bool, b: usize, col: &mut [f64]) {
    let m = col.len();
    if from_a22 {
        let src = a.dense_a22().col(b).try_as_col_major().unwrap().as_slice();
        let sb = scale[b];
        for r in b..m {
            col[r] = src[r] * scale[r] * sb;
        }
    }
    col[b] += 1.0;
    // Only with scalar rest terms (see schur_groups).
    let mut weights = [0.0f64; 6];
    for group in &a.schur_groups {
        if group_weights(&group.a11, lam1, group.q, scale[b], &mut weights).is_none() {
            // The first block's factorisation has failed on this level already.
            continue;
        }
        for (mat, &w) in group.s.iter().zip(&weights) {
            let src = mat.col(b).try_as_col_major().unwrap().as_slice();
            for r in b..m {
                col[r] -= w * scale[r] * src[r];
            }
        }
    }
}

/// col[r] −= L₂₁[r]·L₂₁[b] over the entries e of column b and the rows after them in e's block
/// (the scattered part of the Schur complement), for a first term with `Q` columns.
#[cfg(test)]
#[inline(always)]
fn subtract_block_products<const Q: usize>(a: &Crossprod, l21_vals: &[f64], entries: &[usize], col: &mut [f64]) {
    for &e in entries {
        let end = a.a21_block_end[e];
        let vb: &[f64; Q] = l21_vals[e * Q..(e + 1) * Q].try_into().unwrap();
        let rows = &a.a21_rows[e..end];
        let vals = &l21_vals[e * Q..end * Q];
        for (&row, va) in rows.iter().zip(vals.chunks_exact(Q)) {
            let mut dot = 0.0;
            for c in 0..Q {
                dot += va[c] * vb[c];
            }
            col[row] -= dot;
        }
    }
}

/// Rest rows per panel of the dense Schur build: 32 columns of S (256 KB for m = 1,000) stay
/// in L2 while each block column's entries in the panel are applied to them.
pub(crate) const SCHUR_PANEL: usize = 32;

/// The memory the operating system reports as available (Linux `MemAvailable`), if known.
pub(crate) fn available_memory_bytes() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// dst = σ² λ B λᵀ for q × q column-major matrices (λ lower triangular).
fn sandwich_lambda(bmat: &[f64], lam: &[f64], q: usize, sigma2: f64, dst: &mut [f64]) {
    for c2 in 0..q {
        for c1 in 0..q {
            let mut s = 0.0;
            for a in 0..=c1 {
                for b in 0..=c2 {
                    s += lam[a * q + c1] * bmat[b * q + a] * lam[b * q + c2];
                }
            }
            dst[c2 * q + c1] = sigma2 * s;
        }
    }
}

/// In place on a q-vector v: v ← L⁻¹ (λᵀ v), with λ and L lower triangular q × q.
/// L₂₁ with scalar rest terms: L₂₁ⱼ rows = (λ_r a₂₁ⱼ[r]ᵀ λ₁) L₁₁ⱼ⁻ᵀ, `scale` holding λ_r per rest
/// row. `Q` is q₁ as a constant (0: use `q`).
fn scalar_rest_l21<const Q: usize>(a: &Crossprod, lam1: &[f64], q: usize, l11: &[f64], scale: &[f64], l21: &mut [f64]) {
    let q = if Q == 0 { q } else { Q };
    let mut v = [0.0f64; 64];
    for j in 0..a.a21_ptr.len() - 1 {
        let (s, e) = (a.a21_ptr[j], a.a21_ptr[j + 1]);
        let lj = &l11[j * q * q..(j + 1) * q * q];
        let src = &a.a21_vals[s * q..e * q];
        let dst = &mut l21[s * q..e * q];
        for ((&row, d), x) in a.a21_rows[s..e].iter().zip(dst.chunks_exact_mut(q)).zip(src.chunks_exact(q)) {
            let sr = scale[row];
            for c in 0..q {
                d[c] = x[c] * sr;
            }
            apply_lambda_t_then_solve(d, lam1, lj, q, &mut v);
        }
    }
}

/// The rest terms' (rows, offsets, λ's, terms), for [`mix_rest_vector`].
type RestMix<'a> = (&'a [RestRow], &'a [usize], &'a [Vec<f64>], &'a [Term]);

/// C = Λ_restᵀA₃₂ᵀ − Σⱼ L₂₁ⱼ L₃₁ⱼᵀ into `l32t` (L₃₂ᵀ before the solve with L₂₂).
#[allow(clippy::too_many_arguments)]
fn form_c(a: &Crossprod, l21_vals: &[f64], l31t: &Mat<f64>, l32t: &mut Mat<f64>, mix: RestMix<'_>, q1: usize, p1: usize, rows: &mut [f64], level: &mut [f64]) {
    l32t.as_mut().copy_from(a.a32t.as_ref());
    for t in 0..p1 {
        let col = l32t.as_mut().col_mut(t).try_as_col_major_mut().unwrap().as_slice_mut();
        mix_rest_vector(col, mix.0, mix.1, mix.2, mix.3);
    }
    match q1 {
        1 => subtract_l21_l31t::<1>(a, l21_vals, l31t, l32t, 1, p1, rows, level),
        2 => subtract_l21_l31t::<2>(a, l21_vals, l31t, l32t, 2, p1, rows, level),
        3 => subtract_l21_l31t::<3>(a, l21_vals, l31t, l32t, 3, p1, rows, level),
        _ => subtract_l21_l31t::<0>(a, l21_vals, l31t, l32t, q1, p1, rows, level),
    }
}

/// L₃₂ᵀ −= Σⱼ L₂₁ⱼ L₃₁ⱼᵀ over the sparse rows of each L₂₁ⱼ. `Q` is q₁ as a constant (0: use `q`).
/// L₃₂ᵀ is updated in `rows` (m × p₁, row-major) and L₃₁ⱼ read from `level` (q × p₁,
/// row-major), so each entry of L₂₁ updates one contiguous row: a model with many fixed
/// effects read L₂₁ once per column of [X y] before. Each entry of L₃₂ᵀ gets the same
/// products in the same order as column by column.
#[allow(clippy::too_many_arguments)]
fn subtract_l21_l31t<const Q: usize>(
    a: &Crossprod,
    l21_vals: &[f64],
    l31t: &Mat<f64>,
    l32t: &mut Mat<f64>,
    q: usize,
    p1: usize,
    rows: &mut [f64],
    level: &mut [f64],
) {
    let q = if Q == 0 { q } else { Q };
    if p1 <= L32_BY_COLUMN_MAX_P1 {
        subtract_l21_l31t_by_column::<Q>(a, l21_vals, l31t, l32t, q, p1);
        return;
    }
    let m = l32t.nrows();
    for t in 0..p1 {
        let col = l32t.col(t).try_as_col_major().unwrap().as_slice();
        for r in 0..m {
            rows[r * p1 + t] = col[r];
        }
    }
    for j in 0..a.a21_ptr.len() - 1 {
        let (s, e) = (a.a21_ptr[j], a.a21_ptr[j + 1]);
        if s == e {
            continue;
        }
        for t in 0..p1 {
            let src = l31t.col(t).try_as_col_major().unwrap().as_slice();
            for c in 0..q {
                level[c * p1 + t] = src[j * q + c];
            }
        }
        for (&r, va) in a.a21_rows[s..e].iter().zip(l21_vals[s * q..e * q].chunks_exact(q)) {
            let row = &mut rows[r * p1..(r + 1) * p1];
            for (t, x) in row.iter_mut().enumerate() {
                let mut dot = 0.0;
                for c in 0..q {
                    dot += va[c] * level[c * p1 + t];
                }
                *x -= dot;
            }
        }
    }
    for t in 0..p1 {
        let col = l32t.as_mut().col_mut(t).try_as_col_major_mut().unwrap().as_slice_mut();
        for r in 0..m {
            col[r] = rows[r * p1 + t];
        }
    }
}

/// Up to this many columns of [X y], [`subtract_l21_l31t`] reads L₂₁ once per column instead:
/// the row-major copy costs more than the passes it saves (`crossed_20k`, p + 1 = 3: the
/// fastest of 500 objectives 0.11–0.17 ms by column, 0.13–0.20 ms by rows).
const L32_BY_COLUMN_MAX_P1: usize = 4;

/// [`subtract_l21_l31t`] one column of L₃₂ᵀ at a time (the same products in the same order).
fn subtract_l21_l31t_by_column<const Q: usize>(a: &Crossprod, l21_vals: &[f64], l31t: &Mat<f64>, l32t: &mut Mat<f64>, q: usize, p1: usize) {
    let q = if Q == 0 { q } else { Q };
    for t in 0..p1 {
        let w_all = l31t.col(t).try_as_col_major().unwrap().as_slice();
        let col = l32t.as_mut().col_mut(t).try_as_col_major_mut().unwrap().as_slice_mut();
        for j in 0..a.a21_ptr.len() - 1 {
            let (s, e) = (a.a21_ptr[j], a.a21_ptr[j + 1]);
            let w = &w_all[j * q..(j + 1) * q];
            for (&r, va) in a.a21_rows[s..e].iter().zip(l21_vals[s * q..e * q].chunks_exact(q)) {
                let mut dot = 0.0;
                for c in 0..q {
                    dot += va[c] * w[c];
                }
                col[r] -= dot;
            }
        }
    }
}

/// Σ ln xᵢ with one logarithm per batch of factors: the product is taken until it leaves
/// [1e-200, 1e200] (factors outside [1e-100, 1e100], zero, negative or NaN go straight to ln).
fn sum_ln(values: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut prod) = (0.0, 1.0f64);
    for x in values {
        if !(x > 1e-100 && x < 1e100) {
            s += x.ln();
            continue;
        }
        prod *= x;
        if !(prod > 1e-200 && prod < 1e200) {
            s += prod.ln();
            prod = 1.0;
        }
    }
    s + prod.ln()
}

/// log-determinants the objective's pass computed itself (see [`Model::update_l_with`]):
/// log|L₁₁|² when L₁₁ was not stored, log|L₂₂|² when the rest block was factored sparse.
#[derive(Clone, Copy, Debug, Default)]
struct Logdets {
    first: Option<f64>,
    rest: Option<f64>,
}

/// Largest p + 1 the square-root-free pass [`fused_ldl`] handles (its accumulator is local).
const LDL_MAX_P1: usize = 8;

/// The single-term objective's pass for q = `Q` ≤ 2 without square roots or stored factors.
///
/// Per level j, M = λᵀA₁₁ⱼλ + I = U D Uᵀ with U unit lower triangular and D = diag(d) (every
/// pivot d ≥ 1, since M ≥ I); with v = λᵀA₁₃ⱼ and u = U⁻¹v, the Cholesky pass's L₃₁ⱼL₃₁ⱼᵀ is
/// Σ_c u_c u_cᵀ / d_c, subtracted from the lower triangle of `l33` (which holds A₃₃), and
/// log|L₁₁|² = Σ ln d. The log is taken once: the pivots' binary exponents are summed as
/// integers and their mantissas multiplied, renormalised every 256 levels. Returns None when a
/// pivot is not finite and positive (`l33` is then garbage; the caller redoes the pass with
/// Cholesky, which names the level).
fn fused_ldl<const Q: usize>(a: &Crossprod, lam1: &[f64], l1: usize, p1: usize, l33: &mut Mat<f64>) -> Option<f64> {
    match p1 {
        2 => fused_ldl_with::<Q, 2>(a, lam1, l1, 2, l33),
        3 => fused_ldl_with::<Q, 3>(a, lam1, l1, 3, l33),
        4 => fused_ldl_with::<Q, 4>(a, lam1, l1, 4, l33),
        _ => fused_ldl_with::<Q, 0>(a, lam1, l1, p1, l33),
    }
}

/// [`fused_ldl`] with p + 1 = `P1` as a constant (0: use `p1`), so the loops over the [X y]
/// columns unroll for the common models with one to three fixed effects.
fn fused_ldl_with<const Q: usize, const P1: usize>(a: &Crossprod, lam1: &[f64], l1: usize, p1: usize, l33: &mut Mat<f64>) -> Option<f64> {
    debug_assert!(Q == 1 || Q == 2);
    let p1 = if P1 == 0 { p1 } else { P1 };
    debug_assert!(p1 <= LDL_MAX_P1);
    let mut cols: [&[f64]; LDL_MAX_P1] = [&[]; LDL_MAX_P1];
    for (t, col) in cols.iter_mut().enumerate().take(p1) {
        *col = a.a31t.col(t).try_as_col_major().unwrap().as_slice();
    }
    let cols = &cols[..p1];
    let mut acc = [0.0f64; LDL_MAX_P1 * LDL_MAX_P1];
    let (mut mantissa, mut exponent) = (1.0f64, 0i64);
    let mut ok = true;
    let (l00, l10, l11) = if Q == 1 { (lam1[0], 0.0, 0.0) } else { (lam1[0], lam1[1], lam1[3]) };
    let mut x0 = [0.0f64; LDL_MAX_P1];
    let mut x1 = [0.0f64; LDL_MAX_P1];
    for (j, block) in a.a11.chunks_exact(Q * Q).enumerate().take(l1) {
        let (d0, d1, l) = if Q == 1 {
            (l00 * l00 * block[0] + 1.0, 1.0, 0.0)
        } else {
            let (a00, a10, a11) = (block[0], block[1], block[3]);
            let b00 = a00 * l00 + a10 * l10;
            let b10 = a10 * l00 + a11 * l10;
            let d0 = l00 * b00 + l10 * b10 + 1.0;
            let m10 = l11 * b10;
            let l = m10 / d0;
            (d0, l11 * l11 * a11 + 1.0 - l * m10, l)
        };
        let product = d0 * d1;
        ok &= (f64::MIN_POSITIVE..f64::INFINITY).contains(&product) & (d0 > 0.0);
        let bits = product.to_bits();
        exponent += ((bits >> 52) & 0x7ff) as i64 - 1023;
        mantissa *= f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
        if j % 256 == 255 {
            let bits = mantissa.to_bits();
            exponent += ((bits >> 52) & 0x7ff) as i64 - 1023;
            mantissa = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
        }
        let (r0, r1) = (1.0 / d0, 1.0 / d1);
        for t in 0..p1 {
            if Q == 1 {
                x0[t] = l00 * cols[t][j];
            } else {
                let (v0, v1) = (cols[t][2 * j], cols[t][2 * j + 1]);
                let w0 = l00 * v0 + l10 * v1;
                x0[t] = w0;
                x1[t] = l11 * v1 - l * w0;
            }
        }
        for t2 in 0..p1 {
            let (s0, s1) = (x0[t2] * r0, x1[t2] * r1);
            for t1 in t2..p1 {
                let mut v = x0[t1] * s0;
                if Q == 2 {
                    v += x1[t1] * s1;
                }
                acc[t2 * LDL_MAX_P1 + t1] += v;
            }
        }
    }
    if !ok {
        return None;
    }
    for t2 in 0..p1 {
        let col = l33.as_mut().col_mut(t2).try_as_col_major_mut().unwrap().as_slice_mut();
        for t1 in t2..p1 {
            col[t1] -= acc[t2 * LDL_MAX_P1 + t1];
        }
    }
    Some(mantissa.ln() + exponent as f64 * std::f64::consts::LN_2)
}

/// The single-term objective's pass over the levels (see `update_l_with`): L₁₁ⱼ into `l11`,
/// L₃₁ⱼ into the workspace `w`, and L₃₃ −= L₃₁ⱼL₃₁ⱼᵀ. `Q` is q as a constant (0: use `q`), so
/// the small kernels unroll for the common q of 1–3.
#[allow(clippy::too_many_arguments)]
fn fused_single_term<const Q: usize>(
    a: &Crossprod,
    lam1: &[f64],
    q: usize,
    l1: usize,
    p1: usize,
    l11: &mut [f64],
    w: &mut [f64],
    l33: &mut Mat<f64>,
) -> CoreResult<()> {
    let q = if Q == 0 { q } else { Q };
    let mut v = [0.0f64; 64];
    for j in 0..l1 {
        let lj = &mut l11[j * q * q..(j + 1) * q * q];
        level_factor(&a.a11[j * q * q..(j + 1) * q * q], lam1, q, lj).map_err(|pivot| CoreError::NotPositiveDefinite {
            block: "first random-effects".into(),
            pivot: j * q + pivot,
        })?;
        for t in 0..p1 {
            let seg = &mut w[t * q..(t + 1) * q];
            let src = a.a31t.col(t).try_as_col_major().unwrap().as_slice();
            seg.copy_from_slice(&src[j * q..(j + 1) * q]);
            apply_lambda_t_then_solve(seg, lam1, lj, q, &mut v);
        }
        for t2 in 0..p1 {
            let w2 = &w[t2 * q..(t2 + 1) * q];
            let col = l33.as_mut().col_mut(t2).try_as_col_major_mut().unwrap().as_slice_mut();
            for t1 in t2..p1 {
                let w1 = &w[t1 * q..(t1 + 1) * q];
                let mut dot = 0.0;
                for c in 0..q {
                    dot += w1[c] * w2[c];
                }
                col[t1] -= dot;
            }
        }
    }
    Ok(())
}

/// chol(λᵀ A λ + I) of one q × q level block (column-major) into `dst`; Err(pivot) if not PD.
#[inline(always)]
fn level_factor(src: &[f64], lam: &[f64], q: usize, dst: &mut [f64]) -> Result<(), usize> {
    dst.copy_from_slice(src);
    lambda_right_cols(dst, q, q, lam);
    lambda_left_rows_dense(dst, q, q, lam);
    for c in 0..q {
        dst[c * q + c] += 1.0;
    }
    chol_small(dst, q)
}

#[inline(always)]
fn apply_lambda_t_then_solve(v: &mut [f64], lam: &[f64], lchol: &[f64], q: usize, tmp: &mut [f64; 64]) {
    for c in 0..q {
        let mut s = 0.0;
        for c2 in c..q {
            s += lam[c * q + c2] * v[c2];
        }
        tmp[c] = s;
    }
    v.copy_from_slice(&tmp[..q]);
    solve_lower_small(lchol, q, v);
}

/// λᵀ M for a q × ncols column-major block M (rows mixed within the block).
#[inline(always)]
fn lambda_left_rows_dense(mtx: &mut [f64], q: usize, ncols: usize, lam: &[f64]) {
    lambda_left_rows(mtx, q, ncols, q, 0, lam);
}

/// Λ_restᵀ applied to the sparse rows of one block column of A₂₁ (values row-major, q₁ each).
fn mix_rest_rows(vals: &mut [f64], rows: &[usize], q1: usize, rest_rows: &[RestRow], lambdas: &[Vec<f64>], terms: &[Term]) {
    let mut i = 0;
    while i < rows.len() {
        let info = rest_rows[rows[i]];
        debug_assert_eq!(info.c, 0);
        let q = terms[info.term].q;
        let lam = &lambdas[info.term];
        if q == 1 {
            let s = lam[0];
            for v in &mut vals[i * q1..(i + 1) * q1] {
                *v *= s;
            }
        } else {
            // rows i..i+q form one level group; row c ← Σ_{c' ≥ c} λ[c', c] row c'.
            for c in 0..q {
                for col in 0..q1 {
                    let mut s = 0.0;
                    for c2 in c..q {
                        s += lam[c * q + c2] * vals[(i + c2) * q1 + col];
                    }
                    vals[(i + c) * q1 + col] = s;
                }
            }
        }
        i += q;
    }
}

/// Λ_restᵀ v for a dense vector over the rest rows.
fn mix_rest_vector(v: &mut [f64], rest_rows: &[RestRow], rest_offsets: &[usize], lambdas: &[Vec<f64>], terms: &[Term]) {
    for (k, t) in terms.iter().enumerate().skip(1) {
        let lam = &lambdas[k];
        let q = t.q;
        let off = rest_offsets[k];
        for lev in 0..t.n_levels {
            let base = off + lev * q;
            for c in 0..q {
                let mut s = 0.0;
                for c2 in c..q {
                    s += lam[c * q + c2] * v[base + c2];
                }
                v[base + c] = s;
            }
        }
    }
    let _ = rest_rows;
}

/// S ← Λ_restᵀ S Λ_rest for the dense symmetric m × m rest block.
fn scale_rest_sym(s: &mut Mat<f64>, rest_rows: &[RestRow], rest_offsets: &[usize], lambdas: &[Vec<f64>], terms: &[Term]) {
    let m = s.nrows();
    let all_scalar = terms.iter().skip(1).all(|t| t.q == 1);
    if all_scalar {
        let scale: Vec<f64> = rest_rows.iter().map(|r| lambdas[r.term][0]).collect();
        for col in 0..m {
            let sc = scale[col];
            let c = s.as_mut().col_mut(col).try_as_col_major_mut().unwrap().as_slice_mut();
            for (v, &sr) in c.iter_mut().zip(&scale) {
                *v *= sr * sc;
            }
        }
        return;
    }
    // Right multiply: columns of each level group mixed by λ.
    for (k, t) in terms.iter().enumerate().skip(1) {
        let q = t.q;
        let lam = &lambdas[k];
        for lev in 0..t.n_levels {
            let base = rest_offsets[k] + lev * q;
            for c in 0..q {
                for row in 0..m {
                    let mut acc = 0.0;
                    for c2 in c..q {
                        acc += s[(row, base + c2)] * lam[c * q + c2];
                    }
                    s[(row, base + c)] = acc;
                }
            }
        }
    }
    // Left multiply by Λᵀ: rows of each level group.
    for col in 0..m {
        let c = s.as_mut().col_mut(col).try_as_col_major_mut().unwrap().as_slice_mut();
        mix_rest_vector(c, rest_rows, rest_offsets, lambdas, terms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Lcg;

    struct Design {
        y: Vec<f64>,
        x: Mat<f64>,
        terms: Vec<Term>,
    }

    /// Crossed design: term 0 (q=2, 7 levels), term 1 (q=1, 5 levels), term 2 (q=2, 3 levels).
    fn random_design(seed: u64, n: usize) -> Design {
        random_design_with(seed, n, &[(2, 7), (1, 5), (2, 3)])
    }

    fn random_design_with(seed: u64, n: usize, shapes: &[(usize, usize)]) -> Design {
        let mut g = Lcg(seed);
        let p = 2;
        let mut x = Mat::<f64>::zeros(n, p);
        let mut y = vec![0.0; n];
        for i in 0..n {
            x[(i, 0)] = 1.0;
            x[(i, 1)] = g.normal();
            y[i] = 1.0 + 0.5 * x[(i, 1)] + g.normal();
        }
        let mut terms = Vec::new();
        for (k, &(q, nl)) in shapes.iter().enumerate() {
            let mut codes = vec![0i32; n];
            let mut z = vec![0.0; n * q];
            for i in 0..n {
                codes[i] = if i < nl { i as i32 } else { g.below(nl) as i32 };
                z[i * q] = 1.0;
                for c in 1..q {
                    z[i * q + c] = g.normal();
                }
                y[i] += g.normal();
            }
            terms.push(Term::new(&codes, z, q, nl, k).unwrap());
        }
        Design { y, x, terms }
    }

    /// Dense brute force: Z, Λ, and the full Cholesky of the blocked system.
    fn dense_objective(d: &Design, theta: &[f64], reml: bool) -> (f64, Mat<f64>, Mat<f64>) {
        let n = d.y.len();
        let p = d.x.ncols();
        let qtot: usize = d.terms.iter().map(|t| t.q * t.n_levels).sum();
        let mut zl = Mat::<f64>::zeros(n, qtot);
        let mut off = 0;
        let mut toff = 0;
        for t in &d.terms {
            let nt = t.q * (t.q + 1) / 2;
            let mut lam = vec![0.0; t.q * t.q];
            theta_to_lambda(&theta[toff..toff + nt], t.q, &mut lam);
            for i in 0..n {
                let lev = t.codes[i] as usize;
                let z = t.z_row(i);
                for c in 0..t.q {
                    // (zᵀ λ)[c] = Σ_{r ≥ c} z[r] λ[r, c]
                    let mut s = 0.0;
                    for r in c..t.q {
                        s += z[r] * lam[c * t.q + r];
                    }
                    zl[(i, off + lev * t.q + c)] = s;
                }
            }
            off += t.q * t.n_levels;
            toff += nt;
        }
        let dim = qtot + p + 1;
        let mut w = Mat::<f64>::zeros(n, dim);
        w.as_mut().get_mut(.., ..qtot).copy_from(zl.as_ref());
        w.as_mut().get_mut(.., qtot..qtot + p).copy_from(d.x.as_ref());
        for i in 0..n {
            w[(i, dim - 1)] = d.y[i];
        }
        let mut a = Mat::<f64>::zeros(dim, dim);
        matmul(a.as_mut(), Accum::Replace, w.transpose(), w.as_ref(), 1.0, Par::Seq);
        for i in 0..qtot {
            a[(i, i)] += 1.0;
        }
        let a_copy = a.clone();
        let llt = a.llt(faer::Side::Lower).unwrap();
        let l = llt.L().to_owned();
        let mut ld = 0.0;
        for i in 0..qtot {
            ld += 2.0 * l[(i, i)].ln();
        }
        let mut ldx = 0.0;
        for i in qtot..qtot + p {
            ldx += 2.0 * l[(i, i)].ln();
        }
        let r2 = l[(dim - 1, dim - 1)].powi(2);
        let nf = n as f64;
        let obj = if reml {
            let nmp = nf - p as f64;
            ld + ldx + nmp * (1.0 + (2.0 * std::f64::consts::PI * r2 / nmp).ln())
        } else {
            ld + nf * (1.0 + (2.0 * std::f64::consts::PI * r2 / nf).ln())
        };
        (obj, l, a_copy)
    }

    fn random_theta(g: &mut Lcg, model: &Model) -> Vec<f64> {
        model
            .lower_bounds()
            .iter()
            .map(|&lb| if lb == 0.0 { 0.2 + 1.5 * g.next() } else { g.normal() * 0.5 })
            .collect()
    }

    /// A design whose rest block is clustered as InstEval's is: 600 "students" (term 0), each in
    /// one of 10 departments, rating 6–25 of the department's 32 "lecturers" (term 1, 320
    /// levels, a non-constant z) and one of its 2 "services" (term 2, 20 levels).
    fn clustered_design(seed: u64) -> Design {
        let mut g = Lcg(seed);
        let (students, depts, per_dept) = (600usize, 10usize, 32usize);
        let (mut c0, mut c1, mut c2) = (Vec::new(), Vec::new(), Vec::new());
        let (mut z1, mut y, mut x1) = (Vec::new(), Vec::new(), Vec::new());
        for s in 0..students {
            let dept = s % depts;
            let k = 6 + g.below(20);
            for _ in 0..k {
                c0.push(s as i32);
                c1.push((dept * per_dept + g.below(per_dept)) as i32);
                c2.push((2 * dept + g.below(2)) as i32);
                z1.push(1.0 + 0.3 * g.normal());
                x1.push(g.normal());
                y.push(g.normal() + 0.2 * (s % 7) as f64);
            }
        }
        let n = y.len();
        let mut x = Mat::<f64>::zeros(n, 2);
        for i in 0..n {
            x[(i, 0)] = 1.0;
            x[(i, 1)] = x1[i];
        }
        let terms = vec![
            Term::new(&c0, vec![1.0; n], 1, students, 0).unwrap(),
            Term::new(&c1, z1, 1, depts * per_dept, 1).unwrap(),
            Term::new(&c2, vec![1.0; n], 1, 2 * depts, 2).unwrap(),
        ];
        Design { y, x, terms }
    }

    #[test]
    fn estimates_from_the_sparse_factor_equal_the_dense_ones() {
        // Without conditional covariances the modes come from the objective's sparse factor
        // (the elimination-tree cut; faer's supernodal factor for seed 2): the same estimates.
        for seed in 1..4u64 {
            let d = clustered_design(seed);
            for reml in [false, true] {
                let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), reml).unwrap();
                assert!(model.sparse.as_ref().expect("a sparse rest block").is_split());
                if seed == 2 {
                    model.sparse = model.sparse.as_ref().map(|sp| sp.without_split());
                }
                let mut g = Lcg(seed * 17);
                for _ in 0..3 {
                    let theta = random_theta(&mut g, &model);
                    let dense = model.estimates(&theta).unwrap();
                    let sparse = model.estimates_with(&theta, false).unwrap();
                    assert!(sparse.b_cond_cov.is_empty() && dense.b_cond_cov.len() == 3);
                    let close = |a: &[f64], b: &[f64], what: &str| {
                        let scale = b.iter().fold(0.0f64, |s, v| s.max(v.abs())).max(1e-300);
                        for (i, (x, y)) in a.iter().zip(b).enumerate() {
                            assert!((x - y).abs() < 1e-9 * scale, "seed {seed} reml {reml} {what}[{i}]: {x} vs {y}");
                        }
                    };
                    close(&[sparse.objective], &[dense.objective], "objective");
                    close(&sparse.beta, &dense.beta, "beta");
                    close(&sparse.beta_cov, &dense.beta_cov, "beta_cov");
                    close(&[sparse.sigma], &[dense.sigma], "sigma");
                    for k in 0..3 {
                        close(&sparse.b[k], &dense.b[k], "b");
                    }
                    close(&sparse.fitted, &dense.fitted, "fitted");
                }
            }
        }
    }

    #[test]
    fn sparse_rest_block_gives_the_dense_objective() {
        for seed in 1..4u64 {
            let d = clustered_design(seed);
            for reml in [false, true] {
                let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), reml).unwrap();
                assert!(model.sparse.is_some(), "seed {seed}: the clustered rest block should be factored sparse");
                let mut g = Lcg(seed * 31);
                for _ in 0..4 {
                    let mut theta = random_theta(&mut g, &model);
                    if g.next() < 0.3 {
                        theta[1] = 0.0; // a boundary θ: the rest λ's may be zero
                    }
                    let sparse = model.objective(&theta).unwrap();
                    model.update_l(&theta).unwrap();
                    let dense = model.objective_from_l(Logdets::default());
                    assert!((sparse - dense).abs() < 1e-10 * dense.abs(), "seed {seed} reml {reml}: {sparse} vs {dense}");
                    // A clone factors on its own workspace and agrees.
                    let mut clone = model.clone();
                    assert_eq!(clone.objective(&theta).unwrap(), sparse);
                    // So do the Schur columns formed on two threads (same arithmetic per column).
                    clone.parallel_schur = true;
                    assert_eq!(clone.objective(&theta).unwrap(), sparse);
                    clone.update_l(&theta).unwrap();
                    assert_eq!(clone.objective_from_l(Logdets::default()), dense);
                }
            }
        }
        // And the dense path itself against brute force, once.
        let d = clustered_design(9);
        let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
        let theta = [0.7, 0.4, 0.9];
        let (brute, _, _) = dense_objective(&d, &theta, true);
        let ours = model.objective(&theta).unwrap();
        assert!((ours - brute).abs() < 1e-8 * brute.abs(), "{ours} vs {brute}");
    }

    #[test]
    fn non_finite_data_are_found_after_the_crossproduct() {
        // The check reads A₃₃'s diagonal; the culprit's column and row come from a search.
        let d = random_design(5, 200);
        let mut y = d.y.clone();
        y[5] = f64::NAN;
        let err = Model::new(&y, d.x.as_ref(), d.terms.clone(), true).unwrap_err();
        assert!(matches!(&err, CoreError::NonFinite { what, index: 5 } if what == "the response"), "{err:?}");
        let mut x = d.x.clone();
        x[(7, 1)] = f64::INFINITY;
        let err = Model::new(&d.y, x.as_ref(), d.terms.clone(), true).unwrap_err();
        assert!(matches!(&err, CoreError::NonFinite { what, index: 7 } if what.starts_with("column 1 ")), "{err:?}");
        // Finite values whose squares overflow are not refused.
        let mut y = d.y.clone();
        y[3] = 1e200;
        assert!(Model::new(&y, d.x.as_ref(), d.terms.clone(), true).is_ok());
    }

    #[test]
    fn a_dense_schur_complement_stays_dense() {
        // 300 × 300 fully crossed at random: S fills in, the sparse factor would not pay.
        let d = random_design_with(5, 6000, &[(1, 400), (1, 300)]);
        let model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), false).unwrap();
        assert!(model.sparse.is_none());
    }

    #[test]
    fn single_term_objective_equals_the_stored_factor() {
        for (seed, q) in [(1u64, 1usize), (2, 2), (3, 3), (4, 5)] {
            let d = random_design_with(seed, 400, &[(q, 37)]);
            for reml in [false, true] {
                let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), reml).unwrap();
                let mut g = Lcg(seed * 13);
                for _ in 0..3 {
                    let theta = random_theta(&mut g, &model);
                    let fused = model.objective(&theta).unwrap();
                    model.update_l(&theta).unwrap();
                    let stored = model.objective_from_l(Logdets::default());
                    let (brute, _, _) = dense_objective(&d, &theta, reml);
                    assert!((fused - stored).abs() < 1e-11 * stored.abs(), "q {q}: {fused} vs {stored}");
                    assert!((fused - brute).abs() < 1e-8 * brute.abs(), "q {q}: {fused} vs {brute}");
                }
            }
        }
    }

    #[test]
    fn square_root_free_pass_equals_the_cholesky_pass() {
        // Thousands of levels (the pivots' mantissas are renormalised every 256), θ from 10⁻⁴
        // to 10³ (pivots near 1 and near 10⁶ per level).
        // p + 1 of 2, 3 and 4 (constant in the pass), 6 (at run time) and 9 (the Cholesky pass).
        for (seed, q, levels, p) in
            [(5u64, 1usize, 3000usize, 2usize), (6, 2, 1500, 2), (7, 2, 300, LDL_MAX_P1), (8, 2, 400, 1), (9, 1, 400, 3), (10, 2, 400, 5)]
        {
            let mut d = random_design_with(seed, 4 * levels, &[(q, levels)]);
            if p != d.x.ncols() {
                let mut g = Lcg(seed);
                d.x = Mat::from_fn(d.y.len(), p, |i, c| if c == 0 { 1.0 } else { g.normal() + (i % (c + 1)) as f64 });
            }
            for reml in [false, true] {
                let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), reml).unwrap();
                for scale in [1e-4, 0.3, 1.0, 1e3] {
                    let theta: Vec<f64> = model.lower_bounds().iter().map(|&lb| if lb == 0.0 { scale } else { 0.4 * scale }).collect();
                    let fused = model.objective(&theta).unwrap();
                    model.update_l(&theta).unwrap();
                    let stored = model.objective_from_l(Logdets::default());
                    assert!((fused - stored).abs() < 1e-11 * stored.abs(), "q {q} p {p} θ×{scale}: {fused} vs {stored}");
                }
            }
        }
    }

    #[test]
    fn schur_panels_equal_the_column_by_column_build() {
        // 100 rest rows: panels of 32, 32, 32 and 4 columns; q₁ from 1 to 4 (the generic path).
        for (seed, q) in [(11u64, 1usize), (12, 2), (13, 3), (14, 4)] {
            let d = random_design_with(seed, 3000, &[(q, 150), (1, 100)]);
            let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
            let theta = random_theta(&mut Lcg(seed), &model);
            model.update_l(&theta).unwrap();
            let (a, l21, scale, lam1) = (&model.a, &model.l.l21_vals, &model.rest_scale, &model.lambdas[0]);
            let m = model.m;
            let mut by_column = Mat::<f64>::zeros(m, m);
            for b in 0..m {
                let col = by_column.as_mut().col_mut(b).try_as_col_major_mut().unwrap().as_slice_mut();
                schur_column(a, l21, scale, lam1, q, true, b, col);
            }
            let mut by_panel = Mat::<f64>::zeros(m, m);
            for (k, b0) in (0..m).step_by(SCHUR_PANEL).enumerate() {
                let width = SCHUR_PANEL.min(m - b0);
                schur_panel(a, l21, scale, lam1, q, true, k, by_panel.as_mut().subcols_mut(b0, width));
            }
            for b in 0..m {
                for r in b..m {
                    assert_eq!(by_panel[(r, b)].to_bits(), by_column[(r, b)].to_bits(), "q {q} ({r}, {b})");
                }
            }
            assert!(by_column[(m - 1, 0)] != 0.0 || by_column[(m - 1, 1)] != 0.0);
        }
    }

    #[test]
    fn panelled_z_cross_xy_equals_the_column_by_column_sums() {
        // 1000 rows: seven panels of 128 and one of 104; q from 1 to 2 in every block.
        let d = random_design(21, 1000);
        let model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
        let (p, m) = (d.x.ncols(), model.m);
        let (a31t, a32t, xty) = z_cross_xy(&d.y, d.x.as_ref(), &d.terms, &model.rest_base, m);
        let column = |t: usize| -> Vec<f64> { if t < p { (0..d.y.len()).map(|i| d.x[(i, t)]).collect() } else { d.y.clone() } };
        for t in 0..=p {
            let v = column(t);
            let t1 = &d.terms[0];
            let mut out1 = vec![0.0; t1.n_levels * t1.q];
            let mut out_rest = vec![0.0; m];
            let mut dot = 0.0;
            for (i, &vi) in v.iter().enumerate() {
                for c in 0..t1.q {
                    out1[t1.codes[i] as usize * t1.q + c] += t1.z_row(i)[c] * vi;
                }
                for (k, tk) in d.terms.iter().enumerate().skip(1) {
                    for c in 0..tk.q {
                        out_rest[model.rest_base[k][tk.codes[i] as usize] + c] += tk.z_row(i)[c] * vi;
                    }
                }
                dot += vi * d.y[i];
            }
            for (r, want) in out1.iter().enumerate() {
                assert_eq!(a31t[(r, t)].to_bits(), want.to_bits(), "A31 ({r}, {t})");
            }
            for (r, want) in out_rest.iter().enumerate() {
                assert_eq!(a32t[(r, t)].to_bits(), want.to_bits(), "A32 ({r}, {t})");
            }
            assert_eq!(xty[t].to_bits(), dot.to_bits(), "[X y]ᵀy ({t})");
            assert_eq!(model.a.a33[(p, t)].to_bits(), dot.to_bits());
        }
    }

    #[test]
    fn batched_log_sum_equals_the_sum_of_logs() {
        let mut g = Lcg(3);
        let mut values: Vec<f64> = (0..10_000).map(|_| 1.0 + 50.0 * g.next()).collect();
        values.extend([1e150, 1e-150, 1e99, 1e99, 1e99, 3.0, 1e-99, 1e-99, 0.5]);
        let direct: f64 = values.iter().map(|v| v.ln()).sum();
        let batched = sum_ln(values.iter().copied());
        assert!((batched - direct).abs() < 1e-12 * direct.abs(), "{batched} vs {direct}");
        assert_eq!(sum_ln([2.0, 0.0].into_iter()), f64::NEG_INFINITY);
        assert!(sum_ln([2.0, -1.0].into_iter()).is_nan());
    }

    #[test]
    fn parallel_rest_block_equals_the_sequential_one() {
        // m = 2,100 ≥ PARALLEL_REST_MIN: the Schur columns and the dense factor run on rayon.
        let d = random_design_with(8, 20_000, &[(1, 3_000), (1, 2_100)]);
        let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
        assert!(model.m >= PARALLEL_REST_MIN && matches!(model.par, Par::Rayon(_)));
        let mut sequential = model.clone();
        sequential.set_sequential();
        for theta in [[0.8, 0.3], [0.1, 1.7], [0.0, 0.6]] {
            let (par, seq) = (model.objective(&theta).unwrap(), sequential.objective(&theta).unwrap());
            assert!((par - seq).abs() < 1e-10 * seq.abs(), "{par} vs {seq}");
        }
    }

    #[test]
    fn estimates_on_two_threads_equal_the_sequential_ones() {
        // m = 700 ≥ PARALLEL_ESTIMATES_MIN: the dense factor, its inverse and the first term's
        // conditional covariances run on rayon's threads.
        let d = random_design_with(31, 12_000, &[(1, 1_500), (1, 700)]);
        let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
        assert!(model.parallel_estimates);
        let mut sequential = model.clone();
        sequential.set_sequential();
        assert!(!sequential.parallel_estimates);
        let theta = [0.6, 0.9];
        let (par, seq) = (model.estimates(&theta).unwrap(), sequential.estimates(&theta).unwrap());
        assert!(matches!(model.par, Par::Seq), "estimates leave the model's evaluations sequential");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-300);
        assert!(close(par.objective, seq.objective));
        assert!(par.beta.iter().zip(&seq.beta).all(|(a, b)| close(*a, *b)));
        for (pk, sk) in par.b.iter().zip(&seq.b).chain(par.b_cond_cov.iter().zip(&seq.b_cond_cov)) {
            assert!(pk.iter().zip(sk).all(|(a, b)| close(*a, *b)));
        }
        assert!(par.fitted.iter().zip(&seq.fitted).all(|(a, b)| close(*a, *b)));
    }

    #[test]
    fn objective_matches_dense_brute_force() {
        for seed in 1..6u64 {
            let d = random_design(seed, 60);
            for reml in [false, true] {
                let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), reml).unwrap();
                let mut g = Lcg(seed * 77);
                for _ in 0..4 {
                    let theta = random_theta(&mut g, &model);
                    let ours = model.objective(&theta).unwrap();
                    let (dense, _, _) = dense_objective(&d, &theta, reml);
                    assert!((ours - dense).abs() < 1e-8 * dense.abs().max(1.0), "seed {seed} reml {reml}: {ours} vs {dense}");
                }
            }
        }
    }

    #[test]
    fn objective_matches_dense_when_every_rest_term_is_scalar() {
        // The all-scalar rest block takes its own (fused, column-wise) path.
        for (seed, shapes) in [(21u64, vec![(1usize, 9usize), (1, 6), (1, 4)]), (22, vec![(3, 8), (1, 5)])] {
            let d = random_design_with(seed, 70, &shapes);
            for reml in [false, true] {
                let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), reml).unwrap();
                let mut g = Lcg(seed);
                for _ in 0..3 {
                    let theta = random_theta(&mut g, &model);
                    let ours = model.objective(&theta).unwrap();
                    let (dense, _, _) = dense_objective(&d, &theta, reml);
                    assert!((ours - dense).abs() < 1e-8 * dense.abs().max(1.0), "{ours} vs {dense}");
                }
            }
        }
    }

    #[test]
    fn blocked_factor_reproduces_the_blocked_matrix() {
        // L·Lᵀ = ΛᵀAΛ + I in every block the core stores (block 1 diag, rest, X/y).
        let d = random_design(11, 50);
        let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), false).unwrap();
        let mut g = Lcg(5);
        let theta = random_theta(&mut g, &model);
        model.update_l(&theta).unwrap();
        // The core lays out each rest term's levels by frequency (`rest_level_bases`): the
        // oracle gets the same model with its rest levels relabelled in that order.
        let mut relabelled = Design {
            y: d.y.clone(),
            x: d.x.clone(),
            terms: d.terms.clone(),
        };
        for k in 1..relabelled.terms.len() {
            let q = relabelled.terms[k].q;
            for c in relabelled.terms[k].codes.iter_mut() {
                *c = ((model.rest_base[k][*c as usize] - model.rest_offsets[k]) / q) as u32;
            }
        }
        assert!(relabelled.terms.iter().zip(&d.terms).any(|(a, b)| a.codes != b.codes), "the layout is a no-op here");
        let (_, ldense, a) = dense_objective(&relabelled, &theta, false);
        // The dense factor is unique, so diagonal entries of ours equal its diagonal.
        let q1 = model.terms[0].q;
        let l1 = model.terms[0].n_levels;
        for j in 0..l1 {
            for c in 0..q1 {
                let ours = model.l.l11[j * q1 * q1 + c * q1 + c];
                assert!((ours - ldense[(j * q1 + c, j * q1 + c)]).abs() < 1e-10);
            }
        }
        let off = q1 * l1;
        for r in 0..model.m {
            for c in 0..=r {
                assert!((model.l.l22[(r, c)] - ldense[(off + r, off + c)]).abs() < 1e-9);
            }
        }
        let off3 = off + model.m;
        for r in 0..=model.p {
            for c in 0..=r {
                assert!((model.l.l33[(r, c)] - ldense[(off3 + r, off3 + c)]).abs() < 1e-9);
            }
        }
        // and the dense factor reproduces A (so ours does too).
        let mut llt = Mat::<f64>::zeros(a.nrows(), a.ncols());
        matmul(llt.as_mut(), Accum::Replace, ldense.as_ref(), ldense.transpose(), 1.0, Par::Seq);
        for r in 0..a.nrows() {
            for c in 0..a.ncols() {
                assert!((llt[(r, c)] - a[(r, c)]).abs() < 1e-9 * a[(r, c)].abs().max(1.0));
            }
        }
    }

    #[test]
    fn estimates_solve_the_penalised_least_squares_problem() {
        // At any θ, (u, β) minimise ‖y − Xβ − ZΛu‖² + ‖u‖²: the normal equations hold.
        let d = random_design(3, 70);
        for reml in [false, true] {
            let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), reml).unwrap();
            let theta = random_theta(&mut Lcg(9), &model);
            let est = model.estimates(&theta).unwrap();
            let n = d.y.len();
            // Xᵀ resid = 0.
            for c in 0..d.x.ncols() {
                let s: f64 = (0..n).map(|i| d.x[(i, c)] * est.resid[i]).sum();
                assert!(s.abs() < 1e-8, "X'r = {s}");
            }
            // For b = Λu: Λᵀ Zᵀ resid = u, checked through the term with scalar λ (term 1).
            let t = &d.terms[1];
            let lam = theta[model.theta_offsets[1]];
            for lev in 0..t.n_levels {
                let s: f64 = (0..n).filter(|&i| t.codes[i] as usize == lev).map(|i| est.resid[i]).sum();
                let u = est.b[1][lev] / lam;
                assert!((lam * s - u).abs() < 1e-8, "level {lev}: {} vs {}", lam * s, u);
            }
            // σ² = r²/dof with r² = ‖resid‖² + ‖u‖².
            let mut pen = 0.0;
            let mut u_all = Vec::new();
            for (k, tk) in d.terms.iter().enumerate() {
                let off = model.theta_offsets[k];
                let mut lamk = vec![0.0; tk.q * tk.q];
                theta_to_lambda(&theta[off..off + tk.q * (tk.q + 1) / 2], tk.q, &mut lamk);
                for lev in 0..tk.n_levels {
                    let mut bb = est.b[k][lev * tk.q..(lev + 1) * tk.q].to_vec();
                    solve_lower_small(&lamk, tk.q, &mut bb);
                    u_all.extend(bb);
                }
            }
            for u in &u_all {
                pen += u * u;
            }
            let rss: f64 = est.resid.iter().map(|r| r * r).sum();
            let dof = if reml { (n - 2) as f64 } else { n as f64 };
            assert!(((rss + pen) / dof - est.sigma * est.sigma).abs() < 1e-9);
        }
    }

    #[test]
    fn weighted_model_is_the_prescaled_model_less_log_det_w() {
        // Weights w: the objective is the unit-weight objective on √w-scaled rows minus Σ log w,
        // for REML and ML; fitted values and residuals come back on the original scale.
        let d = random_design(6, 50);
        let mut g = Lcg(17);
        let w: Vec<f64> = (0..d.y.len()).map(|_| 0.2 + 3.0 * g.next()).collect();
        let sw: Vec<f64> = w.iter().map(|v| v.sqrt()).collect();
        let ys: Vec<f64> = d.y.iter().zip(&sw).map(|(v, s)| v * s).collect();
        let xs = Mat::<f64>::from_fn(d.x.nrows(), d.x.ncols(), |i, j| d.x[(i, j)] * sw[i]);
        let terms_s: Vec<Term> = d
            .terms
            .iter()
            .map(|t| {
                let mut t = t.clone();
                for (row, s) in t.z.chunks_exact_mut(t.q).zip(&sw) {
                    row.iter_mut().for_each(|v| *v *= s);
                }
                t
            })
            .collect();
        let log_det_w: f64 = w.iter().map(|v| v.ln()).sum();
        let theta = vec![0.7, -0.2, 0.5, 1.3, 0.4, 0.1, 0.8];
        for reml in [true, false] {
            let mut weighted =
                Model::with_weights(&d.y, d.x.as_ref(), d.terms.clone(), reml, &w).unwrap();
            let mut scaled = Model::new(&ys, xs.as_ref(), terms_s.clone(), reml).unwrap();
            let (a, b) = (
                weighted.objective(&theta).unwrap(),
                scaled.objective(&theta).unwrap(),
            );
            assert!((a - (b - log_det_w)).abs() < 1e-10 * a.abs());
            let (ea, eb) = (
                weighted.estimates(&theta).unwrap(),
                scaled.estimates(&theta).unwrap(),
            );
            for i in 0..d.y.len() {
                assert!(
                    (ea.fitted[i] * sw[i] - eb.fitted[i]).abs() < 1e-9 * (1.0 + eb.fitted[i].abs())
                );
                assert!((ea.fitted[i] + ea.resid[i] - d.y[i]).abs() < 1e-9 * (1.0 + d.y[i].abs()));
            }
            assert!((ea.sigma - eb.sigma).abs() < 1e-12 * eb.sigma);
        }
        let bad = vec![1.0; d.y.len() - 1];
        assert!(Model::with_weights(&d.y, d.x.as_ref(), d.terms.clone(), true, &bad).is_err());
        let mut negative = w.clone();
        negative[3] = -1.0;
        assert!(matches!(
            Model::with_weights(&d.y, d.x.as_ref(), d.terms.clone(), true, &negative),
            Err(CoreError::NonFinite { index: 3, .. })
        ));
    }

    /// Crossed scalar terms with term 0 balanced in blocks: level j of term 0 has `sizes[j % k]`
    /// observations, so its levels fall into k Schur groups (equal A₁₁ⱼ).
    fn balanced_design(seed: u64, sizes: &[usize], l0: usize, rest: &[usize]) -> Design {
        let mut g = Lcg(seed);
        let mut codes0 = Vec::new();
        for j in 0..l0 {
            codes0.extend(std::iter::repeat_n(j as i32, sizes[j % sizes.len()]));
        }
        let n = codes0.len();
        let mut x = Mat::<f64>::zeros(n, 2);
        let mut y = vec![0.0; n];
        for i in 0..n {
            x[(i, 0)] = 1.0;
            x[(i, 1)] = g.normal();
            y[i] = 1.0 + 0.5 * x[(i, 1)] + 2.0 * g.normal();
        }
        let mut terms = vec![Term::new(&codes0, vec![1.0; n], 1, l0, 0).unwrap()];
        for (k, &nl) in rest.iter().enumerate() {
            let codes: Vec<i32> = (0..n).map(|i| if i < nl { i as i32 } else { g.below(nl) as i32 }).collect();
            terms.push(Term::new(&codes, vec![1.0; n], 1, nl, k + 1).unwrap());
        }
        Design { y, x, terms }
    }

    #[test]
    fn group_sums_by_products_equal_the_scattered_ones() {
        // q₁ = 1, 2, 3, levels reaching all or part of the rest rows, more levels than a chunk.
        for (seed, q, n_levels, m, per_level) in [(1u64, 1usize, 300usize, 40usize, 25usize), (2, 2, 70, 90, 12), (3, 3, 20, 15, 15), (4, 1, 5, 200, 3)] {
            let mut g = Lcg(seed);
            let (mut ptr, mut rows, mut vals) = (vec![0usize], Vec::new(), Vec::new());
            for _ in 0..n_levels {
                let mut level: Vec<usize> = (0..per_level).map(|_| g.below(m)).collect();
                level.sort_unstable();
                level.dedup();
                for &r in &level {
                    rows.push(r);
                    vals.extend((0..q).map(|_| 2.0 * g.next() - 0.5));
                }
                ptr.push(rows.len());
            }
            let levels: Vec<usize> = (0..n_levels).collect();
            let n_mats = q * (q + 1) / 2;
            let mut scattered: Vec<Mat<f64>> = (0..n_mats).map(|_| Mat::<f64>::zeros(m, m)).collect();
            group_sums_scattered(q, &levels, &ptr, &rows, &vals, &mut scattered);
            let mut local = vec![usize::MAX; m];
            let mut reached: Vec<usize> = rows.clone();
            reached.sort_unstable();
            reached.dedup();
            for (i, &r) in reached.iter().enumerate() {
                local[r] = i;
            }
            let mut products: Vec<Mat<f64>> = (0..n_mats).map(|_| Mat::<f64>::zeros(m, m)).collect();
            group_sums_by_products(q, &levels, &ptr, &rows, &vals, &reached, &local, &mut products);
            for k in 0..n_mats {
                let scale = scattered[k].norm_max();
                for b in 0..m {
                    for r in b..m {
                        let (x, y) = (products[k][(r, b)], scattered[k][(r, b)]);
                        assert!((x - y).abs() <= 1e-12 * scale, "q {q} mat {k} ({r}, {b}): {x} vs {y}");
                    }
                }
            }
            assert!(scattered[0].norm_max() > 0.0);
        }
    }

    #[test]
    fn grouped_schur_updates_equal_the_dense_objective() {
        // One group (balanced), two groups, and a weighted model (weights break the equal A₁₁ⱼ
        // of most levels, so few or no groups): every objective equals the dense brute force.
        for (seed, sizes) in [(3u64, vec![12usize]), (4, vec![12, 9]), (5, vec![10, 11, 13])] {
            let d = balanced_design(seed, &sizes, 40, &[6, 4]);
            let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
            assert_eq!(model.a.schur_groups.len(), sizes.len().min(MAX_SCHUR_GROUPS));
            for theta in [vec![0.8, 0.5, 1.3], vec![1.7, 0.0, 0.2], vec![0.0, 0.9, 0.4]] {
                let ours = model.objective(&theta).unwrap();
                let (dense, _, _) = dense_objective(&d, &theta, true);
                assert!((ours - dense).abs() < 1e-9 * dense.abs(), "{sizes:?} {theta:?}: {ours} vs {dense}");
            }
        }
        // A first term with a slope: levels with equal A₁₁ⱼ blocks (equal sizes and equal
        // counts of x = 1) form groups, each with three dense updates.
        for (seed, sizes) in [(7u64, vec![14usize]), (8, vec![14, 11])] {
            let d0 = balanced_design(seed, &sizes, 40, &[6, 4]);
            let n = d0.y.len();
            let codes0: Vec<i32> = d0.terms[0].codes.iter().map(|&c| c as i32).collect();
            let mut seen = vec![0usize; 40];
            let mut z = Vec::with_capacity(2 * n);
            for &c in &codes0 {
                z.extend([1.0, (seen[c as usize] % 3 == 0) as u8 as f64]);
                seen[c as usize] += 1;
            }
            let mut terms = d0.terms.clone();
            terms[0] = Term::new(&codes0, z, 2, 40, 0).unwrap();
            let d = Design { y: d0.y, x: d0.x, terms };
            let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
            assert_eq!(model.a.schur_groups.len(), sizes.len());
            assert!(model.a.schur_groups.iter().all(|g| g.s.len() == 3));
            for theta in [vec![0.8, -0.4, 0.5, 1.3, 0.6], vec![1.7, 0.3, 0.0, 0.2, 1.1], vec![0.0, 0.0, 0.9, 0.4, 0.0]] {
                let ours = model.objective(&theta).unwrap();
                let (dense, _, _) = dense_objective(&d, &theta, true);
                assert!((ours - dense).abs() < 1e-9 * dense.abs(), "{sizes:?} {theta:?}: {ours} vs {dense}");
                let est = model.estimates(&theta).unwrap();
                assert!((est.objective - dense).abs() < 1e-9 * dense.abs());
            }
        }
        // A vector rest term: no groups (the update is not one weight per group).
        let d = random_design_with(6, 200, &[(1, 30), (2, 6), (1, 4)]);
        let model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
        assert!(model.a.schur_groups.is_empty());
    }

    #[test]
    fn beta_covariance_equals_the_full_estimates() {
        let d = random_design(9, 70);
        let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
        let theta = vec![0.9, 0.2, 0.6, 1.1, 0.3, -0.1, 0.7];
        let (sigma, cov) = model.beta_covariance(&theta).unwrap();
        let est = model.estimates(&theta).unwrap();
        assert_eq!(sigma, est.sigma);
        assert_eq!(cov, est.beta_cov);
    }

    #[test]
    fn single_term_model_has_no_rest_block() {
        let mut d = random_design(4, 40);
        d.terms.truncate(1);
        let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
        assert_eq!(model.m, 0);
        let theta = vec![0.8, 0.1, 0.4];
        let ours = model.objective(&theta).unwrap();
        let (dense, _, _) = dense_objective(&d, &theta, true);
        assert!((ours - dense).abs() < 1e-9 * dense.abs());
    }

    #[test]
    fn with_response_equals_a_fresh_model_on_the_new_response() {
        let d = random_design(8, 60);
        let model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
        let mut g = Lcg(31);
        let y2: Vec<f64> = (0..d.y.len()).map(|_| 3.0 * g.normal() - 1.0).collect();
        let mut swapped = model.with_response(&y2).unwrap();
        let mut fresh = Model::new(&y2, d.x.as_ref(), d.terms.clone(), true).unwrap();
        let close = |a: &Mat<f64>, b: &Mat<f64>| {
            assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
            for c in 0..a.ncols() {
                for r in 0..a.nrows() {
                    assert!((a[(r, c)] - b[(r, c)]).abs() <= 1e-12 * b[(r, c)].abs().max(1.0), "({r}, {c})");
                }
            }
        };
        close(&swapped.a.a31t, &fresh.a.a31t);
        close(&swapped.a.a32t, &fresh.a.a32t);
        close(&swapped.a.a33, &fresh.a.a33);
        assert_eq!(*swapped.y, y2);
        let theta = random_theta(&mut g, &fresh);
        let (ours, theirs) = (swapped.estimates(&theta).unwrap(), fresh.estimates(&theta).unwrap());
        assert!((ours.objective - theirs.objective).abs() < 1e-9 * theirs.objective.abs());
        for (a, b) in ours.beta.iter().zip(&theirs.beta) {
            assert!((a - b).abs() < 1e-9 * b.abs().max(1.0));
        }
        assert!(model.with_response(&y2[1..]).is_err());
    }

    #[test]
    fn estimates_do_not_depend_on_how_rest_levels_are_labelled() {
        // The rest block is laid out by level frequency, so relabelling a rest term's levels
        // changes nothing but the order in which its results are reported.
        let d = random_design_with(12, 90, &[(2, 9), (1, 7), (2, 4)]);
        let mut g = Lcg(77);
        let mut relabelled = d.terms.clone();
        let mut perms = vec![Vec::new(); d.terms.len()];
        for k in 1..d.terms.len() {
            let nl = d.terms[k].n_levels;
            let mut perm: Vec<u32> = (0..nl as u32).collect();
            for i in (1..nl).rev() {
                perm.swap(i, g.below(i + 1));
            }
            relabelled[k].codes.iter_mut().for_each(|c| *c = perm[*c as usize]);
            perms[k] = perm;
        }
        let mut model = Model::new(&d.y, d.x.as_ref(), d.terms.clone(), true).unwrap();
        let mut other = Model::new(&d.y, d.x.as_ref(), relabelled, true).unwrap();
        let theta = random_theta(&mut g, &model);
        let (ours, theirs) = (model.estimates(&theta).unwrap(), other.estimates(&theta).unwrap());
        assert!((ours.objective - theirs.objective).abs() < 1e-10 * theirs.objective.abs());
        for (a, b) in ours.fitted.iter().zip(&theirs.fitted) {
            assert!((a - b).abs() < 1e-10 * b.abs().max(1.0));
        }
        for k in 1..d.terms.len() {
            let q = d.terms[k].q;
            for lev in 0..d.terms[k].n_levels {
                let to = perms[k][lev] as usize;
                for c in 0..q {
                    let (a, b) = (ours.b[k][lev * q + c], theirs.b[k][to * q + c]);
                    assert!((a - b).abs() < 1e-10 * b.abs().max(1.0), "b: term {k} level {lev}");
                }
                for c in 0..q * q {
                    let (a, b) = (ours.b_cond_cov[k][lev * q * q + c], theirs.b_cond_cov[k][to * q * q + c]);
                    assert!((a - b).abs() < 1e-10 * b.abs().max(1.0), "cov: term {k} level {lev}");
                }
            }
        }
        for (a, b) in ours.b_cond_cov[0].iter().zip(&theirs.b_cond_cov[0]) {
            assert!((a - b).abs() < 1e-10 * b.abs().max(1.0));
        }
    }

    #[test]
    fn sparse_a22_is_the_dense_ones_lower_triangle_to_the_bit() {
        for (seed, shapes) in [(4u64, vec![(1, 40), (1, 300), (1, 7)]), (5, vec![(2, 25), (1, 280)]), (6, vec![(1, 60), (1, 260), (1, 9), (1, 4)])] {
            let d = random_design_with(seed, 3000, &shapes);
            let model = Model::new(&d.y, d.x.as_ref(), d.terms, false).unwrap();
            let dense = a22_dense(&model.terms, &model.rest_base, model.m);
            let (pattern, vals) = a22_lower(&model.terms, &model.rest_base, model.m);
            let mut k = 0;
            for b in 0..model.m {
                for r in b..model.m {
                    if dense[(r, b)] != 0.0 {
                        assert_eq!((pattern.row_idx[k], vals[k].to_bits()), (r, dense[(r, b)].to_bits()), "seed {seed} ({r}, {b})");
                        k += 1;
                    }
                }
                assert_eq!(pattern.col_ptr[b + 1], k, "seed {seed} column {b}");
            }
        }
    }

    #[test]
    fn a21_structure_from_the_codes_is_the_crossproducts() {
        // The sparse analysis runs from the level codes while the crossproduct is formed: the
        // two must agree on which rest rows each level of the first term reaches.
        for (seed, shapes) in [(1u64, vec![(1, 40), (1, 300), (1, 7)]), (2, vec![(2, 25), (1, 280)]), (3, vec![(1, 60), (1, 260), (1, 9), (1, 4)])] {
            let d = random_design_with(seed, 3000, &shapes);
            let model = Model::new(&d.y, d.x.as_ref(), d.terms, false).unwrap();
            let (ptr, rows) = level_rest_rows(&model.terms, &model.rest_base, model.m);
            assert_eq!(ptr, model.a.a21_ptr, "seed {seed}");
            assert_eq!(rows, model.a.a21_rows, "seed {seed}");
        }
    }

    #[test]
    fn bad_codes_are_reported_with_the_row() {
        let err = Term::new(&[0, 1, 5], vec![1.0; 3], 1, 2, 0).unwrap_err();
        assert_eq!(
            err,
            CoreError::CodeOutOfRange {
                term: 0,
                row: 2,
                code: 5,
                n_levels: 2
            }
        );
    }

    #[test]
    fn absurd_level_counts_are_too_large_not_an_overflow() {
        // q² · levels of the first term was multiplied in usize: 2² · 2⁶² overflowed (a panic
        // under overflow checks, a wrapped small estimate without them).
        let terms = vec![
            Term::new(&[0, 1, 2], vec![1.0; 6], 2, 1 << 62, 0).unwrap(),
            Term::new(&[0, 1, 0], vec![1.0; 3], 1, usize::MAX, 1).unwrap(),
        ];
        assert_eq!(Model::estimated_bytes(3, 1, &terms), u128::MAX);
        if available_memory_bytes().is_some() {
            let x = Mat::<f64>::from_fn(3, 1, |_, _| 1.0);
            let err = Model::new(&[1.0, 2.0, 4.0], x.as_ref(), terms[..1].to_vec(), false).unwrap_err();
            assert!(matches!(err, CoreError::TooLarge { .. }), "{err:?}");
        }
    }
}
