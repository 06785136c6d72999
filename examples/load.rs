//! Ingest load tool: drives N concurrent keep-alive clients at a real `oncall-agent` over the
//! loopback TCP port and the Unix socket, drives the same load at two baselines in the same
//! run, and prints alerts/s, ack latency (p50/p99/max), CPU per alert and each server's RSS.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example load -- --clients 1,8,64 --duration 5s --repeat 5
//! ```
//!
//! The machine is shared and noisy, so every figure comes with baselines from the same round,
//! and each run reports the CPU used by the server, by this tool and by everything else.
//! `--agent-bin-b` drives a second build in the same rounds (before/after a change);
//! `--connect-tcp`/`--connect-unix`/`--pid` drive a daemon that is already running.
//!
//! Targets, each its own process, started fresh (with an empty temp state dir) for every run:
//! - `agent`: `target/release/oncall-agent run` with a temp config whose one integration points
//!   at a closed 127.0.0.1 port, so delivery fails at once and backs off: what is measured is
//!   ingest, answered 202 only after the group commit's fsync.
//! - `noop`: this example re-run as a server on the agent's own listener loop
//!   (`server::serve`, same hyper settings, same 2-worker runtime), whose handler reads
//!   the body and answers 202: the cost of the HTTP stack alone.
//! - `fsync`: the same server whose handler checks the alert as the agent does and writes it
//!   with the agent's `Store` in a commit of its own, one at a time: one sled insert + flush +
//!   fsync per request, i.e. the writer without group commit.
//!
//! Everything is bounded: a run lasts `--warmup` + `--duration` (or until `--requests` answers),
//! a request has a 10 s deadline, servers get SIGTERM then SIGKILL, and the temp dir is removed
//! at the end, also on Ctrl-C (servers also get SIGTERM if this tool is killed). Traffic goes
//! only to 127.0.0.1 (`--connect-tcp` must be loopback) and to Unix sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use oncall_agent::alert::parse_alert;
use oncall_agent::queue::{Envelope, Store};
use oncall_agent::server::{ConnLimits, bind_unix, serve};

/// A request that takes longer than this is counted as an error and its connection dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a started server gets to answer /healthz on both listeners.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Latency samples kept per run (4 bytes each); past this the rate is still counted.
const MAX_SAMPLES: usize = 4_000_000;
/// Largest body the baseline servers read (the agent's default `queue.max_body`).
const MAX_BODY: usize = 1024 * 1024;
/// The targets stated in the core issue.
const TARGET_RATE: f64 = 20_000.0;
const TARGET_P99_MS: f64 = 20.0;
const TARGET_IDLE_RSS_BYTES: u64 = 30_000_000;

#[derive(Debug, Parser)]
#[command(
    name = "load",
    about = "Ingest load against oncall-agent, with a no-op and a fsync-per-request baseline",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    serve: Option<ServeCmd>,
    /// Concurrent keep-alive clients, one connection each; one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Transports to drive; one run per value.
    #[arg(long, value_delimiter = ',', default_value = "tcp,unix")]
    transports: Vec<Transport>,
    /// Servers to drive; ratios are taken against noop and fsync when they are measured.
    #[arg(long, value_delimiter = ',', default_value = "noop,fsync,agent")]
    targets: Vec<Target>,
    /// Measured time of one run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before the measured time (connections warm, allocator settled); not counted.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// End a run after this many measured answers (still at most --duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Runs of each (transport, clients, target); the table shows medians.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Size of each alert body in bytes (a formatted_webhook JSON object, padded).
    #[arg(long, default_value_t = 512)]
    body_bytes: usize,
    /// Wait after a server is ready before reading its idle RSS.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Worker threads of the load generator (1 = a current-thread runtime, the cheapest).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// The daemon binary (default: `oncall-agent` next to this example's folder, i.e.
    /// target/release/oncall-agent after `cargo build --release`).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// A second daemon binary (say, a candidate change), driven right after `agent` in every
    /// round as target `agent-b`, so before and after are measured in the same run.
    #[arg(long)]
    agent_bin_b: Option<PathBuf>,
    /// Set `queue.batch_max` in the agent's temp config (default: the agent's default).
    #[arg(long)]
    batch_max: Option<usize>,
    /// Set `queue.cache_capacity` in the agent's temp config, e.g. "8MiB" (default: the
    /// agent's default).
    #[arg(long)]
    cache_capacity: Option<String>,
    /// Drive an agent that is already running at this loopback TCP address instead of
    /// starting one (with --connect-unix and --integration; --pid for its RSS).
    #[arg(long)]
    connect_tcp: Option<SocketAddr>,
    /// The running agent's Unix socket (see --connect-tcp).
    #[arg(long)]
    connect_unix: Option<PathBuf>,
    /// The running agent's process id, for its RSS (see --connect-tcp).
    #[arg(long)]
    pid: Option<u32>,
    /// Integration the alerts are posted to (must exist in a running agent's config).
    #[arg(long, default_value = "load")]
    integration: String,
}

