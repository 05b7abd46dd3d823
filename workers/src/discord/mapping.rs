//! Pure translation from serenity's models to TTFD events and voice updates. No I/O:
//! the tests feed real gateway JSON payloads through serenity's deserialisers.
//!
//! | Discord | event |
//! |---|---|
//! | a guild message by a human | `message`, id `discord:msg:<message id>`, `ts` from the snowflake, `len` = characters when message content is visible, `chat` = channel id |
//! | a segment of eligible voice time | `voice`, id `discord:voice:<guild>:<user>:<segment start ms>`, `ts` = segment end, `seconds`, `channel` = channel id |
//! | a segment of voice time that pays nothing | `voice_unpaid`, id `discord:voice-unpaid:<guild>:<user>:<segment start ms>`, as above, `why` = `afk`, `deafened`, `muted` or `alone` |

use serenity::model::channel::{Message, MessageType};
use serenity::model::guild::Guild;
use serenity::model::id::{ChannelId, GuildId, UserId};
use serenity::model::user::User;
use serenity::model::voice::VoiceState;
use ttfd_shared::view::Pref;
use ttfd_shared::voice::{Segment, VoiceUpdate};
use ttfd_shared::{Event, EventId, Identity, Payload};

/// The platform name of Discord identities.
pub const PLATFORM: &str = "discord";

/// 2015-01-01T00:00:00Z, the epoch of Discord snowflakes.
const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;

/// The creation time of a snowflake (message id, ...), Unix milliseconds.
pub fn snowflake_ms(id: u64) -> i64 {
    // The top 42 bits are milliseconds since the Discord epoch: they fit an i64.
    i64::try_from(id >> 22).unwrap_or(i64::MAX - DISCORD_EPOCH_MS) + DISCORD_EPOCH_MS
}

/// The identity of a Discord user.
pub fn identity(user: UserId) -> Identity {
    identity_of(user.get())
}

fn identity_of(user: u64) -> Identity {
    Identity::new(PLATFORM, &user.to_string())
        .expect("a decimal number is a valid user id of a valid platform")
}

/// The name people see: the guild nickname, else the global display name, else the
/// username; cut to the envelope's 100 characters.
pub fn display_name(user: &User, nick: Option<&str>) -> Option<String> {
    [nick, user.global_name.as_deref(), Some(user.name.as_str())]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|n| !n.is_empty())
        .map(|n| n.chars().take(100).collect())
}

/// Which messages count.
#[derive(Debug, Clone)]
pub struct MessageRules<'a> {
    pub guild: GuildId,
    pub ignored_channels: &'a [ChannelId],
    /// The MESSAGE_CONTENT intent is on: `content` is the real text, so `len` is sent.
    pub content_visible: bool,
}

/// The `message` event for a guild message by a human, or `None` for messages that do
/// not count: other guilds and DMs, bots, webhooks, Discord's system messages (joins,
/// boosts, pins), ignored channels.
pub fn message_event(msg: &Message, rules: &MessageRules<'_>) -> Option<Event> {
    let counted_kind = matches!(msg.kind, MessageType::Regular | MessageType::InlineReply);
    if msg.guild_id != Some(rules.guild)
        || msg.author.bot
        || msg.author.system
        || msg.webhook_id.is_some()
        || !counted_kind
        || rules.ignored_channels.contains(&msg.channel_id)
    {
        return None;
    }
    let nick = msg.member.as_ref().and_then(|m| m.nick.as_deref());
    let len = rules
        .content_visible
        .then(|| msg.content.chars().count() as u64);
    Some(Event {
        id: event_id(format!("discord:msg:{}", msg.id.get())),
        ts: snowflake_ms(msg.id.get()),
        identity: identity(msg.author.id),
        name: display_name(&msg.author, nick),
        payload: Payload::Message {
            len,
            chat: Some(msg.channel_id.get().to_string()),
            mult: None,
        },
    })
}

/// A voice state as the state machine reads it. Stage suppression counts as a server
/// mute: a suppressed member is in the audience and cannot speak.
pub fn voice_update(state: &VoiceState) -> VoiceUpdate {
    VoiceUpdate {
        user: state.user_id.get(),
        channel: state.channel_id.map(ChannelId::get),
        self_mute: state.self_mute,
        mute: state.mute || state.suppress,
        self_deaf: state.self_deaf,
        deaf: state.deaf,
        bot: state.member.as_ref().is_some_and(|m| m.user.bot),
    }
}

