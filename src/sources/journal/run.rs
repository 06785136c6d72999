//! The journal source's task: where to start (the saved cursor, the first run), running
//! `journalctl` (catching up, then following or polling), committing what it reads, and
//! restarting it after a failure.

use std::path::Path;
use std::time::Duration;

use super::child::{Msg, Reader, command_args};
use super::entry::{Item, parse_entry, to_item};
use super::{
    BATCH_BYTES, BATCH_MAX, HEALTHY, RESTART_MAX, RESTART_MIN, Saved, Start, cursor_key,
    plausible_cursor, saved_entry,
};
use crate::config::{JournalSource, StartAt};
use crate::queue::writer::{Alert, IngestError};
use crate::sources::commit::{
    RETRY_AFTER, Refused, Said, commit_meta, dead_letters, say_again, sleep_or_stop,
};
use crate::sources::{Report, SourceContext};

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

/// Runs one journal source until `ctx.stop` turns true.
pub async fn run(src: JournalSource, ctx: SourceContext) {
    let mut task = JournalTask::new(src, ctx);
    if !task.load_saved().await {
        return;
    }
    loop {
        if *task.ctx.stop.borrow() {
            break;
        }
        // First run: where to start, committed before anything is read.
        let cursor = match task.start_cursor().await {
            Step::Go(c) => c,
            Step::Again => continue,
            Step::Stop => break,
        };
        let exited = match task.pass(cursor).await {
            Step::Go(why) => why,
            Step::Again => continue,
            Step::Stop => break,
        };
        (task.report)(&|s| {
            s.files = 0;
            s.last_error = Some(exited.clone());
        });
        let wait = task.episode.failed(&task.src.name, &exited);
        if sleep_or_stop(wait, &mut task.ctx.stop).await {
            break;
        }
    }
    (task.report)(&|s| s.files = 0);
    tracing::debug!(source = task.src.name, "The journal source stopped.");
}

/// How the loop goes on after a step.
enum Step<T> {
    /// With this.
    Go(T),
    /// From the top of the loop (the pause, if any, is behind).
    Again,
    /// The agent stops.
    Stop,
}

/// A journal source's task, between two runs of `journalctl`.
struct JournalTask {
    src: JournalSource,
    ctx: SourceContext,
    report: Report,
    /// journalctl's failures, logged once per episode, and the wait before the next start.
    episode: Episode,
    /// Why queueing failed last and when that was said (see `commit::say_again`).
    said: Said,
    /// The saved cursor; None (the key absent) until the first run's starting point is
    /// committed.
    saved: Option<Saved>,
    /// Polling: whether the first pass that worked was announced.
    announced: bool,
}

impl JournalTask {
    fn new(src: JournalSource, ctx: SourceContext) -> JournalTask {
        let report = ctx.reporter("journal", Path::new(&src.name));
        report(&|_| {});
        JournalTask {
            src,
            ctx,
            report,
            episode: Episode::new(),
            said: None,
            saved: None,
            announced: false,
        }
    }

    /// Loads the saved cursor (none on the first run), retrying while sled cannot be read.
    /// False if the agent stops first.
    async fn load_saved(&mut self) -> bool {
        let name = self.src.name.as_str();
        loop {
            let (st, key) = (self.ctx.ingest.store().clone(), cursor_key(name));
            match tokio::task::spawn_blocking(move || st.meta(&key)).await {
                Ok(Ok(None)) => return true,
                Ok(Ok(Some(v))) => match serde_json::from_slice::<Saved>(&v) {
                    Ok(s) if s.cursor.as_deref().is_none_or(plausible_cursor) => {
                        self.saved = Some(s);
                        return true;
                    }
                    _ => {
                        tracing::warn!(
                            source = name,
                            "The saved journal cursor is unreadable; it is dropped and reading starts as on a first run."
                        );
                        return true;
                    }
                },
                Ok(Err(e)) => {
                    let msg = format!("cannot read the saved journal cursor: {e}");
                    tracing::error!(source = name, "{msg}. Retrying.");
                    (self.report)(&|s| s.last_error = Some(msg.clone()));
                }
                Err(e) => {
                    tracing::error!(source = name, "The reading task failed: {e}");
                    return false;
                }
            }
            if sleep_or_stop(RETRY_AFTER, &mut self.ctx.stop).await {
                return false;
            }
        }
    }

