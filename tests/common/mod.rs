//! Shared test harness: a fake OnCall that answers like ../shared/oncall-facts.md says the real
//! one does, the real daemon binary run in a temp dir, and waiting on conditions with deadlines.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// OnCall's 429 texts (HTML, no Retry-After).
pub const INTEGRATION_429: &str = "<html><body>Rate-limit exceeded: too many alerts were sent from your formatted_webhook integration. Please wait</body></html>";
pub const ORG_429: &str = "<html><body>Rate-limit exceeded: too many alerts were sent from multiple integrations of your organization. Please wait</body></html>";

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
    /// Answer only after this long.
    pub delay: Duration,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::status(200, "\"Ok.\"")
    }
    pub fn status(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    pub token: String,
    pub kind: String,
    pub body: serde_json::Value,
    pub at: Instant,
}

#[derive(Default)]
struct FakeState {
    /// Tokens that exist (others get 403, as a deleted or unknown integration does).
    tokens: Vec<String>,
    /// Scripted answers, used in order before `default`.
    script: VecDeque<Reply>,
    default: Option<Reply>,
    /// Accepted alerts (2xx) in arrival order.
    accepted: Vec<Received>,
    /// Every request that arrived, whatever it was answered.
    all: Vec<Received>,
    /// Heartbeat hits per token.
    heartbeats: BTreeMap<String, usize>,
    /// OnCall's rate limits, when set ([`FakeOnCall::limit`]).
    limits: Option<Limits>,
}

/// OnCall's limits as its engine counts them (../shared/oncall-facts.md): django-ratelimit
/// fixed windows, each scope's boundary at its own phase the client cannot see; every POST
/// with a known token counts on arrival (429s too); the integration's check comes first and a
/// request it blocks never reaches the organization's counter.
struct Limits {
    started: Instant,
    integration: (u32, u64),
    org: (u32, u64),
    /// Each token's phase (ms), drawn when first seen; the org's.
    phases: BTreeMap<String, u64>,
    org_phase: u64,
    counts: BTreeMap<(String, u64), u32>,
    org_counts: BTreeMap<u64, u32>,
    /// 429s answered.
    refused: usize,
}

impl Limits {
    /// The 429 to answer for a request of `token` arriving now, if any.
    fn arrive(&mut self, token: &str) -> Option<Reply> {
        let at = self.started.elapsed().as_millis() as u64;
        let (n, w) = self.integration;
        let phase = *self
            .phases
            .entry(token.to_string())
            .or_insert_with(|| rand::random_range(0..w));
        let c = self
            .counts
            .entry((token.to_string(), (at + phase) / w))
            .or_default();
        *c += 1;
        if *c > n {
            self.refused += 1;
            return Some(Reply::status(429, INTEGRATION_429));
        }
        let (n, w) = self.org;
        let c = self
            .org_counts
            .entry((at + self.org_phase) / w)
            .or_default();
        *c += 1;
        if *c > n {
            self.refused += 1;
            return Some(Reply::status(429, ORG_429));
        }
        None
    }
}

