//! `status [--json] [--watch]`: the running daemon's report.

use std::time::Duration;

use super::client::{fetch_status, load_client};
use super::exit::{CliError, Exit};

/// `status --interval`: a duration of at least 100 ms (as `watch -n` allows), so that a typo
/// like "1ms" does not turn the command into a busy loop against the daemon.
pub(super) fn watch_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("{text} is shorter than 100ms"));
    }
    Ok(d)
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
                Err(e) if e.code == Exit::Unavailable => {
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
