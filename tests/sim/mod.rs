//! A simulated Grafana OnCall for the rate-limit tests and the storm benchmark, and the harness
//! around it.
//!
//! [`FakeOnCall`] is an in-process [`Transport`] that counts requests the way OnCall's engine
//! does (../shared/oncall-facts.md): django-ratelimit fixed windows whose boundary is offset per
//! key by a phase the client cannot see; the integration check before the organization check;
//! every POST counted on arrival, 429s and 5xx included, except that one blocked by the
//! integration limit never reaches the organization's counter; 429 as HTML with OnCall's texts
//! and no Retry-After. Requests take simulated network time on tokio's clock, so a test under
//! `start_paused` runs an hour of storm in a blink and the server's log holds exact times.
//!
//! [`Sim`] owns a queue in a temp dir (filled directly through [`Store::append`]: the queue
//! writer is an OS thread, which paused time cannot drive), a dispatcher that can be crashed,
//! stopped, rebuilt on the same database and reloaded, and the checks that read the server's log.
//!
//! Shared by `tests/storm.rs`, `tests/rate_limits.rs` and `examples/storm.rs` (which includes
//! this file by path).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncall_agent::clock::{Clock, Millis};
use oncall_agent::config::{Delivery, Rate};
use oncall_agent::queue::key_hash;
use oncall_agent::queue::{Envelope, Store};
use oncall_agent::redact::Secret;
use oncall_agent::sender::DeliverFuture;
use oncall_agent::sender::{BoardTx, SenderBoard};
use oncall_agent::sender::{Control, Dispatcher, Jitter, SenderConfig, Transport};
use oncall_agent::sender::{DispatchError, Target};
use oncall_agent::sender::{Outcome, classify};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// OnCall's 429 bodies (text/html, no Retry-After): the text is the only way to tell the scopes.
pub const INTEGRATION_429: &str = "<html><body><h1>Rate-limit exceeded</h1><p>Rate-limit exceeded: too many alerts were sent from your formatted_webhook integration. Please wait</p></body></html>";
pub const ORG_429: &str = "<html><body><h1>Rate-limit exceeded</h1><p>Rate-limit exceeded: too many alerts were sent from multiple integrations of your organization. Please wait</p></body></html>";

/// The simulation's epoch: 2026-01-01T00:00:00Z. Times in tests are offsets from it.
pub const T0: Millis = 1_767_225_600_000;

pub fn rate(count: u32, secs: u64) -> Rate {
    Rate {
        count,
        per: Duration::from_secs(secs),
    }
}

/// The daemon's delivery defaults (config.rs): 10 s timeout, backoff 1 s .. 5 min, probe every
/// 15 s, 4 requests in flight per integration.
pub fn default_delivery() -> Delivery {
    Delivery {
        timeout: Duration::from_secs(10),
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(300),
        probe_interval: Duration::from_secs(15),
        max_retry_after: Duration::from_secs(600),
        learn: true,
        concurrency: 4,
    }
}

/// An answer the server gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::new(200, "\"Ok.\"")
    }
    pub fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            retry_after: None,
        }
    }
    pub fn integration_429() -> Reply {
        Reply::new(429, INTEGRATION_429)
    }
    pub fn org_429() -> Reply {
        Reply::new(429, ORG_429)
    }
    pub fn retry_after(mut self, v: &str) -> Reply {
        self.retry_after = Some(v.to_string());
        self
    }
}

/// One server-side budget: django-ratelimit's fixed windows, `(t + phase) / window` being the
/// window's index, each index with its own counter.
#[derive(Debug, Clone)]
pub struct Counter {
    pub limit: u32,
    pub window: Millis,
    pub phase: Millis,
    counts: HashMap<u64, u32>,
}

impl Counter {
    fn new(r: Rate, phase: Millis) -> Counter {
        Counter {
            limit: r.count,
            window: r.per.as_millis() as Millis,
            phase,
            counts: HashMap::new(),
        }
    }

    /// Counts a request arriving at `at`; whether it is over the limit.
    fn hit(&mut self, at: Millis) -> bool {
        let c = self
            .counts
            .entry((at + self.phase) / self.window)
            .or_default();
        *c += 1;
        *c > self.limit
    }
}

