//! The web role end to end: a real `WebApp` on 127.0.0.1 (port 0) over a scratch
//! database and NATS prefix, a fake Discord (common/fake_oauth.rs), and a
//! cookie-keeping HTTP client playing the browser (redirects followed by hand, so each
//! hop can be checked).

const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::fake_oauth::{self, FakeDiscord, FakeUser, Mode};
use crate::common::{TestEnv, eventually};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use ttfd::metrics::Metrics;
use ttfd::shared::view::Period;
use ttfd::shared::wire::{EventId, Payload, Unpaid};
use ttfd::shared::{Event, Identity};
use ttfd::web::WebApp;

const BOT_TOKEN: &str = "4242:fake-telegram-bot-token";
const WEBSITE_TOKEN: &str = "website-ingest-token-0001";
const DISCORD_TOKEN: &str = "discord-ingest-token-0001";
const ANN_DISCORD: &str = "80351110224678912";

/// A running site with its world.
struct Site {
    env: TestEnv,
    base: String,
    discord: FakeDiscord,
    stop: CancellationToken,
}

impl Site {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A site whose settings `tune` may adjust last.
    async fn start_with(tune: impl FnOnce(&mut ttfd::settings::Settings)) -> Self {
        let discord = FakeDiscord::start(FakeUser {
            id: ANN_DISCORD.into(),
            username: "ann".into(),
            global_name: Some("Ann".into()),
        })
        .await;
        let env = TestEnv::with(|s| {
            s.web.listen = "127.0.0.1:0".parse().expect("addr");
            s.web.cookie_key = "a-test-cookie-key-of-at-least-32-bytes".into();
            discord.configure(&mut s.web.discord);
            s.web.telegram.bot_token = BOT_TOKEN.into();
            s.web.telegram.bot_username = "ttfd_test_bot".into();
            s.web
                .ingest_tokens
                .insert("website".into(), WEBSITE_TOKEN.into());
            s.web
                .ingest_tokens
                .insert("discord".into(), DISCORD_TOKEN.into());
            tune(s);
        })
        .await;
        let app = WebApp::build(
            &env.settings,
            env.store.clone(),
            env.broker.clone(),
            Metrics::new(),
            GRACE,
        )
        .await
        .expect("the web role starts");
        let base = app.base_url().to_owned();
        let stop = CancellationToken::new();
        tokio::spawn(app.run(stop.clone()));
        let site = Self {
            env,
            base,
            discord,
            stop,
        };
        site.run_pipeline().await;
        site
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A sync replica and the outbox relay: events get applied, recorded links published.
    async fn run_pipeline(&self) {
        self.env.spawn_worker(self.stop.clone()).await;
        self.env.spawn_relay(self.stop.clone());
    }

    /// Publishes events and waits until the database has applied them.
    async fn seed(&self, events: &[Event]) {
        self.env.publish(events).await;
        self.env.wait_for_model(events).await;
    }

    async fn events_in_stream(&self) -> u64 {
        let mut stream = self
            .env
            .broker
            .js
            .get_stream(self.env.broker.subjects.events_stream())
            .await
            .expect("stream");
        stream.info().await.expect("info").state.messages
    }

    async fn stop(self) {
        self.stop.cancel();
        self.env.cleanup().await;
    }
}

/// A browser: keeps cookies, follows no redirect by itself.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Follows redirects (site and fake Discord) by hand: the last response and every URL
/// visited.
async fn follow(client: &reqwest::Client, url: &str) -> (reqwest::Response, Vec<String>) {
    let mut visited = vec![url.to_owned()];
    let mut response = client.get(url).send().await.expect("request");
    while response.status().is_redirection() {
        let next = response
            .url()
            .join(
                response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .expect("Location"),
            )
            .expect("a URL");
        visited.push(next.to_string());
        response = client.get(next).send().await.expect("request");
    }
    (response, visited)
}

async fn text(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    (status, r.text().await.expect("body"))
}

/// Posts a form and follows the redirects: the last response and every URL visited.
async fn follow_post(
    client: &reqwest::Client,
    url: &str,
    fields: &[(String, String)],
) -> (reqwest::Response, Vec<String>) {
    let response = client.post(url).form(fields).send().await.expect("post");
    let Some(next) = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| response.url().join(l).ok())
    else {
        return (response, vec![url.to_owned()]);
    };
    let (last, mut visited) = follow(client, next.as_str()).await;
    visited.insert(0, url.to_owned());
    (last, visited)
}

/// Signs `client` in with the Telegram widget as the Telegram user 777.
async fn sign_in_with_telegram_as_someone_else(site: &Site, client: &reqwest::Client) {
    let (_, login) = text(client.get(site.url("/login")).send().await.expect("login")).await;
    let fields = widget("777", ttfd::now_ms() / 1000, BOT_TOKEN);
    let url = site.url(&format!(
        "/auth/telegram/{}?{}",
        csrf_of(&login),
        query_string(&fields)
    ));
    let (page, visited) = follow(client, &url).await;
    assert_eq!(page.status(), StatusCode::OK, "{visited:?}");
}

/// The CSRF token a page carries (in its forms or the Telegram widget's URL).
fn csrf_of(html: &str) -> String {
    for marker in ["name=\"csrf\" value=\"", "/telegram/"] {
        if let Some(i) = html.find(marker) {
            return html[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
        }
    }
    panic!("no CSRF token in the page: {html}");
}

fn message(id: &str, who: &str, name: &str, ts: i64) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts,
        identity: Identity::parse(who).expect("identity"),
        name: Some(name.into()),
        payload: Payload::Message {
            len: None,
            chat: None,
            mult: None,
        },
    }
}

fn xp(id: &str, who: &str, name: &str, amount: i32, ts: i64) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts,
        identity: Identity::parse(who).expect("identity"),
        name: Some(name.into()),
        payload: Payload::Xp {
            amount,
            reason: "test".into(),
            by: None,
        },
    }
}

