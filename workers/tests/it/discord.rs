//! The Discord bot end to end: gateway payloads (Discord's documented JSON, through
//! serenity's models) drive the bot; its events go through real NATS and the sync
//! consumers into PostgreSQL; rank roles, announcements and slash-command replies go
//! to a fake Discord HTTP API on localhost; profiles come from the real query service.

use std::sync::Arc;
use std::time::Duration;

use crate::common::fake_discord::FakeDiscord;
use crate::common::{TestEnv, eventually};
use secrecy::SecretString;
use serde_json::{Value, json};
use serenity::all::{CommandInteraction, Guild, GuildId, Member, Message, RoleId, VoiceState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ttfd::discord::{DiscordApi, DiscordBot, roles};
use ttfd::query::QueryClient;
use ttfd::settings::DiscordSettings;
use ttfd::settings::discord::RankRole;
use ttfd::shared::view::{Period, Profile};
use ttfd::shared::wire::EventId;
use ttfd::shared::{Event, Identity, Payload};
use ttfd::store::seasons::ClosingRules;

const GUILD: u64 = 1_000_000_000_000_000_001;
const TALK: u64 = 1_100_000_000_000_000_009;
const ANNOUNCE: u64 = 1_500;
const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;

/// A running world: the pipeline (sync consumer, outbox relay, query service), the
/// bot with its publisher and rank-role consumer, and a fake Discord.
struct World {
    env: TestEnv,
    fake: FakeDiscord,
    bot: Arc<DiscordBot>,
    query: QueryClient,
    stop: CancellationToken,
    events: mpsc::Sender<Event>,
}

async fn world(tune: impl FnOnce(&mut DiscordSettings)) -> World {
    let fake = FakeDiscord::start().await;
    let url = fake.url.clone();
    let env = TestEnv::with(move |s| {
        s.discord.token = Some(SecretString::from("test-token"));
        s.discord.guild_id = Some(GuildId::new(GUILD));
        s.discord.api_url = Some(url);
        tune(&mut s.discord);
    })
    .await;
    env.settings.validate().expect("test settings are valid");
    let stop = CancellationToken::new();
    env.spawn_worker(stop.clone()).await;
    env.spawn_relay(stop.clone());
    tokio::spawn(ttfd::query::serve(
        env.store.clone(),
        env.broker.clone(),
        stop.clone(),
    ));
    let query = QueryClient::new(
        env.broker.client.clone(),
        &env.settings.nats.prefix,
        Duration::from_secs(5),
    );
    let (tx, rx) = mpsc::channel(1000);
    tokio::spawn(ttfd::discord::publish_events(
        env.broker.clone(),
        rx,
        stop.clone(),
        Duration::from_secs(5),
    ));
    let bot = Arc::new(new_bot(&env, query.clone(), tx.clone(), &stop));
    let notices = ttfd::broker::notices::NoticeConsumer::open(&env.broker, roles::POLICY)
        .await
        .expect("rank consumer");
    tokio::spawn(notices.run(Arc::new(bot.roles.clone()), stop.clone()));
    World {
        env,
        fake,
        bot,
        query,
        stop,
        events: tx,
    }
}

fn new_bot(
    env: &TestEnv,
    query: QueryClient,
    events: mpsc::Sender<Event>,
    stop: &CancellationToken,
) -> DiscordBot {
    let d = &env.settings.discord;
    let token = d.token.as_ref().expect("token");
    let api = DiscordApi::new(token, d.api_url.as_deref());
    DiscordBot::new(
        &env.settings,
        GuildId::new(GUILD),
        api,
        query,
        events,
        stop.clone(),
    )
}

impl World {
    async fn profile(&self, who: &str) -> Option<Profile> {
        self.query
            .profile(&Identity::parse(who).expect("identity"))
            .await
            .ok()
            .flatten()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.env.cleanup().await;
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a documented payload deserialises")
}

fn snowflake(ms: i64, n: u64) -> u64 {
    (((ms - DISCORD_EPOCH_MS) as u64) << 22) | n
}

fn user(id: u64, name: &str) -> Value {
    json!({"id": id.to_string(), "username": name, "global_name": null, "discriminator": "0", "avatar": null})
}

/// A `MESSAGE_CREATE` `d`.
fn message(id: u64, author: Value, content: &str) -> Message {
    parse(json!({
        "id": id.to_string(),
        "channel_id": "1100000000000000001",
        "guild_id": GUILD.to_string(),
        "author": author,
        "member": {"nick": null, "roles": [], "joined_at": "2021-01-01T00:00:00.000000+00:00",
                   "deaf": false, "mute": false, "flags": 0},
        "content": content,
        "timestamp": "2025-11-25T10:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0
    }))
}

/// A `VOICE_STATE_UPDATE` `d`.
fn voice_state(user_id: u64, name: &str, channel: Option<u64>) -> VoiceState {
    parse(json!({
        "guild_id": GUILD.to_string(),
        "channel_id": channel.map(|c| c.to_string()),
        "user_id": user_id.to_string(),
        "member": {"user": user(user_id, name), "nick": null, "roles": [],
                   "joined_at": "2021-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0},
        "session_id": "90326bd25d71d39b9ef95b299e3872ff",
        "deaf": false, "mute": false, "self_deaf": false, "self_mute": false,
        "self_stream": false, "self_video": false, "suppress": false,
        "request_to_speak_timestamp": null
    }))
}

/// A `GUILD_CREATE` `d` with these members in the voice channel [`TALK`].
fn guild_create(in_voice: &[(u64, &str)]) -> Guild {
    let mut guild: Value = serde_json::from_str(
        r#"{
        "id": "1000000000000000001", "name": "TTFD", "icon": null, "splash": null,
        "discovery_splash": null, "owner_id": "1", "afk_channel_id": "1100000000000000099",
        "afk_timeout": 300, "verification_level": 1, "default_message_notifications": 0,
        "explicit_content_filter": 0, "roles": [], "emojis": [], "features": [],
        "mfa_level": 0, "application_id": null, "system_channel_id": null,
        "system_channel_flags": 0, "rules_channel_id": null, "vanity_url_code": null,
        "description": null, "banner": null, "premium_tier": 0, "preferred_locale": "en-US",
        "public_updates_channel_id": null, "nsfw_level": 0,
        "premium_progress_bar_enabled": false, "stickers": [],
        "joined_at": "2024-01-01T00:00:00.000000+00:00", "large": false,
        "unavailable": false, "member_count": 2, "channels": [], "threads": [],
        "presences": [], "stage_instances": [], "guild_scheduled_events": [],
        "soundboard_sounds": []
    }"#,
    )
    .expect("json");
    guild["voice_states"] = in_voice
        .iter()
        .map(|(id, _)| {
            json!({"channel_id": TALK.to_string(), "user_id": id.to_string(),
                   "session_id": "s", "deaf": false, "mute": false, "self_deaf": false,
                   "self_mute": false, "self_video": false, "suppress": false,
                   "request_to_speak_timestamp": null})
        })
        .collect();
    guild["members"] = in_voice
        .iter()
        .map(|(id, name)| {
            json!({"user": user(*id, name), "nick": null, "roles": [],
                   "joined_at": "2021-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0})
        })
        .collect();
    parse(guild)
}

/// An `INTERACTION_CREATE` `d`: a chat input command by `caller`.
fn interaction(caller: u64, name: &str, options: Value) -> CommandInteraction {
    let member = json!({"roles": [], "permissions": "0"});
    interaction_by(caller, member, 1_320_000_000_000_000_001, name, options)
}

/// As [`interaction`], with the caller's `roles` and `permissions` in `member`, the
/// interaction's id, and `resolved` data for the users the options name (Discord
/// sends both).
fn interaction_by(
    caller: u64,
    member: Value,
    id: u64,
    name: &str,
    options: Value,
) -> CommandInteraction {
    let resolved = json!({
        "users": {"555": {"id": "555", "username": "ann", "global_name": "Ann",
                          "discriminator": "0", "avatar": null}},
        "members": {"555": {"nick": "Annie", "roles": [],
                            "joined_at": "2021-01-01T00:00:00.000000+00:00", "deaf": false,
                            "mute": false, "flags": 0, "permissions": "0"}}
    });
    parse(json!({
        "id": id.to_string(),
        "application_id": "1300000000000000009",
        "type": 2,
        "data": {"id": "1300000000000000077", "name": name, "type": 1, "options": options,
                 "resolved": resolved},
        "guild_id": GUILD.to_string(),
        "channel_id": "1100000000000000001",
        "member": {"user": json!({"id": caller.to_string(), "username": "nelly",
                                  "global_name": "Nelly", "discriminator": "0", "avatar": null}),
                   "nick": null, "roles": member["roles"], "joined_at": "2021-01-01T00:00:00.000000+00:00",
                   "deaf": false, "mute": false, "flags": 0, "permissions": member["permissions"]},
        "token": format!("token-{caller}-{name}-{id}"),
        "version": 1,
        "app_permissions": "0",
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": GUILD.to_string()},
        "context": 0,
        "attachment_size_limit": 10485760
    }))
}

fn xp_event(id: &str, who: &str, amount: i32) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts: ttfd::now_ms() - 1000,
        identity: Identity::parse(who).expect("identity"),
        name: Some("Nelly".into()),
        payload: Payload::Xp {
            amount,
            reason: "test".into(),
            by: None,
        },
    }
}

#[tokio::test]
async fn guild_messages_and_voice_time_become_profile_xp() {
    let w = world(|_| {}).await;
    let now = ttfd::now_ms();
    let human = json!({"id": "111", "username": "ann", "global_name": "Ann", "discriminator": "0", "avatar": null});
    let bot =
        json!({"id": "999", "username": "mee6", "discriminator": "0", "avatar": null, "bot": true});
    w.bot
        .on_message(&message(snowflake(now - 5000, 1), human, "hello everyone"))
        .await;
    w.bot
        .on_message(&message(snowflake(now - 4000, 2), bot, "beep boop hello"))
        .await;

    // Two people were already talking when the bot connected.
    let t0 = now - 120_000;
    w.bot
        .on_guild_create(&guild_create(&[(111, "ann"), (222, "bob")]), t0)
        .await;
    assert!(w.bot.is_counting(serenity::all::UserId::new(222)));
    w.bot.tick(t0 + 56_000).await;
    w.bot
        .on_voice_state(&voice_state(222, "bob", None), t0 + 70_000)
        .await;
    assert!(!w.bot.is_counting(serenity::all::UserId::new(111)), "alone");

    let ann = eventually("ann's message and voice time", || async {
        w.profile("discord:111")
            .await
            .filter(|p| p.messages == 1 && p.voice_seconds == 70)
    })
    .await;
    assert_eq!(ann.display_name.as_deref(), Some("Ann"));
    // 10 for the message; voice in 15 s quanta: 45 s → 3 (tick), 25 s → 1 (leave).
    assert_eq!(ann.xp, 14);
    let bob = eventually("bob's voice time", || async {
        w.profile("discord:222")
            .await
            .filter(|p| p.voice_seconds == 70)
    })
    .await;
    assert_eq!(bob.display_name.as_deref(), Some("bob"));
    assert!(
        w.profile("discord:999").await.is_none(),
        "bots earn nothing"
    );
    w.stop().await;
}

/// `discord.xp_rates` (docs/moderation.md): a double-XP channel pays its messages
/// double and a no-XP voice channel counts the time but pays nothing; the events carry
/// the rate as `data.mult`.
#[tokio::test]
async fn channel_rates_travel_in_the_events_as_their_mult() {
    let w = world(|d| {
        d.xp_rates
            .channels
            .insert("1100000000000000001".into(), 200);
        d.xp_rates.channels.insert(TALK.to_string(), 0);
    })
    .await;
    let now = ttfd::now_ms();
    let ann = json!({"id": "111", "username": "ann", "global_name": "Ann", "discriminator": "0", "avatar": null});
    w.bot
        .on_message(&message(snowflake(now - 5000, 1), ann, "hello everyone"))
        .await;
    let t0 = now - 120_000;
    w.bot
        .on_guild_create(&guild_create(&[(111, "ann"), (222, "bob")]), t0)
        .await;
    w.bot
        .on_voice_state(&voice_state(222, "bob", None), t0 + 70_000)
        .await;
    let ann = eventually("ann's message and voice time", || async {
        w.profile("discord:111")
            .await
            .filter(|p| p.messages == 1 && p.voice_seconds == 70)
    })
    .await;
    assert_eq!(ann.xp, 20, "the message at 200 %, the voice time at 0 %");
    let mults: Vec<(String, Option<u16>)> = crate::common::stored_events(&w.env, "discord")
        .await
        .into_iter()
        .filter(|e| e.identity.user.as_str() == "111")
        .map(|e| {
            let mult = match e.payload {
                Payload::Message { mult, .. } | Payload::Voice { mult, .. } => mult,
                _ => None,
            };
            (e.kind().to_owned(), mult)
        })
        .collect();
    assert_eq!(
        mults,
        vec![("message".into(), Some(200)), ("voice".into(), Some(0))]
    );
    w.stop().await;
}

#[tokio::test]
async fn a_restarted_bot_counts_members_already_in_voice_and_a_crash_loses_under_a_minute() {
    let w = world(|_| {}).await;
    let t0 = ttfd::now_ms() - 300_000;
    let in_voice = [(111, "ann"), (222, "bob")];
    // The first process ticks every second for 100 s, then dies without flushing.
    w.bot.on_guild_create(&guild_create(&in_voice), t0).await;
    for s in 1..=100 {
        w.bot.tick(t0 + s * 1000).await;
    }
    // (w.bot is never called again: a dead process flushes nothing.)
    // The new process starts 5 s later and finds both still in voice.
    let restarted = new_bot(&w.env, w.query.clone(), w.events.clone(), &w.stop);
    let t1 = t0 + 105_000;
    restarted
        .on_guild_create(&guild_create(&in_voice), t1)
        .await;
    for s in 1..=95 {
        restarted.tick(t1 + s * 1000).await;
    }
    restarted.close(t1 + 95_000).await;
    // Eligible: 100 s before the crash + 95 s after the restart. The segments apply one
    // by one: wait for all that were published (the close's last one included).
    let ann = eventually("ann's voice time after the restart", || async {
        w.profile("discord:111")
            .await
            .filter(|p| p.voice_seconds >= 90 + 95)
    })
    .await;
    let lost = 195 - ann.voice_seconds;
    assert!(
        (0..60).contains(&lost),
        "lost {lost} s of 195 s (published {})",
        ann.voice_seconds
    );
    // Before the crash two 45 s segments were published (10 s lost); after the restart
    // all 95 s (two segments, then the graceful close).
    assert_eq!(ann.voice_seconds, 90 + 95);
    w.stop().await;
}

fn rank_roles(s: &mut DiscordSettings) {
    s.rank_roles = vec![
        RankRole {
            rank: "F".into(),
            role: serenity::all::RoleId::new(1001),
        },
        RankRole {
            rank: "E".into(),
            role: serenity::all::RoleId::new(1002),
        },
        RankRole {
            rank: "E II".into(),
            role: serenity::all::RoleId::new(1003),
        },
    ];
    s.announce_channel = Some(serenity::all::ChannelId::new(ANNOUNCE));
}

/// `stack` mode and the reconciliation (docs/discord.md): `/ranks sync` by a moderator
/// gives every member the roles of every rank they reached and takes away rank roles
/// above, waiting out 429s; `ttfd discord sync-roles` does the same from the database,
/// and resumes after a given member.
#[tokio::test]
async fn ranks_sync_reconciles_every_member_in_stack_mode_through_rate_limits() {
    let w = world(|d| {
        rank_roles(d);
        d.announce_channel = None;
        d.rank_role_mode = ttfd::settings::discord::RankRoleMode::Stack;
    })
    .await;
    // 3,600 XP: rank 5, E II.
    w.env
        .publish(&[xp_event("t:xp:s1", "discord:111", 3600)])
        .await;
    eventually("the profile", || async { w.profile("discord:111").await }).await;
    // Members appear once their notices were handled (they were not in the guild).
    w.fake.add_member(GUILD, 111, &[7]);
    w.fake.add_member(GUILD, 222, &[7, 1003]);
    w.fake.rate_limit_role_calls(2, 0.5);
    let http = w.bot.roles.api.http.clone();
    let manager = json!({"roles": [], "permissions": "32"});
    let sync = json!([{"name": "sync", "type": 1, "options": []}]);
    w.bot
        .on_command(
            &http,
            &interaction_by(80_351_110_224_678_912, manager, 8001, "ranks", sync),
        )
        .await;
    let reply = &w.fake.interaction_responses()[0];
    assert!(
        reply["data"]["content"]
            .as_str()
            .is_some_and(|t| t.starts_with("Reconciling the rank roles")),
        "{reply}"
    );
    let summary = eventually("the summary", || async {
        w.fake.messages(1_100_000_000_000_000_001).first().cloned()
    })
    .await;
    assert_eq!(
        summary["content"],
        "Rank roles reconciled: 2 members checked, 2 changed."
    );
    assert_eq!(
        w.fake.roles(GUILD, 111),
        Some(vec![7, 1001, 1002, 1003]),
        "F, E and E II"
    );
    assert_eq!(
        w.fake.roles(GUILD, 222),
        Some(vec![7, 1001]),
        "no profile: rank 1 only"
    );
    let limited = w.fake.calls().iter().filter(|c| c.status == 429).count();
    assert_eq!(limited, 2, "two 429s waited out");

    // The CLI, from the database: nothing to do, then one member changed by hand.
    let dir = std::env::temp_dir().join(format!("ttfd-sync-roles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("ttfd.toml");
    let toml = format!(
        "[discord]\ntoken = \"test-token\"\nguild_id = \"{GUILD}\"\napi_url = \"{}\"\n\
         rank_role_mode = \"stack\"\nrank_roles = [{{ rank = \"F\", role = \"1001\" }}, \
         {{ rank = \"E\", role = \"1002\" }}, {{ rank = \"E II\", role = \"1003\" }}]\n",
        w.fake.url
    );
    std::fs::write(&config, toml).expect("config");
    let run = |args: Vec<String>| {
        let mut all = vec![
            "--config".to_owned(),
            config.display().to_string(),
            "discord".into(),
            "sync-roles".into(),
        ];
        all.extend(args);
        let cmd = w
            .env
            .ttfd(&all.iter().map(String::as_str).collect::<Vec<_>>())
            .output();
        async move {
            let out = cmd.await.expect("ttfd runs");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        }
    };
    let (ok, said) = run(vec![]).await;
    assert!(
        ok && said.contains("2 members checked, 0 changed"),
        "{said}"
    );
    w.fake.add_member(GUILD, 222, &[1002]);
    let (ok, said) = run(vec!["--after".into(), "111".into()]).await;
    assert!(
        ok && said.contains("1 members checked, 1 changed"),
        "{said}"
    );
    assert_eq!(w.fake.roles(GUILD, 222), Some(vec![1001]));
    w.stop().await;
}

/// `/notify off` (SPEC 7.3): the member's rank-ups are not announced any more, on any
/// platform; their rank roles still follow. `/notify on` brings the announcements back.
#[tokio::test]
async fn a_member_who_switched_announcements_off_gets_roles_but_no_announcement() {
    let w = world(rank_roles).await;
    w.fake.add_member(GUILD, 111, &[7]);
    let http = w.bot.roles.api.http.clone();
    let switch = |id: u64, value: &str| {
        let options = json!([{"name": "announcements", "type": 3, "value": value}]);
        interaction_by(
            111,
            json!({"roles": [], "permissions": "0"}),
            id,
            "notify",
            options,
        )
    };
    w.bot.on_command(&http, &switch(9001, "off")).await;
    let reply = &w.fake.interaction_responses()[0];
    assert!(
        reply["data"]["content"]
            .as_str()
            .is_some_and(|t| t.contains("are off")),
        "{reply}"
    );
    eventually("the preference", || async {
        w.profile("discord:111").await.filter(|p| !p.notify)
    })
    .await;
    w.env
        .publish(&[xp_event("t:xp:quiet", "discord:111", 2300)])
        .await;
    eventually("the E role", || async {
        (w.fake.roles(GUILD, 111) == Some(vec![7, 1002])).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.fake.messages(ANNOUNCE).is_empty(), "no announcement");

    w.bot.on_command(&http, &switch(9002, "on")).await;
    eventually("the preference", || async {
        w.profile("discord:111").await.filter(|p| p.notify)
    })
    .await;
    w.env
        .publish(&[xp_event("t:xp:loud", "discord:111", 1300)])
        .await;
    let posted = eventually("the announcement", || async {
        w.fake.messages(ANNOUNCE).first().cloned()
    })
    .await;
    assert_eq!(posted["content"], "🎉 <@111> reached **E II**!");
    w.stop().await;
}

/// `discord.announce` (docs/moderation.md): rank-ups by direct message, with the
/// operator's template and a rank's own text.
#[tokio::test]
async fn rank_ups_are_announced_by_direct_message_with_the_configured_templates() {
    let w = world(|d| {
        rank_roles(d);
        d.announce.to = ttfd::settings::discord::DiscordAnnounceTo::Dm;
        d.announce.template = "{member}: {old_rank} → **{rank}**, next {next_rank}".into();
        d.announce
            .ranks
            .insert("E II".into(), "✨ {member} is E II with {xp} XP".into());
    })
    .await;
    w.fake.add_member(GUILD, 111, &[]);
    w.env
        .publish(&[xp_event("t:xp:dm1", "discord:111", 2300)])
        .await;
    let dm = crate::common::fake_discord::dm_channel_of(111);
    let first = eventually("the first DM", || async {
        w.fake.messages(dm).first().cloned()
    })
    .await;
    assert_eq!(first["content"], "<@111>: F I → **E I**, next E II");
    w.env
        .publish(&[xp_event("t:xp:dm2", "discord:111", 1300)])
        .await;
    let second = eventually("the second DM", || async {
        w.fake.messages(dm).get(1).cloned()
    })
    .await;
    assert_eq!(second["content"], "✨ <@111> is E II with 3,600 XP");
    assert!(w.fake.messages(ANNOUNCE).is_empty(), "not in the channel");
    w.stop().await;
}

#[tokio::test]
async fn rank_changes_give_the_rank_role_remove_the_others_and_retry_after_a_429() {
    let w = world(rank_roles).await;
    w.fake.add_member(GUILD, 111, &[7, 1001]);
    // 2,300 XP: rank 4, E I → the tier role E.
    w.env
        .publish(&[xp_event("t:xp:1", "discord:111", 2300)])
        .await;
    eventually("the E role", || async {
        (w.fake.roles(GUILD, 111) == Some(vec![7, 1002])).then_some(())
    })
    .await;
    let posted = eventually("the announcement", || async {
        w.fake.messages(ANNOUNCE).first().cloned()
    })
    .await;
    assert_eq!(posted["content"], "🎉 <@111> reached **E I**!");
    assert_eq!(posted["allowed_mentions"], json!({"parse": []}));
    assert_eq!(posted["enforce_nonce"], true);
    assert!(
        posted["nonce"]
            .as_str()
            .is_some_and(|n| n.starts_with("rank:"))
    );

    // The next role call is rate limited for a second; the notice comes back after it.
    w.fake.rate_limit_role_calls(1, 1.0);
    w.env
        .publish(&[xp_event("t:xp:2", "discord:111", 1300)])
        .await;
    eventually("the E II role", || async {
        (w.fake.roles(GUILD, 111) == Some(vec![7, 1003])).then_some(())
    })
    .await;
    let calls = w.fake.calls();
    let path = format!("/api/v10/guilds/{GUILD}/members/111/roles/1003");
    let tries: Vec<_> = calls
        .iter()
        .filter(|c| c.method == "PUT" && c.path == path)
        .collect();
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!((tries[0].status, tries[1].status), (429, 204));
    assert!(
        tries[1].at - tries[0].at >= Duration::from_millis(950),
        "retried after {:?}, before Retry-After",
        tries[1].at - tries[0].at
    );
    assert_eq!(
        tries[1].audit_reason.as_deref(),
        Some("TTFD%20rank%20E%20II")
    );
    assert!(
        calls.iter().any(|c| c.method == "DELETE"
            && c.path == format!("/api/v10/guilds/{GUILD}/members/111/roles/1002")),
        "the old rank role is taken away"
    );
    assert!(
        !calls.iter().any(|c| c.path.ends_with("/roles/7")),
        "other roles are never touched"
    );
    // The announcement follows the role changes.
    let texts: Vec<Value> = eventually("the second announcement", || async {
        let m = w.fake.messages(ANNOUNCE);
        (m.len() >= 2).then(|| m.into_iter().map(|m| m["content"].clone()).collect())
    })
    .await;
    assert_eq!(
        texts,
        vec![
            json!("🎉 <@111> reached **E I**!"),
            json!("🎉 <@111> reached **E II**!")
        ]
    );
    w.stop().await;
}

#[tokio::test]
async fn a_member_who_rejoins_gets_their_rank_role_back() {
    let w = world(rank_roles).await;
    // They reach E II while away: the notice finds no member and is done with.
    w.env
        .publish(&[xp_event("t:xp:1", "discord:111", 3600)])
        .await;
    eventually("the profile at E II", || async {
        w.profile("discord:111")
            .await
            .filter(|p| p.rank.name == "E II")
    })
    .await;
    eventually("the notice handled", || async {
        w.fake
            .calls()
            .iter()
            .any(|c| c.path == format!("/api/v10/guilds/{GUILD}/members/111") && c.status == 404)
            .then_some(())
    })
    .await;
    // They come back (GUILD_MEMBER_ADD), and so does someone new.
    for (id, roles) in [(111, vec![]), (333, vec![5])] {
        w.fake.add_member(GUILD, id, &roles);
        let member: Member = parse(json!({
            "guild_id": GUILD.to_string(),
            "user": user(id, "back"),
            "nick": null, "roles": [], "joined_at": "2025-11-25T10:00:00.000000+00:00",
            "deaf": false, "mute": false, "flags": 0, "pending": false
        }));
        w.bot.on_member_add(&member).await;
    }
    assert_eq!(w.fake.roles(GUILD, 111), Some(vec![1003]));
    assert_eq!(
        w.fake.roles(GUILD, 333),
        Some(vec![5, 1001]),
        "no profile yet: the first rank's role"
    );
    w.stop().await;
}

#[tokio::test]
async fn slash_commands_answer_through_the_interaction_callback() {
    let w = world(|_| {}).await;
    let nelly: u64 = 80_351_110_224_678_912;
    w.env
        .publish(&[xp_event("t:xp:1", &format!("discord:{nelly}"), 17_000)])
        .await;
    // The standings follow the profile within a refresh round.
    eventually("nelly on the leaderboard", || async {
        w.profile(&format!("discord:{nelly}"))
            .await
            .filter(|p| p.standings.first().is_some_and(|s| s.position.is_some()))
    })
    .await;
    let http = w.bot.roles.api.http.clone();

    w.bot
        .on_command(&http, &interaction(nelly, "rank", json!([])))
        .await;
    w.bot
        .on_command(
            &http,
            &interaction(
                nelly,
                "top",
                json!([{"name": "period", "type": 3, "value": "all"}]),
            ),
        )
        .await;
    w.bot
        .on_command(&http, &interaction(nelly, "link", json!([])))
        .await;
    let replies = w.fake.interaction_responses();
    assert_eq!(replies.len(), 3);
    // `/rank` comes with the rank card attached (a multipart reply).
    let files = &replies[0]["files"];
    assert_eq!(files[0]["filename"], "rank.png", "{files}");
    assert!(
        files[0]["content"]
            .as_str()
            .is_some_and(|c| c.contains("PNG")),
        "a PNG"
    );
    let rank = &replies[0]["payload_json"];
    assert_eq!(rank["type"], 4, "a message reply");
    let text = rank["data"]["content"].as_str().expect("content");
    assert!(
        text.starts_with("**Nelly**\nRank **C II** ★★ · 17,000 XP\n▰▰▱▱▱▱▱▱▱▱ 25% to C III"),
        "{text}"
    );
    assert!(text.ends_with("Linked: Discord"), "{text}");
    assert_eq!(
        rank["data"]["flags"].as_u64().unwrap_or(0) & 64,
        0,
        "public"
    );
    assert_eq!(rank["data"]["allowed_mentions"]["parse"], json!([]));
    assert_eq!(rank["data"]["allowed_mentions"]["users"], json!([]));
    assert_eq!(
        replies[1]["data"]["content"],
        "**Leaderboard, all time**\n1. Nelly — 17,000 XP · C II"
    );
    let link = &replies[2];
    assert_eq!(link["data"]["flags"], 64, "codes are ephemeral");
    let text = link["data"]["content"].as_str().expect("content");
    let code = text
        .strip_prefix("Your link code: **")
        .and_then(|t| t.split("**").next())
        .expect("a code in the reply")
        .to_owned();
    assert_eq!(code.len(), 6);

    // Another Discord account redeems it: the two become one profile.
    let other: u64 = 555;
    w.bot
        .on_command(
            &http,
            &interaction(
                other,
                "link",
                json!([{"name": "code", "type": 3, "value": code}]),
            ),
        )
        .await;
    let replies = w.fake.interaction_responses();
    assert_eq!(replies[3]["data"]["flags"], 64);
    assert_eq!(
        replies[3]["data"]["content"],
        "Linked: this Discord account and your Discord account are now one profile (it \
         updates within moments)."
    );
    let merged = eventually("the merge", || async {
        w.profile(&format!("discord:{other}"))
            .await
            .filter(|p| p.identities.len() == 2)
    })
    .await;
    assert_eq!(merged.xp, 17_000);
    w.stop().await;
}

/// `/xp` and `/audit` (docs/moderation.md): a member with Manage Server or a moderator
/// role adjusts XP and reads the audit; the reply says the new total; the same
/// interaction again counts once; anyone else is refused, privately.
#[tokio::test]
async fn moderators_adjust_xp_with_slash_commands_and_others_are_refused() {
    let moderator_role: u64 = 1_200_000_000_000_000_007;
    let w = world(|d| d.moderator_roles = vec![RoleId::new(moderator_role)]).await;
    let (nelly, ann): (u64, u64) = (80_351_110_224_678_912, 555);
    w.env
        .publish(&[xp_event("t:xp:ann", "discord:555", 100)])
        .await;
    eventually("ann's profile", || async { w.profile("discord:555").await }).await;
    let http = w.bot.roles.api.http.clone();
    let manager = json!({"roles": [], "permissions": "32"});
    let by_role = json!({"roles": [moderator_role.to_string()], "permissions": "0"});
    let nobody = json!({"roles": ["1"], "permissions": "0"});
    let add = json!([{"name": "add", "type": 1, "options": [
        {"name": "member", "type": 6, "value": ann.to_string()},
        {"name": "amount", "type": 4, "value": 500},
        {"name": "reason", "type": 3, "value": "event winner"}]}]);
    let set = json!([{"name": "set", "type": 1, "options": [
        {"name": "member", "type": 6, "value": ann.to_string()},
        {"name": "xp", "type": 4, "value": 1000},
        {"name": "reason", "type": 3, "value": "fix"}]}]);
    for (member, id, name, options) in [
        (manager.clone(), 7001, "xp", add.clone()),
        (manager.clone(), 7001, "xp", add.clone()),
        (by_role, 7002, "xp", set),
        (nobody.clone(), 7003, "xp", add),
        (nobody, 7004, "audit", json!([])),
        (
            manager,
            7005,
            "audit",
            json!([{"name": "member", "type": 6, "value": ann.to_string()}]),
        ),
    ] {
        w.bot
            .on_command(&http, &interaction_by(nelly, member, id, name, options))
            .await;
    }
    let replies = w.fake.interaction_responses();
    let said = |i: usize| {
        replies[i]["data"]["content"]
            .as_str()
            .expect("content")
            .to_owned()
    };
    let private = |i: usize| replies[i]["data"]["flags"].as_u64().unwrap_or(0) & 64 == 64;
    assert_eq!(said(0), "+500 XP for **Annie** (event winner). Now 600 XP.");
    assert!(!private(0), "a moderator's change is public");
    assert_eq!(
        said(1),
        "+500 XP for **Annie** (event winner). Now 600 XP. (This request was made before: counted once.)"
    );
    assert_eq!(said(2), "+400 XP for **Annie** (fix). Now 1,000 XP.");
    for i in [3, 4] {
        assert!(
            said(i).starts_with("Only moderators can do that"),
            "{}",
            said(i)
        );
        assert!(private(i));
    }
    let audit = said(5);
    assert!(private(5));
    assert!(audit.starts_with("Newest first:\n"), "{audit}");
    let lines: Vec<&str> = audit.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "the two adjustments and the grant: {audit}");
    assert!(
        lines[0].contains("+400 XP to discord:555 by discord:80351110224678912: \"fix\""),
        "{audit}"
    );
    assert!(
        lines[1].contains("+500 XP to discord:555 by discord:80351110224678912"),
        "{audit}"
    );
    assert_eq!(w.profile("discord:555").await.map(|p| p.xp), Some(1000));
    w.stop().await;
}

#[tokio::test]
async fn without_the_query_service_commands_say_so() {
    let env = TestEnv::new().await;
    let fake = FakeDiscord::start().await;
    let mut settings = env.settings.clone();
    settings.discord.api_url = Some(fake.url.clone());
    let query = QueryClient::new(
        env.broker.client.clone(),
        &settings.nats.prefix,
        Duration::from_millis(300),
    );
    let (tx, _rx) = mpsc::channel(10);
    let api = DiscordApi::new(&SecretString::from("t"), Some(&fake.url));
    let bot = DiscordBot::new(
        &settings,
        GuildId::new(GUILD),
        api,
        query,
        tx,
        CancellationToken::new(),
    );
    let http = bot.roles.api.http.clone();
    bot.on_command(&http, &interaction(1, "rank", json!([])))
        .await;
    let replies = fake.interaction_responses();
    assert_eq!(
        replies[0]["data"]["content"],
        "The TTFD profile service is not answering right now; try again in a minute."
    );
    assert_eq!(replies[0]["data"]["flags"], 64);
    env.cleanup().await;
}

#[test]
fn ttfd_discord_refuses_to_start_without_a_token_or_a_guild() {
    let run = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ttfd"))
            .arg("discord")
            .env_remove("TTFD__DISCORD__TOKEN")
            .env_remove("TTFD__DISCORD__GUILD_ID")
            .envs(env.iter().copied())
            .output()
            .expect("run ttfd");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[]);
    assert!(
        err.contains("discord.token") && err.lines().count() == 1,
        "{err}"
    );
    let err = run(&[("TTFD__DISCORD__TOKEN", "abc")]);
    assert!(err.contains("discord.guild_id"), "{err}");
}

/// `/privacy hide|show` (SPEC 7.3): a hidden member's `/rank` comes to them alone
/// (ephemeral), another member's `/rank` of them finds no one, `/top` closes up; shown
/// again, all of it is public again.
#[tokio::test]
async fn a_member_who_hides_is_off_rank_and_top_for_others_and_sees_their_own_privately() {
    let w = world(|_| {}).await;
    let (ann, nelly): (u64, u64) = (555, 80_351_110_224_678_912);
    w.env
        .publish(&[
            xp_event("t:xp:ann", &format!("discord:{ann}"), 900),
            xp_event("t:xp:nelly", &format!("discord:{nelly}"), 400),
        ])
        .await;
    eventually("both profiles", || async {
        w.profile(&format!("discord:{nelly}")).await?;
        w.profile(&format!("discord:{ann}")).await
    })
    .await;
    let http = w.bot.roles.api.http.clone();
    let member = json!({"roles": [], "permissions": "0"});
    let privacy = |id: u64, value: &str| {
        let options = json!([{"name": "profile", "type": 3, "value": value}]);
        interaction_by(ann, member.clone(), id, "privacy", options)
    };
    let rank_of_ann = |id: u64, caller: u64| {
        let options = json!([{"name": "member", "type": 6, "value": ann.to_string()}]);
        interaction_by(caller, member.clone(), id, "rank", options)
    };
    let top = |id: u64| {
        let options = json!([{"name": "period", "type": 3, "value": "all"}]);
        interaction_by(nelly, member.clone(), id, "top", options)
    };

    w.bot.on_command(&http, &privacy(9101, "hide")).await;
    let reply = w.fake.interaction_responses()[0].clone();
    assert_eq!(reply["data"]["flags"], 64, "{reply}");
    assert!(
        reply["data"]["content"]
            .as_str()
            .is_some_and(|t| t.starts_with("You are hidden")),
        "{reply}"
    );
    let read = || async {
        let who = Identity::parse(&format!("discord:{ann}")).expect("identity");
        w.env.store.profile(&who).await.expect("read")
    };
    eventually("the preference", || async {
        read().await.filter(|p| p.hidden)
    })
    .await;
    w.env.store.drain_standings().await.expect("standings");

    w.bot.on_command(&http, &rank_of_ann(9102, ann)).await;
    w.bot.on_command(&http, &rank_of_ann(9103, nelly)).await;
    w.bot.on_command(&http, &top(9104)).await;
    let replies = w.fake.interaction_responses();
    let own = &replies[1]["payload_json"];
    assert_eq!(
        own["data"]["flags"], 64,
        "one's own hidden rank is ephemeral"
    );
    let text = own["data"]["content"].as_str().expect("content");
    assert!(text.contains("900 XP"), "{text}");
    assert!(
        text.contains("Hidden: on no leaderboard, and only you see this profile. Shown, you would be #1 of 1 all time"),
        "{text}"
    );
    assert_eq!(
        replies[2]["data"]["content"],
        "Annie has no activity recorded yet: messages and voice time earn XP.",
        "to others a hidden member is no one"
    );
    assert_eq!(
        replies[3]["data"]["content"], "**Leaderboard, all time**\n1. Nelly — 400 XP · F I",
        "the others close up"
    );

    w.bot.on_command(&http, &privacy(9105, "show")).await;
    eventually("shown again", || async {
        read().await.filter(|p| !p.hidden)
    })
    .await;
    w.env.store.drain_standings().await.expect("standings");
    w.bot.on_command(&http, &rank_of_ann(9106, nelly)).await;
    w.bot.on_command(&http, &top(9107)).await;
    let replies = w.fake.interaction_responses();
    let text = replies[5]["payload_json"]["data"]["content"]
        .as_str()
        .expect("content");
    assert!(text.starts_with("**Annie**\nRank"), "{text}");
    assert!(
        replies[6]["data"]["content"]
            .as_str()
            .is_some_and(|t| t.contains("1. Nelly — 900 XP · F II\n2. Nelly — 400 XP")),
        "{}",
        replies[6]
    );
    w.stop().await;
}

/// `/unlink` (SPEC 7.4): a moderator takes a wrongly linked Telegram account out of a
/// Discord member's profile, naming the platform; the reply is public and the profiles
/// come apart; a member who is no moderator is refused privately, and an account that
/// is not the member's is refused with the reason.
#[tokio::test]
async fn a_moderator_unlinks_a_wrongly_linked_account_with_a_slash_command() {
    let w = world(|_| {}).await;
    let (nelly, ann): (u64, u64) = (80_351_110_224_678_912, 555);
    let link = Event {
        id: EventId::parse("telegram:link:1").expect("id"),
        ts: ttfd::now_ms() - 60_000,
        identity: Identity::parse("telegram:77").expect("identity"),
        name: None,
        payload: Payload::Link {
            other: Identity::parse("discord:555").expect("identity"),
            proof: ttfd::shared::Proof::Code,
            by: None,
        },
    };
    w.env
        .publish(&[
            xp_event("t:xp:ann", "discord:555", 100),
            xp_event("t:xp:tg", "telegram:77", 40),
        ])
        .await;
    w.env.publish(std::slice::from_ref(&link)).await;
    eventually("one profile", || async {
        w.profile("discord:555")
            .await
            .filter(|p| p.identities.len() == 2)
    })
    .await;
    let http = w.bot.roles.api.http.clone();
    let manager = json!({"roles": [], "permissions": "32"});
    let nobody = json!({"roles": [], "permissions": "0"});
    let unlink = |account: &str| {
        json!([{"name": "member", "type": 6, "value": ann.to_string()},
               {"name": "account", "type": 3, "value": account},
               {"name": "reason", "type": 3, "value": "not hers"}])
    };
    for (member, id, account) in [
        (nobody, 7101, "telegram"),
        (manager.clone(), 7102, "minecraft"),
        (manager, 7103, "telegram"),
    ] {
        w.bot
            .on_command(
                &http,
                &interaction_by(nelly, member, id, "unlink", unlink(account)),
            )
            .await;
    }
    let replies = w.fake.interaction_responses();
    let said = |i: usize| {
        replies[i]["data"]["content"]
            .as_str()
            .expect("content")
            .to_owned()
    };
    let private = |i: usize| replies[i]["data"]["flags"].as_u64().unwrap_or(0) & 64 == 64;
    assert!(said(0).starts_with("Only moderators"), "{}", said(0));
    assert!(private(0));
    assert_eq!(
        said(1),
        "Not done: minecraft is not an account of this member's profile."
    );
    assert!(private(1));
    assert!(
        said(2).starts_with("Unlinked telegram:77 from discord:555 (not hers)."),
        "{}",
        said(2)
    );
    assert!(!private(2), "a moderator's change is public");
    let apart = eventually("the profiles apart", || async {
        w.profile("discord:555")
            .await
            .filter(|p| p.identities.len() == 1)
    })
    .await;
    assert_eq!(apart.xp, 100);
    w.stop().await;
}

/// `/gdpr export` (docs/privacy.md): an ephemeral answer at once, then the member's
/// export as a file in a direct message.
#[tokio::test]
async fn gdpr_export_sends_the_member_their_data_by_direct_message() {
    let w = world(|_| {}).await;
    w.env
        .publish(&[xp_event("t:xp:ann", "discord:555", 321)])
        .await;
    eventually("ann's profile", || async { w.profile("discord:555").await }).await;
    let http = w.bot.roles.api.http.clone();
    let options = json!([{"name": "export", "type": 1, "options": []}]);
    let member = json!({"roles": [], "permissions": "0"});
    w.bot
        .on_command(&http, &interaction_by(555, member, 7201, "gdpr", options))
        .await;
    let reply = &w.fake.interaction_responses()[0];
    assert_eq!(reply["data"]["flags"], 64);
    assert!(
        reply["data"]["content"]
            .as_str()
            .is_some_and(|t| t.contains("direct message")),
        "{reply}"
    );
    let dm = crate::common::fake_discord::dm_channel_of(555);
    let sent = eventually("the export by direct message", || async {
        w.fake.messages(dm).into_iter().next()
    })
    .await;
    assert!(
        sent["payload_json"]["content"]
            .as_str()
            .is_some_and(|t| t.contains("Everything TTFD holds about you")),
        "{sent}"
    );
    assert_eq!(sent["files"][0]["filename"], "ttfd-export-discord-555.json");
    let doc: Value =
        serde_json::from_str(sent["files"][0]["content"].as_str().expect("a file")).expect("JSON");
    assert_eq!(doc["format"], "ttfd-export/1");
    assert_eq!(doc["profile"]["xp"], 321);
    assert_eq!(doc["events"][0]["envelope"]["id"], "t:xp:ann");
    w.stop().await;
}

/// A hidden member (SPEC 7.3) keeps the rank roles of their rank (the bot reads their
/// own profile, as Discord), and their rank-ups are not announced in the channel.
#[tokio::test]
async fn a_hidden_member_keeps_rank_roles_and_is_not_announced_in_the_channel() {
    let w = world(rank_roles).await;
    w.fake.add_member(GUILD, 111, &[7]);
    let http = w.bot.roles.api.http.clone();
    let options = json!([{"name": "profile", "type": 3, "value": "hide"}]);
    let member = json!({"roles": [], "permissions": "0"});
    w.bot
        .on_command(
            &http,
            &interaction_by(111, member, 9301, "privacy", options),
        )
        .await;
    eventually("hidden", || async {
        let who = Identity::parse("discord:111").expect("identity");
        w.env
            .store
            .profile(&who)
            .await
            .expect("read")
            .filter(|p| p.hidden)
    })
    .await;
    w.env
        .publish(&[xp_event("t:xp:hidden", "discord:111", 2300)])
        .await;
    eventually("the E role", || async {
        (w.fake.roles(GUILD, 111) == Some(vec![7, 1002])).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        w.fake.messages(ANNOUNCE).is_empty(),
        "not announced publicly"
    );
    w.stop().await;
}

/// `/gdpr delete` (SPEC 7.4): nothing without `confirm:True`; with it, the member's
/// profile is erased.
#[tokio::test]
async fn gdpr_delete_erases_the_member_once_confirmed() {
    let w = world(|_| {}).await;
    w.env
        .publish(&[xp_event("t:xp:ann", "discord:555", 321)])
        .await;
    eventually("ann's profile", || async { w.profile("discord:555").await }).await;
    let http = w.bot.roles.api.http.clone();
    let member = json!({"roles": [], "permissions": "0"});
    let delete = |confirm: bool| {
        json!([{"name": "delete", "type": 1,
                "options": [{"name": "confirm", "type": 5, "value": confirm}]}])
    };
    w.bot
        .on_command(
            &http,
            &interaction_by(555, member.clone(), 7301, "gdpr", delete(false)),
        )
        .await;
    w.bot
        .on_command(
            &http,
            &interaction_by(555, member, 7302, "gdpr", delete(true)),
        )
        .await;
    let replies = w.fake.interaction_responses();
    let said = |i: usize| {
        replies[i]["data"]["content"]
            .as_str()
            .expect("content")
            .to_owned()
    };
    assert!(said(0).starts_with("Nothing was erased"), "{}", said(0));
    assert!(said(1).starts_with("Erasing"), "{}", said(1));
    assert_eq!(replies[1]["data"]["flags"], 64);
    eventually("the erasure", || async {
        let who = Identity::parse("discord:555").expect("identity");
        w.env
            .store
            .profile(&who)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    w.stop().await;
}

#[tokio::test]
async fn a_closed_season_is_announced_and_the_winner_role_moves_to_its_champions() {
    let w = world(|d| d.announce_channel = Some(serenity::all::ChannelId::new(ANNOUNCE))).await;
    const WINNER: u64 = 7_700;
    let seasons = ttfd::discord::seasons::SeasonSync {
        roles: vec![(Period::Season, serenity::all::RoleId::new(WINNER))],
        ..w.bot.seasons.clone()
    };
    let consumer =
        ttfd::broker::notices::NoticeConsumer::open(&w.env.broker, ttfd::discord::seasons::POLICY)
            .await
            .expect("season consumer");
    tokio::spawn(consumer.run(Arc::new(seasons), w.stop.clone()));
    // Two seasons of February 2026: 444 wins the first, 111 the second.
    let s = |name: &str, from: &str, to: &str| {
        ttfd::shared::seasons::Season::parse(name, from, to).expect("a season")
    };
    let list = ttfd::shared::seasons::Seasons::new(vec![
        s("feb-a", "2026-02-01", "2026-02-14"),
        s("feb-b", "2026-02-15", "2026-02-28"),
    ])
    .expect("valid");
    w.env.store.configure_seasons(&list).await.expect("seasons");
    let at = |day: i64| 1_769_947_200_000 + day * 86_400_000; // 2026-02-01T12:00Z + days
    let grant = |id: &str, who: &str, day: i64, amount: i32| Event {
        ts: at(day),
        ..xp_event(id, who, amount)
    };
    for (id, roles) in [(111, vec![]), (444, vec![5])] {
        w.fake.add_member(GUILD, id, &roles);
    }
    let events = [
        grant("t:s:1", "discord:444", 3, 500),
        grant("t:s:2", "discord:111", 20, 900),
        grant("t:s:3", "discord:555", 21, 300),
    ];
    w.env.publish(&events).await;
    w.env.wait_for_model(&events).await;
    let closed = w
        .env
        .store
        .close_seasons(
            time::OffsetDateTime::now_utc(),
            time::Duration::ZERO,
            &ClosingRules::seasons_only(1, &[]),
        )
        .await
        .expect("close");
    assert_eq!(closed.len(), 2);
    // Beside the rank-ups of the same XP.
    let texts: Vec<Value> = eventually("both seasons announced", || async {
        let m: Vec<Value> = w
            .fake
            .messages(ANNOUNCE)
            .into_iter()
            .map(|m| m["content"].clone())
            .filter(|c| c.as_str().is_some_and(|t| t.starts_with('🏆')))
            .collect();
        (m.len() >= 2).then_some(m)
    })
    .await;
    assert_eq!(
        texts,
        vec![
            json!(
                "🏆 Season **feb-a** is over (2026-02-01 to 2026-02-14, 1 member ranked).\n🥇 Nelly — 500 XP"
            ),
            json!(
                "🏆 Season **feb-b** is over (2026-02-15 to 2026-02-28, 2 members ranked).\n🥇 Nelly — 900 XP"
            ),
        ]
    );
    eventually("the role moved", || async {
        (w.fake.roles(GUILD, 111) == Some(vec![WINNER])
            && w.fake.roles(GUILD, 444) == Some(vec![5]))
        .then_some(())
    })
    .await;
    w.stop().await;
}

/// The XP statement (docs/rules.md): voice time that pays nothing is published as
/// `voice_unpaid` with its reason, and `/rank details` says where the XP came from and
/// why the muted minutes paid nothing, to the asker alone.
#[tokio::test]
async fn muted_voice_time_is_published_with_its_reason_and_rank_details_explains_it() {
    let w = world(|_| {}).await;
    let (ann, bob) = (111_u64, 222_u64);
    let t0 = ttfd::now_ms() - 200_000;
    w.bot
        .on_guild_create(&guild_create(&[(ann, "ann"), (bob, "bob")]), t0)
        .await;
    // Ann mutes after a minute; Bob leaves later (Ann is then muted and alone: muted is
    // named first); Ann leaves.
    let mut muted = voice_state(ann, "ann", Some(TALK));
    muted.self_mute = true;
    w.bot.on_voice_state(&muted, t0 + 60_000).await;
    w.bot
        .on_voice_state(&voice_state(bob, "bob", None), t0 + 150_000)
        .await;
    w.bot
        .on_voice_state(&voice_state(ann, "ann", None), t0 + 180_000)
        .await;
    let who = Identity::parse("discord:111").expect("identity");
    let statement = eventually("ann's statement", || async {
        let p = w.env.store.profile(&who).await.expect("read")?;
        let today = time::OffsetDateTime::now_utc().date();
        let s = w
            .env
            .store
            .statement(p.uid, Period::All, None, today)
            .await
            .expect("read")?;
        (s.total.unpaid_voice.muted == 120).then_some(s)
    })
    .await;
    assert_eq!(
        (statement.total.voice_seconds, statement.total.voice_xp),
        (60, 4),
        "a paid minute: 4 XP"
    );
    assert_eq!(statement.total.xp, 4, "the muted minutes paid nothing");
    assert_eq!(statement.total.unpaid_voice.alone, 0);
    let kinds: Vec<String> = crate::common::stored_events(&w.env, "discord")
        .await
        .into_iter()
        .filter(|e| e.identity.user.as_str() == "111")
        .map(|e| match e.payload {
            Payload::VoiceUnpaid { seconds, why, .. } => {
                format!("voice_unpaid {seconds} {}", why.as_str())
            }
            other => other.kind().to_owned(),
        })
        .collect();
    assert_eq!(kinds, ["voice", "voice_unpaid 120 muted"]);

    let http = w.bot.roles.api.http.clone();
    let details = json!([{"name": "details", "type": 3, "value": "all"}]);
    let member = json!({"roles": [], "permissions": "0"});
    w.bot
        .on_command(&http, &interaction_by(ann, member, 9201, "rank", details))
        .await;
    let reply = w.fake.interaction_responses()[0].clone();
    assert_eq!(reply["data"]["flags"], 64, "for the asker alone: {reply}");
    let text = reply["data"]["content"].as_str().expect("content");
    assert!(
        text.contains("where the XP came from, all time: **4 XP**")
            && text.contains("Voice: 4 XP (1 min)")
            && text.contains("2 min in voice while muted: no XP")
            && text.contains("By platform: Discord 4 XP"),
        "{text}"
    );
    w.stop().await;
}
