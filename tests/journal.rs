//! The journal source, end to end: the real daemon runs the real `journalctl` on a real journal
//! file that `systemd-journal-remote` writes from export-format input (no running journald),
//! and delivers to a fake OnCall; kill -9 and restarts happen for real.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;

const FAST: &str = "[delivery]\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\nprobe_interval = \"1s\"\ntimeout = \"2s\"\n";
const WAIT: Duration = Duration::from_secs(30);
const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// One journal entry to write.
#[derive(Clone)]
struct Entry {
    unit: Option<&'static str>,
    identifier: &'static str,
    priority: u8,
    message: String,
    /// Extra fields, e.g. ("_PID", "1").
    extra: Vec<(&'static str, String)>,
    /// Its `_BOOT_ID`.
    boot: &'static str,
}

const BOOT_A: &str = "0123456789abcdef0123456789abcdef";
const BOOT_B: &str = "fedcba9876543210fedcba9876543210";

fn entry(unit: &'static str, priority: u8, message: impl Into<String>) -> Entry {
    Entry {
        unit: Some(unit),
        identifier: unit.trim_end_matches(".service"),
        priority,
        message: message.into(),
        extra: Vec::new(),
        boot: BOOT_A,
    }
}

/// Realtime stamps, increasing across every write of the test binary.
static CLOCK: AtomicU64 = AtomicU64::new(1_764_770_000_000_000);

/// Appends `entries` to the journal file `path` (created if absent) through
/// systemd-journal-remote, as journald would have written them.
fn write_journal(path: &Path, entries: &[Entry]) {
    let mut export = Vec::new();
    for e in entries {
        let t = CLOCK.fetch_add(1000, Ordering::SeqCst);
        let mut fields = vec![
            ("__REALTIME_TIMESTAMP", t.to_string()),
            (
                "__MONOTONIC_TIMESTAMP",
                (t - 1_764_000_000_000_000).to_string(),
            ),
            ("_BOOT_ID", e.boot.to_string()),
            ("_HOSTNAME", "box1".to_string()),
            ("PRIORITY", e.priority.to_string()),
            ("SYSLOG_IDENTIFIER", e.identifier.to_string()),
        ];
        if let Some(u) = e.unit {
            fields.push(("_SYSTEMD_UNIT", u.to_string()));
        }
        fields.extend(e.extra.iter().cloned());
        for (k, v) in fields {
            writeln!(export, "{k}={v}").unwrap();
        }
        // MESSAGE in the binary form: any bytes, newlines included.
        export.extend_from_slice(b"MESSAGE\n");
        export.extend_from_slice(&(e.message.len() as u64).to_le_bytes());
        export.extend_from_slice(e.message.as_bytes());
        export.extend_from_slice(b"\n\n");
    }
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg("-o")
        .arg(path)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{JOURNAL_REMOTE}: {e} (apt-get install systemd-journal-remote)")
        });
    child.stdin.take().unwrap().write_all(&export).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "systemd-journal-remote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One entry no source here reads (priority debug): journalctl 252 will not follow a journal
/// without any entry ("No such boot ID in journal").
fn seed() -> Vec<Entry> {
    vec![entry("seed.service", 7, "the journal's first entry")]
}

/// Entries numbered `from..from + count` of `unit` at priority err: "entry N".
fn numbered(unit: &'static str, from: usize, count: usize) -> Vec<Entry> {
    (from..from + count)
        .map(|n| entry(unit, 3, format!("entry {n}")))
        .collect()
}

/// Integration "a" at `oncall`, no budget in the way, and `sources` appended.
fn config(oncall: &FakeOnCall, sources: &str) -> String {
    format!(
        "{FAST}{NO_LIMITS}{}{sources}",
        integration("a", &oncall.url("formatted_webhook", "T"))
    )
}

fn journal_source(file: &Path, extra: &str) -> String {
    format!(
        "[[source]]\ntype = \"journal\"\nintegration = \"a\"\njournal_file = \"{}\"\n{extra}\n",
        file.display()
    )
}

