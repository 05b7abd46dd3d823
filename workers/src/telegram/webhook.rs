//! Webhook mode: Telegram posts each update to `telegram.webhook_url`; an HTTP server
//! on `telegram.listen` (behind an HTTPS proxy or load balancer) serves that URL's
//! path. Any number of replicas may serve it. Telegram sends the secret
//! `telegram.webhook_secret` with every update; requests without it are refused.
//!
//! The answer is 200 once the update's activity is stored in JetStream, and 503 when
//! it cannot be stored in time: Telegram then sends the update again. Also serves
//! `GET /healthz`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use teloxide::types::Update;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::handler::Handler;

/// The header in which Telegram repeats the webhook's `secret_token`.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
/// How long one update may wait for NATS before Telegram is told to send it again.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Hook {
    handler: Arc<Handler>,
    secret: SecretString,
    shutdown: CancellationToken,
}

/// Serves the webhook until `shutdown`.
pub async fn run(
    handler: Arc<Handler>,
    listener: TcpListener,
    path: &str,
    secret: SecretString,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let hook = Hook {
        handler,
        secret,
        shutdown: shutdown.clone(),
    };
    let app = Router::new()
        .route(path, post(receive))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(hook);
    info!(address = %listener.local_addr()?, path, "webhook server ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

async fn receive(
    State(hook): State<Hook>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let given = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !same_secret(given, hook.secret.expose_secret().as_bytes()) {
        return (StatusCode::UNAUTHORIZED, "wrong or missing secret token");
    }
    let update: Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "a webhook request that is not an update");
            return (StatusCode::BAD_REQUEST, "not a Telegram update");
        }
    };
    match hook
        .handler
        .handle(&update, Some(PATIENCE), &hook.shutdown)
        .await
    {
        Ok(()) => (StatusCode::OK, ""),
        Err(e) => {
            warn!(error = %e, "update not stored; Telegram will send it again");
            (StatusCode::SERVICE_UNAVAILABLE, "try again later")
        }
    }
}

/// Compares in constant time, so that the secret cannot be guessed byte by byte from
/// response times.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_must_match_exactly() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
