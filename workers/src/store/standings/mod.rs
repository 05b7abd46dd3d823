//! Standings: every leaderboard kept as a projection, so that a page or a position
//! costs the same at any size (docs/architecture.md, "Standings").
//!
//! A batch writes one `standing_work` row under the settle lock (what it added per user
//! and day, the users it wrote, its merges). A refresher ([`Store::refresh_standings`],
//! run by every sync replica, one at a time) folds the rows committed since its last
//! round into one change per (period, user) ([`round`]), writes the standings and keeps
//! each period's block counts ([`blocks`]) exact, and removes the rows, all in one
//! transaction. Coalescing many batches into one write per member is what keeps the
//! write path's cost low: the most active members are in nearly every batch.
//!
//! [`Store::recompute_standings`] builds everything from the users and the ledger
//! instead: after the migration that added standings, and for `ttfd rebuild`, whose
//! comparison then checks the incremental path against it.

pub mod blocks;
pub mod round;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::PgConnection;
use time::Date;
use ttfd_shared::model::period_keys;

use super::seasons::seasons_in;
use ttfd_shared::rules::day_of_date;
use ttfd_shared::view::{Period, PeriodStanding};

use self::blocks::{Blocks, FIRST, Key};
use self::round::{ALL, Round, Stored, WorkRow};
use super::{Store, StoreError};

/// Advisory lock class of the refresher ("TTST"); the key is the schema's name hash,
/// so a rebuild's fresh schema has a refresher of its own.
pub(crate) const REFRESH_LOCK_CLASS: i32 = 0x5454_5354;

/// SQL selecting `neg` (-xp) and `uid` of the shown (not hidden) members of `table`'s
/// period `period` whose key `(-xp, user_id)` lies in `[lo, hi)`; every argument is an
/// SQL expression. Three ranges on plain index columns rather than row comparisons:
/// PostgreSQL 15's btree ends a scan on `(-xp, user_id) < (a, b)` only once `-xp` passes
/// `a`, so it would read every member tied at the upper bound's XP (hundreds of
/// thousands at a common small XP), where these read only what they return.
pub(crate) fn shown_between(
    table: &str,
    period: &str,
    (lo_neg, lo_uid): (&str, &str),
    (hi_neg, hi_uid): (&str, &str),
) -> String {
    let from = format!(
        "SELECT -xp AS neg, user_id AS uid FROM {table} WHERE period = {period} AND NOT hidden"
    );
    format!(
        "{from} AND -xp = {lo_neg} AND user_id >= {lo_uid}
                AND user_id < CASE WHEN {lo_neg} = {hi_neg} THEN {hi_uid}
                                   ELSE 9223372036854775807 END
         UNION ALL {from} AND -xp > {lo_neg} AND -xp < {hi_neg}
         UNION ALL {from} AND -xp = {hi_neg} AND {lo_neg} < {hi_neg} AND user_id < {hi_uid}"
    )
}

/// SQL for the number of the standings key `key` (an SQL expression); NULL for a key
/// never written, which matches no row.
pub(crate) fn period_of(key: &str) -> String {
    format!("(SELECT id FROM standing_periods WHERE key = {key})")
}

/// The standings keys and their numbers (`standing_periods`): the refresher writes rows
/// by number, and numbers a key before its first row.
#[derive(Debug, Default)]
struct Periods {
    id: HashMap<String, i32>,
    key: HashMap<i32, String>,
}

