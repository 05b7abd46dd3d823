//! Rank-up announcements: the [`NoticeHandler`] of the Telegram bot, on the shared rank
//! notice consumer ([`crate::broker::notices`]) `<prefix>-telegram-rank` with
//! [`POLICY`].
//!
//! A rank-up of a user with a Telegram identity goes privately to them when they have
//! started the bot, else to the group `telegram.group_chat_id` when they are a member
//! of it. Rank-downs (admin adjustments) and users without a Telegram identity are not
//! announced. A transient Telegram failure (429 with `retry_after`, network, Telegram
//! server errors) or NATS failure naks the notice with a delay: it is never dropped.
//! A user who blocked the bot is forgotten and announced in the group instead.
//! Delivery is at least once: a crash between `sendMessage` and the ack repeats it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use teloxide::prelude::*;
use teloxide::types::{ChatId, ParseMode, UserId};
use teloxide::{ApiError, RequestError};
use tracing::{debug, error, info, instrument, warn};
use ttfd_shared::Rules;
use ttfd_shared::view::text::Markup;
use ttfd_shared::wire::{RankNotice, SeasonNotice};

use super::mapping::display_name;
use super::started::StartedUsers;
use super::texts;
use crate::announce::Templates;
use crate::broker::notices::{NoticeHandler, NoticePolicy, Outcome};
use crate::observe::bot::BotMetrics;
use crate::settings::telegram::TelegramAnnounceTo;

/// The longest a notice waits between attempts after network failures.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// One notice at a time per replica: a flood-control pause (Telegram's `retry_after`)
/// holds every announcement, and a fetched notice's `ack_wait` must not run out while it
/// waits. New notices only: a first start announces nothing of the stream's backlog.
pub const POLICY: NoticePolicy = NoticePolicy {
    topic: "rank",
    durable: "telegram-rank",
    description: "Telegram rank-up announcements (ttfd telegram)",
    deliver: DeliverPolicy::New,
    ack_wait: Duration::from_secs(60),
    concurrency: 1,
};

/// The Telegram user a notice announces a rank-up of; `Err` says why there is none.
pub fn announced_user(notice: &RankNotice) -> Result<UserId, &'static str> {
    if notice.new_rank <= notice.old_rank {
        return Err("not a rank-up");
    }
    if !notice.notify {
        return Err("the member switched announcements off (/notify off)");
    }
    texts::telegram_user(&notice.identities)
        .map(UserId)
        .ok_or("no Telegram identity")
}

/// Where a rank-up of `user` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Privately: the user started the bot.
    Private,
    /// In the group, mentioning the user, if they are a member.
    Group(ChatId),
    /// Not announced.
    Nowhere,
}

/// Where `telegram.announce.to` sends a rank-up of a member who did (`started`) or did
/// not start the bot; a hidden member's (SPEC 7.3) never to the group.
pub fn route(to: TelegramAnnounceTo, started: bool, group: Option<ChatId>, hidden: bool) -> Route {
    let group = group.filter(|_| !hidden);
    match (to, started, group) {
        (TelegramAnnounceTo::Off, ..) => Route::Nowhere,
        (TelegramAnnounceTo::Auto | TelegramAnnounceTo::Private, true, _) => Route::Private,
        (TelegramAnnounceTo::Auto | TelegramAnnounceTo::Group, _, Some(group)) => {
            Route::Group(group)
        }
        _ => Route::Nowhere,
    }
}

/// What a failed Bot API call means for a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try again after this long; `pause`: Telegram asked the whole bot to slow down.
    Retry { after: Duration, pause: bool },
    /// The private chat is closed (blocked, deactivated, never started).
    ChatClosed,
    /// The group became a supergroup with this id.
    Migrated(ChatId),
    /// Retrying cannot help (a misconfigured group, missing rights).
    Permanent(String),
}

/// The delay before attempt `delivered + 1` after a network failure.
pub fn retry_delay(delivered: i64) -> Duration {
    let exp = u32::try_from(delivered.clamp(1, 7) - 1).unwrap_or(6);
    Duration::from_secs(1u64 << exp).min(MAX_RETRY_DELAY)
}

