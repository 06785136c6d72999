//! Which file is which: identity (device, inode and a fingerprint of the first bytes), the
//! saved positions in sled, and following rotation (see the parent module's doc).

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    FP_MAX, MAX_FILES, MAX_LISTING, Pos, READ_CHUNK, ROTATE_WAIT, TailError, Tailer, Tracked,
    io_err, read_full,
};
use crate::config::{FileSource, StartAt};
use crate::queue::Store;
use crate::queue::envelope::key_hash;
use crate::queue::store::{META_PREFIX, MetaEntry};

/// A file's identity on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(super) fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// The value saved in sled for one followed file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Saved {
    /// Where it was last seen (for messages; the inode in the key is what identifies it).
    path: String,
    #[serde(flatten)]
    pos: Pos,
}

/// Key prefix of the saved positions of source `path`.
pub(super) fn key_prefix(path: &Path) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(b"tail\0");
    k.extend_from_slice(path.as_os_str().as_encoded_bytes());
    k.push(0);
    k
}

/// Marks that source `path` has run once: `start_at = "end"` no longer applies.
pub(super) fn init_key(path: &Path) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(b"tail-init\0");
    k.extend_from_slice(path.as_os_str().as_encoded_bytes());
    k
}

/// A saved position whose file was not found intact at start.
pub(super) struct Lost {
    /// Its key in sled (forgotten).
    key: Vec<u8>,
    id: FileId,
    saved: Saved,
    /// Its inode is still in the folder (truncated or replaced, not gone).
    inode_here: bool,
}

/// An entry of the folder: a regular file (or a link to one in the folder), and whether its
/// name matches.
pub(super) struct Entry {
    /// Its name in the folder (the link's, for a link).
    path: PathBuf,
    /// What is opened: `path`, or for a link the file in the folder it resolves to.
    open: PathBuf,
    id: FileId,
    len: u64,
    matched: bool,
    mtime: i64,
}

pub(super) fn fnv(bytes: &[u8]) -> u64 {
    key_hash(Some(bytes), b"")
}

