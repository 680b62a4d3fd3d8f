//! Admission across runs (pure): how a BatchQueue's free memory and batch slots are shared by
//! the runs that wait for them.
//!
//! The budget is checked against what workers hold now, never against what was decided
//! before, so the caller can recompute it from live Jobs and pods after any restart.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::Seat;
use crate::api::{Fairness, bytes_quantity};

/// A queue's limits.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub memory_bytes: u64,
    pub max_batches: Option<u32>,
    pub fairness: Fairness,
}

/// A worker that holds (or is about to hold) memory of the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Holding {
    /// The run's uid.
    pub run: String,
    pub bytes: u64,
}

/// What a run would start now if the queue had room.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    /// The run's uid.
    pub run: String,
    pub name: String,
    pub created: Timestamp,
    pub batches: usize,
    /// Memory limit of one of its workers.
    pub bytes_each: u64,
    /// When the queue last admitted a batch of this run, as a sequence number (0: never):
    /// among runs holding as many batches, the one served longest ago goes first.
    pub last_served: u64,
}

/// A run that waits, in the order runs will be served.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub run: String,
    pub name: String,
    pub position: u32,
    pub batches: usize,
    pub held: usize,
}

/// The outcome of one admission round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shares {
    pub held_bytes: u64,
    pub held_batches: usize,
    /// New batches each run (by uid) may start now.
    pub granted: BTreeMap<String, usize>,
    pub waiting: Vec<Waiting>,
}

impl Shares {
    pub fn granted_to(&self, run: &str) -> usize {
        self.granted.get(run).copied().unwrap_or(0)
    }

    pub fn waiting_for(&self, run: &str) -> Option<&Waiting> {
        self.waiting.iter().find(|w| w.run == run)
    }
}

impl Budget {
    /// Memory not held by any worker now.
    pub fn free_bytes(&self, holdings: &[Holding]) -> u64 {
        let held: u64 = holdings.iter().map(|h| h.bytes).sum();
        self.memory_bytes.saturating_sub(held)
    }

    /// A worker this large can never be admitted, whatever else runs.
    pub fn never_fits(&self, bytes_each: u64) -> bool {
        bytes_each > self.memory_bytes
    }
}

/// Grants free room one batch at a time to the run served next, until the next batch does not
/// fit. There is no backfill: a smaller batch of a later run does not jump a larger one, so
/// runs with large workers are not starved by runs with small ones.
pub fn share(budget: &Budget, holdings: &[Holding], demands: &[Demand]) -> Shares {
    let mut shares = Shares {
        held_bytes: holdings.iter().map(|h| h.bytes).sum(),
        held_batches: holdings.len(),
        ..Default::default()
    };
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for holding in holdings {
        *held.entry(&holding.run).or_default() += 1;
    }
    let mut queue: Vec<&Demand> = demands
        .iter()
        .filter(|d| d.batches > 0 && !budget.never_fits(d.bytes_each))
        .collect();
    queue.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let mut granted: BTreeMap<&str, usize> = BTreeMap::new();
    let unmet = |d: &Demand, granted: &BTreeMap<&str, usize>| {
        d.batches - granted.get(d.run.as_str()).copied().unwrap_or(0)
    };
    let (mut bytes, mut batches) = (shares.held_bytes, shares.held_batches);
    loop {
        let order = serve_order(budget.fairness, &queue, &held, &granted);
        let Some(next) = order.into_iter().find(|d| unmet(d, &granted) > 0) else {
            break;
        };
        let fits_memory = bytes + next.bytes_each <= budget.memory_bytes;
        let fits_cap = budget.max_batches.is_none_or(|max| batches < max as usize);
        if !(fits_memory && fits_cap) {
            break;
        }
        bytes += next.bytes_each;
        batches += 1;
        *granted.entry(&next.run).or_default() += 1;
    }
    let order = serve_order(budget.fairness, &queue, &held, &granted);
    shares.waiting = order
        .into_iter()
        .filter(|d| unmet(d, &granted) > 0)
        .enumerate()
        .map(|(i, d)| Waiting {
            run: d.run.clone(),
            name: d.name.clone(),
            position: i as u32 + 1,
            batches: unmet(d, &granted),
            held: held.get(d.run.as_str()).copied().unwrap_or(0),
        })
        .collect();
    shares.granted = granted
        .into_iter()
        .map(|(run, n)| (run.to_string(), n))
        .collect();
    shares
}

