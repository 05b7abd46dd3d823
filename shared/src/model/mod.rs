//! The reference model: the state of every unified user as a pure function of a set of
//! events (SPEC 2 and 3).
//!
//! The sync consumers apply events incrementally in PostgreSQL; this module folds the
//! whole set at once and is the answer they must reach, whatever the order, duplicates
//! or replica count. [`peak_ranks`] is shared by both: it is how the database recomputes
//! a peak when a user's history is not monotone.
//!
//! Peak rank in event time. "The highest rank ever held" must not depend on the order
//! in which events arrive, so it is measured in event time at the granularity of UTC
//! days: a user holds, at the close of each day, the rank of their cumulative XP; a link
//! made on a day joins the two users at the close of that day (peak = the higher of the
//! two peaks and the rank of the sum, SPEC 3 "Merge"). The peak is the highest rank held
//! at any close, the current one included. Without negative XP this is simply the
//! current rank.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::Identity;
use crate::rules::{self, Rules};
use crate::seasons::Seasons;
use crate::view::{AuditEntry, Period, Tally};
use crate::wire::{Event, Payload, Proof, WireIdentity};

/// One unified user, as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub identities: BTreeSet<Identity>,
    pub display_name: Option<String>,
    pub xp: i64,
    pub rank: u8,
    pub peak_rank: u8,
    pub coins: i64,
    pub messages: i64,
    pub voice_seconds: i64,
    pub games_played: i64,
    pub games_won: i64,
    /// Event time of the first and last event of the user, Unix ms.
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    /// XP per UTC day (days since the epoch); days whose XP sums to 0 are left out.
    pub ledger: BTreeMap<i32, i64>,
    /// The XP statement's rows: what each platform's identities did and earned per UTC
    /// day; empty tallies are left out.
    pub tallies: BTreeMap<(String, i32), Tally>,
    /// SPEC 7.3: hidden when any identity is; notified unless one said `notify: false`.
    pub hidden: bool,
    pub notify: bool,
}

/// A preference and the `(ts, event id)` of the event that set it (newest wins).
type Pref = Option<(i64, String, bool)>;

fn newer_pref(current: &mut Pref, ts: i64, id: &str, value: Option<bool>) {
    let Some(value) = value else { return };
    if current
        .as_ref()
        .is_none_or(|(t, i, _)| (*t, i.as_str()) < (ts, id))
    {
        *current = Some((ts, id.to_owned(), value));
    }
}

#[derive(Default)]
struct IdentityAcc {
    messages: i64,
    voice_seconds: i64,
    games_played: i64,
    games_won: i64,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    /// Per UTC day: XP by source and what earned it (its `xp` is the day's ledger).
    tallies: BTreeMap<i32, Tally>,
    hidden: Pref,
    notify: Pref,
}

/// What the takings-back of a set of events (SPEC 7.4) exclude: every event of a
/// forgotten identity, and every link or unlink naming it, up to the newest `forget` of
/// it; every `link` between two identities up to the newest `unlink` between them (an
/// unlink that is itself forgotten cuts nothing).
#[derive(Debug, Default)]
pub struct Cuts {
    /// The newest forget's time per identity.
    forgets: HashMap<Identity, i64>,
    /// The newest unlink's time per pair of identities (the smaller first).
    unlinks: HashMap<(Identity, Identity), i64>,
}

impl Cuts {
    /// The cuts the `forget` and `unlink` events of `events` make.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let events: Vec<&Event> = events.into_iter().collect();
        let mut cuts = Cuts::default();
        for ev in &events {
            if let Payload::Forget { .. } = &ev.payload {
                let cut = cuts.forgets.entry(ev.identity.clone()).or_insert(ev.ts);
                *cut = (*cut).max(ev.ts);
            }
        }
        for ev in &events {
            if let Payload::Unlink { other, .. } = &ev.payload
                && !cuts.forgot(ev)
            {
                let cut = cuts
                    .unlinks
                    .entry(pair(&ev.identity, other))
                    .or_insert(ev.ts);
                *cut = (*cut).max(ev.ts);
            }
        }
        cuts
    }

    /// Whether `ev` is erased: an event of a forgotten identity, or a link or unlink
    /// naming one, up to its cut (a `forget` itself included).
    pub fn forgot(&self, ev: &Event) -> bool {
        self.forgot_own(ev)
            || ev
                .payload
                .other()
                .is_some_and(|i| self.cut_covers(i, ev.ts))
    }

    /// Whether `ev` is an event of a forgotten identity up to its cut: its name is
    /// erased too (a link's name is its sender's, who was not forgotten).
    pub fn forgot_own(&self, ev: &Event) -> bool {
        self.cut_covers(&ev.identity, ev.ts)
    }

    fn cut_covers(&self, identity: &Identity, ts: i64) -> bool {
        self.forgets.get(identity).is_some_and(|cut| ts <= *cut)
    }

    /// Whether `ev` counts: not erased, and not a link up to an unlink between its two
    /// identities. (An `unlink` counts as what it cuts, not as activity: see [`fold`].)
    pub fn counts(&self, ev: &Event) -> bool {
        if self.forgot(ev) {
            return false;
        }
        match &ev.payload {
            Payload::Link { other, .. } => self
                .unlinks
                .get(&pair(&ev.identity, other))
                .is_none_or(|cut| ev.ts > *cut),
            _ => true,
        }
    }
}

