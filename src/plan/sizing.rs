//! Adaptive batch size: a worker's peak memory modelled as a fixed baseline (interpreter,
//! libraries, caches) plus a cost per record, fitted over recent finished batches, and the
//! batch size whose expected peak leaves room under the guard's threshold. Pure.
//!
//! Splitting memory into baseline and per-record cost matters for workers with a large fixed
//! footprint: charging the baseline to the records would predict that half the records need
//! half the memory, and shrink batches far below what fits.

use crate::api::{BatchRunSpec, MemorySample};

/// Batch sizes the fit remembers (the newest replace the oldest).
pub const MAX_MEMORY_SAMPLES: usize = 8;

/// Share of the room between the baseline and the threshold that adaptive batches aim to use,
/// leaving the rest for variance between batches.
const SIZING_MARGIN: f64 = 0.8;

/// Record counts must differ by this factor before the fit tells the baseline apart from the
/// per-record cost; closer counts amplify measurement noise into the slope.
const MIN_SPREAD: f64 = 1.5;

/// Peak memory ≈ `baseline_bytes + bytes_per_record × records`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryModel {
    pub baseline_bytes: u64,
    pub bytes_per_record: u64,
}

/// Adds a finished batch's peak to the samples: the newest per batch size, so batches of the
/// size the run settled on do not push out the sizes the baseline was told apart by.
pub fn remember(samples: &mut Vec<MemorySample>, sample: MemorySample) {
    if sample.records == 0 || sample.peak_bytes == 0 {
        return;
    }
    samples.retain(|s| s.records != sample.records);
    samples.push(sample);
    let extra = samples.len().saturating_sub(MAX_MEMORY_SAMPLES);
    samples.drain(..extra);
}

/// The model of the samples; `None` when nothing says memory grows with the records.
///
/// With batches of clearly different sizes, a least-squares line through (records, peak).
/// Otherwise the baseline cannot be told apart, and only batches that came near the threshold
/// (`near_bytes`) teach a per-record cost with no baseline: a cool run's baseline must not
/// shrink its batches.
pub fn fit(samples: &[MemorySample], near_bytes: u64) -> Option<MemoryModel> {
    let xs = samples.iter().map(|s| s.records as f64);
    let (min_x, max_x) = xs.fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if !samples.is_empty() && max_x >= min_x * MIN_SPREAD {
        return least_squares(samples);
    }
    samples
        .iter()
        .filter(|s| s.peak_bytes >= near_bytes)
        .map(|s| s.peak_bytes.div_ceil(s.records))
        .max()
        .map(|bytes_per_record| MemoryModel {
            baseline_bytes: 0,
            bytes_per_record,
        })
}

fn least_squares(samples: &[MemorySample]) -> Option<MemoryModel> {
    let n = samples.len() as f64;
    let mean_x = samples.iter().map(|s| s.records as f64).sum::<f64>() / n;
    let mean_y = samples.iter().map(|s| s.peak_bytes as f64).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for s in samples {
        let dx = s.records as f64 - mean_x;
        covariance += dx * (s.peak_bytes as f64 - mean_y);
        variance += dx * dx;
    }
    let slope = covariance / variance;
    if !slope.is_finite() || slope <= 0.0 {
        return None;
    }
    let intercept = mean_y - slope * mean_x;
    if intercept < 0.0 {
        // More than proportional growth: a line through zero is the cautious reading.
        let per_record = samples
            .iter()
            .map(|s| s.peak_bytes.div_ceil(s.records))
            .max()?;
        return Some(MemoryModel {
            baseline_bytes: 0,
            bytes_per_record: per_record,
        });
    }
    Some(MemoryModel {
        baseline_bytes: intercept.round() as u64,
        bytes_per_record: slope.round() as u64,
    })
}

/// The memory an adaptive batch may expect to peak at: the threshold's share of the limit.
pub fn threshold_bytes(spec: &BatchRunSpec, limit_bytes: u64) -> u64 {
    (limit_bytes as f64 * f64::from(spec.memory_guard.threshold) / 100.0) as u64
}

/// Below this a finished batch's peak says nothing without a baseline (see `fit`).
pub fn near_threshold_bytes(spec: &BatchRunSpec, limit_bytes: u64) -> u64 {
    (threshold_bytes(spec, limit_bytes) as f64 * SIZING_MARGIN) as u64
}

