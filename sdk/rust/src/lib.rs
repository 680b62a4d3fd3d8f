//! batchguard's worker contract for Rust workers.
//!
//! ```no_run
//! use batchguard_worker::Batch;
//!
//! let mut batch = Batch::from_env()?;
//! while let Some(chunk) = batch.next_chunk(1000) {
//!     // process records chunk.start..chunk.end (chunk.items in items mode), flush outputs
//!     batch.add_sum("gross_pay", 12.5)?;
//!     batch.add_output("s3://bucket/part-0001.parquet")?;
//!     batch.done(&chunk)?;
//! }
//! batch.finish()?; // writes the termination message, with resumeFrom after a drain
//! # Ok::<(), batchguard_worker::BatchError>(())
//! ```
//!
//! `Batch::from_env` also starts the in-process memory guard (see [`guard`]): at the run's
//! threshold (`BATCHGUARD_MEMORY_THRESHOLD_PERCENT`) it stops the loop as SIGTERM does and the
//! result says `"stoppedFor": "memory"`. `Batch::from_env_with(Guard::Off)` or
//! `BATCHGUARD_SDK_GUARD=off` turns it off.

pub mod guard;

use guard::GuardThread;
pub use guard::{GuardConfig, MemorySeen};

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Kubernetes keeps at most this much of a termination message.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// What can go wrong for a worker, in words a worker author can act on.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0} is not set: is this process running as a batchguard worker?")]
    Missing(&'static str),
    #[error("{0}={1:?} is not an integer")]
    NotANumber(&'static str, String),
    #[error("BATCHGUARD_RANGE_END ({end}) is before BATCHGUARD_RANGE_START ({start})")]
    Backwards { start: u64, end: u64 },
    #[error("BATCHGUARD_ITEMS must be a JSON array of {0} strings")]
    Items(u64),
    #[error("chunk {start}-{end} is not the next one (checkpoint {checkpoint})")]
    OutOfOrder {
        start: u64,
        end: u64,
        checkpoint: u64,
    },
    #[error("sum {0:?} must be a finite number")]
    NotFinite(String),
    #[error(
        "the result is {0} bytes, more than the {MAX_MESSAGE_BYTES} a termination message holds: report fewer outputs or sums"
    )]
    TooLarge(usize),
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
    #[error("{0}={1:?} is not a positive number")]
    NotPositive(&'static str, String),
    #[error("BATCHGUARD_MEMORY_THRESHOLD_PERCENT must be below 100, not {0}")]
    Threshold(f64),
    #[error("cannot start the memory guard thread: {0}")]
    Guard(std::io::Error),
    #[error("cannot write the result to {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// Records `[start, end)` of the batch; `items` in items mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub start: u64,
    pub end: u64,
    pub items: Option<Vec<String>>,
}

impl Chunk {
    pub fn range(&self) -> Range<u64> {
        self.start..self.end
    }
}

/// One batch: its records, the progress made and the result to report.
#[derive(Debug)]
pub struct Batch {
    pub run: String,
    pub start: u64,
    pub end: u64,
    pub attempt: u32,
    pub memory_limit_bytes: Option<u64>,
    items: Option<Vec<String>>,
    termination_log: PathBuf,
    records: u64,
    sums: BTreeMap<String, f64>,
    outputs: Vec<String>,
    checkpoint: u64,
    stopping: Arc<AtomicBool>,
    /// The in-process guard's settings, `None` when it is off.
    pub memory_guard: Option<GuardConfig>,
    /// Set when the memory guard (not a SIGTERM) is what stopped the loop.
    stopped_for_memory: Arc<Mutex<Option<MemorySeen>>>,
    guard_thread: Option<GuardThread>,
}

/// Whether `Batch::from_env_with` starts the in-process memory guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// As the environment says (the run's threshold; `BATCHGUARD_SDK_GUARD=off` turns it off).
    FromEnv,
    Off,
}

impl Batch {
    /// Reads the batch from the process environment, installs the SIGTERM handler and starts
    /// the in-process memory guard.
    pub fn from_env() -> Result<Self, BatchError> {
        Self::from_env_with(Guard::FromEnv)
    }

