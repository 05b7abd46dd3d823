//! From a Bot API [`Update`] to what the bot does with it. Pure: tested from real Bot
//! API JSON payloads.
//!
//! - A group or supergroup message by a human becomes a `message` event with id
//!   `telegram:msg:<chat id>:<message id>`, `len` (characters of the text or caption;
//!   0 for a sticker or media without caption, which therefore earns no XP) and the
//!   display name (first and last name, else the username).
//! - Not activity: messages by bots, posts on behalf of a chat (channels, anonymous
//!   admins, channel posts forwarded into a discussion group), service messages (joins,
//!   leaves, pins, title changes, ...), edits, and commands addressed to this bot.
//! - A command addressed to this bot, in a group or a private chat, is a [`CommandCall`].

use std::collections::BTreeSet;

use teloxide::types::{ChatId, Message, MessageId, MessageKind, Update, UpdateKind, User, UserId};
use ttfd_shared::view::Pref;
use ttfd_shared::wire::EventId;
use ttfd_shared::{Event, Identity, Payload};

use super::commands::{self, Command};

/// The platform name of every Telegram identity and event.
pub const PLATFORM: &str = "telegram";
/// Telegram's own account: it forwards a linked channel's posts into its discussion
/// group, and is not a person.
const TELEGRAM_SERVICE_ACCOUNT: u64 = 777_000;
/// SPEC 4: a display name is 1..=100 characters.
const MAX_NAME_CHARS: usize = 100;

/// What to do with one update.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A human's group message: publish it.
    Activity(Event),
    /// A command for this bot: answer it.
    Command(CommandCall),
    /// A private message that is no command (the user has the bot open): answer with
    /// help.
    PrivateText { user: UserId },
    /// In the private chat, the user blocked the bot (`open: false`) or started it
    /// again (`open: true`).
    PrivateChatStatus { user: UserId, open: bool },
    /// Nothing to do; the reason is for debug logs.
    Ignored(&'static str),
}

/// A command with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandCall {
    pub command: Command,
    pub chat: ChatId,
    /// A private chat with the bot (where codes may be shown).
    pub private: bool,
    pub message: MessageId,
    pub user: UserId,
    pub first_name: String,
    /// The author of the message this one replies to (whom `/xp` is about).
    pub replied_to: Option<Author>,
}

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub user: UserId,
    pub first_name: String,
    pub bot: bool,
}

/// The `prefs` event of `/notify on|off` or `/privacy hide|show` (SPEC 7.3), by the
/// command's message.
pub fn prefs_event(call: &CommandCall, pref: Pref, now_ms: i64) -> Event {
    Event {
        id: EventId::parse(&format!(
            "telegram:prefs:{}:{}",
            call.chat.0, call.message.0
        ))
        .expect("ids of numbers are valid"),
        ts: now_ms,
        identity: identity(call.user),
        name: None,
        payload: pref.payload(),
    }
}

/// The identity of a Telegram user.
pub fn identity(user: UserId) -> Identity {
    Identity::new(PLATFORM, &user.0.to_string())
        .expect("a decimal user id is a valid identity user")
}

/// Decides what an update means. `bot_username` tells commands for this bot from
/// commands for other bots in the same group; only messages in the `counted` groups are
/// activity (`telegram.group_chat_id`, `telegram.chats`).
pub fn classify(update: &Update, bot_username: &str, counted: &BTreeSet<i64>) -> Inbound {
    match &update.kind {
        UpdateKind::Message(msg) => classify_message(msg, bot_username, counted),
        UpdateKind::MyChatMember(change) if change.chat.is_private() => {
            Inbound::PrivateChatStatus {
                user: change.from.id,
                open: change.new_chat_member.is_present(),
            }
        }
        UpdateKind::EditedMessage(_) => Inbound::Ignored("an edit is not a new message"),
        UpdateKind::ChannelPost(_) | UpdateKind::EditedChannelPost(_) => {
            Inbound::Ignored("channel post")
        }
        _ => Inbound::Ignored("update kind not used"),
    }
}

