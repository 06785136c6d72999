//! The file source's task: opens the [`Tailer`], then reads chunks on a blocking thread and
//! commits them (dead letters first, then the alerts with the new position).

use super::{Chunk, Tailer};
use crate::config::FileSource;
use crate::queue::writer::IngestError;
use crate::sources::commit::{
    RETRY_AFTER, Said, commit_meta, dead_letters, say_again, sleep_or_stop,
};
use crate::sources::watch::DirWatch;
use crate::sources::{Report, SourceContext};

/// Runs one file source until `ctx.stop` turns true.
pub async fn run(src: FileSource, ctx: SourceContext) {
    let mut task = FileTask::new(src, ctx);
    let Some(mut tailer) = task.open().await else {
        return;
    };
    let mut pending: Option<Chunk> = None;
    loop {
        if *task.ctx.stop.borrow() {
            break;
        }
        let mut chunk = match pending.take() {
            Some(c) => c,
            None => {
                let Some((t, read)) = task.read(tailer).await else {
                    return;
                };
                tailer = t;
                match read {
                    Some(c) => c,
                    None => continue,
                }
            }
        };
        // Dead letters first (durable), then the alerts with the new position.
        match task.record_dead(&mut tailer, &mut chunk).await {
            Then::Go => {}
            Then::Retry => {
                pending = Some(chunk);
                continue;
            }
            Then::Stop => break,
            Then::Abort => return,
        }
        if task.commit(&mut tailer, chunk).await {
            break;
        }
    }
    tracing::debug!(source = %task.src.path.display(), "The file source stopped.");
}

/// What the loop does after a step.
enum Then {
    /// Go on with the chunk.
    Go,
    /// The same chunk again (the pause is behind).
    Retry,
    /// The agent stops.
    Stop,
    /// A blocking task failed (a panic, which aborts a release build): end at once.
    Abort,
}

/// A file source's task, between two chunks.
struct FileTask {
    src: FileSource,
    ctx: SourceContext,
    report: Report,
    /// Wakes the task when the folder changes.
    dirs: DirWatch,
    /// When the folder is listed again even without a wake-up.
    next_poll: tokio::time::Instant,
    /// Why queueing failed last and when that was said: said again only for another reason
    /// or after a while, not at every retry while the queue is full.
    said: Said,
}

impl FileTask {
    fn new(src: FileSource, ctx: SourceContext) -> FileTask {
        let report = ctx.reporter("file", &src.path);
        report(&|_| {});
        FileTask {
            dirs: DirWatch::new(vec![src.dir.clone()]),
            next_poll: tokio::time::Instant::now() + src.poll_interval,
            src,
            ctx,
            report,
            said: None,
        }
    }

