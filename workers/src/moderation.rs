//! The moderators' XP and link tools (docs/moderation.md), one mechanism for every
//! surface: a request (add, remove, set or reset a member's XP, with a reason, by
//! someone) becomes one `xp` event with `data.by` (SPEC 7.1) and an id derived from the
//! request, so that a retried command counts once. Taking an account out of a profile
//! ([`unlink`]) becomes one `unlink` event (SPEC 7.4) per link that joins it, the same
//! way.
//!
//! `set` and `reset` publish the difference from the XP read at request time: the event
//! carries a fixed amount and the state stays a function of the event set. The id
//! includes that read, so a retry before the first copy was applied is the same event,
//! and asking again after it was applied is a new request (a `set` to where the member
//! already is is refused as having nothing to do).

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use ttfd_shared::Identity;
use ttfd_shared::view::AuditEntry;
use ttfd_shared::view::text::thousands;
use ttfd_shared::wire::{Event, EventId, Payload};

use crate::broker::Broker;
use crate::settings::ModerationSettings;
use crate::store::Store;
use crate::store::audit::AuditQuery;

/// The longest reason (`data.reason`, SPEC 4).
const MAX_REASON_CHARS: usize = 64;
/// How long a tool waits for its event to be applied before it answers that it is on
/// its way: the CLI, a person at a terminal; the website's form; the query service,
/// below the bots' own wait for it (`discord.query_timeout_ms`, 2 s, as Discord wants an
/// answer within 3 s).
pub const CLI_WAIT: Duration = Duration::from_secs(15);
pub const WEB_WAIT: Duration = Duration::from_secs(5);
pub const QUERY_WAIT: Duration = Duration::from_millis(1500);

/// What to do to a member's XP; on the query service's wire (`xp.adjust`) as
/// `{verb: "add", value: N}`, ..., `{verb: "reset"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "verb", content = "value")]
pub enum Verb {
    Add(u32),
    Remove(u32),
    /// Bring the member's XP to this.
    Set(i64),
    /// Bring the member's XP to 0.
    Reset,
}

impl Verb {
    fn key(self) -> String {
        match self {
            Verb::Add(n) => format!("add {n}"),
            Verb::Remove(n) => format!("remove {n}"),
            Verb::Set(x) => format!("set {x}"),
            Verb::Reset => "reset".into(),
        }
    }
}

/// One adjustment, as a surface received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub target: Identity,
    pub verb: Verb,
    pub reason: String,
    /// The moderator or operator (`cli:<os user>` from the command line).
    pub by: Identity,
    /// The surface's own id of the request (a Discord interaction, a Telegram message),
    /// when it has one: then the event id is derived from it alone.
    pub request_id: Option<String>,
}

/// Why an adjustment was refused, in words for the moderator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("give a reason (1 to {MAX_REASON_CHARS} characters): it goes into the audit log")]
    Reason,
    #[error("no member has the identity {0}")]
    UnknownMember(String),
    #[error("{amount} XP is more than one adjustment may move ({max}, moderation.max_amount)")]
    TooLarge { amount: i64, max: u32 },
    #[error("the amount must be at least 1")]
    Zero,
    #[error("nothing to do: the member has {0} XP already")]
    NothingToDo(i64),
    #[error(
        "{by} made {limit} adjustments in the last hour (moderation.actions_per_hour); \
         try again later"
    )]
    TooMany { by: String, limit: u32 },
    #[error("{0}")]
    NotLinked(String),
}

