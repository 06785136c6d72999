//! `[[source]] type = "file"`: lines appended to files become alerts. This module owns which
//! files are followed, where reading stands in each, and how rotation is followed.
//!
//! **No line lost, none repeated.** A file's read position (offset, line number and a
//! fingerprint of its first bytes) is saved in sled in the same atomic write as the alerts read
//! up to it ([`Ingest::commit`] with metadata), and the position in memory moves only once that
//! write is durable. A crash at any point therefore resumes at a position that matches the
//! queue exactly. Lines that cannot be forwarded (too long, not JSON, too big once formatted)
//! are recorded as dead letters (durably, just before that commit: a crash in between can
//! record one twice, never lose it), counted in `/v1/status` and logged.
//!
//! **Which file is which.** A file is known by its device and inode, checked against a
//! fingerprint (a hash of its first bytes, up to [`FP_MAX`]) because a deleted file's inode can
//! be reused. Saved positions are keyed by source path and inode, so on start, and whenever the
//! folder changes, each followed file is found again wherever it now is:
//! - rename-and-create: the old inode no longer matches the path. It is read to its end (the
//!   writer may still append for a moment: it is kept [`ROTATE_WAIT`] after that), then
//!   forgotten; the new file is read from its start. Retired files are always read before the
//!   others, so an old file's last lines go before its successor's first.
//! - copytruncate: the file shrank (or its first bytes changed). The copy (a file in the folder
//!   with the same fingerprint and at least the old length) is read from the old position to its
//!   end, and the original again from 0. Without a copy, reading restarts at 0.
//! - deletion: the open file is still read to its end, then forgotten.
//! - replaced by another file of the same name: a different inode, or the same inode with
//!   another fingerprint; the newcomer is read from 0.
//!
//! The same reasoning runs at start for a rotation that happened while the agent was stopped:
//! the rotated file is found by inode (or, for copytruncate, by fingerprint) in the same folder
//! and finished. A rotated file that was also compressed or moved to another folder while the
//! agent was stopped cannot be found; that is reported (WARN with the line number).
//!
//! **Symbolic links** are followed only to a regular file in the watched folder itself (after
//! every link is resolved): `current.log -> app-2024-06-01.log` is read, a link to anything
//! outside the folder is refused with one ERROR and never opened. Whoever can write in a
//! tailed folder could otherwise make the agent read any file it can read (its own
//! credentials among them) and send its lines to OnCall. A followed file that becomes such a
//! link counts as rotated away: it is read to its end, and the link is not. The file is opened
//! without following a link at its last step, so a swap between the check and the open fails.
//!
//! **Lines.** A line is read only once its newline is there. Blank lines are skipped. `\r`
//! before the newline is dropped. A line longer than `max_line` is never held in memory: it is
//! skipped to its newline and recorded with its first [`DEAD_PREFIX`] bytes.
//!
//! **A full queue** is waited out: the position does not move, the same lines are read again a
//! second later, fewer per chunk each time the queue refuses them for lack of room (the writer
//! takes a commit whole or not at all), down to one line.
//!
//! Bounds: [`MAX_FILES`] followed files per source, [`MAX_LISTING`] folder entries looked at per
//! listing, one read of at most `max(READ_CHUNK, max_line + 1)` bytes per commit.
//!
//! [`Ingest::commit`]: crate::queue::Ingest::commit
//! [`DEAD_PREFIX`]: super::commit::DEAD_PREFIX

mod format;
mod lines;
mod run;
#[cfg(test)]
mod tests;
mod track;

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::commit::Refused;
use crate::config::FileSource;
use crate::queue::Store;
use crate::queue::StoreError;
use crate::queue::store::MetaEntry;
use crate::queue::writer::Alert;
pub use format::text_uid;
pub use run::run;
use track::FileId;

/// Bytes read per commit (more when `max_line` needs it). 1 MiB is ~5,000 lines of 200 bytes:
/// few enough fsyncs for 50,000 lines/s, small enough to keep memory flat.
const READ_CHUNK: usize = 1024 * 1024;

/// Bytes of a file's start its fingerprint covers.
pub const FP_MAX: u64 = 256;

/// How long a rotated-away or deleted file is still read after its name stopped pointing at it.
pub const ROTATE_WAIT: Duration = Duration::from_secs(5);

/// Files followed at once by one source; more are left for later (and reported).
pub const MAX_FILES: usize = 1024;

/// Folder entries looked at per listing.
pub const MAX_LISTING: usize = 100_000;

/// Where reading stands in one file: everything before `offset` is in the queue (or a dead
/// letter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pos {
    pub offset: u64,
    /// Complete lines before `offset` (for messages: "line 12 of ...").
    pub line: u64,
    /// How many of the first bytes `fp` covers (at most [`FP_MAX`], at most `offset`).
    pub fp_len: u64,
    pub fp: u64,
}

/// One file being followed.
struct Tracked {
    id: FileId,
    path: PathBuf,
    file: File,
    /// Committed position.
    pos: Pos,
    /// Set once its name no longer points at it (rotated away or deleted): from this instant
    /// on, it is forgotten as soon as it is read to its end.
    retired: Option<Instant>,
    /// A line longer than `max_line` being skipped: its start and how far it was scanned
    /// without finding its end (in memory only: after a crash it is scanned again).
    long: Option<(u64, u64)>,
    /// Dead letters for lines before this offset were already written (by a commit that
    /// then failed and is being retried): not again.
    dead_done_to: u64,
}

/// The result of one read: alerts and the position they take the file to, committed together.
pub struct Chunk {
    id: FileId,
    pub alerts: Vec<Alert>,
    pub refused: Vec<Refused>,
    /// Saved positions to write with the alerts (empty value: forget that file).
    pub meta: Vec<MetaEntry>,
    /// The file's position once committed.
    pos: Pos,
    /// The file is finished: stop following it.
    forget: bool,
    /// A rotated copy to follow from now on (copytruncate).
    adopt: Option<Tracked>,
    /// Offset up to which dead letters are in `refused`.
    dead_to: u64,
}

/// The blocking half of a file source: listing, opening and reading. The async [`run()`] loop
/// commits what it produces.
pub struct Tailer {
    src: FileSource,
    store: Arc<Store>,
    max_body: usize,
    prefix: Vec<u8>,
    files: Vec<Tracked>,
    buf: Vec<u8>,
    /// Round-robin start among files that are not retired.
    cursor: usize,
    /// A warning about MAX_FILES was given.
    warned_full: bool,
    /// Matching files that could not be opened, reported once each.
    unreadable: HashSet<PathBuf>,
    /// Matching names that are links out of the folder, reported once each.
    refused_links: HashSet<PathBuf>,
    /// Most lines per chunk: unbounded (the read buffer bounds it) until the queue refuses a
    /// chunk for lack of room, see [`Tailer::shrink`].
    max_lines: usize,
}

/// Trouble reading: the folder or a file cannot be read, or the saved positions not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the saved read positions: {0}")]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TailError + '_ {
    move |source| TailError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
pub(super) fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