/// Login Widget data for Telegram user `id`, signed with `token`.
fn widget(id: &str, auth_date: i64, token: &str) -> BTreeMap<String, String> {
    let mut fields: BTreeMap<String, String> = [
        ("id", id.to_owned()),
        ("first_name", "Ann".to_owned()),
        ("username", "ann_tg".to_owned()),
        ("auth_date", auth_date.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let hash = ttfd::web::telegram::sign(&fields, token);
    fields.insert("hash".into(), hash);
    fields
}

fn query_string(fields: &BTreeMap<String, String>) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("url");
    url.query_pairs_mut().extend_pairs(fields.iter());
    url.query().unwrap_or_default().to_owned()
}

/// Signs `client` in with the fake Discord and returns the profile page.
async fn sign_in_with_discord(site: &Site, client: &reqwest::Client) -> String {
    let (page, visited) = follow(client, &site.url("/auth/discord")).await;
    let (status, html) = text(page).await;
    assert_eq!(status, StatusCode::OK, "{visited:?}\n{html}");
    assert!(
        visited.last().is_some_and(|u| u.ends_with("/profile")),
        "{visited:?}"
    );
    html
}

/// "Sign out everywhere" ends the member's sessions in every browser (cookies are signed
/// and held by the browsers, so this is the one server-side fact that can end them);
/// signing in again afterwards works.
#[tokio::test]
async fn signing_out_everywhere_ends_the_members_sessions_in_every_browser() {
    let site = Site::start().await;
    let (phone, laptop) = (browser(), browser());
    let profile = sign_in_with_discord(&site, &phone).await;
    assert!(profile.contains("/logout/everywhere"), "{profile}");
    sign_in_with_discord(&site, &laptop).await;
    let at_profile = |client: &reqwest::Client| {
        let request = client.get(site.url("/profile"));
        async move { request.send().await.expect("get") }
    };
    assert_eq!(at_profile(&laptop).await.status(), StatusCode::OK);

    let csrf = csrf_of(&profile);
    let done = phone
        .post(site.url("/logout/everywhere"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert!(done.status().is_redirection(), "{}", done.status());
    for client in [&laptop, &phone] {
        let r = at_profile(client).await;
        assert!(r.status().is_redirection(), "{}", r.status());
        assert_eq!(r.headers()[LOCATION], "/login");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    sign_in_with_discord(&site, &laptop).await;
    assert_eq!(at_profile(&laptop).await.status(), StatusCode::OK);
    site.stop().await;
}

// ---------------------------------------------------------------------------------
// Discord OAuth

#[tokio::test]
async fn signing_in_with_discord_goes_through_the_provider_and_lands_on_the_profile() {
    let site = Site::start().await;
    let now = ttfd::now_ms();
    site.seed(&[message(
        "d:1",
        &format!("discord:{ANN_DISCORD}"),
        "Ann",
        now,
    )])
    .await;
    let client = browser();

    let start = client
        .get(site.url("/auth/discord"))
        .send()
        .await
        .expect("start");
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let oauth_cookie = start
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("ttfd_oauth="))
        .expect("the state is bound to the browser")
        .to_owned();
    assert!(
        oauth_cookie.contains("HttpOnly") && oauth_cookie.contains("SameSite=Lax"),
        "{oauth_cookie}"
    );
    let authorize = start.headers()[LOCATION]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        authorize.starts_with(&format!("{}/oauth2/authorize?", site.discord.base)),
        "{authorize}"
    );

    let (page, visited) = follow(&client, &authorize).await;
    let query = site
        .discord
        .last_authorize_query()
        .expect("Discord was asked");
    assert_eq!(query["scope"], "identify");
    assert_eq!(query["client_id"], fake_oauth::CLIENT_ID);
    assert_eq!(query["redirect_uri"], site.url("/auth/discord/callback"));
    assert!(query["state"].len() >= 32, "a random state");
    assert!(
        visited[1].starts_with(&site.url("/auth/discord/callback?code=")),
        "{visited:?}"
    );
    let (status, html) = text(page).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Signed in."), "{html}");
    assert!(
        html.contains("<h1>Ann</h1>"),
        "the profile of the signed-in member: {html}"
    );
    assert!(
        html.contains(ANN_DISCORD),
        "one's own page shows the account id"
    );
    assert!(html.contains("action=\"/logout\""));
    assert_eq!(site.discord.token_requests(), 1);

    // The session cookie is signed, HttpOnly and SameSite.
    let again = client
        .get(site.url("/profile"))
        .send()
        .await
        .expect("profile");
    let session_cookie = again
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("ttfd_session="))
        .expect("session cookie")
        .to_owned();
    assert!(session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Lax"));
    assert_eq!(again.status(), StatusCode::OK);
    site.stop().await;
}

/// The callback URL Discord sends the browser to, without following it.
async fn callback_url(site: &Site, client: &reqwest::Client) -> String {
    let start = client
        .get(site.url("/auth/discord"))
        .send()
        .await
        .expect("start");
    let authorize = start.headers()[LOCATION]
        .to_str()
        .expect("ascii")
        .to_owned();
    let back = client.get(&authorize).send().await.expect("authorize");
    back.headers()[LOCATION].to_str().expect("ascii").to_owned()
}

#[tokio::test]
async fn a_wrong_or_missing_state_is_refused_before_any_token_exchange() {
    let site = Site::start().await;
    let client = browser();
    let callback = callback_url(&site, &client).await;
    let mut url = reqwest::Url::parse(&callback).expect("url");
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                "forged".into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let (status, html) = text(client.get(url).send().await.expect("callback")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("did not start in this browser"), "{html}");

    // Another browser (no state cookie) bringing a valid-looking callback.
    let callback = callback_url(&site, &client).await;
    let (status, html) = text(browser().get(&callback).send().await.expect("callback")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("expired or was already used"), "{html}");
    assert_eq!(site.discord.token_requests(), 0, "no code was exchanged");
    let profile = browser()
        .get(site.url("/profile"))
        .send()
        .await
        .expect("profile");
    assert_eq!(
        profile.status(),
        StatusCode::SEE_OTHER,
        "nobody is signed in"
    );
    site.stop().await;
}

#[tokio::test]
async fn a_replayed_callback_is_refused() {
    let site = Site::start().await;
    let client = browser();
    let start = client
        .get(site.url("/auth/discord"))
        .send()
        .await
        .expect("start");
    let oauth_cookie = start
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("ttfd_oauth="))
        .and_then(|c| c.split(';').next())
        .expect("state cookie")
        .to_owned();
    let authorize = start.headers()[LOCATION]
        .to_str()
        .expect("ascii")
        .to_owned();
    let back = client.get(&authorize).send().await.expect("authorize");
    let callback = back.headers()[LOCATION].to_str().expect("ascii").to_owned();
    let done = client.get(&callback).send().await.expect("callback");
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(done.headers()[LOCATION], "/profile");

    // The same browser again: its state cookie was removed on first use.
    let (status, _) = text(client.get(&callback).send().await.expect("replay")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A copy of the old state cookie: the state was spent.
    let replay = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(&callback)
        .header(COOKIE, &oauth_cookie)
        .send()
        .await
        .expect("replay");
    let (status, html) = text(replay).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("already used"), "{html}");
    assert_eq!(
        site.discord.token_requests(),
        1,
        "the replay exchanged nothing"
    );
    site.stop().await;
}

#[tokio::test]
async fn a_provider_error_signs_nobody_in_and_says_why() {
    let site = Site::start().await;
    site.discord.set_mode(Mode::Deny);
    let client = browser();
    let (page, visited) = follow(&client, &site.url("/auth/discord")).await;
    assert!(
        visited
            .last()
            .is_some_and(|u| u.contains("error=access_denied")),
        "{visited:?}"
    );
    let (status, html) = text(page).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        html.contains("You cancelled the sign-in on Discord."),
        "{html}"
    );
    assert_eq!(site.discord.token_requests(), 0);
    let profile = client
        .get(site.url("/profile"))
        .send()
        .await
        .expect("profile");
    assert_eq!(profile.headers()[LOCATION], "/login");
    site.stop().await;
}

#[tokio::test]
async fn a_failed_token_exchange_signs_nobody_in() {
    let site = Site::start().await;
    site.discord.set_mode(Mode::TokenFails);
    let client = browser();
    let (page, _) = follow(&client, &site.url("/auth/discord")).await;
    let (status, html) = text(page).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        html.contains("Discord did not confirm the sign-in"),
        "{html}"
    );
    assert_eq!(site.discord.token_requests(), 1);
    let profile = client
        .get(site.url("/profile"))
        .send()
        .await
        .expect("profile");
    assert_eq!(profile.headers()[LOCATION], "/login");
    site.stop().await;
}

// ---------------------------------------------------------------------------------
// Telegram Login Widget

