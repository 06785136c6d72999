//! The config file: TOML in, validated types out.
//!
//! `Raw*` structs mirror the file (serde, `deny_unknown_fields`); [`Config`] is what the rest of
//! the agent sees: durations as `Duration`, limits as [`Rate`], URLs parsed, secrets wrapped in
//! [`Secret`]. Every default lives in the `default_*` functions below and nowhere else, and
//! `config/oncall-agent.toml` documents every field (a test parses it).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::redact::{Secret, redact_url};

/// Default config path, also taken from `ONCALL_AGENT_CONFIG`.
pub const DEFAULT_PATH: &str = "/etc/oncall-agent/oncall-agent.toml";

/// The largest body the queue can keep in one synced log segment (see `queue::store`): sled
/// moves values above segment_size/4 into blob files, which it never fsyncs.
pub const MAX_BODY_LIMIT: usize = 2 * 1024 * 1024 - 64 * 1024;

/// The longest `shutdown_timeout`: the systemd unit's `TimeoutStopSec=45s`
/// (systemd/oncall-agent.service) less 15 s for what follows the deadline (the final sync of
/// the queue, the exit). A stop that outlasts `TimeoutStopSec` is ended by SIGKILL.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A config that cannot be used, with the file, the field and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {problem}")]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

/// `COUNT/DURATION`: at most `count` requests in any interval of length `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shape = || format!("expected COUNT/DURATION such as \"300/5m\", got {s:?}");
        let (count, per) = s.split_once('/').ok_or_else(shape)?;
        let count: u32 = count.trim().parse().map_err(|_| shape())?;
        let per = humantime::parse_duration(per.trim()).map_err(|e| format!("{}: {e}", shape()))?;
        if count == 0 {
            return Err(format!("the count in {s:?} must be at least 1"));
        }
        if per < Duration::from_secs(1) {
            return Err(format!("the duration in {s:?} must be at least 1s"));
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.per))
    }
}

/// Written as its text ("300/5m"), as it is configured: how `/v1/status` shows a budget.
impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A duration written the humantime way ("10s", "5m", "1h 30m").
#[derive(Debug, Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration: {e}")))
    }
}

/// A byte size: a plain integer, or a string with a unit ("1MiB", "256 MiB", "64KiB", "10MB").
#[derive(Debug, Clone, Copy)]
struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(ByteSize(n)),
            Either::S(s) => parse_bytes(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as \"1MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "{s:?}: unknown size unit {other:?} (use B, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: PathBuf,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    log: RawLog,
    shutdown_timeout: Option<HumanDuration>,
    self_alert_integration: Option<String>,
    api: Option<RawApi>,
    #[serde(default, rename = "integration")]
    integrations: Vec<RawIntegration>,
    #[serde(default, rename = "source")]
    sources: Vec<RawSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    url: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    grafana_url: Option<String>,
    rate_limit: Option<Rate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    unix: Option<PathBuf>,
    unix_mode: Option<String>,
    unix_group: Option<String>,
    tcp: Option<String>,
    allow_remote: Option<bool>,
    auth_token: Option<String>,
    auth_token_file: Option<PathBuf>,
    max_connections: Option<usize>,
    header_timeout: Option<HumanDuration>,
    body_timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    integration: Option<Rate>,
    org: Option<Rate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    timeout: Option<HumanDuration>,
    retry_initial: Option<HumanDuration>,
    retry_max: Option<HumanDuration>,
    probe_interval: Option<HumanDuration>,
    max_retry_after: Option<HumanDuration>,
    learn: Option<bool>,
    concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    max_bytes: Option<ByteSize>,
    max_body: Option<ByteSize>,
    cache_capacity: Option<ByteSize>,
    channel_capacity: Option<usize>,
    batch_max: Option<usize>,
    min_free_space: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntegration {
    name: String,
    url: Option<String>,
    url_file: Option<PathBuf>,
    id: Option<String>,
    api_name: Option<String>,
    rate_limit: Option<Rate>,
    heartbeat: Option<HumanDuration>,
}

/// `[[source]]`: where alerts come from besides the local HTTP API, chosen by `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawSource {
    File {
        path: PathBuf,
        integration: String,
        format: Option<RawLineFormat>,
        start_at: Option<RawStartAt>,
        max_line: Option<ByteSize>,
        uid_fields: Option<Vec<usize>>,
        poll_interval: Option<HumanDuration>,
    },
    Spool {
        path: PathBuf,
        poll_interval: Option<HumanDuration>,
    },
    Journal {
        integration: String,
        name: Option<String>,
        units: Option<Vec<String>>,
        identifiers: Option<Vec<String>>,
        priority: Option<RawPriority>,
        uid_fields: Option<Vec<String>>,
        start_at: Option<RawStartAt>,
        max_line: Option<ByteSize>,
        journal_directory: Option<PathBuf>,
        journal_file: Option<PathBuf>,
        journalctl: Option<PathBuf>,
        poll_interval: Option<HumanDuration>,
    },
}

/// A syslog priority: its number (0-7) or its name ("err").
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawPriority {
    Number(i64),
    Name(String),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawLineFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawStartAt {
    Beginning,
    End,
}

// ---------------------------------------------------------------------------------------------
// What the agent uses.

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages and reload.
    pub path: PathBuf,
    /// Folder that holds the sled database (`<state_dir>/queue`).
    pub state_dir: PathBuf,
    pub listen: Listen,
    pub limits: Limits,
    pub delivery: Delivery,
    pub queue: QueueConfig,
    /// Log filter (tracing `EnvFilter` syntax); RUST_LOG wins when set. Default "info".
    pub log_level: String,
    /// How long the whole stop after SIGTERM may take (listeners finishing their requests,
    /// the writer, deliveries in flight), one deadline for all of it. Default 10 s, at most
    /// [`MAX_SHUTDOWN_TIMEOUT`].
    pub shutdown_timeout: Duration,
    /// Where the agent reports its own trouble (a quarantined database). Default: the first
    /// integration.
    pub self_alert_integration: Option<String>,
    /// Integrations with a known inbound URL (from `url`, `url_file`, or resolved through the
    /// API): everything downstream of the daemon sees only these.
    pub integrations: Vec<Integration>,
    /// The OnCall HTTP API, if `[api]` is set.
    pub api: Option<ApiConfig>,
    /// Integrations given by `id` or `api_name` whose inbound URL is not known yet; the daemon
    /// resolves them through the API (`api::resolve`) and moves them into `integrations`.
    pub unresolved: Vec<UnresolvedIntegration>,
    /// `[[source]]` blocks: tailed files and the spool folder (a reload restarts them).
    pub sources: Vec<Source>,
}

/// `[api]`: the OnCall HTTP API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The API endpoint (IRM or Grafana OnCall -> Settings; on Grafana Cloud it ends in
    /// `/oncall`); the API lives at `<url>/api/v1/`.
    /// Holds no secret, so it may be printed.
    pub url: reqwest::Url,
    /// Where the API token comes from; read only when a command or the daemon calls the API,
    /// so that `send` and `status` work for users who may not read it.
    pub token: ApiToken,
    /// The Grafana stack URL, sent as `X-Grafana-URL` (needed with a Grafana service account
    /// token, IRM's preferred credential and the one the example config shows; not with a
    /// legacy OnCall API key). Default: not sent.
    pub grafana_url: Option<reqwest::Url>,
    /// Client-side budget for API calls (per token). Default 300/5m: the documented limit,
    /// stricter than the engine's 300 per minute per user.
    pub rate: Rate,
}

impl ApiConfig {
    /// `<url>/api/v1/`, the base every API path is joined to.
    pub fn base(&self) -> reqwest::Url {
        let mut u = self.url.clone();
        let path = u.path().trim_end_matches('/').to_string();
        u.set_path(&format!("{path}/api/v1/"));
        u
    }
}

