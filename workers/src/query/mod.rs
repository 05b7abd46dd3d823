//! The query service: profiles, leaderboards and link codes over NATS request-reply, so
//! that platform workers (the bots) need no database credentials.
//!
//! `ttfd query` replicas subscribe to `<prefix>.query.>` in one queue group, so NATS
//! spreads requests over them. Bodies are MessagePack maps; every reply is either
//! `{"ok": ...}` or `{"error": "..."}`. The subjects and shapes are in `docs/query.md`.
//! [`QueryClient`] is the typed client. Reads `nats.*` and `database.*`.

use crate::broker::EXIT_FLUSH;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use ttfd_shared::Identity;
use ttfd_shared::wire::{Subjects, WireIdentity};

use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::moderation::{self, ModerationError, Request, Verb};
use crate::now_ms;
use crate::observe::query::QueryMetrics;
use crate::observe::{self, Readiness};
use crate::settings::{ModerationSettings, Settings};
use crate::store::audit::AuditQuery;
use crate::store::codes::{IssuedCode, Redemption};
use crate::store::{Store, StoreError};
use ttfd_shared::view::{AuditEntry, Period, Profile, Standing, Statement};

/// The queue group every replica of the service joins.
pub const QUEUE_GROUP: &str = "ttfd-query";
/// Requests served at once by one replica; more wait in NATS' buffers.
const CONCURRENCY: usize = 64;
/// The longest leaderboard page.
pub const MAX_LIMIT: u32 = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileRequest {
    pub identity: WireIdentity,
}

/// `statement` (anyone's, not hidden) and `as.<platform>.statement` (one's own): the
/// XP statement of a member for a period (a season by name, or the current one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatementRequest {
    pub identity: WireIdentity,
    pub period: Period,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub season: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopRequest {
    pub period: Period,
    pub limit: u32,
    #[serde(default)]
    pub offset: u32,
    /// A season by name instead of `period` (added with seasons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub season: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueRequest {
    pub identity: WireIdentity,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedeemRequest {
    pub identity: WireIdentity,
    pub code: String,
}

/// `as.<platform>.xp.adjust`: a moderator of the platform (`by`, whom the bot found to
/// be one) adjusts a member of the same platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdjustRequest {
    pub by: WireIdentity,
    pub target: WireIdentity,
    pub verb: Verb,
    pub reason: String,
    /// The platform's id of the request (an interaction, a message): a retry of it
    /// counts once.
    pub request_id: String,
}

/// The answer to an adjustment: done (with the new total once applied), or refused
/// with the reason for the moderator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdjustOutcome {
    Done {
        event_id: String,
        amount: i32,
        xp: Option<i64>,
        duplicate: bool,
    },
    Refused(String),
}

impl AdjustOutcome {
    /// The reply for the moderator, on both bots: `name` and `reason` as the platform
    /// shows them (escaped, emphasised).
    pub fn text(&self, name: &str, reason: &str) -> String {
        match self {
            AdjustOutcome::Done {
                amount,
                xp,
                duplicate,
                ..
            } => {
                let sign = if *amount > 0 { "+" } else { "" };
                let amount = ttfd_shared::view::text::thousands(i64::from(*amount));
                let mut out = format!("{sign}{amount} XP for {name} ({reason}).");
                match xp {
                    Some(xp) => out.push_str(&format!(
                        " Now {} XP.",
                        ttfd_shared::view::text::thousands(*xp)
                    )),
                    None => out.push_str(" It shows within moments."),
                }
                if *duplicate {
                    out.push_str(" (This request was made before: counted once.)");
                }
                out
            }
            AdjustOutcome::Refused(why) => format!("Not done: {why}."),
        }
    }
}

/// `as.<platform>.unlink`: a moderator of the platform takes an account out of the
/// profile of a member of the platform (SPEC 7.4). `account` is `platform:user`, or a
/// platform's name when the profile has one account there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlinkQuery {
    pub by: WireIdentity,
    pub member: WireIdentity,
    pub account: String,
    pub reason: String,
    pub request_id: String,
}

/// The answer to an unlink: done (the accounts it was taken off; whether applied within
/// the wait), or refused with the reason for the moderator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnlinkOutcome {
    Done {
        account: WireIdentity,
        from: Vec<WireIdentity>,
        applied: bool,
    },
    Refused(String),
}

