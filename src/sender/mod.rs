//! How alerts go out: the [`dispatcher`] decides (within the budgets of `ratelimit`), the
//! [`client`] does HTTP, and [`outcome`] says what an answer means; [`report`] is what the
//! sender publishes about itself.

pub mod client;
pub mod dispatcher;
pub mod outcome;
pub mod report;

pub use client::{HttpTransport, Transport};
pub use dispatcher::{Control, Dispatcher, Jitter, RetryNowReport, SenderConfig};
pub use outcome::{LimitScope, Outcome};
pub use report::{BoardTx, LATENCY_BUCKETS, ScopeStatus, SenderBoard, SenderStatus};
