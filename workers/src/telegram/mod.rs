//! The Telegram worker, role `ttfd telegram` (teloxide): group messages become
//! `message` events, commands (`/start`, `/help`, `/rank`, `/top`, `/link`) are
//! answered through the query service, and rank-ups are announced privately or in the
//! group. Operator guide: `docs/telegram.md`.
//!
//! - [`mapping`]: update → what to do (pure); [`commands`], [`texts`]: parsing and
//!   every reply (pure).
//! - [`handler`]: one update; [`polling`] or [`webhook`]: where updates come from.
//! - [`notices`]: the rank-up consumer; [`started`]: who started the bot (NATS KV).
//!
//! Reads `telegram.*` ([`settings`]), `nats.*` and `rules.*`; no database credentials.

pub mod commands;
pub mod handler;
pub mod mapping;
pub mod notices;
pub mod polling;
pub mod started;
pub mod texts;
pub mod webhook;

use crate::observe::bot::BotMetrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};
use teloxide::prelude::*;
use teloxide::types::BotCommand;
use teloxide::{ApiError, RequestError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::broker::notices::NoticeConsumer;
use crate::query::QueryClient;
use crate::settings::{Settings, TelegramMode};
use handler::Handler;
use notices::Announcer;
use started::StartedUsers;

/// Runs `ttfd telegram` until `shutdown`.
pub async fn run(
    settings: &Settings,
    broker: Broker,
    grace: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = crate::metrics::Metrics::new();
    let bot = TelegramBot::build(settings, broker, grace)
        .await?
        .with_metrics(BotMetrics::register(&registry, "telegram"));
    // `/metrics`, `/healthz`, `/readyz` on `metrics.listen` (off when empty).
    crate::observe::serve(
        &settings.metrics,
        registry,
        crate::observe::Readiness::new().nats(bot.handler.broker.clone()),
        shutdown.clone(),
    )
    .await?;
    bot.run(shutdown).await
}

/// Where updates come from.
enum Source {
    Polling {
        timeout_secs: u32,
    },
    Webhook {
        listener: TcpListener,
        path: String,
        secret: SecretString,
    },
}

/// A bot connected to Telegram and NATS, ready to run. (No `Debug`: teloxide's `Bot`
/// prints its token.)
pub struct TelegramBot {
    handler: Arc<Handler>,
    source: Source,
    announcer: Announcer,
    notices: NoticeConsumer,
    seasons: notices::SeasonAnnouncer,
    season_notices: NoticeConsumer,
    grace: Duration,
}

impl TelegramBot {
    /// Checks the token with `getMe`, registers the command menu, opens the
    /// started-users bucket and the rank consumer, and sets up polling (removing any
    /// webhook) or the webhook (binding `telegram.listen`, calling `setWebhook`).
    /// Commands being answered at shutdown get `grace` to finish.
    pub async fn build(
        settings: &Settings,
        broker: Broker,
        grace: Duration,
    ) -> anyhow::Result<Self> {
        let tg = &settings.telegram;
        let token = tg.require_token()?;
        let api_url = url::Url::parse(&tg.api_url).context("telegram.api_url")?;
        let bot = Bot::new(token.expose_secret()).set_api_url(api_url);
        let me = bot.get_me().await.map_err(|e| match e {
            RequestError::Api(ApiError::InvalidToken) => {
                anyhow::anyhow!("Telegram refused telegram.token (Unauthorized)")
            }
            e => anyhow::anyhow!(
                "cannot reach the Bot API at {} (telegram.api_url): {e}",
                tg.api_url
            ),
        })?;
        let username = me.user.username.clone().unwrap_or_default();
        info!(bot = %username, "signed in to Telegram");
        if !me.can_read_all_group_messages {
            warn!(
                "privacy mode is on: in groups the bot sees only commands, so messages earn \
                 no XP unless it is an admin; turn it off with @BotFather (/setprivacy)"
            );
        }
        let menu: Vec<BotCommand> = commands::COMMANDS
            .iter()
            .map(|(name, about)| BotCommand::new(*name, *about))
            .collect();
        if let Err(e) = bot.set_my_commands(menu).await {
            warn!(error = %e, "cannot register the command menu");
        }

        let started = StartedUsers::open(&broker.js, &broker.subjects).await?;
        let notices = NoticeConsumer::open(&broker, notices::POLICY).await?;
        let season_notices = NoticeConsumer::open(&broker, notices::SEASON_POLICY).await?;
        let query = QueryClient::new(
            broker.client.clone(),
            &settings.nats.prefix,
            Duration::from_millis(tg.query_timeout_ms),
        );
        let source = match tg.mode {
            TelegramMode::Polling => {
                // getUpdates does not work while a webhook is set.
                bot.delete_webhook()
                    .await
                    .context("deleteWebhook before polling")?;
                Source::Polling {
                    timeout_secs: tg.poll_timeout_secs,
                }
            }
            TelegramMode::Webhook => {
                let (Some(url), Some(secret)) = (&tg.webhook_url, &tg.webhook_secret) else {
                    anyhow::bail!(
                        "telegram.webhook_url and telegram.webhook_secret are required in webhook mode"
                    );
                };
                let listener = TcpListener::bind(&tg.listen)
                    .await
                    .with_context(|| format!("cannot listen on {} (telegram.listen)", tg.listen))?;
                let url = url::Url::parse(url).context("telegram.webhook_url")?;
                bot.set_webhook(url)
                    .secret_token(secret.expose_secret().to_owned())
                    .allowed_updates(polling::allowed_updates())
                    .await
                    .context("setWebhook (telegram.webhook_url)")?;
                Source::Webhook {
                    listener,
                    path: tg.webhook_path(),
                    secret: secret.clone(),
                }
            }
        };
        let group = Arc::new(AtomicI64::new(tg.group_chat_id.unwrap_or_default()));
        let seasons = notices::SeasonAnnouncer {
            bot: bot.clone(),
            group: group.clone(),
            has_group: tg.group_chat_id.is_some(),
            metrics: BotMetrics::default(),
        };
        let announcer = Announcer {
            bot: bot.clone(),
            started: started.clone(),
            rules: settings.rules.clone(),
            group,
            has_group: tg.group_chat_id.is_some(),
            metrics: BotMetrics::default(),
            to: tg.announce.to,
            texts: Arc::new(tg.announce.templates(&settings.rules)?),
        };
        let counted = tg.counted_chats();
        if counted.is_empty() {
            warn!(
                "no group is configured to count (telegram.group_chat_id, telegram.chats): \
                 no message earns XP until one is"
            );
        }
        let rates = crate::rates::Rates {
            places: crate::settings::rates::id_rates(
                "telegram.chat_rates",
                &settings.telegram.chat_rates,
            )?,
            ..Default::default()
        };
        let boosts = crate::settings::rates::boosts(&settings.boosts)?;
        let handler = Arc::new(
            Handler::new(
                bot,
                username,
                counted,
                broker,
                query,
                started,
                settings.rules.clone(),
            )
            .with_rates(rates, boosts),
        );
        Ok(Self {
            handler,
            source,
            announcer,
            notices,
            seasons,
            season_notices,
            grace,
        })
    }

    /// The webhook server's address (webhook mode).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.source {
            Source::Webhook { listener, .. } => listener.local_addr().ok(),
            Source::Polling { .. } => None,
        }
    }

    /// The bot's username, from `getMe`.
    pub fn username(&self) -> &str {
        &self.handler.username
    }

    /// Runs until `shutdown`; commands being answered then get the grace period.
    /// Records into registered metric handles instead of the unregistered defaults.
    pub fn with_metrics(mut self, metrics: BotMetrics) -> Self {
        if let Some(handler) = Arc::get_mut(&mut self.handler) {
            handler.metrics = metrics.clone();
        }
        self.seasons.metrics = metrics.clone();
        self.announcer.metrics = metrics;
        self
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Our own token, so that a fatal error here stops this bot and nothing else.
        let shutdown = shutdown.child_token();
        let announcer = tokio::spawn(self.notices.run(Arc::new(self.announcer), shutdown.clone()));
        let seasons = tokio::spawn(
            self.season_notices
                .run(Arc::new(self.seasons), shutdown.clone()),
        );
        let result = match self.source {
            Source::Polling { timeout_secs } => {
                polling::run(self.handler.clone(), timeout_secs, shutdown.clone()).await
            }
            Source::Webhook {
                listener,
                path,
                secret,
            } => {
                webhook::run(
                    self.handler.clone(),
                    listener,
                    &path,
                    secret,
                    shutdown.clone(),
                )
                .await
            }
        };
        // The update source ended: at shutdown, or on a fatal error that stops the role.
        shutdown.cancel();
        self.handler.tasks.close();
        if tokio::time::timeout(self.grace, self.handler.tasks.wait())
            .await
            .is_err()
        {
            warn!("commands still being answered at the end of the grace period");
        }
        let _ = announcer.await;
        let _ = seasons.await;
        result
    }
}
