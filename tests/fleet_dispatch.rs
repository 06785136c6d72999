//! Several hosts' real dispatchers on one fleet budget: each host its own queue, dispatcher and
//! fleet handle, all sharing one real Redis and one simulated OnCall that enforces fixed
//! windows at random phases (tests/sim). Real time: Redis's clock cannot be paused.

mod redis_server;
mod sim;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use oncall_agent::clock::{Clock, ms};
use oncall_agent::config::Rate;
use oncall_agent::config::{FleetConfig, RawFleet};
use oncall_agent::fleet::{Fleet, Link, STRAGGLERS};
use oncall_agent::sender::{DispatchError, fleet_budgets};
use redis_server::RedisServer;
use sim::{FakeOnCall, Network, RateChange, Sim, T0, check_budget, default_delivery, rate};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

struct Host {
    sim: Sim,
    fleet: Fleet,
    queued: u64,
    _control: mpsc::Sender<oncall_agent::sender::Control>,
    shutdown: watch::Sender<bool>,
    handle: JoinHandle<Result<(), DispatchError>>,
}

impl Host {
    fn delivered(&self) -> u64 {
        self.queued - self.sim.queue_depth()
    }
}

fn fleet_config(r: &RedisServer, host: &str, hosts: u32) -> FleetConfig {
    FleetConfig::from_raw(
        RawFleet {
            redis: r.url(),
            password_file: None,
            host: Some(host.into()),
            org: Some("sim".into()),
            local_share: None,
            hosts: Some(hosts),
            timeout: Some("200ms".into()),
        },
        |_| Err("no password file".into()),
        || None,
    )
    .unwrap()
}

/// What every host of one run shares.
struct Fleetwide<'a> {
    redis: &'a RedisServer,
    fake: &'a FakeOnCall,
    clock: Clock,
    integrations: &'a [(&'a str, Rate)],
    org: Rate,
    hosts: u32,
}

fn start_host(w: &Fleetwide, name: &str, per_integration: u64) -> Host {
    let (r, fake, clock, integrations, org, hosts) =
        (w.redis, w.fake, w.clock, w.integrations, w.org, w.hosts);
    let mut s = Sim::new(integrations, org, default_delivery(), 1);
    s.fake = fake.clone();
    s.clock = clock;
    for (i, _) in integrations {
        s.queue(i, per_integration);
    }
    s.sync();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (fleet, _task) = Fleet::start(
        fleet_config(r, name, hosts),
        fleet_budgets(&s.cfg, "sim"),
        clock,
        shutdown_rx.clone(),
    );
    let d = s.dispatcher().with_fleet(fleet.clone());
    let (control, control_rx) = mpsc::channel(4);
    let handle = tokio::spawn(d.run(control_rx, shutdown_rx));
    Host {
        sim: s,
        fleet,
        queued: per_integration * integrations.len() as u64,
        _control: control,
        shutdown,
        handle,
    }
}

/// Log lines of the whole test binary (one test), to count the fleet's WARNs.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Logs {
        let logs = Logs::default();
        let w = logs.clone();
        tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
        logs
    }
    fn count(&self, level: &str, text: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(level) && l.contains(text))
            .count()
    }
}