/// Fingerprint of the first `len` bytes of `file`, or None if it is shorter.
pub(super) fn fingerprint(file: &File, len: u64) -> std::io::Result<Option<u64>> {
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
pub(super) fn open_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

impl Tailer {
    pub(super) fn key(&self, id: FileId) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(&id.dev.to_be_bytes());
        k.extend_from_slice(&id.ino.to_be_bytes());
        k
    }

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
            if let Some(l) = t.find_again(&listing, key, &value, &mut meta) {
                lost.push(l);
            }
        }
        for l in lost {
            t.find_lost(&listing, l, &mut meta);
        }
        t.take_on_new(&listing, first_run, &mut meta)?;
        if first_run {
            meta.push((init_key(&t.src.path), b"1".to_vec()));
        }
        Ok((t, meta))
    }

    /// Follows the file of one saved position again if it is intact in the folder (where it
    /// was, renamed, or with its device numbered anew); otherwise returns it as lost. Metadata
    /// to commit goes to `meta`.
    fn find_again(
        &mut self,
        listing: &[Entry],
        key: Vec<u8>,
        value: &[u8],
        meta: &mut Vec<MetaEntry>,
    ) -> Option<Lost> {
        let id = key
            .get(self.prefix.len()..)
            .and_then(|r| Some((r.get(..8)?.try_into().ok()?, r.get(8..)?.try_into().ok()?)))
            .map(|(d, i): ([u8; 8], [u8; 8])| FileId {
                dev: u64::from_be_bytes(d),
                ino: u64::from_be_bytes(i),
            })?;
        let Ok(saved) = serde_json::from_slice::<Saved>(value) else {
            tracing::warn!(source = %self.src.path.display(), "A saved read position is unreadable; it is dropped.");
            meta.push((key, Vec::new()));
            return None;
        };
        let same_content = |e: &Entry| {
            e.len >= saved.pos.offset
                && open_file(&e.open)
                    .ok()
                    .filter(|f| {
                        saved.pos.fp_len == 0
                            || fingerprint(f, saved.pos.fp_len).ok().flatten() == Some(saved.pos.fp)
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
        let Some((e, file)) = intact.and_then(|e| Some((e, open_file(&e.open).ok()?))) else {
            return Some(Lost {
                key,
                id,
                saved,
                inode_here: here.is_some(),
            });
        };
        if !e.matched {
            tracing::info!(from = %saved.path, to = %e.path.display(), line = saved.pos.line, "A followed file was renamed while the agent was stopped; reading it to its end.");
        }
        if e.id != id {
            meta.push((key, Vec::new()));
            meta.push(self.saved_entry(e.id, &e.path, saved.pos));
        }
        self.files.push(Tracked {
            id: e.id,
            path: e.path.clone(),
            file,
            pos: saved.pos,
            // A file renamed away while the agent was stopped is no longer written.
            retired: (!e.matched).then(Instant::now),
            long: None,
            dead_done_to: 0,
        });
        None
    }

    /// A saved file not found intact (gone, truncated or replaced): its position is forgotten,
    /// and its unread end followed in a copy if there is one (copytruncate).
    fn find_lost(&mut self, listing: &[Entry], lost: Lost, meta: &mut Vec<MetaEntry>) {
        let Lost {
            key,
            id,
            saved,
            inode_here,
        } = lost;
        meta.push((key, Vec::new()));
        match self.find_copy(listing, &saved.pos, Some(id)) {
            Some(copy) => {
                tracing::info!(from = %saved.path, copy = %copy.path.display(), line = saved.pos.line, "A followed file was truncated while the agent was stopped; its copy is read from where reading stood.");
                meta.push(self.saved_entry(copy.id, &copy.path, copy.pos));
                self.files.push(copy);
            }
            None if inode_here => {
                tracing::warn!(path = %saved.path, line = saved.pos.line, "A followed file was truncated or replaced while the agent was stopped and no copy of it was found; it is read from its start. Lines written after line {} before that may be missing.", saved.pos.line)
            }
            None => {
                tracing::warn!(path = %saved.path, line = saved.pos.line, "A followed file disappeared while the agent was stopped (rotated and compressed, moved to another folder, or deleted); lines written to it after line {} were not read.", saved.pos.line)
            }
        }
    }

    /// Starts following the matching files no saved position led to: from their end on the
    /// first run with `start_at = "end"`, else from their start.
    fn take_on_new(
        &mut self,
        listing: &[Entry],
        first_run: bool,
        meta: &mut Vec<MetaEntry>,
    ) -> Result<(), TailError> {
        for e in listing.iter().filter(|e| e.matched) {
            if self.files.iter().any(|f| f.id == e.id) {
                continue;
            }
            let at_end = first_run && self.src.start_at == StartAt::End;
            if let Some(tr) = self.take_on(e, at_end)? {
                if tr.pos.offset > 0 {
                    meta.push(self.saved_entry(tr.id, &tr.path, tr.pos));
                }
                self.files.push(tr);
            }
        }
        Ok(())
    }

    pub(super) fn saved_entry(&self, id: FileId, path: &Path, pos: Pos) -> MetaEntry {
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
    pub(super) fn take_on(
        &mut self,
        e: &Entry,
        at_end: bool,
    ) -> Result<Option<Tracked>, TailError> {
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
    pub(super) fn list(&mut self) -> Result<Vec<Entry>, TailError> {
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
    pub(super) fn find_copy(
        &self,
        listing: &[Entry],
        pos: &Pos,
        not: Option<FileId>,
    ) -> Option<Tracked> {
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
}

/// The position after the last complete line of a file of `len` bytes, and its line number.
pub(super) fn end_position(file: &File, len: u64) -> std::io::Result<Pos> {
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
