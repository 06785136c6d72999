//! The daemon's life: [`start`] opens the queue and starts the writer, the dispatcher, the
//! listeners and the sources; the loop here waits for signals (SIGHUP reloads, SIGTERM/SIGINT
//! stop) and failures; [`reload`] says what a new config changes, and [`shutdown`] stops the
//! parts in order. [`systemd`] holds readiness, the watchdog and socket activation.
//!
//! Shutdown order matters for "nothing accepted is lost": listeners stop accepting and finish
//! the requests they have (each waits for its alert to be durable), then the writer drains
//! its channel and stops, then the dispatcher lets in-flight deliveries finish and the queue
//! is flushed. All of it shares one deadline, `shutdown_timeout` from the stop signal, so the
//! whole stop fits in the unit's `TimeoutStopSec` (see `config::MAX_SHUTDOWN_TIMEOUT`).
//!
//! A stop signal wins over anything the main loop awaits, the OnCall API included: resolving
//! `id`/`api_name` integrations at start or on reload is abandoned when SIGTERM comes.

mod listeners;
pub(crate) mod reload;
mod shutdown;
mod sources;
mod start;
mod systemd;

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::Resolver;
use crate::config::{Config, Rate};
use crate::observe::Reporter;
use crate::queue::{Store, StoreError};
use crate::sender::dispatcher::DispatchError;
use crate::sender::{Control, SenderConfig};
use listeners::Servers;
pub use reload::{ConfigDiff, RestartOnly};
use sources::Sources;
use systemd::notify_systemd;
pub use systemd::{ListenFds, take_listen_fds};

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

/// Runs the daemon until SIGTERM or SIGINT (or `stop`, for tests and embedding).
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    run_with(config, stop, Hooks::default()).await
}

/// [`run`], with the binary's [`Hooks`].
pub async fn run_with(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
    mut hooks: Hooks,
) -> Result<(), AppError> {
    // First of all: SIGHUP's default action ends the process, and a reload may come as soon
    // as the listeners answer (systemd's ExecReload, a script right after start). A signal
    // that arrives before the loop reads it waits in the stream.
    let mut signals = Signals::install(stop)?;
    let Some(mut daemon) = start::start(config, &mut signals, &mut hooks).await? else {
        return Ok(());
    };
    let ending = daemon.serve(&mut signals, &hooks).await;
    shutdown::stop(daemon, ending).await
}

/// The stop and reload requests: SIGHUP, SIGTERM, SIGINT and the embedder's `stop`.
struct Signals {
    hup: Signal,
    term: Signal,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Signals {
    fn install(stop: impl Future<Output = ()> + Send + 'static) -> Result<Signals, AppError> {
        let handler = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| AppError::Start(format!("{name} handler: {e}")))
        };
        Ok(Signals {
            hup: handler(SignalKind::hangup(), "SIGHUP")?,
            term: handler(SignalKind::terminate(), "SIGTERM")?,
            stop: Box::pin(stop),
        })
    }

    /// The next reload (`true`) or stop (`false`) request.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.hup.recv() => true,
            _ = self.term.recv() => false,
            r = tokio::signal::ctrl_c() => { let _ = r; false }
            _ = self.stop.as_mut() => false,
        }
    }

    /// Completes when the daemon is asked to stop: SIGTERM, SIGINT, or the embedder's `stop`
    /// (which must not be polled again once it completed: the caller stops then).
    async fn stop_requested(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            r = tokio::signal::ctrl_c() => { let _ = r; }
            _ = self.stop.as_mut() => {}
        }
    }
}

/// Every part start-up made, owned in one place so that reload and stop see them all.
struct Daemon {
    config: Config,
    store: Arc<Store>,
    resolver: Resolver,
    reporter: Arc<Reporter>,
    control: mpsc::Sender<Control>,
    servers: Servers,
    sources: Sources,
    supervisor: JoinHandle<()>,
    sender: JoinHandle<Result<(), DispatchError>>,
    writer: std::thread::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// Why the main loop ended.
enum Ending {
    /// Asked to stop: everything finishes in order.
    Stop,
    /// The sender ended by itself (its task is done): the rest stops in order, then the error.
    SenderFailed(AppError),
    /// The queue database can no longer be written: exit at once.
    DiskFailed(AppError),
}

impl Daemon {
    async fn serve(&mut self, signals: &mut Signals, hooks: &Hooks) -> Ending {
        loop {
            let flow = tokio::select! {
                reload = signals.next() => match reload {
                    true => self.reload(signals, hooks).await,
                    false => return Ending::Stop,
                },
                _ = self.resolver.due() => self.resolve_again(signals, hooks).await,
                _ = self.store.fatal_notify.notified() => {
                    return Ending::DiskFailed(disk_failure(&self.store));
                }
                r = &mut self.sender => return self.sender_ended(r),
            };
            if flow.is_break() {
                return Ending::Stop;
            }
        }
    }

