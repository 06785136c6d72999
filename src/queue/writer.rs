//! The one writer: every source hands its alerts to [`Ingest`], and a single thread commits
//! them to sled in groups.
//!
//! The writer takes everything waiting (up to `batch_max` alerts), writes it in one
//! `apply_batch`, syncs once ([`Store::sync`]) and only then answers every waiting source. One
//! fsync serves many alerts: that is where ingest speed comes from, and it keeps "202 means
//! durable" simple. It is a plain thread because sled and fsync block; the channel in front of
//! it is bounded, and a full channel or a full queue is an answer (503), never an endless wait.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::Received;
use super::envelope::Envelope;
use super::store::{DeadLetter, Store};
use crate::clock::{Clock, Millis};

/// One alert on its way into the queue.
#[derive(Debug, Clone)]
pub struct Alert {
    pub integration: String,
    /// The body, verbatim.
    pub payload: Vec<u8>,
    /// See [`super::envelope::key_hash`].
    pub key_hash: u64,
}

/// Why an alert was not accepted. Every variant but `UnknownIntegration` is temporary.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("no integration named {0:?} is configured")]
    UnknownIntegration(String),
    #[error("the queue is full ({used} of {max} bytes); retry later")]
    QueueFull { used: u64, max: u64 },
    #[error("the agent is busy: {0} alerts are waiting to be written; retry shortly")]
    Busy(usize),
    #[error("the alert could not be written to disk: {0}")]
    Disk(String),
    #[error("the agent is shutting down")]
    Closed,
}

/// One commit unit: alerts plus metadata that must land with them (a file offset). A request
/// with nothing in it is the watchdog's ping: it is answered once the writer has shown that it
/// can still commit (the group's own commit, or a [`Store::probe`]), never refused for space.
struct WriteReq {
    alerts: Vec<Alert>,
    meta: Vec<(Vec<u8>, Vec<u8>)>,
    /// Dead letters these alerts replace (an operator's retry), removed in the same transaction.
    undead: Vec<u64>,
    /// Dead letters of a source (refused lines, entries), written in the same group.
    dead: Vec<DeadLetter>,
    reply: Reply,
}

/// Where a request's ids (or why it was refused) go.
type Reply = oneshot::Sender<Result<Vec<u64>, IngestError>>;

impl WriteReq {
    fn is_ping(&self) -> bool {
        self.alerts.is_empty()
            && self.meta.is_empty()
            && self.undead.is_empty()
            && self.dead.is_empty()
    }
}

/// Sources' handle to the queue. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<WriteReq>,
    store: Arc<Store>,
    /// Names that may receive alerts; replaced on reload.
    integrations: Arc<RwLock<HashSet<String>>>,
    max_bytes: u64,
    capacity: usize,
    /// Which source this handle belongs to, for the `received` counter (see [`Ingest::for_source`]).
    source: &'static str,
    /// Alerts made durable, by source and integration (shared by every clone).
    received: Received,
}

/// Tuning of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub max_bytes: u64,
    /// Refuse alerts (503) while the disk has less than this free: sled cannot recover from
    /// running out of space without a restart, so it must never get there.
    pub min_free_space: u64,
    pub channel_capacity: usize,
    pub batch_max: usize,
}

