//! Backlog tool: how a deep queue weighs on a restart. For each depth it builds one
//! integration's queue, then starts the real release binary on it (OnCall unreachable, so
//! nothing drains) and measures the time until `/healthz` answers, RSS, how long `/v1/status`
//! takes, and the disk the queue uses; then RSS while the daemon drains into a fake OnCall, and
//! the disk once the queue is empty.
//!
//! ```text
//! cargo build --release --bins --examples
//! ./target/release/examples/backlog --depths 100000,1000000 --base-bin /path/to/old/oncall-agent
//! ```
//!
//! The queue is built in process with the agent's own `Store` (batches of `--batch` alerts,
//! each applied and fsynced as the writer does), 512-byte formatted_webhook bodies, each with its
//! own `alert_uid`. Every binary gets its own copy of it (an older binary rewrites what it does
//! not know), and restarts `--restarts` times on that copy: with OnCall down nothing is acked,
//! so every start sees the same queue. The first start is reported apart: sled writes its
//! snapshot only when it opens a database, so that start replays the whole log the build wrote,
//! as a daemon's first restart after a storm does; later ones read the snapshot. The page cache is warm (the copy was just written), as it
//! is for a daemon restarted in place.
//!
//! Bounded: every start has a 120 s deadline, every request 30 s, the drain `--drain-secs`;
//! children get SIGTERM (SIGKILL after 10 s) and the work folder is removed at the end unless
//! `--keep`. Traffic goes only to 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use oncall_agent::queue::{Envelope, Store};

/// A start that has not answered /healthz by then is a failure.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// One request to the daemon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The integration every alert goes to.
const INTEGRATION: &str = "backlog";

