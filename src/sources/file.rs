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

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::SourceContext;
use super::watch::DirWatch;
use crate::config::{FileSource, LineFormat, StartAt};
use crate::queue::envelope::key_hash;
use crate::queue::store::{DeadLetter, META_PREFIX, MetaEntry};
use crate::queue::writer::{Alert, Ingest, IngestError};
use crate::queue::{Store, StoreError};

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
/// Bytes of a refused line kept in its dead letter.
pub const DEAD_PREFIX: usize = 4096;
/// Wait before retrying a commit the queue refused (full, busy or a disk error).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A file's identity on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

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

/// The value saved in sled for one followed file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    /// Where it was last seen (for messages; the inode in the key is what identifies it).
    path: String,
    #[serde(flatten)]
    pos: Pos,
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

/// A refused line, before it gets its dead-letter id.
#[derive(Debug, Clone)]
pub struct Refused {
    pub reason: String,
    pub payload: String,
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

/// The blocking half of a file source: listing, opening and reading. The async [`run`] loop
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

/// Key prefix of the saved positions of source `path`.
fn key_prefix(path: &Path) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(b"tail\0");
    k.extend_from_slice(path.as_os_str().as_encoded_bytes());
    k.push(0);
    k
}

/// Marks that source `path` has run once: `start_at = "end"` no longer applies.
fn init_key(path: &Path) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(b"tail-init\0");
    k.extend_from_slice(path.as_os_str().as_encoded_bytes());
    k
}

impl Tailer {
    fn key(&self, id: FileId) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(&id.dev.to_be_bytes());
        k.extend_from_slice(&id.ino.to_be_bytes());
        k
    }
}

/// An entry of the folder: a regular file (or a link to one in the folder), and whether its
/// name matches.
struct Entry {
    /// Its name in the folder (the link's, for a link).
    path: PathBuf,
    /// What is opened: `path`, or for a link the file in the folder it resolves to.
    open: PathBuf,
    id: FileId,
    len: u64,
    matched: bool,
    mtime: i64,
}

fn fnv(bytes: &[u8]) -> u64 {
    key_hash(Some(bytes), b"")
}

/// Fingerprint of the first `len` bytes of `file`, or None if it is shorter.
fn fingerprint(file: &File, len: u64) -> std::io::Result<Option<u64>> {
    let mut b = [0u8; FP_MAX as usize];
    let want = len.min(FP_MAX) as usize;
    let mut got = 0;
    while got < want {
        let n = file.read_at(&mut b[got..want], got as u64)?;
        if n == 0 {
            return Ok(None);
        }
        got += n;
    }
    Ok(Some(fnv(&b[..want])))
}

/// Opens a file for reading without blocking on a FIFO or following a link at its last step
/// (a swap to a link after the listing checked it fails with ELOOP).
fn open_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

impl Tailer {
    /// Loads the saved positions and finds each file again (see the module doc). Returns the
    /// tailer and the metadata to commit before anything else (positions of files started at
    /// their end, forgotten files, the first-run mark).
    pub fn open(
        src: FileSource,
        store: Arc<Store>,
        max_body: usize,
    ) -> Result<(Tailer, Vec<MetaEntry>), TailError> {
        let prefix = key_prefix(&src.path);
        let mut t = Tailer {
            buf: vec![0; READ_CHUNK.max(src.max_line + 1)],
            src,
            store,
            max_body,
            prefix,
            files: Vec::new(),
            cursor: 0,
            warned_full: false,
            unreadable: HashSet::new(),
            refused_links: HashSet::new(),
            max_lines: usize::MAX,
        };
        let first_run = t.store.meta(&init_key(&t.src.path))?.is_none();
        let mut meta = Vec::new();
        let listing = t.list()?;
        let saved = t.store.meta_scan(&t.prefix, MAX_FILES * 4)?;
        // First the files found intact where they are (or renamed), then, for the others, a
        // copy (so that a copy never claims a file with a saved position of its own), then the
        // new files.
        let mut lost = Vec::new();
        for (key, value) in saved {
            let Some(id) = key
                .get(t.prefix.len()..)
                .and_then(|r| Some((r.get(..8)?.try_into().ok()?, r.get(8..)?.try_into().ok()?)))
                .map(|(d, i): ([u8; 8], [u8; 8])| FileId {
                    dev: u64::from_be_bytes(d),
                    ino: u64::from_be_bytes(i),
                })
            else {
                continue;
            };
            let Ok(saved) = serde_json::from_slice::<Saved>(&value) else {
                tracing::warn!(source = %t.src.path.display(), "A saved read position is unreadable; it is dropped.");
                meta.push((key, Vec::new()));
                continue;
            };
            let same_content = |e: &Entry| {
                e.len >= saved.pos.offset
                    && open_file(&e.open)
                        .ok()
                        .filter(|f| {
                            saved.pos.fp_len == 0
                                || fingerprint(f, saved.pos.fp_len).ok().flatten()
                                    == Some(saved.pos.fp)
                        })
                        .is_some()
            };
            let here = listing.iter().find(|e| e.id == id);
            // Some file systems number their device anew at each boot: the same inode with
            // the same first bytes is the same file.
            let intact = here.filter(|e| same_content(e)).or_else(|| {
                listing
                    .iter()
                    .find(|e| e.id.ino == id.ino && e.id.dev != id.dev && same_content(e))
            });
            let intact = intact.and_then(|e| Some((e, open_file(&e.open).ok()?)));
            match intact {
                Some((e, file)) => {
                    if !e.matched {
                        tracing::info!(from = %saved.path, to = %e.path.display(), line = saved.pos.line, "A followed file was renamed while the agent was stopped; reading it to its end.");
                    }
                    if e.id != id {
                        meta.push((key, Vec::new()));
                        meta.push(t.saved_entry(e.id, &e.path, saved.pos));
                    }
                    t.files.push(Tracked {
                        id: e.id,
                        path: e.path.clone(),
                        file,
                        pos: saved.pos,
                        // A file renamed away while the agent was stopped is no longer written.
                        retired: (!e.matched).then(Instant::now),
                        long: None,
                        dead_done_to: 0,
                    });
                }
                None => lost.push((key, id, saved, here.is_some())),
            }
        }
        for (key, id, saved, inode_here) in lost {
            // Gone, truncated or replaced: its unread end may be in a copy (copytruncate).
            meta.push((key, Vec::new()));
            match t.find_copy(&listing, &saved.pos, Some(id)) {
                Some(copy) => {
                    tracing::info!(from = %saved.path, copy = %copy.path.display(), line = saved.pos.line, "A followed file was truncated while the agent was stopped; its copy is read from where reading stood.");
                    meta.push(t.saved_entry(copy.id, &copy.path, copy.pos));
                    t.files.push(copy);
                }
                None if inode_here => {
                    tracing::warn!(path = %saved.path, line = saved.pos.line, "A followed file was truncated or replaced while the agent was stopped and no copy of it was found; it is read from its start. Lines written after line {} before that may be missing.", saved.pos.line)
                }
                None => {
                    tracing::warn!(path = %saved.path, line = saved.pos.line, "A followed file disappeared while the agent was stopped (rotated and compressed, moved to another folder, or deleted); lines written to it after line {} were not read.", saved.pos.line)
                }
            }
        }
        for e in listing.iter().filter(|e| e.matched) {
            if t.files.iter().any(|f| f.id == e.id) {
                continue;
            }
            let at_end = first_run && t.src.start_at == StartAt::End;
            if let Some(tr) = t.take_on(e, at_end)? {
                if tr.pos.offset > 0 {
                    meta.push(t.saved_entry(tr.id, &tr.path, tr.pos));
                }
                t.files.push(tr);
            }
        }
        if first_run {
            meta.push((init_key(&t.src.path), b"1".to_vec()));
        }
        Ok((t, meta))
    }