/// Sorts a Bot API error into the decision it calls for. The one place this is decided.
pub fn classify(e: &RequestError, delivered: i64) -> Failure {
    match e {
        RequestError::RetryAfter(s) => Failure::Retry {
            after: s.duration().max(Duration::from_secs(1)),
            pause: true,
        },
        RequestError::MigrateToChatId(id) => Failure::Migrated(*id),
        RequestError::Network(_) | RequestError::Io(_) | RequestError::InvalidJson { .. } => {
            Failure::Retry {
                after: retry_delay(delivered),
                pause: false,
            }
        }
        RequestError::Api(api) => match api {
            ApiError::BotBlocked
            | ApiError::UserDeactivated
            | ApiError::CantInitiateConversation
            | ApiError::ChatNotFound
            | ApiError::UserNotFound => Failure::ChatClosed,
            // Telegram's own failures ("Internal Server Error", "Bad Gateway", ...) come
            // back as unrecognised descriptions; only they are worth retrying.
            ApiError::Unknown(text) if is_server_side(text) => Failure::Retry {
                after: retry_delay(delivered),
                pause: false,
            },
            other => Failure::Permanent(other.to_string()),
        },
    }
}

fn is_server_side(description: &str) -> bool {
    let d = description.to_ascii_lowercase();
    [
        "internal server error",
        "bad gateway",
        "gateway timeout",
        "service unavailable",
        "too many requests",
    ]
    .iter()
    .any(|s| d.contains(s))
}

/// Announces rank-ups.
pub struct Announcer {
    pub bot: Bot,
    pub started: StartedUsers,
    pub rules: Rules,
    /// The configured group, replaced in memory when Telegram says it migrated.
    pub group: Arc<AtomicI64>,
    pub has_group: bool,
    pub metrics: BotMetrics,
    /// `telegram.announce`: where to, and the private and group texts.
    pub to: TelegramAnnounceTo,
    pub texts: Arc<(Templates, Templates)>,
}

impl NoticeHandler for Announcer {
    type Notice = RankNotice;

    async fn handle(&self, notice: RankNotice, attempt: u32) -> Outcome {
        self.deliver(&notice, i64::from(attempt)).await
    }

    fn count(&self, outcome: &'static str) {
        self.metrics.notice(outcome);
    }
}

impl Announcer {
    fn group(&self) -> Option<ChatId> {
        self.has_group
            .then(|| ChatId(self.group.load(Ordering::Relaxed)))
    }

