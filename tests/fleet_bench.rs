//! The fleet's benchmark (BENCHMARKS.md, "Fleet"): a storm on a few hosts while the others have
//! a few alerts each, with the fleet's shared budget and, in the same run, the two ways hosts
//! share a budget without it: a static split (each host 1/N of every budget) and no
//! coordination (each host the whole budget). Real dispatchers and queues per host, one real
//! Redis, the simulated OnCall of tests/sim on the real clock. Ignored by `cargo test`: run
//!
//! ```sh
//! cargo test --release --test fleet_bench -- --ignored --nocapture
//! ```

mod redis_server;
mod sim;

use std::time::{Duration, Instant};

use oncall_agent::clock::Clock;
use oncall_agent::config::{FleetConfig, Rate, RawFleet};
use oncall_agent::fleet::Fleet;
use oncall_agent::sender::{Control, DispatchError, fleet_budgets};
use redis_server::RedisServer;
use sim::{FakeOnCall, Network, Sim, T0, default_delivery, rate};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Fleet,
    StaticSplit,
    NoCoordination,
}

struct Host {
    sim: Sim,
    _control: mpsc::Sender<Control>,
    shutdown: watch::Sender<bool>,
    handle: JoinHandle<Result<(), DispatchError>>,
}

/// OnCall's budgets, scaled down: 2 s windows.
const ORG: (u32, u64) = (20, 2);
const INTEGRATION: (u32, u64) = (30, 2);
/// Storm hosts and their alerts per integration; every other host has one per integration.
const STORM_HOSTS: usize = 3;
const STORM: u64 = 20;
const LIMIT: Duration = Duration::from_secs(45);

struct Row {
    mode: Mode,
    hosts: usize,
    drained_s: Option<f64>,
    used: f64,
    rate_limited: usize,
    small_last_s: Option<f64>,
}

async fn run(mode: Mode, hosts: usize, redis: &RedisServer, run_id: usize) -> Row {
    let clock = Clock::starting_at(T0);
    let fake = FakeOnCall::new(clock, run_id as u64);
    fake.set_network(Network::fixed(3, 3));
    let (org, int) = (rate(ORG.0, ORG.1), rate(INTEGRATION.0, INTEGRATION.1));
    fake.limit_integration("a", int);
    fake.limit_integration("b", int);
    fake.limit_org(org);
    let split = |r: Rate| Rate {
        count: (r.count / hosts as u32).max(1),
        per: r.per,
    };
    let (agent_org, agent_int) = match mode {
        Mode::StaticSplit => (split(org), split(int)),
        _ => (org, int),
    };
    let mut all = Vec::new();
    for h in 0..hosts {
        let mut s = Sim::new(
            &[("a", agent_int), ("b", agent_int)],
            agent_org,
            default_delivery(),
            1,
        );
        s.fake = fake.clone();
        s.clock = clock;
        let n = if h < STORM_HOSTS { STORM } else { 1 };
        s.queue("a", n);
        s.queue("b", n);
        s.sync();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut d = s.dispatcher();
        if mode == Mode::Fleet {
            let cfg = FleetConfig::from_raw(
                RawFleet {
                    redis: redis.url(),
                    password_file: None,
                    host: Some(format!("host-{h}")),
                    org: Some(format!("bench-{run_id}")),
                    local_share: None,
                    hosts: Some(hosts as u32),
                    timeout: None,
                },
                |_| Err("none".into()),
                || None,
            )
            .unwrap();
            let (fleet, _task) = Fleet::start(
                cfg,
                fleet_budgets(&s.cfg, &format!("bench-{run_id}")),
                clock,
                shutdown_rx.clone(),
            );
            d = d.with_fleet(fleet);
        }
        let (control, control_rx) = mpsc::channel(4);
        let handle = tokio::spawn(d.run(control_rx, shutdown_rx));
        all.push(Host {
            sim: s,
            _control: control,
            shutdown,
            handle,
        });
    }
    let start = Instant::now();
    let mut small_last = None;
    let mut drained = None;
    while start.elapsed() < LIMIT {
        if small_last.is_none() && all[STORM_HOSTS..].iter().all(|h| h.sim.queue_depth() == 0) {
            small_last = Some(start.elapsed().as_secs_f64());
        }
        if all.iter().all(|h| h.sim.queue_depth() == 0) {
            drained = Some(start.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits = fake.hits();
    let accepted = hits.iter().filter(|h| h.status == 200).count();
    let span = drained.unwrap_or(LIMIT.as_secs_f64());
    // The most any interval of this length can hold under the org budget.
    let budget = ORG.0 as f64 * (span / ORG.1 as f64).ceil();
    for h in all {
        let _ = h.shutdown.send(true);
        let _ = h.handle.await;
    }
    Row {
        mode,
        hosts,
        drained_s: drained,
        used: accepted as f64 / budget,
        rate_limited: hits.iter().filter(|h| h.status == 429).count(),
        small_last_s: small_last,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored --nocapture"]
async fn fleet_benchmark() {
    let redis = RedisServer::start();
    let mut rows = Vec::new();
    let mut id = 0;
    for hosts in [5, 20] {
        for mode in [Mode::Fleet, Mode::StaticSplit, Mode::NoCoordination] {
            id += 1;
            let r = run(mode, hosts, &redis, id).await;
            eprintln!(
                "{:?} {} hosts: drained {:?}, used {:.0}%, 429s {}, small hosts done at {:?}",
                r.mode,
                r.hosts,
                r.drained_s,
                r.used * 100.0,
                r.rate_limited,
                r.small_last_s
            );
            rows.push(r);
        }
    }
    let total = |hosts: usize| 2 * (STORM_HOSTS as u64 * STORM + (hosts - STORM_HOSTS) as u64);
    println!(
        "| hosts | sharing | all delivered after (best possible) | binding budget used | 429s | small hosts' alerts all out after |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    // The org budget's full windows needed for every alert, the first one free at once.
    let best = |n: u64| (n.div_ceil(u64::from(ORG.0)) - 1) * ORG.1;
    for r in &rows {
        let s =
            |x: Option<f64>| x.map_or(format!("> {} s", LIMIT.as_secs()), |v| format!("{v:.1} s"));
        println!(
            "| {} ({} alerts) | {} | {} ({} s) | {:.0}% | {} | {} |",
            r.hosts,
            total(r.hosts),
            match r.mode {
                Mode::Fleet => "fleet (Redis)",
                Mode::StaticSplit => "static split (1/N each)",
                Mode::NoCoordination => "no coordination (full budget each)",
            },
            s(r.drained_s),
            best(total(r.hosts)),
            r.used * 100.0,
            r.rate_limited,
            s(r.small_last_s)
        );
    }
}
