//! The settle phase of a batch without its I/O: what the batch knows of its users under
//! the settle lock ([`Settlement`]) and the steps that change it. [`super::apply`] reads
//! the tables into it, runs these steps in order and writes back what they decided:
//!
//! 3. the owners of the identities and their users ([`Settlement::take_users`],
//!    [`Settlement::follow_moved`], [`Settlement::absorb_deltas`]);
//! 4. the ledger ([`ledger_rows`], [`Settlement::credit_ledger`]);
//! 5. links and merges ([`excluded_links`], [`link_rows`], [`Settlement::merge_links`],
//!    [`Settlement::drop_losers`]), then the splits of unlinks ([`split`],
//!    [`Settlement::take_split`]);
//! 6. peak ranks ([`Settlement::rank_peaks`], [`Settlement::set_peaks`]);
//! 7. the users to write back ([`Settlement::users`]);
//! 8. notifications ([`Settlement::rank_changes`], [`Settlement::notices`]).

use super::standings::round::WorkRow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ttfd_shared::rules;
use ttfd_shared::view::UnpaidVoice;
use ttfd_shared::wire::{LinkNotice, RankNotice, WireIdentity};
use ttfd_shared::{Event, Payload, Rules, Unpaid};

use super::StoreError;
use super::minutes::{DayMinutes, MinuteMults};

/// A user's totals: as read, as a batch's delta for one identity, or as written back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct UserRow {
    pub xp: i64,
    /// A day of one of the user's identities went below zero (slow peak path).
    pub dipped: bool,
    pub peak_rank: i16,
    pub messages: i64,
    pub voice_seconds: i64,
    pub games_played: i64,
    pub games_won: i64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

