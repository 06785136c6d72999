//! The one place that decides what goes out next.
//!
//! One dispatcher serves every integration, because the organization's budget is shared: an
//! integration cannot decide alone whether it may send. Per integration it keeps a window of
//! queued alerts read from sled (at most [`WINDOW`]), the grouping keys in flight, its backoff
//! and pause state and its budget; plus one org budget and pause.
//!
//! Each turn it goes round-robin over the integrations that have work, are not paused or backing
//! off, have fewer than `concurrency` requests in flight, and whose budget and the org's have a
//! free slot; takes the oldest alert whose grouping key has nothing in flight and is due; records
//! the slot in the limiter; and, once the turn's slots are flushed to disk, hands the requests to
//! tasks that only do HTTP. Round-robin is the fair share: when the org budget binds, an
//! integration with 10 alerts gets every n-th slot beside one with 50,000.
//!
//! Outcomes come back as [`Outcome`]s and only the dispatcher changes state:
//! - `Delivered`: ack (batched removal), reset backoff, end a probe pause.
//! - `Retry`: the alert stays the head of its key with its own backoff; the integration backs off
//!   too (reset by any success), so an outage costs one request per backoff step, not a storm.
//! - `RateLimited`: with Retry-After, pause the scope exactly that long; without (OnCall's case),
//!   pause it and send one probe (the head alert itself) every `probe_interval`, never more than
//!   one request in flight to a paused scope. A rejected probe lands in a window that is already
//!   spent, so probing costs nothing and finds the reset within one interval.
//! - `Rejected`: dead letter with the status and the start of the answer.
//!
//! Every request, retries and probes included, spends budget: peers that let retries bypass the
//! limiter cause the very 429 storms they then retry.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::client::Transport;
use super::limiter::{LimiterSet, Scope};
use super::outcome::{LimitScope, Outcome};
use crate::clock::{Clock, Millis, ms};
use crate::config::{Config, Delivery, Rate};
use crate::queue::store::DeadLetter;
use crate::queue::{Envelope, Store, StoreError};
use crate::redact::Secret;
use crate::status::{LATENCY_BUCKETS, ScopeStatus, SenderBoard, SenderStatus, SharedBoard};

/// Alerts of one integration held in memory at most; refilled from sled below half.
pub const WINDOW: usize = 512;

/// How backoff delays are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform between `retry_initial` and the exponential cap ("full jitter", floored so a
    /// retry never comes sooner than `retry_initial`).
    Full,
    /// Exactly the exponential cap (tests assert exact schedules with this).
    None,
}

/// What the dispatcher needs to know about one integration.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub url: Secret<reqwest::Url>,
    pub redacted_url: String,
    pub rate: Rate,
}

/// The part of the config the dispatcher applies (at start and on reload).
#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub delivery: Delivery,
    pub org: Rate,
    pub targets: Vec<Target>,
}

impl SenderConfig {
    pub fn from_config(c: &Config) -> SenderConfig {
        SenderConfig {
            delivery: c.delivery.clone(),
            org: c.limits.org,
            targets: c
                .integrations
                .iter()
                .map(|i| Target {
                    name: i.name.clone(),
                    url: i.url.clone(),
                    redacted_url: i.redacted_url(),
                    rate: i.rate,
                })
                .collect(),
        }
    }
}

