//! What the agent learns of OnCall's real rate-limit windows when OnCall is stricter than the
//! configured budget (another sender shares the integration, the organization's limit is
//! lower, a host's share is off).
//!
//! OnCall counts in fixed windows of exactly [`WINDOW`] whose phase is constant per scope
//! (django-ratelimit, offset `crc32(id) % 300`: ../shared/oncall-facts.md), and its 429 says
//! which scope ran out. So per scope (each integration, the organization) the agent learns:
//! - **when a window resets**: a 429 means the window its request arrived in is spent, and the
//!   next accepted request arrived in a later one, so a reset lies between the refused request's
//!   send and the accepted one's answer. The bracket `(lo, hi]` narrows by bisection: while a
//!   window is spent, one probe goes at the middle of the next predicted reset; accepted, the
//!   reset was before its answer; refused, after its send.
//! - **how many requests a window holds**: the requests accepted in a window before its first
//!   429. A 429 before that many lowers it; after [`CLEAN_BEFORE_RAISE`] windows used to the
//!   limit without a 429, one request more is tried (an upward probe) and kept if accepted.
//!
//! Once both are known the gate lets at most the learned limit into each predicted window,
//! counting a request in every window its arrival may fall in (between its send and its
//! answer), and nothing into a predicted reset except that one probe. So after the first
//! limited window there is at most one 429 per window per scope, and the window's whole real
//! budget is used. The configured budget (the sliding limiter) holds on top: the gate can only
//! say less. A 429 on the first request of a predicted window means the phase is wrong: it is
//! forgotten and learned again. A reload that changes a scope's budget forgets what was learned.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Scope;
use crate::clock::Millis;

/// OnCall's window: django-ratelimit's fixed 300 s.
pub const WINDOW: Millis = 300_000;
/// Windows in a row used to the learned limit without a 429 before one more is tried.
pub const CLEAN_BEFORE_RAISE: u32 = 3;
/// A reset bracket at most this wide is not bisected further: the round trip blurs it anyway.
pub const PRECISE: Millis = 1_000;
/// A first reset bracket wider than this is not taken (a pause held long by another scope's
/// budget says little): while the limit is unknown nothing is sent inside a predicted reset,
/// so a wide one would starve the scope. Probing every 15 s gives brackets of ~15 s.
pub const WIDEST_FIRST: Millis = 60_000;
/// Requests remembered per scope (for counting per window); older ones cannot matter.
const KEEP: Millis = 3 * WINDOW;

/// What is learned of one scope; persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    /// One of OnCall's resets lies in `(lo, hi]` (absolute times); every other one is that
    /// plus a multiple of [`WINDOW`]. `hi - lo < WINDOW`.
    pub reset: Option<(Millis, Millis)>,
    /// Requests OnCall takes per window.
    pub limit: Option<u32>,
    /// Windows in a row used up to `limit` without a 429.
    pub clean: u32,
}

#[derive(Debug, Clone, Copy)]
struct Req {
    id: u64,
    sent: Millis,
    /// Its answer, or the latest it may arrive while unanswered.
    until: Millis,
    answered: bool,
    refused: bool,
    /// Answered and counted with room to spare (not a 429, not a 5xx that may be a proxy's).
    accepted: bool,
    /// Sent inside predicted reset `k` while window `k - 1` was spent: if accepted, it is
    /// window `k`'s.
    probe_of: Option<i64>,
    /// The window it surely counted in, when an answer told (an accepted probe).
    window: Option<i64>,
}

#[derive(Debug, Default)]
struct ScopeState {
    learned: Learned,
    /// The latest send and answer times of the requests refused since the last accepted one.
    refused_since: Option<(Millis, Millis)>,
    reqs: Vec<Req>,
    /// The predicted reset (by index) already probed.
    probed: Option<i64>,
    /// The last window whose use was tallied into `clean`.
    tallied: Option<i64>,
}

/// Every scope's learning.
#[derive(Debug, Default)]
pub struct Learner {
    scopes: BTreeMap<Scope, ScopeState>,
    /// Changes not yet written (the dispatcher persists them with its limiter slots).
    dirty: bool,
    /// Scopes forgotten since the last write (their persisted copy goes too).
    forgotten: Vec<Scope>,
    /// When this process began watching: a window that began earlier holds requests it never
    /// saw, so a 429 there says nothing about the limit or the phase.
    started: Millis,
}

