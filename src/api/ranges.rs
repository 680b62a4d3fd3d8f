//! Record ranges and compact sets of them, written like a Job's `completedIndexes` (`0-99,200-299`).

use std::fmt;

/// A half-open range of record offsets `[start, end)`; displayed inclusive (`0-4999`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordRange {
    pub start: u64,
    pub end: u64,
}

impl RecordRange {
    pub fn new(start: u64, end: u64) -> Self {
        debug_assert!(start <= end, "range start {start} after end {end}");
        Self { start, end }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    pub fn overlaps(&self, other: &RecordRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The two halves of a range (the first one larger when the length is odd).
    pub fn halves(&self) -> [RecordRange; 2] {
        let mid = self.start + self.len().div_ceil(2);
        [
            RecordRange::new(self.start, mid),
            RecordRange::new(mid, self.end),
        ]
    }
}

impl fmt::Display for RecordRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len() == 1 {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end.saturating_sub(1))
        }
    }
}

/// A set of records kept as sorted, disjoint, non-adjacent ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<RecordRange>,
}

/// A range set string that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a range set like \"0-99,200-299\"")]
pub struct ParseRangeSetError(pub String);

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ranges(&self) -> &[RecordRange] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of records in the set.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(RecordRange::len).sum()
    }

    pub fn insert(&mut self, range: RecordRange) {
        if range.is_empty() {
            return;
        }
        // Ranges that overlap or touch the new one merge into it.
        let first = self.ranges.partition_point(|r| r.end < range.start);
        let last = self.ranges.partition_point(|r| r.start <= range.end);
        let mut merged = range;
        if first < last {
            merged.start = merged.start.min(self.ranges[first].start);
            merged.end = merged.end.max(self.ranges[last - 1].end);
        }
        self.ranges.splice(first..last, [merged]);
    }

    pub fn union(&mut self, other: &RangeSet) {
        other.ranges.iter().for_each(|r| self.insert(*r));
    }

    pub fn contains_all(&self, range: &RecordRange) -> bool {
        range.is_empty()
            || self
                .ranges
                .iter()
                .any(|r| r.start <= range.start && range.end <= r.end)
    }

    pub fn overlaps(&self, range: &RecordRange) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= range.start);
        self.ranges.get(i).is_some_and(|r| r.overlaps(range))
    }

    /// The parts of `within` that are not in the set, in order.
    pub fn gaps(&self, within: RecordRange) -> impl Iterator<Item = RecordRange> + '_ {
        let mut cursor = within.start;
        let mut inner = self.ranges.iter();
        std::iter::from_fn(move || {
            while cursor < within.end {
                match inner.next() {
                    Some(r) if r.end <= cursor => continue,
                    Some(r) if r.start >= within.end => {
                        let gap = RecordRange::new(cursor, within.end);
                        cursor = within.end;
                        return Some(gap);
                    }
                    Some(r) => {
                        let gap = RecordRange::new(cursor, r.start.max(cursor));
                        cursor = r.end.min(within.end);
                        if !gap.is_empty() {
                            return Some(gap);
                        }
                    }
                    None => {
                        let gap = RecordRange::new(cursor, within.end);
                        cursor = within.end;
                        return Some(gap);
                    }
                }
            }
            None
        })
    }

    pub fn parse(text: &str) -> Result<Self, ParseRangeSetError> {
        let mut set = RangeSet::new();
        let error = || ParseRangeSetError(text.to_string());
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let first: u64 = first.parse().map_err(|_| error())?;
            let last: u64 = last.parse().map_err(|_| error())?;
            if last < first {
                return Err(error());
            }
            set.insert(RecordRange::new(first, last + 1));
        }
        Ok(set)
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromIterator<RecordRange> for RangeSet {
    fn from_iter<I: IntoIterator<Item = RecordRange>>(iter: I) -> Self {
        let mut set = RangeSet::new();
        iter.into_iter().for_each(|r| set.insert(r));
        set
    }
}

/// The records of a run: `[start, end)` in range mode, item indexes in items mode.
pub fn universe(spec: &super::BatchRunSpec) -> RecordRange {
    match (&spec.input.range, &spec.input.items) {
        (Some(r), _) => RecordRange::new(r.start.max(0) as u64, r.end.max(r.start).max(0) as u64),
        (None, Some(items)) => RecordRange::new(0, items.len() as u64),
        (None, None) => RecordRange::new(0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> RecordRange {
        RecordRange::new(start, end)
    }

    #[test]
    fn adjacent_and_overlapping_ranges_merge() {
        let set: RangeSet = [r(10, 20), r(0, 10), r(30, 40), r(15, 31)]
            .into_iter()
            .collect();
        assert_eq!(set.ranges(), &[r(0, 40)]);
        assert_eq!(set.len(), 40);
    }

    #[test]
    fn disjoint_ranges_stay_sorted() {
        let set: RangeSet = [r(50, 60), r(0, 5), r(20, 30)].into_iter().collect();
        assert_eq!(set.ranges(), &[r(0, 5), r(20, 30), r(50, 60)]);
        assert_eq!(set.to_string(), "0-4,20-29,50-59");
    }

    #[test]
    fn display_and_parse_round_trip() {
        let set: RangeSet = [r(0, 1), r(5, 10), r(100, 200)].into_iter().collect();
        assert_eq!(set.to_string(), "0,5-9,100-199");
        assert_eq!(RangeSet::parse(&set.to_string()).unwrap(), set);
        assert_eq!(RangeSet::parse("").unwrap(), RangeSet::new());
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(RangeSet::parse("a-b").is_err());
        assert!(RangeSet::parse("9-3").is_err());
        assert!(RangeSet::parse("1--2").is_err());
    }

    #[test]
    fn gaps_are_the_complement_within_a_range() {
        let set: RangeSet = [r(10, 20), r(30, 40)].into_iter().collect();
        let gaps: Vec<_> = set.gaps(r(0, 50)).collect();
        assert_eq!(gaps, vec![r(0, 10), r(20, 30), r(40, 50)]);
        let gaps: Vec<_> = set.gaps(r(15, 35)).collect();
        assert_eq!(gaps, vec![r(20, 30)]);
        assert_eq!(set.gaps(r(10, 20)).count(), 0);
        assert_eq!(
            RangeSet::new().gaps(r(3, 7)).collect::<Vec<_>>(),
            vec![r(3, 7)]
        );
    }

    #[test]
    fn contains_and_overlaps() {
        let set: RangeSet = [r(10, 20)].into_iter().collect();
        assert!(set.contains_all(&r(12, 18)));
        assert!(!set.contains_all(&r(5, 15)));
        assert!(set.overlaps(&r(5, 11)));
        assert!(!set.overlaps(&r(20, 25)));
        assert!(!set.overlaps(&r(0, 10)));
    }

    #[test]
    fn halves_split_odd_lengths() {
        assert_eq!(r(0, 5).halves(), [r(0, 3), r(3, 5)]);
        assert_eq!(r(10, 12).halves(), [r(10, 11), r(11, 12)]);
    }

    #[test]
    fn many_scattered_completions_stay_compact_once_filled() {
        let mut set = RangeSet::new();
        for i in (0..10_000u64).rev() {
            set.insert(r(i * 10, i * 10 + 10));
        }
        assert_eq!(set.ranges(), &[r(0, 100_000)]);
    }
}
