//! What the events stream still holds about some identities (a member's data export,
//! docs/privacy.md): every message whose envelope is one of theirs, or a `link` or
//! `unlink` naming one of them.
//!
//! The stream is keyed by platform and kind, not by member, so this reads every message
//! of the members' platforms and every link and unlink, through ephemeral consumers that
//! acknowledge nothing: a scan, for a rare request, that costs the sync consumers
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use ttfd_shared::Identity;

use super::{Broker, BrokerError, js_err};

/// One message of the events stream (or of the dead-letter stream).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredEvent {
    /// Its sequence in the stream.
    pub stream_seq: u64,
    /// When the stream stored it, RFC 3339.
    pub stored_at: String,
    /// The envelope as published (SPEC 4), as JSON.
    pub envelope: serde_json::Value,
    /// Its subject and bytes, as stored.
    #[serde(skip)]
    pub subject: String,
    #[serde(skip)]
    pub payload: bytes::Bytes,
    #[serde(skip)]
    pub headers: Option<async_nats::HeaderMap>,
}

/// How long an idle scan consumer lives on the server after a scan that stopped early.
const SCAN_IDLE: Duration = Duration::from_secs(60);

impl Broker {
    /// Every message of the events stream, as it is now, that is an event of one of
    /// `identities` or a `link` or `unlink` naming one, by stream sequence.
    pub async fn events_of(
        &self,
        identities: &[Identity],
    ) -> Result<Vec<StoredEvent>, BrokerError> {
        let subject = |p: &str, k: &str| self.subjects.event(p, k);
        self.messages_naming(&self.subjects.events_stream(), subject, identities)
            .await
    }

    /// The same of the dead-letter stream (whose messages need not decode).
    pub async fn dead_letters_of(
        &self,
        identities: &[Identity],
    ) -> Result<Vec<StoredEvent>, BrokerError> {
        let subject = |p: &str, k: &str| self.subjects.dlq(p, k);
        self.messages_naming(&self.subjects.dlq_stream(), subject, identities)
            .await
    }

    /// Removes message `seq` from `stream` (an erasure, SPEC 7.4); one already gone is
    /// fine.
    pub async fn delete_message(&self, stream: &str, seq: u64) -> Result<(), BrokerError> {
        let stream = self.js.get_stream(stream).await.map_err(js_err)?;
        match stream.delete_message(seq).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("no message found") => Ok(()),
            Err(e) => Err(js_err(e)),
        }
    }

    async fn messages_naming(
        &self,
        stream: &str,
        subject: impl Fn(&str, &str) -> String,
        identities: &[Identity],
    ) -> Result<Vec<StoredEvent>, BrokerError> {
        let platforms: BTreeSet<&str> = identities.iter().map(|i| i.platform.as_str()).collect();
        let mut filters: Vec<String> = platforms.iter().map(|p| subject(p, "*")).collect();
        filters.push(subject("*", "link"));
        filters.push(subject("*", "unlink"));
        let wanted: BTreeSet<(&str, &str)> = identities
            .iter()
            .map(|i| (i.platform.as_str(), i.user.as_str()))
            .collect();
        let stream = self.js.get_stream(stream).await.map_err(js_err)?;
        let mut found: BTreeMap<u64, StoredEvent> = BTreeMap::new();
        for filter in filters {
            let mut consumer = stream
                .create_consumer(pull::Config {
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::None,
                    filter_subject: filter,
                    inactive_threshold: SCAN_IDLE,
                    ..pull::Config::default()
                })
                .await
                .map_err(js_err)?;
            let pending = consumer.info().await.map_err(js_err)?.num_pending;
            let mut read = 0;
            let mut messages = consumer.messages().await.map_err(js_err)?;
            while read < pending {
                let Some(message) = messages.next().await else {
                    break;
                };
                let message = message.map_err(js_err)?;
                read += 1;
                let info = message.info().map_err(js_err)?;
                let Ok(envelope) = rmp_serde::from_slice::<serde_json::Value>(&message.payload)
                else {
                    continue;
                };
                if names_one_of(&envelope, &wanted) {
                    found.insert(
                        info.stream_sequence,
                        StoredEvent {
                            stream_seq: info.stream_sequence,
                            stored_at: info
                                .published
                                .format(&time::format_description::well_known::Rfc3339)
                                .unwrap_or_default(),
                            envelope,
                            subject: message.subject.to_string(),
                            payload: message.payload.clone(),
                            headers: message.headers.clone(),
                        },
                    );
                }
            }
        }
        Ok(found.into_values().collect())
    }
}

/// Whether an envelope is an event of one of `wanted` or names one as the other side of
/// a link or an unlink (`data.platform`, `data.user`).
fn names_one_of(envelope: &serde_json::Value, wanted: &BTreeSet<(&str, &str)>) -> bool {
    fn pair(v: &serde_json::Value) -> Option<(&str, &str)> {
        Some((v.get("platform")?.as_str()?, v.get("user")?.as_str()?))
    }
    let own = pair(envelope);
    let other = envelope.get("data").and_then(pair);
    [own, other]
        .into_iter()
        .flatten()
        .any(|p| wanted.contains(&p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_envelope_is_the_members_when_it_is_theirs_or_names_them() {
        let wanted = BTreeSet::from([("discord", "1"), ("telegram", "2")]);
        let own = json!({"platform": "discord", "user": "1", "kind": "message", "data": {}});
        let link = json!({"platform": "website", "user": "w", "kind": "link",
                          "data": {"platform": "telegram", "user": "2", "proof": "code"}});
        let other = json!({"platform": "discord", "user": "3", "kind": "message", "data": {}});
        let odd = json!(["not", "an", "envelope"]);
        assert!(names_one_of(&own, &wanted));
        assert!(names_one_of(&link, &wanted));
        assert!(!names_one_of(&other, &wanted));
        assert!(!names_one_of(&odd, &wanted));
    }
}
