//! A period's leaderboard order cut into blocks with member counts: what makes a
//! position, or the start of any page, cost the same wherever it is.
//!
//! The order is by [`Key`] `(-xp, uid)` ascending: more XP first, ties by the smaller
//! uid. A block holds the members from its start key (inclusive) to the next block's
//! start; the first block starts at [`FIRST`]. A position is the members of the blocks
//! before one's own plus a count inside it (at most twice [`TARGET`] index entries); a
//! page starts in the block holding its first position. The refresher keeps the counts
//! exact as members move, cuts blocks that grew past twice the target at every
//! target-th member, and folds blocks that shrank below a quarter of it into the one
//! before.

use std::collections::BTreeMap;

/// A member's place in the order: `(-xp, uid)`, ascending.
pub type Key = (i64, i64);

/// The start of every period's first block: before every key.
pub const FIRST: Key = (i64::MIN, i64::MIN);

/// Members per block after a cut, unless a store says otherwise (tests use tiny blocks
/// to exercise cuts and folds). A block with more than twice as many is cut; one with
/// less than a quarter is folded into the one before, if they fit together.
pub const TARGET: i64 = 1024;

/// The key of a member with `xp` and `uid`.
pub fn key(xp: i64, uid: i64) -> Key {
    (xp.saturating_neg(), uid)
}

/// One period's blocks as read, then as changed.
#[derive(Debug, Clone)]
pub struct Blocks {
    /// Sorted by start; the first starts at [`FIRST`].
    blocks: Vec<(Key, i64)>,
    read: BTreeMap<Key, i64>,
    target: i64,
}

/// What to write back: blocks gone, and blocks new or with a new count.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BlockChanges {
    pub deleted: Vec<Key>,
    pub written: Vec<(Key, i64)>,
}

impl Blocks {
    /// The blocks of a period as stored (any order; none for a new period), to be cut
    /// at every `target`-th member.
    pub fn new(rows: Vec<(Key, i64)>, target: i64) -> Self {
        let read: BTreeMap<Key, i64> = rows.into_iter().collect();
        let mut blocks: Vec<(Key, i64)> = read.iter().map(|(k, n)| (*k, *n)).collect();
        if blocks.first().is_none_or(|b| b.0 != FIRST) {
            blocks.insert(0, (FIRST, 0));
        }
        Self {
            blocks,
            read,
            target: target.max(1),
        }
    }

    /// The index of the block holding `k`.
    fn locate(&self, k: Key) -> usize {
        self.blocks.partition_point(|b| b.0 <= k).saturating_sub(1)
    }

    /// A member left `old` (if it was ranked) and is now at `new` (if it still is).
    pub fn moved(&mut self, old: Option<Key>, new: Option<Key>) {
        if let Some(k) = old {
            let i = self.locate(k);
            self.blocks[i].1 -= 1;
        }
        if let Some(k) = new {
            let i = self.locate(k);
            self.blocks[i].1 += 1;
        }
    }

    /// The blocks to cut: `(start, next block's start)`.
    pub fn oversized(&self) -> Vec<(Key, Option<Key>)> {
        (0..self.blocks.len())
            .filter(|&i| self.blocks[i].1 > 2 * self.target)
            .map(|i| (self.blocks[i].0, self.blocks.get(i + 1).map(|b| b.0)))
            .collect()
    }

    /// Cuts the block starting at `start`, which holds `members` (as counted in the
    /// standings), at `cuts`: the keys of its members at ranks `target`, `2 * target`,
    /// ... within it, ascending.
    pub fn cut(&mut self, start: Key, cuts: &[Key], members: i64) {
        let Ok(i) = self.blocks.binary_search_by(|b| b.0.cmp(&start)) else {
            return;
        };
        let cuts: Vec<Key> = cuts.iter().copied().filter(|c| *c > start).collect();
        let pieces = i64::try_from(cuts.len()).unwrap_or(0);
        let target = self.target;
        self.blocks[i].1 = if pieces == 0 { members } else { target };
        for (n, c) in cuts.iter().enumerate() {
            let last = n + 1 == cuts.len();
            let count = if last {
                members - pieces * target
            } else {
                target
            };
            self.blocks.insert(i + 1 + n, (*c, count));
        }
    }

