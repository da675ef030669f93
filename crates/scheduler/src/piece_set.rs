//! The pieces a peer has finished, as sorted runs of consecutive piece numbers.
//!
//! Peers fetch a few pieces at a time, mostly in order, so what a peer holds is one run or a
//! handful: a whole task of 1,024 pieces takes 8 bytes here, where a `BTreeSet<u32>` took
//! about 7 KiB, for every peer the scheduler keeps (finished peers stay, as parents). A piece
//! reported out of order costs one run until its gap fills, as it cost one set entry before;
//! a peer cannot make the set grow faster than one run per report.

/// Finished piece numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PieceSet {
    /// Disjoint, non-adjacent, sorted runs `(first, last)`, both included.
    runs: Vec<(u32, u32)>,
    count: usize,
}

impl PieceSet {
    /// Adds `number`; false when it was there already.
    pub fn insert(&mut self, number: u32) -> bool {
        // Runs before `at` start at or below `number`.
        let at = self.runs.partition_point(|&(first, _)| first <= number);
        let extends_previous = match at.checked_sub(1).and_then(|i| self.runs.get(i)) {
            Some(&(_, last)) if number <= last => return false,
            Some(&(_, last)) => last.checked_add(1) == Some(number),
            None => false,
        };
        let joins_next = self
            .runs
            .get(at)
            .is_some_and(|&(first, _)| number.checked_add(1) == Some(first));
        match (extends_previous, joins_next) {
            (true, true) => {
                let (_, last) = self.runs.remove(at);
                self.runs[at - 1].1 = last;
            }
            (true, false) => self.runs[at - 1].1 = number,
            (false, true) => self.runs[at].0 = number,
            (false, false) => self.runs.insert(at, (number, number)),
        }
        self.count += 1;
        true
    }

    pub fn contains(&self, number: u32) -> bool {
        let at = self.runs.partition_point(|&(first, _)| first <= number);
        at.checked_sub(1)
            .and_then(|i| self.runs.get(i))
            .is_some_and(|&(_, last)| number <= last)
    }

    /// How many pieces.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Runs kept (what the set costs).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_pieces_make_one_run() {
        let mut set = PieceSet::default();
        for n in 0..1024 {
            assert!(set.insert(n));
        }
        assert_eq!((set.len(), set.runs()), (1024, 1));
        assert!(set.contains(0) && set.contains(1023) && !set.contains(1024));
    }

    #[test]
    fn out_of_order_pieces_fill_gaps_and_duplicates_do_not_count() {
        let mut set = PieceSet::default();
        let order = [5, 3, 9, 4, 7, 8, 6, 0, 2, 1, 9, 3, u32::MAX, u32::MAX - 1];
        let mut expected = BTreeSet::new();
        for n in order {
            assert_eq!(set.insert(n), expected.insert(n), "piece {n}");
        }
        assert_eq!(set.len(), expected.len());
        assert_eq!(set.runs(), 2, "{set:?}");
        for n in (0..12).chain([u32::MAX - 2, u32::MAX - 1, u32::MAX]) {
            assert_eq!(set.contains(n), expected.contains(&n), "piece {n}");
        }
    }

    #[test]
    fn scattered_pieces_cost_one_run_each() {
        let mut set = PieceSet::default();
        for n in (0..100).map(|n| n * 2) {
            set.insert(n);
        }
        assert_eq!((set.len(), set.runs()), (100, 100));
        for n in (0..100).map(|n| n * 2 + 1) {
            set.insert(n);
        }
        assert_eq!((set.len(), set.runs()), (200, 1));
    }
}