/// Where a time falls relative to the predicted resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    /// Surely in window `k` (after reset `k`, before reset `k + 1`).
    In(i64),
    /// Inside predicted reset `k`: in window `k - 1` or `k`.
    Reset(i64),
}

impl Learned {
    /// Reset `k`'s bracket.
    fn zone(&self, k: i64) -> Option<(i64, i64)> {
        let (lo, hi) = self.reset?;
        let shift = k * WINDOW as i64;
        Some((lo as i64 + shift, hi as i64 + shift))
    }

    fn pos(&self, t: Millis) -> Option<Pos> {
        let (lo, hi) = self.reset?;
        let (t, lo, hi, w) = (t as i64, lo as i64, hi as i64, WINDOW as i64);
        let k = (t - hi).div_euclid(w);
        // t >= hi_k; before lo_{k+1} it is surely in window k.
        Some(if t <= lo + (k + 1) * w {
            Pos::In(k)
        } else {
            Pos::Reset(k + 1)
        })
    }

    /// Whether a request `[sent, until]` may be counted in window `k`. A refused one is in the
    /// window before the reset it was refused ahead of.
    fn may_be_in(&self, r: &Req, k: i64) -> bool {
        if r.refused {
            return match self.pos(r.sent) {
                Some(Pos::In(j)) => j == k,
                Some(Pos::Reset(j)) => j - 1 == k,
                None => false,
            };
        }
        let (Some((lo_k, _)), Some((_, hi_next))) = (self.zone(k), self.zone(k + 1)) else {
            return false;
        };
        (r.until as i64) > lo_k && (r.sent as i64) <= hi_next
    }

    /// Narrows the reset bracket with a new one, `(lo, hi]` (a reset surely lies in it).
    fn narrow(&mut self, lo: Millis, hi: Millis) {
        if hi <= lo || hi - lo >= WINDOW || (self.reset.is_none() && hi - lo > WIDEST_FIRST) {
            return;
        }
        let new = match self.reset {
            None => (lo, hi),
            Some((a, b)) => {
                // Shift the new bracket by whole windows next to the old one, then intersect.
                let w = WINDOW as i64;
                let k = (a as i64 - lo as i64).div_euclid(w);
                let mut best = None;
                for s in [k - 1, k, k + 1, k + 2] {
                    let (l, h) = (lo as i64 + s * w, hi as i64 + s * w);
                    let (il, ih) = (l.max(a as i64), h.min(b as i64));
                    if il < ih {
                        best = Some((il as Millis, ih as Millis));
                    }
                }
                // No overlap: the old bracket was wrong (or the limit moved): take the new one.
                best.unwrap_or((lo, hi))
            }
        };
        self.reset = Some(new);
    }
}

impl ScopeState {
    /// Notes the answer to request `id`; the request and its index when it counts (answered
    /// by OnCall), `None` when there is nothing to learn from it.
    fn record(&mut self, id: u64, at: Millis, seen: Seen) -> Option<(usize, Req)> {
        let i = self.reqs.iter().position(|r| r.id == id)?;
        let r = &mut self.reqs[i];
        match seen {
            Seen::Unanswered => {
                r.until = r.until.max(at);
                return None;
            }
            Seen::NotCounted => {
                self.reqs.remove(i);
                return None;
            }
            _ => r.until = at.max(r.sent),
        }
        r.answered = true;
        r.refused = seen == Seen::Refused;
        r.accepted = seen == Seen::Accepted;
        Some((i, *r))
    }

    fn on_accepted(&mut self, i: usize, r: Req) {
        // Only a request sent after the refused one's answer surely arrived after it (round
        // trips vary: a later request can overtake an earlier one). Then a reset lies between
        // the refused one's send and this answer, and this request is in the window it began.
        if let Some((s, u)) = self.refused_since
            && r.sent >= u
        {
            self.refused_since = None;
            self.learned.narrow(s, r.until);
            self.reqs[i].window = match self.learned.pos(r.sent) {
                Some(Pos::In(k) | Pos::Reset(k)) => Some(k),
                None => None,
            };
        } else if let Some(k) = r.probe_of {
            self.reqs[i].window = Some(k);
        }
        if let Some(Pos::In(k)) = self.learned.pos(r.sent)
            && let Some(l) = self.learned.limit
        {
            let n = self.accepted_surely_in(k);
            if n > l {
                // The upward probe got through.
                self.learned.limit = Some(n);
                self.learned.clean = 0;
            }
        }
    }

