//! What the sender publishes about itself after each turn, for `observe` to read: the
//! dispatcher writes, nothing here reads back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::config::Rate;

/// One budget (an integration's or the organization's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScopeStatus {
    /// The budget (shown as "300/5m"); `None` before the sender's first turn.
    pub limit: Option<Rate>,
    /// Requests that may count in the current window.
    pub used: u64,
    /// Seconds until a request may go out in this scope (0 = now).
    pub next_free_in_s: f64,
    /// Seconds until the pause after a 429 ends (or the next probe), if paused.
    pub paused_for_s: Option<f64>,
    /// Why it is paused.
    pub paused_reason: Option<String>,
    /// 429 answers counted against this scope since start.
    pub rate_limited_total: u64,
    /// Requests per window OnCall was seen to take here, once learned from its 429s.
    #[serde(default)]
    pub learned_limit: Option<u32>,
    /// Seconds until OnCall's next window begins here, once learned.
    #[serde(default)]
    pub learned_reset_in_s: Option<f64>,
}

/// Everything the sender knows about one integration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SenderStatus {
    /// The URL with its token redacted.
    pub url: String,
    pub configured: bool,
    pub delivered_total: u64,
    pub retried_total: u64,
    pub dead_lettered_total: u64,
    /// Heartbeats OnCall accepted.
    pub heartbeats_total: u64,
    pub in_flight: u64,
    /// The latest failure, in words (never holds the token).
    pub last_error: Option<String>,
    /// Seconds until the next attempt is allowed, when something is waiting.
    pub next_attempt_in_s: Option<f64>,
    pub budget: ScopeStatus,
    /// Sum of delivery latencies (seconds) and their count, for the metrics.
    pub latency_sum_s: f64,
    /// Delivery latencies by bucket upper bound (see `LATENCY_BUCKETS`).
    pub latency_buckets: Vec<u64>,
}

/// Upper bounds (seconds) of the delivery latency histogram.
pub const LATENCY_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The sender's half of the status, published by the dispatcher after each turn.
#[derive(Debug, Clone, Default)]
pub struct SenderBoard {
    pub at: Millis,
    pub integrations: BTreeMap<String, SenderStatus>,
    pub org: ScopeStatus,
    /// The fleet's shared budgets, with `[fleet]`.
    pub fleet: Option<crate::fleet::FleetStatus>,
}

/// Where the dispatcher publishes its board; `observe` holds the receiving end.
pub type BoardTx = tokio::sync::watch::Sender<SenderBoard>;
