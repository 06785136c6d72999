//! The command line (clap derive) and what each command does. Exit codes follow sysexits.h so
//! that Nagios, cron and systemd can tell a bad config (78) from a stopped daemon (69).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, DEFAULT_PATH};
use crate::local;
use crate::observe::StatusReport;

/// sysexits.h codes.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const DATAERR: u8 = 65;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const TEMPFAIL: u8 = 75;
    pub const PROTOCOL: u8 = 76;
    pub const NOPERM: u8 = 77;
    pub const CONFIG: u8 = 78;
}

/// A failed command: the exit code and a message for stderr.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    fn new(code: u8, message: impl Into<String>) -> CliError {
        CliError {
            code,
            message: message.into(),
        }
    }
}

/// The man page's and `--help`'s closing notes: signals, files, exit codes.
const AFTER_HELP: &str = "\
Integration URLs are used as OnCall shows them: Grafana Cloud IRM's are \
https://oncall-prod-<region>.grafana.net/oncall/integrations/v1/<kind>/<token>/, a self-hosted \
Grafana OnCall's <base URL>/integrations/v1/<kind>/<token>/.

Signals (to `run`): SIGHUP reloads the config (a bad one is refused and the old one stays); \
SIGTERM and SIGINT stop accepting, let deliveries in flight finish within shutdown_timeout, \
and exit 0.

Files: /etc/oncall-agent/oncall-agent.toml (config), /var/lib/oncall-agent (queue), \
/run/oncall-agent/agent.sock (ingest, status, metrics and the dead-letter admin API).

Exit codes: 0 ok, 64 usage, 65 data refused, 69 daemon unreachable, 70 internal error, \
75 try again later, 76 unusable answer from the OnCall API, 77 credential refused by OnCall, \
78 bad config.";

