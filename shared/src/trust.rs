//! Who may claim what: the trust model of docs/security.md as one pure rule.
//!
//! JetStream does not say who published a message. The NATS subject says which
//! platform's publisher it came through (NATS permissions tie each client to its
//! platform's subjects), and a signature says which trusted principal vouches for it (the
//! sync consumer checks it; see `workers/src/broker/trust.rs`). [`admit`] decides, from
//! that, whether an event's claim counts: a platform's publisher speaks for its own
//! platform's members and their activity only; links across platforms come from whoever
//! proved both sides; XP by hand comes from moderators and operators.

use std::fmt;
use std::str::FromStr;

use crate::wire::{Event, Payload, Proof, Rejection};

/// Who vouches for an event, as far as the sync consumer can prove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Publisher {
    /// No valid signature: a platform's publisher (a bot, the web role's ingest API, an
    /// outside publisher), trusted as far as the subject's platform goes.
    Platform,
    /// The outbox relay of the sync role: links the web role proved (OAuth, the Telegram
    /// Login widget) and link codes redeemed in a transaction.
    Relay,
    /// Moderators' tools: XP granted or taken by hand.
    Moderator,
    /// Operators: the CLI with admin credentials (`ttfd import`, admin links, grants).
    Admin,
}

impl Publisher {
    /// The principals that sign, by name (as in `trust.keys.<name>`).
    pub const SIGNED: [Publisher; 3] = [Publisher::Relay, Publisher::Moderator, Publisher::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Publisher::Platform => "platform",
            Publisher::Relay => "relay",
            Publisher::Moderator => "moderator",
            Publisher::Admin => "admin",
        }
    }
}

impl fmt::Display for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Publisher {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Publisher::SIGNED
            .into_iter()
            .chain([Publisher::Platform])
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not one of platform, relay, moderator, admin"))
    }
}

/// The id namespaces of the trusted principals' events (`link:code:..` of redeemed
/// codes, `web:link:oauth:..` of sign-in links, `import:..`, `mod:xp:..` of the
/// moderators' tools, `season:..` of a closed season's rewards): no platform of that
/// name publishes, so nobody can claim their ids first.
pub const RESERVED_PLATFORMS: [&str; 5] = ["link", "web", "import", "mod", "season"];

/// The id namespace of a closed season's rewards (docs/seasons.md):
/// `season:<name>:<position>`, queued by the closing's transaction.
pub const SEASON_REWARD_PREFIX: &str = "season:";

/// `Ok` when `publisher` may make the claim of `event`; else the reason, for the
/// dead-letter stream.
///
/// A platform's publisher also speaks only in its own id namespace: the event id
/// starts with `<platform>:` (as every id of the bots does), so that no publisher can
/// take an id another publisher's real event will have, which would then be dropped as
/// a duplicate.
pub fn admit(publisher: Publisher, event: &Event) -> Result<(), Rejection> {
    claim(publisher, event)?;
    let platform = event.identity.platform.as_str();
    if publisher != Publisher::Platform {
        return Ok(());
    }
    if RESERVED_PLATFORMS.contains(&platform) {
        return Err(Rejection::new(
            "not_permitted",
            format!("platform {platform:?} is reserved for the ids of trusted publishers"),
        ));
    }
    if !event
        .id
        .as_str()
        .strip_prefix(platform)
        .is_some_and(|rest| rest.starts_with(':'))
    {
        return Err(Rejection::new(
            "not_permitted",
            format!(
                "the id {:?} is not in the publisher's namespace: a {platform} publisher's \
                 ids start with \"{platform}:\"",
                event.id.as_str()
            ),
        ));
    }
    Ok(())
}

