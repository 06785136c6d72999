//! How alerts go out: the [`dispatcher`] decides, the [`limiter`] keeps every request inside
//! OnCall's budgets, the [`client`] does HTTP, and [`outcome`] says what an answer means.

pub mod client;
pub mod dispatcher;
pub mod learn;
pub mod limiter;
pub mod outcome;
pub mod report;

pub use client::{HttpTransport, Transport};
pub use dispatcher::{Control, Dispatcher, Jitter, RetryNowReport, SenderConfig};
pub use outcome::{LimitScope, Outcome};
pub use report::{BoardTx, LATENCY_BUCKETS, ScopeStatus, SenderBoard, SenderStatus};
