//! What the agent says about itself: the `/v1/status` report ([`status`]) and the metrics
//! ([`metrics`]), both built from the snapshots the parts publish (the sender's board on a watch
//! channel, the sources' board, the queue's counters). Nothing imports `observe` back: the
//! parts own their snapshot types, and `observe` only reads them.

pub(crate) mod metrics;
pub(crate) mod status;

pub use status::{DiskStatus, IntegrationReport, Reporter, StatusReport};
