//! The Telegram bot end to end: a fake Bot API on localhost (`common/fake_telegram.rs`)
//! serves updates and records replies; NATS, PostgreSQL, a sync replica with its outbox
//! relay and the query service are real.

const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

use std::time::Duration;

use crate::common::fake_telegram::{
    BOT_USERNAME, FakeTelegram, bot_message, group_message, join_message, private_message,
};
use crate::common::{TestEnv, eventually};
use async_nats::jetstream::consumer;
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use ttfd::query::QueryClient;
use ttfd::settings::Settings;
use ttfd::settings::TelegramMode;
use ttfd::shared::wire::{self, EventId, WireIdentity};
use ttfd::shared::{Event, Identity, Payload};
use ttfd::store::codes::Redemption;
use ttfd::telegram::TelegramBot;

const TOKEN: &str = "123456789:AAFakeTokenForTests_-x";
const GROUP: i64 = -1_001_234_567_890;

fn who(s: &str) -> Identity {
    Identity::parse(s).expect("identity")
}

/// Everything a bot test runs besides the bot: a sync replica, the outbox relay and
/// the query service, all stopped by `stop`.
struct World {
    env: TestEnv,
    fake: FakeTelegram,
    stop: CancellationToken,
    query: QueryClient,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl World {
    async fn new() -> Self {
        let env = TestEnv::new().await;
        let stop = CancellationToken::new();
        let mut tasks = vec![env.spawn_worker(stop.clone()).await];
        tasks.push(env.spawn_relay(stop.clone()));
        let (store, broker, s) = (env.store.clone(), env.broker.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            ttfd::query::serve(store, broker, s)
                .await
                .expect("query service");
        }));
        let query = QueryClient::new(
            env.broker.client.clone(),
            &env.settings.nats.prefix,
            Duration::from_secs(5),
        );
        // The service answers once it has subscribed.
        eventually("the query service", || async {
            query.profile(&who("telegram:1")).await.ok()
        })
        .await;
        let fake = FakeTelegram::start(TOKEN).await;
        Self {
            env,
            fake,
            stop,
            query,
            tasks,
        }
    }

    fn settings(&self) -> Settings {
        let mut s = self.env.settings.clone();
        s.telegram.token = Some(SecretString::from(TOKEN));
        s.telegram.api_url = self.fake.url.clone();
        s.telegram.group_chat_id = Some(GROUP);
        s.telegram.poll_timeout_secs = 2;
        s
    }

    /// Builds the bot and runs it until `stop`; the handle returns its result.
    async fn spawn_bot(
        &self,
        settings: Settings,
        stop: CancellationToken,
    ) -> (
        Option<std::net::SocketAddr>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let broker = ttfd::app::connect_broker(&settings, ttfd::app::Role::Telegram.signs_as())
            .await
            .expect("NATS");
        let bot = TelegramBot::build(&settings, broker, GRACE)
            .await
            .expect("the bot starts");
        assert_eq!(bot.username(), BOT_USERNAME);
        let addr = bot.local_addr();
        (addr, tokio::spawn(bot.run(stop)))
    }

    /// Waits for the `n`-th (1-based) message to `chat` whose text contains `needle`.
    async fn reply_containing(&self, chat: i64, needle: &str) -> Value {
        eventually(
            &format!("a message to {chat} containing {needle:?}"),
            || async {
                self.fake
                    .messages_to(chat)
                    .into_iter()
                    .find(|m| m["text"].as_str().is_some_and(|t| t.contains(needle)))
            },
        )
        .await
    }

    async fn cleanup(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.expect("task");
        }
        let _ = self
            .env
            .broker
            .js
            .delete_key_value(ttfd::telegram::started::bucket_name(
                &self.env.broker.subjects,
            ))
            .await;
        self.env.cleanup().await;
    }
}

