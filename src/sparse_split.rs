//! The sparse second block factored on two threads (issue 7: InstEval's objective).
//!
//! faer's supernodal LLᵀ of S is sequential, and InstEval's factor spends most of its time in
//! the updates of 40 small supernodes (1–62 columns, up to 490 rows below them) into the last
//! one: many small products and scatters, at about a third of faer's dense speed. Here the
//! elimination tree of the same fill-reducing order is cut into a *top* set of supernodes,
//! closed under ancestors, and the subtrees hanging below it. Subtrees share no entry of S
//! (an entry joins a column to one of its etree ancestors), so each is eliminated on its own:
//!
//! - Lᵢᵢ = chol(Sᵢᵢ), dense (nᵢ columns);
//! - Wᵢ = Lᵢᵢ⁻¹ Sᵢ,ᵣ for the rᵢ top columns the subtree reaches (the below-pattern of its
//!   root supernode);
//! - S_top[rᵢ, rᵢ] −= WᵢᵀWᵢ, one product of inner dimension nᵢ and one scatter per subtree.
//!
//! The subtrees' Lᵢᵢ and Wᵢ are one task each (the costliest first); the updates WᵢᵀWᵢ are then
//! subtracted by ranges of the top block's columns, each range a task that takes every
//! subtree's part in the subtrees' order. Then L_top = chol(S_top), dense and right-looking by
//! blocks of columns with a look-ahead: while one thread updates the trailing columns with a
//! block's panel, the other brings the next block's columns up to date and factors its diagonal
//! block and panel. All of it is one list of steps in phases (zero, scatter S, subtrees,
//! updates, then one phase per block of the top), which [`crate::two_threads`] runs on one or
//! two threads with the same result to the bit, as every entry's sums are taken in one order
//! whichever thread takes a task. log|S| = Σ log|Lᵢᵢ|² + log|L_top|²,
//! and CᵀS⁻¹C = Σ xᵢᵀxᵢ + x_topᵀx_top for xᵢ = Lᵢᵢ⁻¹Cᵢ, x_top = L_top⁻¹(C_top − Σ Wᵢᵀxᵢ): the
//! same quantities as the supernodal factor, to rounding. Where the cut costs more than the
//! supernodal factor is estimated to, none is made ([`SplitPlan::new`] returns `None`).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltError, LltParams};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::sparse::linalg::cholesky::{SymbolicCholesky, SymbolicCholeskyRaw};
use faer::{Accum, Mat, MatMut, MatRef, Par, Spec};

use crate::sparse_rest::Pattern;
use crate::two_threads::{self, PhasedTasks};

/// The cut is made only if its estimated time is at most this fraction of the supernodal
/// factor's. The estimate counts the supernodal factor's flops at a third of the dense
/// kernels' speed (measured on InstEval's block; see `docs/performance.md`).
const SUPERNODAL_SLOWDOWN: f64 = 3.0;
const MAX_COST_RATIO: f64 = 0.8;
/// Expansions of the top set tried (each moves one subtree's root supernode into it).
const MAX_EXPANSIONS: usize = 256;

#[derive(Debug, Clone)]
struct Subtree {
    /// Columns begin..end of the permuted matrix.
    begin: usize,
    end: usize,
    /// The top columns it reaches, as indices into `SplitPlan::top`, ascending.
    rows: Vec<usize>,
    /// `rows` as runs of consecutive top columns: (first index into `rows`, length).
    runs: Vec<(usize, usize)>,
    /// Arena offsets of its n × n diagonal block and, right after, its n × r coupling block.
    offset: usize,
}

impl Subtree {
    fn n(&self) -> usize {
        self.end - self.begin
    }

    fn len(&self) -> usize {
        self.n() * (self.n() + self.rows.len())
    }
}

/// The cut of one pattern, computed once per model.
#[derive(Debug, Clone)]
pub(crate) struct SplitPlan {
    /// fwd[pos] = the rest row at position pos of the fill-reducing order.
    fwd: Vec<usize>,
    /// The top columns (positions), in the top block's order (see [`top_order`]).
    top: Vec<usize>,
    subtrees: Vec<Subtree>,
    /// The arena holds the subtrees' blocks (the first group's, then the second's, see
    /// [`SplitPlan::subtract_quadratic_form`]), then the t × t top block from here.
    top_offset: usize,
    /// The arena offset of every entry of the pattern of S (lower triangle, by column).
    dest: Vec<usize>,
    max_n: usize,
    max_r: usize,
    /// Subtrees first_of_second.. are the second group of [`SplitPlan::subtract_quadratic_form`].
    first_of_second: usize,
    /// One factorisation as phases of steps for one or two threads (see [`Step`]).
    steps: PhasedTasks<Step>,
}

/// Columns of a block step of the top block's Cholesky factorisation. Measured on a 705-column
/// block on the development machine (two threads, medians of 200): 64 columns 1.27–1.39 ms,
/// 96 columns 1.25–1.31 ms, 128 columns 1.30–1.45 ms.
const TOP_BLOCK: usize = 96;

/// Tasks the updates WᵢᵀWᵢ of the top block are cut into (ranges of its columns of about equal
/// work, claimed one at a time by the two threads).
const UPDATE_TASKS: usize = 4;

/// One step of a factorisation by [`SplitPlan::factor`]. Steps of one phase touch disjoint parts
/// of the arena, and read only what earlier phases wrote.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Zero arena entries begin..end (subtrees' blocks).
    ZeroArena { begin: usize, end: usize },
    /// Zero the lower triangle of columns c0..c1 of the top block.
    ZeroLower { c0: usize, c1: usize },
    /// Write the pattern's entries begin..end of S into the arena.
    Scatter { begin: usize, end: usize },
    /// Subtree i's Lᵢᵢ = chol(Sᵢᵢ) and Wᵢ = Lᵢᵢ⁻¹Sᵢ,ᵣ, in its own block of the arena.
    Subtree { i: usize },
    /// Columns c0..c1 of the top block less every subtree's WᵢᵀWᵢ there, subtree by subtree.
    Updates { c0: usize, c1: usize },
    /// The top block, right-looking by blocks of columns k..k+kb: the diagonal block's
    /// Cholesky factor; the rows r0..r1 below it times its inverse transpose; the columns c0..c1
    /// of the trailing matrix less the panel's products.
    Diagonal { k: usize, kb: usize },
    Solve { k: usize, kb: usize, r0: usize, r1: usize },
    Update { k: usize, kb: usize, c0: usize, c1: usize },
    /// With next = k + kb: the update of columns next..next + a by the panel of block k, then
    /// the next block's (next_kb columns) diagonal factor and its panel's solve.
    LookAhead { k: usize, kb: usize, a: usize, next_kb: usize },
}

