//! Cutting fresh batches. Fresh batches of the configured size sit on a fixed grid from the
//! input start, so a planner working from a stale cache cuts the same range again (and so
//! names the same Job) instead of an overlapping one. Smaller, adaptive batches are cut from
//! the start of each gap; the planner remembers those cuts in the status.

use crate::api::{RangeSet, RecordRange};

/// The next `limit` fresh batches: grid cells not touched by anything in `occupied`.
pub fn fresh_batches(
    universe: RecordRange,
    batch_size: u64,
    occupied: &RangeSet,
    limit: usize,
) -> Vec<RecordRange> {
    cut(universe, batch_size, occupied, limit, true)
}

/// The next `limit` batches of `size` records cut from the start of each unoccupied gap.
pub fn sized_batches(
    universe: RecordRange,
    size: u64,
    occupied: &RangeSet,
    limit: usize,
) -> Vec<RecordRange> {
    cut(universe, size, occupied, limit, false)
}

fn cut(
    universe: RecordRange,
    batch_size: u64,
    occupied: &RangeSet,
    limit: usize,
    on_grid: bool,
) -> Vec<RecordRange> {
    let batch_size = batch_size.max(1);
    let mut batches = Vec::new();
    for gap in occupied.gaps(universe) {
        let mut start = gap.start;
        while start < gap.end && batches.len() < limit {
            let cell_end = if on_grid {
                universe.start + ((start - universe.start) / batch_size + 1) * batch_size
            } else {
                start.saturating_add(batch_size)
            };
            let end = cell_end.min(gap.end);
            batches.push(RecordRange::new(start, end));
            start = end;
        }
        if batches.len() >= limit {
            break;
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> RecordRange {
        RecordRange::new(start, end)
    }

    #[test]
    fn input_is_cut_into_batches_of_batch_size() {
        let batches = fresh_batches(r(0, 23), 5, &RangeSet::new(), 100);
        assert_eq!(
            batches,
            vec![r(0, 5), r(5, 10), r(10, 15), r(15, 20), r(20, 23)]
        );
    }

    #[test]
    fn grid_starts_at_the_input_start() {
        let batches = fresh_batches(r(1000, 1012), 5, &RangeSet::new(), 100);
        assert_eq!(batches, vec![r(1000, 1005), r(1005, 1010), r(1010, 1012)]);
    }

    #[test]
    fn occupied_records_are_skipped() {
        let occupied: RangeSet = [r(0, 5), r(10, 15)].into_iter().collect();
        assert_eq!(
            fresh_batches(r(0, 20), 5, &occupied, 100),
            vec![r(5, 10), r(15, 20)]
        );
    }

    #[test]
    fn only_the_first_batches_are_cut() {
        assert_eq!(
            fresh_batches(r(0, 1_000_000_000), 10, &RangeSet::new(), 2),
            vec![r(0, 10), r(10, 20)]
        );
        assert!(fresh_batches(r(0, 100), 10, &RangeSet::new(), 0).is_empty());
    }

    #[test]
    fn sized_batches_start_at_each_gap() {
        let occupied: RangeSet = [r(0, 7)].into_iter().collect();
        assert_eq!(
            sized_batches(r(0, 20), 5, &occupied, 10),
            vec![r(7, 12), r(12, 17), r(17, 20)]
        );
    }

    #[test]
    fn cutting_twice_from_the_same_state_gives_the_same_batches() {
        let occupied: RangeSet = [r(3, 7)].into_iter().collect();
        assert_eq!(
            fresh_batches(r(0, 30), 10, &occupied, 5),
            fresh_batches(r(0, 30), 10, &occupied, 5)
        );
        assert_eq!(
            fresh_batches(r(0, 30), 10, &occupied, 5),
            vec![r(0, 3), r(7, 10), r(10, 20), r(20, 30)]
        );
    }
}
