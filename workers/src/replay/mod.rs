//! `ttfd replay` and `ttfd rebuild` ([`rebuild`]): the events stream delivered again
//! through the sync consumers' own batch path ([`SyncWorker::handle_batch`]: the same
//! validation, dead-lettering, apply and idempotency record). User guide:
//! docs/replay.md.
//!
//! A replay reads the stream through a durable consumer of its own, named after its
//! start (`<prefix>-replay-seq-<n>` or `<prefix>-replay-ms-<unix ms>`), never through
//! the shared `<prefix>-sync` consumer, so `ttfd sync` replicas run on undisturbed. It
//! ends at the stream's last sequence as of its first start, which the consumer's
//! description records. Interrupted (signal, crash), it resumes from the consumer's ack
//! floor when run again with the same `--since`; the consumer is deleted once the
//! replay is complete, or by the server after [`REPLAY_CONSUMER_IDLE`] unused.
//!
//! Reads `database.*`, `nats.*`, `sync.*` (batch size, retry delays, grace) and
//! `rules.*`.

pub mod rebuild;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::settings::Settings;
use crate::store::Store;
use crate::sync::{Counters, SyncWorker};

/// How long an abandoned replay's consumer (and its ack floor) is kept by the server.
pub const REPLAY_CONSUMER_IDLE: Duration = Duration::from_secs(7 * 86_400);

/// Where a replay starts: a time (the first message stored at or after it) or a stream
/// sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Time(OffsetDateTime),
    Sequence(u64),
}

impl FromStr for Since {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(seq) = s.parse::<u64>() {
            return if seq == 0 {
                Err("stream sequences start at 1".into())
            } else {
                Ok(Since::Sequence(seq))
            };
        }
        OffsetDateTime::parse(s, &Rfc3339)
            .map(Since::Time)
            .map_err(|_| {
                format!(
                    "{s:?} is neither an RFC 3339 time (2026-11-26T08:00:00Z) nor a stream sequence"
                )
            })
    }
}

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Since::Sequence(n) => write!(f, "stream sequence {n}"),
            Since::Time(t) => write!(f, "{}", t.format(&Rfc3339).map_err(|_| fmt::Error)?),
        }
    }
}

impl Since {
    /// The name of the durable consumer of a replay from here: the same start, the same
    /// consumer, so that a second run resumes the first.
    pub fn consumer_name(&self, prefix: &str) -> String {
        match self {
            Since::Sequence(n) => format!("{prefix}-replay-seq-{n}"),
            Since::Time(t) => format!(
                "{prefix}-replay-ms-{}",
                t.unix_timestamp_nanos() / 1_000_000
            ),
        }
    }

    fn deliver_policy(&self) -> DeliverPolicy {
        match *self {
            Since::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            Since::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
        }
    }
}

/// `ttfd replay` settings from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Where to start: an RFC 3339 time (e.g. the time of the backup that was restored,
    /// minus a margin) or a stream sequence.
    #[arg(long)]
    pub since: Since,
    /// Replay even when the stream no longer holds every message since then (retention
    /// removed some): what is gone stays missing.
    #[arg(long)]
    pub allow_gap: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// The consumer it read through.
    pub consumer: String,
    /// Whether it went on from an earlier, interrupted run.
    pub resumed: bool,
    /// The stream sequence it ends at (the last one when it first started).
    pub end: u64,
    /// The consumer's ack floor when this run started: sequences up to it were done.
    pub from: u64,
    /// Whether it reached `end` (else it was interrupted and can be resumed).
    pub complete: bool,
    pub messages: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.complete {
            "complete"
        } else {
            "interrupted: run the same command again to resume"
        };
        write!(
            f,
            "replay {state}: {} messages up to stream sequence {} ({} applied, {} already applied, {} dead-lettered){}",
            self.messages,
            self.end,
            self.applied,
            self.duplicates,
            self.dead_lettered,
            if self.resumed {
                format!("; resumed after sequence {}", self.from)
            } else {
                String::new()
            }
        )
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Every message up to the end sequence was handled and acked.
    Reached,
    /// Shutdown came first.
    Interrupted,
}

/// What a delivery did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery {
    pub finish: Finish,
    /// Messages handed to the batch path.
    pub messages: u64,
}

/// A progress bar on stderr (drawn only on a terminal) and a log line every few seconds
/// for the machines that read logs instead.
pub(crate) struct Progress {
    bar: ProgressBar,
    what: &'static str,
    logged: Instant,
}

