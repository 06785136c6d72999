//! What each source publishes about itself, for `observe` to read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One `[[source]]` (a tailed path, the spool folder, a journal source) as `/v1/status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceStatus {
    /// "file", "spool" or "journal".
    pub kind: String,
    /// The path as configured (a journal source: its name).
    pub path: String,
    /// Files being followed (file) or waiting to be read (spool); a journal source: 1 while
    /// its journalctl runs, else 0.
    pub files: u64,
    /// Alerts it put in the queue since start.
    pub alerts_total: u64,
    /// Lines or files it could not forward since start: tailed lines went to the dead
    /// letters, spool files to `failed/`.
    pub refused_total: u64,
    /// Why the latest one was refused.
    pub last_refused: Option<String>,
    /// The latest trouble reading or queueing (cleared by the next success).
    pub last_error: Option<String>,
}

/// The sources' half of the status, keyed by `"<kind> <path>"`, updated by each source.
pub type SourceBoard = Arc<Mutex<BTreeMap<String, SourceStatus>>>;

/// Returns a function through which one source updates its entry on the board (created on
/// first use with its kind and path).
pub fn source_reporter(
    board: SourceBoard,
    kind: &'static str,
    path: &std::path::Path,
) -> impl Fn(&dyn Fn(&mut SourceStatus)) + use<> {
    let name = format!("{kind} {}", path.display());
    let path = path.display().to_string();
    move |f: &dyn Fn(&mut SourceStatus)| {
        // The board's lock is only poisoned by a panic (and release builds abort on panic).
        let mut b = board.lock().expect("sources lock");
        let s = b.entry(name.clone()).or_insert_with(|| SourceStatus {
            kind: kind.into(),
            path: path.clone(),
            ..Default::default()
        });
        f(s);
    }
}
