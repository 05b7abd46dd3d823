//! One refresh round's decisions, apart from the SQL around them: the work of many
//! batches folded into one change per (period, user), then the rows and block moves
//! that change makes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ttfd_shared::model::period_keys;
#[cfg(test)]
use ttfd_shared::seasons::Season;
use ttfd_shared::seasons::Seasons;

use super::blocks::{Key, key};

/// The all-time standings key.
pub const ALL: &str = "all";

/// One batch's `standing_work` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkRow {
    pub id: i64,
    /// XP added to user `users[i]` on ledger day `days[i]`: `xp[i]`.
    pub users: Vec<i64>,
    pub days: Vec<i32>,
    pub xp: Vec<i64>,
    /// Users the batch wrote besides those of `users`: ranked all time, XP or not.
    pub touched: Vec<i64>,
    /// Users merged away, and the user each ended in.
    pub losers: Vec<i64>,
    pub survivors: Vec<i64>,
    /// Users one of whose identities said `hidden` (SPEC 7.3): visibility to check.
    pub seen: Vec<i64>,
    /// Users left without any identity (SPEC 7.4, a forget): off every period.
    pub gone: Vec<i64>,
    pub recompute: bool,
}

/// The work of a round, folded.
#[derive(Debug, Default)]
pub struct Round {
    /// XP to add per (period, user): every user as the round leaves it (merges followed).
    pub deltas: BTreeMap<(String, i64), i64>,
    /// Each user merged away in the round's batches, and where it ended.
    survivor: HashMap<i64, i64>,
    /// The batch (index in the round) each of those merges was in.
    merged_in: HashMap<i64, usize>,
    /// Users gone (no identity left), and the last batch each was gone at the end of:
    /// their rows go, their work before that is dropped.
    gone_in: HashMap<i64, usize>,
    /// Users whose visibility may have changed (a `prefs` event, a merge): their rows
    /// in every period are read, and their flag set.
    check: BTreeSet<i64>,
}

/// A member's move in a period's order: `(old key, new key)`, `None` for not ranked or
/// hidden.
pub type Move = (Option<Key>, Option<Key>);

/// A standings row as stored: XP, and whether the member is hidden.
pub type Stored = (i64, bool);

/// What a round writes: standings rows `(period, user, xp, hidden)` set or removed, and
/// per period the members that moved (every period a row is written in has an entry,
/// so that it has blocks).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub upserts: Vec<(String, i64, i64, bool)>,
    pub deletes: Vec<(String, i64)>,
    pub moves: BTreeMap<String, Vec<Move>>,
}

impl Round {
    /// Folds the rows, in commit order. A merge moves what its loser has, before or
    /// after in the round, to its survivor: a user merged away gets no later work.
    pub fn fold(rows: &[WorkRow], seasons: &Seasons) -> Self {
        let (mut survivor, mut merged_in, mut gone_in) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        for (i, r) in rows.iter().enumerate() {
            for (l, s) in r.losers.iter().zip(&r.survivors) {
                survivor.insert(*l, *s);
                merged_in.insert(*l, i);
            }
            gone_in.extend(r.gone.iter().map(|u| (*u, i)));
        }
        let mut round = Round {
            deltas: BTreeMap::new(),
            survivor,
            merged_in,
            gone_in,
            check: BTreeSet::new(),
        };
        // A round's entries fall on a few days: each day's keys are made once.
        let mut keys_of: HashMap<i32, Vec<String>> = HashMap::new();
        for r in rows {
            for ((u, d), x) in r.users.iter().zip(&r.days).zip(&r.xp) {
                let u = round.follow(*u);
                for k in keys_of
                    .entry(*d)
                    .or_insert_with(|| period_keys(*d, seasons))
                    .iter()
                {
                    *round.deltas.entry((k.clone(), u)).or_default() += x;
                }
                *round.deltas.entry((ALL.to_owned(), u)).or_default() += x;
            }
            for t in &r.touched {
                let u = round.follow(*t);
                round.deltas.entry((ALL.to_owned(), u)).or_default();
            }
            // A user gone at the end of this batch loses what came before (its rows go
            // too); later work counts again.
            if !r.gone.is_empty() {
                round.deltas.retain(|(_, u), _| !r.gone.contains(u));
            }
        }
        let check: BTreeSet<i64> = rows
            .iter()
            .flat_map(|r| r.seen.iter().chain(&r.survivors))
            .map(|u| round.follow(*u))
            .collect();
        round.check = check;
        round
    }

