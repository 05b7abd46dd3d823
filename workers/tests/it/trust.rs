//! The trust model end to end (docs/security.md): with `trust.mode = signed`, the sync
//! consumer counts a claim only from a publisher that may make it, told apart by the
//! signature a trusted principal puts on what it publishes.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use ttfd::query::QueryClient;
use ttfd::settings::{Settings, TrustMode};
use ttfd::shared::trust::Publisher;
use ttfd::shared::wire::{self, EventId};
use ttfd::shared::{Event, Identity, Payload, Proof};

use crate::common::{TestEnv, eventually};

/// `trust.mode = signed` with a key for every principal.
pub(crate) fn signed(s: &mut Settings) {
    s.trust.mode = TrustMode::Signed;
    for name in ["relay", "admin", "moderator"] {
        let key = format!("{name}-key-for-the-trust-tests-0123456789");
        s.trust.keys.insert(name.into(), SecretString::from(key));
    }
}

fn ev(id: &str, who: &str, payload: Payload) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts: ttfd::now_ms() - 60_000,
        identity: Identity::parse(who).expect("identity"),
        name: None,
        payload,
    }
}

fn say(id: &str, who: &str) -> Event {
    ev(
        id,
        who,
        Payload::Message {
            len: Some(20),
            chat: None,
            mult: None,
        },
    )
}

fn grant(id: &str, who: &str, amount: i32) -> Event {
    ev(
        id,
        who,
        Payload::Xp {
            amount,
            reason: "by hand".into(),
            by: None,
        },
    )
}

fn link(id: &str, who: &str, other: &str, proof: Proof) -> Event {
    ev(
        id,
        who,
        Payload::Link {
            other: Identity::parse(other).expect("identity"),
            proof,
            by: None,
        },
    )
}