/// The event a request becomes, given the member's XP read at request time, or why not.
pub fn plan(
    request: &Request,
    current_xp: i64,
    limits: &ModerationSettings,
    now_ms: i64,
) -> Result<Event, Refusal> {
    let reason = request.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(Refusal::Reason);
    }
    let amount = match request.verb {
        Verb::Add(0) | Verb::Remove(0) => return Err(Refusal::Zero),
        Verb::Add(n) => i64::from(n),
        Verb::Remove(n) => -i64::from(n),
        Verb::Set(xp) => xp.saturating_sub(current_xp),
        Verb::Reset => -current_xp,
    };
    if amount == 0 {
        return Err(Refusal::NothingToDo(current_xp));
    }
    let amount = i32::try_from(amount)
        .ok()
        .filter(|a| a.unsigned_abs() <= limits.max_amount)
        .ok_or(Refusal::TooLarge {
            amount,
            max: limits.max_amount,
        })?;
    let key = match &request.request_id {
        Some(id) => format!("{}\n{id}", request.by),
        None => format!(
            "{}\n{}\n{}\n{reason}\n{current_xp}",
            request.by,
            request.target,
            request.verb.key()
        ),
    };
    Ok(Event {
        id: event_id(&key),
        ts: now_ms,
        identity: request.target.clone(),
        name: None,
        payload: Payload::Xp {
            amount,
            reason: reason.to_owned(),
            by: Some(request.by.clone()),
        },
    })
}

/// The id of the adjustment whose request is `key`: `mod:xp:<hash>`.
fn event_id(key: &str) -> EventId {
    hashed_id("xp", key)
}

/// `mod:<kind>:<hash of key>`: ids of the reserved `mod` namespace.
fn hashed_id(kind: &str, key: &str) -> EventId {
    let digest = hex::encode(&Sha256::digest(key.as_bytes())[..12]);
    EventId::parse(&format!("mod:{kind}:{digest}")).expect("a hex id is a valid id")
}

/// Taking `account` out of a profile (SPEC 7.4), as a surface received it: from the
/// identities in `from` (the CLI names one; the bots and the website every identity the
/// account is linked to directly).
#[derive(Debug, Clone)]
pub struct UnlinkRequest {
    pub account: Identity,
    /// `None`: every identity a link that counts joins `account` to.
    pub from: Option<Identity>,
    pub reason: String,
    pub by: Identity,
    /// The surface's own id of the request, when it has one.
    pub request_id: Option<String>,
}

/// The unlink events a request becomes, given the identities a counting link joins the
/// account to directly, with those links' event ids; or why not.
pub fn plan_unlinks(
    request: &UnlinkRequest,
    linked: &[(Identity, Vec<String>)],
    now_ms: i64,
) -> Result<Vec<Event>, Refusal> {
    let reason = request.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(Refusal::Reason);
    }
    let pairs: Vec<&(Identity, Vec<String>)> = linked
        .iter()
        .filter(|(other, _)| request.from.as_ref().is_none_or(|f| f == other))
        .collect();
    if pairs.is_empty() {
        return Err(Refusal::NotLinked(match &request.from {
            Some(_) if linked.is_empty() => {
                format!("no link joins {} to any account", request.account)
            }
            Some(from) => format!(
                "no link joins {} and {from} directly; {} is linked to {}: take it off those",
                request.account,
                request.account,
                linked
                    .iter()
                    .map(|(o, _)| o.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!("no link joins {} to another account", request.account),
        }));
    }
    Ok(pairs
        .into_iter()
        .map(|(other, links)| {
            // The same request over the same links is the same event; once they are
            // taken back, asking again finds nothing to do.
            let key = match &request.request_id {
                Some(id) => format!("{}\n{id}\n{other}", request.by),
                None => format!(
                    "{}\n{}\n{other}\n{reason}\n{}",
                    request.by,
                    request.account,
                    links.join(" ")
                ),
            };
            Event {
                id: hashed_id("unlink", &key),
                ts: now_ms,
                identity: request.account.clone(),
                name: None,
                payload: Payload::Unlink {
                    other: other.clone(),
                    reason: reason.to_owned(),
                    by: Some(request.by.clone()),
                },
            }
        })
        .collect())
}

/// Whether `by` made `moderation.actions_per_hour` changes in the last hour (counted in
/// the audit log: the same on every surface and replica).
async fn spent_the_hour(
    store: &Store,
    by: &Identity,
    limits: &ModerationSettings,
    now_ms: i64,
) -> Result<bool, crate::store::StoreError> {
    let recent = AuditQuery {
        by: Some(by.clone()),
        since_ms: Some(now_ms - 3_600_000),
        limit: 1,
        ..AuditQuery::default()
    };
    let (_, made) = store.audit(&recent).await?;
    Ok(made >= i64::from(limits.actions_per_hour))
}

/// What taking an account out of a profile did.
#[derive(Debug, Clone)]
pub struct Unlinked {
    pub account: Identity,
    /// The identities it was taken off.
    pub from: Vec<Identity>,
    /// Whether every unlink was applied within the wait.
    pub applied: bool,
}

impl fmt::Display for Unlinked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from: Vec<String> = self.from.iter().map(ToString::to_string).collect();
        write!(f, "{} unlinked from {}", self.account, from.join(", "))?;
        if self.applied {
            write!(f, ": the profiles are apart")
        } else {
            write!(f, ": stored, not applied yet (is `ttfd sync` running?)")
        }
    }
}

