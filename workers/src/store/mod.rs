//! PostgreSQL: the pool, migrations, the batch apply path ([`apply`], with the pure
//! steps of its settle phase in `settle`), reads for people and bots ([`query`]), the
//! notification outbox ([`outbox`]), link codes ([`codes`]), the leaderboards
//! ([`standings`]) and the fresh tables of `ttfd rebuild` ([`rebuild`]).
//!
//! Reads `database.url` and `database.max_connections`.

pub mod apply;
pub mod audit;
pub mod codes;
pub mod forgotten;
pub mod member;
pub mod minutes;
pub mod outbox;
pub mod query;
pub mod rebuild;
pub mod scratch;
pub mod seasons;
mod settle;
pub mod standings;
pub mod statement;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use ttfd_shared::Rules;

use crate::settings::DatabaseSettings;

pub use apply::{Applied, DeadLetter};

/// The schema, embedded from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A database failure, sorted into what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("encoding a notification: {0}")]
    Encode(#[from] serde_json::Error),
    /// An outbox row that is not a valid message (written by an older version?).
    #[error("outbox row: {0}")]
    Outbox(String),
    /// Rows changed under the batch (an identity another replica created is not yet
    /// visible, or a user is not as the settle lock promises); try again.
    #[error("identities or users changed under the batch")]
    Contended,
    /// The identity cache no longer matches the tables (rebuilt, truncated, restored);
    /// it has been cleared, try again.
    #[error("identity cache out of date (tables replaced); cleared")]
    StaleCache,
    /// A schema that `ttfd rebuild` cannot work with.
    #[error("schema: {0}")]
    Schema(String),
}

impl StoreError {
    /// Whether trying the same work again later can succeed: connection loss, a
    /// database restarting or overloaded, deadlock and serialization conflicts. Other
    /// errors are about the work itself.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Contended | StoreError::StaleCache => true,
            StoreError::Migrate(_)
            | StoreError::Encode(_)
            | StoreError::Outbox(_)
            | StoreError::Schema(_) => false,
            StoreError::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    // 08: connection, 40001/40P01: serialization/deadlock, 53:
                    // resources, 57P0x: shutdown, 55P03: lock timeout, 25006: read-only
                    // (fail-over in progress). 42P01/42703/42883: no such table, column
                    // or function: a schema this version does not match, during an
                    // upgrade; its successor applies the batch, which must not be
                    // dead-lettered meanwhile.
                    c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57P")
                        || matches!(
                            c.as_ref(),
                            "40001" | "40P01" | "55P03" | "25006" | "42P01" | "42703" | "42883"
                        )
                }),
                _ => false,
            },
        }
    }
}

/// The database, with the rules that turn events into state.
#[derive(Clone)]
pub struct Store {
    pub pool: PgPool,
    pub rules: Arc<Rules>,
    identities: IdentityCache,
    /// Claim event ids with `ON CONFLICT DO NOTHING` (the last claim found one taken)
    /// rather than optimistically ([`Store::apply`]).
    careful_claims: Arc<AtomicBool>,
    /// Whether batches queue work for the standings refresher (`standings`); off only
    /// where standings are recomputed at the end instead (`ttfd rebuild`) or measured
    /// without (`ttfd bench`).
    standings: Arc<AtomicBool>,
    /// Members per standings block after a cut (`standings::blocks`).
    block_target: i64,
}

/// What the apply path remembers of the identities, shared by the workers of a process:
/// `(platform, user)` → identity id, and identity id → owning user as last read.
///
/// Both hold as long as the tables do: an identity id never changes, and an identity
/// leaves its user only when that user is merged away (`merged_into`, set for good, in
/// the same transaction). The batch follows `merged_into` from a cached owner under the
/// settle lock, and checks the tables' generation there ([`Generation`]): a rebuild's
/// swap, a `TRUNCATE` or a restore gives new relation files, and the cache starts over.
#[derive(Clone, Default)]
struct IdentityCache(Arc<Mutex<CacheInner>>);

#[derive(Default)]
struct CacheInner {
    /// Identity ids by platform, then platform user: looked up without building a key.
    ids: HashMap<String, HashMap<String, i64>>,
    owners: HashMap<i64, i64>,
    generation: Option<Generation>,
    /// The forgotten identities (SPEC 7.4), read at an owner epoch.
    forgotten: Option<forgotten::Forgotten>,
}

/// The relation files of `identities` and `users` (`pg_relation_filenode`), and the
/// owner epoch (`owner_epoch`, moved by every split of a user).
pub(crate) type Generation = (i64, i64, i64);

/// Entries kept before the cache starts over (about 100 MB at most).
const IDENTITY_CACHE_MAX: usize = 1_000_000;

impl IdentityCache {
    fn inner(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup<'k>(&self, keys: &BTreeSet<(&'k str, &'k str)>) -> HashMap<(&'k str, &'k str), i64> {
        let inner = self.inner();
        keys.iter()
            .filter_map(|&(p, u)| {
                let id = inner.ids.get(p)?.get(u)?;
                Some(((p, u), *id))
            })
            .collect()
    }

