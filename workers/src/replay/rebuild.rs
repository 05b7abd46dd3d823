//! `ttfd rebuild` and `ttfd rebuild --check` (docs/replay.md): every projection
//! recomputed from the whole retained events stream into fresh tables
//! ([`crate::store::rebuild`]), with the rules of this configuration, then swapped in
//! (or compared with the live tables, and dropped).
//!
//! Events keep arriving meanwhile. The build runs to the stream's last sequence, then
//! catches up (a few rounds, unlocked) until the tail is short; then it locks the live
//! projection tables against writers (the sync replicas' next batch waits, holding
//! nothing, its messages kept in progress), catches up the last tail, and swaps (or
//! compares) in that same transaction. Every event a replica applied to the old tables
//! is in the stream at a sequence the fresh tables reached; every later one waits and
//! is applied to the new tables.
//!
//! Messages the consumers rejected when they came are skipped, not dead-lettered again;
//! notifications the apply path writes go to the fresh schema's own outbox, which is
//! dropped: a rebuild announces no rank-up.
//!
//! Reads `database.*`, `nats.*`, `sync.*` and `rules.*` (the rules the history is
//! recomputed with).

use crate::broker::EXIT_FLUSH;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{State, Stream};
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Delivery, Finish, Progress, deliver};
use crate::broker::Broker;
use crate::settings::Settings;
use crate::store::rebuild::{
    AppliedSpan, Comparison, FRESH_PREFIX, REPLACED_PREFIX, SNAPSHOT_PREFIX, compare_standings,
    release, swap_in,
};
use crate::store::standings::{self, refresh_all_in};
use crate::store::{MIGRATOR, Store};
use crate::sync::{Counters, Rejects, SyncWorker};

/// Rounds of catching up without the lock before taking it anyway.
const UNLOCKED_ROUNDS: usize = 5;
/// Clock difference between NATS and PostgreSQL tolerated by the retention check.
const CLOCK_MARGIN: time::Duration = time::Duration::minutes(5);

/// `ttfd rebuild` settings from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct RebuildArgs {
    /// Build into a scratch schema, compare it with the live tables, list the
    /// differences (exit code 1 when there are any), and change nothing.
    #[arg(long)]
    pub check: bool,
    /// How many differences of each kind `--check` lists.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(0..=100_000))]
    pub show: i64,
    /// Start from a snapshot schema made by `ttfd snapshot` (when the stream's
    /// retention removed the first events): its tables, then the retained stream. The
    /// rules of this configuration apply to the events after the snapshot only.
    #[arg(long, value_name = "SCHEMA")]
    pub from_snapshot: Option<String>,
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub enum RebuildOutcome {
    /// The fresh tables are live; the replaced ones are kept in schema `replaced`.
    Swapped { replaced: String, stats: BuildStats },
    /// `--check`: the comparison; nothing was changed.
    Checked {
        comparison: Comparison,
        stats: BuildStats,
    },
    /// Shutdown came first; nothing was changed and the fresh tables were dropped.
    Interrupted,
}

/// How much of the stream a build read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// The last stream sequence in the build.
    pub end: u64,
    pub messages: u64,
    pub applied: u64,
    pub duplicates: u64,
    /// Rejected messages left out (the live consumers dead-lettered them).
    pub skipped: u64,
}

impl fmt::Display for BuildStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} messages up to stream sequence {}: {} events applied, {} duplicates, {} rejected messages left out",
            self.messages, self.end, self.applied, self.duplicates, self.skipped
        )
    }
}

