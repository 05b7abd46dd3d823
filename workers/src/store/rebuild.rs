//! The fresh tables of `ttfd rebuild` (docs/replay.md).
//!
//! A rebuild recomputes the projections from the events stream into a schema of their
//! own, `ttfd_rebuild_<ms>`, created by the same migrations as the live schema. A
//! [`Store`] whose connections have that schema as their `search_path` runs the apply
//! path unchanged: every unqualified table name, `nextval('users_id_seq')` included,
//! resolves to the fresh tables. Notifications the apply path writes go to that
//! schema's own `outbox`, which is dropped with it: a rebuild announces nothing.
//!
//! Then [`swap_in`] moves the live projection tables out to `ttfd_replaced_<ms>` and the
//! fresh ones in, in one transaction that holds the live tables locked against writers
//! ([`lock_projections`]). Prepared statements of running replicas are re-planned
//! against the new tables (PostgreSQL invalidates plans on `ALTER TABLE ... SET
//! SCHEMA`), and their identity caches see the new tables' generation (relation files)
//! under the settle lock and start over ([`StoreError::StaleCache`]).
//!
//! Reads `database.url` (through the settings given).

use std::fmt;

use sqlx::postgres::{PgConnection, PgPoolOptions};
use sqlx::{Connection as _, Postgres, Row, Transaction};
use ttfd_shared::Rules;

use super::{MIGRATOR, Store, StoreError, connect_options};
use crate::settings::DatabaseSettings;

/// The tables derived from events, which a rebuild recomputes and swaps. Any other
/// table (the outbox, dead-letter tallies, link codes) stays as it is. In lock order:
/// `processed_events` first, as the apply path writes it first, so a batch in flight
/// is let finish and the next one waits before holding anything.
pub const PROJECTIONS: [&str; 10] = [
    "processed_events",
    "users",
    "identities",
    "xp_ledger",
    "links",
    "identity_names",
    "audit",
    "identity_prefs",
    "unlinks",
    "forgotten",
];

/// Tables derived from the projections (the standings, `store::standings`): locked and
/// swapped with them, never copied into a snapshot or from one; a rebuild recomputes
/// them from its users and ledger.
pub const DERIVED: [&str; 4] = [
    "standings",
    "standing_blocks",
    "standing_periods",
    "standing_work",
];

/// Every table a swap moves, in lock order.
fn swapped() -> impl Iterator<Item = &'static str> {
    PROJECTIONS.into_iter().chain(DERIVED)
}

/// Schemas a rebuild builds into; left over only by an interrupted rebuild.
pub const FRESH_PREFIX: &str = "ttfd_rebuild_";
/// Schemas holding the tables a rebuild replaced, kept for inspection or to swap back.
pub const REPLACED_PREFIX: &str = "ttfd_replaced_";

/// Schemas holding snapshots of the projections (`ttfd snapshot`).
pub const SNAPSHOT_PREFIX: &str = "ttfd_snapshot_";

/// Advisory lock key held by a running rebuild or check ("ttfdrebu").
const REBUILD_LOCK: i64 = 0x7474_6664_7265_6275;

/// Whether `name` is safe to splice into SQL as an identifier (we only make such names).
fn checked(name: &str) -> Result<&str, StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(StoreError::Schema(format!(
            "unexpected schema name {name:?} (expected lowercase letters, digits and _)"
        )))
    }
}

/// `"name"`, with embedded quotes doubled: for names read from the database.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The right to rebuild: at most one rebuild or check runs against a database. Held
/// until dropped (the lock belongs to a connection of its own, which closes then).
pub struct RebuildGuard(#[allow(dead_code)] PgConnection);

/// A live user as the comparison sees it: keyed by its identities, since user ids are
/// assigned in the order users are created and so differ between two builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTotals {
    pub xp: i64,
    pub peak_rank: i16,
    pub messages: i64,
    pub voice_seconds: i64,
    pub games_played: i64,
    pub games_won: i64,
    pub first_event_ms: Option<i64>,
    pub last_event_ms: Option<i64>,
    /// Each identity's display name, in identity order.
    pub names: String,
    /// `hidden notify` (SPEC 7.3), e.g. `false true`.
    pub prefs: String,
}

impl fmt::Display for UserTotals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "xp {} peak {} messages {} voice {}s games {}/{} won, events {:?}..{:?}, names {}, \
             hidden/notify {}",
            self.xp,
            self.peak_rank,
            self.messages,
            self.voice_seconds,
            self.games_played,
            self.games_won,
            self.first_event_ms,
            self.last_event_ms,
            self.names,
            self.prefs
        )
    }
}

