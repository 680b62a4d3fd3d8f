//! The in-process memory guard: a background thread that reads the container's own cgroup and
//! asks the worker loop to stop, exactly as a drain's SIGTERM does, once the working set reaches
//! the run's threshold. It reacts within one poll (100 ms by default), where the operator's
//! Prometheus guard needs seconds; that one stays as the outer line for workers without an SDK.
//!
//! cgroup v1: `memory/memory.usage_in_bytes` minus `total_inactive_file` (`memory/memory.stat`),
//! limit `memory/memory.limit_in_bytes`. cgroup v2: `memory.current` minus `inactive_file`
//! (`memory.stat`), limit `memory.max`, and `memory.pressure` (PSI) when present. Both give the
//! working set the kubelet reports and the kernel's OOM killer compares with the limit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::BatchError;

/// Where the container's cgroup is mounted unless `BATCHGUARD_CGROUP_ROOT` says otherwise.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// cgroup v1 reports "no limit" as a page-rounded 2^63 - 1.
const UNLIMITED_V1: u64 = 1 << 62;

/// One look at the cgroup.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub working_set_bytes: u64,
    pub limit_bytes: Option<u64>,
    /// Microseconds in which all tasks stalled on memory (PSI `full total`), v2 only.
    pub stall_total_us: Option<u64>,
}

/// What the guard saw when it stopped the worker; reported in the termination message.
#[derive(Clone, Debug, PartialEq)]
pub struct MemorySeen {
    pub working_set_bytes: u64,
    pub limit_bytes: u64,
    /// Share of the last poll interval in which all tasks stalled on memory.
    pub pressure_percent: Option<f64>,
}

impl MemorySeen {
    pub fn percent(&self) -> f64 {
        self.working_set_bytes as f64 * 100.0 / self.limit_bytes as f64
    }

    pub(crate) fn report(&self) -> serde_json::Value {
        let mut seen = serde_json::json!({
            "workingSetBytes": self.working_set_bytes,
            "limitBytes": self.limit_bytes,
        });
        if let Some(p) = self.pressure_percent {
            seen["pressurePercent"] = ((p * 100.0).round() / 100.0).into();
        }
        seen
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

fn stat(text: Option<&str>, key: &str) -> u64 {
    text.unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' ').and_then(number))
        .unwrap_or(0)
}

fn full_stall_total(text: Option<&str>) -> Option<u64> {
    let line = text?.lines().find(|l| l.starts_with("full "))?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("total=").and_then(number))
}

/// The container's working set and limit from its cgroup (v2 or v1), or `None` without one.
pub fn read_cgroup(root: &Path) -> Option<Reading> {
    if let Some(current) = read(&root.join("memory.current")) {
        let stat_text = read(&root.join("memory.stat"));
        let limit = read(&root.join("memory.max")).unwrap_or_else(|| "max".into());
        return Some(Reading {
            working_set_bytes: number(&current)?
                .saturating_sub(stat(stat_text.as_deref(), "inactive_file")),
            limit_bytes: number(&limit),
            stall_total_us: full_stall_total(read(&root.join("memory.pressure")).as_deref()),
        });
    }
    let v1 = root.join("memory");
    let usage = number(&read(&v1.join("memory.usage_in_bytes"))?)?;
    let stat_text = read(&v1.join("memory.stat"));
    let inactive = match stat(stat_text.as_deref(), "total_inactive_file") {
        0 => stat(stat_text.as_deref(), "inactive_file"),
        total => total,
    };
    let limit = read(&v1.join("memory.limit_in_bytes")).and_then(|t| number(&t));
    Some(Reading {
        working_set_bytes: usage.saturating_sub(inactive),
        limit_bytes: limit.filter(|l| (1..UNLIMITED_V1).contains(l)),
        stall_total_us: None,
    })
}

/// How the guard runs; read from the environment by [`GuardConfig::from_vars`].
#[derive(Clone, Debug, PartialEq)]
pub struct GuardConfig {
    /// Percent of the limit at which the worker stops (the run's threshold).
    pub threshold_percent: f64,
    /// `BATCHGUARD_MEMORY_LIMIT_BYTES`: the limit when the cgroup shows none.
    pub limit_bytes: Option<u64>,
    pub cgroup_root: PathBuf,
    pub interval: Duration,
    /// Opt-in: also stop when memory stalls take this percent of a poll interval.
    pub pressure_percent: Option<f64>,
}