impl Progress {
    pub(crate) fn new(what: &'static str, len: u64, visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, ETA {eta})",
            )
            .expect("the template is valid"),
        );
        bar.set_message(what);
        Self {
            bar,
            what,
            logged: Instant::now(),
        }
    }

    pub(crate) fn set(&mut self, pos: u64) {
        self.bar.set_position(pos);
        if self.logged.elapsed() >= Duration::from_secs(10) {
            self.logged = Instant::now();
            info!(
                what = self.what,
                done = pos,
                of = self.bar.length().unwrap_or_default(),
                "progress"
            );
        }
    }

    pub(crate) fn extend(&self, len: u64) {
        self.bar.set_length(len);
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Pulls `consumer`'s messages and hands them, a batch at a time, to `worker`, until
/// every message up to stream sequence `end` is handled and acked (the consumer's ack
/// floor reached `end`) or `shutdown`. Messages past `end` are left unacked (not
/// applied): the live consumers apply them. Progress counts stream sequences past
/// `base`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn deliver(
    worker: &SyncWorker,
    consumer: &PullConsumer,
    client: &async_nats::Client,
    batch: usize,
    end: u64,
    base: u64,
    progress: &mut Progress,
    shutdown: &CancellationToken,
) -> anyhow::Result<Delivery> {
    let mut messages = 0;
    let stop = |finish, messages| Ok(Delivery { finish, messages });
    loop {
        if shutdown.is_cancelled() {
            return stop(Finish::Interrupted, messages);
        }
        let mut fetched = consumer
            .batch()
            .max_messages(batch)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .context("cannot pull from the events stream")?;
        let mut msgs: Vec<jetstream::Message> = Vec::with_capacity(batch);
        let mut top = 0;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Hand back what was fetched, for the next run to get at once.
                    for m in &msgs {
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                    }
                    return stop(Finish::Interrupted, messages);
                }
                next = fetched.next() => next,
            };
            let Some(next) = next else { break };
            match next {
                Ok(m) => {
                    let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
                    top = top.max(seq);
                    if seq <= end {
                        msgs.push(m);
                    }
                }
                Err(e) => debug!(error = %e, "pull notice"),
            }
        }
        let count = msgs.len() as u64;
        if !msgs.is_empty() {
            if worker.handle_batch(msgs, shutdown).await.is_err() {
                return stop(Finish::Interrupted, messages);
            }
            messages += count;
        }
        progress.set(top.min(end).saturating_sub(base));
        if top >= end || top == 0 {
            // At the end, or nothing came: the ack floor says whether anything up to
            // `end` is still out (redelivered after its ack wait).
            let _ = client.flush().await;
            let info = consumer
                .get_info()
                .await
                .context("cannot read the replay consumer's state")?;
            if info.ack_floor.stream_sequence >= end
                || (info.num_pending == 0 && info.num_ack_pending == 0)
            {
                progress.set(end.saturating_sub(base));
                return stop(Finish::Reached, messages);
            }
        }
    }
}

