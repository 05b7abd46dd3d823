//! The site in a real browser: headless Chromium, driven through ChromeDriver with
//! fantoccini, loads the leaderboard and a profile served from a scratch database
//! filled with the demo's synthetic community, checks what a person sees, and saves
//! screenshots under `<target>/test-output/browser/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/browser.sh` installs them;
//! this test runs it when they are missing). Only when they cannot be installed does
//! the test skip, saying so loudly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::{TestEnv, announced, community, eventually};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use ttfd::metrics::Metrics;
use ttfd::web::WebApp;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const BOT_TOKEN: &str = "4242:fake-telegram-bot-token";
/// The Telegram id of the site's admin (`web.admins`).
const ADMIN: &str = "990001";

fn installed() -> bool {
    Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()
}

/// Chromium and ChromeDriver, installed by `scripts/browser.sh` when missing.
fn browser_available() -> bool {
    if installed() {
        return true;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/browser.sh");
    let _ = std::process::Command::new("bash").arg(script).status();
    installed()
}

fn output_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp; screenshots go beside it.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-output/browser");
    std::fs::create_dir_all(&dir).expect("create the test output directory");
    dir
}

async fn save(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = output_dir().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
    path
}

/// Signs the browser in with the Telegram Login Widget's data for user `id` named
/// `first_name`, signed as Telegram would.
async fn sign_in_with_the_widget(client: &Client, base: &str, id: &str, first_name: &str) {
    client
        .goto(&format!("{base}/login"))
        .await
        .expect("open login");
    let auth_url = client
        .find(Locator::Css("script[data-auth-url]"))
        .await
        .expect("the Telegram widget")
        .attr("data-auth-url")
        .await
        .expect("attr")
        .expect("auth url");
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("id".to_owned(), id.to_owned());
    fields.insert("first_name".to_owned(), first_name.to_owned());
    fields.insert("auth_date".to_owned(), (ttfd::now_ms() / 1000).to_string());
    let hash = ttfd::web::telegram::sign(&fields, BOT_TOKEN);
    fields.insert("hash".to_owned(), hash);
    let mut url = reqwest::Url::parse(&auth_url).expect("url");
    url.query_pairs_mut().extend_pairs(fields.iter());
    client.goto(url.as_str()).await.expect("widget redirect");
    eventually("the signed-in profile", || async {
        let url = client.current_url().await.ok()?;
        (url.path() == "/profile").then_some(())
    })
    .await;
}

