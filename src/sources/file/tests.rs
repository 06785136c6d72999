use std::os::unix::fs::{FileExt, MetadataExt};

use tokio::sync::watch;

use super::track::{end_position, key_prefix};
use super::*;
use crate::config::{LineFormat, StartAt};
use crate::queue::writer::Ingest;
use crate::queue::writer::WriterConfig;
use crate::sources::SourceContext;
use crate::sources::commit::{DEAD_PREFIX, dead_letters};

struct Rig {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    ingest: Ingest,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("queue"), 8 << 20).unwrap();
    let store = Arc::new(store);
    let (ingest, _writer) = Ingest::start(
        store.clone(),
        ["a".to_string()],
        WriterConfig {
            max_bytes: 1 << 30,
            min_free_space: 0,
            channel_capacity: 64,
            batch_max: 1024,
        },
        crate::clock::Clock::system(),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    Rig { dir, store, ingest }
}

impl Rig {
    fn log(&self) -> PathBuf {
        self.dir.path().join("logs/app.log")
    }

    fn source(&self, max_line: usize) -> FileSource {
        FileSource {
            path: self.log(),
            dir: self.dir.path().join("logs"),
            name_pattern: glob::Pattern::new("app.log").unwrap(),
            integration: "a".into(),
            format: LineFormat::Json,
            start_at: StartAt::Beginning,
            max_line,
            poll_interval: Duration::from_secs(5),
        }
    }

    /// A tailer as the daemon starts it, its start-up metadata committed.
    async fn open(&self, max_line: usize) -> Tailer {
        let (t, meta) = Tailer::open(self.source(max_line), self.store.clone(), 1 << 20).unwrap();
        self.ingest.commit(Vec::new(), meta, true).await.unwrap();
        t
    }

    /// Commits a chunk the way `run` does.
    async fn commit(&self, t: &mut Tailer, mut c: Chunk) {
        let dls = dead_letters(&self.store, "a", &c.refused, 0);
        self.store.put_dead(&dls).unwrap();
        let alerts = std::mem::take(&mut c.alerts);
        self.ingest
            .commit(alerts, c.meta.clone(), true)
            .await
            .unwrap();
        t.committed(c);
    }

    /// Reads and commits until there is nothing left; returns the `n`s queued.
    async fn drain(&self, t: &mut Tailer) -> Vec<i64> {
        let mut ns = Vec::new();
        while let Some(c) = t.next_chunk().unwrap() {
            ns.extend(c.alerts.iter().map(|a| n_of(&a.payload)));
            self.commit(t, c).await;
        }
        ns
    }
}

fn n_of(payload: &[u8]) -> i64 {
    serde_json::from_slice::<serde_json::Value>(payload).unwrap()["n"]
        .as_i64()
        .unwrap()
}

fn lines(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("{{\"alert_uid\":\"k\",\"n\":{n}}}\n"))
        .collect()
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

#[tokio::test]
async fn a_chunk_read_but_not_committed_is_read_again_after_a_crash() {
    let r = rig();
    append(&r.log(), &lines(0, 10));
    let mut t = r.open(1000).await;
    let read = t.next_chunk().unwrap().unwrap();
    assert_eq!(read.alerts.len(), 10);
    // The crash: the chunk was read, never committed.
    drop(read);
    drop(t);
    let mut t = r.open(1000).await;
    assert_eq!(r.drain(&mut t).await, (0..10).collect::<Vec<_>>());
    // Committed this time: a restart reads nothing again.
    drop(t);
    let mut t = r.open(1000).await;
    assert!(t.next_chunk().unwrap().is_none());
    append(&r.log(), &lines(10, 2));
    assert_eq!(r.drain(&mut t).await, vec![10, 11]);
    assert_eq!(r.store.depth("a").alerts, 12);
}

#[tokio::test]
async fn the_position_moves_only_once_committed() {
    let r = rig();
    append(&r.log(), &lines(0, 3));
    let mut t = r.open(1000).await;
    let c = t.next_chunk().unwrap().unwrap();
    // Not committed yet: the same lines come again.
    drop(c);
    let again = t.next_chunk().unwrap().unwrap();
    assert_eq!(again.alerts.len(), 3);
    r.commit(&mut t, again).await;
    assert!(t.next_chunk().unwrap().is_none());
}

#[tokio::test]
async fn a_line_without_its_newline_waits_for_it() {
    let r = rig();
    append(&r.log(), "{\"n\":0}\n{\"n\":");
    let mut t = r.open(1000).await;
    assert_eq!(r.drain(&mut t).await, vec![0]);
    append(&r.log(), "1}");
    assert!(t.next_chunk().unwrap().is_none());
    append(&r.log(), "\n");
    assert_eq!(r.drain(&mut t).await, vec![1]);
}

#[tokio::test]
async fn a_line_longer_than_the_read_buffer_is_skipped_and_recorded() {
    let r = rig();
    // 3 MiB, three times the read buffer, written in two parts.
    let long = format!("{{\"n\":99,\"pad\":\"{}", "x".repeat(3 << 20));
    append(&r.log(), &lines(0, 1));
    append(&r.log(), &long[..2 << 20]);
    let mut t = r.open(100).await;
    assert_eq!(r.drain(&mut t).await, vec![0]);
    assert_eq!(r.store.dead_count(), 0, "recorded before its end was seen");
    append(&r.log(), &long[2 << 20..]);
    append(&r.log(), "\"}\n");
    append(&r.log(), &lines(1, 1));
    assert_eq!(r.drain(&mut t).await, vec![1]);
    let dead = r.store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("line 2 of"), "{}", dead[0].reason);
    assert!(
        dead[0].reason.contains("max_line (100)"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].payload.len(), DEAD_PREFIX);
}

