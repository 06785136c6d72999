//! The daemon's ties to systemd: socket activation (`LISTEN_FDS`), readiness and STATUS=
//! notifications, and the watchdog, fed only while the writer and the dispatcher both answer.

use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::observe::Reporter;
use crate::queue::Ingest;
use crate::sender::Control;

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

/// The sockets systemd passed ([`take_listen_fds`]) as listeners, at most one of each kind.
pub(super) fn inherited_listeners(
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

pub(super) fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(false, state);
    }
}

/// Feeds systemd: STATUS= with the queue's state, and WATCHDOG=1 only while the queue writer
/// and the dispatcher both answer a ping within half the watchdog interval. A stuck writer
/// (say, an fsync that never returns) or a wedged dispatcher thus gets the agent restarted
/// by systemd instead of leaving a daemon that accepts nothing or sends nothing.
pub(super) async fn supervise(
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
