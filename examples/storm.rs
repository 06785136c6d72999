//! The one-hour alert storm behind the `## Rate limits` figures in BENCHMARKS.md:
//!
//!     cargo run --release --example storm
//!
//! 20,000 alerts reach 3 integrations during one hour (8,000 in the first minute, the rest
//! spread over the hour; 10,000 / 6,000 / 4,000 per integration). The real dispatcher delivers
//! them, on tokio's paused clock, to an in-process fake OnCall that enforces django-ratelimit
//! fixed windows at a random phase per scope (tests/sim), with 40..160 ms round trips. Runs:
//!
//! 1. OnCall's limits equal the agent's budgets (300/5m per integration, 500/5m org);
//! 2. the same, with crashes and a reopen of the database in the middle of the first windows;
//! 3. the org budget at the engine's default, 900/5m, so each integration's budget binds;
//! 4. OnCall stricter than the agent (250/5m per integration, 400/5m org, then 150/5m and
//!    300/5m), learning its windows (the default) and, as the baseline in the same run, with
//!    learning off (pause, then probe every 15 s);
//! 5. baselines against the limits of run 1: the agent with its limiter off (budgets of
//!    1,000,000/5m; it still pauses and probes on 429), and a naive sender (4 requests in
//!    flight per integration, each 429 retried after 1 s, like a sender that ignores the
//!    budget and has no Retry-After to go by).
//!
//! Everything is seeded: the figures repeat run after run.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oncall_agent::clock::Millis;
use oncall_agent::config::Rate;
use oncall_agent::sender::Transport;
use sim::*;

const WINDOW: Millis = 300_000;
const MINUTE: Millis = 60_000;
const HOUR: Millis = 60 * MINUTE;
const NAMES: [&str; 3] = ["a", "b", "c"];
const TOTALS: [u64; 3] = [10_000, 6_000, 4_000];

/// Alerts arriving in minute `m` for integration `k`: 40 % in the first minute, the rest
/// evenly over the 59 that follow.
fn arrivals(k: usize, m: u64) -> u64 {
    let first = TOTALS[k] * 2 / 5;
    let rest = TOTALS[k] - first;
    match m {
        0 => first,
        59 => rest - (rest / 59) * 58,
        1..=58 => rest / 59,
        _ => 0,
    }
}

fn network() -> Network {
    Network {
        up: (20, 80),
        down: (20, 80),
        ..Network::fixed(0, 0)
    }
}

struct Run {
    name: String,
    hits: Vec<Hit>,
    /// When each integration's last alert was delivered (ms after T0).
    drained: BTreeMap<String, Millis>,
    all_delivered: bool,
    board_429: u64,
    starts: Vec<Millis>,
    /// Whether the sender pauses on 429 (the agent) and its pauses are checked.
    pauses: bool,
    wall: Duration,
    /// The server's limits and window phases, where they differ from the agent's budgets:
    /// (per integration, org).
    server: Option<ServerLimits>,
}

/// The server's (limit, window phase) per integration, and the org's.
type ServerLimits = ([(Rate, Millis); 3], (Rate, Millis));

/// Runs the storm through the real dispatcher.
async fn storm(
    name: &str,
    agent: [Rate; 3],
    agent_org: Rate,
    server: Option<([Rate; 3], Rate)>,
    // (when, whether the database is also closed and reopened)
    crashes: &[(Millis, bool)],
    seed: u64,
    learn: bool,
) -> Run {
    let wall = Instant::now();
    let ints: Vec<(&str, Rate)> = NAMES.iter().copied().zip(agent).collect();
    let mut delivery = default_delivery();
    delivery.learn = learn;
    let mut sim = Sim::new(&ints, agent_org, delivery, seed);
    sim.fake.set_network(network());
    let server = match server {
        Some((i, o)) => {
            let mut phases = [(rate(1, 1), 0); 3];
            for ((n, r), p) in NAMES.iter().zip(i).zip(phases.iter_mut()) {
                *p = (r, sim.fake.limit_integration(n, r));
            }
            Some((phases, (o, sim.fake.limit_org(o))))
        }
        None => {
            sim.fake_limits_equal_to_agent();
            None
        }
    };
    for (k, n) in NAMES.iter().enumerate() {
        sim.queue(n, arrivals(k, 0));
    }
    sim.sync();
    sim.start();
    let mut crashes = crashes.to_vec();
    for m in 1..60 {
        while let Some(&(at, reopen)) = crashes.first()
            && at < m * MINUTE
        {
            sim.run_until(at).await;
            crashes.remove(0);
            if reopen {
                sim.crash_and_reopen().await;
            } else {
                sim.crash().await;
                sim.start();
            }
        }
        sim.run_until(m * MINUTE).await;
        for (k, n) in NAMES.iter().enumerate() {
            sim.queue(n, arrivals(k, m));
        }
    }
    sim.run_until_drained(24 * HOUR).await;
    let hits = sim.fake.hits();
    let mut drained = BTreeMap::new();
    for h in &hits {
        if h.status == 200 {
            let d = drained.entry(h.integration.clone()).or_insert(0);
            *d = (*d).max(h.done.unwrap_or(h.sent) - T0);
        }
    }
    let b = sim.board();
    Run {
        name: name.to_string(),
        all_delivered: sim.all_delivered(),
        board_429: b.org.rate_limited_total
            + b.integrations
                .values()
                .map(|i| i.budget.rate_limited_total)
                .sum::<u64>(),
        starts: sim.starts.clone(),
        pauses: !learn,
        hits,
        drained,
        wall: wall.elapsed(),
        server,
    }
}

