//! Jobs this process created or deleted that the Job cache does not reflect yet. A reconcile
//! that runs between a request and its watch event would otherwise see a free slot and create
//! the same Job again (the apiserver answers 409), or see a removed Job and delete it again
//! (404): wasted requests on the run's critical path. Like the Job controller's own
//! expectations, an entry lasts until the cache catches up, or `EXPIRY` at most, so a lost
//! event costs one needless request, never a stuck run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

use crate::api::RecordRange;
use crate::plan::{JobState, ObservedAttempt};

/// Longer than any watch lag worth waiting for; after it, the cache is believed again.
const EXPIRY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, Pending>>);

/// One run's requests not yet seen in the cache, by Job name.
#[derive(Clone, Debug, Default)]
struct Pending {
    created: HashMap<String, Created>,
    deleted: HashMap<String, Timestamp>,
}

#[derive(Clone, Debug)]
struct Created {
    range: RecordRange,
    attempt: u32,
    at: Timestamp,
}

impl Expectations {
    /// The Job of (`range`, `attempt`) exists now: created, or found existing (409).
    pub fn created(&self, run: &str, job: &str, (range, attempt): (RecordRange, u32)) {
        let at = Timestamp::now();
        self.with(run, |p| {
            p.created
                .insert(job.to_string(), Created { range, attempt, at });
        });
    }

    /// The Job is going: its delete was accepted, or it was gone already (404).
    pub fn deleted(&self, run: &str, job: &str) {
        let at = Timestamp::now();
        self.with(run, |p| {
            p.deleted.insert(job.to_string(), at);
        });
    }

    /// Makes the cached `attempts` show what this process did and the cache does not show yet,
    /// and forgets what the cache shows by now.
    pub fn apply(&self, run: &str, attempts: &mut Vec<ObservedAttempt>, now: Timestamp) {
        self.with(run, |p| fold(p, attempts, now));
    }

    pub fn forget(&self, run: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(run);
    }

    fn with(&self, run: &str, f: impl FnOnce(&mut Pending)) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let pending = map.entry(run.to_string()).or_default();
        f(pending);
        if pending.created.is_empty() && pending.deleted.is_empty() {
            map.remove(run);
        }
    }
}

/// A created Job the cache lacks joins `attempts` as a Job without pods yet (it holds its
/// slot and its range); a deleted Job the cache still holds shows as deleting.
fn fold(pending: &mut Pending, attempts: &mut Vec<ObservedAttempt>, now: Timestamp) {
    let fresh = |at: Timestamp| now.duration_since(at).unsigned_abs() < EXPIRY;
    let cached = |attempts: &[ObservedAttempt], name: &str| {
        attempts
            .iter()
            .any(|a| a.job.as_ref().is_some_and(|j| j.name == name))
    };
    pending
        .created
        .retain(|name, c| fresh(c.at) && !cached(attempts, name));
    for (name, created) in &pending.created {
        let placeholder = JobState {
            name: name.clone(),
            deleting: false,
            finished: None,
            created: Some(created.at),
            pod_refused: None,
        };
        match attempts
            .iter_mut()
            .find(|a| a.range == created.range && a.attempt == created.attempt)
        {
            // An attempt of this batch already observed without its Job (the controller's
            // observer drops such pods today; the fold does not rely on it).
            Some(attempt) => attempt.job = Some(placeholder),
            None => attempts.push(ObservedAttempt {
                range: created.range,
                attempt: created.attempt,
                job: Some(placeholder),
                pods: vec![],
            }),
        }
    }
    pending
        .deleted
        .retain(|name, at| fresh(*at) && cached(attempts, name));
    for job in attempts.iter_mut().filter_map(|a| a.job.as_mut()) {
        if pending.deleted.contains_key(&job.name) {
            job.deleting = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64) -> RecordRange {
        RecordRange {
            start,
            end: start + 10,
        }
    }

    fn attempt_with_job(start: u64, name: &str) -> ObservedAttempt {
        ObservedAttempt {
            range: range(start),
            attempt: 1,
            job: Some(JobState {
                name: name.into(),
                deleting: false,
                finished: None,
                created: None,
                pod_refused: None,
            }),
            pods: vec![],
        }
    }

    fn pending_creation(name: &str, start: u64, at: Timestamp) -> Pending {
        let mut pending = Pending::default();
        pending.created.insert(
            name.into(),
            Created {
                range: range(start),
                attempt: 1,
                at,
            },
        );
        pending
    }

    #[test]
    fn a_created_job_the_cache_lacks_holds_its_slot_until_the_cache_shows_it() {
        let now = Timestamp::now();
        let mut pending = pending_creation("j0", 0, now);
        let mut attempts = vec![];
        fold(&mut pending, &mut attempts, now);
        assert_eq!(attempts.len(), 1);
        assert!(
            attempts[0].is_alive(),
            "the new Job counts against parallelism"
        );
        assert_eq!(attempts[0].range, range(0));

        let mut attempts = vec![attempt_with_job(0, "j0")];
        fold(&mut pending, &mut attempts, now);
        assert_eq!(attempts.len(), 1, "no second attempt beside the cached one");
        assert!(pending.created.is_empty(), "seen: forgotten");
    }

    #[test]
    fn a_pod_cached_before_its_job_gets_the_job() {
        let now = Timestamp::now();
        let mut pending = pending_creation("j0", 0, now);
        let mut attempts = vec![ObservedAttempt {
            range: range(0),
            attempt: 1,
            job: None,
            pods: vec![],
        }];
        fold(&mut pending, &mut attempts, now);
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            attempts[0].job.as_ref().map(|j| j.name.as_str()),
            Some("j0")
        );
    }

    #[test]
    fn a_deleted_job_still_cached_shows_as_deleting_and_is_forgotten_once_gone() {
        let now = Timestamp::now();
        let mut pending = Pending::default();
        pending.deleted.insert("j0".into(), now);
        let mut attempts = vec![attempt_with_job(0, "j0"), attempt_with_job(10, "j1")];
        fold(&mut pending, &mut attempts, now);
        assert!(attempts[0].job.as_ref().unwrap().deleting);
        assert!(!attempts[1].job.as_ref().unwrap().deleting);
        assert!(pending.deleted.contains_key("j0"));

        let mut attempts = vec![attempt_with_job(10, "j1")];
        fold(&mut pending, &mut attempts, now);
        assert!(pending.deleted.is_empty());
    }

    #[test]
    fn expectations_expire_so_a_lost_event_costs_one_request_not_a_stuck_run() {
        let now = Timestamp::now();
        let long_ago = now - EXPIRY - Duration::from_secs(1);
        let mut pending = pending_creation("j0", 0, long_ago);
        pending.deleted.insert("j1".into(), long_ago);
        let mut attempts = vec![attempt_with_job(10, "j1")];
        fold(&mut pending, &mut attempts, now);
        assert_eq!(attempts.len(), 1, "the expired creation adds nothing");
        assert!(!attempts[0].job.as_ref().unwrap().deleting);
        assert!(pending.created.is_empty() && pending.deleted.is_empty());
    }

    #[test]
    fn a_run_with_nothing_pending_leaves_no_entry() {
        let expectations = Expectations::default();
        expectations.deleted("run", "j0");
        let mut attempts = vec![];
        expectations.apply("run", &mut attempts, Timestamp::now());
        assert!(expectations.0.lock().unwrap().is_empty());
    }
}
