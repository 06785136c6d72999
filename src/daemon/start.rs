//! Start-up: the queue, the clock, the integrations resolved, then the writer, the
//! dispatcher, the listeners, the watchdog and the sources, and READY=1 last.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::listeners::start_listeners;
use super::sources::Sources;
use super::systemd::{notify_systemd, supervise};
use super::{AppError, Daemon, Hooks, Signals, rates_of};
use crate::api::Resolver;
use crate::clock::Clock;
use crate::config::Config;
use crate::fleet::Fleet;
use crate::observe::Reporter;
use crate::queue::store::Quarantined;
use crate::queue::writer::{Alert, WriterConfig};
use crate::queue::{Ingest, Store};
use crate::sender::{Dispatcher, HttpTransport, Jitter, SenderConfig, fleet_budgets};
use crate::server::HttpState;

/// Starts every part; `None` when a stop came while the integrations were being resolved
/// (before anything was accepted).
pub(super) async fn start(
    config: Config,
    signals: &mut Signals,
    hooks: &mut Hooks,
) -> Result<Option<Daemon>, AppError> {
    let (store, quarantined, clock) = open_queue(&config)?;
    // Integrations given by id/api_name get their inbound URLs before anything sends.
    let mut resolver = Resolver::new(&config, store.clone(), clock);
    let config = tokio::select! {
        c = resolver.resolve(config) => c,
        _ = signals.stop_requested() => {
            tracing::info!("Stopped while resolving integrations through the OnCall API, before anything was accepted.");
            return Ok(None);
        }
    };
    let (ingest, writer) = Ingest::start(
        store.clone(),
        config.integration_names(),
        WriterConfig {
            max_bytes: config.queue.max_bytes,
            channel_capacity: config.queue.channel_capacity,
            batch_max: config.queue.batch_max,
            min_free_space: config.queue.min_free_space,
        },
        clock,
    )
    .map_err(|e| AppError::Start(format!("queue writer thread: {e}")))?;
    if let Some(q) = &quarantined {
        report_quarantine(&config, &ingest, q).await;
    }
    let (stop, stop_rx) = watch::channel(false);
    let (control, control_rx) = mpsc::channel(4);
    let (dispatcher, reporter) = start_sender(&config, &store, &ingest, clock, &stop_rx)?;
    let sender = tokio::spawn(dispatcher.run(control_rx, stop_rx.clone()));
    let state = HttpState {
        ingest: ingest.clone(),
        reporter: reporter.clone(),
        max_body: config.queue.max_body,
        body_timeout: config.listen.body_timeout,
        sender: control.clone(),
    };
    let fds = std::mem::take(&mut hooks.listen_fds);
    let servers = start_listeners(&config, state, stop_rx.clone(), fds)?;
    let supervisor = tokio::spawn(supervise(
        ingest.clone(),
        control.clone(),
        reporter.clone(),
        stop_rx,
    ));
    let sources = Sources::start(&config, &ingest, &reporter);
    drop(ingest);
    announce_ready(&config, &reporter);
    Ok(Some(Daemon {
        config,
        store,
        resolver,
        reporter,
        control,
        servers,
        sources,
        supervisor,
        sender,
        writer,
        stop,
    }))
}

/// Opens the queue (moving a corrupt one aside) and resumes the agent's clock beside it.
fn open_queue(config: &Config) -> Result<(Arc<Store>, Option<Quarantined>, Clock), AppError> {
    let db_path = config.db_path();
    let (store, quarantined) =
        Store::open(&db_path, config.queue.cache_capacity).map_err(|source| AppError::Store {
            path: db_path.clone(),
            source,
        })?;
    // After the store: its folder exists for the clock's anchor file.
    let (clock, step) = Clock::resume(&config.state_dir.join("clock"));
    if step != 0 {
        tracing::warn!(
            "The wall clock moved {}s while the agent was down (same boot); the agent's clock continues from where it stood, so rate-limit budgets stay true to real time. Times it shows are off by that much until the next reboot.",
            // Rounded: the wall and boot clocks are read a moment apart.
            (step as f64 / 1000.0).round() as i64
        );
    }
    let depth: u64 = store.depths().values().map(|d| d.alerts).sum();
    tracing::info!(path = %db_path.display(), queued = depth, "The queue is open.");
    Ok((Arc::new(store), quarantined, clock))
}

