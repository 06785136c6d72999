//! Wake-ups for the file and spool sources: inotify (through `notify`) on the folders they read,
//! and a slow poll as the safety net for what inotify does not report (a folder created or
//! replaced later, network file systems, an overflowed event queue, a watch limit reached).
//!
//! Events carry no data here: they only wake the source, which then looks at the files itself.
//! A wake-up is a single permit ([`Notify`]), so a burst of events costs one look.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::ModifyKind;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Watches some folders (not recursively) and wakes the source that owns it.
pub struct DirWatch {
    /// Dropped and rebuilt when a folder appears or is replaced.
    watcher: Option<RecommendedWatcher>,
    /// The folders, each with the (device, inode) it had when it was watched (None: missing or
    /// not watched).
    dirs: Vec<(PathBuf, Option<(u64, u64)>)>,
    wake: Arc<Notify>,
    /// Set when names may have changed in a folder (created, removed, renamed files) or events
    /// were lost: the source must list the folder again, not only read what it follows.
    rescan: Arc<AtomicBool>,
    /// Said once, not at every poll.
    warned: bool,
}

impl DirWatch {
    /// Watches `dirs`; folders that do not exist yet are picked up by [`DirWatch::refresh`].
    pub fn new(dirs: Vec<PathBuf>) -> DirWatch {
        let mut w = DirWatch {
            watcher: None,
            dirs: dirs.into_iter().map(|d| (d, None)).collect(),
            wake: Arc::new(Notify::new()),
            rescan: Arc::new(AtomicBool::new(true)),
            warned: false,
        };
        w.refresh();
        w
    }

    /// Watches `dirs` from now on instead of the folders given so far (the spool's folders
    /// change with the configured integrations). Nothing changes when they are the same.
    pub fn set_dirs(&mut self, dirs: Vec<PathBuf>) {
        let same =
            dirs.len() == self.dirs.len() && dirs.iter().zip(&self.dirs).all(|(a, (b, _))| a == b);
        if same {
            return;
        }
        self.dirs = dirs.into_iter().map(|d| (d, None)).collect();
        self.watcher = None;
        self.refresh();
    }

    /// Rebuilds the watches if a folder appeared, vanished or was replaced since they were set
    /// up. Called at every poll.
    pub fn refresh(&mut self) {
        let now: Vec<Option<(u64, u64)>> = self
            .dirs
            .iter()
            .map(|(d, _)| std::fs::metadata(d).ok().map(|m| (m.dev(), m.ino())))
            .collect();
        let unchanged =
            self.watcher.is_some() && self.dirs.iter().zip(&now).all(|((_, was), is)| was == is);
        if unchanged {
            return;
        }
        self.watcher = None;
        let (wake, rescan) = (self.wake.clone(), self.rescan.clone());
        let handler = move |res: notify::Result<notify::Event>| {
            let names_changed = match &res {
                Ok(ev) => {
                    ev.need_rescan()
                        || matches!(
                            ev.kind,
                            EventKind::Create(_)
                                | EventKind::Remove(_)
                                | EventKind::Modify(ModifyKind::Name(_))
                                | EventKind::Any
                                | EventKind::Other
                        )
                }
                Err(_) => true,
            };
            // Opening and reading (ours included) changes nothing worth a look.
            if let Ok(ev) = &res
                && matches!(ev.kind, EventKind::Access(_))
                && !names_changed
            {
                return;
            }
            if names_changed {
                rescan.store(true, Ordering::SeqCst);
            }
            wake.notify_one();
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                self.warn_once(format!("inotify is not available ({e})"));
                return;
            }
        };
        for ((dir, was), is) in self.dirs.iter_mut().zip(now) {
            *was = None;
            if is.is_none() {
                continue;
            }
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => *was = is,
                Err(e) => {
                    let msg = format!("{} cannot be watched ({e})", dir.display());
                    if !self.warned {
                        tracing::warn!("{msg}; it is polled instead, so changes are seen later.");
                        self.warned = true;
                    }
                }
            }
        }
        self.watcher = Some(watcher);
        // Whatever happened while nothing watched is found by listing again.
        self.rescan.store(true, Ordering::SeqCst);
    }

    fn warn_once(&mut self, msg: String) {
        if !self.warned {
            tracing::warn!("{msg}; the folders are polled instead, so changes are seen later.");
            self.warned = true;
        }
    }

    /// Whether the folders must be listed again; clears the flag.
    pub fn take_rescan(&self) -> bool {
        self.rescan.swap(false, Ordering::SeqCst)
    }

    /// Asks for a listing at the next look (after the source changed something itself).
    pub fn request_rescan(&self) {
        self.rescan.store(true, Ordering::SeqCst);
    }

    /// Waits for an event, or until `deadline` (the next poll).
    pub async fn wait(&self, deadline: tokio::time::Instant) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
