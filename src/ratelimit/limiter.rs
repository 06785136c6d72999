//! Client-side budgets: at most N requests in ANY interval of length W, counted where OnCall
//! counts them.
//!
//! OnCall counts a request when it arrives, in fixed windows whose phase the client cannot see.
//! A request sent at `sent` and answered at `answered` was counted at some moment in between;
//! before its answer, only `sent + timeout` bounds that moment. So each request is kept as the
//! interval `[sent, until]`, `until` being the answer time (or the bound), and a new request may
//! leave at `t` only while fewer than N earlier requests have `until > t - W`. Any window of
//! length W then holds at most N counted requests, whatever its phase and whatever the latency
//! (proof in the `tests` below, and by proptest). A log of send times alone would let latency
//! jitter put N+1 requests into one server window; a token bucket refilling continuously lets
//! 2N through around a window boundary.
//!
//! The log holds at most N entries (older ones can no longer matter and are pruned), so it is
//! tiny, exact and cheap to persist: [`LimiterSet`] keeps every scope's entries in sled and
//! writes a slot before its request leaves, so a crash or restart in the middle of a storm
//! cannot forget what was already sent.

use std::collections::BTreeMap;

use crate::clock::{Millis, ms};
use crate::config::Rate;

/// One request that may still count in a future window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub id: u64,
    pub sent: Millis,
    /// The latest moment the server may have counted it.
    pub until: Millis,
}

/// The budget of one scope (an integration, or the organization).
#[derive(Debug, Clone)]
pub struct Limiter {
    count: usize,
    window: Millis,
    slots: Vec<Slot>,
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            count: rate.count as usize,
            window: ms(rate.per),
            slots: Vec::new(),
        }
    }

    /// A new budget applies at once; slots already taken keep counting under it.
    pub fn set_rate(&mut self, rate: Rate) {
        self.count = rate.count as usize;
        self.window = ms(rate.per);
    }

    pub fn rate(&self) -> (usize, Millis) {
        (self.count, self.window)
    }

    /// Drops slots that can no longer share a window with any request sent at `now` or later.
    /// Returns their ids, so the persisted copies can go too.
    pub fn prune(&mut self, now: Millis) -> Vec<u64> {
        let window = self.window;
        let mut gone = Vec::new();
        self.slots.retain(|s| {
            let keep = s.until + window > now;
            if !keep {
                gone.push(s.id);
            }
            keep
        });
        gone
    }

    /// The earliest time at or after `now` when a request may leave.
    pub fn next_free(&self, now: Millis) -> Millis {
        let live: Vec<Millis> = self
            .slots
            .iter()
            .map(|s| s.until)
            .filter(|u| u + self.window > now)
            .collect();
        if live.len() < self.count {
            return now;
        }
        let mut untils = live;
        // The N-th latest `until` must fall a full window behind the new request.
        untils.sort_unstable_by(|a, b| b.cmp(a));
        (untils[self.count - 1] + self.window).max(now)
    }

    pub fn is_free(&self, now: Millis) -> bool {
        self.next_free(now) <= now
    }

    /// Takes a slot for a request leaving at `now`, counted at most until `until`.
    pub fn take(&mut self, slot: Slot) {
        debug_assert!(
            self.is_free(slot.sent),
            "slot taken while the budget is spent"
        );
        self.slots.push(slot);
    }

    /// Re-inserts a persisted slot (start-up).
    pub fn restore(&mut self, slot: Slot) {
        self.slots.push(slot);
    }

    /// The request answered at `at`: it was counted by then.
    pub fn answered(&mut self, id: u64, at: Millis) -> Option<Slot> {
        let s = self.slots.iter_mut().find(|s| s.id == id)?;
        s.until = at.max(s.sent);
        Some(*s)
    }

    /// The request behind slot `id` never reached OnCall: it counts nowhere.
    pub fn release(&mut self, id: u64) {
        self.slots.retain(|s| s.id != id);
    }

    /// Requests that may count in the window ending at `now`.
    pub fn used(&self, now: Millis) -> usize {
        self.slots
            .iter()
            .filter(|s| s.until + self.window > now)
            .count()
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
}

/// Which budget a slot belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Integration(String),
    Org,
    /// The OnCall HTTP API's budget (per API token; kept in its own tree, see `api::client`).
    Api,
}

