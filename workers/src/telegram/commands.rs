//! The bot's commands: parsing a message text into a [`Command`]. Pure.

use ttfd_shared::view::Period;

use crate::moderation::Verb;

/// The commands, with the one-line descriptions shown by `/help` and in Telegram's
/// command menu (`setMyCommands`).
pub const COMMANDS: [(&str, &str); 8] = [
    ("start", "Start the bot: rank-ups come to you privately"),
    ("help", "What the bot does"),
    (
        "rank",
        "Your rank, XP and linked accounts; /rank details [week|month|season|all]: where your XP came from",
    ),
    ("top", "The leaderboard: /top, /top week, /top month"),
    (
        "link",
        "Link Discord or the website: /link for a code, /link CODE to enter one",
    ),
    (
        "notify",
        "Rank-up announcements for you: /notify off, /notify on",
    ),
    (
        "privacy",
        "Off the leaderboards, profile private: /privacy hide, /privacy show",
    ),
    (
        "gdpr",
        "Your data: /gdpr export (a file, privately), /gdpr delete (erase it)",
    ),
];

/// A command addressed to this bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Start,
    Help,
    /// `/rank` or `/rank details [period]`: the argument as typed.
    Rank(String),
    /// `/top [week|month|all]`: the argument as typed.
    Top(String),
    /// `/link` (issue a code) or `/link CODE` (redeem one): the argument as typed.
    Link(String),
    /// `/notify on|off`: the argument as typed.
    Notify(String),
    /// `/privacy hide|show`: the argument as typed.
    Privacy(String),
    /// `/gdpr export`: the argument as typed.
    Gdpr(String),
    /// `/xp add|remove|set|reset [N] reason`, by a group administrator in reply to the
    /// member's message (docs/moderation.md): the arguments as typed.
    Xp(String),
    /// A command of ours the bot does not know (answered with help in private chats).
    Unknown(String),
}

/// What a message text says, when it is a command for this bot.
///
/// `/rank@ttfd_bot` is for the bot named `ttfd_bot` only; `/rank` without a mention
/// is for every bot in the chat. `None`: not a command, or one for another bot.
pub fn parse(text: &str, bot_username: &str) -> Option<Command> {
    let rest = text.strip_prefix('/')?;
    let (head, args) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest, ""),
    };
    let (name, mention) = match head.split_once('@') {
        Some((name, bot)) => (name, Some(bot)),
        None => (head, None),
    };
    if let Some(bot) = mention
        && !bot.eq_ignore_ascii_case(bot_username)
    {
        return None;
    }
    if name.is_empty() {
        return None;
    }
    let name = name.to_ascii_lowercase();
    Some(match name.as_str() {
        "start" => Command::Start,
        "help" => Command::Help,
        "rank" => Command::Rank(args.to_owned()),
        "top" => Command::Top(args.to_owned()),
        "link" => Command::Link(args.to_owned()),
        "xp" => Command::Xp(args.to_owned()),
        "notify" => Command::Notify(args.to_owned()),
        "privacy" => Command::Privacy(args.to_owned()),
        "gdpr" => Command::Gdpr(args.to_owned()),
        _ => Command::Unknown(name),
    })
}

/// The period of `/top <arg>`; empty means all time. `Err` holds the word not understood.
pub fn parse_period(arg: &str) -> Result<Period, String> {
    match arg.trim().to_ascii_lowercase().as_str() {
        "" | "all" | "alltime" | "all-time" => Ok(Period::All),
        "week" | "w" => Ok(Period::Week),
        "month" | "m" => Ok(Period::Month),
        "season" | "s" => Ok(Period::Season),
        other => Err(other.chars().take(32).collect()),
    }
}

/// `/rank <arg>`: `None` for the rank (no argument), the period of `details [period]`
/// (this week when left out). `Err` holds the word not understood.
pub fn parse_rank(arg: &str) -> Result<Option<Period>, String> {
    let mut words = arg.split_whitespace();
    match words.next().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(None),
        Some("details" | "detail" | "statement") => match words.next() {
            None => Ok(Some(Period::Week)),
            Some(period) => parse_period(period).map(Some),
        },
        Some(other) => Err(other.chars().take(32).collect()),
    }
}

/// `/notify on|off`: `Some(true)` for on (also yes), `Some(false)` for off (also no).
pub fn parse_switch(arg: &str) -> Option<bool> {
    match arg.trim().to_ascii_lowercase().as_str() {
        "on" | "yes" => Some(true),
        "off" | "no" => Some(false),
        _ => None,
    }
}

/// `/privacy hide|show`: `Some(true)` to hide (also off), `Some(false)` to show (also on).
pub fn parse_privacy(arg: &str) -> Option<bool> {
    match arg.trim().to_ascii_lowercase().as_str() {
        "hide" | "off" => Some(true),
        "show" | "on" => Some(false),
        _ => None,
    }
}