/// One user on which two sets of tables disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDifference {
    /// The user's identities, `platform:user` separated by spaces.
    pub identities: String,
    pub live: Option<UserTotals>,
    pub rebuilt: Option<UserTotals>,
}

impl fmt::Display for UserDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |t: &Option<UserTotals>| match t {
            Some(t) => t.to_string(),
            None => "no such user".into(),
        };
        write!(
            f,
            "user [{}]\n    live:    {}\n    rebuilt: {}",
            self.identities,
            side(&self.live),
            side(&self.rebuilt)
        )
    }
}

/// One (identity, day) whose XP, or its statement (XP by source, unpaid voice by
/// reason), differs: each side as `12 xp = 10 messages + 2 voice + 0 games + 0 given;
/// unpaid voice 0 0 60 0 s` (afk, deafened, muted, alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerDifference {
    pub identity: String,
    pub day: time::Date,
    pub live: String,
    pub rebuilt: String,
}

impl fmt::Display for LedgerDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ledger {} on {}: live {}, rebuilt {}",
            self.identity, self.day, self.live, self.rebuilt
        )
    }
}

/// What a comparison of the live tables with rebuilt ones found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Users (with any activity) in the live tables.
    pub live_users: i64,
    pub rebuilt_users: i64,
    /// How many users differ, and the first of them.
    pub user_differences: i64,
    pub users: Vec<UserDifference>,
    /// How many (identity, day) ledger rows differ, and the first of them.
    pub ledger_differences: i64,
    pub ledger: Vec<LedgerDifference>,
    /// How many standings (period, user) and block counts differ, and the first of them.
    pub standing_differences: i64,
    pub standings: Vec<StandingDifference>,
    /// How many audit entries (by event id) differ, and the first of them.
    pub audit_differences: i64,
    pub audit: Vec<AuditDifference>,
}

impl Comparison {
    pub fn is_same(&self) -> bool {
        self.user_differences == 0
            && self.ledger_differences == 0
            && self.standing_differences == 0
            && self.audit_differences == 0
    }
}

/// An audit entry on which two sets of tables disagree: each side's entry in words,
/// `None` where it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDifference {
    pub event_id: String,
    pub live: Option<String>,
    pub rebuilt: Option<String>,
}

impl fmt::Display for AuditDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |e: &Option<String>| e.clone().unwrap_or_else(|| "no such entry".into());
        write!(
            f,
            "audit {}: live {}, rebuilt {}",
            self.event_id,
            side(&self.live),
            side(&self.rebuilt)
        )
    }
}

/// A standing on which two sets of tables disagree, or a block whose count is not the
/// number of members it holds (`who` then names the block, `rebuilt` is the true count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandingDifference {
    pub period: String,
    pub who: String,
    pub live: Option<i64>,
    pub rebuilt: Option<i64>,
}

impl fmt::Display for StandingDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let xp = |x: Option<i64>| x.map_or_else(|| "not ranked".to_owned(), |x| x.to_string());
        write!(
            f,
            "standing {} of {}: live {}, rebuilt {}",
            self.period,
            self.who,
            xp(self.live),
            xp(self.rebuilt)
        )
    }
}

/// What the database knows about the events it applied, for the retention check.
#[derive(Debug, Clone, Copy)]
pub struct AppliedSpan {
    pub count: i64,
    pub oldest: Option<time::OffsetDateTime>,
    /// Messages of the events stream erasures deleted (SPEC 7.4), and how many of the
    /// first sequences (1, 2, ...) are among them.
    pub erased: i64,
    pub erased_prefix: i64,
}

impl Store {
    /// Takes the rebuild lock, or `None` when another rebuild or check holds it.
    pub async fn try_lock_rebuild(&self) -> Result<Option<RebuildGuard>, StoreError> {
        let mut conn = self.pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(REBUILD_LOCK)
            .fetch_one(&mut conn)
            .await?;
        Ok(got.then_some(RebuildGuard(conn)))
    }