/// Every `telegram` message event on the events stream, in order.
async fn telegram_events(env: &TestEnv, expect: usize) -> Vec<Event> {
    let stream = env
        .broker
        .js
        .get_stream(env.broker.subjects.events_stream())
        .await
        .expect("events stream");
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: env.broker.subjects.event("telegram", "message"),
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let mut messages = consumer
        .stream()
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .expect("pull");
    let mut events = Vec::new();
    while events.len() < expect {
        let m = tokio::time::timeout(crate::common::TIMEOUT, messages.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("a message");
        m.ack().await.expect("ack");
        events.push(
            wire::decode(&m.payload, ("telegram", "message"), ttfd::now_ms())
                .expect("a valid event"),
        );
    }
    events
}

/// How many events on the stream match `subject`.
async fn events_on_stream(env: &TestEnv, subject: String) -> u64 {
    let stream = env
        .broker
        .js
        .get_stream(env.broker.subjects.events_stream())
        .await
        .expect("events stream");
    let mut consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject,
            ..Default::default()
        })
        .await
        .expect("consumer");
    consumer.info().await.expect("consumer info").num_pending
}

#[tokio::test]
async fn group_messages_by_humans_become_events_and_commands_are_answered() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    let (_, bot) = world.spawn_bot(world.settings(), stop.clone()).await;
    let fake = &world.fake;

    // A bot's message, a join and a message in a group nobody configured (the bot may
    // have been added anywhere) are no activity; Ada's message in the group is.
    fake.push_update(group_message(
        -1_009_999_999,
        9,
        1001,
        "Ada",
        None,
        "Counting here would be easy XP",
    ));
    fake.push_update(bot_message(GROUP, 10, "I am a bot, beep boop"));
    fake.push_update(join_message(GROUP, 11, 1001, "Ada"));
    fake.push_update(group_message(
        GROUP,
        12,
        1001,
        "Ada",
        Some("Lovelace"),
        "Hello everyone, good morning",
    ));
    let events = telegram_events(&world.env, 1).await;
    let e = &events[0];
    assert_eq!(e.id.as_str(), format!("telegram:msg:{GROUP}:12"));
    assert_eq!(e.identity, who("telegram:1001"));
    assert_eq!(e.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(
        e.payload,
        Payload::Message {
            len: Some(28),
            chat: Some(GROUP.to_string()),
            mult: None,
        }
    );
    // The updates are handled in order, so the three before it were seen and skipped.
    assert_eq!(
        events_on_stream(&world.env, world.env.broker.subjects.event("telegram", ">")).await,
        1
    );
    let ada = eventually("Ada's profile", || async {
        world.query.profile(&who("telegram:1001")).await.ok()?
    })
    .await;
    assert_eq!((ada.messages, ada.xp), (1, 10));

    // /rank in private: her profile.
    fake.push_update(private_message(1001, "Ada", 1, "/rank"));
    let rank = world.reply_containing(1001, "Rank F I").await;
    let text = rank["text"].as_str().expect("text");
    assert!(
        text.starts_with("Ada Lovelace\nRank F I ★ · 10 XP\n"),
        "{text}"
    );
    assert!(text.contains("Linked: Telegram"), "{text}");
    // The rank card, the text its caption.
    assert_eq!(rank["photo"]["png"], json!(true), "{rank}");
    assert_eq!(rank["caption"], rank["text"]);

    // /rank@bot in the group: a reply to the command.
    fake.push_update(group_message(
        GROUP,
        13,
        1001,
        "Ada",
        Some("Lovelace"),
        &format!("/rank@{BOT_USERNAME}"),
    ));
    let in_group = world.reply_containing(GROUP, "Rank F I").await;
    assert_eq!(in_group["reply_parameters"]["message_id"], json!(13));

    // /link in the group: only in private.
    fake.push_update(group_message(
        GROUP,
        14,
        1001,
        "Ada",
        Some("Lovelace"),
        "/link",
    ));
    world
        .reply_containing(GROUP, &format!("https://t.me/{BOT_USERNAME}"))
        .await;

    // /link in private: a code, which a Discord account redeems.
    fake.push_update(private_message(1001, "Ada", 2, "/link"));
    let issued = world.reply_containing(1001, "Your link code: ").await;
    let code: String = issued["text"]
        .as_str()
        .and_then(|t| t.strip_prefix("Your link code: "))
        .expect("the code")
        .chars()
        .take(6)
        .collect();
    let outcome = world
        .query
        .redeem_link_code(&who("discord:555"), &code)
        .await
        .expect("redeem");
    assert_eq!(
        outcome,
        Redemption::Linked {
            issuer: WireIdentity {
                platform: "telegram".into(),
                user: "1001".into()
            }
        }
    );

    // /link CODE in private: a code issued on Discord joins Grace's accounts.
    let discord_code = world
        .query
        .issue_link_code(&who("discord:777"))
        .await
        .expect("issue");
    let typed = format!("{}-{}", &discord_code.code[..3], &discord_code.code[3..]).to_lowercase();
    fake.push_update(private_message(2002, "Grace", 1, &format!("/link {typed}")));
    world
        .reply_containing(
            2002,
            "Linked! Your Telegram account and your Discord account",
        )
        .await;
    fake.push_update(private_message(2002, "Grace", 2, "/link ZZ"));
    world.reply_containing(2002, "not a link code").await;

    for (identity, other) in [
        ("telegram:1001", "discord:555"),
        ("telegram:2002", "discord:777"),
    ] {
        eventually(&format!("{identity} linked to {other}"), || async {
            let p = world.query.profile(&who(identity)).await.ok()??;
            let (platform, user) = other.split_once(':').expect("pair");
            p.identities
                .iter()
                .any(|i| i.platform == platform && i.user == user)
                .then_some(())
        })
        .await;
    }

    // /top week lists Ada.
    fake.push_update(private_message(1001, "Ada", 3, "/top week"));
    let top = world.reply_containing(1001, "Leaderboard, this week").await;
    assert!(
        top["text"]
            .as_str()
            .is_some_and(|t| t.contains("1. Ada Lovelace — 10 XP · F I")),
        "{top}"
    );
    fake.push_update(private_message(1001, "Ada", 4, "/top year"));
    world
        .reply_containing(1001, "I don't know the period \"year\"")
        .await;

    // A reply that meets flood control is sent again after the wait.
    fake.fail_next(
        "sendMessage",
        Some(1001),
        429,
        json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1",
               "parameters": {"retry_after": 1}}),
    );
    // Stopping confirms every handled update, so a restart does not answer them again.
    let last = fake.push_update(private_message(1001, "Ada", 5, "/help"));
    world.reply_containing(1001, "/top — ").await;
    let help_attempts = fake
        .calls("sendMessage")
        .iter()
        .filter(|c| {
            c.body["text"]
                .as_str()
                .is_some_and(|t| t.contains("/top — "))
        })
        .count();
    assert_eq!(help_attempts, 2, "refused once with 429, then sent");
    stop.cancel();
    bot.await.expect("bot task").expect("the bot stops cleanly");
    assert_eq!(fake.confirmed_offset(), last + 1);
    assert_eq!(fake.unconfirmed(), 0);
    world.cleanup().await;
}

