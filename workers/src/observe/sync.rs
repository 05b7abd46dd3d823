//! The sync role's metrics (`ttfd_sync_*`), recorded by [`crate::sync::SyncWorker`]
//! where it updates its [`crate::sync::Counters`], plus a watcher that polls the shared
//! consumer's backlog and the outbox every few seconds.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `ttfd_sync_events_total{platform,kind,outcome}` | counter | outcome `applied`, `duplicate`, `dead_lettered` |
//! | `ttfd_sync_batch_events` | histogram | messages per batch |
//! | `ttfd_sync_apply_seconds` | histogram | time of a successful batch transaction |
//! | `ttfd_sync_retries_total` | counter | transient failures retried |
//! | `ttfd_sync_rank_changes_total`, `ttfd_sync_merges_total` | counter | committed rank changes, merges |
//! | `ttfd_sync_consumer_pending` | gauge | messages of the shared consumer not yet delivered (lag) |
//! | `ttfd_sync_consumer_ack_pending` | gauge | delivered, not yet acked |
//! | `ttfd_sync_outbox_backlog` | gauge | outbox rows waiting for the relay |
//! | `ttfd_sync_standings_lag_seconds` | histogram | per standings round (a recompute aside), how long its oldest change waited to reach the leaderboards |
//!
//! Reads no configuration.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use ttfd_shared::{Event, Platform};

use crate::metrics::Metrics;
use crate::store::Store;

/// The five kinds of SPEC 4: anything else is labelled `unknown`, so that garbage on
/// the wire cannot create unbounded label values.
const KINDS: [&str; 5] = ["message", "voice", "game", "xp", "link"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub platform: String,
    pub kind: String,
    /// `applied`, `duplicate` or `dead_lettered`.
    pub outcome: &'static str,
}

/// The sync role's metric handles; clones share their values. `Default` gives
/// unregistered handles (recording into them costs next to nothing).
#[derive(Clone)]
pub struct SyncMetrics {
    pub events: Family<EventLabels, Counter>,
    pub batch_events: Histogram,
    pub apply_seconds: Histogram,
    pub retries: Counter,
    pub rank_changes: Counter,
    pub merges: Counter,
    pub consumer_pending: Gauge,
    pub consumer_ack_pending: Gauge,
    pub outbox_backlog: Gauge,
    pub standings_lag_seconds: Histogram,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self {
            events: Family::default(),
            // 1 .. 8192 messages (`sync.batch_size` is at most 10,000).
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            // 1 ms .. ~16 s.
            apply_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            retries: Counter::default(),
            rank_changes: Counter::default(),
            merges: Counter::default(),
            consumer_pending: Gauge::default(),
            consumer_ack_pending: Gauge::default(),
            outbox_backlog: Gauge::default(),
            // 10 ms .. ~20 s.
            standings_lag_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
        }
    }
}

impl SyncMetrics {
    /// Registers the families as `ttfd_sync_*`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register("sync", |r| {
            r.register(
                "events",
                "Events consumed, by platform, kind and outcome (applied, duplicate, dead_lettered)",
                m.events.clone(),
            );
            r.register(
                "batch_events",
                "Messages per batch",
                m.batch_events.clone(),
            );
            r.register(
                "apply_seconds",
                "Time of a successful batch transaction, in seconds",
                m.apply_seconds.clone(),
            );
            r.register(
                "retries",
                "Transient failures (database or NATS unavailable, deadlock, concurrent merge) retried",
                m.retries.clone(),
            );
            r.register(
                "rank_changes",
                "Committed rank changes",
                m.rank_changes.clone(),
            );
            r.register("merges", "Committed merges of users", m.merges.clone());
            r.register(
                "consumer_pending",
                "Messages of the shared sync consumer not yet delivered (lag)",
                m.consumer_pending.clone(),
            );
            r.register(
                "consumer_ack_pending",
                "Messages of the shared sync consumer delivered and not yet acked",
                m.consumer_ack_pending.clone(),
            );
            r.register(
                "outbox_backlog",
                "Outbox rows (notifications, events) waiting for the relay",
                m.outbox_backlog.clone(),
            );
            r.register(
                "standings_lag_seconds",
                "Per standings round, how long its oldest change waited to reach the leaderboards \
                 (from when its batch wrote its work, shortly before committing), in seconds",
                m.standings_lag_seconds.clone(),
            );
        });
        m
    }

    /// Counts the outcome of a batch's valid events, of which the store applied
    /// `applied` distinct ids and found `duplicates` already applied. Repeats of an id
    /// within the batch are duplicates too.
    ///
    /// The store reports counts, not which ids were new; so when a batch mixes new and
    /// already-applied events (rare: redelivery after a crash, a replay), the
    /// duplicates are attributed to the batch's last distinct events. Totals are always
    /// exact; per-label values are exact for every batch that is not mixed.
    pub fn record_applied<'e>(&self, events: &'e [Event], applied: usize, duplicates: usize) {
        let mut counts: HashMap<(&'e str, &'static str, &'static str), u64> = HashMap::new();
        let mut count = |e: &'e Event, outcome: &'static str| {
            *counts
                .entry((e.identity.platform.as_str(), e.kind(), outcome))
                .or_default() += 1;
        };
        let mut seen = HashSet::with_capacity(events.len());
        let (mut left_applied, mut left_duplicates) = (applied, duplicates);
        for e in events {
            if !seen.insert(&e.id) {
                count(e, "duplicate");
            } else if left_applied > 0 {
                left_applied -= 1;
                count(e, "applied");
            } else if left_duplicates > 0 {
                left_duplicates -= 1;
                count(e, "duplicate");
            }
        }
        for ((platform, kind, outcome), n) in counts {
            self.events
                .get_or_create(&EventLabels {
                    platform: platform.to_owned(),
                    kind: kind.to_owned(),
                    outcome,
                })
                .inc_by(n);
        }
    }

    /// Counts `n` dead-lettered messages of a subject's `platform` and `kind` tokens
    /// (labelled `unknown` when they are not a platform name or one of the kinds).
    pub fn record_dead_lettered(&self, platform: &str, kind: &str, n: u64) {
        let platform = if Platform::parse(platform).is_ok() {
            platform
        } else {
            "unknown"
        };
        let kind = if KINDS.contains(&kind) {
            kind
        } else {
            "unknown"
        };
        self.events
            .get_or_create(&EventLabels {
                platform: platform.to_owned(),
                kind: kind.to_owned(),
                outcome: "dead_lettered",
            })
            .inc_by(n);
    }
}

