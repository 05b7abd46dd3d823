//! The `ttfd web` role: the website (profiles, leaderboards, the rank ladder, sign-in
//! and account linking), the HTTP API `/api/v1/...` with event ingest, and the
//! operations endpoints `/healthz`, `/readyz`, `/metrics`.
//!
//! Built as STYLE.md asks: [`WebApp::build`] binds (port 0 in tests) over the store and
//! broker the composition root (`app`) connected, and exposes the address;
//! [`WebApp::run`] serves until the shutdown token fires, then finishes the requests in
//! flight.
//!
//! Reads the `web` section ([`crate::settings::web`]) and `rules`.

pub mod admin;
pub mod api;
pub mod auth;
pub mod chart;
pub mod discord;
pub mod limits;
pub mod ops;
pub mod pages;
pub mod session;
pub mod telegram;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::routing::{delete, get, post, put};
use axum_extra::extract::SignedCookieJar;
use axum_extra::extract::cookie::Key;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::broker::trust::Trust;
use crate::broker::{Broker, BrokerError};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::observe::{OpsServer, Readiness};
use crate::settings::{ModerationSettings, Settings, SettingsError};
use crate::store::{Store, StoreError};
use ttfd_shared::Identity;
use ttfd_shared::trust::Publisher;

use crate::settings::web::{LeaderboardVisibility, TelegramLoginSettings};
use discord::DiscordOAuth;
use ops::WebMetrics;
use pages::TelegramWidget;
use session::{CookiePolicy, Session};

/// Why the web role could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(transparent)]
    Config(#[from] SettingsError),
    #[error("cannot listen on {addr} (web.listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ops(#[from] crate::observe::ObserveError),
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub broker: Broker,
    pub metrics: WebMetrics,
    pub registry: Metrics,
    pub cookie_key: Key,
    /// `web.retired_cookie_keys`: believed, never used to sign.
    pub retired_cookie_keys: Arc<[Key]>,
    pub cookies: CookiePolicy,
    pub base_url: Arc<str>,
    pub discord: Option<DiscordOAuth>,
    /// Telegram sign-in: the settings and the key the widget's data is signed with.
    pub telegram: Option<Arc<(TelegramLoginSettings, [u8; 32])>>,
    /// Ingest token → platform.
    ingest_tokens: Arc<Vec<(secrecy::SecretString, String)>>,
    pub limits: Arc<limits::Limits>,
    /// `web.admins`: who may use `/admin` and `GET /api/v1/audit`.
    pub admins: Arc<[Identity]>,
    /// The admin page's XP adjustments: published through a handle that signs as the
    /// moderator principal (`trust.keys.moderator`), with `[moderation]`'s guard rails.
    /// The ingest API's handle (`broker`) signs nothing.
    pub moderator: Broker,
    pub moderation: ModerationSettings,
    /// `web.leaderboard_visibility`: who may read the leaderboards.
    pub leaderboards: LeaderboardVisibility,
    /// Rank cards rendered lately (`crate::card`).
    pub cards: crate::card::Cards,
}

impl FromRef<AppState> for Key {
    fn from_ref(app: &AppState) -> Key {
        app.cookie_key.clone()
    }
}

