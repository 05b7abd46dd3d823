//! The admin page (`/admin`) and `GET /api/v1/audit`, for the identities in
//! `web.admins` (docs/moderation.md): find a member, adjust their XP with a reason
//! (the same `moderation::adjust` as the CLI and the bots), take a wrongly linked
//! account out of a profile (`moderation::unlink`), read the audit log with filters and
//! pages.

use askama::Template;
use axum::Json;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::SignedCookieJar;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use ttfd_shared::Identity;
use ttfd_shared::view::{AuditEntry, text};

use super::AppState;
use super::api::ApiError;
use super::pages::{Layout, error_page, layout, respond, thousands};
use super::session::{Flash, Session};
use crate::moderation::{self, ModerationError, Request, Verb};
use crate::now_ms;
use crate::store::audit::AuditQuery;

/// Audit entries a page shows.
const PER_PAGE: i64 = 50;

/// The filters of the page and of the API.
#[derive(Debug, Default, Deserialize)]
pub struct AuditFilters {
    #[serde(default)]
    pub member: String,
    #[serde(default)]
    pub by: String,
    /// Days, `YYYY-MM-DD` (UTC): from, before.
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub page: Option<i64>,
}

impl AuditFilters {
    /// The store's query, or what is wrong with a filter.
    fn query(&self) -> Result<AuditQuery, String> {
        let identity = |s: &str, what: &str| -> Result<Option<Identity>, String> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            Identity::parse(s)
                .map(Some)
                .map_err(|e| format!("{what}: {e}"))
        };
        let day = |s: &str, what: &str| -> Result<Option<i64>, String> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            let format = time::macros::format_description!("[year]-[month]-[day]");
            time::Date::parse(s, format)
                .map(|d| Some(d.midnight().assume_utc().unix_timestamp() * 1000))
                .map_err(|_| format!("{what}: {s:?} is not a day such as 2026-12-01"))
        };
        let page = self.page.unwrap_or(1);
        if !(1..=1_000_000).contains(&page) {
            return Err("page must be 1 or more".into());
        }
        Ok(AuditQuery {
            member: identity(&self.member, "member")?,
            by: identity(&self.by, "by")?,
            since_ms: day(&self.since, "since")?,
            until_ms: day(&self.until, "until")?,
            event_id: None,
            offset: (page - 1) * PER_PAGE,
            limit: PER_PAGE,
        })
    }

    /// This page's address with another page number.
    fn href(&self, page: i64) -> String {
        let pairs = [
            ("member", self.member.as_str()),
            ("by", self.by.as_str()),
            ("since", self.since.as_str()),
            ("until", self.until.as_str()),
        ];
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs.into_iter().filter(|(_, v)| !v.is_empty()) {
            out.append_pair(k, v);
        }
        out.append_pair("page", &page.to_string());
        format!("/admin?{}", out.finish())
    }
}

/// Whether the session's member is an admin: their identity is in `web.admins`, or
/// they signed in with Discord as a moderator (`discord.moderator_roles`) within the
/// hour.
fn admin(app: &AppState, session: &Session) -> Option<Identity> {
    session
        .identity()
        .filter(|me| app.admins.contains(me) || session.is_moderator(now_ms()))
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    layout: Layout,
    csrf: String,
    /// A fresh id for the adjustment form: submitting it twice counts once.
    request: String,
    member: String,
    by: String,
    since: String,
    until: String,
    found: Option<Found>,
    entries: Vec<Row>,
    shown: usize,
    total: i64,
    newer: Option<String>,
    older: Option<String>,
}

struct Found {
    uid: i64,
    name: String,
    xp: String,
    rank: String,
    identities: String,
    /// The accounts of a profile of more than one, each of which can be taken out.
    accounts: Vec<String>,
}

struct Row {
    when: String,
    change: String,
    member: String,
    by: String,
    reason: String,
}

fn who(i: &ttfd_shared::wire::WireIdentity) -> String {
    format!("{}:{}", i.platform, i.user)
}