#[derive(Debug, Parser)]
#[command(
    name = "oncall-agent",
    version,
    about = "Queues alerts durably and delivers them to Grafana OnCall / Grafana Cloud IRM within its rate limits",
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    /// The config file.
    #[arg(long, short, global = true, env = "ONCALL_AGENT_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Plain lines (without timestamps under journald).
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `--state`, with the words monitoring tools hand to a notification command, so that their
/// command lines need no shell around them (see the README).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum AlertState {
    /// Also `problem` (Nagios/Icinga notification type) and `1` (Zabbix {EVENT.VALUE}).
    #[value(aliases = ["problem", "1"])]
    Alerting,
    /// Also `recovery` (Nagios/Icinga), `resolved` and `0` (Zabbix {EVENT.VALUE}).
    #[value(aliases = ["recovery", "resolved", "0"])]
    Ok,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// How log lines look: plain (without timestamps under journald) or json for shippers.
        #[arg(long, value_enum, default_value = "plain")]
        log_format: LogFormat,
    },
    /// Queue one alert with the running daemon; exits 0 once it is durable. If the daemon does
    /// not answer (or is full), the alert goes to the spool folder and is picked up later.
    Send(SendArgs),
    /// Show queues, budgets and failures of the running daemon.
    Status {
        /// Print the JSON answer instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw the table every --interval until Ctrl-C, like `watch`; keeps going (and says
        /// "daemon unreachable") while the daemon is away.
        #[arg(long, short)]
        watch: bool,
        /// With --watch: time between redraws ("1s", "500ms"; at least 100ms).
        #[arg(long, short = 'n', default_value = "1s", value_parser = watch_interval, requires = "watch")]
        interval: Duration,
    },
    /// Validate the config file: exit 0, or 78 with the file, the field and the problem.
    CheckConfig {
        /// Also check the credentials with OnCall: each integration's token (a GET on its
        /// inbound URL, which costs no rate-limit budget) and the API token (one API call).
        /// Exit 78 if one is refused, 69 if OnCall cannot be reached.
        #[arg(long)]
        online: bool,
    },
    /// List the OnCall integrations the API token sees (needs [api] in the config): id, name,
    /// type, how often this agent sends heartbeats to it (from the config's `heartbeat`), which
    /// local integrations use it, and its inbound URL.
    Integrations {
        /// Print inbound URLs in full. They hold the integrations' tokens; by default they are
        /// redacted.
        #[arg(long)]
        show_urls: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List, show, retry or purge dead letters (alerts OnCall refused for good). Talks to the
    /// running daemon over its Unix socket only.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// End every wait of the running daemon's sender at once: retry backoff, a server's
    /// Retry-After and 429 pauses, of one integration or of all (and the organization's
    /// pause). Budgets still hold: what goes out still spends them. Talks to the daemon over
    /// its Unix socket only.
    RetryNow {
        /// Only this integration.
        #[arg(long, short)]
        integration: Option<String>,
    },
    /// Write the man page and shell completions into a folder (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Folder to write into (created if missing).
        #[arg(long, default_value = "target/assets")]
        out_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead letters, oldest first.
    List {
        /// Only this integration's.
        #[arg(long, short)]
        integration: Option<String>,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: why OnCall refused it, its answer and the alert itself.
    Show {
        id: u64,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead letters again (fix the cause first: OnCall refused them once).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Retry {
        /// The dead letter's id (from `dead list`).
        id: Option<u64>,
        /// Every dead letter (with --integration: every one of that integration).
        #[arg(long)]
        all: bool,
        /// With --all: only this integration's dead letters.
        #[arg(long, short, requires = "all")]
        integration: Option<String>,
    },
    /// Delete dead letters for good.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "older_than"])))]
    Purge {
        /// The dead letter's id.
        id: Option<u64>,
        /// Every dead letter that failed at least this long ago ("7d", "12h").
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// With --older-than: only this integration's dead letters.
        #[arg(long, short, requires = "older_than")]
        integration: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The integration's local name (from the config).
    #[arg(long, short)]
    pub integration: String,
    /// Alert title (formatted_webhook `title`).
    #[arg(long, short)]
    pub title: Option<String>,
    /// Alert text (`message`).
    #[arg(long, short)]
    pub message: Option<String>,
    /// Read the alert text from this file, or - for standard input (a command's output, such
    /// as a unit's last journal lines). Bytes that are not UTF-8 are replaced; of a longer
    /// text only its last 16 KiB are kept.
    #[arg(long, value_name = "FILE", conflicts_with = "message")]
    pub message_file: Option<PathBuf>,
    /// Grouping id (`alert_uid`): alerts with the same uid form one alert group, and
    /// `--state ok` with it resolves the group.
    #[arg(long, short)]
    pub uid: Option<String>,
    /// `alerting` or `ok` (any case; also PROBLEM/RECOVERY, and Zabbix's 1/0).
    #[arg(long, value_enum, ignore_case = true)]
    pub state: Option<AlertState>,
    /// Link to the source (`link_to_upstream_details`).
    #[arg(long)]
    pub link: Option<String>,
    /// Image URL (`image_url`).
    #[arg(long)]
    pub image_url: Option<String>,
    /// Send this JSON object verbatim instead (a file, or - for standard input).
    #[arg(long, conflicts_with_all = ["title", "message", "message_file", "uid", "state", "link", "image_url"])]
    pub json: Option<PathBuf>,
    /// Give up waiting for the daemon after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

fn load(path: &std::path::Path) -> Result<Config, CliError> {
    Config::load(path).map_err(|e| CliError::new(exit::CONFIG, e.to_string()))
}

/// The config as the client commands need it: listeners and names, not the secret files.
fn load_client(path: &std::path::Path) -> Result<Config, CliError> {
    Config::load_without_secrets(path).map_err(|e| CliError::new(exit::CONFIG, e.to_string()))
}

/// `check-config`.
pub fn check_config(path: &std::path::Path) -> Result<(), CliError> {
    let c = load(path)?;
    for w in crate::config::warnings(&c) {
        eprintln!("warning: {w}");
    }
    // The daemon may be given what this user cannot read (a systemd credential, its
    // environment): a warning, not an error.
    if let Some(api) = &c.api
        && let Err(e) = api.token.load()
    {
        eprintln!("warning: {e} (fine if only the daemon can read it)");
    }
    println!(
        "{}: ok ({} integrations, limits {} per integration and {} per org)",
        path.display(),
        c.integration_names().len(),
        c.limits.integration,
        c.limits.org
    );
    Ok(())
}

/// The formatted_webhook body `send` builds from its flags, or the JSON it was given.
pub fn alert_body(args: &SendArgs, max_body: usize) -> Result<Vec<u8>, CliError> {
    if let Some(src) = &args.json {
        let mut buf = Vec::new();
        let limit = max_body as u64 + 1;
        let read = if src.as_os_str() == "-" {
            std::io::stdin().take(limit).read_to_end(&mut buf)
        } else {
            std::fs::File::open(src).and_then(|f| f.take(limit).read_to_end(&mut buf))
        };
        read.map_err(|e| {
            CliError::new(exit::DATAERR, format!("cannot read {}: {e}", src.display()))
        })?;
        if buf.len() > max_body {
            return Err(CliError::new(
                exit::DATAERR,
                format!(
                    "{} is larger than queue.max_body ({max_body} bytes)",
                    src.display()
                ),
            ));
        }
        crate::sources::http::parse_alert(&buf)
            .map_err(|e| CliError::new(exit::DATAERR, format!("{}: {e}", src.display())))?;
        return Ok(buf);
    }
    let Some(title) = &args.title else {
        return Err(CliError::new(exit::USAGE, "give --title (or --json FILE)"));
    };
    let mut m = serde_json::Map::new();
    m.insert("title".into(), title.clone().into());
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            m.insert(k.into(), v.clone().into());
        }
    };
    let from_file = match &args.message_file {
        Some(src) => Some(read_message(src).map_err(|e| {
            CliError::new(exit::DATAERR, format!("cannot read {}: {e}", src.display()))
        })?),
        None => None,
    };
    put("message", args.message.as_ref().or(from_file.as_ref()));
    put("alert_uid", args.uid.as_ref());
    put("link_to_upstream_details", args.link.as_ref());
    put("image_url", args.image_url.as_ref());
    let state = match args.state {
        Some(AlertState::Ok) => "ok",
        _ => "alerting",
    };
    m.insert("state".into(), state.into());
    Ok(serde_json::to_vec(&m).expect("a JSON map serializes"))
}

/// Most of a `--message-file` text kept (its end: the last lines of a log matter most).
pub const MESSAGE_FILE_MAX: usize = 16 * 1024;

/// Reads `--message-file` (`-`: standard input) to its end, keeping its last
/// [`MESSAGE_FILE_MAX`] bytes, from a line start when there is one, marked as cut.
fn read_message(src: &std::path::Path) -> std::io::Result<String> {
    let mut input: Box<dyn Read> = if src.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(src)?)
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * MESSAGE_FILE_MAX {
            kept.drain(..kept.len() - MESSAGE_FILE_MAX);
            cut = true;
        }
    }
    if kept.len() > MESSAGE_FILE_MAX {
        kept.drain(..kept.len() - MESSAGE_FILE_MAX);
        cut = true;
    }
    if cut && let Some(nl) = kept.iter().position(|&b| b == b'\n') {
        kept.drain(..=nl);
    }
    let text = String::from_utf8_lossy(&kept);
    let text = text.trim_end();
    Ok(if cut {
        format!("[earlier lines cut]\n{text}")
    } else {
        text.to_string()
    })
}

