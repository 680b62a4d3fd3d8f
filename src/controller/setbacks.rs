//! The operator's memory of what went wrong per run, kept only to back off: refused Job
//! creations (the planner waits and the run says why) and failed reconciles. Lost on restart
//! by design: the next try finds the same refusal again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

use crate::plan::{Refusal, refusal_delay};

/// The wait after a run's first failed reconcile; it doubles with each failure in a row.
const ERROR_BASE: Duration = Duration::from_secs(5);
/// The longest wait between failed reconciles: a run broken for long is still retried.
const ERROR_MAX: Duration = Duration::from_secs(300);

/// How long a run waits after its `failures`-th failed reconcile in a row: 5 s, 10 s, 20 s, …
/// at most 5 min. Per run, so one broken run neither slows the others nor is retried hot.
pub fn error_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    ERROR_BASE.saturating_mul(1 << doublings).min(ERROR_MAX)
}

#[derive(Default)]
pub struct Setbacks {
    refusals: Mutex<HashMap<String, (i64, Refusal)>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Setbacks {
    /// Records that the apiserver refused a Job of run `uid` at `generation`.
    pub fn refused(&self, uid: &str, generation: i64, code: u16, message: String, now: Timestamp) {
        let mut refusals = self.refusals.lock().expect("setbacks poisoned");
        let times = match refusals.get(uid) {
            Some((g, r)) if *g == generation => r.times + 1,
            _ => 1,
        };
        let retry_at = now + refusal_delay(times);
        let refusal = Refusal {
            code,
            message,
            times,
            retry_at,
        };
        refusals.insert(uid.to_string(), (generation, refusal));
    }

    /// The standing refusal of run `uid`, unless its spec changed since (a new generation
    /// deserves a try at once).
    pub fn refusal(&self, uid: &str, generation: i64) -> Option<Refusal> {
        let mut refusals = self.refusals.lock().expect("setbacks poisoned");
        match refusals.get(uid) {
            Some((g, r)) if *g == generation => Some(r.clone()),
            Some(_) => {
                refusals.remove(uid);
                None
            }
            None => None,
        }
    }

    /// A Job of run `uid` was created: it is refused no more.
    pub fn accepted(&self, uid: &str) {
        self.refusals.lock().expect("setbacks poisoned").remove(uid);
    }

    /// Counts a failed reconcile of run `uid`; returns how long to wait before the next one.
    pub fn failed(&self, uid: &str) -> Duration {
        let mut failures = self.failures.lock().expect("setbacks poisoned");
        let times = failures.entry(uid.to_string()).or_default();
        *times = times.saturating_add(1);
        error_backoff(*times)
    }

    /// A reconcile of run `uid` succeeded.
    pub fn reconciled(&self, uid: &str) {
        self.failures.lock().expect("setbacks poisoned").remove(uid);
    }

    /// A deleted run leaves nothing behind.
    pub fn forget(&self, uid: &str) {
        self.accepted(uid);
        self.reconciled(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_one_generation_back_off_and_a_new_generation_starts_over() {
        let setbacks = Setbacks::default();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        setbacks.refused("u", 1, 422, "invalid".into(), now);
        setbacks.refused("u", 1, 422, "invalid".into(), now);
        let refusal = setbacks.refusal("u", 1).unwrap();
        assert_eq!(refusal.times, 2);
        assert_eq!(refusal.retry_at, now + Duration::from_secs(10));
        assert_eq!(setbacks.refusal("u", 2), None, "the spec changed");
        assert_eq!(
            setbacks.refusal("u", 1),
            None,
            "and the old refusal is gone"
        );
        setbacks.refused("u", 2, 403, "quota".into(), now);
        setbacks.accepted("u");
        assert_eq!(setbacks.refusal("u", 2), None);
    }

    #[test]
    fn failed_reconciles_wait_twice_as_long_each_time_up_to_five_minutes() {
        let cases = [
            (0, 5),
            (1, 5),
            (2, 10),
            (3, 20),
            (4, 40),
            (5, 80),
            (6, 160),
            (7, 300),
            (8, 300),
            (40, 300),
            (u32::MAX, 300),
        ];
        for (failures, seconds) in cases {
            assert_eq!(
                error_backoff(failures),
                Duration::from_secs(seconds),
                "after {failures} failures"
            );
        }
    }

    #[test]
    fn each_run_backs_off_on_its_own() {
        let setbacks = Setbacks::default();
        setbacks.failed("a");
        setbacks.failed("a");
        assert_eq!(setbacks.failed("a"), Duration::from_secs(20));
        assert_eq!(
            setbacks.failed("b"),
            Duration::from_secs(5),
            "b failed once"
        );
        setbacks.forget("a");
        assert_eq!(
            setbacks.failed("a"),
            Duration::from_secs(5),
            "a deleted run starts over"
        );
    }

    #[test]
    fn failed_reconciles_back_off_until_one_succeeds() {
        let setbacks = Setbacks::default();
        let delays: Vec<u64> = (0..3).map(|_| setbacks.failed("u").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20]);
        setbacks.reconciled("u");
        assert_eq!(setbacks.failed("u"), Duration::from_secs(5));
    }
}
