//! A publish to the events stream that another publisher's copy cannot keep out.
//!
//! JetStream drops a message whose `Nats-Msg-Id` the stream stored within its duplicate
//! window (2 minutes), whoever stored it, and SPEC 4 makes that header the event's id.
//! A publisher that predicts another's next id (a Telegram message id, the computable
//! id of an OAuth link) could have the real event dropped by claiming the id first.
//! The sync consumers never remember such a claim (in signed mode it is dead-lettered
//! as not permitted, docs/security.md), so the real event applies as soon as a copy of
//! it is stored.
//!
//! So a long-running publisher sends an event that JetStream called a duplicate once
//! more after the window has passed ([`Broker::sending_second_copies`]). If the first
//! copy was its own (a retry after a lost ack, a backlog read again after a restart),
//! the sync consumers count the second one as a duplicate and apply nothing: they
//! remember ids for the stream's whole retention. If it was somebody else's claim, the
//! real event is now stored and applies, at most one window late.
//!
//! What waits is bounded in bytes ([`MAX_WAITING_BYTES`]): past that, an event is not
//! sent again, with a warning. Operators' commands exit right after publishing and do
//! not send second copies; they report the duplicate instead.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use tracing::{info, warn};

use super::Broker;

/// Payload bytes of second copies a process holds at once.
pub const MAX_WAITING_BYTES: usize = 32 << 20;
/// How often a second copy is tried when the id is taken again by then.
const ATTEMPTS: u32 = 3;
/// Past the window, so that the stream has surely forgotten the id.
const MARGIN: Duration = Duration::from_secs(1);
/// When the stream's window cannot be read.
const DEFAULT_WINDOW: Duration = Duration::from_secs(120);

/// The bytes of second copies waiting in this process (shared by the broker's clones).
#[derive(Debug, Default)]
pub struct SecondCopies {
    waiting: AtomicUsize,
}

impl SecondCopies {
    /// Bytes held right now.
    pub fn waiting_bytes(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: usize) -> bool {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + bytes <= MAX_WAITING_BYTES).then_some(held + bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.waiting.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A message on its way to JetStream: awaiting it gives the stream's ack.
pub struct Pending {
    ack: PublishAckFuture,
    again: Option<SecondCopy>,
}

/// What a second copy sends.
pub(super) struct SecondCopy {
    pub broker: Broker,
    pub copies: Arc<SecondCopies>,
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
}

impl Pending {
    pub(super) fn new(ack: PublishAckFuture, again: Option<SecondCopy>) -> Self {
        Self { ack, again }
    }
}

impl IntoFuture for Pending {
    type Output = Result<PublishAck, PublishError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let ack = self.ack.await?;
            if ack.duplicate
                && let Some(copy) = self.again
            {
                copy.schedule();
            }
            Ok(ack)
        })
    }
}

impl SecondCopy {
    fn schedule(self) {
        let bytes = self.payload.len();
        if !self.copies.reserve(bytes) {
            warn!(
                id = self.msg_id,
                "too many second copies waiting; this one is not sent again"
            );
            return;
        }
        tokio::spawn(async move {
            let window = self.broker.events_window().await;
            for attempt in 1..=ATTEMPTS {
                tokio::time::sleep(window + MARGIN).await;
                let sent = self
                    .broker
                    .send(self.subject.clone(), &self.msg_id, self.payload.clone())
                    .await;
                let ack = match sent {
                    Ok(pending) => pending.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match ack {
                    Ok(ack) if !ack.duplicate => {
                        info!(id = self.msg_id, seq = ack.sequence, "second copy stored");
                        break;
                    }
                    Ok(_) => warn!(
                        id = self.msg_id,
                        attempt, "the id was taken again within the window"
                    ),
                    Err(error) => warn!(id = self.msg_id, attempt, error, "second copy"),
                }
            }
            self.copies.release(bytes);
        });
    }
}

impl Broker {
    /// The events stream's duplicate window (2 minutes when it cannot be read).
    pub async fn events_window(&self) -> Duration {
        match self.js.get_stream(self.subjects.events_stream()).await {
            Ok(stream) => stream.cached_info().config.duplicate_window,
            Err(e) => {
                warn!(error = %e, "cannot read the events stream's duplicate window");
                DEFAULT_WINDOW
            }
        }
    }
}