impl AppState {
    /// The browser's session (a fresh anonymous one if it has none). A sign-in that
    /// "sign out everywhere" ended, or that cannot be checked because the database is
    /// away, is not one: the session is then anonymous.
    pub async fn session(&self, jar: &SignedCookieJar) -> Session {
        let mut session = Session::load(jar, &self.cookies, now_ms());
        if let Some(who) = session.who.clone() {
            let revoked = match self.store.sessions_revoked(&who).await {
                Ok(at) => at.is_some_and(|at| session.at <= at),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the session; treated as signed out");
                    true
                }
            };
            if revoked {
                session.sign_out();
            }
        }
        session
    }

    /// Whether the leaderboards may be shown to this session
    /// (`web.leaderboard_visibility`); else the status and what to say instead.
    pub fn leaderboards_for(&self, session: &Session) -> Result<(), (StatusCode, &'static str)> {
        match self.leaderboards {
            LeaderboardVisibility::Public => Ok(()),
            LeaderboardVisibility::Members if session.who.is_some() => Ok(()),
            LeaderboardVisibility::Members => Err((
                StatusCode::UNAUTHORIZED,
                "The leaderboards are for members: sign in to see them.",
            )),
            LeaderboardVisibility::Off => Err((
                StatusCode::NOT_FOUND,
                "This community keeps no leaderboards on the site.",
            )),
        }
    }

    /// The platform an ingest token publishes for. Every configured token is compared,
    /// in constant time, so timing does not tell which one was close.
    pub fn ingest_platform(&self, token: &str) -> Option<&str> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for (secret, platform) in self.ingest_tokens.iter() {
            if bool::from(secret.expose_secret().as_bytes().ct_eq(token.as_bytes())) {
                found = Some(platform.as_str());
            }
        }
        found
    }

    /// The Telegram Login Widget sending its data to `path`, when Telegram is configured.
    pub fn telegram_widget(&self, path: &str) -> Option<TelegramWidget> {
        self.telegram.as_ref().map(|t| TelegramWidget {
            bot_username: t.0.bot_username.clone(),
            auth_url: format!("{}{path}", self.base_url),
        })
    }
}

/// The web role, bound and ready to serve.
pub struct WebApp {
    listener: TcpListener,
    router: Router,
    addr: SocketAddr,
    base_url: String,
    /// Time requests in flight get after the shutdown signal.
    grace: Duration,
    /// `metrics.listen`, when set: `/metrics`, `/healthz` and `/readyz` are served
    /// there, off the public port.
    ops: Option<OpsServer>,
}

impl WebApp {
    /// Binds `web.listen` (port 0 picks a free port) over a connected store and broker,
    /// registering the site's metrics in `registry`; requests in flight at shutdown get
    /// `grace` to finish.
    pub async fn build(
        settings: &Settings,
        store: Store,
        broker: Broker,
        registry: Metrics,
        grace: Duration,
    ) -> Result<Self, WebError> {
        let web = &settings.web;
        web.validate()?;
        let listener = TcpListener::bind(web.listen)
            .await
            .map_err(|source| WebError::Bind {
                addr: web.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| WebError::Bind {
            addr: web.listen,
            source,
        })?;
        let base_url = web.base_url(addr);
        let cookie_key = web.cookie_key(&base_url)?;
        let retired_cookie_keys = web.retired_cookie_keys()?.into();
        let moderators = settings
            .discord
            .guild_id
            .filter(|_| !settings.discord.moderator_roles.is_empty())
            .map(|guild| discord::Moderators {
                guild: guild.get(),
                roles: settings
                    .discord
                    .moderator_roles
                    .iter()
                    .map(|r| r.get())
                    .collect(),
            });
        let discord = match DiscordOAuth::new(&web.discord, &base_url, moderators) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(message)) => {
                return Err(SettingsError::Invalid {
                    key: "web.discord".into(),
                    message,
                }
                .into());
            }
        };
        let telegram = web
            .telegram
            .login_key()?
            .map(|key| Arc::new((web.telegram.clone(), key)));
        let ingest_tokens: Vec<_> = web
            .ingest_tokens
            .iter()
            .map(|(platform, token)| (token.clone(), platform.clone()))
            .collect();
        let trust = Trust::from_settings(&settings.trust, Some(Publisher::Moderator))?;
        let broker_moderator = broker.clone().with_trust(trust);
        let state = AppState {
            store,
            broker,
            metrics: WebMetrics::register(&registry),
            registry,
            cookie_key,
            retired_cookie_keys,
            cookies: CookiePolicy {
                secure: base_url.starts_with("https://"),
                max_age_ms: i64::from(web.session_days) * 86_400_000,
            },
            base_url: base_url.clone().into(),
            discord,
            telegram,
            ingest_tokens: Arc::new(ingest_tokens),
            limits: limits::Limits::new(&web.rate_limit),
            admins: web.admins()?.into(),
            moderator: broker_moderator,
            moderation: settings.moderation.clone(),
            leaderboards: web.leaderboard_visibility,
            cards: crate::card::Cards::default(),
        };
        let ops = match settings.metrics.addr()? {
            Some(at) => {
                let readiness = Readiness::new()
                    .database(state.store.clone())
                    .nats(state.broker.clone());
                Some(OpsServer::bind(at, state.registry.clone(), readiness).await?)
            }
            None => None,
        };
        Ok(Self {
            listener,
            router: router(state, ops.is_none()),
            addr,
            base_url,
            grace,
            ops,
        })
    }

    /// The bound address (the real port when `web.listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` and `/readyz` are served when `metrics.listen` is set.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(OpsServer::local_addr)
    }

    /// The site's address, e.g. `http://127.0.0.1:8080`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Serves until `shutdown` fires, then gives requests in flight the grace period to
    /// finish.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        tracing::info!(url = %self.base_url, "web: serving");
        if let Some(ops) = self.ops {
            tracing::info!(addr = %ops.local_addr(), "serving /metrics, /healthz, /readyz");
            tokio::spawn(ops.run(shutdown.clone()));
        }
        let serve = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.grace).await;
        };
        tokio::select! {
            served = serve => served,
            () = deadline => {
                tracing::warn!(grace = ?self.grace, "web: requests still running after the grace period; stopping");
                Ok(())
            }
        }
    }
}

