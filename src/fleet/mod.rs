//! A fleet on one budget: agents on many hosts share OnCall's per-integration and
//! per-organization limits through Redis.
//!
//! OnCall's limits are not per host. With `[fleet]`, every budget also has a shared log in
//! Redis with the local limiter's semantics (`src/ratelimit/limiter.rs`): each request counts
//! as the span `[sent, until]`, and a new one may leave only while fewer than N requests of
//! the whole fleet have `until > now - W`. The scripts ([`scripts`], `turn.lua`) run
//! atomically on Redis's clock, so skewed host clocks cannot open a second budget;
//! integrations are known there by a keyed hash of their URL, never by their token.
//!
//! The dispatcher never waits on the network: [`Fleet`] is a synchronous handle over state that
//! a background task keeps in step with Redis. The task batches everything one turn needs
//! (answers, releases, reservations, this host's backlog) into one script call, holds a few
//! granted slots ahead so a request can leave at once, and, when a call fails or takes longer
//! than `fleet.timeout`, falls back to this host's local share of each budget (never the whole
//! budget: twenty hosts at full budget are the storm this exists to prevent) with one WARN. It
//! reconnects with backoff, and its first call after a reconnect records the sends made
//! meanwhile, so the shared log stays honest. Three edges, each found by a test that failed:
//! grants held when Redis goes away are dropped (a restarted Redis would not know them); a
//! host back early keeps within its local share for [`STRAGGLERS`] (others may still be cut
//! off, sending unrecorded); and at start nothing leaves before Redis has answered or failed
//! (the hosts already connected may be spending the whole budget).
//!
//! A granted slot is counted in Redis from its grant until `grant + hold + timeout` (a request
//! leaves at most `hold` after the call that reserved it was sent, and is answered or given up
//! within the request timeout), and until its answer once settled. Settles, releases and records
//! carry times relative to the moment their call was built, which Redis turns into its own
//! clock: never earlier than the event, whatever the hosts' clocks say.
//!
//! The local limiter stays in force as well: the fleet can only say later.

pub(crate) mod scripts;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, watch};

pub use scripts::{
    FleetError, Group, HostSeen, Keys, Op, OpKind, ScopeArg, ScopeKey, ScopeUse, TurnCall,
    TurnReply, hosts,
};

use crate::clock::{Clock, Millis, ms};
use crate::config::{FleetConfig, Rate};
use crate::ratelimit::{Limiter, Slot};

/// A granted slot not used within this long after its call left is given back. Long enough
/// for a dispatcher turn that waits on a slow fsync (the 20-process test on a loaded machine
/// lost grants at 1 s); it only lengthens how long an unanswered grant counts.
pub const HOLD: Duration = Duration::from_secs(3);
/// Granted slots held ahead per integration, at most.
pub const AHEAD: u32 = 8;
/// How long a host's backlog report keeps it among the waiting hosts.
pub const WANT_TTL: Duration = Duration::from_secs(3);
/// Calls while there is demand and no grant: never more often than this...
pub const MIN_POLL: Duration = Duration::from_millis(5);
/// ... and never less often (this also refreshes the backlog report).
pub const MAX_POLL: Duration = Duration::from_secs(1);
/// A call even with nothing to ask: keeps this host listed and its status fresh.
pub const KEEPALIVE: Duration = Duration::from_secs(2);
/// Connecting (TCP, TLS, AUTH) may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect backoff: doubling from the first to the last.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
/// After Redis returns, every host that can reach it is back within this long (its last
/// backoff and one connect); until then, those still cut off send unrecorded, so a host back
/// earlier keeps within its local share too.
pub const STRAGGLERS: Duration = BACKOFF.1.saturating_add(CONNECT_TIMEOUT);
/// Answers and releases waiting for a call, at most; beyond, the oldest are dropped, which is
/// safe: their slots keep counting until their bound.
pub const MAX_PENDING_OPS: usize = 4096;

/// The budgets the fleet shares, from the sender's config.
#[derive(Debug, Clone)]
pub struct Budgets {
    /// Each integration: its local name, its scope in Redis ([`ScopeKey::integration`]) and its
    /// budget.
    pub integrations: Vec<(String, ScopeKey, Rate)>,
    pub org: Rate,
    /// `delivery.timeout`: how long after leaving a request may still be counted.
    pub request_timeout: Duration,
}

