//! The few Discord HTTP API calls the bot makes itself (member roles, announcements), with
//! every failure sorted into a decision: wait and retry, or give up on this target.
//!
//! Serenity's `Http` answers a failed call with an error that has lost the response's
//! `Retry-After`, so these calls take the raw response: through serenity's rate limiter
//! when it is on (it waits out buckets and 429s itself), or straight to
//! `discord.api_url` when an API proxy does the rate limiting; then a 429 comes back
//! here as [`ApiError::RateLimited`] with its delay, for the caller to retry later.
//! Slash-command replies go through serenity's `Http` as usual (same base URL).
//!
//! Reads `discord.token` and `discord.api_url`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serenity::http::{Http, HttpBuilder, LightMethod, Request, Route};
use serenity::model::id::{ChannelId, GuildId, RoleId, UserId};

/// Discord's JSON error codes that mean "this member (or user) is not there".
const UNKNOWN_MEMBER: i64 = 10007;
const UNKNOWN_USER: i64 = 10013;

/// Why a call failed, by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 429: retry after this long.
    #[error("rate limited by Discord for {0:?}")]
    RateLimited(Duration),
    /// 5xx, a timeout, a connection failure: retry with backoff.
    #[error("Discord is unavailable: {0}")]
    Unavailable(String),
    /// Discord refused the call (4xx): missing permission, role above the bot's, unknown
    /// role; retrying helps only once an operator fixes it.
    #[error("Discord refused the call ({status}, code {code}): {message}")]
    Refused {
        status: u16,
        code: i64,
        message: String,
    },
}

/// Discord's error body: `{code, message}`; a 429's also has `retry_after` (seconds).
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    retry_after: Option<f64>,
}

/// One member of `GET /guilds/{guild}/members`.
#[derive(Debug, Clone, Deserialize)]
pub struct ListedMember {
    pub user: ListedUser,
    pub roles: Vec<RoleId>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListedUser {
    pub id: UserId,
    #[serde(default)]
    pub bot: bool,
}

/// The guild's approximate member count, from `GET /guilds/{guild}?with_counts=true`.
#[derive(Debug, Deserialize)]
struct GuildCounts {
    #[serde(default)]
    approximate_member_count: Option<u64>,
}

/// A member's roles, from `GET /guilds/{guild}/members/{user}`.
#[derive(Debug, Deserialize)]
struct MemberRoles {
    roles: Vec<RoleId>,
}

/// Serenity's `Http` (for everything serenity does) plus the raw calls above.
#[derive(Clone)]
pub struct DiscordApi {
    pub http: Arc<Http>,
    raw: reqwest::Client,
}

impl DiscordApi {
    /// `api_url`: an HTTP API proxy (or a fake Discord in tests) to call instead of
    /// Discord; serenity's rate limiter ignores proxies, so it is off then.
    pub fn new(token: &SecretString, api_url: Option<&str>) -> Self {
        let raw = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_default();
        Self {
            http: Arc::new(build_http(token, api_url, raw.clone())),
            raw,
        }
    }