impl UnlinkOutcome {
    /// The reply for the moderator, on every bot.
    pub fn text(&self, reason: &str) -> String {
        match self {
            UnlinkOutcome::Done {
                account,
                from,
                applied,
            } => {
                let from: Vec<String> = from
                    .iter()
                    .map(|i| format!("{}:{}", i.platform, i.user))
                    .collect();
                format!(
                    "Unlinked {}:{} from {} ({reason}). {}",
                    account.platform,
                    account.user,
                    from.join(", "),
                    if *applied {
                        "The profiles are apart."
                    } else {
                        "It shows within moments."
                    }
                )
            }
            UnlinkOutcome::Refused(why) => format!("Not done: {why}."),
        }
    }
}

/// The answer to `as.<platform>.export` (the member's own data, docs/privacy.md): the
/// file to send them, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportOutcome {
    File { name: String, json: String },
    Refused(String),
}

/// How long a bot waits for a member's export (a scan of the events stream).
pub const EXPORT_WAIT: Duration = Duration::from_secs(60);

/// Room left in a reply for its envelope around an export.
const REPLY_ROOM: usize = 16 * 1024;

/// `as.<platform>.audit`: the audit log for a moderator of the platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRequest {
    pub by: WireIdentity,
    pub member: Option<WireIdentity>,
    pub moderator: Option<WireIdentity>,
    pub limit: u32,
}

/// Every reply: the answer, or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply<T> {
    Ok(T),
    Error(String),
}

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No replica answered in time (none running, or overloaded): try again later.
    #[error("the query service is unavailable: {0}")]
    Unavailable(String),
    /// The service answered with an error (a database failure, ...).
    #[error("the query service failed: {0}")]
    Remote(String),
    /// The request or the reply could not be understood.
    #[error("bad query: {0}")]
    Bad(String),
}

/// The typed client of the query service.
#[derive(Clone)]
pub struct QueryClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl QueryClient {
    pub fn new(client: async_nats::Client, prefix: &str, timeout: Duration) -> Self {
        Self {
            client,
            subjects: Subjects::new(prefix),
            timeout,
        }
    }

    /// The user owning `identity` as anyone may see it; `None` when no event named it
    /// yet, or the member is hidden (SPEC 7.3).
    pub async fn profile(&self, identity: &Identity) -> Result<Option<Profile>, QueryError> {
        self.ask(
            "profile",
            &ProfileRequest {
                identity: identity.into(),
            },
        )
        .await
    }

    /// The member's own profile, read for them (hidden or not): asked as their platform.
    pub async fn own_profile(&self, identity: &Identity) -> Result<Option<Profile>, QueryError> {
        self.ask(
            &acting_as(identity, "profile"),
            &ProfileRequest {
                identity: identity.into(),
            },
        )
        .await
    }

    /// The XP statement of the member owning `identity` for `period`, as anyone may see
    /// it, or (`own`) as the member reads it, hidden or not: asked as their platform.
    /// `None` when nobody has that identity, the member is hidden from the asker, or
    /// there is no current season.
    pub async fn statement(
        &self,
        identity: &Identity,
        period: Period,
        own: bool,
    ) -> Result<Option<Statement>, QueryError> {
        let subject = if own {
            acting_as(identity, "statement")
        } else {
            "statement".to_owned()
        };
        self.ask(
            &subject,
            &StatementRequest {
                identity: identity.into(),
                period,
                season: None,
            },
        )
        .await
    }

