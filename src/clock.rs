//! Time, injected: the limiter and the sender read the clock through [`Clock`], so tests run
//! an hour of alert storm on tokio's paused clock in milliseconds and assert exact schedules.
//!
//! Times are milliseconds since the Unix epoch ([`Millis`]) because limiter state is kept in
//! sled across restarts, where a monotonic `Instant` means nothing. The clock reads wall time
//! once, at creation, and then advances with tokio's monotonic clock: a wall-clock step (NTP,
//! an operator's `date`) cannot open a second budget inside one window while the daemon runs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// A wall clock anchored once and advanced by tokio's (pausable) monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_wall: Millis,
    base: Instant,
}

impl Clock {
    /// Anchored to the system's wall time now.
    pub fn system() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as Millis;
        Clock::starting_at(wall)
    }

    /// Anchored to a chosen wall time (tests).
    pub fn starting_at(wall: Millis) -> Clock {
        Clock {
            base_wall: wall,
            base: Instant::now(),
        }
    }

    pub fn now(&self) -> Millis {
        self.base_wall + self.base.elapsed().as_millis() as Millis
    }

    /// The tokio instant at which this clock reads `t` (for `sleep_until`).
    pub fn instant_at(&self, t: Millis) -> Instant {
        self.base + Duration::from_millis(t.saturating_sub(self.base_wall))
    }
}

/// `Duration` to whole milliseconds, saturating.
pub fn ms(d: Duration) -> Millis {
    d.as_millis().min(u64::MAX as u128) as Millis
}