    fn saved_entry(&self, id: FileId, path: &Path, pos: Pos) -> MetaEntry {
        let v = Saved {
            path: path.to_string_lossy().into_owned(),
            pos,
        };
        // A struct of strings and integers always serializes.
        (
            self.key(id),
            serde_json::to_vec(&v).expect("Saved serializes"),
        )
    }

    /// Starts following a file found in the folder; None when [`MAX_FILES`] are followed.
    fn take_on(&mut self, e: &Entry, at_end: bool) -> Result<Option<Tracked>, TailError> {
        if self.files.len() >= MAX_FILES {
            if !self.warned_full {
                tracing::error!(source = %self.src.path.display(), "More than {MAX_FILES} files match; only {MAX_FILES} are followed at once. The others are read once some are finished: narrow the path.");
                self.warned_full = true;
            }
            return Ok(None);
        }
        let file = match open_file(&e.open) {
            Ok(f) => f,
            // Removed between the listing and now: nothing to read.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                if self.unreadable.len() < MAX_FILES && self.unreadable.insert(e.path.clone()) {
                    tracing::error!(path = %e.path.display(), "A file that matches cannot be opened ({err}); its lines are not read until it can be.");
                }
                return Ok(None);
            }
        };
        let pos = if at_end {
            end_position(&file, e.len).map_err(io_err(&e.path))?
        } else {
            Pos::default()
        };
        Ok(Some(Tracked {
            id: e.id,
            path: e.path.clone(),
            file,
            pos,
            retired: None,
            long: None,
            dead_done_to: 0,
        }))
    }

    /// Regular files in the source's folder, and links to regular files in it (at most
    /// [`MAX_LISTING`] entries looked at). Links out of the folder are left out, and reported
    /// once when their name matches.
    fn list(&mut self) -> Result<Vec<Entry>, TailError> {
        let rd = match std::fs::read_dir(&self.src.dir) {
            Ok(rd) => rd,
            // The folder may appear later; the poll will look again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.src.dir)(e)),
        };
        // Where links must lead: the folder itself, every link in its own path resolved.
        let home = std::fs::canonicalize(&self.src.dir).map_err(io_err(&self.src.dir))?;
        let mut out = Vec::new();
        for de in rd.take(MAX_LISTING).flatten() {
            let path = de.path();
            let matched = de
                .file_name()
                .to_str()
                .is_some_and(|n| self.src.name_pattern.matches(n));
            let Ok(lm) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let (open, m) = if lm.file_type().is_symlink() {
                // A dangling link is no file yet.
                let Ok(target) = std::fs::canonicalize(&path) else {
                    continue;
                };
                if target.parent() != Some(home.as_path()) {
                    if matched
                        && self.refused_links.len() < MAX_FILES
                        && self.refused_links.insert(path.clone())
                    {
                        tracing::error!(path = %path.display(), target = %target.display(), "A tailed name is a symbolic link to a file outside the watched folder; it is not read. Tail that file's own folder if it is meant to be read.");
                    }
                    continue;
                }
                let Ok(m) = std::fs::symlink_metadata(&target) else {
                    continue;
                };
                (target, m)
            } else {
                (path.clone(), lm)
            };
            if !m.is_file() {
                continue;
            }
            out.push(Entry {
                open,
                path,
                id: FileId::of(&m),
                len: m.len(),
                matched,
                mtime: m.mtime(),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// A copy of a truncated file (copytruncate): a file not followed, other than `not`,
    /// with the same fingerprint and at least `pos.offset` bytes; the newest if several.
    fn find_copy(&self, listing: &[Entry], pos: &Pos, not: Option<FileId>) -> Option<Tracked> {
        if pos.fp_len == 0 {
            return None;
        }
        let mut best: Option<(&Entry, File)> = None;
        for e in listing {
            if Some(e.id) == not || e.len < pos.offset || self.files.iter().any(|f| f.id == e.id) {
                continue;
            }
            if best.as_ref().is_some_and(|(b, _)| b.mtime >= e.mtime) {
                continue;
            }
            let Ok(f) = open_file(&e.open) else { continue };
            if fingerprint(&f, pos.fp_len).ok().flatten() == Some(pos.fp) {
                best = Some((e, f));
            }
        }
        best.map(|(e, file)| Tracked {
            id: e.id,
            path: e.path.clone(),
            file,
            pos: *pos,
            retired: Some(Instant::now()),
            long: None,
            dead_done_to: 0,
        })
    }

    /// Lists the folder again: follows renames, retires files whose name went elsewhere, takes
    /// on new ones (from their start).
    pub fn rescan(&mut self) -> Result<(), TailError> {
        let listing = self.list()?;
        let now = Instant::now();
        for f in &mut self.files {
            match listing.iter().find(|e| e.id == f.id && e.matched) {
                Some(e) => {
                    f.path = e.path.clone();
                    f.retired = None;
                }
                None if f.retired.is_none() => {
                    tracing::info!(path = %f.path.display(), line = f.pos.line, "A followed file was rotated away or removed; it is read to its end, then the new one is followed.");
                    f.retired = Some(now + ROTATE_WAIT);
                }
                None => {}
            }
        }
        for e in listing.iter().filter(|e| e.matched) {
            if !self.files.iter().any(|f| f.id == e.id)
                && let Some(t) = self.take_on(e, false)?
            {
                self.files.push(t);
            }
        }
        Ok(())
    }

    /// Files followed now.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The next thing to commit: lines read from one file, a reset after truncation, or a
    /// finished file to forget. None when every file is read up to its last complete line.
    /// Retired files go first (an old file's end before its successor's start); the others
    /// take turns.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, TailError> {
        let n = self.files.len();
        let mut order: Vec<usize> = (0..n)
            .filter(|&i| self.files[i].retired.is_some())
            .collect();
        let active: Vec<usize> = (0..n)
            .filter(|&i| self.files[i].retired.is_none())
            .collect();
        if !active.is_empty() {
            let start = self.cursor % active.len();
            order.extend(active[start..].iter().chain(&active[..start]));
        }
        for i in order {
            if let Some(c) = self.read_file(i)? {
                if self.files[i].retired.is_none() {
                    self.cursor = self.cursor.wrapping_add(1);
                }
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    fn empty_chunk(&self, i: usize, pos: Pos) -> Chunk {
        let t = &self.files[i];
        Chunk {
            id: t.id,
            alerts: Vec::new(),
            refused: Vec::new(),
            meta: vec![self.saved_entry(t.id, &t.path, pos)],
            pos,
            forget: false,
            adopt: None,
            dead_to: t.dead_done_to,
        }
    }

    fn read_file(&mut self, i: usize) -> Result<Option<Chunk>, TailError> {
        let (size, path, pos) = {
            let t = &self.files[i];
            let m = t.file.metadata().map_err(io_err(&t.path))?;
            (m.len(), t.path.clone(), t.pos)
        };
        let shrank = size < pos.offset;
        let replaced = !shrank
            && pos.fp_len > 0
            && fingerprint(&self.files[i].file, pos.fp_len).map_err(io_err(&path))? != Some(pos.fp);
        if shrank || replaced {
            // Its unread end may be in a copy (copytruncate): follow that from here, atomically
            // with starting this one again at 0.
            let listing = self.list()?;
            let copy = self.find_copy(&listing, &pos, Some(self.files[i].id));
            match &copy {
                Some(c) => {
                    tracing::info!(path = %path.display(), copy = %c.path.display(), line = pos.line, "A followed file was truncated; its copy is read from where reading stood, then the file again from its start.")
                }
                None => {
                    tracing::warn!(path = %path.display(), line = pos.line, "A followed file shrank or its first bytes changed (truncated or replaced); it is read again from its start.")
                }
            }
            let mut c = self.empty_chunk(i, Pos::default());
            self.files[i].long = None;
            if let Some(copy) = copy {
                c.meta.push(self.saved_entry(copy.id, &copy.path, copy.pos));
                c.adopt = Some(copy);
            }
            return Ok(Some(c));
        }
        let retired_long_enough = self.files[i].retired.is_some_and(|r| Instant::now() >= r);
        if size == pos.offset {
            return Ok(retired_long_enough.then(|| self.forget_chunk(i, None)));
        }
        if let Some((start, scanned)) = self.files[i].long {
            return self.skip_long_line(i, start, scanned, size, retired_long_enough);
        }
        let want = ((size - pos.offset) as usize).min(self.buf.len());
        let n = read_full(&self.files[i].file, &mut self.buf[..want], pos.offset)
            .map_err(io_err(&path))?;
        let data = &self.buf[..n];
        let Some(last_nl) = data.iter().rposition(|&b| b == b'\n') else {
            if n > self.src.max_line {
                self.files[i].long = Some((pos.offset, pos.offset + n as u64));
                return self.skip_long_line(
                    i,
                    pos.offset,
                    pos.offset + n as u64,
                    size,
                    retired_long_enough,
                );
            }
            // The last line is not complete yet: it waits for its newline, unless the file
            // is finished, when it is recorded as incomplete.
            return Ok(retired_long_enough.then(|| {
                let line = &self.buf[..n];
                self.forget_chunk(
                    i,
                    Some(Refused {
                        reason: format!(
                            "line {} of {} had no newline when the file was rotated away or removed ({} bytes); not forwarded",
                            pos.line + 1,
                            path.display(),
                            n
                        ),
                        payload: lossy_prefix(line),
                    }),
                )
            }));
        };
        let mut c = self.parse_lines(i, last_nl + 1)?;
        c.pos = self.with_fingerprint(i, c.pos)?;
        c.meta = vec![self.saved_entry(self.files[i].id, &path, c.pos)];
        Ok(Some(c))
    }

    /// Turns the complete lines in `buf[..end]` (at most `max_lines` of them) into alerts and
    /// refusals; the chunk's position is the end of the last line taken.
    fn parse_lines(&mut self, i: usize, end: usize) -> Result<Chunk, TailError> {
        let t = &self.files[i];
        let (pos, path, dead_done_to) = (t.pos, t.path.clone(), t.dead_done_to);
        let mut alerts = Vec::new();
        let mut refused = Vec::new();
        let mut line_no = pos.line;
        let mut at = pos.offset;
        for raw in self.buf[..end]
            .split_inclusive(|&b| b == b'\n')
            .take(self.max_lines)
        {
            line_no += 1;
            let line_start = at;
            at += raw.len() as u64;
            let mut line = &raw[..raw.len() - 1];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let refuse = |reason: String| Refused {
                reason,
                payload: lossy_prefix(line),
            };
            if line.len() > self.src.max_line {
                if line_start >= dead_done_to {
                    refused.push(refuse(format!(
                        "line {line_no} of {} is {} bytes, longer than max_line ({}); not forwarded",
                        path.display(),
                        line.len(),
                        self.src.max_line
                    )));
                }
                continue;
            }
            match to_alert(&self.src, &path, line_no, line, self.max_body) {
                Ok(a) => alerts.push(a),
                Err(why) => {
                    if line_start >= dead_done_to {
                        refused.push(refuse(format!(
                            "line {line_no} of {}: {why}; not forwarded",
                            path.display()
                        )));
                    }
                }
            }
        }
        Ok(Chunk {
            id: self.files[i].id,
            alerts,
            refused,
            meta: Vec::new(),
            pos: Pos {
                offset: at,
                line: line_no,
                ..pos
            },
            forget: false,
            adopt: None,
            dead_to: at,
        })
    }

    /// The queue refused a chunk of `lines` lines as too big for the room left: read at most
    /// half as many next time (down to one line, which fits once the sender makes room).
    pub fn shrink(&mut self, lines: usize) {
        self.max_lines = (lines / 2).max(1);
    }

    /// A chunk was queued: allow larger ones again.
    pub fn grow(&mut self) {
        self.max_lines = self.max_lines.saturating_mul(2);
    }

    /// Scans a line longer than `max_line` for its end without keeping it.
    fn skip_long_line(
        &mut self,
        i: usize,
        start: u64,
        mut scanned: u64,
        size: u64,
        finished: bool,
    ) -> Result<Option<Chunk>, TailError> {
        let path = self.files[i].path.clone();
        let pos = self.files[i].pos;
        while scanned < size {
            let want = ((size - scanned) as usize).min(self.buf.len());
            let n = read_full(&self.files[i].file, &mut self.buf[..want], scanned)
                .map_err(io_err(&path))?;
            if n == 0 {
                break;
            }
            if let Some(nl) = self.buf[..n].iter().position(|&b| b == b'\n') {
                let end = scanned + nl as u64;
                let mut head = vec![0u8; DEAD_PREFIX];
                let hn = read_full(&self.files[i].file, &mut head, start).map_err(io_err(&path))?;
                let refused = if start >= self.files[i].dead_done_to {
                    vec![Refused {
                        reason: format!(
                            "line {} of {} is {} bytes, longer than max_line ({}); not forwarded",
                            pos.line + 1,
                            path.display(),
                            end - start,
                            self.src.max_line
                        ),
                        payload: lossy_prefix(&head[..hn]),
                    }]
                } else {
                    Vec::new()
                };
                let new = self.with_fingerprint(
                    i,
                    Pos {
                        offset: end + 1,
                        line: pos.line + 1,
                        ..pos
                    },
                )?;
                return Ok(Some(Chunk {
                    id: self.files[i].id,
                    alerts: Vec::new(),
                    refused,
                    meta: vec![self.saved_entry(self.files[i].id, &path, new)],
                    pos: new,
                    forget: false,
                    adopt: None,
                    dead_to: end + 1,
                }));
            }
            scanned += n as u64;
        }
        self.files[i].long = Some((start, scanned));
        if !finished {
            return Ok(None);
        }
        let mut head = vec![0u8; DEAD_PREFIX];
        let hn = read_full(&self.files[i].file, &mut head, start).map_err(io_err(&path))?;
        Ok(Some(self.forget_chunk(
            i,
            Some(Refused {
                reason: format!(
                    "line {} of {} is {} bytes without a newline, longer than max_line ({}), and the file was rotated away or removed; not forwarded",
                    pos.line + 1,
                    path.display(),
                    scanned - start,
                    self.src.max_line
                ),
                payload: lossy_prefix(&head[..hn]),
            }),
        )))
    }

    /// Stops following file `i`; `last` records its unfinished last line (which starts at the
    /// saved position), unless a failed attempt already recorded it.
    fn forget_chunk(&self, i: usize, last: Option<Refused>) -> Chunk {
        let t = &self.files[i];
        let last = last.filter(|_| t.pos.offset >= t.dead_done_to);
        Chunk {
            id: t.id,
            alerts: Vec::new(),
            refused: last.into_iter().collect(),
            meta: vec![(self.key(t.id), Vec::new())],
            pos: t.pos,
            forget: true,
            adopt: None,
            dead_to: u64::MAX,
        }
    }

    /// Extends the fingerprint to cover up to [`FP_MAX`] bytes once the file has them.
    fn with_fingerprint(&self, i: usize, mut pos: Pos) -> Result<Pos, TailError> {
        let want = pos.offset.min(FP_MAX);
        if want > pos.fp_len {
            let t = &self.files[i];
            if let Some(fp) = fingerprint(&t.file, want).map_err(io_err(&t.path))? {
                pos.fp_len = want;
                pos.fp = fp;
            }
        }
        Ok(pos)
    }

    /// Records that `c` was committed: the position moves only now.
    pub fn committed(&mut self, c: Chunk) {
        let Some(i) = self.files.iter().position(|f| f.id == c.id) else {
            return;
        };
        if c.forget {
            let t = self.files.remove(i);
            tracing::debug!(path = %t.path.display(), line = t.pos.line, "A finished file is no longer followed.");
            return;
        }
        let t = &mut self.files[i];
        if c.pos.offset != t.pos.offset {
            t.long = None;
        }
        t.pos = c.pos;
        // Reading resumes at the new position (0 after a truncation): nothing beyond it is
        // recorded yet.
        t.dead_done_to = c.pos.offset;
        if let Some(a) = c.adopt {
            self.files.push(a);
        }
    }

    /// Records that the dead letters of `c` are written, so a retry of its commit does not
    /// write them again.
    pub fn dead_written(&mut self, c: &Chunk) {
        if let Some(t) = self.files.iter_mut().find(|f| f.id == c.id) {
            t.dead_done_to = t.dead_done_to.max(c.dead_to);
        }
    }
}

/// The position after the last complete line of a file of `len` bytes, and its line number.
fn end_position(file: &File, len: u64) -> std::io::Result<Pos> {
    let mut buf = vec![0u8; 64 * 1024];
    // Back from the end to the last newline.
    let mut end = len;
    let mut offset = 0;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = read_full(file, &mut buf[..(end - start) as usize], start)?;
        if let Some(p) = buf[..n].iter().rposition(|&b| b == b'\n') {
            offset = start + p as u64 + 1;
            break;
        }
        end = start;
    }
    // Line numbers in messages count from the file's start, so count them once.
    let mut line = 0;
    let mut at = 0;
    while at < offset {
        let want = ((offset - at) as usize).min(buf.len());
        let n = read_full(file, &mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        line += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        at += n as u64;
    }
    let mut pos = Pos {
        offset,
        line,
        ..Pos::default()
    };
    let fp_len = offset.min(FP_MAX);
    if let Some(fp) = fingerprint(file, fp_len)? {
        pos.fp_len = fp_len;
        pos.fp = fp;
    }
    Ok(pos)
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
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

fn lossy_prefix(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(DEAD_PREFIX)]).into_owned()
}

/// One line as an alert, per the source's format; Err says why it cannot be one.
fn to_alert(
    src: &FileSource,
    path: &Path,
    line_no: u64,
    line: &[u8],
    max_body: usize,
) -> Result<Alert, String> {
    let (payload, key) = match &src.format {
        LineFormat::Json => {
            let key = crate::alert::parse_alert(line).map_err(|e| e.describe("the line"))?;
            (line.to_vec(), key)
        }
        LineFormat::Text { uid_fields } => {
            let text = String::from_utf8_lossy(line);
            let text = text.trim();
            let fields: Vec<&str> = text.split_whitespace().collect();
            let chosen: Vec<&str> = uid_fields
                .iter()
                .filter_map(|&n| fields.get(n.wrapping_sub(1)).copied())
                .collect();
            // No field chosen, or the line has none of them: the whole line.
            let part = if chosen.is_empty() {
                text.to_string()
            } else {
                chosen.join(" ")
            };
            let uid = text_uid(&part);
            let body = serde_json::json!({
                "title": text,
                "message": format!("{} line {line_no}", path.display()),
                "alert_uid": uid,
                "state": "alerting",
            });
            let payload = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
            (payload, key_hash(Some(uid.as_bytes()), b""))
        }
    };
    bounded_alert(&src.integration, payload, key, max_body)
}

/// An alert for `integration`, or why its payload is over `queue.max_body` (the file and
/// journal sources build their own payloads, so they check what the HTTP source's limit does).
pub(crate) fn bounded_alert(
    integration: &str,
    payload: Vec<u8>,
    key_hash: u64,
    max_body: usize,
) -> Result<Alert, String> {
    if payload.len() > max_body {
        return Err(format!(
            "the alert would be {} bytes, larger than queue.max_body ({max_body})",
            payload.len()
        ));
    }
    Ok(Alert {
        integration: integration.to_string(),
        payload,
        key_hash,
    })
}

/// The `alert_uid` of a text line: a stable hash of the chosen part (bounded, and the same
/// across releases: FNV-1a).
pub fn text_uid(part: &str) -> String {
    format!("line-{:016x}", fnv(part.as_bytes()))
}

/// Runs one file source until `stop` turns true.
pub async fn run(src: FileSource, ctx: SourceContext) {
    let SourceContext {
        ingest,
        max_body,
        mut stop,
        clock,
        ..
    } = ctx.clone();
    let report = ctx.reporter("file", &src.path);
    report(&|_| {});
    let mut dirs = DirWatch::new(vec![src.dir.clone()]);
    let poll = src.poll_interval;
    let store = ingest.store().clone();

    // Load the saved positions; retry while the folder cannot be read.
    let mut tailer = loop {
        let (s, st) = (src.clone(), store.clone());
        let opened = tokio::task::spawn_blocking(move || Tailer::open(s, st, max_body)).await;
        let err = match opened {
            Ok(Ok((t, meta))) => match commit_meta(&ingest, meta, &mut stop).await {
                Some(()) => break t,
                None => return,
            },
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the reading task failed: {e}"),
        };
        tracing::error!(source = %src.path.display(), "Cannot start following files: {err}. Retrying.");
        report(&|s| s.last_error = Some(err.clone()));
        if sleep_or_stop(poll, &mut stop).await {
            return;
        }
    };
    tracing::info!(source = %src.path.display(), integration = %src.integration, files = tailer.file_count(), "Following files.");

    let mut next_poll = tokio::time::Instant::now() + poll;
    let mut pending: Option<Chunk> = None;
    // Why queueing failed last and when that was said: said again only for another reason
    // or after QUIET, not at every retry while the queue is full.
    let mut said: Option<(std::mem::Discriminant<IngestError>, std::time::Instant)> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let chunk = match pending.take() {
            Some(c) => Some(c),
            None => {
                let polled = tokio::time::Instant::now() >= next_poll;
                if polled {
                    dirs.refresh();
                    next_poll = tokio::time::Instant::now() + poll;
                }
                let rescan = dirs.take_rescan() || polled;
                let (t, res) = match tokio::task::spawn_blocking(move || {
                    let r = (|| {
                        if rescan {
                            tailer.rescan()?;
                        }
                        tailer.next_chunk()
                    })();
                    (tailer, r)
                })
                .await
                {
                    Ok(v) => v,
                    Err(e) => {
                        // Only a panic gets here, and panics abort the process in release.
                        tracing::error!(source = %src.path.display(), "The reading task failed: {e}");
                        return;
                    }
                };
                tailer = t;
                match res {
                    Ok(c) => c,
                    Err(e) => {
                        let msg = e.to_string();
                        tracing::warn!(source = %src.path.display(), "Reading failed: {msg}. Trying again at the next poll.");
                        report(&|s| s.last_error = Some(msg.clone()));
                        dirs.request_rescan();
                        tokio::select! {
                            _ = dirs.wait(next_poll) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                }
            }
        };
        let Some(mut chunk) = chunk else {
            let files = tailer.file_count() as u64;
            report(&|s| s.files = files);
            tokio::select! {
                _ = dirs.wait(next_poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        };

        // Dead letters first (durable), then the alerts with the new position.
        if !chunk.refused.is_empty() {
            let dls = dead_letters(&store, &src.integration, &chunk.refused, clock.now());
            let st = store.clone();
            match tokio::task::spawn_blocking(move || st.put_dead(&dls)).await {
                Ok(Ok(())) => {
                    tracing::error!(
                        source = %src.path.display(),
                        count = chunk.refused.len(),
                        "Lines were not forwarded and are kept as dead letters; the first: {}",
                        chunk.refused[0].reason
                    );
                    let (n, last) = (
                        chunk.refused.len() as u64,
                        chunk.refused.last().map(|r| r.reason.clone()),
                    );
                    report(&|s| {
                        s.refused_total += n;
                        s.last_refused = last.clone();
                    });
                    tailer.dead_written(&chunk);
                    chunk.refused.clear();
                }
                Ok(Err(e)) => {
                    let msg = format!("cannot record refused lines: {e}");
                    tracing::error!(source = %src.path.display(), "{msg}. Retrying.");
                    report(&|s| s.last_error = Some(msg.clone()));
                    pending = Some(chunk);
                    if sleep_or_stop(RETRY_AFTER, &mut stop).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(source = %src.path.display(), "The dead-letter task failed: {e}");
                    return;
                }
            }
        }
        let n = chunk.alerts.len() as u64;
        let alerts = std::mem::take(&mut chunk.alerts);
        let meta = chunk.meta.clone();
        match ingest.commit(alerts, meta, true).await {
            Ok(_) => {
                tailer.committed(chunk);
                tailer.grow();
                let files = tailer.file_count() as u64;
                report(&|s| {
                    s.alerts_total += n;
                    s.files = files;
                    s.last_error = None;
                });
            }
            Err(IngestError::Closed) => break,
            Err(e) => {
                // The position did not move: the same lines are read again after a pause, fewer
                // at a time if they did not fit.
                if matches!(e, IngestError::QueueFull { .. }) {
                    tailer.shrink(n as usize);
                }
                let msg = e.to_string();
                if say_again(&mut said, &e) {
                    tracing::warn!(source = %src.path.display(), "Lines could not be queued ({msg}); reading pauses and resumes where it stood.");
                }
                report(&|s| s.last_error = Some(msg.clone()));
                if sleep_or_stop(RETRY_AFTER, &mut stop).await {
                    break;
                }
            }
        }
    }
    tracing::debug!(source = %src.path.display(), "The file source stopped.");
}

/// How long a repeated failure to queue stays unsaid.
const QUIET: Duration = Duration::from_secs(60);

/// Whether failure `e` is worth a log line: another reason than the last one said, or the
/// same one after [`QUIET`]. Records it as said.
pub(crate) fn say_again(
    said: &mut Option<(std::mem::Discriminant<IngestError>, std::time::Instant)>,
    e: &IngestError,
) -> bool {
    let kind = std::mem::discriminant(e);
    let again = match said {
        Some((k, at)) => *k != kind || at.elapsed() >= QUIET,
        None => true,
    };
    if again {
        *said = Some((kind, std::time::Instant::now()));
    }
    again
}

/// Commits metadata alone (start-up positions), retrying while the queue refuses it. None if
/// the agent stops first.
async fn commit_meta(
    ingest: &Ingest,
    meta: Vec<MetaEntry>,
    stop: &mut watch::Receiver<bool>,
) -> Option<()> {
    if meta.is_empty() {
        return Some(());
    }
    let mut warned = false;
    loop {
        match ingest.commit(Vec::new(), meta.clone(), true).await {
            Ok(_) => return Some(()),
            Err(IngestError::Closed) => return None,
            Err(e) => {
                if !warned {
                    tracing::warn!("Saving read positions failed ({e}); retrying.");
                    warned = true;
                }
                if sleep_or_stop(RETRY_AFTER, stop).await {
                    return None;
                }
            }
        }
    }
}

/// Dead letters for refused lines (or journal entries), stamped `now` (the daemon's clock,
/// injected in tests).
pub(crate) fn dead_letters(
    store: &Store,
    integration: &str,
    refused: &[Refused],
    now: crate::clock::Millis,
) -> Vec<DeadLetter> {
    let first = store.reserve_seq(refused.len() as u64);
    refused
        .iter()
        .zip(first..)
        .map(|(r, id)| DeadLetter {
            id,
            integration: integration.to_string(),
            received_at: now,
            failed_at: now,
            attempts: 0,
            status: 0,
            reason: r.reason.clone(),
            response: String::new(),
            payload: r.payload.clone(),
        })
        .collect()
}

/// Sleeps `d`; true if the agent is stopping.
pub(crate) async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::writer::WriterConfig;

    struct Rig {
        dir: tempfile::TempDir,
        store: Arc<Store>,
        ingest: Ingest,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("queue"), 8 << 20).unwrap();
        let store = Arc::new(store);
        let (ingest, _writer) = Ingest::start(
            store.clone(),
            ["a".to_string()],
            WriterConfig {
                max_bytes: 1 << 30,
                min_free_space: 0,
                channel_capacity: 64,
                batch_max: 1024,
            },
            crate::clock::Clock::system(),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        Rig { dir, store, ingest }
    }

    impl Rig {
        fn log(&self) -> PathBuf {
            self.dir.path().join("logs/app.log")
        }

        fn source(&self, max_line: usize) -> FileSource {
            FileSource {
                path: self.log(),
                dir: self.dir.path().join("logs"),
                name_pattern: glob::Pattern::new("app.log").unwrap(),
                integration: "a".into(),
                format: LineFormat::Json,
                start_at: StartAt::Beginning,
                max_line,
                poll_interval: Duration::from_secs(5),
            }
        }

        /// A tailer as the daemon starts it, its start-up metadata committed.
        async fn open(&self, max_line: usize) -> Tailer {
            let (t, meta) =
                Tailer::open(self.source(max_line), self.store.clone(), 1 << 20).unwrap();
            self.ingest.commit(Vec::new(), meta, true).await.unwrap();
            t
        }

        /// Commits a chunk the way `run` does.
        async fn commit(&self, t: &mut Tailer, mut c: Chunk) {
            let dls = dead_letters(&self.store, "a", &c.refused, 0);
            self.store.put_dead(&dls).unwrap();
            let alerts = std::mem::take(&mut c.alerts);
            self.ingest
                .commit(alerts, c.meta.clone(), true)
                .await
                .unwrap();
            t.committed(c);
        }

        /// Reads and commits until there is nothing left; returns the `n`s queued.
        async fn drain(&self, t: &mut Tailer) -> Vec<i64> {
            let mut ns = Vec::new();
            while let Some(c) = t.next_chunk().unwrap() {
                ns.extend(c.alerts.iter().map(|a| n_of(&a.payload)));
                self.commit(t, c).await;
            }
            ns
        }
    }

    fn n_of(payload: &[u8]) -> i64 {
        serde_json::from_slice::<serde_json::Value>(payload).unwrap()["n"]
            .as_i64()
            .unwrap()
    }

    fn lines(from: usize, count: usize) -> String {
        (from..from + count)
            .map(|n| format!("{{\"alert_uid\":\"k\",\"n\":{n}}}\n"))
            .collect()
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[tokio::test]
    async fn a_chunk_read_but_not_committed_is_read_again_after_a_crash() {
        let r = rig();
        append(&r.log(), &lines(0, 10));
        let mut t = r.open(1000).await;
        let read = t.next_chunk().unwrap().unwrap();
        assert_eq!(read.alerts.len(), 10);
        // The crash: the chunk was read, never committed.
        drop(read);
        drop(t);
        let mut t = r.open(1000).await;
        assert_eq!(r.drain(&mut t).await, (0..10).collect::<Vec<_>>());
        // Committed this time: a restart reads nothing again.
        drop(t);
        let mut t = r.open(1000).await;
        assert!(t.next_chunk().unwrap().is_none());
        append(&r.log(), &lines(10, 2));
        assert_eq!(r.drain(&mut t).await, vec![10, 11]);
        assert_eq!(r.store.depth("a").alerts, 12);
    }

    #[tokio::test]
    async fn the_position_moves_only_once_committed() {
        let r = rig();
        append(&r.log(), &lines(0, 3));
        let mut t = r.open(1000).await;
        let c = t.next_chunk().unwrap().unwrap();
        // Not committed yet: the same lines come again.
        drop(c);
        let again = t.next_chunk().unwrap().unwrap();
        assert_eq!(again.alerts.len(), 3);
        r.commit(&mut t, again).await;
        assert!(t.next_chunk().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_line_without_its_newline_waits_for_it() {
        let r = rig();
        append(&r.log(), "{\"n\":0}\n{\"n\":");
        let mut t = r.open(1000).await;
        assert_eq!(r.drain(&mut t).await, vec![0]);
        append(&r.log(), "1}");
        assert!(t.next_chunk().unwrap().is_none());
        append(&r.log(), "\n");
        assert_eq!(r.drain(&mut t).await, vec![1]);
    }

    #[tokio::test]
    async fn a_line_longer_than_the_read_buffer_is_skipped_and_recorded() {
        let r = rig();
        // 3 MiB, three times the read buffer, written in two parts.
        let long = format!("{{\"n\":99,\"pad\":\"{}", "x".repeat(3 << 20));
        append(&r.log(), &lines(0, 1));
        append(&r.log(), &long[..2 << 20]);
        let mut t = r.open(100).await;
        assert_eq!(r.drain(&mut t).await, vec![0]);
        assert_eq!(r.store.dead_count(), 0, "recorded before its end was seen");
        append(&r.log(), &long[2 << 20..]);
        append(&r.log(), "\"}\n");
        append(&r.log(), &lines(1, 1));
        assert_eq!(r.drain(&mut t).await, vec![1]);
        let dead = r.store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].reason.contains("line 2 of"), "{}", dead[0].reason);
        assert!(
            dead[0].reason.contains("max_line (100)"),
            "{}",
            dead[0].reason
        );
        assert_eq!(dead[0].payload.len(), DEAD_PREFIX);
    }

    #[tokio::test]
    async fn a_retried_commit_does_not_record_its_dead_letters_twice() {
        let r = rig();
        append(&r.log(), "nope\n{\"n\":1}\n");
        let mut t = r.open(100).await;
        let c = t.next_chunk().unwrap().unwrap();
        let dls = dead_letters(&r.store, "a", &c.refused, 0);
        r.store.put_dead(&dls).unwrap();
        t.dead_written(&c);
        // The queue refused the commit: the chunk is read again.
        drop(c);
        let again = t.next_chunk().unwrap().unwrap();
        assert!(again.refused.is_empty());
        assert_eq!(again.alerts.len(), 1);
        r.commit(&mut t, again).await;
        assert_eq!(r.store.dead_count(), 1);
    }

    #[tokio::test]
    async fn same_inode_with_other_first_bytes_is_a_new_file() {
        let r = rig();
        append(&r.log(), &lines(0, 5));
        let mut t = r.open(1000).await;
        assert_eq!(r.drain(&mut t).await.len(), 5);
        drop(t);
        // Rewritten in place while stopped (the inode stays), longer than the saved position:
        // only the fingerprint tells it is not the same content.
        let ino = std::fs::metadata(r.log()).unwrap().ino();
        let text: String = (100..110)
            .map(|n| format!("{{\"alert_uid\":\"z\",\"n\":{n}}}\n"))
            .collect();
        std::fs::OpenOptions::new()
            .write(true)
            .open(r.log())
            .unwrap()
            .write_all_at(text.as_bytes(), 0)
            .unwrap();
        assert_eq!(std::fs::metadata(r.log()).unwrap().ino(), ino);
        let mut t = r.open(1000).await;
        assert_eq!(r.drain(&mut t).await, (100..110).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_rotated_file_with_a_partial_last_line_records_it_when_forgotten() {
        let r = rig();
        append(&r.log(), "{\"n\":0}\n{\"n\":1");
        let mut t = r.open(1000).await;
        assert_eq!(r.drain(&mut t).await, vec![0]);
        std::fs::rename(r.log(), r.dir.path().join("logs/app.log.1")).unwrap();
        append(&r.log(), &lines(2, 1));
        t.rescan().unwrap();
        // The old file waits ROTATE_WAIT for its writer; the new one is read meanwhile.
        assert_eq!(r.drain(&mut t).await, vec![2]);
        assert_eq!(t.file_count(), 2);
        t.files[0].retired = Some(Instant::now());
        assert_eq!(r.drain(&mut t).await, Vec::<i64>::new());
        assert_eq!(t.file_count(), 1);
        let dead = r.store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].reason.contains("no newline"), "{}", dead[0].reason);
        assert_eq!(dead[0].payload, "{\"n\":1");
        // And it is forgotten in sled too.
        assert_eq!(
            r.store.meta_scan(&key_prefix(&r.log()), 10).unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn a_retried_forget_does_not_record_the_unfinished_line_twice() {
        let r = rig();
        append(&r.log(), "{\"n\":0}\n{\"n\":1");
        let mut t = r.open(1000).await;
        assert_eq!(r.drain(&mut t).await, vec![0]);
        std::fs::remove_file(r.log()).unwrap();
        t.rescan().unwrap();
        t.files[0].retired = Some(Instant::now());
        let c = t.next_chunk().unwrap().unwrap();
        assert_eq!(c.refused.len(), 1);
        t.dead_written(&c);
        drop(c);
        let again = t.next_chunk().unwrap().unwrap();
        assert!(again.forget && again.refused.is_empty());
    }

    #[test]
    fn end_position_stops_after_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "a\nbb\nccc").unwrap();
        let f = File::open(&p).unwrap();
        let pos = end_position(&f, 8).unwrap();
        assert_eq!((pos.offset, pos.line, pos.fp_len), (5, 2, 5));
        std::fs::write(&p, "no newline").unwrap();
        assert_eq!(
            end_position(&File::open(&p).unwrap(), 10).unwrap().offset,
            0
        );
    }

    /// Also seen: the dead letters of tailed lines were stamped by the system clock, not
    /// the daemon's injected one.
    #[tokio::test]
    async fn dead_letters_of_tailed_lines_take_the_injected_clock() {
        let r = rig();
        append(&r.log(), "not json\n{\"n\":1}\n");
        let clock = crate::clock::Clock::starting_at(42_000);
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(
            r.source(1024),
            SourceContext {
                ingest: r.ingest.clone(),
                max_body: 1 << 20,
                stop,
                board: crate::sources::SourceBoard::default(),
                clock,
            },
        ));
        let end = Instant::now() + Duration::from_secs(20);
        while r.store.dead_count() == 0 {
            assert!(Instant::now() < end, "no dead letter");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop_tx.send(true);
        task.await.unwrap();
        let dead = r.store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        // The injected clock started at 42 s after the epoch; the system's reads today.
        assert!(dead[0].failed_at < 3_600_000, "{}", dead[0].failed_at);
        assert_eq!(dead[0].received_at, dead[0].failed_at);
    }

    #[test]
    fn text_uid_is_stable() {
        // Kept by OnCall as alert_uid: must never change between releases (FNV-1a, computed
        // independently).
        assert_eq!(text_uid("db01 disk"), "line-9d091050023b0ca8");
        assert_ne!(text_uid("a"), text_uid("b"));
    }
}