    pub async fn top(
        &self,
        period: Period,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Standing>, QueryError> {
        self.ask(
            "top",
            &TopRequest {
                period,
                limit,
                offset,
                season: None,
            },
        )
        .await
    }

    pub async fn issue_link_code(&self, issuer: &Identity) -> Result<IssuedCode, QueryError> {
        self.ask(
            &acting_as(issuer, "link.issue"),
            &IssueRequest {
                identity: issuer.into(),
            },
        )
        .await
    }

    pub async fn redeem_link_code(
        &self,
        redeemer: &Identity,
        code: &str,
    ) -> Result<Redemption, QueryError> {
        self.ask(
            &acting_as(redeemer, "link.redeem"),
            &RedeemRequest {
                identity: redeemer.into(),
                code: code.to_owned(),
            },
        )
        .await
    }

    /// Adjusts a member's XP for moderator `request.by` of the bot's platform.
    pub async fn adjust_xp(&self, request: &AdjustRequest) -> Result<AdjustOutcome, QueryError> {
        let by = identity(&request.by).map_err(|e| QueryError::Bad(e.to_string()))?;
        self.ask(&acting_as(&by, "xp.adjust"), request).await
    }

    /// The member's own export (`as.<platform>.export`), to send them privately. It
    /// reads the events stream, so it is waited for up to [`EXPORT_WAIT`], not the
    /// client's usual timeout (the bots answer the command at once and send the file
    /// when it comes).
    pub async fn export(&self, identity: &Identity) -> Result<ExportOutcome, QueryError> {
        let request = ProfileRequest {
            identity: identity.into(),
        };
        self.ask_within(&acting_as(identity, "export"), &request, EXPORT_WAIT)
            .await
    }

    /// Erases the member (SPEC 7.4): a `forget` of every identity of their profile
    /// (`as.<platform>.forget`); how many.
    pub async fn forget(&self, identity: &Identity) -> Result<usize, QueryError> {
        self.ask(
            &acting_as(identity, "forget"),
            &ProfileRequest {
                identity: identity.into(),
            },
        )
        .await
    }

    /// Takes an account out of a member's profile, for a moderator (`as.<platform>.unlink`).
    pub async fn unlink(&self, request: &UnlinkQuery) -> Result<UnlinkOutcome, QueryError> {
        let by = identity(&request.by).map_err(|e| QueryError::Bad(e.to_string()))?;
        self.ask(&acting_as(&by, "unlink"), request).await
    }

    /// The audit log's newest entries, for moderator `request.by` of the bot's platform.
    pub async fn audit(&self, request: &AuditRequest) -> Result<Vec<AuditEntry>, QueryError> {
        let by = identity(&request.by).map_err(|e| QueryError::Bad(e.to_string()))?;
        self.ask(&acting_as(&by, "audit"), request).await
    }

    async fn ask<Q: Serialize, A: DeserializeOwned>(
        &self,
        what: &str,
        request: &Q,
    ) -> Result<A, QueryError> {
        self.ask_within(what, request, self.timeout).await
    }

    async fn ask_within<Q: Serialize, A: DeserializeOwned>(
        &self,
        what: &str,
        request: &Q,
        timeout: Duration,
    ) -> Result<A, QueryError> {
        let body = rmp_serde::to_vec_named(request).map_err(|e| QueryError::Bad(e.to_string()))?;
        let asked = self.client.send_request(
            self.subjects.query(what),
            async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(timeout)),
        );
        let reply = tokio::time::timeout(timeout, asked)
            .await
            .map_err(|_| QueryError::Unavailable(format!("no reply within {timeout:?}")))?
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        match rmp_serde::from_slice(&reply.payload) {
            Ok(Reply::Ok(answer)) => Ok(answer),
            Ok(Reply::Error(e)) => Err(QueryError::Remote(e)),
            Err(e) => Err(QueryError::Bad(format!("reply: {e}"))),
        }
    }
}

/// The subject token of a query that acts for `identity`: `as.<its platform>.<what>`.
/// NATS permissions let each platform's user ask only `as.<its platform>.>`, and the
/// service acts only for identities of the subject's platform (docs/security.md).
fn acting_as(identity: &Identity, what: &str) -> String {
    format!("as.{}.{what}", identity.platform.as_str())
}

/// The queries that may act for an identity (as opposed to reading what is public):
/// asked on `as.<platform>.<query>`. All but `profile` must; `profile` asked so is the
/// member's own read, which shows a hidden member (SPEC 7.3) to themselves.
const ACTING: [&str; 9] = [
    "statement",
    "link.issue",
    "link.redeem",
    "xp.adjust",
    "audit",
    "profile",
    "unlink",
    "export",
    "forget",
];

/// A request's subject after the query prefix: the query, and the platform it speaks
/// for when it is `as.<platform>.<query>`.
fn scope(subject: &str) -> (Option<&str>, &str) {
    subject
        .strip_prefix("as.")
        .and_then(|rest| rest.split_once('.'))
        .map_or((None, subject), |(platform, what)| (Some(platform), what))
}

/// The identity a query acts for, when the subject speaks for its platform.
fn acting_for(w: &WireIdentity, on_behalf_of: Option<&str>) -> Result<Identity, Refusal> {
    let identity = identity(w)?;
    match on_behalf_of {
        Some(platform) if platform == identity.platform.as_str() => Ok(identity),
        Some(platform) => Err(Refusal::Bad(format!(
            "this subject speaks for platform {platform:?}, not for {identity}"
        ))),
        None => Err(Refusal::Bad(format!(
            "a query that acts for {identity} is asked on \
             <prefix>.query.as.{}.<query>",
            identity.platform.as_str()
        ))),
    }
}