    #[instrument(skip_all, fields(notice = notice.id.as_str()))]
    async fn deliver(&self, notice: &RankNotice, delivered: i64) -> Outcome {
        let user = match announced_user(notice) {
            Ok(user) => user,
            Err(why) => {
                debug!(why, "not announced");
                return Outcome::Done;
            }
        };
        let started = match self.started.contains(user).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot read who started the bot; retrying");
                return Outcome::Retry {
                    after: retry_delay(delivered),
                    pause: false,
                };
            }
        };
        let mut route = route(self.to, started, self.group(), notice.hidden);
        if route == Route::Private {
            let text = self
                .texts
                .0
                .render(notice, &self.rules, "you".into(), str::to_owned);
            let Err(e) = self.bot.send_message(ChatId::from(user), text).await else {
                return Outcome::Done;
            };
            match classify(&e, delivered) {
                Failure::Retry { after, pause } => return Outcome::Retry { after, pause },
                Failure::ChatClosed => {
                    // Blocked or gone: stop trying privately.
                    info!(user = user.0, error = %e, "private chat closed; forgetting the user");
                    if let Err(e) = self.started.forget(user).await {
                        warn!(error = %e, "cannot forget a user who blocked the bot");
                    }
                }
                Failure::Migrated(_) | Failure::Permanent(_) => {
                    warn!(user = user.0, error = %e, "cannot write privately");
                }
            }
            // Tell the group instead.
            route = self::route(self.to, false, self.group(), notice.hidden);
        }
        match route {
            Route::Group(group) => self.announce_in_group(notice, group, user, delivered).await,
            Route::Nowhere => {
                debug!("not started and no telegram.group_chat_id: not announced");
                Outcome::Done
            }
            Route::Private => Outcome::Done,
        }
    }

    async fn announce_in_group(
        &self,
        notice: &RankNotice,
        group: ChatId,
        user: UserId,
        delivered: i64,
    ) -> Outcome {
        let member = match self.bot.get_chat_member(group, user).await {
            Ok(m) => m,
            Err(e) => {
                return match self.failed_in_group(&e, delivered) {
                    Some(outcome) => outcome,
                    None => {
                        debug!(user = user.0, error = %e, "not a group member; not announced");
                        Outcome::Done
                    }
                };
            }
        };
        if !member.is_present() {
            debug!(user = user.0, "not in the group; not announced");
            return Outcome::Done;
        }
        let name = display_name(&member.user).unwrap_or_else(|| "A member".into());
        let mention = texts::group_mention(user.0, &name);
        let text = self
            .texts
            .1
            .render(notice, &self.rules, mention, texts::escape_html);
        match self
            .bot
            .send_message(group, text)
            .parse_mode(ParseMode::Html)
            .await
        {
            Ok(_) => Outcome::Done,
            Err(e) => self.failed_in_group(&e, delivered).unwrap_or_else(|| {
                error!(group = group.0, error = %e, "cannot announce in the group; check telegram.group_chat_id and the bot's rights");
                Outcome::Done
            }),
        }
    }

    /// `None` when retrying cannot help.
    fn failed_in_group(&self, e: &RequestError, delivered: i64) -> Option<Outcome> {
        match classify(e, delivered) {
            Failure::Retry { after, pause } => Some(Outcome::Retry { after, pause }),
            Failure::Migrated(new) => {
                warn!(
                    new_id = new.0,
                    "the group became a supergroup: set telegram.group_chat_id = {}", new.0
                );
                self.group.store(new.0, Ordering::Relaxed);
                Some(Outcome::Retry {
                    after: Duration::from_secs(1),
                    pause: false,
                })
            }
            Failure::ChatClosed | Failure::Permanent(_) => None,
        }
    }
}

/// Closed seasons (docs/seasons.md): announced in the group, one at a time; new
/// notices only on a first start, as for rank notices.
pub const SEASON_POLICY: NoticePolicy = NoticePolicy {
    topic: "season",
    durable: "telegram-seasons",
    description: "Telegram season announcements (ttfd telegram)",
    deliver: DeliverPolicy::New,
    ack_wait: Duration::from_secs(60),
    concurrency: 1,
};

/// Announces closed seasons in the group (`telegram.group_chat_id`); without a group,
/// nowhere.
pub struct SeasonAnnouncer {
    pub bot: Bot,
    /// The group, shared with the rank [`Announcer`] (a migration moves both).
    pub group: Arc<AtomicI64>,
    pub has_group: bool,
    pub metrics: BotMetrics,
}

impl NoticeHandler for SeasonAnnouncer {
    type Notice = SeasonNotice;

