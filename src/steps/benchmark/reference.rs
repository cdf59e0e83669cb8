//! OpenVINO's benchmark_app as a reference: run on the same IR, shape, hint and precision,
//! in each round beside facebuild's own process, for about as many inferences as that
//! process timed (benchmark_app takes whole seconds or an iteration count, so the count
//! matches the seconds). The per-round ratios of the two throughputs give an interval;
//! one that excludes 1 is flagged in the report.

use std::process::{Command, Stdio};

use crate::metrics::speed::{self, SpeedFigure};
use serde::{Deserialize, Serialize};

use super::StepContext;
use crate::error::{Error, Result};
use crate::runtime::BenchmarkApp;
use crate::runtime::bench::BenchSpec;

/// facebuild's batch-1 throughput over benchmark_app's, over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agreement {
    /// The geometric mean of the rounds' ratios, with Student t intervals on their logs.
    pub throughput_ratio: SpeedFigure,
    /// Whether the 95% interval holds 1.
    pub agrees: bool,
    /// Why not, for the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
}

/// The agreement of rounds whose ratios are `ratios`; None with fewer than 2.
pub(super) fn agreement(ratios: &[f64]) -> Option<Agreement> {
    let f = speed::paired_scalar_ratio(ratios)?;
    let [lo, hi] = f.spread.ci95;
    let agrees = lo <= 1.0 && 1.0 <= hi;
    let flag = (!agrees).then(|| {
        format!(
            "facebuild's batch-1 throughput is {:.3}x benchmark_app's (95% interval [{lo:.3}, {hi:.3}] over {} rounds), which excludes 1: the two disagree beyond their noise",
            f.value, f.spread.units
        )
    });
    Some(Agreement {
        throughput_ratio: f,
        agrees,
        flag,
    })
}

/// benchmark_app on the same IR, shape, hint and precision: (throughput FPS, median ms).
pub(super) fn benchmark_app(
    ctx: &StepContext,
    spec: &BenchSpec,
    niter: usize,
) -> Result<BenchmarkApp> {
    let exe = ctx.toolchain.info.bin_dir.join("benchmark_app");
    // benchmark_app finds the weights and the format by file name; store blobs have neither.
    let xml = ctx.workdir.join("benchmark_app-model.xml");
    let _ = std::fs::remove_file(&xml);
    let _ = std::fs::remove_file(xml.with_extension("bin"));
    let abs = |p: &camino::Utf8Path| p.canonicalize_utf8().map_err(|e| Error::io(p, e));
    std::os::unix::fs::symlink(abs(&spec.artifact)?, &xml).map_err(|e| Error::io(&xml, e))?;
    std::os::unix::fs::symlink(
        abs(&spec
            .weights
            .clone()
            .unwrap_or_else(|| spec.artifact.with_extension("bin")))?,
        xml.with_extension("bin"),
    )
    .map_err(|e| Error::io(&xml, e))?;
    // Every input: `-shape target[1,3,128,128],source[1,512]`.
    let shape = spec
        .shapes_at(1)
        .iter()
        .map(|(n, s)| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("{n}[{}]", dims.join(","))
        })
        .collect::<Vec<_>>()
        .join(",");
    // Relative to the scratch folder it runs in: the report records the arguments.
    let mut args = vec![
        "-m".to_string(),
        "benchmark_app-model.xml".to_string(),
        "-d".into(),
        "CPU".into(),
        "-hint".into(),
        spec.hint.clone().unwrap_or_default().to_lowercase(),
        "-niter".into(),
        niter.to_string(),
        "-shape".into(),
        shape,
    ];
    if let Some(p) = &spec.precision_hint {
        args.extend(["-infer_precision".to_string(), p.clone()]);
    }
    if let Some(t) = spec.threads {
        args.extend(["-nthreads".to_string(), t.to_string()]);
    }
    let out = Command::new(&exe)
        .args(&args)
        .current_dir(ctx.workdir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::toolchain(format!("cannot run {exe}: {e}")))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let num = |key: &str| {
        text.lines()
            .find(|l| l.contains(key))
            .and_then(|l| l.split(key).nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    // Durations come as "1.43 ms" or, below a millisecond in some versions, "658.66 us".
    let ms = |key: &str| {
        let rest = text
            .lines()
            .find(|l| l.contains(key))?
            .split(key)
            .nth(1)?
            .to_string();
        let mut it = rest.split_whitespace();
        let v: f64 = it.next()?.parse().ok()?;
        Some(match it.next() {
            Some("us") => v / 1e3,
            Some("s") => v * 1e3,
            _ => v,
        })
    };
    if !out.status.success() {
        return Err(anyhow::anyhow!(
            "benchmark_app failed ({}): {}",
            out.status,
            text.lines()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
        .into());
    }
    let count = num("Count:");
    let unreliable = count
        .is_none()
        .then(|| "benchmark_app printed no iteration count".to_string());
    Ok(BenchmarkApp {
        tool: "benchmark_app".into(),
        throughput_fps: num("Throughput:"),
        median_ms: ms("Median:"),
        count,
        first_inference_ms: ms("First inference took"),
        args,
        throughput_ratio: None,
        median_latency_ratio: None,
        unreliable,
    })
}
