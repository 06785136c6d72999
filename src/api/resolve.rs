//! Integrations configured by `id` or `api_name` instead of `url`: looked up through the API at
//! start, on reload, and again while any is still unresolved; each answer is kept in sled (the
//! `api_cache` tree) so the agent starts and forwards while the API is down.
//!
//! Resolution turns a [`Config`] with `unresolved` entries into one whose `integrations` hold
//! their inbound URLs: everything downstream sees only resolved integrations. One that can be
//! found neither through the API nor in the cache stays unresolved: ingest still accepts and
//! keeps its alerts, the sender leaves them queued, and the [`Resolver`] tries again with a
//! backoff. A definite "no such integration" from the API is never papered over with a cached
//! URL (that integration is gone; its cached URL would only earn 403s).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::client::{ApiClient, ApiError, Budget, HttpApi, Policy};
use super::model::{ApiIntegration, printable};
use crate::clock::{Clock, Millis};
use crate::config::{ApiRef, Config};
use crate::queue::Store;
use crate::redact::Secret;

/// First wait before retrying unresolved integrations; doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
pub const RETRY_MAX: Duration = Duration::from_secs(600);

/// The inbound URLs resolved before, by API and reference (not by local name: renaming an
/// integration keeps its answer, changing its `id` does not reuse a wrong one).
pub struct Cache {
    tree: sled::Tree,
}

#[derive(Serialize, Deserialize)]
struct CachedLink {
    url: String,
    resolved_at: Millis,
}

impl Cache {
    pub fn new(tree: sled::Tree) -> Cache {
        Cache { tree }
    }

    fn key(api: &reqwest::Url, by: &ApiRef) -> Vec<u8> {
        let (kind, value) = match by {
            ApiRef::Id(id) => ("id", id.as_str()),
            ApiRef::Name(n) => ("name", n.as_str()),
        };
        format!("{api}\0{kind}\0{value}").into_bytes()
    }

    /// The URL and when it was resolved. A record that does not read is no answer.
    pub fn get(&self, api: &reqwest::Url, by: &ApiRef) -> Option<(Secret<reqwest::Url>, Millis)> {
        let v = self.tree.get(Self::key(api, by)).ok()??;
        let c: CachedLink = serde_json::from_slice(&v).ok()?;
        let url = reqwest::Url::parse(&c.url).ok()?;
        Some((Secret::new(url), c.resolved_at))
    }

    pub fn put(
        &self,
        api: &reqwest::Url,
        by: &ApiRef,
        url: &Secret<reqwest::Url>,
        at: Millis,
    ) -> Result<(), sled::Error> {
        let v = serde_json::to_vec(&CachedLink {
            url: url.expose().to_string(),
            resolved_at: at,
        })
        .unwrap_or_default();
        if self.tree.get(Self::key(api, by))?.as_deref() == Some(&v[..]) {
            return Ok(());
        }
        self.tree.insert(Self::key(api, by), v)?;
        // A lost write costs only a lookup at the next start: a flush, no fsync.
        self.tree.flush()?;
        Ok(())
    }

    pub fn remove(&self, api: &reqwest::Url, by: &ApiRef) -> Result<(), sled::Error> {
        self.tree.remove(Self::key(api, by))?;
        Ok(())
    }
}

/// An integration that stays unresolved, and why.
#[derive(Debug, Clone)]
pub struct Pending {
    pub name: String,
    pub by: ApiRef,
    pub reason: String,
    /// The API gave a definite answer (not there, ambiguous, no inbound URL): the config is
    /// wrong, not the API down.
    pub definite: bool,
}

/// How one integration was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Api,
    /// From the cache, resolved at this time, because the API could not be used.
    Cache(Millis),
}

/// The config with every integration that could be resolved moved into `integrations`.
#[derive(Debug)]
pub struct Resolved {
    pub config: Config,
    pub sources: BTreeMap<String, Source>,
    pub pending: Vec<Pending>,
    /// Why the API could not be used, if it could not.
    pub api_error: Option<String>,
}

/// What the API says about one reference.
enum Lookup {
    Found(Secret<reqwest::Url>),
    /// A definite answer that there is no usable inbound URL.
    Definite(String),
    /// The API could not answer.
    Unusable(String),
}