/// `/xp` in the group (docs/moderation.md): an administrator, in reply to a member's
/// message, adds and sets XP and is told the new total; a member who is not an
/// administrator is refused; without a reply the usage is shown; the same update
/// again counts once.
#[tokio::test]
async fn group_administrators_adjust_xp_in_reply_to_a_members_message() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    let (_, bot) = world.spawn_bot(world.settings(), stop.clone()).await;
    let fake = &world.fake;
    fake.set_member(GROUP, 7007, "administrator", "Mod");
    fake.set_member(GROUP, 1001, "member", "Ada");
    let said = group_message(GROUP, 40, 1001, "Ada", None, "Hello everyone, good morning");
    fake.push_update(said.clone());
    eventually("ada's profile", || async {
        world
            .query
            .profile(&who("telegram:1001"))
            .await
            .ok()
            .flatten()
    })
    .await;
    let reply = |id: i64, user: u64, first: &str, text: &str| {
        let mut update = group_message(GROUP, id, user, first, None, text);
        update["message"]["reply_to_message"] = said["message"].clone();
        update
    };
    fake.push_update(reply(41, 7007, "Mod", "/xp add 500 event winner"));
    world
        .reply_containing(GROUP, "+500 XP for Ada (event winner). Now 510 XP.")
        .await;
    fake.push_update(reply(42, 1001, "Ada", "/xp add 100000 me"));
    world
        .reply_containing(GROUP, "Only the group's administrators can change XP.")
        .await;
    fake.push_update(group_message(
        GROUP,
        43,
        7007,
        "Mod",
        None,
        "/xp add 5 no reply",
    ));
    world
        .reply_containing(GROUP, "Reply to the member's message with:")
        .await;
    fake.push_update(reply(44, 7007, "Mod", "/xp set 1000"));
    world
        .reply_containing(GROUP, "Not done: give a reason")
        .await;
    fake.push_update(reply(45, 7007, "Mod", "/xp set 1,000 fix"));
    world
        .reply_containing(GROUP, "+490 XP for Ada (fix). Now 1,000 XP.")
        .await;
    fake.push_update(reply(45, 7007, "Mod", "/xp set 1,000 fix"));
    world
        .reply_containing(GROUP, "(This request was made before: counted once.)")
        .await;
    let ada = world
        .query
        .profile(&who("telegram:1001"))
        .await
        .expect("profile")
        .expect("ada");
    assert_eq!(ada.xp, 1000);
    let (entries, _) = world
        .env
        .store
        .audit(&ttfd::store::audit::AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("audit");
    let by: Vec<_> = entries.iter().map(|e| (e.amount, e.by.clone())).collect();
    let moderator = Some(WireIdentity {
        platform: "telegram".into(),
        user: "7007".into(),
    });
    assert_eq!(
        by,
        vec![(Some(490), moderator.clone()), (Some(500), moderator)]
    );
    stop.cancel();
    bot.await.expect("bot task").expect("bot");
    world.cleanup().await;
}

