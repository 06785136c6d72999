//! One client for the OnCall HTTP API: the auth headers, a client-side budget, what to do with
//! each answer (an [`Answer`], decided in one place), and bounded pagination.
//!
//! - Every request spends a slot of the API budget first (a [`Limiter`], the same "at most N in
//!   any window, counted until the answer" guarantee as alerts get). The daemon keeps the slots
//!   in sled ([`Budget::persisted`]) so restarts cannot spend a second budget; a CLI command
//!   keeps them in memory ([`Budget::memory`]) because the daemon holds the database lock.
//! - A 429 is waited out (`Retry-After`, else `RateLimit-Reset`, else a default) and retried;
//!   5xx, 408 and network errors back off and retry; every wait is bounded by
//!   [`Policy::max_wait`] and every request by [`Policy::attempts`].
//! - Pagination follows `next` until null, for at most [`MAX_PAGES`] pages. Only the query of
//!   `next` is used, on the configured endpoint: the token never goes to a host the answer names.
//! - The token and inbound URLs never reach a message: errors name the credential by where it
//!   came from, and the API's own error text is scrubbed of the token.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::model::{self, ApiIntegration, MAX_PAGE_BYTES, ParseError, printable};
use crate::clock::{Clock, Millis, ms};
use crate::config::{ApiConfig, Rate, TokenError};
use crate::ratelimit::{Limiter, LimiterSet, Scope, Slot};
use crate::redact::Secret;
use crate::sender::outcome::parse_retry_after;

/// Most pages one listing follows (5,000 integrations at OnCall's default 50 per page).
pub const MAX_PAGES: usize = 100;
/// Page size asked for (OnCall's maximum; a server may answer with fewer).
pub const PER_PAGE: u32 = 100;

/// One GET to the API.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub url: reqwest::Url,
    /// Sent as `Authorization: <token>` (no "Bearer": OnCall's API keys are sent bare).
    pub token: Secret<String>,
    /// Sent as `X-Grafana-URL` when set (Grafana service account tokens).
    pub grafana_url: Option<String>,
}

/// What came back, body already bounded by [`MAX_PAGE_BYTES`].
#[derive(Debug, Clone)]
pub struct ApiAnswer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub ratelimit_reset: Option<String>,
    /// For a 3xx: where it points, redacted ([`crate::oncall::redirect_target`]).
    pub redirect_to: Option<String>,
    pub body: Vec<u8>,
}

/// A request that got no (usable) answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("the request timed out")]
    Timeout,
    #[error("could not connect ({0})")]
    Connect(String),
    #[error("the request failed ({0})")]
    Other(String),
    #[error("the answer is larger than {MAX_PAGE_BYTES} bytes")]
    TooLarge,
}

pub type ApiFuture = Pin<Box<dyn Future<Output = Result<ApiAnswer, TransportError>> + Send>>;

/// Something that performs one GET. The agent uses [`HttpApi`]; tests plug in scripted
/// answers and run on tokio's paused clock.
pub trait ApiTransport: Send + Sync + 'static {
    fn get(&self, req: ApiRequest) -> ApiFuture;
}

/// reqwest with rustls; HTTP(S)_PROXY / NO_PROXY from the environment.
pub struct HttpApi {
    client: reqwest::Client,
}

impl HttpApi {
    pub fn new(timeout: Duration) -> Result<HttpApi, TransportError> {
        // The token goes to the configured URL only; a redirect is an answer to report.
        let client = crate::oncall::http_client(timeout)
            .map_err(|e| TransportError::Other(describe_reqwest(e)))?;
        Ok(HttpApi { client })
    }
}

