//! The OnCall HTTP API (`<url>/api/v1/`): listing integrations, resolving those configured by
//! `id` or `api_name`, and checking credentials online.
//!
//! - [`client`] owns the HTTP side: `Authorization` and `X-Grafana-URL`, the client-side API
//!   budget (a `sender::limiter::Limiter`), 429/Retry-After and retries, bounded pagination.
//! - [`model`] parses the API's JSON (bounded, never panics, never quotes a token).
//! - [`resolve`] turns `id` / `api_name` into inbound URLs at start and on reload, with a
//!   cache in sled so the agent starts and forwards while the API is down.
//! - [`check`] is `check-config --online`: a GET on each inbound URL (not rate limited) and one
//!   cheap API call.
//!
//! Alerts never go through the API: they go to inbound integration URLs (`sender`).

pub(crate) mod check;
pub(crate) mod client;
pub(crate) mod model;
pub(crate) mod resolve;

pub use client::{ApiClient, ApiError, Budget, HttpApi, Policy};
pub use model::ApiIntegration;
pub use resolve::Resolver;
