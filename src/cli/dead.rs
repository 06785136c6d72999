//! `dead list|show|retry|purge` and `retry-now`: the operator's hands on stuck alerts.

use hyper::Method;

use super::DeadCommand;
use super::client::{admin, decode, integration_query, load_client, print_json, when};
use super::exit::{CliError, Exit};
use crate::config::Config;
use crate::queue::DeadLetter;
use crate::server::admin::{DeadList, DeadSummary, PurgeReport, RetryReport};

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

/// `dead list|show|retry|purge`, through the admin API on the Unix socket.
pub async fn dead(config_path: &std::path::Path, command: DeadCommand) -> Result<(), CliError> {
    let config = load_client(config_path)?;
    match command {
        DeadCommand::List {
            integration,
            limit,
            json,
        } => list(&config, &integration, limit, json).await,
        DeadCommand::Show { id, json } => show(&config, id, json).await,
        DeadCommand::Retry {
            id,
            all: _,
            integration,
        } => retry(&config, id, &integration).await,
        DeadCommand::Purge {
            id,
            older_than,
            integration,
        } => purge(&config, id, older_than, &integration).await,
    }
}

/// `integration=N&` (or nothing), to go before the query's other parameters.
fn integration_prefix(integration: &Option<String>) -> Result<String, CliError> {
    let mut q = integration_query(integration)?;
    if !q.is_empty() {
        q.push('&');
    }
    Ok(q)
}

async fn list(
    config: &Config,
    integration: &Option<String>,
    limit: usize,
    json: bool,
) -> Result<(), CliError> {
    let q = integration_prefix(integration)?;
    let v = admin(config, Method::GET, &format!("/v1/dead?{q}limit={limit}")).await?;
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

async fn show(config: &Config, id: u64, json: bool) -> Result<(), CliError> {
    let v = admin(config, Method::GET, &format!("/v1/dead/{id}")).await?;
    let d: DeadLetter = decode(v)?;
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

async fn retry(
    config: &Config,
    id: Option<u64>,
    integration: &Option<String>,
) -> Result<(), CliError> {
    let path = match id {
        Some(id) => format!("/v1/dead/{id}/retry"),
        None => format!("/v1/dead/retry?{}", integration_query(integration)?),
    };
    let r: RetryReport = decode(admin(config, Method::POST, &path).await?)?;
    for (old, new) in &r.retried {
        println!("dead letter {old} queued again as {new}");
    }
    for s in &r.skipped {
        eprintln!("dead letter {} left as it is: {}", s.id, s.reason);
    }
    println!("{} queued again, {} left", r.retried.len(), r.skipped.len());
    if let Some(why) = r.stopped {
        return Err(CliError::new(
            Exit::TempFail,
            format!("stopped early: {why}; run it again later"),
        ));
    }
    if !r.skipped.is_empty() {
        return Err(CliError::new(
            Exit::DataErr,
            "some dead letters could not be queued again (see above)",
        ));
    }
    Ok(())
}

async fn purge(
    config: &Config,
    id: Option<u64>,
    older_than: Option<std::time::Duration>,
    integration: &Option<String>,
) -> Result<(), CliError> {
    let path = match (id, older_than) {
        (Some(id), _) => format!("/v1/dead/{id}"),
        (None, Some(age)) => format!(
            "/v1/dead?{}older_than={}s",
            integration_prefix(integration)?,
            age.as_secs()
        ),
        (None, None) => return Err(CliError::new(Exit::Usage, "give an ID or --older-than")),
    };
    let r: PurgeReport = decode(admin(config, Method::DELETE, &path).await?)?;
    println!("{} dead letters purged", r.purged);
    Ok(())
}