/// The environment variable that gives the API token when the file sets neither `token` nor
/// `token_file`.
pub const API_TOKEN_ENV: &str = "ONCALL_API_TOKEN";

/// Where the API token is read from.
#[derive(Debug, Clone)]
pub enum ApiToken {
    /// `api.token`, in the file.
    Inline(Secret<String>),
    /// `api.token_file` (absolute), e.g. a systemd credential.
    File(PathBuf),
    /// [`API_TOKEN_ENV`].
    Env,
}

/// The API token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API token file {0} is empty")]
    Empty(PathBuf),
    #[error("no API token: set api.token or api.token_file, or {API_TOKEN_ENV}")]
    Missing,
    #[error("the API token from {0} holds a line break or a control character")]
    Malformed(String),
}

impl ApiToken {
    /// Reads the token (trimmed of surrounding space).
    pub fn load(&self) -> Result<Secret<String>, TokenError> {
        let (text, from) = match self {
            ApiToken::Inline(t) => (t.expose().clone(), "api.token".to_string()),
            ApiToken::File(p) => {
                let t = std::fs::read_to_string(p).map_err(|source| TokenError::Read {
                    path: p.clone(),
                    source,
                })?;
                if t.trim().is_empty() {
                    return Err(TokenError::Empty(p.clone()));
                }
                (t, p.display().to_string())
            }
            ApiToken::Env => match std::env::var(API_TOKEN_ENV) {
                Ok(t) if !t.trim().is_empty() => (t, API_TOKEN_ENV.to_string()),
                _ => return Err(TokenError::Missing),
            },
        };
        let t = text.trim();
        // It goes into a header: a control character would break the request (or smuggle one).
        if t.is_empty() || t.chars().any(|c| c.is_control()) {
            return Err(TokenError::Malformed(from));
        }
        Ok(Secret::new(t.to_string()))
    }

    /// Where the token comes from, for messages (never the token).
    pub fn describe(&self) -> String {
        match self {
            ApiToken::Inline(_) => "api.token".to_string(),
            ApiToken::File(p) => format!("api.token_file {}", p.display()),
            ApiToken::Env => API_TOKEN_ENV.to_string(),
        }
    }
}

/// How an integration is found through the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiRef {
    /// `id = "CFRPV98RPR1U8"`: the integration's public id.
    Id(String),
    /// `api_name = "..."`: the integration's name in OnCall (must be unique there).
    Name(String),
}

impl fmt::Display for ApiRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiRef::Id(id) => write!(f, "id {id}"),
            ApiRef::Name(n) => write!(f, "api_name {n:?}"),
        }
    }
}

/// An integration given by `id` or `api_name`, waiting for its inbound URL.
#[derive(Debug, Clone)]
pub struct UnresolvedIntegration {
    /// Its place among the file's `[[integration]]`s (resolution keeps the file's order).
    pub position: usize,
    pub name: String,
    pub by: ApiRef,
    pub rate: Rate,
    pub heartbeat: Option<Duration>,
}

impl UnresolvedIntegration {
    /// The integration, once the API has given its inbound URL.
    pub fn resolve(&self, url: Secret<reqwest::Url>) -> Integration {
        Integration {
            name: self.name.clone(),
            kind: integration_kind(url.expose()),
            url,
            rate: self.rate,
            heartbeat: self.heartbeat,
        }
    }
}

/// Local listeners.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Unix socket path; serves ingest, status, metrics and the admin API.
    pub unix: Option<PathBuf>,
    /// Permission bits of the Unix socket. Default 0o660.
    pub unix_mode: u32,
    /// Group that owns the Unix socket (name or numeric id). Default: the daemon's group.
    pub unix_group: Option<String>,
    /// TCP address; loopback unless `allow_remote` (then `auth_token` is required).
    pub tcp: Option<SocketAddr>,
    /// Bearer token required on every TCP request when set.
    pub auth_token: Option<Secret<String>>,
    /// Open connections per listener; more wait in the kernel's backlog. Default 1024.
    pub max_connections: usize,
    /// A client must send its request headers within this. Default 10 s.
    pub header_timeout: Duration,
    /// A client must send its whole body within this. Default 30 s.
    pub body_timeout: Duration,
}

/// Client-side budgets.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Per integration, unless the integration sets `rate_limit`. Default 300/5m (what the
    /// docs say and the engine enforces by default).
    pub integration: Rate,
    /// Across all integrations. Default 500/5m: the documented limit, below the engine's
    /// default of 900/5m, so it holds whichever an organization has (IRM can set others).
    pub org: Rate,
}

/// How alerts are delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Whole-request timeout. Default 10 s.
    pub timeout: Duration,
    /// First backoff after a 5xx, 408 or network error. Default 1 s.
    pub retry_initial: Duration,
    /// Backoff cap. Default 5 min.
    pub retry_max: Duration,
    /// Probe period while paused by a 429 without Retry-After. Default 15 s.
    pub probe_interval: Duration,
    /// The longest wait a `Retry-After` (on a 5xx, 408 or 429) is obeyed for; a longer one is
    /// clamped with a WARN (for a 429, also to the window of the budget it names). The header
    /// is network input: unbounded, one answer could park a key for years. Default 10 min.
    pub max_retry_after: Duration,
    /// Learn OnCall's real windows (reset time and limit per scope) from its 429s, and send
    /// at most that many per window, the first just after the predicted reset. Default true.
    pub learn: bool,
    /// Requests in flight per integration (different grouping keys). Default 4.
    pub concurrency: usize,
}

/// The durable queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Above this many queued bytes, ingest answers 503. Default 256 MiB.
    pub max_bytes: u64,
    /// Largest accepted alert body. Default 1 MiB; at most [`MAX_BODY_LIMIT`].
    pub max_body: usize,
    /// sled's page cache. Default 32 MiB (sled's own default is 1 GiB).
    pub cache_capacity: u64,
    /// Alerts waiting for the writer; when full, ingest answers 503. Default 8192.
    pub channel_capacity: usize,
    /// Most alerts the writer commits with one fsync. Default 1024.
    pub batch_max: usize,
    /// Ingest answers 503 while the disk has less than this free. Default 32 MiB.
    pub min_free_space: u64,
}

/// One OnCall integration.
#[derive(Debug, Clone, PartialEq)]
pub struct Integration {
    /// Local name, used in local URLs, the CLI, status and metrics.
    pub name: String,
    /// Inbound URL (holds the token: never log it, use [`Integration::redacted_url`]).
    pub url: Secret<reqwest::Url>,
    /// The URL's kind segment (`formatted_webhook`, `alertmanager`, ...), if it has one.
    pub kind: Option<String>,
    /// Budget for this integration.
    pub rate: Rate,
    /// Hit the integration's heartbeat URL this often (a dead-man's switch for the host).
    pub heartbeat: Option<Duration>,
}

/// Where alerts come from besides the local HTTP API.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File(FileSource),
    Spool(SpoolSource),
    Journal(JournalSource),
}

/// `type = "file"`: lines appended to files become alerts (see `sources::file`).
#[derive(Debug, Clone, PartialEq)]
pub struct FileSource {
    /// The path as configured (a file, or a glob in its last component); it names the
    /// source in logs, status and the saved read positions.
    pub path: PathBuf,
    /// The folder holding the files (no wildcards allowed here: it is the folder watched).
    pub dir: PathBuf,
    /// The file-name part, matched against every entry of `dir`.
    pub name_pattern: glob::Pattern,
    /// Integration that receives the alerts.
    pub integration: String,
    pub format: LineFormat,
    /// Where to start in files that exist when the source first runs. Default beginning.
    pub start_at: StartAt,
    /// Longest line forwarded, bytes (without the newline). Longer lines become dead
    /// letters. Default 64 KiB; at most `queue.max_body`.
    pub max_line: usize,
    /// Safety-net rescan period, for changes inotify did not report. Default 5 s.
    pub poll_interval: Duration,
}

