//! The disk under the queue failing in the ways disks fail, against the real binary: an I/O
//! error (an ext4 image shut down under the daemon), a file system gone read-only (ext4's
//! `errors=remount-ro`), the state folder deleted while running, a nearly full disk, and
//! records the agent cannot read. The promise each time: no alert answered 202 is lost, and
//! the daemon is either healthy or gone (exits non-zero for its supervisor to restart it),
//! never half alive.
//!
//! The ext4 and tmpfs tests need root and loop devices (CI runs as root); they say "skipped"
//! and pass elsewhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const FAST: &str = "[delivery]\nretry_initial = \"50ms\"\nretry_max = \"400ms\"\nprobe_interval = \"1s\"\ntimeout = \"1s\"\n[limits]\nintegration = \"100000/1s\"\norg = \"100000/1s\"\n";
const WAIT: Duration = Duration::from_secs(20);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A small ext4 file system on a loop device, mounted with `errors=remount-ro` (as most root
/// file systems are), that a test can break.
struct Ext4 {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
    /// The loop device's name ("loop3"), for /sys/fs/ext4/<name>.
    dev: String,
}

impl Ext4 {
    fn mount() -> Option<Ext4> {
        if !is_root() {
            eprintln!("skipped: a loop-mounted ext4 needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(128 << 20)
            .unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        if !run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))
            || !run(Command::new("mount")
                .args(["-o", "loop,errors=remount-ro"])
                .arg(&img)
                .arg(&mnt))
        {
            eprintln!("skipped: this machine cannot loop-mount an ext4 image");
            return None;
        }
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&mnt)
            .output()
            .unwrap();
        let dev = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("/dev/")
            .to_string();
        Some(Ext4 {
            _dir: dir,
            mnt,
            dev,
        })
    }

    /// Every later read, write and fsync on it fails with EIO: a disk that died.
    fn shut_down(&self) {
        // EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32), EXT4_GOING_FLAGS_NOLOGFLUSH = 2.
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D;
        let d = std::fs::File::open(&self.mnt).unwrap();
        let flags: u32 = 2;
        // SAFETY: the ioctl reads one u32 from a pointer to a live local.
        let rc = unsafe {
            use std::os::fd::AsRawFd;
            libc::ioctl(d.as_raw_fd(), EXT4_IOC_SHUTDOWN as _, &flags)
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }

    /// An ext4 error, as the kernel reports one for a bad block: with `errors=remount-ro` the
    /// file system turns read-only at once (later writes fail with EROFS).
    fn fail_read_only(&self) {
        std::fs::write(
            format!("/sys/fs/ext4/{}/trigger_fs_error", self.dev),
            "test",
        )
        .unwrap();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// A daemon for integration "a", its state on `state` (a folder on the disk under test) or
/// in its temp dir. Logs as in production: the config's `log.level` (info), not the tests'
/// RUST_LOG.
async fn daemon_on(state: Option<&Path>, oncall: &FakeOnCall, extra: &str) -> Daemon {
    let mut d = Daemon::prepare(|_| {
        format!(
            "{FAST}{extra}{}",
            integration("a", &oncall.url("formatted_webhook", "T"))
        )
    });
    if let Some(state) = state {
        d.move_state_to(state);
    }
    let mut c = d.command();
    c.env_remove("RUST_LOG");
    d.spawn_command(c).await;
    d
}

/// What systemd would receive on NOTIFY_SOCKET, collected by a thread.
struct Notifications {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Notifications {
    fn listen(path: &Path) -> Notifications {
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                s.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        Notifications { seen }
    }

    fn all(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The daemon's command under a systemd-like supervisor with a watchdog of `watchdog_usec`.
fn under_systemd(d: &Daemon, notify: &Path, watchdog_usec: u64) -> Command {
    // WATCHDOG_PID must be the daemon's: the shell sets its own pid, then becomes the daemon.
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$@\"")
        .arg("sh")
        .arg(bin())
        .args(["run", "--config"])
        .arg(&d.config_path)
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", watchdog_usec.to_string())
        // Logs as in production: the config's `log.level` (info).
        .env_remove("RUST_LOG");
    c
}

/// Posts alerts until the daemon is gone; every one after the failure must be refused.
/// Returns when the daemon stopped answering, or panics after `WAIT`.
async fn post_until_gone(d: &Daemon) -> usize {
    let end = Instant::now() + WAIT;
    let mut refused = 0;
    while Instant::now() < end {
        match d.try_post("a", r#"{"title":"after the failure"}"#).await {
            None => return refused,
            Some(202) => panic!("an alert was answered 202 after the disk failed"),
            Some(_) => refused += 1,
        }
    }
    panic!(
        "the daemon still answers {WAIT:?} after its disk failed:\n{}",
        d.logs()
    );
}

/// Issue 10, defect 3: after an I/O error sled refuses every write, but nothing called
/// `Store::set_fatal`: the daemon stayed up answering 503 forever. It must refuse, log one
/// ERROR and exit non-zero at once, so that systemd restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_disk_stops_the_daemon_within_a_second_with_one_error() {
    let Some(disk) = Ext4::mount() else { return };
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = daemon_on(Some(&disk.mnt.join("state")), &oncall, "").await;
    for n in 0..5 {
        let (s, b) = d.post("a", &format!(r#"{{"n":{n}}}"#)).await;
        assert_eq!(s, 202, "{b}");
    }
    // Delivered and acknowledged: from now on only ingest writes to the disk.
    assert!(wait_for(WAIT, || async { d.depth().await == 0 }).await);
    disk.shut_down();
    let failed = Instant::now();
    let refused = post_until_gone(&d).await;
    let st = d
        .wait_exit(Duration::from_secs(3))
        .await
        .expect("the daemon exits");
    let took = failed.elapsed();
    println!("failed disk: {refused} alerts refused, exit {st} {took:?} after the failure");
    assert!(!st.success(), "{st}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let errors = d.error_lines();
    assert_eq!(errors.len(), 1, "{}", d.logs());
    assert!(errors[0].contains("Input/output error"), "{}", errors[0]);
}

/// Issue 10, defect 3: the same failure met first by the sender (a retry's write, with OnCall
/// down) is the same one ERROR and the same fast exit, not "the sender stopped" as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_disk_met_first_by_the_sender_is_one_error_and_a_fast_exit() {
    let Some(disk) = Ext4::mount() else { return };
    let oncall = FakeOnCall::start(&["T"]).await;
    // Down: the alerts stay queued and every retry rewrites one on the disk.
    oncall.set_default(Reply::status(503, "down"));
    let mut d = daemon_on(Some(&disk.mnt.join("state")), &oncall, "").await;
    for n in 0..5 {
        assert_eq!(d.post("a", &format!(r#"{{"n":{n}}}"#)).await.0, 202);
    }
    disk.shut_down();
    let failed = Instant::now();
    let st = d
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("the daemon still runs on a dead disk:\n{}", d.logs()));
    println!(
        "failed disk, sender first: exit {st} {:?} after",
        failed.elapsed()
    );
    assert!(!st.success(), "{st}");
    let errors = d.error_lines();
    assert_eq!(errors.len(), 1, "{}", d.logs());
    assert!(errors[0].contains("Input/output error"), "{}", errors[0]);
}

/// Issue 10, defect 3: the watchdog's ping wrote nothing, so with no alert coming in a daemon
/// on a dead disk kept the watchdog fed. The ping now commits a small probe write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_disk_is_found_by_the_watchdog_probe_with_no_traffic() {
    let Some(disk) = Ext4::mount() else { return };
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = Daemon::prepare(|_| {
        format!(
            "{FAST}{}",
            integration("a", &oncall.url("formatted_webhook", "T"))
        )
    });
    d.move_state_to(&disk.mnt.join("state"));
    let notify_path = d.dir.path().join("notify.sock");
    let notify = Notifications::listen(&notify_path);
    let c = under_systemd(&d, &notify_path, 1_000_000);
    d.spawn_command(c).await;
    assert!(
        wait_until(WAIT, || notify
            .all()
            .iter()
            .any(|m| m.contains("WATCHDOG=1")))
        .await
    );
    disk.shut_down();
    let failed = Instant::now();
    // Pings every 500 ms: the first after the failure finds it.
    let st = d
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("the daemon still runs on a dead disk:\n{}", d.logs()));
    println!(
        "dead disk, no traffic: exit {st} {:?} after",
        failed.elapsed()
    );
    assert!(!st.success());
    assert_eq!(d.error_lines().len(), 1, "{}", d.logs());
    assert!(notify.all().iter().any(|m| m.contains("STOPPING=1")));
}

/// Issue 10, scenario: the file system holding the state goes read-only while the agent runs
/// (an ext4 error with `errors=remount-ro`). Refuse, one ERROR, exit; and a restart on the
/// still read-only disk fails at once with a message that says why, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_folder_gone_read_only_while_running_is_refused_and_the_agent_exits() {
    let Some(disk) = Ext4::mount() else { return };
    let oncall = FakeOnCall::start(&["T"]).await;
    let mut d = daemon_on(Some(&disk.mnt.join("state")), &oncall, "").await;
    assert_eq!(d.post("a", r#"{"n":0}"#).await.0, 202);
    // Delivered and acknowledged: from now on only ingest writes to the disk.
    assert!(wait_for(WAIT, || async { d.depth().await == 0 }).await);
    disk.fail_read_only();
    post_until_gone(&d).await;
    let st = d
        .wait_exit(Duration::from_secs(3))
        .await
        .expect("the daemon exits");
    assert!(!st.success());
    let errors = d.error_lines();
    assert_eq!(errors.len(), 1, "{}", d.logs());
    assert!(errors[0].contains("Read-only file system"), "{}", errors[0]);

    // What systemd's restart meets: a clear refusal to start, not a daemon that hangs.
    let out = d.command().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Read-only file system"), "{err}");
}

/// Issue 10, scenario: the state folder deleted while the agent runs. sled went on writing
/// into the unlinked database, and every alert was answered 202 into a file nobody would read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_folder_deleted_while_running_is_refused_and_the_agent_exits() {
    let oncall = FakeOnCall::start(&["T"]).await;
    oncall.set_default(Reply::status(503, "down"));
    let mut d = daemon_on(None, &oncall, "").await;
    for n in 0..3 {
        assert_eq!(d.post("a", &format!(r#"{{"n":{n}}}"#)).await.0, 202);
    }
    std::fs::remove_dir_all(d.state_dir()).unwrap();
    let deleted = Instant::now();
    post_until_gone(&d).await;
    let st = d
        .wait_exit(Duration::from_secs(3))
        .await
        .expect("the daemon exits");
    println!("deleted state: exit {st} {:?} after", deleted.elapsed());
    assert!(!st.success());
    let errors = d.error_lines();
    assert_eq!(errors.len(), 1, "{}", d.logs());
    assert!(errors[0].contains("deleted or replaced"), "{}", errors[0]);

    // The restart starts a new, empty queue where the old one was, and takes alerts.
    d.spawn().await;
    oncall.set_default(Reply::ok());
    assert_eq!(d.post("a", r#"{"n":"after"}"#).await.0, 202);
    assert!(wait_until(WAIT, || oncall.accepted().len() == 1).await);
}

/// Statvfs's answer for `path`: bytes free for an unprivileged writer.
fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs writes only into the struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Issue 10, defect 4: below `queue.min_free_space` the writer refused the watchdog's ping
/// too, so systemd killed the agent every WatchdogSec while it should have been draining its
/// queue. Refusing alerts for lack of space is a healthy state, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_keeps_the_watchdog_fed_and_says_so() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    if !run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(mnt.path()))
    {
        eprintln!("skipped: this machine does not allow mounting a tmpfs");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.path().to_owned());
    let oncall = FakeOnCall::start(&["T"]).await;
    oncall.set_default(Reply::status(503, "down"));
    let mut d = Daemon::prepare(|_| {
        format!(
            "{FAST}[queue]\nmin_free_space = \"16MiB\"\n{}",
            integration("a", &oncall.url("formatted_webhook", "T"))
        )
    });
    d.move_state_to(&mnt.path().join("state"));
    let notify_path = d.dir.path().join("notify.sock");
    let notify = Notifications::listen(&notify_path);
    // A ping every 500 ms, each allowed 500 ms: a tighter watchdog on a loaded test machine
    // would report a slow ping as an ERROR, which this test asserts never comes.
    let c = under_systemd(&d, &notify_path, 1_000_000);
    d.spawn_command(c).await;
    for n in 0..3 {
        assert_eq!(d.post("a", &format!(r#"{{"n":{n}}}"#)).await.0, 202);
    }

    // Another program takes the disk down to 12 MiB free: below min_free_space, and still
    // room for sled's 8 MiB segments, which delivery needs to record what it sent.
    let filler = mnt.path().join("filler");
    let take = free_bytes(mnt.path()) - (12 << 20);
    std::fs::write(&filler, vec![0u8; take as usize]).unwrap();
    let (s, body) = d.post("a", r#"{"n":3}"#).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("MiB free"), "{body}");

    // The watchdog stays fed, and STATUS= says why alerts are refused.
    let before = notify.all().len();
    assert!(
        wait_until(WAIT, || {
            let new = notify.all().split_off(before);
            new.iter()
                .filter(|m| {
                    m.contains("WATCHDOG=1") && m.contains("disk nearly full: refusing alerts")
                })
                .count()
                >= 5
        })
        .await,
        "{:?}\n{}",
        notify.all().split_off(before),
        d.logs()
    );
    let st = d.status().await;
    assert_eq!(st["disk"]["refusing_alerts"], true, "{st}");
    assert_eq!(st["disk"]["min_free_bytes"], 16 << 20);
    assert!(st["disk"]["failed"].is_null());
    let m = d.metrics().await;
    assert_eq!(
        metric(&m, "oncall_agent_disk_refusing_alerts"),
        Some(1.0),
        "{m}"
    );
    assert!(metric(&m, "oncall_agent_disk_free_bytes").unwrap() < (16 << 20) as f64);
    let table = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(
        table.contains("disk nearly full: refusing alerts"),
        "{table}"
    );
    // Logged once, not once per refused alert.
    for n in 4..10 {
        assert_eq!(d.post("a", &format!(r#"{{"n":{n}}}"#)).await.0, 503);
    }
    assert_eq!(
        d.logs()
            .matches("the disk holding the queue is nearly full")
            .count(),
        1,
        "{}",
        d.logs()
    );
    assert!(d.error_lines().is_empty(), "{}", d.logs());

    // Queued alerts still go out; room comes back and alerts are taken again.
    oncall.set_default(Reply::ok());
    assert!(wait_until(WAIT, || oncall.accepted().len() == 3).await);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(d.post("a", r#"{"n":"room"}"#).await.0, 202);
    assert_eq!(d.status().await["disk"]["refusing_alerts"], false);
    assert_eq!(d.stop(), Some(0));
}

/// Issue 10, defect 7: records the agent cannot decode were skipped by the depth count at
/// start but still taken off it when moved to the dead letters: 2 good + 2 bad said 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_counts_every_alert_after_unreadable_records_are_set_aside() {
    let oncall = FakeOnCall::start(&["T"]).await;
    oncall.set_default(Reply::status(503, "down"));
    let mut d = Daemon::prepare(|_| {
        format!(
            "{FAST}{}",
            integration("a", &oncall.url("formatted_webhook", "T"))
        )
    });
    {
        let store = d.open_queue();
        let good = |n: u64| oncall_agent::queue::Envelope {
            received_at: 1,
            attempts: 0,
            next_attempt_at: 0,
            key_hash: n,
            payload: format!(r#"{{"n":{n}}}"#).into_bytes(),
        };
        let records: [Vec<u8>; 5] = [
            good(0).encode(),
            b"not an envelope".to_vec(),
            good(1).encode(),
            vec![9; 40],
            good(2).encode(),
        ];
        for r in records {
            let seq = store.reserve_seq(1);
            store.append(&[("a".into(), seq, r)], &[]).unwrap();
        }
        store.sync().unwrap();
    }
    d.spawn().await;
    let st = d.status().await;
    assert_eq!(st["integrations"][0]["depth"], 3, "{st}");
    assert_eq!(st["dead_letters"], 2, "{st}");
    let m = d.metrics().await;
    assert_eq!(
        metric(&m, "oncall_agent_queue_alerts{integration=\"a\"}"),
        Some(3.0)
    );
    oncall.set_default(Reply::ok());
    assert!(wait_until(WAIT, || oncall.accepted().len() == 3).await);
    assert!(wait_for(WAIT, || async { d.depth().await == 0 }).await);
    assert_eq!(d.status().await["queue_bytes"], 0);
}
