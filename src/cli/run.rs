//! `run`: the daemon itself, with its logging (plain lines, or JSON; the level reloadable).

use super::LogFormat;
use super::exit::{CliError, Exit};
use crate::config::Config;

/// How long the runtime gives its blocking tasks once the daemon returned: the daemon has
/// already stopped in order within `shutdown_timeout`; what is left (a wait on a writer that
/// did not finish in time) must not hold the exit.
const RUNTIME_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

pub fn run(path: &std::path::Path, format: LogFormat) -> Result<(), CliError> {
    // SAFETY: nothing has started a thread yet: the runtime, the queue writer and sled all
    // start below, and parsing the command line, the config and setting up logging start none.
    let listen_fds = unsafe { crate::daemon::take_listen_fds() };
    let config = Config::load(path).map_err(|e| CliError::new(Exit::Config, e.to_string()))?;
    let set_log_level = init_logging(&config.log_level, format);
    for w in crate::config::warnings(&config) {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::new(Exit::Software, format!("cannot start: {e}")))?;
    let hooks = crate::daemon::Hooks {
        set_log_level: Some(set_log_level),
        listen_fds,
    };
    let result = rt.block_on(crate::daemon::run_with(
        config,
        std::future::pending(),
        hooks,
    ));
    // Dropping the runtime would wait for every blocking task without end.
    rt.shutdown_timeout(RUNTIME_GRACE);
    result.map_err(|e| {
        tracing::error!("{e}");
        CliError::new(Exit::Software, e.to_string())
    })
}

/// `log.level` with sled's own log lines turned off: sled returns every error it meets to the
/// agent, which reports it once, in words (a failed disk is one ERROR, not a dozen lines of
/// sled's Debug output from its flusher thread). RUST_LOG, the operator's own filter, can
/// still show them (`RUST_LOG=info,sled=debug`).
fn with_sled_quiet(level: &str) -> String {
    format!("{level},sled=off")
}

/// Plain lines (no timestamps under journald, which adds its own), or JSON. RUST_LOG wins over
/// the config's level. Returns what changes the level on reload.
fn init_logging(level: &str, format: LogFormat) -> crate::daemon::SetLogLevel {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(with_sled_quiet(level)));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let lines = fmt::layer().with_writer(std::io::stderr);
    let lines = match (format, journald) {
        (LogFormat::Json, _) => lines.json().boxed(),
        (LogFormat::Plain, true) => lines
            .without_time()
            .with_ansi(false)
            .with_target(false)
            .boxed(),
        (LogFormat::Plain, false) => lines
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .init();
    Box::new(move |level: &str| {
        if pinned {
            return Err("RUST_LOG is set and wins over log.level".to_string());
        }
        let f = EnvFilter::try_new(with_sled_quiet(level)).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}