/// The display name carried by a voice state, when it has its member.
pub fn voice_name(state: &VoiceState) -> Option<(u64, String)> {
    let member = state.member.as_ref()?;
    let name = display_name(&member.user, member.nick.as_deref())?;
    Some((state.user_id.get(), name))
}

/// What a `GUILD_CREATE` says about voice: who is in which channel (bots recognised from
/// the member list, which Discord fills with everyone in voice), the AFK channel and
/// the names of the members in voice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuildVoice {
    pub states: Vec<VoiceUpdate>,
    pub afk_channel: Option<u64>,
    pub names: Vec<(u64, String)>,
}

pub fn guild_voice(guild: &Guild) -> GuildVoice {
    let mut states: Vec<VoiceUpdate> = guild
        .voice_states
        .values()
        .map(|s| {
            let mut u = voice_update(s);
            if let Some(m) = guild.members.get(&s.user_id) {
                u.bot |= m.user.bot;
            }
            u
        })
        .collect();
    states.sort_by_key(|s| s.user);
    let mut names: Vec<(u64, String)> = guild
        .voice_states
        .keys()
        .filter_map(|u| {
            let m = guild.members.get(u)?;
            Some((u.get(), display_name(&m.user, m.nick.as_deref())?))
        })
        .collect();
    names.sort();
    GuildVoice {
        states,
        afk_channel: guild.afk_metadata.as_ref().map(|a| a.afk_channel_id.get()),
        names,
    }
}

/// The `voice` event of an eligible segment, or the `voice_unpaid` event of an unpaid
/// one; its id is deterministic per member and segment.
pub fn voice_event(guild: GuildId, segment: &Segment, name: Option<String>) -> Event {
    let channel = Some(segment.channel.to_string());
    let (kind, payload) = match segment.unpaid {
        None => (
            "voice",
            Payload::Voice {
                seconds: segment.seconds,
                channel,
                mult: None,
            },
        ),
        Some(why) => (
            "voice-unpaid",
            Payload::VoiceUnpaid {
                seconds: segment.seconds,
                why,
                channel,
            },
        ),
    };
    Event {
        id: event_id(format!(
            "discord:{kind}:{}:{}:{}",
            guild.get(),
            segment.user,
            segment.start_ms
        )),
        ts: segment.end_ms(),
        identity: identity_of(segment.user),
        name,
        payload,
    }
}

/// The `prefs` event of `/notify on|off` or `/privacy hide|show` (SPEC 7.3), by the
/// interaction (its id and time).
pub fn prefs_event(cmd: &serenity::model::application::CommandInteraction, pref: Pref) -> Event {
    Event {
        id: event_id(format!("discord:prefs:{}", cmd.id.get())),
        ts: snowflake_ms(cmd.id.get()),
        identity: identity(cmd.user.id),
        name: None,
        payload: pref.payload(),
    }
}

