//! `[[source]] type = "journal"`: entries of the systemd journal become formatted_webhook alerts.
//! This module owns the `journalctl` child that reads them, where reading stands (the cursor),
//! and how an entry becomes an alert.
//!
//! **Reading.** A `journalctl --follow --output=json` child (what Vector's journald source does:
//! no C library, and the journal's own matching and priority filters) writes one entry per line.
//! A reader thread spawns it, reads its lines (each at most `max_line` bytes: a longer one is
//! never held, only its first [`DEAD_PREFIX`] bytes and its cursor) and hands them to the
//! source's task over a channel of [`CHANNEL`] lines. The thread is tied to the child: the
//! child gets SIGKILL when the thread's process dies (`PR_SET_PDEATHSIG`), so a kill -9 of the
//! agent leaves no `journalctl` behind, and the task kills it on shutdown.
//!
//! **No entry lost, none repeated.** The task commits what is waiting (up to [`BATCH_MAX`]
//! entries or [`BATCH_BYTES`]) in one atomic write with the cursor of the last of them
//! ([`Ingest::commit`] with metadata, as file offsets are); the cursor in memory moves only once
//! that write is durable. `journalctl` is always started at the committed cursor (`--cursor`,
//! the entry there dropped as already queued), so a crash at any point resumes exactly after
//! the last entry in the queue. Each start first catches up without `--follow`, then follows:
//! journalctl 250 to 257 follows the newest boot only, and would skip entries of an earlier
//! boot written after the cursor (the end of the boot before a reboot). `--after-cursor` is
//! not used: journalctl skips whatever entry comes first, the wrong one when the cursor's own
//! entry no longer matches (after a reboot under --follow, or changed matches). Entries that
//! cannot be forwarded (a line longer than `max_line`, an alert larger than `queue.max_body`)
//! become dead letters, written durably just before that commit (a crash in between can record
//! one twice, never lose it), counted in status and logged.
//!
//! **The first run** (no cursor saved under the source's name) with `start_at = "end"` asks
//! `journalctl --lines=1` for the cursor of the newest matching entry and commits it before
//! following: what was in the journal before is not sent, and nothing written after that moment
//! is missed even if the agent stops before the next entry. With no matching entry at all,
//! reading starts at the journal's beginning (everything that matches is new). With
//! `start_at = "beginning"`, every matching entry the journal still holds is sent.
//!
//! **journalctl failing** (absent, no journal files, no permission to read them, a crash) is an
//! episode: the first failure is logged (ERROR) and shown as the source's `last_error`, and the
//! child is started again after [`RESTART_MIN`], doubling up to [`RESTART_MAX`], without another
//! log line until it works again: it produced an entry, or ran [`HEALTHY`] without exiting.
//!
//! Bounds: [`CHANNEL`] lines in flight (each at most `max_line`), a commit of at most
//! [`BATCH_MAX`] entries or [`BATCH_BYTES`], [`STDERR_KEEP`] bytes of journalctl's error output,
//! titles of [`TITLE_MAX`] characters.

use std::ffi::OsString;
use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::SourceContext;
use super::commit::{
    DEAD_PREFIX, RETRY_AFTER, Refused, bounded_alert, dead_letters, lossy_prefix, say_again,
    sleep_or_stop,
};
use crate::config::{JournalSource, PRIORITY_NAMES, StartAt};
use crate::queue::envelope::key_hash;
use crate::queue::store::{META_PREFIX, MetaEntry};
use crate::queue::writer::{Alert, Ingest, IngestError};

/// Lines waiting between the reader thread and the committing task. With the default
/// `max_line` (64 KiB) at most 8 MiB, and far less for ordinary entries.
pub const CHANNEL: usize = 128;
/// Most entries committed in one write (one fsync).
pub const BATCH_MAX: usize = 512;
/// Most bytes of `journalctl` output gathered into one commit (a batch stops at the first line
/// past it).
pub const BATCH_BYTES: usize = 1024 * 1024;
/// First wait before `journalctl` is started again after it failed.
pub const RESTART_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two starts of a failing `journalctl` (the wait doubles up to this).
pub const RESTART_MAX: Duration = Duration::from_secs(60);
/// A `journalctl` that ran this long without exiting works again: the failure episode ends.
pub const HEALTHY: Duration = Duration::from_secs(10);
/// Bytes of `journalctl`'s error output kept to say why it failed.
pub const STDERR_KEEP: usize = 1024;
/// Characters of the entry's message kept in the alert's title (the whole message is in the
/// alert's message).
pub const TITLE_MAX: usize = 256;
/// Longest cursor accepted (journalctl's are about 130 bytes).
const CURSOR_MAX: usize = 512;
/// Bytes `journalctl`'s output is read by.
const READ_BUF: usize = 64 * 1024;

