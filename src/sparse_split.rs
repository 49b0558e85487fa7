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
//! The subtrees are shared between two threads (longest work first); the second accumulates
//! into its own buffer. Then L_top = chol(S_top), dense. log|S| = Σ log|Lᵢᵢ|² + log|L_top|²,
//! and CᵀS⁻¹C = Σ xᵢᵀxᵢ + x_topᵀx_top for xᵢ = Lᵢᵢ⁻¹Cᵢ, x_top = L_top⁻¹(C_top − Σ Wᵢᵀxᵢ): the
//! same quantities as the supernodal factor, to rounding. Where the cut costs more than the
//! supernodal factor is estimated to, none is made ([`SplitPlan::new`] returns `None`).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltError, LltParams};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::sparse::linalg::cholesky::{SymbolicCholesky, SymbolicCholeskyRaw};
use faer::{Accum, Mat, MatMut, MatRef, Par, Spec};

use crate::sparse_rest::Pattern;

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
    /// The top columns (positions), ascending.
    top: Vec<usize>,
    subtrees: Vec<Subtree>,
    /// Subtrees [0, first_of_second) go to the first thread, the rest to the second; the
    /// arena holds them in that order, then the t × t top block.
    first_of_second: usize,
    second_offset: usize,
    top_offset: usize,
    /// The arena offset of every entry of the pattern of S (lower triangle, by column).
    dest: Vec<usize>,
    max_n: usize,
    max_r: usize,
}