impl Periods {
    /// Every numbered key, with `keys` numbered first where they are not yet. Only a
    /// writer of the standings calls it (holding the refresh lock).
    async fn numbering(conn: &mut PgConnection, keys: &[&str]) -> Result<Self, StoreError> {
        let mut rows: Vec<(i32, String)> = sqlx::query_as("SELECT id, key FROM standing_periods")
            .fetch_all(&mut *conn)
            .await?;
        let known: HashSet<&str> = rows.iter().map(|(_, k)| k.as_str()).collect();
        let mut new: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !known.contains(k))
            .collect();
        if !new.is_empty() {
            new.sort_unstable();
            new.dedup();
            let added: Vec<(i32, String)> = sqlx::query_as(
                "INSERT INTO standing_periods (key) SELECT unnest($1::text[]) RETURNING id, key",
            )
            .bind(&new)
            .fetch_all(&mut *conn)
            .await?;
            rows.extend(added);
        }
        Ok(Self {
            id: rows.iter().map(|(i, k)| (k.clone(), *i)).collect(),
            key: rows.into_iter().collect(),
        })
    }

    /// The number of `key`, numbered by [`Periods::numbering`].
    fn id(&self, key: &str) -> Result<i32, StoreError> {
        self.id
            .get(key)
            .copied()
            .ok_or_else(|| StoreError::Schema(format!("standings period {key} has no number")))
    }

    /// The numbers of `keys`.
    fn ids(&self, keys: &[&str]) -> Result<Vec<i32>, StoreError> {
        keys.iter().map(|k| self.id(k)).collect()
    }

    /// Every number.
    fn all(&self) -> Vec<i32> {
        self.key.keys().copied().collect()
    }

    /// Rows as read, `(period number, user, xp, hidden)`, by key.
    fn keyed(
        &self,
        rows: Vec<(i32, i64, i64, bool)>,
    ) -> Result<Vec<(String, i64, i64, bool)>, StoreError> {
        rows.into_iter()
            .map(|(p, u, x, h)| match self.key.get(&p) {
                Some(k) => Ok((k.clone(), u, x, h)),
                None => Err(StoreError::Schema(format!(
                    "standings period number {p} has no key"
                ))),
            })
            .collect()
    }
}

/// When a refresher begins its rounds (docs/architecture.md, "Standings").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// The least time between the beginnings of two rounds with work
    /// (`sync.standings_refresh_ms`); zero: a round at once (a backlog is being worked
    /// off).
    pub every: Duration,
    /// The promise: a change committed is on the leaderboards within this
    /// (`sync.standings_visible_ms`).
    pub within: Duration,
}

impl Pacing {
    /// The configured pace.
    pub fn of(settings: &crate::settings::SyncSettings) -> Self {
        Self {
            every: Duration::from_millis(settings.standings_refresh_ms),
            within: Duration::from_millis(settings.standings_visible_ms),
        }
    }

    /// The same promise, a round at once.
    pub fn at_once(self) -> Self {
        Self {
            every: Duration::ZERO,
            ..self
        }
    }

    /// The least time between the beginnings of two rounds with work, after `last`:
    /// `every` while rounds are short; under load, up to ten times the round's length,
    /// so that the refresher works at most a tenth of the time and each round takes more
    /// batches' work at once; but never so long that a change written just as `last`
    /// looked for work would wait past `within`, if the next round's overhang is that
    /// of `last` and its length twice as long (under load a round's length varies that
    /// much from one to the next: the benchmark's waits passed a 2 s promise by up to
    /// 125 ms with half as long again).
    pub fn gap(self, last: LastRound) -> Duration {
        let latest = self
            .within
            .saturating_sub(last.overhang.max(last.took))
            .saturating_sub(last.took);
        last.took.saturating_mul(10).min(latest).max(self.every)
    }
}

/// The last round with work, as the replicas' shared clock (`standings_clock`) keeps it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LastRound {
    /// Its length: its transaction up to its last write.
    pub took: Duration,
    /// How long its oldest change waited beyond the time between the beginnings of the
    /// round before and this one: its length, plus however long before the round before
    /// looked for work that change's batch wrote it and committed later (at least its
    /// length). A round's oldest change waits about the gap before it plus this.
    pub overhang: Duration,
}

/// Most batches' work a round takes.
const ROUND_ROWS: i64 = 512;

/// What a refresh round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    /// Batches whose work it applied.
    pub batches: usize,
    /// Standings rows written or removed.
    pub rows: usize,
    /// Whether it found a recompute asked for: done in the round (in a transaction that
    /// locks writers out) or to be done by the caller.
    pub recomputed: bool,
    /// Whether more work was waiting when it took its rows.
    pub more: bool,
    /// How long the oldest change it applied waited to reach the leaderboards: from
    /// when its batch wrote its work (shortly before that batch committed) to the
    /// round's last write, on the database's clock. Zero for a recompute.
    pub lag: Duration,
}

