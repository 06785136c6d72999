//! What the agent reports about itself: the `/v1/status` JSON, the `status` CLI table and the
//! metrics are all built from these types.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Millis};
use crate::config::Rate;
use crate::queue::Store;

/// One budget (an integration's or the organization's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScopeStatus {
    /// The budget, e.g. "300/5m".
    pub limit: String,
    /// Requests that may count in the current window.
    pub used: u64,
    /// Seconds until a request may go out in this scope (0 = now).
    pub next_free_in_s: f64,
    /// Seconds until the pause after a 429 ends (or the next probe), if paused.
    pub paused_for_s: Option<f64>,
    /// Why it is paused.
    pub paused_reason: Option<String>,
    /// 429 answers counted against this scope since start.
    pub rate_limited_total: u64,
    /// Requests per window OnCall was seen to take here, once learned from its 429s.
    #[serde(default)]
    pub learned_limit: Option<u32>,
    /// Seconds until OnCall's next window begins here, once learned.
    #[serde(default)]
    pub learned_reset_in_s: Option<f64>,
}

/// Everything the sender knows about one integration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SenderStatus {
    /// The URL with its token redacted.
    pub url: String,
    pub configured: bool,
    pub delivered_total: u64,
    pub retried_total: u64,
    pub dead_lettered_total: u64,
    /// Heartbeats OnCall accepted.
    pub heartbeats_total: u64,
    pub in_flight: u64,
    /// The latest failure, in words (never holds the token).
    pub last_error: Option<String>,
    /// Seconds until the next attempt is allowed, when something is waiting.
    pub next_attempt_in_s: Option<f64>,
    pub budget: ScopeStatus,
    /// Sum of delivery latencies (seconds) and their count, for the metrics.
    pub latency_sum_s: f64,
    /// Delivery latencies by bucket upper bound (see `LATENCY_BUCKETS`).
    pub latency_buckets: Vec<u64>,
}

/// Upper bounds (seconds) of the delivery latency histogram.
pub const LATENCY_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The sender's half of the status, published by the dispatcher after each turn.
#[derive(Debug, Clone, Default)]
pub struct SenderBoard {
    pub at: Millis,
    pub integrations: BTreeMap<String, SenderStatus>,
    pub org: ScopeStatus,
}

pub type SharedBoard = Arc<Mutex<SenderBoard>>;

/// One integration as `/v1/status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IntegrationReport {
    pub name: String,
    /// Alerts waiting.
    pub depth: u64,
    pub bytes: u64,
    /// Age of the oldest waiting alert, seconds.
    pub oldest_age_s: Option<f64>,
    /// How long the backlog takes at this budget, when that is longer than one window.
    pub drain_estimate: Option<String>,
    #[serde(flatten)]
    pub sender: SenderStatus,
}

/// One `[[source]]` (a tailed path, the spool folder, a journal source) as `/v1/status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceStatus {
    /// "file", "spool" or "journal".
    pub kind: String,
    /// The path as configured (a journal source: its name).
    pub path: String,
    /// Files being followed (file) or waiting to be read (spool); a journal source: 1 while
    /// its journalctl runs, else 0.
    pub files: u64,
    /// Alerts it put in the queue since start.
    pub alerts_total: u64,
    /// Lines or files it could not forward since start: tailed lines went to the dead
    /// letters, spool files to `failed/`.
    pub refused_total: u64,
    /// Why the latest one was refused.
    pub last_refused: Option<String>,
    /// The latest trouble reading or queueing (cleared by the next success).
    pub last_error: Option<String>,
}

/// The sources' half of the status, keyed by "<kind> <path>", updated by each source.
pub type SourceBoard = Arc<Mutex<BTreeMap<String, SourceStatus>>>;

/// Returns a function through which one source updates its entry on the board (created on
/// first use with its kind and path).
pub fn source_reporter(
    board: SourceBoard,
    kind: &'static str,
    path: &std::path::Path,
) -> impl Fn(&dyn Fn(&mut SourceStatus)) {
    let name = format!("{kind} {}", path.display());
    let path = path.display().to_string();
    move |f: &dyn Fn(&mut SourceStatus)| {
        // The board's lock is only poisoned by a panic (and release builds abort on panic).
        let mut b = board.lock().expect("sources lock");
        let s = b.entry(name.clone()).or_insert_with(|| SourceStatus {
            kind: kind.into(),
            path: path.clone(),
            ..Default::default()
        });
        f(s);
    }
}

