//! The HTTP side of delivery: one POST per alert, its answer turned into an [`Outcome`].
//! Request tasks only do HTTP; every decision is the dispatcher's.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::outcome::{Outcome, classify};
use crate::redact::Secret;

/// Most of an answer's body read (enough for OnCall's 429 text and a dead letter's excerpt).
const MAX_ANSWER: usize = 16 * 1024;

pub type DeliverFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Something that delivers one alert. The daemon uses [`HttpTransport`]; simulations plug in
/// an in-process fake OnCall and run on tokio's paused clock.
pub trait Transport: Send + Sync + 'static {
    fn deliver(&self, url: &Secret<reqwest::Url>, body: Vec<u8>) -> DeliverFuture;

    /// One hit on a heartbeat URL. OnCall counts it against the integration's budget like an
    /// alert; by default it is a POST with an empty body, which OnCall answers with 200.
    fn heartbeat(&self, url: &Secret<reqwest::Url>) -> DeliverFuture {
        self.deliver(url, Vec::new())
    }

    /// `delivery.timeout` changed by a reload: requests from now on use it. The limiter counts
    /// an unanswered request until `sent + timeout`, so the timeout a request really has must
    /// be the one the dispatcher assumes.
    fn set_timeout(&self, _timeout: Duration) {}
}

/// reqwest as [`crate::oncall::http_client`] sets it up.
pub struct HttpTransport {
    client: reqwest::Client,
    /// The whole-request timeout in milliseconds, set per request (it follows reloads).
    timeout_ms: std::sync::atomic::AtomicU64,
}

impl HttpTransport {
    /// The client follows no redirect (see [`crate::oncall`]): a 3xx comes back as
    /// [`Outcome::Redirected`].
    pub fn new(timeout: Duration) -> Result<HttpTransport, reqwest::Error> {
        Ok(HttpTransport {
            client: crate::oncall::http_client(timeout)?,
            timeout_ms: crate::clock::ms(timeout).into(),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Transport for HttpTransport {
    fn deliver(&self, url: &Secret<reqwest::Url>, body: Vec<u8>) -> DeliverFuture {
        let req = self
            .client
            .post(url.expose().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(self.timeout())
            .body(body);
        exchange(req)
    }

    /// OnCall answers a GET on the heartbeat URL with `":)"` and records the hit.
    fn heartbeat(&self, url: &Secret<reqwest::Url>) -> DeliverFuture {
        exchange(
            self.client
                .get(url.expose().clone())
                .timeout(self.timeout()),
        )
    }

    fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(
            crate::clock::ms(timeout),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Sends a request and classifies the answer.
fn exchange(req: reqwest::RequestBuilder) -> DeliverFuture {
    {
        Box::pin(async move {
            let mut resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return network_error(e),
            };
            let status = resp.status().as_u16();
            let redirect_to = resp.status().is_redirection().then(|| {
                let location = resp.headers().get(reqwest::header::LOCATION);
                crate::oncall::redirect_target(resp.url(), location.map(|v| v.as_bytes()))
            });
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        body.extend_from_slice(&c[..c.len().min(MAX_ANSWER - body.len())]);
                        if body.len() >= MAX_ANSWER {
                            break;
                        }
                    }
                    Ok(None) => break,
                    // The status is what matters; a body cut short still classifies.
                    Err(_) => break,
                }
            }
            classify(status, retry_after.as_deref(), redirect_to, &body)
        })
    }
}

/// A request that got no answer. reqwest puts the URL (and so the token) in its errors'
/// `Display`: strip it before the error goes anywhere.
fn network_error(e: reqwest::Error) -> Outcome {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    // A connect error (DNS, TCP, TLS handshake, a proxy's refusal) comes before any byte of
    // the request left: OnCall cannot have counted it.
    let reached = !e.is_connect();
    let detail = crate::redact::reqwest_error(e);
    Outcome::Retry {
        reason: format!("request {kind} ({detail})"),
        after: None,
        answered: false,
        reached,
    }
}
