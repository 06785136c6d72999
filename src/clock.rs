//! Time, injected: the limiter and the sender read the clock through [`Clock`], so tests run
//! an hour of alert storm on tokio's paused clock in milliseconds and assert exact schedules.
//!
//! Times are milliseconds since the Unix epoch ([`Millis`]) because limiter state is kept in
//! sled across restarts, where a monotonic `Instant` means nothing. The clock reads wall time
//! once, at creation, and then advances with tokio's monotonic clock: a wall-clock step (NTP,
//! an operator's `date`) cannot open a second budget inside one window while the daemon runs.
//!
//! Nor across a restart within one boot: the daemon keeps an [`Anchor`] (the boot's id, the
//! time since boot, and its own clock) in its state folder, and [`Clock::resume`] continues
//! from it when the boot is the same. Without it, a wall clock set a day ahead while the
//! daemon was down would expire every persisted budget slot (a second budget inside one real
//! window), and one set an hour back would hold slots "in the future" for an hour. Across a
//! reboot only the wall clock is left, and it is used.

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

/// Where the daemon's clock stood, on the machine's boot clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// `/proc/sys/kernel/random/boot_id`: a new one every boot.
    pub boot_id: String,
    /// `CLOCK_BOOTTIME` (monotonic, counting suspend), in milliseconds.
    pub boot_ms: Millis,
    /// The daemon's clock at that moment.
    pub wall_ms: Millis,
}

/// How far the wall clock had moved from the daemon's own clock at a start within the same
/// boot, in milliseconds (positive: ahead). Only steps above this are corrected.
pub const JUMP_TOLERANCE_MS: i64 = 2_000;

impl Anchor {
    /// The machine's boot clock now, with `wall_ms`; `None` where there is no boot id or boot
    /// clock (not Linux, or no /proc).
    pub fn now(wall_ms: Millis) -> Option<Anchor> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call's duration.
        if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
            return None;
        }
        Some(Anchor {
            boot_id: boot_id.trim().to_string(),
            boot_ms: (ts.tv_sec as u64).saturating_mul(1000) + ts.tv_nsec as u64 / 1_000_000,
            wall_ms,
        })
    }

    /// `boot_id boot_ms wall_ms`, the file's one line.
    pub fn encode(&self) -> String {
        format!("{} {} {}\n", self.boot_id, self.boot_ms, self.wall_ms)
    }

    pub fn decode(s: &str) -> Option<Anchor> {
        let mut f = s.split_whitespace();
        let a = Anchor {
            boot_id: f.next()?.to_string(),
            boot_ms: f.next()?.parse().ok()?,
            wall_ms: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(a)
    }

    /// Where the daemon's clock should stand `now` (an anchor of this boot read just now, with
    /// the system's wall time), given the `saved` anchor of its last start: the saved clock
    /// plus the boot time since, if the boot is the same and the wall clock has stepped by more
    /// than [`JUMP_TOLERANCE_MS`]. Returns that time and the step.
    pub fn resume(saved: Option<&Anchor>, now: &Anchor) -> (Millis, i64) {
        let Some(saved) = saved.filter(|s| s.boot_id == now.boot_id && s.boot_ms <= now.boot_ms)
        else {
            return (now.wall_ms, 0);
        };
        let expected = saved.wall_ms.saturating_add(now.boot_ms - saved.boot_ms);
        let step = now.wall_ms as i64 - expected as i64;
        if step.abs() > JUMP_TOLERANCE_MS {
            (expected, step)
        } else {
            (now.wall_ms, 0)
        }
    }
}

impl Clock {
    /// The daemon's clock: the system's wall time, unless the wall clock stepped while the
    /// daemon was down in this same boot (see the module doc); then the clock continues from
    /// the anchor kept in `file`, and the step is returned for the caller to report. The new
    /// anchor is written back (atomically; a failure to write costs only this protection).
    pub fn resume(file: &std::path::Path) -> (Clock, i64) {
        let system = Clock::system();
        let Some(now) = Anchor::now(system.now()) else {
            return (system, 0);
        };
        let saved = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| Anchor::decode(&s));
        let (wall, step) = Anchor::resume(saved.as_ref(), &now);
        let clock = if step == 0 {
            system
        } else {
            Clock::starting_at(wall)
        };
        let anchor = Anchor {
            wall_ms: clock.now(),
            ..now
        };
        let tmp = file.with_extension("tmp");
        if std::fs::write(&tmp, anchor.encode()).is_ok() {
            let _ = std::fs::rename(&tmp, file);
        }
        (clock, step)
    }
}

/// `Duration` to whole milliseconds, saturating.
pub fn ms(d: Duration) -> Millis {
    d.as_millis().min(u64::MAX as u128) as Millis
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(boot: &str, boot_ms: Millis, wall_ms: Millis) -> Anchor {
        Anchor {
            boot_id: boot.into(),
            boot_ms,
            wall_ms,
        }
    }

    #[test]
    fn a_wall_clock_step_while_down_in_the_same_boot_is_undone() {
        let saved = anchor("b1", 10_000, 10_000_000);
        // 60 s of boot time later, the wall clock reads a day more than it should.
        let now = anchor("b1", 70_000, 10_060_000 + 86_400_000);
        assert_eq!(Anchor::resume(Some(&saved), &now), (10_060_000, 86_400_000));
        // ... or an hour less.
        let now = anchor("b1", 70_000, 10_060_000 - 3_600_000);
        assert_eq!(Anchor::resume(Some(&saved), &now), (10_060_000, -3_600_000));
    }

    #[test]
    fn the_wall_clock_is_used_after_a_reboot_or_a_small_drift() {
        let saved = anchor("b1", 10_000, 1_000_000);
        let drift = anchor("b1", 70_000, 1_061_500);
        assert_eq!(Anchor::resume(Some(&saved), &drift), (1_061_500, 0));
        let reboot = anchor("b2", 5_000, 9_000_000);
        assert_eq!(Anchor::resume(Some(&saved), &reboot), (9_000_000, 0));
        assert_eq!(Anchor::resume(None, &reboot), (9_000_000, 0));
        // A boot clock behind the saved one is another boot whatever its id says.
        let odd = anchor("b1", 5_000, 9_000_000);
        assert_eq!(Anchor::resume(Some(&saved), &odd), (9_000_000, 0));
    }

    #[test]
    fn an_anchor_file_round_trips_and_junk_is_ignored() {
        let a = anchor("46c199c9-3f96-4fe5-ae0c-3ea6bd19b195", 123, 456);
        assert_eq!(Anchor::decode(&a.encode()), Some(a));
        for junk in ["", "x", "b 1", "b 1 2 3", "b x 2", "b 1 -2"] {
            assert_eq!(Anchor::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn resume_keeps_its_own_time_across_starts_in_one_boot() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clock");
        let (first, step) = Clock::resume(&file);
        assert_eq!(step, 0);
        // Pretend the last start's clock was a day ahead of the wall clock: the next start
        // continues from it.
        let mut saved = Anchor::decode(&std::fs::read_to_string(&file).unwrap()).unwrap();
        saved.wall_ms += 86_400_000;
        std::fs::write(&file, saved.encode()).unwrap();
        let (second, step) = Clock::resume(&file);
        assert!(step < -86_000_000, "{step}");
        assert!(second.now() >= first.now() + 86_000_000);
    }
}