/// Per-model numeric workspace of a [`SplitPlan`].
pub(crate) struct SplitWork {
    arena: Vec<f64>,
    /// The second thread's updates −ΣWᵢᵀWᵢ of the top block (t × t, lower triangle).
    update: Mat<f64>,
    products: [Mat<f64>; 2],
    buffers: [MemBuffer; 2],
    top_buffer: MemBuffer,
    rhs: Mat<f64>,
    top_rhs: Mat<f64>,
    coupling_rhs: Mat<f64>,
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
        let top: Vec<usize> = (0..m).filter(|&c| in_top[supernode_of[c]]).collect();
        let mut top_index = vec![usize::MAX; m];
        for (k, &c) in top.iter().enumerate() {
            top_index[c] = k;
        }
        let roots: Vec<usize> = (0..ns).filter(|&s| !in_top[s] && parent[s].is_none_or(|p| in_top[p])).collect();
        let works: Vec<f64> = roots.iter().map(|&s| work(s)).collect();
        let (second, _) = two_way(&works, threads);
        let mut subtrees = Vec::with_capacity(roots.len());
        for pass in [false, true] {
            for (&s, _) in roots.iter().zip(&second).filter(|&(_, &b)| b == pass) {
                let rows: Vec<usize> = below[s].iter().map(|&r| top_index[r]).collect();
                if rows.contains(&usize::MAX) {
                    return None; // an ancestor outside the top set: cannot happen
                }
                subtrees.push(Subtree {
                    begin: first[s],
                    end: end[s],
                    rows,
                    offset: 0,
                });
            }
        }
        let first_of_second = roots.len() - second.iter().filter(|&&b| b).count();
        let mut offset = 0;
        let mut second_offset = 0;
        for (i, st) in subtrees.iter_mut().enumerate() {
            if i == first_of_second {
                second_offset = offset;
            }
            st.offset = offset;
            offset += st.len();
        }
        if first_of_second == subtrees.len() {
            second_offset = offset;
        }
        let top_offset = offset;
        let t = top.len();
        // The arena, the second thread's t × t updates and the two products, in doubles: at
        // most 2m² (InstEval: 1.2 m²; the supernodal factor needs at most m²/2), and at most a
        // quarter of the memory left, as the model's memory estimate does not count them.
        let max_r = subtrees.iter().map(|st| st.rows.len()).max().unwrap_or(0) as u128;
        let workspace = (top_offset + 2 * t * t) as u128 + 2 * max_r * max_r;
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
                    (usize::MAX, usize::MAX) => top_offset + top_index[lo] * t + top_index[hi],
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
        Some(SplitPlan {
            fwd,
            top,
            subtrees,
            first_of_second,
            second_offset,
            top_offset,
            dest,
            max_n,
            max_r,
        })
    }

    #[cfg(test)]
    pub(crate) fn describe(&self) -> String { format!("top {} subtrees {:?} second from {}", self.top.len(), self.subtrees.iter().map(|s| (s.n(), s.rows.len())).collect::<Vec<_>>(), self.first_of_second) }
    /// Columns of the top block (for tests and the performance notes).
    #[cfg(test)]
    pub(crate) fn top_len(&self) -> usize {
        self.top.len()
    }

    pub(crate) fn work(&self, p1: usize) -> SplitWork {
        let t = self.top.len();
        let req = |n: usize| cholesky_in_place_scratch::<f64>(n, Par::Seq, Spec::<LltParams, f64>::default());
        SplitWork {
            arena: vec![0.0; self.top_offset + t * t],
            update: Mat::zeros(t, t),
            products: [Mat::zeros(self.max_r, self.max_r), Mat::zeros(self.max_r, self.max_r)],
            buffers: [MemBuffer::new(req(self.max_n)), MemBuffer::new(req(self.max_n))],
            top_buffer: MemBuffer::new(cholesky_in_place_scratch::<f64>(t, Par::rayon(0), Spec::<LltParams, f64>::default())),
            rhs: Mat::zeros(self.fwd.len(), p1),
            top_rhs: Mat::zeros(t, p1),
            coupling_rhs: Mat::zeros(self.max_r, p1),
        }
    }

    /// Factors S, given by its pattern's `values`; returns log|S|, or the position (in the
    /// fill-reducing order) of a non-positive pivot.
    pub(crate) fn factor(&self, values: &[f64], w: &mut SplitWork, parallel: bool) -> Result<f64, usize> {
        let t = self.top.len();
        // Only what the factorisation reads: the subtrees' blocks and the top's lower triangle.
        w.arena[..self.top_offset].fill(0.0);
        zero_lower(&mut w.arena[self.top_offset..], t);
        for (&at, &v) in self.dest.iter().zip(values) {
            w.arena[at] = v;
        }
        let (part0, rest) = w.arena.split_at_mut(self.second_offset);
        let (part1, top) = rest.split_at_mut(self.top_offset - self.second_offset);
        let (subtrees0, subtrees1) = self.subtrees.split_at(self.first_of_second);
        let top_mat = MatMut::from_column_major_slice_mut(top, t, t);
        let [prod0, prod1] = &mut w.products;
        let [buf0, buf1] = &mut w.buffers;
        let update = &mut w.update;
        let (first, second) = if parallel && !subtrees1.is_empty() {
            rayon::join(
                || eliminate(subtrees0, part0, 0, top_mat, prod0, buf0),
                || {
                    zero_lower_mat(update.as_mut());
                    eliminate(subtrees1, part1, self.second_offset, update.as_mut(), prod1, buf1)
                },
            )
        } else {
            let first = eliminate(subtrees0, part0, 0, top_mat, prod0, buf0);
            zero_lower_mat(update.as_mut());
            (first, eliminate(subtrees1, part1, self.second_offset, update.as_mut(), prod1, buf1))
        };
        let mut logdet = first? + second?;
        let mut top_mat = MatMut::from_column_major_slice_mut(top, t, t);
        if !subtrees1.is_empty() {
            for c in 0..t {
                let dst = top_mat.as_mut().col_mut(c).try_as_col_major_mut().unwrap().as_slice_mut();
                let src = update.col(c).try_as_col_major().unwrap().as_slice();
                for r in c..t {
                    dst[r] += src[r]; // the second thread's −ΣWᵢᵀWᵢ
                }
            }
        }
        let stack = MemStack::new(&mut w.top_buffer);
        let par = if parallel { Par::rayon(0) } else { Par::Seq };
        cholesky_in_place(top_mat.as_mut(), Default::default(), par, stack, Default::default())
            .map_err(|LltError::NonPositivePivot { index }| self.top[index])?;
        logdet += 2.0 * (0..t).map(|k| top_mat[(k, k)].ln()).sum::<f64>();
        Ok(logdet)
    }

    /// l33 −= CᵀS⁻¹C with the factor of the last [`factor`](Self::factor); `c` is m × p1 in
    /// the rest block's own order.
    pub(crate) fn subtract_quadratic_form(&self, c: MatRef<'_, f64>, l33: MatMut<'_, f64>, w: &mut SplitWork) {
        let t = self.top.len();
        let mut l33 = l33;
        for j in 0..c.ncols() {
            for (pos, &from) in self.fwd.iter().enumerate() {
                w.rhs[(pos, j)] = c[(from, j)];
            }
            for (k, &pos) in self.top.iter().enumerate() {
                w.top_rhs[(k, j)] = w.rhs[(pos, j)];
            }
        }
        let p1 = c.ncols();
        for st in &self.subtrees {
            let (n, r) = (st.n(), st.rows.len());
            let block = &w.arena[st.offset..st.offset + st.len()];
            let l = MatRef::from_column_major_slice(&block[..n * n], n, n);
            let wi = MatRef::from_column_major_slice(&block[n * n..], n, r);
            let mut x = w.rhs.as_mut().subrows_mut(st.begin, n);
            solve_lower_triangular_in_place(l, x.as_mut(), Par::Seq);
            matmul(l33.as_mut(), Accum::Add, x.as_ref().transpose(), x.as_ref(), -1.0, Par::Seq);
            // C_top[rows] −= Wᵢᵀxᵢ.
            let mut prod = w.coupling_rhs.as_mut().subrows_mut(0, r);
            matmul(prod.as_mut(), Accum::Replace, wi.transpose(), x.as_ref(), 1.0, Par::Seq);
            for j in 0..p1 {
                for (a, &k) in st.rows.iter().enumerate() {
                    w.top_rhs[(k, j)] -= prod[(a, j)];
                }
            }
        }
        let top = MatRef::from_column_major_slice(&w.arena[self.top_offset..self.top_offset + t * t], t, t);
        solve_lower_triangular_in_place(top, w.top_rhs.as_mut(), Par::Seq);
        matmul(l33, Accum::Add, w.top_rhs.transpose(), w.top_rhs.as_ref(), -1.0, Par::Seq);
    }
}