/// What a request handler can fail with, said to the requester.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Bad(String),
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Refusal> {
    rmp_serde::from_slice(payload).map_err(|e| Refusal::Bad(format!("request: {e}")))
}

fn identity(w: &WireIdentity) -> Result<Identity, Refusal> {
    Identity::new(&w.platform, &w.user).map_err(|e| Refusal::Bad(e.to_string()))
}

/// The reply bytes, and the outcome for the metrics (`ok`, `bad_request`, `error`).
fn reply<T: Serialize>(result: Result<T, Refusal>) -> (Vec<u8>, &'static str) {
    let (reply, outcome) = match result {
        Ok(answer) => (Reply::Ok(answer), "ok"),
        Err(e @ Refusal::Bad(_)) => (Reply::Error(e.to_string()), "bad_request"),
        Err(e @ Refusal::Store(_)) => (Reply::Error(e.to_string()), "error"),
    };
    // Replies are plain structs of strings and numbers.
    let bytes = rmp_serde::to_vec_named(&reply).expect("a reply always serialises");
    (bytes, outcome)
}

/// What the service answers with: the database, and for the moderators' tools the
/// broker (signing as the moderator principal when `trust.keys.moderator` is set) and
/// the guard rails.
#[derive(Clone)]
pub struct Service {
    pub store: Store,
    pub broker: Broker,
    pub limits: ModerationSettings,
}

/// `as.<platform>.xp.adjust`: the moderator and the member both of the subject's
/// platform; the rules are `moderation::adjust`'s, the same as the CLI's.
async fn adjust(
    service: &Service,
    payload: &[u8],
    on_behalf_of: Option<&str>,
) -> Result<AdjustOutcome, Refusal> {
    let q: AdjustRequest = decode(payload)?;
    let request = Request {
        by: acting_for(&q.by, on_behalf_of)?,
        target: acting_for(&q.target, on_behalf_of)?,
        verb: q.verb,
        reason: q.reason,
        request_id: Some(q.request_id),
    };
    let done = moderation::adjust(
        &service.store,
        &service.broker,
        &service.limits,
        &request,
        now_ms(),
        moderation::QUERY_WAIT,
    )
    .await;
    Ok(match judged(done)? {
        Ok(done) => AdjustOutcome::Done {
            event_id: done.event.id.as_str().to_owned(),
            amount: done.amount,
            xp: done.xp,
            duplicate: done.duplicate,
        },
        Err(why) => AdjustOutcome::Refused(why),
    })
}

/// A moderator's tool's result: done, or refused with the words for the moderator
/// (`Ok(Err(..))`); or the service failed.
fn judged<T>(result: Result<T, ModerationError>) -> Result<Result<T, String>, Refusal> {
    match result {
        Ok(done) => Ok(Ok(done)),
        Err(ModerationError::Refused(why)) => Ok(Err(why.to_string())),
        Err(ModerationError::Store(e)) => Err(Refusal::Store(e)),
        Err(e @ ModerationError::Publish(_)) => Err(Refusal::Bad(e.to_string())),
    }
}

/// `as.<platform>.unlink`: the moderator and the member of the subject's platform, the
/// account one of the member's; the rules are `moderation::unlink`'s, the same as the
/// CLI's and the website's.
async fn unlink(
    service: &Service,
    payload: &[u8],
    on_behalf_of: Option<&str>,
) -> Result<UnlinkOutcome, Refusal> {
    let q: UnlinkQuery = decode(payload)?;
    let by = acting_for(&q.by, on_behalf_of)?;
    let member = acting_for(&q.member, on_behalf_of)?;
    let refused = |why: String| Ok(UnlinkOutcome::Refused(why));
    let Some(profile) = service.store.profile(&member).await? else {
        return refused(format!("no member has the identity {member}"));
    };
    let wanted = q.account.trim();
    let mut matching = profile
        .identities
        .iter()
        .filter(|i| format!("{}:{}", i.platform, i.user) == wanted || i.platform == wanted);
    let account = match (matching.next(), matching.next()) {
        (Some(one), None) => identity(one)?,
        (Some(_), Some(_)) => {
            return refused(format!(
                "the member has several {wanted} accounts: name one as {wanted}:<id>"
            ));
        }
        (None, _) => {
            return refused(format!(
                "{wanted} is not an account of this member's profile"
            ));
        }
    };
    let request = moderation::UnlinkRequest {
        account,
        from: None,
        reason: q.reason,
        by,
        request_id: Some(q.request_id),
    };
    let done = moderation::unlink(
        &service.store,
        &service.broker,
        &service.limits,
        &request,
        now_ms(),
        moderation::QUERY_WAIT,
    )
    .await;
    Ok(match judged(done)? {
        Ok(done) => UnlinkOutcome::Done {
            account: (&done.account).into(),
            from: done.from.iter().map(WireIdentity::from).collect(),
            applied: done.applied,
        },
        Err(why) => UnlinkOutcome::Refused(why),
    })
}

