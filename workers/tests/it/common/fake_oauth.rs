//! A fake Discord on 127.0.0.1 (port 0): the OAuth2 authorize endpoint (approving or
//! denying at once, as a member clicking would), the token endpoint (checking client
//! credentials, the redirect URI and that each code is used once) and `/users/@me`.
//! Tests switch its [`Mode`] to play a provider error or a failing token exchange.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::json;

pub const CLIENT_ID: &str = "1234567890";
pub const CLIENT_SECRET: &str = "fake-client-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The member approves; codes and tokens work.
    Approve,
    /// The member clicks "Cancel": back to the site with `error=access_denied`.
    Deny,
    /// The token endpoint refuses every code (`invalid_grant`).
    TokenFails,
}

#[derive(Debug, Clone)]
pub struct FakeUser {
    pub id: String,
    pub username: String,
    pub global_name: Option<String>,
}

struct Inner {
    mode: Mode,
    user: FakeUser,
    /// Issued code → the redirect URI it was issued for.
    codes: HashMap<String, String>,
    tokens: HashSet<String>,
    next: u64,
    token_requests: usize,
    /// Every authorize request's query, for assertions.
    authorize_queries: Vec<HashMap<String, String>>,
    /// The member's roles in guilds, for `/users/@me/guilds/{guild}/member`.
    guild_roles: HashMap<String, Vec<String>>,
}

#[derive(Clone)]
pub struct FakeDiscord {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeDiscord {
    pub async fn start(user: FakeUser) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            mode: Mode::Approve,
            user,
            codes: HashMap::new(),
            tokens: HashSet::new(),
            next: 0,
            token_requests: 0,
            authorize_queries: Vec::new(),
            guild_roles: HashMap::new(),
        }));
        let app = Router::new()
            .route("/oauth2/authorize", get(authorize))
            .route("/api/oauth2/token", post(token))
            .route("/api/users/@me", get(me))
            .route("/api/users/@me/guilds/{guild}/member", get(guild_member))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Discord");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake Discord serves");
        });
        Self { base, inner }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().expect("lock").mode = mode;
    }

    pub fn set_user(&self, user: FakeUser) {
        self.inner.lock().expect("lock").user = user;
    }

    /// How many token exchanges were attempted.
    pub fn token_requests(&self) -> usize {
        self.inner.lock().expect("lock").token_requests
    }

    pub fn last_authorize_query(&self) -> Option<HashMap<String, String>> {
        self.inner
            .lock()
            .expect("lock")
            .authorize_queries
            .last()
            .cloned()
    }

    /// The member is in `guild` with these roles.
    pub fn set_guild_roles(&self, guild: u64, roles: &[u64]) {
        self.inner.lock().expect("lock").guild_roles.insert(
            guild.to_string(),
            roles.iter().map(u64::to_string).collect(),
        );
    }

    /// Points a site's `web.discord` settings at this fake.
    pub fn configure(&self, discord: &mut ttfd::settings::web::DiscordOAuthSettings) {
        discord.client_id = CLIENT_ID.into();
        discord.client_secret = CLIENT_SECRET.into();
        discord.authorize_url = format!("{}/oauth2/authorize", self.base);
        discord.token_url = format!("{}/api/oauth2/token", self.base);
        discord.api_url = format!("{}/api", self.base);
    }
}

type Shared = State<Arc<Mutex<Inner>>>;

async fn authorize(State(inner): Shared, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut inner = inner.lock().expect("lock");
    inner.authorize_queries.push(q.clone());
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || q.get("response_type").map(String::as_str) != Some("code")
        || !matches!(
            q.get("scope").map(String::as_str),
            Some("identify" | "identify guilds.members.read")
        )
    {
        return (StatusCode::BAD_REQUEST, "invalid OAuth2 request").into_response();
    }
    let (Some(redirect), Some(state)) = (q.get("redirect_uri"), q.get("state")) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri and state required").into_response();
    };
    let mut target = reqwest::Url::parse(redirect).expect("redirect_uri is a URL");
    if inner.mode == Mode::Deny {
        target
            .query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair(
                "error_description",
                "The resource owner or authorization server denied the request",
            )
            .append_pair("state", state);
    } else {
        inner.next += 1;
        let code = format!("code{}", inner.next);
        inner.codes.insert(code.clone(), redirect.clone());
        target
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", state);
    }
    Redirect::to(target.as_str()).into_response()
}

async fn token(
    State(inner): Shared,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    use base64::Engine as _;
    let mut inner = inner.lock().expect("lock");
    inner.token_requests += 1;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let invalid_grant = || {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response()
    };
    if inner.mode == Mode::TokenFails
        || form.get("grant_type").map(String::as_str) != Some("authorization_code")
    {
        return invalid_grant();
    }
    let Some(code) = form.get("code") else {
        return invalid_grant();
    };
    // A code works once, and only with the redirect URI it was issued for.
    match inner.codes.remove(code) {
        Some(redirect) if form.get("redirect_uri") == Some(&redirect) => {}
        _ => return invalid_grant(),
    }
    inner.next += 1;
    let token = format!("token{}", inner.next);
    inner.tokens.insert(token.clone());
    Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 604800,
        "refresh_token": "unused",
        "scope": "identify",
    }))
    .into_response()
}

async fn me(State(inner): Shared, headers: HeaderMap) -> Response {
    let inner = inner.lock().expect("lock");
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| inner.tokens.contains(t)) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "401: Unauthorized", "code": 0})),
        )
            .into_response();
    }
    let u = &inner.user;
    Json(json!({
        "id": u.id,
        "username": u.username,
        "global_name": u.global_name,
        "discriminator": "0",
        "avatar": null,
    }))
    .into_response()
}

/// `GET /users/@me/guilds/{guild}/member` (scope `guilds.members.read`).
async fn guild_member(
    State(inner): Shared,
    axum::extract::Path(guild): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let inner = inner.lock().expect("lock");
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| inner.tokens.contains(t)) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "401: Unauthorized", "code": 0})),
        )
            .into_response();
    }
    match inner.guild_roles.get(&guild) {
        Some(roles) => Json(json!({"roles": roles, "nick": null,
                                   "joined_at": "2021-01-01T00:00:00.000000+00:00",
                                   "deaf": false, "mute": false}))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Unknown Guild", "code": 10004})),
        )
            .into_response(),
    }
}
