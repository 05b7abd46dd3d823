//! Slash commands: `/rank [member]`, `/top [period]`, `/link` and `/link code:<CODE>`.
//!
//! Parsing an interaction and writing the reply are pure functions; [`answer`] asks the
//! query service (`ttfd query`) in between and sends the reply. Replies that hold or
//! consume link codes are ephemeral (only the caller sees them). No reply pings anyone.

use serenity::builder::{
    CreateAllowedMentions, CreateCommand, CreateCommandOption, CreateInteractionResponse,
    CreateInteractionResponseMessage,
};
use serenity::http::Http;
use serenity::model::application::{CommandInteraction, CommandOptionType, ResolvedValue};
use serenity::model::id::UserId;
use tracing::warn;
use ttfd_shared::Rules;
use ttfd_shared::view::text::{self, Markup, escape_markdown as escape, platform_name};
use ttfd_shared::view::{Period, Profile, Standing};

use super::mapping::{display_name, identity};
use crate::query::{QueryClient, QueryError};
use crate::store::codes::{IssuedCode, Redemption};

/// Rows shown by `/top`.
const TOP_ROWS: u32 = 10;

/// The commands as registered in the guild.
pub fn definitions() -> Vec<CreateCommand> {
    vec![
        CreateCommand::new("rank")
            .description("Rank, XP and linked platforms: yours or another member's")
            .add_option(
                CreateCommandOption::new(CommandOptionType::User, "member", "Whose rank")
                    .required(false),
            ),
        CreateCommand::new("top")
            .description("The leaderboard")
            .add_option(
                CreateCommandOption::new(CommandOptionType::String, "period", "Which period")
                    .required(false)
                    .add_string_choice("all time", "all")
                    .add_string_choice("this week", "week")
                    .add_string_choice("this month", "month"),
            ),
        CreateCommand::new("link")
            .description("Link this account with Telegram or the website (get or enter a code)")
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "code",
                    "A code you got on Telegram or the website; leave out to get a code",
                )
                .required(false),
            ),
    ]
}

/// A command the bot understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlashCommand {
    Rank {
        user: UserId,
        name: String,
        bot: bool,
    },
    Top {
        period: Period,
    },
    LinkIssue,
    LinkRedeem {
        code: String,
    },
}

/// Reads a command interaction; `None` for a command this bot does not have.
pub fn parse(cmd: &CommandInteraction) -> Option<SlashCommand> {
    let options = cmd.data.options();
    let string = |name: &str| {
        options.iter().find_map(|o| match o.value {
            ResolvedValue::String(s) if o.name == name => Some(s.to_owned()),
            _ => None,
        })
    };
    match cmd.data.name.as_str() {
        "rank" => {
            let target = options.iter().find_map(|o| match o.value {
                ResolvedValue::User(user, member) if o.name == "member" => Some((user, member)),
                _ => None,
            });
            let (user, nick) = match target {
                Some((user, member)) => (user, member.and_then(|m| m.nick.as_deref())),
                None => (
                    &cmd.user,
                    cmd.member.as_ref().and_then(|m| m.nick.as_deref()),
                ),
            };
            Some(SlashCommand::Rank {
                user: user.id,
                name: display_name(user, nick).unwrap_or_else(|| "this member".into()),
                bot: user.bot,
            })
        }
        "top" => Some(SlashCommand::Top {
            period: match string("period").as_deref() {
                Some("week") => Period::Week,
                Some("month") => Period::Month,
                _ => Period::All,
            },
        }),
        "link" => Some(match string("code") {
            Some(code) if !code.trim().is_empty() => SlashCommand::LinkRedeem {
                code: code.trim().to_owned(),
            },
            _ => SlashCommand::LinkIssue,
        }),
        _ => None,
    }
}

/// A reply: its text and whether only the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub ephemeral: bool,
}

impl Reply {
    fn public(text: String) -> Self {
        Self {
            text,
            ephemeral: false,
        }
    }

    fn private(text: String) -> Self {
        Self {
            text,
            ephemeral: true,
        }
    }
}

/// Runs a command against the query service.
pub async fn reply(
    command: &SlashCommand,
    caller: UserId,
    query: &QueryClient,
    rules: &Rules,
) -> Reply {
    let result = match command {
        SlashCommand::Rank {
            bot: true, name, ..
        } => {
            return Reply::private(format!("{} is a bot: bots have no rank.", escape(name)));
        }
        SlashCommand::Rank { user, name, .. } => query
            .profile(&identity(*user))
            .await
            .map(|p| Reply::public(rank_text(name, p.as_ref(), rules))),
        SlashCommand::Top { period } => query
            .top(*period, TOP_ROWS, 0)
            .await
            .map(|rows| Reply::public(top_text(*period, &rows))),
        SlashCommand::LinkIssue => query
            .issue_link_code(&identity(caller))
            .await
            .map(|c| Reply::private(issued_text(&c))),
        SlashCommand::LinkRedeem { code } => query
            .redeem_link_code(&identity(caller), code)
            .await
            .map(|r| Reply::private(redemption_text(&r))),
    };
    result.unwrap_or_else(|e| {
        warn!(error = %e, ?command, "slash command: query failed");
        Reply::private(unavailable_text(&e))
    })
}

