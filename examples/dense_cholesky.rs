//! Times faer's dense Cholesky at the sizes the rest block takes in the benchmark grid
//! (InstEval: 1,156; 2,000 × 500 design: 500; MovieLens-like: 3,706), sequential against the
//! rayon pool, to decide the `Par` the core uses. Run:
//! `cargo run --release --example dense_cholesky`.

use std::time::Instant;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltParams};
use faer::{Mat, Par, Spec};

fn spd(n: usize) -> Mat<f64> {
    let b = Mat::<f64>::from_fn(n, n, |i, j| (((i * 7 + j * 13) % 17) as f64 - 8.0) / 17.0);
    let mut a = &b * b.transpose();
    for i in 0..n {
        a[(i, i)] += n as f64;
    }
    a
}

fn main() {
    for &n in &[500usize, 1156, 2000, 3706] {
        let a = spd(n);
        for (name, par) in [("seq", Par::Seq), ("rayon", Par::rayon(0))] {
            let mut buf = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Spec::<LltParams, f64>::default()));
            let reps = if n <= 1200 { 20 } else { 3 };
            let mut times = Vec::new();
            for _ in 0..reps {
                let mut l = a.clone();
                let t = Instant::now();
                cholesky_in_place(l.as_mut(), Default::default(), par, MemStack::new(&mut buf), Default::default()).unwrap();
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(|x, y| x.partial_cmp(y).unwrap());
            let med = times[times.len() / 2];
            let gflops = (n as f64).powi(3) / 3.0 / med / 1e9;
            println!("n={n:5} {name:5} median {:8.2} ms  {gflops:5.1} GFlop/s", med * 1e3);
        }
    }
}
