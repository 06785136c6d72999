//! What the agent reports about itself: the `/v1/status` JSON, the `status` CLI table and the
//! metrics are all built from these types.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Millis};
use crate::config::Rate;
use crate::fleet::{FleetStatus, Link};
use crate::queue::{Received, Store};
use crate::sender::{ScopeStatus, SenderBoard, SenderStatus};
use crate::sources::{SourceBoard, SourceStatus};

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
    /// The fleet's shared budgets (`[fleet]`), as this host last saw them.
    #[serde(default)]
    pub fleet: Option<FleetStatus>,
}

/// Builds [`StatusReport`]s from the queue's counters and the sender's board.
pub struct Reporter {
    pub store: Arc<Store>,
    pub board: tokio::sync::watch::Receiver<SenderBoard>,
    pub clock: Clock,
    pub started: Millis,
    pub max_bytes: u64,
    /// Each configured integration's budget, for drain estimates; replaced on reload.
    pub rates: Mutex<BTreeMap<String, Rate>>,
    /// Alerts received by source and integration (counted by `queue::Ingest`).
    pub received: Received,
    /// What the file and spool sources report about themselves.
    pub sources: SourceBoard,
}

impl Reporter {
    pub fn report(&self) -> StatusReport {
        let now = self.clock.now();
        let board = self.board.borrow().clone();
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
                let org_rate = board.org.limit;
                let slower = |r: &Rate| match org_rate {
                    Some(o)
                        if (o.count as f64 / o.per.as_secs_f64())
                            < (r.count as f64 / r.per.as_secs_f64()) =>
                    {
                        o
                    }
                    _ => *r,
                };
                let drain = rates
                    .get(name)
                    .map(slower)
                    .and_then(|r| drain_estimate(d.alerts, r));
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
            fleet: board.fleet,
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
pub fn drain_estimate(depth: u64, limit: Rate) -> Option<String> {
    let count = u64::from(limit.count);
    if count == 0 || depth <= count {
        return None;
    }
    let secs = (depth as f64 / count as f64) * limit.per.as_secs_f64();
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
        if self.fleet.as_ref().is_some_and(|f| f.link == Link::Down) {
            s.push_str("; fleet's Redis unreachable: local share");
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
        let mut s = String::new();
        self.header_lines(&mut s);
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>9} {:>9} {:>7} {:>5}  {:<28} STATE",
            "INTEGRATION", "QUEUED", "OLDEST", "SENT", "RETRIED", "DEAD", "BUDGET"
        );
        for i in &self.integrations {
            integration_line(&mut s, i);
        }
        for src in &self.sources {
            source_line(&mut s, src);
        }
        s
    }

    /// The agent, the org budget, dead letters and the disk, above the table.
    fn header_lines(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "oncall-agent {} up {}s; queue {} of {} bytes; {} dead letters",
            self.version, self.uptime_s, self.queue_bytes, self.queue_max_bytes, self.dead_letters
        );
        let _ = writeln!(
            s,
            "org budget {}: {}",
            shown(self.org.limit),
            scope_line(&self.org)
        );
        if let Some(f) = &self.fleet {
            fleet_lines(s, f);
        }
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
    }
}

/// The fleet's link, then each shared budget: the fleet's use, who waits, this host's part.
fn fleet_lines(s: &mut String, f: &FleetStatus) {
    let link = match f.link {
        Link::Up => "connected".to_string(),
        Link::Connecting => "connecting".to_string(),
        Link::Down => format!(
            "UNREACHABLE: this host sends at most its local share ({:.1}% of each budget)",
            f.local_share * 100.0
        ),
    };
    let _ = writeln!(
        s,
        "fleet {} (org {}, host {}): {link}",
        f.redis, f.org, f.host
    );
    for sc in &f.scopes {
        let _ = writeln!(
            s,
            "  fleet budget {} {}: {} used by the fleet, {} hosts with backlog, this host's share {:.1}, sent by this host {}",
            sc.name, sc.limit, sc.fleet_used, sc.hosts_waiting, sc.share, sc.mine
        );
    }
}

fn integration_line(s: &mut String, i: &IntegrationReport) {
    let oldest = i
        .oldest_age_s
        .map_or("-".to_string(), |a| format!("{a:.0}s"));
    let budget = format!(
        "{} used of {}",
        i.sender.budget.used,
        shown(i.sender.budget.limit)
    );
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

fn source_line(s: &mut String, src: &SourceStatus) {
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

fn shown(limit: Option<Rate>) -> String {
    limit.map_or_else(|| "-".into(), |r| r.to_string())
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

    const FIVE_MIN: Rate = Rate {
        count: 300,
        per: std::time::Duration::from_secs(300),
    };

    #[test]
    fn drain_estimate_only_beyond_one_window() {
        assert_eq!(drain_estimate(200, FIVE_MIN), None);
        assert_eq!(
            drain_estimate(840, FIVE_MIN).as_deref(),
            Some("~14 min to drain at 300/5m")
        );
        assert_eq!(
            drain_estimate(36_000, FIVE_MIN).as_deref(),
            Some("~10.0 h to drain at 300/5m")
        );
    }
}
