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

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
}

impl Batch {
    /// Reads the batch from the process environment and installs the SIGTERM handler.
    pub fn from_env() -> Result<Self, BatchError> {
        let batch = Self::from_vars(|name| std::env::var(name).ok())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, batch.stopping.clone())
            .map_err(BatchError::Signal)?;
        Ok(batch)
    }

    /// Reads the batch from any source of variables (tests, local runs).
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

    /// Marks a chunk processed (its outputs flushed): the checkpoint moves past it.
    pub fn done(&mut self, chunk: &Chunk) -> Result<(), BatchError> {
        self.done_with(chunk, chunk.end - chunk.start)
    }

    /// Like `done`, counting `records` (fewer when rows were filtered out).
    pub fn done_with(&mut self, chunk: &Chunk, records: u64) -> Result<(), BatchError> {
        if chunk.start != self.checkpoint {
            return Err(BatchError::OutOfOrder {
                start: chunk.start,
                end: chunk.end,
                checkpoint: self.checkpoint,
            });
        }
        self.checkpoint = chunk.end;
        self.records += records;
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

    /// Whether a drain asked this worker to stop.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The termination message, refused (never truncated) above 4 KiB.
    pub fn message(&self) -> Result<String, BatchError> {
        let mut result = serde_json::json!({"records": self.records, "sums": self.sums, "outputs": self.outputs});
        if self.checkpoint < self.end {
            result["resumeFrom"] = self.checkpoint.into();
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
