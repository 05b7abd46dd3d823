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
