//! Every text the bot sends, built by pure functions from domain values. Replies are
//! plain text (no parse mode, so names need no escaping); group announcements are HTML
//! for the mention, with names escaped.

use ttfd_shared::Rules;
use ttfd_shared::view::text::{self, Markup, platform_name};
use ttfd_shared::wire::WireIdentity;

use crate::store::codes::{IssuedCode, Redemption};
use ttfd_shared::view::{Period, Profile, Standing, Statement};

use super::commands::COMMANDS;

/// The command list, one per line.
fn command_lines() -> String {
    COMMANDS
        .iter()
        .map(|(name, about)| format!("/{name} — {about}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn how_xp_is_earned(rules: &Rules) -> String {
    format!(
        "A message of at least {} characters earns {} XP, once a minute; voice time and \
         games count too. Ranks go from {} to {}.",
        rules.min_message_len,
        rules.message_xp,
        rules.rank(1).name,
        rules.rank(u8::MAX).name,
    )
}

/// `/start` in a private chat.
pub fn start(first_name: &str, rules: &Rules) -> String {
    format!(
        "Hi {first_name}! I keep the TTFD ranks: one profile for Telegram, Discord and the \
         website.\n{}\nNow that you have started me, I tell you here when you reach a new \
         rank.\n\n{}",
        how_xp_is_earned(rules),
        command_lines()
    )
}

/// `/help`, `/start` in a group, and any other private message.
pub fn help(rules: &Rules) -> String {
    format!(
        "I keep the TTFD ranks: one profile for Telegram, Discord and the website.\n{}\n\n{}",
        how_xp_is_earned(rules),
        command_lines()
    )
}

pub fn unknown_command(name: &str, rules: &Rules) -> String {
    format!("I don't know /{name}.\n\n{}", help(rules))
}

/// `/rank`: the asker's profile, or how to get one.
pub fn rank(profile: Option<&Profile>, rules: &Rules) -> String {
    let Some(p) = profile else {
        return format!(
            "You have no XP yet. {}\nAlready active on Discord or the website? Link the \
             accounts with /link in a private chat with me.",
            how_xp_is_earned(rules)
        );
    };
    let name = p.display_name.as_deref().unwrap_or("You");
    text::profile(name, p, rules, Markup::Plain)
}

/// `/rank details [period]`: the member's statement, or why there is none.
pub fn statement(profile: &Profile, period: Period, statement: Option<&Statement>) -> String {
    match statement {
        Some(s) => {
            let name = profile.display_name.as_deref().unwrap_or("You");
            text::statement(name, s, Markup::Plain)
        }
        None if period == Period::Season => "No season is on now.".into(),
        None => "Nothing to show for that period.".into(),
    }
}

/// `/rank` with an argument it does not take.
pub fn rank_usage(word: &str) -> String {
    format!(
        "/rank shows your rank; /rank details [week|month|season|all] shows where your XP \
         came from (\"{word}\" is not one of those)."
    )
}

/// `/top [period]`.
pub fn top(period: Period, rows: &[Standing]) -> String {
    text::period_top(period, rows, Markup::Plain)
}

pub fn top_usage(word: &str) -> String {
    format!("I don't know the period \"{word}\". Use /top, /top week, /top month or /top season.")
}

/// `/link` in a private chat: the code to enter elsewhere.
pub fn code_issued(issued: &IssuedCode, now_ms: i64) -> String {
    let minutes = ((issued.expires_ms - now_ms).max(0) + 59_999) / 60_000;
    format!(
        "Your link code: {code}\n\nEnter it on the other platform within {minutes} min: on \
         Discord with /link code:{code}, or on the website. It works once.\nDo not share \
         it: whoever enters it joins their account to your profile, for good.",
        code = issued.code,
        minutes = minutes.max(1),
    )
}

/// `/link` or `/link CODE` in a group: codes belong in a private chat.
pub fn link_in_private_only(bot_username: &str, with_code: bool) -> String {
    let mut text = format!(
        "Linking happens in a private chat with me, so that codes stay secret: open \
         https://t.me/{bot_username} and send /link there."
    );
    if with_code {
        text.push_str(
            " A code posted here is visible to everyone: get a new one on the other platform.",
        );
    }
    text
}

pub fn malformed_code() -> String {
    "That is not a link code: a code has 6 letters and digits, like /link K7Q2MX.".into()
}

/// What entering a code did.
pub fn redeemed(outcome: &Redemption) -> String {
    match outcome {
        Redemption::Linked { issuer } => format!(
            "Linked! Your Telegram account and your {} account are now one profile. \
             /rank shows it within a few seconds.",
            platform_name(&issuer.platform)
        ),
        Redemption::AlreadyOneUser { issuer } => format!(
            "Your Telegram account and that {} account are already one profile.",
            platform_name(&issuer.platform)
        ),
        Redemption::SelfLink => "That code is your own: enter it on the other platform \
                                 (Discord or the website), not here."
            .into(),
        Redemption::Invalid => "That code does not work: it may be mistyped, used already, \
                                or older than 10 minutes. Get a fresh one with /link on the \
                                other platform."
            .into(),
        Redemption::TooManyAttempts { retry_after_secs } => format!(
            "Too many wrong codes. Try again in {} min.",
            retry_after_secs.div_ceil(60).max(1)
        ),
    }
}

pub fn notify_usage() -> String {
    "Rank-up announcements for you: /notify off, or /notify on.".into()
}

pub fn privacy_usage() -> String {
    "Keep yourself off the leaderboards, with a profile only you see: /privacy hide; \
     back again: /privacy show."
        .into()
}

pub fn gdpr_usage() -> String {
    "Your data: /gdpr export sends you everything TTFD holds about you (a file, \
     privately); /gdpr delete erases it."
        .into()
}

/// `/gdpr delete` before it is confirmed.
pub fn erase_confirm() -> String {
    "This erases everything TTFD holds about you, for good: every account linked to this \
     one, XP, rank, history. What you do from now on starts a new profile. To go ahead, \
     send: /gdpr delete confirm"
        .into()
}

/// `/gdpr delete confirm` done.
pub fn erased() -> String {
    "Erasing: everything TTFD held about you is being deleted, within moments. From now \
     on you start over."
        .into()
}

/// `/gdpr export` sent privately.
pub fn export_sent(private: bool) -> String {
    if private {
        "That file is everything TTFD holds about you.".into()
    } else {
        "Sent to you in a private chat with me.".into()
    }
}

/// `/gdpr export` when the bot may not write to the member privately.
pub fn export_needs_start(bot_username: &str) -> String {
    format!(
        "I can only send your data privately: open a chat with me (https://t.me/{bot_username}), \
         press Start, then send /gdpr export there."
    )
}

/// `/gdpr export` refused.
pub fn export_refused(why: &str) -> String {
    format!("Your data was not sent: {why}.")
}

/// `/rank` in a group by a hidden member: their rank stays private.
pub fn rank_hidden_in_group() -> String {
    "You are hidden (/privacy): ask me /rank in a private chat to see your rank.".into()
}

/// `/xp` without a verb, number or reply.
pub fn xp_usage() -> String {
    "Reply to the member's message with:\n\
     /xp add 500 reason\n/xp remove 50 reason\n/xp set 1000 reason\n/xp reset reason"
        .into()
}

pub fn xp_in_the_group_only() -> String {
    "Use /xp in the community's group, in reply to the member's message.".into()
}

pub fn xp_for_administrators() -> String {
    "Only the group's administrators can change XP.".into()
}

pub fn xp_not_for_bots() -> String {
    "Bots have no XP.".into()
}

pub fn unavailable() -> String {
    "I cannot reach the ranking service right now. Please try again in a minute.".into()
}

/// A member named in a group message (HTML): a mention by name.
pub fn group_mention(user_id: u64, name: &str) -> String {
    format!(
        "<a href=\"tg://user?id={user_id}\">{}</a>",
        escape_html(name)
    )
}

/// The three characters HTML parse mode requires escaped in text.
pub fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Telegram identity among a notice's identities, as a user id.
pub fn telegram_user(identities: &[WireIdentity]) -> Option<u64> {
    identities
        .iter()
        .find(|i| i.platform == super::mapping::PLATFORM)
        .and_then(|i| i.user.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttfd_shared::view::PeriodStanding;

    fn rules() -> Rules {
        Rules::default()
    }

    fn profile() -> Profile {
        let rules = rules();
        Profile {
            uid: 7,
            display_name: Some("Ada Lovelace".into()),
            xp: 14_000,
            rank: rules.rank(rules.rank_index(14_000)),
            peak_rank: 10,
            coins: 2850,
            messages: 320,
            voice_seconds: 5730,
            games_played: 4,
            games_won: 1,
            identities: vec![
                WireIdentity {
                    platform: "discord".into(),
                    user: "80351110224678912".into(),
                },
                WireIdentity {
                    platform: "telegram".into(),
                    user: "1111111".into(),
                },
            ],
            created_at: None,
            last_active: None,
            standings: vec![
                PeriodStanding {
                    period: Period::All,
                    key: "all".into(),
                    position: Some(1204),
                    xp: 14_000,
                    ranked: 56_789,
                },
                PeriodStanding {
                    period: Period::Week,
                    key: "week:2026-W49".into(),
                    position: Some(12),
                    xp: 350,
                    ranked: 2_001,
                },
            ],
            seasons: Vec::new(),
            hidden: false,
            notify: true,
        }
    }

    #[test]
    fn rank_shows_progress_to_the_next_rank_and_the_linked_platforms() {
        assert_eq!(
            rank(Some(&profile()), &rules()),
            "Ada Lovelace\n\
             Rank C I ★ · 14,000 XP\n\
             ▰▱▱▱▱▱▱▱▱▱ 18% to C II (500 / 2,750)\n\
             Peak C I · 2,850 coins\n\
             320 messages · 1 h 35 min in voice · 4 games (1 won)\n\
             #1,204 of 56,789 all time · #12 of 2,001 this week\n\
             Linked: Discord, Telegram"
        );
    }

    #[test]
    fn rank_at_the_top_has_no_next_rank() {
        let rules = rules();
        let mut p = profile();
        p.xp = 60_000;
        p.rank = rules.rank(rules.rank_index(60_000));
        p.peak_rank = 20;
        let text = rank(Some(&p), &rules);
        assert!(text.contains("Rank S II ★★ · 60,000 XP"), "{text}");
        assert!(text.contains("The highest rank"), "{text}");
    }

    #[test]
    fn rank_without_a_profile_explains_how_to_earn_xp() {
        let text = rank(None, &rules());
        assert!(text.starts_with("You have no XP yet."), "{text}");
        assert!(text.contains("at least 5 characters earns 10 XP"), "{text}");
        assert!(text.contains("/link"), "{text}");
    }

    #[test]
    fn top_lists_positions_names_and_ranks() {
        let rows = vec![
            Standing {
                position: 1,
                uid: 7,
                display_name: Some("Ada".into()),
                xp: 1250,
                rank: "C I".into(),
            },
            Standing {
                position: 2,
                uid: 9,
                display_name: None,
                xp: 40,
                rank: "F I".into(),
            },
        ];
        assert_eq!(
            top(Period::Week, &rows),
            "Leaderboard, this week\n1. Ada — 1,250 XP · C I\n2. user #9 — 40 XP · F I"
        );
        assert_eq!(
            top(Period::Month, &[]),
            "Nobody has earned XP this month yet."
        );
    }

    #[test]
    fn a_code_says_how_long_it_lives_and_where_to_enter_it() {
        let issued = IssuedCode {
            code: "K7Q2MX".into(),
            expires_ms: 1_000_000 + 600_000,
        };
        let text = code_issued(&issued, 1_000_000);
        assert!(text.starts_with("Your link code: K7Q2MX\n"), "{text}");
        assert!(text.contains("within 10 min"), "{text}");
        assert!(text.contains("/link code:K7Q2MX"), "{text}");
        assert!(code_issued(&issued, 1_000_000 + 599_000).contains("within 1 min"));
    }

    #[test]
    fn every_redemption_outcome_has_its_answer() {
        let discord = WireIdentity {
            platform: "discord".into(),
            user: "1".into(),
        };
        assert!(
            redeemed(&Redemption::Linked {
                issuer: discord.clone()
            })
            .starts_with("Linked! Your Telegram account and your Discord account")
        );
        assert!(
            redeemed(&Redemption::AlreadyOneUser { issuer: discord })
                .contains("already one profile")
        );
        assert!(redeemed(&Redemption::SelfLink).contains("your own"));
        assert!(redeemed(&Redemption::Invalid).contains("does not work"));
        assert_eq!(
            redeemed(&Redemption::TooManyAttempts {
                retry_after_secs: 61
            }),
            "Too many wrong codes. Try again in 2 min."
        );
    }

    #[test]
    fn linking_in_a_group_points_to_the_private_chat() {
        let text = link_in_private_only("ttfd_bot", false);
        assert!(text.contains("https://t.me/ttfd_bot"), "{text}");
        assert!(link_in_private_only("ttfd_bot", true).contains("get a new one"));
    }

    #[test]
    fn rank_ups_name_the_rank_and_the_next_one() {
        let notice = ttfd_shared::wire::RankNotice {
            v: 1,
            id: "rank:1".into(),
            ts: 0,
            uid: 7,
            old_rank: 1,
            new_rank: 2,
            xp: 520,
            identities: vec![],
            notify: true,
            hidden: false,
        };
        let (private, group) = crate::settings::telegram::TelegramAnnounce::default()
            .templates(&rules())
            .expect("the default templates are valid");
        assert_eq!(
            private.render(&notice, &rules(), "you".into(), str::to_owned),
            "🎉 You reached rank F II with 520 XP!\nNext: F III at 1,250 XP."
        );
        assert_eq!(
            group.render(
                &notice,
                &rules(),
                group_mention(42, "<Ada & co>"),
                escape_html
            ),
            "🎉 <a href=\"tg://user?id=42\">&lt;Ada &amp; co&gt;</a> reached rank <b>F II</b>!"
        );
    }

    #[test]
    fn the_telegram_identity_of_a_notice_is_found() {
        let ids = vec![
            WireIdentity {
                platform: "discord".into(),
                user: "1".into(),
            },
            WireIdentity {
                platform: "telegram".into(),
                user: "42".into(),
            },
        ];
        assert_eq!(telegram_user(&ids), Some(42));
        assert_eq!(telegram_user(&ids[..1]), None);
    }

    #[test]
    fn help_lists_every_command() {
        let text = help(&rules());
        for (name, _) in COMMANDS {
            assert!(text.contains(&format!("/{name} — ")), "{name}");
        }
        assert!(start("Ada", &rules()).starts_with("Hi Ada!"));
    }
}