/// The disk holding the queue.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiskStatus {
    /// Bytes free for the agent on the file system holding the queue (`None` when it cannot
    /// be asked).
    pub free_bytes: Option<u64>,
    /// `queue.min_free_space`, bytes: below it alerts are refused with 503.
    pub min_free_bytes: u64,
    /// True while alerts are refused for lack of space. A healthy state: queued alerts still
    /// go out, and alerts are taken again as soon as there is room.
    pub refusing_alerts: bool,
    /// Why the queue database can no longer be written (the agent is exiting to be restarted).
    pub failed: Option<String>,
}

/// The whole `/v1/status` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub version: String,
    pub uptime_s: u64,
    pub queue_bytes: u64,
    pub queue_max_bytes: u64,
    pub dead_letters: u64,
    pub org: ScopeStatus,
    pub integrations: Vec<IntegrationReport>,
    #[serde(default)]
    pub sources: Vec<SourceStatus>,
    #[serde(default)]
    pub disk: DiskStatus,
}

/// Builds [`StatusReport`]s from the queue's counters and the sender's board.
pub struct Reporter {
    pub store: Arc<Store>,
    pub board: SharedBoard,
    pub clock: Clock,
    pub started: Millis,
    pub max_bytes: u64,
    /// Each configured integration's budget, for drain estimates; replaced on reload.
    pub rates: Mutex<BTreeMap<String, Rate>>,
    /// Alerts received by source and integration (counted by `queue::Ingest`).
    pub received: crate::metrics::Received,
    /// What the file and spool sources report about themselves.
    pub sources: SourceBoard,
}

impl Reporter {
    pub fn report(&self) -> StatusReport {
        let now = self.clock.now();
        let board = self.board.lock().expect("board lock").clone();
        let rates = self.rates.lock().expect("rates lock").clone();
        let depths = self.store.depths();
        let mut names: Vec<&String> = rates.keys().collect();
        for n in depths.keys().chain(board.integrations.keys()) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let integrations = names
            .into_iter()
            .map(|name| {
                let d = depths.get(name).copied().unwrap_or_default();
                let mut sender = board.integrations.get(name).cloned().unwrap_or_default();
                sender.configured = rates.contains_key(name);
                let oldest = if d.alerts > 0 {
                    self.store.oldest(name).ok().flatten()
                } else {
                    None
                };
                // The slower of the integration's budget and the org's: when the org budget
                // binds, the integration cannot drain faster than it (it may share it, too).
                let org_rate = board.org.limit.parse::<Rate>().ok();
                let slower = |r: &Rate| match org_rate {
                    Some(o)
                        if (o.count as f64 / o.per.as_secs_f64())
                            < (r.count as f64 / r.per.as_secs_f64()) =>
                    {
                        o
                    }
                    _ => *r,
                };
                let drain = rates.get(name).map(slower).and_then(|r| {
                    drain_estimate(
                        d.alerts,
                        r.count as u64,
                        r.per.as_secs_f64(),
                        &r.to_string(),
                    )
                });
                IntegrationReport {
                    name: name.clone(),
                    depth: d.alerts,
                    bytes: d.bytes,
                    oldest_age_s: oldest.map(|t| now.saturating_sub(t) as f64 / 1000.0),
                    drain_estimate: drain,
                    sender,
                }
            })
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: now.saturating_sub(self.started) / 1000,
            queue_bytes: self.store.total_bytes(),
            queue_max_bytes: self.max_bytes,
            dead_letters: self.store.dead_count() as u64,
            org: board.org,
            integrations,
            sources: self
                .sources
                .lock()
                .expect("sources lock")
                .values()
                .cloned()
                .collect(),
            disk: {
                let space = self.store.space();
                DiskStatus {
                    free_bytes: space.free,
                    min_free_bytes: space.min_free,
                    refusing_alerts: space.low(),
                    failed: self.store.fatal(),
                }
            },
        }
    }
}

/// "~14 min to drain at 300/5m", when `depth` alerts take longer than one window.
pub fn drain_estimate(depth: u64, count: u64, window_s: f64, limit: &str) -> Option<String> {
    if count == 0 || depth <= count {
        return None;
    }
    let secs = (depth as f64 / count as f64) * window_s;
    let human = if secs >= 5400.0 {
        format!("~{:.1} h", secs / 3600.0)
    } else {
        format!("~{} min", (secs / 60.0).ceil() as u64)
    };
    Some(format!("{human} to drain at {limit}"))
}

