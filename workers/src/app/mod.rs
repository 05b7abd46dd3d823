//! The composition root: the one place that connects to PostgreSQL and NATS, starts a
//! role, and bounds its shutdown. `cli` (and through it `main`) calls it; no role
//! imports it or `cli` (checked by `tests::no_module_below_the_root_imports_it`).
//!
//! - Connecting, one policy: NATS within [`CONNECT_TIMEOUT`] or a one-line error; a
//!   long-running role opens its PostgreSQL pool lazily (it retries and reports
//!   through `/readyz` while the database is away), a one-shot command checks the
//!   database once first ([`connect_store`]) so that an unreachable one is a one-line
//!   error.
//! - The start-up sequence of every role: connect what it needs (the bots hold no
//!   database credentials), run it until the shutdown token fires,
//!   give its work in flight the grace period ([`Role::grace`]), flush NATS.
//! - [`demo`]: every role in one process with synthetic traffic.
//!
//! Reads `database.*`, `nats.*`, `sync.shutdown_grace_secs`, `telegram.shutdown_grace_secs`.

pub mod demo;

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use ttfd_shared::trust::Publisher;

use crate::broker::trust::Trust;
use crate::broker::{Broker, EXIT_FLUSH};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::Store;

/// How long connecting to NATS may take before start-up fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The long-running roles, one per `ttfd <role>` subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sync,
    Query,
    Discord,
    Web,
    Telegram,
}

impl Role {
    /// Time the role's work in flight gets after the shutdown signal:
    /// `telegram.shutdown_grace_secs` for the Telegram bot, `sync.shutdown_grace_secs`
    /// for every other role.
    pub fn grace(self, settings: &Settings) -> Duration {
        Duration::from_secs(match self {
            Role::Telegram => settings.telegram.shutdown_grace_secs,
            _ => settings.sync.shutdown_grace_secs,
        })
    }

    /// The principal the role signs what it publishes as (docs/security.md): the sync
    /// role's outbox relay publishes the links the web role and redeemed codes proved.
    /// The query service signs the moderators' adjustments it publishes for the bots.
    /// The bots and the web role's ingest sign nothing: they speak for their platform.
    pub fn signs_as(self) -> Option<Publisher> {
        match self {
            Role::Sync => Some(Publisher::Relay),
            // The moderators' XP tools of the bots (`xp.adjust`), when
            // `trust.keys.moderator` is set.
            Role::Query => Some(Publisher::Moderator),
            Role::Web | Role::Discord | Role::Telegram => None,
        }
    }
}

/// Runs `role` until `shutdown`, then flushes what it still sends to NATS.
pub async fn run(
    role: Role,
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A role runs long enough to send a duplicate once more after the window.
    let broker = connect_broker(settings, role.signs_as())
        .await?
        .sending_second_copies();
    let grace = role.grace(settings);
    // The bots hold no database credentials: they ask the query service.
    let result = match role {
        Role::Sync => {
            crate::sync::run(settings, open_store(settings)?, broker.clone(), shutdown).await
        }
        Role::Query => {
            crate::query::run(settings, open_store(settings)?, broker.clone(), shutdown).await
        }
        Role::Web => {
            let store = open_store(settings)?;
            let web =
                crate::web::WebApp::build(settings, store, broker.clone(), Metrics::new(), grace)
                    .await?;
            println!("web: serving {}", web.base_url());
            web.run(shutdown).await.context("web server")
        }
        Role::Discord => crate::discord::run(settings, broker.clone(), grace, shutdown).await,
        Role::Telegram => crate::telegram::run(settings, broker.clone(), grace, shutdown).await,
    };
    // The last acks and publishes leave before the process does.
    broker.flush_within(EXIT_FLUSH).await;
    if let Some(waiting) = broker.second_copies().map(|c| c.waiting_bytes())
        && waiting > 0
    {
        tracing::warn!(waiting, "stopping with second copies not sent (bytes)");
    }
    result
}

/// A pool opened lazily: connections are made when first needed.
pub fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    Ok(Store::connect_lazy(
        &settings.database,
        settings.rules.clone(),
    )?)
}

/// A pool checked once, so that an unreachable database is a one-line error.
pub async fn connect_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = open_store(settings)?;
    store
        .ping()
        .await
        .context("cannot reach PostgreSQL (database.url)")?;
    Ok(store)
}

/// Both, for an operator task that reads the stream into the database.
pub async fn connect(settings: &Settings) -> anyhow::Result<(Store, Broker)> {
    Ok((
        connect_store(settings).await?,
        connect_broker(settings, OPERATOR).await?,
    ))
}

/// The principal operators' commands (`ttfd publish`, `ttfd import`, ...) sign as.
pub const OPERATOR: Option<Publisher> = Some(Publisher::Admin);

/// NATS with JetStream, within [`CONNECT_TIMEOUT`], signing what it publishes as
/// `signs_as` when `trust.keys` holds that principal's key.
pub async fn connect_broker(
    settings: &Settings,
    signs_as: Option<Publisher>,
) -> anyhow::Result<Broker> {
    let trust = Trust::from_settings(&settings.trust, signs_as)?;
    Ok(Broker::connect(&settings.nats, CONNECT_TIMEOUT)
        .await?
        .with_trust(trust))
}

#[cfg(test)]
mod tests {
    //! The layering of the crate, read from its source: the composition root and the
    //! command line sit on top, and the modules below them import each other without
    //! a cycle.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The top-level modules each top-level module names as `crate::<module>` outside
    /// comments and unit tests.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let module_of = |path: &Path| -> String {
            let rel = path.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("a component");
            let name = first.as_os_str().to_string_lossy();
            name.trim_end_matches(".rs").to_owned()
        };
        let modules: BTreeSet<String> = files
            .iter()
            .map(|f| module_of(f))
            .filter(|m| m != "lib" && m != "main")
            .collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let from = module_of(file);
            if !modules.contains(&from) {
                continue;
            }
            let text = std::fs::read_to_string(file).expect("read a source file");
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            let code: String = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let deps = graph.entry(from.clone()).or_default();
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let named: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .collect(),
                    None => vec![rest],
                };
                for n in named {
                    let n = n.trim_start();
                    let end = n
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(n.len());
                    let name = &n[..end];
                    if name != from && modules.contains(name) {
                        deps.insert(name.to_owned());
                    }
                }
            }
        }
        graph
    }

    #[test]
    fn no_module_below_the_root_imports_it_or_the_command_line() {
        let graph = imports();
        assert!(graph.len() > 10, "the source was read: {graph:?}");
        for (module, deps) in &graph {
            assert!(!deps.contains("cli"), "{module} imports crate::cli");
            if module != "cli" {
                assert!(!deps.contains("app"), "{module} imports crate::app");
            }
        }
    }

    #[test]
    fn the_modules_import_each_other_without_a_cycle() {
        let graph = imports();
        // Depth-first search; a module met again while still on the path closes a cycle.
        fn visit<'a>(
            m: &'a str,
            graph: &'a BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) {
            if done.contains(m) {
                return;
            }
            if let Some(at) = path.iter().position(|p| *p == m) {
                panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
            }
            path.push(m);
            for d in graph.get(m).into_iter().flatten() {
                visit(d, graph, path, done);
            }
            path.pop();
            done.insert(m);
        }
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            visit(m, &graph, &mut Vec::new(), &mut done);
        }
        assert!(done.contains("store") && done.contains("settings"));
    }
}