    fn on_refused(&mut self, r: Req, started: Millis) {
        self.refused_since = Some(
            self.refused_since
                .map_or((r.sent, r.until), |(s, u)| (s.max(r.sent), u.max(r.until))),
        );
        match self.learned.pos(r.sent) {
            // A probe inside a predicted reset, refused: the reset was after its send.
            Some(Pos::Reset(k)) => {
                if let Some((lo, hi)) = self.learned.zone(k) {
                    let shift = lo - self.learned.reset.map_or(0, |(l, _)| l as i64);
                    let new_lo = (r.sent as i64).max(lo) - shift;
                    self.learned.reset = Some((new_lo.max(0) as Millis, (hi - shift) as Millis));
                }
            }
            Some(Pos::In(k))
                if self
                    .learned
                    .zone(k)
                    .is_some_and(|(lo, _)| lo >= started as i64) =>
            {
                self.limited_in(k);
            }
            Some(Pos::In(_)) | None => {}
        }
    }

    /// A refusal inside learned window `k` (one that began after this process started).
    fn limited_in(&mut self, k: i64) {
        // Every request of the window accepted so far, sent before or with this one; answers
        // still to come raise it (see `on_accepted`).
        let n = self.accepted_in(k, Millis::MAX);
        match self.learned.limit {
            // The first request of a predicted window refused: the phase is off.
            Some(_) if n == 0 => self.learned.reset = None,
            Some(l) if n < l => {
                self.learned.limit = Some(n);
                self.learned.clean = 0;
            }
            Some(_) => self.learned.clean = 0,
            // Learned from the requests surely in this window: a lower bound if some went near
            // its reset (raised later, one at a time).
            None => {
                let sure = self.accepted_surely_in(k);
                if sure > 0 {
                    self.learned.limit = Some(sure);
                }
            }
        }
    }

    /// Requests not refused that may be counted in window `k` and were sent before `before`.
    fn accepted_in(&self, k: i64, before: Millis) -> u32 {
        self.reqs
            .iter()
            .filter(|r| r.accepted && r.sent < before && self.learned.may_be_in(r, k))
            .count() as u32
    }

    /// Requests not refused that were sent after reset `k` and before reset `k + 1` could
    /// have come: surely counted in window `k`, whatever the latency.
    fn accepted_surely_in(&self, k: i64) -> u32 {
        self.reqs
            .iter()
            .filter(|r| {
                r.accepted
                    && (r.window == Some(k)
                        || (self.learned.pos(r.sent) == Some(Pos::In(k))
                            && self
                                .learned
                                .zone(k + 1)
                                .is_some_and(|(lo, _)| (r.until as i64) <= lo)))
            })
            .count() as u32
    }

    /// Every request that may be counted in window `k` (OnCall counts 429s too).
    fn counted_in(&self, k: i64) -> u32 {
        self.reqs
            .iter()
            .filter(|r| self.learned.may_be_in(r, k))
            .count() as u32
    }

    fn refused_in(&self, k: i64) -> bool {
        self.reqs
            .iter()
            .any(|r| r.refused && self.learned.pos(r.sent) == Some(Pos::In(k)))
    }

    /// How many requests window `k` may take: the limit, one more as an upward probe.
    fn cap(&self) -> Option<u32> {
        let l = self.learned.limit?;
        Some(if self.learned.clean >= CLEAN_BEFORE_RAISE {
            l + 1
        } else {
            l
        })
    }

    /// Counts window `k - 1`'s use toward raising the limit, once, when window `k` begins.
    fn tally(&mut self, k: i64) {
        if self.tallied.is_some_and(|t| t >= k - 1) {
            return;
        }
        self.tallied = Some(k - 1);
        let Some(limit) = self.learned.limit else {
            return;
        };
        if !self.refused_in(k - 1) && self.accepted_in(k - 1, Millis::MAX) >= limit {
            self.learned.clean = self.learned.clean.saturating_add(1);
        }
    }

