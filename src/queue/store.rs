//! The sled database: what is kept on disk and how it is made durable.
//!
//! Trees:
//! - `queue`: `<integration>\0<seq: u64 BE>` -> [`Envelope`]. One tree for every integration,
//!   so one `apply_batch` is atomic across integrations and can also carry a file source's
//!   offset (keys starting with [`META_PREFIX`], which no integration name can), and the key
//!   the writer rewrites for the watchdog ([`Store::probe`]). Sequence numbers are global and
//!   increase, so each integration's range is its FIFO. Keys starting with [`TALLY_PREFIX`]
//!   hold each integration's counters ([`Tally`]), written in the same atomic batch as the
//!   alerts they count, so that a start reads them instead of scanning the queue.
//! - `dead`: `<seq BE>` -> [`DeadLetter`] (JSON), alerts OnCall refused; and one row,
//!   [`DEAD_COUNT_KEY`], holding how many there are, written in the same batch as each change.
//! - `limiter`: `<scope>\0<slot BE>` -> two u64 (sent, counted-until), see `sender::limiter`.
//! - `api_limiter`: the same for the OnCall API's budget (its own tree, because a limiter set
//!   drops the slots of scopes it was not given), see `api::client`.
//! - `api_cache`: integrations resolved through the API (`id` / `api_name` -> inbound URL), so
//!   the agent starts and forwards while the API is down, see `api::resolve`.
//!
//! Durability: sled's `flush` writes with `sync_file_range`, which neither flushes the disk's
//! cache nor the file's metadata, and it never syncs the blob files where it puts values above
//! segment_size/4. [`Store::sync`] adds an `fsync` of the db file, of new blob files and of the
//! blob folder. The segment is sized so that the largest accepted body never becomes a blob.
//!
//! Failure: after an I/O error sled refuses every later write until the database is reopened,
//! an fsync error may have lost dirty pages, and a database deleted under the agent takes
//! writes nobody will read. The first such error, met by any caller, marks the store fatal
//! ([`Store::set_fatal`]); the daemon then exits for its supervisor to restart it.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::envelope::{DecodeError, Envelope};
use crate::clock::Millis;

/// Keys in `queue` that start with this byte are metadata (file offsets), not alerts.
pub const META_PREFIX: u8 = 0xFF;
/// A metadata key (starting with [`META_PREFIX`]) and its value; an empty value removes it.
pub type MetaEntry = (Vec<u8>, Vec<u8>);
/// The key the writer rewrites to prove, for the watchdog, that it can still commit.
const PROBE_KEY: &[u8] = b"\xFFagent-probe";
/// 8 MiB segments: values up to 2 MiB - header stay inline in the synced log (see module doc).
const SEGMENT_SIZE: usize = 8 * 1024 * 1024;
/// Keys in `queue` that start with this byte are counters ([`Tally`]). No integration name
/// (UTF-8 never holds 0xFE) and no metadata key ([`META_PREFIX`]) starts with it.
const TALLY_PREFIX: u8 = 0xFE;
/// Present when the tallies are in step with the queue. Its value is empty on purpose: every
/// version since a6aeea3 deletes empty metadata rows when it opens the database, so an older
/// agent that ran on this database (and moved alerts without moving the tallies) leaves it
/// without the marker, and the next start counts the queue again.
const TALLY_MARKER: &[u8] = b"\xFFtally-v1";
/// The row in `dead` that counts the dead letters (u64 BE), kept in step under the same
/// marker. One byte long, it sorts before every id (8 bytes, from 1), so ranges of ids and
/// `last()` never meet it, and readers that parse every value as JSON skip it.
const DEAD_COUNT_KEY: &[u8] = &[0];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot sync {path}: {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move the corrupt database {path} aside: {source}")]
    Quarantine {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt record: {0}")]
    Decode(#[from] DecodeError),
    #[error("transaction failed: {0}")]
    Transaction(String),
    /// The database file is no longer the one at its path: its folder was deleted, moved or
    /// replaced while the agent ran. Whatever is written now goes to a file nobody will read.
    #[error("the database file {path} was deleted or replaced while the agent ran")]
    Unlinked { path: PathBuf },
}

/// Maps a failed sled transaction: a storage error stays a [`StoreError::Sled`] (so that an
/// I/O error is still seen as one), anything else is a [`StoreError::Transaction`].
fn from_transaction<E: std::fmt::Debug>(e: sled::transaction::TransactionError<E>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
        other => StoreError::Transaction(format!("{other:?}")),
    }
}

/// Queue depth of one integration, kept in memory (sled's `len` is a full scan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub alerts: u64,
    pub bytes: u64,
    /// Highest sequence number ever written for this integration.
    pub last_seq: u64,
}

/// Alerts ever added to (or ever taken from) one integration's queue, persisted in `queue`
/// under [`TALLY_PREFIX`] in the same batch as the change it counts: the queue holds
/// `added - removed`. Two rows per integration, one written only by the paths that add alerts
/// (the writer) and one only by those that remove them (the dispatcher), each under its own
/// lock, so neither waits for the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    alerts: u64,
    bytes: u64,
    /// Highest sequence number counted (added rows only; 0 in removed rows).
    last_seq: u64,
}

impl Tally {
    fn encode(&self) -> [u8; 24] {
        let mut v = [0u8; 24];
        v[..8].copy_from_slice(&self.alerts.to_be_bytes());
        v[8..16].copy_from_slice(&self.bytes.to_be_bytes());
        v[16..].copy_from_slice(&self.last_seq.to_be_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<Tally> {
        let u = |i: usize| Some(u64::from_be_bytes(b.get(i..i + 8)?.try_into().ok()?));
        Some(Tally {
            alerts: u(0)?,
            bytes: u(8)?,
            last_seq: u(16)?,
        })
    }
}

/// Which of an integration's two tally rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Added,
    Removed,
}

fn tally_key(side: Side, integration: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(integration.len() + 2);
    k.push(TALLY_PREFIX);
    k.push(match side {
        Side::Added => b'+',
        Side::Removed => b'-',
    });
    k.extend_from_slice(integration.as_bytes());
    k
}

fn split_tally_key(k: &[u8]) -> Option<(Side, &str)> {
    let side = match k.get(..2)? {
        [TALLY_PREFIX, b'+'] => Side::Added,
        [TALLY_PREFIX, b'-'] => Side::Removed,
        _ => return None,
    };
    Some((side, std::str::from_utf8(&k[2..]).ok()?))
}

/// An alert OnCall refused, kept until an operator retries or purges it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: u64,
    pub integration: String,
    pub received_at: Millis,
    pub failed_at: Millis,
    pub attempts: u32,
    /// HTTP status, or 0 when the agent itself refused the record.
    pub status: u16,
    /// Why, in words (never holds the URL).
    pub reason: String,
    /// First 512 bytes of OnCall's answer.
    pub response: String,
    /// The alert as received (lossy UTF-8 only if it was not UTF-8).
    pub payload: String,
}

