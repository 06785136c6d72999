//! The wall clock stepping while the daemon is down (an operator's `date`, NTP after a long
//! stop, a VM restored from a snapshot), through the real binary under libfaketime (Debian
//! package `faketime`; the test is skipped with a message where it is missing). While the
//! daemon runs its clock follows the monotonic clock, so a step changes nothing; these tests
//! cover the restart, where the persisted budget slots meet the new wall time.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The daemon's command with the wall clock offset by `offset` ("+1d", "-1h"); the monotonic
/// and boot clocks stay real, as they do when a real wall clock steps.
fn shifted(d: &Daemon, offset: &str) -> std::process::Command {
    let mut c = d.command();
    c.env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", offset)
        .env("DONT_FAKE_MONOTONIC", "1");
    c
}

/// Regression: a wall clock set a day ahead while the agent was down expired every persisted
/// budget slot, so a spent budget was spent again inside the same real hour; one set an hour
/// back held the slots "in the future" and stalled delivery for two hours instead of one. The
/// agent's clock now continues from where it stood within one boot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_while_down_neither_reopens_nor_stretches_a_spent_budget() {
    if !Path::new(LIBFAKETIME).exists() {
        // CI installs it (.ci/run), so CI never skips this.
        assert!(
            std::env::var_os("CI").is_none(),
            "{LIBFAKETIME} is missing in CI: .ci/run must install faketime"
        );
        eprintln!("skipped: {LIBFAKETIME} is missing (apt-get install faketime)");
        return;
    }
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::start(&format!(
        "[limits]\nintegration = \"2/1h\"\n{}",
        integration("db", &oncall.url("formatted_webhook", "T"))
    ))
    .await;
    for n in 0..2 {
        let (s, _) = d
            .post("db", &format!(r#"{{"title":"{n}","alert_uid":"u{n}"}}"#))
            .await;
        assert_eq!(s, 202);
    }
    assert!(wait_until(Duration::from_secs(20), || oncall.accepted().len() == 2).await);

    for (offset, step) in [("+1d", "86400s"), ("-1h", "-3600s")] {
        d.stop();
        let c = shifted(&d, offset);
        d.spawn_command(c).await;
        assert!(
            d.wait_log(
                &format!("The wall clock moved {step}"),
                1,
                Duration::from_secs(10)
            )
            .await,
            "{offset}: no warning about the step:\n{}",
            d.logs()
        );
        // The budget spent before the stop is spent still, for the rest of its real hour.
        let st = d.status().await;
        let budget = &integration_status(&st, "db")["budget"];
        let next = budget["next_free_in_s"].as_f64().unwrap();
        assert_eq!(budget["used"], 2, "{offset}: {st}");
        assert!((3000.0..=3600.0).contains(&next), "{offset}: {st}");
    }
    let (s, _) = d.post("db", r#"{"title":"third","alert_uid":"u3"}"#).await;
    assert_eq!(s, 202);
    let st = d.status().await;
    assert_eq!(integration_status(&st, "db")["depth"], 1, "{st}");
    assert_eq!(
        oncall.all().len(),
        2,
        "a third request went out inside the spent hour"
    );
}
