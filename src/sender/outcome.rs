//! What an answer from OnCall means, decided in one typed place: the dispatcher matches on
//! [`Outcome`], never on status codes or strings.

use std::time::{Duration, SystemTime};

/// Which budget a 429 says ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    Integration,
    Org,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Integration => "integration",
            LimitScope::Org => "org",
        }
    }
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: OnCall has it.
    Delivered,
    /// 5xx, 408, timeout or a network error: try again later (never before `after`).
    Retry {
        reason: String,
        after: Option<Duration>,
        /// Whether a response came back (if not, the server may still count the request until
        /// the timeout has passed once more).
        answered: bool,
        /// False only when the request surely never reached OnCall (connection refused, DNS or
        /// TLS failure before a byte of it was sent): then it spends no budget.
        reached: bool,
    },
    /// 429: keep the alert at the head of its queue and pause the scope.
    RateLimited {
        scope: LimitScope,
        retry_after: Option<Duration>,
    },
    /// Any other 4xx: retrying cannot help; the alert becomes a dead letter.
    Rejected { status: u16, body: String },
    /// 3xx: the integration's URL points somewhere else (no redirect is followed: see
    /// [`crate::oncall`]). A configuration problem: the alert stays queued until the URL is
    /// fixed. `to` is where it points, redacted.
    Redirected { status: u16, to: String },
}

/// The most of an answer's body kept (dead letters keep the first 512 bytes of it).
pub const BODY_KEEP: usize = 512;

/// Classifies an HTTP answer. `retry_after` is the raw header, `redirect_to` where a 3xx points
/// (already redacted: [`crate::oncall::redirect_target`]), `body` the start of the body.
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    redirect_to: Option<String>,
    body: &[u8],
) -> Outcome {
    let after = retry_after.and_then(parse_retry_after);
    match status {
        200..=299 => Outcome::Delivered,
        300..=399 => Outcome::Redirected {
            status,
            to: redirect_to.unwrap_or_else(|| "no Location given".to_string()),
        },
        429 => {
            // OnCall's 429 is HTML with no Retry-After; its text is the only way to tell the
            // organization-wide limit from the integration's.
            let text = String::from_utf8_lossy(body).to_ascii_lowercase();
            let scope = if text.contains("multiple integrations") {
                LimitScope::Org
            } else {
                LimitScope::Integration
            };
            Outcome::RateLimited {
                scope,
                retry_after: after,
            }
        }
        408 | 500..=599 => Outcome::Retry {
            reason: format!("OnCall answered {status}"),
            after,
            answered: true,
            reached: true,
        },
        _ => Outcome::Rejected {
            status,
            body: truncate_utf8(body, BODY_KEEP),
        },
    }
}

/// Why OnCall refused an alert, in words for the dead letter (its answer is kept beside it).
pub fn rejection_reason(status: u16, body: &str) -> String {
    // The engine's 400 for an inbound URL whose kind is not its integration's type:
    // "This url is for integration with <Kind>. Key is for <Kind>".
    if status == 400 && body.contains("This url is for integration with") {
        return "OnCall refused the alert with 400: this URL's kind does not match the integration (fix the kind in the URL: `check-config --online` with [api] set compares them)".to_string();
    }
    format!("OnCall refused the alert with {status}")
}

/// `Retry-After`: delay-seconds or an HTTP date. Unbounded here (any u64 of seconds parses):
/// the dispatcher and the API client clamp it to their own bounds.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn truncate_utf8(b: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(max)]);
    s.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oncall_answers_map_to_outcomes() {
        assert_eq!(classify(200, None, None, b"\"Ok.\""), Outcome::Delivered);
        assert!(matches!(
            classify(503, None, None, b""),
            Outcome::Retry { after: None, .. }
        ));
        assert!(matches!(
            classify(408, None, None, b""),
            Outcome::Retry { .. }
        ));
        assert_eq!(
            classify(
                403,
                None,
                None,
                b"\"Integration key was not found. Permission denied.\""
            ),
            Outcome::Rejected {
                status: 403,
                body: "\"Integration key was not found. Permission denied.\"".into()
            }
        );
    }

    #[test]
    fn oncall_429_text_names_the_scope() {
        let org = b"<html>Rate-limit exceeded: too many alerts were sent from multiple integrations of your organization</html>";
        let int = b"<html>Rate-limit exceeded: too many alerts were sent from your formatted_webhook integration</html>";
        assert_eq!(
            classify(429, None, None, org),
            Outcome::RateLimited {
                scope: LimitScope::Org,
                retry_after: None
            }
        );
        assert_eq!(
            classify(429, None, None, int),
            Outcome::RateLimited {
                scope: LimitScope::Integration,
                retry_after: None
            }
        );
        assert_eq!(
            classify(429, Some("7"), None, int),
            Outcome::RateLimited {
                scope: LimitScope::Integration,
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn a_redirect_is_not_a_delivery() {
        for status in [301, 302, 303, 307, 308] {
            assert_eq!(
                classify(status, None, Some("https://h/***".into()), b""),
                Outcome::Redirected {
                    status,
                    to: "https://h/***".into()
                }
            );
        }
    }

    #[test]
    fn a_kind_mismatch_is_named_in_the_dead_letter() {
        let body = "This url is for integration with Formatted Webhook. Key is for Alertmanager";
        assert!(rejection_reason(400, body).contains("kind does not match"));
        assert_eq!(
            rejection_reason(400, "bad"),
            "OnCall refused the alert with 400"
        );
    }

    #[test]
    fn an_overlong_retry_after_parses_without_overflow() {
        assert_eq!(
            parse_retry_after("18446744073709551615"),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        let d = parse_retry_after(&in_a_minute).unwrap();
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(61),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    proptest::proptest! {
        /// Every part of an answer is network input: any status, Retry-After and body
        /// classify without a panic, a kept body stays bounded, and a parsed Retry-After of
        /// any size is a plain Duration (the dispatcher clamps it; nothing here adds to it).
        #[test]
        fn any_answer_classifies_without_panic(
            status in 100u16..1000,
            retry_after in proptest::option::of(".{0,40}|[0-9]{1,30}"),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
        ) {
            let o = classify(status, retry_after.as_deref(), None, &body);
            match o {
                Outcome::Rejected { body, .. } => proptest::prop_assert!(body.len() <= 3 * BODY_KEEP),
                Outcome::Delivered => proptest::prop_assert!((200..300).contains(&status)),
                Outcome::Redirected { .. } => proptest::prop_assert!((300..400).contains(&status)),
                _ => {}
            }
            if let Some(v) = &retry_after {
                let _ = parse_retry_after(v);
            }
        }
    }

    #[test]
    fn rejected_body_is_bounded() {
        let big = vec![b'x'; 10_000];
        match classify(400, None, None, &big) {
            Outcome::Rejected { body, .. } => assert_eq!(body.len(), BODY_KEEP),
            o => panic!("{o:?}"),
        }
    }
}