/// Messages to a running dispatcher.
#[derive(Debug)]
pub enum Control {
    Reload(SenderConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("limiter state: {0}")]
    Limiter(#[from] sled::Error),
}

/// A paused scope.
#[derive(Debug, Clone)]
struct Pause {
    /// No request before this; for a probe pause, the next probe's time.
    until: Millis,
    /// Without Retry-After: probe one request at a time until one gets through.
    probe: bool,
    reason: String,
    /// When the 429 that started it came back: only a request sent after this can prove the
    /// limit has lifted (one sent before may have been counted in an earlier window).
    since: Millis,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    env: Envelope,
    /// Encoded size in the queue (for the byte counters).
    bytes: u64,
    in_flight: bool,
}

struct Integration {
    target: Target,
    /// Still in the config; a removed integration keeps its queue but sends nothing.
    configured: bool,
    window: VecDeque<Entry>,
    /// Highest sequence number read into `window` so far.
    loaded_upto: u64,
    in_flight: usize,
    /// Consecutive retryable failures; 0 after any success.
    failures: u32,
    backoff_until: Millis,
    pause: Option<Pause>,
    status: SenderStatus,
}

/// A request on its way.
struct Request {
    integration: String,
    seq: u64,
    /// Its limiter slot id.
    slot: u64,
    sent_at: Millis,
    /// Whether it is the probe of a paused (integration, org) scope.
    probe_scopes: (bool, bool),
}

/// A finished request.
struct Done {
    req: Request,
    outcome: Outcome,
}

pub struct Dispatcher {
    store: Arc<Store>,
    transport: Arc<dyn Transport>,
    clock: Clock,
    jitter: Jitter,
    delivery: Delivery,
    org_rate: Rate,
    limiters: LimiterSet,
    org_pause: Option<Pause>,
    org_429: u64,
    integrations: Vec<Integration>,
    /// Round-robin position: the integration after the last one served.
    rr: usize,
    in_flight: usize,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    board: SharedBoard,
}

impl Dispatcher {
    pub fn new(
        store: Arc<Store>,
        transport: Arc<dyn Transport>,
        cfg: SenderConfig,
        clock: Clock,
        jitter: Jitter,
        board: SharedBoard,
    ) -> Result<Dispatcher, DispatchError> {
        let now = clock.now();
        let limiters = LimiterSet::load(store.limiter_tree().clone(), scopes_of(&cfg), now)?;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut d = Dispatcher {
            store,
            transport,
            clock,
            jitter,
            delivery: cfg.delivery.clone(),
            org_rate: cfg.org,
            limiters,
            org_pause: None,
            org_429: 0,
            integrations: Vec::new(),
            rr: 0,
            in_flight: 0,
            done_tx,
            done_rx,
            board,
        };
        d.apply(cfg)?;
        // Queues of integrations that are no longer configured are reported, not dropped.
        for name in d.store.depths().keys() {
            if !d.integrations.iter().any(|i| &i.target.name == name) {
                d.integrations.push(Integration::removed(name));
            }
        }
        Ok(d)
    }

    /// Applies a (re)loaded config: integrations added, removed or changed, limits, delivery.
    fn apply(&mut self, cfg: SenderConfig) -> Result<(), DispatchError> {
        self.limiters.configure(scopes_of(&cfg))?;
        self.delivery = cfg.delivery;
        self.org_rate = cfg.org;
        for i in &mut self.integrations {
            i.configured = false;
        }
        for t in cfg.targets {
            match self
                .integrations
                .iter_mut()
                .find(|i| i.target.name == t.name)
            {
                Some(i) => {
                    i.configured = true;
                    i.status.configured = true;
                    i.status.url = t.redacted_url.clone();
                    i.target = t;
                }
                None => self.integrations.push(Integration::new(t)),
            }
        }
        for i in &mut self.integrations {
            i.status.configured = i.configured;
            // Nothing of it is sent; what is in flight finishes. Its window is reread from
            // sled if it comes back; but not while a request is in flight: entries ahead of
            // that one (held back by their grouping key or their backoff) would be dropped
            // below `loaded_upto` and never read again.
            if !i.configured && i.in_flight == 0 {
                i.window.clear();
                i.loaded_upto = 0;
            }
        }
        Ok(())
    }