    /// The periods the round adds to or ranks a user in, each once.
    pub fn periods(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.deltas.keys().map(|(p, _)| p.as_str()).collect();
        keys.dedup();
        keys
    }

    /// The users gone in the round, whose rows are removed in every period.
    pub fn gone(&self) -> Vec<i64> {
        let mut g: Vec<i64> = self.gone_in.keys().copied().collect();
        g.sort_unstable();
        g
    }

    /// The users whose rows in every period the round reads ([`Round::settle`]'s
    /// `stored` holds them): their visibility may have changed.
    pub fn checked(&self) -> Vec<i64> {
        self.check.iter().copied().collect()
    }

    /// The user `uid` ended in after the round's merges.
    fn follow(&self, uid: i64) -> i64 {
        self.chain(uid).0
    }

    /// The user `uid` ended in, and the batch of the merge into it (`None`: not merged).
    fn chain(&self, mut uid: i64) -> (i64, Option<usize>) {
        let mut arrived = None;
        for _ in 0..64 {
            match self.survivor.get(&uid) {
                Some(s) if *s != uid => {
                    arrived = self.merged_in.get(&uid).copied();
                    uid = *s;
                }
                _ => break,
            }
        }
        (uid, arrived)
    }

    /// The users merged away in the round, whose standings move to their survivors.
    pub fn losers(&self) -> Vec<i64> {
        let mut l: Vec<i64> = self.survivor.keys().copied().collect();
        l.sort_unstable();
        l
    }

    /// Where the stored rows of a user merged away or gone end: its last survivor,
    /// unless the user itself, or that survivor at or after the merge that brought the
    /// rows there, was gone at the end of a batch of the round (a user gone loses what
    /// came before, as [`Round::fold`] drops its earlier work).
    fn heir(&self, uid: i64) -> Option<i64> {
        if self.gone_in.contains_key(&uid) {
            return None;
        }
        let (heir, arrived) = self.chain(uid);
        let lost = self
            .gone_in
            .get(&heir)
            .is_some_and(|g| arrived.is_none_or(|a| *g >= a));
        (!lost).then_some(heir)
    }

    /// Takes the standings rows the losers (and the users gone) had, `(period, user, xp,
    /// hidden)`, now removed: a loser's is added to its heir's ([`Round::heir`]); the
    /// visible ones leave their blocks.
    pub fn take_losers(&mut self, removed: &[(String, i64, i64, bool)]) -> Vec<(String, Key)> {
        removed
            .iter()
            .filter_map(|(p, loser, xp, hidden)| {
                if let Some(s) = self.heir(*loser) {
                    *self.deltas.entry((p.clone(), s)).or_default() += xp;
                }
                (!hidden).then(|| (p.clone(), key(*xp, *loser)))
            })
            .collect()
    }