    /// Loads the saved positions and commits the start-up ones; retries while the folder
    /// cannot be read. None if the agent stops first.
    async fn open(&mut self) -> Option<Tailer> {
        let store = self.ctx.ingest.store().clone();
        let tailer = loop {
            let (s, st, max_body) = (self.src.clone(), store.clone(), self.ctx.max_body);
            let opened = tokio::task::spawn_blocking(move || Tailer::open(s, st, max_body)).await;
            let err = match opened {
                Ok(Ok((t, meta))) => {
                    let what = "read positions";
                    if !commit_meta(&self.ctx.ingest, meta, what, &mut self.ctx.stop).await {
                        return None;
                    }
                    break t;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("the reading task failed: {e}"),
            };
            tracing::error!(source = %self.src.path.display(), "Cannot start following files: {err}. Retrying.");
            (self.report)(&|s| s.last_error = Some(err.clone()));
            if sleep_or_stop(self.src.poll_interval, &mut self.ctx.stop).await {
                return None;
            }
        };
        tracing::info!(source = %self.src.path.display(), integration = %self.src.integration, files = tailer.file_count(), "Following files.");
        // The first poll is one interval after the files are followed.
        self.next_poll = tokio::time::Instant::now() + self.src.poll_interval;
        Some(tailer)
    }

    /// Lists the folder if it changed or a poll is due, then reads the next chunk (on a
    /// blocking thread, which takes the tailer and hands it back). With nothing to commit it
    /// waits for a wake-up, a poll or the stop first and gives no chunk. None if the blocking
    /// task failed.
    async fn read(&mut self, mut tailer: Tailer) -> Option<(Tailer, Option<Chunk>)> {
        let polled = tokio::time::Instant::now() >= self.next_poll;
        if polled {
            self.dirs.refresh();
            self.next_poll = tokio::time::Instant::now() + self.src.poll_interval;
        }
        let rescan = self.dirs.take_rescan() || polled;
        let job = tokio::task::spawn_blocking(move || {
            let r = (|| {
                if rescan {
                    tailer.rescan()?;
                }
                tailer.next_chunk()
            })();
            (tailer, r)
        });
        let (tailer, res) = match job.await {
            Ok(v) => v,
            Err(e) => {
                // Only a panic gets here, and panics abort the process in release.
                tracing::error!(source = %self.src.path.display(), "The reading task failed: {e}");
                return None;
            }
        };
        match res {
            Ok(Some(c)) => return Some((tailer, Some(c))),
            Ok(None) => {
                let files = tailer.file_count() as u64;
                (self.report)(&|s| s.files = files);
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(source = %self.src.path.display(), "Reading failed: {msg}. Trying again at the next poll.");
                (self.report)(&|s| s.last_error = Some(msg.clone()));
                self.dirs.request_rescan();
            }
        }
        tokio::select! {
            _ = self.dirs.wait(self.next_poll) => {}
            _ = self.ctx.stop.changed() => {}
        }
        Some((tailer, None))
    }

    /// Writes the dead letters of `chunk`'s refused lines (durably, before the commit that
    /// moves the position past them) and empties its list of them.
    async fn record_dead(&mut self, tailer: &mut Tailer, chunk: &mut Chunk) -> Then {
        if chunk.refused.is_empty() {
            return Then::Go;
        }
        let now = self.ctx.clock.now();
        let store = self.ctx.ingest.store();
        let dls = dead_letters(store, &self.src.integration, &chunk.refused, now);
        match self.ctx.ingest.bury(dls).await {
            Ok(()) => {
                tracing::error!(
                    source = %self.src.path.display(),
                    count = chunk.refused.len(),
                    "Lines were not forwarded and are kept as dead letters; the first: {}",
                    chunk.refused[0].reason
                );
                let (n, last) = (
                    chunk.refused.len() as u64,
                    chunk.refused.last().map(|r| r.reason.clone()),
                );
                (self.report)(&|s| {
                    s.refused_total += n;
                    s.last_refused = last.clone();
                });
                tailer.dead_written(chunk);
                chunk.refused.clear();
                Then::Go
            }
            Err(IngestError::Closed) => {
                tracing::error!(source = %self.src.path.display(), "The queue writer is gone; the refused lines are read again at the next start.");
                Then::Abort
            }
            Err(e) => {
                let msg = format!("cannot record refused lines: {e}");
                tracing::error!(source = %self.src.path.display(), "{msg}. Retrying.");
                (self.report)(&|s| s.last_error = Some(msg.clone()));
                if sleep_or_stop(RETRY_AFTER, &mut self.ctx.stop).await {
                    return Then::Stop;
                }
                Then::Retry
            }
        }
    }

    /// Commits the chunk's alerts with its new position; the position moves only then.
    /// Refused for lack of room, the same lines are read again after a pause, fewer at a
    /// time. True if the agent stops.
    async fn commit(&mut self, tailer: &mut Tailer, mut chunk: Chunk) -> bool {
        let n = chunk.alerts.len() as u64;
        let alerts = std::mem::take(&mut chunk.alerts);
        let meta = chunk.meta.clone();
        match self.ctx.ingest.commit(alerts, meta, true).await {
            Ok(_) => {
                tailer.committed(chunk);
                tailer.grow();
                let files = tailer.file_count() as u64;
                (self.report)(&|s| {
                    s.alerts_total += n;
                    s.files = files;
                    s.last_error = None;
                });
                false
            }
            Err(IngestError::Closed) => true,
            Err(e) => {
                // The position did not move: the same lines are read again after a pause, fewer
                // at a time if they did not fit.
                if matches!(e, IngestError::QueueFull { .. }) {
                    tailer.shrink(n as usize);
                }
                let msg = e.to_string();
                if say_again(&mut self.said, &e) {
                    tracing::warn!(source = %self.src.path.display(), "Lines could not be queued ({msg}); reading pauses and resumes where it stood.");
                }
                (self.report)(&|s| s.last_error = Some(msg.clone()));
                sleep_or_stop(RETRY_AFTER, &mut self.ctx.stop).await
            }
        }
    }
}
