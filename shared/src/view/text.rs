//! Profiles and leaderboards as text for people: the one renderer behind `ttfd user`,
//! `ttfd top`, the demo, Discord's `/rank` `/top` and Telegram's `/rank` `/top`. The
//! [`Markup`] says only how emphasis and names are written; the words, numbers and
//! order are the same everywhere.

use std::fmt::Write as _;

use super::{
    AuditEntry, Period, PeriodStanding, Pref, Profile, SeasonView, Standing, Statement, Tally,
};
use crate::rules::Rules;
use crate::wire::{SeasonNotice, Unpaid, WireIdentity};

/// How the text is marked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    /// Plain text: terminals and Telegram replies (sent without a parse mode).
    Plain,
    /// Discord markdown: emphasis in `**`, markdown in names escaped.
    Markdown,
}

impl Markup {
    fn strong(self, s: &str) -> String {
        match self {
            Markup::Plain => s.to_owned(),
            Markup::Markdown => format!("**{s}**"),
        }
    }

    /// A command as the member types it.
    fn command(self, s: &str) -> String {
        match self {
            Markup::Plain => s.to_owned(),
            Markup::Markdown => format!("`{s}`"),
        }
    }

    /// A name as typed, whatever characters it holds.
    pub fn name(self, s: &str) -> String {
        match self {
            Markup::Plain => s.to_owned(),
            Markup::Markdown => escape_markdown(s),
        }
    }
}

