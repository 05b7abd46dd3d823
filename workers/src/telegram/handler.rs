//! What the bot does with one update, whichever way it came (long polling or webhook):
//! publishes activity, answers commands, remembers who started it.

use crate::observe::bot::BotMetrics;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBuilder;
use teloxide::RequestError;
use teloxide::prelude::*;
use teloxide::types::{ChatId, InputFile, MessageId, ReplyParameters, Update, UserId};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, instrument, warn};
use ttfd_shared::view::text::{self, Markup};
use ttfd_shared::view::{Period, Pref, Profile};
use ttfd_shared::{Event, Payload, Rules};

use super::commands::{self, Command};
use super::mapping::{self, CommandCall, Inbound};
use super::started::StartedUsers;
use super::texts;
use crate::broker::Broker;
use crate::card;
use crate::now_ms;
use crate::query::{AdjustRequest, ExportOutcome, QueryClient};
use crate::rates::{self, Boost, Rates};
use crate::store::codes::LinkCode;

/// Commands answered at once; more wait for a slot.
const COMMAND_SLOTS: usize = 16;
/// Attempts to send a reply, and the longest flood-control wait a reply accepts.
const REPLY_ATTEMPTS: u32 = 3;
const MAX_REPLY_WAIT: Duration = Duration::from_secs(30);
/// The longest pause between attempts to publish an event.
const MAX_PUBLISH_DELAY: Duration = Duration::from_secs(5);

/// The update could not be handled (NATS unavailable until the deadline or shutdown):
/// it must not be confirmed to Telegram, so that it comes again.
#[derive(Debug, thiserror::Error)]
#[error("the update was not handled: {0}")]
pub struct NotHandled(String);

/// Everything an update needs; shared by the polling loop or the webhook server.
pub struct Handler {
    pub bot: Bot,
    /// The bot's username, for commands addressed as `/rank@name`.
    pub username: String,
    /// The groups whose activity counts (`telegram.group_chat_id`, `telegram.chats`).
    pub counted: BTreeSet<i64>,
    pub broker: Broker,
    pub query: QueryClient,
    pub started: StartedUsers,
    pub rules: Rules,
    /// Commands run as tasks here, so that a slow query does not hold up activity.
    pub tasks: TaskTracker,
    pub slots: Arc<Semaphore>,
    pub metrics: BotMetrics,
    /// `telegram.chat_rates` and `[[boosts]]`: what `data.mult` a message carries.
    pub rates: Rates<i64>,
    pub boosts: Vec<Boost>,
}