    async fn handle(&self, notice: SeasonNotice, attempt: u32) -> Outcome {
        if !self.has_group {
            debug!(season = %notice.season, "no telegram.group_chat_id: season not announced");
            return Outcome::Done;
        }
        let group = ChatId(self.group.load(Ordering::Relaxed));
        let text = ttfd_shared::view::text::season_closed(&notice, Markup::Plain);
        let Err(e) = self.bot.send_message(group, text).await else {
            return Outcome::Done;
        };
        match classify(&e, i64::from(attempt)) {
            Failure::Retry { after, pause } => Outcome::Retry { after, pause },
            Failure::Migrated(new) => {
                self.group.store(new.0, Ordering::Relaxed);
                Outcome::Retry {
                    after: Duration::from_secs(1),
                    pause: false,
                }
            }
            Failure::ChatClosed | Failure::Permanent(_) => {
                error!(group = group.0, error = %e, "cannot announce the season in the group");
                Outcome::Done
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics.notice(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_who_said_notify_false_is_not_announced() {
        let mut quiet = notice(1, 2, &[("telegram", "5")]);
        assert_eq!(announced_user(&quiet), Ok(UserId(5)));
        quiet.notify = false;
        assert!(announced_user(&quiet).is_err());
    }
    use ttfd_shared::wire::WireIdentity;

    fn notice(old: u8, new: u8, identities: &[(&str, &str)]) -> RankNotice {
        RankNotice {
            v: 1,
            id: "rank:9".into(),
            ts: 0,
            uid: 1,
            old_rank: old,
            new_rank: new,
            xp: 600,
            identities: identities
                .iter()
                .map(|(p, u)| WireIdentity {
                    platform: (*p).into(),
                    user: (*u).into(),
                })
                .collect(),
            notify: true,
            hidden: false,
        }
    }

    const GROUP: ChatId = ChatId(-100_123);

    #[test]
    fn a_started_user_hears_privately_others_in_the_group() {
        use TelegramAnnounceTo::*;
        assert_eq!(route(Auto, true, Some(GROUP), false), Route::Private);
        assert_eq!(route(Auto, true, None, false), Route::Private);
        assert_eq!(route(Auto, false, Some(GROUP), false), Route::Group(GROUP));
        assert_eq!(route(Auto, false, None, false), Route::Nowhere);
        assert_eq!(route(Private, false, Some(GROUP), false), Route::Nowhere);
        assert_eq!(route(Private, true, Some(GROUP), false), Route::Private);
        assert_eq!(route(Group, true, Some(GROUP), false), Route::Group(GROUP));
        // A hidden member: privately, or not at all.
        assert_eq!(route(Auto, true, Some(GROUP), true), Route::Private);
        assert_eq!(route(Auto, false, Some(GROUP), true), Route::Nowhere);
        assert_eq!(route(Group, true, Some(GROUP), true), Route::Nowhere);
        assert_eq!(route(Group, true, None, false), Route::Nowhere);
        assert_eq!(route(Off, true, Some(GROUP), false), Route::Nowhere);
    }

    #[test]
    fn rank_ups_of_telegram_users_are_announced() {
        let n = notice(1, 2, &[("discord", "5"), ("telegram", "42")]);
        assert_eq!(announced_user(&n), Ok(UserId(42)));
    }

    #[test]
    fn rank_downs_and_users_without_telegram_are_not_announced() {
        assert_eq!(
            announced_user(&notice(3, 2, &[("telegram", "42")])),
            Err("not a rank-up")
        );
        assert_eq!(
            announced_user(&notice(1, 2, &[("discord", "5")])),
            Err("no Telegram identity")
        );
    }

    fn api(json: &str) -> RequestError {
        #[derive(serde::Deserialize)]
        struct Response {
            description: ApiError,
        }
        let r: Response = serde_json::from_str(json).expect("an error response");
        RequestError::Api(r.description)
    }

    #[test]
    fn flood_control_pauses_for_what_telegram_asks() {
        let e = RequestError::RetryAfter(teloxide::types::Seconds::from_seconds(7));
        assert_eq!(
            classify(&e, 1),
            Failure::Retry {
                after: Duration::from_secs(7),
                pause: true
            }
        );
    }

    #[test]
    fn telegram_server_errors_are_retried_with_growing_delays() {
        let e = api(r#"{"ok":false,"error_code":502,"description":"Bad Gateway"}"#);
        assert_eq!(
            classify(&e, 1),
            Failure::Retry {
                after: Duration::from_secs(1),
                pause: false
            }
        );
        assert_eq!(
            classify(&e, 4),
            Failure::Retry {
                after: Duration::from_secs(8),
                pause: false
            }
        );
        assert_eq!(retry_delay(100), MAX_RETRY_DELAY);
    }

    #[test]
    fn a_blocked_bot_closes_the_private_chat() {
        let e = api(
            r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
        );
        assert_eq!(classify(&e, 1), Failure::ChatClosed);
    }

    #[test]
    fn missing_rights_are_permanent() {
        let e = api(
            r#"{"ok":false,"error_code":400,"description":"Bad Request: not enough rights to send text messages to the chat"}"#,
        );
        assert!(matches!(classify(&e, 1), Failure::Permanent(_)));
    }

    #[test]
    fn a_migrated_group_names_its_new_id() {
        let e = RequestError::MigrateToChatId(ChatId(-100_999));
        assert_eq!(classify(&e, 1), Failure::Migrated(ChatId(-100_999)));
    }
}
