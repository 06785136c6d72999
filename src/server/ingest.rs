//! Alerts over HTTP: `POST /v1/integrations/{name}/alerts`, and OnCall's own inbound paths
//! (`/integrations/v1/{kind}/{name}/`) so that a tool pointed at OnCall can point here.

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, HttpState};
use crate::alert::parse_alert;
use crate::queue::writer::{Alert, IngestError};

pub(super) async fn post_alert(
    State(st): State<HttpState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    accept(st, name, headers, body).await
}

pub(super) async fn post_alias(
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
    let key = parse_alert(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.describe("the body")))?;
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