    /// The earliest time at or after `now` a request may leave in this scope.
    fn next_free(&self, now: Millis) -> Millis {
        let Some(pos) = self.learned.pos(now) else {
            return now;
        };
        let Some(cap) = self.cap() else {
            // The resets are known but not the limit: one request at a time, so that the
            // window's first 429 is its only one (the one that teaches the limit), and none
            // inside a predicted reset, so that each is counted in one window for sure.
            if let Pos::Reset(k) = pos {
                let (_, hi) = self.learned.zone(k).unwrap_or_default();
                return (hi.max(0) as Millis).max(now);
            }
            return self
                .reqs
                .iter()
                .filter(|r| !r.answered)
                .map(|r| r.until)
                .min()
                .map_or(now, |u| u.max(now));
        };
        match pos {
            // A 429 in this window already: it is spent, whatever was counted.
            Pos::In(k) if self.refused_in(k) => self.probe_point(k + 1).max(now),
            Pos::In(k) if self.counted_in(k) < cap => now,
            // Full: the next predicted reset (its probe point, or past it).
            Pos::In(k) => self.probe_point(k + 1).max(now),
            Pos::Reset(k) => {
                let prev_full = self.counted_in(k - 1) >= cap;
                let next_full = self.counted_in(k) >= cap;
                if !prev_full && !next_full {
                    return now;
                }
                let (_, hi) = self.learned.zone(k).unwrap_or_default();
                if next_full || self.probed == Some(k) {
                    // Only once surely in window k (or k + 1 when k is full too).
                    let after = if next_full { k + 1 } else { k };
                    let (_, h) = self.learned.zone(after).unwrap_or_default();
                    return (h.max(0) as Millis).max(now);
                }
                self.probe_point(k).max(now).min(hi.max(0) as Millis)
            }
        }
    }

    /// Where the first request around reset `k` goes: its middle while the bracket is wide
    /// (bisection: refused, it is window `k - 1`'s 429), else just after it. Not the middle if
    /// window `k - 1` had its 429 already: a second one there would break "one a window".
    fn probe_point(&self, k: i64) -> Millis {
        let (lo, hi) = self.learned.zone(k).unwrap_or_default();
        let spent = self
            .reqs
            .iter()
            .any(|r| r.refused && self.learned.may_be_in(r, k - 1));
        let t = if hi - lo > PRECISE as i64 && !spent {
            lo + (hi - lo) / 2
        } else {
            hi
        };
        t.max(0) as Millis
    }
}

/// How a request ended, as the learner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Answered, not 429 (OnCall counted it and had room).
    Accepted,
    /// A 429 naming this scope.
    Refused,
    /// Answered, but whether this scope counted it is unknown (a 5xx, a redirect).
    Other,
    /// Never reached this scope's counter: the organization's, for a request the
    /// integration's limit refused (OnCall checks the integration first).
    NotCounted,
    /// No answer: it may have arrived until the timeout.
    Unanswered,
}

impl Learner {
    pub fn new(started: Millis) -> Learner {
        Learner {
            started,
            ..Learner::default()
        }
    }

    /// Restores a scope's persisted learning.
    pub fn restore(&mut self, scope: Scope, learned: Learned) {
        self.scopes.entry(scope).or_default().learned = learned;
    }

    /// Requests sent before a restart (the limiter's persisted slots): counted in their
    /// windows like any other, outcome unknown.
    pub fn seed(&mut self, scope: &Scope, slots: impl IntoIterator<Item = (u64, Millis, Millis)>) {
        let st = self.scopes.entry(scope.clone()).or_default();
        for (id, sent, until) in slots {
            st.reqs.push(Req {
                id,
                sent,
                until,
                answered: true,
                refused: false,
                accepted: true,
                probe_of: None,
                window: None,
            });
        }
    }

    pub fn learned(&self, scope: &Scope) -> Option<&Learned> {
        self.scopes.get(scope).map(|s| &s.learned)
    }

    /// Every scope's learning (for persisting).
    pub fn all(&self) -> impl Iterator<Item = (&Scope, &Learned)> {
        self.scopes.iter().map(|(k, v)| (k, &v.learned))
    }

    /// Whether something changed since the last call, and the scopes forgotten meanwhile
    /// (then persist [`Learner::all`] and remove those).
    pub fn take_changes(&mut self) -> (bool, Vec<Scope>) {
        (
            std::mem::take(&mut self.dirty),
            std::mem::take(&mut self.forgotten),
        )
    }