/// `telegram.chat_rates` and `[[boosts]]` (docs/moderation.md): a chat at 0 % counts
/// its messages for nothing, a boost running for Telegram triples the others; the
/// rate travels in the event as `data.mult`.
#[tokio::test]
async fn chat_rates_and_a_running_boost_set_the_messages_mult() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    let other: i64 = -1_005_555_555;
    let mut settings = world.settings();
    settings.telegram.chats = vec![other];
    settings.telegram.chat_rates.insert(GROUP.to_string(), 0);
    let hour = 3_600_000;
    let at = |ms: i64| ttfd::shared::view::rfc3339(ms).expect("a time");
    settings.boosts = vec![
        ttfd::settings::rates::BoostSettings {
            name: "triple XP".into(),
            from: at(ttfd::now_ms() - hour),
            to: at(ttfd::now_ms() + hour),
            mult: 300,
            platforms: vec!["telegram".into()],
        },
        ttfd::settings::rates::BoostSettings {
            name: "over".into(),
            from: at(ttfd::now_ms() - 3 * hour),
            to: at(ttfd::now_ms() - 2 * hour),
            mult: 1000,
            platforms: vec![],
        },
    ];
    settings.validate().expect("valid settings");
    let (_, bot) = world.spawn_bot(settings, stop.clone()).await;
    world.fake.push_update(group_message(
        GROUP,
        50,
        1001,
        "Ada",
        None,
        "Hello everyone, good morning",
    ));
    world.fake.push_update(group_message(
        other,
        51,
        2002,
        "Bob",
        None,
        "Hello from the other group",
    ));
    let events = telegram_events(&world.env, 2).await;
    let mults: Vec<_> = events
        .iter()
        .map(|e| match &e.payload {
            Payload::Message { mult, .. } => (e.identity.user.as_str().to_owned(), *mult),
            other => panic!("a message, not {other:?}"),
        })
        .collect();
    assert_eq!(
        mults,
        vec![("1001".into(), Some(0)), ("2002".into(), Some(300))]
    );
    let bob = eventually("bob's xp", || async {
        world
            .query
            .profile(&who("telegram:2002"))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(bob.xp, 30);
    let ada = eventually("ada's message", || async {
        world
            .query
            .profile(&who("telegram:1001"))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!((ada.xp, ada.messages), (0, 1));
    stop.cancel();
    bot.await.expect("bot task").expect("bot");
    world.cleanup().await;
}

#[tokio::test]
async fn a_message_is_confirmed_to_telegram_only_once_jetstream_stored_it() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    let (_, bot) = world.spawn_bot(world.settings(), stop.clone()).await;
    let (env, fake) = (&world.env, &world.fake);

    // No events stream: nothing stores the event. A plain subscriber sees the attempt
    // (and, never answering, makes it time out).
    env.broker
        .js
        .delete_stream(env.broker.subjects.events_stream())
        .await
        .expect("delete the events stream");
    let mut attempts = env
        .broker
        .client
        .subscribe(env.broker.subjects.event("telegram", "message"))
        .await
        .expect("subscribe");
    env.broker.client.flush().await.expect("flush");
    let id = fake.push_update(group_message(
        GROUP,
        40,
        1001,
        "Ada",
        None,
        "Is anybody out there?",
    ));
    tokio::time::timeout(crate::common::TIMEOUT, attempts.next())
        .await
        .expect("a publish attempt")
        .expect("subscribed");
    assert!(
        fake.confirmed_offset() <= id,
        "confirmed before it was stored"
    );

    // The stream is back: the next attempt stores the event, then it is confirmed.
    attempts.unsubscribe().await.expect("unsubscribe");
    env.broker.setup().await.expect("recreate the streams");
    let events = telegram_events(env, 1).await;
    assert_eq!(events[0].id.as_str(), format!("telegram:msg:{GROUP}:40"));
    eventually("the update confirmed", || async {
        (fake.confirmed_offset() > id).then_some(())
    })
    .await;

    stop.cancel();
    bot.await.expect("bot task").expect("stops");
    world.cleanup().await;
}

fn xp(id: &str, identity: &str, amount: i32) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts: ttfd::now_ms(),
        identity: who(identity),
        name: None,
        payload: Payload::Xp {
            amount,
            reason: "test".into(),
            by: None,
        },
    }
}