/// How the lines of a tailed file become alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineFormat {
    /// One JSON object per line, forwarded verbatim.
    Json,
    /// Each line becomes a formatted_webhook alert: `title` = the line, `alert_uid` derived
    /// from the whitespace-separated fields `uid_fields` (1-based; empty = the whole line).
    Text { uid_fields: Vec<usize> },
}

/// Where reading starts in a file the source has never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    /// After the last complete line; only for files present when the source first runs.
    /// Files that appear later are always read from their beginning.
    End,
}

/// `type = "spool"`: one alert per file dropped in `<path>/<integration>/` (see
/// `sources::spool`); also where `send` writes when the daemon does not answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolSource {
    pub path: PathBuf,
    /// Safety-net rescan period, for files inotify did not report. Default 5 s.
    pub poll_interval: Duration,
}

/// `type = "journal"`: entries of the systemd journal become formatted_webhook alerts (see
/// `sources::journal`), read through a `journalctl --follow --output=json` child.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalSource {
    /// Names the source in logs and status, and keys its saved cursor: a source whose name is
    /// unchanged resumes where it stood, whatever else changed. Default: the integration's name.
    pub name: String,
    /// Integration that receives the alerts.
    pub integration: String,
    /// Units whose entries are read (`.service` added to a name without a dot): the unit's own
    /// output, systemd's messages about it and its core dumps, as `journalctl -u` shows.
    /// With `identifiers`, an entry matching either is read. Default (both empty): every unit.
    pub units: Vec<String>,
    /// `SYSLOG_IDENTIFIER`s whose entries are read (`journalctl -t`). Default: none.
    pub identifiers: Vec<String>,
    /// Entries of this priority or more urgent are read (0 emerg ... 7 debug). Default 3 (err).
    pub priority: u8,
    /// Journal fields which, beside the unit, make an entry's `alert_uid`: entries alike in
    /// all of them group into one OnCall alert group. Default: none (one group per unit).
    pub uid_fields: Vec<String>,
    /// Where the first run starts. Default end: only entries written from then on.
    pub start_at: StartAt,
    /// Longest `journalctl` output line read (one entry as JSON), bytes. A longer entry
    /// becomes a dead letter. Default 64 KiB; at most `queue.max_body`.
    pub max_line: usize,
    /// `journalctl --directory`: read the journal files in this folder instead of the
    /// system's. Default: the system journal.
    pub journal_directory: Option<PathBuf>,
    /// `journalctl --file`: read this one journal file instead. Default: the system journal.
    pub journal_file: Option<PathBuf>,
    /// The `journalctl` program. Default "journalctl", found in PATH.
    pub journalctl: PathBuf,
    /// Read the journal's new entries this often instead of following it: for a
    /// `journal_directory` holding several hosts' journals, since journalctl 250 to 257
    /// follows the newest boot only (one host's). Default: follow (entries arrive at once).
    pub poll_interval: Option<Duration>,
}

/// Syslog priority names, by number.
pub const PRIORITY_NAMES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// Default longest line of a tailed file.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Default rescan period of file and spool sources.
pub const DEFAULT_SOURCE_POLL: Duration = Duration::from_secs(5);

impl Integration {
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose())
    }
}

/// `<integration URL>heartbeat/`, OnCall's heartbeat endpoint for an inbound URL.
pub fn heartbeat_url(url: &reqwest::Url) -> reqwest::Url {
    let mut u = url.clone();
    let path = u.path().to_string();
    let base = if path.ends_with('/') {
        path
    } else {
        format!("{path}/")
    };
    u.set_path(&format!("{base}heartbeat/"));
    u
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parse and validate config text; `path` is used for messages and relative `*_file`s.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        Validator {
            path,
            read_secrets: true,
        }
        .build(raw)
    }

    /// Like [`Config::load`], but `url_file` and `auth_token_file` are not read: for the CLI's
    /// client commands (`send`, `status`, `dead`), which need the listeners, not the secrets,
    /// and run as users who cannot read them (systemd credentials are the unit's alone). The
    /// URLs of such integrations are placeholders that must never be used to send.
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(&text, &e),
        })?;
        Validator {
            path,
            read_secrets: false,
        }
        .build(raw)
    }

    pub fn integration(&self, name: &str) -> Option<&Integration> {
        self.integrations.iter().find(|i| i.name == name)
    }

    /// Every configured integration's local name, resolved or not: alerts for an integration
    /// still waiting for the API are accepted and kept.
    pub fn integration_names(&self) -> Vec<String> {
        self.integrations
            .iter()
            .map(|i| i.name.clone())
            .chain(self.unresolved.iter().map(|u| u.name.clone()))
            .collect()
    }

    /// Moves the integrations named in `urls` from `unresolved` into `integrations`, where
    /// the file has them.
    pub fn with_resolved(mut self, urls: &BTreeMap<String, Secret<reqwest::Url>>) -> Config {
        let mut pending = std::mem::take(&mut self.unresolved);
        pending.sort_by_key(|u| u.position);
        let (done, still): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|u| urls.contains_key(&u.name));
        for u in done {
            // Everything before it in the file that is not itself waiting is in the list.
            let waiting_before = still.iter().filter(|w| w.position < u.position).count();
            let at = u
                .position
                .saturating_sub(waiting_before)
                .min(self.integrations.len());
            let url = urls[&u.name].clone();
            self.integrations.insert(at, u.resolve(url));
        }
        self.unresolved = still;
        self
    }

    /// Where the sled database lives.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("queue")
    }

    /// The spool folder, if one is configured (at most one is allowed).
    pub fn spool(&self) -> Option<&SpoolSource> {
        self.sources.iter().find_map(|s| match s {
            Source::Spool(sp) => Some(sp),
            Source::File(_) | Source::Journal(_) => None,
        })
    }
}

fn default_limits() -> Limits {
    Limits {
        integration: Rate {
            count: 300,
            per: Duration::from_secs(300),
        },
        org: Rate {
            count: 500,
            per: Duration::from_secs(300),
        },
    }
}

struct Validator<'a> {
    path: &'a Path,
    /// Whether `*_file` secrets are read (see [`Config::load_without_secrets`]).
    read_secrets: bool,
}

/// What stands for a secret that was not read.
const UNREAD_URL: &str = "http://secret-file-not-read.invalid/integrations/v1/unknown/unread/";
const UNREAD_TOKEN: &str = "auth-token-file-not-read";

