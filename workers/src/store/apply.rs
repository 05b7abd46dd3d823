//! The batch apply path: a batch of valid events becomes one transaction.
//!
//! Idempotent and order-independent by construction (SPEC 2):
//! - an event id is claimed in `processed_events` in the same transaction, so a batch
//!   that commits applies each event once, and one that rolls back applies nothing;
//! - XP facts are keyed so that their union does not depend on order: message XP by
//!   `(identity, minute)` bucket (a bit of the identity's ledger row for the day, see
//!   [`super::minutes`]), the ledger by `(identity, day)`, names by the newest
//!   `(ts, id)`, merges by the final partition (the survivor is the smaller uid);
//! - the peak rank is recomputed from event-time facts (see `ttfd_shared::model`).
//!
//! Concurrency: a batch transaction has two phases.
//! 1. Claims: rows keyed by event id, which concurrent batches rarely share; locks
//!    taken in sorted key order.
//! 2. Settle: everything keyed by user (owners, users, ledger, links, merges, outbox),
//!    under the *settle lock*, a transaction-level advisory lock per schema, until
//!    commit. The most active users are in nearly every batch, so these rows serialize
//!    concurrent batches whatever the locking; one lock makes that explicit and cheap:
//!    no lock waits mid-statement, no deadlocks, and no merge by another replica
//!    between reading owners and writing users. Every write to users, identity
//!    ownership, the ledger and links happens in this phase.
//!
//! While one replica settles, the others decode, claim and fold. Display names
//! are written after commit, in a statement of their own, for every event of the batch
//! (also the duplicates): newest wins, so writing a name twice changes nothing, and a
//! crash between the commit and that statement is repaired by the redelivery.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;

use sqlx::{Postgres, Transaction};
use tracing::instrument;
use ttfd_shared::model::peak_ranks;
use ttfd_shared::rules;
use ttfd_shared::wire::Proof;
use ttfd_shared::wire::WireIdentity;
use ttfd_shared::{Event, Payload};

use super::forgotten::{BatchCuts, Forgotten};
use super::minutes::{self, DayMinutes, MinuteMults};
use super::settle::{
    CountedDay, Facts, LedgerDay, LedgerRows, LinkRows, NoticePrefs, Settlement, UserRow,
    excluded_links, follow, ledger_rows, link_rows, split,
};
use super::{Generation, Store, StoreError};
use crate::now_ms;

/// The identities a batch's unlinks moved to new users, with those users (`None`: it
/// moved none).
type Split = Option<Vec<(i64, i64)>>;

/// A stream message refused by validation, counted once per stream sequence.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message's sequence in the events stream: counted once per sequence.
    pub stream_seq: u64,
    pub platform: String,
    pub kind: String,
    pub code: &'static str,
}

/// What a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub applied: usize,
    pub duplicates: usize,
    pub rank_changes: usize,
    pub merges: usize,
}

/// Advisory lock class of the settle lock ("TTFD"); the key is the schema's name hash,
/// so that `ttfd rebuild`, applying into a schema of its own, does not wait for it.
const SETTLE_LOCK_CLASS: i32 = 0x5454_4644;

/// The ledger's statement columns (migration 17) as both upserts write them: the
/// unnest aliases `x` (the row's XP), `s1..s3` (voice, games, grants) and `u1..u4`
/// (unpaid voice, in `Unpaid::ALL`'s order); message XP is the rest of `x`.
macro_rules! statement_columns {
    () => {
        "xp_messages, xp_voice, xp_games, xp_grants, unpaid_afk, unpaid_deafened, \
         unpaid_muted, unpaid_alone"
    };
}

macro_rules! statement_values {
    () => {
        "x - s1 - s2 - s3, s1, s2, s3, u1, u2, u3, u4"
    };
}

/// The counters, activity times and statement columns (but message XP, which each
/// upsert computes its own way) of a conflicting row: what the batch adds.
macro_rules! statement_sums {
    () => {
        "messages = l.messages + excluded.messages,
         voice_seconds = l.voice_seconds + excluded.voice_seconds,
         games_played = l.games_played + excluded.games_played,
         games_won = l.games_won + excluded.games_won,
         first_ms = least(l.first_ms, excluded.first_ms),
         last_ms = greatest(l.last_ms, excluded.last_ms),
         xp_voice = l.xp_voice + excluded.xp_voice,
         xp_games = l.xp_games + excluded.xp_games,
         xp_grants = l.xp_grants + excluded.xp_grants,
         unpaid_afk = l.unpaid_afk + excluded.unpaid_afk,
         unpaid_deafened = l.unpaid_deafened + excluded.unpaid_deafened,
         unpaid_muted = l.unpaid_muted + excluded.unpaid_muted,
         unpaid_alone = l.unpaid_alone + excluded.unpaid_alone"
    };
}

impl Store {
    /// Applies a batch of valid events in one transaction. Events already applied (by
    /// id) are skipped and counted as duplicates.
    #[instrument(skip_all, fields(events = events.len()))]
    pub async fn apply(&self, events: &[Event]) -> Result<Applied, StoreError> {
        self.apply_batch(events, None).await.map(|(a, _)| a)
    }

    /// Applies an erasure's events again (SPEC 7.4, `privacy::erase_pending`): `events`
    /// are the `forget` itself and the identity's later events (and links naming it),
    /// applied whether or not they were before, in one transaction that also removes the
    /// erasure's work row `work`: the forget wipes the identity, the later events start
    /// it over, and a crash repeats nothing. An identity left with nothing goes. `false`
    /// when another replica did it first.
    pub async fn apply_again(
        &self,
        events: &[Event],
        work: &str,
        identity: &ttfd_shared::Identity,
    ) -> Result<bool, StoreError> {
        let (_, done) = self.apply_batch(events, Some((work, identity))).await?;
        Ok(done)
    }

