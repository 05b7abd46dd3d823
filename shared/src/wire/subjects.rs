//! Subject and stream names under a configurable prefix (SPEC 4 and 6).

/// Names of everything on NATS for one installation prefix (default `ttfd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// `prefix` must be a single subject token (validated by the config layer).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream name for `what` (`EVENTS`, `NOTIFY`, `DLQ`): `<PREFIX>_<WHAT>`.
    pub fn stream(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix.to_uppercase())
    }

    pub fn events_stream(&self) -> String {
        self.stream("EVENTS")
    }

    pub fn notify_stream(&self) -> String {
        self.stream("NOTIFY")
    }

    pub fn dlq_stream(&self) -> String {
        self.stream("DLQ")
    }

    /// `<prefix>.events.<platform>.<kind>`
    pub fn event(&self, platform: &str, kind: &str) -> String {
        format!("{}.events.{platform}.{kind}", self.prefix)
    }

    /// `<prefix>.dlq.<platform>.<kind>`
    pub fn dlq(&self, platform: &str, kind: &str) -> String {
        format!("{}.dlq.{platform}.{kind}", self.prefix)
    }

    /// `<prefix>.notify.<what>`
    pub fn notify(&self, what: &str) -> String {
        format!("{}.notify.{what}", self.prefix)
    }

    /// `<prefix>.query.<what>`: the query service's request subjects (docs/query.md).
    pub fn query(&self, what: &str) -> String {
        format!("{}.query.{what}", self.prefix)
    }

    /// The `(platform, kind)` tokens of an events subject, when it has exactly two
    /// tokens after `<prefix>.events.`.
    pub fn parse_event<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".events.")?;
        let (platform, kind) = rest.split_once('.')?;
        (!platform.is_empty() && !kind.is_empty() && !kind.contains('.'))
            .then_some((platform, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let s = Subjects::new("t1");
        assert_eq!(s.events_stream(), "T1_EVENTS");
        assert_eq!(s.dlq_stream(), "T1_DLQ");
        assert_eq!(s.event("discord", "voice"), "t1.events.discord.voice");
        assert_eq!(s.notify("rank"), "t1.notify.rank");
        assert_eq!(s.dlq("a", "b"), "t1.dlq.a.b");
    }

    #[test]
    fn event_subjects_need_exactly_two_tokens() {
        let s = Subjects::new("ttfd");
        assert_eq!(
            s.parse_event("ttfd.events.discord.message"),
            Some(("discord", "message"))
        );
        assert_eq!(s.parse_event("ttfd.events.discord"), None);
        assert_eq!(s.parse_event("ttfd.events.a.b.c"), None);
        assert_eq!(s.parse_event("other.events.a.b"), None);
    }
}