    /// Forgets a scope (its budget changed).
    pub fn forget(&mut self, scope: &Scope) {
        if self.scopes.remove(scope).is_some() {
            self.dirty = true;
            self.forgotten.push(scope.clone());
        }
    }

    /// The next predicted reset after `now`, if the resets are known (for status).
    pub fn next_reset(&self, scope: &Scope, now: Millis) -> Option<Millis> {
        let l = &self.scopes.get(scope)?.learned;
        let k = match l.pos(now)? {
            Pos::In(k) => k + 1,
            Pos::Reset(k) => k,
        };
        let (_, hi) = l.zone(k)?;
        Some(hi.max(0) as Millis)
    }

    /// The earliest time at or after `now` a request may leave that spends every scope in
    /// `scopes`.
    pub fn next_free(&mut self, scopes: &[Scope], now: Millis) -> Millis {
        let mut at = now;
        for s in scopes {
            if let Some(st) = self.scopes.get_mut(s) {
                if let Some(Pos::In(k)) = st.learned.pos(now) {
                    st.tally(k);
                }
                at = at.max(st.next_free(now));
            }
        }
        at
    }

    /// [`Learner::next_free`] without counting a window's use (for planning the next wake).
    pub fn peek_next_free(&self, scopes: &[Scope], now: Millis) -> Millis {
        scopes
            .iter()
            .filter_map(|s| self.scopes.get(s))
            .map(|st| st.next_free(now))
            .max()
            .unwrap_or(now)
    }

    /// When a probe should go after a 429 in `scope` at `now`, if the resets are known: past
    /// the reset just probed, else the next predicted reset's probe point.
    pub fn resume_at(&self, scope: &Scope, now: Millis) -> Option<Millis> {
        let st = self.scopes.get(scope)?;
        let t = match st.learned.pos(now)? {
            Pos::In(k) => st.probe_point(k + 1),
            Pos::Reset(k) if st.probed == Some(k) => st.learned.zone(k)?.1.max(0) as Millis,
            Pos::Reset(k) => st.probe_point(k),
        };
        Some(t.max(now))
    }

    /// A request leaves at `sent`, counted at most until `until`.
    pub fn sent(&mut self, scopes: &[Scope], id: u64, sent: Millis, until: Millis) {
        for s in scopes {
            let st = self.scopes.entry(s.clone()).or_default();
            let mut probe_of = None;
            if let Some(Pos::Reset(k)) = st.learned.pos(sent) {
                st.probed = Some(k);
                if st.cap().is_some_and(|c| st.counted_in(k - 1) >= c) {
                    probe_of = Some(k);
                }
            }
            st.reqs.retain(|r| r.until.saturating_add(KEEP) > sent);
            st.reqs.push(Req {
                id,
                sent,
                until,
                answered: false,
                refused: false,
                accepted: false,
                probe_of,
                window: None,
            });
        }
    }