    async fn apply_batch(
        &self,
        events: &[Event],
        again: Option<(&str, &ttfd_shared::Identity)>,
    ) -> Result<(Applied, bool), StoreError> {
        let forgotten = self.forgotten().await?;
        let identity = self.identities_of(events).await?;
        let mut events: Vec<&Event> = events.iter().collect();
        events.sort_by(|a, b| a.id.cmp(&b.id));
        events.dedup_by(|a, b| a.id == b.id);
        // SPEC 7.4: an erased event is claimed like any other and counts for nothing,
        // its name included.
        let cuts = BatchCuts::new(&forgotten, &events);
        let names = newest_names(
            events.iter().copied().filter(|e| !cuts.erases_own(e)),
            &identity,
        );
        let (mut tx, fresh) = match again {
            None => self.claim(&events).await?,
            Some(_) => {
                // Claimed anew: whatever applied them before is wiped by the forget.
                let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM processed_events WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO processed_events (id) SELECT unnest($1::text[])")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                (tx, None)
            }
        };
        let (outcome, split) = self
            .apply_in(&mut tx, events, fresh, identity, &cuts, forgotten.epoch)
            .await?;
        if let Some((work, erased)) = again {
            let done = sqlx::query("DELETE FROM erasure_work WHERE event_id = $1")
                .bind(work)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if done == 0 {
                tx.rollback().await?;
                return Ok((outcome, false));
            }
            // Nothing after the cut: not even the identity's row stays.
            let gone: Option<i64> = sqlx::query_scalar(
                "DELETE FROM identities i
                 WHERE i.platform = $1 AND i.external_id = $2
                   AND NOT EXISTS (SELECT 1 FROM xp_ledger l WHERE l.identity_id = i.id)
                   AND NOT EXISTS (SELECT 1 FROM links k
                                   WHERE k.identity_a = i.id OR k.identity_b = i.id)
                   AND NOT EXISTS (SELECT 1 FROM unlinks k
                                   WHERE k.identity_a = i.id OR k.identity_b = i.id)
                   AND NOT EXISTS (SELECT 1 FROM audit a
                                   WHERE a.identity_id = i.id OR a.other_id = i.id)
                   AND NOT EXISTS (SELECT 1 FROM identity_prefs p WHERE p.identity_id = i.id)
                   AND EXISTS (SELECT 1 FROM users u
                               WHERE u.id = i.user_id AND u.first_event_ms IS NULL)
                 RETURNING user_id",
            )
            .bind(erased.platform.as_str())
            .bind(erased.user.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(user) = gone {
                sqlx::query(
                    "DELETE FROM users u WHERE u.id = $1
                       AND NOT EXISTS (SELECT 1 FROM identities WHERE user_id = u.id)
                       AND NOT EXISTS (SELECT 1 FROM users m WHERE m.merged_into = u.id)",
                )
                .bind(user)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        if let Some(moved) = split {
            // This batch moved the owner epoch, under the settle lock: its cache knows
            // the owners it moved, and stays valid.
            self.identities.split(moved);
        }
        if again.is_some() {
            // An identity row may have gone: read identities afresh.
            let _ = self.identities.stale();
        }
        self.write_names(&names).await?;
        Ok((outcome, true))
    }

    /// The forgotten identities (SPEC 7.4) as cached, read with the owner epoch when the
    /// cache has none (every forget moves the epoch, which the settle phase checks).
    async fn forgotten(&self) -> Result<Forgotten, StoreError> {
        if let Some(f) = self.identities.forgotten() {
            return Ok(f);
        }
        let rows: Vec<(i64, Option<Vec<u8>>, Option<i64>)> = sqlx::query_as(
            "SELECT e.n, f.identity_hash, f.cut_ms FROM owner_epoch e LEFT JOIN forgotten f ON true",
        )
        .fetch_all(&self.pool)
        .await?;
        let epoch = rows.first().map_or(0, |r| r.0);
        let f = Forgotten::new(
            epoch,
            rows.into_iter().filter_map(|(_, h, cut)| Some((h?, cut?))),
        );
        self.identities.set_forgotten(f.clone());
        Ok(f)
    }

    /// Step 1: opens the batch transaction and claims the events' ids (sorted, distinct)
    /// in it. Returns the ids nobody had claimed before when some were taken (a
    /// redelivery, a replay), `None` when all were free.
    ///
    /// Optimistically a plain insert: `ON CONFLICT DO NOTHING` inserts speculatively,
    /// which costs about 40% more and is needed only when an id is taken. A taken id
    /// fails the plain insert; the batch then starts over with the careful claim, and so
    /// do the next batches until one finds no id taken. A duplicate in flight on another
    /// replica makes either insert wait for that transaction: claimed once either way.
    async fn claim(
        &self,
        events: &[&Event],
    ) -> Result<(Transaction<'static, Postgres>, Option<Vec<String>>), StoreError> {
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        if !self.careful_claims.load(Ordering::Relaxed) {
            let mut tx = self.pool.begin().await?;
            let claimed = sqlx::query(
                "INSERT INTO processed_events (id)
                 SELECT id FROM unnest($1::text[]) AS t(id) ORDER BY id",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await;
            match claimed {
                Ok(_) => return Ok((tx, None)),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    tx.rollback().await?;
                    self.careful_claims.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut tx = self.pool.begin().await?;
        let fresh: Option<Vec<String>> = sqlx::query_scalar(
            "WITH claimed AS (
                 INSERT INTO processed_events (id) SELECT id FROM unnest($1::text[]) AS t(id)
                 ORDER BY id ON CONFLICT DO NOTHING RETURNING id)
             SELECT CASE WHEN count(*) < $2 THEN coalesce(array_agg(id), '{}') END
             FROM claimed",
        )
        .bind(&ids)
        .bind(i64::try_from(ids.len()).unwrap_or(i64::MAX))
        .fetch_one(&mut *tx)
        .await?;
        self.careful_claims
            .store(fresh.is_some(), Ordering::Relaxed);
        Ok((tx, fresh))
    }

    /// Display names: the newest `(ts, id)` wins, whatever arrives first. Rows in
    /// identity order, so concurrent writers cannot deadlock.
    async fn write_names(
        &self,
        names: &BTreeMap<i64, (i64, &str, String)>,
    ) -> Result<(), StoreError> {
        if names.is_empty() {
            return Ok(());
        }
        let n_ids: Vec<i64> = names.keys().copied().collect();
        let n_ts: Vec<i64> = names.values().map(|n| n.0).collect();
        let n_events: Vec<&str> = names.values().map(|n| n.1).collect();
        let n_names: Vec<&str> = names.values().map(|n| n.2.as_str()).collect();
        sqlx::query(
            "INSERT INTO identity_names AS n (identity_id, name_ms, name_event, name)
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[]) ORDER BY 1
             ON CONFLICT (identity_id) DO UPDATE
             SET name = excluded.name, name_ms = excluded.name_ms, name_event = excluded.name_event
             WHERE (n.name_ms, n.name_event) < (excluded.name_ms, excluded.name_event)",
        )
        .bind(&n_ids)
        .bind(&n_ts)
        .bind(&n_events)
        .bind(&n_names)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Step 0, before the batch transaction: the id of every identity the events name,
    /// creating the missing ones (each with a user of its own) in short transactions of
    /// their own. Replicas meeting the same new identity then wait for each other only
    /// for that statement, not for each other's whole batch. Ids and owners go to the
    /// process's cache (`IdentityCache`), which the settle phase checks. An identity
    /// whose batch later fails stays, with an empty user, which reads ignore.
    async fn identities_of<'e>(
        &self,
        events: &'e [Event],
    ) -> Result<HashMap<(&'e str, &'e str), i64>, StoreError> {
        let mut keys: BTreeSet<(&str, &str)> = BTreeSet::new();
        for e in events {
            keys.insert((e.identity.platform.as_str(), e.identity.user.as_str()));
            if let Some(other) = e.payload.other() {
                keys.insert((other.platform.as_str(), other.user.as_str()));
            }
        }
        let mut identity: HashMap<(&str, &str), i64> = self.identities.lookup(&keys);
        let missing: Vec<(&str, &str)> = keys
            .iter()
            .filter(|k| !identity.contains_key(*k))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(identity);
        }
        let (platforms, users): (Vec<&str>, Vec<&str>) = missing.iter().copied().unzip();
        let mut found: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "WITH input AS (
                 SELECT p, u FROM unnest($1::text[], $2::text[]) AS t(p, u) ORDER BY p, u),
             created AS (
                 INSERT INTO identities (platform, external_id, user_id)
                 SELECT p, u, nextval('users_id_seq') FROM input
                 WHERE NOT EXISTS (SELECT 1 FROM identities i
                                   WHERE i.platform = input.p AND i.external_id = input.u)
                 ON CONFLICT (platform, external_id) DO NOTHING
                 RETURNING id, platform, external_id, user_id),
             new_users AS (INSERT INTO users (id) SELECT user_id FROM created)
             SELECT id, platform, external_id, user_id FROM created
             UNION ALL
             SELECT i.id, i.platform, i.external_id, i.user_id FROM identities i
             JOIN input ON i.platform = input.p AND i.external_id = input.u",
        )
        .bind(&platforms)
        .bind(&users)
        .fetch_all(&self.pool)
        .await?;
        let known: HashSet<(&str, &str)> = found
            .iter()
            .map(|(_, p, u, _)| (p.as_str(), u.as_str()))
            .collect();
        let (late_p, late_u): (Vec<&str>, Vec<&str>) = missing
            .iter()
            .filter(|k| !known.contains(*k))
            .copied()
            .unzip();
        if !late_p.is_empty() {
            // Rows another replica committed while this statement waited on them are
            // not in its snapshot; a new statement sees them.
            let late: Vec<(i64, String, String, i64)> = sqlx::query_as(
                "SELECT i.id, i.platform, i.external_id, i.user_id FROM identities i
                 JOIN unnest($1::text[], $2::text[]) AS t(p, u)
                   ON i.platform = t.p AND i.external_id = t.u",
            )
            .bind(&late_p)
            .bind(&late_u)
            .fetch_all(&self.pool)
            .await?;
            found.extend(late);
        }
        let by_key: HashMap<(&str, &str), i64> = found
            .iter()
            .map(|(iid, p, u, _)| ((p.as_str(), u.as_str()), *iid))
            .collect();
        for k in &missing {
            let iid = by_key.get(k).ok_or(StoreError::Contended)?;
            identity.insert(*k, *iid);
        }
        self.identities.remember(&found);
        Ok(identity)
    }

    async fn apply_in(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        mut events: Vec<&Event>,
        fresh: Option<Vec<String>>,
        identity: HashMap<(&str, &str), i64>,
        cuts: &BatchCuts<'_>,
        forgotten_epoch: i64,
    ) -> Result<(Applied, Split), StoreError> {
        let rules = &*self.rules;
        // (Steps 0 and 1, the identities and the claims, ran before: `identities_of`,
        // `claim`.) Only the events nobody applied before go on.
        let total = events.len();
        if let Some(fresh) = fresh {
            let fresh: HashSet<String> = fresh.into_iter().collect();
            events.retain(|e| fresh.contains(e.id.as_str()));
        }
        let outcome = Applied {
            applied: events.len(),
            duplicates: total - events.len(),
            ..Applied::default()
        };
        // SPEC 7.4: the batch's forgets wipe their identities; erased events count for
        // nothing (they stay claimed).
        let forgets: Vec<&Event> = events
            .iter()
            .copied()
            .filter(|e| matches!(e.payload, Payload::Forget { .. }))
            .collect();
        events.retain(|e| !cuts.erases(e));
        if events.is_empty() && forgets.is_empty() {
            return Ok((outcome, None));
        }

        // Only the identities of fresh events take part (and are locked) from here on.
        let mut identity = identity;
        let named: HashSet<(&str, &str)> = events
            .iter()
            .chain(&forgets)
            .flat_map(|e| {
                std::iter::once(&e.identity)
                    .chain(e.payload.other())
                    .map(|i| (i.platform.as_str(), i.user.as_str()))
            })
            .collect();
        identity.retain(|k, _| named.contains(k));
        let iids: Vec<i64> = identity.values().copied().collect();

        let iid_of = |i: &ttfd_shared::Identity| -> Result<i64, StoreError> {
            identity
                .get(&(i.platform.as_str(), i.user.as_str()))
                .copied()
                .ok_or(StoreError::Contended)
        };

        // 2. Fold the events into per-identity deltas and facts: XP and message minutes
        // per identity and day. No user row is locked yet.
        let mut deltas: BTreeMap<i64, UserRow> = BTreeMap::new();
        let mut ledger: BTreeMap<(i64, i32), LedgerDay> = BTreeMap::new();
        let mut links: Vec<(&Event, i64, i64)> = Vec::new();
        let mut audit: Vec<(&Event, i64, Option<i64>)> = Vec::new();
        let mut prefs: BTreeMap<i64, PrefsRow> = BTreeMap::new();
        let mut unlinks: Vec<(&Event, i64, i64)> = Vec::new();
        let forgets: Vec<(&Event, i64)> = forgets
            .into_iter()
            .map(|e| iid_of(&e.identity).map(|iid| (e, iid)))
            .collect::<Result<_, _>>()?;
        for e in &events {
            let iid = iid_of(&e.identity)?;
            // What the event counts for its identity, on the user and on the day's
            // ledger row. A link is activity only while it counts, which the settle
            // phase decides (`Settlement::merge_links`); an unlink is no activity
            // (SPEC 7.4).
            let mut one = UserRow::default();
            let activity = !matches!(e.payload, Payload::Link { .. } | Payload::Unlink { .. });
            if activity {
                one.saw(e.ts);
            }
            let xp = rules.standalone_xp(&e.payload);
            let eligible = match &e.payload {
                Payload::Message { len, .. } => {
                    one.messages = 1;
                    rules.message_is_eligible(*len)
                }
                Payload::Voice { seconds, .. } => {
                    one.voice_seconds = i64::from(*seconds);
                    false
                }
                Payload::VoiceUnpaid { .. } => false,
                Payload::Game { won, .. } => {
                    one.games_played = 1;
                    one.games_won = i64::from(*won);
                    false
                }
                Payload::Xp { .. } => {
                    audit.push((e, iid, None));
                    false
                }
                Payload::Prefs { hidden, notify } => {
                    let row = prefs.entry(iid).or_default();
                    row.hidden.raise(e, *hidden);
                    row.notify.raise(e, *notify);
                    false
                }
                Payload::Link { other, proof, .. } => {
                    let other = iid_of(other)?;
                    links.push((e, iid, other));
                    if *proof == Proof::Admin {
                        audit.push((e, iid, Some(other)));
                    }
                    false
                }
                Payload::Unlink { other, .. } => {
                    let other = iid_of(other)?;
                    unlinks.push((e, iid, other));
                    audit.push((e, iid, Some(other)));
                    false
                }
                // Erased, hence filtered out above; taken from `forgets`.
                Payload::Forget { .. } => false,
            };
            deltas.entry(iid).or_default().absorb(&one);
            if xp != 0 || eligible || activity {
                let day = ledger.entry((iid, rules::day_of(e.ts))).or_default();
                day.counts.absorb(&one);
                day.xp += xp;
                day.sources.add(&e.payload, xp);
                match u16::try_from(e.payload.mult()) {
                    _ if !eligible => {}
                    Ok(100) => day
                        .minutes
                        .get_or_insert_with(DayMinutes::default)
                        .insert_time(e.ts),
                    Ok(mult) => day
                        .mults
                        .get_or_insert_with(MinuteMults::default)
                        .raise(minutes::minute_of_day(e.ts), mult),
                    Err(_) => {}
                }
            }
        }

        ledger.retain(|_, day| !day.is_empty());
        links.sort_by_key(|(e, _, _)| (e.ts, &e.id));
        let facts = Facts {
            iids,
            deltas,
            ledger,
            links,
            audit,
            prefs,
            unlinks,
            forgets,
        };
        let (identities, users): (i64, i64) = sqlx::query_as(
            "SELECT pg_relation_filenode('identities')::int8, pg_relation_filenode('users')::int8
             FROM (SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))) AS settle",
        )
        .bind(SETTLE_LOCK_CLASS)
        .fetch_one(&mut **tx)
        .await?;
        // A statement of its own, whose snapshot follows the lock: a split committed while
        // this batch waited for it is seen.
        let epoch: i64 = sqlx::query_scalar("SELECT n FROM owner_epoch")
            .fetch_one(&mut **tx)
            .await?;
        let generation: Generation = (identities, users, epoch);
        if !self.identities.same_generation(generation) {
            return Err(StoreError::StaleCache);
        }
        if epoch != forgotten_epoch {
            // A forget committed since the forgotten identities were read: read again.
            return Err(self.identities.stale());
        }
        self.settle_users(tx, &facts, outcome).await
    }

    /// Steps 3 to 9, under the settle lock: the users, then everything that needs them.
    /// The decisions are [`Settlement`]'s; this reads and writes around them.
    async fn settle_users(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        facts: &Facts<'_>,
        mut outcome: Applied,
    ) -> Result<(Applied, Split), StoreError> {
        let rules = &*self.rules;
        // 3. The owners of the identities, then those users. Under the settle lock
        // neither changes until commit. An owner cached from an earlier read that has
        // since been merged away leads, by `merged_into`, to the user that has its
        // identities now.
        let mut settlement = Settlement::new(self.read_owners(tx, &facts.iids).await?);
        self.read_users(tx, &mut settlement).await?;
        let changed = settlement
            .follow_moved()
            .ok_or_else(|| self.identities.stale())?;
        if !settlement.moved.is_empty() {
            self.identities.set_owners(changed);
        }
        let mut moved = Vec::new();
        if !facts.forgets.is_empty() {
            moved = self.wipe(tx, &facts.forgets, &mut settlement).await?;
        }
        settlement.absorb_deltas(&facts.deltas)?;

        // 4. The ledger, and the users' XP from it: each day's XP plus message XP for
        // its minutes not already on the row. The upsert computes what it added to each
        // row from the row it locked (`added`); a day that ends below zero marks its user
        // for the slow peak path.
        if !facts.ledger.is_empty() {
            let rows = ledger_rows(&facts.ledger, rules.message_xp);
            let mut written = Vec::with_capacity(facts.ledger.len());
            if !rows.ids.is_empty() {
                written = self.write_ledger(tx, &rows).await?;
            }
            // The rows the bitmap statement left: multiplied minutes in the batch or on
            // the row.
            if written.len() < facts.ledger.len() {
                let done: HashSet<(i64, i32)> = written.iter().map(|w| (w.0, w.1)).collect();
                let left: Vec<_> = facts
                    .ledger
                    .iter()
                    .filter(|(key, _)| !done.contains(key))
                    .collect();
                written.extend(self.write_multiplied_ledger(tx, &left).await?);
            }
            settlement.credit_ledger(written);
        }

        // 5. Links: record each, merge users that differ (the smaller uid survives).
        // A link up to an unlink between its identities (SPEC 7.4) is recorded as not
        // counting, and joins nobody.
        let excluded = if facts.links.is_empty() {
            HashSet::new()
        } else {
            let stored = self.unlink_cuts(tx, &facts.links).await?;
            excluded_links(&facts.links, &stored, &facts.unlinks)
        };
        settlement.merge_links(&facts.links, &excluded)?;
        if !facts.links.is_empty() {
            self.write_links(tx, &link_rows(&facts.links, &excluded))
                .await?;
        }
        if !facts.audit.is_empty() {
            self.write_audit(tx, &facts.audit).await?;
        }
        if !facts.prefs.is_empty() {
            self.write_prefs(tx, &facts.prefs).await?;
        }
        let losers = settlement.losers();
        if !losers.is_empty() {
            self.write_merges(tx, &losers, &settlement.survivors_of_losers())
                .await?;
            outcome.merges = settlement.merges.len();
        }
        settlement.drop_losers();
        // Unlinks (SPEC 7.4): the links they take back stop counting, and each user
        // that had one is recomputed from its identities, split if they fell apart.
        let mut recompute: Vec<i64> = settlement.recompute.iter().copied().collect();
        if !facts.unlinks.is_empty() {
            recompute.extend(self.apply_unlinks(tx, &facts.unlinks).await?);
        }
        if !recompute.is_empty() {
            recompute.sort_unstable();
            recompute.dedup();
            let recompute: Vec<i64> = recompute
                .into_iter()
                .map(|u| follow(&settlement.redirect, u))
                .collect();
            moved.extend(
                self.recompute_users(tx, &recompute, &mut settlement)
                    .await?,
            );
        }
        // Identities moved to other live users (a split, a forget): every replica's
        // owner cache starts over, but this one's after commit (`Store::apply`).
        let split = if moved.is_empty() && facts.forgets.is_empty() {
            None
        } else {
            sqlx::query("UPDATE owner_epoch SET n = n + 1")
                .execute(&mut **tx)
                .await?;
            Some(moved)
        };

        // 6. Peak rank, in event time (see `Settlement::rank_peaks`): a user whose
        // cumulative XP may have been higher earlier is recomputed from the ledger and
        // links, and so is every user an unlink recomputed.
        let mut slow = settlement.rank_peaks(rules);
        slow.extend(settlement.split.iter().copied());
        slow.sort_unstable();
        slow.dedup();
        if !slow.is_empty() {
            settlement.set_peaks(self.event_time_peaks(tx, &slow).await?);
        }

        // 7. Write the users back.
        self.write_users(tx, &settlement.users).await?;

        // 8. Notifications, committed with the change (transactional outbox).
        let ranked = settlement.rank_changes(rules);
        outcome.rank_changes = ranked.len();
        if !ranked.is_empty() || !settlement.merges.is_empty() {
            let (members, prefs) = self.read_members(tx, &settlement.notified(&ranked)).await?;
            let (topics, bodies) = settlement.notices(&ranked, &members, &prefs, now_ms())?;
            self.write_outbox(tx, &topics, &bodies).await?;
        }

        // 9. What the standings refresher needs of the users, written last: its time
        // (`standing_work.at`) is then the batch's commit but for the commit itself, and
        // the refresher measures from it how long changes wait to reach the leaderboards.
        if self.standings.load(Ordering::Relaxed) {
            let seen = facts.prefs.iter().filter(|(_, p)| p.says_hidden());
            self.write_standing_work(tx, &settlement.standing_work(seen.map(|(iid, _)| *iid)))
                .await?;
        }
        Ok((outcome, split))
    }

    /// Step 3: the owner of each of `iids`, from the cache or else the table. Every one
    /// must exist.
    async fn read_owners(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        iids: &[i64],
    ) -> Result<HashMap<i64, i64>, StoreError> {
        let mut owner: HashMap<i64, i64> = self.identities.owners(iids);
        let unknown: Vec<i64> = iids
            .iter()
            .filter(|iid| !owner.contains_key(iid))
            .copied()
            .collect();
        if !unknown.is_empty() {
            let read: Vec<(i64, i64)> =
                sqlx::query_as("SELECT id, user_id FROM identities WHERE id = ANY($1)")
                    .bind(&unknown)
                    .fetch_all(&mut **tx)
                    .await?;
            self.identities.set_owners(read.iter().copied());
            owner.extend(read);
        }
        if owner.len() != iids.len() {
            return Err(self.identities.stale());
        }
        Ok(owner)
    }

    /// Step 3: the owners' users, following `merged_into` to the users that have their
    /// identities now (at most 64 reads).
    async fn read_users(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        settlement: &mut Settlement<'_>,
    ) -> Result<(), StoreError> {
        let mut wanted = settlement.owners_to_read();
        for _ in 0..64 {
            let uids: Vec<i64> = wanted.iter().copied().collect();
            // Columns by position: by name, each would be a lookup per row.
            type Read = (
                i64,
                Option<i64>,
                i64,
                bool,
                i16,
                i64,
                i64,
                i64,
                i64,
                Option<i64>,
                Option<i64>,
            );
            let rows: Vec<Read> = sqlx::query_as(
                "SELECT id, merged_into, xp, ledger_dipped, peak_rank, messages, voice_seconds,
                        games_played, games_won, first_event_ms, last_event_ms
                 FROM users WHERE id = ANY($1)",
            )
            .bind(&uids)
            .fetch_all(&mut **tx)
            .await?;
            if rows.len() != uids.len() {
                return Err(self.identities.stale());
            }
            wanted = settlement.take_users(rows.into_iter().map(
                |(
                    id,
                    merged_into,
                    xp,
                    dipped,
                    peak_rank,
                    messages,
                    voice,
                    played,
                    won,
                    first_ms,
                    last_ms,
                )| {
                    let row = UserRow {
                        xp,
                        dipped,
                        peak_rank,
                        messages,
                        voice_seconds: voice,
                        games_played: played,
                        games_won: won,
                        first_ms,
                        last_ms,
                    };
                    (id, merged_into, row)
                },
            ));
            if wanted.is_empty() {
                break;
            }
        }
        if !wanted.is_empty() {
            return Err(self.identities.stale());
        }
        Ok(())
    }

    /// Step 4: upserts the ledger rows. Returns `(identity, day, added, below zero)` per
    /// row: what the row gained (its minutes already paid taken back) and whether the
    /// day now ends below zero.
    async fn write_ledger(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        rows: &LedgerRows<'_>,
    ) -> Result<Vec<(i64, i32, i64, bool)>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "WITH written AS (
                 INSERT INTO xp_ledger AS l (identity_id, day, xp, minutes, added, messages,
                                             voice_seconds, games_played, games_won,
                                             first_ms, last_ms, ", statement_columns!(), ")
                 SELECT i, DATE '1970-01-01' + d, x, m, x, c1, c2, c3, c4, c5, c6, ",
                        statement_values!(), "
                 FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::bit(1440)[], $6::int8[],
                             $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[],
                             $12::int8[], $13::int8[], $14::int8[], $15::int8[], $16::int8[],
                             $17::int8[], $18::int8[])
                   AS t(i, d, x, m, c1, c2, c3, c4, c5, c6, s1, s2, s3, u1, u2, u3, u4)
                 ORDER BY i, d
                 ON CONFLICT (identity_id, day) DO UPDATE
                 SET added = excluded.xp - $5 * coalesce(bit_count(excluded.minutes & l.minutes), 0),
                     xp = l.xp + excluded.xp
                          - $5 * coalesce(bit_count(excluded.minutes & l.minutes), 0),
                     xp_messages = l.xp_messages + excluded.xp_messages
                          - $5 * coalesce(bit_count(excluded.minutes & l.minutes), 0),
                     minutes = coalesce(l.minutes | excluded.minutes, l.minutes, excluded.minutes),
                     ", statement_sums!(), "
                 WHERE l.mults IS NULL
                 RETURNING identity_id, day, added, xp)
             SELECT identity_id, day - DATE '1970-01-01', added, xp < 0 FROM written",
        ))
        .bind(&rows.ids)
        .bind(&rows.days)
        .bind(&rows.xp)
        .bind(&rows.minutes)
        .bind(self.rules.message_xp)
        .bind(&rows.counts.messages)
        .bind(&rows.counts.voice_seconds)
        .bind(&rows.counts.games_played)
        .bind(&rows.counts.games_won)
        .bind(&rows.counts.first_ms)
        .bind(&rows.counts.last_ms)
        .bind(&rows.counts.voice_xp)
        .bind(&rows.counts.games_xp)
        .bind(&rows.counts.grants_xp)
        .bind(&rows.counts.unpaid[0])
        .bind(&rows.counts.unpaid[1])
        .bind(&rows.counts.unpaid[2])
        .bind(&rows.counts.unpaid[3])
        .fetch_all(&mut **tx)
        .await?)
    }

    /// Step 4, for the rows with multiplied minutes (SPEC 7.2) in the batch or stored:
    /// reads them (under the settle lock nobody else writes them), settles each
    /// ([`MinuteMults::settle`]) and writes it back. Returns what
    /// [`Store::write_ledger`] does.
    async fn write_multiplied_ledger(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        left: &[(&(i64, i32), &LedgerDay)],
    ) -> Result<Vec<(i64, i32, i64, bool)>, StoreError> {
        let (ids, days): (Vec<i64>, Vec<i32>) = left.iter().map(|(k, _)| **k).unzip();
        let stored: Vec<StoredMinutes> = sqlx::query_as(
            "SELECT l.identity_id, l.day - DATE '1970-01-01', l.minutes, l.mults
             FROM unnest($1::int8[], $2::int4[]) AS t(i, d)
             JOIN xp_ledger l ON l.identity_id = t.i AND l.day = DATE '1970-01-01' + t.d",
        )
        .bind(&ids)
        .bind(&days)
        .fetch_all(&mut **tx)
        .await?;
        let stored: HashMap<(i64, i32), (Option<DayMinutes>, Option<MinuteMults>)> = stored
            .into_iter()
            .map(|(i, d, bits, mults)| {
                (
                    (i, d),
                    (bits, mults.as_deref().map(MinuteMults::from_bytes)),
                )
            })
            .collect();
        let mut xp = Vec::with_capacity(left.len());
        let mut bits = Vec::with_capacity(left.len());
        let mut mults = Vec::with_capacity(left.len());
        let mut counts = super::settle::LedgerCounts::default();
        for (key, batch) in left {
            counts.push(batch);
            let (row_bits, row_mults) = stored
                .get(key)
                .map_or((None, None), |(b, m)| (b.as_ref(), m.as_ref()));
            let (gain, b, m) = MinuteMults::settle(
                self.rules.message_xp,
                (row_bits, row_mults),
                (batch.minutes.as_ref(), batch.mults.as_ref()),
            );
            xp.push(batch.xp + gain);
            bits.push(b);
            mults.push(m.to_bytes());
        }
        Ok(sqlx::query_as(concat!(
            "WITH written AS (
                 INSERT INTO xp_ledger AS l (identity_id, day, xp, minutes, mults, added,
                                             messages, voice_seconds, games_played,
                                             games_won, first_ms, last_ms, ",
            statement_columns!(),
            ")
                 SELECT i, DATE '1970-01-01' + d, x, b, nullif(m, ''), x, c1, c2, c3, c4, c5, c6, ",
            statement_values!(),
            "
                 FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::bit(1440)[], $5::bytea[],
                             $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
                             $11::int8[], $12::int8[], $13::int8[], $14::int8[], $15::int8[],
                             $16::int8[], $17::int8[], $18::int8[])
                   AS t(i, d, x, b, m, c1, c2, c3, c4, c5, c6, s1, s2, s3, u1, u2, u3, u4)
                 ORDER BY i, d
                 ON CONFLICT (identity_id, day) DO UPDATE
                 SET xp = l.xp + excluded.xp, added = excluded.xp,
                     xp_messages = l.xp_messages + excluded.xp_messages,
                     minutes = excluded.minutes, mults = excluded.mults, ",
            statement_sums!(),
            "
                 RETURNING identity_id, day, added, xp)
             SELECT identity_id, day - DATE '1970-01-01', added, xp < 0 FROM written",
        ))
        .bind(&ids)
        .bind(&days)
        .bind(&xp)
        .bind(&bits)
        .bind(&mults)
        .bind(&counts.messages)
        .bind(&counts.voice_seconds)
        .bind(&counts.games_played)
        .bind(&counts.games_won)
        .bind(&counts.first_ms)
        .bind(&counts.last_ms)
        .bind(&counts.voice_xp)
        .bind(&counts.games_xp)
        .bind(&counts.grants_xp)
        .bind(&counts.unpaid[0])
        .bind(&counts.unpaid[1])
        .bind(&counts.unpaid[2])
        .bind(&counts.unpaid[3])
        .fetch_all(&mut **tx)
        .await?)
    }

    /// Step 5: preferences (SPEC 7.3), per identity and field the newest value by
    /// `(ts, event id)`: a row's field changes only for a newer event, so the result
    /// does not depend on the order of the batches.
    async fn write_prefs(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        prefs: &BTreeMap<i64, PrefsRow<'_>>,
    ) -> Result<(), StoreError> {
        let ids: Vec<i64> = prefs.keys().copied().collect();
        let (mut hidden, mut hidden_ms, mut hidden_event) = (vec![], vec![], vec![]);
        let (mut notify, mut notify_ms, mut notify_event) = (vec![], vec![], vec![]);
        for row in prefs.values() {
            hidden.push(row.hidden.0.map(|p| p.2));
            hidden_ms.push(row.hidden.0.map(|p| p.0));
            hidden_event.push(row.hidden.0.map(|p| p.1));
            notify.push(row.notify.0.map(|p| p.2));
            notify_ms.push(row.notify.0.map(|p| p.0));
            notify_event.push(row.notify.0.map(|p| p.1));
        }
        // A field takes the batch's value when the batch's event is newer.
        let newer = |f: &str| {
            format!(
                "excluded.{f} IS NOT NULL AND (p.{f}_ms IS NULL
                 OR (excluded.{f}_ms, excluded.{f}_event) > (p.{f}_ms, p.{f}_event))"
            )
        };
        let set = |f: &str| {
            let when = newer(f);
            [f.to_owned(), format!("{f}_ms"), format!("{f}_event")]
                .iter()
                .map(|c| format!("{c} = CASE WHEN {when} THEN excluded.{c} ELSE p.{c} END"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sql = format!(
            "INSERT INTO identity_prefs AS p (identity_id, hidden, hidden_ms, hidden_event,
                                              notify, notify_ms, notify_event)
             SELECT * FROM unnest($1::int8[], $2::bool[], $3::int8[], $4::text[],
                                  $5::bool[], $6::int8[], $7::text[])
             ORDER BY 1
             ON CONFLICT (identity_id) DO UPDATE SET {}, {}",
            set("hidden"),
            set("notify")
        );
        sqlx::query(&sql)
            .bind(&ids)
            .bind(&hidden)
            .bind(&hidden_ms)
            .bind(&hidden_event)
            .bind(&notify)
            .bind(&notify_ms)
            .bind(&notify_event)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Step 5: the audit log (SPEC 7.1), each entry once, by event id.
    async fn write_audit(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        entries: &[(&Event, i64, Option<i64>)],
    ) -> Result<(), StoreError> {
        let mut rows = AuditRows::default();
        for (e, iid, other) in entries {
            rows.events.push(e.id.as_str());
            rows.ts.push(e.ts);
            rows.kinds.push(e.kind());
            rows.ids.push(*iid);
            rows.others.push(*other);
            let (amount, reason) = match &e.payload {
                Payload::Xp { amount, reason, .. } => (Some(*amount), Some(reason.as_str())),
                Payload::Unlink { reason, .. } => (None, Some(reason.as_str())),
                _ => (None, None),
            };
            rows.amounts.push(amount);
            rows.reasons.push(reason);
            let by = e.payload.by();
            rows.by_platforms.push(by.map(|b| b.platform.as_str()));
            rows.by_users.push(by.map(|b| b.user.as_str()));
        }
        sqlx::query(
            "INSERT INTO audit (event_id, ts_ms, kind, identity_id, other_id, amount, reason,
                                by_platform, by_user)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[],
                                  $6::int4[], $7::text[], $8::text[], $9::text[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&rows.events)
        .bind(&rows.ts)
        .bind(&rows.kinds)
        .bind(&rows.ids)
        .bind(&rows.others)
        .bind(&rows.amounts)
        .bind(&rows.reasons)
        .bind(&rows.by_platforms)
        .bind(&rows.by_users)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Step 5: records the links (each once, by event id).
    async fn write_links(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        rows: &LinkRows<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO links (event_id, identity_a, identity_b, day, proof, ts_ms, excluded)
             SELECT e, a, b, DATE '1970-01-01' + d, p, ts, x
             FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::text[],
                         $6::int8[], $7::bool[])
               AS t(e, a, b, d, p, ts, x)
             ON CONFLICT DO NOTHING",
        )
        .bind(&rows.events)
        .bind(&rows.a)
        .bind(&rows.b)
        .bind(&rows.days)
        .bind(&rows.proofs)
        .bind(&rows.ts)
        .bind(&rows.excluded)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Step 5: the newest stored unlink cut of each pair of identities the batch's
    /// `links` join (the smaller id first).
    async fn unlink_cuts(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        links: &[(&Event, i64, i64)],
    ) -> Result<HashMap<(i64, i64), i64>, StoreError> {
        let (a, b): (Vec<i64>, Vec<i64>) = links
            .iter()
            .map(|(_, x, y)| ((*x).min(*y), (*x).max(*y)))
            .unzip();
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT u.identity_a, u.identity_b, max(u.cut_ms)
             FROM unlinks u JOIN unnest($1::int8[], $2::int8[]) AS t(a, b)
               ON u.identity_a = t.a AND u.identity_b = t.b
             GROUP BY 1, 2",
        )
        .bind(&a)
        .bind(&b)
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows.into_iter().map(|(a, b, cut)| ((a, b), cut)).collect())
    }

    /// Step 5, unlinks (SPEC 7.4): records them and marks the links they take back as
    /// not counting. Returns the users that had such a link, to recompute.
    async fn apply_unlinks(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        unlinks: &[(&Event, i64, i64)],
    ) -> Result<Vec<i64>, StoreError> {
        let events: Vec<&str> = unlinks.iter().map(|(e, _, _)| e.id.as_str()).collect();
        let a: Vec<i64> = unlinks.iter().map(|(_, x, y)| (*x).min(*y)).collect();
        let b: Vec<i64> = unlinks.iter().map(|(_, x, y)| (*x).max(*y)).collect();
        let cuts: Vec<i64> = unlinks.iter().map(|(e, _, _)| e.ts).collect();
        sqlx::query(
            "INSERT INTO unlinks (event_id, identity_a, identity_b, cut_ms)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&events)
        .bind(&a)
        .bind(&b)
        .bind(&cuts)
        .execute(&mut **tx)
        .await?;
        let taken: Vec<i64> = sqlx::query_scalar(
            "UPDATE links l SET excluded = true
             FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS t(a, b, cut)
             WHERE NOT l.excluded AND l.ts_ms <= t.cut
               AND ((l.identity_a = t.a AND l.identity_b = t.b)
                    OR (l.identity_a = t.b AND l.identity_b = t.a))
             RETURNING l.identity_a",
        )
        .bind(&a)
        .bind(&b)
        .bind(&cuts)
        .fetch_all(&mut **tx)
        .await?;
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        Ok(
            sqlx::query_scalar("SELECT DISTINCT user_id FROM identities WHERE id = ANY($1)")
                .bind(&taken)
                .fetch_all(&mut **tx)
                .await?,
        )
    }

    /// Step 5: recomputes `users` from their identities ([`split`]) after unlinks or a
    /// forget changed their links: a part that fell away becomes a new user, a user
    /// left without identities is gone. Returns the identities moved and their new users.
    async fn recompute_users(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        users: &[i64],
        settlement: &mut Settlement<'_>,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let identities: Vec<(i64, i64)> =
            sqlx::query_as("SELECT id, user_id FROM identities WHERE user_id = ANY($1)")
                .bind(users)
                .fetch_all(&mut **tx)
                .await?;
        let iids: Vec<i64> = identities.iter().map(|r| r.0).collect();
        let links: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT identity_a, identity_b, ts_ms FROM links
             WHERE NOT excluded AND identity_a = ANY($1)",
        )
        .bind(&iids)
        .fetch_all(&mut **tx)
        .await?;
        #[derive(sqlx::FromRow)]
        struct Day {
            identity_id: i64,
            day: i32,
            xp: i64,
            messages: i64,
            voice_seconds: i64,
            games_played: i64,
            games_won: i64,
            first_ms: Option<i64>,
            last_ms: Option<i64>,
        }
        let days: Vec<Day> = sqlx::query_as(
            "SELECT identity_id, day - DATE '1970-01-01' AS day, xp, messages, voice_seconds,
                    games_played, games_won, first_ms, last_ms
             FROM xp_ledger WHERE identity_id = ANY($1)",
        )
        .bind(&iids)
        .fetch_all(&mut **tx)
        .await?;
        let ledger: Vec<CountedDay> = days
            .into_iter()
            .map(|d| {
                let counts = UserRow {
                    messages: d.messages,
                    voice_seconds: d.voice_seconds,
                    games_played: d.games_played,
                    games_won: d.games_won,
                    first_ms: d.first_ms,
                    last_ms: d.last_ms,
                    ..UserRow::default()
                };
                (d.identity_id, d.day, d.xp, counts)
            })
            .collect();
        let mut moved = Vec::new();
        let parts_of = split(&identities, &links, &ledger);
        for uid in users.iter().filter(|u| !parts_of.contains_key(u)) {
            // No identity left (a forget took its last): an empty user, ranked nowhere.
            settlement.users.insert(*uid, UserRow::default());
            settlement.gone.push(*uid);
        }
        for (uid, parts) in parts_of {
            let new_parts = parts.len() - 1;
            let mut new_uids = Vec::with_capacity(new_parts);
            for part in &parts[1..] {
                let new: i64 = sqlx::query_scalar("INSERT INTO users DEFAULT VALUES RETURNING id")
                    .fetch_one(&mut **tx)
                    .await?;
                sqlx::query("UPDATE identities SET user_id = $1 WHERE id = ANY($2)")
                    .bind(new)
                    .bind(&part.identities)
                    .execute(&mut **tx)
                    .await?;
                new_uids.push(new);
                moved.extend(part.identities.iter().map(|iid| (*iid, new)));
            }
            settlement.take_split(uid, parts, &new_uids);
            if settlement
                .users
                .get(&uid)
                .is_some_and(|u| u.first_ms.is_none())
            {
                // Nothing of it counts any more: ranked nowhere until it has events.
                settlement.gone.push(uid);
            }
        }
        Ok(moved)
    }

    /// SPEC 7.4, before step 4: each forget records its cut (`forgotten`, by the hash of
    /// the identity) and its work (`erasure_work`: cleaning the streams, applying the
    /// later events again), and wipes its identity: its ledger, name, preferences, links,
    /// unlinks and audit entries go, and it moves to a new empty user, where the batch's
    /// later events of it land. The user it left is recomputed at step 5. Returns the
    /// identities moved and their new users.
    async fn wipe(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        forgets: &[(&Event, i64)],
        settlement: &mut Settlement<'_>,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        for (e, _) in forgets {
            sqlx::query(
                "INSERT INTO forgotten (identity_hash, cut_ms) VALUES ($1, $2)
                 ON CONFLICT (identity_hash) DO UPDATE
                 SET cut_ms = greatest(forgotten.cut_ms, excluded.cut_ms)",
            )
            .bind(super::forgotten::hash(&e.identity).as_slice())
            .bind(e.ts)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "INSERT INTO erasure_work (event_id, platform, external_id, cut_ms)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(e.id.as_str())
            .bind(e.identity.platform.as_str())
            .bind(e.identity.user.as_str())
            .bind(e.ts)
            .execute(&mut **tx)
            .await?;
            // The identity's link codes (issued or redeemed up to the cut) and failed
            // redemptions: not projections of events, but about the member all the same.
            sqlx::query(
                "DELETE FROM link_codes
                 WHERE (platform = $1 AND external_id = $2 AND issued_ms <= $4)
                    OR (redeemed_by = $3 AND redeemed_ms <= $4)",
            )
            .bind(e.identity.platform.as_str())
            .bind(e.identity.user.as_str())
            .bind(e.identity.to_string())
            .bind(e.ts)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "DELETE FROM link_code_failures
                 WHERE platform = $1 AND external_id = $2 AND window_start_ms <= $3",
            )
            .bind(e.identity.platform.as_str())
            .bind(e.identity.user.as_str())
            .bind(e.ts)
            .execute(&mut **tx)
            .await?;
        }
        let mut iids: Vec<i64> = forgets.iter().map(|(_, iid)| *iid).collect();
        iids.sort_unstable();
        iids.dedup();
        let others: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM links WHERE identity_a = ANY($1) OR identity_b = ANY($1)
             RETURNING CASE WHEN identity_a = ANY($1) THEN identity_b ELSE identity_a END",
        )
        .bind(&iids)
        .fetch_all(&mut **tx)
        .await?;
        let days: Vec<(i64, i32, i64)> = sqlx::query_as(
            "DELETE FROM xp_ledger WHERE identity_id = ANY($1)
             RETURNING identity_id, day - DATE '1970-01-01', xp",
        )
        .bind(&iids)
        .fetch_all(&mut **tx)
        .await?;
        for sql in [
            "DELETE FROM unlinks WHERE identity_a = ANY($1) OR identity_b = ANY($1)",
            "DELETE FROM identity_names WHERE identity_id = ANY($1)",
            "DELETE FROM identity_prefs WHERE identity_id = ANY($1)",
            "DELETE FROM audit WHERE identity_id = ANY($1) OR other_id = ANY($1)",
        ] {
            sqlx::query(sql).bind(&iids).execute(&mut **tx).await?;
        }
        let touched: Vec<i64> =
            sqlx::query_scalar("SELECT DISTINCT user_id FROM identities WHERE id = ANY($1)")
                .bind(&others)
                .fetch_all(&mut **tx)
                .await?;
        settlement.recompute.extend(touched);
        let mut moved = Vec::new();
        for iid in iids {
            let from = follow(&settlement.redirect, settlement.owner[&iid]);
            let to: i64 = sqlx::query_scalar("INSERT INTO users DEFAULT VALUES RETURNING id")
                .fetch_one(&mut **tx)
                .await?;
            sqlx::query("UPDATE identities SET user_id = $1 WHERE id = $2")
                .bind(to)
                .bind(iid)
                .execute(&mut **tx)
                .await?;
            for (_, day, xp) in days.iter().filter(|d| d.0 == iid && d.2 != 0) {
                settlement.carried.push((from, None, *day, *xp));
            }
            settlement.owner.insert(iid, to);
            settlement.users.insert(to, UserRow::default());
            settlement.recompute.insert(from);
            moved.push((iid, to));
        }
        Ok(moved)
    }

    /// Step 5: moves the losers' identities to their survivors and empties the losers,
    /// which redirect (`merged_into`) from now on.
    async fn write_merges(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        losers: &[i64],
        survivors: &[i64],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE identities SET user_id = t.s
             FROM unnest($1::int8[], $2::int8[]) AS t(l, s)
             WHERE identities.user_id = t.l AND identities.user_id = ANY($1)",
        )
        .bind(losers)
        .bind(survivors)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE users SET merged_into = t.s, xp = 0, peak_rank = 1, messages = 0,
                    voice_seconds = 0, games_played = 0, games_won = 0
             FROM unnest($1::int8[], $2::int8[]) AS t(l, s) WHERE users.id = t.l",
        )
        .bind(losers)
        .bind(survivors)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Step 7: writes the live users back.
    async fn write_users(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        users: &BTreeMap<i64, UserRow>,
    ) -> Result<(), StoreError> {
        let live: Vec<i64> = users.keys().copied().collect();
        let cols = |f: fn(&UserRow) -> i64| users.values().map(f).collect::<Vec<i64>>();
        sqlx::query(
            "UPDATE users u SET xp = t.xp, ledger_dipped = t.dipped, peak_rank = t.peak,
                    messages = t.messages, voice_seconds = t.voice, games_played = t.played,
                    games_won = t.won, first_event_ms = t.first_ms, last_event_ms = t.last_ms
             FROM unnest($1::int8[], $2::int8[], $3::bool[], $4::int2[], $5::int8[],
                         $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[])
               AS t(id, xp, dipped, peak, messages, voice, played, won, first_ms, last_ms)
             WHERE u.id = t.id",
        )
        .bind(&live)
        .bind(cols(|u| u.xp))
        .bind(users.values().map(|u| u.dipped).collect::<Vec<bool>>())
        .bind(users.values().map(|u| u.peak_rank).collect::<Vec<i16>>())
        .bind(cols(|u| u.messages))
        .bind(cols(|u| u.voice_seconds))
        .bind(cols(|u| u.games_played))
        .bind(cols(|u| u.games_won))
        .bind(users.values().map(|u| u.first_ms).collect::<Vec<_>>())
        .bind(users.values().map(|u| u.last_ms).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Step 9: the batch's row of work for the standings refresher (`store::standings`).
    async fn write_standing_work(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        work: &super::standings::round::WorkRow,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO standing_work (users, days, xp, touched, losers, survivors, seen, gone)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&work.users)
        .bind(&work.days)
        .bind(&work.xp)
        .bind(&work.touched)
        .bind(&work.losers)
        .bind(&work.survivors)
        .bind(&work.seen)
        .bind(&work.gone)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Step 8: the identities of each of `uids`, by platform and user.
    async fn read_members(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        uids: &[i64],
    ) -> Result<(HashMap<i64, Vec<WireIdentity>>, NoticePrefs), StoreError> {
        let mut members: HashMap<i64, Vec<WireIdentity>> = HashMap::new();
        let mut prefs = NoticePrefs::default();
        for (uid, platform, user, no, hidden) in
            sqlx::query_as::<_, (i64, String, String, bool, bool)>(
                "SELECT i.user_id, i.platform, i.external_id, coalesce(p.notify = false, false),
                        coalesce(p.hidden, false)
                 FROM identities i LEFT JOIN identity_prefs p ON p.identity_id = i.id
                 WHERE i.user_id = ANY($1)
                 ORDER BY i.platform, i.external_id",
            )
            .bind(uids)
            .fetch_all(&mut **tx)
            .await?
        {
            if no {
                prefs.quiet.insert(uid);
            }
            if hidden {
                prefs.hidden.insert(uid);
            }
            members
                .entry(uid)
                .or_default()
                .push(WireIdentity { platform, user });
        }
        Ok((members, prefs))
    }

    /// Step 8: puts the notices in the outbox, in this transaction.
    async fn write_outbox(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        topics: &[&str],
        bodies: &[serde_json::Value],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO outbox (topic, body) SELECT * FROM unnest($1::text[], $2::jsonb[])",
        )
        .bind(topics)
        .bind(bodies)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Peak ranks of `uids` from their whole ledger and link history.
    ///
    /// The ledger and links are read by `identity = ANY(ids)`, which their indexes serve
    /// whatever the planner's statistics say; a join on the identities, planned
    /// generically for a prepared statement on tables not yet analyzed, scanned them
    /// whole.
    async fn event_time_peaks(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        uids: &[i64],
    ) -> Result<Vec<(i64, i16)>, StoreError> {
        let ledger: Vec<(i64, i64, i32, i64)> = sqlx::query_as(
            "WITH members AS MATERIALIZED (
                 SELECT id, user_id FROM identities WHERE user_id = ANY($1))
             SELECT m.user_id, l.identity_id, l.day - DATE '1970-01-01', l.xp
             FROM xp_ledger l JOIN members m ON m.id = l.identity_id
             WHERE l.identity_id = ANY(ARRAY(SELECT id FROM members))",
        )
        .bind(uids)
        .fetch_all(&mut **tx)
        .await?;
        let links: Vec<(i64, i64, i64, i32)> = sqlx::query_as(
            "WITH members AS MATERIALIZED (
                 SELECT id, user_id FROM identities WHERE user_id = ANY($1))
             SELECT m.user_id, k.identity_a, k.identity_b, k.day - DATE '1970-01-01'
             FROM links k JOIN members m ON m.id = k.identity_a
             WHERE k.identity_a = ANY(ARRAY(SELECT id FROM members)) AND NOT k.excluded",
        )
        .bind(uids)
        .fetch_all(&mut **tx)
        .await?;
        type History = (Vec<(i64, i32, i64)>, Vec<(i64, i64, i32)>);
        let mut per_user: BTreeMap<i64, History> = BTreeMap::new();
        for (uid, iid, day, xp) in ledger {
            per_user.entry(uid).or_default().0.push((iid, day, xp));
        }
        for (uid, a, b, day) in links {
            per_user.entry(uid).or_default().1.push((a, b, day));
        }
        Ok(per_user
            .into_iter()
            .map(|(uid, (ledger, links))| {
                let peak = peak_ranks(&self.rules, &ledger, &links)
                    .into_values()
                    .max()
                    .unwrap_or(1);
                (uid, i16::from(peak))
            })
            .collect())
    }

    /// Counts dead-lettered stream messages, once each (by their `key`).
    pub async fn record_dead_letters(&self, dead: &[DeadLetter]) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let keys: Vec<i64> = dead
            .iter()
            .map(|d| i64::try_from(d.stream_seq).unwrap_or(i64::MAX))
            .collect();
        let fresh: HashSet<i64> = sqlx::query_scalar(
            "INSERT INTO dead_lettered_messages (stream_seq)
             SELECT s FROM unnest($1::int8[]) AS t(s) ORDER BY s
             ON CONFLICT DO NOTHING RETURNING stream_seq",
        )
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut counts: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
        for (d, key) in dead.iter().zip(&keys) {
            if !fresh.contains(key) {
                continue;
            }
            *counts
                .entry((d.platform.as_str(), d.kind.as_str(), d.code))
                .or_default() += 1;
        }
        let p: Vec<&str> = counts.keys().map(|k| k.0).collect();
        let k: Vec<&str> = counts.keys().map(|k| k.1).collect();
        let c: Vec<&str> = counts.keys().map(|k| k.2).collect();
        let n: Vec<i64> = counts.values().copied().collect();
        sqlx::query(
            "INSERT INTO dead_letters (platform, kind, code, count, last_at)
             SELECT p, k, c, n, now() FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])
               AS t(p, k, c, n)
             ON CONFLICT (platform, kind, code)
             DO UPDATE SET count = dead_letters.count + excluded.count, last_at = now()",
        )
        .bind(&p)
        .bind(&k)
        .bind(&c)
        .bind(&n)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(fresh.len())
    }
}

