//! Issue 24's measurements (not timed tests: `cargo bench --bench uncertainty`).
//!
//! 1. Coverage: 1,000 simulated sets of 200 identities x 3 images (identity-correlated genuine
//!    and impostor scores with a known TAR at FAR 1e-2); the share of 95% intervals that cover
//!    the true TAR must land in 93-97%.
//! 2. Cost: the bootstrap (1,000 replicates) at 6,000 listed pairs (LFW-sized) and at 5,000
//!    images in 500 identity folders (12.5M pairs), against scoring the same pairs without it
//!    (the streaming sort compare does anyway). compare's own wall time with and without
//!    intervals is `cargo bench --bench compare_scale` with FACEBUILD_BENCH_BOOTSTRAP=0/1000.
//!
//! Writes target/bench/uncertainty.json.

use std::time::Instant;

use facebuild::uncertainty::{Bootstrap, PairedScores, simulation};

fn main() {
    let boot = Bootstrap {
        replicates: 1000,
        seed: 1,
    };
    let trials: usize = std::env::var("FACEBUILD_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let ids: usize = std::env::var("FACEBUILD_BENCH_IDENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let t = Instant::now();
    let coverage = simulation::coverage(trials, ids, 3, 1e-2, &boot);
    let coverage_s = t.elapsed().as_secs_f64();
    println!(
        "coverage: {:.1}% of {trials} sets ({ids} identities x 3 images, TAR@FAR=1e-2, true TAR {:.4}) in {coverage_s:.1} s; target 93-97%",
        coverage * 100.0,
        simulation::true_tar(1e-2)
    );

    // Cost at 6,000 listed pairs: 600 identities' worth of components, 3,000 genuine.
    let mut rng = 7u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 40) as f32 / (1u64 << 24) as f32
    };
    let t = Instant::now();
    let mut listed = PairedScores::listed(3000, "genuine-pair component", 0.3, 1e-3);
    for k in 0..6000u32 {
        let same = k % 2 == 0;
        let (a, b) = if same {
            (k / 2, k / 2)
        } else {
            (k / 2, (k / 2 + 7) % 3000)
        };
        let r = if same {
            0.15 + 0.4 * next()
        } else {
            0.3 * next()
        };
        listed.push(same, a, b, r, r + 0.1 * (next() - 0.5));
    }
    let push_listed = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let iv = listed.intervals(&boot);
    let boot_listed = t.elapsed().as_secs_f64();
    println!(
        "6,000 listed pairs: collecting {:.3} s, 1,000 replicates {:.3} s (tar_drop ci95 {:?})",
        push_listed,
        boot_listed,
        iv.tar_drop.map(|s| s.ci95)
    );

    // Cost at 5,000 images in 500 identity folders: every pair, as compare visits them.
    let (ids, per) = (500usize, 10usize);
    let n = ids * per;
    let impostors = n * (n - 1) / 2 - ids * per * (per - 1) / 2;
    let t = Instant::now();
    let mut plain = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            plain.push(((i * 31 + j * 17) % 1000) as f32 / 1000.0);
        }
    }
    plain.sort_unstable_by(f32::total_cmp);
    let sort_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut all = PairedScores::all_pairs(vec![per; ids], 0.5, 1e-3, 1.0, impostors);
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = ((i / per) as u32, (j / per) as u32);
            let base = ((i * 31 + j * 17) % 1000) as f32 / 1000.0;
            let r = if a == b { 0.5 + 0.5 * base } else { 0.6 * base };
            all.push(a == b, a, b, r, r + 0.002 * (next() - 0.5));
        }
    }
    let push_all = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let iv = all.intervals(&boot);
    let boot_all = t.elapsed().as_secs_f64();
    println!(
        "5,000 images (12.5M pairs): collecting {push_all:.2} s, 1,000 replicates {boot_all:.2} s; sorting the scores alone {sort_s:.2} s (tar_drop ci95 {:?})",
        iv.tar_drop.map(|s| s.ci95)
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("uncertainty.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "coverage": coverage, "trials": trials, "coverage_s": coverage_s,
            "listed_6000": {"collect_s": push_listed, "bootstrap_s": boot_listed},
            "images_5000": {"pairs": n * (n - 1) / 2, "collect_s": push_all, "bootstrap_s": boot_all, "sort_only_s": sort_s},
        }))
        .unwrap(),
    )
    .unwrap();
}
