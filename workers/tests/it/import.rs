//! `ttfd import` end to end: legacy tables in a scratch PostgreSQL database and legacy
//! files become events on a private NATS prefix, a real sync consumer applies them, and
//! the profiles are checked (XP, names, merged links, games). Running the import again
//! changes nothing; a dry run publishes nothing; bad rows are reported and skipped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{TestEnv, eventually};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use ttfd::import::{ImportArgs, plan};
use ttfd::shared::view::Profile;
use ttfd::shared::{Event, Identity};
use ttfd::store::scratch::ScratchDb;
use ttfd::sync::Counters;

/// 2026-11-01T00:00:00Z, the `--at` of the tests.
const AT: &str = "2026-11-01T00:00:00Z";
const AT_MS: i64 = 1_793_491_200_000;

/// The old bots' and website's tables, as they were: both bots in one database with a
/// table named `users` each (here in two schemas), the website's `accounts` beside.
const LEGACY_SCHEMA: &str = r#"
CREATE SCHEMA telegram_bot;
CREATE TABLE telegram_bot.users (
    id          serial PRIMARY KEY,
    telegram_id bigint NOT NULL UNIQUE,
    username    text,
    first_name  text,
    last_name   text,
    xp          integer NOT NULL DEFAULT 0,
    coins       integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO telegram_bot.users (telegram_id, username, first_name, last_name, xp, coins) VALUES
    (1001, 'ada', 'Ada', 'Lovelace', 1200, 150),
    (1002, 'bob', 'Bob', NULL, 300, 0),
    (1003, 'carl', 'Carl', NULL, -5, 0),
    (1004, 'dora', 'Dora', NULL, 0, 0),
    (1005, NULL, NULL, NULL, 60000, 9000);

CREATE SCHEMA discord_bot;
CREATE TABLE discord_bot.users (
    id           bigint PRIMARY KEY,
    username     text NOT NULL,
    xp           integer NOT NULL DEFAULT 0,
    coins        integer NOT NULL DEFAULT 0,
    games_played integer NOT NULL DEFAULT 0,
    games_won    integer NOT NULL DEFAULT 0,
    telegram_id  bigint,
    last_daily   timestamptz
);
INSERT INTO discord_bot.users (id, username, xp, coins, games_played, games_won, telegram_id) VALUES
    (300000000000000001, 'ada_dc', 2000, 300, 5, 2, 1001),
    (300000000000000002, 'eve', 700, 50, 0, 0, NULL),
    (300000000000000003, 'mallory', 100, 0, 1, 3, NULL),
    (300000000000000004, 'frank', 60, 0, 2, 2, 1002),
    (300000000000000005, 'gus', 0, 0, 0, 0, 0);

CREATE SCHEMA site;
CREATE TABLE site.accounts (
    id            serial PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    username      text NOT NULL UNIQUE,
    display_name  text,
    password_hash text NOT NULL,
    discord_id    bigint
);
INSERT INTO site.accounts (email, username, display_name, password_hash, discord_id) VALUES
    ('eve@example.org', 'eve_web', 'Eve W.', 'x', 300000000000000002),
    ('lonely@example.org', 'lonely', 'Lonely', 'x', NULL),
    ('hank@example.org', 'hank', NULL, 'x', 300000000000000009);
"#;

struct Legacy {
    db: ScratchDb,
    url: String,
}

async fn legacy_database(env: &TestEnv) -> Legacy {
    let db = ScratchDb::create(&env.settings.database, "ttfd_legacy")
        .await
        .expect("legacy database");
    let pool: PgPool = db.pool(1).await.expect("pool");
    sqlx::raw_sql(LEGACY_SCHEMA)
        .execute(&pool)
        .await
        .expect("legacy tables");
    pool.close().await;
    let url = db.url(&env.settings.database);
    Legacy { db, url }
}

/// A sync consumer whose counters the test reads.
async fn worker(env: &TestEnv, stop: CancellationToken) -> Arc<Counters> {
    env.spawn_counted_worker_on(env.store.clone(), stop).await.1
}

/// Runs `ttfd import` as the operator would; (success, stdout, stderr).
async fn import(env: &TestEnv, args: &[&str], legacy: &Legacy) -> (bool, String, String) {
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    let out = env
        .ttfd(&all)
        // The database URLs come from the environment, as docs/import.md advises.
        .env("TTFD_IMPORT_TELEGRAM_DB", &legacy.url)
        .env("TTFD_IMPORT_DISCORD_DB", &legacy.url)
        .output()
        .await
        .expect("ttfd import runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn profile(env: &TestEnv, identity: &str) -> Profile {
    env.store
        .profile(&Identity::parse(identity).expect("identity"))
        .await
        .expect("query")
        .unwrap_or_else(|| panic!("no user has {identity}"))
}

fn identities(p: &Profile) -> BTreeSet<String> {
    p.identities
        .iter()
        .map(|i| format!("{}:{}", i.platform, i.user))
        .collect()
}

async fn stream_messages(env: &TestEnv) -> u64 {
    let mut stream = env
        .broker
        .js
        .get_stream(env.broker.subjects.events_stream())
        .await
        .expect("stream");
    stream.info().await.expect("info").state.messages
}

/// Waits until the shared consumer has delivered and acked everything in the stream.
async fn drained(env: &TestEnv) {
    let consumer = env.broker.sync_consumer().await.expect("consumer");
    eventually("the consumer to drain the stream", || {
        let consumer = consumer.clone();
        async move {
            let info = consumer.get_info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

fn db_args(url: &str) -> ImportArgs {
    ImportArgs {
        telegram_db: Some(url.to_owned()),
        telegram_table: "telegram_bot.users".into(),
        discord_db: Some(url.to_owned()),
        discord_table: "discord_bot.users".into(),
        website_db: Some(url.to_owned()),
        website_table: "site.accounts".into(),
        at: Some(AT.into()),
        ..ImportArgs::default()
    }
}

#[tokio::test]
async fn legacy_tables_become_merged_profiles_and_a_second_run_changes_nothing() {
    let env = TestEnv::new().await;
    let legacy = legacy_database(&env).await;
    let db_flags = [
        "--telegram-table",
        "telegram_bot.users",
        "--discord-table",
        "discord_bot.users",
        "--website-db",
        legacy.url.as_str(),
        "--website-table",
        "site.accounts",
        "--at",
        AT,
    ];

    // A dry run reads and reports everything and publishes nothing.
    let mut dry = db_flags.to_vec();
    dry.push("--dry-run");
    let (ok, stdout, stderr) = import(&env, &dry, &legacy).await;
    assert!(ok, "dry run failed: {stderr}");
    assert!(stdout.contains("dry run: nothing published"), "{stdout}");
    assert_eq!(
        stream_messages(&env).await,
        0,
        "a dry run publishes nothing"
    );

    // Bad rows, by key: a negative XP total, more games won than played.
    assert!(
        stderr.contains(
            "skipped: telegram table telegram_bot.users row 3 (telegram_id 1003): xp -5 is negative"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("(id 300000000000000003): games_won 3 is more than games_played 1"),
        "{stderr}"
    );
    // The summary: rows → events, per source and in total.
    assert!(
        stdout.contains(
            "telegram table telegram_bot.users: 5 rows → 3 imported, 1 bad, 1 empty, 0 repeated → 3 events (3 xp, 0 game, 0 link)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "discord table discord_bot.users: 5 rows → 3 imported, 1 bad, 1 empty, 0 repeated → 12 events (3 xp, 7 game, 2 link)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "website table site.accounts: 3 rows → 2 imported, 0 bad, 1 empty, 0 repeated → 2 events (0 xp, 0 game, 2 link)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("total: 13 rows → 8 imported, 2 bad, 3 empty, 0 repeated → 17 events"),
        "{stdout}"
    );

    // The real run, with a sync consumer applying.
    let stop = CancellationToken::new();
    let counters = worker(&env, stop.clone()).await;
    let (ok, stdout, stderr) = import(&env, &db_flags, &legacy).await;
    assert!(ok, "import failed: {stderr}");
    assert!(
        stdout.contains("published 17 events to") && stdout.contains("17 stored"),
        "{stdout}"
    );

    // The state is exactly what the model derives from the planned events.
    let planned: Vec<Event> = plan(&db_args(&legacy.url), ttfd::now_ms(), |_| {})
        .await
        .expect("plan")
        .events()
        .collect();
    assert_eq!(planned.len(), 17);
    env.wait_for_model(&planned).await;

    // And in people's terms: Ada's Telegram and Discord accounts are one user with
    // both XP totals; the games restore the counters and add no XP.
    let ada = profile(&env, "telegram:1001").await;
    assert_eq!(
        identities(&ada),
        BTreeSet::from(["discord:300000000000000001".into(), "telegram:1001".into()])
    );
    assert_eq!(ada.xp, 1200 + 2000);
    assert_eq!((ada.games_played, ada.games_won), (5, 2));
    assert_eq!(ada.display_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(ada.created_at.as_deref(), Some("2026-11-01T00:00:00Z"));
    // Coins follow from the peak rank (E I at 3200 XP: 50 + 100 + 150), not the old
    // balances.
    assert_eq!(ada.rank.name, "E I");
    assert_eq!(ada.coins, 300);
    // Bob and Frank: linked through the Discord row's telegram_id.
    let bob = profile(&env, "discord:300000000000000004").await;
    assert_eq!(bob.xp, 360);
    assert_eq!((bob.games_played, bob.games_won), (2, 2));
    assert!(identities(&bob).contains("telegram:1002"));
    // A Telegram row without any name keeps no name; its XP is split under 1,000,000
    // per event only when needed.
    let nameless = profile(&env, "telegram:1005").await;
    assert_eq!((nameless.xp, nameless.display_name.clone()), (60000, None));
    // Website accounts are `website:<username>`, linked to their Discord account;
    // nothing of the e-mail is kept.
    let eve = profile(&env, "website:eve_web").await;
    assert_eq!(
        identities(&eve),
        BTreeSet::from([
            "discord:300000000000000002".into(),
            "website:eve_web".into()
        ])
    );
    assert_eq!(eve.xp, 700);
    let hank = profile(&env, "discord:300000000000000009").await;
    assert_eq!(hank.xp, 0);
    assert_eq!(hank.display_name.as_deref(), Some("hank"));
    // Rows with nothing to carry over and bad rows created nobody.
    for nobody in [
        "telegram:1003",
        "telegram:1004",
        "discord:300000000000000003",
        "discord:300000000000000005",
        "website:lonely",
    ] {
        let who = Identity::parse(nobody).expect("identity");
        assert!(
            env.store.profile(&who).await.expect("query").is_none(),
            "{nobody} must not exist"
        );
    }
    let users = env.store.user_count().await.expect("count");

    // Again, at once: JetStream drops every copy (same ids within 2 minutes).
    let (ok, stdout, _) = import(&env, &db_flags, &legacy).await;
    assert!(ok);
    assert!(
        stdout.contains("0 stored, 17 already stored in the last 2 minutes"),
        "{stdout}"
    );

    // Again, past JetStream's duplicate window (shrunk to 100 ms here): the copies are
    // stored, and the consumers skip them by id.
    let mut stream = env
        .broker
        .js
        .get_stream(env.broker.subjects.events_stream())
        .await
        .expect("stream");
    let mut config = stream.info().await.expect("info").config.clone();
    config.duplicate_window = Duration::from_millis(100);
    env.broker
        .js
        .update_stream(config)
        .await
        .expect("shorter duplicate window");
    let applied_before = Counters::get(&counters.applied);
    let (ok, stdout, stderr) = import(&env, &db_flags, &legacy).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("17 stored"), "{stdout}");
    drained(&env).await;
    assert_eq!(Counters::get(&counters.applied), applied_before);
    assert_eq!(Counters::get(&counters.duplicates), 17);
    env.wait_for_model(&planned).await;
    assert_eq!(env.store.user_count().await.expect("count"), users);
    assert_eq!(profile(&env, "telegram:1001").await.xp, 3200);

    stop.cancel();
    legacy.db.remove().await.expect("drop legacy database");
    env.cleanup().await;
}

#[tokio::test]
async fn json_stores_csv_and_json_lines_are_imported_and_bad_rows_reported() {
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("ttfd-import-test-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // The old Telegram bot's JSON store: users keyed by Telegram id.
    let telegram = dir.join("telegram_users.json");
    std::fs::write(
        &telegram,
        r#"{"users": {
            "2001": {"username": "zed", "first_name": "Zed", "xp": 900, "coins": 40},
            "2002": {"username": "yan", "first_name": "Yan", "xp": "12.5"},
            "2003": {"username": "xia", "first_name": "Xia", "xp": 40, "discord_id": 400000000000000001}
        }}"#,
    )
    .expect("write");
    // A CSV export of the Discord bot's table, with a short line.
    let discord = dir.join("discord_users.csv");
    std::fs::write(
        &discord,
        "id,username,xp,coins,games_played,games_won,telegram_id\n\
         400000000000000001,xia_dc,500,10,4,1,\n\
         400000000000000002,wes,250,0\n\
         400000000000000003,vic,75,0,0,0,2001\n",
    )
    .expect("write");
    // Anything else: a Minecraft server's export, with its own column names.
    let minecraft = dir.join("minecraft.jsonl");
    std::fs::write(
        &minecraft,
        "{\"uuid\": \"069a79f4-44e9-4726-a5be-fca90e38aaf5\", \"nick\": \"Notch\", \"points\": 1300, \"link_platform\": \"discord\", \"link_user\": \"400000000000000003\"}\n\
         \n\
         {\"uuid\": \"\", \"points\": 5}\n\
         {\"uuid\": \"8667ba71-b85a-4004-af54-457a9734eed7\", \"nick\": \"jeb_\", \"points\": 10}\n",
    )
    .expect("write");
    let args = ImportArgs {
        telegram_file: vec![telegram],
        discord_file: vec![discord],
        records: vec![minecraft],
        platform: Some("minecraft".into()),
        columns: vec!["user=uuid".into(), "name=nick".into(), "xp=points".into()],
        at: Some(AT.into()),
        ..ImportArgs::default()
    };
    let mut reported = Vec::new();
    let planned = plan(&args, ttfd::now_ms(), |p| reported.push(p.to_string()))
        .await
        .expect("plan");
    assert_eq!(reported.len(), 3, "{reported:#?}");
    assert_eq!(
        reported[0],
        format!(
            "telegram file {} key \"2002\": xp \"12.5\" is not an integer",
            args.telegram_file[0].display()
        )
    );
    let csv_line = format!("discord file {} line 3: ", args.discord_file[0].display());
    assert!(
        reported[1].starts_with(&csv_line) && reported[1].contains("4 fields"),
        "{}",
        reported[1]
    );
    assert_eq!(
        reported[2],
        format!(
            "records file {} line 3: user is missing",
            args.records[0].display()
        )
    );
    assert_eq!(planned.total.bad, 3);
    assert_eq!(planned.total.imported, 6);
    assert!(planned.events().all(|e| e.ts == AT_MS));

    let stop = CancellationToken::new();
    worker(&env, stop.clone()).await;
    let progress = indicatif::ProgressBar::hidden();
    let published = ttfd::import::publish(&planned, &env.broker, &progress)
        .await
        .expect("publish");
    assert_eq!(published.stored, planned.total.events());
    let events: Vec<Event> = planned.events().collect();
    env.wait_for_model(&events).await;

    // Xia: Telegram (JSON store, discord_id) and Discord (CSV) are one user.
    let xia = profile(&env, "telegram:2003").await;
    assert_eq!(xia.xp, 540);
    assert_eq!((xia.games_played, xia.games_won), (4, 1));
    assert!(identities(&xia).contains("discord:400000000000000001"));
    // Notch (Minecraft) → vic (Discord) → zed (Telegram): one user of three platforms.
    let notch = profile(&env, "minecraft:069a79f4-44e9-4726-a5be-fca90e38aaf5").await;
    assert_eq!(
        identities(&notch),
        BTreeSet::from([
            "discord:400000000000000003".into(),
            "minecraft:069a79f4-44e9-4726-a5be-fca90e38aaf5".into(),
            "telegram:2001".into(),
        ])
    );
    assert_eq!(notch.xp, 1300 + 75 + 900);
    assert_eq!(
        profile(&env, "minecraft:8667ba71-b85a-4004-af54-457a9734eed7")
            .await
            .xp,
        10
    );

    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test]
async fn unreadable_sources_and_bad_options_stop_before_anything_is_published() {
    let env = TestEnv::new().await;
    let legacy = legacy_database(&env).await;
    let cases: [(&[&str], &str); 5] = [
        (&[], "nothing to import"),
        (
            &[
                "--website-db",
                legacy.url.as_str(),
                "--website-table",
                "nope",
            ],
            "website table nope (--website-db): there is no table nope in this database",
        ),
        (
            &["--discord-file", "/nonexistent/users.json"],
            "discord file /nonexistent/users.json: cannot read the file",
        ),
        (
            &["--at", "yesterday", "--records", "/dev/null"],
            "--at \"yesterday\" is not an RFC 3339 time",
        ),
        (
            &["--column", "colour=hue", "--records", "x.csv"],
            "\"colour\" is not a --records field",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["import"];
        all.extend_from_slice(args);
        let out = env.ttfd(&all).output().await.expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("postgres://"),
            "a URL may hold a password: {stderr}"
        );
    }
    assert_eq!(stream_messages(&env).await, 0);
    legacy.db.remove().await.expect("drop legacy database");
    env.cleanup().await;
}

fn rand_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}
