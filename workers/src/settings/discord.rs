//! `[discord]`: everything `ttfd discord` reads.
//!
//! Keys: `discord.token` (secret), `discord.guild_id`, `discord.ignored_channels`,
//! `discord.message_content`, `discord.rank_roles`, `discord.announce_channel`,
//! `discord.voice.*`, `discord.shards.*`, `discord.api_url`, `discord.query_timeout_ms`.
//! See `config/ttfd.example.toml` and `docs/discord.md`.

use secrecy::SecretString;
use serde::Deserialize;
use serenity::model::id::{ChannelId, GuildId, RoleId};
use ttfd_shared::Rules;
use ttfd_shared::voice::VoiceRules;

use super::{SettingsError, invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordSettings {
    /// The bot token from the Discord developer portal; `ttfd discord` needs it.
    pub token: Option<SecretString>,
    /// The community's guild (server): its messages, voice and members count; slash
    /// commands are registered there.
    pub guild_id: Option<GuildId>,
    /// Messages in these channels are not counted.
    pub ignored_channels: Vec<ChannelId>,
    /// Ask for the privileged MESSAGE_CONTENT intent and send each message's length
    /// (`len`), so that very short messages earn no XP. Without it `len` is left out.
    pub message_content: bool,
    /// Which role each rank gives, by rank name (`"C II"`) or by tier (`"C"`); a rank
    /// name wins over its tier.
    pub rank_roles: Vec<RankRole>,
    /// `replace`: a member holds the role of their current rank only; `stack`: the
    /// roles of every rank they reached (up to their peak rank).
    pub rank_role_mode: RankRoleMode,
    /// Rank-ups are announced here when set (`announce.to = "channel"`).
    pub announce_channel: Option<ChannelId>,
    /// Where and how rank-ups are announced (`crate::announce`).
    pub announce: DiscordAnnounce,
    /// Members with one of these roles are moderators (`/xp`, `/audit`), as are members
    /// with the Manage Server permission (docs/moderation.md).
    pub moderator_roles: Vec<RoleId>,
    /// XP rates by channel, category and role (`settings::rates`).
    pub xp_rates: super::rates::DiscordRates,
    pub voice: VoiceSettings,
    pub shards: ShardSettings,
    /// Send Discord HTTP API calls to this base URL instead of `https://discord.com`
    /// (an HTTP API proxy such as twilight-http-proxy, or a fake in tests). Serenity's
    /// own rate limiter is then off: the proxy limits, and 429 answers are retried here.
    pub api_url: Option<String>,
    /// How long a slash command waits for the query service (Discord wants an answer
    /// within 3 s).
    pub query_timeout_ms: u64,
}

/// `discord.announce`: `to` = `channel` (`discord.announce_channel`), `dm` (a direct
/// message to the member) or `off`; `template` and per-rank `ranks` (`crate::announce`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordAnnounce {
    pub to: DiscordAnnounceTo,
    pub template: String,
    pub ranks: std::collections::BTreeMap<String, String>,
}

impl Default for DiscordAnnounce {
    fn default() -> Self {
        Self {
            to: DiscordAnnounceTo::Channel,
            template: "🎉 {member} reached **{rank}**!".into(),
            ranks: std::collections::BTreeMap::new(),
        }
    }
}

impl DiscordAnnounce {
    /// The templates, checked against `rules`.
    pub fn templates(&self, rules: &Rules) -> Result<crate::announce::Templates, SettingsError> {
        Ok(crate::announce::Templates::new(
            ("discord.announce.template", &self.template),
            ("discord.announce.ranks", &self.ranks),
            rules,
        )?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscordAnnounceTo {
    Channel,
    Dm,
    Off,
}

/// `discord.rank_role_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RankRoleMode {
    #[default]
    Replace,
    Stack,
}

/// One entry of `discord.rank_roles`: `{ rank = "C", role = "1234..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankRole {
    /// A tier (`"F"` .. `"S"`) or a rank name (`"C II"`) of `rules.ranks`.
    pub rank: String,
    pub role: RoleId,
}

/// `discord.voice`: which rules make voice time count (all on by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VoiceSettings {
    pub require_unmuted: bool,
    pub require_undeafened: bool,
    pub exclude_afk: bool,
    /// At least one other human who is not deafened must be in the channel.
    pub require_company: bool,
    /// Time in voice that the rules above pay nothing for is published too, as
    /// `voice_unpaid` with its reason, so the XP statement can say why (on by default).
    pub report_unpaid: bool,
    /// Eligible voice time is published once this much is open, in seconds, cut in
    /// whole XP quanta (15 s at 4 XP per minute); a crash loses less than this (or the
    /// quantum, if longer) plus a second.
    pub segment_secs: u32,
}

