//! A fake Telegram Bot API server on 127.0.0.1, port 0, for `Bot::set_api_url`.
//!
//! It serves `getUpdates` from a queue the test fills (long polling included: a
//! request waits until an update is pushed or its `timeout` passes; an `offset`
//! confirms earlier updates), records every other call with its JSON body, answers
//! `sendMessage` with a real-looking `Message`, and can be told to fail the next call
//! of a method to a chat with any Bot API error (429 with `retry_after`, 403, ...).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

pub const BOT_ID: u64 = 5_000_000_001;
pub const BOT_USERNAME: &str = "ttfd_test_bot";

/// One recorded Bot API call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// The parameters, from JSON or from a multipart form.
    pub body: Value,
    pub at: Instant,
    /// Answered with success (not with a canned failure).
    pub ok: bool,
}

/// A canned answer: HTTP status and body.
type Canned = (StatusCode, Value);

#[derive(Default)]
struct Inner {
    next_update_id: i64,
    /// Pushed and not yet confirmed by an `offset`.
    updates: VecDeque<Value>,
    /// The highest `offset` a `getUpdates` sent: updates below it are confirmed.
    confirmed: i64,
    get_updates_calls: usize,
    calls: Vec<Call>,
    /// Canned answers for the next call of (method, chat id or None for any chat).
    failures: HashMap<(String, Option<i64>), VecDeque<Canned>>,
    /// Group members for `getChatMember`: (chat, user) → (status, first name).
    members: HashMap<(i64, u64), (String, String)>,
    next_message_id: i64,
}

struct Shared {
    token: String,
    inner: Mutex<Inner>,
    pushed: Notify,
}

pub struct FakeTelegram {
    /// The base URL to give `telegram.api_url`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeTelegram {
    /// Starts a server that accepts `token` only.
    pub async fn start(token: &str) -> Self {
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            inner: Mutex::new(Inner {
                next_update_id: 700_000_001,
                next_message_id: 1,
                ..Default::default()
            }),
            pushed: Notify::new(),
        });
        let app = Router::new()
            .route("/{bot}/{method}", post(api))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Bot API");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake Bot API serves");
        });
        Self { url, shared, task }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().expect("fake state lock")
    }

    /// Queues an update (its `update_id` is assigned here) and returns the id.
    pub fn push_update(&self, mut update: Value) -> i64 {
        let id = {
            let mut inner = self.inner();
            let id = inner.next_update_id;
            inner.next_update_id += 1;
            update["update_id"] = json!(id);
            inner.updates.push_back(update);
            id
        };
        self.shared.pushed.notify_waiters();
        id
    }

    /// The next call of `method` to `chat` (any chat when `None`) gets this answer.
    pub fn fail_next(&self, method: &str, chat: Option<i64>, status: u16, body: Value) {
        self.inner()
            .failures
            .entry((method.to_owned(), chat))
            .or_default()
            .push_back((StatusCode::from_u16(status).expect("a status"), body));
    }

    /// `getChatMember(chat, user)` answers with this status and first name.
    pub fn set_member(&self, chat: i64, user: u64, status: &str, first_name: &str) {
        self.inner()
            .members
            .insert((chat, user), (status.to_owned(), first_name.to_owned()));
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.inner()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Bodies of the `sendMessage` and `sendPhoto` calls to `chat` that succeeded,
    /// oldest first; a photo's caption is its `text`.
    pub fn messages_to(&self, chat: i64) -> Vec<Value> {
        self.inner()
            .calls
            .iter()
            .filter(|c| c.method == "sendMessage" || c.method == "sendPhoto")
            .filter(|c| c.ok && c.body["chat_id"] == json!(chat))
            .map(|c| {
                let mut body = c.body.clone();
                if c.method == "sendPhoto" {
                    body["text"] = body["caption"].clone();
                }
                body
            })
            .collect()
    }

    pub fn confirmed_offset(&self) -> i64 {
        self.inner().confirmed
    }

    pub fn get_updates_calls(&self) -> usize {
        self.inner().get_updates_calls
    }

    /// Updates not yet confirmed by the bot.
    pub fn unconfirmed(&self) -> usize {
        let inner = self.inner();
        inner
            .updates
            .iter()
            .filter(|u| u["update_id"].as_i64().unwrap_or(0) >= inner.confirmed)
            .count()
    }
}

fn ok(result: Value) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"ok": true, "result": result})),
    )
        .into_response()
}

fn error(status: StatusCode, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"ok": false, "error_code": status.as_u16(), "description": description})),
    )
        .into_response()
}

fn bot_user() -> Value {
    json!({"id": BOT_ID, "is_bot": true, "first_name": "TTFD", "username": BOT_USERNAME})
}