/// `send`.
pub async fn send(config_path: &std::path::Path, args: SendArgs) -> Result<(), CliError> {
    let config = load_client(config_path)?;
    if !config.integration_names().contains(&args.integration) {
        return Err(CliError::new(
            exit::USAGE,
            format!(
                "no integration named {:?} in {}",
                args.integration,
                config_path.display()
            ),
        ));
    }
    let body = alert_body(&args, config.queue.max_body)?;
    let path = format!("/v1/integrations/{}/alerts", args.integration);
    let answer = match local::request(
        &config,
        hyper::Method::POST,
        &path,
        body.clone(),
        args.timeout,
    )
    .await
    {
        Ok(a) => a,
        // Not running, not answering, or gone mid-request: the spool keeps the alert (a
        // request that did get through is then delivered twice, never zero times).
        Err(e) => {
            return spool_or_fail(
                &config,
                &args.integration,
                &body,
                &e.to_string(),
                exit::UNAVAILABLE,
            );
        }
    };
    let text = String::from_utf8_lossy(&answer.body);
    let reason = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_string());
    match answer.status {
        202 => Ok(()),
        503 => spool_or_fail(
            &config,
            &args.integration,
            &body,
            &format!("the agent cannot take the alert now ({reason})"),
            exit::TEMPFAIL,
        ),
        404 | 400 | 413 => Err(CliError::new(
            exit::DATAERR,
            format!("the agent refused the alert: {reason}"),
        )),
        s => Err(CliError::new(
            exit::SOFTWARE,
            format!("the agent answered {s}: {reason}"),
        )),
    }
}

/// The daemon did not take the alert (`why`): leave it in the spool folder, where the daemon
/// picks it up, and succeed; or, with no spool configured, fail with `code`.
fn spool_or_fail(
    config: &Config,
    integration: &str,
    body: &[u8],
    why: &str,
    code: u8,
) -> Result<(), CliError> {
    let Some(spool) = config.spool() else {
        return Err(CliError::new(
            code,
            format!(
                "{why}; the alert was NOT queued (no spool folder is configured in {}: add a [[source]] with type = \"spool\" so that send can leave alerts there)",
                config.path.display()
            ),
        ));
    };
    match crate::sources::spool::write_spool(&spool.path, integration, body) {
        Ok(p) => {
            eprintln!(
                "oncall-agent: {why}; the alert was written to {} and is sent once the agent reads it",
                p.display()
            );
            Ok(())
        }
        Err(e) => Err(CliError::new(
            code,
            format!(
                "{why}, and writing to the spool folder {} failed too ({e}); the alert was NOT queued",
                spool.path.display()
            ),
        )),
    }
}