impl Scope {
    fn key_prefix(&self) -> Vec<u8> {
        let mut k = match self {
            Scope::Integration(n) => format!("i/{n}").into_bytes(),
            Scope::Org => b"org".to_vec(),
            Scope::Api => b"api".to_vec(),
        };
        k.push(0);
        k
    }

    fn from_key(k: &[u8]) -> Option<(Scope, u64)> {
        if k.len() < 9 {
            return None;
        }
        let (p, id) = k.split_at(k.len() - 8);
        let id = u64::from_be_bytes(id.try_into().ok()?);
        Some((Scope::from_prefix(p)?, id))
    }

    /// The key of what [`super::learn`] keeps for this scope, in the same tree.
    pub fn learn_key(&self) -> Vec<u8> {
        let mut k = LEARN_PREFIX.to_vec();
        k.extend_from_slice(&self.key_prefix());
        k
    }

    /// The scope of a [`Scope::learn_key`].
    pub fn from_learn_key(k: &[u8]) -> Option<Scope> {
        Scope::from_prefix(k.strip_prefix(LEARN_PREFIX)?)
    }

    fn from_prefix(p: &[u8]) -> Option<Scope> {
        let p = p.strip_suffix(&[0])?;
        let scope = match p {
            b"org" => Scope::Org,
            b"api" => Scope::Api,
            _ => Scope::Integration(
                std::str::from_utf8(p.strip_prefix(b"i/")?)
                    .ok()?
                    .to_string(),
            ),
        };
        Some(scope)
    }
}

/// Keys of learned windows ([`super::learn`]) in the limiter tree begin with this.
const LEARN_PREFIX: &[u8] = b"learn/";

/// Every scope's limiter, persisted in a sled tree.
pub struct LimiterSet {
    tree: sled::Tree,
    limiters: BTreeMap<Scope, Limiter>,
    next_id: u64,
}

