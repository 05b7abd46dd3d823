//! Browser sessions, kept whole in a signed cookie: who is signed in, the CSRF token of
//! the browser's forms, a link waiting to be applied and a one-time message.
//!
//! Why signed cookies (axum-extra's `SignedCookieJar`) rather than a server-side session
//! store: the session is a few dozen bytes that the member may read but not forge, web
//! replicas share nothing but the key (no sticky sessions, no session table to expire),
//! and signing out is dropping the cookie. The cookie is `HttpOnly` (no script reads it),
//! `SameSite=Lax` (sent on the top-level redirect back from Discord, not on cross-site
//! form posts) and `Secure` when the site is served over https. Every form also carries
//! the session's CSRF token.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum_extra::extract::SignedCookieJar;
use axum_extra::extract::cookie::{Cookie, Key, SameSite};
use rand::Rng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use ttfd_shared::Identity;

pub const SESSION_COOKIE: &str = "ttfd_session";
pub const OAUTH_COOKIE: &str = "ttfd_oauth";
/// The names over https: `__Host-` binds the session cookie to this host, path `/` and
/// https (no subdomain can set or shadow it); `__Secure-` the OAuth one, whose path is
/// narrower.
pub const SECURE_SESSION_COOKIE: &str = "__Host-ttfd_session";
pub const SECURE_OAUTH_COOKIE: &str = "__Secure-ttfd_oauth";

fn session_cookie(secure: bool) -> &'static str {
    if secure {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

fn oauth_cookie(secure: bool) -> &'static str {
    if secure {
        SECURE_OAUTH_COOKIE
    } else {
        OAUTH_COOKIE
    }
}
/// How long a Discord sign-in may take between leaving and coming back, in ms.
pub const OAUTH_MAX_AGE_MS: i64 = 10 * 60 * 1000;

/// Random token: 32 bytes, hex.
pub fn random_token() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

/// A one-time message for the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Flash {
    SignedIn,
    SignedOut,
    SignedOutEverywhere,
    /// Shown while the link is applied.
    LinkRecorded,
    Linked,
    AlreadyLinked,
    CodeIssued {
        code: String,
        expires_ms: i64,
    },
    /// Something done, in words (an admin's adjustment).
    Ok {
        message: String,
    },
    Error {
        message: String,
    },
}

/// How long a Discord moderator's sign-in opens the admin page: roles can be taken
/// away, and the site does not keep Discord's token to ask again.
pub const MODERATOR_FOR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Session {
    /// The CSRF token of this browser: every form and the Telegram auth URL carry it.
    #[serde(rename = "c")]
    pub csrf: String,
    /// Who is signed in, `platform:user`.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// The name the provider gave at sign-in (for the header, before any event).
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the session was created, Unix ms.
    #[serde(rename = "a")]
    pub at: i64,
    /// A Discord moderator (`discord.moderator_roles`) at sign-in: the admin page opens
    /// for an hour after it (`MODERATOR_FOR_MS`), then asks to sign in again.
    #[serde(rename = "m", default, skip_serializing_if = "std::ops::Not::not")]
    pub moderator: bool,
    /// An identity linked and not yet seen in the profile, with when.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<(String, i64)>,
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub flash: Option<Flash>,
}

/// What the session cookie looks like on the wire.
#[derive(Clone)]
pub struct CookiePolicy {
    pub secure: bool,
    pub max_age_ms: i64,
}

impl Session {
    /// The browser's session, or a fresh anonymous one when it has none, a forged one or
    /// an expired one.
    pub fn load(jar: &SignedCookieJar, policy: &CookiePolicy, now_ms: i64) -> Self {
        jar.get(session_cookie(policy.secure))
            .and_then(|c| decode::<Session>(c.value()))
            .filter(|s| now_ms - s.at < policy.max_age_ms && !s.csrf.is_empty())
            .unwrap_or_else(|| Session {
                csrf: random_token(),
                at: now_ms,
                ..Session::default()
            })
    }

    /// The signed-in identity, if any.
    pub fn identity(&self) -> Option<Identity> {
        self.who.as_deref().and_then(|w| Identity::parse(w).ok())
    }

    /// Whether `token` (from a form or URL) is this session's CSRF token.
    pub fn csrf_ok(&self, token: &str) -> bool {
        !self.csrf.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(token.as_bytes()))
    }

    /// Signs `identity` in, with a new CSRF token (no token outlives a change of user).
    pub fn sign_in(&mut self, identity: &Identity, name: Option<String>, now_ms: i64) {
        *self = Session {
            csrf: random_token(),
            who: Some(identity.to_string()),
            name,
            at: now_ms,
            moderator: false,
            pending: None,
            flash: Some(Flash::SignedIn),
        };
    }

    /// Forgets who was signed in, with a new CSRF token.
    pub fn sign_out(&mut self) {
        self.csrf = random_token();
        self.who = None;
        self.name = None;
        self.pending = None;
        self.moderator = false;
    }

    /// Whether the session is a Discord moderator's, signed in within the last hour.
    pub fn is_moderator(&self, now_ms: i64) -> bool {
        self.moderator && self.who.is_some() && now_ms - self.at < MODERATOR_FOR_MS
    }

    pub fn take_flash(&mut self) -> Option<Flash> {
        self.flash.take()
    }

    /// The jar with this session stored in it.
    pub fn store(&self, jar: SignedCookieJar, policy: &CookiePolicy) -> SignedCookieJar {
        jar.add(cookie(
            session_cookie(policy.secure),
            encode(self),
            "/",
            policy.secure,
            policy.max_age_ms,
        ))
    }
}