/// Every route of the site and the API; `/readyz` and `/metrics` too when
/// `with_ops` (no `metrics.listen` to serve them on instead).
pub fn router(state: AppState, with_ops: bool) -> Router {
    let api = Router::new()
        .route("/users/{platform}/{user}", get(api::user))
        .route("/users/{platform}/{user}/statement", get(api::statement))
        .route("/me", delete(api::erase_me))
        .route("/me/prefs", put(api::set_prefs))
        .route("/me/export", get(api::export_me))
        .route("/leaderboard", get(api::leaderboard))
        .route("/ranks", get(api::ranks))
        .route("/seasons", get(api::seasons))
        .route("/events", post(api::ingest))
        .route("/audit", get(admin::api))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed);
    // Signing in, linking and codes: rate-limited per client (web/limits.rs).
    let sign_in = Router::new()
        .route("/auth/discord", get(auth::discord_start))
        .route("/auth/discord/callback", get(auth::discord_callback))
        .route("/auth/telegram/{csrf}", get(auth::telegram_sign_in))
        .route("/link/telegram/{csrf}", get(auth::telegram_link))
        .route("/link/discord", post(auth::discord_link_start))
        .route("/link/code", post(auth::redeem_code))
        .route("/link/issue", post(auth::issue_code))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::per_client,
        ));
    let security_headers: [(HeaderName, &'static str); 4] = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self' https://telegram.org; \
             frame-src https://oauth.telegram.org; img-src 'self' data: https:; \
             style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ];
    let mut router = Router::new()
        .route("/", get(pages::index))
        .route("/leaderboard", get(pages::leaderboard))
        .route("/ranks", get(pages::ranks))
        .route("/seasons", get(pages::seasons))
        .route("/u/{uid}", get(pages::user))
        .route("/u/{uid}/card.png", get(pages::card))
        .route("/profile", get(pages::own_profile))
        .route("/profile/notify", post(auth::set_notify))
        .route("/profile/privacy", post(auth::set_privacy))
        .route("/profile/export", get(pages::export))
        .route("/profile/delete", post(auth::erase_me))
        .route("/admin", get(admin::page))
        .route("/admin/xp", post(admin::adjust))
        .route("/admin/unlink", post(admin::unlink))
        .route("/login", get(pages::login))
        .route("/logout", post(auth::logout))
        .route("/logout/everywhere", post(auth::logout_everywhere))
        .merge(sign_in)
        .route("/static/style.css", get(pages::style))
        .route("/healthz", get(ops::healthz))
        .nest("/api/v1", api)
        .fallback(pages::not_found);
    if with_ops {
        router = router
            .route("/readyz", get(ops::readyz))
            .route("/metrics", get(ops::metrics));
    }
    for (name, value) in security_headers {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ));
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::believe_retired_keys,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::track,
        ))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