/// `status --interval`: a duration of at least 100 ms (as `watch -n` allows), so that a typo
/// like "1ms" does not turn the command into a busy loop against the daemon.
fn watch_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("{text} is shorter than 100ms"));
    }
    Ok(d)
}

/// One `/v1/status` request to the running daemon.
async fn fetch_status(config: &Config, timeout: Duration) -> Result<StatusReport, CliError> {
    let answer = local::request(
        config,
        hyper::Method::GET,
        "/v1/status",
        Vec::new(),
        timeout,
    )
    .await
    .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("{e} (is the daemon running?)")))?;
    if answer.status != 200 {
        return Err(CliError::new(
            exit::SOFTWARE,
            format!("the agent answered {}", answer.status),
        ));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|e| CliError::new(exit::SOFTWARE, format!("unexpected status answer: {e}")))
}

/// `status --watch`: redraws the table every `interval` until Ctrl-C (exit 0). A daemon that
/// is away (stopped, restarting) is a state shown on the screen, not the end of the watch: the
/// operator at 3 a.m. wants to see it come back.
pub async fn status_watch(
    config_path: &std::path::Path,
    interval: Duration,
) -> Result<(), CliError> {
    use std::io::{IsTerminal, Write};
    let config = load_client(config_path)?;
    // On a terminal each frame replaces the last (cursor home, clear screen), as `watch` does;
    // into a pipe or a file frames follow each other, a blank line apart.
    let terminal = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tick.tick() => {}
        }
        // A hung daemon must not freeze the screen for long: wait at most a few intervals.
        let timeout = (interval * 3).clamp(Duration::from_secs(1), Duration::from_secs(5));
        let body = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            r = fetch_status(&config, timeout) => match r {
                Ok(report) => report.table(),
                Err(e) if e.code == exit::UNAVAILABLE => {
                    format!("daemon unreachable: {}\n", e.message)
                }
                Err(e) => format!("daemon answered badly: {}\n", e.message),
            },
        };
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let frame = format!(
            "Every {}: oncall-agent status    {now}\n\n{body}",
            humantime::format_duration(interval)
        );
        let mut out = std::io::stdout().lock();
        let written = if terminal {
            write!(out, "\x1b[H\x1b[2J{frame}")
        } else {
            writeln!(out, "{frame}")
        };
        // The reader went away (`| head`, a closed terminal): nothing left to watch for.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
}

