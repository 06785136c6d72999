//! The admin API (dead letters), served on the Unix socket only: the socket's file
//! permissions are its access control. The TCP port never routes here (see `http::router`).
//!
//! - `GET    /v1/dead?integration=N&limit=100`   list (payloads left out)
//! - `GET    /v1/dead/{id}`                       one dead letter, whole
//! - `POST   /v1/dead/{id}/retry`                 back into the queue
//! - `POST   /v1/dead/retry?integration=N`        every one (of N) back into the queue
//! - `DELETE /v1/dead/{id}`                       purge one
//! - `DELETE /v1/dead?older_than=7d&integration=N` purge those that failed that long ago
//! - `POST   /v1/retry-now?integration=N`         end every backoff, Retry-After and 429
//!   pause (of N, or of all and the organization's); budgets still hold
//!
//! A retry goes through `queue::Ingest` like any new alert: it is in the queue and fsynced
//! before its dead letter is removed, and both happen in one transaction. Retries and purges
//! are serialized, so two operators retrying the same id cannot queue it twice.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::{ApiError, HttpState};
use crate::alert::parse_alert;
use crate::clock::{Millis, ms};
use crate::queue::StoreError;
use crate::queue::store::DeadLetter;
use crate::queue::writer::Alert;

/// Most dead letters one list answer holds.
pub const LIST_MAX: usize = 10_000;
/// Most payload bytes one requeue commit carries (bounds memory during `retry --all`).
const RETRY_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Most alerts one requeue commit carries.
const RETRY_CHUNK_ALERTS: usize = 256;
/// Characters of OnCall's answer shown in a list.
const PREVIEW_CHARS: usize = 160;

/// Retries and purges one at a time (see the module doc).
static ADMIN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/dead", get(list).delete(purge_older))
        .route("/v1/dead/retry", post(retry_all))
        .route("/v1/dead/{id}", get(show).delete(purge_one))
        .route("/v1/dead/{id}/retry", post(retry_one))
        .route("/v1/retry-now", post(retry_now))
}

/// `POST /v1/retry-now`: asks the dispatcher (the only owner of waits) and returns what it
/// freed; 404 for an integration it does not know.
async fn retry_now(
    State(st): State<HttpState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<crate::sender::RetryNowReport>, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let gone = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the sender is not running (the agent is stopping)",
        )
    };
    st.sender
        .send(crate::sender::Control::RetryNow {
            integration: q.integration,
            reply,
        })
        .await
        .map_err(|_| gone())?;
    match answer.await.map_err(|_| gone())? {
        Ok(report) => Ok(axum::Json(report)),
        Err(why) => Err(ApiError::new(StatusCode::NOT_FOUND, why)),
    }
}

/// A dead letter in a list: everything but the payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadSummary {
    pub id: u64,
    pub integration: String,
    pub received_at: Millis,
    pub failed_at: Millis,
    pub attempts: u32,
    pub status: u16,
    pub reason: String,
    /// The start of OnCall's answer.
    pub response: String,
    pub payload_bytes: usize,
}

impl From<&DeadLetter> for DeadSummary {
    fn from(d: &DeadLetter) -> DeadSummary {
        DeadSummary {
            id: d.id,
            integration: d.integration.clone(),
            received_at: d.received_at,
            failed_at: d.failed_at,
            attempts: d.attempts,
            status: d.status,
            reason: d.reason.clone(),
            response: d.response.chars().take(PREVIEW_CHARS).collect(),
            payload_bytes: d.payload.len(),
        }
    }
}

/// `GET /v1/dead`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadList {
    /// Dead letters kept in all (every integration).
    pub total: u64,
    /// Whether more match than `dead_letters` holds.
    pub truncated: bool,
    pub dead_letters: Vec<DeadSummary>,
}

/// A dead letter that a retry left where it was, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub id: u64,
    pub reason: String,
}

/// The answer to a retry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RetryReport {
    /// `(dead letter id, its new queue id)` for each one queued again.
    pub retried: Vec<(u64, u64)>,
    pub skipped: Vec<Skipped>,
    /// Why a `retry --all` stopped early (the queue is full, the agent is stopping).
    pub stopped: Option<String>,
}

/// The answer to a purge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PurgeReport {
    pub purged: u64,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    integration: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct RetryQuery {
    integration: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PurgeQuery {
    older_than: Option<String>,
    integration: Option<String>,
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the queue database failed: {e}"),
    )
}

fn not_found(id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no dead letter with id {id}"),
    )
}

/// Runs blocking sled work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(store_error)
}

async fn list(
    State(st): State<HttpState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<DeadList>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, LIST_MAX);
    let store = st.ingest.store().clone();
    let (mut letters, total) = blocking(move || {
        let l = store.dead_letters_of(q.integration.as_deref(), 0, limit + 1)?;
        Ok((l, store.dead_count() as u64))
    })
    .await?;
    let truncated = letters.len() > limit;
    letters.truncate(limit);
    Ok(axum::Json(DeadList {
        total,
        truncated,
        dead_letters: letters.iter().map(DeadSummary::from).collect(),
    }))
}

