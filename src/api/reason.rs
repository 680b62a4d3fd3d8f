//! Why a batch failed or was queued again, typed for the code and spelled as before in status
//! (`failures[].reason`, `pending[].reason`) and Events: a string on the wire.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A failed attempt's or a queued range's reason. Build it with `from` so that a known word
/// always becomes its variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum BatchReason {
    /// The kernel killed the worker for memory (`OOMKilled`).
    OomKilled,
    /// The guard drained the worker.
    Drained,
    /// The guard restarted the worker.
    Restarted,
    /// The worker reported part of its batch; the rest continues.
    Resumed,
    /// The guard stopped a worker that cannot get below the threshold.
    MemoryPressure,
    /// The worker's report was malformed or refused.
    BadOutput,
    /// A user asked for the failed ranges again.
    Retried,
    /// Cut off the batch grid by adaptive sizing: not a retry.
    Sized,
    /// What the kubelet or the Job controller said otherwise (`Error`, `DeadlineExceeded`, …).
    Other(String),
}

impl Default for BatchReason {
    /// The empty reason an old status may hold.
    fn default() -> Self {
        BatchReason::Other(String::new())
    }
}

impl BatchReason {
    pub fn as_str(&self) -> &str {
        match self {
            BatchReason::OomKilled => "OOMKilled",
            BatchReason::Drained => "Drained",
            BatchReason::Restarted => "Restarted",
            BatchReason::Resumed => "Resumed",
            BatchReason::MemoryPressure => "MemoryPressure",
            BatchReason::BadOutput => "BadOutput",
            BatchReason::Retried => "Retried",
            BatchReason::Sized => "Sized",
            BatchReason::Other(text) => text,
        }
    }
}

impl From<&str> for BatchReason {
    fn from(text: &str) -> Self {
        match text {
            "OOMKilled" => BatchReason::OomKilled,
            "Drained" => BatchReason::Drained,
            "Restarted" => BatchReason::Restarted,
            "Resumed" => BatchReason::Resumed,
            "MemoryPressure" => BatchReason::MemoryPressure,
            "BadOutput" => BatchReason::BadOutput,
            "Retried" => BatchReason::Retried,
            "Sized" => BatchReason::Sized,
            other => BatchReason::Other(other.to_string()),
        }
    }
}

impl From<String> for BatchReason {
    fn from(text: String) -> Self {
        BatchReason::from(text.as_str())
    }
}

impl From<BatchReason> for String {
    fn from(reason: BatchReason) -> Self {
        match reason {
            BatchReason::Other(text) => text,
            known => known.as_str().to_string(),
        }
    }
}

impl fmt::Display for BatchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_status_string() {
        for text in [
            "OOMKilled",
            "Drained",
            "Restarted",
            "Resumed",
            "MemoryPressure",
            "BadOutput",
            "Retried",
            "Sized",
            "Error",
            "DeadlineExceeded",
            "",
        ] {
            let reason = BatchReason::from(text);
            assert_eq!(reason.as_str(), text);
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, serde_json::to_string(text).unwrap());
            assert_eq!(serde_json::from_str::<BatchReason>(&json).unwrap(), reason);
        }
        assert_eq!(BatchReason::from("OOMKilled"), BatchReason::OomKilled);
        assert_eq!(
            BatchReason::from("Error"),
            BatchReason::Other("Error".into())
        );
    }
}
