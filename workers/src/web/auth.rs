//! Signing in and linking accounts: Discord OAuth, the Telegram Login Widget, link
//! codes, signing out.
//!
//! Only proven accounts are linked: an OAuth sign-in, a widget signature or a code that
//! a bot gave to the account's owner; never an e-mail address or a username that looks
//! alike. A link made here is recorded as a `link` event (proof `oauth`) in the outbox
//! (`Store::enqueue_event`), which the sync replicas' relay publishes; the profile page
//! refreshes until the merge has been applied.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::SignedCookieJar;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use ttfd_shared::view::Pref;
use ttfd_shared::view::text::{self, Markup};
use ttfd_shared::wire::{EventId, Payload, Proof};
use ttfd_shared::{Event, Identity};

use super::AppState;
use super::ops::OutcomeLabels;
use super::pages::error_page;
use super::session::{Flash, OAUTH_MAX_AGE_MS, OAuthState, Session, random_token};
use super::telegram;
use crate::now_ms;
use crate::store::codes::{LinkCode, Redemption};

/// The `link` event recording that `me` and `other` were proven to be one person's.
/// Its id depends only on the pair, so linking twice is one fact.
pub fn oauth_link_event(me: &Identity, other: &Identity, now_ms: i64) -> Event {
    let (a, b) = if me <= other {
        (me, other)
    } else {
        (other, me)
    };
    let digest = Sha256::digest(format!("{a}\n{b}").as_bytes());
    let id = format!("web:link:oauth:{}", hex::encode(&digest[..16]));
    Event {
        id: EventId::parse(&id).expect("a fixed prefix and hex digits are printable ASCII"),
        ts: now_ms,
        identity: me.clone(),
        name: None,
        payload: Payload::Link {
            other: other.clone(),
            proof: Proof::Oauth,
            by: None,
        },
    }
}

impl AppState {
    fn count_sign_in(&self, via: &'static str, outcome: &'static str) {
        self.metrics
            .sign_ins
            .get_or_create(&OutcomeLabels { via, outcome })
            .inc();
    }

    fn count_link(&self, via: &'static str, outcome: &'static str) {
        self.metrics
            .links
            .get_or_create(&OutcomeLabels { via, outcome })
            .inc();
    }

    /// Records a proven link between the signed-in `me` and `other`, and remembers it
    /// in the session until the merged profile shows it.
    async fn link(
        &self,
        session: &mut Session,
        me: &Identity,
        other: &Identity,
        via: &'static str,
    ) -> Result<(), String> {
        if me.platform == other.platform {
            self.count_link(via, "same_platform");
            return Err(format!(
                "You are signed in with another {} account. Sign out first to use this one.",
                me.platform.as_str()
            ));
        }
        let already = match self.store.profile(me).await {
            Ok(p) => p.is_some_and(|p| {
                p.identities
                    .iter()
                    .any(|i| i.platform == other.platform.as_str() && i.user == other.user.as_str())
            }),
            Err(e) => {
                tracing::error!(error = %e, "link: reading the profile");
                return Err("The database is not available right now. Try again.".into());
            }
        };
        if already {
            self.count_link(via, "already_linked");
            session.flash = Some(Flash::AlreadyLinked);
            return Ok(());
        }
        let now = now_ms();
        if let Err(e) = self
            .store
            .enqueue_event(&oauth_link_event(me, other, now))
            .await
        {
            tracing::error!(error = %e, "link: recording the event");
            return Err("The link could not be recorded right now. Try again.".into());
        }
        tracing::info!(%me, %other, via, "accounts linked");
        self.count_link(via, "linked");
        session.pending = Some((other.to_string(), now));
        session.flash = Some(Flash::LinkRecorded);
        Ok(())
    }

    /// Spends a one-time proof of a sign-in (an OAuth `state`, a Telegram Login `hash`)
    /// in PostgreSQL, shared by every replica: `Ok(false)` when it was spent before (a
    /// replayed callback).
    async fn spend(
        &self,
        kind: &str,
        proof: &str,
        expires_ms: i64,
    ) -> Result<bool, (StatusCode, String)> {
        self.store
            .spend_once(kind, proof, expires_ms, now_ms())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "sign-in: recording a spent proof");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in is unavailable for a moment. Please try again.".into(),
                )
            })
    }
}

/// A redirect carrying the updated cookies.
fn go(app: &AppState, jar: SignedCookieJar, session: &Session, to: &str) -> Response {
    (session.store(jar, &app.cookies), Redirect::to(to)).into_response()
}

