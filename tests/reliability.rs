//! The promise "no alert lost", checked: kill -9 under load, upstream outages of every kind,
//! a slow upstream, a full disk, hostile clients, and secrets kept out of everything printed.
//! Figures are printed (run with `--nocapture`) and recorded in RELIABILITY.md.
//!
//! `ONCALL_AGENT_SOAK=1` turns the crash campaign into the release soak (200 kills).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FAST: &str = "[delivery]\nretry_initial = \"50ms\"\nretry_max = \"400ms\"\nprobe_interval = \"1s\"\ntimeout = \"1s\"\n[limits]\nintegration = \"100000/1s\"\norg = \"100000/1s\"\n";

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Ids (client, n) of the alerts OnCall received, in arrival order.
fn arrivals(oncall: &FakeOnCall) -> Vec<(u64, u64)> {
    oncall
        .accepted()
        .iter()
        .filter_map(|r| Some((r.body["c"].as_u64()?, r.body["n"].as_u64()?)))
        .collect()
}

/// Per key (client, n % 5): the order of first arrival must be the order of acceptance.
fn assert_order_per_key(arrived: &[(u64, u64)]) {
    let mut seen = BTreeSet::new();
    let mut per_key: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
    for &(c, n) in arrived {
        if seen.insert((c, n)) {
            per_key.entry((c, n % 5)).or_default().push(n);
        }
    }
    for (k, ns) in per_key {
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, sorted, "key {k:?} arrived out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_campaign_under_load_loses_nothing() {
    let soak = std::env::var("ONCALL_AGENT_SOAK").is_ok_and(|v| v == "1");
    let kills = if soak { 200 } else { 20 };
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start(&format!(
        "{FAST}{}",
        integration("a", &oncall.url("formatted_webhook", "T"))
    ))
    .await;
    let accepted: Arc<Mutex<BTreeSet<(u64, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let (accepted, stop, base) = (accepted.clone(), stop.clone(), d.base());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!(r#"{{"c":{c},"n":{n},"alert_uid":"c{c}-k{}"}}"#, n % 5);
                let r = http
                    .post(format!("{base}/v1/integrations/a/alerts"))
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        accepted.lock().unwrap().insert((c, n));
                        n += 1;
                    }
                    // The daemon is down or restarting: the same alert is tried again, as a
                    // monitoring tool would.
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut rand_ms = |lo: u64, hi: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        lo + rng_state % (hi - lo)
    };
    for _ in 0..kills {
        // A random moment to kill: this sleep picks the moment, it synchronises nothing.
        tokio::time::sleep(Duration::from_millis(rand_ms(30, 250))).await;
        d.kill9();
        d.spawn().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let all_in = wait_until(Duration::from_secs(60), || {
        let got: BTreeSet<(u64, u64)> = arrivals(&oncall).into_iter().collect();
        accepted.is_subset(&got)
    })
    .await;
    let arrived = arrivals(&oncall);
    let unique: BTreeSet<(u64, u64)> = arrived.iter().copied().collect();
    let lost: Vec<_> = accepted.difference(&unique).collect();
    let duplicates = arrived.len() - unique.len();
    println!(
        "crash campaign: kills={kills} accepted={} delivered_unique={} lost={} duplicates={duplicates} max_rss_kib={}",
        accepted.len(),
        unique.len(),
        lost.len(),
        rss_kib(d.pid())
    );
    assert!(
        all_in && lost.is_empty(),
        "lost {} alerts: {lost:?}",
        lost.len()
    );
    assert!(
        accepted.len() > kills * 5,
        "too little load to prove anything"
    );
    // Duplicates come only from requests in flight (concurrency 4) or answered but not yet
    // acknowledged on disk at each kill.
    assert!(
        duplicates <= kills * 8,
        "{duplicates} duplicates for {kills} kills"
    );
    assert_order_per_key(&arrived);
}

/// Issue 10, scenarios: kill -9 while a SIGHUP reload is under way (each reload adds or
/// removes an integration, so it does real work), with `oncall-agent send` run concurrently
/// the whole time: each falls back to the spool folder while the daemon is down, restarting
/// or refusing. No alert `send` reported as taken is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_reloads_with_send_falling_back_to_the_spool_loses_nothing() {
    let kills = 10;
    let oncall = FakeOnCall::start(&["T", "U"]).await;
    let (url_a, url_b) = (
        oncall.url("formatted_webhook", "T"),
        oncall.url("formatted_webhook", "U"),
    );
    let extra = |dir: &std::path::Path, with_b: bool| {
        format!(
            "{FAST}[[source]]\ntype = \"spool\"\npath = \"{}\"\n{}{}",
            dir.join("spool").display(),
            integration("a", &url_a),
            if with_b {
                integration("b", &url_b)
            } else {
                String::new()
            }
        )
    };
    let mut d = Daemon::start_with(|dir| extra(dir, false)).await;
    let accepted: Arc<Mutex<BTreeSet<(u64, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let spooled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..3u64 {
        let (accepted, stop, config) = (accepted.clone(), stop.clone(), d.config_path.clone());
        let spooled = spooled.clone();
        clients.push(tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(bin())
                    .arg("--config")
                    .arg(&config)
                    .args(["send", "-i", "a", "--title", &format!("c{c} n{n}")])
                    .args(["--uid", &format!("c{c}-k{}", n % 5)])
                    .output()
                    .unwrap();
                // Not taken (a config being rewritten, say): the same alert is sent again.
                if out.status.success() {
                    if String::from_utf8_lossy(&out.stderr).contains("was written to") {
                        spooled.fetch_add(1, Ordering::Relaxed);
                    }
                    accepted.lock().unwrap().insert((c, n));
                    n += 1;
                }
            }
        }));
    }
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand_ms = |lo: u64, hi: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        lo + rng_state % (hi - lo)
    };
    for k in 0..kills {
        d.write_config(&extra(d.dir.path(), k % 2 == 0));
        d.signal("HUP");
        // A random moment in or after the reload: this sleep picks the moment, it
        // synchronises nothing.
        tokio::time::sleep(Duration::from_millis(rand_ms(0, 150))).await;
        d.kill9();
        // Down for a moment: sends in this gap go to the spool.
        tokio::time::sleep(Duration::from_millis(rand_ms(0, 100))).await;
        d.spawn().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let arrived = || -> BTreeSet<(u64, u64)> {
        oncall
            .accepted()
            .iter()
            .filter_map(|r| {
                let t = r.body["title"].as_str()?;
                let (c, n) = t.split_once(' ')?;
                Some((
                    c.strip_prefix('c')?.parse().ok()?,
                    n.strip_prefix('n')?.parse().ok()?,
                ))
            })
            .collect()
    };
    let all_in = wait_until(Duration::from_secs(60), || accepted.is_subset(&arrived())).await;
    let got = arrived();
    let lost: Vec<_> = accepted.difference(&got).collect();
    let spooled = spooled.load(Ordering::Relaxed);
    println!(
        "kill -9 during reloads, send with spool fallback: kills={kills} accepted={} of which spooled={spooled} delivered_unique={} lost={}",
        accepted.len(),
        got.len(),
        lost.len()
    );
    assert!(all_in && lost.is_empty(), "lost {lost:?}\n{}", d.logs());
    assert!(
        accepted.len() > kills * 3,
        "too little load to prove anything"
    );
    assert!(
        spooled > 0,
        "no send fell back to the spool: nothing proved about it"
    );
}