/// One run's seat after a round: what it may start now and, when batches wait, why.
pub fn seat_of(queue: &str, budget: &Budget, shares: &Shares, demand: &Demand) -> Seat {
    let granted = shares.granted_to(&demand.run).min(demand.batches);
    let waiting = if budget.never_fits(demand.bytes_each) && demand.batches > 0 {
        Some((
            "ExceedsQueueBudget".to_string(),
            format!(
                "a worker of this run needs {} but queue {queue} admits {} in all: raise the queue's spec.memory or lower spec.resources.memory.limit",
                bytes_quantity(demand.bytes_each),
                bytes_quantity(budget.memory_bytes)
            ),
        ))
    } else {
        shares.waiting_for(&demand.run).map(|w| {
            let cap = budget
                .max_batches
                .map(|m| format!(" of {m}"))
                .unwrap_or_default();
            let ahead: Vec<&str> = shares
                .waiting
                .iter()
                .take_while(|o| o.run != w.run)
                .map(|o| o.name.as_str())
                .collect();
            let behind = match ahead.len() {
                0 => "next in line".to_string(),
                1..=3 => format!("behind {}", ahead.join(", ")),
                n => format!("behind {} and {} more", ahead[..3].join(", "), n - 3),
            };
            let batches = match w.batches {
                1 => "1 batch waits".to_string(),
                n => format!("{n} batches wait"),
            };
            (
                "WaitingForRoom".to_string(),
                format!(
                    "{batches} for queue {queue}: {} of {} and {}{cap} batches in use; position {} of {} waiting runs, {behind}",
                    bytes_quantity(shares.held_bytes),
                    bytes_quantity(budget.memory_bytes),
                    shares.held_batches,
                    w.position,
                    shares.waiting.len()
                ),
            )
        })
    };
    Seat {
        queue: queue.to_string(),
        granted,
        waiting,
    }
}