    /// The cursor to start at: the saved one, or on the first run the starting point of
    /// `start_at`, committed before anything is read.
    async fn start_cursor(&mut self) -> Step<Option<String>> {
        if let Some(s) = &self.saved {
            return Step::Go(s.cursor.clone());
        }
        let first = match self.src.start_at {
            StartAt::Beginning => Ok(None),
            StartAt::End => newest_cursor(&self.src).await,
        };
        let name = self.src.name.as_str();
        match first {
            Ok(c) => {
                let meta = vec![saved_entry(name, c.as_deref())];
                let what = "the journal cursor";
                if !commit_meta(&self.ctx.ingest, meta, what, &mut self.ctx.stop).await {
                    return Step::Stop;
                }
                self.episode.works(name);
                self.saved = Some(Saved { cursor: c.clone() });
                Step::Go(c)
            }
            Err(why) => {
                (self.report)(&|s| s.last_error = Some(why.clone()));
                let wait = self.episode.failed(name, &why);
                if sleep_or_stop(wait, &mut self.ctx.stop).await {
                    return Step::Stop;
                }
                Step::Again
            }
        }
    }

    /// One pass from `cursor`: catch up without --follow (journalctl 250-257 follows the newest
    /// boot only, so entries of an earlier boot after the cursor would be skipped), then follow;
    /// when polling, only the catch-up, again every `poll_interval`. Go: journalctl ended, and
    /// why.
    async fn pass(&mut self, mut cursor: Option<String>) -> Step<String> {
        let phases: &[bool] = if self.src.poll_interval.is_some() {
            &[false]
        } else {
            &[false, true]
        };
        for &follow in phases {
            let start = cursor.clone().map_or(Start::Beginning, Start::At);
            match self.read_journalctl(&start, follow, &mut cursor).await {
                None => return Step::Stop,
                Some((true, _)) if let Some(every) = self.src.poll_interval => {
                    return self.polled(every).await;
                }
                // Caught up: now follow from there.
                Some((true, _)) if !follow => {}
                Some((_, why)) => return Step::Go(why),
            }
        }
        Step::Go("journalctl exited".to_string())
    }

    /// A polling pass worked: says so (the first time) and waits for the next one.
    async fn polled(&mut self, every: Duration) -> Step<String> {
        let name = self.src.name.as_str();
        if !self.announced {
            tracing::info!(source = name, integration = %self.src.integration, every = ?every, "Reading the journal, polling.");
            self.announced = true;
        }
        self.episode.works(name);
        (self.report)(&|s| {
            s.files = 1;
            s.last_error = None;
        });
        if sleep_or_stop(every, &mut self.ctx.stop).await {
            return Step::Stop;
        }
        Step::Again
    }

    /// Runs one `journalctl` from `start` and commits what it writes, moving `cursor`, until
    /// it ends: Some((whether it exited well, why)), or None if the agent stops.
    async fn read_journalctl(
        &mut self,
        start: &Start,
        follow: bool,
        cursor: &mut Option<String>,
    ) -> Option<(bool, String)> {
        let src = &self.src;
        let mut reader = Reader::start(
            &src.journalctl,
            command_args(src, start, follow),
            src.max_line,
        );
        if follow {
            (self.report)(&|s| s.files = 1);
            if self.episode.failing {
                tracing::debug!(source = src.name, "Starting journalctl again.");
            } else {
                tracing::info!(source = src.name, integration = %src.integration, "Reading the journal.");
            }
        }
        let healthy = tokio::time::sleep(HEALTHY);
        tokio::pin!(healthy);
        // Only a following journalctl can be healthy for running long.
        let mut healthy_done = !follow;
        loop {
            let woken = tokio::select! {
                _ = self.ctx.stop.changed() => None,
                _ = &mut healthy, if !healthy_done => Some(None),
                m = reader.rx.recv() => Some(Some(m)),
            };
            let first = match woken {
                None => {
                    reader.kill();
                    return None;
                }
                Some(None) => {
                    healthy_done = true;
                    self.episode.works(&self.src.name);
                    (self.report)(&|s| s.last_error = None);
                    continue;
                }
                Some(Some(m)) => m,
            };
            let Some(first) = first else {
                let why = "journalctl's reader stopped without saying why";
                return Some((false, why.to_string()));
            };
            let (msgs, end) = gather(first, &mut reader);
            // journalctl starts AT the cursor (--cursor): that entry is in the queue.
            let items: Vec<Item> = msgs
                .into_iter()
                .filter_map(|m| to_item(&self.src, m, self.ctx.max_body))
                .filter(|i| i.cursor.is_none() || i.cursor != start.cursor())
                .collect();
            if !items.is_empty() {
                let Some(moved) = self.commit_items(items).await else {
                    reader.kill();
                    return None;
                };
                if let Some(c) = moved {
                    *cursor = Some(c.clone());
                    self.saved = Some(Saved { cursor: Some(c) });
                    if !healthy_done {
                        healthy_done = true;
                        self.episode.works(&self.src.name);
                    }
                }
            }
            if end.is_some() {
                return end;
            }
        }
    }