#[derive(Parser, Debug)]
#[command(about = "Restart time, RSS, status time and disk of a deep queue")]
struct Args {
    /// Queue depths to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    depths: Vec<u64>,
    /// The binary under test (default: target/release/oncall-agent beside this example).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// A baseline binary measured in the same run, on its own copy of each queue.
    #[arg(long)]
    base_bin: Option<PathBuf>,
    /// Starts per binary and depth. The first replays every write since the queue was built
    /// (sled reads its log back to its last snapshot, which it writes only when it opens a
    /// database); the median of the others is reported as "restart".
    #[arg(long, default_value_t = 3)]
    restarts: usize,
    /// Alerts per commit while building the queue.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Body size of each alert, bytes.
    #[arg(long, default_value_t = 512)]
    body: usize,
    /// Seconds to watch RSS while the daemon drains into a fake OnCall (0: skip).
    #[arg(long, default_value_t = 20)]
    drain_secs: u64,
    /// `queue.cache_capacity` given to the daemon (default: the daemon's own).
    #[arg(long)]
    cache_capacity: Option<String>,
    /// Work folder (default: a temp folder, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work folder.
    #[arg(long)]
    keep: bool,
    /// Keep each built queue in this folder (`seed-DEPTH`) and use it again in later runs
    /// instead of building it (it is copied, never changed).
    #[arg(long)]
    seeds: Option<PathBuf>,
    /// Skip measuring the disk after every alert is acked.
    #[arg(long)]
    no_drained_disk: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backlog: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One binary under test.
struct Bin {
    label: &'static str,
    path: PathBuf,
}

/// What one start measured.
#[derive(Debug, Clone, Copy, Default)]
struct Start {
    ready_ms: f64,
    rss_ready: u64,
    /// RSS 2 s after ready: the dispatcher has read its window and tried to send.
    rss_settled: u64,
    status_ms: f64,
    /// The depth `/v1/status` reported.
    depth: u64,
}

fn run(args: &Args) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("locating this example's binary")?;
    let default_bin = me
        .parent()
        .and_then(Path::parent)
        .context("not inside a cargo target folder; pass --agent-bin")?
        .join("oncall-agent");
    let mut bins = Vec::new();
    if let Some(b) = &args.base_bin {
        bins.push(Bin {
            label: "base",
            path: b.clone(),
        });
    }
    bins.push(Bin {
        label: "now",
        path: args.agent_bin.clone().unwrap_or(default_bin),
    });
    for b in &bins {
        if !b.path.is_file() {
            bail!("{} is not a file", b.path.display());
        }
    }
    let temp = tempfile::Builder::new().prefix("backlog-").tempdir_in(
        args.dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(".")),
    )?;
    let work = temp.path().to_owned();
    println!("work folder: {}", work.display());
    println!("load at start: {}", loadavg());
    let mut rows = Vec::new();
    for &depth in &args.depths {
        let seed = args
            .seeds
            .as_ref()
            .unwrap_or(&work)
            .join(format!("seed-{depth}"));
        let disk = if seed.join("queue").is_dir() && args.seeds.is_some() {
            let disk = du(&seed.join("queue"));
            println!(
                "depth {depth}: kept from an earlier run, {} on disk ({:.0} B/alert)",
                mib(disk),
                disk as f64 / depth as f64,
            );
            disk
        } else {
            let t = Instant::now();
            let payload_bytes = build_queue(&seed.join("queue"), depth, args.batch, args.body)?;
            let disk = du(&seed.join("queue"));
            println!(
                "depth {depth}: built in {:.1}s, {} on disk ({:.0} B/alert, {:.2}x the records), load {}",
                t.elapsed().as_secs_f64(),
                mib(disk),
                disk as f64 / depth as f64,
                disk as f64 / payload_bytes as f64,
                loadavg()
            );
            disk
        };
        for b in &bins {
            let state = work.join(format!("{}-{depth}", b.label));
            copy_dir(&seed, &state)?;
            let mut starts = Vec::new();
            for i in 0..args.restarts {
                let s = start_once(b, &state, args, None)?;
                println!(
                    "  {} start {}: ready {:.0} ms, RSS {} / {} (settled), status {:.1} ms (depth {}), load {}",
                    b.label,
                    i + 1,
                    s.ready_ms,
                    mib(s.rss_ready),
                    mib(s.rss_settled),
                    s.status_ms,
                    s.depth,
                    loadavg()
                );
                if s.depth != depth {
                    bail!(
                        "{} reported depth {} for a queue of {depth}",
                        b.label,
                        s.depth
                    );
                }
                starts.push(s);
            }
            let drain = if args.drain_secs > 0 {
                let d = drain_once(b, &state, args)?;
                println!(
                    "  {} draining for {} s: {} delivered, RSS peak {} (VmHWM {}), load {}",
                    b.label,
                    args.drain_secs,
                    d.delivered,
                    mib(d.rss_max),
                    mib(d.hwm),
                    loadavg()
                );
                Some(d)
            } else {
                None
            };
            std::fs::remove_dir_all(&state).ok();
            let later = if starts.len() > 1 {
                median_start(&starts[1..])
            } else {
                starts[0]
            };
            rows.push((b.label, depth, starts[0], later, drain, disk));
        }
        // Space after the queue drains, with this build's store: every alert acked as the
        // dispatcher does (batches, flush), then the database reopened.
        if !args.no_drained_disk {
            let copy = work.join(format!("drained-{depth}"));
            copy_dir(&seed, &copy)?;
            let (drained, reopened) = drain_in_process(&copy.join("queue"))?;
            println!(
                "  all acked: {} on disk; after a reopen: {} (load {})",
                mib(drained),
                mib(reopened),
                loadavg()
            );
            std::fs::remove_dir_all(&copy).ok();
        }
        if args.seeds.is_none() {
            std::fs::remove_dir_all(&seed).ok();
        }
    }
    println!();
    println!(
        "| depth | build | ready ms: first start / restart | RSS MiB at ready / settled: first / restart | status ms | RSS draining MiB | disk B/alert |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for (label, depth, first, s, d, disk) in &rows {
        let m = |b: u64| format!("{:.1}", b as f64 / (1024.0 * 1024.0));
        println!(
            "| {depth} | {label} | {:.0} / {:.0} | {} / {}, {} / {} | {:.1} | {} | {:.0} |",
            first.ready_ms,
            s.ready_ms,
            m(first.rss_ready),
            m(first.rss_settled),
            m(s.rss_ready),
            m(s.rss_settled),
            s.status_ms,
            d.as_ref().map_or("-".into(), |d| m(d.rss_max)),
            *disk as f64 / *depth as f64
        );
    }
    println!("load at end: {}", loadavg());
    if args.keep {
        let kept = temp.keep();
        println!("kept {}", kept.display());
    }
    Ok(())
}

fn median_start(v: &[Start]) -> Start {
    let med = |f: &dyn Fn(&Start) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    Start {
        ready_ms: med(&|s| s.ready_ms),
        rss_ready: med(&|s| s.rss_ready as f64) as u64,
        rss_settled: med(&|s| s.rss_settled as f64) as u64,
        status_ms: med(&|s| s.status_ms),
        depth: v[0].depth,
    }
}

