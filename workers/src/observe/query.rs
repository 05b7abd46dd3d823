//! The query service's metrics (`ttfd_query_*`), recorded by [`crate::query::serve_with`].
//!
//! | metric | type | what |
//! |---|---|---|
//! | `ttfd_query_requests_total{subject,outcome}` | counter | subject `profile`, `top`, `link.issue`, `link.redeem` or `unknown`; outcome `ok`, `bad_request`, `error` |
//! | `ttfd_query_request_duration_seconds{subject}` | histogram | time to answer |
//!
//! Reads no configuration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::metrics::Metrics;

/// The query subjects served; anything else is labelled `unknown` (bounded labels).
const SUBJECTS: [&str; 9] = [
    "profile",
    "top",
    "link.issue",
    "link.redeem",
    "xp.adjust",
    "audit",
    "unlink",
    "export",
    "forget",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub subject: &'static str,
    /// `ok`, `bad_request` (the request could not be understood), `error` (the
    /// service failed, e.g. the database).
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubjectLabels {
    pub subject: &'static str,
}

/// The query role's metric handles; `Default` gives unregistered ones.
#[derive(Clone)]
pub struct QueryMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<SubjectLabels, Histogram, fn() -> Histogram>,
}

impl Default for QueryMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~4 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl QueryMetrics {
    /// Registers the families as `ttfd_query_*`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register("query", |r| {
            r.register(
                "requests",
                "Query requests answered, by subject and outcome",
                m.requests.clone(),
            );
            r.register(
                "request_duration_seconds",
                "Time to answer a query request",
                m.latency.clone(),
            );
        });
        m
    }

    /// Counts one answered request of `subject` (the part after `<prefix>.query.`).
    pub fn record(&self, subject: &str, outcome: &'static str, seconds: f64) {
        let subject = SUBJECTS
            .iter()
            .find(|s| **s == subject)
            .copied()
            .unwrap_or("unknown");
        self.requests
            .get_or_create(&RequestLabels { subject, outcome })
            .inc();
        self.latency
            .get_or_create(&SubjectLabels { subject })
            .observe(seconds);
    }
}