/// The work rows as read, columns by position.
type WorkColumns = (
    i64,
    Vec<i64>,
    Vec<i32>,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    bool,
);

/// What a refresher's turn came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Another replica holds the refresh lock of this schema.
    Busy,
    /// The last round that found work began less than the gap ago, on the database's
    /// clock: the next may begin after this.
    Early(Duration),
    /// A round ran (it may have found nothing to do).
    Done(Refreshed),
}

impl Store {
    /// One refresh round, unless another replica is refreshing this schema or the last
    /// round with work began less than [`Pacing::gap`] of it ago (the clock is the
    /// database's and shared by every replica: together they run at most one such round
    /// per gap). With `every` zero, a round at once (a backlog is being worked off).
    pub async fn refresh_standings(&self, pacing: Pacing) -> Result<Turn, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mine: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext(current_schema()))")
                .bind(REFRESH_LOCK_CLASS)
                .fetch_one(&mut *tx)
                .await?;
        if !mine {
            return Ok(Turn::Busy);
        }
        let last: Option<(f64, f64, f64)> = sqlx::query_as(
            "SELECT extract(epoch FROM now() - at)::float8, extract(epoch FROM took)::float8,
                    extract(epoch FROM overhang)::float8
             FROM standings_clock",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let secs = |s: f64| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or_default();
        if let Some(early) = last
            .filter(|_| !pacing.every.is_zero())
            .and_then(|(since, took, overhang)| {
                let last = LastRound {
                    took: secs(took),
                    overhang: secs(overhang),
                };
                pacing.gap(last).checked_sub(secs(since))
            })
            .filter(|d| !d.is_zero())
        {
            // Let go of the lock now: a transaction merely dropped is rolled back when its
            // connection is next used, and until then a round at once would find it taken.
            tx.rollback().await?;
            return Ok(Turn::Early(early));
        }
        let done = refresh_in(&mut tx, self.block_target, Recompute::Apart).await?;
        if done.batches > 0 {
            // The overhang: the oldest change's wait less the time since the round before
            // began (none: the round's length).
            let since = last.map_or(f64::INFINITY, |(since, ..)| since);
            sqlx::query(
                "INSERT INTO standings_clock (at, took, overhang)
                 VALUES (now(), clock_timestamp() - now(),
                         greatest(clock_timestamp() - now(), make_interval(secs => $1)))
                 ON CONFLICT (one) DO UPDATE
                 SET at = excluded.at, took = excluded.took, overhang = excluded.overhang",
            )
            .bind((done.lag.as_secs_f64() - since).max(0.0))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if done.recomputed {
            self.recompute_standings().await?;
        }
        Ok(Turn::Done(done))
    }

    /// Refreshes until no committed work is left, waiting for a refresher of another
    /// replica if one is running.
    pub async fn drain_standings(&self) -> Result<(), StoreError> {
        loop {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))")
                .bind(REFRESH_LOCK_CLASS)
                .execute(&mut *tx)
                .await?;
            let done = refresh_in(&mut tx, self.block_target, Recompute::Apart).await?;
            tx.commit().await?;
            if done.recomputed {
                self.recompute_standings().await?;
            } else if !done.more {
                return Ok(());
            }
        }
    }

    /// Rebuilds every standing from the users and the ledger, in one snapshot
    /// (repeatable read): the work of the batches in it goes, and the work of batches
    /// committed meanwhile stays for the next rounds. Batches go on meanwhile.
    pub async fn recompute_standings(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SET LOCAL work_mem = '256MB'")
            .execute(&mut *tx)
            .await?;
        // A refresh that commits while this waits for the lock conflicts with the
        // snapshot: a serialization failure, transient, and the caller's retry waits no
        // more.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))")
            .bind(REFRESH_LOCK_CLASS)
            .execute(&mut *tx)
            .await?;
        recompute_in(&mut tx, self.block_target).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of the standings `key`: `limit` rows `(uid, xp)` after the first `offset`.
    /// It starts in the block holding position `offset + 1`, so every page costs about
    /// the same.
    pub async fn standings_page(
        &self,
        key: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "WITH p AS (SELECT {} AS id),
             b AS (
                 SELECT start_neg, start_uid, before FROM (
                     SELECT start_neg, start_uid,
                            sum(members) OVER (ORDER BY start_neg, start_uid) - members AS before
                     FROM standing_blocks WHERE period = (SELECT id FROM p)) w
                 WHERE before <= $3 ORDER BY start_neg DESC, start_uid DESC LIMIT 1)
             SELECT s.user_id, s.xp FROM b CROSS JOIN LATERAL (
                 SELECT user_id, xp FROM standings s
                 WHERE s.period = (SELECT id FROM p) AND NOT s.hidden
                   AND (-s.xp, s.user_id) >= (b.start_neg, b.start_uid)
                 ORDER BY -s.xp, s.user_id OFFSET $3 - b.before LIMIT $2) s",
            period_of("$1")
        ))
        .bind(key)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many members the standings `key` rank.
    pub async fn ranked(&self, key: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT coalesce(sum(members), 0)::int8 FROM standing_blocks WHERE period = {}",
            period_of("$1")
        ))
        .bind(key)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Where `uid` stands in each current period around `today` (all time, week, month,
    /// and the season if one is on): position, XP, members ranked; in one statement, so
    /// all of it is one committed state.
    pub async fn standings_of(
        &self,
        uid: i64,
        today: Date,
    ) -> Result<Vec<PeriodStanding>, StoreError> {
        let seasons = self.seasons().await?;
        let periods: Vec<(Period, String)> = Period::EVERY
            .into_iter()
            .filter_map(|p| Some((p, p.key(today, &seasons)?)))
            .collect();
        self.positions(uid, periods).await
    }

    /// Where `uid` stands in each of `periods`, by standings key.
    pub async fn positions(
        &self,
        uid: i64,
        periods: Vec<(Period, String)>,
    ) -> Result<Vec<PeriodStanding>, StoreError> {
        let keys: Vec<&str> = periods.iter().map(|(_, k)| k.as_str()).collect();
        let before_me = shown_between(
            "standings",
            "p.period",
            ("blk.start_neg", "blk.start_uid"),
            ("-s.xp", "s.user_id"),
        );
        let rows: Vec<(String, Option<i64>, Option<i64>, i64)> = sqlx::query_as(&format!(
            "SELECT p.key, me.xp, me.position, coalesce((
                        SELECT sum(members) FROM standing_blocks b WHERE b.period = p.period), 0)::int8
             FROM (SELECT k.key, sp.id AS period FROM unnest($1::text[]) AS k(key)
                   LEFT JOIN standing_periods sp ON sp.key = k.key) p
             LEFT JOIN LATERAL (
                 SELECT s.xp, (1 + coalesce((
                            SELECT sum(b.members) FROM standing_blocks b
                            WHERE b.period = p.period
                              AND (b.start_neg, b.start_uid) < (blk.start_neg, blk.start_uid)), 0)
                          + (SELECT count(*) FROM ({before_me}) o))::int8 AS position
                 FROM standings s CROSS JOIN LATERAL (
                     SELECT start_neg, start_uid FROM standing_blocks b
                     WHERE b.period = p.period AND (b.start_neg, b.start_uid) <= (-s.xp, s.user_id)
                     ORDER BY start_neg DESC, start_uid DESC LIMIT 1) blk
                 WHERE s.period = p.period AND s.user_id = $2) me ON true",
        ))
        .bind(&keys)
        .bind(uid)
        .fetch_all(&self.pool)
        .await?;
        let by_key: HashMap<String, (Option<i64>, Option<i64>, i64)> = rows
            .into_iter()
            .map(|(k, xp, pos, n)| (k, (xp, pos, n)))
            .collect();
        Ok(periods
            .into_iter()
            .map(|(period, key)| {
                let (xp, position, ranked) = by_key.get(&key).copied().unwrap_or((None, None, 0));
                PeriodStanding {
                    period,
                    position: position.and_then(|p| u64::try_from(p).ok()),
                    xp: xp.unwrap_or(0),
                    ranked: u64::try_from(ranked).unwrap_or(0),
                    key,
                }
            })
            .collect())
    }
}