/// The N of "entry N" in every title given.
fn ns<'a>(titles: impl IntoIterator<Item = &'a serde_json::Value>) -> Vec<i64> {
    titles
        .into_iter()
        .filter_map(|t| t.as_str()?.strip_prefix("entry ")?.parse().ok())
        .collect()
}

fn delivered_ns(oncall: &FakeOnCall) -> Vec<i64> {
    let bodies: Vec<serde_json::Value> = oncall.accepted().into_iter().map(|r| r.body).collect();
    ns(bodies.iter().map(|b| &b["title"]))
}

/// Waits until the first source's journalctl runs (status shows it).
async fn wait_running(d: &Daemon) {
    assert!(
        wait_for(WAIT, || async {
            d.status().await["sources"][0]["files"] == 1
        })
        .await,
        "{}\n{}",
        d.status().await,
        d.logs()
    );
}

/// Pids of running journalctl processes whose command line mentions `needle`.
fn journalctl_pids(needle: &Path) -> Vec<u32> {
    let needle = needle.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        // A zombie has an empty command line: it is gone.
        if cmd.contains("journalctl") && cmd.contains(&needle) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_become_alerts_with_title_uid_and_fields_and_matches_filter() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start_with(|dir| {
        // Old entries: start_at = "end" (the default) leaves them.
        write_journal(&dir.join("j.journal"), &numbered("nginx.service", 100, 3));
        config(
            &oncall,
            &journal_source(
                &dir.join("j.journal"),
                "units = [\"nginx\"]\nidentifiers = [\"kernel\"]\npriority = \"err\"",
            ),
        )
    })
    .await;
    let file = d.dir.path().join("j.journal");
    wait_running(&d).await;
    let mut by_systemd = entry(
        "init.scope",
        4,
        "nginx.service: Failed with result 'exit-code'.",
    );
    by_systemd.priority = 3;
    by_systemd.identifier = "systemd";
    by_systemd.extra = vec![("_PID", "1".into()), ("UNIT", "nginx.service".into())];
    let kernel = Entry {
        unit: None,
        identifier: "kernel",
        priority: 2,
        message: "EXT4-fs error (device sda1): bad block".into(),
        extra: Vec::new(),
        boot: BOOT_A,
    };
    write_journal(
        &file,
        &[
            entry(
                "nginx.service",
                3,
                "upstream timed out\nwhile reading the header",
            ),
            // Too low a priority.
            entry("nginx.service", 6, "GET / 200"),
            // Another unit.
            entry("cron.service", 2, "cron is unwell"),
            kernel,
            by_systemd,
        ],
    );
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 3).await,
        "{:?}\n{}",
        oncall.accepted(),
        d.logs()
    );
    assert!(!wait_until(Duration::from_millis(500), || oncall.accepted().len() > 3).await);
    // Alerts of different groups may be delivered in parallel: found by title.
    let by_title = |t: &str| {
        oncall
            .accepted()
            .into_iter()
            .find(|r| r.body["title"] == t)
            .map(|r| r.body)
            .unwrap_or_else(|| panic!("no alert titled {t:?}: {:?}", oncall.accepted()))
    };
    let nginx = by_title("upstream timed out");
    assert_eq!(nginx["alert_uid"], "journal:nginx.service");
    assert_eq!(nginx["state"], "alerting");
    let m = nginx["message"].as_str().unwrap();
    for part in [
        "upstream timed out\nwhile reading the header",
        "host: box1",
        "unit: nginx.service",
        "priority: 3 (err)",
        "time: 2025-12-03T",
    ] {
        assert!(m.contains(part), "{part:?} in {m}");
    }
    let kernel = by_title("EXT4-fs error (device sda1): bad block");
    assert_eq!(kernel["alert_uid"], "journal:kernel");
    // systemd's message about the unit is grouped with the unit's own.
    let by_systemd = by_title("nginx.service: Failed with result 'exit-code'.");
    assert_eq!(by_systemd["alert_uid"], "journal:nginx.service");
    assert_eq!(oncall.accepted()[0].kind, "formatted_webhook");

    let st = d.status().await;
    let src = &st["sources"][0];
    assert_eq!(src["kind"], "journal", "{st}");
    assert_eq!(src["path"], "a", "{st}");
    assert_eq!(src["alerts_total"], 3, "{st}");
    assert!(src["last_error"].is_null(), "{st}");
    let text = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("source journal a: journalctl running, 3 alerts queued"),
        "{text}"
    );
    assert!(
        metric(
            &d.metrics().await,
            "oncall_agent_alerts_received_total{source=\"journal\",integration=\"a\"}"
        )
        .is_some_and(|v| v == 3.0),
        "{}",
        d.metrics().await
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_fields_split_a_units_alerts_into_groups() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| {
        write_journal(&dir.join("j.journal"), &seed());
        config(
            &oncall,
            &journal_source(
                &dir.join("j.journal"),
                "uid_fields = [\"MESSAGE\"]\nstart_at = \"beginning\"",
            ),
        )
    })
    .await;
    write_journal(
        &d.dir.path().join("j.journal"),
        &[
            entry("db.service", 3, "disk full"),
            entry("db.service", 3, "replica lag"),
            entry("db.service", 3, "disk full"),
        ],
    );
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 3).await,
        "{}",
        d.logs()
    );
    // Alerts of different groups may be delivered in parallel: compared by title.
    let mut uids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in oncall.accepted() {
        uids.entry(r.body["title"].as_str().unwrap().to_string())
            .or_default()
            .push(r.body["alert_uid"].as_str().unwrap().to_string());
    }
    let full = &uids["disk full"];
    assert_eq!(full.len(), 2);
    assert_eq!(full[0], full[1]);
    assert_ne!(full[0], uids["replica lag"][0]);
    assert!(full[0].starts_with("journal:db.service:"), "{uids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_at_the_end_misses_nothing_written_after_it_even_across_kill_9() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start_with(|dir| {
        write_journal(&dir.join("j.journal"), &numbered("app.service", 100, 5));
        config(&oncall, &journal_source(&dir.join("j.journal"), ""))
    })
    .await;
    let file = d.dir.path().join("j.journal");
    wait_running(&d).await;
    // Killed before any new entry was read: the starting point was saved all the same.
    d.kill9();
    write_journal(&file, &numbered("app.service", 0, 3));
    d.spawn().await;
    assert!(
        wait_until(WAIT, || oncall.accepted().len() >= 3).await,
        "{}",
        d.logs()
    );
    assert!(!wait_until(Duration::from_millis(500), || oncall.accepted().len() > 3).await);
    assert_exactly_once(&delivered_ns(&oncall), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_survives_restarts_and_kill_9_neither_losing_nor_repeating_an_entry() {
    let oncall = FakeOnCall::start(&["T"]).await;
    // OnCall refuses everything: whatever was read stays in the queue, where it is counted.
    oncall.set_default(Reply::status(503, "down"));
    let per_round = 3000;
    let mut d = Daemon::start_with(|dir| {
        write_journal(
            &dir.join("j.journal"),
            &numbered("app.service", 0, per_round),
        );
        config(
            &oncall,
            &journal_source(&dir.join("j.journal"), "start_at = \"beginning\""),
        )
    })
    .await;
    let file = d.dir.path().join("j.journal");
    let mut total = per_round;
    for round in 1..=4u64 {
        // Killed while reading (or just after), then more entries written while it is down.
        let at = total as u64 - per_round as u64 / 2;
        let reached = wait_for(Duration::from_secs(60), || async { d.depth().await >= at }).await;
        assert!(
            reached,
            "round {round}: depth {}\n{}",
            d.depth().await,
            d.logs()
        );
        if round == 3 {
            // A clean stop too.
            assert_eq!(d.stop(), Some(0));
        } else {
            d.kill9();
        }
        write_journal(&file, &numbered("app.service", total, per_round));
        total += per_round;
        d.spawn().await;
    }
    assert!(
        wait_for(Duration::from_secs(60), || async {
            d.depth().await >= total as u64
        })
        .await,
        "depth {} of {total}\n{}",
        d.depth().await,
        d.logs()
    );
    d.stop();
    let queued = d.queued("a");
    assert_exactly_once(&ns(queued.iter().map(|v| &v["title"])), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_longer_than_max_line_becomes_a_dead_letter_and_reading_goes_on() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start_with(|dir| {
        write_journal(&dir.join("j.journal"), &seed());
        config(
            &oncall,
            &journal_source(
                &dir.join("j.journal"),
                "start_at = \"beginning\"\nmax_line = \"2KiB\"",
            ),
        )
    })
    .await;
    let file = d.dir.path().join("j.journal");
    wait_running(&d).await;
    write_journal(
        &file,
        &[
            entry("app.service", 3, "entry 0"),
            entry("app.service", 3, format!("huge {}", "x".repeat(100_000))),
            entry("app.service", 3, "entry 1"),
        ],
    );
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 2).await,
        "{}",
        d.logs()
    );
    let st = d.status().await;
    assert_eq!(st["dead_letters"], 1, "{st}");
    assert_eq!(st["sources"][0]["refused_total"], 1, "{st}");
    // Read past, not again after a restart.
    d.stop();
    let dead = d.open_queue().dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("longer than max_line (2048)")
            && dead[0].reason.contains("journalctl --cursor='s="),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].payload.len(), 4096);
    d.spawn().await;
    write_journal(&file, &[entry("app.service", 3, "entry 2")]);
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 3).await,
        "{}",
        d.logs()
    );
    assert_eq!(d.status().await["dead_letters"], 1);
    assert_exactly_once(&delivered_ns(&oncall), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_journal_file_or_journalctl_is_reported_once_and_recovers() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| {
        std::fs::create_dir(dir.join("bin")).unwrap();
        config(
            &oncall,
            &format!(
                "{}name = \"no-file\"\nstart_at = \"beginning\"\n{}name = \"no-binary\"\nstart_at = \"beginning\"\njournalctl = \"{}\"\n",
                journal_source(&dir.join("later.journal"), ""),
                journal_source(&dir.join("other.journal"), ""),
                dir.join("bin/journalctl").display()
            ),
        )
    })
    .await;
    let dir = d.dir.path().to_path_buf();
    let by_name = |st: &serde_json::Value, name: &str| -> serde_json::Value {
        st["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["path"] == name)
            .cloned()
            .unwrap_or_default()
    };
    // Both failing, each said once although journalctl is tried again and again.
    assert!(
        d.wait_log("journalctl failed again", 4, WAIT).await,
        "{}",
        d.logs()
    );
    assert_eq!(
        d.logs().matches("Journal entries cannot be read").count(),
        2,
        "{}",
        d.logs()
    );
    let st = d.status().await;
    let no_file = by_name(&st, "no-file")["last_error"].to_string();
    assert!(
        no_file.contains("journalctl exited with status 1")
            && no_file.contains("No such file or directory"),
        "{st}"
    );
    let no_binary = by_name(&st, "no-binary")["last_error"].to_string();
    assert!(
        no_binary.contains("cannot start") && no_binary.contains("bin/journalctl"),
        "{st}"
    );
    let text = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("source journal no-file: journalctl not running")
            && text.contains("last error: journalctl exited with status 1"),
        "{text}"
    );

    // The file appears, and so does the program: both recover.
    write_journal(&dir.join("later.journal"), &numbered("app.service", 0, 2));
    write_journal(&dir.join("other.journal"), &numbered("app.service", 2, 2));
    let journalctl = which("journalctl");
    std::os::unix::fs::symlink(&journalctl, dir.join("bin/journalctl")).unwrap();
    assert!(
        wait_until(Duration::from_secs(90), || oncall.accepted().len() == 4).await,
        "{}\n{}",
        d.status().await,
        d.logs()
    );
    assert_exactly_once(&delivered_ns(&oncall), 4);
    assert!(
        d.wait_log("journalctl runs again", 2, WAIT).await,
        "{}",
        d.logs()
    );
    let st = d.status().await;
    assert!(by_name(&st, "no-file")["last_error"].is_null(), "{st}");
    assert!(by_name(&st, "no-binary")["last_error"].is_null(), "{st}");
}