    /// Runs until `shutdown` turns true (or its sender is dropped), then lets in-flight requests
    /// finish for up to `delivery.timeout` more (the caller bounds the whole by
    /// `shutdown_timeout`).
    pub async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), DispatchError> {
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.refill()?;
            let now = self.clock.now();
            self.launch(now)?;
            self.publish(now);
            let wake = self.next_wake(now);
            let sleep = tokio::time::sleep_until(match wake {
                Some(t) => self.clock.instant_at(t.max(now + 1)),
                None => tokio::time::Instant::now() + Duration::from_secs(3600),
            });
            tokio::select! {
                biased;
                // A dropped sender means no one can stop us any more: stop now. (Its `changed`
                // is ready at once and forever, so ignoring the error would spin the loop.)
                r = shutdown.changed() => if r.is_err() { break },
                Some(d) = self.done_rx.recv() => {
                    self.finish(d)?;
                    while let Ok(d) = self.done_rx.try_recv() {
                        self.finish(d)?;
                    }
                    // One flush for all the acks just made: after a crash, only alerts whose
                    // answer came in since are delivered twice.
                    self.store.flush()?;
                }
                Some(c) = control.recv() => match c {
                    Control::Reload(cfg) => self.apply(cfg)?,
                },
                _ = self.store.committed.notified() => {}
                _ = sleep => {}
            }
        }
        // Drain: no new requests; wait for the ones in flight.
        let deadline = tokio::time::Instant::now() + self.delivery.timeout + Duration::from_secs(1);
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(d)) => self.finish(d)?,
                _ => break,
            }
        }
        self.publish(self.clock.now());
        self.store.flush()?;
        Ok(())
    }

    /// Reads more of each configured integration's queue into its window.
    fn refill(&mut self) -> Result<(), DispatchError> {
        for i in &mut self.integrations {
            if !i.configured || i.window.len() >= WINDOW / 2 {
                continue;
            }
            let last = self.store.depth(&i.target.name).last_seq;
            if last <= i.loaded_upto {
                continue;
            }
            let more =
                self.store
                    .load_after(&i.target.name, i.loaded_upto, WINDOW - i.window.len())?;
            match more.last() {
                Some((seq, _)) => i.loaded_upto = *seq,
                // Everything up to `last` was acked or dead-lettered meanwhile.
                None => i.loaded_upto = last,
            }
            for (seq, env) in more {
                let bytes = env.payload.len() as u64 + 29;
                i.window.push_back(Entry {
                    seq,
                    env,
                    bytes,
                    in_flight: false,
                });
            }
        }
        Ok(())
    }

    fn scopes(name: &str) -> [Scope; 2] {
        [Scope::Integration(name.to_string()), Scope::Org]
    }

    /// Whether the org scope lets a request out now.
    fn org_open(&self, now: Millis) -> bool {
        match &self.org_pause {
            Some(p) if p.until > now => false,
            Some(p) if p.probe => self.in_flight == 0,
            _ => true,
        }
    }

    /// The window index of the alert integration `idx` would send now, if any.
    fn ready(&self, idx: usize, now: Millis) -> Option<usize> {
        let i = &self.integrations[idx];
        if !i.configured || i.in_flight >= self.delivery.concurrency || i.backoff_until > now {
            return None;
        }
        match &i.pause {
            Some(p) if p.until > now => return None,
            Some(p) if p.probe && i.in_flight > 0 => return None,
            _ => {}
        }
        let mut blocked: HashSet<u64> = HashSet::new();
        for (n, e) in i.window.iter().enumerate() {
            // Only the first alert of each key may go; and only if it is not already out.
            if !blocked.insert(e.env.key_hash) {
                continue;
            }
            if !e.in_flight && e.env.next_attempt_at <= now {
                return Some(n);
            }
        }
        None
    }

    /// Starts every request that may start now.
    fn launch(&mut self, now: Millis) -> Result<(), DispatchError> {
        self.limiters.prune(now)?;
        let mut out = Vec::new();
        let n = self.integrations.len();
        loop {
            if !self.org_open(now) {
                break;
            }
            let mut picked = None;
            for k in 0..n {
                let idx = (self.rr + k) % n;
                let Some(pos) = self.ready(idx, now) else {
                    continue;
                };
                let scopes = Self::scopes(&self.integrations[idx].target.name);
                if self.limiters.next_free(&scopes, now) > now {
                    continue;
                }
                picked = Some((idx, pos, scopes));
                break;
            }
            let Some((idx, pos, scopes)) = picked else {
                break;
            };
            self.rr = (idx + 1) % n;
            // Until answered, the server may count it up to the timeout.
            let until = now + ms(self.delivery.timeout);
            let slot = self.limiters.take(&scopes, now, until)?;
            let probe_org = self.org_pause.as_ref().is_some_and(|p| p.probe);
            if let Some(p) = &mut self.org_pause
                && p.probe
            {
                p.until = now + ms(self.delivery.probe_interval);
            }
            let probe_interval = ms(self.delivery.probe_interval);
            let i = &mut self.integrations[idx];
            let probe_int = i.pause.as_ref().is_some_and(|p| p.probe);
            if let Some(p) = &mut i.pause
                && p.probe
            {
                p.until = now + probe_interval;
            }
            let e = &mut i.window[pos];
            e.in_flight = true;
            i.in_flight += 1;
            self.in_flight += 1;
            out.push(Request {
                integration: i.target.name.clone(),
                seq: e.seq,
                slot,
                sent_at: now,
                probe_scopes: (probe_int, probe_org),
            });
        }
        if out.is_empty() {
            return Ok(());
        }
        // The slots must be on disk before the requests leave: a crash must not forget a send.
        self.store.flush()?;
        for req in out {
            let i = self
                .integrations
                .iter()
                .find(|i| i.target.name == req.integration)
                .expect("integration of a request just picked");
            let payload = i
                .window
                .iter()
                .find(|e| e.seq == req.seq)
                .map(|e| e.env.payload.clone())
                .expect("entry of a request just picked");
            let fut = self.transport.deliver(&i.target.url, payload);
            let tx = self.done_tx.clone();
            tokio::spawn(async move {
                let outcome = fut.await;
                let _ = tx.send(Done { req, outcome });
            });
        }
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let initial = self.delivery.retry_initial;
        let cap = initial
            .checked_mul(
                1u32.checked_shl(attempt.saturating_sub(1).min(31))
                    .unwrap_or(u32::MAX),
            )
            .unwrap_or(self.delivery.retry_max)
            .min(self.delivery.retry_max);
        match self.jitter {
            Jitter::None => cap,
            Jitter::Full => {
                let lo = ms(initial);
                let hi = ms(cap).max(lo);
                Duration::from_millis(rand::random_range(lo..=hi))
            }
        }
    }

    /// Applies one finished request's outcome.
    fn finish(&mut self, done: Done) -> Result<(), DispatchError> {
        let Done { req: d, outcome } = done;
        let now = self.clock.now();
        self.in_flight -= 1;
        let scopes = Self::scopes(&d.integration);
        let answered = !matches!(
            outcome,
            Outcome::Retry {
                answered: false,
                ..
            }
        );
        // A request that got no answer may still be counted until a timeout from now.
        let until = if answered {
            now
        } else {
            now + ms(self.delivery.timeout)
        };
        self.limiters.answered(&scopes, d.slot, until)?;
        let Some(idx) = self
            .integrations
            .iter()
            .position(|i| i.target.name == d.integration)
        else {
            return Ok(());
        };
        let retry_after_attempts = {
            let i = &mut self.integrations[idx];
            i.in_flight -= 1;
            let Some(pos) = i.window.iter().position(|e| e.seq == d.seq) else {
                return Ok(());
            };
            i.window[pos].in_flight = false;
            i.window[pos].env.attempts + 1
        };
        match outcome {
            Outcome::Delivered => {
                let i = &mut self.integrations[idx];
                let pos = i.window.iter().position(|e| e.seq == d.seq).expect("entry");
                let e = i.window.remove(pos).expect("entry");
                self.store.ack(&i.target.name, &[(e.seq, e.bytes)])?;
                i.status.delivered_total += 1;
                observe_latency(&mut i.status, now.saturating_sub(d.sent_at));
                if i.failures > 0 {
                    tracing::info!(integration = %i.target.name, "Deliveries succeed again after {} failed attempts.", i.failures);
                }
                i.failures = 0;
                i.backoff_until = 0;
                i.status.last_error = None;
                if let Some(p) = &i.pause
                    && d.sent_at >= p.since
                {
                    tracing::info!(integration = %i.target.name, "The rate-limit pause is over: OnCall accepts alerts again.");
                    i.pause = None;
                }
                if let Some(p) = &self.org_pause
                    && d.sent_at >= p.since
                {
                    tracing::info!("The organization-wide rate-limit pause is over.");
                    self.org_pause = None;
                }
            }
            Outcome::Retry { reason, after, .. } => {
                let step = self.integrations[idx].failures + 1;
                let int_delay = self.backoff(step).max(after.unwrap_or_default());
                let own_delay = self
                    .backoff(retry_after_attempts)
                    .max(after.unwrap_or_default());
                let i = &mut self.integrations[idx];
                if i.failures == 0 {
                    tracing::warn!(integration = %i.target.name, url = %i.target.redacted_url, "Delivery failed: {reason}. Retrying with backoff; the alert stays queued.");
                } else {
                    tracing::debug!(integration = %i.target.name, "Delivery failed again: {reason}.");
                }
                i.failures = step;
                i.backoff_until = now + ms(int_delay);
                i.status.retried_total += 1;
                i.status.last_error = Some(reason);
                let pos = i.window.iter().position(|e| e.seq == d.seq).expect("entry");
                let e = &mut i.window[pos];
                e.env.attempts = retry_after_attempts;
                e.env.next_attempt_at = now + ms(own_delay);
                self.store.update(&i.target.name, e.seq, &e.env)?;
            }
            Outcome::RateLimited { scope, retry_after } => {
                let probe_interval = ms(self.delivery.probe_interval);
                let (until, probe, reason) = match retry_after {
                    Some(ra) => (
                        now + ms(ra),
                        false,
                        format!("429 with Retry-After {}s", ra.as_secs()),
                    ),
                    // Probe a fixed interval after the request that was refused was sent.
                    None => (
                        (d.sent_at + probe_interval).max(now),
                        true,
                        "429 without Retry-After; probing".to_string(),
                    ),
                };
                let i = &mut self.integrations[idx];
                let pause = match scope {
                    LimitScope::Integration => {
                        i.status.budget.rate_limited_total += 1;
                        &mut i.pause
                    }
                    LimitScope::Org => {
                        self.org_429 += 1;
                        &mut self.org_pause
                    }
                };
                match pause {
                    Some(p) => {
                        // Already paused: only the probe's answer moves the next probe.
                        if d.probe_scopes.0 || d.probe_scopes.1 || !probe {
                            p.until = p.until.max(until);
                            p.probe = probe;
                        }
                    }
                    None => {
                        tracing::warn!(integration = %i.target.name, scope = scope.as_str(), "OnCall answered 429 (its {} rate limit). Pausing {}: {reason}. Alerts stay queued in order.", scope.as_str(), if scope == LimitScope::Org { "every integration" } else { "this integration" });
                        *pause = Some(Pause {
                            until,
                            probe,
                            reason,
                            since: now,
                        });
                    }
                }
            }
            Outcome::Rejected { status, body } => {
                let i = &mut self.integrations[idx];
                let pos = i.window.iter().position(|e| e.seq == d.seq).expect("entry");
                let e = i.window.remove(pos).expect("entry");
                let dl = DeadLetter {
                    id: e.seq,
                    integration: i.target.name.clone(),
                    received_at: e.env.received_at,
                    failed_at: now,
                    attempts: e.env.attempts + 1,
                    status,
                    reason: format!("OnCall refused the alert with {status}"),
                    response: body,
                    payload: String::from_utf8_lossy(&e.env.payload).into_owned(),
                };
                self.store
                    .move_to_dead(&i.target.name, e.seq, &dl, e.bytes)?;
                i.status.dead_lettered_total += 1;
                i.status.last_error = Some(format!(
                    "OnCall answered {status}; alert {} moved to the dead letters",
                    e.seq
                ));
                tracing::error!(integration = %i.target.name, url = %i.target.redacted_url, status, id = e.seq, "OnCall refused an alert; it is kept as a dead letter (see `oncall-agent dead list`).");
            }
        }
        Ok(())
    }

    /// The next moment something may become possible without an outside event.
    fn next_wake(&self, now: Millis) -> Option<Millis> {
        let mut wake: Option<Millis> = None;
        let mut consider = |t: Millis| wake = Some(wake.map_or(t, |w: Millis| w.min(t)));
        let org_gate = match &self.org_pause {
            // The probe's answer is the next event.
            Some(p) if p.probe && self.in_flight > 0 => return None,
            Some(p) => p.until,
            None => 0,
        };
        for i in &self.integrations {
            if !i.configured || i.in_flight >= self.delivery.concurrency {
                continue;
            }
            if matches!(&i.pause, Some(p) if p.probe && i.in_flight > 0) {
                continue;
            }
            let Some(head) = self.earliest_head(i) else {
                continue;
            };
            let scopes = Self::scopes(&i.target.name);
            let t = head
                .max(i.backoff_until)
                .max(i.pause.as_ref().map_or(0, |p| p.until))
                .max(org_gate)
                .max(self.limiters.next_free(&scopes, now));
            consider(t);
        }
        wake
    }

    /// The earliest due time among the heads of keys with nothing in flight.
    fn earliest_head(&self, i: &Integration) -> Option<Millis> {
        let mut seen: HashSet<u64> = HashSet::new();
        let mut best: Option<Millis> = None;
        for e in &i.window {
            if !seen.insert(e.env.key_hash) || e.in_flight {
                continue;
            }
            best = Some(best.map_or(e.env.next_attempt_at, |b| b.min(e.env.next_attempt_at)));
        }
        best
    }

    /// Publishes the sender's state for status and metrics.
    fn publish(&mut self, now: Millis) {
        let mut board = SenderBoard {
            at: now,
            ..Default::default()
        };
        let secs = |t: Millis| t.saturating_sub(now) as f64 / 1000.0;
        let org = self.limiters.get(&Scope::Org);
        board.org = ScopeStatus {
            limit: self.org_rate.to_string(),
            used: org.map_or(0, |l| l.used(now) as u64),
            next_free_in_s: org.map_or(0.0, |l| secs(l.next_free(now))),
            paused_for_s: self.org_pause.as_ref().map(|p| secs(p.until)),
            paused_reason: self.org_pause.as_ref().map(|p| p.reason.clone()),
            rate_limited_total: self.org_429,
        };
        for idx in 0..self.integrations.len() {
            let next = {
                let i = &self.integrations[idx];
                self.earliest_head(i).map(|h| {
                    h.max(i.backoff_until)
                        .max(i.pause.as_ref().map_or(0, |p| p.until))
                        .max(self.limiters.next_free(&Self::scopes(&i.target.name), now))
                })
            };
            let i = &mut self.integrations[idx];
            let l = self
                .limiters
                .get(&Scope::Integration(i.target.name.clone()));
            i.status.in_flight = i.in_flight as u64;
            i.status.next_attempt_in_s = next.map(secs);
            i.status.budget.limit = i.target.rate.to_string();
            i.status.budget.used = l.map_or(0, |l| l.used(now) as u64);
            i.status.budget.next_free_in_s = l.map_or(0.0, |l| secs(l.next_free(now)));
            i.status.budget.paused_for_s = i.pause.as_ref().map(|p| secs(p.until));
            i.status.budget.paused_reason = i.pause.as_ref().map(|p| p.reason.clone());
            board
                .integrations
                .insert(i.target.name.clone(), i.status.clone());
        }
        *self.board.lock().expect("board lock") = board;
    }
}

