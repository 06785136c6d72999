//! Binding and serving a listener: the Unix socket made safely (mode set at bind, a stale
//! socket replaced only when dead), and an accept loop with per-listener bounds (connections,
//! header deadline) that stops accepting on shutdown and lets open requests finish.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::sync::{Semaphore, watch};

/// Limits on the connections of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` turns true; then stops accepting, lets each
/// open connection finish its request, and returns when they are all closed.
pub async fn serve<L>(listener: L, app: Router, limits: ConnLimits, shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
{
    let (_fixed, apps) = watch::channel(app);
    serve_reloadable(listener, apps, limits, shutdown).await
}

/// [`serve`], with the router taken anew for each connection from `apps`: a reload swaps in
/// a router with new settings (auth token, body limits) on the same listening socket.
pub async fn serve_reloadable<L>(
    mut listener: L,
    apps: watch::Receiver<Router>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            _ = shutdown.changed() => break,
        };
        let app = apps.borrow().clone();
        let inner = hyper_util::service::TowerToHyperService::new(app);
        // Stores a permit at the first request, so a stop can tell a fresh connection (whose
        // request may be on its way) from one that has been served.
        let first_request = Arc::new(tokio::sync::Notify::new());
        let seen = first_request.clone();
        let svc = hyper::service::service_fn(move |req| {
            seen.notify_one();
            hyper::service::Service::call(&inner, req)
        });
        let mut stop = shutdown.clone();
        let header_timeout = limits.header_timeout;
        conns.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_headers(100)
                .serve_connection(TokioIo::new(io), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    // A connection accepted just before the stop has not sent its request
                    // yet; closing it now would refuse a sender the listener already took
                    // in. It gets until its header deadline to start one, which is then
                    // answered; a connection that was served before closes when idle.
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = first_request.notified() => {}
                        _ = tokio::time::sleep(header_timeout) => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        // Reap finished connections so the set stays small.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Binds the Unix socket with its mode from the start (no moment where it is more open),
/// after checking its folder and any file already at the path.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> std::io::Result<tokio::net::UnixListener> {
    use std::io::{Error, ErrorKind};
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let dmode = std::fs::metadata(dir)?.permissions().mode();
    if dmode & 0o002 != 0 {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{} is writable by everyone (mode {:o}); anyone could replace the socket. Use a private folder such as /run/oncall-agent",
                dir.display(),
                dmode & 0o7777
            ),
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A live daemon answers; a stale socket refuses.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    format!(
                        "{} is in use by a running process (another oncall-agent?)",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not removing it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // umask is process-wide; this runs at start-up and on nothing else's behalf.
    let old = unsafe { libc::umask(0o777 & !mode as libc::mode_t) };
    let bound = tokio::net::UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(g) = group {
        let gid = resolve_group(g)?;
        std::os::unix::fs::lchown(path, None, Some(gid))?;
    }
    Ok(listener)
}

fn resolve_group(g: &str) -> std::io::Result<u32> {
    if let Ok(n) = g.parse() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(g).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "group name has a NUL")
    })?;
    // getgrnam's result is read before any other call could reuse its static buffer.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no group named {g:?} (listen.unix_group)"),
        ));
    }
    Ok(unsafe { (*gr).gr_gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unix_socket_refuses_an_open_folder_and_foreign_files_and_replaces_a_stale_socket() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind_unix(&open.join("a.sock"), 0o660, None).unwrap_err();
        assert!(e.to_string().contains("writable by everyone"), "{e}");

        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        let file = private.join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let e = bind_unix(&file, 0o660, None).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        // A socket left by a dead process is replaced; its mode is 0660 from the start.
        let path = private.join("a.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let l = bind_unix(&path, 0o660, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A live one is not taken over.
        let e = bind_unix(&path, 0o660, None).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        drop(l);
    }
}