    /// Request `id` of `scope` ended at `at` as `seen`.
    pub fn answered(&mut self, scope: &Scope, id: u64, at: Millis, seen: Seen) {
        let started = self.started;
        let Some(st) = self.scopes.get_mut(scope) else {
            return;
        };
        let before = st.learned.clone();
        let Some((i, r)) = st.record(id, at, seen) else {
            return;
        };
        match seen {
            Seen::Accepted => st.on_accepted(i, r),
            Seen::Refused => st.on_refused(r, started),
            Seen::Other | Seen::Unanswered | Seen::NotCounted => {}
        }
        if st.learned != before {
            self.dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Scope = Scope::Org;

    fn at_reset(lo: Millis, hi: Millis, limit: Option<u32>) -> Learner {
        let mut l = Learner::new(0);
        l.restore(
            S,
            Learned {
                reset: Some((lo, hi)),
                limit,
                clean: 0,
            },
        );
        l
    }

    #[test]
    fn a_refused_then_accepted_pair_brackets_the_reset_and_later_pairs_narrow_it() {
        let mut l = Learner::new(0);
        l.sent(&[S], 1, 10_000, 10_100);
        l.answered(&S, 1, 10_100, Seen::Refused);
        l.sent(&[S], 2, 25_000, 25_100);
        l.answered(&S, 2, 25_100, Seen::Accepted);
        assert_eq!(l.learned(&S).unwrap().reset, Some((10_000, 25_100)));
        // A window later: refused at 318 s, accepted at 322 s: (318_000, 322_100], shifted
        // by one window onto the first bracket, intersects to (18_000, 22_100].
        l.sent(&[S], 3, 318_000, 318_100);
        l.answered(&S, 3, 318_100, Seen::Refused);
        l.sent(&[S], 4, 322_000, 322_100);
        l.answered(&S, 4, 322_100, Seen::Accepted);
        assert_eq!(l.learned(&S).unwrap().reset, Some((18_000, 22_100)));
    }

    #[test]
    fn with_the_limit_known_a_window_takes_that_many_and_the_next_opens_at_its_reset() {
        let mut l = at_reset(99_000, 100_000, Some(3));
        // Window 0 runs from 100 s to 399 s.
        for (id, t) in [(1, 150_000), (2, 151_000), (3, 152_000)] {
            assert_eq!(l.next_free(&[S], t), t);
            l.sent(&[S], id, t, t + 100);
            l.answered(&S, id, t + 100, Seen::Accepted);
        }
        // Full: the next request waits for reset 1 (399..400 s: precise, so just after it).
        assert_eq!(l.next_free(&[S], 153_000), 400_000);
    }

    #[test]
    fn a_wide_bracket_is_probed_in_its_middle_and_halved_by_the_answer() {
        let mut l = at_reset(90_000, 110_000, Some(1));
        l.sent(&[S], 1, 150_000, 150_100);
        l.answered(&S, 1, 150_100, Seen::Accepted);
        // Window 0 is full: the probe goes at the middle of reset 1 (390..410 s).
        assert_eq!(l.next_free(&[S], 150_200), 400_000);
        l.sent(&[S], 2, 400_000, 400_100);
        l.answered(&S, 2, 400_100, Seen::Refused);
        // Refused: the reset was after 400 s. Nothing more until surely past it.
        assert_eq!(l.learned(&S).unwrap().reset, Some((100_000, 110_000)));
        assert_eq!(l.next_free(&[S], 400_200), 410_000);
    }

    #[test]
    fn the_limit_is_learned_lowered_raised_and_the_phase_forgotten_when_wrong() {
        // Learned: 3 accepted before the first 429 of a window.
        let mut l = at_reset(99_000, 100_000, None);
        for (id, t) in [(1, 150_000), (2, 151_000), (3, 152_000)] {
            l.sent(&[S], id, t, t + 100);
            l.answered(&S, id, t + 100, Seen::Accepted);
        }
        l.sent(&[S], 4, 153_000, 153_100);
        l.answered(&S, 4, 153_100, Seen::Refused);
        assert_eq!(l.learned(&S).unwrap().limit, Some(3));
        // Lowered: a 429 after 2 in the next window.
        for (id, t) in [(5, 450_000), (6, 451_000)] {
            l.sent(&[S], id, t, t + 100);
            l.answered(&S, id, t + 100, Seen::Accepted);
        }
        l.sent(&[S], 7, 452_000, 452_100);
        l.answered(&S, 7, 452_100, Seen::Refused);
        assert_eq!(l.learned(&S).unwrap().limit, Some(2));
        // Raised: three clean full windows, then a third request accepted.
        let mut id = 10;
        for w in 2..5u64 {
            for j in 0..2 {
                let t = 100_000 + w * WINDOW + 10_000 + j * 1_000;
                assert_eq!(l.next_free(&[S], t), t, "window {w}");
                l.sent(&[S], id, t, t + 100);
                l.answered(&S, id, t + 100, Seen::Accepted);
                id += 1;
            }
        }
        let w5 = 100_000 + 5 * WINDOW;
        for j in 0..3 {
            let t = w5 + 10_000 + j * 1_000;
            assert_eq!(l.next_free(&[S], t), t, "upward probe {j}");
            l.sent(&[S], id, t, t + 100);
            l.answered(&S, id, t + 100, Seen::Accepted);
            id += 1;
        }
        assert_eq!(l.learned(&S).unwrap().limit, Some(3));
        // The first request of a window refused: the phase is forgotten, the limit kept.
        let w6 = 100_000 + 6 * WINDOW;
        l.sent(&[S], id, w6 + 5_000, w6 + 5_100);
        l.answered(&S, id, w6 + 5_100, Seen::Refused);
        let learned = l.learned(&S).unwrap();
        assert_eq!((learned.reset, learned.limit), (None, Some(3)));
    }
}