/// Polls the shared consumer's pending counts and the outbox backlog every `every`
/// until `shutdown`. Every replica reports the same consumer, so dashboards take the
/// maximum over replicas. A failed poll leaves the last values (and is logged at
/// debug level: the consumer loop reports outages already).
pub async fn watch_backlog(
    consumer: PullConsumer,
    store: Store,
    metrics: SyncMetrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match consumer.get_info().await {
            Ok(info) => {
                metrics
                    .consumer_pending
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                metrics
                    .consumer_ack_pending
                    .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
            }
            Err(e) => debug!(error = %e, "cannot read the sync consumer's info"),
        }
        match store.outbox_backlog().await {
            Ok(n) => {
                metrics.outbox_backlog.set(n);
            }
            Err(e) => debug!(error = %e, "cannot count the outbox"),
        }
    }
}

#[cfg(test)]
mod tests {
    use ttfd_shared::wire::EventId;
    use ttfd_shared::{Identity, Payload};

    use super::*;

    fn event(id: &str, platform: &str, payload: Payload) -> Event {
        Event {
            id: EventId::parse(id).expect("id"),
            ts: 1_800_000_000_000,
            identity: Identity::new(platform, "u1").expect("identity"),
            name: None,
            payload,
        }
    }

    fn value(m: &SyncMetrics, platform: &str, kind: &str, outcome: &'static str) -> u64 {
        m.events
            .get_or_create(&EventLabels {
                platform: platform.into(),
                kind: kind.into(),
                outcome,
            })
            .get()
    }

    #[test]
    fn outcomes_are_counted_by_platform_and_kind_with_repeats_as_duplicates() {
        let m = SyncMetrics::default();
        let voice = Payload::Voice {
            seconds: 60,
            channel: None,
            mult: None,
        };
        let msg = Payload::Message {
            len: None,
            chat: None,
            mult: None,
        };
        let events = vec![
            event("a", "discord", voice.clone()),
            event("b", "telegram", msg.clone()),
            event("a", "discord", voice),
            event("c", "telegram", msg),
        ];
        m.record_applied(&events, 3, 0);
        assert_eq!(value(&m, "discord", "voice", "applied"), 1);
        assert_eq!(value(&m, "discord", "voice", "duplicate"), 1);
        assert_eq!(value(&m, "telegram", "message", "applied"), 2);
        m.record_applied(&events, 0, 3);
        assert_eq!(value(&m, "telegram", "message", "duplicate"), 2);
        assert_eq!(value(&m, "discord", "voice", "duplicate"), 3);
    }

    #[test]
    fn dead_letter_labels_stay_bounded() {
        let m = SyncMetrics::default();
        m.record_dead_lettered("discord", "dance", 2);
        m.record_dead_lettered("Not_A_Platform", "voice", 1);
        assert_eq!(value(&m, "discord", "unknown", "dead_lettered"), 2);
        assert_eq!(value(&m, "unknown", "voice", "dead_lettered"), 1);
    }
}
