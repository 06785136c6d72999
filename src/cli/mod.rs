//! The command line: clap's definitions here, one file per command, [`exit`] for the exit
//! codes (sysexits.h, so that Nagios, cron and systemd can tell a bad config (78) from a
//! stopped daemon (69)) and [`client`] for what the commands share.

mod assets;
mod check;
mod client;
mod dead;
pub(crate) mod exit;
mod fleet;
mod integrations;
mod run;
mod send;
mod status;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_PATH;
pub use assets::{assets, generate_assets};
pub use check::{check_config, check_config_online};
pub use dead::{dead, retry_now};
pub use exit::{CliError, Exit};
pub use fleet::fleet;
pub use integrations::integrations;
pub use send::{MESSAGE_FILE_MAX, alert_body, send};
pub use status::{status, status_watch};

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
        #[arg(long, short = 'n', default_value = "1s", value_parser = status::watch_interval, requires = "watch")]
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
    /// List the hosts sharing this agent's budgets (needs [fleet]): each host seen in the
    /// organization budget's last window and the requests it sent in it, asked of the fleet's
    /// Redis.
    Fleet {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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

/// Runs one command; what it printed is on stdout/stderr, its outcome is the exit code.
pub fn run(cli: Cli) -> std::process::ExitCode {
    let config = cli.config.as_path();
    let result = match cli.command {
        Command::Run { log_format } => run::run(config, log_format),
        Command::CheckConfig { online: false } => check_config(config),
        Command::CheckConfig { online: true } => block_on(check_config_online(config)),
        Command::Integrations { show_urls, json } => {
            block_on(integrations(config, show_urls, json))
        }
        Command::Send(args) => block_on(send(config, args)),
        Command::Status {
            watch: true,
            interval,
            ..
        } => block_on(status_watch(config, interval)),
        Command::Status { json, .. } => block_on(status(config, json)),
        Command::Dead { command } => block_on(dead(config, command)),
        Command::RetryNow { integration } => block_on(retry_now(config, integration)),
        Command::Fleet { json } => block_on(fleet(config, json)),
        Command::GenerateAssets { out_dir } => generate_assets(&out_dir),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oncall-agent: {}", e.message);
            e.code.into()
        }
    }
}

/// Client commands make one request: a single-threaded runtime starts fastest.
fn block_on(f: impl std::future::Future<Output = Result<(), CliError>>) -> Result<(), CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(Exit::Software, format!("cannot start: {e}")))?
        .block_on(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