/// A sender with no budget and no pause, 4 requests in flight per integration, against the
/// fake with OnCall's limits: with `retry`, each 429 is retried after 1 s (a sender that
/// ignores budgets); without, a 429 is final (Alertmanager pointed straight at OnCall).
async fn naive(seed: u64, retry: bool) -> Run {
    let wall = Instant::now();
    let clock = oncall_agent::clock::Clock::starting_at(T0);
    let fake = FakeOnCall::new(clock, seed);
    fake.set_network(network());
    for n in NAMES {
        fake.limit_integration(n, rate(300, 300));
    }
    fake.limit_org(rate(500, 300));
    let fake = Arc::new(fake);
    let mut workers = Vec::new();
    let mut next = 1u64;
    for (k, name) in NAMES.iter().enumerate() {
        // (alert number, arrival) in order.
        let mut queue = Vec::new();
        for m in 0..60 {
            for _ in 0..arrivals(k, m) {
                queue.push((next, m * MINUTE));
                next += 1;
            }
        }
        let queue = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
            queue,
        )));
        for _ in 0..4 {
            let (fake, queue, name) = (fake.clone(), queue.clone(), name.to_string());
            workers.push(tokio::spawn(async move {
                let url = FakeOnCall::url(&name);
                loop {
                    let Some((n, at)) = queue.lock().unwrap().pop_front() else {
                        return;
                    };
                    tokio::time::sleep_until(clock.instant_at(T0 + at)).await;
                    let body = serde_json::json!({"title": "storm", "alert_uid": n, "n": n})
                        .to_string()
                        .into_bytes();
                    while !matches!(
                        fake.deliver(&url, body.clone()).await,
                        oncall_agent::sender::Outcome::Delivered
                    ) && retry
                    {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }));
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    let hits = fake.hits();
    let mut drained = BTreeMap::new();
    for h in &hits {
        if h.status == 200 {
            let d = drained.entry(h.integration.clone()).or_insert(0);
            *d = (*d).max(h.done.unwrap_or(h.sent) - T0);
        }
    }
    let mut delivered: Vec<u64> = hits
        .iter()
        .filter(|h| h.status == 200)
        .map(|h| h.alert)
        .collect();
    delivered.sort_unstable();
    delivered.dedup();
    Run {
        name: if retry {
            "5b. baseline: a sender with no budget that retries each 429 after 1 s".into()
        } else {
            "5c. baseline: each alert POSTed once as it comes, a 429 is final (Alertmanager straight to OnCall)"
                .into()
        },
        all_delivered: delivered.len() == 20_000,
        pauses: false,
        server: None,
        board_429: 0,
        starts: vec![T0],
        hits,
        drained,
        wall: wall.elapsed(),
    }
}

fn sent_in(hits: &[Hit], integration: Option<&str>, from: Millis, to: Millis) -> usize {
    hits.iter()
        .filter(|h| integration.is_none_or(|i| h.integration == i))
        .filter(|h| h.sent >= T0 + from && h.sent < T0 + to)
        .count()
}

fn max_sliding(hits: &[Hit], integration: Option<&str>) -> usize {
    let t: Vec<Millis> = hits
        .iter()
        .filter(|h| integration.is_none_or(|i| h.integration == i))
        .filter_map(|h| h.arrived)
        .collect();
    max_in_any_window(&t, WINDOW)
}

fn mins(ms: Millis) -> String {
    format!("{:.1} min", ms as f64 / 60_000.0)
}

/// Whole windows (aligned to the start) inside `[from, to)`.
fn whole_windows(from: Millis, to: Millis) -> std::ops::Range<Millis> {
    from.div_ceil(WINDOW)..to / WINDOW
}

/// Requests sent in the whole windows of `[from, to)` against `budget` per window.
fn utilization(
    hits: &[Hit],
    integration: Option<&str>,
    from: Millis,
    to: Millis,
    budget: u32,
) -> Option<(usize, u64, f64)> {
    let w = whole_windows(from, to);
    if w.is_empty() {
        return None;
    }
    let sent = sent_in(hits, integration, w.start * WINDOW, w.end * WINDOW);
    let cap = (w.end - w.start) * budget as u64;
    Some((sent, cap, 100.0 * sent as f64 / cap as f64))
}

fn report(run: &Run, budgets: Option<([u32; 3], u32)>) {
    let hits = &run.hits;
    let refused = hits.iter().filter(|h| h.status == 429).count();
    let refused_org = hits
        .iter()
        .filter(|h| h.status == 429 && h.org_limited)
        .count();
    let mut refused_alerts: Vec<(String, u64)> = hits
        .iter()
        .filter(|h| h.status == 429)
        .map(|h| (h.integration.clone(), h.alert))
        .collect();
    refused_alerts.sort_unstable();
    refused_alerts.dedup();
    let end = hits
        .iter()
        .filter_map(|h| h.done)
        .max()
        .map_or(0, |t| t - T0);
    println!("### {}\n", run.name);
    println!(
        "- requests: {}, alerts delivered: {} of 20,000 (all: {}), last answer at {}",
        hits.len(),
        {
            let mut d: Vec<(&str, u64)> = hits
                .iter()
                .filter(|h| h.status == 200)
                .map(|h| (h.integration.as_str(), h.alert))
                .collect();
            d.sort_unstable();
            d.dedup();
            d.len()
        },
        run.all_delivered,
        mins(end)
    );
    println!(
        "- 429s: {refused} ({refused_org} org-wide), {} alerts refused at least once{}",
        refused_alerts.len(),
        if run.board_429 > 0 {
            format!("; status counted {}", run.board_429)
        } else {
            String::new()
        }
    );
    println!(
        "- most requests in any 5-min interval at the server: a {}, b {}, c {}, org {}",
        max_sliding(hits, Some("a")),
        max_sliding(hits, Some("b")),
        max_sliding(hits, Some("c")),
        max_sliding(hits, None)
    );
    let drained: Vec<String> = run
        .drained
        .iter()
        .map(|(n, t)| format!("{n} at {}", mins(*t)))
        .collect();
    println!("- queues drained: {}", drained.join(", "));
    if let Some((int, org)) = budgets {
        // Phases: from the start to the first queue drained, and so on.
        let mut ends: Vec<(Millis, &str)> =
            run.drained.iter().map(|(n, t)| (*t, n.as_str())).collect();
        ends.sort_unstable();
        let mut from = 0;
        let mut left: Vec<&str> = NAMES.to_vec();
        for (to, gone) in ends {
            let demand: u32 = left
                .iter()
                .map(|n| int[NAMES.iter().position(|x| x == n).unwrap()])
                .sum();
            if demand > org {
                if let Some((s, c, u)) = utilization(hits, None, from, to, org) {
                    println!(
                        "- {}..{}, backlog in {}: org budget binds, used {s} of {c} = {u:.2} %",
                        mins(from),
                        mins(to),
                        left.join("+"),
                    );
                }
            } else {
                for n in &left {
                    let k = NAMES.iter().position(|x| x == n).unwrap();
                    if let Some((s, c, u)) = utilization(hits, Some(n), from, to, int[k]) {
                        println!(
                            "- {}..{}, backlog in {}: {n}'s budget binds, used {s} of {c} = {u:.2} %",
                            mins(from),
                            mins(to),
                            left.join("+"),
                        );
                    }
                }
            }
            left.retain(|n| *n != gone);
            from = to;
        }
    }
    if refused > 0 && run.pauses {
        match check_pauses(hits, 15_000, &run.starts) {
            Ok(spans) => {
                let mut by_scope: Vec<String> = Vec::new();
                for scope in [None, Some("a"), Some("b"), Some("c")] {
                    let mine: Vec<&PauseSpan> = spans
                        .iter()
                        .filter(|s| s.scope.as_deref() == scope)
                        .collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let paused: Millis = mine
                        .iter()
                        .map(|s| s.end.unwrap_or(s.start) - s.start)
                        .sum();
                    let refused: usize = mine.iter().map(|s| s.refused).sum();
                    let probes: usize = mine.iter().map(|s| s.probes.len()).sum();
                    by_scope.push(format!(
                        "{} {} pauses, {} paused, {refused} 429s, {probes} probes",
                        scope.unwrap_or("org"),
                        mine.len(),
                        mins(paused)
                    ));
                }
                let most = spans
                    .iter()
                    .max_by_key(|s| s.refused)
                    .map(|s| (s.refused, s.probes.len()))
                    .unwrap_or_default();
                let bound = spans.iter().all(|s| s.refused <= 12 + s.probes.len());
                println!("- pauses: {}", by_scope.join("; "));
                println!(
                    "- most 429s in one pause: {} (over {} probes); one probe per 15 s with \
                     nothing else in flight: yes; 429s <= requests in flight at the first 429 + \
                     probes: {}",
                    most.0,
                    most.1,
                    if bound { "yes" } else { "NO" }
                );
            }
            Err(e) => println!("- PAUSE RULE BROKEN: {e}"),
        }
    }
    println!(
        "- simulated in {:.1} s of wall time\n",
        run.wall.as_secs_f64()
    );
}

/// For a run against an OnCall stricter than the agent: 429s per server window after each
/// scope's first limited one, and the share of the server's real throughput used: alerts
/// accepted in the org's whole windows from the second limited one to the last before the
/// queues drained, over those windows' capacity (the org's limit binds in these runs).
fn learned_report(run: &Run) {
    let Some((ints, (org, org_phase))) = run.server else {
        return;
    };
    let window_of = |t: Millis, phase: Millis| (t + phase) / WINDOW;
    let mut worst = Vec::new();
    for (scope, phase) in NAMES
        .iter()
        .map(|n| Some(*n))
        .zip(ints.iter().map(|(_, p)| *p))
        .chain(std::iter::once((None, org_phase)))
    {
        let mut per: BTreeMap<Millis, usize> = BTreeMap::new();
        for h in run.hits.iter().filter(|h| h.status == 429) {
            let mine = match scope {
                Some(n) => !h.org_limited && h.integration == n,
                None => h.org_limited,
            };
            if mine {
                *per.entry(window_of(h.arrived.unwrap_or(h.sent), phase))
                    .or_default() += 1;
            }
        }
        let after: Vec<usize> = per.values().skip(1).copied().collect();
        worst.push(format!(
            "{} {} after the first limited window (most in one: {})",
            scope.unwrap_or("org"),
            after.iter().sum::<usize>(),
            after.iter().max().copied().unwrap_or(0)
        ));
    }
    println!("- 429s: {}", worst.join("; "));
    let first_429 = run
        .hits
        .iter()
        .filter(|h| h.status == 429)
        .filter_map(|h| h.arrived)
        .min();
    let end = run.drained.values().min().copied().unwrap_or(0) + T0;
    if let Some(first) = first_429 {
        let (from, to) = (window_of(first, org_phase) + 1, window_of(end, org_phase));
        if to > from {
            let accepted = run
                .hits
                .iter()
                .filter(|h| h.status == 200)
                .filter_map(|h| h.arrived)
                .filter(|a| (from..to).contains(&window_of(*a, org_phase)))
                .count();
            let cap = (to - from) * org.count as u64;
            println!(
                "- the server's real throughput used: {accepted} of {cap} in its {} whole org windows \
                 from the second limited one until a queue drained = {:.2} %",
                to - from,
                100.0 * accepted as f64 / cap as f64
            );
        }
    }
}

fn window_table(run: &Run, windows: u64) {
    println!("| 5-min window | a | b | c | org |\n|---|---|---|---|---|");
    for w in 0..windows {
        let (f, t) = (w * WINDOW, (w + 1) * WINDOW);
        println!(
            "| {:>2} ({:>3}-{:>3} min) | {} | {} | {} | {} |",
            w + 1,
            f / MINUTE,
            t / MINUTE,
            sent_in(&run.hits, Some("a"), f, t),
            sent_in(&run.hits, Some("b"), f, t),
            sent_in(&run.hits, Some("c"), f, t),
            sent_in(&run.hits, None, f, t),
        );
    }
    println!();
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let d = rate(300, 300);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "storm: 20,000 alerts over 1 h to 3 integrations (a 10,000, b 6,000, c 4,000; 8,000 in \
         the first minute); round trips 40..160 ms; {cores} cores\n"
    );
    rt.block_on(async {
        let r1 = storm(
            "1. OnCall's limits = the agent's budgets (300/5m, org 500/5m)",
            [d; 3],
            rate(500, 300),
            None,
            &[],
            1,
            true,
        )
        .await;
        report(&r1, Some(([300; 3], 500)));
        window_table(&r1, 14);

        let r2 = storm(
            "2. as 1, crashed 3 s into the first window's burst, and crashed + database reopened 3.5 s into the second's",
            [d; 3],
            rate(500, 300),
            None,
            &[(3_000, false), (303_500, true)],
            2,
            true,
        )
        .await;
        report(&r2, Some(([300; 3], 500)));

        let r3 = storm(
            "3. org budget at the engine's default, 900/5m: each integration's budget binds",
            [d; 3],
            rate(900, 300),
            None,
            &[],
            3,
            true,
        )
        .await;
        report(&r3, Some(([300; 3], 900)));
        window_table(&r3, 12);

        for (name, int, org) in [
            ("4", 250, 400),
            ("4c", 150, 300),
        ] {
            for learn in [true, false] {
                let r4 = storm(
                    &format!(
                        "{name}{}. OnCall stricter than the agent: {int}/5m per integration, {org}/5m org; {}",
                        if learn { "" } else { "b" },
                        if learn {
                            "learning its windows (the default)"
                        } else {
                            "baseline: learning off, pause and probe every 15 s"
                        }
                    ),
                    [d; 3],
                    rate(500, 300),
                    Some(([rate(int, 300); 3], rate(org, 300))),
                    &[],
                    4,
                    learn,
                )
                .await;
                report(&r4, None);
                learned_report(&r4);
            }
        }

        let big = rate(1_000_000, 300);
        let r5 = storm(
            "5a. baseline: the agent with no client-side budget (1,000,000/5m) against 300/5m, org 500/5m",
            [big; 3],
            big,
            Some(([d; 3], rate(500, 300))),
            &[],
            1,
            false,
        )
        .await;
        report(&r5, None);

        let r6 = naive(1, true).await;
        report(&r6, None);
        let r7 = naive(1, false).await;
        report(&r7, None);

        fair_share().await;
    });
}

/// 10 alerts for a quiet integration while another one has 50,000 queued and the org budget
/// is spent: how many org slots and how long until they are through.
async fn fair_share() {
    let wall = Instant::now();
    let mut sim = Sim::new(
        &[("storm", rate(1000, 300)), ("quiet", rate(300, 300))],
        rate(500, 300),
        default_delivery(),
        6,
    );
    sim.fake.set_network(network());
    sim.fake_limits_equal_to_agent();
    sim.queue("storm", 50_000);
    sim.sync();
    sim.start();
    sim.run_until(60_000).await;
    sim.queue("quiet", 10);
    sim.run_until(HOUR).await;
    let hits = sim.fake.hits();
    let after: Vec<&Hit> = hits.iter().filter(|h| h.sent > T0 + 60_000).collect();
    let last = after
        .iter()
        .rposition(|h| h.integration == "quiet")
        .expect("quiet alerts sent");
    let first_slot = after[0].sent - T0;
    let done = after[last].done.expect("answered") - T0;
    println!(
        "### 6. fair share: 10 alerts beside 50,000 (storm 1000/5m, quiet 300/5m, org 500/5m)\n"
    );
    println!(
        "- the 10 arrive at 1 min, the org budget spent; the first slot frees at {:.1} s; the 10 \
         took {} of the next org slots and were all delivered at {:.1} s (the storm's 50,000 \
         need {:.0} h); 429s: {}",
        first_slot as f64 / 1000.0,
        last + 1,
        done as f64 / 1000.0,
        50_000.0 / 500.0 * 5.0 / 60.0,
        hits.iter().filter(|h| h.status == 429).count()
    );
    println!(
        "- simulated in {:.1} s of wall time\n",
        wall.elapsed().as_secs_f64()
    );
}
