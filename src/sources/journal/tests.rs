use std::ffi::OsString;
use std::path::PathBuf;

use super::child::{CursorScan, LineReader, Msg, command_args, matches};
use super::entry::{Fields, entry_uid, parse_entry, to_alert, unit_of};
use super::*;
use crate::config::{JournalSource, StartAt};
use crate::queue::envelope::key_hash;
use crate::sources::commit::DEAD_PREFIX;

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

/// A pipe hands the line over in pieces smaller than max_line: the head still fills to
/// DEAD_PREFIX (it stopped at the piece that crossed max_line, seen under load).
#[test]
fn a_long_line_read_in_small_pieces_keeps_its_whole_head() {
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(100);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let long = format!("{{\"MESSAGE\":\"{}\"}}\n", "x".repeat(20_000));
    let mut r = LineReader::new(Trickle(long.as_bytes()), 1024);
    match r.next().unwrap() {
        Some(Msg::TooLong { head, .. }) => assert_eq!(head.len(), DEAD_PREFIX),
        other => panic!("{other:?}"),
    }
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