    /// The schema this store's tables live in.
    pub async fn current_schema(&self) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Versions of the migrations applied to this store's schema.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many event ids the idempotency record holds, and when the oldest was applied.
    pub async fn applied_span(&self) -> Result<AppliedSpan, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM processed_events) AS n,
                    (SELECT min(applied_at) FROM processed_events) AS oldest,
                    (SELECT count(*) FROM erased_sequences) AS erased,
                    CASE WHEN EXISTS (SELECT 1 FROM erased_sequences WHERE seq = 1)
                         THEN (SELECT min(s.seq) FROM erased_sequences s
                               WHERE NOT EXISTS (SELECT 1 FROM erased_sequences t
                                                 WHERE t.seq = s.seq + 1))
                         ELSE 0 END AS prefix",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(AppliedSpan {
            count: row.get("n"),
            oldest: row.get("oldest"),
            erased: row.get("erased"),
            erased_prefix: row.get("prefix"),
        })
    }

    /// Schemas whose name starts with `prefix`, oldest name first.
    pub async fn schemas_named(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1) ORDER BY 1",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn drop_schema(&self, schema: &str) -> Result<(), StoreError> {
        let schema = checked(schema)?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Creates `schema`, migrates it, and returns a store working on its tables with
    /// `rules`, with up to `max_connections` connections.
    pub async fn create_fresh(
        &self,
        settings: &DatabaseSettings,
        schema: &str,
        rules: Rules,
        max_connections: u32,
    ) -> Result<Store, StoreError> {
        let schema = checked(schema)?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&self.pool)
            .await?;
        let options = connect_options(settings)?.options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(options);
        MIGRATOR.run(&pool).await?;
        Ok(Store::from_pool(pool, rules))
    }

    /// Before anything is applied to the fresh tables in `fresh`: creates every live
    /// identity there with its live id, and with a user of its own whose id is one of
    /// the ids its live user group holds (the survivor's and those of the users merged
    /// into it, paired by creation order), then moves the id sequences past the live
    /// ones. Merges keep the smaller user id, so a group merged again by the rebuild
    /// ends with its live user id: profile addresses (`/u/<uid>`) and the replicas'
    /// identity caches stay valid. Identities and users `fresh` already holds (from a
    /// snapshot) are left as they are. Returns how many identities were seeded.
    /// The live seasons too (not a projection: settings), so the fresh standings have
    /// the seasons' keys the live ones have.
    /// SPEC 7.4: the fresh tables honour every erasure the live ones know (the `forget`
    /// events themselves are gone from the stream), and an identity they hold (from a
    /// snapshot taken before its erasure) is erased again: queued for
    /// `privacy::erase_pending` on the fresh store. Returns how many were queued.
    pub async fn seed_forgotten(&self, live: &str, fresh: &str) -> Result<u64, StoreError> {
        let (live, fresh) = (checked(live)?, checked(fresh)?);
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {fresh}.seasons SELECT * FROM {live}.seasons ON CONFLICT DO NOTHING"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {fresh}.forgotten (identity_hash, cut_ms)
             SELECT identity_hash, cut_ms FROM {live}.forgotten
             ON CONFLICT (identity_hash) DO UPDATE
             SET cut_ms = greatest({fresh}.forgotten.cut_ms, excluded.cut_ms)"
        ))
        .execute(&mut *tx)
        .await?;
        let queued = sqlx::query(&format!(
            "INSERT INTO {fresh}.erasure_work (event_id, platform, external_id, cut_ms)
             SELECT 'rebuild:' || encode(f.identity_hash, 'hex'), i.platform, i.external_id,
                    f.cut_ms
             FROM {fresh}.identities i JOIN {fresh}.forgotten f
               ON f.identity_hash = sha256(convert_to(i.platform || ':' || i.external_id, 'UTF8'))
             ON CONFLICT (event_id) DO NOTHING"
        ))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(queued)
    }

    pub async fn seed_ids(&self, live: &str, fresh: &str) -> Result<u64, StoreError> {
        let (live, fresh) = (checked(live)?, checked(fresh)?);
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "CREATE TEMP TABLE ttfd_seed ON COMMIT DROP AS
             WITH RECURSIVE root (id, root) AS (
                 SELECT id, id FROM {live}.users WHERE merged_into IS NULL
                 UNION ALL
                 SELECT u.id, r.root FROM {live}.users u JOIN root r ON u.merged_into = r.id),
             uids AS (SELECT id, root, row_number() OVER (PARTITION BY root ORDER BY id) AS k
                      FROM root
                      WHERE NOT EXISTS (SELECT 1 FROM {fresh}.users f WHERE f.id = root.id)),
             ids AS (SELECT id, platform, external_id, user_id AS root,
                            row_number() OVER (PARTITION BY user_id ORDER BY id) AS k
                     FROM {live}.identities i
                     WHERE NOT EXISTS (SELECT 1 FROM {fresh}.identities f
                                       WHERE f.id = i.id
                                          OR (f.platform = i.platform
                                              AND f.external_id = i.external_id)))
             SELECT ids.id, ids.platform, ids.external_id, uids.id AS uid
             FROM ids JOIN uids ON uids.root = ids.root AND uids.k = ids.k"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {fresh}.users (id) SELECT uid FROM ttfd_seed ORDER BY uid"
        ))
        .execute(&mut *tx)
        .await?;
        let seeded = sqlx::query(&format!(
            "INSERT INTO {fresh}.identities (id, platform, external_id, user_id)
             SELECT id, platform, external_id, uid FROM ttfd_seed ORDER BY id"
        ))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        self.align_sequences(live, fresh).await?;
        Ok(seeded)
    }

    /// Moves the id sequences of `fresh` past the values `live`'s have handed out, so
    /// that an id the live tables gave stays that identity's or user's alone.
    pub async fn align_sequences(&self, live: &str, fresh: &str) -> Result<(), StoreError> {
        let (live, fresh) = (checked(live)?, checked(fresh)?);
        for table in ["users", "identities"] {
            sqlx::query(&format!(
                "SELECT setval('{fresh}.{table}_id_seq', greatest(
                     (SELECT last_value FROM {live}.{table}_id_seq),
                     (SELECT last_value FROM {fresh}.{table}_id_seq),
                     (SELECT coalesce(max(id), 1) FROM {fresh}.{table})))"
            ))
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Copies the projection tables of `live` into a new schema `snapshot`, as of one
    /// moment (one repeatable-read transaction: every batch is in or out whole), and
    /// records that every events-stream sequence up to `covers` is in the copy (the
    /// caller reads the sync consumer's ack floor before calling).
    pub async fn take_snapshot(
        &self,
        live: &str,
        snapshot: &str,
        covers: u64,
    ) -> Result<(), StoreError> {
        let (live, snapshot) = (checked(live)?, checked(snapshot)?);
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {snapshot}"))
            .execute(&mut *tx)
            .await?;
        for t in PROJECTIONS {
            sqlx::query(&format!(
                "CREATE TABLE {snapshot}.{t} AS SELECT * FROM {live}.{t}"
            ))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(&format!(
            "CREATE TABLE {snapshot}.ttfd_snapshot AS
             SELECT now() AS taken_at, $1::bigint AS covers,
                    (SELECT max(version) FROM {live}._sqlx_migrations) AS migration"
        ))
        .bind(i64::try_from(covers).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The stream sequence up to which `snapshot` holds every event.
    pub async fn snapshot_covers(&self, snapshot: &str) -> Result<u64, StoreError> {
        let snapshot = checked(snapshot)?;
        let covers: Option<i64> =
            sqlx::query_scalar(&format!("SELECT covers FROM {snapshot}.ttfd_snapshot"))
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| {
                    StoreError::Schema(format!("{snapshot} is not a ttfd snapshot ({e})"))
                })?;
        covers
            .and_then(|c| u64::try_from(c).ok())
            .ok_or_else(|| StoreError::Schema(format!("{snapshot} records no coverage")))
    }

    /// Copies a snapshot's projections into the (empty) fresh tables, the columns both
    /// have (a later migration's new columns keep their defaults).
    pub async fn seed_from_snapshot(&self, snapshot: &str, fresh: &str) -> Result<(), StoreError> {
        let (snapshot, fresh) = (checked(snapshot)?, checked(fresh)?);
        let mut tx = self.pool.begin().await?;
        // Users before identities (which reference them); in one statement each, so
        // users referring to users are checked once all are in.
        let mut order = PROJECTIONS;
        order.sort_by_key(|t| *t != "users");
        for t in order {
            let columns: Vec<String> = sqlx::query_scalar(
                "SELECT f.column_name::text FROM information_schema.columns f
                 JOIN information_schema.columns s
                   ON s.table_schema = $2 AND s.table_name = f.table_name
                  AND s.column_name = f.column_name
                 WHERE f.table_schema = $1 AND f.table_name = $3
                 ORDER BY f.ordinal_position",
            )
            .bind(fresh)
            .bind(snapshot)
            .bind(t)
            .fetch_all(&mut *tx)
            .await?;
            if columns.is_empty() && ["identity_prefs", "unlinks", "forgotten"].contains(&t) {
                // A snapshot from before migration 11 (13, 14): nobody had set a
                // preference (taken a link back, been forgotten).
                continue;
            }
            if columns.is_empty() && t == "audit" {
                // A snapshot from before migration 10 has no audit log: the entries of
                // the events it covers are not known (docs/replay.md).
                tracing::warn!(%snapshot, "the snapshot has no audit log; it starts after it");
                continue;
            }
            if columns.is_empty() && t == "identity_names" {
                // A snapshot from before migration 5 keeps names on its identities.
                sqlx::query(&format!(
                    "INSERT INTO {fresh}.identity_names (identity_id, name, name_ms, name_event)
                     SELECT id, name, name_ms, name_event FROM {snapshot}.identities
                     WHERE name IS NOT NULL AND name_ms IS NOT NULL AND name_event IS NOT NULL"
                ))
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::Schema(format!("{snapshot} has no names ({e})")))?;
                continue;
            }
            if columns.is_empty() {
                return Err(StoreError::Schema(format!("{snapshot}.{t} is missing")));
            }
            let list = columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ");
            // A snapshot from before migration 13 has no link times: as that migration
            // did, a link is taken at the start of its day.
            let (into, from) = if t == "links" && !columns.iter().any(|c| c == "ts_ms") {
                (
                    format!("{list}, ts_ms"),
                    format!("{list}, (day - DATE '1970-01-01')::int8 * 86400000"),
                )
            } else {
                (list.clone(), list)
            };
            sqlx::query(&format!(
                "INSERT INTO {fresh}.{t} ({into}) SELECT {from} FROM {snapshot}.{t}"
            ))
            .execute(&mut *tx)
            .await?;
        }
        // A snapshot from before migration 6 keeps message minutes in a table of their own.
        let buckets: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!("{snapshot}.message_buckets"))
            .fetch_one(&mut *tx)
            .await?;
        if buckets.is_some() {
            sqlx::query(&format!(
                "INSERT INTO {fresh}.xp_ledger AS l (identity_id, day, xp, minutes)
                 SELECT identity_id, DATE '1970-01-01' + floor(minute / 1440.0)::int, 0,
                        bit_or(set_bit(repeat('0', 1440)::bit(1440),
                                       (minute - 1440 * floor(minute / 1440.0))::int, 1))
                 FROM {snapshot}.message_buckets GROUP BY 1, 2
                 ON CONFLICT (identity_id, day) DO UPDATE SET minutes = excluded.minutes"
            ))
            .execute(&mut *tx)
            .await?;
        }
        // A snapshot from before migration 13 kept counters on users only: as that
        // migration did, each user's go to its identity with the smallest id, on the day
        // of its newest event.
        let counted: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                            WHERE table_schema = $1 AND table_name = 'xp_ledger'
                              AND column_name = 'messages')",
        )
        .bind(snapshot)
        .fetch_one(&mut *tx)
        .await?;
        if !counted {
            sqlx::query(&format!(
                "INSERT INTO {fresh}.xp_ledger AS l (identity_id, day, xp, messages, voice_seconds,
                                                    games_played, games_won, first_ms, last_ms)
                 SELECT i.id, (TIMESTAMP 'epoch' + u.last_event_ms * INTERVAL '1 millisecond')::date,
                        0, u.messages, u.voice_seconds, u.games_played, u.games_won,
                        u.first_event_ms, u.last_event_ms
                 FROM {fresh}.users u JOIN {fresh}.identities i ON i.user_id = u.id
                 WHERE u.merged_into IS NULL AND u.last_event_ms IS NOT NULL
                   AND i.id = (SELECT min(j.id) FROM {fresh}.identities j WHERE j.user_id = u.id)
                 ON CONFLICT (identity_id, day) DO UPDATE
                 SET messages = excluded.messages, voice_seconds = excluded.voice_seconds,
                     games_played = excluded.games_played, games_won = excluded.games_won,
                     first_ms = excluded.first_ms, last_ms = excluded.last_ms"
            ))
            .execute(&mut *tx)
            .await?;
        }
        // Derived from the ledger, whichever version wrote the snapshot.
        sqlx::query(&format!(
            "UPDATE {fresh}.users u SET ledger_dipped = true
             WHERE EXISTS (SELECT 1 FROM {fresh}.identities i
                           JOIN {fresh}.xp_ledger l ON l.identity_id = i.id
                           WHERE i.user_id = u.id AND l.xp < 0)"
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives the projection tables of `to` the privileges that other roles hold on the
    /// same tables (and their id sequences) in `from`, so that a swap changes no access.
    pub async fn copy_grants(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let (from, to) = (checked(from)?, checked(to)?);
        let names: Vec<String> = swapped()
            .flat_map(|t| [t.to_owned(), format!("{t}_id_seq")])
            .collect();
        let grants: Vec<(String, String, Option<String>, bool)> = sqlx::query_as(
            "SELECT c.relname::text, a.privilege_type, r.rolname::text, a.is_grantable
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN LATERAL aclexplode(c.relacl) a
             LEFT JOIN pg_roles r ON r.oid = a.grantee
             WHERE n.nspname = $1 AND c.relname = ANY($2) AND a.grantee <> c.relowner",
        )
        .bind(from)
        .bind(&names)
        .fetch_all(&self.pool)
        .await?;
        for (table, privilege, role, grantable) in grants {
            let role = role.map_or_else(|| "PUBLIC".to_owned(), |r| quote(&r));
            let kind = if table.ends_with("_id_seq") {
                "SEQUENCE"
            } else {
                "TABLE"
            };
            let option = if grantable { " WITH GRANT OPTION" } else { "" };
            // `privilege` is one of PostgreSQL's privilege keywords (SELECT, INSERT...).
            sqlx::query(&format!(
                "GRANT {privilege} ON {kind} {to}.{} TO {role}{option}",
                quote(&table)
            ))
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Opens the transaction of a swap or a check: the projection tables of `schema` are
    /// locked against writers (readers go on) until it ends. A batch being applied is
    /// let finish first; the next ones wait, holding nothing, and then go on against
    /// whatever tables carry the names by then.
    pub async fn lock_projections(
        &self,
        schema: &str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let schema = checked(schema)?;
        let mut tx = self.pool.begin().await?;
        // The standings refresher's lock first, as the refresher takes it before the
        // tables: the transaction can then finish the refresher's work itself.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(super::standings::REFRESH_LOCK_CLASS)
            .bind(schema)
            .execute(&mut *tx)
            .await?;
        let tables: Vec<String> = swapped().map(|t| format!("{schema}.{t}")).collect();
        sqlx::query(&format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            tables.join(", ")
        ))
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }

    /// Compares the users (by identity set) and XP ledgers (by identity and day) of two
    /// schemas; lists at most `limit` differences of each kind.
    pub async fn compare_schemas(
        &self,
        live: &str,
        rebuilt: &str,
        limit: i64,
    ) -> Result<Comparison, StoreError> {
        let (live, rebuilt) = (checked(live)?, checked(rebuilt)?);
        let users = |s: &str| {
            format!(
                "SELECT string_agg(i.platform || ':' || i.external_id, ' '
                                   ORDER BY i.platform, i.external_id) AS who,
                        u.xp, u.peak_rank, u.messages, u.voice_seconds, u.games_played,
                        u.games_won, u.first_event_ms, u.last_event_ms,
                        jsonb_agg(n.name ORDER BY i.platform, i.external_id)::text AS names,
                        coalesce(bool_or(p.hidden), false)
                          || ' ' || coalesce(bool_and(p.notify), true) AS prefs
                 FROM {s}.users u JOIN {s}.identities i ON i.user_id = u.id
                 LEFT JOIN {s}.identity_names n ON n.identity_id = i.id
                 LEFT JOIN {s}.identity_prefs p ON p.identity_id = i.id
                 WHERE u.merged_into IS NULL AND u.first_event_ms IS NOT NULL
                 GROUP BY u.id"
            )
        };
        let cols = [
            "xp",
            "peak_rank",
            "messages",
            "voice_seconds",
            "games_played",
            "games_won",
            "first_event_ms",
            "last_event_ms",
            "names",
            "prefs",
        ];
        let pick = |side: &str| {
            cols.iter()
                .map(|c| format!("{side}.{c} AS {side}_{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let row_of = |side: &str| {
            format!(
                "({})",
                cols.iter()
                    .map(|c| format!("{side}.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let diff_users = format!(
            "WITH l AS ({}), r AS ({}),
                  d AS (SELECT coalesce(l.who, r.who) AS who, l.who IS NOT NULL AS in_l,
                               r.who IS NOT NULL AS in_r, {}, {}
                        FROM l FULL JOIN r ON l.who = r.who
                        WHERE {} IS DISTINCT FROM {})
             SELECT *, count(*) OVER () AS total FROM d ORDER BY who LIMIT $1",
            users(live),
            users(rebuilt),
            pick("l"),
            pick("r"),
            row_of("l"),
            row_of("r"),
        );
        let rows = sqlx::query(&diff_users)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let totals = |r: &sqlx::postgres::PgRow, side: &str| -> Result<UserTotals, sqlx::Error> {
            let col = |c: &str| format!("{side}_{c}");
            Ok(UserTotals {
                xp: r.try_get(col("xp").as_str())?,
                peak_rank: r.try_get(col("peak_rank").as_str())?,
                messages: r.try_get(col("messages").as_str())?,
                voice_seconds: r.try_get(col("voice_seconds").as_str())?,
                games_played: r.try_get(col("games_played").as_str())?,
                games_won: r.try_get(col("games_won").as_str())?,
                first_event_ms: r.try_get(col("first_event_ms").as_str())?,
                last_event_ms: r.try_get(col("last_event_ms").as_str())?,
                names: r.try_get(col("names").as_str())?,
                prefs: r.try_get(col("prefs").as_str())?,
            })
        };
        let mut comparison = Comparison::default();
        for r in &rows {
            comparison.user_differences = r.try_get("total")?;
            comparison.users.push(UserDifference {
                identities: r.try_get("who")?,
                live: if r.try_get("in_l")? {
                    Some(totals(r, "l")?)
                } else {
                    None
                },
                rebuilt: if r.try_get("in_r")? {
                    Some(totals(r, "r")?)
                } else {
                    None
                },
            });
        }
        let counts = format!(
            "SELECT (SELECT count(*) FROM ({}) l) AS live_users, (SELECT count(*) FROM ({}) r) AS rebuilt_users",
            users(live),
            users(rebuilt)
        );
        let row = sqlx::query(&counts).fetch_one(&self.pool).await?;
        comparison.live_users = row.try_get("live_users")?;
        comparison.rebuilt_users = row.try_get("rebuilt_users")?;

        let ledger = |s: &str| {
            format!(
                "SELECT i.platform || ':' || i.external_id AS who, l.day,
                        format('%s xp = %s messages + %s voice + %s games + %s given; \
                                unpaid voice %s %s %s %s s',
                               l.xp, l.xp_messages, l.xp_voice, l.xp_games, l.xp_grants,
                               l.unpaid_afk, l.unpaid_deafened, l.unpaid_muted,
                               l.unpaid_alone) AS detail
                 FROM {s}.xp_ledger l JOIN {s}.identities i ON i.id = l.identity_id"
            )
        };
        let diff_ledger = format!(
            "WITH l AS ({}), r AS ({}),
                  d AS (SELECT coalesce(l.who, r.who) AS who, coalesce(l.day, r.day) AS day,
                               coalesce(l.detail, $2) AS live, coalesce(r.detail, $2) AS rebuilt
                        FROM l FULL JOIN r ON l.who = r.who AND l.day = r.day
                        WHERE coalesce(l.detail, $2) <> coalesce(r.detail, $2))
             SELECT *, count(*) OVER () AS total FROM d ORDER BY who, day LIMIT $1",
            ledger(live),
            ledger(rebuilt)
        );
        // A row of nothing (counters only) equals no row.
        let empty = "0 xp = 0 messages + 0 voice + 0 games + 0 given; unpaid voice 0 0 0 0 s";
        for r in sqlx::query(&diff_ledger)
            .bind(limit)
            .bind(empty)
            .fetch_all(&self.pool)
            .await?
        {
            comparison.ledger_differences = r.try_get("total")?;
            comparison.ledger.push(LedgerDifference {
                identity: r.try_get("who")?,
                day: r.try_get("day")?,
                live: r.try_get("live")?,
                rebuilt: r.try_get("rebuilt")?,
            });
        }

        let audit = |s: &str| {
            format!(
                "SELECT a.event_id,
                        concat_ws(' ', a.kind, a.ts_ms, i.platform || ':' || i.external_id,
                                  o.platform || ':' || o.external_id, a.amount, a.reason,
                                  'by ' || a.by_platform || ':' || a.by_user) AS entry
                 FROM {s}.audit a JOIN {s}.identities i ON i.id = a.identity_id
                 LEFT JOIN {s}.identities o ON o.id = a.other_id"
            )
        };
        let diff_audit = format!(
            "WITH l AS ({}), r AS ({}),
                  d AS (SELECT coalesce(l.event_id, r.event_id) AS event_id, l.entry AS live,
                               r.entry AS rebuilt
                        FROM l FULL JOIN r ON l.event_id = r.event_id
                        WHERE l.entry IS DISTINCT FROM r.entry)
             SELECT *, count(*) OVER () AS total FROM d ORDER BY event_id LIMIT $1",
            audit(live),
            audit(rebuilt)
        );
        for r in sqlx::query(&diff_audit)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
        {
            comparison.audit_differences = r.try_get("total")?;
            comparison.audit.push(AuditDifference {
                event_id: r.try_get("event_id")?,
                live: r.try_get("live")?,
                rebuilt: r.try_get("rebuilt")?,
            });
        }
        Ok(comparison)
    }
}

/// Compares the standings of two schemas (by period and identity set, hidden or not),
/// and checks that every block of `live` counts the members it shows; on `conn`, which may hold the
/// refresh of the live standings uncommitted. Lists at most `limit` differences.
pub async fn compare_standings(
    conn: &mut sqlx::PgConnection,
    live: &str,
    rebuilt: &str,
    limit: i64,
) -> Result<(i64, Vec<StandingDifference>), StoreError> {
    let (live, rebuilt) = (checked(live)?, checked(rebuilt)?);
    let side = |s: &str| {
        format!(
            "SELECT sp.key AS period, st.xp,
                    (SELECT string_agg(i.platform || ':' || i.external_id, ' '
                                       ORDER BY i.platform, i.external_id)
                     FROM {s}.identities i WHERE i.user_id = st.user_id)
                    || CASE WHEN st.hidden THEN ' (hidden)' ELSE '' END AS who
             FROM {s}.standings st JOIN {s}.standing_periods sp ON sp.id = st.period"
        )
    };
    let in_block = super::standings::shown_between(
        &format!("{live}.standings"),
        "b.period",
        ("b.start_neg", "b.start_uid"),
        (
            "coalesce(b.next_neg, 9223372036854775807)",
            "coalesce(b.next_uid, 9223372036854775807)",
        ),
    );
    let sql = format!(
        "WITH l AS ({}), r AS ({}),
              d AS (SELECT coalesce(l.period, r.period) AS period, coalesce(l.who, r.who) AS who,
                           l.xp AS live, r.xp AS rebuilt
                    FROM l FULL JOIN r ON l.period = r.period AND l.who = r.who
                    WHERE l.xp IS DISTINCT FROM r.xp),
              b AS (SELECT period, start_neg, start_uid, members,
                           lead(start_neg) OVER w AS next_neg, lead(start_uid) OVER w AS next_uid
                    FROM {live}.standing_blocks WINDOW w AS (PARTITION BY period ORDER BY start_neg, start_uid)),
              bd AS (SELECT (SELECT key FROM {live}.standing_periods WHERE id = b.period) AS period,
                            'block (' || b.start_neg || ', ' || b.start_uid || ')' AS who,
                            b.members AS live,
                            (SELECT count(*) FROM ({in_block}) s) AS rebuilt
                     FROM b),
              all_d AS (SELECT * FROM d UNION ALL SELECT * FROM bd WHERE live <> rebuilt)
         SELECT period, coalesce(who, '?'), live, rebuilt, count(*) OVER () FROM all_d
         ORDER BY period, 2 LIMIT $1",
        side(live),
        side(rebuilt)
    );
    type Row = (String, String, Option<i64>, Option<i64>, i64);
    let rows: Vec<Row> = sqlx::query_as(&sql).bind(limit).fetch_all(conn).await?;
    let total = rows.first().map_or(0, |r| r.4);
    Ok((
        total,
        rows.into_iter()
            .map(|(period, who, live, rebuilt, _)| StandingDifference {
                period,
                who,
                live,
                rebuilt,
            })
            .collect(),
    ))
}

/// In the transaction of [`Store::lock_projections`] on `live`: moves the live
/// projection tables to a new schema `replaced` and those of `fresh` into `live`. Owned
/// id sequences, indexes and constraints move with their tables.
pub async fn swap_in(
    tx: &mut Transaction<'static, Postgres>,
    live: &str,
    fresh: &str,
    replaced: &str,
) -> Result<(), StoreError> {
    let (live, fresh, replaced) = (checked(live)?, checked(fresh)?, checked(replaced)?);
    sqlx::query(&format!("CREATE SCHEMA {replaced}"))
        .execute(&mut **tx)
        .await?;
    for t in swapped() {
        sqlx::query(&format!("ALTER TABLE {live}.{t} SET SCHEMA {replaced}"))
            .execute(&mut **tx)
            .await?;
    }
    for t in swapped() {
        sqlx::query(&format!("ALTER TABLE {fresh}.{t} SET SCHEMA {live}"))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Closes a [`RebuildGuard`]'s connection now (releasing the lock) rather than on drop.
pub async fn release(guard: RebuildGuard) {
    let _ = guard.0.close().await;
}
