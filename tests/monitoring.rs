//! Watching the agent: the monitoring kit in monitoring/, checked by the real programs its
//! users run (promtool checks and unit-tests the alerting rules; a real Prometheus scraping the
//! real agent, delivering to the fake OnCall, answers every query of the Grafana dashboard),
//! and `status --watch`, through a pipe and on a real terminal (tmux).
//!
//! promtool and prometheus come from the Debian package `prometheus`, tmux from `tmux`
//! (.ci/run installs both). Without them these tests fail and say so: passing without checking
//! anything would hide a broken rule file from CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(60);

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

/// The path of `program` on PATH, or a panic that says how to get it.
fn required(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` is not installed: these tests check monitoring/ with the real \
                 program. Install the Debian package `prometheus` (apt-get install prometheus), \
                 as .ci/run does."
            )
        })
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(required(program))
        .args(args)
        .current_dir(monitoring())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let check = run("promtool", &["check", "rules", "oncall-agent.rules.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let test = run(
        "promtool",
        &["test", "rules", "oncall-agent.rules.test.yml"],
    );
    assert!(test.contains("SUCCESS"), "{test}");
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alerting_rule_has_a_summary_a_unit_test_and_a_runbook_section_in_the_readme() {
    let rules = std::fs::read_to_string(monitoring().join("oncall-agent.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(monitoring().join("oncall-agent.rules.test.yml")).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let anchors: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    // Active rules only: commented placeholders start with `#`.
    let blocks: Vec<&str> = rules.split("\n      - alert: ").skip(1).collect();
    assert!(blocks.len() >= 6, "{rules}");
    for block in blocks {
        let name = block.lines().next().unwrap().trim();
        let body: String = block
            .lines()
            .take_while(|l| !l.trim_start().starts_with("# Fleet"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(body.contains("summary: "), "{name} has no summary");
        let runbook = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook: "))
            .unwrap_or_else(|| panic!("{name} has no runbook line"));
        let target = runbook.trim_matches('"');
        let section = target
            .strip_prefix("README.md#")
            .unwrap_or_else(|| panic!("{name}'s runbook {target} is not a README section"));
        assert!(
            anchors.iter().any(|a| a == section),
            "{name}'s runbook points at README.md#{section}, which no heading makes"
        );
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no unit test in oncall-agent.rules.test.yml"
        );
    }
}

/// A child process killed when dropped, so a failing test leaves no Prometheus behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One instant query through Prometheus's HTTP API: the `data.result` array, or the error.
async fn query(prom: &str, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let url = reqwest::Url::parse_with_params(&format!("{prom}/api/v1/query"), [("query", expr)])
        .unwrap();
    let r = reqwest::get(url).await.map_err(|e| e.to_string())?;
    let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The first sample's value of `expr`, if it has one.
async fn value(prom: &str, expr: &str) -> Option<f64> {
    let r = query(prom, expr).await.ok()?;
    r.first()?["value"][1].as_str()?.parse().ok()
}

/// A dashboard query as Grafana would send it with these variable values. `$__rate_interval`
/// is Grafana's "at least four scrape intervals": with a 1 s scrape, 20 s leaves room for the
/// scrapes a loaded machine delays.
fn expand(expr: &str, integration: &str) -> String {
    expr.replace("$__rate_interval", "20s")
        .replace("$job", "oncall-agent")
        .replace("$instance", ".*")
        .replace("$integration", integration)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus_scraping_the_agent() {
    let prometheus = required("prometheus");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring().join("grafana-dashboard.json")).unwrap(),
    )
    .expect("grafana-dashboard.json is JSON");

    let oncall = FakeOnCall::start(&["A"]).await;
    let d = Daemon::start(&integration("a", &oncall.url("formatted_webhook", "A"))).await;
    let sent = 5;
    for n in 0..sent {
        assert_eq!(d.post("a", &format!(r#"{{"title":"t{n}"}}"#)).await.0, 202);
    }
    assert!(
        wait_until(LONG, || oncall.accepted().len() == sent).await,
        "{}",
        d.logs()
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: oncall-agent\n    static_configs:\n      - targets: [\"{}\"]\n",
            d.tcp
        ),
    )
    .unwrap();
    let web = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Reaped(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://{web}");
    let prom_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // Scraped several times since the deliveries: every rate() has two samples to work with.
    let scraped = wait_for(LONG, || async {
        value(
            &prom,
            r#"count_over_time(oncall_agent_alerts_delivered_total{job="oncall-agent",integration="a"}[1m])"#,
        )
        .await
        .is_some_and(|n| n >= 3.0)
    })
    .await;
    assert!(
        scraped,
        "Prometheus did not scrape the agent:\n{}",
        prom_log()
    );
    assert_eq!(
        value(
            &prom,
            r#"oncall_agent_alerts_delivered_total{job="oncall-agent",integration="a"}"#
        )
        .await,
        Some(sent as f64),
        "Prometheus sees the agent's deliveries"
    );

    let mut checked = 0;
    let mut failures = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            // "All" (Grafana's allValue) and one chosen integration.
            for integration in [".*", "a"] {
                let q = expand(expr, integration);
                checked += 1;
                match query(&prom, &q).await {
                    Ok(r) if r.is_empty() => failures.push(format!("{title}: no data for {q}")),
                    Ok(_) => {}
                    Err(e) => failures.push(format!("{title}: {q} failed: {e}")),
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} queries in the dashboard");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The variables' queries (`label_values(series, label)`) find their values too.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {} has an unexpected query {q}", var["name"]));
        let (series, label) = inner.rsplit_once(',').unwrap();
        let series = expand(series.trim(), ".*");
        let r = query(&prom, &series).await.unwrap();
        let values: Vec<&str> = r
            .iter()
            .filter_map(|s| s["metric"][label.trim()].as_str())
            .collect();
        assert!(
            !values.is_empty(),
            "variable {}: no {label} in {series}",
            var["name"]
        );
        if var["name"] == "integration" {
            assert_eq!(values, ["a"]);
        }
    }
}

/// Reads a child's stdout on a thread into a shared string, so a test can wait on what it
/// printed with a deadline.
fn capture(out: impl std::io::Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::BufRead;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let t = text.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let mut t = t.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_redraws_says_daemon_unreachable_while_it_is_away_and_exits_0_on_ctrl_c() {
    let oncall = FakeOnCall::start(&["A"]).await;
    let mut d = Daemon::start(&integration("db", &oncall.url("formatted_webhook", "A"))).await;
    let mut watch = Reaped(
        Command::new(bin())
            .arg("--config")
            .arg(&d.config_path)
            .args(["status", "--watch", "--interval", "200ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let text = capture(watch.0.stdout.take().unwrap());
    let shown = || text.lock().unwrap().clone();
    const HEADER: &str = "Every 200ms: oncall-agent status";
    // Frames from `from` on (in bytes of the output so far) that show the table.
    let tables_after = |from: usize| {
        let t = shown();
        t[from..]
            .split(HEADER)
            .filter(|f| f.contains("INTEGRATION") && f.contains("\ndb "))
            .count()
    };

    assert!(
        wait_until(LONG, || tables_after(0) >= 3).await,
        "status --watch did not redraw the table:\n{}",
        shown()
    );

    d.kill9();
    let gone = shown().len();
    assert!(
        wait_until(LONG, || shown()[gone..].contains("daemon unreachable: ")).await,
        "no \"daemon unreachable\" while the daemon is away:\n{}",
        &shown()[gone..]
    );
    assert!(
        watch.0.try_wait().unwrap().is_none(),
        "status --watch ended when the daemon went away"
    );

    d.spawn().await;
    let back = shown().len();
    assert!(
        wait_until(LONG, || tables_after(back) >= 2).await,
        "status --watch did not show the daemon again once it came back:\n{}",
        &shown()[back..]
    );

    let st = Command::new("kill")
        .args(["-INT", &watch.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut code = None;
    assert!(
        wait_until(LONG, || {
            code = watch.0.try_wait().unwrap().map(|s| s.code());
            code.is_some()
        })
        .await,
        "status --watch did not stop on SIGINT"
    );
    assert_eq!(code, Some(Some(0)), "Ctrl-C ends the watch cleanly");
}

/// tmux on a private socket (`-L`), so the test neither sees nor touches anyone's sessions.
fn tmux(socket: &str, args: &[&str]) -> String {
    let out = Command::new(required("tmux"))
        .args(["-L", socket])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills the private tmux server when dropped.
struct TmuxServer(String);

impl Drop for TmuxServer {
    fn drop(&mut self) {
        tmux(&self.0, &["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_on_a_terminal_redraws_in_place_and_ctrl_c_exits_0() {
    let oncall = FakeOnCall::start(&["A"]).await;
    let d = Daemon::start(&integration("db", &oncall.url("formatted_webhook", "A"))).await;
    let server = TmuxServer(format!("oncall-agent-test-{}", std::process::id()));
    // Ctrl-C reaches the whole foreground group: the shell traps it (its children get the
    // default action back) so that it lives on to print the watch's exit status, and `read`
    // keeps the pane open to be read.
    let script = format!(
        "trap 'true' INT; '{}' --config '{}' status --watch -n 200ms; echo \"watch exited $?\"; read x",
        bin(),
        d.config_path.display()
    );
    tmux(
        &server.0,
        &[
            "new-session",
            "-d",
            "-s",
            "w",
            "-x",
            "150",
            "-y",
            "40",
            "sh",
            "-c",
            &script,
        ],
    );
    let screen = || tmux(&server.0, &["capture-pane", "-p", "-t", "w"]);
    let uptime = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("oncall-agent ")?.split(" up ").nth(1))
            .map(|r| r.split('s').next().unwrap_or_default().to_string())
    };
    let first = wait_until(LONG, || uptime(&screen()).is_some()).await;
    assert!(first, "no table on the terminal:\n{}", screen());
    let before = uptime(&screen());
    // Redrawn in place: a later frame (a larger uptime) and still one header on the screen.
    assert!(
        wait_until(LONG, || uptime(&screen()) != before).await,
        "the screen was not redrawn:\n{}",
        screen()
    );
    let s = screen();
    assert_eq!(s.matches("oncall-agent status").count(), 1, "{s}");
    assert_eq!(s.matches("INTEGRATION").count(), 1, "{s}");

    tmux(&server.0, &["send-keys", "-t", "w", "C-c"]);
    assert!(
        wait_until(LONG, || screen().contains("watch exited 0")).await,
        "Ctrl-C did not end the watch cleanly:\n{}",
        screen()
    );
}