#[tokio::test]
async fn rank_ups_go_privately_to_started_users_and_to_the_group_otherwise() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    let (_, bot) = world.spawn_bot(world.settings(), stop.clone()).await;
    let fake = &world.fake;

    // 3003 and 5005 started the bot; 4004 did not, and is in the group.
    fake.push_update(private_message(3003, "Ann", 1, "/start"));
    world.reply_containing(3003, "Hi Ann!").await;
    fake.push_update(private_message(5005, "Bob", 1, "/start"));
    world.reply_containing(5005, "Hi Bob!").await;
    fake.set_member(GROUP, 4004, "member", "Grace <3");
    fake.set_member(GROUP, 5005, "member", "Bob");

    // The rank changes travel the real path: events, sync, outbox, notify stream.
    // Telegram first answers Ann with flood control and says Bob blocked the bot.
    fake.fail_next(
        "sendMessage",
        Some(3003),
        429,
        json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1",
               "parameters": {"retry_after": 1}}),
    );
    fake.fail_next(
        "sendMessage",
        Some(5005),
        403,
        json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}),
    );
    world
        .env
        .publish(&[
            xp("t:xp:3003", "telegram:3003", 600),
            xp("t:xp:4004", "telegram:4004", 600),
            xp("t:xp:5005", "telegram:5005", 600),
            xp("t:xp:6006", "discord:6006", 600),
        ])
        .await;

    let private = world
        .reply_containing(3003, "You reached rank F II with 600 XP!")
        .await;
    assert!(private.get("parse_mode").is_none());
    let attempts: Vec<_> = fake
        .calls("sendMessage")
        .into_iter()
        .filter(|c| {
            c.body["chat_id"] == json!(3003)
                && c.body["text"].as_str().is_some_and(|t| t.contains("F II"))
        })
        .collect();
    assert_eq!(
        attempts.len(),
        2,
        "one refused with 429, one delivered: {:#?}",
        fake.calls("sendMessage")
    );
    assert!(
        attempts[1].at - attempts[0].at >= Duration::from_millis(900),
        "retried after retry_after: {:?}",
        attempts[1].at - attempts[0].at
    );

    let grace = world.reply_containing(GROUP, "tg://user?id=4004").await;
    assert_eq!(grace["parse_mode"], json!("HTML"));
    assert_eq!(
        grace["text"],
        json!("🎉 <a href=\"tg://user?id=4004\">Grace &lt;3</a> reached rank <b>F II</b>!")
    );
    // Bob blocked the bot: announced in the group, and forgotten as started.
    world.reply_containing(GROUP, "tg://user?id=5005").await;
    let started = ttfd::telegram::started::StartedUsers::open(
        &world.env.broker.js,
        &world.env.broker.subjects,
    )
    .await
    .expect("bucket");
    assert!(
        !started
            .contains(teloxide::types::UserId(5005))
            .await
            .expect("kv")
    );
    assert!(
        started
            .contains(teloxide::types::UserId(3003))
            .await
            .expect("kv")
    );

    // A user without Telegram is not announced: a later notice arrives, that one never.
    world
        .env
        .publish(&[xp("t:xp:3003:b", "telegram:3003", 700)])
        .await;
    world.reply_containing(3003, "You reached rank F III").await;
    let group_posts = fake.messages_to(GROUP).len();
    assert_eq!(group_posts, 2, "{:?}", fake.messages_to(GROUP));

    stop.cancel();
    bot.await.expect("bot task").expect("stops");
    world.cleanup().await;
}