impl fmt::Display for RebuildOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RebuildOutcome::Swapped { replaced, stats } => write!(
                f,
                "rebuilt from {stats}.\nThe fresh tables are live. The replaced ones are kept in schema {replaced}; \
                 drop them with: DROP SCHEMA {replaced} CASCADE;"
            ),
            RebuildOutcome::Checked { comparison, stats } => {
                writeln!(f, "rebuilt (scratch) from {stats}.")?;
                let c = comparison;
                if c.is_same() {
                    return write!(
                        f,
                        "no difference: {} users live, {} rebuilt; ledgers equal; standings equal; \
                         audit equal",
                        c.live_users, c.rebuilt_users
                    );
                }
                writeln!(
                    f,
                    "DIFFERENCES: {} users differ ({} users live, {} rebuilt), {} ledger rows differ, \
                     {} standings differ, {} audit entries differ",
                    c.user_differences,
                    c.live_users,
                    c.rebuilt_users,
                    c.ledger_differences,
                    c.standing_differences,
                    c.audit_differences
                )?;
                for d in &c.users {
                    writeln!(f, "  {d}")?;
                }
                for d in &c.ledger {
                    writeln!(f, "  {d}")?;
                }
                for d in &c.standings {
                    writeln!(f, "  {d}")?;
                }
                for d in &c.audit {
                    writeln!(f, "  {d}")?;
                }
                let listed =
                    (c.users.len() + c.ledger.len() + c.standings.len() + c.audit.len()) as i64;
                let total = c.user_differences
                    + c.ledger_differences
                    + c.standing_differences
                    + c.audit_differences;
                if listed < total {
                    writeln!(f, "  ... and {} more", total - listed)?;
                }
                Ok(())
            }
            RebuildOutcome::Interrupted => write!(f, "rebuild interrupted; nothing was changed"),
        }
    }
}

/// `ttfd rebuild` (see the module documentation) over a live store and a broker
/// already connected; `settings` gives the
/// database URL for the fresh tables' connections, the batch size and the rules.
pub async fn rebuild_with(
    live: Store,
    broker: Broker,
    settings: &Settings,
    args: &RebuildArgs,
    show_progress: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<RebuildOutcome> {
    let guard = live.try_lock_rebuild().await?.context(
        "another `ttfd rebuild` (or --check) is running against this database; wait for it",
    )?;
    for stale in live.schemas_named(FRESH_PREFIX).await? {
        warn!(schema = %stale, "dropping the tables of an interrupted rebuild");
        live.drop_schema(&stale).await?;
    }
    check_migrations(&live).await?;
    let stream_name = broker.subjects.events_stream();
    let mut stream = broker
        .js
        .get_stream(&stream_name)
        .await
        .with_context(|| format!("the events stream {stream_name} is missing"))?;
    // What the database applied is read before the stream's state: events go on being
    // published and applied meanwhile, and the stream only grows, so it then holds at
    // least every event counted.
    let applied = match &args.from_snapshot {
        None => Some(live.applied_span().await?),
        Some(_) => None,
    };
    let state = stream
        .info()
        .await
        .context("cannot read the events stream")?
        .state
        .clone();
    match &args.from_snapshot {
        None => {
            if let Some(applied) = &applied {
                check_retained(&stream_name, &state, applied)?;
            }
        }
        Some(snapshot) => {
            let covers = live.snapshot_covers(snapshot).await?;
            if state.first_sequence > covers + 1 {
                bail!(
                    "cannot rebuild from snapshot {snapshot}: it holds the events up to stream \
                     sequence {covers}, but the events stream {stream_name} starts at {}: \
                     sequences {} to {} are lost. Use a newer snapshot",
                    state.first_sequence,
                    covers + 1,
                    state.first_sequence - 1
                );
            }
        }
    }

    let live_schema = live.current_schema().await?;
    let fresh_schema = format!("{FRESH_PREFIX}{}", crate::now_ms());
    let fresh = live
        .create_fresh(
            &settings.database,
            &fresh_schema,
            settings.rules.clone(),
            settings.database.max_connections,
        )
        .await
        .context("cannot create the fresh tables")?
        .without_standings();
    info!(schema = %fresh_schema, end = state.last_sequence, "rebuilding from the events stream");
    let build = Build {
        live: &live,
        fresh: &fresh,
        broker: &broker,
        stream: &stream,
        settings,
        counters: Arc::default(),
        shutdown: &shutdown,
    };
    let outcome = build
        .run(
            &live_schema,
            &fresh_schema,
            state.last_sequence,
            args,
            show_progress,
        )
        .await;
    fresh.pool.close().await;
    // The fresh schema now holds only what is not swapped (its outbox, its migration
    // record...), or everything when the rebuild did not swap.
    if let Err(e) = live.drop_schema(&fresh_schema).await {
        warn!(error = %e, schema = %fresh_schema, "cannot drop the rebuild's schema; drop it by hand");
    }
    release(guard).await;
    broker.flush_within(EXIT_FLUSH).await;
    outcome
}

struct Build<'a> {
    live: &'a Store,
    fresh: &'a Store,
    broker: &'a Broker,
    stream: &'a Stream,
    settings: &'a Settings,
    counters: Arc<Counters>,
    shutdown: &'a CancellationToken,
}