/// Runs in the order they are served next; `queue` is sorted by age.
fn serve_order<'a>(
    fairness: Fairness,
    queue: &[&'a Demand],
    held: &BTreeMap<&str, usize>,
    granted: &BTreeMap<&str, usize>,
) -> Vec<&'a Demand> {
    let mut order = queue.to_vec();
    if fairness == Fairness::RoundRobin {
        let count = |d: &Demand| {
            let granted = granted.get(d.run.as_str()).copied().unwrap_or(0);
            let held = held.get(d.run.as_str()).copied().unwrap_or(0);
            // A grant in this round serves the run now: it goes behind every other tie.
            let served = if granted > 0 { u64::MAX } else { d.last_served };
            (held + granted, served)
        };
        // Stable: the older run goes first among equals.
        order.sort_by_key(|d| count(d));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn budget(memory_mi: u64, max: Option<u32>) -> Budget {
        Budget {
            memory_bytes: memory_mi * MI,
            max_batches: max,
            fairness: Fairness::RoundRobin,
        }
    }

    fn demand(run: &str, age: i64, batches: usize, mi: u64) -> Demand {
        Demand {
            run: run.into(),
            name: format!("run-{run}"),
            created: Timestamp::from_second(1_000 + age).unwrap(),
            batches,
            bytes_each: mi * MI,
            last_served: 0,
        }
    }

    fn holding(run: &str, mi: u64) -> Holding {
        Holding {
            run: run.into(),
            bytes: mi * MI,
        }
    }

    #[test]
    fn grants_only_what_fits_the_memory_budget() {
        let shares = share(&budget(1536, None), &[], &[demand("a", 0, 10, 512)]);
        assert_eq!(shares.granted_to("a"), 3);
        assert_eq!(shares.waiting_for("a").unwrap().batches, 7);
    }

    #[test]
    fn live_workers_count_against_the_budget() {
        let holdings = [holding("a", 512), holding("a", 512)];
        let shares = share(&budget(1536, None), &holdings, &[demand("a", 0, 10, 512)]);
        assert_eq!(shares.granted_to("a"), 1);
        assert_eq!(shares.held_bytes, 1024 * MI);
    }

    #[test]
    fn the_batch_cap_binds_before_memory() {
        let shares = share(
            &budget(10_000, Some(2)),
            &[holding("x", 1)],
            &[demand("a", 0, 5, 100)],
        );
        assert_eq!(shares.granted_to("a"), 1);
    }

    #[test]
    fn over_budget_after_a_lowered_budget_admits_nothing() {
        let holdings = [holding("a", 512), holding("a", 512), holding("b", 512)];
        let shares = share(&budget(1024, None), &holdings, &[demand("b", 1, 4, 512)]);
        assert!(shares.granted.is_empty());
        assert_eq!(shares.waiting.len(), 1);
    }

    #[test]
    fn a_late_run_gets_the_next_free_slot_before_a_run_holding_many() {
        // a holds 3 of 4 slots and wants thousands more; b just arrived.
        let holdings = [holding("a", 256), holding("a", 256), holding("a", 256)];
        let demands = [demand("a", 0, 10_000, 256), demand("b", 5, 10, 256)];
        let shares = share(&budget(1024, None), &holdings, &demands);
        assert_eq!(shares.granted_to("b"), 1);
        assert_eq!(shares.granted_to("a"), 0);
        let a = shares.waiting_for("a").unwrap();
        let b = shares.waiting_for("b").unwrap();
        assert!(b.position < a.position, "b holds fewer batches: {shares:?}");
    }

    #[test]
    fn among_runs_holding_as_many_the_one_served_longest_ago_goes_first() {
        // a and b hold nothing right now; a was served a moment ago, b never.
        let mut a = demand("a", 0, 10, 100);
        a.last_served = 7;
        let b = demand("b", 1, 10, 100);
        let shares = share(&budget(100, None), &[], &[a.clone(), b]);
        assert_eq!(shares.granted_to("b"), 1);
        let mut c = demand("c", 2, 10, 100);
        c.last_served = 3;
        let shares = share(&budget(100, None), &[], &[a, c]);
        assert_eq!(shares.granted_to("c"), 1, "c was served before a");
    }

    #[test]
    fn round_robin_spreads_an_empty_queue_evenly() {
        let demands = [
            demand("a", 0, 100, 100),
            demand("b", 1, 100, 100),
            demand("c", 2, 100, 100),
        ];
        let shares = share(&budget(700, None), &[], &demands);
        let counts: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|r| shares.granted_to(r))
            .collect();
        assert_eq!(counts, vec![3, 2, 2], "the oldest run takes the odd slot");
    }

    #[test]
    fn fifo_serves_the_oldest_run_first() {
        let mut b = budget(700, None);
        b.fairness = Fairness::Fifo;
        let demands = [demand("late", 9, 100, 100), demand("early", 0, 5, 100)];
        let shares = share(&b, &[], &demands);
        assert_eq!(shares.granted_to("early"), 5);
        assert_eq!(shares.granted_to("late"), 2);
        assert_eq!(shares.waiting[0].run, "late");
    }

    #[test]
    fn a_large_batch_is_not_jumped_by_smaller_ones() {
        // 300 MiB free; a (older, holding nothing) needs 400 MiB, b needs 100 MiB.
        let holdings = [holding("x", 700)];
        let demands = [demand("a", 0, 1, 400), demand("b", 1, 5, 100)];
        let shares = share(&budget(1000, None), &holdings, &demands);
        assert!(shares.granted.is_empty(), "{shares:?}");
        assert_eq!(shares.waiting[0].run, "a");
    }

    #[test]
    fn a_worker_larger_than_the_budget_never_blocks_the_queue() {
        let demands = [demand("huge", 0, 1, 2048), demand("b", 1, 2, 100)];
        let shares = share(&budget(1024, None), &[], &demands);
        assert_eq!(shares.granted_to("b"), 2);
        assert!(shares.waiting_for("huge").is_none());
        assert!(budget(1024, None).never_fits(2048 * MI));
    }

    #[test]
    fn a_waiting_run_is_told_what_it_waits_behind() {
        let holdings = [holding("a", 512), holding("a", 512), holding("b", 512)];
        let demands = [
            demand("a", 0, 5, 512),
            demand("b", 1, 5, 512),
            demand("c", 2, 5, 512),
        ];
        let b = budget(1536, Some(10));
        let shares = share(&b, &holdings, &demands);
        let seat = seat_of("month-end", &b, &shares, &demands[2]);
        assert_eq!(seat.granted, 0);
        let (reason, message) = seat.waiting.unwrap();
        assert_eq!(reason, "WaitingForRoom");
        assert_eq!(
            message,
            "5 batches wait for queue month-end: 1536Mi of 1536Mi and 3 of 10 batches in use; position 1 of 3 waiting runs, next in line"
        );
        let seat = seat_of("month-end", &b, &shares, &demands[0]);
        assert!(
            seat.waiting
                .unwrap()
                .1
                .ends_with("position 3 of 3 waiting runs, behind run-c, run-b")
        );
    }

    #[test]
    fn a_worker_larger_than_the_budget_is_reported() {
        let b = budget(1024, None);
        let d = demand("a", 0, 1, 2048);
        let seat = seat_of("q", &b, &share(&b, &[], std::slice::from_ref(&d)), &d);
        let (reason, message) = seat.waiting.unwrap();
        assert_eq!(reason, "ExceedsQueueBudget");
        assert!(
            message.contains("needs 2Gi but queue q admits 1Gi"),
            "{message}"
        );
    }

    #[test]
    fn never_grants_beyond_the_budget_whatever_the_demands() {
        // A small exhaustive sweep: the sum of holdings and grants never passes the budget.
        for memory in [0u64, 100, 250, 999, 1000] {
            for held in 0..4u64 {
                for max in [None, Some(1), Some(3)] {
                    let holdings: Vec<_> = (0..held).map(|_| holding("h", 100)).collect();
                    let demands = [demand("a", 0, 7, 100), demand("b", 1, 3, 250)];
                    let b = budget(memory, max);
                    let shares = share(&b, &holdings, &demands);
                    let granted_bytes: u64 = demands
                        .iter()
                        .map(|d| shares.granted_to(&d.run) as u64 * d.bytes_each)
                        .sum();
                    let granted: usize = shares.granted.values().sum();
                    if granted > 0 {
                        assert!(held * 100 * MI + granted_bytes <= b.memory_bytes);
                        if let Some(max) = max {
                            assert!(held as usize + granted <= max as usize);
                        }
                    }
                }
            }
        }
    }
}