/// The fields `journalctl` is asked for (besides the `__CURSOR` and timestamps it always
/// writes): only what the alert shows, so that a huge field (a core dump) never makes a line
/// too long.
const FIELDS: [&str; 9] = [
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

/// The value saved in sled for one journal source; its presence means the source ran before.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Saved {
    /// The cursor of the last entry committed; None when no entry was read yet (reading
    /// starts at the journal's beginning).
    cursor: Option<String>,
}

/// Key of the saved cursor of the journal source named `name`.
fn cursor_key(name: &str) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(b"journal\0");
    k.extend_from_slice(name.as_bytes());
    k
}

fn saved_entry(name: &str, cursor: Option<&str>) -> MetaEntry {
    let v = Saved {
        cursor: cursor.map(str::to_string),
    };
    // A struct of one optional string always serializes.
    (
        cursor_key(name),
        serde_json::to_vec(&v).expect("Saved serializes"),
    )
}

/// A cursor as journalctl writes them: printable ASCII without spaces, bounded.
fn plausible_cursor(c: &str) -> bool {
    !c.is_empty() && c.len() <= CURSOR_MAX && c.bytes().all(|b| b.is_ascii_graphic())
}

/// Where a `journalctl` run starts.
#[derive(Debug, Clone, PartialEq)]
enum Start {
    /// From this cursor's entry on (`--cursor`: that entry itself comes first and is dropped
    /// by the reader; `--after-cursor` would skip whatever entry comes first, the wrong one
    /// when the cursor's entry no longer matches).
    At(String),
    /// From the journal's first matching entry.
    Beginning,
    /// The newest matching entry alone (the first run's starting point).
    Newest,
}

impl Start {
    fn cursor(&self) -> Option<String> {
        match self {
            Start::At(c) => Some(c.clone()),
            _ => None,
        }
    }
}