/// Builds a queue of `depth` alerts; returns the bytes of the records written.
fn build_queue(path: &Path, depth: u64, batch: usize, body: usize) -> anyhow::Result<u64> {
    let (store, _) = Store::open(path, 32 << 20)?;
    let mut written = 0u64;
    let mut left = depth;
    let mut uid = 0u64;
    while left > 0 {
        let n = left.min(batch as u64);
        let first = store.reserve_seq(n);
        let mut rows = Vec::with_capacity(n as usize);
        for i in 0..n {
            uid += 1;
            let env = Envelope {
                received_at: 1_700_000_000_000 + uid,
                attempts: 0,
                next_attempt_at: 0,
                key_hash: uid,
                payload: body_of(uid, body),
            }
            .encode();
            written += env.len() as u64;
            rows.push((INTEGRATION.to_string(), first + i, env));
        }
        store.append(&rows, &[])?;
        store.sync()?;
        left -= n;
    }
    drop(store);
    // Not reopened: sled writes its snapshot (what a start reads instead of the log) only when
    // it opens a database, so the first start below replays every write, as a daemon's first
    // start after a storm does.
    wait_flock_free(&path.join("db"))?;
    Ok(written)
}

/// Waits until nobody holds sled's lock on its file (it lets go a moment after the drop).
fn wait_flock_free(db: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(db)?;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        // flock on our own open file: takes and releases the lock, nothing else.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{} is still locked", db.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A formatted_webhook alert of about `size` bytes with its own `alert_uid`.
fn body_of(uid: u64, size: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"alert_uid":"backlog-{uid:020}","title":"backlog","state":"alerting","message":""#
    );
    let pad = size.saturating_sub(head.len() + 2);
    let mut v = head.into_bytes();
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(b"\"}");
    v
}

/// sled lets go of its lock a moment after the drop, when its flusher thread ends.
fn wait_unlocked(path: &Path) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match Store::open(path, 1 << 20) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < end && e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Acks every alert as the dispatcher does (reads a window, acks it, flushes), then measures
/// the disk; then reopens the database and measures again.
fn drain_in_process(path: &Path) -> anyhow::Result<(u64, u64)> {
    wait_unlocked(path)?;
    let (store, _) = Store::open(path, 32 << 20)?;
    let mut after = 0;
    loop {
        let window = store.load_after(INTEGRATION, after, 1000)?;
        let Some((last, _)) = window.last() else {
            break;
        };
        after = *last;
        let seqs: Vec<(u64, u64)> = window
            .iter()
            .map(|(s, e)| (*s, e.payload.len() as u64 + 29))
            .collect();
        store.ack(INTEGRATION, &seqs)?;
        store.flush()?;
    }
    store.sync()?;
    let drained = du(path);
    drop(store);
    wait_unlocked(path)?;
    // wait_unlocked opened and dropped it once more: the reopen is done.
    Ok((drained, du(path)))
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("cp -a")?;
    if !st.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

/// Bytes the folder's files take on disk (allocated blocks, as `du` counts).
fn du(path: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += du(&e.path());
        } else {
            total += m.blocks() * 512;
        }
    }
    total
}