/// What each thread needs for itself: the Cholesky scratch and a product buffer.
struct ThreadScratch {
    buffer: MemBuffer,
    product: Mat<f64>,
    /// A subtree's rows of C (n × p₁), then xᵢ = Lᵢᵢ⁻¹Cᵢ, and Wᵢᵀxᵢ (r × p₁), for
    /// [`SplitPlan::subtract_quadratic_form`].
    x: Mat<f64>,
    wx: Mat<f64>,
}

/// Per-model numeric workspace of a [`SplitPlan`].
pub(crate) struct SplitWork {
    arena: Vec<f64>,
    scratch: [ThreadScratch; 2],
    rhs: Mat<f64>,
    top_rhs: Mat<f64>,
    /// The second subtree group's −ΣWᵢᵀxᵢ (t × p₁) and −Σxᵢᵀxᵢ (p₁ × p₁).
    top_rhs_second: Mat<f64>,
    form_second: Mat<f64>,
}

/// A raw view of a [`SplitWork`]'s arena for the steps of one factorisation.
#[derive(Clone, Copy)]
struct Raw {
    arena: *mut f64,
}

// SAFETY: the steps that use a `Raw` at the same time touch disjoint entries (see `Step`), and
// the phases order every write before the reads of it (`two_threads::run`).
unsafe impl Send for Raw {}
unsafe impl Sync for Raw {}

/// Columns 0 = c₀ < c₁ < … < n cutting the columns of an n × n lower triangle into at most
/// `parts` ranges of about equal area.
fn equal_area_cuts(n: usize, parts: usize) -> Vec<usize> {
    let total = (n * (n + 1) / 2) as f64;
    let mut cuts = vec![0];
    let (mut c, mut area) = (0usize, 0.0f64);
    for i in 1..parts {
        let target = total * i as f64 / parts as f64;
        while c < n && area + ((n - c) as f64) <= target {
            area += (n - c) as f64;
            c += 1;
        }
        if c > *cuts.last().unwrap() && c < n {
            cuts.push(c);
        }
    }
    cuts.push(n);
    cuts
}

fn flops(n: f64, r: f64) -> f64 {
    n * n * n / 3.0 + n * n * r + n * r * r
}

/// Longest-processing-time split of `works` over two threads: (assignment, makespan).
fn two_way(works: &[f64], threads: usize) -> (Vec<bool>, f64) {
    let mut order: Vec<usize> = (0..works.len()).collect();
    order.sort_by(|&a, &b| works[b].total_cmp(&works[a]));
    let mut second = vec![false; works.len()];
    let (mut load0, mut load1) = (0.0, 0.0);
    for i in order {
        if threads >= 2 && load1 < load0 {
            second[i] = true;
            load1 += works[i];
        } else {
            load0 += works[i];
        }
    }
    (second, f64::max(load0, load1))
}

impl SplitPlan {
    /// The cut of `symbolic` (a supernodal factor of `pattern`, in its fill-reducing order) that
    /// minimises the estimated time on `threads` threads, or `None` if it would not beat the
    /// supernodal factor (`supernodal_flops` of Σ over columns of their count squared).
    pub(crate) fn new(symbolic: &SymbolicCholesky<usize>, pattern: &Pattern, supernodal_flops: f64, threads: usize) -> Option<SplitPlan> {
        Self::within(symbolic, pattern, MAX_COST_RATIO * SUPERNODAL_SLOWDOWN * supernodal_flops, threads)
    }

