//! Grafana Cloud IRM and self-hosted OnCall behind a reverse proxy: the same integration URLs
//! and API, under a path prefix (`/oncall` in the cloud, any sub-path when self-hosted). Every
//! place the agent handles such a URL is run here with the real binary: delivery, heartbeats,
//! redaction in logs and status, `check-config --online`, and `id`/`api_name` resolution
//! through an API under the same prefix, authenticated the way IRM prefers (a service account
//! token with `X-Grafana-URL`).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::*;

const LONG: Duration = Duration::from_secs(20);
/// A Grafana service account token and the stack it belongs to.
const SA_TOKEN: &str = "glsa_IRMSERVICEACCOUNT0123";
const STACK: &str = "https://mystack.grafana.net";
/// Integration tokens long and odd enough that finding one in the output means a leak.
const TOKEN: &str = "IRMtok0123456789abcXYZ";
const TOKEN_ID: &str = "IRMbyid0123456789XYZ";
const TOKEN_NAME: &str = "IRMbyname0123456789XYZ";

/// The prefixes users have: Grafana Cloud IRM's, and a self-hosted engine under a sub-path.
const PREFIXES: [&str; 2] = ["/oncall", "/tools/grafana-oncall"];

#[derive(Default)]
struct ApiState {
    integrations: Vec<serde_json::Value>,
    /// (path, X-Grafana-URL) of every request.
    hits: Vec<(String, Option<String>)>,
}

/// The public API's integration endpoints under `<prefix>/api/v1/`, taking only the service
/// account token with its stack's X-Grafana-URL (403 `Invalid token.` otherwise, as the engine
/// answers).
#[derive(Clone)]
struct FakeApi {
    addr: SocketAddr,
    prefix: String,
    state: Arc<Mutex<ApiState>>,
}

impl FakeApi {
    async fn start(prefix: &str) -> FakeApi {
        let state = Arc::new(Mutex::new(ApiState::default()));
        let app = Router::new()
            .route(&format!("{prefix}/api/v1/integrations/"), get(list))
            .route(&format!("{prefix}/api/v1/integrations/{{id}}/"), get(one))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeApi {
            addr,
            prefix: prefix.to_string(),
            state,
        }
    }

    /// The API URL as IRM's settings show it.
    fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.prefix)
    }

    fn add(&self, id: &str, name: &str, link: &str) {
        self.state
            .lock()
            .unwrap()
            .integrations
            .push(serde_json::json!({
                "id": id, "name": name, "type": "formatted_webhook", "link": link,
                "heartbeat": {"link": format!("{link}heartbeat/")},
            }));
    }
}

fn refused(s: &mut ApiState, path: String, headers: &HeaderMap) -> Option<Response> {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    s.hits.push((path, h("x-grafana-url")));
    let ok = h("authorization").as_deref() == Some(SA_TOKEN)
        && h("x-grafana-url").as_deref() == Some(STACK);
    (!ok).then(|| {
        (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"detail": "Invalid token."})),
        )
            .into_response()
    })
}

async fn list(State(state): State<Arc<Mutex<ApiState>>>, headers: HeaderMap) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(r) = refused(&mut s, "/integrations/".into(), &headers) {
        return r;
    }
    let results = s.integrations.clone();
    axum::Json(serde_json::json!({
        "count": results.len(), "next": null, "previous": null, "results": results,
        "page_size": 50, "current_page_number": 1, "total_pages": 1,
    }))
    .into_response()
}

