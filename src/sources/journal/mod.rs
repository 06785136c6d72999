//! `[[source]] type = "journal"`: entries of the systemd journal become formatted_webhook alerts.
//! This module owns the `journalctl` child that reads them, where reading stands (the cursor),
//! and how an entry becomes an alert.
//!
//! **Reading.** A `journalctl --follow --output=json` child (what Vector's journald source does:
//! no C library, and the journal's own matching and priority filters) writes one entry per line.
//! A reader thread spawns it, reads its lines (each at most `max_line` bytes: a longer one is
//! never held, only its first [`DEAD_PREFIX`] bytes and its cursor) and hands them to the
//! source's task over a channel of [`CHANNEL`] lines. The thread is tied to the child: the
//! child gets SIGKILL when the thread's process dies (`PR_SET_PDEATHSIG`), so a kill -9 of the
//! agent leaves no `journalctl` behind, and the task kills it on shutdown.
//!
//! **No entry lost, none repeated.** The task commits what is waiting (up to [`BATCH_MAX`]
//! entries or [`BATCH_BYTES`]) in one atomic write with the cursor of the last of them
//! ([`Ingest::commit`] with metadata, as file offsets are); the cursor in memory moves only once
//! that write is durable. `journalctl` is always started at the committed cursor (`--cursor`,
//! the entry there dropped as already queued), so a crash at any point resumes exactly after
//! the last entry in the queue. Each start first catches up without `--follow`, then follows:
//! journalctl 250 to 257 follows the newest boot only, and would skip entries of an earlier
//! boot written after the cursor (the end of the boot before a reboot). `--after-cursor` is
//! not used: journalctl skips whatever entry comes first, the wrong one when the cursor's own
//! entry no longer matches (after a reboot under --follow, or changed matches). Entries that
//! cannot be forwarded (a line longer than `max_line`, an alert larger than `queue.max_body`)
//! become dead letters, written durably just before that commit (a crash in between can record
//! one twice, never lose it), counted in status and logged.
//!
//! **The first run** (no cursor saved under the source's name) with `start_at = "end"` asks
//! `journalctl --lines=1` for the cursor of the newest matching entry and commits it before
//! following: what was in the journal before is not sent, and nothing written after that moment
//! is missed even if the agent stops before the next entry. With no matching entry at all,
//! reading starts at the journal's beginning (everything that matches is new). With
//! `start_at = "beginning"`, every matching entry the journal still holds is sent.
//!
//! **journalctl failing** (absent, no journal files, no permission to read them, a crash) is an
//! episode: the first failure is logged (ERROR) and shown as the source's `last_error`, and the
//! child is started again after [`RESTART_MIN`], doubling up to [`RESTART_MAX`], without another
//! log line until it works again: it produced an entry, or ran [`HEALTHY`] without exiting.
//!
//! Bounds: [`CHANNEL`] lines in flight (each at most `max_line`), a commit of at most
//! [`BATCH_MAX`] entries or [`BATCH_BYTES`], [`STDERR_KEEP`] bytes of journalctl's error output,
//! titles of [`TITLE_MAX`] characters.
//!
//! [`Ingest::commit`]: crate::queue::Ingest::commit
//! [`DEAD_PREFIX`]: crate::sources::commit::DEAD_PREFIX

mod child;
mod entry;
mod run;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::queue::store::{META_PREFIX, MetaEntry};
pub use run::run;

/// Lines waiting between the reader thread and the committing task. With the default
/// `max_line` (64 KiB) at most 8 MiB, and far less for ordinary entries.
pub const CHANNEL: usize = 128;

/// Most entries committed in one write (one fsync).
pub const BATCH_MAX: usize = 512;

/// Most bytes of `journalctl` output gathered into one commit (a batch stops at the first line
/// past it).
pub const BATCH_BYTES: usize = 1024 * 1024;

/// First wait before `journalctl` is started again after it failed.
pub const RESTART_MIN: Duration = Duration::from_secs(1);

/// Longest wait between two starts of a failing `journalctl` (the wait doubles up to this).
pub const RESTART_MAX: Duration = Duration::from_secs(60);

/// A `journalctl` that ran this long without exiting works again: the failure episode ends.
pub const HEALTHY: Duration = Duration::from_secs(10);

/// Bytes of `journalctl`'s error output kept to say why it failed.
pub const STDERR_KEEP: usize = 1024;

/// Characters of the entry's message kept in the alert's title (the whole message is in the
/// alert's message).
pub const TITLE_MAX: usize = 256;

/// Longest cursor accepted (journalctl's are about 130 bytes).
const CURSOR_MAX: usize = 512;

/// Bytes `journalctl`'s output is read by.
const READ_BUF: usize = 64 * 1024;

/// The value saved in sled for one journal source; its presence means the source ran before.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Saved {
    /// The cursor of the last entry committed; None when no entry was read yet (reading
    /// starts at the journal's beginning).
    cursor: Option<String>,
}

/// Key of the saved cursor of the journal source named `name`.
fn cursor_key(name: &str) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(b"journal\0");
    k.extend_from_slice(name.as_bytes());
    k
}

fn saved_entry(name: &str, cursor: Option<&str>) -> MetaEntry {
    let v = Saved {
        cursor: cursor.map(str::to_string),
    };
    // A struct of one optional string always serializes.
    (
        cursor_key(name),
        serde_json::to_vec(&v).expect("Saved serializes"),
    )
}

/// A cursor as journalctl writes them: printable ASCII without spaces, bounded.
fn plausible_cursor(c: &str) -> bool {
    !c.is_empty() && c.len() <= CURSOR_MAX && c.bytes().all(|b| b.is_ascii_graphic())
}

/// Where a `journalctl` run starts.
#[derive(Debug, Clone, PartialEq)]
enum Start {
    /// From this cursor's entry on (`--cursor`: that entry itself comes first and is dropped
    /// by the reader; `--after-cursor` would skip whatever entry comes first, the wrong one
    /// when the cursor's entry no longer matches).
    At(String),
    /// From the journal's first matching entry.
    Beginning,
    /// The newest matching entry alone (the first run's starting point).
    Newest,
}

impl Start {
    fn cursor(&self) -> Option<String> {
        match self {
            Start::At(c) => Some(c.clone()),
            _ => None,
        }
    }
}