impl GuardConfig {
    pub fn new(threshold_percent: f64) -> Self {
        Self {
            threshold_percent,
            limit_bytes: None,
            cgroup_root: DEFAULT_CGROUP_ROOT.into(),
            interval: DEFAULT_INTERVAL,
            pressure_percent: None,
        }
    }

    /// The guard the environment asks for; `None` when it is turned off
    /// (`BATCHGUARD_SDK_GUARD=off`) or the run gives no threshold (its guard only observes).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, BatchError> {
        let off = var("BATCHGUARD_SDK_GUARD").is_some_and(|v| {
            matches!(
                v.trim().to_lowercase().as_str(),
                "0" | "false" | "off" | "no"
            )
        });
        let positive = |name: &'static str| -> Result<Option<f64>, BatchError> {
            match var(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(n) if n > 0.0 && n.is_finite() => Ok(Some(n)),
                    _ => Err(BatchError::NotPositive(name, v)),
                },
            }
        };
        if off {
            return Ok(None);
        }
        let Some(threshold) = positive("BATCHGUARD_MEMORY_THRESHOLD_PERCENT")? else {
            return Ok(None);
        };
        if threshold >= 100.0 {
            return Err(BatchError::Threshold(threshold));
        }
        Ok(Some(Self {
            threshold_percent: threshold,
            limit_bytes: positive("BATCHGUARD_MEMORY_LIMIT_BYTES")?.map(|b| b as u64),
            cgroup_root: var("BATCHGUARD_CGROUP_ROOT")
                .filter(|v| !v.is_empty())
                .map_or_else(|| DEFAULT_CGROUP_ROOT.into(), PathBuf::from),
            interval: positive("BATCHGUARD_GUARD_INTERVAL_MS")?
                .map_or(DEFAULT_INTERVAL, |ms| Duration::from_secs_f64(ms / 1000.0)),
            pressure_percent: positive("BATCHGUARD_GUARD_PRESSURE_PERCENT")?,
        }))
    }
}

/// One poll at a time; remembers the last PSI total to turn it into a rate.
#[derive(Debug)]
pub struct Probe {
    config: GuardConfig,
    last_stall: Option<(Instant, u64)>,
}

impl Probe {
    pub fn new(config: GuardConfig) -> Self {
        Self {
            config,
            last_stall: None,
        }
    }

    /// What the guard saw if it is time to stop.
    pub fn check(&mut self) -> Option<MemorySeen> {
        let reading = read_cgroup(&self.config.cgroup_root)?;
        let stalled = self.stalled_percent(reading.stall_total_us);
        // The cgroup's own limit follows an in-place resize; the environment's is the fallback
        // for a container whose cgroup shows none.
        let limit = reading.limit_bytes.or(self.config.limit_bytes)?;
        let over = reading.working_set_bytes as f64 * 100.0
            >= self.config.threshold_percent * limit as f64;
        let pressed =
            matches!((self.config.pressure_percent, stalled), (Some(at), Some(s)) if s >= at);
        (over || pressed).then_some(MemorySeen {
            working_set_bytes: reading.working_set_bytes,
            limit_bytes: limit,
            pressure_percent: stalled,
        })
    }

    fn stalled_percent(&mut self, total_us: Option<u64>) -> Option<f64> {
        let now = Instant::now();
        let total = total_us?;
        let (then, before) = self.last_stall.replace((now, total))?;
        let wall_us = now.duration_since(then).as_secs_f64() * 1e6;
        (wall_us > 0.0).then(|| (total.saturating_sub(before) as f64 / wall_us * 100.0).min(100.0))
    }
}

/// The running guard thread; dropping it ends the thread at its next poll.
#[derive(Debug)]
pub(crate) struct GuardThread {
    done: Arc<AtomicBool>,
}

