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

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::commit::{Said, say_again, sleep_or_stop};
use super::watch::DirWatch;
use super::{Report, SourceContext};
use crate::config::SpoolSource;
use crate::queue::writer::{Alert, Ingest, IngestError};

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

/// Creates `dir` (and its missing parents) readable and writable by its group whatever the
/// umask: the agent and the users of `send` share the spool through the group. A setgid bit
/// inherited from the parent stays, so the group passes on.
///
/// The folder is made with its final mode by [`mkdir_group_shared`], so the agent never needs
/// a chmod: under its unit, `RestrictSUIDSGID=yes` refuses any chmod that carries the setgid
/// bit, and a chmod without it would clear the bit the folder inherited. The chmod below is
/// only for when that could not be done (it is what a `send` run by a user does otherwise).
fn make_shared_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        make_shared_dir(parent)?;
    }
    match mkdir_group_shared(dir) {
        Ok(()) => {}
        // Made by someone else meanwhile (a `send`, the agent): theirs to set up.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o770 == 0o770 {
        return Ok(());
    }
    std::fs::set_permissions(
        dir,
        std::fs::Permissions::from_mode((mode & 0o7000) | 0o770),
    )
}

/// `mkdir(dir, 0770)` with a umask of 007, so the folder gets its group's access (and the
/// parent's setgid bit, from the kernel) without a chmod. The umask is process-wide and other
/// threads create files meanwhile (the queue), so this is done on a thread of its own that
/// first stops sharing its umask with the process (`unshare(CLONE_FS)`, which needs no
/// privilege and is no namespace); the thread, and its umask, end with the call. If unshare
/// is refused, the process umask applies and the caller's chmod makes up for it.
fn mkdir_group_shared(dir: &Path) -> std::io::Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(CLONE_FS) only gives this thread its own copy of the umask, the
            // current and the root folder; umask touches nothing but that copy.
            if unsafe { libc::unshare(libc::CLONE_FS) } == 0 {
                unsafe { libc::umask(0o007) };
            }
            std::fs::DirBuilder::new().mode(0o770).create(dir)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the mkdir thread panicked")))
    })
}