/// Answers an interaction: parse, ask, respond (one HTTP call to Discord).
pub async fn answer(
    http: &Http,
    cmd: &CommandInteraction,
    query: &QueryClient,
    rules: &Rules,
) -> serenity::Result<()> {
    let reply = match parse(cmd) {
        Some(command) => self::reply(&command, cmd.user.id, query, rules).await,
        None => Reply::private("This command is not known to the TTFD bot.".into()),
    };
    let message = CreateInteractionResponseMessage::new()
        .content(reply.text)
        .ephemeral(reply.ephemeral)
        .allowed_mentions(CreateAllowedMentions::new());
    cmd.create_response(http, CreateInteractionResponse::Message(message))
        .await
}

/// `/rank`: the profile, or a hint when the member has no activity yet.
pub fn rank_text(name: &str, profile: Option<&Profile>, rules: &Rules) -> String {
    match profile {
        Some(p) => text::profile(name, p, rules, Markup::Markdown),
        None => format!(
            "{} has no activity recorded yet: messages and voice time earn XP.",
            escape(name)
        ),
    }
}

/// `/top`.
pub fn top_text(period: Period, rows: &[Standing]) -> String {
    text::top(period, rows, Markup::Markdown)
}

/// `/link`: the code and how to use it. `<t:…:R>` shows as "in 10 minutes".
pub fn issued_text(code: &IssuedCode) -> String {
    format!(
        "Your link code: **{}** (expires <t:{}:R>, works once).\n\
         Send `/link {}` to the TTFD Telegram bot, or enter it on the website, to join \
         that account with this Discord account.",
        code.code,
        code.expires_ms.div_euclid(1000),
        code.code
    )
}

/// `/link code:<CODE>`.
pub fn redemption_text(r: &Redemption) -> String {
    match r {
        Redemption::Linked { issuer } => format!(
            "Linked: this Discord account and your {} account are now one profile \
             (it updates within moments).",
            platform_name(&issuer.platform)
        ),
        Redemption::AlreadyOneUser { .. } => "These accounts are already linked.".into(),
        Redemption::SelfLink => "That code was issued to this account: enter it on the other \
             platform (Telegram or the website) instead."
            .into(),
        Redemption::Invalid => "That code is unknown, used or expired. Get a new one with \
             /link on the other platform."
            .into(),
        Redemption::TooManyAttempts { retry_after_secs } => format!(
            "Too many wrong codes. Try again in {} minute(s).",
            retry_after_secs.div_ceil(60).max(1)
        ),
    }
}