/// A TCP proxy in front of the fake OnCall that can fail in every way a network does.
#[derive(Clone)]
struct Chaos {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
}

const PASS: u8 = 0;
const REFUSE: u8 = 1;
const BLACKHOLE: u8 = 2;
const RESET: u8 = 3;

impl Chaos {
    // SO_LINGER 0 makes close send a reset at once (the deprecation is about blocking on a
    // non-zero linger).
    #[allow(deprecated)]
    async fn start(upstream: SocketAddr) -> Chaos {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let m = mode.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let m = m.clone();
                tokio::spawn(async move {
                    match m.load(Ordering::SeqCst) {
                        // Closing at once with SO_LINGER 0 is what a refused connection looks
                        // like to a client that already connected: a reset, no answer.
                        REFUSE => {
                            let _ = client.set_linger(Some(Duration::ZERO));
                        }
                        BLACKHOLE => {
                            let mut buf = vec![0; 65536];
                            while let Ok(n) = client.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                        RESET => {
                            // Read the request, start an answer, then reset mid-response.
                            let mut buf = vec![0; 65536];
                            let _ = client.read(&mut buf).await;
                            let _ = client
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n\"Ok")
                                .await;
                            let _ = client.set_linger(Some(Duration::ZERO));
                        }
                        _ => {
                            if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                            }
                        }
                    }
                });
            }
        });
        Chaos { addr, mode }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_of_every_kind_then_recovery_delivers_everything_in_order_without_a_storm() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let chaos = Chaos::start(oncall.addr).await;
    let url = format!("http://{}/integrations/v1/formatted_webhook/T/", chaos.addr);
    let d = Daemon::start(&format!("{FAST}{}", integration("a", &url))).await;

    oncall.set_default(Reply::status(503, "maintenance"));
    let phases = [
        (None, "503"),
        (Some(REFUSE), "refused"),
        (Some(BLACKHOLE), "timeout"),
        (Some(RESET), "reset"),
    ];
    let mut n = 0u64;
    let started = Instant::now();
    for (mode, _name) in phases {
        if let Some(m) = mode {
            chaos.set(m);
        }
        for _ in 0..10 {
            let body = format!(r#"{{"c":0,"n":{n},"alert_uid":"k{}"}}"#, n % 5);
            assert_eq!(d.post("a", &body).await.0, 202);
            n += 1;
        }
        // Each failure mode must be met a few times before the next one.
        let retried =
            |st: serde_json::Value| st["integrations"][0]["retried_total"].as_u64().unwrap_or(0);
        let before = retried(d.status().await);
        assert!(
            wait_for(Duration::from_secs(20), || async {
                retried(d.status().await) >= before + 3
            })
            .await,
            "{}",
            d.logs()
        );
    }
    let outage = started.elapsed();
    let attempts_during_outage = oncall.all().len();
    chaos.set(PASS);
    oncall.set_default(Reply::ok());
    assert!(
        wait_until(Duration::from_secs(30), || {
            arrivals(&oncall).into_iter().collect::<BTreeSet<_>>().len() as u64 == n
        })
        .await,
        "{}",
        d.logs()
    );
    assert_order_per_key(&arrivals(&oncall));
    // Backoff: at most `concurrency` (4) keys try per backoff step, and steps are at least
    // retry_initial (50 ms) apart; the 503 phase is the only one the server sees.
    let steps = outage.as_millis() as usize / 50 + 1;
    println!(
        "outage: {:?} long, {attempts_during_outage} requests reached the server during the 503 phase, {n} alerts delivered after recovery",
        outage
    );
    assert!(
        attempts_during_outage <= 4 * steps,
        "{attempts_during_outage} requests in {outage:?}"
    );
    let st = d.status().await;
    assert_eq!(st["integrations"][0]["depth"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_does_not_slow_ingest_or_grow_memory() {
    let oncall = FakeOnCall::start(&["T"]).await;
    oncall.set_default(Reply {
        delay: Duration::from_secs(20),
        ..Reply::ok()
    });
    let d = Daemon::start(&format!(
        "{FAST}{}",
        integration("a", &oncall.url("formatted_webhook", "T"))
    ))
    .await;
    let rss_before = rss_kib(d.pid());
    for n in 0..500 {
        let (s, _) = d.post("a", &format!(r#"{{"c":0,"n":{n}}}"#)).await;
        assert_eq!(s, 202);
    }
    let rss_after = rss_kib(d.pid());
    println!("slow upstream: 500 alerts accepted; RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(rss_after < 100 * 1024, "RSS {rss_after} KiB");
    assert_eq!(d.status().await["integrations"][0]["depth"], 500);
    // In flight: never more than `concurrency`.
    assert!(
        d.status().await["integrations"][0]["in_flight"]
            .as_u64()
            .unwrap()
            <= 4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_503_keeps_what_was_accepted_and_recovers_by_itself() {
    if !nix_is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let oncall = FakeOnCall::start(&["T"]).await;
    oncall.set_default(Reply::status(503, "down"));
    let mnt = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .unwrap();
    if !st.success() {
        eprintln!("skipped: this machine does not allow mounting a tmpfs");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.path().to_owned());
    let state = mnt.path().join("state");
    let mut d = Daemon::start(&format!(
        "{FAST}[queue]\nmin_free_space = \"16MiB\"\n{}",
        integration("a", &oncall.url("formatted_webhook", "T"))
    ))
    .await;
    // Move the state onto the small disk: restart with state_dir there.
    d.stop();
    let cfg = std::fs::read_to_string(&d.config_path).unwrap();
    let cfg = cfg.replacen(
        &format!("state_dir = \"{}\"", d.state_dir().display()),
        &format!("state_dir = \"{}\"", state.display()),
        1,
    );
    std::fs::write(&d.config_path, cfg).unwrap();
    d.spawn().await;

    // Another program takes most of the disk.
    let filler = mnt.path().join("filler");
    std::fs::write(&filler, vec![0u8; 24 * 1024 * 1024]).unwrap();
    let mut ok = 0;
    let mut refusal = String::new();
    let pad = "p".repeat(100_000);
    for n in 0..1000 {
        let (s, b) = d
            .post("a", &format!(r#"{{"c":0,"n":{n},"pad":"{pad}"}}"#))
            .await;
        if s == 202 {
            ok += 1;
        } else {
            assert_eq!(s, 503, "{b}");
            refusal = b;
            break;
        }
    }
    println!("full disk: {ok} alerts accepted before 503: {refusal}");
    assert!(ok > 10, "{ok}");
    assert!(refusal.contains("MiB free"), "{refusal}");
    // Still full: still refused, with the reason.
    let big = format!(r#"{{"c":1,"n":0,"pad":"{pad}"}}"#);
    assert_eq!(d.post("a", &big).await.0, 503);
    // Space returns: the writer takes alerts again, by itself, with no restart.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(d.post("a", &big).await.0, 202, "{}", d.logs());
    oncall.set_default(Reply::ok());
    assert!(
        wait_until(Duration::from_secs(30), || {
            arrivals(&oncall).into_iter().collect::<BTreeSet<_>>().len() == ok + 1
        })
        .await
    );
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_anything_the_daemon_prints_or_serves() {
    let oncall = FakeOnCall::start(&["GOODTOKEN1234"]).await;
    let good = oncall.url("formatted_webhook", "GOODTOKEN1234");
    let bad = oncall.url("alertmanager", "BADTOKEN5678");
    let gone = "http://127.0.0.1:1/integrations/v1/webhook/GONETOKEN9012/";
    let mut d = Daemon::start(&format!(
        "{FAST}{}{}{}",
        integration("good", &good),
        integration("bad", &bad),
        integration("gone", gone)
    ))
    .await;
    oncall.script([
        Reply::status(500, "err"),
        Reply::status(400, "\"Bad\""),
        Reply::status(429, INTEGRATION_429),
    ]);
    for name in ["good", "bad", "gone"] {
        for n in 0..3 {
            assert_eq!(d.post(name, &format!(r#"{{"n":{n}}}"#)).await.0, 202);
        }
    }
    let _ = d.post("nope", "{}").await;
    let _ = d.post("good", "garbage").await;
    assert!(wait_until(Duration::from_secs(10), || oncall.all().len() >= 6).await);
    let status = d.status().await.to_string();
    let metrics = reqwest::get(format!("{}/metrics", d.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let cli = d.cli(&["status"]);
    let cli_json = d.cli(&["status", "--json"]);
    let check = d.cli(&["check-config"]);
    d.stop();
    let everything = format!(
        "{}{status}{metrics}{}{}{}{}{}",
        d.logs(),
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr),
        String::from_utf8_lossy(&cli_json.stdout),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr),
    );
    assert!(everything.contains("DEBUG"), "run at debug level");
    for token in ["GOODTOKEN1234", "BADTOKEN5678", "GONETOKEN9012"] {
        assert!(!everything.contains(token), "{token} leaked:\n{everything}");
    }
    // The redacted form is there, so operators still see where alerts go.
    assert!(
        everything.contains("/integrations/v1/alertmanager/***/"),
        "{everything}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_bounded() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start(&format!(
        // Appended inside the harness's [listen] table.
        "max_connections = 50\nheader_timeout = \"500ms\"\nbody_timeout = \"500ms\"\n{}",
        integration("a", &oncall.url("formatted_webhook", "T"))
    ))
    .await;
    // 100k headers: refused, not buffered.
    let mut s = tokio::net::TcpStream::connect(d.tcp).await.unwrap();
    let mut req = String::from("POST /v1/integrations/a/alerts HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100_000 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    let _ = s.write_all(req.as_bytes()).await;
    let mut answer = vec![0; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
        .await
        .unwrap()
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(
        n == 0 || head.contains("431") || head.contains("400"),
        "{head}"
    );

    // A 10 MB body: refused from its Content-Length, before it is read.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/integrations/a/alerts", d.base()))
        .body(vec![b'x'; 10 * 1024 * 1024])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }

    // Slowloris: headers never finish; the connection is closed after header_timeout.
    let mut slow = tokio::net::TcpStream::connect(d.tcp).await.unwrap();
    slow.write_all(b"POST /v1/integrations/a/alerts HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut b = [0u8; 64];
        loop {
            match slow.read(&mut b).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true));

    // A body that never completes: 408 after body_timeout.
    let mut trickle = tokio::net::TcpStream::connect(d.tcp).await.unwrap();
    trickle
        .write_all(b"POST /v1/integrations/a/alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let mut buf = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), trickle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("408"));

    // Thousands of idle connections: at most max_connections are served; the daemon still
    // answers once they go away, and idle ones are closed by the header timeout.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        match tokio::net::TcpStream::connect(d.tcp).await {
            Ok(c) => idle.push(c),
            Err(_) => break,
        }
    }
    let rss = rss_kib(d.pid());
    println!(
        "hostile clients: {} idle connections opened; RSS {rss} KiB",
        idle.len()
    );
    assert!(rss < 100 * 1024);
    drop(idle);
    assert!(
        wait_for(Duration::from_secs(10), || async {
            d.post("a", r#"{"ok":1}"#).await.0 == 202
        })
        .await
    );
}