impl Validator<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Reads a secret from a file (systemd `LoadCredential=`), trimmed of surrounding space.
    fn read_secret(&self, field: &str, file: &Path) -> Result<String, ConfigError> {
        if !self.read_secrets {
            return Ok(if field.ends_with("url_file") {
                UNREAD_URL
            } else {
                UNREAD_TOKEN
            }
            .to_string());
        }
        let file = self.relative(file);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| self.err(field, format!("cannot read {}: {e}", file.display())))?;
        let text = text.trim().to_string();
        if text.is_empty() {
            return Err(self.err(field, format!("{} is empty", file.display())));
        }
        Ok(text)
    }

    fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let d = default_limits();
        let limits = Limits {
            integration: raw.limits.integration.unwrap_or(d.integration),
            org: raw.limits.org.unwrap_or(d.org),
        };
        let delivery = self.delivery(raw.delivery)?;
        let queue = self.queue(raw.queue)?;
        let listen = self.listen(raw.listen)?;
        let api = raw.api.map(|a| self.api(a)).transpose()?;

        let mut seen = HashSet::new();
        let mut integrations = Vec::new();
        let mut unresolved = Vec::new();
        for (i, ri) in raw.integrations.into_iter().enumerate() {
            let field = |f: &str| format!("integration[{i}].{f}");
            if !valid_name(&ri.name) {
                return Err(self.err(
                    field("name"),
                    format!(
                        "{:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                        ri.name
                    ),
                ));
            }
            if !seen.insert(ri.name.clone()) {
                return Err(self.err(field("name"), format!("{:?} is used twice", ri.name)));
            }
            let heartbeat = ri.heartbeat.map(|h| h.0);
            if let Some(h) = heartbeat
                && !(Duration::from_secs(10)..=Duration::from_secs(86_400)).contains(&h)
            {
                return Err(self.err(
                    field("heartbeat"),
                    "must be between 10s and 24h (OnCall's heartbeat timeout is 60s to 24h; hit it well within)",
                ));
            }
            if let Some(by) = self.api_ref(&field, ri.id, ri.api_name)? {
                if ri.url.is_some() || ri.url_file.is_some() {
                    return Err(self.err(
                        field("url"),
                        format!("set either url/url_file or {by}, not both"),
                    ));
                }
                if api.is_none() {
                    return Err(self.err(
                        field(if matches!(by, ApiRef::Id(_)) { "id" } else { "api_name" }),
                        "needs an [api] section: the inbound URL is looked up through the OnCall API",
                    ));
                }
                unresolved.push(UnresolvedIntegration {
                    position: i,
                    name: ri.name,
                    by,
                    rate: ri.rate_limit.unwrap_or(limits.integration),
                    heartbeat,
                });
                continue;
            }
            let url_text = match (ri.url, ri.url_file) {
                (Some(u), None) => u,
                (None, Some(f)) => self.read_secret(&field("url_file"), &f)?,
                (Some(_), Some(_)) => {
                    return Err(self.err(field("url"), "set either url or url_file, not both"));
                }
                (None, None) => {
                    return Err(self.err(field("url"), "missing (or set url_file, id or api_name)"));
                }
            };
            // The parse error of `url` never quotes the input: it holds a token.
            let url = reqwest::Url::parse(&url_text)
                .map_err(|e| self.err(field("url"), format!("not a valid URL ({e})")))?;
            if url.scheme() != "https" && url.scheme() != "http" {
                return Err(self.err(field("url"), "must be an http:// or https:// URL"));
            }
            let kind = integration_kind(&url);
            integrations.push(Integration {
                name: ri.name,
                url: Secret::new(url),
                kind,
                rate: ri.rate_limit.unwrap_or(limits.integration),
                heartbeat,
            });
        }
        if let Some(name) = &raw.self_alert_integration
            && !seen.contains(name)
        {
            return Err(self.err(
                "self_alert_integration",
                format!("{name:?} is not a configured integration"),
            ));
        }
        if listen.unix.is_none() && listen.tcp.is_none() {
            return Err(self.err("listen", "set at least one of listen.unix and listen.tcp"));
        }
        let sources = self.sources(raw.sources, &seen, &queue)?;
        let state_dir = self.relative(&raw.state_dir);
        let log_level = raw.log.level.unwrap_or_else(|| "info".to_string());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(self.err(
                "log.level",
                format!("{log_level:?} is not a level or filter such as \"info\" or \"oncall_agent=debug\" ({e})"),
            ));
        }
        let shutdown_timeout = raw
            .shutdown_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10));
        if shutdown_timeout > MAX_SHUTDOWN_TIMEOUT {
            return Err(self.err(
                "shutdown_timeout",
                format!(
                    "{} is longer than the systemd unit can wait: its TimeoutStopSec=45s must also hold the final sync and exit, so at most {}",
                    humantime::format_duration(shutdown_timeout),
                    humantime::format_duration(MAX_SHUTDOWN_TIMEOUT)
                ),
            ));
        }
        Ok(Config {
            path: self.path.to_owned(),
            state_dir,
            listen,
            limits,
            delivery,
            queue,
            log_level,
            shutdown_timeout,
            self_alert_integration: raw.self_alert_integration,
            integrations,
            api,
            unresolved,
            sources,
        })
    }

    /// `id` / `api_name` of one `[[integration]]`.
    fn api_ref(
        &self,
        field: &dyn Fn(&str) -> String,
        id: Option<String>,
        api_name: Option<String>,
    ) -> Result<Option<ApiRef>, ConfigError> {
        match (id, api_name) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(self.err(field("id"), "set either id or api_name, not both")),
            (Some(id), None) => {
                // It becomes a path segment of an API URL.
                if !(1..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(self.err(
                        field("id"),
                        format!("{id:?} is not an OnCall integration id (letters and digits, like \"CFRPV98RPR1U8\")"),
                    ));
                }
                Ok(Some(ApiRef::Id(id)))
            }
            (None, Some(name)) => {
                if name.trim().is_empty() || name.len() > 1024 {
                    return Err(self.err(field("api_name"), "must be 1-1024 characters"));
                }
                Ok(Some(ApiRef::Name(name)))
            }
        }
    }

    fn api(&self, r: RawApi) -> Result<ApiConfig, ConfigError> {
        let url = self.http_url("api.url", &r.url)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.err("api.url", "must not have a query or fragment"));
        }
        // Accept the API's own URL too: ".../oncall/api/v1/" means ".../oncall".
        let mut url = url;
        let path = url.path().trim_end_matches('/').to_string();
        if let Some(base) = path.strip_suffix("/api/v1") {
            url.set_path(&format!("{base}/"));
        }
        let token = match (r.token, r.token_file) {
            (Some(t), None) => ApiToken::Inline(Secret::new(t)),
            (None, Some(f)) => ApiToken::File(self.relative(&f)),
            (None, None) => ApiToken::Env,
            (Some(_), Some(_)) => {
                return Err(self.err("api.token", "set either token or token_file, not both"));
            }
        };
        let grafana_url = r
            .grafana_url
            .map(|g| self.http_url("api.grafana_url", &g))
            .transpose()?;
        Ok(ApiConfig {
            url,
            token,
            grafana_url,
            rate: r.rate_limit.unwrap_or(Rate {
                count: 300,
                per: Duration::from_secs(300),
            }),
        })
    }

    /// An http(s) URL that holds no credentials (it is printed in messages).
    fn http_url(&self, field: &str, text: &str) -> Result<reqwest::Url, ConfigError> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|e| self.err(field, format!("not a valid URL ({e})")))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(self.err(field, "must be an http:// or https:// URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(field, "must not hold a user name or password"));
        }
        Ok(url)
    }

    fn sources(
        &self,
        raw: Vec<RawSource>,
        integrations: &HashSet<String>,
        queue: &QueueConfig,
    ) -> Result<Vec<Source>, ConfigError> {
        let mut out = Vec::new();
        let mut paths = HashSet::new();
        for (i, rs) in raw.into_iter().enumerate() {
            let field = |f: &str| format!("source[{i}].{f}");
            let poll = |p: Option<HumanDuration>| -> Result<Duration, ConfigError> {
                let d = p.map_or(DEFAULT_SOURCE_POLL, |d| d.0);
                if d < Duration::from_millis(10) {
                    return Err(self.err(field("poll_interval"), "must be at least 10ms"));
                }
                Ok(d)
            };
            match rs {
                RawSource::File {
                    path,
                    integration,
                    format,
                    start_at,
                    max_line,
                    uid_fields,
                    poll_interval,
                } => {
                    let path = self.relative(&path);
                    let (dir, name_pattern) = split_file_pattern(&path)
                        .map_err(|problem| self.err(field("path"), problem))?;
                    if !paths.insert(path.clone()) {
                        return Err(
                            self.err(field("path"), format!("{} is tailed twice", path.display()))
                        );
                    }
                    if !integrations.contains(&integration) {
                        return Err(self.err(
                            field("integration"),
                            format!("{integration:?} is not a configured integration"),
                        ));
                    }
                    let format = match (format.unwrap_or(RawLineFormat::Json), uid_fields) {
                        (RawLineFormat::Json, None) => LineFormat::Json,
                        (RawLineFormat::Json, Some(_)) => {
                            return Err(
                                self.err(field("uid_fields"), "only applies to format = \"text\"")
                            );
                        }
                        (RawLineFormat::Text, f) => {
                            let uid_fields = f.unwrap_or_default();
                            if uid_fields.len() > 16 || uid_fields.contains(&0) {
                                return Err(self.err(
                                    field("uid_fields"),
                                    "at most 16 field numbers, each 1 or more (1 = first field)",
                                ));
                            }
                            LineFormat::Text { uid_fields }
                        }
                    };
                    let max_line = max_line.map_or(DEFAULT_MAX_LINE as u64, |b| b.0);
                    if max_line == 0 || max_line > queue.max_body as u64 {
                        return Err(self.err(
                            field("max_line"),
                            format!(
                                "must be between 1 and queue.max_body ({} bytes)",
                                queue.max_body
                            ),
                        ));
                    }
                    out.push(Source::File(FileSource {
                        path,
                        dir,
                        name_pattern,
                        integration,
                        format,
                        start_at: match start_at {
                            Some(RawStartAt::End) => StartAt::End,
                            _ => StartAt::Beginning,
                        },
                        max_line: max_line as usize,
                        poll_interval: poll(poll_interval)?,
                    }));
                }
                RawSource::Spool {
                    path,
                    poll_interval,
                } => {
                    if out.iter().any(|s| matches!(s, Source::Spool(_))) {
                        return Err(self.err(
                            field("type"),
                            "only one spool source may be configured (send writes to it)",
                        ));
                    }
                    out.push(Source::Spool(SpoolSource {
                        path: self.relative(&path),
                        poll_interval: poll(poll_interval)?,
                    }));
                }
                RawSource::Journal {
                    integration,
                    name,
                    units,
                    identifiers,
                    priority,
                    uid_fields,
                    start_at,
                    max_line,
                    journal_directory,
                    journal_file,
                    journalctl,
                    poll_interval,
                } => {
                    if !integrations.contains(&integration) {
                        return Err(self.err(
                            field("integration"),
                            format!("{integration:?} is not a configured integration"),
                        ));
                    }
                    let name = name.unwrap_or_else(|| integration.clone());
                    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
                        return Err(self.err(
                            field("name"),
                            "must be 1 to 100 characters, none of them a control character",
                        ));
                    }
                    let taken = out
                        .iter()
                        .any(|s| matches!(s, Source::Journal(j) if j.name == name));
                    if taken {
                        return Err(self.err(
                            field("name"),
                            format!(
                                "{name:?} names another journal source too (it keys the saved cursor): give each journal source its own name"
                            ),
                        ));
                    }
                    let units = units
                        .unwrap_or_default()
                        .into_iter()
                        .map(|u| {
                            journal_value(&u)
                                .map(|()| {
                                    if u.contains('.') {
                                        u.clone()
                                    } else {
                                        format!("{u}.service")
                                    }
                                })
                                .map_err(|p| self.err(field("units"), format!("{u:?}: {p}")))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let identifiers = identifiers.unwrap_or_default();
                    for t in &identifiers {
                        journal_value(t)
                            .map_err(|p| self.err(field("identifiers"), format!("{t:?}: {p}")))?;
                    }
                    let priority = match priority {
                        None => 3,
                        Some(RawPriority::Number(n)) if (0..=7).contains(&n) => n as u8,
                        Some(RawPriority::Name(n)) if PRIORITY_NAMES.contains(&n.as_str()) => {
                            PRIORITY_NAMES.iter().position(|p| *p == n).unwrap_or(3) as u8
                        }
                        Some(_) => {
                            return Err(self.err(
                                field("priority"),
                                "must be 0 to 7 or one of emerg, alert, crit, err, warning, notice, info, debug",
                            ));
                        }
                    };
                    let uid_fields = uid_fields.unwrap_or_default();
                    if uid_fields.len() > 16 || uid_fields.iter().any(|f| !journal_field_name(f)) {
                        return Err(self.err(
                            field("uid_fields"),
                            "at most 16 journal field names, each of upper-case letters, digits and _ (such as \"MESSAGE\" or \"_EXE\")",
                        ));
                    }
                    let max_line = max_line.map_or(DEFAULT_MAX_LINE as u64, |b| b.0);
                    if max_line < 1024 || max_line > queue.max_body as u64 {
                        return Err(self.err(
                            field("max_line"),
                            format!(
                                "must be between 1 KiB and queue.max_body ({} bytes)",
                                queue.max_body
                            ),
                        ));
                    }
                    if journal_directory.is_some() && journal_file.is_some() {
                        return Err(self.err(
                            field("journal_file"),
                            "give journal_directory or journal_file, not both",
                        ));
                    }
                    out.push(Source::Journal(JournalSource {
                        name,
                        integration,
                        units,
                        identifiers,
                        priority,
                        uid_fields,
                        start_at: match start_at {
                            Some(RawStartAt::Beginning) => StartAt::Beginning,
                            _ => StartAt::End,
                        },
                        max_line: max_line as usize,
                        journal_directory: journal_directory.map(|p| self.relative(&p)),
                        journal_file: journal_file.map(|p| self.relative(&p)),
                        journalctl: journalctl.unwrap_or_else(|| PathBuf::from("journalctl")),
                        poll_interval: poll_interval.map(|_| poll(poll_interval)).transpose()?,
                    }));
                }
            }
        }
        Ok(out)
    }

    fn delivery(&self, r: RawDelivery) -> Result<Delivery, ConfigError> {
        let d = Delivery {
            timeout: r.timeout.map_or(Duration::from_secs(10), |d| d.0),
            retry_initial: r.retry_initial.map_or(Duration::from_secs(1), |d| d.0),
            retry_max: r.retry_max.map_or(Duration::from_secs(300), |d| d.0),
            probe_interval: r.probe_interval.map_or(Duration::from_secs(15), |d| d.0),
            max_retry_after: r.max_retry_after.map_or(Duration::from_secs(600), |d| d.0),
            learn: r.learn.unwrap_or(true),
            concurrency: r.concurrency.unwrap_or(4),
        };
        if d.timeout.is_zero() {
            return Err(self.err("delivery.timeout", "must be above zero"));
        }
        if d.retry_initial.is_zero() {
            return Err(self.err("delivery.retry_initial", "must be above zero"));
        }
        if d.retry_max < d.retry_initial {
            return Err(self.err(
                "delivery.retry_max",
                "must be at least delivery.retry_initial",
            ));
        }
        if d.probe_interval < Duration::from_secs(1) {
            return Err(self.err("delivery.probe_interval", "must be at least 1s"));
        }
        if d.max_retry_after < Duration::from_secs(1) {
            return Err(self.err("delivery.max_retry_after", "must be at least 1s"));
        }
        if !(1..=64).contains(&d.concurrency) {
            return Err(self.err("delivery.concurrency", "must be between 1 and 64"));
        }
        Ok(d)
    }

    fn queue(&self, r: RawQueue) -> Result<QueueConfig, ConfigError> {
        let q = QueueConfig {
            max_bytes: r.max_bytes.map_or(256 * 1024 * 1024, |b| b.0),
            max_body: r.max_body.map_or(1024 * 1024, |b| b.0 as usize),
            cache_capacity: r.cache_capacity.map_or(32 * 1024 * 1024, |b| b.0),
            channel_capacity: r.channel_capacity.unwrap_or(8192),
            batch_max: r.batch_max.unwrap_or(1024),
            min_free_space: r.min_free_space.map_or(32 * 1024 * 1024, |b| b.0),
        };
        if q.max_body == 0 || q.max_body > MAX_BODY_LIMIT {
            return Err(self.err(
                "queue.max_body",
                format!("must be between 1 and {MAX_BODY_LIMIT} bytes"),
            ));
        }
        if q.max_bytes < q.max_body as u64 {
            return Err(self.err("queue.max_bytes", "must be at least queue.max_body"));
        }
        if q.cache_capacity < 1024 * 1024 {
            return Err(self.err("queue.cache_capacity", "must be at least 1MiB"));
        }
        if q.channel_capacity == 0 {
            return Err(self.err("queue.channel_capacity", "must be at least 1"));
        }
        if q.min_free_space < 16 * 1024 * 1024 {
            return Err(self.err(
                "queue.min_free_space",
                "must be at least 16MiB (sled grows its file by 8 MiB segments)",
            ));
        }
        if q.batch_max == 0 {
            return Err(self.err("queue.batch_max", "must be at least 1"));
        }
        Ok(q)
    }

    fn listen(&self, r: RawListen) -> Result<Listen, ConfigError> {
        let unix_mode = match &r.unix_mode {
            None => 0o660,
            Some(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    self.err(
                        "listen.unix_mode",
                        format!("{s:?} is not an octal mode like \"0660\""),
                    )
                })?,
        };
        if unix_mode & 0o007 != 0 {
            return Err(self.err(
                "listen.unix_mode",
                "must not grant access to others (the socket's mode is its access control)",
            ));
        }
        let tcp = match &r.tcp {
            None => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                self.err(
                    "listen.tcp",
                    format!("{s:?} is not an address like 127.0.0.1:9753 ({e})"),
                )
            })?),
        };
        let auth_token = match (r.auth_token, r.auth_token_file) {
            (Some(t), None) => Some(Secret::new(t)),
            (None, Some(f)) => Some(Secret::new(self.read_secret("listen.auth_token_file", &f)?)),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "listen.auth_token",
                    "set either auth_token or auth_token_file, not both",
                ));
            }
        };
        if let Some(addr) = tcp
            && !addr.ip().is_loopback()
        {
            if !r.allow_remote.unwrap_or(false) {
                return Err(self.err(
                    "listen.tcp",
                    format!(
                        "{addr} is not a loopback address; set allow_remote = true and auth_token to listen beyond this host"
                    ),
                ));
            }
            if auth_token.is_none() {
                return Err(self.err(
                    "listen.auth_token",
                    "required when allow_remote = true (every TCP request must carry it)",
                ));
            }
        }
        if let Some(t) = &auth_token
            && t.expose().len() < 16
        {
            return Err(self.err("listen.auth_token", "must be at least 16 characters"));
        }
        let max_connections = r.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            return Err(self.err("listen.max_connections", "must be at least 1"));
        }
        Ok(Listen {
            unix: r.unix.map(|p| self.relative(&p)),
            unix_mode,
            unix_group: r.unix_group,
            tcp,
            auth_token,
            max_connections,
            header_timeout: r.header_timeout.map_or(Duration::from_secs(10), |d| d.0),
            body_timeout: r.body_timeout.map_or(Duration::from_secs(30), |d| d.0),
        })
    }
}

