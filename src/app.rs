//! Wiring: opens the queue, starts the writer, the dispatcher and the listeners, and owns
//! signals (SIGHUP reloads, SIGTERM/SIGINT stop), readiness and the watchdog, and shutdown.
//!
//! Shutdown order matters for "nothing accepted is lost": listeners stop accepting and finish
//! the requests they have (each waits for its alert to be durable), then the writer drains
//! its channel and stops, then the dispatcher lets in-flight deliveries finish and the queue
//! is flushed. All of it shares one deadline, `shutdown_timeout` from the stop signal, so the
//! whole stop fits in the unit's `TimeoutStopSec` (see `config::MAX_SHUTDOWN_TIMEOUT`).
//!
//! A stop signal wins over anything the main loop awaits, the OnCall API included: resolving
//! `id`/`api_name` integrations at start or on reload is abandoned when SIGTERM comes.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::config::Config;
use crate::observe::Reporter;
use crate::queue::store::Quarantined;
use crate::queue::writer::{Alert, WriterConfig};
use crate::queue::{Ingest, Store, StoreError};
use crate::sender::{Control, Dispatcher, HttpTransport, Jitter, SenderConfig};
use crate::sources::http::{self, ConnLimits, Exposure, HttpState};

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
    #[error("{0}")]
    Fatal(String),
}

/// Changes the log filter of the running process (a tracing-subscriber reload handle, set up
/// by the binary); the error says why the level was not applied.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the binary hands the daemon beyond its config.
#[derive(Default)]
pub struct Hooks {
    /// Applies `log.level` on reload; `None` when logging was set up elsewhere (tests).
    pub set_log_level: Option<SetLogLevel>,
    /// Sockets passed by systemd, taken from the environment before any thread started
    /// ([`take_listen_fds`]).
    pub listen_fds: ListenFds,
}

/// The descriptors systemd passed for socket activation (`LISTEN_FDS`, from fd 3 on).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListenFds(pub Vec<RawFd>);

/// Reads the socket-activation variables and removes `LISTEN_FDS`, `LISTEN_PID` and
/// `LISTEN_FDNAMES` from the environment, so that a child (a `send` run by a hook, say) never
/// takes the sockets for its own. Descriptors passed to another process (`LISTEN_PID` not
/// ours) are not taken, and the variables are left alone then.
///
/// # Safety
///
/// Changes the environment: no other thread may exist yet (call it first in `main`, before
/// any runtime or thread starts), since another thread reading the environment meanwhile is
/// undefined behaviour.
pub unsafe fn take_listen_fds() -> ListenFds {
    let mine = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !mine {
        return ListenFds::default();
    }
    let n: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // SAFETY: the caller guarantees no other thread exists (see above).
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    ListenFds((3..3 + n.max(0)).collect())
}

/// How often STATUS= goes to systemd when no watchdog asks for more often.
const STATUS_PERIOD: Duration = Duration::from_secs(5);

/// Runs the daemon until SIGTERM or SIGINT (or `stop`, for tests and embedding).
pub async fn run(config: Config, stop: impl Future<Output = ()> + Send) -> Result<(), AppError> {
    run_with(config, stop, Hooks::default()).await
}