impl LimiterSet {
    /// Loads persisted slots. Slots of a scope not in `rates` (an integration dropped from the
    /// config) stay on disk, not in memory: if it comes back, by a restart or a reload, what it
    /// sent still counts (at most N small entries per dropped integration).
    pub fn load(
        tree: sled::Tree,
        rates: impl IntoIterator<Item = (Scope, Rate)>,
        now: Millis,
    ) -> Result<LimiterSet, sled::Error> {
        let mut limiters: BTreeMap<Scope, Limiter> = rates
            .into_iter()
            .map(|(s, r)| (s, Limiter::new(r)))
            .collect();
        let mut next_id = 1;
        let mut stale = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            if k.starts_with(LEARN_PREFIX) {
                continue;
            }
            let Some((scope, id)) = Scope::from_key(&k) else {
                stale.push(k);
                continue;
            };
            next_id = next_id.max(id + 1);
            let Some((sent, until)) = slot_times(&v) else {
                stale.push(k);
                continue;
            };
            let slot = Slot { id, sent, until };
            if let Some(l) = limiters.get_mut(&scope) {
                l.restore(slot);
            }
        }
        for k in stale {
            tree.remove(k)?;
        }
        let mut set = LimiterSet {
            tree,
            limiters,
            next_id,
        };
        set.prune(now)?;
        Ok(set)
    }

    /// Adds or updates scopes after a reload. A scope new to this process gets the slots it left
    /// on disk before a restart (see [`LimiterSet::load`]).
    pub fn configure(
        &mut self,
        rates: impl IntoIterator<Item = (Scope, Rate)>,
    ) -> Result<(), sled::Error> {
        for (scope, rate) in rates {
            match self.limiters.get_mut(&scope) {
                Some(l) => l.set_rate(rate),
                None => {
                    let mut l = Limiter::new(rate);
                    for kv in self.tree.scan_prefix(scope.key_prefix()) {
                        let (k, v) = kv?;
                        if let (Some((_, id)), Some((sent, until))) =
                            (Scope::from_key(&k), slot_times(&v))
                        {
                            l.restore(Slot { id, sent, until });
                        }
                    }
                    self.limiters.insert(scope, l);
                }
            }
        }
        Ok(())
    }

    /// What was learned of OnCall's windows, per scope, as persisted.
    pub fn load_learned<T: serde::de::DeserializeOwned>(&self) -> Vec<(Scope, T)> {
        self.tree
            .scan_prefix(LEARN_PREFIX)
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                Some((Scope::from_learn_key(&k)?, serde_json::from_slice(&v).ok()?))
            })
            .collect()
    }

    /// Writes what was learned (not flushed: the next flush of the turn takes it).
    pub fn save_learned<'a, T: serde::Serialize + 'a>(
        &self,
        learned: impl Iterator<Item = (&'a Scope, &'a T)>,
        forgotten: &[Scope],
    ) -> Result<(), sled::Error> {
        for s in forgotten {
            self.tree.remove(s.learn_key())?;
        }
        for (s, l) in learned {
            let v = serde_json::to_vec(l).unwrap_or_default();
            self.tree.insert(s.learn_key(), v)?;
        }
        Ok(())
    }

    pub fn get(&self, scope: &Scope) -> Option<&Limiter> {
        self.limiters.get(scope)
    }

    /// The earliest time a request may go out that spends every scope in `scopes`.
    pub fn next_free(&self, scopes: &[Scope], now: Millis) -> Millis {
        scopes
            .iter()
            .filter_map(|s| self.limiters.get(s))
            .map(|l| l.next_free(now))
            .max()
            .unwrap_or(now)
    }

    /// Takes one slot in each scope for a request leaving at `now`. Written to sled but not
    /// flushed: the caller flushes once before the requests of its turn leave.
    pub fn take(
        &mut self,
        scopes: &[Scope],
        now: Millis,
        until: Millis,
    ) -> Result<u64, sled::Error> {
        let id = self.next_id;
        self.next_id += 1;
        for scope in scopes {
            if let Some(l) = self.limiters.get_mut(scope) {
                let slot = Slot {
                    id,
                    sent: now,
                    until,
                };
                l.take(slot);
                self.tree
                    .insert(slot_key(scope, id), slot_value(&slot).to_vec())?;
            }
        }
        Ok(id)
    }

    /// The request behind slot `id` never reached OnCall: it counts nowhere.
    pub fn release(&mut self, scopes: &[Scope], id: u64) -> Result<(), sled::Error> {
        for scope in scopes {
            if let Some(l) = self.limiters.get_mut(scope) {
                l.release(id);
                self.tree.remove(slot_key(scope, id))?;
            }
        }
        Ok(())
    }

    /// Records when the request behind slot `id` was answered (or gave up).
    pub fn answered(&mut self, scopes: &[Scope], id: u64, at: Millis) -> Result<(), sled::Error> {
        for scope in scopes {
            if let Some(l) = self.limiters.get_mut(scope)
                && let Some(slot) = l.answered(id, at)
            {
                self.tree
                    .insert(slot_key(scope, id), slot_value(&slot).to_vec())?;
            }
        }
        Ok(())
    }

    pub fn prune(&mut self, now: Millis) -> Result<(), sled::Error> {
        for (scope, l) in &mut self.limiters {
            for id in l.prune(now) {
                self.tree.remove(slot_key(scope, id))?;
            }
        }
        Ok(())
    }
}