impl DeadLetter {
    /// A queue record that cannot be decoded: kept raw, never dropped.
    fn unreadable(integration: &str, seq: u64, why: &str, raw: &[u8]) -> DeadLetter {
        tracing::error!(
            integration,
            seq,
            "A queued record cannot be read ({why}); it moves to the dead letters."
        );
        DeadLetter {
            id: seq,
            integration: integration.to_string(),
            received_at: 0,
            failed_at: 0,
            attempts: 0,
            status: 0,
            reason: format!("unreadable queue record: {why}"),
            response: String::new(),
            payload: String::from_utf8_lossy(raw).into_owned(),
        }
    }
}

/// What was found and done when the database would not open.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub moved_to: PathBuf,
    pub error: String,
}

/// The open database and the in-memory counters rebuilt from it.
pub struct Store {
    db: sled::Db,
    queue: sled::Tree,
    dead: sled::Tree,
    limiter: sled::Tree,
    api_limiter: sled::Tree,
    api_cache: sled::Tree,
    /// The log file, fsynced after sled's flush.
    db_file: File,
    db_file_path: PathBuf,
    blobs_dir: PathBuf,
    /// Blob files already fsynced (normally none: bodies are sized to stay inline).
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
    next_seq: AtomicU64,
    /// What the `+` tally rows say. Held from reading a row to the batch that rewrites it, so
    /// the row on disk always counts exactly what is on disk.
    added: Mutex<BTreeMap<String, Tally>>,
    /// The same for the `-` rows.
    removed: Mutex<BTreeMap<String, Tally>>,
    /// `added - removed`, for readers that must not wait for a batch.
    depth: Mutex<BTreeMap<String, Depth>>,
    total_bytes: AtomicU64,
    /// Dead letters kept (sled's `len` is a full scan, and status asks often), as
    /// [`DEAD_COUNT_KEY`] says. Held from reading it to the batch that rewrites that row.
    dead_total: Mutex<u64>,
    /// Woken after every commit that added alerts.
    pub committed: tokio::sync::Notify,
    /// Set once sled reported an I/O error: sled then refuses every later write until the
    /// database is reopened, so the daemon exits and its supervisor restarts it.
    fatal: Mutex<Option<String>>,
    /// Woken when `fatal` is set.
    pub fatal_notify: tokio::sync::Notify,
    /// The folder whose file system holds the database (for the free-space check).
    dir: PathBuf,
    /// `queue.min_free_space` (bytes), set by the writer: below it alerts are refused. Kept
    /// here so that status can say so; 0 until a writer starts.
    min_free_space: AtomicU64,
}

/// The disk holding the queue, as status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes free for the agent (`None` when the file system cannot be asked).
    pub free: Option<u64>,
    /// `queue.min_free_space`, bytes.
    pub min_free: u64,
}

impl Space {
    /// Whether alerts are refused for lack of space (a healthy state: delivery goes on).
    pub fn low(&self) -> bool {
        self.free.is_some_and(|f| f < self.min_free)
    }
}

fn alert_key(integration: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(integration.len() + 9);
    k.extend_from_slice(integration.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn split_alert_key(k: &[u8]) -> Option<(&str, u64)> {
    if matches!(k.first(), Some(&META_PREFIX | &TALLY_PREFIX)) || k.len() < 10 {
        return None;
    }
    let (name, rest) = k.split_at(k.len() - 9);
    if rest[0] != 0 {
        return None;
    }
    let seq = u64::from_be_bytes(rest[1..].try_into().ok()?);
    Some((std::str::from_utf8(name).ok()?, seq))
}

fn prefix(integration: &str) -> Vec<u8> {
    let mut p = integration.as_bytes().to_vec();
    p.push(0);
    p
}

/// The `+` tally rows of the integrations in `alerts` once they are added: what goes into the
/// batch that adds them.
fn tallies_after_adding(
    added: &BTreeMap<String, Tally>,
    alerts: &[(String, u64, Vec<u8>)],
) -> BTreeMap<String, Tally> {
    let mut rows: BTreeMap<String, Tally> = BTreeMap::new();
    for (name, seq, value) in alerts {
        let t = match rows.get_mut(name) {
            Some(t) => t,
            None => rows
                .entry(name.clone())
                .or_insert(added.get(name).copied().unwrap_or_default()),
        };
        t.alerts += 1;
        t.bytes += value.len() as u64;
        t.last_seq = t.last_seq.max(*seq);
    }
    rows
}

/// The words of an I/O error. sled hands some errors back re-wrapped, as a new error whose
/// text is the original's Debug form (`Os { code: 5, kind: .., message: .. }`); for those the
/// OS's own words are recovered from the code. For display only: no decision reads this.
fn os_words(e: &std::io::Error) -> String {
    let text = e.to_string();
    if e.raw_os_error().is_some() {
        return text;
    }
    text.split_once("Os { code: ")
        .and_then(|(_, rest)| rest.split(',').next()?.parse::<i32>().ok())
        .map_or(text.clone(), |code| {
            std::io::Error::from_raw_os_error(code).to_string()
        })
}

impl StoreError {
    /// A short reason fit for an HTTP answer or a log line (sled's own Display shows Debug).
    pub fn reason(&self) -> String {
        match self {
            StoreError::Sled(sled::Error::Io(e)) => format!("disk I/O error: {}", os_words(e)),
            other => other.to_string(),
        }
    }

    /// Whether the database cannot be trusted to write again in this process: sled marks
    /// itself failed after an I/O error (and refuses every later write), an fsync error may have
    /// dropped dirty pages for good, and a deleted database takes writes nobody will read.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::Sled(sled::Error::Io(_))
                | StoreError::Sync { .. }
                | StoreError::Unlinked { .. }
        )
    }

    /// Whether the database itself is damaged (as opposed to, say, a permission problem, which
    /// moving it aside would not fix and would only hide).
    fn is_corruption(&self) -> bool {
        match self {
            StoreError::Sled(sled::Error::Corruption { .. })
            | StoreError::Sled(sled::Error::Unsupported(_))
            | StoreError::Sled(sled::Error::ReportableBug(_))
            | StoreError::Decode(_) => true,
            StoreError::Sled(sled::Error::Io(e)) => matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ),
            _ => false,
        }
    }
}

