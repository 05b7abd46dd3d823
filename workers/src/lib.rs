//! TTFD Unified's roles and adapters.
//!
//! - [`config`]: typed, layered settings (defaults, file, `TTFD__...` environment).
//! - [`broker`]: NATS JetStream: connecting, provisioning from `nats/`, publishing.
//! - [`store`]: PostgreSQL: migrations, the batch apply path, reads, the outbox.
//! - [`sync`]: the sync consumer role and the outbox relay.
//! - [`query`]: the query service (profiles, leaderboards, link codes over NATS).
//! - [`discord`]: the Discord bot role: messages and voice time in, rank roles out.
//! - [`import`]: `ttfd import`, the old bots' and website's data brought in as events.
//! - [`telegram`]: the Telegram bot role (`ttfd telegram`).
//! - [`replay`]: `ttfd replay` and `ttfd rebuild`: the events stream delivered again.
//! - [`cli`]: the `ttfd` command line; each subcommand is one role.
//! - [`web`]: the website, the HTTP API and event ingest; [`metrics`]: the Prometheus
//!   registry every role registers with.
//! - [`observe`]: `/metrics`, `/healthz`, `/readyz` for the roles without a web server
//!   (`metrics.listen`), and each role's metric families.
//! - [`demo`], [`bench`]: synthetic traffic for newcomers and for measurement.

pub mod announce;
pub mod app;
pub mod bench;
pub mod broker;
pub mod card;
pub mod cli;
pub mod discord;
pub mod import;
pub mod metrics;
pub mod moderation;
pub mod observe;
pub mod privacy;
pub mod query;
pub mod rates;
pub mod replay;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod telegram;
pub mod telemetry;
pub mod traffic;
pub mod web;

pub use ttfd_shared as shared;

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
