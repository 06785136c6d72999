//! Learning OnCall's hidden windows (src/sender/learn.rs) through the real dispatcher, on
//! tokio's paused clock, against tests/sim's OnCall: fixed 300 s windows at a random phase per
//! scope, with limits below, at or above the agent's budget. After the first limited window,
//! at most one 429 per window per scope; every alert delivered, in order; the agent's own
//! budget still holds.

mod sim;

use std::collections::BTreeMap;

use oncall_agent::clock::Millis;
use oncall_agent::ratelimit::WIDEST_FIRST;
use proptest::prelude::*;
use sim::*;

const W: Millis = 300_000;
const HOUR: Millis = 3_600_000;

/// 429s per OnCall window of one scope: the integration `name`'s, or the org's (`None`).
fn refusals_per_window(hits: &[Hit], scope: Option<&str>, phase: Millis) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for h in hits.iter().filter(|h| h.status == 429) {
        let mine = match scope {
            Some(n) => !h.org_limited && h.integration == n,
            None => h.org_limited,
        };
        if mine {
            *m.entry((h.arrived.unwrap() + phase) / W).or_default() += 1;
        }
    }
    m
}

/// After the first window with a 429, no window has more than one.
fn at_most_one_after_the_first(m: &BTreeMap<u64, usize>) -> Result<(), String> {
    let late: Vec<(&u64, &usize)> = m.iter().skip(1).filter(|(_, n)| **n > 1).collect();
    if late.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "more than one 429 in a window after the first: {m:?}"
        ))
    }
}

/// The OnCall window (by `phase`) in which the agent could first see a reset of this scope,
/// by its own rule (src/sender/learn.rs): a refused request, then an accepted one sent after
/// the refused one's answer and answered at most `WIDEST_FIRST` after the refused one's send.
fn first_seen_reset(hits: &[Hit], scope: Option<&str>, phase: Millis) -> Option<u64> {
    let of_scope = |h: &&Hit| scope.is_none_or(|n| h.integration == n);
    let mut refused: Option<(Millis, Millis)> = None;
    let mut sorted: Vec<&Hit> = hits
        .iter()
        .filter(of_scope)
        .filter(|h| h.done.is_some())
        .collect();
    sorted.sort_by_key(|h| h.done);
    for h in sorted {
        let done = h.done.unwrap();
        let mine = h.status == 429 && scope.is_some() != h.org_limited;
        if mine {
            refused = Some(refused.map_or((h.sent, done), |(s, u)| (s.max(h.sent), u.max(done))));
        } else if h.status == 200
            && let Some((s, u)) = refused
            && h.sent >= u
        {
            if done - s <= WIDEST_FIRST {
                return Some((h.arrived.unwrap() + phase) / W);
            }
            refused = None;
        }
    }
    None
}

/// From the window after the one where a reset was first seen, no window has more than one
/// 429. (Before it the agent probes every `probe_interval`, as without learning; the first
/// limited window is usually that window, but not when the org's budget held a paused
/// integration's probes back for a whole window.)
fn at_most_one_once_seen(hits: &[Hit], scope: Option<&str>, phase: Millis) -> Result<(), String> {
    let m = refusals_per_window(hits, scope, phase);
    let Some(seen) = first_seen_reset(hits, scope, phase) else {
        return Ok(());
    };
    let late: Vec<(&u64, &usize)> = m.range(seen + 1..).filter(|(_, n)| **n > 1).collect();
    if late.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "more than one 429 in a window after the reset was seen (window {seen}): {m:?}"
        ))
    }
}

fn in_order(sim: &Sim) -> Result<(), String> {
    for (name, got) in sim.delivered() {
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<u64> = got.into_iter().filter(|n| seen.insert(*n)).collect();
        if !firsts.is_sorted() {
            return Err(format!("{name}: out of order"));
        }
    }
    Ok(())
}

/// OnCall takes 20 per window from an integration the agent may send 300 to: after the first
/// limited window, one 429 per window at most; the limit is learned as 20; the whole real
/// budget is used (200 alerts in about ten windows, not the ~16 that probing every 15 s from a
/// spent window to the next takes).
#[tokio::test(start_paused = true)]
async fn a_stricter_integration_limit_is_learned_and_refuses_at_most_once_a_window() {
    let mut sim = Sim::new(
        &[("a", rate(300, 300))],
        rate(500, 300),
        default_delivery(),
        3,
    );
    sim.fake.set_network(Network::fixed(40, 60));
    let phase = sim.fake.limit_integration("a", rate(20, 300));
    sim.queue("a", 200);
    sim.sync();
    sim.start();
    assert!(sim.run_until_drained(2 * HOUR).await, "not drained");
    let hits = sim.fake.hits();
    let m = refusals_per_window(&hits, Some("a"), phase);
    at_most_one_after_the_first(&m).unwrap();
    in_order(&sim).unwrap();
    assert!(sim.all_delivered());
    let b = sim.board();
    assert_eq!(b.integrations["a"].budget.learned_limit, Some(20), "{m:?}");
    assert!(b.integrations["a"].budget.learned_reset_in_s.is_some());
    // 200 at 20 a window: 10 windows plus the first, partly used, and the learning.
    let last = hits.iter().filter_map(|h| h.done).max().unwrap() - T0;
    assert!(last < 12 * W, "drained only after {}s", last / 1000);
    check_budget(&hits, &sim.history, Some("a")).unwrap();
}

