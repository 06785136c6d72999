//! The `journalctl` child: its command line, the thread that spawns and reads it (tied to it
//! by `PR_SET_PDEATHSIG`), and the framing of its output into bounded lines.

use std::ffi::OsString;
use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{CHANNEL, CURSOR_MAX, READ_BUF, STDERR_KEEP, Start, plausible_cursor};
use crate::config::JournalSource;
use crate::sources::commit::DEAD_PREFIX;

/// The fields `journalctl` is asked for (besides the `__CURSOR` and timestamps it always
/// writes): only what the alert shows, so that a huge field (a core dump) never makes a line
/// too long.
pub(super) const FIELDS: [&str; 9] = [
    "MESSAGE",
    "PRIORITY",
    "_SYSTEMD_UNIT",
    "UNIT",
    "COREDUMP_UNIT",
    "_PID",
    "SYSLOG_IDENTIFIER",
    "_HOSTNAME",
    "_SOURCE_REALTIME_TIMESTAMP",
];

/// The `journalctl` command line for `src`, starting at `start`; with `follow`, it waits for
/// new entries instead of exiting at the journal's end.
pub(super) fn command_args(src: &JournalSource, start: &Start, follow: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--output=json".into(),
        // Fields longer than 4 KiB are written in full (`max_line` bounds the line instead).
        "--all".into(),
        "--no-pager".into(),
        // No "you are not seeing messages from other users" hint on stderr.
        "--quiet".into(),
        format!("--priority={}", src.priority).into(),
    ];
    let mut fields: Vec<&str> = FIELDS.to_vec();
    for f in &src.uid_fields {
        if !fields.contains(&f.as_str()) {
            fields.push(f);
        }
    }
    a.push(format!("--output-fields={}", fields.join(",")).into());
    // journalctl -f cannot follow a relative --file.
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if let Some(d) = &src.journal_directory {
        let mut o = OsString::from("--directory=");
        o.push(absolute(d));
        a.push(o);
    }
    if let Some(f) = &src.journal_file {
        let mut o = OsString::from("--file=");
        o.push(absolute(f));
        a.push(o);
    }
    if follow {
        a.push("--follow".into());
    }
    match start {
        Start::At(c) => a.push(format!("--cursor={c}").into()),
        // With --follow, journalctl would start at the last 10 entries.
        Start::Beginning => a.push("--lines=all".into()),
        Start::Newest => a.push("--lines=1".into()),
    }
    a.extend(matches(src).into_iter().map(OsString::from));
    a
}

/// journalctl matches: terms joined by "+" (or); in a term, different fields must all match
/// and one field's values are alternatives. Units match as `journalctl -u` does: the unit's
/// own entries, systemd's messages about it, its core dumps.
pub(super) fn matches(src: &JournalSource) -> Vec<String> {
    let mut terms: Vec<Vec<String>> = Vec::new();
    let each = |field: &str, values: &[String]| -> Vec<String> {
        values.iter().map(|v| format!("{field}={v}")).collect()
    };
    if !src.units.is_empty() {
        terms.push(each("_SYSTEMD_UNIT", &src.units));
        let mut by_systemd = each("UNIT", &src.units);
        by_systemd.push("_PID=1".into());
        terms.push(by_systemd);
        terms.push(each("COREDUMP_UNIT", &src.units));
    }
    if !src.identifiers.is_empty() {
        terms.push(each("SYSLOG_IDENTIFIER", &src.identifiers));
    }
    let mut out = Vec::new();
    for (i, t) in terms.into_iter().enumerate() {
        if i > 0 {
            out.push("+".to_string());
        }
        out.extend(t);
    }
    out
}

/// What the reader thread hands the task.
#[derive(Debug)]
pub(super) enum Msg {
    /// One line of output (one entry as JSON), without its newline.
    Line(Vec<u8>),
    /// A line longer than `max_line`: its length, first bytes and the entry's cursor (found
    /// while skipping it).
    TooLong {
        len: u64,
        head: Vec<u8>,
        cursor: Option<String>,
    },
    /// journalctl ended (or could not start); why, in words. The thread's last message.
    Exited { ok: bool, why: String },
}

/// One running `journalctl` and its reader thread.
pub(super) struct Reader {
    pub(super) rx: mpsc::Receiver<Msg>,
    child: Arc<Mutex<Slot>>,
}

