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
        #[arg(long, value_enum, default_value = "plain")]
        log_format: LogFormat,
    },
    /// Queue one alert with the running daemon; exits 0 once it is durable. If the daemon does
    /// not answer (or is full), the alert goes to the spool folder and is picked up later.
    Send(SendArgs),
    /// Show queues, budgets and failures of the running daemon.
    Status {
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config file: exit 0, or 78 with the file, the field and the problem.
    CheckConfig,
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
    println!(
        "{}: ok ({} integrations, limits {} per integration and {} per org)",
        path.display(),
        c.integrations.len(),
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
    if config.integration(&args.integration).is_none() {
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
