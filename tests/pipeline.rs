//! End to end through real sockets: the daemon binary, its Unix socket and TCP port, and a fake
//! OnCall that answers like the real one.

mod common;

use std::time::Duration;

use common::*;

const FAST: &str = "[delivery]\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\nprobe_interval = \"1s\"\ntimeout = \"2s\"\n";

/// The daemon with fast retries and one integration "a" (token "T") at `oncall`.
async fn start_fast(oncall: &FakeOnCall) -> Daemon {
    Daemon::start(&format!(
        "{FAST}{}",
        integration("a", &oncall.url("formatted_webhook", "T"))
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_reaches_oncall_verbatim_through_unix_socket_tcp_alias_and_cli() {
    let oncall = FakeOnCall::start(&["TOKEN1"]).await;
    let d = Daemon::start(&integration(
        "db-prod",
        &oncall.url("formatted_webhook", "TOKEN1"),
    ))
    .await;

    // TCP, the native path.
    let (s, b) = d
        .post("db-prod", r#"{"title":"tcp","alert_uid":"a"}"#)
        .await;
    assert_eq!(s, 202, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert!(v["id"].as_u64().is_some(), "{b}");

    // The OnCall-shaped alias, as a tool set up for OnCall would call it.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/integrations/v1/formatted_webhook/db-prod/",
            d.base()
        ))
        .body(r#"{"title":"alias"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // The Unix socket, through curl as the README shows.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&d.socket)
        .args([
            "-XPOST",
            "http://localhost/v1/integrations/db-prod/alerts",
            "-d",
            r#"{"title":"unix"}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "202");

    // The CLI.
    let out = d.cli(&[
        "send", "-i", "db-prod", "--title", "cli", "--uid", "u1", "--state", "ok",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(wait_until(Duration::from_secs(10), || oncall.accepted().len() == 4).await);
    let bodies: Vec<serde_json::Value> = oncall.accepted().into_iter().map(|r| r.body).collect();
    let titles: Vec<&str> = bodies
        .iter()
        .map(|b| b["title"].as_str().unwrap())
        .collect();
    for t in ["tcp", "alias", "unix", "cli"] {
        assert!(titles.contains(&t), "{titles:?}");
    }
    let cli = bodies.iter().find(|b| b["title"] == "cli").unwrap();
    assert_eq!(cli["alert_uid"], "u1");
    assert_eq!(cli["state"], "ok");
    assert!(
        oncall
            .accepted()
            .iter()
            .all(|r| r.kind == "formatted_webhook")
    );

    let st = d.status().await;
    let i = &st["integrations"][0];
    assert_eq!(i["name"], "db-prod");
    assert_eq!(i["delivered_total"], 4);
    assert_eq!(i["depth"], 0);
    assert!(
        !st.to_string().contains("TOKEN1"),
        "status leaks the token: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_4xx() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start(&format!(
        "[queue]\nmax_body = 1000\n{}",
        integration("db-prod", &oncall.url("formatted_webhook", "T"))
    ))
    .await;
    let (s, b) = d.post("nope", "{}").await;
    assert_eq!(s, 404);
    assert!(b.contains("nope"), "{b}");
    let (s, b) = d.post("db-prod", "not json").await;
    assert_eq!(s, 400);
    assert!(b.contains("JSON object"), "{b}");
    let (s, b) = d.post("db-prod", "{\"a\": [1,2,}").await;
    assert_eq!(s, 400);
    assert!(b.contains("line 1"), "{b}");
    let big = format!("{{\"title\":\"{}\"}}", "x".repeat(2000));
    let (s, b) = d.post("db-prod", &big).await;
    assert_eq!(s, 413);
    assert!(b.contains("max_body"), "{b}");
    // Nothing of that reached the queue.
    assert_eq!(d.status().await["integrations"][0]["depth"], 0);
    assert!(oncall.all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_order_per_key_and_refusals_become_dead_letters() {
    let oncall = FakeOnCall::start(&["T"]).await;
    // The first answers fail: 503, a 500, then everything succeeds.
    oncall.script([Reply::status(503, "busy"), Reply::status(500, "oops")]);
    let d = start_fast(&oncall).await;
    for n in 0..20 {
        let state = if n % 2 == 0 { "alerting" } else { "ok" };
        let (s, _) = d
            .post(
                "a",
                &format!(r#"{{"alert_uid":"k{}","n":{n},"state":"{state}"}}"#, n % 3),
            )
            .await;
        assert_eq!(s, 202);
    }
    assert!(
        wait_until(Duration::from_secs(20), || oncall.accepted().len() == 20).await,
        "{}",
        d.logs()
    );
    // Per key, the order of arrival at OnCall is the order of acceptance.
    for k in 0..3 {
        let ns: Vec<i64> = oncall
            .accepted()
            .iter()
            .filter(|r| r.body["alert_uid"] == format!("k{k}"))
            .map(|r| r.body["n"].as_i64().unwrap())
            .collect();
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, sorted, "key k{k} reordered");
    }
    let st = d.status().await;
    assert!(st["integrations"][0]["retried_total"].as_u64().unwrap() >= 2);

    // A 400 is final: the alert becomes a dead letter with the answer kept.
    oncall.script([Reply::status(400, "\"Payload is required\"")]);
    let (s, _) = d.post("a", r#"{"title":"refused"}"#).await;
    assert_eq!(s, 202);
    let dead = wait_for(Duration::from_secs(10), || async {
        d.status().await["dead_letters"].as_u64() == Some(1)
    })
    .await;
    assert!(dead, "{}", d.status().await);
    assert_eq!(d.status().await["integrations"][0]["depth"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_answered_202_survive_kill_9_and_are_delivered_after_restart() {
    let oncall = FakeOnCall::start(&["T"]).await;
    // OnCall is down while the alerts come in: they must wait on disk.
    oncall.set_default(Reply::status(503, "down"));
    let mut d = start_fast(&oncall).await;
    // The largest accepted body (1 MiB by default) must survive too.
    let big = format!(
        "{{\"title\":\"big\",\"pad\":\"{}\"}}",
        "x".repeat(1024 * 1024 - 40)
    );
    assert!(big.len() <= 1024 * 1024);
    let (s, b) = d.post("a", &big).await;
    assert_eq!(s, 202, "{b}");
    for n in 0..50 {
        let (s, _) = d.post("a", &format!(r#"{{"title":"n{n}"}}"#)).await;
        assert_eq!(s, 202);
    }
    d.kill9();
    oncall.set_default(Reply::ok());
    d.spawn().await;
    assert!(
        wait_until(Duration::from_secs(20), || oncall.accepted().len() >= 51).await,
        "delivered {} of 51\n{}",
        oncall.accepted().len(),
        d.logs()
    );
    let titles: std::collections::BTreeSet<String> = oncall
        .accepted()
        .iter()
        .map(|r| r.body["title"].as_str().unwrap().to_string())
        .collect();
    assert!(titles.contains("big"));
    for n in 0..50 {
        assert!(titles.contains(&format!("n{n}")), "n{n} lost");
    }
    let big_back = oncall
        .accepted()
        .into_iter()
        .find(|r| r.body["title"] == "big")
        .unwrap();
    assert_eq!(
        big_back.body["pad"].as_str().unwrap().len(),
        1024 * 1024 - 40
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_database_is_moved_aside_and_reported_by_a_self_alert() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start(&integration("a", &oncall.url("formatted_webhook", "T"))).await;
    d.stop();
    // Overwrite the database's files with garbage.
    let db = d.state_dir().join("queue");
    for f in ["db", "conf"] {
        std::fs::write(db.join(f), vec![0xA5u8; 4096]).unwrap();
    }
    d.spawn().await;
    let moved: Vec<_> = std::fs::read_dir(d.state_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("queue.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}\n{}", d.logs());
    assert!(d.logs().contains("ERROR"), "{}", d.logs());
    assert!(wait_until(Duration::from_secs(10), || !oncall.accepted().is_empty()).await);
    let a = &oncall.accepted()[0].body;
    assert!(a["title"].as_str().unwrap().contains("corrupt"), "{a}");
    // And it keeps working.
    assert_eq!(d.post("a", r#"{"title":"after"}"#).await.0, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_what_is_queued() {
    let oncall = FakeOnCall::start(&["T"]).await;
    oncall.set_default(Reply::status(503, "down"));
    let mut d = start_fast(&oncall).await;
    for n in 0..5 {
        assert_eq!(d.post("a", &format!(r#"{{"n":{n}}}"#)).await.0, 202);
    }
    assert_eq!(d.stop(), Some(0));
    oncall.set_default(Reply::ok());
    d.spawn().await;
    assert!(wait_until(Duration::from_secs(10), || oncall.accepted().len() == 5).await);
}
