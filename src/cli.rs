//! The command line (clap derive) and what each command does. Exit codes follow sysexits.h so
//! that Nagios, cron and systemd can tell a bad config (78) from a stopped daemon (69).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, DEFAULT_PATH};
use crate::local;
use crate::status::StatusReport;

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

#[derive(Debug, Parser)]
#[command(
    name = "oncall-agent",
    version,
    about = "Queues alerts durably and delivers them to Grafana OnCall within its rate limits"
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

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum AlertState {
    Alerting,
    Ok,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, value_enum, default_value = "plain")]
        log_format: LogFormat,
    },
    /// Queue one alert with the running daemon; exits 0 once it is durable.
    Send(SendArgs),
    /// Show queues, budgets and failures of the running daemon.
    Status {
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config file: exit 0, or 78 with the file, the field and the problem.
    CheckConfig {
        /// Also check the credentials with OnCall: each integration's token (a GET on its
        /// inbound URL, which costs no rate-limit budget) and the API token (one API call).
        /// Exit 78 if one is refused, 69 if OnCall cannot be reached.
        #[arg(long)]
        online: bool,
    },
    /// List the OnCall integrations the API token sees (needs [api] in the config).
    Integrations {
        /// Print inbound URLs in full. They hold the integrations' tokens; by default they are
        /// redacted.
        #[arg(long)]
        show_urls: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
    /// Grouping id (`alert_uid`): alerts with the same uid form one alert group, and
    /// `--state ok` with it resolves the group.
    #[arg(long, short)]
    pub uid: Option<String>,
    /// `alerting` or `ok`.
    #[arg(long, value_enum)]
    pub state: Option<AlertState>,
    /// Link to the source (`link_to_upstream_details`).
    #[arg(long)]
    pub link: Option<String>,
    /// Image URL (`image_url`).
    #[arg(long)]
    pub image_url: Option<String>,
    /// Send this JSON object verbatim instead (a file, or - for standard input).
    #[arg(long, conflicts_with_all = ["title", "message", "uid", "state", "link", "image_url"])]
    pub json: Option<PathBuf>,
    /// Give up waiting for the daemon after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

fn load(path: &std::path::Path) -> Result<Config, CliError> {
    Config::load(path).map_err(|e| CliError::new(exit::CONFIG, e.to_string()))
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
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), v.clone().into());
        }
    };
    put("message", &args.message);
    put("alert_uid", &args.uid);
    put("link_to_upstream_details", &args.link);
    put("image_url", &args.image_url);
    let state = match args.state {
        Some(AlertState::Ok) => "ok",
        _ => "alerting",
    };
    m.insert("state".into(), state.into());
    Ok(serde_json::to_vec(&m).expect("a JSON map serializes"))
}

/// `send`.
pub async fn send(config_path: &std::path::Path, args: SendArgs) -> Result<(), CliError> {
    let config = load(config_path)?;
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
    let answer = local::request(&config, hyper::Method::POST, &path, body, args.timeout)
        .await
        .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("{e}; the alert was NOT queued")))?;
    let text = String::from_utf8_lossy(&answer.body);
    let reason = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_string());
    match answer.status {
        202 => Ok(()),
        503 => Err(CliError::new(
            exit::TEMPFAIL,
            format!("the agent cannot take the alert now ({reason}); retry later"),
        )),
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

/// `status`.
pub async fn status(config_path: &std::path::Path, json: bool) -> Result<(), CliError> {
    let config = load(config_path)?;
    let answer = local::request(
        &config,
        hyper::Method::GET,
        "/v1/status",
        Vec::new(),
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("{e} (is the daemon running?)")))?;
    if answer.status != 200 {
        return Err(CliError::new(
            exit::SOFTWARE,
            format!("the agent answered {}", answer.status),
        ));
    }
    let report: StatusReport = serde_json::from_slice(&answer.body)
        .map_err(|e| CliError::new(exit::SOFTWARE, format!("unexpected status answer: {e}")))?;
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
    let rows: Vec<[String; 6]> = all
        .iter()
        .map(|i| {
            let local: Vec<&str> = config
                .unresolved
                .iter()
                .filter(|u| match &u.by {
                    ApiRef::Id(id) => *id == i.id,
                    ApiRef::Name(n) => *n == i.name,
                })
                .map(|u| u.name.as_str())
                .chain(
                    config
                        .integrations
                        .iter()
                        .filter(|c| {
                            i.link
                                .as_ref()
                                .is_some_and(|l| l.expose() == c.url.expose())
                        })
                        .map(|c| c.name.as_str()),
                )
                .collect();
            let url = match &i.link {
                None => "-".to_string(),
                Some(l) if show_urls => l.expose().to_string(),
                Some(l) => crate::redact::redact_url(l.expose()),
            };
            [
                printable(&i.id, 64),
                printable(&i.name, 80),
                printable(&i.kind, 40),
                if i.heartbeat { "yes" } else { "no" }.to_string(),
                if local.is_empty() {
                    "-".to_string()
                } else {
                    local.join(",")
                },
                url,
            ]
        })
        .collect();
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|[id, name, kind, hb, local, url]| {
                serde_json::json!({
                    "id": id, "name": name, "type": kind, "heartbeat": hb == "yes",
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
        match check {
            InboundCheck::Valid => {}
            InboundCheck::Unreachable(_) => unreachable += 1,
            _ => refused += 1,
        }
        println!(
            "integration {} ({}{how}): {}",
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
