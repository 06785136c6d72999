//! The local HTTP API, served on the Unix socket and the loopback TCP port: [`listen`] binds
//! and accepts, [`ingest`] takes alerts, [`admin`] serves the dead letters (Unix socket only),
//! and this module composes one router per listener, with the token check, `/healthz`,
//! `/v1/status` and `/metrics`.
//!
//! Ingest answers `202` only once the alert is durable (see `queue::writer`); `503` with
//! `Retry-After` when it cannot take it now (never `429`: Alertmanager treats 429 as final).
//! Every connection is bounded: a count per listener, a deadline for the request headers
//! (which also closes idle keep-alive connections), a deadline and a size cap for the body.

pub(crate) mod admin;
mod ingest;
pub(crate) mod listen;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::observe::Reporter;
use crate::queue::writer::{Ingest, IngestError};
use crate::redact::Secret;
pub use listen::{ConnLimits, bind_unix, serve, serve_reloadable};

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub ingest: Ingest,
    pub reporter: Arc<Reporter>,
    /// Largest accepted body, bytes.
    pub max_body: usize,
    /// Deadline for receiving a whole body.
    pub body_timeout: Duration,
    /// The dispatcher's control channel, for the admin API's `retry-now`.
    pub sender: tokio::sync::mpsc::Sender<crate::sender::Control>,
}

/// Which listener a router serves: the TCP port never serves the admin API, and checks the
/// bearer token when one is configured.
#[derive(Clone)]
pub enum Exposure {
    Unix,
    Tcp { auth_token: Option<Secret<String>> },
}

/// A refused request: status, a reason in words, and how long to wait for a 503.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        let (status, retry) = match &e {
            IngestError::UnknownIntegration(_) => (StatusCode::NOT_FOUND, None),
            IngestError::QueueFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, Some(30)),
            IngestError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
            IngestError::Disk(_) => (StatusCode::SERVICE_UNAVAILABLE, Some(10)),
            IngestError::Closed => (StatusCode::SERVICE_UNAVAILABLE, Some(5)),
        };
        ApiError {
            status,
            message: e.to_string(),
            retry_after: retry,
        }
    }
}

/// The router for one listener.
pub fn router(state: HttpState, exposure: Exposure) -> Router {
    let r = Router::new()
        .route("/v1/integrations/{name}/alerts", post(ingest::post_alert))
        .route("/integrations/v1/{kind}/{name}/", post(ingest::post_alias))
        .route("/integrations/v1/{kind}/{name}", post(ingest::post_alias))
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics));
    let r = match &exposure {
        Exposure::Unix => r.merge(admin::routes()),
        Exposure::Tcp { .. } => r,
    };
    let r = r.with_state(state);
    match exposure {
        Exposure::Tcp {
            auth_token: Some(token),
        } => r.layer(middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        )),
        _ => r,
    }
}

/// Longest `Authorization` header compared with the token, bytes. Far above any sane token
/// (`Bearer ` and a few hundred characters) and far below hyper's header limit: a longer one
/// is refused before any comparison.
pub const MAX_AUTH_HEADER: usize = 4096;

async fn require_token(
    State(token): State<Arc<Secret<String>>>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .filter(|v| v.len() <= MAX_AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| token_matches(g.as_bytes(), token.expose().as_bytes())) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (listen.auth_token)",
        )
        .into_response()
    }
}

/// Compares in time that depends only on the lengths (`subtle`): a different length is a
/// mismatch, whatever the difference; equal lengths are compared without an early exit.
fn token_matches(given: &[u8], token: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(token).into()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// A status report reads sled (the oldest alert of each integration): a blocking thread does
/// it, so a slow disk or a long queue never holds an async worker (and the requests on it).
async fn status(State(st): State<HttpState>) -> Response {
    let reporter = st.reporter.clone();
    match tokio::task::spawn_blocking(move || reporter.report()).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => report_failed(e),
    }
}

