//! The stop, in the order "nothing accepted is lost" needs, under one deadline.
//!
//! Listeners stop accepting and finish the requests they have (each waits for its alert to be
//! durable), the sources finish the commit they are in, then the writer drains its channel and
//! stops, then the dispatcher lets in-flight deliveries finish, and the queue is synced. Every
//! stage waits at most until the one deadline, `shutdown_timeout` from the stop signal, so the
//! whole stop fits in the unit's `TimeoutStopSec` whatever stage is slow.

use super::listeners::Servers;
use super::systemd::notify_systemd;
use super::{AppError, Daemon, Ending};

pub(super) async fn stop(daemon: Daemon, ending: Ending) -> Result<(), AppError> {
    let _ = daemon.stop.send(true);
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let (sender_done, failure) = match ending {
        // Nothing is left to save: every alert answered 202 is on disk, and the database
        // takes no more writes. Exit at once; the binary logs the one ERROR and the
        // supervisor restarts the agent on a freshly opened database.
        Ending::DiskFailed(f) => return Err(f),
        Ending::SenderFailed(f) => (true, Some(f)),
        Ending::Stop => (false, None),
    };
    tracing::info!("Stopping: no new alerts are accepted; in-flight work finishes.");
    let deadline = tokio::time::Instant::now() + daemon.config.shutdown_timeout;
    let Daemon {
        store,
        servers,
        mut sources,
        supervisor,
        sender,
        writer,
        ..
    } = daemon;
    let Servers {
        handles,
        ingest,
        state,
        routers,
    } = servers;
    // The routers and the supervisor hold Ingest handles too; the writer ends only once
    // every handle is gone.
    drop((ingest, state, routers));
    let _ = tokio::time::timeout_at(deadline, supervisor).await;
    let _ = tokio::time::timeout_at(deadline, async {
        for h in handles.into_iter().chain(sources.stop()) {
            let _ = h.await;
        }
    })
    .await;
    // The writer commits what it holds. Bounded: a source or connection still holding a
    // handle must not hang the stop. Every alert already answered is on disk; whatever the
    // writer still holds is unanswered.
    if tokio::time::timeout_at(deadline, tokio::task::spawn_blocking(move || writer.join()))
        .await
        .is_err()
    {
        tracing::warn!(
            "The queue writer did not finish within shutdown_timeout; stopping anyway (alerts it had not answered were not acknowledged to their senders)."
        );
    }
    if !sender_done {
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
