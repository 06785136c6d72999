//! Operations, end to end with the real binary: reload on SIGHUP, metrics, dead letters through
//! the CLI, the admin API's exposure, systemd's notify protocol and socket activation.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;

const FAST: &str = "[delivery]\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\nprobe_interval = \"1s\"\ntimeout = \"2s\"\n";
const LONG: Duration = Duration::from_secs(20);

fn titles(oncall: &FakeOnCall, token: &str) -> Vec<String> {
    oncall
        .accepted()
        .into_iter()
        .filter(|r| r.token == token)
        .map(|r| r.body["title"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A URL where nothing listens: deliveries fail and are retried, so alerts stay queued.
fn dead_end_url() -> String {
    format!(
        "http://{}/integrations/v1/formatted_webhook/X/",
        free_port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_integrations_keeps_removed_alerts_and_sends_each_once() {
    let oncall = FakeOnCall::start(&["A", "B", "C"]).await;
    let a = integration("a", &oncall.url("formatted_webhook", "A"));
    let d = Daemon::start(&format!("{FAST}{a}{}", integration("b", &dead_end_url()))).await;
    for n in 0..3 {
        let (s, _) = d.post("b", &format!(r#"{{"title":"b{n}"}}"#)).await;
        assert_eq!(s, 202);
    }

    // b goes, c comes; alerts to a keep flowing across the reload.
    d.write_config(&format!(
        "{FAST}{a}{}",
        integration("c", &oncall.url("formatted_webhook", "C"))
    ));
    for n in 0..10 {
        assert_eq!(d.post("a", &format!(r#"{{"title":"a{n}"}}"#)).await.0, 202);
    }
    d.signal("HUP");
    assert!(
        d.wait_log("Configuration reloaded.", 1, LONG).await,
        "{}",
        d.logs()
    );
    for n in 10..20 {
        assert_eq!(d.post("a", &format!(r#"{{"title":"a{n}"}}"#)).await.0, 202);
    }
    assert!(d.logs().contains("Integration removed by reload"));
    assert_eq!(d.post("b", r#"{"title":"refused"}"#).await.0, 404);
    assert_eq!(d.post("c", r#"{"title":"c0"}"#).await.0, 202);
    assert!(wait_until(LONG, || titles(&oncall, "C") == ["c0"]).await);

    // b's alerts are kept and reported, not dropped.
    let st = d.status().await;
    let b = st["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "b")
        .expect("b still reported")
        .clone();
    assert_eq!(b["depth"], 3, "{st}");
    assert_eq!(b["configured"], false, "{st}");
    let m = d.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"oncall_agent_integration_configured{integration="b"}"#
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"oncall_agent_queue_alerts{integration="b"}"#),
        Some(3.0)
    );
    let table = d.cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("NOT CONFIGURED: alerts kept"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );

    // b comes back with a working URL: its three alerts go out, once each.
    d.write_config(&format!(
        "{FAST}{a}{}{}",
        integration("c", &oncall.url("formatted_webhook", "C")),
        integration("b", &oncall.url("formatted_webhook", "B"))
    ));
    d.signal("HUP");
    assert!(
        wait_until(LONG, || titles(&oncall, "B").len() >= 3).await,
        "{}",
        d.logs()
    );
    assert!(wait_until(LONG, || titles(&oncall, "A").len() >= 20).await);
    assert!(
        wait_for(LONG, || async {
            d.status().await["integrations"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["depth"] == 0 && i["in_flight"] == 0)
        })
        .await
    );
    let mut b_titles = titles(&oncall, "B");
    b_titles.sort();
    assert_eq!(b_titles, ["b0", "b1", "b2"]);
    let a_titles = titles(&oncall, "A");
    assert_eq!(a_titles.len(), 20, "sent twice: {a_titles:?}");
    let unique: BTreeSet<&String> = a_titles.iter().collect();
    assert_eq!(unique.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_on_sighup_keeps_the_old_one_and_logs_error() {
    let oncall = FakeOnCall::start(&["A"]).await;
    let a = integration("a", &oncall.url("formatted_webhook", "A"));
    let d = Daemon::start(&format!("{FAST}{a}")).await;
    d.write_config(&format!("{FAST}{a}\nbogus_key = 1\n"));
    d.signal("HUP");
    assert!(
        d.wait_log("The new configuration was refused", 1, LONG)
            .await,
        "{}",
        d.logs()
    );
    let logs = d.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("The new configuration was refused"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("bogus_key"), "the reason is named: {line}");

    // A config that parses but fails validation is refused the same way.
    d.write_config(&format!(
        "{FAST}{a}\n[log]\nlevel = \"oncall_agent=loud\"\n"
    ));
    d.signal("HUP");
    assert!(
        d.wait_log("The new configuration was refused", 2, LONG)
            .await
    );
    assert!(d.logs().contains("log.level"));

    // The old config is still in force.
    assert_eq!(d.post("a", r#"{"title":"after"}"#).await.0, 202);
    assert!(wait_until(LONG, || titles(&oncall, "A") == ["after"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_changes_on_reload() {
    let oncall = FakeOnCall::start(&["A"]).await;
    let a = integration("a", &oncall.url("formatted_webhook", "A"));
    let b = integration("b", &dead_end_url());
    let mut d = Daemon::prepare(|_| format!("{FAST}{a}{b}\n[log]\nlevel = \"info\"\n"));
    let mut c = d.command();
    c.env_remove("RUST_LOG");
    d.spawn_command(c).await;
    assert_eq!(d.post("b", r#"{"title":"kept"}"#).await.0, 202);

    // To warn: this reload's own info line still shows (it is logged before the switch)...
    d.write_config(&format!("{FAST}{a}{b}\n[log]\nlevel = \"warn\"\n"));
    d.signal("HUP");
    assert!(
        d.wait_log("Configuration reloaded.", 1, LONG).await,
        "{}",
        d.logs()
    );
    // ...the next one's info line does not, while its warning does.
    d.write_config(&format!("{FAST}{a}\n[log]\nlevel = \"warn\"\n"));
    d.signal("HUP");
    assert!(
        d.wait_log("Integration removed by reload", 1, LONG).await,
        "{}",
        d.logs()
    );
    // Back to debug: the change itself is logged at info, which now passes.
    d.write_config(&format!("{FAST}{a}\n[log]\nlevel = \"debug\"\n"));
    d.signal("HUP");
    assert!(
        d.wait_log("The log level changed.", 1, LONG).await,
        "{}",
        d.logs()
    );
    // Only the first reload's info line passed: the next two came while the level was warn.
    assert_eq!(
        d.logs().matches("Configuration reloaded.").count(),
        1,
        "{}",
        d.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_prometheus_conventions_and_move() {
    let oncall = FakeOnCall::start(&["A"]).await;
    // A retry, then a 429 (no Retry-After, as OnCall sends it), then success.
    oncall.script([
        Reply::status(503, "busy"),
        Reply::status(429, INTEGRATION_429),
    ]);
    let d = Daemon::start(&format!(
        "{FAST}{}",
        integration("a", &oncall.url("formatted_webhook", "A"))
    ))
    .await;
    let m = d.metrics().await;
    assert!(m.ends_with("# EOF\n"), "{m}");
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(name.starts_with("oncall_agent_"), "{line}");
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    assert_eq!(
        metric(
            &m,
            &format!(
                r#"oncall_agent_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0),
        "{m}"
    );

    assert_eq!(
        d.post("a", r#"{"title":"t1","alert_uid":"k"}"#).await.0,
        202
    );
    assert_eq!(
        d.post("a", r#"{"title":"t2","alert_uid":"k"}"#).await.0,
        202
    );
    let (code, _) = d.unix_request("POST", "/v1/integrations/a/alerts");
    assert_eq!(code, 400, "an empty body is refused and not counted");
    let out = d.cli(&["send", "-i", "a", "--title", "t3", "--uid", "k"]);
    assert!(out.status.success());
    assert!(
        wait_until(LONG, || oncall.accepted().len() == 3).await,
        "{}",
        d.logs()
    );

    let m = d.metrics().await;
    let v = |s: &str| metric(&m, s).unwrap_or_else(|| panic!("{s} missing in\n{m}"));
    assert_eq!(
        v(r#"oncall_agent_alerts_received_total{source="tcp",integration="a"}"#),
        2.0
    );
    assert_eq!(
        v(r#"oncall_agent_alerts_received_total{source="unix",integration="a"}"#),
        1.0
    );
    assert_eq!(
        v(r#"oncall_agent_alerts_delivered_total{integration="a"}"#),
        3.0
    );
    assert_eq!(
        v(r#"oncall_agent_delivery_retries_total{integration="a"}"#),
        1.0
    );
    assert_eq!(
        v(r#"oncall_agent_rate_limited_total{scope="integration",integration="a"}"#),
        1.0
    );
    assert_eq!(v(r#"oncall_agent_rate_limited_total{scope="org"}"#), 0.0);
    assert_eq!(
        v(r#"oncall_agent_delivery_latency_seconds_count{integration="a"}"#),
        3.0
    );
    assert_eq!(
        v(r#"oncall_agent_delivery_latency_seconds_bucket{le="+Inf",integration="a"}"#),
        3.0
    );
    assert!(v(r#"oncall_agent_delivery_latency_seconds_sum{integration="a"}"#) > 0.0);
    // 5 requests spent (503, 429, 3 deliveries) of 300.
    assert_eq!(
        v(r#"oncall_agent_budget_remaining{scope="integration",integration="a"}"#),
        295.0
    );
    assert_eq!(v(r#"oncall_agent_budget_remaining{scope="org"}"#), 495.0);
    assert_eq!(
        v(r#"oncall_agent_paused{scope="integration",integration="a"}"#),
        0.0
    );
    assert_eq!(v(r#"oncall_agent_queue_alerts{integration="a"}"#), 0.0);
    assert_eq!(v("oncall_agent_dead_letters"), 0.0);
    assert!(v("oncall_agent_queue_max_bytes") > 0.0);

    // A refusal: dead-lettered counter and gauge move. Then OnCall goes down: depth, bytes and
    // the oldest alert's age show the backlog, and the 429 pause shows while it lasts.
    oncall.script([Reply::status(400, "\"Bad JSON\"")]);
    assert_eq!(d.post("a", r#"{"title":"refused"}"#).await.0, 202);
    assert!(
        wait_for(LONG, || async {
            metric(&d.metrics().await, "oncall_agent_dead_letters") == Some(1.0)
        })
        .await
    );
    oncall.set_default(Reply::status(429, INTEGRATION_429));
    assert_eq!(d.post("a", r#"{"title":"waits"}"#).await.0, 202);
    assert!(
        wait_for(LONG, || async {
            let m = d.metrics().await;
            metric(
                &m,
                r#"oncall_agent_paused{scope="integration",integration="a"}"#,
            ) == Some(1.0)
                && metric(&m, r#"oncall_agent_queue_alerts{integration="a"}"#) == Some(1.0)
        })
        .await,
        "{}",
        d.metrics().await
    );
    let m = d.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"oncall_agent_alerts_dead_lettered_total{integration="a"}"#
        ),
        Some(1.0)
    );
    assert!(metric(&m, r#"oncall_agent_queue_bytes{integration="a"}"#).unwrap() > 0.0);
    assert!(
        metric(
            &m,
            r#"oncall_agent_queue_oldest_age_seconds{integration="a"}"#
        )
        .is_some()
    );
}

/// Runs the CLI and returns (exit code, stdout, stderr).
fn run_cli(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = d.cli(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dead_ids(d: &Daemon) -> Vec<u64> {
    let (code, out, err) = run_cli(d, &["dead", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_show_retry_and_purge_through_the_cli() {
    let oncall = FakeOnCall::start(&["A"]).await;
    oncall.script((0..3).map(|_| Reply::status(400, "\"Bad JSON\"")));
    let d = Daemon::start(&format!(
        "{FAST}{}",
        integration("a", &oncall.url("formatted_webhook", "A"))
    ))
    .await;
    for n in 0..3 {
        assert_eq!(d.post("a", &format!(r#"{{"title":"d{n}"}}"#)).await.0, 202);
    }
    assert!(
        wait_for(LONG, || async {
            d.status().await["dead_letters"].as_u64() == Some(3)
        })
        .await
    );

    let (code, out, _) = run_cli(&d, &["dead", "list"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("Bad JSON").count(), 3, "{out}");
    assert!(out.contains("3 dead letters in all"), "{out}");
    let ids = dead_ids(&d);
    assert_eq!(ids.len(), 3);
    let (_, out, _) = run_cli(&d, &["dead", "list", "--integration", "nope", "--json"]);
    assert!(out.contains("\"dead_letters\": []"), "{out}");

    let (code, out, _) = run_cli(&d, &["dead", "show", &ids[0].to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("status:      400"), "{out}");
    assert!(out.contains("OnCall refused the alert with 400"), "{out}");
    assert!(out.contains(r#"{"title":"d"#), "{out}");
    let (code, _, err) = run_cli(&d, &["dead", "show", "999999"]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("no dead letter with id 999999"), "{err}");

    // OnCall takes them now (the script is used up). Retry one, then it is gone from dead.
    let (code, out, err) = run_cli(&d, &["dead", "retry", &ids[0].to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queued again"), "{out}");
    let (code, _, _) = run_cli(&d, &["dead", "retry", &ids[0].to_string()]);
    assert_eq!(code, 65, "a second retry of the same id queues nothing");
    assert_eq!(dead_ids(&d), ids[1..]);
    let (code, out, err) = run_cli(&d, &["dead", "retry", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 queued again, 0 left"), "{out}");
    assert!(wait_until(LONG, || oncall.accepted().len() == 3).await);
    let mut got = titles(&oncall, "A");
    got.sort();
    assert_eq!(got, ["d0", "d1", "d2"], "each retried alert goes out once");
    assert!(dead_ids(&d).is_empty());

    // Purge: by id, and by age (a fresh one is not 7 days old).
    oncall.script((0..2).map(|_| Reply::status(400, "\"Bad JSON\"")));
    for n in 0..2 {
        assert_eq!(d.post("a", &format!(r#"{{"title":"p{n}"}}"#)).await.0, 202);
    }
    assert!(wait_until(LONG, || dead_ids(&d).len() == 2).await);
    let ids = dead_ids(&d);
    let (code, out, _) = run_cli(&d, &["dead", "purge", &ids[0].to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("1 dead letters purged"), "{out}");
    let (_, out, _) = run_cli(&d, &["dead", "purge", "--older-than", "7d"]);
    assert!(out.contains("0 dead letters purged"), "{out}");
    assert_eq!(dead_ids(&d), [ids[1]]);
    let (code, out, _) = run_cli(&d, &["dead", "purge", "--older-than", "0s"]);
    assert_eq!(code, 0);
    assert!(out.contains("1 dead letters purged"), "{out}");
    assert!(dead_ids(&d).is_empty());
    assert_eq!(d.status().await["dead_letters"], 0);
    // Only the three retried alerts ever reached OnCall.
    assert_eq!(oncall.accepted().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_of_a_removed_integration_is_kept_and_not_retried() {
    let oncall = FakeOnCall::start(&["A"]).await;
    oncall.script([Reply::status(400, "\"Bad JSON\"")]);
    let a = integration("a", &oncall.url("formatted_webhook", "A"));
    let keep = integration("keep", &oncall.url("formatted_webhook", "A"));
    let d = Daemon::start(&format!("{FAST}{a}{keep}")).await;
    assert_eq!(d.post("a", r#"{"title":"x"}"#).await.0, 202);
    assert!(wait_until(LONG, || dead_ids(&d).len() == 1).await);
    d.write_config(&format!("{FAST}{keep}"));
    d.signal("HUP");
    assert!(d.wait_log("Configuration reloaded.", 1, LONG).await);
    let (code, _, err) = run_cli(&d, &["dead", "retry", "--all"]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("not configured"), "{err}");
    assert_eq!(dead_ids(&d).len(), 1, "kept, not dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_served_on_the_unix_socket_and_never_over_tcp() {
    let oncall = FakeOnCall::start(&["A"]).await;
    let d = Daemon::start(&integration("a", &oncall.url("formatted_webhook", "A"))).await;
    let client = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::GET, "/v1/dead"),
        (reqwest::Method::GET, "/v1/dead/1"),
        (reqwest::Method::POST, "/v1/dead/1/retry"),
        (reqwest::Method::POST, "/v1/dead/retry"),
        (reqwest::Method::DELETE, "/v1/dead/1"),
        (reqwest::Method::DELETE, "/v1/dead?older_than=0s"),
    ] {
        let r = client
            .request(method.clone(), format!("{}{path}", d.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path} over TCP");
    }
    let (code, body) = d.unix_request("GET", "/v1/dead");
    assert_eq!(code, 200, "{body}");
    // Metrics and status are on both.
    assert_eq!(d.unix_request("GET", "/metrics").0, 200);

    // A config without the socket: the CLI says where the admin API is.
    let tcp_only = d.dir.path().join("tcp-only.toml");
    std::fs::write(
        &tcp_only,
        format!(
            "state_dir = \"{}\"\n[listen]\ntcp = \"{}\"\n",
            d.state_dir().display(),
            d.tcp
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("--config")
        .arg(&tcp_only)
        .args(["dead", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only on the Unix socket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notify_ready_status_watchdog_and_stopping() {
    let oncall = FakeOnCall::start(&["A"]).await;
    let mut d = Daemon::prepare(|_| integration("a", &oncall.url("formatted_webhook", "A")));
    let notify_path = d.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // WATCHDOG_PID must be the daemon's: the shell sets its own pid, then becomes the daemon.
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$@\"")
        .arg("sh")
        .arg(bin())
        .args(["run", "--config"])
        .arg(&d.config_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "oncall_agent=debug,info");
    d.spawn_command(c).await;
    let recv = || {
        let mut buf = vec![0u8; 4096];
        let n = notify.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv();
    assert!(first.contains("READY=1"), "{first}");
    assert!(first.contains("STATUS=0 alerts queued"), "{first}");
    // Pings come every 100 ms (half of WATCHDOG_USEC), each with a STATUS line.
    let mut pings = 0;
    while pings < 5 {
        let m = recv();
        if m.contains("WATCHDOG=1") {
            assert!(m.contains("STATUS="), "{m}");
            pings += 1;
        }
    }
    d.signal("HUP");
    let mut seen = String::new();
    while !seen.contains("RELOADING=1") {
        seen = recv();
    }
    assert_eq!(d.stop(), Some(0));
    let mut stopping = false;
    while let Ok(n) = {
        let mut buf = vec![0u8; 4096];
        notify
            .recv(&mut buf)
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    } {
        if n.contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_an_alert_through_the_inherited_sockets() {
    let activate = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(activate).exists(),
        "{activate} is missing: apt-get install systemd"
    );
    let oncall = FakeOnCall::start(&["A"]).await;
    let mut d = Daemon::prepare(|_| integration("a", &oncall.url("formatted_webhook", "A")));
    std::fs::create_dir_all(d.socket.parent().unwrap()).unwrap();
    let mut c = Command::new(activate);
    c.arg("-l")
        .arg(&d.socket)
        .arg("-l")
        .arg(d.tcp.to_string())
        .args(["-E", "RUST_LOG=oncall_agent=debug,info", "--"])
        .arg(bin())
        .args(["run", "--config"])
        .arg(&d.config_path);
    // The first connection (the harness's /healthz over TCP) starts the daemon.
    d.spawn_command(c).await;
    assert!(
        d.wait_log("Using sockets passed by systemd.", 1, LONG)
            .await,
        "{}",
        d.logs()
    );
    let logs = d.logs();
    assert!(
        logs.contains("unix=true") && logs.contains("tcp=true"),
        "{logs}"
    );
    // The socket at the config's path is the inherited one: binding it again would have failed.
    let out = d.cli(&["send", "-i", "a", "--title", "via inherited socket"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.logs()
    );
    assert!(wait_until(LONG, || titles(&oncall, "A") == ["via inherited socket"]).await);
    let m = d.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"oncall_agent_alerts_received_total{source="unix",integration="a"}"#
        ),
        Some(1.0)
    );
    assert_eq!(d.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_auth_token_and_body_limit_to_the_listeners_live() {
    let oncall = FakeOnCall::start(&["A"]).await;
    let a = integration("a", &oncall.url("formatted_webhook", "A"));
    let d = Daemon::start(&format!("{FAST}{a}")).await;
    let post = |token: Option<&'static str>, body: String| {
        let mut r = reqwest::Client::new()
            .post(format!("{}/v1/integrations/a/alerts", d.base()))
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    // The harness appends to [listen]: these lines set its auth token.
    d.write_config(&format!(
        "auth_token = \"first-token-0123456789\"\n{FAST}[queue]\nmax_body = 1000\n{a}"
    ));
    d.signal("HUP");
    assert!(
        wait_for(LONG, || async {
            post(None, r#"{"title":"x"}"#.into()).await == 401
        })
        .await,
        "{}",
        d.logs()
    );
    assert_eq!(
        post(Some("first-token-0123456789"), r#"{"title":"t1"}"#.into()).await,
        202
    );
    let big = format!(r#"{{"title":"{}"}}"#, "x".repeat(2000));
    assert_eq!(post(Some("first-token-0123456789"), big).await, 413);

    // Rotating the token: the old one stops working, the new one works, nothing restarts.
    d.write_config(&format!(
        "auth_token = \"second-token-0123456789\"\n{FAST}{a}"
    ));
    d.signal("HUP");
    assert!(
        wait_for(LONG, || async {
            post(Some("first-token-0123456789"), r#"{"title":"x"}"#.into()).await == 401
        })
        .await
    );
    assert_eq!(
        post(Some("second-token-0123456789"), r#"{"title":"t2"}"#.into()).await,
        202
    );
    // The Unix socket never needed a token.
    assert_eq!(d.unix_request("GET", "/healthz").0, 200);
    assert!(
        wait_until(LONG, || {
            let mut t = titles(&oncall, "A");
            t.sort();
            t == ["t1", "t2"]
        })
        .await
    );
}

/// `oncall-agent run` that inherits `fd` as its one systemd socket (fd 3, LISTEN_FDS=1), the
/// way systemd hands over a socket unit's socket at each start.
fn with_inherited_socket(d: &Daemon, fd: std::os::fd::RawFd) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\"")
        .arg("sh")
        .arg(bin())
        .args(["run", "--config"])
        .arg(&d.config_path)
        .env("RUST_LOG", "oncall_agent=debug,info");
    // SAFETY: dup2 and fcntl are async-signal-safe; the child only execs after them.
    unsafe {
        c.pre_exec(move || {
            // When the held socket already is fd 3 (a test process with few files open),
            // dup2(3, 3) does nothing and fd 3 keeps its close-on-exec flag: clear it, or
            // the daemon gets no socket (it then binds itself, and this test hung).
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_an_inherited_socket_refuses_no_connection() {
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let oncall = FakeOnCall::start(&["A"]).await;
    let mut d = Daemon::prepare(|_| {
        format!(
            "{FAST}{}",
            integration("a", &oncall.url("formatted_webhook", "A"))
        )
    });
    // The test plays systemd: it holds the listening socket across the daemon's restart.
    let held = std::net::TcpListener::bind(d.tcp).unwrap();
    let c = with_inherited_socket(&d, held.as_raw_fd());
    d.spawn_command(c).await;
    assert!(
        d.wait_log("Using sockets passed by systemd.", 1, LONG)
            .await
    );

    let done = Arc::new(AtomicBool::new(false));
    let base = d.base();
    let sender = tokio::spawn({
        let done = done.clone();
        async move {
            // A new connection for every alert: each one must be answered, none refused.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut results = Vec::new();
            for n in 0..5000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let r = client
                    .post(format!("{base}/v1/integrations/a/alerts"))
                    .body(format!(r#"{{"title":"r{n}"}}"#))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string());
                results.push(r);
            }
            results
        }
    });
    assert!(wait_until(LONG, || oncall.accepted().len() >= 5).await);
    assert_eq!(
        tokio::task::block_in_place(|| d.stop()),
        Some(0),
        "{}",
        d.logs()
    );
    let before = oncall.accepted().len();
    let c = with_inherited_socket(&d, held.as_raw_fd());
    d.spawn_command(c).await;
    assert!(wait_until(LONG, || oncall.accepted().len() >= before + 5).await);
    done.store(true, Ordering::SeqCst);
    let results = sender.await.unwrap();
    let refused: Vec<_> = results.iter().filter(|r| **r != Ok(202)).collect();
    assert!(refused.is_empty(), "{refused:?}\n{}", d.logs());
    let sent = results.len();
    assert!(
        wait_until(LONG, || oncall.accepted().len() >= sent).await,
        "{} of {sent}",
        oncall.accepted().len()
    );
    let titles: BTreeSet<String> = titles(&oncall, "A").into_iter().collect();
    assert_eq!(titles.len(), sent, "every accepted alert arrives");
}

/// Defect: the token compare folded the length difference into 16 bits, so the token followed
/// by exactly 65,536 (or 131,072) more bytes was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_followed_by_65536_extra_bytes_is_refused() {
    let oncall = FakeOnCall::start(&["A"]).await;
    let a = integration("a", &oncall.url("formatted_webhook", "A"));
    // The harness waits for an unauthenticated /healthz: the token comes with a reload. It
    // appends to [listen], so this line sets the listener's token.
    let d = Daemon::start(&format!("{FAST}{a}")).await;
    d.write_config(&format!("auth_token = \"tok-0123456789abcdef\"\n{FAST}{a}"));
    d.signal("HUP");
    let post = |token: String| {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/integrations/a/alerts", d.base()))
            .bearer_auth(token)
            .body(r#"{"title":"x"}"#);
        async move { r.send().await.unwrap().status().as_u16() }
    };
    let token = "tok-0123456789abcdef";
    assert!(
        wait_for(LONG, || async { post("wrong".into()).await == 401 }).await,
        "{}",
        d.logs()
    );
    for extra in [65_536, 131_072, 1, 5_000] {
        let longer = format!("{token}{}", "A".repeat(extra));
        assert_eq!(post(longer).await, 401, "{extra} extra bytes");
    }
    assert_eq!(post(token.to_string()).await, 202);
}

/// A config of its own (the harness's puts extra lines inside [listen]): `top` goes before
/// [listen], `rest` after.
fn own_config(d: &Daemon, top: &str, rest: &str) {
    let text = format!(
        "state_dir = \"{}\"\n{top}\n[listen]\nunix = \"{}\"\ntcp = \"{}\"\n{rest}\n",
        d.state_dir().display(),
        d.socket.display(),
        d.tcp
    );
    std::fs::write(&d.config_path, text).unwrap();
}

/// Defect: a `shutdown_timeout` longer than the unit's TimeoutStopSec can hold was accepted,
/// so systemd could SIGKILL the agent in the middle of its stop.
#[test]
fn check_config_refuses_a_shutdown_timeout_the_unit_cannot_hold() {
    // The bound leaves the unit room for the final sync and exit.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/oncall-agent.service"
    ))
    .unwrap();
    let stop_sec = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("the unit sets TimeoutStopSec");
    let stop_sec = humantime::parse_duration(stop_sec.trim()).unwrap();
    let max = oncall_agent::config::MAX_SHUTDOWN_TIMEOUT;
    assert!(
        max + Duration::from_secs(10) <= stop_sec,
        "{max:?} vs {stop_sec:?}"
    );

    let d = Daemon::prepare(|_| String::new());
    let a = integration("a", &dead_end_url());
    own_config(&d, "shutdown_timeout = \"40s\"", &a);
    let (code, _, err) = run_cli(&d, &["check-config"]);
    assert_eq!(code, 78, "{err}");
    let want = format!("{}: shutdown_timeout: ", d.config_path.display());
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("TimeoutStopSec"), "{err}");
    own_config(&d, "shutdown_timeout = \"30s\"", &a);
    let (code, _, err) = run_cli(&d, &["check-config"]);
    assert_eq!(code, 0, "{err}");
}

/// Defect: the stop gave each of its three stages (listeners, writer, deliveries) the whole
/// `shutdown_timeout`, so it could take three times as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_stop_takes_one_shutdown_timeout_not_one_per_stage() {
    use std::io::Write;
    let oncall = FakeOnCall::start(&["A"]).await;
    // A delivery stays in flight: OnCall answers after a minute.
    oncall.set_default(Reply {
        delay: Duration::from_secs(60),
        ..Reply::ok()
    });
    let a = integration("a", &oncall.url("formatted_webhook", "A"));
    let mut d = Daemon::prepare(|_| String::new());
    own_config(
        &d,
        "shutdown_timeout = \"3s\"",
        &format!("body_timeout = \"60s\"\n[delivery]\ntimeout = \"50s\"\n{a}"),
    );
    d.spawn().await;
    assert_eq!(d.post("a", r#"{"title":"slow"}"#).await.0, 202);
    assert!(
        wait_until(LONG, || oncall.all().len() == 1).await,
        "{}",
        d.logs()
    );
    // A request whose body never ends: its connection, and the Ingest handle its handler
    // holds, outlive the listeners' share of the stop (and keep the writer open).
    let mut slow = std::net::TcpStream::connect(d.tcp).unwrap();
    slow.write_all(
        b"POST /v1/integrations/a/alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    )
    .unwrap();
    // Connections are accepted in order: once a later one is answered, the slow one is in.
    assert!(d.post("a", r#"{"title":"later"}"#).await.0 == 202);
    let started = std::time::Instant::now();
    let code = d.stop();
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{}", d.logs());
    // 3 s, plus room for a loaded machine; three stages of 3 s each would be 9 s.
    assert!(took < Duration::from_secs(6), "{took:?}\n{}", d.logs());
    drop(slow);
}

/// A TCP server that accepts connections and never answers (an OnCall API that hangs), and
/// how many connections it took.
async fn black_hole() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, n)
}

/// Waits up to 20 s for `child` to exit; its exit code and how long it took.
fn wait_exit(child: &mut std::process::Child) -> (Option<i32>, Duration) {
    let started = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st.code(), started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return (None, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Also seen: resolving `id`/`api_name` integrations blocked the main loop, so a SIGTERM
/// waited for a slow OnCall API, at start and on reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_wins_over_a_hanging_oncall_api_at_start_and_on_reload() {
    let (api, hits) = black_hole().await;
    let hits_now = || hits.load(std::sync::atomic::Ordering::SeqCst);
    let api_section = format!("[api]\nurl = \"http://{api}\"\ntoken = \"APIKEY-0123\"\n");
    let by_id = "[[integration]]\nname = \"db\"\nid = \"CFRPV98RPR1U8\"\n";
    let slow = "[delivery]\ntimeout = \"30s\"\n";

    // At start: the daemon asks the API before it is ready.
    let d = Daemon::prepare(|_| String::new());
    own_config(&d, "", &format!("{slow}{api_section}{by_id}"));
    let log = std::fs::File::create(d.dir.path().join("start.log")).unwrap();
    let mut child = d
        .command()
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(d.dir.path().join("start.log")).unwrap_or_default();
    assert!(wait_until(LONG, || hits_now() >= 1).await, "{}", logs());
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let (code, took) = wait_exit(&mut child);
    assert_eq!(code, Some(0), "{took:?}\n{}", logs());
    assert!(took < Duration::from_secs(5), "{took:?}\n{}", logs());

    // On reload: the daemon runs, then a reload adds an integration given by id.
    let before = hits_now();
    let oncall = FakeOnCall::start(&["A"]).await;
    let a = integration("a", &oncall.url("formatted_webhook", "A"));
    let mut d = Daemon::prepare(|_| String::new());
    own_config(&d, "", &format!("{slow}{api_section}{a}"));
    d.spawn().await;
    own_config(&d, "", &format!("{slow}{api_section}{a}{by_id}"));
    d.signal("HUP");
    assert!(
        wait_until(LONG, || hits_now() > before).await,
        "{}",
        d.logs()
    );
    let started = std::time::Instant::now();
    let code = d.stop();
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{}", d.logs());
    assert!(took < Duration::from_secs(5), "{took:?}\n{}", d.logs());
}
