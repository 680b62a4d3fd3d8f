//! Which runs the poller starts polling at a tick (pure). Runs are polled concurrently, so one
//! slow query delays only its own run: a run whose poll is still in flight is skipped, at most
//! a bounded number of polls run at once, and each tick starts its round one run further on,
//! so that runs beyond the bound are not always the last served.

use std::collections::BTreeSet;

/// Polls in flight at once (each holds one Prometheus query and a few API calls).
pub const MAX_CONCURRENT_POLLS: usize = 8;

/// The runs (by uid, in a stable order) to start polling now, given those still in flight.
pub fn to_start<'a>(
    runs: &'a [String],
    busy: &BTreeSet<String>,
    capacity: usize,
    round: usize,
) -> Vec<&'a str> {
    let free = capacity.saturating_sub(busy.len());
    if runs.is_empty() || free == 0 {
        return vec![];
    }
    let offset = round % runs.len();
    runs[offset..]
        .iter()
        .chain(&runs[..offset])
        .filter(|uid| !busy.contains(*uid))
        .take(free)
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("r{i}")).collect()
    }

    #[test]
    fn a_run_still_being_polled_is_not_polled_again_and_others_go_on() {
        let runs = uids(3);
        let busy = BTreeSet::from(["r1".to_string()]);
        assert_eq!(to_start(&runs, &busy, 8, 0), vec!["r0", "r2"]);
    }

    #[test]
    fn polls_in_flight_are_bounded() {
        let runs = uids(20);
        let busy: BTreeSet<String> = uids(3).into_iter().collect();
        let started = to_start(&runs, &busy, MAX_CONCURRENT_POLLS, 0);
        assert_eq!(started.len(), MAX_CONCURRENT_POLLS - 3);
        assert!(started.iter().all(|uid| !busy.contains(*uid)));
        let full: BTreeSet<String> = uids(8).into_iter().collect();
        assert!(to_start(&runs, &full, MAX_CONCURRENT_POLLS, 0).is_empty());
    }

    #[test]
    fn each_round_starts_further_on_so_no_run_always_waits() {
        let runs = uids(10);
        let none = BTreeSet::new();
        let mut served = BTreeSet::new();
        for round in 0..10 {
            served.extend(to_start(&runs, &none, 2, round));
        }
        assert_eq!(served.len(), 10, "{served:?}");
        assert_eq!(to_start(&runs, &none, 2, 13), vec!["r3", "r4"]);
    }

    #[test]
    fn no_runs_nothing_to_start() {
        assert!(to_start(&[], &BTreeSet::new(), 8, 5).is_empty());
    }
}
