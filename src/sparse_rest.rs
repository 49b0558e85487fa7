//! The second ("rest") block of L factored sparse, for the objective only.
//!
//! With a scalar first term eliminated, the Schur complement S of the rest block has an entry
//! (r, b) only where rest levels r and b share an observation or a level of the first term.
//! In InstEval (lecturers after students) that pattern is clustered by department: S is 22 %
//! full, and with an approximate-minimum-degree ordering its Cholesky factor needs 1.2 × 10⁸
//! flops against 5.1 × 10⁸ dense. The pattern and the symbolic factorisation (ordering,
//! supernodes) are computed once per model; per θ the values of S are gathered column by column
//! from the same dense column the dense path builds, and faer's supernodal LLᵀ factors them,
//! or, where the elimination tree splits into subtrees that keep two threads busy, the cut
//! factorisation of [`crate::sparse_split`] does.
//!
//! The objective needs from the rest block only log|L₂₂|² and the update of the [X y] block,
//! L₃₃L₃₃ᵀ = A₃₃ − L₃₁L₃₁ᵀ − CᵀS⁻¹C with C = Λ_restᵀA₃₂ᵀ − Σⱼ L₂₁ⱼL₃₁ⱼᵀ, and CᵀS⁻¹C does not
//! depend on how S is factored. Everything else (estimates, conditional variances, the
//! influence diagnostics) uses the dense L₂₂.

use std::sync::Arc;

use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::cholesky::llt::factor::{LltParams, LltRegularization};
use faer::linalg::matmul::matmul;
use faer::sparse::linalg::cholesky::supernodal::SupernodalLltRef;
use faer::sparse::linalg::cholesky::{
    factorize_symbolic_cholesky, CholeskySymbolicParams, SymbolicCholesky, SymbolicCholeskyRaw,
    SymmetricOrdering,
};
use faer::sparse::linalg::SupernodalThreshold;
use faer::sparse::{SparseColMatRef, SymbolicSparseColMatRef};
use faer::{Accum, Conj, Mat, MatMut, MatRef, Par, Side, Spec};

use crate::sparse_split::{SplitPlan, SplitWork};
use crate::two_threads::{self, PhasedTasks};

/// S's values, written by panels on two threads (see [`SparseRest::fill`]).
struct Values(*mut f64);

/// A task of [`SparseRest::fill`]: the caller's `extra` work, or form panel k of S.
#[derive(Debug, Clone, Copy)]
enum FillTask {
    Extra,
    Panel(usize),
}

// SAFETY: the panels of one fill write disjoint ranges of the values.
unsafe impl Send for Values {}
unsafe impl Sync for Values {}

impl Values {
    /// A pointer to value `i` (a method, so closures capture the whole `Values`).
    fn at(&self, i: usize) -> *mut f64 {
        self.0.wrapping_add(i)
    }
}

/// Rest blocks smaller than this stay dense: their dense factor costs microseconds.
pub(crate) const SPARSE_REST_MIN: usize = 256;

/// A pattern fuller than this fraction of the lower triangle is not analysed (its factor fills
/// in to nearly dense, and the ordering of a dense pattern is itself costly).
pub(crate) const MAX_PATTERN_FILL: f64 = 0.5;

/// The sparse factor is used when its flop count is at most this fraction of the dense one.
/// Measured on InstEval (m = 1,156, ratio 0.23): the supernodal factor takes 0.37 of the dense
/// factor's time, so the break-even ratio is near 0.6; 0.4 leaves a margin for the gathering.
const MAX_FLOP_RATIO: f64 = 0.4;

/// The lower-triangle pattern of S, column by column (rows ascending, the diagonal first).
#[derive(Debug, Clone, Default)]
pub(crate) struct Pattern {
    pub(crate) col_ptr: Vec<usize>,
    pub(crate) row_idx: Vec<usize>,
}