/// Things that work but deserve the operator's attention (printed by `check-config`, logged
/// at start).
pub fn warnings(c: &Config) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut w = Vec::new();
    // URLs that only point at this host (the quick start, a local test OnCall) hold no token
    // worth hiding.
    let remote_url = c.integrations.iter().any(|i| {
        let host = i.url.expose().host_str().unwrap_or("");
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        !loopback
    });
    if remote_url
        && let Ok(m) = std::fs::metadata(&c.path)
        && m.permissions().mode() & 0o004 != 0
    {
        w.push(format!(
            "{} is readable by every user and holds integration URLs (tokens): chmod 640 it, or use url_file",
            c.path.display()
        ));
    }
    for i in &c.integrations {
        if let Some(kind) = &i.kind
            && kind.starts_with("legacy_")
        {
            w.push(format!(
                "integration {:?} uses the {kind} kind: OnCall counts every alert inside its payloads and silently drops the excess while answering 200; prefer the non-legacy kind",
                i.name
            ));
        }
    }
    w
}

/// "line L, column C: what is wrong", on one line, without the excerpt of the file that toml
/// adds: that excerpt can hold an integration URL (a token), and this message reaches the
/// journal through `check-config` in ExecStartPre/ExecReload and the reload error log.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            // The key (never a value) and its table, so the message names the field.
            let this_line = text.lines().nth(line - 1).unwrap_or_default();
            let key = this_line
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !k.starts_with('#'));
            let table = before
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('['))
                .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
            let field = match (table, key) {
                (Some(t), Some(k)) => format!(" ({t}.{k})"),
                (None, Some(k)) => format!(" ({k})"),
                _ => String::new(),
            };
            format!("line {line}, column {column}{field}: {msg}")
        }
        None => msg,
    }
}

