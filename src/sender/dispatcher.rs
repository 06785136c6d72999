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
//!
//! With `[fleet]`, each request also needs a slot of the fleet's shared budgets ([`Fleet`]): the
//! gate asks it beside the local limiter (which stays in force), each turn tells it this host's
//! backlog, and answers settle the shared slot. Its calls never wait on the network.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::client::Transport;
use super::outcome::{LimitScope, Outcome};
use super::report::{BoardTx, LATENCY_BUCKETS, ScopeStatus, SenderBoard, SenderStatus};
use crate::clock::{Clock, Millis, ms};
use crate::config::{Config, Delivery, Rate};
use crate::fleet::{Budgets, Fleet, FleetSlot, ScopeKey};
use crate::queue::store::DeadLetter;
use crate::queue::{Envelope, Store, StoreError};
use crate::ratelimit::learn::{Learner, Seen};
use crate::ratelimit::{LimiterSet, Scope};
use crate::redact::Secret;

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
    /// Heartbeat interval and URL, if the integration has one.
    pub heartbeat: Option<(Duration, Secret<reqwest::Url>)>,
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
                    heartbeat: i
                        .heartbeat
                        .map(|h| (h, Secret::new(crate::config::heartbeat_url(i.url.expose())))),
                })
                .collect(),
        }
    }
}

/// Messages to a running dispatcher.
#[derive(Debug)]
pub enum Control {
    Reload(SenderConfig),
    /// Answered from the loop itself: the watchdog's proof that the dispatcher still turns.
    Ping(tokio::sync::oneshot::Sender<()>),
    /// `oncall-agent retry-now`: end every wait (backoff, Retry-After, 429 pause) of one
    /// integration, or of all and the organization's pause with `None`. Budgets still hold.
    RetryNow {
        integration: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<RetryNowReport, String>>,
    },
}

/// What `retry-now` freed, per integration.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryNowReport {
    pub integrations: Vec<RetryNowEntry>,
    /// Whether the organization-wide 429 pause was lifted.
    pub org_pause_lifted: bool,
}

/// One integration in a [`RetryNowReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryNowEntry {
    pub integration: String,
    /// Queued alerts that were waiting for a retry time and are due now.
    pub alerts_due_now: u64,
    /// Whether its backoff (after failures) was reset.
    pub backoff_reset: bool,
    /// Whether its 429 pause was lifted.
    pub pause_lifted: bool,
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
    /// When the next heartbeat is due (0: at once).
    next_heartbeat: Millis,
    heartbeat_in_flight: bool,
    status: SenderStatus,
}

/// What a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    /// The queued alert with this sequence number.
    Alert(u64),
    Heartbeat,
}