fn which(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journalctl_ends_with_the_agent_on_stop_and_on_kill_9() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start_with(|dir| {
        write_journal(&dir.join("j.journal"), &seed());
        config(&oncall, &journal_source(&dir.join("j.journal"), ""))
    })
    .await;
    let file = d.dir.path().join("j.journal");
    wait_running(&d).await;
    // One journalctl at a time; "running" is reported as it starts, and a catch-up run may be
    // ending just then, so this waits for the one that follows.
    assert!(
        wait_until(WAIT, || journalctl_pids(&file).len() == 1).await,
        "{:?}",
        journalctl_pids(&file)
    );
    assert_eq!(d.stop(), Some(0));
    assert!(
        wait_until(WAIT, || journalctl_pids(&file).is_empty()).await,
        "{:?}",
        journalctl_pids(&file)
    );
    d.spawn().await;
    wait_running(&d).await;
    // One journalctl at a time; "running" is reported as it starts, and a catch-up run may be
    // ending just then, so this waits for the one that follows.
    assert!(
        wait_until(WAIT, || journalctl_pids(&file).len() == 1).await,
        "{:?}",
        journalctl_pids(&file)
    );
    d.kill9();
    assert!(
        wait_until(WAIT, || journalctl_pids(&file).is_empty()).await,
        "journalctl outlived a kill -9 of the agent: {:?}",
        journalctl_pids(&file)
    );
}