impl Build<'_> {
    async fn run(
        &self,
        live_schema: &str,
        fresh_schema: &str,
        mut end: u64,
        args: &RebuildArgs,
        show_progress: bool,
    ) -> anyhow::Result<RebuildOutcome> {
        let mut progress = Progress::new("rebuild", end, show_progress);
        let mut messages = 0;
        let result = async {
            if let Some(snapshot) = &args.from_snapshot {
                self.live
                    .seed_from_snapshot(snapshot, fresh_schema)
                    .await
                    .with_context(|| format!("cannot copy snapshot {snapshot}"))?;
                info!(snapshot = %snapshot, "started from the snapshot");
            }
            let seeded = self
                .live
                .seed_ids(live_schema, fresh_schema)
                .await
                .context("cannot seed the fresh tables with the live ids")?;
            info!(seeded, "live identity and user ids seeded");
            let erased = self
                .live
                .seed_forgotten(live_schema, fresh_schema)
                .await
                .context("cannot carry the erasures into the fresh tables")?;
            // 1. The whole stream as of now.
            if end > 0 {
                match self.phase(1, end, &mut progress).await? {
                    Delivery {
                        finish: Finish::Interrupted,
                        ..
                    } => return Ok(None),
                    d => messages += d.messages,
                }
            }
            // 2. What came meanwhile, without holding anything, until the tail is short.
            let short = self.settings.sync.batch_size as u64;
            for _ in 0..UNLOCKED_ROUNDS {
                let last = self.last_sequence().await?;
                if last <= end + short {
                    break;
                }
                progress.extend(last);
                match self.phase(end + 1, last, &mut progress).await? {
                    Delivery {
                        finish: Finish::Interrupted,
                        ..
                    } => return Ok(None),
                    d => messages += d.messages,
                }
                end = last;
            }
            // Erasures the fresh tables still hold (SPEC 7.4): from the snapshot, or from
            // forget events the stream still had.
            while crate::privacy::erase_pending(self.fresh, self.broker)
                .await
                .context("cannot finish the erasures in the fresh tables")?
                > 0
            {}
            if erased > 0 {
                info!(erased, "erasures carried into the fresh tables");
            }
            if !args.check {
                self.live.copy_grants(live_schema, fresh_schema).await?;
            }
            // 3. Writers paused: the last tail, then the swap or the comparison.
            let mut tx = self.live.lock_projections(live_schema).await?;
            // Ids the live tables handed out meanwhile stay theirs.
            self.live.align_sequences(live_schema, fresh_schema).await?;
            let last = self.last_sequence().await?;
            if last > end {
                progress.extend(last);
                match self.phase(end + 1, last, &mut progress).await? {
                    Delivery {
                        finish: Finish::Interrupted,
                        ..
                    } => return Ok(None),
                    d => messages += d.messages,
                }
                end = last;
            }
            let get = Counters::get;
            let stats = BuildStats {
                end,
                messages,
                applied: get(&self.counters.applied),
                duplicates: get(&self.counters.duplicates),
                skipped: get(&self.counters.skipped),
            };
            // The fresh standings, from the fresh users and ledger: the comparison checks
            // the live ones, kept incrementally, against them.
            self.fresh.recompute_standings().await?;
            if args.check {
                let mut comparison = self
                    .live
                    .compare_schemas(live_schema, fresh_schema, args.show)
                    .await?;
                // The live standings as of the locked tables: their refresher waits on
                // the lock, so this transaction finishes its work.
                refresh_all_in(&mut tx, standings::blocks::TARGET).await?;
                let (n, standings) =
                    compare_standings(&mut tx, live_schema, fresh_schema, args.show).await?;
                comparison.standing_differences = n;
                comparison.standings = standings;
                tx.rollback().await?;
                return Ok(Some(RebuildOutcome::Checked { comparison, stats }));
            }
            let replaced = format!("{REPLACED_PREFIX}{}", crate::now_ms());
            swap_in(&mut tx, live_schema, fresh_schema, &replaced).await?;
            tx.commit().await.context("the swap did not commit")?;
            info!(replaced = %replaced, "fresh tables swapped in");
            Ok::<_, anyhow::Error>(Some(RebuildOutcome::Swapped { replaced, stats }))
        }
        .await;
        progress.finish();
        Ok(result?.unwrap_or(RebuildOutcome::Interrupted))
    }

    /// Applies stream sequences `start..=end` to the fresh tables, through an ephemeral
    /// consumer of this phase.
    async fn phase(
        &self,
        start: u64,
        end: u64,
        progress: &mut Progress,
    ) -> anyhow::Result<Delivery> {
        let settings = &self.settings.sync;
        let config = pull::Config {
            description: Some("ttfd rebuild".into()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: i64::try_from(settings.batch_size * 4).unwrap_or(i64::MAX),
            filter_subject: format!("{}.events.>", self.broker.subjects.prefix()),
            inactive_threshold: Duration::from_secs(300),
            ..pull::Config::default()
        };
        let consumer = self
            .stream
            .create_consumer(config)
            .await
            .context("cannot create the rebuild's consumer")?;
        let name = consumer.cached_info().name.clone();
        let worker = SyncWorker::new(
            self.fresh.clone(),
            self.broker.clone(),
            consumer.clone(),
            settings.clone(),
        )
        .with_counters(self.counters.clone())
        .with_rejects(Rejects::Skip);
        let delivery = deliver(
            &worker,
            &consumer,
            &self.broker.client,
            settings.batch_size,
            end,
            0,
            progress,
            self.shutdown,
        )
        .await;
        if let Err(e) = self.stream.delete_consumer(&name).await {
            warn!(error = %e, "cannot delete the rebuild's consumer; the server drops it when idle");
        }
        delivery
    }

    async fn last_sequence(&self) -> anyhow::Result<u64> {
        let mut stream = self.stream.clone();
        Ok(stream
            .info()
            .await
            .context("cannot read the events stream")?
            .state
            .last_sequence)
    }
}