impl GuardThread {
    /// Polls until the threshold, then records what it saw (unless a SIGTERM stopped the worker
    /// first) and raises `stopping`, once.
    pub(crate) fn start(
        config: GuardConfig,
        stopping: Arc<AtomicBool>,
        seen: Arc<Mutex<Option<MemorySeen>>>,
    ) -> std::io::Result<Self> {
        let done = Arc::new(AtomicBool::new(false));
        let interval = config.interval.max(MIN_INTERVAL);
        let mut probe = Probe::new(config);
        let finished = done.clone();
        std::thread::Builder::new()
            .name("batchguard-memory-guard".into())
            .spawn(move || {
                while !finished.load(Ordering::Relaxed) {
                    if let Some(saw) = probe.check() {
                        if let Ok(mut slot) = seen.lock()
                            && !stopping.load(Ordering::SeqCst)
                        {
                            *slot = Some(saw);
                        }
                        stopping.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(interval);
                }
            })?;
        Ok(Self { done })
    }
}

impl Drop for GuardThread {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const MIB: u64 = 1 << 20;
    pub const LIMIT: u64 = 100 * MIB;
    /// Exactly 85% of `LIMIT`.
    pub const AT_85: u64 = 85 * MIB;

    /// A cgroup directory whose working set a test sets: usage is the working set plus
    /// `CACHE` bytes of inactive file pages that the guard must not count.
    pub struct FakeCgroup {
        pub root: PathBuf,
        dir: PathBuf,
        v2: bool,
    }

    const CACHE: u64 = 7 * MIB;

    impl FakeCgroup {
        pub fn new(name: &str, v2: bool, limit: Option<u64>) -> Self {
            let root = std::env::temp_dir().join(format!(
                "bg-cgroup-{}-{name}-v{}",
                std::process::id(),
                if v2 { 2 } else { 1 }
            ));
            let _ = std::fs::remove_dir_all(&root);
            let dir = if v2 {
                root.clone()
            } else {
                root.join("memory")
            };
            std::fs::create_dir_all(&dir).unwrap();
            let cgroup = Self { root, dir, v2 };
            if v2 {
                cgroup.write("memory.max", &limit.map_or("max".into(), |l| l.to_string()));
                cgroup.stall(0);
            } else {
                let unlimited = 9_223_372_036_854_771_712u64;
                cgroup.write(
                    "memory.limit_in_bytes",
                    &limit.unwrap_or(unlimited).to_string(),
                );
            }
            cgroup.set(0);
            cgroup
        }

        /// Replaces a file at once, as the kernel's cgroup files read: a reader never sees one
        /// half-written.
        fn write(&self, file: &str, text: &str) {
            let staged = self.dir.join(format!(".{file}.new"));
            std::fs::write(&staged, format!("{text}\n")).unwrap();
            std::fs::rename(staged, self.dir.join(file)).unwrap();
        }

        pub fn set(&self, working_set: u64) {
            let usage = working_set + CACHE;
            if self.v2 {
                self.write(
                    "memory.stat",
                    &format!("anon {working_set}\nfile {CACHE}\ninactive_file {CACHE}"),
                );
                self.write("memory.current", &usage.to_string());
            } else {
                self.write(
                    "memory.stat",
                    &format!(
                        "cache {CACHE}\nrss {working_set}\ninactive_file {CACHE}\ntotal_cache {CACHE}\ntotal_rss {working_set}\ntotal_inactive_file {CACHE}"
                    ),
                );
                self.write("memory.usage_in_bytes", &usage.to_string());
            }
        }

        pub fn stall(&self, total_us: u64) {
            self.write(
                "memory.pressure",
                &format!(
                    "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total={total_us}"
                ),
            );
        }
    }

    impl Drop for FakeCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn probe(cgroup: &FakeCgroup, limit_bytes: Option<u64>) -> Probe {
        Probe::new(GuardConfig {
            limit_bytes,
            cgroup_root: cgroup.root.clone(),
            ..GuardConfig::new(85.0)
        })
    }

    #[test]
    fn the_working_set_is_usage_minus_inactive_file() {
        for v2 in [false, true] {
            let cgroup = FakeCgroup::new("ws", v2, Some(LIMIT));
            cgroup.set(40 * MIB);
            let reading = read_cgroup(&cgroup.root).unwrap();
            assert_eq!(reading.working_set_bytes, 40 * MIB, "v2: {v2}");
            assert_eq!(reading.limit_bytes, Some(LIMIT));
            assert_eq!(reading.stall_total_us.is_some(), v2, "PSI is a v2 file");
        }
        assert_eq!(read_cgroup(Path::new("/nonexistent/cgroup")), None);
    }

