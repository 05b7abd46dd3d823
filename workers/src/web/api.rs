//! The HTTP API, `/api/v1/...`: a user by identity, leaderboards, the rank ladder, and
//! ingest of events for platforms that cannot speak NATS. JSON in and out; every
//! refusal is a 4xx with `{"error": "<what is wrong>"}`. Documented in `docs/api.md`
//! and `docs/openapi.yaml`.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::SignedCookieJar;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use ttfd_shared::trust::{self, Publisher};
use ttfd_shared::{Event, Identity, Payload};

use super::AppState;
use super::ops::IngestLabels;
use crate::now_ms;
use ttfd_shared::view::{Period, Profile, Standing, Statement};
use ttfd_shared::wire::from_json as event_from_json;

/// Most events in one ingest request.
pub const MAX_BATCH: usize = 1000;
/// Largest ingest body.
pub const MAX_INGEST_BYTES: usize = 4 * 1024 * 1024;
/// Leaderboard page size: default and largest.
pub const DEFAULT_PER_PAGE: i64 = 25;
pub const MAX_PER_PAGE: i64 = 100;
/// Pages beyond this are refused (deep OFFSETs are slow and nobody reads them).
pub const MAX_PAGE: i64 = 1_000_000;

/// A refusal: a status and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (a rate limit).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(self, secs: u64) -> Self {
        Self {
            retry_after: Some(secs),
            ..self
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "API read failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is not available; try again",
        )
    }
}

/// Unknown `/api/v1` paths.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such API endpoint; see docs/api.md",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

/// `GET /api/v1/users/{platform}/{user}`: the unified user owning the identity.
///
/// The ids of the other accounts linked to it are shown only to their owner (a browser
/// signed in as one of them); everyone else sees which platforms are linked
/// (`linked_platforms`) and the identity they asked about.
pub async fn user(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Path((platform, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let identity =
        Identity::new(&platform, &user).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let signed_in = app.session(&jar).await.identity();
    match app.store.profile(&identity).await? {
        // A hidden member (SPEC 7.3) is "not found" to everyone but themselves.
        Some(mut profile) if profile.shown_to(signed_in.as_ref()) => {
            let mut linked_platforms: Vec<String> = profile
                .identities
                .iter()
                .map(|i| i.platform.clone())
                .collect();
            linked_platforms.sort();
            linked_platforms.dedup();
            let own = signed_in.as_ref().is_some_and(|me| profile.has(me));
            if !own {
                profile.identities.retain(|i| {
                    i.platform == identity.platform.as_str() && i.user == identity.user.as_str()
                });
            }
            Ok(Json(PublicProfile {
                profile,
                linked_platforms,
            })
            .into_response())
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no user has the identity {identity}"),
        )),
    }
}

/// `GET /api/v1/users/{platform}/{user}/statement?period=week|month|season|all&season=NAME&at=YYYY-MM-DD`:
/// where the member's XP of the period came from (docs/rules.md, "The XP statement");
/// this week when no period is given. As public as the profile.
pub async fn statement(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Path((platform, user)): Path<(String, String)>,
    query: Result<Query<BoardQuery>, QueryRejection>,
) -> Result<Json<Statement>, ApiError> {
    let identity =
        Identity::new(&platform, &user).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Query(mut query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    query.period.get_or_insert_with(|| "week".into());
    let req = query.parse().map_err(ApiError::bad_request)?;
    let signed_in = app.session(&jar).await.identity();
    let profile = match app.store.profile(&identity).await? {
        Some(p) if p.shown_to(signed_in.as_ref()) => p,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no user has the identity {identity}"),
            ));
        }
    };
    let today = req
        .at
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().date());
    match app
        .store
        .statement(profile.uid, req.period, req.season.as_deref(), today)
        .await?
    {
        Some(s) => Ok(Json(s)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            match &req.season {
                Some(name) => format!("there is no season named {name:?}"),
                None => format!("no season is on {today}"),
            },
        )),
    }
}

/// `PUT /api/v1/me/prefs`'s body: the preferences to set (SPEC 7.3); a field left out
/// stays as it is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefsBody {
    pub hidden: Option<bool>,
    pub notify: Option<bool>,
}