/// `ttfd snapshot`: copies the projections into `ttfd_snapshot_<unix ms>`, recording
/// the sync consumer's ack floor read first (every message up to it was applied, or
/// dead-lettered, before the copy began). Returns the schema and that sequence.
pub async fn snapshot_with(live: &Store, broker: &Broker) -> anyhow::Result<(String, u64)> {
    let covers = broker
        .sync_consumer()
        .await
        .context("cannot read the sync consumer (run `ttfd nats setup`)")?
        .cached_info()
        .ack_floor
        .stream_sequence;
    let schema = format!("{SNAPSHOT_PREFIX}{}", crate::now_ms());
    let live_schema = live.current_schema().await?;
    live.take_snapshot(&live_schema, &schema, covers)
        .await
        .context("cannot take the snapshot")?;
    Ok((schema, covers))
}

/// The fresh tables are made by this binary's migrations: they must be the live ones.
async fn check_migrations(live: &Store) -> anyhow::Result<()> {
    let applied = live.applied_migrations().await?;
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    if applied != known {
        bail!(
            "the database's migrations (latest {}) are not this ttfd's (latest {}): run \
             `ttfd migrate`, or rebuild with the ttfd version that matches the database",
            applied.last().copied().unwrap_or_default(),
            known.last().copied().unwrap_or_default()
        );
    }
    Ok(())
}

