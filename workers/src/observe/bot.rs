//! What every platform bot records (`ttfd_<role>_*`, role `discord` or `telegram`).
//!
//! | metric | type | what |
//! |---|---|---|
//! | `ttfd_<role>_events_published_total{kind}` | counter | events JetStream stored |
//! | `ttfd_<role>_publish_retries_total` | counter | failed publish attempts, retried |
//! | `ttfd_<role>_notices_total{outcome}` | counter | rank notices handled: `done`, `retry` (put back with a delay), `unreadable` |
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
pub struct NoticeLabels {
    /// `done`, `retry` or `unreadable`.
    pub outcome: &'static str,
}

/// A bot's metric handles; `Default` gives unregistered ones.
#[derive(Clone, Default)]
pub struct BotMetrics {
    pub published: Family<KindLabels, Counter>,
    pub publish_retries: Counter,
    pub notices: Family<NoticeLabels, Counter>,
}

impl BotMetrics {
    /// Registers the families as `ttfd_<role>_*`.
    pub fn register(metrics: &Metrics, role: &str) -> Self {
        let m = Self::default();
        metrics.register(role, |r| {
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

    pub fn notice(&self, outcome: &'static str) {
        self.notices.get_or_create(&NoticeLabels { outcome }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_metrics_render_under_their_role() {
        let metrics = Metrics::new();
        let m = BotMetrics::register(&metrics, "telegram");
        m.published("message");
        m.notice("done");
        m.publish_retries.inc();
        let text = metrics.render();
        for line in [
            "ttfd_telegram_events_published_total{kind=\"message\"} 1",
            "ttfd_telegram_notices_total{outcome=\"done\"} 1",
            "ttfd_telegram_publish_retries_total 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