    /// The cheapest cut, if its estimated cost is at most `max_cost` flops.
    fn within(symbolic: &SymbolicCholesky<usize>, pattern: &Pattern, max_cost: f64, threads: usize) -> Option<SplitPlan> {
        let SymbolicCholeskyRaw::Supernodal(sym) = symbolic.raw() else {
            return None;
        };
        let m = symbolic.nrows();
        let (fwd, inv) = match symbolic.perm() {
            Some(perm) => {
                let (f, i) = perm.arrays();
                (f.to_vec(), i.to_vec())
            }
            None => ((0..m).collect(), (0..m).collect()),
        };
        let ns = sym.n_supernodes();
        let (begin, end) = (sym.supernode_begin(), sym.supernode_end());
        let mut supernode_of = vec![0usize; m];
        for s in 0..ns {
            supernode_of[begin[s]..end[s]].iter_mut().for_each(|v| *v = s);
        }
        let below: Vec<&[usize]> = (0..ns).map(|s| sym.supernode(s).pattern()).collect();
        let parent: Vec<Option<usize>> = below.iter().map(|p| p.first().map(|&r| supernode_of[r])).collect();
        let mut children = vec![Vec::new(); ns];
        for s in 0..ns {
            if let Some(p) = parent[s] {
                if p <= s {
                    return None; // not a postorder: no contiguous subtrees
                }
                children[p].push(s);
            }
        }
        // Subtree of s = columns first[s]..end[s] in a postorder; check it.
        let mut first = begin.to_vec();
        let mut count: Vec<usize> = (0..ns).map(|s| end[s] - begin[s]).collect();
        for s in 0..ns {
            if let Some(p) = parent[s] {
                first[p] = first[p].min(first[s]);
                count[p] += count[s];
            }
        }
        if (0..ns).any(|s| end[s] - first[s] != count[s]) {
            return None;
        }

        // Grow the top set from the roots, expanding the costliest subtree each time; keep the
        // cheapest cut seen.
        let work = |s: usize| flops((end[s] - first[s]) as f64, below[s].len() as f64);
        let mut in_top = vec![false; ns];
        let mut roots: Vec<usize> = (0..ns).filter(|&s| parent[s].is_none()).collect();
        let mut t = 0usize;
        let cost = |roots: &[usize], t: usize| {
            let works: Vec<f64> = roots.iter().map(|&s| work(s)).collect();
            let (_, makespan) = two_way(&works, threads);
            makespan + (t as f64).powi(3) / 3.0
        };
        let mut best: Option<(f64, Vec<bool>)> = None;
        for _ in 0..MAX_EXPANSIONS {
            let Some((at, &s)) = roots.iter().enumerate().max_by(|a, b| work(*a.1).total_cmp(&work(*b.1))) else {
                break;
            };
            roots.swap_remove(at);
            in_top[s] = true;
            t += end[s] - begin[s];
            roots.extend_from_slice(&children[s]);
            let c = cost(&roots, t);
            if best.as_ref().is_none_or(|(b, _)| c < *b) {
                best = Some((c, in_top.clone()));
            }
        }
        let (best_cost, in_top) = best?;
        if best_cost > max_cost {
            return None;
        }

        // The cut: top positions, and the subtrees below it.
        let roots: Vec<usize> = (0..ns).filter(|&s| !in_top[s] && parent[s].is_none_or(|p| in_top[p])).collect();
        let top = top_order(m, &in_top, &supernode_of, &roots, &below);
        let mut top_index = vec![usize::MAX; m];
        for (k, &c) in top.iter().enumerate() {
            top_index[c] = k;
        }
        let works: Vec<f64> = roots.iter().map(|&s| work(s)).collect();
        let (second, _) = two_way(&works, threads);
        let mut subtrees = Vec::with_capacity(roots.len());
        for pass in [false, true] {
            for (&s, _) in roots.iter().zip(&second).filter(|&(_, &b)| b == pass) {
                let mut rows: Vec<usize> = below[s].iter().map(|&r| top_index[r]).collect();
                if rows.contains(&usize::MAX) {
                    return None; // an ancestor outside the top set: cannot happen
                }
                rows.sort_unstable();
                let mut runs: Vec<(usize, usize)> = Vec::new();
                for (a, &k) in rows.iter().enumerate() {
                    match runs.last_mut() {
                        Some((a0, len)) if rows[*a0] + *len == k => *len += 1,
                        _ => runs.push((a, 1)),
                    }
                }
                subtrees.push(Subtree {
                    begin: first[s],
                    end: end[s],
                    rows,
                    runs,
                    offset: 0,
                });
            }
        }
        let first_of_second = roots.len() - second.iter().filter(|&&b| b).count();
        let mut offset = 0;
        for st in subtrees.iter_mut() {
            st.offset = offset;
            offset += st.len();
        }
        let top_offset = offset;
        let t = top.len();
        // The arena and the two threads' products, in doubles: at most 2m² (InstEval: 0.8 m²;
        // the supernodal factor needs at most m²/2), and at most a quarter of the memory left,
        // as the model's memory estimate does not count them.
        let max_r = subtrees.iter().map(|st| st.rows.len()).max().unwrap_or(0) as u128;
        let workspace = (top_offset + t * t) as u128 + 2 * max_r * max_r;
        let available = crate::model::available_memory_bytes().map_or(u128::MAX, |a| a / 4);
        if workspace > 2 * (m as u128) * (m as u128) || workspace * 8 > available {
            return None;
        }
        // Where each column position lives: (subtree, local index) or the top.
        let mut owner = vec![usize::MAX; m];
        for (i, st) in subtrees.iter().enumerate() {
            owner[st.begin..st.end].iter_mut().for_each(|v| *v = i);
        }
        let mut dest = Vec::with_capacity(pattern.row_idx.len());
        for b in 0..m {
            for &r in &pattern.row_idx[pattern.col_ptr[b]..pattern.col_ptr[b + 1]] {
                let (pr, pb) = (inv[r], inv[b]);
                let (hi, lo) = (pr.max(pb), pr.min(pb));
                let at = match (owner[lo], owner[hi]) {
                    (usize::MAX, usize::MAX) => {
                        // The top block's own order (see `top_order`): its lower triangle.
                        let (ka, kb) = (top_index[lo], top_index[hi]);
                        top_offset + ka.min(kb) * t + ka.max(kb)
                    }
                    (i, j) if i == j => {
                        let st = &subtrees[i];
                        st.offset + (lo - st.begin) * st.n() + (hi - st.begin)
                    }
                    (i, usize::MAX) => {
                        let st = &subtrees[i];
                        let q = st.rows.binary_search(&top_index[hi]).ok()?;
                        st.offset + st.n() * st.n() + q * st.n() + (lo - st.begin)
                    }
                    _ => return None, // an entry between subtrees: not an etree of this pattern
                };
                dest.push(at);
            }
        }
        let max_n = subtrees.iter().map(Subtree::n).max().unwrap_or(0);
        let max_r = subtrees.iter().map(|st| st.rows.len()).max().unwrap_or(0);
        // The subtrees' own work (chol(Sᵢᵢ) and the solve for Wᵢ), costliest first; the
        // updates' work per top column k: nᵢ(rᵢ − a) for every subtree reaching it as its a-th row.
        let own = |st: &Subtree| {
            let (n, r) = (st.n() as f64, st.rows.len() as f64);
            n * n * n / 3.0 + n * n * r
        };
        let mut by_work: Vec<usize> = (0..subtrees.len()).collect();
        by_work.sort_by(|&a, &b| own(&subtrees[b]).total_cmp(&own(&subtrees[a])).then(a.cmp(&b)));
        let mut column_work = vec![0.0; t];
        for st in &subtrees {
            let r = st.rows.len();
            for (a, &k) in st.rows.iter().enumerate() {
                column_work[k] += (st.n() * (r - a)) as f64;
            }
        }
        let column_cuts = equal_work_cuts(&column_work, UPDATE_TASKS);
        let steps = Self::steps(t, top_offset, dest.len(), &by_work, &column_cuts);
        Some(SplitPlan {
            fwd,
            top,
            subtrees,
            top_offset,
            dest,
            max_n,
            max_r,
            first_of_second,
            steps,
        })
    }

    /// The steps of one factorisation, in phases: zero the blocks; scatter S into them; factor
    /// the subtrees (in the order `by_work`); subtract their updates from the top block by the
    /// column ranges `column_cuts`; factor the top block by blocks of [`TOP_BLOCK`] columns: the
    /// first block and its panel, then per block a look-ahead (see [`Step::LookAhead`]) beside
    /// the update of the columns after it.
    fn steps(t: usize, top_offset: usize, nnz: usize, by_work: &[usize], column_cuts: &[usize]) -> PhasedTasks<Step> {
        let halves = equal_area_cuts(t, 2);
        let mut steps = PhasedTasks::new();
        steps.phase();
        steps.push(Step::ZeroArena { begin: 0, end: top_offset / 2 });
        steps.push(Step::ZeroArena { begin: top_offset / 2, end: top_offset });
        for w in halves.windows(2) {
            steps.push(Step::ZeroLower { c0: w[0], c1: w[1] });
        }
        steps.phase();
        steps.push(Step::Scatter { begin: 0, end: nnz / 2 });
        steps.push(Step::Scatter { begin: nnz / 2, end: nnz });
        if !by_work.is_empty() {
            steps.phase();
            for &i in by_work {
                steps.push(Step::Subtree { i });
            }
            steps.phase();
            // The last columns first: their short columns take the most time per flop.
            for w in column_cuts.windows(2).rev() {
                steps.push(Step::Updates { c0: w[0], c1: w[1] });
            }
        }
        if t == 0 {
            return steps;
        }
        let (mut k, mut kb) = (0, TOP_BLOCK.min(t));
        steps.phase();
        steps.push(Step::Diagonal { k, kb });
        if kb < t {
            steps.phase();
            let mid = kb + (t - kb) / 2;
            steps.push(Step::Solve { k, kb, r0: kb, r1: mid });
            if mid < t {
                steps.push(Step::Solve { k, kb, r0: mid, r1: t });
            }
        }
        // One phase per further block, with a look-ahead: one task brings the next block's
        // columns (and a few more) up to date and factors its diagonal block and panel, while
        // the other updates the trailing columns.
        while k + kb < t {
            let (next, next_kb) = (k + kb, TOP_BLOCK.min(t - k - kb));
            let a = look_ahead_columns(t, kb, next, next_kb);
            steps.phase();
            steps.push(Step::LookAhead { k, kb, a, next_kb });
            if next + a < t {
                steps.push(Step::Update { k, kb, c0: next + a, c1: t });
            }
            (k, kb) = (next, next_kb);
        }
        steps
    }

