//! Members' data rights (docs/privacy.md): the export of everything the system holds
//! about a member, one mechanism behind every surface (`ttfd export`, the website's
//! "Download my data", `/gdpr export` on both bots through the query service).

use serde::Serialize;
use ttfd_shared::Identity;
use ttfd_shared::view::{AuditEntry, Profile};
use ttfd_shared::wire::WireIdentity;

use crate::broker::history::StoredEvent;
use crate::broker::{Broker, BrokerError};
use crate::store::audit::AuditQuery;
use crate::store::member::{IdentityRecord, LedgerRecord, LinkRecord};
use crate::store::{Store, StoreError};

/// The export's format, named in the document.
pub const EXPORT_FORMAT: &str = "ttfd-export/1";

/// What an export leaves out, and why: said in the document itself.
pub const NOT_INCLUDED: [&str; 5] = [
    "events older than the events stream keeps (90 days by default): their effect is in the profile, the ledger and the audit entries",
    "events of other members that name you only as the moderator who made a change (data.by): they are in the audit entries about those members",
    "messages' text and voice audio: the platforms send only that a message or voice time happened, never what was said",
    "dead-lettered (invalid) events: they were never applied",
    "the operators' logs and metrics, which hold no member data",
];

/// Everything held about one member.
#[derive(Debug, Clone, Serialize)]
pub struct Export {
    pub format: &'static str,
    pub exported_at: String,
    /// The identity the export was asked for.
    pub asked_for: WireIdentity,
    /// The profile as `ttfd user --json` shows it.
    pub profile: Profile,
    /// Each identity of the profile, with what is kept of it alone.
    pub identities: Vec<IdentityRecord>,
    /// XP per identity and UTC day.
    pub ledger: Vec<LedgerRecord>,
    /// Every link an identity of the profile is part of, and whether it still counts.
    pub links: Vec<LinkRecord>,
    /// The audit entries about the member: XP changed by hand, admin links, unlinks.
    pub audit: Vec<AuditEntry>,
    /// Every event of the member's identities (and link or unlink naming one) the
    /// events stream still holds.
    pub events: Vec<StoredEvent>,
    pub not_included: &'static [&'static str],
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no member has the identity {0}")]
    Unknown(Identity),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the events stream: {0}")]
    Broker(#[from] BrokerError),
}

/// The export of the member with `identity`.
pub async fn export(
    store: &Store,
    broker: &Broker,
    identity: &Identity,
    now: time::OffsetDateTime,
) -> Result<Export, ExportError> {
    let profile = store
        .profile(identity)
        .await?
        .ok_or_else(|| ExportError::Unknown(identity.clone()))?;
    let records = store.member_records(profile.uid).await?;
    let audit = store
        .audit(&AuditQuery {
            member: Some(identity.clone()),
            limit: 1000,
            ..AuditQuery::default()
        })
        .await?
        .0;
    let mine: Vec<Identity> = records
        .identities
        .iter()
        .filter_map(|i| Identity::new(&i.platform, &i.user).ok())
        .collect();
    let events = broker.events_of(&mine).await?;
    Ok(Export {
        format: EXPORT_FORMAT,
        exported_at: now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        asked_for: identity.into(),
        profile,
        identities: records.identities,
        ledger: records.ledger,
        links: records.links,
        audit,
        events,
        not_included: &NOT_INCLUDED,
    })
}

/// A `forget` of `identity` (SPEC 7.4) asked for by `by` now, with `reason`: its id is
/// `mod:forget:<hash>` of who, whom and when.
pub fn forget_event(
    identity: &Identity,
    reason: &str,
    by: &Identity,
    now_ms: i64,
) -> ttfd_shared::Event {
    use sha2::{Digest, Sha256};
    let key = format!("{by}\n{identity}\n{now_ms}");
    let digest = hex::encode(&Sha256::digest(key.as_bytes())[..12]);
    ttfd_shared::Event {
        id: ttfd_shared::EventId::parse(&format!("mod:forget:{digest}"))
            .expect("a hex id is a valid id"),
        ts: now_ms,
        identity: identity.clone(),
        name: None,
        payload: ttfd_shared::Payload::Forget {
            reason: reason.trim().chars().take(64).collect(),
            by: Some(by.clone()),
        },
    }
}

/// Erases a member (SPEC 7.4, the "one forget per identity"): publishes a
/// `forget` of every identity of the unified user of `identity` (or of that identity
/// alone when no event named it yet). Returns the events, to wait for with [`erased`].
pub async fn forget_member(
    store: &Store,
    broker: &Broker,
    identity: &Identity,
    reason: &str,
    by: &Identity,
    now_ms: i64,
) -> Result<Vec<ttfd_shared::Event>, ExportError> {
    let identities: Vec<Identity> = match store.profile(identity).await? {
        Some(p) => p
            .identities
            .iter()
            .filter_map(|i| Identity::new(&i.platform, &i.user).ok())
            .collect(),
        None => vec![identity.clone()],
    };
    let mut events = Vec::with_capacity(identities.len());
    for i in &identities {
        let event = forget_event(i, reason, by, now_ms);
        broker
            .publish_event(&event)
            .await?
            .await
            .map_err(|e| BrokerError::JetStream(e.to_string()))?;
        events.push(event);
    }
    Ok(events)
}

