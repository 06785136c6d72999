//! The one HTTP client setup for everything that talks to OnCall: the sender, the API client
//! and `check-config --online` all build their reqwest client here, so a rule about talking to
//! OnCall is written once.
//!
//! The rule that matters most: **no redirect is ever followed.** reqwest follows up to ten by
//! default; a 301/302 turns the POST into a GET without body (OnCall answers a GET with 200, its
//! instructions page, so the alert would be acked as delivered and lost), and a 307/308 resends
//! the body and the token to whatever host `Location` names. A 3xx is a configuration problem
//! (an `http://` URL behind an ingress that redirects to https is the everyday case): it is an
//! answer to report, with where it points ([`redirect_target`]), never one to act on.

use std::time::Duration;

/// The most of a `Location` header kept: it is network input and ends up in logs and status.
const MAX_LOCATION: usize = 512;

/// A reqwest client for OnCall: rustls, HTTP(S)_PROXY / NO_PROXY from the environment, the
/// agent's user agent, `timeout` for the whole exchange and at most 10 s to connect, and no
/// redirects.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("oncall-agent/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Exponential backoff, the one schedule for everything that retries toward OnCall (the
/// sender's alerts and the API client's calls): `initial`, doubling with each attempt, never
/// above `max`; saturating, whatever the attempt count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before attempt `attempt + 1` after `attempt` failures (1: `initial`).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Where a 3xx answer points, fit to print: the `Location` resolved against the request's URL
/// and redacted (it may carry the token on to the new host), or why it cannot be shown.
pub fn redirect_target(request: &reqwest::Url, location: Option<&[u8]>) -> String {
    let Some(raw) = location else {
        return "no Location given".to_string();
    };
    let raw = &raw[..raw.len().min(MAX_LOCATION)];
    match std::str::from_utf8(raw)
        .ok()
        .and_then(|s| request.join(s.trim()).ok())
    {
        Some(url) => crate::redact::redact_url(&url),
        None => "a Location that is not a URL".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn a_redirect_target_keeps_the_token_out() {
        let from = url("http://oncall.example.com/integrations/v1/formatted_webhook/SeCrEt/");
        assert_eq!(
            redirect_target(
                &from,
                Some(b"https://oncall.example.com/integrations/v1/formatted_webhook/SeCrEt/")
            ),
            "https://oncall.example.com/integrations/v1/formatted_webhook/***/"
        );
        // Relative to the request.
        assert_eq!(
            redirect_target(&from, Some(b"/oncall/integrations/v1/webhook/SeCrEt/")),
            "http://oncall.example.com/oncall/integrations/v1/webhook/***/"
        );
        assert_eq!(redirect_target(&from, None), "no Location given");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_never_overflows() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        };
        let d: Vec<u64> = (0..6).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(d, [1, 1, 2, 4, 8, 8]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(8));
        let unbounded = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::MAX,
        };
        assert_eq!(unbounded.delay(40), Duration::from_secs(1 << 31));
    }

    proptest! {
        /// A Location is network input: any bytes give a bounded answer that never holds the
        /// token of the request or of the Location.
        #[test]
        fn any_location_is_bounded_and_redacted(loc in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let from = url("https://h.example/integrations/v1/webhook/TOKENxyz123/");
            let mut with_token = b"https://other.example/integrations/v1/webhook/TOKENxyz123/".to_vec();
            with_token.extend_from_slice(&loc);
            for l in [&loc, &with_token] {
                let t = redirect_target(&from, Some(l));
                prop_assert!(t.len() <= MAX_LOCATION + 64, "{}", t.len());
                prop_assert!(!t.contains("TOKENxyz123"), "{t}");
            }
        }
    }
}
