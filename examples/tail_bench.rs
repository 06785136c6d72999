//! Load tool for the sources (figures in BENCHMARKS.md, "Sources"):
//!
//! 1. lines/s from one tailed file into the durable queue (the real file source and queue
//!    writer, in process, fsync on), against a baseline of reading and parsing the same file
//!    without the queue;
//! 2. `oncall-agent send` calls/s and per-call latency against a running daemon (the release
//!    binary, a fake OnCall on loopback), against two baselines on the same socket: a bare
//!    connect, and `curl --unix-socket` (a process per call, like `send`).
//!
//! ```text
//! cargo build --release && cargo run --release --example tail_bench -- [LINES] [SENDS]
//! ```
//! Defaults: 500000 lines of 200 bytes, 500 sends. Everything runs in a temp dir and stops by
//! itself; traffic stays on 127.0.0.1 and a Unix socket.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oncall_agent::clock::Clock;
use oncall_agent::config::{FileSource, LineFormat, StartAt};
use oncall_agent::queue::Store;
use oncall_agent::queue::{Ingest, WriterConfig};

const LINE_LEN: usize = 200;

fn main() {
    let mut args = std::env::args().skip(1);
    let lines: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let sends: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "machine: {} cores; load average at the start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if lines > 0 {
        rt.block_on(tail(lines));
    }
    if sends > 0 {
        rt.block_on(send(sends));
    }
    println!(
        "load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// One 200-byte JSON line (with its newline), 100 grouping keys.
fn line(n: usize) -> String {
    let head = format!("{{\"alert_uid\":\"k{}\",\"n\":{n},\"title\":\"", n % 100);
    let pad = LINE_LEN - head.len() - 3;
    format!("{head}{}\"}}\n", "x".repeat(pad))
}

async fn tail(lines: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alerts.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        for n in 0..lines {
            let l = line(n);
            assert_eq!(l.len(), LINE_LEN);
            f.write_all(l.as_bytes()).expect("write");
        }
    }
    let bytes = (lines * LINE_LEN) as f64;
    println!(
        "\n## tail: {lines} lines of {LINE_LEN} bytes ({:.0} MB)",
        bytes / 1e6
    );

    // Baseline: read and parse, no queue.
    let t = Instant::now();
    let mut parsed = 0;
    let data = std::fs::read(&path).expect("read");
    for l in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        oncall_agent::alert::parse_alert(l).expect("valid");
        parsed += 1;
    }
    let base = t.elapsed();
    assert_eq!(parsed, lines);
    report("read + parse only (baseline)", lines, base);

    // The file source into the queue, fsync included.
    let (store, _) = Store::open(&dir.path().join("queue"), 32 << 20).expect("store");
    let store = Arc::new(store);
    let (ingest, writer) = Ingest::start(
        store.clone(),
        ["a".to_string()],
        WriterConfig {
            max_bytes: 1 << 30,
            min_free_space: 0,
            channel_capacity: 8192,
            batch_max: 1024,
        },
        Clock::system(),
    )
    .expect("writer");
    let src = FileSource {
        path: path.clone(),
        dir: dir.path().to_owned(),
        name_pattern: glob::Pattern::new("alerts.jsonl").expect("pattern"),
        integration: "a".into(),
        format: LineFormat::Json,
        start_at: StartAt::Beginning,
        max_line: 64 * 1024,
        poll_interval: Duration::from_secs(5),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let task = tokio::spawn(oncall_agent::sources::tail_file(
        src,
        oncall_agent::sources::SourceContext {
            ingest,
            max_body: 1 << 20,
            stop: stop_rx,
            board: Arc::default(),
            clock: oncall_agent::clock::Clock::system(),
        },
    ));
    while store.depth("a").alerts < lines as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t.elapsed();
    report("file source -> durable queue", lines, took);
    println!(
        "  queue cost over the baseline: {:.1}x",
        took.as_secs_f64() / base.as_secs_f64()
    );
    let _ = stop_tx.send(true);
    let _ = task.await;
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
}