/// A slot taken through the fleet, to hand back with the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSlot {
    id: u64,
    integration: String,
}

/// Whether Redis answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Not yet known (the first call has not come back): nothing leaves but on grants, for at
    /// most [`CONNECT_TIMEOUT`] plus `fleet.timeout`.
    Connecting,
    Up,
    /// Unreachable or slower than `fleet.timeout`: this host uses its local share.
    Down,
}

/// One budget as the fleet and this host see it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FleetScopeStatus {
    /// The integration's local name, or `org`.
    pub name: String,
    pub limit: String,
    /// Requests of the whole fleet that may count in the window (last call).
    pub fleet_used: u64,
    /// Hosts with a backlog on it, this one included.
    pub hosts_waiting: u64,
    /// This host's fair share while they all have backlog (limit / hosts waiting).
    pub share: f64,
    /// This host's requests in the window.
    pub mine: u64,
    /// What this host may send alone per window while Redis is away.
    pub local_limit: u64,
}

/// The fleet, for status and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FleetStatus {
    pub redis: String,
    pub host: String,
    pub org: String,
    pub link: Link,
    pub local_share: f64,
    pub scopes: Vec<FleetScopeStatus>,
    /// Script calls that came back.
    pub round_trips: u64,
    /// Requests that left on a fleet grant, and on the local share while Redis was away.
    pub fleet_slots: u64,
    pub local_slots: u64,
    /// Answers and releases dropped because too many waited (their slots count to their bound).
    pub dropped_ops: u64,
}

/// One budget's state on this host.
struct ScopeState {
    name: String,
    rate: Rate,
    /// This host's own requests, every one of them, under its local share: what it may send
    /// while Redis is away. Fed in both states, so a host that used more than its share just
    /// before Redis went away waits for that to age out first.
    local: Limiter,
    used: ScopeUse,
}

/// One integration's requests on this host.
struct GroupState {
    scopes: Vec<ScopeKey>,
    /// Requests ready to leave (reported each dispatcher turn).
    demand: u32,
    /// Granted slots not yet used: (id, the host time after which it must not be used).
    held: VecDeque<(u64, Millis)>,
    /// No call for more before this (host time), unless something changed.
    retry_at: Millis,
}

/// A slot change waiting for the next call. `until` is in host time.
struct PendingOp {
    kind: OpKind,
    id: u64,
    until: Millis,
    scopes: Vec<ScopeKey>,
}

/// A request sent while Redis was away, to record when it returns.
#[derive(Clone)]
struct Offline {
    scopes: Vec<ScopeKey>,
    until: Millis,
}

struct State {
    budgets: Budgets,
    scopes: BTreeMap<ScopeKey, ScopeState>,
    groups: BTreeMap<String, GroupState>,
    ops: VecDeque<PendingOp>,
    offline: BTreeMap<u64, Offline>,
    /// The longest window of any budget: an offline send older than this no longer counts.
    max_window: Millis,
    /// After Redis returns, until this host time grants are used only within the local share
    /// too (see [`STRAGGLERS`]).
    local_until: Millis,
    link: Link,
    next_id: u64,
    round_trips: u64,
    fleet_slots: u64,
    local_slots: u64,
    dropped_ops: u64,
}

struct Inner {
    cfg: FleetConfig,
    keys: Keys,
    clock: Clock,
    /// `<host>:<nonce>`: a new nonce per process, so ids never collide with a predecessor's.
    prefix: String,
    state: Mutex<State>,
    /// Wakes the task: demand, answers.
    wake: Notify,
    /// Wakes the dispatcher: grants arrived, or the link changed.
    changed: Notify,
}

