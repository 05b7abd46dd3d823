//! `ttfd import`: brings the old TTFD data (the Telegram bot's and the Discord bot's
//! `users` tables, the website's `accounts`, their JSON-file stores, and CSV / JSON
//! Lines for anything else) in **as events** published to NATS, never by writing the
//! database: the sync consumers apply them like any other events.
//!
//! Every event id is deterministic (`import:<platform>:<user>:xp`, ...; see
//! [`legacy::Person::events`]), so running the import again changes nothing: JetStream
//! drops copies within its 2-minute window and the consumers skip ids already applied.
//!
//! 1. Every source is read and every row checked ([`sources`], [`legacy`]); bad rows
//!    are reported by line or key and skipped. Nothing is published until all sources
//!    were read, so an unreadable source stops the import before it starts.
//! 2. Unless `--dry-run`, the events are published with a progress bar, each awaited
//!    until JetStream stored it.
//!
//! Reads `nats.url` and `nats.prefix` (not the database: the old databases are given on
//! the command line). The operator's guide is `docs/import.md`.

pub mod legacy;
pub mod sources;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use backon::{ExponentialBuilder, Retryable};
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::SecretString;
use ttfd_shared::{Event, Identity, wire};

use crate::broker::{Broker, publish::Pending};
use crate::now_ms;
use legacy::{Layout, Person};
use sources::{Columns, Location, Source};

/// Events published before their acks are awaited.
const WINDOW: usize = 500;
/// 2015-01-01T00:00:00Z: SPEC 4's earliest event time.
const MIN_TS_MS: i64 = 1_420_070_400_000;

/// `ttfd import`'s command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ImportArgs {
    /// The old Telegram bot's PostgreSQL database (a postgres:// URL). Prefer the
    /// environment variable: a URL on the command line is visible to other users.
    #[arg(
        long,
        env = "TTFD_IMPORT_TELEGRAM_DB",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub telegram_db: Option<String>,
    /// The Telegram bot's table, `table` or `schema.table`.
    #[arg(long, default_value = "users", value_name = "TABLE")]
    pub telegram_table: String,
    /// The old Discord bot's PostgreSQL database (may be the same as Telegram's).
    #[arg(
        long,
        env = "TTFD_IMPORT_DISCORD_DB",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub discord_db: Option<String>,
    /// The Discord bot's table, `table` or `schema.table`.
    #[arg(long, default_value = "users", value_name = "TABLE")]
    pub discord_table: String,
    /// The old website's PostgreSQL database.
    #[arg(
        long,
        env = "TTFD_IMPORT_WEBSITE_DB",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub website_db: Option<String>,
    /// The website's accounts table, `table` or `schema.table`.
    #[arg(long, default_value = "accounts", value_name = "TABLE")]
    pub website_table: String,
    /// A file of Telegram bot rows: its JSON store (.json), or CSV / JSON Lines
    /// (.csv, .jsonl) with the table's columns. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub telegram_file: Vec<PathBuf>,
    /// A file of Discord bot rows (.json, .csv, .jsonl). Repeatable.
    #[arg(long, value_name = "FILE")]
    pub discord_file: Vec<PathBuf>,
    /// A file of website accounts (.json, .csv, .jsonl). Repeatable.
    #[arg(long, value_name = "FILE")]
    pub website_file: Vec<PathBuf>,
    /// Rows of any platform (.csv, .jsonl, .json) with the columns platform, user, name,
    /// xp, games_played, games_won, link_platform, link_user. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub records: Vec<PathBuf>,
    /// The platform of `--records` rows that have no `platform` value.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Read the `--records` field FIELD from the column COLUMN, e.g. `--column
    /// user=uuid`. Repeatable.
    #[arg(long = "column", value_name = "FIELD=COLUMN")]
    pub columns: Vec<String>,
    /// The time of the imported events (RFC 3339, e.g. 2026-11-01T00:00:00Z); default
    /// now. Imported XP counts on that day in week and month leaderboards: give the day
    /// the old bots stopped. Reruns are idempotent either way (by event id).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Read and check everything, print the summary, publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What the import found, per source and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub rows: u64,
    /// Rows that became events.
    pub imported: u64,
    /// Rows refused (reported with their line or key).
    pub bad: u64,
    /// Valid rows with nothing to carry over (no XP, no games, no link).
    pub empty: u64,
    /// Rows of an identity an earlier row (or source) already gave: the first wins,
    /// as its event ids would.
    pub repeated: u64,
    pub xp_events: u64,
    pub game_events: u64,
    pub link_events: u64,
}

impl Tally {
    pub fn events(&self) -> u64 {
        self.xp_events + self.game_events + self.link_events
    }

    fn add(&mut self, other: &Tally) {
        self.rows += other.rows;
        self.imported += other.imported;
        self.bad += other.bad;
        self.empty += other.empty;
        self.repeated += other.repeated;
        self.xp_events += other.xp_events;
        self.game_events += other.game_events;
        self.link_events += other.link_events;
    }