impl UserRow {
    pub fn absorb(&mut self, other: &UserRow) {
        self.xp += other.xp;
        self.dipped |= other.dipped;
        self.peak_rank = self.peak_rank.max(other.peak_rank);
        self.messages += other.messages;
        self.voice_seconds += other.voice_seconds;
        self.games_played += other.games_played;
        self.games_won += other.games_won;
        self.first_ms = min_opt(self.first_ms, other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
    }

    pub fn saw(&mut self, ts: i64) {
        self.first_ms = min_opt(self.first_ms, Some(ts));
        self.last_ms = self.last_ms.max(Some(ts));
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// What a batch brings to one identity's ledger row for one day: XP other than message
/// XP, and the minutes of eligible messages (message XP, once the settle phase knows
/// which minutes are new): at 100 in `minutes`, at any other `data.mult` in `mults`.
#[derive(Debug, Default)]
pub(super) struct LedgerDay {
    pub xp: i64,
    pub minutes: Option<DayMinutes>,
    pub mults: Option<MinuteMults>,
    /// The identity's counters and activity times of the day, of its events other than
    /// links and unlinks (what a split recomputes users from).
    pub counts: UserRow,
    /// The XP statement's columns the events bring (message XP is what the upsert adds
    /// beyond these).
    pub sources: Sources,
}

/// A batch's XP by source other than messages, and its unpaid voice time by reason, for
/// one ledger row (docs/rules.md, "The XP statement").
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sources {
    pub voice_xp: i64,
    pub games_xp: i64,
    pub grants_xp: i64,
    pub unpaid: UnpaidVoice,
}

impl Sources {
    /// What `payload`, worth `xp`, brings.
    pub fn add(&mut self, payload: &Payload, xp: i64) {
        match payload {
            Payload::Voice { .. } => self.voice_xp += xp,
            Payload::Game { .. } => self.games_xp += xp,
            Payload::Xp { .. } => self.grants_xp += xp,
            Payload::VoiceUnpaid { seconds, why, .. } => {
                self.unpaid.add(*why, i64::from(*seconds));
            }
            _ => {}
        }
    }
}

impl LedgerDay {
    /// Whether the batch brings the row anything.
    pub fn is_empty(&self) -> bool {
        self.xp == 0
            && self.minutes.is_none()
            && self.mults.is_none()
            && self.counts.first_ms.is_none()
    }
}

/// What a batch established before the settle lock: its identities, per-identity
/// deltas, ledger rows per identity and day, links (sorted by event time).
pub(super) struct Facts<'e> {
    pub iids: Vec<i64>,
    pub deltas: BTreeMap<i64, UserRow>,
    pub ledger: BTreeMap<(i64, i32), LedgerDay>,
    pub links: Vec<(&'e Event, i64, i64)>,
    /// Audited events (SPEC 7.1), with their identity and a link's other identity.
    pub audit: Vec<(&'e Event, i64, Option<i64>)>,
    /// Preferences (SPEC 7.3) per identity.
    pub prefs: BTreeMap<i64, super::apply::PrefsRow<'e>>,
    /// Unlinks (SPEC 7.4): the event, its identity and the other one.
    pub unlinks: Vec<(&'e Event, i64, i64)>,
    /// Forgets (SPEC 7.4): the event and its identity.
    pub forgets: Vec<(&'e Event, i64)>,
}

/// The users of a batch's notices who said `notify: false` (`quiet`) and who are hidden
/// (SPEC 7.3).
#[derive(Debug, Default)]
pub(super) struct NoticePrefs {
    pub quiet: HashSet<i64>,
    pub hidden: HashSet<i64>,
}

/// A merge decided in this batch: `loser` now redirects to `survivor`.
pub(super) struct Merge<'e> {
    pub loser: i64,
    pub event: &'e Event,
}

/// What a user was before this batch, for rank changes and the peak rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Before {
    pub xp: i64,
    pub peak_rank: i16,
    /// The newest event time.
    pub last_ms: Option<i64>,
}

/// The batch's users under the settle lock, from reading them to the outbox.
#[derive(Default)]
pub(super) struct Settlement<'e> {
    /// Identity id → the user that has it now.
    pub owner: HashMap<i64, i64>,
    /// The batch's live users, as they will be written back.
    pub users: BTreeMap<i64, UserRow>,
    /// Users read that were merged away before this batch → their `merged_into`.
    pub moved: HashMap<i64, i64>,
    /// The live users as read, before this batch's deltas.
    pub before: HashMap<i64, Before>,
    /// What the ledger upsert added to each `(identity, day)` row.
    pub added: BTreeMap<(i64, i32), i64>,
    /// Users merged away in this batch → the user they merged into.
    pub redirect: HashMap<i64, i64>,
    /// The merges of this batch, in link order.
    pub merges: Vec<Merge<'e>>,
    /// Users a link of this batch joined to themselves: already one user, but the link
    /// may be older in event time than the one that joined them, which can lower the
    /// event-time peak (`rank_peaks`).
    pub relinked: Vec<i64>,
    /// Users an unlink of this batch recomputed from their identities (SPEC 7.4): the
    /// one that kept its uid and the new ones split off. Their peaks are recomputed.
    pub split: Vec<i64>,
    /// XP per day a split carried from one user to another, or a forget took away
    /// (`to` is `None`): `(from, to, day, xp)`.
    pub carried: Vec<(i64, Option<i64>, i32, i64)>,
    /// Users to recompute from their identities at step 5: a forget took one of theirs.
    pub recompute: BTreeSet<i64>,
    /// Users left without any identity (a forget took their last): off the standings.
    pub gone: Vec<i64>,
}

/// One ledger row as the split reads it: `(identity, day, xp, counters and activity
/// times)`.
pub(super) type CountedDay = (i64, i32, i64, UserRow);

/// One part of a user an unlink recomputes: its identities (the smallest first), its
/// totals from them, and its XP per day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Part {
    pub identities: Vec<i64>,
    pub row: UserRow,
    pub days: BTreeMap<i32, i64>,
}

/// The users of `identities` (`(identity, user)`) as the components of the links that
/// count among them (`links`: `(identity, other, ts)`), each user's parts with the one
/// that keeps its uid first: the part holding its smallest identity id (SPEC 7.4). A
/// part's totals are its identities' ledger rows (XP, counters, activity times) and the
/// times of its links; its peak is left for the event-time recomputation.
pub(super) fn split(
    identities: &[(i64, i64)],
    links: &[(i64, i64, i64)],
    ledger: &[CountedDay],
) -> BTreeMap<i64, Vec<Part>> {
    let mut root: HashMap<i64, i64> = identities.iter().map(|(i, _)| (*i, *i)).collect();
    fn find(root: &mut HashMap<i64, i64>, mut i: i64) -> i64 {
        while let Some(&r) = root.get(&i) {
            if r == i {
                break;
            }
            i = r;
        }
        i
    }
    for &(a, b, _) in links {
        if !(root.contains_key(&a) && root.contains_key(&b)) {
            continue;
        }
        let (ra, rb) = (find(&mut root, a), find(&mut root, b));
        root.insert(ra.max(rb), ra.min(rb));
    }
    // Per user, per component (keyed by its smallest identity): the part.
    let mut parts: BTreeMap<i64, BTreeMap<i64, Part>> = BTreeMap::new();
    let mut part_of: HashMap<i64, (i64, i64)> = HashMap::new();
    for (iid, uid) in identities {
        let r = find(&mut root, *iid);
        part_of.insert(*iid, (*uid, r));
        let part = parts
            .entry(*uid)
            .or_default()
            .entry(r)
            .or_insert_with(|| Part {
                identities: Vec::new(),
                row: UserRow::default(),
                days: BTreeMap::new(),
            });
        part.identities.push(*iid);
    }
    for &(a, _, ts) in links {
        if let Some(&(uid, r)) = part_of.get(&a)
            && let Some(part) = parts.get_mut(&uid).and_then(|p| p.get_mut(&r))
        {
            part.row.saw(ts);
        }
    }
    for (iid, day, xp, counts) in ledger {
        if let Some(&(uid, r)) = part_of.get(iid)
            && let Some(part) = parts.get_mut(&uid).and_then(|p| p.get_mut(&r))
        {
            part.row.absorb(counts);
            part.row.xp += xp;
            part.row.dipped |= *xp < 0;
            if *xp != 0 {
                *part.days.entry(*day).or_default() += xp;
            }
        }
    }
    parts
        .into_iter()
        .map(|(uid, by_root)| {
            let mut list: Vec<Part> = by_root.into_values().collect();
            for p in &mut list {
                p.identities.sort_unstable();
                p.row.peak_rank = 1;
            }
            // BTreeMap order by smallest identity: the keeper comes first.
            (uid, list)
        })
        .collect()
}

/// Which of a batch's links count (SPEC 7.4): a link up to the newest unlink between
/// its two identities, stored (`stored`: the newest cut per pair, the smaller identity
/// id first) or in the batch, does not. Returns the ids of those that do not.
pub(super) fn excluded_links<'e>(
    links: &[(&'e Event, i64, i64)],
    stored: &HashMap<(i64, i64), i64>,
    unlinks: &[(&'e Event, i64, i64)],
) -> HashSet<&'e str> {
    let mut cuts = stored.clone();
    for (e, a, b) in unlinks {
        let cut = cuts.entry(((*a).min(*b), (*a).max(*b))).or_insert(e.ts);
        *cut = (*cut).max(e.ts);
    }
    links
        .iter()
        .filter(|(e, a, b)| {
            cuts.get(&((*a).min(*b), (*a).max(*b)))
                .is_some_and(|cut| e.ts <= *cut)
        })
        .map(|(e, _, _)| e.id.as_str())
        .collect()
}

/// A `users` row as read: id, `merged_into`, totals.
pub(super) type ReadUser = (i64, Option<i64>, UserRow);

/// The ledger upsert's columns, one entry per `(identity, day)`.
#[derive(Debug, Default)]
pub(super) struct LedgerRows<'f> {
    pub ids: Vec<i64>,
    pub days: Vec<i32>,
    /// The day's XP with the message XP of all its minutes (the upsert takes back
    /// the minutes already on the row).
    pub xp: Vec<i64>,
    pub minutes: Vec<Option<&'f DayMinutes>>,
    pub counts: LedgerCounts,
}

/// The counters, activity times and statement columns of ledger rows, a column each.
#[derive(Debug, Default)]
pub(super) struct LedgerCounts {
    pub messages: Vec<i64>,
    pub voice_seconds: Vec<i64>,
    pub games_played: Vec<i64>,
    pub games_won: Vec<i64>,
    pub first_ms: Vec<Option<i64>>,
    pub last_ms: Vec<Option<i64>>,
    pub voice_xp: Vec<i64>,
    pub games_xp: Vec<i64>,
    pub grants_xp: Vec<i64>,
    /// Unpaid voice seconds in [`Unpaid::ALL`]'s order.
    pub unpaid: [Vec<i64>; 4],
}

impl LedgerCounts {
    pub fn push(&mut self, day: &LedgerDay) {
        let c = &day.counts;
        self.messages.push(c.messages);
        self.voice_seconds.push(c.voice_seconds);
        self.games_played.push(c.games_played);
        self.games_won.push(c.games_won);
        self.first_ms.push(c.first_ms);
        self.last_ms.push(c.last_ms);
        let s = &day.sources;
        self.voice_xp.push(s.voice_xp);
        self.games_xp.push(s.games_xp);
        self.grants_xp.push(s.grants_xp);
        for (column, why) in self.unpaid.iter_mut().zip(Unpaid::ALL) {
            column.push(s.unpaid.get(why));
        }
    }
}

/// Step 4's rows for the bitmap statement: each `(identity, day)` of the batch's ledger
/// that brings no multiplied minutes (those are settled one by one, see
/// [`MinuteMults::settle`]).
pub(super) fn ledger_rows(
    ledger: &BTreeMap<(i64, i32), LedgerDay>,
    message_xp: i64,
) -> LedgerRows<'_> {
    let mut rows = LedgerRows {
        ids: Vec::with_capacity(ledger.len()),
        days: Vec::with_capacity(ledger.len()),
        xp: Vec::with_capacity(ledger.len()),
        minutes: Vec::with_capacity(ledger.len()),
        counts: LedgerCounts::default(),
    };
    for (&(iid, day), facts) in ledger.iter().filter(|(_, f)| f.mults.is_none()) {
        let minutes = facts.minutes.as_ref();
        rows.ids.push(iid);
        rows.days.push(day);
        rows.xp
            .push(facts.xp + message_xp * minutes.map_or(0, DayMinutes::len));
        rows.minutes.push(minutes);
        rows.counts.push(facts);
    }
    rows
}

/// The `links` insert's columns, one entry per link event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct LinkRows<'e> {
    pub events: Vec<&'e str>,
    pub a: Vec<i64>,
    pub b: Vec<i64>,
    pub days: Vec<i32>,
    pub ts: Vec<i64>,
    pub excluded: Vec<bool>,
    pub proofs: Vec<&'static str>,
}

/// Step 5's rows: every link of the batch, merging or not, counting or not
/// (`excluded`, [`excluded_links`]).
pub(super) fn link_rows<'e>(
    links: &[(&'e Event, i64, i64)],
    excluded: &HashSet<&str>,
) -> LinkRows<'e> {
    LinkRows {
        events: links.iter().map(|(e, _, _)| e.id.as_str()).collect(),
        a: links.iter().map(|l| l.1).collect(),
        b: links.iter().map(|l| l.2).collect(),
        days: links.iter().map(|l| rules::day_of(l.0.ts)).collect(),
        ts: links.iter().map(|l| l.0.ts).collect(),
        excluded: links
            .iter()
            .map(|(e, _, _)| excluded.contains(e.id.as_str()))
            .collect(),
        proofs: links
            .iter()
            .map(|(e, _, _)| match &e.payload {
                Payload::Link { proof, .. } => proof.as_str(),
                _ => "",
            })
            .collect(),
    }
}

impl<'e> Settlement<'e> {
    /// Starts from the owners of the batch's identities.
    pub fn new(owner: HashMap<i64, i64>) -> Self {
        Self {
            owner,
            ..Self::default()
        }
    }