/// Whether `publisher` may make the claim of `event`'s kind and identities.
fn claim(publisher: Publisher, event: &Event) -> Result<(), Rejection> {
    use Publisher::*;
    let refuse = |what: String| {
        Err(Rejection::new(
            "not_permitted",
            format!("{what}; this publisher is {publisher}"),
        ))
    };
    match &event.payload {
        // A member's own preferences (SPEC 7.3): whoever speaks for the member.
        Payload::Message { .. }
        | Payload::Voice { .. }
        | Payload::VoiceUnpaid { .. }
        | Payload::Game { .. }
        | Payload::Prefs { .. }
        // A member's own erasure (SPEC 7.4): whoever speaks for the member.
        | Payload::Forget { .. } => Ok(()),
        Payload::Xp { .. } => match publisher {
            Moderator | Admin => Ok(()),
            // A closed season's reward, which only a closing transaction queues for the
            // relay (docs/seasons.md).
            Relay if event.id.as_str().starts_with(SEASON_REWARD_PREFIX) => Ok(()),
            Platform | Relay => refuse(
                "an xp event comes only from a moderator or an admin (or, a season's reward, \
                 from the relay)"
                    .into(),
            ),
        },
        // Undoing a link (SPEC 7.4) is a moderator's or an operator's decision, never a
        // platform's: a platform could otherwise split any member off.
        Payload::Unlink { .. } => match publisher {
            Moderator | Admin => Ok(()),
            Platform | Relay => refuse("an unlink comes only from a moderator or an admin".into()),
        },
        Payload::Link { other, proof, .. } => {
            let across = other.platform != event.identity.platform;
            match (publisher, proof) {
                (Admin, _) => Ok(()),
                (Relay, Proof::Oauth | Proof::Code) => Ok(()),
                (Platform, _) if !across => Ok(()),
                (Relay | Moderator, Proof::Import | Proof::Admin) => refuse(format!(
                    "a link with proof {} comes only from an admin",
                    proof.as_str()
                )),
                _ => refuse(format!(
                    "a link from {} to {} names another platform's member: it comes only \
                     from a publisher that proved both (the relay or an admin)",
                    event.identity, other
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use crate::wire::EventId;

    fn event(identity: &str, payload: Payload) -> Event {
        let platform = identity.split(':').next().expect("platform");
        Event {
            id: EventId::parse(&format!("{platform}:t:1")).expect("id"),
            ts: 1_700_000_000_000,
            identity: Identity::parse(identity).expect("identity"),
            name: None,
            payload,
        }
    }

    fn link(from: &str, to: &str, proof: Proof) -> Event {
        event(
            from,
            Payload::Link {
                other: Identity::parse(to).expect("identity"),
                proof,
                by: None,
            },
        )
    }

    fn allowed(publisher: Publisher, e: &Event) -> bool {
        admit(publisher, e).is_ok()
    }

    #[test]
    fn an_unlink_comes_only_from_a_moderator_or_an_admin() {
        let unlink = event(
            "discord:1",
            Payload::Unlink {
                other: Identity::parse("telegram:2").expect("identity"),
                reason: "wrong person".into(),
                by: None,
            },
        );
        assert!(allowed(Publisher::Moderator, &unlink));
        assert!(allowed(Publisher::Admin, &unlink));
        assert!(!allowed(Publisher::Platform, &unlink));
        assert!(!allowed(Publisher::Relay, &unlink));
    }

    #[test]
    fn activity_counts_from_every_publisher() {
        let say = event(
            "discord:1",
            Payload::Message {
                len: None,
                chat: None,
                mult: None,
            },
        );
        let play = event(
            "website:1",
            Payload::Game {
                game: "chess".into(),
                won: true,
                xp: 50,
            },
        );
        for p in [
            Publisher::Platform,
            Publisher::Relay,
            Publisher::Moderator,
            Publisher::Admin,
        ] {
            assert!(allowed(p, &say) && allowed(p, &play), "{p}");
        }
    }

    #[test]
    fn xp_by_hand_comes_only_from_moderators_and_admins() {
        let grant = event(
            "telegram:5",
            Payload::Xp {
                amount: 1_000_000,
                reason: "gift".into(),
                by: None,
            },
        );
        assert!(!allowed(Publisher::Platform, &grant));
        assert!(!allowed(Publisher::Relay, &grant));
        assert!(allowed(Publisher::Moderator, &grant));
        assert!(allowed(Publisher::Admin, &grant));
        // A season's reward: from the relay, in its namespace only; never a platform's.
        let reward = Event {
            id: crate::EventId::parse("season:winter:1").expect("id"),
            ..grant.clone()
        };
        assert!(allowed(Publisher::Relay, &reward));
        assert!(!allowed(Publisher::Platform, &reward));
        let refused = admit(Publisher::Platform, &grant).expect_err("refused");
        assert_eq!(refused.code, "not_permitted");
        assert!(refused.detail.contains("moderator"), "{}", refused.detail);
    }

    #[test]
    fn a_link_across_platforms_needs_a_publisher_that_proved_both() {
        let takeover = link("website:me", "discord:victim", Proof::Oauth);
        assert!(!allowed(Publisher::Platform, &takeover));
        assert!(!allowed(Publisher::Moderator, &takeover));
        assert!(allowed(Publisher::Relay, &takeover));
        assert!(allowed(Publisher::Admin, &takeover));
        let refused = admit(Publisher::Platform, &takeover).expect_err("refused");
        assert!(
            refused.detail.contains("discord:victim"),
            "{}",
            refused.detail
        );
    }

    #[test]
    fn the_relay_makes_only_the_links_it_proves() {
        for proof in [Proof::Import, Proof::Admin] {
            let e = link("telegram:1", "discord:2", proof);
            assert!(!allowed(Publisher::Relay, &e), "{proof:?}");
            assert!(allowed(Publisher::Admin, &e), "{proof:?}");
        }
        assert!(allowed(
            Publisher::Relay,
            &link("telegram:1", "discord:2", Proof::Code)
        ));
    }

    #[test]
    fn a_platform_links_its_own_members() {
        let e = link("discord:1", "discord:2", Proof::Code);
        assert!(allowed(Publisher::Platform, &e));
    }

    #[test]
    fn publishers_parse_from_their_names() {
        for p in Publisher::SIGNED.into_iter().chain([Publisher::Platform]) {
            assert_eq!(p.as_str().parse::<Publisher>(), Ok(p));
        }
        assert!("root".parse::<Publisher>().is_err());
    }

    #[test]
    fn a_platform_speaks_only_in_its_own_id_namespace() {
        let say = |id: &str, who: &str| Event {
            id: EventId::parse(id).expect("id"),
            ..event(
                who,
                Payload::Message {
                    len: None,
                    chat: None,
                    mult: None,
                },
            )
        };
        assert!(allowed(
            Publisher::Platform,
            &say("discord:msg:1", "discord:1")
        ));
        // Another platform's next id, a redeemed code's, a sign-in link's.
        for id in [
            "telegram:msg:-100:7",
            "link:code:ABCDEF:1",
            "web:link:oauth:00",
            "discordx:1",
            "discord",
        ] {
            let refused = admit(Publisher::Platform, &say(id, "discord:1")).expect_err(id);
            assert!(
                refused.detail.contains("namespace"),
                "{id}: {}",
                refused.detail
            );
            assert!(allowed(Publisher::Admin, &say(id, "discord:1")), "{id}");
        }
        for reserved in RESERVED_PLATFORMS {
            let e = say(&format!("{reserved}:code:X:1"), &format!("{reserved}:1"));
            assert!(!allowed(Publisher::Platform, &e), "{reserved}");
            assert!(allowed(Publisher::Relay, &e), "{reserved}");
        }
    }
}
