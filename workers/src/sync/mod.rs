//! The sync consumer role (`ttfd sync`): pulls batches from the shared durable consumer,
//! validates, dead-letters what is invalid, applies the rest in one transaction per
//! batch, commits, then acks. Also runs the outbox relay and the pruning of the
//! idempotency record.
//!
//! Failure handling, decided in one place ([`SyncWorker::retrying`]):
//! - transient (database or NATS unavailable, deadlock, concurrent merge): the same
//!   batch is retried in-process with exponential backoff (`backon`) while its messages
//!   are kept in progress, for as long as it takes; nothing is dropped;
//! - an error about the work itself: the batch is split in halves until the event at
//!   fault is alone, and that event is dead-lettered (`apply_failed`);
//! - a process that dies: JetStream redelivers after `ack_wait`, with the consumer's
//!   backoff, and the idempotency record makes the second apply a no-op.
//!
//! The batch path ([`SyncWorker::handle_batch`]) is also that of `ttfd replay` and
//! `ttfd rebuild` (`replay/`), over consumers of their own.
//!
//! Reads the `sync.*` settings.

pub mod relay;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, debug_span, error, info, instrument, warn};
use ttfd_shared::Event;
use ttfd_shared::trust;
use ttfd_shared::wire::{self, Rejection};

pub use relay::{publish_notices, relay_outbox};

use crate::broker::{Broker, ERROR_HEADER};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::observe::{self, Readiness, sync::SyncMetrics};
use crate::settings::{Settings, SyncSettings};
use crate::store::standings::{Pacing, Turn};
use crate::store::{DeadLetter, Store, StoreError};

/// Counters of what the consumers did, shared by every worker of a process.
#[derive(Debug, Default)]
pub struct Counters {
    pub batches: AtomicU64,
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub rank_changes: AtomicU64,
    pub merges: AtomicU64,
    pub retries: AtomicU64,
    /// Rejected messages left out without dead-lettering ([`Rejects::Skip`]).
    pub skipped: AtomicU64,
    /// Standings refresh rounds that found work, by this worker's refresher.
    pub standings_rounds: AtomicU64,
    /// Time those rounds took, in µs, as the refresher saw them (a recompute they asked
    /// for included).
    pub standings_us: AtomicU64,
    /// The longest a change waited to reach the leaderboards, in µs
    /// ([`crate::store::standings::Refreshed::lag`]).
    pub standings_lag_max_us: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A batch given up at shutdown (rolled back; its messages were handed back with a nak).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

/// What to do with messages that cannot be applied (invalid, or failing on their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rejects {
    /// Publish them to the dead-letter stream and count them (`ttfd sync`, `ttfd replay`).
    /// A message already counted there (seen before: redelivery, replay) is not
    /// published again.
    #[default]
    DeadLetter,
    /// Only count them in [`Counters::skipped`] (`ttfd rebuild`: the live consumers
    /// dead-lettered them when they first came).
    Skip,
}

/// Why a batch did not complete.
enum Stop<E> {
    /// Shutdown came and the grace period ran out: the batch was rolled back.
    Abandoned,
    /// An error that retrying cannot fix.
    Failed(E),
}

/// One sync consumer: a loop over batches of the shared durable consumer.
pub struct SyncWorker {
    store: Store,
    broker: Broker,
    consumer: PullConsumer,
    settings: SyncSettings,
    pub counters: Arc<Counters>,
    /// The same facts as `counters`, as Prometheus metrics (`ttfd_sync_*`).
    metrics: SyncMetrics,
    relay_wake: Arc<Notify>,
    /// Woken when a batch applied something: the standings refresher's cue.
    standings_wake: Arc<Notify>,
    rejects: Rejects,
    /// Receives, per committed message, the time from its storage in the stream to its
    /// ack (used by `ttfd bench`).
    latency: Option<mpsc::UnboundedSender<Duration>>,
}

impl SyncWorker {
    pub fn new(
        store: Store,
        broker: Broker,
        consumer: PullConsumer,
        settings: SyncSettings,
    ) -> Self {
        Self {
            store,
            broker,
            consumer,
            settings,
            counters: Arc::default(),
            metrics: SyncMetrics::default(),
            relay_wake: Arc::default(),
            standings_wake: Arc::default(),
            rejects: Rejects::default(),
            latency: None,
        }
    }

