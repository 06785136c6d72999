//! The `[[source]]`s: alerts the agent reads for itself (the HTTP API is `server`). Every
//! source hands alerts to `queue::Ingest` and never writes alerts to sled itself.
//!
//! - [`file`]: `[[source]] type = "file"`, lines appended to files, rotation followed; the read
//!   position is committed in the same atomic write as the alerts read up to it.
//! - [`spool`]: `[[source]] type = "spool"`, one alert per file dropped in a folder; also where
//!   `send` leaves an alert when the daemon does not answer.
//! - [`journal`]: `[[source]] type = "journal"`, systemd journal entries read through a
//!   `journalctl` child; the cursor is committed in the same atomic write as the alerts.
//! - [`watch`]: the inotify wake-ups both share, with a slow poll as the safety net.

pub(crate) mod file;
pub(crate) mod journal;
pub(crate) mod report;
pub(crate) mod spool;
pub(crate) mod watch;

use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::{Config, Source};
use crate::queue::Ingest;
pub use file::{run as tail_file, text_uid};
pub use report::{SourceBoard, SourceStatus, source_reporter};

/// Starts every configured `[[source]]`. Each task stops when `stop` turns true (after the
/// commit it is in, if any) and drops its [`Ingest`] handle, which the writer waits for. A
/// reload that changes `[[source]]` replaces them all (see `app`); the spool follows a reload
/// that only changes the integrations by itself. `clock` stamps the dead letters of tailed
/// lines.
pub fn start(
    config: &Config,
    ingest: &Ingest,
    stop: &tokio::sync::watch::Receiver<bool>,
    board: &SourceBoard,
    clock: Clock,
) -> Vec<JoinHandle<()>> {
    // Integrations given by id accept alerts before they resolve, so spool folders too.
    let integrations: Vec<String> = config.integration_names();
    config
        .sources
        .iter()
        .map(|s| match s {
            Source::File(f) => tokio::spawn(file::run(
                f.clone(),
                ingest.for_source("file"),
                config.queue.max_body,
                stop.clone(),
                board.clone(),
                clock,
            )),
            Source::Spool(sp) => tokio::spawn(spool::run(
                sp.clone(),
                integrations.clone(),
                ingest.for_source("spool"),
                config.queue.max_body,
                stop.clone(),
                board.clone(),
            )),
            Source::Journal(j) => tokio::spawn(journal::run(
                j.clone(),
                ingest.for_source("journal"),
                config.queue.max_body,
                stop.clone(),
                board.clone(),
                clock,
            )),
        })
        .collect()
}
