//! Wiring: opens the queue, starts the writer, the dispatcher and the listeners, and owns
//! signals (SIGHUP reloads, SIGTERM/SIGINT stop), readiness and the watchdog, and shutdown.
//!
//! Shutdown order matters for "nothing accepted is lost": listeners stop accepting and finish
//! the requests they have (each waits for its alert to be durable), then the writer drains
//! its channel and stops, then the dispatcher lets in-flight deliveries finish (bounded by
//! `shutdown_timeout`) and the queue is flushed.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::config::Config;
use crate::queue::store::Quarantined;
use crate::queue::writer::{Alert, WriterConfig};
use crate::queue::{Ingest, Store, StoreError};
use crate::sender::{Control, Dispatcher, HttpTransport, Jitter, SenderConfig};
use crate::sources::http::{self, ConnLimits, Exposure, HttpState};
use crate::status::{Reporter, SharedBoard};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the queue at {path}: {source}")]
    Store {
        path: std::path::PathBuf,
        source: StoreError,
    },
    #[error("cannot listen on {what}: {source}")]
    Listen {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Start(String),
    #[error("the sender stopped: {0}")]
    Sender(String),
}

/// Runs the daemon until SIGTERM or SIGINT (or `stop`, for tests and embedding).
pub async fn run(config: Config, stop: impl Future<Output = ()> + Send) -> Result<(), AppError> {
    let clock = Clock::system();
    let db_path = config.db_path();
    let (store, quarantined) =
        Store::open(&db_path, config.queue.cache_capacity).map_err(|source| AppError::Store {
            path: db_path.clone(),
            source,
        })?;
    let store = Arc::new(store);
    let depth: u64 = store.depths().values().map(|d| d.alerts).sum();
    tracing::info!(path = %db_path.display(), queued = depth, "The queue is open.");

    let (ingest, writer) = Ingest::start(
        store.clone(),
        config.integrations.iter().map(|i| i.name.clone()),
        WriterConfig {
            max_bytes: config.queue.max_bytes,
            channel_capacity: config.queue.channel_capacity,
            batch_max: config.queue.batch_max,
        },
        clock,
    )
    .map_err(|e| AppError::Start(format!("queue writer thread: {e}")))?;
    if let Some(q) = &quarantined {
        report_quarantine(&config, &ingest, q).await;
    }

    let transport = HttpTransport::new(config.delivery.timeout)
        .map_err(|e| AppError::Start(format!("HTTP client: {}", e.without_url())))?;
    let board: SharedBoard = Arc::default();
    let dispatcher = Dispatcher::new(
        store.clone(),
        Arc::new(transport),
        SenderConfig::from_config(&config),
        clock,
        Jitter::Full,
        board.clone(),
    )
    .map_err(|e| AppError::Sender(e.to_string()))?;
    let reporter = Arc::new(Reporter {
        store: store.clone(),
        board,
        clock,
        started: clock.now(),
        max_bytes: config.queue.max_bytes,
        rates: Mutex::new(rates_of(&config)),
        sources: Arc::default(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let (control_tx, control_rx) = mpsc::channel(4);
    let sender = tokio::spawn(dispatcher.run(control_rx, stop_rx.clone()));

    let state = HttpState {
        ingest: ingest.clone(),
        reporter: reporter.clone(),
        max_body: config.queue.max_body,
        body_timeout: config.listen.body_timeout,
    };
    let servers = start_listeners(&config, state, stop_rx.clone())?;
    let sources = crate::sources::start(&config, &ingest, &stop_rx, &reporter.sources);
    drop(ingest);

    notify_systemd(&[sd_notify::NotifyState::Ready]);
    tracing::info!(
        integrations = config.integrations.len(),
        "oncall-agent {} is ready.",
        env!("CARGO_PKG_VERSION")
    );

    let mut config = config;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| AppError::Start(format!("SIGHUP handler: {e}")))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AppError::Start(format!("SIGTERM handler: {e}")))?;
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                match Config::load(&config.path) {
                    Ok(new) => {
                        apply_reload(&config, &new, &servers.ingest, &control_tx, &reporter).await;
                        config = new;
                    }
                    Err(e) => tracing::error!("The new configuration was refused, the old one stays in force: {e}"),
                }
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
            _ = term.recv() => break,
            r = tokio::signal::ctrl_c() => { let _ = r; break }
            _ = &mut stop => break,
        }
    }

    tracing::info!("Stopping: no new alerts are accepted; in-flight work finishes.");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    let deadline = config.shutdown_timeout;
    let Servers { handles, ingest } = servers;
    drop(ingest);
    let _ = tokio::time::timeout(deadline, async {
        for h in handles.into_iter().chain(sources) {
            let _ = h.await;
        }
    })
    .await;
    // Every Ingest handle is gone once the servers are: the writer commits what it holds.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    match tokio::time::timeout(deadline, sender).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(AppError::Sender(e.to_string())),
        Ok(Err(e)) => return Err(AppError::Sender(e.to_string())),
        Err(_) => tracing::warn!(
            "In-flight deliveries did not finish within shutdown_timeout; they stay queued and go out after the restart."
        ),
    }
    if let Err(e) = store.sync() {
        tracing::error!("The final sync of the queue failed: {e}");
    }
    tracing::info!("Stopped.");
    Ok(())
}