#[tokio::test]
async fn webhook_mode_registers_the_hook_and_stores_posted_updates() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    let mut settings = world.settings();
    settings.telegram.mode = TelegramMode::Webhook;
    settings.telegram.listen = "127.0.0.1:0".into();
    settings.telegram.webhook_url = Some("https://bot.example.org/hooks/telegram".into());
    settings.telegram.webhook_secret =
        Some(SecretString::from("s3cret-token_1-s3cret-token_1-s3cret"));
    let (addr, bot) = world.spawn_bot(settings, stop.clone()).await;
    let addr = addr.expect("webhook mode listens");
    let fake = &world.fake;

    let set = fake.calls("setWebhook");
    assert_eq!(set.len(), 1);
    assert_eq!(
        set[0].body["url"],
        json!("https://bot.example.org/hooks/telegram")
    );
    assert_eq!(
        set[0].body["secret_token"],
        json!("s3cret-token_1-s3cret-token_1-s3cret")
    );
    assert_eq!(
        set[0].body["allowed_updates"],
        json!(["message", "my_chat_member"])
    );

    let http = reqwest::Client::new();
    let hook = format!("http://{addr}/hooks/telegram");
    let mut update = group_message(GROUP, 77, 1001, "Ada", None, "Posted through the webhook");
    update["update_id"] = json!(900_000_001);
    let wrong = http
        .post(&hook)
        .header("X-Telegram-Bot-Api-Secret-Token", "guess")
        .json(&update)
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);
    let right = http
        .post(&hook)
        .header(
            "X-Telegram-Bot-Api-Secret-Token",
            "s3cret-token_1-s3cret-token_1-s3cret",
        )
        .json(&update)
        .send()
        .await
        .expect("request");
    assert_eq!(right.status(), reqwest::StatusCode::OK);
    // 200 means stored: the event is on the stream now.
    let events = telegram_events(&world.env, 1).await;
    assert_eq!(events[0].id.as_str(), format!("telegram:msg:{GROUP}:77"));

    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    assert_eq!(fake.get_updates_calls(), 0, "webhook mode never polls");

    stop.cancel();
    bot.await.expect("bot task").expect("stops");
    world.cleanup().await;
}

#[tokio::test]
async fn a_token_telegram_refuses_stops_start_up_naming_the_key() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.telegram.token = Some(SecretString::from("123456789:WRONG"));
    let err = TelegramBot::build(&settings, world.env.broker.clone(), GRACE)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("telegram.token"), "{err}");
    world.cleanup().await;
}

#[tokio::test]
async fn without_a_token_ttfd_telegram_refuses_to_start() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ttfd"))
        .arg("telegram")
        .env_remove("TTFD__TELEGRAM__TOKEN")
        .env("TTFD__LOG__FILTER", "warn")
        .output()
        .await
        .expect("run ttfd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("telegram.token") && stderr.contains("is not set"),
        "{stderr}"
    );
}

