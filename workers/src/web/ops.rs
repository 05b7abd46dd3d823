//! Operations endpoints: `/healthz` (the process answers), `/readyz` (PostgreSQL and
//! NATS answer), `/metrics` (Prometheus text), and the web role's metrics.

use crate::observe::{Readiness, ready_response};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::AppState;
use crate::metrics::{CONTENT_TYPE, Metrics};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route pattern (`/u/{uid}`), never the raw path: bounded label values.
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabels {
    pub platform: String,
    /// `published`, `duplicate`, `rejected`, `forbidden`, `unauthorized`, `failed`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `discord`, `telegram`, `code`.
    pub via: &'static str,
    pub outcome: &'static str,
}

/// The web role's metric handles.
#[derive(Clone)]
pub struct WebMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub ingested: Family<IngestLabels, Counter>,
    pub sign_ins: Family<OutcomeLabels, Counter>,
    pub links: Family<OutcomeLabels, Counter>,
    /// Requests refused by a rate limit (web/limits.rs).
    pub rate_limited: Counter,
}

impl WebMetrics {
    /// Registers the web role's families as `ttfd_web_*`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ingested: Family::default(),
            sign_ins: Family::default(),
            links: Family::default(),
            rate_limited: Counter::default(),
        };
        metrics.register("web", |r| {
            r.register(
                "http_requests",
                "HTTP requests answered",
                m.requests.clone(),
            );
            r.register(
                "http_request_duration_seconds",
                "Time to answer an HTTP request",
                m.latency.clone(),
            );
            r.register(
                "ingested_events",
                "Events received on POST /api/v1/events, by outcome",
                m.ingested.clone(),
            );
            r.register(
                "sign_ins",
                "Sign-in attempts, by provider and outcome",
                m.sign_ins.clone(),
            );
            r.register(
                "links",
                "Account link attempts, by proof and outcome",
                m.links.clone(),
            );
            r.register(
                "rate_limited",
                "Requests refused by a rate limit (sign-in, link, code, ingest)",
                m.rate_limited.clone(),
            );
        });
        m
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~15 s.
    Histogram::new(exponential_buckets(0.001, 2.5, 12))
}

/// Counts and times every request by route.
pub async fn track(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // A fixed set: any other method, which a client may make up, counts as `other`.
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    app.metrics
        .latency
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

pub use crate::observe::healthz;

/// 200 when PostgreSQL answers a query and NATS a round trip; 503 naming what does not
/// answer (the same check as every other role's `/readyz`).
pub async fn readyz(State(app): State<AppState>) -> Response {
    let readiness = Readiness::new()
        .database(app.store.clone())
        .nats(app.broker.clone());
    ready_response(&readiness).await
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        app.registry.render(),
    )
        .into_response()
}