/// What was learned is kept in sled: a restart (a crash, even) goes on at one 429 a window
/// at most, without relearning from a storm of probes.
#[tokio::test(start_paused = true)]
async fn what_was_learned_survives_a_restart() {
    let mut sim = Sim::new(
        &[("a", rate(300, 300))],
        rate(500, 300),
        default_delivery(),
        4,
    );
    sim.fake.set_network(Network::fixed(40, 60));
    let phase = sim.fake.limit_integration("a", rate(15, 300));
    sim.queue("a", 150);
    sim.sync();
    sim.start();
    sim.run_until(4 * W).await;
    let before = sim.board().integrations["a"].budget.learned_limit;
    assert_eq!(before, Some(15));
    sim.crash_and_reopen().await;
    sim.run_until(4 * W + 1_000).await;
    assert_eq!(sim.board().integrations["a"].budget.learned_limit, Some(15));
    assert!(sim.run_until_drained(3 * HOUR).await, "not drained");
    let m = refusals_per_window(&sim.fake.hits(), Some("a"), phase);
    at_most_one_after_the_first(&m).unwrap();
    in_order(&sim).unwrap();
}

/// The organization's limit is learned from its own 429s, shared by the integrations; a
/// reload that changes the org budget forgets it.
#[tokio::test(start_paused = true)]
async fn the_org_limit_is_learned_and_a_budget_change_forgets_it() {
    let ints = [("a", rate(300, 300)), ("b", rate(300, 300))];
    let mut sim = Sim::new(&ints, rate(500, 300), default_delivery(), 5);
    sim.fake.set_network(Network::fixed(40, 60));
    let phase = sim.fake.limit_org(rate(30, 300));
    sim.queue("a", 120);
    sim.queue("b", 120);
    sim.sync();
    sim.start();
    assert!(sim.run_until_drained(3 * HOUR).await, "not drained");
    let hits = sim.fake.hits();
    at_most_one_after_the_first(&refusals_per_window(&hits, None, phase)).unwrap();
    in_order(&sim).unwrap();
    assert_eq!(sim.board().org.learned_limit, Some(30));
    sim.reload(&ints, rate(400, 300)).await;
    let t = sim.clock.now() - T0;
    sim.run_until(t + 1_000).await;
    assert_eq!(sim.board().org.learned_limit, None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 20, ..ProptestConfig::default() })]

    /// Random phases and hidden limits per scope, below, at and above the agent's budget:
    /// every alert delivered in order, at most one 429 per window per scope once its reset
    /// was seen, and the agent's budgets hold at the server.
    #[test]
    fn learning_keeps_every_guarantee_whatever_the_hidden_limits(
        seed in 0u64..10_000,
        int_limits in proptest::array::uniform2(prop_oneof![5u32..40, Just(60u32), 61u32..100]),
        org_limit in prop_oneof![20u32..60, Just(100u32), 101u32..200],
        queued in proptest::array::uniform2(50u64..300),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let ints = [("a", rate(60, 300)), ("b", rate(60, 300))];
            let mut sim = Sim::new(&ints, rate(100, 300), default_delivery(), seed);
            sim.fake.set_network(Network::fixed(40, 60));
            let pa = sim.fake.limit_integration("a", rate(int_limits[0], 300));
            let pb = sim.fake.limit_integration("b", rate(int_limits[1], 300));
            let po = sim.fake.limit_org(rate(org_limit, 300));
            sim.queue("a", queued[0]);
            sim.queue("b", queued[1]);
            sim.sync();
            sim.start();
            prop_assert!(sim.run_until_drained(6 * HOUR).await, "not drained");
            prop_assert!(sim.all_delivered());
            in_order(&sim).map_err(TestCaseError::fail)?;
            let hits = sim.fake.hits();
            for (scope, phase) in [(Some("a"), pa), (Some("b"), pb), (None, po)] {
                at_most_one_once_seen(&hits, scope, phase)
                    .map_err(|e| TestCaseError::fail(format!("{scope:?}: {e}")))?;
            }
            check_budget(&hits, &sim.history, Some("a")).map_err(TestCaseError::fail)?;
            check_budget(&hits, &sim.history, Some("b")).map_err(TestCaseError::fail)?;
            check_budget(&hits, &sim.history, None).map_err(TestCaseError::fail)?;
            Ok(())
        })?;
    }
}