impl Store {
    /// Opens the database at `path`. A database sled calls corrupt is moved aside (kept,
    /// timestamped) and an empty one opened in its place: the agent never refuses to start
    /// over it; the caller reports the [`Quarantined`] answer loudly.
    pub fn open(
        path: &Path,
        cache_capacity: u64,
    ) -> Result<(Store, Option<Quarantined>), StoreError> {
        match Store::open_once(path, cache_capacity) {
            Ok(s) => Ok((s, None)),
            Err(e) if e.is_corruption() => {
                let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string()
                    .replace(':', "");
                let name = path
                    .file_name()
                    .map_or_else(|| "queue".to_string(), |n| n.to_string_lossy().into_owned());
                let moved_to = path.with_file_name(format!("{name}.corrupt-{stamp}"));
                std::fs::rename(path, &moved_to).map_err(|source| StoreError::Quarantine {
                    path: path.to_owned(),
                    source,
                })?;
                let s = Store::open_once(path, cache_capacity)?;
                Ok((
                    s,
                    Some(Quarantined {
                        moved_to,
                        error: e.to_string(),
                    }),
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn open_once(path: &Path, cache_capacity: u64) -> Result<Store, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Sled(e.into()))?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .segment_size(SEGMENT_SIZE)
            .mode(sled::Mode::LowSpace)
            .open()?;
        let queue = db.open_tree("queue")?;
        let dead = db.open_tree("dead")?;
        let limiter = db.open_tree("limiter")?;
        let api_limiter = db.open_tree("api_limiter")?;
        let api_cache = db.open_tree("api_cache")?;
        let db_file_path = path.join("db");
        let db_file = File::open(&db_file_path).map_err(|e| StoreError::Sync {
            path: db_file_path.clone(),
            source: e,
        })?;
        let store = Store {
            db,
            queue,
            dead,
            limiter,
            api_limiter,
            api_cache,
            db_file,
            db_file_path,
            blobs_dir: path.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
            next_seq: AtomicU64::new(1),
            added: Mutex::new(BTreeMap::new()),
            removed: Mutex::new(BTreeMap::new()),
            depth: Mutex::new(BTreeMap::new()),
            total_bytes: AtomicU64::new(0),
            dead_total: Mutex::new(0),
            committed: tokio::sync::Notify::new(),
            fatal: Mutex::new(None),
            fatal_notify: tokio::sync::Notify::new(),
            dir: path.to_owned(),
            min_free_space: AtomicU64::new(0),
        };
        store.load_counters()?;
        Ok(store)
    }

    /// Sets the counters at start. With the tallies in step ([`TALLY_MARKER`]) this reads a
    /// few rows per integration, whatever the depth; otherwise (a database written by an older
    /// version, or tallies that do not match what a quick look finds) it counts the queue once
    /// and writes the tallies.
    fn load_counters(&self) -> Result<(), StoreError> {
        let mut max_seq = match self.dead.last()? {
            Some((k, _)) => <[u8; 8]>::try_from(&k[..]).map_or(0, u64::from_be_bytes),
            None => 0,
        };
        let marked = self.queue.contains_key(TALLY_MARKER)?;
        let dead_row = self
            .dead
            .get(DEAD_COUNT_KEY)?
            .and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?)));
        *self.dead_total.lock().expect("dead lock") = match dead_row {
            Some(n) if marked => n,
            _ => self.recount_dead()?,
        };
        let tallies = if marked { self.read_tallies()? } else { None };
        let (added, removed) = match tallies {
            Some(t) => t,
            None => self.recount()?,
        };
        let mut depth = BTreeMap::new();
        let mut total = 0u64;
        for (name, a) in &added {
            let r = removed.get(name).copied().unwrap_or_default();
            let d = Depth {
                alerts: a.alerts.saturating_sub(r.alerts),
                bytes: a.bytes.saturating_sub(r.bytes),
                last_seq: a.last_seq,
            };
            max_seq = max_seq.max(a.last_seq);
            total += d.bytes;
            depth.insert(name.clone(), d);
        }
        self.next_seq.store(max_seq + 1, Ordering::SeqCst);
        self.total_bytes.store(total, Ordering::SeqCst);
        *self.depth.lock().expect("depth lock") = depth;
        *self.added.lock().expect("tally lock") = added;
        *self.removed.lock().expect("tally lock") = removed;
        Ok(())
    }

    /// Counts the dead letters and writes the count row. At start only.
    fn recount_dead(&self) -> Result<u64, StoreError> {
        let mut dead = 0u64;
        for kv in self.dead.range(DEAD_COUNT_KEY.to_vec()..).keys() {
            if kv?.len() == 8 {
                dead += 1;
            }
        }
        self.dead.insert(DEAD_COUNT_KEY, &dead.to_be_bytes())?;
        Ok(dead)
    }

    /// The tally rows, if what a look at each integration's first and last key finds agrees
    /// with them (O(integrations), not O(depth)): every integration with alerts has a tally
    /// that says so, none holds a sequence number above its tally's, and none the tallies call
    /// empty has any. `None` means "count again".
    #[allow(clippy::type_complexity)]
    fn read_tallies(
        &self,
    ) -> Result<Option<(BTreeMap<String, Tally>, BTreeMap<String, Tally>)>, StoreError> {
        let mut added = BTreeMap::new();
        let mut removed = BTreeMap::new();
        for kv in self.queue.scan_prefix([TALLY_PREFIX]) {
            let (k, v) = kv?;
            let (Some((side, name)), Some(t)) = (split_tally_key(&k), Tally::decode(&v)) else {
                tracing::warn!("A queue counter row cannot be read; the queue is counted again.");
                return Ok(None);
            };
            match side {
                Side::Added => added.insert(name.to_string(), t),
                Side::Removed => removed.insert(name.to_string(), t),
            };
        }
        let queued = |name: &str| {
            let a = added.get(name).copied().unwrap_or_default();
            let r = removed.get(name).copied().unwrap_or_default();
            (a.alerts >= r.alerts && a.bytes >= r.bytes).then(|| (a.alerts - r.alerts, a.last_seq))
        };
        // Each integration present, by jumping from one name's range to the next.
        let mut seen = 0;
        let mut from: Vec<u8> = Vec::new();
        loop {
            let Some(kv) = self.queue.range(from.as_slice()..).next() else {
                break;
            };
            let (k, _) = kv?;
            let Some((name, _)) = split_alert_key(&k) else {
                break; // past the alerts: tallies and metadata sort after every name
            };
            let mut last = prefix(name);
            last.push(0xFF);
            let Some(kv) = self.queue.range(..last.as_slice()).next_back() else {
                break;
            };
            let (lk, _) = kv?;
            let last_seq = split_alert_key(&lk).map_or(u64::MAX, |(_, s)| s);
            match queued(name) {
                Some((n, tally_last)) if n > 0 && last_seq <= tally_last => {}
                _ => {
                    tracing::warn!(
                        integration = name,
                        "The queue's counters do not match its contents (was an older version run on it?); the queue is counted again."
                    );
                    return Ok(None);
                }
            }
            seen += 1;
            from = prefix(name);
            from.push(0xFF);
            from.extend_from_slice(&[0xFF; 9]);
        }
        let claimed = added
            .keys()
            .filter(|n| queued(n).is_none_or(|(q, _)| q > 0))
            .count();
        if claimed != seen {
            tracing::warn!(
                "The queue's counters name integrations it does not hold; the queue is counted again."
            );
            return Ok(None);
        }
        Ok(Some((added, removed)))
    }