async fn wait_for(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hosts_share_the_org_budget_exactly_fairly_and_survive_redis_going_away() {
    const HOSTS: u32 = 5;
    let logs = Logs::capture();
    let mut redis = RedisServer::start();
    let org = rate(20, 2);
    let integrations = [("a", rate(30, 2)), ("b", rate(30, 2))];
    let clock = Clock::starting_at(T0);
    let fake = FakeOnCall::new(clock, 7);
    fake.set_network(Network::fixed(3, 3));
    for (i, r) in &integrations {
        fake.limit_integration(i, *r);
    }
    fake.limit_org(org);
    let w = Fleetwide {
        redis: &redis,
        fake: &fake,
        clock,
        integrations: &integrations,
        org,
        hosts: HOSTS,
    };
    let hosts: Vec<Host> = (0..HOSTS)
        .map(|k| start_host(&w, &format!("host-{k}"), 60))
        .collect();
    assert!(
        wait_for(Duration::from_secs(5), || hosts
            .iter()
            .all(|h| h.fleet.link() == Link::Up))
        .await
    );

    // Phase 1: every host has backlog; the org budget binds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t1 = clock.now();
    let before: Vec<u64> = hosts.iter().map(Host::delivered).collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let t2 = clock.now();
    let after: Vec<u64> = hosts.iter().map(Host::delivered).collect();
    let shares: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        hosts.iter().all(|h| h.sim.queue_depth() > 0),
        "every host still has backlog"
    );
    let hits = fake.hits();
    let in_span = |h: &&sim::Hit| h.arrived.is_some_and(|a| a >= t1 && a < t2);
    let accepted = hits
        .iter()
        .filter(in_span)
        .filter(|h| h.status == 200)
        .count();
    let budget = 20.0 * (t2 - t1) as f64 / 2000.0;
    let used = accepted as f64 / budget;
    let mean = shares.iter().sum::<u64>() as f64 / f64::from(HOSTS);
    eprintln!(
        "phase 1: {accepted} accepted of a budget of {budget:.0} ({:.1}%), per host {shares:?}",
        used * 100.0
    );
    assert!(
        used >= 0.95,
        "only {:.1}% of the binding budget used",
        used * 100.0
    );
    for s in &shares {
        assert!(
            (*s as f64 - mean).abs() <= 0.2 * mean,
            "shares {shares:?} not within 20% of {mean}"
        );
    }
    let rate_limited = |hits: &[sim::Hit]| hits.iter().filter(|h| h.status == 429).count();
    assert_eq!(rate_limited(&hits), 0, "no 429 while Redis answers");
    let round_trips: u64 = hosts
        .iter()
        .map(|h| h.fleet.status(clock.now()).round_trips)
        .sum();
    let total: u64 = hosts.iter().map(Host::delivered).sum();
    eprintln!(
        "round trips per delivered alert: {:.2}",
        round_trips as f64 / total as f64
    );

    // Phase 2: Redis goes away. Every host drops to its local share (1/5) at once.
    redis.stop();
    assert!(
        wait_for(Duration::from_secs(5), || hosts
            .iter()
            .all(|h| h.fleet.link() == Link::Down))
        .await,
        "every host noticed"
    );
    let down_at = clock.now();
    assert_eq!(
        logs.count("WARN", "Redis is unreachable"),
        HOSTS as usize,
        "one WARN per host on the transition"
    );
    let d0: u64 = hosts.iter().map(Host::delivered).sum();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d1: u64 = hosts.iter().map(Host::delivered).sum();
    assert!(d1 > d0, "delivery continues on the local shares");
    let hits = fake.hits();
    let outage_429 = hits
        .iter()
        .filter(|h| h.arrived.is_some_and(|a| a >= down_at) && h.status == 429)
        .count();
    assert!(
        outage_429 <= 20,
        "{outage_429} 429s: more than the local shares' worth"
    );

    // Phase 3: Redis returns (empty); the sends made meanwhile are recorded and the fleet
    // shares again.
    redis.restart();
    let up_at = clock.now();
    assert!(
        wait_for(Duration::from_secs(10), || hosts
            .iter()
            .all(|h| h.fleet.link() == Link::Up))
        .await
    );
    let d2: u64 = hosts.iter().map(Host::delivered).sum();
    tokio::time::sleep(STRAGGLERS + Duration::from_secs(3)).await;
    let d3: u64 = hosts.iter().map(Host::delivered).sum();
    assert!(d3 > d2, "delivery continues after Redis returns");

    // The guarantee over the whole run, as the server counted, with the budget it enforces.
    let hits = fake.hits();
    let history = vec![RateChange {
        at: 0,
        integrations: BTreeMap::from([
            ("a".to_string(), rate(30, 2)),
            ("b".to_string(), rate(30, 2)),
        ]),
        org,
    }];
    assert_eq!(
        logs.count("WARN", "Redis is unreachable"),
        HOSTS as usize,
        "no more WARNs while reconnecting"
    );
    assert_eq!(logs.count("INFO", "Redis answers again"), HOSTS as usize);
    let total_429 = rate_limited(&hits);
    eprintln!("429s over the whole run (outage included): {total_429}");
    assert!(
        total_429 <= 20,
        "{total_429} 429s: more than the local shares' worth"
    );
    // Once every host is back and has recorded what it sent meanwhile, the window is exact
    // again.
    let honest = up_at + ms(STRAGGLERS) + 500;
    let after: Vec<sim::Hit> = hits.into_iter().filter(|h| h.sent >= honest).collect();
    assert!(!after.is_empty());
    assert_eq!(rate_limited(&after), 0);
    check_budget(&after, &history, None).unwrap();
    for (name, _) in &integrations {
        check_budget(&after, &history, Some(name)).unwrap();
    }
    for h in hosts {
        let _ = h.shutdown.send(true);
        let _ = h.handle.await;
    }
}