    #[cfg(test)]
    pub(crate) fn describe(&self) -> String {
        let shapes: Vec<(usize, usize)> = self.subtrees.iter().map(|s| (s.n(), s.rows.len())).collect();
        format!("top {} subtrees (columns, top rows) {shapes:?}", self.top.len())
    }
    /// Columns of the top block (for tests and the performance notes).
    #[cfg(test)]
    pub(crate) fn top_len(&self) -> usize {
        self.top.len()
    }

    pub(crate) fn work(&self, p1: usize) -> SplitWork {
        let t = self.top.len();
        let req = cholesky_in_place_scratch::<f64>(self.max_n.max(TOP_BLOCK), Par::Seq, Spec::<LltParams, f64>::default());
        let scratch = || ThreadScratch {
            buffer: MemBuffer::new(req),
            product: Mat::zeros(self.max_r, self.max_r),
            x: Mat::zeros(self.max_n, p1),
            wx: Mat::zeros(self.max_r, p1),
        };
        SplitWork {
            arena: vec![0.0; self.top_offset + t * t],
            scratch: [scratch(), scratch()],
            rhs: Mat::zeros(self.fwd.len(), p1),
            top_rhs: Mat::zeros(t, p1),
            top_rhs_second: Mat::zeros(t, p1),
            form_second: Mat::zeros(p1, p1),
        }
    }

    /// Factors S, given by its pattern's `values`, on one thread or, with `parallel`, on two
    /// (the same bits either way); returns log|S|, or the position (in the fill-reducing order)
    /// of a non-positive pivot.
    pub(crate) fn factor(&self, values: &[f64], w: &mut SplitWork, parallel: bool) -> Result<f64, usize> {
        let t = self.top.len();
        assert!(values.len() == self.dest.len() && w.arena.len() == self.top_offset + t * t);
        let raw = Raw { arena: w.arena.as_mut_ptr() };
        let [s0, s1] = &mut w.scratch;
        // SAFETY: `raw` points into `w`'s arena, sized as asserted above, which stays borrowed
        // for the whole run; see `Raw` for the steps' disjointness.
        let parts = two_threads::run(&self.steps, parallel, [s0, s1], |step, scratch| unsafe {
            self.run_step(*step, raw, values, scratch)
        })?;
        let top = MatRef::from_column_major_slice(&w.arena[self.top_offset..], t, t);
        Ok(parts.iter().sum::<f64>() + 2.0 * (0..t).map(|k| top[(k, k)].ln()).sum::<f64>())
    }

    /// One step of [`factor`](Self::factor); returns Σ log|Lᵢᵢ|² of eliminated subtrees (zero
    /// for the other steps).
    ///
    /// # Safety
    /// `raw` must point into a [`SplitWork`] of this plan, and no other step may be touching the
    /// entries this one touches (the phases of `self.steps` see to that).
    unsafe fn run_step(&self, step: Step, raw: Raw, values: &[f64], scratch: &mut ThreadScratch) -> Result<f64, usize> {
        let t = self.top.len();
        let top_ptr = raw.arena.add(self.top_offset);
        // Views of only the entries a step touches: rows r.., columns c0..c1 of the top block
        // (column stride t).
        let top = |r: usize, c0: usize, c1: usize| MatMut::from_raw_parts_mut(top_ptr.add(r + c0 * t), t - r, c1 - c0, 1, t as isize);
        match step {
            Step::ZeroArena { begin, end } => {
                std::slice::from_raw_parts_mut(raw.arena.add(begin), end - begin).fill(0.0);
            }
            Step::ZeroLower { c0, c1 } => {
                for c in c0..c1 {
                    top(c, c, c + 1).fill(0.0);
                }
            }
            Step::Scatter { begin, end } => {
                for (&at, &v) in self.dest[begin..end].iter().zip(&values[begin..end]) {
                    *raw.arena.add(at) = v;
                }
            }
            Step::Subtree { i } => {
                let st = &self.subtrees[i];
                let block = std::slice::from_raw_parts_mut(raw.arena.add(st.offset), st.len());
                return factor_subtree(st, block, &mut scratch.buffer);
            }
            Step::Updates { c0, c1 } => {
                let arena = std::slice::from_raw_parts(raw.arena as *const f64, self.top_offset);
                subtract_updates(&self.subtrees, arena, top(0, c0, c1), c0, c1, &mut scratch.product);
            }
            Step::Diagonal { k, kb } => {
                let d = top(k, k, k + kb).subrows_mut(0, kb);
                cholesky_in_place(d, Default::default(), Par::Seq, MemStack::new(&mut scratch.buffer), Default::default())
                    .map_err(|LltError::NonPositivePivot { index }| self.top[k + index])?;
            }
            Step::Solve { k, kb, r0, r1 } => {
                // Rows r0..r1 of the panel: B ← B L⁻ᵀ, that is L Bᵀ = Bᵀ.
                let l = MatRef::from_raw_parts(top_ptr.add(k + k * t) as *const f64, kb, kb, 1, t as isize);
                let b = MatMut::from_raw_parts_mut(top_ptr.add(r0 + k * t), r1 - r0, kb, 1, t as isize);
                solve_lower_triangular_in_place(l, b.transpose_mut(), Par::Seq);
            }
            Step::LookAhead { k, kb, a, next_kb } => {
                let next = k + kb;
                self.run_step(Step::Update { k, kb, c0: next, c1: next + a }, raw, values, scratch)?;
                self.run_step(Step::Diagonal { k: next, kb: next_kb }, raw, values, scratch)?;
                if next + next_kb < t {
                    self.run_step(Step::Solve { k: next, kb: next_kb, r0: next + next_kb, r1: t }, raw, values, scratch)?;
                }
            }
            Step::Update { k, kb, c0, c1 } => {
                // Columns c0..c1, rows c0..t: A −= P[c0..t] P[c0..c1]ᵀ for the panel P.
                let w = c1 - c0;
                let panel = |r: usize, nr: usize| MatRef::from_raw_parts(top_ptr.add(r + k * t) as *const f64, nr, kb, 1, t as isize);
                let pw = panel(c0, w);
                let diagonal = MatMut::from_raw_parts_mut(top_ptr.add(c0 + c0 * t), w, w, 1, t as isize);
                triangular::matmul(
                    diagonal,
                    BlockStructure::TriangularLower,
                    Accum::Add,
                    pw,
                    BlockStructure::Rectangular,
                    pw.transpose(),
                    BlockStructure::Rectangular,
                    -1.0,
                    Par::Seq,
                );
                if c1 < t {
                    let below = MatMut::from_raw_parts_mut(top_ptr.add(c1 + c0 * t), t - c1, w, 1, t as isize);
                    matmul(below, Accum::Add, panel(c1, t - c1), pw.transpose(), -1.0, Par::Seq);
                }
            }
        }
        Ok(0.0)
    }

