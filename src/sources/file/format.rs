//! A line as an alert: a JSON line as it is, a text line as a formatted_webhook alert with a
//! stable `alert_uid`.

use std::path::Path;

use crate::config::{FileSource, LineFormat};
use crate::queue::envelope::key_hash;
use crate::queue::writer::Alert;
use crate::sources::commit::bounded_alert;

/// One line as an alert, per the source's format; Err says why it cannot be one.
pub(super) fn to_alert(
    src: &FileSource,
    path: &Path,
    line_no: u64,
    line: &[u8],
    max_body: usize,
) -> Result<Alert, String> {
    let (payload, key) = match &src.format {
        LineFormat::Json => {
            let key = crate::alert::parse_alert(line).map_err(|e| e.describe("the line"))?;
            (line.to_vec(), key)
        }
        LineFormat::Text { uid_fields } => {
            let text = String::from_utf8_lossy(line);
            let text = text.trim();
            let fields: Vec<&str> = text.split_whitespace().collect();
            let chosen: Vec<&str> = uid_fields
                .iter()
                .filter_map(|&n| fields.get(n.wrapping_sub(1)).copied())
                .collect();
            // No field chosen, or the line has none of them: the whole line.
            let part = if chosen.is_empty() {
                text.to_string()
            } else {
                chosen.join(" ")
            };
            let uid = text_uid(&part);
            let body = serde_json::json!({
                "title": text,
                "message": format!("{} line {line_no}", path.display()),
                "alert_uid": uid,
                "state": "alerting",
            });
            let payload = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
            (payload, key_hash(Some(uid.as_bytes()), b""))
        }
    };
    bounded_alert(&src.integration, payload, key, max_body)
}

/// The `alert_uid` of a text line: a stable hash of the chosen part (bounded, and the same
/// across releases: FNV-1a).
pub fn text_uid(part: &str) -> String {
    format!("line-{:016x}", key_hash(Some(part.as_bytes()), b""))
}
