//! Discord OAuth2 (authorization code flow, scope `identify`): the authorize URL, the
//! token exchange and `/users/@me`, against the endpoints of `web.discord.*` (Discord's
//! by default, a fake server in tests). The access token is used once to learn who
//! signed in and then dropped: the site keeps no Discord tokens.

use std::time::Duration;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use ttfd_shared::Identity;

use crate::settings::web::DiscordOAuthSettings;

/// Why the provider did not tell us who signed in.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("Discord refused the code: {0}")]
    Token(String),
    #[error("Discord did not say who signed in: {0}")]
    User(String),
    #[error("Discord could not be reached: {0}")]
    Unreachable(#[from] reqwest::Error),
}

/// A Discord account proven by OAuth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscordUser {
    pub identity: Identity,
    /// `global_name` (the display name), else the username.
    pub name: Option<String>,
    /// The member holds one of `discord.moderator_roles` in `discord.guild_id` (asked
    /// only when both are set).
    pub moderator: bool,
}

/// The guild whose moderators may open the admin page, and their roles.
#[derive(Debug, Clone)]
pub struct Moderators {
    pub guild: u64,
    pub roles: Vec<u64>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

#[derive(Deserialize)]
struct Me {
    id: String,
    username: Option<String>,
    global_name: Option<String>,
}

#[derive(Clone)]
pub struct DiscordOAuth {
    http: reqwest::Client,
    client_id: String,
    client_secret: SecretString,
    authorize_url: Url,
    token_url: Url,
    me_url: Url,
    redirect_uri: String,
    /// When set, sign-in also asks for the member's guild roles (`guilds.members.read`).
    moderators: Option<(Moderators, Url)>,
}

impl DiscordOAuth {
    /// `None` when Discord sign-in is not configured (no `web.discord.client_id`).
    pub fn new(
        settings: &DiscordOAuthSettings,
        base_url: &str,
        moderators: Option<Moderators>,
    ) -> Option<Result<Self, String>> {
        if settings.client_id.is_empty() {
            return None;
        }
        let parse =
            |key: &str, s: &str| Url::parse(s).map_err(|e| format!("web.discord.{key}: {e}"));
        Some((|| {
            let me = format!("{}/users/@me", settings.api_url.trim_end_matches('/'));
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .user_agent(concat!("ttfd-web/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("HTTP client: {e}"))?;
            Ok(Self {
                http,
                client_id: settings.client_id.clone(),
                client_secret: settings.client_secret.clone(),
                authorize_url: parse("authorize_url", &settings.authorize_url)?,
                token_url: parse("token_url", &settings.token_url)?,
                me_url: parse("api_url", &me)?,
                redirect_uri: format!("{base_url}/auth/discord/callback"),
                moderators: moderators
                    .map(|m| {
                        let url = format!(
                            "{}/users/@me/guilds/{}/member",
                            settings.api_url.trim_end_matches('/'),
                            m.guild
                        );
                        parse("api_url", &url).map(|u| (m, u))
                    })
                    .transpose()?,
            })
        })())
    }

    /// Where to send the browser to ask Discord who it is.
    pub fn authorize_redirect(&self, state: &str) -> String {
        let mut url = self.authorize_url.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("scope", self.scope())
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("state", state);
        url.into()
    }

    /// `identify`, and `guilds.members.read` when moderators are recognised.
    fn scope(&self) -> &'static str {
        if self.moderators.is_some() {
            "identify guilds.members.read"
        } else {
            "identify"
        }
    }

    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Exchanges the authorization code for the account it proves.
    #[tracing::instrument(skip_all)]
    pub async fn sign_in(&self, code: &str) -> Result<DiscordUser, OAuthError> {
        let response = self
            .http
            .post(self.token_url.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.redirect_uri),
            ])
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(OAuthError::Token(describe(response).await));
        }
        let token: TokenResponse = response
            .json()
            .await
            .map_err(|e| OAuthError::Token(format!("unreadable token response: {e}")))?;
        let response = self
            .http
            .get(self.me_url.clone())
            .bearer_auth(&token.access_token)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(OAuthError::User(describe(response).await));
        }
        let me: Me = response
            .json()
            .await
            .map_err(|e| OAuthError::User(format!("unreadable user: {e}")))?;
        // A snowflake: digits only. Anything else is not a Discord user id.
        if me.id.is_empty() || me.id.len() > 20 || !me.id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(OAuthError::User(format!("{:?} is not a user id", me.id)));
        }
        let identity =
            Identity::new("discord", &me.id).map_err(|e| OAuthError::User(e.to_string()))?;
        let name = me
            .global_name
            .filter(|n| !n.trim().is_empty())
            .or(me.username)
            .map(|n| n.chars().take(100).collect());
        let moderator = match &self.moderators {
            Some((m, url)) => self.holds_a_role(url, &token.access_token, &m.roles).await,
            None => false,
        };
        Ok(DiscordUser {
            identity,
            name,
            moderator,
        })
    }

    /// Whether the signed-in member holds one of `roles` in the guild; not a member, or
    /// an answer that cannot be read, is no.
    async fn holds_a_role(&self, url: &Url, token: &str, roles: &[u64]) -> bool {
        #[derive(Deserialize)]
        struct Member {
            roles: Vec<String>,
        }
        let response = match self.http.get(url.clone()).bearer_auth(token).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::debug!(status = %r.status(), "not a member of the guild");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the member's guild roles");
                return false;
            }
        };
        response.json::<Member>().await.is_ok_and(|m| {
            m.roles
                .iter()
                .filter_map(|r| r.parse::<u64>().ok())
                .any(|r| roles.contains(&r))
        })
    }
}

/// Status plus the provider's `error` field when it gave one (never the whole body).
async fn describe(response: reqwest::Response) -> String {
    let status = response.status();
    #[derive(Deserialize)]
    struct ErrorBody {
        error: Option<String>,
    }
    match response.json::<ErrorBody>().await {
        Ok(ErrorBody { error: Some(e) }) => {
            format!("{status}: {}", e.chars().take(80).collect::<String>())
        }
        _ => status.to_string(),
    }
}
