//! The OnCall HTTP API, end to end: the real binary against a fake API that answers like
//! ../shared/oncall-facts.md says the real one does (bare `Authorization`, `X-Grafana-URL` for
//! service account tokens, `{count,next,previous,results}` pages, 401 `{"detail":"Invalid
//! token."}`, 429 with Retry-After), and the fake OnCall inbound endpoints from `common`.
//! Schedules (budget, Retry-After, backoff) are asserted exactly on the paused clock in
//! `api::client`'s unit tests; here the point is the wire and the daemon.

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::*;

/// The API key the fake accepts, and the service account token it accepts only with the
/// stack's X-Grafana-URL.
const API_KEY: &str = "APIKEY-0123456789";
const SA_TOKEN: &str = "glsa_SERVICEACCOUNT0123";
const STACK: &str = "https://mystack.grafana.net";

/// One request the fake API received.
#[derive(Debug, Clone)]
struct ApiHit {
    path: String,
    query: HashMap<String, String>,
    authorization: Option<String>,
    grafana_url: Option<String>,
    at: Instant,
}

#[derive(Default)]
struct ApiState {
    addr: Option<SocketAddr>,
    /// Integrations as the API shows them.
    integrations: Vec<serde_json::Value>,
    /// Page size the server uses whatever `perpage` asks (OnCall honours up to 100; a server
    /// that pages by 50 must work too).
    page_size: usize,
    /// Answers (status, Retry-After) for the next requests, before the normal one.
    script: VecDeque<(u16, Option<&'static str>)>,
    /// Answer 503 to everything.
    down: bool,
    hits: Vec<ApiHit>,
}

#[derive(Clone)]
struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
}

impl FakeApi {
    async fn start(page_size: usize) -> FakeApi {
        let state = Arc::new(Mutex::new(ApiState {
            page_size,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/oncall/api/v1/integrations/", get(list))
            .route("/oncall/api/v1/integrations/{id}/", get(one))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        state.lock().unwrap().addr = Some(addr);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeApi { addr, state }
    }

    /// The OnCall endpoint, as Settings shows it.
    fn url(&self) -> String {
        format!("http://{}/oncall", self.addr)
    }

    fn add(&self, id: &str, name: &str, link: &str, heartbeat: bool) {
        let hb = heartbeat.then(|| serde_json::json!({ "link": format!("{link}heartbeat/") }));
        self.state
            .lock()
            .unwrap()
            .integrations
            .push(serde_json::json!({
                "id": id, "name": name, "type": "formatted_webhook", "link": link,
                "heartbeat": hb, "team_id": null, "maintenance_mode": null,
                "templates": {"grouping_key": null, "resolve_signal": null, "web": {"title": null}},
            }));
    }

    fn script(&self, answers: impl IntoIterator<Item = (u16, Option<&'static str>)>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn hits(&self) -> Vec<ApiHit> {
        self.state.lock().unwrap().hits.clone()
    }
}

/// Authentication and scripted trouble, as OnCall answers them; None to go on.
fn gate(
    s: &mut ApiState,
    path: &str,
    query: HashMap<String, String>,
    headers: &HeaderMap,
) -> Option<Response> {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    s.hits.push(ApiHit {
        path: path.to_string(),
        query,
        authorization: h("authorization"),
        grafana_url: h("x-grafana-url"),
        at: Instant::now(),
    });
    if s.down {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "down").into_response());
    }
    let auth = h("authorization").unwrap_or_default();
    let ok = auth == API_KEY || (auth == SA_TOKEN && h("x-grafana-url").as_deref() == Some(STACK));
    if !ok {
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"detail": "Invalid token."})),
            )
                .into_response(),
        );
    }
    if let Some((status, retry_after)) = s.script.pop_front() {
        let mut r = (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(serde_json::json!({"detail": "Request was throttled. Expected available in 1 second."})),
        )
            .into_response();
        if let Some(ra) = retry_after {
            r.headers_mut().insert("retry-after", ra.parse().unwrap());
        }
        return Some(r);
    }
    None
}