async fn one(
    State(state): State<Arc<Mutex<ApiState>>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(r) = refused(&mut s, format!("/integrations/{id}/"), &headers) {
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

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_no_token(what: &str, text: &str) {
    for t in [TOKEN, TOKEN_ID, TOKEN_NAME, SA_TOKEN] {
        assert!(!text.contains(t), "{t} shows in {what}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_under_the_cloud_prefix_and_a_sub_path_deliver_beat_redact_and_check_online() {
    for prefix in PREFIXES {
        let oncall = FakeOnCall::start_under(prefix, &[TOKEN]).await;
        let url = oncall.url("formatted_webhook", TOKEN);
        assert!(url.contains(&format!("{prefix}/integrations/v1/")), "{url}");
        let redacted = format!(
            "http://{}{prefix}/integrations/v1/formatted_webhook/***/",
            oncall.addr
        );
        let d = Daemon::start(&format!("{}heartbeat = \"10s\"\n", integration("db", &url))).await;

        assert_eq!(d.post("db", r#"{"title":"disk full"}"#).await.0, 202);
        assert!(
            wait_until(LONG, || oncall.accepted().len() == 1
                && oncall.heartbeats(TOKEN) >= 1)
            .await,
            "{prefix}: no alert or heartbeat arrived:\n{}",
            d.logs()
        );
        assert_eq!(oncall.accepted()[0].body["title"], "disk full");

        let status = d.status().await;
        assert_eq!(
            status["integrations"][0]["url"],
            redacted.as_str(),
            "{status}"
        );
        let table = d.cli(&["status"]);
        let table = text(&table);
        assert!(table.contains("db "), "{table}");
        assert_no_token("status", &table);
        assert_no_token("/v1/status", &status.to_string());
        assert_no_token("/metrics", &d.metrics().await);
        assert_no_token("the logs", &d.logs());

        let out = cli(&d.config_path, &["check-config", "--online"]).await;
        let said = text(&out);
        assert!(out.status.success(), "{prefix}: {said}");
        assert!(
            said.contains(&format!("integration db ({redacted}): ok")),
            "{prefix}: {said}"
        );
        assert_no_token("check-config --online", &said);

        // An unknown token under the prefix is refused (403); the prefix left out of a cloud
        // URL is not an OnCall URL at all (404): both exit 78.
        for (bad, says) in [
            (
                oncall.url("formatted_webhook", "IRMgone0123456789XYZ"),
                "REFUSED",
            ),
            (
                format!(
                    "http://{}/integrations/v1/formatted_webhook/{TOKEN}/",
                    oncall.addr
                ),
                "answered 404",
            ),
        ] {
            d.write_config(&integration("db", &bad));
            let out = cli(&d.config_path, &["check-config", "--online"]).await;
            let said = text(&out);
            assert_eq!(out.status.code(), Some(78), "{prefix}: {said}");
            assert!(said.contains(says), "{prefix}: {said}");
            assert_no_token("check-config --online", &said);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_and_api_name_resolve_through_a_prefixed_api_with_a_service_account_token() {
    for prefix in PREFIXES {
        let oncall = FakeOnCall::start_under(prefix, &[TOKEN_ID, TOKEN_NAME]).await;
        let api = FakeApi::start(prefix).await;
        api.add(
            "CIRMBYID01",
            "db prod",
            &oncall.url("formatted_webhook", TOKEN_ID),
        );
        api.add(
            "CIRMBYNAME1",
            "Web Frontend",
            &oncall.url("formatted_webhook", TOKEN_NAME),
        );
        let config = format!(
            "[api]\nurl = \"{}\"\ntoken = \"{SA_TOKEN}\"\ngrafana_url = \"{STACK}\"\n\
             [[integration]]\nname = \"db\"\nid = \"CIRMBYID01\"\nheartbeat = \"10s\"\n\
             [[integration]]\nname = \"web\"\napi_name = \"Web Frontend\"\n\
             {}heartbeat = \"30s\"\n",
            api.url(),
            // The same OnCall integration by its URL: `integrations` matches it by link.
            integration("db-url", &oncall.url("formatted_webhook", TOKEN_ID)),
        );
        let d = Daemon::start(&config).await;
        assert_eq!(d.post("db", r#"{"title":"one"}"#).await.0, 202);
        assert_eq!(d.post("web", r#"{"title":"two"}"#).await.0, 202);
        assert!(
            wait_until(LONG, || oncall.accepted().len() == 2
                && oncall.heartbeats(TOKEN_ID) >= 1)
            .await,
            "{prefix}: not delivered through the resolved links:\n{}",
            d.logs()
        );
        let by_token = oncall.accepted_by_token();
        assert_eq!(by_token[TOKEN_ID][0]["title"], "one");
        assert_eq!(by_token[TOKEN_NAME][0]["title"], "two");
        assert_eq!(oncall.heartbeats(TOKEN_NAME), 0, "web sets no heartbeat");
        // Every API call went under the prefix, with the stack's URL.
        let hits = api.state.lock().unwrap().hits.clone();
        assert!(!hits.is_empty());
        assert!(
            hits.iter().all(|(_, g)| g.as_deref() == Some(STACK)),
            "{hits:?}"
        );
        assert_no_token("the logs", &d.logs());

        // `integrations`: the local names (by id, and by the same URL), redacted URLs with
        // the prefix, and HEARTBEAT from the config: the shortest interval of the local
        // integrations that use it (both have a heartbeat link in OnCall; web is sent none).
        let out = cli(&d.config_path, &["integrations"]).await;
        let said = text(&out);
        assert!(out.status.success(), "{prefix}: {said}");
        assert_no_token("integrations", &said);
        let row = |id: &str| {
            said.lines()
                .find(|l| l.starts_with(id))
                .unwrap_or_else(|| panic!("{id} missing:\n{said}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let redacted = format!(
            "http://{}{prefix}/integrations/v1/formatted_webhook/***/",
            oncall.addr
        );
        let db = row("CIRMBYID01");
        assert_eq!(
            db[3..],
            [
                "formatted_webhook",
                "every",
                "10s",
                "db,db-url",
                redacted.as_str()
            ],
            "{said}"
        );
        let web = row("CIRMBYNAME1");
        assert_eq!(
            web[3..],
            ["formatted_webhook", "no", "web", redacted.as_str()],
            "{said}"
        );
        let out = cli(&d.config_path, &["integrations", "--json"]).await;
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let by_id = |id: &str| v.iter().find(|i| i["id"] == id).unwrap().clone();
        assert_eq!(by_id("CIRMBYID01")["heartbeat"], "10s", "{v:?}");
        assert_eq!(by_id("CIRMBYNAME1")["heartbeat"], serde_json::Value::Null);
        assert_eq!(by_id("CIRMBYNAME1")["heartbeat_link"], true);

        let out = cli(&d.config_path, &["check-config", "--online"]).await;
        let said = text(&out);
        assert!(out.status.success(), "{prefix}: {said}");
        assert!(
            said.contains(&format!(
                "integration db ({redacted}, id CIRMBYID01 resolved through the API): ok"
            )),
            "{prefix}: {said}"
        );
        assert!(
            said.contains(&format!("api {}/api/v1/: ok", api.url())),
            "{said}"
        );
        assert_no_token("check-config --online", &said);
    }
}

#[test]
fn api_and_heartbeat_urls_keep_the_prefix_however_it_is_written() {
    use oncall_agent::config::{Config, heartbeat_url};
    for (written, base) in [
        (
            "https://oncall-prod-us-central-0.grafana.net/oncall",
            "https://oncall-prod-us-central-0.grafana.net/oncall/api/v1/",
        ),
        (
            "https://oncall-prod-us-central-0.grafana.net/oncall/",
            "https://oncall-prod-us-central-0.grafana.net/oncall/api/v1/",
        ),
        (
            "https://oncall-prod-us-central-0.grafana.net/oncall/api/v1/",
            "https://oncall-prod-us-central-0.grafana.net/oncall/api/v1/",
        ),
        (
            "https://ops.example.com/tools/grafana-oncall",
            "https://ops.example.com/tools/grafana-oncall/api/v1/",
        ),
        ("http://localhost:8080", "http://localhost:8080/api/v1/"),
    ] {
        let text = format!(
            "state_dir = \"/tmp/x\"\n[listen]\ntcp = \"127.0.0.1:1\"\n[api]\nurl = \"{written}\"\ntoken = \"t\"\n\
             [[integration]]\nname = \"a\"\nid = \"A1\"\n"
        );
        let c = Config::parse(Path::new("/etc/test.toml"), &text).unwrap();
        assert_eq!(c.api.unwrap().base().as_str(), base, "api.url = {written}");
    }
    for prefix in ["", "/oncall", "/tools/grafana-oncall"] {
        for tail in ["/", ""] {
            let url = format!("https://h{prefix}/integrations/v1/webhook/T{tail}");
            assert_eq!(
                heartbeat_url(&reqwest::Url::parse(&url).unwrap()).as_str(),
                format!("https://h{prefix}/integrations/v1/webhook/T/heartbeat/"),
            );
        }
    }
}