impl Pattern {
    /// Builds the pattern from a function that lists column b's rows (each ≥ b, in any order,
    /// duplicates allowed) into `rows`. Returns `None` as soon as the pattern is fuller than
    /// [`MAX_PATTERN_FILL`].
    pub(crate) fn build(m: usize, mut column: impl FnMut(usize, &mut Vec<usize>)) -> Option<Pattern> {
        let limit = (MAX_PATTERN_FILL * (m as f64) * (m as f64 + 1.0) / 2.0) as usize;
        let mut col_ptr = Vec::with_capacity(m + 1);
        col_ptr.push(0);
        let mut row_idx = Vec::new();
        let mut stamp = vec![usize::MAX; m];
        let mut rows = Vec::new();
        for b in 0..m {
            rows.clear();
            column(b, &mut rows);
            let start = row_idx.len();
            stamp[b] = b;
            let mut count = 1;
            for &r in &rows {
                if stamp[r] != b {
                    stamp[r] = b;
                    count += 1;
                }
            }
            if count * 16 >= m - b {
                // A full column: rows in order by a scan of the stamps instead of a sort.
                row_idx.extend((b..m).filter(|&r| stamp[r] == b));
            } else {
                row_idx.push(b);
                stamp[b] = usize::MAX - 1;
                for &r in &rows {
                    if stamp[r] == b {
                        stamp[r] = usize::MAX - 1; // listed once
                        row_idx.push(r);
                    }
                }
                row_idx[start..].sort_unstable();
            }
            if row_idx.len() > limit {
                return None;
            }
            col_ptr.push(row_idx.len());
        }
        Some(Pattern { col_ptr, row_idx })
    }

    fn nnz(&self) -> usize {
        self.row_idx.len()
    }
}

/// What [`SparseRest::analyse`] computes from the pattern alone.
pub(crate) struct Analysis {
    pattern: Pattern,
    symbolic: SymbolicCholesky<usize>,
    req: StackReq,
    split: Option<SplitPlan>,
}

struct Shared {
    pattern: Pattern,
    /// The nonzero entries of A₂₂'s lower triangle, by column (rows ascending).
    a22: Pattern,
    a22_vals: Vec<f64>,
    symbolic: SymbolicCholesky<usize>,
    req: StackReq,
    /// The same order's elimination tree cut for two threads, where that is estimated to pay
    /// (see `sparse_split`); the supernodal factor otherwise.
    split: Option<SplitPlan>,
}

/// The sparse rest block: the pattern and symbolic factor (shared by clones) and the numeric
/// workspace (each clone its own, so parallel refits never share it).
pub(crate) struct SparseRest {
    shared: Arc<Shared>,
    values: Vec<f64>,
    l_values: Vec<f64>,
    /// Panels of dense columns of S (m rows), the gathering workspaces (one per thread of
    /// `fill`); sized by the first fill.
    work: Mat<f64>,
    work2: Mat<f64>,
    rhs: Mat<f64>,
    buffer: MemBuffer,
    split_work: Option<SplitWork>,
    /// The tasks of [`fill`](Self::fill) in the order they are claimed, and the panels' width.
    fill_tasks: Option<(usize, PhasedTasks<FillTask>)>,
    /// log|L₂₂|² of the last factorisation.
    pub(crate) logdet: f64,
}

impl std::fmt::Debug for SparseRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseRest")
            .field("m", &self.work.nrows())
            .field("nnz", &self.shared.pattern.nnz())
            .field("len_val", &self.l_values.len())
            .finish_non_exhaustive()
    }
}

impl Clone for SparseRest {
    fn clone(&self) -> Self {
        SparseRest::with_shared(self.shared.clone(), self.rhs.ncols())
    }
}

/// Σ over the columns of the factor of (column count)², the flop measure of faer's symbolic
/// analysis, for a supernodal factor.
fn supernodal_flops(symbolic: &SymbolicCholesky<usize>) -> Option<f64> {
    let SymbolicCholeskyRaw::Supernodal(sym) = symbolic.raw() else {
        return None;
    };
    let begin = sym.supernode_begin();
    let mut flops = 0.0;
    for s in 0..sym.n_supernodes() {
        let ncols = sym.supernode_end()[s] - begin[s];
        let below = sym.supernode(s).pattern().len();
        for k in 0..ncols {
            let count = (ncols - k + below) as f64;
            flops += count * count;
        }
    }
    Some(flops)
}