/// `GET /auth/discord`: leave for Discord to sign in.
pub async fn discord_start(State(app): State<AppState>, jar: SignedCookieJar) -> Response {
    let session = app.session(&jar).await;
    start_oauth(&app, jar, session, None)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /link/discord`: leave for Discord to prove the account to link.
pub async fn discord_link_start(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = app.session(&jar).await;
    let Some(me) = session.identity().filter(|_| session.csrf_ok(&form.csrf)) else {
        return stale_form(&app, jar, session);
    };
    start_oauth(&app, jar, session, Some(me.to_string()))
}

fn start_oauth(
    app: &AppState,
    jar: SignedCookieJar,
    session: Session,
    link_to: Option<String>,
) -> Response {
    let Some(oauth) = &app.discord else {
        return error_page(
            app,
            jar,
            session,
            StatusCode::NOT_FOUND,
            "Sign-in with Discord is not configured on this site.",
        );
    };
    let state = OAuthState {
        state: random_token(),
        at: now_ms(),
        link_to,
    };
    let target = oauth.authorize_redirect(&state.state);
    let jar = state.store(jar, app.cookies.secure);
    (session.store(jar, &app.cookies), Redirect::to(&target)).into_response()
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/discord/callback`: back from Discord. The `state` must be the one this
/// browser left with, unused and recent.
pub async fn discord_callback(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Query(q): Query<Callback>,
) -> Response {
    let now = now_ms();
    let mut session = app.session(&jar).await;
    let (jar, pending) = OAuthState::take(jar, app.cookies.secure);
    let Some(oauth) = app.discord.clone() else {
        return error_page(
            &app,
            jar,
            session,
            StatusCode::NOT_FOUND,
            "Sign-in with Discord is not configured on this site.",
        );
    };
    let refuse = |app: &AppState, jar, session, status, message: &str, outcome| {
        app.count_sign_in("discord", outcome);
        error_page(app, jar, session, status, message)
    };
    let Some(pending) = pending.filter(|p| now - p.at < OAUTH_MAX_AGE_MS) else {
        return refuse(
            &app,
            jar,
            session,
            StatusCode::BAD_REQUEST,
            "This sign-in has expired or was already used. Please start again.",
            "bad_state",
        );
    };
    let state_matches = q
        .state
        .as_deref()
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(pending.state.as_bytes())));
    if !state_matches {
        return refuse(
            &app,
            jar,
            session,
            StatusCode::BAD_REQUEST,
            "This sign-in did not start in this browser. Please start again.",
            "bad_state",
        );
    }
    let spent = app
        .spend("oauth_state", &pending.state, pending.at + OAUTH_MAX_AGE_MS)
        .await;
    if let Err((status, message)) = spent {
        return error_page(&app, jar, session, status, message);
    }
    if spent == Ok(false) {
        return refuse(
            &app,
            jar,
            session,
            StatusCode::BAD_REQUEST,
            "This sign-in was already used. Please start again.",
            "replayed_state",
        );
    }
    if let Some(error) = q.error {
        let message = if error == "access_denied" {
            "You cancelled the sign-in on Discord.".to_owned()
        } else {
            let detail = q.error_description.unwrap_or_default();
            format!(
                "Discord did not sign you in ({error}{}{detail}).",
                if detail.is_empty() { "" } else { ": " }
            )
        };
        app.count_sign_in("discord", "provider_error");
        return error_page(&app, jar, session, StatusCode::FORBIDDEN, message);
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        return refuse(
            &app,
            jar,
            session,
            StatusCode::BAD_REQUEST,
            "Discord sent no authorization code. Please start again.",
            "no_code",
        );
    };
    let user = match oauth.sign_in(&code).await {
        Ok(user) => user,
        Err(e) => {
            tracing::warn!(error = %e, "Discord sign-in failed");
            app.count_sign_in("discord", "exchange_failed");
            return error_page(
                &app,
                jar,
                session,
                StatusCode::BAD_GATEWAY,
                "Discord did not confirm the sign-in. Please try again.",
            );
        }
    };
    match pending.link_to {
        Some(link_to) => {
            // The browser must still be signed in as the account that asked for the link.
            let Some(me) = session.identity().filter(|me| me.to_string() == link_to) else {
                return refuse(
                    &app,
                    jar,
                    session,
                    StatusCode::BAD_REQUEST,
                    "You signed out or changed accounts while linking. Please start again.",
                    "session_changed",
                );
            };
            app.count_sign_in("discord", "ok");
            if let Err(message) = app.link(&mut session, &me, &user.identity, "discord").await {
                return error_page(&app, jar, session, StatusCode::CONFLICT, message);
            }
        }
        None => {
            app.count_sign_in("discord", "ok");
            tracing::info!(identity = %user.identity, moderator = user.moderator, "signed in with Discord");
            session.sign_in(&user.identity, user.name, now);
            session.moderator = user.moderator;
        }
    }
    go(&app, jar, &session, "/profile")
}