    /// r ← S⁻¹r (r in the rest block's own order) with the factor of the last
    /// [`factor`](Self::factor): forward, xᵢ = Lᵢᵢ⁻¹rᵢ and x_top = L_top⁻¹(r_top − ΣWᵢᵀxᵢ);
    /// back, z_top = L_top⁻ᵀx_top and zᵢ = Lᵢᵢ⁻ᵀ(xᵢ − Wᵢz_top[rowsᵢ]).
    pub(crate) fn solve(&self, r: &mut [f64], w: &mut SplitWork) {
        let t = self.top.len();
        let mut x = w.rhs.as_mut().col_mut(0).try_as_col_major_mut().unwrap();
        for (pos, &from) in self.fwd.iter().enumerate() {
            x[pos] = r[from];
        }
        let mut top_x = w.top_rhs.as_mut().subcols_mut(0, 1);
        for (k, &pos) in self.top.iter().enumerate() {
            top_x[(k, 0)] = x[pos];
        }
        let block_of = |st: &Subtree| {
            let (n, r) = (st.n(), st.rows.len());
            let block = &w.arena[st.offset..st.offset + st.len()];
            (MatRef::from_column_major_slice(&block[..n * n], n, n), MatRef::from_column_major_slice(&block[n * n..], n, r))
        };
        for st in &self.subtrees {
            let (l, wi) = block_of(st);
            let mut xi = w.rhs.as_mut().submatrix_mut(st.begin, 0, st.n(), 1);
            solve_lower_triangular_in_place(l, xi.as_mut(), Par::Seq);
            for (a, &k) in st.rows.iter().enumerate() {
                let mut s = 0.0;
                for i in 0..st.n() {
                    s += wi[(i, a)] * xi[(i, 0)];
                }
                top_x[(k, 0)] -= s;
            }
        }
        let top = MatRef::from_column_major_slice(&w.arena[self.top_offset..self.top_offset + t * t], t, t);
        solve_lower_triangular_in_place(top, top_x.as_mut(), Par::Seq);
        solve_upper_triangular_in_place(top.transpose(), top_x.as_mut(), Par::Seq);
        for st in &self.subtrees {
            let (l, wi) = block_of(st);
            let mut xi = w.rhs.as_mut().submatrix_mut(st.begin, 0, st.n(), 1);
            for (a, &k) in st.rows.iter().enumerate() {
                let z = top_x[(k, 0)];
                for i in 0..st.n() {
                    xi[(i, 0)] -= wi[(i, a)] * z;
                }
            }
            solve_upper_triangular_in_place(l.transpose(), xi.as_mut(), Par::Seq);
        }
        for (k, &pos) in self.top.iter().enumerate() {
            w.rhs[(pos, 0)] = top_x[(k, 0)];
        }
        for (pos, &to) in self.fwd.iter().enumerate() {
            r[to] = w.rhs[(pos, 0)];
        }
    }

    /// l33 −= CᵀS⁻¹C with the factor of the last [`factor`](Self::factor); `c` is m × p₁ in
    /// the rest block's own order. With X = L⁻¹PC: xᵢ = Lᵢᵢ⁻¹Cᵢ per subtree and
    /// x_top = L_top⁻¹(C_top − ΣWᵢᵀxᵢ), and CᵀS⁻¹C = Σxᵢᵀxᵢ + x_topᵀx_top. In three phases on
    /// one or, with `parallel`, two threads (the same bits either way): the two subtree groups
    /// (the second's sums in their own buffers); the two halves of the columns of x_top; the two
    /// halves of the rows of l33.
    pub(crate) fn subtract_quadratic_form(&self, c: MatRef<'_, f64>, l33: MatMut<'_, f64>, w: &mut SplitWork, parallel: bool) {
        let (t, p1) = (self.top.len(), c.ncols());
        for j in 0..p1 {
            for (k, &pos) in self.top.iter().enumerate() {
                w.top_rhs[(k, j)] = c[(self.fwd[pos], j)];
            }
        }
        w.top_rhs_second.as_mut().subcols_mut(0, p1).fill(0.0);
        w.form_second.as_mut().submatrix_mut(0, 0, p1, p1).fill(0.0);
        let half = p1.div_ceil(2);
        let mut tasks = PhasedTasks::new();
        for group in [0, 1] {
            tasks.push(FormStep::Subtrees { group });
        }
        tasks.phase();
        for second in [false, true] {
            tasks.push(FormStep::Solve { second });
        }
        tasks.phase();
        for second in [false, true] {
            tasks.push(FormStep::Product { second });
        }
        let raw = FormRaw {
            top_rhs: w.top_rhs.as_ptr_mut(),
            top_rhs_stride: w.top_rhs.col_stride(),
            top_rhs_second: w.top_rhs_second.as_ptr_mut(),
            second_stride: w.top_rhs_second.col_stride(),
            form_second: w.form_second.as_ptr_mut(),
            form_second_stride: w.form_second.col_stride(),
            l33: l33.as_ptr_mut(),
            l33_row_stride: l33.row_stride(),
            l33_col_stride: l33.col_stride(),
        };
        let arena = &w.arena;
        let [s0, s1] = &mut w.scratch;
        // SAFETY: `raw` points into `w` and `l33`, borrowed for the whole run; see `FormStep`
        // for what each step touches.
        two_threads::run(&tasks, parallel, [s0, s1], |step, scratch| unsafe {
            self.form_step(*step, raw, arena, c, t, p1, half, scratch);
            Ok(0.0)
        })
        .expect("the quadratic form reports no failure");
    }