impl SparseRest {
    /// Analyses the pattern of S (m × m, with `p1` columns of [X y]): the fill-reducing
    /// ordering, the symbolic factor and the cut, all from the pattern alone, so that it can run
    /// while the crossproduct is formed. `None` when the sparse factor would not pay (see
    /// [`MAX_FLOP_RATIO`]) or the analysis fails.
    pub(crate) fn analyse(m: usize, p1: usize, pattern: Pattern) -> Option<Analysis> {
        if m < SPARSE_REST_MIN {
            return None;
        }
        let structure = SymbolicSparseColMatRef::new_checked(m, m, &pattern.col_ptr, None, &pattern.row_idx);
        let params = CholeskySymbolicParams {
            supernodal_flop_ratio_threshold: SupernodalThreshold::FORCE_SUPERNODAL,
            ..Default::default()
        };
        let symbolic = factorize_symbolic_cholesky(structure, Side::Lower, SymmetricOrdering::Amd, params).ok()?;
        let sparse = supernodal_flops(&symbolic)?;
        let dense: f64 = (1..=m).map(|c| (c as f64) * (c as f64)).sum();
        if sparse > MAX_FLOP_RATIO * dense {
            return None;
        }
        let req = StackReq::any_of(&[
            symbolic.factorize_numeric_llt_scratch::<f64>(Par::Seq, Spec::<LltParams, f64>::default()),
            symbolic.solve_in_place_scratch::<f64>(p1, Par::Seq),
        ]);
        let split = SplitPlan::new(&symbolic, &pattern, sparse, rayon::current_num_threads());
        Some(Analysis {
            pattern,
            symbolic,
            req,
            split,
        })
    }

    /// The sparse rest block from its [`Analysis`] and the nonzero lower triangle of A₂₂, by
    /// column (rows ascending).
    pub(crate) fn from_analysis(analysis: Analysis, p1: usize, a22_pattern: Pattern, a22_vals: Vec<f64>) -> SparseRest {
        let Analysis {
            pattern,
            symbolic,
            req,
            split,
        } = analysis;
        let shared = Arc::new(Shared {
            pattern,
            a22: a22_pattern,
            a22_vals,
            symbolic,
            req,
            split,
        });
        SparseRest::with_shared(shared, p1)
    }

    fn with_shared(shared: Arc<Shared>, p1: usize) -> SparseRest {
        let m = shared.symbolic.nrows();
        let split_work = shared.split.as_ref().map(|plan| plan.work(p1));
        SparseRest {
            values: vec![0.0; shared.pattern.nnz()],
            l_values: if split_work.is_some() { Vec::new() } else { vec![0.0; shared.symbolic.len_val()] },
            work: Mat::zeros(m, 0),
            work2: Mat::zeros(m, 0),
            rhs: Mat::zeros(m, p1),
            buffer: MemBuffer::new(if split_work.is_some() { StackReq::EMPTY } else { shared.req }),
            split_work,
            fill_tasks: None,
            logdet: 0.0,
            shared,
        }
    }

