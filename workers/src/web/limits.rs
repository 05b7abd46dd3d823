//! Rate limits (docs/security.md): per client on the sign-in, link and code routes, per
//! token on ingest. GCRA limiters from `governor`, one state per key, in memory: each
//! replica limits what it serves, so N replicas allow up to N times the rate, which is
//! still a bound a guesser cannot raise by sending faster.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::AppState;
use crate::settings::web::RateLimitSettings;

/// Keys kept before the limiters forget the ones whose state is back to full.
const FORGET_ABOVE: usize = 10_000;

/// The limiters of one replica.
pub struct Limits {
    clients: DefaultKeyedRateLimiter<IpAddr>,
    tokens: DefaultKeyedRateLimiter<String>,
    client_ip_header: Option<HeaderName>,
}

impl Limits {
    pub fn new(settings: &RateLimitSettings) -> Arc<Self> {
        let per_minute = NonZeroU32::new(settings.sign_in_per_minute).unwrap_or(NonZeroU32::MIN);
        let per_second = NonZeroU32::new(settings.ingest_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = per_second.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        Arc::new(Self {
            clients: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            tokens: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            ),
            client_ip_header: HeaderName::from_bytes(settings.client_ip_header.trim().as_bytes())
                .ok(),
        })
    }

    /// The client's address: from the configured proxy header, else the peer.
    pub fn client(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> IpAddr {
        let from_header = self.client_ip_header.as_ref().and_then(|name| {
            // The last entry of a list is the one the nearest proxy added.
            let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
            value.rsplit(',').next()?.trim().parse().ok()
        });
        from_header
            .or(peer.map(|p| p.ip()))
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// `Err(retry after, in seconds)` when `client` has used its sign-in attempts.
    pub fn check_client(&self, client: IpAddr) -> Result<(), u64> {
        forget_old(&self.clients);
        self.clients.check_key(&client).map_err(retry_after)
    }

    /// `Err(retry after, in seconds)` when the ingest token of `platform` has used its
    /// rate.
    pub fn check_token(&self, platform: &str) -> Result<(), u64> {
        forget_old(&self.tokens);
        self.tokens
            .check_key(&platform.to_owned())
            .map_err(retry_after)
    }
}

fn forget_old<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) {
    if limiter.len() > FORGET_ABOVE {
        limiter.retain_recent();
    }
}

fn retry_after(not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u64 {
    not_until
        .wait_time_from(DefaultClock::default().now())
        .as_secs()
        .max(1)
}

/// A 429 that says when to come back.
pub fn too_many(retry_after_secs: u64, message: &str) -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, message.to_owned()).into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// Middleware of the sign-in, link and code routes: per-client rate.
pub async fn per_client(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client = app.limits.client(request.headers(), peer);
    match app.limits.check_client(client) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            app.metrics.rate_limited.inc();
            too_many(
                wait,
                "Too many sign-in attempts from your address. Please wait a moment.",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(header: &str) -> Arc<Limits> {
        Limits::new(&RateLimitSettings {
            sign_in_per_minute: 3,
            ingest_per_second: 2,
            client_ip_header: header.into(),
        })
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_not_affected() {
        let l = limits("");
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("an address"),
            "10.0.0.2".parse().expect("an address"),
        );
        for _ in 0..3 {
            assert!(l.check_client(a).is_ok());
        }
        let wait = l.check_client(a).expect_err("limited");
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(l.check_client(b).is_ok());
    }

    #[test]
    fn a_token_gets_twice_its_rate_as_a_burst() {
        let l = limits("");
        for _ in 0..4 {
            assert!(l.check_token("website").is_ok());
        }
        assert!(l.check_token("website").is_err());
        assert!(l.check_token("minecraft").is_ok());
    }

    #[test]
    fn the_client_is_the_proxys_last_entry_or_the_peer() {
        let peer: SocketAddr = "192.0.2.9:4000".parse().expect("an address");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7"),
        );
        let behind = limits("x-forwarded-for");
        assert_eq!(
            behind.client(&headers, Some(peer)),
            "203.0.113.7".parse::<IpAddr>().expect("an address")
        );
        // Without the setting, a header the client sends is not believed.
        assert_eq!(limits("").client(&headers, Some(peer)), peer.ip());
        // A header that is missing or not an address falls back to the peer.
        assert_eq!(behind.client(&HeaderMap::new(), Some(peer)), peer.ip());
    }
}