/// `ttfd replay` (see the module documentation), over a store and a broker already
/// connected.
pub async fn replay_with(
    store: Store,
    broker: Broker,
    settings: &Settings,
    args: &ReplayArgs,
    show_progress: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<ReplayReport> {
    let stream_name = broker.subjects.events_stream();
    let mut stream = broker
        .js
        .get_stream(&stream_name)
        .await
        .with_context(|| format!("the events stream {stream_name} is missing"))?;
    let state = stream
        .info()
        .await
        .context("cannot read the events stream")?
        .state
        .clone();
    let name = args.since.consumer_name(broker.subjects.prefix());
    let (consumer, resumed, end) = match stream.get_consumer::<pull::Config>(&name).await {
        Ok(consumer) => {
            let end = consumer
                .cached_info()
                .config
                .description
                .as_deref()
                .and_then(end_of_description)
                .with_context(|| format!("consumer {name} is not a replay's; delete it"))?;
            (consumer, true, end)
        }
        Err(_) => {
            check_gap(&args.since, &state, args.allow_gap)?;
            let end = state.last_sequence;
            if state.messages == 0 || matches!(args.since, Since::Sequence(s) if s > end) {
                info!("nothing to replay");
                return Ok(ReplayReport {
                    consumer: name,
                    end,
                    from: end,
                    complete: true,
                    ..ReplayReport::default()
                });
            }
            let config = pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("ttfd replay since {}; {END_MARK}{end}", args.since)),
                deliver_policy: args.since.deliver_policy(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: i64::try_from(settings.sync.batch_size * 4).unwrap_or(i64::MAX),
                filter_subject: format!("{}.events.>", broker.subjects.prefix()),
                inactive_threshold: REPLAY_CONSUMER_IDLE,
                ..pull::Config::default()
            };
            let consumer = stream
                .create_consumer(config)
                .await
                .with_context(|| format!("cannot create the replay consumer {name}"))?;
            (consumer, false, end)
        }
    };
    let from = consumer
        .get_info()
        .await
        .context("cannot read the replay consumer's state")?
        .ack_floor
        .stream_sequence;
    info!(consumer = %name, resumed, from, end, "replaying the events stream");
    let counters = Arc::new(Counters::default());
    let worker = SyncWorker::new(
        store.clone(),
        broker.clone(),
        consumer.clone(),
        settings.sync.clone(),
    )
    .with_counters(counters.clone());
    let mut progress = Progress::new("replay", end.saturating_sub(from), show_progress);
    let delivery = deliver(
        &worker,
        &consumer,
        &broker.client,
        settings.sync.batch_size,
        end,
        from,
        &mut progress,
        &shutdown,
    )
    .await;
    progress.finish();
    let Delivery { finish, messages } = delivery?;
    // What was applied reaches the leaderboards now, sync replicas running or not.
    store
        .drain_standings()
        .await
        .context("cannot bring the standings up to date")?;
    if finish == Finish::Reached
        && let Err(e) = stream.delete_consumer(&name).await
    {
        warn!(error = %e, consumer = %name, "cannot delete the finished replay's consumer; the server drops it when idle");
    }
    broker.flush_within(crate::broker::EXIT_FLUSH).await;
    let get = Counters::get;
    Ok(ReplayReport {
        consumer: name,
        resumed,
        end,
        from,
        complete: finish == Finish::Reached,
        messages,
        applied: get(&counters.applied),
        duplicates: get(&counters.duplicates),
        dead_lettered: get(&counters.dead_lettered),
    })
}

/// The replay consumer's description ends with this and the end sequence.
const END_MARK: &str = "ends at stream sequence ";

fn end_of_description(description: &str) -> Option<u64> {
    let at = description.rfind(END_MARK)?;
    description[at + END_MARK.len()..].trim().parse().ok()
}

/// Refuses a replay from a point the stream no longer holds, unless `allow_gap`.
fn check_gap(
    since: &Since,
    state: &jetstream::stream::State,
    allow_gap: bool,
) -> anyhow::Result<()> {
    // Sequences 1..first were removed (retention, max_msgs, purge) when first > 1.
    let trimmed = state.first_sequence > 1;
    let gap = match *since {
        Since::Sequence(s) => trimmed && s < state.first_sequence,
        Since::Time(t) => trimmed && t < state.first_timestamp,
    };
    if !gap {
        return Ok(());
    }
    let first_ts = state.first_timestamp.format(&Rfc3339).unwrap_or_default();
    let message = format!(
        "the events stream no longer holds every message since {since}: it starts at \
         sequence {} (stored {first_ts}); older messages were removed by its retention",
        state.first_sequence
    );
    if allow_gap {
        warn!("{message}; replaying what is left (--allow-gap)");
        Ok(())
    } else {
        bail!("{message}. Replay from a later point, or pass --allow-gap to replay what is left")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_a_sequence_or_an_rfc3339_time() {
        assert_eq!("42".parse::<Since>(), Ok(Since::Sequence(42)));
        let t: Since = "2026-11-26T08:00:00Z".parse().expect("a time");
        assert_eq!(
            t,
            Since::Time(time::macros::datetime!(2026-11-26 08:00:00 UTC))
        );
        assert!("0".parse::<Since>().is_err());
        let err = "yesterday".parse::<Since>().expect_err("refused");
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn the_consumer_is_named_after_the_start() {
        let t: Since = "2026-11-26T08:00:00.5+01:00".parse().expect("a time");
        assert_eq!(t.consumer_name("ttfd"), "ttfd-replay-ms-1795676400500");
        assert_eq!(Since::Sequence(7).consumer_name("x"), "x-replay-seq-7");
    }

    #[test]
    fn the_end_is_read_back_from_the_description() {
        let d = format!("ttfd replay since stream sequence 3; {END_MARK}991");
        assert_eq!(end_of_description(&d), Some(991));
        assert_eq!(end_of_description("something else"), None);
    }
}