/// Refuses a rebuild when the stream no longer holds every event the database applied,
/// but for the messages erasures deleted (SPEC 7.4).
fn check_retained(stream: &str, state: &State, applied: &AppliedSpan) -> anyhow::Result<()> {
    let first_ts = state.first_timestamp.format(&Rfc3339).unwrap_or_default();
    let held = i64::try_from(state.messages).unwrap_or(i64::MAX);
    let lost =
        if i64::try_from(state.first_sequence).unwrap_or(i64::MAX) > applied.erased_prefix + 1 {
            Some(format!(
                "it starts at sequence {} (stored {first_ts}): sequences 1 to {} were removed by \
             its retention (max_age, max_msgs) or a purge",
                state.first_sequence,
                state.first_sequence - 1
            ))
        } else if applied.count > held.saturating_add(applied.erased) {
            Some(format!(
                "the database applied {} events, the stream holds {} messages",
                applied.count, state.messages
            ))
        } else {
            applied
                .oldest
                .filter(|oldest| {
                    state.messages > 0
                        && applied.erased_prefix == 0
                        && *oldest < state.first_timestamp - CLOCK_MARGIN
                })
                .map(|oldest| {
                    format!(
                        "the database applied events at {}, before the stream's first message \
                     was stored ({first_ts}): the stream was recreated or lost messages",
                        oldest.format(&Rfc3339).unwrap_or_default()
                    )
                })
        };
    match lost {
        None => Ok(()),
        Some(why) => bail!(
            "cannot rebuild: the events stream {stream} no longer holds the first events; {why}. \
             A rebuild recomputes everything from the stream and would lose them: start \
             from a snapshot taken since (`ttfd rebuild --from-snapshot <schema>`, see \
             docs/replay.md)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(first: u64, messages: u64, first_ts: time::OffsetDateTime) -> State {
        serde_json::from_value(serde_json::json!({
            "messages": messages, "bytes": 0, "first_seq": first,
            "first_ts": first_ts.format(&Rfc3339).expect("format"),
            "last_seq": first + messages.saturating_sub(1),
            "last_ts": first_ts.format(&Rfc3339).expect("format"),
            "consumer_count": 1,
        }))
        .expect("a stream state")
    }

    #[test]
    fn the_retention_check_refuses_a_stream_that_lost_its_first_events() {
        let t = time::macros::datetime!(2026-11-26 08:00:00 UTC);
        let span = |count, oldest| AppliedSpan {
            count,
            oldest,
            erased: 0,
            erased_prefix: 0,
        };
        assert!(check_retained("S", &state(1, 10, t), &span(10, Some(t))).is_ok());
        assert!(check_retained("S", &state(0, 0, t), &span(0, None)).is_ok());
        let trimmed = check_retained("S", &state(4, 10, t), &span(3, Some(t)))
            .expect_err("refused")
            .to_string();
        assert!(
            trimmed.contains("sequences 1 to 3 were removed"),
            "{trimmed}"
        );
        let fewer = check_retained("S", &state(1, 2, t), &span(3, Some(t)))
            .expect_err("refused")
            .to_string();
        assert!(fewer.contains("applied 3 events"), "{fewer}");
        let older = check_retained(
            "S",
            &state(1, 10, t),
            &span(3, Some(t - time::Duration::hours(1))),
        )
        .expect_err("refused")
        .to_string();
        assert!(older.contains("recreated"), "{older}");
    }
}