/// Whether the erasure of `event` is done: applied (its cut recorded) and finished (the
/// streams cleaned, later events applied again).
pub async fn erased(store: &Store, event: &ttfd_shared::Event) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM forgotten WHERE identity_hash = $1 AND cut_ms >= $2)
            AND NOT EXISTS (SELECT 1 FROM erasure_work WHERE event_id = $3)",
    )
    .bind(crate::store::forgotten::hash(&event.identity).as_slice())
    .bind(event.ts)
    .bind(event.id.as_str())
    .fetch_one(&store.pool)
    .await?)
}

/// SPEC 7.4: finishes the erasures the apply path queued (`erasure_work`). For each,
/// the events stream loses every message of the identity up to the cut (the `forget`
/// itself included) and every link or unlink naming it up to the cut, the dead-letter
/// stream every message naming it; then its later events (and links naming it), as the
/// sync consumer would admit them, are applied again with the forget, in one
/// transaction that removes the work (`Store::apply_again`): the identity starts over,
/// and a crash repeats nothing. Returns how many erasures it finished.
pub async fn erase_pending(store: &Store, broker: &Broker) -> Result<usize, ExportError> {
    let work: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT event_id, platform, external_id, cut_ms FROM erasure_work
         ORDER BY event_id LIMIT 16",
    )
    .fetch_all(&store.pool)
    .await
    .map_err(StoreError::from)?;
    let mut done = 0;
    for (id, platform, user, cut) in work {
        let Ok(identity) = Identity::new(&platform, &user) else {
            continue;
        };
        let names =
            |e: &ttfd_shared::Event| e.identity == identity || e.payload.other() == Some(&identity);
        let events = broker.subjects.events_stream();
        let mut later = Vec::new();
        for m in broker.events_of(std::slice::from_ref(&identity)).await? {
            let Some(event) = admitted(broker, &m) else {
                continue;
            };
            if !names(&event) {
                continue;
            }
            if event.ts <= cut {
                broker.delete_message(&events, m.stream_seq).await?;
                sqlx::query(
                    "INSERT INTO erased_sequences (seq) VALUES ($1) ON CONFLICT DO NOTHING",
                )
                .bind(i64::try_from(m.stream_seq).unwrap_or(i64::MAX))
                .execute(&store.pool)
                .await
                .map_err(StoreError::from)?;
            } else {
                later.push(event);
            }
        }
        let dead = broker.subjects.dlq_stream();
        for m in broker
            .dead_letters_of(std::slice::from_ref(&identity))
            .await?
        {
            broker.delete_message(&dead, m.stream_seq).await?;
        }
        let forget = ttfd_shared::Event {
            id: ttfd_shared::EventId::parse(&id)
                .map_err(|e| StoreError::Schema(format!("an erasure's event id {id:?}: {e}")))?,
            ts: cut,
            identity: identity.clone(),
            name: None,
            payload: ttfd_shared::Payload::Forget {
                reason: "erasure".into(),
                by: None,
            },
        };
        let mut batch = vec![forget];
        batch.extend(later);
        if store.apply_again(&batch, &id, &identity).await? {
            done += 1;
        }
    }
    Ok(done)
}

/// A stored message as the sync consumer would apply it: a valid event its publisher
/// may claim (docs/security.md); `None` otherwise.
fn admitted(broker: &Broker, m: &StoredEvent) -> Option<ttfd_shared::Event> {
    let (platform, kind) = broker.subjects.parse_event(&m.subject)?;
    let event = ttfd_shared::wire::decode(&m.payload, (platform, kind), crate::now_ms()).ok()?;
    match broker
        .trust
        .judge(m.headers.as_ref(), &m.subject, &m.payload, || m.stream_seq)
    {
        Some(publisher) => ttfd_shared::trust::admit(publisher, &event)
            .ok()
            .map(|()| event),
        None => Some(event),
    }
}

/// The export's file name: `ttfd-export-<platform>-<user>.json`, with nothing but
/// letters, digits, `-` and `_` from the identity.
pub fn file_name(identity: &Identity) -> String {
    let safe: String = format!("{}-{}", identity.platform.as_str(), identity.user.as_str())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("ttfd-export-{safe}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_name_keeps_only_safe_characters() {
        let id = Identity::parse("website:ann@example.org").expect("identity");
        assert_eq!(file_name(&id), "ttfd-export-website-ann_example_org.json");
    }
}
