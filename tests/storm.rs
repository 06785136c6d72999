//! Alert storms against a fake OnCall that enforces its limits the way the engine does (fixed
//! windows at a phase the agent cannot see), on tokio's paused clock: the budget guarantee
//! proven over random arrivals, latencies, failures, restarts and rate changes; the budgets
//! used to at least 99 % for an hour; restarts that do not open a second budget; and a server
//! stricter than the agent that still gets every alert, politely.
//!
//! The long report with the one-hour, 20,000-alert figures is `examples/storm.rs`.

mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use sim::*;
use tokio::sync::{mpsc, watch};

/// The dispatcher used to spin at 100 % CPU, forever, once the sender of its shutdown signal
/// was dropped without sending `true` (`changed()` then fails at once, every time). A dropped
/// sender now means "stop".
#[test]
fn dispatcher_stops_instead_of_spinning_when_its_shutdown_sender_is_dropped() {
    let (tx, rx) = std::sync::mpsc::channel();
    // Its own thread and runtime: if the loop spins, the test fails on the deadline below
    // instead of hanging.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let stopped = rt.block_on(async {
            let mut sim = Sim::new(
                &[("a", rate(300, 300))],
                rate(500, 300),
                default_delivery(),
                1,
            );
            sim.queue("a", 3);
            sim.sync();
            let d = sim.dispatcher();
            let (_control, control_rx) = mpsc::channel(1);
            let (shutdown, shutdown_rx) = watch::channel(false);
            drop(shutdown);
            d.run(control_rx, shutdown_rx).await.is_ok()
        });
        let _ = tx.send(stopped);
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)),
        Ok(true),
        "the dispatcher did not stop after its shutdown sender was dropped"
    );
}

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;

/// Requests sent in `[from, to)` (ms after T0), by one integration or all.
fn sent_in(hits: &[Hit], integration: Option<&str>, from: u64, to: u64) -> usize {
    sends(hits, integration)
        .into_iter()
        .filter(|&t| t >= from && t < to)
        .count()
}

/// Arrival times at the server, by one integration or all.
fn arrivals(hits: &[Hit], integration: Option<&str>) -> Vec<u64> {
    hits.iter()
        .filter(|h| integration.is_none_or(|i| h.integration == i))
        .filter_map(|h| h.arrived)
        .collect()
}

fn storm_network() -> Network {
    Network {
        up: (20, 80),
        down: (20, 80),
        ..Network::fixed(0, 0)
    }
}

/// No fixed window of any phase at the server saw more than a budget allows.
fn assert_within_budgets(sim: &Sim) {
    let hits = sim.fake.hits();
    for t in &sim.cfg.targets {
        let w = t.rate.per.as_millis() as u64;
        let max = max_in_any_window(&arrivals(&hits, Some(&t.name)), w);
        assert!(
            max <= t.rate.count as usize,
            "{}: {max} in one window",
            t.name
        );
    }
    let w = sim.cfg.org.per.as_millis() as u64;
    let max = max_in_any_window(&arrivals(&hits, None), w);
    assert!(
        max <= sim.cfg.org.count as usize,
        "org: {max} in one window"
    );
}

fn count_429(sim: &Sim) -> usize {
    sim.fake.hits().iter().filter(|h| h.status == 429).count()
}