/// `/privacy hide|show` (SPEC 7.3): the member's `prefs` event; hidden, their `/rank`
/// is theirs alone (in private; a group is told to ask privately) and `/top` closes up.
#[tokio::test]
async fn privacy_hides_a_member_from_the_group_and_shows_them_again() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    let (_, bot) = world.spawn_bot(world.settings(), stop.clone()).await;
    let fake = &world.fake;
    fake.push_update(group_message(
        GROUP,
        20,
        1001,
        "Ada",
        None,
        "Morning, everyone!",
    ));
    fake.push_update(group_message(
        GROUP,
        21,
        1002,
        "Bob",
        None,
        "Good morning to you",
    ));
    eventually("both profiles", || async {
        world.query.profile(&who("telegram:1002")).await.ok()??;
        world.query.profile(&who("telegram:1001")).await.ok()?
    })
    .await;

    fake.push_update(private_message(1001, "Ada", 30, "/privacy"));
    world.reply_containing(1001, "/privacy hide").await;
    fake.push_update(private_message(1001, "Ada", 31, "/privacy hide"));
    world
        .reply_containing(1001, "You are hidden, on every platform")
        .await;
    eventually("the preference", || async {
        world
            .env
            .store
            .profile(&who("telegram:1001"))
            .await
            .ok()?
            .filter(|p| p.hidden)
    })
    .await;
    assert_eq!(
        world
            .query
            .profile(&who("telegram:1001"))
            .await
            .expect("ask"),
        None,
        "to others a hidden member is no one"
    );
    world.env.store.drain_standings().await.expect("standings");

    fake.push_update(group_message(GROUP, 22, 1001, "Ada", None, "/rank"));
    world
        .reply_containing(GROUP, "ask me /rank in a private chat")
        .await;
    fake.push_update(private_message(1001, "Ada", 32, "/rank"));
    let own = world
        .reply_containing(1001, "Hidden: on no leaderboard")
        .await;
    assert!(
        own["text"].as_str().is_some_and(|t| t.contains("10 XP")),
        "{own}"
    );
    fake.push_update(group_message(GROUP, 23, 1002, "Bob", None, "/top"));
    let top = world.reply_containing(GROUP, "Leaderboard, all time").await;
    assert_eq!(top["text"], "Leaderboard, all time\n1. Bob — 10 XP · F I");

    fake.push_update(private_message(1001, "Ada", 33, "/privacy show"));
    world.reply_containing(1001, "You are shown again").await;
    eventually("shown again", || async {
        world.query.profile(&who("telegram:1001")).await.ok()?
    })
    .await;
    stop.cancel();
    bot.await.expect("join").expect("the bot stops cleanly");
    world.cleanup().await;
}

/// `/gdpr export` (docs/privacy.md): the member's export comes as a document in their
/// private chat, asked there or in the group; a member who never started the bot is
/// told how to.
#[tokio::test]
async fn gdpr_export_sends_the_member_their_data_privately() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    let (_, bot) = world.spawn_bot(world.settings(), stop.clone()).await;
    let fake = &world.fake;
    fake.push_update(group_message(
        GROUP,
        40,
        1001,
        "Ada",
        None,
        "Hello from Ada here",
    ));
    eventually("Ada's profile", || async {
        world.query.profile(&who("telegram:1001")).await.ok()?
    })
    .await;

    fake.push_update(private_message(1001, "Ada", 41, "/gdpr"));
    world.reply_containing(1001, "/gdpr export").await;
    fake.push_update(private_message(1001, "Ada", 42, "/gdpr export"));
    world
        .reply_containing(1001, "That file is everything TTFD holds about you")
        .await;
    let sent = fake.calls("sendDocument");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["chat_id"], json!(1001));
    let doc = &sent[0].body["document"];
    assert_eq!(doc["format"], "ttfd-export/1");
    assert_eq!(doc["profile"]["messages"], 1);
    assert_eq!(
        doc["events"][0]["envelope"]["id"],
        format!("telegram:msg:{GROUP}:40")
    );

    fake.push_update(group_message(GROUP, 43, 1001, "Ada", None, "/gdpr export"));
    world
        .reply_containing(GROUP, "Sent to you in a private chat with me")
        .await;
    fake.fail_next(
        "sendDocument",
        Some(1001),
        403,
        json!({"ok": false, "error_code": 403,
               "description": "Forbidden: bot can't initiate conversation with a user"}),
    );
    fake.push_update(group_message(GROUP, 44, 1001, "Ada", None, "/gdpr export"));
    world.reply_containing(GROUP, "press Start").await;
    stop.cancel();
    bot.await.expect("join").expect("the bot stops cleanly");
    world.cleanup().await;
}