fn rates_of(c: &Config) -> BTreeMap<String, crate::config::Rate> {
    c.integrations
        .iter()
        .map(|i| (i.name.clone(), i.rate))
        .collect()
}

async fn apply_reload(
    old: &Config,
    new: &Config,
    ingest: &Ingest,
    control: &mpsc::Sender<Control>,
    reporter: &Reporter,
) {
    let names =
        |c: &Config| -> Vec<String> { c.integrations.iter().map(|i| i.name.clone()).collect() };
    let (old_names, new_names) = (names(old), names(new));
    let removed: Vec<&String> = old_names
        .iter()
        .filter(|n| !new_names.contains(n))
        .collect();
    let added: Vec<&String> = new_names
        .iter()
        .filter(|n| !old_names.contains(n))
        .collect();
    ingest.set_integrations(new_names.clone());
    *reporter.rates.lock().expect("rates lock") = rates_of(new);
    let _ = control
        .send(Control::Reload(SenderConfig::from_config(new)))
        .await;
    for n in &removed {
        let d = reporter.store.depth(n);
        tracing::warn!(integration = %n, queued = d.alerts, "Integration removed by reload; its queued alerts are kept and go out if it comes back.");
    }
    if old.listen.unix != new.listen.unix
        || old.listen.tcp != new.listen.tcp
        || old.state_dir != new.state_dir
    {
        tracing::warn!("Changes to listen addresses or state_dir take effect at the next restart.");
    }
    if old.sources != new.sources {
        tracing::warn!(
            "Changes to [[source]] take effect at the next restart; the running sources go on as they were."
        );
    }
    tracing::info!(added = ?added, removed = ?removed, "Configuration reloaded.");
}

/// The listeners' tasks, and the ingest handle reload uses.
struct Servers {
    handles: Vec<tokio::task::JoinHandle<()>>,
    ingest: Ingest,
}

fn start_listeners(
    config: &Config,
    state: HttpState,
    stop: watch::Receiver<bool>,
) -> Result<Servers, AppError> {
    let limits = ConnLimits {
        max_connections: config.listen.max_connections,
        header_timeout: config.listen.header_timeout,
    };
    let (inherited_unix, inherited_tcp) = inherited_listeners();
    let mut handles = Vec::new();
    let unix = match (inherited_unix, &config.listen.unix) {
        (Some(l), _) => Some(l),
        (None, Some(path)) => Some(
            http::bind_unix(
                path,
                config.listen.unix_mode,
                config.listen.unix_group.as_deref(),
            )
            .map_err(|source| AppError::Listen {
                what: path.display().to_string(),
                source,
            })?,
        ),
        (None, None) => None,
    };
    if let Some(l) = unix {
        let app = http::router(state.clone(), Exposure::Unix);
        handles.push(tokio::spawn(http::serve(l, app, limits, stop.clone())));
    }
    let tcp = match (inherited_tcp, config.listen.tcp) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => {
            let std = std::net::TcpListener::bind(addr).map_err(|source| AppError::Listen {
                what: addr.to_string(),
                source,
            })?;
            std.set_nonblocking(true)
                .map_err(|source| AppError::Listen {
                    what: addr.to_string(),
                    source,
                })?;
            Some(
                tokio::net::TcpListener::from_std(std).map_err(|source| AppError::Listen {
                    what: addr.to_string(),
                    source,
                })?,
            )
        }
        (None, None) => None,
    };
    if let Some(l) = tcp {
        if let Ok(a) = l.local_addr() {
            tracing::info!(address = %a, "Listening on TCP.");
        }
        let app = http::router(
            state.clone(),
            Exposure::Tcp {
                auth_token: config.listen.auth_token.clone(),
            },
        );
        handles.push(tokio::spawn(http::serve(l, app, limits, stop)));
    }
    Ok(Servers {
        handles,
        ingest: state.ingest,
    })
}

/// Sockets passed by systemd socket activation (LISTEN_FDS), at most one of each kind.
fn inherited_listeners() -> (
    Option<tokio::net::UnixListener>,
    Option<tokio::net::TcpListener>,
) {
    let mine = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (mut unix, mut tcp) = (None, None);
    if !mine || n <= 0 {
        return (None, None);
    }
    for fd in 3..3 + n {
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // getsockname only tells the family of a descriptor systemd handed us.
        let rc = unsafe {
            libc::getsockname(
                fd,
                (&mut addr as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            tracing::warn!(fd, "An inherited descriptor is not a socket; ignored.");
            continue;
        }
        match addr.ss_family as libc::c_int {
            libc::AF_UNIX if unix.is_none() => {
                // The descriptor is ours alone: systemd passed it to this process.
                let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
                if l.set_nonblocking(true).is_ok() {
                    unix = tokio::net::UnixListener::from_std(l).ok();
                }
            }
            libc::AF_INET | libc::AF_INET6 if tcp.is_none() => {
                let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                if l.set_nonblocking(true).is_ok() {
                    tcp = tokio::net::TcpListener::from_std(l).ok();
                }
            }
            _ => tracing::warn!(fd, "An inherited socket of an unexpected kind is ignored."),
        }
    }
    // SAFETY: single-threaded use at start-up; children must not think these are theirs.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if unix.is_some() || tcp.is_some() {
        tracing::info!(
            unix = unix.is_some(),
            tcp = tcp.is_some(),
            "Using sockets passed by systemd."
        );
    }
    (unix, tcp)
}

fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(false, state);
    }
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
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this host".to_string());
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