async fn show(
    State(st): State<HttpState>,
    Path(id): Path<u64>,
) -> Result<axum::Json<DeadLetter>, ApiError> {
    let store = st.ingest.store().clone();
    blocking(move || store.dead_letter(id))
        .await?
        .map(axum::Json)
        .ok_or_else(|| not_found(id))
}

/// The alert a dead letter becomes again, or why it cannot.
fn revive(st: &HttpState, d: &DeadLetter) -> Result<Alert, String> {
    if !st.ingest.knows(&d.integration) {
        return Err(format!(
            "integration {:?} is not configured (add it back, or purge the dead letter)",
            d.integration
        ));
    }
    let key_hash = parse_alert(d.payload.as_bytes()).map_err(|e| {
        let e = e.describe("the payload");
        format!("its payload cannot be sent again ({e}); purge it once you have read it")
    })?;
    Ok(Alert {
        integration: d.integration.clone(),
        payload: d.payload.clone().into_bytes(),
        key_hash,
    })
}

async fn retry_one(
    State(st): State<HttpState>,
    Path(id): Path<u64>,
) -> Result<axum::Json<RetryReport>, ApiError> {
    let _one_at_a_time = ADMIN.lock().await;
    let store = st.ingest.store().clone();
    let d = blocking(move || store.dead_letter(id))
        .await?
        .ok_or_else(|| not_found(id))?;
    let alert = revive(&st, &d).map_err(|m| ApiError::new(StatusCode::CONFLICT, m))?;
    let ids = st
        .ingest
        .requeue(vec![(id, alert)])
        .await
        .map_err(ApiError::from)?;
    tracing::info!(id, integration = %d.integration, "A dead letter was queued again by an operator.");
    Ok(axum::Json(RetryReport {
        retried: vec![(id, ids.first().copied().unwrap_or_default())],
        ..Default::default()
    }))
}

async fn retry_all(
    State(st): State<HttpState>,
    Query(q): Query<RetryQuery>,
) -> Result<axum::Json<RetryReport>, ApiError> {
    let _one_at_a_time = ADMIN.lock().await;
    let mut report = RetryReport::default();
    let mut after = 0;
    loop {
        let store = st.ingest.store().clone();
        let filter = q.integration.clone();
        let page =
            blocking(move || store.dead_letters_of(filter.as_deref(), after, RETRY_CHUNK_ALERTS))
                .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for d in &page {
            match revive(&st, d) {
                Ok(a) => {
                    bytes += a.payload.len();
                    chunk.push((d.id, a));
                }
                Err(reason) => report.skipped.push(Skipped { id: d.id, reason }),
            }
            if bytes >= RETRY_CHUNK_BYTES || d.id == after {
                let items = std::mem::take(&mut chunk);
                bytes = 0;
                if items.is_empty() {
                    continue;
                }
                let old: Vec<u64> = items.iter().map(|(id, _)| *id).collect();
                match st.ingest.requeue(items).await {
                    Ok(new) => report.retried.extend(old.into_iter().zip(new)),
                    Err(e) => {
                        report.stopped = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        if report.stopped.is_some() {
            break;
        }
    }
    tracing::info!(
        retried = report.retried.len(),
        skipped = report.skipped.len(),
        "Dead letters were queued again by an operator."
    );
    Ok(axum::Json(report))
}

async fn purge_one(
    State(st): State<HttpState>,
    Path(id): Path<u64>,
) -> Result<axum::Json<PurgeReport>, ApiError> {
    let _one_at_a_time = ADMIN.lock().await;
    let store = st.ingest.store().clone();
    let purged = blocking(move || store.purge_dead(&[id])).await?;
    if purged == 0 {
        return Err(not_found(id));
    }
    tracing::warn!(id, "A dead letter was purged by an operator.");
    Ok(axum::Json(PurgeReport { purged }))
}

async fn purge_older(
    State(st): State<HttpState>,
    Query(q): Query<PurgeQuery>,
) -> Result<axum::Json<PurgeReport>, ApiError> {
    let Some(text) = q.older_than else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "give older_than (e.g. 7d); dead letters are never purged without an age",
        ));
    };
    let age: Duration = humantime::parse_duration(&text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("older_than {text:?} is not a duration: {e}"),
        )
    })?;
    let _one_at_a_time = ADMIN.lock().await;
    let before = st.reporter.clock.now().saturating_sub(ms(age));
    let store = st.ingest.store().clone();
    let purged = blocking(move || {
        let ids = store.dead_ids_failed_before(q.integration.as_deref(), before)?;
        store.purge_dead(&ids)
    })
    .await?;
    if purged > 0 {
        tracing::warn!(
            purged,
            older_than = %text,
            "Dead letters were purged by an operator."
        );
    }
    Ok(axum::Json(PurgeReport { purged }))
}
