//! Rank-up announcement texts (docs/moderation.md, "Announcements"): templates with
//! placeholders, a template per rank that overrides the default, the same mechanism on
//! both bots. Pure.
//!
//! Placeholders: `{member}` (a mention or the name, as the platform shows it), `{rank}`,
//! `{old_rank}`, `{xp}`, `{next_rank}` and `{next_xp}`. At the top of the ladder there is
//! no next rank: a line naming `{next_rank}` or `{next_xp}` is then left out. A template
//! naming anything else is refused when the settings are loaded. The template's own text
//! is used as written (Markdown on Discord, HTML in Telegram groups); the values are
//! escaped for the platform.

use std::collections::BTreeMap;

use ttfd_shared::Rules;
use ttfd_shared::view::text::thousands;
use ttfd_shared::wire::RankNotice;

/// A template that cannot be used: the setting and what is wrong (the settings turn it
/// into their error naming the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key {key}: {message}")]
pub struct TemplateError {
    pub key: String,
    pub message: String,
}

fn invalid(key: &str, message: impl Into<String>) -> TemplateError {
    TemplateError {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// What a missing next rank renders as, until its line is dropped.
const NONE: char = '\u{0}';

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 6] = ["member", "rank", "old_rank", "xp", "next_rank", "next_xp"];

/// A checked template: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(usize),
}

impl Template {
    /// Parses `text`; `key` names the setting in the error.
    pub fn parse(key: &str, text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| invalid(key, "a `{` has no closing `}`"))?;
            let name = &after[..close];
            let field = PLACEHOLDERS
                .iter()
                .position(|p| *p == name)
                .ok_or_else(|| {
                    invalid(
                        key,
                        format!("{{{name}}} is not one of {{{}}}", PLACEHOLDERS.join("}, {")),
                    )
                })?;
            parts.push(Part::Field(field));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(invalid(key, "must not be empty"));
        }
        Ok(Self(parts))
    }

    /// The text for `values`; a line that names a next rank there is not is left out.
    pub fn render(&self, values: &Values) -> String {
        let text: String = self
            .0
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Field(i) => values.0[*i].as_str(),
            })
            .collect();
        if !text.contains(NONE) {
            return text;
        }
        text.lines()
            .filter(|l| !l.contains(NONE))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The values of the placeholders, in [`PLACEHOLDERS`] order, already formatted (and
/// escaped) for the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values([String; 6]);

impl Values {
    /// The values of `notice`, with `member` as the platform shows a member and
    /// `escape` applied to the rank names.
    pub fn of(
        notice: &RankNotice,
        rules: &Rules,
        member: String,
        escape: impl Fn(&str) -> String,
    ) -> Self {
        let rank = rules.rank(notice.new_rank);
        let next = rank
            .next_xp
            .map(|xp| (rules.rank(rank.index.saturating_add(1)).name, xp));
        Self([
            member,
            escape(&rank.name),
            escape(&rules.rank(notice.old_rank).name),
            thousands(notice.xp),
            next.as_ref()
                .map_or_else(|| NONE.to_string(), |(n, _)| escape(n)),
            next.map_or_else(|| NONE.to_string(), |(_, xp)| thousands(xp)),
        ])
    }
}

/// A default template and the ranks that have their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    default: Template,
    ranks: BTreeMap<String, Template>,
}

impl Templates {
    /// The template of setting `key` and the per-rank ones of `ranks_key.<rank>`, each
    /// checked; a rank must be one of `rules.ranks`.
    pub fn new(
        (key, default): (&str, &str),
        (ranks_key, ranks): (&str, &BTreeMap<String, String>),
        rules: &Rules,
    ) -> Result<Self, TemplateError> {
        let ranks = ranks
            .iter()
            .map(|(rank, text)| {
                let key = format!("{ranks_key}.{rank}");
                if !rules.ranks.iter().any(|r| r.name == *rank) {
                    return Err(invalid(
                        &key,
                        format!("{rank:?} is not a rank of rules.ranks"),
                    ));
                }
                Ok((rank.clone(), Template::parse(&key, text)?))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            default: Template::parse(key, default)?,
            ranks,
        })
    }

