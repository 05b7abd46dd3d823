//! The outbox relay: publishes committed notifications to `<prefix>.notify.<topic>`
//! (and events established by a transaction to `<prefix>.events.*`)
//! with `Nats-Msg-Id` = the notification id, then deletes them. Woken at once by a local
//! commit that wrote notifications, and every `sync.relay_poll_ms` for rows left by a
//! replica that died.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::broker::Broker;
use crate::store::Store;
use crate::store::outbox::Notice;

const BATCH: i64 = 256;

pub async fn relay_outbox(
    store: Store,
    broker: Broker,
    wake: Arc<Notify>,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let fresh_backoff = || {
        ExponentialBuilder::default()
            .with_max_delay(Duration::from_secs(10))
            .without_max_times()
            .build()
    };
    let mut backoff = fresh_backoff();
    loop {
        let publish = async |notices: &[Notice]| publish_notices(&broker, notices).await;
        match store.relay_outbox(BATCH, publish).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {
                backoff = fresh_backoff();
                if shutdown.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "outbox relay failed; retrying");
                if shutdown.is_cancelled() {
                    return;
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Publishes notices with their id as `Nats-Msg-Id` (signed as the relay when this
/// process holds its key) and waits for every JetStream ack.
pub async fn publish_notices(broker: &Broker, notices: &[Notice]) -> Result<(), async_nats::Error> {
    let mut acks = Vec::with_capacity(notices.len());
    for n in notices {
        let subject = n.subject(&broker.subjects);
        acks.push(
            broker
                .publish_raw(subject, n.id(), n.encode().into())
                .await?,
        );
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}