/// A fake OnCall integration endpoint on 127.0.0.1.
#[derive(Clone)]
pub struct FakeOnCall {
    pub addr: SocketAddr,
    /// The path its URLs start with: "" (self-hosted at the root), "/oncall" (Grafana Cloud
    /// IRM) or a self-hosted sub-path.
    prefix: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeOnCall {
    /// Starts serving; `tokens` are the integration tokens it knows.
    pub async fn start(tokens: &[&str]) -> FakeOnCall {
        FakeOnCall::start_under("", tokens).await
    }

    /// Like [`FakeOnCall::start`], with every URL under `prefix` ("/oncall", as Grafana Cloud
    /// IRM serves them, or a reverse proxy's sub-path): `<prefix>/integrations/v1/...`.
    pub async fn start_under(prefix: &str, tokens: &[&str]) -> FakeOnCall {
        let state = Arc::new(Mutex::new(FakeState {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            default: Some(Reply::ok()),
            ..Default::default()
        }));
        let app = Router::new()
            .route(
                "/integrations/v1/{kind}/{token}/",
                post(alert).get(instructions),
            )
            .route(
                "/integrations/v1/{kind}/{token}/heartbeat/",
                axum::routing::get(heartbeat).post(heartbeat),
            )
            .with_state(state.clone());
        let app = if prefix.is_empty() {
            app
        } else {
            Router::new().nest(prefix, app)
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeOnCall {
            addr,
            prefix: prefix.to_string(),
            state,
        }
    }

    /// The inbound URL of integration `token`.
    pub fn url(&self, kind: &str, token: &str) -> String {
        format!(
            "http://{}{}/integrations/v1/{kind}/{token}/",
            self.addr, self.prefix
        )
    }

    /// Answers the next requests with these, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Enforces OnCall's limits from now on: `integration` per token and `org` for all, each in
    /// fixed windows at a random phase.
    pub fn limit(&self, integration: (u32, Duration), org: (u32, Duration)) {
        let w = |d: Duration| d.as_millis() as u64;
        self.state.lock().unwrap().limits = Some(Limits {
            started: Instant::now(),
            integration: (integration.0, w(integration.1)),
            org: (org.0, w(org.1)),
            phases: BTreeMap::new(),
            org_phase: rand::random_range(0..w(org.1)),
            counts: BTreeMap::new(),
            org_counts: BTreeMap::new(),
            refused: 0,
        });
    }

    /// 429s answered under [`FakeOnCall::limit`].
    pub fn rate_limited(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .limits
            .as_ref()
            .map_or(0, |l| l.refused)
    }

    /// Answer for requests once the script is used up.
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = Some(reply);
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn all(&self) -> Vec<Received> {
        self.state.lock().unwrap().all.clone()
    }

    /// Heartbeat hits for `token`.
    pub fn heartbeats(&self, token: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .heartbeats
            .get(token)
            .copied()
            .unwrap_or(0)
    }

    /// Accepted alerts' bodies per token.
    pub fn accepted_by_token(&self) -> BTreeMap<String, Vec<serde_json::Value>> {
        let mut m: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for r in self.accepted() {
            m.entry(r.token).or_default().push(r.body);
        }
        m
    }
}

async fn heartbeat(
    State(state): State<Arc<Mutex<FakeState>>>,
    UrlPath((_kind, token)): UrlPath<(String, String)>,
) -> Response {
    let mut s = state.lock().unwrap();
    if !s.tokens.contains(&token) {
        return (
            StatusCode::FORBIDDEN,
            "\"Integration key was not found. Permission denied.\"",
        )
            .into_response();
    }
    *s.heartbeats.entry(token).or_default() += 1;
    ":)".into_response()
}

/// GET on an inbound URL: OnCall's instructions page (not rate limited), or 403.
async fn instructions(
    State(state): State<Arc<Mutex<FakeState>>>,
    UrlPath((_kind, token)): UrlPath<(String, String)>,
) -> Response {
    if !state.lock().unwrap().tokens.contains(&token) {
        return (
            StatusCode::FORBIDDEN,
            "\"Integration key was not found. Permission denied.\"",
        )
            .into_response();
    }
    (
        [(axum::http::header::CONTENT_TYPE, "text/html")],
        "<html><body>This is the integration's URL. POST alerts here.</body></html>",
    )
        .into_response()
}

async fn alert(
    State(state): State<Arc<Mutex<FakeState>>>,
    UrlPath((kind, token)): UrlPath<(String, String)>,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body_json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) if body.is_empty() => {
            return (StatusCode::BAD_REQUEST, "\"Payload is required\"").into_response();
        }
        Err(_) => return (StatusCode::BAD_REQUEST, "\"Bad JSON\"").into_response(),
    };
    let rec = Received {
        token: token.clone(),
        kind,
        body: body_json,
        at: Instant::now(),
    };
    let reply = {
        let mut s = state.lock().unwrap();
        s.all.push(rec.clone());
        if !s.tokens.contains(&token) {
            return (
                StatusCode::FORBIDDEN,
                "\"Integration key was not found. Permission denied.\"",
            )
                .into_response();
        }
        let limited = s.limits.as_mut().and_then(|l| l.arrive(&token));
        match limited {
            Some(r) => r,
            None => s.script.pop_front().or_else(|| s.default.clone()).unwrap(),
        }
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if (200..300).contains(&reply.status) {
        state.lock().unwrap().accepted.push(rec);
    }
    let mut r = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    if let Some(ra) = reply.retry_after {
        r.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    r
}

/// Asserts every n in `0..count` arrived exactly once.
pub fn assert_exactly_once(ns: &[i64], count: usize) {
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for n in ns {
        *seen.entry(*n).or_default() += 1;
    }
    let missing: Vec<usize> = (0..count)
        .filter(|n| !seen.contains_key(&(*n as i64)))
        .collect();
    let repeated: Vec<(&i64, &usize)> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        missing.is_empty() && repeated.is_empty() && seen.len() == count,
        "missing {:?}, repeated {:?} (of {count})",
        &missing[..missing.len().min(20)],
        &repeated[..repeated.len().min(20)]
    );
}

/// Integration `name` in a `/v1/status` answer (Null if it is not there).
pub fn integration_status(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["integrations"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .cloned()
        .unwrap_or_default()
}

/// Polls `f` until it returns true or `deadline` passes; returns the last answer.
pub async fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_until`], for conditions that need to await (e.g. a status request).
pub async fn wait_for<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real daemon binary, run in a temp dir.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub tcp: SocketAddr,
    pub socket: PathBuf,
    child: Option<Child>,
    runs: usize,
}

/// A free loopback port (bound, then released for the daemon to take).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_oncall-agent")
}

impl Daemon {
    /// Writes a config (`extra` is appended: integrations, limits, ...) and starts the daemon.
    pub async fn start(extra: &str) -> Daemon {
        Daemon::start_with(|_| extra.to_string()).await
    }

    /// Like [`Daemon::start`], for configs that name paths inside the daemon's temp dir
    /// (tailed files, the spool folder): `extra` is given that dir.
    pub async fn start_with(extra: impl FnOnce(&Path) -> String) -> Daemon {
        let mut d = Daemon::prepare(extra);
        d.spawn().await;
        d
    }

    /// Writes the config without starting the daemon (for files that must exist before its
    /// first start, or a `send` while it is down).
    pub fn prepare(extra: impl FnOnce(&Path) -> String) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let extra = extra(dir.path());
        let tcp = free_port();
        let socket = dir.path().join("run/agent.sock");
        let config_path = dir.path().join("agent.toml");
        let text = format!(
            "state_dir = \"{}\"\n[listen]\nunix = \"{}\"\ntcp = \"{tcp}\"\n{extra}\n",
            dir.path().join("state").display(),
            socket.display()
        );
        std::fs::write(&config_path, text).unwrap();
        Daemon {
            dir,
            config_path,
            tcp,
            socket,
            child: None,
            runs: 0,
        }
    }

    /// `oncall-agent run` with this daemon's config, logging at debug unless RUST_LOG is
    /// removed from the command.
    pub fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.args(["run", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "oncall_agent=debug,info");
        c
    }

    /// Rewrites the config file (for reload tests).
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "state_dir = \"{}\"\n[listen]\nunix = \"{}\"\ntcp = \"{}\"\n{extra}\n",
            self.dir.path().join("state").display(),
            self.socket.display(),
            self.tcp
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{run}.log"))
    }

    /// Everything the daemon printed, over all its runs.
    pub fn logs(&self) -> String {
        (0..self.runs)
            .map(|r| std::fs::read_to_string(self.log_path(r)).unwrap_or_default())
            .collect()
    }

    /// Starts the binary and waits until it answers /healthz.
    pub async fn spawn(&mut self) {
        let c = self.command();
        self.spawn_command(c).await;
    }

    /// Starts `command` (the daemon, or something that becomes it by exec, so that its pid is
    /// the daemon's) with output to the next log file, and waits until /healthz answers.
    pub async fn spawn_command(&mut self, mut command: Command) {
        let log = std::fs::File::create(self.log_path(self.runs)).unwrap();
        self.runs += 1;
        let child = command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("http://{}/healthz", self.tcp);
        // Each try bounded: a listener that accepts but never answers (a socket the test
        // itself holds) must fail the deadline below, not hang the test.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let ready = {
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(r) = client.get(&url).send().await
                    && r.status().is_success()
                {
                    break true;
                }
                if Instant::now() > end {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        assert!(ready, "daemon did not become ready:\n{}", self.logs());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// kill -9, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name ("HUP", "TERM").
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGTERM and wait for the exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > end {
                let _ = c.kill();
                panic!("daemon did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.tcp)
    }

    /// POSTs an alert over TCP; returns (status, body).
    pub async fn post(&self, integration: &str, body: &str) -> (u16, String) {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/v1/integrations/{integration}/alerts",
                self.base()
            ))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn status(&self) -> serde_json::Value {
        reqwest::get(format!("{}/v1/status", self.base()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Runs the CLI with this daemon's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// GET /metrics over TCP.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the logs contain `text` `n` times or more.
    pub async fn wait_log(&self, text: &str, n: usize, deadline: Duration) -> bool {
        wait_until(deadline, || self.logs().matches(text).count() >= n).await
    }

    /// One HTTP request over the Unix socket (curl, as the README shows); (status, body).
    pub fn unix_request(&self, method: &str, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", method, "--unix-socket"])
            .arg(&self.socket)
            .arg(format!("http://localhost{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
    /// Opens the queue database of a stopped daemon (sled allows one process at a time).
    pub fn open_queue(&self) -> oncall_agent::queue::Store {
        assert!(
            self.child.is_none(),
            "stop the daemon before opening its queue"
        );
        oncall_agent::queue::Store::open(&self.state_dir().join("queue"), 8 << 20)
            .unwrap()
            .0
    }

    /// Every alert queued for `integration`, oldest first, as JSON (daemon stopped).
    pub fn queued(&self, integration: &str) -> Vec<serde_json::Value> {
        let store = self.open_queue();
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = store.load_after(integration, after, 10_000).unwrap();
            let Some((last, _)) = page.last() else { break };
            after = *last;
            out.extend(
                page.iter()
                    .map(|(_, e)| serde_json::from_slice(&e.payload).unwrap()),
            );
        }
        out
    }

    /// Queue depth of the first integration, from /v1/status.
    pub async fn depth(&self) -> u64 {
        self.status().await["integrations"][0]["depth"]
            .as_u64()
            .unwrap_or(0)
    }
}

/// The value of the sample `series` (name with labels, exactly as printed) in a /metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Budgets no test reaches, so delivery is never held back by the limiter.
pub const NO_LIMITS: &str = "[limits]\nintegration = \"100000/1s\"\norg = \"100000/1s\"\n";

/// Appends `text` to `path` (creating it), in one write.
pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `count` JSON lines `{"alert_uid":uid,"n":from..}`, each ending in a newline.
pub fn json_lines(uid: &str, from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("{{\"alert_uid\":\"{uid}\",\"n\":{n}}}\n"))
        .collect()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An integration block for a config.
pub fn integration(name: &str, url: &str) -> String {
    format!("[[integration]]\nname = \"{name}\"\nurl = \"{url}\"\n")
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

impl Daemon {
    /// Waits up to `deadline` for the daemon to exit by itself; its exit status, or `None` if
    /// it still runs.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            let c = self.child.as_mut()?;
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// POSTs an alert over TCP; the status, or `None` when the daemon did not answer (gone).
    pub async fn try_post(&self, integration: &str, body: &str) -> Option<u16> {
        reqwest::Client::new()
            .post(format!(
                "{}/v1/integrations/{integration}/alerts",
                self.base()
            ))
            .body(body.to_string())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Points the config's `state_dir` at `state` (before a start).
    pub fn move_state_to(&self, state: &Path) {
        let cfg = std::fs::read_to_string(&self.config_path).unwrap();
        let cfg = cfg.replacen(
            &format!("state_dir = \"{}\"", self.state_dir().display()),
            &format!("state_dir = \"{}\"", state.display()),
            1,
        );
        std::fs::write(&self.config_path, cfg).unwrap();
    }

    /// Lines the daemon logged at ERROR, over all its runs.
    pub fn error_lines(&self) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .map(str::to_owned)
            .collect()
    }
}