/// `discord.shards`: which gateway shards this process runs. One process runs every
/// shard by default; to split a large guild set, run one process per range.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardSettings {
    /// Shards in the whole bot.
    pub total: u32,
    /// First and last shard (inclusive) run by this process; `last` defaults to
    /// `total - 1`.
    pub first: u32,
    pub last: Option<u32>,
}

impl Default for DiscordSettings {
    fn default() -> Self {
        Self {
            token: None,
            guild_id: None,
            ignored_channels: Vec::new(),
            message_content: true,
            rank_roles: Vec::new(),
            rank_role_mode: RankRoleMode::Replace,
            announce_channel: None,
            announce: DiscordAnnounce::default(),
            moderator_roles: Vec::new(),
            xp_rates: super::rates::DiscordRates::default(),
            voice: VoiceSettings::default(),
            shards: ShardSettings::default(),
            api_url: None,
            query_timeout_ms: 2000,
        }
    }
}

impl Default for VoiceSettings {
    fn default() -> Self {
        let r = VoiceRules::default();
        Self {
            require_unmuted: r.require_unmuted,
            require_undeafened: r.require_undeafened,
            exclude_afk: r.exclude_afk,
            require_company: r.require_company,
            report_unpaid: r.report_unpaid,
            segment_secs: u32::try_from(r.segment_ms / 1000).unwrap_or(45),
        }
    }
}

impl Default for ShardSettings {
    fn default() -> Self {
        Self {
            total: 1,
            first: 0,
            last: None,
        }
    }
}

impl VoiceSettings {
    /// The state machine's rules; segments are cut in whole XP quanta of
    /// `voice_xp_per_minute` (`rules.voice_xp_per_minute`), so cutting loses no XP.
    pub fn rules(&self, voice_xp_per_minute: i64) -> VoiceRules {
        VoiceRules {
            quantum_ms: ttfd_shared::voice::xp_quantum_ms(voice_xp_per_minute),
            require_unmuted: self.require_unmuted,
            require_undeafened: self.require_undeafened,
            exclude_afk: self.exclude_afk,
            require_company: self.require_company,
            report_unpaid: self.report_unpaid,
            segment_ms: i64::from(self.segment_secs) * 1000,
        }
    }
}

impl ShardSettings {
    /// The inclusive range of shards this process runs.
    pub fn range(&self) -> std::ops::RangeInclusive<u32> {
        self.first..=self.last.unwrap_or(self.total.saturating_sub(1))
    }
}

fn bad(key: impl AsRef<str>, message: impl Into<String>) -> SettingsError {
    invalid(key.as_ref(), message)
}