impl StatusReport {
    /// One line for systemd's STATUS= (shown by `systemctl status`).
    pub fn one_line(&self) -> String {
        let queued: u64 = self.integrations.iter().map(|i| i.depth).sum();
        let mut s = format!(
            "{queued} alerts queued ({} bytes), {} dead letters",
            self.queue_bytes, self.dead_letters
        );
        let paused: Vec<&str> = self
            .integrations
            .iter()
            .filter(|i| i.sender.budget.paused_for_s.is_some())
            .map(|i| i.name.as_str())
            .collect();
        if self.org.paused_for_s.is_some() {
            s.push_str("; PAUSED: organization rate limit");
        } else if !paused.is_empty() {
            s.push_str(&format!("; PAUSED: {}", paused.join(", ")));
        }
        let failing = self
            .integrations
            .iter()
            .filter(|i| i.sender.last_error.is_some())
            .count();
        if failing > 0 {
            s.push_str(&format!("; {failing} integrations failing"));
        }
        if self.disk.failed.is_some() {
            s.push_str("; DISK FAILED: restarting");
        } else if self.disk.refusing_alerts {
            s.push_str("; disk nearly full: refusing alerts");
        }
        s
    }

    /// The `status` CLI's table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "oncall-agent {} up {}s; queue {} of {} bytes; {} dead letters",
            self.version, self.uptime_s, self.queue_bytes, self.queue_max_bytes, self.dead_letters
        );
        let _ = writeln!(
            s,
            "org budget {}: {}",
            self.org.limit,
            scope_line(&self.org)
        );
        if self.dead_letters > 0 {
            let _ = writeln!(
                s,
                "{} alerts were refused by OnCall and wait as dead letters: oncall-agent dead list",
                self.dead_letters
            );
        }
        let mib = |b: u64| b / (1024 * 1024);
        if let Some(why) = &self.disk.failed {
            let _ = writeln!(
                s,
                "DISK FAILED: the queue database can no longer be written ({why}); the agent is restarting"
            );
        } else if self.disk.refusing_alerts {
            let _ = writeln!(
                s,
                "disk nearly full: refusing alerts ({} MiB free, queue.min_free_space is {} MiB); queued alerts still go out",
                mib(self.disk.free_bytes.unwrap_or(0)),
                mib(self.disk.min_free_bytes)
            );
        }
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>9} {:>9} {:>7} {:>5}  {:<28} STATE",
            "INTEGRATION", "QUEUED", "OLDEST", "SENT", "RETRIED", "DEAD", "BUDGET"
        );
        for i in &self.integrations {
            let oldest = i
                .oldest_age_s
                .map_or("-".to_string(), |a| format!("{a:.0}s"));
            let budget = format!("{} used of {}", i.sender.budget.used, i.sender.budget.limit);
            let mut state = if !i.sender.configured {
                "NOT CONFIGURED: alerts kept".to_string()
            } else {
                scope_line(&i.sender.budget)
            };
            if let Some(n) = i.sender.next_attempt_in_s {
                let _ = write!(state, "; next attempt in {n:.1}s");
            }
            if let Some(d) = &i.drain_estimate {
                let _ = write!(state, "; {d}");
            }
            if let Some(e) = &i.sender.last_error {
                let _ = write!(state, "; last error: {e}");
            }
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>9} {:>9} {:>7} {:>5}  {:<28} {}",
                i.name,
                i.depth,
                oldest,
                i.sender.delivered_total,
                i.sender.retried_total,
                i.sender.dead_lettered_total,
                budget,
                state
            );
        }
        for src in &self.sources {
            let files = match (src.kind.as_str(), src.files) {
                ("journal", 0) => "journalctl not running".to_string(),
                ("journal", _) => "journalctl running".to_string(),
                (_, n) => format!("{n} files"),
            };
            let _ = write!(
                s,
                "source {} {}: {files}, {} alerts queued, {} refused",
                src.kind, src.path, src.alerts_total, src.refused_total
            );
            if let Some(r) = &src.last_refused {
                let _ = write!(s, " (latest: {r})");
            }
            if let Some(e) = &src.last_error {
                let _ = write!(s, "; last error: {e}");
            }
            s.push('\n');
        }
        s
    }
}

fn scope_line(s: &ScopeStatus) -> String {
    let mut out = match (&s.paused_reason, s.paused_for_s) {
        (Some(r), Some(t)) => format!("PAUSED ({r}), {t:.1}s left"),
        _ if s.next_free_in_s > 0.0 => {
            format!("budget spent, next slot in {:.1}s", s.next_free_in_s)
        }
        _ => "ok".to_string(),
    };
    if s.rate_limited_total > 0 {
        out.push_str(&format!(", {} x 429", s.rate_limited_total));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_estimate_only_beyond_one_window() {
        assert_eq!(drain_estimate(200, 300, 300.0, "300/5m"), None);
        assert_eq!(
            drain_estimate(840, 300, 300.0, "300/5m").as_deref(),
            Some("~14 min to drain at 300/5m")
        );
        assert_eq!(
            drain_estimate(36_000, 300, 300.0, "300/5m").as_deref(),
            Some("~10.0 h to drain at 300/5m")
        );
    }
}
