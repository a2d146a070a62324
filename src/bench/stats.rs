//! Summaries of measured durations: percentiles by nearest rank over the sorted samples
//! (the same rule as the peer benchmarks' load generator), mean, min and max, in
//! milliseconds.

use std::time::Duration;

use serde::Serialize;

/// A summary of durations, in milliseconds. Every figure is absent when there were no
/// samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// How many samples.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: Option<f64>,
    /// Fastest.
    pub min: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Slowest.
    pub max: Option<f64>,
}

impl Summary {
    /// Summarise `samples` (any order; sorted in place).
    pub fn of(samples: &mut [Duration]) -> Summary {
        samples.sort_unstable();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        let mean = (!samples.is_empty())
            .then(|| samples.iter().map(ms).sum::<f64>() / samples.len() as f64);
        Summary {
            count: samples.len(),
            mean,
            min: samples.first().map(ms),
            p50: percentile(samples, 50.0).map(|d| ms(&d)),
            p90: percentile(samples, 90.0).map(|d| ms(&d)),
            p99: percentile(samples, 99.0).map(|d| ms(&d)),
            max: samples.last().map(ms),
        }
    }
}

/// The `p`th percentile (0–100) of `sorted` by nearest rank; `None` if empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let last = sorted.len().checked_sub(1)?;
    let rank = ((p / 100.0) * last as f64).round();
    // `rank` is within 0..=last for p in 0..=100; clamp anyway.
    let index = if rank.is_finite() && rank > 0.0 {
        (rank as usize).min(last)
    } else {
        0
    };
    sorted.get(index).copied()
}

/// Format an optional figure with `decimals`, or `-` when absent.
pub fn show(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&mut samples);
        assert_eq!(s.count, 100);
        assert_eq!(s.min, Some(1.0));
        assert_eq!(s.max, Some(100.0));
        assert_eq!(s.p50, Some(51.0));
        assert_eq!(s.p90, Some(90.0));
        assert_eq!(s.p99, Some(99.0));
        assert_eq!(s.mean, Some(50.5));
    }

    #[test]
    fn empty_is_absent() {
        let s = Summary::of(&mut []);
        assert_eq!(s.count, 0);
        assert_eq!(s.p50, None);
        assert_eq!(show(s.p50, 2), "-");
        assert_eq!(show(Some(1.234), 1), "1.2");
    }
}
