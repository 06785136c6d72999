//! Alert storms against a fake OnCall that enforces its limits the way the engine does (fixed
//! windows at a phase the agent cannot see), on tokio's paused clock: the budget guarantee
//! proven over random arrivals, latencies, failures, restarts and rate changes; the budgets
//! used to at least 99 % for an hour; restarts that do not open a second budget; and a server
//! stricter than the agent that still gets every alert, politely.
//!
//! The long report with the one-hour, 20,000-alert figures is `examples/storm.rs`.

mod sim;

use std::time::Duration;

use proptest::prelude::*;
use sim::*;
use tokio::sync::{mpsc, watch};

/// The dispatcher used to spin at 100 % CPU, forever, once the sender of its shutdown signal
/// was dropped without sending `true` (`changed()` then fails at once, every time). A dropped
/// sender now means "stop".
#[test]
fn dispatcher_stops_instead_of_spinning_when_its_shutdown_sender_is_dropped() {
    let (tx, rx) = std::sync::mpsc::channel();
    // Its own thread and runtime: if the loop spins, the test fails on the deadline below
    // instead of hanging.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let stopped = rt.block_on(async {
            let mut sim = Sim::new(&[("a", rate(300, 300))], rate(500, 300), default_delivery(), 1);
            sim.queue("a", 3);
            sim.sync();
            let d = sim.dispatcher();
            let (_control, control_rx) = mpsc::channel(1);
            let (shutdown, shutdown_rx) = watch::channel(false);
            drop(shutdown);
            d.run(control_rx, shutdown_rx).await.is_ok()
        });
        let _ = tx.send(stopped);
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)),
        Ok(true),
        "the dispatcher did not stop after its shutdown sender was dropped"
    );
}