    /// The template of a rank-up to `rank` (its name).
    pub fn for_rank(&self, rank: &str) -> &Template {
        self.ranks.get(rank).unwrap_or(&self.default)
    }

    /// The announcement of `notice`.
    pub fn render(
        &self,
        notice: &RankNotice,
        rules: &Rules,
        member: String,
        escape: impl Fn(&str) -> String,
    ) -> String {
        let values = Values::of(notice, rules, member, escape);
        self.for_rank(&rules.rank(notice.new_rank).name)
            .render(&values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(old: u8, new: u8, xp: i64) -> RankNotice {
        RankNotice {
            v: 1,
            id: "rank:1".into(),
            ts: 0,
            uid: 1,
            old_rank: old,
            new_rank: new,
            xp,
            identities: vec![],
            notify: true,
            hidden: false,
        }
    }

    #[test]
    fn placeholders_are_filled_and_a_rank_may_have_its_own_text() {
        let rules = Rules::default();
        let ranks = BTreeMap::from([(
            "S II".to_owned(),
            "👑 {member} tops the ladder: {rank}!".to_owned(),
        )]);
        let t = Templates::new(
            (
                "discord.announce.template",
                "🎉 {member} went from {old_rank} to **{rank}** ({xp} XP); next {next_rank} at {next_xp}",
            ),
            ("discord.announce.ranks", &ranks),
            &rules,
        )
        .expect("valid");
        let same = |s: &str| s.to_owned();
        assert_eq!(
            t.render(&notice(4, 5, 3_600), &rules, "<@42>".into(), same),
            "🎉 <@42> went from E I to **E II** (3,600 XP); next E III at 5,000"
        );
        assert_eq!(
            t.render(&notice(19, 20, 60_000), &rules, "Ann".into(), same),
            "👑 Ann tops the ladder: S II!"
        );
        let html = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;");
        let t = Templates::new(
            ("t", "<b>{rank}</b> for {member}"),
            ("r", &BTreeMap::new()),
            &rules,
        )
        .expect("valid");
        assert_eq!(
            t.render(
                &notice(1, 2, 500),
                &rules,
                "<a href=\"tg://user?id=1\">A&amp;B</a>".into(),
                html
            ),
            "<b>F II</b> for <a href=\"tg://user?id=1\">A&amp;B</a>",
            "the template's HTML is kept, the values come escaped"
        );
        let t = Templates::new(
            ("t", "You are {rank}!\nNext: {next_rank} at {next_xp} XP."),
            ("r", &BTreeMap::new()),
            &rules,
        )
        .expect("valid");
        assert_eq!(
            t.render(&notice(4, 5, 3_600), &rules, String::new(), same),
            "You are E II!\nNext: E III at 5,000 XP."
        );
        assert_eq!(
            t.render(&notice(19, 20, 60_000), &rules, String::new(), same),
            "You are S II!",
            "no next rank: its line goes"
        );
    }

    #[test]
    fn bad_templates_name_their_key() {
        let rules = Rules::default();
        let err = |default: &str, ranks: &[(&str, &str)]| {
            let ranks = ranks
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect();
            Templates::new(
                ("discord.announce.template", default),
                ("discord.announce.ranks", &ranks),
                &rules,
            )
            .expect_err("refused")
            .to_string()
        };
        assert!(err("{who} ranked up", &[]).contains("discord.announce.template"));
        assert!(err("{member", &[]).contains("closing"));
        assert!(err("", &[]).contains("must not be empty"));
        assert!(err("{member}", &[("Z IX", "x")]).contains("discord.announce.ranks.Z IX"));
        assert!(err("{member}", &[("S I", "{nope}")]).contains("discord.announce.ranks.S I"));
    }
}