    /// One step of [`subtract_quadratic_form`](Self::subtract_quadratic_form).
    ///
    /// # Safety
    /// `raw` must point at a t × p₁ `top_rhs` and `top_rhs_second`, a p₁ × p₁ `form_second` and
    /// `l33`, and no other step of the same phase may touch what this one touches (see
    /// [`FormStep`]).
    #[allow(clippy::too_many_arguments)]
    unsafe fn form_step(&self, step: FormStep, raw: FormRaw, arena: &[f64], c: MatRef<'_, f64>, t: usize, p1: usize, half: usize, scratch: &mut ThreadScratch) {
        let top_rhs = || MatMut::from_raw_parts_mut(raw.top_rhs, t, p1, 1, raw.top_rhs_stride);
        let second = || MatMut::from_raw_parts_mut(raw.top_rhs_second, t, p1, 1, raw.second_stride);
        let form_second = || MatMut::from_raw_parts_mut(raw.form_second, p1, p1, 1, raw.form_second_stride);
        let l33 = || MatMut::from_raw_parts_mut(raw.l33, p1, p1, raw.l33_row_stride, raw.l33_col_stride);
        match step {
            FormStep::Subtrees { group } => {
                let subtrees = if group == 0 { &self.subtrees[..self.first_of_second] } else { &self.subtrees[self.first_of_second..] };
                let (mut rhs, mut form) = if group == 0 { (top_rhs(), l33()) } else { (second(), form_second()) };
                for st in subtrees {
                    let (n, r) = (st.n(), st.rows.len());
                    let block = &arena[st.offset..st.offset + st.len()];
                    let l = MatRef::from_column_major_slice(&block[..n * n], n, n);
                    let wi = MatRef::from_column_major_slice(&block[n * n..], n, r);
                    let mut x = scratch.x.as_mut().submatrix_mut(0, 0, n, p1);
                    for j in 0..p1 {
                        for i in 0..n {
                            x[(i, j)] = c[(self.fwd[st.begin + i], j)];
                        }
                    }
                    solve_lower_triangular_in_place(l, x.as_mut(), Par::Seq);
                    matmul(form.as_mut(), Accum::Add, x.as_ref().transpose(), x.as_ref(), -1.0, Par::Seq);
                    // C_top[rows] −= Wᵢᵀxᵢ.
                    let mut prod = scratch.wx.as_mut().submatrix_mut(0, 0, r, p1);
                    matmul(prod.as_mut(), Accum::Replace, wi.transpose(), x.as_ref(), 1.0, Par::Seq);
                    for j in 0..p1 {
                        for (a, &k) in st.rows.iter().enumerate() {
                            rhs[(k, j)] -= prod[(a, j)];
                        }
                    }
                }
            }
            FormStep::Solve { second: upper } => {
                // Columns of x_top: the second group's sums added, then L_top⁻¹.
                let (j0, j1) = if upper { (half, p1) } else { (0, half) };
                if j0 == j1 {
                    return;
                }
                let mut rhs = top_rhs().subcols_mut(j0, j1 - j0);
                rhs += second().subcols_mut(j0, j1 - j0).as_ref();
                let top = MatRef::from_column_major_slice(&arena[self.top_offset..self.top_offset + t * t], t, t);
                solve_lower_triangular_in_place(top, rhs, Par::Seq);
            }
            FormStep::Product { second: lower } => {
                // Rows of l33: the second group's sums added, then −x_top[:, rows]ᵀx_top.
                let (i0, i1) = if lower { (half, p1) } else { (0, half) };
                if i0 == i1 {
                    return;
                }
                let mut rows = l33().subrows_mut(i0, i1 - i0);
                rows += form_second().subrows_mut(i0, i1 - i0).as_ref();
                let x = top_rhs();
                matmul(rows, Accum::Add, x.as_ref().subcols(i0, i1 - i0).transpose(), x.as_ref(), -1.0, Par::Seq);
            }
        }
    }
}

/// A step of [`SplitPlan::subtract_quadratic_form`]. `Subtrees` of group 0 update `top_rhs` and
/// `l33`, of group 1 `top_rhs_second` and `form_second`; `Solve` touches the first or second
/// half of the columns of `top_rhs` (reading `top_rhs_second`'s); `Product` the first or second
/// half of the rows of `l33` (reading all of `top_rhs` and `form_second`'s rows).
#[derive(Debug, Clone, Copy)]
enum FormStep {
    Subtrees { group: usize },
    Solve { second: bool },
    Product { second: bool },
}

/// Raw views for [`FormStep`]s.
#[derive(Clone, Copy)]
struct FormRaw {
    top_rhs: *mut f64,
    top_rhs_stride: isize,
    top_rhs_second: *mut f64,
    second_stride: isize,
    form_second: *mut f64,
    form_second_stride: isize,
    l33: *mut f64,
    l33_row_stride: isize,
    l33_col_stride: isize,
}

// SAFETY: the steps of one phase touch disjoint entries (see `FormStep`), and the phases order
// every write before the reads of it (`two_threads::run`).
unsafe impl Send for FormRaw {}
unsafe impl Sync for FormRaw {}

/// The top columns (positions), in the order the top block stores them: grouped by the set
/// of subtrees that reach each column, the subtree with the most rows deciding first, so that
/// each subtree's rows fall into few runs of consecutive columns (the scatter of its update
/// WᵢᵀWᵢ then subtracts whole runs). The top block is factored dense, so any order of its
/// columns gives the same factor up to rounding. On InstEval's cut the scattered updates took
/// 3.4 ns each.
fn top_order(m: usize, in_top: &[bool], supernode_of: &[usize], roots: &[usize], below: &[&[usize]]) -> Vec<usize> {
    let mut top: Vec<usize> = (0..m).filter(|&c| in_top[supernode_of[c]]).collect();
    // Subtrees by rows, most first; column c's key has bit i set where the i-th reaches it.
    let mut by_rows: Vec<usize> = (0..roots.len()).collect();
    by_rows.sort_by_key(|&i| (std::cmp::Reverse(below[roots[i]].len()), i));
    let words = roots.len().div_ceil(64);
    let mut key = vec![0u64; m * words];
    for (rank, &i) in by_rows.iter().enumerate() {
        for &r in below[roots[i]] {
            key[r * words + rank / 64] |= 1u64 << (63 - rank % 64);
        }
    }
    top.sort_by(|&a, &b| key[a * words..(a + 1) * words].cmp(&key[b * words..(b + 1) * words]).reverse().then(a.cmp(&b)));
    top
}

/// Subtree `st`'s Lᵢᵢ = chol(Sᵢᵢ) and Wᵢ = Lᵢᵢ⁻¹Sᵢ,ᵣ in place in its `block` (Sᵢᵢ, then Sᵢ,ᵣ);
/// returns log|Lᵢᵢ|² or a pivot's position.
fn factor_subtree(st: &Subtree, block: &mut [f64], buffer: &mut MemBuffer) -> Result<f64, usize> {
    let (n, r) = (st.n(), st.rows.len());
    let (diag, coupling) = block.split_at_mut(n * n);
    let mut l = MatMut::from_column_major_slice_mut(diag, n, n);
    cholesky_in_place(l.as_mut(), Default::default(), Par::Seq, MemStack::new(buffer), Default::default())
        .map_err(|LltError::NonPositivePivot { index }| st.begin + index)?;
    let logdet = 2.0 * (0..n).map(|k| l[(k, k)].ln()).sum::<f64>();
    if r > 0 {
        let wi = MatMut::from_column_major_slice_mut(coupling, n, r);
        solve_lower_triangular_in_place(l.as_ref(), wi, Par::Seq);
    }
    Ok(logdet)
}