/// How the network between the agent and OnCall behaves, drawn per request from a seeded
/// generator. Every request reaches the server (if it does) before the client's timeout, so the
/// limiter's bound "counted no later than sent + timeout" is the network's too.
#[derive(Debug, Clone)]
pub struct Network {
    /// Milliseconds to the server, uniform in `[up.0, up.1]`.
    pub up: (Millis, Millis),
    /// Milliseconds back, uniform in `[down.0, down.1]`.
    pub down: (Millis, Millis),
    /// Chance that the connection is refused: nothing reaches the server.
    pub refused: f64,
    /// Chance that the server counts the request but its answer is lost (the client times out).
    pub lost: f64,
    /// Chance that the server counts the request and answers 503.
    pub server_error: f64,
    /// The client's whole-request timeout (the agent's `delivery.timeout`).
    pub timeout: Millis,
}

impl Network {
    /// A fixed round trip, nothing lost.
    pub fn fixed(up: Millis, down: Millis) -> Network {
        Network {
            up: (up, up),
            down: (down, down),
            refused: 0.0,
            lost: 0.0,
            server_error: 0.0,
            timeout: 10_000,
        }
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub integration: String,
    /// The alert's number (`"n"` in its body).
    pub alert: u64,
    /// When the agent handed it to the transport.
    pub sent: Millis,
    /// When the server counted it; `None` if it never got there.
    pub arrived: Option<Millis>,
    /// When the agent got the outcome (an answer, or its timeout); `None` while in flight.
    pub done: Option<Millis>,
    /// The status answered; 0 when no answer reached the agent.
    pub status: u16,
    /// For a 429: whether the org's limit said no (else the integration's).
    pub org_limited: bool,
}

/// Decides an answer instead of the limits (exact-schedule tests); `None` falls through to them.
pub type Script = Box<dyn FnMut(&Hit) -> Option<Reply> + Send>;

struct FakeState {
    rng: StdRng,
    network: Network,
    integrations: BTreeMap<String, Counter>,
    org: Option<Counter>,
    script: Option<Script>,
    hits: Vec<Hit>,
    /// Requests whose outcome has not reached the agent yet.
    in_flight: usize,
}

/// The fake OnCall. Cheap to clone; clones share the server.
#[derive(Clone)]
pub struct FakeOnCall {
    clock: Clock,
    state: Arc<Mutex<FakeState>>,
}

impl FakeOnCall {
    /// No limits yet; `seed` drives the phases and the network.
    pub fn new(clock: Clock, seed: u64) -> FakeOnCall {
        FakeOnCall {
            clock,
            state: Arc::new(Mutex::new(FakeState {
                rng: StdRng::seed_from_u64(seed),
                network: Network::fixed(0, 0),
                integrations: BTreeMap::new(),
                org: None,
                script: None,
                hits: Vec::new(),
                in_flight: 0,
            })),
        }
    }

    /// Enforces `r` on integration `name`, its windows at a random phase.
    pub fn limit_integration(&self, name: &str, r: Rate) -> Millis {
        let mut s = self.state.lock().unwrap();
        let phase = s.rng.random_range(0..r.per.as_millis() as Millis);
        s.integrations
            .insert(name.to_string(), Counter::new(r, phase));
        phase
    }

    /// Enforces `r` on the whole organization, at a random phase.
    pub fn limit_org(&self, r: Rate) -> Millis {
        let mut s = self.state.lock().unwrap();
        let phase = s.rng.random_range(0..r.per.as_millis() as Millis);
        s.org = Some(Counter::new(r, phase));
        phase
    }

    pub fn set_network(&self, n: Network) {
        self.state.lock().unwrap().network = n;
    }

    pub fn script(&self, f: impl FnMut(&Hit) -> Option<Reply> + Send + 'static) {
        self.state.lock().unwrap().script = Some(Box::new(f));
    }

    /// Every request so far, in the order they were sent.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// The inbound URL of integration `name` (its "token" is its name).
    pub fn url(name: &str) -> Secret<reqwest::Url> {
        Secret::new(
            reqwest::Url::parse(&format!(
                "https://oncall.invalid/integrations/v1/formatted_webhook/{name}/"
            ))
            .unwrap(),
        )
    }