fn row(e: &AuditEntry) -> Row {
    let change = match (e.amount, &e.other) {
        (Some(a), _) => format!(
            "{}{} XP",
            if a > 0 { "+" } else { "" },
            thousands(i64::from(a))
        ),
        (None, Some(o)) if e.kind == "unlink" => format!("unlinked from {}", who(o)),
        (None, Some(o)) => format!("linked with {}", who(o)),
        (None, None) => e.kind.clone(),
    };
    Row {
        when: e
            .at
            .replace('T', " ")
            .trim_end_matches('Z')
            .chars()
            .take(19)
            .collect(),
        change,
        member: who(&e.member),
        by: e.by.as_ref().map_or_else(|| "(not said)".into(), who),
        reason: e.reason.clone().unwrap_or_default(),
    }
}

/// `GET /admin`: find a member, adjust, read the audit log.
pub async fn page(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Query(filters): Query<AuditFilters>,
) -> Response {
    let mut session = app.session(&jar).await;
    if session.identity().is_none() {
        return Redirect::to("/login").into_response();
    }
    if admin(&app, &session).is_none() {
        let message = "This page is for the site's admins (web.admins) and Discord moderators.";
        return error_page(&app, jar, session, StatusCode::FORBIDDEN, message);
    }
    let query = match filters.query() {
        Ok(q) => q,
        Err(message) => {
            return error_page(&app, jar, session, StatusCode::BAD_REQUEST, message);
        }
    };
    let found = match &query.member {
        Some(m) => app.store.profile(m).await,
        None => Ok(None),
    };
    let (found, audit) = match (found, app.store.audit(&query).await) {
        (Ok(f), Ok(a)) => (f, a),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "admin page read failed");
            let message = "The database is not available right now. Try again in a moment.";
            return error_page(&app, jar, session, StatusCode::SERVICE_UNAVAILABLE, message);
        }
    };
    let (entries, total) = audit;
    let page_no = filters.page.unwrap_or(1);
    let page = AdminPage {
        layout: layout(&mut session),
        csrf: session.csrf.clone(),
        request: format!("{:032x}", rand::rng().random::<u128>()),
        member: filters.member.trim().to_owned(),
        by: filters.by.trim().to_owned(),
        since: filters.since.trim().to_owned(),
        until: filters.until.trim().to_owned(),
        found: found.map(|p| Found {
            uid: p.uid,
            name: p
                .display_name
                .clone()
                .unwrap_or_else(|| text::fallback_name(p.uid)),
            xp: thousands(p.xp),
            rank: p.rank.name.clone(),
            identities: p.identities.iter().map(who).collect::<Vec<_>>().join(", "),
            accounts: if p.identities.len() > 1 {
                p.identities.iter().map(who).collect()
            } else {
                Vec::new()
            },
        }),
        shown: entries.len(),
        entries: entries.iter().map(row).collect(),
        total,
        newer: (page_no > 1).then(|| filters.href(page_no - 1)),
        older: (page_no * PER_PAGE < total).then(|| filters.href(page_no + 1)),
    };
    respond(&app, jar, &session, StatusCode::OK, page)
}

/// The adjustment form.
#[derive(Debug, Deserialize)]
pub struct AdjustForm {
    csrf: String,
    request: String,
    member: String,
    verb: String,
    #[serde(default)]
    amount: String,
    reason: String,
}

/// `POST /admin/xp`: one adjustment by the signed-in admin; the result (or why not)
/// comes back as the page's message.
pub async fn adjust(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Form(form): Form<AdjustForm>,
) -> Response {
    let (csrf, member) = (form.csrf.clone(), form.member.clone());
    moderator_form(app, jar, &csrf, &member, |app, me| async move {
        adjustment(&app, &me, &form)
            .await
            .map(|done| format!("{done}."))
    })
    .await
}

/// The admin page's forms: checks that the signed-in member is an admin and that the
/// form came from the page, runs `act`, and goes back to the member with what it said.
async fn moderator_form<F, Fut>(
    app: AppState,
    jar: SignedCookieJar,
    csrf: &str,
    member: &str,
    act: F,
) -> Response
where
    F: FnOnce(AppState, Identity) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let mut session = app.session(&jar).await;
    let Some(me) = admin(&app, &session).filter(|_| session.csrf_ok(csrf)) else {
        let message = "This form is for the site's admins, and must come from the admin page.";
        return error_page(&app, jar, session, StatusCode::FORBIDDEN, message);
    };
    let back = AuditFilters {
        member: member.to_owned(),
        ..AuditFilters::default()
    }
    .href(1);
    session.flash = Some(match act(app.clone(), me).await {
        Ok(message) => Flash::Ok { message },
        Err(message) => Flash::Error { message },
    });
    (session.store(jar, &app.cookies), Redirect::to(&back)).into_response()
}

