//! A journal entry as an alert: its fields decoded, the unit it is about, a formatted_webhook
//! body with a stable `alert_uid`, or why it cannot be one.

use std::time::{Duration, SystemTime};

use super::child::Msg;
use super::{TITLE_MAX, plausible_cursor};
use crate::config::{JournalSource, PRIORITY_NAMES};
use crate::queue::envelope::key_hash;
use crate::queue::writer::Alert;
use crate::sources::commit::{Refused, bounded_alert, lossy_prefix};

/// One journal entry's fields, values decoded to text.
pub(super) type Fields = std::collections::BTreeMap<String, String>;

/// Parses one line of `journalctl --output=json`. Values are strings; a field journald holds
/// as bytes that are not UTF-8 is an array of numbers, a repeated field an array of values
/// (the first is kept).
pub(super) fn parse_entry(line: &[u8]) -> Result<Fields, String> {
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

pub(super) fn decode_value(v: &serde_json::Value) -> Option<String> {
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
pub(super) fn unit_of(f: &Fields) -> &str {
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
pub(super) fn entry_time(f: &Fields) -> Option<String> {
    let us: u64 = f
        .get("_SOURCE_REALTIME_TIMESTAMP")
        .or_else(|| f.get("__REALTIME_TIMESTAMP"))?
        .parse()
        .ok()?;
    let t = SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(us))?;
    Some(humantime::format_rfc3339_micros(t).to_string())
}

/// One entry as a formatted_webhook alert; Err says why it cannot be one.
pub(super) fn to_alert(src: &JournalSource, f: &Fields, max_body: usize) -> Result<Alert, String> {
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
pub(super) struct Item {
    pub(super) alert: Option<Alert>,
    pub(super) refused: Option<Refused>,
    /// Its cursor; None only for output that is not an entry.
    pub(super) cursor: Option<String>,
}

/// Turns one message of the reader into an item (None for the end of the child).
pub(super) fn to_item(src: &JournalSource, m: Msg, max_body: usize) -> Option<Item> {
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