    /// Like `from_env`, choosing whether the memory guard runs.
    pub fn from_env_with(guard: Guard) -> Result<Self, BatchError> {
        let mut batch = Self::from_vars(|name| std::env::var(name).ok())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, batch.stopping.clone())
            .map_err(BatchError::Signal)?;
        if guard == Guard::Off {
            batch.memory_guard = None;
        }
        batch.start_memory_guard()?;
        Ok(batch)
    }

    /// Starts the memory guard thread if `memory_guard` is set (once).
    pub fn start_memory_guard(&mut self) -> Result<(), BatchError> {
        if let (Some(config), None) = (&self.memory_guard, &self.guard_thread) {
            let thread = GuardThread::start(
                config.clone(),
                self.stopping.clone(),
                self.stopped_for_memory.clone(),
            )
            .map_err(BatchError::Guard)?;
            self.guard_thread = Some(thread);
        }
        Ok(())
    }

    /// Reads the batch from any source of variables (tests, local runs); starts nothing.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, BatchError> {
        let number = |name: &'static str, required: bool| -> Result<Option<u64>, BatchError> {
            match var(name).filter(|v| !v.is_empty()) {
                None if required => Err(BatchError::Missing(name)),
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| BatchError::NotANumber(name, v)),
            }
        };
        let start = number("BATCHGUARD_RANGE_START", true)?.unwrap_or_default();
        let end = number("BATCHGUARD_RANGE_END", true)?.unwrap_or_default();
        if end < start {
            return Err(BatchError::Backwards { start, end });
        }
        let items = match var("BATCHGUARD_ITEMS").filter(|v| !v.is_empty()) {
            None => None,
            Some(text) => {
                let items: Vec<String> =
                    serde_json::from_str(&text).map_err(|_| BatchError::Items(end - start))?;
                if items.len() as u64 != end - start {
                    return Err(BatchError::Items(end - start));
                }
                Some(items)
            }
        };
        Ok(Self {
            run: var("BATCHGUARD_RUN").unwrap_or_default(),
            start,
            end,
            attempt: number("BATCHGUARD_ATTEMPT", false)?.unwrap_or(1) as u32,
            memory_limit_bytes: number("BATCHGUARD_MEMORY_LIMIT_BYTES", false)?,
            items,
            termination_log: var("BATCHGUARD_TERMINATION_LOG")
                .unwrap_or_else(|| "/dev/termination-log".into())
                .into(),
            records: 0,
            sums: BTreeMap::new(),
            outputs: Vec::new(),
            checkpoint: start,
            stopping: Arc::new(AtomicBool::new(false)),
            memory_guard: GuardConfig::from_vars(&var)?,
            stopped_for_memory: Arc::default(),
            guard_thread: None,
        })
    }

    /// The next chunk of at most `size` records after the checkpoint; `None` when the batch is
    /// done or a drain (SIGTERM) asked to stop.
    pub fn next_chunk(&self, size: u64) -> Option<Chunk> {
        if self.checkpoint >= self.end || self.stopping.load(Ordering::Relaxed) {
            return None;
        }
        let end = (self.checkpoint + size.max(1)).min(self.end);
        let items = self.items.as_ref().map(|all| {
            all[(self.checkpoint - self.start) as usize..(end - self.start) as usize].to_vec()
        });
        Some(Chunk {
            start: self.checkpoint,
            end,
            items,
        })
    }

    /// Marks a chunk processed (its outputs flushed): the checkpoint moves past it. Every
    /// record of the chunk counts, as the operator checks `records` against the batch; rows a
    /// worker filters out go into a sum of their own (`add_sum("kept", n)`).
    pub fn done(&mut self, chunk: &Chunk) -> Result<(), BatchError> {
        if chunk.start != self.checkpoint {
            return Err(BatchError::OutOfOrder {
                start: chunk.start,
                end: chunk.end,
                checkpoint: self.checkpoint,
            });
        }
        self.checkpoint = chunk.end;
        self.records += chunk.end - chunk.start;
        Ok(())
    }

    /// Adds to a total summed across all batches of the run.
    pub fn add_sum(&mut self, key: &str, value: f64) -> Result<(), BatchError> {
        if !value.is_finite() {
            return Err(BatchError::NotFinite(key.into()));
        }
        let before = self.sums.get(key).copied();
        *self.sums.entry(key.into()).or_insert(0.0) += value;
        self.message().map(|_| ()).inspect_err(|_| match before {
            Some(v) => {
                self.sums.insert(key.into(), v);
            }
            None => {
                self.sums.remove(key);
            }
        })
    }

    /// Records an output location; refused when the result would outgrow 4 KiB.
    pub fn add_output(&mut self, location: impl Into<String>) -> Result<(), BatchError> {
        self.outputs.push(location.into());
        self.message().map(|_| ()).inspect_err(|_| {
            self.outputs.pop();
        })
    }

    /// Whether a drain (SIGTERM) or the memory guard asked this worker to stop.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// What the memory guard saw, when it is what stopped this worker.
    pub fn stopped_for_memory(&self) -> Option<MemorySeen> {
        self.stopped_for_memory.lock().ok()?.clone()
    }

    /// The termination message, refused (never truncated) above 4 KiB.
    pub fn message(&self) -> Result<String, BatchError> {
        let mut result = serde_json::json!({"records": self.records, "sums": self.sums, "outputs": self.outputs});
        if self.checkpoint < self.end {
            result["resumeFrom"] = self.checkpoint.into();
            if let Some(seen) = self.stopped_for_memory() {
                result["stoppedFor"] = "memory".into();
                result["memory"] = seen.report();
            }
        }
        let text = result.to_string();
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(BatchError::TooLarge(text.len()));
        }
        Ok(text)
    }

    /// Writes the result to the termination log.
    pub fn finish(self) -> Result<(), BatchError> {
        let text = self.message()?;
        std::fs::write(&self.termination_log, text)
            .map_err(|e| BatchError::Write(self.termination_log.clone(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(extra: &[(&str, &str)]) -> Result<Batch, BatchError> {
        let mut vars: BTreeMap<String, String> = [
            ("BATCHGUARD_RUN", "r"),
            ("BATCHGUARD_RANGE_START", "100"),
            ("BATCHGUARD_RANGE_END", "350"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Batch::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn a_whole_batch_reports_its_records_sums_and_outputs() {
        let mut b = batch(&[]).unwrap();
        let mut chunks = 0;
        while let Some(chunk) = b.next_chunk(100) {
            b.add_sum("pay", 1.5).unwrap();
            b.add_output(format!("part-{}", chunk.start)).unwrap();
            b.done(&chunk).unwrap();
            chunks += 1;
        }
        assert_eq!(chunks, 3);
        let message: serde_json::Value = serde_json::from_str(&b.message().unwrap()).unwrap();
        assert_eq!(
            message,
            serde_json::json!({"records": 250, "sums": {"pay": 4.5}, "outputs": ["part-100", "part-200", "part-300"]})
        );
    }

    #[test]
    fn a_drain_stops_before_the_next_chunk_and_reports_resume_from() {
        let mut b = batch(&[]).unwrap();
        let chunk = b.next_chunk(100).unwrap();
        b.stopping.store(true, Ordering::Relaxed); // what SIGTERM does
        b.done(&chunk).unwrap();
        assert!(b.next_chunk(100).is_none());
        let message: serde_json::Value = serde_json::from_str(&b.message().unwrap()).unwrap();
        assert_eq!(message["resumeFrom"], 200);
        assert_eq!(message["records"], 100);
    }

    #[test]
    fn items_mode_hands_out_the_items() {
        let items =
            serde_json::to_string(&(0..250).map(|i| format!("c{i}")).collect::<Vec<_>>()).unwrap();
        let b = batch(&[("BATCHGUARD_ITEMS", &items)]).unwrap();
        let chunk = b.next_chunk(2).unwrap();
        assert_eq!(chunk.items, Some(vec!["c0".to_string(), "c1".to_string()]));
        assert!(matches!(
            batch(&[("BATCHGUARD_ITEMS", "[\"one\"]")]),
            Err(BatchError::Items(250))
        ));
    }

    #[test]
    fn an_oversized_result_is_refused_not_truncated() {
        let mut b = batch(&[]).unwrap();
        let err = (0..500)
            .map(|i| b.add_output(format!("s3://bucket/some/long/prefix/part-{i:08}.parquet")))
            .find_map(Result::err);
        let err = err.expect("refused at some point");
        assert!(err.to_string().contains("more than the 4096"), "{err}");
        assert!(b.message().unwrap().len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn bad_environment_says_what_is_wrong() {
        let err = Batch::from_vars(|_| None).unwrap_err();
        assert!(
            err.to_string()
                .contains("BATCHGUARD_RANGE_START is not set")
        );
        assert!(matches!(
            batch(&[("BATCHGUARD_RANGE_END", "x")]),
            Err(BatchError::NotANumber(..))
        ));
        assert!(matches!(
            batch(&[("BATCHGUARD_RANGE_END", "5")]),
            Err(BatchError::Backwards { .. })
        ));
        assert!(batch(&[]).unwrap().add_sum("x", f64::INFINITY).is_err());
    }

    use crate::guard::tests::{FakeCgroup, LIMIT, MIB};

    /// A batch of records 0-99 guarded at 85% of 100 MiB, polling a fake cgroup every 10 ms.
    fn guarded(cgroup: &FakeCgroup) -> Batch {
        let root = cgroup.root.to_string_lossy().into_owned();
        let limit = LIMIT.to_string();
        let mut b = batch(&[
            ("BATCHGUARD_RANGE_START", "0"),
            ("BATCHGUARD_RANGE_END", "100"),
            ("BATCHGUARD_MEMORY_THRESHOLD_PERCENT", "85"),
            ("BATCHGUARD_MEMORY_LIMIT_BYTES", &limit),
            ("BATCHGUARD_CGROUP_ROOT", &root),
            ("BATCHGUARD_GUARD_INTERVAL_MS", "10"),
        ])
        .unwrap();
        b.start_memory_guard().unwrap();
        b
    }

    /// A loop adding `per_chunk` bytes of working set with each chunk of 10 records, giving
    /// the guard time to look before the chunk finishes.
    fn grow(cgroup: &FakeCgroup, b: &mut Batch, per_chunk: u64) -> serde_json::Value {
        let mut held = 0;
        while let Some(chunk) = b.next_chunk(10) {
            held += per_chunk;
            cgroup.set(held);
            std::thread::sleep(std::time::Duration::from_millis(60));
            b.add_sum("total", chunk.range().sum::<u64>() as f64)
                .unwrap();
            b.done(&chunk).unwrap();
        }
        serde_json::from_str(&b.message().unwrap()).unwrap()
    }

    #[test]
    fn a_worker_crossing_the_threshold_checkpoints_with_a_memory_marker() {
        for v2 in [false, true] {
            let cgroup = FakeCgroup::new("cross", v2, Some(LIMIT));
            let mut b = guarded(&cgroup);
            // 20 MiB per chunk: 100 MiB with records 40-49, the first chunk over 85 MiB.
            let message = grow(&cgroup, &mut b, 20 * MIB);
            assert_eq!(message["resumeFrom"], 50, "v2: {v2}: {message}");
            assert_eq!(message["records"], 50);
            assert_eq!(message["sums"]["total"], (0..50).sum::<u64>() as f64);
            assert_eq!(message["stoppedFor"], "memory");
            assert_eq!(message["memory"]["workingSetBytes"], 100 * MIB);
            assert_eq!(message["memory"]["limitBytes"], LIMIT);
        }
    }

    #[test]
    fn a_worker_staying_below_the_threshold_finishes_its_batch() {
        for v2 in [false, true] {
            let cgroup = FakeCgroup::new("below", v2, Some(LIMIT));
            let mut b = guarded(&cgroup);
            // Ten chunks of 8 MiB: 80 MiB at the end, under 85.
            let message = grow(&cgroup, &mut b, 8 * MIB);
            assert_eq!(
                message,
                serde_json::json!({"records": 100, "sums": {"total": 4950.0}, "outputs": []}),
                "v2: {v2}"
            );
        }
    }

    #[test]
    fn the_guard_reacts_within_one_poll() {
        let cgroup = FakeCgroup::new("reaction", false, Some(LIMIT));
        let mut b = guarded(&cgroup);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!b.stopping());
        cgroup.set(90 * MIB);
        let crossed = std::time::Instant::now();
        while !b.stopping() && crossed.elapsed().as_secs() < 2 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let reaction = crossed.elapsed();
        assert!(
            reaction.as_millis() < 100,
            "stopped {reaction:?} after the crossing"
        );
        assert_eq!(b.stopped_for_memory().unwrap().working_set_bytes, 90 * MIB);
        b.memory_guard = None;
    }

    #[test]
    fn a_sigterm_first_is_a_plain_drain() {
        let cgroup = FakeCgroup::new("sigterm", true, Some(LIMIT));
        let mut b = guarded(&cgroup);
        let chunk = b.next_chunk(10).unwrap();
        b.stopping.store(true, Ordering::SeqCst); // what SIGTERM does
        cgroup.set(99 * MIB);
        std::thread::sleep(std::time::Duration::from_millis(50));
        b.done(&chunk).unwrap();
        let message: serde_json::Value = serde_json::from_str(&b.message().unwrap()).unwrap();
        assert_eq!(message["resumeFrom"], 10);
        assert!(message.get("stoppedFor").is_none(), "{message}");
    }

    #[test]
    fn the_guard_can_be_turned_off() {
        let cgroup = FakeCgroup::new("off", true, Some(LIMIT));
        let root = cgroup.root.to_string_lossy().into_owned();
        let mut b = batch(&[
            ("BATCHGUARD_RANGE_START", "0"),
            ("BATCHGUARD_RANGE_END", "100"),
            ("BATCHGUARD_MEMORY_THRESHOLD_PERCENT", "85"),
            ("BATCHGUARD_CGROUP_ROOT", &root),
            ("BATCHGUARD_SDK_GUARD", "off"),
        ])
        .unwrap();
        assert_eq!(b.memory_guard, None);
        b.start_memory_guard().unwrap();
        let message = grow(&cgroup, &mut b, 20 * MIB);
        assert_eq!(message["records"], 100);
    }

    #[test]
    fn the_result_is_written_to_the_termination_log() {
        let path = std::env::temp_dir().join(format!("bg-worker-{}", std::process::id()));
        let mut b = batch(&[("BATCHGUARD_TERMINATION_LOG", path.to_str().unwrap())]).unwrap();
        let chunk = b.next_chunk(1000).unwrap();
        b.done(&chunk).unwrap();
        b.finish().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"outputs":[],"records":250,"sums":{}}"#
        );
        let _ = std::fs::remove_file(path);
    }
}