fn classify_message(msg: &Message, bot_username: &str, counted: &BTreeSet<i64>) -> Inbound {
    let Some(from) = &msg.from else {
        return Inbound::Ignored("no sender");
    };
    if from.is_bot {
        return Inbound::Ignored("sent by a bot");
    }
    if msg.sender_chat.is_some() {
        return Inbound::Ignored("sent on behalf of a chat");
    }
    if from.id.0 == TELEGRAM_SERVICE_ACCOUNT {
        return Inbound::Ignored("Telegram's service account");
    }
    let MessageKind::Common(common) = &msg.kind else {
        return Inbound::Ignored("service message");
    };
    let text = msg.text().or(msg.caption());
    let command = text.and_then(|t| commands::parse(t, bot_username));
    let call = |command| {
        Inbound::Command(CommandCall {
            command,
            chat: msg.chat.id,
            private: msg.chat.is_private(),
            message: msg.id,
            user: from.id,
            first_name: from.first_name.clone(),
            replied_to: msg
                .reply_to_message()
                .and_then(|m| m.from.as_ref())
                .map(|u| Author {
                    user: u.id,
                    first_name: u.first_name.clone(),
                    bot: u.is_bot,
                }),
        })
    };
    if msg.chat.is_private() {
        return match command {
            Some(c) => call(c),
            None => Inbound::PrivateText { user: from.id },
        };
    }
    if !(msg.chat.is_group() || msg.chat.is_supergroup()) {
        return Inbound::Ignored("not a group");
    }
    if common.is_automatic_forward {
        return Inbound::Ignored("channel post forwarded into its discussion group");
    }
    match command {
        Some(Command::Unknown(_)) | None if !counted.contains(&msg.chat.id.0) => Inbound::Ignored(
            "a group not configured to count (telegram.group_chat_id, telegram.chats)",
        ),
        // An unknown command without a mention may be for another bot: it is activity.
        Some(Command::Unknown(_)) | None => match message_event(msg, from) {
            Some(event) => Inbound::Activity(event),
            None => Inbound::Ignored("not representable as an event"),
        },
        Some(c) => call(c),
    }
}

/// The `message` event of a group message by `from`.
fn message_event(msg: &Message, from: &User) -> Option<Event> {
    let id = EventId::parse(&format!("telegram:msg:{}:{}", msg.chat.id.0, msg.id.0)).ok()?;
    let len = msg
        .text()
        .or(msg.caption())
        .map_or(0, |t| t.chars().count() as u64);
    Some(Event {
        id,
        ts: msg.date.timestamp_millis(),
        identity: identity(from.id),
        name: display_name(from),
        payload: Payload::Message {
            len: Some(len),
            chat: Some(msg.chat.id.0.to_string()),
            mult: None,
        },
    })
}