    /// Fills S by panels of `width` columns: each column starts as Λ_restᵀA₂₂Λ_rest (`scale`
    /// the rest λ's) in a zeroed dense m × `width` workspace, `panel(k, work)` adds the rest to
    /// panel k (it may write the pattern's rows only), and the pattern's entries are moved into
    /// S, leaving the workspace zero. A panel of dense columns stays in cache while the block
    /// columns of L₂₁ that reach it are read in one pass, where filling S a column at a time
    /// read them once per column. With `parallel`, two threads claim panels one at a time, the
    /// last panel first (the later columns of InstEval's S take up to four times the updates of
    /// the first ones, and a split into two runs of equal storage kept one thread waiting a
    /// third of the time); each panel's values are the same whichever thread computes them.
    /// `extra` is one more task, the first claimed (work of the caller's that does not touch
    /// S, run beside the panels).
    pub(crate) fn fill(&mut self, scale: &[f64], parallel: bool, width: usize, panel: impl Fn(usize, MatMut<'_, f64>) + Sync, extra: impl Fn() + Sync) {
        let sh = &*self.shared;
        let m = self.work.nrows();
        let n_panels = m.div_ceil(width);
        if self.work.ncols() < width {
            self.work = Mat::zeros(m, width);
            self.work2 = Mat::zeros(m, width);
        }
        if self.fill_tasks.as_ref().is_none_or(|(w, _)| *w != width) {
            let mut tasks = PhasedTasks::new();
            tasks.push(FillTask::Extra);
            for k in (0..n_panels).rev() {
                tasks.push(FillTask::Panel(k));
            }
            self.fill_tasks = Some((width, tasks));
        }
        let values = Values(self.values.as_mut_ptr());
        let tasks = &self.fill_tasks.as_ref().unwrap().1;
        let run = |&task: &FillTask, work: &mut Mat<f64>| {
            let FillTask::Panel(k) = task else {
                extra();
                return Ok(0.0);
            };
            let b0 = k * width;
            let cols = width.min(m - b0);
            let mut w = work.as_mut().subcols_mut(0, cols);
            for c in 0..cols {
                let b = b0 + c;
                let col = w.as_mut().col_mut(c).try_as_col_major_mut().unwrap().as_slice_mut();
                let (s, e) = (sh.a22.col_ptr[b], sh.a22.col_ptr[b + 1]);
                let sb = scale[b];
                for (&r, &v) in sh.a22.row_idx[s..e].iter().zip(&sh.a22_vals[s..e]) {
                    col[r] = v * scale[r] * sb;
                }
            }
            panel(k, w.as_mut());
            let (begin, end) = (sh.pattern.col_ptr[b0], sh.pattern.col_ptr[b0 + cols]);
            // SAFETY: panel k alone writes S's values begin..end (its columns' entries), and
            // `self.values` is borrowed mutably for the whole run.
            let out = unsafe { std::slice::from_raw_parts_mut(values.at(begin), end - begin) };
            for c in 0..cols {
                let b = b0 + c;
                let col = w.as_mut().col_mut(c).try_as_col_major_mut().unwrap().as_slice_mut();
                let (s, e) = (sh.pattern.col_ptr[b], sh.pattern.col_ptr[b + 1]);
                for (v, &r) in out[s - begin..e - begin].iter_mut().zip(&sh.pattern.row_idx[s..e]) {
                    *v = std::mem::take(&mut col[r]);
                }
            }
            Ok(0.0)
        };
        two_threads::run(tasks, parallel && n_panels > 1, [&mut self.work, &mut self.work2], run)
            .expect("filling S reports no failure");
    }

    /// Factors S; on success sets `logdet`. A non-positive pivot is reported by its index in
    /// the fill-reducing order.
    pub(crate) fn factor(&mut self, parallel: bool) -> Result<(), usize> {
        let shared = &*self.shared;
        if let (Some(plan), Some(work)) = (&shared.split, self.split_work.as_mut()) {
            self.logdet = plan.factor(&self.values, work, parallel)?;
            return Ok(());
        }
        let m = self.work.nrows();
        let structure =
            SymbolicSparseColMatRef::new_checked(m, m, &shared.pattern.col_ptr, None, &shared.pattern.row_idx);
        let s = SparseColMatRef::new(structure, &self.values);
        let stack = MemStack::new(&mut self.buffer);
        shared
            .symbolic
            .factorize_numeric_llt(
                &mut self.l_values,
                s,
                Side::Lower,
                LltRegularization::default(),
                Par::Seq,
                stack,
                Spec::<LltParams, f64>::default(),
            )
            .map_err(|e| match e {
                faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index } => index,
            })?;
        let SymbolicCholeskyRaw::Supernodal(sym) = shared.symbolic.raw() else {
            unreachable!("plan() keeps supernodal factors only");
        };
        let factor = SupernodalLltRef::new(sym, &self.l_values);
        let mut logdet = 0.0;
        for k in 0..sym.n_supernodes() {
            let block = factor.supernode(k).val();
            for i in 0..block.ncols() {
                logdet += block[(i, i)].ln();
            }
        }
        self.logdet = 2.0 * logdet;
        Ok(())
    }

    /// Whether the factor is the elimination-tree cut of `sparse_split` (else faer's).
    #[cfg(test)]
    pub(crate) fn is_split(&self) -> bool {
        self.shared.split.is_some()
    }

    /// The same block factored by faer's supernodal LLᵀ instead of the cut (tests of both).
    #[cfg(test)]
    pub(crate) fn without_split(&self) -> SparseRest {
        let sh = &*self.shared;
        let shared = Arc::new(Shared {
            pattern: sh.pattern.clone(),
            a22: sh.a22.clone(),
            a22_vals: sh.a22_vals.clone(),
            symbolic: {
                let m = sh.symbolic.nrows();
                let structure = SymbolicSparseColMatRef::new_checked(m, m, &sh.pattern.col_ptr, None, &sh.pattern.row_idx);
                let params = CholeskySymbolicParams {
                    supernodal_flop_ratio_threshold: SupernodalThreshold::FORCE_SUPERNODAL,
                    ..Default::default()
                };
                factorize_symbolic_cholesky(structure, Side::Lower, SymmetricOrdering::Amd, params).unwrap()
            },
            req: sh.req,
            split: None,
        });
        SparseRest::with_shared(shared, self.rhs.ncols())
    }