/// The shell script of `systemd/oncall-agent-notify@.service`'s ExecStart, as systemd hands it
/// to sh: continuation lines joined, `$$` and `%%` undoubled, `\\` unescaped, and the agent's
/// path pointed at the binary under test.
fn notify_script() -> String {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/oncall-agent-notify@.service"),
    )
    .unwrap();
    let start = unit.find("\nExecStart=").expect("an ExecStart") + 1;
    let mut joined = String::new();
    for line in unit[start..].lines() {
        match line.strip_suffix('\\') {
            Some(l) => {
                joined.push_str(l);
                joined.push(' ');
            }
            None => {
                joined.push_str(line);
                break;
            }
        }
    }
    let value = joined.strip_prefix("ExecStart=/bin/sh -c '").unwrap();
    let end = value.rfind("' ").unwrap();
    assert_eq!(
        value[end + 1..].split_whitespace().collect::<Vec<_>>(),
        ["oncall-agent-notify", "%i"]
    );
    value[..end]
        .replace("$$", "$")
        .replace("%%", "%")
        .replace("\\\\", "\\")
        .replace("/usr/bin/oncall-agent", bin())
}

/// Runs the notify script for `unit` as systemd would, with `env` (MONITOR_*), a fake
/// `journalctl` that prints its arguments and a fake `systemctl` that answers from
/// FAKE_FAILED and FAKE_RESULT.
fn run_notify(d: &Daemon, unit: &str, env: &[(&str, &str)]) -> std::process::Output {
    let fake = d.dir.path().join("fakebin");
    if !fake.exists() {
        std::fs::create_dir(&fake).unwrap();
        let write_exe = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = fake.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write_exe(
            "journalctl",
            "#!/bin/sh\necho \"journalctl $*\"\necho 'line one of the run'\necho 'line two of the run'\n",
        );
        write_exe(
            "systemctl",
            "#!/bin/sh\ncase \"$1\" in\n  is-failed) [ -n \"$FAKE_FAILED\" ] ;;\n  show) echo \"$FAKE_RESULT\" ;;\nesac\n",
        );
        std::fs::create_dir(d.dir.path().join("notify-state")).unwrap();
    }
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("/bin/sh");
    c.args(["-c", &notify_script(), "oncall-agent-notify", unit])
        .env_clear()
        .env("PATH", path)
        .env("ONCALL_AGENT_CONFIG", &d.config_path)
        .env("ONCALL_AGENT_NOTIFY_INTEGRATION", "a")
        .env("STATE_DIRECTORY", d.dir.path().join("notify-state"));
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_template_sends_a_failure_with_its_journal_lines_and_one_recovery() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start(&config(&oncall, "")).await;
    let failed = [
        ("MONITOR_SERVICE_RESULT", "exit-code"),
        ("MONITOR_EXIT_CODE", "exited"),
        ("MONITOR_EXIT_STATUS", "1"),
        ("MONITOR_INVOCATION_ID", "0f1e2d3c"),
    ];
    run_notify(&d, "nginx.service", &failed);
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 1).await,
        "{}",
        d.logs()
    );
    let a = oncall.accepted()[0].body.clone();
    assert_eq!(a["title"], "nginx.service failed (exit-code)");
    assert_eq!(a["alert_uid"], "systemd-unit:nginx.service");
    assert_eq!(a["state"], "alerting");
    let m = a["message"].as_str().unwrap();
    for part in [
        ": exit-code (exited 1)",
        "Last journal lines:",
        "--lines=20",
        "_SYSTEMD_INVOCATION_ID=0f1e2d3c + INVOCATION_ID=0f1e2d3c",
        "line two of the run",
    ] {
        assert!(m.contains(part), "{part:?} in {m}");
    }

    // It succeeds: one ok for the same group, and only one.
    run_notify(
        &d,
        "nginx.service",
        &[("MONITOR_SERVICE_RESULT", "success")],
    );
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 2).await,
        "{}",
        d.logs()
    );
    let ok = oncall.accepted()[1].body.clone();
    assert_eq!(ok["state"], "ok");
    assert_eq!(ok["alert_uid"], "systemd-unit:nginx.service");
    run_notify(
        &d,
        "nginx.service",
        &[("MONITOR_SERVICE_RESULT", "success")],
    );
    // Started by hand or by ExecStartPost= (no MONITOR_*): systemctl tells.
    run_notify(&d, "cron.service", &[]);
    // The template itself never reports on itself.
    run_notify(
        &d,
        "oncall-agent-notify@x.service.service",
        &[("MONITOR_SERVICE_RESULT", "exit-code")],
    );
    run_notify(
        &d,
        "backup.service",
        &[("FAKE_FAILED", "1"), ("FAKE_RESULT", "timeout")],
    );
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 3).await,
        "{}",
        d.logs()
    );
    assert!(!wait_until(Duration::from_millis(500), || oncall.accepted().len() > 3).await);
    let b = oncall.accepted()[2].body.clone();
    assert_eq!(b["title"], "backup.service failed (timeout)");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("--unit=backup.service"),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_matches_resumes_after_the_cursor() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| {
        write_journal(&dir.join("j.journal"), &seed());
        config(
            &oncall,
            &journal_source(&dir.join("j.journal"), "units = [\"a\"]"),
        )
    })
    .await;
    let file = d.dir.path().join("j.journal");
    wait_running(&d).await;
    write_journal(
        &file,
        &[
            entry("b.service", 3, "b old"),
            entry("a.service", 3, "entry 0"),
        ],
    );
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 1).await,
        "{}",
        d.logs()
    );
    d.write_config(&config(
        &oncall,
        &journal_source(&file, "units = [\"a\", \"b\"]"),
    ));
    d.signal("HUP");
    assert!(
        d.wait_log("Sources restarted", 1, WAIT).await,
        "{}",
        d.logs()
    );
    write_journal(
        &file,
        &[
            entry("b.service", 3, "entry 1"),
            entry("a.service", 3, "entry 2"),
        ],
    );
    assert!(
        wait_until(WAIT, || oncall.accepted().len() >= 3).await,
        "{}",
        d.logs()
    );
    assert!(!wait_until(Duration::from_millis(500), || oncall.accepted().len() > 3).await);
    // "b old" was written before b was matched and before the cursor: not read.
    assert_exactly_once(&delivered_ns(&oncall), 3);
}

