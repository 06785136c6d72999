//! What the sender says in its log, on the paused clock against tests/sim: one line per
//! episode, not one per request, and a WARN whenever it will not obey a server's wait as given.
//!
//! Every test of this binary logs into one global subscriber (a scoped one per test loses
//! events when another test thread registers the same call site first), and each test counts
//! only the lines of its own integration names.

mod sim;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sim::*;

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's log, set up once.
fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let w = logs.clone();
        tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_writer(move || w.clone())
                .with_ansi(false)
                .finish(),
        )
        .unwrap();
        logs
    })
}

/// Lines about `integration` that contain `text`.
fn count(integration: &str, text: &str) -> usize {
    let field = format!("integration={integration}");
    String::from_utf8_lossy(&logs().0.lock().unwrap())
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == field) && l.contains(text))
        .count()
}

fn count_429(hits: &[Hit]) -> usize {
    hits.iter().filter(|h| h.status == 429).count()
}

/// Six 429s in one pause (four in flight, two refused probes) make one warning, and its end
/// one line; a second pause another pair.
#[tokio::test(start_paused = true)]
async fn a_429_pause_is_logged_once_not_per_refused_request() {
    logs();
    // Its 429 spans (0-40 s, 100-130 s) follow no 300 s window: pause-and-probe, unlearned.
    let mut d = default_delivery();
    d.learn = false;
    let mut sim = Sim::new(&[("paused", rate(300, 300))], rate(500, 300), d, 1);
    sim.fake.set_network(Network::fixed(40, 60));
    sim.fake.script(|h| {
        let t = h.arrived.unwrap() - T0;
        (t < 40_000 || (100_000..130_000).contains(&t)).then(Reply::integration_429)
    });
    sim.queue("paused", 12);
    sim.sync();
    sim.start();
    sim.run_until(60_000).await;
    assert_eq!(count_429(&sim.fake.hits()), 6);
    assert_eq!(count("paused", "OnCall answered 429"), 1);
    assert_eq!(count("paused", "The rate-limit pause is over"), 1);
    sim.queue("paused", 5);
    sim.run_until(100_000).await;
    sim.queue("paused", 5);
    sim.run_until(200_000).await;
    assert!(sim.all_delivered());
    assert_eq!(count("paused", "OnCall answered 429"), 2);
    assert_eq!(count("paused", "The rate-limit pause is over"), 2);
}

/// A Retry-After beyond `delivery.max_retry_after` (or, on a 429, beyond the budget's window)
/// is cut, and a WARN names both the asked and the obeyed wait.
#[tokio::test(start_paused = true)]
async fn a_clamped_retry_after_is_named_in_a_warning() {
    logs();
    let mut d = default_delivery();
    d.concurrency = 1;
    d.max_retry_after = Duration::from_secs(60);
    let mut sim = Sim::new(
        &[("clamp503", rate(300, 300)), ("clamp429", rate(300, 30))],
        rate(500, 300),
        d,
        1,
    );
    sim.fake.set_network(Network::fixed(40, 60));
    let seen = Mutex::new(Vec::new());
    sim.fake.script(move |h| {
        let mut seen = seen.lock().unwrap();
        if seen.contains(&h.integration) {
            return None;
        }
        seen.push(h.integration.clone());
        Some(match h.integration.as_str() {
            "clamp503" => Reply::new(503, "Service Unavailable").retry_after("999999999"),
            _ => Reply::integration_429().retry_after("18446744073709551615"),
        })
    });
    sim.queue("clamp503", 1);
    sim.queue("clamp429", 1);
    sim.sync();
    sim.start();
    sim.run_until(100_000).await;
    assert!(sim.all_delivered());
    assert_eq!(
        count(
            "clamp503",
            "OnCall asked for a wait of 999999999s (Retry-After on a retry); waiting 60s instead"
        ),
        1
    );
    assert_eq!(
        count(
            "clamp429",
            "OnCall asked for a wait of 18446744073709551615s (Retry-After on a 429); waiting 30s instead"
        ),
        1
    );
}
