//! The CLI's way to the running daemon: one HTTP request over the Unix socket (preferred: its
//! file permissions are the access control) or the loopback TCP port.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the agent is not reachable at {at}: {reason}")]
    Unreachable { at: String, reason: String },
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the agent's answer could not be read: {0}")]
    Protocol(String),
}

/// An answer from the daemon.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<String>,
}

/// Sends one request to the daemon named by `config`'s listeners.
pub async fn request(
    config: &Config,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer, LocalError> {
    tokio::time::timeout(timeout, request_inner(config, method, path, body))
        .await
        .map_err(|_| LocalError::Timeout(timeout))?
}

async fn request_inner(
    config: &Config,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Answer, LocalError> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = &config.listen.auth_token
        && config.listen.unix.is_none()
    {
        req = req.header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", t.expose()),
        );
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| LocalError::Protocol(e.to_string()))?;
    let unreachable = |at: &str, e: std::io::Error| LocalError::Unreachable {
        at: at.to_string(),
        reason: e.to_string(),
    };
    if let Some(path) = &config.listen.unix {
        let at = path.display().to_string();
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| unreachable(&at, e))?;
        exchange(stream, req, at).await
    } else if let Some(addr) = config.listen.tcp {
        let at = addr.to_string();
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(&at, e))?;
        exchange(stream, req, at).await
    } else {
        Err(LocalError::Unreachable {
            at: "nowhere".into(),
            reason: "the config sets neither listen.unix nor listen.tcp".into(),
        })
    }
}

async fn exchange<S>(
    stream: S,
    req: hyper::Request<Full<Bytes>>,
    at: String,
) -> Result<Answer, LocalError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| LocalError::Unreachable {
            at,
            reason: e.to_string(),
        })?;
    tokio::spawn(conn);
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| LocalError::Protocol(e.to_string()))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| LocalError::Protocol(e.to_string()))?
        .to_bytes()
        .to_vec();
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}
