//! Times the objective of InstEval's `y ~ service + (1|s) + (1|d) + (1|dept:service)` from
//! the test fixture, without Python: `cargo run --release --example insteval_objective`.
//! Prints the median time of one evaluation at a fixed θ (a profiling aid for issue 7).

use std::collections::HashMap;
use std::time::Instant;

use _core::{Model, Term};
use faer::Mat;

fn codes(values: &[String]) -> (Vec<i32>, usize) {
    let mut map: HashMap<&str, i32> = HashMap::new();
    let codes = values
        .iter()
        .map(|v| {
            let next = map.len() as i32;
            *map.entry(v.as_str()).or_insert(next)
        })
        .collect();
    (codes, map.len())
}

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/reference/data/InstEval.csv");
    let text = std::fs::read_to_string(path).expect("the InstEval fixture");
    let (mut s, mut d, mut ds, mut service, mut y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').map(|v| v.trim_matches('"')).collect();
        s.push(f[0].to_string());
        d.push(f[1].to_string());
        ds.push(format!("{}:{}", f[5], f[4]));
        service.push(if f[4] == "1" { 1.0 } else { 0.0 });
        y.push(f[6].parse::<f64>().unwrap());
    }
    let n = y.len();
    let mut x = Mat::<f64>::zeros(n, 2);
    for i in 0..n {
        x[(i, 0)] = 1.0;
        x[(i, 1)] = service[i];
    }
    let mut terms = Vec::new();
    for (k, v) in [&s, &d, &ds].into_iter().enumerate() {
        let (c, levels) = codes(v);
        terms.push(Term::new(&c, vec![1.0; n], 1, levels, k).unwrap());
    }
    let t = Instant::now();
    let mut model = Model::new(&y, x.as_ref(), terms, false).unwrap();
    println!("model: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let theta = [0.31, 0.45, 0.21];
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let mut times = Vec::new();
    let mut value = 0.0;
    for _ in 0..reps {
        let t = Instant::now();
        value = model.objective(&theta).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!("objective {value:.6}: median {:.2} ms, min {:.2} ms over {reps}", times[reps / 2], times[0]);
}