/// RSS split by kind of mapping: the main heap, other anonymous memory (malloc's other arenas,
/// its mmapped chunks, thread stacks), and file-backed pages (the binary and libraries).
fn smaps_split(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut heap, mut anon, mut file) = (0u64, 0u64, 0u64);
    let mut kind = 0;
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let first = w.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            kind = if path == "[heap]" {
                0
            } else if path.starts_with('/') {
                2
            } else {
                1
            };
        } else if first == "Rss:" {
            let kib: u64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match kind {
                0 => heap += kib * 1024,
                1 => anon += kib * 1024,
                _ => file += kib * 1024,
            }
        }
    }
    format!(
        "heap {}, other anonymous {}, files {}",
        mib(heap),
        mib(anon),
        mib(file)
    )
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn write_config(
    state: &Path,
    tcp: SocketAddr,
    oncall: SocketAddr,
    args: &Args,
) -> anyhow::Result<PathBuf> {
    let cache = args
        .cache_capacity
        .as_ref()
        .map(|c| format!("cache_capacity = \"{c}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"state_dir = "{state}"
[listen]
tcp = "{tcp}"
[limits]
integration = "1000000/5m"
org = "1000000/5m"
[delivery]
concurrency = 16
[queue]
max_bytes = "64GiB"
{cache}[log]
level = "info"
[[integration]]
name = "{INTEGRATION}"
url = "http://{oncall}/integrations/v1/formatted_webhook/BACKLOG/"
"#,
        state = state.display(),
    );
    let p = state.join("agent.toml");
    std::fs::write(&p, text)?;
    // Readable by us alone, as the agent asks of a file holding URLs.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(p)
}

/// A started daemon; dropping it stops it.
struct Daemon {
    child: Option<Child>,
    pid: u32,
    tcp: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    fn spawn(bin: &Path, config: &Path, tcp: SocketAddr, log: PathBuf) -> anyhow::Result<Daemon> {
        let logfile = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        // If this tool is killed outright, the daemon gets SIGTERM from the kernel instead of
        // living on. Only async-signal-safe prctl runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Daemon {
            pid: child.id(),
            child: Some(child),
            tcp,
            log,
        })
    }

    /// Polls /healthz every 2 ms until it answers 200.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                bail!(
                    "the daemon exited at start ({st}); its log:\n{}",
                    self.log_tail()
                );
            }
            if get(self.tcp, "/healthz").is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no /healthz within {START_TIMEOUT:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn rss(&self) -> (u64, u64) {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| -> u64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Our own child, not yet reaped: the pid cannot name another process.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One HTTP/1.1 GET on a new connection: status code and body.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked bodies: the JSON sits between the chunk sizes; find it.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body.to_string(),
    };
    Ok((code, body))
}

/// Starts the binary on `state` with OnCall unreachable (a closed port), measures, stops it.
fn start_once(
    b: &Bin,
    state: &Path,
    args: &Args,
    oncall: Option<SocketAddr>,
) -> anyhow::Result<Start> {
    let tcp = free_port()?;
    let oncall = match oncall {
        Some(a) => a,
        None => free_port()?,
    };
    let config = write_config(state, tcp, oncall, args)?;
    let t0 = Instant::now();
    let mut d = Daemon::spawn(&b.path, &config, tcp, state.join("daemon.log"))?;
    d.wait_ready()?;
    let ready_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (rss_ready, _) = d.rss();
    std::thread::sleep(Duration::from_secs(2));
    let (rss_settled, _) = d.rss();
    println!("    settled: {}", smaps_split(d.pid));
    let mut times = Vec::new();
    let mut depth = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let (code, body) = get(d.tcp, "/v1/status")?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if code != 200 {
            bail!("/v1/status answered {code}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body).context("status JSON")?;
        depth = v["integrations"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == INTEGRATION))
            .and_then(|i| i["depth"].as_u64())
            .unwrap_or(0);
    }
    times.sort_by(f64::total_cmp);
    Ok(Start {
        ready_ms,
        rss_ready,
        rss_settled,
        status_ms: times[times.len() / 2],
        depth,
    })
}

/// What a drain measured.
struct Drain {
    delivered: u64,
    rss_max: u64,
    hwm: u64,
}

/// Starts the binary with a fake OnCall that answers 200 at once, and samples RSS every 100 ms
/// for `--drain-secs`.
fn drain_once(b: &Bin, state: &Path, args: &Args) -> anyhow::Result<Drain> {
    let delivered = Arc::new(AtomicU64::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let oncall = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let count = delivered.clone();
    let server = std::thread::spawn(move || {
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/integrations/v1/{kind}/{token}/",
                axum::routing::post(move || {
                    let c = count.clone();
                    async move {
                        c.fetch_add(1, Ordering::Relaxed);
                        "\"Ok.\""
                    }
                }),
            );
            let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let _ = axum::serve(l, app).await;
        })
    });
    let tcp = free_port()?;
    let config = write_config(state, tcp, oncall, args)?;
    let mut d = Daemon::spawn(&b.path, &config, tcp, state.join("drain.log"))?;
    d.wait_ready()?;
    let end = Instant::now() + Duration::from_secs(args.drain_secs);
    let mut rss_max = 0;
    while Instant::now() < end {
        rss_max = rss_max.max(d.rss().0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, hwm) = d.rss();
    drop(d);
    // The server thread runs until the process exits; it holds nothing but a loopback port.
    drop(server);
    Ok(Drain {
        delivered: delivered.load(Ordering::Relaxed),
        rss_max,
        hwm,
    })
}
