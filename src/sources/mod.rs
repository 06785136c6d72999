//! The `[[source]]`s: alerts the agent reads for itself (the HTTP API is `server`). Every
//! source hands alerts to `queue::Ingest` and never writes alerts to sled itself.
//!
//! - [`file`]: `[[source]] type = "file"`, lines appended to files, rotation followed; the read
//!   position is committed in the same atomic write as the alerts read up to it. One file per
//!   role: `track` (which file is which, rotation), `lines` (line framing), `format` (a line as
//!   an alert), `run` (the task and its commits).
//! - [`spool`]: `[[source]] type = "spool"`, one alert per file dropped in a folder; also where
//!   `send` leaves an alert when the daemon does not answer. `folder` (the shared folders,
//!   `write_spool`), `read` (listing and reading), `run` (the task).
//! - [`journal`]: `[[source]] type = "journal"`, systemd journal entries read through a
//!   `journalctl` child; the cursor is committed in the same atomic write as the alerts.
//!   `child` (journalctl and its output), `entry` (an entry as an alert), `run` (the task).
//! - [`watch`]: the inotify wake-ups both share, with a slow poll as the safety net.
//! - [`commit`]: what they share on the way to a commit (dead letters, pacing of retries);
//!   [`report`]: what each publishes for the status. [`SourceContext`] is what each is given.

pub(crate) mod commit;
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

/// How a source updates its entry on the [`SourceBoard`] (see [`source_reporter`]); boxed so
/// that a source's state can hold it.
pub type Report = Box<dyn Fn(&dyn Fn(&mut SourceStatus)) + Send + Sync>;

/// What every source task is given (vector's `SourceContext`): where its alerts go, how big
/// one may be, when to stop, where it reports, and the clock.
#[derive(Clone)]
pub struct SourceContext {
    /// Where the source hands its alerts and read positions (tagged with its kind, see
    /// [`Ingest::for_source`]); dropped when the source stops, which the writer waits for.
    pub ingest: Ingest,
    /// `queue.max_body`: the file and journal sources build their own payloads, so they check
    /// the limit the HTTP source's body has.
    pub max_body: usize,
    /// Turns true when the source must stop (after the commit it is in, if any).
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The sources' half of the status; each source keeps its own entry (see
    /// [`SourceContext::reporter`]).
    pub board: SourceBoard,
    /// Stamps the dead letters of refused lines and journal entries (injected in tests).
    pub clock: Clock,
}

impl SourceContext {
    /// The function through which the source `kind` reading `path` updates its entry on the
    /// board.
    pub fn reporter(&self, kind: &'static str, path: &std::path::Path) -> Report {
        Box::new(source_reporter(self.board.clone(), kind, path))
    }
}

/// Starts every configured `[[source]]`. Each task stops when `stop` turns true (after the
/// commit it is in, if any) and drops its [`Ingest`] handle, which the writer waits for. A
/// reload that changes `[[source]]` replaces them all (see `daemon`); the spool follows a
/// reload that only changes the integrations by itself. `clock` stamps the dead letters of
/// tailed lines and journal entries.
pub fn start(
    config: &Config,
    ingest: &Ingest,
    stop: &tokio::sync::watch::Receiver<bool>,
    board: &SourceBoard,
    clock: Clock,
) -> Vec<JoinHandle<()>> {
    // Integrations given by id accept alerts before they resolve, so spool folders too.
    let integrations: Vec<String> = config.integration_names();
    let context = |kind: &'static str| SourceContext {
        ingest: ingest.for_source(kind),
        max_body: config.queue.max_body,
        stop: stop.clone(),
        board: board.clone(),
        clock,
    };
    config
        .sources
        .iter()
        .map(|s| match s {
            Source::File(f) => tokio::spawn(file::run(f.clone(), context("file"))),
            Source::Spool(sp) => tokio::spawn(spool::run(
                sp.clone(),
                integrations.clone(),
                context("spool"),
            )),
            Source::Journal(j) => tokio::spawn(journal::run(j.clone(), context("journal"))),
        })
        .collect()
}