/// The dispatcher's handle on the fleet's budgets. Every method is synchronous and cheap.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl Fleet {
    /// Starts the background task that talks to Redis. It runs until `shutdown` turns true.
    pub fn start(
        cfg: FleetConfig,
        budgets: Budgets,
        clock: Clock,
        shutdown: watch::Receiver<bool>,
    ) -> (Fleet, tokio::task::JoinHandle<()>) {
        let prefix = format!("{}:{:08x}", cfg.host, rand::random::<u32>());
        let keys = Keys::new(&cfg.org);
        let mut state = State {
            budgets: budgets.clone(),
            scopes: BTreeMap::new(),
            groups: BTreeMap::new(),
            ops: VecDeque::new(),
            offline: BTreeMap::new(),
            max_window: 0,
            local_until: 0,
            link: Link::Connecting,
            next_id: 1,
            round_trips: 0,
            fleet_slots: 0,
            local_slots: 0,
            dropped_ops: 0,
        };
        state.configure(budgets, cfg.local_share);
        let inner = Arc::new(Inner {
            cfg,
            keys,
            clock,
            prefix,
            state: Mutex::new(state),
            wake: Notify::new(),
            changed: Notify::new(),
        });
        let task = tokio::spawn(run(inner.clone(), shutdown));
        (Fleet { inner }, task)
    }

    /// New budgets after a reload: what was taken keeps counting.
    pub fn configure(&self, budgets: Budgets) {
        let share = self.inner.cfg.local_share;
        self.inner.lock().configure(budgets, share);
        self.inner.wake.notify_one();
    }

    /// How many requests of `integration` could leave now but for the fleet. Called each
    /// dispatcher turn; it is this host's backlog as the other hosts see it.
    pub fn demand(&self, integration: &str, ready: u32) {
        let now = self.inner.clock.now();
        let mut st = self.inner.lock();
        let Some(g) = st.groups.get_mut(integration) else {
            return;
        };
        let more = ready > g.demand;
        g.demand = ready;
        let short = ready as usize > g.held.len();
        if short && (more || g.retry_at <= now) {
            drop(st);
            self.inner.wake.notify_one();
        }
    }

    /// The earliest host time a request of `integration` may leave, as far as the fleet knows.
    /// While Redis answers (or has not yet been reached): now if a grant is held, else later
    /// (the dispatcher is woken by [`Fleet::changed`] when one comes). While it does not: this
    /// host's local share.
    pub fn next_free(&self, integration: &str, now: Millis) -> Millis {
        let mut st = self.inner.lock();
        st.expire_held(now);
        let link = st.link;
        let Some(g) = st.groups.get(integration) else {
            return now;
        };
        let local = || {
            g.scopes
                .iter()
                .filter_map(|s| st.scopes.get(s))
                .map(|s| s.local.next_free(now))
                .max()
                .unwrap_or(now)
        };
        if !g.held.is_empty() {
            return if now < st.local_until { local() } else { now };
        }
        match link {
            // The task asks when it is due and [`Fleet::changed`] wakes the dispatcher when
            // grants come (or the first call fails): this is only a safety net. At start the
            // local share is not used before Redis has had its chance (at most
            // CONNECT_TIMEOUT): the other hosts may be spending the whole budget.
            Link::Up | Link::Connecting => now.saturating_add(ms(MAX_POLL)),
            Link::Down => local(),
        }
    }

    /// Takes a slot for a request of `integration` leaving at `now`, counted at most until
    /// `until`: a held grant, or, while Redis is known to be away, a slot of the local share.
    /// `None`: not now (see [`Fleet::next_free`]).
    pub fn take(&self, integration: &str, now: Millis, until: Millis) -> Option<FleetSlot> {
        let mut st = self.inner.lock();
        st.expire_held(now);
        let link = st.link;
        let scopes = st.groups.get(integration)?.scopes.clone();
        let local_free = scopes
            .iter()
            .filter_map(|s| st.scopes.get(s))
            .all(|s| s.local.is_free(now));
        let settling = now < st.local_until;
        let g = st.groups.get_mut(integration)?;
        let id = match g.held.front() {
            Some(_) if settling && !local_free => return None,
            Some(&(id, _)) => {
                g.held.pop_front();
                st.fleet_slots += 1;
                id
            }
            None if link != Link::Down => return None,
            None => {
                if !local_free {
                    return None;
                }
                let id = st.next_id;
                st.next_id += 1;
                st.local_slots += 1;
                // Bounded: what an outage leaves to record is at most the local share of
                // each budget's last window.
                let window = st.max_window;
                st.offline
                    .retain(|_, o| o.until.saturating_add(window) > now);
                st.offline.insert(
                    id,
                    Offline {
                        scopes: scopes.clone(),
                        until,
                    },
                );
                id
            }
        };
        for s in &scopes {
            if let Some(s) = st.scopes.get_mut(s) {
                s.local.prune(now);
                s.local.restore(Slot {
                    id,
                    sent: now,
                    until,
                });
            }
        }
        Some(FleetSlot {
            id,
            integration: integration.to_string(),
        })
    }

    /// The request behind `slot` was answered at `at`, or gave up then; it may count until
    /// `until` (`at` when answered, later when no answer came).
    pub fn answered(&self, slot: &FleetSlot, at: Millis, until: Millis) {
        let mut st = self.inner.lock();
        let until = until.max(at);
        let Some(scopes) = st.groups.get(&slot.integration).map(|g| g.scopes.clone()) else {
            return;
        };
        for s in &scopes {
            if let Some(s) = st.scopes.get_mut(s) {
                s.local.answered(slot.id, until);
            }
        }
        match st.offline.get_mut(&slot.id) {
            Some(o) => o.until = until,
            None => st.push_op(PendingOp {
                kind: OpKind::Settle,
                id: slot.id,
                until,
                scopes,
            }),
        }
        drop(st);
        self.inner.wake.notify_one();
    }

    /// The request behind `slot` never reached OnCall: it counts nowhere.
    pub fn release(&self, slot: &FleetSlot) {
        let mut st = self.inner.lock();
        let Some(scopes) = st.groups.get(&slot.integration).map(|g| g.scopes.clone()) else {
            return;
        };
        for s in &scopes {
            if let Some(s) = st.scopes.get_mut(s) {
                s.local.release(slot.id);
            }
        }
        if st.offline.remove(&slot.id).is_none() {
            st.push_op(PendingOp {
                kind: OpKind::Release,
                id: slot.id,
                until: 0,
                scopes,
            });
        }
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Completes when grants arrived or the link changed: the dispatcher's cue for a new turn.
    pub async fn changed(&self) {
        self.inner.changed.notified().await
    }

    /// The organization whose budget this fleet shares (`fleet.org`).
    pub fn org(&self) -> &str {
        &self.inner.cfg.org
    }

    pub fn link(&self) -> Link {
        self.inner.lock().link
    }

    pub fn status(&self, now: Millis) -> FleetStatus {
        let st = self.inner.lock();
        let cfg = &self.inner.cfg;
        let scopes = st
            .scopes
            .values()
            .map(|s| FleetScopeStatus {
                name: s.name.clone(),
                limit: s.rate.to_string(),
                fleet_used: u64::from(s.used.live),
                hosts_waiting: u64::from(s.used.waiting),
                share: f64::from(s.rate.count) / f64::from(s.used.waiting.max(1)),
                mine: s.local.used(now) as u64,
                local_limit: s.local.rate().0 as u64,
            })
            .collect();
        FleetStatus {
            redis: cfg.redacted.clone(),
            host: cfg.host.clone(),
            org: cfg.org.clone(),
            link: st.link,
            local_share: cfg.local_share,
            scopes,
            round_trips: st.round_trips,
            fleet_slots: st.fleet_slots,
            local_slots: st.local_slots,
            dropped_ops: st.dropped_ops,
        }
    }

    /// The hosts seen in the org's last window, with their requests, asked of Redis now (for
    /// `oncall-agent fleet`; not on any alert's path).
    pub async fn hosts(
        cfg: &FleetConfig,
        org_window: Duration,
    ) -> Result<Vec<HostSeen>, FleetError> {
        let mut con = tokio::time::timeout(CONNECT_TIMEOUT, connect(cfg))
            .await
            .map_err(|_| FleetError::Timeout(CONNECT_TIMEOUT))??;
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            scripts::hosts(&mut con, &Keys::new(&cfg.org), ms(org_window)),
        )
        .await
        .map_err(|_| FleetError::Timeout(CONNECT_TIMEOUT))?
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fleet state lock")
    }
}

