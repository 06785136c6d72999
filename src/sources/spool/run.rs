//! The spool source's task: lists and reads on a blocking thread when a folder changes or a
//! poll is due, queues what it read in one commit, then removes the files queued.

use std::path::PathBuf;
use std::time::Duration;

use super::BATCH;
use super::read::{Batch, Spool};
use crate::config::SpoolSource;
use crate::queue::writer::{Alert, IngestError};
use crate::sources::commit::{Said, say_again, sleep_or_stop};
use crate::sources::watch::DirWatch;
use crate::sources::{Report, SourceContext};

/// Runs the spool source until `ctx.stop` turns true.
pub async fn run(src: SpoolSource, initial: Vec<String>, ctx: SourceContext) {
    let mut spool = Spool::new(src.clone(), ctx.ingest.clone(), initial, ctx.max_body);
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