impl Handler {
    pub fn new(
        bot: Bot,
        username: String,
        counted: BTreeSet<i64>,
        broker: Broker,
        query: QueryClient,
        started: StartedUsers,
        rules: Rules,
    ) -> Self {
        Self {
            bot,
            username,
            counted,
            broker,
            query,
            started,
            rules,
            tasks: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(COMMAND_SLOTS)),
            metrics: BotMetrics::default(),
            rates: Rates::default(),
            boosts: Vec::new(),
        }
    }

    /// With the XP rates of `telegram.chat_rates` and `[[boosts]]`.
    pub fn with_rates(mut self, rates: Rates<i64>, boosts: Vec<Boost>) -> Self {
        self.rates = rates;
        self.boosts = boosts;
        self
    }

    /// `data.mult` of a message at `ts` in `chat` (`crate::rates`).
    fn mult(&self, chat: i64, ts: i64) -> Option<u16> {
        let boost = rates::boost(&self.boosts, mapping::PLATFORM, ts);
        self.rates.mult(&chat, None, [], boost)
    }

    /// Handles one update. Activity is published and acknowledged by JetStream before
    /// this returns (retrying until `patience` runs out or `shutdown`); commands are
    /// started as tasks and answered in the background.
    #[instrument(skip_all, fields(update = update.id.0))]
    pub async fn handle(
        self: &Arc<Self>,
        update: &Update,
        patience: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> Result<(), NotHandled> {
        match mapping::classify(update, &self.username, &self.counted) {
            Inbound::Activity(mut event) => {
                if let Payload::Message {
                    chat: Some(chat), ..
                } = &event.payload
                    && let Ok(chat) = chat.parse::<i64>()
                {
                    event.payload.set_mult(self.mult(chat, event.ts));
                }
                self.publish(&event, patience, shutdown).await
            }
            Inbound::Command(call) => {
                self.spawn(async move |h: Arc<Self>| h.answer(call).await);
                Ok(())
            }
            Inbound::PrivateText { user } => {
                self.spawn(async move |h: Arc<Self>| {
                    h.remember(user).await;
                    h.reply(ChatId::from(user), None, texts::help(&h.rules))
                        .await;
                });
                Ok(())
            }
            Inbound::PrivateChatStatus { user, open } => {
                let result = if open {
                    self.started.remember(user, now_ms()).await
                } else {
                    self.started.forget(user).await
                };
                if let Err(e) = result {
                    warn!(error = %e, "cannot record the private chat's status");
                }
                Ok(())
            }
            Inbound::Ignored(why) => {
                debug!(why, "update ignored");
                Ok(())
            }
        }
    }

    fn spawn<F>(self: &Arc<Self>, work: impl FnOnce(Arc<Self>) -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handler = self.clone();
        self.tasks.spawn(async move {
            let Ok(_slot) = handler.slots.clone().acquire_owned().await else {
                return;
            };
            work(handler).await;
        });
    }

    /// Publishes with retries: JetStream deduplicates by event id, so a retry after an
    /// unknown outcome is safe.
    async fn publish(
        &self,
        event: &Event,
        patience: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> Result<(), NotHandled> {
        let deadline = patience.map(|p| tokio::time::Instant::now() + p);
        let give_up = async {
            match deadline {
                Some(d) => tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep_until(d) => {}
                },
                None => shutdown.cancelled().await,
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(MAX_PUBLISH_DELAY)
            .with_jitter()
            .without_max_times();
        self.broker
            .publish_until_stored(event, backoff, give_up, |error, _| {
                warn!(event = event.id.as_str(), %error, "cannot publish; retrying");
                self.metrics.publish_retries.inc();
            })
            .await
            .map_err(|e| NotHandled(e.to_string()))?;
        self.metrics.published(event.kind());
        Ok(())
    }

    /// `/gdpr export`: the member's export (docs/privacy.md) as a document in their
    /// private chat with the bot; what to tell them where they asked.
    async fn send_export(&self, call: &CommandCall) -> String {
        let (name, json) = match self.query.export(&mapping::identity(call.user)).await {
            Ok(ExportOutcome::File { name, json }) => (name, json),
            Ok(ExportOutcome::Refused(why)) => return texts::export_refused(&why),
            Err(e) => return self.unavailable(e),
        };
        let private = ChatId(i64::try_from(call.user.0).unwrap_or(i64::MAX));
        let document = InputFile::memory(json.into_bytes()).file_name(name);
        match self.bot.send_document(private, document).await {
            Ok(_) => texts::export_sent(call.private),
            // Telegram's refusal: the member never started a chat with the bot.
            Err(RequestError::Api(e)) => {
                debug!(error = %e, "cannot send an export privately");
                texts::export_needs_start(&self.username)
            }
            Err(e) => {
                warn!(error = %e, "cannot send an export");
                texts::unavailable()
            }
        }
    }

    /// Publishes the member's `prefs` event; what to tell them.
    async fn set_pref(&self, call: &CommandCall, pref: Pref) -> String {
        let event = mapping::prefs_event(call, pref, now_ms());
        let deadline = CancellationToken::new();
        match self
            .publish(&event, Some(Duration::from_secs(10)), &deadline)
            .await
        {
            Ok(()) => text::pref_said(pref, Markup::Plain),
            Err(e) => {
                warn!(error = %e, "cannot publish a preference");
                texts::unavailable()
            }
        }
    }

    async fn remember(&self, user: UserId) {
        if let Err(e) = self.started.remember(user, now_ms()).await {
            warn!(error = %e, "cannot remember that a user started the bot");
        }
    }

    /// Answers a command: in a group as a reply to it, in a private chat plainly.
    #[instrument(skip_all, fields(user = call.user.0, command = ?call.command))]
    async fn answer(&self, call: CommandCall) {
        if call.private {
            self.remember(call.user).await;
        }
        let reply_to = (!call.private).then_some(call.message);
        let text = match &call.command {
            Command::Start if call.private => texts::start(&call.first_name, &self.rules),
            Command::Start | Command::Help => texts::help(&self.rules),
            Command::Unknown(name) => texts::unknown_command(name, &self.rules),
            Command::Rank(arg) => match commands::parse_rank(arg) {
                Err(word) => texts::rank_usage(&word),
                Ok(Some(period)) => self.statement(&call, period).await,
                // One's own rank, read as oneself; a hidden member's is not shown to a
                // group.
                Ok(None) => match self.query.own_profile(&mapping::identity(call.user)).await {
                    Ok(Some(p)) if p.hidden && !call.private => texts::rank_hidden_in_group(),
                    Ok(Some(p)) => {
                        let text = texts::rank(Some(&p), &self.rules);
                        if self.send_card(call.chat, reply_to, &p, &text).await {
                            return;
                        }
                        text
                    }
                    Ok(None) => texts::rank(None, &self.rules),
                    Err(e) => self.unavailable(e),
                },
            },
            Command::Top(arg) => match commands::parse_period(arg) {
                Err(word) => texts::top_usage(&word),
                Ok(period) => match self.query.top(period, 10, 0).await {
                    Ok(rows) => texts::top(period, &rows),
                    Err(e) => self.unavailable(e),
                },
            },
            Command::Xp(args) => self.adjust(&call, args).await,
            Command::Notify(arg) => match commands::parse_switch(arg) {
                None => texts::notify_usage(),
                Some(on) => self.set_pref(&call, Pref::Notify(on)).await,
            },
            Command::Privacy(arg) => match commands::parse_privacy(arg) {
                None => texts::privacy_usage(),
                Some(hide) => self.set_pref(&call, Pref::Hidden(hide)).await,
            },
            Command::Gdpr(arg) if arg.trim().eq_ignore_ascii_case("export") => {
                self.send_export(&call).await
            }
            Command::Gdpr(arg) if arg.trim().eq_ignore_ascii_case("delete") => {
                texts::erase_confirm()
            }
            Command::Gdpr(arg) if arg.trim().eq_ignore_ascii_case("delete confirm") => {
                match self.query.forget(&mapping::identity(call.user)).await {
                    Ok(_) => texts::erased(),
                    Err(e) => self.unavailable(e),
                }
            }
            Command::Gdpr(_) => texts::gdpr_usage(),
            Command::Link(arg) if !call.private => {
                if !arg.is_empty() {
                    // The code is visible to the group: take it down if the bot may.
                    if let Err(e) = self.bot.delete_message(call.chat, call.message).await {
                        debug!(error = %e, "cannot delete a code posted in a group");
                    }
                }
                self.reply(
                    call.chat,
                    None,
                    texts::link_in_private_only(&self.username, !arg.is_empty()),
                )
                .await;
                return;
            }
            Command::Link(arg) if arg.is_empty() => {
                match self
                    .query
                    .issue_link_code(&mapping::identity(call.user))
                    .await
                {
                    Ok(issued) => texts::code_issued(&issued, now_ms()),
                    Err(e) => self.unavailable(e),
                }
            }
            Command::Link(arg) => match LinkCode::parse(arg) {
                None => texts::malformed_code(),
                Some(code) => match self
                    .query
                    .redeem_link_code(&mapping::identity(call.user), code.as_str())
                    .await
                {
                    Ok(outcome) => texts::redeemed(&outcome),
                    Err(e) => self.unavailable(e),
                },
            },
        };
        self.reply(call.chat, reply_to, text).await;
    }

    /// `/xp`: in a counted group, by one of its administrators, in reply to the
    /// member's message. The message's id makes a retried update count once.
    async fn adjust(&self, call: &CommandCall, args: &str) -> String {
        if call.private || !self.counted.contains(&call.chat.0) {
            return texts::xp_in_the_group_only();
        }
        let Some((verb, reason)) = commands::parse_xp(args) else {
            return texts::xp_usage();
        };
        let Some(member) = &call.replied_to else {
            return texts::xp_usage();
        };
        if member.bot {
            return texts::xp_not_for_bots();
        }
        match self.bot.get_chat_member(call.chat, call.user).await {
            Ok(m) if m.is_privileged() => {}
            Ok(_) => return texts::xp_for_administrators(),
            Err(e) => {
                warn!(error = %e, "cannot tell whether the caller is an administrator");
                return texts::unavailable();
            }
        }
        let request = AdjustRequest {
            by: (&mapping::identity(call.user)).into(),
            target: (&mapping::identity(member.user)).into(),
            verb,
            reason: reason.clone(),
            request_id: format!("msg:{}:{}", call.chat.0, call.message.0),
        };
        match self.query.adjust_xp(&request).await {
            Ok(outcome) => outcome.text(&member.first_name, &reason),
            Err(e) => self.unavailable(e),
        }
    }

    /// `/rank details [period]`: one's own statement, read as oneself; a hidden
    /// member's is not shown to a group.
    async fn statement(&self, call: &CommandCall, period: Period) -> String {
        let me = mapping::identity(call.user);
        let profile = match self.query.own_profile(&me).await {
            Ok(Some(p)) if p.hidden && !call.private => return texts::rank_hidden_in_group(),
            Ok(Some(p)) => p,
            Ok(None) => return texts::rank(None, &self.rules),
            Err(e) => return self.unavailable(e),
        };
        match self.query.statement(&me, period, true).await {
            Ok(s) => texts::statement(&profile, period, s.as_ref()),
            Err(e) => self.unavailable(e),
        }
    }

    fn unavailable(&self, e: crate::query::QueryError) -> String {
        warn!(error = %e, "query failed");
        texts::unavailable()
    }

    /// Sends a plain-text message. Flood control and network failures are retried a
    /// few times (the person is waiting); then the failure is logged.
    /// `/rank`'s card (docs/cards.md) as a photo, the rank text its caption; `false`
    /// when it could not be sent, and the text goes alone.
    async fn send_card(
        &self,
        chat: ChatId,
        reply_to: Option<MessageId>,
        profile: &Profile,
        caption: &str,
    ) -> bool {
        let Some(png) = card::png_off_thread(profile, &self.rules).await else {
            return false;
        };
        let mut request = self
            .bot
            .send_photo(chat, InputFile::memory(png).file_name("rank.png"))
            .caption(caption);
        if let Some(message) = reply_to {
            request = request
                .reply_parameters(ReplyParameters::new(message).allow_sending_without_reply());
        }
        match request.await {
            Ok(_) => true,
            Err(e) => {
                warn!(chat = chat.0, error = %e, "cannot send the rank card; sending the text");
                false
            }
        }
    }

    async fn reply(&self, chat: ChatId, reply_to: Option<MessageId>, text: String) {
        for attempt in 1..=REPLY_ATTEMPTS {
            let mut request = self.bot.send_message(chat, text.clone());
            if let Some(message) = reply_to {
                request = request
                    .reply_parameters(ReplyParameters::new(message).allow_sending_without_reply());
            }
            let wait = match request.await {
                Ok(_) => return,
                Err(RequestError::RetryAfter(s)) if s.duration() <= MAX_REPLY_WAIT => s.duration(),
                Err(RequestError::Network(_)) => Duration::from_millis(500),
                Err(e) => {
                    warn!(chat = chat.0, error = %e, "cannot send a reply");
                    return;
                }
            };
            if attempt < REPLY_ATTEMPTS {
                tokio::time::sleep(wait).await;
            }
        }
        warn!(chat = chat.0, "cannot send a reply: Telegram kept refusing");
    }
}