/// JSON in hex: a cookie value must not hold `;`, `,`, quotes or spaces, and names can.
fn encode<T: Serialize>(value: &T) -> String {
    // Strings and numbers only: serializing cannot fail.
    hex::encode(serde_json::to_vec(value).unwrap_or_default())
}

fn decode<T: serde::de::DeserializeOwned>(value: &str) -> Option<T> {
    serde_json::from_slice(&hex::decode(value).ok()?).ok()
}

/// A cookie with the site's attributes: HttpOnly, SameSite=Lax, Secure over https.
pub fn cookie(
    name: &'static str,
    value: String,
    path: &'static str,
    secure: bool,
    max_age_ms: i64,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::milliseconds(max_age_ms))
        .build()
}

/// The state of a Discord sign-in between leaving for Discord and coming back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthState {
    /// The `state` parameter sent to Discord.
    pub state: String,
    pub at: i64,
    /// Link the Discord account to this identity (the signed-in one) instead of
    /// signing in with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_to: Option<String>,
}

impl OAuthState {
    pub fn store(&self, jar: SignedCookieJar, secure: bool) -> SignedCookieJar {
        jar.add(cookie(
            oauth_cookie(secure),
            encode(self),
            "/auth/discord",
            secure,
            OAUTH_MAX_AGE_MS,
        ))
    }

    /// The pending sign-in of this browser, removed from the jar: a state is checked
    /// once.
    pub fn take(jar: SignedCookieJar, secure: bool) -> (SignedCookieJar, Option<OAuthState>) {
        let name = oauth_cookie(secure);
        let state = jar.get(name).and_then(|c| decode::<OAuthState>(c.value()));
        let jar = jar.remove(Cookie::build(name).path("/auth/discord"));
        (jar, state)
    }
}

/// Believes cookies signed with a retired key (`web.retired_cookie_keys`): before the
/// handlers read them, they are signed again with the current key in the request, so
/// that a key rotation signs nobody out. A handler that sets the cookie then sends it
/// signed with the current key; the browser's copy moves over on its next page.
pub async fn believe_retired_keys(
    State(app): State<super::AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    resign(
        request.headers_mut(),
        &app.cookie_key,
        &app.retired_cookie_keys,
    );
    next.run(request).await
}

