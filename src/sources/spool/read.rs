//! Reading the spool (blocking calls, driven by the task): listing the folders of configured
//! integrations, reading each file as an alert, and moving a file that cannot be one aside.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::folder::make_shared_dir;
use super::{FAILED_DIR, MAX_LISTING, MAX_STUCK, STALE_TMP};
use crate::config::SpoolSource;
use crate::queue::writer::{Alert, Ingest};

/// One file found in the spool.
pub(super) struct Found {
    integration: String,
    path: PathBuf,
}

/// What reading a batch of files gave.
pub(super) struct Batch {
    /// Alerts, each with the file behind it (removed once the alert is durable).
    pub(super) alerts: Vec<(Alert, PathBuf)>,
    /// Files that cannot be alerts, and why.
    pub(super) failed: Vec<(PathBuf, String)>,
}

/// What one listing of the spool found.
pub(super) struct Listing {
    /// Up to the batch's limit of files of configured integrations, each folder's in name order.
    pub(super) found: Vec<Found>,
    /// How many such files wait in all.
    pub(super) waiting: u64,
    /// The folders to watch: the spool and the folder of each configured integration in it.
    pub(super) dirs: Vec<PathBuf>,
    /// Folders of integrations that are not configured and hold files, newly seen: (folder,
    /// files in it).
    pub(super) unknown: Vec<(PathBuf, u64)>,
}

/// The spool folder's reader (blocking calls; [`run`](super::run()) drives it).
pub(super) struct Spool {
    src: SpoolSource,
    /// Asked which integrations are configured, at each listing (it follows reloads).
    ingest: Ingest,
    /// Integrations configured at start: their folders are created if missing.
    initial: Vec<String>,
    max_body: usize,
    /// Files already queued whose removal failed, or that could not be moved to failed/.
    stuck: HashSet<PathBuf>,
    /// Folders of unconfigured integrations already warned about (forgotten once the
    /// integration is configured again, so a second removal warns again).
    warned: HashSet<String>,
}

impl Spool {
    pub(super) fn new(
        src: SpoolSource,
        ingest: Ingest,
        initial: Vec<String>,
        max_body: usize,
    ) -> Spool {
        Spool {
            src,
            ingest,
            initial,
            max_body,
            stuck: HashSet::new(),
            warned: HashSet::new(),
        }
    }

    /// The spool and the folders of the integrations configured at start.
    pub(super) fn initial_dirs(&self) -> Vec<PathBuf> {
        std::iter::once(self.src.path.clone())
            .chain(self.initial.iter().map(|i| self.src.path.join(i)))
            .collect()
    }

    /// Creates the folders that are missing (see [`make_shared_dir`]).
    pub(super) fn ensure_dirs(&self) -> std::io::Result<()> {
        for d in self.initial_dirs() {
            make_shared_dir(&d)?;
        }
        Ok(())
    }

    /// Lists the spool: the integrations' folders in it (at most [`MAX_LISTING`] entries), and
    /// in each folder of a configured integration its files (at most [`MAX_LISTING`]).
    pub(super) fn list(&mut self, limit: usize) -> Listing {
        let mut l = Listing {
            found: Vec::new(),
            waiting: 0,
            dirs: vec![self.src.path.clone()],
            unknown: Vec::new(),
        };
        let Ok(rd) = std::fs::read_dir(&self.src.path) else {
            return l;
        };
        let mut folders: Vec<String> = rd
            .take(MAX_LISTING)
            .flatten()
            .filter_map(|de| de.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && crate::config::valid_name(n))
            .filter(|n| self.src.path.join(n).is_dir())
            .collect();
        folders.sort();
        for integration in folders {
            let dir = self.src.path.join(&integration);
            let known = self.ingest.knows(&integration);
            let names = self.files_in(&dir, known);
            if !known {
                if !names.is_empty() && self.warned.insert(integration) {
                    l.unknown.push((dir, names.len() as u64));
                }
                continue;
            }
            self.warned.remove(&integration);
            l.dirs.push(dir);
            l.waiting += names.len() as u64;
            for path in names {
                if l.found.len() < limit {
                    l.found.push(Found {
                        integration: integration.clone(),
                        path,
                    });
                }
            }
        }
        l
    }