/// A request on its way.
struct Request {
    integration: String,
    carries: Carries,
    /// Its limiter slot id.
    slot: u64,
    sent_at: Millis,
    /// Whether it is the probe of a paused (integration, org) scope.
    probe_scopes: (bool, bool),
    /// Its slot in the fleet's shared budgets, with `[fleet]`.
    fleet: Option<FleetSlot>,
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
    /// What was learned of OnCall's real windows (see [`super::learn`]).
    learner: Learner,
    org_pause: Option<Pause>,
    org_429: u64,
    integrations: Vec<Integration>,
    /// Round-robin position: the integration after the last one served.
    rr: usize,
    in_flight: usize,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    board: BoardTx,
    /// Delivered alerts not yet removed from sled: (integration, seq, bytes). Removed in one
    /// batch per round of answers.
    acks: Vec<(String, u64, u64)>,
    /// The fleet's shared budgets (`[fleet]`), beside the local ones.
    fleet: Option<Fleet>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<Store>,
        transport: Arc<dyn Transport>,
        cfg: SenderConfig,
        clock: Clock,
        jitter: Jitter,
        board: BoardTx,
    ) -> Result<Dispatcher, DispatchError> {
        let now = clock.now();
        let limiters = LimiterSet::load(store.limiter_tree().clone(), scopes_of(&cfg), now)?;
        let mut learner = Learner::new(now);
        for (scope, learned) in limiters.load_learned::<crate::ratelimit::learn::Learned>() {
            if let Some(l) = limiters.get(&scope) {
                learner.seed(&scope, l.slots().iter().map(|s| (s.id, s.sent, s.until)));
            }
            learner.restore(scope, learned);
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut d = Dispatcher {
            store,
            transport,
            clock,
            jitter,
            delivery: cfg.delivery.clone(),
            org_rate: cfg.org,
            limiters,
            learner,
            org_pause: None,
            org_429: 0,
            integrations: Vec::new(),
            rr: 0,
            in_flight: 0,
            done_tx,
            done_rx,
            board,
            acks: Vec::new(),
            fleet: None,
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

    /// Shares the budgets with a fleet (`[fleet]`, started with [`fleet_budgets`] of the same
    /// config): every request also needs a slot of the shared log. Reloads reconfigure it.
    pub fn with_fleet(mut self, fleet: Fleet) -> Dispatcher {
        self.fleet = Some(fleet);
        self
    }

    /// Applies a (re)loaded config: integrations added, removed or changed, limits, delivery.
    fn apply(&mut self, cfg: SenderConfig) -> Result<(), DispatchError> {
        // A budget changed by the operator: what was learned under the old one is forgotten.
        for (scope, rate) in scopes_of(&cfg) {
            let now = (rate.count as usize, ms(rate.per));
            if self.limiters.get(&scope).is_some_and(|l| l.rate() != now) {
                self.learner.forget(&scope);
            }
        }
        self.limiters.configure(scopes_of(&cfg))?;
        if let Some(f) = &self.fleet {
            f.configure(fleet_budgets(&cfg, f.org()));
        }
        self.transport.set_timeout(cfg.delivery.timeout);
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
                    // A new URL (the fix for a redirect, a 403, a dead host) deserves a try
                    // now, not after the old URL's backoff.
                    if i.target.url != t.url {
                        i.failures = 0;
                        i.backoff_until = 0;
                    }
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
        let fleet = self.fleet.clone();
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
                Some(t) => self.clock.instant_at(t.max(now.saturating_add(1))),
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
                    self.flush_acks()?;
                }
                Some(c) = control.recv() => match c {
                    Control::Reload(cfg) => self.apply(cfg)?,
                    Control::Ping(reply) => { let _ = reply.send(()); }
                    Control::RetryNow { integration, reply } => {
                        let r = self.retry_now(integration.as_deref(), self.clock.now())?;
                        let _ = reply.send(r);
                    }
                },
                _ = self.store.committed.notified() => {}
                // Fleet grants arrived, or Redis went away or came back.
                _ = fleet_changed(&fleet) => {}
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
        self.flush_acks()?;
        self.publish(self.clock.now());
        self.store.flush()?;
        Ok(())
    }

    /// Removes delivered alerts from sled in one batch per integration and flushes once: after
    /// a crash, only alerts whose answer came in since the last flush are delivered twice.
    fn flush_acks(&mut self) -> Result<(), DispatchError> {
        if self.acks.is_empty() {
            // What an answer taught is written with the next flush (of slots or acks).
            return Ok(());
        }
        self.save_learned()?;
        self.acks.sort();
        for group in self.acks.chunk_by(|a, b| a.0 == b.0) {
            let seqs: Vec<(u64, u64)> =
                group.iter().map(|(_, seq, bytes)| (*seq, *bytes)).collect();
            self.store.ack(&group[0].0, &seqs)?;
        }
        self.acks.clear();
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
            // A retry time persisted by an older version, or before the clock went back, must
            // not park a key for longer than any wait this version would set.
            let latest = self.clock.now().saturating_add(ms(self
                .delivery
                .retry_max
                .max(self.delivery.max_retry_after)));
            for (seq, mut env) in more {
                env.next_attempt_at = env.next_attempt_at.min(latest);
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

    /// Whether integration `idx` may send now (ignoring budgets).
    fn open(&self, idx: usize, now: Millis) -> bool {
        let i = &self.integrations[idx];
        if !i.configured {
            return false;
        }
        match &i.pause {
            Some(p) if p.until > now => false,
            Some(p) if p.probe => i.in_flight == 0 && !i.heartbeat_in_flight,
            _ => true,
        }
    }

    /// What integration `idx` would send now, if anything: a due heartbeat first (a backlog
    /// must not make OnCall think the host died), else the oldest due alert whose grouping
    /// key has nothing in flight.
    fn ready(&self, idx: usize, now: Millis) -> Option<(Carries, Option<usize>)> {
        if !self.open(idx, now) {
            return None;
        }
        let i = &self.integrations[idx];
        if i.target.heartbeat.is_some() && !i.heartbeat_in_flight && i.next_heartbeat <= now {
            return Some((Carries::Heartbeat, None));
        }
        if i.in_flight >= self.delivery.concurrency || i.backoff_until > now {
            return None;
        }
        let mut blocked: HashSet<u64> = HashSet::new();
        for (n, e) in i.window.iter().enumerate() {
            // Only the first alert of each key may go; and only if it is not already out.
            if !blocked.insert(e.env.key_hash) {
                continue;
            }
            if !e.in_flight && e.env.next_attempt_at <= now {
                return Some((Carries::Alert(e.seq), Some(n)));
            }
        }
        None
    }

    /// Heartbeats fall due while OnCall has the integration paused: skipped, with a log line,
    /// since a heartbeat would only spend a probe's place.
    fn skip_paused_heartbeats(&mut self, now: Millis) {
        let org_paused = self.org_pause.is_some();
        for i in &mut self.integrations {
            let Some((every, _)) = &i.target.heartbeat else {
                continue;
            };
            if i.configured
                && !i.heartbeat_in_flight
                && i.next_heartbeat <= now
                && (i.pause.is_some() || org_paused)
            {
                tracing::info!(integration = %i.target.name, "Heartbeat skipped: OnCall has this integration paused on a 429.");
                i.next_heartbeat = now.saturating_add(ms(*every));
            }
        }
    }

    /// Starts every request that may start now.
    fn launch(&mut self, now: Millis) -> Result<(), DispatchError> {
        self.limiters.prune(now)?;
        self.skip_paused_heartbeats(now);
        let mut out = Vec::new();
        while self.org_open(now) {
            let Some((idx, carries, pos, scopes)) = self.pick(now) else {
                break;
            };
            // Until answered, the server may count it up to the timeout.
            let until = now.saturating_add(ms(self.delivery.timeout));
            // The fleet's grant first: a held one may have just expired (its task runs on
            // another thread); then this turn ends and the next grant's arrival starts another.
            let fleet = match &self.fleet {
                Some(f) => match f.take(&self.integrations[idx].target.name, now, until) {
                    Some(s) => Some(s),
                    None => break,
                },
                None => None,
            };
            self.rr = (idx + 1) % self.integrations.len();
            let slot = self.limiters.take(&scopes, now, until)?;
            self.learner.sent(&scopes, slot, now, until);
            let probe_scopes = self.probes_sent(idx, now);
            let i = &mut self.integrations[idx];
            match pos {
                Some(pos) => {
                    i.window[pos].in_flight = true;
                    i.in_flight += 1;
                }
                None => i.heartbeat_in_flight = true,
            }
            self.in_flight += 1;
            out.push(Request {
                integration: i.target.name.clone(),
                carries,
                slot,
                sent_at: now,
                probe_scopes,
                fleet,
            });
        }
        self.report_demand(now);
        if out.is_empty() {
            return Ok(());
        }
        self.save_learned()?;
        // The slots must be on disk before the requests leave: a crash must not forget a send.
        self.store.flush()?;
        for req in out {
            self.send(req);
        }
        Ok(())
    }

    /// The next integration, round robin, with something ready that its budgets let go now.
    fn pick(&mut self, now: Millis) -> Option<(usize, Carries, Option<usize>, [Scope; 2])> {
        let (n, rr) = (self.integrations.len(), self.rr);
        for idx in (0..n).map(|k| (rr + k) % n) {
            let Some((carries, pos)) = self.ready(idx, now) else {
                continue;
            };
            let scopes = Self::scopes(&self.integrations[idx].target.name);
            if self.gate(&scopes, now) <= now {
                return Some((idx, carries, pos, scopes));
            }
        }
        None
    }

    /// A request leaving while a scope is paused is its probe: the next probe is one
    /// `probe_interval` later. Says which scopes it probes (integration, org).
    fn probes_sent(&mut self, idx: usize, now: Millis) -> (bool, bool) {
        let next = now.saturating_add(ms(self.delivery.probe_interval));
        let probe = |p: &mut Option<Pause>| match p {
            Some(p) if p.probe => {
                p.until = next;
                true
            }
            _ => false,
        };
        let org = probe(&mut self.org_pause);
        (probe(&mut self.integrations[idx].pause), org)
    }

    /// Hands a request to the transport; its answer comes back on `done_tx`.
    fn send(&self, req: Request) {
        // Each request was picked from these structures just before, with no await between.
        let i = self
            .integrations
            .iter()
            .find(|i| i.target.name == req.integration)
            .expect("integration of a request just picked");
        let fut = match req.carries {
            Carries::Alert(seq) => {
                let payload = i
                    .window
                    .iter()
                    .find(|e| e.seq == seq)
                    .map(|e| e.env.payload.clone())
                    .expect("entry of a request just picked");
                self.transport.deliver(&i.target.url, payload)
            }
            Carries::Heartbeat => {
                let (_, url) = i.target.heartbeat.as_ref().expect("heartbeat just picked");
                self.transport.heartbeat(url)
            }
        };
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let outcome = fut.await;
            let _ = tx.send(Done { req, outcome });
        });
    }

    /// The earliest time a request spending `scopes` may leave: the configured budgets, what
    /// was learned of OnCall's windows, and the fleet's shared budgets (each can only say
    /// later).
    fn gate(&mut self, scopes: &[Scope], now: Millis) -> Millis {
        self.local_gate(scopes, now)
            .max(self.fleet_gate(scopes, now))
    }

    /// [`Dispatcher::gate`] without the fleet.
    fn local_gate(&mut self, scopes: &[Scope], now: Millis) -> Millis {
        let budget = self.limiters.next_free(scopes, now);
        if !self.delivery.learn {
            return budget;
        }
        budget.max(self.learner.next_free(scopes, now))
    }

    /// When the fleet lets a request spending `scopes` (an integration's and the org's) leave.
    fn fleet_gate(&self, scopes: &[Scope], now: Millis) -> Millis {
        match (&self.fleet, scopes.first()) {
            (Some(f), Some(Scope::Integration(name))) => f.next_free(name, now),
            _ => now,
        }
    }

    /// Tells the fleet how many requests of each integration wait for it alone: ready, and let
    /// out by every local gate. It is this host's backlog as the other hosts see it.
    fn report_demand(&mut self, now: Millis) {
        if self.fleet.is_none() {
            return;
        }
        for idx in 0..self.integrations.len() {
            let ready = self.ready_count(idx, now);
            let name = self.integrations[idx].target.name.clone();
            let ready = if ready > 0 && self.local_gate(&Self::scopes(&name), now) <= now {
                ready
            } else {
                0
            };
            if let Some(f) = &self.fleet
                && self.integrations[idx].configured
            {
                f.demand(&name, ready);
            }
        }
    }

    /// How many requests integration `idx` could start now (budgets aside): due heads of keys
    /// with nothing in flight, up to its free concurrency, and a due heartbeat.
    fn ready_count(&self, idx: usize, now: Millis) -> u32 {
        if !self.open(idx, now) {
            return 0;
        }
        let i = &self.integrations[idx];
        let heartbeat = u32::from(
            i.target.heartbeat.is_some() && !i.heartbeat_in_flight && i.next_heartbeat <= now,
        );
        if i.backoff_until > now {
            return heartbeat;
        }
        let room = self.delivery.concurrency.saturating_sub(i.in_flight);
        let mut seen: HashSet<u64> = HashSet::new();
        let mut ready = 0usize;
        for e in &i.window {
            if ready >= room {
                break;
            }
            if seen.insert(e.env.key_hash) && !e.in_flight && e.env.next_attempt_at <= now {
                ready += 1;
            }
        }
        heartbeat + ready as u32
    }

    /// Where a pause after a 429 of `scope` should end, if OnCall's resets are learned.
    fn learned_resume(&self, scope: LimitScope, integration: &str, now: Millis) -> Option<Millis> {
        if !self.delivery.learn {
            return None;
        }
        let s = match scope {
            LimitScope::Integration => Scope::Integration(integration.to_string()),
            LimitScope::Org => Scope::Org,
        };
        self.learner.resume_at(&s, now)
    }

    /// Writes what was learned since the last write, beside the limiter slots.
    fn save_learned(&mut self) -> Result<(), DispatchError> {
        let (dirty, forgotten) = self.learner.take_changes();
        if dirty || !forgotten.is_empty() {
            self.limiters.save_learned(self.learner.all(), &forgotten)?;
        }
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let initial = self.delivery.retry_initial;
        let cap = crate::oncall::Backoff {
            initial,
            max: self.delivery.retry_max,
        }
        .delay(attempt);
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
        // A request that got no answer may still be counted until a timeout from now; one that
        // never reached OnCall gives its slot back.
        let until = if answered {
            now
        } else {
            now.saturating_add(ms(self.delivery.timeout))
        };
        if let Outcome::Retry { reached: false, .. } = outcome {
            self.limiters.release(&scopes, d.slot)?;
        } else {
            self.limiters.answered(&scopes, d.slot, until)?;
        }
        if let (Some(f), Some(slot)) = (&self.fleet, &d.fleet) {
            match outcome {
                Outcome::Retry { reached: false, .. } => f.release(slot),
                _ => f.answered(slot, now, until),
            }
        }
        if self.delivery.learn {
            for scope in &scopes {
                let seen = seen_by(scope, &outcome);
                self.learner.answered(scope, d.slot, until, seen);
            }
        }
        let Some(idx) = self
            .integrations
            .iter()
            .position(|i| i.target.name == d.integration)
        else {
            return Ok(());
        };
        if let Outcome::Delivered = outcome {
            self.pause_lifted(idx, &d);
        }
        if let Outcome::RateLimited { scope, retry_after } = outcome {
            self.rate_limited(idx, &d, scope, retry_after, now);
        }
        match d.carries {
            Carries::Heartbeat => self.heartbeat_done(idx, &d, &outcome),
            Carries::Alert(seq) => self.alert_done(idx, seq, &d, outcome, now)?,
        }
        Ok(())
    }

    /// A success ends a pause, if its request left after the pause began.
    fn pause_lifted(&mut self, idx: usize, d: &Request) {
        let i = &mut self.integrations[idx];
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

    /// A 429: pause the scope it names. Logged once per pause, not per request.
    fn rate_limited(
        &mut self,
        idx: usize,
        d: &Request,
        scope: LimitScope,
        retry_after: Option<Duration>,
        now: Millis,
    ) {
        let probe_interval = ms(self.delivery.probe_interval);
        // A 429 is about one window of the budget it names: a longer wait is never needed.
        let window = match scope {
            LimitScope::Integration => self.integrations[idx].target.rate.per,
            LimitScope::Org => self.org_rate.per,
        };
        let retry_after = retry_after.map(|ra| self.bounded_wait(idx, ra, window, "429"));
        let (until, probe, reason) = match retry_after {
            Some(ra) => (
                now.saturating_add(ms(ra)),
                false,
                format!("429 with Retry-After {}s", ra.as_secs()),
            ),
            None => match self.learned_resume(scope, &d.integration, now) {
                // The resets are learned: no probe before the next one.
                Some(t) => (
                    t,
                    true,
                    "429 without Retry-After; waiting for OnCall's next window".to_string(),
                ),
                // Probe a fixed interval after the request that was refused was sent.
                None => (
                    d.sent_at.saturating_add(probe_interval).max(now),
                    true,
                    "429 without Retry-After; probing".to_string(),
                ),
            },
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
                // Already paused: only the probe's answer (or a Retry-After) moves it.
                if d.probe_scopes.0 || d.probe_scopes.1 || !probe {
                    p.until = p.until.max(until);
                    p.probe = probe;
                }
            }
            None => {
                let on = if d.carries == Carries::Heartbeat {
                    " to a heartbeat"
                } else {
                    ""
                };
                tracing::warn!(integration = %i.target.name, scope = scope.as_str(), "OnCall answered 429{on} (its {} rate limit). Pausing {}: {reason}. Alerts stay queued in order.", scope.as_str(), if scope == LimitScope::Org { "every integration" } else { "this integration" });
                *pause = Some(Pause {
                    until,
                    probe,
                    reason,
                    since: now,
                });
            }
        }
    }

    fn heartbeat_done(&mut self, idx: usize, d: &Request, outcome: &Outcome) {
        let i = &mut self.integrations[idx];
        i.heartbeat_in_flight = false;
        let Some((every, _)) = &i.target.heartbeat else {
            return;
        };
        i.next_heartbeat = d.sent_at.saturating_add(ms(*every));
        match outcome {
            Outcome::Delivered => i.status.heartbeats_total += 1,
            Outcome::Retry { reason, .. } => {
                tracing::warn!(integration = %i.target.name, "A heartbeat failed ({reason}); the next one is due as usual.");
            }
            Outcome::Rejected { status, .. } => {
                tracing::error!(integration = %i.target.name, url = %i.target.redacted_url, status, "OnCall refused a heartbeat: is the heartbeat set up for this integration, and its token valid?");
            }
            // Counted and logged (once per pause) by `rate_limited`, as the integration's.
            Outcome::RateLimited { .. } => {}
            Outcome::Redirected { status, to } => {
                tracing::error!(integration = %i.target.name, status, redirect = %to, "OnCall's heartbeat URL for this integration redirects elsewhere; redirects are not followed. Fix the integration's URL in the config.");
            }
        }
    }

    /// A 3xx: the integration's URL points somewhere else. Nothing is sent through a redirect
    /// (see [`crate::oncall`]), so this is a configuration problem, not a passing fault: the
    /// alert stays queued, the integration waits `retry_max` between tries, and one ERROR says
    /// where the URL points. A reload with the fixed URL, or `retry-now`, sends at once.
    fn misdirected(&mut self, idx: usize, status: u16, to: &str, now: Millis) {
        let retry_max = ms(self.delivery.retry_max);
        let i = &mut self.integrations[idx];
        let reason = format!(
            "OnCall answered {status}, a redirect to {to}: fix the integration's URL in the config"
        );
        if i.status.last_error.as_deref() != Some(reason.as_str()) {
            tracing::error!(integration = %i.target.name, url = %i.target.redacted_url, status, redirect = %to, "The integration's URL redirects elsewhere; redirects are not followed (a POST would become a GET, or go with its token to another host). Alerts stay queued until the URL in the config is fixed.");
        }
        i.failures = i.failures.saturating_add(1);
        i.backoff_until = now.saturating_add(retry_max);
        i.status.retried_total += 1;
        i.status.last_error = Some(reason);
    }

    /// A server-given wait, bounded by `ceiling` (and always by `delivery.max_retry_after`),
    /// with a WARN when it had to be cut: a `Retry-After` of years would park a key for good.
    fn bounded_wait(&self, idx: usize, wait: Duration, ceiling: Duration, on: &str) -> Duration {
        let ceiling = ceiling.min(self.delivery.max_retry_after);
        if wait > ceiling {
            tracing::warn!(integration = %self.integrations[idx].target.name, "OnCall asked for a wait of {}s (Retry-After on a {on}); waiting {}s instead (delivery.max_retry_after, or the budget's window).", wait.as_secs(), ceiling.as_secs());
        }
        wait.min(ceiling)
    }

    /// `retry-now`: ends the waits of one integration (or all, and the org pause). What is
    /// sent then still spends budget and keeps per-key order.
    fn retry_now(
        &mut self,
        only: Option<&str>,
        now: Millis,
    ) -> Result<Result<RetryNowReport, String>, DispatchError> {
        if let Some(name) = only
            && !self
                .integrations
                .iter()
                .any(|i| i.configured && i.target.name == name)
        {
            return Ok(Err(format!("no configured integration is named {name:?}")));
        }
        let mut report = RetryNowReport::default();
        if only.is_none() && self.org_pause.take().is_some() {
            report.org_pause_lifted = true;
        }
        for i in &mut self.integrations {
            if !i.configured || only.is_some_and(|n| n != i.target.name) {
                continue;
            }
            let mut entry = RetryNowEntry {
                integration: i.target.name.clone(),
                backoff_reset: i.backoff_until > now,
                pause_lifted: i.pause.take().is_some(),
                alerts_due_now: 0,
            };
            i.failures = 0;
            i.backoff_until = 0;
            for e in i.window.iter_mut().filter(|e| e.env.next_attempt_at > now) {
                e.env.next_attempt_at = now;
                self.store.update(&i.target.name, e.seq, &e.env)?;
                entry.alerts_due_now += 1;
            }
            tracing::info!(integration = %i.target.name, alerts = entry.alerts_due_now, "retry-now: every wait of this integration ended; budgets still apply.");
            report.integrations.push(entry);
        }
        Ok(Ok(report))
    }

    fn alert_done(
        &mut self,
        idx: usize,
        seq: u64,
        d: &Request,
        outcome: Outcome,
        now: Millis,
    ) -> Result<(), DispatchError> {
        // The entry is found here or we return: nothing else removes it before the match below,
        // so the `expect("entry")`s there cannot fire.
        let attempts = {
            let i = &mut self.integrations[idx];
            i.in_flight -= 1;
            let Some(pos) = i.window.iter().position(|e| e.seq == seq) else {
                return Ok(());
            };
            i.window[pos].in_flight = false;
            i.window[pos].env.attempts + 1
        };
        match outcome {
            Outcome::Delivered => self.delivered(idx, seq, now.saturating_sub(d.sent_at)),
            Outcome::Retry { reason, after, .. } => {
                self.retry_later(idx, seq, attempts, reason, after, now)?
            }
            // The alert stays at the head of its key; the pause was set above.
            Outcome::RateLimited { .. } => {}
            Outcome::Redirected { status, to } => self.misdirected(idx, status, &to, now),
            Outcome::Rejected { status, body } => {
                self.rejected(idx, seq, attempts, status, body, now)?
            }
        }
        Ok(())
    }

    fn delivered(&mut self, idx: usize, seq: u64, latency: Millis) {
        let i = &mut self.integrations[idx];
        let pos = i.window.iter().position(|e| e.seq == seq).expect("entry");
        let e = i.window.remove(pos).expect("entry");
        self.acks.push((i.target.name.clone(), e.seq, e.bytes));
        i.status.delivered_total += 1;
        observe_latency(&mut i.status, latency);
        if i.failures > 0 {
            tracing::info!(integration = %i.target.name, "Deliveries succeed again after {} failed attempts.", i.failures);
        }
        i.failures = 0;
        i.backoff_until = 0;
        i.status.last_error = None;
    }

    /// A 5xx, 408 or network error: the alert waits its own backoff, the integration its own.
    fn retry_later(
        &mut self,
        idx: usize,
        seq: u64,
        attempts: u32,
        reason: String,
        after: Option<Duration>,
        now: Millis,
    ) -> Result<(), DispatchError> {
        let after = after
            .map(|a| self.bounded_wait(idx, a, self.delivery.max_retry_after, "retry"))
            .unwrap_or_default();
        let step = self.integrations[idx].failures.saturating_add(1);
        let int_delay = self.backoff(step).max(after);
        let own_delay = self.backoff(attempts).max(after);
        let i = &mut self.integrations[idx];
        if i.failures == 0 {
            tracing::warn!(integration = %i.target.name, url = %i.target.redacted_url, "Delivery failed: {reason}. Retrying with backoff; the alert stays queued.");
        } else {
            tracing::debug!(integration = %i.target.name, "Delivery failed again: {reason}.");
        }
        i.failures = step;
        i.backoff_until = now.saturating_add(ms(int_delay));
        i.status.retried_total += 1;
        i.status.last_error = Some(reason);
        let pos = i.window.iter().position(|e| e.seq == seq).expect("entry");
        let e = &mut i.window[pos];
        e.env.attempts = attempts;
        e.env.next_attempt_at = now.saturating_add(ms(own_delay));
        self.store.update(&i.target.name, e.seq, &e.env)?;
        Ok(())
    }

    /// A 4xx other than 408/429: the alert becomes a dead letter.
    fn rejected(
        &mut self,
        idx: usize,
        seq: u64,
        attempts: u32,
        status: u16,
        body: String,
        now: Millis,
    ) -> Result<(), DispatchError> {
        let i = &mut self.integrations[idx];
        let pos = i.window.iter().position(|e| e.seq == seq).expect("entry");
        let e = i.window.remove(pos).expect("entry");
        let dl = DeadLetter {
            id: e.seq,
            integration: i.target.name.clone(),
            received_at: e.env.received_at,
            failed_at: now,
            attempts,
            status,
            reason: super::outcome::rejection_reason(status, &body),
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
            if !i.configured {
                continue;
            }
            if matches!(&i.pause, Some(p) if p.probe && (i.in_flight > 0 || i.heartbeat_in_flight))
            {
                continue;
            }
            let scopes = Self::scopes(&i.target.name);
            let gate = i
                .pause
                .as_ref()
                .map_or(0, |p| p.until)
                .max(org_gate)
                .max(self.limiters.next_free(&scopes, now))
                .max(self.fleet_gate(&scopes, now))
                .max(if self.delivery.learn {
                    self.learner.peek_next_free(&scopes, now)
                } else {
                    0
                });
            if i.target.heartbeat.is_some() && !i.heartbeat_in_flight {
                consider(i.next_heartbeat.max(gate));
            }
            if i.in_flight >= self.delivery.concurrency {
                continue;
            }
            if let Some(head) = self.earliest_head(i) {
                consider(head.max(i.backoff_until).max(gate));
            }
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
            limit: Some(self.org_rate),
            used: org.map_or(0, |l| l.used(now) as u64),
            next_free_in_s: org.map_or(0.0, |l| secs(l.next_free(now))),
            paused_for_s: self.org_pause.as_ref().map(|p| secs(p.until)),
            paused_reason: self.org_pause.as_ref().map(|p| p.reason.clone()),
            rate_limited_total: self.org_429,
            learned_limit: self.learner.learned(&Scope::Org).and_then(|l| l.limit),
            learned_reset_in_s: self.learner.next_reset(&Scope::Org, now).map(secs),
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
            i.status.budget.limit = Some(i.target.rate);
            i.status.budget.used = l.map_or(0, |l| l.used(now) as u64);
            i.status.budget.next_free_in_s = l.map_or(0.0, |l| secs(l.next_free(now)));
            i.status.budget.paused_for_s = i.pause.as_ref().map(|p| secs(p.until));
            i.status.budget.paused_reason = i.pause.as_ref().map(|p| p.reason.clone());
            let scope = Scope::Integration(i.target.name.clone());
            i.status.budget.learned_limit = self.learner.learned(&scope).and_then(|l| l.limit);
            i.status.budget.learned_reset_in_s = self.learner.next_reset(&scope, now).map(secs);
            board
                .integrations
                .insert(i.target.name.clone(), i.status.clone());
        }
        board.fleet = self.fleet.as_ref().map(|f| f.status(now));
        self.board.send_replace(board);
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
            next_heartbeat: 0,
            heartbeat_in_flight: false,
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
            heartbeat: None,
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

/// Completes when the fleet has news for the dispatcher; never without a fleet.
async fn fleet_changed(fleet: &Option<Fleet>) {
    match fleet {
        Some(f) => f.changed().await,
        None => std::future::pending().await,
    }
}

/// The budgets as the fleet knows them: integrations by a keyed hash of their URL (the same on
/// every host of organization `org`), never by their token.
pub fn fleet_budgets(cfg: &SenderConfig, org: &str) -> Budgets {
    Budgets {
        integrations: cfg
            .targets
            .iter()
            .map(|t| {
                let key = ScopeKey::integration(org, t.url.expose().as_str());
                (t.name.clone(), key, t.rate)
            })
            .collect(),
        org: cfg.org,
        request_timeout: cfg.delivery.timeout,
    }
}

fn scopes_of(cfg: &SenderConfig) -> Vec<(Scope, Rate)> {
    cfg.targets
        .iter()
        .map(|t| (Scope::Integration(t.name.clone()), t.rate))
        .chain(std::iter::once((Scope::Org, cfg.org)))
        .collect()
}

/// What an outcome tells the learner about `scope`.
fn seen_by(scope: &Scope, outcome: &Outcome) -> Seen {
    match outcome {
        Outcome::Delivered | Outcome::Rejected { .. } => Seen::Accepted,
        Outcome::RateLimited { scope: s, .. } => match (s, scope) {
            (LimitScope::Org, Scope::Org) | (LimitScope::Integration, Scope::Integration(_)) => {
                Seen::Refused
            }
            // OnCall checks the integration first: the org never counted this request...
            (LimitScope::Integration, _) => Seen::NotCounted,
            // ... and the integration counted it, with room to spare.
            (LimitScope::Org, _) => Seen::Accepted,
        },
        Outcome::Retry { reached: false, .. } => Seen::NotCounted,
        Outcome::Retry {
            answered: false, ..
        } => Seen::Unanswered,
        Outcome::Retry { .. } | Outcome::Redirected { .. } => Seen::Other,
    }
}