/// A pair of identities in one order, the smaller first.
fn pair(a: &Identity, b: &Identity) -> (Identity, Identity) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

/// Folds a set of events (duplicates by id count once) into the unified users they
/// describe, sorted by their smallest identity. An excluded event (SPEC 7.4) counts for
/// nothing; an `unlink` is no activity of its identities (it cuts, see [`Cuts`]).
pub fn fold<'a>(rules: &Rules, events: impl IntoIterator<Item = &'a Event>) -> Vec<Profile> {
    let mut seen = HashSet::new();
    let events: Vec<&Event> = events
        .into_iter()
        .filter(|ev| seen.insert(ev.id.clone()))
        .collect();
    let cuts = Cuts::of(events.iter().copied());
    // (identity, UTC minute) of eligible messages -> the largest mult among them.
    let mut buckets: HashMap<(Identity, i64), i64> = HashMap::new();
    let mut acc: BTreeMap<Identity, IdentityAcc> = BTreeMap::new();
    let mut links = Vec::new();
    // (ts, event id, name) of the newest event that named each identity: a name is what
    // the identity is called, from any event, whether it counts or not.
    let mut names: HashMap<&Identity, (i64, &str, String)> = HashMap::new();
    for ev in events {
        if cuts.forgot_own(ev) {
            continue;
        }
        // Names as the wire gate leaves them (an event built in process was not decoded).
        if let Some(name) = ev.name.as_deref().and_then(crate::wire::clean_name) {
            let newest = names
                .entry(&ev.identity)
                .or_insert((ev.ts, ev.id.as_str(), name.clone()));
            if (newest.0, newest.1) < (ev.ts, ev.id.as_str()) {
                *newest = (ev.ts, ev.id.as_str(), name);
            }
        }
        if !cuts.counts(ev) || matches!(ev.payload, Payload::Unlink { .. } | Payload::Forget { .. })
        {
            continue;
        }
        let day = rules::day_of(ev.ts);
        let xp = match &ev.payload {
            Payload::Message { len, .. } => {
                if rules.message_is_eligible(*len) {
                    let top = buckets
                        .entry((ev.identity.clone(), rules::minute_of(ev.ts)))
                        .or_insert(0);
                    *top = (*top).max(ev.payload.mult());
                }
                0
            }
            Payload::Link { other, .. } => {
                acc.entry(other.clone()).or_default();
                links.push((ev.identity.clone(), other.clone(), day));
                0
            }
            other => rules.standalone_xp(other),
        };
        let a = acc.entry(ev.identity.clone()).or_default();
        let tally = a.tallies.entry(day).or_default();
        tally.xp += xp;
        match &ev.payload {
            Payload::Message { .. } => {
                a.messages += 1;
                tally.messages += 1;
            }
            Payload::Voice { seconds, .. } => {
                a.voice_seconds += i64::from(*seconds);
                tally.voice_seconds += i64::from(*seconds);
                tally.voice_xp += xp;
            }
            Payload::VoiceUnpaid { seconds, why, .. } => {
                tally.unpaid_voice.add(*why, i64::from(*seconds));
            }
            Payload::Game { won, .. } => {
                a.games_played += 1;
                a.games_won += i64::from(*won);
                tally.games_played += 1;
                tally.games_xp += xp;
            }
            Payload::Xp { .. } => tally.grants_xp += xp,
            Payload::Prefs { hidden, notify } => {
                newer_pref(&mut a.hidden, ev.ts, ev.id.as_str(), *hidden);
                newer_pref(&mut a.notify, ev.ts, ev.id.as_str(), *notify);
            }
            Payload::Link { .. } | Payload::Unlink { .. } | Payload::Forget { .. } => {}
        }
        a.first_ts = Some(a.first_ts.map_or(ev.ts, |t| t.min(ev.ts)));
        a.last_ts = Some(a.last_ts.map_or(ev.ts, |t| t.max(ev.ts)));
    }

    for ((identity, minute), mult) in buckets {
        let xp = rules.minute_xp(mult);
        if xp != 0 {
            let day = rules::day_of(minute * rules::MINUTE_MS);
            let tally = acc
                .entry(identity)
                .or_default()
                .tallies
                .entry(day)
                .or_default();
            tally.xp += xp;
            tally.messages_xp += xp;
        }
    }

    let ledger_rows: Vec<(Identity, i32, i64)> = acc
        .iter()
        .flat_map(|(id, a)| {
            a.tallies
                .iter()
                .filter(|(_, t)| t.xp != 0)
                .map(move |(d, t)| (id.clone(), *d, t.xp))
        })
        .collect();
    let peaks = peak_ranks(rules, &ledger_rows, &links);

    let mut groups = UnionFind::default();
    for id in acc.keys() {
        groups.find(id);
    }
    for (a, b, _) in &links {
        groups.union(a, b);
    }
    let mut members: BTreeMap<Identity, Vec<Identity>> = BTreeMap::new();
    for id in acc.keys() {
        members.entry(groups.find(id)).or_default().push(id.clone());
    }

    let mut profiles: Vec<Profile> = members
        .into_values()
        .map(|ids| {
            let mut p = Profile {
                identities: ids.iter().cloned().collect(),
                display_name: None,
                xp: 0,
                rank: 1,
                peak_rank: peaks.get(&ids[0]).copied().unwrap_or(1),
                coins: 0,
                messages: 0,
                voice_seconds: 0,
                games_played: 0,
                games_won: 0,
                first_ts: None,
                last_ts: None,
                ledger: BTreeMap::new(),
                tallies: BTreeMap::new(),
                hidden: false,
                notify: true,
            };
            let mut newest_name: Option<&(i64, &str, String)> = None;
            for id in &ids {
                let a = &acc[id];
                p.messages += a.messages;
                p.voice_seconds += a.voice_seconds;
                p.games_played += a.games_played;
                p.games_won += a.games_won;
                p.first_ts = min_opt(p.first_ts, a.first_ts);
                p.last_ts = a.last_ts.max(p.last_ts);
                for (d, t) in &a.tallies {
                    *p.ledger.entry(*d).or_default() += t.xp;
                    *p.tallies
                        .entry((id.platform.as_str().to_owned(), *d))
                        .or_default() += t;
                }
                p.hidden |= a.hidden.as_ref().is_some_and(|h| h.2);
                p.notify &= a.notify.as_ref().is_none_or(|n| n.2);
                if let Some(n) = names.get(id)
                    && newest_name.is_none_or(|m| (m.0, m.1) < (n.0, n.1))
                {
                    newest_name = Some(n);
                }
            }
            p.ledger.retain(|_, x| *x != 0);
            p.tallies.retain(|_, t| !t.is_empty());
            p.xp = p.ledger.values().sum();
            p.rank = rules.rank_index(p.xp);
            p.coins = rules.coins_for_peak(p.peak_rank);
            p.display_name = newest_name.map(|n| n.2.clone());
            p
        })
        .collect();
    profiles.sort_by(|a, b| a.identities.first().cmp(&b.identities.first()));
    profiles
}