/// Writes one alert into the spool folder the way a dropped file must be: a hidden temporary
/// file, fsync, rename to its final name, fsync of the folder. Returns the final path.
pub fn write_spool(spool: &Path, integration: &str, body: &[u8]) -> std::io::Result<PathBuf> {
    let dir = spool.join(integration);
    make_shared_dir(&dir)?;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!(
        "{nanos:020}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let tmp = dir.join(format!(".{name}.tmp"));
    let done = dir.join(format!("{name}.json"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o660)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &done)?;
        std::fs::File::open(&dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(done)
}

/// One file found in the spool.
struct Found {
    integration: String,
    path: PathBuf,
}

/// What reading a batch of files gave.
struct Batch {
    /// Alerts, each with the file behind it (removed once the alert is durable).
    alerts: Vec<(Alert, PathBuf)>,
    /// Files that cannot be alerts, and why.
    failed: Vec<(PathBuf, String)>,
}

/// What one listing of the spool found.
struct Listing {
    /// Up to the batch's limit of files of configured integrations, each folder's in name order.
    found: Vec<Found>,
    /// How many such files wait in all.
    waiting: u64,
    /// The folders to watch: the spool and the folder of each configured integration in it.
    dirs: Vec<PathBuf>,
    /// Folders of integrations that are not configured and hold files, newly seen: (folder,
    /// files in it).
    unknown: Vec<(PathBuf, u64)>,
}

/// The spool folder's reader (blocking calls; [`run`] drives it).
struct Spool {
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
    /// The spool and the folders of the integrations configured at start.
    fn initial_dirs(&self) -> Vec<PathBuf> {
        std::iter::once(self.src.path.clone())
            .chain(self.initial.iter().map(|i| self.src.path.join(i)))
            .collect()
    }

    /// Creates the folders that are missing (see [`make_shared_dir`]).
    fn ensure_dirs(&self) -> std::io::Result<()> {
        for d in self.initial_dirs() {
            make_shared_dir(&d)?;
        }
        Ok(())
    }

    /// Lists the spool: the integrations' folders in it (at most [`MAX_LISTING`] entries), and
    /// in each folder of a configured integration its files (at most [`MAX_LISTING`]).
    fn list(&mut self, limit: usize) -> Listing {
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
    fn files_in(&self, dir: &Path, tidy: bool) -> Vec<PathBuf> {
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

    fn read(&self, found: Vec<Found>) -> Batch {
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
    fn fail(&mut self, path: &Path, why: &str) -> Result<PathBuf, String> {
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

    fn remember_stuck(&mut self, path: &Path) {
        if self.stuck.len() < MAX_STUCK {
            self.stuck.insert(path.to_owned());
        }
    }
}

fn remove_if_stale(path: &Path) {
    let old = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_TMP);
    if old {
        let _ = std::fs::remove_file(path);
    }
}

enum ReadError {
    Gone,
    Bad(String),
}

/// Reads one spool file (not following symlinks, not blocking on FIFOs, at most `max_body`
/// bytes) and checks it is one JSON object.
fn read_alert(path: &Path, max_body: usize) -> Result<(Vec<u8>, u64), ReadError> {
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

/// Runs the spool source until `ctx.stop` turns true.
pub async fn run(src: SpoolSource, initial: Vec<String>, ctx: SourceContext) {
    let mut spool = Spool {
        src: src.clone(),
        ingest: ctx.ingest.clone(),
        initial,
        max_body: ctx.max_body,
        stuck: HashSet::new(),
        warned: HashSet::new(),
    };
    let mut task = SpoolTask::new(src, ctx, spool.initial_dirs());
    tracing::info!(path = %task.src.path.display(), "Reading the spool folder.");
    loop {
        if *task.ctx.stop.borrow() {
            break;
        }
        let polled = tokio::time::Instant::now() >= task.next_poll;
        if polled {
            task.next_poll = tokio::time::Instant::now() + task.src.poll_interval;
        }
        let rescan = task.dirs.take_rescan() || polled;
        if !rescan {
            tokio::select! {
                _ = task.dirs.wait(task.next_poll) => {}
                _ = task.ctx.stop.changed() => {}
            }
            continue;
        }
        let Some((sp, batch)) = task.look(spool, polled).await else {
            return;
        };
        let worked = !batch.alerts.is_empty() || !batch.failed.is_empty();
        let Some(queued) = task.queue(batch.alerts).await else {
            break;
        };
        let Some(sp) = task.tidy(sp, queued.done, batch.failed, queued.count).await else {
            return;
        };
        spool = sp;
        if queued.retry_later {
            if sleep_or_stop(Duration::from_secs(1), &mut task.ctx.stop).await {
                break;
            }
            task.dirs.request_rescan();
        } else if worked {
            // There may be more than one batch waiting.
            task.dirs.request_rescan();
        }
    }
    tracing::debug!(path = %task.src.path.display(), "The spool source stopped.");
}

/// The spool source's task, between two listings.
struct SpoolTask {
    src: SpoolSource,
    ctx: SourceContext,
    report: Report,
    /// Wakes the task when a watched folder changes.
    dirs: DirWatch,
    /// The folders of the integrations configured at start exist (made once).
    dirs_ok: bool,
    /// When the spool is listed again even without a wake-up.
    next_poll: tokio::time::Instant,
    /// Why queueing failed last and when that was said (see `commit::say_again`).
    said: Said,
    /// Files per commit: halved when the queue has no room for a whole batch (the writer
    /// takes a commit whole or not at all), so that one file at a time still goes in.
    per_commit: usize,
}

/// What one commit of spool files did.
struct Queued {
    /// Alerts now in the queue.
    count: usize,
    /// Their files, to remove (none unless the commit went in).
    done: Vec<PathBuf>,
    /// The queue refused them for now: list again after a pause.
    retry_later: bool,
}

impl SpoolTask {
    fn new(src: SpoolSource, ctx: SourceContext, dirs: Vec<PathBuf>) -> SpoolTask {
        let report = ctx.reporter("spool", &src.path);
        report(&|_| {});
        SpoolTask {
            src,
            ctx,
            report,
            dirs: DirWatch::new(dirs),
            dirs_ok: false,
            next_poll: tokio::time::Instant::now(),
            said: None,
            per_commit: BATCH,
        }
    }

    /// Lists the spool and reads a batch of files (on a blocking thread, which takes the
    /// reader and hands it back), creating the folders first until that worked once; watches
    /// the folders found. None if the blocking task failed.
    async fn look(&mut self, mut sp: Spool, polled: bool) -> Option<(Spool, Batch)> {
        let must_create = !self.dirs_ok;
        let limit = self.per_commit;
        let job = tokio::task::spawn_blocking(move || {
            let created = if must_create {
                Some(sp.ensure_dirs())
            } else {
                None
            };
            let mut listing = sp.list(limit);
            let batch = sp.read(std::mem::take(&mut listing.found));
            (sp, created, batch, listing)
        })
        .await;
        let Ok((sp, created, batch, listing)) = job else {
            tracing::error!(path = %self.src.path.display(), "The spool reading task failed.");
            return None;
        };
        match created {
            Some(Ok(())) => {
                self.dirs_ok = true;
                self.dirs.refresh();
            }
            Some(Err(e)) => {
                let msg = format!("cannot create the spool folders: {e}");
                tracing::error!(path = %self.src.path.display(), "{msg}. Alerts written there by `send` wait until it is fixed.");
                (self.report)(&|s| s.last_error = Some(msg.clone()));
            }
            None => {}
        }
        for (dir, n) in &listing.unknown {
            tracing::warn!(folder = %dir.display(), files = n, "Spool files wait in the folder of an integration that is not configured; they stay there and are read if it is configured again.");
        }
        // Folders of integrations added by a reload, or made by `send`, get watched.
        self.dirs.set_dirs(listing.dirs);
        if polled {
            self.dirs.refresh();
        }
        let waiting = listing.waiting;
        (self.report)(&|s| s.files = waiting);
        Some((sp, batch))
    }

    /// Commits the alerts of integrations still configured in one write. None if the queue
    /// closed (the agent stops).
    async fn queue(&mut self, alerts: Vec<(Alert, PathBuf)>) -> Option<Queued> {
        // A reload may have removed an integration since the listing: its files stay (the
        // next listing warns about them) and must not hold back the others.
        let (alerts, done): (Vec<Alert>, Vec<PathBuf>) = alerts
            .into_iter()
            .filter(|(a, _)| self.ctx.ingest.knows(&a.integration))
            .unzip();
        let mut q = Queued {
            count: 0,
            done: Vec::new(),
            retry_later: false,
        };
        if alerts.is_empty() {
            return Some(q);
        }
        let n = alerts.len();
        match self.ctx.ingest.commit(alerts, Vec::new(), true).await {
            Ok(_) => {
                q.count = n;
                q.done = done;
                self.per_commit = self.per_commit.saturating_mul(2).min(BATCH);
            }
            Err(IngestError::Closed) => return None,
            // Removed between the check above and the commit: list again at once.
            Err(IngestError::UnknownIntegration(_)) => {}
            Err(e) => {
                let msg = e.to_string();
                if say_again(&mut self.said, &e) {
                    tracing::warn!(path = %self.src.path.display(), "Spool files could not be queued ({msg}); they stay and are read again shortly.");
                }
                (self.report)(&|s| s.last_error = Some(msg.clone()));
                q.retry_later = true;
                if matches!(e, IngestError::QueueFull { .. }) {
                    self.per_commit = (n / 2).max(1);
                }
            }
        }
        Some(q)
    }

    /// Removes the files whose alerts were queued and moves those that cannot be alerts to
    /// failed/ (on a blocking thread), then says what happened. None if the blocking task
    /// failed.
    async fn tidy(
        &mut self,
        mut sp: Spool,
        done: Vec<PathBuf>,
        failed: Vec<(PathBuf, String)>,
        queued: usize,
    ) -> Option<Spool> {
        let job = tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            for p in &done {
                if let Err(e) = std::fs::remove_file(p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    sp.remember_stuck(p);
                    errors.push(format!(
                        "{} was queued but cannot be removed ({e}); it is not read again until the agent restarts",
                        p.display()
                    ));
                }
            }
            let mut refused = Vec::new();
            for (p, why) in &failed {
                match sp.fail(p, why) {
                    Ok(to) => refused.push(format!("{}: {why}", to.display())),
                    Err(e) => errors.push(e),
                }
            }
            (sp, errors, refused)
        })
        .await;
        let Ok((sp, errors, refused)) = job else {
            tracing::error!(path = %self.src.path.display(), "The spool reading task failed.");
            return None;
        };
        for e in &errors {
            tracing::error!("{e}");
        }
        for r in &refused {
            tracing::error!("A spool file cannot be an alert and was moved aside: {r}");
        }
        let (nq, nr, last_r, last_e) = (
            queued as u64,
            refused.len() as u64,
            refused.last().cloned(),
            errors.last().cloned(),
        );
        (self.report)(&|s| {
            s.alerts_total += nq;
            s.refused_total += nr;
            if last_r.is_some() {
                s.last_refused = last_r.clone();
            }
            if last_e.is_some() || nq > 0 {
                s.last_error = last_e.clone();
            }
        });
        Some(sp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under the unit (UMask=0077, RestrictSUIDSGID=yes) the agent's chmod to 02770 was refused
    /// and the integration folders were left drwx--S---, closed to the group for good. The
    /// folders must come out 02770 with no chmod at all, whatever the process umask.
    #[test]
    fn spool_folders_are_group_shared_under_a_strict_umask_without_chmod() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o2770)).unwrap();
        let made = spool.join("db-prod").join("failed");
        std::thread::spawn({
            let made = made.clone();
            move || {
                // The unit's umask, on this test's thread only (see mkdir_group_shared).
                assert_eq!(unsafe { libc::unshare(libc::CLONE_FS) }, 0);
                unsafe { libc::umask(0o077) };
                mkdir_group_shared(made.parent().unwrap()).unwrap();
                mkdir_group_shared(&made).unwrap();
            }
        })
        .join()
        .unwrap();
        for d in [spool.join("db-prod"), made] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o2770, "{} is {mode:o}", d.display());
        }
    }
}