    /// The server's decision for a request arriving now.
    fn arrive(&self, idx: usize, at: Millis) -> Reply {
        let mut s = self.state.lock().unwrap();
        s.hits[idx].arrived = Some(at);
        let hit = s.hits[idx].clone();
        if let Some(f) = s.script.as_mut()
            && let Some(r) = f(&hit)
        {
            return r;
        }
        // The integration's check first: a request it blocks never reaches the org's counter.
        if let Some(c) = s.integrations.get_mut(&hit.integration)
            && c.hit(at)
        {
            return Reply::integration_429();
        }
        if let Some(c) = s.org.as_mut()
            && c.hit(at)
        {
            return Reply::org_429();
        }
        Reply::ok()
    }

    fn finish(&self, idx: usize, at: Millis, reply: Option<&Reply>) {
        let mut s = self.state.lock().unwrap();
        s.in_flight -= 1;
        let h = &mut s.hits[idx];
        h.done = Some(at);
        if let Some(r) = reply {
            h.status = r.status;
            h.org_limited = r.status == 429 && r.body.contains("multiple integrations");
        }
    }
}

enum Fate {
    Refused,
    Lost,
    Answered,
}

impl Transport for FakeOnCall {
    fn deliver(&self, url: &Secret<reqwest::Url>, body: Vec<u8>) -> DeliverFuture {
        let integration = url
            .expose()
            .path_segments()
            .and_then(|mut s| s.nth(3))
            .unwrap_or_default()
            .to_string();
        let alert = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["n"].as_u64())
            .unwrap_or(0);
        let sent = self.clock.now();
        // Everything random is drawn now, in send order, so a seed replays exactly.
        let (idx, up, down, fate, timeout, server_error) = {
            let mut s = self.state.lock().unwrap();
            let n = s.network.clone();
            let up = s.rng.random_range(n.up.0..=n.up.1).min(n.timeout);
            let down = s.rng.random_range(n.down.0..=n.down.1);
            let roll: f64 = s.rng.random();
            let fate = if roll < n.refused {
                Fate::Refused
            } else if roll < n.refused + n.lost || up + down >= n.timeout {
                Fate::Lost
            } else {
                Fate::Answered
            };
            let server_error = s.rng.random_bool(n.server_error.clamp(0.0, 1.0));
            s.in_flight += 1;
            s.hits.push(Hit {
                integration,
                alert,
                sent,
                arrived: None,
                done: None,
                status: 0,
                org_limited: false,
            });
            (s.hits.len() - 1, up, down, fate, n.timeout, server_error)
        };
        let fake = self.clone();
        Box::pin(async move {
            let clock = fake.clock;
            if let Fate::Refused = fate {
                tokio::time::sleep(Duration::from_millis(up.min(5))).await;
                fake.finish(idx, clock.now(), None);
                return Outcome::Retry {
                    reason: "request could not connect (simulated)".into(),
                    after: None,
                    answered: false,
                    reached: false,
                };
            }
            tokio::time::sleep(Duration::from_millis(up)).await;
            let mut reply = fake.arrive(idx, clock.now());
            if server_error && reply.status == 200 {
                reply = Reply::new(503, "Service Unavailable");
            }
            if let Fate::Lost = fate {
                tokio::time::sleep_until(clock.instant_at(sent + timeout)).await;
                fake.finish(idx, clock.now(), None);
                return Outcome::Retry {
                    reason: "request timed out (simulated)".into(),
                    after: None,
                    answered: false,
                    reached: true,
                };
            }
            tokio::time::sleep(Duration::from_millis(down)).await;
            fake.finish(idx, clock.now(), Some(&reply));
            classify(
                reply.status,
                reply.retry_after.as_deref(),
                None,
                reply.body.as_bytes(),
            )
        })
    }
}

/// What the agent ran with at some time: each scope's rate from `since` on.
#[derive(Debug, Clone)]
pub struct RateChange {
    pub at: Millis,
    pub integrations: BTreeMap<String, Rate>,
    pub org: Rate,
}

/// A running dispatcher.
struct Running {
    handle: JoinHandle<Result<(), DispatchError>>,
    control: mpsc::Sender<Control>,
    shutdown: watch::Sender<bool>,
}