    /// The files of one integration's folder waiting to be read, in name order (stale
    /// temporary files of a `send` that died are removed on the way when `tidy`).
    pub(super) fn files_in(&self, dir: &Path, tidy: bool) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut names = Vec::new();
        for de in rd.take(MAX_LISTING).flatten() {
            let name = de.file_name();
            let Some(n) = name.to_str() else { continue };
            if n.starts_with('.') {
                if tidy && n.ends_with(".tmp") {
                    remove_if_stale(&de.path());
                }
                continue;
            }
            if !n.ends_with(".json") || de.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = de.path();
            if self.stuck.contains(&path) {
                continue;
            }
            names.push(path);
        }
        names.sort();
        names
    }

    pub(super) fn read(&self, found: Vec<Found>) -> Batch {
        let mut b = Batch {
            alerts: Vec::new(),
            failed: Vec::new(),
        };
        for f in found {
            match read_alert(&f.path, self.max_body) {
                Ok((payload, key_hash)) => {
                    let alert = Alert {
                        integration: f.integration,
                        payload,
                        key_hash,
                    };
                    b.alerts.push((alert, f.path));
                }
                // Renamed or removed by someone else meanwhile: not ours any more.
                Err(ReadError::Gone) => {}
                Err(ReadError::Bad(why)) => b.failed.push((f.path, why)),
            }
        }
        b
    }

    /// Moves a file that cannot be an alert to failed/ and writes why beside it.
    pub(super) fn fail(&mut self, path: &Path, why: &str) -> Result<PathBuf, String> {
        let dir = path.parent().unwrap_or(Path::new(".")).join(FAILED_DIR);
        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let mut to = dir.join(&name);
        let moved = (|| -> std::io::Result<()> {
            make_shared_dir(&dir)?;
            if to.exists() {
                let stamp = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                to = dir.join(format!("{}.{stamp}", name.to_string_lossy()));
            }
            let mut why_path = to.clone().into_os_string();
            why_path.push(".error");
            std::fs::write(&why_path, format!("{why}\n"))?;
            std::fs::rename(path, &to)
        })();
        match moved {
            Ok(()) => Ok(to),
            Err(e) => {
                self.remember_stuck(path);
                Err(format!(
                    "{} cannot be an alert ({why}) and cannot be moved to {}: {e}",
                    path.display(),
                    dir.display()
                ))
            }
        }
    }

    pub(super) fn remember_stuck(&mut self, path: &Path) {
        if self.stuck.len() < MAX_STUCK {
            self.stuck.insert(path.to_owned());
        }
    }
}

pub(super) fn remove_if_stale(path: &Path) {
    let old = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_TMP);
    if old {
        let _ = std::fs::remove_file(path);
    }
}

pub(super) enum ReadError {
    Gone,
    Bad(String),
}

/// Reads one spool file (not following symlinks, not blocking on FIFOs, at most `max_body`
/// bytes) and checks it is one JSON object.
pub(super) fn read_alert(path: &Path, max_body: usize) -> Result<(Vec<u8>, u64), ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Gone),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ReadError::Bad(
                "it is a symbolic link; spool files must be regular files".into(),
            ));
        }
        Err(e) => return Err(ReadError::Bad(format!("cannot open it: {e}"))),
    };
    match file.metadata() {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(ReadError::Bad("it is not a regular file".into())),
        Err(e) => return Err(ReadError::Bad(format!("cannot read it: {e}"))),
    }
    let mut body = Vec::new();
    file.take(max_body as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ReadError::Bad(format!("cannot read it: {e}")))?;
    if body.len() > max_body {
        return Err(ReadError::Bad(format!(
            "it is larger than queue.max_body ({max_body} bytes)"
        )));
    }
    let key =
        crate::alert::parse_alert(&body).map_err(|e| ReadError::Bad(e.describe("the file")))?;
    Ok((body, key))
}