/// `status`.
pub async fn status(config_path: &std::path::Path, json: bool) -> Result<(), CliError> {
    let config = load_client(config_path)?;
    let report = fetch_status(&config, Duration::from_secs(5)).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// An API client for one command: the budget in memory (the daemon holds the database), the
/// operator's patience as the wait bound.
fn api_client(config: &Config) -> Result<crate::api::ApiClient, CliError> {
    use crate::api::{ApiClient, Budget, HttpApi, Policy};
    let Some(api) = &config.api else {
        return Err(CliError::new(
            exit::CONFIG,
            format!(
                "{} has no [api] section: set api.url and an API token (see config/oncall-agent.toml)",
                config.path.display()
            ),
        ));
    };
    let transport = HttpApi::new(config.delivery.timeout)
        .map_err(|e| CliError::new(exit::SOFTWARE, format!("cannot start an HTTP client: {e}")))?;
    ApiClient::new(
        api,
        std::sync::Arc::new(transport),
        Budget::memory(api.rate),
        crate::clock::Clock::system(),
        Policy::interactive(config.delivery.timeout),
    )
    .map_err(|e| api_failure(&e))
}

/// The exit code and message for an API call that failed.
fn api_failure(e: &crate::api::ApiError) -> CliError {
    use crate::api::ApiError as E;
    let code = match e {
        E::Token(_) => exit::CONFIG,
        E::Refused { .. } => exit::NOPERM,
        E::NotFound { .. } => exit::DATAERR,
        E::RateLimited { .. } | E::BudgetSpent { .. } => exit::TEMPFAIL,
        E::Unavailable { .. } => exit::UNAVAILABLE,
        E::Status { .. } | E::Protocol { .. } => exit::PROTOCOL,
        E::Budget(_) => exit::SOFTWARE,
    };
    CliError::new(code, e.to_string())
}

/// `integrations`: what the API token sees, and which local integration uses each.
pub async fn integrations(
    config_path: &std::path::Path,
    show_urls: bool,
    json: bool,
) -> Result<(), CliError> {
    use crate::api::model::printable;
    use crate::config::ApiRef;
    let config = load(config_path)?;
    let client = api_client(&config)?;
    let mut all = client
        .list_integrations()
        .await
        .map_err(|e| api_failure(&e))?;
    all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    // Each OnCall integration's local users (by id or name, or by the same inbound URL) and
    // how often this agent hits its heartbeat. OnCall gives a heartbeat link to every
    // integration that can take heartbeats, so the link alone says nothing about whether
    // anyone sends them: the config does.
    let rows: Vec<([String; 6], Option<Duration>)> = all
        .iter()
        .map(|i| {
            let local: Vec<(&str, Option<Duration>)> = config
                .unresolved
                .iter()
                .filter(|u| match &u.by {
                    ApiRef::Id(id) => *id == i.id,
                    ApiRef::Name(n) => *n == i.name,
                })
                .map(|u| (u.name.as_str(), u.heartbeat))
                .chain(
                    config
                        .integrations
                        .iter()
                        .filter(|c| {
                            i.link
                                .as_ref()
                                .is_some_and(|l| l.expose() == c.url.expose())
                        })
                        .map(|c| (c.name.as_str(), c.heartbeat)),
                )
                .collect();
            let every = local.iter().filter_map(|(_, h)| *h).min();
            let heartbeat = match every {
                None => "no".to_string(),
                Some(d) if i.heartbeat => format!("every {}", humantime::format_duration(d)),
                Some(d) => format!(
                    "every {} (OnCall gives it no heartbeat URL)",
                    humantime::format_duration(d)
                ),
            };
            let url = match &i.link {
                None => "-".to_string(),
                Some(l) if show_urls => l.expose().to_string(),
                Some(l) => crate::redact::redact_url(l.expose()),
            };
            let names: Vec<&str> = local.iter().map(|(n, _)| *n).collect();
            let row = [
                printable(&i.id, 64),
                printable(&i.name, 80),
                printable(&i.kind, 40),
                heartbeat,
                if names.is_empty() {
                    "-".to_string()
                } else {
                    names.join(",")
                },
                url,
            ];
            (row, every)
        })
        .collect();
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .zip(&all)
            .map(|(([id, name, kind, _, local, url], every), i)| {
                serde_json::json!({
                    "id": id, "name": name, "type": kind,
                    // What this agent sends ("1m"), or null.
                    "heartbeat": every.map(|d| humantime::format_duration(d).to_string()),
                    // OnCall gives the integration a heartbeat URL (it can take heartbeats).
                    "heartbeat_link": i.heartbeat,
                    "local": if local == "-" { vec![] } else { local.split(',').collect::<Vec<_>>() },
                    "url": url,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| "[]".to_string())
        );
        return Ok(());
    }
    let rows: Vec<[String; 6]> = rows.into_iter().map(|(r, _)| r).collect();
    let header = ["ID", "NAME", "TYPE", "HEARTBEAT", "LOCAL", "URL"].map(str::to_string);
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

/// `check-config --online`: the offline checks, then each credential with OnCall; a line per
/// integration.
pub async fn check_config_online(config_path: &std::path::Path) -> Result<(), CliError> {
    use crate::api::check::{InboundCheck, check_inbound, inbound_client};
    use crate::api::resolve::{self, Source};
    let config = load(config_path)?;
    for w in crate::config::warnings(&config) {
        eprintln!("warning: {w}");
    }
    // 78 when OnCall refused something in the config, else 69 when it could not be asked.
    let mut refused = 0;
    let mut unreachable = 0;
    let client = config.api.as_ref().map(|_| api_client(&config));
    match &client {
        None => println!("api: not configured"),
        Some(Err(e)) => {
            refused += 1;
            println!("api: FAILED: {}", e.message);
        }
        Some(Ok(c)) => match c.check_token().await {
            Ok(count) => println!(
                "api {}: ok, {} is accepted{}",
                c.base(),
                c.credential(),
                count.map_or(String::new(), |n| format!(" ({n} integrations visible)"))
            ),
            Err(e) => {
                if e.is_refused() {
                    refused += 1;
                } else {
                    unreachable += 1;
                }
                println!("api {}: FAILED: {e}", c.base());
            }
        },
    }
    let no_api = crate::api::ApiError::Unavailable {
        api: "(none)".into(),
        reason: "the API client could not be built".into(),
    };
    let api = match &client {
        Some(Ok(c)) => Ok(c),
        _ => Err(&no_api),
    };
    let refs: std::collections::BTreeMap<String, String> = config
        .unresolved
        .iter()
        .map(|u| (u.name.clone(), u.by.to_string()))
        .collect();
    // With the API, each URL's kind is compared with its integration's type: OnCall answers
    // the GET below with 200 whatever kind the URL names, then refuses every alert with 400.
    let listing = match api {
        Ok(c) => c.list_integrations().await.ok(),
        Err(_) => None,
    };
    let r = resolve::resolve(config, api, None, crate::clock::Clock::system()).await;
    let http = inbound_client(r.config.delivery.timeout)
        .map_err(|e| CliError::new(exit::SOFTWARE, format!("cannot start an HTTP client: {e}")))?;
    for p in &r.pending {
        if p.definite {
            refused += 1;
        } else {
            unreachable += 1;
        }
        println!(
            "integration {} ({}): NOT RESOLVED: {}",
            p.name, p.by, p.reason
        );
    }
    for i in &r.config.integrations {
        let how = match r.sources.get(&i.name) {
            Some(Source::Api) => format!(
                ", {} resolved through the API",
                refs.get(&i.name).map_or("id", String::as_str)
            ),
            _ => String::new(),
        };
        let check = check_inbound(&http, &i.url).await;
        let kind = match check {
            InboundCheck::Valid => {
                let verdict = kind_check(i, listing.as_deref());
                if verdict.starts_with("FAILED") {
                    refused += 1;
                }
                format!("; {verdict}")
            }
            InboundCheck::Unreachable(_) => {
                unreachable += 1;
                String::new()
            }
            _ => {
                refused += 1;
                String::new()
            }
        };
        println!(
            "integration {} ({}{how}): {}{kind}",
            i.name,
            i.redacted_url(),
            check.describe()
        );
    }
    if refused > 0 {
        return Err(CliError::new(
            exit::CONFIG,
            format!(
                "{}: OnCall refused {refused} of the credentials",
                config_path.display()
            ),
        ));
    }
    if unreachable > 0 {
        return Err(CliError::new(
            exit::UNAVAILABLE,
            format!(
                "{}: {unreachable} checks could not reach OnCall",
                config_path.display()
            ),
        ));
    }
    println!(
        "{}: ok ({} integrations, every credential accepted by OnCall)",
        config_path.display(),
        r.config.integrations.len()
    );
    Ok(())
}

/// Whether an inbound URL's kind matches the type OnCall's API gives its integration, in
/// words (`FAILED: ...` when they differ).
fn kind_check(
    i: &crate::config::Integration,
    listing: Option<&[crate::api::ApiIntegration]>,
) -> String {
    let Some(listing) = listing else {
        return "kind not checked (set [api] to compare the URL's kind with the integration's type)"
            .to_string();
    };
    // The same integration: the same host and token, whatever kind each URL names.
    let token = |u: &reqwest::Url| {
        let segs: Vec<String> = u.path_segments()?.map(str::to_string).collect();
        let at = segs.windows(2).position(|w| w == ["integrations", "v1"])?;
        let token = segs.get(at + 3).filter(|t| !t.is_empty())?.clone();
        Some((
            u.host_str().map(str::to_string),
            u.port_or_known_default(),
            token,
        ))
    };
    let ours = token(i.url.expose());
    let same = |u: &reqwest::Url| ours.is_some() && token(u) == ours;
    let Some(found) = listing
        .iter()
        .find(|a| a.link.as_ref().is_some_and(|l| same(l.expose())))
    else {
        return "kind not checked (no integration the API token sees has this URL)".to_string();
    };
    match &i.kind {
        Some(k) if *k == found.kind => format!("kind {k} matches"),
        Some(k) => format!(
            "FAILED: the URL's kind is {k} but OnCall's integration {} is of type {}: OnCall would refuse every alert with 400; use the integration's own URL",
            found.id,
            crate::api::model::printable(&found.kind, 40)
        ),
        None => "kind not checked (the URL names no kind)".to_string(),
    }
}

/// One admin request over the Unix socket; the answer's JSON on 2xx, the reason otherwise.
async fn admin(
    config: &Config,
    method: hyper::Method,
    path: &str,
) -> Result<serde_json::Value, CliError> {
    if config.listen.unix.is_none() {
        return Err(CliError::new(
            exit::USAGE,
            format!(
                "{}: the admin API is served only on the Unix socket; set listen.unix",
                config.path.display()
            ),
        ));
    }
    let answer = local::request(config, method, path, Vec::new(), Duration::from_secs(60))
        .await
        .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("{e} (is the daemon running?)")))?;
    let value: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let reason = value
        .get("error")
        .and_then(|e| e.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).trim().to_string());
    match answer.status {
        200..=299 => Ok(value),
        404 | 409 | 400 => Err(CliError::new(exit::DATAERR, reason)),
        503 => Err(CliError::new(exit::TEMPFAIL, reason)),
        s => Err(CliError::new(
            exit::SOFTWARE,
            format!("the agent answered {s}: {reason}"),
        )),
    }
}