    pub fn with_rejects(mut self, rejects: Rejects) -> Self {
        self.rejects = rejects;
        self
    }

    pub fn with_counters(mut self, counters: Arc<Counters>) -> Self {
        self.counters = counters;
        self
    }

    pub fn with_metrics(mut self, metrics: SyncMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn with_relay_wake(mut self, wake: Arc<Notify>) -> Self {
        self.relay_wake = wake;
        self
    }

    pub fn with_latency(mut self, tx: mpsc::UnboundedSender<Duration>) -> Self {
        self.latency = Some(tx);
        self
    }

    /// Runs until `shutdown` is cancelled: the batch in flight then gets the grace period
    /// to commit and ack; messages fetched but not started are handed back (nak). Beside
    /// it runs the standings refresher, when the store keeps standings.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let refresher = self.store.keeps_standings().then(|| {
            tokio::spawn(refresh_standings(
                self.store.clone(),
                self.standings_wake.clone(),
                Pacing::of(&self.settings),
                self.counters.clone(),
                self.metrics.clone(),
                shutdown.child_token(),
            ))
        });
        let eraser = tokio::spawn(erase(
            self.store.clone(),
            self.broker.clone(),
            ERASE_EVERY,
            shutdown.child_token(),
        ));
        let result = self.consume(&shutdown).await;
        for task in refresher.into_iter().chain([eraser]) {
            task.abort();
            let _ = task.await;
        }
        result
    }

    async fn consume(self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let batch = self.settings.batch_size;
        while !shutdown.is_cancelled() {
            let messages = self
                .consumer
                .stream()
                .max_messages_per_batch(batch * 2)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await;
            let messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "cannot pull from the sync consumer; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let mut messages = messages;
            let linger = Duration::from_millis(self.settings.batch_linger_ms);
            loop {
                let first = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        // Hand back what was fetched but not started.
                        while let Some(Some(Ok(m))) = messages.next().now_or_never() {
                            let _ = m.ack_with(AckKind::Nak(None)).await;
                        }
                        break;
                    }
                    first = messages.next() => first,
                };
                let Some(first) = first else {
                    warn!("pull stream ended; reopening");
                    break;
                };
                // Gather a batch: what is already buffered, and what arrives within the
                // linger time, up to the batch size.
                let mut items = vec![first];
                let deadline = tokio::time::sleep(linger);
                tokio::pin!(deadline);
                while items.len() < batch {
                    let next = match messages.next().now_or_never() {
                        Some(next) => next,
                        None => tokio::select! {
                            next = messages.next() => next,
                            _ = &mut deadline => break,
                        },
                    };
                    match next {
                        Some(item) => items.push(item),
                        None => break,
                    }
                }
                let mut msgs = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Ok(m) => msgs.push(m),
                        Err(e) => debug!(error = %e, "pull stream notice"),
                    }
                }
                if msgs.is_empty() {
                    continue;
                }
                if self.handle(msgs, shutdown).await.is_err() {
                    info!("batch abandoned at shutdown; it will be redelivered");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Validates, dead-letters, applies and acks one batch of messages from any consumer
    /// of the events stream: the one path of `ttfd sync`, `ttfd replay` and
    /// `ttfd rebuild`.
    pub async fn handle_batch(
        &self,
        msgs: Vec<jetstream::Message>,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        self.handle(msgs, shutdown).await.map_err(|()| Abandoned)
    }

    /// The event if its publisher may make its claim (`trust.mode = signed`: judged by
    /// its signature, docs/security.md), else why not.
    fn admit(&self, m: &jetstream::Message, event: Event) -> Result<Event, Rejection> {
        let sequence = || m.info().map_or(u64::MAX, |i| i.stream_sequence);
        let judged =
            self.broker
                .trust
                .judge(m.headers.as_ref(), m.subject.as_str(), &m.payload, sequence);
        match judged {
            Some(publisher) => trust::admit(publisher, &event).map(|()| event),
            None => Ok(event),
        }
    }

    /// Validates, dead-letters, applies, acks one batch. `Err` only when abandoned.
    #[instrument(skip_all, fields(messages = msgs.len()))]
    async fn handle(
        &self,
        msgs: Vec<jetstream::Message>,
        shutdown: &CancellationToken,
    ) -> Result<(), ()> {
        let now = now_ms();
        let subjects = &self.broker.subjects;
        let mut good: Vec<Event> = Vec::with_capacity(msgs.len());
        // The message each good event came from, by position in `good`.
        let mut origin: Vec<usize> = Vec::with_capacity(msgs.len());
        let mut bad: Vec<(usize, Rejection)> = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let decoded = subjects
                .parse_event(m.subject.as_str())
                .ok_or_else(|| {
                    Rejection::new(
                        "bad_subject",
                        "subject must be <prefix>.events.<platform>.<kind>",
                    )
                })
                .and_then(|tokens| wire::decode(&m.payload, tokens, now))
                .and_then(|e| self.admit(m, e));
            match decoded {
                Ok(e) => {
                    origin.push(i);
                    good.push(e);
                }
                Err(r) => bad.push((i, r)),
            }
        }

        let poisoned = self.apply_isolating(&good, &msgs, shutdown).await?;
        for (id, reason) in poisoned {
            if let Some(at) = good.iter().position(|e| e.id.as_str() == id) {
                bad.push((origin[at], Rejection::new("apply_failed", reason)));
            }
        }
        if !bad.is_empty() {
            match self.rejects {
                Rejects::DeadLetter => self.dead_letter(&msgs, &bad, shutdown).await?,
                Rejects::Skip => {
                    self.counters
                        .skipped
                        .fetch_add(bad.len() as u64, Ordering::Relaxed);
                }
            }
        }

        for m in &msgs {
            if let Err(e) = m.ack().await {
                // Redelivery follows; the idempotency record absorbs it.
                warn!(error = %e, "ack failed");
            }
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.metrics.batch_events.observe(msgs.len() as f64);
        if let Some(tx) = &self.latency {
            let now = time::OffsetDateTime::now_utc();
            for m in &msgs {
                if let Ok(info) = m.info() {
                    let _ = tx.send((now - info.published).try_into().unwrap_or_default());
                }
            }
        }
        Ok(())
    }

    /// Applies `events`; on an error retrying cannot fix, splits the batch to find the
    /// event(s) at fault and returns them with the reason, applying all others.
    fn apply_isolating<'a>(
        &'a self,
        events: &'a [Event],
        msgs: &'a [jetstream::Message],
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, ()>> {
        // The span names the batch's first and last event ids; at debug level every id
        // is logged with its outcome. Off by default, so it costs nothing then.
        let span = debug_span!(
            "apply",
            events = events.len(),
            first = events.first().map(|e| e.id.as_str()),
            last = events.last().map(|e| e.id.as_str()),
        );
        Box::pin(async move {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let outcome = self
                .retrying("apply", msgs, shutdown, StoreError::is_transient, || async {
                    let started = std::time::Instant::now();
                    let applied = self.store.apply(events).await;
                    if applied.is_ok() {
                        self.metrics
                            .apply_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                    applied
                })
                .await;
            match outcome {
                Ok(a) => {
                    self.metrics
                        .record_applied(events, a.applied, a.duplicates);
                    self.metrics.rank_changes.inc_by(a.rank_changes as u64);
                    self.metrics.merges.inc_by(a.merges as u64);
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        for e in events {
                            debug!(event = e.id.as_str(), platform = e.identity.platform.as_str(), kind = e.kind(), "event applied (or a duplicate)");
                        }
                    }
                    let c = &self.counters;
                    c.applied.fetch_add(a.applied as u64, Ordering::Relaxed);
                    c.duplicates
                        .fetch_add(a.duplicates as u64, Ordering::Relaxed);
                    c.rank_changes
                        .fetch_add(a.rank_changes as u64, Ordering::Relaxed);
                    c.merges.fetch_add(a.merges as u64, Ordering::Relaxed);
                    if a.rank_changes + a.merges > 0 {
                        self.relay_wake.notify_one();
                    }
                    if a.applied > 0 {
                        self.standings_wake.notify_one();
                    }
                    Ok(Vec::new())
                }
                Err(Stop::Abandoned) => Err(()),
                Err(Stop::Failed(e)) if events.len() == 1 => {
                    error!(event = events[0].id.as_str(), error = %e, "event cannot be applied; dead-lettering it");
                    Ok(vec![(events[0].id.as_str().to_owned(), e.to_string())])
                }
                Err(Stop::Failed(e)) => {
                    warn!(error = %e, events = events.len(), "batch failed; splitting it to isolate the cause");
                    let (left, right) = events.split_at(events.len() / 2);
                    let mut bad = self.apply_isolating(left, msgs, shutdown).await?;
                    bad.extend(self.apply_isolating(right, msgs, shutdown).await?);
                    Ok(bad)
                }
            }
        }
        .instrument(span))
    }

    /// Publishes rejected messages to the dead-letter stream (original bytes, reason in
    /// `Ttfd-Error`, deduplicated by stream sequence) and counts them.
    async fn dead_letter(
        &self,
        msgs: &[jetstream::Message],
        bad: &[(usize, Rejection)],
        shutdown: &CancellationToken,
    ) -> Result<(), ()> {
        let subjects = &self.broker.subjects;
        let seq_of = |m: &jetstream::Message| {
            m.info()
                .map(|info| info.stream_sequence)
                .unwrap_or_default()
        };
        // Counted means published before (the count follows the publish): a redelivered
        // or replayed message is not put on the dead-letter stream twice.
        let seqs: Vec<u64> = bad.iter().map(|(i, _)| seq_of(&msgs[*i])).collect();
        let counted = match self
            .retrying(
                "dead-letter lookup",
                msgs,
                shutdown,
                StoreError::is_transient,
                || self.store.counted_dead_letters(&seqs),
            )
            .await
        {
            Ok(counted) => counted,
            Err(Stop::Abandoned) => return Err(()),
            Err(Stop::Failed(e)) => {
                warn!(error = %e, "cannot look up counted dead letters; publishing all");
                Default::default()
            }
        };
        let mut letters = Vec::with_capacity(bad.len());
        let mut outgoing = Vec::with_capacity(bad.len());
        for (i, reason) in bad {
            let m = &msgs[*i];
            let seq = seq_of(m);
            if counted.contains(&seq) {
                debug!(seq, "already dead-lettered");
                continue;
            }
            let (platform, kind) = subjects
                .parse_event(m.subject.as_str())
                .map(|(p, k)| (token(p), token(k)))
                .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
            let event = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned());
            let _span = debug_span!("dead_letter", seq, event).entered();
            warn!(seq, platform, kind, reason = %reason, "dead-lettering an event");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(ERROR_HEADER, header_value(&reason.to_string()).as_str());
            headers.insert("Ttfd-Subject", header_value(m.subject.as_str()).as_str());
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("dlq:{seq}").as_str(),
            );
            outgoing.push((subjects.dlq(&platform, &kind), headers, m.payload.clone()));
            letters.push(DeadLetter {
                stream_seq: seq,
                platform,
                kind,
                code: reason.code,
            });
        }
        if letters.is_empty() {
            return Ok(());
        }
        let js = &self.broker.js;
        self.retrying(
            "dead-letter publish",
            msgs,
            shutdown,
            |_| true,
            || async {
                let mut acks = Vec::with_capacity(outgoing.len());
                for (subject, headers, payload) in &outgoing {
                    acks.push(
                        js.publish_with_headers(
                            subject.clone(),
                            headers.clone(),
                            Bytes::clone(payload),
                        )
                        .await?,
                    );
                }
                for ack in acks {
                    ack.await?;
                }
                Ok::<_, async_nats::Error>(())
            },
        )
        .await
        .map_err(|_| ())?;
        let counted = self
            .retrying(
                "dead-letter count",
                msgs,
                shutdown,
                StoreError::is_transient,
                || self.store.record_dead_letters(&letters),
            )
            .await;
        match counted {
            Ok(n) => {
                self.counters
                    .dead_lettered
                    .fetch_add(n as u64, Ordering::Relaxed);
                // Counted once per stream sequence, like the table: a redelivered
                // letter (n < letters) is not counted again.
                for letter in letters.iter().take(n) {
                    self.metrics
                        .record_dead_lettered(&letter.platform, &letter.kind, 1);
                }
                Ok(())
            }
            Err(Stop::Abandoned) => Err(()),
            Err(Stop::Failed(e)) => {
                // The letters are on the dead-letter stream; only the tally is missing.
                error!(error = %e, "cannot count dead letters");
                Ok(())
            }
        }
    }

    /// Runs `op` until it succeeds or fails for good, with exponential backoff between
    /// transient failures, keeping `msgs` in progress meanwhile. Shutdown gives the
    /// attempt in flight the grace period, then abandons it: the messages are nak'ed.
    async fn retrying<T, E, Fut>(
        &self,
        what: &'static str,
        msgs: &[jetstream::Message],
        shutdown: &CancellationToken,
        transient: impl Fn(&E) -> bool,
        op: impl FnMut() -> Fut,
    ) -> Result<T, Stop<E>>
    where
        E: std::fmt::Display,
        Fut: Future<Output = Result<T, E>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_secs(self.settings.max_retry_delay_secs))
            .with_jitter()
            .without_max_times();
        let work = op
            .retry(backoff)
            .when(|e| transient(e) && !shutdown.is_cancelled())
            .notify(|e, delay| {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                self.metrics.retries.inc();
                warn!(error = %e, ?delay, "{what} failed; retrying");
            });
        tokio::pin!(work);
        let grace = self.settings.shutdown_grace_secs;
        let abandon = async {
            shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_secs(grace)).await;
        };
        tokio::pin!(abandon);
        let mut keep_alive = tokio::time::interval(Duration::from_secs(10));
        keep_alive.tick().await;
        loop {
            tokio::select! {
                result = &mut work => {
                    return match result {
                        Ok(v) => Ok(v),
                        Err(_) if shutdown.is_cancelled() => {
                            nak_all(msgs).await;
                            Err(Stop::Abandoned)
                        }
                        Err(e) => Err(Stop::Failed(e)),
                    };
                }
                _ = keep_alive.tick() => {
                    for m in msgs {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                }
                _ = &mut abandon => {
                    nak_all(msgs).await;
                    return Err(Stop::Abandoned);
                }
            }
        }
    }
}

