//! The soak's verdict: each check says what it looked at, what it found
//! and whether that passes. Slopes are Theil-Sen estimates (the median of
//! the slopes between every two samples), so one allocator jump or one
//! noisy window does not read as a trend.

use serde::Serialize;

/// One check of the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// What was found, in words and numbers.
    pub detail: String,
}

impl Check {
    /// A check from its outcome.
    pub fn new(name: &'static str, passed: bool, detail: impl Into<String>) -> Check {
        Check {
            name,
            passed,
            detail: detail.into(),
        }
    }
}

/// The Theil-Sen slope of `points` (x, y): the median of the slopes of
/// every pair with distinct x; `None` with fewer than two such points.
pub fn theil_sen(points: &[(f64, f64)]) -> Option<f64> {
    let mut slopes = Vec::new();
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            let dx = b.0 - a.0;
            if dx.abs() > f64::EPSILON {
                slopes.push((b.1 - a.1) / dx);
            }
        }
    }
    median(&mut slopes)
}

/// The median of `values` (reordered); `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// Memory: the RSS slope over `(seconds, bytes)` samples, in MiB per hour,
/// against `max_mib_per_hour`.
pub fn memory(samples: &[(f64, f64)], max_mib_per_hour: f64) -> Check {
    let name = "memory without growth";
    let Some(slope) = theil_sen(samples) else {
        return Check::new(name, false, "fewer than two RSS samples");
    };
    let per_hour = slope * 3600.0 / 1048576.0;
    Check::new(
        name,
        per_hour <= max_mib_per_hour,
        format!(
            "RSS slope {per_hour:+.1} MiB/h over {} samples (limit {max_mib_per_hour} MiB/h)",
            samples.len()
        ),
    )
}

/// Latency: the median of the per-window values in the last third of the
/// windows against the first third's, for p50 and p99 (microseconds). A
/// last third whose median is under `floor_us` passes whatever the ratio:
/// below it, scheduling noise (a debug build on a shared machine) moves
/// the figures more than any trend could.
pub fn latency(p50: &[f64], p99: &[f64], max_ratio: f64, floor_us: f64) -> Check {
    let name = "latency without a trend";
    let third = p50.len() / 3;
    if third == 0 {
        return Check::new(
            name,
            true,
            format!("{} window(s): too few to see a trend", p50.len()),
        );
    }
    let ratio = |values: &[f64]| {
        let first = median(&mut values[..third].to_vec()).unwrap_or(0.0);
        let last = median(&mut values[values.len() - third..].to_vec()).unwrap_or(0.0);
        (first, last, if first > 0.0 { last / first } else { 1.0 })
    };
    let (a50, b50, r50) = ratio(p50);
    let (a99, b99, r99) = ratio(p99);
    let steady = |last: f64, r: f64| r <= max_ratio || last < floor_us;
    Check::new(
        name,
        steady(b50, r50) && steady(b99, r99),
        format!(
            "median p50 {a50:.0} -> {b50:.0} us ({r50:.2}x), p99 {a99:.0} -> {b99:.0} us \
             ({r99:.2}x), first third vs last third of {} windows (limit {max_ratio}x, \
             or under {floor_us:.0} us)",
            p50.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (i as f64 * 30.0, f(i as f64 * 30.0)))
            .collect()
    }

    #[test]
    fn a_flat_series_with_one_jump_is_no_growth_but_a_leak_is() {
        let mib = 1048576.0;
        // 60 MiB flat with a one-off 20 MiB jump (an allocator arena).
        let flat = series(60, |t| {
            60.0 * mib + if t > 600.0 { 20.0 * mib } else { 0.0 }
        });
        let check = memory(&flat, 64.0);
        assert!(check.passed, "{check:?}");
        // 1 MiB a minute: 60 MiB/h.
        let leak = series(60, |t| 60.0 * mib + t / 60.0 * mib);
        let check = memory(&leak, 32.0);
        assert!(!check.passed, "{check:?}");
        assert!(check.detail.contains("+60.0 MiB/h"), "{}", check.detail);
        assert!(!memory(&leak[..1], 32.0).passed);
    }

    #[test]
    fn latency_that_drifts_up_fails_and_noise_does_not() {
        let steady: Vec<f64> = (0..12).map(|i| 100.0 + (i % 3) as f64 * 40.0).collect();
        assert!(latency(&steady, &steady, 3.0, 0.0).passed);
        let drifting: Vec<f64> = (0..12).map(|i| 100.0 * (1.0 + i as f64)).collect();
        let check = latency(&drifting, &steady, 3.0, 0.0);
        assert!(!check.passed, "{check:?}");
        assert!(
            latency(&[1.0, 100.0], &[1.0, 100.0], 3.0, 0.0).passed,
            "too few windows"
        );
        // Under the floor a ratio means nothing; over it, it does.
        assert!(latency(&drifting, &steady, 3.0, 2_000.0).passed);
        assert!(!latency(&drifting, &steady, 3.0, 500.0).passed);
    }

    #[test]
    fn theil_sen_ignores_an_outlier() {
        let mut points = series(11, |t| 2.0 * t);
        points[5].1 = 1e9;
        let slope = theil_sen(&points).unwrap();
        assert!((slope - 2.0).abs() < 1e-9, "{slope}");
        assert_eq!(median(&mut []), None);
    }
}