fn chat(id: i64) -> Value {
    if id > 0 {
        json!({"id": id, "type": "private", "first_name": "User"})
    } else {
        json!({"id": id, "type": "supergroup", "title": "Group"})
    }
}

fn now_secs() -> i64 {
    ttfd::now_ms() / 1000
}

async fn api(
    State(shared): State<Arc<Shared>>,
    Path((bot, method)): Path<(String, String)>,
    request: Request,
) -> Response {
    if bot != format!("bot{}", shared.token) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    // Method names are case-insensitive in the Bot API (teloxide sends `SendMessage`):
    // keep them as the documentation spells them.
    let mut chars = method.chars();
    let method: String = chars
        .next()
        .map(|c| c.to_ascii_lowercase())
        .into_iter()
        .chain(chars)
        .collect();
    let Some(body) = parameters(request).await else {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad Request: unreadable parameters",
        );
    };
    if method == "getUpdates" {
        return get_updates(&shared, &body).await;
    }
    let chat_id = body["chat_id"].as_i64();
    let canned = {
        let mut inner = shared.inner.lock().expect("lock");
        let mut take =
            |key: (String, Option<i64>)| inner.failures.get_mut(&key).and_then(|q| q.pop_front());
        let canned = take((method.clone(), chat_id)).or_else(|| take((method.clone(), None)));
        inner.calls.push(Call {
            method: method.clone(),
            body: body.clone(),
            at: Instant::now(),
            ok: canned.is_none(),
        });
        canned
    };
    if let Some((status, body)) = canned {
        return (status, axum::Json(body)).into_response();
    }
    match method.as_str() {
        "getMe" => {
            let mut me = bot_user();
            me["can_join_groups"] = json!(true);
            me["can_read_all_group_messages"] = json!(true);
            me["supports_inline_queries"] = json!(false);
            me["can_connect_to_business"] = json!(false);
            me["has_main_web_app"] = json!(false);
            ok(me)
        }
        // A message, a photo (its caption) or a document sent: a message of the chat.
        "sendMessage" | "sendPhoto" | "sendDocument" => {
            let Some(chat_id) = chat_id else {
                return error(StatusCode::BAD_REQUEST, "Bad Request: chat_id is empty");
            };
            let message_id = {
                let mut inner = shared.inner.lock().expect("lock");
                inner.next_message_id += 1;
                inner.next_message_id
            };
            let mut sent = json!({
                "message_id": message_id,
                "from": bot_user(),
                "chat": chat(chat_id),
                "date": now_secs(),
            });
            match method.as_str() {
                "sendMessage" => sent["text"] = body["text"].clone(),
                "sendPhoto" => {
                    sent["caption"] = body["caption"].clone();
                    sent["photo"] = json!([{"file_id": "photo-1", "file_unique_id": "photo-u-1",
                                            "width": 960, "height": 320, "file_size": 1}]);
                }
                _ => {
                    sent["document"] = json!({"file_id": "doc-1", "file_unique_id": "doc-u-1",
                                              "file_name": "export.json",
                                              "mime_type": "application/json", "file_size": 1});
                }
            }
            ok(sent)
        }
        "getChatMember" => {
            let (Some(chat_id), Some(user)) = (chat_id, body["user_id"].as_u64()) else {
                return error(StatusCode::BAD_REQUEST, "Bad Request: user not found");
            };
            let member = shared
                .inner
                .lock()
                .expect("lock")
                .members
                .get(&(chat_id, user))
                .cloned();
            match member {
                Some((status, first_name)) if status == "administrator" => ok(json!({
                    // ChatMemberAdministrator, with its required rights.
                    "status": status,
                    "user": {"id": user, "is_bot": false, "first_name": first_name},
                    "can_be_edited": false, "is_anonymous": false, "can_manage_chat": true,
                    "can_delete_messages": true, "can_manage_video_chats": true,
                    "can_restrict_members": true, "can_promote_members": false,
                    "can_change_info": true, "can_invite_users": true,
                    "can_post_stories": false, "can_edit_stories": false,
                    "can_delete_stories": false, "can_pin_messages": true,
                })),
                Some((status, first_name)) => ok(json!({
                    "status": status,
                    "user": {"id": user, "is_bot": false, "first_name": first_name},
                })),
                None => ok(json!({
                    "status": "left",
                    "user": {"id": user, "is_bot": false, "first_name": "Someone"},
                })),
            }
        }
        "setMyCommands" | "deleteWebhook" | "setWebhook" | "deleteMessage" => ok(json!(true)),
        "getWebhookInfo" => ok(json!({"url": "", "has_custom_certificate": false,
                                     "pending_update_count": 0})),
        _ => error(StatusCode::NOT_FOUND, "Not Found: method not found"),
    }
}

