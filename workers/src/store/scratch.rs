//! Throw-away databases for tests and benchmarks: created from `database.url`'s server,
//! migrated, dropped at the end.

use rand::Rng;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use super::{MIGRATOR, StoreError};
use crate::config::DatabaseSettings;

/// A freshly created and migrated database named `<tag>_<random>`.
pub struct ScratchDb {
    pub name: String,
    pub options: PgConnectOptions,
    admin: PgConnectOptions,
}

impl ScratchDb {
    pub async fn create(settings: &DatabaseSettings, tag: &str) -> Result<Self, StoreError> {
        let base: PgConnectOptions = settings.url.expose_secret().parse()?;
        let base = base.log_statements(tracing::log::LevelFilter::Trace);
        let name = format!("{tag}_{:016x}", rand::rng().random::<u64>());
        let admin = base.clone().database("postgres");
        let mut conn = admin.connect().await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
        let options = base.database(&name);
        let me = Self {
            name,
            options,
            admin,
        };
        MIGRATOR.run(&me.pool(2).await?).await?;
        Ok(me)
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
            "TRUNCATE users, identities, message_buckets, xp_ledger, links, processed_events,
                      outbox, dead_letters RESTART IDENTITY",
        )
        .execute(pool)
        .await?;
        Ok(())
    }

    pub async fn drop(self) -> Result<(), StoreError> {
        let mut conn = self.admin.connect().await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}
