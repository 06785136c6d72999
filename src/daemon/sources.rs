//! The running `[[source]]`s, with a stop signal of their own so that a reload can replace
//! them without stopping the daemon.

use tokio::sync::watch;

use crate::config::Config;
use crate::observe::Reporter;
use crate::queue::Ingest;

/// The running file and spool sources, with a stop signal of their own so that a reload can
/// replace them without stopping the daemon.
pub(super) struct Sources {
    handles: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Sources {
    pub(super) fn start(config: &Config, ingest: &Ingest, reporter: &Reporter) -> Sources {
        let (stop, stop_rx) = watch::channel(false);
        let handles =
            crate::sources::start(config, ingest, &stop_rx, &reporter.sources, reporter.clock);
        Sources { handles, stop }
    }

    /// Tells the sources to stop (each finishes the commit it is in); their tasks to await.
    pub(super) fn stop(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = self.stop.send(true);
        std::mem::take(&mut self.handles)
    }

    /// Replaces the sources after a reload changed `[[source]]`. The old ones stop first:
    /// their read positions are in the queue database, where the new ones pick them up, and
    /// two sources must never tail one file at once (each would send its lines).
    pub(super) async fn restart(
        &mut self,
        config: &Config,
        ingest: &Ingest,
        reporter: &Reporter,
        wait: std::time::Duration,
    ) {
        let old = self.stop();
        let stopped = tokio::time::timeout(wait, async {
            for h in old {
                let _ = h.await;
            }
        })
        .await;
        if stopped.is_err() {
            tracing::error!(
                "The old [[source]]s did not stop in time; no source runs until the agent is restarted."
            );
            return;
        }
        *self = Sources::start(config, ingest, reporter);
        tracing::info!(
            sources = config.sources.len(),
            "Sources restarted with the new configuration."
        );
    }
}
