//! A fake Discord HTTP API on 127.0.0.1 (port 0), for serenity's `Http` built with
//! `HttpBuilder::proxy` (the bot's `discord.api_url`). It keeps guild members and their
//! roles, records every call, can answer role calls with 429s, and accepts messages,
//! interaction responses and command registration as Discord does (API v10 paths).

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One call as the fake received it, with the status it answered.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub status: u16,
    pub audit_reason: Option<String>,
    pub at: std::time::Instant,
}

#[derive(Default)]
struct World {
    /// `(guild, user)` → roles.
    members: HashMap<(u64, u64), BTreeSet<u64>>,
    calls: Vec<Call>,
    /// Role calls still to refuse with 429, and the Retry-After they carry (seconds).
    rate_limited: usize,
    retry_after: f64,
}

type Shared = Arc<Mutex<World>>;

pub struct FakeDiscord {
    /// Base URL for `discord.api_url`.
    pub url: String,
    world: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeDiscord {
    pub async fn start() -> Self {
        let world: Shared = Arc::default();
        let app = Router::new()
            .route("/api/v10/guilds/{guild}", get(guild))
            .route("/api/v10/guilds/{guild}/members", get(list_members))
            .route("/api/v10/guilds/{guild}/members/{user}", get(member))
            .route(
                "/api/v10/guilds/{guild}/members/{user}/roles/{role}",
                put(role).delete(role),
            )
            .route("/api/v10/channels/{channel}/messages", post(message))
            .route("/api/v10/users/@me/channels", post(dm_channel))
            .route(
                "/api/v10/interactions/{id}/{token}/callback",
                post(interaction_callback),
            )
            .route(
                "/api/v10/applications/{app}/guilds/{guild}/commands",
                put(commands),
            )
            .fallback(unknown)
            .with_state(world.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake Discord serves");
        });
        Self { url, world, server }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("fake Discord lock")
    }

    pub fn add_member(&self, guild: u64, user: u64, roles: &[u64]) {
        self.world()
            .members
            .insert((guild, user), roles.iter().copied().collect());
    }

    pub fn remove_member(&self, guild: u64, user: u64) {
        self.world().members.remove(&(guild, user));
    }

    /// The member's roles; `None` when not a member.
    pub fn roles(&self, guild: u64, user: u64) -> Option<Vec<u64>> {
        self.world()
            .members
            .get(&(guild, user))
            .map(|r| r.iter().copied().collect())
    }

    /// The next `n` role calls are answered 429 with `Retry-After: retry_after`.
    pub fn rate_limit_role_calls(&self, n: usize, retry_after: f64) {
        let mut w = self.world();
        w.rate_limited = n;
        w.retry_after = retry_after;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.world().calls.clone()
    }

    /// Bodies of the interaction responses received, in order.
    pub fn interaction_responses(&self) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.ends_with("/callback"))
            .map(|c| c.body)
            .collect()
    }

    /// Bodies of the messages posted to `channel`, in order.
    pub fn messages(&self, channel: u64) -> Vec<Value> {
        let path = format!("/api/v10/channels/{channel}/messages");
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST" && c.path == path)
            .map(|c| c.body)
            .collect()
    }
}

/// A call's body as JSON: the JSON body, or for a multipart form (a message with files,
/// as serenity sends one) `{"payload_json": <the message>, "files": [{filename,
/// content}]}`.
fn body_json(body: &[u8], headers: &HeaderMap) -> Value {
    let boundary = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("multipart/form-data"))
        .and_then(|v| v.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_owned());
    let Some(boundary) = boundary else {
        return serde_json::from_slice(body).unwrap_or(Value::Null);
    };
    let text = String::from_utf8_lossy(body);
    let mut payload = Value::Null;
    let mut files = Vec::new();
    for part in text.split(&format!("--{boundary}")) {
        let Some((head, content)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        if head.contains("name=\"payload_json\"") {
            payload = serde_json::from_str(content).unwrap_or(Value::Null);
        } else if let Some(name) = head.split("filename=\"").nth(1) {
            let filename = name.split('"').next().unwrap_or_default();
            files.push(json!({"filename": filename, "content": content}));
        }
    }
    json!({"payload_json": payload, "files": files})
}

fn record(
    world: &Shared,
    method: &str,
    path: String,
    body: &[u8],
    headers: &HeaderMap,
    status: u16,
) {
    let body = body_json(body, headers);
    let audit_reason = headers
        .get("x-audit-log-reason")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    world.lock().expect("lock").calls.push(Call {
        method: method.to_owned(),
        path,
        body,
        status,
        audit_reason,
        at: std::time::Instant::now(),
    });
}

fn discord_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message})),
    )
        .into_response()
}

async fn member(
    State(world): State<Shared>,
    Path((guild, user)): Path<(u64, u64)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let roles = world
        .lock()
        .expect("lock")
        .members
        .get(&(guild, user))
        .cloned();
    let Some(roles) = roles else {
        record(&world, "GET", uri.path().into(), b"", &headers, 404);
        return discord_error(StatusCode::NOT_FOUND, 10007, "Unknown Member");
    };
    record(&world, "GET", uri.path().into(), b"", &headers, 200);
    axum::Json(json!({
        "user": {"id": user.to_string(), "username": format!("user{user}"), "discriminator": "0", "avatar": null},
        "nick": null,
        "roles": roles.iter().map(u64::to_string).collect::<Vec<_>>(),
        "joined_at": "2021-01-01T00:00:00.000000+00:00",
        "deaf": false,
        "mute": false,
        "flags": 0
    }))
    .into_response()
}