    /// Commits `items` (dead letters first, then the alerts with the cursor of the last entry
    /// queued). Returns the new cursor (Some(None) if none moved), or None if the agent stops
    /// first.
    async fn commit_items(&mut self, mut items: Vec<Item>) -> Option<Option<String>> {
        let refused: Vec<Refused> = items.iter_mut().filter_map(|i| i.refused.take()).collect();
        if !refused.is_empty() && !self.record_dead(refused).await {
            return None;
        }
        self.queue_items(items).await
    }

    /// Writes the dead letters of refused entries, retrying while sled refuses them. False if
    /// the agent stops first.
    async fn record_dead(&mut self, refused: Vec<Refused>) -> bool {
        let name = self.src.name.as_str();
        let store = self.ctx.ingest.store();
        loop {
            let dls = dead_letters(store, &self.src.integration, &refused, self.ctx.clock.now());
            match self.ctx.ingest.bury(dls).await {
                Ok(()) => {
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
                    (self.report)(&|s| {
                        s.refused_total += n;
                        s.last_refused = last.clone();
                    });
                    return true;
                }
                Err(IngestError::Closed) => return false,
                Err(e) => {
                    let msg = format!("cannot record refused journal entries: {e}");
                    tracing::error!(source = name, "{msg}. Retrying.");
                    (self.report)(&|s| s.last_error = Some(msg.clone()));
                    if sleep_or_stop(RETRY_AFTER, &mut self.ctx.stop).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Commits the alerts of `items` with the cursor of the last entry, retrying while the
    /// queue refuses them; fewer at a time while it is full. Returns the new cursor (Some(None)
    /// if none moved), or None if the agent stops first.
    async fn queue_items(&mut self, mut items: Vec<Item>) -> Option<Option<String>> {
        let name = self.src.name.as_str();
        let mut moved = None;
        // Most entries per commit: all of them until the queue refuses a commit for lack of
        // room, then half as many each time (down to one), which fits once the sender makes
        // room.
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
            match self.ctx.ingest.commit(alerts, meta, true).await {
                Ok(_) => {
                    items.drain(..take);
                    if cursor.is_some() {
                        moved = cursor;
                    }
                    (self.report)(&|s| {
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
                    if say_again(&mut self.said, &e) {
                        tracing::warn!(
                            source = name,
                            "Journal entries could not be queued ({msg}); reading pauses and resumes where it stood."
                        );
                    }
                    (self.report)(&|s| s.last_error = Some(msg.clone()));
                    if sleep_or_stop(RETRY_AFTER, &mut self.ctx.stop).await {
                        return None;
                    }
                }
            }
        }
        Some(moved)
    }
}

/// Everything waiting after `first`, within the batch bounds ([`BATCH_MAX`] entries,
/// [`BATCH_BYTES`]); and how journalctl ended, if its end came with them.
fn gather(first: Msg, reader: &mut Reader) -> (Vec<Msg>, Option<(bool, String)>) {
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
    (msgs, end)
}
