//! Slash commands: `/rank [member]`, `/top [period]`, `/link` and `/link code:<CODE>`;
//! for moderators `/xp add|remove|set|reset` and `/audit [member] [moderator]`
//! (docs/moderation.md).
//!
//! Parsing an interaction and writing the reply are pure functions; [`answer`] asks the
//! query service (`ttfd query`) in between and sends the reply. Replies that hold or
//! consume link codes are ephemeral (only the caller sees them). No reply pings anyone.

use serenity::builder::{
    CreateAllowedMentions, CreateAttachment, CreateCommand, CreateCommandOption,
    CreateInteractionResponse, CreateInteractionResponseMessage,
};
use serenity::http::Http;
use serenity::model::application::{
    CommandInteraction, CommandOptionType, ResolvedOption, ResolvedValue,
};
use serenity::model::id::{RoleId, UserId};
use serenity::model::user::User;
use tracing::warn;
use ttfd_shared::Rules;
use ttfd_shared::view::text::{self, Markup, escape_markdown as escape, platform_name};
use ttfd_shared::view::{AuditEntry, Period, Pref, Profile, Standing, Statement};

use super::mapping::{display_name, identity};
use crate::card;
use crate::moderation::Verb;
use crate::query::{
    AdjustOutcome, AdjustRequest, AuditRequest, QueryClient, QueryError, UnlinkOutcome, UnlinkQuery,
};
use crate::store::codes::{IssuedCode, Redemption};

/// Rows shown by `/top`.
const TOP_ROWS: u32 = 10;
/// Entries shown by `/audit` (a Discord message holds 2,000 characters).
const AUDIT_ROWS: u32 = 10;

/// The commands as registered in the guild.
pub fn definitions() -> Vec<CreateCommand> {
    vec![
        CreateCommand::new("rank")
            .description("Rank, XP and linked platforms: yours or another member's")
            .add_option(
                CreateCommandOption::new(CommandOptionType::User, "member", "Whose rank")
                    .required(false),
            )
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "details",
                    "Where the XP of a period came from, and voice time that paid nothing",
                )
                .required(false)
                .add_string_choice("this week", "week")
                .add_string_choice("this month", "month")
                .add_string_choice("this season", "season")
                .add_string_choice("all time", "all"),
            ),
        CreateCommand::new("top")
            .description("The leaderboard")
            .add_option(
                CreateCommandOption::new(CommandOptionType::String, "period", "Which period")
                    .required(false)
                    .add_string_choice("all time", "all")
                    .add_string_choice("this week", "week")
                    .add_string_choice("this month", "month")
                    .add_string_choice("this season", "season"),
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
        CreateCommand::new("xp")
            .description("Moderators: give, take, set or reset a member's XP, with a reason")
            .add_option(xp_verb("add", "Give XP", Some("amount")))
            .add_option(xp_verb("remove", "Take XP away", Some("amount")))
            .add_option(xp_verb(
                "set",
                "Set a member's XP to exactly this",
                Some("xp"),
            ))
            .add_option(xp_verb("reset", "Set a member's XP to 0", None)),
        CreateCommand::new("notify")
            .description("Rank-up announcements for you, on every platform")
            .add_option(
                CreateCommandOption::new(CommandOptionType::String, "announcements", "On or off")
                    .required(true)
                    .add_string_choice("on", "on")
                    .add_string_choice("off", "off"),
            ),
        CreateCommand::new("unlink")
            .description("Moderators: take a wrongly linked account out of a member's profile")
            .add_option(
                CreateCommandOption::new(CommandOptionType::User, "member", "Whose profile")
                    .required(true),
            )
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "account",
                    "The account to take out: telegram:123, or a platform (telegram)",
                )
                .required(true),
            )
            .add_option(
                CreateCommandOption::new(CommandOptionType::String, "reason", "For the audit log")
                    .required(true)
                    .max_length(64),
            ),
        CreateCommand::new("gdpr")
            .description("Your data: everything TTFD holds about you")
            .add_option(CreateCommandOption::new(
                CommandOptionType::SubCommand,
                "export",
                "Everything TTFD holds about you, as a file in a direct message",
            ))
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::SubCommand,
                    "delete",
                    "Erase everything TTFD holds about you, every linked account, for good",
                )
                .add_sub_option(
                    CreateCommandOption::new(
                        CommandOptionType::Boolean,
                        "confirm",
                        "True: erase it now. Nothing erased can be brought back",
                    )
                    .required(true),
                ),
            ),
        CreateCommand::new("privacy")
            .description("Keep yourself off the leaderboards and your profile private, everywhere")
            .add_option(
                CreateCommandOption::new(CommandOptionType::String, "profile", "Hide or show")
                    .required(true)
                    .add_string_choice("hide", "hide")
                    .add_string_choice("show", "show"),
            ),
        CreateCommand::new("ranks")
            .description("Moderators: rank roles")
            .add_option(CreateCommandOption::new(
                CommandOptionType::SubCommand,
                "sync",
                "Give every member the rank roles of their rank (after a mapping change)",
            )),
        CreateCommand::new("audit")
            .description("Moderators: who changed whose XP, and why")
            .add_option(
                CreateCommandOption::new(CommandOptionType::User, "member", "About this member")
                    .required(false),
            )
            .add_option(
                CreateCommandOption::new(CommandOptionType::User, "moderator", "By this moderator")
                    .required(false),
            ),
    ]
}

