//! The unit tests' pseudo-random numbers: a 64-bit linear congruential generator (Knuth's
//! MMIX constants), so the tests need no extra crate and every seed gives the same data.

pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    /// Uniform on [0, 1), from the top 53 bits of the state.
    pub(crate) fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller, one of the pair).
    pub(crate) fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.next().max(1e-300), self.next());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform on 0..k.
    pub(crate) fn below(&mut self, k: usize) -> usize {
        ((self.next() * k as f64) as usize).min(k - 1)
    }
}