/// Rewrites the `Cookie` headers: a cookie that only a retired key verifies gets its
/// value signed with `current`; every other cookie stays as it came.
pub fn resign(headers: &mut HeaderMap, current: &Key, retired: &[Key]) {
    if retired.is_empty() {
        return;
    }
    let cookies: Vec<Cookie<'static>> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| Cookie::parse_encoded(c.trim().to_owned()).ok())
        .collect();
    let mut changed = false;
    let mut sent = Vec::with_capacity(cookies.len());
    for came in cookies {
        let mut jar = cookie::CookieJar::new();
        jar.add_original(came.clone());
        let name = came.name().to_owned();
        let believed = (jar.signed(current).get(&name).is_none())
            .then(|| retired.iter().find_map(|key| jar.signed(key).get(&name)))
            .flatten();
        match believed {
            Some(plain) => {
                let mut fresh = cookie::CookieJar::new();
                fresh.signed_mut(current).add(plain);
                sent.push(fresh.get(&name).cloned().unwrap_or(came));
                changed = true;
            }
            None => sent.push(came),
        }
    }
    if !changed {
        return;
    }
    let line = sent
        .iter()
        .map(|c| c.encoded().to_string())
        .collect::<Vec<_>>()
        .join("; ");
    if let Ok(value) = HeaderValue::from_str(&line) {
        headers.remove(header::COOKIE);
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use axum_extra::extract::cookie::Key;

    use super::*;

    fn policy() -> CookiePolicy {
        CookiePolicy {
            secure: false,
            max_age_ms: 1000,
        }
    }

    #[test]
    fn a_stored_session_comes_back_until_it_expires() {
        let key = Key::generate();
        let mut s = Session::load(&SignedCookieJar::new(key.clone()), &policy(), 10_000);
        assert!(s.identity().is_none());
        s.sign_in(&Identity::parse("discord:1").expect("id"), None, 10_000);
        let jar = s.store(SignedCookieJar::new(key.clone()), &policy());
        let back = Session::load(&jar, &policy(), 10_500);
        assert_eq!(back.who.as_deref(), Some("discord:1"));
        assert!(back.csrf_ok(&s.csrf) && !back.csrf_ok("x"));
        let expired = Session::load(&jar, &policy(), 11_000);
        assert!(expired.who.is_none());
        assert_ne!(expired.csrf, s.csrf);
    }

    #[test]
    fn over_https_the_session_cookie_is_bound_to_the_host() {
        use axum::response::IntoResponse;
        let key = Key::generate();
        let https = CookiePolicy {
            secure: true,
            max_age_ms: 1000,
        };
        let mut s = Session::load(&SignedCookieJar::new(key.clone()), &https, 0);
        s.sign_in(&Identity::parse("discord:1").expect("id"), None, 0);
        let jar = s.store(SignedCookieJar::new(key.clone()), &https);
        let response = jar.clone().into_response();
        let set = response.headers()[axum::http::header::SET_COOKIE]
            .to_str()
            .expect("ascii");
        assert!(set.starts_with("__Host-ttfd_session="), "{set}");
        assert!(set.contains("Secure") && set.contains("Path=/") && !set.contains("Domain"));
        assert_eq!(
            Session::load(&jar, &https, 1).who.as_deref(),
            Some("discord:1")
        );
        // A plain-named cookie (as a subdomain could set) is not read over https.
        let plain = s.store(SignedCookieJar::new(key), &policy());
        assert!(Session::load(&plain, &https, 1).who.is_none());
    }

    /// The `Cookie` header a browser would send back after receiving `jar`'s cookies.
    fn sent_back(jar: SignedCookieJar) -> axum::http::HeaderMap {
        use axum::response::IntoResponse;
        let response = jar.into_response();
        let mut headers = axum::http::HeaderMap::new();
        for v in response.headers().get_all(axum::http::header::SET_COOKIE) {
            let pair = v.to_str().expect("ascii").split(';').next().expect("pair");
            headers.append(axum::http::header::COOKIE, pair.parse().expect("header"));
        }
        headers
    }

    #[test]
    fn a_forged_or_foreign_cookie_is_an_anonymous_session() {
        let key = Key::generate();
        let mut s = Session::load(&SignedCookieJar::new(key.clone()), &policy(), 0);
        s.sign_in(&Identity::parse("discord:1").expect("id"), None, 0);
        let headers = sent_back(s.store(SignedCookieJar::new(key.clone()), &policy()));
        let ours = SignedCookieJar::from_headers(&headers, key);
        assert_eq!(
            Session::load(&ours, &policy(), 0).who.as_deref(),
            Some("discord:1")
        );
        let foreign = SignedCookieJar::from_headers(&headers, Key::generate());
        assert!(Session::load(&foreign, &policy(), 0).who.is_none());
        let mut forged = axum::http::HeaderMap::new();
        forged.insert(
            axum::http::header::COOKIE,
            r#"ttfd_session={"c":"x","w":"discord:1","a":0}"#
                .parse()
                .expect("header"),
        );
        let forged = SignedCookieJar::from_headers(&forged, Key::generate());
        assert!(Session::load(&forged, &policy(), 0).who.is_none());
    }

    #[test]
    fn a_cookie_signed_with_a_retired_key_is_believed_and_signed_again() {
        let (old, current, foreign) = (Key::generate(), Key::generate(), Key::generate());
        let mut s = Session::load(&SignedCookieJar::new(old.clone()), &policy(), 0);
        s.sign_in(&Identity::parse("discord:1").expect("id"), None, 0);
        let mut headers = sent_back(s.store(SignedCookieJar::new(old.clone()), &policy()));
        let mut forged = Session::load(&SignedCookieJar::new(foreign.clone()), &policy(), 0);
        forged.sign_in(&Identity::parse("discord:2").expect("id"), None, 0);
        let mut other = sent_back(forged.store(SignedCookieJar::new(foreign), &policy()));
        let as_is = headers.clone();
        resign(&mut headers, &current, &[]);
        assert_eq!(headers, as_is, "no retired keys: nothing changes");
        let before = Session::load(
            &SignedCookieJar::from_headers(&headers, current.clone()),
            &policy(),
            1,
        );
        assert_eq!(
            before.who, None,
            "the current key alone does not believe it"
        );

        resign(&mut headers, &current, std::slice::from_ref(&old));
        let after = Session::load(
            &SignedCookieJar::from_headers(&headers, current.clone()),
            &policy(),
            1,
        );
        assert_eq!(after.who.as_deref(), Some("discord:1"));
        // Signed with the current key now: no retired key is needed any more.
        let again = headers.clone();
        resign(&mut headers, &current, std::slice::from_ref(&old));
        assert_eq!(headers, again);

        // A key that was never ours stays unbelieved.
        resign(&mut other, &current, std::slice::from_ref(&old));
        let forged = Session::load(
            &SignedCookieJar::from_headers(&other, current),
            &policy(),
            1,
        );
        assert_eq!(forged.who, None);
    }
}