/// `/gdpr delete` (SPEC 7.4): asks for a confirmation first; confirmed, every account of
/// the member's profile is erased and they are no one any more.
#[tokio::test]
async fn gdpr_delete_erases_the_member_once_confirmed() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    let (_, bot) = world.spawn_bot(world.settings(), stop.clone()).await;
    let fake = &world.fake;
    fake.push_update(group_message(
        GROUP,
        50,
        1001,
        "Ada",
        None,
        "Hello from Ada here",
    ));
    eventually("Ada's profile", || async {
        world.query.profile(&who("telegram:1001")).await.ok()?
    })
    .await;
    fake.push_update(private_message(1001, "Ada", 51, "/gdpr delete"));
    world.reply_containing(1001, "/gdpr delete confirm").await;
    assert!(
        world
            .query
            .profile(&who("telegram:1001"))
            .await
            .expect("ask")
            .is_some()
    );
    fake.push_update(private_message(1001, "Ada", 52, "/gdpr delete confirm"));
    world.reply_containing(1001, "Erasing").await;
    eventually("the erasure", || async {
        let gone = world
            .env
            .store
            .profile(&who("telegram:1001"))
            .await
            .ok()?
            .is_none();
        let finished: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM erasure_work)")
            .fetch_one(&world.env.store.pool)
            .await
            .ok()?;
        (gone && finished).then_some(())
    })
    .await;
    stop.cancel();
    bot.await.expect("join").expect("the bot stops cleanly");
    world.cleanup().await;
}

#[tokio::test]
async fn a_closed_season_is_announced_in_the_group_once() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    world.spawn_bot(world.settings(), stop.clone()).await;
    // XP on the days of the test season `t1` (2026-02-28 to 2026-03-01).
    let feb28 = 1_772_280_000_000; // 2026-02-28T12:00:00Z
    let grant = |id: &str, who_: &str, amount: i32| Event {
        ts: feb28,
        name: Some(who_.split(':').nth(1).unwrap_or_default().to_owned()),
        ..xp(id, who_, amount)
    };
    let events = [
        grant("t:s:1", "telegram:3003", 700),
        grant("t:s:2", "telegram:4004", 900),
        grant("t:s:3", "discord:6006", 100),
    ];
    world.env.publish(&events).await;
    world.env.wait_for_model(&events).await;
    let now = time::OffsetDateTime::now_utc();
    for _ in 0..2 {
        world
            .env
            .store
            .close_seasons(
                now,
                time::Duration::ZERO,
                &ttfd::store::seasons::ClosingRules::seasons_only(2, &[]),
            )
            .await
            .expect("close");
    }
    let text = world.reply_containing(GROUP, "Season t1 is over").await;
    assert_eq!(
        text["text"],
        json!(
            "🏆 Season t1 is over (2026-02-28 to 2026-03-01, 3 members ranked).\n\
             🥇 4004 — 900 XP\n🥈 3003 — 700 XP"
        )
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let announced = world
        .fake
        .messages_to(GROUP)
        .into_iter()
        .filter(|m| m["text"].as_str().is_some_and(|t| t.contains("Season t1")))
        .count();
    assert_eq!(announced, 1, "closed and announced once");
    stop.cancel();
}

/// `/rank details [period]` (docs/rules.md, "The XP statement"): where one's XP came
/// from, by source, platform and day; in a group as a reply, like `/rank`.
#[tokio::test]
async fn rank_details_says_where_the_xp_came_from() {
    let world = World::new().await;
    let stop = CancellationToken::new();
    let (_, bot) = world.spawn_bot(world.settings(), stop.clone()).await;
    let fake = &world.fake;
    fake.push_update(group_message(
        GROUP,
        40,
        1001,
        "Ada",
        None,
        "Morning, everyone!",
    ));
    world
        .env
        .publish(&[xp("t:xp:ada", "telegram:1001", 25)])
        .await;
    eventually("ada's profile", || async {
        world
            .query
            .profile(&who("telegram:1001"))
            .await
            .ok()?
            .filter(|p| p.xp == 35)
    })
    .await;
    fake.push_update(private_message(1001, "Ada", 41, "/rank details all"));
    let reply = world
        .reply_containing(1001, "where the XP came from, all time: 35 XP")
        .await;
    let text = reply["text"].as_str().expect("text");
    assert!(
        text.contains("Messages: 10 XP (1 message)")
            && text.contains("Given by moderators and seasons: +25 XP")
            && text.contains("By platform: Telegram 35 XP"),
        "{text}"
    );
    fake.push_update(private_message(1001, "Ada", 42, "/rank details decade"));
    world
        .reply_containing(1001, "\"decade\" is not one of those")
        .await;
    stop.cancel();
    bot.await.expect("join").expect("the bot stops cleanly");
    world.cleanup().await;
}