/// The newest named event of each identity in `events`, by `(ts, id)`, its name as
/// the wire gate leaves it (`wire::clean_name`: events applied without passing the gate,
/// as in tests, get the same names).
fn newest_names<'e>(
    events: impl IntoIterator<Item = &'e Event>,
    identity: &HashMap<(&str, &str), i64>,
) -> BTreeMap<i64, (i64, &'e str, String)> {
    let mut names: BTreeMap<i64, (i64, &str, String)> = BTreeMap::new();
    for e in events {
        let (Some(name), Some(&iid)) = (
            e.name.as_deref().and_then(ttfd_shared::wire::clean_name),
            identity.get(&(e.identity.platform.as_str(), e.identity.user.as_str())),
        ) else {
            continue;
        };
        let newer = names
            .get(&iid)
            .is_none_or(|(ts, id, _)| (*ts, *id) < (e.ts, e.id.as_str()));
        if newer {
            names.insert(iid, (e.ts, e.id.as_str(), name));
        }
    }
    names
}

/// A ledger row's minutes as step 4 reads them: identity, day, bitmap, mults.
type StoredMinutes = (i64, i32, Option<DayMinutes>, Option<Vec<u8>>);

/// The `audit` insert's columns, one entry per audited event.
#[derive(Default)]
struct AuditRows<'e> {
    events: Vec<&'e str>,
    ts: Vec<i64>,
    kinds: Vec<&'static str>,
    ids: Vec<i64>,
    others: Vec<Option<i64>>,
    amounts: Vec<Option<i32>>,
    reasons: Vec<Option<&'e str>>,
    by_platforms: Vec<Option<&'e str>>,
    by_users: Vec<Option<&'e str>>,
}

/// A preference a batch sets: the value of its newest event, with that event's
/// `(ts, id)`.
#[derive(Debug, Default, Clone, Copy)]
struct Pref<'e>(Option<(i64, &'e str, bool)>);

impl<'e> Pref<'e> {
    fn raise(&mut self, e: &'e Event, value: Option<bool>) {
        let Some(value) = value else { return };
        if self
            .0
            .is_none_or(|(ts, id, _)| (ts, id) < (e.ts, e.id.as_str()))
        {
            self.0 = Some((e.ts, e.id.as_str(), value));
        }
    }
}

/// An identity's preferences as a batch sets them.
#[derive(Debug, Default)]
pub(super) struct PrefsRow<'e> {
    hidden: Pref<'e>,
    notify: Pref<'e>,
}

impl PrefsRow<'_> {
    /// Whether the batch said anything about being hidden (the standings care).
    pub(super) fn says_hidden(&self) -> bool {
        self.hidden.0.is_some()
    }
}