/// The arguments of `/xp`: the verb, its number (not for `reset`) and the reason.
/// `None` when they do not read that way.
pub fn parse_xp(args: &str) -> Option<(Verb, String)> {
    let mut words = args.split_whitespace();
    let verb = words.next().unwrap_or_default().to_ascii_lowercase();
    let mut number = || {
        words
            .next()
            .and_then(|w| w.replace(',', "").parse::<i64>().ok())
    };
    let verb = match verb.as_str() {
        "add" => Verb::Add(number().and_then(|n| u32::try_from(n).ok())?),
        "remove" => Verb::Remove(number().and_then(|n| u32::try_from(n).ok())?),
        "set" => Verb::Set(number()?),
        "reset" => Verb::Reset,
        _ => return None,
    };
    let reason = words.collect::<Vec<_>>().join(" ");
    Some((verb, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: &str = "ttfd_bot";

    #[test]
    fn commands_parse_with_and_without_arguments() {
        assert_eq!(parse("/start", BOT), Some(Command::Start));
        assert_eq!(parse("/help", BOT), Some(Command::Help));
        assert_eq!(parse("/rank", BOT), Some(Command::Rank(String::new())));
        assert_eq!(parse("/top", BOT), Some(Command::Top(String::new())));
        assert_eq!(parse("/top  week ", BOT), Some(Command::Top("week".into())));
        assert_eq!(parse("/link", BOT), Some(Command::Link(String::new())));
        assert_eq!(
            parse("/link ab3-k7q", BOT),
            Some(Command::Link("ab3-k7q".into()))
        );
        assert_eq!(
            parse("/link\nAB3K7Q", BOT),
            Some(Command::Link("AB3K7Q".into()))
        );
    }

    #[test]
    fn rank_details_names_a_period_this_week_by_default() {
        assert_eq!(parse_rank(""), Ok(None));
        assert_eq!(parse_rank("details"), Ok(Some(Period::Week)));
        assert_eq!(parse_rank("DETAILS month"), Ok(Some(Period::Month)));
        assert_eq!(parse_rank("details season"), Ok(Some(Period::Season)));
        assert_eq!(parse_rank("details all"), Ok(Some(Period::All)));
        assert_eq!(parse_rank("details decade"), Err("decade".into()));
        assert_eq!(parse_rank("me"), Err("me".into()));
    }

    #[test]
    fn deep_link_payloads_of_start_are_ignored() {
        assert_eq!(parse("/start link", BOT), Some(Command::Start));
    }

    #[test]
    fn a_mention_of_this_bot_is_accepted_in_any_case() {
        assert_eq!(
            parse("/rank@ttfd_bot", BOT),
            Some(Command::Rank(String::new()))
        );
        assert_eq!(
            parse("/RANK@TTFD_Bot", BOT),
            Some(Command::Rank(String::new()))
        );
        assert_eq!(
            parse("/top@ttfd_bot month", BOT),
            Some(Command::Top("month".into()))
        );
    }

    #[test]
    fn commands_for_other_bots_and_plain_text_are_not_ours() {
        assert_eq!(parse("/rank@other_bot", BOT), None);
        assert_eq!(parse("hello /rank", BOT), None);
        assert_eq!(parse("/", BOT), None);
        assert_eq!(parse("/@ttfd_bot", BOT), None);
        assert_eq!(parse("", BOT), None);
    }

    #[test]
    fn unknown_commands_are_kept_for_a_helpful_answer() {
        assert_eq!(parse("/Stats", BOT), Some(Command::Unknown("stats".into())));
    }

    #[test]
    fn xp_arguments_are_a_verb_a_number_and_a_reason() {
        assert_eq!(
            parse("/xp add 500 event winner", BOT),
            Some(Command::Xp("add 500 event winner".into()))
        );
        assert_eq!(
            parse_xp("add 1,500 event  winner"),
            Some((Verb::Add(1500), "event winner".into()))
        );
        assert_eq!(
            parse_xp("Remove 50 spam"),
            Some((Verb::Remove(50), "spam".into()))
        );
        assert_eq!(
            parse_xp("set -20 fix"),
            Some((Verb::Set(-20), "fix".into()))
        );
        assert_eq!(
            parse_xp("reset start over"),
            Some((Verb::Reset, "start over".into()))
        );
        assert_eq!(
            parse_xp("add 5"),
            Some((Verb::Add(5), String::new())),
            "the service asks for a reason"
        );
        assert_eq!(parse_xp("add -5 x"), None);
        assert_eq!(parse_xp("add many x"), None);
        assert_eq!(parse_xp("give 5 x"), None);
        assert_eq!(parse_xp(""), None);
    }

    #[test]
    fn periods_are_words() {
        assert_eq!(parse_period(""), Ok(Period::All));
        assert_eq!(parse_period("all"), Ok(Period::All));
        assert_eq!(parse_period("Week"), Ok(Period::Week));
        assert_eq!(parse_period(" month "), Ok(Period::Month));
        assert_eq!(parse_period("year"), Err("year".into()));
    }
}
