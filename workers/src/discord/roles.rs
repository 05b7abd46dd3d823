//! Rank roles. In `replace` mode (`discord.rank_role_mode`) every member holds the role
//! of their current rank and no other rank role; in `stack` mode the roles of every
//! rank they reached (1 to their peak rank), and no rank role above.
//!
//! The shared rank notice consumer ([`crate::broker::notices`], `<prefix>-discord-roles`
//! with [`POLICY`]) takes each rank change as a trigger: it asks the query service for the member's
//! *current* rank (so notices handled out of order, or retried, still end at the right
//! role), reads the member's roles, and adds and removes only what differs. A rate limit
//! or an outage is never a reason to drop a notice: it is nak'ed with the delay Discord
//! asked for (or a backoff) and comes back. A member who rejoins gets their role again
//! (`GuildMemberAdd` → [`RoleSync::sync_member`]). Rank-ups can be announced in a
//! channel.
//!
//! Reads `discord.rank_roles`, `discord.announce_channel`, `discord.guild_id` and
//! `rules.ranks`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use serenity::model::id::{ChannelId, GuildId, RoleId, UserId};
use tracing::{debug, error, info, warn};
use ttfd_shared::Rules;
use ttfd_shared::wire::RankNotice;

use super::api::{ApiError, DiscordApi};
use super::mapping::{PLATFORM, identity};
use crate::announce::Templates;
use crate::broker::notices::{self, NoticeHandler, NoticePolicy};
use crate::observe::discord::DiscordMetrics;
use crate::query::{QueryClient, QueryError};
use crate::settings::discord::{DiscordAnnounceTo, RankRole, RankRoleMode};

/// Which role each rank gives, and whether members keep the roles of lower ranks.
#[derive(Debug, Clone, Default)]
pub struct RankRoles {
    by_rank: HashMap<String, RoleId>,
    by_tier: HashMap<String, RoleId>,
    all: BTreeSet<RoleId>,
    mode: RankRoleMode,
}

/// What to change on a member so that they hold exactly their rank roles.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleChanges {
    pub add: Vec<RoleId>,
    pub remove: Vec<RoleId>,
}

impl RoleChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

impl RankRoles {
    /// `entries` name ranks (`"C II"`) or tiers (`"C"`); validated by the settings.
    pub fn new(entries: &[RankRole], rules: &Rules) -> Self {
        Self::with_mode(entries, rules, RankRoleMode::Replace)
    }