/// Every round committed work needs, in the caller's transaction, which holds the
/// refresh lock and the projections locked against writers.
pub(crate) async fn refresh_all_in(conn: &mut PgConnection, target: i64) -> Result<(), StoreError> {
    while refresh_in(conn, target, Recompute::Here).await?.more {}
    Ok(())
}

/// Where a round that finds a `recompute` row does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recompute {
    /// In the round's transaction: writers are locked out, so its state is final.
    Here,
    /// Not in the round: it reports `recomputed`, and the caller runs
    /// [`Store::recompute_standings`], which lets batches go on meanwhile.
    Apart,
}

/// One round in the caller's transaction, which holds the refresh lock. Blocks are cut
/// at every `target`-th member.
async fn refresh_in(
    conn: &mut PgConnection,
    target: i64,
    recompute: Recompute,
) -> Result<Refreshed, StoreError> {
    let rows: Vec<WorkColumns> = sqlx::query_as(
        "SELECT id, users, days, xp, touched, losers, survivors, seen, gone, recompute
         FROM standing_work ORDER BY id LIMIT $1",
    )
    .bind(ROUND_ROWS + 1)
    .fetch_all(&mut *conn)
    .await?;
    let more = rows.len() > ROUND_ROWS as usize;
    let rows: Vec<WorkRow> = rows
        .into_iter()
        .take(ROUND_ROWS as usize)
        .map(
            |(id, users, days, xp, touched, losers, survivors, seen, gone, recompute)| WorkRow {
                id,
                users,
                days,
                xp,
                touched,
                losers,
                survivors,
                seen,
                gone,
                recompute,
            },
        )
        .collect();
    if rows.is_empty() {
        return Ok(Refreshed::default());
    }
    if rows.iter().any(|r| r.recompute) {
        if recompute == Recompute::Here {
            recompute_in(conn, target).await?;
        }
        return Ok(Refreshed {
            batches: rows.len(),
            recomputed: true,
            ..Refreshed::default()
        });
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let seasons = seasons_in(conn).await?;
    let mut round = Round::fold(&rows, &seasons);
    let periods = Periods::numbering(conn, &round.periods()).await?;

    // Losers' rows move to their survivors, in every period they had one.
    // Users gone (a forget took their last identity) only leave.
    let mut losers = round.losers();
    losers.extend(round.gone());
    let mut removed = Vec::new();
    if !losers.is_empty() {
        let gone: Vec<(i32, i64, i64, bool)> = sqlx::query_as(
            "DELETE FROM standings
             WHERE period = ANY($2) AND user_id = ANY($1)
             RETURNING period, user_id, xp, hidden",
        )
        .bind(&losers)
        .bind(periods.all())
        .fetch_all(&mut *conn)
        .await?;
        removed = round.take_losers(&periods.keyed(gone)?);
    }

    // Before anything is written, the stored rows of the pairs the round adds no XP to
    // and of the checked users.
    let (keys, users) = round.unmoved();
    let mut stored: HashMap<(String, i64), Stored> = periods
        .keyed(
            sqlx::query_as(
                "SELECT s.period, s.user_id, s.xp, s.hidden FROM standings s
                 JOIN unnest($1::int4[], $2::int8[]) AS t(p, u) ON s.period = t.p AND s.user_id = t.u",
            )
            .bind(periods.ids(&keys)?)
            .bind(&users)
            .fetch_all(&mut *conn)
            .await?,
        )?
        .into_iter()
        .map(|(p, u, x, h)| ((p, u), (x, h)))
        .collect();
    let checked = round.checked();
    if !checked.is_empty() {
        let rows = sqlx::query_as(
            "SELECT period, user_id, xp, hidden FROM standings
             WHERE period = ANY($2) AND user_id = ANY($1)",
        )
        .bind(&checked)
        .bind(periods.all())
        .fetch_all(&mut *conn)
        .await?;
        stored.extend(
            periods
                .keyed(rows)?
                .into_iter()
                .map(|(p, u, x, h)| ((p, u), (x, h))),
        );
    }
    // The rows the round adds XP to, where they exist, take it in place, and say what
    // they held: one statement finds and writes each (most of a round's rows).
    let (keys, users, added) = round.moving();
    let updated = sqlx::query_as(
        "UPDATE standings s SET xp = s.xp + t.d
         FROM unnest($1::int4[], $2::int8[], $3::int8[]) AS t(p, u, d)
         WHERE s.period = t.p AND s.user_id = t.u
         RETURNING s.period, s.user_id, s.xp - t.d, s.hidden",
    )
    .bind(periods.ids(&keys)?)
    .bind(&users)
    .bind(&added)
    .fetch_all(&mut *conn)
    .await?;
    let mut written = HashSet::with_capacity(updated.len());
    for (p, u, x, h) in periods.keyed(updated)? {
        written.insert((p.clone(), u));
        stored.insert((p, u), (x, h));
    }
    let hidden = hidden_users(conn).await?;
    let settled = round.settle(&stored, removed, &hidden);

    // The rest: rows whose flag changes, rows new to the period (an upsert, `ON
    // CONFLICT`, would insert speculatively, which costs more for the many that exist).
    let (updates, inserts): (Vec<_>, Vec<_>) = settled
        .upserts
        .iter()
        .filter(|(p, u, _, h)| {
            let pu = (p.clone(), *u);
            !(written.contains(&pu) && stored.get(&pu).is_some_and(|s| s.1 == *h))
        })
        .partition(|(p, u, _, _)| stored.contains_key(&(p.clone(), *u)));
    for (rows, sql) in [
        (
            updates,
            "UPDATE standings s SET xp = t.x, hidden = t.h
             FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::bool[]) AS t(p, u, x, h)
             WHERE s.period = t.p AND s.user_id = t.u",
        ),
        (
            inserts,
            "INSERT INTO standings (period, user_id, xp, hidden)
             SELECT * FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::bool[])",
        ),
    ] {
        if rows.is_empty() {
            continue;
        }
        let p: Vec<i32> = rows
            .iter()
            .map(|r| periods.id(&r.0))
            .collect::<Result<_, _>>()?;
        let u: Vec<i64> = rows.iter().map(|r| r.1).collect();
        let x: Vec<i64> = rows.iter().map(|r| r.2).collect();
        let h: Vec<bool> = rows.iter().map(|r| r.3).collect();
        sqlx::query(sql)
            .bind(&p)
            .bind(&u)
            .bind(&x)
            .bind(&h)
            .execute(&mut *conn)
            .await?;
    }
    if !settled.deletes.is_empty() {
        let (keys, u): (Vec<&str>, Vec<i64>) = settled
            .deletes
            .iter()
            .map(|(p, u)| (p.as_str(), *u))
            .unzip();
        sqlx::query(
            "DELETE FROM standings s USING unnest($1::int4[], $2::int8[]) AS t(p, u)
             WHERE s.period = t.p AND s.user_id = t.u",
        )
        .bind(periods.ids(&keys)?)
        .bind(&u)
        .execute(&mut *conn)
        .await?;
    }
    for (period, moves) in &settled.moves {
        keep_blocks(conn, periods.id(period)?, moves, target).await?;
    }
    let lag: f64 = sqlx::query_scalar(
        "WITH done AS (DELETE FROM standing_work WHERE id = ANY($1) RETURNING at)
         SELECT coalesce(extract(epoch FROM clock_timestamp() - min(at)), 0)::float8 FROM done",
    )
    .bind(&ids)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Refreshed {
        batches: rows.len(),
        rows: settled.upserts.len() + settled.deletes.len(),
        recomputed: false,
        more,
        lag: Duration::try_from_secs_f64(lag.max(0.0)).unwrap_or_default(),
    })
}