/// Checks widget data brought to `/auth/telegram/{csrf}` or `/link/telegram/{csrf}`.
/// The path carries the session's CSRF token, so the URL works only in the browser that
/// showed the widget, and only until the next sign-in.
async fn telegram_user(
    app: &AppState,
    session: &Session,
    csrf: &str,
    fields: &BTreeMap<String, String>,
) -> Result<telegram::TelegramUser, (StatusCode, String)> {
    let Some(login) = &app.telegram else {
        return Err((
            StatusCode::NOT_FOUND,
            "Sign-in with Telegram is not configured on this site.".into(),
        ));
    };
    if !session.csrf_ok(csrf) {
        return Err((
            StatusCode::BAD_REQUEST,
            "This Telegram sign-in did not start in this browser session. Please try again.".into(),
        ));
    }
    let (settings, key) = &**login;
    let user = telegram::verify(fields, key, now_ms() / 1000, settings.max_auth_age_secs)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    // Telegram signs the data, not the URL it arrives on: the same data brought again
    // (by whoever saw it) is refused until it is too old anyway.
    let expires_ms = user.expires_secs.saturating_mul(1000);
    if !app.spend("telegram_login", &user.hash, expires_ms).await? {
        return Err((
            StatusCode::BAD_REQUEST,
            "This Telegram sign-in was already used. Please sign in with Telegram again.".into(),
        ));
    }
    Ok(user)
}

/// `GET /auth/telegram/{csrf}?id=..&auth_date=..&hash=..`: sign in with Telegram.
pub async fn telegram_sign_in(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Path(csrf): Path<String>,
    Query(fields): Query<BTreeMap<String, String>>,
) -> Response {
    let mut session = app.session(&jar).await;
    match telegram_user(&app, &session, &csrf, &fields).await {
        Ok(user) => {
            app.count_sign_in("telegram", "ok");
            tracing::info!(identity = %user.identity, "signed in with Telegram");
            session.sign_in(&user.identity, user.name, now_ms());
            go(&app, jar, &session, "/profile")
        }
        Err((status, message)) => {
            app.count_sign_in("telegram", "refused");
            error_page(&app, jar, session, status, message)
        }
    }
}

/// `GET /link/telegram/{csrf}?...`: link the Telegram account to the signed-in one.
pub async fn telegram_link(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Path(csrf): Path<String>,
    Query(fields): Query<BTreeMap<String, String>>,
) -> Response {
    let mut session = app.session(&jar).await;
    let Some(me) = session.identity() else {
        return Redirect::to("/login").into_response();
    };
    let user = match telegram_user(&app, &session, &csrf, &fields).await {
        Ok(user) => user,
        Err((status, message)) => {
            app.count_link("telegram", "refused");
            return error_page(&app, jar, session, status, message);
        }
    };
    if let Err(message) = app
        .link(&mut session, &me, &user.identity, "telegram")
        .await
    {
        return error_page(&app, jar, session, StatusCode::CONFLICT, message);
    }
    go(&app, jar, &session, "/profile")
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
}

/// A form from another session or page: nothing is done.
fn stale_form(app: &AppState, jar: SignedCookieJar, session: Session) -> Response {
    if session.who.is_none() {
        return Redirect::to("/login").into_response();
    }
    error_page(
        app,
        jar,
        session,
        StatusCode::FORBIDDEN,
        "This form has expired (it came from another session). Please try again from your profile.",
    )
}