/// The dispatcher (not started yet) and the reporter reading what it publishes.
fn start_sender(
    config: &Config,
    store: &Arc<Store>,
    ingest: &Ingest,
    clock: Clock,
    stop: &watch::Receiver<bool>,
) -> Result<(Dispatcher, Arc<Reporter>), AppError> {
    let transport = HttpTransport::new(config.delivery.timeout)
        .map_err(|e| AppError::Start(format!("HTTP client: {}", e.without_url())))?;
    let (board, board_rx) = watch::channel(Default::default());
    let sender_config = SenderConfig::from_config(config);
    let mut dispatcher = Dispatcher::new(
        store.clone(),
        Arc::new(transport),
        sender_config.clone(),
        clock,
        Jitter::Full,
        board,
    )
    .map_err(|e| AppError::Sender(e.to_string()))?;
    // The fleet's task runs until the stop; it is not waited for: settles it had not sent
    // leave their slots counting to their bound in Redis, which is safe.
    if let Some(f) = &config.fleet {
        let budgets = fleet_budgets(&sender_config, &f.org);
        let (fleet, _task) = Fleet::start(f.clone(), budgets, clock, stop.clone());
        tracing::info!(redis = %f.redacted, host = %f.host, org = %f.org, "Budgets are shared with the fleet through Redis; alone, this host uses {:.1}% of each.", f.local_share * 100.0);
        dispatcher = dispatcher.with_fleet(fleet);
    }
    let reporter = Arc::new(Reporter {
        store: store.clone(),
        board: board_rx,
        clock,
        started: clock.now(),
        max_bytes: config.queue.max_bytes,
        rates: Mutex::new(rates_of(config)),
        received: ingest.received().clone(),
        sources: Arc::default(),
    });
    Ok((dispatcher, reporter))
}

fn announce_ready(config: &Config, reporter: &Reporter) {
    let line = reporter.report().one_line();
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&line),
    ]);
    tracing::info!(
        integrations = config.integrations.len(),
        unresolved = config.unresolved.len(),
        "oncall-agent {} is ready.",
        env!("CARGO_PKG_VERSION")
    );
}

/// Says loudly that the database was moved aside, and queues an alert about it so that the
/// on-call person learns alerts may be missing even if nobody reads the logs.
async fn report_quarantine(config: &Config, ingest: &Ingest, q: &Quarantined) {
    tracing::error!(
        moved_to = %q.moved_to.display(),
        "The queue database was corrupt ({}). It was moved aside and kept; an empty queue was started. Alerts queued before may be missing.",
        q.error
    );
    let Some(target) = config
        .self_alert_integration
        .clone()
        .or_else(|| config.integrations.first().map(|i| i.name.clone()))
    else {
        return;
    };
    let host = crate::host::name().unwrap_or_else(|| "this host".to_string());
    let body = serde_json::json!({
        "title": format!("oncall-agent on {host}: queue database was corrupt"),
        "message": format!(
            "The agent's queue database was unreadable ({}) and was moved to {}. \
             Alerts queued on {host} before the restart may not have been delivered.",
            q.error,
            q.moved_to.display()
        ),
        "alert_uid": format!("oncall-agent-{host}-queue-corrupt"),
        "state": "alerting",
    });
    let payload = serde_json::to_vec(&body).unwrap_or_default();
    let key = crate::queue::envelope::key_hash(None, &payload);
    let alert = Alert {
        integration: target,
        payload,
        key_hash: key,
    };
    if let Err(e) = ingest.submit(alert).await {
        tracing::error!("The alert about the corrupt database could not be queued: {e}");
    }
}