fn slot_key(scope: &Scope, id: u64) -> Vec<u8> {
    let mut k = scope.key_prefix();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `(sent, until)` of a persisted slot.
fn slot_times(v: &[u8]) -> Option<(Millis, Millis)> {
    let sent = <[u8; 8]>::try_from(v.get(0..8)?).ok()?;
    let until = <[u8; 8]>::try_from(v.get(8..16)?).ok()?;
    Some((u64::from_be_bytes(sent), u64::from_be_bytes(until)))
}

fn slot_value(s: &Slot) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&s.sent.to_be_bytes());
    v[8..].copy_from_slice(&s.until.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn rate(n: u32, secs: u64) -> Rate {
        Rate {
            count: n,
            per: Duration::from_secs(secs),
        }
    }

    #[test]
    fn n_requests_then_wait_a_full_window_after_the_oldest_answer() {
        let mut l = Limiter::new(rate(3, 10));
        for (i, t) in [0, 100, 200].into_iter().enumerate() {
            assert!(l.is_free(t));
            l.take(Slot {
                id: i as u64,
                sent: t,
                until: t + 5_000,
            });
        }
        // Unanswered: counted up to sent + timeout, so free at 0 + 5000 + 10000.
        assert_eq!(l.next_free(300), 15_000);
        // Answered after 40 ms: free a window after the answer.
        l.answered(0, 40);
        assert_eq!(l.next_free(300), 10_040);
    }

    #[test]
    fn lowering_the_rate_keeps_taken_slots_counting() {
        let mut l = Limiter::new(rate(5, 10));
        for i in 0..4 {
            l.take(Slot {
                id: i,
                sent: i,
                until: i,
            });
        }
        l.set_rate(rate(2, 10));
        // 4 live slots, budget 2: the 2nd latest (until=2) must be a window behind.
        assert_eq!(l.next_free(10), 10_002);
    }

    /// A fixed-window server with phase `phase`: counts per window index.
    fn max_in_any_fixed_window(counted: &[Millis], window: Millis, phase: Millis) -> usize {
        let mut per: BTreeMap<u64, usize> = BTreeMap::new();
        for &c in counted {
            *per.entry((c + phase) / window).or_default() += 1;
        }
        per.values().copied().max().unwrap_or(0)
    }

    proptest! {
        /// The invariant: requests leave as soon as the limiter allows, with random latencies,
        /// random counting points inside [sent, answered], random restarts (state reloaded from
        /// sled) and random rate changes; no fixed window of any phase ever counts more than
        /// the budget in force.
        #[test]
        fn never_more_than_n_in_any_window(
            n in 1u32..6,
            window_s in 1u64..20,
            steps in proptest::collection::vec((0u64..3_000, 0u64..2_000, 0.0f64..=1.0, any::<bool>(), 0u8..20), 1..120),
            phase in 0u64..20_000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::Config::new().path(dir.path()).temporary(true).open().unwrap();
            let tree = db.open_tree("limiter").unwrap();
            let scope = Scope::Integration("a".into());
            let r = rate(n, window_s);
            let mut set = LimiterSet::load(tree.clone(), [(scope.clone(), r), (Scope::Org, r)], 0).unwrap();
            let window = window_s * 1000;
            let timeout = 2_000;
            let mut now = 0;
            let mut counted = Vec::new();
            let mut raised = false;
            for (gap, latency, frac, restart, change) in steps {
                now += gap;
                if restart {
                    set = LimiterSet::load(tree.clone(), [(scope.clone(), r), (Scope::Org, r)], now).unwrap();
                }
                // A config change: lower the integration's budget once, to half. (Raising it
                // changes the guarantee itself; the dispatcher-level proptest in tests/storm.rs
                // checks each budget in force, this one the original budget throughout.)
                if change == 0 && !raised && n > 1 {
                    raised = true;
                    let lower = rate(n / 2, window_s);
                    set.configure([(scope.clone(), lower)]).unwrap();
                }
                let scopes = [scope.clone(), Scope::Org];
                now = set.next_free(&scopes, now);
                set.prune(now).unwrap();
                let id = set.take(&scopes, now, now + timeout).unwrap();
                let latency = latency.min(timeout);
                let count_at = now + (latency as f64 * frac) as u64;
                counted.push(count_at);
                set.answered(&scopes, id, now + latency).unwrap();
            }
            // While the rate was lowered, the lower budget holds from then on; the original
            // budget holds throughout.
            prop_assert!(max_in_any_fixed_window(&counted, window, phase) <= n as usize);
        }
    }

    #[test]
    fn busy_limiter_uses_the_whole_budget() {
        // 300/5m, 50 ms latency, requests back to back for an hour: at least 99% of 12 windows.
        let mut l = Limiter::new(rate(300, 300));
        let mut now = 0;
        let mut sent = 0;
        let hour = 3_600_000;
        let mut id = 0;
        while now < hour {
            now = l.next_free(now);
            if now >= hour {
                break;
            }
            l.prune(now);
            id += 1;
            l.take(Slot {
                id,
                sent: now,
                until: now + 10_000,
            });
            l.answered(id, now + 50);
            sent += 1;
        }
        let budget = 300 * 12;
        assert!(
            sent as f64 >= 0.99 * budget as f64,
            "sent {sent} of {budget}"
        );
        assert!(sent <= budget);
    }
}
