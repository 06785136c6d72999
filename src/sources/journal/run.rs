//! The journal source's task: where to start (the saved cursor, the first run), running
//! `journalctl` (catching up, then following or polling), committing what it reads, and
//! restarting it after a failure.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::child::{Msg, Reader, command_args};
use super::entry::{Item, parse_entry, to_item};
use super::{
    BATCH_BYTES, BATCH_MAX, HEALTHY, RESTART_MAX, RESTART_MIN, Saved, Start, cursor_key,
    plausible_cursor, saved_entry,
};
use crate::config::{JournalSource, StartAt};
use crate::queue::store::MetaEntry;
use crate::queue::writer::{Alert, Ingest, IngestError};
use crate::sources::SourceContext;
use crate::sources::commit::{RETRY_AFTER, Refused, dead_letters, say_again, sleep_or_stop};

/// A run of journalctl failures, logged once.
struct Episode {
    /// The failure was logged and not yet followed by a working journalctl.
    failing: bool,
    /// Wait before the next start.
    backoff: Duration,
}

impl Episode {
    fn new() -> Episode {
        Episode {
            failing: false,
            backoff: RESTART_MIN,
        }
    }

    /// journalctl works (again): the next failure is logged and waited out from the start.
    fn works(&mut self, name: &str) {
        if self.failing {
            tracing::info!(
                source = name,
                "journalctl runs again; journal entries are read."
            );
        }
        self.failing = false;
        self.backoff = RESTART_MIN;
    }

