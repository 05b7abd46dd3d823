//! Throw-away databases for tests and benchmarks: created on `database.url`'s server as
//! copies of one migrated template, removed at the end, and removed when dropped if
//! nobody did (a failed test or an interrupted benchmark leaves nothing behind).
//!
//! The template is named after the migrations' checksums (`ttfd_template_<hash>`), so
//! it is built once per set of migrations, by whichever process gets there first under
//! an advisory lock, and copying it (`CREATE DATABASE .. TEMPLATE`) replaces running
//! every migration for every test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use super::{MIGRATOR, StoreError};
use crate::settings::DatabaseSettings;

/// A freshly created and migrated database named `<tag>_<random>`.
pub struct ScratchDb {
    pub name: String,
    pub options: PgConnectOptions,
    admin: PgConnectOptions,
    removed: AtomicBool,
}

impl ScratchDb {
    pub async fn create(settings: &DatabaseSettings, tag: &str) -> Result<Self, StoreError> {
        let base: PgConnectOptions = settings.url.expose_secret().parse()?;
        let base = base
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(1))
            .options([("jit", "off")]);
        let name = format!("{tag}_{:016x}", rand::rng().random::<u64>());
        let admin = base.clone().database("postgres");
        let template = migrated_template(&base, &admin).await?;
        let mut conn = admin.connect().await?;
        sqlx::query(&format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
        ))
        .execute(&mut conn)
        .await?;
        Ok(Self {
            options: base.database(&name),
            name,
            admin,
            removed: AtomicBool::new(false),
        })
    }

    pub async fn pool(&self, max_connections: u32) -> Result<PgPool, StoreError> {
        Ok(PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.options.clone())
            .await?)
    }

    /// The URL of the database, for child processes.
    pub fn url(&self, settings: &DatabaseSettings) -> String {
        let base = settings.url.expose_secret();
        match base.rfind('/') {
            Some(i) if base[..i].contains("://") && i > base.find("://").unwrap_or(0) + 2 => {
                let query = base[i..].find('?').map(|q| &base[i + q..]).unwrap_or("");
                format!("{}/{}{query}", &base[..i], self.name)
            }
            _ => format!("{base}/{}", self.name),
        }
    }

    /// Empties every table (between benchmark runs).
    pub async fn truncate(&self, pool: &PgPool) -> Result<(), StoreError> {
        sqlx::query(
            "TRUNCATE users, identities, identity_names, xp_ledger, links, processed_events,
                      outbox, dead_letters, standings, standing_blocks, standing_periods, standing_work, audit, identity_prefs,
                      unlinks, forgotten, erasure_work, erased_sequences, standings_clock
             RESTART IDENTITY",
        )
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Drops the database (closing whatever connections are still open to it).
    /// Leaves the database behind (for a look at it); returns its name.
    pub fn keep(&self) -> &str {
        self.removed.store(true, Ordering::Relaxed);
        &self.name
    }

    pub async fn remove(&self) -> Result<(), StoreError> {
        drop_database(&self.admin, &self.name).await?;
        self.removed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// The name of the template holding every migration, built first if it is missing. The
/// build runs under an advisory lock (concurrent test processes wait for one builder) and
/// is marked done by `IS_TEMPLATE`, so a build cut short is dropped and done again.
async fn migrated_template(
    base: &PgConnectOptions,
    admin: &PgConnectOptions,
) -> Result<String, StoreError> {
    let mut sum = 0xcbf2_9ce4_8422_2325_u64; // FNV-1a over the migrations' checksums
    for migration in MIGRATOR.iter() {
        for byte in migration
            .version
            .to_le_bytes()
            .iter()
            .chain(&*migration.checksum)
        {
            sum = (sum ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let template = format!("ttfd_template_{sum:016x}");
    let mut conn = admin.connect().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(sum as i64)
        .execute(&mut conn)
        .await?;
    let built = async {
        let done: Option<bool> =
            sqlx::query_scalar("SELECT datistemplate FROM pg_database WHERE datname = $1")
                .bind(&template)
                .fetch_optional(&mut conn)
                .await?;
        if done == Some(true) {
            return Ok(());
        }
        drop_database(admin, &template).await?;
        sqlx::query(&format!("CREATE DATABASE \"{template}\""))
            .execute(&mut conn)
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone().database(&template))
            .await?;
        MIGRATOR.run(&pool).await?;
        pool.close().await;
        sqlx::query(&format!("ALTER DATABASE \"{template}\" IS_TEMPLATE true"))
            .execute(&mut conn)
            .await?;
        Ok::<_, StoreError>(())
    }
    .await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(sum as i64)
        .execute(&mut conn)
        .await;
    built?;
    unlocked?;
    Ok(template)
}

async fn drop_database(admin: &PgConnectOptions, name: &str) -> Result<(), StoreError> {
    let mut conn = admin.connect().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

impl Drop for ScratchDb {
    /// Removes the database when [`ScratchDb::remove`] was not reached (a panic, an
    /// early return). Drop cannot await, so a short-lived thread with its own runtime
    /// does it, for at most 10 s.
    fn drop(&mut self) {
        if self.removed.load(Ordering::Relaxed) {
            return;
        }
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                let dropped = runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), drop_database(&admin, &name))
                        .await
                });
                if !matches!(dropped, Ok(Ok(()))) {
                    eprintln!("could not remove the scratch database {name}");
                }
            }
        });
        let _ = cleanup.join();
    }
}