/// Three integrations with more queued than the org budget can send in an hour: the org budget
/// binds, is used to at least 99 %, and round-robin shares it evenly; OnCall, enforcing the
/// same limits at phases of its own, never has to refuse anything.
///
/// Budgets and queues are divided by `scale`, windows stay 5 min: CI runs 30/5m and 50/5m
/// (a debug build pays ~3 ms per delivery), the ignored test the production defaults.
async fn hour_of_storm_bound_by_the_org(scale: u32) {
    let n = 300 / scale;
    let org = 500 / scale;
    let ints = [
        ("a", rate(n, 300)),
        ("b", rate(n, 300)),
        ("c", rate(n, 300)),
    ];
    let mut sim = Sim::new(&ints, rate(org, 300), default_delivery(), 7);
    sim.fake.set_network(storm_network());
    sim.fake_limits_equal_to_agent();
    let per_hour = 12 * org as u64;
    sim.queue("a", per_hour / 2);
    sim.queue("b", per_hour * 2 / 5);
    sim.queue("c", per_hour * 7 / 20);
    sim.sync();
    sim.start();
    sim.run_until(HOUR).await;

    let hits = sim.fake.hits();
    assert_eq!(count_429(&sim), 0);
    assert_within_budgets(&sim);
    let sent = sent_in(&hits, None, 0, HOUR) as u64;
    assert!(sent <= per_hour);
    assert!(
        sent as f64 >= 0.99 * per_hour as f64,
        "org sent {sent} of {per_hour}"
    );
    // Round-robin gives each the same share of every window, give or take the requests in
    // flight when the window's slots free in a burst (concurrency 4).
    let share = org as usize / 3;
    for (name, _) in ints {
        for w in 0..12 {
            let got = sent_in(&hits, Some(name), w * 300_000, (w + 1) * 300_000);
            assert!(got + 4 >= share, "{name} got {got} of window {w}'s {org}");
        }
        let got = sent_in(&hits, Some(name), 0, HOUR) as f64;
        assert!(
            got >= 0.95 * per_hour as f64 / 3.0,
            "{name} got {got} of the org's {per_hour}"
        );
    }
}