    /// Remembers `(identity id, platform, user, owner)` rows just read or created.
    fn remember(&self, found: &[(i64, String, String, i64)]) {
        let mut inner = self.inner();
        if inner.owners.len() + found.len() > IDENTITY_CACHE_MAX {
            inner.ids.clear();
            inner.owners.clear();
        }
        for (id, p, u, owner) in found {
            inner
                .ids
                .entry(p.clone())
                .or_default()
                .insert(u.clone(), *id);
            inner.owners.insert(*id, *owner);
        }
    }

    /// The owners last read of `iids` (some may be unknown).
    fn owners(&self, iids: &[i64]) -> HashMap<i64, i64> {
        let inner = self.inner();
        iids.iter()
            .filter_map(|iid| inner.owners.get(iid).map(|uid| (*iid, *uid)))
            .collect()
    }

    fn set_owners(&self, owners: impl IntoIterator<Item = (i64, i64)>) {
        self.inner().owners.extend(owners);
    }

    fn forgotten(&self) -> Option<forgotten::Forgotten> {
        self.inner().forgotten.clone()
    }

    fn set_forgotten(&self, f: forgotten::Forgotten) {
        self.inner().forgotten = Some(f);
    }

    /// After a committed batch of this process split users (under the settle lock, so
    /// nobody moved the owner epoch meanwhile): the epoch it moved and the owners it
    /// changed, so that the cache stays valid.
    fn split(&self, moved: Vec<(i64, i64)>) {
        let mut inner = self.inner();
        if let Some(g) = inner.generation.as_mut() {
            g.2 += 1;
        }
        inner.owners.extend(moved);
        // A forget may be among them: the forgotten identities are read again.
        inner.forgotten = None;
    }

    /// Forgets everything after the tables contradicted it (which they should not):
    /// the batch is retried from fresh reads.
    fn stale(&self) -> StoreError {
        let mut inner = self.inner();
        inner.ids.clear();
        inner.owners.clear();
        StoreError::StaleCache
    }

    /// Whether the cache was filled from tables of this generation; if not, it starts
    /// over for this one. The first batch of a process adopts the generation it finds
    /// (what it cached was read moments before, by that batch).
    fn same_generation(&self, generation: Generation) -> bool {
        let mut inner = self.inner();
        match inner.generation {
            Some(g) if g == generation => true,
            None => {
                inner.generation = Some(generation);
                true
            }
            Some(_) => {
                *inner = CacheInner {
                    generation: Some(generation),
                    ..CacheInner::default()
                };
                false
            }
        }
    }
}

/// The connection options of `database.url`.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, StoreError> {
    Ok(settings
        .url
        .expose_secret()
        .parse::<PgConnectOptions>()?
        .log_statements(tracing::log::LevelFilter::Trace)
        // Short statements, whose row estimates (row comparisons) can look large: JIT
        // compilation would cost tens of ms and save nothing.
        .options([("jit", "off")])
        .application_name("ttfd"))
}

impl Store {
    /// Opens a pool. The first connection is made lazily, so a service can start before
    /// its database is up; [`Store::ping`] checks reachability.
    pub fn connect_lazy(settings: &DatabaseSettings, rules: Rules) -> Result<Self, StoreError> {
        let options = connect_options(settings)?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Self::from_pool(pool, rules))
    }

    pub fn from_pool(pool: PgPool, rules: Rules) -> Self {
        Self {
            pool,
            rules: Arc::new(rules),
            identities: IdentityCache::default(),
            careful_claims: Arc::new(AtomicBool::new(false)),
            standings: Arc::new(AtomicBool::new(true)),
            block_target: standings::blocks::TARGET,
        }
    }

    /// Standings blocks cut at every `target`-th member instead: tests exercise cuts and
    /// folds with a handful of members.
    pub fn with_block_target(mut self, target: i64) -> Self {
        self.block_target = target.max(1);
        self
    }

    /// This store's batches queue no standings work (see the field).
    pub fn without_standings(self) -> Self {
        self.standings
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Whether this store's batches keep the standings.
    pub fn keeps_standings(&self) -> bool {
        self.standings.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Which of these events-stream sequences were already dead-lettered and counted.
    pub async fn counted_dead_letters(&self, seqs: &[u64]) -> Result<HashSet<u64>, StoreError> {
        let keys: Vec<i64> = seqs
            .iter()
            .map(|s| i64::try_from(*s).unwrap_or(i64::MAX))
            .collect();
        let found: Vec<i64> = sqlx::query_scalar(
            "SELECT stream_seq FROM dead_lettered_messages WHERE stream_seq = ANY($1)",
        )
        .bind(&keys)
        .fetch_all(&self.pool)
        .await?;
        Ok(found
            .into_iter()
            .filter_map(|s| u64::try_from(s).ok())
            .collect())
    }

    /// Forgets applied event ids (and counted dead-letter sequences) older than `age` (the events stream's retention, which
    /// can no longer redeliver them), a chunk at a time. Returns how many were removed.
    pub async fn prune_processed(&self, age: Duration) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let removed = sqlx::query(
                "DELETE FROM processed_events WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM processed_events
                     WHERE applied_at < now() - make_interval(secs => $1) LIMIT 10000))",
            )
            .bind(age.as_secs_f64())
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += removed;
            if removed < 10_000 {
                break;
            }
        }
        sqlx::query(
            "DELETE FROM dead_lettered_messages WHERE at < now() - make_interval(secs => $1)",
        )
        .bind(age.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(total)
    }
}
