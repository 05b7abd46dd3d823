//! The one consumer of notices (`<prefix>.notify.<topic>` on `<PREFIX>_NOTIFY`: rank
//! changes, closed seasons) that both bots use: a durable pull consumer per use, shared
//! by a role's replicas, a [`NoticeHandler`] per use, and an explicit [`NoticePolicy`].
//!
//! What the consumer guarantees, whatever the handler: a notice is acked only once the
//! handler says it is done; a notice the handler cannot finish now is nak'ed with the
//! delay it asks for and comes back (never dropped); an unreadable notice is terminated
//! (redelivery cannot help) and counted; a broken message stream (NATS reconnecting,
//! the consumer recreated) is opened again with a growing delay. Delivery is at least
//! once: a crash between the handler's effect and the ack repeats it, so handlers are
//! written to be repeated (roles converge to the current rank, messages carry a nonce).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::Broker;

/// How a use of the notices is consumed. Every field is a decision; the bots document
/// theirs beside their policy.
#[derive(Debug, Clone)]
pub struct NoticePolicy {
    /// The notices it takes: `<prefix>.notify.<topic>`.
    pub topic: &'static str,
    /// The durable consumer's name after the prefix: `<prefix>-<durable>`.
    pub durable: &'static str,
    pub description: &'static str,
    /// Where a consumer created for the first time starts. `New`: a first deployment
    /// does not replay every rank change the notify stream still holds.
    pub deliver: DeliverPolicy,
    /// How long a notice may be in the handler's hands before JetStream redelivers it.
    pub ack_wait: Duration,
    /// Notices handled at once by one replica (also the most fetched ahead, so a
    /// fetched notice's `ack_wait` does not run out while it waits its turn).
    pub concurrency: usize,
}

/// What became of one notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Deliver it again after this long; `pause`: the platform asked the whole bot to
    /// slow down, so no new notice is started before then either.
    Retry {
        after: Duration,
        pause: bool,
    },
}

/// One use of the notices of a topic: what a bot does with each.
pub trait NoticeHandler: Send + Sync + 'static {
    /// The notice of the policy's topic (`RankNotice`, `SeasonNotice`).
    type Notice: DeserializeOwned + Send;

    /// Handles one notice; `attempt` is its delivery count, from 1.
    fn handle(&self, notice: Self::Notice, attempt: u32) -> impl Future<Output = Outcome> + Send;

    /// Counts what became of a notice: `done`, `retry` or `unreadable`.
    fn count(&self, _outcome: &'static str) {}
}

/// The durable consumer's full name for an installation prefix.
pub fn consumer_name(prefix: &str, policy: &NoticePolicy) -> String {
    format!("{prefix}-{}", policy.durable)
}

/// The notice consumer of one use, created on first start, then found.
pub struct NoticeConsumer {
    consumer: PullConsumer,
    policy: NoticePolicy,
}

impl NoticeConsumer {
    pub async fn open(broker: &Broker, policy: NoticePolicy) -> anyhow::Result<Self> {
        let subjects = &broker.subjects;
        let stream = broker
            .js
            .get_stream(subjects.notify_stream())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "stream {} not found ({e}): run `ttfd nats setup` first",
                    subjects.notify_stream()
                )
            })?;
        let name = consumer_name(subjects.prefix(), &policy);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            description: Some(policy.description.into()),
            filter_subject: subjects.notify(policy.topic),
            deliver_policy: policy.deliver,
            ack_policy: AckPolicy::Explicit,
            ack_wait: policy.ack_wait,
            // Never give a notice up: the handler decides when to try again.
            max_deliver: -1,
            max_ack_pending: i64::try_from(policy.concurrency.max(1) * 4).unwrap_or(1024),
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the consumer {name}: {e}"))?;
        Ok(Self { consumer, policy })
    }

    /// Handles notices until `shutdown`; notices being handled then finish first.
    pub async fn run<H: NoticeHandler>(self, handler: Arc<H>, shutdown: CancellationToken) {
        let concurrency = self.policy.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let paused_until: Arc<Mutex<Option<Instant>>> = Arc::default();
        let tasks = TaskTracker::new();
        let mut reopen_delay = Duration::from_millis(200);
        'open: while !shutdown.is_cancelled() {
            let messages = self
                .consumer
                .stream()
                .max_messages_per_batch(concurrency)
                .messages()
                .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, consumer = self.policy.durable, "cannot read notices; retrying");
                    if sleep_or_stop(reopen_delay, &shutdown).await {
                        break;
                    }
                    reopen_delay = (reopen_delay * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            loop {
                // Wait for a free slot, then for a pause asked by the platform to end.
                let slot = tokio::select! {
                    _ = shutdown.cancelled() => break 'open,
                    slot = slots.clone().acquire_owned() => slot,
                };
                let Ok(slot) = slot else { break 'open };
                let until = *paused_until.lock().await;
                if let Some(until) = until
                    && sleep_or_stop(until.saturating_duration_since(Instant::now()), &shutdown)
                        .await
                {
                    break 'open;
                }
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break 'open,
                    next = messages.next() => next,
                };
                let message = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        warn!(error = %e, consumer = self.policy.durable, "notices: consumer error; going on");
                        continue;
                    }
                    None => {
                        warn!(
                            consumer = self.policy.durable,
                            "notices: message stream ended; reopening"
                        );
                        if sleep_or_stop(reopen_delay, &shutdown).await {
                            break 'open;
                        }
                        reopen_delay = (reopen_delay * 2).min(Duration::from_secs(30));
                        continue 'open;
                    }
                };
                reopen_delay = Duration::from_millis(200);
                let (handler, paused_until) = (handler.clone(), paused_until.clone());
                tasks.spawn(async move {
                    let _slot = slot;
                    if let Some(Outcome::Retry { after, pause: true }) =
                        handle_message(&*handler, message).await
                    {
                        info!(
                            seconds = after.as_secs(),
                            "the platform asks to slow down; pausing notices"
                        );
                        let until = Instant::now() + after;
                        let mut paused = paused_until.lock().await;
                        *paused = Some(paused.map_or(until, |p| p.max(until)));
                    }
                });
            }
        }
        tasks.close();
        tasks.wait().await;
    }
}

/// `true` when `shutdown` came first.
async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// One notice: decoded, handled, then acked or put back with the delay asked for.
/// `None` for an unreadable notice.
async fn handle_message<H: NoticeHandler>(handler: &H, message: Message) -> Option<Outcome> {
    let attempt = message
        .info()
        .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let (ack, outcome) = match rmp_serde::from_slice::<H::Notice>(&message.payload) {
        Ok(notice) => {
            let outcome = handler.handle(notice, attempt).await;
            handler.count(match outcome {
                Outcome::Done => "done",
                Outcome::Retry { .. } => "retry",
            });
            let ack = match outcome {
                Outcome::Done => AckKind::Ack,
                Outcome::Retry { after, .. } => AckKind::Nak(Some(after)),
            };
            (ack, Some(outcome))
        }
        Err(e) => {
            error!(error = %e, subject = %message.subject, "unreadable notice; dropped");
            handler.count("unreadable");
            (AckKind::Term, None)
        }
    };
    if let Err(e) = message.ack_with(ack).await {
        // Not acked: it comes back after ack_wait; handling it again is harmless.
        warn!(error = %e, "cannot ack a notice");
    }
    outcome
}
