//! How alerts go out: the [`dispatcher`] decides (within the budgets of `ratelimit`), the
//! [`client`] does HTTP, and [`outcome`] says what an answer means; [`report`] is what the
//! sender publishes about itself.

pub(crate) mod client;
pub(crate) mod dispatcher;
pub(crate) mod outcome;
pub(crate) mod report;

pub use client::{DeliverFuture, HttpTransport, Transport};
pub use dispatcher::{
    Control, DispatchError, Dispatcher, Jitter, RetryNowReport, SenderConfig, Target, fleet_budgets,
};
pub use outcome::{LimitScope, Outcome, classify};
pub use report::{BoardTx, LATENCY_BUCKETS, ScopeStatus, SenderBoard, SenderStatus};
