//! The local HTTP API, served on the Unix socket and the loopback TCP port.
//!
//! Ingest answers `202` only once the alert is durable (see `queue::writer`); `503` with
//! `Retry-After` when it cannot take it now (never `429`: Alertmanager treats 429 as final).
//! Every connection is bounded: a count per listener, a deadline for the request headers
//! (which also closes idle keep-alive connections), a deadline and a size cap for the body.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use crate::observe::Reporter;
use crate::queue::envelope::key_hash;
use crate::queue::writer::{Alert, Ingest, IngestError};
use crate::redact::Secret;

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
        .route("/v1/integrations/{name}/alerts", post(post_alert))
        .route("/integrations/v1/{kind}/{name}/", post(post_alias))
        .route("/integrations/v1/{kind}/{name}", post(post_alias))
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics));
    let r = match &exposure {
        Exposure::Unix => r.merge(crate::sources::admin::routes()),
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

async fn post_alert(
    State(st): State<HttpState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    accept(st, name, headers, body).await
}

async fn post_alias(
    State(st): State<HttpState>,
    UrlPath((_kind, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    accept(st, name, headers, body).await
}

async fn accept(
    st: HttpState,
    name: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !st.ingest.knows(&name) {
        return Err(IngestError::UnknownIntegration(name).into());
    }
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is larger than queue.max_body ({} bytes)",
                st.max_body
            ),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > st.max_body as u64
    {
        return Err(too_big());
    }
    let bytes = match tokio::time::timeout(st.body_timeout, axum::body::to_bytes(body, st.max_body))
        .await
    {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            ));
        }
        Ok(Err(e)) => {
            let too_long = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return Err(if too_long {
                too_big()
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            });
        }
        Ok(Ok(b)) => b,
    };
    let key = parse_alert(&bytes).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let alert = Alert {
        integration: name.clone(),
        payload: bytes.to_vec(),
        key_hash: key,
    };
    let id = st.ingest.submit(alert).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": id, "integration": name, "status": "queued" })),
    )
        .into_response())
}

/// The fields that group alerts; everything else is skipped (but still checked as JSON).
#[derive(Deserialize)]
struct GroupingFields {
    #[serde(default)]
    alert_uid: Option<serde_json::Value>,
    #[serde(default, rename = "groupKey")]
    group_key: Option<serde_json::Value>,
}

/// Checks that `body` is one JSON object and returns its grouping key hash. The message of
/// an error says what is wrong with the body, in serde_json's words with line and column.
pub fn parse_alert(body: &[u8]) -> Result<u64, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err("the body must be one JSON object ({...})".to_string());
    }
    let g: GroupingFields =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone().into_bytes()),
        serde_json::Value::Null => None,
        other => Some(other.to_string().into_bytes()),
    };
    let uid = g
        .alert_uid
        .as_ref()
        .and_then(text)
        .or_else(|| g.group_key.as_ref().and_then(text));
    Ok(key_hash(uid.as_deref(), body))
}