async fn nak_all(msgs: &[jetstream::Message]) {
    for m in msgs {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
}

/// A subject token safe to reuse in the dead-letter subject.
fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "unknown".into() } else { t }
}

/// A header value on one line, bounded.
fn header_value(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect()
}

/// `ttfd sync`: one replica of the sync consumer group, with its outbox relay and the
/// pruning of the idempotency record, until `shutdown`.
pub async fn run(
    settings: &Settings,
    store: Store,
    broker: Broker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer = broker.sync_consumer().await.with_context(|| {
        format!(
            "the sync consumer of stream {} is missing; run `ttfd nats setup`",
            broker.subjects.events_stream()
        )
    })?;
    let registry = Metrics::new();
    let metrics = SyncMetrics::register(&registry);
    let readiness = Readiness::new()
        .database(store.clone())
        .nats(broker.clone());
    observe::serve(&settings.metrics, registry, readiness, shutdown.clone()).await?;
    let wake = Arc::new(Notify::new());
    let tasks = TaskTracker::new();
    tasks.spawn(observe::sync::watch_backlog(
        consumer.clone(),
        store.clone(),
        metrics.clone(),
        Duration::from_secs(5),
        shutdown.clone(),
    ));
    tasks.spawn(relay_outbox(
        store.clone(),
        broker.clone(),
        wake.clone(),
        Duration::from_millis(settings.sync.relay_poll_ms),
        shutdown.clone(),
    ));
    tasks.spawn(prune(
        store.clone(),
        broker.clone(),
        Duration::from_secs(settings.sync.prune_interval_secs),
        shutdown.clone(),
    ));
    // This replica's seasons are the ones in force (docs/seasons.md); a change queues
    // the standings' recomputation.
    let seasons = crate::settings::seasons::seasons(&settings.seasons)?;
    if store.configure_seasons(&seasons).await? {
        info!(
            seasons = seasons.iter().count(),
            "seasons changed: standings recomputed"
        );
    }
    tasks.spawn(close_seasons(
        store.clone(),
        settings.champions.clone(),
        wake.clone(),
        shutdown.clone(),
    ));
    tasks.close();
    info!(
        stream = broker.subjects.events_stream(),
        "sync consumer running"
    );
    let result = SyncWorker::new(store, broker.clone(), consumer, settings.sync.clone())
        .with_relay_wake(wake)
        .with_metrics(metrics)
        .run(shutdown.clone())
        .await;
    shutdown.cancel();
    tasks.wait().await;
    result
}