/// The fallback budget: `share` of `rate`, at least one request per window.
fn local_rate(rate: Rate, share: f64) -> Rate {
    Rate {
        count: ((f64::from(rate.count) * share).floor() as u32).max(1),
        per: rate.per,
    }
}

impl State {
    fn configure(&mut self, budgets: Budgets, share: f64) {
        let mut wanted: Vec<(ScopeKey, String, Rate)> = budgets
            .integrations
            .iter()
            .map(|(name, key, rate)| (key.clone(), name.clone(), *rate))
            .collect();
        wanted.push((ScopeKey::org(), "org".into(), budgets.org));
        let mut scopes = BTreeMap::new();
        for (key, name, rate) in wanted {
            let s = match self.scopes.remove(&key) {
                Some(mut s) => {
                    s.local.set_rate(local_rate(rate, share));
                    s.rate = rate;
                    s.name = name;
                    s
                }
                None => ScopeState {
                    name,
                    rate,
                    local: Limiter::new(local_rate(rate, share)),
                    used: ScopeUse::default(),
                },
            };
            scopes.insert(key, s);
        }
        self.max_window = scopes.values().map(|s| ms(s.rate.per)).max().unwrap_or(0);
        self.scopes = scopes;
        let mut groups = BTreeMap::new();
        for (name, key, _) in &budgets.integrations {
            let g = self.groups.remove(name).map_or_else(
                || GroupState {
                    scopes: Vec::new(),
                    demand: 0,
                    held: VecDeque::new(),
                    retry_at: 0,
                },
                |mut g| {
                    // Grants held for the old scopes are not valid for new ones.
                    if g.scopes.first() != Some(key) {
                        g.held.clear();
                    }
                    g
                },
            );
            groups.insert(
                name.clone(),
                GroupState {
                    scopes: vec![key.clone(), ScopeKey::org()],
                    ..g
                },
            );
        }
        self.groups = groups;
        self.budgets = budgets;
    }