pub fn unavailable_text(e: &QueryError) -> String {
    match e {
        QueryError::Unavailable(_) => {
            "The TTFD profile service is not answering right now; try again in a minute.".into()
        }
        QueryError::Remote(_) | QueryError::Bad(_) => {
            "Something went wrong on the TTFD side; try again later.".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ttfd_shared::view::PeriodStanding;
    use ttfd_shared::wire::WireIdentity;

    fn profile(xp: i64, rank: u8) -> Profile {
        let rules = Rules::default();
        Profile {
            uid: 7,
            display_name: Some("Nelly".into()),
            xp,
            rank: rules.rank(rank),
            peak_rank: rank,
            coins: rules.coins_for_peak(rank),
            messages: 1234,
            voice_seconds: 43_500,
            games_played: 3,
            games_won: 1,
            identities: vec![
                WireIdentity {
                    platform: "discord".into(),
                    user: "1".into(),
                },
                WireIdentity {
                    platform: "telegram".into(),
                    user: "2".into(),
                },
            ],
            created_at: None,
            last_active: None,
            standings: vec![PeriodStanding {
                period: Period::Month,
                key: "month:2026-12".into(),
                position: Some(3),
                xp: 900,
                ranked: 140,
            }],
        }
    }

    #[test]
    fn rank_shows_progress_to_the_next_rank_and_linked_platforms() {
        // C II needs 16,250, C III 19,250: 750 of 3,000 done.
        let text = rank_text("Nelly", Some(&profile(17_000, 11)), &Rules::default());
        assert_eq!(
            text,
            "**Nelly**\nRank **C II** ★★ · 17,000 XP\n\
             ▰▰▱▱▱▱▱▱▱▱ 25% to C III (750 / 3,000)\n\
             Peak C II · 4,500 coins\n\
             1,234 messages · 12 h 5 min in voice · 3 games (1 won)\n\
             #3 of 140 this month\n\
             Linked: Discord, Telegram"
        );
    }

    #[test]
    fn rank_at_the_top_and_without_activity() {
        let text = rank_text("Top", Some(&profile(60_000, 20)), &Rules::default());
        assert!(text.contains("The highest rank"), "{text}");
        assert_eq!(
            rank_text("new_*one*", None, &Rules::default()),
            "new\\_\\*one\\* has no activity recorded yet: messages and voice time earn XP."
        );
    }

    #[test]
    fn top_lists_positions_names_xp_and_ranks() {
        let rows = vec![
            Standing {
                position: 1,
                uid: 3,
                display_name: Some("Ann".into()),
                xp: 52_300,
                rank: "S II".into(),
            },
            Standing {
                position: 2,
                uid: 9,
                display_name: None,
                xp: 900,
                rank: "F II".into(),
            },
        ];
        assert_eq!(
            top_text(Period::Week, &rows),
            "**Leaderboard, this week**\n1. Ann — 52,300 XP · S II\n2. user #9 — 900 XP · F II"
        );
        assert_eq!(
            top_text(Period::Month, &[]),
            "Nobody has earned XP this month yet."
        );
    }

    #[test]
    fn link_replies_say_what_happened() {
        let issued = IssuedCode {
            code: "K7M2QX".into(),
            expires_ms: 1_764_000_600_000,
        };
        let text = issued_text(&issued);
        assert!(text.starts_with("Your link code: **K7M2QX** (expires <t:1764000600:R>"));
        assert!(text.contains("`/link K7M2QX`"));
        let tg = WireIdentity {
            platform: "telegram".into(),
            user: "5".into(),
        };
        assert!(redemption_text(&Redemption::Linked { issuer: tg.clone() }).contains("Telegram"));
        assert!(redemption_text(&Redemption::AlreadyOneUser { issuer: tg }).contains("already"));
        assert!(redemption_text(&Redemption::Invalid).contains("unknown, used or expired"));
        assert!(redemption_text(&Redemption::SelfLink).contains("issued to this account"));
        assert_eq!(
            redemption_text(&Redemption::TooManyAttempts {
                retry_after_secs: 61
            }),
            "Too many wrong codes. Try again in 2 minute(s)."
        );
    }

    /// An `INTERACTION_CREATE` `d` for a chat input command, as documented by Discord.
    pub(crate) fn interaction(name: &str, options: serde_json::Value) -> serde_json::Value {
        json!({
            "id": "1320000000000000001",
            "application_id": "1300000000000000009",
            "type": 2,
            "data": {
                "id": "1300000000000000077",
                "name": name,
                "type": 1,
                "options": options,
                "resolved": {
                    "users": {
                        "555": {"id": "555", "username": "ann", "global_name": "Ann",
                                "discriminator": "0", "avatar": null}
                    },
                    "members": {
                        "555": {"nick": "Annie", "roles": [], "joined_at": "2021-01-01T00:00:00.000000+00:00",
                                "deaf": false, "mute": false, "flags": 0, "permissions": "0"}
                    }
                }
            },
            "guild_id": "1000000000000000001",
            "channel_id": "1100000000000000001",
            "member": {
                "user": {"id": "80351110224678912", "username": "nelly", "global_name": "Nelly",
                         "discriminator": "0", "avatar": null},
                "nick": null, "roles": [], "joined_at": "2021-01-01T00:00:00.000000+00:00",
                "deaf": false, "mute": false, "flags": 0, "permissions": "2147483647"
            },
            "token": "aW50ZXJhY3Rpb24gdG9rZW4",
            "version": 1,
            "app_permissions": "2147483647",
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": "1000000000000000001"},
            "context": 0,
            "attachment_size_limit": 10485760
        })
    }

    fn command(v: serde_json::Value) -> CommandInteraction {
        serde_json::from_value(v).expect("a documented interaction deserialises")
    }

    #[test]
    fn commands_are_read_from_interaction_payloads() {
        let own = command(interaction("rank", json!([])));
        assert_eq!(
            parse(&own),
            Some(SlashCommand::Rank {
                user: UserId::new(80_351_110_224_678_912),
                name: "Nelly".into(),
                bot: false
            })
        );
        let other = command(interaction(
            "rank",
            json!([{"name": "member", "type": 6, "value": "555"}]),
        ));
        assert_eq!(
            parse(&other),
            Some(SlashCommand::Rank {
                user: UserId::new(555),
                name: "Annie".into(),
                bot: false
            })
        );
        let top = command(interaction(
            "top",
            json!([{"name": "period", "type": 3, "value": "week"}]),
        ));
        assert_eq!(
            parse(&top),
            Some(SlashCommand::Top {
                period: Period::Week
            })
        );
        assert_eq!(
            parse(&command(interaction("link", json!([])))),
            Some(SlashCommand::LinkIssue)
        );
        let redeem = command(interaction(
            "link",
            json!([{"name": "code", "type": 3, "value": " k7m2qx "}]),
        ));
        assert_eq!(
            parse(&redeem),
            Some(SlashCommand::LinkRedeem {
                code: "k7m2qx".into()
            })
        );
        assert_eq!(parse(&command(interaction("dance", json!([])))), None);
    }
}
