//! Closed seasons on Discord (docs/seasons.md): each `<prefix>.notify.season` is
//! announced in `discord.announce_channel`, and the winner role `champions.discord_role`
//! moves from the champions of the season before to the new ones. Repeating a notice
//! (a redelivery after a crash) changes nothing: roles are set, not toggled, and the
//! post carries a nonce derived from the season.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use serenity::all::{ChannelId, GuildId, RoleId, UserId};
use tracing::{error, info, warn};
use ttfd_shared::view::Period;
use ttfd_shared::view::text::{self, Markup};
use ttfd_shared::wire::{SeasonChampion, SeasonNotice};

use super::api::{ApiError, DiscordApi};
use super::roles::backoff;
use crate::broker::notices::{NoticeHandler, NoticePolicy, Outcome};

/// One notice at a time (a few a year); new notices only on a first start, as for rank
/// notices; two minutes each, as rate limits may hold it.
pub const POLICY: NoticePolicy = NoticePolicy {
    topic: "season",
    durable: "discord-seasons",
    description: "ttfd discord: season champions and the winner role",
    deliver: DeliverPolicy::New,
    ack_wait: Duration::from_secs(120),
    concurrency: 1,
};

/// How long a refused call (missing rights) waits before it is tried again.
const REFUSED_RETRY: Duration = Duration::from_secs(300);

/// Announces closed seasons and moves the winner role.
#[derive(Clone)]
pub struct SeasonSync {
    pub api: DiscordApi,
    pub guild: GuildId,
    /// `discord.announce_channel`: where seasons are announced; none: not announced.
    pub channel: Option<ChannelId>,
    /// The winner role of each kind of closing that has one: `champions.discord_role`
    /// for seasons, `champions.week.discord_role`, `champions.month.discord_role`.
    pub roles: Vec<(Period, RoleId)>,
}

impl NoticeHandler for SeasonSync {
    type Notice = SeasonNotice;

    async fn handle(&self, notice: SeasonNotice, attempt: u32) -> Outcome {
        match self.apply(&notice).await {
            Ok(()) => Outcome::Done,
            Err(ApiError::RateLimited(after)) => Outcome::Retry {
                after,
                pause: false,
            },
            Err(e @ ApiError::Unavailable(_)) => {
                warn!(season = %notice.season, error = %e, "season: Discord unavailable; retrying");
                Outcome::Retry {
                    after: backoff(attempt),
                    pause: false,
                }
            }
            Err(e @ ApiError::Refused { .. }) => {
                error!(
                    season = %notice.season,
                    error = %e,
                    "season refused: the bot needs Manage Roles above the winner role and may \
                     post in the announcement channel (docs/discord.md); retrying in 5 minutes"
                );
                Outcome::Retry {
                    after: REFUSED_RETRY,
                    pause: false,
                }
            }
        }
    }
}

impl SeasonSync {
    async fn apply(&self, notice: &SeasonNotice) -> Result<(), ApiError> {
        let role = self
            .roles
            .iter()
            .find(|(period, _)| *period == notice.period)
            .map(|(_, role)| *role);
        if let Some(role) = role {
            let winners = discord_users(&notice.champions);
            let reason = format!(
                "TTFD {}",
                text::closing_words(notice.period, &notice.season)
            );
            for user in discord_users(&notice.previous).difference(&winners) {
                if let Some(roles) = self.api.member_roles(self.guild, *user).await?
                    && roles.contains(&role)
                {
                    self.api
                        .remove_role(self.guild, *user, role, &reason)
                        .await?;
                }
            }
            for user in &winners {
                match self.api.member_roles(self.guild, *user).await? {
                    Some(roles) if !roles.contains(&role) => {
                        self.api.add_role(self.guild, *user, role, &reason).await?;
                    }
                    Some(_) => {}
                    None => info!(user = user.get(), "season champion not in the guild"),
                }
            }
        }
        if let Some(channel) = self.channel {
            let text = text::season_closed(notice, Markup::Markdown);
            self.api
                .post_message(channel, &text, &nonce(&notice.id))
                .await?;
        }
        Ok(())
    }
}

/// The Discord accounts of `champions`.
fn discord_users(champions: &[SeasonChampion]) -> BTreeSet<UserId> {
    champions
        .iter()
        .flat_map(|c| &c.identities)
        .filter(|i| i.platform == "discord")
        .filter_map(|i| i.user.parse::<u64>().ok())
        .filter(|id| *id != 0)
        .map(UserId::new)
        .collect()
}

/// A Discord nonce (at most 25 characters) for a notice id: its FNV-1a hash.
fn nonce(id: &str) -> String {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("s{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttfd_shared::wire::WireIdentity;

    #[test]
    fn champions_discord_accounts_and_a_stable_short_nonce() {
        let champion = |ids: &[(&str, &str)]| SeasonChampion {
            position: 1,
            uid: 1,
            xp: 1,
            display_name: None,
            identities: ids
                .iter()
                .map(|(p, u)| WireIdentity {
                    platform: (*p).into(),
                    user: (*u).into(),
                })
                .collect(),
        };
        let users = discord_users(&[
            champion(&[("discord", "42"), ("telegram", "7")]),
            champion(&[("website", "a@b.c")]),
            champion(&[("discord", "not-a-number")]),
        ]);
        assert_eq!(users, BTreeSet::from([UserId::new(42)]));
        let n = nonce("season:a-very-long-season-name-indeed");
        assert!(n.len() <= 25, "{n}");
        assert_eq!(n, nonce("season:a-very-long-season-name-indeed"));
        assert_ne!(n, nonce("season:another"));
    }
}