    #[test]
    fn the_guard_stops_at_the_threshold_and_not_a_byte_below() {
        for v2 in [false, true] {
            let cgroup = FakeCgroup::new("threshold", v2, Some(LIMIT));
            let mut probe = probe(&cgroup, None);
            cgroup.set(AT_85 - 1);
            assert_eq!(probe.check(), None, "v2: {v2}");
            cgroup.set(AT_85);
            let seen = probe.check().unwrap();
            assert_eq!((seen.working_set_bytes, seen.limit_bytes), (AT_85, LIMIT));
            assert_eq!(seen.percent(), 85.0);
        }
    }

    #[test]
    fn the_cgroups_limit_wins_over_the_environment_so_a_resize_counts() {
        for v2 in [false, true] {
            // The operator grew the limit in place: the environment still says the old one.
            let cgroup = FakeCgroup::new("grown", v2, Some(2 * LIMIT));
            cgroup.set(AT_85);
            assert_eq!(probe(&cgroup, Some(LIMIT)).check(), None);
            cgroup.set(2 * AT_85);
            assert_eq!(
                probe(&cgroup, Some(LIMIT)).check().unwrap().limit_bytes,
                2 * LIMIT
            );
            let unlimited = FakeCgroup::new("unlimited", v2, None);
            unlimited.set(AT_85);
            assert_eq!(read_cgroup(&unlimited.root).unwrap().limit_bytes, None);
            assert_eq!(
                probe(&unlimited, Some(LIMIT)).check().unwrap().limit_bytes,
                LIMIT
            );
            assert_eq!(
                probe(&unlimited, None).check(),
                None,
                "no limit: nothing to measure"
            );
        }
    }

    #[test]
    fn memory_stalls_stop_the_worker_when_asked_to() {
        let cgroup = FakeCgroup::new("psi", true, Some(LIMIT));
        cgroup.set(10 * MIB);
        let mut probe = Probe::new(GuardConfig {
            cgroup_root: cgroup.root.clone(),
            pressure_percent: Some(20.0),
            ..GuardConfig::new(85.0)
        });
        assert_eq!(probe.check(), None, "the first look only sets the baseline");
        std::thread::sleep(Duration::from_millis(100));
        cgroup.stall(50_000);
        let seen = probe.check().unwrap();
        assert!(
            (20.0..=60.0).contains(&seen.pressure_percent.unwrap()),
            "{seen:?}"
        );
    }

    #[test]
    fn the_environment_configures_or_turns_off_the_guard() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let config = GuardConfig::from_vars(vars(&[
            ("BATCHGUARD_MEMORY_THRESHOLD_PERCENT", "85"),
            ("BATCHGUARD_MEMORY_LIMIT_BYTES", "134217728"),
            ("BATCHGUARD_CGROUP_ROOT", "/tmp/fake"),
            ("BATCHGUARD_GUARD_INTERVAL_MS", "250"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.threshold_percent, 85.0);
        assert_eq!(config.limit_bytes, Some(128 * MIB));
        assert_eq!(config.cgroup_root, PathBuf::from("/tmp/fake"));
        assert_eq!(config.interval, Duration::from_millis(250));
        for off in [
            vars(&[]),
            vars(&[("BATCHGUARD_MEMORY_THRESHOLD_PERCENT", "")]),
            vars(&[
                ("BATCHGUARD_MEMORY_THRESHOLD_PERCENT", "85"),
                ("BATCHGUARD_SDK_GUARD", "off"),
            ]),
            vars(&[
                ("BATCHGUARD_MEMORY_THRESHOLD_PERCENT", "85"),
                ("BATCHGUARD_SDK_GUARD", "0"),
            ]),
        ] {
            assert_eq!(GuardConfig::from_vars(off).unwrap(), None);
        }
        let err = GuardConfig::from_vars(vars(&[("BATCHGUARD_MEMORY_THRESHOLD_PERCENT", "lots")]))
            .unwrap_err();
        assert!(err.to_string().contains("not a positive number"), "{err}");
        let err = GuardConfig::from_vars(vars(&[("BATCHGUARD_MEMORY_THRESHOLD_PERCENT", "150")]))
            .unwrap_err();
        assert!(err.to_string().contains("below 100"), "{err}");
    }
}
