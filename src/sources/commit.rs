//! What the sources share on their way to a commit: the bound on an alert they build
//! themselves, refused input kept as dead letters, and the pacing of retries.

use std::time::Duration;

use tokio::sync::watch;

use crate::queue::Store;
use crate::queue::store::{DeadLetter, MetaEntry};
use crate::queue::writer::{Alert, Ingest, IngestError};

/// Bytes of a refused line kept in its dead letter.
pub(crate) const DEAD_PREFIX: usize = 4096;

/// Wait before retrying a commit the queue refused (full, busy or a disk error).
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A refused line, before it gets its dead-letter id.
#[derive(Debug, Clone)]
pub struct Refused {
    pub reason: String,
    pub payload: String,
}

pub(crate) fn lossy_prefix(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(DEAD_PREFIX)]).into_owned()
}

/// An alert for `integration`, or why its payload is over `queue.max_body` (the file and
/// journal sources build their own payloads, so they check what the HTTP source's limit does).
pub(crate) fn bounded_alert(
    integration: &str,
    payload: Vec<u8>,
    key_hash: u64,
    max_body: usize,
) -> Result<Alert, String> {
    if payload.len() > max_body {
        return Err(format!(
            "the alert would be {} bytes, larger than queue.max_body ({max_body})",
            payload.len()
        ));
    }
    Ok(Alert {
        integration: integration.to_string(),
        payload,
        key_hash,
    })
}

/// How long a repeated failure to queue stays unsaid.
const QUIET: Duration = Duration::from_secs(60);

/// Why queueing failed last and when that was said (see [`say_again`]).
pub(crate) type Said = Option<(std::mem::Discriminant<IngestError>, std::time::Instant)>;

/// Whether failure `e` is worth a log line: another reason than the last one said, or the
/// same one after [`QUIET`]. Records it as said.
pub(crate) fn say_again(said: &mut Said, e: &IngestError) -> bool {
    let kind = std::mem::discriminant(e);
    let again = match said {
        Some((k, at)) => *k != kind || at.elapsed() >= QUIET,
        None => true,
    };
    if again {
        *said = Some((kind, std::time::Instant::now()));
    }
    again
}

/// Dead letters for refused lines (or journal entries), stamped `now` (the daemon's clock,
/// injected in tests).
pub(crate) fn dead_letters(
    store: &Store,
    integration: &str,
    refused: &[Refused],
    now: crate::clock::Millis,
) -> Vec<DeadLetter> {
    let first = store.reserve_seq(refused.len() as u64);
    refused
        .iter()
        .zip(first..)
        .map(|(r, id)| DeadLetter {
            id,
            integration: integration.to_string(),
            received_at: now,
            failed_at: now,
            attempts: 0,
            status: 0,
            reason: r.reason.clone(),
            response: String::new(),
            payload: r.payload.clone(),
        })
        .collect()
}

/// Sleeps `d`; true if the agent is stopping.
pub(crate) async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Commits metadata alone (start-up read positions, the journal's first cursor), retrying
/// while the queue refuses it; `what` names it in the warning. False if the agent stops first.
pub(crate) async fn commit_meta(
    ingest: &Ingest,
    meta: Vec<MetaEntry>,
    what: &str,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    if meta.is_empty() {
        return true;
    }
    let mut warned = false;
    loop {
        match ingest.commit(Vec::new(), meta.clone(), true).await {
            Ok(_) => return true,
            Err(IngestError::Closed) => return false,
            Err(e) => {
                if !warned {
                    tracing::warn!("Saving {what} failed ({e}); retrying.");
                    warned = true;
                }
                if sleep_or_stop(RETRY_AFTER, stop).await {
                    return false;
                }
            }
        }
    }
}