/// `as.<platform>.export`: a member's own export, for the bot to send them privately;
/// refused when it is larger than a NATS message can carry (the website and `ttfd
/// export` have no such limit).
async fn export(
    service: &Service,
    payload: &[u8],
    on_behalf_of: Option<&str>,
) -> Result<ExportOutcome, Refusal> {
    let q: ProfileRequest = decode(payload)?;
    let member = acting_for(&q.identity, on_behalf_of)?;
    let document = match crate::privacy::export(
        &service.store,
        &service.broker,
        &member,
        time::OffsetDateTime::now_utc(),
    )
    .await
    {
        Ok(d) => d,
        Err(crate::privacy::ExportError::Unknown(_)) => {
            return Ok(ExportOutcome::Refused(
                "nothing is recorded about you yet".into(),
            ));
        }
        Err(crate::privacy::ExportError::Store(e)) => return Err(Refusal::Store(e)),
        Err(e) => return Err(Refusal::Bad(e.to_string())),
    };
    let json = serde_json::to_string_pretty(&document).map_err(|e| Refusal::Bad(e.to_string()))?;
    let limit = service.broker.client.server_info().max_payload;
    if json.len() + REPLY_ROOM > limit {
        return Ok(ExportOutcome::Refused(format!(
            "your data ({} kB) is more than a chat message can carry: download it on the \
             website (your profile, Download my data), or ask an operator (ttfd export)",
            json.len() / 1024
        )));
    }
    Ok(ExportOutcome::File {
        name: crate::privacy::file_name(&member),
        json,
    })
}

/// Answers one request (`subject`: after the query prefix); the reply bytes and the
/// outcome.
async fn answer(service: &Service, subject: &str, payload: &[u8]) -> (Vec<u8>, &'static str) {
    let store = &service.store;
    let (on_behalf_of, what) = scope(subject);
    if on_behalf_of.is_some() && !ACTING.contains(&what) {
        return reply::<()>(Err(Refusal::Bad(format!(
            "{what:?} is asked on <prefix>.query.{what}, not for a platform"
        ))));
    }
    match what {
        "profile" => reply(
            async {
                let q: ProfileRequest = decode(payload)?;
                let (asked, own) = match on_behalf_of {
                    Some(_) => (acting_for(&q.identity, on_behalf_of)?, true),
                    None => (identity(&q.identity)?, false),
                };
                let profile = store.profile(&asked).await?;
                Ok(profile.filter(|p| own || p.shown_to(None)))
            }
            .await,
        ),
        "statement" => reply(
            async {
                let q: StatementRequest = decode(payload)?;
                let (asked, own) = match on_behalf_of {
                    Some(_) => (acting_for(&q.identity, on_behalf_of)?, true),
                    None => (identity(&q.identity)?, false),
                };
                let today = time::OffsetDateTime::now_utc().date();
                match store.profile(&asked).await? {
                    Some(p) if own || p.shown_to(None) => Ok(store
                        .statement(p.uid, q.period, q.season.as_deref(), today)
                        .await?),
                    _ => Ok(None),
                }
            }
            .await,
        ),
        "top" => reply(
            async {
                let q: TopRequest = decode(payload)?;
                let today = time::OffsetDateTime::now_utc().date();
                let limit = i64::from(q.limit.clamp(1, MAX_LIMIT));
                // No season on now (or none of that name): nobody on it.
                match store.board(q.period, q.season.as_deref(), today).await? {
                    Some(board) => Ok(store.top(&board.key, limit, i64::from(q.offset)).await?),
                    None => Ok(Vec::new()),
                }
            }
            .await,
        ),
        "link.issue" => reply(
            async {
                let q: IssueRequest = decode(payload)?;
                Ok(store
                    .issue_link_code(&acting_for(&q.identity, on_behalf_of)?, now_ms())
                    .await?)
            }
            .await,
        ),
        "link.redeem" => reply(
            async {
                let q: RedeemRequest = decode(payload)?;
                let redeemer = acting_for(&q.identity, on_behalf_of)?;
                Ok(store.redeem_link_code(&redeemer, &q.code, now_ms()).await?)
            }
            .await,
        ),
        "xp.adjust" => reply(adjust(service, payload, on_behalf_of).await),
        "unlink" => reply(unlink(service, payload, on_behalf_of).await),
        "export" => reply(export(service, payload, on_behalf_of).await),
        "forget" => reply(
            async {
                let q: ProfileRequest = decode(payload)?;
                let member = acting_for(&q.identity, on_behalf_of)?;
                let reason = format!(
                    "the member asked ({} /gdpr delete)",
                    member.platform.as_str()
                );
                let events = crate::privacy::forget_member(
                    &service.store,
                    &service.broker,
                    &member,
                    &reason,
                    &member,
                    now_ms(),
                )
                .await
                .map_err(|e| Refusal::Bad(e.to_string()))?;
                Ok(events.len())
            }
            .await,
        ),
        "audit" => reply(
            async {
                let q: AuditRequest = decode(payload)?;
                acting_for(&q.by, on_behalf_of)?;
                let query = AuditQuery {
                    member: q.member.as_ref().map(identity).transpose()?,
                    by: q.moderator.as_ref().map(identity).transpose()?,
                    limit: i64::from(q.limit.clamp(1, MAX_LIMIT)),
                    ..AuditQuery::default()
                };
                Ok(store.audit(&query).await?.0)
            }
            .await,
        ),
        other => reply::<()>(Err(Refusal::Bad(format!("unknown query {other:?}")))),
    }
}