fn event_id(s: String) -> EventId {
    EventId::parse(&s).expect("ids made of a prefix and decimal numbers are printable ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GUILD: u64 = 1_000_000_000_000_000_001;

    /// A `MESSAGE_CREATE` dispatch's `d`, as documented by Discord.
    fn message_create() -> serde_json::Value {
        json!({
            "id": "1310000000000000001",
            "channel_id": "1100000000000000001",
            "guild_id": GUILD.to_string(),
            "author": {
                "id": "80351110224678912",
                "username": "nelly",
                "global_name": "Nelly",
                "discriminator": "0",
                "avatar": "8342729096ea3675442027381ff50dfe",
                "public_flags": 64
            },
            "member": {
                "nick": "Nelly the Great",
                "roles": [],
                "joined_at": "2015-04-26T06:26:56.936000+00:00",
                "deaf": false,
                "mute": false,
                "flags": 0
            },
            "content": "hello everyone 👋",
            "timestamp": "2024-11-25T10:00:00.000000+00:00",
            "edited_timestamp": null,
            "tts": false,
            "mention_everyone": false,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": false,
            "type": 0,
            "flags": 0,
            "nonce": "1310000000000000000"
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("a documented payload deserialises")
    }

    fn rules(ignored: &[ChannelId]) -> MessageRules<'_> {
        MessageRules {
            guild: GuildId::new(GUILD),
            ignored_channels: ignored,
            content_visible: true,
        }
    }

    #[test]
    fn a_human_guild_message_becomes_a_message_event() {
        let msg: Message = parse(message_create());
        let e = message_event(&msg, &rules(&[])).expect("counted");
        assert_eq!(e.id.as_str(), "discord:msg:1310000000000000001");
        assert_eq!(e.identity.to_string(), "discord:80351110224678912");
        assert_eq!(e.name.as_deref(), Some("Nelly the Great"));
        assert_eq!(e.ts, snowflake_ms(1_310_000_000_000_000_001));
        assert_eq!(
            e.payload,
            Payload::Message {
                len: Some(16),
                chat: Some("1100000000000000001".into()),
                mult: None,
            }
        );
        // The envelope accepts it.
        let bytes = ttfd_shared::wire::encode(&e);
        ttfd_shared::wire::decode(&bytes, ("discord", "message"), e.ts).expect("valid");
    }

    #[test]
    fn without_message_content_the_length_is_left_out() {
        let msg: Message = parse(message_create());
        let r = MessageRules {
            content_visible: false,
            ..rules(&[])
        };
        let e = message_event(&msg, &r).expect("counted");
        assert!(matches!(e.payload, Payload::Message { len: None, .. }));
    }

    #[test]
    fn bots_webhooks_system_messages_dms_other_guilds_and_ignored_channels_do_not_count() {
        type Change = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Change)> = vec![
            ("bot", Box::new(|v| v["author"]["bot"] = json!(true))),
            (
                "system user",
                Box::new(|v| v["author"]["system"] = json!(true)),
            ),
            (
                "webhook",
                Box::new(|v| v["webhook_id"] = json!("1200000000000000001")),
            ),
            ("member joined notice", Box::new(|v| v["type"] = json!(7))),
            (
                "dm",
                Box::new(|v| {
                    v.as_object_mut().expect("map").remove("guild_id");
                    v.as_object_mut().expect("map").remove("member");
                }),
            ),
            (
                "other guild",
                Box::new(|v| v["guild_id"] = json!("1000000000000000002")),
            ),
        ];
        for (what, change) in cases {
            let mut v = message_create();
            change(&mut v);
            let msg: Message = parse(v);
            assert!(message_event(&msg, &rules(&[])).is_none(), "{what}");
        }
        let msg: Message = parse(message_create());
        let ignored = [ChannelId::new(1_100_000_000_000_000_001)];
        assert!(message_event(&msg, &rules(&ignored)).is_none(), "ignored");
        let mut reply = message_create();
        reply["type"] = json!(19);
        let msg: Message = parse(reply);
        assert!(message_event(&msg, &rules(&[])).is_some(), "replies count");
    }

    #[test]
    fn names_fall_back_from_nickname_to_global_name_to_username() {
        let mut v = message_create();
        v["member"]["nick"] = json!(null);
        let msg: Message = parse(v.clone());
        assert_eq!(msg_name(&msg), Some("Nelly".into()));
        v["author"]["global_name"] = json!(null);
        let msg: Message = parse(v.clone());
        assert_eq!(msg_name(&msg), Some("nelly".into()));
        v["member"]["nick"] = json!("ü".repeat(150));
        let msg: Message = parse(v);
        assert_eq!(msg_name(&msg).map(|n| n.chars().count()), Some(100));
    }

    fn msg_name(msg: &Message) -> Option<String> {
        message_event(msg, &rules(&[])).and_then(|e| e.name)
    }

    /// A `VOICE_STATE_UPDATE` dispatch's `d`.
    fn voice_state(user: &str, channel: Option<&str>) -> serde_json::Value {
        json!({
            "guild_id": GUILD.to_string(),
            "channel_id": channel,
            "user_id": user,
            "member": {
                "user": {"id": user, "username": "vox", "global_name": "Vox", "discriminator": "0", "avatar": null},
                "nick": null,
                "roles": [],
                "joined_at": "2021-01-01T00:00:00.000000+00:00",
                "deaf": false,
                "mute": false,
                "flags": 0
            },
            "session_id": "90326bd25d71d39b9ef95b299e3872ff",
            "deaf": false,
            "mute": false,
            "self_deaf": false,
            "self_mute": true,
            "self_stream": false,
            "self_video": false,
            "suppress": false,
            "request_to_speak_timestamp": null
        })
    }

    #[test]
    fn voice_state_updates_become_state_machine_input() {
        let s: VoiceState = parse(voice_state(
            "80351110224678912",
            Some("1100000000000000009"),
        ));
        assert_eq!(
            voice_update(&s),
            VoiceUpdate {
                user: 80_351_110_224_678_912,
                channel: Some(1_100_000_000_000_000_009),
                self_mute: true,
                ..VoiceUpdate::default()
            }
        );
        assert_eq!(voice_name(&s), Some((80_351_110_224_678_912, "Vox".into())));
        let left: VoiceState = parse(voice_state("80351110224678912", None));
        assert_eq!(voice_update(&left).channel, None);
        let mut stage = voice_state("5", Some("7"));
        stage["self_mute"] = json!(false);
        stage["suppress"] = json!(true);
        stage["member"]["user"]["bot"] = json!(true);
        let s: VoiceState = parse(stage);
        let u = voice_update(&s);
        assert!(
            u.mute && u.bot,
            "suppressed counts as muted; bots are known"
        );
    }

    #[test]
    fn a_guild_create_gives_the_voice_states_the_afk_channel_and_bots() {
        let mut bot_state = voice_state("222", Some("1100000000000000009"));
        bot_state.as_object_mut().expect("map").remove("member");
        bot_state["self_mute"] = json!(false);
        let mut human = voice_state("111", Some("1100000000000000009"));
        human.as_object_mut().expect("map").remove("member");
        // A GUILD_CREATE `d` (fields of the documented guild object plus the gateway's
        // extra fields), trimmed of empty lists.
        let mut guild: serde_json::Value = serde_json::from_str(
            r#"{
            "id": "1000000000000000001", "name": "TTFD", "icon": null, "splash": null,
            "discovery_splash": null, "owner_id": "111",
            "afk_channel_id": "1100000000000000099", "afk_timeout": 300,
            "verification_level": 1, "default_message_notifications": 0,
            "explicit_content_filter": 0, "roles": [], "emojis": [], "features": [],
            "mfa_level": 0, "application_id": null, "system_channel_id": null,
            "system_channel_flags": 0, "rules_channel_id": null, "vanity_url_code": null,
            "description": null, "banner": null, "premium_tier": 0,
            "preferred_locale": "en-US", "public_updates_channel_id": null,
            "nsfw_level": 0, "premium_progress_bar_enabled": false, "stickers": [],
            "joined_at": "2024-01-01T00:00:00.000000+00:00", "large": false,
            "unavailable": false, "member_count": 2,
            "members": [
                {"user": {"id": "111", "username": "ann", "global_name": null,
                          "discriminator": "0", "avatar": null},
                 "nick": "Annie", "roles": [], "joined_at": "2021-01-01T00:00:00.000000+00:00",
                 "deaf": false, "mute": false, "flags": 0},
                {"user": {"id": "222", "username": "musicbot", "discriminator": "0",
                          "avatar": null, "bot": true},
                 "nick": null, "roles": [], "joined_at": "2021-01-01T00:00:00.000000+00:00",
                 "deaf": false, "mute": false, "flags": 0}
            ],
            "channels": [], "threads": [], "presences": [], "stage_instances": [],
            "guild_scheduled_events": [], "soundboard_sounds": []
        }"#,
        )
        .expect("json");
        guild["voice_states"] = json!([human, bot_state]);
        let guild: Guild = parse(guild);
        let v = guild_voice(&guild);
        assert_eq!(v.afk_channel, Some(1_100_000_000_000_000_099));
        assert_eq!(v.states.len(), 2);
        assert!(!v.states[0].bot && v.states[0].self_mute);
        assert!(v.states[1].bot, "the bot is known from the member list");
        assert_eq!(
            v.names,
            vec![(111, "Annie".into()), (222, "musicbot".into())]
        );
    }

    #[test]
    fn voice_segments_have_deterministic_ids() {
        let seg = Segment {
            user: 80_351_110_224_678_912,
            channel: 9,
            start_ms: 1_764_000_000_000,
            seconds: 55,
            unpaid: None,
        };
        let e = voice_event(GuildId::new(GUILD), &seg, Some("Vox".into()));
        assert_eq!(
            e.id.as_str(),
            "discord:voice:1000000000000000001:80351110224678912:1764000000000"
        );
        assert_eq!(e.ts, 1_764_000_055_000);
        assert_eq!(
            e.payload,
            Payload::Voice {
                seconds: 55,
                channel: Some("9".into()),
                mult: None,
            }
        );
        assert_eq!(voice_event(GuildId::new(GUILD), &seg, None).id, e.id);
        let muted = Segment {
            unpaid: Some(ttfd_shared::Unpaid::Muted),
            ..seg
        };
        let e = voice_event(GuildId::new(GUILD), &muted, None);
        assert_eq!(
            e.id.as_str(),
            "discord:voice-unpaid:1000000000000000001:80351110224678912:1764000000000"
        );
        assert_eq!(
            e.payload,
            Payload::VoiceUnpaid {
                seconds: 55,
                why: ttfd_shared::Unpaid::Muted,
                channel: Some("9".into()),
            }
        );
    }
}
