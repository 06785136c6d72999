//! OnCall's rate limits, kept on the client side: [`limiter`] holds each scope's budget (N
//! requests in any interval of the window, counted where OnCall counts them, persisted in
//! sled), and [`learn`] learns OnCall's real windows from its 429s when OnCall is stricter
//! than the configured budget. The sender spends the alert scopes (each integration and the
//! organization), the API client its own (`Scope::Api`); neither module knows either caller.

pub(crate) mod learn;
pub(crate) mod limiter;

pub use learn::WIDEST_FIRST;
pub use limiter::{Limiter, LimiterSet, Scope, Slot};