/// First and last name, else the username; at most 100 characters.
pub fn display_name(user: &User) -> Option<String> {
    let full = match &user.last_name {
        Some(last) => format!("{} {}", user.first_name.trim(), last.trim()),
        None => user.first_name.clone(),
    };
    let full: String = full
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    if !full.trim().is_empty() {
        return Some(full.trim().to_owned());
    }
    user.username
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|u| u.chars().take(MAX_NAME_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: &str = "ttfd_bot";

    /// The groups of the updates below that count.
    fn counted() -> BTreeSet<i64> {
        [-1_001_234_567_890, -4567, -100_200, -1_009_876].into()
    }

    fn update(json: &str) -> Update {
        serde_json::from_str(json).expect("a Bot API update")
    }

    fn event(json: &str) -> Event {
        match classify(&update(json), BOT, &counted()) {
            Inbound::Activity(e) => e,
            other => panic!("expected activity, got {other:?}"),
        }
    }

    fn ignored(json: &str) -> &'static str {
        match classify(&update(json), BOT, &counted()) {
            Inbound::Ignored(why) => why,
            other => panic!("expected to be ignored, got {other:?}"),
        }
    }

    // Shapes as the Bot API sends them (https://core.telegram.org/bots/api#update).
    const SUPERGROUP_TEXT: &str = r#"{"update_id": 10000,
      "message": {"message_id": 1365,
        "from": {"id": 1111111, "is_bot": false, "first_name": "Ada", "last_name": "Lovelace",
                 "username": "ada", "language_code": "en"},
        "chat": {"id": -1001234567890, "title": "TTFD", "type": "supergroup"},
        "date": 1441645532, "text": "Hello there, everyone"}}"#;

    #[test]
    fn a_supergroup_text_becomes_a_message_event() {
        let e = event(SUPERGROUP_TEXT);
        assert_eq!(e.id.as_str(), "telegram:msg:-1001234567890:1365");
        assert_eq!(e.identity.to_string(), "telegram:1111111");
        assert_eq!(e.ts, 1_441_645_532_000);
        assert_eq!(e.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(
            e.payload,
            Payload::Message {
                len: Some(21),
                chat: Some("-1001234567890".into()),
                mult: None,
            }
        );
    }

    #[test]
    fn a_basic_group_photo_counts_its_caption() {
        let e = event(
            r#"{"update_id": 2, "message": {"message_id": 7,
              "from": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "chat": {"id": -4567, "title": "old group", "type": "group",
                       "all_members_are_administrators": true},
              "date": 1700000000,
              "photo": [{"file_id": "AgAD", "file_unique_id": "AQAD", "file_size": 1234,
                         "width": 90, "height": 67}],
              "caption": "Übersicht 📷"}}"#,
        );
        assert_eq!(e.id.as_str(), "telegram:msg:-4567:7");
        assert_eq!(e.name.as_deref(), Some("Grace"));
        assert!(matches!(e.payload, Payload::Message { len: Some(11), .. }));
    }

    #[test]
    fn a_sticker_has_length_zero() {
        let e = event(
            r#"{"update_id": 3, "message": {"message_id": 8,
              "from": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "chat": {"id": -100200, "title": "g", "type": "supergroup"},
              "date": 1700000000,
              "sticker": {"file_id": "CAAC", "file_unique_id": "AgAD", "type": "regular",
                          "width": 512, "height": 512, "is_animated": false,
                          "is_video": false, "emoji": "👍", "set_name": "HotCherry"}}}"#,
        );
        assert!(matches!(e.payload, Payload::Message { len: Some(0), .. }));
    }

    #[test]
    fn the_username_stands_in_for_an_empty_name() {
        let e = event(
            r#"{"update_id": 4, "message": {"message_id": 9,
              "from": {"id": 43, "is_bot": false, "first_name": "   ", "username": "nobody"},
              "chat": {"id": -100200, "title": "g", "type": "supergroup"},
              "date": 1700000000, "text": "hi all"}}"#,
        );
        assert_eq!(e.name.as_deref(), Some("nobody"));
    }

    #[test]
    fn long_names_are_cut_to_one_hundred_characters() {
        let json = SUPERGROUP_TEXT.replace("\"Lovelace\"", &format!("\"{}\"", "é".repeat(150)));
        let name = event(&json).name.expect("a name");
        assert_eq!(name.chars().count(), 100);
    }

    #[test]
    fn messages_by_bots_are_not_activity() {
        assert_eq!(
            ignored(
                r#"{"update_id": 5, "message": {"message_id": 10,
                  "from": {"id": 99, "is_bot": true, "first_name": "OtherBot", "username": "other_bot"},
                  "chat": {"id": -100200, "title": "g", "type": "supergroup"},
                  "date": 1700000000, "text": "beep boop beep"}}"#
            ),
            "sent by a bot"
        );
    }

    #[test]
    fn anonymous_admins_are_not_activity() {
        assert!(matches!(
            classify(
                &update(
                    r#"{"update_id": 6, "message": {"message_id": 11,
                      "from": {"id": 1087968824, "is_bot": true, "first_name": "Group",
                               "username": "GroupAnonymousBot"},
                      "sender_chat": {"id": -100200, "title": "g", "type": "supergroup"},
                      "author_signature": "Boss",
                      "chat": {"id": -100200, "title": "g", "type": "supergroup"},
                      "date": 1700000000, "text": "announcement from the admins"}}"#
                ),
                BOT,
                &counted(),
            ),
            Inbound::Ignored(_)
        ));
    }

    #[test]
    fn channel_posts_forwarded_into_the_discussion_group_are_not_activity() {
        assert_eq!(
            ignored(
                r#"{"update_id": 7, "message": {"message_id": 12,
                  "from": {"id": 777000, "is_bot": false, "first_name": "Telegram"},
                  "sender_chat": {"id": -1009876, "title": "TTFD News", "type": "channel"},
                  "chat": {"id": -100200, "title": "g", "type": "supergroup"},
                  "date": 1700000000, "is_automatic_forward": true,
                  "forward_origin": {"type": "channel", "date": 1699999999,
                    "chat": {"id": -1009876, "title": "TTFD News", "type": "channel"},
                    "message_id": 55},
                  "text": "New season starts today"}}"#
            ),
            "sent on behalf of a chat"
        );
    }

    #[test]
    fn channel_posts_are_not_activity() {
        assert_eq!(
            ignored(
                r#"{"update_id": 8, "channel_post": {"message_id": 13,
                  "sender_chat": {"id": -1009876, "title": "TTFD News", "type": "channel"},
                  "chat": {"id": -1009876, "title": "TTFD News", "type": "channel"},
                  "date": 1700000000, "text": "New season starts today"}}"#
            ),
            "channel post"
        );
    }

    #[test]
    fn service_messages_are_not_activity() {
        let joined = r#"{"update_id": 9, "message": {"message_id": 14,
              "from": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "chat": {"id": -100200, "title": "g", "type": "supergroup"},
              "date": 1700000000,
              "new_chat_participant": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "new_chat_member": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "new_chat_members": [{"id": 42, "is_bot": false, "first_name": "Grace"}]}}"#;
        let left = r#"{"update_id": 10, "message": {"message_id": 15,
              "from": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "chat": {"id": -100200, "title": "g", "type": "supergroup"},
              "date": 1700000000,
              "left_chat_participant": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "left_chat_member": {"id": 42, "is_bot": false, "first_name": "Grace"}}}"#;
        let pinned = r#"{"update_id": 11, "message": {"message_id": 16,
              "from": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "chat": {"id": -100200, "title": "g", "type": "supergroup"},
              "date": 1700000000,
              "pinned_message": {"message_id": 1365,
                "from": {"id": 42, "is_bot": false, "first_name": "Grace"},
                "chat": {"id": -100200, "title": "g", "type": "supergroup"},
                "date": 1699999000, "text": "Rules: be nice"}}}"#;
        let title = r#"{"update_id": 12, "message": {"message_id": 17,
              "from": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "chat": {"id": -100200, "title": "TTFD!", "type": "supergroup"},
              "date": 1700000000, "new_chat_title": "TTFD!"}}"#;
        for json in [joined, left, pinned, title] {
            assert_eq!(ignored(json), "service message", "{json}");
        }
    }

    #[test]
    fn edits_are_not_new_messages() {
        let json = SUPERGROUP_TEXT
            .replace("\"message\"", "\"edited_message\"")
            .replace("\"text\"", "\"edit_date\": 1441645600, \"text\"");
        assert_eq!(ignored(&json), "an edit is not a new message");
    }

    #[test]
    fn private_messages_are_no_activity() {
        let json = r#"{"update_id": 13, "message": {"message_id": 3,
              "from": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "chat": {"id": 42, "first_name": "Grace", "type": "private"},
              "date": 1700000000, "text": "hello bot, what can you do?"}}"#;
        assert_eq!(
            classify(&update(json), BOT, &counted()),
            Inbound::PrivateText { user: UserId(42) }
        );
    }

    #[test]
    fn commands_come_with_their_chat() {
        let json = r#"{"update_id": 14, "message": {"message_id": 4,
              "from": {"id": 42, "is_bot": false, "first_name": "Grace"},
              "chat": {"id": 42, "first_name": "Grace", "type": "private"},
              "date": 1700000000, "text": "/link ABC234",
              "entities": [{"offset": 0, "length": 5, "type": "bot_command"}]}}"#;
        assert_eq!(
            classify(&update(json), BOT, &counted()),
            Inbound::Command(CommandCall {
                command: Command::Link("ABC234".into()),
                chat: ChatId(42),
                private: true,
                message: MessageId(4),
                user: UserId(42),
                first_name: "Grace".into(),
                replied_to: None,
            })
        );
    }

    #[test]
    fn group_commands_for_this_bot_are_commands_not_activity() {
        let json = SUPERGROUP_TEXT.replace("Hello there, everyone", "/rank@ttfd_bot");
        assert!(matches!(
            classify(&update(&json), BOT, &counted()),
            Inbound::Command(CommandCall {
                command: Command::Rank(_),
                private: false,
                ..
            })
        ));
    }

    #[test]
    fn group_commands_for_other_bots_are_activity() {
        for text in ["/play@music_bot never gonna", "/roll 2d6 for initiative"] {
            let json = SUPERGROUP_TEXT.replace("Hello there, everyone", text);
            assert!(
                matches!(
                    classify(&update(&json), BOT, &counted()),
                    Inbound::Activity(_)
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn blocking_and_restarting_the_bot_are_seen() {
        let change = |old: &str, new: &str| {
            format!(
                r#"{{"update_id": 15, "my_chat_member": {{
                  "chat": {{"id": 42, "first_name": "Grace", "type": "private"}},
                  "from": {{"id": 42, "is_bot": false, "first_name": "Grace"}},
                  "date": 1700000000,
                  "old_chat_member": {{"user": {{"id": 5000, "is_bot": true, "first_name": "TTFD",
                      "username": "ttfd_bot"}}, {old}}},
                  "new_chat_member": {{"user": {{"id": 5000, "is_bot": true, "first_name": "TTFD",
                      "username": "ttfd_bot"}}, {new}}}}}}}"#
            )
        };
        let blocked = change(
            r#""status": "member""#,
            r#""status": "kicked", "until_date": 0"#,
        );
        let restarted = change(
            r#""status": "kicked", "until_date": 0"#,
            r#""status": "member""#,
        );
        assert_eq!(
            classify(&update(&blocked), BOT, &counted()),
            Inbound::PrivateChatStatus {
                user: UserId(42),
                open: false
            }
        );
        assert_eq!(
            classify(&update(&restarted), BOT, &counted()),
            Inbound::PrivateChatStatus {
                user: UserId(42),
                open: true
            }
        );
    }

    #[test]
    fn messages_in_a_group_not_configured_to_count_are_not_activity() {
        let json = r#"{"update_id": 50, "message": {"message_id": 3,
          "from": {"id": 7, "is_bot": false, "first_name": "Ann"},
          "chat": {"id": -100555, "title": "somewhere else", "type": "supergroup"},
          "date": 1700000000, "text": "hello"}}"#;
        assert_eq!(
            ignored(json),
            "a group not configured to count (telegram.group_chat_id, telegram.chats)"
        );
        let mut counted = counted();
        counted.insert(-100_555);
        assert!(matches!(
            classify(&update(json), BOT, &counted),
            Inbound::Activity(_)
        ));
        // Commands are still answered there.
        let rank = json.replace("hello", "/rank");
        assert!(matches!(
            classify(&update(&rank), BOT, &BTreeSet::new()),
            Inbound::Command(_)
        ));
    }
}