/// The batch size whose expected peak uses `SIZING_MARGIN` of the room between the baseline
/// and the threshold, never above `spec.input.batchSize` and never below one record.
pub fn batch_size(spec: &BatchRunSpec, model: Option<MemoryModel>, limit_bytes: u64) -> u64 {
    let configured = spec.input.batch_size.max(1);
    let Some(model) = model.filter(|m| m.bytes_per_record > 0 && limit_bytes > 0) else {
        return configured;
    };
    let room = threshold_bytes(spec, limit_bytes).saturating_sub(model.baseline_bytes) as f64;
    ((room * SIZING_MARGIN / model.bytes_per_record as f64).floor() as u64).clamp(1, configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn sample(records: u64, peak_mib: f64) -> MemorySample {
        MemorySample {
            records,
            peak_bytes: (peak_mib * MI as f64) as u64,
        }
    }

    fn spec(batch_size: u64) -> BatchRunSpec {
        serde_json::from_value(serde_json::json!({
            "input": {"range": {"start": 0, "end": 1000}, "batchSize": batch_size},
            "template": {"spec": {"containers": [{"name": "worker", "image": "w"}]}},
            "resources": {"memory": {"request": "128Mi", "limit": "128Mi"}},
        }))
        .unwrap()
    }

    #[test]
    fn a_line_through_batches_of_different_sizes_finds_baseline_and_cost() {
        let samples = [sample(40, 100.0), sample(20, 90.0), sample(10, 85.0)];
        let model = fit(&samples, u64::MAX).unwrap();
        assert_eq!(model.baseline_bytes, 80 * MI);
        assert_eq!(model.bytes_per_record, MI / 2);
    }

    #[test]
    fn a_large_fixed_footprint_does_not_shrink_batches_to_a_few_records() {
        // 80 MiB of baseline and 0.5 MiB a record under 128Mi: 40 records peak at 100 MiB,
        // 78% of the limit, below the 85% threshold, but above the sizing target.
        let peak = |records: u64| sample(records, 80.0 + 0.5 * records as f64);
        let spec = spec(40);
        let near = near_threshold_bytes(&spec, 128 * MI);
        let (mut fitted, mut samples) = (40, vec![]);
        let mut per_record_only = 40;
        for _ in 0..12 {
            remember(&mut samples, peak(fitted));
            fitted = batch_size(&spec, fit(&samples, near), 128 * MI);
            // The same peaks read as a cost per record with no baseline.
            let last = peak(per_record_only);
            let model = (last.peak_bytes >= near).then(|| MemoryModel {
                baseline_bytes: 0,
                bytes_per_record: last.peak_bytes.div_ceil(last.records),
            });
            per_record_only = batch_size(
                &spec,
                model.or(Some(MemoryModel {
                    baseline_bytes: 0,
                    bytes_per_record: 1,
                })),
                128 * MI,
            )
            .min(per_record_only);
        }
        let model = fit(&samples, near).unwrap();
        assert_eq!(model.baseline_bytes, 80 * MI);
        assert_eq!(model.bytes_per_record, MI / 2);
        assert_eq!(fitted, 40, "the whole batch fits");
        assert!(
            per_record_only <= 20,
            "without a baseline the batches keep shrinking: {per_record_only}"
        );
    }

    #[test]
    fn the_baseline_leaves_the_room_batches_are_sized_into() {
        // 60 MiB baseline, 2 MiB a record: (108.8 - 60) × 0.8 / 2 = 19 records.
        let samples = [sample(30, 120.0), sample(10, 80.0), sample(20, 100.0)];
        let spec = spec(30);
        let model = fit(&samples, near_threshold_bytes(&spec, 128 * MI));
        assert_eq!(
            model,
            Some(MemoryModel {
                baseline_bytes: 60 * MI,
                bytes_per_record: 2 * MI
            })
        );
        assert_eq!(batch_size(&spec, model, 128 * MI), 19);
    }

    #[test]
    fn noisy_peaks_of_similar_batches_teach_only_near_the_threshold() {
        let spec = spec(100);
        let near = near_threshold_bytes(&spec, 128 * MI);
        // 100 and 90 records are too close to tell a baseline apart.
        let cool = [sample(100, 40.0), sample(90, 41.0)];
        assert_eq!(fit(&cool, near), None);
        assert_eq!(batch_size(&spec, fit(&cool, near), 128 * MI), 100);
        let hot = [sample(100, 100.0), sample(90, 80.0)];
        let model = fit(&hot, near).unwrap();
        assert_eq!((model.baseline_bytes, model.bytes_per_record), (0, MI));
        assert_eq!(batch_size(&spec, Some(model), 128 * MI), 87);
    }

    #[test]
    fn memory_that_does_not_grow_with_records_never_shrinks_batches() {
        let flat = [sample(10, 100.0), sample(40, 99.0), sample(20, 100.5)];
        assert_eq!(fit(&flat, 0), None);
    }

    #[test]
    fn faster_than_linear_growth_is_read_through_zero() {
        let samples = [sample(10, 10.0), sample(40, 100.0)];
        let model = fit(&samples, u64::MAX).unwrap();
        assert_eq!(model.baseline_bytes, 0);
        assert_eq!(model.bytes_per_record, (100 * MI).div_ceil(40));
    }

    #[test]
    fn a_baseline_above_the_threshold_leaves_one_record_per_batch() {
        let model = MemoryModel {
            baseline_bytes: 120 * MI,
            bytes_per_record: MI,
        };
        assert_eq!(batch_size(&spec(50), Some(model), 128 * MI), 1);
    }

    #[test]
    fn only_the_newest_samples_are_kept() {
        let mut samples = vec![];
        for records in 1..=20 {
            remember(&mut samples, sample(records, 1.0));
        }
        remember(&mut samples, sample(0, 1.0));
        remember(&mut samples, sample(15, 2.0));
        assert_eq!(samples.len(), MAX_MEMORY_SAMPLES);
        assert_eq!(
            samples.last().unwrap().peak_bytes,
            2 * MI,
            "one sample per size, the newest"
        );
        assert_eq!(samples[0].records, 13);
    }
}