/// One `/xp` subcommand: the member, the number it takes (if any), the reason.
fn xp_verb(name: &str, description: &str, number: Option<&str>) -> CreateCommandOption {
    let mut verb = CreateCommandOption::new(CommandOptionType::SubCommand, name, description)
        .add_sub_option(
            CreateCommandOption::new(CommandOptionType::User, "member", "Whose XP").required(true),
        );
    if let Some(number) = number {
        let mut option = CreateCommandOption::new(CommandOptionType::Integer, number, "XP")
            .required(true)
            .max_int_value(1_000_000);
        option = if number == "xp" {
            option.min_int_value(0)
        } else {
            option.min_int_value(1)
        };
        verb = verb.add_sub_option(option);
    }
    verb.add_sub_option(
        CreateCommandOption::new(
            CommandOptionType::String,
            "reason",
            "Why (the audit log shows it)",
        )
        .required(true)
        .max_length(64),
    )
}

/// A command the bot understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlashCommand {
    Rank {
        user: UserId,
        name: String,
        bot: bool,
        /// `details`: the XP statement of this period instead of the rank.
        details: Option<Period>,
    },
    Top {
        period: Period,
    },
    LinkIssue,
    LinkRedeem {
        code: String,
    },
    Xp {
        verb: Verb,
        member: UserId,
        name: String,
        bot: bool,
        reason: String,
    },
    Audit {
        member: Option<UserId>,
        moderator: Option<UserId>,
    },
    /// `/ranks sync`: the bot runs it (`DiscordBot::on_command`); the reply says so.
    RanksSync,
    /// `/gdpr export`: the bot sends the file by direct message (`DiscordBot::on_command`);
    /// the reply says so.
    GdprExport,
    /// `/gdpr delete confirm`: with `confirm`, the query service erases every account of
    /// the member's profile (SPEC 7.4).
    GdprDelete {
        confirm: bool,
    },
    /// `/unlink member account reason` (SPEC 7.4).
    Unlink {
        member: UserId,
        account: String,
        reason: String,
    },
    /// `/notify on|off` and `/privacy hide|show`: the bot publishes the `prefs` event
    /// (`DiscordBot::on_command`).
    Prefs(Pref),
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
                details: string("details").and_then(|p| p.parse().ok()),
            })
        }
        "top" => Some(SlashCommand::Top {
            period: match string("period").as_deref() {
                Some("week") => Period::Week,
                Some("month") => Period::Month,
                Some("season") => Period::Season,
                _ => Period::All,
            },
        }),
        "link" => Some(match string("code") {
            Some(code) if !code.trim().is_empty() => SlashCommand::LinkRedeem {
                code: code.trim().to_owned(),
            },
            _ => SlashCommand::LinkIssue,
        }),
        "xp" => options.iter().find_map(|o| match &o.value {
            ResolvedValue::SubCommand(sub) => parse_xp(o.name, sub),
            _ => None,
        }),
        "notify" => Some(SlashCommand::Prefs(Pref::Notify(
            string("announcements").as_deref() != Some("off"),
        ))),
        "gdpr" => options.iter().find_map(|o| match (o.name, &o.value) {
            ("export", _) => Some(SlashCommand::GdprExport),
            ("delete", ResolvedValue::SubCommand(sub)) => Some(SlashCommand::GdprDelete {
                confirm: sub.iter().any(|s| {
                    s.name == "confirm" && matches!(s.value, ResolvedValue::Boolean(true))
                }),
            }),
            _ => None,
        }),
        "unlink" => Some(SlashCommand::Unlink {
            member: user_option(&options, "member")?.0.id,
            account: string("account")?,
            reason: string("reason")?,
        }),
        "privacy" => Some(SlashCommand::Prefs(Pref::Hidden(
            string("profile").as_deref() != Some("show"),
        ))),
        "ranks" => options
            .iter()
            .any(|o| o.name == "sync")
            .then_some(SlashCommand::RanksSync),
        "audit" => Some(SlashCommand::Audit {
            member: user_option(&options, "member").map(|(u, _)| u.id),
            moderator: user_option(&options, "moderator").map(|(u, _)| u.id),
        }),
        _ => None,
    }
}