/// `PUT /api/v1/me/prefs`: the signed-in member's preferences, as one `prefs` event of
/// the identity they signed in with (through the outbox, like the profile's toggles).
/// 202: recorded; the profile shows it within moments.
pub async fn set_prefs(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    body: Result<Json<PrefsBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Some(me) = app.session(&jar).await.identity() else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if body.hidden.is_none() && body.notify.is_none() {
        return Err(ApiError::bad_request("set hidden, notify or both"));
    }
    let event = super::auth::prefs_event(
        me,
        Payload::Prefs {
            hidden: body.hidden,
            notify: body.notify,
        },
    );
    app.store.enqueue_event(&event).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event": event.id.as_str(), "hidden": body.hidden, "notify": body.notify})),
    )
        .into_response())
}

/// `GET /api/v1/me/export`: everything held about the signed-in member, the same
/// document as the website's "Download my data" (docs/privacy.md).
pub async fn export_me(
    State(app): State<AppState>,
    jar: SignedCookieJar,
) -> Result<Response, ApiError> {
    let Some(me) = app.session(&jar).await.identity() else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let now = time::OffsetDateTime::now_utc();
    match crate::privacy::export(&app.store, &app.broker, &me, now).await {
        Ok(document) => Ok(([(header::CACHE_CONTROL, "no-store")], Json(document)).into_response()),
        Err(crate::privacy::ExportError::Unknown(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "nothing is recorded about you yet",
        )),
        Err(e) => {
            tracing::error!(error = %e, "building an export");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the export cannot be built right now; try again",
            ))
        }
    }
}

/// `DELETE /api/v1/me`'s body: the typed confirmation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseBody {
    pub confirm: String,
}

/// `DELETE /api/v1/me` with `{"confirm": "delete"}`: erases the signed-in member, every
/// identity of their profile (SPEC 7.4), and ends the session; 202 with the `forget`
/// events recorded.
pub async fn erase_me(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    body: Result<Json<EraseBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mut session = app.session(&jar).await;
    let Some(me) = session.identity() else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !body.confirm.trim().eq_ignore_ascii_case("delete") {
        return Err(ApiError::bad_request(
            "nothing was erased: send {\"confirm\": \"delete\"}",
        ));
    }
    let events = super::auth::erase_profile(&app, &me, "the member asked (API)").await?;
    session.sign_out();
    let events: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
    Ok((
        StatusCode::ACCEPTED,
        session.store(jar, &app.cookies),
        Json(json!({ "events": events })),
    )
        .into_response())
}

/// A profile as the API shows it: `identities` as the asker may see them, and the
/// platforms linked.
#[derive(Debug, Serialize)]
pub struct PublicProfile {
    #[serde(flatten)]
    pub profile: Profile,
    pub linked_platforms: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct BoardQuery {
    pub period: Option<String>,
    /// A season by name instead of the period.
    pub season: Option<String>,
    /// A day (YYYY-MM-DD) in the week or month wanted: a past period's leaderboard.
    pub at: Option<String>,
    pub page: Option<String>,
    pub per_page: Option<String>,
}

/// A parsed leaderboard request.
#[derive(Debug, Clone)]
pub struct BoardRequest {
    pub period: Period,
    pub season: Option<String>,
    /// A day in the period; `None`: today.
    pub at: Option<time::Date>,
    pub page: i64,
    pub per_page: i64,
}

impl BoardQuery {
    pub fn parse(&self) -> Result<BoardRequest, String> {
        let period = match self.period.as_deref() {
            None | Some("") => Period::All,
            Some(p) => p
                .parse::<Period>()
                .map_err(|_| format!("period {p:?} must be all, week, month or season"))?,
        };
        let season = match self.season.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) if ttfd_shared::seasons::valid_name(s) => Some(s.to_owned()),
            Some(s) => return Err(format!("season {s:?} is not a season name")),
        };
        let number = |name: &str, v: &Option<String>, default: i64, max: i64| match v.as_deref() {
            None | Some("") => Ok(default),
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| format!("{name} must be a whole number from 1 to {max}")),
        };
        let at = match self.at.as_deref() {
            None | Some("") => None,
            Some(d) => Some(
                time::Date::parse(d, time::macros::format_description!("[year]-[month]-[day]"))
                    .map_err(|_| format!("at {d:?} must be a day as YYYY-MM-DD"))?,
            ),
        };
        Ok(BoardRequest {
            period,
            season,
            at,
            page: number("page", &self.page, 1, MAX_PAGE)?,
            per_page: number("per_page", &self.per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE)?,
        })
    }
}