/// Local names appear in URLs and sled keys: keep them to a safe alphabet.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Splits a tailed path into its folder (no wildcards: it is what is watched) and the
/// pattern its files' names must match.
/// A value a journal match can hold on the `journalctl` command line: journalctl would read
/// `+` as "or", and globs or an `=` as something else than the name.
fn journal_value(v: &str) -> Result<(), &'static str> {
    if v.is_empty() || v.len() > 256 {
        return Err("must be 1 to 256 characters");
    }
    if v == "+"
        || v.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "=*?[]".contains(c))
    {
        return Err(
            "must not be \"+\" nor hold spaces, control characters, \"=\" or a glob (*?[]): list each name",
        );
    }
    Ok(())
}

/// A journal field name as journald allows them (`journalctl --output-fields` takes it).
fn journal_field_name(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 64
        && !f.starts_with(|c: char| c.is_ascii_digit())
        && f.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn split_file_pattern(path: &Path) -> Result<(PathBuf, glob::Pattern), String> {
    let wild = |s: &str| s.contains(['*', '?', '[']);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} does not end in a file name", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    if wild(&dir.to_string_lossy()) {
        return Err(format!(
            "{}: wildcards are allowed in the file name only, not in folders",
            path.display()
        ));
    }
    let pattern = glob::Pattern::new(name).map_err(|e| format!("{name:?}: {e}"))?;
    Ok((dir.to_owned(), pattern))
}