/// The user of option `name`, with their guild nickname.
fn user_option<'a>(
    options: &'a [ResolvedOption<'a>],
    name: &str,
) -> Option<(&'a User, Option<&'a str>)> {
    options.iter().find_map(|o| match o.value {
        ResolvedValue::User(user, member) if o.name == name => {
            Some((user, member.and_then(|m| m.nick.as_deref())))
        }
        _ => None,
    })
}

/// `/xp <verb> member [amount|xp] reason`.
fn parse_xp(verb: &str, options: &[ResolvedOption<'_>]) -> Option<SlashCommand> {
    let number = |name: &str| {
        options.iter().find_map(|o| match o.value {
            ResolvedValue::Integer(n) if o.name == name => Some(n),
            _ => None,
        })
    };
    let amount = || number("amount").and_then(|n| u32::try_from(n).ok());
    let verb = match verb {
        "add" => Verb::Add(amount()?),
        "remove" => Verb::Remove(amount()?),
        "set" => Verb::Set(number("xp")?),
        "reset" => Verb::Reset,
        _ => return None,
    };
    let (user, nick) = user_option(options, "member")?;
    let reason = options.iter().find_map(|o| match o.value {
        ResolvedValue::String(s) if o.name == "reason" => Some(s.to_owned()),
        _ => None,
    })?;
    Some(SlashCommand::Xp {
        verb,
        member: user.id,
        name: display_name(user, nick).unwrap_or_else(|| "this member".into()),
        bot: user.bot,
        reason,
    })
}

/// Whether the caller of an interaction is a moderator: the Manage Server (or
/// Administrator) permission, or one of `discord.moderator_roles`.
pub fn is_moderator(cmd: &CommandInteraction, moderator_roles: &[RoleId]) -> bool {
    cmd.member.as_ref().is_some_and(|m| {
        m.permissions
            .is_some_and(|p| p.manage_guild() || p.administrator())
            || m.roles.iter().any(|r| moderator_roles.contains(r))
    })
}

/// What a command is answered with.
pub struct Asked<'a> {
    pub query: &'a QueryClient,
    pub rules: &'a Rules,
    pub moderator_roles: &'a [RoleId],
}

/// A reply: its text, whether only the caller sees it, and a rank card (PNG) to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub ephemeral: bool,
    pub card: Option<Vec<u8>>,
}

impl Reply {
    fn public(text: String) -> Self {
        Self {
            text,
            ephemeral: false,
            card: None,
        }
    }

    fn private(text: String) -> Self {
        Self {
            text,
            ephemeral: true,
            card: None,
        }
    }