/// Discord markdown and mentions in a name are shown as typed.
pub fn escape_markdown(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(
            c,
            '*' | '_' | '~' | '`' | '|' | '>' | '#' | '[' | ']' | '(' | ')' | '\\' | '<' | '@'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `12345` → `12,345`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// `4500` seconds → `1 h 15 min`.
pub fn duration(seconds: i64) -> String {
    let (h, m) = (seconds / 3600, seconds % 3600 / 60);
    match (h, m) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// A platform as people call it.
pub fn platform_name(p: &str) -> String {
    match p {
        "discord" => "Discord".into(),
        "telegram" => "Telegram".into(),
        "website" => "the website".into(),
        other => other.into(),
    }
}

/// The name a leaderboard shows for a user without a display name.
pub fn fallback_name(uid: i64) -> String {
    format!("user #{uid}")
}

/// A profile, headed by `name`:
///
/// ```text
/// Ada
/// Rank C II ★★ · 16,900 XP
/// ▰▰▱▱▱▱▱▱▱▱ 21% to C III (650 / 3,000)
/// Peak C II · 4,500 coins
/// 1,204 messages · 3 h 5 min in voice · 4 games (1 won)
/// #12 of 3,456 all time · #3 of 80 this week · #5 of 140 this month
/// Linked: Discord, Telegram
/// ```
pub fn profile(name: &str, p: &Profile, rules: &Rules, markup: Markup) -> String {
    let r = &p.rank;
    let mut out = markup.strong(&markup.name(name));
    let _ = write!(
        out,
        "\nRank {} {} · {} XP\n",
        markup.strong(&r.name),
        "★".repeat(usize::from(r.stars)),
        thousands(p.xp)
    );
    match r.next_xp {
        Some(next) if next > r.required_xp => {
            let span = next - r.required_xp;
            let done = (p.xp - r.required_xp).clamp(0, span);
            let filled = usize::try_from(done * 10 / span).unwrap_or(0).min(10);
            let _ = writeln!(
                out,
                "{}{} {}% to {} ({} / {})",
                "▰".repeat(filled),
                "▱".repeat(10 - filled),
                done * 100 / span,
                rules.rank(r.index.saturating_add(1)).name,
                thousands(done),
                thousands(span)
            );
        }
        _ => out.push_str("The highest rank: nothing above it.\n"),
    }
    let _ = writeln!(
        out,
        "Peak {} · {} coins",
        rules.rank(p.peak_rank).name,
        thousands(p.coins)
    );
    let _ = writeln!(
        out,
        "{} messages · {} in voice · {} games ({} won)",
        thousands(p.messages),
        duration(p.voice_seconds),
        thousands(p.games_played),
        thousands(p.games_won)
    );
    let places: Vec<String> = p.standings.iter().map(standing).collect();
    if p.hidden {
        // Only the member reads a hidden profile (`Profile::shown_to`).
        let _ = writeln!(
            out,
            "Hidden: on no leaderboard, and only you see this profile.{}",
            if places.is_empty() {
                String::new()
            } else {
                format!(" Shown, you would be {}.", places.join(" · "))
            }
        );
    } else if !places.is_empty() {
        let _ = writeln!(out, "{}", places.join(" · "));
    }
    let mut platforms: Vec<String> = p
        .identities
        .iter()
        .map(|i| platform_name(&i.platform))
        .collect();
    platforms.dedup();
    let _ = write!(out, "Linked: {}", platforms.join(", "));
    out
}

/// What a member hears after switching a preference, on any bot.
pub fn pref_said(pref: Pref, markup: Markup) -> String {
    match pref {
        Pref::Notify(true) => {
            "Rank-up announcements for you are on (everywhere you are linked).".into()
        }
        Pref::Notify(false) => format!(
            "Rank-up announcements for you are off, on every platform. {} turns them back on.",
            markup.command("/notify on")
        ),
        Pref::Hidden(true) => format!(
            "You are hidden, on every platform: off every leaderboard, and your profile is \
             yours alone to see. You keep earning XP. {} shows you again.",
            markup.command("/privacy show")
        ),
        Pref::Hidden(false) => {
            "You are shown again: on the leaderboards, with a public profile.".into()
        }
    }
}

/// A place in one period: "#12 of 3,456 this week", "not ranked this week".
pub fn standing(s: &PeriodStanding) -> String {
    match s.position {
        Some(n) => format!(
            "#{} of {} {}",
            thousands(i64::try_from(n).unwrap_or(i64::MAX)),
            thousands(i64::try_from(s.ranked).unwrap_or(i64::MAX)),
            s.period.words()
        ),
        None => format!("not ranked {}", s.period.words()),
    }
}

/// A leaderboard page:
///
/// ```text
/// Leaderboard, this week
/// 1. Ada — 1,250 XP · F III
/// 2. user #7 — 980 XP · F II
/// ```
pub fn top(words: &str, rows: &[Standing], markup: Markup) -> String {
    if rows.is_empty() {
        return format!("Nobody has earned XP {words} yet.");
    }
    let mut out = markup.strong(&format!("Leaderboard, {words}"));
    for s in rows {
        let name = s
            .display_name
            .as_deref()
            .map_or_else(|| fallback_name(s.uid), |n| markup.name(n));
        let _ = write!(
            out,
            "\n{}. {name} — {} XP · {}",
            s.position,
            thousands(s.xp),
            s.rank
        );
    }
    out
}

/// The leaderboard of the current `period`, as the bots' `/top` shows it: the current
/// season's is empty when no season is on too.
pub fn period_top(period: Period, rows: &[Standing], markup: Markup) -> String {
    if rows.is_empty() && period == Period::Season {
        return "No season is on, or nobody has earned XP in it yet.".into();
    }
    top(period.words(), rows, markup)
}

/// Days a bot's statement lists, the newest (a page lists them all).
const STATEMENT_DAYS: usize = 7;

/// A stretch of voice time: `45 s` under a minute, else as [`duration`].
fn voice_time(seconds: i64) -> String {
    if seconds < 60 {
        format!("{seconds} s")
    } else {
        duration(seconds)
    }
}

/// Why voice time paid nothing, as the statement says it.
pub fn unpaid_words(why: Unpaid) -> &'static str {
    match why {
        Unpaid::Afk => "in the AFK channel",
        Unpaid::Deafened => "in voice while deafened",
        Unpaid::Muted => "in voice while muted",
        Unpaid::Alone => "alone in voice",
    }
}

/// The XP of `t` by source, one line each, leaving out sources with nothing.
pub fn sources(t: &Tally) -> Vec<String> {
    let mut lines = Vec::new();
    if t.messages_xp != 0 || t.messages != 0 {
        lines.push(format!(
            "Messages: {} XP ({} message{})",
            thousands(t.messages_xp),
            thousands(t.messages),
            if t.messages == 1 { "" } else { "s" }
        ));
    }
    if t.voice_xp != 0 || t.voice_seconds != 0 {
        lines.push(format!(
            "Voice: {} XP ({})",
            thousands(t.voice_xp),
            voice_time(t.voice_seconds)
        ));
    }
    if t.games_xp != 0 || t.games_played != 0 {
        lines.push(format!(
            "Games: {} XP ({} played)",
            thousands(t.games_xp),
            thousands(t.games_played)
        ));
    }
    if t.grants_xp != 0 {
        lines.push(format!(
            "Given by moderators and seasons: {}{} XP",
            if t.grants_xp > 0 { "+" } else { "" },
            thousands(t.grants_xp)
        ));
    }
    if t.unitemised() != 0 {
        lines.push(format!(
            "Earned before statements were kept: {} XP",
            thousands(t.unitemised())
        ));
    }
    lines
}

/// The voice time of `t` that paid nothing, one line per reason: `38 min in voice
/// while muted: no XP`.
pub fn unpaid(t: &Tally) -> Vec<String> {
    Unpaid::ALL
        .into_iter()
        .filter(|w| t.unpaid_voice.get(*w) > 0)
        .map(|w| {
            format!(
                "{} {}: no XP",
                voice_time(t.unpaid_voice.get(w)),
                unpaid_words(w)
            )
        })
        .collect()
}

/// The span of a statement in words: "this week (2026-12-07 to 2026-12-13)", "season
/// winter (…)", "all time".
pub fn statement_span(s: &Statement) -> String {
    let words = match &s.season {
        Some(name) => format!("season {name}"),
        None => s.period.words().to_owned(),
    };
    match (&s.from, &s.to) {
        (Some(from), Some(to)) => format!("{words} ({from} to {to})"),
        _ => words,
    }
}

/// A member's XP statement, headed by `name`, as the bots' `/rank details` and `ttfd
/// statement` show it:
///
/// ```text
/// Ada: where the XP came from, this week (2026-12-07 to 2026-12-13): 412 XP
/// Messages: 240 XP (312 messages)
/// Voice: 125 XP (2 h 5 min)
/// 38 min in voice while muted: no XP
/// By platform: Discord 300 XP · Telegram 112 XP
/// Days: 2026-12-05 140 XP · 2026-12-06 272 XP
/// ```
pub fn statement(name: &str, s: &Statement, markup: Markup) -> String {
    let mut out = format!(
        "{}: where the XP came from, {}: {}",
        markup.name(name),
        statement_span(s),
        markup.strong(&format!("{} XP", thousands(s.total.xp)))
    );
    if s.days.is_empty() {
        out.push_str("\nNothing yet in this period.");
        return out;
    }
    for line in sources(&s.total).into_iter().chain(unpaid(&s.total)) {
        let _ = write!(out, "\n{line}");
    }
    let platforms: Vec<String> = s
        .platforms
        .iter()
        .map(|p| {
            format!(
                "{} {} XP",
                platform_name(&p.platform),
                thousands(p.tally.xp)
            )
        })
        .collect();
    let _ = write!(out, "\nBy platform: {}", platforms.join(" · "));
    let shown = s.days.len().min(STATEMENT_DAYS);
    let days: Vec<String> = s.days[s.days.len() - shown..]
        .iter()
        .map(|d| format!("{} {} XP", d.day, thousands(d.tally.xp)))
        .collect();
    let _ = write!(out, "\nDays: {}", days.join(" · "));
    if s.days.len() > shown {
        let _ = write!(out, " (and {} earlier)", s.days.len() - shown);
    }
    out
}

/// A season in a few lines: name, days, status, members ranked, and its champions.
///
/// ```text
/// winter-2026 · 2026-12-01 to 2027-02-28 · closed · 1,204 ranked
///   1. Ada — 12,500 XP
/// ```
pub fn season(s: &SeasonView, markup: Markup) -> String {
    let mut out = format!(
        "{} · {} to {} · {} · {} ranked",
        markup.strong(&s.name),
        s.from,
        s.to,
        s.status,
        thousands(s.ranked)
    );
    for c in &s.champions {
        let name = c
            .display_name
            .as_deref()
            .map_or_else(|| fallback_name(c.uid), |n| markup.name(n));
        let _ = write!(out, "\n  {}. {name} — {} XP", c.position, thousands(c.xp));
    }
    out
}

/// The announcement of a closed season, the same on both bots:
///
/// ```text
/// 🏆 Season winter-2026 is over (2026-12-01 to 2027-02-28, 1,204 members ranked).
/// 🥇 Ada — 12,500 XP
/// 🥈 Bo — 9,000 XP
/// ```
pub fn season_closed(n: &SeasonNotice, markup: Markup) -> String {
    let name = bare_name(&n.season);
    let what = match n.period {
        Period::Week => "Week",
        Period::Month => "Month",
        _ => "Season",
    };
    let mut out = format!(
        "🏆 {what} {} is over ({} to {}, {} ranked).",
        markup.strong(name),
        n.from,
        n.to,
        match n.ranked {
            1 => "1 member".to_owned(),
            r => format!("{} members", thousands(r)),
        }
    );
    if n.champions.is_empty() {
        out.push_str(" Nobody earned XP in it.");
    }
    for c in &n.champions {
        let medal = match c.position {
            1 => "🥇".to_owned(),
            2 => "🥈".to_owned(),
            3 => "🥉".to_owned(),
            p => format!("{p}."),
        };
        let name = c
            .display_name
            .as_deref()
            .map_or_else(|| fallback_name(c.uid), |n| markup.name(n));
        let _ = write!(out, "\n{medal} {name} — {} XP", thousands(c.xp));
    }
    out
}

/// What a closing of `period` named `name` is called in its reward's reason and in
/// logs: "season autumn", "week 2026-W49", "month 2026-12".
pub fn closing_words(period: Period, name: &str) -> String {
    format!("{} {}", period.as_str(), bare_name(name))
}

/// A closing's name without a week's or month's key prefix: `week:2026-W49` -> `2026-W49`.
fn bare_name(name: &str) -> &str {
    name.split_once(':').map_or(name, |(_, rest)| rest)
}

/// One audit entry on one line: when, what, about whom, by whom, why, and its event id.
pub fn audit_entry(e: &AuditEntry) -> String {
    let who = |i: &WireIdentity| format!("{}:{}", i.platform, i.user);
    let what = match (e.kind.as_str(), e.amount, &e.other) {
        ("xp", Some(a), _) => {
            let sign = if a > 0 { "+" } else { "" };
            format!("{sign}{} XP to {}", thousands(i64::from(a)), who(&e.member))
        }
        ("unlink", _, Some(o)) => format!("unlinked {} from {}", who(&e.member), who(o)),
        (_, _, Some(o)) => format!("linked {} with {}", who(&e.member), who(o)),
        _ => format!("{} about {}", e.kind, who(&e.member)),
    };
    let by = e.by.as_ref().map_or_else(
        || "by an unnamed operator".to_owned(),
        |b| format!("by {}", who(b)),
    );
    let reason = e
        .reason
        .as_deref()
        .map(|r| format!(": \"{r}\""))
        .unwrap_or_default();
    format!("{} {what} {by}{reason} ({})", e.at, e.event_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WireIdentity;

    #[test]
    fn a_statement_says_where_the_xp_came_from_and_why_voice_paid_nothing() {
        use crate::view::UnpaidVoice;
        let day = |d: u8, platform: &str, t: Tally| {
            (
                platform.to_owned(),
                time::Date::from_calendar_date(2026, time::Month::December, d).expect("a date"),
                t,
            )
        };
        let rows = (1..=9).map(|d| {
            day(
                d,
                if d % 2 == 0 { "telegram" } else { "discord" },
                Tally {
                    xp: 30,
                    messages_xp: 20,
                    voice_xp: 10,
                    messages: 3,
                    voice_seconds: 150,
                    unpaid_voice: UnpaidVoice {
                        muted: 2280 / 9,
                        alone: if d == 1 { 45 } else { 0 },
                        ..UnpaidVoice::default()
                    },
                    ..Tally::default()
                },
            )
        });
        let s = Statement::of(Period::All, None, None, rows);
        let text = statement("Ada*", &s, Markup::Markdown);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "Ada\\*: where the XP came from, all time: **270 XP**",
                "Messages: 180 XP (27 messages)",
                "Voice: 90 XP (22 min)",
                "37 min in voice while muted: no XP",
                "45 s alone in voice: no XP",
                "By platform: Discord 150 XP · Telegram 120 XP",
                "Days: 2026-12-03 30 XP · 2026-12-04 30 XP · 2026-12-05 30 XP · \
                 2026-12-06 30 XP · 2026-12-07 30 XP · 2026-12-08 30 XP · 2026-12-09 30 XP \
                 (and 2 earlier)",
            ]
        );
        let empty = Statement::of(Period::Week, None, None, std::iter::empty());
        assert!(statement("Ada", &empty, Markup::Plain).ends_with("Nothing yet in this period."));
    }

    fn ada(xp: i64, rules: &Rules) -> Profile {
        let identities = ["discord", "telegram", "telegram"]
            .iter()
            .map(|p| WireIdentity {
                platform: (*p).into(),
                user: "1".into(),
            })
            .collect();
        Profile {
            messages: 1204,
            voice_seconds: 11_100,
            games_played: 4,
            games_won: 1,
            standings: vec![
                PeriodStanding {
                    period: Period::All,
                    key: "all".into(),
                    position: Some(12),
                    xp,
                    ranked: 3456,
                },
                PeriodStanding {
                    period: Period::Week,
                    key: "week:2026-W49".into(),
                    position: None,
                    xp: 0,
                    ranked: 80,
                },
            ],
            ..Profile::with_xp(rules, 1, Some("Ada".into()), xp, identities)
        }
    }

    #[test]
    fn a_profile_reads_the_same_in_plain_text_and_markdown_but_for_emphasis() {
        let rules = Rules::default();
        let p = ada(16_900, &rules);
        let plain = profile("Ada", &p, &rules, Markup::Plain);
        assert_eq!(
            plain,
            "Ada\nRank C II ★★ · 16,900 XP\n▰▰▱▱▱▱▱▱▱▱ 21% to C III (650 / 3,000)\n\
             Peak C II · 4,500 coins\n1,204 messages · 3 h 5 min in voice · 4 games (1 won)\n\
             #12 of 3,456 all time · not ranked this week\nLinked: Discord, Telegram"
        );
        let md = profile("Ada_", &p, &rules, Markup::Markdown);
        assert!(
            md.starts_with("**Ada\\_**\nRank **C II** ★★ · 16,900 XP\n"),
            "{md}"
        );
        assert!(md.ends_with("Linked: Discord, Telegram"), "{md}");
    }

    #[test]
    fn the_top_rank_has_no_progress_bar() {
        let rules = Rules::default();
        let text = profile("Ada", &ada(60_000, &rules), &rules, Markup::Plain);
        assert!(text.contains("Rank S II"), "{text}");
        assert!(
            text.contains("The highest rank: nothing above it."),
            "{text}"
        );
    }

    #[test]
    fn a_leaderboard_names_the_period_and_falls_back_to_the_uid() {
        let rows = [
            Standing {
                position: 1,
                uid: 1,
                display_name: Some("*Ada*".into()),
                xp: 1250,
                rank: "F III".into(),
            },
            Standing {
                position: 2,
                uid: 7,
                display_name: None,
                xp: 980,
                rank: "F II".into(),
            },
        ];
        assert_eq!(
            top(Period::Week.words(), &rows, Markup::Plain),
            "Leaderboard, this week\n1. *Ada* — 1,250 XP · F III\n2. user #7 — 980 XP · F II"
        );
        assert!(
            top(Period::All.words(), &rows, Markup::Markdown)
                .starts_with("**Leaderboard, all time**\n1. \\*Ada\\* — 1,250 XP")
        );
        assert_eq!(
            top(Period::Month.words(), &[], Markup::Plain),
            "Nobody has earned XP this month yet."
        );
    }

    #[test]
    fn numbers_get_thousands_separators_and_durations_hours() {
        assert_eq!(thousands(-1_234_567), "-1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(duration(59), "0 min");
        assert_eq!(duration(7200), "2 h");
    }

    #[test]
    fn a_closed_season_names_its_champions_with_medals() {
        use crate::wire::{SeasonChampion, SeasonNotice};
        let champion = |position, name: Option<&str>, xp| SeasonChampion {
            position,
            uid: 7,
            xp,
            display_name: name.map(str::to_owned),
            identities: Vec::new(),
        };
        let mut n = SeasonNotice {
            v: 1,
            period: Period::Season,
            id: "season:winter".into(),
            ts: 0,
            season: "winter".into(),
            from: "2026-12-01".into(),
            to: "2027-02-28".into(),
            ranked: 1204,
            champions: vec![champion(1, Some("Ada"), 12_500), champion(2, None, 9_000)],
            previous: Vec::new(),
        };
        assert_eq!(
            season_closed(&n, Markup::Markdown),
            "🏆 Season **winter** is over (2026-12-01 to 2027-02-28, 1,204 members ranked).\n\
             🥇 Ada — 12,500 XP\n🥈 user #7 — 9,000 XP"
        );
        let week = SeasonNotice {
            period: Period::Week,
            season: "week:2026-W49".into(),
            from: "2026-11-30".into(),
            to: "2026-12-06".into(),
            ..n.clone()
        };
        assert!(
            season_closed(&week, Markup::Plain)
                .starts_with("🏆 Week 2026-W49 is over (2026-11-30 to 2026-12-06,"),
            "{}",
            season_closed(&week, Markup::Plain)
        );
        n.champions.clear();
        n.ranked = 0;
        assert!(
            season_closed(&n, Markup::Plain)
                .ends_with("0 members ranked). Nobody earned XP in it.")
        );
    }
}