/// `POST /link/code`: enter a code that a bot issued to link that bot's account.
pub async fn redeem_code(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Form(form): Form<CodeForm>,
) -> Response {
    let mut session = app.session(&jar).await;
    let Some(me) = session.identity().filter(|_| session.csrf_ok(&form.csrf)) else {
        return stale_form(&app, jar, session);
    };
    let Some(code) = LinkCode::parse(&form.code) else {
        app.count_link("code", "malformed");
        session.flash = Some(Flash::Error {
            message: format!(
                "A code is {} letters and digits, exactly as the bot gave it.",
                crate::store::codes::LEN
            ),
        });
        return go(&app, jar, &session, "/profile#link");
    };
    let now = now_ms();
    let flash = match app.store.redeem_link_code(&me, code.as_str(), now).await {
        Ok(Redemption::Linked { issuer }) => {
            let issuer = format!("{}:{}", issuer.platform, issuer.user);
            tracing::info!(%me, other = %issuer, "accounts linked by code");
            app.count_link("code", "linked");
            session.pending = Some((issuer, now));
            Flash::LinkRecorded
        }
        Ok(Redemption::AlreadyOneUser { .. }) => {
            app.count_link("code", "already_linked");
            Flash::AlreadyLinked
        }
        Ok(Redemption::SelfLink) => {
            app.count_link("code", "self");
            Flash::Error {
                message: "That code was issued to this account: enter it in the bot of the other platform instead.".into(),
            }
        }
        Ok(Redemption::Invalid) => {
            app.count_link("code", "invalid");
            Flash::Error {
                message: "That code is unknown, used or expired. Ask the bot for a new one.".into(),
            }
        }
        Ok(Redemption::TooManyAttempts { retry_after_secs }) => {
            app.count_link("code", "throttled");
            Flash::Error {
                message: format!(
                    "Too many wrong codes. Try again in {} minutes.",
                    retry_after_secs.div_ceil(60).max(1)
                ),
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "redeeming a link code");
            Flash::Error {
                message: "The code could not be checked right now. Try again.".into(),
            }
        }
    };
    session.flash = Some(flash);
    go(&app, jar, &session, "/profile#link")
}

/// `POST /link/issue`: a code to enter in a bot, to link the bot's account to this one.
pub async fn issue_code(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Form(form): Form<CsrfForm>,
) -> Response {
    let mut session = app.session(&jar).await;
    let Some(me) = session.identity().filter(|_| session.csrf_ok(&form.csrf)) else {
        return stale_form(&app, jar, session);
    };
    session.flash = Some(match app.store.issue_link_code(&me, now_ms()).await {
        Ok(issued) => Flash::CodeIssued {
            code: issued.code,
            expires_ms: issued.expires_ms,
        },
        Err(e) => {
            tracing::error!(error = %e, "issuing a link code");
            Flash::Error {
                message: "No code could be issued right now. Try again.".into(),
            }
        }
    });
    go(&app, jar, &session, "/profile#link")
}

/// A toggle of the profile's Settings card.
#[derive(Debug, Deserialize)]
pub struct ToggleForm {
    csrf: String,
    on: String,
}

/// An event of the signed-in `me` saying `payload` (a `prefs`, SPEC 7.3, or a
/// `forget`, 7.4), with an id of its own.
pub fn prefs_event(me: Identity, payload: Payload) -> Event {
    let nonce: u128 = rand::Rng::random(&mut rand::rng());
    Event {
        id: EventId::parse(&format!("web:{}:{nonce:032x}", payload.kind()))
            .expect("a hex id is valid"),
        ts: now_ms(),
        identity: me,
        name: None,
        payload,
    }
}