    /// The users to read first: the owners.
    pub fn owners_to_read(&self) -> BTreeSet<i64> {
        self.owner.values().copied().collect()
    }

    /// Takes one read of users: live ones join [`Settlement::users`], merged-away ones
    /// [`Settlement::moved`]. Returns the users they were merged into that are not read
    /// yet.
    pub fn take_users(&mut self, rows: impl IntoIterator<Item = ReadUser>) -> BTreeSet<i64> {
        let mut wanted = BTreeSet::new();
        for (id, merged_into, row) in rows {
            if let Some(survivor) = merged_into {
                self.moved.insert(id, survivor);
                if !self.users.contains_key(&survivor) && !self.moved.contains_key(&survivor) {
                    wanted.insert(survivor);
                }
                continue;
            }
            self.users.insert(id, row);
        }
        wanted
    }

    /// Points each identity at the user that has it now, past users merged away since
    /// its owner was cached. Returns the owners that changed, or `None` when a chain of
    /// merges does not end at a user read live (the cache is out of date).
    pub fn follow_moved(&mut self) -> Option<Vec<(i64, i64)>> {
        let mut changed = Vec::new();
        if self.moved.is_empty() {
            return Some(changed);
        }
        for (iid, uid) in self.owner.iter_mut() {
            let survivor = follow(&self.moved, *uid);
            if self.moved.contains_key(&survivor) {
                return None;
            }
            if survivor != *uid {
                *uid = survivor;
                changed.push((*iid, survivor));
            }
        }
        Some(changed)
    }