/// Resolves every unresolved integration of `config`: through `api`, else `cache`.
/// After the first failure that says the API cannot be used, the rest come from the cache
/// without further calls.
pub async fn resolve(
    config: Config,
    api: Result<&ApiClient, &ApiError>,
    cache: Option<&Cache>,
    clock: Clock,
) -> Resolved {
    let mut urls = BTreeMap::new();
    let mut sources = BTreeMap::new();
    let mut pending = Vec::new();
    let mut api_error = match api {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    };
    let api_url = config.api.as_ref().map(|a| a.base());
    let mut listing: Option<Vec<ApiIntegration>> = None;
    for u in &config.unresolved {
        let lookup = match (api, &api_error) {
            (Ok(client), None) => match lookup(client, &u.by, &mut listing).await {
                Lookup::Unusable(e) => {
                    api_error = Some(e.clone());
                    Lookup::Unusable(e)
                }
                other => other,
            },
            (_, Some(e)) => Lookup::Unusable(e.clone()),
            // `Err` always sets `api_error` above.
            (Err(e), None) => Lookup::Unusable(e.to_string()),
        };
        match (lookup, cache, &api_url) {
            (Lookup::Found(url), cache, api_url) => {
                if let (Some(c), Some(a)) = (cache, api_url)
                    && let Err(e) = c.put(a, &u.by, &url, clock.now())
                {
                    tracing::warn!(integration = %u.name, "The resolved URL could not be kept for the next start: {e}");
                }
                urls.insert(u.name.clone(), url);
                sources.insert(u.name.clone(), Source::Api);
            }
            (Lookup::Definite(reason), cache, api_url) => {
                if let (Some(c), Some(a)) = (cache, api_url) {
                    let _ = c.remove(a, &u.by);
                }
                pending.push(Pending {
                    name: u.name.clone(),
                    by: u.by.clone(),
                    reason,
                    definite: true,
                });
            }
            (Lookup::Unusable(reason), cache, api_url) => {
                let cached = cache
                    .zip(api_url.as_ref())
                    .and_then(|(c, a)| c.get(a, &u.by));
                match cached {
                    Some((url, at)) => {
                        urls.insert(u.name.clone(), url);
                        sources.insert(u.name.clone(), Source::Cache(at));
                    }
                    None => pending.push(Pending {
                        name: u.name.clone(),
                        by: u.by.clone(),
                        reason,
                        definite: false,
                    }),
                }
            }
        }
    }
    Resolved {
        config: config.with_resolved(&urls),
        sources,
        pending,
        api_error,
    }
}

async fn lookup(
    client: &ApiClient,
    by: &ApiRef,
    listing: &mut Option<Vec<ApiIntegration>>,
) -> Lookup {
    let found = match by {
        ApiRef::Id(id) => match client.integration(id).await {
            Ok(i) => i,
            Err(e) if e.is_definite() => {
                return Lookup::Definite(format!("OnCall has no integration with id {id}"));
            }
            Err(e) => return Lookup::Unusable(e.to_string()),
        },
        ApiRef::Name(name) => {
            if listing.is_none() {
                match client.list_integrations().await {
                    Ok(all) => *listing = Some(all),
                    Err(e) => return Lookup::Unusable(e.to_string()),
                }
            }
            let all = listing.as_deref().unwrap_or_default();
            let mut matches = all.iter().filter(|i| &i.name == name);
            match (matches.next(), matches.next()) {
                (Some(i), None) => i.clone(),
                (None, _) => {
                    return Lookup::Definite(format!(
                        "OnCall has no integration named {:?}",
                        printable(name, 100)
                    ));
                }
                (Some(_), Some(_)) => {
                    return Lookup::Definite(format!(
                        "several OnCall integrations are named {:?}: use id = instead",
                        printable(name, 100)
                    ));
                }
            }
        }
    };
    match found.link {
        Some(url) => Lookup::Found(url),
        None => Lookup::Definite(format!(
            "OnCall's integration {} (type {}) has no inbound URL",
            found.id,
            printable(&found.kind, 40)
        )),
    }
}

/// The daemon's side of resolution: the API client on the daemon's budget and cache, the
/// logging, and the retry schedule for integrations still unresolved.
pub struct Resolver {
    store: Arc<Store>,
    clock: Clock,
    client: Option<Result<ApiClient, ApiError>>,
    /// When to try the unresolved ones again, and the wait after that.
    retry: Option<(tokio::time::Instant, Duration)>,
}

impl Resolver {
    pub fn new(config: &Config, store: Arc<Store>, clock: Clock) -> Resolver {
        let mut r = Resolver {
            store,
            clock,
            client: None,
            retry: None,
        };
        r.reconfigure(config);
        r
    }

    /// Takes a (re)loaded config's `[api]`.
    pub fn reconfigure(&mut self, config: &Config) {
        // The old client's budget goes first: two budgets must not share the tree.
        self.client = None;
        let Some(api) = &config.api else {
            return;
        };
        let build = || -> Result<ApiClient, ApiError> {
            let transport =
                HttpApi::new(config.delivery.timeout).map_err(|e| ApiError::Unavailable {
                    api: api.base().to_string(),
                    reason: e.to_string(),
                })?;
            let budget = Budget::persisted(
                self.store.api_limiter_tree().clone(),
                api.rate,
                self.clock.now(),
            )?;
            ApiClient::new(
                api,
                Arc::new(transport),
                budget,
                self.clock,
                Policy::daemon(config.delivery.timeout),
            )
        };
        self.client = Some(build());
    }