#[tokio::test]
async fn the_telegram_widget_signs_in_only_with_fresh_untampered_data_from_this_browser() {
    let site = Site::start().await;
    let client = browser();
    let (status, login) = text(client.get(site.url("/login")).send().await.expect("login")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        login.contains("data-telegram-login=\"ttfd_test_bot\""),
        "{login}"
    );
    let csrf = csrf_of(&login);
    let now = ttfd::now_ms() / 1000;
    let at = |fields: &BTreeMap<String, String>, csrf: &str| {
        site.url(&format!("/auth/telegram/{csrf}?{}", query_string(fields)))
    };

    let mut tampered = widget("555000111", now, BOT_TOKEN);
    tampered.insert("id".into(), "999".into());
    let (status, html) = text(
        client
            .get(at(&tampered, &csrf))
            .send()
            .await
            .expect("tampered"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("not signed by Telegram"), "{html}");

    let forged = widget("555000111", now, "other:bot-token");
    let (status, _) = text(client.get(at(&forged, &csrf)).send().await.expect("forged")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let stale = widget("555000111", now - 2 * 86_400, BOT_TOKEN);
    let (status, html) = text(client.get(at(&stale, &csrf)).send().await.expect("stale")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("too old"), "{html}");

    let valid = widget("555000111", now, BOT_TOKEN);
    // Valid data in a URL made for another browser session.
    let (status, _) = text(
        browser()
            .get(at(&valid, &csrf))
            .send()
            .await
            .expect("other"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (page, _) = follow(&client, &at(&valid, &csrf)).await;
    let (status, html) = text(page).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Signed in.") && html.contains("telegram:555000111"),
        "{html}"
    );
    // The sign-in renewed the session's token: the same URL does not work twice.
    let (status, _) = text(client.get(at(&valid, &csrf)).send().await.expect("again")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Whoever saw the data (a log, a shared link) cannot sign in with it in a browser
    // of their own, whose CSRF token the URL then carries: Telegram signs the data, not
    // the URL, so the used `hash` is what is remembered.
    let thief = browser();
    let (_, login) = text(thief.get(site.url("/login")).send().await.expect("login")).await;
    let (status, html) = text(
        thief
            .get(at(&valid, &csrf_of(&login)))
            .send()
            .await
            .expect("replay"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("already used"), "{html}");
    // And data an hour old is refused by the default 10-minute window.
    let hour_old = widget("555000111", now - 3600, BOT_TOKEN);
    let (status, html) = text(
        thief
            .get(at(&hour_old, &csrf_of(&login)))
            .send()
            .await
            .expect("old"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("too old"), "{html}");
    site.stop().await;
}

/// The site can check the widget's data with the token's SHA-256 alone
/// (`web.telegram.bot_token_sha256`): the web pods need not hold the bot's token.
#[tokio::test]
async fn the_telegram_widget_works_with_only_the_tokens_hash() {
    let site = Site::start_with(|s| {
        s.web.telegram.bot_token = "".into();
        s.web.telegram.bot_token_sha256 =
            hex::encode(ttfd::web::telegram::login_key(BOT_TOKEN)).into();
    })
    .await;
    let client = browser();
    let (_, login) = text(client.get(site.url("/login")).send().await.expect("login")).await;
    assert!(
        login.contains("data-telegram-login=\"ttfd_test_bot\""),
        "{login}"
    );
    let valid = widget("555000222", ttfd::now_ms() / 1000, BOT_TOKEN);
    let url = site.url(&format!(
        "/auth/telegram/{}?{}",
        csrf_of(&login),
        query_string(&valid)
    ));
    let (page, _) = follow(&client, &url).await;
    let (status, html) = text(page).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("telegram:555000222"), "{html}");
    site.stop().await;
}

// ---------------------------------------------------------------------------------
// Linking

#[tokio::test]
async fn linking_telegram_with_the_widget_shows_the_merged_profile_once_applied() {
    let site = Site::start().await;
    let now = ttfd::now_ms();
    site.seed(&[
        xp(
            "d:1",
            &format!("discord:{ANN_DISCORD}"),
            "Ann",
            300,
            now - 120_000,
        ),
        xp("t:1", "telegram:555000111", "Ann TG", 400, now - 60_000),
    ])
    .await;
    let client = browser();
    let profile = sign_in_with_discord(&site, &client).await;
    assert!(profile.contains("<strong>300</strong> XP"), "{profile}");
    assert!(
        profile.contains("/link/telegram/"),
        "the widget offers Telegram"
    );
    let csrf = csrf_of(&profile);
    let data = widget("555000111", now / 1000, BOT_TOKEN);
    let link = client
        .get(site.url(&format!("/link/telegram/{csrf}?{}", query_string(&data))))
        .send()
        .await
        .expect("link");
    assert_eq!(link.status(), StatusCode::SEE_OTHER);

    let merged = eventually("the merged profile", || async {
        let html = client
            .get(site.url("/profile"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        // The page reads the profile in one snapshot: the merged identities come with
        // the summed XP.
        (html.contains("Accounts linked") && html.contains("<strong>700</strong> XP"))
            .then_some(html)
    })
    .await;
    assert!(merged.contains("555000111") && merged.contains(ANN_DISCORD));
    assert!(
        !merged.contains("/link/telegram/"),
        "Telegram is linked now"
    );
    let p = site
        .env
        .store
        .profile(&Identity::parse("telegram:555000111").expect("id"))
        .await
        .expect("read")
        .expect("user");
    assert_eq!(p.identities.len(), 2);

    // The API shows the linked account's id to its owner only; others see which
    // platforms are linked, and the identity they asked about.
    let path = format!("/api/v1/users/discord/{ANN_DISCORD}");
    let (status, public) = json_of(reqwest::get(site.url(&path)).await.expect("get")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        public["identities"],
        json!([{"platform": "discord", "user": ANN_DISCORD}])
    );
    assert_eq!(public["linked_platforms"], json!(["discord", "telegram"]));
    assert!(!public.to_string().contains("555000111"), "{public}");
    let (status, own) = json_of(client.get(site.url(&path)).send().await.expect("get")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(own.to_string().contains("555000111"), "{own}");
    site.stop().await;
}

#[tokio::test]
async fn linking_discord_while_signed_in_with_telegram_goes_through_oauth() {
    let site = Site::start().await;
    let now = ttfd::now_ms();
    site.seed(&[
        xp(
            "d:1",
            &format!("discord:{ANN_DISCORD}"),
            "Ann",
            300,
            now - 120_000,
        ),
        xp("t:1", "telegram:555000111", "Ann TG", 400, now - 60_000),
    ])
    .await;
    let client = browser();
    let login = client
        .get(site.url("/login"))
        .send()
        .await
        .expect("login")
        .text()
        .await
        .expect("body");
    let data = widget("555000111", now / 1000, BOT_TOKEN);
    let (page, _) = follow(
        &client,
        &site.url(&format!(
            "/auth/telegram/{}?{}",
            csrf_of(&login),
            query_string(&data)
        )),
    )
    .await;
    let profile = page.text().await.expect("body");
    assert!(
        profile.contains("action=\"/link/discord\""),
        "Discord is offered: {profile}"
    );
    let csrf = csrf_of(&profile);

    // Without the session's token, nothing starts.
    let refused = client
        .post(site.url("/link/discord"))
        .form(&[("csrf", "nope")])
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(site.discord.last_authorize_query(), None);

    let start = client
        .post(site.url("/link/discord"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let authorize = start.headers()[LOCATION]
        .to_str()
        .expect("ascii")
        .to_owned();
    let (page, visited) = follow(&client, &authorize).await;
    assert!(
        visited.last().is_some_and(|u| u.ends_with("/profile")),
        "{visited:?}"
    );
    let (status, html) = text(page).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Link recorded") || html.contains("Accounts linked"),
        "{html}"
    );
    eventually("the merged profile", || async {
        let html = client
            .get(site.url("/profile"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        html.contains("<strong>700</strong> XP").then_some(())
    })
    .await;
    site.stop().await;
}

#[tokio::test]
async fn codes_link_both_ways_and_forms_need_the_session_token() {
    let site = Site::start().await;
    let now = ttfd::now_ms();
    site.seed(&[
        xp(
            "d:1",
            &format!("discord:{ANN_DISCORD}"),
            "Ann",
            100,
            now - 60_000,
        ),
        xp("t:1", "telegram:20", "Ann TG", 50, now - 60_000),
        xp("t:2", "telegram:30", "Bo", 70, now - 60_000),
    ])
    .await;
    let client = browser();
    let profile = sign_in_with_discord(&site, &client).await;
    let csrf = csrf_of(&profile);

    // A form from elsewhere (wrong token) does nothing.
    let issued = site
        .env
        .store
        .issue_link_code(&Identity::parse("telegram:20").expect("id"), now)
        .await
        .expect("a bot issues a code");
    let forged = client
        .post(site.url("/link/code"))
        .form(&[("csrf", "0000"), ("code", issued.code.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    // A code from the Telegram bot, entered on the site.
    let entered = client
        .post(site.url("/link/code"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("code", &issued.code.to_lowercase()),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(entered.status(), StatusCode::SEE_OTHER);
    eventually("the code link applied", || async {
        let html = client
            .get(site.url("/profile"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        html.contains("<strong>150</strong> XP").then_some(())
    })
    .await;

    // A wrong code says so.
    client
        .post(site.url("/link/code"))
        .form(&[("csrf", csrf.as_str()), ("code", "ZZZZZZ")])
        .send()
        .await
        .expect("post");
    let html = client
        .get(site.url("/profile"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(html.contains("unknown, used or expired"), "{html}");

    // A code issued on the site, entered in a bot.
    let issue = client
        .post(site.url("/link/issue"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(issue.status(), StatusCode::SEE_OTHER);
    let html = client
        .get(site.url("/profile"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    let i =
        html.find("id=\"issued-code\">").expect("the code is shown") + "id=\"issued-code\">".len();
    let code: String = html[i..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let r = site
        .env
        .store
        .redeem_link_code(
            &Identity::parse("telegram:30").expect("id"),
            &code,
            ttfd::now_ms(),
        )
        .await
        .expect("redeem");
    assert!(
        matches!(r, ttfd::store::codes::Redemption::Linked { .. }),
        "{r:?}"
    );
    eventually("the bot's link applied", || async {
        let p = site
            .env
            .store
            .profile(&Identity::parse("telegram:30").expect("id"))
            .await
            .ok()??;
        (p.xp == 220).then_some(())
    })
    .await;
    site.stop().await;
}

// ---------------------------------------------------------------------------------
// Pages

#[tokio::test]
async fn pages_show_the_leaderboard_ranks_and_profiles_and_escape_names() {
    let site = Site::start().await;
    let now = ttfd::now_ms();
    site.seed(&[
        xp("w:1", "website:1", "<script>alert(1)</script>", 600, now),
        xp("w:2", "website:2", "Bo", 100, now),
    ])
    .await;
    let client = browser();
    let (status, html) = text(
        client
            .get(site.url("/leaderboard"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains("<script>alert(1)"), "names are escaped");
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || html.contains("&lt;script&gt;"),
        "{html}"
    );
    assert!(html.contains(">F II<") && html.contains(">600<"), "{html}");
    let (status, html) = text(
        client
            .get(site.url("/leaderboard?period=week"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("class=\"active\" aria-current=\"page\">This week"),
        "{html}"
    );
    let (status, _) = text(
        client
            .get(site.url("/leaderboard?period=year"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, html) = text(client.get(site.url("/ranks")).send().await.expect("get")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(">S II<") && html.contains("52,250"), "{html}");

    let bo = site
        .env
        .store
        .profile(&Identity::parse("website:2").expect("id"))
        .await
        .expect("read")
        .expect("user");
    let (status, html) = text(
        client
            .get(site.url(&format!("/u/{}", bo.uid)))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<h1>Bo</h1>") && html.contains("400 XP to"),
        "{html}"
    );
    assert!(html.contains("<svg class=\"chart\""), "the 30-day chart");
    assert!(
        !html.contains("website:2") && !html.contains("<code>2</code>"),
        "ids are not public"
    );
    let (status, _) = text(client.get(site.url("/u/999999")).send().await.expect("get")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, html) = text(
        client
            .get(site.url("/no/such/page"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("There is no such page."), "{html}");
    let r = client.get(site.url("/profile")).send().await.expect("get");
    assert_eq!(
        r.headers()[LOCATION],
        "/login",
        "one's own profile needs a sign-in"
    );
    site.stop().await;
}

// ---------------------------------------------------------------------------------
// The API

async fn json_of(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    (status, r.json().await.expect("a JSON body"))
}

#[tokio::test]
async fn the_api_serves_users_leaderboard_pages_and_the_ladder() {
    let site = Site::start().await;
    let now = ttfd::now_ms();
    let events: Vec<Event> = (1..=5)
        .map(|i| {
            xp(
                &format!("x:{i}"),
                &format!("website:{i}"),
                &format!("P{i}"),
                i * 100,
                now,
            )
        })
        .collect();
    site.seed(&events).await;
    let http = reqwest::Client::new();

    let (status, user) = json_of(
        http.get(site.url("/api/v1/users/website/3"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["xp"], 300);
    assert_eq!(user["display_name"], "P3");
    assert_eq!(user["rank"]["name"], "F I");
    assert_eq!(
        user["identities"],
        json!([{"platform": "website", "user": "3"}])
    );
    for key in [
        "uid",
        "peak_rank",
        "coins",
        "messages",
        "voice_seconds",
        "games_played",
        "games_won",
        "created_at",
        "last_active",
    ] {
        assert!(user.get(key).is_some(), "{key} in {user}");
    }
    // Third of five, all time and this week (the grants are today's).
    let today = time::OffsetDateTime::now_utc().date();
    assert_eq!(
        user["standings"],
        json!([
            {"period": "all", "key": "all", "position": 3, "xp": 300, "ranked": 5},
            {"period": "week", "key": Period::Week.key(today, &Default::default()), "position": 3, "xp": 300, "ranked": 5},
            {"period": "month", "key": Period::Month.key(today, &Default::default()), "position": 3, "xp": 300, "ranked": 5}
        ])
    );
    let (status, body) = json_of(
        http.get(site.url("/api/v1/users/website/404"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no user has the identity website:404");
    let (status, body) = json_of(
        http.get(site.url("/api/v1/users/Bad!/1"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("platform")),
        "{body}"
    );

    let page = |q: &str| {
        let url = site.url(&format!("/api/v1/leaderboard?{q}"));
        let http = http.clone();
        async move { json_of(http.get(url).send().await.expect("get")).await }
    };
    // A past week has its own, empty, leaderboard; a day that is not one is refused.
    let last_week = today - time::Duration::days(7);
    let (status, past) = page(&format!("period=week&at={last_week}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        past["key"],
        json!(Period::Week.key(last_week, &Default::default()))
    );
    assert_eq!(
        (
            past["total"].as_i64(),
            past["entries"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    let (status, bad) = page("period=week&at=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("YYYY-MM-DD")),
        "{bad}"
    );

    let (status, first) = page("period=all&per_page=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (first["total"].as_i64(), first["pages"].as_i64()),
        (Some(5), Some(3))
    );
    let names = |b: &Value| -> Vec<(i64, String)> {
        b["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                (
                    e["position"].as_i64().expect("pos"),
                    e["display_name"].as_str().expect("name").to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(names(&first), [(1, "P5".into()), (2, "P4".into())]);
    let (_, second) = page("period=all&per_page=2&page=2").await;
    assert_eq!(names(&second), [(3, "P3".into()), (4, "P2".into())]);
    let (_, last) = page("per_page=2&page=3").await;
    assert_eq!(names(&last), [(5, "P1".into())]);
    let (_, beyond) = page("per_page=2&page=4").await;
    assert!(names(&beyond).is_empty());
    let (_, week) = page("period=week").await;
    assert_eq!(
        (week["period"].as_str(), week["total"].as_i64()),
        (Some("week"), Some(5))
    );
    for bad in ["period=year", "page=0", "per_page=101", "page=x"] {
        let (status, body) = page(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }

    let (status, ladder) = json_of(
        http.get(site.url("/api/v1/ranks"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ranks = ladder["ranks"].as_array().expect("ranks");
    assert_eq!(ranks.len(), 20);
    assert_eq!(
        ranks[0],
        json!({"index": 1, "name": "F I", "tier": "F", "stars": 1, "required_xp": 0, "next_xp": 500, "coins": 0})
    );
    assert_eq!(ranks[19]["next_xp"], Value::Null);

    let (status, body) = json_of(
        http.get(site.url("/api/v1/nope"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    let (status, body) = json_of(
        http.delete(site.url("/api/v1/ranks"))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].is_string());
    site.stop().await;
}

// ---------------------------------------------------------------------------------
// Ingest

#[tokio::test]
async fn ingest_publishes_valid_events_of_the_tokens_platform() {
    let site = Site::start().await;
    let http = reqwest::Client::new();
    let event = json!({"id": "website:msg:1", "platform": "website", "user": "77", "kind": "message", "name": "Web Ann", "data": {"len": 12}});
    let r = http
        .post(site.url("/api/v1/events"))
        .bearer_auth(WEBSITE_TOKEN)
        .json(&event)
        .send()
        .await
        .expect("post");
    let (status, body) = json_of(r).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let subject = format!("{}.events.website.message", site.env.settings.nats.prefix);
    assert_eq!(
        body,
        json!({"accepted": 1, "events": [{"id": "website:msg:1", "subject": subject, "duplicate": false}]})
    );
    let stream = site
        .env
        .broker
        .js
        .get_stream(site.env.broker.subjects.events_stream())
        .await
        .expect("stream");
    let stored = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .expect("stored");
    let decoded =
        ttfd::shared::wire::decode(&stored.payload, ("website", "message"), ttfd::now_ms())
            .expect("valid on the wire");
    assert_eq!(decoded.id.as_str(), "website:msg:1");
    assert_eq!(decoded.name.as_deref(), Some("Web Ann"));

    // A batch, with the first event again: stored once.
    let batch = json!([event, {"id": "website:game:1", "platform": "website", "user": "77", "kind": "game", "data": {"game": "chess", "won": true, "xp": 50}}]);
    let (status, body) = json_of(
        http.post(site.url("/api/v1/events"))
            .bearer_auth(WEBSITE_TOKEN)
            .json(&batch)
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["events"][0]["duplicate"], true);
    assert_eq!(body["events"][1]["duplicate"], false);
    assert_eq!(site.events_in_stream().await, 2);

    // The sync consumer applies what came in over HTTP.
    eventually("the ingested events applied", || async {
        let p = site
            .env
            .store
            .profile(&Identity::parse("website:77").ok()?)
            .await
            .ok()??;
        (p.xp == 60 && p.games_won == 1).then_some(())
    })
    .await;
    site.stop().await;
}

/// Rotating `web.cookie_key` with the old key in `web.retired_cookie_keys` signs
/// nobody out: the old cookie is believed, and the page sets it again signed with the
/// new key, so a site that no longer knows the old key still knows the member. Without
/// the retired key, an old cookie is a stranger's.
#[tokio::test]
async fn a_rotated_cookie_key_signs_nobody_out_while_the_old_one_is_retired() {
    let site = Site::start().await;
    let (moved, left) = (browser(), browser());
    sign_in_with_discord(&site, &moved).await;
    sign_in_with_discord(&site, &left).await;
    let new_key = "the-next-cookie-key-of-at-least-32-bytes";
    let rotated = |retire: bool| {
        let mut settings = site.env.settings.clone();
        settings.web.cookie_key = new_key.into();
        if retire {
            settings.web.retired_cookie_keys.insert(
                "2026a".into(),
                "a-test-cookie-key-of-at-least-32-bytes".into(),
            );
        }
        let (store, broker) = (site.env.store.clone(), site.env.broker.clone());
        let stop = site.stop.clone();
        async move {
            let app = WebApp::build(&settings, store, broker, Metrics::new(), GRACE)
                .await
                .expect("the web role starts");
            let base = app.base_url().to_owned();
            tokio::spawn(app.run(stop));
            base
        }
    };
    let (during, after) = (rotated(true).await, rotated(false).await);
    let profile = |client: &reqwest::Client, base: &str| {
        let request = client.get(format!("{base}/profile"));
        async move { request.send().await.expect("get") }
    };
    let page = profile(&moved, &during).await;
    assert_eq!(page.status(), StatusCode::OK, "the retired key is believed");
    assert!(page.text().await.expect("body").contains("Ann"));
    assert_eq!(
        profile(&moved, &after).await.status(),
        StatusCode::OK,
        "the cookie was signed again with the new key"
    );
    let stranger = profile(&left, &after).await;
    assert!(stranger.status().is_redirection(), "{}", stranger.status());
    site.stop().await;
}

/// The admin page (docs/moderation.md): an identity of `web.admins` finds a member,
/// adjusts their XP with a reason and sees the result and the audit log; the same form
/// sent twice counts once; `GET /api/v1/audit` serves the log as JSON to admins only.
#[tokio::test]
async fn an_admin_adjusts_xp_on_the_admin_page_and_reads_the_audit() {
    let site = Site::start_with(|s| s.web.admins = vec![format!("discord:{ANN_DISCORD}")]).await;
    let grant = Event {
        id: EventId::parse("website:msg:1").expect("id"),
        ts: ttfd::now_ms() - 1_000,
        identity: Identity::parse("website:bo@example.org").expect("identity"),
        name: Some("Bo".into()),
        payload: Payload::Message {
            len: None,
            chat: None,
            mult: None,
        },
    };
    site.seed(std::slice::from_ref(&grant)).await;
    let anonymous = browser();
    let refused = anonymous
        .get(site.url("/api/v1/audit"))
        .send()
        .await
        .expect("get");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let admin = browser();
    sign_in_with_discord(&site, &admin).await;
    let (status, html) = text(
        admin
            .get(site.url("/admin?member=website:bo@example.org"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("Bo</a> · 10 XP"), "{html}");
    let request = html
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a request id")
        .to_owned();
    let form = |verb: &str, amount: &str, reason: &str, request: &str| {
        vec![
            ("csrf".to_owned(), csrf_of(&html)),
            ("request".to_owned(), request.to_owned()),
            ("member".to_owned(), "website:bo@example.org".to_owned()),
            ("verb".to_owned(), verb.to_owned()),
            ("amount".to_owned(), amount.to_owned()),
            ("reason".to_owned(), reason.to_owned()),
        ]
    };
    for (fields, says) in [
        (
            form("add", "500", "event winner", &request),
            "+500 XP for website:bo@example.org: now 510 XP.",
        ),
        (form("add", "500", "event winner", &request), "counted once"),
        (
            form("set", "1000", "fix", "another"),
            "+490 XP for website:bo@example.org: now 1,000 XP.",
        ),
        (
            form("add", "20000", "too much", "third"),
            "Not done: 20000 XP is more than one adjustment may move",
        ),
        (
            form("add", "many", "x", "fourth"),
            "XP must be a whole number",
        ),
    ] {
        let (page, _) = follow_post(&admin, &site.url("/admin/xp"), &fields).await;
        let (status, html) = text(page).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(html.contains(says), "{says}: {html}");
    }
    let (_, html) = text(
        admin
            .get(site.url("/admin?by=discord:80351110224678912"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert!(html.contains("2 of 2 entries"), "{html}");
    assert!(
        html.contains("+490 XP") && html.contains("event winner"),
        "{html}"
    );

    let log: serde_json::Value = admin
        .get(site.url("/api/v1/audit?member=website:bo@example.org"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("JSON");
    assert_eq!(log["total"], 2);
    assert_eq!(log["entries"][0]["amount"], 490);
    assert_eq!(log["entries"][0]["by"]["user"], ANN_DISCORD);
    let bad = admin
        .get(site.url("/api/v1/audit?since=yesterday"))
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // Signed in, but not an admin.
    let member = browser();
    sign_in_with_telegram_as_someone_else(&site, &member).await;
    assert_eq!(
        member
            .get(site.url("/admin"))
            .send()
            .await
            .expect("get")
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        member
            .get(site.url("/api/v1/audit"))
            .send()
            .await
            .expect("get")
            .status(),
        StatusCode::FORBIDDEN
    );
    site.stop().await;
}

/// The profile's announcement toggle (SPEC 7.3): a `prefs` event of the signed-in
/// identity through the outbox; the page then shows the new state.
#[tokio::test]
async fn the_profile_toggle_switches_rank_up_announcements_off_and_on() {
    let site = Site::start().await;
    let client = browser();
    let html = sign_in_with_discord(&site, &client).await;
    assert!(
        html.contains("Rank-up announcements for you: <strong>on</strong>"),
        "{html}"
    );
    for (to, shows) in [
        ("off", "<strong>off</strong>"),
        ("on", "<strong>on</strong>"),
    ] {
        let fields = vec![
            ("csrf".to_owned(), csrf_of(&html)),
            ("on".to_owned(), to.to_owned()),
        ];
        let (page, _) = follow_post(&client, &site.url("/profile/notify"), &fields).await;
        let (status, flash) = text(page).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            flash.contains(&format!("Rank-up announcements for you are {to}")),
            "{flash}"
        );
        eventually("the preference applied", || async {
            let (_, page) = text(client.get(site.url("/profile")).send().await.ok()?).await;
            page.contains(&format!("Rank-up announcements for you: {shows}"))
                .then_some(())
        })
        .await;
    }
    let p = site
        .env
        .store
        .profile(&Identity::parse(&format!("discord:{ANN_DISCORD}")).expect("identity"))
        .await
        .expect("read")
        .expect("ann");
    assert!(p.notify);
    site.stop().await;
}

/// In signed mode the admin page's adjustment counts: the web role publishes it
/// through its moderator-signed handle (its ingest API signs nothing).
#[tokio::test]
async fn in_signed_mode_the_admin_pages_adjustment_is_signed_and_counts() {
    let site = Site::start_with(|s| {
        crate::trust::signed(s);
        s.web.admins = vec![format!("discord:{ANN_DISCORD}")];
    })
    .await;
    site.seed(&[message(
        "website:m:7",
        "website:cy@example.org",
        "Cy",
        ttfd::now_ms() - 1_000,
    )])
    .await;
    let admin = browser();
    sign_in_with_discord(&site, &admin).await;
    let (_, html) = text(
        admin
            .get(site.url("/admin?member=website:cy@example.org"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    let request = html
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a request id")
        .to_owned();
    let fields = vec![
        ("csrf".to_owned(), csrf_of(&html)),
        ("request".to_owned(), request),
        ("member".to_owned(), "website:cy@example.org".to_owned()),
        ("verb".to_owned(), "add".to_owned()),
        ("amount".to_owned(), "90".to_owned()),
        ("reason".to_owned(), "signed".to_owned()),
    ];
    let (page, _) = follow_post(&admin, &site.url("/admin/xp"), &fields).await;
    let (_, html) = text(page).await;
    assert!(
        html.contains("+90 XP for website:cy@example.org: now 100 XP."),
        "{html}"
    );
    assert!(site.env.dead_letters(5).await.is_empty());
    site.stop().await;
}

/// Discord moderators on the website (docs/moderation.md): with `discord.guild_id` and
/// `discord.moderator_roles` set, sign-in asks for the member's guild roles, and a
/// moderator opens the admin page without being in `web.admins`; a member without the
/// role does not.
#[tokio::test]
async fn a_discord_moderator_opens_the_admin_page() {
    let guild: u64 = 1_000_000_000_000_000_001;
    let site = Site::start_with(|s| {
        s.discord.guild_id = Some(serenity::all::GuildId::new(guild));
        s.discord.moderator_roles = vec![serenity::all::RoleId::new(77)];
    })
    .await;
    site.discord.set_guild_roles(guild, &[5]);
    let member = browser();
    sign_in_with_discord(&site, &member).await;
    let scope = site
        .discord
        .last_authorize_query()
        .expect("an authorize request")["scope"]
        .clone();
    assert_eq!(scope, "identify guilds.members.read");
    assert_eq!(
        member
            .get(site.url("/admin"))
            .send()
            .await
            .expect("get")
            .status(),
        StatusCode::FORBIDDEN
    );
    site.discord.set_guild_roles(guild, &[5, 77]);
    let moderator = browser();
    sign_in_with_discord(&site, &moderator).await;
    let (status, html) = text(moderator.get(site.url("/admin")).send().await.expect("get")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("Audit log"), "{html}");
    site.stop().await;
}

/// With `metrics.listen` set (as in Kubernetes), `/metrics` and `/readyz` (which says
/// what failed, in words meant for operators) are served there, not on the public port.
#[tokio::test]
async fn with_metrics_listen_the_operator_endpoints_leave_the_public_port() {
    let env = TestEnv::with(|s| {
        s.web.listen = "127.0.0.1:0".parse().expect("addr");
        s.metrics.listen = "127.0.0.1:0".into();
    })
    .await;
    let app = WebApp::build(
        &env.settings,
        env.store.clone(),
        env.broker.clone(),
        Metrics::new(),
        GRACE,
    )
    .await
    .expect("the web role starts");
    let (public, ops) = (
        app.base_url().to_owned(),
        app.ops_addr().expect("ops listener"),
    );
    let stop = CancellationToken::new();
    tokio::spawn(app.run(stop.clone()));
    let http = reqwest::Client::new();
    let status = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.expect("get").status() }
    };
    for path in ["/metrics", "/readyz"] {
        assert_eq!(
            status(format!("{public}{path}")).await,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(status(format!("{public}/healthz")).await, StatusCode::OK);
    assert_eq!(
        status(format!("{public}/leaderboard")).await,
        StatusCode::OK
    );
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(
            status(format!("http://{ops}{path}")).await,
            StatusCode::OK,
            "{path}"
        );
    }
    let text = http
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(text.contains("route=\"/leaderboard\""), "{text}");
    stop.cancel();
    env.cleanup().await;
}

/// A client gets a few sign-in, link and code attempts, then a 429 that says when to
/// come back; an ingest token gets its rate; requests without a valid token count as
/// the client's attempts, so tokens cannot be guessed fast either.
#[tokio::test]
async fn sign_in_link_code_and_ingest_routes_are_rate_limited() {
    let site = Site::start_with(|s| {
        s.web.rate_limit.sign_in_per_minute = 3;
        s.web.rate_limit.ingest_per_second = 1;
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = http
            .get(site.url("/auth/discord"))
            .send()
            .await
            .expect("get");
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = r.headers()[reqwest::header::RETRY_AFTER]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!((1..=60).contains(&wait), "{wait}");
        }
    }
    assert!(
        statuses[..3]
            .iter()
            .all(|s| *s != StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
    // The same client is limited on the code route too (one budget for all of them),
    // and without a valid token on ingest.
    let r = http
        .post(site.url("/link/code"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = http
        .post(site.url("/api/v1/events"))
        .bearer_auth("guessing-a-token-guessing")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Pages are not limited.
    let r = http
        .get(site.url("/leaderboard"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    // A valid token gets a burst of twice its rate per second, then waits.
    let post = || {
        http.post(site.url("/api/v1/events"))
            .bearer_auth(WEBSITE_TOKEN)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(r#"{"id": "website:rl:1", "platform": "website", "user": "5", "kind": "message", "data": {}}"#)
            .send()
    };
    let mut ingest = Vec::new();
    for _ in 0..3 {
        ingest.push(post().await.expect("post").status());
    }
    assert_eq!(
        ingest,
        [
            StatusCode::ACCEPTED,
            StatusCode::ACCEPTED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let metrics = http
        .get(site.url("/metrics"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("ttfd_web_rate_limited_total 4"),
        "{metrics}"
    );
    site.stop().await;
}

/// Without a valid token the answer comes before a byte of the body is read: a client
/// that sends a body without end gets its 401 at once.
#[tokio::test]
async fn ingest_checks_the_token_before_reading_the_body() {
    let site = Site::start().await;
    let endless = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"[{\"id\": \"x\"},")),
            (),
        ))
    });
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::Client::new()
            .post(site.url("/api/v1/events"))
            .bearer_auth("wrong-token-wrong-token")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(reqwest::Body::wrap_stream(endless))
            .send(),
    )
    .await
    .expect("answered without reading the endless body")
    .expect("a response");
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    site.stop().await;
}

#[tokio::test]
async fn ingest_refuses_bad_tokens_other_platforms_and_bad_payloads_publishing_nothing() {
    let site = Site::start().await;
    let http = reqwest::Client::new();
    let good = json!({"id": "website:msg:1", "platform": "website", "user": "77", "kind": "message", "data": {}});
    let post = |token: Option<&str>, content_type: &str, body: String| {
        let mut r = http
            .post(site.url("/api/v1/events"))
            .header(reqwest::header::CONTENT_TYPE, content_type.to_owned())
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { json_of(r.send().await.expect("post")).await }
    };
    let cases: Vec<(Option<&str>, &str, String, StatusCode, &str)> = vec![
        (None, "application/json", good.to_string(), StatusCode::UNAUTHORIZED, "token is required"),
        (Some("wrong-token-wrong-token"), "application/json", good.to_string(), StatusCode::UNAUTHORIZED, "not valid"),
        (Some(DISCORD_TOKEN), "application/json", good.to_string(), StatusCode::FORBIDDEN, "only for platform \"discord\""),
        (Some(WEBSITE_TOKEN), "text/plain", good.to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json"),
        (Some(WEBSITE_TOKEN), "application/json", "{not json".into(), StatusCode::BAD_REQUEST, "not JSON"),
        (Some(WEBSITE_TOKEN), "application/json", "42".into(), StatusCode::BAD_REQUEST, "one event"),
        (Some(WEBSITE_TOKEN), "application/json", "[]".into(), StatusCode::UNPROCESSABLE_ENTITY, "1 to 1000"),
        (
            Some(WEBSITE_TOKEN),
            "application/json",
            json!({"id": "w:v", "platform": "website", "user": "77", "kind": "voice", "data": {"seconds": 0}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "data.seconds",
        ),
        (
            Some(WEBSITE_TOKEN),
            "application/json",
            json!({"id": "w:k", "platform": "website", "user": "77", "kind": "dance", "data": {}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "event 0",
        ),
        (
            Some(WEBSITE_TOKEN),
            "application/json",
            json!({"platform": "website", "user": "77", "kind": "message", "data": {}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "id",
        ),
        // One bad event spoils the batch: none of it is published.
        (
            Some(WEBSITE_TOKEN),
            "application/json",
            json!([good, {"id": "w:x", "platform": "website", "user": "77", "kind": "xp", "data": {"amount": 5}}]).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "event 1",
        ),
        // An ingest token speaks for its platform's activity: no XP by hand, and no
        // link to another platform's member (the takeover of docs/security.md).
        (
            Some(WEBSITE_TOKEN),
            "application/json",
            json!({"id": "w:g", "platform": "website", "user": "77", "kind": "xp", "data": {"amount": 500, "reason": "gift"}}).to_string(),
            StatusCode::FORBIDDEN,
            "moderator or an admin",
        ),
        (
            Some(WEBSITE_TOKEN),
            "application/json",
            json!({"id": "w:l", "platform": "website", "user": "77", "kind": "link", "data": {"platform": "discord", "user": "1", "proof": "oauth"}}).to_string(),
            StatusCode::FORBIDDEN,
            "discord:1",
        ),
        // So does one event of another platform.
        (
            Some(WEBSITE_TOKEN),
            "application/json",
            json!([good, {"id": "d:1", "platform": "discord", "user": "1", "kind": "message", "data": {}}]).to_string(),
            StatusCode::FORBIDDEN,
            "event 1",
        ),
    ];
    let huge = format!("[{}]", vec![good.to_string(); 60_000].join(","));
    assert!(huge.len() > ttfd::web::api::MAX_INGEST_BYTES);
    let (status, answer) = post(Some(WEBSITE_TOKEN), "application/json", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(answer["error"].is_string());
    for (token, content_type, body, want, says) in cases {
        let (status, answer) = post(token, content_type, body.clone()).await;
        assert_eq!(status, want, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{body}: {message:?} should mention {says:?}"
        );
    }
    assert_eq!(site.events_in_stream().await, 0, "nothing was published");
    site.stop().await;
}

// ---------------------------------------------------------------------------------
// Operations

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let site = Site::start().await;
    let http = reqwest::Client::new();
    let (status, _) = json_of(http.get(site.url("/healthz")).send().await.expect("get")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = json_of(http.get(site.url("/readyz")).send().await.expect("get")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"database": "ok", "nats": "ok"}));
    http.get(site.url("/leaderboard"))
        .send()
        .await
        .expect("get");
    let metrics = http.get(site.url("/metrics")).send().await.expect("get");
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    let text = metrics.text().await.expect("body");
    assert!(
        text.contains(
            "ttfd_web_http_requests_total{method=\"GET\",route=\"/leaderboard\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("ttfd_web_http_request_duration_seconds_bucket"),
        "{text}"
    );
    // Made-up methods share one label, so they cannot grow the metrics without bound.
    for made_up in ["BREW", "WHEN", "X-ANYTHING"] {
        let method = reqwest::Method::from_bytes(made_up.as_bytes()).expect("method");
        http.request(method, site.url("/leaderboard"))
            .send()
            .await
            .expect("send");
    }
    let text = http
        .get(site.url("/metrics"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(
        !text.contains("BREW") && !text.contains("X-ANYTHING"),
        "{text}"
    );
    assert!(
        text.contains(
            "ttfd_web_http_requests_total{method=\"other\",route=\"/leaderboard\",status=\"405\"} 3"
        ),
        "{text}"
    );

    // A site whose database is unreachable is alive but not ready, and says why.
    let mut settings = site.env.settings.clone();
    settings.database.url = "postgres://postgres@127.0.0.1:1/nowhere".into();
    let store =
        ttfd::store::Store::connect_lazy(&settings.database, settings.rules.clone()).expect("lazy");
    let app = WebApp::build(
        &settings,
        store,
        site.env.broker.clone(),
        Metrics::new(),
        GRACE,
    )
    .await
    .expect("build");
    let base = app.base_url().to_owned();
    tokio::spawn(app.run(site.stop.clone()));
    let (status, _) = json_of(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = json_of(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["nats"], "ok");
    assert_ne!(body["database"], "ok");
    site.stop().await;
}

#[tokio::test]
async fn a_public_site_without_a_cookie_key_refuses_to_start_naming_the_key() {
    let env = TestEnv::with(|s| {
        s.web.listen = "127.0.0.1:0".parse().expect("addr");
        s.web.public_url = "https://ttfd.example.org".into();
    })
    .await;
    let err = WebApp::build(
        &env.settings,
        env.store.clone(),
        env.broker.clone(),
        Metrics::new(),
        GRACE,
    )
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("web.cookie_key"), "{err}");
    env.cleanup().await;
}

/// SPEC 7.3 on the website and the API: a member who hides is "not found" to everyone
/// else (profile page, API read) and on no leaderboard (the others close up), sees their
/// own profile with where they would stand, and shows again through the API's
/// `PUT /api/v1/me/prefs`.
#[tokio::test]
async fn a_hidden_member_is_off_every_web_surface_but_their_own_profile() {
    let site = Site::start().await;
    let now = ttfd::now_ms();
    let ann = format!("discord:{ANN_DISCORD}");
    site.seed(&[
        xp("x:ann", &ann, "Ann", 500, now),
        xp("x:bob", "website:bob", "Bob", 300, now),
    ])
    .await;
    let uid = site
        .env
        .store
        .profile(&Identity::parse(&ann).expect("identity"))
        .await
        .expect("read")
        .expect("ann")
        .uid;
    let client = browser();
    let html = sign_in_with_discord(&site, &client).await;
    assert!(
        html.contains("leaderboards: <strong>public</strong>"),
        "{html}"
    );
    let fields = vec![
        ("csrf".to_owned(), csrf_of(&html)),
        ("on".to_owned(), "on".to_owned()),
    ];
    let (page, _) = follow_post(&client, &site.url("/profile/privacy"), &fields).await;
    let (status, flash) = text(page).await;
    assert_eq!(status, StatusCode::OK);
    assert!(flash.contains("You are hidden"), "{flash}");
    let own = eventually("the member hidden", || async {
        let (_, page) = text(client.get(site.url("/profile")).send().await.ok()?).await;
        page.contains("leaderboards: <strong>hidden</strong>")
            .then_some(page)
    })
    .await;
    assert!(own.contains("id=\"hidden-note\""), "{own}");
    assert!(own.contains("<strong>#1</strong> all time"), "{own}");
    site.env.store.drain_standings().await.expect("standings");

    // Everyone else: not found, and a leaderboard of one.
    let anyone = reqwest::Client::new();
    let get = |c: &reqwest::Client, path: &str| c.get(site.url(path)).send();
    let (status, body) = json_of(
        get(&anyone, &format!("/api/v1/users/discord/{ANN_DISCORD}"))
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["error"],
        format!("no user has the identity {ann}"),
        "the same answer as for nobody"
    );
    let (status, _) = text(get(&anyone, &format!("/u/{uid}")).await.expect("get")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, board) = json_of(get(&anyone, "/api/v1/leaderboard").await.expect("get")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(board["total"], 1);
    assert_eq!(board["entries"][0]["display_name"], "Bob");
    assert_eq!(board["entries"][0]["position"], 1);
    let (_, page) = text(get(&anyone, "/leaderboard").await.expect("get")).await;
    assert!(page.contains("Bob") && !page.contains("Ann"), "{page}");

    // The member: their own profile on every read.
    let (status, me) = json_of(
        get(&client, &format!("/api/v1/users/discord/{ANN_DISCORD}"))
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["hidden"], true);
    assert_eq!(me["standings"][0]["position"], 1, "where they would be");
    assert_eq!(me["standings"][0]["ranked"], 1, "among the others shown");
    let (status, _) = text(get(&client, &format!("/u/{uid}")).await.expect("get")).await;
    assert_eq!(status, StatusCode::OK);

    // The API's preference field: refused without a sign-in or with nothing to set.
    let put =
        |c: &reqwest::Client, body: Value| c.put(site.url("/api/v1/me/prefs")).json(&body).send();
    let (status, _) = json_of(put(&anyone, json!({"hidden": false})).await.expect("put")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = json_of(put(&client, json!({})).await.expect("put")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = json_of(put(&client, json!({"hidden": "no"})).await.expect("put")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = json_of(put(&client, json!({"hidden": false})).await.expect("put")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    eventually("the member shown again", || async {
        let (status, _) = json_of(
            get(&anyone, &format!("/api/v1/users/discord/{ANN_DISCORD}"))
                .await
                .ok()?,
        )
        .await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    site.env.store.drain_standings().await.expect("standings");
    let (_, board) = json_of(get(&anyone, "/api/v1/leaderboard").await.expect("get")).await;
    assert_eq!(board["total"], 2);
    assert_eq!(board["entries"][0]["display_name"], "Ann");
    site.stop().await;
}

/// `web.leaderboard_visibility`: `members` shows the leaderboards to signed-in members
/// only, `off` to nobody; the page and the API alike.
#[tokio::test]
async fn leaderboard_visibility_keeps_the_boards_to_members_or_off() {
    use ttfd::settings::web::LeaderboardVisibility;
    let site =
        Site::start_with(|s| s.web.leaderboard_visibility = LeaderboardVisibility::Members).await;
    let anyone = reqwest::Client::new();
    for path in ["/leaderboard", "/api/v1/leaderboard"] {
        let (status, body) = text(anyone.get(site.url(path)).send().await.expect("get")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(body.contains("sign in"), "{path}: {body}");
    }
    let member = browser();
    sign_in_with_discord(&site, &member).await;
    for path in ["/leaderboard", "/api/v1/leaderboard"] {
        let (status, _) = text(member.get(site.url(path)).send().await.expect("get")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    site.stop().await;

    let site =
        Site::start_with(|s| s.web.leaderboard_visibility = LeaderboardVisibility::Off).await;
    let member = browser();
    sign_in_with_discord(&site, &member).await;
    for path in ["/leaderboard", "/api/v1/leaderboard"] {
        let (status, body) = text(member.get(site.url(path)).send().await.expect("get")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(body.contains("no leaderboards"), "{path}: {body}");
    }
    site.stop().await;
}

/// The admin page takes a wrongly linked account out of a profile (SPEC 7.4): the
/// profile comes apart, each with what it earned; the audit log on the page shows the
/// unlink; a second try finds nothing left to do.
#[tokio::test]
async fn an_admin_unlinks_an_account_on_the_admin_page() {
    let site = Site::start_with(|s| s.web.admins = vec![format!("discord:{ANN_DISCORD}")]).await;
    let now = ttfd::now_ms() - 1_000;
    let link = Event {
        id: EventId::parse("website:link:1").expect("id"),
        ts: now,
        identity: Identity::parse("website:bo@example.org").expect("identity"),
        name: None,
        payload: Payload::Link {
            other: Identity::parse("website:cy@example.org").expect("identity"),
            proof: ttfd::shared::Proof::Code,
            by: None,
        },
    };
    site.seed(&[
        xp("x:bo", "website:bo@example.org", "Bo", 400, now),
        xp("x:cy", "website:cy@example.org", "Cy", 100, now),
        link,
    ])
    .await;
    let admin = browser();
    sign_in_with_discord(&site, &admin).await;
    let page = |member: &str| {
        let url = site.url(&format!("/admin?member={member}"));
        let admin = admin.clone();
        async move { text(admin.get(url).send().await.expect("get")).await.1 }
    };
    let html = page("website:bo@example.org").await;
    assert!(html.contains("id=\"unlink\""), "{html}");
    assert!(
        html.contains("<option value=\"website:cy@example.org\">"),
        "{html}"
    );
    let request = html
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a request id")
        .to_owned();
    let fields = vec![
        ("csrf".to_owned(), csrf_of(&html)),
        ("request".to_owned(), request),
        ("member".to_owned(), "website:bo@example.org".to_owned()),
        ("account".to_owned(), "website:cy@example.org".to_owned()),
        ("reason".to_owned(), "not the same person".to_owned()),
    ];
    let (done, _) = follow_post(&admin, &site.url("/admin/unlink"), &fields).await;
    let (status, html) = text(done).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains(
            "website:cy@example.org unlinked from website:bo@example.org: the profiles are apart."
        ),
        "{html}"
    );
    assert!(
        html.contains("unlinked from website:bo@example.org"),
        "the audit row: {html}"
    );
    for (who, want) in [("bo", 400), ("cy", 100)] {
        let p = site
            .env
            .store
            .profile(&Identity::parse(&format!("website:{who}@example.org")).expect("id"))
            .await
            .expect("read")
            .expect("a profile");
        assert_eq!((p.xp, p.identities.len()), (want, 1), "{who}");
    }
    let (again, _) = follow_post(&admin, &site.url("/admin/unlink"), &fields).await;
    let (_, html) = text(again).await;
    assert!(html.contains("Not done: no link joins"), "{html}");
    site.stop().await;
}

/// "Download my data" on the profile (docs/privacy.md): the signed-in member's export as
/// a JSON attachment, the same document as `ttfd export`; a visitor is sent to sign in.
#[tokio::test]
async fn download_my_data_gives_the_signed_in_member_their_export() {
    let site = Site::start().await;
    let ann = format!("discord:{ANN_DISCORD}");
    site.seed(&[xp(
        "discord:x:ann",
        &ann,
        "Ann",
        120,
        ttfd::now_ms() - 1_000,
    )])
    .await;
    let anyone = browser();
    let r = anyone
        .get(site.url("/profile/export"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let member = browser();
    let html = sign_in_with_discord(&site, &member).await;
    assert!(html.contains("href=\"/profile/export\""), "{html}");
    let r = member
        .get(site.url("/profile/export"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-disposition"],
        format!("attachment; filename=\"ttfd-export-discord-{ANN_DISCORD}.json\"")
    );
    let doc: Value = r.json().await.expect("JSON");
    assert_eq!(doc["format"], "ttfd-export/1");
    assert_eq!(doc["profile"]["xp"], 120);
    assert_eq!(doc["events"][0]["envelope"]["id"], "discord:x:ann");
    site.stop().await;
}

/// "Delete my data" (SPEC 7.4): refused without the typed confirmation; with it, every
/// account of the member's profile is erased and the member is signed out.
#[tokio::test]
async fn delete_my_data_erases_the_member_and_signs_them_out() {
    let site = Site::start().await;
    let ann = format!("discord:{ANN_DISCORD}");
    site.seed(&[xp(
        "discord:x:ann",
        &ann,
        "Ann",
        120,
        ttfd::now_ms() - 1_000,
    )])
    .await;
    let member = browser();
    let html = sign_in_with_discord(&site, &member).await;
    assert!(html.contains("action=\"/profile/delete\""), "{html}");
    let form = |confirm: &str| {
        vec![
            ("csrf".to_owned(), csrf_of(&html)),
            ("confirm".to_owned(), confirm.to_owned()),
        ]
    };
    let (page, _) = follow_post(&member, &site.url("/profile/delete"), &form("no")).await;
    let (_, text_) = text(page).await;
    assert!(text_.contains("Nothing was erased"), "{text_}");
    let (page, _) = follow_post(&member, &site.url("/profile/delete"), &form("delete")).await;
    let (status, text_) = text(page).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text_.contains("Erasing"), "{text_}");
    let r = member.get(site.url("/profile")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "signed out");
    eventually("the erasure", || async {
        site.env
            .store
            .profile(&Identity::parse(&ann).expect("identity"))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    site.stop().await;
}

/// The same rights through the API: `GET /api/v1/me/export` and `DELETE /api/v1/me`,
/// each 401 without a sign-in; the erasure wants `{"confirm": "delete"}` and ends the
/// session.
#[tokio::test]
async fn the_api_exports_and_erases_the_signed_in_member() {
    let site = Site::start().await;
    let ann = format!("discord:{ANN_DISCORD}");
    site.seed(&[xp(
        "discord:x:ann",
        &ann,
        "Ann",
        120,
        ttfd::now_ms() - 1_000,
    )])
    .await;
    let stranger = browser();
    let r = stranger
        .get(site.url("/api/v1/me/export"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = stranger
        .delete(site.url("/api/v1/me"))
        .json(&json!({"confirm": "delete"}))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let member = browser();
    sign_in_with_discord(&site, &member).await;
    let r = member
        .get(site.url("/api/v1/me/export"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.expect("JSON");
    assert_eq!(doc["format"], "ttfd-export/1");
    assert_eq!(doc["profile"]["xp"], 120);

    for bad in [
        json!({"confirm": "no"}),
        json!({"confirm": "delete", "x": 1}),
    ] {
        let r = member
            .delete(site.url("/api/v1/me"))
            .json(&bad)
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = member
        .delete(site.url("/api/v1/me"))
        .json(&json!({"confirm": "delete"}))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1), "{body}");
    let r = member
        .get(site.url("/api/v1/me/export"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "signed out");
    eventually("the erasure", || async {
        site.env
            .store
            .profile(&Identity::parse(&ann).expect("identity"))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    site.stop().await;
}

/// The XP statement (docs/rules.md): the API's JSON and the profile's section say where
/// the XP came from, and why voice time paid nothing.
#[tokio::test]
async fn the_statement_shows_sources_and_unpaid_voice_on_the_api_and_the_profile() {
    let site = Site::start().await;
    let now = ttfd::now_ms();
    let event = |id: &str, payload: Payload| Event {
        id: EventId::parse(id).expect("id"),
        ts: now,
        identity: Identity::parse("discord:77").expect("identity"),
        name: Some("Vox".into()),
        payload,
    };
    site.seed(&[
        message("s:1", "discord:77", "Vox", now),
        event(
            "s:2",
            Payload::Voice {
                seconds: 120,
                channel: None,
                mult: None,
            },
        ),
        event(
            "s:3",
            Payload::VoiceUnpaid {
                seconds: 2280,
                why: Unpaid::Muted,
                channel: None,
            },
        ),
        event(
            "s:4",
            Payload::VoiceUnpaid {
                seconds: 90,
                why: Unpaid::Alone,
                channel: None,
            },
        ),
        xp("s:5", "discord:77", "Vox", 5, now),
    ])
    .await;
    let client = browser();
    let get = |path: &str| client.get(site.url(path)).send();
    let (status, body) = json_of(
        get("/api/v1/users/discord/77/statement?period=all")
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["period"], "all");
    let total = &body["total"];
    assert_eq!(
        (
            &total["xp"],
            &total["messages_xp"],
            &total["voice_xp"],
            &total["grants_xp"]
        ),
        (&json!(23), &json!(10), &json!(8), &json!(5)),
        "{body}"
    );
    assert_eq!(total["unpaid_voice"]["muted"], 2280);
    assert_eq!(total["unpaid_voice"]["alone"], 90);
    assert_eq!(body["platforms"][0]["platform"], "discord");
    assert_eq!(body["days"].as_array().map(Vec::len), Some(1));
    let (status, body) = json_of(
        get("/api/v1/users/discord/77/statement")
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((status, &body["period"]), (StatusCode::OK, &json!("week")));
    for (path, want) in [
        (
            "/api/v1/users/discord/77/statement?period=year",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/users/discord/77/statement?season=nope",
            StatusCode::NOT_FOUND,
        ),
        ("/api/v1/users/discord/78/statement", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = json_of(get(path).await.expect("get")).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }

    let vox = site
        .env
        .store
        .profile(&Identity::parse("discord:77").expect("id"))
        .await
        .expect("read")
        .expect("user");
    let (status, html) = text(get(&format!("/u/{}?xp=all", vox.uid)).await.expect("get")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Where the XP came from")
            && html.contains("38 min in voice while muted: no XP")
            && html.contains("1 min alone in voice: no XP")
            && html.contains("class=\"active\" aria-current=\"page\">All time"),
        "{html}"
    );
    site.stop().await;
}