impl DiscordSettings {
    /// The checks serde cannot express. A missing token is not an error here (only
    /// `ttfd discord` needs one, see [`DiscordSettings::require`]).
    pub fn validate(&self, rules: &Rules) -> Result<(), SettingsError> {
        use secrecy::ExposeSecret;
        if let Some(token) = &self.token
            && token.expose_secret().trim().is_empty()
        {
            return Err(bad("discord.token", "must not be empty"));
        }
        for (i, r) in self.rank_roles.iter().enumerate() {
            let known = rules
                .ranks
                .iter()
                .any(|d| d.name == r.rank || d.tier() == r.rank);
            if !known {
                return Err(bad(
                    format!("discord.rank_roles[{i}].rank"),
                    format!(
                        "{:?} is neither a rank name nor a tier of rules.ranks",
                        r.rank
                    ),
                ));
            }
            if self.rank_roles[..i].iter().any(|o| o.rank == r.rank) {
                return Err(bad(
                    format!("discord.rank_roles[{i}].rank"),
                    format!("{:?} is given twice", r.rank),
                ));
            }
        }
        self.announce.templates(rules)?;
        if !(5..=3600).contains(&self.voice.segment_secs) {
            return Err(bad("discord.voice.segment_secs", "must be 5..=3600"));
        }
        let range = self.shards.range();
        if self.shards.total == 0 || range.is_empty() || *range.end() >= self.shards.total {
            return Err(bad(
                "discord.shards",
                "need total >= 1 and first <= last < total",
            ));
        }
        if let Some(url) = &self.api_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(bad("discord.api_url", "must be an http:// or https:// URL"));
        }
        if !(100..=2800).contains(&self.query_timeout_ms) {
            return Err(bad(
                "discord.query_timeout_ms",
                "must be 100..=2800 (Discord wants an answer within 3 s)",
            ));
        }
        Ok(())
    }

    /// What `ttfd discord` cannot run without: the token and the guild.
    pub fn require(&self) -> Result<(&SecretString, GuildId), SettingsError> {
        let token = self.token.as_ref().ok_or_else(|| {
            bad(
                "discord.token",
                "ttfd discord needs the bot token: set [discord] token in the config file \
                 or TTFD__DISCORD__TOKEN (see docs/discord.md)",
            )
        })?;
        let guild = self.guild_id.ok_or_else(|| {
            bad(
                "discord.guild_id",
                "ttfd discord needs the community's guild id: set [discord] guild_id or \
                 TTFD__DISCORD__GUILD_ID",
            )
        })?;
        Ok((token, guild))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use crate::settings::Settings;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, String> {
        // A file per call: the tests run in parallel.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ttfd-discord-cfg-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("ttfd.toml");
        std::fs::write(&path, toml).map_err(|e| e.to_string())?;
        let env = env.iter().map(|(k, v)| ((*k).into(), (*v).into()));
        Settings::load_from(Some(&path), env).map_err(|e| e.to_string())
    }

    #[test]
    fn the_discord_section_reads_from_a_file_and_the_environment() {
        let s = load(
            r#"
            [discord]
            guild_id = "1000000000000000001"
            ignored_channels = ["1100000000000000001", 1100000000000000002]
            announce_channel = "1500"
            rank_roles = [
              { rank = "F", role = "1001" },
              { rank = "C II", role = 1003 },
            ]
            [discord.voice]
            require_company = false
            segment_secs = 30
            [discord.shards]
            total = 4
            first = 2
            "#,
            &[
                ("TTFD__DISCORD__TOKEN", "from-env"),
                ("TTFD__DISCORD__GUILD_ID", "1000000000000000009"),
            ],
        )
        .expect("loads");
        let d = &s.discord;
        assert_eq!(
            d.token.as_ref().map(|t| t.expose_secret()),
            Some("from-env")
        );
        assert_eq!(d.guild_id.map(|g| g.get()), Some(1_000_000_000_000_000_009));
        assert_eq!(d.ignored_channels.len(), 2);
        assert_eq!(d.rank_roles[1].rank, "C II");
        assert_eq!(d.rank_roles[1].role.get(), 1003);
        let rules = d.voice.rules(4);
        assert!(!rules.require_company && rules.require_unmuted);
        assert_eq!((rules.segment_ms, rules.quantum_ms), (30_000, 15_000));
        assert_eq!(d.shards.range(), 2..=3);
        assert!(
            !format!("{d:?}").contains("from-env"),
            "the token never reaches Debug"
        );
    }

    #[test]
    fn bad_discord_keys_are_named() {
        let cases = [
            (
                "[discord]\nrank_roles = [{ rank = \"Z\", role = \"1\" }]",
                "discord.rank_roles[0].rank",
            ),
            (
                "[discord]\nrank_roles = [{ rank = \"F\", role = \"1\" }, { rank = \"F\", role = \"2\" }]",
                "discord.rank_roles[1].rank",
            ),
            (
                "[discord.voice]\nsegment_secs = 1",
                "discord.voice.segment_secs",
            ),
            ("[discord.shards]\ntotal = 2\nfirst = 2", "discord.shards"),
            ("[discord]\napi_url = \"localhost:1\"", "discord.api_url"),
            (
                "[discord]\nquery_timeout_ms = 5000",
                "discord.query_timeout_ms",
            ),
            ("[discord]\ntoken = \" \"", "discord.token"),
            ("[discord]\nguild = 1", "guild"),
        ];
        for (toml, key) in cases {
            let err = load(toml, &[]).expect_err(toml);
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn running_the_bot_needs_a_token_and_a_guild() {
        let s = load("", &[]).expect("defaults load without a token");
        let err = s.discord.require().expect_err("no token").to_string();
        assert!(err.contains("key discord.token:"), "{err}");
        assert!(err.contains("TTFD__DISCORD__TOKEN"), "{err}");
        let s = load("[discord]\ntoken = \"x\"", &[]).expect("loads");
        let err = s.discord.require().expect_err("no guild").to_string();
        assert!(err.contains("key discord.guild_id:"), "{err}");
    }
}