/// With room in the org budget (the engine's own default, 900/5m), each integration's budget
/// binds and is used to at least 99 % for the hour. Scaled like the test above.
async fn hour_of_storm_bound_by_each_integration(scale: u32) {
    let n = 300 / scale;
    let ints = [
        ("a", rate(n, 300)),
        ("b", rate(n, 300)),
        ("c", rate(n, 300)),
    ];
    let mut sim = Sim::new(&ints, rate(900 / scale, 300), default_delivery(), 8);
    sim.fake.set_network(storm_network());
    sim.fake_limits_equal_to_agent();
    let per_hour = 12 * n as u64;
    for (name, _) in ints {
        sim.queue(name, per_hour + 100);
    }
    sim.sync();
    sim.start();
    sim.run_until(HOUR).await;

    let hits = sim.fake.hits();
    assert_eq!(count_429(&sim), 0);
    assert_within_budgets(&sim);
    for (name, _) in ints {
        let sent = sent_in(&hits, Some(name), 0, HOUR) as u64;
        assert!(sent <= per_hour);
        assert!(
            sent as f64 >= 0.99 * per_hour as f64,
            "{name} sent {sent} of {per_hour}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_hour_of_storm_uses_99_percent_of_the_org_budget_fairly_with_no_429() {
    hour_of_storm_bound_by_the_org(10).await;
}

#[tokio::test(start_paused = true)]
async fn per_integration_budgets_are_used_to_99_percent_for_an_hour_when_the_org_allows() {
    hour_of_storm_bound_by_each_integration(10).await;
}

/// The same hours at the production defaults, 300/5m and 500/5m (~1 min in a debug build):
/// `cargo test --test storm -- --ignored`.
#[tokio::test(start_paused = true)]
#[ignore = "slow in a debug build; examples/storm.rs reports the same at full scale"]
async fn an_hour_of_storm_at_the_default_budgets() {
    hour_of_storm_bound_by_the_org(1).await;
    hour_of_storm_bound_by_each_integration(1).await;
}

/// Crashes (in-flight requests still land, nothing is flushed on the way out), a reopen of the
/// database from disk and a clean stop, each followed by a new dispatcher, in the middle of the
/// first window: the limiter reloads from sled, so no window sees a second budget.
#[tokio::test(start_paused = true)]
async fn restarting_mid_storm_does_not_open_a_second_budget_inside_one_window() {
    let ints = [("a", rate(300, 300)), ("b", rate(300, 300))];
    let mut sim = Sim::new(&ints, rate(500, 300), default_delivery(), 9);
    sim.fake.set_network(storm_network());
    sim.fake_limits_equal_to_agent();
    sim.queue("a", 600);
    sim.queue("b", 600);
    sim.sync();
    sim.start();
    // The first window's 500 go out within ~7 s; crash in the middle of that burst, then
    // restart in all three ways while the window lasts.
    sim.run_until(2_000).await;
    sim.crash().await;
    sim.start();
    sim.run_until(100_000).await;
    sim.crash_and_reopen().await;
    sim.run_until(200_000).await;
    sim.stop().await;
    sim.start();
    sim.run_until(10 * MINUTE).await;

    let hits = sim.fake.hits();
    assert_eq!(count_429(&sim), 0);
    assert_within_budgets(&sim);
    assert!(sent_in(&hits, None, 0, 300_000) <= 500);
    // And no budget was lost by restarting: two windows' worth went out.
    assert!(sent_in(&hits, None, 0, 10 * MINUTE) >= 990);
}

/// The check above has teeth: a dispatcher that forgot what was sent before a restart sends a
/// second budget into the same window, and OnCall refuses it.
#[tokio::test(start_paused = true)]
async fn forgetting_the_limiter_state_on_restart_would_send_a_second_budget() {
    let ints = [("a", rate(300, 300))];
    let mut sim = Sim::new(&ints, rate(500, 300), default_delivery(), 9);
    sim.fake.set_network(storm_network());
    sim.fake_limits_equal_to_agent();
    sim.queue("a", 1_000);
    sim.sync();
    sim.start();
    sim.run_until(100_000).await;
    sim.stop().await;
    sim.store.limiter_tree().clear().unwrap();
    sim.start();
    sim.run_until(200_000).await;
    let hits = sim.fake.hits();
    assert!(max_in_any_window(&arrivals(&hits, Some("a")), 300_000) > 300);
}

/// OnCall's limits are lower than the agent's budgets (another host shares them, or Grafana
/// Cloud set them lower): 429s come, the agent pauses and probes once per probe interval, one
/// request at a time, and every alert is still delivered. (Pause-and-probe alone, learning off:
/// tests/learn.rs has the same storm with learning.)
#[tokio::test(start_paused = true)]
async fn oncall_stricter_than_the_agent_still_gets_every_alert_with_one_probe_per_interval() {
    let ints = [
        ("a", rate(300, 300)),
        ("b", rate(300, 300)),
        ("c", rate(300, 300)),
    ];
    let mut d = default_delivery();
    d.learn = false;
    let mut sim = Sim::new(&ints, rate(500, 300), d, 10);
    sim.fake.set_network(storm_network());
    sim.fake.limit_integration("a", rate(200, 300));
    sim.fake.limit_integration("b", rate(250, 300));
    sim.fake.limit_integration("c", rate(250, 300));
    sim.fake.limit_org(rate(400, 300));
    sim.queue("a", 400);
    sim.queue("b", 300);
    sim.queue("c", 200);
    sim.sync();
    sim.start();
    assert!(sim.run_until_drained(2 * HOUR).await, "not drained");
    assert!(sim.all_delivered());

    let hits = sim.fake.hits();
    let spans = check_pauses(&hits, 15_000, &sim.starts).unwrap();
    assert!(!spans.is_empty());
    for s in &spans {
        // The requests in flight when the first 429 came (at most 4 per integration, 12 in
        // all), then at most one per probe.
        assert!(s.refused <= 12 + s.probes.len(), "{s:?}");
    }
    let b = sim.board();
    let counted: u64 = b.org.rate_limited_total
        + b.integrations
            .values()
            .map(|i| i.budget.rate_limited_total)
            .sum::<u64>();
    assert_eq!(counted as usize, count_429(&sim));
}

/// One random scenario for the scheduler-level proof.
#[derive(Debug, Clone)]
struct Plan {
    /// Each integration's (count, window in s), then the org's.
    rates: [(u32, u64); 3],
    org: (u32, u64),
    /// Alerts arriving: (integration, ms after the start, how many).
    bursts: Vec<(usize, u64, u64)>,
    /// What happens to the daemon, and when.
    events: Vec<(u64, Event)>,
    network: Network,
    concurrency: usize,
    probe_s: u64,
    retry_initial_ms: u64,
    retry_max_factor: u32,
    /// The fake's limits one below the agent's lowest budget (else equal to its highest).
    stricter_server: bool,
    /// Grouping keys per integration (alerts with one key go one at a time, in order); 0: a
    /// key per alert.
    keys: u64,
    seed: u64,
}

#[derive(Debug, Clone)]
enum Event {
    Crash,
    CrashAndReopen,
    Stop,
    /// New counts for the three integrations and the org (windows unchanged).
    Reload([u32; 3], u32),
    /// A reload without this integration (its queue stays, it sends nothing) ...
    Drop(usize),
    /// ... and one with every integration back.
    Readd,
}

fn plan() -> impl Strategy<Value = Plan> {
    let rate = || (1u32..=6, 2u64..=15);
    let event = prop_oneof![
        Just(Event::Crash),
        Just(Event::CrashAndReopen),
        Just(Event::Stop),
        ([1u32..=6, 1u32..=6, 1u32..=6], 1u32..=10).prop_map(|(i, o)| Event::Reload(i, o)),
        (0usize..3).prop_map(Event::Drop),
        Just(Event::Readd),
    ];
    let network = (
        0u64..150,
        0u64..400,
        0u64..150,
        0u64..400,
        0.0f64..0.1,
        0.0f64..0.1,
        0.0f64..0.2,
        500u64..3_000,
    )
        .prop_map(
            |(u, du, d, dd, refused, lost, server_error, timeout)| Network {
                up: (u, u + du),
                down: (d, d + dd),
                refused,
                lost,
                server_error,
                timeout,
            },
        );
    (
        [rate(), rate(), rate()],
        (1u32..=10, 2u64..=15),
        proptest::collection::vec((0usize..3, 0u64..60_000, 1u64..=25), 1..10),
        proptest::collection::vec((0u64..90_000, event), 0..6),
        network,
        1usize..=4,
        1u64..=5,
        100u64..=1_000,
        1u32..=8,
        proptest::bool::weighted(0.3),
        prop_oneof![Just(0u64), 1u64..=4],
        any::<u64>(),
    )
        .prop_map(
            |(
                rates,
                org,
                bursts,
                events,
                network,
                concurrency,
                probe_s,
                retry_initial_ms,
                retry_max_factor,
                stricter_server,
                keys,
                seed,
            )| Plan {
                rates,
                org,
                bursts,
                events,
                network,
                concurrency,
                probe_s,
                retry_initial_ms,
                retry_max_factor,
                stricter_server,
                keys,
                seed,
            },
        )
}

const NAMES: [&str; 3] = ["a", "b", "c"];

/// Runs a plan on a paused clock; checks the guarantee at the fake server.
fn run_plan(p: Plan) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let delivery = oncall_agent::config::Delivery {
            timeout: Duration::from_millis(p.network.timeout),
            retry_initial: Duration::from_millis(p.retry_initial_ms),
            retry_max: Duration::from_millis(p.retry_initial_ms * p.retry_max_factor as u64),
            probe_interval: Duration::from_secs(p.probe_s),
            max_retry_after: Duration::from_secs(600),
            // The fake's windows here are the plan's (seconds, not OnCall's 300 s), which the
            // learner would mispredict; it is proven on 300 s windows in tests/learn.rs. This
            // checks pause-and-probe, what the agent does before it has learned anything.
            learn: false,
            concurrency: p.concurrency,
        };
        let ints: Vec<(&str, oncall_agent::config::Rate)> = NAMES
            .iter()
            .zip(p.rates)
            .map(|(n, (c, w))| (*n, rate(c, w)))
            .collect();
        let mut sim = Sim::new(&ints, rate(p.org.0, p.org.1), delivery, p.seed);
        sim.fake.set_network(p.network.clone());

        // The server: stricter than the agent ever is, or as lenient as its highest budget
        // (then it must never answer 429).
        let reloads = p.events.iter().filter_map(|(_, e)| match e {
            Event::Reload(i, o) => Some((*i, *o)),
            _ => None,
        });
        let mut lo = (p.rates.map(|r| r.0), p.org.0);
        let mut hi = lo;
        for (i, o) in reloads {
            for (k, c) in i.into_iter().enumerate() {
                lo.0[k] = lo.0[k].min(c);
                hi.0[k] = hi.0[k].max(c);
            }
            lo.1 = lo.1.min(o);
            hi.1 = hi.1.max(o);
        }
        let server = |hi: u32, lo: u32| {
            if p.stricter_server {
                (lo - 1).max(1)
            } else {
                hi
            }
        };
        for (k, name) in NAMES.iter().enumerate() {
            let c = server(hi.0[k], lo.0[k]);
            sim.fake.limit_integration(name, rate(c, p.rates[k].1));
        }
        sim.fake.limit_org(rate(server(hi.1, lo.1), p.org.1));

        // Arrivals and events in time order.
        enum Step {
            Arrive(usize, u64),
            Do(Event),
        }
        let mut steps: Vec<(u64, Step)> = p
            .bursts
            .iter()
            .map(|&(i, at, n)| (at, Step::Arrive(i, n)))
            .chain(p.events.iter().map(|(at, e)| (*at, Step::Do(e.clone()))))
            .collect();
        steps.sort_by_key(|s| s.0);
        let mut dropped = Vec::new();
        let mut keyed: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        sim.start();
        for (at, step) in steps {
            sim.run_until(at).await;
            match step {
                Step::Arrive(i, n) => {
                    let uids: Vec<String> = (0..n)
                        .map(|k| match p.keys {
                            0 => format!("{}-{}-{k}", NAMES[i], sim.clock.now()),
                            keys => format!("{}-key{}", NAMES[i], k % keys),
                        })
                        .collect();
                    for (n, uid) in sim.queue_keyed(NAMES[i], &uids).into_iter().zip(uids) {
                        keyed.entry(uid).or_default().push(n);
                    }
                }
                // A new process starts a moment after the old one died.
                Step::Do(Event::Crash) => {
                    sim.crash().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    sim.start();
                }
                Step::Do(Event::CrashAndReopen) => {
                    sim.crash().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    sim.crash_and_reopen_stopped().await;
                }
                Step::Do(Event::Stop) => {
                    sim.stop().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    sim.start();
                }
                Step::Do(Event::Drop(i)) => {
                    if let Some(k) = sim.cfg.targets.iter().position(|t| t.name == NAMES[i]) {
                        dropped.push(sim.cfg.targets.remove(k));
                    }
                    let org = sim.cfg.org;
                    sim.reload(&[], org).await;
                }
                Step::Do(Event::Readd) => {
                    sim.cfg.targets.append(&mut dropped);
                    let org = sim.cfg.org;
                    sim.reload(&[], org).await;
                }
                Step::Do(Event::Reload(i, o)) => {
                    let ints: Vec<(&str, oncall_agent::config::Rate)> = NAMES
                        .iter()
                        .zip(i)
                        .zip(p.rates)
                        .map(|((n, c), (_, w))| (*n, rate(c, w)))
                        .collect();
                    sim.reload(&ints, rate(o, p.org.1)).await;
                }
            }
        }
        // Every integration is back for the end, so that every alert can go.
        sim.cfg.targets.append(&mut dropped);
        let org = sim.cfg.org;
        sim.reload(&[], org).await;
        let drained = sim.run_until_drained(6 * 3_600_000).await;
        prop_assert!(drained, "not drained in 6 h; {} left", sim.queue_depth());
        prop_assert!(sim.all_delivered());
        // Per grouping key, OnCall first saw the alerts in the order they were queued.
        let mut first_seen: Vec<u64> = Vec::new();
        for h in sim.fake.hits() {
            if h.status == 200 && !first_seen.contains(&h.alert) {
                first_seen.push(h.alert);
            }
        }
        for (uid, queued) in &keyed {
            let seen: Vec<u64> = first_seen
                .iter()
                .copied()
                .filter(|n| queued.contains(n))
                .collect();
            prop_assert_eq!(&seen, queued, "order of key {}", uid);
        }

        let hits = sim.fake.hits();
        for name in NAMES {
            check_budget(&hits, &sim.history, Some(name)).map_err(TestCaseError::fail)?;
        }
        check_budget(&hits, &sim.history, None).map_err(TestCaseError::fail)?;
        let refused = hits.iter().filter(|h| h.status == 429).count();
        if !p.stricter_server {
            prop_assert_eq!(refused, 0, "429s from a server as lenient as the agent");
        }
        let spans =
            check_pauses(&hits, p.probe_s * 1000, &sim.starts).map_err(TestCaseError::fail)?;
        if std::env::var("SIM_STATS").is_ok() {
            eprintln!(
                "hits {} 429 {} pauses {} starts {} reloads {} end {}s strict {}",
                hits.len(),
                refused,
                spans.len(),
                sim.starts.len(),
                sim.history.len(),
                (sim.clock.now() - T0) / 1000,
                p.stricter_server
            );
        }
        Ok(())
    })
}