async fn list(
    State(state): State<Arc<Mutex<ApiState>>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(r) = gate(&mut s, "/integrations/", q.clone(), &headers) {
        return r;
    }
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let per = s.page_size;
    let total = s.integrations.len();
    let results: Vec<_> = s
        .integrations
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .cloned()
        .collect();
    let base = format!("http://{}/oncall/api/v1/integrations/", s.addr.unwrap());
    let link = |p: usize| format!("{base}?page={p}&perpage={per}");
    let pages = total.div_ceil(per).max(1);
    axum::Json(serde_json::json!({
        "count": total,
        "next": (page < pages).then(|| link(page + 1)),
        "previous": (page > 1).then(|| link(page - 1)),
        "results": results,
        "page_size": per,
        "current_page_number": page,
        "total_pages": pages,
    }))
    .into_response()
}

async fn one(
    State(state): State<Arc<Mutex<ApiState>>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(r) = gate(
        &mut s,
        &format!("/integrations/{id}/"),
        HashMap::new(),
        &headers,
    ) {
        return r;
    }
    match s.integrations.iter().find(|i| i["id"] == id.as_str()) {
        Some(i) => axum::Json(i.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"detail": "Not found."})),
        )
            .into_response(),
    }
}

/// A config file for CLI runs (no daemon needed).
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            "state_dir = \"{}\"\n[listen]\ntcp = \"127.0.0.1:1\"\n[delivery]\ntimeout = \"5s\"\n{extra}\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    p
}

fn api_section(api: &FakeApi, token: &str) -> String {
    format!("[api]\nurl = \"{}\"\ntoken = \"{token}\"\n", api.url())
}

