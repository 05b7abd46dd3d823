//! Seasons (docs/seasons.md): their standings against the reference model, every
//! surface's season board, and a closing that happens once whoever runs it.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use time::{Date, OffsetDateTime};
use tokio_util::sync::CancellationToken;
use ttfd::settings::seasons::SeasonSettings;
use ttfd::shared::wire::{EventId, Proof, SeasonNotice};
use ttfd::shared::{Event, Identity, Payload};
use ttfd::store::seasons::{Champions, ClosingRules};

use crate::common::TestEnv;

const DAY_MS: i64 = 86_400_000;
/// Bonus XP of a closed season's first and second.
const REWARDS: [i32; 2] = [500, 200];

fn grant(id: &str, ts: i64, who: &str, amount: i32) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts,
        identity: Identity::parse(who).expect("identity"),
        name: Some(who.split(':').nth(1).unwrap_or(who).to_owned()),
        payload: Payload::Xp {
            amount,
            reason: "r".into(),
            by: None,
        },
    }
}

fn season(name: &str, first: Date, last: Date) -> SeasonSettings {
    SeasonSettings {
        name: name.into(),
        from: first.to_string(),
        to: last.to_string(),
    }
}

/// An autumn over since ten days, a winter on now, a spring to come.
async fn world() -> (TestEnv, Date) {
    let today = OffsetDateTime::now_utc().date();
    let days = |n: i64| today + time::Duration::days(n);
    let env = TestEnv::with(|s| {
        s.seasons = vec![
            season("autumn", days(-40), days(-10)),
            season("winter", days(-9), days(30)),
            season("spring", days(31), days(60)),
        ];
    })
    .await;
    (env, today)
}

/// Ann leads autumn, Bo is second (and wins winter), Cy's autumn is negative, Di is in
/// winter only; Bo's Telegram account joins his Discord one mid-winter.
fn events() -> Vec<Event> {
    let now = ttfd::now_ms();
    let autumn = now - 20 * DAY_MS;
    let winter = now - 2 * DAY_MS;
    vec![
        grant("s:1", autumn, "discord:ann", 900),
        grant("s:2", autumn, "discord:bo", 500),
        grant("s:3", autumn, "telegram:bo", 200),
        grant("s:4", autumn, "discord:cy", -50),
        grant("s:5", winter, "discord:bo", 300),
        grant("s:6", winter, "discord:di", 250),
        grant("s:7", winter, "discord:ann", 100),
        Event {
            id: EventId::parse("s:link").expect("id"),
            ts: winter,
            identity: Identity::parse("discord:bo").expect("identity"),
            name: None,
            payload: Payload::Link {
                other: Identity::parse("telegram:bo").expect("identity"),
                proof: Proof::Code,
                by: None,
            },
        },
    ]
}