    /// The (period, user) pairs the round adds no XP to (users it touched: ranked all
    /// time even without XP), whose stored rows it reads.
    pub fn unmoved(&self) -> (Vec<&str>, Vec<i64>) {
        self.deltas
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|((p, u), _)| (p.as_str(), *u))
            .unzip()
    }

    /// The (period, user, XP added) the round adds XP to: their stored rows are updated
    /// in place, and the update returns what they held.
    pub fn moving(&self) -> (Vec<&str>, Vec<i64>, Vec<i64>) {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for ((p, u), d) in self.deltas.iter().filter(|(_, d)| **d != 0) {
            out.0.push(p.as_str());
            out.1.push(*u);
            out.2.push(*d);
        }
        out
    }

    /// The rows and moves, given the stored rows of every pair of the round and of the
    /// [`Round::checked`] users (absent: not ranked), the losers' rows taken out
    /// ([`Round::take_losers`]) and the users hidden now.
    pub fn settle(
        &self,
        stored: &HashMap<(String, i64), Stored>,
        removed: Vec<(String, Key)>,
        hidden: &HashSet<i64>,
    ) -> Settled {
        let mut out = Settled::default();
        for (p, k) in removed {
            out.moves.entry(p).or_default().push((Some(k), None));
        }
        let checked = stored
            .keys()
            .filter(|(p, u)| self.check.contains(u) && !self.deltas.contains_key(&(p.clone(), *u)))
            .map(|pu| (pu, &0));
        for ((p, u), delta) in self.deltas.iter().chain(checked) {
            let old = stored.get(&(p.clone(), *u)).copied();
            let xp = old.map_or(0, |o| o.0) + delta;
            // All time ranks every user; a period, those with XP in it.
            let ranked = p == ALL || xp != 0;
            let new = ranked.then_some((xp, hidden.contains(u)));
            if old == new {
                continue;
            }
            match new {
                Some((xp, h)) => out.upserts.push((p.clone(), *u, xp, h)),
                None => out.deletes.push((p.clone(), *u)),
            }
            let shown = |row: Option<Stored>| row.filter(|r| !r.1).map(|r| key(r.0, *u));
            out.moves
                .entry(p.clone())
                .or_default()
                .push((shown(old), shown(new)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;
    use ttfd_shared::rules::day_of_date;

    fn row(id: i64) -> WorkRow {
        WorkRow {
            id,
            ..WorkRow::default()
        }
    }

    fn fold(rows: &[WorkRow]) -> Round {
        Round::fold(rows, &Seasons::default())
    }

    const W: &str = "week:2026-W49";
    const M: &str = "month:2026-12";

    #[test]
    fn xp_of_a_day_counts_all_time_in_its_week_and_in_its_month() {
        let thu = day_of_date(date!(2026 - 12 - 03));
        let r = fold(&[WorkRow {
            users: vec![7, 7, 8],
            days: vec![thu, thu - 4, thu],
            xp: vec![10, 5, 3],
            touched: vec![7, 8, 9],
            ..row(1)
        }]);
        let d = |p: &str, u: i64| r.deltas.get(&(p.to_owned(), u)).copied();
        assert_eq!(d(ALL, 7), Some(15));
        assert_eq!(d(W, 7), Some(10), "Sunday 2026-11-29 is the week before");
        assert_eq!(d("week:2026-W48", 7), Some(5));
        assert_eq!(d(M, 7), Some(10));
        assert_eq!(d("month:2026-11", 7), Some(5));
        assert_eq!(d(ALL, 9), Some(0), "a user without XP is ranked all time");
        assert_eq!(d(W, 9), None);
        // With a season from December 1, the same XP counts in it too.
        let seasons = Seasons::new(vec![
            Season::parse("winter", "2026-12-01", "2027-02-28").expect("a season"),
        ])
        .expect("valid");
        let r = Round::fold(
            &[WorkRow {
                users: vec![7, 7],
                days: vec![thu, thu - 4],
                xp: vec![10, 5],
                ..row(1)
            }],
            &seasons,
        );
        assert_eq!(r.deltas.get(&("season:winter".to_owned(), 7)), Some(&10));
    }

    #[test]
    fn a_merge_moves_the_losers_work_and_rows_to_its_survivor() {
        let day = day_of_date(date!(2026 - 12 - 03));
        let mut r = fold(&[
            WorkRow {
                users: vec![5],
                days: vec![day],
                xp: vec![40],
                touched: vec![5],
                ..row(1)
            },
            WorkRow {
                users: vec![2],
                days: vec![day],
                xp: vec![1],
                touched: vec![2],
                losers: vec![5],
                survivors: vec![2],
                ..row(2)
            },
            WorkRow {
                losers: vec![2],
                survivors: vec![1],
                touched: vec![1],
                ..row(3)
            },
        ]);
        assert_eq!(r.losers(), vec![2, 5]);
        let removed =
            r.take_losers(&[(ALL.to_owned(), 2, 100, false), (W.to_owned(), 5, 7, false)]);
        assert_eq!(r.deltas.get(&(ALL.to_owned(), 1)), Some(&141));
        assert_eq!(r.deltas.get(&(W.to_owned(), 1)), Some(&48));
        assert!(r.deltas.keys().all(|(_, u)| *u == 1));
        let stored = HashMap::from([
            ((ALL.to_owned(), 1), (10, false)),
            ((W.to_owned(), 1), (-48, false)),
        ]);
        let s = r.settle(&stored, removed, &HashSet::new());
        assert!(s.upserts.contains(&(ALL.to_owned(), 1, 151, false)));
        assert!(s.upserts.contains(&(M.to_owned(), 1, 41, false)));
        assert_eq!(
            s.deletes,
            vec![(W.to_owned(), 1)],
            "0 XP this week: not ranked"
        );
        assert_eq!(
            s.moves[W],
            vec![(Some(key(7, 5)), None), (Some(key(-48, 1)), None)]
        );
        assert_eq!(
            s.moves[ALL],
            vec![
                (Some(key(100, 2)), None),
                (Some(key(10, 1)), Some(key(151, 1)))
            ]
        );
    }

    #[test]
    fn a_losers_rows_go_with_a_survivor_gone_after_the_merge() {
        // User 6 merged into 1, then 1 lost its last identity: what 6 had is gone with
        // 1's. User 8 merged into 2 after 2 was gone and came back: 8's rows count.
        let mut r = fold(&[
            WorkRow {
                losers: vec![6],
                survivors: vec![1],
                gone: vec![2],
                ..row(1)
            },
            WorkRow {
                gone: vec![1],
                ..row(2)
            },
            WorkRow {
                losers: vec![8],
                survivors: vec![2],
                touched: vec![2],
                ..row(3)
            },
        ]);
        let removed = r.take_losers(&[
            (ALL.to_owned(), 6, 10, false),
            (ALL.to_owned(), 1, 5, false),
            (ALL.to_owned(), 8, 7, false),
        ]);
        assert_eq!(removed.len(), 3, "every shown row leaves its block");
        assert_eq!(r.deltas.get(&(ALL.to_owned(), 1)), None);
        assert_eq!(r.deltas.get(&(ALL.to_owned(), 2)), Some(&7));
    }

    #[test]
    fn nothing_is_written_for_a_user_whose_standing_did_not_change() {
        let r = fold(&[WorkRow {
            touched: vec![3],
            ..row(1)
        }]);
        let none = HashSet::new();
        let s = r.settle(
            &HashMap::from([((ALL.to_owned(), 3), (0, false))]),
            Vec::new(),
            &none,
        );
        assert_eq!(s, Settled::default());
        let s = r.settle(&HashMap::new(), Vec::new(), &none);
        assert_eq!(s.upserts, vec![(ALL.to_owned(), 3, 0, false)]);
    }

    #[test]
    fn a_member_who_hides_keeps_rows_in_every_period_but_leaves_every_order() {
        let day = day_of_date(date!(2026 - 12 - 03));
        // The batch of the `prefs` event added nothing; the member had rows in two
        // periods, read because they are checked.
        let r = fold(&[WorkRow {
            touched: vec![4],
            seen: vec![4],
            ..row(1)
        }]);
        assert_eq!(r.checked(), vec![4]);
        let stored = HashMap::from([
            ((ALL.to_owned(), 4), (30, false)),
            ((W.to_owned(), 4), (30, false)),
        ]);
        let s = r.settle(&stored, Vec::new(), &HashSet::from([4]));
        assert_eq!(
            s.upserts,
            vec![(ALL.to_owned(), 4, 30, true), (W.to_owned(), 4, 30, true)]
        );
        assert_eq!(s.moves[ALL], vec![(Some(key(30, 4)), None)]);
        assert_eq!(s.moves[W], vec![(Some(key(30, 4)), None)]);

        // Hidden, they earn on: the XP stays exact, no block counts them.
        let r = fold(&[WorkRow {
            users: vec![4],
            days: vec![day],
            xp: vec![5],
            touched: vec![4],
            ..row(2)
        }]);
        let stored = HashMap::from([((ALL.to_owned(), 4), (30, true))]);
        let s = r.settle(&stored, Vec::new(), &HashSet::from([4]));
        assert!(s.upserts.contains(&(ALL.to_owned(), 4, 35, true)));
        assert!(s.upserts.contains(&(M.to_owned(), 4, 5, true)));
        assert_eq!(
            s.moves[M],
            vec![(None, None)],
            "a period with a row has blocks"
        );

        // Shown again, in the period of a merged-away loser's hidden row too.
        let mut r = fold(&[WorkRow {
            touched: vec![4],
            seen: vec![4],
            losers: vec![9],
            survivors: vec![4],
            ..row(3)
        }]);
        let removed = r.take_losers(&[(W.to_owned(), 9, 2, true)]);
        assert!(removed.is_empty(), "a hidden row was in no block");
        let stored = HashMap::from([
            ((ALL.to_owned(), 4), (35, true)),
            ((W.to_owned(), 4), (35, true)),
        ]);
        let s = r.settle(&stored, removed, &HashSet::new());
        assert_eq!(s.moves[W], vec![(None, Some(key(37, 4)))]);
        assert_eq!(s.moves[ALL], vec![(None, Some(key(35, 4)))]);
    }
}