impl Integration {
    fn new(target: Target) -> Integration {
        let status = SenderStatus {
            url: target.redacted_url.clone(),
            configured: true,
            latency_buckets: vec![0; LATENCY_BUCKETS.len()],
            ..Default::default()
        };
        Integration {
            target,
            configured: true,
            window: VecDeque::new(),
            loaded_upto: 0,
            in_flight: 0,
            failures: 0,
            backoff_until: 0,
            pause: None,
            status,
        }
    }

    /// A queue left behind by an integration that is no longer configured.
    fn removed(name: &str) -> Integration {
        let mut i = Integration::new(Target {
            name: name.to_string(),
            url: Secret::new(reqwest::Url::parse("http://removed.invalid/").expect("static URL")),
            redacted_url: String::new(),
            rate: Rate {
                count: 1,
                per: Duration::from_secs(1),
            },
        });
        i.configured = false;
        i.status.configured = false;
        i
    }
}

fn observe_latency(s: &mut SenderStatus, ms: Millis) {
    let secs = ms as f64 / 1000.0;
    s.latency_sum_s += secs;
    if s.latency_buckets.len() != LATENCY_BUCKETS.len() {
        s.latency_buckets = vec![0; LATENCY_BUCKETS.len()];
    }
    for (b, le) in s.latency_buckets.iter_mut().zip(LATENCY_BUCKETS) {
        if secs <= le {
            *b += 1;
        }
    }
}

fn scopes_of(cfg: &SenderConfig) -> Vec<(Scope, Rate)> {
    cfg.targets
        .iter()
        .map(|t| (Scope::Integration(t.name.clone()), t.rate))
        .chain(std::iter::once((Scope::Org, cfg.org)))
        .collect()
}