/// [`run`], with the binary's [`Hooks`].
pub async fn run_with(
    config: Config,
    stop: impl Future<Output = ()> + Send,
    mut hooks: Hooks,
) -> Result<(), AppError> {
    // First of all: SIGHUP's default action ends the process, and a reload may come as soon
    // as the listeners answer (systemd's ExecReload, a script right after start). A signal
    // that arrives before the loop below reads it waits in the stream.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| AppError::Start(format!("SIGHUP handler: {e}")))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AppError::Start(format!("SIGTERM handler: {e}")))?;
    let mut stop = std::pin::pin!(stop);
    let db_path = config.db_path();
    let (store, quarantined) =
        Store::open(&db_path, config.queue.cache_capacity).map_err(|source| AppError::Store {
            path: db_path.clone(),
            source,
        })?;
    let store = Arc::new(store);
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
    // Integrations given by id/api_name get their inbound URLs before anything sends.
    let mut resolver = crate::api::Resolver::new(&config, store.clone(), clock);
    let config = tokio::select! {
        c = resolver.resolve(config) => c,
        _ = stop_requested(&mut term, &mut stop) => {
            tracing::info!("Stopped while resolving integrations through the OnCall API, before anything was accepted.");
            return Ok(());
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

    let transport = HttpTransport::new(config.delivery.timeout)
        .map_err(|e| AppError::Start(format!("HTTP client: {}", e.without_url())))?;
    let (board, board_rx) = tokio::sync::watch::channel(Default::default());
    let dispatcher = Dispatcher::new(
        store.clone(),
        Arc::new(transport),
        SenderConfig::from_config(&config),
        clock,
        Jitter::Full,
        board,
    )
    .map_err(|e| AppError::Sender(e.to_string()))?;
    let reporter = Arc::new(Reporter {
        store: store.clone(),
        board: board_rx,
        clock,
        started: clock.now(),
        max_bytes: config.queue.max_bytes,
        rates: Mutex::new(rates_of(&config)),
        received: ingest.received().clone(),
        sources: Arc::default(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let (control_tx, control_rx) = mpsc::channel(4);
    let mut sender = tokio::spawn(dispatcher.run(control_rx, stop_rx.clone()));
    let mut sender_done = None;

    let state = HttpState {
        ingest: ingest.clone(),
        reporter: reporter.clone(),
        max_body: config.queue.max_body,
        body_timeout: config.listen.body_timeout,
        sender: control_tx.clone(),
    };
    let servers = start_listeners(
        &config,
        state,
        stop_rx.clone(),
        std::mem::take(&mut hooks.listen_fds),
    )?;
    let supervisor = tokio::spawn(supervise(
        ingest.clone(),
        control_tx.clone(),
        reporter.clone(),
        stop_rx.clone(),
    ));
    let mut sources = Sources::start(&config, &ingest, &reporter);
    drop(ingest);

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

    let mut config = config;
    let mut failure = None;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                match Config::load(&config.path) {
                    Ok(new) => {
                        resolver.reconfigure(&new);
                        let resolved = tokio::select! {
                            n = resolver.resolve(new) => Some(n),
                            _ = stop_requested(&mut term, &mut stop) => None,
                        };
                        let Some(new) = resolved else {
                            tracing::info!("Stopping: the reload was abandoned while the OnCall API was being asked; the old configuration stayed in force.");
                            break;
                        };
                        apply_reload(&config, &new, &servers.ingest, &control_tx, &reporter).await;
                        servers.reload(&new);
                        if config.sources != new.sources {
                            sources.restart(&new, &servers.ingest, &reporter, new.shutdown_timeout).await;
                        }
                        apply_log_level(&config, &new, &hooks);
                        config = new;
                    }
                    Err(e) => tracing::error!("The new configuration was refused, the old one stays in force: {e}"),
                }
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
            _ = resolver.due() => {
                let resolved = tokio::select! {
                    n = resolver.resolve(config.clone()) => Some(n),
                    _ = stop_requested(&mut term, &mut stop) => None,
                };
                let Some(new) = resolved else { break };
                if new.unresolved.len() < config.unresolved.len() {
                    apply_reload(&config, &new, &servers.ingest, &control_tx, &reporter).await;
                    config = new;
                }
            }
            _ = stop_requested(&mut term, &mut stop) => break,
            _ = store.fatal_notify.notified() => {
                failure = Some(disk_failure(&store));
                break;
            }
            r = &mut sender => {
                // The dispatcher may meet a failed disk first (an ack, a limiter write): the
                // same failure, reported and handled once, as the disk's.
                if let Ok(Err(crate::sender::dispatcher::DispatchError::Limiter(e))) = &r {
                    store.check_sled_error(e);
                }
                if store.fatal().is_some() {
                    failure = Some(disk_failure(&store));
                    sender_done = Some(());
                    break;
                }
                let why = match r {
                    Ok(Ok(())) => "it ended".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::error!("The sender stopped ({why}); stopping so that the supervisor restarts the agent.");
                failure = Some(AppError::Sender(why));
                sender_done = Some(());
                break;
            }
        }
    }

    if let Some(f @ AppError::Fatal(_)) = failure {
        // Nothing is left to save: every alert answered 202 is on disk, and the database
        // takes no more writes. Exit at once; the binary logs the one ERROR and the
        // supervisor restarts the agent on a freshly opened database.
        let _ = stop_tx.send(true);
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        return Err(f);
    }
    tracing::info!("Stopping: no new alerts are accepted; in-flight work finishes.");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    // One deadline for the whole stop: every stage below waits at most until then, so the
    // stop takes shutdown_timeout plus the final sync, whatever stage is slow.
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    let Servers {
        handles,
        ingest,
        state,
        routers,
    } = servers;
    // The routers hold Ingest handles too.
    drop((ingest, state, routers));
    // It holds an Ingest handle too; the writer ends only once every handle is gone.
    let _ = tokio::time::timeout_at(deadline, supervisor).await;
    let _ = tokio::time::timeout_at(deadline, async {
        for h in handles.into_iter().chain(sources.stop()) {
            let _ = h.await;
        }
    })
    .await;
    // Every Ingest handle is gone once the servers are: the writer commits what it holds.
    // Bounded: a source or connection still holding a handle must not hang the stop. Every
    // alert already answered is on disk, whatever the writer still holds is unanswered.
    if tokio::time::timeout_at(deadline, tokio::task::spawn_blocking(move || writer.join()))
        .await
        .is_err()
    {
        tracing::warn!(
            "The queue writer did not finish within shutdown_timeout; stopping anyway (alerts it had not answered were not acknowledged to their senders)."
        );
    }
    if sender_done.is_none() {
        match tokio::time::timeout_at(deadline, sender).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(AppError::Sender(e.to_string())),
            Ok(Err(e)) => return Err(AppError::Sender(e.to_string())),
            Err(_) => tracing::warn!(
                "In-flight deliveries did not finish within shutdown_timeout; they stay queued and go out after the restart."
            ),
        }
    }
    if let Err(e) = store.sync() {
        tracing::error!("The final sync of the queue failed: {}", e.reason());
    }
    if let Some(f) = failure {
        return Err(f);
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// The daemon's exit after the queue database failed (see `Store::set_fatal`).
fn disk_failure(store: &Store) -> AppError {
    AppError::Fatal(format!(
        "The queue database can no longer be written ({}); the agent stops so that its supervisor restarts it. Every alert answered 202 is on disk.",
        store.fatal().unwrap_or_default()
    ))
}

/// Completes when the daemon is asked to stop: SIGTERM, SIGINT, or the embedder's `stop`
/// (which must not be polled again once it completed: the caller stops then).
async fn stop_requested<S: Future<Output = ()>>(
    term: &mut tokio::signal::unix::Signal,
    stop: &mut std::pin::Pin<&mut S>,
) {
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => { let _ = r; }
        _ = stop.as_mut() => {}
    }
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
    // Unresolved integrations count as configured: their alerts are accepted and kept.
    let names = |c: &Config| -> Vec<String> { c.integration_names() };
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
    let (o, n) = (&old.listen, &new.listen);
    let (oq, nq) = (&old.queue, &new.queue);
    let mut later = Vec::new();
    for (changed, what) in [
        (o.unix != n.unix, "listen.unix"),
        (o.tcp != n.tcp, "listen.tcp"),
        (o.unix_mode != n.unix_mode, "listen.unix_mode"),
        (o.unix_group != n.unix_group, "listen.unix_group"),
        (
            o.max_connections != n.max_connections,
            "listen.max_connections",
        ),
        (
            o.header_timeout != n.header_timeout,
            "listen.header_timeout",
        ),
        (old.state_dir != new.state_dir, "state_dir"),
        (oq.max_bytes != nq.max_bytes, "queue.max_bytes"),
        (
            oq.cache_capacity != nq.cache_capacity,
            "queue.cache_capacity",
        ),
        (
            oq.channel_capacity != nq.channel_capacity,
            "queue.channel_capacity",
        ),
        (oq.batch_max != nq.batch_max, "queue.batch_max"),
    ] {
        if changed {
            later.push(what);
        }
    }
    if !later.is_empty() {
        tracing::warn!(
            "Changes to {} take effect at the next restart.",
            later.join(", ")
        );
    }
    tracing::info!(added = ?added, removed = ?removed, "Configuration reloaded.");
}

/// The running file and spool sources, with a stop signal of their own so that a reload can
/// replace them without stopping the daemon.
struct Sources {
    handles: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Sources {
    fn start(config: &Config, ingest: &Ingest, reporter: &Reporter) -> Sources {
        let (stop, stop_rx) = watch::channel(false);
        let handles =
            crate::sources::start(config, ingest, &stop_rx, &reporter.sources, reporter.clock);
        Sources { handles, stop }
    }

    /// Tells the sources to stop (each finishes the commit it is in); their tasks to await.
    fn stop(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = self.stop.send(true);
        std::mem::take(&mut self.handles)
    }

    /// Replaces the sources after a reload changed `[[source]]`. The old ones stop first:
    /// their read positions are in the queue database, where the new ones pick them up, and
    /// two sources must never tail one file at once (each would send its lines).
    async fn restart(
        &mut self,
        config: &Config,
        ingest: &Ingest,
        reporter: &Reporter,
        wait: std::time::Duration,
    ) {
        let old = self.stop();
        let stopped = tokio::time::timeout(wait, async {
            for h in old {
                let _ = h.await;
            }
        })
        .await;
        if stopped.is_err() {
            tracing::error!(
                "The old [[source]]s did not stop in time; no source runs until the agent is restarted."
            );
            return;
        }
        *self = Sources::start(config, ingest, reporter);
        tracing::info!(
            sources = config.sources.len(),
            "Sources restarted with the new configuration."
        );
    }
}

/// Applies a changed `log.level`. RUST_LOG, when set, wins over the config (as at start).
fn apply_log_level(old: &Config, new: &Config, hooks: &Hooks) {
    if old.log_level == new.log_level {
        return;
    }
    let Some(set) = &hooks.set_log_level else {
        return;
    };
    match set(&new.log_level) {
        Ok(()) => tracing::info!(level = %new.log_level, "The log level changed."),
        Err(why) => {
            tracing::warn!(level = %new.log_level, "The new log level was not applied: {why}.")
        }
    }
}

/// Feeds systemd: STATUS= with the queue's state, and WATCHDOG=1 only while the queue writer
/// and the dispatcher both answer a ping within half the watchdog interval. A stuck writer
/// (say, an fsync that never returns) or a wedged dispatcher thus gets the agent restarted
/// by systemd instead of leaving a daemon that accepts nothing or sends nothing.
async fn supervise(
    ingest: Ingest,
    control: mpsc::Sender<Control>,
    reporter: Arc<Reporter>,
    mut stop: watch::Receiver<bool>,
) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec)
        .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(50)));
    let period = watchdog.map_or(STATUS_PERIOD, |w| w.min(STATUS_PERIOD));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let r = reporter.clone();
        let line = tokio::task::spawn_blocking(move || r.report().one_line())
            .await
            .unwrap_or_default();
        let Some(limit) = watchdog else {
            notify_systemd(&[sd_notify::NotifyState::Status(&line)]);
            continue;
        };
        // Both at once: one tick must fit in the watchdog interval even when both are slow.
        let (writer, sender) = tokio::join!(
            tokio::time::timeout(limit, ingest.ping()),
            tokio::time::timeout(limit, async {
                let (tx, rx) = tokio::sync::oneshot::channel();
                control.send(Control::Ping(tx)).await.ok()?;
                rx.await.ok()
            })
        );
        match (writer, sender) {
            (Ok(Ok(())), Ok(Some(()))) => {
                if failing {
                    tracing::info!("The queue writer and the dispatcher answer again.");
                    failing = false;
                }
                notify_systemd(&[
                    sd_notify::NotifyState::Watchdog,
                    sd_notify::NotifyState::Status(&line),
                ]);
            }
            (w, d) => {
                // A failed disk stops the daemon, which says so itself.
                if *stop.borrow() || reporter.store.fatal().is_some() {
                    return;
                }
                if !failing {
                    let who = match (w.is_ok_and(|r| r.is_ok()), d.is_ok_and(|r| r.is_some())) {
                        (false, false) => "the queue writer and the dispatcher",
                        (false, true) => "the queue writer",
                        _ => "the dispatcher",
                    };
                    tracing::error!(
                        "{who} did not answer within {limit:?}; the watchdog is no longer fed, so systemd will restart the agent if it does not recover."
                    );
                    failing = true;
                }
                let stuck = format!("STUCK: {line}");
                notify_systemd(&[sd_notify::NotifyState::Status(&stuck)]);
            }
        }
    }
}