/// What `[champions]` closes, with how many champions and rewards.
fn closing_rules(
    c: &crate::settings::seasons::ChampionSettings,
) -> crate::store::seasons::ClosingRules {
    use crate::store::seasons::{Champions, ClosingRules};
    let of = |top: u32, xp: &[i32]| Champions {
        top,
        rewards: xp.to_vec(),
    };
    ClosingRules {
        season: of(c.top, &c.xp),
        week: c.week.as_ref().map(|p| of(p.top, &p.xp)),
        month: c.month.as_ref().map(|p| of(p.top, &p.xp)),
    }
}

/// How often a replica looks for seasons to close.
const CLOSE_EVERY: Duration = Duration::from_secs(60);

/// Closes every season that is over (`Store::close_seasons`; docs/seasons.md): at
/// start-up, which catches up after downtime, then every [`CLOSE_EVERY`]. Each replica
/// runs it; the database lets one close each season. The closing's notice goes out by
/// the outbox relay, woken here.
async fn close_seasons(
    store: Store,
    champions: crate::settings::seasons::ChampionSettings,
    relay: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let now = time::OffsetDateTime::now_utc();
        match store
            .close_seasons(now, champions.grace(), &closing_rules(&champions))
            .await
        {
            Ok(closed) => {
                for c in &closed {
                    info!(closing = %c.season.name, champions = c.champions.len(), ranked = c.ranked, "closed");
                }
                if !closed.is_empty() {
                    relay.notify_one();
                }
            }
            Err(e) => warn!(error = %e, "closing seasons failed; trying again"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CLOSE_EVERY) => {}
        }
    }
}