#[tokio::test]
async fn a_seasons_board_is_its_days_xp_on_every_surface() {
    let (env, _) = world().await;
    let stop = CancellationToken::new();
    env.spawn_worker(stop.clone()).await;
    let events = events();
    env.publish(&events).await;
    // The standings of every season with XP, merges and negative XP included, are the
    // model's (`compare_standings` reads the seasons in force).
    env.wait_for_model(&events).await;

    let board = |key: &str| {
        let store = env.store.clone();
        let key = key.to_owned();
        async move {
            store
                .top(&key, 10, 0)
                .await
                .expect("top")
                .into_iter()
                .map(|s| (s.display_name.unwrap_or_default(), s.xp))
                .collect::<Vec<_>>()
        }
    };
    // Bo's two accounts count together since the link, autumn's Telegram XP included.
    assert_eq!(
        board("season:autumn").await,
        [("ann".into(), 900), ("bo".into(), 700), ("cy".into(), -50)]
    );
    assert_eq!(
        board("season:winter").await,
        [("bo".into(), 300), ("di".into(), 250), ("ann".into(), 100)]
    );
    assert!(board("season:spring").await.is_empty());

    // The current season in a profile, and the history of every season begun.
    let ann = Identity::parse("discord:ann").expect("identity");
    let profile = env
        .store
        .profile(&ann)
        .await
        .expect("profile")
        .expect("ann");
    let current = profile
        .standings
        .iter()
        .find(|s| s.key == "season:winter")
        .expect("this season's place");
    assert_eq!(
        (current.position, current.xp, current.ranked),
        (Some(3), 100, 3)
    );
    let history: Vec<(&str, Option<u64>)> = profile
        .seasons
        .iter()
        .map(|s| (s.key.as_str(), s.position))
        .collect();
    assert_eq!(
        history,
        [("season:winter", Some(3)), ("season:autumn", Some(1))]
    );

    // The CLI: `top --season`, `top --period season`, an unknown season refused.
    let cli = |args: &'static [&'static str]| {
        let mut cmd = env.ttfd(args);
        async move { cmd.output().await.expect("ttfd runs") }
    };
    let out = cli(&["top", "--season", "autumn", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["display_name"], "ann");
    assert_eq!(rows[1]["xp"], 700);
    let out = cli(&["top", "--period", "season"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("Leaderboard, in season winter\n1. bo — 300 XP"),
        "{text}"
    );
    let out = cli(&["top", "--season", "summer"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no season named \"summer\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["seasons", "--json"]).await;
    let seasons: Value = serde_json::from_slice(&out.stdout).expect("json");
    let status: Vec<(&str, &str)> = seasons
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or(""),
                s["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        status,
        [("spring", "upcoming"), ("winter", "on"), ("autumn", "over")]
    );
    stop.cancel();
    env.cleanup().await;
}

#[tokio::test]
async fn a_season_closes_once_with_its_champions_whoever_closes_it() {
    let (env, today) = world().await;
    let stop = CancellationToken::new();
    env.spawn_worker(stop.clone()).await;
    let events = events();
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    let mut notices = env
        .broker
        .client
        .subscribe(env.broker.subjects.notify("season"))
        .await
        .expect("subscribe");

    // Two replicas close at once, then one again later (a restart): autumn closes once,
    // winter and spring are not over.
    let now = OffsetDateTime::now_utc();
    let grace = time::Duration::hours(1);
    let other = env.store.clone();
    let rules = ClosingRules::seasons_only(2, &REWARDS);
    let (a, b) = tokio::join!(
        env.store.close_seasons(now, grace, &rules),
        other.close_seasons(now, grace, &rules)
    );
    let closed: Vec<String> = [a.expect("closes"), b.expect("closes")]
        .concat()
        .into_iter()
        .map(|c| c.season.name)
        .collect();
    assert_eq!(closed, ["autumn"]);
    assert!(
        env.store
            .close_seasons(now, grace, &rules)
            .await
            .expect("closes")
            .is_empty()
    );
    // Within the grace after its last day a season is not closed yet.
    let tomorrow_morning = (today + time::Duration::days(31)).midnight().assume_utc();
    let early = env
        .store
        .close_seasons(tomorrow_morning, grace, &rules)
        .await
        .expect("closes");
    assert!(early.is_empty(), "winter ended less than the grace ago");

    // The notice goes out once, by the outbox relay.
    env.spawn_relay(stop.clone());
    let msg = tokio::time::timeout(Duration::from_secs(10), notices.next())
        .await
        .expect("a season notice")
        .expect("a message");
    let notice: SeasonNotice = rmp_serde::from_slice(&msg.payload).expect("a notice");
    assert_eq!(notice.id, "season:autumn");
    assert_eq!(notice.ranked, 3);
    let champions: Vec<(u32, Option<&str>, i64, usize)> = notice
        .champions
        .iter()
        .map(|c| {
            (
                c.position,
                c.display_name.as_deref(),
                c.xp,
                c.identities.len(),
            )
        })
        .collect();
    assert_eq!(
        champions,
        [(1, Some("ann"), 900, 1), (2, Some("bo"), 700, 2)]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), notices.next())
            .await
            .is_err(),
        "one notice"
    );

    // The rewards: an `xp` event per champion at autumn's last millisecond, each
    // applied once (two closers and a third call queued them once).
    let autumn_end = (today - time::Duration::days(9))
        .midnight()
        .assume_utc()
        .unix_timestamp()
        * 1000
        - 1;
    let mut all = events.clone();
    for (c, amount) in notice.champions.iter().zip(REWARDS) {
        let first = c.identities.first().expect("an identity");
        all.push(Event {
            id: EventId::parse(&format!("season:autumn:{}", c.position)).expect("id"),
            ts: autumn_end,
            identity: Identity::new(&first.platform, &first.user).expect("identity"),
            name: None,
            payload: Payload::Xp {
                amount,
                reason: format!("season autumn #{}", c.position),
                by: None,
            },
        });
    }
    env.wait_for_model(&all).await;
    let ann = env
        .store
        .profile(&Identity::parse("discord:ann").expect("identity"))
        .await
        .expect("profile")
        .expect("ann");
    assert_eq!(ann.xp, 900 + 100 + 500, "her XP and her reward, once");

    // Late XP for autumn's days changes its board, not its champions.
    let late = grant("s:late", ttfd::now_ms() - 20 * DAY_MS, "discord:cy", 5000);
    all.push(late.clone());
    env.publish(&[late]).await;
    env.wait_for_model(&all).await;
    let views = env.store.season_views(today).await.expect("views");
    let autumn = views.iter().find(|s| s.name == "autumn").expect("autumn");
    assert_eq!(autumn.status, "closed");
    let names: Vec<Option<&str>> = autumn
        .champions
        .iter()
        .map(|c| c.display_name.as_deref())
        .collect();
    assert_eq!(names, [Some("ann"), Some("bo")]);
    stop.cancel();
    env.cleanup().await;
}

/// Weeks (and months) close too when `[champions.week]` asks (docs/seasons.md, "Weeks
/// and months"): at first the last week over, later every week after the newest closed
/// (catching up after downtime), each once, with its champions' rewards applied once.
#[tokio::test]
async fn weeks_close_with_their_champions_once_and_catch_up_after_downtime() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    env.spawn_worker(stop.clone()).await;
    let today = OffsetDateTime::now_utc().date();
    let monday = today - time::Duration::days(i64::from(today.weekday().number_days_from_monday()));
    let week = |back: i64| monday - time::Duration::weeks(back);
    let ms = |t: OffsetDateTime| t.unix_timestamp() * 1000;
    // The Wednesday of the week `back` weeks ago.
    let wednesday = |back: i64| {
        ms((week(back) + time::Duration::days(2))
            .midnight()
            .assume_utc())
    };
    // Ann leads three weeks ago and last week, Bo two weeks ago.
    let events = vec![
        grant("w:1", wednesday(3), "discord:ann", 300),
        grant("w:2", wednesday(3), "discord:bo", 100),
        grant("w:3", wednesday(2), "discord:bo", 400),
        grant("w:4", wednesday(2), "discord:ann", 50),
        grant("w:5", wednesday(1), "discord:ann", 80),
    ];
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    let rules = ClosingRules {
        week: Some(Champions {
            top: 1,
            rewards: vec![40],
        }),
        ..ClosingRules::seasons_only(2, &[])
    };
    let grace = time::Duration::hours(1);
    let key = |back: i64| {
        ttfd::shared::view::Period::Week
            .key(week(back), &Default::default())
            .expect("a week has a key")
    };
    let weeks = |closed: Vec<ttfd::store::seasons::Closing>| -> Vec<(String, Vec<i64>)> {
        closed
            .into_iter()
            .filter(|c| c.season.name.starts_with("week:"))
            .map(|c| (c.season.name, c.champions.iter().map(|c| c.xp).collect()))
            .collect()
    };

    // The replicas ran two weeks ago, early on Monday: the week before closed.
    let then = week(2).midnight().assume_utc() + time::Duration::hours(2);
    let closed = env
        .store
        .close_seasons(then, grace, &rules)
        .await
        .expect("close");
    assert_eq!(weeks(closed), [(key(3), vec![300])]);
    // After a downtime: the two weeks since, in order; then nothing more.
    let now = OffsetDateTime::now_utc();
    let closed = env
        .store
        .close_seasons(now, grace, &rules)
        .await
        .expect("close");
    assert_eq!(weeks(closed), [(key(2), vec![400]), (key(1), vec![80])]);
    let again = env
        .store
        .close_seasons(now, grace, &rules)
        .await
        .expect("close");
    assert!(weeks(again).is_empty());

    // Each week's champion gets 40 XP at its last millisecond, once (queued for the
    // outbox relay); the weeks are not seasons in the hall of champions.
    env.spawn_relay(stop.clone());
    let mut all = events.clone();
    for (back, who) in [(3, "discord:ann"), (2, "discord:bo"), (1, "discord:ann")] {
        let name = key(back);
        all.push(Event {
            id: EventId::parse(&format!("season:{name}:1")).expect("id"),
            ts: ms(week(back - 1).midnight().assume_utc()) - 1,
            identity: Identity::parse(who).expect("identity"),
            name: None,
            payload: Payload::Xp {
                amount: 40,
                reason: format!("week {} #1", &name["week:".len()..]),
                by: None,
            },
        });
    }
    env.wait_for_model(&all).await;
    let halls = env.store.closings().await.expect("closings");
    assert!(halls.iter().all(|c| !c.season.name.contains(':')));
    stop.cancel();
    env.cleanup().await;
}