fn integration_query(name: &Option<String>) -> Result<String, CliError> {
    match name {
        None => Ok(String::new()),
        Some(n) if crate::config::valid_name(n) => Ok(format!("integration={n}")),
        Some(n) => Err(CliError::new(
            exit::USAGE,
            format!("{n:?} is not an integration name"),
        )),
    }
}

fn when(t: crate::clock::Millis) -> String {
    if t == 0 {
        return "-".to_string();
    }
    let at = std::time::UNIX_EPOCH + Duration::from_millis(t);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, CliError> {
    serde_json::from_value(v)
        .map_err(|e| CliError::new(exit::SOFTWARE, format!("unexpected answer: {e}")))
}

fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| e.to_string())
    );
}

/// `retry-now [--integration N]`.
pub async fn retry_now(
    config_path: &std::path::Path,
    integration: Option<String>,
) -> Result<(), CliError> {
    let config = load_client(config_path)?;
    let q = integration_query(&integration)?;
    let v = admin(&config, hyper::Method::POST, &format!("/v1/retry-now?{q}")).await?;
    let r: crate::sender::RetryNowReport = decode(v)?;
    if r.org_pause_lifted {
        println!("organization: 429 pause lifted");
    }
    for e in &r.integrations {
        let mut what = vec![format!("{} alerts due now", e.alerts_due_now)];
        if e.backoff_reset {
            what.push("backoff reset".into());
        }
        if e.pause_lifted {
            what.push("429 pause lifted".into());
        }
        println!("{}: {}", e.integration, what.join(", "));
    }
    println!("Budgets still apply: alerts go out as fast as they allow.");
    Ok(())
}