/// The DM channel id the fake gives user `user`.
pub fn dm_channel_of(user: u64) -> u64 {
    9_000_000_000_000_000_000 + user
}

/// `POST /users/@me/channels {recipient_id}`: the DM channel with that user.
async fn dm_channel(
    State(world): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(user) = value["recipient_id"]
        .as_str()
        .and_then(|u| u.parse::<u64>().ok())
    else {
        record(&world, "POST", uri.path().into(), &body, &headers, 400);
        return discord_error(StatusCode::BAD_REQUEST, 50035, "Invalid Form Body");
    };
    record(&world, "POST", uri.path().into(), &body, &headers, 200);
    axum::Json(json!({"id": dm_channel_of(user).to_string(), "type": 1,
                      "recipients": [{"id": user.to_string(), "username": format!("user{user}"),
                                      "discriminator": "0", "avatar": null}]}))
    .into_response()
}

/// `GET /guilds/{guild}?with_counts=true`: the approximate member count.
async fn guild(
    State(world): State<Shared>,
    Path(guild): Path<u64>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let count = world
        .lock()
        .expect("lock")
        .members
        .keys()
        .filter(|(g, _)| *g == guild)
        .count();
    record(&world, "GET", uri.path().into(), b"", &headers, 200);
    axum::Json(json!({"id": guild.to_string(), "name": "TTFD", "approximate_member_count": count}))
        .into_response()
}

/// `GET /guilds/{guild}/members?limit=&after=`: members by user id, as Discord pages.
async fn list_members(
    State(world): State<Shared>,
    Path(guild): Path<u64>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(1);
    let after: u64 = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut members: Vec<(u64, Vec<u64>)> = world
        .lock()
        .expect("lock")
        .members
        .iter()
        .filter(|((g, u), _)| *g == guild && *u > after)
        .map(|((_, u), roles)| (*u, roles.iter().copied().collect()))
        .collect();
    members.sort();
    members.truncate(limit.clamp(1, 1000));
    record(&world, "GET", uri.path().into(), b"", &headers, 200);
    let body: Vec<Value> = members
        .into_iter()
        .map(|(user, roles)| {
            json!({
                "user": {"id": user.to_string(), "username": format!("user{user}"), "discriminator": "0", "avatar": null},
                "nick": null,
                "roles": roles.iter().map(u64::to_string).collect::<Vec<_>>(),
                "joined_at": "2021-01-01T00:00:00.000000+00:00",
                "deaf": false, "mute": false, "flags": 0
            })
        })
        .collect();
    axum::Json(body).into_response()
}

async fn role(
    State(world): State<Shared>,
    Path((guild, user, role)): Path<(u64, u64, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let limited = {
        let mut w = world.lock().expect("lock");
        if w.rate_limited > 0 {
            w.rate_limited -= 1;
            Some(w.retry_after)
        } else {
            None
        }
    };
    if let Some(retry_after) = limited {
        record(
            &world,
            method.as_str(),
            uri.path().into(),
            b"",
            &headers,
            429,
        );
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": false
            })),
        )
            .into_response();
        let h = response.headers_mut();
        h.insert(
            "retry-after",
            format!("{}", retry_after.ceil()).parse().expect("header"),
        );
        h.insert("x-ratelimit-scope", "user".parse().expect("header"));
        return response;
    }
    let found = {
        let mut w = world.lock().expect("lock");
        match w.members.get_mut(&(guild, user)) {
            Some(roles) => {
                if method == Method::PUT {
                    roles.insert(role);
                } else {
                    roles.remove(&role);
                }
                true
            }
            None => false,
        }
    };
    if !found {
        record(
            &world,
            method.as_str(),
            uri.path().into(),
            b"",
            &headers,
            404,
        );
        return discord_error(StatusCode::NOT_FOUND, 10007, "Unknown Member");
    }
    record(
        &world,
        method.as_str(),
        uri.path().into(),
        b"",
        &headers,
        204,
    );
    StatusCode::NO_CONTENT.into_response()
}

async fn message(
    State(world): State<Shared>,
    Path(channel): Path<u64>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&world, "POST", uri.path().into(), &body, &headers, 200);
    let mut sent = body_json(&body, &headers);
    if sent.get("payload_json").is_some() {
        sent = sent["payload_json"].take();
    }
    axum::Json(json!({
        "id": "1399999999999999999",
        "channel_id": channel.to_string(),
        "author": {"id": "1300000000000000009", "username": "ttfd", "discriminator": "0", "avatar": null, "bot": true},
        "content": sent["content"],
        "timestamp": "2025-11-25T10:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0
    }))
    .into_response()
}

async fn interaction_callback(
    State(world): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&world, "POST", uri.path().into(), &body, &headers, 204);
    StatusCode::NO_CONTENT.into_response()
}

async fn commands(
    State(world): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&world, "PUT", uri.path().into(), &body, &headers, 200);
    axum::Json(json!([])).into_response()
}

async fn unknown(
    State(world): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(
        &world,
        method.as_str(),
        uri.path().into(),
        &body,
        &headers,
        404,
    );
    discord_error(StatusCode::NOT_FOUND, 0, "404: Not Found")
}