/// The standings refresher (`store::standings`): a round as soon as this replica
/// applied something (or after `every`, for other replicas' work), but the replicas
/// together begin at most one round with work per `every`, and under load further
/// apart ([`crate::store::standings::pace`]; the store's clock says how long to wait),
/// so that under load a round takes many batches' work at once; rounds
/// follow each other at once while a backlog lasts. A round another replica holds the
/// lock for is left to it.
async fn refresh_standings(
    store: Store,
    wake: Arc<Notify>,
    pacing: Pacing,
    counters: Arc<Counters>,
    metrics: SyncMetrics,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    let mut pause = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified(), if pause.is_zero() => {}
            _ = tokio::time::sleep(if pause.is_zero() { pacing.every } else { pause }) => {}
        }
        pause = Duration::ZERO;
        let mut pace = pacing;
        loop {
            let began = std::time::Instant::now();
            match store.refresh_standings(pace).await {
                Ok(turn) => {
                    if failing {
                        info!("standings refresh works again");
                        failing = false;
                    }
                    match turn {
                        Turn::Done(done) => {
                            if done.batches > 0 {
                                counters.standings_rounds.fetch_add(1, Ordering::Relaxed);
                                counters.standings_us.fetch_add(
                                    u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX),
                                    Ordering::Relaxed,
                                );
                                if !done.recomputed {
                                    counters.standings_lag_max_us.fetch_max(
                                        u64::try_from(done.lag.as_micros()).unwrap_or(u64::MAX),
                                        Ordering::Relaxed,
                                    );
                                    metrics
                                        .standings_lag_seconds
                                        .observe(done.lag.as_secs_f64());
                                }
                            }
                            if done.more {
                                pace = pacing.at_once();
                                continue;
                            }
                        }
                        Turn::Early(wait) => pause = wait,
                        Turn::Busy => pause = pacing.every,
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "standings refresh failed; retrying");
                        failing = true;
                    }
                    pause = pacing.every;
                }
            }
            break;
        }
    }
}

/// How often a replica looks for erasures to finish.
const ERASE_EVERY: Duration = Duration::from_secs(2);

/// Finishes the erasures the apply path queued (SPEC 7.4, `privacy::erase_pending`):
/// cleaning the streams, applying the identity's later events again. Any replica may;
/// one that finds the work done by another moves on.
async fn erase(store: Store, broker: Broker, every: Duration, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match crate::privacy::erase_pending(&store, &broker).await {
            Ok(n) => {
                if n > 0 {
                    info!(erasures = n, "erasures finished");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "finishing erasures failed; retrying");
                    failing = true;
                }
            }
        }
    }
}

/// Forgets applied event ids once the events stream can no longer redeliver them.
async fn prune(store: Store, broker: Broker, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match broker.events_max_age().await {
            // A day of margin over the retention: ids are stamped when applied, which is
            // after the stream stored them.
            Ok(Some(age)) => match store
                .prune_processed(age + Duration::from_secs(86_400))
                .await
            {
                Ok(n) if n > 0 => info!(removed = n, "pruned the idempotency record"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "pruning the idempotency record failed"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read the events stream's retention"),
        }
    }
}