/// The `<kind>` of `.../integrations/v1/<kind>/<token>/`.
fn integration_kind(url: &reqwest::Url) -> Option<String> {
    let segs: Vec<&str> = url.path_segments()?.collect();
    let i = segs.windows(2).position(|w| w == ["integrations", "v1"])?;
    segs.get(i + 2).map(|s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/test.toml"), text)
    }

    const MIN: &str = r#"
state_dir = "/tmp/x"
[listen]
tcp = "127.0.0.1:9753"
[[integration]]
name = "db-prod"
url = "https://oncall.example.com/integrations/v1/formatted_webhook/SECRETTOKEN/"
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.limits.integration.to_string(), "300/5m");
        assert_eq!(c.limits.org.to_string(), "500/5m");
        assert_eq!(c.delivery.concurrency, 4);
        assert_eq!(c.delivery.probe_interval, Duration::from_secs(15));
        assert_eq!(c.queue.max_body, 1024 * 1024);
        assert_eq!(c.listen.unix_mode, 0o660);
        assert_eq!(c.integrations[0].kind.as_deref(), Some("formatted_webhook"));
        assert_eq!(c.integrations[0].rate, c.limits.integration);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = parse(&format!("{MIN}\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/test.toml"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn parse_errors_are_one_line_and_never_quote_the_file() {
        let text = MIN.replace("SECRETTOKEN/\"", "SECRETTOKEN/\" trailing");
        let e = parse(&text).unwrap_err().to_string();
        assert!(!e.contains("SECRETTOKEN"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("line 7"), "{e}");
    }

    #[test]
    fn bad_rate_names_field_and_shape() {
        let e = parse(&MIN.replace(
            "[listen]",
            "[limits]\nintegration = \"300 per 5m\"\n[listen]",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("COUNT/DURATION"), "{e}");
        assert!(e.contains("integration"), "{e}");
    }

    #[test]
    fn bad_url_error_does_not_echo_the_token() {
        let e = parse(&MIN.replace("https://", "ht tps://"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("integration[0].url"), "{e}");
        assert!(!e.contains("SECRETTOKEN"), "{e}");
    }

    #[test]
    fn remote_tcp_needs_allow_remote_and_token() {
        let remote = MIN.replace("127.0.0.1:9753", "0.0.0.0:9753");
        let e = parse(&remote).unwrap_err().to_string();
        assert!(
            e.contains("listen.tcp") && e.contains("allow_remote"),
            "{e}"
        );
        let e = parse(&remote.replace("[listen]", "[listen]\nallow_remote = true"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen.auth_token"), "{e}");
        parse(&remote.replace(
            "[listen]",
            "[listen]\nallow_remote = true\nauth_token = \"0123456789abcdef\"",
        ))
        .unwrap();
    }

    #[test]
    fn duplicate_names_and_bad_names_are_rejected() {
        let twice = format!(
            "{MIN}\n[[integration]]\nname = \"db-prod\"\nurl = \"https://x/integrations/v1/webhook/t/\"\n"
        );
        assert!(
            parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("used twice")
        );
        let bad = MIN.replace("name = \"db-prod\"", "name = \"db prod/1\"");
        assert!(
            parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("integration[0].name")
        );
    }

    #[test]
    fn max_body_beyond_the_synced_segment_is_rejected() {
        let big = format!("{MIN}\n[queue]\nmax_body = \"4MiB\"\n");
        let e = parse(&big).unwrap_err().to_string();
        assert!(e.contains("queue.max_body"), "{e}");
    }

    #[test]
    fn heartbeat_url_is_below_the_integration_url() {
        let u = reqwest::Url::parse("https://h/integrations/v1/webhook/T/").unwrap();
        assert_eq!(
            heartbeat_url(&u).as_str(),
            "https://h/integrations/v1/webhook/T/heartbeat/"
        );
        let u = reqwest::Url::parse("https://h/integrations/v1/webhook/T").unwrap();
        assert_eq!(
            heartbeat_url(&u).as_str(),
            "https://h/integrations/v1/webhook/T/heartbeat/"
        );
        let e = parse(&format!("{MIN}heartbeat = \"1s\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("integration[0].heartbeat"), "{e}");
        assert_eq!(
            parse(&format!("{MIN}heartbeat = \"1m\"\n"))
                .unwrap()
                .integrations[0]
                .heartbeat,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn bad_log_level_is_rejected_before_it_reaches_the_logger() {
        let e = parse(&format!("{MIN}\n[log]\nlevel = \"oncall_agent=loud\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.level"), "{e}");
        parse(&format!(
            "{MIN}\n[log]\nlevel = \"oncall_agent=debug,warn\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn world_readable_config_warns_only_when_it_holds_a_real_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        let warned = |url: &str| {
            std::fs::write(&path, MIN.replace("https://oncall.example.com", url)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            warnings(&Config::load(&path).unwrap())
                .iter()
                .any(|w| w.contains("readable by every user"))
        };
        assert!(warned("https://oncall.example.com"));
        assert!(!warned("http://127.0.0.1:9754"));
        assert!(!warned("http://[::1]:9754"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(&path, MIN).unwrap();
        assert!(warnings(&Config::load(&path).unwrap()).is_empty());
    }

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("64 KiB").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("1 parsec").is_err());
    }

    #[test]
    fn rate_rejects_zero_and_garbage() {
        assert!("0/5m".parse::<Rate>().is_err());
        assert!("5/0s".parse::<Rate>().is_err());
        assert!("abc".parse::<Rate>().is_err());
        assert_eq!(
            "300/5m".parse::<Rate>().unwrap(),
            Rate {
                count: 300,
                per: Duration::from_secs(300)
            }
        );
    }

    const API: &str = "[api]\nurl = \"https://oncall.example.com/oncall\"\ntoken = \"TOKEN\"\n";

    #[test]
    fn api_section_gets_documented_defaults() {
        let c = parse(&format!("{MIN}{API}")).unwrap();
        let api = c.api.unwrap();
        assert_eq!(api.rate.to_string(), "300/5m");
        assert!(api.grafana_url.is_none());
        assert_eq!(
            api.base().as_str(),
            "https://oncall.example.com/oncall/api/v1/"
        );
        // The API's own URL means the same endpoint.
        let c = parse(&format!(
            "{MIN}{}",
            API.replace("/oncall\"", "/oncall/api/v1/\"")
        ))
        .unwrap();
        assert_eq!(
            c.api.unwrap().base().as_str(),
            "https://oncall.example.com/oncall/api/v1/"
        );
        // Neither token nor token_file: ONCALL_API_TOKEN, read only when needed.
        let c = parse(&format!("{MIN}[api]\nurl = \"https://h/oncall\"\n")).unwrap();
        assert!(matches!(c.api.unwrap().token, ApiToken::Env));
    }

    #[test]
    fn api_section_refusals_name_the_field() {
        let both = format!("{MIN}{API}token_file = \"/x\"\n");
        assert!(parse(&both).unwrap_err().to_string().contains("api.token"));
        let creds = format!("{MIN}[api]\nurl = \"https://user:pw@h/oncall\"\n");
        assert!(parse(&creds).unwrap_err().to_string().contains("api.url"));
        let gu = format!("{MIN}{API}grafana_url = \"mystack\"\n");
        assert!(
            parse(&gu)
                .unwrap_err()
                .to_string()
                .contains("api.grafana_url")
        );
        let bogus = format!("{MIN}{API}bearer = true\n");
        assert!(parse(&bogus).unwrap_err().to_string().contains("bearer"));
    }

    #[test]
    fn integration_by_id_or_api_name_needs_the_api_and_no_url() {
        let by_id = "[[integration]]\nname = \"b\"\nid = \"CFRPV98RPR1U8\"\n";
        let e = parse(&format!("{MIN}{by_id}")).unwrap_err().to_string();
        assert!(
            e.contains("integration[1].id") && e.contains("[api]"),
            "{e}"
        );
        let c = parse(&format!("{MIN}{API}{by_id}")).unwrap();
        assert_eq!(c.integrations.len(), 1);
        assert_eq!(c.unresolved[0].by, ApiRef::Id("CFRPV98RPR1U8".into()));
        assert_eq!(c.unresolved[0].position, 1);
        assert_eq!(c.integration_names(), ["db-prod", "b"]);
        let e = parse(&format!(
            "{MIN}{API}{by_id}url = \"https://h/integrations/v1/webhook/T/\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both"), "{e}");
        let e = parse(&format!("{MIN}{API}{by_id}api_name = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
        // An id becomes a path segment: nothing but letters and digits.
        let e = parse(&format!(
            "{MIN}{API}{}",
            by_id.replace("CFRPV98RPR1U8", "../x")
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("integration[1].id"), "{e}");
        let by_name = format!(
            "{MIN}{API}[[integration]]\nname = \"n\"\napi_name = \"DB prod\"\nheartbeat = \"1m\"\n"
        );
        let c = parse(&by_name).unwrap();
        assert_eq!(c.unresolved[0].by, ApiRef::Name("DB prod".into()));
        assert_eq!(c.unresolved[0].heartbeat, Some(Duration::from_secs(60)));
    }

    #[test]
    fn resolving_keeps_the_files_order_and_derives_the_kind() {
        let text = format!(
            "{MIN}{API}[[integration]]\nname = \"b\"\nid = \"B1\"\n[[integration]]\nname = \"c\"\nid = \"C1\"\n[[integration]]\nname = \"d\"\nurl = \"https://h/integrations/v1/webhook/D/\"\n"
        );
        let c = parse(&text).unwrap();
        let url = |t: &str| {
            Secret::new(
                reqwest::Url::parse(&format!("https://h/integrations/v1/alertmanager/{t}/"))
                    .unwrap(),
            )
        };
        // c first, then b: each lands at its place in the file.
        let c = c.with_resolved(&BTreeMap::from([("c".to_string(), url("C"))]));
        let names: Vec<&str> = c.integrations.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["db-prod", "c", "d"]);
        let c = c.with_resolved(&BTreeMap::from([("b".to_string(), url("B"))]));
        let names: Vec<&str> = c.integrations.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["db-prod", "b", "c", "d"]);
        assert!(c.unresolved.is_empty());
        assert_eq!(c.integrations[1].kind.as_deref(), Some("alertmanager"));
        assert_eq!(c.integrations[1].rate, c.limits.integration);
    }

    #[test]
    fn api_token_is_read_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "  SECRET-T  \n").unwrap();
        let t = ApiToken::File(f.clone()).load().unwrap();
        assert_eq!(t.expose(), "SECRET-T");
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(
            ApiToken::File(f.clone()).load(),
            Err(TokenError::Empty(_))
        ));
        let e = ApiToken::Inline(Secret::new("A\u{7}B".into()))
            .load()
            .unwrap_err();
        assert!(matches!(e, TokenError::Malformed(_)));
        assert!(!e.to_string().contains("A\u{7}B"));
        assert!(!ApiToken::File(f).describe().contains("SECRET"));
    }

    #[test]
    fn client_commands_load_a_config_whose_secret_files_they_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = MIN.replace(
            "url = \"https://oncall.example.com/integrations/v1/formatted_webhook/SECRETTOKEN/\"",
            "url_file = \"/nonexistent/credential\"",
        );
        std::fs::write(&path, text).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("integration[0].url_file"), "{e}");
        let c = Config::load_without_secrets(&path).unwrap();
        assert_eq!(c.integrations[0].name, "db-prod");
    }

    #[test]
    fn sources_parse_with_defaults_and_name_bad_fields() {
        let c = parse(&format!(
            "{MIN}\n[[source]]\ntype = \"file\"\npath = \"/var/log/a/*.jsonl\"\nintegration = \"db-prod\"\n\n[[source]]\ntype = \"spool\"\npath = \"/var/spool/oa\"\n"
        ))
        .unwrap();
        let Source::File(f) = &c.sources[0] else {
            panic!("{:?}", c.sources)
        };
        assert_eq!(f.dir, Path::new("/var/log/a"));
        assert!(f.name_pattern.matches("x.jsonl"));
        assert_eq!(f.format, LineFormat::Json);
        assert_eq!(f.start_at, StartAt::Beginning);
        assert_eq!(f.max_line, 64 * 1024);
        assert_eq!(c.spool().unwrap().path, Path::new("/var/spool/oa"));

        let bad = |extra: &str| {
            parse(&format!("{MIN}\n[[source]]\n{extra}\n"))
                .unwrap_err()
                .to_string()
        };
        let e = bad("type = \"file\"\npath = \"/a/x.log\"\nintegration = \"nope\"");
        assert!(
            e.contains("source[0].integration") && e.contains("nope"),
            "{e}"
        );
        let e = bad("type = \"file\"\npath = \"/a/*/x.log\"\nintegration = \"db-prod\"");
        assert!(
            e.contains("source[0].path") && e.contains("file name only"),
            "{e}"
        );
        let e = bad("type = \"file\"\npath = \"/a/x.log\"\nintegration = \"db-prod\"\nbogus = 1");
        assert!(e.contains("bogus"), "{e}");
        let e = bad("type = \"pipe\"\npath = \"/a\"");
        assert!(e.contains("pipe"), "{e}");
        let e = bad(
            "type = \"file\"\npath = \"/a/x.log\"\nintegration = \"db-prod\"\nuid_fields = [1]",
        );
        assert!(e.contains("source[0].uid_fields"), "{e}");
        let e = bad(
            "type = \"file\"\npath = \"/a/x.log\"\nintegration = \"db-prod\"\nmax_line = \"2MiB\"",
        );
        assert!(e.contains("source[0].max_line"), "{e}");
        let two = format!(
            "{MIN}\n[[source]]\ntype = \"spool\"\npath = \"/a\"\n[[source]]\ntype = \"spool\"\npath = \"/b\"\n"
        );
        let e = parse(&two).unwrap_err().to_string();
        assert!(e.contains("source[1]") && e.contains("one spool"), "{e}");
    }

    #[test]
    fn journal_sources_parse_with_defaults_and_name_bad_fields() {
        let c = parse(&format!(
            "{MIN}\n[[source]]\ntype = \"journal\"\nintegration = \"db-prod\"\nunits = [\"nginx\", \"boot.mount\"]\npriority = \"warning\"\n"
        ))
        .unwrap();
        let Source::Journal(j) = &c.sources[0] else {
            panic!("{:?}", c.sources)
        };
        assert_eq!(j.name, "db-prod");
        assert_eq!(j.units, ["nginx.service", "boot.mount"]);
        assert_eq!(j.priority, 4);
        assert_eq!(j.start_at, StartAt::End);
        assert_eq!(j.max_line, 64 * 1024);
        assert_eq!(j.journalctl, Path::new("journalctl"));
        assert!(c.spool().is_none());

        let bad = |extra: &str| {
            parse(&format!(
                "{MIN}\n[[source]]\ntype = \"journal\"\nintegration = \"db-prod\"\n{extra}\n"
            ))
            .unwrap_err()
            .to_string()
        };
        for (extra, field) in [
            ("priority = 8", "source[0].priority"),
            ("priority = \"loud\"", "source[0].priority"),
            ("units = [\"ngin*\"]", "source[0].units"),
            ("identifiers = [\"+\"]", "source[0].identifiers"),
            ("uid_fields = [\"message\"]", "source[0].uid_fields"),
            ("max_line = 10", "source[0].max_line"),
            (
                "journal_file = \"/a\"\njournal_directory = \"/b\"",
                "source[0].journal_file",
            ),
            ("bogus = 1", "bogus"),
        ] {
            let e = bad(extra);
            assert!(e.contains(field), "{extra}: {e}");
        }
        let e = bad("[[source]]\ntype = \"journal\"\nintegration = \"db-prod\"");
        assert!(
            e.contains("source[1].name") && e.contains("own name"),
            "{e}"
        );
        let e = parse(&format!(
            "{MIN}\n[[source]]\ntype = \"journal\"\nintegration = \"nope\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("source[0].integration"), "{e}");
    }

    #[test]
    fn the_commented_journal_example_parses_once_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/oncall-agent.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text
            .find("# [[source]]\n# type = \"journal\"")
            .expect("the example config shows a journal source");
        let block: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                *l == "[[source]]"
                    || l.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&format!("{MIN}\n{block}")).unwrap();
        assert!(matches!(c.sources[0], Source::Journal(_)), "{block}");
    }

    #[test]
    fn shipped_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/oncall-agent.toml");
        let c = Config::load(&path).unwrap();
        assert!(!c.integrations.is_empty());
        // It documents the API and an integration by id.
        let api = c.api.as_ref().unwrap();
        assert!(matches!(api.token, ApiToken::File(_)));
        // A service account token with X-Grafana-URL is the documented way (IRM prefers it).
        assert!(api.grafana_url.is_some());
        assert_eq!(api.rate.to_string(), "300/5m");
        assert_eq!(c.unresolved[0].by, ApiRef::Id("CFRPV98RPR1U8".into()));
        assert!(matches!(c.sources[0], Source::File(_)));
        assert!(c.spool().is_some());
    }
}