    /// With `profile`'s rank card (docs/cards.md), rendered off the async workers; a
    /// card that cannot be rendered is left out (the text says it all).
    async fn with_card(mut self, profile: Option<&Profile>, rules: &Rules) -> Self {
        if let Some(p) = profile {
            self.card = card::png_off_thread(p, rules).await;
        }
        self
    }
}

/// Who asks: the caller, whether they are a moderator, and the interaction's id (a
/// retried interaction is the same request).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub user: UserId,
    pub moderator: bool,
    pub interaction: u64,
}

/// Runs a command against the query service.
pub async fn reply(
    command: &SlashCommand,
    caller: Caller,
    query: &QueryClient,
    rules: &Rules,
) -> Reply {
    let moderators_only = matches!(
        command,
        SlashCommand::Xp { .. }
            | SlashCommand::Audit { .. }
            | SlashCommand::RanksSync
            | SlashCommand::Unlink { .. }
    );
    if moderators_only && !caller.moderator {
        return Reply::private(
            "Only moderators can do that (the Manage Server permission or a moderator role)."
                .into(),
        );
    }
    let result = match command {
        SlashCommand::Rank {
            bot: true, name, ..
        } => {
            return Reply::private(format!("{} is a bot: bots have no rank.", escape(name)));
        }
        // The statement, for the asker's eyes only (it is long, and personal): one's
        // own read as oneself (a hidden member sees theirs), another's as anyone may.
        SlashCommand::Rank {
            user,
            name,
            details: Some(period),
            ..
        } => query
            .statement(&identity(*user), *period, *user == caller.user)
            .await
            .map(|s| Reply::private(statement_text(name, *period, s.as_ref(), rules))),
        // One's own rank is read as oneself (a hidden member sees it, privately).
        SlashCommand::Rank { user, name, .. } if *user == caller.user => {
            match query.own_profile(&identity(*user)).await {
                Ok(p) => {
                    let text = rank_text(name, p.as_ref(), rules);
                    let reply = if p.as_ref().is_some_and(|p| p.hidden) {
                        Reply::private(text)
                    } else {
                        Reply::public(text)
                    };
                    Ok(reply.with_card(p.as_ref(), rules).await)
                }
                Err(e) => Err(e),
            }
        }
        SlashCommand::Rank { user, name, .. } => match query.profile(&identity(*user)).await {
            Ok(p) => Ok(Reply::public(rank_text(name, p.as_ref(), rules))
                .with_card(p.as_ref(), rules)
                .await),
            Err(e) => Err(e),
        },
        SlashCommand::Top { period } => query
            .top(*period, TOP_ROWS, 0)
            .await
            .map(|rows| Reply::public(top_text(*period, &rows))),
        SlashCommand::LinkIssue => query
            .issue_link_code(&identity(caller.user))
            .await
            .map(|c| Reply::private(issued_text(&c))),
        SlashCommand::LinkRedeem { code } => query
            .redeem_link_code(&identity(caller.user), code)
            .await
            .map(|r| Reply::private(redemption_text(&r))),
        SlashCommand::Xp {
            bot: true, name, ..
        } => {
            return Reply::private(format!("{} is a bot: bots have no XP.", escape(name)));
        }
        SlashCommand::Xp {
            verb,
            member,
            name,
            reason,
            ..
        } => query
            .adjust_xp(&AdjustRequest {
                by: (&identity(caller.user)).into(),
                target: (&identity(*member)).into(),
                verb: *verb,
                reason: reason.clone(),
                request_id: format!("interaction:{}", caller.interaction),
            })
            .await
            .map(|outcome| adjusted_reply(name, reason, &outcome)),
        SlashCommand::Unlink {
            member,
            account,
            reason,
        } => query
            .unlink(&UnlinkQuery {
                by: (&identity(caller.user)).into(),
                member: (&identity(*member)).into(),
                account: account.clone(),
                reason: reason.clone(),
                request_id: format!("interaction:{}", caller.interaction),
            })
            .await
            .map(|outcome| {
                let text = outcome.text(&escape(reason));
                match outcome {
                    UnlinkOutcome::Done { .. } => Reply::public(text),
                    UnlinkOutcome::Refused(_) => Reply::private(text),
                }
            }),
        SlashCommand::GdprDelete { confirm: false } => {
            return Reply::private(
                "Nothing was erased. `/gdpr delete confirm:True` erases everything TTFD holds \
                 about you, for good: every account linked to this one, XP, rank, history. \
                 What you do afterwards starts a new profile."
                    .into(),
            );
        }
        SlashCommand::GdprDelete { confirm: true } => {
            query.forget(&identity(caller.user)).await.map(|n| {
                Reply::private(format!(
                    "Erasing: everything TTFD held about you ({n} linked account{}) is being \
                     deleted, within moments. From now on you start over.",
                    if n == 1 { "" } else { "s" }
                ))
            })
        }
        SlashCommand::GdprExport => {
            return Reply::private(
                "Gathering everything TTFD holds about you: it comes as a file in a direct \
                 message from me (if your privacy settings let this server's members send \
                 you one)."
                    .into(),
            );
        }
        SlashCommand::Prefs(pref) => {
            return Reply::private(text::pref_said(*pref, Markup::Markdown));
        }
        SlashCommand::RanksSync => {
            return Reply::private(
                "Reconciling the rank roles of every member; a summary follows in this channel."
                    .into(),
            );
        }
        SlashCommand::Audit { member, moderator } => query
            .audit(&AuditRequest {
                by: (&identity(caller.user)).into(),
                member: member.map(|m| (&identity(m)).into()),
                moderator: moderator.map(|m| (&identity(m)).into()),
                limit: AUDIT_ROWS,
            })
            .await
            .map(|entries| Reply::private(audit_text(&entries))),
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
    asked: &Asked<'_>,
) -> serenity::Result<()> {
    let caller = Caller {
        user: cmd.user.id,
        moderator: is_moderator(cmd, asked.moderator_roles),
        interaction: cmd.id.get(),
    };
    let reply = match parse(cmd) {
        Some(command) => self::reply(&command, caller, asked.query, asked.rules).await,
        None => Reply::private("This command is not known to the TTFD bot.".into()),
    };
    let mut message = CreateInteractionResponseMessage::new()
        .content(reply.text)
        .ephemeral(reply.ephemeral)
        .allowed_mentions(CreateAllowedMentions::new());
    if let Some(png) = reply.card {
        message = message.add_file(CreateAttachment::bytes(png, "rank.png"));
    }
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

/// `/rank details`: the statement, or why there is none.
pub fn statement_text(
    name: &str,
    period: Period,
    statement: Option<&Statement>,
    rules: &Rules,
) -> String {
    match statement {
        Some(s) => text::statement(name, s, Markup::Markdown),
        None if period == Period::Season => "No season is on now.".into(),
        None => rank_text(name, None, rules),
    }
}

/// `/top`.
pub fn top_text(period: Period, rows: &[Standing]) -> String {
    text::period_top(period, rows, Markup::Markdown)
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

/// `/xp`: what was done and the new total, or why not (only the moderator sees that).
pub fn adjusted_reply(name: &str, reason: &str, outcome: &AdjustOutcome) -> Reply {
    let text = outcome.text(&format!("**{}**", escape(name)), &escape(reason));
    match outcome {
        AdjustOutcome::Done { .. } => Reply::public(text),
        AdjustOutcome::Refused(_) => Reply::private(text),
    }
}

/// `/audit`: the newest entries, one a line.
pub fn audit_text(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "No audit entries.".into();
    }
    let lines: Vec<String> = entries
        .iter()
        .map(|e| escape(&text::audit_entry(e)))
        .collect();
    format!("Newest first:\n{}", lines.join("\n"))
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
            seasons: Vec::new(),
            hidden: false,
            notify: true,
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
                bot: false,
                details: None
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
                bot: false,
                details: None
            })
        );
        let details = command(interaction(
            "rank",
            json!([{"name": "details", "type": 3, "value": "week"}]),
        ));
        assert_eq!(
            parse(&details),
            Some(SlashCommand::Rank {
                user: UserId::new(80_351_110_224_678_912),
                name: "Nelly".into(),
                bot: false,
                details: Some(Period::Week)
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