    /// r ← S⁻¹r (r in the rest block's own order), with the factor of the last
    /// [`factor`](Self::factor): the conditional modes of the rest block from the objective's
    /// factor, without a dense L₂₂.
    pub(crate) fn solve(&mut self, r: &mut [f64]) {
        let shared = &*self.shared;
        if let (Some(plan), Some(work)) = (&shared.split, self.split_work.as_mut()) {
            plan.solve(r, work);
            return;
        }
        let fwd = shared.symbolic.perm().map(|perm| perm.arrays().0);
        let mut x = self.rhs.as_mut().col_mut(0);
        match fwd {
            Some(fwd) => fwd.iter().enumerate().for_each(|(i, &from)| x[i] = r[from]),
            None => r.iter().enumerate().for_each(|(i, &v)| x[i] = v),
        }
        let SymbolicCholeskyRaw::Supernodal(sym) = shared.symbolic.raw() else {
            unreachable!("plan() keeps supernodal factors only");
        };
        let factor = SupernodalLltRef::new(sym, &self.l_values);
        let mut x = self.rhs.as_mut().subcols_mut(0, 1);
        factor.l_solve_with_conj(Conj::No, x.as_mut(), Par::Seq, MemStack::new(&mut self.buffer));
        factor.l_transpose_solve_with_conj(Conj::No, x.as_mut(), Par::Seq, MemStack::new(&mut self.buffer));
        match fwd {
            Some(fwd) => fwd.iter().enumerate().for_each(|(i, &to)| r[to] = x[(i, 0)]),
            None => r.iter_mut().enumerate().for_each(|(i, v)| *v = x[(i, 0)]),
        }
    }

    /// l33 −= Cᵀ S⁻¹ C, with the factor of the last [`factor`](Self::factor): with PSPᵀ = LLᵀ
    /// that is XᵀX for X = L⁻¹PC, a forward substitution only.
    pub(crate) fn subtract_quadratic_form(&mut self, c: MatRef<'_, f64>, l33: MatMut<'_, f64>, parallel: bool) {
        let shared = &*self.shared;
        if let (Some(plan), Some(work)) = (&shared.split, self.split_work.as_mut()) {
            plan.subtract_quadratic_form(c, l33, work, parallel);
            return;
        }
        match shared.symbolic.perm() {
            Some(perm) => {
                let fwd = perm.arrays().0;
                for j in 0..c.ncols() {
                    for (i, &from) in fwd.iter().enumerate() {
                        self.rhs[(i, j)] = c[(from, j)];
                    }
                }
            }
            None => self.rhs.as_mut().copy_from(c),
        }
        let SymbolicCholeskyRaw::Supernodal(sym) = shared.symbolic.raw() else {
            unreachable!("plan() keeps supernodal factors only");
        };
        let stack = MemStack::new(&mut self.buffer);
        SupernodalLltRef::new(sym, &self.l_values).l_solve_with_conj(Conj::No, self.rhs.as_mut(), Par::Seq, stack);
        matmul(l33, Accum::Add, self.rhs.transpose(), self.rhs.as_ref(), -1.0, Par::Seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Lcg;

    #[test]
    fn pattern_columns_are_the_sorted_distinct_rows_whether_scanned_or_sorted() {
        // Columns of every fullness: short ones are sorted, those listing at least 1/16 of the
        // rows below the diagonal are read off the stamps in order. Repeats and the diagonal
        // itself among the candidates are listed once.
        let mut g = Lcg(5);
        let m = 300;
        let candidates: Vec<Vec<usize>> = (0..m)
            .map(|b| {
                let k = [0, 3, 40, 400][b % 4];
                (0..k).map(|_| b + g.below(m - b)).collect()
            })
            .collect();
        let pattern = Pattern::build(m, |b, rows| rows.extend_from_slice(&candidates[b])).unwrap();
        for b in 0..m {
            let mut expect: Vec<usize> = candidates[b].iter().copied().chain([b]).collect();
            expect.sort_unstable();
            expect.dedup();
            assert_eq!(&pattern.row_idx[pattern.col_ptr[b]..pattern.col_ptr[b + 1]], &expect[..], "column {b}");
        }
    }
}