    /// Counts the queue, once: depth per integration, total bytes, highest sequence number, and
    /// writes the tallies and the marker in one batch. Records that cannot be read are
    /// dead-lettered, not dropped. Runs at start only, before anything else uses the store.
    #[allow(clippy::type_complexity)]
    fn recount(&self) -> Result<(BTreeMap<String, Tally>, BTreeMap<String, Tally>), StoreError> {
        let mut added: BTreeMap<String, Tally> = BTreeMap::new();
        let mut unreadable = Vec::new();
        let mut stale = Vec::new();
        let mut b = sled::Batch::default();
        for kv in self.queue.iter() {
            let (k, v) = kv?;
            let Some((name, seq)) = split_alert_key(&k) else {
                // An empty metadata value means "removed"; older versions wrote such rows
                // when a requeue shared a commit with a file source (see `append_requeue`).
                if k.first() == Some(&META_PREFIX) && v.is_empty() && &k[..] != TALLY_MARKER {
                    stale.push(k.to_vec());
                }
                if k.first() == Some(&TALLY_PREFIX) {
                    b.remove(&k);
                }
                continue;
            };
            // Unreadable records are counted like the others: moving each to the dead letters
            // below takes it off the count again, so the count ends right.
            if let Err(e) = Envelope::decode(&v) {
                unreadable.push((name.to_string(), seq, e.to_string(), v.to_vec()));
            }
            let t = added.entry(name.to_string()).or_default();
            t.alerts += 1;
            t.bytes += v.len() as u64;
            t.last_seq = t.last_seq.max(seq);
        }
        for k in &stale {
            b.remove(k.as_slice());
        }
        for (name, t) in &added {
            b.insert(tally_key(Side::Added, name), &t.encode()[..]);
        }
        b.insert(TALLY_MARKER, &[][..]);
        self.queue.apply_batch(b)?;
        if !stale.is_empty() {
            tracing::info!(
                rows = stale.len(),
                "Removed empty metadata rows left by an older version."
            );
        }
        tracing::info!(
            alerts = added.values().map(|t| t.alerts).sum::<u64>(),
            "Counted the queue once; later starts read its counters."
        );
        let total = added.values().map(|t| t.bytes).sum();
        // move_to_dead below needs the counters in place.
        *self.depth.lock().expect("depth lock") = added
            .iter()
            .map(|(n, t)| {
                let d = Depth {
                    alerts: t.alerts,
                    bytes: t.bytes,
                    last_seq: t.last_seq,
                };
                (n.clone(), d)
            })
            .collect();
        self.total_bytes.store(total, Ordering::SeqCst);
        *self.added.lock().expect("tally lock") = added;
        for (name, seq, why, raw) in unreadable {
            self.move_to_dead(
                &name,
                seq,
                &DeadLetter::unreadable(&name, seq, &why, &raw),
                raw.len() as u64,
            )?;
        }
        let added = self.added.lock().expect("tally lock").clone();
        let removed = self.removed.lock().expect("tally lock").clone();
        Ok((added, removed))
    }

    /// Bytes free for an unprivileged writer on the database's file system.
    pub fn free_space(&self) -> std::io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.dir.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // statvfs only writes into the struct we own.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Sets `queue.min_free_space` (bytes), below which the writer refuses alerts.
    pub fn set_min_free_space(&self, bytes: u64) {
        self.min_free_space.store(bytes, Ordering::SeqCst);
    }

    /// The free space on the disk holding the queue, now, and the configured floor.
    pub fn space(&self) -> Space {
        Space {
            free: self.free_space().ok(),
            min_free: self.min_free_space.load(Ordering::SeqCst),
        }
    }

