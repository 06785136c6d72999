//! `[[source]] type = "spool"`: a folder where any program drops one alert per file. This module
//! owns the folder's layout, reading it, and [`write_spool`], which `send` uses when the daemon
//! does not answer.
//!
//! Layout: `<path>/<integration>/<anything>.json`, one JSON object per file, written elsewhere
//! (or under a name starting with `.`) and renamed in, so that a file is never read half
//! written. Names starting with `.` and names not ending in `.json` are not read. Files are
//! read in name order ([`write_spool`] names start with the time, so that is arrival order).
//!
//! A file is removed only once its alert is durable in the queue; a crash in between delivers
//! it twice, never zero times. A file that cannot be an alert (not a JSON object, larger than
//! `queue.max_body`, not a regular file) is moved to `<path>/<integration>/failed/` beside a
//! `<name>.error` file that says why.
//!
//! **The spool follows reloads.** Which integrations exist is asked of the queue
//! ([`Ingest::knows`]) at every listing, so an integration added by SIGHUP has its folder read
//! (at the next poll at the latest) and one removed stops being read. Files in the folder of an
//! integration that is not configured stay where they are, with one WARN per folder, and never
//! hold back the other integrations' files; they are read if it is configured again. The agent
//! creates the folders of the integrations configured at start; a folder of one added later is
//! created by the first `send` that spools for it (or by hand).
//!
//! Bounds: [`MAX_LISTING`] entries looked at per folder and listing, [`BATCH`] files per commit,
//! `queue.max_body` bytes read per file.
//!
//! Files: `folder` (creating the group-shared folders, [`write_spool`]), `read` (listing the
//! folders, reading a file as an alert, moving a bad one aside), `run` (the task).
//!
//! [`Ingest::knows`]: crate::queue::Ingest::knows

mod folder;
mod read;
mod run;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use folder::write_spool;
pub use run::run;

/// Folder entries looked at per integration folder and listing.
pub const MAX_LISTING: usize = 10_000;

/// Files committed with one fsync.
pub const BATCH: usize = 256;

/// Folder for files that cannot be alerts, inside each integration's folder.
pub const FAILED_DIR: &str = "failed";

/// Temporary files of a `send` that died mid-write are removed after this long.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// Files whose removal failed, remembered so they are not queued again and again.
const MAX_STUCK: usize = 10_000;
