//! Small dense kernels on q × q blocks (q = columns of one random-effects term, usually 1–4),
//! column-major, written out so the θ loop allocates nothing and calls no BLAS.
//!
//! λ is the lower-triangular relative covariance factor of one term; θ holds its lower
//! triangle column by column (lme4's layout, Bates et al. 2015 §2.2).

/// Fills the q × q lower-triangular λ (column-major) from its θ slice.
pub fn theta_to_lambda(theta: &[f64], q: usize, lam: &mut [f64]) {
    lam.iter_mut().for_each(|v| *v = 0.0);
    let mut k = 0;
    for col in 0..q {
        for row in col..q {
            lam[col * q + row] = theta[k];
            k += 1;
        }
    }
}

/// M ← M λ for an nrows × q column-major M: column c becomes Σ_{c' ≥ c} λ[c', c] col c'.
/// Columns are processed in increasing c, so each reads only columns not yet overwritten.
#[inline(always)]
pub fn lambda_right_cols(m: &mut [f64], nrows: usize, q: usize, lam: &[f64]) {
    for c in 0..q {
        for r in 0..nrows {
            let mut s = 0.0;
            for c2 in c..q {
                s += m[c2 * nrows + r] * lam[c * q + c2];
            }
            m[c * nrows + r] = s;
        }
    }
}

/// Rows `row_off..row_off + q` of a column-major nrows × ncols M ← λᵀ (those rows).
#[inline(always)]
pub fn lambda_left_rows(m: &mut [f64], nrows: usize, ncols: usize, q: usize, row_off: usize, lam: &[f64]) {
    for col in 0..ncols {
        let base = col * nrows + row_off;
        for c in 0..q {
            let mut s = 0.0;
            for c2 in c..q {
                s += lam[c * q + c2] * m[base + c2];
            }
            m[base + c] = s;
        }
    }
}

/// In-place lower Cholesky of a q × q column-major block; the strict upper part is zeroed.
/// Returns the index of the first non-positive pivot on failure.
#[inline(always)]
pub fn chol_small(a: &mut [f64], q: usize) -> Result<(), usize> {
    for j in 0..q {
        let mut d = a[j * q + j];
        for k in 0..j {
            d -= a[k * q + j] * a[k * q + j];
        }
        if d.is_nan() || d <= 0.0 || !d.is_finite() {
            return Err(j);
        }
        let d = d.sqrt();
        a[j * q + j] = d;
        for i in j + 1..q {
            let mut s = a[j * q + i];
            for k in 0..j {
                s -= a[k * q + i] * a[k * q + j];
            }
            a[j * q + i] = s / d;
        }
        for i in 0..j {
            a[j * q + i] = 0.0;
        }
    }
    Ok(())
}

/// v ← L⁻¹ v for lower-triangular q × q column-major L.
#[inline(always)]
pub fn solve_lower_small(l: &[f64], q: usize, v: &mut [f64]) {
    for i in 0..q {
        let mut s = v[i];
        for k in 0..i {
            s -= l[k * q + i] * v[k];
        }
        v[i] = s / l[i * q + i];
    }
}

/// v ← L⁻ᵀ v for lower-triangular q × q column-major L.
pub fn solve_upper_small(l: &[f64], q: usize, v: &mut [f64]) {
    for i in (0..q).rev() {
        let mut s = v[i];
        for k in i + 1..q {
            s -= l[i * q + k] * v[k];
        }
        v[i] = s / l[i * q + i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chol_small_reconstructs() {
        let a = [4.0, 2.0, 0.4, 2.0, 5.0, 1.0, 0.4, 1.0, 3.0];
        let mut l = a;
        chol_small(&mut l, 3).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let s: f64 = (0..3).map(|k| l[k * 3 + i] * l[k * 3 + j]).sum();
                assert!((s - a[j * 3 + i]).abs() < 1e-12);
            }
        }
        let mut v = [1.0, -2.0, 0.5];
        let orig = v;
        solve_lower_small(&l, 3, &mut v);
        solve_upper_small(&l, 3, &mut v);
        // (L Lᵀ) v = orig
        for i in 0..3 {
            let s: f64 = (0..3).map(|j| a[j * 3 + i] * v[j]).sum();
            assert!((s - orig[i]).abs() < 1e-12);
        }
    }

    #[test]
    fn chol_small_reports_the_pivot() {
        let mut a = [1.0, 2.0, 2.0, 1.0];
        assert_eq!(chol_small(&mut a, 2), Err(1));
    }

    #[test]
    fn lambda_products_match_dense() {
        let theta = [1.5, -0.3, 0.7];
        let mut lam = [0.0; 4];
        theta_to_lambda(&theta, 2, &mut lam);
        assert_eq!(lam, [1.5, -0.3, 0.0, 0.7]);
        let m0 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 3 × 2
        let mut m = m0;
        lambda_right_cols(&mut m, 3, 2, &lam);
        for r in 0..3 {
            for c in 0..2 {
                let s: f64 = (0..2).map(|k| m0[k * 3 + r] * lam[c * 2 + k]).sum();
                assert!((m[c * 3 + r] - s).abs() < 1e-12);
            }
        }
        let t0 = [1.0, 2.0, 3.0, 4.0]; // 2 × 2
        let mut t = t0;
        lambda_left_rows(&mut t, 2, 2, 2, 0, &lam);
        for r in 0..2 {
            for c in 0..2 {
                let s: f64 = (0..2).map(|k| lam[r * 2 + k] * t0[c * 2 + k]).sum();
                assert!((t[c * 2 + r] - s).abs() < 1e-12);
            }
        }
    }
}
