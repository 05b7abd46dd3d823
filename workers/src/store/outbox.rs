//! The transactional outbox: notifications are written in the transaction that made the
//! change, and handed to a publisher here. A row is deleted only after its publish was
//! acknowledged; a crash in between republishes it under the same `Nats-Msg-Id`, which
//! JetStream's duplicate window drops, so each notification is delivered once in effect.
//!
//! Besides notifications, the outbox carries events that a transaction established
//! (a redeemed link code): they go to the events stream like any publisher's.

use sqlx::Row;
use ttfd_shared::Event;
use ttfd_shared::wire::{self, LinkNotice, RankNotice, SeasonNotice, Subjects};

use super::{Store, StoreError};

/// A message ready to publish: a notification to `<prefix>.notify.<rank|link>`, or an
/// event to `<prefix>.events.<platform>.<kind>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Rank(RankNotice),
    Link(LinkNotice),
    Season(SeasonNotice),
    Event(Event),
}

impl Notice {
    pub fn subject(&self, subjects: &Subjects) -> String {
        match self {
            Notice::Rank(_) => subjects.notify("rank"),
            Notice::Link(_) => subjects.notify("link"),
            Notice::Season(_) => subjects.notify("season"),
            Notice::Event(e) => subjects.event(e.identity.platform.as_str(), e.kind()),
        }
    }

    /// Also the `Nats-Msg-Id`.
    pub fn id(&self) -> &str {
        match self {
            Notice::Rank(n) => &n.id,
            Notice::Link(n) => &n.id,
            Notice::Season(n) => &n.id,
            Notice::Event(e) => e.id.as_str(),
        }
    }

    /// The MessagePack map of SPEC 4 (Notifications, or the event envelope).
    pub fn encode(&self) -> Vec<u8> {
        let bytes = match self {
            Notice::Rank(n) => rmp_serde::to_vec_named(n),
            Notice::Link(n) => rmp_serde::to_vec_named(n),
            Notice::Season(n) => rmp_serde::to_vec_named(n),
            Notice::Event(e) => return wire::encode(e),
        };
        // Plain structs of integers and strings always serialise.
        bytes.expect("a notice always serialises")
    }
}

/// Failure of one relay round.
#[derive(Debug, thiserror::Error)]
pub enum RelayError<E> {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publishing notifications: {0}")]
    Publish(E),
}

impl Store {
    /// Takes up to `limit` pending notifications (skipping rows another replica is
    /// publishing), lets `publish` send them, and deletes them once it returns `Ok`.
    /// Returns how many were published.
    pub async fn relay_outbox<E>(
        &self,
        limit: i64,
        publish: impl AsyncFnOnce(&[Notice]) -> Result<(), E>,
    ) -> Result<usize, RelayError<E>> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let rows = sqlx::query(
            "SELECT id, topic, body, (extract(epoch FROM created_at) * 1000000)::int8 AS created_us
             FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut notices = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.get("id");
            // Row ids restart when the database is restored from a backup; with the
            // row's creation time the message id stays unique, so JetStream's duplicate
            // window never drops a new notification as an old one.
            let created_us: i64 = row.get("created_us");
            let topic: String = row.get("topic");
            let body: serde_json::Value = row.get("body");
            let notice = match topic.as_str() {
                "rank" => serde_json::from_value(body)
                    .map(|mut n: RankNotice| {
                        n.id = format!("rank:{id}.{created_us}");
                        Notice::Rank(n)
                    })
                    .map_err(StoreError::from)?,
                "link" => serde_json::from_value(body)
                    .map(|mut n: LinkNotice| {
                        n.id = format!("link:{id}.{created_us}");
                        Notice::Link(n)
                    })
                    .map_err(StoreError::from)?,
                "season" => serde_json::from_value(body)
                    .map(Notice::Season)
                    .map_err(StoreError::from)?,
                _ => Notice::Event(event_from_outbox(&body)?),
            };
            ids.push(id);
            notices.push(notice);
        }
        if let Err(e) = publish(&notices).await {
            // Release the rows now: a dropped transaction is only rolled back when its
            // pooled connection is next used, and until then other relays skip them.
            let _ = tx.rollback().await;
            return Err(RelayError::Publish(e));
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(ids.len())
    }

    /// Messages not yet published.
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await?)
    }
}

/// An event row back as a valid event, checked by the consumers' own rules.
fn event_from_outbox(body: &serde_json::Value) -> Result<Event, StoreError> {
    let field = |k: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let bytes = rmp_serde::to_vec_named(body).map_err(|e| StoreError::Outbox(e.to_string()))?;
    let ts = body.get("ts").and_then(|v| v.as_i64()).unwrap_or_default();
    wire::decode(&bytes, (field("platform"), field("kind")), ts)
        .map_err(|r| StoreError::Outbox(r.to_string()))
}