impl Ingest {
    /// Starts the writer thread. It ends when every [`Ingest`] handle is dropped, after
    /// committing what was handed to it.
    pub fn start(
        store: Arc<Store>,
        integrations: impl IntoIterator<Item = String>,
        cfg: WriterConfig,
        clock: Clock,
    ) -> std::io::Result<(Ingest, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(cfg.channel_capacity);
        store.set_min_free_space(cfg.min_free_space);
        let s = store.clone();
        let handle = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer_loop(rx, s, cfg, clock))?;
        Ok((
            Ingest {
                tx,
                store,
                integrations: Arc::new(RwLock::new(integrations.into_iter().collect())),
                max_bytes: cfg.max_bytes,
                capacity: cfg.channel_capacity,
                source: "internal",
                received: Received::default(),
            },
            handle,
        ))
    }

    /// A handle whose alerts count as received from `source` ("unix", "tcp", "file", ...);
    /// alerts the agent makes itself count as "internal".
    pub fn for_source(&self, source: &'static str) -> Ingest {
        Ingest {
            source,
            ..self.clone()
        }
    }

    /// The received-alerts counter, for the metrics registry.
    pub fn received(&self) -> &Received {
        &self.received
    }

    pub fn knows(&self, name: &str) -> bool {
        self.integrations.read().expect("lock").contains(name)
    }

    /// Replaces the set of integrations that accept alerts (reload).
    pub fn set_integrations(&self, names: impl IntoIterator<Item = String>) {
        *self.integrations.write().expect("lock") = names.into_iter().collect();
    }

    /// Queues one alert; answers once it is durable. Never waits for room: a full channel or
    /// queue is an error the caller turns into 503.
    pub async fn submit(&self, alert: Alert) -> Result<u64, IngestError> {
        let ids = self.commit(vec![alert], Vec::new(), false).await?;
        Ok(ids[0])
    }

    /// Queues alerts and metadata in one atomic write. With `wait`, waits for room in the
    /// writer's channel (for file sources, which can simply read later). Metadata keys start
    /// with [`super::store::META_PREFIX`]; an empty value removes the key.
    pub async fn commit(
        &self,
        alerts: Vec<Alert>,
        meta: Vec<(Vec<u8>, Vec<u8>)>,
        wait: bool,
    ) -> Result<Vec<u64>, IngestError> {
        for a in &alerts {
            if !self.knows(&a.integration) {
                return Err(IngestError::UnknownIntegration(a.integration.clone()));
            }
        }
        let used = self.store.total_bytes();
        // Metadata alone (a file source's read position) always fits, as in `commit_group`.
        if !alerts.is_empty() && used >= self.max_bytes {
            return Err(IngestError::QueueFull {
                used,
                max: self.max_bytes,
            });
        }
        let counted: Vec<String> = alerts.iter().map(|a| a.integration.clone()).collect();
        let (reply, rx) = oneshot::channel();
        let req = WriteReq {
            alerts,
            meta,
            undead: Vec::new(),
            dead: Vec::new(),
            reply,
        };
        if wait {
            self.tx.send(req).await.map_err(|_| IngestError::Closed)?;
        } else {
            self.tx.try_send(req).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => IngestError::Busy(self.capacity),
                mpsc::error::TrySendError::Closed(_) => IngestError::Closed,
            })?;
        }
        let ids = rx.await.map_err(|_| IngestError::Closed)??;
        for name in counted {
            self.received.inc(self.source, &name);
        }
        Ok(ids)
    }

    /// Puts dead letters back in the queue: each `(dead id, alert)` becomes a new queued alert
    /// and its dead letter is removed in the same transaction, once it is durable. Waits for
    /// room in the writer's channel (an operator's command, not a hot path).
    pub async fn requeue(&self, items: Vec<(u64, Alert)>) -> Result<Vec<u64>, IngestError> {
        for (_, a) in &items {
            if !self.knows(&a.integration) {
                return Err(IngestError::UnknownIntegration(a.integration.clone()));
            }
        }
        let used = self.store.total_bytes();
        if used >= self.max_bytes {
            return Err(IngestError::QueueFull {
                used,
                max: self.max_bytes,
            });
        }
        let (undead, alerts) = items.into_iter().unzip();
        let (reply, rx) = oneshot::channel();
        let req = WriteReq {
            alerts,
            meta: Vec::new(),
            undead,
            dead: Vec::new(),
            reply,
        };
        self.tx.send(req).await.map_err(|_| IngestError::Closed)?;
        rx.await.map_err(|_| IngestError::Closed)?
    }

    /// Answers once the writer thread has committed to the database (the group the ping came
    /// in, or a small probe write) and synced: proof for the watchdog that the writer is alive,
    /// not stuck (in an fsync that never returns, say) and that the disk still takes writes.
    /// A nearly full disk is not a failure: the ping then proves a sync, and answers.
    pub async fn ping(&self) -> Result<(), IngestError> {
        let (reply, rx) = oneshot::channel();
        let req = WriteReq {
            alerts: Vec::new(),
            meta: Vec::new(),
            undead: Vec::new(),
            dead: Vec::new(),
            reply,
        };
        self.tx.send(req).await.map_err(|_| IngestError::Closed)?;
        rx.await.map_err(|_| IngestError::Closed)?.map(|_| ())
    }

    /// Records a source's dead letters (lines or entries it cannot forward) through the
    /// writer, so the queue has one path to disk and one fsync per group; answers once they
    /// are durable. Waits for room in the writer's channel (the source can read later).
    pub async fn bury(&self, dead: Vec<DeadLetter>) -> Result<(), IngestError> {
        let (reply, rx) = oneshot::channel();
        let req = WriteReq {
            alerts: Vec::new(),
            meta: Vec::new(),
            undead: Vec::new(),
            dead,
            reply,
        };
        self.tx.send(req).await.map_err(|_| IngestError::Closed)?;
        rx.await.map_err(|_| IngestError::Closed)?.map(|_| ())
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

fn writer_loop(
    mut rx: mpsc::Receiver<WriteReq>,
    store: Arc<Store>,
    cfg: WriterConfig,
    clock: Clock,
) {
    let mut group: Vec<WriteReq> = Vec::new();
    let mut space_low = false;
    while let Some(first) = rx.blocking_recv() {
        let mut n = first.alerts.len();
        group.push(first);
        while n < cfg.batch_max {
            match rx.try_recv() {
                Ok(r) => {
                    n += r.alerts.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        commit_group(&store, &mut group, &cfg, &clock, &mut space_low);
    }
    tracing::debug!("The queue writer stopped: every source is closed.");
}

/// Commits one group, then answers its pings with what the group proved about the disk.
/// `space_low` is whether the last alerts were refused for lack of space (so that it is logged
/// once per episode, not once per group).
fn commit_group(
    store: &Store,
    group: &mut Vec<WriteReq>,
    cfg: &WriterConfig,
    clock: &Clock,
    space_low: &mut bool,
) {
    let now = clock.now();
    let (pings, mut work): (Vec<WriteReq>, Vec<WriteReq>) =
        group.drain(..).partition(WriteReq::is_ping);
    let proof = commit_work(store, &mut work, cfg, now, space_low);
    if pings.is_empty() {
        return;
    }
    let proof = match proof {
        Some(p) => p,
        None => match store.fatal() {
            Some(why) => Err(IngestError::Disk(why)),
            None => store
                .probe(now, !store.space().low())
                .map_err(|e| IngestError::Disk(e.reason())),
        },
    };
    for p in pings {
        let _ = p.reply.send(proof.clone().map(|()| Vec::new()));
    }
}

/// Writes the alerts and metadata of `group` in one batch and syncs; answers each request.
/// Returns the commit's outcome when one was attempted (it proves, or disproves, that the
/// disk takes writes), `None` when nothing was written.
fn commit_work(
    store: &Store,
    group: &mut Vec<WriteReq>,
    cfg: &WriterConfig,
    now: Millis,
    space_low: &mut bool,
) -> Option<Result<(), IngestError>> {
    if group.is_empty() {
        return None;
    }
    if let Some(why) = store.fatal() {
        let e = IngestError::Disk(format!("{why}; the agent is restarting"));
        refuse_all(group, e.clone());
        return Some(Err(e));
    }
    if !room_on_disk(store, group, cfg, space_low) {
        return None;
    }
    let batch = Batch::admit(store, group, cfg.max_bytes, now);
    if batch.accepted.is_empty() {
        return None;
    }
    Some(batch.commit(store))
}

/// Whether the disk has room for `group` above `queue.min_free_space`; if not, every request
/// of it is refused (the state change logged once).
fn room_on_disk(
    store: &Store,
    group: &mut Vec<WriteReq>,
    cfg: &WriterConfig,
    space_low: &mut bool,
) -> bool {
    let incoming: u64 = group
        .iter()
        .flat_map(|r| &r.alerts)
        .map(|a| a.payload.len() as u64 + 64)
        .sum();
    let mib = |b: u64| b / (1024 * 1024);
    match store.free_space() {
        Ok(free) if free < cfg.min_free_space.saturating_add(incoming) => {
            if !*space_low {
                tracing::warn!(
                    free_mib = mib(free),
                    min_free_mib = mib(cfg.min_free_space),
                    "Refusing alerts: the disk holding the queue is nearly full. Queued alerts still go out."
                );
                *space_low = true;
            }
            refuse_all(
                group,
                IngestError::Disk(format!(
                    "the disk holding the queue has only {} MiB free (queue.min_free_space is {} MiB)",
                    mib(free),
                    mib(cfg.min_free_space)
                )),
            );
            return false;
        }
        Ok(free) if *space_low => {
            tracing::info!(
                free_mib = mib(free),
                "The disk holding the queue has room again; alerts are accepted."
            );
            *space_low = false;
        }
        _ => {}
    }
    true
}

/// The requests of one commit that fit in `queue.max_bytes`, as rows with their ids.
struct Batch {
    rows: Vec<(String, u64, Vec<u8>)>,
    meta: Vec<(Vec<u8>, Vec<u8>)>,
    undead: Vec<u64>,
    dead: Vec<DeadLetter>,
    accepted: Vec<(Reply, Vec<u64>)>,
}

impl Batch {
    /// Takes every request of `group` that fits whole (the others are answered QueueFull).
    fn admit(store: &Store, group: &mut Vec<WriteReq>, max_bytes: u64, now: Millis) -> Batch {
        let mut used = store.total_bytes();
        let mut b = Batch {
            rows: Vec::new(),
            meta: Vec::new(),
            undead: Vec::new(),
            dead: Vec::new(),
            accepted: Vec::new(),
        };
        for req in group.drain(..) {
            let envs: Vec<Vec<u8>> = req
                .alerts
                .iter()
                .map(|a| {
                    Envelope {
                        received_at: now,
                        attempts: 0,
                        next_attempt_at: 0,
                        key_hash: a.key_hash,
                        payload: a.payload.clone(),
                    }
                    .encode()
                })
                .collect();
            let size: u64 = envs.iter().map(|e| e.len() as u64).sum();
            // A request with alerts must fit whole; one with only metadata or dead letters always fits.
            if !envs.is_empty() && used + size > max_bytes {
                let full = IngestError::QueueFull {
                    used,
                    max: max_bytes,
                };
                let _ = req.reply.send(Err(full));
                continue;
            }
            used += size;
            let first = store.reserve_seq(envs.len() as u64);
            let ids: Vec<u64> = (first..first + envs.len() as u64).collect();
            for ((a, env), id) in req.alerts.iter().zip(envs).zip(&ids) {
                b.rows.push((a.integration.clone(), *id, env));
            }
            b.meta.extend(req.meta);
            b.undead.extend(req.undead);
            b.dead.extend(req.dead);
            b.accepted.push((req.reply, ids));
        }
        b
    }

    /// One atomic write and one fsync; every accepted request is answered after it.
    fn commit(self, store: &Store) -> Result<(), IngestError> {
        let buried = store.put_dead(&self.dead);
        let written = buried.and_then(|()| {
            if self.undead.is_empty() {
                store.append(&self.rows, &self.meta)
            } else {
                store.append_requeue(&self.rows, &self.meta, &self.undead)
            }
        });
        let proof = match written.and_then(|()| store.sync()) {
            Ok(()) => {
                for (reply, ids) in self.accepted {
                    let _ = reply.send(Ok(ids));
                }
                Ok(())
            }
            Err(e) => {
                let msg = e.reason();
                let n = self.rows.len();
                if e.is_fatal() {
                    // The store is marked fatal (see `Store::watch`): the daemon exits and
                    // says why, once. Here it is only the refusal of this group.
                    tracing::warn!(
                        "Writing {n} alerts to the queue failed ({msg}); they were refused with 503."
                    );
                } else {
                    tracing::error!(
                        "Writing {n} alerts to the queue failed ({msg}); they were refused with 503."
                    );
                }
                let e = IngestError::Disk(msg);
                for (reply, _) in self.accepted {
                    let _ = reply.send(Err(e.clone()));
                }
                Err(e)
            }
        };
        if !self.rows.is_empty() {
            store.committed.notify_one();
        }
        proof
    }
}

fn refuse_all(group: &mut Vec<WriteReq>, e: IngestError) {
    for req in group.drain(..) {
        let _ = req.reply.send(Err(e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::store::{DeadLetter, META_PREFIX};

    fn cfg() -> WriterConfig {
        WriterConfig {
            max_bytes: 1 << 30,
            min_free_space: 0,
            channel_capacity: 8,
            batch_max: 100,
        }
    }

    fn req(
        alerts: Vec<Alert>,
        meta: Vec<(Vec<u8>, Vec<u8>)>,
        undead: Vec<u64>,
    ) -> (WriteReq, oneshot::Receiver<Result<Vec<u64>, IngestError>>) {
        let (reply, rx) = oneshot::channel();
        (
            WriteReq {
                alerts,
                meta,
                undead,
                dead: Vec::new(),
                reply,
            },
            rx,
        )
    }

    /// Issue 10, defect 6: a commit group holding an operator's retry and a file source's
    /// "forget this file" (an empty value) stored the empty value instead of removing the key;
    /// the next start logged it as an unreadable read position.
    #[test]
    fn a_group_mixing_a_retry_and_a_forgotten_file_offset_leaves_no_empty_metadata_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        let store = Arc::new(store);
        let key = [&[META_PREFIX][..], b"tail\0/var/log/x\0file"].concat();
        store
            .append(&[], &[(key.clone(), b"pos".to_vec())])
            .unwrap();
        let seq = store.reserve_seq(1);
        store
            .append(&[("a".into(), seq, b"not an envelope".to_vec())], &[])
            .unwrap();
        let dl = DeadLetter {
            id: seq,
            integration: "a".into(),
            received_at: 1,
            failed_at: 2,
            attempts: 1,
            status: 400,
            reason: "refused".into(),
            response: String::new(),
            payload: "{}".into(),
        };
        store.move_to_dead("a", seq, &dl, 15).unwrap();

        // Both wait in the channel before the writer runs: one group, deterministically.
        let (tx, rx) = mpsc::channel(8);
        let alert = Alert {
            integration: "a".into(),
            payload: b"{}".to_vec(),
            key_hash: 1,
        };
        let (retry, retried) = req(vec![alert], Vec::new(), vec![seq]);
        let (forget, forgotten) = req(Vec::new(), vec![(key.clone(), Vec::new())], Vec::new());
        tx.try_send(retry).unwrap();
        tx.try_send(forget).unwrap();
        drop(tx);
        writer_loop(rx, store.clone(), cfg(), Clock::starting_at(1_000));
        assert!(retried.blocking_recv().unwrap().is_ok());
        assert!(forgotten.blocking_recv().unwrap().is_ok());

        assert_eq!(store.meta(&key).unwrap(), None, "the key is removed");
        assert!(store.meta_scan(&[META_PREFIX], 10).unwrap().is_empty());
        assert_eq!((store.depth("a").alerts, store.dead_count()), (1, 0));
    }

    /// Issue 10, defect 4: below `min_free_space` the writer refused the watchdog's ping too,
    /// so systemd killed a daemon that was only draining its queue.
    #[test]
    fn a_nearly_full_disk_refuses_alerts_but_answers_the_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("q"), 1 << 20).unwrap();
        let store = Arc::new(store);
        let (tx, rx) = mpsc::channel(8);
        let alert = Alert {
            integration: "a".into(),
            payload: b"{}".to_vec(),
            key_hash: 1,
        };
        let (post, posted) = req(vec![alert], Vec::new(), Vec::new());
        let (ping, pinged) = req(Vec::new(), Vec::new(), Vec::new());
        tx.try_send(post).unwrap();
        tx.try_send(ping).unwrap();
        drop(tx);
        let full = WriterConfig {
            // More than any disk has: always "nearly full".
            min_free_space: u64::MAX / 2,
            ..cfg()
        };
        store.set_min_free_space(full.min_free_space);
        writer_loop(rx, store.clone(), full, Clock::starting_at(1_000));
        assert!(matches!(
            posted.blocking_recv().unwrap(),
            Err(IngestError::Disk(m)) if m.contains("MiB free")
        ));
        assert_eq!(pinged.blocking_recv().unwrap().unwrap(), Vec::<u64>::new());
        assert!(store.space().low());
        assert_eq!(store.depth("a").alerts, 0);
    }

    /// A source's dead letters go through the writer, in the same group and fsync as the
    /// alerts beside them (before, each source wrote and synced them on its own).
    #[test]
    fn dead_letters_are_written_in_the_group_with_the_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        let store = Arc::new(store);
        let (tx, rx) = mpsc::channel(8);
        let alert = Alert {
            integration: "a".into(),
            payload: b"{}".to_vec(),
            key_hash: 1,
        };
        let (post, posted) = req(vec![alert], Vec::new(), Vec::new());
        let (reply, buried) = oneshot::channel();
        let dead = DeadLetter {
            id: store.reserve_seq(1),
            integration: "a".into(),
            received_at: 1_000,
            failed_at: 1_000,
            attempts: 0,
            status: 0,
            reason: "the line is not valid JSON".into(),
            response: String::new(),
            payload: "not json".into(),
        };
        let bury = WriteReq {
            alerts: Vec::new(),
            meta: Vec::new(),
            undead: Vec::new(),
            dead: vec![dead],
            reply,
        };
        tx.try_send(post).unwrap();
        tx.try_send(bury).unwrap();
        drop(tx);
        writer_loop(rx, store.clone(), cfg(), Clock::starting_at(1_000));
        assert_eq!(posted.blocking_recv().unwrap().unwrap().len(), 1);
        assert_eq!(buried.blocking_recv().unwrap().unwrap(), Vec::<u64>::new());
        drop(store);
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        assert_eq!((store.dead_count(), store.depth("a").alerts), (1, 1));
    }

    /// Issue 10, defect 3: the ping wrote nothing, so a daemon whose disk had failed kept the
    /// watchdog fed. It now fails once the store is fatal.
    #[test]
    fn the_watchdog_ping_fails_once_the_store_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("q"), 1 << 20).unwrap();
        let store = Arc::new(store);
        store.set_fatal("disk I/O error: Input/output error (os error 5)".into());
        let (tx, rx) = mpsc::channel(8);
        let (ping, pinged) = req(Vec::new(), Vec::new(), Vec::new());
        tx.try_send(ping).unwrap();
        drop(tx);
        writer_loop(rx, store, cfg(), Clock::starting_at(1_000));
        assert!(matches!(
            pinged.blocking_recv().unwrap(),
            Err(IngestError::Disk(m)) if m.contains("I/O error")
        ));
    }
}
