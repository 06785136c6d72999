//! Heartbeats: a dead-man's switch for the host, sent through the same budget as alerts.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use oncall_agent::clock::Clock;
use oncall_agent::config::Rate;
use oncall_agent::queue::Store;
use oncall_agent::queue::{Envelope, key_hash};
use oncall_agent::redact::Secret;
use oncall_agent::sender::DeliverFuture;
use oncall_agent::sender::{Dispatcher, Jitter, Outcome, Transport};
use oncall_agent::sender::{SenderConfig, Target};
use tokio::sync::{mpsc, watch};

/// Records what arrives and when (on tokio's clock); accepts everything.
#[derive(Default, Clone)]
struct Recorder {
    log: Arc<Mutex<Vec<(Duration, &'static str)>>>,
    start: Arc<Mutex<Option<tokio::time::Instant>>>,
}

impl Recorder {
    fn record(&self, what: &'static str) -> DeliverFuture {
        let start = *self
            .start
            .lock()
            .unwrap()
            .get_or_insert_with(tokio::time::Instant::now);
        self.log.lock().unwrap().push((start.elapsed(), what));
        Box::pin(async { Outcome::Delivered })
    }
}

impl Transport for Recorder {
    fn deliver(&self, _url: &Secret<reqwest::Url>, _body: Vec<u8>) -> DeliverFuture {
        self.record("alert")
    }
    fn heartbeat(&self, _url: &Secret<reqwest::Url>) -> DeliverFuture {
        self.record("heartbeat")
    }
}

fn delivery() -> oncall_agent::config::Delivery {
    oncall_agent::config::Delivery {
        timeout: Duration::from_secs(10),
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(60),
        probe_interval: Duration::from_secs(15),
        max_retry_after: Duration::from_secs(600),
        learn: true,
        concurrency: 4,
    }
}

/// Integration "a" with budget `rate` and a heartbeat every minute; the org at 500/5m.
fn with_heartbeat(rate: &str) -> SenderConfig {
    let url = reqwest::Url::parse("http://oncall.invalid/integrations/v1/webhook/T/").unwrap();
    SenderConfig {
        delivery: delivery(),
        org: "500/5m".parse::<Rate>().unwrap(),
        targets: vec![Target {
            name: "a".into(),
            url: Secret::new(url.clone()),
            redacted_url: String::new(),
            rate: rate.parse().unwrap(),
            heartbeat: Some((
                Duration::from_secs(60),
                Secret::new(oncall_agent::config::heartbeat_url(&url)),
            )),
        }],
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeats_go_first_and_spend_the_integrations_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("q"), 8 << 20).unwrap();
    let store = Arc::new(store);
    let rows: Vec<(String, u64, Vec<u8>)> = (1..=20)
        .map(|n| {
            let payload = format!(r#"{{"n":{n}}}"#).into_bytes();
            let env = Envelope {
                received_at: 0,
                attempts: 0,
                next_attempt_at: 0,
                key_hash: key_hash(None, &payload),
                payload,
            };
            ("a".to_string(), n, env.encode())
        })
        .collect();
    store.append(&rows, &[]).unwrap();
    let cfg = with_heartbeat("5/5m");
    let rec = Recorder::default();
    let d = Dispatcher::new(
        store,
        Arc::new(rec.clone()),
        cfg,
        Clock::starting_at(1_000_000),
        Jitter::None,
        watch::channel(Default::default()).0,
    )
    .unwrap();
    let (_ctl, ctl_rx) = mpsc::channel(1);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(d.run(ctl_rx, stop_rx));
    tokio::time::sleep(Duration::from_secs(599)).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    let log = rec.log.lock().unwrap().clone();
    let at = |what: &str| -> Vec<u64> {
        log.iter()
            .filter(|(_, w)| *w == what)
            .map(|(t, _)| t.as_secs())
            .collect()
    };
    // Two windows of 5: the heartbeat leads each, alerts fill the rest; the heartbeats due at
    // 60..240 s wait for the budget like everything else.
    assert_eq!(at("heartbeat"), vec![0, 300], "{log:?}");
    assert_eq!(at("alert"), vec![0, 0, 0, 0, 300, 300, 300, 300], "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_hits_the_heartbeat_url_and_reports_it() {
    let oncall = FakeOnCall::start(&["HB"]).await;
    let d = Daemon::start(&format!(
        "{}heartbeat = \"1m\"\n",
        integration("a", &oncall.url("formatted_webhook", "HB"))
    ))
    .await;
    assert!(wait_until(Duration::from_secs(10), || oncall.heartbeats("HB") == 1).await);
    let ok = wait_for(Duration::from_secs(5), || async {
        let st = d.status().await;
        st["integrations"][0]["heartbeats_total"] == 1
            && st["integrations"][0]["budget"]["used"] == 1
    })
    .await;
    assert!(ok, "{}", d.status().await);
    // It is not an alert.
    assert!(oncall.accepted().is_empty());
}

/// Answers heartbeats with OnCall's heartbeat 429 (its text names neither budget), alerts 200.
struct LimitsHeartbeats;

impl Transport for LimitsHeartbeats {
    fn deliver(&self, _url: &Secret<reqwest::Url>, _body: Vec<u8>) -> DeliverFuture {
        Box::pin(async { Outcome::Delivered })
    }
    fn heartbeat(&self, _url: &Secret<reqwest::Url>) -> DeliverFuture {
        Box::pin(async {
            oncall_agent::sender::classify(
                429,
                None,
                None,
                b"We received too many heartbeats from integration and had to apply rate limiting.",
            )
        })
    }
}

/// A 429 on a heartbeat is counted as the integration's (OnCall's text for it cannot tell the
/// scope), pauses the integration like any 429, and its one warning says it was a heartbeat.
#[tokio::test(start_paused = true)]
async fn a_429_on_a_heartbeat_is_counted_and_pauses_as_the_integrations() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("q"), 8 << 20).unwrap();
    let cfg = with_heartbeat("300/5m");
    let (board, _) = watch::channel(Default::default());
    let d = Dispatcher::new(
        Arc::new(store),
        Arc::new(LimitsHeartbeats),
        cfg,
        Clock::starting_at(1_000_000),
        Jitter::None,
        board.clone(),
    )
    .unwrap();
    let (_ctl, ctl_rx) = mpsc::channel(1);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(d.run(ctl_rx, stop_rx));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = board.borrow().clone();
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    let a = &b.integrations["a"].budget;
    assert_eq!(a.rate_limited_total, 1, "{b:?}");
    assert_eq!(
        a.paused_reason.as_deref(),
        Some("429 without Retry-After; probing")
    );
    assert_eq!(b.org.rate_limited_total, 0);
}