/// The audit log of a set of events (SPEC 7.1): every `xp` event, every link an
/// operator made (proof `admin`) and every `unlink` (SPEC 7.4), each once, newest first
/// (by event time, then by the larger id).
pub fn audit<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<AuditEntry> {
    let mut seen = HashSet::new();
    let events: Vec<&Event> = events.into_iter().collect();
    let cuts = Cuts::of(events.iter().copied());
    let mut entries: Vec<AuditEntry> = events
        .into_iter()
        .filter(|ev| !cuts.forgot(ev))
        .filter(|ev| match &ev.payload {
            Payload::Xp { .. } | Payload::Unlink { .. } => true,
            Payload::Link { proof, .. } => *proof == Proof::Admin,
            _ => false,
        })
        .filter(|ev| seen.insert(ev.id.clone()))
        .map(|ev| {
            let (amount, reason, other) = match &ev.payload {
                Payload::Xp { amount, reason, .. } => (Some(*amount), Some(reason.clone()), None),
                Payload::Link { other, .. } => (None, None, Some(WireIdentity::from(other))),
                Payload::Unlink { other, reason, .. } => {
                    (None, Some(reason.clone()), Some(WireIdentity::from(other)))
                }
                _ => (None, None, None),
            };
            AuditEntry {
                event_id: ev.id.as_str().to_owned(),
                ts: ev.ts,
                at: crate::view::rfc3339(ev.ts).unwrap_or_default(),
                kind: ev.kind().to_owned(),
                member: WireIdentity::from(&ev.identity),
                other,
                amount,
                reason,
                by: ev.payload.by().map(WireIdentity::from),
            }
        })
        .collect();
    entries.sort_by(|a, b| (b.ts, &b.event_id).cmp(&(a.ts, &a.event_id)));
    entries
}

