//! `fleet`: the hosts sharing this agent's budgets through Redis, asked of Redis itself.

use super::client::load;
use super::exit::{CliError, Exit};
use crate::fleet::{Fleet, FleetError};

/// `fleet`: the hosts seen in the organization budget's last window, with the requests each
/// sent in it. Needs `[fleet]` and the fleet's Redis (not the local daemon).
pub async fn fleet(config_path: &std::path::Path, json: bool) -> Result<(), CliError> {
    let config = load(config_path)?;
    let Some(f) = &config.fleet else {
        return Err(CliError::new(
            Exit::Config,
            format!(
                "{}: no [fleet] section: this agent shares its budgets with no other host",
                config_path.display()
            ),
        ));
    };
    let window = config.limits.org.per;
    let hosts = Fleet::hosts(f, window).await.map_err(|e| {
        let code = match e {
            FleetError::Shape(_) | FleetError::TooLarge(_) => Exit::Protocol,
            _ => Exit::Unavailable,
        };
        CliError::new(code, format!("the fleet's Redis at {}: {e}", f.redacted))
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&hosts).unwrap_or_else(|_| "[]".into())
        );
        return Ok(());
    }
    println!(
        "fleet {} (org {}): {} hosts seen in the last {} (the org budget's window)",
        f.redacted,
        f.org,
        hosts.len(),
        humantime::format_duration(window)
    );
    println!("{:<32} {:>10} {:>9}", "HOST", "SEEN", "REQUESTS");
    for h in &hosts {
        let mark = if h.host == f.host { " (this host)" } else { "" };
        println!(
            "{:<32} {:>9.1}s {:>9}{mark}",
            h.host,
            h.seen_ms_ago as f64 / 1000.0,
            h.requests
        );
    }
    Ok(())
}
