//! The config file: TOML in, validated types out.
//!
//! [`raw`] mirrors the file (serde, `deny_unknown_fields`); [`Config`] is what the rest of the
//! agent sees: durations as `Duration`, limits as [`Rate`] ([`units`]), URLs parsed, secrets
//! wrapped in [`Secret`]. [`validate`] applies the defaults, each where its section is built
//! (OnCall's documented limits are the constants below), and checks every value;
//! `config/oncall-agent.toml` documents every field and its default (a test parses it).

mod fleet;
mod raw;
mod units;
mod validate;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::redact::{Secret, redact_url};
pub use fleet::{FleetConfig, FleetConfigError, RawFleet};
use raw::*;
pub use units::Rate;
use units::{ByteSize, HumanDuration};
use validate::*;
pub use validate::{valid_name, warnings};

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

/// OnCall's documented limit per integration, also the default for the API token: 300
/// requests per 5 minutes.
pub const DEFAULT_INTEGRATION_RATE: Rate = Rate {
    count: 300,
    per: Duration::from_secs(300),
};

/// The organization's default budget: 500 per 5 minutes, the documented limit, below the
/// engine's default of 900 so it holds whichever an organization has.
pub const DEFAULT_ORG_RATE: Rate = Rate {
    count: 500,
    per: Duration::from_secs(300),
};

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
    /// `[fleet]`: budgets shared with the agents on other hosts through Redis. Default: none,
    /// this host's budgets are its own.
    pub fleet: Option<FleetConfig>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use units::parse_bytes;

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
        // Inside a [[source]] too, whatever its type.
        for kind in [
            "file\"\npath = \"/a\"\nintegration = \"db-prod",
            "spool\"\npath = \"/s",
            "journal\"\nintegration = \"db-prod",
        ] {
            let e = parse(&format!(
                "{MIN}\n[[source]]\ntype = \"{kind}\"\nstart_from = \"end\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("start_from"), "{e}");
        }
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
    fn the_commented_fleet_example_parses_once_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/oncall-agent.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text
            .find("# [fleet]\n")
            .expect("the example config shows [fleet]");
        // Its alternatives left out: local_share (beside hosts) and the password file.
        let block: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                *l == "[fleet]"
                    || l.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty()
                            && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                            && k != "local_share"
                            && k != "password_file"
                    })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&format!("{MIN}\n{block}")).unwrap();
        let f = c.fleet.expect("[fleet] read");
        assert_eq!(f.redacted, "redis://redis.example.com:6379/0");
        assert_eq!((f.host.as_str(), f.org.as_str()), ("web-01", "acme"));
        assert_eq!(f.local_share, 0.05);
        let e = parse(&format!("{MIN}\n[fleet]\nredis = \"redis://r/0\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fleet.hosts"), "{e}");
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
