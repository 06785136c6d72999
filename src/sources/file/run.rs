//! The file source's task: opens the [`Tailer`], then reads chunks on a blocking thread and
//! commits them (dead letters first, then the alerts with the new position).

use tokio::sync::watch;

use super::{Chunk, Tailer};
use crate::config::FileSource;
use crate::queue::store::MetaEntry;
use crate::queue::writer::{Ingest, IngestError};
use crate::sources::SourceContext;
use crate::sources::commit::{RETRY_AFTER, dead_letters, say_again, sleep_or_stop};
use crate::sources::watch::DirWatch;

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