/// The leaderboard of the period with standings key `key` (`view::Period::key`): each
/// ranked user with their XP in it, most XP first. All time ranks every user; any other
/// period (a week, a month, a season of `seasons`) the users whose XP in it is not zero;
/// a hidden user (SPEC 7.3) is in none, and the others close up. Ties are the
/// database's to break (by uid, an id this model does not have); here they come by
/// smallest identity.
pub fn standings<'p>(
    profiles: &'p [Profile],
    key: &str,
    seasons: &Seasons,
) -> Vec<(&'p Profile, i64)> {
    let mut rows: Vec<(&Profile, i64)> = profiles
        .iter()
        .filter(|p| !p.hidden)
        .filter_map(|p| {
            if key == "all" {
                return Some((p, p.xp));
            }
            let xp: i64 = p
                .ledger
                .iter()
                .filter(|(day, _)| period_keys(**day, seasons).iter().any(|k| k == key))
                .map(|(_, xp)| xp)
                .sum();
            (xp != 0).then_some((p, xp))
        })
        .collect();
    rows.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| a.0.identities.first().cmp(&b.0.identities.first()))
    });
    rows
}

/// The standings keys, besides `all`, that XP of UTC day `day` counts in: its ISO week,
/// its month and its season if `seasons` has one that day.
pub fn period_keys(day: i32, seasons: &Seasons) -> Vec<String> {
    let date = rules::date_of_day(day);
    [Period::Week, Period::Month, Period::Season]
        .into_iter()
        .filter_map(|p| p.key(date, seasons))
        .collect()
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The peak rank of every identity's final user, in event time (see the module docs).
///
/// `ledger` holds XP per identity and day, `links` the links with the day they were
/// made; every identity named in either is a member.
pub fn peak_ranks<K: Ord + Clone>(
    rules: &Rules,
    ledger: &[(K, i32, i64)],
    links: &[(K, K, i32)],
) -> BTreeMap<K, u8> {
    /// XP per identity and the links made, of one day.
    type Day<'k, K> = (Vec<(&'k K, i64)>, Vec<(&'k K, &'k K)>);
    let mut days: BTreeMap<i32, Day<K>> = BTreeMap::new();
    for (k, day, xp) in ledger {
        days.entry(*day).or_default().0.push((k, *xp));
    }
    for (a, b, day) in links {
        days.entry(*day).or_default().1.push((a, b));
    }
    let mut groups: UnionFind<K> = UnionFind::default();
    // Per root: (xp, peak).
    let mut state: BTreeMap<K, (i64, u8)> = BTreeMap::new();
    for (xps, joins) in days.values() {
        let mut touched = BTreeSet::new();
        for &(k, xp) in xps {
            let root = groups.find(k);
            state.entry(root.clone()).or_insert((0, 1)).0 += xp;
            touched.insert(root);
        }
        for &(a, b) in joins {
            let (ra, rb) = (groups.find(a), groups.find(b));
            if ra == rb {
                continue;
            }
            let sa = state.remove(&ra).unwrap_or((0, 1));
            let sb = state.remove(&rb).unwrap_or((0, 1));
            let root = groups.union(a, b);
            state.insert(root.clone(), (sa.0 + sb.0, sa.1.max(sb.1)));
            touched.remove(&ra);
            touched.remove(&rb);
            touched.insert(root);
        }
        for root in touched {
            if let Some(s) = state.get_mut(&root) {
                s.1 = s.1.max(rules.rank_index(s.0));
            }
        }
    }
    let keys: BTreeSet<&K> = ledger
        .iter()
        .map(|(k, _, _)| k)
        .chain(links.iter().flat_map(|(a, b, _)| [a, b]))
        .collect();
    keys.into_iter()
        .map(|k| {
            let root = groups.find(k);
            (k.clone(), state.get(&root).map_or(1, |s| s.1))
        })
        .collect()
}

/// A union-find whose representative is the smallest member, so results never depend
/// on the order of unions.
struct UnionFind<K> {
    parent: BTreeMap<K, K>,
}

impl<K> Default for UnionFind<K> {
    fn default() -> Self {
        Self {
            parent: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> UnionFind<K> {
    fn find(&mut self, k: &K) -> K {
        let mut root = k.clone();
        while let Some(p) = self.parent.get(&root) {
            if *p == root {
                break;
            }
            root = p.clone();
        }
        self.parent
            .entry(root.clone())
            .or_insert_with(|| root.clone());
        // Path compression.
        let mut cur = k.clone();
        while cur != root {
            let next = self
                .parent
                .insert(cur.clone(), root.clone())
                .unwrap_or(root.clone());
            cur = next;
        }
        root
    }

    fn union(&mut self, a: &K, b: &K) -> K {
        let (ra, rb) = (self.find(a), self.find(b));
        let (small, big) = if ra <= rb { (ra, rb) } else { (rb, ra) };
        self.parent.insert(big, small.clone());
        small
    }
}

#[cfg(test)]
mod tests;