/// Limits on the connections of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` turns true; then stops accepting, lets each
/// open connection finish its request, and returns when they are all closed.
pub async fn serve<L>(listener: L, app: Router, limits: ConnLimits, shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
{
    let (_fixed, apps) = watch::channel(app);
    serve_reloadable(listener, apps, limits, shutdown).await
}

/// [`serve`], with the router taken anew for each connection from `apps`: a reload swaps in
/// a router with new settings (auth token, body limits) on the same listening socket.
pub async fn serve_reloadable<L>(
    mut listener: L,
    apps: watch::Receiver<Router>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            _ = shutdown.changed() => break,
        };
        let app = apps.borrow().clone();
        let inner = hyper_util::service::TowerToHyperService::new(app);
        // Stores a permit at the first request, so a stop can tell a fresh connection (whose
        // request may be on its way) from one that has been served.
        let first_request = Arc::new(tokio::sync::Notify::new());
        let seen = first_request.clone();
        let svc = hyper::service::service_fn(move |req| {
            seen.notify_one();
            hyper::service::Service::call(&inner, req)
        });
        let mut stop = shutdown.clone();
        let header_timeout = limits.header_timeout;
        conns.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_headers(100)
                .serve_connection(TokioIo::new(io), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    // A connection accepted just before the stop has not sent its request
                    // yet; closing it now would refuse a sender the listener already took
                    // in. It gets until its header deadline to start one, which is then
                    // answered; a connection that was served before closes when idle.
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = first_request.notified() => {}
                        _ = tokio::time::sleep(header_timeout) => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        // Reap finished connections so the set stays small.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Binds the Unix socket with its mode from the start (no moment where it is more open),
/// after checking its folder and any file already at the path.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> std::io::Result<tokio::net::UnixListener> {
    use std::io::{Error, ErrorKind};
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let dmode = std::fs::metadata(dir)?.permissions().mode();
    if dmode & 0o002 != 0 {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{} is writable by everyone (mode {:o}); anyone could replace the socket. Use a private folder such as /run/oncall-agent",
                dir.display(),
                dmode & 0o7777
            ),
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A live daemon answers; a stale socket refuses.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    format!(
                        "{} is in use by a running process (another oncall-agent?)",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not removing it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // umask is process-wide; this runs at start-up and on nothing else's behalf.
    let old = unsafe { libc::umask(0o777 & !mode as libc::mode_t) };
    let bound = tokio::net::UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(g) = group {
        let gid = resolve_group(g)?;
        std::os::unix::fs::lchown(path, None, Some(gid))?;
    }
    Ok(listener)
}

fn resolve_group(g: &str) -> std::io::Result<u32> {
    if let Ok(n) = g.parse() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(g).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "group name has a NUL")
    })?;
    // getgrnam's result is read before any other call could reuse its static buffer.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no group named {g:?} (listen.unix_group)"),
        ));
    }
    Ok(unsafe { (*gr).gr_gid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grouping_key_prefers_alert_uid_then_group_key() {
        let a = parse_alert(br#"{"alert_uid":"x","title":"1"}"#).unwrap();
        let b = parse_alert(br#"{"alert_uid":"x","title":"2"}"#).unwrap();
        assert_eq!(a, b);
        let c = parse_alert(br#"{"groupKey":"x","status":"firing"}"#).unwrap();
        assert_eq!(a, c);
        let d = parse_alert(br#"{"title":"1"}"#).unwrap();
        let e = parse_alert(br#"{"title":"2"}"#).unwrap();
        assert_ne!(d, e);
    }

    #[test]
    fn non_objects_are_refused_with_a_reason() {
        assert!(parse_alert(b"[1,2]").unwrap_err().contains("JSON object"));
        assert!(parse_alert(b"").unwrap_err().contains("JSON object"));
        assert!(
            parse_alert(b"{\"a\":")
                .unwrap_err()
                .contains("not valid JSON")
        );
        // Skipped fields are checked without recursion: even the deepest nesting that fits in
        // max_body neither overflows the stack nor is refused (it is valid JSON).
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(500_000), "]".repeat(500_000));
        assert!(parse_alert(deep.as_bytes()).is_ok());
        let deep_uid = format!(
            "{{\"alert_uid\":{}{}}}",
            "[".repeat(500_000),
            "]".repeat(500_000)
        );
        assert!(
            parse_alert(deep_uid.as_bytes())
                .unwrap_err()
                .contains("recursion")
        );
    }

    #[tokio::test]
    async fn unix_socket_refuses_an_open_folder_and_foreign_files_and_replaces_a_stale_socket() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind_unix(&open.join("a.sock"), 0o660, None).unwrap_err();
        assert!(e.to_string().contains("writable by everyone"), "{e}");

        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        let file = private.join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let e = bind_unix(&file, 0o660, None).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        // A socket left by a dead process is replaced; its mode is 0660 from the start.
        let path = private.join("a.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let l = bind_unix(&path, 0o660, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A live one is not taken over.
        let e = bind_unix(&path, 0o660, None).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        drop(l);
    }

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
        let get = |path: &str| Request::builder().uri(path).body(Body::empty()).unwrap();
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

    proptest! {
        #[test]
        fn parse_alert_never_panics(bytes: Vec<u8>) {
            let _ = parse_alert(&bytes);
        }

        #[test]
        fn any_json_object_is_accepted(m in proptest::collection::btree_map("[a-z_]{1,8}", any::<i64>(), 0..8)) {
            let body = serde_json::to_vec(&m).unwrap();
            prop_assert!(parse_alert(&body).is_ok());
        }
    }
}