/// A moderation tool's error as the admin reads it.
fn not_done(e: ModerationError) -> String {
    match e {
        ModerationError::Refused(why) => format!("Not done: {why}."),
        other => {
            tracing::error!(error = %other, "an admin page's change failed");
            "Not done: the change could not be published. Try again.".into()
        }
    }
}

/// The id a form's request carries, as the moderation tools take it.
fn request_id(form_request: &str) -> Option<String> {
    Some(format!(
        "web:{}",
        form_request.chars().take(64).collect::<String>()
    ))
}

/// What the form asks, checked and applied; the words for the admin either way.
async fn adjustment(
    app: &AppState,
    me: &Identity,
    form: &AdjustForm,
) -> Result<moderation::Adjusted, String> {
    let target = Identity::parse(form.member.trim()).map_err(|e| format!("Member: {e}"))?;
    let number = || {
        form.amount
            .trim()
            .parse::<i64>()
            .map_err(|_| "XP must be a whole number".to_owned())
    };
    let count =
        || number().and_then(|n| u32::try_from(n).map_err(|_| "XP must be 0 or more".to_owned()));
    let verb = match form.verb.as_str() {
        "add" => Verb::Add(count()?),
        "remove" => Verb::Remove(count()?),
        "set" => Verb::Set(number()?),
        "reset" => Verb::Reset,
        other => return Err(format!("{other:?} is not one of add, remove, set, reset")),
    };
    let request = Request {
        target,
        verb,
        reason: form.reason.clone(),
        by: me.clone(),
        request_id: request_id(&form.request),
    };
    moderation::adjust(
        &app.store,
        &app.moderator,
        &app.moderation,
        &request,
        now_ms(),
        moderation::WEB_WAIT,
    )
    .await
    .map_err(not_done)
}

/// The form that takes an account out of a profile.
#[derive(Debug, Deserialize)]
pub struct UnlinkForm {
    csrf: String,
    request: String,
    member: String,
    account: String,
    reason: String,
}

/// `POST /admin/unlink`: takes one account out of the found member's profile (SPEC 7.4,
/// the same `moderation::unlink` as the CLI and the bots); the result (or why not) comes
/// back as the page's message.
pub async fn unlink(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Form(form): Form<UnlinkForm>,
) -> Response {
    let (csrf, member) = (form.csrf.clone(), form.member.clone());
    moderator_form(app, jar, &csrf, &member, |app, me| async move {
        let account = Identity::parse(form.account.trim()).map_err(|e| format!("Account: {e}"))?;
        let request = moderation::UnlinkRequest {
            account,
            from: None,
            reason: form.reason,
            by: me,
            request_id: request_id(&form.request),
        };
        moderation::unlink(
            &app.store,
            &app.moderator,
            &app.moderation,
            &request,
            now_ms(),
            moderation::WEB_WAIT,
        )
        .await
        .map(|done| format!("{done}."))
        .map_err(not_done)
    })
    .await
}

/// `GET /api/v1/audit`: the audit log as JSON, for a browser signed in as an admin.
/// `401` without a sign-in, `403` for a member who is not an admin.
pub async fn api(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Query(filters): Query<AuditFilters>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let session = app.session(&jar).await;
    if session.identity().is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "sign in on the website as an admin",
        ));
    }
    if admin(&app, &session).is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the audit log is for the site's admins (web.admins)",
        ));
    }
    let query = filters.query().map_err(ApiError::bad_request)?;
    let (entries, total) = app.store.audit(&query).await?;
    Ok(Json(json!({
        "entries": entries,
        "total": total,
        "page": filters.page.unwrap_or(1),
        "per_page": PER_PAGE,
    })))
}