    fn push_op(&mut self, op: PendingOp) {
        if self.ops.len() >= MAX_PENDING_OPS {
            self.ops.pop_front();
            self.dropped_ops += 1;
        }
        self.ops.push_back(op);
    }

    /// Grants not used in time go back.
    fn expire_held(&mut self, now: Millis) {
        let mut gone = Vec::new();
        for g in self.groups.values_mut() {
            while let Some(&(id, by)) = g.held.front() {
                if by > now {
                    break;
                }
                g.held.pop_front();
                gone.push((id, g.scopes.clone()));
            }
        }
        for (id, scopes) in gone {
            self.push_op(PendingOp {
                kind: OpKind::Release,
                id,
                until: 0,
                scopes,
            });
        }
    }

    /// The next call, if one is due at `now`; `records` only once Redis is known to answer
    /// (they go first after a reconnect).
    fn build(&mut self, inner: &Inner, now: Millis, keepalive: bool) -> Option<Built> {
        self.expire_held(now);
        let index: BTreeMap<ScopeKey, usize> = self
            .scopes
            .keys()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let (ops, records) = self.ops_for_call(inner, now, &index);
        let (groups, names) = self.groups_for_call(now, &index);
        let asks = groups.iter().any(|g| g.want > 0);
        if ops.is_empty() && !asks && !keepalive {
            return None;
        }
        let first_id = self.next_id;
        let wanted: u64 = groups.iter().map(|g| u64::from(g.want)).sum();
        self.next_id += wanted;
        let timeout = self.budgets.request_timeout;
        let call = TurnCall {
            host: inner.cfg.host.clone(),
            prefix: inner.prefix.clone(),
            first_id,
            bound_ms: ms(HOLD + timeout),
            want_ttl_ms: ms(WANT_TTL),
            fair_poll_ms: ms(MAX_POLL) / 10,
            scopes: self
                .scopes
                .iter()
                .map(|(k, s)| ScopeArg {
                    key: k.clone(),
                    limit: s.rate.count,
                    window_ms: ms(s.rate.per),
                })
                .collect(),
            ops,
            groups,
        };
        Some(Built {
            call,
            names,
            records,
            built_at: now,
        })
    }

    /// The sends made while Redis was away (recorded first), then answers and releases, as
    /// many as one call carries; and the offline sends' (id, until) it records.
    fn ops_for_call(
        &mut self,
        inner: &Inner,
        now: Millis,
        index: &BTreeMap<ScopeKey, usize>,
    ) -> (Vec<Op>, Vec<(u64, Millis)>) {
        let rel = |until: Millis| until as i64 - now as i64;
        let mut ops = Vec::new();
        let mut records = Vec::new();
        for (&id, o) in self.offline.iter().take(scripts::MAX_PER_CALL / 2) {
            ops.push(Op {
                kind: OpKind::Record,
                member: format!("{}:{id}", inner.prefix),
                ms: rel(o.until),
                scopes: indices(index, &o.scopes),
            });
            records.push((id, o.until));
        }
        let n_ops = self.ops.len().min(scripts::MAX_PER_CALL - ops.len());
        for o in self.ops.drain(..n_ops) {
            ops.push(Op {
                kind: o.kind,
                member: format!("{}:{}", inner.prefix, o.id),
                ms: if o.kind == OpKind::Settle {
                    rel(o.until)
                } else {
                    0
                },
                scopes: indices(index, &o.scopes),
            });
        }
        (ops, records)
    }