/// journalctl 252 `--follow` shows the newest boot only, and `--after-cursor` then skipped
/// the first entry of the new boot: entries written at the end of one boot and the start of
/// the next, while the agent was down, must all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_the_boot_before_a_reboot_and_the_first_of_the_next_are_not_skipped() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start_with(|dir| {
        write_journal(&dir.join("j.journal"), &seed());
        config(&oncall, &journal_source(&dir.join("j.journal"), ""))
    })
    .await;
    let file = d.dir.path().join("j.journal");
    wait_running(&d).await;
    write_journal(&file, &numbered("app.service", 0, 2));
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 2).await,
        "{}",
        d.logs()
    );
    assert_eq!(d.stop(), Some(0));
    // The end of boot A, then a reboot into boot B.
    write_journal(&file, &numbered("app.service", 2, 2));
    let next_boot: Vec<Entry> = numbered("app.service", 4, 3)
        .into_iter()
        .map(|mut e| {
            e.boot = BOOT_B;
            e
        })
        .collect();
    write_journal(&file, &next_boot);
    d.spawn().await;
    assert!(
        wait_until(WAIT, || oncall.accepted().len() >= 7).await,
        "{:?}\n{}",
        delivered_ns(&oncall),
        d.logs()
    );
    // And it follows boot B from there.
    write_journal(
        &file,
        &[Entry {
            boot: BOOT_B,
            ..entry("app.service", 3, "entry 7")
        }],
    );
    assert!(
        wait_until(WAIT, || oncall.accepted().len() >= 8).await,
        "{}",
        d.logs()
    );
    assert!(!wait_until(Duration::from_millis(500), || oncall.accepted().len() > 8).await);
    assert_exactly_once(&delivered_ns(&oncall), 8);
}