/// Waits for the page's message to say `words` (after a form, the page it redirects to).
async fn flash_saying(client: &Client, words: &str) {
    eventually(&format!("a message saying {words:?}"), || async {
        let flash = client.find(Locator::Css(".flash")).await.ok()?;
        flash.text().await.ok().filter(|t| t.contains(words))
    })
    .await;
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} on the page: {e}"))
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn a_person_sees_the_leaderboard_and_a_profile_in_chromium() {
    if !browser_available() {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             SKIPPED: the browser test needs {CHROMIUM} and {CHROMEDRIVER}, and\n\
             scripts/browser.sh could not install them (apt-get install chromium chromium-driver)\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    }

    // A database with the demo's synthetic community, applied by a real sync replica.
    let env = TestEnv::with(|s| {
        s.web.listen = "127.0.0.1:0".parse().expect("addr");
        s.web.telegram.bot_token = BOT_TOKEN.into();
        s.web.telegram.bot_username = "ttfd_test_bot".into();
        s.web.admins = vec![format!("telegram:{ADMIN}")];
        // The community's days: a season over since yesterday, and one on now.
        let today = time::OffsetDateTime::now_utc().date();
        let day = |n: i64| (today + time::Duration::days(n)).to_string();
        s.seasons = vec![
            ttfd::settings::seasons::SeasonSettings {
                name: "opening-days".into(),
                from: day(-4),
                to: day(-1),
            },
            ttfd::settings::seasons::SeasonSettings {
                name: "this-week".into(),
                from: day(0),
                to: day(6),
            },
        ];
    })
    .await;
    let stop = CancellationToken::new();
    env.spawn_worker(stop.clone()).await;
    // The outbox relay: the site's toggles publish their `prefs` events through it.
    env.spawn_relay(stop.clone());
    let events = community(1500, 80, 11);
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    let app = WebApp::build(
        &env.settings,
        env.store.clone(),
        env.broker.clone(),
        Metrics::new(),
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("the web role starts");
    let base = app.base_url().to_owned();
    tokio::spawn(app.run(stop.clone()));
    let top = env.store.top("all", 25, 0).await.expect("top");
    let leader = top.first().expect("someone leads").clone();
    let users = env.store.user_count().await.expect("count");

    // ChromeDriver on a port it picks and announces, and a fresh headless Chromium behind it.
    let mut driver = Command::new(CHROMEDRIVER)
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let mut said = BufReader::new(driver.stdout.take().expect("piped")).lines();
    let port: u16 = announced(&mut said, "chromedriver's port", |line| {
        let (_, port) = line.split_once("started successfully on port ")?;
        port.trim_end_matches('.').parse().ok()
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = said.next_line().await {} });
    let webdriver = format!("http://127.0.0.1:{port}");
    eventually("chromedriver to listen", || async {
        let r = reqwest::get(format!("{webdriver}/status")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let profile_dir =
        std::env::temp_dir().join(format!("ttfd-chromium-{}-{port}", std::process::id()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile_dir.display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&webdriver)
        .await
        .expect("a Chromium session");

    // The leaderboard: tabs, one row per member (first page), the leader on top.
    client
        .goto(&format!("{base}/leaderboard"))
        .await
        .expect("open the leaderboard");
    assert_eq!(text_of(&client, "h1").await, "Leaderboard");
    assert_eq!(client.title().await.expect("title"), "Leaderboard · TTFD");
    let tabs = client
        .find_all(Locator::Css(".tabs a"))
        .await
        .expect("tabs");
    let mut labels = Vec::new();
    for t in &tabs {
        labels.push(t.text().await.expect("tab"));
    }
    assert_eq!(
        labels,
        [
            "All time",
            "This month",
            "This week",
            "This season",
            "Seasons"
        ]
    );
    assert_eq!(text_of(&client, ".tabs a.active").await, "All time");
    let rows = client
        .find_all(Locator::Css("table.board tbody tr"))
        .await
        .expect("rows");
    assert_eq!(
        rows.len() as i64,
        users.min(25),
        "one row per member on the first page"
    );
    let first = rows[0].text().await.expect("first row");
    let leader_name = leader.display_name.clone().expect("named");
    assert!(first.starts_with("1"), "{first}");
    assert!(first.contains(&leader_name), "{first} names {leader_name}");
    assert!(
        first.contains(&leader.rank),
        "{first} shows rank {}",
        leader.rank
    );
    let pager = text_of(&client, ".pager").await;
    assert!(pager.contains(&format!("{users} members")), "{pager}");
    save(&client, "leaderboard.png").await;

    // The week tab.
    client
        .find(Locator::LinkText("This week"))
        .await
        .expect("tab")
        .click()
        .await
        .expect("click");
    eventually("the week tab", || async {
        let url = client.current_url().await.ok()?;
        url.as_str().contains("period=week").then_some(())
    })
    .await;
    assert_eq!(text_of(&client, ".tabs a.active").await, "This week");

    // The leader's profile, reached by clicking their name.
    client
        .goto(&format!("{base}/leaderboard"))
        .await
        .expect("back");
    client
        .wait()
        .for_element(Locator::LinkText(&leader_name))
        .await
        .expect("the leader's link")
        .click()
        .await
        .expect("click");
    eventually("the profile page", || async {
        let url = client.current_url().await.ok()?;
        url.path().starts_with("/u/").then_some(())
    })
    .await;
    assert_eq!(text_of(&client, "h1").await, leader_name);
    let badge = client
        .find(Locator::Css(".badge.big"))
        .await
        .expect("rank badge");
    assert_eq!(badge.text().await.expect("badge"), leader.rank);
    let colour = badge.css_value("background-color").await.expect("colour");
    assert!(colour.starts_with("rgb"), "the badge is coloured: {colour}");
    assert_ne!(colour, "rgba(0, 0, 0, 0)");
    let xp = text_of(&client, ".xp").await;
    assert!(xp.ends_with("XP"), "{xp}");
    let bars = client
        .find_all(Locator::Css("svg.chart rect"))
        .await
        .expect("bars");
    assert_eq!(bars.len(), 30, "a bar per day of the last 30");
    let counters = text_of(&client, ".counters").await;
    for label in ["messages", "in voice", "games", "coins", "peak rank"] {
        assert!(counters.contains(label), "{counters}");
    }
    let platforms = text_of(&client, ".platforms").await;
    assert!(!platforms.is_empty(), "linked platforms are listed");
    // Its rank card, drawn, and the link preview's picture.
    let card = eventually("the rank card drawn", || async {
        let width = client
            .execute(
                "const i = document.querySelector('img.rank-card'); \
                 return i && i.complete ? i.naturalWidth : 0;",
                vec![],
            )
            .await
            .ok()?;
        (width != json!(0)).then_some(width)
    })
    .await;
    assert_eq!(card, json!(960));
    let og = client
        .execute(
            "return document.querySelector('meta[property=\"og:image\"]').content;",
            vec![],
        )
        .await
        .expect("og:image");
    assert!(
        og.as_str().is_some_and(|u| u.ends_with("/card.png")),
        "{og}"
    );
    client
        .execute(
            "document.querySelector('img.rank-card').scrollIntoView();",
            vec![],
        )
        .await
        .expect("scroll");
    save(&client, "profile-card.png").await;
    client
        .execute("window.scrollTo(0, 0);", vec![])
        .await
        .expect("scroll");
    save(&client, "profile.png").await;

    // Where the leader's XP came from, all time: sources, platforms, a bar per day.
    let profile_url = client.current_url().await.expect("url");
    client
        .goto(&format!("{base}{}?xp=all#xp", profile_url.path()))
        .await
        .expect("open the statement");
    let statement = client
        .find(Locator::Css("section.statement"))
        .await
        .expect("the statement");
    let words = statement.text().await.expect("text");
    assert!(
        words.contains("Where the XP came from") && words.contains("Messages"),
        "{words}"
    );
    let active = text_of(&client, "section.statement .tabs a.active").await;
    assert_eq!(active, "All time");
    let days = client
        .find_all(Locator::Css("section.statement .days li"))
        .await
        .expect("days");
    assert!(!days.is_empty(), "a bar per day with XP");
    let png = statement.screenshot().await.expect("statement screenshot");
    std::fs::write(output_dir().join("profile-statement.png"), png).expect("write");

    // The hall of champions, once the season over is closed (a sync replica's job).
    let closed = env
        .store
        .close_seasons(
            time::OffsetDateTime::now_utc(),
            time::Duration::ZERO,
            &ttfd::store::seasons::ClosingRules::seasons_only(3, &[]),
        )
        .await
        .expect("close");
    assert_eq!(closed.len(), 1, "the opening days close");
    client
        .goto(&format!("{base}/seasons"))
        .await
        .expect("seasons");
    let meta = text_of(&client, "section.season .meta").await;
    assert!(meta.contains("On now"), "{meta}");
    let champions = client
        .find_all(Locator::Css("section.season table.board tbody tr"))
        .await
        .expect("champions");
    assert_eq!(champions.len(), 3, "three champions of the opening days");
    save(&client, "seasons.png").await;
    client
        .find(Locator::LinkText("this-week"))
        .await
        .expect("the season's link")
        .click()
        .await
        .expect("click");
    let season = text_of(&client, "p.season").await;
    assert!(season.starts_with("Season this-week: "), "{season}");
    save(&client, "leaderboard-season.png").await;

    // On a phone: nothing wider than the screen.
    client.set_window_size(390, 844).await.expect("phone size");
    for (path, shot) in [
        ("/leaderboard", "leaderboard-phone.png"),
        ("/ranks", "ranks-phone.png"),
        ("/seasons", "seasons-phone.png"),
    ] {
        client.goto(&format!("{base}{path}")).await.expect("open");
        text_of(&client, "h1").await;
        let fits = client
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth;",
                vec![],
            )
            .await
            .expect("measure");
        assert_eq!(fits, json!(true), "{path} fits a phone's width");
        save(&client, shot).await;
    }

    // Signing in with the Telegram Login Widget (its data signed as Telegram would),
    // as the leader's Telegram account: one's own merged profile with the linking panel.
    client
        .set_window_size(1280, 1000)
        .await
        .expect("desktop size");
    let leader_profile = env
        .store
        .profile_by_uid(leader.uid)
        .await
        .expect("read")
        .expect("the leader");
    let telegram = leader_profile
        .identities
        .iter()
        .find(|i| i.platform == "telegram")
        .map(|i| i.user.clone());
    if let Some(telegram) = telegram {
        sign_in_with_the_widget(&client, &base, &telegram, "Leader").await;
        assert_eq!(text_of(&client, ".flash").await, "Signed in.");
        assert_eq!(text_of(&client, "h1").await, leader_name);
        assert_eq!(text_of(&client, "#link h2").await, "Link your accounts");
        let ids = text_of(&client, ".platforms").await;
        assert!(ids.contains(&telegram), "one's own ids are shown: {ids}");
        save(&client, "profile-own.png").await;
        let panel = client
            .find(Locator::Css("#link"))
            .await
            .expect("the linking panel");
        let png = panel.screenshot().await.expect("panel screenshot");
        std::fs::write(output_dir().join("profile-own-linking.png"), png).expect("write");
        assert_eq!(text_of(&client, "#settings h2").await, "Settings");
        let toggle = text_of(&client, "#notify").await;
        assert!(
            toggle.contains("Rank-up announcements for you: on"),
            "{toggle}"
        );
        let settings = client
            .find(Locator::Css("#settings"))
            .await
            .expect("settings");
        let png = settings.screenshot().await.expect("settings screenshot");
        std::fs::write(output_dir().join("profile-own-settings.png"), png).expect("write");

        // Hiding (SPEC 7.3): the profile says so and shows where one would stand.
        client
            .find(Locator::Css("#privacy button"))
            .await
            .expect("the privacy toggle")
            .click()
            .await
            .expect("click");
        // The form posts, then the site redirects back: read the new page's message.
        flash_saying(&client, "You are hidden").await;
        eventually("the hidden profile", || async {
            client.goto(&format!("{base}/profile")).await.ok()?;
            client.find(Locator::Css("#hidden-note")).await.ok()
        })
        .await;
        let note = text_of(&client, "#hidden-note").await;
        assert!(
            note.starts_with("Hidden: you are on no leaderboard"),
            "{note}"
        );
        save(&client, "profile-own-hidden.png").await;
    } else {
        eprintln!("the leader has no Telegram account in this data; sign-in step not shown");
    }

    // The admin page, signed in as the admin: the leader found, 250 XP added with a
    // reason, the result said and the audit log showing it.
    sign_in_with_the_widget(&client, &base, ADMIN, "Mod").await;
    let member = leader_profile.identities.first().expect("an identity");
    let member = format!("{}:{}", member.platform, member.user);
    client
        .goto(&format!("{base}/admin?member={member}"))
        .await
        .expect("open the admin page");
    assert_eq!(text_of(&client, "h1").await, "Admin");
    let found = text_of(&client, ".found").await;
    assert!(found.contains(&leader_name), "{found}");
    let form = client
        .find(Locator::Css("form.adjust"))
        .await
        .expect("the form");
    form.find(Locator::Css("input[name=amount]"))
        .await
        .expect("amount")
        .clear()
        .await
        .expect("clear");
    form.find(Locator::Css("input[name=amount]"))
        .await
        .expect("amount")
        .send_keys("250")
        .await
        .expect("type");
    form.find(Locator::Css("input[name=reason]"))
        .await
        .expect("reason")
        .send_keys("browser test prize")
        .await
        .expect("type");
    form.find(Locator::Css("button[type=submit]"))
        .await
        .expect("apply")
        .click()
        .await
        .expect("click");
    let flash = text_of(&client, ".flash").await;
    assert!(
        flash.starts_with(&format!("+250 XP for {member}: now")),
        "{flash}"
    );
    let audit = text_of(&client, "table.audit tbody tr").await;
    assert!(
        audit.contains("+250 XP") && audit.contains("browser test prize"),
        "{audit}"
    );
    assert!(audit.contains(&format!("telegram:{ADMIN}")), "{audit}");
    save(&client, "admin.png").await;

    // Taking an account out of the leader's profile (SPEC 7.4), when it has two.
    if leader_profile.identities.len() > 1 {
        let unlink = client
            .find(Locator::Css("form#unlink"))
            .await
            .expect("the unlink form");
        unlink
            .find(Locator::Css("input[name=reason]"))
            .await
            .expect("reason")
            .send_keys("browser test: linked by mistake")
            .await
            .expect("type");
        unlink
            .find(Locator::Css("button[type=submit]"))
            .await
            .expect("unlink")
            .click()
            .await
            .expect("click");
        flash_saying(&client, "unlinked from").await;
        let audit = text_of(&client, "table.audit tbody tr").await;
        assert!(audit.contains("unlinked from"), "{audit}");
        save(&client, "admin-unlinked.png").await;
    }

    client.close().await.expect("close the browser");
    let _ = std::fs::remove_dir_all(&profile_dir);
    stop.cancel();
    env.cleanup().await;
}