proptest! {
    // PROPTEST_CASES=2000 for a longer hunt; SIM_STATS=1 prints the size of each case.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40),
        ..ProptestConfig::default()
    })]

    /// The scheduler-level proof of the guarantee: random arrivals, latencies, lost answers,
    /// refused connections and 5xx, crashes, restarts from disk, clean restarts, budget
    /// changes and integrations dropped from the config and added back; a server whose fixed windows have random phases never sees, in any window,
    /// more than the budget in force (per integration and org-wide), and when its limits are
    /// no lower than the agent's it never answers 429. When they are lower, the agent's pauses
    /// keep one probe per interval with nothing else in flight. Every alert gets through.
    #[test]
    fn the_scheduler_never_exceeds_a_budget_in_any_window(p in plan()) {
        run_plan(p)?;
    }
}

/// The limiter used to delete, at start-up, the slots of every integration the config no
/// longer had. Restarted once without an integration and again with it (within one window),
/// the agent forgot what it had sent there and spent a second budget in the same window.
#[tokio::test(start_paused = true)]
async fn an_integration_dropped_from_the_config_across_a_restart_keeps_its_spent_budget() {
    let ints = [("a", rate(3, 60)), ("b", rate(3, 60))];
    let mut sim = Sim::new(&ints, rate(500, 300), default_delivery(), 11);
    sim.fake.set_network(Network::fixed(40, 60));
    sim.fake_limits_equal_to_agent();
    sim.queue("a", 10);
    sim.sync();
    sim.start();
    sim.run_until(1_000).await;
    assert_eq!(sim.fake.hits().len(), 3);
    // Restart without "a" (its queue is kept, nothing of it is sent) ...
    sim.stop().await;
    let a = sim.cfg.targets.remove(0);
    sim.start();
    sim.run_until(2_000).await;
    // ... and again with it, as an operator undoing a mistake would.
    sim.stop().await;
    sim.cfg.targets.insert(0, a.clone());
    sim.start();
    sim.run_until(5_000).await;
    // And the same through a reload instead of the second restart.
    sim.stop().await;
    sim.cfg.targets.remove(0);
    sim.start();
    sim.run_until(6_000).await;
    sim.cfg.targets.insert(0, a);
    let cfg = sim.cfg.clone();
    sim.reload(&[], cfg.org).await;
    sim.run_until(200_000).await;

    let hits = sim.fake.hits();
    assert_eq!(count_429(&sim), 0);
    assert_eq!(
        sends(&hits, Some("a")),
        [
            0, 0, 0, 60_100, 60_100, 60_100, 120_200, 120_200, 120_200, 180_300
        ]
    );
}

/// An integration dropped by a reload while it had a request in flight, and re-added: alerts
/// queued ahead of the one in flight (held back by their grouping key) must still go out.
#[tokio::test(start_paused = true)]
async fn an_integration_dropped_and_readded_by_reload_with_a_request_in_flight_delivers_everything()
{
    let ints = [("a", rate(300, 300))];
    let mut sim = Sim::new(&ints, rate(500, 300), default_delivery(), 12);
    sim.fake.set_network(Network::fixed(500, 500));
    let uids: Vec<String> = ["x", "x", "y"].iter().map(|s| s.to_string()).collect();
    sim.queue_keyed("a", &uids);
    sim.sync();
    sim.start();
    sim.run_until(100).await;
    assert_eq!(
        sim.fake.hits().len(),
        2,
        "the first of each key is in flight"
    );
    let a = sim.cfg.targets.remove(0);
    let org = sim.cfg.org;
    sim.reload(&[], org).await;
    sim.run_until(2_000).await;
    sim.cfg.targets.push(a);
    sim.reload(&[], org).await;
    assert!(
        sim.run_until_drained(60_000).await,
        "{} left",
        sim.queue_depth()
    );
    assert!(sim.all_delivered());
}