fn report(what: &str, n: usize, d: Duration) {
    let s = d.as_secs_f64();
    println!(
        "  {what:<34} {:>9.0} lines/s  {:>6.1} MB/s  ({:.2} s)",
        n as f64 / s,
        (n * LINE_LEN) as f64 / s / 1e6,
        s
    );
}

/// The release binary beside this example (target/release/oncall-agent).
fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("oncall-agent"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release` first",
        bin.display()
    );
    bin
}

async fn send(sends: usize) {
    let bin = agent_bin();
    // A fake OnCall that accepts everything, so the daemon's sender has somewhere to go.
    let app = axum::Router::new().fallback(|| async { "\"Ok.\"" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let oncall = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("run/agent.sock");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[listen]\nunix = \"{}\"\n[limits]\nintegration = \"100000/1s\"\norg = \"100000/1s\"\n\
             [[integration]]\nname = \"a\"\nurl = \"http://{oncall}/integrations/v1/formatted_webhook/T/\"\n\
             [[source]]\ntype = \"spool\"\npath = \"{}\"\n",
            dir.path().join("state").display(),
            socket.display(),
            dir.path().join("spool").display(),
        ),
    )
    .expect("config");
    let mut daemon = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let end = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < end, "the daemon did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("\n## send: {sends} calls, one at a time, to a running daemon (Unix socket)");

    let connect = time_calls(sends * 10, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    print_latency("bare connect (baseline)", &connect);
    // The daemon's own share: the same POST from this process (no process start, no config
    // parse), answered once the alert is fsynced.
    let cfg = oncall_agent::config::Config::load(&config).expect("config");
    let mut posts = Vec::with_capacity(sends);
    for _ in 0..sends {
        let t = Instant::now();
        let a = oncall_agent::local::request(
            &cfg,
            hyper::Method::POST,
            "/v1/integrations/a/alerts",
            b"{\"title\":\"bench\"}".to_vec(),
            Duration::from_secs(5),
        )
        .await
        .expect("post");
        assert_eq!(a.status, 202);
        posts.push(t.elapsed());
    }
    print_latency("POST in process, durable (baseline)", &posts);
    let body = "{\"title\":\"bench\"}";
    let curl = time_calls(sends, || {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--fail", "--unix-socket"])
            .arg(&socket)
            .args([
                "-XPOST",
                "http://localhost/v1/integrations/a/alerts",
                "-d",
                body,
            ])
            .status()
            .is_ok_and(|s| s.success())
    });
    print_latency("curl --unix-socket POST (baseline)", &curl);
    let version = time_calls(sends, || {
        Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    print_latency("oncall-agent --version (startup)", &version);
    let send = || {
        Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args(["send", "-i", "a", "--title", "bench", "--uid", "bench"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let one = time_calls(sends, send);
    print_latency("oncall-agent send", &one);

    for par in [4, 16] {
        let t = Instant::now();
        let per = sends / par;
        let threads: Vec<_> = (0..par)
            .map(|_| {
                let (bin, config) = (bin.clone(), config.clone());
                std::thread::spawn(move || {
                    for _ in 0..per {
                        let ok = Command::new(&bin)
                            .arg("--config")
                            .arg(&config)
                            .args(["send", "-i", "a", "--title", "bench"])
                            .stdin(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .is_ok_and(|s| s.success());
                        assert!(ok, "send failed");
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("sender thread");
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "  send, {par:>2} at a time                  {:>7.0} calls/s",
            (per * par) as f64 / s
        );
    }
    let spooled = std::fs::read_dir(dir.path().join("spool/a"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some())
                .count()
        })
        .unwrap_or(0);
    println!("  (alerts that went to the spool instead of the socket: {spooled})");

    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
}

fn time_calls(n: usize, mut f: impl FnMut() -> bool) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert!(f(), "a call failed");
        out.push(t.elapsed());
    }
    out
}

fn print_latency(what: &str, d: &[Duration]) {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    let total: f64 = v.iter().sum();
    println!(
        "  {what:<36} p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  {:>7.0} calls/s",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        v.len() as f64 / (total / 1e3)
    );
}