    /// Each integration's ask: grants it still lacks for its demand (none while it waits for
    /// `retry_at`), within what one call carries; and which names asked how many.
    fn groups_for_call(
        &self,
        now: Millis,
        index: &BTreeMap<ScopeKey, usize>,
    ) -> (Vec<Group>, Vec<(String, u32)>) {
        let mut groups = Vec::new();
        let mut names = Vec::new();
        let mut budget = scripts::MAX_PER_CALL as u32;
        for (name, g) in &self.groups {
            let short = g.demand.saturating_sub(g.held.len() as u32);
            let want = if g.retry_at <= now {
                short.min(AHEAD).min(budget)
            } else {
                0
            };
            budget -= want;
            if want > 0 || g.demand > 0 {
                groups.push(Group {
                    want,
                    demand: g.demand,
                    scopes: indices(index, &g.scopes),
                });
                names.push((name.clone(), want));
            }
        }
        (groups, names)
    }

    /// Applies a reply to the call built at `built_at`.
    fn apply(&mut self, b: &Built, reply: &scripts::TurnReply) {
        self.round_trips += 1;
        for (id, until) in &b.records {
            if self.offline.get(id).is_some_and(|o| o.until == *until) {
                self.offline.remove(id);
            }
        }
        let keys: Vec<ScopeKey> = self.scopes.keys().cloned().collect();
        for (k, u) in keys.iter().zip(&reply.scopes) {
            if let Some(s) = self.scopes.get_mut(k) {
                s.used = *u;
            }
        }
        let hold_until = b.built_at.saturating_add(ms(HOLD));
        let asked: Vec<(usize, &String)> = b
            .names
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (i, n))
            .collect();
        for (n, &g) in reply.grants.iter().enumerate() {
            let id = b.call.first_id + n as u64;
            if let Some(group) = self.groups.get_mut(asked[g].1) {
                group.held.push_back((id, hold_until));
            }
        }
        for (i, name) in asked {
            // A group that asked for nothing learned nothing about when it may.
            if b.names[i].1 == 0 {
                continue;
            }
            let Some(group) = self.groups.get_mut(name) else {
                continue;
            };
            let wait = reply.waits.get(i).copied().unwrap_or(0);
            group.retry_at = if wait == 0 {
                0
            } else {
                b.built_at
                    .saturating_add(wait.clamp(ms(MIN_POLL), ms(MAX_POLL)))
            };
        }
    }

    /// A call failed: its ops are lost (their slots count to their bound, which is safe), its
    /// grants unknown (they count to their bound in Redis and are never used here), its
    /// records kept for the next try.
    fn failed(&mut self) {
        for g in self.groups.values_mut() {
            g.retry_at = 0;
        }
    }
}

/// A call and what is needed to apply its reply.
struct Built {
    call: TurnCall,
    /// Per group of the call: the integration and how many it asked for.
    names: Vec<(String, u32)>,
    /// Offline sends recorded by it: (id, until as recorded).
    records: Vec<(u64, Millis)>,
    built_at: Millis,
}

async fn connect(cfg: &FleetConfig) -> Result<MultiplexedConnection, FleetError> {
    let mut info = cfg.redis.clone();
    if let Some(pw) = &cfg.password {
        let settings = info.redis_settings().clone().set_password(pw.expose());
        info = info.set_redis_settings(settings);
    }
    let client = redis::Client::open(info)?;
    let acfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(cfg.timeout));
    Ok(client
        .get_multiplexed_async_connection_with_config(&acfg)
        .await?)
}

/// The positions of `scopes` in the call's scope list.
fn indices(index: &BTreeMap<ScopeKey, usize>, scopes: &[ScopeKey]) -> Vec<usize> {
    scopes
        .iter()
        .filter_map(|s| index.get(s).copied())
        .collect()
}

