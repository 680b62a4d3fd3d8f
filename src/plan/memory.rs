//! What the guard has seen of a run's workers, as the planner reads it: per pod, the latest and
//! peak memory, and whether the guard is blind. The guard fills it; plan only reads it.

use std::collections::BTreeMap;

use jiff::Timestamp;

/// Memory seen for one worker pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodMemory {
    /// Latest fraction of the limit.
    pub fraction: f64,
    /// Highest fraction of the limit seen.
    pub peak_fraction: f64,
    /// Highest working set seen, in bytes (0: unknown): a limit grown in place changes what
    /// a fraction means, bytes stay comparable.
    pub peak_bytes: u64,
    /// The pod's own memory limit, as written on it (`128Mi`) and in bytes (0: unknown); the
    /// run's spec may say otherwise since the pod started.
    pub limit: String,
    pub limit_bytes: u64,
}

/// The guard's view of one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunMemory {
    pub pods: BTreeMap<String, PodMemory>,
    /// Set while the guard cannot see some live worker's memory.
    pub blind: Option<Blindness>,
    /// The last action the guard took, for the MemoryPressure condition.
    pub last_action: Option<String>,
}

/// Since when, and why, the guard cannot see.
#[derive(Clone, Debug, PartialEq)]
pub struct Blindness {
    pub since: Timestamp,
    pub reason: String,
}

impl RunMemory {
    /// Highest percent of the limit seen on any worker.
    pub fn peak_percent(&self) -> u32 {
        let peak = self
            .pods
            .values()
            .map(|p| p.peak_fraction)
            .fold(0.0, f64::max);
        (peak * 100.0).round() as u32
    }
}
