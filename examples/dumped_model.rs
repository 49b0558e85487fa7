//! Times a model dumped by `benches/dump_model.py` (a profiling aid for issue 7):
//! `cargo run --release --example dumped_model -- /tmp/dump/<case> [reps]`.
//! Prints the crossproduct's time, the median objective and estimates at θ = start/2.

use std::time::Instant;

use _core::{Model, Term};
use faer::Mat;

fn read_f64(path: &str) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

fn read_i32(path: &str) -> Vec<i32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn field(meta: &str, key: &str) -> Vec<usize> {
    // The few integers of meta.json after each `"key": `.
    meta.match_indices(&format!("\"{key}\": "))
        .map(|(i, s)| {
            let rest = &meta[i + s.len()..];
            let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap();
            rest[..end].parse().unwrap()
        })
        .collect()
}

fn main() {
    let dir = std::env::args().nth(1).expect("a dump directory");
    let reps: usize = std::env::args().nth(2).and_then(|v| v.parse().ok()).unwrap_or(10);
    let meta = std::fs::read_to_string(format!("{dir}/meta.json")).unwrap();
    let (n, p) = (field(&meta, "n")[0], field(&meta, "p")[0]);
    let reml = meta.contains("\"reml\": true");
    let (qs, levels) = (field(&meta, "q"), field(&meta, "levels"));
    let y = read_f64(&format!("{dir}/y.bin"));
    let xv = read_f64(&format!("{dir}/x.bin"));
    let x = Mat::<f64>::from_fn(n, p, |i, j| xv[j * n + i]);
    let make_terms = || -> Vec<Term> {
        (0..qs.len())
            .map(|k| {
                let c = read_i32(&format!("{dir}/c{k}.bin"));
                let z = read_f64(&format!("{dir}/z{k}.bin"));
                Term::new(&c, z, qs[k], levels[k], k).unwrap()
            })
            .collect()
    };
    if let Some(k) = std::env::var("DUMPED_NEW").ok().and_then(|v| v.parse::<usize>().ok()) {
        // DUMPED_NEW=k: build the model k times (a profile of the crossproduct and analysis).
        let mut times = Vec::new();
        for _ in 0..k {
            let terms = make_terms();
            let t = Instant::now();
            let model = Model::new(&y, x.as_ref(), terms, reml).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            drop(model);
        }
        times.sort_by(f64::total_cmp);
        println!("model ×{k}: median {:.1} ms, min {:.1} ms", times[k / 2], times[0]);
        return;
    }
    let terms = make_terms();
    let t = Instant::now();
    let mut model = Model::new(&y, x.as_ref(), terms, reml).unwrap();
    println!("model: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let mut clones = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let twin = model.clone();
        clones.push(t.elapsed().as_secs_f64() * 1e3);
        drop(twin);
    }
    clones.sort_by(f64::total_cmp);
    println!("clone: median {:.2} ms, min {:.2} ms over 10", clones[5], clones[0]);
    let theta: Vec<f64> = model.theta_start().iter().map(|v| v * 0.5).collect();
    let mut times = Vec::new();
    let mut value = 0.0;
    for _ in 0..reps {
        let t = Instant::now();
        value = model.objective(&theta).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!("objective {value:.6}: median {:.2} ms, min {:.2} ms over {reps}", times[reps / 2], times[0]);
    let pct = |f: f64| times[((reps as f64 - 1.0) * f) as usize];
    println!("  percentiles 10/25/50/75/90: {:.2} {:.2} {:.2} {:.2} {:.2}", pct(0.1), pct(0.25), pct(0.5), pct(0.75), pct(0.9));
    if std::env::var_os("DUMPED_OBJECTIVE_ONLY").is_some() {
        // DUMPED_OBJECTIVE_ONLY=1: stop after the objective's timings (a profile of the θ loop alone).
        return;
    }
    if std::env::var_os("DUMPED_ESTIMATES_ONLY").is_some() {
        // DUMPED_ESTIMATES_ONLY=1: the estimates as interlace.fit forms them (no conditional
        // covariances), alternating with one objective, `reps` times each.
        let (mut est, mut obj) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            model.estimates_with(&theta, false).unwrap();
            est.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            model.objective(&theta).unwrap();
            obj.push(t.elapsed().as_secs_f64() * 1e3);
        }
        est.sort_by(f64::total_cmp);
        obj.sort_by(f64::total_cmp);
        println!("estimates without conditional covariances: median {:.2} ms; objective {:.2} ms", est[reps / 2], obj[reps / 2]);
        return;
    }
    let mut times = Vec::new();
    let mut objective = 0.0;
    for _ in 0..reps.clamp(1, 10) {
        let t = Instant::now();
        objective = model.estimates(&theta).unwrap().objective;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!("estimates {objective:.6}: median {:.1} ms, min {:.1} ms over {}", times[times.len() / 2], times[0], times.len());
    let (mut full, mut modes) = (Vec::new(), Vec::new());
    for _ in 0..reps.clamp(1, 10) {
        let t = Instant::now();
        model.estimates(&theta).unwrap();
        full.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        model.estimates_with(&theta, false).unwrap();
        modes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    full.sort_by(f64::total_cmp);
    modes.sort_by(f64::total_cmp);
    println!("alternating: estimates median {:.1} ms, without conditional covariances {:.1} ms", full[full.len() / 2], modes[modes.len() / 2]);
    let mut times = Vec::new();
    for _ in 0..reps.clamp(1, 10) {
        let t = Instant::now();
        model.update_l(&theta).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!("update_l (dense): median {:.1} ms, min {:.1} ms", times[times.len() / 2], times[0]);
    if std::env::var_os("DUMPED_FIT").is_some() {
        let t = Instant::now();
        // DUMPED_START="t1,t2,..." and DUMPED_RHO=ρ_begin try other starting points.
        let start: Option<Vec<f64>> =
            std::env::var("DUMPED_START").ok().map(|v| v.split(',').map(|x| x.parse().unwrap()).collect());
        let mut options = _core::FitOptions::default();
        if let Some(rho) = std::env::var("DUMPED_RHO").ok().and_then(|v| v.parse().ok()) {
            options.rho_begin = rho;
        }
        let t0 = Instant::now();
        let default = _core::optimize::default_start(&model);
        println!("default start ({:.1} ms): {default:?}", t0.elapsed().as_secs_f64() * 1e3);
        let (est, record) = _core::optimize::fit(&mut model, start.as_deref(), options).unwrap();
        println!(
            "fit: {:.1} ms, {} evaluations, objective {:.6}, θ {:?}",
            t.elapsed().as_secs_f64() * 1e3,
            record.n_evals,
            est.objective,
            est.theta
        );
        let lower = model.lower_bounds();
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            _core::optimize::derivatives(&mut model, &est.theta, &lower, Some(est.objective)).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!("convergence check: median {:.1} ms, min {:.1} ms over 5", times[2], times[0]);
    }
}
