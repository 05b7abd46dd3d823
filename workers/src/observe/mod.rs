//! Observability for the roles that have no web server of their own (`sync`, `query`,
//! `discord`, `telegram`): a small HTTP listener on `metrics.listen` serving
//!
//! - `/metrics`: the process's Prometheus registry ([`crate::metrics::Metrics`]);
//! - `/healthz`: 200 while the process answers (liveness);
//! - `/readyz`: 200 when the dependencies the role needs answer (PostgreSQL and/or
//!   NATS, see [`Readiness`]), else 503 naming what does not answer.
//!
//! Each role registers its metric families ([`sync::SyncMetrics`],
//! [`query::QueryMetrics`], [`discord::DiscordMetrics`]) and calls [`serve`] from its
//! `run`; `web` serves the same endpoints on `web.listen` itself.
//!
//! Reads `metrics.listen` (empty: no listener).

pub mod bot;
pub mod discord;
pub mod query;
pub mod sync;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::settings::{MetricsSettings, SettingsError};
use crate::store::Store;

/// How long a readiness check waits for each dependency: well under the usual
/// Kubernetes probe timeout, so a hung dependency reads as "not ready", not as a
/// probe that timed out.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot listen on {addr} (metrics.listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What `/readyz` checks: the dependencies a role cannot work without.
#[derive(Clone, Default)]
pub struct Readiness {
    store: Option<Store>,
    broker: Option<Broker>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready only while PostgreSQL answers a query.
    pub fn database(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Ready only while the NATS connection answers a round trip.
    pub fn nats(mut self, broker: Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Whether every dependency answered, and what each said.
    pub async fn check(&self) -> (bool, serde_json::Value) {
        let mut ready = true;
        let mut report = serde_json::Map::new();
        if let Some(store) = &self.store {
            let answer = match tokio::time::timeout(READY_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {READY_TIMEOUT:?}"),
            };
            ready &= answer == "ok";
            report.insert("database".into(), answer.into());
        }
        if let Some(broker) = &self.broker {
            // A flush is a PING/PONG round trip: it fails (times out) while the client
            // is disconnected and reconnecting.
            let answer = match tokio::time::timeout(READY_TIMEOUT, broker.client.flush()).await {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {READY_TIMEOUT:?}"),
            };
            ready &= answer == "ok";
            report.insert("nats".into(), answer.into());
        }
        (ready, serde_json::Value::Object(report))
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The listener, bound and ready to serve (port 0 in tests).
pub struct OpsServer {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
}

impl OpsServer {
    pub async fn bind(
        addr: SocketAddr,
        metrics: Metrics,
        readiness: Readiness,
    ) -> Result<Self, ObserveError> {
        let bind_error = |source| ObserveError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let router = Router::new()
            .route("/metrics", get(render_metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(OpsState { metrics, readiness });
        Ok(Self {
            listener,
            addr: local,
            router,
        })
    }

    /// The bound address (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown`. Probes and scrapes are short, so no grace period.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

/// Starts the listener in the background when `metrics.listen` is set, for any role
/// (the telegram role calls this too); it stops with `shutdown`. `None` when off.
pub async fn serve(
    settings: &MetricsSettings,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<Option<(SocketAddr, JoinHandle<()>)>, ObserveError> {
    let Some(addr) = settings.addr()? else {
        return Ok(None);
    };
    let server = OpsServer::bind(addr, metrics, readiness).await?;
    let local = server.local_addr();
    tracing::info!(addr = %local, "serving /metrics, /healthz, /readyz");
    let task = tokio::spawn(async move {
        if let Err(e) = server.run(shutdown).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(Some((local, task)))
}

/// `/healthz`: the process answers.
pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<OpsState>) -> Response {
    ready_response(&state.readiness).await
}

/// `/readyz`: 200 when every dependency answered, else 503; the body says what each said.
pub async fn ready_response(readiness: &Readiness) -> Response {
    let (ready, report) = readiness.check().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_listen_address_is_off_and_a_bad_one_names_the_key() {
        let off = MetricsSettings::default();
        assert_eq!(off.addr().expect("valid"), None);
        let on = MetricsSettings {
            listen: "0.0.0.0:9090".into(),
        };
        assert_eq!(
            on.addr().expect("valid"),
            Some("0.0.0.0:9090".parse().expect("addr"))
        );
        let bad = MetricsSettings {
            listen: "localhost".into(),
        };
        let err = bad.addr().expect_err("refused").to_string();
        assert!(err.contains("metrics.listen"), "{err}");
    }
}
