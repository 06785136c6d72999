//! File tail and spool sources, end to end: the real daemon tails real files in a temp dir and
//! delivers to a fake OnCall; kill -9 and rotation happen for real.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const FAST: &str = "[delivery]\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\nprobe_interval = \"1s\"\ntimeout = \"2s\"\n";
const WAIT: Duration = Duration::from_secs(20);

/// Integration "a" at `oncall`, no budget in the way, and `sources` appended.
fn config(oncall: &FakeOnCall, sources: &str) -> String {
    format!(
        "{FAST}{NO_LIMITS}{}{sources}",
        integration("a", &oncall.url("formatted_webhook", "T"))
    )
}

fn file_source(pattern: &Path, extra: &str) -> String {
    format!(
        "[[source]]\ntype = \"file\"\npath = \"{}\"\nintegration = \"a\"\n{extra}\n",
        pattern.display()
    )
}

/// Waits until OnCall accepted exactly `n` alerts; fails with the count and the daemon's logs.
async fn wait_delivered(oncall: &FakeOnCall, d: &Daemon, n: usize) {
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == n).await,
        "{}\n{}",
        oncall.accepted().len(),
        d.logs()
    );
}

/// The `n` of every accepted alert, in arrival order.
fn delivered_ns(oncall: &FakeOnCall) -> Vec<i64> {
    oncall
        .accepted()
        .iter()
        .filter_map(|r| r.body["n"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_forwarded_verbatim_and_bad_lines_become_dead_letters() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start_with(|dir| {
        std::fs::create_dir(dir.join("logs")).unwrap();
        append(
            &dir.join("logs/app.jsonl"),
            &format!(
                "{{\"title\":\"one\",  \"n\":0}}\n\
                 not json at all\n\
                 \n\
                 {{\"title\":\"{}\",\"n\":99}}\n\
                 {{\"title\":\"two\",\"n\":1}}\r\n\
                 {{\"title\":\"three\",\"n\":2",
                "x".repeat(300)
            ),
        );
        config(
            &oncall,
            &file_source(&dir.join("logs/*.jsonl"), "max_line = 200"),
        )
    })
    .await;
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 2).await,
        "{}",
        d.logs()
    );
    // Verbatim: the odd spacing survives; the \r does not (it belongs to the line ending).
    let by_n = |n: i64| {
        oncall
            .accepted()
            .into_iter()
            .find(|r| r.body["n"] == n)
            .map(|r| r.body)
    };
    assert_eq!(by_n(0), Some(serde_json::json!({"title":"one","n":0})));
    // The last line has no newline yet: it is not read until it is complete.
    let st = d.status().await;
    assert_eq!(st["dead_letters"], 2, "{st}");
    let src = &st["sources"][0];
    assert_eq!(src["kind"], "file");
    assert_eq!(src["refused_total"], 2, "{st}");
    assert!(
        src["last_refused"].as_str().unwrap().contains("line 4"),
        "{st}"
    );
    append(&d.dir.path().join("logs/app.jsonl"), "}\n");
    assert!(wait_until(WAIT, || oncall.accepted().len() == 3).await);
    assert_eq!(by_n(2).unwrap()["title"], "three");

    // The dead letters name the file and the line, and keep the line.
    d.stop();
    let dead = d.open_queue().dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    let path = d.dir.path().join("logs/app.jsonl");
    assert!(dead[0].reason.contains(&path.display().to_string()));
    assert!(
        dead[0].reason.contains("line 2") && dead[0].reason.contains("JSON"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].payload, "not json at all");
    assert!(
        dead[1].reason.contains("line 4") && dead[1].reason.contains("max_line"),
        "{}",
        dead[1].reason
    );
    assert_eq!(dead[1].integration, "a");
    assert_eq!(dead[1].status, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_become_formatted_webhook_alerts_with_a_stable_uid() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| {
        config(
            &oncall,
            &file_source(
                &dir.join("app.log"),
                "format = \"text\"\nuid_fields = [2, 3]",
            ),
        )
    })
    .await;
    let log = d.dir.path().join("app.log");
    append(
        &log,
        "CRIT db01 disk /var is 95% full\nCRIT db01 disk /var is 99% full\nWARN web1 slow\n",
    );
    assert!(wait_until(WAIT, || oncall.accepted().len() == 3).await);
    // Different keys may arrive in any order: sort by line number.
    let mut a: Vec<serde_json::Value> = oncall.accepted().into_iter().map(|r| r.body).collect();
    a.sort_by_key(|b| b["message"].as_str().unwrap().to_string());
    assert_eq!(a[0]["title"], "CRIT db01 disk /var is 95% full");
    assert_eq!(a[0]["state"], "alerting");
    assert!(a[0]["message"].as_str().unwrap().contains("app.log line 1"));
    // Fields 2 and 3 ("db01 disk") are the same: one alert group in OnCall.
    assert_eq!(a[0]["alert_uid"], a[1]["alert_uid"]);
    assert_ne!(a[0]["alert_uid"], a[2]["alert_uid"]);
    // Stable across releases: the uid is a documented function of the chosen fields.
    assert_eq!(
        a[0]["alert_uid"],
        oncall_agent::sources::text_uid("db01 disk")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inotify_wakes_the_source_for_new_lines_and_new_files_without_the_poll() {
    let oncall = FakeOnCall::start(&["T"]).await;
    // A poll once an hour: everything seen below was seen through inotify.
    let d = Daemon::start_with(|dir| {
        std::fs::create_dir(dir.join("logs")).unwrap();
        config(
            &oncall,
            &file_source(&dir.join("logs/*.jsonl"), "poll_interval = \"1h\""),
        )
    })
    .await;
    let logs = d.dir.path().join("logs");
    // The source has listed the folder once it reports itself.
    assert!(
        wait_for(WAIT, || async {
            d.status().await["sources"][0]["kind"] == "file"
        })
        .await
    );
    append(&logs.join("a.jsonl"), &json_lines("a", 0, 3));
    assert!(
        wait_until(Duration::from_secs(10), || oncall.accepted().len() == 3).await,
        "{}",
        d.logs()
    );
    append(&logs.join("a.jsonl"), &json_lines("a", 3, 2));
    // Not matched by the pattern: never read.
    append(&logs.join("a.txt"), &json_lines("x", 100, 2));
    append(&logs.join("b.jsonl"), &json_lines("b", 5, 5));
    assert!(wait_until(Duration::from_secs(10), || oncall.accepted().len() == 10).await);
    assert_exactly_once(&delivered_ns(&oncall), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_files_and_files_growing_while_read_arrive_complete() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| {
        std::fs::create_dir(dir.join("logs")).unwrap();
        config(&oncall, &file_source(&dir.join("logs/*.jsonl"), ""))
    })
    .await;
    let logs = d.dir.path().join("logs");
    // 40 files written at once, while each keeps growing; lines are split across writes so
    // that the reader often sees half a line.
    let files = 40;
    let per_file = 100;
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut handles: Vec<std::fs::File> = (0..files)
            .map(|f| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(logs.join(format!("f{f:02}.jsonl")))
                    .unwrap()
            })
            .collect();
        for i in 0..per_file {
            for (f, h) in handles.iter_mut().enumerate() {
                let line = format!("{{\"alert_uid\":\"f{f}\",\"n\":{}}}\n", f * per_file + i);
                let (x, y) = line.split_at(line.len() / 2);
                h.write_all(x.as_bytes()).unwrap();
                h.flush().unwrap();
                h.write_all(y.as_bytes()).unwrap();
            }
        }
    });
    writer.join().unwrap();
    let total = files * per_file;
    assert!(
        wait_until(Duration::from_secs(60), || oncall.accepted().len() >= total).await,
        "{} of {total}\n{}",
        oncall.accepted().len(),
        d.logs()
    );
    let ns = delivered_ns(&oncall);
    assert_exactly_once(&ns, total);
    // Each file's lines arrive in the file's order.
    for f in 0..files {
        let mine: Vec<i64> = ns
            .iter()
            .copied()
            .filter(|n| (*n as usize) / per_file == f)
            .collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "file {f}: {mine:?}");
    }
    assert_eq!(d.status().await["sources"][0]["files"], files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_create_rotation_finishes_the_old_file_then_follows_the_new() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| config(&oncall, &file_source(&dir.join("app.log"), ""))).await;
    let log = d.dir.path().join("app.log");
    append(&log, &json_lines("k", 0, 50));
    assert!(wait_until(WAIT, || oncall.accepted().len() == 50).await);
    // logrotate's default: rename, then create. The writer still holds the old file and
    // appends to it before it reopens.
    let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::rename(&log, d.dir.path().join("app.log.1")).unwrap();
    append(&log, &json_lines("k", 80, 20));
    {
        use std::io::Write;
        old.write_all(json_lines("k", 50, 30).as_bytes()).unwrap();
    }
    wait_delivered(&oncall, &d, 100).await;
    assert_exactly_once(&delivered_ns(&oncall), 100);
    // And the new file goes on being followed.
    append(&log, &json_lines("k", 100, 5));
    assert!(wait_until(WAIT, || oncall.accepted().len() == 105).await);
    assert_exactly_once(&delivered_ns(&oncall), 105);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_rotation_reads_the_file_again_from_zero() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| config(&oncall, &file_source(&dir.join("app.log"), ""))).await;
    let log = d.dir.path().join("app.log");
    append(&log, &json_lines("k", 0, 40));
    assert!(wait_until(WAIT, || oncall.accepted().len() == 40).await);
    // logrotate's copytruncate: copy, then truncate in place (same inode).
    std::fs::copy(&log, d.dir.path().join("app.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(
        wait_for(WAIT, || async {
            d.logs().contains("shrank") || d.logs().contains("truncated")
        })
        .await
    );
    append(&log, &json_lines("k", 40, 10));
    wait_delivered(&oncall, &d, 50).await;
    assert_exactly_once(&delivered_ns(&oncall), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_is_read_to_its_end() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| config(&oncall, &file_source(&dir.join("app.log"), ""))).await;
    let log = d.dir.path().join("app.log");
    append(&log, &json_lines("k", 0, 10));
    assert!(wait_until(WAIT, || oncall.accepted().len() == 10).await);
    // The writer keeps writing to the file after it was deleted.
    let mut w = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    {
        use std::io::Write;
        w.write_all(json_lines("k", 10, 10).as_bytes()).unwrap();
    }
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 20).await,
        "{}",
        d.logs()
    );
    // A new file of that name is a new file.
    append(&log, &json_lines("k", 20, 5));
    assert!(wait_until(WAIT, || oncall.accepted().len() == 25).await);
    assert_exactly_once(&delivered_ns(&oncall), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_by_another_of_the_same_name_is_read_from_its_start() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d =
        Daemon::start_with(|dir| config(&oncall, &file_source(&dir.join("app.log"), ""))).await;
    let log = d.dir.path().join("app.log");
    append(&log, &json_lines("k", 0, 10));
    assert!(wait_until(WAIT, || oncall.accepted().len() == 10).await);

    // While running: another file moved over it.
    let other = d.dir.path().join("other");
    append(&other, &json_lines("k", 10, 5));
    std::fs::rename(&other, &log).unwrap();
    assert!(wait_until(WAIT, || oncall.accepted().len() == 15).await);

    // While stopped: deleted and written anew, longer than before (the inode may well be
    // reused: the fingerprint of the first bytes tells the files apart).
    d.stop();
    std::fs::remove_file(&log).unwrap();
    append(&log, &json_lines("z", 15, 30));
    d.spawn().await;
    wait_delivered(&oncall, &d, 45).await;
    assert_exactly_once(&delivered_ns(&oncall), 45);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_line_is_lost_when_files_grow_and_rotate_while_the_daemon_is_down() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start_with(|dir| {
        std::fs::create_dir(dir.join("logs")).unwrap();
        config(
            &oncall,
            &format!(
                "{}{}",
                file_source(&dir.join("logs/*.log"), ""),
                file_source(&dir.join("logs/ct.out"), "")
            ),
        )
    })
    .await;
    let logs = d.dir.path().join("logs");
    let (renamed, copied, grown) = (logs.join("r.log"), logs.join("ct.out"), logs.join("g.log"));
    append(&renamed, &json_lines("r", 0, 10));
    append(&copied, &json_lines("c", 10, 10));
    append(&grown, &json_lines("g", 20, 10));
    assert!(wait_until(WAIT, || oncall.accepted().len() == 30).await);
    // A clean stop: after kill -9 the sender may deliver an alert twice (its ack is not
    // synced, at-least-once), which would blur what this test counts. kill -9 has its own.
    assert_eq!(d.stop(), Some(0));

    // While it is down: every file grows; r.log is renamed away and created anew, ct.out is
    // copied and truncated, and a new file appears.
    append(&renamed, &json_lines("r", 30, 10));
    std::fs::rename(&renamed, logs.join("r.log.1")).unwrap();
    append(&renamed, &json_lines("r", 40, 10));
    append(&copied, &json_lines("c", 50, 10));
    std::fs::copy(&copied, logs.join("ct.out.1")).unwrap();
    std::fs::write(&copied, json_lines("c", 60, 10)).unwrap();
    append(&grown, &json_lines("g", 70, 10));
    append(&logs.join("new.log"), &json_lines("n", 80, 10));

    d.spawn().await;
    assert!(
        wait_until(WAIT, || oncall.accepted().len() >= 90).await,
        "{} of 90\n{}",
        oncall.accepted().len(),
        d.logs()
    );
    // Nothing more trickles in.
    assert!(
        !wait_until(Duration::from_millis(500), || oncall.accepted().len() > 90).await,
        "{:?}\n{}",
        delivered_ns(&oncall),
        d.logs()
    );
    let ns = delivered_ns(&oncall);
    assert_exactly_once(&ns, 90);
    // Per file, the rotated file's end came before its successor's start.
    let pos = |n: i64| ns.iter().position(|x| *x == n).unwrap();
    assert!(pos(39) < pos(40), "r.log.1 before the new r.log");
    assert!(pos(59) < pos(60), "ct.out.1 before the truncated ct.out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_tailing_neither_loses_nor_repeats_a_line() {
    let oncall = FakeOnCall::start(&["T"]).await;
    // OnCall refuses everything: whatever was read stays in the queue, where it is counted.
    oncall.set_default(Reply::status(503, "down"));
    let total = 60_000;
    let mut d = Daemon::start_with(|dir| {
        let mut text = String::new();
        for n in 0..total {
            text.push_str(&format!(
                "{{\"alert_uid\":\"k{}\",\"n\":{n},\"pad\":\"{}\"}}\n",
                n % 50,
                "p".repeat(120)
            ));
        }
        std::fs::write(dir.join("big.jsonl"), text).unwrap();
        config(&oncall, &file_source(&dir.join("big.jsonl"), ""))
    })
    .await;
    for round in 1..=5u64 {
        let at = round * total as u64 / 7;
        let reached = wait_for(Duration::from_secs(60), || async { d.depth().await >= at }).await;
        assert!(
            reached,
            "round {round}: depth {}\n{}",
            d.depth().await,
            d.logs()
        );
        d.kill9();
        d.spawn().await;
    }
    assert!(
        wait_for(Duration::from_secs(60), || async {
            d.depth().await >= total as u64
        })
        .await
    );
    d.stop();
    let ns: Vec<i64> = d
        .queued("a")
        .iter()
        .map(|v| v["n"].as_i64().unwrap())
        .collect();
    assert_exactly_once(&ns, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_end_skips_what_was_there_only_on_the_first_run() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start_with(|dir| {
        // Old lines, and the start of a line still being written.
        append(
            &dir.join("app.log"),
            &format!("{}{{\"alert_uid\":\"k\",", json_lines("k", 100, 5)),
        );
        config(
            &oncall,
            &file_source(&dir.join("app.log"), "start_at = \"end\""),
        )
    })
    .await;
    let log = d.dir.path().join("app.log");
    assert!(
        wait_for(WAIT, || async {
            d.status().await["sources"][0]["files"] == 1
        })
        .await
    );
    append(&log, "\"n\":0}\n");
    append(&log, &json_lines("k", 1, 2));
    assert!(wait_until(WAIT, || oncall.accepted().len() == 3).await);
    d.stop();
    // Written while stopped: read, although start_at = "end".
    append(&log, &json_lines("k", 3, 2));
    d.spawn().await;
    assert!(wait_until(WAIT, || oncall.accepted().len() == 5).await);
    assert!(!wait_until(Duration::from_millis(300), || oncall.accepted().len() > 5).await);
    assert_exactly_once(&delivered_ns(&oncall), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_files_become_alerts_and_bad_ones_move_to_failed_with_the_reason() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| {
        config(
            &oncall,
            &format!(
                "[[source]]\ntype = \"spool\"\npath = \"{}\"\n",
                dir.join("spool").display()
            ),
        )
    })
    .await;
    let a = d.dir.path().join("spool/a");
    assert!(wait_until(WAIT, || a.is_dir()).await, "{}", d.logs());
    // Writable by the group whatever the umask: the users of `send` share it that way.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&a).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o770, "{mode:o}");
    // The way a program should drop a file: write under a hidden name, then rename.
    for n in 0..5 {
        let tmp = a.join(format!(".t{n}"));
        std::fs::write(&tmp, format!("{{\"title\":\"spooled\",\"n\":{n}}}")).unwrap();
        std::fs::rename(&tmp, a.join(format!("{n}.json"))).unwrap();
    }
    std::fs::write(a.join("bad.json"), "{\"title\": oops").unwrap();
    // Not a .json name, or hidden: left alone.
    std::fs::write(a.join("notes.txt"), "{}").unwrap();
    std::fs::write(a.join(".half.json"), "{\"ti").unwrap();
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 5).await,
        "{}",
        d.logs()
    );
    assert_exactly_once(&delivered_ns(&oncall), 5);
    assert!(wait_until(WAIT, || a.join("failed/bad.json").exists()).await);
    let why = std::fs::read_to_string(a.join("failed/bad.json.error")).unwrap();
    assert!(why.contains("JSON"), "{why}");
    // Queued files are gone; the others stay.
    let left: Vec<String> = std::fs::read_dir(&a)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, [".half.json", "failed", "notes.txt"]);
    let st = d.status().await;
    let sp = &st["sources"][0];
    assert_eq!(sp["kind"], "spool");
    assert_eq!(sp["alerts_total"], 5);
    assert_eq!(sp["refused_total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_leaves_the_alert_in_the_spool_while_the_daemon_is_down() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::prepare(|dir| {
        config(
            &oncall,
            &format!(
                "[[source]]\ntype = \"spool\"\npath = \"{}\"\n",
                dir.join("spool").display()
            ),
        )
    });
    let out = d.cli(&["send", "-i", "a", "--title", "while down", "--uid", "u"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("spool"), "{err}");
    let files: Vec<_> = std::fs::read_dir(d.dir.path().join("spool/a"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].file_name().to_string_lossy().ends_with(".json"));

    d.spawn().await;
    assert!(
        wait_until(WAIT, || oncall.accepted().len() == 1).await,
        "{}",
        d.logs()
    );
    let a = &oncall.accepted()[0].body;
    assert_eq!(a["title"], "while down");
    assert_eq!(a["alert_uid"], "u");
    assert!(
        wait_until(WAIT, || std::fs::read_dir(d.dir.path().join("spool/a"))
            .unwrap()
            .flatten()
            .all(|e| e.file_type().unwrap().is_dir()))
        .await
    );

    // Running: send goes through the socket, not the spool.
    let out = d.cli(&["send", "-i", "a", "--title", "while up"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(WAIT, || oncall.accepted().len() == 2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_without_a_spool_fails_clearly_while_the_daemon_is_down() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::prepare(|_| config(&oncall, ""));
    let out = d.cli(&["send", "-i", "a", "--title", "lost?"]);
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NOT queued") && err.contains("spool"), "{err}");
}

#[test]
fn send_takes_the_state_words_of_nagios_icinga_and_zabbix() {
    // Daemon down: each alert lands in the spool, where its body can be read.
    let d = Daemon::prepare(|dir| {
        format!(
            "{}[[source]]\ntype = \"spool\"\npath = \"{}\"\n",
            integration(
                "a",
                "http://127.0.0.1:9/integrations/v1/formatted_webhook/T/"
            ),
            dir.join("spool").display()
        )
    });
    let cases = [
        ("PROBLEM", "alerting"),
        ("Recovery", "ok"),
        ("RECOVERY", "ok"),
        ("1", "alerting"),
        ("0", "ok"),
        ("resolved", "ok"),
        ("alerting", "alerting"),
    ];
    for (word, want) in cases {
        let spool = d.dir.path().join("spool/a");
        let _ = std::fs::remove_dir_all(&spool);
        let out = d.cli(&["send", "-i", "a", "--title", "t", "--state", word]);
        assert!(
            out.status.success(),
            "{word}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = std::fs::read_dir(&spool).unwrap().flatten().next().unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file.path()).unwrap()).unwrap();
        assert_eq!(body["state"], want, "{word}");
    }
    // Anything else (an acknowledgement, say) is a usage error, not a silent alert.
    let out = d.cli(&[
        "send",
        "-i",
        "a",
        "--title",
        "t",
        "--state",
        "ACKNOWLEDGEMENT",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// The spooled alerts of `integration`, oldest first (daemon down).
fn spooled(d: &Daemon, integration: &str) -> Vec<serde_json::Value> {
    let dir = d.dir.path().join("spool").join(integration);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// The README's command lines for Nagios, Icinga 2, Zabbix and cron, run the way each tool
/// runs them (macros filled in; through `sh -c` or as an argument list), against a stopped
/// daemon so that what `send` made can be read back from the spool.
#[test]
fn readme_command_lines_for_nagios_icinga_zabbix_and_cron_work() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let d = Daemon::prepare(|dir| {
        let url = "http://127.0.0.1:9/integrations/v1/formatted_webhook/T/";
        format!(
            "{}{}{}{}[[source]]\ntype = \"spool\"\npath = \"{}\"\n",
            integration("nagios", url),
            integration("icinga", url),
            integration("zabbix", url),
            integration("db-prod", url),
            dir.join("spool").display()
        )
    });
    let run_sh = |line: &str| {
        let line = line.replace("/usr/bin/oncall-agent", bin());
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .env("ONCALL_AGENT_CONFIG", &d.config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let run_argv = |argv: &[String]| {
        let out = std::process::Command::new(bin())
            .args(argv)
            .env("ONCALL_AGENT_CONFIG", &d.config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{argv:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let fill = |s: &str, macros: &[(&str, &str)]| {
        let mut s = s.to_string();
        for (k, v) in macros {
            s = s.replace(k, v);
        }
        assert!(
            !s.contains("$HOST") && !s.contains("{EVENT"),
            "unfilled: {s}"
        );
        s
    };

    // Nagios: command_line goes through sh.
    let nagios: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.trim().strip_prefix("command_line"))
        .map(str::trim)
        .collect();
    assert_eq!(nagios.len(), 2);
    for (ty, state) in [("PROBLEM", "alerting"), ("RECOVERY", "ok")] {
        run_sh(&fill(
            nagios[0],
            &[
                ("$NOTIFICATIONTYPE$", ty),
                ("$HOSTNAME$", "db01"),
                ("$SERVICEDESC$", "Disk /var"),
                ("$SERVICESTATE$", "CRITICAL"),
                ("$SERVICEOUTPUT$", "DISK CRITICAL - free space: /var 3%"),
            ],
        ));
        let a = spooled(&d, "nagios").pop().unwrap();
        assert_eq!(a["state"], state);
        assert_eq!(a["alert_uid"], "db01/Disk /var");
        assert_eq!(a["title"], "CRITICAL: Disk /var on db01");
        assert_eq!(a["message"], "DISK CRITICAL - free space: /var 3%");
    }
    run_sh(&fill(
        nagios[1],
        &[
            ("$NOTIFICATIONTYPE$", "PROBLEM"),
            ("$HOSTNAME$", "db01"),
            ("$HOSTSTATE$", "DOWN"),
            ("$HOSTOUTPUT$", "PING CRITICAL - Packet loss = 100%"),
        ],
    ));
    assert_eq!(spooled(&d, "nagios").pop().unwrap()["alert_uid"], "db01");

    // Icinga 2: "--flag" = "value" pairs, each one word, no shell.
    let blocks: Vec<&str> = readme.split("object NotificationCommand").skip(1).collect();
    assert_eq!(blocks.len(), 2);
    for (block, uid) in blocks.iter().zip(["db01/disk", "db01"]) {
        let block = &block[..block.find("\n}").unwrap()];
        let mut argv = vec!["send".to_string()];
        for l in block.lines().filter(|l| l.trim_start().starts_with("\"--")) {
            let (k, v) = l.trim().split_once(" = ").unwrap();
            argv.push(k.trim_matches('"').to_string());
            argv.push(fill(
                v.trim_matches('"'),
                &[
                    ("$notification.type$", "RECOVERY"),
                    ("$host.name$", "db01"),
                    ("$service.name$", "disk"),
                    ("$service.state$", "OK"),
                    ("$service.display_name$", "Disk"),
                    ("$host.display_name$", "db01"),
                    ("$service.output$", "DISK OK"),
                    ("$host.state$", "UP"),
                    ("$host.output$", "PING OK"),
                ],
            ));
        }
        run_argv(&argv);
        let a = spooled(&d, "icinga").pop().unwrap();
        assert_eq!(a["state"], "ok");
        assert_eq!(a["alert_uid"], uid);
    }

    // Zabbix: the script parameters, one argument per line.
    let params = readme
        .split("these script\nparameters, one per line, in this order:\n\n```\n")
        .nth(1)
        .unwrap();
    let params: Vec<&str> = params[..params.find("```").unwrap()].lines().collect();
    for (value, state) in [("1", "alerting"), ("0", "ok")] {
        let argv: Vec<String> = params
            .iter()
            .map(|p| {
                fill(
                    p,
                    &[
                        ("{ALERT.SENDTO}", "zabbix"),
                        ("{EVENT.VALUE}", value),
                        ("{EVENT.ID}", "4711"),
                        ("{ALERT.SUBJECT}", "Problem: High CPU on web1"),
                        ("{ALERT.MESSAGE}", "Problem started at 03:00\nHost: web1"),
                    ],
                )
            })
            .collect();
        run_argv(&argv);
        let a = spooled(&d, "zabbix").pop().unwrap();
        assert_eq!(a["state"], state);
        assert_eq!(a["alert_uid"], "zabbix-4711");
        assert_eq!(a["message"], "Problem started at 03:00\nHost: web1");
    }

    // cron: the command after the five time fields, through sh.
    let cron = readme
        .lines()
        .find(|l| l.starts_with("15 3 * * *"))
        .unwrap();
    let command = cron.splitn(6, ' ').nth(5).unwrap().trim();
    for (job, state) in [("false", "alerting"), ("true", "ok")] {
        run_sh(&command.replace("/usr/local/bin/backup-db", job));
        let a = spooled(&d, "db-prod").pop().unwrap();
        assert_eq!(a["state"], state);
        assert_eq!(a["alert_uid"], "backup-db01");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_pauses_tailing_and_nothing_is_lost_when_room_comes_back() {
    let oncall = FakeOnCall::start(&["T"]).await;
    oncall.set_default(Reply::status(503, "down"));
    let d = Daemon::start_with(|dir| {
        append(&dir.join("app.log"), &json_lines("k", 0, 100));
        format!(
            "[queue]\nmax_bytes = 2048\nmax_body = 1024\n{}",
            config(
                &oncall,
                &file_source(&dir.join("app.log"), "max_line = 512")
            )
        )
    })
    .await;
    // The queue fills up (smaller chunks are tried until one fits), and reading pauses.
    assert!(
        wait_for(WAIT, || async { d.depth().await > 0 }).await,
        "{}",
        d.logs()
    );
    assert!(d.depth().await < 100);
    assert!(d.logs().contains("could not be queued"));
    // Room comes back: reading resumes where it stood.
    oncall.set_default(Reply::ok());
    assert!(
        wait_until(Duration::from_secs(30), || oncall.accepted().len() >= 100).await,
        "{}\n{}",
        oncall.accepted().len(),
        d.logs()
    );
    assert_exactly_once(&delivered_ns(&oncall), 100);
    // Said once, not at every retry.
    assert_eq!(
        d.logs().matches("could not be queued").count(),
        1,
        "{}",
        d.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_files_wait_in_the_folder_while_the_queue_is_full() {
    let oncall = FakeOnCall::start(&["T"]).await;
    oncall.set_default(Reply::status(503, "down"));
    let d = Daemon::start_with(|dir| {
        let a = dir.join("spool/a");
        std::fs::create_dir_all(&a).unwrap();
        for n in 0..40 {
            std::fs::write(
                a.join(format!("{n:03}.json")),
                format!("{{\"alert_uid\":\"k\",\"n\":{n}}}"),
            )
            .unwrap();
        }
        format!(
            "[queue]\nmax_bytes = 2048\nmax_body = 1024\n{}",
            config(
                &oncall,
                &format!(
                    "[[source]]\ntype = \"spool\"\npath = \"{}\"\n",
                    dir.join("spool").display()
                )
            )
        )
    })
    .await;
    let a = d.dir.path().join("spool/a");
    let waiting = || {
        std::fs::read_dir(&a)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_file())
            .count()
    };
    // What fits is queued (and its files removed); the rest waits on disk.
    assert!(
        wait_for(WAIT, || async { d.depth().await > 0 }).await,
        "{}",
        d.logs()
    );
    assert!(d.depth().await < 40);
    assert!(waiting() > 0);
    oncall.set_default(Reply::ok());
    assert!(
        wait_until(Duration::from_secs(30), || oncall.accepted().len() >= 40).await,
        "{}\n{}",
        oncall.accepted().len(),
        d.logs()
    );
    assert_exactly_once(&delivered_ns(&oncall), 40);
    // Same key, so the files went in name order.
    assert_eq!(delivered_ns(&oncall), (0..40).collect::<Vec<i64>>());
    assert!(wait_until(WAIT, || waiting() == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_changes_file_sources_live() {
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| {
        std::fs::create_dir(dir.join("logs")).unwrap();
        append(&dir.join("logs/a.jsonl"), &json_lines("u", 0, 5));
        config(&oncall, "")
    })
    .await;
    let logs = d.dir.path().join("logs");
    // Added by a reload: the file is read from its start.
    d.write_config(&config(&oncall, &file_source(&logs.join("a.jsonl"), "")));
    d.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(15), || delivered_ns(&oncall).len() == 5).await,
        "{}",
        d.logs()
    );
    // Changed (a second source added): the restarted source of a.jsonl resumes where the old
    // one stopped, so no line is sent twice, and the new source reads b.jsonl. (A changed
    // `path` would start that source over: positions are kept per configured path.)
    append(&logs.join("a.jsonl"), &json_lines("u", 5, 3));
    append(&logs.join("b.jsonl"), &json_lines("v", 8, 2));
    d.write_config(&config(
        &oncall,
        &format!(
            "{}{}",
            file_source(&logs.join("a.jsonl"), ""),
            file_source(&logs.join("b.jsonl"), "")
        ),
    ));
    d.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(15), || delivered_ns(&oncall).len()
            >= 10)
        .await,
        "{}",
        d.logs()
    );
    assert!(
        d.wait_log("Sources restarted", 2, Duration::from_secs(5))
            .await
    );
    let mut ns = delivered_ns(&oncall);
    ns.sort();
    assert_exactly_once(&ns, 10);
}

/// Defect: the spool's integrations were fixed at start. One added by SIGHUP never had its
/// folder read; one removed while its folder held files stalled the spool for every
/// integration (the same batch was refused each second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_follows_reloads_and_an_unknown_integration_blocks_no_other() {
    let oncall = FakeOnCall::start(&["A", "B", "C"]).await;
    let integrations = |names: &[&str]| -> String {
        names
            .iter()
            .map(|n| integration(n, &oncall.url("formatted_webhook", &n.to_uppercase())))
            .collect()
    };
    let spool = |dir: &Path| {
        format!(
            "[[source]]\ntype = \"spool\"\npath = \"{}\"\npoll_interval = \"100ms\"\n",
            dir.join("spool").display()
        )
    };
    let d = Daemon::start_with(|dir| {
        format!(
            "{FAST}{NO_LIMITS}{}{}",
            integrations(&["a", "b"]),
            spool(dir)
        )
    })
    .await;
    let root = d.dir.path().join("spool");
    let drop_file = |integration: &str, n: i64| {
        let dir = root.join(integration);
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{n}.tmp"));
        std::fs::write(&tmp, format!("{{\"title\":\"{integration}\",\"n\":{n}}}")).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{n:03}.json"))).unwrap();
    };
    let by_token = |t: &str| oncall.accepted().iter().filter(|r| r.token == t).count();
    drop_file("a", 0);
    assert!(
        wait_until(WAIT, || by_token("A") == 1).await,
        "{}",
        d.logs()
    );

    // b removed, c added.
    d.write_config(&format!(
        "{FAST}{NO_LIMITS}{}{}",
        integrations(&["a", "c"]),
        spool(d.dir.path())
    ));
    d.signal("HUP");
    assert!(
        d.wait_log("Configuration reloaded", 1, WAIT).await,
        "{}",
        d.logs()
    );
    for n in 1..=3 {
        drop_file("b", n);
    }
    drop_file("a", 4);
    drop_file("c", 5);
    assert!(
        wait_until(WAIT, || by_token("A") == 2 && by_token("C") == 1).await,
        "a: {}, c: {}\n{}",
        by_token("A"),
        by_token("C"),
        d.logs()
    );
    let warned = "integration that is not configured";
    assert!(d.wait_log(warned, 1, WAIT).await, "{}", d.logs());
    // The files of b stay where they are, said once however often the folder is listed.
    drop_file("a", 6);
    assert!(
        wait_until(WAIT, || by_token("A") == 3).await,
        "{}",
        d.logs()
    );
    assert_eq!(d.logs().matches(warned).count(), 1, "{}", d.logs());
    let left = std::fs::read_dir(root.join("b"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(left, 3);
    assert_eq!(by_token("B"), 0);

    // b configured again: its files go out.
    d.write_config(&format!(
        "{FAST}{NO_LIMITS}{}{}",
        integrations(&["a", "b", "c"]),
        spool(d.dir.path())
    ));
    d.signal("HUP");
    assert!(
        wait_until(WAIT, || by_token("B") == 3).await,
        "{}",
        d.logs()
    );
    let mut ns = delivered_ns(&oncall);
    ns.sort();
    assert_eq!(ns, (0..=6).collect::<Vec<i64>>());
}

/// Scenario: a tailed name that becomes a symbolic link to a file outside the watched folder
/// (say the agent's own credentials). Decided: not read, one ERROR; a link to a file in the
/// folder itself (`current.log -> app-1.txt`) is still followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailed_name_that_becomes_a_link_out_of_the_folder_is_not_read() {
    use std::os::unix::fs::symlink;
    let oncall = FakeOnCall::start(&["T"]).await;
    let d = Daemon::start_with(|dir| {
        std::fs::create_dir(dir.join("logs")).unwrap();
        std::fs::create_dir(dir.join("private")).unwrap();
        append(
            &dir.join("private/secret.jsonl"),
            "{\"title\":\"SECRET\",\"n\":1000}\n",
        );
        append(&dir.join("logs/app.log"), &json_lines("k", 0, 3));
        config(
            &oncall,
            &file_source(&dir.join("logs/*.log"), "poll_interval = \"100ms\""),
        )
    })
    .await;
    let logs = d.dir.path().join("logs");
    wait_delivered(&oncall, &d, 3).await;
    // app.log is replaced, atomically, by a link out of the folder.
    symlink(
        d.dir.path().join("private/secret.jsonl"),
        logs.join(".swap"),
    )
    .unwrap();
    std::fs::rename(logs.join(".swap"), logs.join("app.log")).unwrap();
    assert!(
        d.wait_log(
            "symbolic link to a file outside the watched folder",
            1,
            WAIT
        )
        .await,
        "{}",
        d.logs()
    );
    append(
        &d.dir.path().join("private/secret.jsonl"),
        "{\"title\":\"SECRET\",\"n\":1001}\n",
    );
    // A link inside the folder is followed, so the source is alive and listing.
    append(&logs.join("app-1.txt"), &json_lines("k", 3, 2));
    symlink("app-1.txt", logs.join("current.log")).unwrap();
    wait_delivered(&oncall, &d, 5).await;
    append(&logs.join("app-1.txt"), &json_lines("k", 5, 1));
    wait_delivered(&oncall, &d, 6).await;
    assert_exactly_once(&delivered_ns(&oncall), 6);
    assert!(
        oncall
            .accepted()
            .iter()
            .all(|r| r.body["title"] != "SECRET"),
        "{:?}",
        oncall.accepted()
    );
    let said = d
        .logs()
        .matches("symbolic link to a file outside the watched folder")
        .count();
    assert_eq!(said, 1, "{}", d.logs());
}

/// `count` padded JSON lines from `from` (the kill -9 tests' lines: slow enough to read that a
/// kill lands mid-file).
fn padded_lines(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| {
            format!(
                "{{\"alert_uid\":\"k{}\",\"n\":{n},\"pad\":\"{}\"}}\n",
                n % 50,
                "p".repeat(120)
            )
        })
        .collect()
}

/// Scenario: kill -9 while a tailed file is rotated, by rename-and-create and by
/// copytruncate, with the writer still appending to the renamed file. No line is lost or
/// queued twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_rename_and_copytruncate_rotation_loses_no_line() {
    use std::io::Write;
    let oncall = FakeOnCall::start(&["T"]).await;
    // OnCall refuses everything: whatever was read stays in the queue, where it is counted.
    oncall.set_default(Reply::status(503, "down"));
    let mut d = Daemon::start_with(|dir| {
        std::fs::write(dir.join("app.log"), padded_lines(0, 20_000)).unwrap();
        config(&oncall, &file_source(&dir.join("app.log"), ""))
    })
    .await;
    let dir = d.dir.path().to_owned();
    let log = dir.join("app.log");

    // Rename-and-create mid-read; the writer appends to the old file before it reopens.
    assert!(reach(&d, 4_000).await, "{}", d.logs());
    let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::rename(&log, dir.join("app.log.1")).unwrap();
    old.write_all(padded_lines(20_000, 2_000).as_bytes())
        .unwrap();
    std::fs::write(&log, padded_lines(22_000, 20_000)).unwrap();
    assert!(reach(&d, 10_000).await, "{}", d.logs());
    d.kill9();
    d.spawn().await;

    // copytruncate, and the kill right after it, before the agent may have looked.
    assert!(reach(&d, 26_000).await, "{}", d.logs());
    std::fs::copy(&log, dir.join("app.log.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    d.kill9();
    append(&log, &padded_lines(42_000, 8_000));
    d.spawn().await;

    // Rename, and the kill right after it; the old file still grows while the agent is down.
    assert!(reach(&d, 44_000).await, "{}", d.logs());
    let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::rename(&log, dir.join("app.log.3")).unwrap();
    d.kill9();
    old.write_all(padded_lines(50_000, 1_000).as_bytes())
        .unwrap();
    std::fs::write(&log, padded_lines(51_000, 5_000)).unwrap();
    d.spawn().await;

    let total = 56_000;
    assert!(reach(&d, total as u64).await, "{}", d.logs());
    d.stop();
    let ns: Vec<i64> = d
        .queued("a")
        .iter()
        .map(|v| v["n"].as_i64().unwrap())
        .collect();
    assert_exactly_once(&ns, total);
}

/// Waits until at least `n` alerts are queued (a minute at most: the debug build on a busy
/// machine).
async fn reach(d: &Daemon, n: u64) -> bool {
    wait_for(Duration::from_secs(60), || async { d.depth().await >= n }).await
}