/// Checks, publishes and waits for the unlinks of one request: the account must be
/// linked, the moderator within `moderation.actions_per_hour`.
pub async fn unlink(
    store: &Store,
    broker: &Broker,
    limits: &ModerationSettings,
    request: &UnlinkRequest,
    now_ms: i64,
    wait: Duration,
) -> Result<Unlinked, ModerationError> {
    let linked = store.linked(&request.account).await?;
    let events = plan_unlinks(request, &linked, now_ms)?;
    if spent_the_hour(store, &request.by, limits, now_ms).await? {
        return Err(Refusal::TooMany {
            by: request.by.to_string(),
            limit: limits.actions_per_hour,
        }
        .into());
    }
    for event in &events {
        broker
            .publish_event(event)
            .await
            .map_err(|e| ModerationError::Publish(e.to_string()))?
            .await
            .map_err(|e| ModerationError::Publish(e.to_string()))?;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut applied = false;
    while !applied && tokio::time::Instant::now() < deadline {
        applied = true;
        for event in &events {
            applied &= store.audited(event.id.as_str()).await?;
        }
        if !applied {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(Unlinked {
        account: request.account.clone(),
        from: events
            .iter()
            .filter_map(|e| e.payload.other().cloned())
            .collect(),
        applied,
    })
}

/// The event an audit entry records, as far as a reply needs it.
fn recorded_event(request: &Request, entry: &AuditEntry, now_ms: i64) -> Event {
    Event {
        id: EventId::parse(&entry.event_id).unwrap_or_else(|_| event_id(&entry.event_id)),
        ts: now_ms,
        identity: request.target.clone(),
        name: None,
        payload: Payload::Xp {
            amount: entry.amount.unwrap_or_default(),
            reason: entry.reason.clone().unwrap_or_default(),
            by: Some(request.by.clone()),
        },
    }
}

/// What an adjustment did.
#[derive(Debug, Clone)]
pub struct Adjusted {
    pub event: Event,
    pub amount: i32,
    /// The member's XP once the event was applied; `None` when it was not applied
    /// within the wait (it is stored and will be).
    pub xp: Option<i64>,
    /// The request had been made before: the same event, counted once.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ModerationError {
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot publish the adjustment: {0}")]
    Publish(String),
}

/// Checks, publishes and waits for one adjustment: the member must exist, the
/// moderator must be within `moderation.actions_per_hour` (counted in the audit log, so
/// the same on every surface and replica), the amount within `moderation.max_amount`.
pub async fn adjust(
    store: &Store,
    broker: &Broker,
    limits: &ModerationSettings,
    request: &Request,
    now_ms: i64,
    wait: Duration,
) -> Result<Adjusted, ModerationError> {
    let profile = store
        .profile(&request.target)
        .await?
        .ok_or_else(|| Refusal::UnknownMember(request.target.to_string()))?;
    // A surface's request made before and applied: its entry says what it did (a `set`
    // planned again now would find nothing to do).
    if let Some(id) = &request.request_id {
        let earlier = AuditQuery {
            event_id: Some(
                event_id(&format!("{}\n{id}", request.by))
                    .as_str()
                    .to_owned(),
            ),
            limit: 1,
            ..AuditQuery::default()
        };
        if let Some(entry) = store.audit(&earlier).await?.0.pop() {
            return Ok(Adjusted {
                event: recorded_event(request, &entry, now_ms),
                amount: entry.amount.unwrap_or_default(),
                xp: Some(profile.xp),
                duplicate: true,
            });
        }
    }
    let event = plan(request, profile.xp, limits, now_ms)?;
    if spent_the_hour(store, &request.by, limits, now_ms).await?
        && !store.audited(event.id.as_str()).await?
    {
        return Err(Refusal::TooMany {
            by: request.by.to_string(),
            limit: limits.actions_per_hour,
        }
        .into());
    }
    let ack = broker
        .publish_event(&event)
        .await
        .map_err(|e| ModerationError::Publish(e.to_string()))?
        .await
        .map_err(|e| ModerationError::Publish(e.to_string()))?;
    let amount = match event.payload {
        Payload::Xp { amount, .. } => amount,
        _ => 0,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut xp = None;
    while tokio::time::Instant::now() < deadline {
        if store.audited(event.id.as_str()).await? {
            xp = store.profile(&request.target).await?.map(|p| p.xp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Adjusted {
        event,
        amount,
        xp,
        duplicate: ack.duplicate,
    })
}

impl fmt::Display for Adjusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.amount > 0 { "+" } else { "" };
        let amount = thousands(i64::from(self.amount));
        write!(f, "{sign}{amount} XP for {}", self.event.identity)?;
        if self.duplicate {
            write!(f, " (this request was made before: counted once)")?;
        }
        match self.xp {
            Some(xp) => write!(f, ": now {} XP", thousands(xp)),
            None => write!(f, ": stored, not applied yet (is `ttfd sync` running?)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(verb: Verb, reason: &str, request_id: Option<&str>) -> Request {
        Request {
            target: Identity::parse("discord:1").expect("identity"),
            verb,
            reason: reason.into(),
            by: Identity::parse("discord:9").expect("identity"),
            request_id: request_id.map(str::to_owned),
        }
    }

    fn amount(e: &Event) -> i32 {
        match &e.payload {
            Payload::Xp { amount, by, .. } => {
                assert_eq!(
                    by.as_ref().map(ToString::to_string).as_deref(),
                    Some("discord:9")
                );
                *amount
            }
            other => panic!("an xp event, not {other:?}"),
        }
    }

    #[test]
    fn set_and_reset_publish_the_difference_from_the_xp_read() {
        let limits = ModerationSettings::default();
        let set = plan(&request(Verb::Set(1_000), "fix", None), 1_250, &limits, 5).expect("plan");
        assert_eq!(amount(&set), -250);
        let reset = plan(&request(Verb::Reset, "fix", None), -40, &limits, 5).expect("plan");
        assert_eq!(amount(&reset), 40);
        let add = plan(&request(Verb::Add(7), " quiz ", None), 0, &limits, 5).expect("plan");
        assert_eq!((amount(&add), add.ts), (7, 5));
        assert!(matches!(&add.payload, Payload::Xp { reason, .. } if reason == "quiz"));
        assert_eq!(
            plan(&request(Verb::Set(3), "fix", None), 3, &limits, 5).err(),
            Some(Refusal::NothingToDo(3))
        );
    }

    /// The id: the same request (same XP read) is the same event; another read, reason
    /// or verb is another; a surface's own request id alone decides when given.
    #[test]
    fn a_retried_request_is_the_same_event() {
        let limits = ModerationSettings::default();
        let id = |r: &Request, xp: i64| plan(r, xp, &limits, 0).expect("plan").id;
        let add = request(Verb::Add(5), "quiz", None);
        assert_eq!(id(&add, 10), id(&add, 10));
        assert!(id(&add, 10).as_str().starts_with("mod:xp:"));
        assert_ne!(id(&add, 10), id(&add, 15), "asked again after it applied");
        assert_ne!(id(&add, 10), id(&request(Verb::Add(5), "other", None), 10));
        assert_ne!(
            id(&add, 10),
            id(&request(Verb::Remove(5), "quiz", None), 10)
        );
        let surface = request(Verb::Add(5), "quiz", Some("interaction:77"));
        assert_eq!(id(&surface, 10), id(&surface, 99));
        assert_ne!(
            id(&surface, 10),
            id(&request(Verb::Add(5), "quiz", Some("interaction:78")), 10)
        );
    }

    #[test]
    fn an_unlink_takes_the_account_off_each_identity_it_is_linked_to_once() {
        let id = |s: &str| Identity::parse(s).expect("identity");
        let linked = vec![
            (id("discord:1"), vec!["l:1".to_owned()]),
            (id("website:w"), vec!["l:2".to_owned(), "l:3".to_owned()]),
        ];
        let request = UnlinkRequest {
            account: id("telegram:2"),
            from: None,
            reason: " wrong person ".into(),
            by: id("cli:ops"),
            request_id: None,
        };
        let all = plan_unlinks(&request, &linked, 7).expect("plan");
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|e| e.id.as_str().starts_with("mod:unlink:")));
        assert!(matches!(&all[1].payload,
            Payload::Unlink { other, reason, by: Some(by) }
                if other == &id("website:w") && reason == "wrong person" && by == &id("cli:ops")));
        assert_eq!(all[0].identity, id("telegram:2"));
        assert_eq!(all[0].ts, 7);
        let again = plan_unlinks(&request, &linked, 9).expect("plan");
        assert_eq!(all[0].id, again[0].id, "a retry is the same event");
        let one = UnlinkRequest {
            from: Some(id("discord:1")),
            ..request.clone()
        };
        assert_eq!(plan_unlinks(&one, &linked, 7).expect("plan").len(), 1);
        let stranger = UnlinkRequest {
            from: Some(id("minecraft:x")),
            ..request.clone()
        };
        let refused = plan_unlinks(&stranger, &linked, 7).expect_err("refused");
        assert!(
            refused.to_string().contains("discord:1, website:w"),
            "{refused}"
        );
        assert_eq!(
            plan_unlinks(&request, &[], 7).err(),
            Some(Refusal::NotLinked(
                "no link joins telegram:2 to another account".into()
            ))
        );
        let silent = UnlinkRequest {
            reason: " ".into(),
            ..request
        };
        assert_eq!(
            plan_unlinks(&silent, &linked, 7).err(),
            Some(Refusal::Reason)
        );
    }

    #[test]
    fn out_of_range_requests_are_refused_with_the_reason() {
        let limits = ModerationSettings {
            max_amount: 100,
            ..ModerationSettings::default()
        };
        let refused = |verb: Verb, reason: &str, xp: i64| {
            plan(&request(verb, reason, None), xp, &limits, 0).err()
        };
        assert_eq!(refused(Verb::Add(1), "  ", 0), Some(Refusal::Reason));
        assert_eq!(
            refused(Verb::Add(1), &"x".repeat(65), 0),
            Some(Refusal::Reason)
        );
        assert_eq!(refused(Verb::Remove(0), "r", 0), Some(Refusal::Zero));
        assert_eq!(
            refused(Verb::Add(101), "r", 0),
            Some(Refusal::TooLarge {
                amount: 101,
                max: 100
            })
        );
        assert_eq!(
            refused(Verb::Reset, "r", 500),
            Some(Refusal::TooLarge {
                amount: -500,
                max: 100
            })
        );
        assert_eq!(
            refused(Verb::Set(i64::MAX), "r", -5),
            Some(Refusal::TooLarge {
                amount: i64::MAX,
                max: 100
            })
        );
        assert!(refused(Verb::Add(100), "r", 0).is_none());
    }
}