    pub fn with_mode(entries: &[RankRole], rules: &Rules, mode: RankRoleMode) -> Self {
        let mut r = Self {
            mode,
            ..Self::default()
        };
        for e in entries {
            if rules.ranks.iter().any(|d| d.name == e.rank) {
                r.by_rank.insert(e.rank.clone(), e.role);
            } else {
                r.by_tier.insert(e.rank.clone(), e.role);
            }
            r.all.insert(e.role);
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The role of a rank: its own entry, else its tier's, else none.
    pub fn role_for(&self, rank_name: &str, tier: &str) -> Option<RoleId> {
        self.by_rank
            .get(rank_name)
            .or_else(|| self.by_tier.get(tier))
            .copied()
    }

    /// The rank roles a member with `rank` and `peak` (rank indexes) holds: the current
    /// rank's (`replace`), or every rank's from 1 to the peak (`stack`).
    pub fn targets(&self, rules: &Rules, rank: u8, peak: u8) -> BTreeSet<RoleId> {
        let of = |index: u8| {
            let r = rules.rank(index);
            self.role_for(&r.name, &r.tier)
        };
        match self.mode {
            RankRoleMode::Replace => of(rank).into_iter().collect(),
            RankRoleMode::Stack => (1..=peak.max(rank)).filter_map(of).collect(),
        }
    }

    /// From the member's current roles to `targets` and no other rank role. Roles that
    /// are not rank roles are never touched.
    pub fn changes(&self, current: &[RoleId], targets: &BTreeSet<RoleId>) -> RoleChanges {
        let add = targets
            .iter()
            .filter(|t| !current.contains(t))
            .copied()
            .collect();
        let mut remove: Vec<RoleId> = current
            .iter()
            .filter(|r| self.all.contains(r) && !targets.contains(r))
            .copied()
            .collect();
        remove.sort();
        remove.dedup();
        RoleChanges { add, remove }
    }
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Try again after this long (rate limit, outage, a refusal an operator must fix).
    RetryAfter(Duration),
}

/// A refusal (missing permission, role above the bot's) needs an operator: retried
/// this often meanwhile, never dropped.
const REFUSED_RETRY: Duration = Duration::from_secs(300);

/// Backoff for outages, by delivery attempt: 1 s, 2 s, 4 s, ... up to a minute.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Brings members' rank roles in line with their profiles.
#[derive(Clone)]
pub struct RoleSync {
    pub api: DiscordApi,
    pub profiles: Profiles,
    pub guild: GuildId,
    pub roles: Arc<RankRoles>,
    /// Where rank-ups are announced (`discord.announce.to`, `discord.announce_channel`)
    /// and with which texts.
    pub announce_to: DiscordAnnounceTo,
    pub announce_channel: Option<ChannelId>,
    pub templates: Arc<Templates>,
    pub rules: Arc<Rules>,
    pub metrics: DiscordMetrics,
}

impl RoleSync {
    /// Gives `user` the role of their current rank (rank 1 when they have no profile
    /// yet) and takes the other rank roles away; `announce` posts `announce.1` under the
    /// nonce `announce.0` in the announcement channel, after the roles are right.
    pub async fn sync_member(
        &self,
        user: UserId,
        announce: Option<(&str, String)>,
        attempt: u32,
    ) -> Outcome {
        match self.try_sync_member(user, announce).await {
            Ok(()) => Outcome::Done,
            Err(Failure::Query(e @ QueryError::Bad(_))) => {
                // A request we cannot make or a reply we cannot read: a bug, not
                // something time fixes.
                error!(user = user.get(), error = %e, "rank role: query refused; skipped");
                Outcome::Done
            }
            Err(Failure::Query(e)) => {
                warn!(user = user.get(), error = %e, "rank role: query service unavailable; retrying");
                Outcome::RetryAfter(backoff(attempt))
            }
            Err(Failure::Store(e)) => {
                warn!(user = user.get(), error = %e, "rank role: database unavailable; retrying");
                Outcome::RetryAfter(backoff(attempt))
            }
            Err(Failure::Api(ApiError::RateLimited(d))) => {
                debug!(user = user.get(), delay = ?d, "rank role: rate limited; retrying");
                Outcome::RetryAfter(d)
            }
            Err(Failure::Api(e @ ApiError::Unavailable(_))) => {
                warn!(user = user.get(), error = %e, "rank role: Discord unavailable; retrying");
                Outcome::RetryAfter(backoff(attempt))
            }
            Err(Failure::Api(e @ ApiError::Refused { .. })) => {
                error!(
                    user = user.get(),
                    error = %e,
                    "rank role refused: the bot needs Manage Roles and its role above every \
                     rank role (docs/discord.md); retrying in 5 minutes"
                );
                Outcome::RetryAfter(REFUSED_RETRY)
            }
        }
    }

    async fn try_sync_member(
        &self,
        user: UserId,
        announce: Option<(&str, String)>,
    ) -> Result<(), Failure> {
        if !self.roles.is_empty() {
            let Some(current) = self.api.member_roles(self.guild, user).await? else {
                debug!(user = user.get(), "rank role: not a member of the guild");
                return Ok(());
            };
            self.reconcile(user, &current).await?;
        }
        if let Some((nonce, text)) = announce {
            let channel = match self.announce_to {
                DiscordAnnounceTo::Channel => self.announce_channel,
                DiscordAnnounceTo::Dm => Some(self.api.dm_channel(user).await?),
                DiscordAnnounceTo::Off => None,
            };
            if let Some(channel) = channel {
                self.api.post_message(channel, &text, nonce).await?;
            }
        }
        Ok(())
    }

    /// Gives `user`, who holds `current`, the rank roles of their profile (rank 1 when
    /// they have none) and takes the other rank roles away. Whether anything changed.
    async fn reconcile(&self, user: UserId, current: &[RoleId]) -> Result<bool, Failure> {
        let profile = self.profiles.profile(&identity(user)).await?;
        let (rank, peak) = profile
            .as_ref()
            .map_or((1, 1), |p| (p.rank.index, p.peak_rank));
        let name = self.rules.rank(rank).name;
        let changes = self
            .roles
            .changes(current, &self.roles.targets(&self.rules, rank, peak));
        let reason = format!("TTFD rank {name}");
        for role in &changes.add {
            self.api.add_role(self.guild, user, *role, &reason).await?;
            self.metrics.role_changed("added", 1);
        }
        for role in &changes.remove {
            self.api
                .remove_role(self.guild, user, *role, &reason)
                .await?;
            self.metrics.role_changed("removed", 1);
        }
        if !changes.is_empty() {
            info!(user = user.get(), rank = %name, ?changes, "rank roles updated");
        }
        Ok(!changes.is_empty())
    }

    /// Reconciles every member of the guild with their rank (after a change of
    /// `discord.rank_roles` or of the mode): pages of members by user id from `after`,
    /// each member retried after a rate limit for as long as Discord asks, outages with
    /// backoff. `progress` hears after each member; the last member done is in the
    /// summary, so an interrupted run resumes from it (`--after`).
    pub async fn sync_all(
        &self,
        after: Option<UserId>,
        stop: &tokio_util::sync::CancellationToken,
        mut progress: impl FnMut(&SyncProgress),
    ) -> Result<SyncProgress, SyncError> {
        let mut state = SyncProgress {
            last: after,
            ..SyncProgress::default()
        };
        if self.roles.is_empty() {
            return Ok(state);
        }
        loop {
            let page = self
                .patiently(stop, || {
                    self.api.list_members(self.guild, state.last, MEMBERS_PAGE)
                })
                .await?;
            let Some(end) = page.last().map(|m| m.user.id) else {
                return Ok(state);
            };
            for member in page.iter().filter(|m| !m.user.bot) {
                let changed = self
                    .patiently_reconcile(stop, member.user.id, &member.roles)
                    .await?;
                state.checked += 1;
                state.changed += u64::from(changed);
                state.last = Some(member.user.id);
                progress(&state);
            }
            state.last = Some(end);
            if page.len() < usize::from(MEMBERS_PAGE) {
                return Ok(state);
            }
        }
    }

    async fn patiently_reconcile(
        &self,
        stop: &tokio_util::sync::CancellationToken,
        user: UserId,
        current: &[RoleId],
    ) -> Result<bool, SyncError> {
        for attempt in 1.. {
            let wait = match self.reconcile(user, current).await {
                Ok(changed) => return Ok(changed),
                Err(Failure::Api(ApiError::RateLimited(d))) => d,
                Err(
                    Failure::Api(ApiError::Unavailable(e))
                    | Failure::Query(QueryError::Unavailable(e)),
                ) if attempt < SYNC_ATTEMPTS => {
                    warn!(user = user.get(), error = %e, "rank roles: retrying");
                    backoff(attempt)
                }
                Err(e) => {
                    return Err(SyncError::Failed {
                        user: Some(user),
                        reason: e.to_string(),
                    });
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return Err(SyncError::Interrupted),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        Err(SyncError::Interrupted)
    }

    async fn patiently<T, F>(
        &self,
        stop: &tokio_util::sync::CancellationToken,
        call: impl Fn() -> F,
    ) -> Result<T, SyncError>
    where
        F: std::future::Future<Output = Result<T, ApiError>>,
    {
        for attempt in 1.. {
            let wait = match call().await {
                Ok(v) => return Ok(v),
                Err(ApiError::RateLimited(d)) => d,
                Err(ApiError::Unavailable(e)) if attempt < SYNC_ATTEMPTS => {
                    warn!(error = %e, "listing members: retrying");
                    backoff(attempt)
                }
                Err(e) => {
                    return Err(SyncError::Failed {
                        user: None,
                        reason: e.to_string(),
                    });
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return Err(SyncError::Interrupted),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        Err(SyncError::Interrupted)
    }

    /// Handles one rank notice: every Discord identity of the user.
    pub async fn handle_notice(&self, notice: &RankNotice, attempt: u32) -> Outcome {
        let mut retry: Option<Duration> = None;
        for i in notice.identities.iter().filter(|i| i.platform == PLATFORM) {
            let Some(user) = i.user.parse::<u64>().ok().filter(|u| *u != 0) else {
                warn!(user = %i.user, "rank notice names a Discord user that is not a snowflake");
                continue;
            };
            let user = UserId::new(user);
            // A hidden member (SPEC 7.3) is announced privately or not at all.
            let public = self.announce_to == DiscordAnnounceTo::Channel;
            let wanted = notice.notify && !(notice.hidden && public);
            let announce = (notice.new_rank > notice.old_rank && wanted).then(|| {
                // Discord nonces are at most 25 characters.
                let nonce: String = notice.id.chars().take(25).collect();
                let text = self.templates.render(
                    notice,
                    &self.rules,
                    format!("<@{}>", user.get()),
                    ttfd_shared::view::text::escape_markdown,
                );
                (nonce, text)
            });
            let announce = announce.as_ref().map(|(n, t)| (n.as_str(), t.clone()));
            if let Outcome::RetryAfter(d) = self.sync_member(user, announce, attempt).await {
                retry = Some(retry.map_or(d, |r| r.max(d)));
            }
        }
        retry.map_or(Outcome::Done, Outcome::RetryAfter)
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Members listed per request (Discord's largest page).
const MEMBERS_PAGE: u16 = 1000;
/// Attempts at one call through an outage before the reconciliation stops.
const SYNC_ATTEMPTS: u32 = 8;

/// How far a reconciliation got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Members (not bots) checked, and those whose roles changed.
    pub checked: u64,
    pub changed: u64,
    /// The last member done: resume after it.
    pub last: Option<UserId>,
}

/// Why a reconciliation stopped before the end.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("interrupted")]
    Interrupted,
    #[error("{}: {reason} (the bot needs Manage Roles, its role above every rank role, and the Server Members intent)", user.map_or_else(|| "listing members".to_owned(), |u| format!("member {u}")))]
    Failed {
        user: Option<UserId>,
        reason: String,
    },
}

/// Where profiles come from: the query service (the bot, asking as Discord for its
/// members' own profiles: a hidden member keeps the rank roles of their rank) or the
/// database (the CLI).
#[derive(Clone)]
pub enum Profiles {
    Query(QueryClient),
    Store(crate::store::Store),
}

impl Profiles {
    async fn profile(
        &self,
        identity: &ttfd_shared::Identity,
    ) -> Result<Option<ttfd_shared::view::Profile>, Failure> {
        match self {
            Profiles::Query(q) => Ok(q.own_profile(identity).await?),
            Profiles::Store(s) => Ok(s.profile(identity).await?),
        }
    }
}

/// Sixteen notices at once per replica, since one member's retry (a rate limit, a
/// refused role) must not hold up the others; two minutes for a notice, as a rate
/// limit may hold it a while. New notices only: a first start changes no role for the
/// stream's backlog; members who join get their role, and `/ranks sync` reconciles
/// everyone after a mapping change.
pub const POLICY: NoticePolicy = NoticePolicy {
    topic: "rank",
    durable: "discord-roles",
    description: "ttfd discord: rank roles and announcements",
    deliver: DeliverPolicy::New,
    ack_wait: Duration::from_secs(120),
    concurrency: 16,
};

impl NoticeHandler for RoleSync {
    type Notice = RankNotice;

    async fn handle(&self, notice: RankNotice, attempt: u32) -> notices::Outcome {
        match self.handle_notice(&notice, attempt).await {
            Outcome::Done => notices::Outcome::Done,
            Outcome::RetryAfter(after) => notices::Outcome::Retry {
                after,
                pause: false,
            },
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics.bot.notice(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(entries: &[(&str, u64)]) -> RankRoles {
        let entries: Vec<RankRole> = entries
            .iter()
            .map(|(rank, role)| RankRole {
                rank: (*rank).into(),
                role: RoleId::new(*role),
            })
            .collect();
        RankRoles::new(&entries, &Rules::default())
    }

    #[test]
    fn a_rank_name_wins_over_its_tier() {
        let r = roles(&[("C", 30), ("C III", 33), ("S", 90)]);
        assert_eq!(r.role_for("C I", "C"), Some(RoleId::new(30)));
        assert_eq!(r.role_for("C III", "C"), Some(RoleId::new(33)));
        assert_eq!(r.role_for("S II", "S"), Some(RoleId::new(90)));
        assert_eq!(r.role_for("F I", "F"), None);
    }

    #[test]
    fn changes_add_the_rank_role_and_remove_only_other_rank_roles() {
        let r = roles(&[("C", 30), ("B", 40), ("A", 50)]);
        let other = RoleId::new(7);
        let only = |r: u64| BTreeSet::from([RoleId::new(r)]);
        let c = r.changes(&[other, RoleId::new(30), RoleId::new(50)], &only(40));
        assert_eq!(
            c,
            RoleChanges {
                add: vec![RoleId::new(40)],
                remove: vec![RoleId::new(30), RoleId::new(50)]
            }
        );
        assert!(r.changes(&[other, RoleId::new(40)], &only(40)).is_empty());
        // A rank with no role: every rank role goes, the others stay.
        assert_eq!(
            r.changes(&[other, RoleId::new(30)], &BTreeSet::new()),
            RoleChanges {
                add: vec![],
                remove: vec![RoleId::new(30)]
            }
        );
    }

    /// `stack` keeps the role of every rank reached (to the peak, after a deduction
    /// too); `replace` only the current rank's.
    #[test]
    fn stack_mode_holds_every_rank_role_up_to_the_peak() {
        let entries: Vec<RankRole> = [("F", 10), ("E", 20), ("D I", 31), ("C", 40)]
            .iter()
            .map(|(rank, role)| RankRole {
                rank: (*rank).into(),
                role: RoleId::new(*role),
            })
            .collect();
        let rules = Rules::default();
        let stack = RankRoles::with_mode(&entries, &rules, RankRoleMode::Stack);
        let ids = |s: BTreeSet<RoleId>| s.into_iter().map(RoleId::get).collect::<Vec<_>>();
        // Rank 8 (D II) now, peak 10 (C I): F, E, D I and C; D II/D III have no role.
        assert_eq!(ids(stack.targets(&rules, 8, 10)), vec![10, 20, 31, 40]);
        assert_eq!(ids(stack.targets(&rules, 1, 1)), vec![10]);
        let replace = RankRoles::with_mode(&entries, &rules, RankRoleMode::Replace);
        assert_eq!(
            ids(replace.targets(&rules, 8, 10)),
            Vec::<u64>::new(),
            "D II has none"
        );
        assert_eq!(ids(replace.targets(&rules, 10, 10)), vec![40]);
        let c = stack.changes(
            &[RoleId::new(40), RoleId::new(99)],
            &stack.targets(&rules, 5, 5),
        );
        assert_eq!(
            c,
            RoleChanges {
                add: vec![RoleId::new(10), RoleId::new(20)],
                remove: vec![RoleId::new(40)]
            }
        );
    }

    #[test]
    fn backoff_grows_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(100), Duration::from_secs(60));
    }
}