/// Columns c0..c1 of the top block (`target` holds them, rows from 0) less WᵢᵀWᵢ of every
/// subtree reaching them, in the subtrees' order: for subtree i, the columns b0..b1 of
/// Vᵢ = WᵢᵀWᵢ whose top columns lie in c0..c1, its lower triangle formed in `prod` and
/// subtracted a run of consecutive top rows at a time.
fn subtract_updates(subtrees: &[Subtree], arena: &[f64], mut target: MatMut<'_, f64>, c0: usize, c1: usize, prod: &mut Mat<f64>) {
    for st in subtrees {
        let (n, r) = (st.n(), st.rows.len());
        let b0 = st.rows.partition_point(|&k| k < c0);
        let b1 = st.rows.partition_point(|&k| k < c1);
        if b0 == b1 {
            continue;
        }
        let wi = MatRef::from_column_major_slice(&arena[st.offset + n * n..st.offset + st.len()], n, r);
        // v[a − b0, b − b0] = Vᵢ[a, b] for a in b0..r, b in b0..b1 (a ≥ b).
        let (w, h) = (b1 - b0, r - b0);
        let mut v = prod.as_mut().submatrix_mut(0, 0, h, w);
        let panel = wi.subcols(b0, w);
        triangular::matmul(
            v.as_mut().subrows_mut(0, w),
            BlockStructure::TriangularLower,
            Accum::Replace,
            panel.transpose(),
            BlockStructure::Rectangular,
            panel,
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
        if b1 < r {
            matmul(v.as_mut().subrows_mut(w, r - b1), Accum::Replace, wi.subcols(b1, r - b1).transpose(), panel, 1.0, Par::Seq);
        }
        for b in b0..b1 {
            let src = v.as_ref().col(b - b0).try_as_col_major().unwrap().as_slice();
            let dst = target.as_mut().col_mut(st.rows[b] - c0).try_as_col_major_mut().unwrap().as_slice_mut();
            for &(a0, len) in &st.runs {
                if a0 + len <= b {
                    continue;
                }
                let a = a0.max(b);
                let ta = st.rows[a];
                for (d, &x) in dst[ta..ta + (a0 + len - a)].iter_mut().zip(&src[a - b0..a0 + len - b0]) {
                    *d -= x;
                }
            }
        }
    }
}

/// Relative time per multiply-add of the next block's Cholesky factor and panel solve, and of
/// the updates of a diagonal triangle, against an update's rectangle below the diagonal
/// (fitted to the tasks' times on InstEval's 705-column top block, two threads).
const LOOK_AHEAD_OWN_WEIGHT: f64 = 3.0;
const LOOK_AHEAD_TRIANGLE_WEIGHT: f64 = 1.5;

/// The columns a (at least `next_kb`) a look-ahead task updates from column `next` of a t × t
/// top block with a panel of `kb` columns, so that it and the trailing update of the columns
/// after take about equal time (see [`LOOK_AHEAD_OWN_WEIGHT`]); near the end of the block,
/// where the next block's own work outweighs the trailing update, a = `next_kb`.
fn look_ahead_columns(t: usize, kb: usize, next: usize, next_kb: usize) -> usize {
    let (wo, wt) = (LOOK_AHEAD_OWN_WEIGHT, LOOK_AHEAD_TRIANGLE_WEIGHT);
    let kbf = kb as f64;
    // columns next..next+a: triangle a²/2 and rectangle (t − next − a)·a; the rest a triangle.
    let x_of = |a: usize| {
        let (af, rf) = (a as f64, (t - next - a) as f64);
        kbf * (wt * af * af / 2.0 + rf * af)
    };
    let y_of = |a: usize| {
        let rf = (t - next - a) as f64;
        kbf * wt * rf * rf / 2.0
    };
    let (nb, below) = (next_kb as f64, (t - next - next_kb) as f64);
    let own = wo * (nb * nb * nb / 3.0 + below * nb * nb / 2.0);
    let mut a = next_kb;
    while next + a < t && x_of(a) + own < y_of(a) {
        a += 1;
    }
    a
}

/// Cuts 0 = c₀ < c₁ < … < n of the n columns into at most `parts` ranges of about equal total
/// `work`.
fn equal_work_cuts(work: &[f64], parts: usize) -> Vec<usize> {
    let n = work.len();
    let total: f64 = work.iter().sum();
    let mut cuts = vec![0];
    let (mut c, mut done) = (0usize, 0.0f64);
    for i in 1..parts {
        let target = total * i as f64 / parts as f64;
        while c < n && done + 0.5 * work[c] <= target {
            done += work[c];
            c += 1;
        }
        if c > *cuts.last().unwrap() && c < n {
            cuts.push(c);
        }
    }
    if n > 0 {
        cuts.push(n);
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::sparse::linalg::cholesky::{factorize_symbolic_cholesky, CholeskySymbolicParams, SymmetricOrdering};
    use faer::sparse::linalg::SupernodalThreshold;
    use faer::sparse::SymbolicSparseColMatRef;
    use faer::Side;
    use crate::test_rng::Lcg;

    /// A random SPD matrix of m columns whose links mostly stay within `blocks` clusters,
    /// as S does within InstEval's departments.
    fn clustered(m: usize, blocks: usize, seed: u64) -> (Mat<f64>, Pattern) {
        let mut g = Lcg(seed);
        let mut s = Mat::<f64>::zeros(m, m);
        for b in 0..m {
            for r in b + 1..m {
                let same = r * blocks / m == b * blocks / m;
                if g.next() < if same { 0.3 } else { 0.004 } {
                    let v = g.next() - 0.5;
                    s[(r, b)] = v;
                    s[(b, r)] = v;
                }
            }
        }
        for i in 0..m {
            let row: f64 = (0..m).map(|j| s[(i, j)].abs()).sum();
            s[(i, i)] = row + 0.5 + g.next();
        }
        let pattern = Pattern::build(m, |b, rows| rows.extend((b + 1..m).filter(|&r| s[(r, b)] != 0.0))).unwrap();
        (s, pattern)
    }

    fn symbolic(m: usize, pattern: &Pattern) -> SymbolicCholesky<usize> {
        let structure = SymbolicSparseColMatRef::new_checked(m, m, &pattern.col_ptr, None, &pattern.row_idx);
        let params = CholeskySymbolicParams {
            supernodal_flop_ratio_threshold: SupernodalThreshold::FORCE_SUPERNODAL,
            ..Default::default()
        };
        factorize_symbolic_cholesky(structure, Side::Lower, SymmetricOrdering::Amd, params).unwrap()
    }

    fn values(s: &Mat<f64>, pattern: &Pattern) -> Vec<f64> {
        let m = s.nrows();
        (0..m).flat_map(|b| pattern.row_idx[pattern.col_ptr[b]..pattern.col_ptr[b + 1]].iter().map(move |&r| s[(r, b)])).collect()
    }

    #[test]
    fn equal_work_cuts_cover_the_columns_in_ranges_of_about_equal_work() {
        assert_eq!(equal_work_cuts(&[], 4), vec![0]);
        assert_eq!(equal_work_cuts(&[0.0; 5], 4), vec![0, 5]);
        assert_eq!(equal_work_cuts(&[1.0; 8], 4), vec![0, 2, 4, 6, 8]);
        // A column heavier than a share is a range of its own; no range is empty.
        assert_eq!(equal_work_cuts(&[1.0, 10.0, 1.0, 1.0], 3), vec![0, 1, 2, 4]);
        assert_eq!(equal_work_cuts(&[5.0, 1.0], 4), vec![0, 1, 2]);
        let mut g = Lcg(3);
        let work: Vec<f64> = (0..705).map(|_| g.next()).collect();
        let cuts = equal_work_cuts(&work, 4);
        let total: f64 = work.iter().sum();
        assert_eq!((cuts.len(), cuts[0], cuts[4]), (5, 0, 705));
        for w in cuts.windows(2) {
            let part: f64 = work[w[0]..w[1]].iter().sum();
            assert!((part - total / 4.0).abs() <= 1.0, "{cuts:?}: {part} of {total}");
        }
    }

    #[test]
    fn a_look_ahead_takes_the_next_block_and_at_most_the_columns_left() {
        for t in [97, 200, 705, 1500] {
            let mut k = 0;
            let mut kb = TOP_BLOCK.min(t);
            let mut taken = Vec::new();
            while k + kb < t {
                let (next, next_kb) = (k + kb, TOP_BLOCK.min(t - k - kb));
                let a = look_ahead_columns(t, kb, next, next_kb);
                assert!(a >= next_kb && next + a <= t, "t {t}, next {next}: a {a}");
                taken.push(a);
                (k, kb) = (next, next_kb);
            }
            // Early blocks leave a large trailing update: the look-ahead takes more than the
            // next block to balance it; the last ones take just the next block.
            if t >= 705 {
                assert!(taken[0] > TOP_BLOCK, "t {t}: {taken:?}");
            }
            assert_eq!(*taken.last().unwrap(), t - (t - 1) / TOP_BLOCK * TOP_BLOCK, "t {t}: {taken:?}");
        }
    }

    #[test]
    fn the_cut_factor_gives_the_dense_log_determinant_and_quadratic_form() {
        for (seed, m, blocks) in [(1u64, 300usize, 6usize), (2, 400, 12), (3, 257, 3), (4, 1200, 10)] {
            let (s, pattern) = clustered(m, blocks, seed);
            let sym = symbolic(m, &pattern);
            let plan = SplitPlan::within(&sym, &pattern, f64::INFINITY, 2).expect("a cut");
            assert!(plan.subtrees.len() >= 2 && plan.top_len() < m, "seed {seed}: {}", plan.describe());
            // The runs are the rows, and the top block's order makes the rows of a subtree
            // with the most of them one run.
            for st in &plan.subtrees {
                let from_runs: Vec<usize> = st.runs.iter().flat_map(|&(a0, len)| (0..len).map(move |i| st.rows[a0] + i)).collect();
                assert_eq!(from_runs, st.rows, "seed {seed}");
            }
            let most = plan.subtrees.iter().map(|st| st.rows.len()).max().unwrap();
            assert!(plan.subtrees.iter().any(|st| st.rows.len() == most && st.runs.len() == 1), "seed {seed}");
            // Dense truth.
            let mut l = s.clone();
            let mut buf = MemBuffer::new(cholesky_in_place_scratch::<f64>(m, Par::Seq, Spec::<LltParams, f64>::default()));
            cholesky_in_place(l.as_mut(), Default::default(), Par::Seq, MemStack::new(&mut buf), Default::default()).unwrap();
            let logdet: f64 = 2.0 * (0..m).map(|k| l[(k, k)].ln()).sum::<f64>();
            let mut g = Lcg(seed + 10);
            let c = Mat::<f64>::from_fn(m, 3, |_, _| g.next() - 0.5);
            let mut x = c.clone();
            solve_lower_triangular_in_place(l.as_ref(), x.as_mut(), Par::Seq);
            let quad = x.transpose() * &x;
            let (mut logdets, mut forms) = (Vec::new(), Vec::new());
            for parallel in [false, true] {
                let mut work = plan.work(3);
                let ours = plan.factor(&values(&s, &pattern), &mut work, parallel).unwrap();
                logdets.push(ours);
                assert!((ours - logdet).abs() < 1e-10 * logdet.abs(), "seed {seed}: {ours} vs {logdet}");
                let mut l33 = Mat::<f64>::zeros(3, 3);
                plan.subtract_quadratic_form(c.as_ref(), l33.as_mut(), &mut work, parallel);
                for i in 0..3 {
                    for j in 0..3 {
                        assert!((l33[(i, j)] + quad[(i, j)]).abs() < 1e-10 * quad[(i, i)].abs().max(1.0), "seed {seed} ({i}, {j})");
                    }
                }
                forms.push(l33);
                // S⁻¹r by the cut factor's two triangular solves.
                let mut r: Vec<f64> = (0..m).map(|i| c[(i, 1)]).collect();
                plan.solve(&mut r, &mut work);
                let mut truth = c.as_ref().subcols(1, 1).to_owned();
                solve_lower_triangular_in_place(l.as_ref(), truth.as_mut(), Par::Seq);
                solve_upper_triangular_in_place(l.transpose(), truth.as_mut(), Par::Seq);
                let scale = (0..m).map(|i| truth[(i, 0)].abs()).fold(0.0, f64::max);
                for i in 0..m {
                    assert!((r[i] - truth[(i, 0)]).abs() < 1e-10 * scale, "seed {seed} row {i}: {} vs {}", r[i], truth[(i, 0)]);
                }
            }
            // Two threads give the same bits as one: the subtrees are added in the same order.
            assert_eq!(logdets[0].to_bits(), logdets[1].to_bits(), "seed {seed}");
            assert!(forms[0] == forms[1], "seed {seed}");
        }
    }

    #[test]
    fn a_matrix_that_is_not_positive_definite_fails_at_the_same_pivot_on_one_or_two_threads() {
        let (m, blocks) = (1200, 10);
        let (s, pattern) = clustered(m, blocks, 4);
        let sym = symbolic(m, &pattern);
        let plan = SplitPlan::within(&sym, &pattern, f64::INFINITY, 2).expect("a cut");
        let inv = sym.perm().unwrap().arrays().1.to_vec();
        // A negative diagonal entry in a subtree, then in the top block's last block of columns.
        let in_subtree = plan.subtrees[plan.subtrees.len() - 1].begin + 1;
        let in_top = plan.top[plan.top.len() - 3];
        for position in [in_subtree, in_top] {
            let row = (0..m).find(|&r| inv[r] == position).unwrap();
            let mut bad = s.clone();
            bad[(row, row)] = -1.0;
            let values = values(&bad, &pattern);
            let failures: Vec<_> = [false, true]
                .iter()
                .map(|&parallel| plan.factor(&values, &mut plan.work(1), parallel))
                .collect();
            assert_eq!(failures[0], failures[1]);
            let pivot = failures[0].expect_err("not positive definite");
            assert_eq!(pivot, position, "the first pivot to fail is the bad diagonal entry");
        }
    }
}