/// A call's parameters: a JSON body, or a multipart form (teloxide sends `setWebhook`
/// that way) whose fields hold JSON or plain strings.
async fn parameters(request: Request) -> Option<Value> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if multipart {
        let mut form = Multipart::from_request(request, &()).await.ok()?;
        let mut fields = serde_json::Map::new();
        while let Some(field) = form.next_field().await.ok()? {
            let name = field.name()?.to_owned();
            let data = field.bytes().await.ok()?;
            // A file that is not text (a photo): its size and whether it is a PNG.
            let value = match std::str::from_utf8(&data) {
                Ok(text) => serde_json::from_str(text).unwrap_or(Value::String(text.to_owned())),
                Err(_) => json!({"bytes": data.len(), "png": data.starts_with(b"\x89PNG")}),
            };
            fields.insert(name, value);
        }
        // A file is a part of its own, named by `attach://<part>` in its field.
        let attached: Vec<(String, String)> = fields
            .iter()
            .filter_map(|(k, v)| {
                Some((k.clone(), v.as_str()?.strip_prefix("attach://")?.to_owned()))
            })
            .collect();
        for (field, part) in attached {
            if let Some(file) = fields.remove(&part) {
                fields.insert(field, file);
            }
        }
        return Some(Value::Object(fields));
    }
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .ok()?;
    if bytes.is_empty() {
        return Some(json!({}));
    }
    serde_json::from_slice(&bytes).ok()
}

/// Long polling: answers at once when updates at or past `offset` are queued, else
/// waits for a push or the request's `timeout`.
async fn get_updates(shared: &Shared, body: &Value) -> Response {
    let offset = body["offset"].as_i64().unwrap_or(0);
    let limit = body["limit"].as_u64().unwrap_or(100) as usize;
    let timeout = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pushed = shared.pushed.notified();
        tokio::pin!(pushed);
        pushed.as_mut().enable();
        {
            let mut inner = shared.inner.lock().expect("lock");
            inner.get_updates_calls += 1;
            if offset > inner.confirmed {
                inner.confirmed = offset;
            }
            let confirmed = inner.confirmed;
            inner
                .updates
                .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= confirmed);
            let ready: Vec<Value> = inner.updates.iter().take(limit).cloned().collect();
            if !ready.is_empty() || tokio::time::Instant::now() >= deadline {
                return ok(Value::Array(ready));
            }
        }
        tokio::select! {
            _ = &mut pushed => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// A group or supergroup text message as the Bot API sends it.
pub fn group_message(
    chat: i64,
    message_id: i64,
    user: u64,
    first: &str,
    last: Option<&str>,
    text: &str,
) -> Value {
    let mut from = json!({"id": user, "is_bot": false, "first_name": first, "language_code": "en"});
    if let Some(last) = last {
        from["last_name"] = json!(last);
    }
    let mut message = json!({
        "message_id": message_id,
        "from": from,
        "chat": {"id": chat, "title": "TTFD", "type": "supergroup"},
        "date": now_secs(),
        "text": text,
    });
    if text.starts_with('/') {
        let len = text.split_whitespace().next().map_or(0, str::len);
        message["entities"] = json!([{"offset": 0, "length": len, "type": "bot_command"}]);
    }
    json!({"message": message})
}

/// A message in the private chat of `user` with the bot.
pub fn private_message(user: u64, first: &str, message_id: i64, text: &str) -> Value {
    let mut update = group_message(user as i64, message_id, user, first, None, text);
    update["message"]["chat"] = json!({"id": user, "first_name": first, "type": "private"});
    update
}

/// A message by another bot in a group.
pub fn bot_message(chat: i64, message_id: i64, text: &str) -> Value {
    json!({"message": {
        "message_id": message_id,
        "from": {"id": 6_000_000_001u64, "is_bot": true, "first_name": "Other", "username": "other_bot"},
        "chat": {"id": chat, "title": "TTFD", "type": "supergroup"},
        "date": now_secs(),
        "text": text,
    }})
}

/// "X joined the group": a service message.
pub fn join_message(chat: i64, message_id: i64, user: u64, first: &str) -> Value {
    let member = json!({"id": user, "is_bot": false, "first_name": first});
    json!({"message": {
        "message_id": message_id,
        "from": member,
        "chat": {"id": chat, "title": "TTFD", "type": "supergroup"},
        "date": now_secs(),
        "new_chat_participant": member,
        "new_chat_member": member,
        "new_chat_members": [member],
    }})
}