    /// The member's roles; `None` when they are not in the guild.
    pub async fn member_roles(
        &self,
        guild_id: GuildId,
        user_id: UserId,
    ) -> Result<Option<Vec<RoleId>>, ApiError> {
        let req = Request::new(Route::GuildMember { guild_id, user_id }, LightMethod::Get);
        match self.send(req).await {
            Ok(response) => Ok(Some(read::<MemberRoles>(response, "member").await?.roles)),
            Err(ApiError::Refused {
                status: 404, code, ..
            }) if code == UNKNOWN_MEMBER || code == UNKNOWN_USER => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of the guild's members, by user id after `after` (needs the GUILD_MEMBERS
    /// intent's permission to list).
    pub async fn list_members(
        &self,
        guild_id: GuildId,
        after: Option<UserId>,
        limit: u16,
    ) -> Result<Vec<ListedMember>, ApiError> {
        let mut params = vec![("limit", limit.to_string())];
        if let Some(after) = after {
            params.push(("after", after.get().to_string()));
        }
        let req =
            Request::new(Route::GuildMembers { guild_id }, LightMethod::Get).params(Some(params));
        read(self.send(req).await?, "members").await
    }

    /// The guild's approximate member count, for progress.
    pub async fn member_count(&self, guild_id: GuildId) -> Result<Option<u64>, ApiError> {
        let req = Request::new(Route::Guild { guild_id }, LightMethod::Get)
            .params(Some(vec![("with_counts", "true".to_owned())]));
        let counts: GuildCounts = read(self.send(req).await?, "guild").await?;
        Ok(counts.approximate_member_count)
    }

    /// Gives a role (idempotent on Discord's side). `reason` goes to the audit log.
    pub async fn add_role(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        role_id: RoleId,
        reason: &str,
    ) -> Result<(), ApiError> {
        self.role(LightMethod::Put, guild_id, user_id, role_id, reason)
            .await
    }

    /// Takes a role away (idempotent on Discord's side).
    pub async fn remove_role(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        role_id: RoleId,
        reason: &str,
    ) -> Result<(), ApiError> {
        self.role(LightMethod::Delete, guild_id, user_id, role_id, reason)
            .await
    }

    async fn role(
        &self,
        method: LightMethod,
        guild_id: GuildId,
        user_id: UserId,
        role_id: RoleId,
        reason: &str,
    ) -> Result<(), ApiError> {
        let route = Route::GuildMemberRole {
            guild_id,
            user_id,
            role_id,
        };
        let req = Request::new(route, method).headers(Some(audit_reason(reason)));
        self.send(req).await.map(drop)
    }

    /// The direct-message channel with `user` (created by Discord on first use).
    pub async fn dm_channel(&self, user: UserId) -> Result<ChannelId, ApiError> {
        #[derive(Deserialize)]
        struct Channel {
            id: ChannelId,
        }
        let body = serde_json::json!({"recipient_id": user.get().to_string()});
        let req = Request::new(Route::UserMeDmChannels, LightMethod::Post)
            .body(Some(body.to_string().into_bytes()));
        let channel: Channel = read(self.send(req).await?, "channel").await?;
        Ok(channel.id)
    }

    /// Posts a message without pinging anyone. `nonce` (at most 25 characters) makes
    /// Discord drop a repeat of the same post for a few minutes, so a retried
    /// announcement appears once.
    pub async fn post_message(
        &self,
        channel_id: ChannelId,
        content: &str,
        nonce: &str,
    ) -> Result<(), ApiError> {
        let body = serde_json::json!({
            "content": content,
            "nonce": nonce,
            "enforce_nonce": true,
            "allowed_mentions": {"parse": []},
        });
        let req = Request::new(Route::ChannelMessages { channel_id }, LightMethod::Post)
            .body(Some(body.to_string().into_bytes()));
        self.send(req).await.map(drop)
    }

    /// Sends one call and sorts the answer.
    async fn send(&self, req: Request<'_>) -> Result<reqwest::Response, ApiError> {
        let unavailable = |e: &dyn std::fmt::Display| ApiError::Unavailable(e.to_string());
        let response = match &self.http.ratelimiter {
            Some(limiter) => limiter.perform(req).await.map_err(|e| unavailable(&e))?,
            None => {
                let built = req
                    .build(&self.raw, self.http.token(), self.http.proxy.as_deref())
                    .map_err(|e| unavailable(&e))?
                    .build()
                    .map_err(|e| unavailable(&e))?;
                self.raw.execute(built).await.map_err(|e| unavailable(&e))?
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let header_delay = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok());
        let bytes = response.bytes().await.unwrap_or_default();
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        Err(classify(status, header_delay, body))
    }
}

/// A successful answer's JSON body; one that cannot be read is an outage (retried).
async fn read<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> Result<T, ApiError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Unavailable(format!("unreadable {what}: {e}")))
}

/// A serenity `Http` for the token, calling `api_url` instead of Discord when set.
pub fn build_http(token: &SecretString, api_url: Option<&str>, client: reqwest::Client) -> Http {
    let mut builder = HttpBuilder::new(token.expose_secret()).client(client);
    if let Some(url) = api_url {
        builder = builder.proxy(url).ratelimiter_disabled(true);
    }
    builder.build()
}

fn classify(status: StatusCode, header_delay: Option<f64>, body: ErrorBody) -> ApiError {
    if status == StatusCode::TOO_MANY_REQUESTS {
        // Discord sends both; the header is whole seconds, the body more precise.
        let secs = body.retry_after.or(header_delay).unwrap_or(1.0);
        let secs = if secs.is_finite() {
            secs.clamp(0.05, 3600.0)
        } else {
            1.0
        };
        return ApiError::RateLimited(Duration::from_secs_f64(secs));
    }
    if status.is_server_error() {
        return ApiError::Unavailable(format!("{status}: {}", body.message));
    }
    ApiError::Refused {
        status: status.as_u16(),
        code: body.code,
        message: body.message,
    }
}

fn audit_reason(reason: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // The audit log reason is URL-encoded UTF-8; ours are plain ASCII words.
    let ascii: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&ascii.replace(' ', "%20")) {
        headers.insert("X-Audit-Log-Reason", value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_carries_its_delay_and_other_failures_their_kind() {
        let body = |retry_after| ErrorBody {
            retry_after,
            ..ErrorBody::default()
        };
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(2.0), body(Some(1.5))),
            ApiError::RateLimited(d) if d == Duration::from_millis(1500)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(3.0), body(None)),
            ApiError::RateLimited(d) if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, body(None)),
            ApiError::Unavailable(_)
        ));
        let refused = classify(
            StatusCode::FORBIDDEN,
            None,
            ErrorBody {
                code: 50013,
                message: "Missing Permissions".into(),
                retry_after: None,
            },
        );
        assert!(matches!(
            refused,
            ApiError::Refused {
                status: 403,
                code: 50013,
                ..
            }
        ));
    }
}