/// Runs the CLI off the runtime's threads (the fakes live on them).
async fn cli(config: &Path, args: &[&str]) -> Output {
    let config = config.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("ONCALL_API_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_lists_two_pages_of_50_with_urls_redacted_unless_asked() {
    let oncall = FakeOnCall::start(&[]).await;
    let api = FakeApi::start(50).await;
    for n in 0..60 {
        let link = oncall.url("formatted_webhook", &format!("SECRET{n:03}"));
        api.add(
            &format!("ID{n:04}"),
            &format!("integration {n}"),
            &link,
            n % 2 == 0,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &api_section(&api, API_KEY));

    let out = cli(&cfg, &["integrations"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for n in 0..60 {
        assert!(
            stdout.contains(&format!("ID{n:04}")),
            "ID{n:04} missing:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("SECRET") && !stderr.contains("SECRET"),
        "{stdout}{stderr}"
    );
    assert!(
        stdout.contains("/integrations/v1/formatted_webhook/***/"),
        "{stdout}"
    );
    // A heartbeat link in OnCall is not a heartbeat: no local integration sends one.
    let line = stdout.lines().find(|l| l.starts_with("ID0002")).unwrap();
    assert!(line.contains(" no "), "{line}");
    // Two pages, each with the bare key (no "Bearer") and no X-Grafana-URL.
    let hits = api.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[1].query.get("page").map(String::as_str), Some("2"));
    assert!(
        hits.iter()
            .all(|h| h.authorization.as_deref() == Some(API_KEY))
    );
    assert!(hits.iter().all(|h| h.grafana_url.is_none()));

    let out = cli(&cfg, &["integrations", "--show-urls"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("/integrations/v1/formatted_webhook/SECRET059/"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_follows_five_pages_of_100() {
    let api = FakeApi::start(100).await;
    for n in 0..450 {
        api.add(
            &format!("ID{n:04}"),
            &format!("integration {n}"),
            &format!("http://127.0.0.1:1/integrations/v1/webhook/SECRET{n}/"),
            false,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &api_section(&api, API_KEY));
    let out = cli(&cfg, &["integrations", "--json"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v.len(), 450);
    assert!(!stdout.contains("SECRET"));
    let pages: Vec<Option<String>> = api
        .hits()
        .into_iter()
        .map(|h| h.query.get("page").cloned())
        .collect();
    assert_eq!(
        pages,
        [
            None,
            Some("2".into()),
            Some("3".into()),
            Some("4".into()),
            Some("5".into())
        ]
    );
    // The first request asks for OnCall's largest page.
    assert_eq!(
        api.hits()[0].query.get("perpage").map(String::as_str),
        Some("100")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_token_exits_77_naming_the_credential_never_the_token() {
    let api = FakeApi::start(50).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api-token");
    std::fs::write(&token_file, "WRONG-TOKEN-VALUE\n").unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[api]\nurl = \"{}\"\ntoken_file = \"{}\"\n",
            api.url(),
            token_file.display()
        ),
    );
    let out = cli(&cfg, &["integrations"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stdout}{stderr}");
    assert!(
        stderr.contains("api.token_file") && stderr.contains(&token_file.display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("401") && stderr.contains("Invalid token."),
        "{stderr}"
    );
    assert!(!stderr.contains("WRONG-TOKEN-VALUE") && !stdout.contains("WRONG-TOKEN-VALUE"));
    // Refused is final: one request, no retries.
    assert_eq!(api.hits().len(), 1);
    assert_eq!(
        api.hits()[0].authorization.as_deref(),
        Some("WRONG-TOKEN-VALUE")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_waited_out_and_retried() {
    let api = FakeApi::start(50).await;
    api.add(
        "ID0001",
        "one",
        "http://127.0.0.1:1/integrations/v1/webhook/S/",
        false,
    );
    api.script([(429, Some("1"))]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &api_section(&api, API_KEY));
    let out = cli(&cfg, &["integrations"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("ID0001"), "{stdout}");
    let hits = api.hits();
    assert_eq!(hits.len(), 2);
    let gap = hits[1].at - hits[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, before Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_goes_with_x_grafana_url() {
    let api = FakeApi::start(50).await;
    api.add(
        "ID0001",
        "one",
        "http://127.0.0.1:1/integrations/v1/webhook/S/",
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let with = format!("{}grafana_url = \"{STACK}\"\n", api_section(&api, SA_TOKEN));
    let cfg = write_config(dir.path(), &with);
    let out = cli(&cfg, &["integrations"]).await;
    assert!(out.status.success(), "{}", text(&out).1);
    let h = &api.hits()[0];
    assert_eq!(h.authorization.as_deref(), Some(SA_TOKEN));
    assert_eq!(h.grafana_url.as_deref(), Some(STACK));

    // Without the stack URL OnCall refuses it; the message says how the token was sent.
    let cfg = write_config(dir.path(), &api_section(&api, SA_TOKEN));
    let out = cli(&cfg, &["integrations"]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("api.token"), "{stderr}");
    assert!(!stderr.contains(SA_TOKEN), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_checks_every_credential_with_a_line_each() {
    let oncall = FakeOnCall::start(&["GOOD1", "GOOD2"]).await;
    let api = FakeApi::start(50).await;
    api.add(
        "BYID1",
        "by id",
        &oncall.url("formatted_webhook", "GOOD2"),
        true,
    );
    let dir = tempfile::tempdir().unwrap();
    let good = integration("good", &oncall.url("formatted_webhook", "GOOD1"));
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}{good}[[integration]]\nname = \"byid\"\nid = \"BYID1\"\n",
            api_section(&api, API_KEY)
        ),
    );
    let out = cli(&cfg, &["check-config", "--online"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("api ") && l.contains("accepted")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("integration good ") && l.contains(": ok")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("integration byid ")
            && l.contains("id BYID1 resolved through the API")
            && l.contains(": ok")),
        "{stdout}"
    );
    // GETs only: nothing was sent as an alert, and no token was printed.
    assert!(oncall.all().is_empty());
    assert!(!stdout.contains("GOOD"), "{stdout}");

    // A deleted integration's token and an id the API does not know: refused, exit 78.
    let bad = integration("bad", &oncall.url("formatted_webhook", "GONE"));
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}{good}{bad}[[integration]]\nname = \"typo\"\nid = \"NOSUCH\"\n",
            api_section(&api, API_KEY)
        ),
    );
    let out = cli(&cfg, &["check-config", "--online"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("integration bad ") && l.contains("REFUSED")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("integration typo ")
                && l.contains("no integration with id NOSUCH")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("integration good ") && l.contains(": ok")),
        "{stdout}"
    );
    assert!(!stdout.contains("GONE") && !stderr.contains("GONE"));
}

/// The engine answers a GET on an inbound URL with 200 whatever kind the URL names, and then
/// refuses every alert with 400: with [api] set, the URL's kind is compared with the type the
/// API gives the integration; without it, the line says the kind was not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_fails_a_url_whose_kind_does_not_match_its_integration() {
    let oncall = FakeOnCall::start(&["GOOD1", "GOOD2"]).await;
    let api = FakeApi::start(50).await;
    api.add(
        "FW1",
        "fw",
        &oncall.url("formatted_webhook", "GOOD1"),
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let wrong = integration("wrong", &oncall.url("alertmanager", "GOOD1"));
    let unseen = integration("unseen", &oncall.url("formatted_webhook", "GOOD2"));
    let cfg = write_config(
        dir.path(),
        &format!("{}{wrong}{unseen}", api_section(&api, API_KEY)),
    );
    let out = cli(&cfg, &["check-config", "--online"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{stdout}{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("integration wrong ")
            && l.contains("FAILED: the URL's kind is alertmanager but OnCall's integration FW1 is of type formatted_webhook")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("integration unseen ")
            && l.contains("kind not checked (no integration the API token sees has this URL)")),
        "{stdout}"
    );

    // The right kind passes; without [api] the kind is not checked, and the line says so.
    let right = integration("right", &oncall.url("formatted_webhook", "GOOD1"));
    let cfg = write_config(
        dir.path(),
        &format!("{}{right}", api_section(&api, API_KEY)),
    );
    let out = cli(&cfg, &["check-config", "--online"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("kind formatted_webhook matches"),
        "{stdout}"
    );
    let cfg = write_config(dir.path(), &wrong);
    let out = cli(&cfg, &["check-config", "--online"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("kind not checked (set [api]"), "{stdout}");
    assert!(!stdout.contains("GOOD1"), "{stdout}");
}

const FAST: &str =
    "[delivery]\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\ntimeout = \"2s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_by_id_and_name_still_forward_with_the_api_down_after_a_first_resolution() {
    let oncall = FakeOnCall::start(&["TOKID", "TOKNAME"]).await;
    let api = FakeApi::start(50).await;
    api.add(
        "CFRPV98RPR1U8",
        "db prod",
        &oncall.url("formatted_webhook", "TOKID"),
        false,
    );
    api.add(
        "OTHER1",
        "Web Frontend",
        &oncall.url("formatted_webhook", "TOKNAME"),
        false,
    );
    let config = format!(
        "{FAST}{}[[integration]]\nname = \"db\"\nid = \"CFRPV98RPR1U8\"\n[[integration]]\nname = \"web\"\napi_name = \"Web Frontend\"\n",
        api_section(&api, API_KEY)
    );
    let mut d = Daemon::start(&config).await;
    assert_eq!(d.post("db", r#"{"title":"one"}"#).await.0, 202);
    assert_eq!(d.post("web", r#"{"title":"two"}"#).await.0, 202);
    assert!(
        wait_until(Duration::from_secs(10), || oncall.accepted().len() == 2).await,
        "{}",
        d.logs()
    );
    let by_token = oncall.accepted_by_token();
    assert_eq!(by_token["TOKID"][0]["title"], "one");
    assert_eq!(by_token["TOKNAME"][0]["title"], "two");
    // The id by its own endpoint, the name through the listing.
    let paths: Vec<String> = api.hits().into_iter().map(|h| h.path).collect();
    assert_eq!(paths, ["/integrations/CFRPV98RPR1U8/", "/integrations/"]);

    // The API goes down; the agent restarts and forwards from what it kept.
    d.stop();
    api.set_down(true);
    d.spawn().await;
    assert_eq!(d.post("db", r#"{"title":"three"}"#).await.0, 202);
    assert_eq!(d.post("web", r#"{"title":"four"}"#).await.0, 202);
    assert!(
        wait_until(Duration::from_secs(10), || oncall.accepted().len() == 4).await,
        "{}",
        d.logs()
    );
    let logs = d.logs();
    assert!(logs.contains("cannot be used"), "{logs}");
    for secret in ["TOKID", "TOKNAME", API_KEY] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolved_integration_keeps_its_alerts_until_the_api_answers() {
    let oncall = FakeOnCall::start(&["TOKID"]).await;
    let api = FakeApi::start(50).await;
    api.add(
        "CFRPV98RPR1U8",
        "db prod",
        &oncall.url("formatted_webhook", "TOKID"),
        false,
    );
    api.set_down(true);
    let config = format!(
        "{FAST}{}[[integration]]\nname = \"db\"\nid = \"CFRPV98RPR1U8\"\n",
        api_section(&api, API_KEY)
    );
    // First start, API down, nothing cached: the agent starts anyway and keeps the alert.
    let d = Daemon::start(&config).await;
    assert_eq!(d.post("db", r#"{"title":"kept"}"#).await.0, 202);
    assert!(d.logs().contains("cannot be resolved"), "{}", d.logs());
    assert!(oncall.all().is_empty());
    // The API is back; a reload resolves at once (without it, the retry would, within 30 s).
    api.set_down(false);
    d.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || oncall.accepted().len() == 1).await,
        "{}",
        d.logs()
    );
    assert_eq!(oncall.accepted()[0].body["title"], "kept");
}
