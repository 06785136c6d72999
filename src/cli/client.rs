//! What the commands share: loading the config, asking the running daemon (status, admin
//! API) and the OnCall API, and printing.

use std::time::Duration;

use super::exit::{CliError, Exit};
use crate::config::Config;
use crate::local;
use crate::observe::StatusReport;

pub(super) fn load(path: &std::path::Path) -> Result<Config, CliError> {
    Config::load(path).map_err(|e| CliError::new(Exit::Config, e.to_string()))
}

/// The config as the client commands need it: listeners and names, not the secret files.
pub(super) fn load_client(path: &std::path::Path) -> Result<Config, CliError> {
    Config::load_without_secrets(path).map_err(|e| CliError::new(Exit::Config, e.to_string()))
}

/// One `/v1/status` request to the running daemon.
pub(super) async fn fetch_status(
    config: &Config,
    timeout: Duration,
) -> Result<StatusReport, CliError> {
    let answer = local::request(
        config,
        hyper::Method::GET,
        "/v1/status",
        Vec::new(),
        timeout,
    )
    .await
    .map_err(|e| CliError::new(Exit::Unavailable, format!("{e} (is the daemon running?)")))?;
    if answer.status != 200 {
        return Err(CliError::new(
            Exit::Software,
            format!("the agent answered {}", answer.status),
        ));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|e| CliError::new(Exit::Software, format!("unexpected status answer: {e}")))
}

/// An API client for one command: the budget in memory (the daemon holds the database), the
/// operator's patience as the wait bound.
pub(super) fn api_client(config: &Config) -> Result<crate::api::ApiClient, CliError> {
    use crate::api::{ApiClient, Budget, HttpApi, Policy};
    let Some(api) = &config.api else {
        return Err(CliError::new(
            Exit::Config,
            format!(
                "{} has no [api] section: set api.url and an API token (see config/oncall-agent.toml)",
                config.path.display()
            ),
        ));
    };
    let transport = HttpApi::new(config.delivery.timeout)
        .map_err(|e| CliError::new(Exit::Software, format!("cannot start an HTTP client: {e}")))?;
    ApiClient::new(
        api,
        std::sync::Arc::new(transport),
        Budget::memory(api.rate),
        crate::clock::Clock::system(),
        Policy::interactive(config.delivery.timeout),
    )
    .map_err(|e| api_failure(&e))
}

/// The exit code and message for an API call that failed.
pub(super) fn api_failure(e: &crate::api::ApiError) -> CliError {
    use crate::api::ApiError as E;
    let code = match e {
        E::Token(_) => Exit::Config,
        E::Refused { .. } => Exit::NoPerm,
        E::NotFound { .. } => Exit::DataErr,
        E::RateLimited { .. } | E::BudgetSpent { .. } => Exit::TempFail,
        E::Unavailable { .. } => Exit::Unavailable,
        E::Status { .. } | E::Protocol { .. } => Exit::Protocol,
        E::Budget(_) => Exit::Software,
    };
    CliError::new(code, e.to_string())
}

/// One admin request over the Unix socket; the answer's JSON on 2xx, the reason otherwise.
pub(super) async fn admin(
    config: &Config,
    method: hyper::Method,
    path: &str,
) -> Result<serde_json::Value, CliError> {
    if config.listen.unix.is_none() {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "{}: the admin API is served only on the Unix socket; set listen.unix",
                config.path.display()
            ),
        ));
    }
    let answer = local::request(config, method, path, Vec::new(), Duration::from_secs(60))
        .await
        .map_err(|e| CliError::new(Exit::Unavailable, format!("{e} (is the daemon running?)")))?;
    let value: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let reason = value
        .get("error")
        .and_then(|e| e.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).trim().to_string());
    match answer.status {
        200..=299 => Ok(value),
        404 | 409 | 400 => Err(CliError::new(Exit::DataErr, reason)),
        503 => Err(CliError::new(Exit::TempFail, reason)),
        s => Err(CliError::new(
            Exit::Software,
            format!("the agent answered {s}: {reason}"),
        )),
    }
}

pub(super) fn integration_query(name: &Option<String>) -> Result<String, CliError> {
    match name {
        None => Ok(String::new()),
        Some(n) if crate::config::valid_name(n) => Ok(format!("integration={n}")),
        Some(n) => Err(CliError::new(
            Exit::Usage,
            format!("{n:?} is not an integration name"),
        )),
    }
}

pub(super) fn when(t: crate::clock::Millis) -> String {
    if t == 0 {
        return "-".to_string();
    }
    let at = std::time::UNIX_EPOCH + Duration::from_millis(t);
    humantime::format_rfc3339_seconds(at).to_string()
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, CliError> {
    serde_json::from_value(v)
        .map_err(|e| CliError::new(Exit::Software, format!("unexpected answer: {e}")))
}

pub(super) fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| e.to_string())
    );
}