impl ApiTransport for HttpApi {
    fn get(&self, req: ApiRequest) -> ApiFuture {
        let mut auth = match reqwest::header::HeaderValue::from_str(req.token.expose()) {
            Ok(v) => v,
            // `ApiToken::load` refuses control characters, so this is a token of other bytes.
            Err(_) => {
                return Box::pin(async {
                    Err(TransportError::Other(
                        "the API token is not a valid header value".into(),
                    ))
                });
            }
        };
        auth.set_sensitive(true);
        let mut rb = self
            .client
            .get(req.url)
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(g) = &req.grafana_url {
            rb = rb.header("X-Grafana-URL", g.as_str());
        }
        Box::pin(async move {
            let mut resp = rb.send().await.map_err(transport_error)?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after = header("retry-after");
            let ratelimit_reset = header("ratelimit-reset");
            let status = resp.status().as_u16();
            let redirect_to = resp.status().is_redirection().then(|| {
                let location = resp.headers().get(reqwest::header::LOCATION);
                crate::oncall::redirect_target(resp.url(), location.map(|v| v.as_bytes()))
            });
            let body = read_bounded(&mut resp, MAX_PAGE_BYTES).await?;
            Ok(ApiAnswer {
                status,
                retry_after,
                ratelimit_reset,
                redirect_to,
                body,
            })
        })
    }
}