    /// Remembers the users as read ([`Settlement::before`]), then adds each identity's
    /// delta to its owner.
    pub fn absorb_deltas(&mut self, deltas: &BTreeMap<i64, UserRow>) -> Result<(), StoreError> {
        self.before = self
            .users
            .iter()
            .map(|(id, u)| {
                let before = Before {
                    xp: u.xp,
                    peak_rank: u.peak_rank,
                    last_ms: u.last_ms,
                };
                (*id, before)
            })
            .collect();
        for (iid, d) in deltas {
            self.users
                .get_mut(&self.owner[iid])
                .ok_or(StoreError::Contended)?
                .absorb(d);
        }
        Ok(())
    }

    /// Takes the ledger upsert's `(identity, day, added, below zero)` rows: what each row
    /// gained goes to its owner's XP, and a day below zero marks the owner as dipped.
    pub fn credit_ledger(&mut self, written: impl IntoIterator<Item = (i64, i32, i64, bool)>) {
        for (iid, day, gain, below_zero) in written {
            self.added.insert((iid, day), gain);
            let Some(u) = self.owner.get(&iid).and_then(|uid| self.users.get_mut(uid)) else {
                continue;
            };
            u.xp += gain;
            u.dipped |= below_zero;
        }
    }

    /// Merges the users of each link that counts (in order; `excluded` do not, see
    /// [`excluded_links`]) that differ: the smaller uid survives and absorbs the other's
    /// totals. A link that counts is activity of its user.
    pub fn merge_links(
        &mut self,
        links: &[(&'e Event, i64, i64)],
        excluded: &HashSet<&str>,
    ) -> Result<(), StoreError> {
        for &(e, a, b) in links {
            if excluded.contains(e.id.as_str()) {
                continue;
            }
            let ua = follow(&self.redirect, self.owner[&a]);
            let ub = follow(&self.redirect, self.owner[&b]);
            self.users
                .get_mut(&ua)
                .ok_or(StoreError::Contended)?
                .saw(e.ts);
            if ua == ub {
                self.relinked.push(ua);
                continue;
            }
            let (survivor, loser) = (ua.min(ub), ua.max(ub));
            let gone = self
                .users
                .get(&loser)
                .cloned()
                .ok_or(StoreError::Contended)?;
            self.users
                .get_mut(&survivor)
                .ok_or(StoreError::Contended)?
                .absorb(&gone);
            self.redirect.insert(loser, survivor);
            self.merges.push(Merge { loser, event: e });
        }
        Ok(())
    }

    /// The batch as the standings refresher needs it: XP added per final user and day,
    /// the users written, the merges, the users of `seen` (identities whose `hidden` the
    /// batch set). (Its `id` is the table's to give.)
    ///
    /// XP added goes to the user that had the identity before any split of the batch;
    /// a split then carries its parts' XP away from it ([`Settlement::take_split`]).
    /// Users without any event (an identity only named by a link that does not count)
    /// are ranked nowhere.
    pub fn standing_work(&self, seen: impl IntoIterator<Item = i64>) -> WorkRow {
        let mut added: BTreeMap<(i64, i32), i64> = BTreeMap::new();
        for (&(iid, day), &xp) in &self.added {
            if xp != 0 {
                let uid = follow(&self.redirect, self.owner[&iid]);
                *added.entry((uid, day)).or_default() += xp;
            }
        }
        for &(from, to, day, xp) in &self.carried {
            *added.entry((from, day)).or_default() -= xp;
            if let Some(to) = to {
                *added.entry((to, day)).or_default() += xp;
            }
        }
        added.retain(|_, xp| *xp != 0);
        let ((users, days), xp): ((Vec<i64>, Vec<i32>), Vec<i64>) = added.into_iter().unzip();
        // The users with XP added are ranked anyway: the row is written under the settle
        // lock, and smaller is faster.
        let with_xp: HashSet<i64> = users.iter().copied().collect();
        WorkRow {
            touched: self
                .users
                .iter()
                .filter(|(uid, u)| u.first_ms.is_some() && !with_xp.contains(uid))
                .map(|(uid, _)| *uid)
                .collect(),
            users,
            days,
            xp,
            losers: self.losers(),
            survivors: self.survivors_of_losers(),
            gone: self.gone.clone(),
            seen: seen
                .into_iter()
                .map(|iid| follow(&self.redirect, self.owner[&iid]))
                .chain(self.split.iter().copied())
                .collect(),
            ..WorkRow::default()
        }
    }

    /// The users merged away in this batch, in merge order.
    pub fn losers(&self) -> Vec<i64> {
        self.merges.iter().map(|m| m.loser).collect()
    }

    /// The user each of [`Settlement::losers`] ended in.
    pub fn survivors_of_losers(&self) -> Vec<i64> {
        self.merges
            .iter()
            .map(|m| follow(&self.redirect, m.loser))
            .collect()
    }

    /// Takes the parts an unlink split user `uid` into ([`split`]): the first keeps the
    /// uid, the others are the users `new_uids`, and carry their XP per day away from
    /// it. Each part is compared with what `uid` was before the batch (rank changes).
    pub fn take_split(&mut self, uid: i64, parts: Vec<Part>, new_uids: &[i64]) {
        let before = self.before.get(&uid).copied();
        for (i, part) in parts.into_iter().enumerate() {
            let to = if i == 0 { uid } else { new_uids[i - 1] };
            if to != uid {
                for (day, xp) in &part.days {
                    self.carried.push((uid, Some(to), *day, *xp));
                }
                if let Some(b) = before {
                    self.before.insert(to, b);
                }
            }
            self.users.insert(to, part.row);
            self.split.push(to);
        }
    }

    /// Drops the merged-away users: they are written by the merge, not with the others.
    pub fn drop_losers(&mut self) {
        for m in &self.merges {
            self.users.remove(&m.loser);
        }
    }

    /// Sets each user's peak rank in event time: the current rank unless the user has a
    /// day with negative XP. Then, if this batch only added XP on or after the user's last
    /// active day (live traffic, or a backlog replayed in order), the cumulative XP of
    /// earlier days is unchanged and of later ones rises to the new total, so the peak
    /// is the old one or the new rank. Returns the other dipped users, whose peak must
    /// be recomputed from their ledger and links.
    pub fn rank_peaks(&mut self, rules: &Rules) -> Vec<i64> {
        let non_monotone: Vec<i64> = self
            .users
            .iter()
            .filter(|(_, u)| u.dipped)
            .map(|(uid, _)| *uid)
            .collect();
        for u in self.users.values_mut() {
            u.peak_rank = i16::from(rules.rank_index(u.xp));
        }
        if non_monotone.is_empty() {
            return Vec::new();
        }
        let mut out_of_order: HashSet<i64> = self.survivors_of_losers().into_iter().collect();
        out_of_order.extend(self.relinked.iter().map(|u| follow(&self.redirect, *u)));
        for (&(iid, day), &xp) in &self.added {
            let uid = follow(&self.redirect, self.owner[&iid]);
            let last_day = self
                .before
                .get(&uid)
                .and_then(|b| b.last_ms)
                .map(rules::day_of);
            if xp < 0 || last_day.is_some_and(|last| day < last) {
                out_of_order.insert(uid);
            }
        }
        let (slow, fast): (Vec<i64>, Vec<i64>) = non_monotone
            .into_iter()
            .partition(|uid| out_of_order.contains(uid));
        for uid in fast {
            if let (Some(u), Some(b)) = (self.users.get_mut(&uid), self.before.get(&uid)) {
                u.peak_rank = u.peak_rank.max(b.peak_rank);
            }
        }
        slow
    }

    /// Takes the peaks recomputed from the users' whole history.
    pub fn set_peaks(&mut self, peaks: impl IntoIterator<Item = (i64, i16)>) {
        for (uid, peak) in peaks {
            if let Some(u) = self.users.get_mut(&uid) {
                u.peak_rank = peak;
            }
        }
    }

    /// The users whose rank changed in this batch, by uid: `(uid, old rank, new rank)`.
    pub fn rank_changes(&self, rules: &Rules) -> Vec<(i64, u8, u8)> {
        self.users
            .iter()
            .filter(|(uid, _)| !self.gone.contains(uid))
            .filter_map(|(uid, u)| {
                let old = rules.rank_index(self.before.get(uid)?.xp);
                let new = rules.rank_index(u.xp);
                (old != new).then_some((*uid, old, new))
            })
            .collect()
    }

    /// The users a notice is about: those of `ranked`, then the survivors of merges.
    /// ([`NoticePrefs`] of [`Settlement::notices`]: their preferences.)
    pub fn notified(&self, ranked: &[(i64, u8, u8)]) -> Vec<i64> {
        ranked
            .iter()
            .map(|r| r.0)
            .chain(self.survivors_of_losers())
            .collect()
    }

    /// The outbox rows, `(topic, body)`: a rank notice per change in `ranked`, then a
    /// link notice per merge, each with the identities of its user (`members`) and the
    /// preferences that decide how it is announced (`prefs`).
    pub fn notices(
        &self,
        ranked: &[(i64, u8, u8)],
        members: &HashMap<i64, Vec<WireIdentity>>,
        prefs: &NoticePrefs,
        now: i64,
    ) -> Result<(Vec<&'static str>, Vec<serde_json::Value>), serde_json::Error> {
        let mut topics = Vec::new();
        let mut bodies = Vec::new();
        for &(uid, old_rank, new_rank) in ranked {
            topics.push("rank");
            bodies.push(serde_json::to_value(RankNotice {
                v: 1,
                id: String::new(),
                ts: now,
                uid,
                old_rank,
                new_rank,
                xp: self.users[&uid].xp,
                identities: members.get(&uid).cloned().unwrap_or_default(),
                notify: !prefs.quiet.contains(&uid),
                hidden: prefs.hidden.contains(&uid),
            })?);
        }
        for m in &self.merges {
            let uid = follow(&self.redirect, m.loser);
            topics.push("link");
            bodies.push(serde_json::to_value(LinkNotice {
                v: 1,
                id: String::new(),
                ts: now,
                uid,
                merged_uid: m.loser,
                event: m.event.id.as_str().to_owned(),
                identities: members.get(&uid).cloned().unwrap_or_default(),
            })?);
        }
        Ok((topics, bodies))
    }
}

/// Where a chain of merges (merged-away user → survivor) starting at `uid` ends, after at
/// most 64 steps (a longer chain is not one the apply path makes).
pub(super) fn follow(redirect: &HashMap<i64, i64>, mut uid: i64) -> i64 {
    for _ in 0..64 {
        match redirect.get(&uid) {
            Some(next) => uid = *next,
            None => break,
        }
    }
    uid
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttfd_shared::rules::DAY_MS;
    use ttfd_shared::{EventId, Identity, Proof};

    fn user(xp: i64) -> UserRow {
        UserRow {
            xp,
            peak_rank: 1,
            ..UserRow::default()
        }
    }

    fn link(id: &str, ts: i64, proof: Proof) -> Event {
        Event {
            id: EventId::parse(id).expect("a printable id"),
            ts,
            identity: Identity::new("discord", "1").expect("a valid identity"),
            name: None,
            payload: Payload::Link {
                other: Identity::new("telegram", "2").expect("a valid identity"),
                proof,
                by: None,
            },
        }
    }

    /// Identities 10, 20, 30 owned by users 1, 2, 3.
    fn three_users<'e>() -> Settlement<'e> {
        let mut s = Settlement::new(HashMap::from([(10, 1), (20, 2), (30, 3)]));
        s.users = BTreeMap::from([(1, user(100)), (2, user(200)), (3, user(300))]);
        s
    }

    #[test]
    fn reading_users_follows_merged_away_ones_to_users_not_read_yet() {
        let mut s = Settlement::new(HashMap::from([(10, 1), (11, 2)]));
        assert_eq!(s.owners_to_read(), BTreeSet::from([1, 2]));
        let wanted = s.take_users([(1, None, user(100)), (2, Some(3), user(0))]);
        assert_eq!(wanted, BTreeSet::from([3]));
        assert_eq!(s.moved, HashMap::from([(2, 3)]));
        assert_eq!(s.users.keys().copied().collect::<Vec<_>>(), vec![1]);
        // 3 was merged into 1, which is already read: nothing more to read.
        let wanted = s.take_users([(3, Some(1), user(0))]);
        assert!(wanted.is_empty());
        assert_eq!(s.moved, HashMap::from([(2, 3), (3, 1)]));
    }

    #[test]
    fn owners_move_along_merges_to_the_user_that_has_the_identity_now() {
        let mut s = Settlement::new(HashMap::from([(10, 1), (11, 2), (12, 3)]));
        s.moved = HashMap::from([(2, 3), (3, 1)]);
        let mut changed = s.follow_moved().expect("every chain ends at a live user");
        changed.sort();
        assert_eq!(changed, vec![(11, 1), (12, 1)]);
        assert_eq!(s.owner, HashMap::from([(10, 1), (11, 1), (12, 1)]));
    }

    #[test]
    fn a_chain_of_merges_that_does_not_end_is_an_out_of_date_cache() {
        let mut s = Settlement::new(HashMap::from([(10, 2)]));
        s.moved = HashMap::from([(2, 3), (3, 2)]);
        assert!(s.follow_moved().is_none());
    }

    #[test]
    fn deltas_go_to_the_owner_and_the_users_as_read_are_kept() {
        let mut s = Settlement::new(HashMap::from([(10, 1), (11, 1)]));
        s.users = BTreeMap::from([(
            1,
            UserRow {
                xp: 400,
                peak_rank: 1,
                messages: 3,
                last_ms: Some(5_000),
                first_ms: Some(1_000),
                ..UserRow::default()
            },
        )]);
        let mut a = UserRow {
            messages: 2,
            ..UserRow::default()
        };
        a.saw(7_000);
        let mut b = UserRow {
            games_played: 1,
            games_won: 1,
            ..UserRow::default()
        };
        b.saw(500);
        s.absorb_deltas(&BTreeMap::from([(10, a), (11, b)]))
            .expect("the owner was read");
        let u = &s.users[&1];
        assert_eq!((u.messages, u.games_played, u.games_won), (5, 1, 1));
        assert_eq!((u.first_ms, u.last_ms), (Some(500), Some(7_000)));
        assert_eq!(
            s.before[&1],
            Before {
                xp: 400,
                peak_rank: 1,
                last_ms: Some(5_000)
            }
        );
    }

    #[test]
    fn a_delta_whose_owner_was_not_read_is_contended() {
        let mut s = Settlement::new(HashMap::from([(10, 1)]));
        let err = s
            .absorb_deltas(&BTreeMap::from([(10, user(5))]))
            .expect_err("user 1 is missing");
        assert!(matches!(err, StoreError::Contended));
    }

    #[test]
    fn ledger_rows_pay_message_xp_for_every_minute_of_the_batch() {
        let mut minutes = DayMinutes::default();
        minutes.insert_time(0);
        minutes.insert_time(30_000);
        minutes.insert_time(3 * 60_000);
        let ledger = BTreeMap::from([
            (
                (11, 100),
                LedgerDay {
                    xp: -20,
                    minutes: None,
                    mults: None,
                    counts: UserRow::default(),
                    sources: Sources::default(),
                },
            ),
            (
                (10, 101),
                LedgerDay {
                    xp: 5,
                    minutes: Some(minutes.clone()),
                    mults: None,
                    counts: UserRow {
                        messages: 3,
                        first_ms: Some(0),
                        last_ms: Some(3 * 60_000),
                        ..UserRow::default()
                    },
                    sources: Sources::default(),
                },
            ),
        ]);
        let rows = ledger_rows(&ledger, 10);
        assert_eq!(rows.ids, vec![10, 11]);
        assert_eq!(rows.days, vec![101, 100]);
        assert_eq!(rows.xp, vec![5 + 2 * 10, -20]);
        assert_eq!(rows.minutes, vec![Some(&minutes), None]);
        assert_eq!(rows.counts.messages, vec![3, 0]);
        assert_eq!(rows.counts.last_ms, vec![Some(3 * 60_000), None]);
    }

    #[test]
    fn ledger_gains_go_to_the_owners_and_a_day_below_zero_marks_them() {
        let mut s = three_users();
        s.credit_ledger([
            (10, 100, 50, false),
            (20, 100, -250, true),
            (20, 101, 10, false),
        ]);
        assert_eq!(s.users[&1].xp, 150);
        assert!(!s.users[&1].dipped);
        assert_eq!(s.users[&2].xp, -40);
        assert!(s.users[&2].dipped);
        assert_eq!(
            s.added,
            BTreeMap::from([((10, 100), 50), ((20, 100), -250), ((20, 101), 10)])
        );
    }

    #[test]
    fn links_merge_into_the_smaller_uid_past_earlier_merges() {
        let (e1, e2, e3) = (
            link("e1", 1, Proof::Code),
            link("e2", 2, Proof::Oauth),
            link("e3", 3, Proof::Code),
        );
        let links = [(&e1, 30, 20), (&e2, 20, 10), (&e3, 30, 10)];
        let mut s = three_users();
        s.merge_links(&links, &HashSet::new())
            .expect("every user was read");
        // e3 links two identities that are one user by then.
        assert_eq!(s.losers(), vec![3, 2]);
        assert_eq!(s.survivors_of_losers(), vec![1, 1]);
        assert_eq!(s.merges[0].event.id.as_str(), "e1");
        assert_eq!(s.users[&1].xp, 600);
        s.drop_losers();
        assert_eq!(s.users.keys().copied().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn link_rows_record_every_link_with_its_day_and_proof() {
        let (e1, e2) = (
            link("e1", 3 * DAY_MS + 5, Proof::Import),
            link("e2", -1, Proof::Admin),
        );
        let rows = link_rows(&[(&e1, 10, 20), (&e2, 20, 10)], &HashSet::from(["e2"]));
        assert_eq!(
            rows,
            LinkRows {
                events: vec!["e1", "e2"],
                a: vec![10, 20],
                b: vec![20, 10],
                days: vec![3, -1],
                ts: vec![3 * DAY_MS + 5, -1],
                excluded: vec![false, true],
                proofs: vec!["import", "admin"],
            }
        );
    }

    fn unlink(id: &str, ts: i64) -> Event {
        Event {
            payload: Payload::Unlink {
                other: Identity::new("telegram", "2").expect("a valid identity"),
                reason: "wrong".into(),
                by: None,
            },
            ..link(id, ts, Proof::Code)
        }
    }

    #[test]
    fn a_link_up_to_an_unlink_of_its_pair_stored_or_in_the_batch_does_not_count() {
        let (early, late, cut) = (
            link("early", 5, Proof::Code),
            link("late", 50, Proof::Code),
            unlink("u", 10),
        );
        let links = [(&early, 20, 10), (&late, 10, 20)];
        let none = excluded_links(&links, &HashMap::new(), &[]);
        assert!(none.is_empty());
        let stored = excluded_links(&links, &HashMap::from([((10, 20), 10)]), &[]);
        assert_eq!(
            stored,
            HashSet::from(["early"]),
            "either direction, up to the cut"
        );
        let batch = excluded_links(&links, &HashMap::new(), &[(&cut, 10, 20)]);
        assert_eq!(batch, HashSet::from(["early"]));
        let newest = excluded_links(&links, &HashMap::from([((10, 20), 60)]), &[(&cut, 20, 10)]);
        assert_eq!(
            newest,
            HashSet::from(["early", "late"]),
            "the newest cut wins"
        );

        // An excluded link joins nobody and is no activity.
        let mut s = three_users();
        s.merge_links(
            &[(&early, 10, 20), (&late, 10, 30)],
            &HashSet::from(["early"]),
        )
        .expect("every user was read");
        assert_eq!(s.losers(), vec![3]);
        assert_eq!(s.users[&1].last_ms, Some(50));
        assert_eq!(s.users[&2].last_ms, None);
    }

    /// SPEC 7.4: a user falls apart into the components of the links that count; the
    /// part with the smallest identity keeps the uid; each part's totals are its
    /// identities' counters, ledger and link times.
    #[test]
    fn a_split_recomputes_each_part_from_its_identities() {
        let counters = |messages, first| UserRow {
            messages,
            first_ms: Some(first),
            last_ms: Some(first),
            ..UserRow::default()
        };
        let identities = [(30, 7), (10, 7), (20, 7), (40, 8)];
        // 10-20 still counts (made at 250), 30 stands alone; user 8 is whole.
        let links = [(20, 10, 250)];
        let ledger = [
            (10, 1, 5, counters(1, 100)),
            (20, 1, 7, counters(2, 200)),
            (30, 1, -2, counters(3, 300)),
            (30, 2, 9, UserRow::default()),
            (30, 3, 0, counters(0, 360)),
            (40, 1, 1, counters(4, 400)),
        ];
        let parts = split(&identities, &links, &ledger);
        let of7 = &parts[&7];
        assert_eq!(of7.len(), 2);
        assert_eq!(
            of7[0].identities,
            vec![10, 20],
            "the keeper holds the smallest id"
        );
        assert_eq!(
            (
                of7[0].row.xp,
                of7[0].row.messages,
                of7[0].row.first_ms,
                of7[0].row.last_ms
            ),
            (12, 3, Some(100), Some(250))
        );
        assert_eq!(of7[1].identities, vec![30]);
        assert_eq!((of7[1].row.xp, of7[1].row.dipped), (7, true));
        assert_eq!(
            (of7[1].row.messages, of7[1].row.first_ms, of7[1].row.last_ms),
            (3, Some(300), Some(360)),
            "a day without XP still counts its activity"
        );
        assert_eq!(of7[1].days, BTreeMap::from([(1, -2), (2, 9)]));
        assert_eq!(parts[&8].len(), 1);

        let mut s = Settlement::new(HashMap::new());
        s.before.insert(
            7,
            Before {
                xp: 19,
                peak_rank: 2,
                last_ms: None,
            },
        );
        s.take_split(7, of7.clone(), &[9]);
        assert_eq!(s.split, vec![7, 9]);
        assert_eq!(s.users[&9].xp, 7);
        assert_eq!(s.before[&9].xp, 19, "compared with what it was part of");
        assert_eq!(s.carried, vec![(7, Some(9), 1, -2), (7, Some(9), 2, 9)]);
        s.users.get_mut(&7).expect("kept").first_ms = Some(100);
        let work = s.standing_work([]);
        assert_eq!(work.users, vec![7, 7, 9, 9]);
        assert_eq!(work.xp, vec![2, -9, -2, 9]);
        assert!(work.touched.is_empty(), "both are ranked by their XP");
        assert_eq!(work.seen, vec![7, 9]);
    }

    #[test]
    fn peak_ranks_are_current_unless_a_day_dipped_out_of_order() {
        let rules = Rules::default();
        let day = |d: i64| Some(d * DAY_MS);
        let mut s = Settlement::new(HashMap::from([(10, 1), (20, 2), (30, 3), (40, 4)]));
        let before = |peak_rank, last_ms| Before {
            xp: 0,
            peak_rank,
            last_ms,
        };
        s.before = HashMap::from([
            (1, before(5, day(10))),
            (2, before(5, day(10))),
            (3, before(5, day(10))),
            (4, before(5, day(10))),
        ]);
        let dipped = |xp| UserRow {
            dipped: true,
            ..user(xp)
        };
        // 1 never dipped; 2 dipped but gained only from its last day on (fast path);
        // 3 lost XP; 4 gained on a day before its last one.
        s.users = BTreeMap::from([
            (1, user(1300)),
            (2, dipped(600)),
            (3, dipped(600)),
            (4, dipped(600)),
        ]);
        s.added = BTreeMap::from([((20, 10), 5), ((30, 11), -5), ((40, 9), 5)]);
        let slow = s.rank_peaks(&rules);
        assert_eq!(slow, vec![3, 4]);
        assert_eq!(s.users[&1].peak_rank, 3);
        assert_eq!(s.users[&2].peak_rank, 5);
        s.set_peaks([(3, 4), (4, 6), (9, 7)]);
        assert_eq!(s.users[&3].peak_rank, 4);
        assert_eq!(s.users[&4].peak_rank, 6);
        assert!(!s.users.contains_key(&9));
    }

    #[test]
    fn a_dipped_survivor_of_a_merge_takes_the_slow_path() {
        let e = link("e", 1, Proof::Code);
        let mut s = three_users();
        s.users.insert(
            1,
            UserRow {
                dipped: true,
                ..user(100)
            },
        );
        s.merge_links(&[(&e, 10, 20)], &HashSet::new())
            .expect("both users were read");
        s.drop_losers();
        assert_eq!(s.rank_peaks(&Rules::default()), vec![1]);
    }

    #[test]
    fn rank_changes_compare_the_rank_before_the_batch_with_the_new_one() {
        let rules = Rules::default();
        let mut s = three_users();
        let before = |xp| Before {
            xp,
            peak_rank: 1,
            last_ms: None,
        };
        s.before = HashMap::from([(1, before(450)), (2, before(100)), (3, before(2300))]);
        s.users = BTreeMap::from([(1, user(520)), (2, user(400)), (3, user(1300))]);
        assert_eq!(s.rank_changes(&rules), vec![(1, 1, 2), (3, 4, 3)]);
    }

    #[test]
    fn notices_name_the_user_and_its_identities() {
        let e = link("e9", 1, Proof::Code);
        let mut s = three_users();
        s.merge_links(&[(&e, 30, 10)], &HashSet::new())
            .expect("both users were read");
        s.drop_losers();
        let ranked = vec![(2, 1, 2)];
        assert_eq!(s.notified(&ranked), vec![2, 1]);
        let ids = |p: &str, u: &str| WireIdentity {
            platform: p.to_owned(),
            user: u.to_owned(),
        };
        let members = HashMap::from([
            (1, vec![ids("discord", "1"), ids("telegram", "3")]),
            (2, vec![ids("discord", "2")]),
        ]);
        let (topics, bodies) = s
            .notices(&ranked, &members, &Default::default(), 77)
            .expect("notices encode");
        assert_eq!(topics, vec!["rank", "link"]);
        let rank: RankNotice = serde_json::from_value(bodies[0].clone()).expect("a rank notice");
        assert_eq!(
            rank,
            RankNotice {
                v: 1,
                id: String::new(),
                ts: 77,
                uid: 2,
                old_rank: 1,
                new_rank: 2,
                xp: 200,
                identities: vec![ids("discord", "2")],
                notify: true,
                hidden: false,
            }
        );
        let link: LinkNotice = serde_json::from_value(bodies[1].clone()).expect("a link notice");
        assert_eq!(
            link,
            LinkNotice {
                v: 1,
                id: String::new(),
                ts: 77,
                uid: 1,
                merged_uid: 3,
                event: "e9".to_owned(),
                identities: vec![ids("discord", "1"), ids("telegram", "3")],
            }
        );
    }

    #[test]
    fn a_merge_chain_ends_at_the_last_survivor() {
        let redirect = HashMap::from([(5, 3), (3, 1), (7, 5)]);
        assert_eq!(follow(&redirect, 7), 1);
        assert_eq!(follow(&redirect, 1), 1);
        assert_eq!(follow(&redirect, 9), 9);
    }
}