/// The child as the task and the reader thread share it.
#[derive(Default)]
pub(super) struct Slot {
    /// The child while it runs; the thread takes it out before reaping it, so a kill never
    /// reaches a reused pid.
    child: Option<Child>,
    /// The task asked for it to end: a child the thread spawns after that is killed at once.
    killed: bool,
}

impl Reader {
    pub(super) fn start(program: &Path, args: Vec<OsString>, max_line: usize) -> Reader {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let child = Arc::new(Mutex::new(Slot::default()));
        let slot = child.clone();
        let program = program.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("journalctl".into())
            .spawn(move || read_child(&program, args, max_line, &tx, &slot));
        let mut rx = rx;
        if let Err(e) = spawned {
            // No thread, so no child: say so as the child's end.
            let (tx, new_rx) = mpsc::channel(1);
            let _ = tx.try_send(Msg::Exited {
                ok: false,
                why: format!("cannot start a thread to read journalctl: {e}"),
            });
            rx = new_rx;
        }
        Reader { rx, child }
    }

    /// Kills the child (if it still runs); its reader thread then ends on its own.
    pub(super) fn kill(&self) {
        // Poisoned only if the reader thread panicked, which aborts the release build.
        let mut slot = self.child.lock().expect("journalctl lock");
        slot.killed = true;
        if let Some(c) = slot.child.as_mut() {
            let _ = c.kill();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The reader thread: spawns journalctl, sends its lines, then how it ended.
pub(super) fn read_child(
    program: &Path,
    args: Vec<OsString>,
    max_line: usize,
    tx: &mpsc::Sender<Msg>,
    slot: &Mutex<Slot>,
) {
    let mut child = match spawn_child(program, &args) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.blocking_send(Msg::Exited {
                ok: false,
                why: format!("cannot start {}: {e}", program.display()),
            });
            return;
        }
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    {
        // Poisoned only if this thread panicked before, which aborts the release build.
        let mut slot = slot.lock().expect("journalctl lock");
        if slot.killed {
            // Stopped while it was being spawned: its lines are not wanted.
            let _ = child.kill();
        }
        slot.child = Some(child);
    }
    let errors = std::thread::Builder::new()
        .name("journalctl-err".into())
        .spawn(move || keep_head(stderr, STDERR_KEEP));
    let read_error = forward(LineReader::new(stdout, max_line), tx, slot);
    let child = slot.lock().expect("journalctl lock").child.take();
    let status = child.map(|mut c| {
        if read_error.is_some() {
            let _ = c.kill();
        }
        c.wait()
    });
    let stderr = errors.ok().and_then(|h| h.join().ok()).unwrap_or_default();
    let (ok, why) = how_it_ended(status, read_error, &stderr);
    let _ = tx.blocking_send(Msg::Exited { ok, why });
}

/// Spawns journalctl, tied to the calling thread: it gets SIGKILL when the thread dies.
fn spawn_child(program: &Path, args: &[OsString]) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "");
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure only calls prctl and getppid, both
    // async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Dies with this thread, which lives until the child is reaped: a kill -9 of the
            // agent leaves no journalctl behind.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the agent exited"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends the child's lines until its output ends or the task is gone (then the child is
/// killed); the read error, if reading failed.
fn forward(
    mut lines: LineReader<std::process::ChildStdout>,
    tx: &mpsc::Sender<Msg>,
    slot: &Mutex<Slot>,
) -> Option<std::io::Error> {
    loop {
        match lines.next() {
            Ok(Some(m)) => {
                if tx.blocking_send(m).is_err() {
                    // The task is gone (shutdown): nothing reads further.
                    if let Some(c) = slot.lock().expect("journalctl lock").child.as_mut() {
                        let _ = c.kill();
                    }
                    return None;
                }
            }
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

/// Whether journalctl ended well, and why it ended in words (with what it said on stderr).
fn how_it_ended(
    status: Option<std::io::Result<std::process::ExitStatus>>,
    read_error: Option<std::io::Error>,
    stderr: &[u8],
) -> (bool, String) {
    let said = String::from_utf8_lossy(stderr);
    let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
    let (ok, mut why) = match status {
        Some(Ok(st)) if st.success() => (true, "journalctl exited".to_string()),
        Some(Ok(st)) => (false, format!("journalctl {}", describe_status(st))),
        Some(Err(e)) => (false, format!("journalctl could not be waited for: {e}")),
        None => (false, "journalctl was stopped".to_string()),
    };
    if let Some(e) = read_error {
        why = format!("reading journalctl's output failed ({e}); {why}");
    }
    if !said.is_empty() {
        why = format!("{why}: {said}");
    }
    (ok, why)
}

pub(super) fn describe_status(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".to_string(),
    }
}

/// Reads `r` to its end, keeping its first `keep` bytes.
pub(super) fn keep_head(mut r: impl Read, keep: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = keep.saturating_sub(out.len()).min(n);
                out.extend_from_slice(&buf[..room]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    out
}

/// Splits a byte stream into lines of at most `max_line` bytes; longer ones are skipped to
/// their newline and reported with their head and the `__CURSOR` found in them.
pub(super) struct LineReader<R> {
    inner: std::io::BufReader<R>,
    max_line: usize,
}

/// The key journalctl writes before an entry's cursor (its JSON has no spaces; inside a string
/// value these quotes would be escaped, so this only ever matches the key).
pub(super) const CURSOR_KEY: &[u8] = b"\"__CURSOR\":\"";

impl<R: Read> LineReader<R> {
    pub(super) fn new(r: R, max_line: usize) -> Self {
        LineReader {
            inner: std::io::BufReader::with_capacity(READ_BUF, r),
            max_line,
        }
    }

    /// The next line; None at the end of the stream (a last line without its newline is
    /// dropped: journalctl ends each entry with one, so only a killed child leaves one).
    pub(super) fn next(&mut self) -> std::io::Result<Option<Msg>> {
        let mut line: Vec<u8> = Vec::new();
        // Set once the line is longer than max_line: (its length so far, the cursor search).
        let mut long: Option<(u64, CursorScan)> = None;
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok(None);
            }
            let (part, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], true),
                None => (buf, false),
            };
            let used = part.len() + usize::from(done);
            match &mut long {
                None if line.len() + part.len() <= self.max_line => line.extend_from_slice(part),
                None => {
                    let mut scan = CursorScan::default();
                    scan.feed(&line);
                    scan.feed(part);
                    let seen = (line.len() + part.len()) as u64;
                    let room = DEAD_PREFIX.saturating_sub(line.len()).min(part.len());
                    line.truncate(DEAD_PREFIX);
                    line.extend_from_slice(&part[..room]);
                    long = Some((seen, scan));
                }
                Some((len, scan)) => {
                    scan.feed(part);
                    *len += part.len() as u64;
                    // The head keeps filling to DEAD_PREFIX whatever pieces the pipe gives
                    // (max_line may be below it).
                    let room = DEAD_PREFIX.saturating_sub(line.len()).min(part.len());
                    line.extend_from_slice(&part[..room]);
                }
            }
            self.inner.consume(used);
            if done {
                return Ok(Some(match long {
                    None => Msg::Line(line),
                    Some((len, scan)) => Msg::TooLong {
                        len,
                        head: line,
                        cursor: scan.found(),
                    },
                }));
            }
        }
    }
}

