//! The Discord role's metrics (`ttfd_discord_*`).
//!
//! | metric | type | what |
//! |---|---|---|
//! | `ttfd_discord_events_published_total{kind}` | counter | events JetStream stored (`message`, `voice`) |
//! | `ttfd_discord_publish_retries_total` | counter | failed publish attempts, retried |
//! | `ttfd_discord_role_changes_total{change}` | counter | rank roles `added` / `removed` on members |
//! | `ttfd_discord_notices_total{outcome}` | counter | rank notices handled: `done`, `retry` (put back with a delay), `unreadable` |
//!
//! Reads no configuration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::Metrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// `added` or `removed`.
    pub change: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NoticeLabels {
    /// `done`, `retry` or `unreadable`.
    pub outcome: &'static str,
}

/// The Discord role's metric handles; `Default` gives unregistered ones.
#[derive(Clone, Default)]
pub struct DiscordMetrics {
    pub published: Family<KindLabels, Counter>,
    pub publish_retries: Counter,
    pub role_changes: Family<ChangeLabels, Counter>,
    pub notices: Family<NoticeLabels, Counter>,
}

impl DiscordMetrics {
    /// Registers the families as `ttfd_discord_*`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register("discord", |r| {
            r.register(
                "events_published",
                "Events stored by JetStream, by kind",
                m.published.clone(),
            );
            r.register(
                "publish_retries",
                "Failed event publications, retried",
                m.publish_retries.clone(),
            );
            r.register(
                "role_changes",
                "Rank roles added to or removed from members",
                m.role_changes.clone(),
            );
            r.register(
                "notices",
                "Rank notices handled, by outcome",
                m.notices.clone(),
            );
        });
        m
    }

    pub fn published(&self, kind: &'static str) {
        self.published.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn role_changed(&self, change: &'static str, n: u64) {
        if n > 0 {
            self.role_changes
                .get_or_create(&ChangeLabels { change })
                .inc_by(n);
        }
    }

    pub fn notice(&self, outcome: &'static str) {
        self.notices.get_or_create(&NoticeLabels { outcome }).inc();
    }
}
