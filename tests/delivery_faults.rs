//! Answers from OnCall's side that used to lose or wedge alerts (issue: "No silent drop"),
//! through the real binary and real sockets: redirects, Retry-After without bounds, and the
//! engine's 400 for a URL of the wrong kind. Each test is named after what broke.

mod common;

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use common::*;

const FAST: &str =
    "[delivery]\nretry_initial = \"50ms\"\nretry_max = \"500ms\"\ntimeout = \"2s\"\n";
const SECRET: &str = "RedirTok3n";

/// An ingress in front of `target` that answers every request with `status` and
/// `Location: target`, as an http-to-https redirect does; it counts what it saw.
async fn redirector(status: u16, target: String) -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move {
            let mut r = StatusCode::from_u16(status).unwrap().into_response();
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_str(&target).unwrap());
            r
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Regression: a 301/302 was followed, the POST became a GET, OnCall answered it 200 (its
/// instructions page) and the alert was acked as delivered: lost, with nothing logged. A 307/308
/// was followed to whatever host `Location` named, token and body included. Now no redirect is
/// followed: the alert stays queued, one ERROR says where the URL points (redacted), status and
/// `check-config --online` say so, and a reload with the right URL delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_the_alert_stays_queued_until_the_url_is_fixed() {
    for status in [301u16, 302, 307, 308] {
        let oncall = FakeOnCall::start(&[SECRET]).await;
        let real = oncall.url("formatted_webhook", SECRET);
        let ingress = redirector(status, real.clone()).await;
        let behind = format!("http://{ingress}/integrations/v1/formatted_webhook/{SECRET}/");
        let mut d = Daemon::start(&format!("{FAST}{}", integration("db", &behind))).await;

        let (s, b) = d.post("db", r#"{"title":"t","alert_uid":"u"}"#).await;
        assert_eq!(s, 202, "{b}");
        assert!(
            d.wait_log(
                "The integration's URL redirects elsewhere",
                1,
                Duration::from_secs(20)
            )
            .await,
            "{status}: no ERROR about the redirect:\n{}",
            d.logs()
        );
        // Nothing reached OnCall: not as a GET acked as delivered, not re-POSTed with the token.
        assert!(oncall.all().is_empty(), "{status}: {:?}", oncall.all());
        assert_eq!(d.depth().await, 1, "{status}");
        let st = d.status().await;
        let err = integration_status(&st, "db")["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            err.contains(&format!("OnCall answered {status}, a redirect to http://{}/integrations/v1/formatted_webhook/***/", oncall.addr)),
            "{status}: {st}"
        );

        let out = d.cli(&["check-config", "--online"]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(78), "{status}: {stdout}");
        assert!(
            stdout.lines().any(|l| l.starts_with("integration db ")
                && l.contains(&format!("FAILED: answered {status}, a redirect to"))),
            "{status}: {stdout}"
        );

        // The operator fixes the URL: delivered at once, not after the old URL's backoff.
        d.write_config(&format!("{FAST}{}", integration("db", &real)));
        d.signal("HUP");
        assert!(
            wait_until(Duration::from_secs(20), || oncall.accepted().len() == 1).await,
            "{status}: not delivered after the fix:\n{}",
            d.logs()
        );
        let logs = d.logs() + &stdout;
        assert!(!logs.contains(SECRET), "{status}: the token was printed");
        d.stop();
    }
}

/// Regression: `Retry-After: 999999999` on a 503 parked the alert 31 years ahead, persisted,
/// and no command freed it. Now the wait is cut at `delivery.max_retry_after` with a WARN, and
/// `oncall-agent retry-now` sends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_31_years_is_clamped_and_retry_now_frees_the_key() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut reply = Reply::status(503, "busy");
    reply.retry_after = Some("999999999".into());
    oncall.script([reply]);
    let d = Daemon::start(&format!(
        "{FAST}max_retry_after = \"1h\"\n{}",
        integration("db", &oncall.url("formatted_webhook", "T"))
    ))
    .await;
    let (s, _) = d.post("db", r#"{"title":"t","alert_uid":"u"}"#).await;
    assert_eq!(s, 202);
    assert!(
        d.wait_log("waiting 3600s instead", 1, Duration::from_secs(20))
            .await,
        "{}",
        d.logs()
    );
    let st = d.status().await;
    let next = integration_status(&st, "db")["next_attempt_in_s"]
        .as_f64()
        .unwrap();
    assert!((3000.0..=3600.0).contains(&next), "{st}");

    let out = d.cli(&["retry-now", "--integration", "db"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("db: 1 alerts due now, backoff reset"),
        "{stdout}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || oncall.accepted().len() == 1).await,
        "{}",
        d.logs()
    );
    let out = d.cli(&["retry-now", "--integration", "nope"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no configured integration is named"));
}

/// The engine answers a POST to a URL whose kind is not its integration's type with 400 "This
/// url is for integration with <Kind>. Key is for <Kind>": the dead letter says so in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_mismatch_is_named_in_the_dead_letter() {
    let oncall = FakeOnCall::start(&["T"]).await;
    oncall.script([Reply::status(
        400,
        "This url is for integration with Alertmanager. Key is for Formatted Webhook",
    )]);
    let d = Daemon::start(&format!(
        "{FAST}{}",
        integration("db", &oncall.url("alertmanager", "T"))
    ))
    .await;
    let (s, _) = d.post("db", r#"{"title":"t"}"#).await;
    assert_eq!(s, 202);
    assert!(
        wait_for(Duration::from_secs(20), || async {
            integration_status(&d.status().await, "db")["dead_lettered_total"] == 1
        })
        .await
    );
    let out = d.cli(&["dead", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = v["dead_letters"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("this URL's kind does not match the integration"),
        "{v}"
    );
}

/// Regression: `delivery.timeout` was given to the HTTP client once, at start, while a reload
/// changed only what the limiter assumed. An OnCall that answers after 3 s with a 1 s timeout:
/// every attempt times out (and stays queued); after a reload to 10 s the next attempt waits
/// long enough and the alert is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_delivery_timeout_applies_to_the_next_request() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut slow = Reply::ok();
    slow.delay = Duration::from_secs(3);
    oncall.set_default(slow);
    let url = oncall.url("formatted_webhook", "T");
    let config = |timeout: &str| {
        format!(
            "[delivery]\nretry_initial = \"50ms\"\nretry_max = \"500ms\"\ntimeout = \"{timeout}\"\n{}",
            integration("db", &url)
        )
    };
    let d = Daemon::start(&config("1s")).await;
    let (s, _) = d.post("db", r#"{"title":"t","alert_uid":"u"}"#).await;
    assert_eq!(s, 202);
    assert!(
        wait_for(Duration::from_secs(20), || async {
            integration_status(&d.status().await, "db")["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out"))
        })
        .await,
        "{}",
        d.logs()
    );
    assert_eq!(d.depth().await, 1);
    d.write_config(&config("10s"));
    d.signal("HUP");
    assert!(
        wait_for(Duration::from_secs(30), || async { d.depth().await == 0 }).await,
        "not delivered with the longer timeout:\n{}",
        d.logs()
    );
    assert!(!oncall.accepted().is_empty());
}

/// Scenario: OnCall answers 200 with garbage (not its `"Ok."`). The status is the contract:
/// the engine answers 200 with other bodies too (empty for a heartbeat POST, and it creates an
/// alert for a JSON array or string), so a 2xx with any body is a delivery, acked once, and the
/// garbage is neither parsed nor kept. A body of any size is read only up to 16 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_garbage_is_one_delivery_and_the_garbage_is_not_read_further() {
    let oncall = FakeOnCall::start(&["T"]).await;
    oncall.set_default(Reply::status(
        200,
        &"\u{0}<html>\u{fffd}garbage".repeat(100_000),
    ));
    let d = Daemon::start(&format!(
        "{FAST}{}",
        integration("db", &oncall.url("formatted_webhook", "T"))
    ))
    .await;
    for n in 0..5 {
        let (s, _) = d.post("db", &format!(r#"{{"title":"{n}"}}"#)).await;
        assert_eq!(s, 202);
    }
    assert!(wait_for(Duration::from_secs(20), || async { d.depth().await == 0 }).await);
    assert_eq!(oncall.all().len(), 5, "each alert once");
    let st = d.status().await;
    assert_eq!(integration_status(&st, "db")["delivered_total"], 5, "{st}");
    assert_eq!(
        integration_status(&st, "db")["last_error"],
        serde_json::Value::Null,
        "{st}"
    );
}