    /// SIGHUP: the file is read again, its integrations resolved, and what changed applied.
    async fn reload(&mut self, signals: &mut Signals, hooks: &Hooks) -> ControlFlow<()> {
        notify_systemd(&[sd_notify::NotifyState::Reloading]);
        match Config::load(&self.config.path) {
            Ok(new) => {
                self.resolver.reconfigure(&new);
                let Some(new) = self.resolve(new, signals).await else {
                    tracing::info!(
                        "Stopping: the reload was abandoned while the OnCall API was being asked; the old configuration stayed in force."
                    );
                    return ControlFlow::Break(());
                };
                self.apply(new, hooks).await;
            }
            Err(e) => tracing::error!(
                "The new configuration was refused, the old one stays in force: {e}"
            ),
        }
        notify_systemd(&[sd_notify::NotifyState::Ready]);
        ControlFlow::Continue(())
    }

    /// The resolver's retry: integrations the API could not resolve before may resolve now.
    async fn resolve_again(&mut self, signals: &mut Signals, hooks: &Hooks) -> ControlFlow<()> {
        let Some(new) = self.resolve(self.config.clone(), signals).await else {
            return ControlFlow::Break(());
        };
        if new.unresolved.len() < self.config.unresolved.len() {
            self.apply(new, hooks).await;
        }
        ControlFlow::Continue(())
    }

    /// Resolves `id`/`api_name` integrations; `None` when a stop came first.
    async fn resolve(&mut self, config: Config, signals: &mut Signals) -> Option<Config> {
        tokio::select! {
            n = self.resolver.resolve(config) => Some(n),
            _ = signals.stop_requested() => None,
        }
    }

    /// Applies a new config: the [`ConfigDiff`] says what changed, each part takes its share.
    async fn apply(&mut self, new: Config, hooks: &Hooks) {
        let diff = ConfigDiff::between(&self.config, &new);
        if diff.integrations() {
            self.servers
                .ingest
                .set_integrations(new.integration_names());
        }
        *self.reporter.rates.lock().expect("rates lock") = rates_of(&new);
        if diff.sender {
            let _ = self
                .control
                .send(Control::Reload(SenderConfig::from_config(&new)))
                .await;
        }
        for n in &diff.removed {
            let d = self.store.depth(n);
            tracing::warn!(integration = %n, queued = d.alerts, "Integration removed by reload; its queued alerts are kept and go out if it comes back.");
        }
        if diff.listeners {
            self.servers.reload(&new);
        }
        if diff.sources {
            let r = &self.reporter;
            (self.sources)
                .restart(&new, &self.servers.ingest, r, new.shutdown_timeout)
                .await;
        }
        if let Some(bytes) = diff.min_free_space {
            self.store.set_min_free_space(bytes);
        }
        if !diff.restart_only.is_empty() {
            let names: Vec<String> = diff.restart_only.iter().map(|r| r.to_string()).collect();
            tracing::warn!(
                "Changes to {} take effect at the next restart.",
                names.join(", ")
            );
        }
        tracing::info!(added = ?diff.added, removed = ?diff.removed, changed = ?diff.changed, "Configuration reloaded.");
        // Last, so that the reload's own lines show at the level they were logged under.
        if let Some(level) = &diff.log_level {
            apply_log_level(level, hooks);
        }
        self.config = new;
    }

    fn sender_ended(&self, r: Result<Result<(), DispatchError>, tokio::task::JoinError>) -> Ending {
        // The dispatcher may meet a failed disk first (an ack, a limiter write): the same
        // failure, reported and handled once, as the disk's.
        if let Ok(Err(DispatchError::Limiter(e))) = &r {
            self.store.check_sled_error(e);
        }
        if self.store.fatal().is_some() {
            return Ending::DiskFailed(disk_failure(&self.store));
        }
        let why = match r {
            Ok(Ok(())) => "it ended".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(
            "The sender stopped ({why}); stopping so that the supervisor restarts the agent."
        );
        Ending::SenderFailed(AppError::Sender(why))
    }
}

/// The daemon's exit after the queue database failed (see `Store::set_fatal`).
fn disk_failure(store: &Store) -> AppError {
    AppError::Fatal(format!(
        "The queue database can no longer be written ({}); the agent stops so that its supervisor restarts it. Every alert answered 202 is on disk.",
        store.fatal().unwrap_or_default()
    ))
}

fn rates_of(c: &Config) -> BTreeMap<String, Rate> {
    c.integrations
        .iter()
        .map(|i| (i.name.clone(), i.rate))
        .collect()
}

/// Applies a changed `log.level`. RUST_LOG, when set, wins over the config (as at start).
fn apply_log_level(level: &str, hooks: &Hooks) {
    let Some(set) = &hooks.set_log_level else {
        return;
    };
    match set(level) {
        Ok(()) => tracing::info!(level = %level, "The log level changed."),
        Err(why) => tracing::warn!(level = %level, "The new log level was not applied: {why}."),
    }
}