/// `dead ...`.
pub async fn dead(config_path: &std::path::Path, command: DeadCommand) -> Result<(), CliError> {
    use crate::sources::admin::{DeadList, DeadSummary, PurgeReport, RetryReport};
    use hyper::Method;
    let config = load_client(config_path)?;
    match command {
        DeadCommand::List {
            integration,
            limit,
            json,
        } => {
            let mut q = integration_query(&integration)?;
            if !q.is_empty() {
                q.push('&');
            }
            let v = admin(&config, Method::GET, &format!("/v1/dead?{q}limit={limit}")).await?;
            let list: DeadList = decode(v)?;
            if json {
                print_json(&list);
                return Ok(());
            }
            println!(
                "{:>8}  {:<20} {:<20} {:>6} {:>8}  REASON",
                "ID", "INTEGRATION", "FAILED AT", "STATUS", "ATTEMPTS"
            );
            for d in &list.dead_letters {
                let DeadSummary {
                    id,
                    integration,
                    failed_at,
                    status,
                    attempts,
                    reason,
                    response,
                    ..
                } = d;
                let answer = response.split_whitespace().collect::<Vec<_>>().join(" ");
                println!(
                    "{id:>8}  {integration:<20} {:<20} {status:>6} {attempts:>8}  {reason}{}",
                    when(*failed_at),
                    if answer.is_empty() {
                        String::new()
                    } else {
                        format!(": {answer}")
                    }
                );
            }
            println!(
                "{} shown{}; {} dead letters in all. `oncall-agent dead show ID` shows one.",
                list.dead_letters.len(),
                if list.truncated { " (more match)" } else { "" },
                list.total
            );
            Ok(())
        }
        DeadCommand::Show { id, json } => {
            let v = admin(&config, Method::GET, &format!("/v1/dead/{id}")).await?;
            let d: crate::queue::DeadLetter = decode(v)?;
            if json {
                print_json(&d);
                return Ok(());
            }
            println!("id:          {}", d.id);
            println!("integration: {}", d.integration);
            println!("received at: {}", when(d.received_at));
            println!("failed at:   {}", when(d.failed_at));
            println!("attempts:    {}", d.attempts);
            println!("status:      {}", d.status);
            println!("reason:      {}", d.reason);
            println!("answer:      {}", d.response.trim());
            // Verbatim: this is what would be sent again.
            println!("payload ({} bytes):", d.payload.len());
            println!("{}", d.payload);
            Ok(())
        }
        DeadCommand::Retry {
            id,
            all: _,
            integration,
        } => {
            let path = match id {
                Some(id) => format!("/v1/dead/{id}/retry"),
                None => format!("/v1/dead/retry?{}", integration_query(&integration)?),
            };
            let r: RetryReport = decode(admin(&config, Method::POST, &path).await?)?;
            for (old, new) in &r.retried {
                println!("dead letter {old} queued again as {new}");
            }
            for s in &r.skipped {
                eprintln!("dead letter {} left as it is: {}", s.id, s.reason);
            }
            println!("{} queued again, {} left", r.retried.len(), r.skipped.len());
            if let Some(why) = r.stopped {
                return Err(CliError::new(
                    exit::TEMPFAIL,
                    format!("stopped early: {why}; run it again later"),
                ));
            }
            if !r.skipped.is_empty() {
                return Err(CliError::new(
                    exit::DATAERR,
                    "some dead letters could not be queued again (see above)",
                ));
            }
            Ok(())
        }
        DeadCommand::Purge {
            id,
            older_than,
            integration,
        } => {
            let path = match (id, older_than) {
                (Some(id), _) => format!("/v1/dead/{id}"),
                (None, Some(age)) => {
                    let mut q = integration_query(&integration)?;
                    if !q.is_empty() {
                        q.push('&');
                    }
                    format!("/v1/dead?{q}older_than={}s", age.as_secs())
                }
                (None, None) => {
                    return Err(CliError::new(exit::USAGE, "give an ID or --older-than"));
                }
            };
            let r: PurgeReport = decode(admin(&config, Method::DELETE, &path).await?)?;
            println!("{} dead letters purged", r.purged);
            Ok(())
        }
    }
}