/// Like [`status`]: the metrics are built from a status report.
async fn metrics(State(st): State<HttpState>) -> Response {
    let reporter = st.reporter.clone();
    match tokio::task::spawn_blocking(move || crate::observe::metrics::render(&reporter)).await {
        Ok(text) => (
            [(header::CONTENT_TYPE, crate::observe::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => report_failed(e),
    }
}

/// Only a panic gets here (and panics abort the release build).
fn report_failed(e: tokio::task::JoinError) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the report could not be built: {e}"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        assert!(token_matches(b"abcdef", b"abcdef"));
        assert!(!token_matches(b"abcdeg", b"abcdef"));
        assert!(!token_matches(b"abc", b"abcdef"));
        assert!(!token_matches(b"", b"abcdef"));
    }

    #[test]
    fn a_token_followed_by_a_multiple_of_65536_bytes_does_not_match() {
        let token = b"s3cret-token";
        for extra in [65_536usize, 131_072, 256, 1 << 24] {
            let mut given = token.to_vec();
            given.resize(token.len() + extra, 0);
            assert!(!token_matches(&given, token), "{extra} extra NUL bytes");
            given.truncate(token.len());
            given.extend(std::iter::repeat_n(b'x', extra));
            assert!(!token_matches(&given, token), "{extra} extra bytes");
        }
    }

    /// Also seen: `/v1/status` and `/metrics` built their report (which reads sled) on an
    /// async worker, holding every request behind it. Here the report waits on a lock held
    /// by another thread; on the one worker of a current-thread runtime, /healthz must still
    /// be answered meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_status_report_does_not_hold_the_async_worker() {
        use std::sync::mpsc as sync_mpsc;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::queue::Store::open(&dir.path().join("queue"), 8 << 20).unwrap();
        let store = Arc::new(store);
        let clock = crate::clock::Clock::system();
        let (ingest, _writer) = Ingest::start(
            store.clone(),
            ["a".to_string()],
            crate::queue::writer::WriterConfig {
                max_bytes: 1 << 20,
                min_free_space: 0,
                channel_capacity: 4,
                batch_max: 4,
            },
            clock,
        )
        .unwrap();
        let reporter = Arc::new(Reporter {
            store,
            board: tokio::sync::watch::channel(Default::default()).1,
            clock,
            started: clock.now(),
            max_bytes: 1 << 20,
            rates: std::sync::Mutex::default(),
            received: ingest.received().clone(),
            sources: Arc::default(),
        });
        let state = HttpState {
            ingest,
            reporter: reporter.clone(),
            max_body: 1024,
            body_timeout: Duration::from_secs(5),
            sender: tokio::sync::mpsc::channel(1).0,
        };
        let svc = hyper_util::service::TowerToHyperService::new(router(state, Exposure::Unix));
        let get = |path: &str| {
            Request::builder()
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        // Another thread holds what the report needs until told to let go (or 10 s pass).
        let (locked_tx, locked_rx) = sync_mpsc::channel();
        let (release_tx, release_rx) = sync_mpsc::channel::<()>();
        let holder = {
            let reporter = reporter.clone();
            std::thread::spawn(move || {
                let _held = reporter.rates.lock().unwrap();
                locked_tx.send(()).unwrap();
                release_rx.recv_timeout(Duration::from_secs(10)).is_ok()
            })
        };
        locked_rx.recv().unwrap();
        for path in ["/v1/status", "/metrics"] {
            let slow = tokio::spawn(hyper::service::Service::call(&svc, get(path)));
            // Let the report start (and, if it ran here, block this thread).
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let health = hyper::service::Service::call(&svc, get("/healthz"))
                .await
                .unwrap();
            assert_eq!(health.status(), StatusCode::OK);
            assert!(!slow.is_finished(), "{path} did not wait for the lock");
        }
        release_tx.send(()).unwrap();
        assert!(
            holder.join().unwrap(),
            "/healthz was answered only after the report's lock was given up"
        );
    }
}