async fn publish_with(broker: &ttfd::broker::Broker, events: &[Event]) {
    for e in events {
        broker
            .publish_event(e)
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

#[tokio::test]
async fn in_signed_mode_a_claim_counts_only_from_a_publisher_that_may_make_it() {
    let env = TestEnv::with(signed).await;
    let relay = env.broker_as(Some(Publisher::Relay)).await;
    let admin = env.broker_as(Some(Publisher::Admin)).await;
    let moderator = env.broker_as(Some(Publisher::Moderator)).await;

    // What a platform's publisher (a bot, the ingest API) may claim, and what not.
    let allowed_platform = [
        say("discord:p:1", "discord:1"),
        link("discord:p:2", "discord:1", "discord:2", Proof::Code),
    ];
    let refused_platform = [
        grant("p:3", "discord:1", 1_000_000),
        link("p:4", "website:me", "discord:1", Proof::Oauth),
    ];
    publish_with(&env.broker, &allowed_platform).await;
    publish_with(&env.broker, &refused_platform).await;
    // The relay links what it proved, and grants nothing; moderators and admins grant.
    let by_relay = [link("r:1", "telegram:3", "discord:1", Proof::Code)];
    let refused_relay = [grant("r:2", "telegram:3", 500)];
    publish_with(&relay, &by_relay).await;
    publish_with(&relay, &refused_relay).await;
    let by_staff = [grant("m:1", "discord:2", 70), grant("a:1", "telegram:3", 7)];
    publish_with(&moderator, &by_staff[..1]).await;
    publish_with(&admin, &by_staff[1..]).await;
    // An admin's signature copied onto another claim, and one made with a wrong key.
    let copied = grant("f:1", "discord:1", 900);
    let subject = env.broker.subjects.event("discord", "xp");
    let real = admin
        .trust
        .signature(&subject, "a:1", &wire::encode(&by_staff[1]))
        .expect("admin signs");
    let forged_key = ttfd::broker::trust::Keyring::new(
        [(
            Publisher::Admin,
            SecretString::from("not-the-admin-key-not-the-admin-key"),
        )]
        .into(),
    )
    .sign(
        Publisher::Admin,
        &subject,
        "f:2",
        &wire::encode(&grant("f:2", "discord:1", 900)),
    )
    .expect("signs");
    for (e, signature) in [(copied, real), (grant("f:2", "discord:1", 900), forged_key)] {
        let message = PublishMessage::build()
            .message_id(e.id.as_str())
            .header("Ttfd-Signature", signature.as_str())
            .payload(Bytes::from(wire::encode(&e)));
        env.broker
            .js
            .send_publish(subject.clone(), message)
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let counted: Vec<Event> = [&allowed_platform[..], &by_relay, &by_staff].concat();
    env.wait_for_model(&counted).await;
    let reasons = env.dead_letters(10).await;
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    for r in &reasons {
        assert!(r.starts_with("not_permitted: "), "{r}");
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("discord:1") && r.contains("this publisher is platform")),
        "the reason names the claim and who made it: {reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("this publisher is relay")),
        "{reasons:?}"
    );
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

#[tokio::test]
async fn messages_stored_before_signing_was_switched_on_count_as_they_did() {
    // Two unsigned claims stored while the installation was open, then signing on from
    // stream sequence 3: the old ones still count (a rebuild gives the same state), the
    // new unsigned grant does not.
    let env = TestEnv::with(|s| {
        signed(s);
        s.trust.signed_from_sequence = 3;
    })
    .await;
    let before = [
        grant("o:1", "discord:5", 40),
        link("o:2", "website:5", "discord:5", Proof::Oauth),
    ];
    publish_with(&env.broker, &before).await;
    publish_with(&env.broker, &[grant("o:3", "discord:5", 900)]).await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    env.wait_for_model(&before).await;
    let reasons = env.dead_letters(5).await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("moderator or an admin"), "{reasons:?}");
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

/// The real `ttfd sync` role in signed mode: its outbox relay signs the link a redeemed
/// code proved, so the merge goes through, while the same link published by a platform
/// is refused.
#[tokio::test]
async fn a_code_redeemed_in_signed_mode_merges_through_the_sync_roles_relay() {
    let env = TestEnv::with(signed).await;
    let mut sync = env.spawn_sync_process();
    let stop = CancellationToken::new();
    let service = tokio::spawn(ttfd::query::serve(
        env.store.clone(),
        env.broker.clone(),
        stop.clone(),
    ));
    let client = QueryClient::new(
        env.broker.client.clone(),
        &env.settings.nats.prefix,
        Duration::from_secs(5),
    );
    let forged = link("x:1", "telegram:20", "discord:30", Proof::Code);
    publish_with(
        &env.broker,
        &[
            say("discord:d:1", "discord:10"),
            say("telegram:t:1", "telegram:20"),
        ],
    )
    .await;
    publish_with(&env.broker, std::slice::from_ref(&forged)).await;
    let (discord, telegram) = (
        Identity::parse("discord:10").expect("identity"),
        Identity::parse("telegram:20").expect("identity"),
    );
    eventually("both profiles", || async {
        client.profile(&discord).await.ok()??;
        client.profile(&telegram).await.ok()??;
        Some(())
    })
    .await;
    let code = client.issue_link_code(&discord).await.expect("issue");
    client
        .redeem_link_code(&telegram, &code.code)
        .await
        .expect("redeem");
    let merged = eventually("the merge", || async {
        let p = client.profile(&telegram).await.ok()??;
        (p.identities.len() == 2).then_some(p)
    })
    .await;
    assert_eq!(merged.xp, 2 * env.settings.rules.message_xp);
    let reasons = env.dead_letters(5).await;
    assert_eq!(
        reasons.len(),
        1,
        "only the platform's link is refused: {reasons:?}"
    );
    assert!(reasons[0].contains("discord:30"), "{reasons:?}");
    assert_eq!(
        client
            .profile(&Identity::parse("discord:30").expect("id"))
            .await
            .expect("ok"),
        None
    );
    let _ = sync.start_kill();
    let _ = sync.wait().await;
    stop.cancel();
    service.await.expect("service").expect("served");
    env.cleanup().await;
}

/// In signed mode, the bots' XP tools count only through the query service signing as
/// the moderator principal (`Role::Query`); the same query service without the key
/// publishes an unsigned `xp` event, which the sync consumer refuses; and a platform's
/// query subject may adjust only its own platform's members.
#[tokio::test]
async fn in_signed_mode_a_bots_xp_adjustment_counts_only_signed_by_the_query_service() {
    let env = TestEnv::with(signed).await;
    let mut sync = env.spawn_sync_process();
    publish_with(&env.broker, &[say("discord:d:9", "discord:10")]).await;
    let client = QueryClient::new(
        env.broker.client.clone(),
        &env.settings.nats.prefix,
        Duration::from_secs(20),
    );
    let member = Identity::parse("discord:10").expect("identity");
    eventually("the member", || async {
        env.store.profile(&member).await.ok()?
    })
    .await;
    let request = |id: &str, target: &str| ttfd::query::AdjustRequest {
        by: (&Identity::parse("discord:99").expect("id")).into(),
        target: (&Identity::parse(target).expect("id")).into(),
        verb: ttfd::moderation::Verb::Add(500),
        reason: "event winner".into(),
        request_id: id.into(),
    };
    for (signs, id, counted) in [
        (None, "i:1", false),
        (Some(Publisher::Moderator), "i:2", true),
    ] {
        let stop = CancellationToken::new();
        let broker = env.broker_as(signs).await;
        let service = tokio::spawn(ttfd::query::serve(env.store.clone(), broker, stop.clone()));
        eventually("the query service", || async {
            client.profile(&member).await.ok()
        })
        .await;
        let outcome = client
            .adjust_xp(&request(id, "discord:10"))
            .await
            .expect("answered");
        match (&outcome, counted) {
            (ttfd::query::AdjustOutcome::Done { xp: Some(xp), .. }, true) => assert_eq!(*xp, 510),
            (ttfd::query::AdjustOutcome::Done { xp: None, .. }, false) => {}
            other => panic!("{other:?}"),
        }
        if counted {
            // The subject speaks for Discord: a Telegram member is refused, unpublished.
            let cross = client.adjust_xp(&request("i:3", "telegram:20")).await;
            assert!(
                matches!(&cross, Err(ttfd::query::QueryError::Remote(e)) if e.contains("speaks for platform")),
                "{cross:?}"
            );
        }
        stop.cancel();
        service.await.expect("service").expect("served");
    }
    let reasons = env.dead_letters(5).await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("moderator or an admin"), "{reasons:?}");
    let _ = sync.start_kill();
    let _ = sync.wait().await;
    env.cleanup().await;
}

/// A publisher that claims the id another platform's next event will have (a Telegram
/// message id is predictable) gets its claim dead-lettered, and its id is not
/// remembered. JetStream drops the real event as a duplicate of the claim, so the real
/// publisher sends it once more after the window: it applies.
#[tokio::test]
async fn an_id_claimed_by_another_platforms_publisher_does_not_block_the_real_event() {
    let env = TestEnv::with(signed).await;
    env.shrink_the_duplicate_window(Duration::from_millis(500))
        .await;
    let stolen = "telegram:msg:-1001234567890:77";
    let forged = ev(
        stolen,
        "discord:66",
        Payload::Message {
            len: Some(5),
            chat: None,
            mult: None,
        },
    );
    publish_with(&env.broker, std::slice::from_ref(&forged)).await;
    let real = say(stolen, "telegram:7");
    let bot = env.broker.clone().sending_second_copies();
    let ack = bot
        .publish_event(&real)
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert!(ack.duplicate, "JetStream holds the claim's copy");
    let copies = bot.second_copies().expect("sends second copies");
    assert!(copies.waiting_bytes() > 0, "a second copy waits");
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    env.wait_for_model(std::slice::from_ref(&real)).await;
    eventually("the second copy sent", || async {
        (copies.waiting_bytes() == 0).then_some(())
    })
    .await;
    let reasons = env.dead_letters(5).await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("namespace"), "{reasons:?}");
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

/// The roles' NATS users of `nats/accounts.conf`, on a nats-server of this test's own
/// (the binary `scripts/services.sh` found: `TTFD_TEST_NATS_SERVER`), each role's
/// password made up here.
struct SecuredNats {
    _server: tokio::process::Child,
    url: String,
    password: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl SecuredNats {
    async fn start() -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let dir = std::env::temp_dir().join(format!(
            "ttfd-secured-nats-{}-{}",
            std::process::id(),
            ttfd::now_ms()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let accounts =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats/accounts.conf");
        std::fs::copy(&accounts, dir.join("accounts.conf")).expect("copy accounts.conf");
        std::fs::write(
            dir.join("server.conf"),
            format!(
                "listen: 127.0.0.1:-1\njetstream {{ store_dir: {:?} }}\ninclude accounts.conf\n",
                dir.join("js")
            ),
        )
        .expect("server.conf");
        let password = format!("pw-{}", ttfd::now_ms());
        let binary =
            std::env::var("TTFD_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.arg("-c").arg(dir.join("server.conf"));
        for role in ["OPS", "SYNC", "QUERY", "WEB", "DISCORD", "TELEGRAM"] {
            cmd.env(format!("TTFD_NATS_{role}_PASSWORD"), &password);
        }
        let mut server = cmd
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary} (scripts/services.sh finds one): {e}"));
        let mut log = BufReader::new(server.stderr.take().expect("piped")).lines();
        let port: u16 = crate::common::announced(&mut log, "the NATS client port", |line| {
            let (_, at) = line.split_once("Listening for client connections on ")?;
            at.rsplit(':').next()?.trim().parse().ok()
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
        Self {
            _server: server,
            url: format!("nats://127.0.0.1:{port}"),
            password,
            _dir: tempdir::Dir(dir),
        }
    }

    async fn connect_as(&self, user: &str) -> ttfd::broker::Broker {
        let settings = ttfd::settings::NatsSettings {
            url: self.url.clone(),
            prefix: "ttfd".into(),
            user: Some(user.into()),
            password: Some(SecretString::from(self.password.clone())),
            stream_replicas: 1,
        };
        ttfd::broker::Broker::connect(&settings, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }
}

/// The real client with the real `nats/accounts.conf`: the Discord bot's credentials
/// publish its activity (the ack comes back to its own inbox prefix) and ask the query
/// service for its own members; an `xp` event, a link and a query for a Telegram member
/// are refused by NATS itself.
#[tokio::test]
async fn with_accounts_conf_a_bots_credentials_publish_activity_and_nothing_more() {
    let nats = SecuredNats::start().await;
    let ops = nats.connect_as("ttfd-ops").await;
    ops.setup().await.expect("ttfd nats setup as ttfd-ops");
    let discord = nats.connect_as("ttfd-discord").await;
    let stored = |e: Event| {
        let discord = discord.clone();
        async move {
            let ack = discord.publish_event(&e).await.ok()?;
            tokio::time::timeout(Duration::from_secs(3), ack)
                .await
                .ok()?
                .ok()
        }
    };
    assert!(
        stored(say("discord:msg:1", "discord:1")).await.is_some(),
        "the bot's own activity is stored"
    );
    assert!(
        stored(grant("discord:xp:1", "discord:1", 1_000_000))
            .await
            .is_none(),
        "an xp event is refused by NATS"
    );
    let takeover = link("discord:link:1", "discord:1", "telegram:9", Proof::Code);
    assert!(
        stored(takeover).await.is_none(),
        "a link is refused by NATS"
    );

    // The query service as its own user answers the bot for its own platform only.
    let query = nats.connect_as("ttfd-query").await;
    let mut requests = query
        .client
        .queue_subscribe("ttfd.query.>", "ttfd-query".into())
        .await
        .expect("subscribe");
    query.client.flush().await.expect("flush");
    tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(r) = requests.next().await {
            if let Some(reply) = r.reply {
                let _ = query.client.publish(reply, "pong".into()).await;
            }
        }
    });
    let ask = |subject: &'static str| {
        let client = discord.client.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(3), client.request(subject, "q".into()))
                .await
                .ok()?
                .ok()
        }
    };
    // Asked until answered: the refusals above may have the client reconnect first.
    let own = eventually("an answer to the bot's own query", || {
        ask("ttfd.query.as.discord.link.issue")
    })
    .await;
    assert_eq!(own.payload.as_ref(), b"pong");
    assert!(
        ask("ttfd.query.as.telegram.link.issue").await.is_none(),
        "asking for Telegram's members is refused"
    );
    let mut events = ops.js.get_stream("TTFD_EVENTS").await.expect("stream");
    assert_eq!(events.info().await.expect("info").state.messages, 1);
}

/// `k8s/postgres-roles.sql`: each process kind's database role can do that kind's work
/// (the sync consumers apply and relay, the query service and the web role read and
/// handle link codes, the web role its sign-in state) and nothing it does not need.
#[tokio::test]
async fn each_process_kinds_database_role_does_its_work_and_no_more() {
    let env = TestEnv::new().await;
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/postgres-roles.sql"),
    )
    .expect("the roles script");
    sqlx::raw_sql(&script)
        .execute(&env.store.pool)
        .await
        .expect("the script runs as the owner");
    let suffix = format!("{:x}", ttfd::now_ms());
    let mut logins = Vec::new();
    let mut store_as = async |kind: &str| {
        let login = format!("ttfd_{kind}_test_{suffix}");
        sqlx::query(&format!("CREATE ROLE {login} LOGIN IN ROLE ttfd_{kind}"))
            .execute(&env.store.pool)
            .await
            .expect("login role");
        logins.push(login.clone());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(env.db.options.clone().username(&login))
            .await
            .expect("connect as the login");
        ttfd::store::Store::from_pool(pool, env.settings.rules.clone())
    };
    let (sync, query, web) = (
        store_as("sync").await,
        store_as("query").await,
        store_as("web").await,
    );

    // The sync consumers apply everything, links and rank changes included, and relay.
    let mut events = crate::common::community(400, 30, 77);
    events.push(link("l:1", "telegram:1", "discord:2", Proof::Code));
    env.publish(&events).await;
    let stop = CancellationToken::new();
    let (worker, _) = env
        .spawn_counted_worker_on(sync.clone(), stop.clone())
        .await;
    env.wait_for_model(&events).await;
    let relay = tokio::spawn(ttfd::sync::relay::relay_outbox(
        sync.clone(),
        env.broker.clone(),
        Default::default(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    let outbox = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
            .fetch_one(&env.store.pool)
            .await
            .expect("count")
    };
    eventually("the relay emptied the outbox", || async {
        (outbox().await == 0).then_some(())
    })
    .await;

    // The query service and the web role read and handle link codes.
    let now = ttfd::now_ms();
    let ann = Identity::parse("discord:2").expect("id");
    for (store, redeemer) in [(&query, "website:9001"), (&web, "website:9002")] {
        let bob = Identity::parse(redeemer).expect("id");
        assert!(store.profile(&ann).await.expect("profile").is_some());
        assert!(!store.top("all", 10, 0).await.expect("top").is_empty());
        let code = store.issue_link_code(&ann, now).await.expect("issue");
        store
            .redeem_link_code(&bob, "WRONGG", now)
            .await
            .expect("a wrong code");
        let redeemed = store
            .redeem_link_code(&bob, &code.code, now)
            .await
            .expect("redeem");
        assert!(
            matches!(redeemed, ttfd::store::codes::Redemption::Linked { .. }),
            "{redeemed:?}"
        );
    }
    // The web role keeps its sign-in state.
    assert!(
        web.spend_once("telegram_login", "h", now + 60_000, now)
            .await
            .expect("spend")
    );
    web.revoke_sessions(&ann, now).await.expect("revoke");
    assert_eq!(
        web.sessions_revoked("discord:2").await.expect("read"),
        Some(now)
    );

    // And none of them can do another kind's work.
    let denied = |store: &ttfd::store::Store, sql: &'static str| {
        let pool = store.pool.clone();
        async move {
            let err = sqlx::query(sql)
                .execute(&pool)
                .await
                .expect_err(sql)
                .to_string();
            assert!(err.contains("permission denied"), "{sql}: {err}");
        }
    };
    denied(&query, "UPDATE users SET xp = xp + 1000000").await;
    denied(&query, "DELETE FROM processed_events").await;
    denied(&query, "INSERT INTO spent_tokens VALUES ('k', 't', 0)").await;
    denied(&web, "UPDATE xp_ledger SET xp = 0").await;
    denied(&web, "DELETE FROM outbox").await;
    denied(&sync, "DELETE FROM session_revocations").await;
    denied(&sync, "SELECT * FROM link_codes").await;

    stop.cancel();
    worker.await.expect("worker");
    relay.await.expect("relay");
    for store in [sync, query, web] {
        store.pool.close().await;
    }
    for login in logins {
        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {login}"))
            .execute(&env.store.pool)
            .await;
    }
    env.cleanup().await;
}