/// `ttfd query`: serves until `shutdown`, with `/metrics`, `/healthz`, `/readyz` on
/// `metrics.listen` when set.
pub async fn run(
    settings: &Settings,
    store: Store,
    broker: Broker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = Metrics::new();
    let metrics = QueryMetrics::register(&registry);
    let readiness = Readiness::new()
        .database(store.clone())
        .nats(broker.clone());
    observe::serve(&settings.metrics, registry, readiness, shutdown.clone()).await?;
    let service = Service {
        store,
        broker,
        limits: settings.moderation.clone(),
    };
    serve_with(service, metrics, shutdown).await
}

/// Serves queries until `shutdown`, with the default guard rails; requests in progress
/// then finish and are answered.
pub async fn serve(
    store: Store,
    broker: Broker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = Service {
        store,
        broker,
        limits: ModerationSettings::default(),
    };
    serve_with(service, QueryMetrics::default(), shutdown).await
}

/// As [`serve`], recording every request in `metrics` (`ttfd_query_*`).
pub async fn serve_with(
    service: Service,
    metrics: QueryMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let broker = service.broker.clone();
    let prefix = broker.subjects.query("");
    let mut requests = broker
        .client
        .queue_subscribe(format!("{prefix}>"), QUEUE_GROUP.to_owned())
        .await?;
    info!(subjects = %format!("{prefix}>"), "query service ready");
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let tracker = TaskTracker::new();
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = requests.next() => r,
        };
        let Some(request) = request else { break };
        let Some(reply_to) = request.reply.clone() else {
            debug!(subject = %request.subject, "query without a reply subject; ignored");
            continue;
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (service, client, metrics) = (service.clone(), broker.client.clone(), metrics.clone());
        let what = request
            .subject
            .strip_prefix(prefix.as_str())
            .unwrap_or_default()
            .to_owned();
        tracker.spawn(async move {
            let started = std::time::Instant::now();
            let (body, outcome) = answer(&service, &what, &request.payload).await;
            metrics.record(scope(&what).1, outcome, started.elapsed().as_secs_f64());
            if let Err(e) = client.publish(reply_to, body.into()).await {
                warn!(error = %e, query = what, "cannot send a query reply");
            }
            drop(slot);
        });
    }
    let _ = requests.unsubscribe().await;
    tracker.close();
    tracker.wait().await;
    broker.flush_within(EXIT_FLUSH).await;
    Ok(())
}
