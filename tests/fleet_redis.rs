//! The fleet's shared budgets against a real Redis: the Lua scripts (exactness over any interval
//! of the window's length, settle, release, expiry, many connections at once, NOSCRIPT after a
//! restart, fair share) and the dispatcher's handle (fallback to the local share when Redis
//! stops, the sends made meanwhile recorded when it returns).

mod redis_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oncall_agent::clock::Clock;
use oncall_agent::config::Rate;
use oncall_agent::config::{FleetConfig, RawFleet};
use oncall_agent::fleet::{
    Budgets, Fleet, Group, Keys, Link, Op, OpKind, ScopeArg, ScopeKey, TurnCall, TurnReply,
};
use redis::aio::MultiplexedConnection;
use redis_server::RedisServer;

async fn con(r: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(r.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn scope(name: &str, limit: u32, window_ms: u64) -> ScopeArg {
    ScopeArg {
        key: ScopeKey::integration("test", name),
        limit,
        window_ms,
    }
}

/// A host's calls: its prefix and next slot id.
struct Host {
    name: String,
    next: u64,
    bound_ms: u64,
}

impl Host {
    fn new(name: &str, bound_ms: u64) -> Host {
        Host {
            name: name.into(),
            next: 1,
            bound_ms,
        }
    }

    fn member(&self, id: u64) -> String {
        format!("{}:0:{id}", self.name)
    }

    /// One call: `want` slots (with `demand` as the backlog) in every scope given, and `ops`.
    async fn call(
        &mut self,
        con: &mut MultiplexedConnection,
        scopes: &[ScopeArg],
        want: u32,
        demand: u32,
        ops: Vec<Op>,
    ) -> (TurnReply, Vec<u64>) {
        let call = TurnCall {
            host: self.name.clone(),
            prefix: format!("{}:0", self.name),
            first_id: self.next,
            bound_ms: self.bound_ms,
            want_ttl_ms: 5_000,
            fair_poll_ms: 20,
            scopes: scopes.to_vec(),
            ops,
            groups: vec![Group {
                want,
                demand,
                scopes: (0..scopes.len()).collect(),
            }],
        };
        let r = call.run(con, &Keys::new("test")).await.unwrap();
        let ids: Vec<u64> = (0..r.grants.len() as u64).map(|i| self.next + i).collect();
        self.next += u64::from(want);
        (r, ids)
    }

    fn op(&self, kind: OpKind, id: u64, ms: i64, nscopes: usize) -> Op {
        Op {
            kind,
            member: self.member(id),
            ms,
            scopes: (0..nscopes).collect(),
        }
    }
}

#[tokio::test]
async fn grants_stop_at_n_and_a_settle_frees_a_slot_a_window_after_the_answer() {
    let r = RedisServer::start();
    let mut c = con(&r).await;
    let s = [scope("a", 3, 1_000)];
    let mut h = Host::new("h1", 500);
    let (rep, ids) = h.call(&mut c, &s, 5, 5, vec![]).await;
    assert_eq!(ids.len(), 3, "N=3 granted of 5");
    // Unsettled: counted to grant + bound, so free a window after that.
    assert!(
        (1_400..=1_500).contains(&rep.waits[0]),
        "wait {}",
        rep.waits[0]
    );
    assert_eq!(rep.scopes[0].live, 3);
    // The first is answered now: it frees a window from now, not from its bound.
    let (rep, more) = h
        .call(&mut c, &s, 1, 1, vec![h.op(OpKind::Settle, ids[0], 0, 1)])
        .await;
    assert!(more.is_empty());
    assert!(
        (900..=1_000).contains(&rep.waits[0]),
        "wait {}",
        rep.waits[0]
    );
    // An answer that came 300 ms before the call counts until then, not until the call.
    let (rep, _) = h
        .call(
            &mut c,
            &s,
            1,
            1,
            vec![h.op(OpKind::Settle, ids[1], -300, 1)],
        )
        .await;
    assert!(
        (600..=1_000).contains(&rep.waits[0]),
        "wait {}",
        rep.waits[0]
    );
}

#[tokio::test]
async fn a_released_slot_counts_nowhere_in_any_scope() {
    let r = RedisServer::start();
    let mut c = con(&r).await;
    let s = [
        scope("a", 2, 10_000),
        ScopeArg {
            key: ScopeKey::org(),
            limit: 2,
            window_ms: 10_000,
        },
    ];
    let mut h = Host::new("h1", 1_000);
    let (_, ids) = h.call(&mut c, &s, 2, 2, vec![]).await;
    assert_eq!(ids.len(), 2);
    let (rep, none) = h.call(&mut c, &s, 1, 1, vec![]).await;
    assert!(none.is_empty());
    assert_eq!(rep.scopes[1].live, 2);
    let (rep, again) = h
        .call(&mut c, &s, 1, 1, vec![h.op(OpKind::Release, ids[0], 0, 2)])
        .await;
    assert_eq!(again.len(), 1, "the released slot is free again at once");
    assert_eq!((rep.scopes[0].live, rep.scopes[1].live), (2, 2));
}

#[tokio::test]
async fn idle_scopes_vanish_from_redis() {
    let r = RedisServer::start();
    let mut c = con(&r).await;
    let s = [scope("idle", 5, 300)];
    let keys = Keys::new("test");
    let mut h = Host::new("h1", 100);
    let (_, ids) = h.call(&mut c, &s, 1, 1, vec![]).await;
    assert_eq!(ids.len(), 1);
    let log = keys.log(&s[0].key);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&log)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((1..=400).contains(&ttl), "log key expires: pttl {ttl}");
    let start = Instant::now();
    loop {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&log)
            .arg(keys.waiting(&s[0].key))
            .arg(keys.hosts())
            .query_async(&mut c)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{n} keys still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the guarantee on what Redis recorded: for every interval [a, a + W), the requests
/// whose span [granted, until] meets it are at most N. (A request is counted at OnCall at some
/// point of its span; the most any window can hold is every span that meets it.)
fn max_meeting_any_window(spans: &[(u64, u64)], window: u64) -> usize {
    spans
        .iter()
        .map(|&(_, a)| {
            spans
                .iter()
                .filter(|&&(g, u)| g < a + window && u >= a)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_interval_of_the_window_holds_more_than_n_with_late_and_missing_answers() {
    let r = RedisServer::start();
    const N: u32 = 10;
    const W: u64 = 1_000;
    const BOUND: u64 = 400;
    let s = [scope("exact", N, W)];
    let spans = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let mut tasks = Vec::new();
    let end = Instant::now() + Duration::from_secs(4);
    for t in 0..12 {
        let mut c = con(&r).await;
        let s = s.clone();
        let spans = spans.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Host::new(&format!("h{t}"), BOUND);
            // (id, granted at (Redis ms), answered at (host instant), settle due (instant))
            let mut out: Vec<(u64, u64, Instant, Instant)> = Vec::new();
            while Instant::now() < end {
                let now = Instant::now();
                let mut ops = Vec::new();
                let mut settled = Vec::new();
                out.retain(|&(id, granted, answered, due)| {
                    if due > now {
                        return true;
                    }
                    // The answer came `age` ago; the settle says so.
                    let age = now.duration_since(answered).as_millis() as i64;
                    ops.push(h.op(OpKind::Settle, id, -age, 1));
                    settled.push((granted, age));
                    false
                });
                let want = rand::random_range(0..=3);
                let (rep, ids) = h.call(&mut c, &s, want, want.max(1), ops).await;
                for (granted, age) in settled {
                    spans.lock().unwrap().push((granted, rep.now - age as u64));
                }
                for id in ids {
                    let latency = Duration::from_millis(rand::random_range(0..BOUND - 100));
                    let answered = Instant::now() + latency;
                    match rand::random_range(0..10) {
                        // Never settled: counts to its bound.
                        0 => spans.lock().unwrap().push((rep.now, rep.now + BOUND)),
                        // Settled late: the answer's report comes long after the answer.
                        1 | 2 => out.push((
                            id,
                            rep.now,
                            answered,
                            answered + Duration::from_millis(rand::random_range(100..600)),
                        )),
                        _ => out.push((id, rep.now, answered, answered)),
                    }
                }
                tokio::time::sleep(Duration::from_millis(rand::random_range(1..15))).await;
            }
            // Whatever is still out is never settled: counted to its bound.
            for (_, granted, _, _) in out {
                spans.lock().unwrap().push((granted, granted + BOUND));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let spans = spans.lock().unwrap().clone();
    let worst = max_meeting_any_window(&spans, W);
    assert!(
        worst <= N as usize,
        "{worst} requests could count in one window (N={N})"
    );
    // And the budget was used: about N per (W + latency) over 4 s.
    assert!(
        spans.len() >= 2 * N as usize,
        "only {} granted",
        spans.len()
    );
    eprintln!(
        "granted {} in 4 s, at most {worst} in any window of {W} ms",
        spans.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_asking_at_once_never_get_more_than_n() {
    let r = RedisServer::start();
    let s = [scope("crowd", 20, 10_000)];
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for t in 0..32 {
        let mut c = con(&r).await;
        let s = s.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Host::new(&format!("h{t}"), 1_000);
            barrier.wait().await;
            let (_, ids) = h.call(&mut c, &s, 5, 5, vec![]).await;
            ids.len()
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 20);
}

#[tokio::test]
async fn the_script_is_loaded_again_after_redis_restarts() {
    let mut r = RedisServer::start();
    let s = [scope("restart", 5, 1_000)];
    let sha = redis::Script::new(include_str!("../src/fleet/turn.lua"))
        .get_hash()
        .to_string();
    let mut h = Host::new("h1", 100);
    let mut c = con(&r).await;
    let (_, ids) = h.call(&mut c, &s, 1, 1, vec![]).await;
    assert_eq!(ids.len(), 1);
    r.restart();
    let mut c = con(&r).await;
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        exists,
        vec![0],
        "a restarted Redis has forgotten the script"
    );
    // EVALSHA answers NOSCRIPT; the call loads the script and runs it.
    let (rep, ids) = h.call(&mut c, &s, 1, 1, vec![]).await;
    assert_eq!(ids.len(), 1);
    assert_eq!(rep.scopes[0].live, 1, "and Redis's log starts empty");
}

#[tokio::test]
async fn a_host_with_a_few_alerts_gets_the_next_freed_slots_during_anothers_storm() {
    let r = RedisServer::start();
    let mut c = con(&r).await;
    let s = [scope("storm", 10, 1_000)];
    let mut storm = Host::new("storm", 500);
    let mut small = Host::new("small", 500);
    // The storm host alone takes the whole budget, one request every 30 ms, each answered at
    // once: its slots free one by one, a window after each answer.
    let mut ops = Vec::new();
    for _ in 0..10 {
        let (_, ids) = storm
            .call(&mut c, &s, 1, 5_000, std::mem::take(&mut ops))
            .await;
        assert_eq!(ids.len(), 1, "alone, the storm host gets the whole budget");
        ops = vec![storm.op(OpKind::Settle, ids[0], 0, 1)];
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (rep, _) = storm.call(&mut c, &s, 0, 5_000, ops).await;
    assert_eq!(rep.scopes[0].live, 10);
    // The small host arrives with 3 alerts: the budget is spent; it waits like everyone.
    let (rep, got) = small.call(&mut c, &s, 3, 3, vec![]).await;
    assert!(got.is_empty());
    assert_eq!(rep.scopes[0].waiting, 2);
    tokio::time::sleep(Duration::from_millis(rep.waits[0])).await;
    // From the first freed slot on, both ask, the storm host always first: it is over its
    // share (5) while the small host is under it, so every freed slot goes to the small host.
    let first_free = Instant::now();
    let mut small_got = 0;
    while small_got < 3 {
        let (rep, got) = storm.call(&mut c, &s, 8, 5_000, vec![]).await;
        assert!(
            got.is_empty(),
            "the storm host got a slot ahead of the small host"
        );
        if rep.scopes[0].live < 10 {
            assert_eq!(rep.waits[0], 20, "fairness, not the budget, holds it back");
        }
        let (_, got) = small
            .call(&mut c, &s, 3 - small_got, 3 - small_got, vec![])
            .await;
        small_got += got.len() as u32;
        assert!(
            first_free.elapsed() < Duration::from_millis(400),
            "the small host waited for more than the next few freed slots"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Its backlog served, the rest flows back to the storm host as it frees.
    small.call(&mut c, &s, 0, 0, vec![]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, got) = storm.call(&mut c, &s, 8, 5_000, vec![]).await;
    assert!(!got.is_empty());
}

#[tokio::test]
async fn unused_share_flows_to_the_host_with_work() {
    let r = RedisServer::start();
    let mut c = con(&r).await;
    let s = [scope("flow", 12, 10_000)];
    let mut idle = Host::new("idle", 500);
    let mut busy = Host::new("busy", 500);
    // The idle host is seen, with no backlog.
    idle.call(&mut c, &s, 0, 0, vec![]).await;
    let (rep, got) = busy.call(&mut c, &s, 12, 100, vec![]).await;
    assert_eq!(got.len(), 12);
    assert_eq!(rep.scopes[0].waiting, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_with_backlog_get_equal_shares_of_a_binding_budget() {
    let r = RedisServer::start();
    const N: u32 = 20;
    let s = [scope("fair", N, 500)];
    // Counted after a warm-up: the first host to ask may take the whole budget before the
    // others are seen waiting, as it should.
    let warm = Instant::now() + Duration::from_secs(1);
    let end = warm + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut c = con(&r).await;
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Host::new(&format!("h{t}"), 200);
            let mut got = 0usize;
            let mut ops = Vec::new();
            while Instant::now() < end {
                let (rep, ids) = h.call(&mut c, &s, 4, 1_000, std::mem::take(&mut ops)).await;
                if Instant::now() > warm {
                    got += ids.len();
                }
                // Sent and answered at once.
                ops = ids
                    .iter()
                    .map(|&id| h.op(OpKind::Settle, id, 0, 1))
                    .collect();
                if ids.is_empty() {
                    tokio::time::sleep(Duration::from_millis(rep.waits[0].clamp(2, 100))).await;
                }
            }
            got
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    let mean = got.iter().sum::<usize>() as f64 / got.len() as f64;
    for g in &got {
        assert!(
            (*g as f64 - mean).abs() <= 0.2 * mean,
            "shares {got:?} (mean {mean})"
        );
    }
    eprintln!("shares of 4 hosts with backlog: {got:?}");
}

#[tokio::test]
async fn hosts_are_listed_with_their_requests_in_the_org_budget() {
    let r = RedisServer::start();
    let mut c = con(&r).await;
    let org = [ScopeArg {
        key: ScopeKey::org(),
        limit: 50,
        window_ms: 10_000,
    }];
    let mut a = Host::new("web-01", 500);
    let mut b = Host::new("web-02", 500);
    a.call(&mut c, &org, 3, 3, vec![]).await;
    b.call(&mut c, &org, 1, 1, vec![]).await;
    let hosts = oncall_agent::fleet::hosts(&mut c, &Keys::new("test"), 10_000)
        .await
        .unwrap();
    let seen: BTreeMap<String, u64> = hosts.iter().map(|h| (h.host.clone(), h.requests)).collect();
    assert_eq!(
        seen,
        BTreeMap::from([("web-01".to_string(), 3), ("web-02".to_string(), 1)])
    );
    assert!(hosts.iter().all(|h| h.seen_ms_ago < 5_000));
}

fn fleet_config(r: &RedisServer, host: &str, share: f64) -> FleetConfig {
    FleetConfig::from_raw(
        RawFleet {
            redis: r.url(),
            password_file: None,
            host: Some(host.into()),
            org: Some("test".into()),
            local_share: Some(share),
            hosts: None,
            timeout: Some("200ms".into()),
        },
        |_| Err("no password file".into()),
        || None,
    )
    .unwrap()
}

async fn wait_for(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handle_falls_back_to_its_local_share_and_records_its_sends_when_redis_returns() {
    let mut r = RedisServer::start();
    let url = "https://oncall.example/integrations/v1/formatted_webhook/T0k3n/";
    let budgets = Budgets {
        integrations: vec![(
            "db".into(),
            ScopeKey::integration("test", url),
            Rate {
                count: 8,
                per: Duration::from_secs(3),
            },
        )],
        org: Rate {
            count: 100,
            per: Duration::from_secs(3),
        },
        request_timeout: Duration::from_secs(1),
    };
    let clock = Clock::system();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let (fleet, _task) = Fleet::start(fleet_config(&r, "web-01", 0.25), budgets, clock, shutdown);
    assert!(wait_for(Duration::from_secs(5), || fleet.link() == Link::Up).await);

    // Up: slots come from the shared log, granted ahead on demand.
    fleet.demand("db", 1);
    assert!(
        wait_for(Duration::from_secs(5), || fleet
            .next_free("db", clock.now())
            <= clock.now())
        .await
    );
    let now = clock.now();
    let slot = fleet.take("db", now, now + 1_000).expect("a granted slot");
    fleet.answered(&slot, clock.now(), clock.now());
    fleet.demand("db", 0);

    // Redis stops: the next call fails and the handle falls back at once.
    r.stop();
    fleet.demand("db", 5);
    assert!(wait_for(Duration::from_secs(5), || fleet.link() == Link::Down).await);
    // The local share is 2 of 8 per window, and the send above still counts in it.
    let now = clock.now();
    let mut offline = Vec::new();
    while let Some(s) = fleet.take("db", now, now + 1_000) {
        offline.push(s);
        assert!(
            offline.len() <= 8,
            "the fallback never grants the whole budget"
        );
    }
    assert_eq!(offline.len(), 1, "local share 2, one already used");
    assert!(fleet.next_free("db", now) > now);
    for s in &offline {
        fleet.answered(s, clock.now(), clock.now());
    }
    let st = fleet.status(clock.now());
    assert_eq!(st.local_slots, 1);
    assert_eq!(
        st.scopes
            .iter()
            .find(|s| s.name == "db")
            .unwrap()
            .local_limit,
        2
    );

    // Redis returns (empty): the send made meanwhile is recorded, so other hosts see it.
    r.restart();
    assert!(wait_for(Duration::from_secs(10), || fleet.link() == Link::Up).await);
    let mut c = con(&r).await;
    let live: i64 = redis::cmd("ZCOUNT")
        .arg(Keys::new("test").log(&ScopeKey::integration("test", url)))
        .arg("-inf")
        .arg("+inf")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(live >= 1, "the offline send is in the shared log again");
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(Keys::new("test").log(&ScopeKey::integration("test", url)))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        members
            .iter()
            .all(|m| m.starts_with("web-01:") && !m.contains("T0k3n"))
    );
    // Nothing in Redis holds the token.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.iter().all(|k| !k.contains("T0k3n")), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_slower_than_the_timeout_means_the_local_share_at_once() {
    let r = RedisServer::start();
    let url = "https://oncall.example/integrations/v1/formatted_webhook/Slow/";
    let budgets = Budgets {
        integrations: vec![(
            "db".into(),
            ScopeKey::integration("test", url),
            Rate {
                count: 8,
                per: Duration::from_secs(3),
            },
        )],
        org: Rate {
            count: 100,
            per: Duration::from_secs(3),
        },
        request_timeout: Duration::from_secs(1),
    };
    let clock = Clock::system();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let (fleet, _task) = Fleet::start(fleet_config(&r, "web-01", 0.5), budgets, clock, shutdown);
    assert!(wait_for(Duration::from_secs(5), || fleet.link() == Link::Up).await);
    // Redis stops answering for 2 s, without closing anything.
    let mut c = con(&r).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2_000)
        .arg("ALL")
        .query_async(&mut c)
        .await
        .unwrap();
    let paused = Instant::now();
    fleet.demand("db", 3);
    assert!(wait_for(Duration::from_secs(2), || fleet.link() == Link::Down).await);
    assert!(
        paused.elapsed() < Duration::from_millis(1_000),
        "fell back after {:?}",
        paused.elapsed()
    );
    // Down: the local share (4 of 8) at once.
    let now = clock.now();
    let mut n = 0;
    while fleet.take("db", now, now + 1_000).is_some() {
        n += 1;
        assert!(n <= 8);
    }
    assert_eq!(n, 4);
    // Redis answers again: the link comes back by itself.
    assert!(wait_for(Duration::from_secs(10), || fleet.link() == Link::Up).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_comes_from_password_file_and_never_shows_in_debug() {
    let r = RedisServer::start_with(&["--requirepass", "s3cret-pw"]);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("redis-password");
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    let raw = |password_file: Option<std::path::PathBuf>| RawFleet {
        redis: r.url(),
        password_file,
        host: Some("web-01".into()),
        org: Some("test".into()),
        local_share: None,
        hosts: Some(4),
        timeout: None,
    };
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .map_err(|e| e.to_string())
    };
    let budgets = || Budgets {
        integrations: vec![],
        org: Rate {
            count: 10,
            per: Duration::from_secs(10),
        },
        request_timeout: Duration::from_secs(1),
    };
    let clock = Clock::system();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let with = FleetConfig::from_raw(raw(Some(pw.clone())), read, || None).unwrap();
    assert!(!format!("{with:?}").contains("s3cret-pw"));
    let (fleet, _t) = Fleet::start(with, budgets(), clock, shutdown.clone());
    assert!(wait_for(Duration::from_secs(5), || fleet.link() == Link::Up).await);
    // Without it, Redis refuses: the host keeps to its local share.
    let without = FleetConfig::from_raw(raw(None), read, || None).unwrap();
    let (fleet, _t) = Fleet::start(without, budgets(), clock, shutdown);
    assert!(wait_for(Duration::from_secs(5), || fleet.link() == Link::Down).await);
}