/// `generate-assets`: the man page (`oncall-agent.1`) and completions for bash, zsh and fish,
/// written from the clap definitions above. The packaged copies live in `assets/`; a test
/// checks that they match.
pub fn generate_assets(out_dir: &std::path::Path) -> Result<(), CliError> {
    let io = |e: std::io::Error| {
        CliError::new(
            exit::SOFTWARE,
            format!("cannot write to {}: {e}", out_dir.display()),
        )
    };
    for (name, bytes) in assets() {
        let path = out_dir.join(&name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&path, bytes).map_err(io)?;
    }
    Ok(())
}

/// Each generated file: its path under the assets folder, and its content. One man page per
/// command (`oncall-agent.1`, `oncall-agent-dead-retry.1`, ...), as clap_mangen names them.
pub fn assets() -> Vec<(String, Vec<u8>)> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    fn pages(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub.clone(), out);
        }
        let man = clap_mangen::Man::new(cmd);
        let mut buf = Vec::new();
        // Rendering into a Vec cannot fail.
        let _ = man.render(&mut buf);
        out.push((format!("man/{}", man.get_filename()), buf));
    }
    let mut out = Vec::new();
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    pages(cmd, &mut out);
    for (shell, name) in [
        (Shell::Bash, "completions/oncall-agent.bash"),
        (Shell::Zsh, "completions/_oncall-agent"),
        (Shell::Fish, "completions/oncall-agent.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "oncall-agent", &mut buf);
        out.push((name.to_string(), buf));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_file_keeps_the_end_of_a_long_text_from_a_line_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        std::fs::write(&p, b"short\xff text\n").unwrap();
        assert_eq!(read_message(&p).unwrap(), "short\u{fffd} text");
        let long: String = (0..5000).map(|n| format!("line {n}\n")).collect();
        std::fs::write(&p, &long).unwrap();
        let m = read_message(&p).unwrap();
        assert!(m.len() <= MESSAGE_FILE_MAX + 32, "{}", m.len());
        assert!(m.starts_with("[earlier lines cut]\nline "), "{}", &m[..40]);
        assert!(m.ends_with("line 4999"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// The packaged man page and completions (assets/) are what the CLI generates now.
    #[test]
    fn packaged_man_page_and_completions_match_the_cli() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let fix = "run `cargo run -- generate-assets --out-dir assets`";
        let mut expected = std::collections::BTreeSet::new();
        for (name, bytes) in assets() {
            let on_disk = std::fs::read(dir.join(&name)).unwrap_or_default();
            assert!(on_disk == bytes, "assets/{name} is out of date: {fix}");
            expected.insert(name);
        }
        let mut found = std::collections::BTreeSet::new();
        for sub in ["man", "completions"] {
            for e in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
                found.insert(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
        assert_eq!(
            found, expected,
            "stale files in assets/: {fix} after removing them"
        );
    }
}