#[tokio::test]
async fn a_retried_commit_does_not_record_its_dead_letters_twice() {
    let r = rig();
    append(&r.log(), "nope\n{\"n\":1}\n");
    let mut t = r.open(100).await;
    let c = t.next_chunk().unwrap().unwrap();
    let dls = dead_letters(&r.store, "a", &c.refused, 0);
    r.store.put_dead(&dls).unwrap();
    t.dead_written(&c);
    // The queue refused the commit: the chunk is read again.
    drop(c);
    let again = t.next_chunk().unwrap().unwrap();
    assert!(again.refused.is_empty());
    assert_eq!(again.alerts.len(), 1);
    r.commit(&mut t, again).await;
    assert_eq!(r.store.dead_count(), 1);
}

#[tokio::test]
async fn same_inode_with_other_first_bytes_is_a_new_file() {
    let r = rig();
    append(&r.log(), &lines(0, 5));
    let mut t = r.open(1000).await;
    assert_eq!(r.drain(&mut t).await.len(), 5);
    drop(t);
    // Rewritten in place while stopped (the inode stays), longer than the saved position:
    // only the fingerprint tells it is not the same content.
    let ino = std::fs::metadata(r.log()).unwrap().ino();
    let text: String = (100..110)
        .map(|n| format!("{{\"alert_uid\":\"z\",\"n\":{n}}}\n"))
        .collect();
    std::fs::OpenOptions::new()
        .write(true)
        .open(r.log())
        .unwrap()
        .write_all_at(text.as_bytes(), 0)
        .unwrap();
    assert_eq!(std::fs::metadata(r.log()).unwrap().ino(), ino);
    let mut t = r.open(1000).await;
    assert_eq!(r.drain(&mut t).await, (100..110).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_rotated_file_with_a_partial_last_line_records_it_when_forgotten() {
    let r = rig();
    append(&r.log(), "{\"n\":0}\n{\"n\":1");
    let mut t = r.open(1000).await;
    assert_eq!(r.drain(&mut t).await, vec![0]);
    std::fs::rename(r.log(), r.dir.path().join("logs/app.log.1")).unwrap();
    append(&r.log(), &lines(2, 1));
    t.rescan().unwrap();
    // The old file waits ROTATE_WAIT for its writer; the new one is read meanwhile.
    assert_eq!(r.drain(&mut t).await, vec![2]);
    assert_eq!(t.file_count(), 2);
    t.files[0].retired = Some(Instant::now());
    assert_eq!(r.drain(&mut t).await, Vec::<i64>::new());
    assert_eq!(t.file_count(), 1);
    let dead = r.store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("no newline"), "{}", dead[0].reason);
    assert_eq!(dead[0].payload, "{\"n\":1");
    // And it is forgotten in sled too.
    assert_eq!(
        r.store.meta_scan(&key_prefix(&r.log()), 10).unwrap().len(),
        1
    );
}

#[tokio::test]
async fn a_retried_forget_does_not_record_the_unfinished_line_twice() {
    let r = rig();
    append(&r.log(), "{\"n\":0}\n{\"n\":1");
    let mut t = r.open(1000).await;
    assert_eq!(r.drain(&mut t).await, vec![0]);
    std::fs::remove_file(r.log()).unwrap();
    t.rescan().unwrap();
    t.files[0].retired = Some(Instant::now());
    let c = t.next_chunk().unwrap().unwrap();
    assert_eq!(c.refused.len(), 1);
    t.dead_written(&c);
    drop(c);
    let again = t.next_chunk().unwrap().unwrap();
    assert!(again.forget && again.refused.is_empty());
}

#[test]
fn end_position_stops_after_the_last_complete_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, "a\nbb\nccc").unwrap();
    let f = File::open(&p).unwrap();
    let pos = end_position(&f, 8).unwrap();
    assert_eq!((pos.offset, pos.line, pos.fp_len), (5, 2, 5));
    std::fs::write(&p, "no newline").unwrap();
    assert_eq!(
        end_position(&File::open(&p).unwrap(), 10).unwrap().offset,
        0
    );
}

/// Also seen: the dead letters of tailed lines were stamped by the system clock, not
/// the daemon's injected one.
#[tokio::test]
async fn dead_letters_of_tailed_lines_take_the_injected_clock() {
    let r = rig();
    append(&r.log(), "not json\n{\"n\":1}\n");
    let clock = crate::clock::Clock::starting_at(42_000);
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(
        r.source(1024),
        SourceContext {
            ingest: r.ingest.clone(),
            max_body: 1 << 20,
            stop,
            board: crate::sources::SourceBoard::default(),
            clock,
        },
    ));
    let end = Instant::now() + Duration::from_secs(20);
    while r.store.dead_count() == 0 {
        assert!(Instant::now() < end, "no dead letter");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    task.await.unwrap();
    let dead = r.store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    // The injected clock started at 42 s after the epoch; the system's reads today.
    assert!(dead[0].failed_at < 3_600_000, "{}", dead[0].failed_at);
    assert_eq!(dead[0].received_at, dead[0].failed_at);
}

#[test]
fn text_uid_is_stable() {
    // Kept by OnCall as alert_uid: must never change between releases (FNV-1a, computed
    // independently).
    assert_eq!(text_uid("db01 disk"), "line-9d091050023b0ca8");
    assert_ne!(text_uid("a"), text_uid("b"));
}