/// Counts the members that moved in `period`'s blocks, cuts the blocks that grew too
/// large (at keys read from the standings just written), folds the small ones.
async fn keep_blocks(
    conn: &mut PgConnection,
    period: i32,
    moves: &[round::Move],
    target: i64,
) -> Result<(), StoreError> {
    let read: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT start_neg, start_uid, members FROM standing_blocks WHERE period = $1",
    )
    .bind(period)
    .fetch_all(&mut *conn)
    .await?;
    let mut blocks = Blocks::new(
        read.into_iter().map(|(n, u, m)| ((n, u), m)).collect(),
        target,
    );
    for (old, new) in moves {
        blocks.moved(*old, *new);
    }
    for (start, end) in blocks.oversized() {
        let (end_neg, end_uid) = end.unwrap_or((i64::MAX, i64::MAX));
        let (members, negs, uids): (i64, Vec<i64>, Vec<i64>) = sqlx::query_as(&format!(
            "WITH m AS (
                 SELECT neg, uid, row_number() OVER (ORDER BY neg, uid) - 1 AS i
                 FROM ({}) r)
             SELECT (SELECT count(*) FROM m),
                    ARRAY(SELECT neg FROM m WHERE i > 0 AND i % $6 = 0 ORDER BY i),
                    ARRAY(SELECT uid FROM m WHERE i > 0 AND i % $6 = 0 ORDER BY i)",
            shown_between("standings", "$1", ("$2", "$3"), ("$4", "$5"))
        ))
        .bind(period)
        .bind(start.0)
        .bind(start.1)
        .bind(end_neg)
        .bind(end_uid)
        .bind(target)
        .fetch_one(&mut *conn)
        .await?;
        let cuts: Vec<Key> = negs.into_iter().zip(uids).collect();
        blocks.cut(start, &cuts, members);
    }
    blocks.fold_small();
    let changes = blocks.changes();
    if !changes.deleted.is_empty() {
        let (n, u): (Vec<i64>, Vec<i64>) = changes.deleted.iter().copied().unzip();
        sqlx::query(
            "DELETE FROM standing_blocks b USING unnest($2::int8[], $3::int8[]) AS t(n, u)
             WHERE b.period = $1 AND b.start_neg = t.n AND b.start_uid = t.u",
        )
        .bind(period)
        .bind(&n)
        .bind(&u)
        .execute(&mut *conn)
        .await?;
    }
    if !changes.written.is_empty() {
        let (keys, m): (Vec<Key>, Vec<i64>) = changes.written.iter().copied().unzip();
        let (n, u): (Vec<i64>, Vec<i64>) = keys.into_iter().unzip();
        sqlx::query(
            "INSERT INTO standing_blocks (period, start_neg, start_uid, members)
             SELECT $1, * FROM unnest($2::int8[], $3::int8[], $4::int8[])
             ON CONFLICT (period, start_neg, start_uid) DO UPDATE SET members = excluded.members",
        )
        .bind(period)
        .bind(&n)
        .bind(&u)
        .bind(&m)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Every standing from the users (all time) and the ledger (every week and month it
/// has days of), every block cut anew; the queued work it can see goes. The caller
/// holds the refresh lock, in one snapshot with the tables it reads.
async fn recompute_in(conn: &mut PgConnection, target: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM standing_work")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM standing_blocks")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM standings")
        .execute(&mut *conn)
        .await?;
    let hidden: Vec<i64> = hidden_users(conn).await?.into_iter().collect();
    let span: (Option<Date>, Option<Date>) =
        sqlx::query_as("SELECT min(day), max(day) FROM xp_ledger")
            .fetch_one(&mut *conn)
            .await?;
    let (days, keys): (Vec<i32>, Vec<String>) = match span {
        (Some(first), Some(last)) => {
            let seasons = seasons_in(conn).await?;
            (day_of_date(first)..=day_of_date(last))
                .flat_map(|d| period_keys(d, &seasons).into_iter().map(move |k| (d, k)))
                .unzip()
        }
        _ => Default::default(),
    };
    let mut named: Vec<&str> = keys.iter().map(String::as_str).collect();
    named.push(ALL);
    let periods = Periods::numbering(conn, &named).await?;
    sqlx::query(
        "INSERT INTO standings (period, user_id, xp, hidden)
         SELECT $1, id, xp, id = ANY($2) FROM users
         WHERE merged_into IS NULL AND first_event_ms IS NOT NULL",
    )
    .bind(periods.id(ALL)?)
    .bind(&hidden)
    .execute(&mut *conn)
    .await?;
    if !days.is_empty() {
        let ids: Vec<i32> = keys
            .iter()
            .map(|k| periods.id(k))
            .collect::<Result<_, _>>()?;
        sqlx::query(
            "INSERT INTO standings (period, user_id, xp, hidden)
             SELECT k.period, i.user_id, sum(l.xp), i.user_id = ANY($3)
             FROM xp_ledger l
             JOIN identities i ON i.id = l.identity_id
             JOIN unnest($1::int4[], $2::int4[]) AS k(day, period)
               ON l.day = DATE '1970-01-01' + k.day
             GROUP BY 1, 2 HAVING sum(l.xp) <> 0",
        )
        .bind(&days)
        .bind(&ids)
        .bind(&hidden)
        .execute(&mut *conn)
        .await?;
    }
    // Blocks count the members shown; a period whose every member is hidden has its
    // first block, empty.
    sqlx::query(
        "INSERT INTO standing_blocks (period, start_neg, start_uid, members)
         SELECT period,
                CASE WHEN i = 0 THEN $1 ELSE neg END, CASE WHEN i = 0 THEN $2 ELSE uid END,
                least($3, n - i)
         FROM (SELECT period, -xp AS neg, user_id AS uid,
                      row_number() OVER (PARTITION BY period ORDER BY -xp, user_id) - 1 AS i,
                      count(*) OVER (PARTITION BY period) AS n
               FROM standings WHERE NOT hidden) t
         WHERE i % $3 = 0
         UNION ALL
         SELECT DISTINCT period, $1, $2, 0::int8 FROM standings s
         WHERE hidden AND NOT EXISTS (
             SELECT 1 FROM standings v WHERE v.period = s.period AND NOT v.hidden)",
    )
    .bind(FIRST.0)
    .bind(FIRST.1)
    .bind(target)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The users hidden now (SPEC 7.3: any of their identities' newest `hidden` is true).
pub(crate) async fn hidden_users(conn: &mut PgConnection) -> Result<HashSet<i64>, StoreError> {
    let uids: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT i.user_id FROM identity_prefs p JOIN identities i ON i.id = p.identity_id
         WHERE p.hidden",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(uids.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_spread_out_under_load_within_the_promise() {
        let ms = Duration::from_millis;
        let took = |t: u64| LastRound {
            took: ms(t),
            overhang: ms(t),
        };
        let pacing = Pacing {
            every: ms(1000),
            within: ms(2000),
        };
        // Short rounds: the configured pace.
        assert_eq!(pacing.gap(took(20)), ms(1000));
        let quick = Pacing {
            every: ms(100),
            ..pacing
        };
        assert_eq!(quick.gap(took(10)), ms(100));
        // Longer rounds: ten times their length...
        assert_eq!(pacing.gap(took(130)), ms(1300));
        // ... but the next round must end within the promise: 2 s - 2 x 400 ms.
        assert_eq!(pacing.gap(took(400)), ms(1200));
        // Batches that wrote their work well before they committed make changes wait
        // longer than a round: that comes off the gap too.
        let late = LastRound {
            took: ms(400),
            overhang: ms(500),
        };
        assert_eq!(pacing.gap(late), ms(1100));
        // An overhang shorter than the round (a change that came late) counts as the
        // round's length.
        let early = LastRound {
            took: ms(400),
            overhang: ms(100),
        };
        assert_eq!(pacing.gap(early), ms(1200));
        // Rounds so long the promise cannot be kept: no slower than configured.
        assert_eq!(pacing.gap(took(900)), ms(1000));
        assert_eq!(
            pacing.gap(LastRound {
                took: Duration::MAX,
                overhang: Duration::MAX
            }),
            ms(1000)
        );
        // A looser promise leaves room to space long rounds further.
        let loose = Pacing {
            within: ms(5000),
            ..pacing
        };
        assert_eq!(loose.gap(took(400)), ms(4000));
        assert_eq!(loose.gap(took(900)), ms(3200));
        for p in [pacing, quick, loose] {
            for t in (0..3000).step_by(7) {
                for extra in [0, 50, 300] {
                    let last = LastRound {
                        took: ms(t),
                        overhang: ms(t + extra),
                    };
                    let gap = p.gap(last);
                    assert!(gap >= p.every);
                    assert!(
                        gap == p.every || gap + last.overhang + last.took <= p.within,
                        "{p:?} {last:?}: {gap:?}"
                    );
                }
            }
        }
    }
}
