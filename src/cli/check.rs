//! `check-config [--online]`: the config file checked offline, then against OnCall.

use std::collections::BTreeMap;

use super::client::{api_client, load};
use super::exit::{CliError, Exit};
use crate::api::check::{InboundCheck, check_inbound, inbound_client};
use crate::api::resolve::{self, Source};
use crate::api::{ApiClient, ApiError};

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

/// `check-config --online`: the offline checks, then each credential with OnCall; a line per
/// integration.
pub async fn check_config_online(config_path: &std::path::Path) -> Result<(), CliError> {
    let config = load(config_path)?;
    for w in crate::config::warnings(&config) {
        eprintln!("warning: {w}");
    }
    let mut tally = Tally::default();
    let client = config.api.as_ref().map(|_| api_client(&config));
    check_api(client.as_ref(), &mut tally).await;
    let no_api = ApiError::Unavailable {
        api: "(none)".into(),
        reason: "the API client could not be built".into(),
    };
    let api = match &client {
        Some(Ok(c)) => Ok(c),
        _ => Err(&no_api),
    };
    let refs: BTreeMap<String, String> = config
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
    for p in &r.pending {
        tally.count(p.definite);
        println!(
            "integration {} ({}): NOT RESOLVED: {}",
            p.name, p.by, p.reason
        );
    }
    check_integrations(&r, &refs, listing.as_deref(), &mut tally).await?;
    tally.verdict(config_path, r.config.integrations.len())
}

/// 78 when OnCall refused something in the config, else 69 when it could not be asked.
#[derive(Default)]
struct Tally {
    refused: usize,
    unreachable: usize,
}

impl Tally {
    fn count(&mut self, refused: bool) {
        if refused {
            self.refused += 1;
        } else {
            self.unreachable += 1;
        }
    }

    fn verdict(&self, path: &std::path::Path, integrations: usize) -> Result<(), CliError> {
        let path = path.display();
        if self.refused > 0 {
            let n = self.refused;
            let why = format!("{path}: OnCall refused {n} of the credentials");
            return Err(CliError::new(Exit::Config, why));
        }
        if self.unreachable > 0 {
            let n = self.unreachable;
            let why = format!("{path}: {n} checks could not reach OnCall");
            return Err(CliError::new(Exit::Unavailable, why));
        }
        println!("{path}: ok ({integrations} integrations, every credential accepted by OnCall)");
        Ok(())
    }
}

/// The API token, when `[api]` is set.
async fn check_api(client: Option<&Result<ApiClient, CliError>>, tally: &mut Tally) {
    match client {
        None => println!("api: not configured"),
        Some(Err(e)) => {
            tally.count(true);
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
                tally.count(e.is_refused());
                println!("api {}: FAILED: {e}", c.base());
            }
        },
    }
}

/// Each inbound URL, with one GET that costs no budget, and its kind against the API's list.
async fn check_integrations(
    r: &resolve::Resolved,
    refs: &BTreeMap<String, String>,
    listing: Option<&[crate::api::ApiIntegration]>,
    tally: &mut Tally,
) -> Result<(), CliError> {
    let http = inbound_client(r.config.delivery.timeout)
        .map_err(|e| CliError::new(Exit::Software, format!("cannot start an HTTP client: {e}")))?;
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
                let verdict = kind_check(i, listing);
                if verdict.starts_with("FAILED") {
                    tally.count(true);
                }
                format!("; {verdict}")
            }
            InboundCheck::Unreachable(_) => {
                tally.count(false);
                String::new()
            }
            _ => {
                tally.count(true);
                String::new()
            }
        };
        let (url, what) = (i.redacted_url(), check.describe());
        println!("integration {} ({url}{how}): {what}{kind}", i.name);
    }
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