    fn line(&self) -> String {
        format!(
            "{} rows → {} imported, {} bad, {} empty, {} repeated → {} events ({} xp, {} game, {} link)",
            self.rows,
            self.imported,
            self.bad,
            self.empty,
            self.repeated,
            self.events(),
            self.xp_events,
            self.game_events,
            self.link_events
        )
    }
}

/// A bad or repeated row, by source and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub source: String,
    pub at: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.source, self.at, self.reason)
    }
}

/// Everything read and checked, ready to publish.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub people: Vec<Person>,
    pub per_source: Vec<(String, Tally)>,
    pub total: Tally,
    pub problems: Vec<Problem>,
    /// The events' time, Unix ms.
    pub ts: i64,
}

impl Plan {
    /// Every event, in a fixed order (sources in command-line order, rows in order).
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.people.iter().flat_map(|p| p.events(self.ts))
    }

    /// The summary printed at the end.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (source, tally) in &self.per_source {
            let _ = writeln!(out, "{source}: {}", tally.line());
        }
        let _ = writeln!(
            out,
            "total: {} from {} sources",
            self.total.line(),
            self.per_source.len()
        );
        out
    }
}

/// The sources named on the command line, in the order they are read.
pub fn sources(args: &ImportArgs) -> Vec<Source> {
    let mut out = Vec::new();
    let db = [
        (
            &args.telegram_db,
            &args.telegram_table,
            Layout::Telegram,
            "telegram-db",
        ),
        (
            &args.discord_db,
            &args.discord_table,
            Layout::Discord,
            "discord-db",
        ),
        (
            &args.website_db,
            &args.website_table,
            Layout::Website,
            "website-db",
        ),
    ];
    for (url, table, layout, flag) in db {
        if let Some(url) = url {
            out.push(Source {
                layout,
                location: Location::Postgres {
                    url: SecretString::from(url.clone()),
                    table: table.clone(),
                    flag,
                },
            });
        }
    }
    let files = [
        (&args.telegram_file, Layout::Telegram),
        (&args.discord_file, Layout::Discord),
        (&args.website_file, Layout::Website),
        (&args.records, Layout::Records),
    ];
    for (paths, layout) in files {
        for path in paths {
            out.push(Source {
                layout,
                location: Location::File(path.clone()),
            });
        }
    }
    out
}

/// Parses `--column FIELD=COLUMN` pairs.
fn columns(pairs: &[String]) -> anyhow::Result<Columns> {
    let mut renames = HashMap::new();
    for pair in pairs {
        let Some((field, column)) = pair.split_once('=') else {
            bail!("--column {pair:?}: write FIELD=COLUMN, e.g. user=uuid");
        };
        let (field, column) = (field.trim(), column.trim());
        if !Layout::Records.fields().contains(&field) || column.is_empty() {
            bail!(
                "--column {pair:?}: {field:?} is not a --records field ({})",
                Layout::Records.fields().join(", ")
            );
        }
        renames.insert(field.to_owned(), column.to_owned());
    }
    Ok(Columns::new(renames))
}

/// The events' time: `--at`, else `now`; within SPEC 4's window.
pub fn event_time(at: Option<&str>, now: i64) -> anyhow::Result<i64> {
    let Some(at) = at else { return Ok(now) };
    let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("--at {at:?} is not an RFC 3339 time such as 2026-11-01T00:00:00Z")
        })?;
    let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    if ms < MIN_TS_MS {
        bail!("--at {at}: events cannot be older than 2015-01-01");
    }
    if ms > now + 86_400_000 {
        bail!("--at {at}: events cannot be more than 24 hours in the future");
    }
    Ok(ms)
}

