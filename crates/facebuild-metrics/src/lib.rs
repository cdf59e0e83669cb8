//! Numeric comparison metrics shared by every fidelity gate. Accumulated in f64.

use facebuild_base::{domain, error, util};
use facebuild_detect as detect;
use facebuild_preprocess as preprocess;

pub mod faces;
pub mod gate;
pub mod image;
pub mod landmarks;
pub mod lfw;
pub mod similarity;
pub mod speed;
pub mod uncertainty;
pub mod verification;

use serde::Serialize;

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 && nb == 0.0 {
        return 1.0; // two zero vectors are identical
    }
    dot / (na.sqrt() * nb.sqrt())
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
}

pub fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// min / p01 / mean / max of a sample; p01 by nearest rank.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Summary {
    pub min: f64,
    pub p01: f64,
    pub mean: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(xs: &[f64]) -> Summary {
        if xs.is_empty() {
            return Summary {
                min: f64::NAN,
                p01: f64::NAN,
                mean: f64::NAN,
                max: f64::NAN,
                n: 0,
            };
        }
        let mut v = xs.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = ((0.01 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Summary {
            min: v[0],
            p01: v[rank],
            mean: v.iter().sum::<f64>() / v.len() as f64,
            max: v[v.len() - 1],
            n: v.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::LatencyMs;

    #[test]
    fn latency_percentiles_by_nearest_rank() {
        let xs: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let l = LatencyMs::of(&xs);
        assert_eq!(
            (l.min, l.median, l.p90, l.p99, l.max),
            (Some(1.0), Some(50.0), Some(90.0), Some(99.0), Some(100.0))
        );
        assert_eq!(LatencyMs::of(&[]), LatencyMs::default());
    }

    #[test]
    fn cosine_basics() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        assert!((cosine(&[1.0, 2.0], &[-1.0, -2.0]) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn summary_percentile() {
        let xs: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = Summary::of(&xs);
        assert_eq!((s.min, s.p01, s.max), (1.0, 2.0, 200.0));
    }
}