    /// Runs `f`, and marks the store fatal if it failed in a way the database cannot recover
    /// from in this process (see [`StoreError::is_fatal`]). Every public method that touches
    /// sled goes through here, so the first such error, whoever meets it, stops the daemon.
    fn watch<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let r = f();
        if let Err(e) = &r
            && e.is_fatal()
        {
            self.set_fatal(e.reason());
        }
        r
    }

    /// Marks the store fatal if `e`, met by code that uses one of the trees directly (the
    /// limiter's), is an I/O error: sled then refuses every later write.
    pub fn check_sled_error(&self, e: &sled::Error) {
        if let sled::Error::Io(io) = e {
            self.set_fatal(format!("disk I/O error: {}", os_words(io)));
        }
    }

    /// Records an error after which sled cannot be trusted to write again.
    pub fn set_fatal(&self, why: String) {
        let mut f = self.fatal.lock().expect("fatal lock");
        if f.is_none() {
            *f = Some(why);
            self.fatal_notify.notify_waiters();
            self.fatal_notify.notify_one();
        }
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().expect("fatal lock").clone()
    }

    /// Makes everything written so far survive power loss (see the module doc), and checks
    /// that it went to the database at its path: a folder deleted or replaced while the agent
    /// runs would otherwise take writes (and answer 202) into a file nobody will read.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.watch(|| {
            self.db.flush()?;
            self.sync_new_blobs()?;
            self.db_file
                .sync_data()
                .map_err(|source| StoreError::Sync {
                    path: self.db_file_path.clone(),
                    source,
                })?;
            self.check_linked()
        })
    }

    /// Fails with [`StoreError::Unlinked`] when the open database file is no longer the one at
    /// its path: deleted (no link left, or nothing at the path) or replaced. One fstat and one
    /// stat: nothing next to the fsync before it.
    fn check_linked(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let sync_error = |source| StoreError::Sync {
            path: self.db_file_path.clone(),
            source,
        };
        let gone = || StoreError::Unlinked {
            path: self.db_file_path.clone(),
        };
        let open = self.db_file.metadata().map_err(sync_error)?;
        if open.nlink() == 0 {
            return Err(gone());
        }
        match std::fs::metadata(&self.db_file_path) {
            // Another file in its place on the same file system: replaced. Devices that differ
            // say nothing for sure (some overlay file systems report one device for a path and
            // another for an open file), and a false alarm here would restart the agent in a
            // loop, so only the inode is trusted, and only on the same device.
            Ok(m) if m.dev() == open.dev() && m.ino() != open.ino() => Err(gone()),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(gone()),
            Err(e) => Err(sync_error(e)),
        }
    }

    /// The watchdog's proof that the database still takes a write: rewrites one small key
    /// and syncs. With `write` false (the disk is nearly full) it only syncs, which still
    /// finds a failed disk, a deleted database and an error sled met in the background.
    pub fn probe(&self, now: Millis, write: bool) -> Result<(), StoreError> {
        if write {
            self.watch(|| Ok(self.queue.insert(PROBE_KEY, &now.to_be_bytes())?))?;
        }
        self.sync()
    }

    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let Ok(entries) = std::fs::read_dir(&self.blobs_dir) else {
            return Ok(());
        };
        let mut synced = self.synced_blobs.lock().expect("blob lock");
        let mut any = false;
        for e in entries.flatten() {
            let name = e.file_name();
            if synced.contains(&name) {
                continue;
            }
            let p = e.path();
            let sync = |p: &Path| File::open(p).and_then(|f| f.sync_all());
            // A blob sled removed in between is no longer needed.
            if let Err(source) = sync(&p)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(StoreError::Sync { path: p, source });
            }
            synced.insert(name);
            any = true;
        }
        if any {
            File::open(&self.blobs_dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StoreError::Sync {
                    path: self.blobs_dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Reserves `n` consecutive sequence numbers and returns the first.
    pub fn reserve_seq(&self, n: u64) -> u64 {
        self.next_seq.fetch_add(n, Ordering::SeqCst)
    }

    /// Writes new alerts (and optional metadata) in one atomic batch; does not sync. A metadata
    /// entry with an empty value removes its key (a file source forgetting a finished file).
    pub fn append(
        &self,
        alerts: &[(String, u64, Vec<u8>)],
        meta: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.watch(|| {
            let mut b = sled::Batch::default();
            for (name, seq, value) in alerts {
                b.insert(alert_key(name, *seq), value.as_slice());
            }
            for (k, v) in meta {
                debug_assert_eq!(k.first(), Some(&META_PREFIX));
                if v.is_empty() {
                    b.remove(k.as_slice());
                } else {
                    b.insert(k.as_slice(), v.as_slice());
                }
            }
            let mut added = self.added.lock().expect("tally lock");
            let rows = tallies_after_adding(&added, alerts);
            for (name, t) in &rows {
                b.insert(tally_key(Side::Added, name), &t.encode()[..]);
            }
            self.queue.apply_batch(b)?;
            added.extend(rows);
            drop(added);
            self.count_appended(alerts);
            Ok(())
        })
    }

    fn count_appended(&self, alerts: &[(String, u64, Vec<u8>)]) {
        let mut depth = self.depth.lock().expect("depth lock");
        for (name, seq, value) in alerts {
            let d = depth.entry(name.clone()).or_default();
            d.alerts += 1;
            d.bytes += value.len() as u64;
            d.last_seq = d.last_seq.max(*seq);
            self.total_bytes
                .fetch_add(value.len() as u64, Ordering::SeqCst);
        }
    }

    /// Reads metadata written with [`Store::append`].
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.watch(|| Ok(self.queue.get(key)?.map(|v| v.to_vec())))
    }

    /// Up to `limit` metadata entries whose key starts with `prefix` (which must start with
    /// [`META_PREFIX`]), in key order.
    pub fn meta_scan(&self, prefix: &[u8], limit: usize) -> Result<Vec<MetaEntry>, StoreError> {
        self.watch(|| {
            debug_assert_eq!(prefix.first(), Some(&META_PREFIX));
            let mut out = Vec::new();
            // An empty value means "no row" (the tally marker is one, see `TALLY_MARKER`).
            for kv in self.queue.scan_prefix(prefix) {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = kv?;
                if !v.is_empty() {
                    out.push((k.to_vec(), v.to_vec()));
                }
            }
            Ok(out)
        })
    }

    /// Records something that never reached the queue and never will as it is (a tailed line
    /// too long or not JSON, for example). `dl.id` comes from [`Store::reserve_seq`]. Not
    /// synced: the writer (`Ingest::bury`) writes it in its commit group, before the group's
    /// one fsync.
    pub fn put_dead(&self, dls: &[DeadLetter]) -> Result<(), StoreError> {
        self.watch(|| {
            if dls.is_empty() {
                return Ok(());
            }
            let mut b = sled::Batch::default();
            for dl in dls {
                let value = serde_json::to_vec(dl).expect("a DeadLetter always serializes");
                b.insert(&dl.id.to_be_bytes(), value);
            }
            let mut total = self.dead_total.lock().expect("dead lock");
            // Ids come fresh from `reserve_seq`: each is a new dead letter.
            let now = *total + dls.len() as u64;
            b.insert(DEAD_COUNT_KEY, &now.to_be_bytes());
            self.dead.apply_batch(b)?;
            *total = now;
            Ok(())
        })
    }

    /// Up to `limit` alerts of `integration` with a sequence number above `after`, oldest first.
    pub fn load_after(
        &self,
        integration: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Envelope)>, StoreError> {
        self.watch(|| {
            let start = alert_key(integration, after.saturating_add(1));
            let end = alert_key(integration, u64::MAX);
            let mut out = Vec::new();
            for kv in self.queue.range(start..=end).take(limit) {
                let (k, v) = kv?;
                let Some((_, seq)) = split_alert_key(&k) else {
                    continue;
                };
                match Envelope::decode(&v) {
                    Ok(e) => out.push((seq, e)),
                    Err(e) => {
                        let dl = DeadLetter::unreadable(integration, seq, &e.to_string(), &v);
                        self.move_to_dead(integration, seq, &dl, v.len() as u64)?;
                    }
                }
            }
            Ok(out)
        })
    }

    /// The oldest queued alert's receive time.
    pub fn oldest(&self, integration: &str) -> Result<Option<Millis>, StoreError> {
        self.watch(
            || match self.queue.scan_prefix(prefix(integration)).next() {
                None => Ok(None),
                Some(kv) => Ok(Envelope::decode(&kv?.1).ok().map(|e| e.received_at)),
            },
        )
    }

    /// Removes delivered alerts. Not synced: a removal lost in a crash means one duplicate
    /// delivery, which at-least-once allows.
    pub fn ack(&self, integration: &str, seqs: &[(u64, u64)]) -> Result<(), StoreError> {
        self.watch(|| {
            let mut b = sled::Batch::default();
            for (seq, _) in seqs {
                b.remove(alert_key(integration, *seq));
            }
            let freed: u64 = seqs.iter().map(|(_, bytes)| bytes).sum();
            let mut removed = self.removed.lock().expect("tally lock");
            let mut t = removed.get(integration).copied().unwrap_or_default();
            t.alerts += seqs.len() as u64;
            t.bytes += freed;
            b.insert(tally_key(Side::Removed, integration), &t.encode()[..]);
            self.queue.apply_batch(b)?;
            removed.insert(integration.to_string(), t);
            drop(removed);
            let mut depth = self.depth.lock().expect("depth lock");
            if let Some(d) = depth.get_mut(integration) {
                d.alerts = d.alerts.saturating_sub(seqs.len() as u64);
                d.bytes = d.bytes.saturating_sub(freed);
            }
            self.total_bytes
                .fetch_sub(freed.min(self.total_bytes()), Ordering::SeqCst);
            Ok(())
        })
    }

    /// Rewrites an alert's envelope (attempt count and next attempt) in place.
    pub fn update(&self, integration: &str, seq: u64, env: &Envelope) -> Result<(), StoreError> {
        self.watch(|| {
            let key = alert_key(integration, seq);
            // Only if it is still queued: an operator may have moved it meanwhile.
            if self.queue.contains_key(&key)? {
                self.queue.insert(key, env.encode())?;
            }
            Ok(())
        })
    }

    /// Moves an alert from the queue to the dead letters, atomically.
    pub fn move_to_dead(
        &self,
        integration: &str,
        seq: u64,
        dl: &DeadLetter,
        bytes: u64,
    ) -> Result<(), StoreError> {
        self.watch(|| {
            use sled::Transactional;
            let key = alert_key(integration, seq);
            let value = serde_json::to_vec(dl).expect("a DeadLetter always serializes");
            let mut removed = self.removed.lock().expect("tally lock");
            let mut t = removed.get(integration).copied().unwrap_or_default();
            t.alerts += 1;
            t.bytes += bytes;
            let t_key = tally_key(Side::Removed, integration);
            let mut total = self.dead_total.lock().expect("dead lock");
            let one_more = *total + 1;
            let (was_queued, was_dead) = (&self.queue, &self.dead)
                .transaction(|(q, d)| {
                    let queued = q.remove(key.as_slice())?.is_some();
                    if queued {
                        q.insert(t_key.as_slice(), &t.encode()[..])?;
                    }
                    let dead = d.insert(&seq.to_be_bytes(), value.as_slice())?.is_some();
                    if !dead {
                        d.insert(DEAD_COUNT_KEY, &one_more.to_be_bytes())?;
                    }
                    Ok::<_, sled::transaction::ConflictableTransactionError<()>>((queued, dead))
                })
                .map_err(from_transaction)?;
            if was_queued {
                removed.insert(integration.to_string(), t);
            }
            drop(removed);
            // The counters move only for what changed: an alert already gone from the queue
            // (moved meanwhile) must not be taken off the depth a second time.
            if !was_dead {
                *total = one_more;
            }
            drop(total);
            if was_queued {
                let mut depth = self.depth.lock().expect("depth lock");
                if let Some(d) = depth.get_mut(integration) {
                    d.alerts = d.alerts.saturating_sub(1);
                    d.bytes = d.bytes.saturating_sub(bytes);
                }
                self.total_bytes
                    .fetch_sub(bytes.min(self.total_bytes()), Ordering::SeqCst);
            }
            self.db.flush()?;
            Ok(())
        })
    }

    /// All dead letters, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.watch(|| {
            let mut out = Vec::new();
            for kv in self.dead.iter() {
                let (_, v) = kv?;
                if let Ok(dl) = serde_json::from_slice::<DeadLetter>(&v) {
                    out.push(dl);
                }
            }
            Ok(out)
        })
    }

    pub fn dead_count(&self) -> usize {
        *self.dead_total.lock().expect("dead lock") as usize
    }

    /// Dead letters with an id above `after`, oldest first, of one integration or all; at
    /// most `limit` of them.
    pub fn dead_letters_of(
        &self,
        integration: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.watch(|| {
            let mut out = Vec::new();
            let Some(start) = after.checked_add(1) else {
                return Ok(out);
            };
            for kv in self.dead.range(start.to_be_bytes()..) {
                if out.len() >= limit {
                    break;
                }
                let (_, v) = kv?;
                let Ok(dl) = serde_json::from_slice::<DeadLetter>(&v) else {
                    continue;
                };
                if integration.is_none_or(|n| n == dl.integration) {
                    out.push(dl);
                }
            }
            Ok(out)
        })
    }

    /// Ids of the dead letters (of one integration, or all) that failed before `before`.
    pub fn dead_ids_failed_before(
        &self,
        integration: Option<&str>,
        before: Millis,
    ) -> Result<Vec<u64>, StoreError> {
        self.watch(|| {
            let mut out = Vec::new();
            for kv in self.dead.iter() {
                let (_, v) = kv?;
                let Ok(dl) = serde_json::from_slice::<DeadLetter>(&v) else {
                    continue;
                };
                if dl.failed_at < before && integration.is_none_or(|n| n == dl.integration) {
                    out.push(dl.id);
                }
            }
            Ok(out)
        })
    }

    /// One dead letter.
    pub fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.watch(|| match self.dead.get(id.to_be_bytes())? {
            None => Ok(None),
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
        })
    }

    /// Removes dead letters for good (an operator's purge); returns how many existed. Synced:
    /// a purge that comes back after a crash would surprise whoever ordered it.
    pub fn purge_dead(&self, ids: &[u64]) -> Result<u64, StoreError> {
        self.watch(|| {
            let mut total = self.dead_total.lock().expect("dead lock");
            // Nothing else removes dead letters while the lock is held: what is there now is
            // what the batch removes.
            let mut b = sled::Batch::default();
            let mut removed = 0;
            let ids: std::collections::BTreeSet<&u64> = ids.iter().collect();
            for id in ids {
                if self.dead.contains_key(id.to_be_bytes())? {
                    b.remove(&id.to_be_bytes());
                    removed += 1;
                }
            }
            let now = total.saturating_sub(removed);
            b.insert(DEAD_COUNT_KEY, &now.to_be_bytes());
            self.dead.apply_batch(b)?;
            *total = now;
            drop(total);
            self.sync()?;
            Ok(removed)
        })
    }

    /// Like [`Store::append`], and removes the dead letters `undead` in the same transaction:
    /// a retried dead letter is either back in the queue or still dead, never both, never
    /// neither. Does not sync.
    pub fn append_requeue(
        &self,
        alerts: &[(String, u64, Vec<u8>)],
        meta: &[(Vec<u8>, Vec<u8>)],
        undead: &[u64],
    ) -> Result<(), StoreError> {
        self.watch(|| {
            use sled::Transactional;
            let mut added = self.added.lock().expect("tally lock");
            let rows = tallies_after_adding(&added, alerts);
            let mut total = self.dead_total.lock().expect("dead lock");
            let dead_before = *total;
            let removed = (&self.queue, &self.dead)
                .transaction(|(q, d)| {
                    for (name, seq, value) in alerts {
                        q.insert(alert_key(name, *seq), value.as_slice())?;
                    }
                    for (name, t) in &rows {
                        q.insert(tally_key(Side::Added, name), &t.encode()[..])?;
                    }
                    // As in `append`: an empty value removes the key (a file source forgetting
                    // a finished file), it is never stored.
                    for (k, v) in meta {
                        if v.is_empty() {
                            q.remove(k.as_slice())?;
                        } else {
                            q.insert(k.as_slice(), v.as_slice())?;
                        }
                    }
                    let mut removed = 0u64;
                    for id in undead {
                        if d.remove(&id.to_be_bytes())?.is_some() {
                            removed += 1;
                        }
                    }
                    if removed > 0 {
                        let now = dead_before.saturating_sub(removed);
                        d.insert(DEAD_COUNT_KEY, &now.to_be_bytes())?;
                    }
                    Ok::<_, sled::transaction::ConflictableTransactionError<()>>(removed)
                })
                .map_err(from_transaction)?;
            added.extend(rows);
            drop(added);
            *total = dead_before.saturating_sub(removed);
            drop(total);
            self.count_appended(alerts);
            Ok(())
        })
    }

    pub fn depth(&self, integration: &str) -> Depth {
        self.depth
            .lock()
            .expect("depth lock")
            .get(integration)
            .copied()
            .unwrap_or_default()
    }

    /// Every integration that has (or had) queued alerts, configured or not.
    pub fn depths(&self) -> BTreeMap<String, Depth> {
        self.depth.lock().expect("depth lock").clone()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::SeqCst)
    }

    /// The limiter tree (owned by `sender::limiter`).
    pub fn limiter_tree(&self) -> &sled::Tree {
        &self.limiter
    }

    /// The API budget's tree (owned by `api::client`).
    pub fn api_limiter_tree(&self) -> &sled::Tree {
        &self.api_limiter
    }

    /// Integrations resolved through the API (owned by `api::resolve`).
    pub fn api_cache_tree(&self) -> &sled::Tree {
        &self.api_cache
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.watch(|| {
            self.db.flush()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a database just dropped. sled lets go of its lock only when its flusher thread
    /// has ended, a moment after the drop: wait for that, with a deadline.
    fn reopen(path: &Path) -> Store {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(path, 1 << 20) {
                Ok((s, _)) => return s,
                Err(e) if std::time::Instant::now() < end && e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn copy_db(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_db(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    fn env(n: usize) -> Vec<u8> {
        Envelope {
            received_at: 1,
            attempts: 0,
            next_attempt_at: 0,
            key_hash: 7,
            payload: vec![b'x'; n],
        }
        .encode()
    }

    /// Appends one alert per size to `integration`; returns their sequence numbers.
    fn put(store: &Store, integration: &str, sizes: &[usize]) -> Vec<u64> {
        let first = store.reserve_seq(sizes.len() as u64);
        let rows: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (integration.to_string(), first + i as u64, env(*n)))
            .collect();
        store.append(&rows, &[]).unwrap();
        rows.iter().map(|r| r.1).collect()
    }

    fn counters(store: &Store) -> (BTreeMap<String, Depth>, u64, u64, usize) {
        (
            store.depths(),
            store.total_bytes(),
            store.reserve_seq(0),
            store.dead_count(),
        )
    }

    /// Issue 14: a start with a million queued alerts scanned them all to rebuild the counters
    /// (3.1 s before /healthz answered). The counters are now rows written in the same batch as
    /// the alerts, the acks and the moves they count; a start reads them and gets the same
    /// answer a count would.
    #[test]
    fn counters_written_with_each_batch_survive_a_restart_without_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        let a = put(&store, "a", &[10, 20, 30, 40]);
        let b = put(&store, "b", &[5, 6]);
        put(&store, "c", &[7]);
        store.ack("a", &[(a[0], env(10).len() as u64)]).unwrap();
        store
            .move_to_dead("a", a[1], &dead(a[1]), env(20).len() as u64)
            .unwrap();
        // A second move of the same alert changes nothing.
        store
            .move_to_dead("a", a[1], &dead(a[1]), env(20).len() as u64)
            .unwrap();
        store
            .ack(
                "b",
                &[(b[0], env(5).len() as u64), (b[1], env(6).len() as u64)],
            )
            .unwrap();
        let requeued = store.reserve_seq(1);
        store
            .append_requeue(&[("b".into(), requeued, env(9))], &[], &[a[1]])
            .unwrap();
        store.sync().unwrap();
        let before = counters(&store);
        assert_eq!(before.0["a"].alerts, 2);
        assert_eq!(before.0["b"].alerts, 1);
        assert_eq!(before.0["c"].alerts, 1);
        drop(store);

        let store = reopen(&path);
        assert!(store.queue.contains_key(TALLY_MARKER).unwrap());
        assert_eq!(counters(&store), before);
        // What a full count finds: the same.
        store.queue.remove(TALLY_MARKER).unwrap();
        store.sync().unwrap();
        drop(store);
        let store = reopen(&path);
        assert_eq!(counters(&store), before);
    }

    /// The proof that a start does not read the alerts: a row slipped into the middle of the
    /// queue behind the counters' back is not counted (a count would find it).
    #[test]
    fn a_start_reads_the_counters_not_the_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        let seqs = put(&store, "a", &[10, 10, 10]);
        store.ack("a", &[(seqs[1], env(10).len() as u64)]).unwrap();
        store
            .queue
            .insert(alert_key("a", seqs[1]), env(10))
            .unwrap();
        store.sync().unwrap();
        drop(store);
        let store = reopen(&path);
        assert_eq!(store.depth("a").alerts, 2);
    }

    /// A database an older version wrote (or ran on in between: it deletes the marker, an
    /// empty metadata row, when it opens the database) is counted once, and gets its tallies.
    #[test]
    fn an_older_version_in_between_makes_the_next_start_count_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        let seqs = put(&store, "a", &[10, 10, 10]);
        // What an older version does: drops the marker at start, then queues and acks alerts
        // without moving the counters.
        store.queue.remove(TALLY_MARKER).unwrap();
        store.queue.remove(alert_key("a", seqs[0])).unwrap();
        store.queue.insert(alert_key("b", 99), env(4)).unwrap();
        store.sync().unwrap();
        drop(store);
        let store = reopen(&path);
        assert_eq!(store.depth("a").alerts, 2);
        assert_eq!(store.depth("b").alerts, 1);
        assert_eq!(store.reserve_seq(0), 100);
        assert!(store.queue.contains_key(TALLY_MARKER).unwrap());
        drop(store);
        let store = reopen(&path);
        assert_eq!((store.depth("a").alerts, store.depth("b").alerts), (2, 1));
    }

    /// Counters that disagree with what a look at each integration's ends finds (alerts of an
    /// integration they call empty, or one they do not name, or past their last sequence
    /// number) are not trusted: the queue is counted again.
    #[test]
    fn counters_that_disagree_with_the_queue_ends_are_recounted() {
        type Tamper = fn(&Store, &[u64]);
        let cases: [(&str, Tamper); 3] = [
            ("alerts the counters call acked", |s, seqs| {
                s.ack("a", &seqs.iter().map(|q| (*q, 0)).collect::<Vec<_>>())
                    .unwrap();
                s.queue.insert(alert_key("a", seqs[0]), env(10)).unwrap();
            }),
            ("an integration they do not name", |s, _| {
                s.queue.insert(alert_key("zz", 1), env(3)).unwrap();
            }),
            ("a sequence number past theirs", |s, _| {
                s.queue.insert(alert_key("a", 1000), env(3)).unwrap();
            }),
        ];
        for (what, tamper) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("q");
            let (store, _) = Store::open(&path, 1 << 20).unwrap();
            let seqs = put(&store, "a", &[10, 10]);
            tamper(&store, &seqs);
            store.sync().unwrap();
            let truth: u64 = store
                .queue
                .iter()
                .keys()
                .filter(|k| split_alert_key(k.as_ref().unwrap()).is_some())
                .count() as u64;
            drop(store);
            let store = reopen(&path);
            let counted: u64 = store.depths().values().map(|d| d.alerts).sum();
            assert_eq!(counted, truth, "{what}");
        }
    }

    /// Issue 14: the dead letters were counted at every start too. Their count is a row in
    /// the same batch as each change (put, move, requeue, purge), read back at start.
    #[test]
    fn the_dead_letter_count_is_kept_with_each_change_and_read_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        let a = put(&store, "a", &[10, 10]);
        store.move_to_dead("a", a[0], &dead(a[0]), 39).unwrap();
        store.move_to_dead("a", a[0], &dead(a[0]), 39).unwrap();
        let ids: Vec<u64> = (0..3).map(|_| store.reserve_seq(1)).collect();
        store
            .put_dead(&ids.iter().map(|i| dead(*i)).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(store.dead_count(), 4);
        let again = store.reserve_seq(1);
        store
            .append_requeue(&[("a".into(), again, env(3))], &[], &[a[0]])
            .unwrap();
        assert_eq!(store.purge_dead(&[ids[0], ids[0], 12345]).unwrap(), 1);
        assert_eq!(store.dead_count(), 2);
        // Slipped in behind the count's back: a start that read the rows would miss it.
        store
            .dead
            .insert(999u64.to_be_bytes(), b"{}".to_vec())
            .unwrap();
        store.sync().unwrap();
        drop(store);
        let store = reopen(&path);
        assert_eq!(store.dead_count(), 2);
        assert_eq!(store.reserve_seq(0), 1000);
        assert_eq!(store.dead_letters().unwrap().len(), 2);
        assert_eq!(store.dead_letters_of(None, 0, 10).unwrap().len(), 2);
        // Without the marker (an older version ran on it) they are counted.
        store.queue.remove(TALLY_MARKER).unwrap();
        store.sync().unwrap();
        drop(store);
        let store = reopen(&path);
        assert_eq!(store.dead_count(), 3);
    }

    fn dead(id: u64) -> DeadLetter {
        DeadLetter {
            id,
            integration: "a".into(),
            received_at: 1,
            failed_at: 2,
            attempts: 1,
            status: 400,
            reason: "refused".into(),
            response: String::new(),
            payload: "{}".into(),
        }
    }

    #[test]
    fn a_requeued_dead_letter_is_in_the_queue_or_dead_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("q"), 1 << 20).unwrap();
        let seq = store.reserve_seq(1);
        store
            .append(&[("a".into(), seq, b"x".to_vec())], &[])
            .unwrap();
        store.move_to_dead("a", seq, &dead(seq), 1).unwrap();
        assert_eq!((store.depth("a").alerts, store.dead_count()), (0, 1));

        let again = store.reserve_seq(1);
        let env = Envelope {
            received_at: 1,
            attempts: 0,
            next_attempt_at: 0,
            key_hash: 7,
            payload: b"{}".to_vec(),
        };
        store
            .append_requeue(&[("a".into(), again, env.encode())], &[], &[seq])
            .unwrap();
        assert_eq!((store.depth("a").alerts, store.dead_count()), (1, 0));
        assert!(store.dead_letter(seq).unwrap().is_none());
        assert_eq!(store.load_after("a", 0, 10).unwrap().len(), 1);

        // Counters survive a restart: they are rebuilt from what is on disk.
        store.sync().unwrap();
        drop(store);
        let store = reopen(&dir.path().join("q"));
        assert_eq!((store.depth("a").alerts, store.dead_count()), (1, 0));
    }

    /// Issue 10, defect 7: records that cannot be decoded were left out of the depth at start
    /// and then taken off it again when moved to the dead letters (2 good + 2 bad said 0).
    #[test]
    fn queue_depth_counts_every_readable_alert_after_unreadable_ones_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        let env = Envelope {
            received_at: 1,
            attempts: 0,
            next_attempt_at: 0,
            key_hash: 7,
            payload: b"{}".to_vec(),
        }
        .encode();
        for value in [&env[..], b"bad", &env[..], b"worse", &env[..]] {
            let seq = store.reserve_seq(1);
            store
                .append(&[("a".into(), seq, value.to_vec())], &[])
                .unwrap();
        }
        store.sync().unwrap();
        drop(store);
        // Counted at start (a database without tallies, as an older version left it) and
        // found by the reader (tallies kept): either way they end in the dead letters.
        for without_tallies in [true, false] {
            let dir2 = tempfile::tempdir().unwrap();
            let copy = dir2.path().join("q");
            copy_db(&path, &copy);
            if without_tallies {
                let s = reopen(&copy);
                s.queue.remove(TALLY_MARKER).unwrap();
                s.sync().unwrap();
                drop(s);
            }
            let store = reopen(&copy);
            if !without_tallies {
                assert_eq!(store.load_after("a", 0, 10).unwrap().len(), 3);
            }
            let d = store.depth("a");
            assert_eq!((d.alerts, d.bytes), (3, 3 * env.len() as u64));
            assert_eq!(store.total_bytes(), 3 * env.len() as u64);
            assert_eq!(store.dead_count(), 2);
            drop(store);
            let store = reopen(&copy);
            assert_eq!(
                store.depth("a").alerts,
                3,
                "without_tallies: {without_tallies}"
            );
            assert_eq!(store.dead_count(), 2);
        }
        let store = reopen(&path);
        store.load_after("a", 0, 10).unwrap();
        let d = store.depth("a");
        assert_eq!((d.alerts, d.bytes), (3, 3 * env.len() as u64));
        assert_eq!(store.total_bytes(), 3 * env.len() as u64);
        assert_eq!(store.dead_count(), 2);
        assert_eq!(store.load_after("a", 0, 10).unwrap().len(), 3);
        // A second move of the same record changes nothing.
        let dl = store.dead_letters().unwrap().remove(0);
        store.move_to_dead("a", dl.id, &dl, 3).unwrap();
        assert_eq!((store.depth("a").alerts, store.dead_count()), (3, 2));
    }

    /// Issue 10, defect 6: rows an older version stored with an empty value (meaning
    /// "removed") are removed at start instead of read as unreadable read positions.
    #[test]
    fn empty_metadata_rows_left_by_an_older_version_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        let empty = [&[META_PREFIX][..], b"tail\0/x\0a"].concat();
        let kept = [&[META_PREFIX][..], b"tail\0/x\0b"].concat();
        // What the old requeue path did: insert the empty value as it was (in a database an
        // older version wrote: no tally marker).
        store.queue.insert(&empty, &b""[..]).unwrap();
        store.queue.remove(TALLY_MARKER).unwrap();
        store
            .append(&[], &[(kept.clone(), b"pos".to_vec())])
            .unwrap();
        store.sync().unwrap();
        drop(store);
        let store = reopen(&path);
        let rows = store.meta_scan(&[META_PREFIX], 10).unwrap();
        assert_eq!(rows, vec![(kept, b"pos".to_vec())]);
        assert!(store.queue.get(&empty).unwrap().is_none());
    }

    /// Issue 10, scenario: the state folder deleted while the agent runs. sled writes on into
    /// the unlinked file and every fsync succeeds; the sync must fail, and mark the store fatal.
    #[test]
    fn a_deleted_database_fails_the_sync_and_marks_the_store_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        store.probe(1, true).unwrap();
        std::fs::remove_dir_all(&path).unwrap();
        let seq = store.reserve_seq(1);
        let r = store
            .append(&[("a".into(), seq, b"x".to_vec())], &[])
            .and_then(|()| store.sync());
        assert!(matches!(r, Err(StoreError::Unlinked { .. })), "{r:?}");
        assert!(store.fatal().unwrap().contains("deleted or replaced"));
    }

    /// The state folder moved aside and another database put in its place.
    #[test]
    fn a_replaced_database_fails_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let (store, _) = Store::open(&path, 1 << 20).unwrap();
        store.sync().unwrap();
        std::fs::rename(&path, dir.path().join("q.old")).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("db"), b"another").unwrap();
        assert!(matches!(store.sync(), Err(StoreError::Unlinked { .. })));
        assert!(store.fatal().is_some());
    }

    #[test]
    fn an_io_error_sled_re_wrapped_reads_as_the_os_says_it() {
        let os = std::io::Error::from_raw_os_error(5);
        let wrapped = std::io::Error::other(format!("{os:?}"));
        for e in [os, wrapped] {
            assert_eq!(
                StoreError::Sled(sled::Error::Io(e)).reason(),
                "disk I/O error: Input/output error (os error 5)"
            );
        }
    }

    #[test]
    fn purge_by_age_and_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("q"), 1 << 20).unwrap();
        for (seq, failed_at) in [(1, 100), (2, 200), (3, 300)] {
            store.reserve_seq(1);
            store
                .move_to_dead(
                    "a",
                    seq,
                    &DeadLetter {
                        failed_at,
                        ..dead(seq)
                    },
                    0,
                )
                .unwrap();
        }
        let old = store.dead_ids_failed_before(None, 250).unwrap();
        assert_eq!(old, [1, 2]);
        assert_eq!(
            store.dead_ids_failed_before(Some("b"), 250).unwrap(),
            [0u64; 0]
        );
        assert_eq!(store.purge_dead(&old).unwrap(), 2);
        assert_eq!(store.purge_dead(&[1]).unwrap(), 0, "already gone");
        assert_eq!(store.dead_count(), 1);
        let left = store.dead_letters_of(Some("a"), 0, 10).unwrap();
        assert_eq!(left.iter().map(|d| d.id).collect::<Vec<_>>(), [3]);
    }
}