/// Zeroes the lower triangle (diagonal included) of the t × t column-major matrix `a`.
fn zero_lower(a: &mut [f64], t: usize) {
    for c in 0..t {
        a[c * t + c..(c + 1) * t].fill(0.0);
    }
}

/// [`zero_lower`] of a square matrix view.
fn zero_lower_mat(mut a: MatMut<'_, f64>) {
    let n = a.nrows();
    for c in 0..a.ncols() {
        a.as_mut().col_mut(c).subrows_mut(c, n - c).fill(0.0);
    }
}

/// Eliminates `subtrees` (their blocks in `arena`, which starts at arena offset `base`),
/// subtracting WᵢᵀWᵢ from `target` (the top block or the second thread's buffer); returns
/// Σ log|Lᵢᵢ|² or a pivot's position.
fn eliminate(subtrees: &[Subtree], arena: &mut [f64], base: usize, mut target: MatMut<'_, f64>, prod: &mut Mat<f64>, buffer: &mut MemBuffer) -> Result<f64, usize> {
    let mut logdet = 0.0;
    for st in subtrees {
        let (n, r) = (st.n(), st.rows.len());
        let block = &mut arena[st.offset - base..st.offset - base + st.len()];
        let (diag, coupling) = block.split_at_mut(n * n);
        let mut l = MatMut::from_column_major_slice_mut(diag, n, n);
        let stack = MemStack::new(buffer);
        cholesky_in_place(l.as_mut(), Default::default(), Par::Seq, stack, Default::default())
            .map_err(|LltError::NonPositivePivot { index }| st.begin + index)?;
        logdet += 2.0 * (0..n).map(|k| l[(k, k)].ln()).sum::<f64>();
        if r == 0 {
            continue;
        }
        let mut wi = MatMut::from_column_major_slice_mut(coupling, n, r);
        solve_lower_triangular_in_place(l.as_ref(), wi.as_mut(), Par::Seq);
        let mut v = prod.as_mut().submatrix_mut(0, 0, r, r);
        triangular::matmul(
            v.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Replace,
            wi.as_ref().transpose(),
            BlockStructure::Rectangular,
            wi.as_ref(),
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
        for (b, &tb) in st.rows.iter().enumerate() {
            let src = v.as_ref().col(b).try_as_col_major().unwrap().as_slice();
            let dst = target.as_mut().col_mut(tb).try_as_col_major_mut().unwrap().as_slice_mut();
            for (a, &ta) in st.rows.iter().enumerate().skip(b) {
                dst[ta] -= src[a];
            }
        }
    }
    Ok(logdet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::sparse::linalg::cholesky::{factorize_symbolic_cholesky, CholeskySymbolicParams, SymmetricOrdering};
    use faer::sparse::linalg::SupernodalThreshold;
    use faer::sparse::SymbolicSparseColMatRef;
    use faer::Side;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

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
    fn the_cut_factor_gives_the_dense_log_determinant_and_quadratic_form() {
        for (seed, m, blocks) in [(1u64, 300usize, 6usize), (2, 400, 12), (3, 257, 3), (4, 1200, 10)] {
            let (s, pattern) = clustered(m, blocks, seed);
            let sym = symbolic(m, &pattern);
            let plan = SplitPlan::within(&sym, &pattern, f64::INFINITY, 2).expect("a cut");
            assert!(plan.subtrees.len() >= 2 && plan.top_len() < m, "seed {seed}: {}", plan.describe());
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
                plan.subtract_quadratic_form(c.as_ref(), l33.as_mut(), &mut work);
                for i in 0..3 {
                    for j in 0..3 {
                        assert!((l33[(i, j)] + quad[(i, j)]).abs() < 1e-10 * quad[(i, i)].abs().max(1.0), "seed {seed} ({i}, {j})");
                    }
                }
                forms.push(l33);
            }
            // Two threads give the same bits as one: the subtrees are added in the same order.
            assert_eq!(logdets[0].to_bits(), logdets[1].to_bits(), "seed {seed}");
            assert!(forms[0] == forms[1], "seed {seed}");
        }
    }
}
