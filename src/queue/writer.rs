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

use super::envelope::Envelope;
use super::store::Store;
use crate::clock::Clock;

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

/// One commit unit: alerts plus metadata that must land with them (a file offset).
struct WriteReq {
    alerts: Vec<Alert>,
    meta: Vec<(Vec<u8>, Vec<u8>)>,
    reply: oneshot::Sender<Result<Vec<u64>, IngestError>>,
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
}

/// Tuning of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub max_bytes: u64,
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
            },
            handle,
        ))
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
        let (reply, rx) = oneshot::channel();
        let req = WriteReq {
            alerts,
            meta,
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
        rx.await.map_err(|_| IngestError::Closed)?
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
        commit_group(&store, &mut group, cfg.max_bytes, &clock);
    }
    tracing::debug!("The queue writer stopped: every source is closed.");
}

fn commit_group(store: &Store, group: &mut Vec<WriteReq>, max_bytes: u64, clock: &Clock) {
    let now = clock.now();
    let mut used = store.total_bytes();
    let mut rows = Vec::new();
    let mut meta = Vec::new();
    let mut accepted = Vec::new();
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
        // A request with alerts must fit whole; one with only metadata always fits.
        if !envs.is_empty() && used + size > max_bytes {
            let _ = req.reply.send(Err(IngestError::QueueFull {
                used,
                max: max_bytes,
            }));
            continue;
        }
        used += size;
        let first = store.reserve_seq(envs.len() as u64);
        let ids: Vec<u64> = (first..first + envs.len() as u64).collect();
        for ((a, env), id) in req.alerts.iter().zip(envs).zip(&ids) {
            rows.push((a.integration.clone(), *id, env));
        }
        meta.extend(req.meta);
        accepted.push((req.reply, ids));
    }
    if accepted.is_empty() {
        return;
    }
    let result = store.append(&rows, &meta).and_then(|()| store.sync());
    match result {
        Ok(()) => {
            for (reply, ids) in accepted {
                let _ = reply.send(Ok(ids));
            }
        }
        Err(e) => {
            tracing::error!(
                "Writing {} alerts to the queue failed: {e}. They were refused with 503.",
                rows.len()
            );
            let msg = e.to_string();
            for (reply, _) in accepted {
                let _ = reply.send(Err(IngestError::Disk(msg.clone())));
            }
        }
    }
    if !rows.is_empty() {
        store.committed.notify_one();
    }
}