/// The baseline servers: this example re-run as a child process.
#[derive(Debug, Subcommand)]
enum ServeCmd {
    #[command(name = "__serve", hide = true)]
    Serve {
        #[arg(long)]
        kind: Target,
        #[arg(long)]
        tcp: SocketAddr,
        #[arg(long)]
        unix: PathBuf,
        #[arg(long)]
        state: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Transport {
    Tcp,
    Unix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Target {
    Noop,
    Fsync,
    Agent,
    /// `--agent-bin-b`: added after `agent`, never named on the command line.
    #[value(skip)]
    AgentB,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Noop => "noop",
            Target::Fsync => "fsync",
            Target::Agent => "agent",
            Target::AgentB => "agent-b",
        }
    }
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(ServeCmd::Serve {
        kind,
        tcp,
        unix,
        state,
    }) = args.serve
    {
        return match serve_baseline(kind, tcp, &unix, &state) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("load __serve: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Dropping the run on Ctrl-C drops its server guards and temp dir: children are stopped
    // and files removed before the process exits.
    let result = rt.block_on(async {
        tokio::select! {
            r = run_all(&args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Orchestration.

/// What one run measured.
#[derive(Debug)]
struct RunResult {
    target: Target,
    transport: Transport,
    clients: usize,
    /// 202 answers inside the measured window.
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// The measured window (to the last answer in --requests mode).
    elapsed: Duration,
    /// Ack latencies of measured 202s, microseconds, sorted.
    latencies: Vec<u32>,
    rss_idle: Option<u64>,
    rss_peak: Option<u64>,
    /// RSS `--settle` after the load ended: what the daemon keeps once it has worked.
    rss_after: Option<u64>,
    /// CPU used during the measured window, in cores (1.0 = one core busy throughout).
    cpu: CpuUse,
}

/// CPU use over a run's measured window, in cores.
#[derive(Debug, Default, Clone, Copy)]
struct CpuUse {
    /// The server under test (NaN when its pid is unknown).
    server: f64,
    /// This load generator.
    client: f64,
    /// Everything else on the machine (other users, the kernel's own threads).
    others: f64,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Server CPU per accepted alert, microseconds.
    fn server_us_per_alert(&self) -> f64 {
        self.cpu.server * self.elapsed.as_secs_f64() * 1e6 / self.ok.max(1) as f64
    }
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let n = self.latencies.len();
        let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        self.latencies[i] as f64 / 1000.0
    }
}

async fn run_all(args: &Args) -> anyhow::Result<()> {
    if args.clients.contains(&0) || args.repeat == 0 || args.duration.is_zero() {
        bail!("--clients, --repeat and --duration must be above zero");
    }
    if let Some(a) = args.connect_tcp
        && !a.ip().is_loopback()
    {
        bail!("--connect-tcp must be a loopback address: this tool sends only to this host");
    }
    let external = args.connect_tcp.is_some() || args.connect_unix.is_some();
    let agent_bin = match &args.agent_bin {
        Some(p) => p.clone(),
        None => default_agent_bin()?,
    };
    if args.targets.contains(&Target::Agent) && !external && !agent_bin.is_file() {
        bail!(
            "{} does not exist: run `cargo build --release` first, or pass --agent-bin",
            agent_bin.display()
        );
    }
    let mut targets = args.targets.clone();
    if let Some(b) = &args.agent_bin_b {
        if !b.is_file() {
            bail!("{} does not exist (--agent-bin-b)", b.display());
        }
        if let Some(i) = targets.iter().position(|t| *t == Target::Agent) {
            targets.insert(i + 1, Target::AgentB);
        }
    }
    let me = std::env::current_exe().context("locating this example's binary")?;
    let tmp = tempfile::Builder::new()
        .prefix("oncall-load-")
        .tempdir()
        .context("creating the temp dir")?;
    let body = Arc::new(body_template(args.body_bytes));

    let mut results = Vec::new();
    let mut run_no = 0;
    for rep in 0..args.repeat {
        for &clients in &args.clients {
            for &transport in &args.transports {
                // Targets back to back, so each ratio compares runs under the same background.
                for &target in &targets {
                    run_no += 1;
                    let dir = tmp.path().join(format!("run-{run_no}"));
                    let server = if target == Target::Agent && external {
                        Server::external(args)?
                    } else {
                        let bin = match (target, &args.agent_bin_b) {
                            (Target::AgentB, Some(b)) => b.as_path(),
                            _ => agent_bin.as_path(),
                        };
                        Server::start(target, &dir, bin, &me, args).await?
                    };
                    tokio::time::sleep(args.settle).await;
                    let rss_idle = server.pid.and_then(|p| proc_status(p).map(|s| s.rss));
                    let endpoint = match transport {
                        Transport::Tcp => Endpoint::Tcp(server.tcp.context("no TCP listener")?),
                        Transport::Unix => {
                            Endpoint::Unix(server.unix.clone().context("no Unix socket")?)
                        }
                    };
                    let mut r = drive(
                        &endpoint,
                        clients,
                        args,
                        &body,
                        &server.integration,
                        (target, transport),
                        server.pid,
                    )
                    .await;
                    r.rss_idle = rss_idle;
                    r.rss_peak = server.pid.and_then(|p| proc_status(p).map(|s| s.hwm));
                    tokio::time::sleep(args.settle).await;
                    r.rss_after = server.pid.and_then(|p| proc_status(p).map(|s| s.rss));
                    eprintln!(
                        "run {run_no} (rep {}): {:<5} {:<4} {:>2} clients: {:>8.0} alerts/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  cpu server {:.2} client {:.2} others {:.2}  errors {}{}",
                        rep + 1,
                        target.name(),
                        transport.name(),
                        clients,
                        r.rate(),
                        r.quantile_ms(0.50),
                        r.quantile_ms(0.99),
                        r.quantile_ms(1.0),
                        r.cpu.server,
                        r.cpu.client,
                        r.cpu.others,
                        r.errors,
                        r.first_error
                            .as_deref()
                            .map(|e| format!(" (first: {e})"))
                            .unwrap_or_default(),
                    );
                    server.stop().await;
                    // Runs leave up to a few hundred MB of sled files: free them as we go.
                    let _ = std::fs::remove_dir_all(&dir);
                    results.push(r);
                }
            }
        }
    }
    print_report(args, &results);
    drop(tmp);
    Ok(())
}

/// `target/<profile>/oncall-agent`, seen from `target/<profile>/examples/load`.
fn default_agent_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this example's binary")?;
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .context("this example is not inside a cargo target folder; pass --agent-bin")?;
    Ok(profile_dir.join("oncall-agent"))
}

/// A formatted_webhook alert of about `size` bytes; `alert_uid` holds a 20-digit slot that
/// each client overwrites so every alert has its own grouping key.
fn body_template(size: usize) -> Vec<u8> {
    let head = br#"{"alert_uid":"load-00000000000000000000","title":"load test","state":"alerting","message":""#;
    let tail = b"\"}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut v = Vec::with_capacity(head.len() + pad + tail.len());
    v.extend_from_slice(head);
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(tail);
    v
}

/// Where the 20 uid digits sit in [`body_template`].
const UID_DIGITS: std::ops::Range<usize> = 19..39;

// ---------------------------------------------------------------------------------------------
// Servers.

/// A server under test. Dropping it stops the child (SIGTERM, then SIGKILL after 5 s).
struct Server {
    child: Option<Child>,
    pid: Option<u32>,
    tcp: Option<SocketAddr>,
    unix: Option<PathBuf>,
    integration: String,
    log: Option<PathBuf>,
}

impl Server {
    fn external(args: &Args) -> anyhow::Result<Server> {
        Ok(Server {
            child: None,
            pid: args.pid,
            tcp: args.connect_tcp,
            unix: args.connect_unix.clone(),
            integration: args.integration.clone(),
            log: None,
        })
    }

    async fn start(
        target: Target,
        dir: &Path,
        agent_bin: &Path,
        me: &Path,
        args: &Args,
    ) -> anyhow::Result<Server> {
        std::fs::create_dir_all(dir.join("run"))?;
        let tcp = free_loopback_port()?;
        let unix = dir.join("run").join("agent.sock");
        let state = dir.join("state");
        let log = dir.join("server.log");
        let mut cmd = match target {
            Target::Agent | Target::AgentB => {
                let config = dir.join("agent.toml");
                std::fs::write(&config, agent_config(dir, tcp, &unix, args)?)?;
                // Readable by us alone, as the agent asks of a file holding URLs.
                std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;
                let mut c = Command::new(agent_bin);
                c.arg("--config").arg(&config).arg("run");
                c
            }
            Target::Noop | Target::Fsync => {
                let mut c = Command::new(me);
                c.arg("__serve")
                    .arg("--kind")
                    .arg(target.name())
                    .arg("--tcp")
                    .arg(tcp.to_string())
                    .arg("--unix")
                    .arg(&unix)
                    .arg("--state")
                    .arg(&state);
                c
            }
        };
        let logfile = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID");
        // If this tool is killed outright, its servers get SIGTERM from the kernel instead of
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
            .spawn()
            .with_context(|| format!("starting {}", target.name()))?;
        let mut server = Server {
            pid: Some(child.id()),
            child: Some(child),
            tcp: Some(tcp),
            unix: Some(unix),
            integration: args.integration.clone(),
            log: Some(log),
        };
        server.wait_ready(target).await?;
        Ok(server)
    }

    /// Waits until both listeners answer /healthz, or the child exits, or START_TIMEOUT.
    async fn wait_ready(&mut self, target: Target) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let endpoints = [
            self.tcp.map(Endpoint::Tcp),
            self.unix.clone().map(Endpoint::Unix),
        ];
        for ep in endpoints.into_iter().flatten() {
            loop {
                if let Some(c) = self.child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    bail!(
                        "{} exited at start ({status}); its log:\n{}",
                        target.name(),
                        self.log_tail()
                    );
                }
                if healthz(&ep).await {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} did not answer /healthz within {START_TIMEOUT:?}; its log:\n{}",
                        target.name(),
                        self.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let Some(p) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn stop(mut self) {
        if let Some(child) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || terminate(child)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

fn terminate(mut child: Child) {
    // The pid is our own child's, not yet reaped, so it cannot name another process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A loopback port that was free a moment ago (bound, then released).
fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?)
}

/// The agent's temp config: one integration whose OnCall is a closed loopback port, so every
/// delivery is refused at once and backs off (and spends the budget of 300/5m): the sender
/// stays out of the measurement.
fn agent_config(dir: &Path, tcp: SocketAddr, unix: &Path, args: &Args) -> anyhow::Result<String> {
    let closed = free_loopback_port()?;
    let batch = args
        .batch_max
        .map(|b| format!("batch_max = {b}\n"))
        .unwrap_or_default()
        + &args
            .cache_capacity
            .as_ref()
            .map(|c| format!("cache_capacity = \"{c}\"\n"))
            .unwrap_or_default();
    Ok(format!(
        r#"state_dir = "{state}"
[listen]
unix = "{unix}"
tcp = "{tcp}"
[queue]
{batch}[log]
level = "info"
[[integration]]
name = "{name}"
url = "http://{closed}/integrations/v1/formatted_webhook/LOADTEST/"
"#,
        state = dir.join("state").display(),
        unix = unix.display(),
        name = args.integration,
    ))
}

/// What /proc/PID/status says about memory, in bytes.
struct ProcMem {
    rss: u64,
    /// Peak RSS since the process started.
    hwm: u64,
}

fn proc_status(pid: u32) -> Option<ProcMem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(ProcMem {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
    })
}

/// CPU counters at one moment, in clock ticks.
struct CpuSnap {
    at: Instant,
    server: Option<u64>,
    client: u64,
    /// Busy time of every CPU of the machine (/proc/stat: all but idle and iowait).
    machine: u64,
}

impl CpuSnap {
    fn take(pid: Option<u32>) -> CpuSnap {
        let proc_ticks = |path: &str| -> Option<u64> {
            let text = std::fs::read_to_string(path).ok()?;
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = &text[text.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        };
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| {
                let line = t.lines().next()?.to_string();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal
                Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
            })
            .unwrap_or(0);
        CpuSnap {
            at: Instant::now(),
            server: pid.and_then(|p| proc_ticks(&format!("/proc/{p}/stat"))),
            client: proc_ticks("/proc/self/stat").unwrap_or(0),
            machine,
        }
    }

    fn since(&self, start: &CpuSnap) -> CpuUse {
        // sysconf only reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let secs = self.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let cores = |ticks: u64| ticks as f64 / hz / secs;
        let server = match (self.server, start.server) {
            (Some(b), Some(a)) => cores(b.saturating_sub(a)),
            _ => f64::NAN,
        };
        let client = cores(self.client.saturating_sub(start.client));
        let machine = cores(self.machine.saturating_sub(start.machine));
        CpuUse {
            server,
            client,
            others: (machine - client - if server.is_nan() { 0.0 } else { server }).max(0.0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The baseline servers (run in a child process: `load __serve --kind noop|fsync`).

struct FsyncState {
    store: Store,
    /// One commit at a time: this baseline is the writer without group commit.
    one_at_a_time: std::sync::Mutex<()>,
    started: Instant,
}

fn serve_baseline(kind: Target, tcp: SocketAddr, unix: &Path, state: &Path) -> anyhow::Result<()> {
    // The daemon's runtime (main.rs): two workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let app = match kind {
            Target::Noop => Router::new().route("/v1/integrations/{name}/alerts", post(noop_alert)),
            Target::Fsync => {
                let (store, _) = Store::open(&state.join("queue"), 32 * 1024 * 1024)?;
                let st = Arc::new(FsyncState {
                    store,
                    one_at_a_time: std::sync::Mutex::new(()),
                    started: Instant::now(),
                });
                Router::new()
                    .route("/v1/integrations/{name}/alerts", post(fsync_alert))
                    .with_state(st)
            }
            Target::Agent | Target::AgentB => {
                bail!("the agent is the real binary, not a baseline")
            }
        };
        let app = app.route("/healthz", get(|| async { "ok\n" }));
        // The agent's defaults (config.rs): 1024 connections, 10 s header deadline.
        let limits = ConnLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tcp_l = tokio::net::TcpListener::bind(tcp).await?;
        let unix_l = bind_unix(unix, 0o660, None)?;
        let a = tokio::spawn(serve(tcp_l, app.clone(), limits, stop_rx.clone()));
        let b = tokio::spawn(serve(unix_l, app, limits, stop_rx));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        let _ = stop_tx.send(true);
        let _ = a.await;
        let _ = b.await;
        Ok(())
    })
}

static NOOP_IDS: AtomicU64 = AtomicU64::new(1);

/// Reads the body (with the agent's deadline) and answers as the agent does, without
/// checking or keeping anything.
async fn noop_alert(UrlPath(name): UrlPath<String>, body: Body) -> Response {
    match tokio::time::timeout(
        Duration::from_secs(30),
        axum::body::to_bytes(body, MAX_BODY),
    )
    .await
    {
        Ok(Ok(_)) => accepted(NOOP_IDS.fetch_add(1, Ordering::Relaxed), &name),
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// Reads and checks the body as the agent does, then commits it alone: insert, flush, fsync.
async fn fsync_alert(
    State(st): State<Arc<FsyncState>>,
    UrlPath(name): UrlPath<String>,
    body: Body,
) -> Response {
    let bytes = match tokio::time::timeout(
        Duration::from_secs(30),
        axum::body::to_bytes(body, MAX_BODY),
    )
    .await
    {
        Ok(Ok(b)) => b,
        _ => return StatusCode::BAD_REQUEST.into_response(),
    };
    let key_hash = match parse_alert(&bytes) {
        Ok(k) => k,
        Err(e) => return (StatusCode::BAD_REQUEST, e.describe("the body")).into_response(),
    };
    let name2 = name.clone();
    let written = tokio::task::spawn_blocking(move || {
        let _one = st.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let seq = st.store.reserve_seq(1);
        let env = Envelope {
            received_at: st.started.elapsed().as_millis() as u64,
            attempts: 0,
            next_attempt_at: 0,
            key_hash,
            payload: bytes.to_vec(),
        };
        st.store
            .append(&[(name2, seq, env.encode())], &[])
            .and_then(|()| st.store.sync())
            .map(|()| seq)
    })
    .await;
    match written {
        Ok(Ok(seq)) => accepted(seq, &name),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The agent's 202 answer, byte for byte in shape.
fn accepted(id: u64, name: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "id": id, "integration": name, "status": "queued" })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Clients.

#[derive(Debug, Clone)]
enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive HTTP/1.1 connection, as `src/local.rs` opens it.
async fn connect(ep: &Endpoint) -> anyhow::Result<Sender> {
    async fn handshake<S>(s: S) -> anyhow::Result<Sender>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(conn);
        Ok(send)
    }
    match ep {
        Endpoint::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a).await?;
            s.set_nodelay(true)?;
            handshake(s).await
        }
        Endpoint::Unix(p) => handshake(tokio::net::UnixStream::connect(p).await?).await,
    }
}

async fn healthz(ep: &Endpoint) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(1), connect(ep)).await else {
        return false;
    };
    let Ok(req) = hyper::Request::get("/healthz")
        .header(hyper::header::HOST, "localhost")
        .body(Full::new(Bytes::new()))
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.send_request(req)).await,
        Ok(Ok(r)) if r.status() == StatusCode::OK
    )
}

/// When a run measures, shared by its clients.
struct Plan {
    measure_from: Instant,
    end: Instant,
    /// Measured requests still to start, when --requests is set.
    budget: Option<AtomicI64>,
}

/// What one client saw.
#[derive(Default)]
struct ClientResult {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<u32>,
    last_done: Option<Instant>,
}

async fn drive(
    ep: &Endpoint,
    clients: usize,
    args: &Args,
    body: &Arc<Vec<u8>>,
    integration: &str,
    (target, transport): (Target, Transport),
    pid: Option<u32>,
) -> RunResult {
    let path: Arc<str> = format!("/v1/integrations/{integration}/alerts").into();
    // Connect everyone first, so the measured window holds requests only.
    let mut senders = Vec::with_capacity(clients);
    let mut connect_errors = 0;
    let mut first_error = None;
    for _ in 0..clients {
        match connect(ep).await {
            Ok(s) => senders.push(s),
            Err(e) => {
                connect_errors += 1;
                first_error.get_or_insert_with(|| format!("connect: {e}"));
            }
        }
    }
    let start = Instant::now();
    let plan = Arc::new(Plan {
        measure_from: start + args.warmup,
        end: start + args.warmup + args.duration,
        budget: args.requests.map(|n| AtomicI64::new(n as i64)),
    });
    // CPU is read when the measured window opens and once every client is done.
    let cpu_start = {
        let at = plan.measure_from;
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            CpuSnap::take(pid)
        })
    };
    let per_client_samples = MAX_SAMPLES / clients.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for (id, sender) in senders.into_iter().enumerate() {
        let (ep, plan, body, path) = (ep.clone(), plan.clone(), body.clone(), path.clone());
        tasks.spawn(client(id, sender, ep, plan, body, path, per_client_samples));
    }
    let mut total = ClientResult::default();
    while let Some(r) = tasks.join_next().await {
        let Ok(r) = r else {
            total.errors += 1;
            continue;
        };
        total.ok += r.ok;
        total.errors += r.errors;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
        total.latencies.extend(r.latencies);
        total.last_done = total.last_done.max(r.last_done);
    }
    let cpu = match cpu_start.await {
        Ok(start) => CpuSnap::take(pid).since(&start),
        Err(_) => CpuUse::default(),
    };
    total.latencies.sort_unstable();
    let elapsed = match (args.requests, total.last_done) {
        (Some(_), Some(t)) if t < plan.end => t.saturating_duration_since(plan.measure_from),
        _ => args.duration,
    };
    RunResult {
        target,
        transport,
        clients,
        ok: total.ok,
        errors: total.errors + connect_errors,
        first_error: first_error.or(total.first_error),
        elapsed,
        latencies: total.latencies,
        rss_idle: None,
        rss_peak: None,
        rss_after: None,
        cpu,
    }
}

async fn client(
    id: usize,
    mut sender: Sender,
    ep: Endpoint,
    plan: Arc<Plan>,
    template: Arc<Vec<u8>>,
    path: Arc<str>,
    max_samples: usize,
) -> ClientResult {
    let mut out = ClientResult {
        latencies: Vec::with_capacity(max_samples.min(1 << 16)),
        ..Default::default()
    };
    let mut body = template.as_ref().clone();
    let mut seq: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= plan.end {
            break;
        }
        let measured = now >= plan.measure_from;
        if measured
            && let Some(b) = &plan.budget
            && b.fetch_sub(1, Ordering::Relaxed) <= 0
        {
            break;
        }
        seq += 1;
        // Unique grouping key per alert: client id and sequence, 20 digits.
        let uid = format!("{:06}{:014}", id % 1_000_000, seq % 100_000_000_000_000);
        if template.len() >= UID_DIGITS.end {
            body[UID_DIGITS].copy_from_slice(uid.as_bytes());
        }
        let req = match hyper::Request::post(&*path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::copy_from_slice(&body)))
        {
            Ok(r) => r,
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
                break;
            }
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        })
        .await;
        let done = Instant::now();
        match answer {
            Ok(Ok(StatusCode::ACCEPTED)) => {
                if measured && done <= plan.end {
                    out.ok += 1;
                    out.last_done = Some(done);
                    if out.latencies.len() < max_samples {
                        let us = done.duration_since(started).as_micros();
                        out.latencies.push(us.min(u32::MAX as u128) as u32);
                    }
                }
            }
            Ok(Ok(status)) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert_with(|| format!("answered {status}"));
            }
            Ok(Err(e)) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
                match connect(&ep).await {
                    Ok(s) => sender = s,
                    Err(_) => break,
                }
            }
            Err(_) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert_with(|| format!("no answer within {REQUEST_TIMEOUT:?}"));
                match connect(&ep).await {
                    Ok(s) => sender = s,
                    Err(_) => break,
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Report.

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mib(b: f64) -> String {
    if b.is_nan() {
        "-".into()
    } else {
        format!("{:.1}", b / (1024.0 * 1024.0))
    }
}

/// Medians of one (transport, clients, target) cell over its repeats.
struct Cell {
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
    rss_idle: f64,
    rss_peak: f64,
    rss_after: f64,
    us_per_alert: f64,
    cpu: CpuUse,
    errors: u64,
}

fn print_report(args: &Args, results: &[RunResult]) {
    let mut cells: BTreeMap<(Transport, usize, Target), Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        cells
            .entry((r.transport, r.clients, r.target))
            .or_default()
            .push(r);
    }
    let summary: BTreeMap<_, Cell> = cells
        .into_iter()
        .map(|(k, rs)| {
            let m = |f: &dyn Fn(&RunResult) -> f64| median(rs.iter().map(|r| f(r)).collect());
            let cell = Cell {
                rate: m(&|r| r.rate()),
                p50: m(&|r| r.quantile_ms(0.50)),
                p99: m(&|r| r.quantile_ms(0.99)),
                max: rs
                    .iter()
                    .map(|r| r.quantile_ms(1.0))
                    .filter(|x| !x.is_nan())
                    .fold(f64::NAN, f64::max),
                rss_idle: m(&|r| r.rss_idle.map_or(f64::NAN, |b| b as f64)),
                rss_peak: m(&|r| r.rss_peak.map_or(f64::NAN, |b| b as f64)),
                rss_after: m(&|r| r.rss_after.map_or(f64::NAN, |b| b as f64)),
                us_per_alert: m(&|r| r.server_us_per_alert()),
                cpu: CpuUse {
                    server: m(&|r| r.cpu.server),
                    client: m(&|r| r.cpu.client),
                    others: m(&|r| r.cpu.others),
                },
                errors: rs.iter().map(|r| r.errors).sum(),
            };
            (k, cell)
        })
        .collect();

    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let l = t.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
            l.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or("?".to_string(), |kib| {
            format!("{:.1} GiB", kib / (1024.0 * 1024.0))
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cmdline: Vec<String> = std::env::args().skip(1).collect();
    println!();
    println!(
        "Date: {}",
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    println!(
        "Machine: {cores} cores, {mem_total} RAM, Linux {}",
        kernel.trim()
    );
    println!(
        "Command: cargo run --release --example load -- {}",
        cmdline.join(" ")
    );
    println!(
        "Each row: median of {} run(s) of {:?} after {:?} warm-up, {}-byte bodies, client runtime with {} thread(s); max is the largest over the runs.",
        args.repeat,
        args.duration,
        args.warmup,
        args.body_bytes,
        args.client_threads.max(1)
    );
    println!(
        "alerts/s counts 202 answers; vs noop/fsync divide it by that baseline's in the same row group. Latency is from sending a request to having its whole answer. cores: CPU used during the measured window by the server, by this load generator, and by everything else on the machine. RSS: after start ({:?} idle), peak (VmHWM), and {:?} after the load.",
        args.settle, args.settle
    );
    println!();
    println!(
        "| transport | clients | target | alerts/s | vs noop | vs fsync | p50 ms | p99 ms | max ms | server CPU µs/alert | cores: server / load / others | RSS idle / peak / after MiB | errors |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((transport, clients, target), c) in &summary {
        let ratio = |base: Target| {
            summary
                .get(&(*transport, *clients, base))
                .filter(|b| b.rate > 0.0)
                .map_or("-".to_string(), |b| format!("{:.2}x", c.rate / b.rate))
        };
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} / {:.2} / {:.2} | {} / {} / {} | {} |",
            transport.name(),
            clients,
            target.name(),
            c.rate,
            ratio(Target::Noop),
            ratio(Target::Fsync),
            c.p50,
            c.p99,
            c.max,
            c.us_per_alert,
            c.cpu.server,
            c.cpu.client,
            c.cpu.others,
            mib(c.rss_idle),
            mib(c.rss_peak),
            mib(c.rss_after),
            c.errors,
        );
    }
    println!();
    for ((transport, clients, target), c) in &summary {
        if *target != Target::AgentB {
            continue;
        }
        if let Some(a) = summary.get(&(*transport, *clients, Target::Agent)) {
            println!(
                "agent-b / agent, {} with {clients} clients: alerts/s {:.2}x, server CPU per alert {:.2}x, p50 {:.2}x, p99 {:.2}x",
                transport.name(),
                c.rate / a.rate,
                c.us_per_alert / a.us_per_alert,
                c.p50 / a.p50,
                c.p99 / a.p99,
            );
        }
    }
    for transport in &args.transports {
        if let Some(c) = summary.get(&(*transport, 64, Target::Agent)) {
            let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
            println!(
                "Targets, agent over {} with 64 clients: {:.0} alerts/s vs >= {:.0}: {} ({:+.0}%); p99 {:.2} ms vs < {:.0} ms: {}; idle RSS {:.1} MB vs < {:.0} MB: {}",
                transport.name(),
                c.rate,
                TARGET_RATE,
                verdict(c.rate >= TARGET_RATE),
                (c.rate / TARGET_RATE - 1.0) * 100.0,
                c.p99,
                TARGET_P99_MS,
                verdict(c.p99 < TARGET_P99_MS),
                c.rss_idle / 1e6,
                TARGET_IDLE_RSS_BYTES as f64 / 1e6,
                verdict(c.rss_idle < TARGET_IDLE_RSS_BYTES as f64),
            );
        }
    }
}