/// One page of a leaderboard.
#[derive(Debug, Clone, Serialize)]
pub struct Board {
    pub period: &'static str,
    /// The standings key of the period shown (`week:2026-W49`, `season:winter`...).
    pub key: String,
    /// For a season's board: its name and days (added with seasons).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub season: Option<SeasonDays>,
    pub page: i64,
    pub per_page: i64,
    /// Users on this leaderboard (for a period: users who earned XP in it).
    pub total: i64,
    pub pages: i64,
    pub entries: Vec<Standing>,
}

/// A season's name and days, as a board shows them.
#[derive(Debug, Clone, Serialize)]
pub struct SeasonDays {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// The page `req` asks for; `Err` with a 404 when it names a season there is not (or
/// asks for the current season when none is on).
pub async fn load_board(app: &AppState, req: &BoardRequest) -> Result<Board, ApiError> {
    let today = req
        .at
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().date());
    let Some(board) = app
        .store
        .board(req.period, req.season.as_deref(), today)
        .await?
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            match &req.season {
                Some(name) => format!("there is no season named {name:?}"),
                None => format!("no season is on {today}"),
            },
        ));
    };
    let offset = (req.page - 1) * req.per_page;
    let entries = app.store.top(&board.key, req.per_page, offset).await?;
    let total = app.store.ranked(&board.key).await?;
    Ok(Board {
        period: board.period.as_str(),
        season: board.season.as_ref().map(|s| SeasonDays {
            name: s.name.clone(),
            from: s.first.to_string(),
            to: s.last.to_string(),
        }),
        key: board.key,
        page: req.page,
        per_page: req.per_page,
        total,
        pages: ((total + req.per_page - 1) / req.per_page).max(1),
        entries,
    })
}

/// `GET /api/v1/leaderboard?period=all|week|month&page=N&per_page=N`.
pub async fn leaderboard(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    query: Result<Query<BoardQuery>, QueryRejection>,
) -> Result<Json<Board>, ApiError> {
    let session = app.session(&jar).await;
    app.leaderboards_for(&session)
        .map_err(|(status, why)| ApiError::new(status, why))?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let req = query.parse().map_err(ApiError::bad_request)?;
    Ok(Json(load_board(&app, &req).await?))
}

#[derive(Debug, Clone, Serialize)]
pub struct RankRung {
    pub index: u8,
    pub name: String,
    pub tier: String,
    pub stars: u8,
    pub required_xp: i64,
    pub next_xp: Option<i64>,
    /// Coins paid once when the rank is first reached.
    pub coins: i64,
}

pub fn ladder(rules: &ttfd_shared::Rules) -> Vec<RankRung> {
    rules
        .ranks
        .iter()
        .enumerate()
        .map(|(i, def)| {
            let rank = rules.rank(u8::try_from(i + 1).unwrap_or(u8::MAX));
            RankRung {
                index: rank.index,
                name: rank.name,
                tier: rank.tier,
                stars: rank.stars,
                required_xp: rank.required_xp,
                next_xp: rank.next_xp,
                coins: def.coins,
            }
        })
        .collect()
}

/// `GET /api/v1/seasons`: every season, the newest first, with a closed season's
/// champions (docs/seasons.md); as public as the leaderboards.
pub async fn seasons(
    State(app): State<AppState>,
    jar: SignedCookieJar,
) -> Result<Json<Value>, ApiError> {
    let session = app.session(&jar).await;
    app.leaderboards_for(&session)
        .map_err(|(status, why)| ApiError::new(status, why))?;
    let today = time::OffsetDateTime::now_utc().date();
    Ok(Json(
        json!({"seasons": app.store.season_views(today).await?}),
    ))
}

/// `GET /api/v1/ranks`: the rank ladder, lowest first.
pub async fn ranks(State(app): State<AppState>) -> Json<Value> {
    Json(json!({"ranks": ladder(&app.store.rules)}))
}

/// What ingest reports for each stored event.
#[derive(Debug, Serialize)]
struct Stored {
    id: String,
    subject: String,
    /// Already in the stream's duplicate window: stored once, not again.
    duplicate: bool,
}

