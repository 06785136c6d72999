//! `check-config --online`: is each credential in the config accepted?
//!
//! An integration's token is checked with a GET on its inbound URL: OnCall answers it with an
//! instructions page (200) or 403 for an unknown token, and does not rate-limit it, so the
//! check spends no budget. The API token is checked with one cheap API call.

use std::time::Duration;

use super::client::{TransportError, read_bounded, transport_error};
use crate::redact::Secret;

/// The most of an instructions page read (it is thrown away).
const MAX_PAGE: usize = 256 * 1024;

/// What a GET on an inbound URL says about its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundCheck {
    /// 2xx: the token is known.
    Valid,
    /// 403: OnCall knows no integration with this token (deleted, or a typo).
    Refused,
    /// 3xx: the URL points elsewhere (not followed: the sender would not follow it either, and
    /// an alert's POST must not turn into a GET). `to` is where, redacted.
    Redirected { status: u16, to: String },
    /// Another status (400: the URL's kind does not match the integration's type; 404: not an
    /// OnCall inbound URL).
    Unexpected(u16),
    /// No answer.
    Unreachable(TransportError),
}

impl InboundCheck {
    /// The check's verdict in words (never the URL).
    pub fn describe(&self) -> String {
        match self {
            InboundCheck::Valid => "ok, OnCall knows the token".to_string(),
            InboundCheck::Refused => {
                "REFUSED: OnCall answered 403, it knows no integration with this token (deleted, or a typo in the URL)".to_string()
            }
            InboundCheck::Redirected { status, to } => format!(
                "FAILED: answered {status}, a redirect to {to}: alerts are not sent through redirects; put the URL it points to in the config"
            ),
            InboundCheck::Unexpected(400) => {
                "FAILED: OnCall answered 400 (does the URL's kind match the integration's type?)".to_string()
            }
            InboundCheck::Unexpected(s) => {
                format!("FAILED: answered {s} (is this an OnCall inbound integration URL?)")
            }
            InboundCheck::Unreachable(e) => format!("UNREACHABLE: {e}"),
        }
    }
}

/// A client for the checks (no budget: these GETs are not rate limited). It follows no
/// redirect, like the sender's: a check must see what an alert would see.
pub fn inbound_client(timeout: Duration) -> Result<reqwest::Client, TransportError> {
    crate::oncall::http_client(timeout).map_err(transport_error)
}

/// GET on an inbound URL.
pub async fn check_inbound(client: &reqwest::Client, url: &Secret<reqwest::Url>) -> InboundCheck {
    let mut resp = match client.get(url.expose().clone()).send().await {
        Ok(r) => r,
        Err(e) => return InboundCheck::Unreachable(transport_error(e)),
    };
    let status = resp.status().as_u16();
    if resp.status().is_redirection() {
        let location = resp.headers().get(reqwest::header::LOCATION);
        let to = crate::oncall::redirect_target(resp.url(), location.map(|v| v.as_bytes()));
        return InboundCheck::Redirected { status, to };
    }
    // The page itself does not matter; reading (a bounded part of) it lets the connection be
    // reused, and an error while reading does not change the verdict.
    let _ = read_bounded(&mut resp, MAX_PAGE).await;
    match status {
        200..=299 => InboundCheck::Valid,
        403 => InboundCheck::Refused,
        s => InboundCheck::Unexpected(s),
    }
}