/// A queue, a fake OnCall and a dispatcher between them.
pub struct Sim {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub clock: Clock,
    pub fake: FakeOnCall,
    pub board: BoardTx,
    pub cfg: SenderConfig,
    pub jitter: Jitter,
    /// Every rate the agent ran with, oldest first (for the invariant check).
    pub history: Vec<RateChange>,
    /// Next alert number.
    next_alert: u64,
    /// Alert numbers queued, per integration.
    pub queued: BTreeMap<String, Vec<u64>>,
    /// When each dispatcher started (for [`check_pauses`]).
    pub starts: Vec<Millis>,
    running: Option<Running>,
}

impl Sim {
    /// Must run inside a tokio runtime with paused time; the clock reads `T0` now.
    pub fn new(integrations: &[(&str, Rate)], org: Rate, delivery: Delivery, seed: u64) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open_store(dir.path()));
        let clock = Clock::starting_at(T0);
        let cfg = SenderConfig {
            delivery,
            org,
            targets: integrations
                .iter()
                .map(|(name, r)| Target {
                    name: name.to_string(),
                    url: FakeOnCall::url(name),
                    redacted_url: format!(
                        "https://oncall.invalid/integrations/v1/formatted_webhook/***/ ({name})"
                    ),
                    rate: *r,
                    heartbeat: None,
                })
                .collect(),
        };
        let mut sim = Sim {
            dir,
            store,
            clock,
            fake: FakeOnCall::new(clock, seed),
            board: tokio::sync::watch::channel(SenderBoard::default()).0,
            cfg,
            jitter: Jitter::None,
            history: Vec::new(),
            next_alert: 1,
            queued: BTreeMap::new(),
            starts: Vec::new(),
            running: None,
        };
        sim.record_rates();
        sim
    }

    /// The fake enforces exactly the agent's budgets, at random phases.
    pub fn fake_limits_equal_to_agent(&self) {
        for t in &self.cfg.targets {
            self.fake.limit_integration(&t.name, t.rate);
        }
        self.fake.limit_org(self.cfg.org);
    }

    fn record_rates(&mut self) {
        // An integration dropped from the config keeps its last rate: its slots still count.
        let mut integrations = self
            .history
            .last()
            .map(|c| c.integrations.clone())
            .unwrap_or_default();
        for t in &self.cfg.targets {
            integrations.insert(t.name.clone(), t.rate);
        }
        self.history.push(RateChange {
            at: self.clock.now(),
            integrations,
            org: self.cfg.org,
        });
    }

    /// Puts `n` alerts (each its own grouping key) in `integration`'s queue, as the writer
    /// would, and wakes the dispatcher. Returns their numbers.
    pub fn queue(&mut self, integration: &str, n: u64) -> Vec<u64> {
        let first = self.next_alert;
        let uids: Vec<String> = (first..first + n)
            .map(|num| format!("{integration}-{num}"))
            .collect();
        self.queue_keyed(integration, &uids)
    }

    /// Like [`Sim::queue`], with the grouping keys (`alert_uid`) given.
    pub fn queue_keyed(&mut self, integration: &str, uids: &[String]) -> Vec<u64> {
        let n = uids.len() as u64;
        let now = self.clock.now();
        let first_seq = self.store.reserve_seq(n);
        let mut rows = Vec::with_capacity(n as usize);
        let mut numbers = Vec::with_capacity(n as usize);
        for k in 0..n {
            let num = self.next_alert;
            self.next_alert += 1;
            let uid = &uids[k as usize];
            let body = serde_json::json!({
                "title": format!("storm alert {num}"),
                "alert_uid": uid,
                "state": "alerting",
                "n": num,
            })
            .to_string()
            .into_bytes();
            let env = Envelope {
                received_at: now,
                attempts: 0,
                next_attempt_at: 0,
                key_hash: key_hash(Some(uid.as_bytes()), &body),
                payload: body,
            };
            rows.push((integration.to_string(), first_seq + k, env.encode()));
            numbers.push(num);
        }
        self.store.append(&rows, &[]).unwrap();
        self.store.committed.notify_one();
        self.queued
            .entry(integration.to_string())
            .or_default()
            .extend(&numbers);
        numbers
    }

    /// Makes the queue durable (once, after filling it before the start).
    pub fn sync(&self) {
        self.store.sync().unwrap();
    }

    /// Starts a dispatcher on the queue (after a crash or stop: a new one, whose limiter
    /// reloads from sled).
    pub fn start(&mut self) {
        assert!(self.running.is_none(), "already running");
        let d = self.dispatcher();
        self.starts.push(self.clock.now());
        let (control, control_rx) = mpsc::channel(4);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let handle = tokio::spawn(d.run(control_rx, shutdown_rx));
        self.running = Some(Running {
            handle,
            control,
            shutdown,
        });
    }

    /// A new dispatcher on the queue, not started.
    pub fn dispatcher(&self) -> Dispatcher {
        Dispatcher::new(
            self.store.clone(),
            Arc::new(self.fake.clone()),
            self.cfg.clone(),
            self.clock,
            self.jitter,
            self.board.clone(),
        )
        .unwrap()
    }

    /// Kills the dispatcher where it stands, as a crash would: requests already sent still
    /// reach the server, their answers go nowhere, nothing is flushed on the way out.
    pub async fn crash(&mut self) {
        let r = self.running.take().expect("running");
        r.handle.abort();
        let _ = r.handle.await;
    }

    /// Stops the dispatcher the way SIGTERM does (in-flight requests finish).
    pub async fn stop(&mut self) {
        let r = self.running.take().expect("running");
        r.shutdown.send(true).unwrap();
        r.handle.await.unwrap().unwrap();
    }

    /// Crashes the dispatcher, closes the database and opens it again from disk, as a new
    /// process would, then starts a new dispatcher.
    pub async fn crash_and_reopen(&mut self) {
        self.crash().await;
        self.crash_and_reopen_stopped().await;
    }

    /// Closes the database of a crashed dispatcher, opens it again from disk and starts a new
    /// dispatcher.
    pub async fn crash_and_reopen_stopped(&mut self) {
        // Every handle must go for sled to let go of its files: swap in a stand-in meanwhile.
        let stand_in_dir = tempfile::tempdir().unwrap();
        let old = std::mem::replace(&mut self.store, Arc::new(open_store(stand_in_dir.path())));
        drop(
            Arc::try_unwrap(old)
                .ok()
                .expect("no one else holds the store"),
        );
        drop(std::mem::replace(
            &mut self.store,
            Arc::new(open_store(self.dir.path())),
        ));
        drop(stand_in_dir);
        self.start();
    }

    /// Changes rates (as SIGHUP with a new config does); integrations added to or removed from
    /// `cfg.targets` beforehand take effect too.
    pub async fn reload(&mut self, integrations: &[(&str, Rate)], org: Rate) {
        for (name, r) in integrations {
            let t = self.cfg.targets.iter_mut().find(|t| t.name == *name);
            if let Some(t) = t {
                t.rate = *r;
            }
        }
        self.cfg.org = org;
        self.record_rates();
        if let Some(r) = &self.running {
            r.control
                .send(Control::Reload(self.cfg.clone()))
                .await
                .unwrap();
        }
    }

    /// `oncall-agent retry-now` (the admin API hands the same message to the dispatcher).
    pub async fn retry_now(
        &self,
        integration: Option<&str>,
    ) -> Result<oncall_agent::sender::RetryNowReport, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let r = self.running.as_ref().expect("running");
        r.control
            .send(Control::RetryNow {
                integration: integration.map(str::to_string),
                reply,
            })
            .await
            .unwrap();
        answer.await.unwrap()
    }

    /// Lets simulated time run until `T0 + at`.
    pub async fn run_until(&self, at: Millis) {
        tokio::time::sleep_until(self.clock.instant_at(T0 + at)).await;
    }

    /// Runs until every queued alert is delivered, checking every second; false if not by
    /// `T0 + limit`.
    pub async fn run_until_drained(&self, limit: Millis) -> bool {
        loop {
            if self.queue_depth() == 0 && self.in_flight() == 0 {
                return true;
            }
            if self.clock.now() >= T0 + limit {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub fn queue_depth(&self) -> u64 {
        self.store.depths().values().map(|d| d.alerts).sum()
    }

    fn in_flight(&self) -> usize {
        self.fake.state.lock().unwrap().in_flight
    }

    pub fn board(&self) -> SenderBoard {
        self.board.borrow().clone()
    }

    /// Alert numbers OnCall accepted at least once, per integration.
    pub fn delivered(&self) -> BTreeMap<String, Vec<u64>> {
        let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for h in self.fake.hits() {
            if h.status == 200 {
                m.entry(h.integration).or_default().push(h.alert);
            }
        }
        m
    }

    /// Whether every queued alert was accepted by OnCall.
    pub fn all_delivered(&self) -> bool {
        let got = self.delivered();
        self.queued.iter().all(|(name, want)| {
            let have: std::collections::HashSet<u64> = got
                .get(name)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default();
            want.iter().all(|n| have.contains(n))
        })
    }
}

fn open_store(path: &Path) -> Store {
    // sled's background threads let go of the file lock a moment after the last handle is
    // dropped: a reopen in the same process waits for that (real time; the clock is paused).
    for _ in 0..500 {
        match Store::open(&path.join("queue"), 8 * 1024 * 1024) {
            Ok((store, quarantined)) => {
                assert!(quarantined.is_none());
                return store;
            }
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot open the queue: {e}"),
        }
    }
    panic!("the queue's lock was not released in 5 s");
}

/// Times (ms after `T0`) at which requests were sent, optionally of one integration.
pub fn sends(hits: &[Hit], integration: Option<&str>) -> Vec<Millis> {
    hits.iter()
        .filter(|h| integration.is_none_or(|i| h.integration == i))
        .map(|h| h.sent - T0)
        .collect()
}

/// The most of `times` inside any half-open interval of length `window`, whatever its phase.
pub fn max_in_any_window(times: &[Millis], window: Millis) -> usize {
    let mut t = times.to_vec();
    t.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// The rate that was in force for a scope at `at` (the later one when a change fell exactly on
/// `at`, since a request sent in the same millisecond as a reload may have gone either way:
/// both candidates are returned).
fn rates_at<'a>(
    history: &'a [RateChange],
    at: Millis,
    scope: Option<&'a str>,
) -> impl Iterator<Item = Rate> + 'a {
    let pick = move |c: &RateChange| match scope {
        Some(n) => c.integrations[n],
        None => c.org,
    };
    let before = history
        .iter()
        .rev()
        .find(|c| c.at < at)
        .or(history.first())
        .map(pick);
    let exact = history.iter().filter(move |c| c.at == at).map(pick);
    before.into_iter().chain(exact)
}

/// The guarantee, as the server sees it: for every interval of the scope's window length, the
/// requests that arrived in it number no more than the budget in force when the latest of them
/// was sent (with a lowered budget the lower one holds from the change on; requests sent before
/// it keep the old one). `scope` is an integration, or `None` for the whole organization
/// (every arrival counts for it, as the agent's own accounting does). Window lengths must not
/// change over `history`. Returns the first violation, if any.
pub fn check_budget(
    hits: &[Hit],
    history: &[RateChange],
    scope: Option<&str>,
) -> Result<(), String> {
    let mut arr: Vec<(Millis, Millis)> = hits
        .iter()
        .filter(|h| scope.is_none_or(|s| h.integration == s))
        .filter_map(|h| h.arrived.map(|a| (a, h.sent)))
        .collect();
    arr.sort_unstable();
    let window = rates_at(history, 0, scope)
        .next()
        .map(|r| r.per.as_millis() as Millis)
        .unwrap_or(1);
    // Every set of arrivals some interval can hold is a run [i, j] with arr[j] - arr[i] < W.
    for i in 0..arr.len() {
        let mut latest_sent = 0;
        for (j, &(a, sent)) in arr.iter().enumerate().skip(i) {
            if a - arr[i].0 >= window {
                break;
            }
            latest_sent = latest_sent.max(sent);
            let count = j - i + 1;
            let budget = rates_at(history, latest_sent, scope)
                .map(|r| r.count as usize)
                .max()
                .unwrap_or(0);
            if count > budget {
                return Err(format!(
                    "{} requests arrived at {:?} within {window} ms, budget {budget} ({})",
                    count,
                    arr[i..=j].iter().map(|x| x.0 - T0).collect::<Vec<_>>(),
                    scope.unwrap_or("org")
                ));
            }
        }
    }
    Ok(())
}

/// One 429 pause of a scope, as the server's log shows it.
#[derive(Debug, Clone)]
pub struct PauseSpan {
    /// An integration, or `None` for the organization.
    pub scope: Option<String>,
    /// When the first 429 reached the agent.
    pub start: Millis,
    /// When the first success sent after `start` reached it (`None`: still paused).
    pub end: Option<Millis>,
    /// Requests sent to the scope while paused (the probes).
    pub probes: Vec<Millis>,
    /// 429s of this scope answered while paused (including the one that started it).
    pub refused: usize,
}

/// Rebuilds every 429 pause (without Retry-After) from the server's log and checks the
/// politeness rules: while a scope is paused, a request to it leaves only when nothing else of
/// that scope is in flight, at least `probe_interval` after the refused request that started
/// the pause and after the probe before it.
///
/// `restarts` are the times the dispatcher was replaced: a new process knows neither the pause
/// nor the requests the old one left in flight, so a pause ends there and requests sent before
/// it do not count as in flight for the new one.
pub fn check_pauses(
    hits: &[Hit],
    probe_interval: Millis,
    restarts: &[Millis],
) -> Result<Vec<PauseSpan>, String> {
    let mut scopes: Vec<Option<String>> = vec![None];
    for h in hits {
        if !scopes.contains(&Some(h.integration.clone())) {
            scopes.push(Some(h.integration.clone()));
        }
    }
    // When the dispatcher running at `t` started.
    let epoch = |t: Millis| {
        restarts
            .iter()
            .copied()
            .filter(|&r| r <= t)
            .max()
            .unwrap_or(0)
    };
    let mut spans = Vec::new();
    for scope in scopes {
        let in_scope = |h: &Hit| scope.as_ref().is_none_or(|s| &h.integration == s);
        let mut answered: Vec<&Hit> = hits
            .iter()
            .filter(|h| in_scope(h) && h.done.is_some())
            .collect();
        answered.sort_by_key(|h| h.done);
        let mut cursor = 0;
        // Only an answer to the dispatcher that sent the request can pause it.
        while let Some(starter) = answered.iter().find(|h| {
            h.done.unwrap() >= cursor
                && h.status == 429
                && h.org_limited == scope.is_none()
                && h.sent >= epoch(h.done.unwrap())
        }) {
            let start = starter.done.unwrap();
            let success = answered
                .iter()
                .find(|h| h.status == 200 && h.sent >= start)
                .map(|h| h.done.unwrap());
            let restart = restarts.iter().copied().filter(|&r| r >= start).min();
            let end = match (success, restart) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let during = |t: Millis| t > start && end.is_none_or(|e| t < e);
            let mut probes: Vec<&Hit> = hits
                .iter()
                .filter(|h| in_scope(h) && during(h.sent))
                .collect();
            probes.sort_by_key(|h| h.sent);
            let mut last = starter.sent;
            for p in &probes {
                if p.sent < last + probe_interval {
                    return Err(format!(
                        "{:?} paused at {}: a request left at {}, {} ms after the one before",
                        scope,
                        start - T0,
                        p.sent - T0,
                        p.sent - last
                    ));
                }
                last = p.sent;
                let epoch = epoch(p.sent);
                let others = hits
                    .iter()
                    .filter(|o| {
                        in_scope(o)
                            && !std::ptr::eq(*o, *p)
                            && o.sent >= epoch
                            && o.sent <= p.sent
                            && o.done.is_none_or(|d| d > p.sent)
                    })
                    .count();
                if others > 0 {
                    return Err(format!(
                        "{:?} paused at {}: a probe left at {} with {others} other requests in flight",
                        scope,
                        start - T0,
                        p.sent - T0
                    ));
                }
            }
            let refused = answered
                .iter()
                .filter(|h| {
                    h.status == 429
                        && h.org_limited == scope.is_none()
                        && h.done.unwrap() >= start
                        && end.is_none_or(|e| h.done.unwrap() <= e)
                })
                .count();
            spans.push(PauseSpan {
                scope: scope.clone(),
                start,
                end,
                probes: probes.iter().map(|h| h.sent).collect(),
                refused,
            });
            match end {
                Some(e) => cursor = e + 1,
                None => break,
            }
        }
    }
    Ok(spans)
}