    /// Resolves what `config` leaves unresolved, logs how, and schedules a retry for any that
    /// stay unresolved.
    pub async fn resolve(&mut self, config: Config) -> Config {
        if config.unresolved.is_empty() {
            self.retry = None;
            return config;
        }
        let cache = Cache::new(self.store.api_cache_tree().clone());
        let missing = ApiError::Unavailable {
            api: "(none)".into(),
            reason: "no [api] section".into(),
        };
        let api = match &self.client {
            Some(Ok(c)) => Ok(c),
            Some(Err(e)) => Err(e),
            None => Err(&missing),
        };
        let r = resolve(config, api, Some(&cache), self.clock).await;
        let now = self.clock.now();
        for (name, source) in &r.sources {
            let url = r
                .config
                .integration(name)
                .map(|i| i.redacted_url())
                .unwrap_or_default();
            match source {
                Source::Api => {
                    tracing::info!(integration = %name, url = %url, "Resolved the integration through the OnCall API.");
                }
                Source::Cache(at) => {
                    tracing::warn!(
                        integration = %name,
                        url = %url,
                        "The OnCall API cannot be used ({}); using the inbound URL resolved {} ago.",
                        r.api_error.as_deref().unwrap_or("unknown"),
                        humantime::format_duration(Duration::from_secs(now.saturating_sub(*at) / 1000))
                    );
                }
            }
        }
        if r.pending.is_empty() {
            self.retry = None;
        } else {
            let wait = self.retry.map_or(RETRY_FIRST, |(_, w)| w);
            for p in &r.pending {
                tracing::error!(
                    integration = %p.name,
                    "The integration ({}) cannot be resolved: {}. Its alerts are accepted and kept, and go out once it is; trying again in {}.",
                    p.by,
                    p.reason,
                    humantime::format_duration(wait)
                );
            }
            self.retry = Some((
                tokio::time::Instant::now() + wait,
                (wait * 2).min(RETRY_MAX),
            ));
        }
        r.config
    }

    /// Completes when unresolved integrations are due for another try (never if none are).
    pub async fn due(&self) {
        match self.retry {
            Some((at, _)) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .temporary(true)
            .open()
            .unwrap();
        (dir, Cache::new(db.open_tree("api_cache").unwrap()))
    }

    const CONFIG: &str = r#"
state_dir = "/tmp/x"
[listen]
tcp = "127.0.0.1:9753"
[api]
url = "https://oncall.example/oncall"
token = "T"
[[integration]]
name = "first"
id = "AAA1"
[[integration]]
name = "by-url"
url = "https://oncall.example/oncall/integrations/v1/webhook/U/"
[[integration]]
name = "third"
api_name = "Third one"
"#;

    fn config() -> Config {
        Config::parse(Path::new("/etc/t.toml"), CONFIG).unwrap()
    }

    #[tokio::test]
    async fn api_unusable_falls_back_to_the_cache_and_keeps_the_rest_pending() {
        let (_d, c) = cache();
        let cfg = config();
        let api = cfg.api.as_ref().unwrap().base();
        let url = Secret::new(
            reqwest::Url::parse(
                "https://oncall.example/oncall/integrations/v1/formatted_webhook/TOK/",
            )
            .unwrap(),
        );
        c.put(&api, &ApiRef::Id("AAA1".into()), &url, 5).unwrap();
        let down = ApiError::Unavailable {
            api: api.to_string(),
            reason: "it answered 503".into(),
        };
        let r = resolve(cfg, Err(&down), Some(&c), Clock::starting_at(10)).await;
        assert_eq!(r.sources["first"], Source::Cache(5));
        assert_eq!(r.pending.len(), 1);
        assert_eq!(r.pending[0].name, "third");
        assert!(!r.pending[0].definite);
        // The file's order is kept: the resolved one comes before the url one.
        let names: Vec<&str> = r
            .config
            .integrations
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, ["first", "by-url"]);
        assert_eq!(
            r.config.integrations[0].kind.as_deref(),
            Some("formatted_webhook")
        );
        assert_eq!(r.config.integration_names(), ["first", "by-url", "third"]);
    }

    #[test]
    fn the_cache_is_keyed_by_api_and_reference() {
        let (_d, c) = cache();
        let a = reqwest::Url::parse("https://a/api/v1/").unwrap();
        let b = reqwest::Url::parse("https://b/api/v1/").unwrap();
        let url = Secret::new(reqwest::Url::parse("https://a/integrations/v1/webhook/T/").unwrap());
        c.put(&a, &ApiRef::Id("X1".into()), &url, 1).unwrap();
        assert!(c.get(&a, &ApiRef::Id("X1".into())).is_some());
        assert!(c.get(&b, &ApiRef::Id("X1".into())).is_none());
        assert!(c.get(&a, &ApiRef::Name("X1".into())).is_none());
        c.remove(&a, &ApiRef::Id("X1".into())).unwrap();
        assert!(c.get(&a, &ApiRef::Id("X1".into())).is_none());
    }
}