/// Finds `"__CURSOR":"<cursor>"` in a stream fed in pieces, keeping only a few bytes.
#[derive(Default)]
pub(super) struct CursorScan {
    /// Bytes of [`CURSOR_KEY`] matched so far.
    matched: usize,
    /// The cursor being read, once the key matched.
    value: Option<Vec<u8>>,
    done: Option<String>,
}

impl CursorScan {
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done.is_some() {
                return;
            }
            if let Some(v) = &mut self.value {
                if b == b'"' {
                    let c = String::from_utf8_lossy(v).into_owned();
                    self.done = Some(c).filter(|c| plausible_cursor(c));
                    self.value = None;
                    if self.done.is_none() {
                        self.matched = 0;
                    }
                } else if v.len() < CURSOR_MAX {
                    v.push(b);
                } else {
                    self.value = None;
                    self.matched = 0;
                }
                continue;
            }
            if b == CURSOR_KEY[self.matched] {
                self.matched += 1;
            } else {
                // The key's only repeated byte is '"', which starts it again.
                self.matched = usize::from(b == b'"');
            }
            if self.matched == CURSOR_KEY.len() {
                self.value = Some(Vec::new());
                self.matched = 0;
            }
        }
    }

    pub(super) fn found(self) -> Option<String> {
        self.done
    }
}