    /// Folds each block below a quarter of the target into the one before it when both
    /// fit in twice the target.
    pub fn fold_small(&mut self) {
        let (min, max) = (self.target / 4, 2 * self.target);
        let mut i = 1;
        while i < self.blocks.len() {
            let (prev, this) = (self.blocks[i - 1].1, self.blocks[i].1);
            if this < min && prev + this <= max {
                self.blocks[i - 1].1 += this;
                self.blocks.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// How many members the period ranks.
    pub fn members(&self) -> i64 {
        self.blocks.iter().map(|b| b.1).sum()
    }

    /// What changed since the blocks were read.
    pub fn changes(&self) -> BlockChanges {
        let now: BTreeMap<Key, i64> = self.blocks.iter().copied().collect();
        BlockChanges {
            deleted: self
                .read
                .keys()
                .filter(|k| !now.contains_key(k))
                .copied()
                .collect(),
            written: now
                .iter()
                .filter(|(k, n)| self.read.get(k) != Some(n))
                .map(|(k, n)| (*k, *n))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: i64 = 2 * TARGET;
    const MIN: i64 = TARGET / 4;

    #[test]
    fn a_new_period_starts_with_one_block_before_every_key() {
        let mut b = Blocks::new(Vec::new(), TARGET);
        b.moved(None, Some(key(10, 7)));
        b.moved(None, Some(key(i64::MAX, 1)));
        assert_eq!(b.members(), 2);
        assert_eq!(
            b.changes(),
            BlockChanges {
                deleted: vec![],
                written: vec![(FIRST, 2)]
            }
        );
    }

    #[test]
    fn members_are_counted_in_the_block_holding_their_key() {
        let mut b = Blocks::new(vec![(FIRST, 5), (key(100, 3), 5), (key(50, 1), 5)], TARGET);
        // From 80 XP (second block) to 120 XP (first block).
        b.moved(Some(key(80, 9)), Some(key(120, 9)));
        // Exactly at a block's start belongs to that block; just before it, to the one before.
        b.moved(None, Some(key(100, 3)));
        b.moved(None, Some(key(100, 2)));
        // The second block lost one and gained one: unchanged, not written.
        assert_eq!(b.changes().written, vec![(FIRST, 7)], "{b:?}");
        assert_eq!(b.members(), 17);
    }

    #[test]
    fn an_oversized_block_is_cut_at_every_target_th_member() {
        let mut b = Blocks::new(vec![(FIRST, 10), (key(500, 1), MAX + 1)], TARGET);
        assert_eq!(b.oversized(), vec![(key(500, 1), None)]);
        let members = 2 * TARGET + 500;
        b.cut(key(500, 1), &[key(400, 1), key(300, 1)], members);
        assert_eq!(
            b.blocks,
            vec![
                (FIRST, 10),
                (key(500, 1), TARGET),
                (key(400, 1), TARGET),
                (key(300, 1), 500)
            ]
        );
        assert!(b.oversized().is_empty());
        let changes = b.changes();
        assert!(changes.deleted.is_empty());
        assert_eq!(changes.written.len(), 3);
    }

    #[test]
    fn small_blocks_fold_into_the_one_before_and_their_rows_go() {
        let mut b = Blocks::new(
            vec![
                (FIRST, 3),
                (key(90, 1), MIN - 1),
                (key(80, 1), MAX),
                (key(70, 1), 0),
            ],
            TARGET,
        );
        b.fold_small();
        assert_eq!(b.blocks, vec![(FIRST, 3 + MIN - 1), (key(80, 1), MAX)]);
        let changes = b.changes();
        assert_eq!(changes.deleted, vec![key(90, 1), key(70, 1)]);
        assert_eq!(changes.written, vec![(FIRST, 3 + MIN - 1)]);
    }

    #[test]
    fn a_block_too_full_to_take_its_small_neighbour_keeps_it() {
        let mut b = Blocks::new(vec![(FIRST, MAX), (key(5, 1), 1)], TARGET);
        b.fold_small();
        assert_eq!(b.blocks, vec![(FIRST, MAX), (key(5, 1), 1)]);
    }

    #[test]
    fn the_most_xp_comes_first_and_ties_go_to_the_smaller_uid() {
        assert!(key(100, 9) < key(99, 1));
        assert!(key(100, 1) < key(100, 2));
        assert!(key(-5, 1) > key(0, 9));
        assert!(FIRST < key(i64::MAX, i64::MIN));
    }
}