/// Reads and checks every source: the people to import, the tallies and the problems.
/// `report` is called with each problem as it is found.
pub async fn plan(
    args: &ImportArgs,
    now: i64,
    mut report: impl FnMut(&Problem),
) -> anyhow::Result<Plan> {
    let ts = event_time(args.at.as_deref(), now)?;
    let columns = columns(&args.columns)?;
    if let Some(p) = &args.platform {
        ttfd_shared::Platform::parse(p).with_context(|| "--platform")?;
    }
    let sources = sources(args);
    if sources.is_empty() {
        bail!("nothing to import: name at least one source (ttfd import --help)");
    }
    let mut plan = Plan {
        ts,
        ..Plan::default()
    };
    // Who was read where, so that a second row of one identity is reported.
    let mut first_seen: HashMap<Identity, String> = HashMap::new();
    let mut links: HashSet<String> = HashSet::new();
    for source in &sources {
        let described = source.describe();
        // The legacy layouts have fixed columns; renames are for `--records` files.
        let rows = if source.layout == Layout::Records {
            sources::read(source, &columns).await?
        } else {
            sources::read(source, &Columns::default()).await?
        };
        let mut tally = Tally::default();
        for located in rows {
            tally.rows += 1;
            let mut problem = |reason: String, tally: &mut Tally, bad: bool| {
                if bad {
                    tally.bad += 1;
                } else {
                    tally.repeated += 1;
                }
                let p = Problem {
                    source: described.clone(),
                    at: located.at.clone(),
                    reason,
                };
                report(&p);
                plan.problems.push(p);
            };
            if let Some(Some(error)) = located.row.get("!error") {
                problem(error.clone(), &mut tally, true);
                continue;
            }
            let mut person =
                match legacy::person(source.layout, &located.row, args.platform.as_deref()) {
                    Ok(p) => p,
                    Err(reason) => {
                        problem(reason, &mut tally, true);
                        continue;
                    }
                };
            if let Some(first) = first_seen.get(&person.identity) {
                problem(
                    format!("{} was already read at {first}; skipped", person.identity),
                    &mut tally,
                    false,
                );
                continue;
            }
            first_seen.insert(
                person.identity.clone(),
                format!("{described} {}", located.at),
            );
            // A link named by both sides is one fact (one id): publish it once.
            person.links.retain(|other| {
                links.insert(legacy::link_id(&person.identity, other).as_str().to_owned())
            });
            if person.is_empty() {
                tally.empty += 1;
                continue;
            }
            let events = person.events(ts);
            for e in &events {
                // The consumers' own rules, so that nothing published is dead-lettered.
                let bytes = wire::encode(e);
                if let Err(r) = wire::decode(&bytes, (e.identity.platform.as_str(), e.kind()), now)
                {
                    bail!("bug: import event {} is invalid: {r}", e.id.as_str());
                }
            }
            let (xp, games, link_events) = person.event_counts();
            tally.imported += 1;
            tally.xp_events += xp;
            tally.game_events += games;
            tally.link_events += link_events;
            plan.people.push(person);
        }
        plan.total.add(&tally);
        plan.per_source.push((described, tally));
    }
    Ok(plan)
}

/// What publishing did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Events JetStream stored.
    pub stored: u64,
    /// Events JetStream already had from the last 2 minutes (an immediate rerun).
    /// Older copies are stored again and skipped by the consumers, by id.
    pub duplicate: u64,
}

/// Publishes the plan's events, awaiting JetStream's acks a window at a time. A window
/// that fails (NATS unavailable) is sent again with backoff: the ids make that safe.
pub async fn publish(
    plan: &Plan,
    broker: &Broker,
    progress: &ProgressBar,
) -> anyhow::Result<Published> {
    let mut done = Published::default();
    let mut window: Vec<Event> = Vec::with_capacity(WINDOW);
    let mut events = plan.events().peekable();
    while events.peek().is_some() {
        window.clear();
        window.extend(events.by_ref().take(WINDOW));
        let send = || async {
            let mut acks: Vec<Pending> = Vec::with_capacity(window.len());
            for e in &window {
                acks.push(broker.publish_event(e).await?);
            }
            let mut got = Published::default();
            for ack in acks {
                let ack = ack
                    .await
                    .map_err(|e| crate::broker::BrokerError::JetStream(e.to_string()))?;
                if ack.duplicate {
                    got.duplicate += 1;
                } else {
                    got.stored += 1;
                }
            }
            Ok::<_, crate::broker::BrokerError>(got)
        };
        let got = send
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(10))
                    .with_max_times(8),
            )
            .notify(|e, delay| {
                progress.suspend(|| {
                    eprintln!("publishing failed ({e}); retrying in {delay:?}");
                });
            })
            .await
            .context("NATS did not store the events; run the import again (it is idempotent)")?;
        done.stored += got.stored;
        done.duplicate += got.duplicate;
        progress.inc(window.len() as u64);
    }
    Ok(done)
}

/// `ttfd import`: reads, reports, and publishes unless `--dry-run`.
///
/// `connect` opens the NATS connection, only once there is something to publish (a dry
/// run needs no NATS).
pub async fn run(
    args: ImportArgs,
    connect: impl AsyncFnOnce() -> anyhow::Result<Broker>,
) -> anyhow::Result<()> {
    let plan = plan(&args, now_ms(), |p| eprintln!("skipped: {p}")).await?;
    print!("{}", plan.summary());
    if args.dry_run {
        println!("dry run: nothing published");
        return Ok(());
    }
    let total = plan.total.events();
    if total == 0 {
        println!("nothing to publish");
        return Ok(());
    }
    let broker = connect().await?;
    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let published = publish(&plan, &broker, &progress).await;
    progress.finish_and_clear();
    let published = published?;
    println!(
        "published {total} events to {}: {} stored, {} already stored in the last 2 minutes",
        broker.subjects.events_stream(),
        published.stored,
        published.duplicate
    );
    println!("the sync consumers apply them; events applied before (same ids) are skipped");
    Ok(())
}
