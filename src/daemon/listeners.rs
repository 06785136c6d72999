//! The listeners the daemon serves (the Unix socket and loopback TCP, bound here or passed by
//! systemd), and the router each runs, replaced on reload.

use tokio::sync::watch;

use super::AppError;
use super::systemd::{ListenFds, inherited_listeners};
use crate::config::Config;
use crate::queue::Ingest;
use crate::server::{self as http, ConnLimits, Exposure, HttpState};

/// The listeners' tasks, and the ingest handle reload uses.
pub(super) struct Servers {
    pub(super) handles: Vec<tokio::task::JoinHandle<()>>,
    pub(super) ingest: Ingest,
    /// What the routers are built from, for reload.
    pub(super) state: HttpState,
    /// Each listener's router, replaced on reload: (is it the Unix socket, its router).
    pub(super) routers: Vec<(bool, watch::Sender<axum::Router>)>,
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
    pub(super) fn reload(&self, config: &Config) {
        for (unix, tx) in &self.routers {
            let _ = tx.send(Servers::router(&self.state, config, *unix));
        }
    }
}

pub(super) fn start_listeners(
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