/// Reads at most `max` bytes of a body; more is an error (a page cut short is no page).
pub async fn read_bounded(
    resp: &mut reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, TransportError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(TransportError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > max {
            return Err(TransportError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest puts the URL in its errors' Display; the URL of an inbound integration holds a
/// token, so it is stripped before anything is said.
pub fn transport_error(e: reqwest::Error) -> TransportError {
    if e.is_timeout() {
        TransportError::Timeout
    } else if e.is_connect() {
        TransportError::Connect(describe_reqwest(e))
    } else {
        TransportError::Other(describe_reqwest(e))
    }
}

fn describe_reqwest(e: reqwest::Error) -> String {
    crate::redact::reqwest_error(e)
}

/// The outcome of one try of an API call.
enum Step {
    Done(Result<Vec<u8>, ApiError>),
    Retry(Duration, ApiError),
}

/// What an API answer means, decided here and only here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: the body.
    Ok(Vec<u8>),
    /// 401 or 403: the credential was refused; retrying cannot help.
    Refused { status: u16, detail: String },
    /// 404.
    NotFound,
    /// 429: wait this long (if the server said) and retry.
    RateLimited { after: Option<Duration> },
    /// 5xx or 408: retry after a backoff (or the server's Retry-After).
    Transient {
        status: u16,
        after: Option<Duration>,
    },
    /// Any other status: retrying cannot help.
    Other { status: u16, detail: String },
}

impl Answer {
    pub fn classify(a: ApiAnswer) -> Answer {
        let after = a
            .retry_after
            .as_deref()
            .and_then(parse_retry_after)
            .or_else(|| a.ratelimit_reset.as_deref().and_then(parse_retry_after));
        let detail = || {
            model::error_detail(&a.body)
                .unwrap_or_else(|| printable(&String::from_utf8_lossy(&a.body), 200))
        };
        match a.status {
            200..=299 => Answer::Ok(a.body),
            401 | 403 => Answer::Refused {
                status: a.status,
                detail: detail(),
            },
            404 => Answer::NotFound,
            429 => Answer::RateLimited { after },
            // Not followed (the token would go along): say where it points.
            300..=399 => Answer::Other {
                status: a.status,
                detail: format!(
                    "it redirects to {}; set the API URL to where it points",
                    a.redirect_to.as_deref().unwrap_or("no Location given")
                ),
            },
            408 | 500..=599 => Answer::Transient {
                status: a.status,
                after,
            },
            s => Answer::Other {
                status: s,
                detail: detail(),
            },
        }
    }
}

/// Why an API call did not give an answer to use.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the OnCall API at {api} refused {credential} ({status}: {detail})")]
    Refused {
        api: String,
        credential: String,
        status: u16,
        detail: String,
    },
    #[error("the OnCall API at {api} has no {what}")]
    NotFound { api: String, what: String },
    #[error("the OnCall API at {api} is rate-limiting this token{}", after_text(*.retry_after))]
    RateLimited {
        api: String,
        retry_after: Option<Duration>,
    },
    #[error("the agent's own budget for the OnCall API ({rate}) is spent for another {}s", .wait.as_secs())]
    BudgetSpent { rate: Rate, wait: Duration },
    #[error("the OnCall API at {api} is unavailable: {reason}")]
    Unavailable { api: String, reason: String },
    #[error("the OnCall API at {api} answered {status}: {detail}")]
    Status {
        api: String,
        status: u16,
        detail: String,
    },
    #[error("the OnCall API at {api} sent an answer the agent cannot use: {reason}")]
    Protocol { api: String, reason: String },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the API budget's state cannot be kept: {0}")]
    Budget(#[from] sled::Error),
}

fn after_text(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!(" (it says: retry in {}s)", d.as_secs()),
        None => String::new(),
    }
}

impl ApiError {
    /// A definite answer about the thing asked for, as opposed to the API being unusable (down,
    /// refusing the token, rate-limiting, talking nonsense).
    pub fn is_definite(&self) -> bool {
        matches!(self, ApiError::NotFound { .. })
    }

    /// The credential was refused: an operator must fix the token (or X-Grafana-URL).
    pub fn is_refused(&self) -> bool {
        matches!(self, ApiError::Refused { .. } | ApiError::Token(_))
    }
}

/// How hard one API call tries.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Whole-request timeout; also how long an unanswered request may count against the budget.
    pub timeout: Duration,
    /// Most attempts of one request, 429s and transient failures together.
    pub attempts: u32,
    /// A call fails rather than wait (for the budget, a Retry-After or a backoff) beyond this,
    /// counted from its first attempt.
    pub max_wait: Duration,
    /// First backoff after a 5xx, 408 or network error; doubles with each attempt.
    pub backoff: Duration,
    /// The wait after a 429 that says nothing about when to come back.
    pub default_retry_after: Duration,
}

impl Policy {
    /// For a command an operator is waiting on.
    pub fn interactive(timeout: Duration) -> Policy {
        Policy {
            timeout,
            attempts: 5,
            max_wait: Duration::from_secs(120),
            backoff: Duration::from_secs(1),
            default_retry_after: Duration::from_secs(30),
        }
    }

    /// For the daemon at start and on reload: it falls back to its cache, so it does not wait
    /// long for an API that is down.
    pub fn daemon(timeout: Duration) -> Policy {
        Policy {
            timeout,
            attempts: 2,
            max_wait: Duration::from_secs(30),
            backoff: Duration::from_secs(1),
            default_retry_after: Duration::from_secs(30),
        }
    }
}

/// The API budget: where its slots are kept.
pub enum Budget {
    /// In sled, across restarts (the daemon).
    Persisted { set: LimiterSet, tree: sled::Tree },
    /// In memory, for one command.
    Memory { limiter: Limiter, next_id: u64 },
}

impl Budget {
    pub fn persisted(tree: sled::Tree, rate: Rate, now: Millis) -> Result<Budget, sled::Error> {
        let set = LimiterSet::load(tree.clone(), [(Scope::Api, rate)], now)?;
        Ok(Budget::Persisted { set, tree })
    }

    pub fn memory(rate: Rate) -> Budget {
        Budget::Memory {
            limiter: Limiter::new(rate),
            next_id: 1,
        }
    }

    fn next_free(&self, now: Millis) -> Millis {
        match self {
            Budget::Persisted { set, .. } => set.next_free(&[Scope::Api], now),
            Budget::Memory { limiter, .. } => limiter.next_free(now),
        }
    }

    /// Takes a slot for a request leaving at `now`; persisted slots are flushed before it
    /// leaves, so a crash cannot forget it.
    fn take(&mut self, now: Millis, until: Millis) -> Result<u64, sled::Error> {
        match self {
            Budget::Persisted { set, tree } => {
                set.prune(now)?;
                let id = set.take(&[Scope::Api], now, until)?;
                tree.flush()?;
                Ok(id)
            }
            Budget::Memory { limiter, next_id } => {
                limiter.prune(now);
                let id = *next_id;
                *next_id += 1;
                limiter.take(Slot {
                    id,
                    sent: now,
                    until,
                });
                Ok(id)
            }
        }
    }

    fn answered(&mut self, id: u64, at: Millis) -> Result<(), sled::Error> {
        match self {
            Budget::Persisted { set, .. } => set.answered(&[Scope::Api], id, at),
            Budget::Memory { limiter, .. } => {
                limiter.answered(id, at);
                Ok(())
            }
        }
    }
}

/// The OnCall API, as one token sees it.
pub struct ApiClient {
    transport: Arc<dyn ApiTransport>,
    /// `<url>/api/v1/`.
    base: reqwest::Url,
    token: Secret<String>,
    /// Where the token came from, for messages.
    credential: String,
    grafana_url: Option<String>,
    rate: Rate,
    budget: Mutex<Budget>,
    clock: Clock,
    policy: Policy,
}

impl ApiClient {
    /// Reads the token; fails only if it cannot be had.
    pub fn new(
        api: &ApiConfig,
        transport: Arc<dyn ApiTransport>,
        budget: Budget,
        clock: Clock,
        policy: Policy,
    ) -> Result<ApiClient, ApiError> {
        let token = api.token.load()?;
        // Url adds a "/" to an empty path; the stack URL is sent as operators write it.
        let grafana_url = api
            .grafana_url
            .as_ref()
            .map(|g| g.as_str().trim_end_matches('/').to_string());
        let mut credential = format!("the API token from {}", api.token.describe());
        if let Some(g) = &grafana_url {
            credential.push_str(&format!(
                " (as a Grafana service account token for {g}, sent as X-Grafana-URL)"
            ));
        }
        Ok(ApiClient {
            transport,
            base: api.base(),
            token,
            credential,
            grafana_url,
            rate: api.rate,
            budget: Mutex::new(budget),
            clock,
            policy,
        })
    }

    /// The API's base URL (holds no secret).
    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    /// Which credential calls use, in words (never the token).
    pub fn credential(&self) -> &str {
        &self.credential
    }

    /// Every integration, following `next` page by page.
    pub async fn list_integrations(&self) -> Result<Vec<ApiIntegration>, ApiError> {
        let endpoint = self.endpoint("integrations/")?;
        let mut url = endpoint.clone();
        url.set_query(Some(&format!("perpage={PER_PAGE}")));
        let mut seen = HashSet::new();
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let body = self.get_listing(&url).await?;
            let page = model::parse_integrations_page(&body).map_err(|e| self.protocol(e))?;
            all.extend(page.results);
            let Some(next) = page.next else {
                return Ok(all);
            };
            seen.insert(url.query().unwrap_or_default().to_string());
            url = self.next_page(&endpoint, &url, &next)?;
            if seen.contains(url.query().unwrap_or_default()) {
                return Err(self.protocol_text("its pagination goes round in a circle"));
            }
        }
        Err(self.protocol_text(&format!(
            "the integration listing has more than {MAX_PAGES} pages"
        )))
    }

    /// One integration by its public id.
    pub async fn integration(&self, id: &str) -> Result<ApiIntegration, ApiError> {
        // `id` was checked to be letters and digits, so it is one plain path segment.
        let url = self.endpoint(&format!("integrations/{id}/"))?;
        let body = self.get(&url, &format!("integration with id {id}")).await?;
        let i = model::parse_integration(&body).map_err(|e| self.protocol(e))?;
        if i.id != id {
            return Err(self.protocol_text(&format!(
                "asked for integration {id}, it answered with another"
            )));
        }
        Ok(i)
    }

    /// A cheap authenticated call (one integration's worth of listing): proves the token works.
    /// Returns how many integrations the token sees, if the API says.
    pub async fn check_token(&self) -> Result<Option<u64>, ApiError> {
        let mut url = self.endpoint("integrations/")?;
        url.set_query(Some("perpage=1"));
        let body = self.get_listing(&url).await?;
        let page = model::parse_integrations_page(&body).map_err(|e| self.protocol(e))?;
        Ok(page.count)
    }

    /// A listing that is not there means the wrong endpoint, not a missing integration.
    async fn get_listing(&self, url: &reqwest::Url) -> Result<Vec<u8>, ApiError> {
        self.get(url, "integration listing")
            .await
            .map_err(|e| match e {
                ApiError::NotFound { api, .. } => ApiError::Status {
                    api,
                    status: 404,
                    detail:
                        "no integration listing here: is api.url the OnCall endpoint from Settings?"
                            .to_string(),
                },
                e => e,
            })
    }

    fn endpoint(&self, path: &str) -> Result<reqwest::Url, ApiError> {
        self.base
            .join(path)
            .map_err(|e| self.protocol_text(&format!("cannot build the URL for {path}: {e}")))
    }

    /// The next page: `next`'s query on our own endpoint.
    fn next_page(
        &self,
        endpoint: &reqwest::Url,
        current: &reqwest::Url,
        next: &str,
    ) -> Result<reqwest::Url, ApiError> {
        let parsed = current
            .join(next)
            .map_err(|_| self.protocol_text("its `next` link is not a URL"))?;
        let mut url = endpoint.clone();
        url.set_query(parsed.query());
        Ok(url)
    }

    fn protocol(&self, e: ParseError) -> ApiError {
        self.protocol_text(&e.to_string())
    }

    fn protocol_text(&self, reason: &str) -> ApiError {
        ApiError::Protocol {
            api: self.base.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Waits for a budget slot (failing rather than wait past `deadline`) and takes it.
    async fn spend(&self, deadline: tokio::time::Instant) -> Result<u64, ApiError> {
        loop {
            let free_at = {
                let mut b = self.budget.lock().expect("budget lock");
                let now = self.clock.now();
                let free_at = b.next_free(now);
                if free_at <= now {
                    return Ok(b.take(now, now + ms(self.policy.timeout))?);
                }
                free_at
            };
            let at = self.clock.instant_at(free_at);
            if at > deadline {
                return Err(ApiError::BudgetSpent {
                    rate: self.rate,
                    wait: at.saturating_duration_since(tokio::time::Instant::now()),
                });
            }
            tracing::debug!(
                wait_ms = free_at.saturating_sub(self.clock.now()),
                "Waiting for the OnCall API budget."
            );
            tokio::time::sleep_until(at).await;
        }
    }

    /// One GET with budget, retries and waits; the body of a 2xx answer.
    async fn get(&self, url: &reqwest::Url, what: &str) -> Result<Vec<u8>, ApiError> {
        let deadline = tokio::time::Instant::now() + self.policy.max_wait;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let answer = self.send_once(url, deadline).await?;
            let (after, give_up) = match self.judge(answer, what, attempt) {
                Step::Done(result) => return result,
                Step::Retry(after, why) => (after, why),
            };
            // Checked: `after` may be a Retry-After of u64::MAX seconds, and `Instant + Duration`
            // panics on overflow (an abort, in the release build).
            let past_deadline = tokio::time::Instant::now()
                .checked_add(after)
                .is_none_or(|t| t > deadline);
            if attempt >= self.policy.attempts || past_deadline {
                return Err(give_up);
            }
            tracing::debug!(
                attempt,
                wait_ms = ms(after),
                "The OnCall API call for the {what} did not succeed ({give_up}); retrying."
            );
            tokio::time::sleep(after).await;
        }
    }

    /// One GET within the budget; its slot is settled when it was answered.
    async fn send_once(
        &self,
        url: &reqwest::Url,
        deadline: tokio::time::Instant,
    ) -> Result<Result<Answer, TransportError>, ApiError> {
        let slot = self.spend(deadline).await?;
        let answer = self
            .transport
            .get(ApiRequest {
                url: url.clone(),
                token: self.token.clone(),
                grafana_url: self.grafana_url.clone(),
            })
            .await;
        if answer.is_ok() {
            // Counted by now; an unanswered request keeps counting until its timeout.
            let now = self.clock.now();
            self.budget
                .lock()
                .expect("budget lock")
                .answered(slot, now)?;
        }
        Ok(answer.map(Answer::classify))
    }

    /// What an answer means for the call: done (a body or a final error), or worth another
    /// try after a wait.
    fn judge(&self, answer: Result<Answer, TransportError>, what: &str, attempt: u32) -> Step {
        let api = self.base.to_string();
        let unavailable = |reason: String| ApiError::Unavailable {
            api: api.clone(),
            reason,
        };
        match answer {
            Ok(Answer::Ok(body)) => Step::Done(Ok(body)),
            Ok(Answer::Refused { status, detail }) => Step::Done(Err(ApiError::Refused {
                api: api.clone(),
                credential: self.credential.clone(),
                status,
                detail: self.scrub(&detail),
            })),
            Ok(Answer::NotFound) => Step::Done(Err(ApiError::NotFound {
                api: api.clone(),
                what: what.to_string(),
            })),
            Ok(Answer::Other { status, detail }) => Step::Done(Err(ApiError::Status {
                api: api.clone(),
                status,
                detail: self.scrub(&detail),
            })),
            Err(TransportError::TooLarge) => Step::Done(Err(
                self.protocol_text(&TransportError::TooLarge.to_string())
            )),
            Ok(Answer::RateLimited { after }) => Step::Retry(
                after.unwrap_or(self.policy.default_retry_after),
                ApiError::RateLimited {
                    api: api.clone(),
                    retry_after: after,
                },
            ),
            Ok(Answer::Transient { status, after }) => Step::Retry(
                after.unwrap_or_else(|| self.backoff(attempt)),
                unavailable(format!("it answered {status}")),
            ),
            Err(e) => Step::Retry(self.backoff(attempt), unavailable(e.to_string())),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        crate::oncall::Backoff {
            initial: self.policy.backoff,
            max: self.policy.max_wait,
        }
        .delay(attempt)
    }

    /// The API's own words, minus the token should it ever echo it.
    fn scrub(&self, text: &str) -> String {
        let t = self.token.expose();
        if t.len() >= 4 {
            text.replace(t.as_str(), "***")
        } else {
            text.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Scripted answers; records when (on tokio's clock) each request arrived.
    #[derive(Default)]
    struct Script {
        answers: Mutex<VecDeque<Result<ApiAnswer, TransportError>>>,
        seen: Mutex<Vec<(Duration, ApiRequest)>>,
        start: Mutex<Option<tokio::time::Instant>>,
    }

    impl Script {
        fn new(answers: Vec<Result<ApiAnswer, TransportError>>) -> Arc<Script> {
            Arc::new(Script {
                answers: Mutex::new(answers.into()),
                ..Default::default()
            })
        }
        fn times(&self) -> Vec<u64> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .map(|(d, _)| d.as_secs())
                .collect()
        }
    }

    impl ApiTransport for Arc<Script> {
        fn get(&self, req: ApiRequest) -> ApiFuture {
            let start = *self
                .start
                .lock()
                .unwrap()
                .get_or_insert_with(tokio::time::Instant::now);
            self.seen.lock().unwrap().push((start.elapsed(), req));
            let a = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Ok(answer(200, PAGE_END)));
            Box::pin(async move { a })
        }
    }

    const PAGE_END: &str = r#"{"count":0,"next":null,"previous":null,"results":[]}"#;

    fn answer(status: u16, body: &str) -> ApiAnswer {
        ApiAnswer {
            status,
            retry_after: None,
            ratelimit_reset: None,
            redirect_to: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn api_config(rate: &str) -> ApiConfig {
        ApiConfig {
            url: reqwest::Url::parse("https://oncall.example/oncall").unwrap(),
            token: crate::config::ApiToken::Inline(Secret::new("TOKEN-abc".into())),
            grafana_url: None,
            rate: rate.parse().unwrap(),
        }
    }

    fn client(script: &Arc<Script>, rate: &str) -> ApiClient {
        let cfg = api_config(rate);
        ApiClient::new(
            &cfg,
            Arc::new(script.clone()),
            Budget::memory(cfg.rate),
            Clock::starting_at(1_000_000),
            Policy::interactive(Duration::from_secs(10)),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn budget_spaces_calls_a_window_after_the_answers() {
        // 3 per 60 s: the 4th call waits until a window after the 1st answer (instant here).
        let s = Script::new(vec![]);
        let c = client(&s, "3/1m");
        for _ in 0..7 {
            c.check_token().await.unwrap();
        }
        assert_eq!(s.times(), vec![0, 0, 0, 60, 60, 60, 120]);
    }

    #[tokio::test(start_paused = true)]
    async fn persisted_budget_survives_a_new_client() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .temporary(true)
            .open()
            .unwrap();
        let tree = db.open_tree("api_limiter").unwrap();
        let cfg = api_config("2/1m");
        let clock = Clock::starting_at(1_000_000);
        let s = Script::new(vec![]);
        let make = || {
            ApiClient::new(
                &cfg,
                Arc::new(s.clone()),
                Budget::persisted(tree.clone(), cfg.rate, clock.now()).unwrap(),
                clock,
                Policy::interactive(Duration::from_secs(10)),
            )
            .unwrap()
        };
        let first = make();
        first.check_token().await.unwrap();
        first.check_token().await.unwrap();
        drop(first);
        // A restart: the two slots are still spent.
        make().check_token().await.unwrap();
        assert_eq!(s.times(), vec![0, 0, 60]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_is_waited_out_as_retry_after_says() {
        let mut limited = answer(
            429,
            r#"{"detail":"Request was throttled. Expected available in 7 seconds."}"#,
        );
        limited.retry_after = Some("7".into());
        let mut reset = answer(429, "");
        reset.ratelimit_reset = Some("11".into());
        let s = Script::new(vec![Ok(limited), Ok(reset)]);
        let c = client(&s, "300/5m");
        c.check_token().await.unwrap();
        // 0: 429 Retry-After 7; 7: 429 RateLimit-Reset 11; 18: answered.
        assert_eq!(s.times(), vec![0, 7, 18]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_beyond_the_wait_bound_fails_at_once_saying_when() {
        let mut limited = answer(429, "");
        limited.retry_after = Some("3600".into());
        let s = Script::new(vec![Ok(limited)]);
        let c = client(&s, "300/5m");
        let e = c.check_token().await.unwrap_err();
        assert!(
            matches!(e, ApiError::RateLimited { retry_after: Some(d), .. } if d.as_secs() == 3600),
            "{e}"
        );
        assert!(e.to_string().contains("retry in 3600s"), "{e}");
        assert_eq!(s.times(), vec![0]);
    }

    /// Regression: `Instant + Retry-After` overflowed and panicked (the release build aborts)
    /// on `Retry-After: 18446744073709551615`. Such a wait is past any deadline: give up.
    #[tokio::test(start_paused = true)]
    async fn a_429_with_a_retry_after_of_u64_max_gives_up_instead_of_panicking() {
        let mut limited = answer(429, "");
        limited.retry_after = Some("18446744073709551615".into());
        let s = Script::new(vec![Ok(limited)]);
        let c = client(&s, "300/5m");
        let e = c.check_token().await.unwrap_err();
        assert!(matches!(e, ApiError::RateLimited { .. }), "{e}");
        assert_eq!(s.times(), vec![0]);
    }

    #[tokio::test(start_paused = true)]
    async fn outages_back_off_exponentially_then_give_up() {
        let s = Script::new(vec![
            Ok(answer(502, "")),
            Err(TransportError::Timeout),
            Ok(answer(503, "")),
            Err(TransportError::Connect("refused".into())),
            Ok(answer(500, "")),
        ]);
        let c = client(&s, "300/5m");
        let e = c.check_token().await.unwrap_err();
        assert!(matches!(e, ApiError::Unavailable { .. }), "{e}");
        assert_eq!(s.times(), vec![0, 1, 3, 7, 15]);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_token_is_final_and_names_the_credential_not_the_token() {
        let s = Script::new(vec![Ok(answer(
            401,
            r#"{"detail":"Invalid token. TOKEN-abc"}"#,
        ))]);
        let c = client(&s, "300/5m");
        let e = c.check_token().await.unwrap_err();
        let m = e.to_string();
        assert!(e.is_refused(), "{m}");
        assert!(m.contains("api.token") && m.contains("401"), "{m}");
        assert!(!m.contains("TOKEN-abc"), "{m}");
        assert_eq!(s.times(), vec![0]);
        let req = &s.seen.lock().unwrap()[0].1;
        assert_eq!(req.token.expose(), "TOKEN-abc");
        assert_eq!(
            req.url.as_str(),
            "https://oncall.example/oncall/api/v1/integrations/?perpage=1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pagination_follows_next_on_the_configured_endpoint_only() {
        let p1 = r#"{"next":"http://elsewhere.example/steal/?page=2&perpage=100","results":[{"id":"A1","name":"a","type":"webhook"}]}"#;
        let p2 = r#"{"next":null,"results":[{"id":"B2","name":"b","type":"webhook"}]}"#;
        let s = Script::new(vec![Ok(answer(200, p1)), Ok(answer(200, p2))]);
        let c = client(&s, "300/5m");
        let all = c.list_integrations().await.unwrap();
        assert_eq!(all.len(), 2);
        let urls: Vec<String> = s
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.url.to_string())
            .collect();
        assert_eq!(
            urls,
            [
                "https://oncall.example/oncall/api/v1/integrations/?perpage=100",
                "https://oncall.example/oncall/api/v1/integrations/?page=2&perpage=100"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pagination_is_bounded() {
        // A server whose `next` never ends: page N points at page N+1.
        let pages: Vec<_> = (2..=MAX_PAGES + 5)
            .map(|n| {
                Ok(answer(
                    200,
                    &format!(r#"{{"next":"?page={n}","results":[]}}"#),
                ))
            })
            .collect();
        let s = Script::new(pages);
        let c = client(&s, "1000/5m");
        let e = c.list_integrations().await.unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        assert_eq!(s.times().len(), MAX_PAGES);

        // One that points back at a page already read.
        let s = Script::new(vec![
            Ok(answer(200, r#"{"next":"?page=2","results":[]}"#)),
            Ok(answer(200, r#"{"next":"?page=2","results":[]}"#)),
        ]);
        let e = client(&s, "300/5m").list_integrations().await.unwrap_err();
        assert!(e.to_string().contains("circle"), "{e}");
    }

    #[test]
    fn answers_map_to_decisions() {
        let mut a = answer(429, "");
        a.retry_after = Some("5".into());
        assert_eq!(
            Answer::classify(a),
            Answer::RateLimited {
                after: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(Answer::classify(answer(404, "")), Answer::NotFound);
        assert!(matches!(
            Answer::classify(answer(403, r#"{"detail":"no"}"#)),
            Answer::Refused { status: 403, .. }
        ));
        assert!(matches!(
            Answer::classify(answer(504, "")),
            Answer::Transient {
                status: 504,
                after: None
            }
        ));
        assert!(matches!(
            Answer::classify(answer(400, "bad")),
            Answer::Other { status: 400, .. }
        ));
        let mut moved = answer(301, "<html>moved</html>");
        moved.redirect_to = Some("https://oncall.example.com/***".into());
        assert_eq!(
            Answer::classify(moved),
            Answer::Other {
                status: 301,
                detail: "it redirects to https://oncall.example.com/***; set the API URL to where it points".into()
            }
        );
    }
}
