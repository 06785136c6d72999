//! `integrations`: what the OnCall API knows, beside what the config says.

use std::time::Duration;

use super::client::{api_client, api_failure, load};
use super::exit::CliError;
use crate::api::ApiIntegration;
use crate::api::model::printable;
use crate::config::{ApiRef, Config};

/// `integrations`: what the API token sees, and which local integration uses each.
pub async fn integrations(
    config_path: &std::path::Path,
    show_urls: bool,
    json: bool,
) -> Result<(), CliError> {
    let config = load(config_path)?;
    let client = api_client(&config)?;
    let mut all = client
        .list_integrations()
        .await
        .map_err(|e| api_failure(&e))?;
    all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let rows: Vec<Row> = all.iter().map(|i| row(&config, i, show_urls)).collect();
    if json {
        print_json(&rows, &all);
    } else {
        print_table(rows.into_iter().map(|(r, _)| r).collect());
    }
    Ok(())
}

/// The table's cells (id, name, type, heartbeat, local names, URL) and the heartbeat period
/// this agent uses.
type Row = ([String; 6], Option<Duration>);

/// One OnCall integration with its local users (by id or name, or by the same inbound URL)
/// and how often this agent hits its heartbeat. OnCall gives a heartbeat link to every
/// integration that can take heartbeats, so the link alone says nothing about whether anyone
/// sends them: the config does.
fn row(config: &Config, i: &ApiIntegration, show_urls: bool) -> Row {
    let by_ref = config.unresolved.iter().filter(|u| match &u.by {
        ApiRef::Id(id) => *id == i.id,
        ApiRef::Name(n) => *n == i.name,
    });
    let by_url = config.integrations.iter().filter(|c| {
        i.link
            .as_ref()
            .is_some_and(|l| l.expose() == c.url.expose())
    });
    let local: Vec<(&str, Option<Duration>)> = by_ref
        .map(|u| (u.name.as_str(), u.heartbeat))
        .chain(by_url.map(|c| (c.name.as_str(), c.heartbeat)))
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
    let names = if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    };
    let row = [
        printable(&i.id, 64),
        printable(&i.name, 80),
        printable(&i.kind, 40),
        heartbeat,
        names,
        url,
    ];
    (row, every)
}

fn print_json(rows: &[Row], all: &[ApiIntegration]) {
    let v: Vec<serde_json::Value> = rows
        .iter()
        .zip(all)
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
}

fn print_table(rows: Vec<[String; 6]>) {
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
}