/// journalctl 252 follows the newest boot only, which in a folder of several hosts' journals
/// is one host: polling reads them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_a_folder_of_several_hosts_journals_reads_every_host() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| {
        std::fs::create_dir(dir.join("remote")).unwrap();
        write_journal(&dir.join("remote/remote-h1.journal"), &seed());
        config(
            &oncall,
            &format!(
                "[[source]]\ntype = \"journal\"\nintegration = \"a\"\njournal_directory = \"{}\"\npoll_interval = \"100ms\"\n",
                dir.join("remote").display()
            ),
        )
    })
    .await;
    let remote = d.dir.path().join("remote");
    assert!(
        d.wait_log("Reading the journal, polling", 1, WAIT).await,
        "{}",
        d.logs()
    );
    let on_b: Vec<Entry> = numbered("app.service", 1, 1)
        .into_iter()
        .map(|mut e| {
            e.boot = BOOT_B;
            e
        })
        .collect();
    write_journal(
        &remote.join("remote-h1.journal"),
        &numbered("app.service", 0, 1),
    );
    write_journal(&remote.join("remote-h2.journal"), &on_b);
    write_journal(
        &remote.join("remote-h1.journal"),
        &numbered("app.service", 2, 1),
    );
    assert!(
        wait_until(WAIT, || oncall.accepted().len() >= 3).await,
        "{:?}\n{}",
        delivered_ns(&oncall),
        d.logs()
    );
    assert!(!wait_until(Duration::from_millis(500), || oncall.accepted().len() > 3).await);
    assert_exactly_once(&delivered_ns(&oncall), 3);
    assert_eq!(d.status().await["sources"][0]["files"], 1);
}
