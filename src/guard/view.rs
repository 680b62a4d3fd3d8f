//! What the guard has seen, shared with the reconciles: per run, a `RunMemory`. Kept in
//! memory: after a restart it refills at the next poll, and the status keeps the peak.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::plan::RunMemory;

/// Shared between the poller (writer) and the reconciles (readers), keyed by run uid.
#[derive(Clone, Default)]
pub struct GuardView {
    runs: Arc<Mutex<BTreeMap<String, RunMemory>>>,
}

impl GuardView {
    pub fn get(&self, run_uid: &str) -> Option<RunMemory> {
        self.runs.lock().ok()?.get(run_uid).cloned()
    }

    pub fn update(&self, run_uid: &str, change: impl FnOnce(&mut RunMemory)) {
        if let Ok(mut runs) = self.runs.lock() {
            change(runs.entry(run_uid.to_string()).or_default());
        }
    }

    pub fn forget(&self, run_uid: &str) {
        if let Ok(mut runs) = self.runs.lock() {
            runs.remove(run_uid);
        }
    }
}