    /// journalctl failed; returns how long to wait before starting it again.
    fn failed(&mut self, name: &str, why: &str) -> Duration {
        if !self.failing {
            tracing::error!(
                source = name,
                "Journal entries cannot be read: {why}. journalctl is started again after {}s, backing off to {}s, without another log line until it works.",
                RESTART_MIN.as_secs(),
                RESTART_MAX.as_secs()
            );
            self.failing = true;
        } else {
            tracing::debug!(source = name, "journalctl failed again: {why}.");
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(RESTART_MAX);
        wait
    }
}

/// Runs the first-run query: the cursor of the newest matching entry (None if there is none).
async fn newest_cursor(src: &JournalSource) -> Result<Option<String>, String> {
    let mut reader = Reader::start(
        &src.journalctl,
        command_args(src, &Start::Newest, false),
        src.max_line,
    );
    let mut cursor = None;
    while let Some(m) = reader.rx.recv().await {
        match m {
            Msg::Line(line) => {
                if let Ok(f) = parse_entry(&line)
                    && let Some(c) = f.get("__CURSOR").filter(|c| plausible_cursor(c))
                {
                    cursor = Some(c.clone());
                }
            }
            Msg::TooLong { cursor: c, .. } => cursor = c.or(cursor),
            Msg::Exited { ok: true, .. } => return Ok(cursor),
            Msg::Exited { ok: false, why } => return Err(why),
        }
    }
    Err("journalctl's reader stopped without saying why".into())
}

/// Runs one journal source until `stop` turns true.
pub async fn run(src: JournalSource, ctx: SourceContext) {
    let SourceContext {
        ingest,
        max_body,
        mut stop,
        clock,
        ..
    } = ctx.clone();
    let report = ctx.reporter("journal", Path::new(&src.name));
    report(&|_| {});
    let store = ingest.store().clone();
    let name = src.name.as_str();
    let mut episode = Episode::new();
    // Why queueing failed last and when that was said (see `commit::say_again`).
    let mut said: Option<(std::mem::Discriminant<IngestError>, Instant)> = None;

    // The saved cursor; None (the key absent) on the first run.
    let mut saved: Option<Saved> = loop {
        let (st, key) = (store.clone(), cursor_key(name));
        match tokio::task::spawn_blocking(move || st.meta(&key)).await {
            Ok(Ok(None)) => break None,
            Ok(Ok(Some(v))) => match serde_json::from_slice::<Saved>(&v) {
                Ok(s) if s.cursor.as_deref().is_none_or(plausible_cursor) => break Some(s),
                _ => {
                    tracing::warn!(
                        source = name,
                        "The saved journal cursor is unreadable; it is dropped and reading starts as on a first run."
                    );
                    break None;
                }
            },
            Ok(Err(e)) => {
                let msg = format!("cannot read the saved journal cursor: {e}");
                tracing::error!(source = name, "{msg}. Retrying.");
                report(&|s| s.last_error = Some(msg.clone()));
            }
            Err(e) => {
                tracing::error!(source = name, "The reading task failed: {e}");
                return;
            }
        }
        if sleep_or_stop(RETRY_AFTER, &mut stop).await {
            return;
        }
    };

    // Polling: whether the first pass that worked was announced.
    let mut announced = false;
    'outer: loop {
        if *stop.borrow() {
            break;
        }
        // First run: where to start, committed before anything is read.
        let cursor = match &saved {
            Some(s) => s.cursor.clone(),
            None => {
                let first = match src.start_at {
                    StartAt::Beginning => Ok(None),
                    StartAt::End => newest_cursor(&src).await,
                };
                match first {
                    Ok(c) => {
                        let meta = vec![saved_entry(name, c.as_deref())];
                        if !commit_meta(&ingest, meta, &mut stop).await {
                            break;
                        }
                        episode.works(name);
                        saved = Some(Saved { cursor: c.clone() });
                        c
                    }
                    Err(why) => {
                        report(&|s| s.last_error = Some(why.clone()));
                        let wait = episode.failed(name, &why);
                        if sleep_or_stop(wait, &mut stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        // Catch up without --follow (journalctl 250-257 follows the newest boot only, so
        // entries of an earlier boot after the cursor would be skipped), then follow.
        let mut cursor = cursor;
        let mut exited = None;
        // Polling: only the catch-up, again every poll_interval.
        let phases: &[bool] = if src.poll_interval.is_some() {
            &[false]
        } else {
            &[false, true]
        };
        for &follow in phases {
            let start = cursor.clone().map_or(Start::Beginning, Start::At);
            let mut reader = Reader::start(
                &src.journalctl,
                command_args(&src, &start, follow),
                src.max_line,
            );
            if follow {
                report(&|s| s.files = 1);
                if episode.failing {
                    tracing::debug!(source = name, "Starting journalctl again.");
                } else {
                    tracing::info!(source = name, integration = %src.integration, "Reading the journal.");
                }
            }
            let healthy = tokio::time::sleep(HEALTHY);
            tokio::pin!(healthy);
            // Only a following journalctl can be healthy for running long.
            let mut healthy_done = !follow;
            let end: Option<(bool, String)> = loop {
                let first = tokio::select! {
                    _ = stop.changed() => {
                        reader.kill();
                        break None;
                    }
                    _ = &mut healthy, if !healthy_done => {
                        healthy_done = true;
                        episode.works(name);
                        report(&|s| s.last_error = None);
                        continue;
                    }
                    m = reader.rx.recv() => m,
                };
                let Some(first) = first else {
                    break Some((
                        false,
                        "journalctl's reader stopped without saying why".to_string(),
                    ));
                };
                // Everything waiting, within the batch bounds.
                let mut msgs = vec![first];
                let mut bytes = 0;
                let mut end = None;
                loop {
                    match msgs.last() {
                        Some(Msg::Exited { ok, why }) => {
                            end = Some((*ok, why.clone()));
                            msgs.pop();
                            break;
                        }
                        Some(Msg::Line(l)) => bytes += l.len(),
                        Some(Msg::TooLong { head, .. }) => bytes += head.len(),
                        None => break,
                    }
                    if msgs.len() >= BATCH_MAX || bytes >= BATCH_BYTES {
                        break;
                    }
                    match reader.rx.try_recv() {
                        Ok(m) => msgs.push(m),
                        Err(_) => break,
                    }
                }
                // journalctl starts AT the cursor (--cursor): that entry is in the queue.
                let items: Vec<Item> = msgs
                    .into_iter()
                    .filter_map(|m| to_item(&src, m, max_body))
                    .filter(|i| i.cursor.is_none() || i.cursor != start.cursor())
                    .collect();
                if !items.is_empty() {
                    match commit_items(&src, &ingest, items, &report, &mut said, &mut stop, clock)
                        .await
                    {
                        Some(Some(c)) => {
                            cursor = Some(c.clone());
                            saved = Some(Saved { cursor: Some(c) });
                            if !healthy_done {
                                healthy_done = true;
                                episode.works(name);
                            }
                        }
                        Some(None) => {}
                        None => {
                            reader.kill();
                            break None;
                        }
                    }
                }
                if let Some(e) = end {
                    break Some(e);
                }
            };
            drop(reader);
            match end {
                None => break 'outer,
                Some((true, _)) if let Some(every) = src.poll_interval => {
                    if !announced {
                        tracing::info!(source = name, integration = %src.integration, every = ?every, "Reading the journal, polling.");
                        announced = true;
                    }
                    episode.works(name);
                    report(&|s| {
                        s.files = 1;
                        s.last_error = None;
                    });
                    if sleep_or_stop(every, &mut stop).await {
                        break 'outer;
                    }
                    continue 'outer;
                }
                // Caught up: now follow from there.
                Some((true, _)) if !follow => {}
                Some((_, why)) => {
                    exited = Some(why);
                    break;
                }
            }
        }
        let exited = exited.unwrap_or_else(|| "journalctl exited".to_string());
        report(&|s| {
            s.files = 0;
            s.last_error = Some(exited.clone());
        });
        let wait = episode.failed(name, &exited);
        if sleep_or_stop(wait, &mut stop).await {
            break;
        }
    }
    report(&|s| s.files = 0);
    tracing::debug!(source = name, "The journal source stopped.");
}

/// Commits `items` (dead letters first, then the alerts with the cursor of the last entry
/// queued), retrying while the queue refuses them; fewer at a time while it is full. Returns
/// the new cursor (Some(None) if none moved), or None if the agent stops first.
async fn commit_items(
    src: &JournalSource,
    ingest: &Ingest,
    mut items: Vec<Item>,
    report: &impl Fn(&dyn Fn(&mut crate::sources::SourceStatus)),
    said: &mut Option<(std::mem::Discriminant<IngestError>, Instant)>,
    stop: &mut watch::Receiver<bool>,
    clock: crate::clock::Clock,
) -> Option<Option<String>> {
    let name = src.name.as_str();
    let store = ingest.store();
    let refused: Vec<Refused> = items.iter_mut().filter_map(|i| i.refused.take()).collect();
    while !refused.is_empty() {
        let dls = dead_letters(store, &src.integration, &refused, clock.now());
        let st = store.clone();
        match tokio::task::spawn_blocking(move || st.put_dead(&dls)).await {
            Ok(Ok(())) => {
                tracing::error!(
                    source = name,
                    count = refused.len(),
                    "Journal entries were not forwarded and are kept as dead letters; the first: {}",
                    refused[0].reason
                );
                let (n, last) = (
                    refused.len() as u64,
                    refused.last().map(|r| r.reason.clone()),
                );
                report(&|s| {
                    s.refused_total += n;
                    s.last_refused = last.clone();
                });
                break;
            }
            Ok(Err(e)) => {
                let msg = format!("cannot record refused journal entries: {e}");
                tracing::error!(source = name, "{msg}. Retrying.");
                report(&|s| s.last_error = Some(msg.clone()));
                if sleep_or_stop(RETRY_AFTER, stop).await {
                    return None;
                }
            }
            Err(e) => {
                tracing::error!(source = name, "The dead-letter task failed: {e}");
                return None;
            }
        }
    }
    let mut moved = None;
    // Most entries per commit: all of them until the queue refuses a commit for lack of room,
    // then half as many each time (down to one), which fits once the sender makes room.
    let mut max_items = items.len();
    while !items.is_empty() {
        let take = max_items.min(items.len());
        let cursor = items[..take].iter().rev().find_map(|i| i.cursor.clone());
        let alerts: Vec<Alert> = items[..take]
            .iter()
            .filter_map(|i| i.alert.clone())
            .collect();
        let n = alerts.len() as u64;
        let meta = cursor
            .as_deref()
            .map(|c| vec![saved_entry(name, Some(c))])
            .unwrap_or_default();
        if alerts.is_empty() && meta.is_empty() {
            items.drain(..take);
            continue;
        }
        match ingest.commit(alerts, meta, true).await {
            Ok(_) => {
                items.drain(..take);
                if cursor.is_some() {
                    moved = cursor;
                }
                report(&|s| {
                    s.alerts_total += n;
                    s.last_error = None;
                });
            }
            Err(IngestError::Closed) => return None,
            Err(e) => {
                if matches!(e, IngestError::QueueFull { .. }) {
                    max_items = (take / 2).max(1);
                }
                let msg = e.to_string();
                if say_again(said, &e) {
                    tracing::warn!(
                        source = name,
                        "Journal entries could not be queued ({msg}); reading pauses and resumes where it stood."
                    );
                }
                report(&|s| s.last_error = Some(msg.clone()));
                if sleep_or_stop(RETRY_AFTER, stop).await {
                    return None;
                }
            }
        }
    }
    Some(moved)
}

/// Commits metadata alone (the first run's starting point), retrying while the queue refuses
/// it. False if the agent stops first.
async fn commit_meta(
    ingest: &Ingest,
    meta: Vec<MetaEntry>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut warned = false;
    loop {
        match ingest.commit(Vec::new(), meta.clone(), true).await {
            Ok(_) => return true,
            Err(IngestError::Closed) => return false,
            Err(e) => {
                if !warned {
                    tracing::warn!("Saving the journal cursor failed ({e}); retrying.");
                    warned = true;
                }
                if sleep_or_stop(RETRY_AFTER, stop).await {
                    return false;
                }
            }
        }
    }
}