/// The `journalctl` command line for `src`, starting at `start`; with `follow`, it waits for
/// new entries instead of exiting at the journal's end.
fn command_args(src: &JournalSource, start: &Start, follow: bool) -> Vec<OsString> {
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
fn matches(src: &JournalSource) -> Vec<String> {
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
enum Msg {
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
struct Reader {
    rx: mpsc::Receiver<Msg>,
    child: Arc<Mutex<Slot>>,
}

/// The child as the task and the reader thread share it.
#[derive(Default)]
struct Slot {
    /// The child while it runs; the thread takes it out before reaping it, so a kill never
    /// reaches a reused pid.
    child: Option<Child>,
    /// The task asked for it to end: a child the thread spawns after that is killed at once.
    killed: bool,
}

impl Reader {
    fn start(program: &Path, args: Vec<OsString>, max_line: usize) -> Reader {
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
    fn kill(&self) {
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
fn read_child(
    program: &Path,
    args: Vec<OsString>,
    max_line: usize,
    tx: &mpsc::Sender<Msg>,
    slot: &Mutex<Slot>,
) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.args(&args)
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
    let mut child = match cmd.spawn() {
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
    let mut lines = LineReader::new(stdout, max_line);
    let read_error = loop {
        match lines.next() {
            Ok(Some(m)) => {
                if tx.blocking_send(m).is_err() {
                    // The task is gone (shutdown): nothing reads further.
                    if let Some(c) = slot.lock().expect("journalctl lock").child.as_mut() {
                        let _ = c.kill();
                    }
                    break None;
                }
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let child = slot.lock().expect("journalctl lock").child.take();
    let status = child.map(|mut c| {
        if read_error.is_some() {
            let _ = c.kill();
        }
        c.wait()
    });
    let stderr = errors.ok().and_then(|h| h.join().ok()).unwrap_or_default();
    let said = String::from_utf8_lossy(&stderr);
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
    let _ = tx.blocking_send(Msg::Exited { ok, why });
}

fn describe_status(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".to_string(),
    }
}

/// Reads `r` to its end, keeping its first `keep` bytes.
fn keep_head(mut r: impl Read, keep: usize) -> Vec<u8> {
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
struct LineReader<R> {
    inner: std::io::BufReader<R>,
    max_line: usize,
}

/// The key journalctl writes before an entry's cursor (its JSON has no spaces; inside a string
/// value these quotes would be escaped, so this only ever matches the key).
const CURSOR_KEY: &[u8] = b"\"__CURSOR\":\"";

impl<R: Read> LineReader<R> {
    fn new(r: R, max_line: usize) -> Self {
        LineReader {
            inner: std::io::BufReader::with_capacity(READ_BUF, r),
            max_line,
        }
    }

    /// The next line; None at the end of the stream (a last line without its newline is
    /// dropped: journalctl ends each entry with one, so only a killed child leaves one).
    fn next(&mut self) -> std::io::Result<Option<Msg>> {
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
struct CursorScan {
    /// Bytes of [`CURSOR_KEY`] matched so far.
    matched: usize,
    /// The cursor being read, once the key matched.
    value: Option<Vec<u8>>,
    done: Option<String>,
}

impl CursorScan {
    fn feed(&mut self, bytes: &[u8]) {
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

    fn found(self) -> Option<String> {
        self.done
    }
}

/// One journal entry's fields, values decoded to text.
type Fields = std::collections::BTreeMap<String, String>;

/// Parses one line of `journalctl --output=json`. Values are strings; a field journald holds
/// as bytes that are not UTF-8 is an array of numbers, a repeated field an array of values
/// (the first is kept).
fn parse_entry(line: &[u8]) -> Result<Fields, String> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not JSON from journalctl ({e})"))?;
    let serde_json::Value::Object(map) = v else {
        return Err("journalctl wrote something else than a JSON object".into());
    };
    let mut out = Fields::new();
    for (k, v) in map {
        if let Some(s) = decode_value(&v) {
            out.insert(k, s);
        }
    }
    Ok(out)
}

fn decode_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => {
            let bytes: Option<Vec<u8>> = items
                .iter()
                .map(|i| i.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect();
            match bytes {
                Some(b) if !items.is_empty() => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => items.first().and_then(decode_value),
            }
        }
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The unit an entry is about: systemd's own message names it in UNIT, a core dump in
/// COREDUMP_UNIT; otherwise the unit that wrote it, or its syslog identifier.
fn unit_of(f: &Fields) -> &str {
    let by_systemd = f.get("_PID").is_some_and(|p| p == "1");
    by_systemd
        .then(|| f.get("UNIT"))
        .flatten()
        .or_else(|| f.get("COREDUMP_UNIT"))
        .or_else(|| f.get("_SYSTEMD_UNIT"))
        .or_else(|| f.get("SYSLOG_IDENTIFIER"))
        .map_or("-", String::as_str)
}

/// The `alert_uid` of an entry: `journal:<unit>`, and a stable hash of the `uid_fields` values
/// when there are some (FNV-1a: the same across releases).
pub fn entry_uid(unit: &str, uid_fields: &[String], f: &Fields) -> String {
    if uid_fields.is_empty() {
        return format!("journal:{unit}");
    }
    let mut part = Vec::new();
    for name in uid_fields {
        part.extend_from_slice(name.as_bytes());
        part.push(b'=');
        part.extend_from_slice(f.get(name).map_or("", String::as_str).as_bytes());
        part.push(0);
    }
    format!("journal:{unit}:{:016x}", key_hash(Some(&part), b""))
}

/// The entry's time: when the program logged it, else when journald received it.
fn entry_time(f: &Fields) -> Option<String> {
    let us: u64 = f
        .get("_SOURCE_REALTIME_TIMESTAMP")
        .or_else(|| f.get("__REALTIME_TIMESTAMP"))?
        .parse()
        .ok()?;
    let t = SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(us))?;
    Some(humantime::format_rfc3339_micros(t).to_string())
}

/// One entry as a formatted_webhook alert; Err says why it cannot be one.
fn to_alert(src: &JournalSource, f: &Fields, max_body: usize) -> Result<Alert, String> {
    let unit = unit_of(f);
    let text = f.get("MESSAGE").map_or("", String::as_str);
    let first_line = text.lines().next().unwrap_or("").trim();
    let mut title: String = first_line.chars().take(TITLE_MAX).collect();
    if first_line.chars().nth(TITLE_MAX).is_some() {
        title.push('…');
    }
    if title.is_empty() {
        title = format!("{unit}: a journal entry without a message");
    }
    let priority = f
        .get("PRIORITY")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p < PRIORITY_NAMES.len());
    let mut shown: Vec<(&str, String)> = vec![
        ("host", f.get("_HOSTNAME").cloned().unwrap_or_default()),
        ("unit", unit.to_string()),
        (
            "priority",
            priority.map_or(String::new(), |p| format!("{p} ({})", PRIORITY_NAMES[p])),
        ),
        ("time", entry_time(f).unwrap_or_default()),
        (
            "identifier",
            f.get("SYSLOG_IDENTIFIER").cloned().unwrap_or_default(),
        ),
        ("pid", f.get("_PID").cloned().unwrap_or_default()),
    ];
    for name in &src.uid_fields {
        if name != "MESSAGE" {
            shown.push((name, f.get(name).cloned().unwrap_or_default()));
        }
    }
    shown.retain(|(_, v)| !v.is_empty());
    let mut message = text.to_string();
    message.push_str("\n\n");
    for (k, v) in &shown {
        message.push_str(&format!("{k}: {v}\n"));
    }
    let uid = entry_uid(unit, &src.uid_fields, f);
    let journal: serde_json::Map<String, serde_json::Value> = shown
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect();
    let body = serde_json::json!({
        "title": title,
        "message": message,
        "alert_uid": uid,
        "state": "alerting",
        "journal": journal,
    });
    let payload = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    bounded_alert(
        &src.integration,
        payload,
        key_hash(Some(uid.as_bytes()), b""),
        max_body,
    )
}

/// One entry read, ready to commit.
struct Item {
    alert: Option<Alert>,
    refused: Option<Refused>,
    /// Its cursor; None only for output that is not an entry.
    cursor: Option<String>,
}

/// Turns one message of the reader into an item (None for the end of the child).
fn to_item(src: &JournalSource, m: Msg, max_body: usize) -> Option<Item> {
    match m {
        Msg::Line(line) => Some(match parse_entry(&line) {
            Ok(f) => {
                let cursor = f.get("__CURSOR").filter(|c| plausible_cursor(c)).cloned();
                let at = cursor.as_deref().unwrap_or("without a cursor");
                match to_alert(src, &f, max_body) {
                    Ok(a) => Item {
                        alert: Some(a),
                        refused: None,
                        cursor,
                    },
                    Err(why) => Item {
                        alert: None,
                        refused: Some(Refused {
                            reason: format!("journal entry {at}: {why}; not forwarded"),
                            payload: lossy_prefix(&line),
                        }),
                        cursor,
                    },
                }
            }
            Err(why) => Item {
                alert: None,
                refused: Some(Refused {
                    reason: format!("a line of journalctl's output: {why}; not forwarded"),
                    payload: lossy_prefix(&line),
                }),
                cursor: None,
            },
        }),
        Msg::TooLong { len, head, cursor } => Some(Item {
            alert: None,
            refused: Some(Refused {
                reason: format!(
                    "journal entry {} is {len} bytes as JSON, longer than max_line ({}); not forwarded (journalctl --cursor='{0}' -n 1 shows it)",
                    cursor.as_deref().unwrap_or("(cursor not found)"),
                    src.max_line
                ),
                payload: lossy_prefix(&head),
            }),
            cursor,
        }),
        Msg::Exited { .. } => None,
    }
}

/// A run of journalctl failures, logged once.
struct Episode {
    /// The failure was logged and not yet followed by a working journalctl.
    failing: bool,
    /// Wait before the next start.
    backoff: Duration,
}

impl Episode {
    fn new() -> Episode {
        Episode {
            failing: false,
            backoff: RESTART_MIN,
        }
    }

    /// journalctl works (again): the next failure is logged and waited out from the start.
    fn works(&mut self, name: &str) {
        if self.failing {
            tracing::info!(
                source = name,
                "journalctl runs again; journal entries are read."
            );
        }
        self.failing = false;
        self.backoff = RESTART_MIN;
    }

    /// journalctl failed; returns how long to wait before starting it again.
    fn failed(&mut self, name: &str, why: &str) -> Duration {
        if !self.failing {
            tracing::error!(
                source = name,
                "Journal entries cannot be read: {why}. journalctl is started again after {}s, backing off to {}s, without another log line until it works.",
                RESTART_MIN.as_secs(),
                RESTART_MAX.as_secs()
            );
            self.failing = true;
        } else {
            tracing::debug!(source = name, "journalctl failed again: {why}.");
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(RESTART_MAX);
        wait
    }
}

/// Runs the first-run query: the cursor of the newest matching entry (None if there is none).
async fn newest_cursor(src: &JournalSource) -> Result<Option<String>, String> {
    let mut reader = Reader::start(
        &src.journalctl,
        command_args(src, &Start::Newest, false),
        src.max_line,
    );
    let mut cursor = None;
    while let Some(m) = reader.rx.recv().await {
        match m {
            Msg::Line(line) => {
                if let Ok(f) = parse_entry(&line)
                    && let Some(c) = f.get("__CURSOR").filter(|c| plausible_cursor(c))
                {
                    cursor = Some(c.clone());
                }
            }
            Msg::TooLong { cursor: c, .. } => cursor = c.or(cursor),
            Msg::Exited { ok: true, .. } => return Ok(cursor),
            Msg::Exited { ok: false, why } => return Err(why),
        }
    }
    Err("journalctl's reader stopped without saying why".into())
}

/// Runs one journal source until `stop` turns true.
pub async fn run(src: JournalSource, ctx: SourceContext) {
    let SourceContext {
        ingest,
        max_body,
        mut stop,
        clock,
        ..
    } = ctx.clone();
    let report = ctx.reporter("journal", Path::new(&src.name));
    report(&|_| {});
    let store = ingest.store().clone();
    let name = src.name.as_str();
    let mut episode = Episode::new();
    // Why queueing failed last and when that was said (see `commit::say_again`).
    let mut said: Option<(std::mem::Discriminant<IngestError>, Instant)> = None;

    // The saved cursor; None (the key absent) on the first run.
    let mut saved: Option<Saved> = loop {
        let (st, key) = (store.clone(), cursor_key(name));
        match tokio::task::spawn_blocking(move || st.meta(&key)).await {
            Ok(Ok(None)) => break None,
            Ok(Ok(Some(v))) => match serde_json::from_slice::<Saved>(&v) {
                Ok(s) if s.cursor.as_deref().is_none_or(plausible_cursor) => break Some(s),
                _ => {
                    tracing::warn!(
                        source = name,
                        "The saved journal cursor is unreadable; it is dropped and reading starts as on a first run."
                    );
                    break None;
                }
            },
            Ok(Err(e)) => {
                let msg = format!("cannot read the saved journal cursor: {e}");
                tracing::error!(source = name, "{msg}. Retrying.");
                report(&|s| s.last_error = Some(msg.clone()));
            }
            Err(e) => {
                tracing::error!(source = name, "The reading task failed: {e}");
                return;
            }
        }
        if sleep_or_stop(RETRY_AFTER, &mut stop).await {
            return;
        }
    };

    // Polling: whether the first pass that worked was announced.
    let mut announced = false;
    'outer: loop {
        if *stop.borrow() {
            break;
        }
        // First run: where to start, committed before anything is read.
        let cursor = match &saved {
            Some(s) => s.cursor.clone(),
            None => {
                let first = match src.start_at {
                    StartAt::Beginning => Ok(None),
                    StartAt::End => newest_cursor(&src).await,
                };
                match first {
                    Ok(c) => {
                        let meta = vec![saved_entry(name, c.as_deref())];
                        if !commit_meta(&ingest, meta, &mut stop).await {
                            break;
                        }
                        episode.works(name);
                        saved = Some(Saved { cursor: c.clone() });
                        c
                    }
                    Err(why) => {
                        report(&|s| s.last_error = Some(why.clone()));
                        let wait = episode.failed(name, &why);
                        if sleep_or_stop(wait, &mut stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        // Catch up without --follow (journalctl 250-257 follows the newest boot only, so
        // entries of an earlier boot after the cursor would be skipped), then follow.
        let mut cursor = cursor;
        let mut exited = None;
        // Polling: only the catch-up, again every poll_interval.
        let phases: &[bool] = if src.poll_interval.is_some() {
            &[false]
        } else {
            &[false, true]
        };
        for &follow in phases {
            let start = cursor.clone().map_or(Start::Beginning, Start::At);
            let mut reader = Reader::start(
                &src.journalctl,
                command_args(&src, &start, follow),
                src.max_line,
            );
            if follow {
                report(&|s| s.files = 1);
                if episode.failing {
                    tracing::debug!(source = name, "Starting journalctl again.");
                } else {
                    tracing::info!(source = name, integration = %src.integration, "Reading the journal.");
                }
            }
            let healthy = tokio::time::sleep(HEALTHY);
            tokio::pin!(healthy);
            // Only a following journalctl can be healthy for running long.
            let mut healthy_done = !follow;
            let end: Option<(bool, String)> = loop {
                let first = tokio::select! {
                    _ = stop.changed() => {
                        reader.kill();
                        break None;
                    }
                    _ = &mut healthy, if !healthy_done => {
                        healthy_done = true;
                        episode.works(name);
                        report(&|s| s.last_error = None);
                        continue;
                    }
                    m = reader.rx.recv() => m,
                };
                let Some(first) = first else {
                    break Some((
                        false,
                        "journalctl's reader stopped without saying why".to_string(),
                    ));
                };
                // Everything waiting, within the batch bounds.
                let mut msgs = vec![first];
                let mut bytes = 0;
                let mut end = None;
                loop {
                    match msgs.last() {
                        Some(Msg::Exited { ok, why }) => {
                            end = Some((*ok, why.clone()));
                            msgs.pop();
                            break;
                        }
                        Some(Msg::Line(l)) => bytes += l.len(),
                        Some(Msg::TooLong { head, .. }) => bytes += head.len(),
                        None => break,
                    }
                    if msgs.len() >= BATCH_MAX || bytes >= BATCH_BYTES {
                        break;
                    }
                    match reader.rx.try_recv() {
                        Ok(m) => msgs.push(m),
                        Err(_) => break,
                    }
                }
                // journalctl starts AT the cursor (--cursor): that entry is in the queue.
                let items: Vec<Item> = msgs
                    .into_iter()
                    .filter_map(|m| to_item(&src, m, max_body))
                    .filter(|i| i.cursor.is_none() || i.cursor != start.cursor())
                    .collect();
                if !items.is_empty() {
                    match commit_items(&src, &ingest, items, &report, &mut said, &mut stop, clock)
                        .await
                    {
                        Some(Some(c)) => {
                            cursor = Some(c.clone());
                            saved = Some(Saved { cursor: Some(c) });
                            if !healthy_done {
                                healthy_done = true;
                                episode.works(name);
                            }
                        }
                        Some(None) => {}
                        None => {
                            reader.kill();
                            break None;
                        }
                    }
                }
                if let Some(e) = end {
                    break Some(e);
                }
            };
            drop(reader);
            match end {
                None => break 'outer,
                Some((true, _)) if let Some(every) = src.poll_interval => {
                    if !announced {
                        tracing::info!(source = name, integration = %src.integration, every = ?every, "Reading the journal, polling.");
                        announced = true;
                    }
                    episode.works(name);
                    report(&|s| {
                        s.files = 1;
                        s.last_error = None;
                    });
                    if sleep_or_stop(every, &mut stop).await {
                        break 'outer;
                    }
                    continue 'outer;
                }
                // Caught up: now follow from there.
                Some((true, _)) if !follow => {}
                Some((_, why)) => {
                    exited = Some(why);
                    break;
                }
            }
        }
        let exited = exited.unwrap_or_else(|| "journalctl exited".to_string());
        report(&|s| {
            s.files = 0;
            s.last_error = Some(exited.clone());
        });
        let wait = episode.failed(name, &exited);
        if sleep_or_stop(wait, &mut stop).await {
            break;
        }
    }
    report(&|s| s.files = 0);
    tracing::debug!(source = name, "The journal source stopped.");
}

/// Commits `items` (dead letters first, then the alerts with the cursor of the last entry
/// queued), retrying while the queue refuses them; fewer at a time while it is full. Returns
/// the new cursor (Some(None) if none moved), or None if the agent stops first.
async fn commit_items(
    src: &JournalSource,
    ingest: &Ingest,
    mut items: Vec<Item>,
    report: &impl Fn(&dyn Fn(&mut super::SourceStatus)),
    said: &mut Option<(std::mem::Discriminant<IngestError>, Instant)>,
    stop: &mut watch::Receiver<bool>,
    clock: crate::clock::Clock,
) -> Option<Option<String>> {
    let name = src.name.as_str();
    let store = ingest.store();
    let refused: Vec<Refused> = items.iter_mut().filter_map(|i| i.refused.take()).collect();
    while !refused.is_empty() {
        let dls = dead_letters(store, &src.integration, &refused, clock.now());
        let st = store.clone();
        match tokio::task::spawn_blocking(move || st.put_dead(&dls)).await {
            Ok(Ok(())) => {
                tracing::error!(
                    source = name,
                    count = refused.len(),
                    "Journal entries were not forwarded and are kept as dead letters; the first: {}",
                    refused[0].reason
                );
                let (n, last) = (
                    refused.len() as u64,
                    refused.last().map(|r| r.reason.clone()),
                );
                report(&|s| {
                    s.refused_total += n;
                    s.last_refused = last.clone();
                });
                break;
            }
            Ok(Err(e)) => {
                let msg = format!("cannot record refused journal entries: {e}");
                tracing::error!(source = name, "{msg}. Retrying.");
                report(&|s| s.last_error = Some(msg.clone()));
                if sleep_or_stop(RETRY_AFTER, stop).await {
                    return None;
                }
            }
            Err(e) => {
                tracing::error!(source = name, "The dead-letter task failed: {e}");
                return None;
            }
        }
    }
    let mut moved = None;
    // Most entries per commit: all of them until the queue refuses a commit for lack of room,
    // then half as many each time (down to one), which fits once the sender makes room.
    let mut max_items = items.len();
    while !items.is_empty() {
        let take = max_items.min(items.len());
        let cursor = items[..take].iter().rev().find_map(|i| i.cursor.clone());
        let alerts: Vec<Alert> = items[..take]
            .iter()
            .filter_map(|i| i.alert.clone())
            .collect();
        let n = alerts.len() as u64;
        let meta = cursor
            .as_deref()
            .map(|c| vec![saved_entry(name, Some(c))])
            .unwrap_or_default();
        if alerts.is_empty() && meta.is_empty() {
            items.drain(..take);
            continue;
        }
        match ingest.commit(alerts, meta, true).await {
            Ok(_) => {
                items.drain(..take);
                if cursor.is_some() {
                    moved = cursor;
                }
                report(&|s| {
                    s.alerts_total += n;
                    s.last_error = None;
                });
            }
            Err(IngestError::Closed) => return None,
            Err(e) => {
                if matches!(e, IngestError::QueueFull { .. }) {
                    max_items = (take / 2).max(1);
                }
                let msg = e.to_string();
                if say_again(said, &e) {
                    tracing::warn!(
                        source = name,
                        "Journal entries could not be queued ({msg}); reading pauses and resumes where it stood."
                    );
                }
                report(&|s| s.last_error = Some(msg.clone()));
                if sleep_or_stop(RETRY_AFTER, stop).await {
                    return None;
                }
            }
        }
    }
    Some(moved)
}

/// Commits metadata alone (the first run's starting point), retrying while the queue refuses
/// it. False if the agent stops first.
async fn commit_meta(
    ingest: &Ingest,
    meta: Vec<MetaEntry>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut warned = false;
    loop {
        match ingest.commit(Vec::new(), meta.clone(), true).await {
            Ok(_) => return true,
            Err(IngestError::Closed) => return false,
            Err(e) => {
                if !warned {
                    tracing::warn!("Saving the journal cursor failed ({e}); retrying.");
                    warned = true;
                }
                if sleep_or_stop(RETRY_AFTER, stop).await {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn source() -> JournalSource {
        JournalSource {
            name: "j".into(),
            integration: "a".into(),
            units: vec!["nginx.service".into(), "db.service".into()],
            identifiers: vec!["kernel".into()],
            priority: 3,
            uid_fields: vec![],
            start_at: StartAt::End,
            max_line: 64 * 1024,
            journal_directory: None,
            journal_file: Some(PathBuf::from("/x/y.journal")),
            journalctl: PathBuf::from("journalctl"),
            poll_interval: None,
        }
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn units_and_identifiers_are_alternatives_each_unit_as_journalctl_u_sees_it() {
        assert_eq!(
            matches(&source()).join(" "),
            "_SYSTEMD_UNIT=nginx.service _SYSTEMD_UNIT=db.service + UNIT=nginx.service UNIT=db.service _PID=1 + COREDUMP_UNIT=nginx.service COREDUMP_UNIT=db.service + SYSLOG_IDENTIFIER=kernel"
        );
        let mut all = source();
        all.units.clear();
        all.identifiers.clear();
        assert!(matches(&all).is_empty());
    }

    #[test]
    fn the_command_starts_at_the_cursor_or_at_the_beginning() {
        let s = |v: Vec<OsString>| {
            v.iter()
                .map(|o| o.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        let at = s(command_args(&source(), &Start::At("s=1;i=2".into()), true));
        assert!(at.contains(&"--follow".into()));
        assert!(at.contains(&"--cursor=s=1;i=2".into()));
        assert!(at.contains(&"--priority=3".into()));
        assert!(at.contains(&"--file=/x/y.journal".into()));
        let catch_up = s(command_args(&source(), &Start::At("s=1".into()), false));
        assert!(!catch_up.contains(&"--follow".into()));
        let begin = s(command_args(&source(), &Start::Beginning, true));
        assert!(begin.contains(&"--lines=all".into()));
        let newest = s(command_args(&source(), &Start::Newest, false));
        assert!(newest.contains(&"--lines=1".into()) && !newest.contains(&"--follow".into()));
    }

    #[test]
    fn the_cursor_of_a_long_line_is_found_across_pieces() {
        let line = format!(
            "{{\"MESSAGE\":\"{}\",\"__CURSOR\":\"s=abc;i=9\",\"X\":\"\\\"__CURSOR\\\":\\\"no\\\"\"}}\n",
            "m".repeat(5000)
        );
        for piece in [1, 7, 13, 4096] {
            let mut scan = CursorScan::default();
            for chunk in line.as_bytes().chunks(piece) {
                scan.feed(chunk);
            }
            assert_eq!(scan.found().as_deref(), Some("s=abc;i=9"), "piece {piece}");
        }
    }

    #[test]
    fn a_line_longer_than_max_line_is_skipped_with_its_head_and_cursor() {
        let long = format!(
            "{{\"MESSAGE\":\"{}\",\"__CURSOR\":\"s=1;i=2\"}}",
            "x".repeat(300_000)
        );
        let text = format!("{{\"a\":1}}\n{long}\n{{\"b\":2}}\n");
        let mut r = LineReader::new(text.as_bytes(), 2048);
        assert!(matches!(r.next().unwrap(), Some(Msg::Line(l)) if l == b"{\"a\":1}"));
        match r.next().unwrap() {
            Some(Msg::TooLong { len, head, cursor }) => {
                assert_eq!(len, long.len() as u64);
                assert_eq!(head.len(), DEAD_PREFIX);
                assert_eq!(cursor.as_deref(), Some("s=1;i=2"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.next().unwrap(), Some(Msg::Line(l)) if l == b"{\"b\":2}"));
        assert!(r.next().unwrap().is_none());
    }

    #[test]
    fn an_entry_becomes_a_formatted_webhook_alert() {
        let f = fields(&[
            ("MESSAGE", "disk full on /var\nmore detail"),
            ("_SYSTEMD_UNIT", "db.service"),
            ("PRIORITY", "2"),
            ("_HOSTNAME", "box1"),
            ("__REALTIME_TIMESTAMP", "1764770000000001"),
            ("SYSLOG_IDENTIFIER", "postgres"),
            ("_PID", "812"),
        ]);
        let a = to_alert(&source(), &f, 1 << 20).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&a.payload).unwrap();
        assert_eq!(v["title"], "disk full on /var");
        assert_eq!(v["alert_uid"], "journal:db.service");
        assert_eq!(v["state"], "alerting");
        let m = v["message"].as_str().unwrap();
        for part in [
            "disk full on /var\nmore detail",
            "host: box1",
            "unit: db.service",
            "priority: 2 (crit)",
            "time: 2025-12-03T13:53:20.000001Z",
            "pid: 812",
        ] {
            assert!(m.contains(part), "{part:?} in {m}");
        }
        assert_eq!(v["journal"]["unit"], "db.service");
        assert_eq!(a.key_hash, key_hash(Some(b"journal:db.service"), b""));
    }

    #[test]
    fn uid_fields_split_a_units_entries_and_systemds_messages_name_the_unit() {
        let mut src = source();
        src.uid_fields = vec!["MESSAGE".into()];
        let a = fields(&[("MESSAGE", "a"), ("_SYSTEMD_UNIT", "x.service")]);
        let b = fields(&[("MESSAGE", "b"), ("_SYSTEMD_UNIT", "x.service")]);
        let ua = entry_uid(unit_of(&a), &src.uid_fields, &a);
        assert_ne!(ua, entry_uid(unit_of(&b), &src.uid_fields, &b));
        assert!(ua.starts_with("journal:x.service:"), "{ua}");
        // Stable across releases (FNV-1a).
        assert_eq!(ua, entry_uid("x.service", &src.uid_fields, &a));
        let by_pid1 = fields(&[
            ("_PID", "1"),
            ("UNIT", "web.service"),
            ("_SYSTEMD_UNIT", "init.scope"),
        ]);
        assert_eq!(unit_of(&by_pid1), "web.service");
    }

    #[test]
    fn byte_array_and_repeated_values_are_decoded() {
        let f = parse_entry(br#"{"MESSAGE":[104,105,255],"X":["one","two"],"N":null}"#).unwrap();
        assert_eq!(f["MESSAGE"], "hi\u{fffd}");
        assert_eq!(f["X"], "one");
        assert!(!f.contains_key("N"));
    }
}