/// The task: one call at a time, when something is due; fallback and reconnects.
async fn run(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let cfg = &inner.cfg;
    let mut con: Option<MultiplexedConnection> = None;
    let mut backoff = BACKOFF.0;
    let mut last_call: Millis = 0;
    loop {
        if *shutdown.borrow() {
            break;
        }
        if con.is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT, connect(cfg)).await {
                Ok(Ok(c)) => con = Some(c),
                Ok(Err(e)) => down(&inner, &e.to_string()),
                Err(_) => down(&inner, "connecting timed out"),
            }
            if con.is_none() {
                tokio::select! {
                    r = shutdown.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        }
        let now = inner.clock.now();
        let keepalive = now.saturating_sub(last_call) >= ms(KEEPALIVE);
        let built = {
            let mut st = inner.lock();
            // Until a call has come back, call even with nothing to ask: that call is what
            // brings the link up (and records the sends made meanwhile).
            let must = keepalive || st.link != Link::Up;
            st.build(&inner, now, must)
        };
        let Some(built) = built else {
            let wait = next_due(&inner, now);
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { break },
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        };
        last_call = now;
        let Some(c) = con.as_mut() else { continue };
        let result = tokio::time::timeout(cfg.timeout, built.call.run(c, &inner.keys)).await;
        let failed = match result {
            Ok(Ok(reply)) => {
                answered(&inner, &built, &reply, now);
                backoff = BACKOFF.0;
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {}ms", cfg.timeout.as_millis())),
        };
        if let Some(why) = failed {
            con = None;
            inner.lock().failed();
            down(&inner, &why);
        }
    }
    // A last call for what was answered, so the shared log frees those slots now.
    if let Some(c) = con.as_mut() {
        let now = inner.clock.now();
        let built = inner.lock().build(&inner, now, false);
        if let Some(mut b) = built {
            for g in &mut b.call.groups {
                g.want = 0;
                g.demand = 0;
            }
            let _ = tokio::time::timeout(cfg.timeout, b.call.run(c, &inner.keys)).await;
        }
    }
}

/// A call came back: its grants and the fleet's state are taken, and the link is up (said
/// once, when it was not).
fn answered(inner: &Inner, built: &Built, reply: &scripts::TurnReply, now: Millis) {
    let cfg = &inner.cfg;
    let mut st = inner.lock();
    let recorded = built.records.len();
    st.apply(built, reply);
    if st.link != Link::Up {
        if st.link == Link::Down {
            st.local_until = now.saturating_add(ms(STRAGGLERS + cfg.timeout));
            tracing::info!(redis = %cfg.redacted, recorded, "Redis answers again: the fleet's shared budgets are back in force; the sends made meanwhile are recorded in them.");
        } else {
            tracing::info!(redis = %cfg.redacted, host = %cfg.host, org = %cfg.org, "Connected to the fleet's shared budgets in Redis.");
        }
        st.link = Link::Up;
    }
    drop(st);
    inner.changed.notify_one();
}

/// The link is down: once, a WARN and the dispatcher woken (it now has its local share).
fn down(inner: &Inner, why: &str) {
    let mut st = inner.lock();
    if st.link == Link::Down {
        return;
    }
    st.link = Link::Down;
    // Grants held now are not used: Redis may come back without them (a restart forgets
    // everything), and sends on them would then be recorded nowhere. In Redis they count to
    // their bound, which is safe; from here on only the local share, recorded, is used.
    for g in st.groups.values_mut() {
        g.held.clear();
    }
    let share = inner.cfg.local_share;
    drop(st);
    tracing::warn!(redis = %inner.cfg.redacted, "The fleet's Redis is unreachable ({why}): this host now sends at most its local share ({:.1}% of each budget) until Redis answers again.", share * 100.0);
    inner.changed.notify_one();
}

/// How long the task may sleep with nothing to send: until a group may ask again, a held
/// grant expires, or the keepalive.
fn next_due(inner: &Inner, now: Millis) -> Duration {
    let st = inner.lock();
    let mut due = now.saturating_add(ms(KEEPALIVE));
    for g in st.groups.values() {
        if g.demand as usize > g.held.len() && g.retry_at > now {
            due = due.min(g.retry_at);
        }
        if let Some(&(_, by)) = g.held.front() {
            due = due.min(by);
        }
    }
    Duration::from_millis(due.saturating_sub(now).max(1))
}