/// The listeners' tasks, and the ingest handle reload uses.
struct Servers {
    handles: Vec<tokio::task::JoinHandle<()>>,
    ingest: Ingest,
    /// What the routers are built from, for reload.
    state: HttpState,
    /// Each listener's router, replaced on reload: (is it the Unix socket, its router).
    routers: Vec<(bool, watch::Sender<axum::Router>)>,
}

impl Servers {
    /// Builds one listener's router from the config.
    fn router(state: &HttpState, config: &Config, unix: bool) -> axum::Router {
        let st = HttpState {
            ingest: state.ingest.for_source(if unix { "unix" } else { "tcp" }),
            max_body: config.queue.max_body,
            body_timeout: config.listen.body_timeout,
            ..state.clone()
        };
        let exposure = if unix {
            Exposure::Unix
        } else {
            Exposure::Tcp {
                auth_token: config.listen.auth_token.clone(),
            }
        };
        http::router(st, exposure)
    }

    /// Applies the new config's per-request settings (auth token, body size and deadline) to
    /// the listeners as they are: new connections get them, open ones finish as they began.
    fn reload(&self, config: &Config) {
        for (unix, tx) in &self.routers {
            let _ = tx.send(Servers::router(&self.state, config, *unix));
        }
    }
}

fn start_listeners(
    config: &Config,
    state: HttpState,
    stop: watch::Receiver<bool>,
    listen_fds: ListenFds,
) -> Result<Servers, AppError> {
    let limits = ConnLimits {
        max_connections: config.listen.max_connections,
        header_timeout: config.listen.header_timeout,
    };
    let (inherited_unix, inherited_tcp) = inherited_listeners(listen_fds);
    let mut handles = Vec::new();
    let mut routers = Vec::new();
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
        let (tx, apps) = watch::channel(Servers::router(&state, config, true));
        routers.push((true, tx));
        handles.push(tokio::spawn(http::serve_reloadable(
            l,
            apps,
            limits,
            stop.clone(),
        )));
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
        let (tx, apps) = watch::channel(Servers::router(&state, config, false));
        routers.push((false, tx));
        // No Nagle delay on answers (the socket unit cannot ask for it: its NoDelay= would
        // apply to the Unix socket too). A socket that refuses keeps working, only slower.
        use axum::serve::ListenerExt;
        let l = l.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        handles.push(tokio::spawn(http::serve_reloadable(l, apps, limits, stop)));
    }
    Ok(Servers {
        handles,
        ingest: state.ingest.clone(),
        state,
        routers,
    })
}

/// The sockets systemd passed ([`take_listen_fds`]) as listeners, at most one of each kind.
fn inherited_listeners(
    fds: ListenFds,
) -> (
    Option<tokio::net::UnixListener>,
    Option<tokio::net::TcpListener>,
) {
    let (mut unix, mut tcp) = (None, None);
    for fd in fds.0 {
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
    let host = hostname().unwrap_or_else(|| "this host".to_string());
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

/// The host's name, from gethostname(2): /proc/sys is hidden under the unit's ProcSubset=pid.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // The buffer outlives the call and its length is passed; the name is NUL-terminated when
    // it fits, and a name that does not fit is cut at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}
