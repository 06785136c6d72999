//! The count of alerts made durable, by source and integration: kept by [`super::Ingest`],
//! read by the metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Labels of the received counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceivedLabels {
    /// "unix", "tcp", "internal" (the agent's own alerts), or a file source's name.
    pub source: String,
    pub integration: String,
}

/// Alerts made durable, by source and integration. Cheap to clone; clones share the counts.
/// Bounded: sources are a fixed set and integration names are checked before counting.
#[derive(Clone, Debug, Default)]
pub struct Received(Family<ReceivedLabels, Counter>);

impl Received {
    pub fn inc(&self, source: &str, integration: &str) {
        self.0
            .get_or_create(&ReceivedLabels {
                source: source.to_string(),
                integration: integration.to_string(),
            })
            .inc();
    }

    /// The count for one (source, integration), for tests and status.
    pub fn get(&self, source: &str, integration: &str) -> u64 {
        self.0
            .get(&ReceivedLabels {
                source: source.to_string(),
                integration: integration.to_string(),
            })
            .map_or(0, |c| c.get())
    }

    /// The counter family itself, for a metrics registry (clones share the counts).
    pub fn family(&self) -> Family<ReceivedLabels, Counter> {
        self.0.clone()
    }
}