/// "Delete my data": the typed confirmation.
#[derive(Debug, Deserialize)]
pub struct EraseForm {
    csrf: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /profile/delete`: erases the identity the member signed in with (SPEC 7.4), as
/// a `forget` event through the outbox, once they typed `delete`; then signs them out.
pub async fn erase_me(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Form(form): Form<EraseForm>,
) -> Response {
    let mut session = app.session(&jar).await;
    let Some(me) = session.identity().filter(|_| session.csrf_ok(&form.csrf)) else {
        return stale_form(&app, jar, session);
    };
    if !form.confirm.trim().eq_ignore_ascii_case("delete") {
        session.flash = Some(Flash::Error {
            message: "Nothing was erased: type delete to confirm.".into(),
        });
        return go(&app, jar, &session, "/profile#delete");
    }
    let recorded = erase_profile(&app, &me, "the member asked (website)").await;
    match recorded {
        Ok(_) => {
            session.sign_out();
            session.flash = Some(Flash::Ok {
                message: "Erasing: everything held about you is being deleted, within \
                          moments. You are signed out."
                    .into(),
            });
            go(&app, jar, &session, "/leaderboard")
        }
        Err(e) => {
            tracing::error!(error = %e, "recording an erasure");
            session.flash = Some(Flash::Error {
                message: "Nothing was erased right now. Try again.".into(),
            });
            go(&app, jar, &session, "/profile#delete")
        }
    }
}

/// Records a `forget` (SPEC 7.4) of every identity of `me`'s profile, one each, through
/// the outbox (the relay may speak for every platform); their ids.
pub async fn erase_profile(
    app: &AppState,
    me: &Identity,
    reason: &str,
) -> Result<Vec<EventId>, crate::store::StoreError> {
    let identities: Vec<Identity> = match app.store.profile(me).await? {
        Some(p) => p
            .identities
            .iter()
            .filter_map(|i| Identity::new(&i.platform, &i.user).ok())
            .collect(),
        None => vec![me.clone()],
    };
    let mut ids = Vec::with_capacity(identities.len());
    for identity in identities {
        let event = prefs_event(
            identity,
            Payload::Forget {
                reason: reason.into(),
                by: None,
            },
        );
        app.store.enqueue_event(&event).await?;
        ids.push(event.id);
    }
    Ok(ids)
}

/// `POST /profile/notify`: rank-up announcements on (`on=on`) or off.
pub async fn set_notify(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Form(form): Form<ToggleForm>,
) -> Response {
    let pref = Pref::Notify(form.on == "on");
    set_pref(app, jar, form, pref, "/profile#notify").await
}

/// `POST /profile/privacy`: hidden (`on=on`) or shown.
pub async fn set_privacy(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Form(form): Form<ToggleForm>,
) -> Response {
    let pref = Pref::Hidden(form.on == "on");
    set_pref(app, jar, form, pref, "/profile#privacy").await
}

/// A preference of the signed-in member, as a `prefs` event of their identity through
/// the outbox (the relay publishes it, as it publishes the site's links).
async fn set_pref(
    app: AppState,
    jar: SignedCookieJar,
    form: ToggleForm,
    pref: Pref,
    back: &str,
) -> Response {
    let mut session = app.session(&jar).await;
    let Some(me) = session.identity().filter(|_| session.csrf_ok(&form.csrf)) else {
        return stale_form(&app, jar, session);
    };
    let event = prefs_event(me, pref.payload());
    session.flash = Some(match app.store.enqueue_event(&event).await {
        Ok(()) => Flash::Ok {
            message: format!(
                "{} It shows here within moments.",
                text::pref_said(pref, Markup::Plain)
            ),
        },
        Err(e) => {
            tracing::error!(error = %e, "recording a preference");
            Flash::Error {
                message: "The setting could not be saved right now. Try again.".into(),
            }
        }
    });
    go(&app, jar, &session, back)
}

/// `POST /logout`.
pub async fn logout(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = app.session(&jar).await;
    if !session.csrf_ok(&form.csrf) {
        return stale_form(&app, jar, session);
    }
    signed_out(&app, jar, Flash::SignedOut)
}

/// `POST /logout/everywhere`: ends every session of the signed-in member, in every
/// browser and on every replica (a lost phone, a shared computer), this one included.
pub async fn logout_everywhere(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = app.session(&jar).await;
    if !session.csrf_ok(&form.csrf) {
        return stale_form(&app, jar, session);
    }
    if let Some(me) = session.identity() {
        if let Err(e) = app.store.revoke_sessions(&me, now_ms()).await {
            tracing::error!(error = %e, "sign out everywhere");
            return error_page(
                &app,
                jar,
                session,
                StatusCode::SERVICE_UNAVAILABLE,
                "Your other sessions could not be ended right now. Please try again.",
            );
        }
        tracing::info!(identity = %me, "signed out everywhere");
    }
    signed_out(&app, jar, Flash::SignedOutEverywhere)
}

/// To the leaderboard with a fresh anonymous session that says `flash`.
fn signed_out(app: &AppState, jar: SignedCookieJar, flash: Flash) -> Response {
    let mut fresh = Session::load(
        &SignedCookieJar::new(app.cookie_key.clone()),
        &app.cookies,
        now_ms(),
    );
    fresh.flash = Some(flash);
    go(app, jar, &fresh, "/leaderboard")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_event_is_the_same_fact_from_either_side() {
        let a = Identity::parse("discord:1").expect("id");
        let b = Identity::parse("telegram:2").expect("id");
        let now = 1_790_000_000_000;
        let ab = oauth_link_event(&a, &b, now);
        let ba = oauth_link_event(&b, &a, now + 1);
        assert_eq!(ab.id, ba.id);
        assert!(ab.id.as_str().starts_with("web:link:oauth:"));
        assert_eq!(
            ab.payload,
            Payload::Link {
                other: b,
                proof: Proof::Oauth,
                by: None,
            }
        );
        // It passes the wire gate like any event.
        let bytes = ttfd_shared::wire::encode(&ab);
        assert_eq!(
            ttfd_shared::wire::decode(&bytes, ("discord", "link"), now),
            Ok(ab)
        );
    }
}