/// `POST /api/v1/events`: one JSON envelope or an array of them, published to
/// `<prefix>.events.<platform>.<kind>` once every one of them is valid and of the
/// token's platform; nothing is published otherwise.
///
/// The token is checked before a byte of the body is read, and the body is read up to
/// [`MAX_INGEST_BYTES`] only.
/// Requests without a valid token count towards the client's sign-in rate (so tokens
/// cannot be guessed fast); with one, towards the token's ingest rate.
pub async fn ingest(State(app): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let limited = |wait: u64, message: &str| {
        app.metrics.rate_limited.inc();
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).retry_after(wait)
    };
    let unauthorized = |message: &'static str| {
        let client = app.limits.client(&headers, peer);
        match app.limits.check_client(client) {
            Ok(()) => ApiError::new(StatusCode::UNAUTHORIZED, message),
            Err(wait) => limited(wait, "too many requests without a valid token; wait"),
        }
    };
    let count = |platform: &str, outcome: &'static str, n: usize| {
        app.metrics
            .ingested
            .get_or_create(&IngestLabels {
                platform: platform.to_owned(),
                outcome,
            })
            .inc_by(n as u64);
    };
    let Some(token) = bearer(&headers) else {
        count("unknown", "unauthorized", 1);
        return Err(unauthorized(
            "an ingest token is required: Authorization: Bearer <token>",
        ));
    };
    let Some(platform) = app.ingest_platform(token) else {
        count("unknown", "unauthorized", 1);
        return Err(unauthorized("the ingest token is not valid"));
    };
    let platform = platform.to_owned();
    if let Err(wait) = app.limits.check_token(&platform) {
        count(&platform, "rate_limited", 1);
        return Err(limited(
            wait,
            "this token's rate is used up (web.rate_limit.ingest_per_second); send again later",
        ));
    }
    let refuse = |status: StatusCode, message: String| {
        count(&platform, "rejected", 1);
        ApiError::new(status, message)
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json".into(),
        ));
    }
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body must be at most {MAX_INGEST_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_INGEST_BYTES) {
        return Err(too_large());
    }
    // A body that breaks off or passes the limit: either way nothing is published.
    let body = axum::body::to_bytes(body, MAX_INGEST_BYTES)
        .await
        .map_err(|_| too_large())?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "the body must be one event (a JSON object) or an array of events".into(),
            ));
        }
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "send 1 to {MAX_BATCH} events per request, not {}",
                items.len()
            ),
        ));
    }
    let now = now_ms();
    let mut events: Vec<Event> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let event = event_from_json(&item.to_string(), now).map_err(|e| {
            refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("event {i}: {e:#}"),
            )
        })?;
        if event.identity.platform.as_str() != platform {
            count(&platform, "forbidden", 1);
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "event {i}: this token publishes only for platform {platform:?}, not {:?}",
                    event.identity.platform.as_str()
                ),
            ));
        }
        // The claims a platform's publisher may make (docs/security.md): the sync
        // consumer would dead-letter the others; the client hears it here.
        if let Err(refused) = trust::admit(Publisher::Platform, &event) {
            count(&platform, "forbidden", 1);
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("event {i}: {}", refused.detail),
            ));
        }
        events.push(event);
    }
    let unavailable = |e: String| {
        tracing::warn!(error = %e, "ingest: publishing failed");
        count(&platform, "failed", events.len());
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NATS did not store the events; send the same request again (events are deduplicated by id)",
        )
    };
    let mut acks = Vec::with_capacity(events.len());
    for event in &events {
        acks.push(
            app.broker
                .publish_event(event)
                .await
                .map_err(|e| unavailable(e.to_string()))?,
        );
    }
    let mut stored = Vec::with_capacity(events.len());
    for (event, ack) in events.iter().zip(acks) {
        let ack = ack.await.map_err(|e| unavailable(e.to_string()))?;
        stored.push(Stored {
            id: event.id.as_str().to_owned(),
            subject: app
                .broker
                .subjects
                .event(event.identity.platform.as_str(), event.kind()),
            duplicate: ack.duplicate,
        });
    }
    let duplicates = stored.iter().filter(|s| s.duplicate).count();
    count(&platform, "published", stored.len() - duplicates);
    count(&platform, "duplicate", duplicates);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"accepted": stored.len(), "events": stored})),
    )
        .into_response())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}
